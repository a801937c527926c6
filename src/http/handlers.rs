//! Route handlers: each asks [`crate::answers::Answers`] and renders what it hears.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};

use super::AppState;
use super::adhoc::{self, Asked};
use super::cluster;
use super::problem::{Params, PathParam, Problem};
use super::views::{
    CheckpointView, DashboardAlerts, EventView, Exactness, HistoryView, IpView, KafkaView,
    MemoryView, OffsetsView, PaneCount, PartitionView, ResetView, StartView, StatusView, StoreView,
    TimeView, TopView, WindowView, rfc3339,
};
use crate::answers::Question;
use crate::config::MAX_TOP_N;
use crate::offsets::committed::{StoreState, StoreStatus};
use crate::owners::OwnerKind;
use crate::snapshot::Snapshot;
use crate::vocab::{Health, Network, Origin, SkipReason, parse_ip};

const DEFAULT_TOP_N: usize = 10;

#[derive(Deserialize)]
pub struct TopQuery {
    n: Option<String>,
    scope: Option<String>,
    window: Option<String>,
    end: Option<String>,
    prefix4: Option<String>,
    prefix6: Option<String>,
    group: Option<String>,
}

impl TopQuery {
    fn asked(&self) -> Asked<'_> {
        Asked {
            window: self.window.as_deref(),
            end: self.end.as_deref(),
            prefix4: self.prefix4.as_deref(),
            prefix6: self.prefix6.as_deref(),
        }
    }
}

/// `window` and `end` of `/api/v1/ips/{ip}` and `/api/v1/networks/{cidr}`.
#[derive(Deserialize)]
pub struct RangeQuery {
    n: Option<String>,
    scope: Option<String>,
    window: Option<String>,
    end: Option<String>,
}

impl RangeQuery {
    fn asked(&self) -> Asked<'_> {
        Asked {
            window: self.window.as_deref(),
            end: self.end.as_deref(),
            ..Asked::default()
        }
    }
}

/// `n`: absent means [`DEFAULT_TOP_N`]; else 1 to `max`.
fn parse_n(text: Option<&str>, max: usize) -> Result<usize, Problem> {
    match text {
        None => Ok(DEFAULT_TOP_N),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "n must be an integer from 1 to {max}, got {text:?}"
                ))
            }),
    }
}

