//! Owners over a range of panes: the most counted autonomous systems or
//! countries, and one AS's members.
//!
//! Over panes that know every address's owner the answer is exact: each
//! pane's addresses are keyed by (address, owner) and the runs merged as
//! addresses are, so an address counts once among its owner's distinct
//! addresses however many panes hold it (and, should a reloaded database
//! have moved it, under each owner for the panes that said so). A range
//! holding a summarized pane adds the panes' owner totals instead: lower
//! bounds, with the most any count may lack.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{Grouping, Merged, NetworkCount, merge_runs};
use crate::owners::OwnerKind;
use crate::vocab::IpKey;
use crate::window::Pane;
use crate::window::PaneOwners;

/// One owner's share of a range: its key (an AS number, or a country as
/// [`crate::vocab::Country::to_bits`]), its requests and distinct addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerCount {
    pub key: u32,
    pub count: u64,
    pub distinct_ips: u64,
}

/// What is known of a range's owners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerTrust {
    /// A pane of the range does not know each address's owner.
    pub summarized: bool,
    /// The most any count may lack.
    pub error_bound: u64,
}

/// The `n` most counted owners of `kind` over `panes` (count descending,
/// then key), how many owners there are, and how far the counts are known.
pub fn top_owners<'a>(
    panes: impl Iterator<Item = &'a Arc<Pane>> + Clone,
    kind: OwnerKind,
    n: usize,
) -> (Vec<OwnerCount>, usize, OwnerTrust) {
    let (per_key, trust) = match by_address(panes.clone()) {
        Some(owned) => (exact(&owned, kind), OwnerTrust::default()),
        None => summed(panes, kind),
    };
    // A summarized pane may name an owner with nothing left of its count.
    let per_key: Vec<(u32, (u64, u64))> =
        per_key.into_iter().filter(|(_, (c, _))| *c > 0).collect();
    let owners = per_key.len();
    let mut list: Vec<OwnerCount> = per_key
        .into_iter()
        .map(|(key, (count, distinct_ips))| OwnerCount {
            key,
            count,
            distinct_ips,
        })
        .collect();
    let rank = |a: &OwnerCount, b: &OwnerCount| b.count.cmp(&a.count).then(a.key.cmp(&b.key));
    if n < list.len() {
        list.select_nth_unstable_by(n, rank);
        list.truncate(n);
    }
    list.sort_unstable_by(rank);
    (list, owners, trust)
}

/// One AS over `panes`: its requests, distinct addresses, top `n`
/// addresses and top `n` networks (`/24`, `/64`). With a summarized pane in
/// the range the count is the panes' totals (lower bounds) and the members
/// are those of the panes that know each address's owner.
pub fn asn_members<'a>(
    panes: impl Iterator<Item = &'a Arc<Pane>> + Clone,
    asn: u32,
    n: usize,
) -> AsnMembers {
    let owned: Vec<(&Arc<Pane>, &PaneOwners)> = panes
        .clone()
        .filter_map(|p| p.owners.as_deref().map(|o| (p, o)))
        .filter(|(_, o)| o.by_address())
        .collect();
    let members = members(&owned, |owner| owner == asn);
    let networks = members
        .top_networks(
            Grouping {
                prefix4: 24,
                prefix6: 64,
            },
            n,
        )
        .0;
    let mut answer = AsnMembers {
        count: members.total(),
        distinct_ips: members.len() as u64,
        top: members.top(n),
        networks,
        trust: OwnerTrust::default(),
    };
    if by_address(panes.clone()).is_none() {
        let (per_key, trust) = summed(panes, OwnerKind::Asn);
        let (count, distinct) = per_key.get(&asn).copied().unwrap_or((0, 0));
        answer.count = count;
        answer.distinct_ips = answer.distinct_ips.max(distinct);
        answer.trust = trust;
    }
    answer
}

/// One AS's share of a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsnMembers {
    pub count: u64,
    pub distinct_ips: u64,
    pub top: Vec<(IpKey, u64)>,
    pub networks: Vec<NetworkCount>,
    pub trust: OwnerTrust,
}

/// The panes with their owners when every one knows each address's owner.
fn by_address<'a>(
    panes: impl Iterator<Item = &'a Arc<Pane>>,
) -> Option<Vec<(&'a Arc<Pane>, &'a PaneOwners)>> {
    panes
        .map(|p| match p.owners.as_deref() {
            Some(o) if o.by_address() => Some((p, o)),
            None if p.counts.is_empty() => Some((p, empty())),
            _ => None,
        })
        .collect()
}

