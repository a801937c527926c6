//! Event time in the consumer loop: where the window's end is, and which
//! panes are in the window, ahead of it, or closed.
//!
//! The end follows the data. Each partition's newest counted time is kept;
//! partitions that still have a backlog (lag > 0) hold the end back at
//! their newest time, caught-up partitions do not (a quiet partition never
//! freezes the window). The end is the first slide boundary at or after the
//! end of the pane holding that time, so the newest records are always in
//! the answer. Panes at or after the end are counted but wait ahead of the
//! window; panes ending more than `--lateness` before the end are closed
//! (the counting thread counts their records as late).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::count::event_time::EventBatch;
use crate::vocab::SkipCounts;
use crate::window::{OffsetRange, Pane, PaneCounts, Window};

/// Intermediate slides published per batch while a backlog is replayed;
/// more are passed through without a snapshot.
const REPLAY_SNAPSHOTS_PER_BATCH: usize = 8;

/// The event-time state of the window.
#[derive(Debug)]
pub struct EventPanes {
    batch_ms: i64,
    slide_ms: i64,
    lateness_ms: i64,
    /// The window and the kept history before it (`--retention`): a jump
    /// of the end by less keeps every pane in between.
    kept_ms: i64,
    /// The window's end (epoch ms, a slide boundary); `None` until a record
    /// has been counted.
    end_ms: Option<i64>,
    /// Panes at or after the end, by start (epoch ms).
    ahead: BTreeMap<i64, Arc<Pane>>,
    /// The newest time counted per partition slot.
    newest: Vec<Option<i64>>,
    /// Late records per partition slot, since the start of this run.
    late: Vec<u64>,
    /// Records for a pane the window did not hold (see [`EventPanes::absorb`]).
    unplaced: u64,
    /// When each partition slot last delivered a record with a time.
    active: Vec<Option<Instant>>,
    next_seq: u64,
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

pub use crate::vocab::epoch_ms;
use crate::vocab::from_epoch_ms as time_of;

impl EventPanes {
    /// Bytes the counts of the panes waiting ahead of the window take.
    pub fn bytes(&self) -> usize {
        self.ahead.values().map(|p| p.counts.bytes()).sum()
    }

    /// `kept` is the longer of the window and `--retention`.
    pub fn new(batch: Duration, slide: Duration, lateness: Duration, kept: Duration) -> Self {
        EventPanes {
            batch_ms: ms(batch),
            slide_ms: ms(slide),
            lateness_ms: ms(lateness),
            kept_ms: ms(kept),
            end_ms: None,
            ahead: BTreeMap::new(),
            newest: Vec::new(),
            late: Vec::new(),
            active: Vec::new(),
            unplaced: 0,
            next_seq: 0,
        }
    }

    /// Continues a checkpoint: panes starting before `end_ms` go to the
    /// window (in order), the rest wait ahead. Pane numbers go on from
    /// `next_seq`.
    pub fn restore(
        &mut self,
        panes: Vec<Arc<Pane>>,
        end_ms: Option<i64>,
        next_seq: u64,
        window: &mut Window,
    ) {
        self.end_ms = end_ms;
        self.next_seq = next_seq;
        for pane in panes {
            let start = epoch_ms(pane.start);
            match end_ms {
                Some(end) if start < end => {
                    window.push(pane);
                }
                _ => {
                    self.ahead.insert(start, pane);
                }
            }
        }
    }

    pub fn end_ms(&self) -> Option<i64> {
        self.end_ms
    }

    /// The next pane number (pane files are named by it: a pane that
    /// receives more records is written anew under a new number).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The first pane index still open to records; `None`: all are.
    pub fn floor(&self) -> Option<i64> {
        self.end_ms
            .map(|end| (end - self.lateness_ms).div_euclid(self.batch_ms))
    }

    pub fn newest(&self, slot: usize) -> Option<i64> {
        self.newest.get(slot).copied().flatten()
    }

