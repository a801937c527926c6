//! Assembling a [`Snapshot`] from ingest's state at a slide: per-partition
//! offsets and lag, the rate over the last slide, and the slide history the
//! dashboard draws its sparklines from. Time is passed in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{HistoryPoint, IngestStatus, PartitionStatus, Snapshot, serial};
use crate::config::{MAX_TOP_N, SORTED_TOP_N};
use crate::kafka::PartitionInfo;
use crate::rules::Evaluator;
use crate::vocab::{IngestTotals, Reset, Started};
use crate::window::{Pane, Window};

/// How much slide history the dashboard's sparklines get.
const HISTORY_SPAN: Duration = Duration::from_secs(15 * 60);
const HISTORY_POINTS: usize = 600;

/// What ingest knows of one partition when it publishes.
pub struct PartitionProgress<'a> {
    pub topic: &'a Arc<str>,
    pub partition: i32,
    /// Next offset to count.
    pub next: i64,
    /// Timestamp (ms) of the last record read.
    pub last_timestamp_ms: Option<i64>,
    pub last_reset: Option<&'a Reset>,
    pub started: &'a Started,
    /// Event time: the newest time counted (epoch ms).
    pub newest_event_ms: Option<i64>,
    /// Event time: records that arrived after their pane closed.
    pub records_late: u64,
}

/// A partition's status: the offsets the window covers, and its lag against
/// what the cluster monitor last saw (`info`).
pub fn partition_status<'a>(
    p: &PartitionProgress<'_>,
    panes: impl IntoIterator<Item = &'a Arc<Pane>>,
    info: Option<&PartitionInfo>,
) -> PartitionStatus {
    let from_offset = panes
        .into_iter()
        .find_map(|pane| {
            pane.ranges
                .iter()
                .find(|r| r.partition == p.partition && r.topic == *p.topic)
                .map(|r| r.from)
        })
        .unwrap_or(p.next);
    let mut status = PartitionStatus {
        topic: p.topic.clone(),
        partition: p.partition,
        from_offset,
        until_offset: p.next,
        log_start: info.map(|i| i.low),
        // The monitor's log end can be older than what ingest has read: the
        // log reaches at least past the last record consumed.
        log_end: info.map(|i| i.high.max(p.next)),
        lag_seconds: None,
        last_reset: p.last_reset.cloned(),
        started: p.started.clone(),
        newest_event_ms: p.newest_event_ms,
        records_late: p.records_late,
    };
    if let Some(lag) = status.lag() {
        status.lag_seconds = match (
            lag,
            info.and_then(|i| i.newest_timestamp_ms),
            p.last_timestamp_ms,
        ) {
            (0, _, _) => Some(0.0),
            (_, Some(newest), Some(last)) => Some((newest - last).max(0) as f64 / 1000.0),
            _ => None,
        };
    }
    status
}

/// Builds one snapshot per slide and keeps what spans slides: the rate
/// baseline and the history.
#[derive(Debug)]
pub struct Builder {
    window_length: Duration,
    slide: Duration,
    last_publish: Instant,
    consumed_at_last_publish: u64,
    /// Records consumed per second, as last measured.
    rate: f64,
    history: VecDeque<HistoryPoint>,
    /// The panes the last snapshot kept, and their number.
    kept: Option<(KeptPanes, u64)>,
    /// `--rules`, evaluated at every snapshot.
    rules: Option<Evaluator>,
}

/// Which panes a snapshot kept, by identity: the window's panes, and the
/// ends of the older kept ones (those never change, they only leave).
#[derive(Debug)]
struct KeptPanes {
    window: Vec<Arc<Pane>>,
    retained: usize,
    oldest: Option<Arc<Pane>>,
    newest_retained: Option<Arc<Pane>>,
}

impl KeptPanes {
    fn of(window: &[Arc<Pane>], retained: &[Arc<Pane>]) -> Self {
        KeptPanes {
            window: window.to_vec(),
            retained: retained.len(),
            oldest: retained.first().cloned(),
            newest_retained: retained.last().cloned(),
        }
    }

    fn same_as(&self, other: &KeptPanes) -> bool {
        let same = |a: &Option<Arc<Pane>>, b: &Option<Arc<Pane>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.window.len() == other.window.len()
            && self
                .window
                .iter()
                .zip(&other.window)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && self.retained == other.retained
            && same(&self.oldest, &other.oldest)
            && same(&self.newest_retained, &other.newest_retained)
    }
}

impl Builder {
    /// `consumed` is the records-consumed total to measure the first rate from.
    pub fn new(window_length: Duration, slide: Duration, consumed: u64, now: Instant) -> Self {
        Builder {
            window_length,
            slide,
            last_publish: now,
            consumed_at_last_publish: consumed,
            rate: 0.0,
            history: VecDeque::new(),
            kept: None,
            rules: None,
        }
    }

