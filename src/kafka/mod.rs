//! Kafka clients: configuration, the error-reporting context, and what the
//! cluster [`monitor`] learns about partitions and watermarks (off the
//! ingest thread, so ingest never blocks on a metadata round trip).

pub mod batch;
pub mod monitor;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::log_limit::{self, LogLimit, repeats_note};
use crate::metrics::Metrics;
use crate::vocab::Health;

pub use monitor::{MonitorClients, run_monitor};

/// Reports client-level errors to metrics and health instead of only
/// logging them; a dead broker's errors, repeated many times a second by
/// every client, are logged once and then at most every 30 s with a count
/// (`logs` is shared by all clients).
pub struct KafkaContext {
    pub health: Arc<Health>,
    pub metrics: Metrics,
    pub logs: Arc<LogLimit>,
    /// `--cluster`: the group's assignment changes, for ingest to act on
    /// (see [`Rebalanced`]); `None` for clients that never subscribe.
    pub rebalances: Option<Arc<Rebalances>>,
}

/// The group's decisions waiting for ingest, and whether ingest has left
/// (then the callback acts on them itself: the consumer's close waits for
/// the revocation it triggers).
#[derive(Debug, Default)]
pub struct Rebalances {
    events: Mutex<Vec<Rebalanced>>,
    left: std::sync::atomic::AtomicBool,
}

impl Rebalances {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rebalanced>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pending(&self) -> bool {
        !self.lock().is_empty()
    }

    pub fn take(&self) -> Vec<Rebalanced> {
        std::mem::take(&mut *self.lock())
    }

    /// Ingest has stopped: from now on the callback assigns and revokes.
    pub fn leave(&self) {
        self.left.store(true, std::sync::atomic::Ordering::Release);
    }

    fn left(&self) -> bool {
        self.left.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A change of assignment the group decided, left for ingest: it
/// checkpoints, commits and positions the partitions before it calls
/// librdkafka's incremental assign or unassign, which librdkafka waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebalanced {
    Assign(Vec<(Arc<str>, i32)>),
    Revoke(Vec<(Arc<str>, i32)>),
    Failed(String),
}

impl ClientContext for KafkaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_errors.inc();
        let message = format!("{error}: {reason}");
        if let Some(repeats) = self.logs.admit(&message, Instant::now()) {
            warn!(%error, reason, "kafka client error{}", repeats_note(repeats, log_limit::EVERY));
        }
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // A consequence: the broker errors before it say why.
            self.health.kafka_failed_summary(message, None);
        } else {
            self.health.kafka_failed(message);
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let Some(repeats) = self.logs.admit(message, Instant::now()) else {
            return;
        };
        let note = repeats_note(repeats, log_limit::EVERY);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", "{fac} {message}{note}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{fac} {message}{note}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", "{fac} {message}{note}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "{fac} {message}{note}"),
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions = || {
            tpl.elements()
                .iter()
                .map(|e| (Arc::from(e.topic()), e.partition()))
                .collect()
        };
        let event = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                Rebalanced::Assign(partitions())
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                Rebalanced::Revoke(partitions())
            }
            other => Rebalanced::Failed(RDKafkaErrorCode::from(other).to_string()),
        };
        match &self.rebalances {
            Some(r) if r.left() => {
                // Leaving: nothing is counted any more; let the group go on.
                let done = match event {
                    Rebalanced::Assign(_) => consumer.incremental_assign(tpl),
                    Rebalanced::Revoke(_) => consumer.incremental_unassign(tpl),
                    Rebalanced::Failed(_) => Ok(()),
                };
                if let Err(error) = done {
                    debug!(%error, "acting on a rebalance while leaving the group");
                }
            }
            Some(r) => r.lock().push(event),
            None => warn!(
                ?event,
                "rebalance on a client that never subscribes; ignored"
            ),
        }
    }
}

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
