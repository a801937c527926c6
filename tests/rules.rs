//! Rules on real-cluster traffic with a known truth: who fires, who never
//! does (allowed networks), the block list, the metrics, and SIGHUP; when
//! a key fires against an oracle run over the same lines (within one slide
//! of the crossing in event time, once per cooldown).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::{Cluster, Service, cluster, get_json, http_get, json_line, unique, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

const RULES: &str = r#"
[[rule]]
name = "hot-ip"
key = "ip"
window = "1m"
requests = 200
allow = ["192.0.2.0/24"]
block = true

[[rule]]
name = "busy-net"
key = "v4/24"
window = "1m"
share = 0.3
min_total = 100
severity = "critical"
"#;

/// ipstats (1 s batches and slides, a 1 min window) with `rules` in a
/// fresh directory: the service, the directory and the rules file.
fn serve(cluster: &Cluster, topic: &str, name: &str, rules: &str) -> (Service, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("rules.toml");
    std::fs::write(&file, rules).expect("rules");
    let flags = [
        "--batch", "1s", "--slide", "1s", "--window", "1m", "--rules",
    ];
    let mut args = flags.to_vec();
    args.push(file.to_str().expect("utf-8"));
    let mut svc =
        Service::on_cluster_exactly(cluster, topic, &unique(name), &dir.join("ckpt"), &args);
    svc.wait_ready(WAIT);
    (svc, dir, file)
}

