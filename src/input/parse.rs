//! Log line → client IP.
//!
//! [`Parser::parse`] is the hot path: a validating single-pass JSON scanner
//! over bytes that builds no tree and allocates nothing for ordinary lines.
//! It answers exactly as [`parse_reference`]: `serde_json` over the line with
//! invalid UTF-8 replaced by U+FFFD (`String::from_utf8_lossy`, as the
//! original JVM job decoded records), and property tests hold the two to the
//! same answer on every input: a line that is not valid JSON is never
//! counted, however plausible the address inside it, and a stray `\xff` in a
//! User-Agent does not hide the client. The JSON scanner is in
//! [`super::json`], the CLF reader in [`super::clf`].

use super::clf;
pub use super::field::ClientField;
use super::field::strip_newline;
pub use super::hint::Hint;
use super::json::{FieldValue, JsonScratch, decode_bytes, decode_string, json_fields};
pub use super::reference::parse_reference;
use super::time::TimeCache;
pub use super::time::parse_time;
use crate::config::Format;
use crate::vocab::{IpKey, SkipReason};

/// The fast, non-allocating line parser. One per counting thread (and one
/// for `ipstats count`).
#[derive(Debug)]
pub struct Parser {
    field: ClientField,
    max_line_bytes: usize,
    scratch: Scratch,
    /// An envelope's decoded line.
    inner: Vec<u8>,
    repaired: u64,
    /// Hints seen, and hints already handed out (bit sets of [`Hint`]).
    hints_seen: u8,
    hints_given: u8,
    /// Lines read, and those among them in the other format (CLF text
    /// under `--format json`, JSON under `--format clf`).
    lines: u64,
    other_format: u64,
}

/// Lines in the other format that make a run of them worth a hint.
const OTHER_FORMAT_HINT_MIN: u64 = 3;

/// Buffers reused from line to line.
#[derive(Debug, Default)]
struct Scratch {
    /// The JSON scanner's buffers; its text holds decoded keys and the
    /// decoded client field.
    json: JsonScratch,
    /// The decoded time field.
    time: String,
    times: TimeCache,
}

impl Parser {
    pub fn new(field: impl Into<ClientField>, max_line_bytes: usize) -> Self {
        Parser {
            field: field.into(),
            max_line_bytes,
            scratch: Scratch::default(),
            inner: Vec::new(),
            repaired: 0,
            hints_seen: 0,
            hints_given: 0,
            lines: 0,
            other_format: 0,
        }
    }

    /// Hints seen since the last call and never handed out before: each
    /// misconfiguration is reported once.
    pub fn take_new_hints(&mut self) -> impl Iterator<Item = Hint> + use<> {
        let new = self.hints_seen & !self.hints_given;
        self.hints_given |= new;
        Hint::ALL.into_iter().filter(move |h| new & h.bit() != 0)
    }

    /// Why a skipped line was skipped may point to a setting: noted for
    /// [`Parser::take_new_hints`]. Only skipped lines pay for the look.
    /// Advice to switch `--format` is noted only once such lines are most
    /// of those read: a few stray lines of the other kind among good ones
    /// (a shipper's test line, a bad client) would be made worse by it.
    #[cold]
    fn note_hint(&mut self, line: &[u8], reason: SkipReason) {
        let hint = match (self.field.format, reason) {
            (Format::Json, SkipReason::NotJson) if line.windows(4).any(|w| w == b"\\x22") => {
                Hint::NginxDefaultEscaping
            }
            (Format::Json, SkipReason::NotJson) if clf::parse(line).is_ok() => Hint::ClfAsJson,
            (Format::Clf, SkipReason::BadFormat) if line.first() == Some(&b'{') => Hint::JsonAsClf,
            _ => return,
        };
        if matches!(hint, Hint::ClfAsJson | Hint::JsonAsClf) {
            self.other_format += 1;
            if self.other_format < OTHER_FORMAT_HINT_MIN || self.other_format * 2 <= self.lines {
                return;
            }
        }
        self.hints_seen |= hint.bit();
    }

    /// Lines read so far that were not valid UTF-8 (read as if repaired),
    /// counted or not; reset to 0.
    pub fn take_repaired(&mut self) -> u64 {
        std::mem::take(&mut self.repaired)
    }

    /// The client IP of one log line, or why it has none.
    #[inline]
    pub fn parse(&mut self, line: &[u8]) -> Result<IpKey, SkipReason> {
        self.parse_record(line).map(|(ip, _)| ip)
    }