    /// Evaluates `rules` at every snapshot.
    pub fn with_rules(mut self, rules: Option<Evaluator>) -> Self {
        self.rules = rules;
        self
    }

    pub fn has_rules(&self) -> bool {
        self.rules.is_some()
    }

    /// Evaluates the rules at a slide that publishes no snapshot (a
    /// replay's snapshots are sampled; rules see every slide).
    pub fn evaluate_rules(&mut self, window: &Window) {
        if let Some(rules) = self.rules.as_mut() {
            let panes: Vec<Arc<Pane>> = window.panes().cloned().collect();
            // Only the older panes the longest rule reaches (a replay may
            // evaluate thousands of slides over a long retention).
            let reach = rules.panes_needed().saturating_sub(panes.len());
            let mut retained: Vec<Arc<Pane>> =
                window.retained().rev().take(reach).cloned().collect();
            retained.reverse();
            if let Some(end) = panes.last().map(|p| p.end) {
                rules.evaluate(&retained, &panes, end);
            }
        }
    }

    /// The rules' state, for the checkpoint.
    pub fn saved_alerts(&self) -> Option<crate::rules::SavedAlerts> {
        self.rules.as_ref().map(Evaluator::save)
    }

    pub fn build(
        &mut self,
        window: &mut Window,
        partitions: Vec<PartitionStatus>,
        totals: IngestTotals,
        now: Instant,
        wall: SystemTime,
    ) -> Snapshot {
        // The rate over at least half a slide: with event time, snapshots
        // also come whenever the data's time passes a slide, which can be
        // moments apart.
        let elapsed = now.duration_since(self.last_publish);
        if elapsed >= self.slide / 2 || self.history.is_empty() {
            let seconds = elapsed.as_secs_f64();
            self.rate = if seconds > 0.0 {
                (totals.records_consumed - self.consumed_at_last_publish) as f64 / seconds
            } else {
                0.0
            };
            self.last_publish = now;
            self.consumed_at_last_publish = totals.records_consumed;
        }
        let records_per_second = self.rate;
        let distinct = window.distinct();

        let panes: Vec<Arc<Pane>> = window.panes().cloned().collect();
        let window_end = panes.last().map_or(wall, |p| p.end);
        // A point per window end: with event time, the slides of a replay
        // are spread over the data's time, in order. A window whose end has
        // a point already is still filling (late records, snapshots between
        // slides): its point is updated in place, so no time holds two.
        let point = HistoryPoint {
            at: window_end,
            records_per_second,
            window_requests: window.requests(),
            distinct_ips: distinct.count as usize,
        };
        match self.history.back_mut() {
            Some(newest) if newest.at >= window_end => {
                *newest = HistoryPoint {
                    at: newest.at,
                    ..point
                }
            }
            _ => self.history.push_back(point),
        }
        while self.history.len() > HISTORY_POINTS
            || self
                .history
                .front()
                .is_some_and(|p| window_end.duration_since(p.at).unwrap_or_default() > HISTORY_SPAN)
        {
            self.history.pop_front();
        }
        let window_start = window_end
            .checked_sub(self.window_length)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let retained: Vec<Arc<Pane>> = window.retained().cloned().collect();
        let kept = KeptPanes::of(&panes, &retained);
        let kept_seq = match self.kept.take() {
            Some((before, seq)) if before.same_as(&kept) => seq,
            _ => serial(),
        };
        self.kept = Some((kept, kept_seq));
        let alerts = match self.rules.as_mut() {
            Some(rules) => rules.slide(&retained, &panes, window_end),
            None => Arc::default(),
        };
        Snapshot {
            taken_at: wall,
            window_start,
            window_end,
            window_length: self.window_length,
            slide: self.slide,
            total_requests: window.requests(),
            distinct_ips: distinct.count as usize,
            distinct_estimated: distinct.estimated,
            error_bound: window.error_bound(),
            top: window.top_list(MAX_TOP_N, SORTED_TOP_N),
            panes,
            retained,
            ahead: Vec::new(),
            partitions,
            ingest: IngestStatus {
                totals,
                records_per_second,
                memory: Default::default(),
            },
            history: self.history.iter().copied().collect(),
            seq: serial(),
            kept_seq,
            alerts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::SkipCounts;
    use crate::vocab::StartedFrom;
    use crate::window::{OffsetRange, PaneCounts};

    fn pane(seq: u64, from: i64, until: i64) -> Arc<Pane> {
        Arc::new(Pane {
            owners: None,
            seq,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH + Duration::from_secs(seq + 1),
            counts: PaneCounts::default(),
            requests: 0,
            skipped: SkipCounts::default(),
            ranges: vec![OffsetRange {
                topic: "t".into(),
                partition: 0,
                from,
                until,
            }],
        })
    }

    #[test]
    fn a_partition_covers_from_its_first_pane_and_lags_behind_the_log_end() {
        let topic: Arc<str> = "t".into();
        let progress = PartitionProgress {
            topic: &topic,
            partition: 0,
            next: 30,
            last_timestamp_ms: Some(1_000),
            last_reset: None,
            started: &Started {
                offset: 10,
                from: StartedFrom::NewPartition,
                note: None,
            },
            newest_event_ms: None,
            records_late: 0,
        };
        let info = PartitionInfo {
            topic: topic.clone(),
            partition: 0,
            low: 0,
            high: 50,
            newest_timestamp_ms: Some(3_500),
        };
        let panes = [pane(0, 10, 20), pane(1, 20, 30)];
        let status = partition_status(&progress, &panes, Some(&info));
        assert_eq!((status.from_offset, status.until_offset), (10, 30));
        assert_eq!((status.lag(), status.lag_seconds), (Some(20), Some(2.5)));
        // No pane yet: the window covers nothing, from = until.
        let status = partition_status(&progress, &[], None);
        assert_eq!(
            (status.from_offset, status.lag(), status.lag_seconds),
            (30, None, None)
        );
        // The monitor saw the log end before ingest read further: the log end
        // shown is never below what was consumed.
        let stale = PartitionInfo {
            high: 25,
            ..info.clone()
        };
        let status = partition_status(&progress, &panes, Some(&stale));
        assert_eq!((status.log_end, status.lag()), (Some(30), Some(0)));
        // Caught up: no lag in seconds, whatever the timestamps.
        let caught_up = PartitionInfo { high: 30, ..info };
        let status = partition_status(&progress, &panes, Some(&caught_up));
        assert_eq!((status.lag(), status.lag_seconds), (Some(0), Some(0.0)));
    }

    #[test]
    fn the_kept_panes_keep_their_number_while_they_stay_the_same() {
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let mut builder = Builder::new(Duration::from_secs(2), Duration::from_secs(1), 0, start);
        let mut window = Window::new(2).with_retained(2);
        window.push(pane(0, 0, 10));
        let mut build = |window: &mut Window| {
            builder.build(window, Vec::new(), IngestTotals::default(), start, wall)
        };
        let first = build(&mut window);
        let same = build(&mut window);
        assert_eq!(same.kept_seq, first.kept_seq, "the same panes");
        assert!(same.seq > first.seq, "a later snapshot");
        window.push(pane(1, 10, 20));
        let moved = build(&mut window);
        assert_ne!(moved.kept_seq, same.kept_seq, "new panes, new answers");
        assert!(window.add_to((*pane(1, 10, 20)).clone()).is_ok());
        let merged = build(&mut window);
        assert_ne!(merged.kept_seq, moved.kept_seq, "a pane received records");
    }

    #[test]
    fn the_rate_is_per_slide_and_the_window_ends_with_its_newest_pane() {
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut builder = Builder::new(Duration::from_secs(2), Duration::from_secs(1), 100, start);
        let mut window = Window::new(2);
        window.push(pane(0, 0, 10));
        let totals = IngestTotals {
            records_consumed: 300,
            ..IngestTotals::default()
        };
        let snapshot = builder.build(
            &mut window,
            Vec::new(),
            totals,
            start + Duration::from_secs(2),
            wall,
        );
        assert_eq!(snapshot.ingest.records_per_second, 100.0);
        assert_eq!(
            snapshot.window_end,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1)
        );
        assert_eq!(snapshot.history.len(), 1);
        // A snapshot moments later keeps the last rate rather than measure
        // a fraction of a slide.
        let snapshot = builder.build(
            &mut window,
            Vec::new(),
            totals,
            start + Duration::from_millis(2_100),
            wall,
        );
        assert_eq!(snapshot.ingest.records_per_second, 100.0);
        // The same window end, filled further: one point, updated in place.
        let late = Pane {
            requests: 7,
            ..(*pane(0, 10, 17)).clone()
        };
        assert!(window.add_to(late).is_ok());
        let snapshot = builder.build(
            &mut window,
            Vec::new(),
            totals,
            start + Duration::from_millis(2_200),
            wall,
        );
        assert_eq!(snapshot.history.len(), 1, "{:?}", snapshot.history);
        assert_eq!(snapshot.history[0].window_requests, 7, "the newest totals");
        // History older than its span (by the window's end) is dropped.
        let later = SystemTime::UNIX_EPOCH + HISTORY_SPAN + Duration::from_secs(10);
        window.push(Arc::new(Pane {
            end: later,
            ..(*pane(1, 10, 20)).clone()
        }));
        let snapshot = builder.build(
            &mut window,
            Vec::new(),
            totals,
            start + Duration::from_secs(3),
            wall,
        );
        assert_eq!(snapshot.ingest.records_per_second, 0.0);
        assert_eq!(snapshot.history.len(), 1);
        assert_eq!(snapshot.history[0].at, later);
    }
}
