//! Batch consumption: many records per librdkafka call instead of one.
//!
//! `BaseConsumer::poll` returns one record per call and wraps each in its own
//! reference-counted event; at full speed that bookkeeping costs as much as
//! parsing the line. librdkafka's `rd_kafka_consume_batch_queue` hands over
//! up to a whole array of records under one queue lock. It is reachable only
//! through the C API, so this module is one of the two places in ipstats
//! where `unsafe` is allowed (the other is `input::classify`); every block
//! says why it is sound.
//!
//! Which queue: each assigned partition's fetch queue is forwarded to a
//! queue of our own ([`BatchQueue::route`]), not read from the consumer
//! queue. The consumer queue also carries the client's log and error events
//! (rust-rdkafka forwards the main queue into it), and the batch call serves
//! those with no callback set, so they would vanish: the Kafka context would
//! never hear that the broker is down or that authentication failed. Records
//! come through the batch queue; the consumer queue is still polled, and
//! still reports errors.
//!
//! Ownership: a record taken from librdkafka is owned by exactly one
//! [`Record`] (or, until it is handed out, by the [`Batch`] holding it) and
//! destroyed when that owner is dropped: after it is counted, when a handler
//! returns an error half way through a batch, and at shutdown. Records and
//! batches borrow the consumer, so the client they belong to cannot be
//! destroyed under them.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::os::raw::c_int;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};

/// What ingest reads from a consumed record, whichever call delivered it.
pub trait Consumed {
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    /// The record's timestamp (ms), when it has one.
    fn timestamp_ms(&self) -> Option<i64>;
    fn payload(&self) -> &[u8];
}

impl Consumed for BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        Message::topic(self)
    }
    fn partition(&self) -> i32 {
        Message::partition(self)
    }
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
    fn timestamp_ms(&self) -> Option<i64> {
        Message::timestamp(self).to_millis()
    }
    fn payload(&self) -> &[u8] {
        Message::payload(self).unwrap_or_default()
    }
}

/// A queue that assigned partitions forward their records to, read many
/// records per call. Borrows the consumer it was made from: the client
/// outlives the queue and every record read from it.
pub struct BatchQueue<'c> {
    queue: NonNull<rd::rd_kafka_queue_t>,
    client: NonNull<rd::rd_kafka_t>,
    /// The array librdkafka fills; only ever holds pointers between a fill
    /// and the moment each is moved into a [`Batch`].
    slots: Vec<*mut rd::rd_kafka_message_t>,
    _consumer: PhantomData<&'c ()>,
}

impl<'c> BatchQueue<'c> {
    /// A new, empty queue on `consumer`'s client, filled up to `capacity`
    /// records per call.
    pub fn new<C: ConsumerContext>(
        consumer: &'c BaseConsumer<C>,
        capacity: usize,
    ) -> Result<Self, KafkaError> {
        let client = NonNull::new(consumer.client().native_ptr())
            .ok_or_else(|| KafkaError::ClientCreation("the consumer has no client".into()))?;
        // SAFETY: `client` is the live rd_kafka_t of `consumer`, which this
        // value borrows for 'c; rd_kafka_queue_new only allocates a queue on it.
        let queue = unsafe { rd::rd_kafka_queue_new(client.as_ptr()) };
        let queue = NonNull::new(queue)
            .ok_or_else(|| KafkaError::ClientCreation("rd_kafka_queue_new failed".into()))?;
        Ok(BatchQueue {
            queue,
            client,
            slots: vec![std::ptr::null_mut(); capacity.max(1)],
            _consumer: PhantomData,
        })
    }

