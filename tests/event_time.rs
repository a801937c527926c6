//! Event time on the real cluster: a replay answers as a live run did, late
//! records are counted as late exactly, a quiet partition never holds the
//! window back while a backlogged one does, a backlog read to the end is
//! answered without waiting for its batch, and kill -9 during a replay
//! loses and doubles nothing.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::{
    Cluster, Service, Truth, cluster, get_json, json_line, unique, wait_for, window_counts,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn ms(t: &Value) -> Option<i64> {
    let text = t.as_str()?;
    let when = humantime::parse_rfc3339_weak(text).ok()?;
    Some(when.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// `t` in milliseconds since the epoch.
fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as i64
}

/// `ipstats produce` lines stamped from `start`, `per_second` lines per second of log time.
fn produce_timed(
    cluster: &Cluster,
    topic: &str,
    count: u64,
    rate: u64,
    start: SystemTime,
    per_second: u64,
) -> Vec<Vec<u8>> {
    let out = std::env::temp_dir().join(format!("{}.lines", unique(topic)));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args(["produce", "--brokers", &cluster.brokers, "--topic", topic])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .args(["--ips", "400", "--seed", "14", "--malformed-ratio", "0.01"])
        .args(["--start-time", &rfc3339(start)])
        .args(["--time-rate", &per_second.to_string(), "--out"])
        .arg(&out)
        .output()
        .expect("run ipstats produce");
    assert!(
        output.status.success(),
        "ipstats produce: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read(&out).expect("--out file");
    let _ = std::fs::remove_file(&out);
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Waits until the window holds exactly `truth` and nothing was late.
fn wait_window(addr: SocketAddr, truth: &Truth) {
    wait_for("the window to hold exactly the truth", WAIT, || {
        let counts = window_counts(addr);
        if counts == truth.counts {
            Ok(())
        } else {
            let got: u64 = counts.values().sum();
            let status = get_json(addr, "/api/v1/status");
            Err(format!(
                "{got} of {} counted; consumed {}, late {}, window {} .. {}; partitions {}",
                truth.counted(),
                status["records_consumed"],
                status["time"]["records_late"],
                get_json(addr, "/api/v1/top?n=1")["window"]["start"],
                status["time"]["window_end"],
                get_json(addr, "/api/v1/offsets")["partitions"]
                    .as_array()
                    .map(|ps| ps
                        .iter()
                        .map(|p| format!(
                            "[{} until {} end {} lag {} newest {}]",
                            p["partition"],
                            p["until_offset"],
                            p["log_end"],
                            p["lag"],
                            p["newest_event_time"]
                        ))
                        .collect::<String>())
                    .unwrap_or_default(),
            ))
        }
    });
    let status = get_json(addr, "/api/v1/status");
    assert_eq!(status["time"]["records_late"], 0, "{status}");
    assert_eq!(status["time"]["source"], "event");
}

fn per_ip_history(addr: SocketAddr, ips: &[String]) -> BTreeMap<String, Value> {
    ips.iter()
        .map(|ip| (ip.clone(), get_json(addr, &format!("/api/v1/ips/{ip}"))))
        .collect()
}

/// The same per-IP history: the same count and window, and the same count
/// in every pane both list. A run lists panes from its own first one, which
/// depends on when its first batch came (a live run may open empty panes
/// up to the lateness before the first record, where later records could
/// still have joined); a pane only one of them lists must be empty.
fn same_history(live: &BTreeMap<String, Value>, replay: &BTreeMap<String, Value>) {
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        replay.keys().collect::<Vec<_>>()
    );
    for (ip, l) in live {
        let r = &replay[ip];
        assert_eq!(l["count"], r["count"], "{ip}");
        assert_eq!(l["window"], r["window"], "{ip}");
        let panes = |v: &Value| -> BTreeMap<String, u64> {
            v["panes"]
                .as_array()
                .expect("panes")
                .iter()
                .map(|p| {
                    (
                        p["start"].as_str().expect("start").to_string(),
                        p["count"].as_u64().expect("count"),
                    )
                })
                .collect()
        };
        let (lp, rp) = (panes(l), panes(r));
        for (start, n) in &lp {
            assert_eq!(
                rp.get(start).copied().unwrap_or(0),
                *n,
                "{ip} in the pane from {start}"
            );
        }
        for (start, n) in &rp {
            assert_eq!(
                lp.get(start).copied().unwrap_or(0),
                *n,
                "{ip} in the pane from {start}"
            );
        }
        let shared = lp.keys().filter(|s| rp.contains_key(*s)).count();
        assert!(
            shared * 10 >= rp.len() * 9,
            "{ip}: {shared} panes in common of {}",
            rp.len()
        );
    }
}

#[test]
fn a_replay_answers_as_the_live_run_and_both_equal_the_truth() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "replay", 3);
    // The producer writes 180 seconds of log time per wall second over three
    // partitions, so a few milliseconds between partitions (a busy machine
    // gives many more) put one partition's records seconds of log time
    // behind another's. The live run must count them, not call them late:
    // the lateness covers that skew (2 minutes of log time: 0.7 s of wall
    // time; the replay runs with the same flags).
    let windows = [
        "--batch",
        "1s",
        "--slide",
        "5s",
        "--window",
        "40m",
        "--lateness",
        "2m",
    ];
    let live_dir = std::env::temp_dir().join(unique("live-ckpt"));
    let mut live =
        Service::on_cluster_exactly(&cluster, &topic, &unique("live"), &live_dir, &windows);
    live.wait_ready(WAIT);
    // 30 minutes of log time (20 lines per log second), produced in ~10 s
    // while the live instance counts.
    let start = SystemTime::now() - Duration::from_secs(40 * 60);
    let lines = produce_timed(&cluster, &topic, 36_000, 3_600, start, 20);
    let truth = Truth::of(lines.iter().map(Vec::as_slice));
    wait_window(live.addr, &truth);

    let replay_dir = std::env::temp_dir().join(unique("replay-ckpt"));
    let mut replay =
        Service::on_cluster_exactly(&cluster, &topic, &unique("replay"), &replay_dir, &windows);
    replay.wait_ready(WAIT);
    wait_window(replay.addr, &truth);

    let top = |addr| get_json(addr, "/api/v1/top?n=100000");
    let (a, b) = (top(live.addr), top(replay.addr));
    assert_eq!(a["window"], b["window"], "the same event-time window");
    assert_eq!(a["top"], b["top"]);
    assert_eq!(a["total_requests"], b["total_requests"]);
    assert_eq!(a["total_requests"], truth.counted());
    let busiest: Vec<String> = a["top"]
        .as_array()
        .expect("top")
        .iter()
        .take(3)
        .map(|e| e["ip"].as_str().expect("ip").to_string())
        .collect();
    same_history(
        &per_ip_history(live.addr, &busiest),
        &per_ip_history(replay.addr, &busiest),
    );
    // The window's end is the data's time, not the wall clock.
    let end = ms(&a["window"]["end"]).expect("window end");
    let last = start + Duration::from_secs(36_000 / 20);
    let last_ms = epoch_ms(last);
    assert!(
        (last_ms..=last_ms + 10_000).contains(&end),
        "the window ends at the data's newest time: {end} vs {last_ms}"
    );
    let lag = get_json(replay.addr, "/api/v1/status")["time"]["event_time_lag_seconds"]
        .as_f64()
        .expect("lag");
    assert!(lag > 500.0, "ten minutes behind the clock: {lag}");
    live.terminate(WAIT);
    replay.terminate(WAIT);
}

