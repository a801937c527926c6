//! Wires the components, owns their lifetimes and orders shutdown.
//!
//! ```text
//! demo thread (optional) ─► Kafka ─► ingest thread ─► Arc<Snapshot> ─► HTTP
//!                               │          └─► commit requests ─► ZooKeeper / Kafka group committers
//!                               └──► monitor thread (partitions, watermarks, newest timestamps)
//! ```
//! Start-up: HTTP first (so health and status answer at once), then — with
//! ZooKeeper — connect, claim the partitions, read the stored offsets, and
//! only then consume. Shutdown: ingest closes and publishes its last batch,
//! the committers commit it, then HTTP and the demo broker stop.
//! Every thread and task is owned here; one that ends early stops the service.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};
use rdkafka::config::ClientConfig;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::{self, Writer};
use crate::config::{OffsetReset, Settings};
use crate::http::{AppState, ServiceInfo, router};
use crate::ingest::{Ingest, IngestConfig, Resume, StoredOffsets};
use crate::kafka::{
    ClusterView, KafkaConsumer, KafkaContext, ViewReceiver, consumer_config, run_monitor,
};
use crate::metrics::Metrics;
use crate::offsets::committed::{Committed, StoreState};
use crate::offsets::zookeeper::{ZkOptions, ZkStore};
use crate::offsets::{CommitRequest, kafka_group, zookeeper};
use crate::snapshot::{Health, Published, Snapshot};
use crate::stop::Stop;

/// How often partitions and watermarks are refreshed.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

