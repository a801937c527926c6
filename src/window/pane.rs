//! A closed pane and what it counts with.
//!
//! [`PaneCounts`] is the one place that knows how a closed pane holds its
//! counts: every other module (window, queries, rules, checkpoints) goes
//! through its methods — add (from the open pane's map), merge, the changes
//! against a newer pane (what running totals subtract and add), iterate in
//! address order, top-N, the count of one key, bytes used.

use std::sync::Arc;
use std::time::SystemTime;

use super::table::{IpMap, SortedCounts};
use super::top_k;
use crate::vocab::{IpKey, SkipCounts};

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
    pub counts: PaneCounts,
    /// Records counted (parsed to an IP) in this pane.
    pub requests: u64,
    pub skipped: SkipCounts,
    /// One range per assigned partition, empty ranges included.
    pub ranges: Vec<OffsetRange>,
}

impl Pane {
    pub fn count(&self, ip: IpKey) -> u32 {
        self.counts.get(ip)
    }

    /// This pane with `more` records of the same time span added, as one
    /// pane numbered `more.seq` (event time: a pane receives records over
    /// several batches). Each partition's range spans both.
    pub fn merged(&self, more: Pane) -> Pane {
        let mut ranges = self.ranges.clone();
        for r in more.ranges {
            match ranges
                .iter_mut()
                .find(|o| o.partition == r.partition && o.topic == r.topic)
            {
                Some(o) => {
                    o.from = o.from.min(r.from);
                    o.until = o.until.max(r.until);
                }
                None => ranges.push(r),
            }
        }
        let mut skipped = self.skipped;
        skipped.merge(&more.skipped);
        Pane {
            seq: more.seq,
            start: self.start,
            end: self.end,
            counts: self.counts.merged(&more.counts),
            requests: self.requests + more.requests,
            skipped,
            ranges,
        }
    }
}

/// The counts of one closed pane, per address. Exact today: the sorted
/// arrays of [`SortedCounts`] (8 bytes an IPv4 entry, 20 an IPv6 one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaneCounts(SortedCounts);

impl PaneCounts {
    /// The counts of `(address, count)` pairs; `None` if an address repeats.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (IpKey, u32)>) -> Option<Self> {
        SortedCounts::from_pairs(pairs).map(PaneCounts)
    }

    /// The count of one address (0 when it is not counted here).
    pub fn get(&self, ip: IpKey) -> u32 {
        self.0.get(ip).unwrap_or(0)
    }

    /// Distinct addresses counted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In address order, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (IpKey, u32)> + '_ {
        self.0.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.values()
    }

    /// Both counts added address by address (a pane that received more
    /// records of its span).
    pub fn merged(&self, other: &PaneCounts) -> PaneCounts {
        PaneCounts(self.0.merged(&other.0))
    }

    /// Calls `f(address, count here, count in newer)` for each address
    /// whose count differs: what a running count must subtract and add when
    /// this pane is replaced by `newer`.
    pub fn for_each_change(&self, newer: &PaneCounts, f: impl FnMut(IpKey, u32, u32)) {
        self.0.for_each_change(&newer.0, f)
    }

    /// The `k` most counted addresses: count descending, then address.
    pub fn top(&self, k: usize) -> Vec<(IpKey, u64)> {
        top_k(self.iter().map(|(ip, n)| (ip, u64::from(n))).collect(), k)
    }

    /// Bytes the counts take in memory.
    pub fn bytes(&self) -> usize {
        let (v6, _) = self.0.v6();
        std::mem::size_of::<Self>() + self.0.v4().len() * 8 + v6.len() * 20
    }

    /// The IPv4 entries as (address bits, count), by address: the sorted
    /// runs a query merges without hashing.
    pub fn v4(&self) -> &[(u32, u32)] {
        self.0.v4()
    }

    /// The IPv6 addresses (sorted) and their counts, as [`Self::v4`].
    pub fn v6(&self) -> (&[u128], &[u32]) {
        self.0.v6()
    }
}

impl From<&IpMap<u32>> for PaneCounts {
    /// The open pane's map, closed.
    fn from(map: &IpMap<u32>) -> Self {
        PaneCounts(SortedCounts::from(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::parse_ip;

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
        assert!(PaneCounts::from_pairs([(ip("10.0.0.1"), 1), (ip("10.0.0.1"), 2)]).is_none());
    }
}