pub async fn top(
    State(state): State<AppState>,
    Params(query): Params<TopQuery>,
) -> Result<Response, Problem> {
    let n = parse_n(query.n.as_deref(), MAX_TOP_N)?;
    let snapshot = state.answers.now();
    let asked = query.asked();
    if let Some(group) = query.group.as_deref() {
        let fanout = cluster::fanout(&state, query.scope.as_deref())?;
        let kind = owner_kind(&state, group, &asked)?;
        if let Some(fanout) = fanout {
            return cluster::owners(&state, &fanout, &snapshot, &asked, kind, n).await;
        }
        let question = Question::Owners {
            range: adhoc::range(&state, &snapshot, &asked)?,
            kind,
            n,
        };
        let answer = adhoc::answer(&state, arc_swap::Guard::into_inner(snapshot), question).await?;
        return Ok(cluster::local_answer(&state, answer).await);
    }
    if let Some(fanout) = cluster::fanout(&state, query.scope.as_deref())? {
        return cluster::top(&state, &fanout, &snapshot, &asked, n).await;
    }
    if state.cluster.is_some() {
        // ?scope=local: this instance's own counts, said to be so.
        let question = Question::Top {
            range: adhoc::range(&state, &snapshot, &asked)?,
            grouping: adhoc::grouping(&asked)?,
            n,
        };
        let answer = adhoc::answer(&state, arc_swap::Guard::into_inner(snapshot), question).await?;
        return Ok(cluster::local_answer(&state, answer).await);
    }
    if !asked.is_default() {
        let question = Question::Top {
            range: adhoc::range(&state, &snapshot, &asked)?,
            grouping: adhoc::grouping(&asked)?,
            n,
        };
        return adhoc::answer(&state, arc_swap::Guard::into_inner(snapshot), question).await;
    }
    // Dashboards and scrapers ask the same question many times per slide.
    let body = state.renders.of(&snapshot).top.get_or_render(n, || {
        serde_json::to_vec(&TopView::of(&snapshot, n))
            .unwrap_or_default()
            .into()
    });
    Ok(([(header::CONTENT_TYPE, JSON)], body).into_response())
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `group`: `asn` or `country` (400 otherwise); 404 beside `prefix4` /
/// `prefix6` (well formed, but no answer is grouped both ways) and when the
/// database it needs is not loaded.
fn owner_kind(state: &AppState, group: &str, asked: &Asked<'_>) -> Result<OwnerKind, Problem> {
    let kind = OwnerKind::parse(group).ok_or_else(|| {
        Problem::bad_request(format!("group must be asn or country, got {group:?}"))
    })?;
    if asked.prefix4.is_some() || asked.prefix6.is_some() {
        return Err(Problem::not_found(
            "no answer is grouped both by owner (group) and by network (prefix4/prefix6): ask for one of them",
        ));
    }
    has_database(state, kind)?;
    Ok(kind)
}

/// 404 naming the option when the database `kind` needs is not loaded.
fn has_database(state: &AppState, kind: OwnerKind) -> Result<(), Problem> {
    if state.sources.owners.as_ref().is_some_and(|o| o.has(kind)) {
        Ok(())
    } else {
        Err(Problem::not_found(format!(
            "no {} database is loaded: start ipstats with {} <FILE>",
            kind.name(),
            kind.option()
        )))
    }
}

/// `/api/v1/asns/{asn}`: one autonomous system over a range: its count,
/// distinct addresses, top addresses and networks.
pub async fn asn(
    State(state): State<AppState>,
    PathParam(text): PathParam<String>,
    Params(query): Params<RangeQuery>,
) -> Result<Response, Problem> {
    let digits = text
        .strip_prefix("AS")
        .or_else(|| text.strip_prefix("as"))
        .unwrap_or(&text);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::bad_request(format!(
            "{text:?} is not an AS number (16509 or AS16509)"
        )));
    }
    // Well formed, but past the largest AS number: no such AS.
    let asn = digits.parse::<u32>().map_err(|_| {
        Problem::not_found(format!(
            "{text:?} names no autonomous system: AS numbers go up to 4294967295"
        ))
    })?;
    let n = parse_n(query.n.as_deref(), MAX_TOP_N)?;
    let fanout = cluster::fanout(&state, query.scope.as_deref())?;
    has_database(&state, OwnerKind::Asn)?;
    let snapshot = state.answers.now();
    if let Some(fanout) = fanout {
        return cluster::asn(&state, &fanout, &snapshot, &query.asked(), asn, n).await;
    }
    let question = Question::Asn {
        range: adhoc::range(&state, &snapshot, &query.asked())?,
        asn,
        n,
    };
    let answer = adhoc::answer(&state, arc_swap::Guard::into_inner(snapshot), question).await?;
    Ok(cluster::local_answer(&state, answer).await)
}

pub async fn ip(
    State(state): State<AppState>,
    PathParam(text): PathParam<String>,
    Params(query): Params<RangeQuery>,
) -> Result<Response, Problem> {
    let ip = parse_ip(&text)
        .ok_or_else(|| Problem::bad_request(format!("{text:?} is not an IPv4 or IPv6 address")))?;
    let snapshot = state.answers.now();
    let asked = query.asked();
    if let Some(fanout) = cluster::fanout(&state, query.scope.as_deref())? {
        return cluster::ip(&state, &fanout, &snapshot, &asked, ip).await;
    }
    if state.cluster.is_some() {
        let question = Question::Ip {
            range: adhoc::range(&state, &snapshot, &asked)?,
            ip,
        };
        let answer = adhoc::answer(&state, arc_swap::Guard::into_inner(snapshot), question).await?;
        return Ok(cluster::local_answer(&state, answer).await);
    }
    if !asked.is_default() {
        let question = Question::Ip {
            range: adhoc::range(&state, &snapshot, &asked)?,
            ip,
        };
        return adhoc::answer(&state, arc_swap::Guard::into_inner(snapshot), question).await;
    }
    let exactness = Exactness::of_window(&snapshot);
    Ok(Json(IpView {
        exactness,
        ip: ip.to_string(),
        count: exactness.counted(snapshot.count(ip)),
        window: WindowView::of(&snapshot),
        panes: snapshot
            .panes
            .iter()
            .map(|p| PaneCount {
                start: rfc3339(p.start),
                end: rfc3339(p.end),
                count: p.count(ip),
            })
            .collect(),
    })
    .into_response())
}

