//! Offsets: where to start each partition, and committing progress to
//! ZooKeeper (the original job's layout) and to the Kafka consumer group.
//!
//! Start rule, as the original `getOffsets`, plus the cases it missed:
//! a stored offset inside `[log start, log end]` is used; none stored, below
//! the log start (expired by retention) or above the log end (topic
//! recreated) is a *reset* — never silent: logged, counted, shown.
//!
//! - [`commit`]: the retry loop both committers share.
//! - [`zookeeper`], [`kafka_group`]: the two stores.
//! - [`committed`]: what each store last holds, for the HTTP status pages.
//! - [`instance`]: this instance's id, its name in ZooKeeper's owner znodes.

pub mod commit;
pub mod committed;
pub mod instance;
pub mod kafka_group;
pub mod zookeeper;

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::OffsetReset;
use crate::vocab::{Reset, ResetReason};

pub use commit::CommitRequest;

/// `--offset-reset fail` met a partition without a usable offset.
#[derive(Debug, thiserror::Error)]
#[error(
    "{topic}/{partition}: stored offset {stored} is unusable ({reason}; log start {log_start}, \
     log end {log_end}) and --offset-reset is fail; choose --offset-reset earliest or latest"
)]
pub struct ResetRefused {
    pub topic: Arc<str>,
    pub partition: i32,
    pub stored: String,
    pub reason: ResetReason,
    pub log_start: i64,
    pub log_end: i64,
}

/// Where a partition starts: the stored offset when usable, else the policy.
pub fn resolve_start(
    topic: &Arc<str>,
    partition: i32,
    stored: Option<i64>,
    log_start: i64,
    log_end: i64,
    policy: OffsetReset,
) -> Result<(i64, Option<Reset>), ResetRefused> {
    let reason = match stored {
        Some(s) if (log_start..=log_end).contains(&s) => return Ok((s, None)),
        None => ResetReason::Missing,
        Some(s) if s < log_start => ResetReason::Expired,
        Some(_) => ResetReason::Ahead,
    };
    let start = match (reason, policy) {
        (_, OffsetReset::Fail) => {
            return Err(ResetRefused {
                topic: topic.clone(),
                partition,
                stored: stored.map_or_else(|| "none".to_string(), |s| s.to_string()),
                reason,
                log_start,
                log_end,
            });
        }
        // Expired records are gone: the oldest one left is the closest to
        // where we were, as the original job did.
        (ResetReason::Expired, _) | (_, OffsetReset::Earliest) => log_start,
        (_, OffsetReset::Latest) => log_end,
    };
    let lost = match (reason, stored) {
        (ResetReason::Expired, Some(s)) => log_start - s,
        _ => 0,
    };
    Ok((
        start,
        Some(Reset {
            reason,
            stored,
            start,
            log_start,
            log_end,
            lost,
            at: SystemTime::now(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        stored: Option<i64>,
        policy: OffsetReset,
    ) -> Result<(i64, Option<ResetReason>, i64), String> {
        resolve_start(&Arc::from("t"), 0, stored, 100, 200, policy)
            .map(|(start, reset)| {
                let lost = reset.as_ref().map_or(0, |r| r.lost);
                (start, reset.map(|r| r.reason), lost)
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_usable_stored_offset_is_used_as_is() {
        for stored in [100, 150, 200] {
            assert_eq!(
                resolve(Some(stored), OffsetReset::Fail),
                Ok((stored, None, 0))
            );
        }
    }

    #[test]
    fn missing_follows_the_policy() {
        assert_eq!(
            resolve(None, OffsetReset::Earliest),
            Ok((100, Some(ResetReason::Missing), 0))
        );
        assert_eq!(
            resolve(None, OffsetReset::Latest),
            Ok((200, Some(ResetReason::Missing), 0))
        );
        assert!(
            resolve(None, OffsetReset::Fail)
                .is_err_and(|e| e.contains("t/0") && e.contains("missing"))
        );
    }

    #[test]
    fn expired_starts_at_the_log_start_and_counts_the_loss() {
        for policy in [OffsetReset::Earliest, OffsetReset::Latest] {
            assert_eq!(
                resolve(Some(40), policy),
                Ok((100, Some(ResetReason::Expired), 60))
            );
        }
        let refused = resolve(Some(40), OffsetReset::Fail).expect_err("fail refuses");
        assert!(
            refused.contains("stored offset 40") && refused.contains("log start 100"),
            "{refused}"
        );
    }

    #[test]
    fn ahead_of_the_log_end_follows_the_policy() {
        assert_eq!(
            resolve(Some(999), OffsetReset::Earliest),
            Ok((100, Some(ResetReason::Ahead), 0))
        );
        assert_eq!(
            resolve(Some(999), OffsetReset::Latest),
            Ok((200, Some(ResetReason::Ahead), 0))
        );
    }
}
