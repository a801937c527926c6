//! `/api/v1/alerts` (what fires now, recent transitions) and
//! `/api/v1/blocklist` (the keys of firing `block` rules, as a firewall, an
//! nginx include or a program reads them), both from the current view.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::problem::{Params, Problem};
use super::views::rfc3339;
use crate::rules::AlertsView;
use crate::vocab::{Network, Subject};

#[derive(Deserialize)]
pub struct AlertsQuery {
    scope: Option<String>,
}

/// The alerts this instance answers with: the rules leader's own (with
/// `--cluster` and ZooKeeper, evaluated on the cluster's counts), else
/// those of its snapshot.
pub(super) fn alerts_here(state: &AppState) -> Arc<AlertsView> {
    match &state.cluster {
        Some(fanout) if fanout.leader.load().me => fanout.alerts.load_full(),
        _ => state.answers.now().alerts.clone(),
    }
}

/// The rules leader's answer, unless `?scope=local` asks for this one's.
async fn from_leader(state: &AppState, local: bool, path: &str) -> Option<Response> {
    if local {
        return None;
    }
    super::cluster::leader_answer(state, path, None).await
}

pub async fn alerts(
    State(state): State<AppState>,
    Params(query): Params<AlertsQuery>,
) -> Result<Response, Problem> {
    let local = super::cluster::local_scope(query.scope.as_deref())?;
    if let Some(answer) = from_leader(&state, local, "/api/v1/alerts?scope=local").await {
        return Ok(answer);
    }
    let view = alerts_here(&state);
    if state.cluster.is_none() {
        return Ok(Json(AlertsView::clone(&view)).into_response());
    }
    let snapshot = state.answers.now();
    Ok(super::cluster::with_field(&state, &snapshot, AlertsView::clone(&view)).await)
}

#[derive(Deserialize)]
pub struct BlocklistQuery {
    format: Option<String>,
    scope: Option<String>,
}

#[derive(Serialize)]
struct Entry {
    key: Arc<str>,
    rule: Arc<str>,
    since: String,
    /// Listed until the rule resolves: no fixed expiry.
    expires: Option<String>,
}

#[derive(Serialize)]
struct BlocklistJson {
    entries: Vec<Entry>,
}

pub async fn blocklist(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(query): Params<BlocklistQuery>,
) -> Result<Response, Problem> {
    let format = query.format.as_deref().unwrap_or("plain");
    let local = super::cluster::local_scope(query.scope.as_deref())?;
    if matches!(format, "plain" | "nginx" | "json") {
        let path = format!("/api/v1/blocklist?format={format}&scope=local");
        if let Some(answer) = from_leader(&state, local, &path).await {
            return Ok(answer);
        }
    }
    let alerts = alerts_here(&state);
    // One line per key, in address order, whichever rules flag it. The
    // plain and nginx forms list addresses and networks only (an AS or a
    // country is no address a server can deny); the JSON form lists all.
    let mut keys: BTreeMap<Network, &str> = BTreeMap::new();
    for firing in alerts.firing.iter().filter(|f| f.block) {
        if let Some(network) = firing.subject.network() {
            keys.entry(network).or_insert(&firing.key);
        }
    }
    let (body, content_type) = match format {
        "plain" => (
            keys.values().map(|k| format!("{k}\n")).collect::<String>(),
            "text/plain; charset=utf-8",
        ),
        "nginx" => (
            keys.values()
                .map(|k| format!("deny {k};\n"))
                .collect::<String>(),
            "text/plain; charset=utf-8",
        ),
        "json" => {
            let mut entries: Vec<(&Subject, Entry)> = alerts
                .firing
                .iter()
                .filter(|f| f.block)
                .map(|f| {
                    (
                        &f.subject,
                        Entry {
                            key: f.key.clone(),
                            rule: f.rule.clone(),
                            since: rfc3339(f.since),
                            expires: None,
                        },
                    )
                })
                .collect();
            entries.sort_by(|a, b| a.0.cmp(b.0).then(a.1.rule.cmp(&b.1.rule)));
            let json = BlocklistJson {
                entries: entries.into_iter().map(|(_, e)| e).collect(),
            };
            (
                serde_json::to_string(&json).unwrap_or_default(),
                "application/json",
            )
        }
        other => {
            return Err(Problem::bad_request(format!(
                "format must be plain, nginx or json, got {other:?}"
            )));
        }
    };
    let mut hasher = rustc_hash::FxHasher::default();
    (format, &body).hash(&mut hasher);
    let etag = format!("\"{:016x}\"", hasher.finish());
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == etag || tag == "*"
        });
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::ETAG, etag_value),
        ],
        body,
    )
        .into_response())
}
