//! The owners of one closed pane: who each of its addresses belongs to
//! (looked up once, when the pane closed), and the requests and distinct
//! addresses of each autonomous system and country.
//!
//! A pane counted address by address knows every address's owner, so any
//! range of such panes is answered exactly (the query module merges them).
//! A summarized pane keeps its owners' totals while they fit the summary's
//! capacity (they were read from the exact counts before the pane was
//! folded); past it, or when the pane arrived summarized, the totals are
//! read from its network summaries (`v4/24`, `v6/64`, each network by the
//! owner of its first address) with [`PaneOwners::error_bound`] saying how
//! much any owner's count may lack.

use rustc_hash::FxHashMap;

use super::PaneCounts;
use super::summary::Summary;
use crate::owners::{Owner, OwnerKind};
use crate::vocab::IpKey;

/// One owner's share of a pane: its key (see [`OwnerKind::key_of`]), its
/// requests (a lower bound when the pane's owners are summarized) and its
/// distinct addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerTotal {
    pub key: u32,
    pub count: u64,
    pub distinct: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaneOwners {
    /// The pane's distinct owners.
    keys: Vec<Owner>,
    /// Each address of the pane's counts, in their order: its owner's
    /// place in `keys`. Empty when the owners were not read address by
    /// address.
    of: Vec<u32>,
    asns: Vec<OwnerTotal>,
    countries: Vec<OwnerTotal>,
    /// The most any AS's and any country's count may lack (0 when exact).
    asn_error: u64,
    country_error: u64,
    /// Whether `of` holds every address's owner.
    by_address: bool,
}

/// `totals` (by key, lower bounds that may lack `error`) in at most
/// `capacity` keys, and what any key may lack then.
fn shrunk(totals: &[OwnerTotal], error: u64, capacity: usize) -> (Vec<OwnerTotal>, u64) {
    if totals.len() <= capacity {
        return (totals.to_vec(), error);
    }
    let summary = Summary::of_sorted(totals.iter().map(|t| (t.key, t.count)), capacity);
    let distinct: FxHashMap<u32, u64> = totals.iter().map(|t| (t.key, t.distinct)).collect();
    let kept = summary
        .iter()
        .map(|(key, bounds)| OwnerTotal {
            key,
            count: bounds.lower,
            distinct: distinct.get(&key).copied().unwrap_or(0),
        })
        .collect();
    (kept, error + summary.error_bound())
}

/// Adds `count` requests and `distinct` addresses of `who` under its AS
/// and under its country.
fn add_owner(
    asns: &mut FxHashMap<u32, (u64, u64)>,
    countries: &mut FxHashMap<u32, (u64, u64)>,
    who: Owner,
    count: u64,
    distinct: u64,
) {
    for (per_key, key) in [
        (asns, OwnerKind::Asn.key_of(who)),
        (countries, OwnerKind::Country.key_of(who)),
    ] {
        let entry = per_key.entry(key).or_default();
        entry.0 += count;
        entry.1 += distinct;
    }
}

/// Totals per key, sorted by key.
fn totals(per_key: FxHashMap<u32, (u64, u64)>) -> Vec<OwnerTotal> {
    let mut list: Vec<OwnerTotal> = per_key
        .into_iter()
        .map(|(key, (count, distinct))| OwnerTotal {
            key,
            count,
            distinct,
        })
        .collect();
    list.sort_unstable_by_key(|t| t.key);
    list
}

