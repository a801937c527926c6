//! The consumer loop's bookkeeping, without Kafka: where each partition
//! starts, the next offset to count, the offset range of the open pane, the
//! rate cap, gaps in the offsets, and the batch grid. It takes records and
//! `now` and says what to do (count, skip, pause, close a pane, seek back);
//! the loop in [`super`] makes the librdkafka calls.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::OffsetReset;
use crate::kafka::ClusterView;
use crate::offsets::{ResetRefused, StoredOffsets, resolve_start};
use crate::vocab::{Reset, ResetReason, Started, StartedFrom};
use crate::window::OffsetRange;

/// One assigned partition.
#[derive(Debug)]
pub struct Partition {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Next offset to count; everything below is in a pane.
    pub next: i64,
    /// Where the open pane started in this partition.
    pane_from: i64,
    /// Records read in the open batch (for the rate cap and the metrics).
    taken: u64,
    /// Paused by the rate cap; resume from this offset at the next batch.
    held: Option<i64>,
    /// Timestamp (ms) of the last record read.
    pub last_timestamp_ms: Option<i64>,
    /// The last time this partition did not continue from where it was.
    pub last_reset: Option<Reset>,
    /// Where this run started it, and why.
    pub started: Started,
}

impl Partition {
    /// Read up to the log end `view` last saw (not when the view does not
    /// know the partition).
    pub fn read_to_end_of(&self, view: &ClusterView) -> bool {
        view.find(&self.topic, self.partition)
            .is_some_and(|info| self.next >= info.high)
    }
}

/// What to do with one polled record.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Count it.
    Count,
    /// Count it; the records between the last counted one and this one were
    /// deleted by retention before they could be counted: record the reset.
    CountAfterLoss(Reset),
    /// Leave it: a duplicate delivered around a seek, a record of a partition
    /// the rate cap paused (it is read again after the seek), or a partition
    /// not assigned here.
    Skip,
    /// The rate cap is reached: pause the partition. This record is the
    /// first one read again at the next batch.
    Pause,
}

/// Where a partition found in the cluster view starts.
#[derive(Debug, PartialEq, Eq)]
pub struct Start {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The first offset, and where it came from.
    pub started: Started,
    /// Set when the partition does not start at a stored offset.
    pub reset: Option<Reset>,
}

/// A closed batch: what its pane covered and what the loop must do.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub seq: u64,
    pub start: SystemTime,
    pub end: SystemTime,
    /// One range per partition, empty ranges included.
    pub ranges: Vec<OffsetRange>,
    /// Records read per partition (in `partitions()` order).
    pub taken: Vec<u64>,
    /// Partitions paused by the rate cap: seek each back to this offset and resume.
    pub seek_back: Vec<(Arc<str>, i32, i64)>,
}

/// Topic name → partition number → slot in `partitions`.
#[derive(Debug, Default)]
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

#[derive(Debug)]
pub struct Tracker {
    batch: Duration,
    cap_per_batch: Option<u64>,
    partitions: Vec<Partition>,
    lookup: Lookup,
    /// When the open batch closes: batches stay on a fixed grid.
    batch_end: Instant,
    batch_started: Instant,
    /// Time the open batch spent waiting for records.
    idle: Duration,
    pane_start: SystemTime,
    seq: u64,
}

impl Tracker {
    /// `next_seq` numbers the first pane; `max_rate_per_partition` 0 is no cap.
    pub fn new(
        batch: Duration,
        max_rate_per_partition: u64,
        next_seq: u64,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let cap_per_batch = (max_rate_per_partition > 0)
            .then(|| ((max_rate_per_partition as f64 * batch.as_secs_f64()).ceil() as u64).max(1));
        Tracker {
            batch,
            cap_per_batch,
            partitions: Vec::new(),
            lookup: Lookup::default(),
            batch_end: now + batch,
            batch_started: now,
            idle: Duration::ZERO,
            pane_start: wall,
            seq: next_seq,
        }
    }

    /// Starts the batch grid afresh at `now` (when consuming begins).
    pub fn start(&mut self, now: Instant, wall: SystemTime) {
        self.batch_end = now + self.batch;
        self.batch_started = now;
        self.idle = Duration::ZERO;
        self.pane_start = wall;
    }

    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// The number the next closed pane gets.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Whether records must name their topic to be placed (more than one topic).
    pub fn needs_topic(&self) -> bool {
        self.lookup.0.len() > 1
    }

