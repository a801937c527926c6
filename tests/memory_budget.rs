//! A memory budget no traffic can break, on the real cluster: 1.5 million
//! requests from distinct IPv6 addresses (each its own /64), one /64 that
//! rotates over 30,000 addresses, and five IPv4 addresses with 3,000
//! requests each, counted under a small `--memory-limit` and beside it
//! without one.
//!
//! Under the budget the state stays within it, the heavy hitters come first
//! with their true counts inside the bounds the answer gives, the rotating
//! /64 tops the /64 list, the provider rotating over 1.47 million addresses
//! tops the list of autonomous systems, and after kill -9 a restart answers with the same
//! bounds. Without a budget the same corpus takes more memory than the
//! budget allows.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Service, get_json, metric, wait_all_counted, wait_for};
use serde_json::Value;

const DISTINCT: u64 = 1_500_000;
const HEAVY: [&str; 5] = ["10.9.9.1", "10.9.9.2", "10.9.9.3", "10.9.9.4", "10.9.9.5"];
const HEAVY_EACH: u64 = 3_000;
const ROTATING: &str = "2001:db8:ffff:1::/64";
const ROTATING_HOSTS: u64 = 30_000;
const BUDGET: &str = "24MiB";
const BUDGET_BYTES: f64 = 24.0 * 1024.0 * 1024.0;
/// Lines of the corpus that measure the process's fixed overhead.
const SMALL: usize = 20_000;

/// The corpus: every 100th line a heavy IPv4 address (in turn), every
/// 50th (offset 1) a new host of the rotating /64, the rest one request
/// from a new address in a /64 of its own.
fn corpus() -> Vec<Vec<u8>> {
    (0..DISTINCT)
        .map(|i| {
            let ip = if i % 100 == 0 {
                HEAVY[(i / 100 % 5) as usize].to_string()
            } else if i % 50 == 1 {
                format!("2001:db8:ffff:1::{:x}", i / 50)
            } else {
                format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)
            };
            format!(r#"{{"client_real_ip":"{ip}","request":"GET / HTTP/1.1"}}"#).into_bytes()
        })
        .collect()
}

/// The AS every IPv6 address of the corpus belongs to: one provider
/// rotating over 1.47 million addresses, one request each.
const CLOUD_AS: u64 = 64666;
/// The heavy hitters' AS.
const HEAVY_AS: u64 = 64501;

/// An ASN database for the corpus (scripts/make-mmdb.py, the test venv's
/// mmdb-writer), in `dir`.
fn asn_db(dir: &std::path::Path) -> String {
    let path = dir.join("asn.mmdb");
    let cloud = format!("2001:db8::/32={CLOUD_AS}:ROTATING-CLOUD");
    let heavy = format!("10.9.9.0/24={HEAVY_AS}:HEAVY-HITTERS");
    common::write_mmdb("asn", &path, &[&cloud, &heavy]);
    path.to_str().expect("utf-8").to_string()
}

/// ipstats by arrival time, one-second panes in a ten-minute window (and
/// `extra`).
fn start(
    cluster: &common::Cluster,
    topic: &str,
    group: &str,
    dir: &std::path::Path,
    limit: &str,
    extra: &[&str],
) -> Service {
    let mut args = vec![
        "--time-source",
        "arrival",
        "--batch",
        "1s",
        "--slide",
        "1s",
        "--window",
        "600s",
        "--memory-limit",
        limit,
    ];
    args.extend_from_slice(extra);
    let mut svc = Service::on_cluster_exactly(cluster, topic, group, dir, &args);
    svc.wait_ready(Duration::from_secs(60));
    svc
}

fn peak_rss_bytes(svc: &Service) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", svc.child.id())).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024.0
}

/// Each item's (lower, upper): `count` itself when the answer is exact.
fn bounds(answer: &Value, key: &str) -> BTreeMap<String, (u64, u64)> {
    answer["top"]
        .as_array()
        .expect("top")
        .iter()
        .map(|item| {
            let count = item["count"].as_u64().expect("count");
            let lower = item["lower"].as_u64().unwrap_or(count);
            let upper = item["upper"].as_u64().unwrap_or(count);
            let key = match &item[key] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key, (lower, upper))
        })
        .collect()
}

