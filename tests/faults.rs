//! Fault injection against real processes on the real cluster: SIGKILL
//! ipstats, kill and freeze the broker, freeze and firewall ZooKeeper,
//! corrupt checkpoints, SIGTERM under load. Every scenario streams generated
//! lines and ends by comparing the window with the topic's content — read
//! back independently with kcat — exactly: zero lost, zero double-counted.
//!
//! These tests stop shared cluster processes, so scripts/test.sh runs them
//! alone and one at a time: `cargo test --test faults -- --test-threads=1`.
//! Each prints one `RELIABILITY {...}` line with its measurements.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Cluster, Seen, Service, Truth, assign_from_start, cluster, cluster_tool, create_topic,
    drop_within, get_json, http_get, kcat_produce_spread, log_ends, plain_consumer, seen, unique,
    wait_for, window_counts,
};
use ipstats::kafka::batch::BatchQueue;

const WAIT: Duration = Duration::from_secs(120);

/// One scenario's topic, group, chroot and checkpoint directory.
struct Scenario {
    cluster: Cluster,
    topic: String,
    group: String,
    chroot: String,
    dir: PathBuf,
}

impl Scenario {
    fn new(name: &str) -> Option<Scenario> {
        let cluster = cluster()?;
        let topic = create_topic(&cluster, name, 4);
        Some(Scenario {
            cluster,
            topic,
            group: unique("group"),
            chroot: format!("/{}", unique("chroot")),
            dir: std::env::temp_dir().join(unique("fault-ckpt")),
        })
    }

    fn spawn(&self, extra: &[&str]) -> Service {
        let zookeeper = format!("{}{}", self.cluster.zookeeper, self.chroot);
        Service::on_cluster(
            &self.cluster,
            Some(&zookeeper),
            &self.topic,
            &self.group,
            &self.dir,
            extra,
        )
    }

