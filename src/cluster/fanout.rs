//! Asking every instance for its part, in parallel, within one deadline for
//! the whole answer; merging the parts; and saying how complete the answer
//! is (the `cluster` field of every answer).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;

use super::merge::{Candidates, threshold};
use super::part::{Ask, Item, PartReply, PartRequest, Parts, read_key};
use super::registry::{Member, Members};
use super::span::Span;
use super::{Cluster, Ownership, label};
use crate::answers::Answers;
use crate::kafka::ViewReceiver;
use crate::query::{Grouping, Range};
use crate::snapshot::Snapshot;
use crate::vocab::Network;

/// The route every instance answers its part on.
pub const PART_ROUTE: &str = "/internal/v1/part";

/// How long one answer may wait for the other instances, all rounds
/// together: an instance that has not answered by then is unreachable for
/// this answer, which is then incomplete.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// The `cluster` field of every answer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClusterField {
    pub complete: bool,
    pub instances: Vec<InstanceField>,
    pub missing: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct InstanceField {
    pub id: String,
    pub url: String,
    /// The partitions whose counts it holds.
    pub partitions: Vec<String>,
    pub reachable: bool,
    /// Of those, the ones still being rebuilt from Kafka.
    pub rebuilding: Vec<String>,
}

/// Views an instance keeps answering from after a newer one is published:
/// the rounds of one answer take milliseconds, a slide at least one batch.
pub const KEPT_VIEWS: usize = 16;

/// The views this instance answered parts from lately, numbered.
#[derive(Default)]
struct Views {
    recent: std::sync::Mutex<std::collections::VecDeque<(u64, Arc<Snapshot>)>>,
}

impl Views {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, Arc<Snapshot>)>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `view`'s number, kept from now on if it is new.
    fn newest(&self, view: Arc<Snapshot>) -> (u64, Arc<Snapshot>) {
        let mut recent = self.lock();
        if let Some((id, kept)) = recent.back()
            && Arc::ptr_eq(kept, &view)
        {
            return (*id, view);
        }
        let id = recent.back().map_or(1, |(id, _)| id + 1);
        recent.push_back((id, view.clone()));
        while recent.len() > KEPT_VIEWS {
            recent.pop_front();
        }
        (id, view)
    }

    fn find(&self, id: u64) -> Option<Arc<Snapshot>> {
        self.lock()
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.clone())
    }
}

pub struct Fanout {
    views: Views,
    /// Top lists merged lately, by question: dashboards and scrapers ask
    /// the same question many times a slide, and every instance's view
    /// changes only once a slide.
    answered: std::sync::Mutex<std::collections::HashMap<String, (Instant, Top)>>,
    /// How long a merged answer is given again: one slide.
    fresh_for: Duration,
    /// The rules leader, as the registry last saw it.
    pub leader: super::registry::Leader,
    /// On the leader: the alerts of the rules evaluated on the cluster's counts.
    pub alerts: arc_swap::ArcSwap<crate::rules::AlertsView>,
    pub cluster: Cluster,
    pub ownership: Arc<Ownership>,
    pub members: Members,
    pub(super) local: Answers,
    view: ViewReceiver,
    client: reqwest::Client,
    token: Option<String>,
}

/// A cluster-wide top list.
#[derive(Clone, Debug)]
pub struct Top {
    pub total_requests: u64,
    /// With `within`: the requests of the addresses inside the network.
    pub within_count: u64,
    pub distinct_ips: u64,
    pub distinct_networks: u64,
    pub items: Vec<Item>,
    pub exact: bool,
    pub error_bound: u64,
    pub cluster: ClusterField,
}

/// What a [`Fanout`] shares with the registry and ingest, and how it asks.
pub struct Shared {
    pub cluster: Cluster,
    pub ownership: Arc<Ownership>,
    pub members: Members,
    pub leader: super::registry::Leader,
    /// `--auth-token-file`: presented to the others.
    pub token: Option<String>,
    /// `--slide`: how long a merged answer is given again.
    pub slide: Duration,
}

