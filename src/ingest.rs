//! The consumer loop: poll on one dedicated thread, hand each record to the
//! counting thread ([`crate::counter`]), close a pane every batch, publish a
//! snapshot every slide.
//!
//! This thread owns the consumer, the window and the offsets; nothing else
//! mutates them. Partitions are assigned explicitly, one to one (the "direct"
//! approach): no group membership, no rebalancing, no auto-commit.

use std::mem;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::collections::{HashMap, VecDeque};

use prometheus::{Gauge, IntCounter, IntGauge};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use std::sync::mpsc::{SyncSender, TrySendError};

use crate::checkpoint::{Counters, Job};
use crate::config::{MAX_TOP_N, OffsetReset, SORTED_TOP_N, Settings};
use crate::counter::{Counter, CounterGone};
use crate::kafka::{ClusterView, KafkaConsumer, ViewReceiver};
use crate::metrics::Metrics;
use crate::offsets::{Reset, ResetReason, ResetRefused, resolve_start};
use crate::parse::SkipCounts;
use crate::snapshot::{Health, HistoryPoint, IngestStatus, PartitionStatus, Published, Snapshot};
use crate::stop::Stop;
use crate::window::{OffsetRange, Pane, SortedCounts, Window};

/// How much slide history the dashboard's sparklines get.
const HISTORY_SPAN: Duration = Duration::from_secs(15 * 60);
const HISTORY_POINTS: usize = 600;

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
    #[error("consuming failed with --offset-reset fail: {0}")]
    ConsumeFailed(KafkaError),
    #[error(transparent)]
    CounterGone(#[from] CounterGone),
}

/// Stored next offsets to start from, per partition (from ZooKeeper).
pub type StoredOffsets = HashMap<(Arc<str>, i32), i64>;

/// What ingest needs to know from the settings.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub batch: Duration,
    pub window: Duration,
    pub slide: Duration,
    pub window_panes: usize,
    pub slide_batches: u64,
    pub checkpoint_batches: u64,
    pub max_rate_per_partition: u64,
    pub offset_reset: OffsetReset,
    pub ip_field: String,
    pub max_line_bytes: usize,
    pub group: String,
}

impl From<&Settings> for IngestConfig {
    fn from(s: &Settings) -> Self {
        IngestConfig {
            batch: s.batch,
            window: s.window,
            slide: s.slide,
            window_panes: s.window_panes(),
            slide_batches: s.slide_batches(),
            checkpoint_batches: s.checkpoint_batches(),
            max_rate_per_partition: s.max_rate_per_partition,
            offset_reset: s.offset_reset,
            ip_field: s.ip_field.clone(),
            max_line_bytes: s.max_line_bytes,
            group: s.group.clone(),
        }
    }
}

/// One assigned partition.
struct PartitionState {
    topic: Arc<str>,
    partition: i32,
    /// Next offset to count; everything below is in a pane.
    next: i64,
    /// Where the open pane started in this partition.
    pane_from: i64,
    /// Records read in the open batch (for the rate cap and the counter).
    taken: u64,
    /// Paused by the rate cap; resume from this offset at the next batch.
    held: Option<i64>,
    /// Timestamp (ms) of the last record read.
    last_timestamp_ms: Option<i64>,
    last_reset: Option<Reset>,
    consumed: IntCounter,
    lag: IntGauge,
    group_lag: IntGauge,
    lag_seconds: Gauge,
}

/// Topic name → partition number → slot in `partitions`.
#[derive(Default)]
struct Lookup(Vec<(Arc<str>, Vec<Option<usize>>)>);

impl Lookup {
    fn insert(&mut self, topic: &Arc<str>, partition: i32, slot: usize) {
        let i = match self.0.iter().position(|(t, _)| t == topic) {
            Some(i) => i,
            None => {
                self.0.push((topic.clone(), Vec::new()));
                self.0.len() - 1
            }
        };
        let slots = &mut self.0[i].1;
        let p = partition as usize;
        if slots.len() <= p {
            slots.resize(p + 1, None);
        }
        slots[p] = Some(slot);
    }

