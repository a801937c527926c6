//! What ipstats says on the terminal and hears from it: the start-up
//! banner, a progress line every few seconds while records flow, and SIGHUP.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Settings;
use crate::offsets::zookeeper::ZkOptions;
use crate::snapshot::Published;

/// The start-up banner: what runs, against what, and where to look.
pub fn print_banner(
    settings: &Settings,
    brokers: &str,
    zookeeper: Option<&ZkOptions>,
    addr: SocketAddr,
) {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let mode = if settings.is_demo() {
        "DEMO MODE: embedded broker with generated traffic (pass --brokers to count real logs)"
    } else {
        "consuming Kafka"
    };
    eprintln!(
        "\nipstats {}  ·  {mode}\n  kafka       {brokers}   topics {}   group {}\n  zookeeper   {}\n  window      {} (slide {}, batch {})\n  checkpoint  {} (every {})\n  dashboard   http://{addr}/\n",
        env!("CARGO_PKG_VERSION"),
        settings.topics.join(","),
        settings.group,
        zookeeper.map_or_else(|| "none".to_string(), ZkOptions::display),
        d(settings.window),
        d(settings.slide),
        d(settings.batch),
        settings.checkpoint_dir.display(),
        d(settings.checkpoint_interval),
    );
}

/// One progress line every few seconds while records flow or lag remains;
/// silent when idle.
pub async fn report_progress(published: Published, cancel: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(5);
    let mut last: Option<(u64, std::time::Instant)> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        let snapshot = published.load();
        let consumed = snapshot.ingest.totals.records_consumed;
        let lag: i64 = snapshot.partitions.iter().filter_map(|p| p.lag()).sum();
        let now = std::time::Instant::now();
        let rate = last.map_or(0.0, |(before, at)| {
            consumed.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64().max(1e-3)
        });
        let moved = last.is_some_and(|(before, _)| consumed != before);
        last = Some((consumed, now));
        if moved || lag > 0 {
            info!(
                "progress: {rate:.0} records/s, lag {lag}, window {} requests from {} IPs",
                snapshot.total_requests, snapshot.distinct_ips
            );
        }
    }
}

/// SIGHUP re-reads `--rules`, `--asn-db` and `--country-db`: a file that
/// reads and checks replaces what was in force (the rules at the next slide,
/// the databases for the next pane); one that does not leaves it in force
/// and says why. With none of them there is nothing to reload, and ipstats
/// says so and keeps running.
pub async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    rules: Option<std::sync::Arc<crate::rules::Rules>>,
    owners: Option<std::sync::Arc<crate::owners::Owners>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            received = hangups.recv() => {
                if received.is_none() {
                    return Ok(());
                }
                if let Some(owners) = owners.clone() {
                    match tokio::task::spawn_blocking(move || owners.reload()).await {
                        Ok(Ok(loaded)) => {
                            for db in loaded {
                                info!(option = db.option, file = %db.path, kind = %db.kind, "SIGHUP: database reloaded");
                            }
                        }
                        Ok(Err(reason)) => tracing::error!(
                            %reason,
                            "SIGHUP: the databases were not reloaded; the databases in force stay"
                        ),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: reloading the databases failed"),
                    }
                }
                let Some(rules) = rules.as_ref() else {
                    if owners.is_none() {
                        info!("SIGHUP received: nothing to reload (no --rules, --asn-db or --country-db file); still running");
                    }
                    continue;
                };
                let reloaded = {
                    let rules = rules.clone();
                    tokio::task::spawn_blocking(move || rules.reload()).await
                };
                match reloaded {
                    Ok(Ok(n)) => info!(file = %rules.path().display(), rules = n, "SIGHUP: rules reloaded"),
                    Ok(Err(reason)) => tracing::error!(
                        %reason,
                        "SIGHUP: the rules file was not reloaded; the rules in force stay"
                    ),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reloading the rules failed"),
                }
            }
        }
    }
}