impl Fanout {
    pub fn new(shared: Shared, local: Answers, view: ViewReceiver) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(DEADLINE)
            .timeout(DEADLINE)
            .build()?;
        Ok(Fanout {
            views: Views::default(),
            answered: Default::default(),
            fresh_for: shared.slide,
            leader: shared.leader,
            alerts: arc_swap::ArcSwap::default(),
            cluster: shared.cluster,
            ownership: shared.ownership,
            members: shared.members,
            local,
            view,
            client,
            token: shared.token,
        })
    }

    /// This instance's part, from the view the request names (one of the
    /// last [`KEPT_VIEWS`] it answered from), else from its newest view.
    pub async fn local_part(&self, request: PartRequest) -> Option<PartReply> {
        let (id, view) = match request.view {
            Some(id) => match self.views.find(id) {
                Some(view) => (id, view),
                None => {
                    return Some(PartReply {
                        id: self.cluster.instance_id.clone(),
                        url: self.cluster.advertise_url.clone(),
                        ..PartReply::default()
                    });
                }
            },
            None => self
                .views
                .newest(arc_swap::Guard::into_inner(self.local.now())),
        };
        let coverage = self.ownership.coverage(&view.partitions);
        // Where this instance's counts end: its window's end, or the end of
        // the newest pane it counted ahead of it (held back for a few
        // seconds after busy partitions, not to be left out of the
        // cluster's current window).
        let counted_until = view
            .ahead
            .last()
            .map_or(view.window_end, |p| p.end.max(view.window_end));
        let window_end_ms = super::part::millis(counted_until);
        let mut reply = self
            .local
            .compute(view, move |kept, merges| request.answer(kept, merges))
            .await
            .ok()?;
        reply.id = self.cluster.instance_id.clone();
        reply.url = self.cluster.advertise_url.clone();
        reply.view = Some(id);
        reply.coverage = coverage;
        reply.window_end_ms = window_end_ms;
        Some(reply)
    }

    pub(super) async fn remote_part(&self, url: &str, request: &PartRequest) -> Option<PartReply> {
        let mut asking = self.client.post(format!("{url}{PART_ROUTE}")).json(request);
        if let Some(token) = &self.token {
            asking = asking.bearer_auth(token);
        }
        let response = asking.send().await.ok()?.error_for_status().ok()?;
        response.json::<PartReply>().await.ok()
    }

    pub(super) fn roster(&self) -> Vec<Member> {
        self.members.load().members.clone()
    }

    /// `path` from the rules leader (its status and body, and its content
    /// type), with one more header when given (a bouncer's key); `None`
    /// when there is none or it does not answer in time.
    pub async fn from_leader(
        &self,
        path: &str,
        header: Option<(&str, &str)>,
    ) -> Option<(u16, String, Vec<u8>)> {
        let leader = self.leader.load().leader.clone()?;
        let mut asking = self.client.get(format!("{}{path}", leader.url));
        if let Some(token) = &self.token {
            asking = asking.bearer_auth(token);
        }
        if let Some((name, value)) = header {
            asking = asking.header(name, value);
        }
        let response = tokio::time::timeout(DEADLINE, asking.send())
            .await
            .ok()?
            .ok()?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let body = tokio::time::timeout(DEADLINE, response.bytes())
            .await
            .ok()?
            .ok()?;
        Some((status, content_type, body.to_vec()))
    }

    /// `/api/v1/offsets?scope=local` of every other instance that answers in time.
    pub async fn offsets_of_others(&self) -> Vec<serde_json::Value> {
        let until = Instant::now() + DEADLINE;
        let members = self.roster();
        let asks = members
            .iter()
            .filter(|m| m.id != self.cluster.instance_id)
            .map(|m| async move {
                let left = until.saturating_duration_since(Instant::now());
                let mut asking = self
                    .client
                    .get(format!("{}/api/v1/offsets?scope=local", m.url));
                if let Some(token) = &self.token {
                    asking = asking.bearer_auth(token);
                }
                let answer = async {
                    let response = asking.send().await.ok()?.error_for_status().ok()?;
                    response.json::<serde_json::Value>().await.ok()
                };
                tokio::time::timeout(left, answer).await.ok().flatten()
            });
        join_all(asks).await.into_iter().flatten().collect()
    }

    /// Every partition of the topics, as the Kafka monitor last saw them.
    pub fn partitions(&self) -> Option<Vec<String>> {
        let view = self.view.borrow();
        view.refreshed?;
        Some(
            view.partitions
                .iter()
                .map(|p| label(&p.topic, p.partition))
                .collect(),
        )
    }

    /// The top `n` keys of `span` over the whole cluster: exact (TPUT)
    /// when the parts are.
    pub async fn top(&self, span: &Span, grouping: Option<Grouping>, n: usize) -> Top {
        self.top_within(span, grouping, n, None).await
    }

    /// [`Fanout::top`] over the addresses inside `within` (CIDR) only.
    pub async fn top_within(
        &self,
        span: &Span,
        grouping: Option<Grouping>,
        n: usize,
        within: Option<String>,
    ) -> Top {
        let key = format!("{:?} {grouping:?} {n} {within:?}", span.range);
        if let Some((at, top)) = self.lock_answered().get(&key)
            && at.elapsed() < self.fresh_for
        {
            return top.clone();
        }
        let top = self.merge_top(span, grouping, n, within).await;
        if top.cluster.complete {
            let mut answered = self.lock_answered();
            answered.retain(|_, (at, _)| at.elapsed() < self.fresh_for);
            answered.insert(key, (Instant::now(), top.clone()));
        }
        top
    }

    fn lock_answered(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (Instant, Top)>> {
        self.answered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The three rounds of [`Fanout::top_within`].
    async fn merge_top(
        &self,
        span: &Span,
        grouping: Option<Grouping>,
        n: usize,
        within: Option<String>,
    ) -> Top {
        let until = Instant::now() + DEADLINE;
        let (range, members) = (span.range, &span.members);
        let ask_all = |ask: Ask| {
            vec![PartRequest::over(range, grouping, ask).within(within.clone()); members.len()]
        };
        let tops = self.ask_span(span, ask_all(Ask::Top { k: n }), until).await;
        let mut reached: Vec<bool> = tops.iter().map(Option::is_some).collect();
        // Later rounds read the view each instance answered round 1 from.
        let later = span.pinned_to(&tops);
        let answered = |parts: &Parts, reached: &[bool]| -> Vec<Vec<Item>> {
            parts
                .iter()
                .zip(reached)
                .map(|(p, r)| match p {
                    Some(p) if *r => p.items.clone(),
                    _ => Vec::new(),
                })
                .collect()
        };
        let t = threshold(&answered(&tops, &reached), n);
        let (above, everyone) = tokio::join!(
            self.ask_span(&later, ask_all(Ask::Above { min: t }), until),
            self.ask_span(&later, ask_all(Ask::Addresses { within: None }), until),
        );
        note_reached(&mut reached, &tops, &above);
        note_reached(&mut reached, &tops, &everyone);
        let mut candidates = Candidates::new(&answered(&above, &reached), t, n);
        let asks = (0..members.len())
            .map(|i| {
                PartRequest::over(
                    range,
                    grouping,
                    Ask::Counts {
                        keys: candidates.to_ask(i),
                    },
                )
                .within(within.clone())
            })
            .collect();
        let counts = self.ask_span(&later, asks, until).await;
        note_reached(&mut reached, &tops, &counts);
        for (i, part) in counts.iter().enumerate() {
            if let Some(part) = part.as_ref().filter(|_| reached[i]) {
                candidates.add(i, &part.items);
            }
        }
        let mut items = candidates.top(n);
        // Distinct addresses: the union of every instance's, as one
        // address's records may be counted by several.
        let addresses: BTreeSet<&str> = everyone
            .iter()
            .zip(&reached)
            .filter(|(_, r)| **r)
            .filter_map(|(p, _)| p.as_ref())
            .flat_map(|p| p.addresses.iter().map(String::as_str))
            .collect();
        let mut distinct_networks = addresses.len() as u64;
        if let Some(g) = grouping {
            let networks: Vec<(Network, usize)> = items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| read_key(&item.0).map(|n| (n, i)))
                .collect();
            let mut members_of: BTreeMap<usize, u64> = BTreeMap::new();
            let mut all = HashSet::new();
            for a in &addresses {
                let Some(ip) = crate::vocab::parse_ip(a) else {
                    continue;
                };
                all.insert(Network::of(ip, g.prefix4, g.prefix6));
                if let Some((_, i)) = networks.iter().find(|(n, _)| n.contains(ip)) {
                    *members_of.entry(*i).or_default() += 1;
                }
            }
            distinct_networks = all.len() as u64;
            for (i, item) in items.iter_mut().enumerate() {
                item.2 = members_of.get(&i).copied().unwrap_or(0);
            }
        }
        let parts: Vec<&PartReply> = tops
            .iter()
            .zip(&reached)
            .filter(|(_, r)| **r)
            .filter_map(|(p, _)| p.as_ref())
            .collect();
        Top {
            within_count: parts.iter().map(|p| p.within_count).sum(),
            total_requests: parts.iter().map(|p| p.total_requests).sum(),
            distinct_ips: addresses.len() as u64,
            distinct_networks,
            items,
            exact: parts.iter().all(|p| p.exact),
            error_bound: parts.iter().map(|p| p.error_bound).sum(),
            cluster: self.field(members, &tops, &reached),
        }
    }

    /// One address pane by pane over the cluster: the panes' counts added.
    pub async fn ip(&self, span: &Span, ip: &str) -> (Vec<(i64, i64, u64)>, bool, ClusterField) {
        let until = Instant::now() + DEADLINE;
        let members = &span.members;
        let ask = PartRequest::over(span.range, None, Ask::Ip { ip: ip.to_string() });
        let parts = self.ask_span(span, vec![ask; members.len()], until).await;
        let reached: Vec<bool> = parts.iter().map(Option::is_some).collect();
        let mut panes: BTreeMap<(i64, i64), u64> = BTreeMap::new();
        for part in parts.iter().flatten() {
            for (start, end, count) in &part.panes {
                *panes.entry((*start, *end)).or_default() += count;
            }
        }
        let exact = parts.iter().flatten().all(|p| p.exact);
        let panes = panes.into_iter().map(|((s, e), c)| (s, e, c)).collect();
        (panes, exact, self.field(members, &parts, &reached))
    }

    /// The `cluster` field alone: every instance asked for its totals.
    pub async fn coverage(&self, range: Range) -> ClusterField {
        let until = Instant::now() + DEADLINE;
        let members = self.roster();
        let ask = PartRequest::over(range, None, Ask::Totals);
        let parts = self.ask(&members, vec![ask; members.len()], until).await;
        let reached: Vec<bool> = parts.iter().map(Option::is_some).collect();
        self.field(&members, &parts, &reached)
    }

    /// How complete an answer from `parts` is: see [`complete`].
    pub(super) fn field(
        &self,
        members: &[Member],
        parts: &Parts,
        reached: &[bool],
    ) -> ClusterField {
        complete(members, parts, reached, self.partitions().as_deref())
    }
}