/// One network's requests, distinct addresses and top addresses over the
/// current window or any kept range.
pub async fn network(
    State(state): State<AppState>,
    PathParam(text): PathParam<String>,
    Params(query): Params<RangeQuery>,
) -> Result<Response, Problem> {
    let network = match Network::parse(&text) {
        Some(network) => network,
        // Well formed, but no network is written so: not found.
        None => match Network::enclosing(&text) {
            Some(enclosing) => {
                return Err(Problem::not_found(format!(
                    "{text:?} has bits set past its prefix, so it names no network: did you mean {enclosing}?"
                )));
            }
            None => {
                return Err(Problem::bad_request(format!(
                    "{text:?} is not a network in CIDR form (203.0.113.0/24, 2001:db8::/64)"
                )));
            }
        },
    };
    let n = parse_n(query.n.as_deref(), MAX_TOP_N)?;
    let snapshot = state.answers.now();
    if let Some(fanout) = cluster::fanout(&state, query.scope.as_deref())? {
        return cluster::network(&state, &fanout, &snapshot, &query.asked(), network, n).await;
    }
    let question = Question::Network {
        range: adhoc::range(&state, &snapshot, &query.asked())?,
        network,
        n,
    };
    let answer = adhoc::answer(&state, arc_swap::Guard::into_inner(snapshot), question).await?;
    Ok(cluster::local_answer(&state, answer).await)
}

fn offsets_view(state: &AppState, snapshot: &Snapshot) -> OffsetsView {
    let committed = &state.sources.committed;
    OffsetsView {
        group: state.info.group.clone(),
        partitions: snapshot
            .partitions
            .iter()
            .map(|p| PartitionView {
                topic: p.topic.to_string(),
                partition: p.partition,
                from_offset: p.from_offset,
                until_offset: p.until_offset,
                committed_zookeeper: committed.zookeeper.get(&p.topic, p.partition),
                committed_kafka: committed.kafka.get(&p.topic, p.partition),
                log_start: p.log_start,
                log_end: p.log_end,
                lag: p.lag(),
                lag_seconds: p.lag_seconds,
                newest_event_time: p.newest_event_ms.map(|ms| {
                    rfc3339(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
                    )
                }),
                records_late: p.records_late,
                last_reset: p.last_reset.as_ref().map(|r| ResetView {
                    reason: r.reason.as_str(),
                    stored_offset: r.stored,
                    stored_in: r.origin.map(Origin::as_str),
                    reset_to: r.start,
                    log_start: r.log_start,
                    log_end: r.log_end,
                    records_lost: r.lost,
                    at: rfc3339(r.at),
                }),
                start: StartView {
                    offset: p.started.offset,
                    from: p.started.from.as_str(),
                    note: p.started.note.clone(),
                },
            })
            .collect(),
    }
}

#[derive(Deserialize)]
pub struct ScopeQuery {
    scope: Option<String>,
}

pub async fn offsets(
    State(state): State<AppState>,
    Params(query): Params<ScopeQuery>,
) -> Result<Response, Problem> {
    let snapshot = state.answers.now();
    let view = offsets_view(&state, &snapshot);
    if let Some(fanout) = cluster::fanout(&state, query.scope.as_deref())? {
        let local = serde_json::to_value(&view).unwrap_or_default();
        return Ok(cluster::offsets(&state, &fanout, local).await);
    }
    Ok(cluster::with_field(&state, &snapshot, view).await)
}

fn store_view(store: &StoreStatus, connect: Option<String>) -> StoreView {
    StoreView {
        state: store.state().as_str(),
        connect,
        last_error: store.last_error(),
        last_commit_age_seconds: store.commit_age().map(|d| d.as_secs_f64()),
    }
}

/// Which time the window runs on and how fresh its answer is: with event
/// time, the window's end is the data's time and the lag is the wall clock
/// minus it.
fn time_view(state: &AppState, snapshot: &Snapshot, now: SystemTime) -> TimeView {
    let info = &state.info;
    let event = info.time_source != "arrival";
    let has_data = !snapshot.panes.is_empty();
    TimeView {
        source: info.time_source,
        field: info.time_field.clone(),
        lateness_seconds: info.lateness.as_secs_f64(),
        window_end: (event && has_data).then(|| rfc3339(snapshot.window_end)),
        event_time_lag_seconds: if !event {
            Some(0.0)
        } else if has_data {
            Some(
                now.duration_since(snapshot.window_end)
                    .unwrap_or_default()
                    .as_secs_f64(),
            )
        } else {
            None
        },
        records_late: snapshot.ingest.totals.late,
    }
}

