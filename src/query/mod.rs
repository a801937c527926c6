//! Questions asked at query time, answered from the kept panes: any window
//! (a run of whole panes) ending at any kept pane boundary, by address or by
//! network (`prefix4`, `prefix6`), and one network's members. A window is a
//! sum of panes, so an answer merges the panes of its range; nothing here
//! touches ingest's state (the panes are shared and immutable).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap;

use crate::vocab::{IpKey, Network};
use crate::window::{Pane, top_k};

pub mod bounded;
mod cache;
pub mod owners;
pub use cache::MergeCache;

/// A range of whole panes: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: SystemTime,
    pub end: SystemTime,
}

impl Range {
    pub fn ending(end: SystemTime, length: Duration) -> Range {
        Range {
            start: end.checked_sub(length).unwrap_or(SystemTime::UNIX_EPOCH),
            end,
        }
    }

    /// The panes of `kept` (oldest first) inside the range.
    pub fn panes<'a>(&self, kept: &'a [Arc<Pane>]) -> impl Iterator<Item = &'a Arc<Pane>> + Clone {
        let (start, end) = (self.start, self.end);
        kept.iter()
            .filter(move |p| p.start >= start && p.end <= end)
    }
}

/// Counts per address over a range of panes, in address order (IPv4
/// first). Built by merging the panes' sorted lists pairwise, as a merge
/// sort does: linear passes over memory instead of a hash table's random
/// access, which is what makes a window of a million addresses cheap.
#[derive(Debug, Default)]
pub struct Merged {
    /// In order: the lists one after the other (one per thread of the merge).
    v4: Vec<Vec<(u32, u64)>>,
    v6: Vec<Vec<(u128, u64)>>,
}

impl Merged {
    /// Distinct addresses.
    pub fn len(&self) -> usize {
        self.v4.iter().map(Vec::len).sum::<usize>() + self.v6.iter().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests in all.
    pub fn total(&self) -> u64 {
        let v4 = self.v4.iter().flatten().map(|e| e.1).sum::<u64>();
        v4 + self.v6.iter().flatten().map(|e| e.1).sum::<u64>()
    }

    /// In address order, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (IpKey, u64)> + Clone + '_ {
        let v4 = self
            .v4
            .iter()
            .flatten()
            .map(|&(a, n)| (IpKey::from_v4_bits(a), n));
        v4.chain(
            self.v6
                .iter()
                .flatten()
                .map(|&(a, n)| (IpKey::from_bits(a), n)),
        )
    }

    /// The top `n` addresses (count descending, then address): one pass
    /// with a heap of the best `n` so far when `n` is small beside the
    /// list, a selection over the whole list otherwise.
    pub fn top(&self, n: usize) -> Vec<(IpKey, u64)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if n == 0 {
            return Vec::new();
        }
        if n > self.len() / 8 {
            return top_k(self.iter().collect(), n);
        }
        // The heap's top is the weakest kept: the smallest count, and of
        // equal counts the largest address.
        let mut best: BinaryHeap<Reverse<(u64, Reverse<IpKey>)>> = BinaryHeap::with_capacity(n + 1);
        for (ip, count) in self.iter() {
            let entry = Reverse((count, Reverse(ip)));
            if best.len() < n {
                best.push(entry);
            } else if best.peek().is_some_and(|weakest| entry < *weakest) {
                best.pop();
                best.push(entry);
            }
        }
        top_k(
            best.into_iter()
                .map(|Reverse((count, Reverse(ip)))| (ip, count))
                .collect(),
            n,
        )
    }

    /// The `n` networks with the most requests (count descending, then
    /// network ascending), and how many networks there are. Addresses come
    /// in order, so a network's addresses are one run: no table needed, and
    /// no list of every network either: the best candidates are kept in a
    /// buffer of at most twice `n` (at least [`NETWORK_BUFFER`]), cut back
    /// to the best `n` whenever it fills.
    pub fn top_networks(&self, grouping: Grouping, n: usize) -> (Vec<NetworkCount>, usize) {
        let rank = |a: &NetworkCount, b: &NetworkCount| {
            b.count.cmp(&a.count).then(a.network.cmp(&b.network))
        };
        let room = n.saturating_mul(2).max(NETWORK_BUFFER);
        let mut best: Vec<NetworkCount> = Vec::new();
        let mut keep = |network: NetworkCount| {
            if n == 0 {
                return;
            }
            best.push(network);
            if best.len() >= room {
                best.select_nth_unstable_by(n - 1, rank);
                best.truncate(n);
            }
        };
        let mut total = 0;
        let mut current: Option<NetworkCount> = None;
        for (ip, count) in self.iter() {
            let network = Network::of(ip, grouping.prefix4, grouping.prefix6);
            match current.as_mut() {
                Some(c) if c.network == network => {
                    c.count += count;
                    c.distinct_ips += 1;
                }
                _ => {
                    let next = NetworkCount {
                        network,
                        count,
                        distinct_ips: 1,
                    };
                    if let Some(done) = current.replace(next) {
                        total += 1;
                        keep(done);
                    }
                }
            }
        }
        if let Some(done) = current {
            total += 1;
            keep(done);
        }
        if best.len() > n {
            best.select_nth_unstable_by(n, rank);
            best.truncate(n);
        }
        best.sort_unstable_by(rank);
        (best, total)
    }
}

