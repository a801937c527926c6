//! Realistic nginx access-log lines, as `escape=json` JSON or as nginx's
//! default `combined` text: Zipf-distributed IPv4 and IPv6 clients and a
//! share of malformed lines. Deterministic for a given seed, so the same seed
//! always writes the same lines (and the same requests in either format).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashSet;

use crate::config::Format;

/// What the generator is asked for.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Distinct client addresses.
    pub ips: usize,
    /// Zipf exponent of address popularity; 0 is uniform.
    pub zipf: f64,
    pub seed: u64,
    /// Share of malformed lines, 0.0..=1.0.
    pub malformed_ratio: f64,
}

/// The kind of line written, so callers can keep their own tallies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    Valid(IpAddr),
    Malformed,
}

/// SplitMix64: tiny, fast, and stable across versions (unlike a crate's PRNG).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const PATHS: &[&str] = &[
    "/",
    "/index.html",
    "/api/v2/items?page=2",
    "/static/app.4f9c2.js",
    "/static/style.css",
    "/login",
    "/search?q=kafka+streaming",
    "/products/8812",
    "/cart",
    "/favicon.ico",
];
const METHODS: &[&str] = &["GET", "GET", "GET", "GET", "POST", "HEAD"];
const STATUSES: &[u16] = &[200, 200, 200, 200, 200, 304, 301, 404, 500, 502];
/// A User-Agent that is not UTF-8, as hostile clients send and nginx's
/// `escape=json` logs it.
const RAW_AGENT: &[u8] = b"Mozilla/5.0 (X11; \xff\xfe) Scanner/1.0 \xc3";

const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "curl/8.5.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
];
const REFERERS: &[&str] = &[
    "-",
    "https://www.example.com/",
    "https://search.example.org/?q=ip+stats",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The line generator.
#[derive(Debug)]
pub struct Traffic {
    rng: Rng,
    addresses: Vec<IpAddr>,
    /// Cumulative Zipf weights, one per address.
    cdf: Vec<f64>,
    malformed_ratio: f64,
    format: Format,
    /// Share of requests from clients that rotate their address inside one
    /// network (see [`Traffic::with_rotating_networks`]).
    rotating: f64,
}

impl Traffic {
    pub fn new(config: &TrafficConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let n = config.ips.max(1);
        let mut seen = FxHashSet::default();
        let mut addresses = Vec::with_capacity(n);
        while addresses.len() < n {
            let ip = random_address(&mut rng);
            if seen.insert(ip) {
                addresses.push(ip);
            }
        }
        let mut total = 0.0;
        let cdf = (0..n)
            .map(|i| {
                total += 1.0 / ((i + 1) as f64).powf(config.zipf.max(0.0));
                total
            })
            .collect();
        Traffic {
            rng,
            addresses,
            cdf,
            malformed_ratio: config.malformed_ratio.clamp(0.0, 1.0),
            format: Format::Json,
            rotating: 0.0,
        }
    }

    /// Lines written in `format` (JSON by default): the same seed gives the
    /// same requests in either.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Adds two clients that hide from a per-address top-N, `share` of the
    /// requests each: a scraper rotating over the 250 addresses of
    /// `198.51.100.0/24` and an IPv6 client taking a new address in
    /// `2001:db8:bad:64::/64` for every request. `prefix4=24` and
    /// `prefix6=64` find them (the demo shows this).
    pub fn with_rotating_networks(mut self, share: f64) -> Self {
        self.rotating = share.clamp(0.0, 0.5);
        self
    }

    fn pick_address(&mut self) -> IpAddr {
        if self.rotating > 0.0 {
            let x = self.rng.next_f64();
            if x < self.rotating {
                return IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1 + self.rng.below(250) as u8));
            }
            if x < 2.0 * self.rotating {
                let host = u128::from(self.rng.next_u64());
                return IpAddr::V6(Ipv6Addr::from((0x2001_0db8_0bad_0064_u128 << 64) | host));
            }
        }
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let x = self.rng.next_f64() * total;
        let i = self.cdf.partition_point(|&c| c <= x);
        self.addresses[i.min(self.addresses.len() - 1)]
    }

    /// Appends one line (no newline) to `out`.
    pub fn next_line(&mut self, now: SystemTime, out: &mut Vec<u8>) -> LineKind {
        let ip = self.pick_address();
        if self.rng.next_f64() < self.malformed_ratio {
            // Malformed lines draw from a stream of their own, so the
            // requests that follow are the same in either format.
            let mut own = Rng::new(self.rng.next_u64());
            std::mem::swap(&mut self.rng, &mut own);
            self.malformed(ip, now, out);
            std::mem::swap(&mut self.rng, &mut own);
            return LineKind::Malformed;
        }
        // A few lines spell the address with JSON escapes; they must count too.
        let ip_text = if self.rng.below(200) == 0 && self.format == Format::Json {
            ip.to_string()
                .replace('.', "\\u002e")
                .replace(':', "\\u003a")
        } else {
            ip.to_string()
        };
        self.line(&ip_text, now, true, out);
        LineKind::Valid(ip)
    }

    fn line(&mut self, ip_text: &str, now: SystemTime, with_ip: bool, out: &mut Vec<u8>) {
        let method = METHODS[self.rng.below(METHODS.len())];
        let path = PATHS[self.rng.below(PATHS.len())];
        let status = STATUSES[self.rng.below(STATUSES.len())];
        let bytes = 200 + self.rng.below(40_000);
        let referer = REFERERS[self.rng.below(REFERERS.len())];
        // One client in fifty sends bytes that are not UTF-8 in its
        // User-Agent; nginx's escape=json writes them raw.
        let agent = match self.rng.below(AGENTS.len() * 50) {
            i if i < AGENTS.len() * 49 => AGENTS[i % AGENTS.len()].as_bytes(),
            _ => RAW_AGENT,
        };
        let request_time = self.rng.below(2_000) as f64 / 1000.0;
        // Writing into a Vec cannot fail.
        if self.format == Format::Clf {
            let _ = write!(out, "{} - - [", if with_ip { ip_text } else { "-" });
            write_time_local(now, out);
            let _ = write!(
                out,
                "] \"{method} {path} HTTP/1.1\" {status} {bytes} \"{referer}\" \""
            );
            write_nginx_escaped(agent, out);
            out.push(b'"');
            return;
        }
        let _ = write!(out, "{{\"time_local\":\"");
        write_time_local(now, out);
        if with_ip {
            let _ = write!(out, "\",\"client_real_ip\":\"{ip_text}");
        }
        let _ = write!(
            out,
            "\",\"request\":\"{method} {path} HTTP/1.1\",\"status\":{status},\"body_bytes_sent\":{bytes},\"http_referer\":\"{referer}\",\"http_user_agent\":\""
        );
        out.extend_from_slice(agent);
        let _ = write!(out, "\",\"request_time\":{request_time:.3}}}");
    }

    fn malformed(&mut self, ip: IpAddr, now: SystemTime, out: &mut Vec<u8>) {
        if self.format == Format::Clf {
            return self.malformed_clf(ip, now, out);
        }
        match self.rng.below(5) {
            // cut off mid-line, as a crashed shipper leaves it
            0 => {
                let start = out.len();
                self.line(&ip.to_string(), now, true, out);
                let keep = start + (out.len() - start) / 2;
                out.truncate(keep);
            }
            1 => self.line("", now, false, out),
            2 => {
                let bad =
                    ["unknown", "-", "300.1.2.3", "10.0.0", "fe80::1%eth0"][self.rng.below(5)];
                self.line(bad, now, true, out);
            }
            3 => out.extend_from_slice(b"\xff\xfe\x00\x01binary\x80garbage"),
            // the classic nginx "combined" text format
            _ => {
                let _ = write!(
                    out,
                    "{ip} - - [23/Nov/2026:19:51:07 +0000] \"GET / HTTP/1.1\" 200 512 \"-\" \"curl/8.5.0\""
                );
            }
        }
    }
}