type Exit = (&'static str, anyhow::Result<()>);
type Exits = mpsc::UnboundedSender<Exit>;

/// What start-up launched once the start offsets were known.
struct Launched {
    ingest: (&'static str, JoinHandle<()>),
    writer: (&'static str, JoinHandle<()>),
    committers: Vec<tokio::task::JoinHandle<()>>,
}

/// A started service.
pub struct App {
    addr: SocketAddr,
    /// Stops the ingest and monitor threads.
    stop: Stop,
    /// The demo broker outlives the clients reading from it.
    demo_stop: Stop,
    /// Stops start-up waits (ZooKeeper, first metadata).
    startup_cancel: CancellationToken,
    /// Tells the committers to make their last commit and end.
    commit_cancel: CancellationToken,
    server_cancel: CancellationToken,
    exits: mpsc::UnboundedReceiver<Exit>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    startup: tokio::task::JoinHandle<Option<Launched>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown_grace: Duration,
    progress: tokio::task::JoinHandle<()>,
    /// The demo's throw-away checkpoint directory, removed at exit.
    demo_dir: Option<std::path::PathBuf>,
}

/// Spawns a named thread whose end is reported on `exits`. A `follower`
/// (one that ends because its upstream did) reports only failures, so that
/// the upstream's own report is the one that counts.
fn spawn_thread(
    name: &'static str,
    exits: &Exits,
    follower: bool,
    body: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<(&'static str, JoinHandle<()>)> {
    let exits = exits.clone();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = body();
            if !(follower && result.is_ok()) {
                let _ = exits.send((name, result));
            }
        })
        .with_context(|| format!("spawning the {name} thread"))?;
    Ok((name, handle))
}

fn spawn_task(
    name: &'static str,
    exits: &Exits,
    body: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let exits = exits.clone();
    tokio::spawn(async move {
        // Committers end only at shutdown or when ingest is gone: report failures only.
        if let Err(e) = body.await {
            let _ = exits.send((name, Err(e)));
        }
    })
}

/// Everything start-up needs to launch ingest and the committers.
struct Startup {
    settings: Settings,
    zookeeper: Option<ZkOptions>,
    consumer: KafkaConsumer,
    group_client: Arc<KafkaConsumer>,
    view: ViewReceiver,
    commits: watch::Sender<Arc<CommitRequest>>,
    published: Published,
    health: Arc<Health>,
    metrics: Metrics,
    committed: Arc<Committed>,
    checkpoint: Arc<checkpoint::Status>,
    stop: Stop,
    cancel: CancellationToken,
    commit_cancel: CancellationToken,
    exits: Exits,
}

impl Startup {
    /// Resolves where to start and launches ingest and the committers; `None`
    /// when cancelled first. Failures go to the exit channel.
    async fn run(self) -> Option<Launched> {
        let exits = self.exits.clone();
        match self.launch().await {
            Ok(launched) => launched,
            Err(e) => {
                let _ = exits.send(("startup", Err(e)));
                None
            }
        }
    }

    async fn launch(mut self) -> anyhow::Result<Option<Launched>> {
        self.health.set_phase("restoring the checkpoint");
        let restored = self.restore().await?;
        let mut zk_store = None;
        let mut stored = StoredOffsets::new();
        if let Some(options) = &self.zookeeper {
            self.health.set_phase("waiting for ZooKeeper");
            let Some(mut store) =
                ZkStore::connect_retrying(options, &self.committed.zookeeper, &self.cancel).await
            else {
                return Ok(None);
            };
            self.health.set_phase("waiting for Kafka metadata");
            let Some(view) = self.first_view().await else {
                return Ok(None);
            };
            self.health
                .set_phase("claiming partition ownership in ZooKeeper");
            for p in &view.partitions {
                store.claim(&p.topic, p.partition).await?;
            }
            // The checkpoint wins; ZooKeeper is read for display, and for the
            // start offsets only when there is no checkpoint.
            let mut zk_offsets = StoredOffsets::new();
            for p in &view.partitions {
                if let Some(offset) = store.read_offset(&p.topic, p.partition).await? {
                    zk_offsets.insert((p.topic.clone(), p.partition), offset);
                }
            }
            self.committed.zookeeper.record(
                zk_offsets.iter().map(|((t, p), o)| (t.clone(), *p, *o)),
                false,
            );
            info!(
                partitions = view.partitions.len(),
                stored = zk_offsets.len(),
                "ZooKeeper offsets read; partitions owned by this instance"
            );
            if restored.is_none() {
                stored = zk_offsets;
            }
            zk_store = Some(store);
        }
        self.read_group_offsets().await;

        let writer = Writer::new(
            &self.settings.checkpoint_dir,
            self.settings.shape(),
            restored.as_ref(),
        )?;
        let resume = restored.map(|r| {
            stored = checkpoint::manifest_offsets(&r.manifest);
            // Durable already: the stores may lag behind it after a crash.
            self.commits.send_replace(Arc::new(CommitRequest {
                offsets: stored
                    .iter()
                    .map(|((t, p), o)| (t.clone(), *p, *o))
                    .collect(),
            }));
            Resume {
                panes: r.panes,
                next_seq: r.manifest.next_pane_seq,
                counters: r.manifest.counters,
            }
        });
        let (jobs, job_queue) = std::sync::mpsc::sync_channel(1);
        let writer = {
            let (commits, status, metrics) = (
                self.commits.clone(),
                self.checkpoint.clone(),
                self.metrics.clone(),
            );
            spawn_thread("checkpoint writer", &self.exits, true, move || {
                checkpoint::run_writer(writer, job_queue, commits, status, metrics);
                Ok(())
            })?
        };
        self.health.set_phase("consuming");
        let ingest = Ingest::new(
            self.consumer,
            IngestConfig::from(&self.settings),
            stored,
            resume,
            self.view.clone(),
            jobs,
            self.published.clone(),
            self.health.clone(),
            self.metrics.clone(),
        )
        .context("starting the counting thread")?;
        let stop = self.stop.clone();
        let ingest = spawn_thread("ingest", &self.exits, false, move || {
            ingest.run(stop).map_err(anyhow::Error::from)
        })?;
        let mut committers = vec![spawn_task(
            "kafka committer",
            &self.exits,
            kafka_group::run_committer(
                self.group_client.clone(),
                self.commits.subscribe(),
                self.committed.clone(),
                self.metrics.clone(),
                self.commit_cancel.clone(),
            ),
        )];
        if let Some(options) = self.zookeeper.take() {
            committers.push(spawn_task(
                "zookeeper committer",
                &self.exits,
                zookeeper::run_committer(
                    zk_store,
                    options,
                    self.commits.subscribe(),
                    self.committed.clone(),
                    self.metrics.clone(),
                    self.commit_cancel.clone(),
                ),
            ));
        }
        Ok(Some(Launched {
            ingest,
            writer,
            committers,
        }))
    }

    /// `--reset-checkpoint`, then the newest valid checkpoint, checked
    /// against the settings (off the async workers: it reads files).
    async fn restore(&self) -> anyhow::Result<Option<checkpoint::Restored>> {
        let dir = self.settings.checkpoint_dir.clone();
        let shape = self.settings.shape();
        let reset = self.settings.reset_checkpoint;
        let restored = tokio::task::spawn_blocking(move || {
            if reset {
                let removed = checkpoint::reset(&dir)?;
                warn!(dir = %dir.display(), manifests = removed, "--reset-checkpoint: previous state discarded");
            }
            let restored = checkpoint::load(&dir)?;
            if let Some(r) = &restored {
                checkpoint::check_shape(&dir, &r.manifest.shape, &shape)?;
            }
            Ok::<_, checkpoint::CheckpointError>(restored)
        })
        .await??;
        if let Some(r) = &restored {
            let what = format!(
                "manifest {} ({} panes){}",
                r.manifest.seq,
                r.panes.len(),
                if r.skipped.is_empty() {
                    String::new()
                } else {
                    format!("; skipped damaged: {}", r.skipped.join("; "))
                }
            );
            info!(dir = %self.settings.checkpoint_dir.display(), restored = %what, "checkpoint loaded");
            self.checkpoint.set_restored_from(what);
        }
        Ok(restored)
    }

    async fn first_view(&mut self) -> Option<Arc<ClusterView>> {
        tokio::select! {
            () = self.cancel.cancelled() => None,
            view = self.view.wait_for(|v| v.refreshed.is_some()) => view.ok().map(|v| v.clone()),
        }
    }

    /// The group's committed offsets, shown beside ZooKeeper's (best effort).
    async fn read_group_offsets(&mut self) {
        let view = self.view.borrow().clone();
        let partitions: Vec<_> = view
            .partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        if partitions.is_empty() {
            return;
        }
        let client = self.group_client.clone();
        match tokio::task::spawn_blocking(move || kafka_group::read_committed(&client, &partitions))
            .await
        {
            Ok(Ok(offsets)) => {
                self.committed.kafka.record(offsets, false);
                self.committed.kafka.set_state(StoreState::Connected);
            }
            Ok(Err(e)) => warn!(error = %e, "reading the Kafka group's committed offsets failed"),
            Err(e) => warn!(error = %e, "reading the Kafka group's committed offsets failed"),
        }
    }
}

impl App {
    /// Starts everything and returns once the HTTP listener is bound.
    pub async fn start(mut settings: Settings) -> anyhow::Result<App> {
        // Demo data lives only as long as the embedded broker: its state is
        // checkpointed like real data, into a directory thrown away at exit.
        let demo_dir = settings
            .is_demo()
            .then(|| std::env::temp_dir().join(format!("ipstats-demo-{}", std::process::id())));
        if let Some(dir) = &demo_dir {
            let _ = std::fs::remove_dir_all(dir);
            settings.checkpoint_dir = dir.clone();
        }
        let checkpoint_status = Arc::new(checkpoint::Status::default());
        let metrics = Metrics::new().context("creating metrics")?;
        let health = Arc::new(Health::new(settings.is_demo()));
        let committed = Arc::new(Committed::new(settings.zookeeper.is_some(), true));
        let published = Published::new(Snapshot::empty(settings.window, settings.slide));
        let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
        let (commit_tx, _) = watch::channel(Arc::new(CommitRequest::default()));
        let stop = Stop::new();
        let demo_stop = Stop::new();
        let (startup_cancel, commit_cancel, server_cancel) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let (exit_tx, exits) = mpsc::unbounded_channel();
        let mut threads = Vec::new();

        let zookeeper = match &settings.zookeeper {
            Some(connect) => Some(ZkOptions {
                connect: connect.clone(),
                group: settings.group.clone(),
                session_timeout: settings.zookeeper_session_timeout,
                instance_id: crate::checkpoint::instance_id(&settings.checkpoint_dir)?,
            }),
            None => None,
        };

        let brokers = match &settings.brokers {
            Some(brokers) => brokers.clone(),
            None => {
                let (bootstrap, handle) = crate::demo::start(
                    settings.topics.clone(),
                    settings.demo_rate,
                    demo_stop.clone(),
                )?;
                threads.push(spawn_thread("demo", &exit_tx, false, move || {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(anyhow!("the demo thread panicked")))
                })?);
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
        let client = |role: &str| -> anyhow::Result<KafkaConsumer> {
            ClientConfig::clone(&config)
                .set("client.id", format!("ipstats-{role}"))
                .create_with_context(KafkaContext {
                    health: health.clone(),
                    metrics: metrics.clone(),
                })
                .with_context(|| format!("creating the Kafka {role} client"))
        };
        let consumer = client("ingest")?;
        let group_client = Arc::new(client("committer")?);
        {
            let (monitor, tail) = (client("monitor")?, client("tail")?);
            let (topics, health, stop) = (settings.topics.clone(), health.clone(), stop.clone());
            threads.push(spawn_thread("monitor", &exit_tx, false, move || {
                run_monitor(
                    monitor,
                    tail,
                    topics,
                    MONITOR_INTERVAL,
                    view_tx,
                    health,
                    stop,
                );
                Ok(())
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
            metrics: metrics.clone(),
            committed: committed.clone(),
            checkpoint: checkpoint_status.clone(),
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
            }),
        };
        let server = {
            let cancel = server_cancel.clone();
            tokio::spawn(async move {
                axum::serve(listener, router(state))
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await
            })
        };
        print_banner(&settings, &brokers, zookeeper.as_ref(), addr);
        info!(url = %format!("http://{addr}/"), "ipstats started");
        let progress = tokio::spawn(report_progress(published.clone(), server_cancel.clone()));

        let shutdown_grace = settings.shutdown_grace;
        let startup = tokio::spawn(
            Startup {
                checkpoint: checkpoint_status,
                settings,
                zookeeper,
                consumer,
                group_client,
                view: view_rx,
                commits: commit_tx,
                published: published.clone(),
                health: health.clone(),
                metrics,
                committed,
                stop: stop.clone(),
                cancel: startup_cancel.clone(),
                commit_cancel: commit_cancel.clone(),
                exits: exit_tx,
            }
            .run(),
        );
        Ok(App {
            addr,
            stop,
            demo_stop,
            startup_cancel,
            commit_cancel,
            server_cancel,
            exits,
            threads,
            startup,
            server,
            shutdown_grace,
            progress,
            demo_dir,
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until `shutdown` completes or a component fails, then stops all.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let outcome = tokio::select! {
            () = shutdown => {
                info!("shutting down");
                Ok(())
            }
            Some((name, result)) = self.exits.recv() => match result {
                Err(e) => Err(e.context(format!("{name} failed"))),
                Ok(()) => Err(anyhow!("{name} stopped unexpectedly")),
            },
            result = &mut self.server => match result {
                Ok(Ok(())) => Err(anyhow!("the HTTP server stopped unexpectedly")),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("the HTTP server failed")),
                Err(e) => Err(anyhow::Error::from(e).context("the HTTP server task failed")),
            },
        };
        if let Err(e) = &outcome {
            error!("{e:#}");
        }
        let grace = self.shutdown_grace;
        let stopped = match tokio::time::timeout(grace, self.stop_all()).await {
            Ok(stopped) => stopped,
            Err(_) => Err(anyhow!(
                "shutdown took longer than --shutdown-grace ({}); the last checkpoint stands, \
                 later records are read again at restart",
                humantime::format_duration(grace)
            )),
        };
        outcome.and(stopped)
    }

    async fn stop_all(self) -> anyhow::Result<()> {
        let App {
            stop,
            demo_stop,
            startup_cancel,
            commit_cancel,
            server_cancel,
            mut exits,
            threads,
            startup,
            server,
            demo_dir,
            progress,
            ..
        } = self;
        progress.abort();
        stop.set();
        startup_cancel.cancel();
        let launched = startup.await.ok().flatten();
        let (demo, mut others): (Vec<_>, Vec<_>) =
            threads.into_iter().partition(|(name, _)| *name == "demo");
        let mut committers = Vec::new();
        let mut writer = Vec::new();
        if let Some(launched) = launched {
            others.push(launched.ingest);
            writer.push(launched.writer);
            committers = launched.committers;
        }
        join_threads(others).await?;
        // Ingest has handed over its last batch; once the writer has made it
        // durable, the committers commit it. Then the rest stops.
        join_threads(writer).await?;
        commit_cancel.cancel();
        for task in committers {
            let _ = task.await;
        }
        server_cancel.cancel();
        if !server.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        demo_stop.set();
        join_threads(demo).await?;
        if let Some(dir) = demo_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let mut first_error = None;
        while let Ok((name, result)) = exits.try_recv() {
            if let Err(e) = result {
                first_error.get_or_insert(e.context(format!("{name} failed")));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

async fn join_threads(threads: Vec<(&'static str, JoinHandle<()>)>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        for (name, handle) in threads {
            if handle.join().is_err() {
                error!(thread = name, "thread panicked");
            }
        }
    })
    .await
    .context("joining threads")
}

/// The start-up banner: what runs, against what, and where to look.
fn print_banner(
    settings: &Settings,
    brokers: &str,
    zookeeper: Option<&ZkOptions>,
    addr: SocketAddr,
) {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let mode = if settings.is_demo() {
        "DEMO MODE: embedded broker with generated traffic (pass --brokers to count real logs)"
    } else {
        "consuming Kafka"
    };
    eprintln!(
        "\nipstats {}  ·  {mode}\n  kafka       {brokers}   topics {}   group {}\n  zookeeper   {}\n  window      {} (slide {}, batch {})\n  checkpoint  {} (every {})\n  dashboard   http://{addr}/\n",
        env!("CARGO_PKG_VERSION"),
        settings.topics.join(","),
        settings.group,
        zookeeper.map_or_else(|| "none".to_string(), ZkOptions::display),
        d(settings.window),
        d(settings.slide),
        d(settings.batch),
        settings.checkpoint_dir.display(),
        d(settings.checkpoint_interval),
    );
}

/// One progress line every few seconds while records flow or lag remains;
/// silent when idle.
async fn report_progress(published: Published, cancel: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(5);
    let mut last: Option<(u64, std::time::Instant)> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        let snapshot = published.load();
        let consumed = snapshot.ingest.records_consumed;
        let lag: i64 = snapshot.partitions.iter().filter_map(|p| p.lag()).sum();
        let now = std::time::Instant::now();
        let rate = last.map_or(0.0, |(before, at)| {
            consumed.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64().max(1e-3)
        });
        let moved = last.is_some_and(|(before, _)| consumed != before);
        last = Some((consumed, now));
        if moved || lag > 0 {
            info!(
                "progress: {rate:.0} records/s, lag {lag}, window {} requests from {} IPs",
                snapshot.total_requests, snapshot.distinct_ips
            );
        }
    }
}

/// Starts the service and runs it until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    App::start(settings).await?.run_until(shutdown).await
}
