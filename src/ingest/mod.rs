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

mod config;
pub mod event_clock;
mod resets;
mod slide;
pub mod tracker;

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{Gauge, IntCounter, IntGauge};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::checkpoint::CheckpointJob;
use crate::config::OffsetReset;
use crate::count::{CountingThread, CountingThreadGone, OpenLimit, TakenPane};
use crate::kafka::batch::{BatchQueue, Consumed};
use crate::kafka::{KafkaConsumer, ViewReceiver};
use crate::log_limit::{self, LogLimit, repeats_note};
use crate::metrics::Metrics;
use crate::offsets::ResetRefused;
pub use crate::offsets::StoredOffsets;
use crate::rules::{Evaluator, SavedAlerts};
use crate::snapshot::Published;
use crate::snapshot::build::Builder;
use crate::stop::Stop;
use crate::vocab::Health;
use crate::vocab::IngestTotals;
use crate::window::{Pane, Window};
use event_clock::EventPanes;
use tracker::{Tracker, Verdict};

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
    consumer: KafkaConsumer,
    state: State,
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
}

impl Ingest {
    /// Ingest starting from `stored` offsets, continuing `resume`'s window.
    pub fn new(
        consumer: KafkaConsumer,
        config: IngestConfig,
        stored: StoredOffsets,
        resume: Option<Resume>,
        links: Links,
    ) -> std::io::Result<Self> {
        let mut window = Window::new(config.window_panes).with_retained(config.retained_panes);
        let (mut next_seq, mut totals) = (0, IngestTotals::default());
        let mut events = config.time.is_event().then(|| {
            EventPanes::new(
                config.batch,
                config.slide,
                config.time.lateness,
                config.window + config.batch * config.retained_panes as u32,
            )
        });
        let mut saved_alerts = None;
        if let Some(resume) = resume {
            saved_alerts = resume.alerts;
            next_seq = match events.as_mut() {
                Some(events) => {
                    events.restore(
                        resume.panes,
                        resume.event_end_ms,
                        resume.next_seq,
                        &mut window,
                    );
                    resume.next_seq
                }
                None => window.restore(
                    resume.panes,
                    resume.next_seq,
                    config.batch,
                    SystemTime::now(),
                ),
            };
            totals = resume.totals;
            info!(
                panes = window.panes().len(),
                requests = window.requests(),
                next_pane = next_seq,
                "window restored from the checkpoint"
            );
        }
        let now = Instant::now();
        let state = State {
            tracker: Tracker::new(
                config.batch,
                config.max_rate_per_partition,
                next_seq,
                now,
                SystemTime::now(),
            ),
            builder: Builder::new(config.window, config.slide, totals.records_consumed, now)
                .with_rules(config.rules.clone().map(|rules| {
                    Evaluator::new(rules, config.batch, links.metrics.clone())
                        .with_saved(saved_alerts.as_ref())
                        .with_outbox(config.outbox.clone())
                })),
            counting: CountingThread::spawn(
                config.client_field.clone(),
                config.max_line_bytes,
                config.pane_time(),
                OpenLimit {
                    entries: config.memory.open_entries(),
                    capacity: config.memory.capacity,
                },
            )?,
            partition_metrics: Vec::new(),
            window,
            events,
            totals,
            config,
            assigned_generation: None,
            stored,
            links,
            logs: LogLimit::default(),
            published: false,
            summarizing_since: None,
        };
        Ok(Ingest { consumer, state })
    }

    /// Runs until `stop` is set; closes, publishes and checkpoints the open
    /// batch before returning, so that its offsets are committed at shutdown
    /// and a restart re-reads nothing.
    pub fn run(self, stop: Stop) -> Result<(), IngestError> {
        let Ingest {
            consumer,
            state: mut st,
        } = self;
        st.tracker.start(Instant::now(), SystemTime::now());
        let mut queue = BatchQueue::new(&consumer, RECORDS_PER_CALL).map_err(IngestError::Queue)?;
        st.assign_new_partitions(&consumer, &queue)?;
        while !stop.is_set() {
            // The consumer queue carries the client's errors and logs (served
            // by the Kafka context) and the records of a partition that could
            // not be routed to the batch queue.
            if let Some(result) = consumer.poll(Duration::ZERO) {
                st.handle_result(&consumer, result)?;
            }
            let mut wait = Duration::ZERO;
            if queue.is_empty() {
                // Partitions found while idle (at start-up, or a topic that
                // appears) are assigned at once, not at the next batch.
                if st.links.view.has_changed().unwrap_or(false) {
                    st.assign_new_partitions(&consumer, &queue)?;
                }
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
                st.handle_result(&consumer, result)?;
            }
            let now = Instant::now();
            if st.tracker.is_due(now) {
                // Batches stay on their grid; a stall closes the missed ones empty.
                while st.tracker.is_due(now) {
                    st.close_batch(&consumer)?;
                }
                st.assign_new_partitions(&consumer, &queue)?;
            }
        }
        st.close_batch(&consumer)?;
        st.publish();
        let job = st.checkpoint_job();
        if st.links.checkpoints.send(job).is_err() {
            warn!("the checkpoint writer is gone; the final batch is not checkpointed");
        }
        info!(batches = st.totals.batches, "ingest stopped");
        Ok(())
    }
}

