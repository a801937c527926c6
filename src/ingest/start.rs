//! Starting a state and the partitions it counts: the counting thread,
//! the window (restored or empty), the snapshot builder, and the
//! assignment of partitions at their start offsets.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::event_clock::EventPanes;
use super::tracker::{self, Tracker};
use super::{
    IngestConfig, IngestError, KafkaConsumer, Links, METADATA_WARM_TIMEOUT, PartitionMetrics,
    Resume, SEEK_TIMEOUT, State, StoredOffsets, resets,
};
use crate::count::{CountingThread, OpenLimit};
use crate::kafka::batch::BatchQueue;
use crate::log_limit::LogLimit;
use crate::rules::Evaluator;
use crate::snapshot::build::Builder;
use crate::vocab::IngestTotals;
use crate::window::Window;

impl State {
    /// A state starting from `stored` offsets, continuing `resume`'s window.
    pub(super) fn new(
        config: IngestConfig,
        stored: StoredOffsets,
        resume: Option<Resume>,
        links: Links,
    ) -> std::io::Result<Self> {
        let mut window = Window::new(config.window_panes)
            .with_retained(config.retained_panes)
            .with_owners(
                config
                    .owners
                    .as_ref()
                    .map(|o| o.attributor(config.memory.bytes)),
            );
        let (mut next_seq, mut totals) = (0, IngestTotals::default());
        let mut events = config.time.is_event().then(|| {
            EventPanes::new(
                config.batch,
                config.slide,
                config.time.lateness,
                config.window + config.batch * config.retained_panes as u32,
            )
        });
        let mut saved_alerts = None;
        if let Some(resume) = resume {
            saved_alerts = resume.alerts;
            next_seq = match events.as_mut() {
                Some(events) => {
                    events.restore(
                        resume.panes,
                        resume.event_end_ms,
                        resume.next_seq,
                        &mut window,
                    );
                    resume.next_seq
                }
                None => window.restore(
                    resume.panes,
                    resume.next_seq,
                    config.batch,
                    SystemTime::now(),
                ),
            };
            totals = resume.totals;
            if window.panes().len() > 0 {
                info!(
                    panes = window.panes().len(),
                    requests = window.requests(),
                    next_pane = next_seq,
                    "window restored from the checkpoint"
                );
            }
        }
        let now = Instant::now();
        Ok(State {
            tracker: Tracker::new(
                config.batch,
                config.max_rate_per_partition,
                next_seq,
                now,
                SystemTime::now(),
            ),
            builder: Builder::new(config.window, config.slide, totals.records_consumed, now)
                .with_rules(config.rules.clone().map(|rules| {
                    Evaluator::new(rules, config.batch, links.metrics.clone())
                        .with_saved(saved_alerts.as_ref())
                        .with_outbox(config.outbox.clone())
                })),
            counting: CountingThread::spawn(
                config.client_field.clone(),
                config.max_line_bytes,
                config.pane_time(),
                OpenLimit {
                    entries: config.memory.open_entries(),
                    capacity: config.memory.capacity,
                },
            )?,
            partition_metrics: Vec::new(),
            window,
            events,
            totals,
            config,
            assigned_generation: None,
            stored,
            links,
            logs: LogLimit::default(),
            published: false,
            summarizing_since: None,
            // Nothing is read yet: what is there to read is a backlog.
            behind: true,
        })
    }
}

/// Asks the cluster for each topic about to be assigned, so that librdkafka
/// knows its partitions' leaders when the assignment lands. A topic the
/// client has not yet seen otherwise waits for librdkafka's once-a-second
/// scan of unknown topics when its first request for it is lost to the
/// bootstrap connection being replaced: up to a second before the first
/// fetch. A failure here only means that wait; it is logged at debug.
fn warm_metadata(consumer: &KafkaConsumer, starts: &[tracker::Start]) {
    let mut topics: Vec<&str> = starts.iter().map(|s| &*s.topic).collect();
    topics.sort_unstable();
    topics.dedup();
    for topic in topics {
        if let Err(error) = consumer.fetch_metadata(Some(topic), METADATA_WARM_TIMEOUT) {
            debug!(%error, %topic, "metadata before assignment not fetched");
        }
    }
}

impl State {
    /// Assigns partitions the monitor found that are not assigned yet, their
    /// records routed to `queue` first.
    pub(super) fn assign_new_partitions(
        &mut self,
        consumer: &KafkaConsumer,
        queue: &BatchQueue<'_>,
    ) -> Result<(), IngestError> {
        let view = self.links.view.borrow_and_update().clone();
        if view.refreshed.is_none() || self.assigned_generation == Some(view.generation) {
            return Ok(());
        }
        let initial = self.assigned_generation.is_none();
        let starts = self
            .tracker
            .plan(&view, &self.stored, self.config.offset_reset, initial)?;
        self.assigned_generation = Some(view.generation);
        let all: Vec<bool> = vec![true; starts.len()];
        self.track(consumer, queue, starts, &all, initial)
    }

    /// Starts counting `starts`: the partitions marked in `assign` are
    /// routed to `queue` and assigned at their start offset; the others
    /// (already assigned: `--cluster`'s retained partitions) are moved to it.
    pub(super) fn track(
        &mut self,
        consumer: &KafkaConsumer,
        queue: &BatchQueue<'_>,
        starts: Vec<tracker::Start>,
        assign: &[bool],
        initial: bool,
    ) -> Result<(), IngestError> {
        let Some(first) = starts.first() else {
            return Ok(());
        };
        let assign_error = |topic: &Arc<str>, partition, source| IngestError::Assign {
            topic: topic.clone(),
            partition,
            source,
        };
        warm_metadata(consumer, &starts);
        let mut tpl = TopicPartitionList::new();
        for (s, _) in starts.iter().zip(assign).filter(|(_, a)| **a) {
            if let Err(error) = queue.route(&s.topic, s.partition) {
                // Its records then come through the consumer queue: slower, not lost.
                warn!(%error, topic = %s.topic, partition = s.partition,
                    "partition read one record per call");
            }
            tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.started.offset))
                .map_err(|e| assign_error(&s.topic, s.partition, e))?;
        }
        if tpl.count() > 0 {
            consumer
                .incremental_assign(&tpl)
                .map_err(|e| assign_error(&first.topic, first.partition, e))?;
        }
        for (s, _) in starts.iter().zip(assign).filter(|(_, a)| !**a) {
            let offset = Offset::Offset(s.started.offset);
            if let Err(error) = consumer.seek(&s.topic, s.partition, offset, SEEK_TIMEOUT) {
                return Err(assign_error(&s.topic, s.partition, error));
            }
        }
        resets::say_first_starts(&starts);
        for start in starts {
            if let Some(reset) = &start.reset {
                resets::record(
                    &self.links.metrics,
                    &start.topic,
                    start.partition,
                    reset,
                    false,
                );
            }
            info!(topic = %start.topic, partition = start.partition,
                start_offset = start.started.offset, from = start.started.from.as_str(),
                initial, "partition assigned");
            self.partition_metrics.push(PartitionMetrics::new(
                &self.links.metrics,
                &self.config.group,
                &start.topic,
                start.partition,
            ));
            self.tracker.add(start);
        }
        Ok(())
    }
}
