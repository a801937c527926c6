//! The HTTP API, metrics endpoint and dashboard.
//!
//! Handlers answer through [`crate::answers::Answers`] (the current view,
//! loaded lock-free, and questions about other ranges), health atomics and
//! the committed-offset status. What they write never reaches ingest: the
//! checkpoint-age gauge (set when `/metrics` is scraped), the render caches
//! ([`render`]: an answer rendered once per view) and the merge cache of the
//! answers. Nothing here can slow ingest down.

pub mod access;
pub mod adhoc;
mod alerts;
mod cluster;
mod crowdsec;
mod handlers;
mod problem;
pub mod render;
pub mod serve;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::routing::{MethodRouter, get};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

pub use problem::Problem;

use crate::answers::Answers;
use crate::checkpoint;
use crate::metrics::Metrics;
use crate::offsets::committed::Committed;
use crate::snapshot::Published;
use crate::vocab::Health;

/// The OpenAPI description, served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// Requests answered at once; more wait their turn (each has the timeout).
const MAX_CONCURRENT_REQUESTS: usize = 512;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// No inline script or style, no third party: values from logs cannot run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Facts about the service that do not change while it runs.
#[derive(Debug)]
pub struct ServiceInfo {
    pub group: String,
    pub topics: Vec<String>,
    pub brokers: String,
    pub zookeeper: Option<String>,
    pub checkpoint_dir: String,
    /// `--batch` (the pane length) and `--retention` (the history kept).
    pub batch: Duration,
    pub retention: Duration,
    /// `--time-source` and, for `event`, `--time-field`.
    pub time_source: &'static str,
    pub time_field: Option<String>,
    pub lateness: std::time::Duration,
}

/// Where HTTP's answers come from: what the service's parts write as they
/// run (the app hands the same handles to each part).
#[derive(Clone)]
pub struct Sources {
    pub published: Published,
    pub health: Arc<Health>,
    pub metrics: Metrics,
    pub committed: Arc<Committed>,
    pub checkpoint: Arc<checkpoint::Status>,
    /// `--asn-db`, `--country-db`: who is behind an address.
    pub owners: Option<Arc<crate::owners::Owners>>,
}

/// Live event streams (`/api/v1/events`): how many may be open at once,
/// and the signal that ends them all at shutdown.
#[derive(Debug)]
pub struct Streams {
    pub max: usize,
    permits: Arc<Semaphore>,
    pub closing: CancellationToken,
}

impl Streams {
    pub fn new(max: usize, closing: CancellationToken) -> Self {
        Streams {
            max,
            permits: Arc::new(Semaphore::new(max)),
            closing,
        }
    }

    /// A place for one more stream, held as long as the stream is open.
    pub fn open(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// What every handler reads. Axum clones the state for each request, so it
/// is one `Arc` (cloning the parts themselves took a fifth of a request's
/// CPU under load: the metrics alone hold dozens of handles).
#[derive(Clone)]
pub struct AppState(Arc<AppData>);

impl From<AppData> for AppState {
    fn from(data: AppData) -> Self {
        AppState(Arc::new(data))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppData;
    fn deref(&self) -> &AppData {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppData {
    pub sources: Sources,
    pub info: Arc<ServiceInfo>,
    pub streams: Arc<Streams>,
    pub access: Arc<access::Access>,
    /// Where answers come from.
    pub answers: Answers,
    /// Bodies rendered from the newest view.
    pub renders: Arc<render::Renders>,
    /// Places for ad-hoc merges (other windows, networks).
    pub adhoc: Arc<adhoc::Gate>,
    /// `--cluster`: the other instances, asked for their parts.
    pub cluster: Option<Arc<crate::cluster::fanout::Fanout>>,
    /// `--bouncer-keys-file`: the CrowdSec bouncers' keys, and what each was told.
    pub bouncer_keys: Option<Arc<Vec<crate::config::Secret>>>,
    pub decisions: Option<Arc<crate::decisions::Decisions>>,
}

/// Every route: the router is built from this list and the spec test reads it.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/", get(handlers::dashboard)),
        ("/dashboard.js", get(handlers::dashboard_js)),
        ("/dashboard.css", get(handlers::dashboard_css)),
        ("/api/v1/top", get(handlers::top)),
        ("/api/v1/ips/{ip}", get(handlers::ip)),
        ("/api/v1/networks/{*cidr}", get(handlers::network)),
        ("/api/v1/asns/{asn}", get(handlers::asn)),
        ("/api/v1/offsets", get(handlers::offsets)),
        ("/api/v1/alerts", get(alerts::alerts)),
        ("/api/v1/blocklist", get(alerts::blocklist)),
        ("/api/v1/status", get(handlers::status)),
        ("/api/v1/events", get(handlers::events)),
        ("/metrics", get(handlers::metrics)),
        ("/healthz", get(handlers::healthz)),
        ("/readyz", get(handlers::readyz)),
        ("/openapi.yaml", get(handlers::openapi)),
        ("/v1/decisions/stream", get(crowdsec::stream)),
        ("/v1/decisions", get(crowdsec::list)),
        (
            crate::cluster::fanout::PART_ROUTE,
            axum::routing::post(cluster::part),
        ),
    ]
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (path, method_router) in routes() {
        router = router.route(path, method_router);
    }
    router
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::check,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(ConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
        .with_state(state)
}

#[cfg(test)]
mod tests;