/// Asks the cluster for each topic about to be assigned, so that librdkafka
/// knows its partitions' leaders when the assignment lands. A topic the
/// client has not yet seen otherwise waits for librdkafka's once-a-second
/// scan of unknown topics when its first request for it is lost to the
/// bootstrap connection being replaced: up to a second before the first
/// fetch. A failure here only means that wait; it is logged at debug.
fn warm_metadata(consumer: &KafkaConsumer, starts: &[tracker::Start]) {
    let mut topics: Vec<&str> = starts.iter().map(|s| &*s.topic).collect();
    topics.sort_unstable();
    topics.dedup();
    for topic in topics {
        if let Err(error) = consumer.fetch_metadata(Some(topic), METADATA_WARM_TIMEOUT) {
            debug!(%error, %topic, "metadata before assignment not fetched");
        }
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

    /// Assigns partitions the monitor found that are not assigned yet, their
    /// records routed to `queue` first.
    fn assign_new_partitions(
        &mut self,
        consumer: &KafkaConsumer,
        queue: &BatchQueue<'_>,
    ) -> Result<(), IngestError> {
        let view = self.links.view.borrow_and_update().clone();
        if view.refreshed.is_none() || self.assigned_generation == Some(view.generation) {
            return Ok(());
        }
        let initial = self.assigned_generation.is_none();
        let starts = self
            .tracker
            .plan(&view, &self.stored, self.config.offset_reset, initial)?;
        self.assigned_generation = Some(view.generation);
        let Some(first) = starts.first() else {
            return Ok(());
        };
        let assign_error = |topic: &Arc<str>, partition, source| IngestError::Assign {
            topic: topic.clone(),
            partition,
            source,
        };
        warm_metadata(consumer, &starts);
        let mut tpl = TopicPartitionList::new();
        for s in &starts {
            if let Err(error) = queue.route(&s.topic, s.partition) {
                // Its records then come through the consumer queue: slower, not lost.
                warn!(%error, topic = %s.topic, partition = s.partition,
                    "partition read one record per call");
            }
            tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.started.offset))
                .map_err(|e| assign_error(&s.topic, s.partition, e))?;
        }
        consumer
            .incremental_assign(&tpl)
            .map_err(|e| assign_error(&first.topic, first.partition, e))?;
        resets::say_first_starts(&starts);
        for start in starts {
            if let Some(reset) = &start.reset {
                resets::record(
                    &self.links.metrics,
                    &start.topic,
                    start.partition,
                    reset,
                    false,
                );
            }
            info!(topic = %start.topic, partition = start.partition,
                start_offset = start.started.offset, initial, "partition assigned");
            self.partition_metrics.push(PartitionMetrics::new(
                &self.links.metrics,
                &self.config.group,
                &start.topic,
                start.partition,
            ));
            self.tracker.add(start);
        }
        Ok(())
    }

    /// Closes the batch: re-reads what the rate cap turned away, takes the
    /// open pane from the counting thread into the window, then publishes
    /// and checkpoints when it is time.
    fn close_batch(&mut self, consumer: &KafkaConsumer) -> Result<(), IngestError> {
        let closed = self.tracker.close(SystemTime::now());
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
                };
                self.totals.records_counted += pane.requests;
                self.window.push(Arc::new(pane));
                false
            }
        };
        self.after_close(published);
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

    /// After a batch closed: the window's gauges, a snapshot when a slide
    /// ends (or `published` says the event-time window moved), a checkpoint
    /// job when one is due, readiness, the batch's duration.
    fn after_close(&mut self, published: bool) {
        let metrics = &self.links.metrics;
        metrics.window_requests.set(self.window.requests() as i64);
        metrics
            .window_distinct_ips
            .set(self.window.distinct_ips() as i64);
        self.keep_to_budget();

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
        // Ready: state is restored (before ingest started), a batch closed,
        // and the Kafka cluster has answered at least once.
        if !self.links.health.is_ready() && self.links.health.kafka_contact_age().is_some() {
            self.links.health.set_ready();
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