#[test]
fn under_the_budget_heavy_hitters_and_a_rotating_64_come_first_within_their_bounds() {
    let Some(cluster) = common::cluster() else {
        return;
    };
    let topic = common::create_topic(&cluster, "budget", 2);
    let small = common::create_topic(&cluster, "budget-small", 2);
    let lines = corpus();
    common::kcat_produce_spread(&cluster.brokers, &topic, 2, &lines);
    common::kcat_produce_spread(&cluster.brokers, &small, 2, &lines[..SMALL]);
    let total = lines.len() as u64;
    drop(lines);

    // The process's fixed overhead: its peak over a corpus too small to
    // matter, plus the buffers a large one fills whatever its addresses:
    // what librdkafka may prefetch (16 MiB per partition queue) and the
    // chunks of lines on their way to the counting thread (ten of 1 MiB),
    // and the allocator's slack (freed memory it keeps, more of it when
    // threads interleave on a busy machine: 64 MiB). Far less than what the
    // exact count of the corpus takes, which the next assertion checks too.
    let dir = tempfile_dir("budget-small");
    let baseline = start(
        &cluster,
        &small,
        &common::unique("small"),
        &dir,
        BUDGET,
        &[],
    );
    wait_all_counted(baseline.addr, SMALL as u64, Duration::from_secs(120));
    let mib = 1024.0 * 1024.0;
    let overhead = peak_rss_bytes(&baseline) + 2.0 * 16.0 * mib + 10.0 * mib + 64.0 * mib;
    baseline.terminate(Duration::from_secs(60));

    // Without a budget first: the exact state of the same corpus.
    let dir = tempfile_dir("budget-exact");
    let exact = start(
        &cluster,
        &topic,
        &common::unique("exact"),
        &dir,
        "4GiB",
        &[],
    );
    wait_all_counted(exact.addr, total, Duration::from_secs(600));
    let exact_state = metric(exact.addr, "ipstats_state_bytes").expect("state bytes");
    let exact_peak = peak_rss_bytes(&exact);
    assert!(get_json(exact.addr, "/api/v1/top?n=1")["exact"] == true);
    exact.terminate(Duration::from_secs(60));
    assert!(
        exact_state > 2.0 * BUDGET_BYTES,
        "the corpus must outgrow the budget: {exact_state} bytes exact"
    );
    assert!(
        exact_peak > BUDGET_BYTES + overhead,
        "the bound below must tell a bounded count from an exact one: {exact_peak} exact, {overhead} overhead"
    );

    // Under the budget, with a database of autonomous systems loaded.
    let dir = tempfile_dir("budget-limited");
    let group = common::unique("limited");
    let db = asn_db(&dir);
    let mut svc = start(&cluster, &topic, &group, &dir, BUDGET, &["--asn-db", &db]);
    wait_all_counted(svc.addr, total, Duration::from_secs(600));

    // The state keeps within the budget, and says so.
    let state = metric(svc.addr, "ipstats_state_bytes").expect("state bytes");
    assert!(
        state <= BUDGET_BYTES,
        "{state} bytes over a {BUDGET} budget"
    );
    assert_eq!(
        metric(svc.addr, "ipstats_state_budget_bytes"),
        Some(BUDGET_BYTES)
    );
    assert!(metric(svc.addr, "ipstats_panes_summarized").is_some_and(|n| n >= 1.0));
    let status = get_json(svc.addr, "/api/v1/status");
    assert!(
        status["memory"]["summarizing_since"].is_string(),
        "{status}"
    );
    assert!(svc.log_text().contains("reached --memory-limit"));
    let peak = peak_rss_bytes(&svc);
    assert!(
        peak < exact_peak,
        "peak resident memory {peak} under the budget, {exact_peak} without"
    );
    assert!(
        peak <= BUDGET_BYTES + overhead,
        "peak resident memory {peak} over the budget plus the fixed overhead {overhead}"
    );

    // The heavy hitters first, each true count within its bounds.
    let top = get_json(svc.addr, "/api/v1/top?n=5");
    assert_eq!(top["exact"], false, "{top}");
    assert_eq!(top["distinct_ips_estimated"], true);
    let error_bound = top["error_bound"].as_u64().expect("error bound");
    assert!(error_bound < HEAVY_EACH, "{top}");
    let heavy = bounds(&top, "ip");
    assert_eq!(
        heavy.keys().cloned().collect::<Vec<_>>(),
        HEAVY.map(String::from)
    );
    for (ip, (lower, upper)) in &heavy {
        assert!(
            *lower <= HEAVY_EACH && HEAVY_EACH <= *upper,
            "{ip}: [{lower}, {upper}]"
        );
    }
    let distinct = top["distinct_ips"].as_u64().expect("distinct") as f64;
    let truth = (total - total / 100 - total / 50 + 5 + ROTATING_HOSTS) as f64;
    assert!(
        (distinct - truth).abs() < truth * 0.1,
        "{distinct} vs {truth}"
    );
    assert_eq!(top["total_requests"].as_u64(), Some(total));

    // The rotating /64 tops the /64 list, its true count within bounds.
    let networks = get_json(svc.addr, "/api/v1/top?n=1&prefix6=64&window=600s");
    let rotating = bounds(&networks, "network");
    let (lower, upper) = rotating
        .get(ROTATING)
        .copied()
        .unwrap_or_else(|| panic!("{networks}"));
    assert!(
        lower <= ROTATING_HOSTS && ROTATING_HOSTS <= upper,
        "[{lower}, {upper}]"
    );
    let one = get_json(svc.addr, &format!("/api/v1/networks/{ROTATING}"));
    let (lower, upper) = (one["lower"].as_u64(), one["upper"].as_u64());
    assert!(
        lower.is_some_and(|l| l <= ROTATING_HOSTS) && upper.is_some_and(|u| u >= ROTATING_HOSTS),
        "{one}"
    );

    // The provider rotating over 1.47 million addresses tops the AS list,
    // its true count within its bounds; so do the heavy hitters' AS.
    let owners = get_json(svc.addr, "/api/v1/top?n=2&group=asn&window=600s");
    let cloud_truth = total - total / 100;
    let heavy_truth = total / 100;
    assert_eq!(owners["top"][0]["asn"], CLOUD_AS, "{owners}");
    let by_asn = bounds(&owners, "asn");
    for (asn, truth) in [(CLOUD_AS, cloud_truth), (HEAVY_AS, heavy_truth)] {
        let (lower, upper) = by_asn[&asn.to_string()];
        assert!(lower <= truth && truth <= upper, "AS{asn}: {owners}");
    }

    // kill -9 once the checkpoint holding everything is committed: the
    // restart answers with the same bounds.
    wait_for(
        "offsets committed after the checkpoint",
        Duration::from_secs(120),
        || {
            let offsets = get_json(svc.addr, "/api/v1/offsets");
            let partitions = offsets["partitions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let done = partitions
                .iter()
                .filter(|p| p["committed_kafka"] == p["until_offset"] && p["lag"] == 0)
                .count();
            if partitions.len() == 2 && done == 2 {
                Ok(())
            } else {
                Err(offsets.to_string())
            }
        },
    );
    let before = get_json(svc.addr, "/api/v1/top?n=5");
    svc.signal("KILL");
    let _ = svc.wait_exit(Duration::from_secs(30));
    let again = start(&cluster, &topic, &group, &dir, BUDGET, &["--asn-db", &db]);
    wait_all_counted(again.addr, total, Duration::from_secs(120));
    let after = get_json(again.addr, "/api/v1/top?n=5");
    assert_eq!(bounds(&after, "ip"), bounds(&before, "ip"));
    assert_eq!(after["error_bound"], before["error_bound"]);
    again.terminate(Duration::from_secs(60));
}

fn tempfile_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(common::unique(prefix));
    std::fs::create_dir_all(&dir).expect("checkpoint dir");
    dir
}
