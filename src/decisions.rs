//! Decisions for CrowdSec bouncers (`--bouncer-keys-file`): the keys of
//! firing `block = true` rules as the CrowdSec Local API hands them out, so
//! that the bouncers operators already run (firewall, nginx, HAProxy,
//! Cloudflare, custom scripts) enforce them unchanged.
//!
//! A decision is made when a key starts firing and lives while it fires,
//! and, with the rule's `ban`, until `ban` after it started. Each bouncer
//! (by its API key) is told what changed since its last call; what each was
//! told is kept in `--checkpoint-dir/decisions.json`, so that a bouncer that
//! goes on polling across a restart of ipstats hears what changed meanwhile,
//! neither everything again nor nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::durable::{FileError, write_atomically};
use crate::rules::Firing;
use crate::vocab::{IpKey, Network, epoch_ms, from_epoch_ms};

const FILE: &str = "decisions.json";

/// How long a decision says it lasts while its key fires without `ban`:
/// it is deleted when the key resolves; the duration only bounds a ban
/// whose deletion a bouncer never hears (ipstats gone for good).
pub const OPEN_ENDED: Duration = Duration::from_secs(24 * 3600);

/// One decision as the Local API writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    pub id: u64,
    pub origin: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: String,
    pub value: String,
    pub duration: String,
    pub scenario: String,
}

