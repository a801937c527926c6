//! A running count of one key kind over the last panes of a rule's
//! window: what the engine compares with the rules' thresholds. Panes enter,
//! leave and are replaced by fuller versions of themselves; the counts are
//! never recomputed from all panes.

use std::sync::Arc;
use std::time::SystemTime;

use rustc_hash::{FxHashMap, FxHashSet};

use super::counts::{KeyCounts, Slot};
use super::file::Key;
use super::keys::{for_each_lower, pane_error};
use crate::vocab::Subject;
use crate::window::Pane;

/// A running count of one key kind over the last `panes` panes.
#[derive(Debug)]
pub(super) struct Aggregate {
    pub(super) key: Key,
    pub(super) panes: usize,
    pub(super) floor: u64,
    pub(super) counts: KeyCounts,
    /// Keys whose count is at least `floor`.
    pub(super) above: FxHashSet<Subject>,
    pub(super) total: u64,
    pub(super) included: Vec<Arc<Pane>>,
    /// Included panes that are summarized, and the most any count of this
    /// key kind may lack over them.
    pub(super) summarized: usize,
    pub(super) error: u64,
}

impl Aggregate {
    pub(super) fn new(key: Key, panes: usize, floor: u64) -> Self {
        Aggregate {
            key,
            panes,
            floor,
            counts: KeyCounts::new(key),
            above: FxHashSet::default(),
            total: 0,
            included: Vec::new(),
            summarized: 0,
            error: 0,
        }
    }

    /// The upper bound of a key's count whose lower bound is `value`:
    /// `None` while every included pane is exact.
    pub(super) fn upper(&self, value: u64) -> Option<u64> {
        (self.summarized > 0).then(|| value + self.error)
    }

    fn apply(&mut self, pane: &Pane, add: bool) {
        let error = pane_error(self.key, pane);
        let summarized = usize::from(!pane.counts.is_exact());
        if add {
            self.total += pane.requests;
            self.error += error;
            self.summarized += summarized;
        } else {
            self.total = self.total.saturating_sub(pane.requests);
            self.error = self.error.saturating_sub(error);
            self.summarized = self.summarized.saturating_sub(summarized);
        }
        for_each_lower(self.key, self.counts.slots, pane, |slot, n| {
            if add {
                self.add(slot, n);
            } else {
                self.subtract(slot, n);
            }
        });
    }

    /// `old` replaced by `new`, the same pane with more records in it: only
    /// the addresses whose count changed are touched.
    fn replace(&mut self, old: &Pane, new: &Pane) {
        if !(old.counts.is_exact() && new.counts.is_exact()) || self.key.owner_kind().is_some() {
            // Summarized panes may be read at a network level: take the one
            // out and put the other in whole.
            self.apply(old, false);
            self.apply(new, true);
            return;
        }
        self.total = (self.total + new.requests).saturating_sub(old.requests);
        old.counts
            .for_each_change(&new.counts, |ip, before, after| {
                let Some(slot) = self.counts.slots.slot_of_ip(ip) else {
                    return;
                };
                if after > before {
                    self.add(slot, u64::from(after - before));
                } else {
                    self.subtract(slot, u64::from(before - after));
                }
            });
    }

    fn add(&mut self, slot: Slot, n: u64) {
        let before = self.counts.add(slot, n);
        // A key already counted at the floor is in `above` already.
        if before + n >= self.floor && (before < self.floor || before == 0) {
            self.above.insert(self.counts.slots.subject(slot));
        }
    }

    fn subtract(&mut self, slot: Slot, n: u64) {
        if let Some(after) = self.counts.subtract(slot, n)
            && after < self.floor
        {
            self.above.remove(&self.counts.slots.subject(slot));
        }
    }

    /// Counts made elsewhere (the cluster's), exact: they replace these.
    pub(super) fn install(&mut self, total: u64, counts: FxHashMap<Subject, u64>) {
        self.above = counts
            .iter()
            .filter(|(_, c)| **c >= self.floor)
            .map(|(k, _)| *k)
            .collect();
        self.counts = KeyCounts::from_subjects(self.key, counts);
        self.total = total;
        self.included.clear();
        self.summarized = 0;
        self.error = 0;
    }

    /// Brings the count to the last `panes` of the kept panes: `older`
    /// then `window`, oldest first.
    pub(super) fn sync(&mut self, older: &[Arc<Pane>], window: &[Arc<Pane>]) {
        let skip = (older.len() + window.len()).saturating_sub(self.panes);
        let now: Vec<Arc<Pane>> = older.iter().chain(window).skip(skip).cloned().collect();
        let ptr = |p: &Arc<Pane>| Arc::as_ptr(p) as usize;
        let before: FxHashSet<usize> = self.included.iter().map(ptr).collect();
        let after: FxHashSet<usize> = now.iter().map(ptr).collect();
        let included = std::mem::take(&mut self.included);
        // A pane that left and one that entered with the same start are one
        // pane that late records joined.
        let mut left: FxHashMap<SystemTime, &Arc<Pane>> = included
            .iter()
            .filter(|p| !after.contains(&ptr(p)))
            .map(|p| (p.start, p))
            .collect();
        for pane in now.iter().filter(|p| !before.contains(&ptr(p))) {
            match left.remove(&pane.start) {
                Some(old) => self.replace(old, pane),
                None => self.apply(pane, true),
            }
        }
        for pane in left.into_values() {
            self.apply(pane, false);
        }
        self.included = now;
    }
}
