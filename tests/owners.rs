//! Who is behind an address, on the real cluster: answers by autonomous
//! system and country against a from-scratch count (the current window and a
//! range of the kept history), a rule on an AS that many addresses cross
//! together while none does alone, and SIGHUP with a corrupt database (the
//! old one stays) and with a new one (new panes follow it, older panes keep
//! what they were told).
//!
//! The databases are written by `scripts/make-mmdb.py` (the test venv's
//! `mmdb-writer`), so every expected count is known.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Service, cluster, get_json, json_line, unique, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

/// Who is behind an address, as the test's databases say (`asn_of` maps
/// the rotating cloud's /16).
fn owner_of(ip: &str, cloud_asn: u64) -> (u64, &'static str) {
    if ip.starts_with("198.51.") {
        (cloud_asn, "DE")
    } else if ip.starts_with("203.0.113.") {
        (64500, "FR")
    } else if ip.starts_with("2001:db8:") {
        (64502, "NL")
    } else {
        (0, "--")
    }
}

/// One line: its second (since the epoch), its address, and the AS the
/// database in force when its pane closed names.
struct Line {
    second: u64,
    ip: String,
    asn: u64,
}

/// Traffic for seconds `from..to`: 40 cloud addresses once each (a new /24
/// every second, so no address and no /24 stands out), 7 requests of one
/// FR address, 3 of one NL address and 5 of an address no database knows.
fn traffic(from: u64, to: u64, cloud_asn: u64) -> Vec<Line> {
    let mut lines = Vec::new();
    for s in from..to {
        let mut add = |ip: String, times: u32| {
            for _ in 0..times {
                lines.push(Line {
                    second: s,
                    asn: owner_of(&ip, cloud_asn).0,
                    ip: ip.clone(),
                });
            }
        };
        for host in 1..=40 {
            add(format!("198.51.{}.{host}", s % 250), 1);
        }
        add(format!("203.0.113.{}", s % 5 + 1), 7);
        add(format!("2001:db8::{:x}", s % 3 + 1), 3);
        add("192.0.2.9".to_string(), 5);
    }
    lines
}

/// The from-scratch answer over `[start, end)` seconds, as `group=asn` and
/// `group=country` items ordered as ipstats orders them.
fn truth(lines: &[Line], start: u64, end: u64) -> (Vec<Value>, Vec<Value>) {
    let mut asns: BTreeMap<u64, (u64, BTreeSet<&str>)> = BTreeMap::new();
    let mut countries: BTreeMap<&str, (u64, BTreeSet<&str>)> = BTreeMap::new();
    for line in lines.iter().filter(|l| (start..end).contains(&l.second)) {
        let asn = asns.entry(line.asn).or_default();
        asn.0 += 1;
        asn.1.insert(&line.ip);
        let country = countries.entry(owner_of(&line.ip, 0).1).or_default();
        country.0 += 1;
        country.1.insert(&line.ip);
    }
    let org = |asn: u64| match asn {
        64500 => json!("EXAMPLE-NET"),
        64501 => json!("ROTATING-CLOUD"),
        64502 => json!("V6-NET"),
        64999 => json!("RENAMED-CLOUD"),
        _ => Value::Null,
    };
    let mut by_asn: Vec<(u64, u64, usize)> = asns
        .into_iter()
        .map(|(k, (c, d))| (k, c, d.len()))
        .collect();
    by_asn.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut by_country: Vec<(&str, u64, usize)> = countries
        .into_iter()
        .map(|(k, (c, d))| (k, c, d.len()))
        .collect();
    by_country.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    (
        by_asn
            .into_iter()
            .map(|(a, c, d)| json!({"asn": a, "org": org(a), "count": c, "distinct_ips": d}))
            .collect(),
        by_country
            .into_iter()
            .map(|(k, c, d)| json!({"country": k, "count": c, "distinct_ips": d}))
            .collect(),
    )
}

fn seconds(rfc3339: &Value) -> u64 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().expect("a time")).expect("RFC 3339");
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// The lines, round robin over `partitions` (one address's requests land
/// on every partition).
fn produce(cluster: &common::Cluster, topic: &str, partitions: i32, lines: &[Line]) {
    let encoded: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| json_line(&l.ip, UNIX_EPOCH + Duration::from_secs(l.second)))
        .collect();
    common::kcat_produce_spread(&cluster.brokers, topic, partitions, &encoded);
}

