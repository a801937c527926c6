//! Start-up once HTTP answers: restore the checkpoint; with ZooKeeper,
//! connect, claim the partitions and read their stored offsets; read the
//! Kafka group's committed offsets; prepare the checkpoint writer. Every wait
//! here is cancellable (a SIGTERM during the ZooKeeper ownership wait ends it
//! at once). Then [`Ready::launch`] starts ingest, the writer and the
//! committers under the supervisor.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::parts::{Parts, Report, Signal, Stage};
use crate::checkpoint::{self, Restored, Shape, Writer};
use crate::config::Settings;
use crate::http::Sources;
use crate::kafka::{ClusterView, KafkaConsumer, ViewReceiver};
use crate::offsets::committed::StoreState;
use crate::offsets::zookeeper::{ZkOptions, ZkStore};
use crate::offsets::{CommitRequest, kafka_group, zookeeper};
use crate::pipeline::ingest::{Ingest, IngestConfig, Links, Resume, StoredOffsets};
use crate::pipeline::snapshot::Counters;
use crate::stop::Stop;

/// Everything start-up needs, moved in by the app.
pub struct Startup {
    pub settings: Settings,
    pub zookeeper: Option<ZkOptions>,
    pub consumer: KafkaConsumer,
    pub group_client: Arc<KafkaConsumer>,
    pub view: ViewReceiver,
    pub shared: Sources,
    /// Stops ingest (the same flag stops the cluster monitor).
    pub stop: Stop,
}

/// Start-up resolved: where to start, ready to launch.
pub struct Ready {
    startup: Startup,
    restored: Option<Restored>,
    /// ZooKeeper's offsets, used when there is no checkpoint.
    zk_offsets: StoredOffsets,
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
        let mut zk_offsets = StoredOffsets::new();
        let mut zk_store = None;
        if let Some(options) = &self.zookeeper {
            health.set_phase("waiting for ZooKeeper");
            let committed = self.shared.committed.clone();
            let status = &committed.zookeeper;
            let Some(mut store) = ZkStore::connect_retrying(options, status, cancel).await else {
                return Ok(None);
            };
            health.set_phase("waiting for Kafka metadata");
            let Some(view) = self.first_view().await else {
                return Ok(None);
            };
            health.set_phase("claiming partition ownership in ZooKeeper");
            for p in &view.partitions {
                store.claim(&p.topic, p.partition).await?;
            }
            // The checkpoint wins; ZooKeeper is read for display, and for the
            // start offsets only when there is no checkpoint.
            for p in &view.partitions {
                if let Some(offset) = store.read_offset(&p.topic, p.partition).await? {
                    zk_offsets.insert((p.topic.clone(), p.partition), offset);
                }
            }
            status.record(
                zk_offsets.iter().map(|((t, p), o)| (t.clone(), *p, *o)),
                false,
            );
            info!(
                partitions = view.partitions.len(),
                stored = zk_offsets.len(),
                "ZooKeeper offsets read; partitions owned by this instance"
            );
            zk_store = Some(store);
        }
        self.read_group_offsets().await;
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
            zk_offsets,
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
        let committed = &self.shared.committed.kafka;
        match tokio::task::spawn_blocking(move || kafka_group::read_committed(&client, &partitions))
            .await
        {
            Ok(Ok(offsets)) => {
                committed.record(offsets, false);
                committed.set_state(StoreState::Connected);
            }
            Ok(Err(e)) => warn!(error = %e, "reading the Kafka group's committed offsets failed"),
            Err(e) => warn!(error = %e, "reading the Kafka group's committed offsets failed"),
        }
    }
}

impl Ready {
    /// Starts the checkpoint writer, ingest and the committers. Offsets flow
    /// ingest → writer (durable) → `commits` → committers.
    pub fn launch(self, parts: &Parts) -> anyhow::Result<()> {
        let Ready {
            startup: s,
            restored,
            zk_offsets,
            zk_store,
            writer,
        } = self;
        let commits = watch::channel(Arc::new(CommitRequest::default())).0;
        let (stored, resume) = match restored {
            None => (zk_offsets, None),
            Some(r) => {
                let stored = checkpoint::store::manifest_offsets(&r.manifest);
                // Durable already: the stores may lag behind it after a crash.
                commits.send_replace(Arc::new(CommitRequest {
                    offsets: stored
                        .iter()
                        .map(|((t, p), o)| (t.clone(), *p, *o))
                        .collect(),
                }));
                let resume = Resume {
                    panes: r.panes,
                    next_seq: r.manifest.next_pane_seq,
                    counters: Counters::from(&r.manifest.counters),
                };
                (stored, Some(resume))
            }
        };
        let (jobs, job_queue) = std::sync::mpsc::sync_channel(1);
        {
            let (commits, status, metrics) = (
                commits.clone(),
                s.shared.checkpoint.clone(),
                s.shared.metrics.clone(),
            );
            let on_durable = move |job: &crate::pipeline::ingest::CheckpointJob| {
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
        }
        s.shared.health.set_phase("consuming");
        let links = Links {
            view: s.view.clone(),
            checkpoints: jobs,
            published: s.shared.published.clone(),
            health: s.shared.health.clone(),
            metrics: s.shared.metrics.clone(),
        };
        let ingest = Ingest::new(
            s.consumer,
            IngestConfig::from(&s.settings),
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
        // Committers end only at shutdown, or after ingest (which reports why).
        let commit_cancel = CancellationToken::new();
        parts.task(
            "kafka committer",
            Stage::Commit,
            Signal::Token(commit_cancel.clone()),
            Report::FailuresOnly,
            None,
            kafka_group::run_committer(
                s.group_client,
                commits.subscribe(),
                s.shared.committed.clone(),
                s.shared.metrics.clone(),
                commit_cancel.clone(),
            ),
        );
        if let Some(options) = s.zookeeper {
            parts.task(
                "zookeeper committer",
                Stage::Commit,
                Signal::Token(commit_cancel.clone()),
                Report::FailuresOnly,
                None,
                zookeeper::run_committer(
                    zk_store,
                    options,
                    commits.subscribe(),
                    s.shared.committed.clone(),
                    s.shared.metrics.clone(),
                    commit_cancel,
                ),
            );
        }
        Ok(())
    }
}
