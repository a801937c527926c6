//! Rules, alerts and block lists: `--rules FILE` names keys (addresses or
//! networks) to flag when their count over a window crosses a threshold.
//! [`file`] reads and checks the file; [`engine`] evaluates the rules at
//! every slide; [`Rules`] is the reloadable set (SIGHUP) the engine follows.

mod aggregate;
mod counts;
pub mod engine;
pub mod file;
mod keys;
pub mod outbox;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize, Serializer};

pub use engine::Engine;
pub use file::{Key, Limits, Rule, Threshold};

use crate::vocab::{Subject, rfc3339};

/// A transition's new state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

fn time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

fn read_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
}

/// A range of event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowBounds {
    #[serde(serialize_with = "time", deserialize_with = "read_time")]
    pub start: SystemTime,
    #[serde(serialize_with = "time", deserialize_with = "read_time")]
    pub end: SystemTime,
}

impl WindowBounds {
    /// The `length` before `end` (from the epoch at the earliest).
    pub fn ending(end: SystemTime, length: std::time::Duration) -> Self {
        let start = end
            .checked_sub(length)
            .map_or(SystemTime::UNIX_EPOCH, |s| s.max(SystemTime::UNIX_EPOCH));
        WindowBounds { start, end }
    }
}

/// A key starting or stopping to break a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The same for the same rule, key, state and time: receivers can drop
    /// repeats (a retried webhook, a restart evaluating a slide again).
    pub id: String,
    pub rule: String,
    pub key: String,
    pub state: State,
    /// The key's count in the window: its lower bound when a pane of the
    /// window is summarized.
    pub value: u64,
    /// The most the count may be when a pane of the window is summarized
    /// (absent while every pane is exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<u64>,
    /// The count the rule needed at that slide.
    pub threshold: u64,
    pub window: WindowBounds,
    /// The window's end (event time) when it happened.
    #[serde(serialize_with = "time", deserialize_with = "read_time")]
    pub at: SystemTime,
    pub severity: String,
    pub description: String,
    /// Order of recording in this run (for `event: alert` streams).
    #[serde(skip)]
    pub seq: u64,
}

/// A key breaking a rule now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Firing {
    pub rule: Arc<str>,
    pub key: Arc<str>,
    /// The key's count: its lower bound when a pane is summarized (a rule
    /// fires on the lower bound, never on an estimation error).
    pub value: u64,
    /// The most the count may be, when a pane is summarized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper: Option<u64>,
    pub threshold: u64,
    #[serde(serialize_with = "time")]
    pub since: SystemTime,
    pub severity: Arc<str>,
    /// Listed in the block list while firing.
    pub block: bool,
    /// The rule's `ban`: how long the key stays banned from `since`.
    #[serde(skip)]
    pub ban: Option<std::time::Duration>,
    #[serde(skip)]
    pub subject: Subject,
    #[serde(skip)]
    pub description: Arc<str>,
}

/// What `/api/v1/alerts` answers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AlertsView {
    pub firing: Vec<Firing>,
    /// Newest first.
    pub transitions: Vec<Arc<Transition>>,
}

/// The rules' state as the checkpoint keeps it, so that a restart (even
/// after kill -9) neither fires again for keys already firing nor forgets
/// a cooldown. Keys are in CIDR form, times in epoch milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAlerts {
    pub rules: Vec<SavedRule>,
    /// The newest transitions (oldest first), for `/api/v1/alerts`.
    #[serde(default)]
    pub transitions: Vec<Transition>,
}

/// One rule's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRule {
    pub name: String,
    /// The rule as it was defined: a changed rule does not take the state up.
    pub definition: String,
    #[serde(default)]
    pub firing: Vec<(String, i64)>,
    #[serde(default)]
    pub pending: Vec<(String, i64)>,
    /// When keys last resolved (for `cooldown`).
    #[serde(default)]
    pub resolved: Vec<(String, i64)>,
}

/// The rules in force and the file they come from; SIGHUP reloads it. A
/// file that does not read or check keeps the rules in force.
#[derive(Debug)]
pub struct Rules {
    path: PathBuf,
    limits: Limits,
    current: ArcSwap<Vec<Rule>>,
    generation: AtomicU64,
}

impl Rules {
    /// Reads `path`; the error names the file, the line and the reason.
    pub fn load(path: PathBuf, limits: Limits) -> Result<Arc<Rules>, file::RulesError> {
        let rules = file::load(&path, limits)?;
        Ok(Arc::new(Rules {
            path,
            limits,
            current: ArcSwap::from_pointee(rules),
            generation: AtomicU64::new(1),
        }))
    }

