//! Kafka clients: configuration, the error-reporting context, and the
//! cluster monitor that discovers partitions and watermarks off the ingest
//! thread, so ingest never blocks on a metadata round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
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
        // librdkafka postpones a partition's next fetch by this much once its
        // local queue is full (default 1 s). Ingest drains a full queue in a
        // fraction of that, so the default would leave it idle most of the
        // time on a backlog: keep the fetcher close behind.
        .set("fetch.queue.backoff.ms", "5")
        // Prefetched records held in memory (default 64 MiB): 16 MiB is
        // about 50,000 typical lines, tens of milliseconds of full-speed ingest.
        .set("queued.max.messages.kbytes", "16384")
        // KIP-714 client metrics pushed to the broker: ipstats exports its own
        // metrics, and the push's per-poll bookkeeping costs about a tenth of
        // the consumer's CPU at full speed. `--kafka-config
        // enable.metrics.push=true` turns it back on.
        .set("enable.metrics.push", "false")
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
    /// Timestamp (ms) of the newest record, when the partition has one.
    pub newest_timestamp_ms: Option<i64>,
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

/// The monitor publishes, ingest and start-up read.
pub type ViewSender = watch::Sender<Arc<ClusterView>>;
pub type ViewReceiver = watch::Receiver<Arc<ClusterView>>;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Refreshes partitions, watermarks and newest-record timestamps every
/// `interval` until stopped. `tail` is a spare consumer that reads the last
/// record of each partition for its timestamp.
pub fn run_monitor(
    consumer: KafkaConsumer,
    tail: KafkaConsumer,
    topics: Vec<String>,
    interval: Duration,
    view: ViewSender,
    health: Arc<Health>,
    stop: Stop,
) {
    let topics: Vec<Arc<str>> = topics.into_iter().map(Arc::from).collect();
    let mut missing_reported = vec![false; topics.len()];
    loop {
        match refresh(&consumer, &topics, &mut missing_reported) {
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
                newest_timestamps(&tail, &mut partitions, &old);
                publish(partitions);
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