impl Traffic {
    fn malformed_clf(&mut self, ip: IpAddr, now: SystemTime, out: &mut Vec<u8>) {
        match self.rng.below(5) {
            // cut off inside the date: no request, no status
            0 => {
                let _ = write!(out, "{ip} - - [");
                write_time_local(now, out);
                out.truncate(out.len() - 12);
            }
            1 => self.line("", now, false, out),
            2 => {
                let bad = ["unknown", "300.1.2.3", "10.0.0", "fe80::1%eth0"][self.rng.below(4)];
                self.line(bad, now, true, out);
            }
            3 => out.extend_from_slice(b"\xff\xfe\x00\x01binary\x80garbage"),
            // a JSON line in a CLF stream
            _ => {
                let _ = write!(out, "{{\"client_real_ip\":\"{ip}\",\"status\":200}}");
            }
        }
    }
}

/// The parser benchmarks' corpus: `lines` lines from `ips` Zipf-distributed
/// clients in `format`, 2 % of them malformed, all at the same instant.
pub fn corpus(format: Format, lines: usize, ips: usize) -> Vec<Vec<u8>> {
    let mut traffic = Traffic::new(&TrafficConfig {
        ips,
        zipf: 1.1,
        seed: 42,
        malformed_ratio: 0.02,
    })
    .with_format(format);
    (0..lines)
        .map(|_| {
            let mut line = Vec::with_capacity(400);
            traffic.next_line(UNIX_EPOCH, &mut line);
            line
        })
        .collect()
}

/// Each line as a shipper (Filebeat, Vector) sends it: in the `message`
/// field of a JSON document (bytes that are not UTF-8 become U+FFFD).
pub fn in_envelope(lines: &[Vec<u8>]) -> Vec<Vec<u8>> {
    lines
        .iter()
        .map(|line| {
            serde_json::json!({
                "@timestamp": "2026-11-24T06:35:13.000Z",
                "message": String::from_utf8_lossy(line),
                "log": {"file": {"path": "/var/log/nginx/access.log"}},
            })
            .to_string()
            .into_bytes()
        })
        .collect()
}

