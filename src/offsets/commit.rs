//! Committing durable offsets: the retry loop both stores share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
    /// Committed in part; the rest waits for something that is on its way
    /// (a partition's ownership being taken): tried again, quietly.
    Waiting(String),
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
                    // What waits may not come during shutdown: the part
                    // committed is what shutdown gets.
                    Attempt::Waiting(_) if stopping => break,
                    Attempt::Waiting(why) => {
                        debug!(store, %why, "offset commit in part; trying again");
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::committed::Committed;

    /// Says `Waiting` a given number of times, then commits.
    struct Eventually {
        waits: usize,
        attempts: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl CommitTarget for Eventually {
        async fn attempt(&mut self, _: &CommitRequest, _: bool) -> Attempt {
            let n = self
                .attempts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < self.waits {
                Attempt::Waiting("ownership not taken yet".into())
            } else {
                Attempt::Committed
            }
        }
    }

    #[tokio::test]
    async fn a_commit_that_waits_is_tried_again_without_a_newer_request() {
        let (tx, rx) = watch::channel(Arc::new(CommitRequest::default()));
        let committed = Committed::new(true);
        let metrics = crate::metrics::Metrics::new().expect("metrics");
        let cancel = CancellationToken::new();
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut target = Eventually {
            waits: 2,
            attempts: attempts.clone(),
        };
        let topic: Arc<str> = "t".into();
        tx.send_replace(Arc::new(CommitRequest {
            offsets: vec![(topic.clone(), 0, 42)],
        }));
        let looping = commit_loop(
            "zookeeper",
            rx,
            &committed.zookeeper,
            &metrics,
            &cancel,
            &mut target,
        );
        tokio::pin!(looping);
        // One request, no newer one: tried until it lands.
        let landed = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    _ = &mut looping => panic!("the loop ended"),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                if committed.zookeeper.get(&topic, 0) == Some(42) {
                    break;
                }
            }
        })
        .await;
        assert!(landed.is_ok(), "never committed");
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
