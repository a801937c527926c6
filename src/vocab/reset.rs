//! Why a partition did not start (or continue) at its stored offset, and
//! the record of one such reset, as `/api/v1/offsets` shows it.

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

/// One reset, as `/api/v1/offsets` shows the last one per partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reset {
    pub reason: ResetReason,
    /// The offset that was stored, if any.
    pub stored: Option<i64>,
    /// Where consumption (re)started.
    pub start: i64,
    pub log_start: i64,
    pub log_end: i64,
    /// Records deleted before they could be counted (expired only).
    pub lost: i64,
    pub at: SystemTime,
}
