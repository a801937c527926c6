//! Wires the components, owns their lifetimes and orders shutdown.
//!
//! ```text
//! demo thread (optional) ─► Kafka ─► ingest thread ─► Arc<Snapshot> ─► HTTP
//!                               └──► monitor thread (partitions, watermarks)
//! ```
//! Every thread and task is owned here; one that ends early stops the service.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};
use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::http::{AppState, ServiceInfo, router};
use crate::ingest::{Ingest, IngestConfig};
use crate::kafka::{ClusterView, KafkaConsumer, KafkaContext, consumer_config, run_monitor};
use crate::metrics::Metrics;
use crate::snapshot::{Health, Published, Snapshot};
use crate::stop::Stop;

/// How often partitions and watermarks are refreshed.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

type Exit = (&'static str, anyhow::Result<()>);

/// A started service.
pub struct App {
    addr: SocketAddr,
    stop: Stop,
    /// The demo broker outlives the clients reading from it.
    demo_stop: Stop,
    cancel: CancellationToken,
    exits: mpsc::UnboundedReceiver<Exit>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    published: Published,
    health: Arc<Health>,
}

fn spawn_thread(
    name: &'static str,
    exits: &mpsc::UnboundedSender<Exit>,
    body: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<(&'static str, JoinHandle<()>)> {
    let exits = exits.clone();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = body();
            let _ = exits.send((name, result));
        })
        .with_context(|| format!("spawning the {name} thread"))?;
    Ok((name, handle))
}

impl App {
    /// Starts everything and returns once the HTTP listener is bound.
    pub async fn start(settings: Settings) -> anyhow::Result<App> {
        let metrics = Metrics::new().context("creating metrics")?;
        let health = Arc::new(Health::new(settings.is_demo()));
        let published: Published = Arc::new(ArcSwap::from_pointee(Snapshot::empty(
            settings.window,
            settings.slide,
        )));
        let view = Arc::new(ArcSwap::from_pointee(ClusterView::default()));
        let stop = Stop::new();
        let demo_stop = Stop::new();
        let (exit_tx, exits) = mpsc::unbounded_channel();
        let mut threads = Vec::new();

        let brokers = match &settings.brokers {
            Some(brokers) => brokers.clone(),
            None => {
                let (bootstrap, handle) = crate::demo::start(
                    settings.topics.clone(),
                    settings.demo_rate,
                    demo_stop.clone(),
                )?;
                let tx = exit_tx.clone();
                // Watch the demo thread like the others.
                threads.push((
                    "demo",
                    std::thread::Builder::new()
                        .name("demo-watch".into())
                        .spawn(move || {
                            let result = handle
                                .join()
                                .unwrap_or_else(|_| Err(anyhow!("the demo thread panicked")));
                            let _ = tx.send(("demo", result));
                        })
                        .context("spawning the demo watcher")?,
                ));
                warn!(
                    brokers = %bootstrap,
                    "DEMO MODE: embedded in-process broker with generated traffic; pass --brokers to count real logs"
                );
                bootstrap
            }
        };

        let auto_reset = match settings.offset_reset {
            crate::config::OffsetReset::Earliest => "earliest",
            crate::config::OffsetReset::Latest => "latest",
            crate::config::OffsetReset::Fail => "error",
        };
        let config = consumer_config(
            &brokers,
            &settings.group,
            auto_reset,
            &settings.kafka_config,
        );
        let context = || KafkaContext {
            health: health.clone(),
            metrics: metrics.clone(),
        };
        let consumer: KafkaConsumer = config
            .create_with_context(context())
            .context("creating the Kafka consumer")?;
        let monitor_consumer: KafkaConsumer = config
            .create_with_context(context())
            .context("creating the Kafka monitor client")?;

        {
            let (topics, view, health, stop) = (
                settings.topics.clone(),
                view.clone(),
                health.clone(),
                stop.clone(),
            );
            threads.push(spawn_thread("monitor", &exit_tx, move || {
                run_monitor(
                    monitor_consumer,
                    topics,
                    MONITOR_INTERVAL,
                    view,
                    health,
                    stop,
                );
                Ok(())
            })?);
        }
        {
            let ingest = Ingest::new(
                consumer,
                IngestConfig::from(&settings),
                view,
                published.clone(),
                health.clone(),
                metrics.clone(),
            );
            let stop = stop.clone();
            threads.push(spawn_thread("ingest", &exit_tx, move || {
                ingest.run(stop).map_err(anyhow::Error::from)
            })?);
        }

        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", settings.listen))?;
        let addr = listener
            .local_addr()
            .context("reading the listen address")?;
        let state = AppState {
            published: published.clone(),
            health: health.clone(),
            metrics,
            info: Arc::new(ServiceInfo {
                group: settings.group.clone(),
                topics: settings.topics.clone(),
                brokers: if settings.is_demo() {
                    format!("embedded demo ({brokers})")
                } else {
                    brokers.clone()
                },
                zookeeper: settings.zookeeper.as_ref().map(|z| {
                    format!(
                        "{}{}",
                        z.servers.join(","),
                        z.chroot.as_deref().unwrap_or("")
                    )
                }),
            }),
        };
        let cancel = CancellationToken::new();
        let server = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                axum::serve(listener, router(state))
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await
            })
        };
        info!(
            mode = if settings.is_demo() { "demo" } else { "kafka" },
            brokers = %brokers,
            topics = %settings.topics.join(","),
            group = %settings.group,
            window = %humantime::format_duration(settings.window),
            slide = %humantime::format_duration(settings.slide),
            batch = %humantime::format_duration(settings.batch),
            url = %format!("http://{addr}/"),
            "ipstats started"
        );
        Ok(App {
            addr,
            stop,
            demo_stop,
            cancel,
            exits,
            threads,
            server,
            published,
            health,
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn published(&self) -> &Published {
        &self.published
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Runs until `shutdown` completes or a component fails, then stops all.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let outcome = tokio::select! {
            () = shutdown => {
                info!("shutting down");
                Ok(())
            }
            Some((name, result)) = self.exits.recv() => match result {
                Err(e) => Err(e.context(format!("the {name} thread failed"))),
                Ok(()) => Err(anyhow!("the {name} thread stopped unexpectedly")),
            },
            result = &mut self.server => match result {
                Ok(Ok(())) => Err(anyhow!("the HTTP server stopped unexpectedly")),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("the HTTP server failed")),
                Err(e) => Err(anyhow::Error::from(e).context("the HTTP server task failed")),
            },
        };
        let stopped = self.stop_all().await;
        if let Err(e) = &outcome {
            error!("{e:#}");
        }
        outcome.and(stopped)
    }

    async fn stop_all(self) -> anyhow::Result<()> {
        self.stop.set();
        self.cancel.cancel();
        let App {
            threads,
            server,
            mut exits,
            demo_stop,
            ..
        } = self;
        let mut first_error = None;
        tokio::task::spawn_blocking(move || {
            let (demo, others): (Vec<_>, Vec<_>) =
                threads.into_iter().partition(|(name, _)| *name == "demo");
            let join = |(name, handle): (&str, JoinHandle<()>)| {
                if handle.join().is_err() {
                    error!(thread = name, "thread panicked");
                }
            };
            others.into_iter().for_each(join);
            demo_stop.set();
            demo.into_iter().for_each(join);
        })
        .await
        .context("joining threads")?;
        while let Ok((name, result)) = exits.try_recv() {
            if let Err(e) = result {
                first_error.get_or_insert(e.context(format!("the {name} thread failed")));
            }
        }
        if !server.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Starts the service and runs it until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    App::start(settings).await?.run_until(shutdown).await
}