#[test]
fn records_beyond_the_lateness_are_counted_as_late_exactly_and_within_it_join_their_pane() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "late", 1);
    let dir = std::env::temp_dir().join(unique("late-ckpt"));
    let extra = [
        "--batch",
        "1s",
        "--slide",
        "1s",
        "--window",
        "2m",
        "--lateness",
        "5s",
    ];
    let mut svc = Service::on_cluster_exactly(&cluster, &topic, &unique("late"), &dir, &extra);
    svc.wait_ready(WAIT);
    let now = SystemTime::now();
    let first: Vec<Vec<u8>> = (0..100)
        .map(|i| json_line(&format!("203.0.113.{}", i % 5), now))
        .collect();
    common::kcat_produce(&cluster.brokers, &topic, 0, &first);
    wait_window(svc.addr, &Truth::of(first.iter().map(Vec::as_slice)));
    let status = get_json(svc.addr, "/api/v1/status");
    let end = humantime::parse_rfc3339_weak(status["time"]["window_end"].as_str().expect("end"))
        .expect("rfc 3339");

    // 30 lines a minute behind the end (in the window, beyond the
    // lateness) and 20 two seconds behind it (within the lateness).
    let late: Vec<Vec<u8>> = (0..30)
        .map(|_| json_line("198.51.100.1", end - Duration::from_secs(60)))
        .collect();
    let within: Vec<Vec<u8>> = (0..20)
        .map(|_| json_line("198.51.100.2", end - Duration::from_secs(2)))
        .collect();
    common::kcat_produce(&cluster.brokers, &topic, 0, &[late, within].concat());
    wait_for("the late records counted as late", WAIT, || {
        let status = get_json(svc.addr, "/api/v1/status");
        match status["time"]["records_late"].as_u64() {
            Some(30) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_for("the timely records in their pane", WAIT, || {
        let counts = window_counts(svc.addr);
        match counts.get("198.51.100.2") {
            Some(20) => Ok(counts),
            other => Err(format!("{other:?}")),
        }
    });
    let counts = window_counts(svc.addr);
    assert_eq!(
        counts.get("198.51.100.1"),
        None,
        "late records are not in the window"
    );
    assert_eq!(counts.values().sum::<u64>(), 120);
    let offsets = get_json(svc.addr, "/api/v1/offsets");
    assert_eq!(offsets["partitions"][0]["records_late"], 30, "{offsets}");
    let late_metric = common::metric(
        svc.addr,
        &format!("ipstats_records_late_total{{partition=\"0\",topic=\"{topic}\"}}"),
    );
    assert_eq!(late_metric, Some(30.0));
    // The pane two seconds behind holds them, and the per-IP history says when.
    let detail = get_json(svc.addr, "/api/v1/ips/198.51.100.2");
    let panes = detail["panes"].as_array().expect("panes");
    let holding: Vec<&Value> = panes.iter().filter(|p| p["count"] != 0).collect();
    assert_eq!(holding.len(), 1, "{detail}");
    let pane_start = ms(&holding[0]["start"]).expect("start");
    let expected = end - Duration::from_secs(2);
    let expected_ms = epoch_ms(expected);
    assert!(
        (pane_start..pane_start + 1000).contains(&expected_ms),
        "{detail}"
    );
    svc.terminate(WAIT);
}

#[test]
fn a_quiet_partition_does_not_hold_the_window_back_a_backlogged_one_does() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "hold", 3);
    let base = SystemTime::now() - Duration::from_secs(600);
    // Partition 0: 200 lines over a minute; partition 1: 3,000 lines over
    // the same minute; partition 2: nothing at all.
    let p0: Vec<Vec<u8>> = (0..200)
        .map(|i| json_line("203.0.113.1", base + Duration::from_millis(i * 300)))
        .collect();
    let p1: Vec<Vec<u8>> = (0..3000)
        .map(|i| json_line("203.0.113.2", base + Duration::from_millis(i * 20)))
        .collect();
    common::kcat_produce(&cluster.brokers, &topic, 0, &p0);
    common::kcat_produce(&cluster.brokers, &topic, 1, &p1);
    let dir = std::env::temp_dir().join(unique("hold-ckpt"));
    // 300 records a second per partition: partition 1 stays behind for ~10 s.
    let extra = [
        "--batch",
        "1s",
        "--slide",
        "1s",
        "--window",
        "5m",
        "--max-rate-per-partition",
        "300",
    ];
    let mut svc = Service::on_cluster_exactly(&cluster, &topic, &unique("hold"), &dir, &extra);
    svc.wait_ready(WAIT);
    let mut held_back = 0;
    wait_for("partition 1 caught up", WAIT, || {
        let status = get_json(svc.addr, "/api/v1/status");
        let offsets = get_json(svc.addr, "/api/v1/offsets");
        let p1 = &offsets["partitions"][1];
        let (Some(end), Some(newest1)) = (
            ms(&status["time"]["window_end"]),
            ms(&p1["newest_event_time"]),
        ) else {
            return Err("no event time yet".into());
        };
        if p1["lag"].as_i64().unwrap_or(1) > 0 {
            // Behind: the end is at most the slide boundary after its newest record.
            assert!(
                end <= newest1 + 2_000,
                "end {end} ran ahead of backlogged partition 1 at {newest1}"
            );
            let newest0 = ms(&offsets["partitions"][0]["newest_event_time"]);
            if newest0.is_some_and(|n0| end < n0) {
                held_back += 1;
            }
            Err(format!("partition 1 at {newest1}, end {end}"))
        } else {
            Ok(())
        }
    });
    assert!(
        held_back > 0,
        "partition 0 was ahead while partition 1 held the end back"
    );
    // Partition 2 never delivered anything, yet the window reaches the newest records.
    let truth = Truth::of(p0.iter().chain(&p1).map(Vec::as_slice));
    wait_window(svc.addr, &truth);
    let status = get_json(svc.addr, "/api/v1/status");
    let end = ms(&status["time"]["window_end"]).expect("end");
    let newest = base + Duration::from_millis(2999 * 20);
    let newest_ms = epoch_ms(newest);
    assert!(
        end > newest_ms,
        "the newest second is in the window: {end} vs {newest_ms}"
    );
    svc.terminate(WAIT);
}

