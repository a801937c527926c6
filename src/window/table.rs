//! Per-IP counts: [`IpMap`], a hash table for counts that change (the
//! open pane, window totals), and [`SortedCounts`], sorted arrays for a
//! closed pane's counts that never change again.

use std::ops::AddAssign;

use rustc_hash::FxHashMap;

use crate::vocab::IpKey;

/// Per-IP counts. IPv4 addresses (nearly all of them, in practice) are
/// keyed by their 4 bytes and IPv6 by 16 in a map of their own, so that an
/// IPv4 entry with a `u32` count takes 8 bytes instead of 32.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpMap<V> {
    pub(super) v4: FxHashMap<u32, V>,
    pub(super) v6: FxHashMap<u128, V>,
}

impl<V: Copy + Default + AddAssign> IpMap<V> {
    /// Room for `n` IPv4 addresses without rehashing.
    pub fn with_capacity(n: usize) -> Self {
        IpMap {
            v4: FxHashMap::with_capacity_and_hasher(n, Default::default()),
            v6: FxHashMap::default(),
        }
    }

    /// Adds `n` to the IP's count; returns the count before.
    #[inline]
    pub fn add(&mut self, ip: IpKey, n: V) -> V {
        let count = match ip.v4_bits() {
            Some(v4) => self.v4.entry(v4).or_default(),
            None => self.v6.entry(ip.to_bits()).or_default(),
        };
        let before = *count;
        *count += n;
        before
    }

    /// Sets the IP's count; returns the previous one.
    pub fn insert(&mut self, ip: IpKey, n: V) -> Option<V> {
        match ip.v4_bits() {
            Some(v4) => self.v4.insert(v4, n),
            None => self.v6.insert(ip.to_bits(), n),
        }
    }

    pub fn get(&self, ip: IpKey) -> Option<V> {
        match ip.v4_bits() {
            Some(v4) => self.v4.get(&v4).copied(),
            None => self.v6.get(&ip.to_bits()).copied(),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the maps hold without growing.
    pub fn capacity(&self) -> usize {
        self.v4.capacity() + self.v6.capacity()
    }

    /// Bytes the maps take as allocated: each slot holds its entry and one
    /// control byte.
    pub fn bytes(&self) -> usize {
        let slot = |key: usize| key + std::mem::size_of::<V>() + 1;
        self.v4.capacity() * slot(4) + self.v6.capacity() * slot(16)
    }

    /// Empties the maps, keeping their memory for reuse.
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }

    /// Gives back what a burst of addresses left unused.
    pub fn shrink_to_fit(&mut self) {
        self.v4.shrink_to_fit();
        self.v6.shrink_to_fit();
    }

    /// Empties the maps, keeping room for about the number of addresses
    /// they held: a table a burst grew to four times that is given back
    /// down to twice, so that one burst does not cost its memory for good
    /// while steady traffic never regrows its table.
    pub fn clear_for_reuse(&mut self) {
        let room = self.len().max(4096);
        self.clear();
        if self.v4.capacity() > 4 * room {
            self.v4.shrink_to(2 * room);
        }
        if self.v6.capacity() > 4 * room {
            self.v6.shrink_to(2 * room);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (IpKey, V)> + '_ {
        let v4 = self.v4.iter().map(|(&a, &n)| (IpKey::from_v4_bits(a), n));
        let v6 = self.v6.iter().map(|(&a, &n)| (IpKey::from_bits(a), n));
        v4.chain(v6)
    }

    pub fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.v4.values().chain(self.v6.values()).copied()
    }
}

/// A closed pane's counts, sorted by address: an IPv4 entry takes 8 bytes,
/// and a lookup is a binary search. Built once when the pane closes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(in crate::window) struct SortedCounts {
    v4: Box<[(u32, u32)]>,
    /// Addresses and counts apart: 20 bytes an entry instead of a padded 32.
    v6: Box<[u128]>,
    v6_counts: Box<[u32]>,
}

