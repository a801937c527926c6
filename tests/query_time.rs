//! Questions asked at query time, on the real cluster: networks that no
//! per-address top-N shows, and ranges of the kept history answered the
//! same after kill -9.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::{Service, cluster, get_json, json_line, unique, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn rotating_addresses_hide_from_the_per_address_top_but_not_from_their_network() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "networks", 2);
    let now = SystemTime::now();
    let mut lines = Vec::new();
    // 5,000 addresses of one /64, once each; 250 of one /24, twice each;
    // 20 busy clients of their own, 30 requests each.
    for i in 0..5000u32 {
        lines.push(json_line(&format!("2001:db8:55:1::{:x}", i + 1), now));
    }
    for i in 0..250u32 {
        for _ in 0..2 {
            lines.push(json_line(&format!("203.0.113.{}", i + 1), now));
        }
    }
    for i in 0..20u32 {
        for _ in 0..30 {
            lines.push(json_line(&format!("198.51.{}.7", 100 + i), now));
        }
    }
    common::kcat_produce_spread(&cluster.brokers, &topic, 2, &lines);
    let dir = std::env::temp_dir().join(unique("net-ckpt"));
    let mut svc = Service::on_cluster_exactly(
        &cluster,
        &topic,
        &unique("net"),
        &dir,
        &["--batch", "1s", "--slide", "1s", "--window", "5m"],
    );
    svc.wait_ready(WAIT);
    common::wait_all_counted(svc.addr, lines.len() as u64, WAIT);

    let top = get_json(svc.addr, "/api/v1/top?n=20");
    for entry in top["top"].as_array().expect("top") {
        assert_eq!(entry["count"], 30, "only the busy clients: {entry}");
    }
    let v6 = get_json(svc.addr, "/api/v1/top?prefix6=64&n=3");
    assert_eq!(
        v6["top"][0],
        json!({"network": "2001:db8:55:1::/64", "count": 5000, "distinct_ips": 5000}),
        "{v6}"
    );
    assert_eq!(v6["total_requests"], lines.len());
    let v4 = get_json(svc.addr, "/api/v1/top?prefix4=24&n=3");
    assert_eq!(
        v4["top"][0],
        json!({"network": "203.0.113.0/24", "count": 500, "distinct_ips": 250}),
        "{v4}"
    );
    let both = get_json(svc.addr, "/api/v1/top?prefix4=24&prefix6=64&n=30");
    assert_eq!(
        both["distinct_networks"], 22,
        "the /64, the /24 and 20 busy /24s"
    );
    let members = get_json(svc.addr, "/api/v1/networks/203.0.113.0/24?n=2");
    assert_eq!(
        (members["count"].clone(), members["distinct_ips"].clone()),
        (json!(500), json!(250))
    );
    assert_eq!(members["top"].as_array().expect("top").len(), 2);
    assert_eq!(members["top"][0], json!({"ip": "203.0.113.1", "count": 2}));
    svc.terminate(WAIT);
}

#[test]
fn a_range_over_the_retention_answers_the_same_after_kill_9() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "retention", 1);
    // Fifty seconds of log, one second apart, ending now: a 10 s window
    // keeps the last ten, --retention 60s the rest.
    let start = SystemTime::now() - Duration::from_secs(50);
    let lines: Vec<Vec<u8>> = (0..50u64)
        .flat_map(|s| {
            (0..(s % 7 + 1)).map(move |k| {
                json_line(
                    &format!("198.51.100.{}", (s + k) % 9),
                    start + Duration::from_secs(s),
                )
            })
        })
        .collect();
    common::kcat_produce(&cluster.brokers, &topic, 0, &lines);
    let dir = std::env::temp_dir().join(unique("retention-ckpt"));
    let group = unique("retention");
    let extra = [
        "--batch",
        "1s",
        "--slide",
        "1s",
        "--window",
        "10s",
        "--retention",
        "60s",
    ];
    let mut svc = Service::on_cluster_exactly(&cluster, &topic, &group, &dir, &extra);
    svc.wait_ready(WAIT);
    let ask = |addr: SocketAddr, end: &str| {
        get_json(addr, &format!("/api/v1/top?n=100&window=55s&end={end}"))
    };
    // Every line in the kept history, and its offsets committed (so the
    // checkpoint holding them is durable).
    let end = wait_for("the whole history kept and committed", WAIT, || {
        let top = get_json(svc.addr, "/api/v1/top?n=1");
        let end = top["window"]["end"].as_str().expect("end").to_string();
        let all = ask(svc.addr, &end);
        let offsets = get_json(svc.addr, "/api/v1/offsets");
        let committed = offsets["partitions"][0]["committed_kafka"].as_i64();
        if all["total_requests"] == lines.len() && committed == Some(lines.len() as i64) {
            Ok(end)
        } else {
            Err(format!(
                "{} counted, committed {committed:?}",
                all["total_requests"]
            ))
        }
    });
    let before = ask(svc.addr, &end);
    let window_before = get_json(svc.addr, "/api/v1/top?n=100");
    assert!(
        window_before["total_requests"].as_u64() < before["total_requests"].as_u64(),
        "the window holds less than the retention"
    );
    svc.signal("KILL");
    svc.wait_exit(WAIT);

    let mut svc = Service::on_cluster_exactly(&cluster, &topic, &group, &dir, &extra);
    svc.wait_ready(WAIT);
    let after: Value = wait_for("the same answer after the restart", WAIT, || {
        let (status, body) =
            common::http_get(svc.addr, &format!("/api/v1/top?n=100&window=55s&end={end}"))
                .map_err(|e| e.to_string())?;
        if status == 200 {
            Ok(serde_json::from_str(&body).expect("json"))
        } else {
            Err(body)
        }
    });
    assert_eq!(after, before);
    assert_eq!(get_json(svc.addr, "/api/v1/top?n=100"), window_before);
    svc.terminate(WAIT);
}
