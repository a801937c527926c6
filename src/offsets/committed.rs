//! What the committers last wrote, for `/api/v1/offsets` and `/api/v1/status`.
//! Written by the committer tasks, read lock-free by HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use crate::vocab::{LastError, Stamp};

/// `(topic, partition)` → committed next offset.
pub type OffsetMap = FxHashMap<(Arc<str>, i32), i64>;

/// Connection state of an offset store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StoreState {
    Disabled = 0,
    Connecting = 1,
    Connected = 2,
    Disconnected = 3,
}

impl StoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Disabled => "disabled",
            StoreState::Connecting => "connecting",
            StoreState::Connected => "connected",
            StoreState::Disconnected => "disconnected",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => StoreState::Connecting,
            2 => StoreState::Connected,
            3 => StoreState::Disconnected,
            _ => StoreState::Disabled,
        }
    }
}

/// One store's committed offsets and health.
#[derive(Debug)]
pub struct StoreStatus {
    offsets: ArcSwap<OffsetMap>,
    state: AtomicU8,
    last_error: LastError,
    last_commit: Stamp,
}

impl StoreStatus {
    fn new(state: StoreState) -> Self {
        StoreStatus {
            offsets: ArcSwap::from_pointee(OffsetMap::default()),
            state: AtomicU8::new(state as u8),
            last_error: LastError::default(),
            last_commit: Stamp::default(),
        }
    }

    pub fn state(&self) -> StoreState {
        StoreState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: StoreState) {
        self.state.store(state as u8, Ordering::Release);
    }

    pub fn failed(&self, error: String) {
        self.set_state(StoreState::Disconnected);
        self.last_error.set(error);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.get()
    }

    /// Records offsets as committed (or read back at start-up).
    pub fn record(&self, offsets: impl IntoIterator<Item = (Arc<str>, i32, i64)>, commit: bool) {
        let mut map = OffsetMap::clone(&self.offsets.load());
        for (topic, partition, offset) in offsets {
            map.insert((topic, partition), offset);
        }
        self.offsets.store(Arc::new(map));
        if commit {
            self.last_commit.touch();
            self.set_state(StoreState::Connected);
        }
    }

    pub fn get(&self, topic: &Arc<str>, partition: i32) -> Option<i64> {
        self.offsets
            .load()
            .get(&(topic.clone(), partition))
            .copied()
    }

    /// Time since the last successful commit.
    pub fn commit_age(&self) -> Option<Duration> {
        self.last_commit.age()
    }
}

/// Both stores. The Kafka group is always committed to; ZooKeeper only
/// with `--zookeeper`.
#[derive(Debug)]
pub struct Committed {
    pub zookeeper: StoreStatus,
    pub kafka: StoreStatus,
}

impl Committed {
    pub fn new(zookeeper_enabled: bool) -> Self {
        Committed {
            zookeeper: StoreStatus::new(if zookeeper_enabled {
                StoreState::Connecting
            } else {
                StoreState::Disabled
            }),
            kafka: StoreStatus::new(StoreState::Connecting),
        }
    }
}
