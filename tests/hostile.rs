//! Hostile clients against the real binary on the real cluster, on
//! loopback, bounded in count and time: connection floods, slowloris, and
//! an event stream open at shutdown.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{
    Service, cluster, http_get, metric, produce_lines, unique, wait_all_counted, wait_for,
};

const WAIT: Duration = Duration::from_secs(90);

fn temp_dir(name: &str) -> String {
    std::env::temp_dir()
        .join(unique(name))
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// The test process itself holds thousands of sockets: raises its limit
/// towards `n`; returns the limit it got.
fn allow_sockets(n: u64) -> u64 {
    let (soft, hard) = rlimit::Resource::NOFILE.get().expect("open-files limit");
    if soft < n {
        rlimit::Resource::NOFILE
            .set(n.min(hard), hard)
            .expect("raise the open-files limit");
    }
    rlimit::Resource::NOFILE.get().expect("open-files limit").0
}

/// `/healthz` `times` times; the slowest answer.
fn slowest_healthz(addr: SocketAddr, times: usize) -> Duration {
    (0..times)
        .map(|_| {
            let started = Instant::now();
            let (code, body) = http_get(addr, "/healthz").expect("healthz answers");
            assert_eq!(code, 200, "{body}");
            started.elapsed()
        })
        .max()
        .unwrap_or_default()
}

/// Connections the server has closed (read gives end of file or an error).
fn closed_by_server(connections: &mut [TcpStream]) -> usize {
    let mut byte = [0u8; 1];
    connections
        .iter_mut()
        .map(|c| {
            c.set_nonblocking(true).expect("nonblocking");
            !matches!(c.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock)
        })
        .filter(|closed| *closed)
        .count()
}

#[test]
fn floods_of_idle_and_slowloris_connections_never_stop_health_counting_or_checkpoints() {
    let Some(cluster) = cluster() else { return };
    const SLOW: usize = 500;
    // 5,000 idle connections, or as many as this machine lets the test hold
    // (always several times the server's 1,024 descriptors).
    let limit = allow_sockets(8_192);
    let idle_wanted = 5_000.min(
        usize::try_from(limit)
            .unwrap_or(0)
            .saturating_sub(SLOW + 300),
    );
    assert!(
        idle_wanted >= 2_500,
        "the test process may hold only {limit} sockets"
    );
    let topic = unique("flood");
    let first = produce_lines(&cluster, &topic, 2_000, 2, 91);
    // 1,024 descriptors, soft and hard: ipstats cannot raise it, and keeps
    // 256 of them from HTTP clients.
    let service = Service::spawn_with_fd_limit(
        1024,
        &[
            "--brokers",
            &cluster.brokers,
            "--topics",
            &topic,
            "--group",
            &unique("group"),
            "--checkpoint-dir",
            &temp_dir("flood-ckpt"),
            "--checkpoint-interval",
            "500ms",
            "--header-timeout",
            "2s",
            "--idle-timeout",
            "5s",
        ],
    );
    let mut service = service;
    service.wait_ready(WAIT);
    wait_all_counted(service.addr, first.len() as u64, WAIT);
    let log = service.log_text();
    assert!(
        log.contains("open-files limit") && log.contains("soft=1024"),
        "{log}"
    );

    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..idle_wanted)
        .filter_map(|_| TcpStream::connect(service.addr).ok())
        .collect();
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .filter_map(|_| {
            let mut c = TcpStream::connect(service.addr).ok()?;
            c.write_all(b"GET /api/v1/top HTTP/1.1\r\nHost: x\r\n")
                .ok()?;
            Some(c)
        })
        .collect();
    // (A connect may be refused when the listen backlog is full for a moment.)
    assert!(
        idle.len() * 10 >= idle_wanted * 9 && slow.len() * 10 >= SLOW * 9,
        "the flood is on: {} idle, {} slow",
        idle.len(),
        slow.len()
    );

    // One header byte per slowloris connection per second, while we check.
    let trickle = std::thread::spawn({
        let mut slow: Vec<TcpStream> = slow.iter().filter_map(|c| c.try_clone().ok()).collect();
        move || {
            for _ in 0..4 {
                for c in &mut slow {
                    let _ = c.write_all(b"X");
                }
                std::thread::park_timeout(Duration::from_secs(1));
            }
        }
    });
    let under_flood = slowest_healthz(service.addr, 50);

    // Counting and checkpointing go on: new records are counted, and a
    // checkpoint holding them is written without a failure.
    let second = produce_lines(&cluster, &topic, 2_000, 2, 92);
    let total = (first.len() + second.len()) as u64;
    wait_all_counted(service.addr, total, WAIT);
    let checkpoints = metric(service.addr, "ipstats_checkpoints_total").unwrap_or(0.0);
    wait_for("a checkpoint after the flood", WAIT, || {
        let now = metric(service.addr, "ipstats_checkpoints_total").unwrap_or(0.0);
        if now > checkpoints {
            Ok(())
        } else {
            Err(format!("{now} checkpoints"))
        }
    });
    let failed: f64 = ["no_space", "permission", "read_only", "io", "invalid"]
        .iter()
        .filter_map(|r| {
            metric(
                service.addr,
                &format!("ipstats_checkpoint_failures_total{{reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert_eq!(failed, 0.0, "{}", service.log_text());
    trickle.join().expect("trickle");

    // Slowloris and idle connections are closed by the server.
    wait_for(
        "slowloris connections closed",
        WAIT,
        || match closed_by_server(&mut slow) {
            n if n == slow.len() => Ok(()),
            n => Err(format!("{n} of {} closed", slow.len())),
        },
    );
    wait_for("idle connections closed", WAIT, || {
        match closed_by_server(&mut idle) {
            n if n == idle.len() => Ok(()),
            n => Err(format!("{n} of {} closed", idle.len())),
        }
    });
    let log = service.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    println!(
        "RELIABILITY {{\"scenario\":\"connection_flood\",\"idle\":{},\"slowloris\":{},\"fd_limit\":1024,\
         \"slowest_healthz_ms\":{:.1},\"records\":{total},\"checkpoint_failures\":0,\
         \"all_closed_s\":{:.1}}}",
        idle.len(),
        slow.len(),
        under_flood.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64()
    );
    assert!(
        under_flood < Duration::from_secs(1),
        "/healthz took {under_flood:?} under the flood"
    );
    service.signal("TERM");
    assert!(service.wait_exit(WAIT).success(), "{}", service.log_text());
}

#[test]
fn an_open_event_stream_does_not_hold_up_shutdown() {
    let Some(cluster) = cluster() else { return };
    let topic = unique("sse-stop");
    let lines = produce_lines(&cluster, &topic, 500, 1, 93);
    let mut service = Service::spawn(&[
        "--brokers",
        &cluster.brokers,
        "--topics",
        &topic,
        "--group",
        &unique("group"),
        "--checkpoint-dir",
        &temp_dir("sse-ckpt"),
        "--shutdown-grace",
        "2s",
    ]);
    service.wait_ready(WAIT);
    wait_all_counted(service.addr, lines.len() as u64, WAIT);
    let mut stream = TcpStream::connect(service.addr).expect("connect");
    write!(
        stream,
        "GET /api/v1/events?n=5 HTTP/1.1\r\nHost: {}\r\n\r\n",
        service.addr
    )
    .expect("request");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: snapshot") {
        let n = stream.read(&mut buffer).expect("the stream sends");
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buffer[..n]);
    }
    service.signal("TERM");
    // Exit 0 within --shutdown-grace: overrunning it exits 1 and says so.
    let status = service.wait_exit(WAIT);
    let log = service.log_text();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("--shutdown-grace"), "{log}");
    // The client sees its stream end rather than hang.
    let mut rest = Vec::new();
    let ended = stream.read_to_end(&mut rest);
    assert!(
        ended.is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "{ended:?}"
    );
}
