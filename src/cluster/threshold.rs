//! The threshold query the rules leader asks of the cluster: every key
//! whose count over the cluster can reach a floor (each instance sends the
//! keys it counted at least `floor / instances` times), then the exact
//! counts of those and of the keys asked for, every round from the view
//! each instance answered the first round from.

use std::collections::HashSet;
use std::time::Instant;

use super::fanout::{Fanout, note_reached};
use super::merge::Candidates;
use super::part::{Ask, Item, PartRequest};
use super::span::{Span, newest_end_ms};
use crate::query::{Grouping, Range};

/// Counts of one key kind over the cluster for a rule's running count.
#[derive(Debug, Default)]
pub struct Above {
    pub total: u64,
    /// Every key counted at least `floor` times, and every key asked for.
    pub counts: std::collections::HashMap<String, u64>,
}

impl Fanout {
    /// The first round of a threshold query: the cluster's current window
    /// (see [`Fanout::current`]), whose views later rounds read. `None`
    /// unless the cluster is complete and some instance counts something.
    pub async fn settle(&self) -> Option<Span> {
        let local = self.local.now();
        let window = Range {
            start: local.window_start,
            end: local.window_end,
        };
        let span = self.current(window, local.window_length).await;
        let first = span.first?;
        let reached: Vec<bool> = first.iter().map(Option::is_some).collect();
        if !self.field(&span.members, &first, &reached).complete {
            return None;
        }
        // No instance counts anything yet: there is no window to judge.
        newest_end_ms(&first)?;
        // Complete without those that did not answer: they hold nothing.
        let (members, first) = span
            .members
            .into_iter()
            .zip(first)
            .filter(|(_, p)| p.is_some())
            .unzip();
        Some(Span {
            range: span.range,
            members,
            first: Some(first),
        })
    }

    /// Every key of `grouping` whose count over `span` reaches `floor`,
    /// with its count, and the counts of `keys`: exact, from the views of
    /// the span's first round; `None` when an instance did not answer from them.
    pub async fn above(
        &self,
        span: &Span,
        grouping: Option<Grouping>,
        floor: u64,
        keys: Vec<String>,
        until: Instant,
    ) -> Option<Above> {
        let members = span.members.len();
        let first = span.first.as_ref()?;
        let t = floor.div_ceil(members.max(1) as u64).max(1);
        let asks = |ask: &dyn Fn(usize) -> Ask| -> Vec<PartRequest> {
            (0..members)
                .map(|i| PartRequest::over(span.range, grouping, ask(i)))
                .collect()
        };
        let mut reached = vec![true; members];
        let above = self
            .ask_span(span, asks(&|_| Ask::Above { min: t }), until)
            .await;
        note_reached(&mut reached, first, &above);
        let items: Vec<Vec<Item>> = above
            .iter()
            .map(|p| p.as_ref().map(|p| p.items.clone()).unwrap_or_default())
            .collect();
        let candidates = Candidates::new(&items, t, usize::MAX);
        let keys_asked: Vec<Vec<String>> = (0..members)
            .map(|i| {
                let mut ask = candidates.to_ask(i);
                ask.extend(keys.iter().cloned());
                ask.sort_unstable();
                ask.dedup();
                ask
            })
            .collect();
        let counts = self
            .ask_span(
                span,
                asks(&|i| Ask::Counts {
                    keys: keys_asked[i].clone(),
                }),
                until,
            )
            .await;
        note_reached(&mut reached, first, &counts);
        if !reached.iter().all(|r| *r) {
            return None;
        }
        let mut result = Above {
            total: above.iter().flatten().map(|p| p.total_requests).sum(),
            ..Above::default()
        };
        for (i, part) in above.iter().enumerate() {
            let asked: HashSet<&str> = keys_asked[i].iter().map(String::as_str).collect();
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
