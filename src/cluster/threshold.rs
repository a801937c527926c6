//! The threshold query the rules leader asks of the cluster: every key
//! whose count over the cluster can reach a floor (each instance sends the
//! keys it counted at least `floor / instances` times), then the exact
//! counts of those and of the keys asked for, every round from the view
//! each instance answered the first round from.

use std::collections::HashSet;
use std::time::Instant;

use super::fanout::{Fanout, Parts, note_reached};
use super::merge::Candidates;
use super::part::{Ask, Item, PartRequest};
use super::registry::Member;
use crate::query::{Grouping, Range};

/// Counts of one key kind over the cluster for a rule's running count.
#[derive(Debug, Default)]
pub struct Above {
    pub total: u64,
    /// Every key counted at least `floor` times, and every key asked for.
    pub counts: std::collections::HashMap<String, u64>,
}

impl Fanout {
    /// The first round of a threshold query: every instance's totals over
    /// its current window, the views later rounds read (`pins`), and the
    /// newest window end among them. `None` unless the cluster is complete.
    pub async fn settle(&self, until: Instant) -> Option<Settled> {
        let members = self.roster();
        let local = self.local.now();
        let range = Range {
            start: local.window_start,
            end: local.window_end,
        };
        let parts = self
            .ask(
                &members,
                vec![PartRequest::over(range, None, Ask::Totals); members.len()],
                until,
            )
            .await;
        let reached: Vec<bool> = parts.iter().map(Option::is_some).collect();
        if !self.field(&members, &parts, &reached).complete {
            return None;
        }
        // The newest window end of those that count something: an instance
        // holding nothing (or nothing counted yet) has no window of its own.
        let end_ms = parts
            .iter()
            .flatten()
            .filter(|p| !p.coverage.served.is_empty())
            .map(|p| p.window_end_ms)
            .max()?;
        // Complete without those that did not answer: they hold nothing.
        let (members, parts) = members
            .into_iter()
            .zip(parts)
            .filter(|(_, p)| p.is_some())
            .unzip();
        Some(Settled {
            members,
            parts,
            end_ms,
        })
    }

    /// Every key of `grouping` whose count over `range` reaches `floor`,
    /// with its count, and the counts of `keys`: exact, from the views of
    /// `settled`; `None` when an instance did not answer from them.
    pub async fn above(
        &self,
        settled: &Settled,
        range: Range,
        grouping: Option<Grouping>,
        floor: u64,
        keys: Vec<String>,
        until: Instant,
    ) -> Option<Above> {
        let m = settled.members.len().max(1) as u64;
        let t = floor.div_ceil(m).max(1);
        let pinned = |ask: &dyn Fn(usize) -> Ask| -> Vec<PartRequest> {
            settled
                .parts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    PartRequest::over(range, grouping, ask(i))
                        .pinned(p.as_ref().and_then(|p| p.view))
                })
                .collect()
        };
        let mut reached = vec![true; settled.members.len()];
        let above = self
            .ask(&settled.members, pinned(&|_| Ask::Above { min: t }), until)
            .await;
        note_reached(&mut reached, &settled.parts, &above);
        let items: Vec<Vec<Item>> = above
            .iter()
            .map(|p| p.as_ref().map(|p| p.items.clone()).unwrap_or_default())
            .collect();
        let candidates = Candidates::new(&items, t, usize::MAX);
        let asks: Vec<Vec<String>> = (0..settled.members.len())
            .map(|i| {
                let mut ask = candidates.to_ask(i);
                ask.extend(keys.iter().cloned());
                ask.sort_unstable();
                ask.dedup();
                ask
            })
            .collect();
        let counts = self
            .ask(
                &settled.members,
                pinned(&|i| Ask::Counts {
                    keys: asks[i].clone(),
                }),
                until,
            )
            .await;
        note_reached(&mut reached, &settled.parts, &counts);
        if !reached.iter().all(|r| *r) {
            return None;
        }
        let mut result = Above {
            total: above.iter().flatten().map(|p| p.total_requests).sum(),
            ..Above::default()
        };
        for (i, part) in above.iter().enumerate() {
            let asked: HashSet<&str> = asks[i].iter().map(String::as_str).collect();
            // Keys asked again in round two are counted from that round.
            for (k, c, _) in part.iter().flat_map(|p| &p.items) {
                if !asked.contains(k.as_str()) {
                    *result.counts.entry(k.clone()).or_default() += c;
                }
            }
        }
        for part in counts.iter().flatten() {
            for (k, c, _) in &part.items {
                *result.counts.entry(k.clone()).or_default() += c;
            }
        }
        result.counts.retain(|k, c| *c >= floor || keys.contains(k));
        Some(result)
    }
}

/// The first round of a threshold query (see [`Fanout::settle`]).
pub struct Settled {
    members: Vec<Member>,
    parts: Parts,
    pub end_ms: i64,
}
