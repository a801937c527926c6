//! Router tests on a hand-built snapshot, through `tower::ServiceExt::oneshot`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::snapshot::{IngestStatus, PartitionStatus, Published, Snapshot};
use crate::vocab::{IpKey, Origin, SkipCounts, Started, StartedFrom, parse_ip};
use crate::window::{IpMap, Pane, TopList};

fn ip(text: &str) -> IpKey {
    parse_ip(text).expect("test address")
}

fn pane(seq: u64, counts: &[(&str, u32)]) -> Arc<Pane> {
    let mut map = IpMap::default();
    for (addr, n) in counts {
        map.insert(ip(addr), *n);
    }
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seq);
    Arc::new(Pane {
        owners: None,
        seq,
        start,
        end: start + Duration::from_secs(1),
        requests: counts.iter().map(|(_, n)| u64::from(*n)).sum(),
        counts: (&map).into(),
        skipped: SkipCounts::default(),
        ranges: Vec::new(),
    })
}

fn state(ready: bool) -> AppState {
    data(ready).into()
}

/// The parts of [`state`], for a test to change one.
fn data(ready: bool) -> AppData {
    let panes = vec![
        pane(0, &[("10.0.0.1", 3), ("2001:db8::1", 1)]),
        pane(1, &[("10.0.0.1", 2), ("10.0.0.2", 5)]),
    ];
    // Rules over the window: both IPv4 addresses reach 5 (blocked), their
    // /24 reaches 10 (not blocked).
    let rules = crate::rules::file::parse(
        "[[rule]]\nname = \"hot\"\nkey = \"ip\"\nwindow = \"2s\"\nrequests = 5\nblock = true\n\
         [[rule]]\nname = \"net\"\nkey = \"v4/24\"\nwindow = \"2s\"\nrequests = 8\n",
        crate::rules::Limits {
            batch: Duration::from_secs(1),
            retention: Duration::from_secs(3),
            asn_db: true,
            country_db: true,
        },
    )
    .expect("rules");
    let mut engine = crate::rules::Engine::new(rules, Duration::from_secs(1));
    engine.evaluate(&panes, panes[1].end);
    let snapshot = Snapshot {
        taken_at: SystemTime::now(),
        window_start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        window_end: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_002),
        window_length: Duration::from_secs(2),
        slide: Duration::from_secs(1),
        total_requests: 11,
        distinct_ips: 3,
        top: TopList::from_sorted(vec![
            (ip("10.0.0.1"), 5),
            (ip("10.0.0.2"), 5),
            (ip("2001:db8::1"), 1),
        ]),
        panes,
        // One older pane kept by --retention, the second before the window.
        retained: vec![Arc::new(Pane {
            seq: 9,
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_799_999_999),
            end: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            ..(*pane(9, &[("10.0.0.9", 4), ("10.0.0.1", 1)])).clone()
        })],
        ahead: Vec::new(),
        partitions: vec![PartitionStatus {
            topic: "access-log".into(),
            partition: 0,
            from_offset: 100,
            until_offset: 111,
            log_start: Some(0),
            log_end: Some(120),
            lag_seconds: Some(1.5),
            last_reset: None,
            started: Started {
                offset: 100,
                from: StartedFrom::Stored(Origin::KafkaGroup),
                note: Some("the Kafka group's offset 100 used".into()),
            },
            newest_event_ms: Some(1_795_502_113_000),
            records_late: 2,
        }],
        ingest: IngestStatus::default(),
        history: Vec::new(),
        distinct_estimated: false,
        error_bound: 0,
        seq: crate::snapshot::serial(),
        kept_seq: crate::snapshot::serial(),
        alerts: Arc::new(engine.view()),
    };
    let health = Arc::new(Health::new(true));
    if ready {
        health.set_ready();
    }
    let sources = Sources {
        published: Published::new(snapshot),
        health,
        metrics: Metrics::new().expect("metrics"),
        committed: {
            let committed = Committed::new(true);
            committed
                .zookeeper
                .record([(Arc::from("access-log"), 0, 105)], true);
            Arc::new(committed)
        },
        checkpoint: Arc::new(checkpoint::Status::default()),
        owners: None,
    };
    AppData {
        cluster: None,
        bouncer_keys: None,
        decisions: None,
        answers: crate::answers::Answers::with_detached_workers_for(
            sources.published.clone(),
            adhoc::MAX_ADHOC,
        ),
        renders: Default::default(),
        sources,
        adhoc: Default::default(),
        streams: Arc::new(Streams::new(2, tokio_util::sync::CancellationToken::new())),
        access: Arc::new(access::Access::default()),
        info: Arc::new(ServiceInfo {
            checkpoint_dir: "/var/lib/ipstats".into(),
            group: "g1".into(),
            topics: vec!["access-log".into()],
            brokers: "embedded".into(),
            zookeeper: None,
            batch: Duration::from_secs(1),
            retention: Duration::from_secs(3),
            time_source: "event",
            time_field: Some("time_local".into()),
            lateness: std::time::Duration::from_secs(5),
        }),
    }
}

