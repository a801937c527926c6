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

/// The address of the lines written while an instance is frozen.
const LATE_IP: &str = "10.8.8.8";
/// How many: fewer than any heavy address, so the top five stays.
const LATE_LINES: u64 = 60;

/// The truth after the first corpus and `late` lines from [`LATE_IP`].
fn truth(late: u64) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> =
        HEAVY.iter().map(|(ip, n)| (ip.to_string(), *n)).collect();
    for k in 0..LIGHT {
        counts.insert(format!("192.0.{}.{}", k / 200, k % 200 + 1), LIGHT_EACH);
    }
    if late > 0 {
        counts.insert(LATE_IP.to_string(), late);
    }
    counts
}

fn total(late: u64) -> u64 {
    truth(late).values().sum()
}

/// Whether a top answer is complete, and if so whether it is exact: equal
/// to the truth with some of the `written` late lines counted. Returns how
/// many it counted.
///
/// The late lines go to every partition, and each instance reads its own
/// partitions: an answer asked a moment after they were written may count
/// those of some partitions and not yet the others (what it counts of each
/// partition is a prefix of it). Every other record must be counted, once.
fn judge(top: &Value, n: usize, written: u64) -> Result<u64, String> {
    if top["cluster"]["complete"] != true {
        return Err(format!("incomplete: {}", top["cluster"]));
    }
    let counted = top["total_requests"]
        .as_u64()
        .and_then(|t| t.checked_sub(total(0)))
        .filter(|late| *late <= written);
    match counted.map(|late| check(top, n, late).map(|()| late)) {
        Some(Ok(late)) => Ok(late),
        Some(Err(wrong)) => Err(format!("COMPLETE BUT WRONG: {wrong}: {top}")),
        None => Err(format!(
            "COMPLETE BUT WRONG: total {} is not {} plus at most {written} late lines: {top}",
            top["total_requests"],
            total(0)
        )),
    }
}

/// [`judge`], with every one of the `late` lines counted. Complete and
/// exact for fewer is not yet, not wrong: the late lines of some
/// partitions are not read yet (or are newer than the answer's range).
fn judge_all(top: &Value, n: usize, late: u64) -> Result<(), String> {
    match judge(top, n, late)? {
        counted if counted == late => Ok(()),
        counted => Err(format!("{counted} of {late} late lines counted")),
    }
}

