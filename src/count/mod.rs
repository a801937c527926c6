//! Parsing and counting: [`Tally`] turns lines into per-IP counts and skip
//! reasons; [`CountingThread`] runs a tally on its own thread for the open pane, so
//! that the consumer thread only polls and keeps offsets.
//!
//! The consumer thread copies each payload into a [`Chunk`] (a few thousand
//! lines in one buffer) and hands full chunks over a short bounded queue; the
//! counting thread parses them into the open pane's counts. At a batch
//! boundary [`CountingThread::take`] drains the queue and returns the pane's counts:
//! the queue is FIFO, so a pane holds exactly the records polled before it
//! closed. A full queue blocks the consumer thread, which bounds memory.

pub mod event_time;

use std::mem;
use std::ops::AddAssign;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use crate::input::parse::{ClientField, Parser};
use crate::vocab::{SkipCounts, SkipReason};
use crate::window::{IpMap, PaneCounts};
use event_time::{EventBatch, EventConfig, EventTally};

/// Lines parsed into per-IP counts and skip reasons: an open pane, or the
/// whole input of `ipstats count`.
#[derive(Debug, Default)]
pub struct Tally<V> {
    pub counts: IpMap<V>,
    /// Lines counted (parsed to an IP).
    pub requests: u64,
    pub skipped: SkipCounts,
}

impl<V: Copy + Default + AddAssign + From<u8>> Tally<V> {
    /// Parses one line and counts it, or the reason it is skipped.
    #[inline]
    pub fn line(&mut self, parser: &mut Parser, line: &[u8]) {
        match parser.parse(line) {
            Ok(ip) => {
                self.counts.add(ip, V::from(1));
                self.requests += 1;
            }
            Err(reason) => self.skipped.add(reason),
        }
    }
}

/// Lines per chunk: enough to make the hand-over cost per line negligible.
const CHUNK_LINES: usize = 2048;
/// Bytes per chunk before it is handed over early (long lines).
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks in flight: bounds the lines a batch boundary waits for.
const QUEUE_CHUNKS: usize = 4;

/// The open pane as the counting thread hands it over at a batch boundary.
#[derive(Debug, Default)]
pub struct TakenPane {
    pub counts: PaneCounts,
    /// Records counted (parsed to an IP).
    pub requests: u64,
    pub skipped: SkipCounts,
    /// Lines read with invalid UTF-8 replaced by U+FFFD, counted or skipped.
    pub repaired: u64,
    /// Event time: the records by the pane of their time (`counts` and
    /// `requests` are then empty).
    pub event: Option<EventBatch>,
}

/// How many addresses an open pane may hold before what it counted so far
/// is summarized (`--memory-limit`), and the keys a summary keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenLimit {
    pub entries: usize,
    pub capacity: usize,
}

impl OpenLimit {
    /// Never summarized.
    pub const NONE: OpenLimit = OpenLimit {
        entries: usize::MAX,
        capacity: usize::MAX,
    };
}

/// Folds what `map` counted into `partial` when it holds more than the
/// limit allows (checked once a chunk, so it may pass it by a chunk's
/// lines): the open pane's memory stays bounded whatever arrives.
pub(crate) fn bound(map: &mut IpMap<u32>, partial: &mut Option<PaneCounts>, limit: OpenLimit) {
    if map.len() <= limit.entries {
        return;
    }
    let folded = PaneCounts::from(&*map).summarized(limit.capacity);
    map.clear();
    *partial = Some(match partial.take() {
        Some(earlier) => earlier.merged(&folded),
        None => folded,
    });
}

/// The open pane's counts when it closes: what was folded, and the rest.
pub(crate) fn close(map: &IpMap<u32>, partial: Option<PaneCounts>) -> PaneCounts {
    let rest = PaneCounts::from(map);
    match partial {
        Some(folded) => folded.merged(&rest),
        None => rest,
    }
}

