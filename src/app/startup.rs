//! Start-up once HTTP answers: restore the checkpoint; with ZooKeeper,
//! connect, claim the partitions and read their stored offsets; read the
//! Kafka group's committed offsets; choose each partition's stored offset
//! (checkpoint, ZooKeeper, group); prepare the checkpoint writer. Every wait
//! here is cancellable (a SIGTERM during the ZooKeeper ownership wait ends it
//! at once). Then [`Ready::launch`] starts ingest, the writer and the
//! committers under the supervisor.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::parts::{Parts, Report, Signal, Stage};
use crate::checkpoint::{self, CheckpointJob, Restored, Shape, Writer};
use crate::config::Settings;
use crate::http::Sources;
use crate::ingest::{ClusterLink, Ingest, IngestConfig, Links, Resume};
use crate::kafka::{ClusterView, KafkaConsumer, ViewReceiver};
use crate::offsets::committed::StoreState;
use crate::offsets::zookeeper::{ZkOptions, ZkStore};
use crate::offsets::{
    CommitRequest, OffsetsOf, StoredOffsets, choose_stored, kafka_group, zookeeper,
};
use crate::stop::Stop;
use crate::vocab::IngestTotals;
use crate::vocab::Origin;

/// Everything start-up needs, moved in by the app.
pub struct Startup {
    pub settings: Settings,
    pub zookeeper: Option<ZkOptions>,
    pub consumer: Arc<KafkaConsumer>,
    pub group_client: Arc<KafkaConsumer>,
    pub view: ViewReceiver,
    pub shared: Sources,
    /// Stops ingest (the same flag stops the cluster monitor).
    pub stop: Stop,
    /// `--rules`, and where their transitions are sent.
    pub rules: Option<Arc<crate::rules::Rules>>,
    pub outbox: Option<crate::rules::outbox::Outbox>,
    /// `--cluster`: ingest joins the group instead of taking every partition.
    pub cluster: Option<ClusterLink>,
}

/// Start-up resolved: where to start, ready to launch.
pub struct Ready {
    startup: Startup,
    restored: Option<Restored>,
    /// Each partition's stored offset, from the first store that holds one.
    stored: StoredOffsets,
    zk_store: Option<ZkStore>,
    writer: Writer,
}

impl Startup {
    /// Resolves where to start; `Ok(None)` when `cancel` fires first.
    pub async fn resolve(self, cancel: CancellationToken) -> anyhow::Result<Option<Ready>> {
        tokio::select! {
            () = cancel.cancelled() => Ok(None),
            ready = self.resolve_uncancelled(&cancel) => ready,
        }
    }

    async fn resolve_uncancelled(
        mut self,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Ready>> {
        let health = self.shared.health.clone();
        health.set_phase("restoring the checkpoint");
        let restored = self.restore().await?;
        let from_checkpoint = restored
            .as_ref()
            .map(|r| checkpoint::store::manifest_offsets(&r.manifest))
            .unwrap_or_default();
        let mut from_zookeeper = OffsetsOf::new();
        let mut zk_store = None;
        let view = if let Some(options) = &self.zookeeper {
            health.set_phase("waiting for ZooKeeper");
            let committed = self.shared.committed.clone();
            let status = &committed.zookeeper;
            let Some(mut store) = ZkStore::connect_retrying(options, status, cancel).await else {
                return Ok(None);
            };
            health.set_phase("waiting for the Kafka cluster to answer");
            let Some(view) = self.first_view().await else {
                return Ok(None);
            };
            if self.cluster.is_none() {
                // One instance takes every partition; with --cluster the
                // registry takes each one the group hands over.
                health.set_phase("claiming partition ownership in ZooKeeper");
                for p in &view.partitions {
                    store.claim(&p.topic, p.partition).await?;
                }
            }
            for p in &view.partitions {
                if let Some(offset) = store.read_offset(&p.topic, p.partition).await? {
                    from_zookeeper.insert((p.topic.clone(), p.partition), offset);
                }
            }
            status.record(
                from_zookeeper.iter().map(|((t, p), o)| (t.clone(), *p, *o)),
                false,
            );
            info!(
                partitions = view.partitions.len(),
                stored = from_zookeeper.len(),
                "ZooKeeper offsets read; partitions owned by this instance"
            );
            zk_store = Some(store);
            view
        } else {
            health.set_phase("waiting for the Kafka cluster to answer");
            let Some(view) = self.first_view().await else {
                return Ok(None);
            };
            view
        };
        // The group is needed when a partition has no offset in the stores
        // before it; otherwise it is read for display only.
        let needed = view.partitions.iter().any(|p| {
            let key = (p.topic.clone(), p.partition);
            !from_checkpoint.contains_key(&key) && !from_zookeeper.contains_key(&key)
        });
        health.set_phase("reading the Kafka group's committed offsets");
        let Some(from_group) = self.read_group_offsets(&view, needed, cancel).await else {
            return Ok(None);
        };
        let stored = choose_stored(&from_checkpoint, &from_zookeeper, &from_group);
        log_start_offsets(&stored);
        let (dir, shape) = (
            self.settings.checkpoint_dir.clone(),
            Shape::of(&self.settings),
        );
        let (writer, restored) = tokio::task::spawn_blocking(move || {
            Writer::new(&dir, shape, restored.as_ref()).map(|w| (w, restored))
        })
        .await??;
        Ok(Some(Ready {
            startup: self,
            restored,
            stored,
            zk_store,
            writer,
        }))
    }

    /// `--reset-checkpoint`, then the newest valid checkpoint, checked
    /// against the settings (off the async workers: it reads files).
    async fn restore(&self) -> anyhow::Result<Option<Restored>> {
        let dir = self.settings.checkpoint_dir.clone();
        let shape = Shape::of(&self.settings);
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
            self.shared.checkpoint.set_restored_from(what);
        }
        Ok(restored)
    }

