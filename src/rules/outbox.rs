//! The evaluator's end of alert delivery: a bounded queue per receiver that
//! a transition is offered to and never waited on. A full queue drops the
//! transition and counts it; a transition about data older than
//! `--alert-max-age` (a replayed backlog) is recorded, not offered. What
//! reads the queues and talks to the receivers is at the edge, in the
//! top-level `deliver` module, which this core module never imports.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::{Sender, error::TrySendError};

use super::{Rule, State, Transition};
use crate::metrics::Metrics;

/// The evaluator's end of the queues.
#[derive(Clone)]
pub struct Outbox {
    queues: Vec<(&'static str, Sender<Transition>)>,
    max_age: Duration,
    metrics: Metrics,
}

impl Outbox {
    /// The queues of the receivers in use, by name.
    pub fn new(
        queues: Vec<(&'static str, Sender<Transition>)>,
        max_age: Duration,
        metrics: Metrics,
    ) -> Self {
        Outbox {
            queues,
            max_age,
            metrics,
        }
    }

    /// Offers a transition to every target; never waits.
    pub fn offer(&self, transition: &Transition, now: SystemTime) {
        let stale = now.duration_since(transition.at).unwrap_or_default() > self.max_age;
        for (target, queue) in &self.queues {
            let result = if stale {
                "stale"
            } else {
                match queue.try_send(transition.clone()) {
                    Ok(()) => continue,
                    Err(TrySendError::Full(_)) => "dropped",
                    Err(TrySendError::Closed(_)) => "dropped",
                }
            };
            self.metrics
                .alert_deliveries
                .with_label_values(&[target, result])
                .inc();
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: Vec<&str> = self.queues.iter().map(|(t, _)| *t).collect();
        f.debug_struct("Outbox").field("targets", &targets).finish()
    }
}

/// Every rule's series, at zero, so that they exist from the first scrape
/// (alerting on them needs no traffic).
pub fn declare_series(metrics: &Metrics, rules: &[Rule]) {
    for rule in rules {
        metrics
            .alerts_firing
            .with_label_values(&[&rule.name])
            .set(0);
        for state in [State::Firing, State::Resolved] {
            metrics
                .alert_transitions
                .with_label_values(&[&rule.name, state.as_str()]);
        }
    }
}
