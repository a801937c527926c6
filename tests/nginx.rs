//! Real nginx writes the logs: a private nginx 1.22 on a loopback port (its
//! own prefix, `daemon off`, realip from X-Forwarded-For) answers hostile
//! requests whose count per client is known — raw invalid UTF-8 in the path,
//! User-Agent and Referer, multi-byte text, quotes, backslashes, control
//! bytes, 8 KB user agents, log-injection attempts, HEAD/POST/404 — and logs
//! them as `escape=json` JSON and as the default `combined` text. Every
//! request nginx answered must be counted exactly once under its address, by
//! `ipstats count` and by the service reading a real Kafka topic, bare and in
//! a shipper's `message` envelope. And the loop back: nginx enforcing the
//! block list ipstats writes from those logs.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    Service, cluster, get_json, top_counts, unique, wait_all_counted, wait_for, window_counts,
};

const WAIT: Duration = Duration::from_secs(90);

/// The nginx binary: Debian's `nginx-light` (installed by scripts/setup.sh).
/// Under `CI=true` a missing nginx fails the test.
fn nginx_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true but nginx is not installed: run scripts/setup.sh"
        );
        eprintln!("NOT RUN: nginx is not installed (scripts/setup.sh installs nginx-light)");
    }
    found
}

/// A private nginx: everything under `dir`, killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// The JSON format an operator sets up for ipstats (README, "Consuming real
/// logs"), with the address three ways: flat, nested (ECS `source.ip`) and
/// the X-Forwarded-For header as sent.
const JSON_FORMAT: &str = r#"'{"time_local":"$time_local","client_real_ip":"$remote_addr","source":{"ip":"$remote_addr"},"forwarded":"$http_x_forwarded_for","request":"$request","status":$status,"body_bytes_sent":$body_bytes_sent,"http_referer":"$http_referer","http_user_agent":"$http_user_agent"}'"#;

impl Nginx {
    fn start(binary: &Path) -> Nginx {
        Nginx::start_with(binary, false)
    }

