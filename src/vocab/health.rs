//! Liveness facts written by the background threads and read by HTTP:
//! readiness, the start-up phase, and whether Kafka answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::stamp::{LastError, Stamp};

#[derive(Debug)]
pub struct Health {
    started: SystemTime,
    ready: AtomicBool,
    kafka_connected: AtomicBool,
    kafka_last_error: LastError,
    /// How many errors were recorded: a summary error (all brokers down, a
    /// metadata timeout) does not replace the cause reported just before it.
    kafka_errors: AtomicU64,
    kafka_contact: Stamp,
    phase: ArcSwap<&'static str>,
    demo: bool,
}

impl Health {
    pub fn new(demo: bool) -> Self {
        Health {
            started: SystemTime::now(),
            ready: AtomicBool::new(false),
            kafka_connected: AtomicBool::new(false),
            kafka_last_error: LastError::default(),
            kafka_errors: AtomicU64::new(0),
            kafka_contact: Stamp::default(),
            phase: ArcSwap::from_pointee("starting"),
            demo,
        }
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    pub fn is_demo(&self) -> bool {
        self.demo
    }

    /// What start-up is doing, for `/readyz` and `/api/v1/status`.
    pub fn set_phase(&self, phase: &'static str) {
        self.phase.store(Arc::new(phase));
    }

    pub fn phase(&self) -> &'static str {
        **self.phase.load()
    }

    /// Time since the monitor last heard from the Kafka cluster.
    pub fn kafka_contact_age(&self) -> Option<Duration> {
        self.kafka_contact.age()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn kafka_ok(&self) {
        self.kafka_connected.store(true, Ordering::Release);
        self.kafka_contact.touch();
    }

    /// Kafka failed, and `error` says why.
    pub fn kafka_failed(&self, error: String) {
        self.kafka_connected.store(false, Ordering::Release);
        self.kafka_last_error.set(error);
        self.kafka_errors.fetch_add(1, Ordering::AcqRel);
    }

    /// Kafka failed with a consequence (`error`), not a cause: recorded only
    /// when no cause was recorded since `errors_before` (a count from
    /// [`Health::kafka_errors`]; `None`: ever).
    pub fn kafka_failed_summary(&self, error: String, errors_before: Option<u64>) {
        self.kafka_connected.store(false, Ordering::Release);
        let cause_known = match errors_before {
            Some(before) => self.kafka_errors() != before,
            None => self.kafka_last_error().is_some(),
        };
        if !cause_known {
            self.kafka_failed(error);
        }
    }

    /// Errors recorded so far.
    pub fn kafka_errors(&self) -> u64 {
        self.kafka_errors.load(Ordering::Acquire)
    }

    pub fn kafka_connected(&self) -> bool {
        self.kafka_connected.load(Ordering::Acquire)
    }

    pub fn kafka_last_error(&self) -> Option<String> {
        self.kafka_last_error.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_error_keeps_the_cause_reported_before_it() {
        let health = Health::new(false);
        health.kafka_failed_summary("all brokers down".into(), None);
        assert_eq!(
            health.kafka_last_error().as_deref(),
            Some("all brokers down")
        );
        let before = health.kafka_errors();
        health.kafka_failed("authentication failed".into());
        health.kafka_failed_summary("all brokers down".into(), Some(before));
        assert_eq!(
            health.kafka_last_error().as_deref(),
            Some("authentication failed")
        );
        // A later round without a cause: the summary is the news.
        health.kafka_failed_summary("metadata timeout".into(), Some(health.kafka_errors()));
        assert_eq!(
            health.kafka_last_error().as_deref(),
            Some("metadata timeout")
        );
        assert!(!health.kafka_connected());
    }
}
