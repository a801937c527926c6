//! A closed pane: its span, its counts ([`PaneCounts`]), its skips and the
//! offsets it covered.

use std::sync::Arc;
use std::time::SystemTime;

use super::counts::PaneCounts;
use crate::vocab::{IpKey, SkipCounts};
use crate::window::PaneOwners;

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
    /// Who is behind the addresses (`--asn-db`, `--country-db`): looked up
    /// when the pane entered the window, `None` without the databases.
    pub owners: Option<Arc<PaneOwners>>,
}

impl Pane {
    pub fn count(&self, ip: IpKey) -> u32 {
        self.counts.get(ip)
    }

    /// Bytes the pane's counts and owners take.
    pub fn bytes(&self) -> usize {
        self.counts.bytes() + self.owners.as_ref().map_or(0, |o| o.bytes())
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
            // The merged pane's owners are looked up again.
            owners: None,
        }
    }
}
