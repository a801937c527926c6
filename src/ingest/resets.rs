//! Partitions that do not continue from where they were: logged (a
//! warning, but a first start from the oldest record is said once at info)
//! and counted.

use tracing::{info, warn};

use super::tracker::Start;
use crate::metrics::Metrics;
use crate::vocab::{Origin, Reset, ResetReason, offset_text};

/// Says once, at info, how many of `starts` are first starts: nothing
/// stored, read from the oldest record. Normal, so no warning.
pub(super) fn say_first_starts(starts: &[Start]) {
    let first_starts = starts
        .iter()
        .filter(|s| s.reset.as_ref().is_some_and(Reset::is_first_start))
        .count();
    if first_starts > 0 {
        info!(
            partitions = first_starts,
            of = starts.len(),
            "first start: nothing is stored for these partitions (checkpoint, ZooKeeper, \
             Kafka group), so each is read from its oldest record"
        );
    }
}

/// Logs and counts one partition that does not continue from where it was,
/// found at assignment or on a gap in its offsets. A warning, as a reset
/// means records are counted again, skipped or lost; a first start from the
/// oldest record is only counted (its caller says it once, at info).
pub(super) fn record(metrics: &Metrics, topic: &str, partition: i32, reset: &Reset, gap: bool) {
    if !reset.is_first_start() {
        warn_reset(topic, partition, reset, gap);
    }
    metrics
        .offset_resets
        .with_label_values(&[reset.reason.as_str()])
        .inc();
    if reset.lost > 0 {
        metrics
            .records_lost
            .with_label_values(&[topic, &partition.to_string()])
            .inc_by(reset.lost as u64);
    }
}

fn warn_reset(topic: &str, partition: i32, reset: &Reset, gap: bool) {
    let stored = offset_text(reset.stored);
    let from = reset.origin.map_or("-", Origin::as_str);
    if gap {
        warn!(%topic, partition, next = %stored, log_start = reset.log_start,
            lost = reset.lost, "records expired before they were counted");
    } else if reset.reason == ResetReason::Missing {
        warn!(%topic, partition, reason = %reset.reason, log_start = reset.log_start,
            log_end = reset.log_end, start = reset.start,
            "no stored offset in the checkpoint, ZooKeeper or the Kafka group; \
             --offset-reset latest passes over the records already in the log");
    } else {
        warn!(%topic, partition, reason = %reset.reason, %stored, %from,
            log_start = reset.log_start, log_end = reset.log_end, start = reset.start,
            lost = reset.lost, "partition does not start at a stored offset");
    }
}
