//! What a closed pane counts with: [`PaneCounts`], the one place that knows
//! how a pane holds its counts. Every other module (window, queries, rules,
//! checkpoints) goes through its methods: add (from the open pane's map),
//! merge, the changes against a newer pane (what running counts subtract and
//! add), iterate in address order, top-N, the count of one key, bytes used.
//!
//! A pane is exact until the memory budget is reached. A summarized pane
//! keeps at most `capacity` addresses, IPv4 /24 networks and IPv6 /64
//! networks, each level a frequent-items [`Summary`] with its own error
//! bound, and a [`Distinct`] sketch of its addresses. Its listed addresses
//! keep their lower bounds in the same sorted arrays an exact pane uses, so
//! a range's merge, the window's running counts and the rules read lower
//! bounds where they read counts; what a count may lack is
//! [`PaneCounts::error_bound`].

use super::distinct::Distinct;
use super::summary::{Bounds, Summary};
use super::table::{IpMap, SortedCounts};
use super::top_k;
use crate::vocab::{IpKey, Network};

/// The network levels a summarized pane keeps beside addresses: what the
/// rules and rollups ask most (`v4/24`, `v6/64`), and what a rotating client
/// cannot spread below.
pub const SUMMARY_PREFIX4: u8 = 24;
pub const SUMMARY_PREFIX6: u8 = 64;

/// The counts of one closed pane, per address: exact, or summarized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaneCounts {
    /// Exact counts; in a summarized pane, the lower bounds of the listed
    /// addresses.
    lowers: SortedCounts,
    summary: Option<Box<Summarized>>,
}

/// What a summarized pane keeps beside its addresses' lower bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summarized {
    /// The most any address's count may lack (an unlisted one's count is at
    /// most this).
    pub offset: u64,
    /// Every request of the pane, exactly.
    pub total: u64,
    /// Keys each level keeps at most.
    pub capacity: usize,
    /// IPv4 /24 networks.
    pub v4: Summary<Network>,
    /// IPv6 /64 networks.
    pub v6: Summary<Network>,
    /// The pane's distinct addresses.
    pub distinct: Distinct,
}

/// A count of distinct addresses, and whether it is an estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DistinctCount {
    pub count: u64,
    pub estimated: bool,
}

/// One family's networks at its summary level, in order, from addresses in
/// order: the addresses of a network are one run, so no table is needed.
#[derive(Clone)]
struct Networks<I: Iterator<Item = (IpKey, u32)> + Clone> {
    addresses: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = (IpKey, u32)> + Clone> Iterator for Networks<I> {
    type Item = (Network, u64);

    fn next(&mut self) -> Option<(Network, u64)> {
        let (ip, n) = self.addresses.next()?;
        let network = Network::of(ip, SUMMARY_PREFIX4, SUMMARY_PREFIX6);
        let mut count = u64::from(n);
        while let Some((_, n)) = self
            .addresses
            .next_if(|(next, _)| network.contains(*next) && next.is_v4() == ip.is_v4())
        {
            count += u64::from(n);
        }
        Some((network, count))
    }
}

/// The networks of one family (`v4`) at its summary level, in order.
fn networks(
    lowers: &SortedCounts,
    v4: bool,
) -> Networks<impl Iterator<Item = (IpKey, u32)> + Clone + '_> {
    Networks {
        addresses: lowers
            .iter()
            .filter(move |(ip, _)| ip.is_v4() == v4)
            .peekable(),
    }
}

/// Lower bounds as a pane stores them (a pane never holds 4 billion
/// requests of one address).
fn stored(summary: &Summary<IpKey>) -> SortedCounts {
    SortedCounts::from_pairs(
        summary
            .iter()
            .map(|(ip, b)| (ip, u32::try_from(b.lower).unwrap_or(u32::MAX))),
    )
    .unwrap_or_default()
}

