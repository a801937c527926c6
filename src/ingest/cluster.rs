//! `--cluster`: the consumer group assigns the partitions.
//!
//! The consumer subscribes (cooperative-sticky). librdkafka's rebalance
//! callback only notes what changed ([`crate::kafka::Rebalanced`]); this
//! loop acts on it between two polls, before it calls the incremental
//! assign or unassign librdkafka waits for:
//!
//! 1. The generation ends: its last batch closes and is handed to the
//!    checkpoint writer; a revoked partition's offsets are committed to the
//!    group before it is given up.
//! 2. The state is dropped and started afresh for the partitions now held:
//!    each is read again from the first record of the kept history (found
//!    by time: the newest record's timestamp in the topics, minus the kept
//!    history and `--lateness`), so the window holds exactly the partitions
//!    held, never a share of one given up. The first assignment after a
//!    restart that is exactly the checkpoint's partitions resumes from it.
//! 3. [`Ownership`] is told what is held and from where each rebuild
//!    starts; a partition counts as up to date once its position reaches
//!    the log end found at assignment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::tracker::Start;
use super::{IngestError, KafkaConsumer, Resume, State, StoredOffsets};
use crate::cluster::{Ownership, Taken, label};
use crate::kafka::batch::BatchQueue;
use crate::kafka::{ClusterView, Rebalanced, Rebalances};
use crate::vocab::{Origin, Started, StartedFrom, epoch_ms};

/// How long a by-time or watermark lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What ingest shares with the rest of the cluster machinery.
#[derive(Clone, Debug)]
pub struct Link {
    pub ownership: Arc<Ownership>,
    pub rebalances: Arc<Rebalances>,
    pub topics: Vec<String>,
}

pub struct Member {
    link: Link,
    /// The checkpoint, until the first assignment.
    kept: Option<(StoredOffsets, Resume)>,
}

type Key = (Arc<str>, i32);

/// Next offsets counted: `(topic, partition, offset)`.
type Positions = Vec<(Arc<str>, i32, i64)>;

impl Member {
    pub fn new(link: Link) -> Self {
        Member { link, kept: None }
    }

    /// Keeps the restored checkpoint for the first assignment.
    pub fn keeping(mut self, stored: StoredOffsets, resume: Option<Resume>) -> Self {
        self.kept = resume.map(|r| (stored, r));
        self
    }

    pub fn subscribe(&self, consumer: &KafkaConsumer) -> Result<(), IngestError> {
        let topics: Vec<&str> = self.link.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(IngestError::Subscribe)?;
        info!(topics = ?topics, "joined the consumer group; waiting for partitions");
        Ok(())
    }

    pub fn rebalanced(&self) -> bool {
        self.link.rebalances.pending()
    }

    pub fn beat(&self) {
        self.link.ownership.beat();
    }

    /// After batches closed: the positions counted, rebuilds that ended.
    pub fn counted(&self, st: &State) {
        let done = self
            .link
            .ownership
            .advance(st.tracker.offsets().into_iter());
        for (partition, took) in done {
            st.links
                .metrics
                .partition_rebuild_seconds
                .observe(took.as_secs_f64());
            info!(%partition, seconds = took.as_secs_f64(), "partition rebuilt: counted up to the log end it had when assigned");
        }
    }

    /// Leaves the group at shutdown, so that the others take the
    /// partitions at once instead of after the session timeout. The
    /// revocation this triggers (and the consumer's close) is acted on by
    /// the callback itself from now on.
    pub fn leave(self, consumer: &KafkaConsumer) {
        self.link.rebalances.leave();
        // Decisions not acted on yet: acknowledged, so that the group goes on.
        for event in self.link.rebalances.take() {
            let _ = match event {
                Rebalanced::Assign(list) => consumer.incremental_assign(&partition_list(&list)),
                Rebalanced::Revoke(list) => consumer.incremental_unassign(&partition_list(&list)),
                Rebalanced::Failed(_) => Ok(()),
            };
        }
        if let Ok(assigned) = consumer.assignment()
            && assigned.count() > 0
        {
            let _ = consumer.incremental_unassign(&assigned);
        }
        consumer.unsubscribe();
    }

