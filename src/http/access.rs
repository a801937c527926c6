//! Who may ask: an optional bearer token (`--auth-token-file`), and a Host
//! allow-list, on by default for loopback listeners, so that a web page
//! whose domain resolves to 127.0.0.1 (DNS rebinding) cannot read a local
//! instance from a browser.
//!
//! Liveness and readiness (`/healthz`, `/readyz`) stay open for probes; the
//! dashboard's static files and `/openapi.yaml` hold no data and stay open;
//! `/metrics` is open with `--metrics-without-auth`. The token is accepted
//! as `Authorization: Bearer <token>` or as the `access_token` query
//! parameter (RFC 6750), which the dashboard passes on from its own URL
//! because browsers cannot set headers on an event stream.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::Problem;

/// Paths that never need the token (`--auth-token-file --help` lists them).
pub const OPEN: &[&str] = &[
    "/healthz",
    "/readyz",
    "/",
    "/dashboard.js",
    "/dashboard.css",
    "/openapi.yaml",
    // The CrowdSec decision routes check a bouncer's X-Api-Key instead.
    "/v1/decisions/stream",
    "/v1/decisions",
];

#[derive(Debug, Default)]
pub struct Access {
    token: Option<Box<[u8]>>,
    metrics_open: bool,
    /// Host names (without port) a request may name; `None`: any.
    hosts: Option<Vec<String>>,
}

impl Access {
    pub fn new(token: Option<&str>, metrics_open: bool, hosts: Option<Vec<String>>) -> Self {
        Access {
            token: token.map(|t| t.as_bytes().into()),
            metrics_open,
            hosts: hosts.map(|h| h.into_iter().map(|h| h.to_ascii_lowercase()).collect()),
        }
    }

    fn host_allowed(&self, host: Option<&str>) -> bool {
        let (Some(allowed), Some(host)) = (&self.hosts, host) else {
            // No list, or no Host header (not a browser): nothing to check.
            return true;
        };
        let name = match host.strip_prefix('[') {
            // [v6]:port
            Some(rest) => rest.split(']').next().map(|v6| format!("[{v6}]")),
            None => host.split(':').next().map(str::to_string),
        };
        name.is_some_and(|name| {
            let name = name.to_ascii_lowercase();
            allowed.contains(&name)
        })
    }

    fn token_ok(&self, request: &Request) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let path = request.uri().path();
        if OPEN.contains(&path) || (self.metrics_open && path == "/metrics") {
            return true;
        }
        let from_header = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let from_query = request.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("access_token="))
        });
        [from_header, from_query]
            .into_iter()
            .flatten()
            .any(|given| same(given.trim().as_bytes(), expected))
    }
}

/// Equal without an early exit: the time taken does not tell how much of
/// a guess was right (only, as usual, whether its length was).
pub(super) fn same(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let diff = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let access = &state.access;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !access.host_allowed(host) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host {:?} is not one this instance answers to (--allowed-hosts)",
                host.unwrap_or_default()
            ),
        )
        .into_response();
    }
    if !access.token_ok(&request) {
        let mut response = Problem::new(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer <token>, or ?access_token=)",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ipstats\""),
        );
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_by_name_whatever_the_port() {
        let access = Access::new(
            None,
            false,
            Some(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()]),
        );
        for ok in [
            "localhost:8080",
            "LOCALHOST",
            "127.0.0.1:9",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(access.host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "[::2]:80",
            "",
        ] {
            assert!(!access.host_allowed(Some(bad)), "{bad}");
        }
        assert!(access.host_allowed(None), "no Host header: not a browser");
        assert!(Access::default().host_allowed(Some("anything")));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cre", b"s3cret"));
        assert!(!same(b"s3creT", b"s3cret"));
        assert!(!same(b"", b"s3cret"));
    }
}