fn firing(addr: SocketAddr) -> Vec<(String, String)> {
    let alerts = get_json(addr, "/api/v1/alerts");
    let mut firing: Vec<(String, String)> = alerts["firing"]
        .as_array()
        .expect("firing")
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap_or_default().to_string(),
                f["key"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    firing.sort();
    firing
}

#[test]
fn rules_flag_the_keys_over_their_thresholds_and_never_an_allowed_network() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "rules", 1);
    let now = SystemTime::now();
    let mut lines = Vec::new();
    // 203.0.113.7: 300 requests (over 200); 192.0.2.1: 400, but allowed;
    // 198.51.100.0/24: 250 addresses twice, 500 of 1,450 = 34 % (over 30 %);
    // 50 quiet clients, 5 each.
    lines.extend((0..300).map(|_| json_line("203.0.113.7", now)));
    lines.extend((0..400).map(|_| json_line("192.0.2.1", now)));
    for i in 1..=250 {
        lines.push(json_line(&format!("198.51.100.{i}"), now));
        lines.push(json_line(&format!("198.51.100.{i}"), now));
    }
    for i in 0..50 {
        lines.extend((0..5).map(|_| json_line(&format!("10.1.{i}.1"), now)));
    }
    common::kcat_produce(&cluster.brokers, &topic, 0, &lines);
    let (svc, dir, rules) = serve(&cluster, &topic, "rules", RULES);
    let addr = svc.addr;
    let expected = vec![
        ("busy-net".to_string(), "198.51.100.0/24".to_string()),
        ("hot-ip".to_string(), "203.0.113.7".to_string()),
    ];
    wait_for("the two keys firing", WAIT, || {
        let now = firing(addr);
        if now == expected {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    let alerts = get_json(addr, "/api/v1/alerts");
    let hot = alerts["firing"]
        .as_array()
        .expect("firing")
        .iter()
        .find(|f| f["rule"] == "hot-ip")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        (hot["value"].as_u64(), hot["threshold"].as_u64()),
        (Some(300), Some(200))
    );
    let transitions = alerts["transitions"].as_array().expect("transitions");
    assert_eq!(
        transitions.len(),
        2,
        "one firing transition each: {transitions:?}"
    );
    assert!(transitions.iter().all(|t| t["state"] == "firing"));
    let busy = transitions
        .iter()
        .find(|t| t["rule"] == "busy-net")
        .expect("busy-net");
    assert_eq!(busy["severity"], "critical");
    assert_eq!(busy["value"], 500);

    let (status, plain) = http_get(addr, "/api/v1/blocklist").expect("blocklist");
    assert_eq!(
        (status, plain.as_str()),
        (200, "203.0.113.7\n"),
        "only block rules"
    );
    let (_, metrics) = http_get(addr, "/metrics").expect("metrics");
    for series in [
        "ipstats_alerts_firing{rule=\"hot-ip\"} 1",
        "ipstats_alerts_firing{rule=\"busy-net\"} 1",
        "ipstats_alert_transitions_total{rule=\"hot-ip\",state=\"firing\"} 1",
        "ipstats_alert_transitions_total{rule=\"hot-ip\",state=\"resolved\"} 0",
    ] {
        assert!(metrics.contains(series), "{series}");
    }

    // SIGHUP with a broken file: the rules in force stay, and the log says why.
    std::fs::write(&rules, RULES.replace("requests = 200", "requests = -1")).expect("rules");
    svc.signal("HUP");
    wait_for("the refusal logged", WAIT, || {
        let log = svc.log_text();
        if log.contains("rules file was not reloaded") && log.contains("requests must be 1 or more")
        {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    assert_eq!(firing(addr), expected, "the old rules still run");
    // A good file: hot-ip now needs 500, so only busy-net fires.
    std::fs::write(&rules, RULES.replace("requests = 200", "requests = 500")).expect("rules");
    svc.signal("HUP");
    wait_for("the new rules in force", WAIT, || {
        let now = firing(addr);
        if now == expected[..1] {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    let (_, plain) = http_get(addr, "/api/v1/blocklist").expect("blocklist");
    assert_eq!(plain, "", "nothing blocked any more");
    // The changed rule's key resolved (receivers hear of it), once.
    let alerts = get_json(addr, "/api/v1/alerts");
    let resolved: Vec<&Value> = alerts["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["state"] == "resolved")
        .collect();
    assert_eq!(resolved.len(), 1, "{alerts}");
    assert_eq!(
        (&resolved[0]["rule"], &resolved[0]["key"]),
        (&Value::from("hot-ip"), &Value::from("203.0.113.7"))
    );
    svc.terminate(WAIT);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The transitions a `requests` rule on one address makes over per-second
/// counts (`per_second[s]` records in second `s`): at each slide end `e`
/// the window `[e - window, e)` is counted; a key fires at the first end
/// where it holds at least `requests` and was not resolved within
/// `cooldown`, and resolves at the first end below.
fn oracle(
    per_second: &[u64],
    window: usize,
    requests: u64,
    cooldown: usize,
) -> Vec<(usize, &'static str, u64)> {
    let mut out = Vec::new();
    let (mut firing, mut resolved_at) = (false, None::<usize>);
    for end in 1..=per_second.len() {
        let count: u64 = per_second[end.saturating_sub(window)..end].iter().sum();
        let cooling = resolved_at.is_some_and(|at| end - at < cooldown);
        if firing && count < requests {
            firing = false;
            resolved_at = Some(end);
            out.push((end, "resolved", count));
        } else if !firing && count >= requests && !cooling {
            firing = true;
            out.push((end, "firing", count));
        }
    }
    out
}

#[test]
fn a_rule_fires_at_the_slide_that_crosses_and_once_per_cooldown() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "rule-timing", 1);
    // Whole seconds, a minute ago: panes and slides fall on them.
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let t0 = std::time::UNIX_EPOCH + Duration::from_secs(now - 60);
    // 10 requests a second, with a pause from second 10 to 16.
    let per_second: Vec<u64> = (0..41)
        .map(|s| if (10..=16).contains(&s) { 0 } else { 10 })
        .collect();
    let mut lines = Vec::new();
    for (s, n) in per_second.iter().enumerate() {
        let at = t0 + Duration::from_millis(s as u64 * 1000 + 500);
        lines.extend((0..*n).map(|_| json_line("203.0.113.50", at)));
    }
    common::kcat_produce(&cluster.brokers, &topic, 0, &lines);
    let expected = oracle(&per_second, 5, 50, 20);
    assert_eq!(
        expected.len(),
        3,
        "fires, resolves, fires after the cooldown: {expected:?}"
    );

    let (svc, dir, _) = serve(
        &cluster,
        &topic,
        "rule-timing",
        "[[rule]]\nname = \"burst\"\nkey = \"ip\"\nwindow = \"5s\"\nrequests = 50\ncooldown = \"20s\"\n",
    );
    common::wait_all_counted(svc.addr, lines.len() as u64, WAIT);
    let seen = wait_for("the oracle's transitions", WAIT, || {
        let alerts = get_json(svc.addr, "/api/v1/alerts");
        let mut list = alerts["transitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        list.reverse();
        if list.len() >= expected.len() {
            Ok(list)
        } else {
            Err(format!("{list:?}"))
        }
    });
    let second = |text: &Value| -> usize {
        let t = humantime::parse_rfc3339(text.as_str().expect("time")).expect("rfc3339");
        t.duration_since(t0).expect("after t0").as_secs() as usize
    };
    let got: Vec<(usize, &str, u64)> = seen
        .iter()
        .map(|t| {
            (
                second(&t["at"]),
                t["state"].as_str().unwrap_or(""),
                t["value"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        got, expected,
        "at the crossing slide, once per cooldown: {seen:?}"
    );
    for t in &seen {
        assert_eq!(
            second(&t["window"]["end"]) - second(&t["window"]["start"]),
            5
        );
    }
    svc.terminate(WAIT);
    let _ = std::fs::remove_dir_all(&dir);
}