/// Until every line is counted and kept (the 120 s range holds them all).
fn wait_counted(addr: std::net::SocketAddr, lines: usize) {
    wait_for("every line counted and kept", WAIT, || {
        let all = get_json(addr, "/api/v1/top?n=1&window=120s");
        if all["total_requests"] == lines {
            Ok(())
        } else {
            Err(format!("{} of {lines}", all["total_requests"]))
        }
    });
}

/// Both groupings over `query` (a range or none) against the truth of
/// the range the answer names.
fn check_groupings(addr: std::net::SocketAddr, lines: &[Line], query: &str) {
    let asns = get_json(addr, &format!("/api/v1/top?group=asn&n=100{query}"));
    let (start, end) = (
        seconds(&asns["window"]["start"]),
        seconds(&asns["window"]["end"]),
    );
    let (want_asns, want_countries) = truth(lines, start, end);
    assert_eq!(asns["exact"], true, "{asns}");
    assert_eq!(
        asns["top"],
        Value::Array(want_asns.clone()),
        "{query}: {asns}"
    );
    assert_eq!(asns["distinct_owners"], want_asns.len());
    let countries = get_json(addr, &format!("/api/v1/top?group=country&n=100{query}"));
    assert_eq!(countries["window"], asns["window"]);
    assert_eq!(
        countries["top"],
        Value::Array(want_countries),
        "{query}: {countries}"
    );
}

/// The ASN database's networks (the rotating cloud is AS 64501).
const ASN_ENTRIES: [&str; 3] = [
    "198.51.0.0/16=64501:ROTATING-CLOUD",
    "203.0.113.0/24=64500:EXAMPLE-NET",
    "2001:db8::/32=64502:V6-NET",
];

/// In `dir`: both databases and `rules` as a rules file. Returns the
/// options that load them, after one-second panes in a 10 s window that
/// keeps 120 s.
fn prepared(dir: &Path, rules: &str) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("dir");
    let (asn_db, country_db) = (dir.join("asn.mmdb"), dir.join("country.mmdb"));
    common::write_mmdb("asn", &asn_db, &ASN_ENTRIES);
    common::write_mmdb(
        "country",
        &country_db,
        &["198.51.0.0/16=DE", "203.0.113.0/24=FR", "2001:db8::/32=NL"],
    );
    let rules_file = dir.join("rules.toml");
    std::fs::write(&rules_file, rules).expect("rules");
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    [
        "--batch",
        "1s",
        "--slide",
        "1s",
        "--window",
        "10s",
        "--retention",
        "120s",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([
        "--asn-db".to_string(),
        path(&asn_db),
        "--country-db".to_string(),
        path(&country_db),
        "--rules".to_string(),
        path(&rules_file),
    ])
    .collect()
}

/// Until the service's log holds `text` `times` times.
fn wait_logged(svc: &Service, text: &str, times: usize) {
    wait_for(text, WAIT, || {
        let seen = svc.log_text().matches(text).count();
        if seen >= times {
            Ok(())
        } else {
            Err(format!("logged {seen} of {times} times"))
        }
    });
}

/// Seconds since the epoch now.
fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("epoch")
        .as_secs()
}

