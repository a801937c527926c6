//! `--cluster`: answers that cover every instance, and the route on which
//! each instance gives its part ([`crate::cluster::fanout::PART_ROUTE`]).
//!
//! Each handler of the contract's routes asks here first: with `--cluster`
//! and without `?scope=local`, the answer is merged from every instance's
//! part and carries the `cluster` field; otherwise the handler answers from
//! this instance as before.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::adhoc::{self, Asked};
use super::problem::Problem;
use super::views::{
    AsnView, Exactness, IpView, NetworkTopView, OwnerItem, OwnerTopView, PaneCount, TopView,
    WindowView, rfc3339,
};
use crate::cluster::fanout::{ClusterField, Fanout, complete};
use crate::cluster::part::{PartReply, PartRequest, read_key, time_of};
use crate::cluster::registry::Member;
use crate::cluster::span::Span;
use crate::owners::OwnerKind;
use crate::query::owners::OwnerCount;
use crate::query::{Grouping, NetworkCount, Range};
use crate::snapshot::Snapshot;
use crate::vocab::{IpKey, parse_ip};

/// `?scope=`: `cluster` (the default) or `local`.
pub fn local_scope(scope: Option<&str>) -> Result<bool, Problem> {
    match scope {
        None | Some("cluster") => Ok(false),
        Some("local") => Ok(true),
        Some(other) => Err(Problem::bad_request(format!(
            "scope must be cluster or local, got {other:?}"
        ))),
    }
}

/// The fan-out, when this answer is to cover the cluster.
pub fn fanout(state: &AppState, scope: Option<&str>) -> Result<Option<Arc<Fanout>>, Problem> {
    let local = local_scope(scope)?;
    Ok(state.cluster.clone().filter(|_| !local))
}

/// An answer with the `cluster` field appended.
#[derive(Serialize)]
struct WithCluster<T: Serialize> {
    #[serde(flatten)]
    answer: T,
    cluster: ClusterField,
}

fn json<T: Serialize>(answer: T, cluster: ClusterField) -> Response {
    let body = serde_json::to_vec(&WithCluster { answer, cluster }).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `POST /internal/v1/part`: this instance's part of a cluster answer.
pub async fn part(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<PartReply>, Problem> {
    let Some(fanout) = &state.cluster else {
        return Err(Problem::not_found(
            "this instance runs without --cluster: it has no part to give",
        ));
    };
    let request: PartRequest = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("the body is not a part request: {e}")))?;
    let reply = fanout
        .local_part(request)
        .await
        .ok_or_else(|| Problem::unavailable("the query workers are gone"))?;
    Ok(Json(reply))
}

/// What an answer covers: the range asked, else the cluster's current
/// window (ending where the instance with the newest data ends it; this
/// instance's own window may end sooner), read from the views that set
/// its end.
async fn span_of(
    state: &AppState,
    fanout: &Fanout,
    snapshot: &Snapshot,
    asked: &Asked<'_>,
) -> Result<Span, Problem> {
    if asked.window.is_none() && asked.end.is_none() {
        let local = Range {
            start: snapshot.window_start,
            end: snapshot.window_end,
        };
        return Ok(fanout.current(local, snapshot.window_length).await);
    }
    Ok(fanout.over(adhoc::range(state, snapshot, asked)?))
}

fn window_of(range: Range, snapshot: &Snapshot) -> WindowView {
    WindowView::new(
        range.start,
        range.end,
        range.end.duration_since(range.start).unwrap_or_default(),
        snapshot.slide,
    )
}

/// `/api/v1/top` over the cluster.
pub async fn top(
    state: &AppState,
    fanout: &Fanout,
    snapshot: &Snapshot,
    asked: &Asked<'_>,
    n: usize,
) -> Result<Response, Problem> {
    let span = span_of(state, fanout, snapshot, asked).await?;
    let range = span.range;
    let grouping = adhoc::grouping(asked)?;
    let top = fanout.top(&span, grouping, n).await;
    let exactness = Exactness::of(!top.exact, top.error_bound, !top.exact);
    let window = window_of(range, snapshot);
    let distinct = usize::try_from(top.distinct_ips).unwrap_or(usize::MAX);
    Ok(match grouping {
        None => {
            let items: Vec<(IpKey, u64)> = top
                .items
                .iter()
                .filter_map(|(k, c, _)| parse_ip(k).map(|ip| (ip, *c)))
                .collect();
            json(
                TopView::new(window, top.total_requests, distinct, &items, exactness),
                top.cluster,
            )
        }
        Some(g) => {
            let items: Vec<NetworkCount> = top
                .items
                .iter()
                .filter_map(|(k, c, d)| {
                    read_key(k).map(|network| NetworkCount {
                        network,
                        count: *c,
                        distinct_ips: *d,
                    })
                })
                .collect();
            let networks = usize::try_from(top.distinct_networks).unwrap_or(usize::MAX);
            json(
                NetworkTopView::new(
                    window,
                    top.total_requests,
                    distinct,
                    Grouping { ..g },
                    (items, networks),
                    exactness,
                ),
                top.cluster,
            )
        }
    })
}