impl PaneOwners {
    /// The owners of `counts`, each address looked up with `owner`: address
    /// by address for an exact pane, from the network summaries for a
    /// summarized one.
    pub fn of(counts: &PaneCounts, mut owner: impl FnMut(IpKey) -> Owner) -> PaneOwners {
        if !counts.is_exact() {
            return PaneOwners::of_networks(counts, owner);
        }
        let mut places: FxHashMap<Owner, u32> = FxHashMap::default();
        let mut keys = Vec::new();
        let mut of = Vec::with_capacity(counts.len());
        // Requests and addresses per place, added into the kinds' totals
        // once at the end (a pane has far fewer owners than addresses).
        let mut per_place: Vec<(u64, u64)> = Vec::new();
        let mut last: Option<(Owner, u32)> = None;
        for (ip, n) in counts.iter() {
            let who = owner(ip);
            // Neighbouring addresses mostly share their owner.
            let place = match last {
                Some((o, place)) if o == who => place,
                _ => {
                    let place = *places.entry(who).or_insert_with(|| {
                        keys.push(who);
                        per_place.push((0, 0));
                        (keys.len() - 1) as u32
                    });
                    last = Some((who, place));
                    place
                }
            };
            of.push(place);
            let total = &mut per_place[place as usize];
            total.0 += u64::from(n);
            total.1 += 1;
        }
        let (mut asns, mut countries) = (FxHashMap::default(), FxHashMap::default());
        for (who, (count, distinct)) in keys.iter().zip(&per_place) {
            add_owner(&mut asns, &mut countries, *who, *count, *distinct);
        }
        PaneOwners {
            keys,
            of,
            asns: totals(asns),
            countries: totals(countries),
            asn_error: 0,
            country_error: 0,
            by_address: true,
        }
    }

    /// A summarized pane's owners, from its network summaries: each
    /// network's lower bound under the owner of its first address, distinct
    /// addresses as many as the pane still lists. What the summaries do not
    /// list is the most any owner may lack.
    fn of_networks(counts: &PaneCounts, mut owner: impl FnMut(IpKey) -> Owner) -> PaneOwners {
        let Some(summary) = counts.summary() else {
            return PaneOwners::default();
        };
        let (mut asns, mut countries) = (FxHashMap::default(), FxHashMap::default());
        let mut listed = 0;
        for (network, bounds) in summary.v4.iter().chain(summary.v6.iter()) {
            let who = owner(IpKey::from_bits(network.bounds().0));
            listed += bounds.lower;
            add_owner(&mut asns, &mut countries, who, bounds.lower, 0);
        }
        for (ip, _) in counts.iter() {
            let who = owner(ip);
            add_owner(&mut asns, &mut countries, who, 0, 1);
        }
        let unlisted = summary.total.saturating_sub(listed);
        PaneOwners::totals_only(totals(asns), totals(countries), unlisted, unlisted)
    }

    /// These owners once the pane is summarized to `capacity` keys a level:
    /// each kind's totals stay while they fit, else they are summarized
    /// (Misra-Gries, as addresses are: an AS rotating over many addresses
    /// keeps its count within the bound).
    pub fn folded(&self, capacity: usize) -> PaneOwners {
        let (asns, asn_error) = shrunk(&self.asns, self.asn_error, capacity);
        let (countries, country_error) = shrunk(&self.countries, self.country_error, capacity);
        PaneOwners::totals_only(asns, countries, asn_error, country_error)
    }

    /// Owners known by their totals alone (not address by address).
    fn totals_only(
        asns: Vec<OwnerTotal>,
        countries: Vec<OwnerTotal>,
        asn_error: u64,
        country_error: u64,
    ) -> PaneOwners {
        PaneOwners {
            keys: Vec::new(),
            of: Vec::new(),
            asns,
            countries,
            asn_error,
            country_error,
            by_address: false,
        }
    }

    /// A summarized pane's owners as a checkpoint stores them: each kind's
    /// totals (by key, each key once) and what any may lack; `None` when
    /// they do not read as such.
    pub fn summarized_from(
        asns: Vec<OwnerTotal>,
        countries: Vec<OwnerTotal>,
        asn_error: u64,
        country_error: u64,
    ) -> Option<PaneOwners> {
        let ordered = |list: &[OwnerTotal]| list.windows(2).all(|w| w[0].key < w[1].key);
        (ordered(&asns) && ordered(&countries))
            .then(|| PaneOwners::totals_only(asns, countries, asn_error, country_error))
    }

    /// Whether every address's owner is known (the pane's counts are exact).
    pub fn by_address(&self) -> bool {
        self.by_address
    }