/// The smallest candidate buffer of [`Merged::top_networks`].
const NETWORK_BUFFER: usize = 1024;

/// Counts per address over a range of panes.
pub fn merge<'a>(panes: impl Iterator<Item = &'a Arc<Pane>>) -> Merged {
    let panes: Vec<&Arc<Pane>> = panes.collect();
    let v4 = merge_runs(panes.iter().map(|p| p.counts.v4()).collect(), |&(a, n)| {
        (a, u64::from(n))
    });
    let v6 = merge_runs(panes.iter().map(|p| v6_list(p)).collect(), |&e| e);
    Merged { v4, v6 }
}

/// A pane's IPv6 addresses with their counts, widened (they are kept as
/// two arrays).
fn v6_list(pane: &Pane) -> Vec<(u128, u64)> {
    let (addresses, counts) = pane.counts.v6();
    addresses
        .iter()
        .zip(counts)
        .map(|(&a, &n)| (a, u64::from(n)))
        .collect()
}

/// One network over a range: its requests, its distinct addresses and its
/// top `n` addresses. Only each pane's slice inside the network is read
/// (found by binary search). An IPv6 network never holds IPv4 addresses
/// (even `::/0`): IPv4-mapped addresses are IPv4.
pub fn network_members<'a>(
    panes: impl Iterator<Item = &'a Arc<Pane>>,
    network: Network,
    n: usize,
) -> (u64, u64, Vec<(IpKey, u64)>) {
    let (first, last) = network.bounds();
    let members = if network.is_v4() {
        let (first, last) = (first as u32, last as u32);
        let slices = panes
            .map(|p| {
                let v4 = p.counts.v4();
                let from = v4.partition_point(|e| e.0 < first);
                let to = v4.partition_point(|e| e.0 <= last);
                &v4[from..to]
            })
            .collect();
        Merged {
            v4: merge_runs(slices, |&(a, n)| (a, u64::from(n))),
            v6: Vec::new(),
        }
    } else {
        let slices = panes
            .map(|p| {
                let (addresses, counts) = p.counts.v6();
                let from = addresses.partition_point(|a| *a < first);
                let to = addresses.partition_point(|a| *a <= last);
                addresses[from..to]
                    .iter()
                    .zip(&counts[from..to])
                    .map(|(&a, &n)| (a, u64::from(n)))
                    .collect::<Vec<_>>()
            })
            .collect();
        Merged {
            v4: Vec::new(),
            v6: merge_runs(slices, |&e| e),
        }
    };
    (members.total(), members.len() as u64, members.top(n))
}

/// Entries merged at a time: the merge rounds of one block stay in the
/// processor's cache.
const BLOCK: usize = 16 * 1024;
/// Every `SAMPLE`-th key of each run is a candidate block boundary.
const SAMPLE: usize = 256;

/// Merges of at least this many entries are shared among the cores: each
/// takes a contiguous share of the blocks (a thread costs tens of
/// microseconds; this many entries take milliseconds).
const PARALLEL_FROM: usize = 8 * BLOCK;

/// The threads one merge may use.
fn merge_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

