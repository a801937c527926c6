//! The parser's paths over the criterion corpus (10,000 mixed lines), each
//! timed as the best of 300 passes: steadier than criterion's estimates on a
//! shared machine. Build two trees' copies and run them one after the other:
//!
//! `cargo run --release --example parse_best [json|json_time|clf|envelope]`

use std::time::Instant;

use ipstats::config::Format;
use ipstats::input::field::ClientField;
use ipstats::input::parse::Parser;
use ipstats::tools::traffic::{corpus, in_envelope};

fn main() {
    let json = corpus(Format::Json, 10_000, 10_000);
    let clf = corpus(Format::Clf, 10_000, 10_000);
    let wrapped = in_envelope(&clf);
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
