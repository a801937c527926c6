//! One round of a cluster answer: a request asked of every instance at
//! once, within the answer's deadline; from each instance's newest view, or
//! from the views of a [`Span`].

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::fanout::{DEADLINE, Fanout};
use super::part::{Ask, PartReply, PartRequest, Parts, time_of};
use super::registry::Member;
use super::span::{Span, newest_end_ms};
use crate::query::Range;

impl Fanout {
    /// `requests[i]` asked of `members[i]`, all at once, until `until`.
    pub(super) async fn ask(
        &self,
        members: &[Member],
        requests: Vec<PartRequest>,
        until: Instant,
    ) -> Parts {
        let asks = members
            .iter()
            .zip(requests)
            .map(|(m, request)| self.ask_one(m, request, until));
        join_all(asks).await
    }

    /// `request` asked of `member` (this instance answers it here), until `until`.
    pub(super) async fn ask_one(
        &self,
        member: &Member,
        request: PartRequest,
        until: Instant,
    ) -> Option<PartReply> {
        let left = until.saturating_duration_since(Instant::now());
        let part = async {
            if member.id == self.cluster.instance_id {
                self.local_part(request).await
            } else {
                self.remote_part(&member.url, &request).await
            }
        };
        tokio::time::timeout(left, part).await.ok().flatten()
    }

    /// `range` asked of every instance known now, each from its newest view.
    pub fn over(&self, range: Range) -> Span {
        Span {
            range,
            members: self.roster(),
            first: None,
        }
    }

    /// The cluster's current window of `length`: it ends where the newest
    /// view of the instances that count something ends (`local` when none
    /// answers), and every round of the answer reads those views.
    pub async fn current(&self, local: Range, length: Duration) -> Span {
        let members = self.roster();
        let ask = PartRequest::over(local, None, Ask::Totals);
        let until = Instant::now() + DEADLINE;
        let first = self.ask(&members, vec![ask; members.len()], until).await;
        let end = newest_end_ms(&first).map_or(local.end, time_of);
        Span {
            range: Range::ending(end, length),
            members,
            first: Some(first),
        }
    }

    /// `requests[i]` asked of the span's member `i`, pinned to its view
    /// (see [`Span::pin`]): a part answered from another view is missing.
    pub(super) async fn ask_span(
        &self,
        span: &Span,
        requests: Vec<PartRequest>,
        until: Instant,
    ) -> Parts {
        let asks = span.members.iter().zip(requests).enumerate().map(
            |(i, (member, request))| async move {
                let request = span.pin(i, request)?;
                let view = request.view;
                let part = self.ask_one(member, request, until).await?;
                (view.is_none() || part.view == view).then_some(part)
            },
        );
        join_all(asks).await
    }
}
