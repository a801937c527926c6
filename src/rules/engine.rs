//! Rule evaluation at every slide, on event time.
//!
//! Rules that count the same key over the same window share one running
//! count ([`Aggregate`]): at each slide the panes that entered its range are
//! added and those that left (or were replaced, when late records joined a
//! pane) subtracted, so a slide costs what its changed panes hold, not what
//! the window holds. Each aggregate also keeps the keys at or above the
//! lowest count any of its rules could fire at (the "floor"), updated as
//! counts cross it; a slide looks only at those, never at every address.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap;

use super::aggregate::Aggregate;
use super::file::{Key, Rule};
use super::{AlertsView, Firing, SavedAlerts, SavedRule, State, Transition, WindowBounds};
use crate::vocab::{IpKey, Subject};
use crate::window::Pane;

/// Transitions kept for `/api/v1/alerts`.
const RECENT_TRANSITIONS: usize = 1000;
/// Of those, kept in the checkpoint.
const SAVED_TRANSITIONS: usize = 100;

/// A rule with its keys' states and resolve times, carried over a reload.
type RuleState = (
    Rule,
    FxHashMap<Subject, KeyState>,
    FxHashMap<Subject, SystemTime>,
);

/// What one rule knows about one key.
#[derive(Clone, Debug)]
enum KeyState {
    /// Over the threshold since this event time, not yet for `for`.
    Pending { since: SystemTime },
    /// `text` is the key as `/api/v1/alerts` shows it, made once.
    Firing { since: SystemTime, text: Arc<str> },
}

/// A rule's words as every view shows them: shared, not copied per view.
#[derive(Debug)]
struct Labels {
    name: Arc<str>,
    severity: Arc<str>,
    description: Arc<str>,
}

impl Labels {
    fn of(rule: &Rule) -> Self {
        Labels {
            name: rule.name.as_str().into(),
            severity: rule.severity.as_str().into(),
            description: rule.description.as_str().into(),
        }
    }
}

/// The rules and their state.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    /// Of each rule.
    labels: Vec<Labels>,
    /// The rules' indices in name order (the order of the view).
    by_name: Vec<usize>,
    aggregates: Vec<Aggregate>,
    /// The aggregate of each rule.
    of_rule: Vec<usize>,
    states: Vec<FxHashMap<Subject, KeyState>>,
    /// Each rule's firing keys in address order, with since when and their
    /// text: what the view lists, made again only when the rule's firing
    /// keys change, not at every slide.
    firing: Vec<Vec<(Subject, SystemTime, Arc<str>)>>,
    /// When each rule last resolved each key (for `cooldown`).
    resolved: Vec<FxHashMap<Subject, SystemTime>>,
    transitions: VecDeque<Arc<Transition>>,
    recorded: u64,
    batch: Duration,
    /// Keys that fired under a rule since changed or removed: they resolve
    /// at the next slide.
    retired: Vec<Retired>,
}

/// What one running count needs from a cluster's counts (see [`Engine::wanted`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub key: super::file::Key,
    pub panes: usize,
    pub floor: u64,
    pub keys: Vec<Subject>,
}

