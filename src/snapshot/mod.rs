//! The immutable view that ingest publishes at every slide and HTTP reads.
//!
//! The answers load an `Arc<Snapshot>` lock-free and answer from
//! it; nothing that answers waits on ingest, and ingest never waits on it.
//! [`build`] assembles a snapshot from ingest's state.

pub mod build;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::vocab::{IngestTotals, IpKey, Reset, Started};
use crate::window::{Pane, TopList};

/// Numbers snapshots and sets of kept panes in the order they are made,
/// across every builder of the process.
static SERIAL: AtomicU64 = AtomicU64::new(1);

/// The next number from [`SERIAL`].
pub fn serial() -> u64 {
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

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
    /// `distinct_ips` is an estimate (a pane of the window is summarized).
    pub distinct_estimated: bool,
    /// The most any count of the window may lack: 0 while every pane in it
    /// is exact. `top` holds lower bounds.
    pub error_bound: u64,
    /// The most frequent IPs, up to `MAX_TOP_N` (config): count descending,
    /// then IP ascending (the first `SORTED_TOP_N` pre-sorted).
    pub top: TopList,
    /// The panes in the window, oldest first (shared with ingest, never copied).
    pub panes: Vec<Arc<Pane>>,
    /// Older panes kept for questions about other ranges (`--retention`),
    /// oldest first.
    pub retained: Vec<Arc<Pane>>,
    /// Event time: panes counted ahead of the window's end, oldest first.
    /// Their records are counted; they join the window when its end reaches
    /// them (a partition that delivered records lately holds the end back).
    /// An instance's part of a cluster answer reads them too: another
    /// instance's window may already end past them.
    pub ahead: Vec<Arc<Pane>>,
    pub partitions: Vec<PartitionStatus>,
    pub ingest: IngestStatus,
    /// Recent slides, oldest first, for the dashboard's sparklines.
    pub history: Vec<HistoryPoint>,
    /// This snapshot's number: later snapshots have higher ones.
    pub seq: u64,
    /// The number of the set of panes it keeps: the same in consecutive
    /// snapshots whose kept panes are the same (a slide that moved nothing,
    /// as when the data's time stands still), so that answers about them
    /// still hold.
    pub kept_seq: u64,
    /// `--rules`: what fires now and the recent transitions.
    pub alerts: Arc<crate::rules::AlertsView>,
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
            distinct_estimated: false,
            error_bound: 0,
            top: TopList::default(),
            panes: Vec::new(),
            retained: Vec::new(),
            ahead: Vec::new(),
            partitions: Vec::new(),
            ingest: IngestStatus::default(),
            history: Vec::new(),
            seq: serial(),
            kept_seq: serial(),
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
    pub memory: MemoryStatus,
}

/// The counting state against its budget (`--memory-limit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStatus {
    pub budget_bytes: usize,
    pub state_bytes: usize,
    /// Kept panes that are summarized.
    pub panes_summarized: usize,
    /// Since when panes are summarized; `None` while every kept pane is exact.
    pub summarizing_since: Option<SystemTime>,
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
