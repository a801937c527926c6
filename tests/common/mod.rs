//! Test harness: a minimal HTTP client, waiting on conditions with a
//! deadline (never sleeping as synchronisation), and ground truth from lines.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ipstats::config::{Cli, Command, Settings};
use ipstats::input::parse::ClientField;
use ipstats::input::reference::reference_record;
use ipstats::vocab::SkipReason;
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
        Some(Command::Serve(s)) => Settings::try_from(*s).expect("valid settings"),
        Some(_) => panic!("not a serve command line"),
    }
}

/// Per-IP counts and skip counts of `lines`, by the reference (serde_json) parser.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Truth {
    pub counts: BTreeMap<String, u64>,
    pub skipped: BTreeMap<&'static str, u64>,
    pub lines: u64,
    /// Lines that are not valid UTF-8 (read repaired, counted or skipped).
    pub repaired: u64,
}

impl Truth {
    /// By event time (the default): a line without a readable
    /// `time_local` is `bad_time`. Every line is assumed to fall in the
    /// window and in time (the tests' lines span less than the lateness).
    pub fn of<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Truth {
        Truth::with(
            lines,
            ClientField::from("client_real_ip").with_time(Some("time_local")),
        )
    }

    /// By arrival time (`--time-source arrival`): the time is not read.
    pub fn arrival<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Truth {
        Truth::with(lines, ClientField::from("client_real_ip"))
    }