#[test]
fn a_backlog_read_to_the_end_is_answered_before_its_batch_is_due() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "read-to-end", 3);
    // A minute of log time, twenty seconds a partition.
    let base = SystemTime::now() - Duration::from_secs(90);
    let lines: Vec<Vec<u8>> = (0..3000u64)
        .map(|i| {
            let ip = format!("198.51.100.{}", i % 50 + 1);
            json_line(&ip, base + Duration::from_millis(i * 20))
        })
        .collect();
    for (partition, part) in lines.chunks(1000).enumerate() {
        common::kcat_produce(&cluster.brokers, &topic, partition as i32, part);
    }
    let truth = Truth::of(lines.iter().map(Vec::as_slice));
    // Batches of a minute: on the grid alone, the first answer (and
    // readiness, which waits for the first batch) would come a minute after
    // the start.
    let extra = ["--batch", "60s", "--slide", "60s", "--window", "10m"];
    let dir = std::env::temp_dir().join(unique("read-to-end-ckpt"));
    let mut svc =
        Service::on_cluster_exactly(&cluster, &topic, &unique("read-to-end"), &dir, &extra);
    svc.wait_ready(Duration::from_secs(45));
    let top = wait_for("the backlog counted", Duration::from_secs(45), || {
        let top = get_json(svc.addr, "/api/v1/top?n=100");
        if top["total_requests"].as_u64() == Some(truth.counted()) {
            Ok(top)
        } else {
            Err(format!("{} of {}", top["total_requests"], truth.counted()))
        }
    });
    assert_eq!(top["distinct_ips"], 50, "{top}");
    // Every record is in the window: its end is past the newest one.
    let newest = base + Duration::from_millis(2999 * 20);
    let newest_ms = epoch_ms(newest);
    let end = ms(&top["window"]["end"]).expect("window end");
    assert!(end > newest_ms, "{end} vs {newest_ms}");
    svc.terminate(WAIT);
}

