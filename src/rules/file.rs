//! The rules file (`--rules`, TOML): parsed and checked as a whole, every
//! problem reported with the file, the line and the reason, so that a bad
//! file is refused at start (exit 64) and, on SIGHUP, leaves the old rules
//! running.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::owners::OwnerKind;
use crate::vocab::Subject;

/// Which key a rule counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// Each address, both families.
    Ip,
    /// IPv4 networks of this prefix length (IPv6 addresses are not counted).
    V4(u8),
    /// IPv6 networks of this prefix length (IPv4 addresses are not counted).
    V6(u8),
    /// The autonomous system behind the address (`--asn-db`).
    Asn,
    /// The country of the address (`--country-db`).
    Country,
}

impl Key {
    fn parse(text: &str) -> Option<Key> {
        match text {
            "ip" => return Some(Key::Ip),
            "asn" => return Some(Key::Asn),
            "country" => return Some(Key::Country),
            _ => {}
        }
        let (family, bits) = text.split_once('/')?;
        if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let bits: u8 = bits.parse().ok()?;
        match family {
            "v4" if bits <= 32 => Some(Key::V4(bits)),
            "v6" if bits <= 128 => Some(Key::V6(bits)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Ip => f.write_str("ip"),
            Key::V4(bits) => write!(f, "v4/{bits}"),
            Key::V6(bits) => write!(f, "v6/{bits}"),
            Key::Asn => f.write_str("asn"),
            Key::Country => f.write_str("country"),
        }
    }
}

impl Key {
    /// The owner kind an `asn` or `country` key counts by.
    pub fn owner_kind(self) -> Option<OwnerKind> {
        match self {
            Key::Asn => Some(OwnerKind::Asn),
            Key::Country => Some(OwnerKind::Country),
            _ => None,
        }
    }
}

/// When a key is flagged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// Its count in the window is at least this.
    Requests(u64),
    /// Its share of all requests in the window is at least `share`, once the
    /// window holds at least `min_total` requests.
    Share { share: f64, min_total: u64 },
}

impl Threshold {
    /// The count a key needs in a window holding `total` requests; `None`
    /// when the rule cannot fire at that total.
    pub fn needed(self, total: u64) -> Option<u64> {
        match self {
            Threshold::Requests(n) => Some(n),
            Threshold::Share { min_total, .. } if total < min_total => None,
            Threshold::Share { share, .. } => Some(((share * total as f64).ceil() as u64).max(1)),
        }
    }

    /// The smallest count that can ever be enough: keys below it need not
    /// be looked at.
    pub fn floor(self) -> u64 {
        match self {
            Threshold::Requests(n) => n.max(1),
            Threshold::Share { share, min_total } => {
                ((share * min_total as f64).ceil() as u64).max(1)
            }
        }
    }
}

/// One checked rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub key: Key,
    pub window: Duration,
    pub threshold: Threshold,
    pub hold_for: Duration,
    pub cooldown: Duration,
    pub allow: Vec<Subject>,
    pub block: bool,
    pub severity: String,
    pub description: String,
    /// `ban`: with `block`, how long a key stays banned for CrowdSec
    /// bouncers after it starts firing, even when it resolves sooner.
    pub ban: Option<Duration>,
}

impl Rule {
    /// Whether `key` (a key of this rule) lies in an allowed network, or is
    /// an allowed AS or country.
    pub fn allowed(&self, key: Subject) -> bool {
        let Subject::Net(network) = key else {
            return self.allow.contains(&key);
        };
        let (first, last) = network.bounds();
        self.allow.iter().filter_map(|a| a.network()).any(|a| {
            let (lo, hi) = a.bounds();
            a.is_v4() == network.is_v4() && lo <= first && last <= hi
        })
    }
}

/// The longest `ban`.
const MAX_BAN: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the rules must fit: windows are whole batches within the retention.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub batch: Duration,
    pub retention: Duration,
    /// `--asn-db` and `--country-db` are given (rules by `asn`, `country`).
    pub asn_db: bool,
    pub country_db: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    key: Spanned<String>,
    window: Spanned<String>,
    requests: Option<Spanned<i64>>,
    share: Option<Spanned<f64>>,
    min_total: Option<Spanned<i64>>,
    #[serde(rename = "for")]
    hold_for: Option<Spanned<String>>,
    cooldown: Option<Spanned<String>>,
    allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    block: bool,
    ban: Option<Spanned<String>>,
    severity: Option<String>,
    description: Option<String>,
}

/// Why a rules file is refused: it could not be read, or a line of it is
/// wrong (the file, the line and the reason).
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{}: cannot read the rules file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{problem}", path.display())]
    Invalid { path: PathBuf, problem: LineError },
}

/// One mistake in a rules file's text: its line (from 1) and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// Reads and checks a rules file.
pub fn load(path: &Path, limits: Limits) -> Result<Vec<Rule>, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, limits).map_err(|problem| RulesError::Invalid {
        path: path.to_path_buf(),
        problem,
    })
}

