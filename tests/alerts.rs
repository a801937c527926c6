//! Alerts leaving ipstats: a real Prometheus Alertmanager receives them
//! with the right labels and sees them resolve; a webhook receiver that
//! fails its first attempts still gets every transition once, in order; a
//! replayed backlog records transitions but sends none.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{
    Cluster, Service, cluster, free_port, get_json, http_get, json_line, unique, wait_for,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

const RULES: &str = r#"
[[rule]]
name = "hot-ip"
key = "ip"
window = "2s"
requests = 100
block = true
severity = "page"
description = "one client above 100 requests in 2 s"
"#;

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alertmanager(dir: &Path) -> (Killed, SocketAddr) {
    let port = free_port();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: nobody\n  group_wait: 1s\nreceivers:\n  - name: nobody\n",
    )
    .expect("config");
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager (installed by scripts/setup.sh)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let child = Killed(child);
    wait_for("Alertmanager answering", WAIT, || {
        match http_get(addr, "/api/v2/status") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    (child, addr)
}

/// A webhook receiver answering 503 to its first `fail_first` requests.
fn receiver(fail_first: usize) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    std::thread::spawn(move || {
        let mut requests = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
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

fn serve(cluster: &Cluster, topic: &str, dir: &Path, extra: &[&str]) -> Service {
    let rules: PathBuf = dir.join("rules.toml");
    std::fs::write(&rules, RULES).expect("rules");
    let mut args = vec![
        "--batch",
        "1s",
        "--slide",
        "1s",
        "--window",
        "10s",
        "--rules",
        rules.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let checkpoint = dir.join(unique("ckpt"));
    let mut svc =
        Service::on_cluster_exactly(cluster, topic, &unique("alerts"), &checkpoint, &args);
    svc.wait_ready(WAIT);
    svc
}

#[test]
fn alerts_reach_alertmanager_and_a_failing_webhook_once_each_in_order() {
    let Some(cluster) = cluster() else { return };
    let dir = std::env::temp_dir().join(unique("alerts"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (_am, am) = alertmanager(&dir);
    let (hook, received) = receiver(2);
    let topic = common::create_topic(&cluster, "alerts", 1);
    let t0 = SystemTime::now() - Duration::from_secs(2);
    let mut lines: Vec<Vec<u8>> = (0..150).map(|_| json_line("203.0.113.7", t0)).collect();
    lines.extend((0..20).map(|_| json_line("198.51.100.1", t0)));
    common::kcat_produce(&cluster.brokers, &topic, 0, &lines);
    let am_url = format!("http://{am}/");
    let hook_url = format!("http://{hook}/hook");
    let svc = serve(
        &cluster,
        &topic,
        &dir,
        &["--alertmanager", &am_url, "--alert-webhook", &hook_url],
    );

    // Alertmanager has it, with the rule's labels and annotations.
    let alert = wait_for("the alert in Alertmanager", WAIT, || {
        let (status, body) = http_get(am, "/api/v2/alerts").map_err(|e| e.to_string())?;
        let alerts: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}"))?;
        alerts
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|a| a["labels"]["alertname"] == "hot-ip")
                    .cloned()
            })
            .ok_or(body)
    });
    assert_eq!(alert["labels"]["key"], "203.0.113.7");
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["annotations"]["value"], "150");
    assert_eq!(alert["annotations"]["threshold"], "100");
    assert_eq!(
        alert["annotations"]["description"],
        "one client above 100 requests in 2 s"
    );
    assert_eq!(alert["status"]["state"], "active");

    // An event stream opened now gets the transitions recorded after it.
    let mut events = std::net::TcpStream::connect(svc.addr).expect("connect");
    events.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        events,
        "GET /api/v1/events?n=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .expect("request");

    // The data moves on: the key's requests leave the 2 s window.
    let later: Vec<Vec<u8>> = (0..5)
        .map(|_| json_line("198.51.100.1", t0 + Duration::from_secs(5)))
        .collect();
    common::kcat_produce(&cluster.brokers, &topic, 0, &later);
    wait_for("the alert resolved in Alertmanager", WAIT, || {
        let (_, body) = http_get(am, "/api/v2/alerts").map_err(|e| e.to_string())?;
        let alerts: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let still = alerts.as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["labels"]["alertname"] == "hot-ip" && a["status"]["state"] == "active")
        });
        if still { Err(body) } else { Ok(()) }
    });

    let mut reader = BufReader::new(events);
    let mut alert_events = Vec::new();
    let mut event = String::new();
    while alert_events.is_empty() {
        let mut text = String::new();
        assert!(
            reader.read_line(&mut text).expect("event stream") > 0,
            "stream ended"
        );
        if let Some(name) = text.strip_prefix("event: ") {
            event = name.trim().to_string();
        } else if let Some(data) = text.strip_prefix("data: ")
            && event == "alert"
        {
            alert_events.push(serde_json::from_str::<Value>(data.trim()).expect("alert json"));
        }
    }
    assert_eq!(
        alert_events[0]["state"], "resolved",
        "only what came after the stream opened"
    );
    assert_eq!(alert_events[0]["key"], "203.0.113.7");

    // The webhook failed twice, then took both transitions, once each, in order.
    let got = wait_for("both transitions at the webhook", WAIT, || {
        let got = received.lock().expect("lock").clone();
        if got.len() >= 2 {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    });
    let states: Vec<&str> = got
        .iter()
        .map(|t| t["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["firing", "resolved"], "{got:?}");
    assert!(
        got.iter()
            .all(|t| t["key"] == "203.0.113.7" && t["rule"] == "hot-ip")
    );
    assert_ne!(got[0]["id"], got[1]["id"]);
    let (_, metrics) = http_get(svc.addr, "/metrics").expect("metrics");
    assert!(
        metrics.contains("ipstats_alert_deliveries_total{result=\"retry\",target=\"webhook\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("ipstats_alert_deliveries_total{result=\"ok\",target=\"webhook\"} 2"));
    let alerts = get_json(svc.addr, "/api/v1/alerts");
    assert_eq!(alerts["transitions"].as_array().map(Vec::len), Some(2));
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replayed_backlog_records_transitions_but_sends_none() {
    let Some(cluster) = cluster() else { return };
    let dir = std::env::temp_dir().join(unique("replay-alerts"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (hook, received) = receiver(0);
    let topic = common::create_topic(&cluster, "replay-alerts", 1);
    // Ten minutes old: beyond --alert-max-age (5 min).
    let old = SystemTime::now() - Duration::from_secs(600);
    let lines: Vec<Vec<u8>> = (0..150).map(|_| json_line("203.0.113.9", old)).collect();
    common::kcat_produce(&cluster.brokers, &topic, 0, &lines);
    let hook_url = format!("http://{hook}/hook");
    let svc = serve(&cluster, &topic, &dir, &["--alert-webhook", &hook_url]);
    wait_for("the transition recorded", WAIT, || {
        let alerts = get_json(svc.addr, "/api/v1/alerts");
        match alerts["transitions"].as_array().map(Vec::len) {
            Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let (_, metrics) = http_get(svc.addr, "/metrics").expect("metrics");
    assert!(
        metrics.contains("ipstats_alert_deliveries_total{result=\"stale\",target=\"webhook\"} 1"),
        "{metrics}"
    );
    assert!(received.lock().expect("lock").is_empty(), "nothing sent");
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
}
