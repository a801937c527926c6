//! Kafka clients: configuration, the error-reporting context, and the
//! cluster monitor that discovers partitions and watermarks off the ingest
//! thread, so ingest never blocks on a metadata round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::snapshot::Health;
use crate::stop::Stop;

/// Reports client-level errors to metrics and health instead of only logging them.
pub struct KafkaContext {
    pub health: Arc<Health>,
    pub metrics: Metrics,
}

impl ClientContext for KafkaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_errors.inc();
        self.health.kafka_failed(format!("{error}: {reason}"));
        warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for KafkaContext {}

pub type KafkaConsumer = BaseConsumer<KafkaContext>;

/// The consumer configuration shared by ingest and the monitor.
pub fn consumer_config(
    brokers: &str,
    group: &str,
    auto_offset_reset: &str,
    extra: &[(String, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        // Offsets are committed by ipstats, after the batch holding them is counted.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", auto_offset_reset)
        .set("client.id", "ipstats");
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}

/// One partition as the cluster reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Log start offset (first record still stored).
    pub low: i64,
    /// Log end offset (next offset to be written).
    pub high: i64,
}

/// What the monitor last learnt about the configured topics.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// Bumped whenever the set of partitions changes.
    pub generation: u64,
    pub partitions: Vec<PartitionInfo>,
    pub refreshed: Option<Instant>,
}

impl ClusterView {
    pub fn find(&self, topic: &str, partition: i32) -> Option<&PartitionInfo> {
        self.partitions
            .iter()
            .find(|p| p.partition == partition && &*p.topic == topic)
    }
}

pub type SharedView = Arc<ArcSwap<ClusterView>>;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Refreshes partitions and watermarks every `interval` until stopped.
pub fn run_monitor(
    consumer: KafkaConsumer,
    topics: Vec<String>,
    interval: Duration,
    view: SharedView,
    health: Arc<Health>,
    stop: Stop,
) {
    let topics: Vec<Arc<str>> = topics.into_iter().map(Arc::from).collect();
    let mut missing_reported = vec![false; topics.len()];
    loop {
        match refresh(&consumer, &topics, &mut missing_reported) {
            Ok(partitions) => {
                let old = view.load();
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
                view.store(Arc::new(ClusterView {
                    generation,
                    partitions,
                    refreshed: Some(Instant::now()),
                }));
                if !health.kafka_connected() {
                    info!("kafka cluster reachable");
                }
                health.kafka_ok();
            }
            Err(error) => {
                if health.kafka_connected() {
                    warn!(%error, "kafka cluster unreachable; counting resumes when it answers");
                }
                health.kafka_failed(error.to_string());
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
            });
        }
    }
    Ok(out)
}