#[test]
fn owners_answer_as_a_count_from_scratch_and_a_rule_catches_a_rotating_as() {
    let Some(cluster) = cluster() else { return };
    let topic = common::create_topic(&cluster, "owners", 2);
    let dir = std::env::temp_dir().join(unique("owners-ckpt"));
    let options = prepared(
        &dir,
        "[[rule]]\nname = \"cloud\"\nkey = \"asn\"\nwindow = \"10s\"\nrequests = 300\nblock = true\n\
         [[rule]]\nname = \"address\"\nkey = \"ip\"\nwindow = \"10s\"\nrequests = 60\n\
         [[rule]]\nname = \"subnet\"\nkey = \"v4/24\"\nwindow = \"10s\"\nrequests = 80\n",
    );
    let asn_db = dir.join("asn.mmdb");

    // Fifty seconds of log ending a minute ago.
    let first = now_s() - 110;
    let mut lines = traffic(first, first + 50, 64501);
    produce(&cluster, &topic, 2, &lines);
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let mut svc = Service::on_cluster_exactly(&cluster, &topic, &unique("owners"), &dir, &options);
    svc.wait_ready(WAIT);
    wait_counted(svc.addr, lines.len());

    // The current window, and a range of the kept history.
    check_groupings(svc.addr, &lines, "");
    let end = get_json(svc.addr, "/api/v1/top?n=1")["window"]["end"].clone();
    let end_s = seconds(&end);
    let back = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(end_s - 15));
    check_groupings(svc.addr, &lines, &format!("&window=30s&end={back}"));

    // One AS in full: 400 requests over 400 addresses a 10 s window, its
    // top /24 one second's 40.
    let cloud = get_json(svc.addr, "/api/v1/asns/AS64501?n=3&window=20s");
    let (start, stop) = (
        seconds(&cloud["window"]["start"]),
        seconds(&cloud["window"]["end"]),
    );
    let members: BTreeSet<&str> = lines
        .iter()
        .filter(|l| l.asn == 64501 && (start..stop).contains(&l.second))
        .map(|l| l.ip.as_str())
        .collect();
    assert_eq!(cloud["org"], "ROTATING-CLOUD");
    assert_eq!(cloud["count"], members.len(), "{cloud}");
    assert_eq!(cloud["distinct_ips"], members.len());
    assert_eq!(cloud["top"].as_array().expect("top").len(), 3);
    assert_eq!(cloud["networks"][0]["count"], 40, "{cloud}");
    assert_eq!(
        get_json(svc.addr, "/api/v1/asns/64500")["org"],
        "EXAMPLE-NET"
    );

    // The AS rule fires; no address and no /24 rule does.
    let alerts = wait_for("the AS rule firing", WAIT, || {
        let alerts = get_json(svc.addr, "/api/v1/alerts");
        let firing = alerts["firing"].as_array().cloned().unwrap_or_default();
        if firing.iter().any(|f| f["key"] == "AS64501") {
            Ok(alerts)
        } else {
            Err(alerts.to_string())
        }
    });
    for f in alerts["transitions"].as_array().expect("transitions") {
        assert_eq!(f["rule"], "cloud", "only the AS crosses: {f}");
    }
    let blocklist = get_json(svc.addr, "/api/v1/blocklist?format=json");
    assert!(
        blocklist.to_string().contains("AS64501"),
        "the JSON block list names the AS: {blocklist}"
    );
    let (_, nginx) =
        common::http_get(svc.addr, "/api/v1/blocklist?format=nginx").expect("nginx form");
    assert!(
        !nginx.contains("AS64501"),
        "no AS in the nginx form: {nginx}"
    );

    // A corrupt database on SIGHUP: refused, the old one stays in force.
    std::fs::write(&asn_db, b"\xab\xcd\xefMaxMind.com but nothing else").expect("corrupt");
    svc.signal("HUP");
    wait_logged(&svc, "the databases were not reloaded", 1);
    let more = traffic(first + 50, first + 60, 64501);
    produce(&cluster, &topic, 2, &more);
    lines.extend(more);
    wait_counted(svc.addr, lines.len());
    check_groupings(svc.addr, &lines, "");

    // A new database on SIGHUP: the panes that close from then on follow
    // it; the older ones keep what they were told.
    let renamed = ASN_ENTRIES.map(|e| e.replace("64501:ROTATING-CLOUD", "64999:RENAMED-CLOUD"));
    let renamed: Vec<&str> = renamed.iter().map(String::as_str).collect();
    common::write_mmdb("asn", &asn_db, &renamed);
    svc.signal("HUP");
    wait_logged(&svc, "SIGHUP: database reloaded", 2);
    let renamed = traffic(first + 60, first + 70, 64999);
    produce(&cluster, &topic, 2, &renamed);
    lines.extend(renamed);
    wait_counted(svc.addr, lines.len());
    check_groupings(svc.addr, &lines, "&window=30s");
    assert_eq!(svc.terminate(WAIT).code(), Some(0));
}

