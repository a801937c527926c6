//! The hot path, measured: parsing a realistic corpus (valid, escaped and
//! malformed lines mixed; JSON, and the same requests as CLF text bare and in
//! a shipper's envelope), counting into a pane, and the per-slide work
//! (pane push with eviction, top-N) at 10k, 100k and 1M distinct IPs; and
//! questions asked at query time (a window merged from 60 kept panes, by
//! address and by network) at 1M distinct addresses.
//!
//! `cargo bench --bench hot_path`; numbers in BENCHMARKS.md.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipstats::config::{Format, MAX_TOP_N, SORTED_TOP_N};
use ipstats::count::Tally;
use ipstats::input::field::ClientField;
use ipstats::input::parse::{Parser, parse_reference};
use ipstats::query::{self, Grouping};
use ipstats::tools::traffic;
use ipstats::vocab::{IpKey, Network, SkipCounts};
use ipstats::window::{IpMap, Pane, Window};

const FIELD: &str = "client_real_ip";
const MAX: usize = 64 * 1024;

fn corpus(lines: usize, ips: usize) -> Vec<Vec<u8>> {
    traffic::corpus(Format::Json, lines, ips)
}

fn parse(c: &mut Criterion) {
    let lines = corpus(10_000, 10_000);
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("fast_path", |b| {
        let mut parser = Parser::new(FIELD, MAX);
        b.iter(|| {
            let mut ok = 0u32;
            for line in &lines {
                ok += u32::from(parser.parse(black_box(line)).is_ok());
            }
            ok
        })
    });
    // Event time: the client and the time of each line.
    group.bench_function("fast_path_with_time", |b| {
        let mut parser = Parser::new(ClientField::from(FIELD).with_time(Some("time_local")), MAX);
        b.iter(|| {
            let mut ok = 0u32;
            for line in &lines {
                ok += u32::from(parser.parse_record(black_box(line)).is_ok());
            }
            ok
        })
    });
    // The same requests as nginx's default `combined` text, bare and as a
    // shipper (Filebeat, Vector) wraps it.
    let clf = traffic::corpus(Format::Clf, 10_000, 10_000);
    let wrapped = traffic::in_envelope(&clf);
    for (name, lines, field) in [
        (
            "clf",
            &clf,
            ClientField::from(FIELD).with_format(Format::Clf),
        ),
        (
            "clf_in_envelope",
            &wrapped,
            ClientField::from(FIELD)
                .with_format(Format::Clf)
                .with_envelope(Some("message")),
        ),
    ] {
        group.bench_function(name, |b| {
            let mut parser = Parser::new(field.clone(), MAX);
            b.iter(|| {
                let mut ok = 0u32;
                for line in lines {
                    ok += u32::from(parser.parse(black_box(line)).is_ok());
                }
                ok
            })
        });
    }
    group.bench_function("serde_json_reference", |b| {
        b.iter(|| {
            let mut ok = 0u32;
            for line in &lines {
                ok += u32::from(parse_reference(black_box(line), FIELD, MAX).is_ok());
            }
            ok
        })
    });
    group.finish();
}

fn pane_ingest(c: &mut Criterion) {
    let lines = corpus(100_000, 50_000);
    let mut group = c.benchmark_group("pane_ingest");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("parse_and_count", |b| {
        let mut parser = Parser::new(FIELD, MAX);
        b.iter(|| {
            let mut tally = Tally::<u32>::default();
            for line in &lines {
                tally.line(&mut parser, line);
            }
            (tally.counts.len(), tally.skipped.total())
        })
    });
    group.finish();
}

fn ip(i: u32) -> IpKey {
    IpKey::from(IpAddr::V4(Ipv4Addr::from(
        0x0A00_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761)),
    )))
}

/// A pane holding `distinct` IPs starting at `first`.
fn pane(seq: u64, first: u32, distinct: u32) -> Arc<Pane> {
    pane_of(seq, first, distinct, ip)
}