#[test]
fn kill_9_during_a_backlog_replay_loses_and_doubles_nothing() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "replay-kill", 3);
    let start = SystemTime::now() - Duration::from_secs(30 * 60);
    let lines = produce_timed(&cluster, &topic, 30_000, 0, start, 20);
    let truth = Truth::of(lines.iter().map(Vec::as_slice));
    let dir = std::env::temp_dir().join(unique("kill-ckpt"));
    let group = unique("kill");
    let extra = [
        "--batch",
        "500ms",
        "--slide",
        "1s",
        "--window",
        "40m",
        "--max-rate-per-partition",
        "1000",
    ];
    for round in 0..3 {
        let mut svc = Service::on_cluster_exactly(&cluster, &topic, &group, &dir, &extra);
        svc.wait_ready(WAIT);
        let target = 6_000 * (round + 1);
        wait_for("part of the backlog read", WAIT, || {
            let consumed = get_json(svc.addr, "/api/v1/status")["records_consumed"]
                .as_u64()
                .unwrap_or(0);
            if consumed >= target {
                Ok(())
            } else {
                Err(format!("{consumed}"))
            }
        });
        svc.signal("KILL");
        svc.wait_exit(WAIT);
    }
    let mut svc = Service::on_cluster_exactly(&cluster, &topic, &group, &dir, &extra);
    svc.wait_ready(WAIT);
    wait_window(svc.addr, &truth);
    svc.terminate(WAIT);
}
