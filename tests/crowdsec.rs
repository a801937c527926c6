//! Decisions for CrowdSec bouncers, on the real cluster and with a real
//! bouncer: Debian's `crowdsec-custom-bouncer` polls ipstats as it would
//! poll the CrowdSec Local API (its own config: `api_url` = ipstats,
//! `api_key`, `update_frequency: 1s`, `bin_path` = a script that records
//! what it is told).
//!
//! A firing `block` rule reaches the script as a ban, its resolution as a
//! removal; a rule with `ban` keeps its key banned past the resolution; a
//! network rule's key reaches it as a range. ipstats restarted meanwhile:
//! the bouncer, polling on, is told what changed, not everything again.
//! A wrong key gets 403 with the Local API's body. And Debian's
//! `crowdsec-firewall-bouncer` (nftables), in a network namespace of the
//! test's own, drops a banned address for real.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{Killed, Service, http_get, json_line, kcat_produce, unique, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const KEY: &str = "0123456789abcdef-bouncer-one";

const RULES: &str = r#"
[[rule]]
name = "hot-ip"
key = "ip"
window = "2s"
requests = 100
block = true

[[rule]]
name = "hot-net"
key = "v4/24"
window = "2s"
requests = 300
block = true

[[rule]]
name = "banned"
key = "ip"
window = "2s"
requests = 100
block = true
ban = "1h"
"#;

fn bouncer(dir: &Path, api: std::net::SocketAddr) -> (Killed, PathBuf) {
    let calls = dir.join("calls.txt");
    let script = dir.join("record.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    )
    .expect("script");
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    let config = dir.join("bouncer.yaml");
    std::fs::write(
        &config,
        format!(
            "bin_path: {}\nfeed_via_stdin: false\ntotal_retries: 0\nscenarios_containing: []\n\
             scenarios_not_containing: []\norigins: []\npiddir: {}/\nupdate_frequency: 1s\n\
             cache_retention_duration: 10s\ndaemonize: false\nlog_mode: stdout\nlog_dir: {}/\n\
             log_level: info\napi_url: http://{api}/\napi_key: {KEY}\nprometheus:\n  enabled: false\n  \
             listen_addr: 127.0.0.1\n  listen_port: 60602\n",
            script.display(),
            dir.display(),
            dir.display()
        ),
    )
    .expect("bouncer config");
    let log = std::fs::File::create(dir.join("bouncer.log")).expect("log");
    let child = Command::new("crowdsec-custom-bouncer")
        .arg("-c")
        .arg(&config)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("crowdsec-custom-bouncer (installed by scripts/setup.sh)");
    (Killed(child), calls)
}

/// The script's calls so far: `add|del VALUE DURATION_S SCENARIO JSON`.
fn calls(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let (what, value, _, scenario) =
                (words.next()?, words.next()?, words.next()?, words.next()?);
            Some((what.to_string(), value.to_string(), scenario.to_string()))
        })
        .collect()
}

fn count(calls: &[(String, String, String)], what: &str, value: &str, scenario: &str) -> usize {
    calls
        .iter()
        .filter(|c| c.0 == what && c.1 == value && c.2 == scenario)
        .count()
}

/// ipstats on `listen` with [`RULES`] and [`KEY`] (files written in `dir`,
/// state in `dir/ckpt`), ready.
fn serve(
    cluster: &common::Cluster,
    topic: &str,
    group: &str,
    dir: &Path,
    listen: std::net::SocketAddr,
) -> Service {
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, RULES).expect("rules");
    let keys = dir.join("bouncers.keys");
    std::fs::write(&keys, format!("# the bouncers\n{KEY}\n")).expect("keys");
    let (ckpt, listen_text) = (dir.join("ckpt"), listen.to_string());
    let args = [
        "--brokers",
        &cluster.brokers,
        "--topics",
        topic,
        "--group",
        group,
        "--checkpoint-dir",
        ckpt.to_str().expect("utf-8"),
        "--listen",
        &listen_text,
        "--batch",
        "1s",
        "--slide",
        "1s",
        "--window",
        "10s",
        "--rules",
        rules.to_str().expect("utf-8"),
        "--bouncer-keys-file",
        keys.to_str().expect("utf-8"),
    ];
    let mut svc = Service::spawn_exactly(None, listen, &args, &[]);
    svc.wait_ready(WAIT);
    svc
}

fn loopback() -> std::net::SocketAddr {
    format!("127.0.0.1:{}", common::free_port())
        .parse()
        .expect("address")
}