impl SortedCounts {
    /// The counts of `(address, count)` pairs; `None` if an address repeats.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (IpKey, u32)>) -> Option<Self> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (ip, n) in pairs {
            match ip.v4_bits() {
                Some(a) => v4.push((a, n)),
                None => v6.push((ip.to_bits(), n)),
            }
        }
        let counts = SortedCounts::sorted(v4, v6);
        let repeats = counts.v4.windows(2).any(|w| w[0].0 == w[1].0)
            || counts.v6.windows(2).any(|w| w[0] == w[1]);
        (!repeats).then_some(counts)
    }

    fn sorted(mut v4: Vec<(u32, u32)>, mut v6: Vec<(u128, u32)>) -> Self {
        v4.sort_unstable_by_key(|e| e.0);
        v6.sort_unstable_by_key(|e| e.0);
        SortedCounts {
            v4: v4.into_boxed_slice(),
            v6: v6.iter().map(|e| e.0).collect(),
            v6_counts: v6.iter().map(|e| e.1).collect(),
        }
    }

    pub fn get(&self, ip: IpKey) -> Option<u32> {
        match ip.v4_bits() {
            Some(a) => self
                .v4
                .binary_search_by_key(&a, |e| e.0)
                .ok()
                .map(|i| self.v4[i].1),
            None => self
                .v6
                .binary_search(&ip.to_bits())
                .ok()
                .map(|i| self.v6_counts[i]),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// In address order, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (IpKey, u32)> + Clone + '_ {
        let v4 = self.v4.iter().map(|&(a, n)| (IpKey::from_v4_bits(a), n));
        let v6 = self.v6.iter().zip(self.v6_counts.iter());
        v4.chain(v6.map(|(&a, &n)| (IpKey::from_bits(a), n)))
    }

    /// The IPv4 entries, by address.
    pub fn v4(&self) -> &[(u32, u32)] {
        &self.v4
    }

    /// The IPv6 addresses (sorted) and their counts.
    pub fn v6(&self) -> (&[u128], &[u32]) {
        (&self.v6, &self.v6_counts)
    }

    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.v4
            .iter()
            .map(|e| e.1)
            .chain(self.v6_counts.iter().copied())
    }

    /// Calls `f(address, count here, count in newer)` for each address
    /// whose count differs (0 where one lacks it), in one pass over both
    /// sorted lists: what a running count must change when this pane is
    /// replaced by `newer`.
    pub fn for_each_change(&self, newer: &SortedCounts, mut f: impl FnMut(IpKey, u32, u32)) {
        for_each_change_sorted(
            self.v4.iter().copied(),
            newer.v4.iter().copied(),
            |a, x, y| f(IpKey::from_v4_bits(a), x, y),
        );
        for_each_change_sorted(self.v6_pairs(), newer.v6_pairs(), |a, x, y| {
            f(IpKey::from_bits(a), x, y)
        });
    }

    /// The IPv6 entries as (address, count), by address.
    fn v6_pairs(&self) -> impl Iterator<Item = (u128, u32)> + '_ {
        self.v6.iter().copied().zip(self.v6_counts.iter().copied())
    }

    /// Both counts added address by address (a pane that received more
    /// records), in one pass over the two sorted lists.
    pub fn merged(&self, other: &SortedCounts) -> SortedCounts {
        let v4 = merge_sorted(self.v4.iter().copied(), other.v4.iter().copied());
        let v6 = merge_sorted(self.v6_pairs(), other.v6_pairs());
        SortedCounts {
            v4: v4.into_boxed_slice(),
            v6: v6.iter().map(|e| e.0).collect(),
            v6_counts: v6.iter().map(|e| e.1).collect(),
        }
    }
}