    fn with<'a>(lines: impl IntoIterator<Item = &'a [u8]>, field: ClientField) -> Truth {
        let mut truth = Truth::default();
        for reason in SkipReason::ALL {
            truth.skipped.insert(reason.as_str(), 0);
        }
        for line in lines {
            truth.lines += 1;
            truth.repaired += u64::from(std::str::from_utf8(line).is_err());
            // --max-future's default: 5 minutes ahead of the clock.
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            match reference_record(line, &field, 64 * 1024) {
                Ok((_, Some(t))) if t > now_ms + 300_000 => {
                    *truth.skipped.entry("future_time").or_insert(0) += 1;
                }
                Ok((ip, _)) => *truth.counts.entry(ip.to_string()).or_insert(0) += 1,
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
    top_counts(&get_json(addr, "/api/v1/top?n=100000"))
}

/// Counts per address of a `top` answer (the service's or `ipstats count`'s).
pub fn top_counts(top: &Value) -> BTreeMap<String, u64> {
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
    /// The broker's SASL_PLAINTEXT listener (PLAIN, ipstats / ipstats-secret).
    pub sasl_brokers: Option<String>,
}

/// The cluster from `IPSTATS_TEST_BROKERS` / `IPSTATS_TEST_ZOOKEEPER`. Under
/// `CI=true` a missing cluster fails the test; elsewhere the test says it did
/// not run and returns.
pub fn cluster() -> Option<Cluster> {
    let brokers = std::env::var("IPSTATS_TEST_BROKERS").ok();
    let zookeeper = std::env::var("IPSTATS_TEST_ZOOKEEPER").ok();
    match (brokers, zookeeper) {
        (Some(brokers), Some(zookeeper)) => Some(Cluster {
            brokers,
            zookeeper,
            sasl_brokers: std::env::var("IPSTATS_TEST_SASL_BROKERS").ok(),
        }),
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

/// A new topic named after `prefix` with `partitions` partitions (the test
/// cluster does not create topics on first use).
pub fn create_topic(cluster: &Cluster, prefix: &str, partitions: u32) -> String {
    let topic = unique(prefix);
    cluster_tool(&[
        "kafka-topics",
        "--bootstrap-server",
        &cluster.brokers,
        "--create",
        "--topic",
        &topic,
        "--partitions",
        &partitions.to_string(),
    ]);
    topic
}

/// `lines` into one partition of `topic`, by kcat.
/// `lines` into `partitions` partitions of `topic` in turn: line `i` to
/// partition `i % partitions`.
#[allow(dead_code)] // not every test file spreads lines
pub fn kcat_produce_spread(brokers: &str, topic: &str, partitions: i32, lines: &[Vec<u8>]) {
    for partition in 0..partitions {
        let mine: Vec<Vec<u8>> = lines
            .iter()
            .skip(partition as usize)
            .step_by(partitions as usize)
            .cloned()
            .collect();
        kcat_produce(brokers, topic, partition, &mine);
    }
}

pub fn kcat_produce(brokers: &str, topic: &str, partition: i32, lines: &[Vec<u8>]) {
    let mut child = std::process::Command::new("kcat")
        .args([
            "-P",
            "-b",
            brokers,
            "-t",
            topic,
            "-p",
            &partition.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run kcat");
    {
        let stdin = child.stdin.as_mut().expect("stdin");
        for line in lines {
            stdin
                .write_all(line)
                .and_then(|()| stdin.write_all(b"\n"))
                .expect("write");
        }
    }
    assert!(child.wait().expect("kcat").success());
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

/// A JSON access-log line from `ip` whose `time_local` is `t` (RFC 3339).
#[allow(dead_code)] // not every test file writes timed lines
pub fn json_line(ip: &str, t: std::time::SystemTime) -> Vec<u8> {
    format!(
        r#"{{"time_local":"{}","client_real_ip":"{ip}","request":"GET / HTTP/1.1"}}"#,
        humantime::format_rfc3339_millis(t)
    )
    .into_bytes()
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `zkCli.sh -server SERVER get PATH`: the znode's value, or None if absent.
pub fn zk_get(server: &str, path: &str) -> Option<String> {
    // zkCli.sh retries an unreachable server for ever: bound it.
    let output = std::process::Command::new("timeout")
        .args([
            "60",
            "/usr/share/zookeeper/bin/zkCli.sh",
            "-server",
            server,
            "get",
            path,
        ])
        .output()
        .expect("run zkCli.sh");
    assert!(
        output.status.code() != Some(124),
        "zkCli.sh get {path} timed out"
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if text.contains("Node does not exist") {
        return None;
    }
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("WatchedEvent state:SyncConnected"));
    lines.next()?;
    lines
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// One row of `kafka-consumer-groups --describe`: current offset, log end, lag.
pub type GroupRow = (Option<i64>, i64, Option<i64>);

/// `kafka-consumer-groups --describe`: (topic, partition) → its row.
pub fn describe_group(brokers: &str, group: &str) -> BTreeMap<(String, i32), GroupRow> {
    let text = cluster_tool(&[
        "kafka-consumer-groups",
        "--bootstrap-server",
        brokers,
        "--describe",
        "--group",
        group,
    ]);
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 6 || cols[0] != group {
                return None;
            }
            let num = |s: &str| s.parse::<i64>().ok();
            Some((
                (cols[1].to_string(), num(cols[2])? as i32),
                (num(cols[3]), num(cols[4])?, num(cols[5])),
            ))
        })
        .collect()
}

/// The log end offset of every partition of `topic`, by Kafka's own tool.
pub fn log_ends(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let text = cluster_tool(&[
        "kafka-get-offsets",
        "--bootstrap-server",
        brokers,
        "--topic",
        topic,
    ]);
    text.lines()
        .filter_map(|l| {
            let mut parts = l.rsplitn(3, ':');
            let end = parts.next()?.trim().parse().ok()?;
            let partition = parts.next()?.trim().parse().ok()?;
            Some((partition, end))
        })
        .collect()
}

/// The ipstats binary as a child process, as an operator runs it.
pub struct Service {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::path::PathBuf,
}

impl Service {
    /// ipstats on the real cluster with ZooKeeper offsets under `zookeeper`
    /// (connect string with chroot; none: the Kafka group only), a topic, a
    /// group and a checkpoint directory.
    pub fn on_cluster(
        cluster: &Cluster,
        zookeeper: Option<&str>,
        topic: &str,
        group: &str,
        checkpoint: &std::path::Path,
        extra: &[&str],
    ) -> Service {
        let checkpoint = checkpoint.to_str().expect("utf-8 path");
        let mut args = vec!["--brokers", &cluster.brokers];
        if let Some(zookeeper) = zookeeper {
            args.extend(["--zookeeper", zookeeper]);
        }
        args.extend([
            "--topics",
            topic,
            "--group",
            group,
            "--checkpoint-dir",
            checkpoint,
        ]);
        args.extend_from_slice(extra);
        Service::spawn(&args)
    }

    /// ipstats on the real cluster with exactly `extra` after the topic,
    /// group, checkpoint directory and a free `--listen` (no defaults
    /// added: the windows are the test's own).
    pub fn on_cluster_exactly(
        cluster: &Cluster,
        topic: &str,
        group: &str,
        checkpoint: &std::path::Path,
        extra: &[&str],
    ) -> Service {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let listen = addr.to_string();
        let checkpoint = checkpoint.to_str().expect("utf-8 path");
        let mut args = vec![
            "--brokers",
            &cluster.brokers,
            "--topics",
            topic,
            "--group",
            group,
            "--checkpoint-dir",
            checkpoint,
            "--listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        Service::spawn_exactly(None, addr, &args, &[])
    }

    pub fn spawn(args: &[&str]) -> Service {
        Service::spawn_via(None, args)
    }

    /// ipstats under an open-files limit (soft and hard, as `ulimit -n` sets it).
    pub fn spawn_with_fd_limit(limit: u32, args: &[&str]) -> Service {
        Service::spawn_via(Some(limit), args)
    }

    fn spawn_via(fd_limit: Option<u32>, args: &[&str]) -> Service {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let listen = addr.to_string();
        let mut all = args.to_vec();
        all.extend([
            "--listen", &listen, "--batch", "100ms", "--slide", "100ms", "--window", "600s",
        ]);
        Service::spawn_exactly(fd_limit, addr, &all, &[])
    }

    /// ipstats with exactly `args` and `env` (nothing added), expected to
    /// listen on `addr`.
    pub fn spawn_exactly(
        fd_limit: Option<u32>,
        addr: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Service {
        let binary = env!("CARGO_BIN_EXE_ipstats");
        let command = match fd_limit {
            None => std::process::Command::new(binary),
            Some(limit) => {
                // exec: the child's pid is ipstats itself, for signals.
                let mut shell = std::process::Command::new("sh");
                shell.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                    binary,
                ]);
                shell
            }
        };
        Service::spawn_command(command, addr, args, env)
    }

    /// ipstats with exactly `args`, run by `wrapper` (a program that execs
    /// its arguments, such as `setpriv --reuid=...`).
    #[allow(dead_code)] // not every test file wraps the binary
    pub fn spawn_wrapped(wrapper: &[&str], addr: SocketAddr, args: &[&str]) -> Service {
        let mut command = std::process::Command::new(wrapper[0]);
        command
            .args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_ipstats"));
        Service::spawn_command(command, addr, args, &[])
    }

    fn spawn_command(
        mut command: std::process::Command,
        addr: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Service {
        let log = std::env::temp_dir().join(format!("{}.log", unique("ipstats-service")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .args(args)
            .env_remove("IPSTATS_BROKERS")
            .env_remove("IPSTATS_ZOOKEEPER")
            .env("IPSTATS_LOG", "info")
            .envs(env.iter().copied())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn ipstats");
        Service { child, addr, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&mut self, deadline: Duration) {
        let addr = self.addr;
        let log = self.log.clone();
        wait_for("ipstats ready", deadline, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ipstats exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            match http_get(addr, "/readyz") {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(e.to_string()),
            }
        });
    }

    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("ipstats to exit", deadline, || {
            child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_string())
        })
    }

    pub fn signal(&self, name: &str) {
        signal(&self.child.id().to_string(), name);
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(self, deadline: Duration) -> std::process::ExitStatus {
        self.terminate_logged(deadline).0
    }

    /// SIGTERM, then the exit status and all it logged.
    pub fn terminate_logged(mut self, deadline: Duration) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        let status = self.wait_exit(deadline);
        (status, self.log_text())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ZooKeeper of the test's own (the Debian jars), so it can be stopped and
/// started without disturbing other tests.
pub struct PrivateZk {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateZk {
    /// Reserves a port and a data directory; not running yet.
    pub fn new() -> PrivateZk {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("private-zk"));
        std::fs::create_dir_all(dir.join("data")).expect("zk dir");
        std::fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=ruok\nminSessionTimeout=1000\n",
                dir.join("data").display()
            ),
        )
        .expect("zoo.cfg");
        PrivateZk {
            port,
            dir,
            child: None,
        }
    }

    pub fn connect(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka");
        let log = std::fs::File::create(self.dir.join("zk.log")).expect("zk log");
        let child = std::process::Command::new("java")
            .args([
                "-Xmx128m",
                &format!("-Dlog4j.configuration=file:{conf}/zk-log4j.properties"),
            ])
            .args(["-cp", &format!("{conf}:/usr/share/java/zookeeper.jar")])
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.join("zoo.cfg"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start ZooKeeper");
        self.child = Some(child);
        let port = self.port;
        wait_for(
            "private ZooKeeper to answer",
            Duration::from_secs(60),
            || {
                let mut stream =
                    TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
                // A server still starting may accept and never answer: bound the read.
                stream
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .map_err(|e| e.to_string())?;
                stream.write_all(b"ruok").map_err(|e| e.to_string())?;
                let mut reply = String::new();
                let _ = stream.read_to_string(&mut reply);
                if reply == "imok" { Ok(()) } else { Err(reply) }
            },
        );
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateZk {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A metric's value from the Prometheus text, if present.
pub fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let text = http_get(addr, "/metrics").ok()?.1;
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until ipstats has accounted for `lines` records (counted or
/// skipped) and a snapshot holding all of them is published; returns how
/// long that took.
pub fn wait_all_counted(addr: SocketAddr, lines: u64, deadline: Duration) -> Duration {
    let started = std::time::Instant::now();
    wait_for("every record accounted for", deadline, || {
        let status = get_json(addr, "/api/v1/status");
        let top = get_json(addr, "/api/v1/top?n=1");
        let consumed = status["records_consumed"].as_u64().unwrap_or(0);
        if consumed == lines && top["total_requests"] == status["records_counted"] {
            Ok(())
        } else {
            Err(format!("consumed {consumed} of {lines}"))
        }
    });
    started.elapsed()
}

/// `kill -SIGNAL pid`.
pub fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A plain consumer (no ipstats around it) with `partitions` partitions of
/// `topic` assigned from the beginning, their records routed to `queue` first
/// when one is given. `extra` overrides client settings.
#[allow(dead_code)] // only the batch tests read a topic this way
pub fn plain_consumer(brokers: &str, extra: &[(&str, &str)]) -> rdkafka::consumer::BaseConsumer {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("plain"))
        .set("enable.auto.commit", "false");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config.create().expect("consumer")
}

/// Assigns `topic`'s partitions `0..partitions` from the beginning, routing
/// each to `queue` before it is assigned when one is given.
#[allow(dead_code)]
pub fn assign_from_start(
    consumer: &rdkafka::consumer::BaseConsumer,
    queue: Option<&ipstats::kafka::batch::BatchQueue<'_>>,
    topic: &str,
    partitions: i32,
) {
    use rdkafka::consumer::Consumer;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        if let Some(queue) = queue {
            queue.route(topic, p).expect("route");
        }
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    consumer.incremental_assign(&tpl).expect("assign");
}

/// What one consumed record carried: partition, offset, timestamp, payload.
#[allow(dead_code)]
pub type Seen = (i32, i64, Option<i64>, Vec<u8>);

#[allow(dead_code)]
pub fn seen(record: &impl ipstats::kafka::batch::Consumed) -> Seen {
    (
        record.partition(),
        record.offset(),
        record.timestamp_ms(),
        record.payload().to_vec(),
    )
}

/// Drops `value` on another thread and fails the test if that takes longer
/// than `deadline` (librdkafka's shutdown waits forever for records still
/// held, so a leaked record shows as a client that never goes away).
#[allow(dead_code)]
pub fn drop_within<T: Send + 'static>(value: T, deadline: Duration, what: &str) {
    let (done, gone) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(value);
        let _ = done.send(());
    });
    assert!(
        gone.recv_timeout(deadline).is_ok(),
        "{what} did not shut down within {deadline:?}: records were not destroyed"
    );
}

#[allow(dead_code)] // not every test file receives webhooks
/// A webhook receiver answering 503 to its first `fail_first` requests.
pub fn receiver(fail_first: usize) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    receive_on(listener, fail_first)
}

#[allow(dead_code)]
pub fn receive_on(
    listener: std::net::TcpListener,
    fail_first: usize,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let addr = listener.local_addr().expect("address");
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = received.clone();
    std::thread::spawn(move || {
        let mut requests = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    break;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            requests += 1;
            let status = if requests <= fail_first {
                "503 Service Unavailable"
            } else {
                if let Ok(json) = serde_json::from_slice::<Value>(&body) {
                    seen.lock().expect("lock").push(json);
                }
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (addr, received)
}

/// A child process (a receiver, a bouncer) killed when dropped.
#[allow(dead_code)] // not every test file starts one
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a MaxMind DB of `kind` (`asn` or `country`) with `entries`
/// (`203.0.113.0/24=64500:ORG` or `203.0.113.0/24=DE`) to `path`, with
/// `scripts/make-mmdb.py` and the test venv's mmdb-writer.
#[allow(dead_code)] // not every test file writes databases
pub fn write_mmdb(kind: &str, path: &std::path::Path, entries: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join(".cache/venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        std::path::PathBuf::from("python3")
    };
    let status = std::process::Command::new(python)
        .arg(root.join("scripts/make-mmdb.py"))
        .arg(kind)
        .arg(path)
        .args(entries)
        .status()
        .expect("python runs (scripts/setup.sh makes the venv with mmdb-writer)");
    assert!(status.success(), "make-mmdb.py {kind} {}", path.display());
}
