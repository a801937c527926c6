//! Wires the components, owns their lifetimes and orders shutdown.
//!
//! ```text
//! demo thread (optional) ─► Kafka ─► ingest thread ─► counter thread (parse + count)
//!                             │         │  └─► every slide: Arc<Snapshot> ─► HTTP
//!                             │         └─► every checkpoint interval: job ─► checkpoint writer thread
//!                             │                                                   │ durable
//!                             │                       commit requests ◄───────────┘
//!                             │                           └─► ZooKeeper / Kafka group committers
//!                             └──► monitor thread (partitions, watermarks, newest timestamps) ─► ingest, HTTP
//! ```
//! Start-up: the listener is bound first (a busy port is the first error),
//! then the demo broker (without `--brokers`), the Kafka clients and the
//! monitor, then HTTP (health and status answer from here on), then
//! [`startup`] — restore the checkpoint; with ZooKeeper, connect, claim the
//! partitions and read the stored offsets — and only then consume.
//!
//! The service's threads and tasks run under [`parts::Parts`], which stops
//! them in the order [`parts::Stage`] declares: ingest closes and hands over
//! its last batch, the writer makes it durable, the committers commit it,
//! then HTTP, the alert senders and the demo broker stop. A part that ends
//! early stops the service. Two kinds of thread are owned elsewhere: the
//! counting thread belongs to ingest, which joins it, and the ad-hoc query
//! workers are process-wide, started at the first question and never
//! joined (they hold no state that outlives an answer).

pub mod console;
pub mod parts;
pub mod startup;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use futures_util::FutureExt;
use rdkafka::config::ClientConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::answers::{self, Answers, Pool};
use crate::checkpoint;
use crate::config::{ConfigError, OffsetReset, Secret, Settings};
use crate::deliver::{self, Targets};
use crate::http::access::Access;
use crate::http::serve::{ConnectionLimits, raise_fd_limit, serve};
use crate::http::{AppState, ServiceInfo, Sources, Streams, router};
use crate::kafka::{
    ClusterView, KafkaConsumer, KafkaContext, MonitorClients, consumer_config, run_monitor,
};
use crate::log_limit::LogLimit;
use crate::metrics::Metrics;
use crate::offsets::committed::Committed;
use crate::offsets::instance::instance_id;
use crate::offsets::zookeeper::ZkOptions;
use crate::rules::outbox::{self, Outbox};
use crate::rules::{Limits, Rules};
use crate::snapshot::{Published, Snapshot};
use crate::stop::Stop;
use crate::tools::demo;
use crate::vocab::Health;
use parts::{Parts, Report, Signal, Stage, StopProgress, Supervisor};
use startup::Startup;

/// How often partitions and watermarks are refreshed.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);
/// How long shutdown waits for HTTP connections to finish.
const HTTP_PATIENCE: Duration = Duration::from_secs(5);

/// A started service.
pub struct App {
    addr: SocketAddr,
    supervisor: Supervisor,
    shutdown_grace: Duration,
    /// This process's hold on `--checkpoint-dir`, released after the last checkpoint.
    dir_lock: checkpoint::lock::DirLock,
    /// The demo's throw-away checkpoint directory, removed at exit.
    demo_dir: Option<DemoDir>,
}

/// The demo's throw-away checkpoint directory: removed when dropped, however
/// the run ends (a stop, a failed start, a stop that overran its grace).
struct DemoDir(PathBuf);

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs blocking start-up work (files, fsync, the demo broker) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await?
}

