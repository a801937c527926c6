//! Panes, running totals and top-N: pure, synchronous, time passed in.
//!
//! A pane holds the counts of one batch and is immutable once closed; the
//! window is a ring of the last `window / batch` panes plus running totals,
//! updated by adding the closing pane and subtracting the evicted one — never
//! recomputed from all panes.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap;

pub mod budget;
pub mod counts;
pub mod distinct;
pub mod owners;
pub mod pane;
pub mod summary;
pub mod table;

use crate::owners::Attributor;
use crate::vocab::{IpKey, SkipCounts};
pub use counts::{DistinctCount, PaneCounts};
use distinct::Distinct;
pub use owners::PaneOwners;
pub use pane::{OffsetRange, Pane};
pub use table::IpMap;

/// Counts at or above this share one histogram bucket.
const HISTOGRAM_BUCKETS: usize = 1024;

/// Window totals per IP: `u32` counts (8 bytes per IPv4 entry), with the
/// rare address whose window total outgrows a `u32` moved to `big`. An IP is
/// in one of the two maps, never both. A histogram of the totals, kept as
/// they change, tells [`Window::top`] which counts can make the top `k`
/// without sorting every address.
#[derive(Debug)]
struct RunningCounts {
    small: IpMap<u32>,
    big: FxHashMap<IpKey, u64>,
    /// `histogram[c]`: IPs whose total is `c` (the last bucket: or more).
    histogram: Box<[usize; HISTOGRAM_BUCKETS + 1]>,
}

impl Default for RunningCounts {
    fn default() -> Self {
        RunningCounts {
            small: IpMap::default(),
            big: FxHashMap::default(),
            histogram: Box::new([0; HISTOGRAM_BUCKETS + 1]),
        }
    }
}

fn bucket(total: u64) -> usize {
    total.min(HISTOGRAM_BUCKETS as u64) as usize
}

/// Adds `n` to a `u32` count; `Err(old)` when the sum overflows, in which
/// case the entry is removed.
fn add_small<K: Hash + Eq>(map: &mut FxHashMap<K, u32>, key: K, n: u32) -> Result<u32, u32> {
    match map.entry(key) {
        Entry::Occupied(mut e) => {
            let old = *e.get();
            match old.checked_add(n) {
                Some(sum) => {
                    *e.get_mut() = sum;
                    Ok(old)
                }
                None => {
                    e.remove();
                    Err(old)
                }
            }
        }
        Entry::Vacant(e) => {
            e.insert(n);
            Ok(0)
        }
    }
}

/// Takes `n` from a `u32` count, removing it at zero; returns the old count.
fn subtract_small<K: Hash + Eq>(map: &mut FxHashMap<K, u32>, key: K, n: u32) -> u64 {
    match map.entry(key) {
        Entry::Occupied(mut e) => {
            let old = *e.get();
            if old > n {
                *e.get_mut() = old - n;
            } else {
                e.remove();
            }
            u64::from(old)
        }
        Entry::Vacant(_) => 0,
    }
}

impl RunningCounts {
    /// Bytes the running counts take (their tables as allocated).
    fn bytes(&self) -> usize {
        let big = self.big.capacity() * (std::mem::size_of::<(IpKey, u64)>() + 1);
        self.small.bytes() + big + std::mem::size_of_val(&*self.histogram)
    }

    fn add(&mut self, ip: IpKey, n: u32) {
        let old = if let Some(total) = self.big.get_mut(&ip) {
            *total += u64::from(n);
            *total - u64::from(n)
        } else {
            let added = match ip.v4_bits() {
                Some(a) => add_small(&mut self.small.v4, a, n),
                None => add_small(&mut self.small.v6, ip.to_bits(), n),
            };
            match added {
                Ok(old) => u64::from(old),
                Err(old) => {
                    self.big.insert(ip, u64::from(old) + u64::from(n));
                    u64::from(old)
                }
            }
        };
        self.moved(old, old + u64::from(n));
    }