/// A pane holding `distinct` addresses `address(first..)`.
fn pane_of(seq: u64, first: u32, distinct: u32, address: fn(u32) -> IpKey) -> Arc<Pane> {
    let mut counts = IpMap::with_capacity(distinct as usize);
    for i in first..first + distinct {
        counts.insert(address(i), 1 + i % 3);
    }
    closed(seq, &counts)
}

/// A closed pane of `counts`: the `seq`-th second (each pane its own time,
/// as in a window: a pane with the start of one that left would be taken
/// for it, grown by late records).
fn closed(seq: u64, counts: &IpMap<u32>) -> Arc<Pane> {
    Arc::new(Pane {
        seq,
        start: SystemTime::UNIX_EPOCH + Duration::from_secs(seq),
        end: SystemTime::UNIX_EPOCH + Duration::from_secs(seq + 1),
        counts: counts.into(),
        requests: counts.values().map(u64::from).sum(),
        skipped: SkipCounts::default(),
        ranges: Vec::new(),
        owners: None,
    })
}

fn slide(c: &mut Criterion) {
    let mut group = c.benchmark_group("slide");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for distinct in [10_000u32, 100_000, 1_000_000] {
        // 10 panes in the window, each a tenth of the IPs: `distinct` in all.
        let capacity = 10;
        let per_pane = distinct / capacity as u32;
        let panes: Vec<Arc<Pane>> = (0..capacity as u64)
            .map(|s| pane(s, s as u32 * per_pane, per_pane))
            .collect();
        let mut window = Window::new(capacity);
        for p in &panes {
            window.push(p.clone());
        }
        group.bench_with_input(
            BenchmarkId::new("push_and_evict", distinct),
            &distinct,
            |b, _| {
                let mut next = 0;
                b.iter(|| {
                    // Steady state: the pane that slides in replaces its twin.
                    window.push(panes[next % capacity].clone());
                    next += 1;
                })
            },
        );
        for n in [100usize, 100_000] {
            group.bench_with_input(
                BenchmarkId::new(format!("top_{n}"), distinct),
                &distinct,
                |b, _| b.iter(|| window.top_list(black_box(n), n).len()),
            );
        }
        // /api/v1/ips/{ip}: the address's count in every pane of the window.
        group.bench_with_input(
            BenchmarkId::new("ip_lookup", distinct),
            &distinct,
            |b, _| {
                let mut i = 0u32;
                b.iter(|| {
                    i = (i + 7919) % distinct;
                    window
                        .panes()
                        .map(|p| u64::from(p.count(black_box(ip(i)))))
                        .sum::<u64>()
                })
            },
        );
        // What a slide publishes: the top 100,000, the first 1,000 sorted.
        group.bench_with_input(
            BenchmarkId::new("snapshot_top_list", distinct),
            &distinct,
            |b, _| b.iter(|| window.top_list(black_box(MAX_TOP_N), SORTED_TOP_N).len()),
        );
    }
    group.finish();
}

/// A pane of `requests` requests from addresses drawn at random among `of`.
fn random_pane(seq: u64, requests: u32, of: u32) -> Arc<Pane> {
    let mut counts = IpMap::with_capacity(requests as usize);
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..requests {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        counts.add(spread((x % u64::from(of)) as u32), 1);
    }
    closed(seq, &counts)
}

/// Addresses spread over 4,096 /24s (and 1 in 8 IPv6, over /64s): what
/// `prefix4=24` and `prefix6=64` group.
fn spread(i: u32) -> IpKey {
    let i = i.wrapping_mul(2_654_435_761);
    if i.is_multiple_of(8) {
        let bits = (0x2001_0db8u128 << 96) | (u128::from(i % 4096) << 64) | u128::from(i);
        IpKey::from(IpAddr::V6(bits.into()))
    } else {
        IpKey::from(IpAddr::V4(Ipv4Addr::from(
            0x0A00_0000 | ((i % 4096) << 8) | (i >> 24),
        )))
    }
}