/// Walks two address-sorted lists together: `f(address, count in a, count
/// in b)` for every address of either, in order (0 where one lacks it).
fn walk_sorted<K: Ord + Copy>(
    a: impl Iterator<Item = (K, u32)>,
    b: impl Iterator<Item = (K, u32)>,
    mut f: impl FnMut(K, u32, u32),
) {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    loop {
        match (a.peek().copied(), b.peek().copied()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                f(x.0, x.1, y.1);
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                f(x.0, x.1, 0);
                a.next();
            }
            (_, Some(y)) => {
                f(y.0, 0, y.1);
                b.next();
            }
            (Some(x), None) => {
                f(x.0, x.1, 0);
                a.next();
            }
            (None, None) => break,
        }
    }
}

/// Calls `f(address, count before, count after)` for each address whose
/// count differs between two address-sorted lists (0 where one lacks it).
fn for_each_change_sorted<K: Ord + Copy>(
    before: impl Iterator<Item = (K, u32)>,
    after: impl Iterator<Item = (K, u32)>,
    mut f: impl FnMut(K, u32, u32),
) {
    walk_sorted(before, after, |key, x, y| {
        if x != y {
            f(key, x, y);
        }
    });
}

/// Two address-sorted lists as one, counts of the same address added
/// (saturating: a pane never holds 4 billion requests of one address).
fn merge_sorted<K: Ord + Copy>(
    a: impl Iterator<Item = (K, u32)>,
    b: impl Iterator<Item = (K, u32)>,
) -> Vec<(K, u32)> {
    let mut out = Vec::with_capacity(a.size_hint().0 + b.size_hint().0);
    walk_sorted(a, b, |key, x, y| out.push((key, x.saturating_add(y))));
    out
}

impl From<&IpMap<u32>> for SortedCounts {
    fn from(map: &IpMap<u32>) -> Self {
        let v4 = map.v4.iter().map(|(&a, &n)| (a, n)).collect();
        let v6 = map.v6.iter().map(|(&a, &n)| (a, n)).collect();
        SortedCounts::sorted(v4, v6)
    }
}

