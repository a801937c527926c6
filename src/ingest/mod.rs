//! The consumer loop: poll on one dedicated thread, hand each record to the
//! counting thread ([`crate::count`]), close a pane every batch, publish a
//! snapshot every slide, and hand a checkpoint job to the writer every
//! checkpoint interval.
//!
//! This thread owns the consumer, the window and the offsets; nothing else
//! mutates them. Partitions are assigned explicitly, one to one (the "direct"
//! approach): no group membership, no rebalancing, no auto-commit. What to do
//! with each record and when a pane closes is decided by [`Tracker`], which
//! knows nothing of Kafka; this loop makes the librdkafka calls.

mod cluster;
mod config;
pub mod event_clock;
mod resets;
mod slide;
mod start;
pub mod tracker;

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{Gauge, IntCounter, IntGauge};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::checkpoint::CheckpointJob;
use crate::config::OffsetReset;
use crate::count::{CountingThread, CountingThreadGone, TakenPane};
use crate::kafka::batch::{BatchQueue, Consumed};
use crate::kafka::{KafkaConsumer, ViewReceiver};
use crate::log_limit::{self, LogLimit, repeats_note};
use crate::metrics::Metrics;
use crate::offsets::ResetRefused;
pub use crate::offsets::StoredOffsets;
use crate::rules::SavedAlerts;
use crate::snapshot::Published;
use crate::snapshot::build::Builder;
use crate::stop::Stop;
use crate::vocab::Health;
use crate::vocab::IngestTotals;
use crate::window::{Pane, Window};
use event_clock::EventPanes;
use tracker::{Tracker, Verdict};

pub use cluster::Link as ClusterLink;
pub use config::IngestConfig;

/// Event time: how old the cluster view may be, and how long a partition
/// must have delivered nothing, for a caught-up partition to stop holding
/// back the window's end (the monitor refreshes the view every second).
const VIEW_FRESH_FOR_EVENT_TIME: Duration = Duration::from_secs(3);

/// Records taken from librdkafka per call at most (a few hundred kilobytes
/// of typical lines).
const RECORDS_PER_CALL: usize = 1024;

/// How long assignment waits for a topic's metadata (a round trip when the
/// cluster is up; the monitor has just reached it).
const METADATA_WARM_TIMEOUT: Duration = Duration::from_secs(2);

/// How long moving an assigned partition to another offset may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why ingest stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    ResetRefused(#[from] ResetRefused),
    #[error("assigning {topic}/{partition} failed: {source}")]
    Assign {
        topic: Arc<str>,
        partition: i32,
        source: KafkaError,
    },
    #[error("creating the consumer's batch queue failed: {0}")]
    Queue(KafkaError),
    #[error("consuming failed with --offset-reset fail: {0}")]
    ConsumeFailed(KafkaError),
    #[error(transparent)]
    CountingThreadGone(#[from] CountingThreadGone),
    #[error("joining the consumer group failed: {0}")]
    Subscribe(KafkaError),
    #[error("acting on the consumer group's rebalance failed: {0}")]
    Rebalance(KafkaError),
    #[error("starting the counting thread failed: {0}")]
    CountingThread(std::io::Error),
}

/// A window to continue from: the panes of a checkpoint and its totals.
#[derive(Debug)]
pub struct Resume {
    pub panes: Vec<Arc<Pane>>,
    pub next_seq: u64,
    pub totals: IngestTotals,
    pub event_end_ms: Option<i64>,
    pub alerts: Option<SavedAlerts>,
}

/// Where ingest reads the cluster view and delivers what it produces.
pub struct Links {
    pub view: ViewReceiver,
    pub checkpoints: SyncSender<CheckpointJob>,
    pub published: Published,
    pub health: Arc<Health>,
    pub metrics: Metrics,
    /// `--cluster`: where the group's decisions arrive and what this
    /// instance holds is told.
    pub cluster: Option<cluster::Link>,
}

/// One partition's metric handles, resolved once at assignment: every
/// per-partition series exists from then on (lag in seconds is NaN, not 0,
/// until known).
struct PartitionMetrics {
    consumed: IntCounter,
    lag: IntGauge,
    group_lag: IntGauge,
    lag_seconds: Gauge,
    late: IntCounter,
}

