//! The whole service on the in-process mock cluster: known lines in, exact
//! counts, skip counters and offsets out. (Real Kafka: see tests/kafka_*.rs.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Truth, get_json, settings, skipped_counts, wait_for, window_counts};
use ipstats::app::App;
use ipstats::tools::traffic::{Traffic, TrafficConfig};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn lines(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut traffic = Traffic::new(&TrafficConfig {
        ips: 300,
        zipf: 1.0,
        seed,
        malformed_ratio: 0.05,
    });
    let mut out: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            let mut line = Vec::new();
            traffic.next_line(std::time::SystemTime::now(), &mut line);
            line
        })
        .collect();
    // Hostile lines: huge, escaped, and a valid-looking address in invalid JSON.
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    out.push(
        format!(
            r#"{{"client_real_ip":"10.9.9.9","time_local":"{now}","pad":"{}"}}"#,
            "x".repeat(70_000)
        )
        .into_bytes(),
    );
    out.push(
        format!(r#"{{"client_real_ip":"10\u002e9\u002e9\u002e9","time_local":"{now}"}}"#)
            .into_bytes(),
    );
    out.push(format!(r#"{{"client_real_ip":"10.9.9.9","time_local":"{now}""#).into_bytes());
    // Event time: no readable time, and a time far ahead of the clock.
    out.push(br#"{"client_real_ip":"10.9.9.7","time_local":"yesterday"}"#.to_vec());
    out.push(
        br#"{"client_real_ip":"10.9.9.8","time_local":"01/Jan/2099:00:00:00 +0000"}"#.to_vec(),
    );
    out
}

/// Writes `lines` round-robin over `partitions`; returns records per partition.
fn produce(bootstrap: &str, topic: &str, partitions: i32, lines: &[Vec<u8>]) -> Vec<i64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    let mut per_partition = vec![0i64; partitions as usize];
    for (i, line) in lines.iter().enumerate() {
        let p = (i % partitions as usize) as i32;
        producer
            .send(BaseRecord::<(), [u8]>::to(topic).partition(p).payload(line))
            .map_err(|(e, _)| e)
            .expect("enqueue");
        per_partition[p as usize] += 1;
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    per_partition
}

fn records_consumed(addr: SocketAddr) -> u64 {
    get_json(addr, "/api/v1/status")["records_consumed"]
        .as_u64()
        .expect("records_consumed")
}

fn wait_consumed(addr: SocketAddr, expected: u64) {
    wait_for("every record consumed", WAIT, || {
        let n = records_consumed(addr);
        // A snapshot is published at every slide; require one that holds all.
        let top = get_json(addr, "/api/v1/top?n=1");
        let status = get_json(addr, "/api/v1/status");
        let counted = status["records_counted"].as_u64().unwrap_or(0);
        if n == expected && top["total_requests"].as_u64() == Some(counted) {
            Ok(())
        } else {
            Err(format!("consumed {n} of {expected}"))
        }
    });
}

async fn start(bootstrap: &str, extra: &[&str]) -> App {
    let checkpoint = std::env::temp_dir().join(common::unique("embedded-ckpt"));
    start_in(bootstrap, &checkpoint, extra)
        .await
        .expect("service starts")
}

/// Starts on `checkpoint`; `extra` may override batch, slide and window.
async fn start_in(
    bootstrap: &str,
    checkpoint: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<App> {
    let checkpoint = checkpoint.to_str().expect("utf-8 path").to_string();
    let mut args = vec![
        "--checkpoint-dir",
        &checkpoint,
        "--brokers",
        bootstrap,
        "--listen",
        "127.0.0.1:0",
    ];
    for (flag, default) in [
        ("--batch", "100ms"),
        ("--slide", "100ms"),
        ("--window", "120s"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend_from_slice(extra);
    App::start(settings(&args)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_exactly_what_was_produced() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("logs", 3, 1).expect("topic");
    let lines = lines(3000, 11);
    let per_partition = produce(&bootstrap, "logs", 3, &lines);
    let truth = Truth::of(lines.iter().map(|l| l.as_slice()));
    assert!(
        truth
            .skipped
            .iter()
            .filter(|(reason, _)| **reason != "bad_format")
            .all(|(_, &n)| n > 0),
        "every JSON reason occurs (bad_format is CLF's): {:?}",
        truth.skipped
    );

    let app = start(&bootstrap, &["--topics", "logs", "--group", "exact"]).await;
    let addr = app.local_addr();
    tokio::task::spawn_blocking(move || {
        wait_consumed(addr, truth.lines);
        assert_eq!(window_counts(addr), truth.counts, "per-IP counts are exact");
        assert_eq!(
            skipped_counts(addr),
            truth.skipped,
            "skip counters are exact"
        );
        assert!(truth.repaired > 0, "some lines hold invalid UTF-8");
        assert_eq!(
            get_json(addr, "/api/v1/status")["records_repaired"].as_u64(),
            Some(truth.repaired),
            "lines read repaired are counted"
        );
        assert_eq!(
            common::metric(addr, "ipstats_records_repaired_total"),
            Some(truth.repaired as f64)
        );
        let top = get_json(addr, "/api/v1/top?n=100000");
        assert_eq!(top["total_requests"].as_u64(), Some(truth.counted()));
        assert_eq!(
            top["distinct_ips"].as_u64(),
            Some(truth.counts.len() as u64)
        );
        let escaped = get_json(addr, "/api/v1/ips/10.9.9.9");
        assert_eq!(escaped["count"], 1, "only the escaped, valid line counts");

        let offsets = get_json(addr, "/api/v1/offsets");
        assert_eq!(offsets["group"], "exact");
        let partitions = offsets["partitions"].as_array().expect("partitions");
        assert_eq!(partitions.len(), 3);
        for p in partitions {
            let i = p["partition"].as_u64().expect("partition") as usize;
            assert_eq!(p["from_offset"], 0);
            assert_eq!(p["until_offset"].as_i64(), Some(per_partition[i]), "{p}");
            assert_eq!(p["log_start"], 0);
        }
        // log_end comes from the monitor; it catches up within a refresh.
        wait_for("lag 0 everywhere", WAIT, || {
            let offsets = get_json(addr, "/api/v1/offsets");
            let lags: Vec<Value> = offsets["partitions"]
                .as_array()
                .expect("partitions")
                .iter()
                .map(|p| p["lag"].clone())
                .collect();
            if lags.iter().all(|l| l == 0) {
                Ok(())
            } else {
                Err(format!("{lags:?}"))
            }
        });
        let metrics = common::http_get(addr, "/metrics").expect("metrics").1;
        for needle in [
            "ipstats_records_consumed_total{partition=\"0\",topic=\"logs\"}",
            "kafka_consumergroup_lag{consumergroup=\"exact\",partition=\"2\",topic=\"logs\"} 0",
            &format!("ipstats_window_requests {}", truth.counted()),
            "process_resident_memory_bytes",
        ] {
            assert!(metrics.contains(needle), "metrics lack {needle}");
        }
        // Counting state: at least 8 bytes for each distinct address held.
        let state_bytes: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("ipstats_state_bytes "))
            .expect("ipstats_state_bytes")
            .parse()
            .expect("a number");
        assert!(
            state_bytes >= 8.0 * truth.counts.len() as f64,
            "{state_bytes} bytes for {} addresses",
            truth.counts.len()
        );
    })
    .await
    .expect("assertions");
    app.run_until(async {}).await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_cap_delays_but_never_loses_or_duplicates() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("capped", 1, 1).expect("topic");
    let lines = lines(400, 12);
    produce(&bootstrap, "capped", 1, &lines);
    let truth = Truth::arrival(lines.iter().map(|l| l.as_slice()));
    // 100 records/s in 100 ms batches: at most 10 records per batch, each
    // batch its own pane by arrival time.
    let app = start(
        &bootstrap,
        &[
            "--topics",
            "capped",
            "--max-rate-per-partition",
            "100",
            "--time-source",
            "arrival",
        ],
    )
    .await;
    let addr = app.local_addr();
    tokio::task::spawn_blocking(move || {
        let mut max_per_pane = 0;
        wait_consumed(addr, truth.lines);
        assert_eq!(window_counts(addr), truth.counts);
        assert_eq!(skipped_counts(addr), truth.skipped);
        let status = get_json(addr, "/api/v1/status");
        let batches = status["batches"].as_u64().expect("batches");
        assert!(
            batches >= truth.lines / 10,
            "{batches} batches for {} records",
            truth.lines
        );
        // Per pane, no partition exceeded its cap: check through the busiest IP's history.
        let top = get_json(addr, "/api/v1/top?n=1");
        let busiest = top["top"][0]["ip"].as_str().expect("ip").to_string();
        let detail = get_json(addr, &format!("/api/v1/ips/{busiest}"));
        for pane in detail["panes"].as_array().expect("panes") {
            max_per_pane = max_per_pane.max(pane["count"].as_u64().expect("count"));
        }
        assert!(
            max_per_pane <= 10,
            "a pane held {max_per_pane} records of one IP"
        );
    })
    .await
    .expect("assertions");
    app.run_until(async {}).await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_skips_old_records_and_late_topics_are_picked_up() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("old", 2, 1).expect("topic");
    produce(&bootstrap, "old", 2, &lines(200, 13));
    let app = start(
        &bootstrap,
        &["--topics", "old,late", "--offset-reset", "latest"],
    )
    .await;
    let addr = app.local_addr();
    let fresh = lines(150, 14);
    let late = lines(120, 15);
    let truth = Truth::of(fresh.iter().chain(&late).map(|l| l.as_slice()));
    {
        let bootstrap = bootstrap.clone();
        let fresh = fresh.clone();
        tokio::task::spawn_blocking(move || {
            wait_for("both partitions of `old` assigned", WAIT, || {
                let offsets = get_json(addr, "/api/v1/offsets");
                let n = offsets["partitions"].as_array().map_or(0, |a| a.len());
                if n == 2 {
                    Ok(())
                } else {
                    Err(format!("{n} partitions"))
                }
            });
            produce(&bootstrap, "old", 2, &fresh);
        })
        .await
        .expect("produce fresh");
    }
    // A topic that did not exist at start is consumed from its beginning once created.
    cluster.create_topic("late", 2, 1).expect("late topic");
    tokio::task::spawn_blocking(move || {
        produce(&bootstrap, "late", 2, &late);
        wait_consumed(addr, truth.lines);
        assert_eq!(
            window_counts(addr),
            truth.counts,
            "old records were not counted"
        );
        let offsets = get_json(addr, "/api/v1/offsets");
        let topics: Vec<&str> = offsets["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .filter_map(|p| p["topic"].as_str())
            .collect();
        assert_eq!(
            topics.iter().filter(|t| **t == "late").count(),
            2,
            "{topics:?}"
        );
    })
    .await
    .expect("assertions");
    app.run_until(async {}).await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_reset_fail_stops_with_the_partition_named() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("strict", 1, 1).expect("topic");
    let app = start(
        &bootstrap,
        &["--topics", "strict", "--offset-reset", "fail"],
    )
    .await;
    let error = app
        .run_until(std::future::pending())
        .await
        .expect_err("no stored offset and --offset-reset fail");
    let message = format!("{error:#}");
    assert!(
        message.contains("strict/0") && message.contains("--offset-reset"),
        "{message}"
    );
}

fn manifests(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("manifest-"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_restores_the_window_and_rewindows_without_loss() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("kept", 2, 1).expect("topic");
    let lines = lines(1500, 16);
    produce(&bootstrap, "kept", 2, &lines);
    let truth = Truth::of(lines.iter().map(|l| l.as_slice()));
    let dir = std::env::temp_dir().join(common::unique("restart-ckpt"));

    let app = start_in(&bootstrap, &dir, &["--topics", "kept"])
        .await
        .expect("starts");
    let addr = app.local_addr();
    let expected = truth.counts.clone();
    tokio::task::spawn_blocking(move || {
        wait_consumed(addr, 1505);
        assert_eq!(window_counts(addr), expected);
    })
    .await
    .expect("first run");
    app.run_until(async {}).await.expect("graceful stop");
    assert!(manifests(&dir) >= 1, "a final checkpoint was written");

    // Same batch, longer window and slide: the panes still fit.
    let app = start_in(
        &bootstrap,
        &dir,
        &["--topics", "kept", "--window", "240s", "--slide", "200ms"],
    )
    .await
    .expect("restarts");
    let addr = app.local_addr();
    tokio::task::spawn_blocking(move || {
        wait_for("the restored window", WAIT, || {
            let status = get_json(addr, "/api/v1/status");
            if status["ready"] == true {
                Ok(())
            } else {
                Err(status.to_string())
            }
        });
        wait_consumed(addr, 1505);
        assert_eq!(
            window_counts(addr),
            truth.counts,
            "nothing lost, nothing re-read"
        );
        assert_eq!(skipped_counts(addr), truth.skipped);
        let metrics = common::http_get(addr, "/metrics").expect("metrics").1;
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("ipstats_records_consumed_total{") && !l.ends_with(" 0")),
            "the restarted run read no record again"
        );
        let status = get_json(addr, "/api/v1/status");
        assert!(
            status["checkpoint"]["restored_from"]
                .as_str()
                .is_some_and(|s| s.contains("manifest"))
        );
    })
    .await
    .expect("second run");
    app.run_until(async {}).await.expect("graceful stop");

    // Another batch no longer fits the panes: refused, naming both and the ways out.
    let app = start_in(
        &bootstrap,
        &dir,
        &["--topics", "kept", "--batch", "200ms", "--slide", "200ms"],
    )
    .await
    .expect("binds");
    let error = format!(
        "{:#}",
        app.run_until(std::future::pending())
            .await
            .expect_err("refused")
    );
    assert!(
        error.contains("--batch 100ms")
            && error.contains("--batch 200ms")
            && error.contains("--reset-checkpoint"),
        "{error}"
    );
    // ...unless told to start afresh: the window is empty, and the start
    // offsets come from the Kafka group, so nothing is counted twice.
    let app = start_in(
        &bootstrap,
        &dir,
        &[
            "--topics",
            "kept",
            "--batch",
            "200ms",
            "--slide",
            "200ms",
            "--reset-checkpoint",
        ],
    )
    .await
    .expect("starts afresh");
    let addr = app.local_addr();
    let more = self::lines(200, 17);
    let fresh = Truth::of(more.iter().map(|l| l.as_slice())).counts;
    tokio::task::spawn_blocking(move || {
        wait_for("ready", WAIT, || match common::http_get(addr, "/readyz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        });
        let offsets = get_json(addr, "/api/v1/offsets");
        for p in offsets["partitions"].as_array().expect("partitions") {
            assert_eq!(p["start"]["from"], "kafka", "{p}");
            assert_eq!(p["start"]["offset"], p["log_end"], "{p}");
        }
        produce(&bootstrap, "kept", 2, &more);
        wait_consumed(addr, more.len() as u64);
        assert_eq!(window_counts(addr), fresh, "only the new records");
    })
    .await
    .expect("resumed from the group");
    app.run_until(async {}).await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_checkpoint_directory_degrades_but_never_stops_counting() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("disk", 1, 1).expect("topic");
    let dir = std::env::temp_dir().join(common::unique("disk-ckpt"));
    let app = start_in(
        &bootstrap,
        &dir,
        &["--topics", "disk", "--checkpoint-interval", "100ms"],
    )
    .await
    .expect("starts");
    let addr = app.local_addr();
    let first = lines(200, 17);
    let second = lines(300, 18);
    let truth = Truth::of(first.iter().chain(&second).map(|l| l.as_slice()));
    let panes = dir.join("panes");
    tokio::task::spawn_blocking(move || {
        produce(&bootstrap, "disk", 1, &first);
        wait_consumed(addr, 205);
        wait_for("a checkpoint", WAIT, || {
            let age = get_json(addr, "/api/v1/status")["checkpoint"]["age_seconds"].clone();
            if age.is_number() {
                Ok(())
            } else {
                Err(age.to_string())
            }
        });
        // The pane directory becomes a file: every write fails (even as root).
        std::fs::rename(&panes, dir.join("panes.moved")).expect("move panes");
        std::fs::write(&panes, b"not a directory").expect("block");
        produce(&bootstrap, "disk", 1, &second);
        wait_for("checkpoint failures reported", WAIT, || {
            let ready = common::http_get(addr, "/readyz").map_err(|e| e.to_string())?;
            let status = get_json(addr, "/api/v1/status");
            let failures = common::metric(addr, "ipstats_checkpoint_failures_total{reason=\"io\"}")
                .unwrap_or(0.0);
            if status["checkpoint"]["failing"] == true
                && ready.0 == 200
                && ready.1.contains("checkpoint")
                && failures > 0.0
            {
                Ok(())
            } else {
                Err(format!("{} {:?}", status["checkpoint"], ready))
            }
        });
        wait_consumed(addr, truth.lines);
        assert_eq!(window_counts(addr), truth.counts, "counting went on");
        assert!(manifests(&dir) >= 1, "the last good checkpoint is kept");
        std::fs::remove_file(&panes).expect("unblock");
        std::fs::rename(dir.join("panes.moved"), &panes).expect("restore panes");
        wait_for("checkpoints written again", WAIT, || {
            let status = get_json(addr, "/api/v1/status");
            if status["checkpoint"]["failing"] == false {
                Ok(())
            } else {
                Err(status["checkpoint"].to_string())
            }
        });
    })
    .await
    .expect("assertions");
    app.run_until(async {}).await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_timestamp_can_be_the_time() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("stamped", 2, 1).expect("topic");
    // Lines without a time of their own, stamped by Kafka over a minute
    // that ended ten minutes ago.
    let first_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as i64
        - 11 * 60_000;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    let lines: Vec<Vec<u8>> = (0..300)
        .map(|i| format!(r#"{{"client_real_ip":"198.51.100.{}"}}"#, i % 7).into_bytes())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        producer
            .send(
                BaseRecord::<(), [u8]>::to("stamped")
                    .partition((i % 2) as i32)
                    .payload(line)
                    .timestamp(first_ms + i as i64 * 200),
            )
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let truth = Truth::arrival(lines.iter().map(|l| l.as_slice()));
    let app = start(
        &bootstrap,
        &[
            "--topics",
            "stamped",
            "--time-source",
            "kafka",
            "--batch",
            "1s",
            "--slide",
            "1s",
            "--window",
            "2m",
        ],
    )
    .await;
    let addr = app.local_addr();
    tokio::task::spawn_blocking(move || {
        wait_for("the window to hold every line", WAIT, || {
            let counts = window_counts(addr);
            if counts == truth.counts {
                Ok(())
            } else {
                Err(format!("{counts:?}"))
            }
        });
        let status = get_json(addr, "/api/v1/status");
        assert_eq!(status["time"]["source"], "kafka");
        assert_eq!(status["time"]["records_late"], 0);
        // The window ends at the slide after the newest timestamp.
        let end = humantime::parse_rfc3339_weak(status["time"]["window_end"].as_str().expect("end"))
            .expect("rfc 3339")
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis() as i64;
        let newest = first_ms + 299 * 200;
        assert!(
            (newest..=newest + 1_000).contains(&end),
            "{end} vs {newest}"
        );
        // A minute of data: about sixty one-second panes hold records.
        let detail = get_json(addr, "/api/v1/ips/198.51.100.0");
        let holding = detail["panes"]
            .as_array()
            .expect("panes")
            .iter()
            .filter(|p| p["count"] != 0)
            .count();
        assert!((35..=61).contains(&holding), "{detail}");
    })
    .await
    .expect("assertions");
    app.run_until(async {}).await.expect("clean stop");
}