fn empty() -> &'static PaneOwners {
    static EMPTY: std::sync::OnceLock<PaneOwners> = std::sync::OnceLock::new();
    EMPTY.get_or_init(PaneOwners::default)
}

/// Every owner of `kind` over `panes` with its requests and its addresses
/// (in address order), as an instance's part of a cluster answer gives
/// them; over a range with a summarized pane the addresses are left out
/// (the counts are the panes' totals, lower bounds).
pub fn owned_addresses<'a>(
    panes: impl Iterator<Item = &'a Arc<Pane>> + Clone,
    kind: OwnerKind,
) -> (Vec<(u32, u64, Vec<IpKey>)>, OwnerTrust) {
    let Some(owned) = by_address(panes.clone()) else {
        let (per_key, trust) = summed(panes, kind);
        let mut list: Vec<(u32, u64, Vec<IpKey>)> = per_key
            .into_iter()
            .filter(|(_, (c, _))| *c > 0)
            .map(|(k, (c, _))| (k, c, Vec::new()))
            .collect();
        list.sort_unstable_by_key(|e| e.0);
        return (list, trust);
    };
    let mut per_key: FxHashMap<u32, (u64, Vec<IpKey>)> = FxHashMap::default();
    for_each_owned(&owned, kind, |ip, key, count| {
        let entry = per_key.entry(key).or_default();
        entry.0 += count;
        entry.1.push(ip);
    });
    let mut list: Vec<(u32, u64, Vec<IpKey>)> =
        per_key.into_iter().map(|(k, (c, a))| (k, c, a)).collect();
    list.sort_unstable_by_key(|e| e.0);
    (list, OwnerTrust::default())
}

/// Requests and distinct addresses per owner key, exactly.
fn exact(owned: &[(&Arc<Pane>, &PaneOwners)], kind: OwnerKind) -> FxHashMap<u32, (u64, u64)> {
    let mut per_key: FxHashMap<u32, (u64, u64)> = FxHashMap::default();
    for_each_owned(owned, kind, |_, key, count| {
        let entry = per_key.entry(key).or_default();
        entry.0 += count;
        entry.1 += 1;
    });
    per_key
}

/// Calls `f(address, owner key, count)` for each address of the panes and
/// each owner it had in them, in address order: the panes' addresses keyed
/// by owner, merged as addresses are.
fn for_each_owned(
    owned: &[(&Arc<Pane>, &PaneOwners)],
    kind: OwnerKind,
    mut f: impl FnMut(IpKey, u32, u64),
) {
    let mut v4_runs: Vec<Vec<((u32, u32), u64)>> = Vec::with_capacity(owned.len());
    let mut v6_runs: Vec<Vec<((u128, u32), u64)>> = Vec::with_capacity(owned.len());
    for (pane, owners) in owned {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for ((ip, n), owner) in pane.counts.iter().zip(owners.owners()) {
            let key = kind.key_of(owner);
            match ip.v4_bits() {
                Some(a) => v4.push(((a, key), u64::from(n))),
                None => v6.push(((ip.to_bits(), key), u64::from(n))),
            }
        }
        v4_runs.push(v4);
        v6_runs.push(v6);
    }
    for ((a, key), count) in merge_runs(v4_runs, |&e| e).into_iter().flatten() {
        f(IpKey::from_v4_bits(a), key, count);
    }
    for ((a, key), count) in merge_runs(v6_runs, |&e| e).into_iter().flatten() {
        f(IpKey::from_bits(a), key, count);
    }
}

/// The panes' owner totals added up: lower bounds, and distinct addresses
/// added pane by pane (an estimate: an address in two panes counts twice).
fn summed<'a>(
    panes: impl Iterator<Item = &'a Arc<Pane>>,
    kind: OwnerKind,
) -> (FxHashMap<u32, (u64, u64)>, OwnerTrust) {
    let mut per_key: FxHashMap<u32, (u64, u64)> = FxHashMap::default();
    let mut trust = OwnerTrust {
        summarized: true,
        error_bound: 0,
    };
    for pane in panes {
        let Some(owners) = pane.owners.as_deref() else {
            // Not looked up: any owner may lack all of it.
            trust.error_bound += pane.requests;
            continue;
        };
        trust.error_bound += owners.error_bound(kind);
        for t in owners.totals(kind) {
            let entry = per_key.entry(t.key).or_default();
            entry.0 += t.count;
            entry.1 += t.distinct;
        }
    }
    (per_key, trust)
}