impl PartitionMetrics {
    fn new(metrics: &Metrics, group: &str, topic: &str, partition: i32) -> Self {
        let p = partition.to_string();
        metrics.records_lost.with_label_values(&[topic, &p]);
        let lag_seconds = metrics
            .partition_lag_seconds
            .with_label_values(&[topic, &p]);
        lag_seconds.set(f64::NAN);
        PartitionMetrics {
            consumed: metrics.records_consumed.with_label_values(&[topic, &p]),
            lag: metrics.partition_lag.with_label_values(&[topic, &p]),
            group_lag: metrics
                .consumergroup_lag
                .with_label_values(&[group, topic, &p]),
            lag_seconds,
            late: metrics.records_late.with_label_values(&[topic, &p]),
        }
    }
}

pub struct Ingest {
    consumer: Arc<KafkaConsumer>,
    state: State,
    /// `--cluster`: the group assigns the partitions.
    member: Option<cluster::Member>,
}

/// Everything ingest owns but the consumer, so that a message borrowed from
/// the consumer can be handled while the state is mutated.
struct State {
    config: IngestConfig,
    tracker: Tracker,
    /// Parallel to `tracker.partitions()`.
    partition_metrics: Vec<PartitionMetrics>,
    /// Parses and counts the open pane on its own thread.
    counting: CountingThread,
    window: Window,
    /// Event time: the window's end and the panes ahead of it.
    events: Option<EventPanes>,
    builder: Builder,
    totals: IngestTotals,
    assigned_generation: Option<u64>,
    stored: StoredOffsets,
    links: Links,
    logs: LogLimit,
    /// A snapshot of this run has been published.
    published: bool,
    /// Since when kept panes are summarized to fit `--memory-limit`.
    summarizing_since: Option<SystemTime>,
    /// At the last close, a partition had records left to read (by the log
    /// ends the cluster view last saw): a backlog is being replayed, and
    /// the batch in which it is read to the end closes at once.
    behind: bool,
}

impl Ingest {
    /// Ingest starting from `stored` offsets, continuing `resume`'s window.
    pub fn new(
        consumer: Arc<KafkaConsumer>,
        config: IngestConfig,
        stored: StoredOffsets,
        resume: Option<Resume>,
        links: Links,
    ) -> std::io::Result<Self> {
        let member = links.cluster.clone().map(cluster::Member::new);
        let (stored, resume, member) = match member {
            // The checkpoint waits for the group's first assignment.
            Some(member) => (
                StoredOffsets::new(),
                None,
                Some(member.keeping(stored, resume)),
            ),
            None => (stored, resume, None),
        };
        let state = State::new(config, stored, resume, links)?;
        Ok(Ingest {
            consumer,
            state,
            member,
        })
    }

    /// Runs until `stop` is set; closes, publishes and checkpoints the open
    /// batch before returning, so that its offsets are committed at shutdown
    /// and a restart re-reads nothing.
    pub fn run(self, stop: Stop) -> Result<(), IngestError> {
        let Ingest {
            consumer,
            state: mut st,
            mut member,
        } = self;
        let consumer = &*consumer;
        st.tracker.start(Instant::now(), SystemTime::now());
        let mut queue = BatchQueue::new(consumer, RECORDS_PER_CALL).map_err(IngestError::Queue)?;
        match &member {
            Some(member) => member.subscribe(consumer)?,
            None => st.assign_new_partitions(consumer, &queue)?,
        }
        while !stop.is_set() {
            // The consumer queue carries the client's errors and logs (served
            // by the Kafka context), the group's rebalances, and the records
            // of a partition that could not be routed to the batch queue.
            if let Some(result) = consumer.poll(Duration::ZERO) {
                st.handle_result(consumer, result)?;
            }
            if let Some(member) = member.as_mut() {
                if member.rebalanced() {
                    st = member.rebalance(st, consumer, &queue)?;
                }
                member.beat();
            }
            let mut wait = Duration::ZERO;
            if queue.is_empty() {
                // Partitions found while idle (at start-up, or a topic that
                // appears) are assigned at once, not at the next batch.
                if member.is_none() && st.links.view.has_changed().unwrap_or(false) {
                    st.assign_new_partitions(consumer, &queue)?;
                }
                st.advance_while_idle()?;
                wait = st
                    .tracker
                    .until_due(Instant::now())
                    .min(Duration::from_millis(100));
            }
            let waited = Instant::now();
            let batch = queue.fill(wait);
            if !wait.is_zero() {
                st.tracker.idle(waited.elapsed());
            }
            for result in batch {
                st.handle_result(consumer, result)?;
            }
            let now = Instant::now();
            let due = st.tracker.is_due(now);
            if due || st.replay_read_to_the_end() {
                // Batches stay on their grid; a stall closes the missed ones
                // empty. A replay read to the end closes at once, so that
                // answers hold its last records without waiting for the grid.
                if !due {
                    st.close_batch_early(consumer)?;
                }
                while st.tracker.is_due(now) {
                    st.close_batch(consumer)?;
                }
                match member.as_ref() {
                    Some(member) => member.counted(&st),
                    None => st.assign_new_partitions(consumer, &queue)?,
                }
            }
            st.mark_ready();
        }
        st.close_batch(consumer)?;
        st.publish();
        let job = st.checkpoint_job();
        if st.links.checkpoints.send(job).is_err() {
            warn!("the checkpoint writer is gone; the final batch is not checkpointed");
        }
        if let Some(member) = member {
            member.leave(consumer);
        }
        info!(batches = st.totals.batches, "ingest stopped");
        Ok(())
    }
}