    fn get(&self, topic: Option<&str>, partition: i32) -> Option<usize> {
        let slots = match (&self.0[..], topic) {
            // One topic: no need to read the topic name of every record.
            ([(_, slots)], _) => slots,
            (all, Some(topic)) => &all.iter().find(|(t, _)| &**t == topic)?.1,
            _ => return None,
        };
        slots
            .get(usize::try_from(partition).ok()?)
            .copied()
            .flatten()
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
    /// Parses and counts the open pane on its own thread.
    counter: Counter,
    window: Window,
    partitions: Vec<PartitionState>,
    lookup: Lookup,
    assigned_generation: Option<u64>,
    pane_start: SystemTime,
    batch_started: Instant,
    /// Time the open batch spent waiting for records.
    idle: Duration,
    seq: u64,
    status: IngestStatus,
    last_publish: Instant,
    consumed_at_last_publish: u64,
    history: VecDeque<HistoryPoint>,
    cap_per_batch: Option<u64>,
    stored: StoredOffsets,
    view: ViewReceiver,
    checkpoints: SyncSender<Job>,
    published: Published,
    health: Arc<Health>,
    metrics: Metrics,
}

impl Ingest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        consumer: KafkaConsumer,
        config: IngestConfig,
        stored: StoredOffsets,
        resume: Option<Resume>,
        view: ViewReceiver,
        checkpoints: SyncSender<Job>,
        published: Published,
        health: Arc<Health>,
        metrics: Metrics,
    ) -> std::io::Result<Self> {
        let cap_per_batch = (config.max_rate_per_partition > 0).then(|| {
            ((config.max_rate_per_partition as f64 * config.batch.as_secs_f64()).ceil() as u64)
                .max(1)
        });
        let state = State {
            counter: Counter::spawn(&config.ip_field, config.max_line_bytes)?,
            window: Window::new(config.window_panes),
            config,
            partitions: Vec::new(),
            lookup: Lookup::default(),
            assigned_generation: None,
            pane_start: SystemTime::now(),
            batch_started: Instant::now(),
            idle: Duration::ZERO,
            seq: 0,
            status: IngestStatus::default(),
            last_publish: Instant::now(),
            consumed_at_last_publish: 0,
            history: VecDeque::new(),
            cap_per_batch,
            stored,
            view,
            checkpoints,
            published,
            health,
            metrics,
        };
        let mut state = state;
        if let Some(resume) = resume {
            state.resume(resume);
        }
        Ok(Ingest { consumer, state })
    }

    /// Runs until `stop` is set; closes the open batch before returning.
    pub fn run(self, stop: Stop) -> Result<(), IngestError> {
        let Ingest {
            consumer,
            state: mut st,
        } = self;
        let mut batch_end = Instant::now() + st.config.batch;
        st.pane_start = SystemTime::now();
        st.batch_started = Instant::now();
        st.assign_new_partitions(&consumer)?;
        let mut since_clock = 0u32;
        while !stop.is_set() {
            match consumer.poll(Duration::ZERO) {
                Some(result) => {
                    st.handle(&consumer, result)?;
                    // Read the clock once per run of records, not per record.
                    since_clock += 1;
                    if since_clock < 256 {
                        continue;
                    }
                    since_clock = 0;
                }
                None => {
                    // Partitions found while idle (at start-up, or a topic that
                    // appears) are assigned at once, not at the next batch.
                    if st.view.has_changed().unwrap_or(false) {
                        st.assign_new_partitions(&consumer)?;
                    }
                    let now = Instant::now();
                    if now < batch_end {
                        let polled =
                            consumer.poll((batch_end - now).min(Duration::from_millis(100)));
                        st.idle += now.elapsed();
                        if let Some(result) = polled {
                            st.handle(&consumer, result)?;
                        }
                    }
                }
            }
            let now = Instant::now();
            if now >= batch_end {
                // Batches stay on their grid; a stall closes the missed ones empty.
                while batch_end <= now {
                    st.close_batch(&consumer)?;
                    batch_end += st.config.batch;
                }
                st.assign_new_partitions(&consumer)?;
            }
        }
        // The open batch is closed, published and checkpointed, so that its
        // offsets are committed at shutdown and a restart re-reads nothing.
        st.close_batch(&consumer)?;
        st.publish();
        let job = st.checkpoint_job();
        if st.checkpoints.send(job).is_err() {
            warn!("the checkpoint writer is gone; the final batch is not checkpointed");
        }
        info!(batches = st.status.batches, "ingest stopped");
        Ok(())
    }
}

