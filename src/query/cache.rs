//! Ranges merged lately, kept so that a question over nearly the same
//! panes merges only the difference.

use std::sync::Arc;

use super::{Merged, merge, merge_runs, v6_list};
use crate::window::Pane;

/// Addresses in order with their counts.
type List<K> = Vec<(K, u64)>;

/// A kept range a question can start from, and what to change.
struct Reuse<'a> {
    cost: usize,
    base: Arc<Merged>,
    added: Vec<&'a Arc<Pane>>,
    removed: Vec<Arc<Pane>>,
}

/// The address lists of a pane, counts widened.
fn widened(pane: &Pane) -> (List<u32>, List<u128>) {
    let v4 = pane
        .counts
        .v4()
        .iter()
        .map(|&(a, n)| (a, u64::from(n)))
        .collect();
    (v4, v6_list(pane))
}

/// `base` (lists in order) with `added`'s counts added and `removed`'s
/// taken away, address by address; an address left at 0 is gone.
fn changed<K: Ord + Copy + Default + Send + Sync>(
    base: &[Vec<(K, u64)>],
    added: &[Vec<(K, u64)>],
    removed: &[Vec<(K, u64)>],
) -> Vec<Vec<(K, u64)>> {
    let grown = (!added.is_empty()).then(|| {
        let runs: Vec<&[(K, u64)]> = base.iter().chain(added).map(Vec::as_slice).collect();
        merge_runs(runs, |&e| e)
    });
    if removed.is_empty() {
        return grown.unwrap_or_else(|| base.to_vec());
    }
    let plus = grown.as_deref().unwrap_or(base);
    let minus = merge_runs(removed.iter().map(Vec::as_slice).collect(), |&e| e);
    let mut less = minus.iter().flatten().copied().peekable();
    let mut out = Vec::with_capacity(plus.iter().map(Vec::len).sum());
    for (key, count) in plus.iter().flatten().copied() {
        while less.next_if(|l| l.0 < key).is_some() {}
        let count = match less.next_if(|l| l.0 == key) {
            Some((_, n)) => count.saturating_sub(n),
            None => count,
        };
        if count > 0 {
            out.push((key, count));
        }
    }
    vec![out]
}

/// Ranges merged lately, kept with their panes, so that a question whose
/// panes mostly match a kept range merges only the difference: the same
/// range asked with another `n` or grouping costs no merge, a range a pane
/// longer, or slid on by a pane, costs a merge of the kept list with that
/// pane (and a pass taking the pane that left away). Panes are held
/// weakly: a pane gone from the service is never kept alive here, and a
/// range that lost one is merged afresh.
#[derive(Debug, Default)]
pub struct MergeCache {
    ranges: std::sync::Mutex<std::collections::VecDeque<Arc<CachedRange>>>,
}

#[derive(Debug)]
struct CachedRange {
    panes: Vec<std::sync::Weak<Pane>>,
    merged: Arc<Merged>,
}

/// Rounds of pairwise merging for `runs` lists (each reads every entry).
fn rounds(runs: usize) -> usize {
    (usize::BITS - runs.saturating_sub(1).leading_zeros()).max(1) as usize
}

/// Ranges a [`MergeCache`] keeps (each up to 16 bytes per address).
const CACHED_RANGES: usize = 2;

impl MergeCache {
    /// Counts per address over `panes`, from a kept range when that is
    /// cheaper than merging them all.
    pub fn merge<'a>(&self, panes: impl Iterator<Item = &'a Arc<Pane>>) -> Arc<Merged> {
        self.merge_reusing(panes.collect(), false)
    }

    /// [`MergeCache::merge`]; with `always`, from the kept range with the
    /// fewest changes whatever a full merge would cost.
    pub(super) fn merge_reusing(&self, panes: Vec<&Arc<Pane>>, always: bool) -> Arc<Merged> {
        let ptr = |p: &Pane| std::ptr::from_ref(p) as usize;
        let wanted: rustc_hash::FxHashSet<usize> = panes.iter().map(|p| ptr(p)).collect();
        let entries: usize = panes.iter().map(|p| p.counts.len()).sum();
        let full_cost = entries * rounds(panes.len());
        let candidates: Vec<Arc<CachedRange>> = match self.ranges.lock() {
            Ok(ranges) => ranges.iter().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut best: Option<Reuse<'_>> = None;
        for cached in candidates {
            // A range one of whose panes is gone cannot be taken apart.
            let Some(held) = cached
                .panes
                .iter()
                .map(std::sync::Weak::upgrade)
                .collect::<Option<Vec<Arc<Pane>>>>()
            else {
                continue;
            };
            let have: rustc_hash::FxHashSet<usize> = held.iter().map(|p| ptr(p)).collect();
            let removed: Vec<Arc<Pane>> = held
                .into_iter()
                .filter(|p| !wanted.contains(&ptr(p)))
                .collect();
            let added: Vec<&Arc<Pane>> = panes
                .iter()
                .filter(|p| !have.contains(&ptr(p)))
                .copied()
                .collect();
            let grown: usize = added.iter().map(|p| p.counts.len()).sum();
            let shrunk: usize = removed.iter().map(|p| p.counts.len()).sum();
            let kept = cached.merged.len();
            // Entries read: the added panes copied, then merged with the
            // kept list; the removed panes copied and merged, then taken
            // away in one pass.
            let cost = match (added.len(), removed.len()) {
                (0, 0) => 0,
                (a, r) => {
                    let plus = if a == 0 {
                        0
                    } else {
                        grown + (kept + grown) * rounds(a + 1)
                    };
                    let minus = if r == 0 {
                        0
                    } else {
                        shrunk + shrunk * rounds(r) + kept + grown + shrunk
                    };
                    plus + minus
                }
            };
            if (always || cost < full_cost) && best.as_ref().is_none_or(|b| cost < b.cost) {
                best = Some(Reuse {
                    cost,
                    base: cached.merged.clone(),
                    added,
                    removed,
                });
            }
        }
        let merged = match best {
            Some(Reuse { cost: 0, base, .. }) => return base,
            Some(Reuse {
                base,
                added,
                removed,
                ..
            }) => {
                let (added4, added6): (Vec<_>, Vec<_>) = added.iter().map(|p| widened(p)).unzip();
                let (removed4, removed6): (Vec<_>, Vec<_>) =
                    removed.iter().map(|p| widened(p)).unzip();
                Arc::new(Merged {
                    v4: changed(&base.v4, &added4, &removed4),
                    v6: changed(&base.v6, &added6, &removed6),
                })
            }
            None => Arc::new(merge(panes.iter().copied())),
        };
        if let Ok(mut ranges) = self.ranges.lock() {
            if ranges.len() == CACHED_RANGES {
                ranges.pop_front();
            }
            ranges.push_back(Arc::new(CachedRange {
                panes: panes.iter().map(|p| Arc::downgrade(p)).collect(),
                merged: merged.clone(),
            }));
        }
        merged
    }
}