impl State {
    /// One record, or one consume error, from either queue.
    fn handle_result(
        &mut self,
        consumer: &KafkaConsumer,
        result: Result<impl Consumed, KafkaError>,
    ) -> Result<(), IngestError> {
        match result {
            Ok(message) => self.handle(consumer, &message),
            Err(error) => {
                self.links.metrics.kafka_errors.inc();
                if self.config.offset_reset == OffsetReset::Fail {
                    return Err(IngestError::ConsumeFailed(error));
                }
                if let Some(repeats) = self.logs.admit(&error.to_string(), Instant::now()) {
                    warn!(%error, "consume error{}", repeats_note(repeats, log_limit::EVERY));
                }
                Ok(())
            }
        }
    }

    fn handle(
        &mut self,
        consumer: &KafkaConsumer,
        message: &impl Consumed,
    ) -> Result<(), IngestError> {
        let partition = message.partition();
        let topic = self.tracker.needs_topic().then(|| message.topic());
        let Some(slot) = self.tracker.slot(topic, partition) else {
            return Ok(());
        };
        let view = &self.links.view;
        let on_gap = || {
            let log_start = view
                .borrow()
                .find(message.topic(), partition)
                .map(|p| p.low);
            (log_start, SystemTime::now())
        };
        let verdict = self
            .tracker
            .record(slot, message.offset(), message.timestamp_ms(), on_gap);
        match verdict {
            Verdict::Count => {}
            Verdict::CountAfterLoss(reset) => {
                resets::record(
                    &self.links.metrics,
                    message.topic(),
                    partition,
                    &reset,
                    true,
                );
            }
            Verdict::Skip => return Ok(()),
            Verdict::Pause => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(message.topic(), partition);
                if let Err(error) = consumer.pause(&tpl) {
                    warn!(%error, topic = message.topic(), partition, "pause failed");
                }
                return Ok(());
            }
        }
        self.counting
            .push(message.payload(), slot, message.timestamp_ms())?;
        Ok(())
    }

    /// Ready: state is restored (before ingest started), a batch of this
    /// run closed and was published (the totals of a restored checkpoint
    /// count the batches before it), and the Kafka cluster has answered at
    /// least once (the monitor may hear from it only after that batch).
    fn mark_ready(&self) {
        let health = &self.links.health;
        if !health.is_ready() && self.published && health.kafka_contact_age().is_some() {
            health.set_ready();
        }
    }

    /// Event time, nothing read since the last close: the window's end
    /// moves as soon as the partitions that delivered records lately have
    /// been quiet long enough to stop holding it back, without waiting for
    /// the next batch (a replay's newest records join the window seconds
    /// after it was read to the end, not a batch later).
    fn advance_while_idle(&mut self) -> Result<(), IngestError> {
        if self.events.is_none() || self.tracker.open_records() > 0 {
            return Ok(());
        }
        if self.advance_event_time()? {
            self.window_changed();
            self.publish();
        }
        Ok(())
    }

    /// Event time: the open batch holds records, a backlog was being
    /// replayed at the last close, and every partition is now read up to
    /// the log end the cluster view saw.
    fn replay_read_to_the_end(&self) -> bool {
        self.behind
            && self.events.is_some()
            && self.tracker.open_records() > 0
            && self.read_to_the_end()
    }

    /// Every partition is read up to the log end the cluster view saw.
    fn read_to_the_end(&self) -> bool {
        let view = self.links.view.borrow();
        view.refreshed.is_some()
            && self
                .tracker
                .partitions()
                .iter()
                .all(|p| p.read_to_end_of(&view))
    }

    /// Closes the batch on its grid point.
    fn close_batch(&mut self, consumer: &KafkaConsumer) -> Result<(), IngestError> {
        self.close_batch_at(consumer, false)
    }

    /// Closes the batch before its grid point, and publishes what it counted.
    fn close_batch_early(&mut self, consumer: &KafkaConsumer) -> Result<(), IngestError> {
        self.close_batch_at(consumer, true)
    }

    /// Closes the batch: re-reads what the rate cap turned away, takes the
    /// open pane from the counting thread into the window, then publishes
    /// and checkpoints when it is time.
    fn close_batch_at(&mut self, consumer: &KafkaConsumer, early: bool) -> Result<(), IngestError> {
        let wall = SystemTime::now();
        let closed = if early {
            self.tracker.close_early(wall)
        } else {
            self.tracker.close(wall)
        };
        seek_back(consumer, &closed.seek_back);
        let mut consumed = 0;
        for (metrics, taken) in self.partition_metrics.iter().zip(&closed.taken) {
            metrics.consumed.inc_by(*taken);
            consumed += taken;
        }
        let mut open = self.counting.take()?;
        self.add_totals(consumed, &open);
        let published = match (open.event.take(), self.events.as_mut()) {
            (Some(batch), Some(events)) => {
                self.totals.records_counted += batch.panes.iter().map(|p| p.requests).sum::<u64>();
                let unplaced = events.unplaced();
                let late = events.absorb(batch, &closed.ranges, &mut self.window, Instant::now());
                self.totals.late += events.unplaced() - unplaced;
                for (slot, n) in late.into_iter().enumerate() {
                    if let Some(m) = self.partition_metrics.get(slot) {
                        m.late.inc_by(n);
                    }
                    self.totals.late += n;
                }
                self.advance_event_time()?
            }
            _ => {
                let pane = Pane {
                    seq: closed.seq,
                    start: closed.start,
                    end: closed.end,
                    counts: open.counts,
                    requests: open.requests,
                    skipped: open.skipped,
                    ranges: closed.ranges,
                    owners: None,
                };
                self.totals.records_counted += pane.requests;
                self.window.push(Arc::new(pane));
                false
            }
        };
        self.behind = !self.read_to_the_end();
        self.after_close(published || early);
        Ok(())
    }

    /// Counts a closed batch's records in the totals and the metrics.
    fn add_totals(&mut self, consumed: u64, open: &TakenPane) {
        let metrics = &self.links.metrics;
        for (reason, n) in open.skipped.iter() {
            if n > 0 {
                metrics
                    .records_skipped
                    .with_label_values(&[reason.as_str()])
                    .inc_by(n);
            }
        }
        self.totals.batches += 1;
        self.totals.records_consumed += consumed;
        self.totals.skipped.merge(&open.skipped);
        self.totals.repaired += open.repaired;
        metrics.records_repaired.inc_by(open.repaired);
        metrics.batches.inc();
    }

    /// The window's gauges, and its state kept to the memory budget.
    fn window_changed(&mut self) {
        let metrics = &self.links.metrics;
        metrics.window_requests.set(self.window.requests() as i64);
        metrics
            .window_distinct_ips
            .set(self.window.distinct_ips() as i64);
        self.keep_to_budget();
    }

    /// After a batch closed: the window's gauges, a snapshot when a slide
    /// ends (or `published` says the event-time window moved), a checkpoint
    /// job when one is due, the batch's duration (readiness is the loop's,
    /// [`State::mark_ready`]).
    fn after_close(&mut self, published: bool) {
        self.window_changed();

        let seq = self.tracker.next_seq();
        // The run's first batch is published at once, the rest at slides
        // (event time: also whenever the window's end moved).
        if published || seq.is_multiple_of(self.config.slide_batches) || !self.published {
            self.publish();
            self.published = true;
        }
        if seq.is_multiple_of(self.config.checkpoint_batches) {
            // Never wait for the disk: a busy writer gets the next job instead,
            // which holds everything this one would have.
            match self.links.checkpoints.try_send(self.checkpoint_job()) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => warn!("the checkpoint writer is gone"),
            }
        }
        let busy = self.tracker.busy_until(Instant::now());
        self.links
            .metrics
            .batch_duration
            .observe(busy.as_secs_f64());
    }
}

/// Re-reads from the first record the rate cap turned away, and resumes
/// those partitions.
fn seek_back(consumer: &KafkaConsumer, seek_back: &[(Arc<str>, i32, i64)]) {
    let mut resume = TopicPartitionList::new();
    for (topic, partition, offset) in seek_back {
        let seek = consumer.seek(
            topic,
            *partition,
            Offset::Offset(*offset),
            Duration::from_secs(1),
        );
        if let Err(error) = seek {
            warn!(%error, %topic, partition, "seek failed");
        }
        resume.add_partition(topic, *partition);
    }
    if resume.count() > 0
        && let Err(error) = consumer.resume(&resume)
    {
        warn!(%error, "resume failed");
    }
}
