//! What the consumer loop hands out: a snapshot at each slide (with event
//! time, at each slide the data's time passes), and the checkpoint job;
//! and, after each batch, the state kept within `--memory-limit`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{info, warn};

use super::event_clock::{EventPanes, epoch_ms};
use super::{IngestError, State, VIEW_FRESH_FOR_EVENT_TIME};
use crate::checkpoint::CheckpointJob;
use crate::snapshot::build::{PartitionProgress, partition_status};
use crate::snapshot::{MemoryStatus, PartitionStatus};
use crate::window::Pane;

impl State {
    /// Event time: moves the window's end as far as the data says,
    /// publishing the slides passed on the way (sampled while a backlog is
    /// replayed), then tells the counting thread the new floor. True when
    /// the end moved (the last slide is for the caller to publish).
    pub(super) fn advance_event_time(&mut self) -> Result<bool, IngestError> {
        let view = self.links.view.borrow().clone();
        let Some(events) = self.events.as_ref() else {
            return Ok(false);
        };
        // A partition holds the end back while it is behind or busy: the
        // cluster view shows records it has not read, it delivered records
        // lately (the view may not show the newest ones yet), or the view
        // is too old to tell (Kafka unreachable). Only a caught-up, quiet
        // partition does not, so a quiet partition never freezes the window.
        let now = Instant::now();
        let fresh = view
            .refreshed
            .is_some_and(|at| now.duration_since(at) <= VIEW_FRESH_FOR_EVENT_TIME);
        let backlog: Vec<bool> = self
            .tracker
            .partitions()
            .iter()
            .enumerate()
            .map(|(slot, p)| {
                !fresh
                    || events.active(slot, now, VIEW_FRESH_FOR_EVENT_TIME)
                    || !p.read_to_end_of(&view)
            })
            .collect();
        let (published, stops) = match events.target_end(&backlog) {
            None => (Vec::new(), Vec::new()),
            Some(target) if self.builder.has_rules() => {
                (events.steps(target), events.every_slide(target))
            }
            Some(target) => {
                let steps = events.steps(target);
                (steps.clone(), steps)
            }
        };
        // Snapshots at the sampled ends (the last is for the caller), rules
        // at every slide.
        let last = stops.len().saturating_sub(1);
        for (i, step) in stops.iter().enumerate() {
            if let Some(events) = self.events.as_mut() {
                events.advance_to(*step, &mut self.window);
            }
            if i == last {
                break;
            }
            if published.binary_search(step).is_ok() {
                self.publish();
            } else {
                self.builder.evaluate_rules(&self.window);
            }
        }
        let floor = self.events.as_ref().and_then(EventPanes::floor);
        self.counting.set_floor(floor)?;
        Ok(!stops.is_empty())
    }

    /// Summarizes kept panes while the state is over `--memory-limit`, and
    /// says so when it starts and when every pane is exact again.
    pub(super) fn keep_to_budget(&mut self) {
        let ahead = self.events.as_ref().map_or(0, EventPanes::bytes);
        let budget = self.config.memory;
        // Kept panes are folded here; an open pane that outgrew its share
        // arrives summarized from the counting thread.
        self.window
            .fold(budget.kept_bytes().saturating_sub(ahead), budget.capacity);
        let state_bytes = self.window.bytes() + ahead;
        let summarized = self.window.summarized_panes();
        if summarized > 0 && self.summarizing_since.is_none() {
            self.summarizing_since = Some(SystemTime::now());
            warn!(
                state_bytes,
                budget_bytes = budget.bytes,
                keys_per_pane = budget.capacity,
                "the counting state reached --memory-limit: the panes holding the most addresses \
                 are summarized from now on, and answers from them carry error bounds"
            );
        } else if summarized == 0 && self.summarizing_since.take().is_some() {
            info!("every kept pane is exact again: answers are exact");
        }
        let metrics = &self.links.metrics;
        metrics.state_bytes.set(state_bytes as i64);
        metrics.panes_summarized.set(summarized as i64);
    }

    pub(super) fn publish(&mut self) {
        let view = self.links.view.borrow().clone();
        let partitions: Vec<PartitionStatus> = self
            .tracker
            .partitions()
            .iter()
            .zip(&self.partition_metrics)
            .enumerate()
            .map(|(slot, (p, metrics))| {
                let progress = PartitionProgress {
                    topic: &p.topic,
                    partition: p.partition,
                    next: p.next,
                    last_timestamp_ms: p.last_timestamp_ms,
                    last_reset: p.last_reset.as_ref(),
                    started: &p.started,
                    newest_event_ms: self.events.as_ref().and_then(|e| e.newest(slot)),
                    records_late: self.events.as_ref().map_or(0, |e| e.late(slot)),
                };
                let status = partition_status(
                    &progress,
                    self.window.panes(),
                    view.find(&p.topic, p.partition),
                );
                if let Some(lag) = status.lag() {
                    metrics.lag.set(lag);
                    metrics.group_lag.set(lag);
                }
                // The same answer as /api/v1/offsets: unknown is NaN, never 0.
                metrics
                    .lag_seconds
                    .set(status.lag_seconds.unwrap_or(f64::NAN));
                status
            })
            .collect();
        let wall = SystemTime::now();
        // Wall clock minus the window's end: how far behind the answer is.
        let event_lag = match &self.events {
            None => 0.0,
            Some(events) => events.end_ms().map_or(f64::NAN, |end| {
                (epoch_ms(wall) - end).max(0) as f64 / 1000.0
            }),
        };
        self.links.metrics.event_time_lag.set(event_lag);
        let mut snapshot = self.builder.build(
            &mut self.window,
            partitions,
            self.totals,
            Instant::now(),
            SystemTime::now(),
        );
        if let Some(events) = &self.events {
            snapshot.ahead = events.ahead().cloned().collect();
        }
        snapshot.ingest.memory = MemoryStatus {
            budget_bytes: self.config.memory.bytes,
            state_bytes: self.window.bytes() + self.events.as_ref().map_or(0, EventPanes::bytes),
            panes_summarized: self.window.summarized_panes(),
            summarizing_since: self.summarizing_since,
        };
        self.links.published.store(Arc::new(snapshot));
    }

    pub(super) fn checkpoint_job(&self) -> CheckpointJob {
        // Older panes kept for ad-hoc questions, the window's, then those ahead.
        let mut panes: Vec<Arc<Pane>> = self.window.retained().cloned().collect();
        panes.extend(self.window.panes().cloned());
        let (mut next_pane_seq, mut event_end_ms) = (self.tracker.next_seq(), None);
        if let Some(events) = &self.events {
            // Panes ahead of the window hold counted records too.
            panes.extend(events.ahead().cloned());
            next_pane_seq = events.next_seq();
            event_end_ms = events.end_ms();
        }
        CheckpointJob {
            panes,
            offsets: self.tracker.offsets(),
            next_pane_seq,
            totals: self.totals,
            event_end_ms,
            alerts: self.builder.saved_alerts(),
        }
    }
}
