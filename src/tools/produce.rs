//! `ipstats produce`, and the paced producer loop the embedded demo shares.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

use super::traffic::{LineKind, Traffic, TrafficConfig};
use crate::config::ProduceArgs;
use crate::stop::Stop;

/// Counts delivery reports, so the summary tells what the broker acknowledged.
#[derive(Default)]
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Clone, Default)]
pub struct CountingContext(pub Arc<DeliveryCounter>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = match result {
            Ok(_) => &self.0.delivered,
            Err(_) => &self.0.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub type LineProducer = BaseProducer<CountingContext>;

pub fn producer_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        // Retries after a broker failure never duplicate or reorder lines,
        // so `--out` stays the exact content of the topic.
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("compression.type", "lz4")
        .set("client.id", "ipstats-produce");
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}

/// Lines per second of log time with `--start-time` and no `--time-rate`.
pub const DEFAULT_TIME_RATE: f64 = 1000.0;

/// What one run of [`send_lines`] wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub lines: u64,
    pub malformed: u64,
    pub bytes: u64,
}

/// The time written into each line.
#[derive(Clone, Copy, Debug)]
pub enum LogClock {
    /// The wall clock when the line is generated.
    Wall,
    /// Line `i` at `start + i / per_second`: the same seed writes the same bytes.
    Fixed { start: SystemTime, per_second: f64 },
}

impl LogClock {
    /// The time of line `i` (from 0).
    pub fn at(self, i: u64) -> SystemTime {
        match self {
            LogClock::Wall => SystemTime::now(),
            LogClock::Fixed { start, per_second } => {
                start + Duration::from_secs_f64(i as f64 / per_second)
            }
        }
    }
}

/// Writes generated lines to `topic` at `rate` lines/s (0 = unpaced) until
/// `count` lines (0 = no limit) or `stop`, stamped by `clock`. `each` sees
/// every line as sent.
#[allow(clippy::too_many_arguments)]
pub fn send_lines(
    producer: &LineProducer,
    topic: &str,
    traffic: &mut Traffic,
    clock: LogClock,
    rate: u64,
    count: u64,
    stop: &Stop,
    mut each: impl FnMut(&[u8], &Sent),
) -> Result<Sent, KafkaError> {
    let started = Instant::now();
    let mut sent = Sent::default();
    let mut line = Vec::with_capacity(512);
    while (count == 0 || sent.lines < count) && !stop.is_set() {
        if rate > 0 {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if sent.lines >= due {
                producer.poll(Duration::ZERO);
                let ahead = (sent.lines + 1) as f64 / rate as f64 - started.elapsed().as_secs_f64();
                // Pacing, not synchronisation: wait until the next line is due.
                stop.wait(Duration::from_secs_f64(ahead.clamp(0.0, 0.05)));
                continue;
            }
        }
        line.clear();
        let kind = traffic.next_line(clock.at(sent.lines), &mut line);
        loop {
            match producer.send(BaseRecord::<(), [u8]>::to(topic).payload(&line)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(50));
                    if stop.is_set() {
                        return Ok(sent);
                    }
                }
                Err((error, _)) => return Err(error),
            }
        }
        sent.lines += 1;
        sent.bytes += line.len() as u64;
        if kind == LineKind::Malformed {
            sent.malformed += 1;
        }
        each(&line, &sent);
        if sent.lines % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    Ok(sent)
}

/// Creates `topic` with `partitions` partitions unless it exists.
async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    extra: &[(String, String)],
) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in extra {
        config.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> =
        config.create().context("creating the Kafka admin client")?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata from {brokers}"))?;
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if exists {
        return Ok(());
    }
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name} failed: {code}"),
        }
    }
    info!(topic, partitions, "topic created");
    Ok(())
}

/// `ipstats produce`: realistic lines into a real topic, with progress and a summary.
pub async fn run(args: ProduceArgs, stop: Stop) -> anyhow::Result<Sent> {
    let extra = args.validate()?;
    ensure_topic(&args.brokers, &args.topic, args.partitions, &extra).await?;
    tokio::task::spawn_blocking(move || produce_blocking(args, extra, stop))
        .await
        .context("producer thread")?
}