#[test]
fn a_real_bouncer_bans_unbans_keeps_a_ban_and_sees_ranges_across_a_restart() {
    let Some(cluster) = common::cluster() else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("crowdsec"));
    std::fs::create_dir_all(&dir).expect("dir");
    let topic = common::create_topic(&cluster, "crowdsec", 1);
    let group = unique("crowdsec-group");
    // 150 requests from one address, 320 from one /24 (no address of it
    // above 100 alone but the first): both rules fire.
    let t0 = SystemTime::now() - Duration::from_secs(2);
    let mut lines: Vec<Vec<u8>> = (0..150).map(|_| json_line("203.0.113.7", t0)).collect();
    lines.extend((0..320).map(|i| json_line(&format!("198.51.100.{}", i % 40 + 1), t0)));
    kcat_produce(&cluster.brokers, &topic, 0, &lines);
    let svc = serve(&cluster, &topic, &group, &dir, loopback());

    // The Local API's refusal, as bouncers read it.
    let refused = std::process::Command::new("curl")
        .args(["-s", "-H", "X-Api-Key: not-a-key-of-ours-at-all"])
        .arg(format!(
            "http://{}/v1/decisions/stream?startup=true",
            svc.addr
        ))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&refused.stdout),
        r#"{"message":"access forbidden"}"#
    );
    let (status, _) = http_get(svc.addr, "/v1/decisions").expect("no key");
    assert_eq!(status, 403);

    let (_bouncer, recorded) = bouncer(&dir, svc.addr);
    // One ban per value (the longest, as the Local API streams them).
    let added = |c: &[(String, String, String)]| {
        count(c, "add", "203.0.113.7", "ipstats/hot-ip")
            + count(c, "add", "203.0.113.7", "ipstats/banned")
    };
    wait_for("the bans to reach the bouncer's script", WAIT, || {
        let c = calls(&recorded);
        if added(&c) == 1 && count(&c, "add", "198.51.100.0/24", "ipstats/hot-net") == 1 {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });

    // ipstats restarts on the same address; the bouncer polls on without
    // startup and hears nothing twice.
    let addr = svc.addr;
    let (status, log) = svc.terminate_logged(WAIT);
    assert!(status.success(), "{log}");
    let svc = serve(&cluster, &topic, &group, &dir, addr);

    // The data moves on: both rules resolve; the banned key stays banned.
    let later: Vec<Vec<u8>> = (0..5)
        .map(|_| json_line("192.0.2.1", t0 + Duration::from_secs(5)))
        .collect();
    kcat_produce(&cluster.brokers, &topic, 0, &later);
    wait_for(
        "the range's removal to reach the bouncer's script",
        WAIT,
        || {
            let c = calls(&recorded);
            if count(&c, "del", "198.51.100.0/24", "ipstats/hot-net") == 1 {
                Ok(())
            } else {
                Err(format!("{c:?}"))
            }
        },
    );
    // The ban outlives its rule: listed alone, with most of its hour left.
    let listed = wait_for("only the ban to hold the address", WAIT, || {
        let listed = std::process::Command::new("curl")
            .args(["-s", "-H", &format!("X-Api-Key: {KEY}")])
            .arg(format!("http://{addr}/v1/decisions?ip=203.0.113.7"))
            .output()
            .map_err(|e| e.to_string())?;
        let listed: Value = serde_json::from_slice(&listed.stdout).map_err(|e| e.to_string())?;
        match listed.as_array() {
            Some(list) if list.len() == 1 => Ok(list.clone()),
            _ => Err(listed.to_string()),
        }
    });
    assert_eq!(listed[0]["scenario"], "ipstats/banned");
    assert_eq!(listed[0]["scope"], "Ip");
    assert!(
        listed[0]["duration"]
            .as_str()
            .is_some_and(|d| d.starts_with("59m")),
        "{listed:?}"
    );
    // Nothing told twice across the restart; the banned address never removed.
    let c = calls(&recorded);
    assert_eq!(
        count(&c, "add", "198.51.100.0/24", "ipstats/hot-net"),
        1,
        "{c:?}"
    );
    assert_eq!(added(&c), 1, "{c:?}");
    assert!(
        !c.iter()
            .any(|(what, value, _)| what == "del" && value == "203.0.113.7"),
        "{c:?}"
    );
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A network namespace of the test's own, joined to this one by a veth
/// pair: what the firewall bouncer programs there touches nothing else.
/// Removed (with its end of the pair) when dropped.
struct Namespace {
    name: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip");
    assert!(
        status.success(),
        "ip {args:?} failed (root and network namespaces are needed)"
    );
}

impl Namespace {
    /// The namespace, `10.231.N.2` inside and `10.231.N.1` here.
    fn new(n: u8) -> Namespace {
        let name = format!("ipstats-fw-{}", std::process::id());
        let (here, there) = (format!("ipfw{n}a"), format!("ipfw{n}b"));
        ip(&["netns", "add", &name]);
        let ns = Namespace { name };
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
        ip(&["link", "set", &there, "netns", &ns.name]);
        ip(&["addr", "add", &format!("10.231.{n}.1/30"), "dev", &here]);
        ip(&["link", "set", &here, "up"]);
        ns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("10.231.{n}.2/30"),
            "dev",
            &there,
        ]);
        ns.exec_ok(&["ip", "link", "set", &there, "up"]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    fn exec_ok(&self, args: &[&str]) {
        let status = self.command(args).status().expect("ip netns exec");
        assert!(status.success(), "{args:?} in the namespace failed");
    }

    /// `curl` from `source` inside the namespace: the HTTP status, or 0
    /// when nothing answered within 2 s.
    fn curl_from(&self, source: &str, url: &str) -> u16 {
        let out = self
            .command(&[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "--interface",
                source,
                url,
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn the_firewall_bouncer_drops_a_banned_address_in_a_namespace_of_its_own() {
    let Some(cluster) = common::cluster() else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("crowdsec-fw"));
    std::fs::create_dir_all(&dir).expect("dir");
    let ns = Namespace::new((std::process::id() % 200) as u8);
    let n = (std::process::id() % 200) as u8;
    // A web server inside, reached from an address about to be banned.
    ns.exec_ok(&["ip", "addr", "add", "203.0.113.7/32", "dev", "lo"]);
    let port = common::free_port();
    let _server = Killed(
        ns.command(&[
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a web server in the namespace"),
    );
    let site = format!("http://127.0.0.1:{port}/");
    wait_for("the web server in the namespace", WAIT, || {
        match ns.curl_from("203.0.113.7", &site) {
            200 => Ok(()),
            other => Err(format!("{other}")),
        }
    });

    // ipstats, reachable from the namespace over the veth pair.
    let topic = common::create_topic(&cluster, "crowdsec-fw", 1);
    let listen = format!("10.231.{n}.1:{}", common::free_port());
    let group = unique("crowdsec-fw-group");
    let svc = serve(
        &cluster,
        &topic,
        &group,
        &dir,
        listen.parse().expect("address"),
    );

    let config = dir.join("firewall-bouncer.yaml");
    std::fs::write(
        &config,
        format!(
            "mode: nftables\npid_dir: {d}/\nupdate_frequency: 1s\ndaemonize: false\nlog_mode: stdout\n\
             log_dir: {d}/\nlog_level: info\napi_url: http://{listen}/\napi_key: {KEY}\n\
             insecure_skip_verify: false\ndisable_ipv6: false\ndeny_action: DROP\ndeny_log: false\n\
             supported_decisions_types:\n  - ban\nblacklists_ipv4: crowdsec-blacklists\n\
             blacklists_ipv6: crowdsec6-blacklists\nipset_type: nethash\niptables_chains:\n  - INPUT\n\
             nftables:\n  ipv4:\n    enabled: true\n    set-only: false\n    table: crowdsec\n    \
             chain: crowdsec-chain\n  ipv6:\n    enabled: true\n    set-only: false\n    table: crowdsec6\n    \
             chain: crowdsec6-chain\nprometheus:\n  enabled: false\n  listen_addr: 127.0.0.1\n  listen_port: 60601\n",
            d = dir.display()
        ),
    )
    .expect("firewall bouncer config");
    let log = std::fs::File::create(dir.join("firewall-bouncer.log")).expect("log");
    let _bouncer = Killed(
        ns.command(&[
            "crowdsec-firewall-bouncer",
            "-c",
            config.to_str().expect("utf-8"),
        ])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("crowdsec-firewall-bouncer (installed by scripts/setup.sh)"),
    );

    // 150 requests from 203.0.113.7: the rule fires, the bouncer bans it.
    let t0 = SystemTime::now() - Duration::from_secs(2);
    let lines: Vec<Vec<u8>> = (0..150).map(|_| json_line("203.0.113.7", t0)).collect();
    kcat_produce(&cluster.brokers, &topic, 0, &lines);
    wait_for(
        "the banned address to be dropped by nftables",
        WAIT,
        || match ns.curl_from("203.0.113.7", &site) {
            0 => Ok(()),
            other => Err(format!("still answered {other}")),
        },
    );
    // Only that address: the server still answers the others.
    assert_eq!(ns.curl_from("127.0.0.1", &site), 200);
    let ruleset = ns
        .command(&["nft", "list", "ruleset"])
        .output()
        .expect("nft");
    let ruleset = String::from_utf8_lossy(&ruleset.stdout);
    assert!(ruleset.contains("203.0.113.7"), "{ruleset}");
    let _ = svc.terminate(WAIT);
    let _ = std::fs::remove_dir_all(&dir);
}
