//! Committing durable offsets: the retry loop both stores share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::committed::StoreStatus;
use crate::metrics::Metrics;

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
            if last_committed.as_ref() == Some(&request) {
                info!(
                    store,
                    partitions = request.offsets.len(),
                    "final offsets committed"
                );
            }
            return Ok(());
        }
    }
}

/// The offsets of one durable checkpoint, handed to the committers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitRequest {
    /// `(topic, partition, next offset)`: every record below is counted.
    pub offsets: Vec<(Arc<str>, i32, i64)>,
}
