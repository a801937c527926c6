//! Ingest against the real Apache Kafka broker of scripts/cluster.sh.

mod common;

use std::time::Duration;

use common::{
    Truth, cluster, get_json, produce_lines, settings, skipped_counts, unique, wait_for,
    window_counts,
};
use ipstats::app::App;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_a_real_topic_exactly_and_reports_offsets() {
    let Some(cluster) = cluster() else { return };
    let topic = unique("ingest");
    let group = unique("group");
    let lines = {
        let (cluster, topic) = (cluster.clone(), topic.clone());
        tokio::task::spawn_blocking(move || produce_lines(&cluster, &topic, 20_000, 4, 21))
            .await
            .expect("produce")
    };
    let truth = Truth::of(lines.iter().map(Vec::as_slice));
    let checkpoint = std::env::temp_dir().join(unique("ingest-ckpt"));
    let app = App::start(settings(&[
        "--checkpoint-dir",
        checkpoint.to_str().expect("utf-8 path"),
        "--brokers",
        &cluster.brokers,
        "--topics",
        &topic,
        "--group",
        &group,
        "--listen",
        "127.0.0.1:0",
        "--batch",
        "100ms",
        "--slide",
        "100ms",
        "--window",
        "300s",
    ]))
    .await
    .expect("service starts");
    let addr = app.local_addr();
    tokio::task::spawn_blocking(move || {
        common::wait_all_counted(addr, truth.lines, WAIT);
        assert_eq!(window_counts(addr), truth.counts, "per-IP counts are exact");
        assert_eq!(
            skipped_counts(addr),
            truth.skipped,
            "skip counters are exact"
        );

        // Offsets agree with Kafka's own view of the partitions.
        let ends: Vec<(i64, i64)> = common::log_ends(&cluster.brokers, &topic)
            .into_iter()
            .map(|(p, e)| (i64::from(p), e))
            .collect();
        assert_eq!(ends.len(), 4, "{ends:?}");
        wait_for("lag 0 with log ends from the broker", WAIT, || {
            let offsets = get_json(addr, "/api/v1/offsets");
            let seen: Vec<(i64, i64, i64)> = offsets["partitions"]
                .as_array()
                .expect("partitions")
                .iter()
                .map(|p| {
                    (
                        p["partition"].as_i64().unwrap_or(-1),
                        p["until_offset"].as_i64().unwrap_or(-1),
                        p["lag"].as_i64().unwrap_or(-1),
                    )
                })
                .collect();
            let expected: Vec<(i64, i64, i64)> = ends.iter().map(|(p, e)| (*p, *e, 0)).collect();
            let mut sorted = seen.clone();
            sorted.sort();
            if sorted == expected {
                Ok(())
            } else {
                Err(format!("{seen:?} vs {expected:?}"))
            }
        });
    })
    .await
    .expect("assertions");
    app.run_until(async {}).await.expect("clean stop");
}
