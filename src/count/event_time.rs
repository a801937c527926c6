//! Counting by event time on the counting thread: each record goes to the
//! pane of its own time (`time / batch`), not to the batch that polled it.
//! Panes that ended before the floor (the window's end minus the lateness,
//! set by ingest after each batch) are closed: their records are counted as
//! late, per partition, never dropped silently. Records further ahead of the
//! wall clock than `--max-future` are skipped as `future_time`.

use super::{OpenLimit, bound, close};
use crate::vocab::{IpKey, SkipCounts, SkipReason};
use crate::window::{IpMap, PaneCounts};

/// What the tally needs to know.
#[derive(Clone, Copy, Debug)]
pub struct EventConfig {
    /// The pane length (`--batch`) in milliseconds.
    pub batch_ms: i64,
    /// `--max-future` in milliseconds.
    pub max_future_ms: i64,
}

/// The records of one pane counted during one batch.
#[derive(Debug)]
pub struct EventPane {
    /// `time / batch`: the pane covers `[index * batch, (index + 1) * batch)`.
    pub index: i64,
    pub counts: PaneCounts,
    pub requests: u64,
}

/// What one batch counted, by event time.
#[derive(Debug, Default)]
pub struct EventBatch {
    /// Panes that received records, by index.
    pub panes: Vec<EventPane>,
    /// Late records per partition slot.
    pub late: Vec<u64>,
    /// The newest time counted per partition slot in this batch.
    pub newest: Vec<Option<i64>>,
}

/// The open panes of the counting thread.
#[derive(Debug)]
pub struct EventTally {
    config: EventConfig,
    /// The first pane index still open; `None` before the window has an end.
    floor: Option<i64>,
    open: Vec<(i64, IpMap<u32>, u64)>,
    /// What each open pane counted before its table was folded, parallel
    /// to `open`.
    folded: Vec<Option<PaneCounts>>,
    limit: OpenLimit,
    /// Where the last record went: consecutive lines share a pane.
    last: usize,
    /// Emptied maps, reused.
    spare: Vec<IpMap<u32>>,
    late: Vec<u64>,
    newest: Vec<Option<i64>>,
    pub skipped: SkipCounts,
}

impl EventTally {
    pub fn new(config: EventConfig) -> Self {
        EventTally {
            config,
            floor: None,
            open: Vec::new(),
            folded: Vec::new(),
            limit: OpenLimit::NONE,
            last: 0,
            spare: Vec::new(),
            late: Vec::new(),
            newest: Vec::new(),
            skipped: SkipCounts::default(),
        }
    }

    /// Open panes summarized past `limit` (`--memory-limit`).
    pub fn with_limit(mut self, limit: OpenLimit) -> Self {
        self.limit = limit;
        self
    }

    /// Folds the open panes that hold more addresses than the limit allows:
    /// the open panes share it, so that many panes open at once (late
    /// records within `--lateness`) hold no more than one would.
    pub fn bound(&mut self) {
        let share = OpenLimit {
            entries: (self.limit.entries / self.open.len().max(1)).max(
                self.limit
                    .capacity
                    .min(self.limit.entries)
                    .saturating_mul(4),
            ),
            capacity: self.limit.capacity,
        };
        for ((_, map, _), folded) in self.open.iter_mut().zip(&mut self.folded) {
            bound(map, folded, share);
        }
    }

    /// Records of panes below `floor` are late from now on.
    pub fn set_floor(&mut self, floor: Option<i64>) {
        self.floor = floor;
    }

    /// One record of partition `slot` from `ip` at `time_ms`, with the wall
    /// clock at `now_ms`.
    #[inline]
    pub fn record(&mut self, slot: usize, ip: IpKey, time_ms: i64, now_ms: i64) {
        if time_ms > now_ms.saturating_add(self.config.max_future_ms) {
            self.skipped.add(SkipReason::FutureTime);
            return;
        }
        if self.late.len() <= slot {
            self.late.resize(slot + 1, 0);
            self.newest.resize(slot + 1, None);
        }
        let index = time_ms.div_euclid(self.config.batch_ms);
        if self.floor.is_some_and(|floor| index < floor) {
            self.late[slot] += 1;
            return;
        }
        let newest = &mut self.newest[slot];
        *newest = Some(newest.map_or(time_ms, |n| n.max(time_ms)));
        let at = match self.open.get(self.last) {
            Some((i, _, _)) if *i == index => self.last,
            _ => match self.open.iter().position(|(i, _, _)| *i == index) {
                Some(at) => at,
                None => {
                    let map = self.spare.pop().unwrap_or_default();
                    self.open.push((index, map, 0));
                    self.folded.push(None);
                    self.open.len() - 1
                }
            },
        };
        self.last = at;
        let (_, counts, requests) = &mut self.open[at];
        counts.add(ip, 1);
        *requests += 1;
    }