impl App {
    /// Starts everything and returns once the HTTP listener is bound.
    pub async fn start(mut settings: Settings) -> anyhow::Result<App> {
        // The rules file is checked before anything starts: a bad one is a
        // bad setting (exit 64), named with its line.
        let rules = match &settings.rules_file {
            Some(path) => Some(
                Rules::load(
                    path.clone(),
                    Limits {
                        batch: settings.batch,
                        retention: settings.retention,
                    },
                )
                .map_err(|error| ConfigError {
                    setting: "--rules",
                    rule: error.to_string(),
                })?,
            ),
            None => None,
        };
        // Demo data lives only as long as the embedded broker: its state is
        // checkpointed like real data, into a directory thrown away at exit,
        // inside --checkpoint-dir when one is given.
        let demo_dir = settings.is_demo().then(|| {
            let parent = if settings.checkpoint_dir_given {
                settings.checkpoint_dir.clone()
            } else {
                std::env::temp_dir()
            };
            DemoDir(parent.join(format!("ipstats-demo-{}", std::process::id())))
        });
        if let Some(dir) = &demo_dir {
            settings.checkpoint_dir = dir.0.clone();
            let dir = dir.0.clone();
            blocking(move || {
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            })
            .await?;
        }
        // Before any socket: a directory another process uses, or one that
        // cannot be created, stops the start here.
        let dir_lock = {
            let dir = settings.checkpoint_dir.clone();
            blocking(move || Ok(checkpoint::lock::lock(&dir)?)).await?
        };
        // Bound before anything else starts (the demo broker, Kafka clients):
        // a busy port is the first error, not the last.
        // Descriptors: as many as allowed, and HTTP clients never get them all.
        let fd_limit = match raise_fd_limit() {
            Ok((soft, hard)) => {
                info!(soft, hard, "open-files limit");
                soft
            }
            Err(error) => {
                warn!(%error, "reading the open-files limit failed; assuming 1024");
                1024
            }
        };
        let connections = ConnectionLimits {
            max: settings.max_connections,
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
        }
        .within(fd_limit);
        if connections.max < settings.max_connections {
            warn!(
                max_connections = connections.max,
                asked = settings.max_connections,
                fd_limit,
                "--max-connections lowered to fit the open-files limit"
            );
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", settings.listen))?;
        let addr = listener
            .local_addr()
            .context("reading the listen address")?;
        let metrics = Metrics::new().context("creating metrics")?;
        metrics.offset_stores(settings.zookeeper.is_some());
        // Every rule's and receiver's series, at zero, from the first scrape.
        let in_force = rules.as_ref().map(|r| r.current());
        outbox::declare_series(&metrics, in_force.as_deref().map_or(&[][..], Vec::as_slice));
        deliver::declare_series(
            &metrics,
            settings.alert_webhook.is_some(),
            settings.alertmanager.is_some(),
        );
        let shared = Sources {
            published: Published::new(Snapshot::empty(settings.window, settings.slide)),
            health: Arc::new(Health::new(settings.is_demo())),
            metrics,
            committed: Arc::new(Committed::new(settings.zookeeper.is_some())),
            checkpoint: Arc::new(checkpoint::Status::default()),
        };
        let supervisor = Supervisor::default();
        let parts = supervisor.parts();
        let stop = Stop::new();
        // SIGHUP would end the process (its default); from here on it asks
        // for a reload instead.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        {
            let cancel = CancellationToken::new();
            parts.task(
                "reload",
                Stage::Serve,
                Signal::Token(cancel.clone()),
                Report::FailuresOnly,
                None,
                console::reload_on_hangup(hangups, rules.clone(), cancel),
            );
        }

        let zookeeper = match &settings.zookeeper {
            Some(connect) => {
                let dir = settings.checkpoint_dir.clone();
                Some(ZkOptions {
                    connect: connect.clone(),
                    group: settings.group.clone(),
                    session_timeout: settings.zookeeper_session_timeout,
                    instance_id: blocking(move || Ok(instance_id(&dir)?)).await?,
                })
            }
            None => None,
        };

        let brokers = match &settings.brokers {
            Some(brokers) => brokers.clone(),
            None => {
                let demo_stop = Stop::new();
                let (topics, rate, signal) = (
                    settings.topics.clone(),
                    settings.demo_rate,
                    demo_stop.clone(),
                );
                let (bootstrap, handle) =
                    blocking(move || demo::start(topics, rate, signal)).await?;
                parts.thread(
                    "demo",
                    Stage::Demo,
                    Signal::Flag(demo_stop),
                    Report::Always,
                    move || {
                        handle
                            .join()
                            .unwrap_or_else(|_| Err(anyhow!("the demo thread panicked")))
                    },
                )?;
                warn!(
                    brokers = %bootstrap,
                    "DEMO MODE: embedded in-process broker with generated traffic; pass --brokers to count real logs"
                );
                bootstrap
            }
        };

        let auto_reset = match settings.offset_reset {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
            OffsetReset::Fail => "error",
        };
        let config = consumer_config(
            &brokers,
            &settings.group,
            auto_reset,
            &settings.kafka_config,
        );
        let logs = Arc::new(LogLimit::default());
        let client = |role: &str| -> anyhow::Result<KafkaConsumer> {
            ClientConfig::clone(&config)
                .set("client.id", format!("ipstats-{role}"))
                .create_with_context(KafkaContext {
                    health: shared.health.clone(),
                    metrics: shared.metrics.clone(),
                    logs: logs.clone(),
                })
                .with_context(|| format!("creating the Kafka {role} client"))
        };
        let consumer = client("ingest")?;
        let group_client = Arc::new(client("committer")?);
        let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
        {
            let (monitor, tail) = (client("monitor")?, client("tail")?);
            let idle = group_client.clone();
            let (topics, health, stop) =
                (settings.topics.clone(), shared.health.clone(), stop.clone());
            parts.thread(
                "monitor",
                Stage::Consume,
                Signal::Flag(stop.clone()),
                Report::Always,
                move || {
                    run_monitor(
                        MonitorClients {
                            monitor,
                            tail,
                            idle: vec![idle],
                        },
                        topics,
                        MONITOR_INTERVAL,
                        view_tx,
                        health,
                        stop,
                    );
                    Ok(())
                },
            )?;
        }

        let serve_cancel = CancellationToken::new();
        let state = AppState {
            answers: start_answers(&shared, parts)?,
            renders: Default::default(),
            sources: shared.clone(),
            adhoc: Default::default(),
            streams: Arc::new(Streams::new(
                settings.max_event_streams,
                serve_cancel.clone(),
            )),
            access: Arc::new(Access::new(
                settings.auth_token.as_ref().map(Secret::expose),
                settings.metrics_without_auth,
                settings.allowed_hosts.clone(),
            )),
            info: Arc::new(ServiceInfo {
                checkpoint_dir: settings.checkpoint_dir.display().to_string(),
                group: settings.group.clone(),
                topics: settings.topics.clone(),
                brokers: if settings.is_demo() {
                    format!("embedded demo ({brokers})")
                } else {
                    brokers.clone()
                },
                zookeeper: zookeeper.as_ref().map(ZkOptions::display),
                batch: settings.batch,
                retention: settings.retention,
                time_source: settings.time.source.as_str(),
                time_field: settings.time.parsed_field().map(str::to_string),
                lateness: settings.time.lateness,
            }),
        };
        {
            let cancel = serve_cancel.clone();
            parts.task(
                "HTTP server",
                Stage::Serve,
                Signal::Token(serve_cancel.clone()),
                Report::Always,
                Some(HTTP_PATIENCE),
                serve(listener, router(state), connections, cancel)
                    .map(|served| served.context("the HTTP server failed")),
            );
        }
        console::print_banner(&settings, &brokers, zookeeper.as_ref(), addr);
        info!(url = %format!("http://{addr}/"), "ipstats started");
        {
            // Silent from the moment the stop begins: a progress line after
            // "ingest stopped" would describe nothing that still moves.
            let quiet = CancellationToken::new();
            let progress = console::report_progress(shared.published.clone(), quiet.clone());
            parts.task(
                "progress",
                Stage::Consume,
                Signal::Token(quiet),
                Report::FailuresOnly,
                None,
                async move {
                    progress.await;
                    Ok(())
                },
            );
        }

        let outbox = start_delivery(&settings, &shared, parts);
        let shutdown_grace = settings.shutdown_grace;
        let startup = Startup {
            rules,
            outbox,
            settings,
            zookeeper,
            consumer,
            group_client,
            view: view_rx,
            shared,
            stop,
        };
        {
            let (cancel, launcher) = (CancellationToken::new(), parts.clone());
            parts.task(
                "startup",
                Stage::Startup,
                Signal::Token(cancel.clone()),
                Report::FailuresOnly,
                None,
                async move {
                    match startup.resolve(cancel).await? {
                        Some(ready) => ready.launch(&launcher),
                        None => Ok(()),
                    }
                },
            );
        }
        Ok(App {
            addr,
            supervisor,
            shutdown_grace,
            dir_lock,
            demo_dir,
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until `shutdown` completes or a part fails, then stops all.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let outcome = tokio::select! {
            () = shutdown => {
                info!("shutting down");
                Ok(())
            }
            (name, result) = self.supervisor.ended() => match result {
                Err(e) => Err(e.context(format!("{name} failed"))),
                Ok(()) => Err(anyhow!("{name} stopped unexpectedly")),
            },
        };
        if let Err(e) = &outcome {
            error!("{e:#}");
        }
        let grace = self.shutdown_grace;
        let progress = self.supervisor.progress();
        let stopped = match tokio::time::timeout(grace, self.stop()).await {
            Ok(stopped) => stopped,
            Err(_) => overran(grace, &progress),
        };
        outcome.and(stopped)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let stopped = self.supervisor.stop().await;
        drop(self.dir_lock);
        if let Some(dir) = self.demo_dir {
            let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
        }
        stopped
    }
}

/// The alert receivers' sending loops, each a part of the supervisor (they
/// end when the Serve stage stops); the evaluator's end of their queues.
fn start_delivery(settings: &Settings, shared: &Sources, parts: &Parts) -> Option<Outbox> {
    let cancel = CancellationToken::new();
    let targets = Targets {
        webhook: settings.alert_webhook.clone(),
        alertmanager: settings.alertmanager.clone(),
        max_age: settings.alert_max_age,
        queue: settings.alert_queue,
    };
    let delivery = deliver::start(&targets, shared.published.clone(), &shared.metrics, &cancel)?;
    for (name, sender) in delivery.senders {
        parts.task(
            name,
            Stage::Serve,
            Signal::Token(cancel.clone()),
            Report::FailuresOnly,
            None,
            async move {
                sender.await;
                Ok(())
            },
        );
    }
    Some(delivery.outbox)
}

/// What an overrun of `--shutdown-grace` means, by how far the stop got.
/// The answers HTTP asks, and their query workers: threads of their own,
/// stopped with the server.
fn start_answers(shared: &Sources, parts: &Parts) -> anyhow::Result<Answers> {
    let stop = Stop::new();
    let (pool, workers) = Pool::new(answers::WORKERS.len(), &stop);
    for (name, worker) in answers::WORKERS.into_iter().zip(workers) {
        parts.thread(
            name,
            Stage::Serve,
            Signal::Flag(stop.clone()),
            Report::Always,
            move || {
                worker.run();
                Ok(())
            },
        )?;
    }
    Ok(Answers::new(shared.published.clone(), pool))
}

fn overran(grace: Duration, progress: &StopProgress) -> anyhow::Result<()> {
    let grace = humantime::format_duration(grace);
    if progress.stopped(Stage::Commit) {
        // Counted, durable and committed: what lingers only serves.
        warn!(
            "stopped; HTTP connections or the demo broker still open after --shutdown-grace ({grace}) were dropped"
        );
        Ok(())
    } else if progress.stopped(Stage::Persist) {
        Err(anyhow!(
            "shutdown took longer than --shutdown-grace ({grace}): the final checkpoint is written \
             (a restart reads nothing twice), but the last offset commit did not finish; the \
             stores catch up at restart"
        ))
    } else {
        Err(anyhow!(
            "shutdown took longer than --shutdown-grace ({grace}); the last checkpoint stands, \
             later records are read again at restart"
        ))
    }
}

/// Starts the service and runs it until `shutdown` completes. `shutdown` is
/// polled first, so that its signal handlers are in place before anything
/// is created; a signal during start-up drops what was started.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let app = tokio::select! {
        biased;
        () = &mut shutdown => {
            info!("stopped during start-up");
            return Ok(());
        }
        app = App::start(settings) => app?,
    };
    app.run_until(shutdown).await
}