    fn subtract(&mut self, ip: IpKey, n: u32) {
        let old = if let Entry::Occupied(mut e) = self.big.entry(ip) {
            let old = *e.get();
            *e.get_mut() -= u64::from(n);
            if let Ok(small) = u32::try_from(*e.get()) {
                e.remove();
                if small > 0 {
                    self.small.insert(ip, small);
                }
            }
            old
        } else {
            match ip.v4_bits() {
                Some(a) => subtract_small(&mut self.small.v4, a, n),
                None => subtract_small(&mut self.small.v6, ip.to_bits(), n),
            }
        };
        if old > 0 {
            self.moved(old, old.saturating_sub(u64::from(n)));
        }
    }

    fn moved(&mut self, old: u64, new: u64) {
        if old > 0 {
            self.histogram[bucket(old)] -= 1;
        }
        if new > 0 {
            self.histogram[bucket(new)] += 1;
        }
    }

    #[cfg(test)]
    fn get(&self, ip: IpKey) -> u64 {
        match self.big.get(&ip) {
            Some(&n) => n,
            None => u64::from(self.small.get(ip).unwrap_or(0)),
        }
    }

    fn len(&self) -> usize {
        self.small.len() + self.big.len()
    }

    fn iter(&self) -> impl Iterator<Item = (IpKey, u64)> + '_ {
        let small = self.small.iter().map(|(ip, n)| (ip, u64::from(n)));
        small.chain(self.big.iter().map(|(&ip, &n)| (ip, n)))
    }

    /// The smallest total that at least `k` IPs reach (1 when fewer than `k`
    /// IPs are counted): every IP of the top `k` counts at least this much.
    fn threshold(&self, k: usize) -> u64 {
        let mut at_least = 0;
        for total in (1..=HISTOGRAM_BUCKETS).rev() {
            at_least += self.histogram[total];
            if at_least >= k {
                return total as u64;
            }
        }
        1
    }
}

/// The most frequent IPs, count descending then IP ascending, as a snapshot
/// holds them: the first `sorted` entries in order, the rest (up to the
/// capacity asked for) below them in no particular order, sorted only when a
/// caller asks for that many.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopList {
    entries: Vec<(IpKey, u64)>,
    sorted: usize,
}

