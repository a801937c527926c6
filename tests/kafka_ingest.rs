//! Ingest against the real Apache Kafka broker of scripts/cluster.sh.

mod common;

use std::time::Duration;

use common::{
    Truth, cluster, cluster_tool, get_json, produce_lines, settings, skipped_counts, unique,
    wait_for, window_counts,
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
        wait_for("every record counted", WAIT, || {
            let status = get_json(addr, "/api/v1/status");
            let top = get_json(addr, "/api/v1/top?n=1");
            let consumed = status["records_consumed"].as_u64().unwrap_or(0);
            if consumed == truth.lines && top["total_requests"] == status["records_counted"] {
                Ok(())
            } else {
                Err(format!("consumed {consumed} of {}", truth.lines))
            }
        });
        assert_eq!(window_counts(addr), truth.counts, "per-IP counts are exact");
        assert_eq!(
            skipped_counts(addr),
            truth.skipped,
            "skip counters are exact"
        );

        // Offsets agree with Kafka's own view of the partitions.
        let described = cluster_tool(&[
            "kafka-get-offsets",
            "--bootstrap-server",
            &cluster.brokers,
            "--topic",
            &topic,
        ]);
        let mut ends: Vec<(i64, i64)> = described
            .lines()
            .filter_map(|l| {
                let mut parts = l.rsplitn(3, ':');
                let end = parts.next()?.trim().parse().ok()?;
                let partition = parts.next()?.trim().parse().ok()?;
                Some((partition, end))
            })
            .collect();
        ends.sort();
        assert_eq!(ends.len(), 4, "{described}");
        assert_eq!(ends.iter().map(|e| e.1).sum::<i64>() as u64, truth.lines);
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