/// A firing key of a rule that is no longer in force.
#[derive(Debug)]
struct Retired {
    rule: Rule,
    key: Subject,
    value: u64,
    upper: Option<u64>,
    threshold: u64,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, batch: Duration) -> Self {
        let mut engine = Engine {
            rules: Vec::new(),
            labels: Vec::new(),
            by_name: Vec::new(),
            aggregates: Vec::new(),
            of_rule: Vec::new(),
            states: Vec::new(),
            firing: Vec::new(),
            resolved: Vec::new(),
            transitions: VecDeque::new(),
            recorded: 0,
            batch,
            retired: Vec::new(),
        };
        engine.replace(rules);
        engine
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// How many of the newest panes the longest rule's window covers.
    pub fn panes_needed(&self) -> usize {
        self.aggregates.iter().map(|a| a.panes).max().unwrap_or(0)
    }

    /// New rules (a reloaded file): the state of rules that are unchanged
    /// (same name and definition) carries over; the keys firing under a
    /// rule that changed or went resolve at the next slide; the running
    /// counts are rebuilt at the next slide.
    pub fn replace(&mut self, rules: Vec<Rule>) {
        let mut old: HashMap<String, RuleState> = HashMap::new();
        for (r, ((rule, state), resolved)) in std::mem::take(&mut self.rules)
            .into_iter()
            .zip(std::mem::take(&mut self.states))
            .zip(std::mem::take(&mut self.resolved))
            .enumerate()
        {
            if !rules.contains(&rule) {
                let aggregate = &self.aggregates[self.of_rule[r]];
                let threshold = rule.threshold.needed(aggregate.total).unwrap_or(u64::MAX);
                for (key, s) in &state {
                    if let KeyState::Firing { .. } = s {
                        let value = aggregate.counts.get(key).unwrap_or(0);
                        self.retired.push(Retired {
                            rule: rule.clone(),
                            key: *key,
                            value,
                            upper: aggregate.upper(value),
                            threshold,
                        });
                    }
                }
            }
            old.insert(rule.name.clone(), (rule, state, resolved));
        }
        self.retired
            .sort_by(|a, b| a.rule.name.cmp(&b.rule.name).then(a.key.cmp(&b.key)));
        self.aggregates.clear();
        self.of_rule.clear();
        for rule in &rules {
            let panes = (rule.window.as_nanos() / self.batch.as_nanos().max(1)) as usize;
            let floor = rule.threshold.floor();
            let at = match self
                .aggregates
                .iter()
                .position(|a| a.key == rule.key && a.panes == panes)
            {
                Some(at) => {
                    let aggregate = &mut self.aggregates[at];
                    aggregate.floor = aggregate.floor.min(floor);
                    at
                }
                None => {
                    self.aggregates.push(Aggregate::new(rule.key, panes, floor));
                    self.aggregates.len() - 1
                }
            };
            self.of_rule.push(at);
            match old.remove(&rule.name) {
                Some((before, state, resolved)) if before == *rule => {
                    self.states.push(state);
                    self.resolved.push(resolved);
                }
                _ => {
                    self.states.push(FxHashMap::default());
                    self.resolved.push(FxHashMap::default());
                }
            }
        }
        self.labels = rules.iter().map(Labels::of).collect();
        self.by_name = (0..rules.len()).collect();
        self.by_name
            .sort_by(|&a, &b| rules[a].name.cmp(&rules[b].name));
        self.rules = rules;
        self.refresh_firing();
    }

    /// Every rule's firing keys made again from its states.
    fn refresh_firing(&mut self) {
        self.firing = (0..self.states.len()).map(|r| self.firing_of(r)).collect();
    }

    /// Rule `r`'s firing keys in address order.
    fn firing_of(&self, r: usize) -> Vec<(Subject, SystemTime, Arc<str>)> {
        let mut firing: Vec<(Subject, SystemTime, Arc<str>)> = self.states[r]
            .iter()
            .filter_map(|(key, state)| match state {
                KeyState::Firing { since, text } => Some((*key, *since, text.clone())),
                KeyState::Pending { .. } => None,
            })
            .collect();
        firing.sort_unstable_by_key(|f| f.0);
        firing
    }

    /// One slide: the kept panes (oldest first, the window's last) and the
    /// window's end in event time. Returns the new transitions.
    pub fn evaluate(&mut self, kept: &[Arc<Pane>], end: SystemTime) -> Vec<Transition> {
        self.evaluate_kept(&[], kept, end)
    }

    /// [`Engine::evaluate`] with the kept panes in two parts, as a snapshot
    /// holds them: those older than the window, then the window's.
    pub fn evaluate_kept(
        &mut self,
        older: &[Arc<Pane>],
        window: &[Arc<Pane>],
        end: SystemTime,
    ) -> Vec<Transition> {
        for aggregate in &mut self.aggregates {
            aggregate.sync(older, window);
        }
        self.judge(end)
    }

    /// What the counts of a cluster must cover, one entry per running
    /// count: its key kind, its window in panes, the least count that can
    /// matter, and the keys pending or firing (their counts are needed
    /// whatever they are).
    pub fn wanted(&self) -> Vec<Wanted> {
        self.aggregates
            .iter()
            .enumerate()
            .map(|(a, aggregate)| {
                let mut keys: Vec<Subject> = self
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(r, _)| self.of_rule[*r] == a)
                    .flat_map(|(r, _)| self.states[r].keys().copied())
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                Wanted {
                    key: aggregate.key,
                    panes: aggregate.panes,
                    floor: aggregate.floor,
                    keys,
                }
            })
            .collect()
    }

    /// One slide on counts made elsewhere (the cluster's): `counted[a]`
    /// is running count `a`'s total and the counts of at least every key
    /// at or above its floor and every key [`Engine::wanted`] named.
    pub fn evaluate_counted(
        &mut self,
        counted: Vec<(u64, FxHashMap<Subject, u64>)>,
        end: SystemTime,
    ) -> Vec<Transition> {
        for (aggregate, (total, counts)) in self.aggregates.iter_mut().zip(counted) {
            aggregate.install(total, counts);
        }
        self.judge(end)
    }

    /// The rules against the running counts at `end`: the new transitions.
    fn judge(&mut self, end: SystemTime) -> Vec<Transition> {
        let mut new: Vec<Transition> = std::mem::take(&mut self.retired)
            .into_iter()
            .map(|r| {
                let window = WindowBounds::ending(end, r.rule.window);
                transition(
                    &r.rule,
                    r.key,
                    State::Resolved,
                    (r.value, r.upper),
                    r.threshold,
                    window,
                    end,
                )
            })
            .collect();
        // Each running count's keys at or over its floor, highest first,
        // made once: a rule takes those over its own threshold from the
        // front, however many rules share the count.
        let ranked: Vec<Vec<(Subject, u64)>> = self
            .aggregates
            .iter()
            .map(|aggregate| {
                let mut keys: Vec<(Subject, u64)> = aggregate
                    .above
                    .iter()
                    .filter_map(|k| aggregate.counts.get(k).map(|c| (*k, c)))
                    .collect();
                keys.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                keys
            })
            .collect();
        let mut changed = Vec::new();
        for (r, rule) in self.rules.iter().enumerate() {
            let aggregate = &self.aggregates[self.of_rule[r]];
            let window = WindowBounds::ending(end, rule.window);
            let needed = rule.threshold.needed(aggregate.total);
            let over: &[(Subject, u64)] = match needed {
                None => &[],
                Some(needed) => {
                    let keys = &ranked[self.of_rule[r]];
                    &keys[..keys.partition_point(|(_, c)| *c >= needed)]
                }
            };
            let is_over = |key: &Subject| {
                needed.is_some_and(|n| aggregate.counts.get(key).unwrap_or(0) >= n)
                    && !rule.allowed(*key)
            };
            let threshold = needed.unwrap_or(u64::MAX);
            let states = &mut self.states[r];
            let resolved = &mut self.resolved[r];
            resolved.retain(|_, at| end.duration_since(*at).unwrap_or_default() < rule.cooldown);
            // Keys no longer over the threshold.
            let gone: Vec<Subject> = states.keys().filter(|k| !is_over(k)).copied().collect();
            let before = new.len();
            for key in gone {
                if let Some(KeyState::Firing { .. }) = states.remove(&key) {
                    let value = aggregate.counts.get(&key).unwrap_or(0);
                    resolved.insert(key, end);
                    new.push(transition(
                        rule,
                        key,
                        State::Resolved,
                        (value, aggregate.upper(value)),
                        threshold,
                        window,
                        end,
                    ));
                }
            }
            for &(key, value) in over {
                if rule.allowed(key) {
                    continue;
                }
                let (since, pending) = match states.get(&key) {
                    Some(KeyState::Firing { .. }) => continue,
                    Some(KeyState::Pending { since }) => (*since, true),
                    None => (end, false),
                };
                let held = end.duration_since(since).unwrap_or_default() >= rule.hold_for;
                if held && !resolved.contains_key(&key) {
                    let bounds = (value, aggregate.upper(value));
                    let t = transition(rule, key, State::Firing, bounds, threshold, window, end);
                    let text = t.key.as_str().into();
                    states.insert(key, KeyState::Firing { since: end, text });
                    new.push(t);
                } else if !pending {
                    states.insert(key, KeyState::Pending { since });
                }
            }
            if new.len() > before {
                changed.push(r);
            }
        }
        for r in changed {
            self.firing[r] = self.firing_of(r);
        }
        for t in &mut new {
            self.record(t.clone());
            t.seq = self.recorded;
        }
        new
    }

    /// What a restart needs to go on where this run stands: which keys are
    /// pending or firing since when, and which resolved when (cooldown).
    pub fn save(&self) -> SavedAlerts {
        let ms = |t: &SystemTime| crate::vocab::epoch_ms(*t);
        let sorted = |mut v: Vec<(String, i64)>| {
            v.sort();
            v
        };
        let rules = self
            .rules
            .iter()
            .zip(&self.states)
            .zip(&self.resolved)
            .map(|((rule, states), resolved)| {
                let (mut firing, mut pending) = (Vec::new(), Vec::new());
                for (key, state) in states {
                    match state {
                        KeyState::Firing { since, .. } => firing.push((key.to_string(), ms(since))),
                        KeyState::Pending { since } => pending.push((key.to_string(), ms(since))),
                    }
                }
                SavedRule {
                    name: rule.name.clone(),
                    definition: definition(rule),
                    firing: sorted(firing),
                    pending: sorted(pending),
                    resolved: sorted(
                        resolved
                            .iter()
                            .map(|(k, t)| (k.to_string(), ms(t)))
                            .collect(),
                    ),
                }
            })
            .collect();
        let skip = self.transitions.len().saturating_sub(SAVED_TRANSITIONS);
        SavedAlerts {
            rules,
            // `seq` orders one run's transitions; a restart numbers afresh.
            transitions: self
                .transitions
                .iter()
                .skip(skip)
                .map(|t| Transition {
                    seq: 0,
                    ..Transition::clone(t)
                })
                .collect(),
        }
    }

    /// Takes up the state a previous run saved, for the rules whose name
    /// and definition are unchanged (a rule changed meanwhile starts
    /// afresh). Keys still over their threshold go on firing without a new
    /// transition; those that fell resolve at the next slide.
    pub fn restore(&mut self, saved: &SavedAlerts) {
        let time = |ms: i64| crate::vocab::from_epoch_ms(ms);
        for (r, rule) in self.rules.iter().enumerate() {
            let Some(old) = saved
                .rules
                .iter()
                .find(|s| s.name == rule.name && s.definition == definition(rule))
            else {
                continue;
            };
            let keys = |list: &[(String, i64)]| -> Vec<(Subject, SystemTime)> {
                list.iter()
                    .filter_map(|(k, ms)| Subject::parse(k).map(|n| (n, time(*ms))))
                    .collect()
            };
            for (key, since) in keys(&old.pending) {
                self.states[r].insert(key, KeyState::Pending { since });
            }
            for (key, since) in keys(&old.firing) {
                let text = key_text(key, rule.key).into();
                self.states[r].insert(key, KeyState::Firing { since, text });
            }
            self.resolved[r].extend(keys(&old.resolved));
        }
        for t in &saved.transitions {
            self.record(t.clone());
        }
        self.refresh_firing();
    }

    fn record(&mut self, mut t: Transition) {
        self.recorded += 1;
        t.seq = self.recorded;
        if self.transitions.len() == RECENT_TRANSITIONS {
            self.transitions.pop_front();
        }
        self.transitions.push_back(Arc::new(t));
    }

    /// What `/api/v1/alerts` and `/api/v1/blocklist` show.
    pub fn view(&self) -> AlertsView {
        // Rule by rule in name order, each rule's keys in address order:
        // no text is made here, only shared.
        let mut firing = Vec::with_capacity(self.firing.iter().map(Vec::len).sum());
        for &r in &self.by_name {
            let (rule, labels) = (&self.rules[r], &self.labels[r]);
            let aggregate = &self.aggregates[self.of_rule[r]];
            let threshold = rule.threshold.needed(aggregate.total).unwrap_or(u64::MAX);
            for (key, since, text) in &self.firing[r] {
                let value = aggregate.counts.get(key).unwrap_or(0);
                firing.push(Firing {
                    rule: labels.name.clone(),
                    key: text.clone(),
                    value,
                    upper: aggregate.upper(value),
                    threshold,
                    since: *since,
                    block: rule.block,
                    ban: rule.ban,
                    severity: labels.severity.clone(),
                    subject: *key,
                    description: labels.description.clone(),
                });
            }
        }
        AlertsView {
            firing,
            transitions: self.transitions.iter().rev().cloned().collect(),
        }
    }

    /// Keys firing per rule (for `ipstats_alerts_firing{rule}`).
    pub fn firing_counts(&self) -> Vec<(&str, usize)> {
        self.rules
            .iter()
            .zip(&self.firing)
            .map(|(rule, firing)| (rule.name.as_str(), firing.len()))
            .collect()
    }
}