    /// The client IP of one log line and, when the field names a time
    /// ([`ClientField::with_time`]), its time in epoch milliseconds (a line
    /// without a readable time is `bad_time`); or why it has none.
    pub fn parse_record(&mut self, line: &[u8]) -> Result<(IpKey, Option<i64>), SkipReason> {
        self.lines += 1;
        if line.len() > self.max_line_bytes {
            return Err(SkipReason::TooLarge);
        }
        // A JSON scan that saw no byte >= 0x80 proves the line ASCII; only
        // other lines pay for a UTF-8 check.
        let mut ascii = false;
        let record = self.read(line, &mut ascii);
        if !ascii && std::str::from_utf8(line).is_err() {
            self.repaired += 1;
        }
        record
    }

    fn read(&mut self, line: &[u8], ascii: &mut bool) -> Result<(IpKey, Option<i64>), SkipReason> {
        let Some(envelope) = &self.field.envelope else {
            let record = read_record(&self.field, &mut self.scratch, line, ascii);
            if let Err(reason @ (SkipReason::NotJson | SkipReason::BadFormat)) = record {
                self.note_hint(line, reason);
            }
            return record;
        };
        // The envelope is JSON; its string field holds the line, escapes
        // decoded before the inner read.
        let [found, _] = json_fields(
            line,
            [Some(envelope), None],
            self.field.lossy_keys,
            &mut self.scratch.json,
            ascii,
        )?;
        let inner = match found {
            None => return Err(SkipReason::MissingField),
            Some(FieldValue::Other { .. }) => return Err(SkipReason::BadFormat),
            Some(FieldValue::Plain { start, end }) => &line[start..end],
            Some(FieldValue::Escaped { start, end }) => {
                decode_bytes(&line[start..end], &mut self.inner);
                &self.inner
            }
        };
        read_record(
            &self.field,
            &mut self.scratch,
            strip_newline(inner),
            &mut false,
        )
    }
}

/// The client in a field's bytes: a plain dotted quad read at once, any
/// other text (IPv6, a forwarded list) by [`ClientField::client`].
fn client_of(field: &ClientField, bytes: &[u8]) -> Result<IpKey, SkipReason> {
    match dotted_quad(bytes) {
        Some(v4) => Ok(IpKey::from_v4_bits(v4)),
        // Bytes that are not UTF-8 would read as U+FFFD: not an address.
        None => match std::str::from_utf8(bytes) {
            Ok(text) => field.client(text),
            Err(_) => Err(SkipReason::InvalidIp),
        },
    }
}

/// The client (and the time, if asked for) of one record in `field`'s format.
fn read_record(
    field: &ClientField,
    scratch: &mut Scratch,
    line: &[u8],
    ascii: &mut bool,
) -> Result<(IpKey, Option<i64>), SkipReason> {
    if field.format == Format::Clf {
        let parsed = clf::parse(line)?;
        let ip = client_of(field, parsed.host)?;
        let time = match field.time_path {
            None => None,
            Some(_) => Some(
                scratch
                    .times
                    .parse(parsed.time)
                    .ok_or(SkipReason::BadTime)?,
            ),
        };
        return Ok((ip, time));
    }
    let paths = [Some(&*field.path), field.time_path.as_deref()];
    let [ip_value, time_value] =
        json_fields(line, paths, field.lossy_keys, &mut scratch.json, ascii)?;
    let ip_bytes = match ip_value {
        None => return Err(SkipReason::MissingField),
        Some(FieldValue::Other { .. }) => return Err(SkipReason::InvalidIp),
        Some(FieldValue::Plain { start, end }) => &line[start..end],
        Some(FieldValue::Escaped { start, end }) => {
            decode_string(&line[start..end], &mut scratch.json.text);
            scratch.json.text.as_bytes()
        }
    };
    let ip = client_of(field, ip_bytes)?;
    let time = match field.time_path {
        None => None,
        Some(_) => Some(read_time(line, time_value, scratch).ok_or(SkipReason::BadTime)?),
    };
    Ok((ip, time))
}

/// The time at a JSON field: a string in any form [`parse_time`] reads, or
/// a number of epoch seconds as serde_json reads it (its value printed).
fn read_time(line: &[u8], value: Option<FieldValue>, scratch: &mut Scratch) -> Option<i64> {
    let text = match value? {
        FieldValue::Plain { start, end } => &line[start..end],
        FieldValue::Escaped { start, end } => {
            decode_string(&line[start..end], &mut scratch.time);
            scratch.time.as_bytes()
        }
        FieldValue::Other { start, end } => {
            let raw = &line[start..end];
            if plain_seconds(raw) {
                // Prints as written, give or take trailing zeros.
                raw
            } else {
                let number: serde_json::Number =
                    serde_json::from_str(std::str::from_utf8(raw).ok()?).ok()?;
                scratch.time.clear();
                scratch.time.push_str(&number.to_string());
                scratch.time.as_bytes()
            }
        }
    };
    scratch.times.parse(text)
}

