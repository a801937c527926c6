//! Parse settings, start tracing, run the app, map errors to exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::FromArgMatches;
use clap::error::ErrorKind;
use ipstats::config::{Cli, Command, EXIT_USAGE, Settings, check_legacy_repeats};
use ipstats::stop::Stop;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("ipstats: {message}");
    ExitCode::from(EXIT_USAGE as u8)
}

fn main() -> ExitCode {
    let parsed = ipstats::config::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage_error(format_args!("{} (see --help)", one_line(&e))),
    };
    if let Some(legacy) = matches.subcommand_matches("legacy")
        && let Err(e) = check_legacy_repeats(legacy)
    {
        return usage_error(e);
    }
    let (filter, bad_filter) = log_filter(std::env::var("IPSTATS_LOG").ok().as_deref());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
    if let Some(error) = bad_filter {
        tracing::warn!(%error, "IPSTATS_LOG is not a list of [target=]level directives; logging at info");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ipstats-http")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ipstats: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Produce(args)) => runtime.block_on(async {
            // Ctrl-C asks the producer to stop; it then flushes what it wrote.
            let stop = Stop::new();
            let produce = ipstats::tools::produce::run(args, stop.clone());
            let mut produce = std::pin::pin!(produce);
            let result = tokio::select! {
                result = &mut produce => result,
                _ = tokio::signal::ctrl_c() => {
                    stop.set();
                    produce.await
                }
            };
            result.map(drop)
        }),
        Some(Command::Count(args)) => ipstats::tools::count_file::run(args),
        command => {
            let settings = match command {
                Some(Command::Serve(args)) => Settings::try_from(*args),
                Some(Command::Legacy(args)) => Settings::try_from(*args),
                _ => Settings::try_from(cli.serve),
            };
            let settings = match settings {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            runtime.block_on(ipstats::app::run(settings, shutdown_signal()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(config) = e.downcast_ref::<ipstats::config::ConfigError>() {
                return usage_error(config);
            }
            eprintln!("ipstats: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// clap's message on one line: the rule, and the arguments it names on the
/// lines below it (as "required arguments were not provided" does).
fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let named: Vec<&str> = lines.collect();
    if named.is_empty() {
        first.to_string()
    } else {
        format!("{first} {}", named.join(", "))
    }
}

/// `IPSTATS_LOG`: `info`, `ipstats=debug`, `warn,ipstats::ingest=trace`
/// (a level, and levels by target); absent or unreadable, `info` (and why).
fn log_filter(text: Option<&str>) -> (Targets, Option<String>) {
    let info = || Targets::new().with_default(tracing::Level::INFO);
    match text.map(str::parse::<Targets>) {
        None => (info(), None),
        Some(Ok(targets)) => (targets, None),
        Some(Err(e)) => (info(), Some(e.to_string())),
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_log_filter_reads_levels_by_target_and_says_when_it_cannot() {
        let (targets, bad) = log_filter(Some("warn,ipstats::input=debug"));
        assert!(bad.is_none());
        assert!(targets.would_enable("ipstats::input::parse", &Level::DEBUG));
        assert!(!targets.would_enable("ipstats::app", &Level::INFO));
        let (targets, bad) = log_filter(None);
        assert!(bad.is_none() && targets.would_enable("rdkafka", &Level::INFO));
        let (targets, bad) = log_filter(Some("ipstats=[span]"));
        assert!(bad.is_some(), "said");
        assert!(targets.would_enable("ipstats", &Level::INFO));
        assert!(!targets.would_enable("ipstats", &Level::DEBUG));
    }
}