    /// Everything counted since the last call, panes by index.
    pub fn take(&mut self) -> EventBatch {
        let mut open: Vec<_> = self.open.drain(..).zip(self.folded.drain(..)).collect();
        open.sort_unstable_by_key(|((i, _, _), _)| *i);
        let panes = open
            .into_iter()
            .map(|((index, mut counts, requests), folded)| {
                let pane = EventPane {
                    index,
                    counts: close(&counts, folded),
                    requests,
                };
                counts.clear_for_reuse();
                self.spare.push(counts);
                pane
            })
            .collect();
        self.last = 0;
        EventBatch {
            panes,
            late: std::mem::take(&mut self.late),
            newest: std::mem::take(&mut self.newest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::parse_ip;
    use proptest::prelude::*;

    const CONFIG: EventConfig = EventConfig {
        batch_ms: 1000,
        max_future_ms: 300_000,
    };

    #[test]
    fn open_panes_share_the_limit_and_keep_their_bounds() {
        let limit = OpenLimit {
            entries: 400,
            capacity: 10,
        };
        let mut tally = EventTally::new(CONFIG).with_limit(limit);
        // Four panes open at once, 300 addresses each: none outgrows the
        // limit alone, together they do.
        let ip = |pane: u32, host: u32| IpKey::from_v4_bits(0x0a00_0000 | (pane << 16) | host);
        for host in 0..300 {
            for pane in 0..4u32 {
                tally.record(0, ip(pane, host), i64::from(pane) * 1000, 10_000);
            }
        }
        tally.bound();
        let open: usize = tally.open.iter().map(|(_, map, _)| map.len()).sum();
        assert!(open <= limit.entries, "{open} addresses open");
        let batch = tally.take();
        assert_eq!(batch.panes.len(), 4);
        for pane in &batch.panes {
            assert!(!pane.counts.is_exact(), "pane {} folded", pane.index);
            assert_eq!(pane.requests, 300);
            let b = pane.counts.bounds(ip(pane.index as u32, 7));
            assert!(b.lower <= 1 && 1 <= b.upper, "{b:?}");
        }
    }

    #[test]
    fn records_go_to_the_pane_of_their_time_late_and_future_ones_are_counted_apart() {
        let ip = parse_ip("203.0.113.7").expect("ip");
        let mut tally = EventTally::new(CONFIG);
        let now = 1_000_000;
        tally.record(0, ip, 10_500, now);
        tally.record(1, ip, 10_999, now);
        tally.record(0, ip, 12_000, now);
        tally.record(0, ip, now + 300_001, now);
        let batch = tally.take();
        let panes: Vec<(i64, u64)> = batch.panes.iter().map(|p| (p.index, p.requests)).collect();
        assert_eq!(panes, [(10, 2), (12, 1)]);
        assert_eq!(batch.newest, [Some(12_000), Some(10_999)]);
        assert_eq!(tally.skipped.get(SkipReason::FutureTime), 1);
        tally.set_floor(Some(12));
        tally.record(1, ip, 11_999, now);
        tally.record(1, ip, 12_000, now);
        let batch = tally.take();
        assert_eq!(batch.late, [0, 1]);
        assert_eq!(batch.panes.len(), 1);
        assert_eq!(batch.newest, [None, Some(12_000)]);
    }

    proptest! {
        #[test]
        fn panes_do_not_depend_on_arrival_order_or_batch_boundaries(
            (records, shuffled) in prop::collection::vec((0usize..3, 0u32..20, 0i64..20_000), 0..200)
                .prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
            cuts in prop::collection::vec(0usize..200, 0..6),
        ) {
            let count = |records: &[(usize, u32, i64)], cuts: &[usize]| {
                let mut tally = EventTally::new(CONFIG);
                let mut totals = std::collections::BTreeMap::new();
                for (i, &(slot, ip, t)) in records.iter().enumerate() {
                    if cuts.contains(&i) {
                        for pane in tally.take().panes {
                            for (ip, n) in pane.counts.iter() {
                                *totals.entry((pane.index, ip)).or_insert(0u64) += u64::from(n);
                            }
                        }
                    }
                    tally.record(slot, IpKey::from_v4_bits(ip), t, 1_000_000);
                }
                for pane in tally.take().panes {
                    for (ip, n) in pane.counts.iter() {
                        *totals.entry((pane.index, ip)).or_insert(0u64) += u64::from(n);
                    }
                }
                totals
            };
            // Another interleaving of the same records, in one batch.
            prop_assert_eq!(count(&shuffled, &[]), count(&records, &cuts));
        }
    }
}