/// An instance answered a later round from the view of its first and
/// with the same coverage; otherwise its part is missing from this answer.
pub(super) fn note_reached(reached: &mut [bool], first: &Parts, parts: &Parts) {
    for ((r, f), p) in reached.iter_mut().zip(first).zip(parts) {
        *r &= match (f, p) {
            (Some(f), Some(p)) => {
                let names = |c: &super::Coverage| -> Vec<String> {
                    c.held.iter().map(|h| h.partition.clone()).collect()
                };
                p.view.is_some()
                    && p.view == f.view
                    && p.coverage.served == f.coverage.served
                    && names(&p.coverage) == names(&f.coverage)
            }
            _ => false,
        };
    }
}

/// The `cluster` field: complete when every partition of the topics
/// (`all`; `None`: not known yet) is held by exactly one instance that
/// answered every round, and that instance vouches for it.
pub fn complete(
    members: &[Member],
    parts: &Parts,
    reached: &[bool],
    all: Option<&[String]>,
) -> ClusterField {
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    let mut served: HashSet<&str> = HashSet::new();
    let mut instances = Vec::with_capacity(members.len());
    for ((member, part), reached) in members.iter().zip(parts).zip(reached) {
        let part = part.as_ref().filter(|_| *reached);
        let (partitions, rebuilding) = match part {
            Some(p) => {
                for h in &p.coverage.held {
                    *holders.entry(h.partition.as_str()).or_default() += 1;
                }
                served.extend(p.coverage.served.iter().map(String::as_str));
                (
                    p.coverage
                        .held
                        .iter()
                        .map(|h| h.partition.clone())
                        .collect(),
                    p.coverage
                        .held
                        .iter()
                        .filter(|h| h.rebuilding)
                        .map(|h| h.partition.clone())
                        .collect(),
                )
            }
            None => (member.partitions.clone(), Vec::new()),
        };
        instances.push(InstanceField {
            id: part.map_or_else(|| member.id.clone(), |p| p.id.clone()),
            url: member.url.clone(),
            partitions,
            reachable: part.is_some(),
            rebuilding,
        });
    }
    let Some(all) = all else {
        return ClusterField {
            complete: false,
            instances,
            missing: Vec::new(),
        };
    };
    let missing: Vec<String> = all
        .iter()
        .filter(|p| holders.get(p.as_str()) != Some(&1) || !served.contains(p.as_str()))
        .cloned()
        .collect();
    ClusterField {
        complete: missing.is_empty() && !all.is_empty(),
        instances,
        missing,
    }
}