    /// Each address's owner, in the order of the pane's counts.
    pub fn owners(&self) -> impl Iterator<Item = Owner> + '_ {
        self.of.iter().map(|&place| self.keys[place as usize])
    }

    /// Requests and distinct addresses per key of `kind`, by key.
    pub fn totals(&self, kind: OwnerKind) -> &[OwnerTotal] {
        match kind {
            OwnerKind::Asn => &self.asns,
            OwnerKind::Country => &self.countries,
        }
    }

    /// The most any owner's count of `kind` in this pane may lack (0 when
    /// exact).
    pub fn error_bound(&self, kind: OwnerKind) -> u64 {
        match kind {
            OwnerKind::Asn => self.asn_error,
            OwnerKind::Country => self.country_error,
        }
    }

    /// Bytes these owners take.
    pub fn bytes(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<Owner>()
            + self.of.capacity() * std::mem::size_of::<u32>()
            + (self.asns.capacity() + self.countries.capacity()) * std::mem::size_of::<OwnerTotal>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Country, parse_ip};
    use crate::window::IpMap;

    /// 10.0.0.0/16 is AS 1 in DE; everything else AS 2 in FR.
    fn owner(ip: IpKey) -> Owner {
        let inside = crate::vocab::Network::parse("10.0.0.0/16")
            .expect("network")
            .contains(ip);
        Owner {
            asn: if inside { 1 } else { 2 },
            country: Country::parse(if inside { "DE" } else { "FR" }).expect("country"),
        }
    }

    fn counts(records: &[(&str, u32)]) -> PaneCounts {
        let mut map = IpMap::default();
        for &(ip, n) in records {
            map.add(parse_ip(ip).expect("ip"), n);
        }
        PaneCounts::from(&map)
    }

    #[test]
    fn an_exact_pane_knows_every_address_s_owner() {
        let counts = counts(&[("10.0.0.1", 3), ("10.0.9.9", 2), ("192.0.2.1", 4)]);
        let owners = PaneOwners::of(&counts, owner);
        assert!(owners.by_address());
        assert_eq!(
            owners.totals(OwnerKind::Asn),
            &[
                OwnerTotal {
                    key: 1,
                    count: 5,
                    distinct: 2
                },
                OwnerTotal {
                    key: 2,
                    count: 4,
                    distinct: 1
                }
            ]
        );
        let asns: Vec<u32> = owners.owners().map(|o| o.asn).collect();
        assert_eq!(asns, vec![1, 1, 2]);
        assert_eq!(
            owners.owners().nth(2).map(|o| o.country.to_string()),
            Some("FR".into())
        );
    }

    #[test]
    fn a_summarized_pane_keeps_a_rotating_owner_and_bounds_the_rest() {
        // One AS rotating over 2,000 addresses once each, beside ten heavy
        // addresses elsewhere: summaries of 8 keys a level.
        let mut records: Vec<(String, u32)> = (0..2000u32)
            .map(|i| (format!("10.0.{}.{}", i / 250, i % 250), 1))
            .collect();
        records.extend((0..10).map(|i| (format!("192.0.2.{i}"), 50)));
        let borrowed: Vec<(&str, u32)> = records.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        let exact = counts(&borrowed);
        let summarized = exact.summarized(8);
        // Arrived summarized: read from the network summaries, within the bound.
        let owners = PaneOwners::of(&summarized, owner);
        assert!(!owners.by_address());
        for t in owners.totals(OwnerKind::Asn) {
            let truth = if t.key == 1 { 2000 } else { 500 };
            assert!(t.count <= truth && t.count + owners.error_bound(OwnerKind::Asn) >= truth);
        }
        // Folded from exact owners: the totals that fit stay exact.
        let exact_owners = PaneOwners::of(&exact, owner);
        let kept = exact_owners.folded(8);
        assert_eq!(kept.error_bound(OwnerKind::Asn), 0);
        assert_eq!(kept.totals(OwnerKind::Asn)[0].count, 2000);
        assert_eq!(kept.totals(OwnerKind::Country)[1].count, 500);
        // Past the capacity: summarized, and the rotating AS stays listed.
        let tight = exact_owners.folded(1);
        let listed = tight.totals(OwnerKind::Asn);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, 1);
        assert!(listed[0].count + tight.error_bound(OwnerKind::Asn) >= 2000);
    }
}