/// `/v1/decisions/stream`'s answer: `null` for an empty list, as the Local API writes it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Stream {
    pub new: Option<Vec<DecisionView>>,
    pub deleted: Option<Vec<DecisionView>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Active {
    id: u64,
    rule: String,
    value: String,
    since_ms: i64,
    /// The end of the rule's `ban`, if it has one.
    ban_until_ms: Option<i64>,
    firing: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    next_id: u64,
    active: Vec<Active>,
    /// By bouncer (a fingerprint of its key): the decisions it was told of.
    told: BTreeMap<String, BTreeMap<u64, DecisionView>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecisionsError {
    #[error("the CrowdSec decisions in {0}")]
    File(#[from] FileError),
}

/// The decisions and what each bouncer was told.
#[derive(Debug)]
pub struct Decisions {
    path: PathBuf,
    state: Mutex<Saved>,
}

/// A fingerprint of an API key: what the state file keeps instead of it.
fn fingerprint(key: &str) -> String {
    // FNV-1a, 64 bits: stable across runs and versions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A duration as Go writes it (`3h59m12s`, `59m0s`, `5s`), to the second.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

impl Decisions {
    /// The decisions kept in `dir`; an unreadable file is set aside (and
    /// said so) and the decisions start afresh.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                let aside = path.with_extension("json.unreadable");
                warn!(%error, path = %path.display(), aside = %aside.display(),
                    "CrowdSec decisions unreadable: set aside; bouncers are told everything at their next startup call");
                let _ = std::fs::rename(&path, &aside);
                Saved::default()
            }),
            Err(_) => Saved::default(),
        };
        Decisions {
            path,
            state: Mutex::new(saved),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Saved> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `/v1/decisions/stream` for the bouncer with `key`: with `startup`,
    /// every active decision; else what changed since its last call.
    /// `firing`: the keys firing now; `None` while the rules' state is not
    /// restored yet (at start-up), when the decisions stand as they were.
    pub fn stream(
        &self,
        key: &str,
        startup: bool,
        firing: Option<&[Firing]>,
        now: SystemTime,
    ) -> Result<Stream, DecisionsError> {
        let mut state = self.lock();
        let mut changed = firing.is_some_and(|f| refresh(&mut state, f, now));
        // One decision per address or range, the longest, as the Local API
        // streams them: a bouncer keeps one ban per value, and a value is
        // deleted only when no decision holds it any more.
        let mut longest: BTreeMap<&str, &Active> = BTreeMap::new();
        for a in &state.active {
            let until = |a: &Active| (until_ms(a, now), std::cmp::Reverse(a.id));
            let slot = longest.entry(a.value.as_str()).or_insert(a);
            if until(a) > until(slot) {
                *slot = a;
            }
        }
        let current: BTreeMap<u64, DecisionView> =
            longest.values().map(|a| (a.id, view(a, now))).collect();
        let held: BTreeSet<String> = current.values().map(|d| d.value.clone()).collect();
        let told = state.told.entry(fingerprint(key)).or_default();
        let (new, deleted): (Vec<DecisionView>, Vec<DecisionView>) = if startup {
            (current.values().cloned().collect(), Vec::new())
        } else {
            let new = current
                .iter()
                .filter(|(id, _)| !told.contains_key(id))
                .map(|(_, d)| d.clone())
                .collect();
            let deleted = told
                .values()
                .filter(|d| !held.contains(&d.value))
                .map(|d| DecisionView {
                    duration: "0s".to_string(),
                    ..d.clone()
                })
                .collect();
            (new, deleted)
        };
        let known: BTreeSet<u64> = told.keys().copied().collect();
        if known != current.keys().copied().collect::<BTreeSet<u64>>() {
            *told = current;
            changed = true;
        }
        if changed {
            write_atomically(&self.path, &serde_json::to_vec(&*state).unwrap_or_default())?;
        }
        let some = |v: Vec<DecisionView>| (!v.is_empty()).then_some(v);
        Ok(Stream {
            new: some(new),
            deleted: some(deleted),
        })
    }

    /// `/v1/decisions`: the active decisions, those of one address (every
    /// decision whose address or range holds it) or one range (exactly).
    pub fn list(
        &self,
        firing: Option<&[Firing]>,
        now: SystemTime,
        ip: Option<IpKey>,
        range: Option<Network>,
    ) -> Result<Vec<DecisionView>, DecisionsError> {
        let mut state = self.lock();
        if firing.is_some_and(|f| refresh(&mut state, f, now)) {
            write_atomically(&self.path, &serde_json::to_vec(&*state).unwrap_or_default())?;
        }
        Ok(state
            .active
            .iter()
            .filter(|a| {
                let network = Network::parse(&a.value).or_else(|| {
                    crate::vocab::parse_ip(&a.value).map(|ip| Network::of(ip, 32, 128))
                });
                ip.is_none_or(|ip| network.is_some_and(|n| n.contains(ip)))
                    && range.is_none_or(|r| network == Some(r))
            })
            .map(|a| view(a, now))
            .collect())
    }
}

/// Brings the active decisions to the keys firing now: new ones get an
/// id, resolved ones without a `ban` still to run go. Returns whether
/// anything changed.
fn refresh(state: &mut Saved, firing: &[Firing], now: SystemTime) -> bool {
    let now_ms = epoch_ms(now);
    let mut changed = false;
    let blocking: Vec<&Firing> = firing.iter().filter(|f| f.block).collect();
    for a in &mut state.active {
        let fires = blocking
            .iter()
            .any(|f| *f.rule == a.rule && *f.key == a.value);
        if a.firing != fires {
            a.firing = fires;
            changed = true;
        }
    }
    let before = state.active.len();
    state
        .active
        .retain(|a| a.firing || a.ban_until_ms.is_some_and(|until| until > now_ms));
    changed |= state.active.len() != before;
    for f in blocking {
        if state
            .active
            .iter()
            .any(|a| a.rule == *f.rule && a.value == *f.key)
        {
            continue;
        }
        state.next_id += 1;
        let since_ms = epoch_ms(f.since.min(now));
        state.active.push(Active {
            id: state.next_id,
            rule: f.rule.to_string(),
            value: f.key.to_string(),
            since_ms,
            ban_until_ms: f
                .ban
                .map(|b| since_ms + i64::try_from(b.as_millis()).unwrap_or(i64::MAX / 2)),
            firing: true,
        });
        changed = true;
    }
    changed
}

/// When a decision ends, if nothing changes: its ban's end, and while its
/// key fires, [`OPEN_ENDED`] from now at the least.
fn until_ms(a: &Active, now: SystemTime) -> i64 {
    let mut until = a.ban_until_ms.unwrap_or(0);
    if a.firing {
        until = until.max(epoch_ms(now) + i64::try_from(OPEN_ENDED.as_millis()).unwrap_or(0));
    }
    until
}

fn view(a: &Active, now: SystemTime) -> DecisionView {
    let left = from_epoch_ms(until_ms(a, now))
        .duration_since(now)
        .unwrap_or_default();
    // The Local API's scopes: an AS decision's value is its number.
    let (scope, value) = match crate::vocab::Subject::parse(&a.value) {
        Some(crate::vocab::Subject::Asn(asn)) => ("AS", asn.to_string()),
        Some(crate::vocab::Subject::Country(country)) => ("Country", country.to_string()),
        _ if a.value.contains('/') => ("Range", a.value.clone()),
        _ => ("Ip", a.value.clone()),
    };
    DecisionView {
        id: a.id,
        origin: "ipstats".to_string(),
        kind: "ban".to_string(),
        scope: scope.to_string(),
        value,
        duration: go_duration(left),
        scenario: format!("ipstats/{}", a.rule),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn firing(rule: &str, key: &str, since: SystemTime, ban: Option<Duration>) -> Firing {
        Firing {
            rule: Arc::from(rule),
            key: Arc::from(key),
            value: 10,
            upper: None,
            threshold: 5,
            since,
            severity: Arc::from("warning"),
            block: true,
            ban,
            subject: crate::vocab::Network::parse(key)
                .or_else(|| crate::vocab::parse_ip(key).map(|ip| Network::of(ip, 32, 128)))
                .map(crate::vocab::Subject::Net)
                .or_else(|| crate::vocab::Subject::parse(key))
                .expect("a key"),
            description: Arc::from(""),
        }
    }

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ipstats-decisions-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn go_durations_read_as_go_writes_them() {
        assert_eq!(go_duration(Duration::from_secs(14352)), "3h59m12s");
        assert_eq!(go_duration(Duration::from_secs(3540)), "59m0s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn owner_keys_are_decisions_of_the_local_api_s_as_and_country_scopes() {
        let dir = dir();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = Decisions::open(&dir);
        let owners = [
            firing("cloud", "AS64501", t0, None),
            firing("land", "DE", t0, None),
        ];
        let new = d
            .stream("key-a", true, Some(&owners), t0)
            .expect("stream")
            .new
            .expect("new");
        let got: Vec<(&str, &str)> = new
            .iter()
            .map(|d| (d.scope.as_str(), d.value.as_str()))
            .collect();
        assert_eq!(got, vec![("AS", "64501"), ("Country", "DE")]);
        // No address is held by them.
        let ip = crate::vocab::parse_ip("10.1.2.3");
        assert!(
            d.list(Some(&owners), t0, ip, None)
                .expect("list")
                .is_empty()
        );
    }

    #[test]
    fn each_bouncer_hears_what_changed_and_a_restart_forgets_nothing() {
        let dir = dir();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = Decisions::open(&dir);
        let hot = [
            firing("hot", "10.1.2.3", t0, None),
            firing("net", "10.9.0.0/16", t0, None),
        ];
        let s = d.stream("key-a", true, Some(&hot), t0).expect("stream");
        let new = s.new.expect("new");
        assert_eq!(new.len(), 2);
        assert_eq!(
            (new[0].scope.as_str(), new[0].value.as_str()),
            ("Ip", "10.1.2.3")
        );
        assert_eq!(new[1].scope, "Range");
        assert_eq!(new[0].duration, "24h0m0s");
        assert_eq!(new[0].scenario, "ipstats/hot");
        assert!(s.deleted.is_none());
        // Nothing changed: nothing new; another bouncer hears everything.
        assert_eq!(
            d.stream("key-a", false, Some(&hot), t0).expect("again"),
            Stream {
                new: None,
                deleted: None
            }
        );
        assert_eq!(
            d.stream("key-b", false, Some(&hot), t0)
                .expect("b")
                .new
                .map(|n| n.len()),
            Some(2)
        );
        // A restart: the same state from the file.
        drop(d);
        let d = Decisions::open(&dir);
        let only = [firing("net", "10.9.0.0/16", t0, None)];
        let s = d
            .stream("key-a", false, Some(&only), t0 + Duration::from_secs(1))
            .expect("after restart");
        assert!(s.new.is_none());
        let deleted = s.deleted.expect("deleted");
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].value, "10.1.2.3");
        // The list: one address finds the range holding it.
        let listed = d
            .list(Some(&only), t0, crate::vocab::parse_ip("10.9.8.7"), None)
            .expect("list");
        assert_eq!(listed.len(), 1);
        assert!(
            d.list(Some(&only), t0, crate::vocab::parse_ip("192.0.2.1"), None)
                .expect("list")
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_ban_outlives_its_rule_and_then_goes() {
        let dir = dir();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = Decisions::open(&dir);
        let ban = Some(Duration::from_secs(4 * 3600));
        let hot = [firing("hot", "10.1.2.3", t0, ban)];
        assert!(
            d.stream("k", true, Some(&hot), t0)
                .expect("fires")
                .new
                .is_some()
        );
        // Resolved after a minute: still banned, for what is left of 4 h.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(
            d.stream("k", false, Some(&[]), t1).expect("resolved"),
            Stream {
                new: None,
                deleted: None
            }
        );
        let left = d.list(Some(&[]), t1, None, None).expect("list");
        assert_eq!(left[0].duration, "3h59m0s");
        // After the ban: deleted.
        let t2 = t0 + Duration::from_secs(4 * 3600 + 1);
        let gone = d
            .stream("k", false, Some(&[]), t2)
            .expect("expired")
            .deleted
            .expect("deleted");
        assert_eq!(gone[0].value, "10.1.2.3");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_value_is_one_ban_and_is_deleted_only_when_no_rule_holds_it() {
        let dir = dir();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = Decisions::open(&dir);
        let hour = Some(Duration::from_secs(3600));
        let both = [
            firing("hot", "10.1.2.3", t0, None),
            firing("banned", "10.1.2.3", t0, hour),
        ];
        let new = d
            .stream("k", true, Some(&both), t0)
            .expect("startup")
            .new
            .expect("new");
        assert_eq!(new.len(), 1, "{new:?}");
        assert_eq!(d.list(Some(&both), t0, None, None).expect("list").len(), 2);
        // Both resolve: the ban holds the value, so nothing is deleted; it
        // comes as the value's decision now.
        let t1 = t0 + Duration::from_secs(60);
        let s = d.stream("k", false, Some(&[]), t1).expect("resolved");
        assert!(s.deleted.is_none(), "{s:?}");
        let banned = s.new.expect("the ban now");
        assert_eq!(
            (banned[0].scenario.as_str(), banned[0].duration.as_str()),
            ("ipstats/banned", "59m0s")
        );
        let t2 = t0 + Duration::from_secs(3601);
        let gone = d
            .stream("k", false, Some(&[]), t2)
            .expect("expired")
            .deleted
            .expect("deleted");
        assert_eq!(gone.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_file_is_set_aside() {
        let dir = dir();
        std::fs::write(dir.join(FILE), b"{not json").expect("write");
        let d = Decisions::open(&dir);
        assert!(
            d.list(Some(&[]), SystemTime::now(), None, None)
                .expect("list")
                .is_empty()
        );
        assert!(dir.join("decisions.json.unreadable").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
