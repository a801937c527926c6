//! Where a partition starts: the store its offset came from, why it did not
//! start (or continue) at a stored offset, and the record of one such reset,
//! as `/api/v1/offsets` shows them.

use std::fmt;
use std::time::SystemTime;

/// Why a partition did not start (or continue) at its stored offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// Nothing stored for the partition.
    Missing,
    /// The stored offset is below the log start: retention deleted records.
    Expired,
    /// The stored offset is above the log end: the topic was recreated.
    Ahead,
}

impl ResetReason {
    pub const ALL: [ResetReason; 3] = [
        ResetReason::Missing,
        ResetReason::Expired,
        ResetReason::Ahead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Missing => "missing",
            ResetReason::Expired => "expired",
            ResetReason::Ahead => "ahead",
        }
    }
}

impl fmt::Display for ResetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A store that holds a partition's next offset, in the order they are
/// asked at start-up: the checkpoint (its counts are restored with it),
/// ZooKeeper (with `--zookeeper`), the Kafka consumer group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Checkpoint,
    Zookeeper,
    KafkaGroup,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Checkpoint => "checkpoint",
            Origin::Zookeeper => "zookeeper",
            Origin::KafkaGroup => "kafka",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored next offset and the store it came from. `note` says why this
/// store won when another one holds a different offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub offset: i64,
    pub origin: Origin,
    pub note: Option<String>,
}

/// How a partition's first offset in this run was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartedFrom {
    /// A stored offset, used as is.
    Stored(Origin),
    /// None usable: `--offset-reset` (or the log start, for expired offsets).
    Reset,
    /// A partition that appeared while running: new data, read from its start.
    NewPartition,
    /// `--cluster`: a partition handed to this instance, rebuilt from the
    /// first record of the kept history (found by time).
    Rebuild,
}

impl StartedFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            StartedFrom::Stored(origin) => origin.as_str(),
            StartedFrom::Reset => "offset_reset",
            StartedFrom::NewPartition => "new_partition",
            StartedFrom::Rebuild => "rebuild",
        }
    }
}

/// Where a partition started in this run, and why, for `/api/v1/offsets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub offset: i64,
    pub from: StartedFrom,
    pub note: Option<String>,
}

/// A stored offset for humans: the number, or "none".
pub fn offset_text(offset: Option<i64>) -> String {
    offset.map_or_else(|| "none".to_string(), |o| o.to_string())
}

/// One reset, as `/api/v1/offsets` shows the last one per partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reset {
    pub reason: ResetReason,
    /// The offset that was stored, if any.
    pub stored: Option<i64>,
    /// The store that held it; `None` for a gap met while consuming.
    pub origin: Option<Origin>,
    /// Where consumption (re)started.
    pub start: i64,
    pub log_start: i64,
    pub log_end: i64,
    /// Records deleted before they could be counted (expired only).
    pub lost: i64,
    pub at: SystemTime,
}

impl Reset {
    /// Nothing was stored and nothing is passed over: the partition's first
    /// start, from its oldest record. Normal, so neither a warning nor a
    /// partition's "last reset"; `start` in `/api/v1/offsets` says it.
    pub fn is_first_start(&self) -> bool {
        self.reason == ResetReason::Missing && self.start == self.log_start
    }
}
