//! Alerts leaving ipstats: a real Prometheus Alertmanager receives them
//! with the right labels and sees them resolve; a webhook receiver that
//! fails its first attempts still gets every transition once, in order; a
//! replayed backlog records transitions but sends none; after kill -9 a
//! firing key neither fires again nor is forgotten; a receiver down for a
//! minute gets what its queue held, and the overflow is counted.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{
    Cluster, Killed, Service, cluster, free_port, get_json, http_get, json_line, receive_on,
    receiver, unique, wait_for,
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

fn serve(cluster: &Cluster, topic: &str, dir: &Path, extra: &[&str]) -> Service {
    let checkpoint = dir.join(unique("ckpt"));
    serve_from(cluster, topic, &unique("alerts"), &checkpoint, dir, extra)
}

/// ipstats with [`RULES`], continuing `group` and `checkpoint`.
fn serve_from(
    cluster: &Cluster,
    topic: &str,
    group: &str,
    checkpoint: &Path,
    dir: &Path,
    extra: &[&str],
) -> Service {
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
    let mut svc = Service::on_cluster_exactly(cluster, topic, group, checkpoint, &args);
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

/// The transitions as /api/v1/alerts lists them, oldest first.
fn transitions(addr: SocketAddr) -> Vec<Value> {
    let alerts = get_json(addr, "/api/v1/alerts");
    let mut list = alerts["transitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.reverse();
    list
}

fn wait_received(received: &Arc<Mutex<Vec<Value>>>, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} transitions at the webhook"), WAIT, || {
        let got = received.lock().expect("lock").clone();
        if got.len() >= n {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    })
}

