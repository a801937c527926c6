//! The service's own Prometheus registry. Each metric is declared once, in
//! the table below: field, type, name, help and labels (or buckets). Labels
//! have bounded cardinality — topic, partition, reason, store — never an IP.
//! The registry stays private: callers update the handles and [`Metrics::render`].

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::vocab::{ResetReason, SkipReason};

/// What the table says about one metric.
struct Spec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
}

/// A metric type the table can declare.
trait Declare: Collector + Clone + Sized + 'static {
    fn declare(spec: &Spec) -> prometheus::Result<Self>;
}

macro_rules! declare_plain {
    ($($kind:ty),*) => {$(
        impl Declare for $kind {
            fn declare(spec: &Spec) -> prometheus::Result<Self> {
                <$kind>::with_opts(Opts::new(spec.name, spec.help))
            }
        }
    )*};
}
macro_rules! declare_labelled {
    ($($kind:ty),*) => {$(
        impl Declare for $kind {
            fn declare(spec: &Spec) -> prometheus::Result<Self> {
                <$kind>::new(Opts::new(spec.name, spec.help), spec.labels)
            }
        }
    )*};
}
declare_plain!(IntCounter, IntGauge, Gauge);
declare_labelled!(IntCounterVec, IntGaugeVec, GaugeVec);

impl Declare for Histogram {
    fn declare(spec: &Spec) -> prometheus::Result<Self> {
        Histogram::with_opts(
            HistogramOpts::new(spec.name, spec.help).buckets(spec.buckets.to_vec()),
        )
    }
}

