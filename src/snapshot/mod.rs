//! The immutable view that ingest publishes at every slide and HTTP reads.
//!
//! Handlers load an `Arc<Snapshot>` lock-free and answer from it; they never
//! wait on ingest, and ingest never waits on them. [`build`] assembles a
//! snapshot from ingest's state.

pub mod build;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use tokio::sync::watch;

use crate::vocab::{IngestTotals, IpKey, Reset, Started};
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
    /// The most frequent IPs, up to `MAX_TOP_N` (config): count descending,
    /// then IP ascending (the first `SORTED_TOP_N` pre-sorted).
    pub top: TopList,
    /// The panes in the window, oldest first (shared with ingest, never copied).
    pub panes: Vec<Arc<Pane>>,
    /// Older panes kept for questions about other ranges (`--retention`),
    /// oldest first.
    pub retained: Vec<Arc<Pane>>,
    pub partitions: Vec<PartitionStatus>,
    pub ingest: IngestStatus,
    /// Recent slides, oldest first, for the dashboard's sparklines.
    pub history: Vec<HistoryPoint>,
    /// `/api/v1/top` bodies rendered from this snapshot, by `n`.
    pub rendered_top: RenderCache,
    /// `/api/v1/events` event data rendered from this snapshot, by `n`:
    /// every stream asking the same `n` sends the same bytes.
    pub rendered_events: RenderCache,
    /// Answers to questions about other ranges or networks, by query;
    /// shared with the next snapshot while the kept panes are the same (a
    /// slide that moved nothing, as when the data's time stands still).
    pub rendered_adhoc: Arc<RenderCache<String>>,
    /// `--rules`: what fires now and the recent transitions.
    pub alerts: Arc<crate::rules::AlertsView>,
}

/// Response bodies rendered from one snapshot: the same question asked again
/// before the next slide is answered with the same bytes, not rendered anew.
#[derive(Debug)]
pub struct RenderCache<K = usize>(Mutex<Vec<(K, Bytes)>>);

impl<K> Default for RenderCache<K> {
    fn default() -> Self {
        RenderCache(Mutex::new(Vec::new()))
    }
}

impl<K: PartialEq> RenderCache<K> {
    /// Distinct questions kept per snapshot (the oldest answer goes first).
    const ENTRIES: usize = 8;

    /// The cached answer to `key`, if any.
    pub fn get(&self, key: &K) -> Option<Bytes> {
        self.lock()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| b.clone())
    }

    /// Keeps `body` as the answer to `key`.
    pub fn put(&self, key: K, body: Bytes) {
        let mut cache = self.lock();
        if !cache.iter().any(|(k, _)| *k == key) {
            if cache.len() == Self::ENTRIES {
                cache.remove(0);
            }
            cache.push((key, body));
        }
    }

    pub fn get_or_render(&self, key: K, render: impl FnOnce() -> Bytes) -> Bytes {
        if let Some(body) = self.get(&key) {
            return body;
        }
        // Rendered outside the lock: concurrent first askers may both render.
        let body = render();
        self.put(key, body.clone());
        body
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(K, Bytes)>> {
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
            retained: Vec::new(),
            partitions: Vec::new(),
            ingest: IngestStatus::default(),
            history: Vec::new(),
            rendered_top: RenderCache::default(),
            rendered_events: RenderCache::default(),
            rendered_adhoc: Default::default(),
            alerts: Default::default(),
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
    /// Where this run started the partition, and why.
    pub started: Started,
    /// Event time: the newest time counted (epoch ms).
    pub newest_event_ms: Option<i64>,
    /// Event time: records of this partition that arrived after their pane closed.
    pub records_late: u64,
}

impl PartitionStatus {
    pub fn lag(&self) -> Option<i64> {
        self.log_end.map(|end| (end - self.until_offset).max(0))
    }
}

/// What `/api/v1/status` shows of the ingest loop.
#[derive(Clone, Debug, Default)]
pub struct IngestStatus {
    pub totals: IngestTotals,
    /// Records consumed per second over the last slide.
    pub records_per_second: f64,
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
        for key in 1..=RenderCache::<usize>::ENTRIES {
            assert_eq!(
                cache.get_or_render(key, || render(key)),
                format!("body {key}")
            );
        }
        assert_eq!(renders.get(), 1 + RenderCache::<usize>::ENTRIES);
        cache.get_or_render(100, || render(100));
        assert_eq!(
            renders.get(),
            2 + RenderCache::<usize>::ENTRIES,
            "evicted, rendered again"
        );
    }
}