    /// Records counted as late because no pane of the window could take them.
    pub fn unplaced(&self) -> u64 {
        self.unplaced
    }

    pub fn late(&self, slot: usize) -> u64 {
        self.late.get(slot).copied().unwrap_or(0)
    }

    /// Whether the slot delivered a record with a time within `recent` of `now`.
    pub fn active(&self, slot: usize, now: Instant, recent: Duration) -> bool {
        self.active
            .get(slot)
            .copied()
            .flatten()
            .is_some_and(|at| now.duration_since(at) <= recent)
    }

    /// Panes waiting ahead of the window, oldest first.
    pub fn ahead(&self) -> impl Iterator<Item = &Arc<Pane>> {
        self.ahead.values()
    }

    /// One batch's records (closed at `now`) into their panes: merged into
    /// the window's pane of their time, or into a pane ahead of it. Returns
    /// the late records of the batch per slot (and adds to
    /// [`EventPanes::unplaced`]).
    pub fn absorb(
        &mut self,
        batch: EventBatch,
        ranges: &[OffsetRange],
        window: &mut Window,
        now: Instant,
    ) -> Vec<u64> {
        for (slot, newest) in batch.newest.iter().enumerate() {
            if let Some(t) = newest {
                if self.newest.len() <= slot {
                    self.newest.resize(slot + 1, None);
                    self.active.resize(slot + 1, None);
                }
                self.active[slot] = Some(now);
                let kept = &mut self.newest[slot];
                *kept = Some(kept.map_or(*t, |k| k.max(*t)));
            }
        }
        for (slot, n) in batch.late.iter().enumerate() {
            if self.late.len() <= slot {
                self.late.resize(slot + 1, 0);
            }
            self.late[slot] += n;
        }
        for counted in batch.panes {
            let start = counted.index * self.batch_ms;
            let pane = Pane {
                seq: self.take_seq(),
                start: time_of(start),
                end: time_of(start + self.batch_ms),
                counts: counted.counts,
                requests: counted.requests,
                skipped: SkipCounts::default(),
                ranges: ranges.to_vec(),
                owners: None,
            };
            let pane = match self.end_ms {
                Some(end) if start < end => match window.add_to(pane) {
                    Ok(()) => continue,
                    // The window holds every pane from the floor to its
                    // end, so this does not happen; if it did, the records
                    // are counted as late rather than lost.
                    Err(pane) => {
                        tracing::warn!(
                            start,
                            requests = pane.requests,
                            "records for a pane outside the window counted as late"
                        );
                        self.unplaced += pane.requests;
                        continue;
                    }
                },
                _ => pane,
            };
            let merged = match self.ahead.remove(&start) {
                Some(old) => old.merged(pane),
                None => pane,
            };
            self.ahead.insert(start, Arc::new(merged));
        }
        batch.late
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// Where the end should be: the newest time of the partitions that
    /// have a backlog (the oldest of those), or of all when none has;
    /// `None` while a partition with a backlog has no time yet, or nothing
    /// has a time at all.
    pub fn target_end(&self, backlog: &[bool]) -> Option<i64> {
        let mut held: Option<i64> = None;
        let mut newest_all: Option<i64> = None;
        for (slot, &behind) in backlog.iter().enumerate() {
            let newest = self.newest(slot);
            if behind {
                let t = newest?;
                held = Some(held.map_or(t, |h| h.min(t)));
            }
            if let Some(t) = newest {
                newest_all = Some(newest_all.map_or(t, |n| n.max(t)));
            }
        }
        // Nothing behind: the end reaches every counted record, those of
        // panes waiting ahead too (after a restart, the partitions that
        // filled them may have nothing more to read, and their newest
        // times are not known to this run).
        let ahead = self
            .ahead
            .keys()
            .next_back()
            .map(|start| start + self.batch_ms - 1);
        let t = held.or(match (newest_all, ahead) {
            (Some(n), Some(a)) => Some(n.max(a)),
            (n, a) => n.or(a),
        })?;
        let pane_end = (t.div_euclid(self.batch_ms) + 1) * self.batch_ms;
        let end = pane_end.div_euclid(self.slide_ms) * self.slide_ms
            + if pane_end.rem_euclid(self.slide_ms) == 0 {
                0
            } else {
                self.slide_ms
            };
        Some(match self.end_ms {
            Some(old) => end.max(old),
            None => end,
        })
    }

    /// The slide ends to stop at on the way to `target`: every one when
    /// few, otherwise evenly spaced samples; always `target` last.
    pub fn steps(&self, target: i64) -> Vec<i64> {
        let Some(end) = self.end_ms else {
            return vec![target];
        };
        if target <= end {
            return Vec::new();
        }
        let slides = (target - end) / self.slide_ms;
        let every = (slides as usize)
            .div_ceil(REPLAY_SNAPSHOTS_PER_BATCH)
            .max(1) as i64;
        let mut steps: Vec<i64> = (1..slides)
            .filter(|i| i % every == 0)
            .map(|i| end + i * self.slide_ms)
            .collect();
        steps.push(target);
        steps
    }

    /// Every slide end on the way to `target` (rules are evaluated at
    /// each): from the current end, or, for a window that starts afresh,
    /// from where it will start — at most the kept history's slides.
    pub fn every_slide(&self, target: i64) -> Vec<i64> {
        match self.end_ms {
            Some(end) if target <= end => Vec::new(),
            Some(end) if target - end < self.kept_ms => (1..=(target - end - 1) / self.slide_ms)
                .map(|i| end + i * self.slide_ms)
                .chain(std::iter::once(target))
                .collect(),
            _ => {
                let slides = (target - self.fresh_start(target) - 1).max(0) / self.slide_ms;
                (0..=slides)
                    .rev()
                    .map(|i| target - i * self.slide_ms)
                    .collect()
            }
        }
    }

    /// Where a window that starts afresh at `to` starts: at its oldest
    /// counted pane, or where records may still join (the lateness before
    /// the end), whichever is older, but no further back than the kept
    /// history: empty panes before that would only be written and evicted.
    fn fresh_start(&self, to: i64) -> i64 {
        let open = (to - self.lateness_ms).div_euclid(self.batch_ms) * self.batch_ms;
        let oldest = self.ahead.keys().next().copied().unwrap_or(to);
        oldest.min(open).clamp(to - self.kept_ms, to)
    }

    /// Moves the end to `to`: the panes in between (counted ahead, or empty)
    /// enter the window and the oldest leave it (into the kept history). A
    /// jump longer than the kept history starts the window afresh.
    pub fn advance_to(&mut self, to: i64, window: &mut Window) {
        let from = match self.end_ms {
            Some(end) if to - end < self.kept_ms => end,
            Some(_) | None => {
                window.restart();
                self.fresh_start(to)
            }
        };
        // Panes that fall before the new window never enter it.
        let stale: Vec<i64> = self.ahead.range(..from).map(|(s, _)| *s).collect();
        for start in stale {
            self.ahead.remove(&start);
        }
        let mut start = from;
        while start < to {
            let pane = match self.ahead.remove(&start) {
                Some(pane) => pane,
                None => Arc::new(Pane {
                    seq: self.take_seq(),
                    start: time_of(start),
                    end: time_of(start + self.batch_ms),
                    counts: PaneCounts::default(),
                    requests: 0,
                    skipped: SkipCounts::default(),
                    ranges: Vec::new(),
                    owners: None,
                }),
            };
            window.push(pane);
            start += self.batch_ms;
        }
        self.end_ms = Some(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::count::event_time::EventPane;
    use crate::vocab::IpKey;
    use crate::window::IpMap;
    use std::time::UNIX_EPOCH;

    const S: Duration = Duration::from_secs(1);

    fn batch(panes: &[(i64, u32, u32)], newest: &[Option<i64>]) -> EventBatch {
        EventBatch {
            panes: panes
                .iter()
                .map(|&(index, ip, n)| {
                    let mut counts = IpMap::default();
                    counts.add(IpKey::from_v4_bits(ip), n);
                    EventPane {
                        index,
                        counts: PaneCounts::from(&counts),
                        requests: u64::from(n),
                    }
                })
                .collect(),
            late: vec![0; newest.len()],
            newest: newest.to_vec(),
        }
    }

    #[test]
    fn the_end_follows_the_newest_time_and_a_backlog_holds_it_back() {
        let mut events = EventPanes::new(S, 2 * S, 5 * S, 10 * S);
        let mut window = Window::new(10);
        assert_eq!(events.target_end(&[false, false]), None, "no time yet");
        events.absorb(
            batch(&[(100, 1, 3)], &[Some(100_500), None]),
            &[],
            &mut window,
            Instant::now(),
        );
        // Partition 1 has a backlog but no time yet: it holds.
        assert_eq!(events.target_end(&[false, true]), None);
        // Caught up: the pane [100 s, 101 s) ends at 101 s, the slide boundary after is 102 s.
        assert_eq!(events.target_end(&[false, false]), Some(102_000));
        events.absorb(
            batch(&[(90, 2, 1)], &[None, Some(90_000)]),
            &[],
            &mut window,
            Instant::now(),
        );
        assert_eq!(
            events.target_end(&[false, true]),
            Some(92_000),
            "the backlog holds"
        );
        assert_eq!(events.target_end(&[true, true]), Some(92_000));
        assert_eq!(events.target_end(&[false, false]), Some(102_000));
        for step in events.steps(102_000) {
            events.advance_to(step, &mut window);
        }
        // The window is [92 s, 102 s): the pane at 90 s is older.
        assert_eq!(window.requests(), 3);
        assert_eq!(
            window.panes().len(),
            10,
            "the pane at 90 s is older than the window"
        );
        assert_eq!(events.floor(), Some(97));
        // A late-but-allowed record joins its pane in the window.
        events.absorb(
            batch(&[(98, 1, 2)], &[Some(98_000), None]),
            &[],
            &mut window,
            Instant::now(),
        );
        assert_eq!(window.requests(), 5);
        // A record ahead of the end waits.
        events.absorb(
            batch(&[(103, 1, 1)], &[Some(103_000), None]),
            &[],
            &mut window,
            Instant::now(),
        );
        assert_eq!(window.requests(), 5);
        assert_eq!(events.ahead().count(), 1);
        // The end never goes back.
        assert_eq!(events.target_end(&[false, true]), Some(102_000));
        let target = events.target_end(&[false, false]).expect("end");
        assert_eq!(target, 104_000);
        for step in events.steps(target) {
            events.advance_to(step, &mut window);
        }
        assert_eq!(window.requests(), 6);
        assert_eq!(events.ahead().count(), 0);
    }

    #[test]
    fn restored_panes_ahead_of_the_end_enter_once_nothing_is_behind() {
        // A checkpoint: the end at 10 s, panes counted up to 14 s ahead of
        // it by partitions this run never hears from again.
        let mut events = EventPanes::new(S, S, 5 * S, 60 * S);
        let mut window = Window::new(60);
        let pane = |start: u64, n: u64| {
            Arc::new(Pane {
                owners: None,
                seq: start,
                start: UNIX_EPOCH + S * start as u32,
                end: UNIX_EPOCH + S * (start as u32 + 1),
                counts: PaneCounts::default(),
                requests: n,
                skipped: SkipCounts::default(),
                ranges: Vec::new(),
            })
        };
        events.restore(
            vec![pane(9, 1), pane(12, 2), pane(14, 3)],
            Some(10_000),
            15,
            &mut window,
        );
        assert_eq!(events.ahead().count(), 2);
        assert_eq!(events.target_end(&[false, false]), Some(15_000));
        // Partition 1 still reads: it holds the end until it has a time.
        assert_eq!(events.target_end(&[false, true]), None);
        for step in events.steps(15_000) {
            events.advance_to(step, &mut window);
        }
        assert_eq!(window.requests(), 6);
    }

    #[test]
    fn a_backlog_older_than_the_window_goes_to_the_kept_history() {
        // A 10 s window with 50 s kept: the first batch holds 40 s of log.
        let mut events = EventPanes::new(S, S, 5 * S, 50 * S);
        let mut window = Window::new(10).with_retained(40);
        let panes: Vec<(i64, u32, u32)> = (0..40).map(|s| (s, s as u32, 1)).collect();
        events.absorb(
            batch(&panes, &[Some(39_500)]),
            &[],
            &mut window,
            Instant::now(),
        );
        let target = events.target_end(&[false]).expect("end");
        for step in events.steps(target) {
            events.advance_to(step, &mut window);
        }
        assert_eq!(window.requests(), 10);
        let kept: u64 = window.retained().map(|p| p.requests).sum();
        assert_eq!(kept, 30, "nothing counted is dropped within the retention");
        // A jump beyond the kept history starts afresh.
        events.absorb(
            batch(&[(200, 1, 1)], &[Some(200_000)]),
            &[],
            &mut window,
            Instant::now(),
        );
        events.advance_to(201_000, &mut window);
        assert_eq!(window.requests(), 1);
    }

    #[test]
    fn rules_step_through_every_slide_of_a_first_backlog_and_lose_no_pane() {
        let mut events = EventPanes::new(S, S, 2 * S, 10 * S);
        let mut window = Window::new(10);
        let panes: Vec<(i64, u32, u32)> = (3..=7).map(|s| (s, 1, 2)).collect();
        events.absorb(
            batch(&panes, &[Some(7_500)]),
            &[],
            &mut window,
            Instant::now(),
        );
        let target = events.target_end(&[false]).expect("a time");
        assert_eq!(target, 8_000);
        let stops = events.every_slide(target);
        assert_eq!(stops, [4_000, 5_000, 6_000, 7_000, 8_000]);
        let mut seen = Vec::new();
        for stop in stops {
            events.advance_to(stop, &mut window);
            seen.push(window.requests());
        }
        assert_eq!(
            seen,
            [2, 4, 6, 8, 10],
            "each slide holds the panes before it"
        );
    }

    #[test]
    fn a_long_replay_is_published_in_sampled_steps_and_a_jump_past_the_window_starts_afresh() {
        let mut events = EventPanes::new(S, S, 5 * S, 10 * S);
        let mut window = Window::new(10);
        events.absorb(
            batch(&[(0, 1, 1)], &[Some(0)]),
            &[],
            &mut window,
            Instant::now(),
        );
        events.advance_to(1_000, &mut window);
        let steps = events.steps(101_000);
        assert!(steps.len() <= REPLAY_SNAPSHOTS_PER_BATCH + 1, "{steps:?}");
        assert_eq!(steps.last(), Some(&101_000));
        assert!(steps.windows(2).all(|w| w[0] < w[1]));
        // Rules see every slide of a way within the kept history (10 s);
        // a longer one starts afresh where records may still join (the
        // lateness, 5 s, before its end: nothing is counted ahead).
        let every = events.every_slide(10_000);
        assert_eq!(every, (2..=10).map(|s| s * 1_000).collect::<Vec<i64>>());
        assert!(events.steps(10_000).len() < every.len());
        assert_eq!(
            events.every_slide(101_000),
            (97..=101).map(|s| s * 1_000).collect::<Vec<i64>>()
        );
        events.absorb(
            batch(&[(100, 2, 1)], &[Some(100_000)]),
            &[],
            &mut window,
            Instant::now(),
        );
        events.advance_to(101_000, &mut window);
        assert_eq!(window.requests(), 1, "the old pane left, the new one came");
        assert_eq!(
            window.panes().len(),
            5,
            "a fresh window starts where records may still join: the lateness before its end"
        );
        assert_eq!(
            window.panes().last().map(|p| epoch_ms(p.end)),
            Some(101_000)
        );
    }
}
