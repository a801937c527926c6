//! The path an operator walks in the first week, on the real binary and the
//! real cluster: every documented metric is there from the first scrape,
//! `ipstats legacy` takes every serve option and environment variable.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{
    Service, Truth, cluster, get_json, http_get, produce_lines, unique, wait_all_counted, wait_for,
    window_counts,
};

const WAIT: Duration = Duration::from_secs(90);

/// One row of the README's metrics table: the name, whether it is per
/// partition, and the label values it enumerates.
struct Documented {
    name: String,
    per_partition: bool,
    values: Vec<(String, String)>,
}

/// The README's metrics table.
fn documented_metrics() -> Vec<Documented> {
    let readme = include_str!("../README.md");
    let table = readme
        .split("## Metrics")
        .nth(1)
        .expect("a Metrics section");
    let ticked = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = ticked(cells.get(1)?).into_iter().next()?;
            let labels = cells.get(3).copied().unwrap_or_default();
            let mut values = Vec::new();
            for part in labels.split(';').filter(|p| p.contains('=')) {
                let mut names = ticked(part).into_iter();
                let label = names.next()?;
                values.extend(names.map(|v| (label.clone(), v)));
            }
            Some(Documented {
                per_partition: labels.contains("`partition`"),
                name,
                values,
            })
        })
        .collect()
}