    /// With `deny`: a master process (for `nginx -s reload`) and the server
    /// including `deny.conf` (empty at first).
    fn start_with(binary: &Path, deny: bool) -> Nginx {
        let dir = std::env::temp_dir().join(unique("nginx"));
        for sub in ["logs", "html", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx prefix");
        }
        std::fs::write(dir.join("html/index.html"), "ok\n").expect("index");
        std::fs::write(dir.join("deny.conf"), "").expect("deny.conf");
        let (master, include) = if deny {
            ("on", "include deny.conf;")
        } else {
            ("off", "")
        };
        let port = common::free_port();
        let conf = format!(
            "daemon off;
master_process {master};
worker_processes 1;
error_log logs/error.log warn;
pid nginx.pid;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    large_client_header_buffers 4 32k;
    set_real_ip_from 127.0.0.0/8;
    set_real_ip_from 10.0.0.0/8;
    real_ip_header X-Forwarded-For;
    real_ip_recursive on;
    log_format ipstats escape=json {JSON_FORMAT};
    access_log logs/access.json ipstats;
    access_log logs/access.log combined;
    server {{
        listen 127.0.0.1:{port};
        root html;
        {include}
    }}
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .args(["-c", "nginx.conf", "-e", "logs/error.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, port, dir };
        wait_for("nginx to listen", WAIT, || {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited {status}: {}", nginx.error_log());
            }
            TcpStream::connect(("127.0.0.1", nginx.port))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }

    /// One request on its own connection; the status nginx answered with.
    fn send(&self, request: &Request) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect nginx");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream.write_all(&request.bytes()).expect("send request");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read answer");
        let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line from nginx: {head:?}"))
    }

    /// The lines of `logs/NAME`, once it holds `expected` of them.
    fn log_lines(&self, name: &str, expected: usize) -> Vec<Vec<u8>> {
        let path = self.dir.join("logs").join(name);
        wait_for(&format!("{expected} lines in {name}"), WAIT, || {
            let text = std::fs::read(&path).map_err(|e| e.to_string())?;
            let lines: Vec<Vec<u8>> = text
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            if lines.len() == expected {
                Ok(lines)
            } else {
                Err(format!("{} lines", lines.len()))
            }
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw HTTP/1.1 request: any bytes in the path and header values.
struct Request {
    method: &'static str,
    path: Vec<u8>,
    forwarded: String,
    user_agent: Vec<u8>,
    referer: Option<Vec<u8>>,
    body: Vec<u8>,
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.path);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        out.extend_from_slice(format!("X-Forwarded-For: {}\r\n", self.forwarded).as_bytes());
        out.extend_from_slice(b"User-Agent: ");
        out.extend_from_slice(&self.user_agent);
        out.extend_from_slice(b"\r\n");
        if let Some(referer) = &self.referer {
            out.extend_from_slice(b"Referer: ");
            out.extend_from_slice(referer);
            out.extend_from_slice(b"\r\n");
        }
        if !self.body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// The `k`-th kind of request from `client`.
fn hostile(k: usize, client: IpAddr) -> Request {
    let plain = Request {
        method: "GET",
        path: b"/".to_vec(),
        forwarded: client.to_string(),
        user_agent: b"Mozilla/5.0 (X11; Linux x86_64)".to_vec(),
        referer: None,
        body: Vec::new(),
    };
    match k % 14 {
        0 => plain,
        // Invalid UTF-8 in the User-Agent: the line nginx writes is invalid too.
        1 => Request {
            user_agent: b"curl/8.0 \xff\xfe\x80 hidden".to_vec(),
            ..plain
        },
        2 => Request {
            referer: Some(b"http://example.com/\xc3\x28\xa0\xa1".to_vec()),
            ..plain
        },
        3 => Request {
            path: b"/caf\xe9/\xff\xfe?q=\x80".to_vec(),
            ..plain
        },
        // Valid multi-byte UTF-8.
        4 => Request {
            user_agent: "Mozilla 日本語 é ü 🦀".as_bytes().to_vec(),
            referer: Some("http://例え.テスト/パス".as_bytes().to_vec()),
            ..plain
        },
        5 => Request {
            path: br#"/q"uo\te\\"#.to_vec(),
            user_agent: br#"agent "quoted" \ back\slash \" \\"#.to_vec(),
            ..plain
        },
        // Control bytes (NUL, CR and LF end a header and are refused by nginx).
        6 => Request {
            user_agent: b"ctl \x01\x07\x08\x0b\x0c\x1b[31m\x1f\ttab \x7f".to_vec(),
            ..plain
        },
        // 8 KB user agents, one of them with raw high bytes.
        7 => Request {
            user_agent: "A".repeat(8 * 1024).into_bytes(),
            ..plain
        },
        8 => Request {
            user_agent: b"\xf0\x9f\xa6".repeat(3 * 1024),
            ..plain
        },
        9 => Request {
            method: "HEAD",
            ..plain
        },
        10 => Request {
            method: "POST",
            body: b"user=a&pass=\xff\"}".to_vec(),
            ..plain
        },
        11 => Request {
            path: b"/no/such/page".to_vec(),
            ..plain
        },
        // Log injection: another address inside quoted fields.
        12 => Request {
            user_agent: br#"x", "client_real_ip":"6.6.6.6", "y":""#.to_vec(),
            referer: Some(b"\" 6.6.6.6 - - [01/Jan/2026:00:00:00 +0000] \"GET".to_vec()),
            ..plain
        },
        // Behind a proxy of ours (10.0.0.0/8), after a spoofed address.
        _ => Request {
            forwarded: format!("198.51.100.250, {client}, 10.0.0.2"),
            ..plain
        },
    }
}

/// The clients and how many requests each sends.
fn clients() -> Vec<(IpAddr, u64)> {
    let mut out = Vec::new();
    for i in 0..36u64 {
        let ip: IpAddr = if i % 4 == 3 {
            format!("2001:db8:{}::{:x}", i % 3, i * 17).parse()
        } else {
            format!("203.0.{}.{}", 113 + i % 3, i * 5 + 1).parse()
        }
        .expect("address");
        out.push((ip, 14 + (i * 7) % 23));
    }
    out
}

/// Runs `ipstats count ARGS` on `lines`; (top, stderr).
fn count(args: &[&str], lines: &[Vec<u8>]) -> (serde_json::Value, String) {
    let path = std::env::temp_dir().join(format!("{}.log", unique("nginx-count")));
    let mut file = Vec::new();
    for line in lines {
        file.extend_from_slice(line);
        file.push(b'\n');
    }
    std::fs::write(&path, file).expect("write log");
    let output = Command::new(env!("CARGO_BIN_EXE_ipstats"))
        .args(["count", "-n", "100000"])
        .args(args)
        .arg(&path)
        .output()
        .expect("run ipstats count");
    std::fs::remove_file(&path).expect("cleanup");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{args:?}: {stderr}");
    (
        serde_json::from_slice(&output.stdout).expect("count prints JSON"),
        stderr,
    )
}

fn invalid_utf8(lines: &[Vec<u8>]) -> u64 {
    lines
        .iter()
        .filter(|l| std::str::from_utf8(l).is_err())
        .count() as u64
}

#[test]
fn every_request_real_nginx_answered_is_counted_once_under_its_address() {
    let Some(binary) = nginx_binary() else { return };
    let cluster = cluster();
    let nginx = Nginx::start(&binary);

    let mut truth: BTreeMap<String, u64> = BTreeMap::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut sent = 0usize;
    for (n, (client, requests)) in clients().into_iter().enumerate() {
        for j in 0..requests as usize {
            let status = nginx.send(&hostile(n + j, client));
            // 400 would mean nginx refused the request before realip ran.
            assert!(
                matches!(status, 200 | 404 | 405),
                "request kind {} from {client}: status {status}; {}",
                (n + j) % 14,
                nginx.error_log()
            );
            *statuses.entry(status).or_insert(0) += 1;
            sent += 1;
        }
        *truth.entry(client.to_string()).or_insert(0) += requests;
    }
    assert!(
        statuses.len() == 3,
        "200, 404 and 405 answered: {statuses:?}"
    );
    let json = nginx.log_lines("access.json", sent);
    let clf = nginx.log_lines("access.log", sent);
    let repaired = invalid_utf8(&json);
    assert!(
        repaired as usize >= sent / 5,
        "nginx writes raw bytes ≥ 0x80 under escape=json: {repaired} of {sent} lines are invalid UTF-8"
    );
    assert_eq!(invalid_utf8(&clf), 0, "combined escapes them as \\xHH");
    assert!(
        clf.iter().any(|l| l.windows(4).any(|w| w == b"\\x22")),
        "combined escapes quotes as \\x22"
    );
    // What a shipper (Filebeat, Vector) sends: the line in `message`.
    let wrapped = ipstats::tools::traffic::in_envelope(&clf);

    // What Docker's json-file driver and Fluent Bit send: the line in `log`.
    let docker: Vec<Vec<u8>> = json
        .iter()
        .map(|l| {
            serde_json::json!({"log": String::from_utf8_lossy(l), "stream": "stdout"})
                .to_string()
                .into_bytes()
        })
        .collect();
    for (name, lines, args) in [
        ("json", &json, &[][..]),
        ("json, nested", &json, &["--ip-field", "source.ip"][..]),
        (
            "json, X-Forwarded-For",
            &json,
            &["--ip-field", "forwarded", "--trusted-proxies", "10.0.0.0/8"][..],
        ),
        ("combined", &clf, &["--format", "clf"][..]),
        (
            "combined in an envelope",
            &wrapped,
            &["--format", "clf", "--envelope", "message"][..],
        ),
        ("json in an envelope", &docker, &["--envelope", "log"][..]),
    ] {
        let (top, stderr) = count(args, lines);
        assert_eq!(top_counts(&top), truth, "ipstats count, {name}: {stderr}");
        assert_eq!(top["total_requests"], sent, "{name}: {stderr}");
        assert!(stderr.contains("skipped 0 lines"), "{name}: {stderr}");
        let repaired = invalid_utf8(lines);
        assert_eq!(
            stderr.contains(&format!("{repaired} lines held invalid UTF-8")),
            repaired > 0,
            "{name}: {stderr}"
        );
    }

    let Some(cluster) = cluster else { return };
    for (name, lines, extra) in [
        ("json", &json, &[][..]),
        ("combined", &clf, &["--format", "clf"][..]),
        (
            "combined in an envelope",
            &wrapped,
            &["--format", "clf", "--envelope", "message"][..],
        ),
    ] {
        let topic = common::create_topic(&cluster, "nginx", 2);
        common::kcat_produce_spread(&cluster.brokers, &topic, 2, lines);
        let checkpoint = std::env::temp_dir().join(unique("ckpt"));
        let mut svc =
            Service::on_cluster(&cluster, None, &topic, &unique("group"), &checkpoint, extra);
        svc.wait_ready(WAIT);
        wait_all_counted(svc.addr, lines.len() as u64, WAIT);
        assert_eq!(window_counts(svc.addr), truth, "serve, {name}");
        let status = get_json(svc.addr, "/api/v1/status");
        assert_eq!(status["records_counted"], sent, "{name}: {status}");
        assert_eq!(
            status["records_repaired"],
            invalid_utf8(lines),
            "{name}: {status}"
        );
        assert_eq!(
            common::skipped_counts(svc.addr).values().sum::<u64>(),
            0,
            "{name}"
        );
        svc.terminate(WAIT);
        let _ = std::fs::remove_dir_all(&checkpoint);
    }
}

/// The loop from log line to enforcement: requests through nginx, its log
/// through Kafka into ipstats, a `block` rule firing, the block list written
/// as an nginx include, `nginx -s reload`: the flagged address gets 403,
/// the others still 200.
#[test]
fn nginx_enforces_the_block_list_ipstats_writes_from_its_own_logs() {
    let Some(cluster) = cluster() else { return };
    let Some(binary) = nginx_binary() else { return };
    let nginx = Nginx::start_with(&binary, true);
    let get = |client: &str| Request {
        method: "GET",
        path: b"/".to_vec(),
        forwarded: client.to_string(),
        user_agent: b"curl/8".to_vec(),
        referer: None,
        body: Vec::new(),
    };
    let (scraper, visitor) = ("203.0.113.50", "198.51.100.20");
    for _ in 0..60 {
        assert_eq!(nginx.send(&get(scraper)), 200);
    }
    for _ in 0..10 {
        assert_eq!(nginx.send(&get(visitor)), 200);
    }
    let lines = nginx.log_lines("access.json", 70);
    let topic = common::create_topic(&cluster, "blocklist", 1);
    common::kcat_produce(&cluster.brokers, &topic, 0, &lines);
    let rules = nginx.dir.join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"scraper\"\nkey = \"ip\"\nwindow = \"1m\"\nrequests = 50\nblock = true\n",
    )
    .expect("rules");
    let checkpoint = nginx.dir.join("ckpt");
    let mut svc = Service::on_cluster_exactly(
        &cluster,
        &topic,
        &unique("blocklist"),
        &checkpoint,
        &["--rules", rules.to_str().expect("utf-8")],
    );
    let addr = svc.addr;
    svc.wait_ready(WAIT);
    let deny = wait_for("the scraper in the block list", WAIT, || {
        let (status, body) =
            common::http_get(addr, "/api/v1/blocklist?format=nginx").map_err(|e| e.to_string())?;
        if status == 200 && !body.is_empty() {
            Ok(body)
        } else {
            Err(format!("{status} {body:?}"))
        }
    });
    assert_eq!(deny, format!("deny {scraper};\n"));
    std::fs::write(nginx.dir.join("deny.conf"), &deny).expect("include");
    let reload = Command::new(&binary)
        .arg("-p")
        .arg(&nginx.dir)
        .args(["-c", "nginx.conf", "-s", "reload"])
        .output()
        .expect("nginx -s reload");
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    wait_for("nginx to refuse the scraper", WAIT, || {
        match nginx.send(&get(scraper)) {
            403 => Ok(()),
            other => Err(other.to_string()),
        }
    });
    assert_eq!(nginx.send(&get(visitor)), 200, "others still served");
    svc.terminate(WAIT);
}