    async fn first_view(&mut self) -> Option<Arc<ClusterView>> {
        let view = self.view.wait_for(|v| v.refreshed.is_some()).await;
        view.ok().map(|v| v.clone())
    }

    /// The group's committed offsets for the partitions of `view`. When
    /// `needed`, retried until read (a partition would otherwise start by
    /// `--offset-reset` and recount or skip what the group has); `None` when
    /// cancelled first. Otherwise one try, for display.
    async fn read_group_offsets(
        &self,
        view: &ClusterView,
        needed: bool,
        cancel: &CancellationToken,
    ) -> Option<OffsetsOf> {
        let partitions: Vec<_> = view
            .partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        if partitions.is_empty() {
            return Some(OffsetsOf::new());
        }
        let committed = &self.shared.committed.kafka;
        let mut backoff = Duration::from_millis(250);
        loop {
            let (client, asked) = (self.group_client.clone(), partitions.clone());
            let read =
                tokio::task::spawn_blocking(move || kafka_group::read_committed(&client, &asked))
                    .await;
            let error = match read {
                Ok(Ok(offsets)) => {
                    committed.record(offsets.iter().cloned(), false);
                    committed.set_state(StoreState::Connected);
                    info!(
                        partitions = partitions.len(),
                        committed = offsets.len(),
                        "Kafka group's committed offsets read"
                    );
                    return Some(offsets.into_iter().map(|(t, p, o)| ((t, p), o)).collect());
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            committed.failed(error.clone());
            if !needed {
                warn!(%error, "reading the Kafka group's committed offsets failed; \
                    the start offsets come from the checkpoint or ZooKeeper");
                return Some(OffsetsOf::new());
            }
            warn!(%error, retry_in = ?backoff, "reading the Kafka group's committed offsets failed; \
                retrying before any partition starts");
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Says where the partitions start from; a disagreement between the stores
/// is a warning when ZooKeeper's offset wins over the group's, a note when
/// the checkpoint's wins (the stores lag behind it after a crash).
fn log_start_offsets(stored: &StoredOffsets) {
    let mut by_origin = [0usize; 3];
    for ((topic, partition), s) in stored {
        by_origin[s.origin as usize] += 1;
        let Some(note) = &s.note else { continue };
        if s.origin == Origin::Checkpoint {
            info!(%topic, partition, offset = s.offset, "{note}");
        } else {
            warn!(%topic, partition, offset = s.offset, "the offset stores disagree: {note}");
        }
    }
    info!(
        checkpoint = by_origin[Origin::Checkpoint as usize],
        zookeeper = by_origin[Origin::Zookeeper as usize],
        kafka_group = by_origin[Origin::KafkaGroup as usize],
        "stored offsets found, by store"
    );
}

impl Ready {
    /// Starts the checkpoint writer, ingest and the committers. Offsets flow
    /// ingest → writer (durable) → `commits` → committers.
    pub fn launch(self, parts: &Parts) -> anyhow::Result<()> {
        let Ready {
            startup: s,
            restored,
            stored,
            zk_store,
            writer,
        } = self;
        let commits = watch::channel(Arc::new(CommitRequest::default())).0;
        let resume = restored.map(|r| resume(r, &commits));
        let jobs = start_writer(writer, &s.shared, &commits, parts)?;
        s.shared.health.set_phase("consuming");
        let links = Links {
            view: s.view.clone(),
            checkpoints: jobs,
            published: s.shared.published.clone(),
            health: s.shared.health.clone(),
            metrics: s.shared.metrics.clone(),
            cluster: s.cluster.clone(),
        };
        let ingest = Ingest::new(
            s.consumer,
            IngestConfig {
                rules: s.rules.clone(),
                outbox: s.outbox.clone(),
                owners: s.shared.owners.clone(),
                ..IngestConfig::from(&s.settings)
            },
            stored,
            resume,
            links,
        )
        .context("starting the counting thread")?;
        let stop = s.stop.clone();
        parts.thread(
            "ingest",
            Stage::Consume,
            Signal::Flag(s.stop),
            Report::Always,
            move || ingest.run(stop).map_err(anyhow::Error::from),
        )?;
        start_committers(
            s.group_client,
            s.cluster.map(|c| c.ownership),
            s.zookeeper,
            zk_store,
            &s.shared,
            &commits,
            parts,
        );
        Ok(())
    }
}

/// The window a restored checkpoint continues; its offsets, durable
/// already, are the first commit request (the stores may lag behind it
/// after a crash).
fn resume(r: Restored, commits: &watch::Sender<Arc<CommitRequest>>) -> Resume {
    commits.send_replace(Arc::new(CommitRequest {
        offsets: checkpoint::store::manifest_offsets(&r.manifest)
            .into_iter()
            .map(|((t, p), o)| (t, p, o))
            .collect(),
    }));
    Resume {
        panes: r.panes,
        next_seq: r.manifest.next_pane_seq,
        totals: IngestTotals::from(&r.manifest.totals),
        event_end_ms: r.manifest.event_end_ms,
        alerts: r.manifest.alerts,
    }
}

/// Starts the checkpoint writer; returns where ingest hands it jobs. Each
/// durable job's offsets become the commit request.
fn start_writer(
    writer: Writer,
    shared: &Sources,
    commits: &watch::Sender<Arc<CommitRequest>>,
    parts: &Parts,
) -> anyhow::Result<SyncSender<CheckpointJob>> {
    let (jobs, job_queue) = std::sync::mpsc::sync_channel(1);
    let (commits, status, metrics) = (
        commits.clone(),
        shared.checkpoint.clone(),
        shared.metrics.clone(),
    );
    let on_durable = move |job: &CheckpointJob| {
        commits.send_replace(Arc::new(CommitRequest {
            offsets: job.offsets.clone(),
        }));
    };
    parts.thread(
        "checkpoint writer",
        Stage::Persist,
        Signal::Upstream,
        Report::FailuresOnly,
        move || {
            checkpoint::run_writer(writer, job_queue, on_durable, &status, &metrics);
            Ok(())
        },
    )?;
    Ok(jobs)
}

/// The committers: the Kafka group's, and ZooKeeper's with `--zookeeper`.
/// They end only at shutdown, or after ingest (which reports why).
fn start_committers(
    group_client: Arc<KafkaConsumer>,
    ownership: Option<Arc<crate::cluster::Ownership>>,
    zookeeper: Option<ZkOptions>,
    zk_store: Option<ZkStore>,
    shared: &Sources,
    commits: &watch::Sender<Arc<CommitRequest>>,
    parts: &Parts,
) {
    let cancel = CancellationToken::new();
    parts.task(
        "kafka committer",
        Stage::Commit,
        Signal::Token(cancel.clone()),
        Report::FailuresOnly,
        None,
        kafka_group::run_committer(
            group_client,
            ownership,
            commits.subscribe(),
            shared.committed.clone(),
            shared.metrics.clone(),
            cancel.clone(),
        ),
    );
    if let Some(options) = zookeeper {
        parts.task(
            "zookeeper committer",
            Stage::Commit,
            Signal::Token(cancel.clone()),
            Report::FailuresOnly,
            None,
            zookeeper::run_committer(
                zk_store,
                options,
                commits.subscribe(),
                shared.committed.clone(),
                shared.metrics.clone(),
                cancel,
            ),
        );
    }
}