/// Series lines (not comments) of one scrape.
fn scrape(addr: SocketAddr) -> Vec<String> {
    let (code, text) = http_get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Whether a series of `name` (`prefix_*` for a family) with `label` exists.
fn has_series(lines: &[String], name: &str, label: Option<(&str, &str)>) -> bool {
    if let Some(prefix) = name.strip_suffix('*') {
        return lines.iter().any(|l| l.starts_with(prefix));
    }
    lines.iter().any(|l| {
        let Some(rest) = l.strip_prefix(name) else {
            return false;
        };
        let named = rest.starts_with(['{', ' ']) || rest.starts_with("_bucket");
        named && label.is_none_or(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
    })
}

#[test]
fn a_scrape_right_after_start_shows_every_documented_metric() {
    let Some(cluster) = cluster() else { return };
    let documented = documented_metrics();
    assert!(documented.len() >= 15, "the README's table was found");
    let topic = unique("metrics-at-start");
    let lines = produce_lines(&cluster, &topic, 400, 2, 91);
    let checkpoint = std::env::temp_dir().join(unique("ckpt"));
    let zookeeper = format!("{}/{}", cluster.zookeeper, unique("chroot"));
    // With a rule and both alert receivers, so that their series are
    // documented and present too (nothing fires: nothing is sent).
    let rules = std::env::temp_dir().join(unique("rules.toml"));
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"never\"\nkey = \"ip\"\nwindow = \"5s\"\nrequests = 1000000\n",
    )
    .expect("rules");
    let mut svc = Service::on_cluster(
        &cluster,
        Some(&zookeeper),
        &topic,
        &unique("group"),
        &checkpoint,
        &[
            "--rules",
            rules.to_str().expect("utf-8"),
            "--alert-webhook",
            "http://127.0.0.1:9/",
            "--alertmanager",
            "http://127.0.0.1:9/",
        ],
    );
    let addr = svc.addr;
    wait_for("the first answer", WAIT, || {
        match http_get(addr, "/healthz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let first = scrape(addr);
    for metric in documented.iter().filter(|m| !m.per_partition) {
        assert!(
            has_series(&first, &metric.name, None),
            "{} has no series in the first scrape:\n{}",
            metric.name,
            first.join("\n")
        );
        for (label, value) in &metric.values {
            assert!(
                has_series(&first, &metric.name, Some((label, value))),
                "{}{{{label}=\"{value}\"}} has no series in the first scrape",
                metric.name
            );
        }
    }

    // Once the partitions are assigned, every per-partition series exists.
    svc.wait_ready(WAIT);
    let assigned = scrape(addr);
    for metric in documented.iter().filter(|m| m.per_partition) {
        for partition in ["0", "1"] {
            assert!(
                has_series(&assigned, &metric.name, Some(("partition", partition))),
                "{}{{partition=\"{partition}\"}} is missing once assigned",
                metric.name
            );
        }
    }
    wait_all_counted(addr, lines.len() as u64, WAIT);
    assert_eq!(
        window_counts(addr),
        Truth::of(lines.iter().map(Vec::as_slice)).counts
    );
    lag_seconds_agree(addr, &topic);
    count_answers_as_the_api(addr, &lines);
}

/// The keys of a JSON text, in the order written.
fn keys_in_order(json: &str) -> Vec<&str> {
    json.split('"')
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[1].starts_with(':') && !w[0].is_empty())
        .map(|w| w[0])
        .collect()
}

/// `ipstats count` over the same lines prints what `/api/v1/top` answers:
/// the same keys in the same order, the same numbers.
fn count_answers_as_the_api(addr: SocketAddr, lines: &[Vec<u8>]) {
    let file = std::env::temp_dir().join(unique("count-input"));
    std::fs::write(&file, lines.join(&b'\n')).expect("write lines");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args(["count", "-n", "10"])
        .arg(&file)
        .output()
        .expect("run ipstats count");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    let (code, served) = http_get(addr, "/api/v1/top?n=10").expect("top");
    assert_eq!(code, 200);
    let keys = keys_in_order(&served);
    assert!(
        keys.starts_with(&["window", "start"]) && keys.contains(&"count"),
        "{keys:?}"
    );
    assert_eq!(keys_in_order(printed.trim()), keys);
    let (printed, served): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&printed).expect("json"),
        serde_json::from_str(&served).expect("json"),
    );
    for key in ["total_requests", "distinct_ips", "top"] {
        assert_eq!(printed[key], served[key], "{key}");
    }
    let _ = std::fs::remove_file(&file);
}

/// `/api/v1/offsets` and `ipstats_partition_lag_seconds` give one answer:
/// the same number, or null and NaN, never null and 0.
fn lag_seconds_agree(addr: SocketAddr, topic: &str) {
    wait_for(
        "the API and the metric to agree on lag seconds",
        WAIT,
        || {
            let api: BTreeMap<i64, Option<f64>> = get_json(addr, "/api/v1/offsets")["partitions"]
                .as_array()
                .expect("partitions")
                .iter()
                .map(|p| {
                    (
                        p["partition"].as_i64().unwrap_or(-1),
                        p["lag_seconds"].as_f64(),
                    )
                })
                .collect();
            let metric: BTreeMap<i64, Option<f64>> = (0..2)
                .map(|p| {
                    let series = format!(
                        "ipstats_partition_lag_seconds{{partition=\"{p}\",topic=\"{topic}\"}}"
                    );
                    let value = common::metric(addr, &series).expect("the series exists");
                    (p, (!value.is_nan()).then_some(value))
                })
                .collect();
            if api == metric {
                Ok(())
            } else {
                Err(format!("api {api:?}, metric {metric:?}"))
            }
        },
    );
}

#[test]
fn legacy_counts_from_secured_kafka_with_serve_options_and_the_environment() {
    let Some(cluster) = cluster() else { return };
    let sasl = cluster.sasl_brokers.clone().expect(
        "IPSTATS_TEST_SASL_BROKERS is not set: scripts/test.sh sets it from scripts/cluster.sh up",
    );
    let topic = unique("legacy-sasl");
    let lines = produce_lines(&cluster, &topic, 500, 1, 93);
    let checkpoint = std::env::temp_dir().join(unique("ckpt"));
    let zookeeper = format!("{}/{}", cluster.zookeeper, unique("chroot"));
    let group = unique("group");
    let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .expect("address");
    let legacy = |password: &str| {
        let args = [
            "legacy",
            &zookeeper,
            &sasl,
            &topic,
            &group,
            checkpoint.to_str().expect("utf-8 path"),
            "1",
            "60",
            "1",
            "--kafka-config",
            "security.protocol=SASL_PLAINTEXT",
            "--kafka-config",
            "sasl.mechanisms=PLAIN",
            "--max-rate-per-partition",
            "200",
        ];
        // The credentials and the listen address come from the environment.
        let credentials = format!("sasl.username=ipstats\nsasl.password={password}\n");
        let listen = addr.to_string();
        Service::spawn_exactly(
            None,
            addr,
            &args,
            &[
                ("IPSTATS_KAFKA_CONFIG", credentials.as_str()),
                ("IPSTATS_LISTEN", listen.as_str()),
            ],
        )
    };

    // A wrong password: never ready, and the log says why.
    let refused = legacy("wrong");
    wait_for("the authentication failure logged", WAIT, || {
        let log = refused.log_text();
        if log.contains("Authentication failed") {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert_eq!(
        http_get(addr, "/readyz").map(|(code, _)| code).ok(),
        Some(503)
    );
    wait_for("the status to show why", WAIT, || {
        let status = get_json(addr, "/api/v1/status");
        let error = status["kafka"]["last_error"].as_str().unwrap_or_default();
        if error.contains("Authentication") {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    assert!(refused.terminate(WAIT).success());

    let mut svc = legacy("ipstats-secret");
    svc.wait_ready(WAIT);
    // The rate cap holds throughout: at most 200 records per one-second batch.
    wait_for("every record counted under the rate cap", WAIT, || {
        let status = get_json(addr, "/api/v1/status");
        let (batches, consumed) = (
            status["batches"].as_u64().unwrap_or(0),
            status["records_consumed"].as_u64().unwrap_or(0),
        );
        assert!(consumed <= 200 * batches, "{status}");
        if consumed == lines.len() as u64 {
            Ok(())
        } else {
            Err(format!("{consumed} consumed in {batches} batches"))
        }
    });
    wait_all_counted(addr, lines.len() as u64, WAIT);
    assert_eq!(
        window_counts(addr),
        Truth::of(lines.iter().map(Vec::as_slice)).counts
    );
    assert_eq!(get_json(addr, "/api/v1/status")["group"], group.as_str());
}

#[test]
fn a_demo_stopped_at_any_point_of_its_start_leaves_no_directory_behind() {
    for moment in ["its directory exists", "it answers", "it is ready"] {
        let mut svc = Service::spawn(&[]);
        let addr = svc.addr;
        let dir = std::env::temp_dir().join(format!("ipstats-demo-{}", svc.child.id()));
        match moment {
            "its directory exists" => wait_for(moment, WAIT, || {
                if dir.exists() {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            }),
            "it answers" => wait_for(moment, WAIT, || match http_get(addr, "/healthz") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }),
            _ => svc.wait_ready(WAIT),
        }
        svc.signal("TERM");
        let status = svc.wait_exit(WAIT);
        assert!(status.success(), "{moment}: {status}\n{}", svc.log_text());
        assert!(!dir.exists(), "{moment}: {} is left behind", dir.display());
    }
}

#[test]
fn a_first_demo_run_warns_about_nothing_and_keeps_its_state_inside_the_checkpoint_dir() {
    let parent = std::env::temp_dir().join(unique("ipstats-demo-parent"));
    let parent_text = parent.display().to_string();
    let mut svc = Service::spawn(&["--checkpoint-dir", &parent_text]);
    let addr = svc.addr;
    let dir = parent.join(format!("ipstats-demo-{}", svc.child.id()));
    svc.wait_ready(WAIT);
    // Enough of the demo's traffic that its malformed share (CLF lines
    // among them) has been read many times over, and a checkpoint written.
    wait_for("20,000 demo records and a checkpoint", WAIT, || {
        let consumed = get_json(addr, "/api/v1/status")["records_consumed"]
            .as_u64()
            .unwrap_or(0);
        let checkpointed = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
        if consumed >= 20_000 && checkpointed {
            Ok(())
        } else {
            Err(format!(
                "{consumed} consumed, checkpoint written: {checkpointed}"
            ))
        }
    });
    for p in get_json(addr, "/api/v1/offsets")["partitions"]
        .as_array()
        .expect("partitions")
    {
        assert!(p["last_reset"].is_null(), "a first start is no reset: {p}");
        assert_eq!(p["start"]["from"], "offset_reset", "{p}");
    }
    let log = svc.log_text();
    // The one warning is the label that keeps a demo from passing for a
    // real run (no --brokers given by mistake).
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && !l.contains("DEMO MODE"))
        .collect();
    assert!(warnings.is_empty(), "a newcomer's first run: {warnings:#?}");
    assert_eq!(log.matches("first start").count(), 1, "said once: {log}");
    svc.signal("TERM");
    assert!(svc.wait_exit(WAIT).success(), "{}", svc.log_text());
    assert!(!dir.exists(), "{} is left behind", dir.display());
    let _ = std::fs::remove_dir_all(&parent);
}

/// `ipstats produce` with `extra` into a new topic; the lines it wrote.
fn produce_with(cluster: &common::Cluster, extra: &[&str]) -> Vec<u8> {
    let out = std::env::temp_dir().join(unique("produced"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args(["produce", "--brokers", &cluster.brokers, "--topic"])
        .arg(unique("reproducible"))
        .args([
            "--rate",
            "0",
            "--count",
            "2000",
            "--partitions",
            "1",
            "--out",
        ])
        .arg(&out)
        .args(extra)
        .output()
        .expect("run ipstats produce");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(&out).expect("--out");
    let _ = std::fs::remove_file(&out);
    bytes
}

#[test]
fn produce_with_a_seed_and_a_start_time_writes_the_same_bytes() {
    let Some(cluster) = cluster() else { return };
    let fixed = [
        "--seed",
        "7",
        "--start-time",
        "2026-11-24T06:00:00Z",
        "--time-rate",
        "100",
    ];
    let first = produce_with(&cluster, &fixed);
    let second = produce_with(&cluster, &fixed);
    assert_eq!(first.len(), second.len());
    assert!(first == second, "the same seed and start: the same bytes");
    let lines: Vec<&[u8]> = first.split(|&b| b == b'\n').collect();
    let time_of = |i: usize| {
        let line = String::from_utf8_lossy(lines[i]).into_owned();
        line.split("\"time_local\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string)
    };
    // Line i is stamped start + i / 100 s (malformed lines may lack the field).
    let stamped: Vec<_> = [0, 1000, 1999].iter().filter_map(|&i| time_of(i)).collect();
    assert!(
        stamped.iter().all(|t| t.starts_with("24/Nov/2026:06:00:")),
        "{stamped:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.windows(20).any(|w| w == b"24/Nov/2026:06:00:19")),
        "the last lines are 19 s after the start"
    );
    let later = produce_with(
        &cluster,
        &["--seed", "7", "--start-time", "2026-11-24T07:00:00Z"],
    );
    assert_ne!(first, later, "another start: other times");
}

#[test]
fn serve_counts_combined_log_format_lines_bare_and_in_a_shipper_envelope() {
    let Some(cluster) = cluster() else { return };
    let clf: Vec<String> = (0..300u32)
        .map(|i| {
            let client = if i % 3 == 0 {
                "2001:db8::7".to_string()
            } else {
                format!("203.0.113.{}", i % 7)
            };
            format!(
                "{client} - - [24/Nov/2026:06:35:13 +0000] \"GET /{i}\\x22 HTTP/1.1\" 200 612 \"-\" \"agent \u{e9} \\\"q\\\"\""
            )
        })
        .chain(["not a log line".to_string()])
        .collect();
    // Filebeat/Vector wrap each line in a JSON envelope.
    let wrapped: Vec<Vec<u8>> = clf
        .iter()
        .map(|l| {
            serde_json::json!({"@timestamp": "2026-11-24T06:35:13Z", "message": l})
                .to_string()
                .into_bytes()
        })
        .collect();
    let bare: Vec<Vec<u8>> = clf.iter().map(|l| l.clone().into_bytes()).collect();
    for (lines, extra) in [
        (bare, &["--format", "clf"][..]),
        (wrapped, &["--format", "clf", "--envelope", "message"]),
    ] {
        let topic = common::create_topic(&cluster, "lines", 1);
        common::kcat_produce(&cluster.brokers, &topic, 0, &lines);
        let checkpoint = std::env::temp_dir().join(unique("ckpt"));
        let mut svc =
            Service::on_cluster(&cluster, None, &topic, &unique("group"), &checkpoint, extra);
        svc.wait_ready(WAIT);
        wait_all_counted(svc.addr, lines.len() as u64, WAIT);
        let counts = window_counts(svc.addr);
        assert_eq!(counts.get("2001:db8::7"), Some(&100), "{extra:?}");
        assert_eq!(counts.values().sum::<u64>(), 300, "{extra:?}");
        assert_eq!(
            common::skipped_counts(svc.addr).get("bad_format"),
            Some(&1),
            "{extra:?}"
        );
    }
}