async fn call(method: Method, uri: &str) -> (StatusCode, String, String) {
    let response = router(state(true))
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get_json(uri: &str) -> (StatusCode, Value) {
    let (status, content_type, body) = call(Method::GET, uri).await;
    assert!(content_type.contains("json"), "{uri}: {content_type}");
    (status, serde_json::from_str(&body).expect("json body"))
}

#[tokio::test]
async fn top_returns_n_entries_in_order() {
    let (status, body) = get_json("/api/v1/top?n=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total_requests"], 11);
    assert_eq!(body["distinct_ips"], 3);
    assert_eq!(body["window"]["length_seconds"], 2.0);
    assert_eq!(body["window"]["start"], "2027-01-15T08:00:00.000Z");
    let top: Vec<(String, u64)> = body["top"]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["ip"].as_str().expect("ip").to_string(),
                e["count"].as_u64().expect("count"),
            )
        })
        .collect();
    assert_eq!(
        top,
        [("10.0.0.1".to_string(), 5), ("10.0.0.2".to_string(), 5)]
    );
    let (_, all) = get_json("/api/v1/top").await;
    assert_eq!(
        all["top"].as_array().expect("array").len(),
        3,
        "default n=10 caps at what exists"
    );
}

#[tokio::test]
async fn bad_parameters_are_problems() {
    for uri in [
        "/api/v1/top?n=0",
        "/api/v1/top?n=abc",
        "/api/v1/top?n=100001",
        "/api/v1/top?n=-1",
        "/api/v1/top?n=1&n=2",
        "/api/v1/ips/not-an-ip",
        "/api/v1/ips/10.0.0.256",
        "/api/v1/ips/%FF",
    ] {
        let (status, content_type, body) = call(Method::GET, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(content_type, "application/problem+json", "{uri}");
        let problem: Value = serde_json::from_str(&body).expect("problem json");
        assert_eq!(problem["status"], 400);
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let (_, _, body) = call(Method::GET, "/api/v1/top?n=0").await;
    assert!(body.contains("1 to 100000"), "{body}");
}

#[tokio::test]
async fn ip_detail_sums_panes() {
    let (status, body) = get_json("/api/v1/ips/10.0.0.1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 5);
    let per_pane: Vec<u64> = body["panes"]
        .as_array()
        .expect("panes")
        .iter()
        .map(|p| p["count"].as_u64().expect("count"))
        .collect();
    assert_eq!(per_pane, [3, 2]);
    let (_, v6) = get_json("/api/v1/ips/2001:DB8:0::1").await;
    assert_eq!(
        (v6["ip"].as_str(), v6["count"].as_u64()),
        (Some("2001:db8::1"), Some(1))
    );
    let (_, absent) = get_json("/api/v1/ips/192.0.2.55").await;
    assert_eq!(absent["count"], 0);
}

#[tokio::test]
async fn offsets_report_ranges_and_lag() {
    let (status, body) = get_json("/api/v1/offsets").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["group"], "g1");
    let p = &body["partitions"][0];
    assert_eq!(
        (p["from_offset"].as_i64(), p["until_offset"].as_i64()),
        (Some(100), Some(111))
    );
    assert_eq!(p["lag"], 9);
    assert_eq!(p["lag_seconds"], 1.5);
    assert_eq!(p["committed_zookeeper"], 105);
    assert!(p["committed_kafka"].is_null());
    assert!(p["last_reset"].is_null());
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let (status, content_type, _) = call(Method::GET, "/nope").await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::NOT_FOUND, "application/problem+json")
    );
    let (status, content_type, _) = call(Method::POST, "/api/v1/top").await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "application/problem+json")
    );
    let (status, _, _) = call(Method::DELETE, "/metrics").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn readiness_follows_health() {
    let response = router(state(false))
        .oneshot(
            Request::get("/readyz")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = get_json("/readyz").await;
    assert_eq!(
        (status, &body["ready"]),
        (StatusCode::OK, &Value::Bool(true))
    );
}

#[tokio::test]
async fn dashboard_is_embedded_and_locked_down() {
    let response = router(state(true))
        .oneshot(Request::get("/").body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response
        .headers()
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    for (path, kind) in [
        ("/dashboard.js", "javascript"),
        ("/dashboard.css", "css"),
        ("/", "html"),
    ] {
        let (status, content_type, body) = call(Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(content_type.contains(kind), "{path}: {content_type}");
        assert!(body.len() > 500, "{path} is not empty");
    }
    let (_, _, js) = call(Method::GET, "/dashboard.js").await;
    assert!(
        !js.contains("innerHTML"),
        "log data is inserted as text only"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (status, content_type, body) = call(Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        body.contains("ipstats_records_skipped_total{reason=\"not_json\"} 0"),
        "{body}"
    );
}

#[test]
fn router_and_spec_list_the_same_routes() {
    let spec: serde_yaml::Value = serde_yaml::from_str(OPENAPI).expect("openapi.yaml parses");
    let spec_paths: BTreeSet<String> = spec["paths"]
        .as_mapping()
        .expect("paths")
        .keys()
        .map(|k| k.as_str().expect("path").to_string())
        .collect();
    // The router's catch-all `{*cidr}` (a CIDR holds a slash) is `{cidr}` in the spec.
    let router_paths: BTreeSet<String> = routes()
        .into_iter()
        .map(|(p, _)| p.replace("{*", "{"))
        .collect();
    assert_eq!(spec_paths, router_paths);
    for (path, item) in spec["paths"].as_mapping().expect("paths") {
        let methods: Vec<&str> = item
            .as_mapping()
            .expect("path item")
            .keys()
            .filter_map(|k| k.as_str())
            .collect();
        // The one route instances call on each other carries a body.
        let expected = if path.as_str() == Some(crate::cluster::fanout::PART_ROUTE) {
            ["post"]
        } else {
            ["get"]
        };
        assert_eq!(
            methods, expected,
            "{path:?}: every route is GET only but the part route"
        );
    }
}

#[tokio::test]
async fn events_stream_whole_snapshots() {
    let (status, content_type, body) = call(Method::GET, "/api/v1/events?limit=1&n=2").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    assert!(body.starts_with("event: snapshot\n"), "{body}");
    let data = body
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let event: Value = serde_json::from_str(data).expect("json data");
    assert_eq!(event["top"]["top"].as_array().map(Vec::len), Some(2));
    assert_eq!(event["offsets"]["group"], "g1");
    assert_eq!(event["status"]["mode"], "demo");
    assert!(event["history"].is_array());
    let (status, content_type, _) = call(Method::GET, "/api/v1/events?n=0").await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::BAD_REQUEST, "application/problem+json")
    );
    for bad in ["0", "00", "-1", "one", ""] {
        let (status, _, _) = call(Method::GET, &format!("/api/v1/events?limit={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={bad}");
    }
    // A limit past any count of events is no limit, not an error.
    let huge = open(
        &router(state(true)),
        "/api/v1/events?limit=25522253683818295902328418333622272",
    )
    .await;
    assert_eq!(huge.status(), StatusCode::OK);
}

async fn open(router: &Router, uri: &str) -> axum::response::Response {
    router
        .clone()
        .oneshot(
            Request::builder()
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible")
}

/// Reads a stream's first event's data; the stream stays open.
async fn first_data(body: &mut Body) -> String {
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame = body.frame().await.expect("a frame").expect("no error");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    text.lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line")
        .to_string()
}

#[tokio::test]
async fn event_streams_are_capped_share_one_render_and_end_at_shutdown() {
    let state = state(true);
    let (published, renders, closing) = (
        state.sources.published.clone(),
        state.renders.clone(),
        state.streams.closing.clone(),
    );
    let router = router(state);
    // The state allows two streams: both get the same rendered bytes.
    let first = open(&router, "/api/v1/events?n=2").await;
    let second = open(&router, "/api/v1/events?n=2").await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let (mut first, mut second) = (first.into_body(), second.into_body());
    let (a, b) = (first_data(&mut first).await, first_data(&mut second).await);
    assert_eq!(a, b);
    assert_eq!(
        renders
            .of(&published.load())
            .events
            .get_or_render(2, || "rendered again".into()),
        a.as_str(),
        "rendered once, kept for every stream"
    );
    // A third is refused while two are open, as problem+json with Retry-After.
    let refused = open(&router, "/api/v1/events?n=2").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    let body = refused
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let problem: Value = serde_json::from_slice(&body).expect("problem json");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--max-event-streams")),
        "{problem}"
    );
    // `n` is bounded for streams.
    let (status, _, body) = call(Method::GET, "/api/v1/events?n=1001").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("1 to 1000"), "{body}");
    // A closed stream gives its place back.
    drop(first);
    let stream = open(&router, "/api/v1/events?n=1").await;
    assert_eq!(stream.status(), StatusCode::OK);
    // Shutdown ends every open stream, and their places come back.
    closing.cancel();
    stream.into_body().collect().await.expect("the stream ends");
    second.collect().await.expect("the stream ends");
    assert_eq!(
        open(&router, "/api/v1/events?n=2").await.status(),
        StatusCode::OK
    );
}

async fn ask(router: &Router, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut request = Request::builder().uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (status, challenge)
}

#[tokio::test]
async fn a_token_guards_the_data_but_not_the_probes() {
    const TOKEN: &str = "0123456789abcdef-token";
    let mut guarded = data(true);
    guarded.access = Arc::new(access::Access::new(Some(TOKEN), false, None));
    let router = router(guarded.into());
    for uri in [
        "/api/v1/top",
        "/api/v1/offsets",
        "/api/v1/events?limit=1",
        "/metrics",
    ] {
        let (status, challenge) = ask(&router, uri, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(challenge.starts_with("Bearer"), "{uri}: {challenge}");
        let (status, _) = ask(
            &router,
            uri,
            &[("authorization", "Bearer wrong-token-of-some-length")],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let bearer = format!("Bearer {TOKEN}");
    let (status, _) = ask(&router, "/api/v1/top", &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = ask(
        &router,
        &format!("/api/v1/top?n=2&access_token={TOKEN}"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the dashboard's way");
    for open in ["/healthz", "/readyz", "/", "/dashboard.js", "/openapi.yaml"] {
        assert_eq!(ask(&router, open, &[]).await.0, StatusCode::OK, "{open}");
    }
    let mut metrics_open = data(true);
    metrics_open.access = Arc::new(access::Access::new(Some(TOKEN), true, None));
    let router = super::router(metrics_open.into());
    assert_eq!(ask(&router, "/metrics", &[]).await.0, StatusCode::OK);
    assert_eq!(
        ask(&router, "/api/v1/status", &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_loopback_instance_answers_only_to_its_own_names() {
    let mut local = data(true);
    local.access = Arc::new(access::Access::new(
        None,
        false,
        Some(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()]),
    ));
    let router = router(local.into());
    for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"] {
        assert_eq!(
            ask(&router, "/api/v1/top", &[("host", host)]).await.0,
            StatusCode::OK,
            "{host}"
        );
    }
    // A page on another domain that resolves to 127.0.0.1 (DNS rebinding).
    let (status, _) = ask(&router, "/api/v1/top", &[("host", "rebind.example:8080")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn any_kept_range_answers_by_address_and_by_network() {
    // Three kept panes: the retained one (10.0.0.9 ×4, 10.0.0.1 ×1) and the window's two.
    let (status, body) = get_json("/api/v1/top?window=3s&n=10").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total_requests"], 16);
    assert_eq!(body["distinct_ips"], 4);
    assert_eq!(body["window"]["start"], "2027-01-15T07:59:59.000Z");
    assert_eq!(body["window"]["end"], "2027-01-15T08:00:02.000Z");
    assert_eq!(body["window"]["length_seconds"], 3.0);
    assert_eq!(body["top"][0], json!({"ip": "10.0.0.1", "count": 6}));
    // One pane, ending at its boundary.
    let (_, first) = get_json("/api/v1/top?window=1s&end=2027-01-15T08:00:01Z").await;
    assert_eq!(first["total_requests"], 4);
    assert_eq!(first["window"]["start"], "2027-01-15T08:00:00.000Z");
    // Networks: the IPv4 addresses share a /24, the IPv6 one is its own /128.
    let (_, nets) = get_json("/api/v1/top?prefix4=24").await;
    assert_eq!(nets["distinct_networks"], 2, "{nets}");
    assert_eq!(
        nets["top"][0],
        json!({"network": "10.0.0.0/24", "count": 10, "distinct_ips": 2})
    );
    assert_eq!(nets["top"][1]["network"], "2001:db8::1/128");
    assert_eq!(
        (nets["prefix4"].clone(), nets["prefix6"].clone()),
        (json!(24), json!(128))
    );
    let (_, all6) = get_json("/api/v1/top?prefix6=0&window=3s").await;
    assert!(
        all6["top"]
            .as_array()
            .expect("top")
            .iter()
            .any(|t| t["network"] == "::/0" && t["count"] == 1),
        "{all6}"
    );
    // One network's members, and one address over the range.
    let (status, net) = get_json("/api/v1/networks/10.0.0.0/24?window=3s&n=1").await;
    assert_eq!(status, StatusCode::OK, "{net}");
    assert_eq!(net["network"], "10.0.0.0/24");
    assert_eq!(
        (net["count"].clone(), net["distinct_ips"].clone()),
        (json!(15), json!(3))
    );
    assert_eq!(net["top"], json!([{"ip": "10.0.0.1", "count": 6}]));
    let (_, encoded) = get_json("/api/v1/networks/10.0.0.0%2F24?window=3s&n=1").await;
    assert_eq!(encoded["count"], 15, "an encoded slash works too");
    let (_, ip) = get_json("/api/v1/ips/10.0.0.1?window=3s").await;
    assert_eq!(ip["count"], 6);
    assert_eq!(ip["panes"].as_array().expect("panes").len(), 3);
    // Asked again within the slide: the same bytes, from the cache.
    let again = call(Method::GET, "/api/v1/top?window=3s&n=10").await;
    let (_, _, first_body) = call(Method::GET, "/api/v1/top?window=3s&n=10").await;
    assert_eq!(again.2, first_body);
}

#[tokio::test]
async fn malformed_parameters_are_400_and_ranges_not_kept_are_404_naming_them() {
    let malformed = [
        ("/api/v1/top?window=soon", "window"),
        ("/api/v1/top?end=yesterday", "end"),
        ("/api/v1/top?end=2027-01-15T08:00:01", "end"),
        ("/api/v1/top?prefix4=33", "prefix4"),
        ("/api/v1/top?prefix6=129", "prefix6"),
        ("/api/v1/top?prefix4=-1", "prefix4"),
        ("/api/v1/networks/nowhere", "CIDR"),
        ("/api/v1/networks/0", "CIDR"),
        ("/api/v1/networks/10.0.0.0/33", "CIDR"),
        ("/api/v1/networks/10.0.0.0/24?n=0", "n must be"),
    ];
    // Well formed, but no such range (or network) is kept.
    let not_kept = [
        ("/api/v1/top?window=4s", "retention"),
        ("/api/v1/top?window=1500ms", "window"),
        ("/api/v1/top?window=0s", "window"),
        ("/api/v1/top?end=2027-01-15T08:00:00.500Z", "end"),
        ("/api/v1/top?end=2000-01-01T00:00:00Z", "end"),
        ("/api/v1/top?end=1969-12-31T23:59:59Z", "end"),
        ("/api/v1/ips/10.0.0.1?end=2000-01-01T00:00:00Z", "end"),
        (
            "/api/v1/top?window=2s&end=2027-01-15T08:00:00Z",
            "before the kept history",
        ),
        ("/api/v1/top?window=1s&end=2027-01-15T07:59:59Z", "end"),
        ("/api/v1/top?window=1s&end=2027-01-15T08:00:03Z", "end"),
        ("/api/v1/ips/10.0.0.1?window=9s", "window"),
        ("/api/v1/networks/10.0.0.1/24", "10.0.0.0/24"),
    ];
    for (expected, cases) in [
        (StatusCode::BAD_REQUEST, &malformed[..]),
        (StatusCode::NOT_FOUND, &not_kept[..]),
    ] {
        for (uri, names) in cases {
            let (status, content_type, body) = call(Method::GET, uri).await;
            assert_eq!(status, expected, "{uri}: {body}");
            assert!(
                content_type.contains("problem+json"),
                "{uri}: {content_type}"
            );
            assert!(body.contains(names), "{uri}: {body}");
        }
    }
    // The same moment at another UTC offset is the same pane boundary.
    let (status, body) = get_json("/api/v1/top?window=1s&end=2027-01-15T09:00:02%2B01:00").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["window"]["end"], "2027-01-15T08:00:02.000Z");
}

#[tokio::test]
async fn sequential_questions_always_find_a_place() {
    let state = state(true);
    let gate = state.adhoc.clone();
    let router = router(state);
    // Every question is new (another n), so every one is merged by a worker.
    for n in 1..=200 {
        let (status, _) = ask(&router, &format!("/api/v1/top?window=3s&n={n}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "question {n}");
        assert_eq!(
            gate.free(),
            adhoc::MAX_ADHOC,
            "a place still held after answer {n}"
        );
    }
}

#[tokio::test]
async fn alerts_and_the_block_list_follow_the_firing_rules() {
    let (status, alerts) = get_json("/api/v1/alerts").await;
    assert_eq!(status, StatusCode::OK);
    let firing: Vec<(String, String)> = alerts["firing"]
        .as_array()
        .expect("firing")
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap_or("").into(),
                f["key"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        firing,
        [
            ("hot".to_string(), "10.0.0.1".to_string()),
            ("hot".into(), "10.0.0.2".into()),
            ("net".into(), "10.0.0.0/24".into())
        ]
    );
    assert_eq!(
        alerts["transitions"].as_array().expect("transitions").len(),
        3
    );
    assert_eq!(alerts["transitions"][0]["state"], "firing");

    let (status, content_type, plain) = call(Method::GET, "/api/v1/blocklist").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(
        plain, "10.0.0.1\n10.0.0.2\n",
        "only block rules, in address order"
    );
    let (_, _, nginx) = call(Method::GET, "/api/v1/blocklist?format=nginx").await;
    assert_eq!(nginx, "deny 10.0.0.1;\ndeny 10.0.0.2;\n");
    let (_, json) = get_json("/api/v1/blocklist?format=json").await;
    assert_eq!(json["entries"][1]["key"], "10.0.0.2");
    assert_eq!(json["entries"][1]["rule"], "hot");
    assert_eq!(json["entries"][1]["expires"], Value::Null);
    let (status, _, body) = call(Method::GET, "/api/v1/blocklist?format=csv").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("format must be plain, nginx or json"),
        "{body}"
    );

    // The ETag: the same list is 304 when named.
    let response = router(state(true))
        .oneshot(
            Request::get("/api/v1/blocklist")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let etag = response.headers()[header::ETAG].clone();
    let again = router(state(true))
        .oneshot(
            Request::get("/api/v1/blocklist")
                .header(header::IF_NONE_MATCH, etag.clone())
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[header::ETAG], etag);
    let other = router(state(true))
        .oneshot(
            Request::get("/api/v1/blocklist?format=nginx")
                .header(header::IF_NONE_MATCH, etag)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "another format, another tag"
    );
}
