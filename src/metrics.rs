//! The service's own Prometheus registry. Labels have bounded cardinality:
//! topic, partition and reason — never an IP.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::offsets::ResetReason;
use crate::parse::SkipReason;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub records_consumed: IntCounterVec,
    pub records_skipped: IntCounterVec,
    pub batches: IntCounter,
    pub batch_duration: Histogram,
    pub window_requests: IntGauge,
    pub window_distinct_ips: IntGauge,
    pub partition_lag: IntGaugeVec,
    pub consumergroup_lag: IntGaugeVec,
    pub kafka_errors: IntCounter,
    pub offset_commits: IntCounterVec,
    pub offset_resets: IntCounterVec,
    pub records_lost: IntCounterVec,
    pub partition_lag_seconds: GaugeVec,
    pub checkpoints: IntCounter,
    pub checkpoint_duration: Histogram,
    pub checkpoint_bytes: IntGauge,
    pub checkpoint_age: Gauge,
    pub checkpoint_failures: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let records_consumed = IntCounterVec::new(
            Opts::new(
                "ipstats_records_consumed_total",
                "Records read from Kafka, counted or skipped.",
            ),
            &["topic", "partition"],
        )?;
        let records_skipped = IntCounterVec::new(
            Opts::new(
                "ipstats_records_skipped_total",
                "Records not counted, by reason.",
            ),
            &["reason"],
        )?;
        let batches = IntCounter::new("ipstats_batches_total", "Batches (panes) closed.")?;
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new(
                "ipstats_batch_duration_seconds",
                "Time the consumer thread spent on one batch: polling, handing records to the counting thread and closing the pane, waiting excluded.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let window_requests = IntGauge::new(
            "ipstats_window_requests",
            "Requests counted in the current window.",
        )?;
        let window_distinct_ips = IntGauge::new(
            "ipstats_window_distinct_ips",
            "Distinct client IPs in the current window.",
        )?;
        let partition_lag = IntGaugeVec::new(
            Opts::new(
                "ipstats_partition_lag",
                "Records in the partition not yet counted (log end minus next offset).",
            ),
            &["topic", "partition"],
        )?;
        let consumergroup_lag = IntGaugeVec::new(
            Opts::new(
                "kafka_consumergroup_lag",
                "Consumer group lag in records, as kafka_exporter names it.",
            ),
            &["consumergroup", "topic", "partition"],
        )?;
        let kafka_errors = IntCounter::new(
            "ipstats_kafka_errors_total",
            "Errors reported by the Kafka client (broker down, fetch failures, ...).",
        )?;
        let offset_commits = IntCounterVec::new(
            Opts::new(
                "ipstats_offset_commits_total",
                "Offset commits by store (zookeeper, kafka) and result (ok, error, conflict).",
            ),
            &["store", "result"],
        )?;
        let offset_resets = IntCounterVec::new(
            Opts::new(
                "ipstats_offset_resets_total",
                "Partitions (re)started away from their stored offset, by reason (missing, expired, ahead).",
            ),
            &["reason"],
        )?;
        let records_lost = IntCounterVec::new(
            Opts::new(
                "ipstats_records_lost_total",
                "Records deleted by retention before they could be counted.",
            ),
            &["topic", "partition"],
        )?;
        let partition_lag_seconds = GaugeVec::new(
            Opts::new(
                "ipstats_partition_lag_seconds",
                "Timestamp of the newest record in the partition minus that of the last counted record.",
            ),
            &["topic", "partition"],
        )?;
        let checkpoints = IntCounter::new(
            "ipstats_checkpoints_total",
            "Checkpoints written (panes, offsets and settings, durable together).",
        )?;
        let checkpoint_duration = Histogram::with_opts(
            HistogramOpts::new(
                "ipstats_checkpoint_duration_seconds",
                "Time to write one checkpoint, fsyncs included.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let checkpoint_bytes = IntGauge::new(
            "ipstats_checkpoint_bytes",
            "Bytes written by the last checkpoint (new panes and the manifest).",
        )?;
        let checkpoint_age = Gauge::new(
            "ipstats_checkpoint_age_seconds",
            "Seconds since the last successful checkpoint (-1 before the first).",
        )?;
        let checkpoint_failures = IntCounterVec::new(
            Opts::new(
                "ipstats_checkpoint_failures_total",
                "Failed checkpoint writes, by reason (no_space, permission, read_only, io, invalid).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(checkpoints.clone()))?;
        registry.register(Box::new(checkpoint_duration.clone()))?;
        registry.register(Box::new(checkpoint_bytes.clone()))?;
        registry.register(Box::new(checkpoint_age.clone()))?;
        registry.register(Box::new(checkpoint_failures.clone()))?;
        registry.register(Box::new(offset_commits.clone()))?;
        registry.register(Box::new(offset_resets.clone()))?;
        registry.register(Box::new(records_lost.clone()))?;
        registry.register(Box::new(partition_lag_seconds.clone()))?;
        registry.register(Box::new(records_consumed.clone()))?;
        registry.register(Box::new(records_skipped.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(batch_duration.clone()))?;
        registry.register(Box::new(window_requests.clone()))?;
        registry.register(Box::new(window_distinct_ips.clone()))?;
        registry.register(Box::new(partition_lag.clone()))?;
        registry.register(Box::new(consumergroup_lag.clone()))?;
        registry.register(Box::new(kafka_errors.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // Every reason is visible from the start, at zero.
        for reason in SkipReason::ALL {
            records_skipped.with_label_values(&[reason.as_str()]);
        }
        for reason in ResetReason::ALL {
            offset_resets.with_label_values(&[reason.as_str()]);
        }
        Ok(Metrics {
            registry,
            records_consumed,
            records_skipped,
            batches,
            batch_duration,
            window_requests,
            window_distinct_ips,
            partition_lag,
            consumergroup_lag,
            kafka_errors,
            offset_commits,
            offset_resets,
            records_lost,
            partition_lag_seconds,
            checkpoints,
            checkpoint_duration,
            checkpoint_bytes,
            checkpoint_age,
            checkpoint_failures,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