    /// Reads the file again; on success the engine takes the new rules at
    /// the next slide. Returns how many rules are in force.
    pub fn reload(&self) -> Result<usize, file::RulesError> {
        let rules = file::load(&self.path, self.limits)?;
        let n = rules.len();
        self.current.store(Arc::new(rules));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(n)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Vec<Rule>> {
        self.current.load_full()
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// The engine as the snapshot builder runs it: follows reloads and keeps
/// the metrics.
pub struct Evaluator {
    rules: Arc<Rules>,
    engine: Engine,
    seen: u64,
    metrics: crate::metrics::Metrics,
    outbox: Option<outbox::Outbox>,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("rules", &self.engine.rules().len())
            .field("generation", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Evaluator {
    pub fn new(
        rules: Arc<Rules>,
        batch: std::time::Duration,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        let engine = Engine::new(rules.current().to_vec(), batch);
        let seen = rules.generation();
        let evaluator = Evaluator {
            rules,
            engine,
            seen,
            metrics,
            outbox: None,
        };
        evaluator.zero_series();
        evaluator
    }

    /// Goes on from the state a previous run saved in its checkpoint.
    pub fn with_saved(mut self, saved: Option<&SavedAlerts>) -> Self {
        if let Some(saved) = saved {
            self.engine.restore(saved);
        }
        self
    }

    /// The state to keep in the checkpoint.
    pub fn save(&self) -> SavedAlerts {
        self.engine.save()
    }

    /// How many of the newest panes the longest rule's window covers (of
    /// the rules in force at the next slide).
    pub fn panes_needed(&mut self) -> usize {
        self.follow_reload();
        self.engine.panes_needed()
    }

    /// Takes up a reloaded file's rules.
    fn follow_reload(&mut self) {
        let generation = self.rules.generation();
        if generation != self.seen {
            for rule in self.engine.rules() {
                let _ = self
                    .metrics
                    .alerts_firing
                    .remove_label_values(&[&rule.name]);
            }
            self.engine.replace(self.rules.current().to_vec());
            self.seen = generation;
            self.zero_series();
        }
    }

    /// Offers every transition to the webhook and Alertmanager senders.
    pub fn with_outbox(mut self, outbox: Option<outbox::Outbox>) -> Self {
        self.outbox = outbox;
        self
    }

    /// Every rule's series exist, at zero (a reload may add rules).
    fn zero_series(&self) {
        outbox::declare_series(&self.metrics, self.engine.rules());
    }

    /// One slide: the panes older than the window, the window's, its end;
    /// what `/api/v1/alerts` shows after it.
    pub fn slide(
        &mut self,
        older: &[Arc<crate::window::Pane>],
        window: &[Arc<crate::window::Pane>],
        end: SystemTime,
    ) -> Arc<AlertsView> {
        self.evaluate(older, window, end);
        Arc::new(self.engine.view())
    }

    /// What a cluster's counts must cover at the next slide (see
    /// [`engine::Engine::wanted`]).
    pub fn wanted(&mut self) -> Vec<engine::Wanted> {
        self.follow_reload();
        self.engine.wanted()
    }

    /// One slide on the cluster's counts: what `/api/v1/alerts` shows
    /// after it, and the transitions, not yet delivered (the caller keeps
    /// the state where a successor finds it first, then [`Evaluator::deliver`]s).
    pub fn slide_counted(
        &mut self,
        counted: Vec<(u64, rustc_hash::FxHashMap<crate::vocab::Subject, u64>)>,
        end: SystemTime,
    ) -> (Arc<AlertsView>, Vec<Transition>) {
        let transitions = self.engine.evaluate_counted(counted, end);
        (Arc::new(self.engine.view()), transitions)
    }

    /// [`Evaluator::slide`] without the view (a slide that publishes no
    /// snapshot).
    pub fn evaluate(
        &mut self,
        older: &[Arc<crate::window::Pane>],
        window: &[Arc<crate::window::Pane>],
        end: SystemTime,
    ) {
        self.follow_reload();
        let transitions = self.engine.evaluate_kept(older, window, end);
        self.deliver(transitions);
    }

    /// Counts transitions, offers them to the senders, sets the firing gauges.
    pub fn deliver(&self, transitions: Vec<Transition>) {
        for t in transitions {
            self.metrics
                .alert_transitions
                .with_label_values(&[&t.rule, t.state.as_str()])
                .inc();
            if let Some(outbox) = &self.outbox {
                outbox.offer(&t, SystemTime::now());
            }
        }
        for (rule, n) in self.engine.firing_counts() {
            self.metrics
                .alerts_firing
                .with_label_values(&[rule])
                .set(n as i64);
        }
    }
}