/// Declares the metrics: the struct of handles and its constructor, which
/// registers every one of them.
macro_rules! metrics {
    ($(
        $(#[$doc:meta])*
        $field:ident: $kind:ty = $name:literal, $help:literal
            $(, labels [$($label:literal),* $(,)?])?
            $(, buckets [$($bucket:literal),* $(,)?])?;
    )*) => {
        #[derive(Clone)]
        pub struct Metrics {
            registry: Registry,
            $($(#[$doc])* pub $field: $kind,)*
        }

        impl Metrics {
            /// Every metric's name, as the table declares it.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            pub fn new() -> prometheus::Result<Self> {
                let registry = Registry::new();
                $(
                    let $field = <$kind as Declare>::declare(&Spec {
                        name: $name,
                        help: $help,
                        labels: &[$($($label),*)?],
                        buckets: &[$($($bucket),*)?],
                    })?;
                    registry.register(Box::new($field.clone()))?;
                )*
                let metrics = Metrics { registry, $($field,)* };
                metrics.start()?;
                Ok(metrics)
            }
        }
    };
}

metrics! {
    records_consumed: IntCounterVec = "ipstats_records_consumed_total",
        "Records read from Kafka, counted or skipped.", labels ["topic", "partition"];
    records_skipped: IntCounterVec = "ipstats_records_skipped_total",
        "Records not counted, by reason.", labels ["reason"];
    records_repaired: IntCounter = "ipstats_records_repaired_total",
        "Records that were not valid UTF-8, read with the invalid bytes replaced by U+FFFD (counted or skipped as any other).";
    batches: IntCounter = "ipstats_batches_total", "Batches (panes) closed.";
    batch_duration: Histogram = "ipstats_batch_duration_seconds",
        "Time the consumer thread spent on one batch: polling, handing records to the counting thread and closing the pane, waiting excluded.",
        buckets [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
    window_requests: IntGauge = "ipstats_window_requests",
        "Requests counted in the current window.";
    window_distinct_ips: IntGauge = "ipstats_window_distinct_ips",
        "Distinct client IPs in the current window.";
    state_bytes: IntGauge = "ipstats_state_bytes",
        "Bytes the counting state takes: the counts of every kept pane (in the window, older, waiting ahead of it) and the window's running counts.";
    state_budget_bytes: IntGauge = "ipstats_state_budget_bytes",
        "The counting state's budget (--memory-limit): past it, the panes holding the most addresses are summarized.";
    panes_summarized: IntGauge = "ipstats_panes_summarized",
        "Kept panes whose counts are summarized (frequent items with error bounds) to fit --memory-limit.";
    cluster_instances: IntGauge = "ipstats_cluster_instances",
        "Instances of the cluster this one knows (--cluster; 1 without it).";
    partitions_owned: IntGauge = "ipstats_partitions_owned",
        "Partitions this instance holds and counts.";
    rebalances: IntCounter = "ipstats_rebalances_total",
        "Changes of the partitions this instance holds (--cluster: the consumer group's rebalances).";
    partition_rebuild_seconds: Histogram = "ipstats_partition_rebuild_seconds",
        "Time from a partition's assignment to its history being counted up to the log end.",
        buckets [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
    partition_lag: IntGaugeVec = "ipstats_partition_lag",
        "Records in the partition not yet counted (log end minus next offset).",
        labels ["topic", "partition"];
    consumergroup_lag: IntGaugeVec = "kafka_consumergroup_lag",
        "Consumer group lag in records, as kafka_exporter names it.",
        labels ["consumergroup", "topic", "partition"];
    kafka_errors: IntCounter = "ipstats_kafka_errors_total",
        "Errors reported by the Kafka client (broker down, fetch failures, ...).";
    offset_commits: IntCounterVec = "ipstats_offset_commits_total",
        "Offset commits by store (zookeeper, kafka) and result (ok, error, conflict).",
        labels ["store", "result"];
    offset_resets: IntCounterVec = "ipstats_offset_resets_total",
        "Partitions (re)started away from their stored offset, by reason (missing, expired, ahead).",
        labels ["reason"];
    records_lost: IntCounterVec = "ipstats_records_lost_total",
        "Records deleted by retention before they could be counted.",
        labels ["topic", "partition"];
    records_late: IntCounterVec = "ipstats_records_late_total",
        "Event time: records that arrived more than --lateness behind the window's end, counted here and not in a pane.",
        labels ["topic", "partition"];
    event_time_lag: Gauge = "ipstats_event_time_lag_seconds",
        "Event time: the wall clock minus the window's end (NaN before the first record with a time; 0 with --time-source arrival).";
    alerts_firing: IntGaugeVec = "ipstats_alerts_firing",
        "Keys breaking each rule now (--rules).",
        labels ["rule"];
    alert_transitions: IntCounterVec = "ipstats_alert_transitions_total",
        "Alert transitions by rule and state (firing, resolved).",
        labels ["rule", "state"];
    alert_deliveries: IntCounterVec = "ipstats_alert_deliveries_total",
        "Alert sends by target (webhook, alertmanager) and result: ok, retry (a failed attempt, retried), dropped (the queue was full), stale (about data older than --alert-max-age: recorded, not sent).",
        labels ["target", "result"];
    partition_lag_seconds: GaugeVec = "ipstats_partition_lag_seconds",
        "Timestamp of the newest record in the partition minus that of the last counted record.",
        labels ["topic", "partition"];
    checkpoints: IntCounter = "ipstats_checkpoints_total",
        "Checkpoints written (panes, offsets and settings, durable together).";
    checkpoint_duration: Histogram = "ipstats_checkpoint_duration_seconds",
        "Time to write one checkpoint, fsyncs included.",
        buckets [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
    checkpoint_bytes: IntGauge = "ipstats_checkpoint_bytes",
        "Bytes written by the last checkpoint (new panes and the manifest).";
    checkpoint_age: Gauge = "ipstats_checkpoint_age_seconds",
        "Seconds since the last successful checkpoint (-1 before the first).";
    checkpoint_failures: IntCounterVec = "ipstats_checkpoint_failures_total",
        "Failed checkpoint writes, by reason (no_space, permission, read_only, io, invalid).",
        labels ["reason"];
}

/// `ipstats_checkpoint_failures_total{reason}`'s label values.
pub const CHECKPOINT_FAILURE_REASONS: [&str; 5] =
    ["no_space", "permission", "read_only", "io", "invalid"];

/// `ipstats_offset_commits_total{store="kafka",result}`'s label values.
pub const KAFKA_COMMIT_RESULTS: [&str; 2] = ["ok", "error"];

/// `ipstats_offset_commits_total{store="zookeeper",result}`'s label values.
pub const ZOOKEEPER_COMMIT_RESULTS: [&str; 3] = ["ok", "error", "conflict"];

impl Metrics {
    /// The commit series of the stores in use, at zero, so that alerts on
    /// them can be written before the first commit.
    pub fn offset_stores(&self, zookeeper: bool) {
        for result in KAFKA_COMMIT_RESULTS {
            self.offset_commits.with_label_values(&["kafka", result]);
        }
        if zookeeper {
            for result in ZOOKEEPER_COMMIT_RESULTS {
                self.offset_commits
                    .with_label_values(&["zookeeper", result]);
            }
        }
    }

    /// What the table cannot say: the process collector, and the label
    /// values that are visible from the start, at zero.
    fn start(&self) -> prometheus::Result<()> {
        self.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for reason in SkipReason::ALL {
            self.records_skipped.with_label_values(&[reason.as_str()]);
        }
        for reason in ResetReason::ALL {
            self.offset_resets.with_label_values(&[reason.as_str()]);
        }
        for reason in CHECKPOINT_FAILURE_REASONS {
            self.checkpoint_failures.with_label_values(&[reason]);
        }
        Ok(())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of metrics a PromQL text uses (ipstats' own and kafka_exporter's).
    fn named(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest
            .find("ipstats_")
            .or_else(|| rest.find("kafka_consumergroup_lag"))
        {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[i + name.len().max(1)..];
            names.insert(name);
        }
        names
    }

    #[test]
    fn the_dashboard_and_the_alert_rules_name_only_metrics_ipstats_declares() {
        for (file, text) in [
            (
                "deploy/grafana/ipstats.json",
                include_str!("../deploy/grafana/ipstats.json"),
            ),
            (
                "deploy/prometheus/ipstats-rules.yml",
                include_str!("../deploy/prometheus/ipstats-rules.yml"),
            ),
        ] {
            let names = named(text);
            assert!(names.len() >= 5, "{file}: {names:?}");
            for name in names {
                // Histograms are queried by their series' suffixes.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| Metrics::NAMES.contains(f)))
                    .unwrap_or(&name);
                assert!(
                    Metrics::NAMES.contains(&family),
                    "{file} names {name}, which ipstats does not declare"
                );
            }
        }
        assert!(named("rate(ipstats_renamed_total[5m])").contains("ipstats_renamed_total"));
    }

    #[test]
    fn every_declared_metric_is_registered_with_its_help() {
        let metrics = Metrics::new().expect("metrics");
        metrics.batches.inc();
        metrics.batch_duration.observe(0.002);
        metrics
            .records_consumed
            .with_label_values(&["t", "0"])
            .inc_by(3);
        metrics
            .consumergroup_lag
            .with_label_values(&["g", "t", "0"])
            .set(5);
        let text = metrics.render();
        for line in [
            "# HELP ipstats_batches_total Batches (panes) closed.",
            "ipstats_batches_total 1",
            "ipstats_batch_duration_seconds_bucket{le=\"0.0025\"} 1",
            "ipstats_records_consumed_total{partition=\"0\",topic=\"t\"} 3",
            "ipstats_records_skipped_total{reason=\"not_json\"} 0",
            "ipstats_offset_resets_total{reason=\"expired\"} 0",
            "ipstats_checkpoint_failures_total{reason=\"no_space\"} 0",
            "# TYPE kafka_consumergroup_lag gauge",
            "kafka_consumergroup_lag{consumergroup=\"g\",partition=\"0\",topic=\"t\"} 5",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
