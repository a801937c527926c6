//! The cluster monitor: refreshes partitions, watermarks and the newest
//! record's timestamp of every partition, and publishes them as a
//! [`ClusterView`] that ingest and start-up read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{ClusterView, KafkaConsumer, PartitionInfo, ViewSender};
use crate::stop::Stop;
use crate::vocab::Health;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The Kafka clients the monitor uses and polls.
pub struct MonitorClients {
    /// Reads metadata and watermarks.
    pub monitor: KafkaConsumer,
    /// Reads the last record of each partition.
    pub tail: KafkaConsumer,
    /// Clients no loop polls (the committer's): polled for their errors.
    pub idle: Vec<Arc<KafkaConsumer>>,
}

/// Refreshes partitions, watermarks and newest-record timestamps every
/// `interval` until stopped. `tail` is a spare consumer that reads the last
/// record of each partition for its timestamp. Clients deliver their errors
/// and log lines only when polled: the monitor polls its own, `tail` and
/// `idle` (clients no loop polls, such as the committer's) at each refresh,
/// so that a broker refusing the credentials is reported at once.
pub fn run_monitor(
    MonitorClients {
        monitor: consumer,
        tail,
        idle,
    }: MonitorClients,
    topics: Vec<String>,
    interval: Duration,
    view: ViewSender,
    health: Arc<Health>,
    stop: Stop,
) {
    let topics: Vec<Arc<str>> = topics.into_iter().map(Arc::from).collect();
    let mut missing_reported = vec![false; topics.len()];
    // Whether the cluster's state was reported: a failure at start-up is
    // worth a warning as much as one after contact.
    let mut reported = false;
    loop {
        let errors_before = health.kafka_errors();
        let refreshed = refresh(&consumer, &topics, &mut missing_reported);
        for client in std::iter::once(&consumer)
            .chain(std::iter::once(&tail))
            .chain(idle.iter().map(|c| &**c))
        {
            // Not assigned: a poll only serves queued errors and log lines,
            // one event per call; drained up to a bound.
            for _ in 0..1_000 {
                if client.poll(Duration::ZERO).is_none() {
                    break;
                }
            }
        }
        match refreshed {
            Ok(mut partitions) => {
                let old = view.borrow().clone();
                let same_set = old.partitions.len() == partitions.len()
                    && old
                        .partitions
                        .iter()
                        .zip(&partitions)
                        .all(|(a, b)| a.topic == b.topic && a.partition == b.partition);
                let generation = if same_set && old.refreshed.is_some() {
                    old.generation
                } else {
                    old.generation + 1
                };
                let publish = |partitions| {
                    view.send_replace(Arc::new(ClusterView {
                        generation,
                        partitions,
                        refreshed: Some(Instant::now()),
                    }))
                };
                if !same_set {
                    // New partitions are published at once, so that ingest can
                    // start on them; their newest timestamps follow.
                    publish(partitions.clone());
                }
                // The cluster answered (reading the newest timestamps may
                // take a while: it is not what readiness waits for).
                if !health.kafka_connected() || !reported {
                    info!("kafka cluster reachable");
                }
                reported = true;
                health.kafka_ok();
                newest_timestamps(&tail, &mut partitions, &old);
                publish(partitions);
            }
            Err(error) => {
                if health.kafka_connected() || !reported {
                    warn!(%error, "kafka cluster unreachable; counting resumes when it answers");
                }
                reported = true;
                health.kafka_failed_summary(error.to_string(), Some(errors_before));
            }
        }
        if stop.wait(interval) {
            return;
        }
    }
}

fn refresh(
    consumer: &KafkaConsumer,
    topics: &[Arc<str>],
    missing_reported: &mut [bool],
) -> Result<Vec<PartitionInfo>, KafkaError> {
    let mut out = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        let Some(meta) = metadata.topics().iter().find(|t| t.name() == &**topic) else {
            continue;
        };
        if meta.error().is_some() || meta.partitions().is_empty() {
            if !missing_reported[i] {
                warn!(%topic, "topic does not exist (yet); it is consumed once it appears");
                missing_reported[i] = true;
            }
            continue;
        }
        missing_reported[i] = false;
        let mut ids: Vec<i32> = meta.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        for partition in ids {
            let (low, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
            out.push(PartitionInfo {
                topic: topic.clone(),
                partition,
                low,
                high,
                newest_timestamp_ms: None,
            });
        }
    }
    Ok(out)
}

/// Fills `newest_timestamp_ms` by reading each partition's last record; a
/// partition whose log end has not moved keeps its previous answer.
fn newest_timestamps(
    tail: &KafkaConsumer,
    partitions: &mut [PartitionInfo],
    previous: &ClusterView,
) {
    let mut tpl = TopicPartitionList::new();
    let mut wanted = 0;
    for p in partitions.iter_mut() {
        if let Some(prev) = previous.find(&p.topic, p.partition)
            && prev.high == p.high
        {
            p.newest_timestamp_ms = prev.newest_timestamp_ms;
        } else if p.high > p.low
            && tpl
                .add_partition_offset(&p.topic, p.partition, Offset::Offset(p.high - 1))
                .is_ok()
        {
            wanted += 1;
        }
    }
    if wanted == 0 || tail.assign(&tpl).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut seen = vec![false; partitions.len()];
    let mut found = 0;
    while found < wanted {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let Some(Ok(message)) = tail.poll(deadline - now) else {
            continue;
        };
        let (topic, partition) = (message.topic(), message.partition());
        if let Some(i) = partitions
            .iter()
            .position(|p| p.partition == partition && &*p.topic == topic)
            && message.offset() >= partitions[i].high - 1
        {
            if !seen[i] {
                seen[i] = true;
                found += 1;
            }
            partitions[i].newest_timestamp_ms = message.timestamp().to_millis();
        }
    }
    let _ = tail.unassign();
}