/// `/api/v1/top?group=asn|country` over the cluster.
pub async fn owners(
    state: &AppState,
    fanout: &Fanout,
    snapshot: &Snapshot,
    asked: &Asked<'_>,
    kind: OwnerKind,
    n: usize,
) -> Result<Response, Problem> {
    let span = span_of(state, fanout, snapshot, asked).await?;
    let range = span.range;
    let owned = fanout.owners(&span, kind, n).await;
    let exactness = Exactness::of(!owned.exact, owned.error_bound, !owned.exact);
    let names = state.sources.owners.as_deref();
    Ok(json(
        OwnerTopView {
            window: window_of(range, snapshot),
            total_requests: owned.total_requests,
            distinct_ips: usize::try_from(owned.distinct_ips).unwrap_or(usize::MAX),
            group: kind.name(),
            distinct_owners: owned.owners,
            top: owned
                .top
                .iter()
                .map(|&(key, count, distinct_ips)| {
                    let owner = OwnerCount {
                        key,
                        count,
                        distinct_ips,
                    };
                    OwnerItem::new(kind, &owner, &exactness, names)
                })
                .collect(),
            exactness,
        },
        owned.cluster,
    ))
}

/// `/api/v1/asns/{asn}` over the cluster.
pub async fn asn(
    state: &AppState,
    fanout: &Fanout,
    snapshot: &Snapshot,
    asked: &Asked<'_>,
    asn: u32,
    n: usize,
) -> Result<Response, Problem> {
    let span = span_of(state, fanout, snapshot, asked).await?;
    let range = span.range;
    let owned = fanout.asn(&span, asn, n).await;
    // A summarized pane's members are not all known: the count is, within
    // no bound an instance can give here.
    let exactness = if owned.exact {
        Exactness::EXACT
    } else {
        Exactness::of(true, 0, true)
    };
    Ok(json(
        AsnView::new(
            asn,
            state.sources.owners.as_deref(),
            window_of(range, snapshot),
            owned.members,
            exactness,
        ),
        owned.cluster,
    ))
}

/// `/api/v1/networks/{cidr}` over the cluster: the network's requests, its
/// distinct addresses (the union of every instance's) and its top `n`
/// addresses (TPUT over the addresses inside it).
pub async fn network(
    state: &AppState,
    fanout: &Fanout,
    snapshot: &Snapshot,
    asked: &Asked<'_>,
    network: crate::vocab::Network,
    n: usize,
) -> Result<Response, Problem> {
    let span = span_of(state, fanout, snapshot, asked).await?;
    let range = span.range;
    let top = fanout
        .top_within(&span, None, n, Some(network.to_string()))
        .await;
    let exactness = Exactness::of(!top.exact, top.error_bound, !top.exact);
    let items: Vec<(IpKey, u64)> = top
        .items
        .iter()
        .filter_map(|(k, c, _)| parse_ip(k).map(|ip| (ip, *c)))
        .collect();
    Ok(json(
        adhoc::NetworkView {
            network: network.to_string(),
            window: window_of(range, snapshot),
            count: exactness.counted(top.within_count),
            distinct_ips: top.distinct_ips,
            top: adhoc::ip_counts(items, &exactness),
            exactness,
        },
        top.cluster,
    ))
}

/// `/api/v1/ips/{ip}` over the cluster.
pub async fn ip(
    state: &AppState,
    fanout: &Fanout,
    snapshot: &Snapshot,
    asked: &Asked<'_>,
    ip: IpKey,
) -> Result<Response, Problem> {
    let span = span_of(state, fanout, snapshot, asked).await?;
    let range = span.range;
    let (panes, exact, cluster) = fanout.ip(&span, &ip.to_string()).await;
    let exactness = if exact {
        Exactness::EXACT
    } else {
        Exactness::of(true, 0, true)
    };
    let count: u64 = panes.iter().map(|p| p.2).sum();
    Ok(json(
        IpView {
            exactness,
            ip: ip.to_string(),
            count: exactness.counted(count),
            window: window_of(range, snapshot),
            panes: panes
                .into_iter()
                .map(|(start, end, count)| PaneCount {
                    start: rfc3339(time_of(start)),
                    end: rfc3339(time_of(end)),
                    count: u32::try_from(count).unwrap_or(u32::MAX),
                })
                .collect(),
        },
        cluster,
    ))
}

