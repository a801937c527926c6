//! Questions over a range that holds summarized panes: how far the answer
//! can be trusted ([`Trust`]), and networks counted from each summarized
//! pane's network levels, so that a client rotating over one /64 (whose
//! addresses no summary lists) still tops the /64 list.
//!
//! An exact pane contributes its counts; a summarized pane its lower bounds:
//! at the address level its listed addresses, at a network level its
//! `v4/24` or `v6/64` summary (rolled up for a coarser prefix). A count's
//! upper bound adds each summarized pane's error: the level's offset when
//! the prefix is the level's, else the level's residual (its total minus
//! its listed lower bounds), which bounds any set of keys it does not list.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{Grouping, NetworkCount, best_networks};
use crate::vocab::{IpKey, Network};
use crate::window::Pane;
use crate::window::counts::{SUMMARY_PREFIX4, SUMMARY_PREFIX6, Summarized};
use crate::window::distinct::Distinct;
use crate::window::summary::Summary;

/// How far an answer about a range can be trusted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// A pane of the range is summarized.
    pub summarized: bool,
    /// The most any count of the answer may lack.
    pub error_bound: u64,
    /// The distinct count is an estimate.
    pub distinct_estimated: bool,
}

impl Trust {
    /// Counts per address over `panes`: each summarized pane adds its
    /// addresses' error bound.
    pub fn of_addresses<'a>(panes: impl Iterator<Item = &'a Arc<Pane>>) -> Trust {
        let mut trust = Trust::default();
        for pane in panes.filter(|p| !p.counts.is_exact()) {
            trust.summarized = true;
            trust.distinct_estimated = true;
            trust.error_bound += pane.counts.error_bound();
        }
        trust
    }
}

/// Distinct addresses over `panes`: exact when every pane is, else estimated
/// from the summarized panes' sketches and the addresses the others list.
pub fn distinct<'a>(panes: impl Iterator<Item = &'a Arc<Pane>> + Clone, listed: usize) -> u64 {
    if panes.clone().all(|p| p.counts.is_exact()) {
        return listed as u64;
    }
    let mut sketch = Distinct::default();
    for pane in panes {
        pane.counts.add_distinct_to(&mut sketch);
    }
    sketch.estimate().max(listed as u64)
}

/// One family's lower bounds in a summarized pane at `prefix`, and their
/// error: from the network level when `prefix` is at most the level's
/// (rolled up when shorter), else from the listed addresses.
fn family_lowers(
    pane: &Pane,
    summary: &Summarized,
    v4: bool,
    prefix: u8,
    keep: &dyn Fn(Network) -> bool,
    out: &mut FxHashMap<Network, (u64, u64)>,
) -> u64 {
    let (level, level_prefix, address_prefix): (&Summary<Network>, u8, u8) = if v4 {
        (&summary.v4, SUMMARY_PREFIX4, 32)
    } else {
        (&summary.v6, SUMMARY_PREFIX6, 128)
    };
    let group = |ip: IpKey| {
        if v4 {
            Network::of(ip, prefix, 128)
        } else {
            Network::of(ip, 32, prefix)
        }
    };
    if prefix <= level_prefix {
        let mut listed = 0;
        for (network, bounds) in level.iter() {
            let (first, _) = network.bounds();
            listed += bounds.lower;
            let grouped = group(IpKey::from_bits(first));
            if keep(grouped) {
                out.entry(grouped).or_insert((0, 0)).0 += bounds.lower;
            }
        }
        return if prefix == level_prefix {
            level.error_bound()
        } else {
            level.total() - listed
        };
    }
    let mut listed = 0;
    for (ip, n) in pane.counts.iter().filter(|(ip, _)| ip.is_v4() == v4) {
        listed += u64::from(n);
        let grouped = group(ip);
        if keep(grouped) {
            let entry = out.entry(grouped).or_insert((0, 0));
            entry.0 += u64::from(n);
            entry.1 += 1;
        }
    }
    if prefix == address_prefix {
        summary.offset
    } else {
        level.total().saturating_sub(listed)
    }
}

/// Each network's (lower bound, listed addresses) at `grouping` over
/// panes of which some are summarized, for the networks `keep` takes, and
/// how far the counts can be trusted.
fn count_networks<'a>(
    panes: impl Iterator<Item = &'a Arc<Pane>>,
    grouping: Grouping,
    keep: &dyn Fn(Network) -> bool,
) -> (FxHashMap<Network, (u64, u64)>, Trust) {
    let mut networks: FxHashMap<Network, (u64, u64)> = FxHashMap::default();
    let mut trust = Trust::default();
    for pane in panes {
        match pane.counts.summary() {
            None => {
                for (ip, count) in pane.counts.iter() {
                    let network = Network::of(ip, grouping.prefix4, grouping.prefix6);
                    if keep(network) {
                        let entry = networks.entry(network).or_insert((0, 0));
                        entry.0 += u64::from(count);
                        entry.1 += 1;
                    }
                }
            }
            Some(summary) => {
                let (p4, p6) = (grouping.prefix4, grouping.prefix6);
                let e4 = family_lowers(pane, summary, true, p4, keep, &mut networks);
                let e6 = family_lowers(pane, summary, false, p6, keep, &mut networks);
                trust.summarized = true;
                trust.distinct_estimated = true;
                trust.error_bound += e4.max(e6);
            }
        }
    }
    (networks, trust)
}