    /// Acts on the group's decisions; returns the state of the new generation.
    pub fn rebalance(
        &mut self,
        mut st: State,
        consumer: &KafkaConsumer,
        queue: &BatchQueue<'_>,
    ) -> Result<State, IngestError> {
        let events = self.link.rebalances.take();
        let before: Vec<Key> = st
            .tracker
            .partitions()
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        let mut held = before.clone();
        let (mut added, mut revoked) = (Vec::new(), Vec::new());
        let mut acknowledge_assign = false;
        let mut ending = None;
        for event in events {
            match event {
                Rebalanced::Assign(list) => {
                    acknowledge_assign = true;
                    for key in list {
                        if !held.contains(&key) {
                            held.push(key.clone());
                            added.push(key);
                        }
                    }
                }
                Rebalanced::Revoke(list) => {
                    let positions = match &ending {
                        Some((positions, _)) => positions,
                        None => &ending.insert(end_generation(&mut st, consumer)?).0,
                    };
                    commit_leaving(consumer, &self.link.ownership, positions, &list);
                    consumer
                        .incremental_unassign(&partition_list(&list))
                        .map_err(IngestError::Rebalance)?;
                    for key in list {
                        held.retain(|k| *k != key);
                        added.retain(|k| *k != key);
                        revoked.push(key);
                    }
                }
                Rebalanced::Failed(why) => warn!(%why, "the group's rebalance failed"),
            }
        }
        if added.is_empty() && revoked.is_empty() {
            // A round of the cooperative protocol that moved nothing here.
            if acknowledge_assign {
                consumer
                    .incremental_assign(&TopicPartitionList::new())
                    .map_err(IngestError::Rebalance)?;
            }
            return Ok(st);
        }
        let carried = match ending {
            Some((_, carried)) => carried,
            None => end_generation(&mut st, consumer)?.1,
        };
        held.sort();
        let State { config, links, .. } = st;
        let view = links.view.borrow().clone();
        let kept = if held.is_empty() {
            None
        } else {
            self.kept.take()
        };
        let (stored, resume, starts) = match kept {
            Some((stored, resume)) if same_set(&held, &stored) => {
                let starts = checkpoint_starts(&view, &held, &stored, &config)?;
                (stored, resume, starts)
            }
            _ => (
                StoredOffsets::new(),
                carried,
                by_time(consumer, &view, &held, &config),
            ),
        };
        let mut st =
            State::new(config, stored, Some(resume), links).map_err(IngestError::CountingThread)?;
        st.tracker.start(Instant::now(), SystemTime::now());
        let targets = watermarks(consumer, &view, &starts);
        let assign: Vec<bool> = starts
            .iter()
            .map(|s| added.contains(&(s.topic.clone(), s.partition)))
            .collect();
        let taken: Vec<Taken> = starts
            .iter()
            .zip(&targets)
            .map(|(s, target)| Taken {
                topic: s.topic.clone(),
                partition: s.partition,
                start: s.started.offset,
                target: (*target).max(s.started.offset),
            })
            .collect();
        if acknowledge_assign && !assign.iter().any(|a| *a) {
            // librdkafka waits for the call even when nothing is added.
            consumer
                .incremental_assign(&TopicPartitionList::new())
                .map_err(IngestError::Rebalance)?;
        }
        st.track(consumer, queue, starts, &assign, false)?;
        self.link.ownership.hold(&taken);
        let metrics = &st.links.metrics;
        metrics.rebalances.inc();
        metrics.partitions_owned.set(held.len() as i64);
        let names = |keys: &[Key]| keys.iter().map(|(t, p)| label(t, *p)).collect::<Vec<_>>();
        info!(
            held = ?names(&held),
            added = ?names(&added),
            revoked = ?names(&revoked),
            "rebalance: partitions moved; the state is rebuilt for the partitions held"
        );
        st.publish();
        Ok(st)
    }
}

/// Ends a generation: its last batch closes, is published and handed to
/// the checkpoint writer. Returns the offsets it counted and what the next
/// generation carries on (totals, pane numbers, the rules' state).
fn end_generation(
    st: &mut State,
    consumer: &KafkaConsumer,
) -> Result<(Positions, Resume), IngestError> {
    st.close_batch(consumer)?;
    st.publish();
    let job = st.checkpoint_job();
    let positions = job.offsets.clone();
    let carried = Resume {
        panes: Vec::new(),
        next_seq: job.next_pane_seq,
        totals: st.totals,
        event_end_ms: None,
        alerts: job.alerts.clone(),
    };
    if st.links.checkpoints.send(job).is_err() {
        warn!("the checkpoint writer is gone; the generation's last batch is not checkpointed");
    }
    Ok((positions, carried))
}