#[test]
fn a_bad_database_is_refused_at_start_naming_its_option() {
    let dir = std::env::temp_dir().join(unique("owners-bad"));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("country.mmdb");
    std::fs::write(&bad, b"this is no database").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args(["--country-db", bad.to_str().expect("utf-8")])
        .output()
        .expect("ipstats runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--country-db") && stderr.contains("country.mmdb"),
        "{stderr}"
    );
    // A rule by AS without the database is refused too.
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"cloud\"\nkey = \"asn\"\nwindow = \"10s\"\nrequests = 5\n",
    )
    .expect("rules");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args(["--rules", rules.to_str().expect("utf-8")])
        .output()
        .expect("ipstats runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--asn-db"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_instances_answer_by_owner_as_one() {
    let Some(cluster) = cluster() else { return };
    const PARTITIONS: i32 = 4;
    let topic = common::create_topic(&cluster, "owners-cluster", PARTITIONS as u32);
    let dir = std::env::temp_dir().join(unique("owners-cluster"));
    let options = prepared(
        &dir,
        "[[rule]]\nname = \"cloud\"\nkey = \"asn\"\nwindow = \"10s\"\nrequests = 300\nblock = true\n",
    );
    let first = now_s() - 60;
    let lines = traffic(first, first + 50, 64501);
    produce(&cluster, &topic, PARTITIONS, &lines);

    let group = unique("owners-cluster");
    let zookeeper = format!("{}/{}", cluster.zookeeper, unique("owners-zk"));
    let start = |id: &str| {
        let listen = format!("127.0.0.1:{}", common::free_port());
        let checkpoint = dir.join(id).to_str().expect("utf-8").to_string();
        let mut args = vec![
            "--brokers",
            &cluster.brokers,
            "--zookeeper",
            &zookeeper,
            "--topics",
            &topic,
            "--group",
            &group,
            "--checkpoint-dir",
            &checkpoint,
            "--listen",
            &listen,
            "--cluster",
            "--instance-id",
            id,
            "--kafka-config",
            "session.timeout.ms=6000",
            "--kafka-config",
            "heartbeat.interval.ms=1000",
        ];
        args.extend(options.iter().map(String::as_str));
        Service::spawn_exactly(None, listen.parse().expect("address"), &args, &[])
    };
    let (mut a, mut b) = (start("a"), start("b"));
    a.wait_ready(WAIT);
    b.wait_ready(WAIT);
    wait_for("both instances holding partitions", WAIT, || {
        let owned: Vec<f64> = [&a, &b]
            .iter()
            .map(|s| common::metric(s.addr, "ipstats_partitions_owned").unwrap_or(0.0))
            .collect();
        if owned.iter().all(|o| *o >= 1.0) && owned.iter().sum::<f64>() == f64::from(PARTITIONS) {
            Ok(())
        } else {
            Err(format!("owned {owned:?}"))
        }
    });
    // Every answer that says it is complete is the truth; wait for one from
    // each instance, for the current window and for a range.
    for (svc, query) in [(&a, ""), (&b, "&window=30s")] {
        wait_for("a complete answer by AS", WAIT, || {
            let asns = get_json(svc.addr, &format!("/api/v1/top?group=asn&n=100{query}"));
            let (start, end) = (
                seconds(&asns["window"]["start"]),
                seconds(&asns["window"]["end"]),
            );
            let (want, _) = truth(&lines, start, end);
            let complete = asns["cluster"]["complete"] == true;
            if complete {
                assert_eq!(asns["top"], Value::Array(want.clone()), "{asns}");
            }
            if complete
                && asns["total_requests"]
                    == want
                        .iter()
                        .map(|w| w["count"].as_u64().unwrap_or(0))
                        .sum::<u64>()
                && end > first + 49
            {
                Ok(())
            } else {
                Err(asns.to_string())
            }
        });
    }
    let local = get_json(a.addr, "/api/v1/top?group=asn&n=100&scope=local");
    assert_eq!(local["cluster"]["complete"], false, "a share: {local}");
    let cloud = wait_for("one AS over the cluster", WAIT, || {
        let cloud = get_json(b.addr, "/api/v1/asns/64501?n=2&window=20s");
        if cloud["cluster"]["complete"] == true {
            Ok(cloud)
        } else {
            Err(cloud.to_string())
        }
    });
    let (start, stop) = (
        seconds(&cloud["window"]["start"]),
        seconds(&cloud["window"]["end"]),
    );
    let members = lines
        .iter()
        .filter(|l| l.asn == 64501 && (start..stop).contains(&l.second))
        .count();
    assert_eq!(cloud["count"], members, "{cloud}");
    assert_eq!(cloud["distinct_ips"], members, "{cloud}");
    assert_eq!(cloud["networks"][0]["count"], 40, "{cloud}");
    // The rules leader counts the AS over both instances' shares.
    for svc in [&a, &b] {
        wait_for("the AS rule firing on the cluster", WAIT, || {
            let alerts = get_json(svc.addr, "/api/v1/alerts");
            if alerts.to_string().contains("AS64501") {
                Ok(())
            } else {
                Err(alerts.to_string())
            }
        });
    }
    assert_eq!(a.terminate(WAIT).code(), Some(0));
    assert_eq!(b.terminate(WAIT).code(), Some(0));
}
