//! Liveness facts written by the background threads and read by HTTP:
//! readiness, the start-up phase, and whether Kafka answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::stamp::{LastError, Stamp};

#[derive(Debug)]
pub struct Health {
    started: SystemTime,
    ready: AtomicBool,
    kafka_connected: AtomicBool,
    kafka_last_error: LastError,
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

    pub fn kafka_failed(&self, error: String) {
        self.kafka_connected.store(false, Ordering::Release);
        self.kafka_last_error.set(error);
    }

    pub fn kafka_connected(&self) -> bool {
        self.kafka_connected.load(Ordering::Acquire)
    }

    pub fn kafka_last_error(&self) -> Option<String> {
        self.kafka_last_error.get()
    }
}