    /// `ipstats produce` streaming in the background.
    fn stream(&self, count: u64, rate: u64, seed: u64) -> Child {
        let out = std::env::temp_dir().join(format!("{}.lines", unique("stream")));
        Command::new(env!("CARGO_BIN_EXE_ipstats"))
            .args([
                "produce",
                "--brokers",
                &self.cluster.brokers,
                "--topic",
                &self.topic,
                "--ips",
                "2000",
            ])
            .args([
                "--count",
                &count.to_string(),
                "--rate",
                &rate.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .args(["--malformed-ratio", "0.02", "--out"])
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ipstats produce")
    }

    /// The topic's records as kcat reads them: the ground truth.
    fn truth(&self) -> Truth {
        let output = Command::new("kcat")
            .args([
                "-C",
                "-b",
                &self.cluster.brokers,
                "-t",
                &self.topic,
                "-o",
                "beginning",
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
        let lines: Vec<&[u8]> = output
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let ends: i64 = log_ends(&self.cluster.brokers, &self.topic).values().sum();
        assert_eq!(lines.len() as i64, ends, "kcat read the whole topic");
        Truth::of(lines)
    }
}

fn wait_producer(mut producer: Child) {
    let status = wait_for("the producer to finish", Duration::from_secs(300), || {
        producer
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "running".to_string())
    });
    assert!(status.success(), "every produced line was acknowledged");
}

fn wait_caught_up(addr: SocketAddr, truth: &Truth) -> Duration {
    common::wait_all_counted(addr, truth.lines, WAIT)
}

/// Lost and double-counted records of the window against the truth.
fn compare(addr: SocketAddr, truth: &Truth) -> (u64, u64) {
    let seen = window_counts(addr);
    let (mut lost, mut double) = (0, 0);
    for (ip, n) in &truth.counts {
        let got = seen.get(ip).copied().unwrap_or(0);
        lost += n.saturating_sub(got);
        double += got.saturating_sub(*n);
    }
    for (ip, got) in &seen {
        if !truth.counts.contains_key(ip) {
            double += got;
        }
    }
    (lost, double)
}

fn report(scenario: &str, fields: serde_json::Value) {
    let mut line = serde_json::json!({ "scenario": scenario });
    if let (Some(out), Some(extra)) = (line.as_object_mut(), fields.as_object()) {
        out.extend(extra.clone());
    }
    println!("RELIABILITY {line}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("reliability.jsonl"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
}

/// A small deterministic PRNG for fault timing (seed printed for replay).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Fault timing, not synchronisation: how long a fault lasts, or when the
/// next one strikes.
fn hold(duration: Duration) {
    std::thread::sleep(duration);
}

#[test]
fn fault_sigkill_at_random_moments_counts_every_record_once() {
    let Some(s) = Scenario::new("kill") else {
        return;
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    println!("fault timing seed: {seed}");
    let mut rng = Lcg(seed);
    let producer = s.stream(60_000, 2_500, 101);
    // Checkpoints every 100 ms, so that many kills land inside a write.
    let args = ["--checkpoint-interval", "100ms"];
    let kills = 22;
    for _ in 0..kills {
        let mut svc = s.spawn(&args);
        hold(Duration::from_millis(300 + rng.below(1500)));
        if let Ok(Some(status)) = svc.child.try_wait() {
            panic!("ipstats exited on its own ({status}): {}", svc.log_text());
        }
        drop(svc); // SIGKILL
    }
    let restarted = Instant::now();
    let mut svc = s.spawn(&args);
    svc.wait_ready(WAIT);
    let ready_after = restarted.elapsed();
    wait_producer(producer);
    let truth = s.truth();
    let caught_up = wait_caught_up(svc.addr, &truth) + ready_after;
    let (lost, double) = compare(svc.addr, &truth);
    report(
        "sigkill",
        serde_json::json!({"records": truth.lines, "kills": kills, "lost": lost, "double_counted": double,
            "restart_to_ready_s": ready_after.as_secs_f64(), "restart_to_caught_up_s": caught_up.as_secs_f64()}),
    );
    assert_eq!((lost, double), (0, 0));
    assert_eq!(window_counts(svc.addr), truth.counts);
}

/// Watches `/api/v1/status` until `check` holds, while ipstats must stay up.
fn wait_status(svc: &mut Service, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let addr = svc.addr;
    let child = &mut svc.child;
    wait_for(what, WAIT, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ipstats exited ({status})");
        }
        let status = get_json(addr, "/api/v1/status");
        if check(&status) {
            Ok(())
        } else {
            Err(status["kafka"].to_string())
        }
    });
}

#[test]
fn fault_broker_killed_and_frozen_ipstats_stays_up_and_resumes() {
    let Some(s) = Scenario::new("broker") else {
        return;
    };
    // The producer stamps each line as it makes it and holds the lines of
    // the outage (about 50 s) until the broker is back; on a busy machine a
    // partition that drains first moves the window's end past the others'
    // held lines by more than the default 5 s, and they are counted as late.
    // This scenario is about the broker, not lateness: the lateness covers
    // the outage, and no record may be late.
    let mut svc = s.spawn(&["--lateness", "2m"]);
    svc.wait_ready(WAIT);
    let producer = s.stream(80_000, 2_000, 102);
    wait_status(&mut svc, "records flowing", |st| {
        st["records_consumed"].as_u64() > Some(2_000)
    });

    let pid = cluster_tool(&["pid", "kafka"]).trim().to_string();
    let killed = Instant::now();
    common::signal(&pid, "KILL");
    wait_status(&mut svc, "the outage reported", |st| {
        st["kafka"]["state"] == "disconnected"
    });
    let (code, body) = http_get(svc.addr, "/readyz").expect("readyz");
    assert!(
        code == 200 && body.contains("kafka"),
        "degraded, still serving: {code} {body}"
    );
    cluster_tool(&["start", "kafka"]);
    wait_status(&mut svc, "Kafka back", |st| {
        st["kafka"]["state"] == "connected"
    });
    let kill_recovery = killed.elapsed();

    let pid = cluster_tool(&["pid", "kafka"]).trim().to_string();
    common::signal(&pid, "STOP");
    let frozen = Instant::now();
    wait_status(&mut svc, "the freeze reported", |st| {
        st["kafka"]["state"] == "disconnected"
    });
    hold(Duration::from_secs(30).saturating_sub(frozen.elapsed()));
    common::signal(&pid, "CONT");
    let thawed = Instant::now();
    wait_status(&mut svc, "Kafka back after the freeze", |st| {
        st["kafka"]["state"] == "connected"
    });
    let freeze_recovery = thawed.elapsed();

    wait_producer(producer);
    let truth = s.truth();
    let caught_up = wait_caught_up(svc.addr, &truth);
    let (lost, double) = compare(svc.addr, &truth);
    let late = get_json(svc.addr, "/api/v1/status")["time"]["records_late"].clone();
    assert_eq!(late, 0, "records late after the outage");
    report(
        "broker",
        serde_json::json!({"records": truth.lines, "broker_kills": 1, "freeze_s": 30, "lost": lost,
            "double_counted": double, "kill_to_reconnected_s": kill_recovery.as_secs_f64(),
            "thaw_to_reconnected_s": freeze_recovery.as_secs_f64(), "then_caught_up_s": caught_up.as_secs_f64()}),
    );
    assert_eq!((lost, double), (0, 0));
}

/// Samples ZooKeeper's offsets and the newest checkpoint side by side:
/// returns the violations seen (moved backwards, ahead of the checkpoint).
fn sample_zookeeper(
    s: &Scenario,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    let server = s.cluster.zookeeper.clone();
    let base = format!("{}/consumers/{}/offsets/{}", s.chroot, s.group, s.topic);
    let dir = s.dir.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        let (mut samples, mut violations) = (0, Vec::new());
        runtime.block_on(async {
            let mut client = None;
            while !stop.load(Ordering::Acquire) {
                if client.is_none() {
                    let connect = zookeeper_client::Client::connector()
                        .with_connection_timeout(Duration::from_secs(1))
                        .with_session_timeout(Duration::from_secs(4))
                        .connect(&server);
                    client = tokio::time::timeout(Duration::from_secs(2), connect).await.ok().and_then(Result::ok);
                }
                if let Some(zk) = &client {
                    for partition in 0..4 {
                        let read = tokio::time::timeout(Duration::from_secs(1), zk.get_data(&format!("{base}/{partition}"))).await;
                        let value = match read {
                            Ok(Ok((data, _))) => String::from_utf8_lossy(&data).parse::<i64>().ok(),
                            Ok(Err(zookeeper_client::Error::NoNode)) => continue,
                            _ => {
                                client = None;
                                break;
                            }
                        };
                        let Some(value) = value else {
                            violations.push(format!("partition {partition}: not a plain decimal"));
                            continue;
                        };
                        // Read ZooKeeper first, then the checkpoint: the
                        // checkpoint can only have moved further meanwhile.
                        let checkpointed = ipstats::checkpoint::newest_manifest(&dir).and_then(|m| {
                            m.offsets.iter().find(|o| o.partition == partition).map(|o| o.next)
                        });
                        samples += 1;
                        if let Some(previous) = last.insert(partition, value).filter(|p| value < *p) {
                            violations.push(format!("partition {partition}: {previous} → {value} (backwards)"));
                        }
                        if checkpointed.is_some_and(|c| value > c) {
                            violations.push(format!("partition {partition}: {value} ahead of checkpoint {checkpointed:?}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await; // sampling period
            }
        });
        (samples, violations)
    })
}

/// Drops ZooKeeper's port with iptables until dropped (the rule is removed
/// even when the test fails).
struct Firewall(String);

impl Firewall {
    fn drop_port(port: &str) -> Firewall {
        let rule = ["-p", "tcp", "--dport", port, "-j", "DROP"];
        let ok = Command::new("iptables")
            .arg("-I")
            .arg("INPUT")
            .args(rule)
            .status()
            .expect("iptables");
        assert!(ok.success(), "iptables must work here (root, loopback)");
        Firewall(port.to_string())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-D", "INPUT", "-p", "tcp", "--dport", &self.0, "-j", "DROP"])
            .status();
    }
}

#[test]
fn fault_zookeeper_frozen_and_firewalled_offsets_catch_up_and_never_regress() {
    let Some(s) = Scenario::new("zk") else { return };
    let mut svc = s.spawn(&[
        "--zookeeper-session-timeout",
        "4s",
        "--checkpoint-interval",
        "500ms",
    ]);
    svc.wait_ready(WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_zookeeper(&s, stop.clone());
    let producer = s.stream(60_000, 2_000, 103);
    wait_status(&mut svc, "records flowing", |st| {
        st["records_consumed"].as_u64() > Some(2_000)
    });

    // Frozen past the session timeout.
    let pid = cluster_tool(&["pid", "zookeeper"]).trim().to_string();
    common::signal(&pid, "STOP");
    wait_status(&mut svc, "ZooKeeper reported down", |st| {
        st["zookeeper"]["state"] == "disconnected"
    });
    hold(Duration::from_secs(8));
    let before = get_json(svc.addr, "/api/v1/status")["records_consumed"]
        .as_u64()
        .unwrap_or(0);
    wait_status(&mut svc, "counting during the freeze", |st| {
        st["records_consumed"].as_u64() > Some(before)
    });
    common::signal(&pid, "CONT");
    wait_status(&mut svc, "ZooKeeper back", |st| {
        st["zookeeper"]["state"] == "connected"
    });

    // Unreachable: its port dropped.
    let port = s
        .cluster
        .zookeeper
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    {
        let _firewall = Firewall::drop_port(&port);
        wait_status(&mut svc, "ZooKeeper reported unreachable", |st| {
            st["zookeeper"]["state"] == "disconnected"
        });
        hold(Duration::from_secs(8));
    }
    wait_producer(producer);
    let truth = s.truth();
    wait_caught_up(svc.addr, &truth);
    let ends = log_ends(&s.cluster.brokers, &s.topic);
    let caught_up = Instant::now();
    wait_for("ZooKeeper offsets caught up with the log end", WAIT, || {
        let offsets = get_json(svc.addr, "/api/v1/offsets");
        let zk: BTreeMap<i32, i64> = offsets["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .filter_map(|p| {
                Some((
                    p["partition"].as_i64()? as i32,
                    p["committed_zookeeper"].as_i64()?,
                ))
            })
            .collect();
        if zk == ends {
            Ok(())
        } else {
            Err(format!("{zk:?} vs {ends:?}"))
        }
    });
    stop.store(true, Ordering::Release);
    let (samples, violations) = sampler.join().expect("sampler");
    let (lost, double) = compare(svc.addr, &truth);
    report(
        "zookeeper",
        serde_json::json!({"records": truth.lines, "freeze_s": 8, "firewall_s": 8, "lost": lost, "double_counted": double,
            "zk_samples": samples, "zk_violations": violations.len(), "zk_catch_up_s": caught_up.elapsed().as_secs_f64()}),
    );
    assert!(
        samples > 20,
        "the sampler saw ZooKeeper ({samples} samples)"
    );
    assert_eq!(violations, Vec::<String>::new());
    assert_eq!((lost, double), (0, 0));
}

/// Damages files of the newest checkpoint: truncates the manifest, or flips
/// bytes in a pane only it references.
fn corrupt_newest(dir: &Path, how: &str) -> String {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("checkpoint dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("manifest-"))
        })
        .collect();
    manifests.sort();
    let newest = manifests.last().expect("a manifest").clone();
    match how {
        "truncate" => {
            let bytes = std::fs::read(&newest).expect("manifest");
            std::fs::write(&newest, &bytes[..bytes.len() / 2]).expect("truncate");
            format!("truncated {}", newest.display())
        }
        _ => {
            let manifest = ipstats::checkpoint::newest_manifest(dir).expect("newest manifest");
            let seq = manifest.panes.iter().max().expect("a pane");
            // The newest pane is in the segment the newest checkpoint wrote.
            let pane = match manifest.segments.iter().find(|s| s.panes.contains(seq)) {
                Some(segment) => dir
                    .join("panes")
                    .join(format!("seg-{:016}.bin", segment.id)),
                None => dir.join("panes").join(format!("pane-{seq:016}.bin")),
            };
            let mut bytes = std::fs::read(&pane).expect("pane");
            for i in (8..bytes.len()).step_by(97) {
                bytes[i] ^= 0x5a;
            }
            std::fs::write(&pane, bytes).expect("flip");
            format!("flipped bytes in {}", pane.display())
        }
    }
}

#[test]
fn fault_corrupt_newest_checkpoint_falls_back_and_counts_exactly() {
    let Some(s) = Scenario::new("corrupt") else {
        return;
    };
    let producer = s.stream(40_000, 2_500, 104);
    let args = ["--checkpoint-interval", "200ms"];
    let mut damaged = Vec::new();
    for how in ["truncate", "flip", "truncate", "flip"] {
        let mut svc = s.spawn(&args);
        svc.wait_ready(WAIT);
        wait_status(&mut svc, "a few checkpoints", |st| {
            st["checkpoint"]["age_seconds"].is_number()
        });
        hold(Duration::from_millis(1_500));
        drop(svc); // SIGKILL
        damaged.push(corrupt_newest(&s.dir, how));
        let mut svc = s.spawn(&args);
        svc.wait_ready(WAIT);
        let restored = get_json(svc.addr, "/api/v1/status")["checkpoint"]["restored_from"].clone();
        assert!(
            restored
                .as_str()
                .is_some_and(|r| r.contains("skipped damaged")),
            "{restored}"
        );
        drop(svc);
    }
    let mut svc = s.spawn(&args);
    svc.wait_ready(WAIT);
    wait_producer(producer);
    let truth = s.truth();
    let caught_up = wait_caught_up(svc.addr, &truth);
    let (lost, double) = compare(svc.addr, &truth);
    report(
        "corrupt_checkpoint",
        serde_json::json!({"records": truth.lines, "corruptions": damaged.len(), "lost": lost, "double_counted": double,
            "then_caught_up_s": caught_up.as_secs_f64()}),
    );
    assert_eq!((lost, double), (0, 0), "{damaged:?}");
}

#[test]
fn fault_sigterm_under_heavy_ingest_exits_0_in_grace_and_rereads_nothing() {
    let Some(s) = Scenario::new("term") else {
        return;
    };
    common::produce_lines(&s.cluster, &s.topic, 200_000, 4, 105);
    let truth = s.truth();
    let mut svc = s.spawn(&["--max-rate-per-partition", "5000"]);
    svc.wait_ready(WAIT);
    wait_status(&mut svc, "heavy ingest under way", |st| {
        st["records_consumed"]
            .as_u64()
            .is_some_and(|n| n > 20_000 && n < truth.lines)
    });
    let asked = Instant::now();
    let status = svc.terminate(Duration::from_secs(30));
    let exit_s = asked.elapsed();
    assert!(status.success(), "exit 0 on SIGTERM");
    assert!(
        exit_s < Duration::from_secs(10),
        "within --shutdown-grace (10s): took {exit_s:?}"
    );

    // The final checkpoint, ZooKeeper and the group agree on where it stopped.
    let manifest = ipstats::checkpoint::newest_manifest(&s.dir).expect("final checkpoint");
    let stopped_at: BTreeMap<(String, i32), i64> = manifest
        .offsets
        .iter()
        .map(|o| ((o.topic.clone(), o.partition), o.next))
        .collect();
    let described = common::describe_group(&s.cluster.brokers, &s.group);
    for ((topic, partition), next) in &stopped_at {
        let zk = common::zk_get(
            &s.cluster.zookeeper,
            &format!(
                "{}/consumers/{}/offsets/{topic}/{partition}",
                s.chroot, s.group
            ),
        );
        assert_eq!(
            zk,
            Some(next.to_string()),
            "ZooKeeper committed the final checkpoint"
        );
        assert_eq!(
            described
                .get(&(topic.clone(), *partition))
                .and_then(|r| r.0),
            Some(*next)
        );
    }
    let counted_before: i64 = stopped_at.values().sum();

    let restarted = Instant::now();
    let mut svc = s.spawn(&[]);
    svc.wait_ready(WAIT);
    let ready_after = restarted.elapsed();
    let caught_up = wait_caught_up(svc.addr, &truth) + ready_after;
    let reread: f64 = http_get(svc.addr, "/metrics")
        .expect("metrics")
        .1
        .lines()
        .filter(|l| l.starts_with("ipstats_records_consumed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let (lost, double) = compare(svc.addr, &truth);
    report(
        "sigterm",
        serde_json::json!({"records": truth.lines, "exit_s": exit_s.as_secs_f64(), "checkpointed_at_stop": counted_before,
            "read_after_restart": reread, "lost": lost, "double_counted": double,
            "restart_to_ready_s": ready_after.as_secs_f64(), "restart_to_caught_up_s": caught_up.as_secs_f64()}),
    );
    assert_eq!(
        reread as i64,
        truth.lines as i64 - counted_before,
        "the restart read only what was left"
    );
    assert_eq!((lost, double), (0, 0));
}

/// The batch path (src/kafka/batch.rs) holding records while the broker is
/// killed: the held records stay readable, the batch calls keep returning
/// through the outage, the client's errors still arrive on the consumer
/// queue, and once the broker is back every record arrives exactly once,
/// in offset order; afterwards the client shuts down (nothing leaked).
#[test]
fn fault_broker_killed_while_a_batch_is_held_every_record_arrives_once() {
    let Some(cluster) = cluster() else {
        return;
    };
    const PARTITIONS: i32 = 2;
    let topic = create_topic(&cluster, "batch-kill", PARTITIONS as u32);
    let lines: Vec<Vec<u8>> = (0..200_000)
        .map(|i| {
            format!(
                r#"{{"remote_addr":"10.1.{}.{}","n":{i}}}"#,
                i % 256,
                i % 251
            )
            .into_bytes()
        })
        .collect();
    kcat_produce_spread(&cluster.brokers, &topic, PARTITIONS, &lines);

    // A small prefetch, so most of the topic is still on the broker at the kill.
    let consumer = plain_consumer(
        &cluster.brokers,
        &[
            ("queued.max.messages.kbytes", "256"),
            ("fetch.max.bytes", "1048576"),
            ("message.max.bytes", "1048576"),
            ("max.partition.fetch.bytes", "32768"),
        ],
    );
    let mut queue = BatchQueue::new(&consumer, 2048).expect("queue");
    assign_from_start(&consumer, Some(&queue), &topic, PARTITIONS);

    let mut got: Vec<Seen> = Vec::with_capacity(lines.len());
    let held: Vec<_> = wait_for("a first batch", WAIT, || {
        let batch: Vec<_> = queue.fill(Duration::from_millis(500)).collect();
        if batch.is_empty() {
            Err("empty".into())
        } else {
            Ok(batch)
        }
    });
    let held_at_kill = held.len();
    let pid = cluster_tool(&["pid", "kafka"]).trim().to_string();
    common::signal(&pid, "KILL");
    let killed = Instant::now();

    // Through the outage: what is held stays readable, and the calls return.
    for record in &held {
        got.push(seen(record.as_ref().expect("a record")));
    }
    let mut errors = 0;
    let mut during_outage = 0;
    while killed.elapsed() < Duration::from_secs(5) {
        for record in queue.fill(Duration::from_millis(100)) {
            got.push(seen(&record.expect("a record")));
            during_outage += 1;
        }
        while let Some(event) = consumer.poll(Duration::ZERO) {
            errors += usize::from(event.is_err());
        }
    }
    assert!(
        errors > 0,
        "the broker's death reached the consumer queue as an error"
    );
    cluster_tool(&["start", "kafka"]);
    let restarted = Instant::now();
    drop(held);

    wait_for("every record after the restart", WAIT, || {
        for record in queue.fill(Duration::from_millis(200)) {
            got.push(seen(&record.map_err(|e| e.to_string())?));
        }
        while consumer.poll(Duration::ZERO).is_some() {}
        if got.len() >= lines.len() {
            Ok(())
        } else {
            Err(format!("{} of {}", got.len(), lines.len()))
        }
    });
    assert!(
        queue.fill(Duration::from_millis(500)).is_empty(),
        "nothing more"
    );

    let mut next = [0i64; PARTITIONS as usize];
    for (partition, offset, _, payload) in &got {
        let expected = &mut next[*partition as usize];
        assert_eq!(
            *offset, *expected,
            "partition {partition}: in order, once each"
        );
        *expected += 1;
        let i = *offset as usize * PARTITIONS as usize + *partition as usize;
        assert_eq!(payload, &lines[i], "record {i}");
    }
    assert_eq!(got.len(), lines.len());
    report(
        "batch_held_broker_killed",
        serde_json::json!({"records": lines.len(), "held_at_kill": held_at_kill, "read_during_outage": during_outage,
            "errors_seen": errors, "restart_to_all_read_s": restarted.elapsed().as_secs_f64(), "lost": 0, "double_counted": 0}),
    );
    drop(queue);
    drop_within(consumer, WAIT, "the batch consumer");
}
