//! The embedded demo: an in-process Kafka cluster (librdkafka's mock
//! cluster) and a traffic generator writing into it. For the default run and
//! fast tests only; real deployments and integration tests use real Kafka.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rdkafka::mocking::MockCluster;

use super::produce::{
    CountingContext, DeliveryCounter, LineProducer, LogClock, producer_config, send_lines,
};
use super::traffic::{Traffic, TrafficConfig};
use crate::stop::Stop;

/// Partitions of each demo topic.
pub const DEMO_PARTITIONS: i32 = 3;

/// Starts the demo thread; returns its bootstrap servers once the topics exist.
///
/// The mock cluster cannot leave the thread that made it, so that thread
/// owns it and also runs the generator until `stop`.
pub fn start(
    topics: Vec<String>,
    rate: u64,
    stop: Stop,
) -> anyhow::Result<(String, std::thread::JoinHandle<anyhow::Result<()>>)> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread_stop = stop.clone();
    let handle = std::thread::Builder::new()
        .name("demo".into())
        .spawn(move || -> anyhow::Result<()> {
            let cluster = MockCluster::new(1).context("starting the embedded demo broker")?;
            for topic in &topics {
                cluster
                    .create_topic(topic, DEMO_PARTITIONS, 1)
                    .with_context(|| format!("creating demo topic {topic}"))?;
            }
            let bootstrap = cluster.bootstrap_servers();
            let producer: LineProducer = producer_config(&bootstrap, &[])
                .set("compression.type", "none")
                .create_with_context(CountingContext(Arc::new(DeliveryCounter::default())))
                .context("creating the demo producer")?;
            // Readiness is announced only once the producer exists.
            let _ = ready_tx.send(bootstrap);
            let seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            let mut traffic = Traffic::new(&TrafficConfig {
                ips: 5_000,
                zipf: 1.1,
                seed,
                malformed_ratio: 0.01,
            })
            .with_rotating_networks(0.16);
            // One topic at a time would starve the others; split the rate.
            let (per_topic, chunk) = match rate / topics.len() as u64 {
                0 if rate == 0 => (0, 10_000), // unpaced
                r => (r.max(1), r.max(10)),
            };
            while !thread_stop.is_set() {
                for topic in &topics {
                    send_lines(
                        &producer,
                        topic,
                        &mut traffic,
                        LogClock::Wall,
                        per_topic,
                        chunk,
                        &thread_stop,
                        |_, _| {},
                    )
                    .with_context(|| format!("writing demo traffic to {topic}"))?;
                }
            }
            producer.poll(Duration::ZERO);
            drop(producer);
            drop(cluster);
            Ok(())
        })
        .context("spawning the demo thread")?;
    let bootstrap = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow::anyhow!("the embedded demo broker did not start"));
    match bootstrap {
        Ok(b) => Ok((b, handle)),
        Err(e) => {
            stop.set();
            match handle.join() {
                Ok(Err(inner)) => Err(inner),
                _ => Err(e),
            }
        }
    }
}
