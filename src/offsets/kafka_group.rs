//! Kafka consumer-group offsets: the same offsets as ZooKeeper, committed
//! manually to the group (never subscribed, so never rebalanced), so that
//! `kafka-consumer-groups --describe` and lag exporters see progress. With
//! `--cluster` the committing client is the group member itself, and only
//! the partitions this instance holds are committed.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::commit::{Attempt, CommitRequest, CommitTarget, commit_loop};
use super::committed::Committed;
use crate::cluster::Ownership;
use crate::kafka::KafkaConsumer;
use crate::metrics::Metrics;

fn partition_list(offsets: &[(Arc<str>, i32, i64)]) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

/// The group's committed offsets for `partitions` (absent when none).
pub fn read_committed(
    consumer: &KafkaConsumer,
    partitions: &[(Arc<str>, i32)],
) -> Result<Vec<(Arc<str>, i32, i64)>, KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(partitions
        .iter()
        .filter_map(|(topic, partition)| {
            match committed.find_partition(topic, *partition)?.offset() {
                Offset::Offset(o) => Some((topic.clone(), *partition, o)),
                _ => None,
            }
        })
        .collect())
}

struct GroupTarget(Arc<KafkaConsumer>, Option<Arc<Ownership>>);

impl CommitTarget for GroupTarget {
    async fn attempt(&mut self, request: &CommitRequest, _stopping: bool) -> Attempt {
        let mut offsets = request.offsets.clone();
        if let Some(ownership) = &self.1 {
            offsets.retain(|(t, p, o)| ownership.may_commit(t, *p, *o));
            if offsets.is_empty() {
                return Attempt::Committed;
            }
        }
        let consumer = self.0.clone();
        let result = tokio::task::spawn_blocking(move || {
            consumer.commit(&partition_list(&offsets)?, CommitMode::Sync)
        })
        .await;
        match result {
            Ok(Ok(())) => Attempt::Committed,
            Ok(Err(error)) => Attempt::Retry {
                error: error.to_string(),
                result: "error",
            },
            Err(join) => Attempt::Fatal(join.into()),
        }
    }
}

/// Commits every published request to the group (see [`commit_loop`]).
pub async fn run_committer(
    consumer: Arc<KafkaConsumer>,
    ownership: Option<Arc<Ownership>>,
    requests: watch::Receiver<Arc<CommitRequest>>,
    committed: Arc<Committed>,
    metrics: Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut target = GroupTarget(consumer, ownership);
    commit_loop(
        "kafka",
        requests,
        &committed.kafka,
        &metrics,
        &cancel,
        &mut target,
    )
    .await
}