fn partition_list(keys: &[Key]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(keys.len());
    for (topic, partition) in keys {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

/// Commits the offsets counted of partitions being given up, to the group,
/// before they go; the checkpoint holding them is on its way to the writer,
/// and ZooKeeper gets them from it (its commit is fenced: see
/// [`Ownership::fence_of`]).
fn commit_leaving(
    consumer: &KafkaConsumer,
    ownership: &Ownership,
    positions: &[(Arc<str>, i32, i64)],
    leaving: &[Key],
) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in positions {
        if leaving.contains(&(topic.clone(), *partition))
            && ownership.may_commit(topic, *partition, *offset)
        {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
    }
    if tpl.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(&tpl, CommitMode::Sync) {
        warn!(%error, "committing the offsets of revoked partitions to the group failed");
    }
}

/// Whether the checkpoint's partitions are exactly those held.
fn same_set(held: &[Key], stored: &StoredOffsets) -> bool {
    let checkpointed: Vec<&Key> = stored
        .iter()
        .filter(|(_, s)| s.origin == Origin::Checkpoint)
        .map(|(k, _)| k)
        .collect();
    checkpointed.len() == held.len() && held.iter().all(|k| checkpointed.contains(&k))
}

/// Where the held partitions resume from the checkpoint.
fn checkpoint_starts(
    view: &ClusterView,
    held: &[Key],
    stored: &StoredOffsets,
    config: &super::IngestConfig,
) -> Result<Vec<Start>, IngestError> {
    let only = ClusterView {
        partitions: view
            .partitions
            .iter()
            .filter(|p| held.contains(&(p.topic.clone(), p.partition)))
            .cloned()
            .collect(),
        ..view.clone()
    };
    let tracker = super::Tracker::new(config.batch, 0, 0, Instant::now(), SystemTime::now());
    info!(
        partitions = held.len(),
        "the first assignment is the checkpoint's partitions: resuming from it"
    );
    Ok(tracker.plan(&only, stored, config.offset_reset, true)?)
}

/// Where each held partition's rebuild starts: the first record at or
/// after the start of the kept history (by the records' timestamps).
fn by_time(
    consumer: &KafkaConsumer,
    view: &ClusterView,
    held: &[Key],
    config: &super::IngestConfig,
) -> Vec<Start> {
    if held.is_empty() {
        return Vec::new();
    }
    let kept =
        config.window + config.batch * (config.retained_panes as u32 + 1) + config.time.lateness;
    let newest = view
        .partitions
        .iter()
        .filter_map(|p| p.newest_timestamp_ms)
        .max()
        .unwrap_or_else(|| epoch_ms(SystemTime::now()));
    let from_ms = newest - i64::try_from(kept.as_millis()).unwrap_or(i64::MAX / 2);
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in held {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(from_ms));
    }
    let found: BTreeMap<Key, i64> = match consumer.offsets_for_times(tpl, LOOKUP_TIMEOUT) {
        Ok(found) => found
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((Arc::from(e.topic()), e.partition()), o)),
                _ => None,
            })
            .collect(),
        Err(error) => {
            warn!(%error, "finding the kept history's first offsets by time failed; reading the partitions from their log start");
            BTreeMap::new()
        }
    };
    held.iter()
        .map(|(topic, partition)| {
            let info = view.find(topic, *partition);
            // No record that new: nothing of the kept history is left, start at the end.
            let offset = found
                .get(&(topic.clone(), *partition))
                .copied()
                .unwrap_or_else(|| {
                    info.map_or(0, |i| if found.is_empty() { i.low } else { i.high })
                });
            Start {
                topic: topic.clone(),
                partition: *partition,
                started: Started {
                    offset,
                    from: StartedFrom::Rebuild,
                    note: None,
                },
                reset: None,
            }
        })
        .collect()
}

/// The log end of each partition now: its rebuild's target.
fn watermarks(consumer: &KafkaConsumer, view: &ClusterView, starts: &[Start]) -> Vec<i64> {
    starts
        .iter()
        .map(
            |s| match consumer.fetch_watermarks(&s.topic, s.partition, LOOKUP_TIMEOUT) {
                Ok((_, high)) => high,
                Err(error) => {
                    warn!(%error, topic = %s.topic, partition = s.partition,
                        "reading the log end failed; the monitor's is the rebuild's target");
                    view.find(&s.topic, s.partition)
                        .map_or(s.started.offset, |p| p.high)
                }
            },
        )
        .collect()
}