    pub fn slot(&self, topic: Option<&str>, partition: i32) -> Option<usize> {
        self.lookup.get(topic, partition)
    }

    /// Where each partition of `view` not yet assigned starts. Partitions
    /// present at start (`initial`) resume from their stored offset or follow
    /// `policy`; partitions added later are new data, read from their start.
    pub fn plan(
        &self,
        view: &ClusterView,
        stored: &StoredOffsets,
        policy: OffsetReset,
        initial: bool,
    ) -> Result<Vec<Start>, ResetRefused> {
        let mut starts = Vec::new();
        for p in &view.partitions {
            if self
                .partitions
                .iter()
                .any(|s| s.partition == p.partition && s.topic == p.topic)
            {
                continue;
            }
            let (offset, reset, from, note) = if initial {
                let found = stored.get(&(p.topic.clone(), p.partition));
                let (offset, reset) =
                    resolve_start(&p.topic, p.partition, found, p.low, p.high, policy)?;
                let from = match (found, &reset) {
                    (Some(s), None) => StartedFrom::Stored(s.origin),
                    _ => StartedFrom::Reset,
                };
                (offset, reset, from, found.and_then(|s| s.note.clone()))
            } else {
                (p.low, None, StartedFrom::NewPartition, None)
            };
            starts.push(Start {
                topic: p.topic.clone(),
                partition: p.partition,
                started: Started { offset, from, note },
                reset,
            });
        }
        Ok(starts)
    }

    /// Tracks a partition the consumer was assigned; returns its slot.
    pub fn add(&mut self, start: Start) -> usize {
        let slot = self.partitions.len();
        self.lookup.insert(&start.topic, start.partition, slot);
        self.partitions.push(Partition {
            topic: start.topic,
            partition: start.partition,
            next: start.started.offset,
            pane_from: start.started.offset,
            taken: 0,
            held: None,
            last_timestamp_ms: None,
            last_reset: start.reset.filter(|r| !r.is_first_start()),
            started: start.started,
        });
        slot
    }

    /// One polled record of the partition in `slot`. `on_gap` gives the
    /// partition's first stored offset and the time; it is asked only when
    /// the offsets jump, to tell a normal gap (compaction, transaction
    /// markers) from records deleted before they were counted, so that the
    /// path of an ordinary record reads no clock.
    #[inline]
    pub fn record(
        &mut self,
        slot: usize,
        offset: i64,
        timestamp_ms: Option<i64>,
        on_gap: impl FnOnce() -> (Option<i64>, SystemTime),
    ) -> Verdict {
        let p = &mut self.partitions[slot];
        if p.held.is_some() || offset < p.next {
            return Verdict::Skip;
        }
        if let Some(cap) = self.cap_per_batch
            && p.taken >= cap
        {
            p.held = Some(offset);
            return Verdict::Pause;
        }
        let mut verdict = Verdict::Count;
        if offset > p.next {
            let (log_start, wall) = on_gap();
            if let Some(log_start) = log_start.filter(|low| *low > p.next) {
                let reset = Reset {
                    reason: ResetReason::Expired,
                    stored: Some(p.next),
                    origin: None,
                    start: offset,
                    log_start,
                    log_end: offset,
                    lost: log_start.min(offset) - p.next,
                    at: wall,
                };
                p.last_reset = Some(reset.clone());
                verdict = Verdict::CountAfterLoss(reset);
            }
        }
        p.taken += 1;
        p.next = offset + 1;
        p.last_timestamp_ms = timestamp_ms;
        verdict
    }

    /// Time the open batch waited for records (not counted as busy).
    pub fn idle(&mut self, waited: Duration) {
        self.idle += waited;
    }