/// Parts for the cluster's unit tests.
#[cfg(test)]
pub(super) use tests::{member, part};

#[cfg(test)]
mod tests {
    use super::super::{Coverage, HeldView};
    use super::*;

    pub(in crate::cluster) fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            url: format!("http://{id}"),
            partitions: vec![],
        }
    }

    /// A part holding `held`, of which it serves `served` (the others are
    /// being rebuilt).
    pub(in crate::cluster) fn part(held: &[&str], served: &[&str]) -> Option<PartReply> {
        Some(PartReply {
            coverage: Coverage {
                held: held
                    .iter()
                    .map(|p| HeldView {
                        partition: p.to_string(),
                        rebuilding: !served.contains(p),
                        progress: 1.0,
                        position: 0,
                        target: 0,
                    })
                    .collect(),
                served: served.iter().map(|s| s.to_string()).collect(),
                doubt: None,
            },
            ..PartReply::default()
        })
    }

    #[test]
    fn complete_only_when_every_partition_is_served_by_exactly_one_instance() {
        let all: Vec<String> = ["t/0", "t/1"].iter().map(|s| s.to_string()).collect();
        let members = vec![member("a"), member("b")];
        let ok = complete(
            &members,
            &vec![part(&["t/0"], &["t/0"]), part(&["t/1"], &["t/1"])],
            &[true, true],
            Some(&all),
        );
        assert!(ok.complete, "{ok:?}");
        // Rebuilding.
        let f = complete(
            &members,
            &vec![part(&["t/0"], &["t/0"]), part(&["t/1"], &[])],
            &[true, true],
            Some(&all),
        );
        assert_eq!(
            (f.complete, f.missing.clone()),
            (false, vec!["t/1".to_string()])
        );
        assert_eq!(f.instances[1].rebuilding, vec!["t/1".to_string()]);
        // Unreachable.
        let f = complete(
            &members,
            &vec![part(&["t/0"], &["t/0"]), None],
            &[true, false],
            Some(&all),
        );
        assert!(!f.complete && !f.instances[1].reachable);
        // Held twice: counts could be doubled.
        let f = complete(
            &members,
            &vec![part(&["t/0", "t/1"], &["t/0"]), part(&["t/1"], &["t/1"])],
            &[true, true],
            Some(&all),
        );
        assert_eq!(f.missing, vec!["t/1".to_string()]);
        // The topic's partitions not known yet.
        assert!(
            !complete(
                &members,
                &vec![part(&["t/0"], &["t/0"]), part(&["t/1"], &["t/1"])],
                &[true, true],
                None
            )
            .complete
        );
    }
}