fn states(got: &[Value]) -> Vec<(String, String)> {
    got.iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap_or_default().to_string(),
                t["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn after_kill_9_a_firing_key_goes_on_firing_and_resolves_once() {
    let Some(cluster) = cluster() else { return };
    let dir = std::env::temp_dir().join(unique("restart-alerts"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (hook, received) = receiver(0);
    let hook_url = format!("http://{hook}/hook");
    let topic = common::create_topic(&cluster, "restart-alerts", 1);
    let t0 = SystemTime::now() - Duration::from_secs(2);
    let mut lines: Vec<Vec<u8>> = (0..150).map(|_| json_line("203.0.113.7", t0)).collect();
    lines.extend((0..20).map(|_| json_line("198.51.100.1", t0)));
    common::kcat_produce(&cluster.brokers, &topic, 0, &lines);
    let (group, checkpoint) = (unique("restart-alerts"), dir.join("ckpt"));
    let extra = ["--alert-webhook", hook_url.as_str()];
    let mut svc = serve_from(&cluster, &topic, &group, &checkpoint, &dir, &extra);
    let fired = wait_received(&received, 1);
    assert_eq!(states(&fired), [("203.0.113.7".into(), "firing".into())]);
    let before = get_json(svc.addr, "/api/v1/alerts");
    // Killed once a checkpoint holds the firing key.
    wait_for("the alert in a checkpoint", WAIT, || {
        let manifests: Vec<String> = std::fs::read_dir(&checkpoint)
            .map_err(|e| e.to_string())?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.starts_with("manifest-").then_some(name)
            })
            .collect();
        let newest = manifests.iter().max().ok_or("no manifest")?;
        let text = String::from_utf8_lossy(
            &std::fs::read(checkpoint.join(newest)).map_err(|e| e.to_string())?,
        )
        .into_owned();
        if text.contains("\"203.0.113.7/32\"") {
            Ok(())
        } else {
            Err(text)
        }
    });
    svc.signal("KILL");
    svc.wait_exit(WAIT);

    let svc = serve_from(&cluster, &topic, &group, &checkpoint, &dir, &extra);
    let after = get_json(svc.addr, "/api/v1/alerts");
    assert_eq!(
        after["firing"], before["firing"],
        "the same key, since the same time"
    );
    assert_eq!(
        transitions(svc.addr).first().map(|t| t["id"].clone()),
        Some(fired[0]["id"].clone()),
        "the recorded transition came back"
    );
    // The data moves on: the key resolves, once; it never fired again.
    let later: Vec<Vec<u8>> = (0..5)
        .map(|_| json_line("198.51.100.1", t0 + Duration::from_secs(5)))
        .collect();
    common::kcat_produce(&cluster.brokers, &topic, 0, &later);
    let got = wait_received(&received, 2);
    assert_eq!(
        states(&got),
        [
            ("203.0.113.7".into(), "firing".into()),
            ("203.0.113.7".into(), "resolved".into())
        ]
    );
    let (_, metrics) = http_get(svc.addr, "/metrics").expect("metrics");
    assert!(
        metrics.contains("ipstats_alert_transitions_total{rule=\"hot-ip\",state=\"firing\"} 0"),
        "no firing in the second run: {metrics}"
    );
    assert_eq!(states(&transitions(svc.addr)), states(&got));
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_receiver_down_for_a_minute_gets_what_the_queue_held_and_the_overflow_is_counted() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let Some(cluster) = cluster() else { return };
    let dir = std::env::temp_dir().join(unique("down-alerts"));
    std::fs::create_dir_all(&dir).expect("dir");
    // Nothing listens here until the outage ends.
    let port = common::free_port();
    let hook_url = format!("http://127.0.0.1:{port}/hook");
    let topic = common::create_topic(&cluster, "down-alerts", 1);
    let t0 = SystemTime::now() - Duration::from_secs(2);
    // Eight keys over the threshold, then the data moves on: 8 firing and
    // 8 resolved transitions, with a queue of 4.
    let mut lines = Vec::new();
    for i in 1..=8 {
        lines.extend((0..100).map(|_| json_line(&format!("203.0.113.{i}"), t0)));
    }
    common::kcat_produce(&cluster.brokers, &topic, 0, &lines);
    let down_since = std::time::Instant::now();
    let svc = serve(
        &cluster,
        &topic,
        &dir,
        &["--alert-webhook", &hook_url, "--alert-queue", "4"],
    );
    wait_for("8 firing", WAIT, || match transitions(svc.addr).len() {
        8 => Ok(()),
        n => Err(n.to_string()),
    });
    let later = vec![json_line("198.51.100.1", t0 + Duration::from_secs(5))];
    common::kcat_produce(&cluster.brokers, &topic, 0, &later);
    wait_for("16 transitions", WAIT, || {
        match transitions(svc.addr).len() {
            16 => Ok(()),
            n => Err(n.to_string()),
        }
    });
    let dropped = "ipstats_alert_deliveries_total{result=\"dropped\",target=\"webhook\"}";
    // One in the sender's hands, four queued: eleven dropped, counted.
    assert_eq!(common::metric(svc.addr, dropped), Some(11.0));
    // The outage itself lasts its minute (the scenario, not a wait for state).
    std::thread::sleep(OUTAGE.saturating_sub(down_since.elapsed()));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("the receiver's port");
    let (_, received) = receive_on(listener, 0);
    let got = wait_received(&received, 5);
    let recorded = transitions(svc.addr);
    let ids = |list: &[Value]| -> Vec<Value> { list.iter().map(|t| t["id"].clone()).collect() };
    // Whatever the queue held, once each and in the order recorded: the
    // first four always (the queue's bound), then one more.
    let got_ids = ids(&got);
    let in_order: Vec<Value> = ids(&recorded)
        .into_iter()
        .filter(|id| got_ids.contains(id))
        .collect();
    assert_eq!(got_ids, in_order, "in order, once each");
    assert_eq!(
        got_ids[..4],
        ids(&recorded[..4]),
        "nothing within the bound lost"
    );
    let ok = "ipstats_alert_deliveries_total{result=\"ok\",target=\"webhook\"}";
    wait_for("five delivered", WAIT, || {
        match common::metric(svc.addr, ok) {
            Some(5.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(common::metric(svc.addr, dropped), Some(11.0));
    assert_eq!(received.lock().expect("lock").len(), 5, "nothing more");
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
}