/// The addresses whose AS `keep` takes, over the panes, with their counts.
fn members(owned: &[(&Arc<Pane>, &PaneOwners)], keep: impl Fn(u32) -> bool) -> Merged {
    let mut v4_runs: Vec<Vec<(u32, u64)>> = Vec::with_capacity(owned.len());
    let mut v6_runs: Vec<Vec<(u128, u64)>> = Vec::with_capacity(owned.len());
    for (pane, owners) in owned {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for ((ip, n), owner) in pane.counts.iter().zip(owners.owners()) {
            if !keep(owner.asn) {
                continue;
            }
            match ip.v4_bits() {
                Some(a) => v4.push((a, u64::from(n))),
                None => v6.push((ip.to_bits(), u64::from(n))),
            }
        }
        v4_runs.push(v4);
        v6_runs.push(v6);
    }
    Merged {
        v4: merge_runs(v4_runs, |&e| e),
        v6: merge_runs(v6_runs, |&e| e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owners::Owner;
    use crate::vocab::{Country, Network, SkipCounts, parse_ip};
    use crate::window::{IpMap, PaneCounts};
    use std::time::{Duration, UNIX_EPOCH};

    /// 10.0.0.0/16: AS 1 in DE; 10.1.0.0/16: AS 2 in DE; the rest AS 0, `--`.
    fn owner(ip: IpKey) -> Owner {
        let within = |cidr: &str| Network::parse(cidr).expect("cidr").contains(ip);
        let de = Country::parse("DE").expect("DE");
        if within("10.0.0.0/16") {
            Owner {
                asn: 1,
                country: de,
            }
        } else if within("10.1.0.0/16") {
            Owner {
                asn: 2,
                country: de,
            }
        } else {
            Owner::default()
        }
    }

    fn pane(index: u64, records: &[(&str, u32)]) -> Arc<Pane> {
        let mut map = IpMap::default();
        for &(ip, n) in records {
            map.add(parse_ip(ip).expect("ip"), n);
        }
        let counts = PaneCounts::from(&map);
        Arc::new(Pane {
            owners: Some(Arc::new(PaneOwners::of(&counts, owner))),
            seq: index,
            start: UNIX_EPOCH + Duration::from_secs(index),
            end: UNIX_EPOCH + Duration::from_secs(index + 1),
            requests: records.iter().map(|(_, n)| u64::from(*n)).sum(),
            counts,
            skipped: SkipCounts::default(),
            ranges: Vec::new(),
        })
    }

    #[test]
    fn owners_over_panes_count_each_address_once() {
        let panes = [
            pane(0, &[("10.0.0.1", 3), ("10.0.0.2", 1), ("10.1.0.1", 2)]),
            pane(1, &[("10.0.0.1", 2), ("10.1.0.9", 5), ("2001:db8::1", 4)]),
        ];
        let (top, owners, trust) = top_owners(panes.iter(), OwnerKind::Asn, 10);
        assert_eq!(trust, OwnerTrust::default());
        assert_eq!(owners, 3);
        let got: Vec<(u32, u64, u64)> = top
            .iter()
            .map(|o| (o.key, o.count, o.distinct_ips))
            .collect();
        assert_eq!(got, vec![(2, 7, 2), (1, 6, 2), (0, 4, 1)]);
        let (countries, _, _) = top_owners(panes.iter(), OwnerKind::Country, 1);
        assert_eq!(countries.len(), 1);
        assert_eq!(Country::from_bits(countries[0].key as u16).as_str(), "DE");
        assert_eq!((countries[0].count, countries[0].distinct_ips), (13, 4));

        let one = asn_members(panes.iter(), 1, 5);
        assert_eq!((one.count, one.distinct_ips), (6, 2));
        assert_eq!(one.top[0], (parse_ip("10.0.0.1").expect("ip"), 5));
        assert_eq!(one.networks.len(), 1);
        assert_eq!(one.networks[0].network.to_string(), "10.0.0.0/24");
    }

    #[test]
    fn a_summarized_pane_gives_lower_bounds_within_the_error() {
        let exact = pane(0, &[("10.0.0.1", 3), ("10.1.0.1", 2)]);
        let mut folded = (*pane(1, &[("10.0.0.1", 2), ("10.1.0.9", 5)])).clone();
        folded.owners = folded.owners.map(|o| Arc::new(o.folded(1)));
        let panes = [exact, Arc::new(folded)];
        let (top, _, trust) = top_owners(panes.iter(), OwnerKind::Asn, 10);
        assert!(trust.summarized);
        for o in &top {
            let truth = if o.key == 1 { 5 } else { 7 };
            assert!(
                o.count <= truth && truth <= o.count + trust.error_bound,
                "{o:?}"
            );
        }
    }
}