fn rank(a: &(IpKey, u64), b: &(IpKey, u64)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The best `k` of `entries` in order: count descending, then IP ascending.
pub fn top_k(mut entries: Vec<(IpKey, u64)>, k: usize) -> Vec<(IpKey, u64)> {
    if k < entries.len() {
        entries.select_nth_unstable_by(k, rank);
        entries.truncate(k);
    }
    entries.sort_unstable_by(rank);
    entries
}

impl TopList {
    /// A list sorted throughout (small lists, tests).
    pub fn from_sorted(entries: Vec<(IpKey, u64)>) -> Self {
        let sorted = entries.len();
        TopList { entries, sorted }
    }

    /// The first `n` (at most as many as the list holds), in order.
    pub fn first(&self, n: usize) -> Cow<'_, [(IpKey, u64)]> {
        let n = n.min(self.entries.len());
        if n <= self.sorted {
            return Cow::Borrowed(&self.entries[..n]);
        }
        Cow::Owned(top_k(self.entries.clone(), n))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The sliding window: a ring of panes and their running totals, and the
/// panes that slid out but are kept for questions about older ranges
/// (`--retention`).
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    panes: VecDeque<Arc<Pane>>,
    /// Panes older than the window, oldest first, at most `retain` of them.
    retained: VecDeque<Arc<Pane>>,
    retain: usize,
    totals: RunningCounts,
    requests: u64,
    /// Bytes the counts of the panes in the window and the kept older ones
    /// take, kept as panes come and go.
    pane_bytes: usize,
    /// Kept panes (in the window and older) that are summarized.
    summarized: usize,
    /// Scratch space of [`Window::top_list`].
    candidates: Vec<(IpKey, u64)>,
    /// Looks up who is behind each pane's addresses as it enters.
    owners: Option<Attributor>,
}

impl Window {
    /// A window holding `capacity` panes (`window / batch`).
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a window holds at least one pane");
        Window {
            capacity,
            panes: VecDeque::with_capacity(capacity + 1),
            retained: VecDeque::new(),
            retain: 0,
            totals: RunningCounts::default(),
            candidates: Vec::new(),
            requests: 0,
            pane_bytes: 0,
            summarized: 0,
            owners: None,
        }
    }

    /// Gives each pane that enters its owners (`--asn-db`, `--country-db`).
    pub fn with_owners(mut self, owners: Option<Attributor>) -> Self {
        self.owners = owners;
        self
    }

    /// `pane` with its owners looked up, each distinct address once; as it
    /// is without the databases.
    fn attributed(&mut self, mut pane: Arc<Pane>) -> Arc<Pane> {
        let Some(attributor) = self.owners.as_mut() else {
            return pane;
        };
        if pane.owners.is_none() {
            attributor.refresh();
            let owners = PaneOwners::of(&pane.counts, |ip| attributor.owner(ip));
            Arc::make_mut(&mut pane).owners = Some(Arc::new(owners));
        }
        pane
    }

    /// Keeps `panes` more panes after they slide out of the window.
    pub fn with_retained(mut self, panes: usize) -> Self {
        self.retain = panes;
        self
    }

    /// Panes older than the window that are still kept, oldest first.
    pub fn retained(&self) -> impl ExactSizeIterator<Item = &Arc<Pane>> + DoubleEndedIterator {
        self.retained.iter()
    }

    /// Empties the window (its panes join the kept older ones): the data
    /// jumped further ahead than the window is long.
    pub fn restart(&mut self) {
        let panes = std::mem::take(&mut self.panes);
        for pane in panes {
            self.keep(pane);
        }
        self.totals = RunningCounts::default();
        self.requests = 0;
    }

    fn keep(&mut self, pane: Arc<Pane>) {
        if self.retain == 0 {
            self.forget(&pane);
            return;
        }
        self.retained.push_back(pane);
        while self.retained.len() > self.retain {
            if let Some(gone) = self.retained.pop_front() {
                self.forget(&gone);
            }
        }
    }

    /// A pane is no longer kept: its bytes are not the state's.
    fn forget(&mut self, pane: &Pane) {
        self.pane_bytes -= pane.bytes();
        self.summarized -= usize::from(!pane.counts.is_exact());
    }

    /// Kept panes (in the window and older) that are summarized.
    pub fn summarized_panes(&self) -> usize {
        self.summarized
    }

    /// Bytes the counting state takes: the counts of every pane kept (in
    /// the window and older) and the window's running counts.
    pub fn bytes(&self) -> usize {
        self.pane_bytes + self.totals.bytes()
    }

    /// Adds a closed pane; returns the pane that slid out, if any (it is
    /// kept among the older panes while they are fewer than asked for).
    pub fn push(&mut self, pane: Arc<Pane>) -> Option<Arc<Pane>> {
        let pane = self.attributed(pane);
        for (ip, n) in pane.counts.iter() {
            self.totals.add(ip, n);
        }
        self.requests += pane.requests;
        self.pane_bytes += pane.bytes();
        self.summarized += usize::from(!pane.counts.is_exact());
        self.panes.push_back(pane);
        if self.panes.len() <= self.capacity {
            return None;
        }
        let evicted = self.panes.pop_front()?;
        for (ip, n) in evicted.counts.iter() {
            self.totals.subtract(ip, n);
        }
        self.requests -= evicted.requests;
        // Give memory back after a burst of distinct addresses has passed.
        if self.totals.small.capacity() > 4 * self.totals.small.len().max(1024) {
            self.totals.small.shrink_to_fit();
        }
        self.keep(evicted.clone());
        Some(evicted)
    }

    /// Summarizes the panes holding the most (keys' bytes) until the state
    /// fits `budget` bytes or every kept pane is summarized to `capacity`
    /// keys a level; returns how many panes were summarized. The running
    /// counts lose what the summarized panes no longer list.
    pub fn fold(&mut self, budget: usize, capacity: usize) -> usize {
        let mut folded = 0;
        while self.bytes() > budget {
            let foldable = |p: &Arc<Pane>| {
                p.counts.summary().is_none_or(|s| s.capacity > capacity)
                    && p.counts.len() > capacity
            };
            let largest = self
                .panes
                .iter()
                .map(|p| (p, true))
                .chain(self.retained.iter().map(|p| (p, false)))
                .enumerate()
                .filter(|(_, (p, _))| foldable(p))
                .max_by_key(|(_, (p, _))| p.counts.bytes())
                .map(|(i, (_, in_window))| (i, in_window));
            let Some((at, in_window)) = largest else {
                break;
            };
            let slot = if in_window {
                &mut self.panes[at]
            } else {
                &mut self.retained[at - self.panes.len()]
            };
            let summarized = Arc::new(Pane {
                seq: slot.seq,
                start: slot.start,
                end: slot.end,
                counts: slot.counts.summarized(capacity),
                requests: slot.requests,
                skipped: slot.skipped,
                ranges: slot.ranges.clone(),
                owners: None,
            });
            let old = std::mem::replace(slot, summarized.clone());
            self.pane_bytes = self.pane_bytes - old.bytes() + summarized.bytes();
            self.summarized += usize::from(old.counts.is_exact());
            if in_window {
                let totals = &mut self.totals;
                old.counts
                    .for_each_change(&summarized.counts, |ip, before, after| {
                        totals.subtract(ip, before - after.min(before));
                    });
            }
            folded += 1;
        }
        if folded > 0 {
            self.totals.small.shrink_to_fit();
        }
        folded
    }

    /// Adds records to the pane of the window that starts where `more` does
    /// (event time: a pane still open to records within the lateness): the
    /// pane is replaced by [`Pane::merged`] and the totals grow by `more`.
    /// Gives `more` back when no pane of the window starts there.
    pub fn add_to(&mut self, more: Pane) -> Result<(), Box<Pane>> {
        let Some(at) = self.panes.iter().position(|p| p.start == more.start) else {
            return Err(Box::new(more));
        };
        for (ip, n) in more.counts.iter() {
            self.totals.add(ip, n);
        }
        self.requests += more.requests;
        let merged = self.attributed(Arc::new(self.panes[at].merged(more)));
        self.pane_bytes = self.pane_bytes - self.panes[at].bytes() + merged.bytes();
        self.summarized = self.summarized + usize::from(!merged.counts.is_exact())
            - usize::from(!self.panes[at].counts.is_exact());
        self.panes[at] = merged;
        Ok(())
    }

    /// Continues from a checkpoint's panes (the newest that fit). Batches
    /// missed while ipstats was down, up to `now`, become empty panes, so
    /// that the window still spans wall-clock time. Returns the number of the
    /// next pane.
    pub fn restore(
        &mut self,
        panes: Vec<Arc<Pane>>,
        mut next_seq: u64,
        batch: Duration,
        now: SystemTime,
    ) -> u64 {
        let skip = panes.len().saturating_sub(self.capacity + self.retain);
        for pane in panes.into_iter().skip(skip) {
            self.push(pane);
        }
        let Some(mut end) = self.panes.back().map(|p| p.end) else {
            return next_seq;
        };
        let mut missed = 0;
        while missed < self.capacity && end + batch <= now {
            self.push(Arc::new(Pane {
                seq: next_seq,
                start: end,
                end: end + batch,
                counts: PaneCounts::default(),
                requests: 0,
                skipped: SkipCounts::default(),
                ranges: Vec::new(),
                owners: None,
            }));
            next_seq += 1;
            end += batch;
            missed += 1;
        }
        next_seq
    }

    pub fn requests(&self) -> u64 {
        self.requests
    }

    pub fn distinct_ips(&self) -> usize {
        self.totals.len()
    }

    /// The most any address's window count may lack: the sum of the error
    /// bounds of the summarized panes in the window (0 when all are exact).
    pub fn error_bound(&self) -> u64 {
        self.panes.iter().map(|p| p.counts.error_bound()).sum()
    }

    /// Distinct addresses in the window: exact while every pane is, else
    /// estimated from the summarized panes' sketches and the addresses the
    /// running counts hold.
    pub fn distinct(&self) -> DistinctCount {
        if self.panes.iter().all(|p| p.counts.is_exact()) {
            return DistinctCount {
                count: self.totals.len() as u64,
                estimated: false,
            };
        }
        let mut sketch = Distinct::default();
        for pane in self.panes.iter().filter(|p| !p.counts.is_exact()) {
            pane.counts.add_distinct_to(&mut sketch);
        }
        for (ip, _) in self.totals.small.iter() {
            sketch.add(ip);
        }
        for ip in self.totals.big.keys() {
            sketch.add(*ip);
        }
        DistinctCount {
            count: sketch.estimate().max(self.totals.len() as u64),
            estimated: true,
        }
    }

    /// One IP's window total (tests: HTTP answers from the panes).
    #[cfg(test)]
    pub fn count(&self, ip: IpKey) -> u64 {
        self.totals.get(ip)
    }

    pub fn panes(&self) -> impl ExactSizeIterator<Item = &Arc<Pane>> {
        self.panes.iter()
    }

    /// The `k` most frequent IPs: count descending, then IP ascending.
    #[cfg(test)]
    pub fn top(&mut self, k: usize) -> Vec<(IpKey, u64)> {
        self.top_list(k, k).entries
    }

    /// The `k` most frequent IPs with the first `sorted` of them in order.
    /// One pass over the totals that copies only the IPs the histogram says
    /// can make the cut, then a selection: no allocation or sort in
    /// proportion to all distinct IPs.
    pub fn top_list(&mut self, k: usize, sorted: usize) -> TopList {
        if k == 0 {
            return TopList::default();
        }
        let threshold = self.totals.threshold(k);
        // Candidates go to a buffer kept between calls, cut back to the best
        // `k` whenever it is full (ties at the threshold can be many), so it
        // never outgrows its limit; the list itself is allocated at its size.
        let candidates = &mut self.candidates;
        candidates.clear();
        // Cut back at one and a half times `k`: at `k` = 100,000 the buffer
        // takes 4.8 MB, allocated once at its size (pushing would double it
        // past the limit).
        let limit = k.max(1024) + k.max(1024) / 2;
        candidates.reserve_exact(limit);
        for entry in self.totals.iter().filter(|&(_, n)| n >= threshold) {
            if candidates.len() == limit {
                candidates.select_nth_unstable_by(k, rank);
                candidates.truncate(k);
            }
            candidates.push(entry);
        }
        if k < candidates.len() {
            candidates.select_nth_unstable_by(k, rank);
            candidates.truncate(k);
        }
        let mut picked = candidates.clone();
        let sorted = sorted.min(picked.len());
        if sorted < picked.len() && sorted > 0 {
            picked.select_nth_unstable_by(sorted, rank);
        }
        picked[..sorted].sort_unstable_by(rank);
        TopList {
            entries: picked,
            sorted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::parse_ip;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn pane(seq: u64, ips: &[u8]) -> Arc<Pane> {
        let mut counts = IpMap::default();
        for &i in ips {
            let ip = parse_ip(&format!("10.0.0.{i}")).expect("address");
            counts.add(ip, 1);
        }
        pane_of(seq, &counts)
    }

    fn pane_of(seq: u64, counts: &IpMap<u32>) -> Arc<Pane> {
        Arc::new(Pane {
            owners: None,
            seq,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            counts: counts.into(),
            requests: counts.values().map(u64::from).sum(),
            skipped: SkipCounts::default(),
            ranges: Vec::new(),
        })
    }

    proptest! {
        #[test]
        fn the_state_size_kept_as_panes_come_and_go_is_the_size_of_what_is_kept(
            panes in prop::collection::vec(prop::collection::vec(0u8..50, 0..40), 1..30),
            capacity in 1usize..5,
            retain in 0usize..5,
            restart_at in 0usize..40,
        ) {
            let mut w = Window::new(capacity).with_retained(retain);
            for (seq, ips) in panes.iter().enumerate() {
                w.push(pane(seq as u64, ips));
                if seq == restart_at {
                    w.restart();
                }
                if seq % 3 == 0 {
                    // A pane of the window receives more records (event time).
                    let _ = w.add_to(Pane::clone(&pane(seq as u64, &ips[..ips.len() / 2])));
                }
                let kept: usize = w.panes().chain(w.retained()).map(|p| p.counts.bytes()).sum();
                prop_assert_eq!(w.bytes(), kept + w.totals.bytes());
                let summarized = w.panes().chain(w.retained()).filter(|p| !p.counts.is_exact()).count();
                prop_assert_eq!(w.summarized_panes(), summarized);
            }
        }
    }

    proptest! {
        #[test]
        fn folding_to_a_budget_keeps_every_window_count_within_its_bounds(
            panes in prop::collection::vec(prop::collection::vec(0u16..3000, 0..600), 1..12),
            capacity in 2usize..40,
            budget in 0usize..40_000,
        ) {
            let mut w = Window::new(4).with_retained(3);
            for (seq, keys) in panes.iter().enumerate() {
                let mut counts = IpMap::default();
                for k in keys {
                    counts.add(IpKey::from_bits((0x2001_0db8u128 << 96) | u128::from(*k)), 1);
                }
                w.push(pane_of(seq as u64, &counts));
                w.fold(budget, capacity);
                let summarized = w.panes().chain(w.retained()).filter(|p| !p.counts.is_exact()).count();
                prop_assert_eq!(w.summarized_panes(), summarized);
                let summarizable = w.panes().chain(w.retained()).any(|p| {
                    p.counts.len() > capacity && p.counts.summary().is_none_or(|s| s.capacity > capacity)
                });
                prop_assert!(w.bytes() <= budget || !summarizable, "over budget with panes left to fold");
                // The running counts are the panes' lower bounds, and every
                // true count lies within the window's bound of them.
                let mut truth: HashMap<IpKey, u64> = HashMap::new();
                let mut lowers: HashMap<IpKey, u64> = HashMap::new();
                let first = panes.len().min(seq + 1).saturating_sub(4);
                for keys in &panes[first..=seq] {
                    for k in keys {
                        *truth.entry(IpKey::from_bits((0x2001_0db8u128 << 96) | u128::from(*k))).or_insert(0) += 1;
                    }
                }
                for p in w.panes() {
                    for (ip, n) in p.counts.iter() {
                        *lowers.entry(ip).or_insert(0) += u64::from(n);
                    }
                }
                for (ip, n) in &truth {
                    let lower = w.count(*ip);
                    prop_assert_eq!(lower, lowers.get(ip).copied().unwrap_or(0));
                    prop_assert!(lower <= *n && *n <= lower + w.error_bound(), "{ip}: {n}, {lower} + {}", w.error_bound());
                }
                let d = w.distinct();
                prop_assert_eq!(d.estimated, w.panes().any(|p| !p.counts.is_exact()));
                if !d.estimated {
                    prop_assert_eq!(d.count as usize, truth.len());
                }
            }
        }
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
    fn a_restored_window_fills_the_batches_missed_while_down_with_empty_panes() {
        let second = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let restored: Vec<Arc<Pane>> = (0..4u64)
            .map(|seq| {
                let mut p = Pane::clone(&pane(seq, &[1, 2]));
                (p.start, p.end) = (second(seq), second(seq + 1));
                Arc::new(p)
            })
            .collect();
        // Three panes fit; down from second 4 to 6.5: two batches missed.
        let mut w = Window::new(3);
        let next = w.restore(
            restored,
            4,
            Duration::from_secs(1),
            second(6) + Duration::from_millis(500),
        );
        assert_eq!(next, 6);
        let seqs: Vec<u64> = w.panes().map(|p| p.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(
            (w.requests(), w.panes().last().map(|p| p.end)),
            (2, Some(second(6)))
        );
        // Down longer than the window: never more empty panes than it holds.
        let mut w = Window::new(3);
        let next = w.restore(vec![pane(0, &[1])], 1, Duration::from_secs(1), second(3600));
        assert_eq!((next, w.requests(), w.panes().len()), (4, 0, 3));
        // Nothing restored: nothing to fill.
        assert_eq!(
            Window::new(3).restore(Vec::new(), 9, Duration::from_secs(1), second(99)),
            9
        );
    }

    #[test]
    fn ties_break_by_ip_ascending() {
        let mut w = Window::new(1);
        w.push(pane(0, &[9, 3, 3, 5, 9, 7]));
        let top: Vec<String> = w.top(3).iter().map(|(ip, n)| format!("{ip}={n}")).collect();
        assert_eq!(top, ["10.0.0.3=2", "10.0.0.9=2", "10.0.0.5=1"]);
    }

    #[test]
    fn a_window_total_beyond_u32_is_exact_and_moves_back_when_it_shrinks() {
        let ip = parse_ip("10.0.0.1").expect("address");
        let other = parse_ip("2001:db8::1").expect("address");
        let mut totals = RunningCounts::default();
        totals.add(ip, u32::MAX);
        totals.add(other, 3);
        totals.add(ip, 5);
        assert_eq!(totals.get(ip), u64::from(u32::MAX) + 5);
        assert_eq!((totals.len(), totals.big.len()), (2, 1));
        totals.subtract(ip, 10);
        assert_eq!(totals.get(ip), u64::from(u32::MAX) - 5);
        assert_eq!((totals.len(), totals.big.len()), (2, 0));
        totals.subtract(ip, u32::MAX - 5);
        totals.subtract(other, 3);
        assert_eq!((totals.get(ip), totals.len()), (0, 0));
    }

    #[test]
    fn top_is_exact_when_counts_pass_the_histogram_range() {
        // Counts from 1 to 3000: the histogram's last bucket holds ~2000 IPs.
        let mut w = Window::new(1);
        let mut counts = IpMap::default();
        for i in 1..=3000u32 {
            counts.insert(IpKey::from_v4_bits(i), i);
        }
        w.push(pane_of(0, &counts));
        for k in [1, 10, 1500, 2999, 3000, 5000] {
            let top = w.top(k);
            let expected: Vec<(IpKey, u64)> = (1..=3000u32)
                .rev()
                .take(k)
                .map(|i| (IpKey::from_v4_bits(i), u64::from(i)))
                .collect();
            assert_eq!(top, expected, "k = {k}");
        }
    }

    #[test]
    fn top_stays_exact_when_ties_at_the_threshold_outnumber_its_buffer() {
        // 5000 IPs tied at 1 and k = 10: the candidate buffer is cut back
        // to the best k twice; the 10 lowest addresses must survive the cuts.
        let mut counts = IpMap::default();
        for i in (1..=5000u32).rev() {
            counts.insert(IpKey::from_v4_bits(i * 7919 % 100_003), 1);
        }
        let mut w = Window::new(1);
        w.push(pane_of(0, &counts));
        let mut all: Vec<(IpKey, u64)> = counts.iter().map(|(ip, n)| (ip, u64::from(n))).collect();
        all.sort();
        assert_eq!(w.top(10), all[..10]);
    }

    proptest! {
        #[test]
        fn totals_equal_the_panes_inside_and_top_is_sorted_and_bounded(
            batches in prop::collection::vec(prop::collection::vec(0u8..20, 0..30), 1..25),
            capacity in 1usize..6,
            k in 0usize..25,
            sorted in 0usize..25,
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
            prop_assert_eq!(&top, &brute);
            // A list with only a prefix sorted answers every length alike.
            let list = w.top_list(k, sorted);
            prop_assert_eq!(list.len(), brute.len());
            for n in [0, sorted / 2, sorted, k / 2 + 1, k] {
                let n = n.min(brute.len());
                prop_assert_eq!(&*list.first(n), &brute[..n]);
            }
        }
    }
}