    /// Sends `topic`/`partition`'s records (and its consume errors) to this
    /// queue. Call it before the partition is assigned, so that no record
    /// reaches the consumer queue first.
    pub fn route(&self, topic: &str, partition: i32) -> Result<(), KafkaError> {
        let name = CString::new(topic)
            .map_err(|_| KafkaError::ClientCreation(format!("topic {topic:?} holds a NUL")))?;
        // SAFETY: the client is alive (borrowed for 'c) and `name` is a valid
        // NUL-terminated string for the duration of the call. The returned
        // handle is a new reference (or null), released below.
        let partq = unsafe {
            rd::rd_kafka_queue_get_partition(self.client.as_ptr(), name.as_ptr(), partition)
        };
        let Some(partq) = NonNull::new(partq) else {
            return Err(KafkaError::ClientCreation(format!(
                "no queue for {topic}/{partition}"
            )));
        };
        // SAFETY: both handles are valid. Forwarding takes its own reference
        // on our queue, and a forward set here is kept when the partition's
        // fetch starts (librdkafka marks it as the application's). Destroying
        // the partition handle only drops this call's reference; the
        // partition and its forward live on.
        unsafe {
            rd::rd_kafka_queue_forward(partq.as_ptr(), self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(partq.as_ptr());
        }
        Ok(())
    }

    /// Nothing is waiting in the queue.
    pub fn is_empty(&self) -> bool {
        // SAFETY: the queue handle is valid while `self` lives; the call
        // only reads the queue's length under its lock.
        unsafe { rd::rd_kafka_queue_length(self.queue.as_ptr()) == 0 }
    }

    /// Takes what the queue holds, up to the capacity. With a non-zero
    /// `wait`, waits at most that long for the first record (and no longer
    /// once one is there); with zero, returns at once.
    pub fn fill(&mut self, wait: Duration) -> Batch<'_, 'c> {
        let mut first = 0;
        if !wait.is_zero() {
            let timeout_ms = c_int::try_from(wait.as_millis()).unwrap_or(c_int::MAX);
            // SAFETY: the queue handle is valid while `self` lives. The call
            // returns a record we now own (destroyed by the Batch that takes
            // it below), or null when the wait ran out.
            let one = unsafe { rd::rd_kafka_consume_queue(self.queue.as_ptr(), timeout_ms) };
            if one.is_null() {
                return Batch::empty(self);
            }
            self.slots[0] = one;
            first = 1;
        }
        let room = self.slots.len() - first;
        // SAFETY: `slots[first..]` is `room` writable pointer slots; librdkafka
        // writes at most `room` of them, each a record we now own. The return
        // value says how many; -1 means none (an invalid queue).
        let got = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                0,
                self.slots.as_mut_ptr().add(first),
                room,
            )
        };
        let len = first + usize::try_from(got).unwrap_or(0).min(room);
        Batch {
            slots: &mut self.slots[..len],
            next: 0,
            _consumer: PhantomData,
        }
    }
}

impl Drop for BatchQueue<'_> {
    fn drop(&mut self) {
        // SAFETY: we own this handle (from rd_kafka_queue_new) and the client
        // is still alive ('c). Partition queues may still forward to it:
        // they hold their own reference, and librdkafka discards what they
        // send to a destroyed queue.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// The records of one fill, handed out in order. Whatever is not handed out
/// is destroyed when the batch is dropped.
pub struct Batch<'q, 'c> {
    slots: &'q mut [*mut rd::rd_kafka_message_t],
    next: usize,
    _consumer: PhantomData<&'c ()>,
}

impl<'q, 'c> Batch<'q, 'c> {
    fn empty(queue: &'q mut BatchQueue<'c>) -> Self {
        Batch {
            slots: &mut queue.slots[..0],
            next: 0,
            _consumer: PhantomData,
        }
    }

    /// Records (and errors) in this batch, handed out or not.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl<'c> Iterator for Batch<'_, 'c> {
    type Item = Result<Record<'c>, KafkaError>;

    fn next(&mut self) -> Option<Self::Item> {
        let ptr = std::mem::replace(self.slots.get_mut(self.next)?, std::ptr::null_mut());
        self.next += 1;
        // librdkafka never stores null in the part of the array it reports.
        let record = Record {
            ptr: NonNull::new(ptr)?,
            _consumer: PhantomData,
        };
        match record.error() {
            // The error record is dropped (destroyed) here.
            Some(error) => Some(Err(error)),
            None => Some(Ok(record)),
        }
    }
}

impl Drop for Batch<'_, '_> {
    fn drop(&mut self) {
        for slot in &mut self.slots[self.next..] {
            let ptr = std::mem::replace(slot, std::ptr::null_mut());
            if !ptr.is_null() {
                // SAFETY: records not handed out are still owned by this
                // batch, each exactly once (the slot is cleared as it is
                // taken), and the client is alive ('c).
                unsafe { rd::rd_kafka_message_destroy(ptr) };
            }
        }
    }
}

/// One record read by a batch call, destroyed when dropped.
pub struct Record<'c> {
    ptr: NonNull<rd::rd_kafka_message_t>,
    _consumer: PhantomData<&'c ()>,
}

impl Record<'_> {
    fn raw(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: `ptr` is a record librdkafka handed us, not yet destroyed
        // (we own it until drop), and librdkafka no longer writes to it.
        unsafe { self.ptr.as_ref() }
    }

    fn error(&self) -> Option<KafkaError> {
        let raw = self.raw();
        match raw.err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => None,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                Some(KafkaError::PartitionEOF(raw.partition))
            }
            code => Some(KafkaError::MessageConsumption(RDKafkaErrorCode::from(code))),
        }
    }
}

