//! Offsets against the real Kafka broker and ZooKeeper of scripts/cluster.sh,
//! checked with independent tools: zkCli.sh for znodes, Kafka's
//! consumer-groups and get-offsets tools, kcat for the records themselves.
//! Each test has its own topic, group and ZooKeeper chroot.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{
    Cluster, PrivateZk, Service, Truth, cluster, cluster_tool, describe_group, get_json, http_get,
    log_ends, metric, produce_lines, unique, wait_for, window_counts, zk_get,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Everything one test needs to start ipstats against the cluster.
struct Setup {
    cluster: Cluster,
    topic: String,
    group: String,
    chroot: String,
}

impl Setup {
    fn new(name: &str) -> Option<Setup> {
        Some(Setup {
            cluster: cluster()?,
            topic: unique(name),
            group: unique("group"),
            chroot: format!("/{}", unique("chroot")),
        })
    }

    fn zookeeper(&self) -> String {
        format!("{}{}", self.cluster.zookeeper, self.chroot)
    }

    fn offset_znode(&self, partition: i32) -> String {
        format!(
            "{}/consumers/{}/offsets/{}/{partition}",
            self.chroot, self.group, self.topic
        )
    }

    fn spawn(&self, checkpoint: &std::path::Path, extra: &[&str]) -> Service {
        Service::on_cluster(
            &self.cluster,
            Some(&self.zookeeper()),
            &self.topic,
            &self.group,
            checkpoint,
            extra,
        )
    }

    /// Without `--zookeeper`: the Kafka group is the only offset store.
    fn spawn_without_zk(&self, checkpoint: &std::path::Path, extra: &[&str]) -> Service {
        Service::on_cluster(
            &self.cluster,
            None,
            &self.topic,
            &self.group,
            checkpoint,
            extra,
        )
    }
}

fn wait_counted(addr: SocketAddr, truth: &Truth) {
    common::wait_all_counted(addr, truth.lines, WAIT);
    assert_eq!(window_counts(addr), truth.counts, "per-IP counts are exact");
}

/// Waits until the API shows both stores committed at `ends`.
fn wait_committed(addr: SocketAddr, ends: &BTreeMap<i32, i64>) {
    wait_committed_to(addr, ends, true);
}

/// Waits until the API shows the group (and ZooKeeper, if `zookeeper`; else
/// null) committed at `ends`.
fn wait_committed_to(addr: SocketAddr, ends: &BTreeMap<i32, i64>, zookeeper: bool) {
    wait_for("offsets committed", WAIT, || {
        let offsets = get_json(addr, "/api/v1/offsets");
        let seen: BTreeMap<i32, (Value, Value)> = offsets["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|p| {
                (
                    p["partition"].as_i64().unwrap_or(-1) as i32,
                    (
                        p["committed_zookeeper"].clone(),
                        p["committed_kafka"].clone(),
                    ),
                )
            })
            .collect();
        let expected: BTreeMap<i32, (Value, Value)> = ends
            .iter()
            .map(|(p, e)| {
                let zk = if zookeeper {
                    Value::from(*e)
                } else {
                    Value::Null
                };
                (*p, (zk, Value::from(*e)))
            })
            .collect();
        if seen == expected {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
}

/// The records of a partition from `from` to the end, read by kcat.
fn kcat_lines(brokers: &str, topic: &str, partition: i32, from: i64) -> Vec<Vec<u8>> {
    let output = Command::new("kcat")
        .args([
            "-C",
            "-b",
            brokers,
            "-t",
            topic,
            "-p",
            &partition.to_string(),
            "-o",
            &from.to_string(),
            "-e",
            "-q",
        ])
        .output()
        .expect("run kcat");
    assert!(
        output.status.success(),
        "kcat: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn zookeeper_holds_plain_offsets_and_a_restart_counts_only_new_records() {
    let Some(s) = Setup::new("zk-offsets") else {
        return;
    };
    let first = produce_lines(&s.cluster, &s.topic, 5_000, 3, 31);
    let mut svc = s.spawn(&temp_dir("ckpt-a"), &[]);
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, &Truth::of(first.iter().map(Vec::as_slice)));
    let ends = log_ends(&s.cluster.brokers, &s.topic);
    assert_eq!(ends.values().sum::<i64>(), 5_000);
    wait_committed(svc.addr, &ends);

    // Independent tools agree: zkCli prints a plain decimal, and the group's
    // committed offsets equal the log end.
    for (partition, end) in &ends {
        assert_eq!(
            zk_get(&s.cluster.zookeeper, &s.offset_znode(*partition)),
            Some(end.to_string())
        );
    }
    let described = describe_group(&s.cluster.brokers, &s.group);
    for (partition, end) in &ends {
        assert_eq!(
            described.get(&(s.topic.clone(), *partition)),
            Some(&(Some(*end), *end, Some(0))),
            "{described:?}"
        );
    }
    let (status, log) = svc.terminate_logged(WAIT);
    assert!(status.success(), "graceful stop exits 0: {log}");
    // The stop says what it did, in order, and nothing after ingest stopped
    // describes counting as if it went on.
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("{what:?} in {log}"))
    };
    let stopped = at("ingest stopped");
    assert!(stopped < at("final checkpoint written"), "{log}");
    assert!(
        log.matches("final offsets committed").count() == 2,
        "ZooKeeper and the group: {log}"
    );
    assert!(!log[stopped..].contains("progress:"), "{log}");

    // An empty checkpoint directory: the start offsets come from ZooKeeper.
    let second = produce_lines(&s.cluster, &s.topic, 2_000, 3, 32);
    let mut svc = s.spawn(&temp_dir("ckpt-b"), &[]);
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, &Truth::of(second.iter().map(Vec::as_slice)));
    assert_eq!(
        metric(svc.addr, "ipstats_offset_resets_total{reason=\"missing\"}"),
        Some(0.0)
    );
}