/// Address-sorted runs as one, counts of one address added. The address
/// space is cut into blocks of about [`BLOCK`] entries (boundaries taken
/// from the runs' own keys, so a skewed range cuts as finely as a spread
/// one); each block's slices of the runs are merged in pairs, round after
/// round as a merge sort does, in two small buffers used again for every
/// block. Blocks are independent: a large merge gives each core a
/// contiguous share of them; the shares' lists, in order, are the answer
/// (not copied into one).
fn merge_runs<K, E, R>(
    runs: Vec<R>,
    widen: impl Fn(&E) -> (K, u64) + Copy + Send,
) -> Vec<Vec<(K, u64)>>
where
    K: Ord + Copy + Default + Send + Sync,
    E: Sync,
    R: AsRef<[E]>,
{
    let total: usize = runs.iter().map(|r| r.as_ref().len()).sum();
    let threads = if total >= PARALLEL_FROM {
        merge_threads()
    } else {
        1
    };
    merge_runs_on(runs, widen, threads)
}

/// [`merge_runs`] on at most `threads` threads.
fn merge_runs_on<K, E, R>(
    runs: Vec<R>,
    widen: impl Fn(&E) -> (K, u64) + Copy + Send,
    threads: usize,
) -> Vec<Vec<(K, u64)>>
where
    K: Ord + Copy + Default + Send + Sync,
    E: Sync,
    R: AsRef<[E]>,
{
    let runs: Vec<&[E]> = runs.iter().map(AsRef::as_ref).collect();
    let total: usize = runs.iter().map(|r| r.len()).sum();
    let mut samples: Vec<K> = runs
        .iter()
        .flat_map(|r| r.iter().step_by(SAMPLE).map(|e| widen(e).0))
        .collect();
    samples.sort_unstable();
    let mut bounds: Vec<K> = samples
        .iter()
        .copied()
        .step_by((BLOCK / SAMPLE).max(1))
        .skip(1)
        .collect();
    bounds.dedup();
    let blocks = bounds.len() + 1;
    let parts = threads.min(blocks);
    if parts <= 1 {
        return vec![merge_blocks(&runs, None, &bounds, true, total, widen)];
    }
    // Share `i` merges blocks `i * blocks / parts ..` up to the next
    // share's first; block `j` ends below `bounds[j]` (the last block has
    // no end).
    let (runs, bounds) = (&runs, &bounds);
    std::thread::scope(|scope| {
        let shares: Vec<_> = (0..parts)
            .map(|i| {
                let (first, next) = (i * blocks / parts, (i + 1) * blocks / parts);
                let lower = first.checked_sub(1).map(|j| bounds[j]);
                let to_end = next == blocks;
                let uppers = &bounds[first..next.min(bounds.len())];
                let capacity = total.div_ceil(parts);
                scope.spawn(move || merge_blocks(runs, lower, uppers, to_end, capacity, widen))
            })
            .collect();
        shares
            .into_iter()
            .map(|share| {
                share
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The blocks of `runs` from the first key at or above `lower` (the start
/// if `None`): one ending below each of `uppers`, then, if `to_end`, one to
/// the runs' end. `capacity` is reserved up front.
fn merge_blocks<K: Ord + Copy + Default, E>(
    runs: &[&[E]],
    lower: Option<K>,
    uppers: &[K],
    to_end: bool,
    capacity: usize,
    widen: impl Fn(&E) -> (K, u64) + Copy,
) -> Vec<(K, u64)> {
    // Room for every entry, as if no address repeated: memory never
    // touched costs nothing, and the list is never copied to grow.
    let mut out: Vec<(K, u64)> = Vec::with_capacity(capacity);
    let (mut scratch, mut spare) = (Vec::new(), Vec::new());
    let mut from: Vec<usize> = runs
        .iter()
        .map(|run| lower.map_or(0, |lower| run.partition_point(|e| widen(e).0 < lower)))
        .collect();
    let mut slices: Vec<&[E]> = Vec::with_capacity(runs.len());
    for bound in uppers.iter().map(Some).chain(to_end.then_some(None)) {
        slices.clear();
        for (run, start) in runs.iter().zip(from.iter_mut()) {
            let end = match bound {
                Some(bound) => *start + run[*start..].partition_point(|e| widen(e).0 < *bound),
                None => run.len(),
            };
            slices.push(&run[*start..end]);
            *start = end;
        }
        let len = merge_block(&slices, widen, &mut scratch, &mut spare);
        out.extend_from_slice(&scratch[..len]);
    }
    out
}

/// One block: the slices merged into `merged` (`spare` is scratch); the
/// block's entries are `merged[..returned]`.
fn merge_block<K: Ord + Copy + Default, E>(
    slices: &[&[E]],
    widen: impl Fn(&E) -> (K, u64) + Copy,
    merged: &mut Vec<(K, u64)>,
    spare: &mut Vec<(K, u64)>,
) -> usize {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    if merged.len() < total {
        merged.resize(total, (K::default(), 0));
        spare.resize(total, (K::default(), 0));
    }
    // Where each run of `merged` ends.
    let mut ends = Vec::with_capacity(slices.len().div_ceil(2));
    let mut len = 0;
    for pair in slices.chunks(2) {
        let second: &[E] = pair.get(1).copied().unwrap_or(&[]);
        len += merge_two(pair[0], second, widen, widen, &mut merged[len..]);
        ends.push(len);
    }
    while ends.len() > 1 {
        let mut next_ends = Vec::with_capacity(ends.len().div_ceil(2));
        let (mut start, mut len) = (0, 0);
        for pair in ends.chunks(2) {
            let middle = pair[0];
            let end = pair.get(1).copied().unwrap_or(middle);
            len += merge_two(
                &merged[start..middle],
                &merged[middle..end],
                |&e| e,
                |&e| e,
                &mut spare[len..],
            );
            next_ends.push(len);
            start = end;
        }
        std::mem::swap(merged, spare);
        ends = next_ends;
    }
    ends.last().copied().unwrap_or(0)
}

/// `a` and `b` merged into the front of `out` (long enough for both);
/// returns the entries written. Without branches on the keys (they
/// interleave at random, so a branch would be mispredicted half the time):
/// both sides step when the keys are equal.
fn merge_two<K: Ord + Copy, A, B>(
    a: &[A],
    b: &[B],
    fa: impl Fn(&A) -> (K, u64),
    fb: impl Fn(&B) -> (K, u64),
    out: &mut [(K, u64)],
) -> usize {
    let (mut i, mut j, mut k) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (fa(&a[i]), fb(&b[j]));
        let (take_x, take_y) = (x.0 <= y.0, y.0 <= x.0);
        let key = if take_x { x.0 } else { y.0 };
        let count = if take_x { x.1 } else { 0 } + if take_y { y.1 } else { 0 };
        out[k] = (key, count);
        k += 1;
        i += usize::from(take_x);
        j += usize::from(take_y);
    }
    for e in &a[i..] {
        out[k] = fa(e);
        k += 1;
    }
    for e in &b[j..] {
        out[k] = fb(e);
        k += 1;
    }
    k
}

/// How addresses are grouped: the prefix kept of each family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Grouping {
    pub prefix4: u8,
    pub prefix6: u8,
}

impl Grouping {
    /// Every address its own network.
    pub const ADDRESSES: Grouping = Grouping {
        prefix4: 32,
        prefix6: 128,
    };
}

/// One network's share of a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkCount {
    pub network: Network,
    pub count: u64,
    pub distinct_ips: u64,
}

/// The `n` networks with the most requests (count descending, then network
/// ascending), and how many networks there are, from counts in any order
/// (`ipstats count --prefix4`).
pub fn top_networks(
    counts: impl IntoIterator<Item = (IpKey, u64)>,
    grouping: Grouping,
    n: usize,
) -> (Vec<NetworkCount>, usize) {
    let mut networks: FxHashMap<Network, (u64, u64)> = FxHashMap::default();
    for (ip, count) in counts {
        let entry = networks
            .entry(Network::of(ip, grouping.prefix4, grouping.prefix6))
            .or_insert((0, 0));
        entry.0 += count;
        entry.1 += 1;
    }
    best_networks(networks, n)
}

/// The best `n` of networks' (count, distinct addresses): count descending,
/// then network ascending; and how many networks there are.
pub(crate) fn best_networks(
    networks: FxHashMap<Network, (u64, u64)>,
    n: usize,
) -> (Vec<NetworkCount>, usize) {
    let total = networks.len();
    let mut all: Vec<NetworkCount> = networks
        .into_iter()
        .map(|(network, (count, distinct_ips))| NetworkCount {
            network,
            count,
            distinct_ips,
        })
        .collect();
    let rank =
        |a: &NetworkCount, b: &NetworkCount| b.count.cmp(&a.count).then(a.network.cmp(&b.network));
    if n < all.len() {
        all.select_nth_unstable_by(n, rank);
        all.truncate(n);
    }
    all.sort_unstable_by(rank);
    (all, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::SkipCounts;
    use crate::window::{IpMap, PaneCounts};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    fn pane(index: u64, records: &[(IpKey, u32)]) -> Arc<Pane> {
        let mut counts = IpMap::default();
        for &(ip, n) in records {
            counts.add(ip, n);
        }
        Arc::new(Pane {
            owners: None,
            seq: index,
            start: UNIX_EPOCH + Duration::from_secs(index),
            end: UNIX_EPOCH + Duration::from_secs(index + 1),
            counts: PaneCounts::from(&counts),
            requests: records.iter().map(|(_, n)| u64::from(*n)).sum(),
            skipped: SkipCounts::default(),
            ranges: Vec::new(),
        })
    }

    fn address() -> impl Strategy<Value = IpKey> {
        prop_oneof![
            (0u32..4, 0u32..4, 0u32..8)
                .prop_map(|(a, b, c)| IpKey::from_v4_bits(0xCB00_0000 | a << 16 | b << 8 | c)),
            (0u128..4, 0u128..4).prop_map(|(net, host)| IpKey::from_bits(
                0x2001_0db8_u128 << 96 | net << 64 | host
            )),
        ]
    }

    proptest! {
        /// Ranges asked one after another through the cache (kept ranges
        /// grown, slid, shrunk, with a pane replaced by a fuller one or gone
        /// from the service) count what a merge from scratch counts.
        #[test]
        fn ranges_merged_from_kept_ones_count_as_merged_afresh(
            records in prop::collection::vec(prop::collection::vec((address(), 1u32..5), 0..12), 8),
            asks in prop::collection::vec((0usize..8, 0usize..8, 0u8..4), 1..12),
            always in any::<bool>(),
        ) {
            let mut panes: Vec<Arc<Pane>> =
                records.iter().enumerate().map(|(i, r)| pane(i as u64, r)).collect();
            let cache = MergeCache::default();
            for (a, b, change) in asks {
                let (from, to) = (a.min(b), a.max(b) + 1);
                match change {
                    // Late records joined a pane: a new pane in its place.
                    0 => panes[a] = Arc::new(panes[a].merged((*pane(a as u64, &records[b])).clone())),
                    // The pane left the service and came back as a copy.
                    1 => panes[b] = Arc::new((*panes[b]).clone()),
                    _ => {}
                }
                let range: Vec<&Arc<Pane>> = panes[from..to].iter().collect();
                let got = cache.merge_reusing(range.clone(), always);
                let expected = merge(range.into_iter());
                let got: Vec<(IpKey, u64)> = got.iter().collect();
                let expected: Vec<(IpKey, u64)> = expected.iter().collect();
                prop_assert_eq!(got, expected);
            }
        }
    }

    proptest! {
        #[test]
        fn a_range_answers_as_a_count_from_scratch_for_addresses_and_every_prefix(
            records in prop::collection::vec((0u64..12, address(), 1u32..4), 0..120),
            from in 0u64..12,
            length in 1u64..12,
            prefix4 in 0u8..=32,
            prefix6 in 0u8..=128,
        ) {
            let panes: Vec<Arc<Pane>> = (0..12)
                .map(|i| {
                    let mine: Vec<(IpKey, u32)> = records
                        .iter()
                        .filter(|r| r.0 == i)
                        .map(|r| (r.1, r.2))
                        .collect();
                    pane(i, &mine)
                })
                .collect();
            let range = Range::ending(UNIX_EPOCH + Duration::from_secs(from + length), Duration::from_secs(length));
            let counts = merge(range.panes(&panes));
            // From scratch: every record whose pane lies in the range.
            let mut expected: BTreeMap<IpKey, u64> = BTreeMap::new();
            for &(i, ip, n) in &records {
                if i >= from && i < from + length {
                    *expected.entry(ip).or_insert(0) += u64::from(n);
                }
            }
            let merged: BTreeMap<IpKey, u64> = counts.iter().collect();
            prop_assert_eq!(&merged, &expected);
            prop_assert_eq!(counts.total(), expected.values().sum::<u64>());
            let mut ranked: Vec<(IpKey, u64)> = expected.iter().map(|(&ip, &c)| (ip, c)).collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for n in [0, 1, 3, usize::MAX] {
                let want: Vec<(IpKey, u64)> = ranked.iter().take(n).copied().collect();
                prop_assert_eq!(counts.top(n), want);
            }
            let mut by_network: BTreeMap<Network, (u64, u64)> = BTreeMap::new();
            for (&ip, &c) in &expected {
                let e = by_network.entry(Network::of(ip, prefix4, prefix6)).or_insert((0, 0));
                e.0 += c;
                e.1 += 1;
            }
            let grouping = Grouping { prefix4, prefix6 };
            let (top, total) = counts.top_networks(grouping, usize::MAX);
            prop_assert_eq!(total, by_network.len());
            // The same as from counts in any order (ipstats count).
            prop_assert_eq!(&top_networks(counts.iter(), grouping, usize::MAX), &(top.clone(), total));
            let got: BTreeMap<Network, (u64, u64)> =
                top.iter().map(|t| (t.network, (t.count, t.distinct_ips))).collect();
            prop_assert_eq!(&got, &by_network);
            prop_assert!(top.windows(2).all(|w| w[0].count >= w[1].count));
            for (network, (count, distinct)) in &by_network {
                let (c, d, members) = network_members(range.panes(&panes), *network, 3);
                prop_assert_eq!((c, d), (*count, *distinct));
                prop_assert!(members.iter().all(|(ip, _)| network.contains(*ip)));
                let mine: Vec<(IpKey, u64)> =
                    ranked.iter().filter(|(ip, _)| Network::of(*ip, prefix4, prefix6) == *network).take(3).copied().collect();
                prop_assert_eq!(members, mine);
            }
            // Every address its own network: the per-address answer.
            let (singles, _) = counts.top_networks(Grouping::ADDRESSES, usize::MAX);
            prop_assert_eq!(singles.len(), expected.len());
        }
    }

    #[test]
    fn large_runs_merge_block_by_block_as_one_count() {
        // Many blocks, one run much denser in one range than the others.
        let mut expected: BTreeMap<IpKey, u64> = BTreeMap::new();
        let panes: Vec<Arc<Pane>> = (0..5u32)
            .map(|p| {
                let records: Vec<(IpKey, u32)> = (0..40_000u32)
                    .map(|i| {
                        let ip = if p == 0 {
                            IpKey::from_v4_bits(0x0A00_0000 + i)
                        } else {
                            IpKey::from_v4_bits(i.wrapping_mul(2_654_435_761) ^ p)
                        };
                        (ip, 1 + i % 3)
                    })
                    .chain((0..3000u32).map(|i| {
                        (
                            IpKey::from_bits(0x2001_0db8_u128 << 96 | u128::from(i * (p + 1))),
                            2,
                        )
                    }))
                    .collect();
                for &(ip, n) in &records {
                    *expected.entry(ip).or_insert(0) += u64::from(n);
                }
                pane(u64::from(p), &records)
            })
            .collect();
        let merged = merge(panes.iter());
        assert!(merged.len() > 4 * BLOCK, "several blocks");
        // Shared among any number of threads, the blocks join to one list.
        let runs = || panes.iter().map(|p| p.counts.v4()).collect::<Vec<_>>();
        let one = merge_runs_on(runs(), |&(a, n)| (a, u64::from(n)), 1);
        for threads in 2..=7 {
            let shared = merge_runs_on(runs(), |&(a, n)| (a, u64::from(n)), threads);
            assert_eq!(shared.concat(), one.concat(), "{threads} threads");
        }
        let got: BTreeMap<IpKey, u64> = merged.iter().collect();
        assert_eq!(got, expected);
        let in_order: Vec<IpKey> = merged.iter().map(|e| e.0).collect();
        assert!(
            in_order
                .windows(2)
                .all(|w| (w[0].is_v4() && !w[1].is_v4()) || w[0] < w[1])
        );
    }

    #[test]
    fn networks_print_as_cidr_and_mapped_ipv4_is_ipv4() {
        let v4 = crate::vocab::parse_ip("::ffff:203.0.113.77").expect("mapped");
        assert_eq!(Network::of(v4, 24, 64).to_string(), "203.0.113.0/24");
        let v6 = crate::vocab::parse_ip("2001:db8:1:2:3:4:5:6").expect("v6");
        assert_eq!(Network::of(v6, 24, 64).to_string(), "2001:db8:1:2::/64");
        assert_eq!(Network::of(v6, 24, 0).to_string(), "::/0");
        assert_eq!(Network::of(v4, 0, 64).to_string(), "0.0.0.0/0");
    }
}