/// A rule's definition as saved with its state: a restart takes the state
/// up only for the same definition.
fn definition(rule: &Rule) -> String {
    // Rules saved before `ban` existed read as they did.
    format!("{rule:?}").replace(", ban: None", "")
}

/// An address for `ip` rules, CIDR for networks.
fn key_text(subject: Subject, key: Key) -> String {
    match (key, subject) {
        (Key::Ip, Subject::Net(network)) => IpKey::from_bits(network.bounds().0).to_string(),
        _ => subject.to_string(),
    }
}

/// A transition; its id is the same whenever the same rule, key, state
/// and time recur (a restart evaluating the same slide again), so receivers
/// can drop repeats.
#[allow(clippy::too_many_arguments)]
fn transition(
    rule: &Rule,
    key: Subject,
    state: State,
    (value, upper): (u64, Option<u64>),
    threshold: u64,
    window: WindowBounds,
    at: SystemTime,
) -> Transition {
    use std::hash::{Hash, Hasher};
    let mut hasher = rustc_hash::FxHasher::default();
    (rule.name.as_str(), key, state as u8, at).hash(&mut hasher);
    Transition {
        id: format!("{:016x}", hasher.finish()),
        rule: rule.name.clone(),
        key: key_text(key, rule.key),
        state,
        value,
        upper,
        threshold,
        window,
        at,
        severity: rule.severity.clone(),
        description: rule.description.clone(),
        seq: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::file::{Limits, parse};
    use crate::vocab::{SkipCounts, parse_ip};
    use crate::window::{IpMap, PaneCounts};
    use rustc_hash::FxHashSet;
    use std::time::UNIX_EPOCH;

    const S: Duration = Duration::from_secs(1);

    fn pane(second: u64, records: &[(&str, u32)]) -> Arc<Pane> {
        let mut counts = IpMap::default();
        for (ip, n) in records {
            counts.add(parse_ip(ip).expect("ip"), *n);
        }
        Arc::new(Pane {
            owners: None,
            seq: second,
            start: UNIX_EPOCH + S * second as u32,
            end: UNIX_EPOCH + S * (second as u32 + 1),
            counts: PaneCounts::from(&counts),
            requests: records.iter().map(|r| u64::from(r.1)).sum(),
            skipped: SkipCounts::default(),
            ranges: Vec::new(),
        })
    }

    fn engine(text: &str) -> Engine {
        let limits = Limits {
            batch: S,
            retention: S * 60,
            asn_db: true,
            country_db: true,
        };
        Engine::new(parse(text, limits).expect("rules"), S)
    }

    /// A summarized pane: 4,000 addresses of one /64 once each, and ten
    /// IPv4 addresses `heavy` times each, kept to 16 keys a level.
    fn rotating(second: u64, heavy: u32) -> Arc<Pane> {
        let mut counts = IpMap::default();
        for host in 0..4000u128 {
            counts.add(
                IpKey::from_bits((0x2001_0db8_0000_0007u128 << 64) | host),
                1,
            );
        }
        for host in 0..10u32 {
            counts.add(IpKey::from_v4_bits(0x0a00_0000 | host), heavy);
        }
        let exact = PaneCounts::from(&counts);
        let summarized = exact.summarized(16);
        assert!(!summarized.is_exact() && summarized.len() <= 16);
        Arc::new(Pane {
            counts: summarized,
            requests: 4000 + 10 * u64::from(heavy),
            ..Pane::clone(&pane(second, &[]))
        })
    }

    #[test]
    fn over_summarized_panes_rules_fire_on_the_lower_bound_and_report_the_upper() {
        let mut e = engine(
            "[[rule]]\nname = \"net\"\nkey = \"v6/64\"\nwindow = \"2s\"\nrequests = 6000\n\
             [[rule]]\nname = \"addr\"\nkey = \"ip\"\nwindow = \"2s\"\nrequests = 300\n",
        );
        let panes = [rotating(0, 100), rotating(1, 100)];
        let fired = run(&mut e, &panes);
        assert!(
            fired.iter().any(|(_, rule, key, s)| rule == "net"
                && key == "2001:db8:0:7::/64"
                && *s == State::Firing),
            "{fired:?}"
        );
        // Each address made 200 requests: an estimation error never makes 300.
        assert!(
            !fired.iter().any(|(_, rule, _, _)| rule == "addr"),
            "{fired:?}"
        );
        let view = e.view();
        let net = view
            .firing
            .iter()
            .find(|f| &*f.rule == "net")
            .expect("firing");
        let upper = net.upper.expect("summarized panes report the upper bound");
        assert!(net.value <= 8000 && 8000 <= upper, "{} {upper}", net.value);
        assert!(net.value >= 6000);
    }

    /// A pane whose owners are known: 10.0.0.0/16 is AS 64500 in DE, the
    /// rest AS 0.
    fn owned(second: u64, records: &[(&str, u32)]) -> Arc<Pane> {
        let plain = pane(second, records);
        let owner = |ip: IpKey| {
            if crate::vocab::Network::parse("10.0.0.0/16")
                .expect("network")
                .contains(ip)
            {
                crate::owners::Owner {
                    asn: 64500,
                    country: crate::vocab::Country::parse("DE").expect("DE"),
                }
            } else {
                crate::owners::Owner::default()
            }
        };
        let owners = crate::window::PaneOwners::of(&plain.counts, owner);
        Arc::new(Pane {
            owners: Some(Arc::new(owners)),
            ..Pane::clone(&plain)
        })
    }

    #[test]
    fn an_as_crossed_by_many_addresses_fires_though_none_crosses_alone() {
        let mut e = engine(
            "[[rule]]\nname = \"cloud\"\nkey = \"asn\"\nwindow = \"2s\"\nrequests = 100\nblock = true\n\
             [[rule]]\nname = \"addr\"\nkey = \"ip\"\nwindow = \"2s\"\nrequests = 100\n\
             [[rule]]\nname = \"land\"\nkey = \"country\"\nwindow = \"2s\"\nrequests = 100\nallow = [\"DE\"]\n",
        );
        // 60 addresses of the AS, 1 request each per second; one address
        // elsewhere with 40.
        let records: Vec<String> = (0..60).map(|i| format!("10.0.{i}.1")).collect();
        let mut second: Vec<(&str, u32)> = records.iter().map(|r| (r.as_str(), 1)).collect();
        second.push(("192.0.2.1", 40));
        let panes = [owned(0, &second), owned(1, &second)];
        let fired = run(&mut e, &panes);
        assert_eq!(
            fired,
            vec![(2, "cloud".to_string(), "AS64500".to_string(), State::Firing)],
            "the AS fires at 120; no address, and DE is allowed"
        );
        let view = e.view();
        assert_eq!(view.firing[0].value, 120);
        assert_eq!(view.firing[0].subject, Subject::Asn(64500));
    }

    /// Runs slides over `panes` (one per second) and returns every
    /// transition as (second, rule, key, state).
    fn run(engine: &mut Engine, panes: &[Arc<Pane>]) -> Vec<(u64, String, String, State)> {
        let mut out = Vec::new();
        for i in 0..panes.len() {
            let end = panes[i].end;
            for t in engine.evaluate(&panes[..=i], end) {
                let second = t.at.duration_since(UNIX_EPOCH).expect("epoch").as_secs();
                out.push((second, t.rule, t.key, t.state));
            }
        }
        out
    }

    #[test]
    fn a_key_fires_when_its_window_count_crosses_and_resolves_when_it_falls() {
        let mut e = engine(
            "[[rule]]\nname = \"hot\"\nkey = \"ip\"\nwindow = \"3s\"\nrequests = 10\nblock = true\nallow = [\"10.9.0.0/16\"]\n",
        );
        let panes: Vec<Arc<Pane>> = (0..8)
            .map(|s| match s {
                1..=3 => pane(s, &[("10.0.0.1", 4), ("10.9.1.1", 50), ("10.0.0.2", 1)]),
                _ => pane(s, &[("10.0.0.2", 1)]),
            })
            .collect();
        let seen = run(&mut e, &panes);
        // The window [end − 3 s, end): 8 at end 3, 12 at end 4, 8 at end 5.
        assert_eq!(
            seen,
            [
                (4, "hot".into(), "10.0.0.1".into(), State::Firing),
                (5, "hot".into(), "10.0.0.1".into(), State::Resolved),
            ],
            "the allowed network never fires"
        );
        let view = e.view();
        assert!(view.firing.is_empty());
        assert_eq!(view.transitions.len(), 2);
        assert_eq!(view.transitions[0].state, State::Resolved, "newest first");
        assert_ne!(view.transitions[0].id, view.transitions[1].id);
    }

    #[test]
    fn for_holds_back_and_cooldown_suppresses_a_second_firing() {
        let mut e = engine(
            "[[rule]]\nname = \"r\"\nkey = \"ip\"\nwindow = \"1s\"\nrequests = 5\nfor = \"2s\"\ncooldown = \"5s\"\n",
        );
        let busy = |s| pane(s, &[("192.0.2.1", 5)]);
        let quiet = |s| pane(s, &[("192.0.2.1", 1)]);
        let panes = vec![
            busy(0),
            busy(1),
            busy(2),  // over from end 1: fires at end 3 (held 2 s)
            quiet(3), // resolves at end 4
            busy(4),
            busy(5),
            busy(6),
            busy(7), // over again, but within the cooldown until end 9
            busy(8),
            busy(9),
            busy(10),
        ];
        let seen: Vec<(u64, State)> = run(&mut e, &panes)
            .into_iter()
            .map(|t| (t.0, t.3))
            .collect();
        assert_eq!(
            seen,
            [(3, State::Firing), (4, State::Resolved), (9, State::Firing)]
        );
        assert_eq!(e.firing_counts(), [("r", 1)]);
    }

    #[test]
    fn networks_and_shares_count_their_family_only() {
        let mut e = engine(concat!(
            "[[rule]]\nname = \"net\"\nkey = \"v4/24\"\nwindow = \"2s\"\nrequests = 6\n",
            "[[rule]]\nname = \"six\"\nkey = \"v6/64\"\nwindow = \"2s\"\nshare = 0.5\nmin_total = 20\n",
        ));
        let mut records: Vec<(String, u32)> =
            (1..=4).map(|i| (format!("203.0.113.{i}"), 1)).collect();
        records.extend((1..=12).map(|i| (format!("2001:db8:1:2::{i:x}"), 1)));
        let refs: Vec<(&str, u32)> = records.iter().map(|(a, n)| (a.as_str(), *n)).collect();
        let panes = vec![pane(0, &refs), pane(1, &refs)];
        let seen = run(&mut e, &panes);
        // At end 1: total 16 < min_total; /24 has 4. At end 2: /24 has 8 ≥ 6,
        // the /64 24 of 32 = 75 % ≥ 50 %.
        assert_eq!(
            seen,
            [
                (2, "net".into(), "203.0.113.0/24".into(), State::Firing),
                (2, "six".into(), "2001:db8:1:2::/64".into(), State::Firing),
            ]
        );
    }

    #[test]
    fn a_pane_that_received_late_records_is_counted_anew() {
        let mut e = engine("[[rule]]\nname = \"r\"\nkey = \"ip\"\nwindow = \"2s\"\nrequests = 5\n");
        let first = pane(0, &[("198.51.100.7", 3)]);
        assert!(
            e.evaluate(std::slice::from_ref(&first), first.end)
                .is_empty()
        );
        // The same pane with two more records (event time: within lateness).
        let merged = Arc::new(first.merged((*pane(0, &[("198.51.100.7", 2)])).clone()));
        let fired = e.evaluate(std::slice::from_ref(&merged), merged.end);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].value, 5, "not 8: the old version was subtracted");
    }

    #[test]
    fn a_reload_keeps_the_state_of_unchanged_rules() {
        let text = "[[rule]]\nname = \"r\"\nkey = \"ip\"\nwindow = \"1s\"\nrequests = 1\n";
        let mut e = engine(text);
        let p = pane(0, &[("192.0.2.9", 1)]);
        assert_eq!(e.evaluate(std::slice::from_ref(&p), p.end).len(), 1);
        let limits = Limits {
            batch: S,
            retention: S * 60,
            asn_db: true,
            country_db: true,
        };
        e.replace(parse(text, limits).expect("same rules"));
        assert!(
            e.evaluate(std::slice::from_ref(&p), p.end).is_empty(),
            "still firing, no new transition"
        );
        e.replace(parse(&text.replace("requests = 1", "requests = 2"), limits).expect("changed"));
        let after = e.evaluate(std::slice::from_ref(&p), p.end);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].state, State::Resolved, "the old definition's key");
        assert!(e.view().firing.is_empty(), "a changed rule starts afresh");
    }

    #[test]
    fn a_restart_goes_on_firing_without_a_new_transition_and_keeps_the_cooldown() {
        let text = "[[rule]]\nname = \"r\"\nkey = \"ip\"\nwindow = \"2s\"\nrequests = 4\ncooldown = \"10s\"\n[[rule]]\nname = \"n\"\nkey = \"v4/24\"\nwindow = \"2s\"\nrequests = 100\nfor = \"5s\"\n";
        let mut e = engine(text);
        // 60 addresses of one /24, once each per second: only the /24 counts.
        let net: Vec<String> = (1..=60).map(|i| format!("198.51.100.{i}")).collect();
        let slide = |second: u64, hot: &[&str]| {
            let mut records: Vec<(&str, u32)> = net.iter().map(|a| (a.as_str(), 1)).collect();
            records.extend(hot.iter().map(|a| (*a, 4)));
            pane(second, &records)
        };
        let panes = [
            slide(0, &["192.0.2.1"]), // fires at end 1
            slide(1, &["192.0.2.2"]), // fires at end 2; the /24 pending since 2
            slide(2, &[]),            // 192.0.2.1 resolves at end 3
        ];
        let fired = run(&mut e, &panes);
        assert_eq!(fired.len(), 3, "{fired:?}");
        let saved = e.save();
        assert_eq!(saved.rules[0].firing.len(), 1, "192.0.2.2: {saved:?}");
        assert_eq!(saved.rules[0].resolved.len(), 1, "192.0.2.1 cools down");
        assert_eq!(saved.rules[1].pending.len(), 1, "the /24 waits for `for`");
        let text_back = serde_json::to_string(&saved).expect("json");
        let saved: super::SavedAlerts = serde_json::from_str(&text_back).expect("back");

        // A new run over the same panes: nothing fires again.
        let mut after = engine(text);
        after.restore(&saved);
        assert_eq!(after.save(), saved);
        assert_eq!(after.view().transitions, e.view().transitions);
        assert!(after.evaluate(&panes, panes[2].end).is_empty());
        assert_eq!(after.view().firing, e.view().firing);
        // 192.0.2.1 again within its cooldown: still quiet; the /24's
        // pending time carried over, so it fires 5 s after it began.
        let mut all: Vec<Arc<Pane>> = panes.to_vec();
        let mut seen = Vec::new();
        for second in 3..9 {
            all.push(slide(second, &["192.0.2.1", "192.0.2.2"]));
            for t in after.evaluate(&all, all.last().expect("pane").end) {
                let at = t.at.duration_since(UNIX_EPOCH).expect("epoch").as_secs();
                seen.push((at, t.rule, t.key, t.state));
            }
        }
        assert_eq!(
            seen,
            [(7, "n".into(), "198.51.100.0/24".into(), State::Firing)]
        );

        // A changed definition does not take the state up.
        let mut changed = engine(&text.replace("requests = 4", "requests = 5"));
        changed.restore(&saved);
        assert!(changed.save().rules[0].firing.is_empty());
    }

    #[test]
    fn keys_of_a_changed_or_removed_rule_resolve_at_the_next_slide() {
        let limits = Limits {
            batch: S,
            retention: S * 60,
            asn_db: true,
            country_db: true,
        };
        let text = "[[rule]]\nname = \"a\"\nkey = \"ip\"\nwindow = \"1s\"\nrequests = 1\n[[rule]]\nname = \"b\"\nkey = \"ip\"\nwindow = \"1s\"\nrequests = 1\n";
        let mut e = engine(&text.replace(
            "window = \"1s\"\nrequests = 1\n[[rule]]",
            "window = \"4s\"\nrequests = 1\n[[rule]]",
        ));
        assert_eq!(e.panes_needed(), 4, "the longest rule's window, in panes");
        e.replace(parse(text, limits).expect("rules"));
        assert_eq!(e.panes_needed(), 1);
        let p = pane(0, &[("192.0.2.9", 3)]);
        assert_eq!(e.evaluate(std::slice::from_ref(&p), p.end).len(), 2);
        // `a` changes, `b` goes.
        let only_a = text.split("[[rule]]\nname = \"b\"").next().expect("a");
        e.replace(parse(&only_a.replace("requests = 1", "requests = 2"), limits).expect("a"));
        let next = pane(1, &[("192.0.2.9", 3)]);
        let seen: Vec<(String, State, u64)> = e
            .evaluate(&[p, next.clone()], next.end)
            .into_iter()
            .map(|t| (t.rule, t.state, t.value))
            .collect();
        assert_eq!(
            seen,
            [
                ("a".to_string(), State::Resolved, 3),
                ("b".to_string(), State::Resolved, 3),
                ("a".to_string(), State::Firing, 3),
            ],
            "the old rules' keys resolve first, then the new rule fires afresh"
        );
    }

    proptest::proptest! {
        /// Panes entering, leaving and replaced by fuller versions of
        /// themselves (late records) in any order: the running counts, the
        /// keys at or over the floor and the total are what counting the
        /// window's panes afresh gives.
        #[test]
        fn running_counts_equal_a_recount_after_any_slides(
            steps in proptest::collection::vec(
                (0u64..8, proptest::collection::vec((0u32..12, 1u32..4), 0..6)),
                1..40,
            ),
            networks in proptest::bool::ANY,
        ) {
            let key = if networks { Key::V4(24) } else { Key::Ip };
            let mut aggregate = Aggregate::new(key, 3, 4);
            let mut panes: std::collections::BTreeMap<u64, Arc<Pane>> = Default::default();
            for (second, records) in steps {
                let texts: Vec<(String, u32)> = records
                    .iter()
                    .map(|(i, n)| (format!("10.0.{}.{}", i / 4, i % 4), *n))
                    .collect();
                let refs: Vec<(&str, u32)> = texts.iter().map(|(a, n)| (a.as_str(), *n)).collect();
                let more = pane(second, &refs);
                let joined = match panes.remove(&second) {
                    Some(old) => Arc::new(old.merged((*more).clone())),
                    None => more,
                };
                panes.insert(second, joined);
                let window: Vec<Arc<Pane>> = panes.values().cloned().collect();
                aggregate.sync(&[], &window);

                let mut expected: FxHashMap<Subject, u64> = FxHashMap::default();
                let mut total = 0;
                for p in window.iter().rev().take(3) {
                    total += p.requests;
                    for (ip, n) in p.counts.iter() {
                        let key = crate::rules::keys::network_of(aggregate.key, ip).expect("v4");
                        *expected.entry(key).or_insert(0) += u64::from(n);
                    }
                }
                expected.retain(|_, n| *n > 0);
                let counts: FxHashMap<Subject, u64> = aggregate.counts.iter().collect();
                proptest::prop_assert_eq!(&counts, &expected);
                proptest::prop_assert_eq!(aggregate.total, total);
                let over: FxHashSet<Subject> =
                    expected.iter().filter(|(_, n)| **n >= 4).map(|(k, _)| *k).collect();
                proptest::prop_assert_eq!(&aggregate.above, &over);
            }
        }
    }
}
