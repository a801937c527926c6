//! Frequent-items summaries: what a pane can count with once the memory
//! budget is reached. A [`Summary`] keeps at most `capacity` keys, each with
//! a lower bound on its true count, and one `offset` that bounds the error:
//!
//! - a listed key's true count lies in `[count, count + offset]`;
//! - an unlisted key's true count is at most `offset`;
//! - `offset` is at most `total / (capacity + 1)`.
//!
//! This is the Misra–Gries summary, merged as Agarwal et al. merge it
//! ("Mergeable summaries", PODS 2012): counts of the same key add up, the
//! offsets add up, and a summary that holds more than `capacity` keys is
//! reduced by subtracting its `(capacity + 1)`-th largest count from every
//! count (dropping those that reach zero) and adding it to the offset. Each
//! reduction takes at least `(capacity + 1) * v` from the counts' sum, which
//! never exceeds the total, so however many panes are merged the offset stays
//! within `total / (capacity + 1)`: every key whose true count exceeds it is
//! listed. Apache DataSketches' frequent-items sketch gives the same
//! guarantee.

/// What is known of one key's true count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub lower: u64,
    pub upper: u64,
}

impl Bounds {
    /// The middle of the bounds: no true count is further from it than half
    /// their width.
    pub fn estimate(&self) -> u64 {
        self.lower + (self.upper - self.lower) / 2
    }
}

/// A frequent-items summary of counts per key (see the module's text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary<K> {
    /// Listed keys and their lower bounds, by key.
    items: Vec<(K, u64)>,
    /// The most any count may lack.
    offset: u64,
    /// Every count summarized, exactly.
    total: u64,
    capacity: usize,
}

impl<K: Ord + Copy> Summary<K> {
    /// A summary of exact counts in any order, keeping at most `capacity`
    /// keys (at least one): the plain construction [`Summary::of_sorted`] is
    /// held to.
    #[cfg(test)]
    pub fn of_counts(counts: impl IntoIterator<Item = (K, u64)>, capacity: usize) -> Self {
        let mut items: Vec<(K, u64)> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
        items.sort_unstable_by_key(|e| e.0);
        let mut total = 0u64;
        let mut out: Vec<(K, u64)> = Vec::with_capacity(items.len());
        for (key, n) in items {
            total += n;
            match out.last_mut() {
                Some(last) if last.0 == key => last.1 += n,
                _ => out.push((key, n)),
            }
        }
        let mut summary = Summary {
            items: out,
            offset: 0,
            total,
            capacity: capacity.max(1),
        };
        summary.reduce();
        summary
    }

    /// A summary of exact counts that come in key order, each key once,
    /// built without holding more than one number per key: the cut is
    /// chosen among the counts alone, then only the keys above it are kept
    /// (what [`Summary::of_counts`] keeps, with less memory on the way).
    pub fn of_sorted<I>(counts: I, capacity: usize) -> Self
    where
        I: Iterator<Item = (K, u64)> + Clone,
    {
        let capacity = capacity.max(1);
        let mut values: Vec<u64> = counts.clone().map(|(_, n)| n).filter(|n| *n > 0).collect();
        let total = values.iter().sum();
        let cut = if values.len() > capacity {
            *values.select_nth_unstable_by(capacity, |a, b| b.cmp(a)).1
        } else {
            0
        };
        drop(values);
        let items: Vec<(K, u64)> = counts
            .filter(|(_, n)| *n > cut)
            .map(|(key, n)| (key, n - cut))
            .collect();
        debug_assert!(items.windows(2).all(|w| w[0].0 < w[1].0), "keys in order");
        Summary {
            items,
            offset: cut,
            total,
            capacity,
        }
    }

    /// A summary of lower bounds that may lack up to `offset` each (as a
    /// summary with room for at least `capacity` keys left them), of
    /// `total` counts in all.
    /// The lower bounds come in key order, each key once.
    pub fn from_lowers<I>(lowers: I, offset: u64, total: u64, capacity: usize) -> Self
    where
        I: Iterator<Item = (K, u64)> + Clone,
    {
        let mut summary = Summary::of_sorted(lowers, capacity);
        summary.offset += offset;
        summary.total = total;
        summary
    }