#[test]
fn expired_zookeeper_offsets_restart_at_the_log_start_and_count_the_loss() {
    let Some(s) = Setup::new("expired") else {
        return;
    };
    let first = produce_lines(&s.cluster, &s.topic, 300, 1, 41);
    let checkpoint = temp_dir("ckpt");
    let mut svc = s.spawn(&checkpoint, &[]);
    svc.wait_ready(WAIT);
    wait_committed(svc.addr, &BTreeMap::from([(0, 300)]));
    assert!(svc.terminate(WAIT).success());

    // While ipstats is down, 700 more records arrive and retention (here:
    // delete-records) removes everything below offset 600.
    produce_lines(&s.cluster, &s.topic, 700, 1, 42);
    delete_records(&s, 600);
    let remaining = kcat_lines(&s.cluster.brokers, &s.topic, 0, 600);
    assert_eq!(remaining.len(), 400);

    // Without local state: the ZooKeeper offset (300) has expired.
    let mut svc = s.spawn(&temp_dir("ckpt-fresh"), &[]);
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, &Truth::of(remaining.iter().map(Vec::as_slice)));
    let series = |name: &str| metric(svc.addr, name);
    assert_eq!(
        series("ipstats_offset_resets_total{reason=\"expired\"}"),
        Some(1.0)
    );
    assert_eq!(
        series(&format!(
            "ipstats_records_lost_total{{partition=\"0\",topic=\"{}\"}}",
            s.topic
        )),
        Some(300.0)
    );
    let reset = &get_json(svc.addr, "/api/v1/offsets")["partitions"][0]["last_reset"];
    assert_eq!(reset["reason"], "expired");
    assert_eq!(
        (reset["stored_offset"].as_i64(), reset["reset_to"].as_i64()),
        (Some(300), Some(600))
    );
    assert_eq!(reset["records_lost"], 300);
    assert!(
        svc.log_text()
            .contains("partition does not start at a stored offset"),
        "the reset is logged"
    );
    wait_committed(svc.addr, &BTreeMap::from([(0, 1000)]));
    assert!(svc.terminate(WAIT).success());

    // The first run's checkpoint (at 300) wins over ZooKeeper (now at 1000);
    // its offset has expired as well: its 300 restored records plus the 400
    // still readable, and the same 300 reported lost.
    let mut svc = s.spawn(&checkpoint, &[]);
    svc.wait_ready(WAIT);
    wait_counted(
        svc.addr,
        &Truth::of(first.iter().chain(&remaining).map(Vec::as_slice)),
    );
    assert_eq!(
        metric(
            svc.addr,
            &format!(
                "ipstats_records_lost_total{{partition=\"0\",topic=\"{}\"}}",
                s.topic
            )
        ),
        Some(300.0)
    );
}

/// `count` records into partition 0, counted and committed by a first run
/// (with ZooKeeper or without) that then stops gracefully.
fn first_run(s: &Setup, zookeeper: bool, count: u64, seed: u64) {
    produce_lines(&s.cluster, &s.topic, count, 1, seed);
    let checkpoint = temp_dir("ckpt-first");
    let mut svc = if zookeeper {
        s.spawn(&checkpoint, &[])
    } else {
        s.spawn_without_zk(&checkpoint, &[])
    };
    svc.wait_ready(WAIT);
    wait_committed_to(svc.addr, &BTreeMap::from([(0, count as i64)]), zookeeper);
    assert!(svc.terminate(WAIT).success());
}

