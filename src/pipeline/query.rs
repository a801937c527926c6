//! Questions asked at query time, answered from the kept panes: any window
//! (a run of whole panes) ending at any kept pane boundary, by address or by
//! network (`prefix4`, `prefix6`), and one network's members. A window is a
//! sum of panes, so an answer merges the panes of its range; nothing here
//! touches ingest's state (the panes are shared and immutable).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap;

use super::window::{Pane, top_k};
use crate::vocab::{IpKey, Network};

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
    pub fn panes<'a>(&self, kept: &'a [Arc<Pane>]) -> impl Iterator<Item = &'a Arc<Pane>> {
        let (start, end) = (self.start, self.end);
        kept.iter()
            .filter(move |p| p.start >= start && p.end <= end)
    }
}

/// Counts per address over a range of panes.
pub fn merge<'a>(panes: impl Iterator<Item = &'a Arc<Pane>>) -> FxHashMap<IpKey, u64> {
    let mut counts: FxHashMap<IpKey, u64> = FxHashMap::default();
    for pane in panes {
        counts.reserve(
            pane.counts
                .len()
                .saturating_sub(counts.capacity() - counts.len()),
        );
        for (ip, n) in pane.counts.iter() {
            *counts.entry(ip).or_insert(0) += u64::from(n);
        }
    }
    counts
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
/// ascending), and how many networks there are.
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

/// The top `n` addresses of a range (count descending, then address).
pub fn top_addresses(counts: &FxHashMap<IpKey, u64>, n: usize) -> Vec<(IpKey, u64)> {
    top_k(counts.iter().map(|(&ip, &c)| (ip, c)).collect(), n)
}

/// One network over a range: its requests, its distinct addresses and its
/// top `n` addresses. An IPv6 network never holds IPv4 addresses (even
/// `::/0`): IPv4-mapped addresses are IPv4.
pub fn network_members(
    counts: &FxHashMap<IpKey, u64>,
    network: Network,
    n: usize,
) -> (u64, u64, Vec<(IpKey, u64)>) {
    let members: Vec<(IpKey, u64)> = counts
        .iter()
        .filter(|(ip, _)| ip.is_v4() == network.is_v4() && network.contains(**ip))
        .map(|(&ip, &c)| (ip, c))
        .collect();
    let total = members.iter().map(|(_, c)| c).sum();
    let distinct = members.len() as u64;
    (total, distinct, top_k(members, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::counts::{IpMap, SortedCounts};
    use crate::vocab::SkipCounts;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    fn pane(index: u64, records: &[(IpKey, u32)]) -> Arc<Pane> {
        let mut counts = IpMap::default();
        for &(ip, n) in records {
            counts.add(ip, n);
        }
        Arc::new(Pane {
            seq: index,
            start: UNIX_EPOCH + Duration::from_secs(index),
            end: UNIX_EPOCH + Duration::from_secs(index + 1),
            counts: SortedCounts::from(&counts),
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
            let merged: BTreeMap<IpKey, u64> = counts.iter().map(|(&ip, &c)| (ip, c)).collect();
            prop_assert_eq!(&merged, &expected);
            let mut by_network: BTreeMap<Network, (u64, u64)> = BTreeMap::new();
            for (&ip, &c) in &expected {
                let e = by_network.entry(Network::of(ip, prefix4, prefix6)).or_insert((0, 0));
                e.0 += c;
                e.1 += 1;
            }
            let grouping = Grouping { prefix4, prefix6 };
            let (top, total) = top_networks(counts.iter().map(|(&ip, &c)| (ip, c)), grouping, usize::MAX);
            prop_assert_eq!(total, by_network.len());
            let got: BTreeMap<Network, (u64, u64)> =
                top.iter().map(|t| (t.network, (t.count, t.distinct_ips))).collect();
            prop_assert_eq!(&got, &by_network);
            prop_assert!(top.windows(2).all(|w| w[0].count >= w[1].count));
            for (network, (count, distinct)) in &by_network {
                let (c, d, members) = network_members(&counts, *network, 3);
                prop_assert_eq!((c, d), (*count, *distinct));
                prop_assert!(members.iter().all(|(ip, _)| network.contains(*ip)));
            }
            // Every address its own network: the per-address answer.
            let (singles, _) = top_networks(counts.iter().map(|(&ip, &c)| (ip, c)), Grouping::ADDRESSES, usize::MAX);
            prop_assert_eq!(singles.len(), expected.len());
        }
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
