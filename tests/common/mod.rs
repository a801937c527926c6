//! Test harness: a minimal HTTP client, waiting on conditions with a
//! deadline (never sleeping as synchronisation), and ground truth from lines.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ipstats::config::{Cli, Command, Settings};
use ipstats::parse::{SkipReason, parse_reference};
use serde_json::Value;

/// `GET path` → (status, body). HTTP/1.1 with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Polls `probe` until it returns `Some`, or fails the test at the deadline
/// with the last observation.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let until = Instant::now() + deadline;
    let mut last = String::new();
    while Instant::now() < until {
        match probe() {
            Ok(v) => return v,
            Err(observed) => last = observed,
        }
        // Back off between probes of an external process; the deadline bounds the wait.
        std::thread::park_timeout(Duration::from_millis(50));
    }
    panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
}

/// Settings as the command line would make them.
pub fn settings(args: &[&str]) -> Settings {
    use clap::Parser;
    let cli = Cli::try_parse_from(std::iter::once("ipstats").chain(args.iter().copied()))
        .expect("valid command line");
    match cli.command {
        None => Settings::try_from(cli.serve).expect("valid settings"),
        Some(Command::Serve(s)) => Settings::try_from(s).expect("valid settings"),
        Some(_) => panic!("not a serve command line"),
    }
}

/// Per-IP counts and skip counts of `lines`, by the reference (serde_json) parser.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Truth {
    pub counts: BTreeMap<String, u64>,
    pub skipped: BTreeMap<&'static str, u64>,
    pub lines: u64,
}

impl Truth {
    pub fn of<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Truth {
        let mut truth = Truth::default();
        for reason in SkipReason::ALL {
            truth.skipped.insert(reason.as_str(), 0);
        }
        for line in lines {
            truth.lines += 1;
            match parse_reference(line, "client_real_ip", 64 * 1024) {
                Ok(ip) => *truth.counts.entry(ip.to_string()).or_insert(0) += 1,
                Err(reason) => *truth.skipped.entry(reason.as_str()).or_insert(0) += 1,
            }
        }
        truth
    }

    pub fn counted(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// The whole window as `/api/v1/top?n=100000` reports it.
pub fn window_counts(addr: SocketAddr) -> BTreeMap<String, u64> {
    let top = get_json(addr, "/api/v1/top?n=100000");
    top["top"]
        .as_array()
        .expect("top array")
        .iter()
        .map(|e| {
            (
                e["ip"].as_str().expect("ip").to_string(),
                e["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

pub fn skipped_counts(addr: SocketAddr) -> BTreeMap<&'static str, u64> {
    let status = get_json(addr, "/api/v1/status");
    SkipReason::ALL
        .iter()
        .map(|r| {
            (
                r.as_str(),
                status["skipped"][r.as_str()].as_u64().expect("skip count"),
            )
        })
        .collect()
}

/// The real local cluster started by `scripts/cluster.sh` (via scripts/test.sh).
#[derive(Clone, Debug)]
pub struct Cluster {
    pub brokers: String,
    pub zookeeper: String,
}

/// The cluster from `IPSTATS_TEST_BROKERS` / `IPSTATS_TEST_ZOOKEEPER`. Under
/// `CI=true` a missing cluster fails the test; elsewhere the test says it did
/// not run and returns.
pub fn cluster() -> Option<Cluster> {
    let brokers = std::env::var("IPSTATS_TEST_BROKERS").ok();
    let zookeeper = std::env::var("IPSTATS_TEST_ZOOKEEPER").ok();
    match (brokers, zookeeper) {
        (Some(brokers), Some(zookeeper)) => Some(Cluster { brokers, zookeeper }),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "CI=true but IPSTATS_TEST_BROKERS/IPSTATS_TEST_ZOOKEEPER are not set: run scripts/test.sh"
            )
        }
        _ => {
            eprintln!(
                "NOT RUN: no real cluster (run scripts/test.sh, or eval \"$(scripts/cluster.sh up)\" and set IPSTATS_TEST_BROKERS/IPSTATS_TEST_ZOOKEEPER)"
            );
            None
        }
    }
}

/// A name unique to this test run, for topics, groups and chroots.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Runs `scripts/cluster.sh ARGS` and returns its stdout; fails the test on error.
pub fn cluster_tool(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");
    let output = std::process::Command::new(script)
        .args(args)
        .output()
        .expect("run scripts/cluster.sh");
    assert!(
        output.status.success(),
        "scripts/cluster.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `ipstats produce` into a real topic; returns the lines it wrote (ground truth).
pub fn produce_lines(
    cluster: &Cluster,
    topic: &str,
    count: u64,
    partitions: u32,
    seed: u64,
) -> Vec<Vec<u8>> {
    let out = std::env::temp_dir().join(format!("{}.lines", unique(topic)));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args([
            "produce",
            "--brokers",
            &cluster.brokers,
            "--topic",
            topic,
            "--rate",
            "0",
            "--ips",
            "500",
        ])
        .args([
            "--count",
            &count.to_string(),
            "--partitions",
            &partitions.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args(["--malformed-ratio", "0.03", "--out"])
        .arg(&out)
        .output()
        .expect("run ipstats produce");
    assert!(
        output.status.success(),
        "ipstats produce failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read(&out).expect("produce --out file");
    let _ = std::fs::remove_file(&out);
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}
