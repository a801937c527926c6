//! What one cluster answer is asked over: its range, the instances asked,
//! and (for the cluster's current window) the view each one answers from.
//!
//! The current window ends where the newest view of the instances that
//! count something ends, which takes a round of its own. Every later round
//! of the answer reads the views of that round: an instance that finished a
//! rebuild in between would otherwise answer from a newer view, whose
//! counts can run past the range's end, while saying it covers its
//! partitions. The answer would be called complete and be short.

use std::time::Duration;

use super::part::{PartRequest, Parts};
use super::registry::Member;
use crate::query::Range;

/// A range, whom to ask, and from which view (see the module's description).
#[derive(Clone, Debug)]
pub struct Span {
    pub range: Range,
    pub(super) members: Vec<Member>,
    /// The round that set the range's end, one part per member; `None`
    /// when every member answers from its newest view (a range asked for).
    pub(super) first: Option<Parts>,
}

impl Span {
    /// The same instances and views over the `length` ending where this
    /// span ends.
    pub fn ending(&self, length: Duration) -> Span {
        Span {
            range: Range::ending(self.range.end, length),
            ..self.clone()
        }
    }

    /// The same range and instances, each pinned to the view it answered
    /// `round` from: the later rounds of an answer read what its first did.
    pub(super) fn pinned_to(&self, round: &Parts) -> Span {
        Span {
            range: self.range,
            members: self.members.clone(),
            first: Some(round.clone()),
        }
    }

    /// What member `i` is asked: `request`, pinned to its view of the first
    /// round; `None` when it did not answer that round (it is then missing
    /// from the answer, not asked again).
    pub(super) fn pin(&self, i: usize, request: PartRequest) -> Option<PartRequest> {
        match &self.first {
            None => Some(request),
            Some(first) => {
                let view = first.get(i)?.as_ref()?.view?;
                Some(request.pinned(Some(view)))
            }
        }
    }
}

/// The newest end of counts (a window's end, or that of a pane counted
/// ahead of it) among the parts whose instances count something:
/// an instance holding nothing, or nothing counted yet, has no window of
/// its own.
pub fn newest_end_ms(parts: &Parts) -> Option<i64> {
    parts
        .iter()
        .flatten()
        .filter(|p| !p.coverage.served.is_empty())
        .map(|p| p.window_end_ms)
        .max()
}

#[cfg(test)]
mod tests {
    use super::super::fanout::member;
    use super::super::part::{Ask, PartReply};
    use super::*;
    use std::time::SystemTime;

    /// A part from view `view` whose window ends at `end_ms`, serving `served`.
    fn part(view: Option<u64>, served: &[&str], end_ms: i64) -> Option<PartReply> {
        super::super::fanout::part(served, served).map(|p| PartReply {
            view,
            window_end_ms: end_ms,
            ..p
        })
    }

    fn request() -> PartRequest {
        let now = SystemTime::now();
        PartRequest::over(
            Range::ending(now, Duration::from_secs(60)),
            None,
            Ask::Totals,
        )
    }

    #[test]
    fn the_current_window_ends_with_the_newest_view_that_counts_something() {
        // `b` is rebuilding (serves nothing): its window does not set the end.
        let parts = vec![
            part(Some(3), &["t/0"], 1_000),
            part(Some(9), &[], 5_000),
            None,
            part(Some(1), &["t/1"], 2_000),
        ];
        assert_eq!(newest_end_ms(&parts), Some(2_000));
        assert_eq!(newest_end_ms(&vec![part(Some(1), &[], 9), None]), None);
    }

    #[test]
    fn every_round_reads_the_views_that_set_the_end() {
        let span = Span {
            range: request().range(),
            members: vec![member("a"), member("b"), member("c")],
            first: Some(vec![part(Some(7), &["t/0"], 1), None, part(None, &[], 0)]),
        };
        // Pinned to the view of the first round.
        assert_eq!(span.pin(0, request()).and_then(|r| r.view), Some(7));
        // Not answered, or answered from no view: not asked again.
        assert!(span.pin(1, request()).is_none());
        assert!(span.pin(2, request()).is_none());
        assert!(span.pin(3, request()).is_none());
        // The same views over a shorter range ending at the same end.
        let shorter = span.ending(Duration::from_secs(5));
        assert_eq!(shorter.range.end, span.range.end);
        assert_eq!(
            shorter.range.end.duration_since(shorter.range.start).ok(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(shorter.pin(0, request()).and_then(|r| r.view), Some(7));
        // A range asked for: every member from its newest view.
        let asked = Span {
            first: None,
            ..span
        };
        assert_eq!(asked.pin(1, request()).map(|r| r.view), Some(None));
        // Its later rounds: pinned to the views its first round read.
        let later = asked.pinned_to(&vec![part(Some(5), &["t/0"], 1), None, None]);
        assert_eq!(later.range.end, asked.range.end);
        assert_eq!(later.pin(0, request()).and_then(|r| r.view), Some(5));
        assert!(later.pin(1, request()).is_none());
    }
}