/// Checks the text of a rules file; an error names the line and the reason.
pub fn parse(text: &str, limits: Limits) -> Result<Vec<Rule>, LineError> {
    let line = |span: Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
    let raw: RawFile = toml::from_str(text).map_err(|e| LineError {
        line: e.span().map_or(1, line),
        reason: e.message().to_string(),
    })?;
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
    for spanned in raw.rule {
        let at = line(spanned.span());
        let raw = spanned.into_inner();
        let fail = |span: Range<usize>, reason: String| LineError {
            line: line(span),
            reason,
        };
        let name = raw.name.get_ref().trim().to_string();
        if name.is_empty() || name.chars().any(|c| c.is_control()) {
            return Err(fail(
                raw.name.span(),
                "name must be a non-empty line of text".into(),
            ));
        }
        if rules.iter().any(|r| r.name == name) {
            return Err(fail(
                raw.name.span(),
                format!("a second rule named {name:?}: names are unique"),
            ));
        }
        let key = Key::parse(raw.key.get_ref()).ok_or_else(|| {
            fail(
                raw.key.span(),
                format!(
                    "key must be \"ip\", \"v4/N\" (N 0..=32), \"v6/N\" (N 0..=128), \"asn\" or \"country\", got {:?}",
                    raw.key.get_ref()
                ),
            )
        })?;
        let database = match key {
            Key::Asn if !limits.asn_db => Some("--asn-db"),
            Key::Country if !limits.country_db => Some("--country-db"),
            _ => None,
        };
        if let Some(option) = database {
            return Err(fail(
                raw.key.span(),
                format!("key = \"{key}\" needs the database of {option}, which is not given"),
            ));
        }
        let window = duration(&raw.window, "window", fail)?;
        let whole = !window.is_zero() && window.as_nanos().is_multiple_of(limits.batch.as_nanos());
        if !whole || window > limits.retention {
            return Err(fail(
                raw.window.span(),
                format!(
                    "window must be a whole multiple of --batch ({}) up to --retention ({}), got {:?}",
                    humantime::format_duration(limits.batch),
                    humantime::format_duration(limits.retention),
                    raw.window.get_ref()
                ),
            ));
        }
        let threshold = threshold(&raw, &name, at, fail)?;
        let hold_for = optional_duration(&raw.hold_for, "for", fail)?;
        let cooldown = optional_duration(&raw.cooldown, "cooldown", fail)?;
        let allow = allow_list(key, raw.allow.as_deref().unwrap_or_default(), fail)?;
        let ban = optional_duration(&raw.ban, "ban", fail)?;
        if let Some(text) = raw.ban.as_ref() {
            if !raw.block {
                return Err(fail(
                    text.span(),
                    "ban applies to block = true rules (it keeps their keys banned)".to_string(),
                ));
            }
            if ban.is_zero() || ban > MAX_BAN {
                return Err(fail(
                    text.span(),
                    format!("ban must be from 1s to 30d, got {:?}", text.get_ref()),
                ));
            }
        }
        rules.push(Rule {
            name,
            key,
            window,
            threshold,
            hold_for,
            cooldown,
            allow,
            block: raw.block,
            severity: raw.severity.unwrap_or_else(|| "warning".to_string()),
            description: raw.description.unwrap_or_default(),
            ban: (!ban.is_zero()).then_some(ban),
        });
    }
    Ok(rules)
}

/// A rule's threshold: `requests`, or `share` with `min_total`.
fn threshold(
    raw: &RawRule,
    name: &str,
    at: usize,
    fail: impl Fn(Range<usize>, String) -> LineError,
) -> Result<Threshold, LineError> {
    Ok(match (&raw.requests, &raw.share) {
        (Some(n), None) => {
            if raw.min_total.is_some() {
                return Err(fail(
                    n.span(),
                    "min_total goes with share, not requests".into(),
                ));
            }
            if *n.get_ref() < 1 {
                return Err(fail(
                    n.span(),
                    format!("requests must be 1 or more, got {}", n.get_ref()),
                ));
            }
            Threshold::Requests(*n.get_ref() as u64)
        }
        (None, Some(share)) => {
            let s = *share.get_ref();
            if !(s > 0.0 && s <= 1.0) {
                return Err(fail(
                    share.span(),
                    format!("share must be above 0 and at most 1, got {s}"),
                ));
            }
            let min_total = match &raw.min_total {
                None => 1,
                Some(m) if *m.get_ref() >= 1 => *m.get_ref() as u64,
                Some(m) => {
                    return Err(fail(
                        m.span(),
                        format!("min_total must be 1 or more, got {}", m.get_ref()),
                    ));
                }
            };
            Threshold::Share {
                share: s,
                min_total,
            }
        }
        (Some(n), Some(_)) => {
            return Err(fail(n.span(), "give requests or share, not both".into()));
        }
        (None, None) => {
            return Err(LineError {
                line: at,
                reason: format!(
                    "rule {name:?} needs a threshold: requests = N, or share = 0..1 (with min_total)"
                ),
            });
        }
    })
}

