//! The words every part of ipstats shares: a client address, why a line was
//! skipped, why a partition was reset, liveness facts, ingest's totals. These modules depend
//! on nothing else in the crate, so that anything may use them.

pub mod health;
pub mod ip;
pub mod reset;
pub mod skip;
pub mod stamp;
pub mod subject;
pub mod totals;

pub use health::Health;
pub use ip::{IpKey, Network, parse_ip};
pub use reset::{Origin, Reset, ResetReason, Started, StartedFrom, Stored, offset_text};
pub use skip::{SKIP_REASONS, SkipCounts, SkipReason};
pub use stamp::{LastError, Stamp, epoch_ms, from_epoch_ms, rfc3339};
pub use subject::{Country, Subject};
pub use totals::IngestTotals;

/// This machine's host name as instance ids use it: letters, digits and
/// `-` only (`ipstats` when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ipstats".to_string())
}