/// Each partition's `start` object in `/api/v1/offsets`.
fn starts(addr: SocketAddr) -> BTreeMap<i64, Value> {
    get_json(addr, "/api/v1/offsets")["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| (p["partition"].as_i64().unwrap_or(-1), p["start"].clone()))
        .collect()
}

/// Sets the group's committed offset of partition 0 with Kafka's own tool.
fn set_group_offset(s: &Setup, offset: i64) {
    cluster_tool(&[
        "kafka-consumer-groups",
        "--bootstrap-server",
        &s.cluster.brokers,
        "--group",
        &s.group,
        "--topic",
        &format!("{}:0", s.topic),
        "--reset-offsets",
        "--to-offset",
        &offset.to_string(),
        "--execute",
    ]);
    let described = describe_group(&s.cluster.brokers, &s.group);
    assert_eq!(
        described.get(&(s.topic.clone(), 0)).and_then(|row| row.0),
        Some(offset),
        "{described:?}"
    );
}

#[test]
fn without_zookeeper_a_lost_checkpoint_resumes_from_the_kafka_group() {
    let Some(s) = Setup::new("group-resume") else {
        return;
    };
    let first = produce_lines(&s.cluster, &s.topic, 3_000, 2, 61);
    let mut svc = s.spawn_without_zk(&temp_dir("ckpt-a"), &[]);
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, &Truth::of(first.iter().map(Vec::as_slice)));
    let ends = log_ends(&s.cluster.brokers, &s.topic);
    wait_committed_to(svc.addr, &ends, false);
    assert!(svc.terminate(WAIT).success());

    // The checkpoint directory is lost: only the group remembers where the
    // first run stopped, and only the new records are counted.
    let second = produce_lines(&s.cluster, &s.topic, 1_000, 2, 62);
    let mut svc = s.spawn_without_zk(&temp_dir("ckpt-lost"), &[]);
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, &Truth::of(second.iter().map(Vec::as_slice)));
    for (partition, start) in starts(svc.addr) {
        assert_eq!(start["from"], "kafka", "{start}");
        assert_eq!(
            start["offset"].as_i64(),
            ends.get(&(partition as i32)).copied()
        );
    }
    assert_eq!(
        metric(svc.addr, "ipstats_offset_resets_total{reason=\"missing\"}"),
        Some(0.0)
    );
    // The group's offsets are shown from the start, before any commit.
    let offsets = get_json(svc.addr, "/api/v1/offsets");
    assert!(
        offsets["partitions"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["committed_kafka"].is_i64())),
        "{offsets}"
    );
}

#[test]
fn zookeeper_wins_over_a_disagreeing_group_and_says_so() {
    let Some(s) = Setup::new("disagree") else {
        return;
    };
    first_run(&s, true, 1_000, 71);
    // Someone rewinds the group (kafka-consumer-groups --reset-offsets).
    set_group_offset(&s, 400);

    let second = produce_lines(&s.cluster, &s.topic, 200, 1, 72);
    let mut svc = s.spawn(&temp_dir("ckpt-b"), &[]);
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, &Truth::of(second.iter().map(Vec::as_slice)));
    let start = &starts(svc.addr)[&0];
    assert_eq!(
        (start["from"].as_str(), start["offset"].as_i64()),
        (Some("zookeeper"), Some(1_000))
    );
    let note = start["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("ZooKeeper comes before the group") && note.contains("has 400"),
        "{start}"
    );
    assert!(
        svc.log_text().contains("the offset stores disagree"),
        "the disagreement is logged"
    );
}

#[test]
fn an_expired_group_offset_without_zookeeper_counts_the_loss() {
    let Some(s) = Setup::new("group-expired") else {
        return;
    };
    first_run(&s, false, 300, 81);

    produce_lines(&s.cluster, &s.topic, 700, 1, 82);
    delete_records(&s, 600);
    let remaining = kcat_lines(&s.cluster.brokers, &s.topic, 0, 600);
    let mut svc = s.spawn_without_zk(&temp_dir("ckpt-fresh"), &[]);
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, &Truth::of(remaining.iter().map(Vec::as_slice)));
    let partition = &get_json(svc.addr, "/api/v1/offsets")["partitions"][0];
    let reset = &partition["last_reset"];
    assert_eq!(
        (
            reset["reason"].as_str(),
            reset["stored_offset"].as_i64(),
            reset["stored_in"].as_str(),
            reset["reset_to"].as_i64(),
            reset["records_lost"].as_i64()
        ),
        (
            Some("expired"),
            Some(300),
            Some("kafka"),
            Some(600),
            Some(300)
        ),
        "{partition}"
    );
    assert_eq!(partition["start"]["from"], "offset_reset");
    assert_eq!(
        metric(
            svc.addr,
            &format!(
                "ipstats_records_lost_total{{partition=\"0\",topic=\"{}\"}}",
                s.topic
            )
        ),
        Some(300.0)
    );
    let log = svc.log_text();
    assert!(
        log.contains("partition does not start at a stored offset")
            && log.contains("stored=300")
            && log.contains("from=kafka"),
        "the reset is logged with plain values: {log}"
    );
}

