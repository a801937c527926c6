//! Several instances, one answer, on the real cluster: three ipstats
//! processes with `--cluster` share a six-partition topic whose records are
//! not keyed by address (every address is spread over every partition).
//!
//! Every instance's answer equals the from-scratch count: the totals, every
//! address, and the top five in order (five heavy addresses that no single
//! instance sees whole). After kill -9 of one instance its partitions move,
//! the survivors rebuild them from Kafka and answer exactly again. All the
//! while a sampler checks that no answer says `complete: true` while it
//! differs from the truth.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use common::{
    Service, get_json, json_line, kcat_produce_spread, metric, top_counts, unique, wait_for,
};
use serde_json::Value;

const PARTITIONS: i32 = 6;
/// Heavy addresses and their counts: distinct, so the top five has one order.
const HEAVY: [(&str, u64); 6] = [
    ("10.9.9.1", 300),
    ("10.9.9.2", 250),
    ("10.9.9.3", 200),
    ("10.9.9.4", 150),
    ("10.9.9.5", 120),
    ("10.9.9.6", 100),
];
/// Light addresses, each with fewer requests than any heavy one.
const LIGHT: u64 = 400;
const LIGHT_EACH: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(120);

fn lines() -> Vec<Vec<u8>> {
    let now = SystemTime::now();
    let mut lines = Vec::new();
    let mut i = 0u64;
    let mut push = |ip: &str| {
        // Log times over the last 3 seconds: out of order by less than
        // --lateness, so none is late.
        let t = now - Duration::from_millis(3_000 - (i * 7919) % 3_000);
        lines.push(json_line(ip, t));
        i += 1;
    };
    for (ip, n) in HEAVY {
        for _ in 0..n {
            push(ip);
        }
    }
    for k in 0..LIGHT {
        let ip = format!("192.0.{}.{}", k / 200, k % 200 + 1);
        for _ in 0..LIGHT_EACH {
            push(&ip);
        }
    }
    // Interleave, so that line i % 6 spreads each address over every partition.
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by_key(|&j| (j * 7_919) % lines.len());
    order.into_iter().map(|j| lines[j].clone()).collect()
}

fn truth() -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> =
        HEAVY.iter().map(|(ip, n)| (ip.to_string(), *n)).collect();
    for k in 0..LIGHT {
        counts.insert(format!("192.0.{}.{}", k / 200, k % 200 + 1), LIGHT_EACH);
    }
    counts
}

fn total() -> u64 {
    truth().values().sum()
}

/// Whether a top answer is complete, and if so whether it is exact.
fn judge(top: &Value, n: usize) -> Result<(), String> {
    if top["cluster"]["complete"] != true {
        return Err(format!("incomplete: {}", top["cluster"]));
    }
    check(top, n).map_err(|e| format!("COMPLETE BUT WRONG: {e}"))
}

/// The answer equals the truth: totals, and the top `n` in order (all
/// addresses when `n` covers them).
fn check(top: &Value, n: usize) -> Result<(), String> {
    let truth = truth();
    if top["total_requests"].as_u64() != Some(total()) {
        return Err(format!("total {} != {}", top["total_requests"], total()));
    }
    if top["distinct_ips"].as_u64() != Some(truth.len() as u64) {
        return Err(format!(
            "distinct {} != {}",
            top["distinct_ips"],
            truth.len()
        ));
    }
    let got = top_counts(top);
    if n >= truth.len() {
        if got != truth {
            return Err("the counts per address differ".to_string());
        }
    } else {
        let order: Vec<&str> = top["top"]
            .as_array()
            .ok_or("no top")?
            .iter()
            .filter_map(|e| e["ip"].as_str())
            .collect();
        let expected: Vec<&str> = HEAVY.iter().take(n).map(|(ip, _)| *ip).collect();
        if order != expected {
            return Err(format!("top {order:?} != {expected:?}"));
        }
        for (ip, n) in HEAVY.iter().take(n) {
            if got.get(*ip) != Some(n) {
                return Err(format!("{ip}: {:?} != {n}", got.get(*ip)));
            }
        }
    }
    Ok(())
}

fn start(
    cluster: &common::Cluster,
    zookeeper: &str,
    topic: &str,
    group: &str,
    id: &str,
    dir: &std::path::Path,
) -> Service {
    let checkpoint = dir.join(id);
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--brokers",
        &cluster.brokers,
        "--zookeeper",
        zookeeper,
        "--zookeeper-session-timeout",
        "6s",
        "--topics",
        topic,
        "--group",
        group,
        "--checkpoint-dir",
        checkpoint.to_str().expect("utf-8"),
        "--listen",
        &listen,
        "--cluster",
        "--instance-id",
        id,
        "--batch",
        "200ms",
        "--slide",
        "200ms",
        "--window",
        "600s",
        "--kafka-config",
        "session.timeout.ms=6000",
        "--kafka-config",
        "heartbeat.interval.ms=1000",
    ];
    Service::spawn_exactly(None, listen.parse().expect("address"), &args, &[])
}