impl Consumed for Record<'_> {
    fn topic(&self) -> &str {
        let rkt = self.raw().rkt;
        if rkt.is_null() {
            return "";
        }
        // SAFETY: a record holds a reference on its topic handle, so the
        // name librdkafka returns lives as long as the record, which `&self`
        // borrows; it is NUL-terminated.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(rkt)) };
        name.to_str().unwrap_or("")
    }

    fn partition(&self) -> i32 {
        self.raw().partition
    }

    fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the record is valid (see `raw`) and `kind` is a valid place
        // for librdkafka to write the timestamp's type.
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.ptr.as_ptr(), &mut kind) };
        (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE).then_some(ms)
    }

    fn payload(&self) -> &[u8] {
        let raw = self.raw();
        if raw.payload.is_null() || raw.len == 0 {
            return &[];
        }
        // SAFETY: librdkafka guarantees `len` readable bytes at `payload`,
        // owned by the record and unchanged until it is destroyed, which
        // cannot happen while `&self` is borrowed.
        unsafe { std::slice::from_raw_parts(raw.payload.cast::<u8>(), raw.len) }
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        // SAFETY: this record owns the pointer (taken out of its batch
        // exactly once) and the client is alive ('c).
        unsafe { rd::rd_kafka_message_destroy(self.ptr.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};

    /// The embedded broker with `records` records over two partitions.
    fn mock_topic(
        records: usize,
    ) -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        String,
    ) {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let topic = "batch-test".to_string();
        cluster.create_topic(&topic, 2, 1).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        for i in 0..records {
            let payload = format!("line {i}");
            let key = i.to_string();
            let record = BaseRecord::to(&topic)
                .payload(&payload)
                .key(&key)
                .partition((i % 2) as i32)
                .timestamp(1_700_000_000_000 + i as i64);
            producer.send(record).expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        (cluster, topic)
    }

    fn consumer(brokers: &str, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    }

    fn assign(consumer: &BaseConsumer, topic: &str) {
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
        consumer.incremental_assign(&tpl).expect("assign");
    }

    type Seen = Vec<(String, i32, i64, Option<i64>, Vec<u8>)>;

    fn seen(record: &impl Consumed) -> (String, i32, i64, Option<i64>, Vec<u8>) {
        (
            record.topic().to_string(),
            record.partition(),
            record.offset(),
            record.timestamp_ms(),
            record.payload().to_vec(),
        )
    }

    #[test]
    fn the_batch_path_reads_what_the_safe_path_reads() {
        let (cluster, topic) = mock_topic(1000);
        let brokers = cluster.bootstrap_servers();

        let safe = consumer(&brokers, "safe");
        assign(&safe, &topic);
        let mut by_poll: Seen = Vec::new();
        while by_poll.len() < 1000 {
            match safe.poll(Duration::from_secs(10)) {
                Some(Ok(m)) => by_poll.push(seen(&m)),
                Some(Err(e)) => panic!("poll: {e}"),
                None => panic!("poll timed out after {}", by_poll.len()),
            }
        }

        let batched = consumer(&brokers, "batch");
        let mut queue = BatchQueue::new(&batched, 64).expect("queue");
        for p in 0..2 {
            queue.route(&topic, p).expect("route");
        }
        assign(&batched, &topic);
        let mut by_batch: Seen = Vec::new();
        let mut fills = 0;
        while by_batch.len() < 1000 {
            let batch = queue.fill(Duration::from_secs(10));
            assert!(!batch.is_empty(), "timed out after {}", by_batch.len());
            assert!(batch.len() <= 64);
            fills += 1;
            for record in batch {
                by_batch.push(seen(&record.expect("record")));
            }
        }
        assert!(fills < 1000, "many records per call ({fills} calls)");
        // Nothing leaked to the consumer queue.
        assert!(batched.poll(Duration::ZERO).is_none());

        by_poll.sort();
        by_batch.sort();
        assert_eq!(by_batch, by_poll);
        assert_eq!(by_batch[0].3, Some(1_700_000_000_000));
    }

    #[test]
    fn records_left_in_a_batch_and_a_batch_dropped_half_way_are_destroyed() {
        let (cluster, topic) = mock_topic(200);
        let brokers = cluster.bootstrap_servers();
        let batched = consumer(&brokers, "drop");
        let mut queue = BatchQueue::new(&batched, 8).expect("queue");
        for p in 0..2 {
            queue.route(&topic, p).expect("route");
        }
        assign(&batched, &topic);
        let mut taken = 0;
        while taken < 10 {
            let mut batch = queue.fill(Duration::from_secs(10));
            assert!(!batch.is_empty());
            // Take a few, hold one across the batch's drop, drop the rest unread.
            let held = batch.next().expect("one").expect("record");
            taken += 1 + batch.by_ref().take(2).count();
            drop(batch);
            assert!(!held.payload().is_empty());
        }
        drop(queue);
        // Every record destroyed: librdkafka's shutdown waits for records
        // still held, forever, so a leak shows here as a client that does
        // not go away.
        let (done, gone) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(batched);
            let _ = done.send(());
        });
        assert!(
            gone.recv_timeout(Duration::from_secs(30)).is_ok(),
            "the client did not shut down: records were not destroyed"
        );
        drop(cluster);
    }

    #[test]
    fn an_empty_queue_waits_at_most_the_wait() {
        let (cluster, _topic) = mock_topic(0);
        let batched = consumer(&cluster.bootstrap_servers(), "empty");
        let mut queue = BatchQueue::new(&batched, 16).expect("queue");
        let started = std::time::Instant::now();
        assert!(queue.fill(Duration::from_millis(50)).is_empty());
        assert!(queue.fill(Duration::ZERO).is_empty());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
