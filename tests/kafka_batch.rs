//! The batch path (src/kafka/batch.rs, librdkafka's batch call) against the
//! safe one-record-per-call path, on a real topic: the same records, offsets,
//! timestamps and payloads, and every record destroyed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Seen, assign_from_start, cluster, create_topic, drop_within, plain_consumer, seen};
use ipstats::kafka::batch::BatchQueue;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const RECORDS: usize = 30_000;
const PARTITIONS: i32 = 3;

/// Payloads of every shape a topic holds: typical lines, empty ones, none
/// at all (a tombstone), and large ones.
fn payload(i: usize) -> Option<Vec<u8>> {
    match i {
        _ if i.is_multiple_of(101) => None,
        _ if i.is_multiple_of(97) => Some(Vec::new()),
        _ if i % 1000 == 1 => Some(vec![b'a' + (i % 26) as u8; 200_000]),
        _ => Some(
            format!(
                r#"{{"remote_addr":"10.0.{}.{}","n":{i}}}"#,
                i % 256,
                i % 199
            )
            .into_bytes(),
        ),
    }
}

#[test]
fn the_batch_path_reads_a_real_topic_exactly_as_the_safe_path() {
    let Some(cluster) = cluster() else {
        return;
    };
    let topic = create_topic(&cluster, "batch", PARTITIONS as u32);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .create()
        .expect("producer");
    for i in 0..RECORDS {
        let body = payload(i);
        let mut record = BaseRecord::<(), [u8]>::to(&topic)
            .partition(i as i32 % PARTITIONS)
            .timestamp(1_700_000_000_000 + i as i64);
        if let Some(body) = &body {
            record = record.payload(body.as_slice());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    // The local queue is full: let deliveries drain, then retry.
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");

    let safe = plain_consumer(&cluster.brokers, &[]);
    assign_from_start(&safe, None, &topic, PARTITIONS);
    let mut by_poll: Vec<Seen> = Vec::with_capacity(RECORDS);
    while by_poll.len() < RECORDS {
        match safe.poll(Duration::from_secs(30)) {
            Some(Ok(m)) => by_poll.push(seen(&m)),
            Some(Err(e)) => panic!("poll: {e}"),
            None => panic!("poll: nothing for 30 s after {} records", by_poll.len()),
        }
    }

    let batched = plain_consumer(&cluster.brokers, &[]);
    let mut queue = BatchQueue::new(&batched, 512).expect("queue");
    assign_from_start(&batched, Some(&queue), &topic, PARTITIONS);
    let mut by_batch: Vec<Seen> = Vec::with_capacity(RECORDS);
    let mut calls = 0;
    while by_batch.len() < RECORDS {
        let batch = queue.fill(Duration::from_secs(30));
        assert!(
            !batch.is_empty(),
            "nothing for 30 s after {} records",
            by_batch.len()
        );
        calls += 1;
        for record in batch {
            by_batch.push(seen(&record.expect("a record, not an error")));
        }
    }
    // Nothing more on either queue: no record twice, none left to the consumer queue.
    assert!(queue.fill(Duration::from_millis(200)).is_empty());
    assert!(batched.poll(Duration::ZERO).is_none());
    assert!(
        calls * 20 < RECORDS,
        "many records per call: {calls} calls for {RECORDS}"
    );

    // Per partition, in offset order, with no gap.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset, ..) in &by_batch {
        let expected = next.entry(*partition).or_insert(0);
        assert_eq!(*offset, *expected, "partition {partition} out of order");
        *expected += 1;
    }
    by_poll.sort();
    by_batch.sort();
    assert_eq!(by_batch.len(), by_poll.len());
    for (a, b) in by_batch.iter().zip(&by_poll) {
        assert!(a == b, "batch {}/{} != safe {}/{}", a.0, a.1, b.0, b.1);
    }
    // What was produced, record for record.
    for (partition, offset, timestamp, body) in &by_batch {
        let i = *offset as usize * PARTITIONS as usize + *partition as usize;
        assert_eq!(*timestamp, Some(1_700_000_000_000 + i as i64));
        assert_eq!(body, &payload(i).unwrap_or_default(), "record {i}");
    }
    drop(queue);
    drop_within(batched, Duration::from_secs(30), "the batch consumer");
}