/// Questions at query time over 60 one-second panes holding 1M distinct
/// addresses: `disjoint`, every address in one pane (1M pane entries);
/// `overlapping`, each pane 100k addresses of a band that moves by a
/// sixtieth of 1M a pane (6M entries, each address in 6 panes).
fn adhoc(c: &mut Criterion) {
    let mut group = c.benchmark_group("adhoc");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    const DISTINCT: u32 = 1_000_000;
    const PANES: u32 = 60;
    let step = DISTINCT / PANES;
    for (shape, per_pane) in [("disjoint", step), ("overlapping", 100_000), ("random", 0)] {
        let panes: Vec<Arc<Pane>> = (0..PANES)
            .map(|s| match per_pane {
                // 50,000 requests a pane from 1M addresses drawn at random:
                // about 2.9M pane entries in all, each address in ~3 panes.
                0 => random_pane(u64::from(s), 50_000, DISTINCT),
                _ => pane_of(u64::from(s), s * step, per_pane, |i| spread(i % DISTINCT)),
            })
            .collect();
        group.bench_function(BenchmarkId::new("window_top_100", shape), |b| {
            b.iter(|| query::merge(panes.iter()).top(black_box(100)).len())
        });
        group.bench_function(BenchmarkId::new("prefix4_24_top_100", shape), |b| {
            let grouping = Grouping {
                prefix4: 24,
                prefix6: 64,
            };
            b.iter(|| {
                query::merge(panes.iter())
                    .top_networks(grouping, black_box(100))
                    .1
            })
        });
        group.bench_function(BenchmarkId::new("network_members", shape), |b| {
            let network = Network::of(spread(7), 24, 64);
            b.iter(|| query::network_members(panes.iter(), network, black_box(100)).1)
        });
    }
    group.finish();
}

/// One slide's rule evaluation with 1M distinct addresses in a 60-pane
/// window: three rules (an address, a /24 and a /64 threshold, 1 min), one
/// pane entering and one leaving per slide; and the same with 100 rules
/// over those three keys.
fn rules(c: &mut Criterion) {
    use ipstats::rules::{Engine, Limits, file::parse};
    let mut group = c.benchmark_group("rules");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    const PANES: usize = 60;
    let per_pane = 1_000_000 / PANES as u32;
    let panes: Vec<Arc<Pane>> = (0..2 * PANES as u64)
        .map(|s| {
            pane_of(s, (s % PANES as u64) as u32 * per_pane, per_pane, |i| {
                spread(i % 1_000_000)
            })
        })
        .collect();
    let limits = Limits {
        batch: Duration::from_secs(1),
        retention: Duration::from_secs(3600),
        asn_db: false,
        country_db: false,
    };
    let keys = ["ip", "v4/24", "v6/64"];
    for count in [3usize, 100] {
        let text: String = (0..count)
            .map(|i| {
                format!(
                    "[[rule]]\nname = \"r{i}\"\nkey = \"{}\"\nwindow = \"1m\"\nrequests = {}\n",
                    keys[i % 3],
                    20 + i
                )
            })
            .collect();
        let rules = parse(&text, limits).expect("rules");
        group.bench_function(BenchmarkId::new("one_slide_1m_addresses", count), |b| {
            b.iter_custom(|iterations| {
                let mut engine = Engine::new(rules.clone(), Duration::from_secs(1));
                let mut step = 0;
                let mut spent = Duration::ZERO;
                engine.evaluate(&panes[..PANES], SystemTime::UNIX_EPOCH);
                for _ in 0..iterations {
                    step += 1;
                    if step == PANES {
                        // Start over (not measured): the ring of panes ends.
                        engine = Engine::new(rules.clone(), Duration::from_secs(1));
                        engine.evaluate(&panes[..PANES], SystemTime::UNIX_EPOCH);
                        step = 1;
                    }
                    let started = std::time::Instant::now();
                    black_box(engine.evaluate(&panes[step..step + PANES], SystemTime::UNIX_EPOCH));
                    spent += started.elapsed();
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse, pane_ingest, slide, adhoc, rules);
criterion_main!(benches);