/// The `n` networks with the most requests (lower bounds, count descending,
/// then network), how many are listed, and how far the counts can be
/// trusted, over panes of which some are summarized. `distinct_ips` of a
/// network counts the addresses listed in it (a lower bound).
pub fn top_networks<'a>(
    panes: impl Iterator<Item = &'a Arc<Pane>>,
    grouping: Grouping,
    n: usize,
) -> (Vec<NetworkCount>, usize, Trust) {
    let (networks, trust) = count_networks(panes, grouping, &|_| true);
    let (best, listed) = best_networks(networks, n);
    (best, listed, trust)
}

/// One network's count over panes of which some are summarized: its lower
/// bound and how far it can be trusted.
pub fn network_count<'a>(
    panes: impl Iterator<Item = &'a Arc<Pane>>,
    network: Network,
) -> (u64, Trust) {
    let prefix = network.prefix_len();
    let grouping = if network.is_v4() {
        Grouping {
            prefix4: prefix,
            prefix6: 128,
        }
    } else {
        Grouping {
            prefix4: 32,
            prefix6: prefix,
        }
    };
    let (networks, trust) = count_networks(panes, grouping, &|n| n == network);
    (networks.get(&network).map_or(0, |c| c.0), trust)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::SkipCounts;
    use crate::window::{IpMap, PaneCounts};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    fn ip(v6: bool, net: u16, host: u16) -> IpKey {
        if v6 {
            IpKey::from_bits((0x2001_0db8u128 << 96) | (u128::from(net) << 64) | u128::from(host))
        } else {
            IpKey::from_v4_bits(0x0a00_0000 | (u32::from(net) << 8) | u32::from(host % 256))
        }
    }

    fn pane(keys: &[(bool, u16, u16)], capacity: Option<usize>) -> Arc<Pane> {
        let mut map = IpMap::default();
        for &(v6, net, host) in keys {
            map.add(ip(v6, net, host), 1u32);
        }
        let exact = PaneCounts::from(&map);
        Arc::new(Pane {
            owners: None,
            seq: 0,
            start: UNIX_EPOCH,
            end: UNIX_EPOCH,
            requests: keys.len() as u64,
            counts: capacity.map_or(exact.clone(), |k| exact.summarized(k)),
            skipped: SkipCounts::default(),
            ranges: Vec::new(),
        })
    }

    proptest! {
        #[test]
        fn network_counts_over_summarized_panes_lie_within_their_bounds(
            panes in prop::collection::vec(
                (prop::collection::vec((any::<bool>(), 0u16..6, 0u16..400), 0..500), prop::option::of(1usize..12)),
                1..5,
            ),
            prefix4 in prop::sample::select(vec![8u8, 16, 20, 24, 28, 32]),
            prefix6 in prop::sample::select(vec![32u8, 48, 60, 64, 96, 128]),
        ) {
            let grouping = Grouping { prefix4, prefix6 };
            let built: Vec<Arc<Pane>> = panes.iter().map(|(k, cap)| pane(k, *cap)).collect();
            let mut truth: BTreeMap<Network, u64> = BTreeMap::new();
            for (keys, _) in &panes {
                for &(v6, net, host) in keys {
                    *truth.entry(Network::of(ip(v6, net, host), prefix4, prefix6)).or_insert(0) += 1;
                }
            }
            let (top, _, trust) = top_networks(built.iter(), grouping, usize::MAX);
            prop_assert_eq!(trust.summarized, panes.iter().any(|(_, c)| c.is_some()));
            let found: BTreeMap<Network, u64> = top.iter().map(|t| (t.network, t.count)).collect();
            for (network, n) in &truth {
                let lower = found.get(network).copied().unwrap_or(0);
                prop_assert!(lower <= *n && *n <= lower + trust.error_bound,
                    "{network}: {n} in [{lower}, {}]", lower + trust.error_bound);
                if *n > trust.error_bound {
                    prop_assert!(found.contains_key(network), "{network} ({n}) listed");
                }
            }
            if let Some((network, n)) = truth.iter().next() {
                let (lower, one) = network_count(built.iter(), *network);
                prop_assert!(lower <= *n && *n <= lower + one.error_bound, "{network}: {n}, {lower}");
                prop_assert_eq!(one.summarized, trust.summarized);
            }
        }
    }

    #[test]
    fn a_rotating_64_tops_the_64_list_from_summarized_panes() {
        // Per pane: 3,000 addresses of one /64 once each, and 40 IPv4
        // addresses 30 times each.
        let panes: Vec<Arc<Pane>> = (0..3)
            .map(|_| {
                let mut keys: Vec<(bool, u16, u16)> = (0..3000).map(|h| (true, 7, h)).collect();
                keys.extend((0..40u16).flat_map(|h| std::iter::repeat_n((false, 1, h), 30)));
                pane(&keys, Some(32))
            })
            .collect();
        let grouping = Grouping {
            prefix4: 24,
            prefix6: 64,
        };
        let (top, _, trust) = top_networks(panes.iter(), grouping, 1);
        assert_eq!(top[0].network, Network::of(ip(true, 7, 0), 24, 64));
        assert!(top[0].count <= 9000 && 9000 <= top[0].count + trust.error_bound);
        assert!(
            trust.summarized && trust.error_bound < 9000 / 4,
            "{trust:?}"
        );
    }
}