/// Retention, made explicit: everything below `offset` in partition 0 is deleted.
fn delete_records(s: &Setup, offset: i64) {
    let spec = temp_dir("delete").join("offsets.json");
    std::fs::write(
        &spec,
        format!(
            r#"{{"partitions":[{{"topic":"{}","partition":0,"offset":{offset}}}],"version":1}}"#,
            s.topic
        ),
    )
    .expect("offset json");
    cluster_tool(&[
        "kafka-delete-records",
        "--bootstrap-server",
        &s.cluster.brokers,
        "--offset-json-file",
        spec.to_str().expect("path"),
    ]);
}

#[test]
fn offset_reset_fail_refuses_to_start_without_a_stored_offset() {
    let Some(s) = Setup::new("fail") else { return };
    produce_lines(&s.cluster, &s.topic, 10, 1, 51);
    let mut svc = s.spawn(&temp_dir("ckpt"), &["--offset-reset", "fail"]);
    let status = svc.wait_exit(WAIT);
    assert!(!status.success());
    let log = svc.log_text();
    assert!(
        log.contains(&format!("{}/0", s.topic)) && log.contains("--offset-reset is fail"),
        "{log}"
    );
}

#[test]
fn partitions_added_while_running_are_consumed_from_their_start() {
    let Some(s) = Setup::new("grow") else { return };
    let first = produce_lines(&s.cluster, &s.topic, 1_000, 2, 61);
    let mut svc = s.spawn(&temp_dir("ckpt"), &[]);
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, &Truth::of(first.iter().map(Vec::as_slice)));

    cluster_tool(&[
        "kafka-topics",
        "--bootstrap-server",
        &s.cluster.brokers,
        "--alter",
        "--topic",
        &s.topic,
        "--partitions",
        "4",
    ]);
    let mut traffic =
        ipstats::tools::traffic::Traffic::new(&ipstats::tools::traffic::TrafficConfig {
            ips: 50,
            zipf: 1.0,
            seed: 62,
            malformed_ratio: 0.0,
        });
    let mut more = Vec::new();
    for partition in [2, 3] {
        let lines: Vec<Vec<u8>> = (0..300)
            .map(|_| {
                let mut line = Vec::new();
                traffic.next_line(std::time::SystemTime::now(), &mut line);
                line
            })
            .collect();
        common::kcat_produce(&s.cluster.brokers, &s.topic, partition, &lines);
        more.extend(lines);
    }
    wait_counted(
        svc.addr,
        &Truth::of(first.iter().chain(&more).map(Vec::as_slice)),
    );
    let offsets = get_json(svc.addr, "/api/v1/offsets");
    let partitions: Vec<i64> = offsets["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter_map(|p| p["partition"].as_i64())
        .collect();
    assert_eq!(partitions, [0, 1, 2, 3]);
    wait_committed(svc.addr, &log_ends(&s.cluster.brokers, &s.topic));
}

#[test]
fn a_second_instance_on_the_group_refuses_and_a_killed_one_reclaims_at_once() {
    let Some(s) = Setup::new("owners") else {
        return;
    };
    produce_lines(&s.cluster, &s.topic, 100, 2, 71);
    let dir_a = temp_dir("ckpt-a");
    let mut a = s.spawn(&dir_a, &["--zookeeper-session-timeout", "60s"]);
    a.wait_ready(WAIT);
    let owner = std::fs::read_to_string(dir_a.join("instance-id")).expect("instance id");

    let mut b = s.spawn(&temp_dir("ckpt-b"), &["--zookeeper-session-timeout", "2s"]);
    assert!(
        !b.wait_exit(WAIT).success(),
        "the second instance must not run"
    );
    let log = b.log_text();
    assert!(
        log.contains(&s.group)
            && log.contains(owner.trim())
            && log.contains("another ipstats instance"),
        "{log}"
    );
    assert_eq!(
        http_get(a.addr, "/readyz").expect("readyz").0,
        200,
        "the first one is unaffected"
    );

    // SIGKILL leaves A's ephemeral znodes behind for up to 60 s; the same
    // instance (same checkpoint directory) takes them back at once.
    drop(a);
    let mut again = s.spawn(&dir_a, &["--zookeeper-session-timeout", "60s"]);
    again.wait_ready(Duration::from_secs(40));
    assert!(
        again.log_text().contains("reclaiming ownership"),
        "{}",
        again.log_text()
    );
}

