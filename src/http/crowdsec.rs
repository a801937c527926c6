//! The CrowdSec Local API's decision routes (`--bouncer-keys-file`), as the
//! bouncers call them: `GET /v1/decisions/stream?startup=` and
//! `GET /v1/decisions?ip=&range=`, with the bouncer's key in `X-Api-Key`.
//! A missing or wrong key gets 403 with the Local API's own body.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::problem::{Params, Problem};
use crate::vocab::{Network, parse_ip};

const KEY_HEADER: &str = "x-api-key";

#[derive(Deserialize)]
pub struct StreamQuery {
    startup: Option<String>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    ip: Option<String>,
    range: Option<String>,
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The bouncer's key, when it is one of `--bouncer-keys-file`'s.
fn bouncer(state: &AppState, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let Some(keys) = &state.bouncer_keys else {
        return Err(Box::new(
            Problem::not_found(
                "the CrowdSec decision routes are off: start ipstats with --bouncer-keys-file",
            )
            .into_response(),
        ));
    };
    let given = headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if keys
        .iter()
        .any(|k| super::access::same(given.as_bytes(), k.expose().as_bytes()))
    {
        Ok(given.to_string())
    } else {
        Err(Box::new(json(
            StatusCode::FORBIDDEN,
            br#"{"message":"access forbidden"}"#.to_vec(),
        )))
    }
}

/// The rules leader's answer, the bouncer's key passed on.
async fn from_leader(state: &AppState, path: &str, key: &str) -> Option<Response> {
    super::cluster::leader_answer(state, path, Some((KEY_HEADER, key))).await
}

/// The decisions kept here and the alerts they are made from.
fn here(
    state: &AppState,
) -> Result<
    (
        &crate::decisions::Decisions,
        std::sync::Arc<crate::rules::AlertsView>,
    ),
    Problem,
> {
    let decisions = state
        .decisions
        .as_deref()
        .ok_or_else(|| Problem::unavailable("the decisions are not kept here"))?;
    Ok((decisions, super::alerts::alerts_here(state)))
}

/// Whether the rules' state is restored and evaluated (the first batch
/// closed): before, the keys firing are not known yet and the decisions
/// stand as they were, so that a restart never unbans and bans again.
fn ready(state: &AppState) -> bool {
    state.sources.health.is_ready()
}

fn startup(text: Option<&str>) -> Result<bool, Problem> {
    match text {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(Problem::bad_request(format!(
            "startup must be true or false, got {other:?}"
        ))),
    }
}

pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(query): Params<StreamQuery>,
) -> Result<Response, Problem> {
    let key = match bouncer(&state, &headers) {
        Ok(key) => key,
        Err(refused) => return Ok(*refused),
    };
    let startup = startup(query.startup.as_deref())?;
    let path = format!("/v1/decisions/stream?startup={startup}");
    if let Some(answer) = from_leader(&state, &path, &key).await {
        return Ok(answer);
    }
    let (decisions, alerts) = here(&state)?;
    let firing = ready(&state).then_some(alerts.firing.as_slice());
    let answer = decisions
        .stream(&key, startup, firing, std::time::SystemTime::now())
        .map_err(|e| Problem::unavailable(e.to_string()))?;
    Ok(json(
        StatusCode::OK,
        serde_json::to_vec(&answer).unwrap_or_default(),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(query): Params<ListQuery>,
) -> Result<Response, Problem> {
    let key = match bouncer(&state, &headers) {
        Ok(key) => key,
        Err(refused) => return Ok(*refused),
    };
    let ip = match query.ip.as_deref() {
        None | Some("") => None,
        Some(text) => Some(parse_ip(text).ok_or_else(|| {
            Problem::bad_request(format!("ip must be an IPv4 or IPv6 address, got {text:?}"))
        })?),
    };
    let range = match query.range.as_deref() {
        None | Some("") => None,
        Some(text) => Some(Network::parse(text).ok_or_else(|| {
            Problem::bad_request(format!(
                "range must be a network in CIDR form, got {text:?}"
            ))
        })?),
    };
    let mut path = "/v1/decisions?".to_string();
    if let Some(ip) = ip {
        path.push_str(&format!("ip={ip}&"));
    }
    if let Some(range) = range {
        path.push_str(&format!("range={range}"));
    }
    if let Some(answer) = from_leader(&state, &path, &key).await {
        return Ok(answer);
    }
    let (decisions, alerts) = here(&state)?;
    let firing = ready(&state).then_some(alerts.firing.as_slice());
    let listed = decisions
        .list(firing, std::time::SystemTime::now(), ip, range)
        .map_err(|e| Problem::unavailable(e.to_string()))?;
    // The Local API answers `null` when nothing matches.
    let body = if listed.is_empty() {
        b"null".to_vec()
    } else {
        serde_json::to_vec(&listed).unwrap_or_default()
    };
    Ok(json(StatusCode::OK, body))
}