impl PaneCounts {
    /// Exact counts of `(address, count)` pairs; `None` if an address repeats.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (IpKey, u32)>) -> Option<Self> {
        SortedCounts::from_pairs(pairs).map(|lowers| PaneCounts {
            lowers,
            summary: None,
        })
    }

    /// A summarized pane from its parts (as a checkpoint stores them):
    /// `None` when an address repeats or the listed lower bounds add up to
    /// more than the total.
    pub fn summarized_from(
        lowers: impl IntoIterator<Item = (IpKey, u32)>,
        summarized: Summarized,
    ) -> Option<Self> {
        let lowers = SortedCounts::from_pairs(lowers)?;
        let listed: u64 = lowers.values().map(u64::from).sum();
        (listed <= summarized.total).then(|| PaneCounts {
            lowers,
            summary: Some(Box::new(summarized)),
        })
    }

    /// Whether every count is exact.
    pub fn is_exact(&self) -> bool {
        self.summary.is_none()
    }

    /// What a summarized pane keeps beside its addresses.
    pub fn summary(&self) -> Option<&Summarized> {
        self.summary.as_deref()
    }

    /// The count of one address (0 when it is not counted here); in a
    /// summarized pane, its lower bound.
    pub fn get(&self, ip: IpKey) -> u32 {
        self.lowers.get(ip).unwrap_or(0)
    }

    /// What is known of one address's count.
    pub fn bounds(&self, ip: IpKey) -> Bounds {
        let lower = u64::from(self.get(ip));
        Bounds {
            lower,
            upper: lower + self.error_bound(),
        }
    }

    /// The most any address's count may lack: 0 in an exact pane.
    pub fn error_bound(&self) -> u64 {
        self.summary.as_ref().map_or(0, |s| s.offset)
    }

    /// Addresses listed: every address counted in an exact pane.
    pub fn len(&self) -> usize {
        self.lowers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lowers.is_empty()
    }

    /// Distinct addresses counted: exact, or estimated in a summarized pane.
    pub fn distinct(&self) -> DistinctCount {
        match &self.summary {
            None => DistinctCount {
                count: self.lowers.len() as u64,
                estimated: false,
            },
            Some(s) => DistinctCount {
                count: s.distinct.estimate().max(self.lowers.len() as u64),
                estimated: true,
            },
        }
    }

    /// Adds this pane's distinct addresses to `sketch`.
    pub fn add_distinct_to(&self, sketch: &mut Distinct) {
        match &self.summary {
            Some(s) => sketch.merge(&s.distinct),
            None => {
                for (ip, _) in self.lowers.iter() {
                    sketch.add(ip);
                }
            }
        }
    }

    /// In address order, IPv4 first (lower bounds in a summarized pane).
    pub fn iter(&self) -> impl Iterator<Item = (IpKey, u32)> + Clone + '_ {
        self.lowers.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.lowers.values()
    }

    /// This pane's counts, summarized to keep at most `capacity` keys at
    /// each level (an exact pane is folded; a summarized one with room for
    /// more keys is reduced; one with less room already is as it is).
    pub fn summarized(&self, capacity: usize) -> PaneCounts {
        let capacity = capacity.max(1);
        let summarized = match &self.summary {
            Some(s) if s.capacity <= capacity => return self.clone(),
            Some(s) => {
                let addresses = Summary::from_lowers(
                    self.lowers.iter().map(|(ip, n)| (ip, u64::from(n))),
                    s.offset,
                    s.total,
                    capacity,
                );
                return PaneCounts {
                    lowers: stored(&addresses),
                    summary: Some(Box::new(Summarized {
                        offset: addresses.error_bound(),
                        total: s.total,
                        capacity,
                        v4: s.v4.shrunk(capacity),
                        v6: s.v6.shrunk(capacity),
                        distinct: s.distinct.clone(),
                    })),
                };
            }
            None => {
                // Built from the sorted arrays in passes, holding no more
                // than a number per key on the way.
                let mut distinct = Distinct::default();
                self.add_distinct_to(&mut distinct);
                let addresses = Summary::of_sorted(
                    self.lowers.iter().map(|(ip, n)| (ip, u64::from(n))),
                    capacity,
                );
                (
                    addresses,
                    Summarized {
                        offset: 0,
                        total: 0,
                        capacity,
                        v4: Summary::of_sorted(networks(&self.lowers, true), capacity),
                        v6: Summary::of_sorted(networks(&self.lowers, false), capacity),
                        distinct,
                    },
                )
            }
        };
        let (addresses, mut rest) = summarized;
        rest.offset = addresses.error_bound();
        rest.total = addresses.total();
        PaneCounts {
            lowers: stored(&addresses),
            summary: Some(Box::new(rest)),
        }
    }

    /// Both counts added address by address (a pane that received more
    /// records of its span). When either is summarized, so is the result,
    /// with room for as many keys as the roomier of the two.
    pub fn merged(&self, other: &PaneCounts) -> PaneCounts {
        let capacity = match (&self.summary, &other.summary) {
            (None, None) => {
                return PaneCounts {
                    lowers: self.lowers.merged(&other.lowers),
                    summary: None,
                };
            }
            (Some(a), Some(b)) => a.capacity.max(b.capacity),
            (Some(s), None) | (None, Some(s)) => s.capacity,
        };
        let (a, b) = (self.summarized(capacity), other.summarized(capacity));
        let (sa, sb) = (
            a.summary().expect("summarized"),
            b.summary().expect("summarized"),
        );
        let lowers = a.lowers.merged(&b.lowers);
        let addresses = Summary::from_lowers(
            lowers.iter().map(|(ip, n)| (ip, u64::from(n))),
            sa.offset + sb.offset,
            sa.total + sb.total,
            capacity,
        );
        let mut distinct = sa.distinct.clone();
        distinct.merge(&sb.distinct);
        PaneCounts {
            lowers: stored(&addresses),
            summary: Some(Box::new(Summarized {
                offset: addresses.error_bound(),
                total: addresses.total(),
                capacity,
                v4: sa.v4.merged(&sb.v4),
                v6: sa.v6.merged(&sb.v6),
                distinct,
            })),
        }
    }

    /// Calls `f(address, count here, count in newer)` for each address
    /// whose count (lower bound) differs: what a running count must
    /// subtract and add when this pane is replaced by `newer`.
    pub fn for_each_change(&self, newer: &PaneCounts, f: impl FnMut(IpKey, u32, u32)) {
        self.lowers.for_each_change(&newer.lowers, f)
    }

    /// The `k` most counted addresses (by lower bound): count descending,
    /// then address.
    pub fn top(&self, k: usize) -> Vec<(IpKey, u64)> {
        top_k(self.iter().map(|(ip, n)| (ip, u64::from(n))).collect(), k)
    }

    /// Bytes the counts take in memory.
    pub fn bytes(&self) -> usize {
        let (v6, _) = self.lowers.v6();
        let summary = self.summary.as_ref().map_or(0, |s| {
            std::mem::size_of::<Summarized>() + s.v4.bytes() + s.v6.bytes() + s.distinct.bytes()
        });
        std::mem::size_of::<Self>() + self.lowers.v4().len() * 8 + v6.len() * 20 + summary
    }

    /// The IPv4 entries as (address bits, count), by address: the sorted
    /// runs a query merges without hashing.
    pub fn v4(&self) -> &[(u32, u32)] {
        self.lowers.v4()
    }

    /// The IPv6 addresses (sorted) and their counts, as [`Self::v4`].
    pub fn v6(&self) -> (&[u128], &[u32]) {
        self.lowers.v6()
    }
}