/// Polls the instances' top five until the test ends; counts answers and
/// keeps the first complete one that is wrong.
struct Sampler {
    stop: Arc<AtomicBool>,
    complete: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Sampler {
    fn start(addrs: Vec<SocketAddr>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let complete = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), complete.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for addr in &addrs {
                    let Ok((200, body)) = common::http_get(*addr, "/api/v1/top?n=5") else {
                        continue;
                    };
                    let Ok(top) = serde_json::from_str::<Value>(&body) else {
                        continue;
                    };
                    match judge(&top, 5) {
                        Ok(()) => {
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if e.starts_with("COMPLETE BUT WRONG") => {
                            return Some(format!("{addr}: {e}: {top}"));
                        }
                        Err(_) => {}
                    }
                }
                std::thread::park_timeout(Duration::from_millis(100));
            }
            None
        });
        Sampler {
            stop,
            complete,
            thread: Some(thread),
        }
    }

    /// Stops; fails the test if any complete answer was wrong.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let wrong = self.thread.take().and_then(|t| t.join().ok()).flatten();
        assert!(wrong.is_none(), "{}", wrong.unwrap_or_default());
        self.complete.load(Ordering::SeqCst)
    }
}

fn exact_everywhere(services: &[&Service]) {
    for s in services {
        let top = wait_for("a complete answer from every instance", DEADLINE, || {
            let top = get_json(s.addr, "/api/v1/top?n=1000");
            judge(&top, 1000).map(|()| top)
        });
        check(&top, 1000).expect("exact");
        let five = wait_for("a complete top five", DEADLINE, || {
            let top = get_json(s.addr, "/api/v1/top?n=5");
            judge(&top, 5).map(|()| top)
        });
        check(&five, 5).expect("the top five in order");
        // One address spread over every partition, summed over instances.
        let ip = wait_for("a complete per-address answer", DEADLINE, || {
            let ip = get_json(s.addr, "/api/v1/ips/10.9.9.1");
            if ip["cluster"]["complete"] == true {
                Ok(ip)
            } else {
                Err(ip["cluster"].to_string())
            }
        });
        assert_eq!(ip["count"], 300, "{ip}");
    }
}

#[test]
fn three_instances_answer_as_one_and_survive_a_kill() {
    let Some(cluster) = common::cluster() else {
        return;
    };
    let topic = common::create_topic(&cluster, "cluster", PARTITIONS as u32);
    let group = unique("cluster-group");
    let zookeeper = format!("{}/{}", cluster.zookeeper, unique("cluster-zk"));
    let dir = std::env::temp_dir().join(unique("cluster-state"));
    kcat_produce_spread(&cluster.brokers, &topic, PARTITIONS, &lines());

    let mut a = start(&cluster, &zookeeper, &topic, &group, "a", &dir);
    let mut b = start(&cluster, &zookeeper, &topic, &group, "b", &dir);
    let mut c = start(&cluster, &zookeeper, &topic, &group, "c", &dir);
    for s in [&mut a, &mut b, &mut c] {
        s.wait_ready(DEADLINE);
    }
    let sampler = Sampler::start(vec![a.addr, b.addr, c.addr]);
    // The group settles with every instance holding a share.
    wait_for("every instance to hold partitions", DEADLINE, || {
        let owned: Vec<f64> = [&a, &b, &c]
            .iter()
            .map(|s| metric(s.addr, "ipstats_partitions_owned").unwrap_or(0.0))
            .collect();
        if owned.iter().all(|o| *o >= 1.0) && owned.iter().sum::<f64>() == f64::from(PARTITIONS) {
            Ok(())
        } else {
            Err(format!("owned {owned:?}"))
        }
    });
    exact_everywhere(&[&a, &b, &c]);

    // Each instance holds a share; alone, none has the truth.
    let local = get_json(a.addr, "/api/v1/top?n=5&scope=local");
    assert_eq!(local["cluster"]["complete"], false, "{local}");
    assert!(
        local["total_requests"].as_u64().unwrap_or(0) < total(),
        "{local}"
    );
    let status = get_json(a.addr, "/api/v1/status");
    assert_eq!(
        status["cluster"]["instances"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );

    // kill -9: the group moves c's partitions after its session timeout.
    let c_held = get_json(c.addr, "/api/v1/status")["cluster"]["held"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(c_held > 0, "c held partitions");
    c.child.kill().expect("kill -9");
    let _ = c.child.wait();
    wait_for("the survivors to hold every partition", DEADLINE, || {
        let owned: f64 = [&a, &b]
            .iter()
            .map(|s| metric(s.addr, "ipstats_partitions_owned").unwrap_or(0.0))
            .sum();
        if owned == f64::from(PARTITIONS) {
            Ok(())
        } else {
            Err(format!("{owned} owned"))
        }
    });
    exact_everywhere(&[&a, &b]);
    // The dead instance leaves the registry when its ZooKeeper session expires.
    wait_for("the dead instance to leave the registry", DEADLINE, || {
        let top = get_json(a.addr, "/api/v1/top?n=5");
        let instances = top["cluster"]["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if instances.len() == 2
            && instances
                .iter()
                .all(|i| i["id"] != "c" && i["reachable"] == true)
        {
            Ok(())
        } else {
            Err(format!("{instances:?}"))
        }
    });
    assert!(metric(a.addr, "ipstats_rebalances_total").unwrap_or(0.0) >= 2.0);
    let complete = sampler.finish();
    assert!(complete > 0, "the sampler saw complete answers");
    let _ = std::fs::remove_dir_all(&dir);
}
