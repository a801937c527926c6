//! What the ingest loop has done since its first start.

use super::SkipCounts;

/// Totals of the ingest loop since its first start: checkpoints carry them
/// across restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestTotals {
    pub batches: u64,
    pub records_consumed: u64,
    pub records_counted: u64,
    pub skipped: SkipCounts,
    /// Lines read with invalid UTF-8 replaced by U+FFFD, counted or skipped.
    pub repaired: u64,
    /// Event time: records that arrived after their pane closed.
    pub late: u64,
}