/// `bytes` as nginx writes a variable in a default (non-JSON) log format:
/// `"`, `\\`, control bytes and bytes ≥ 0x7f as `\xHH`.
fn write_nginx_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

fn random_address(rng: &mut Rng) -> IpAddr {
    if rng.below(10) == 0 {
        // 2001:db8::/32 is reserved for documentation.
        let low = rng.next_u64() as u128 | (u128::from(rng.next_u64() as u32) << 64);
        IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | low))
    } else {
        loop {
            let v = rng.next_u64() as u32;
            let first = v >> 24;
            if (1..224).contains(&first) && first != 10 && first != 127 {
                return IpAddr::V4(Ipv4Addr::from(v));
            }
        }
    }
}

/// nginx's `$time_local` in UTC: `23/Nov/2026:19:51:07 +0000`.
fn write_time_local(now: SystemTime, out: &mut Vec<u8>) {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// Days since 1970-01-01 → (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::field::ClientField;
    use crate::input::parse::Parser;
    use crate::vocab::IpKey;
    use std::time::Duration;

    #[test]
    fn time_local_is_nginx_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_463_467); // 2026-11-23T19:51:07Z
        let mut out = Vec::new();
        write_time_local(t, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "23/Nov/2026:19:51:07 +0000"
        );
    }

    #[test]
    fn rotating_clients_spread_over_their_networks() {
        let config = TrafficConfig {
            ips: 500,
            zipf: 1.1,
            seed: 3,
            malformed_ratio: 0.0,
        };
        let mut traffic = Traffic::new(&config).with_rotating_networks(0.05);
        let (mut v4, mut v6) = (FxHashSet::default(), FxHashSet::default());
        let mut line = Vec::new();
        for _ in 0..40_000 {
            line.clear();
            if let LineKind::Valid(ip) = traffic.next_line(UNIX_EPOCH, &mut line) {
                match ip {
                    IpAddr::V4(a) if a.octets()[..3] == [198, 51, 100] => {
                        v4.insert(a);
                    }
                    IpAddr::V6(a) if a.segments()[..4] == [0x2001, 0xdb8, 0xbad, 0x64] => {
                        v6.insert(a);
                    }
                    _ => {}
                }
            }
        }
        // About 2,000 requests each: all 250 addresses of the /24, and a
        // new address of the /64 every time.
        assert_eq!(v4.len(), 250);
        assert!((1600..2400).contains(&v6.len()), "{}", v6.len());
    }

    #[test]
    fn lines_parse_as_their_kind_says_and_seeds_repeat() {
        let config = TrafficConfig {
            ips: 500,
            zipf: 1.1,
            seed: 7,
            malformed_ratio: 0.05,
        };
        let (mut a, mut b) = (Traffic::new(&config), Traffic::new(&config));
        let mut clf = Traffic::new(&config).with_format(Format::Clf);
        let mut parser = Parser::new("client_real_ip", 64 * 1024);
        let mut clf_parser = Parser::new(
            ClientField::from("client_real_ip").with_format(Format::Clf),
            64 * 1024,
        );
        let (mut malformed, mut v6, mut escaped) = (0, 0, 0);
        for _ in 0..5_000 {
            let (mut la, mut lb, mut lc) = (Vec::new(), Vec::new(), Vec::new());
            let kind = a.next_line(UNIX_EPOCH, &mut la);
            b.next_line(UNIX_EPOCH, &mut lb);
            assert_eq!(la, lb, "same seed, same line");
            assert_eq!(
                clf.next_line(UNIX_EPOCH, &mut lc),
                kind,
                "same seed, same request in CLF"
            );
            assert!(std::str::from_utf8(&lc).is_ok() || kind == LineKind::Malformed);
            escaped += usize::from(lc.windows(2).any(|w| w == b"\\x"));
            match kind {
                LineKind::Valid(ip) => {
                    assert_eq!(parser.parse(&la), Ok(IpKey::from(ip)));
                    assert_eq!(
                        clf_parser.parse(&lc),
                        Ok(IpKey::from(ip)),
                        "{}",
                        String::from_utf8_lossy(&lc)
                    );
                    v6 += usize::from(ip.is_ipv6());
                }
                LineKind::Malformed => {
                    malformed += 1;
                    for (p, line) in [(&mut parser, &la), (&mut clf_parser, &lc)] {
                        assert!(p.parse(line).is_err(), "{}", String::from_utf8_lossy(line));
                    }
                }
            }
        }
        assert!(
            (100..400).contains(&malformed),
            "about 5% malformed: {malformed}"
        );
        assert!(v6 > 100, "some IPv6 clients: {v6}");
        assert!(escaped > 20, "raw agents escaped as nginx does: {escaped}");
    }
}
