//! Panes, running totals and top-N: pure, synchronous, time passed in.
//!
//! A pane holds the counts of one batch and is immutable once closed; the
//! window is a ring of the last `window / batch` panes plus running totals,
//! updated by adding the closing pane and subtracting the evicted one — never
//! recomputed from all panes.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::SystemTime;

use rustc_hash::FxHashMap;

use crate::parse::{IpKey, SkipCounts};

/// Per-IP counters keyed by the compact address.
pub type IpMap<V> = FxHashMap<IpKey, V>;

/// The offsets one pane covered in one partition: `[from, until)`, as Spark's `OffsetRange`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetRange {
    pub topic: Arc<str>,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
}

/// The counts of one closed batch.
#[derive(Clone, Debug)]
pub struct Pane {
    /// Batch number since the service started.
    pub seq: u64,
    pub start: SystemTime,
    pub end: SystemTime,
    pub counts: IpMap<u32>,
    /// Records counted (parsed to an IP) in this pane.
    pub requests: u64,
    pub skipped: SkipCounts,
    /// One range per assigned partition, empty ranges included.
    pub ranges: Vec<OffsetRange>,
}

impl Pane {
    pub fn count(&self, ip: IpKey) -> u32 {
        self.counts.get(&ip).copied().unwrap_or(0)
    }
}

/// The sliding window: a ring of panes and their running totals.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    panes: VecDeque<Arc<Pane>>,
    totals: IpMap<u64>,
    requests: u64,
}

impl Window {
    /// A window holding `capacity` panes (`window / batch`).
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a window holds at least one pane");
        Window {
            capacity,
            panes: VecDeque::with_capacity(capacity + 1),
            totals: IpMap::default(),
            requests: 0,
        }
    }

    /// Adds a closed pane; returns the pane that slid out, if any.
    pub fn push(&mut self, pane: Arc<Pane>) -> Option<Arc<Pane>> {
        self.totals.reserve(pane.counts.len());
        for (&ip, &n) in &pane.counts {
            *self.totals.entry(ip).or_insert(0) += u64::from(n);
        }
        self.requests += pane.requests;
        self.panes.push_back(pane);
        if self.panes.len() <= self.capacity {
            return None;
        }
        let evicted = self.panes.pop_front()?;
        for (&ip, &n) in &evicted.counts {
            if let Entry::Occupied(mut e) = self.totals.entry(ip) {
                *e.get_mut() -= u64::from(n);
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        self.requests -= evicted.requests;
        // Give memory back after a burst of distinct addresses has passed.
        if self.totals.capacity() > 4 * self.totals.len().max(1024) {
            self.totals.shrink_to(2 * self.totals.len());
        }
        Some(evicted)
    }

    pub fn requests(&self) -> u64 {
        self.requests
    }

    pub fn distinct_ips(&self) -> usize {
        self.totals.len()
    }

    pub fn count(&self, ip: IpKey) -> u64 {
        self.totals.get(&ip).copied().unwrap_or(0)
    }

    pub fn panes(&self) -> impl ExactSizeIterator<Item = &Arc<Pane>> {
        self.panes.iter()
    }

    /// The `k` most frequent IPs: count descending, then IP ascending.
    /// Costs O(distinct + k log k).
    pub fn top(&self, k: usize) -> Vec<(IpKey, u64)> {
        let mut all: Vec<(IpKey, u64)> = self.totals.iter().map(|(&ip, &n)| (ip, n)).collect();
        let order = |a: &(IpKey, u64), b: &(IpKey, u64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        if k < all.len() {
            all.select_nth_unstable_by(k, order);
            all.truncate(k);
        }
        all.sort_unstable_by(order);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_ip;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn pane(seq: u64, ips: &[u8]) -> Arc<Pane> {
        let mut counts = IpMap::default();
        for &i in ips {
            let ip = parse_ip(&format!("10.0.0.{i}")).expect("address");
            *counts.entry(ip).or_insert(0) += 1;
        }
        Arc::new(Pane {
            seq,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            counts,
            requests: ips.len() as u64,
            skipped: SkipCounts::default(),
            ranges: Vec::new(),
        })
    }

    #[test]
    fn evicts_the_oldest_pane_and_forgets_ips_that_left() {
        let mut w = Window::new(2);
        assert!(w.push(pane(0, &[1, 1, 2])).is_none());
        assert!(w.push(pane(1, &[2])).is_none());
        assert_eq!((w.requests(), w.distinct_ips()), (4, 2));
        let evicted = w.push(pane(2, &[3])).expect("first pane slides out");
        assert_eq!(evicted.seq, 0);
        assert_eq!((w.requests(), w.distinct_ips()), (2, 2));
        assert_eq!(w.count(parse_ip("10.0.0.1").expect("ip")), 0);
    }

    #[test]
    fn ties_break_by_ip_ascending() {
        let mut w = Window::new(1);
        w.push(pane(0, &[9, 3, 3, 5, 9, 7]));
        let top: Vec<String> = w.top(3).iter().map(|(ip, n)| format!("{ip}={n}")).collect();
        assert_eq!(top, ["10.0.0.3=2", "10.0.0.9=2", "10.0.0.5=1"]);
    }

    proptest! {
        #[test]
        fn totals_equal_the_panes_inside_and_top_is_sorted_and_bounded(
            batches in prop::collection::vec(prop::collection::vec(0u8..20, 0..30), 1..25),
            capacity in 1usize..6,
            k in 0usize..25,
        ) {
            let mut w = Window::new(capacity);
            for (seq, ips) in batches.iter().enumerate() {
                w.push(pane(seq as u64, ips));
            }
            let inside = &batches[batches.len().saturating_sub(capacity)..];
            let mut expected: HashMap<IpKey, u64> = HashMap::new();
            for ips in inside {
                for &i in ips {
                    *expected.entry(parse_ip(&format!("10.0.0.{i}")).expect("ip")).or_insert(0) += 1;
                }
            }
            prop_assert_eq!(w.requests(), inside.iter().map(|b| b.len() as u64).sum::<u64>());
            prop_assert_eq!(w.distinct_ips(), expected.len());
            for (ip, n) in &expected {
                prop_assert_eq!(w.count(*ip), *n);
            }
            let top = w.top(k);
            prop_assert_eq!(top.len(), k.min(expected.len()));
            for pair in top.windows(2) {
                prop_assert!(pair[0].1 > pair[1].1 || (pair[0].1 == pair[1].1 && pair[0].0 < pair[1].0));
            }
            let mut brute: Vec<(IpKey, u64)> = expected.into_iter().collect();
            brute.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            brute.truncate(k);
            prop_assert_eq!(top, brute);
        }
    }
}