impl From<&IpMap<u32>> for PaneCounts {
    /// The open pane's map, closed.
    fn from(map: &IpMap<u32>) -> Self {
        PaneCounts {
            lowers: SortedCounts::from(map),
            summary: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::parse_ip;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn counts(pairs: &[(&str, u32)]) -> PaneCounts {
        PaneCounts::from_pairs(pairs.iter().map(|(ip, n)| (parse_ip(ip).expect("ip"), *n)))
            .expect("no repeats")
    }

    #[test]
    fn top_bytes_and_one_key_agree_with_the_pairs() {
        let c = counts(&[
            ("10.0.0.2", 5),
            ("10.0.0.1", 5),
            ("2001:db8::1", 9),
            ("10.0.0.3", 1),
        ]);
        let ip = |s: &str| parse_ip(s).expect("ip");
        assert_eq!(
            c.top(3),
            vec![
                (ip("2001:db8::1"), 9),
                (ip("10.0.0.1"), 5),
                (ip("10.0.0.2"), 5)
            ]
        );
        assert_eq!((c.get(ip("10.0.0.3")), c.get(ip("10.9.9.9"))), (1, 0));
        assert_eq!(c.bytes(), std::mem::size_of::<PaneCounts>() + 3 * 8 + 20);
        assert_eq!(c.len(), 4);
        assert!(c.is_exact() && c.error_bound() == 0);
        assert!(PaneCounts::from_pairs([(ip("10.0.0.1"), 1), (ip("10.0.0.1"), 2)]).is_none());
    }

    /// A pane of these keys: `v6` selects rotating IPv6 addresses in one
    /// /64 (by index) instead of IPv4 ones.
    fn pane_of(keys: &[(bool, u16)]) -> (PaneCounts, BTreeMap<IpKey, u64>) {
        let mut truth = BTreeMap::new();
        for &(v6, k) in keys {
            let ip = if v6 {
                IpKey::from_bits((0x2001_0db8_0000_0001u128 << 64) | u128::from(k))
            } else {
                IpKey::from_v4_bits(0x0a00_0000 | u32::from(k))
            };
            *truth.entry(ip).or_insert(0) += 1;
        }
        let pairs = truth.iter().map(|(ip, n)| (*ip, *n as u32));
        (PaneCounts::from_pairs(pairs).expect("distinct"), truth)
    }

    fn holds(c: &PaneCounts, truth: &BTreeMap<IpKey, u64>) -> Result<(), TestCaseError> {
        for (ip, n) in truth {
            let b = c.bounds(*ip);
            prop_assert!(b.lower <= *n && *n <= b.upper, "{ip}: {n} in {b:?}");
        }
        let s = c.summary().expect("summarized");
        prop_assert_eq!(s.total, truth.values().sum::<u64>());
        let mut networks: BTreeMap<Network, u64> = BTreeMap::new();
        for (ip, n) in truth {
            *networks
                .entry(Network::of(*ip, SUMMARY_PREFIX4, SUMMARY_PREFIX6))
                .or_insert(0) += n;
        }
        for (network, n) in networks {
            let level = if network.is_v4() { &s.v4 } else { &s.v6 };
            let b = level.get(network);
            prop_assert!(b.lower <= n && n <= b.upper, "{network}: {n} in {b:?}");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn summarized_panes_and_their_merges_bound_every_address_and_network(
            a in prop::collection::vec((any::<bool>(), 0u16..600), 0..800),
            b in prop::collection::vec((any::<bool>(), 0u16..600), 0..800),
            capacity in 1usize..40,
            shrink in 1usize..40,
        ) {
            let (pa, ta) = pane_of(&a);
            let (pb, tb) = pane_of(&b);
            let sa = pa.summarized(capacity);
            holds(&sa, &ta)?;
            prop_assert!(sa.len() <= capacity);
            let shrunk = sa.summarized(shrink);
            holds(&shrunk, &ta)?;
            let mut both = ta.clone();
            for (ip, n) in &tb {
                *both.entry(*ip).or_insert(0) += n;
            }
            // Summarized with exact, and summarized with summarized.
            holds(&sa.merged(&pb), &both)?;
            holds(&pb.merged(&sa), &both)?;
            holds(&sa.merged(&pb.summarized(shrink)), &both)?;
        }
    }

    #[test]
    fn a_rotating_network_tops_its_level_when_no_address_stands_out() {
        // 5,000 addresses of one /64, two requests each, and 50 IPv4
        // addresses with 20 each.
        let mut keys: Vec<(bool, u16)> =
            (0..5000u16).flat_map(|k| [(true, k), (true, k)]).collect();
        keys.extend((0..50u16).flat_map(|k| std::iter::repeat_n((false, k), 20)));
        let (pane, truth) = pane_of(&keys);
        let small = pane.summarized(16);
        assert!(
            small.bytes() < pane.bytes() / 10,
            "{} vs {}",
            small.bytes(),
            pane.bytes()
        );
        let s = small.summary().expect("summarized");
        let top = s.v6.top(1);
        assert_eq!(top[0].0.to_string(), "2001:db8:0:1::/64");
        assert!(top[0].1.lower <= 10_000 && 10_000 <= top[0].1.upper);
        let distinct = small.distinct();
        assert!(distinct.estimated);
        assert!((distinct.count as f64 - truth.len() as f64).abs() < truth.len() as f64 * 0.08);
    }
}