impl IpMap<u64> {
    /// Takes `n` from the IP's count (not below 0; an IP at 0 is removed);
    /// the count after, `None` for an IP not held.
    #[inline]
    pub fn subtract(&mut self, ip: IpKey, n: u64) -> Option<u64> {
        fn take<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, u64>, k: K, n: u64) -> Option<u64> {
            let count = map.get_mut(&k)?;
            *count = count.saturating_sub(n);
            let after = *count;
            if after == 0 {
                map.remove(&k);
            }
            Some(after)
        }
        match ip.v4_bits() {
            Some(v4) => take(&mut self.v4, v4, n),
            None => take(&mut self.v6, ip.to_bits(), n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_gives_its_table_back_but_steady_traffic_keeps_its_room() {
        let mut map: IpMap<u32> = IpMap::default();
        let fill = |map: &mut IpMap<u32>, n: u32| {
            for a in 0..n {
                map.add(IpKey::from_v4_bits(a), 1);
            }
        };
        fill(&mut map, 200_000);
        let burst = map.capacity();
        map.clear_for_reuse();
        assert_eq!(map.capacity(), burst, "room for what it just held is kept");
        fill(&mut map, 10_000);
        map.clear_for_reuse();
        let after = map.capacity();
        assert!(after < burst / 4, "{after} of {burst} kept after the burst");
        assert!(
            after >= 20_000,
            "room for twice the steady traffic: {after}"
        );
        assert!(map.is_empty());
        fill(&mut map, 10_000);
        assert_eq!(map.capacity(), after, "steady traffic does not regrow it");
    }

    proptest! {
        #[test]
        fn sorted_pane_counts_answer_like_a_map(
            pairs in prop::collection::hash_map(any::<u128>().prop_map(IpKey::from_bits), 1u32..9, 0..40),
            v4 in prop::collection::hash_map(any::<u32>(), 1u32..9, 0..40),
            probe in any::<u32>(),
        ) {
            let mut all = pairs.clone();
            all.extend(v4.iter().map(|(&a, &n)| (IpKey::from_v4_bits(a), n)));
            let mut map = IpMap::default();
            for (&ip, &n) in &all {
                map.insert(ip, n);
            }
            let sorted = SortedCounts::from(&map);
            prop_assert_eq!(sorted.len(), all.len());
            for (&ip, &n) in &all {
                prop_assert_eq!(sorted.get(ip), Some(n));
            }
            let absent = IpKey::from_v4_bits(probe);
            prop_assert_eq!(sorted.get(absent), all.get(&absent).copied());
            let listed: Vec<IpKey> = sorted.iter().map(|(ip, _)| ip).collect();
            prop_assert!(listed.windows(2).all(|w| w[0] < w[1]), "address order");
            let from_pairs = SortedCounts::from_pairs(all.iter().map(|(&ip, &n)| (ip, n)));
            prop_assert_eq!(from_pairs.as_ref(), Some(&sorted));
            // Merging with itself doubles every count.
            let doubled = sorted.merged(&sorted);
            prop_assert!(sorted.iter().zip(doubled.iter()).all(|(a, b)| a.0 == b.0 && 2 * a.1 == b.1));
            let empty = SortedCounts::default();
            prop_assert_eq!(&sorted.merged(&empty), &sorted);
            prop_assert_eq!(&empty.merged(&sorted), &sorted);
            if let Some((&ip, &n)) = all.iter().next() {
                let twice = all.iter().map(|(&ip, &n)| (ip, n)).chain([(ip, n)]);
                prop_assert!(SortedCounts::from_pairs(twice).is_none(), "a repeat is refused");
            }
        }

        #[test]
        fn merged_counts_add_address_by_address(
            a in prop::collection::hash_map(0u32..64, 1u32..9, 0..40),
            b in prop::collection::hash_map(0u32..64, 1u32..9, 0..40),
            v6 in prop::collection::hash_map(0u128..64, 1u32..9, 0..10),
        ) {
            let build = |m: &std::collections::HashMap<u32, u32>, six: bool| {
                let mut map = IpMap::default();
                for (&k, &n) in m {
                    map.insert(IpKey::from_v4_bits(k), n);
                }
                if six {
                    for (&k, &n) in &v6 {
                        map.insert(IpKey::from_bits(k | 1 << 100), n);
                    }
                }
                map
            };
            let (ma, mb) = (build(&a, true), build(&b, false));
            let merged = SortedCounts::from(&ma).merged(&SortedCounts::from(&mb));
            let mut expected = ma;
            for (ip, n) in mb.iter() {
                expected.add(ip, n);
            }
            prop_assert_eq!(merged, SortedCounts::from(&expected));
        }

        #[test]
        fn changes_are_every_address_whose_count_differs(
            a in prop::collection::hash_map(0u32..64, 1u32..9, 0..40),
            b in prop::collection::hash_map(0u32..64, 1u32..9, 0..40),
            a6 in prop::collection::hash_map(0u128..16, 1u32..9, 0..10),
            b6 in prop::collection::hash_map(0u128..16, 1u32..9, 0..10),
        ) {
            let build = |v4: &std::collections::HashMap<u32, u32>, v6: &std::collections::HashMap<u128, u32>| {
                let mut map = IpMap::default();
                for (&k, &n) in v4 {
                    map.insert(IpKey::from_v4_bits(k), n);
                }
                for (&k, &n) in v6 {
                    map.insert(IpKey::from_bits(k | 1 << 100), n);
                }
                map
            };
            let (ma, mb) = (build(&a, &a6), build(&b, &b6));
            let (before, after) = (SortedCounts::from(&ma), SortedCounts::from(&mb));
            let mut seen = Vec::new();
            before.for_each_change(&after, |ip, x, y| seen.push((ip, x, y)));
            let mut expected: Vec<(IpKey, u32, u32)> = ma
                .iter()
                .map(|(ip, _)| ip)
                .chain(mb.iter().map(|(ip, _)| ip))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|ip| (ip, ma.get(ip).unwrap_or(0), mb.get(ip).unwrap_or(0)))
                .filter(|(_, x, y)| x != y)
                .collect();
            expected.sort();
            seen.sort();
            prop_assert_eq!(seen, expected);
        }
    }
}