/// Digits (at most 11) and at most three decimals: a number serde_json
/// prints with the same value as written.
fn plain_seconds(raw: &[u8]) -> bool {
    let (whole, fraction) = match raw.iter().position(|b| *b == b'.') {
        Some(dot) => (&raw[..dot], &raw[dot + 1..]),
        None => (raw, &b"0"[..]),
    };
    (1..=11).contains(&whole.len())
        && (1..=3).contains(&fraction.len())
        && whole.iter().chain(fraction).all(u8::is_ascii_digit)
}

/// The common case, an IPv4 address in canonical dotted-quad form, without
/// the generic address parser. `None` means "ask [`parse_ip`]": it accepts
/// only what `Ipv4Addr::from_str` accepts (one to three digits per octet, no
/// leading zero, at most 255), with the same value.
fn dotted_quad(text: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    let mut octets = 0;
    let mut rest = text;
    loop {
        let digits = rest
            .iter()
            .take(4)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 3 || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        let octet = rest[..digits]
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        if octet > 255 {
            return None;
        }
        value = value << 8 | octet;
        octets += 1;
        rest = &rest[digits..];
        match (octets, rest.first()) {
            (4, None) => return Some(value),
            (1..=3, Some(b'.')) => rest = &rest[1..],
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::reference::reference_record;
    use crate::vocab::{Network, parse_ip};
    use proptest::prelude::*;

    const FIELD: &str = "client_real_ip";
    const MAX: usize = 64 * 1024;

    /// The fast path's answer; every call also checks that the line counts
    /// as repaired exactly when it is not UTF-8.
    fn fast(line: &[u8]) -> Result<IpKey, SkipReason> {
        let mut parser = Parser::new(FIELD, MAX);
        let answer = parser.parse(line);
        assert_eq!(
            parser.take_repaired(),
            u64::from(std::str::from_utf8(line).is_err()),
            "repaired: {:?}",
            String::from_utf8_lossy(line)
        );
        answer
    }

    fn ip(text: &str) -> IpKey {
        parse_ip(text).expect("test address")
    }

    #[test]
    fn counts_a_realistic_nginx_line() {
        let line = br#"{"time_local":"23/Nov/2026:19:51:07 +0000","client_real_ip":"203.0.113.9","request":"GET /a?b=1 HTTP/1.1","status":200,"body_bytes_sent":512,"request_time":0.004}"#;
        assert_eq!(fast(line), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn reasons_are_specific() {
        assert_eq!(fast(b"\xff\xfe"), Err(SkipReason::NotJson));
        assert_eq!(fast(b"client_real_ip=1.2.3.4"), Err(SkipReason::NotJson));
        assert_eq!(fast(b"[1,2]"), Err(SkipReason::NotJson));
        assert_eq!(fast(br#"{"ip":"1.2.3.4"}"#), Err(SkipReason::MissingField));
        assert_eq!(
            fast(br#"{"client_real_ip":"1.2.3"}"#),
            Err(SkipReason::InvalidIp)
        );
        assert_eq!(
            fast(br#"{"client_real_ip":16909060}"#),
            Err(SkipReason::InvalidIp)
        );
        let big = format!(
            r#"{{"client_real_ip":"1.2.3.4","pad":"{}"}}"#,
            "x".repeat(MAX)
        );
        assert_eq!(fast(big.as_bytes()), Err(SkipReason::TooLarge));
    }

    #[test]
    fn invalid_utf8_inside_strings_is_read_as_u_fffd_and_the_line_counted() {
        let mut parser = Parser::new(FIELD, MAX);
        // nginx escape=json writes bytes >= 0x80 raw: a hostile User-Agent.
        let line = b"{\"client_real_ip\":\"203.0.113.7\",\"http_user_agent\":\"x\xff\xfe\xc3\",\"request\":\"GET /\xe2\x80 HTTP/1.1\"}";
        assert_eq!(parser.parse(line), Ok(ip("203.0.113.7")));
        assert_eq!(parse_reference(line, FIELD, MAX), Ok(ip("203.0.113.7")));
        assert_eq!(parser.take_repaired(), 1);
        // Valid multi-byte UTF-8 is not a repair.
        assert_eq!(
            parser.parse("{\"client_real_ip\":\"10.0.0.1\",\"ua\":\"Mozilla é 🦀\"}".as_bytes()),
            Ok(ip("10.0.0.1"))
        );
        assert_eq!(parser.take_repaired(), 0);
        // In the address itself, or outside strings, it is what the reference says.
        for line in [
            &b"{\"client_real_ip\":\"10.0.0.\xff\"}"[..],
            b"{\"client_real_ip\":\"10.0.0.1\"}\xff",
            b"{\"client_real_\xffip\":\"10.0.0.1\"}",
        ] {
            assert_eq!(parser.parse(line), parse_reference(line, FIELD, MAX));
        }
        // A key that only matches once repaired: the field name holds U+FFFD.
        let mut odd = Parser::new("a\u{FFFD}", MAX);
        assert_eq!(odd.parse(b"{\"a\xff\":\"10.0.0.9\"}"), Ok(ip("10.0.0.9")));
        assert_eq!(
            parse_reference(b"{\"a\xff\":\"10.0.0.9\"}", "a\u{FFFD}", MAX),
            Ok(ip("10.0.0.9"))
        );
    }

    #[test]
    fn a_dotted_path_reads_nested_objects_as_serde_json_does() {
        let mut parser = Parser::new("source.ip", MAX);
        let cases: [(&[u8], Result<IpKey, SkipReason>); 6] = [
            (
                br#"{"source":{"ip":"192.0.2.1","port":80}}"#,
                Ok(ip("192.0.2.1")),
            ),
            // The last duplicate wins at every level, even without the field.
            (
                br#"{"source":{"ip":"192.0.2.1"},"source":{"port":1}}"#,
                Err(SkipReason::MissingField),
            ),
            (
                br#"{"source":{"ip":"192.0.2.1","ip":"192.0.2.2"}}"#,
                Ok(ip("192.0.2.2")),
            ),
            (br#"{"source":"192.0.2.1"}"#, Err(SkipReason::MissingField)),
            (
                br#"{"source.ip":"192.0.2.1"}"#,
                Err(SkipReason::MissingField),
            ),
            (
                br#"{"source":{"ip":{"v":"192.0.2.1"}}}"#,
                Err(SkipReason::InvalidIp),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parser.parse(line),
                expected,
                "{}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(parse_reference(line, "source.ip", MAX), expected);
        }
    }

    #[test]
    fn an_x_forwarded_for_list_gives_the_right_most_untrusted_address() {
        let trusted = ["10.0.0.0/8", "2001:db8:ffff::/48"]
            .iter()
            .filter_map(|n| Network::parse(n))
            .collect();
        let field = ClientField::new("xff", trusted);
        let mut parser = Parser::new(&field, MAX);
        let mut plain = Parser::new("xff", MAX);
        for (value, behind_proxies, without) in [
            (
                "203.0.113.7, 10.0.0.2",
                Ok(ip("203.0.113.7")),
                Ok(ip("10.0.0.2")),
            ),
            (
                "198.51.100.1,203.0.113.7, 10.1.1.1,\\t2001:db8:ffff::9",
                Ok(ip("203.0.113.7")),
                Ok(ip("2001:db8:ffff::9")),
            ),
            ("10.0.0.9, 10.0.0.2", Ok(ip("10.0.0.9")), Ok(ip("10.0.0.2"))),
            ("10.0.0.9", Ok(ip("10.0.0.9")), Ok(ip("10.0.0.9"))),
            (
                "-",
                Err(SkipReason::MissingField),
                Err(SkipReason::MissingField),
            ),
            (
                "",
                Err(SkipReason::MissingField),
                Err(SkipReason::MissingField),
            ),
            (
                "unknown, 10.0.0.2",
                Err(SkipReason::InvalidIp),
                Err(SkipReason::InvalidIp),
            ),
            (
                "203.0.113.7, , 10.0.0.2",
                Err(SkipReason::InvalidIp),
                Err(SkipReason::InvalidIp),
            ),
        ] {
            let line = format!(r#"{{"xff":"{value}"}}"#);
            assert_eq!(parser.parse(line.as_bytes()), behind_proxies, "{value}");
            assert_eq!(
                parse_reference(line.as_bytes(), &field, MAX),
                behind_proxies
            );
            assert_eq!(plain.parse(line.as_bytes()), without, "{value}");
            assert_eq!(parse_reference(line.as_bytes(), "xff", MAX), without);
        }
    }

    #[test]
    fn an_envelope_holds_the_raw_line_in_either_format() {
        let clf = ClientField::from(FIELD)
            .with_format(Format::Clf)
            .with_envelope(Some("message"));
        let json = ClientField::from(FIELD).with_envelope(Some("log"));
        let cases: [(&ClientField, &[u8], Result<IpKey, SkipReason>); 7] = [
            // Filebeat/Vector shipping nginx's default combined log.
            (&clf, br#"{"@timestamp":"2026-11-24T06:35:13Z","message":"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] \"GET /\\x22 HTTP/1.1\" 200 612 \"-\" \"caf\u00e9 \\\\ \\\"q\\\"\""}"#, Ok(ip("203.0.113.7"))),
            // Docker json-file / Fluent Bit: escaped JSON with its newline.
            (&json, br#"{"log":"{\"client_real_ip\":\"2001:db8::7\",\"ua\":\"\u00e9\"}\n","stream":"stdout"}"#, Ok(ip("2001:db8::7"))),
            (&json, br#"{"log":"{\"client_real_ip\":\"2001:db8::7\"}"}"#, Ok(ip("2001:db8::7"))),
            (&json, br#"{"stream":"stdout"}"#, Err(SkipReason::MissingField)),
            (&json, br#"{"log":{"client_real_ip":"10.0.0.1"}}"#, Err(SkipReason::BadFormat)),
            (&json, br#"{"log":"not json\n"}"#, Err(SkipReason::NotJson)),
            (&clf, br#"{"message":"not a log line"}"#, Err(SkipReason::BadFormat)),
        ];
        for (field, line, expected) in cases {
            assert_eq!(
                Parser::new(field, MAX).parse(line),
                expected,
                "{}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(
                parse_reference(line, field, MAX),
                expected,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn misconfigurations_are_hinted_once_each() {
        let mut json = Parser::new(FIELD, MAX);
        let nginx_default = br#"{"client_real_ip":"10.0.0.1","request":"GET /\x22 HTTP/1.1"}"#;
        let combined =
            br#"10.0.0.1 - - [24/Nov/2026:06:35:13 +0000] "GET / HTTP/1.1" 200 1 "-" "-""#;
        for _ in 0..3 {
            assert_eq!(json.parse(nginx_default), Err(SkipReason::NotJson));
        }
        assert_eq!(
            json.take_new_hints().collect::<Vec<_>>(),
            [Hint::NginxDefaultEscaping]
        );
        // CLF lines among JSON ones: switching --format would lose more than
        // it reads, so no advice to switch until they are most of the lines.
        let good = br#"{"client_real_ip":"10.0.0.2"}"#;
        for _ in 0..100 {
            json.parse(good).expect("counted");
        }
        for _ in 0..50 {
            assert_eq!(json.parse(combined), Err(SkipReason::NotJson));
            assert_eq!(json.parse(b"plain garbage"), Err(SkipReason::NotJson));
        }
        assert_eq!(json.take_new_hints().count(), 0, "a minority of CLF lines");
        // Then a shipper sends only CLF text: now most lines are CLF.
        for _ in 0..200 {
            assert_eq!(json.parse(combined), Err(SkipReason::NotJson));
        }
        let hints: Vec<Hint> = [Hint::NginxDefaultEscaping]
            .into_iter()
            .chain(json.take_new_hints())
            .collect();
        assert_eq!(hints, [Hint::NginxDefaultEscaping, Hint::ClfAsJson]);
        assert!(hints[0].advice().contains("escape=json"));
        assert!(hints[1].advice().contains("--format clf"));
        json.parse(combined).expect_err("still skipped");
        assert_eq!(json.take_new_hints().count(), 0, "each once");

        let mut clf = Parser::new(ClientField::from(FIELD).with_format(Format::Clf), MAX);
        for _ in 0..OTHER_FORMAT_HINT_MIN {
            assert_eq!(
                clf.parse(br#"{"client_real_ip":"10.0.0.1"}"#),
                Err(SkipReason::BadFormat)
            );
        }
        assert_eq!(clf.take_new_hints().collect::<Vec<_>>(), [Hint::JsonAsClf]);
        assert!(Hint::JsonAsClf.advice().contains("--envelope"));
    }

    #[test]
    fn invalid_json_is_never_counted_even_with_a_good_address() {
        for line in [
            r#"{"client_real_ip":"1.2.3.4""#,
            r#"{"client_real_ip":"1.2.3.4",}"#,
            r#"{"client_real_ip":"1.2.3.4"} x"#,
            r#"{"client_real_ip":"1.2.3.4","n":01}"#,
            r#"{"client_real_ip":"1.2.3.4","n":1e400}"#,
            r#"{"client_real_ip":"1.2.3.4","s":"\ud800"}"#,
            "{\"client_real_ip\":\"1.2.3.4\",\"s\":\"a\tb\"}",
        ] {
            assert_eq!(fast(line.as_bytes()), Err(SkipReason::NotJson), "{line}");
            assert_eq!(
                parse_reference(line.as_bytes(), FIELD, MAX),
                Err(SkipReason::NotJson),
                "{line}"
            );
        }
    }

    #[test]
    fn escaped_addresses_and_keys_are_counted() {
        assert_eq!(
            fast(br#"{"client_real_ip":"10.0.0.\u0031"}"#),
            Ok(ip("10.0.0.1"))
        );
        assert_eq!(
            fast(br#"{"client_real\u005fip":"10.0.0.2"}"#),
            Ok(ip("10.0.0.2"))
        );
    }

    #[test]
    fn last_duplicate_wins_and_nested_fields_do_not_count() {
        assert_eq!(
            fast(br#"{"client_real_ip":"1.1.1.1","client_real_ip":"2.2.2.2"}"#),
            Ok(ip("2.2.2.2"))
        );
        assert_eq!(
            fast(br#"{"x":{"client_real_ip":"1.1.1.1"}}"#),
            Err(SkipReason::MissingField)
        );
    }

    #[test]
    fn ipv6_is_canonical_and_mapped_v4_is_v4() {
        assert_eq!(
            fast(br#"{"client_real_ip":"2001:DB8:0:0::1"}"#)
                .expect("v6")
                .to_string(),
            "2001:db8::1"
        );
        assert_eq!(
            fast(br#"{"client_real_ip":"::ffff:192.0.2.1"}"#),
            Ok(ip("192.0.2.1"))
        );
        assert!(ip("9.9.9.9") < ip("::1"), "IPv4 sorts before IPv6");
        assert!(ip("9.9.9.9") < ip("10.0.0.0"), "numeric, not textual");
    }

    #[test]
    fn depth_limit_matches_serde_json() {
        for depth in [126, 127, 128, 129] {
            let line = format!(
                r#"{{"client_real_ip":"1.2.3.4","d":{}{}}}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            );
            assert_eq!(
                fast(line.as_bytes()),
                parse_reference(line.as_bytes(), FIELD, MAX),
                "depth {depth}"
            );
        }
    }

    /// JSON-ish fragments: valid pieces, near misses and traps, raw bytes that
    /// are not UTF-8, so that random concatenations land on both sides of
    /// validity.
    fn fragment() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![text_fragment().prop_map(String::into_bytes), invalid_utf8(),]
    }

    /// Byte sequences that are not UTF-8: stray continuation bytes, truncated
    /// and overlong sequences, encoded surrogates, bytes never valid.
    fn invalid_utf8() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(vec![0xff]),
            Just(vec![0x80]),
            Just(vec![0xc3]),
            Just(vec![0xe2, 0x80]),
            Just(vec![0xf0, 0x9f, 0xa6]),
            Just(vec![0xc0, 0xaf]),
            Just(vec![0xed, 0xa0, 0x80]),
            prop::collection::vec(0x80u8..=0xff, 1..4),
        ]
    }

    fn text_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just(" ".to_string()),
            Just("\"client_real_ip\"".to_string()),
            Just("\"client\"".to_string()),
            Just("\"ip\"".to_string()),
            Just("\"10.0.0.1, 2001:db8::1\"".to_string()),
            Just("\"-\"".to_string()),
            Just("\"\"".to_string()),
            Just("\"client_real\\u005fip\"".to_string()),
            Just("\"time_local\"".to_string()),
            Just("\"24/Nov/2026:06:35:13 +0000\"".to_string()),
            Just("1795502113.123".to_string()),
            Just("\"1.2.3.4\"".to_string()),
            Just("\"::ffff:10.0.0.1\"".to_string()),
            Just("\"2001:db8::\\u0031\"".to_string()),
            Just("\"\\ud83d\\ude00\"".to_string()),
            Just("\"\\ud83d\"".to_string()),
            Just("\"\\udc00\"".to_string()),
            Just("\"\\x\"".to_string()),
            Just("\"\t\"".to_string()),
            Just("1e400".to_string()),
            Just("-0.5e-3".to_string()),
            Just("01".to_string()),
            Just("1.".to_string()),
            Just("true".to_string()),
            Just("nul".to_string()),
            Just("null".to_string()),
            "[a-z0-9.:\"\\\\{}\\[\\],-]{0,6}",
            any::<u8>().prop_map(|b| String::from_utf8_lossy(&[b]).into_owned()),
        ]
    }

    /// Valid objects holding the field among other members, some escaped.
    fn valid_object() -> impl Strategy<Value = String> {
        let address = prop_oneof![
            any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
            any::<u128>().prop_map(|v| std::net::Ipv6Addr::from(v).to_string()),
            "[0-9a-f.:]{1,16}",
        ];
        let escape = any::<bool>();
        let other = prop::collection::vec(
            (
                "[a-z_]{1,8}",
                prop_oneof![
                    Just("1".to_string()),
                    Just("0.004".to_string()),
                    Just("\"GET / HTTP/1.1\"".to_string()),
                    Just("[1,{\"a\":null}]".to_string()),
                    Just("\"\\\"quoted\\\"\"".to_string()),
                ],
            ),
            0..4,
        );
        (address, escape, other, any::<usize>()).prop_map(|(addr, escape, other, at)| {
            let value = if escape {
                addr.chars()
                    .map(|c| format!("\\u{:04x}", c as u32))
                    .collect()
            } else {
                addr
            };
            let mut members: Vec<String> = other
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            let at = at % (members.len() + 1);
            members.insert(at, format!("\"client_real_ip\":\"{value}\""));
            format!("{{{}}}", members.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn fast_path_agrees_with_serde_json_on_fragments(parts in prop::collection::vec(fragment(), 0..12)) {
            let line = parts.concat();
            prop_assert_eq!(fast(&line), parse_reference(&line, FIELD, MAX));
            // A dotted path, and X-Forwarded-For lists behind a trusted proxy.
            let field = ClientField::new("client.ip", vec![Network::parse("10.0.0.0/8").expect("net")]);
            prop_assert_eq!(Parser::new(&field, MAX).parse(&line), parse_reference(&line, &field, MAX));
        }

        #[test]
        fn envelopes_agree_with_the_reference(
            inner in valid_object(),
            newline in any::<bool>(),
            cut in any::<usize>(),
            insert in any::<u8>(),
        ) {
            // The inner line as a shipper writes it: a JSON string.
            let text = if newline { format!("{inner}\n") } else { inner };
            let line = format!(r#"{{"stream":"stdout","log":{}}}"#, serde_json::Value::String(text)).into_bytes();
            let field = ClientField::from(FIELD).with_envelope(Some("log"));
            let reference = parse_reference(&line, &field, MAX);
            prop_assert_eq!(Parser::new(&field, MAX).parse(&line), reference);
            prop_assert_ne!(reference, Err(SkipReason::NotJson));
            let mut mutated = line.clone();
            let at = cut % mutated.len();
            mutated[at] = insert;
            prop_assert_eq!(Parser::new(&field, MAX).parse(&mutated), parse_reference(&mutated, &field, MAX));
        }

        #[test]
        fn nested_objects_agree_with_serde_json(
            inner in valid_object(),
            before in prop::collection::vec(fragment(), 0..3),
            duplicate in any::<bool>(),
        ) {
            // {"client": <object holding client_real_ip>, ...}, sometimes twice,
            // sometimes with noise in front.
            let inner = inner.replace("client_real_ip", "ip");
            let mut line = format!(r#"{{"client":{inner}"#).into_bytes();
            if duplicate {
                line.extend_from_slice(br#","client":{"port":1}"#);
            }
            line.push(b'}');
            let line = [before.concat(), line].concat();
            let field = ClientField::from("client.ip");
            prop_assert_eq!(Parser::new(&field, MAX).parse(&line), parse_reference(&line, &field, MAX));
        }

        #[test]
        fn invalid_utf8_inside_other_strings_never_hides_the_address(
            line in valid_object(),
            raw in prop::collection::vec(invalid_utf8(), 1..4),
        ) {
            // A first member whose string holds raw bytes (a hostile User-Agent).
            let member: Vec<u8> = [&b"\"http_user_agent\":\"x"[..], &raw.concat(), b"y\","].concat();
            let bytes = line.into_bytes();
            let mutated = [&bytes[..1], &member, &bytes[1..]].concat();
            let reference = parse_reference(&mutated, FIELD, MAX);
            prop_assert_eq!(fast(&mutated), reference);
            prop_assert_ne!(reference, Err(SkipReason::NotJson), "{:?}", String::from_utf8_lossy(&mutated));
        }

        #[test]
        fn fast_path_agrees_with_serde_json_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(fast(&bytes), parse_reference(&bytes, FIELD, MAX));
        }

        #[test]
        fn fast_path_agrees_on_valid_objects_and_their_mutations(
            line in valid_object(),
            cut in any::<usize>(),
            insert in any::<u8>(),
        ) {
            prop_assert_eq!(fast(line.as_bytes()), parse_reference(line.as_bytes(), FIELD, MAX));
            // one byte replaced anywhere: often invalid, sometimes still valid
            let mut mutated = line.clone().into_bytes();
            let at = cut % mutated.len();
            mutated[at] = insert;
            prop_assert_eq!(fast(&mutated), parse_reference(&mutated, FIELD, MAX));
            // truncated anywhere: never counted unless still whole
            let truncated = &line.as_bytes()[..cut % line.len()];
            prop_assert_eq!(fast(truncated), parse_reference(truncated, FIELD, MAX));
        }

        #[test]
        fn dotted_quad_accepts_only_what_the_standard_parser_accepts(
            text in prop_oneof![
                any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
                "[0-9]{1,4}(\\.[0-9]{1,4}){0,5}\\.?",
                "[0-9.]{0,18}",
            ],
        ) {
            let standard = text.parse::<std::net::Ipv4Addr>().ok().map(u32::from);
            prop_assert_eq!(dotted_quad(text.as_bytes()), standard);
        }
    }

    /// Values a time field may hold: every accepted form, numbers serde_json
    /// prints differently from their text, escapes, and garbage.
    fn time_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(r#""24/Nov/2026:06:35:13 +0000""#.to_string()),
            Just(r#""24\/Nov\/2026:06:35:13 \u002b0000""#.to_string()),
            Just(r#""2026-11-24T06:35:13+00:00""#.to_string()),
            Just(r#""2026-11-24T06:35:13.5Z""#.to_string()),
            Just(r#""1795502113.123""#.to_string()),
            Just("1795502113".to_string()),
            Just("1795502113.120".to_string()),
            Just("1.795502113e9".to_string()),
            Just("1795502113.1239999999999".to_string()),
            Just("-1795502113".to_string()),
            Just("17955021130000".to_string()),
            Just("null".to_string()),
            Just("{}".to_string()),
            Just(r#"{"time_local":"1795502113"}"#.to_string()),
            Just(r#""-""#.to_string()),
            (0i64..4_000_000_000, 0u32..1000).prop_map(|(s, ms)| format!("{s}.{ms:03}")),
            (0i64..4_000_000_000).prop_map(|s| format!("\"{s}\"")),
            "[0-9:/ .+TZ-]{0,26}".prop_map(|t| format!("\"{t}\"")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn the_time_agrees_with_the_reference(
            line in valid_object(),
            times in prop::collection::vec(time_value(), 0..3),
            nested in any::<bool>(),
            cut in any::<usize>(),
            insert in any::<u8>(),
        ) {
            // The time member(s) first, sometimes twice, sometimes nested.
            let members: String = times
                .iter()
                .map(|t| if nested { format!(r#""t":{{"local":{t}}},"#) } else { format!(r#""time_local":{t},"#) })
                .collect();
            let line = format!("{{{members}{}", &line[1..]).into_bytes();
            let path = if nested { "t.local" } else { "time_local" };
            let field = ClientField::from(FIELD).with_time(Some(path));
            let mut parser = Parser::new(&field, MAX);
            prop_assert_eq!(parser.parse_record(&line), reference_record(&line, &field, MAX));
            let mut mutated = line.clone();
            let at = cut % mutated.len();
            mutated[at] = insert;
            prop_assert_eq!(parser.parse_record(&mutated), reference_record(&mutated, &field, MAX));
        }

        #[test]
        fn fragments_with_a_time_agree_with_the_reference(parts in prop::collection::vec(fragment(), 0..12)) {
            let line = parts.concat();
            let field = ClientField::from(FIELD).with_time(Some("time_local"));
            prop_assert_eq!(
                Parser::new(&field, MAX).parse_record(&line),
                reference_record(&line, &field, MAX)
            );
        }
    }

    #[test]
    fn clf_and_envelopes_give_the_bracketed_time() {
        const T: i64 = 1_795_502_113_000;
        let clf = br#"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] "GET / HTTP/1.1" 200 5 "-" "x""#;
        let field = ClientField::from(FIELD)
            .with_format(Format::Clf)
            .with_time(Some("time_local"));
        assert_eq!(
            Parser::new(&field, MAX).parse_record(clf),
            Ok((ip("203.0.113.7"), Some(T)))
        );
        let bad = br#"203.0.113.7 - - [24/Nov/2026:06:35:13] "GET / HTTP/1.1" 200 5"#;
        assert_eq!(
            Parser::new(&field, MAX).parse_record(bad),
            Err(SkipReason::BadTime)
        );
        let wrapped = serde_json::json!({"message": String::from_utf8_lossy(clf)}).to_string();
        let field = field.with_envelope(Some("message"));
        assert_eq!(
            Parser::new(&field, MAX).parse_record(wrapped.as_bytes()),
            Ok((ip("203.0.113.7"), Some(T)))
        );
        // Without a time asked for, a line without one still counts.
        assert_eq!(
            Parser::new(FIELD, MAX).parse_record(b"{\"client_real_ip\":\"1.2.3.4\"}"),
            Ok((ip("1.2.3.4"), None))
        );
        let timed = ClientField::from(FIELD).with_time(Some("time_local"));
        assert_eq!(
            Parser::new(&timed, MAX).parse_record(b"{\"client_real_ip\":\"1.2.3.4\"}"),
            Err(SkipReason::BadTime)
        );
        // The client's errors come first.
        assert_eq!(
            Parser::new(&timed, MAX).parse_record(b"{\"client_real_ip\":\"x\"}"),
            Err(SkipReason::InvalidIp)
        );
    }
}