/// Which time puts a record in a pane, as the counting thread sees it.
#[derive(Clone, Copy, Debug)]
pub enum PaneTime {
    /// The batch that polled it: one pane per batch.
    Arrival,
    /// The time in the line (the parser reads it).
    Line(EventConfig),
    /// The Kafka record's timestamp, pushed with the line.
    Kafka(EventConfig),
}

/// The counting thread stopped (it never does unless it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the counting thread stopped")]
pub struct CountingThreadGone;

#[derive(Debug, Default)]
struct Chunk {
    bytes: Vec<u8>,
    /// End of each line in `bytes`.
    ends: Vec<usize>,
    /// Lines longer than `--max-line-bytes`, not copied.
    too_large: u64,
    /// The partition slot of each line.
    slots: Vec<u32>,
    /// The Kafka timestamp of each line (`PaneTime::Kafka` only; -1: none).
    times: Vec<i64>,
}

impl Chunk {
    fn with_capacity() -> Self {
        Chunk {
            bytes: Vec::with_capacity(CHUNK_BYTES),
            ends: Vec::with_capacity(CHUNK_LINES),
            too_large: 0,
            slots: Vec::with_capacity(CHUNK_LINES),
            times: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.too_large == 0
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.too_large = 0;
        self.slots.clear();
        self.times.clear();
    }
}

enum Work {
    Lines(Chunk),
    /// Reply with the open pane's counts and start a new pane.
    Take,
    /// Event time: panes below this index are closed.
    Floor(Option<i64>),
}

/// The consumer thread's handle on the counting thread.
pub struct CountingThread {
    max_line_bytes: usize,
    kafka_time: bool,
    chunk: Chunk,
    work: Option<SyncSender<Work>>,
    panes: Receiver<TakenPane>,
    /// Emptied chunks coming back, so that steady state allocates nothing.
    free: Receiver<Chunk>,
    thread: Option<JoinHandle<()>>,
}

impl CountingThread {
    pub fn spawn(
        field: ClientField,
        max_line_bytes: usize,
        time: PaneTime,
        limit: OpenLimit,
    ) -> std::io::Result<Self> {
        let (work_tx, work_rx) = sync_channel::<Work>(QUEUE_CHUNKS);
        let (pane_tx, panes) = sync_channel::<TakenPane>(1);
        let (free_tx, free) = sync_channel::<Chunk>(QUEUE_CHUNKS + 1);
        let mut parser = Parser::new(field, max_line_bytes);
        let kafka_time = matches!(time, PaneTime::Kafka(_));
        let mut event = match time {
            PaneTime::Arrival => None,
            PaneTime::Line(config) | PaneTime::Kafka(config) => {
                Some(EventTally::new(config).with_limit(limit))
            }
        };
        let thread = std::thread::Builder::new()
            .name("counter".into())
            .spawn(move || {
                let mut open = Tally::<u32>::default();
                let mut folded: Option<PaneCounts> = None;
                for work in work_rx {
                    match work {
                        Work::Lines(mut chunk) => {
                            match event.as_mut() {
                                None => {
                                    count_chunk(&mut parser, &chunk, &mut open);
                                    bound(&mut open.counts, &mut folded, limit);
                                }
                                Some(tally) => {
                                    count_by_time(&mut parser, &chunk, tally);
                                    tally.bound();
                                }
                            }
                            for hint in parser.take_new_hints() {
                                tracing::warn!("{}", hint.advice());
                            }
                            chunk.clear();
                            // A full free list drops the chunk: it is only a cache.
                            let _ = free_tx.try_send(chunk);
                        }
                        Work::Floor(floor) => {
                            if let Some(tally) = event.as_mut() {
                                tally.set_floor(floor);
                            }
                        }
                        Work::Take => {
                            // The pane lives as long as the window: sorted
                            // arrays, without a hash table's slack. The table
                            // is cleared and reused, so that steady state
                            // allocates only the arrays.
                            let mut pane = TakenPane {
                                counts: close(&open.counts, folded.take()),
                                requests: mem::take(&mut open.requests),
                                skipped: mem::take(&mut open.skipped),
                                repaired: parser.take_repaired(),
                                event: None,
                            };
                            open.counts.clear_for_reuse();
                            if let Some(tally) = event.as_mut() {
                                pane.skipped.merge(&mem::take(&mut tally.skipped));
                                pane.event = Some(tally.take());
                            }
                            if pane_tx.send(pane).is_err() {
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(CountingThread {
            max_line_bytes,
            kafka_time,
            chunk: Chunk::with_capacity(),
            work: Some(work_tx),
            panes,
            free,
            thread: Some(thread),
        })
    }

    /// Queues one line of partition `slot` (with its Kafka timestamp, when
    /// that is the time) for the open pane.
    pub fn push(
        &mut self,
        line: &[u8],
        slot: usize,
        timestamp_ms: Option<i64>,
    ) -> Result<(), CountingThreadGone> {
        if line.len() > self.max_line_bytes {
            self.chunk.too_large += 1;
        } else {
            self.chunk.bytes.extend_from_slice(line);
            self.chunk.ends.push(self.chunk.bytes.len());
            self.chunk.slots.push(slot as u32);
            if self.kafka_time {
                self.chunk.times.push(timestamp_ms.unwrap_or(-1));
            }
        }
        if self.chunk.ends.len() >= CHUNK_LINES || self.chunk.bytes.len() >= CHUNK_BYTES {
            self.hand_over()?;
        }
        Ok(())
    }

    /// The counts of every line pushed since the last call.
    pub fn take(&mut self) -> Result<TakenPane, CountingThreadGone> {
        if !self.chunk.is_empty() {
            self.hand_over()?;
        }
        self.send(Work::Take)?;
        self.panes.recv().map_err(|_| CountingThreadGone)
    }

    /// Event time: records of panes below `floor` are late from now on.
    pub fn set_floor(&mut self, floor: Option<i64>) -> Result<(), CountingThreadGone> {
        if !self.chunk.is_empty() {
            self.hand_over()?;
        }
        self.send(Work::Floor(floor))
    }

    fn hand_over(&mut self) -> Result<(), CountingThreadGone> {
        let next = match self.free.try_recv() {
            Ok(chunk) => chunk,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => Chunk::with_capacity(),
        };
        let full = mem::replace(&mut self.chunk, next);
        self.send(Work::Lines(full))
    }

    fn send(&self, work: Work) -> Result<(), CountingThreadGone> {
        let sender = self.work.as_ref().ok_or(CountingThreadGone)?;
        sender.send(work).map_err(|_| CountingThreadGone)
    }
}

impl Drop for CountingThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop.
        self.work.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn count_chunk(parser: &mut Parser, chunk: &Chunk, open: &mut Tally<u32>) {
    let mut start = 0;
    for &end in &chunk.ends {
        open.line(parser, &chunk.bytes[start..end]);
        start = end;
    }
    for _ in 0..chunk.too_large {
        open.skipped.add(SkipReason::TooLarge);
    }
}

fn count_by_time(parser: &mut Parser, chunk: &Chunk, tally: &mut EventTally) {
    // One clock read per chunk: the future check needs no finer grain.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut start = 0;
    for (i, &end) in chunk.ends.iter().enumerate() {
        let record = parser.parse_record(&chunk.bytes[start..end]);
        start = end;
        let time = match (record, chunk.times.get(i)) {
            (Err(reason), _) => Err(reason),
            (Ok((ip, _)), Some(&kafka)) if kafka >= 0 => Ok((ip, kafka)),
            (Ok(_), Some(_)) => Err(SkipReason::BadTime),
            (Ok((ip, Some(line))), None) => Ok((ip, line)),
            (Ok((_, None)), None) => Err(SkipReason::BadTime),
        };
        match time {
            Ok((ip, time)) => tally.record(chunk.slots[i] as usize, ip, time, now_ms),
            Err(reason) => tally.skipped.add(reason),
        }
    }
    for _ in 0..chunk.too_large {
        tally.skipped.add(SkipReason::TooLarge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::parse_ip;

    fn line(ip: &str) -> Vec<u8> {
        format!(r#"{{"client_real_ip":"{ip}","request":"GET / HTTP/1.1"}}"#).into_bytes()
    }

    #[test]
    fn panes_hold_exactly_the_lines_pushed_before_take() {
        let mut counter = CountingThread::spawn(
            "client_real_ip".into(),
            200,
            PaneTime::Arrival,
            OpenLimit::NONE,
        )
        .expect("thread");
        // More than a few chunks, so that hand-overs and the free list are exercised.
        let first = CHUNK_LINES * (QUEUE_CHUNKS + 3) + 17;
        for i in 0..first {
            counter
                .push(&line(&format!("10.0.{}.{}", i % 3, i % 7)), 0, None)
                .expect("push");
        }
        counter.push(b"not json", 0, None).expect("push");
        counter.push(&[b' '; 201], 0, None).expect("push");
        let pane = counter.take().expect("first pane");
        assert_eq!(pane.requests, first as u64);
        assert_eq!(
            pane.counts.values().map(u64::from).sum::<u64>(),
            first as u64
        );
        assert_eq!(pane.counts.len(), 21);
        assert_eq!(pane.skipped.get(SkipReason::NotJson), 1);
        assert_eq!(pane.skipped.get(SkipReason::TooLarge), 1);

        counter.push(&line("2001:db8::1"), 0, None).expect("push");
        let pane = counter.take().expect("second pane");
        assert_eq!(pane.requests, 1);
        assert_eq!(pane.skipped.total(), 0);
        let ip = parse_ip("2001:db8::1").expect("address");
        assert_eq!(pane.counts.get(ip), 1);

        let empty = counter.take().expect("empty pane");
        assert_eq!((empty.requests, empty.counts.len()), (0, 0));
    }

    #[test]
    fn an_open_pane_past_its_limit_is_summarized_and_keeps_every_bound() {
        let limit = OpenLimit {
            entries: 500,
            capacity: 20,
        };
        let mut counter =
            CountingThread::spawn("client_real_ip".into(), 200, PaneTime::Arrival, limit)
                .expect("thread");
        // 20,000 addresses once each, and three heavy ones every 40th line.
        let mut truth: std::collections::HashMap<crate::vocab::IpKey, u64> = Default::default();
        for i in 0..20_000u32 {
            let ip = if i % 40 == 0 {
                format!("10.9.9.{}", i / 40 % 3)
            } else {
                format!("2001:db8:{:x}::{:x}", i >> 12, i & 0xfff)
            };
            *truth.entry(parse_ip(&ip).expect("ip")).or_insert(0) += 1;
            counter.push(&line(&ip), 0, None).expect("push");
        }
        let pane = counter.take().expect("pane");
        assert_eq!(pane.requests, 20_000);
        assert!(
            !pane.counts.is_exact(),
            "past the limit the pane is summarized"
        );
        assert!(pane.counts.len() <= limit.capacity);
        for (ip, n) in &truth {
            let b = pane.counts.bounds(*ip);
            assert!(b.lower <= *n && *n <= b.upper, "{ip}: {n} in {b:?}");
        }
        let top: Vec<String> = pane
            .counts
            .top(3)
            .iter()
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(top, ["10.9.9.0", "10.9.9.1", "10.9.9.2"]);
        // The next pane starts exact again.
        counter.push(&line("10.0.0.1"), 0, None).expect("push");
        assert!(counter.take().expect("pane").counts.is_exact());
    }
}
