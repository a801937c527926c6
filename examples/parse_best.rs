//! The parser's paths over the criterion corpus (10,000 mixed lines), each
//! timed as the best of 300 passes: steadier than criterion's estimates on a
//! shared machine. Build two trees' copies and run them one after the other:
//!
//! `cargo run --release --example parse_best [json|json_time|clf|envelope]`

use ipstats::config::Format;
use ipstats::input::field::ClientField;
use ipstats::input::parse::Parser;
use ipstats::tools::traffic::{Traffic, TrafficConfig};
use std::time::{Instant, SystemTime};
fn corpus(format: Format) -> Vec<Vec<u8>> {
    let mut t = Traffic::new(&TrafficConfig {
        ips: 10_000,
        zipf: 1.1,
        seed: 42,
        malformed_ratio: 0.02,
    })
    .with_format(format);
    (0..10_000)
        .map(|_| {
            let mut l = Vec::new();
            t.next_line(SystemTime::UNIX_EPOCH, &mut l);
            l
        })
        .collect()
}
fn main() {
    let json = corpus(Format::Json);
    let clf = corpus(Format::Clf);
    let wrapped: Vec<Vec<u8>> = clf.iter().map(|l| serde_json::json!({"@timestamp": "2026-11-24T06:35:13.000Z", "message": String::from_utf8_lossy(l), "log": {"file": {"path": "/var/log/nginx/access.log"}}}).to_string().into_bytes()).collect();
    let cases: Vec<(&str, &Vec<Vec<u8>>, ClientField)> = vec![
        ("json", &json, ClientField::from("client_real_ip")),
        (
            "json_time",
            &json,
            ClientField::from("client_real_ip").with_time(Some("time_local")),
        ),
        (
            "clf",
            &clf,
            ClientField::from("client_real_ip").with_format(Format::Clf),
        ),
        (
            "envelope",
            &wrapped,
            ClientField::from("client_real_ip")
                .with_format(Format::Clf)
                .with_envelope(Some("message")),
        ),
    ];
    let only = std::env::args().nth(1);
    for (name, lines, field) in cases {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut p = Parser::new(field, 65536);
        let mut best = f64::MAX;
        for _ in 0..300 {
            let t = Instant::now();
            let mut ok = 0u32;
            for l in lines.iter() {
                ok += u32::from(p.parse_record(std::hint::black_box(l)).is_ok());
            }
            std::hint::black_box(ok);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{name} {:.1} ns/line", best * 1e9 / lines.len() as f64);
    }
}
