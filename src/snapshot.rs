//! The immutable view that ingest publishes at every slide and HTTP reads.
//!
//! Handlers load an `Arc<Snapshot>` lock-free and answer from it; they never
//! wait on ingest, and ingest never waits on them.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::offsets::Reset;
use crate::parse::{IpKey, SkipCounts};
use crate::window::{Pane, TopList};

/// One published state of the window.
#[derive(Debug)]
pub struct Snapshot {
    pub taken_at: SystemTime,
    pub window_start: SystemTime,
    pub window_end: SystemTime,
    pub window_length: Duration,
    pub slide: Duration,
    pub total_requests: u64,
    pub distinct_ips: usize,
    /// The most frequent IPs, up to [`crate::config::MAX_TOP_N`]: count
    /// descending, then IP ascending (the first [`crate::config::SORTED_TOP_N`] pre-sorted).
    pub top: TopList,
    /// The panes in the window, oldest first (shared with ingest, never copied).
    pub panes: Vec<Arc<Pane>>,
    pub partitions: Vec<PartitionStatus>,
    pub ingest: IngestStatus,
    /// Recent slides, oldest first, for the dashboard's sparklines.
    pub history: Vec<HistoryPoint>,
    /// `/api/v1/top` bodies rendered from this snapshot, by `n`.
    pub rendered_top: RenderCache,
}

/// Response bodies rendered from one snapshot: the same question asked again
/// before the next slide is answered with the same bytes, not rendered anew.
#[derive(Debug, Default)]
pub struct RenderCache(Mutex<Vec<(usize, Bytes)>>);

impl RenderCache {
    /// Distinct questions kept per snapshot (the oldest answer goes first).
    const ENTRIES: usize = 8;

    pub fn get_or_render(&self, key: usize, render: impl FnOnce() -> Bytes) -> Bytes {
        let cached = self
            .lock()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, b)| b.clone());
        if let Some(body) = cached {
            return body;
        }
        // Rendered outside the lock: concurrent first askers may both render.
        let body = render();
        let mut cache = self.lock();
        if !cache.iter().any(|(k, _)| *k == key) {
            if cache.len() == Self::ENTRIES {
                cache.remove(0);
            }
            cache.push((key, body.clone()));
        }
        body
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(usize, Bytes)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One slide's totals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistoryPoint {
    pub at: SystemTime,
    pub records_per_second: f64,
    pub window_requests: u64,
    pub distinct_ips: usize,
}

impl Snapshot {
    /// The state before the first batch closes.
    pub fn empty(window_length: Duration, slide: Duration) -> Self {
        let now = SystemTime::now();
        Snapshot {
            taken_at: now,
            window_start: now,
            window_end: now,
            window_length,
            slide,
            total_requests: 0,
            distinct_ips: 0,
            top: TopList::default(),
            panes: Vec::new(),
            partitions: Vec::new(),
            ingest: IngestStatus::default(),
            history: Vec::new(),
            rendered_top: RenderCache::default(),
        }
    }

    /// One IP's count in the window, summed over the panes (O(panes)).
    pub fn count(&self, ip: IpKey) -> u64 {
        self.panes.iter().map(|p| u64::from(p.count(ip))).sum()
    }
}

/// Offsets of one partition as the snapshot saw them.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionStatus {
    pub topic: Arc<str>,
    pub partition: i32,
    /// First offset the window covers.
    pub from_offset: i64,
    /// Next offset to read: everything below it is counted.
    pub until_offset: i64,
    pub log_start: Option<i64>,
    pub log_end: Option<i64>,
    /// Newest record's timestamp minus the last counted record's, in seconds.
    pub lag_seconds: Option<f64>,
    /// The last time this partition did not continue from where it was.
    pub last_reset: Option<Reset>,
}

impl PartitionStatus {
    pub fn lag(&self) -> Option<i64> {
        self.log_end.map(|end| (end - self.until_offset).max(0))
    }
}

/// Counters of the ingest loop since start.
#[derive(Clone, Debug, Default)]
pub struct IngestStatus {
    pub batches: u64,
    pub records_consumed: u64,
    pub records_counted: u64,
    pub skipped: SkipCounts,
    /// Records consumed per second over the last slide.
    pub records_per_second: f64,
}

/// Liveness facts written by the background threads, read by HTTP.
#[derive(Debug)]
pub struct Health {
    started: SystemTime,
    ready: AtomicBool,
    kafka_connected: AtomicBool,
    kafka_last_error: ArcSwap<Option<String>>,
    last_metadata_ms: AtomicU64,
    phase: ArcSwap<&'static str>,
    demo: bool,
}

impl Health {
    pub fn new(demo: bool) -> Self {
        Health {
            started: SystemTime::now(),
            ready: AtomicBool::new(false),
            kafka_connected: AtomicBool::new(false),
            kafka_last_error: ArcSwap::from_pointee(None),
            last_metadata_ms: AtomicU64::new(0),
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
        match self.last_metadata_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                    .unwrap_or_default(),
            ),
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn kafka_ok(&self) {
        self.kafka_connected.store(true, Ordering::Release);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_metadata_ms
            .store(now.as_millis() as u64, Ordering::Release);
    }

    pub fn kafka_failed(&self, error: String) {
        self.kafka_connected.store(false, Ordering::Release);
        self.kafka_last_error.store(Arc::new(Some(error)));
    }

    pub fn kafka_connected(&self) -> bool {
        self.kafka_connected.load(Ordering::Acquire)
    }

    pub fn kafka_last_error(&self) -> Option<String> {
        self.kafka_last_error.load().as_ref().clone()
    }
}

/// Where ingest publishes and handlers read: the current snapshot, loaded
/// lock-free, and a counter that live streams (`/api/v1/events`) wait on.
/// A slow stream only ever sees the newest value: nothing queues up.
#[derive(Clone, Debug)]
pub struct Published(Arc<PublishedInner>);

#[derive(Debug)]
struct PublishedInner {
    current: ArcSwap<Snapshot>,
    notify: watch::Sender<u64>,
}

impl Published {
    pub fn new(snapshot: Snapshot) -> Self {
        Published(Arc::new(PublishedInner {
            current: ArcSwap::from_pointee(snapshot),
            notify: watch::channel(0).0,
        }))
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.current.load()
    }

    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.0.current.store(snapshot);
        self.0.notify.send_modify(|n| *n += 1);
    }

    /// Changes whenever a snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.notify.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_answer_is_reused_until_eight_newer_ones_push_it_out() {
        let cache = RenderCache::default();
        let renders = std::cell::Cell::new(0);
        let render = |key: usize| {
            renders.set(renders.get() + 1);
            Bytes::from(format!("body {key}"))
        };
        assert_eq!(cache.get_or_render(100, || render(100)), "body 100");
        assert_eq!(cache.get_or_render(100, || render(100)), "body 100");
        assert_eq!(renders.get(), 1, "the second ask is served from the cache");
        for key in 1..=RenderCache::ENTRIES {
            assert_eq!(
                cache.get_or_render(key, || render(key)),
                format!("body {key}")
            );
        }
        assert_eq!(renders.get(), 1 + RenderCache::ENTRIES);
        cache.get_or_render(100, || render(100));
        assert_eq!(
            renders.get(),
            2 + RenderCache::ENTRIES,
            "evicted, rendered again"
        );
    }
}