fn status_view(state: &AppState, snapshot: &Snapshot) -> StatusView {
    let health = &state.sources.health;
    let ingest = &snapshot.ingest;
    let skipped = SkipReason::ALL
        .iter()
        .map(|r| (r.as_str(), ingest.totals.skipped.get(*r)))
        .collect();
    let now = SystemTime::now();
    let age = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs_f64();
    let checkpoint = &state.sources.checkpoint;
    StatusView {
        version: env!("CARGO_PKG_VERSION"),
        mode: if health.is_demo() { "demo" } else { "kafka" },
        ready: health.is_ready(),
        degraded: degraded(state),
        phase: health.phase(),
        uptime_seconds: age(health.started()),
        group: state.info.group.clone(),
        topics: state.info.topics.clone(),
        window: WindowView::of(snapshot),
        retention_seconds: state.info.retention.as_secs_f64(),
        snapshot_age_seconds: age(snapshot.taken_at),
        batches: ingest.totals.batches,
        records_consumed: ingest.totals.records_consumed,
        records_counted: ingest.totals.records_counted,
        records_per_second: ingest.records_per_second,
        skipped,
        records_repaired: ingest.totals.repaired,
        time: time_view(state, snapshot, now),
        checkpoint: CheckpointView {
            dir: state.info.checkpoint_dir.clone(),
            age_seconds: checkpoint.age().map(|d| d.as_secs_f64()),
            failing: checkpoint.failing(),
            last_error: checkpoint.last_error(),
            restored_from: checkpoint.restored_from(),
        },
        kafka: KafkaView {
            state: if health.kafka_connected() {
                "connected"
            } else {
                "disconnected"
            },
            brokers: state.info.brokers.clone(),
            last_error: health.kafka_last_error(),
            last_contact_age_seconds: health.kafka_contact_age().map(|d| d.as_secs_f64()),
            group_commits: store_view(&state.sources.committed.kafka, None),
        },
        zookeeper: store_view(
            &state.sources.committed.zookeeper,
            state.info.zookeeper.clone(),
        ),
        memory: MemoryView::of(&ingest.memory),
        databases: state
            .sources
            .owners
            .as_ref()
            .map(|o| o.info())
            .unwrap_or_default(),
    }
}

pub async fn status(State(state): State<AppState>) -> Response {
    let snapshot = state.answers.now();
    let view = status_view(&state, &snapshot);
    match &state.cluster {
        None => Json(view).into_response(),
        Some(fanout) => Json(cluster::StatusWithCluster {
            status: view,
            cluster: cluster::status_of(fanout, &snapshot),
        })
        .into_response(),
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    n: Option<String>,
    limit: Option<String>,
}

/// One slide's everything, as `/api/v1/events` sends it.
fn event_view<'a>(state: &AppState, snapshot: &'a Snapshot, n: usize) -> EventView<'a> {
    let alerts = &snapshot.alerts;
    EventView {
        top: TopView::of(snapshot, n),
        offsets: offsets_view(state, snapshot),
        status: status_view(state, snapshot),
        history: snapshot.history.iter().map(HistoryView::of).collect(),
        // What the dashboard shows: all that fires, the last transitions.
        alerts: DashboardAlerts {
            firing: &alerts.firing,
            transitions: &alerts.transitions[..alerts.transitions.len().min(DASHBOARD_TRANSITIONS)],
        },
    }
}

/// Transitions each snapshot event carries (`/api/v1/alerts` has more).
const DASHBOARD_TRANSITIONS: usize = 10;

/// The largest `n` an event stream may ask for: each event carries the
/// top-`n` list, sent to every stream at every slide.
pub const MAX_EVENT_N: usize = crate::config::SORTED_TOP_N;