impl State {
    fn handle(
        &mut self,
        consumer: &KafkaConsumer,
        result: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), IngestError> {
        let message = match result {
            Ok(m) => m,
            Err(error) => {
                self.metrics.kafka_errors.inc();
                if self.config.offset_reset == OffsetReset::Fail {
                    return Err(IngestError::ConsumeFailed(error));
                }
                warn!(%error, "consume error");
                return Ok(());
            }
        };
        let topic = if self.lookup.0.len() == 1 {
            None
        } else {
            Some(message.topic())
        };
        let Some(slot) = self.lookup.get(topic, message.partition()) else {
            return Ok(());
        };
        let offset = message.offset();
        let state = &mut self.partitions[slot];
        if state.held.is_some() || offset < state.next {
            // Paused by the rate cap (it is re-read after the seek), or a
            // duplicate delivered around a seek: never count twice.
            return Ok(());
        }
        if let Some(cap) = self.cap_per_batch
            && state.taken >= cap
        {
            state.held = Some(offset);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&state.topic, state.partition);
            if let Err(error) = consumer.pause(&tpl) {
                warn!(%error, topic = %state.topic, partition = state.partition, "pause failed");
            }
            return Ok(());
        }
        if offset > state.next {
            // A gap is normal (compaction, transaction markers) unless the
            // records were deleted under us: then say so and count the loss.
            let log_start = self
                .view
                .borrow()
                .find(&state.topic, state.partition)
                .map(|p| p.low);
            if let Some(log_start) = log_start.filter(|low| *low > state.next) {
                let lost = log_start.min(offset) - state.next;
                warn!(topic = %state.topic, partition = state.partition, next = state.next,
                    log_start, lost, "records expired before they were counted");
                self.metrics
                    .offset_resets
                    .with_label_values(&["expired"])
                    .inc();
                self.metrics
                    .records_lost
                    .with_label_values(&[&*state.topic, &state.partition.to_string()])
                    .inc_by(lost as u64);
                state.last_reset = Some(Reset {
                    reason: ResetReason::Expired,
                    stored: Some(state.next),
                    start: offset,
                    log_start,
                    log_end: offset,
                    lost,
                    at: SystemTime::now(),
                });
            }
        }
        state.taken += 1;
        state.next = offset + 1;
        state.last_timestamp_ms = message.timestamp().to_millis();
        self.counter.push(message.payload().unwrap_or_default())?;
        Ok(())
    }

    /// Assigns partitions the monitor found that are not assigned yet.
    fn assign_new_partitions(&mut self, consumer: &KafkaConsumer) -> Result<(), IngestError> {
        let view: Arc<ClusterView> = self.view.borrow_and_update().clone();
        if view.refreshed.is_none() || self.assigned_generation == Some(view.generation) {
            return Ok(());
        }
        let initial = self.assigned_generation.is_none();
        let mut tpl = TopicPartitionList::new();
        let mut added = Vec::new();
        for p in &view.partitions {
            if self
                .partitions
                .iter()
                .any(|s| s.partition == p.partition && s.topic == p.topic)
            {
                continue;
            }
            // Partitions present at start resume from their stored offset or
            // follow --offset-reset; partitions added later are new data,
            // read from their start.
            let (start, reset) = if initial {
                let stored = self.stored.get(&(p.topic.clone(), p.partition)).copied();
                resolve_start(
                    &p.topic,
                    p.partition,
                    stored,
                    p.low,
                    p.high,
                    self.config.offset_reset,
                )?
            } else {
                (p.low, None)
            };
            if let Some(reset) = &reset {
                // A first start has nothing stored: worth a note, not a warning.
                if reset.reason == ResetReason::Missing {
                    info!(topic = %p.topic, partition = p.partition, reason = %reset.reason,
                        log_start = p.low, log_end = p.high, start,
                        "no stored offset; starting by --offset-reset");
                } else {
                    warn!(topic = %p.topic, partition = p.partition, reason = %reset.reason,
                        stored = ?reset.stored, log_start = p.low, log_end = p.high, start,
                        lost = reset.lost, "partition does not start at a stored offset");
                }
                self.metrics
                    .offset_resets
                    .with_label_values(&[reset.reason.as_str()])
                    .inc();
                if reset.lost > 0 {
                    self.metrics
                        .records_lost
                        .with_label_values(&[&*p.topic, &p.partition.to_string()])
                        .inc_by(reset.lost as u64);
                }
            }
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(start))
                .map_err(|source| IngestError::Assign {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    source,
                })?;
            added.push((p.topic.clone(), p.partition, start, reset));
        }
        self.assigned_generation = Some(view.generation);
        if added.is_empty() {
            return Ok(());
        }
        consumer
            .incremental_assign(&tpl)
            .map_err(|source| IngestError::Assign {
                topic: added[0].0.clone(),
                partition: added[0].1,
                source,
            })?;
        for (topic, partition, start, last_reset) in added {
            info!(%topic, partition, start_offset = start, initial, "partition assigned");
            let p = partition.to_string();
            let slot = self.partitions.len();
            self.lookup.insert(&topic, partition, slot);
            self.partitions.push(PartitionState {
                consumed: self
                    .metrics
                    .records_consumed
                    .with_label_values(&[&*topic, &p]),
                lag: self.metrics.partition_lag.with_label_values(&[&*topic, &p]),
                group_lag: self.metrics.consumergroup_lag.with_label_values(&[
                    self.config.group.as_str(),
                    &*topic,
                    &p,
                ]),
                lag_seconds: self
                    .metrics
                    .partition_lag_seconds
                    .with_label_values(&[&*topic, &p]),
                topic,
                partition,
                next: start,
                pane_from: start,
                taken: 0,
                held: None,
                last_timestamp_ms: None,
                last_reset,
            });
        }
        Ok(())
    }

    fn close_batch(&mut self, consumer: &KafkaConsumer) -> Result<(), IngestError> {
        let end = SystemTime::now();
        let mut consumed = 0;
        let mut resume = TopicPartitionList::new();
        let ranges = self
            .partitions
            .iter_mut()
            .map(|p| {
                consumed += p.taken;
                p.consumed.inc_by(p.taken);
                p.taken = 0;
                if let Some(offset) = p.held.take() {
                    // Re-read from the first record the cap turned away.
                    if let Err(error) = consumer.seek(
                        &p.topic,
                        p.partition,
                        Offset::Offset(offset),
                        Duration::from_secs(1),
                    ) {
                        warn!(%error, topic = %p.topic, partition = p.partition, "seek failed");
                    }
                    resume.add_partition(&p.topic, p.partition);
                }
                let range = OffsetRange {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    from: p.pane_from,
                    until: p.next,
                };
                p.pane_from = p.next;
                range
            })
            .collect();
        if resume.count() > 0
            && let Err(error) = consumer.resume(&resume)
        {
            warn!(%error, "resume failed");
        }
        let open = self.counter.take()?;
        let pane = Pane {
            seq: self.seq,
            start: self.pane_start,
            end,
            counts: open.counts,
            requests: open.requests,
            skipped: open.skipped,
            ranges,
        };
        self.pane_start = end;
        self.seq += 1;

        for (reason, n) in pane.skipped.iter() {
            if n > 0 {
                self.metrics
                    .records_skipped
                    .with_label_values(&[reason.as_str()])
                    .inc_by(n);
            }
        }
        self.status.batches += 1;
        self.status.records_consumed += consumed;
        self.status.records_counted += pane.requests;
        self.status.skipped.merge(&pane.skipped);
        self.window.push(Arc::new(pane));
        self.metrics.batches.inc();
        self.metrics
            .window_requests
            .set(self.window.requests() as i64);
        self.metrics
            .window_distinct_ips
            .set(self.window.distinct_ips() as i64);

        let first_of_run = !self.health.is_ready();
        if self.seq % self.config.slide_batches == 0 || first_of_run {
            self.publish();
        }
        if self.seq % self.config.checkpoint_batches == 0 {
            // Never wait for the disk: a busy writer gets the next job instead,
            // which holds everything this one would have.
            match self.checkpoints.try_send(self.checkpoint_job()) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => warn!("the checkpoint writer is gone"),
            }
        }
        if first_of_run {
            // State is restored (before ingest started) and a batch closed.
            self.health.set_ready();
        }
        let now = Instant::now();
        let busy = (now - self.batch_started).saturating_sub(mem::take(&mut self.idle));
        self.batch_started = now;
        self.metrics.batch_duration.observe(busy.as_secs_f64());
        Ok(())
    }

    fn publish(&mut self) {
        let view = self.view.borrow().clone();
        let partitions: Vec<PartitionStatus> = self
            .partitions
            .iter()
            .map(|p| {
                let from_offset = self
                    .window
                    .panes()
                    .find_map(|pane| {
                        pane.ranges
                            .iter()
                            .find(|r| r.partition == p.partition && r.topic == p.topic)
                            .map(|r| r.from)
                    })
                    .unwrap_or(p.next);
                let info = view.find(&p.topic, p.partition);
                let mut status = PartitionStatus {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    from_offset,
                    until_offset: p.next,
                    log_start: info.map(|i| i.low),
                    log_end: info.map(|i| i.high),
                    lag_seconds: None,
                    last_reset: p.last_reset.clone(),
                };
                if let Some(lag) = status.lag() {
                    p.lag.set(lag);
                    p.group_lag.set(lag);
                    status.lag_seconds = match (
                        lag,
                        info.and_then(|i| i.newest_timestamp_ms),
                        p.last_timestamp_ms,
                    ) {
                        (0, _, _) => Some(0.0),
                        (_, Some(newest), Some(last)) => {
                            Some((newest - last).max(0) as f64 / 1000.0)
                        }
                        _ => None,
                    };
                    if let Some(seconds) = status.lag_seconds {
                        p.lag_seconds.set(seconds);
                    }
                }
                status
            })
            .collect();
        let elapsed = self.last_publish.elapsed().as_secs_f64();
        self.status.records_per_second = if elapsed > 0.0 {
            (self.status.records_consumed - self.consumed_at_last_publish) as f64 / elapsed
        } else {
            0.0
        };
        self.last_publish = Instant::now();
        self.consumed_at_last_publish = self.status.records_consumed;

        let now = SystemTime::now();
        self.history.push_back(HistoryPoint {
            at: now,
            records_per_second: self.status.records_per_second,
            window_requests: self.window.requests(),
            distinct_ips: self.window.distinct_ips(),
        });
        while self.history.len() > HISTORY_POINTS
            || self
                .history
                .front()
                .is_some_and(|p| now.duration_since(p.at).unwrap_or_default() > HISTORY_SPAN)
        {
            self.history.pop_front();
        }
        let panes: Vec<Arc<Pane>> = self.window.panes().cloned().collect();
        let window_end = panes.last().map_or_else(SystemTime::now, |p| p.end);
        let window_start = window_end
            .checked_sub(self.config.window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.published.store(Arc::new(Snapshot {
            taken_at: SystemTime::now(),
            window_start,
            window_end,
            window_length: self.config.window,
            slide: self.config.slide,
            total_requests: self.window.requests(),
            distinct_ips: self.window.distinct_ips(),
            top: self.window.top_list(MAX_TOP_N, SORTED_TOP_N),
            panes,
            partitions,
            ingest: self.status.clone(),
            history: self.history.iter().copied().collect(),
            rendered_top: Default::default(),
        }));
    }

    /// Everything a checkpoint needs: the window's panes (shared) and the
    /// next offset of every partition, which those panes account for exactly.
    fn checkpoint_job(&self) -> Job {
        Job {
            panes: self.window.panes().cloned().collect(),
            offsets: self
                .partitions
                .iter()
                .map(|p| (p.topic.clone(), p.partition, p.next))
                .collect(),
            next_pane_seq: self.seq,
            counters: Counters {
                batches: self.status.batches,
                records_consumed: self.status.records_consumed,
                records_counted: self.status.records_counted,
                skipped: self.status.skipped.to_array(),
            },
        }
    }

    /// Restores the window from a checkpoint. Batches missed while ipstats was
    /// down become empty panes, so the window still spans wall-clock time.
    fn resume(&mut self, resume: Resume) {
        let capacity = self.config.window_panes;
        let skip = resume.panes.len().saturating_sub(capacity);
        for pane in resume.panes.into_iter().skip(skip) {
            self.window.push(pane);
        }
        self.seq = resume.next_seq;
        let last_end = self.window.panes().last().map(|p| p.end);
        if let Some(mut end) = last_end {
            let now = SystemTime::now();
            let mut missed = 0;
            while missed < capacity && end + self.config.batch <= now {
                self.window.push(Arc::new(Pane {
                    seq: self.seq,
                    start: end,
                    end: end + self.config.batch,
                    counts: SortedCounts::default(),
                    requests: 0,
                    skipped: SkipCounts::default(),
                    ranges: Vec::new(),
                }));
                self.seq += 1;
                end += self.config.batch;
                missed += 1;
            }
        }
        let c = resume.counters;
        self.status.batches = c.batches;
        self.status.records_consumed = c.records_consumed;
        self.status.records_counted = c.records_counted;
        self.status.skipped = SkipCounts::from_array(c.skipped);
        self.consumed_at_last_publish = c.records_consumed;
        info!(
            panes = self.window.panes().len(),
            requests = self.window.requests(),
            next_pane = self.seq,
            "window restored from the checkpoint"
        );
    }
}

/// A window to continue from: the panes of a checkpoint and its counters.
#[derive(Debug)]
pub struct Resume {
    pub panes: Vec<Arc<Pane>>,
    pub next_seq: u64,
    pub counters: Counters,
}