#[test]
fn sigterm_during_the_ownership_wait_ends_within_the_shutdown_grace() {
    let Some(s) = Setup::new("owner-wait") else {
        return;
    };
    produce_lines(&s.cluster, &s.topic, 50, 1, 73);
    let mut a = s.spawn(&temp_dir("ckpt-a"), &[]);
    a.wait_ready(WAIT);
    // B waits up to its 60 s session timeout for A's ownership to go.
    let mut b = s.spawn(
        &temp_dir("ckpt-b"),
        &[
            "--zookeeper-session-timeout",
            "60s",
            "--shutdown-grace",
            "2s",
        ],
    );
    wait_for("the second instance waiting for ownership", WAIT, || {
        let (_, body) = http_get(b.addr, "/readyz").map_err(|e| e.to_string())?;
        if body.contains("claiming partition ownership") {
            Ok(())
        } else {
            Err(body)
        }
    });
    b.signal("TERM");
    // Exit 0 means the stop finished inside --shutdown-grace; overrunning it
    // exits 1 saying so.
    let status = b.wait_exit(Duration::from_secs(30));
    let log = b.log_text();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("--shutdown-grace"), "{log}");
    assert_eq!(
        http_get(a.addr, "/readyz").expect("readyz").0,
        200,
        "the owner is unaffected"
    );
}

#[test]
fn zookeeper_down_at_start_waits_and_down_mid_run_never_stops_counting() {
    let Some(cluster) = cluster() else { return };
    let topic = unique("zk-down");
    let group = unique("group");
    let mut zk = PrivateZk::new();
    let first = produce_lines(&cluster, &topic, 1_000, 2, 81);
    let zk_connect = zk.connect();
    let checkpoint = temp_dir("ckpt");
    let mut svc = Service::spawn(&[
        "--brokers",
        &cluster.brokers,
        "--zookeeper",
        &zk_connect,
        "--topics",
        &topic,
        "--group",
        &group,
        "--checkpoint-dir",
        checkpoint.to_str().expect("path"),
        "--zookeeper-session-timeout",
        "4s",
    ]);
    // Without ZooKeeper there are no start offsets: it serves and waits.
    wait_for(
        "a not-ready answer naming ZooKeeper",
        WAIT,
        || match http_get(svc.addr, "/readyz") {
            Ok((503, body)) if body.contains("ZooKeeper") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(http_get(svc.addr, "/healthz").expect("healthz").0, 200);
    let state = get_json(svc.addr, "/api/v1/status")["zookeeper"]["state"].clone();
    assert!(state == "connecting" || state == "disconnected", "{state}");
    assert_eq!(get_json(svc.addr, "/api/v1/status")["records_consumed"], 0);

    zk.start();
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, &Truth::of(first.iter().map(Vec::as_slice)));
    wait_committed(svc.addr, &log_ends(&cluster.brokers, &topic));

    // Mid-run: ZooKeeper goes away; counting and serving go on.
    zk.kill();
    let second = produce_lines(&cluster, &topic, 1_000, 2, 82);
    wait_counted(
        svc.addr,
        &Truth::of(first.iter().chain(&second).map(Vec::as_slice)),
    );
    wait_for("ZooKeeper reported down", WAIT, || {
        let status = get_json(svc.addr, "/api/v1/status");
        let ready = http_get(svc.addr, "/readyz").map_err(|e| e.to_string())?;
        let errors = metric(
            svc.addr,
            "ipstats_offset_commits_total{result=\"error\",store=\"zookeeper\"}",
        )
        .unwrap_or(0.0);
        if status["zookeeper"]["state"] == "disconnected"
            && ready.0 == 200
            && ready.1.contains("zookeeper")
            && errors > 0.0
        {
            Ok(())
        } else {
            Err(format!(
                "{} {:?} errors={errors}",
                status["zookeeper"], ready
            ))
        }
    });

    // Back: the offsets catch up, as plain decimals.
    zk.start();
    let ends = log_ends(&cluster.brokers, &topic);
    wait_committed(svc.addr, &ends);
    for (partition, end) in &ends {
        let path = format!("/consumers/{group}/offsets/{topic}/{partition}");
        assert_eq!(zk_get(&zk.connect(), &path), Some(end.to_string()));
    }
}