/// Server-Sent Events: the current snapshot at once, then one per slide.
/// A slow client skips to the newest snapshot; nothing queues for it. Each
/// slide's data is rendered once per distinct `n` and shared by every
/// stream; the streams end when shutdown begins.
/// A positive decimal integer; one past `usize` is as good as no limit.
fn positive_saturating(text: &str) -> Option<usize> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let positive = text.bytes().any(|b| b != b'0');
    (digits && positive).then(|| text.parse::<usize>().unwrap_or(usize::MAX))
}

pub async fn events(
    State(state): State<AppState>,
    Params(query): Params<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let n = parse_n(query.n.as_deref(), MAX_EVENT_N)?;
    let limit = match query.limit.as_deref() {
        None => usize::MAX,
        Some(text) => positive_saturating(text).ok_or_else(|| {
            Problem::bad_request(format!("limit must be a positive integer, got {text:?}"))
        })?,
    };
    let place = state.streams.open().ok_or_else(|| {
        Problem::unavailable(format!(
            "{} event streams are open, the most allowed (--max-event-streams); poll /api/v1/top or try again later",
            state.streams.max
        ))
    })?;
    let closing = state.streams.closing.clone().cancelled_owned();
    // Alert transitions recorded since the stream opened, each once, oldest
    // first, before the snapshot that carries them.
    let mut alerts_sent = state
        .answers
        .now()
        .alerts
        .transitions
        .first()
        .map_or(0, |t| t.seq);
    let stream =
        futures_util::StreamExt::flat_map(WatchStream::new(state.answers.subscribe()), move |_| {
            // The place is given back when the stream ends.
            let _held = &place;
            let snapshot = state.answers.now();
            let mut events: Vec<Result<Event, Infallible>> = snapshot
                .alerts
                .transitions
                .iter()
                .rev()
                .filter(|t| t.seq > alerts_sent)
                .map(|t| {
                    let data = serde_json::to_string(t).unwrap_or_default();
                    Ok(Event::default().event("alert").data(data))
                })
                .collect();
            alerts_sent = alerts_sent.max(snapshot.alerts.transitions.first().map_or(0, |t| t.seq));
            let data = state.renders.of(&snapshot).events.get_or_render(n, || {
                serde_json::to_vec(&event_view(&state, &snapshot, n))
                    .unwrap_or_default()
                    .into()
            });
            events.push(Ok(Event::default()
                .event("snapshot")
                .data(std::str::from_utf8(&data).unwrap_or_default())));
            futures_util::stream::iter(events)
        })
        .take(limit);
    let stream = futures_util::StreamExt::take_until(stream, closing);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    // An age grows between checkpoints: compute it when scraped.
    state.sources.metrics.checkpoint_age.set(
        state
            .sources
            .checkpoint
            .age()
            .map_or(-1.0, |d| d.as_secs_f64()),
    );
    let mut response = state.sources.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Components that work but are degraded: named by `/readyz`, which stays
/// 200 because counting and serving go on without them.
fn degraded(state: &AppState) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !state.sources.health.kafka_connected() {
        out.push("kafka");
    }
    if state.sources.committed.zookeeper.state() == StoreState::Disconnected {
        out.push("zookeeper");
    }
    if state.sources.checkpoint.failing() {
        out.push("checkpoint");
    }
    out
}

/// What start-up waits for: its phase, or, once consuming, the Kafka
/// cluster's first answer.
fn not_ready_reason(health: &Health) -> &'static str {
    match health.phase() {
        "consuming" if health.kafka_contact_age().is_none() => {
            "waiting for the Kafka cluster to answer"
        }
        phase => phase,
    }
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let degraded = degraded(&state);
    if state.sources.health.is_ready() {
        Json(json!({ "ready": true, "degraded": degraded })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "ready": false,
                "reason": not_ready_reason(&state.sources.health),
                "degraded": degraded,
            })),
        )
            .into_response()
    }
}

fn with_type(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub async fn openapi() -> Response {
    with_type(super::OPENAPI, "application/yaml")
}

pub async fn dashboard() -> Response {
    with_type(
        include_str!("../../static/index.html"),
        "text/html; charset=utf-8",
    )
}

pub async fn dashboard_js() -> Response {
    with_type(
        include_str!("../../static/dashboard.js"),
        "text/javascript; charset=utf-8",
    )
}

pub async fn dashboard_css() -> Response {
    with_type(
        include_str!("../../static/dashboard.css"),
        "text/css; charset=utf-8",
    )
}