    /// Whether the open batch is due to close at `now`. After a stall several
    /// are: each closes (the missed ones empty), so batches stay on the grid.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.batch_end
    }

    /// How long until the open batch is due.
    pub fn until_due(&self, now: Instant) -> Duration {
        self.batch_end.saturating_duration_since(now)
    }

    /// Closes the open batch (`wall` ends its pane) and opens the next one
    /// on the grid.
    pub fn close(&mut self, wall: SystemTime) -> Closed {
        let closed = self.close_early(wall);
        self.batch_end += self.batch;
        closed
    }

    /// Records read into the open batch.
    pub fn open_records(&self) -> u64 {
        self.partitions.iter().map(|p| p.taken).sum()
    }

    /// Closes the open batch before it is due (`wall` ends its pane); the
    /// next one still closes at the grid point this one would have. For
    /// event time only: by arrival time a batch is a pane of the window,
    /// whose panes stay on the grid.
    pub fn close_early(&mut self, wall: SystemTime) -> Closed {
        let mut seek_back = Vec::new();
        let mut taken = Vec::with_capacity(self.partitions.len());
        let ranges = self
            .partitions
            .iter_mut()
            .map(|p| {
                taken.push(std::mem::take(&mut p.taken));
                if let Some(offset) = p.held.take() {
                    seek_back.push((p.topic.clone(), p.partition, offset));
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
        let closed = Closed {
            seq: self.seq,
            start: self.pane_start,
            end: wall,
            ranges,
            taken,
            seek_back,
        };
        self.seq += 1;
        self.pane_start = wall;
        closed
    }

    /// Once a closed batch is handled: the time it spent working (closing
    /// included, its waits for records excluded). The next batch's clock
    /// starts at `now`.
    pub fn busy_until(&mut self, now: Instant) -> Duration {
        let busy = now
            .saturating_duration_since(self.batch_started)
            .saturating_sub(std::mem::take(&mut self.idle));
        self.batch_started = now;
        busy
    }

    /// The next offset of every partition: the panes closed so far account
    /// for exactly the records below them.
    pub fn offsets(&self) -> Vec<(Arc<str>, i32, i64)> {
        self.partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition, p.next))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::PartitionInfo;
    use crate::vocab::{Origin, Stored};

    const BATCH: Duration = Duration::from_secs(1);

    fn wall(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn view(partitions: &[(&str, i32, i64, i64)]) -> ClusterView {
        ClusterView {
            generation: 1,
            partitions: partitions
                .iter()
                .map(|&(topic, partition, low, high)| PartitionInfo {
                    topic: topic.into(),
                    partition,
                    low,
                    high,
                    newest_timestamp_ms: None,
                })
                .collect(),
            refreshed: Some(Instant::now()),
        }
    }

    /// A tracker with `t/0` assigned from `offset`.
    fn tracking(max_rate: u64, offset: i64) -> (Tracker, Instant) {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(BATCH, max_rate, 0, t0, wall(0));
        tracker.add(Start {
            topic: "t".into(),
            partition: 0,
            started: Started {
                offset,
                from: StartedFrom::NewPartition,
                note: None,
            },
            reset: None,
        });
        (tracker, t0)
    }

    fn count(tracker: &mut Tracker, offset: i64) -> Verdict {
        tracker.record(0, offset, Some(offset * 10), || (Some(0), wall(0)))
    }

    #[test]
    fn panes_cover_contiguous_offset_ranges_on_a_fixed_grid() {
        let (mut tracker, t0) = tracking(0, 100);
        for offset in 100..105 {
            assert_eq!(count(&mut tracker, offset), Verdict::Count);
        }
        assert!(!tracker.is_due(t0 + Duration::from_millis(999)));
        assert_eq!(
            tracker.until_due(t0 + Duration::from_millis(400)),
            Duration::from_millis(600)
        );
        tracker.idle(Duration::from_millis(300));
        let first = tracker.close(wall(1));
        assert_eq!((first.seq, first.start, first.end), (0, wall(0), wall(1)));
        assert_eq!((first.ranges[0].from, first.ranges[0].until), (100, 105));
        assert_eq!(first.taken, [5]);
        assert_eq!(tracker.busy_until(t0 + BATCH), Duration::from_millis(700));
        // A stall until 3.5 batches in: the batches ending at 2 and 3 are due,
        // and the one that saw no record is empty.
        let late = t0 + Duration::from_millis(3500);
        assert_eq!(count(&mut tracker, 105), Verdict::Count);
        let mut closed = Vec::new();
        while tracker.is_due(late) {
            closed.push(tracker.close(wall(3)));
        }
        let ranges: Vec<_> = closed
            .iter()
            .map(|c| (c.seq, c.ranges[0].from, c.ranges[0].until))
            .collect();
        assert_eq!(ranges, [(1, 105, 106), (2, 106, 106)]);
        assert!(!tracker.is_due(late));
        assert_eq!(tracker.offsets(), [(Arc::from("t"), 0, 106)]);
    }

    #[test]
    fn a_batch_closed_early_keeps_the_grid() {
        let (mut tracker, t0) = tracking(0, 0);
        for offset in 0..3 {
            assert_eq!(count(&mut tracker, offset), Verdict::Count);
        }
        assert_eq!(tracker.open_records(), 3);
        let early = tracker.close_early(wall(0));
        assert_eq!((early.ranges[0].from, early.ranges[0].until), (0, 3));
        assert_eq!(early.taken, [3]);
        assert_eq!(tracker.open_records(), 0);
        // Still due where the batch would have closed, not a batch later.
        assert_eq!(
            tracker.until_due(t0 + Duration::from_millis(400)),
            Duration::from_millis(600)
        );
        assert_eq!(count(&mut tracker, 3), Verdict::Count);
        assert!(tracker.is_due(t0 + BATCH));
        let next = tracker.close(wall(1));
        assert_eq!(next.seq, early.seq + 1);
        assert_eq!((next.ranges[0].from, next.ranges[0].until), (3, 4));
        assert!(!tracker.is_due(t0 + BATCH + Duration::from_millis(999)));
    }

    #[test]
    fn duplicates_around_a_seek_are_never_counted_twice() {
        let (mut tracker, _) = tracking(0, 10);
        assert_eq!(count(&mut tracker, 10), Verdict::Count);
        assert_eq!(count(&mut tracker, 11), Verdict::Count);
        assert_eq!(count(&mut tracker, 10), Verdict::Skip);
        assert_eq!(count(&mut tracker, 5), Verdict::Skip);
        assert_eq!(tracker.partitions()[0].next, 12);
        assert_eq!(tracker.partitions()[0].last_timestamp_ms, Some(110));
    }

    #[test]
    fn the_rate_cap_pauses_and_the_next_batch_rereads_from_the_first_record_turned_away() {
        // 3 records/s with 1 s batches: 3 per batch.
        let (mut tracker, t0) = tracking(3, 0);
        for offset in 0..3 {
            assert_eq!(count(&mut tracker, offset), Verdict::Count);
        }
        assert_eq!(count(&mut tracker, 3), Verdict::Pause);
        // What the consumer had prefetched before the pause is left.
        assert_eq!(count(&mut tracker, 4), Verdict::Skip);
        let closed = tracker.close(wall(1));
        assert_eq!(closed.seek_back, [(Arc::from("t"), 0, 3)]);
        assert_eq!((closed.ranges[0].from, closed.ranges[0].until), (0, 3));
        // After the seek: offset 3 again, counted this time.
        assert_eq!(count(&mut tracker, 3), Verdict::Count);
        let closed = tracker.close(wall(2));
        assert!(closed.seek_back.is_empty());
        assert_eq!((closed.ranges[0].from, closed.ranges[0].until), (3, 4));
        // A cap below one record per batch still lets one through.
        let slow = Tracker::new(Duration::from_millis(10), 1, 0, t0, wall(0));
        assert_eq!(slow.cap_per_batch, Some(1));
    }

    #[test]
    fn a_gap_is_a_loss_only_when_retention_deleted_the_records() {
        let (mut tracker, _) = tracking(0, 0);
        assert_eq!(count(&mut tracker, 0), Verdict::Count);
        // Compaction: offsets jump, but the log still starts at 0.
        assert_eq!(
            tracker.record(0, 5, None, || (Some(0), wall(0))),
            Verdict::Count
        );
        assert_eq!(tracker.partitions()[0].last_reset, None);
        // Retention moved the log start to 40 while we were at 6: 34 lost.
        let verdict = tracker.record(0, 50, None, || (Some(40), wall(7)));
        let Verdict::CountAfterLoss(reset) = verdict else {
            panic!("expected a loss, got {verdict:?}");
        };
        assert_eq!(
            (
                reset.reason,
                reset.stored,
                reset.start,
                reset.lost,
                reset.at
            ),
            (ResetReason::Expired, Some(6), 50, 34, wall(7))
        );
        assert_eq!(tracker.partitions()[0].last_reset, Some(reset));
        assert_eq!(tracker.partitions()[0].next, 51);
    }

    #[test]
    fn starts_follow_stored_offsets_and_record_every_reset() {
        let tracker = Tracker::new(BATCH, 0, 0, Instant::now(), wall(0));
        let cluster = view(&[
            ("t", 0, 0, 100),  // stored 50: used as is
            ("t", 1, 30, 100), // stored 10: expired, 20 lost
            ("t", 2, 0, 100),  // stored 500: ahead (topic recreated)
            ("u", 0, 5, 100),  // nothing stored
        ]);
        let stored: StoredOffsets = [(0, 50), (1, 10), (2, 500)]
            .into_iter()
            .map(|(partition, offset)| {
                let stored = Stored {
                    offset,
                    origin: Origin::KafkaGroup,
                    note: None,
                };
                ((Arc::from("t"), partition), stored)
            })
            .collect();
        let starts = tracker
            .plan(&cluster, &stored, OffsetReset::Latest, true)
            .expect("plan");
        let summary: Vec<_> = starts
            .iter()
            .map(|s| {
                let reset = s.reset.as_ref().map(|r| (r.reason, r.lost));
                (
                    &*s.topic,
                    s.partition,
                    s.started.offset,
                    s.started.from,
                    reset,
                )
            })
            .collect();
        let group = StartedFrom::Stored(Origin::KafkaGroup);
        assert_eq!(
            summary,
            [
                ("t", 0, 50, group, None),
                (
                    "t",
                    1,
                    30,
                    StartedFrom::Reset,
                    Some((ResetReason::Expired, 20))
                ),
                (
                    "t",
                    2,
                    100,
                    StartedFrom::Reset,
                    Some((ResetReason::Ahead, 0))
                ),
                (
                    "u",
                    0,
                    100,
                    StartedFrom::Reset,
                    Some((ResetReason::Missing, 0))
                ),
            ]
        );
        let refused = tracker.plan(&cluster, &stored, OffsetReset::Fail, true);
        assert!(refused.is_err_and(|e| e.to_string().contains("t/1")));
        // Nothing stored and read from the oldest record: a first start, not
        // a partition's last reset; passing records over (latest) is one.
        let mut tracker = tracker;
        for start in tracker
            .plan(&cluster, &stored, OffsetReset::Earliest, true)
            .expect("plan")
        {
            tracker.add(start);
        }
        let last_resets: Vec<_> = tracker
            .partitions()
            .iter()
            .map(|p| p.last_reset.as_ref().map(|r| r.reason))
            .collect();
        assert_eq!(
            last_resets,
            [
                None,
                Some(ResetReason::Expired),
                Some(ResetReason::Ahead),
                None
            ]
        );
        let latest = tracker
            .plan(
                &view(&[("v", 0, 5, 100)]),
                &stored,
                OffsetReset::Latest,
                true,
            )
            .expect("plan");
        let passed_over = latest[0].reset.as_ref().expect("a reset");
        assert!(!passed_over.is_first_start());
        tracker.add(latest.into_iter().next().expect("one"));
        assert!(tracker.partitions()[4].last_reset.is_some());
    }

    #[test]
    fn partitions_found_later_start_at_their_log_start_and_are_planned_once() {
        let mut tracker = Tracker::new(BATCH, 0, 0, Instant::now(), wall(0));
        let first = view(&[("t", 0, 0, 10)]);
        for start in tracker
            .plan(&first, &StoredOffsets::new(), OffsetReset::Latest, true)
            .expect("plan")
        {
            tracker.add(start);
        }
        let grown = view(&[("t", 0, 0, 10), ("t", 1, 3, 10), ("u", 0, 0, 9)]);
        let starts = tracker
            .plan(&grown, &StoredOffsets::new(), OffsetReset::Latest, false)
            .expect("plan");
        let planned: Vec<_> = starts
            .iter()
            .map(|s| {
                let started = &s.started;
                (
                    &*s.topic,
                    s.partition,
                    started.offset,
                    started.from,
                    s.reset.is_some(),
                )
            })
            .collect();
        let new = StartedFrom::NewPartition;
        assert_eq!(planned, [("t", 1, 3, new, false), ("u", 0, 0, new, false)]);
        for start in starts {
            tracker.add(start);
        }
        assert!(tracker.needs_topic());
        assert_eq!(tracker.slot(Some("u"), 0), Some(2));
        assert_eq!(tracker.slot(Some("t"), 1), Some(1));
        assert_eq!(tracker.slot(Some("t"), 7), None);
        assert_eq!(
            tracker.slot(None, 0),
            None,
            "two topics: the name is needed"
        );
    }
}
