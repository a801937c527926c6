//! The binary's command-line contract: bad settings exit 64 naming the setting.

use std::process::Command;

/// `ipstats count ARGS FILE` on `log`, written to a temporary file; it must
/// succeed. The JSON printed, and standard error.
fn count(args: &[&str], log: &[u8]) -> (serde_json::Value, String) {
    let path = std::env::temp_dir().join(format!(
        "ipstats-count-{}-{}.log",
        std::process::id(),
        log.len()
    ));
    std::fs::write(&path, log).expect("write log");
    let output = Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .arg("count")
        .args(args)
        .arg(&path)
        .output()
        .expect("run ipstats count");
    std::fs::remove_file(&path).expect("cleanup");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let top = serde_json::from_slice(&output.stdout).expect("json");
    (top, stderr)
}

fn ipstats(args: &[&str]) -> (Option<i32>, String) {
    ipstats_env(args, &[])
}

#[test]
fn window_not_a_multiple_of_batch_exits_64_naming_the_window() {
    let (code, stderr) = ipstats(&["--batch", "2s", "--window", "7s"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--window") && stderr.contains("multiple"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn unparseable_values_exit_64_too() {
    for (args, setting) in [
        (&["--listen", "not-an-address"][..], "--listen"),
        (&["--batch", "soon"], "--batch"),
        (&["--offset-reset", "newest"], "--offset-reset"),
        (&["serve", "--topics", "a b"], "--topics"),
        (
            &[
                "legacy", "zk:2181", "b:9092", "t", "g", "/tmp/x", "5", "7", "5",
            ],
            "--window",
        ),
        (&["legacy", "too", "few"], "required"),
    ] {
        let (code, stderr) = ipstats(args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(setting), "{args:?}: {stderr}");
    }
}

#[test]
fn environment_variables_are_settings_too() {
    let output = Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .env("IPSTATS_WINDOW", "7s")
        .env("IPSTATS_BATCH", "2s")
        .output()
        .expect("run ipstats");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--window"));
}

#[test]
fn help_exits_0() {
    let (code, _) = ipstats(&["--help"]);
    assert_eq!(code, Some(0));
}

#[test]
fn count_prints_the_top_of_a_file_like_the_api() {
    let path = std::env::temp_dir().join(format!("ipstats-count-{}.log", std::process::id()));
    std::fs::write(
        &path,
        "{\"client_real_ip\":\"10.0.0.2\"}\n{\"client_real_ip\":\"10.0.0.1\"}\n{\"client_real_ip\":\"10.0.0.2\"}\nnot json\n",
    )
    .expect("write log");
    let output = Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args(["count", "-n", "1"])
        .arg(&path)
        .output()
        .expect("run ipstats count");
    assert!(output.status.success());
    let top: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(top["total_requests"], 3);
    assert_eq!(top["distinct_ips"], 2);
    assert_eq!(
        top["top"],
        serde_json::json!([{"ip": "10.0.0.2", "count": 2}])
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("not_json 1"));
    let (code, stderr) = ipstats(&["count", "-n", "0", "-"]);
    assert_eq!(code, Some(64), "{stderr}");
    let (code, stderr) = ipstats(&["count", "/no/such/file"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("/no/such/file"), "{stderr}");
    std::fs::remove_file(&path).expect("cleanup");
}

fn ipstats_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args(args)
        .env_remove("IPSTATS_BROKERS")
        .envs(env.iter().copied())
        .output()
        .expect("run ipstats");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn missing_positional_arguments_are_named() {
    let (code, stderr) = ipstats(&["legacy", "zk:2181", "b:9092"]);
    assert_eq!(code, Some(64), "{stderr}");
    for name in ["<topics>", "<groupId>", "<slideSeconds>"] {
        assert!(stderr.contains(name), "{name} in {stderr}");
    }
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn values_that_parse_but_make_no_sense_exit_64() {
    for (args, setting) in [
        (&["--group", ".."][..], "--group"),
        (&["--group", "."], "--group"),
        (&["--checkpoint-interval", "100y"], "--checkpoint-interval"),
        (
            &["produce", "--brokers", "k:9092", "--zipf", "NaN"],
            "--zipf",
        ),
        (&["produce", "--brokers", "k:9092", "--zipf=-1"], "--zipf"),
        (
            &["produce", "--brokers", "k:9092", "--partitions", "0"],
            "--partitions",
        ),
        (
            &["produce", "--brokers", "k:9092", "--malformed-ratio", "2"],
            "--malformed-ratio",
        ),
        (
            &["produce", "--brokers", "k:9092", "--topic", "a b"],
            "--topic",
        ),
        (
            &["produce", "--brokers", "k:9092", "--time-rate", "0"],
            "--time-rate",
        ),
        (&["--ip-field", "source..ip"], "--ip-field"),
        (&["--envelope", ""], "--envelope"),
        (&["count", "--envelope", "a.", "-"], "--envelope"),
        (&["--trusted-proxies", "10.0.0.1/8"], "--trusted-proxies"),
        (&["--memory-limit", "lots"], "--memory-limit"),
        (
            &["--bouncer-keys-file", "/nonexistent/keys"],
            "--bouncer-keys-file",
        ),
        (&["--cluster"], "--cluster"),
        (&["--peers", "http://a:1"], "--peers"),
        (
            &[
                "--cluster",
                "--brokers",
                "k:9092",
                "--time-source",
                "arrival",
            ],
            "arrival",
        ),
        (
            &[
                "--memory-limit",
                "1MiB",
                "--retention",
                "1h",
                "--batch",
                "100ms",
            ],
            "the counting state can run in with 36000 kept panes",
        ),
        (
            &["count", "--trusted-proxies", "proxy", "-"],
            "--trusted-proxies",
        ),
        (
            &[
                "produce",
                "--brokers",
                "k:9092",
                "--start-time",
                "yesterday",
            ],
            "--start-time",
        ),
    ] {
        let (code, stderr) = ipstats(args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(setting), "{args:?}: {stderr}");
    }
}

#[test]
fn environment_booleans_and_several_kafka_properties_are_read() {
    // 1 is true: the run gets as far as the next setting's check.
    let (code, stderr) = ipstats_env(
        &["--batch", "2s", "--window", "7s"],
        &[("IPSTATS_RESET_CHECKPOINT", "1")],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--window"), "{stderr}");
    // One property per line: the second is read as its own, and refused.
    let (code, stderr) = ipstats_env(
        &[],
        &[("IPSTATS_KAFKA_CONFIG", "client.rack=r1\ngroup.id=other")],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("group.id cannot be set here"), "{stderr}");
}

#[test]
fn legacy_refuses_an_option_that_repeats_one_of_its_arguments() {
    let legacy = [
        "legacy", "zk:2181", "b:9092", "t", "g", "/tmp/x", "5", "20", "5",
    ];
    for (flag, value, argument) in [
        ("--brokers", "other:9092", "<brokers>"),
        ("--window", "40s", "<windowSeconds>"),
        ("--checkpoint-dir", "/tmp/y", "<checkpointDirectory>"),
    ] {
        let mut args = legacy.to_vec();
        args.extend([flag, value]);
        let (code, stderr) = ipstats(&args);
        assert_eq!(code, Some(64), "{stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(argument),
            "{stderr}"
        );
    }
    // Options the arguments do not set are taken, from the flags or the
    // environment: the first bad one is named.
    let mut args = legacy.to_vec();
    args.extend(["--max-rate-per-partition", "ten"]);
    let (code, stderr) = ipstats(&args);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--max-rate-per-partition"), "{stderr}");
    let (code, stderr) = ipstats_env(&legacy, &[("IPSTATS_LISTEN", "nowhere")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
    let (code, stderr) = ipstats(&[
        "legacy", "zk:2181", "b:9092", "t", "g", "/tmp/x", "0", "20", "5",
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("<batchSeconds>"), "{stderr}");
}

#[test]
fn sasl_without_credentials_exits_64_naming_the_option_and_the_property() {
    for args in [
        &["--brokers", "127.0.0.1:1"][..],
        &["produce", "--brokers", "127.0.0.1:1"],
        &[
            "legacy",
            "zk:2181",
            "127.0.0.1:1",
            "t",
            "g",
            "/tmp/x",
            "5",
            "20",
            "5",
        ],
    ] {
        let (code, stderr) = ipstats_env(
            args,
            &[(
                "IPSTATS_KAFKA_CONFIG",
                "security.protocol=SASL_PLAINTEXT\nsasl.mechanisms=PLAIN",
            )],
        );
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--kafka-config") && stderr.contains("sasl.username"),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn a_busy_listen_port_is_the_first_error_before_the_demo_broker_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args(["--listen", &addr])
        .env_remove("IPSTATS_BROKERS")
        .env("IPSTATS_LOG", "info")
        .output()
        .expect("run ipstats");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (--listen)")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("DEMO MODE"),
        "the demo broker never started: {stderr}"
    );
}

/// One option as `--help` describes it: its block of text, env and default.
#[derive(Debug, Default)]
struct HelpOption {
    text: String,
    env: Option<String>,
    default: Option<String>,
}

/// `ipstats <command> --help`, option by option (the long flag is the key).
fn help_options(command: &str) -> std::collections::BTreeMap<String, HelpOption> {
    let (code, _) = ipstats(&[command, "--help"]);
    assert_eq!(code, Some(0));
    let output = Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args([command, "--help"])
        .output()
        .expect("run ipstats --help");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    // Long help puts the text under the flag, short help beside it.
    let mut options = std::collections::BTreeMap::<String, HelpOption>::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let flag = trimmed
            .split([' ', ','])
            .find(|w| w.starts_with("--"))
            .filter(|_| (2..=6).contains(&indent) && trimmed.starts_with('-'));
        let rest = match flag {
            Some(flag) => {
                current = Some(flag.to_string());
                options.insert(flag.to_string(), HelpOption::default());
                // Past the flag and its <VALUE>.
                let after = &trimmed[trimmed.find(flag).unwrap_or(0) + flag.len()..];
                let after = after.trim_start();
                match after.strip_prefix('<') {
                    Some(value) => value.split_once('>').map_or("", |(_, r)| r),
                    None => after,
                }
            }
            None => trimmed,
        };
        if let Some(option) = current.as_ref().and_then(|f| options.get_mut(f)) {
            option.text.push_str(rest.trim());
            option.text.push(' ');
        }
    }
    for option in options.values_mut() {
        let bracket = |key: &str| {
            let start = option.text.find(key)? + key.len();
            let end = option.text[start..].find(']')? + start;
            Some(option.text[start..end].to_string())
        };
        option.env = bracket("[env: ").map(|e| e.trim_end_matches('=').to_string());
        option.default = bracket("[default: ");
        if let Some(cut) = option.text.find(" [env: ").or(option.text.find("[env: ")) {
            option.text.truncate(cut);
        }
        if let Some(cut) = option.text.find("[default: ") {
            option.text.truncate(cut);
        }
    }
    options.remove("--help");
    options.remove("--version");
    options
}

/// The README's option table under `heading`: flag → (env cell, default
/// cell, meaning cell).
fn readme_options(heading: &str) -> std::collections::BTreeMap<String, (String, String, String)> {
    let readme = include_str!("../README.md");
    let section = readme
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    section
        .lines()
        .skip_while(|l| !l.starts_with("| option"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let row = row.replace("\\|", "/");
            let cells: Vec<String> = row.split('|').map(|c| c.trim().to_string()).collect();
            let flag = cells[1]
                .trim_matches('`')
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .expect("a long flag")
                .to_string();
            (flag, (cells[2].clone(), cells[3].clone(), cells[4].clone()))
        })
        .collect()
}

#[test]
fn the_readme_option_tables_say_what_help_says() {
    for (command, heading) in [
        ("serve", "### `ipstats` / `ipstats serve`"),
        ("produce", "### `ipstats produce`"),
        ("count", "### `ipstats count"),
    ] {
        let help = help_options(command);
        let readme = readme_options(heading);
        assert!(help.len() >= 3, "{command}: {help:?}");
        assert_eq!(
            help.keys().collect::<Vec<_>>(),
            readme.keys().collect::<Vec<_>>(),
            "{command}: the same options"
        );
        for (flag, option) in &help {
            let (env, default, meaning) = &readme[flag];
            // The variable: clap's [env: …], or named in the help text.
            let readme_env = env.split('`').nth(1).unwrap_or_default();
            match &option.env {
                Some(name) => assert_eq!(readme_env, name, "{command} {flag}: env"),
                None if readme_env.is_empty() => {}
                None => assert!(
                    option.text.contains(readme_env),
                    "{command} {flag}: --help does not mention {readme_env}"
                ),
            }
            if let Some(value) = &option.default {
                assert!(
                    default.contains(&format!("`{value}`")),
                    "{command} {flag}: default {value:?}, README says {default:?}"
                );
            }
            // Every limit --help gives is in the README's row, and the other way.
            let limits = |text: &str| -> Vec<String> {
                text.split([' ', '(', ')', ';', ',', ':'])
                    .filter(|w| w.contains("..="))
                    .map(|w| w.trim_matches(['`', '.']).to_string())
                    .collect()
            };
            assert_eq!(
                limits(&option.text),
                limits(meaning),
                "{command} {flag}: limits"
            );
        }
    }
}

#[test]
fn count_reads_nested_fields_and_forwarded_lists_behind_trusted_proxies() {
    let (top, stderr) = count(
        &["--ip-field", "source.ip", "--trusted-proxies", "10.0.0.0/8"],
        concat!(
            "{\"source\":{\"ip\":\"203.0.113.7, 10.0.0.2\"}}\n",
            "{\"source\":{\"ip\":\"198.51.100.1, 203.0.113.7, 10.9.9.9\"}}\n",
            "{\"source\":{\"ip\":\"-\"}}\n",
            "{\"source\":{\"ip\":\"unknown, 10.0.0.2\"}}\n",
            "{\"source.ip\":\"192.0.2.1\"}\n",
        )
        .as_bytes(),
    );
    assert_eq!(
        top["top"],
        serde_json::json!([{"ip": "203.0.113.7", "count": 2}])
    );
    assert!(
        stderr.contains("missing_field 2") && stderr.contains("invalid_ip 1"),
        "{stderr}"
    );
}

#[test]
fn count_reads_common_and_combined_log_format() {
    let mut log = Vec::new();
    for line in [
        &br#"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8.5.0""#[..],
        b"203.0.113.7 - - [24/Nov/2026:06:35:14 +0000] \"GET /\\x22\xff HTTP/1.1\" 404 0 \"-\" \"Mozilla \xfe\\x22\"",
        br#"2001:db8::7 - frank [24/Nov/2026:06:35:15 +0000] "POST /login HTTP/1.0" 302 -"#,
        br#"- - - [24/Nov/2026:06:35:15 +0000] "GET / HTTP/1.1" 400 0 "-" "-""#,
        br#"crawler.example - - [24/Nov/2026:06:35:15 +0000] "GET / HTTP/1.1" 200 1 "-" "-""#,
        br#"{"client_real_ip":"10.0.0.1"}"#,
    ] {
        log.extend_from_slice(line);
        log.push(b'\n');
    }
    // Read as JSON, the same file is mostly text: the hint names the flag.
    let (_, stderr) = count(&[], &log);
    assert!(stderr.contains("run with --format clf"), "{stderr}");
    assert_eq!(stderr.matches("--format clf").count(), 1, "once: {stderr}");
    let (top, stderr) = count(&["--format", "clf"], &log);
    assert_eq!(
        top["top"],
        serde_json::json!([{"ip": "203.0.113.7", "count": 2}, {"ip": "2001:db8::7", "count": 1}])
    );
    for expected in [
        "missing_field 1",
        "invalid_ip 1",
        "bad_format 1",
        "1 lines held invalid UTF-8",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // One JSON line among CLF ones is skipped and counted; switching to
    // --format json would lose the rest, so it is not advised.
    assert!(!stderr.contains("run with --format json"), "{stderr}");
    // The window spans the log's own times, not the run's.
    assert_eq!(top["window"]["start"], "2026-11-24T06:35:13.000Z");
    assert_eq!(top["window"]["end"], "2026-11-24T06:35:15.000Z");
    assert_eq!(top["window"]["length_seconds"], 2.0);
}

#[test]
fn count_groups_addresses_into_networks() {
    let mut log = String::new();
    // 250 addresses of one /24, each once; 5,000 of one /64, each once; one busy address.
    for i in 0..250 {
        log.push_str(&format!("{{\"client_real_ip\":\"203.0.113.{i}\"}}\n"));
    }
    for i in 0..5000 {
        log.push_str(&format!("{{\"client_real_ip\":\"2001:db8:7:7::{i:x}\"}}\n"));
    }
    for _ in 0..100 {
        log.push_str("{\"client_real_ip\":\"198.51.100.1\"}\n");
    }
    let (by_address, _) = count(&["-n", "1"], log.as_bytes());
    assert_eq!(by_address["top"][0]["ip"], "198.51.100.1");
    let (v4, _) = count(&["-n", "1", "--prefix4", "24"], log.as_bytes());
    assert_eq!(v4["top"][0]["network"], "203.0.113.0/24", "{v4}");
    assert_eq!(v4["top"][0]["count"], 250);
    let (v6, stderr) = count(
        &["-n", "2", "--prefix6", "64", "--prefix4", "24"],
        log.as_bytes(),
    );
    assert_eq!(
        v6["top"][0],
        serde_json::json!({"network": "2001:db8:7:7::/64", "count": 5000, "distinct_ips": 5000}),
        "{stderr}"
    );
    assert_eq!(v6["distinct_networks"], 3);
    assert_eq!(v6["total_requests"], 5350);
}

#[test]
fn a_bad_rules_file_exits_64_naming_the_file_line_and_reason() {
    let path = std::env::temp_dir().join(format!("ipstats-rules-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[rule]]\nname = \"hot\"\nkey = \"ip\"\nwindow = \"90s\"\nrequests = 100\n",
    )
    .expect("rules");
    let file = path.to_str().expect("utf-8 path");
    let (code, stderr) = ipstats(&["--rules", file, "--window", "60s"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--rules") && stderr.contains(&format!("{file}:4: window must be")),
        "{stderr}"
    );
    assert!(
        stderr.contains("--retention (1m)"),
        "the limit is named: {stderr}"
    );
    let (code, stderr) = ipstats(&["--rules", "/nonexistent/rules.toml"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("cannot read the rules file"), "{stderr}");
    std::fs::remove_file(&path).expect("cleanup");
}