    /// A summary as stored: listed keys with their lower bounds, in key
    /// order; `None` unless the keys are ordered and distinct, fit the
    /// capacity, and their bounds add up to no more than the total.
    pub fn from_parts(
        items: Vec<(K, u64)>,
        offset: u64,
        total: u64,
        capacity: usize,
    ) -> Option<Self> {
        let ordered = items.windows(2).all(|w| w[0].0 < w[1].0);
        let listed = items.iter().try_fold(0u64, |sum, e| sum.checked_add(e.1))?;
        (ordered && capacity >= 1 && items.len() <= capacity && listed <= total).then_some(
            Summary {
                items,
                offset,
                total,
                capacity,
            },
        )
    }

    /// This summary with room for at most `capacity` keys (never more than
    /// it has room for).
    pub fn shrunk(&self, capacity: usize) -> Self {
        let mut summary = self.clone();
        summary.capacity = capacity.clamp(1, self.capacity);
        summary.reduce();
        summary
    }

    /// Both summaries as one: the counts of a range of panes. The result
    /// keeps as many keys as the larger of the two.
    pub fn merged(&self, other: &Summary<K>) -> Summary<K> {
        let mut items = Vec::with_capacity(self.items.len() + other.items.len());
        let (mut a, mut b) = (self.items.iter().peekable(), other.items.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    items.push((x.0, x.1 + y.1));
                    a.next();
                    b.next();
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    items.push(**x);
                    a.next();
                }
                (_, Some(y)) => {
                    items.push(**y);
                    b.next();
                }
                (Some(x), None) => {
                    items.push(**x);
                    a.next();
                }
                (None, None) => break,
            }
        }
        let mut summary = Summary {
            items,
            offset: self.offset + other.offset,
            total: self.total + other.total,
            capacity: self.capacity.max(other.capacity),
        };
        summary.reduce();
        summary
    }

    /// Subtracts the `(capacity + 1)`-th largest count from every count
    /// while more than `capacity` keys are listed.
    fn reduce(&mut self) {
        if self.items.len() <= self.capacity {
            self.items.shrink_to_fit();
            return;
        }
        let mut counts: Vec<u64> = self.items.iter().map(|e| e.1).collect();
        let (_, cut, _) = counts.select_nth_unstable_by(self.capacity, |a, b| b.cmp(a));
        let cut = *cut;
        for item in &mut self.items {
            item.1 -= cut.min(item.1);
        }
        self.items.retain(|e| e.1 > 0);
        // What a summary holds is what it costs: not the keys it was built from.
        self.items.shrink_to_fit();
        self.offset += cut;
    }

    /// What is known of `key`'s true count.
    pub fn get(&self, key: K) -> Bounds {
        let lower = match self.items.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => self.items[i].1,
            Err(_) => 0,
        };
        Bounds {
            lower,
            upper: lower + self.offset,
        }
    }

    /// The largest possible error of any count: a key whose true count
    /// exceeds it is listed.
    pub fn error_bound(&self) -> u64 {
        self.offset
    }

    /// Every count summarized, exactly.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Keys listed.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Listed keys with their bounds, by key.
    pub fn iter(&self) -> impl Iterator<Item = (K, Bounds)> + '_ {
        self.items.iter().map(|&(key, lower)| {
            (
                key,
                Bounds {
                    lower,
                    upper: lower + self.offset,
                },
            )
        })
    }

    /// The `n` keys with the highest lower bounds (then by key): every key
    /// whose true count exceeds [`Self::error_bound`] is among them when `n`
    /// is large enough to hold every such key.
    pub fn top(&self, n: usize) -> Vec<(K, Bounds)> {
        let mut all: Vec<(K, Bounds)> = self.iter().collect();
        all.sort_unstable_by(|a, b| b.1.lower.cmp(&a.1.lower).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Bytes the summary takes in memory.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.items.capacity() * std::mem::size_of::<(K, u64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn exact(keys: &[u16]) -> BTreeMap<u16, u64> {
        let mut counts = BTreeMap::new();
        for k in keys {
            *counts.entry(*k).or_insert(0) += 1;
        }
        counts
    }

    /// Holds a summary of `truth` to its guarantee.
    fn holds(summary: &Summary<u16>, truth: &BTreeMap<u16, u64>) -> Result<(), TestCaseError> {
        let total: u64 = truth.values().sum();
        prop_assert_eq!(summary.total(), total);
        prop_assert!(summary.len() <= summary.capacity());
        prop_assert!(
            summary.error_bound() * (summary.capacity() as u64 + 1) <= total,
            "error bound {} over total {} / (k + 1)",
            summary.error_bound(),
            total
        );
        for (&key, &count) in truth {
            let b = summary.get(key);
            prop_assert!(
                b.lower <= count && count <= b.upper,
                "{key}: {count} in {b:?}"
            );
            if count > summary.error_bound() {
                prop_assert!(
                    summary.iter().any(|(k, _)| k == key),
                    "{key} ({count}) listed"
                );
            }
        }
        for (key, _) in summary.iter() {
            prop_assert!(truth.contains_key(&key), "only counted keys are listed");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn every_count_lies_within_its_bounds_and_heavy_keys_are_listed(
            keys in prop::collection::vec(0u16..300, 0..2000),
            capacity in 1usize..64,
        ) {
            let truth = exact(&keys);
            let summary = Summary::of_counts(truth.iter().map(|(k, n)| (*k, *n)), capacity);
            holds(&summary, &truth)?;
        }

        #[test]
        fn merged_panes_keep_the_guarantee_for_the_whole_range(
            panes in prop::collection::vec(prop::collection::vec(0u16..200, 0..400), 1..12),
            capacity in 1usize..32,
        ) {
            let mut truth = BTreeMap::new();
            let mut merged: Option<Summary<u16>> = None;
            for keys in &panes {
                let pane = exact(keys);
                for (k, n) in &pane {
                    *truth.entry(*k).or_insert(0) += n;
                }
                let summary = Summary::of_counts(pane.into_iter(), capacity);
                merged = Some(match merged {
                    Some(m) => m.merged(&summary),
                    None => summary,
                });
            }
            holds(&merged.expect("one pane at least"), &truth)?;
        }

        #[test]
        fn a_summary_of_ordered_counts_is_the_summary_of_the_same_counts(
            keys in prop::collection::vec(0u16..300, 0..2000),
            capacity in 1usize..64,
        ) {
            let truth = exact(&keys);
            let ordered = Summary::of_sorted(truth.iter().map(|(k, n)| (*k, *n)), capacity);
            prop_assert_eq!(&ordered, &Summary::of_counts(truth.iter().map(|(k, n)| (*k, *n)), capacity));
            holds(&ordered, &truth)?;
        }

        #[test]
        fn below_the_capacity_a_summary_is_the_exact_count(
            keys in prop::collection::vec(0u16..40, 0..500),
        ) {
            let truth = exact(&keys);
            let summary = Summary::of_counts(truth.iter().map(|(k, n)| (*k, *n)), 64);
            prop_assert_eq!(summary.error_bound(), 0);
            for (&key, &count) in &truth {
                prop_assert_eq!(summary.get(key), Bounds { lower: count, upper: count });
            }
        }
    }

    #[test]
    fn the_heaviest_keys_come_first_with_their_bounds() {
        let mut counts: Vec<(u16, u64)> = (0..1000).map(|k| (k, 1)).collect();
        counts.extend([(5000, 400), (5001, 300)]);
        let summary = Summary::of_counts(counts, 10);
        let top = summary.top(2);
        assert_eq!(
            top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![5000, 5001]
        );
        for (key, b) in top {
            let truth = if key == 5000 { 400 } else { 300 };
            assert!(b.lower <= truth && truth <= b.upper, "{key} {b:?}");
        }
        assert!(summary.error_bound() <= 1700 / 11);
        assert!(
            summary.bytes() <= std::mem::size_of::<Summary<u16>>() + 10 * 16,
            "a summary keeps no room for the keys it dropped: {} bytes",
            summary.bytes()
        );
        assert_eq!(
            Bounds {
                lower: 10,
                upper: 14
            }
            .estimate(),
            12
        );
    }
}
