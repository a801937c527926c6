//! Wires the components, owns their lifetimes and orders shutdown.
//!
//! ```text
//! demo thread (optional) ─► Kafka ─► ingest thread ─► counting thread (parse + count)
//!                             │         │  └─► every slide: Arc<Snapshot> ─► answers ─► HTTP
//!                             │         └─► every checkpoint interval: job ─► checkpoint writer thread
//!                             │                                                   │ durable
//!                             │                       commit requests ◄───────────┘
//!                             │                           └─► ZooKeeper / Kafka group committers
//!                             └──► monitor thread (partitions, watermarks, newest timestamps) ─► ingest, HTTP
//! ```
//! Start-up, as [`steps`] takes it: the rules file is checked and the
//! checkpoint directory locked, the listener is bound (a busy port is the
//! first error), then the demo broker (without `--brokers`), the Kafka
//! clients and the monitor, then HTTP with its query workers (health and
//! status answer from here on), the alert senders, then [`startup`] —
//! restore the checkpoint; with ZooKeeper, connect, claim the partitions and
//! read the stored offsets — and only then consume.
//!
//! The service's threads and tasks run under [`parts::Parts`], which stops
//! them in the order [`parts::Stage`] declares: ingest closes and hands over
//! its last batch, the writer makes it durable, the committers commit it,
//! then HTTP, its query workers, the alert senders and the demo broker
//! stop. A part that ends early stops the service. One thread is owned
//! elsewhere: the counting thread belongs to ingest, which joins it.

pub mod console;
pub mod parts;
pub mod startup;
mod steps;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tracing::{error, info, warn};

use crate::checkpoint;
use crate::config::Settings;
use crate::ingest::ClusterLink;
use crate::stop::Stop;
use parts::{Stage, StopProgress, Supervisor};
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
pub struct DemoDir(PathBuf);

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
    /// Starts everything and returns once the HTTP listener is bound: the
    /// steps of [`steps`], in order.
    pub async fn start(mut settings: Settings) -> anyhow::Result<App> {
        let rules = steps::load_rules(&settings)?;
        let owners = steps::load_owners(&settings)?;
        let demo_dir = steps::demo_dir(&mut settings).await?;
        let dir_lock = steps::lock_dir(&settings).await?;
        let listening = steps::bind(&settings).await?;
        let addr = listening
            .0
            .local_addr()
            .context("reading the listen address")?;
        let shared = steps::sources(&settings, rules.as_ref(), owners.clone())?;
        let supervisor = Supervisor::default();
        let parts = supervisor.parts();
        steps::reload_on_hangup(parts, rules.clone(), owners)?;
        let cluster = steps::cluster(&settings);
        let zookeeper = steps::zookeeper(&settings, cluster.as_ref()).await?;
        let brokers = steps::brokers(&settings, parts).await?;
        let stop = Stop::new();
        let kafka =
            steps::kafka_clients(&settings, &brokers, &shared, parts, &stop, cluster.as_ref())?;
        let info = steps::service_info(&settings, &brokers, zookeeper.as_ref());
        let fanout = cluster.as_ref().map(|c| (c, kafka.view.clone()));
        let fanout = steps::serve_http(&settings, info, &shared, parts, listening, fanout)?;
        steps::registry(cluster.as_ref(), zookeeper.as_ref(), &shared, parts);
        console::print_banner(&settings, &brokers, zookeeper.as_ref(), addr);
        info!(url = %format!("http://{addr}/"), "ipstats started");
        steps::progress(&shared, parts);
        let outbox = steps::delivery(&settings, &shared, parts);
        // With --cluster and ZooKeeper the rules leader evaluates and
        // delivers on the cluster's counts, not each instance's ingest.
        let leader_rules = fanout.is_some() && zookeeper.is_some();
        let (rules, outbox) = if leader_rules {
            steps::cluster_rules(
                &settings,
                fanout.clone(),
                rules.as_ref(),
                outbox,
                zookeeper.as_ref(),
                (&shared, parts),
            );
            (None, None)
        } else {
            (rules, outbox)
        };
        let shutdown_grace = settings.shutdown_grace;
        let cluster = cluster.map(|c| ClusterLink {
            ownership: c.ownership,
            rebalances: c.rebalances,
            topics: settings.topics.clone(),
        });
        let startup = Startup {
            rules,
            outbox,
            settings,
            zookeeper,
            consumer: kafka.consumer,
            group_client: kafka.group_client,
            view: kafka.view,
            shared,
            stop,
            cluster,
        };
        steps::startup(startup, parts);
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

/// What an overrun of `--shutdown-grace` means, by how far the stop got.
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
