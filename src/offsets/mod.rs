//! Offsets: where to start each partition, and committing progress to
//! ZooKeeper (the original job's layout) and to the Kafka consumer group.
//!
//! Start rule, as the original `getOffsets`, plus the cases it missed:
//! a stored offset inside `[log start, log end]` is used; none stored, below
//! the log start (expired by retention) or above the log end (topic
//! recreated) is a *reset* — never silent: logged, counted, shown.

pub mod committed;
pub mod kafka_group;
pub mod zookeeper;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::OffsetReset;
use crate::metrics::Metrics;
use committed::StoreStatus;

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

/// What one commit attempt came to.
pub enum Attempt {
    Committed,
    /// Worth retrying; `result` labels `ipstats_offset_commits_total`.
    Retry {
        error: String,
        result: &'static str,
    },
    /// Cannot go on (e.g. another instance owns the partitions).
    Fatal(anyhow::Error),
    /// Cancelled before an attempt could be made.
    Stopped,
}

/// A store offsets are committed to.
pub trait CommitTarget: Send {
    /// One try at committing `request`; `stopping` asks for a bounded try.
    fn attempt(
        &mut self,
        request: &CommitRequest,
        stopping: bool,
    ) -> impl std::future::Future<Output = Attempt> + Send;
}

/// The commit loop both stores share: wait for a newly published request,
/// commit it with backoff until it lands or a newer one supersedes it, and
/// make a last, bounded attempt at shutdown. Store outages never reach
/// ingest: requests only wait here, and the newest one wins.
pub async fn commit_loop(
    store: &'static str,
    mut requests: watch::Receiver<Arc<CommitRequest>>,
    status: &StoreStatus,
    metrics: &Metrics,
    cancel: &CancellationToken,
    target: &mut impl CommitTarget,
) -> anyhow::Result<()> {
    let count = |result: &str| {
        metrics
            .offset_commits
            .with_label_values(&[store, result])
            .inc();
    };
    let mut last_committed: Option<Arc<CommitRequest>> = None;
    loop {
        let stopping = tokio::select! {
            () = cancel.cancelled() => true,
            changed = requests.changed() => {
                if changed.is_err() {
                    // Ingest is gone (it reports why); commit what it last
                    // published once shutdown begins.
                    cancel.cancelled().await;
                }
                changed.is_err()
            }
        };
        let request = requests.borrow_and_update().clone();
        let pending = !request.offsets.is_empty() && last_committed.as_ref() != Some(&request);
        let mut backoff = Duration::from_millis(200);
        let final_deadline = Instant::now() + Duration::from_secs(5);
        // Retry until committed, superseded by a newer request, or out of time.
        if pending {
            loop {
                match target.attempt(&request, stopping).await {
                    Attempt::Committed => {
                        count("ok");
                        status.record(request.offsets.iter().cloned(), true);
                        last_committed = Some(request.clone());
                        break;
                    }
                    Attempt::Fatal(error) => {
                        count("error");
                        status.failed(format!("{error:#}"));
                        return Err(error);
                    }
                    Attempt::Stopped => return Ok(()),
                    Attempt::Retry { error, result } => {
                        count(result);
                        warn!(store, %error, "offset commit failed; retrying");
                        status.failed(error);
                    }
                }
                if stopping && Instant::now() >= final_deadline {
                    warn!(store, "giving up the final offset commit at shutdown");
                    return Ok(());
                }
                tokio::select! {
                    () = cancel.cancelled(), if !stopping => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // A newer request supersedes this one; a shutdown gets its
                // own, final attempt from the outer loop.
                if requests.has_changed().unwrap_or(false) || (cancel.is_cancelled() && !stopping) {
                    break;
                }
            }
        }
        if stopping {
            return Ok(());
        }
    }
}

/// The offsets of one published snapshot, handed to the committers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitRequest {
    /// `(topic, partition, next offset)`: every record below is counted.
    pub offsets: Vec<(Arc<str>, i32, i64)>,
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