/// A rule's `allow` entries: networks in CIDR form for address and network
/// keys; autonomous systems (`AS16509`) for `asn`, countries (`DE`) for
/// `country`.
fn allow_list(
    key: Key,
    entries: &[Spanned<String>],
    fail: impl Fn(Range<usize>, String) -> LineError,
) -> Result<Vec<Subject>, LineError> {
    let (what, fits): (&str, fn(&Subject) -> bool) = match key {
        Key::Asn => ("autonomous systems (AS16509)", |s| {
            matches!(s, Subject::Asn(_))
        }),
        Key::Country => ("countries (DE)", |s| matches!(s, Subject::Country(_))),
        _ => (
            "networks in CIDR form (203.0.113.0/24, 2001:db8::/64) with no bits set past the prefix",
            |s| matches!(s, Subject::Net(_)),
        ),
    };
    let mut allow = Vec::new();
    for entry in entries {
        let subject = Subject::parse(entry.get_ref())
            .filter(fits)
            .ok_or_else(|| {
                fail(
                    entry.span(),
                    format!(
                        "allow entries of a key = \"{key}\" rule are {what}, got {:?}",
                        entry.get_ref()
                    ),
                )
            })?;
        allow.push(subject);
    }
    Ok(allow)
}

/// `field`'s duration; `fail` places the reason on its line.
fn duration(
    text: &Spanned<String>,
    field: &str,
    fail: impl Fn(Range<usize>, String) -> LineError,
) -> Result<Duration, LineError> {
    humantime::parse_duration(text.get_ref()).map_err(|e| {
        fail(
            text.span(),
            format!(
                "{field} must be a duration (30s, 1m, 1h), got {:?}: {e}",
                text.get_ref()
            ),
        )
    })
}

fn optional_duration(
    text: &Option<Spanned<String>>,
    field: &str,
    fail: impl Fn(Range<usize>, String) -> LineError,
) -> Result<Duration, LineError> {
    match text {
        None => Ok(Duration::ZERO),
        Some(t) => duration(t, field, fail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        batch: Duration::from_secs(1),
        retention: Duration::from_secs(3600),
        asn_db: true,
        country_db: true,
    };

    #[test]
    fn the_documented_example_reads_as_written() {
        let rules = parse(
            r#"
[[rule]]
name = "hot-ip"
key = "ip"
window = "1m"
requests = 500
for = "0s"
cooldown = "10m"
allow = ["203.0.113.0/24"]
block = true
severity = "warning"
description = "one client above 500 requests a minute"

[[rule]]
name = "busy-net"
key = "v4/24"
window = "5m"
share = 0.2
min_total = 1000
"#,
            LIMITS,
        )
        .expect("valid");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].key, Key::Ip);
        assert_eq!(rules[0].threshold, Threshold::Requests(500));
        assert_eq!(rules[0].cooldown, Duration::from_secs(600));
        assert!(rules[0].block);
        assert!(rules[0].allowed(Subject::parse("203.0.113.9").expect("ip")));
        assert!(!rules[0].allowed(Subject::parse("203.0.114.9").expect("ip")));
        assert_eq!(rules[1].key, Key::V4(24));
        assert_eq!(rules[1].threshold.needed(999), None);
        assert_eq!(rules[1].threshold.needed(1000), Some(200));
        assert_eq!(rules[1].threshold.floor(), 200);
        assert_eq!(rules[1].severity, "warning");
        assert!(parse("", LIMITS).expect("empty").is_empty());
    }

    #[test]
    fn every_mistake_names_its_line_and_reason() {
        let cases = [
            (
                "[[rule]]\nname = \"a\"\nkey = \"v4/33\"\nwindow = \"1m\"\nrequests = 5\n",
                "3: key must be",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1500ms\"\nrequests = 5\n",
                "4: window must be a whole multiple",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"2h\"\nrequests = 5\n",
                "4: window must be",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\n",
                "1: rule \"a\" needs a threshold",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\nshare = 1.5\n",
                "5: share must be",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\nrequests = 5\nshare = 0.5\n",
                "5: give requests or share",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\nrequests = 5\nallow = [\"10.0.0.1/8\"]\n",
                "6: allow entries",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\nrequests = 5\ncolor = 1\n",
                "6: unknown field",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\nrequests = 5\nban = \"4h\"\n",
                "6: ban applies to block = true rules",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\nrequests = 5\nblock = true\nban = \"90d\"\n",
                "7: ban must be from 1s to 30d",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\nrequests = 5\n[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\nrequests = 5\n",
                "7: a second rule named",
            ),
            ("[[rule]\n", "1: "),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"soon\"\nrequests = 5\n",
                "4: window must be a duration",
            ),
            (
                "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1m\"\nrequests = 0\n",
                "5: requests must be 1 or more",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text, LIMITS).expect_err(text).to_string();
            assert!(
                err.starts_with(expected.split(':').next().unwrap_or("")),
                "{text:?}: {err}"
            );
            assert!(
                err.contains(expected.split(": ").nth(1).unwrap_or(expected)),
                "{text:?}: {err}"
            );
        }
    }
}