/// The answer equals the truth: totals, and the top `n` in order (all
/// addresses when `n` covers them).
fn check(top: &Value, n: usize, late: u64) -> Result<(), String> {
    let truth = truth(late);
    let total = total(late);
    if top["total_requests"].as_u64() != Some(total) {
        return Err(format!("total {} != {total}", top["total_requests"]));
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
    start_with(cluster, zookeeper, topic, group, id, dir, &[])
}

fn start_with(
    cluster: &common::Cluster,
    zookeeper: &str,
    topic: &str,
    group: &str,
    id: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> Service {
    let (addr, mut args) = instance(cluster, zookeeper, topic, group, id, dir);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Service::spawn_exactly(None, addr, &args, &[])
}

/// A free address and the command line of one instance of the cluster.
fn instance(
    cluster: &common::Cluster,
    zookeeper: &str,
    topic: &str,
    group: &str,
    id: &str,
    dir: &std::path::Path,
) -> (SocketAddr, Vec<String>) {
    let checkpoint = dir.join(id);
    let listen = format!("127.0.0.1:{}", common::free_port());
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
    (
        listen.parse().expect("address"),
        args.iter().map(|a| a.to_string()).collect(),
    )
}

/// Polls the instances' top five until the test ends; counts answers and
/// keeps the first complete one that is wrong.
struct Sampler {
    stop: Arc<AtomicBool>,
    complete: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Sampler {
    fn start(addrs: Vec<SocketAddr>, written: u64) -> Sampler {
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
                    match judge(&top, 5, written) {
                        Ok(_) => {
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

/// What each instance counts itself, for a wrong answer's message: its
/// own totals, and per partition the offsets counted and the late records.
fn locally(services: &[&Service]) -> String {
    let mut text = String::new();
    for s in services {
        let top = common::http_get(s.addr, "/api/v1/top?n=1&scope=local");
        let offsets = common::http_get(s.addr, "/api/v1/offsets?scope=local");
        let field = |r: &Result<(u16, String), _>, f: &dyn Fn(&Value) -> String| match r {
            Ok((200, body)) => {
                serde_json::from_str::<Value>(body).map_or_else(|e| e.to_string(), |v| f(&v))
            }
            other => format!("{other:?}"),
        };
        let total = field(&top, &|v| {
            format!("total {} window {}", v["total_requests"], v["window"])
        });
        let parts = field(&offsets, &|v| {
            v["partitions"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!(
                                "{}: until {} log end {} late {}",
                                p["partition"], p["until_offset"], p["log_end"], p["records_late"]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default()
        });
        text.push_str(&format!("{}: {total}; {parts}\n", s.addr));
    }
    text
}

fn exact_everywhere(services: &[&Service], late: u64) {
    for s in services {
        let top = wait_for("a complete answer from every instance", DEADLINE, || {
            let top = get_json(s.addr, "/api/v1/top?n=1000");
            match judge_all(&top, 1000, late) {
                Ok(()) => Ok(top),
                Err(e) if e.starts_with("COMPLETE") => panic!("{e}\n{}", locally(services)),
                Err(e) => Err(e),
            }
        });
        check(&top, 1000, late).expect("exact");
        let five = wait_for("a complete top five", DEADLINE, || {
            let top = get_json(s.addr, "/api/v1/top?n=5");
            judge_all(&top, 5, late).map(|()| top)
        });
        check(&five, 5, late).expect("the top five in order");
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
        // Networks: the union of addresses, the sums of counts.
        let net = wait_for("a complete network answer", DEADLINE, || {
            let net = get_json(s.addr, "/api/v1/networks/10.9.9.0/24?n=2");
            if net["cluster"]["complete"] == true {
                Ok(net)
            } else {
                Err(net["cluster"].to_string())
            }
        });
        let heavy: u64 = HEAVY.iter().map(|(_, n)| n).sum();
        assert_eq!(net["count"], heavy, "{net}");
        assert_eq!(net["distinct_ips"], HEAVY.len(), "{net}");
        assert_eq!(net["top"][0]["ip"], "10.9.9.1", "{net}");
        assert_eq!(net["top"][1]["count"], 250, "{net}");
        let nets = wait_for("a complete network top list", DEADLINE, || {
            let top = get_json(s.addr, "/api/v1/top?prefix4=24&n=3");
            if top["cluster"]["complete"] == true {
                Ok(top)
            } else {
                Err(top["cluster"].to_string())
            }
        });
        let expected = [
            ("10.9.9.0/24", heavy, HEAVY.len() as u64),
            ("192.0.0.0/24", 200 * LIGHT_EACH, 200),
            ("192.0.1.0/24", 200 * LIGHT_EACH, 200),
        ];
        for (item, (network, count, distinct)) in
            nets["top"].as_array().expect("top").iter().zip(expected)
        {
            assert_eq!(item["network"], network, "{nets}");
            assert_eq!(item["count"], count, "{nets}");
            assert_eq!(item["distinct_ips"], distinct, "{nets}");
        }
    }
}

/// The tests of this file start three instances each: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits until the three instances hold every partition between them, each some.
fn settled(services: &[&Service]) {
    wait_for("every instance to hold partitions", DEADLINE, || {
        let owned: Vec<f64> = services
            .iter()
            .map(|s| metric(s.addr, "ipstats_partitions_owned").unwrap_or(0.0))
            .collect();
        if owned.iter().all(|o| *o >= 1.0) && owned.iter().sum::<f64>() == f64::from(PARTITIONS) {
            Ok(())
        } else {
            Err(format!("owned {owned:?}"))
        }
    });
}

/// The partitions an instance holds, by `/api/v1/status`.
fn held(s: &Service) -> Vec<String> {
    get_json(s.addr, "/api/v1/status")["cluster"]["held"]
        .as_array()
        .map(|held| {
            held.iter()
                .filter_map(|h| h["partition"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the ZooKeeper offsets of `topic` every 50 ms until stopped, and
/// keeps the first one that went backwards: a commit from an instance that
/// lost the partition would write the older offset it had counted.
struct OffsetWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl OffsetWatch {
    fn start(zookeeper: &str, group: &str, topic: &str) -> OffsetWatch {
        let (servers, chroot) = zookeeper.split_once('/').expect("a chroot");
        let (servers, base) = (
            servers.to_string(),
            format!("/{chroot}/consumers/{group}/offsets/{topic}"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let client = zookeeper_client::Client::connector()
                    .connect(&servers)
                    .await
                    .expect("ZooKeeper");
                let mut last: BTreeMap<i32, i64> = BTreeMap::new();
                while !s.load(Ordering::SeqCst) {
                    for p in 0..PARTITIONS {
                        let Ok((data, _)) = client.get_data(&format!("{base}/{p}")).await else {
                            continue;
                        };
                        let Some(offset) = std::str::from_utf8(&data).ok().and_then(|t| t.parse::<i64>().ok()) else {
                            continue;
                        };
                        let before = last.insert(p, offset).unwrap_or(0);
                        if offset < before {
                            return Some(format!("partition {p}: ZooKeeper offset went back from {before} to {offset}"));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None
            })
        });
        OffsetWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let back = self.thread.take().and_then(|t| t.join().ok()).flatten();
        assert!(back.is_none(), "{}", back.unwrap_or_default());
    }
}

#[test]
fn a_frozen_instance_gives_up_its_partitions_and_never_commits_them() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = common::cluster() else {
        return;
    };
    let topic = common::create_topic(&cluster, "cluster-freeze", PARTITIONS as u32);
    let group = unique("cluster-freeze-group");
    let zookeeper = format!("{}/{}", cluster.zookeeper, unique("cluster-freeze-zk"));
    let dir = std::env::temp_dir().join(unique("cluster-freeze-state"));
    kcat_produce_spread(&cluster.brokers, &topic, PARTITIONS, &lines());
    let mut a = start(&cluster, &zookeeper, &topic, &group, "a", &dir);
    let mut b = start(&cluster, &zookeeper, &topic, &group, "b", &dir);
    let mut c = start(&cluster, &zookeeper, &topic, &group, "c", &dir);
    for s in [&mut a, &mut b, &mut c] {
        s.wait_ready(DEADLINE);
    }
    settled(&[&a, &b, &c]);
    exact_everywhere(&[&a, &b, &c], 0);
    let frozen = held(&b);
    assert!(!frozen.is_empty());
    let watch = OffsetWatch::start(&zookeeper, &group, &topic);
    let sampler = Sampler::start(vec![a.addr, c.addr], LATE_LINES);

    // Frozen past both sessions (6 s): the group moves its partitions.
    b.signal("STOP");
    wait_for(
        "the others to take the frozen instance's partitions",
        DEADLINE,
        || {
            let mut taken = held(&a);
            taken.extend(held(&c));
            if frozen.iter().all(|p| taken.contains(p)) {
                Ok(())
            } else {
                Err(format!("a and c hold {taken:?}"))
            }
        },
    );
    // Records written meanwhile: the new owners count and commit them, so
    // a commit of the frozen instance's older offsets would go backwards.
    let now = SystemTime::now();
    let late: Vec<Vec<u8>> = (0..LATE_LINES).map(|_| json_line(LATE_IP, now)).collect();
    kcat_produce_spread(&cluster.brokers, &topic, PARTITIONS, &late);
    exact_everywhere(&[&a, &c], LATE_LINES);
    let ends = common::log_ends(&cluster.brokers, &topic);
    let chroot_zk = zookeeper.clone();
    wait_for("the new owners' offsets in ZooKeeper", DEADLINE, || {
        for p in 0..PARTITIONS {
            let server = chroot_zk
                .split_once('/')
                .map_or(chroot_zk.as_str(), |x| x.0);
            let path = format!(
                "/{}/consumers/{group}/offsets/{topic}/{p}",
                chroot_zk.split_once('/').map_or("", |x| x.1)
            );
            let stored = common::zk_get(server, &path);
            if stored.as_deref().and_then(|v| v.parse::<i64>().ok()) != ends.get(&p).copied() {
                return Err(format!("partition {p}: {stored:?} of {:?}", ends.get(&p)));
            }
        }
        Ok(())
    });

    // Woken: it finds its partitions gone, rejoins, and the cluster answers
    // exactly again with it.
    b.signal("CONT");
    wait_for("the woken instance to say it lost them", DEADLINE, || {
        let log = b.log_text();
        if log.contains("rebalance") && log.matches("rebalance: partitions moved").count() >= 2 {
            Ok(())
        } else {
            Err("no rebalance logged yet".to_string())
        }
    });
    settled(&[&a, &b, &c]);
    exact_everywhere(&[&a, &b, &c], LATE_LINES);
    sampler.finish();
    watch.finish();
    // Every partition's offset is its log end: nothing older was written
    // over it (zkCli, a JVM started per read, is retried on a busy machine).
    wait_for("every ZooKeeper offset at its log end", DEADLINE, || {
        for p in 0..PARTITIONS {
            let server = zookeeper
                .split_once('/')
                .map_or(zookeeper.as_str(), |x| x.0);
            let path = format!(
                "/{}/consumers/{group}/offsets/{topic}/{p}",
                zookeeper.split_once('/').map_or("", |x| x.1)
            );
            let stored = common::zk_get(server, &path).and_then(|v| v.parse::<i64>().ok());
            if stored != ends.get(&p).copied() {
                return Err(format!("partition {p}: {stored:?} of {:?}", ends.get(&p)));
            }
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn three_instances_answer_as_one_and_survive_a_kill() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
    let sampler = Sampler::start(vec![a.addr, b.addr, c.addr], 0);
    // The group settles with every instance holding a share.
    settled(&[&a, &b, &c]);
    exact_everywhere(&[&a, &b, &c], 0);

    // Each instance holds a share; alone, none has the truth.
    let local = get_json(a.addr, "/api/v1/top?n=5&scope=local");
    assert_eq!(local["cluster"]["complete"], false, "{local}");
    assert!(
        local["total_requests"].as_u64().unwrap_or(0) < total(0),
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
    exact_everywhere(&[&a, &b], 0);
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
    // A graceful stop leaves the group at once: the last one takes everything.
    let (status, log) = b.terminate_logged(DEADLINE);
    assert!(status.success(), "SIGTERM exits 0 within the grace: {log}");
    wait_for(
        "the last instance to hold every partition",
        DEADLINE,
        || match metric(a.addr, "ipstats_partitions_owned") {
            Some(owned) if owned == f64::from(PARTITIONS) => Ok(()),
            other => Err(format!("{other:?} owned")),
        },
    );
    exact_everywhere(&[&a], 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The transitions of `rule` for `key` the receiver got, by state.
fn sent(received: &std::sync::Mutex<Vec<Value>>, state: &str) -> usize {
    received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|t| t["rule"] == "spread" && t["key"] == "10.9.9.1" && t["state"] == state)
        .count()
}

fn rules_leader(services: &[&Service]) -> Option<usize> {
    services
        .iter()
        .position(|s| get_json(s.addr, "/api/v1/status")["cluster"]["is_rules_leader"] == true)
}

#[test]
fn a_key_spread_over_every_instance_fires_once_and_survives_its_leader() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = common::cluster() else {
        return;
    };
    let topic = common::create_topic(&cluster, "cluster-rules", PARTITIONS as u32);
    let group = unique("cluster-rules-group");
    let zookeeper = format!("{}/{}", cluster.zookeeper, unique("cluster-rules-zk"));
    let dir = std::env::temp_dir().join(unique("cluster-rules-state"));
    std::fs::create_dir_all(&dir).expect("state dir");
    // 10.9.9.1 sends 300 requests over six partitions: each instance holds
    // two and sees about 100, far below the rule's 280.
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"spread\"\nkey = \"ip\"\nwindow = \"5s\"\nrequests = 280\nblock = true\n",
    )
    .expect("rules file");
    let (hook, received) = common::receiver(0);
    let hook = format!("http://{hook}/");
    let extra = [
        "--rules",
        rules.to_str().expect("utf-8"),
        "--alert-webhook",
        &hook,
    ];
    kcat_produce_spread(&cluster.brokers, &topic, PARTITIONS, &lines());
    let mut a = start_with(&cluster, &zookeeper, &topic, &group, "a", &dir, &extra);
    let mut b = start_with(&cluster, &zookeeper, &topic, &group, "b", &dir, &extra);
    let mut c = start_with(&cluster, &zookeeper, &topic, &group, "c", &dir, &extra);
    for s in [&mut a, &mut b, &mut c] {
        s.wait_ready(DEADLINE);
    }
    settled(&[&a, &b, &c]);
    wait_for("the spread key to fire", DEADLINE, || {
        match sent(&received, "firing") {
            0 => Err("not yet".to_string()),
            _ => Ok(()),
        }
    });
    // Every instance answers the same alerts and block list.
    for s in [&a, &b, &c] {
        wait_for("every instance to list the key", DEADLINE, || {
            let alerts = get_json(s.addr, "/api/v1/alerts");
            let firing = alerts["firing"].as_array().cloned().unwrap_or_default();
            let block = common::http_get(s.addr, "/api/v1/blocklist")
                .map(|r| r.1)
                .unwrap_or_default();
            if firing.len() == 1 && firing[0]["key"] == "10.9.9.1" && block == "10.9.9.1\n" {
                Ok(())
            } else {
                Err(format!("{alerts} / {block:?}"))
            }
        });
    }
    let all = [a, b, c];
    let leader = wait_for("a rules leader", DEADLINE, || {
        rules_leader(&all.iter().collect::<Vec<_>>()).ok_or_else(|| "none".to_string())
    });
    let mut all: Vec<Service> = all.into_iter().collect();
    let mut dead = all.remove(leader);
    dead.child.kill().expect("kill -9");
    let _ = dead.child.wait();
    let survivors: Vec<&Service> = all.iter().collect();
    let successor = wait_for("a new rules leader", DEADLINE, || {
        rules_leader(&survivors).ok_or_else(|| "none".to_string())
    });
    // The successor took the state up: the key is firing there, and no
    // second transition was sent.
    wait_for(
        "the successor to evaluate a complete cluster",
        DEADLINE,
        || {
            let alerts = get_json(survivors[successor].addr, "/api/v1/alerts?scope=local");
            let status = get_json(survivors[successor].addr, "/api/v1/top?n=1");
            let firing = alerts["firing"].as_array().cloned().unwrap_or_default();
            if firing.len() == 1 && status["cluster"]["complete"] == true {
                Ok(())
            } else {
                Err(format!("{alerts}"))
            }
        },
    );
    let all_sent = |r: &std::sync::Mutex<Vec<Value>>| {
        format!("{:?}", r.lock().unwrap_or_else(|e| e.into_inner()))
    };
    assert_eq!(
        sent(&received, "firing"),
        1,
        "fired once: {}",
        all_sent(&received)
    );
    // Time moves on (lines 10 s later): the key's 5 s window empties and it
    // resolves, once.
    let later = SystemTime::now() + Duration::from_secs(10);
    let filler: Vec<Vec<u8>> = (0..60).map(|_| json_line("10.7.7.7", later)).collect();
    kcat_produce_spread(&cluster.brokers, &topic, PARTITIONS, &filler);
    wait_for("the key to resolve", DEADLINE, || {
        match sent(&received, "resolved") {
            0 => Err("not yet".to_string()),
            _ => Ok(()),
        }
    });
    assert_eq!(
        sent(&received, "firing"),
        1,
        "fired once: {}",
        all_sent(&received)
    );
    assert_eq!(
        sent(&received, "resolved"),
        1,
        "resolved once: {}",
        all_sent(&received)
    );
    for s in &survivors {
        let block = common::http_get(s.addr, "/api/v1/blocklist")
            .map(|r| r.1)
            .unwrap_or_default();
        assert_eq!(block, "", "unblocked everywhere");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// While held, every TCP packet the user `nobody` sends is dropped: an
/// instance run as `nobody` is cut off from Kafka, ZooKeeper and the other
/// instances (its answers never leave), and nothing else is touched.
struct Cut;

const NOBODY: &str = "65534";

impl Cut {
    fn off() -> Cut {
        let ok = std::process::Command::new("iptables")
            .args([
                "-I",
                "OUTPUT",
                "-m",
                "owner",
                "--uid-owner",
                NOBODY,
                "-p",
                "tcp",
                "-j",
                "DROP",
            ])
            .status()
            .expect("iptables");
        assert!(ok.success(), "iptables must work here (root, loopback)");
        Cut
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .args([
                "-D",
                "OUTPUT",
                "-m",
                "owner",
                "--uid-owner",
                NOBODY,
                "-p",
                "tcp",
                "-j",
                "DROP",
            ])
            .status();
    }
}

/// [`start`], as the user `nobody`.
fn start_as_nobody(
    cluster: &common::Cluster,
    zookeeper: &str,
    topic: &str,
    group: &str,
    id: &str,
    dir: &std::path::Path,
) -> Service {
    use std::os::unix::fs::PermissionsExt;
    let checkpoint = dir.join(id);
    std::fs::create_dir_all(&checkpoint).expect("checkpoint dir");
    std::fs::set_permissions(&checkpoint, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (addr, args) = instance(cluster, zookeeper, topic, group, id, dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (uid, gid) = (format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"));
    Service::spawn_wrapped(&["setpriv", &uid, &gid, "--clear-groups"], addr, &args)
}

#[test]
fn an_instance_cut_off_the_network_loses_its_partitions_and_rejoins_when_healed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = common::cluster() else {
        return;
    };
    let topic = common::create_topic(&cluster, "cluster-cut", PARTITIONS as u32);
    let group = unique("cluster-cut-group");
    let zookeeper = format!("{}/{}", cluster.zookeeper, unique("cluster-cut-zk"));
    let dir = std::env::temp_dir().join(unique("cluster-cut-state"));
    kcat_produce_spread(&cluster.brokers, &topic, PARTITIONS, &lines());
    let mut a = start(&cluster, &zookeeper, &topic, &group, "a", &dir);
    let mut b = start(&cluster, &zookeeper, &topic, &group, "b", &dir);
    let mut c = start_as_nobody(&cluster, &zookeeper, &topic, &group, "c", &dir);
    for s in [&mut a, &mut b, &mut c] {
        s.wait_ready(DEADLINE);
    }
    settled(&[&a, &b, &c]);
    exact_everywhere(&[&a, &b, &c], 0);
    let watch = OffsetWatch::start(&zookeeper, &group, &topic);
    let sampler = Sampler::start(vec![a.addr, b.addr], 0);

    let cut = Cut::off();
    wait_for("the others to take every partition", DEADLINE, || {
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
    exact_everywhere(&[&a, &b], 0);
    drop(cut);

    // Healed: it finds its partitions gone, rejoins, and the cluster
    // answers exactly again with it.
    settled(&[&a, &b, &c]);
    exact_everywhere(&[&a, &b, &c], 0);
    sampler.finish();
    watch.finish();
    let log = c.log_text();
    assert!(
        log.contains("rebalance: partitions moved"),
        "the cut instance logged its rebalances"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