/// An answer from this instance alone (`?scope=local`, and the answers
/// not yet merged across instances) with the `cluster` field that says
/// so: complete only when this instance serves every partition.
pub async fn with_field<T: Serialize>(
    state: &AppState,
    snapshot: &Snapshot,
    answer: T,
) -> Response {
    let Some(fanout) = &state.cluster else {
        return Json(answer).into_response();
    };
    let range = Range {
        start: snapshot.window_start,
        end: snapshot.window_end,
    };
    json(answer, local_field(fanout, range).await)
}

/// The `cluster` field of an answer from this instance alone.
async fn local_field(fanout: &Fanout, range: Range) -> ClusterField {
    let me = Member {
        id: fanout.cluster.instance_id.clone(),
        url: fanout.cluster.advertise_url.clone(),
        partitions: Vec::new(),
    };
    let part = fanout
        .local_part(PartRequest::over(
            range,
            None,
            crate::cluster::part::Ask::Totals,
        ))
        .await;
    let all = fanout.partitions();
    complete(&[me], &vec![part], &[true], all.as_deref())
}

/// `/api/v1/offsets` over the cluster: every instance's partitions.
pub async fn offsets(state: &AppState, fanout: &Fanout, local: Value) -> Response {
    let snapshot = state.answers.now();
    let range = Range {
        start: snapshot.window_start,
        end: snapshot.window_end,
    };
    let (others, field) = tokio::join!(fanout.offsets_of_others(), fanout.coverage(range));
    let mut answer = local;
    if let Some(Value::Array(partitions)) = answer.get_mut("partitions") {
        for other in others {
            if let Some(Value::Array(more)) = other.get("partitions") {
                partitions.extend(more.iter().cloned());
            }
        }
        partitions.sort_by(|a, b| {
            let key = |v: &Value| {
                (
                    v.get("topic")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    v.get("partition").and_then(Value::as_i64).unwrap_or(0),
                )
            };
            key(a).cmp(&key(b))
        });
    }
    json(answer, field)
}

/// A rendered answer of this instance alone (`?scope=local`, and the
/// answers not merged across instances) with the `cluster` field that says
/// so: complete only when this instance serves every partition.
pub async fn local_answer(state: &AppState, response: Response) -> Response {
    let Some(fanout) = &state.cluster else {
        return response;
    };
    if !response.status().is_success() {
        return response;
    }
    let Ok(bytes) = axum::body::to_bytes(response.into_body(), usize::MAX).await else {
        return Problem::unavailable("the answer could not be read back").into_response();
    };
    let Ok(answer) = serde_json::from_slice::<Value>(&bytes) else {
        return Problem::unavailable("the answer could not be read back").into_response();
    };
    let snapshot = state.answers.now();
    let range = Range {
        start: snapshot.window_start,
        end: snapshot.window_end,
    };
    json(answer, local_field(fanout, range).await)
}

/// `/api/v1/status` with `--cluster`: who this instance is, what it holds
/// (with each rebuild's progress) and the instances it knows.
#[derive(Serialize)]
pub struct StatusWithCluster<T: Serialize> {
    #[serde(flatten)]
    pub status: T,
    pub cluster: ClusterStatus,
}

#[derive(Serialize)]
pub struct ClusterStatus {
    pub instance_id: String,
    pub url: String,
    #[serde(flatten)]
    pub coverage: crate::cluster::Coverage,
    pub rebalances: u64,
    pub instances: Vec<Member>,
    /// The instance that evaluates the rules on the cluster's counts (with
    /// ZooKeeper), and whether it is this one.
    pub rules_leader: Option<String>,
    pub is_rules_leader: bool,
}

pub fn status_of(fanout: &Fanout, snapshot: &Snapshot) -> ClusterStatus {
    ClusterStatus {
        instance_id: fanout.cluster.instance_id.clone(),
        url: fanout.cluster.advertise_url.clone(),
        coverage: fanout.ownership.coverage(&snapshot.partitions),
        rebalances: fanout.ownership.rebalances(),
        instances: fanout.members.load().members.clone(),
        rules_leader: fanout.leader.load().leader.as_ref().map(|m| m.id.clone()),
        is_rules_leader: fanout.leader.load().me,
    }
}

/// With `--cluster` and another instance as the rules leader: its answer
/// to `path` (with `header`, a bouncer's key say), as it gave it. `None`:
/// answer here (this instance leads, none is known, or it did not answer).
pub async fn leader_answer(
    state: &AppState,
    path: &str,
    header: Option<(&str, &str)>,
) -> Option<Response> {
    let fanout = state.cluster.as_ref()?;
    let leadership = fanout.leader.load();
    if leadership.me || leadership.leader.is_none() {
        return None;
    }
    let (status, content_type, body) = fanout.from_leader(path, header).await?;
    let status = axum::http::StatusCode::from_u16(status).ok()?;
    let content_type = axum::http::HeaderValue::from_str(&content_type).ok()?;
    Some((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}