fn produce_blocking(
    args: ProduceArgs,
    extra: Vec<(String, String)>,
    stop: Stop,
) -> anyhow::Result<Sent> {
    let counter = Arc::new(DeliveryCounter::default());
    let producer: LineProducer = producer_config(&args.brokers, &extra)
        .create_with_context(CountingContext(counter.clone()))
        .context("creating the Kafka producer")?;
    let mut out = match &args.out {
        Some(path) => {
            Some(BufWriter::new(File::create(path).with_context(|| {
                format!("creating --out {}", path.display())
            })?))
        }
        None => None,
    };
    let mut traffic = Traffic::new(&TrafficConfig {
        ips: args.ips,
        zipf: args.zipf,
        seed: args.seed,
        malformed_ratio: args.malformed_ratio,
    })
    .with_format(args.format);
    let started = Instant::now();
    let mut progress = Progress::new(args.count);
    let mut write_error = None;
    let clock = match (args.start_time, args.time_rate) {
        (None, None) => LogClock::Wall,
        (start, rate) => LogClock::Fixed {
            start: start.unwrap_or_else(SystemTime::now),
            per_second: rate.unwrap_or(DEFAULT_TIME_RATE),
        },
    };
    let sent = send_lines(
        &producer,
        &args.topic,
        &mut traffic,
        clock,
        args.rate,
        args.count,
        &stop,
        |line, sent| {
            if let Some(out) = out.as_mut()
                && write_error.is_none()
                && let Err(e) = out.write_all(line).and_then(|()| out.write_all(b"\n"))
            {
                write_error = Some(e);
            }
            if sent.lines % 1024 == 0 {
                progress.update(sent);
            }
        },
    )
    .context("producing")?;
    progress.finish();
    if let Some(e) = write_error {
        return Err(e).context("writing --out");
    }
    if let Some(mut out) = out {
        out.flush().context("writing --out")?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    let elapsed = started.elapsed().as_secs_f64();
    let (delivered, failed) = (
        counter.delivered.load(Ordering::Relaxed),
        counter.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "produced {} lines ({} malformed, {:.1} MiB) to {} in {elapsed:.1}s: {:.0} lines/s; delivered {delivered}, failed {failed}",
        sent.lines,
        sent.malformed,
        sent.bytes as f64 / (1024.0 * 1024.0),
        args.topic,
        sent.lines as f64 / elapsed.max(1e-9),
    );
    if failed > 0 || delivered != sent.lines {
        bail!("{failed} of {} lines were not delivered", sent.lines);
    }
    Ok(sent)
}

/// Progress of a long run: a bar redrawn in place on a terminal, a line
/// every few seconds otherwise (logs, CI).
struct Progress {
    count: u64,
    started: Instant,
    last: Instant,
    terminal: bool,
    drawn: bool,
}

impl Progress {
    fn new(count: u64) -> Self {
        Progress {
            count,
            started: Instant::now(),
            last: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    fn update(&mut self, sent: &Sent) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(2)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let rate = sent.lines as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let text = if self.count > 0 {
            let done = sent.lines.min(self.count) as f64 / self.count as f64;
            let eta = (self.count - sent.lines.min(self.count)) as f64 / rate.max(1e-9);
            let filled = (done * 30.0).round() as usize;
            format!(
                "[{}{}] {:5.1}%  {}/{} lines  {rate:.0} lines/s  eta {eta:.0}s",
                "#".repeat(filled),
                "-".repeat(30 - filled),
                done * 100.0,
                sent.lines,
                self.count
            )
        } else {
            format!("{} lines  {rate:.0} lines/s", sent.lines)
        };
        if self.terminal {
            eprint!("\r\x1b[2Kproduce {text}");
            self.drawn = true;
        } else {
            eprintln!("produce: {text}");
        }
    }

    fn finish(&self) {
        if self.drawn {
            eprintln!();
        }
    }
}
