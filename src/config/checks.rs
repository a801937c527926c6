//! The checks that turn durations, limits and sizes of the command line
//! into settings: each names the option it refuses.

use std::time::Duration;

use super::cli::ServeArgs;
use super::{ConfigError, invalid};
use crate::window::budget::{self, Budget};

const MIN_BATCH: Duration = Duration::from_millis(10);
const MAX_BATCH: Duration = Duration::from_secs(3600);
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_PANES: u128 = 100_000;
const MAX_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// `--memory-limit`: a size, at least what the kept panes need summarized;
/// by default a quarter of the machine's (or the cgroup's) memory, raised
/// to that least when the machine is small.
pub(super) fn memory_budget(
    given: Option<&str>,
    retention: Duration,
    batch: Duration,
) -> Result<Budget, ConfigError> {
    let kept_panes = (retention.as_nanos() / batch.as_nanos()) as usize;
    let Some(text) = given else {
        let quarter = budget::default_limit().unwrap_or(1 << 30) as usize;
        let bytes = quarter.max(budget::minimum(kept_panes));
        return Budget::new(bytes, kept_panes)
            .map_err(|_| invalid("--memory-limit", "the default could not be sized; give one"));
    };
    let bytes = budget::parse_size(text).ok_or_else(|| {
        invalid(
            "--memory-limit",
            format!("{text:?} is not a size such as 512MiB, 4GiB or 800MB"),
        )
    })?;
    Budget::new(usize::try_from(bytes).unwrap_or(usize::MAX), kept_panes).map_err(|least| {
        invalid(
            "--memory-limit",
            format!(
                "{text} is below the least the counting state can run in with {kept_panes} kept \
                 panes (--retention / --batch): {}",
                budget::show_size(least as u64)
            ),
        )
    })
}

/// The group names a ZooKeeper path segment: `.` and `..` are not one.
pub(super) fn check_group(group: &str) -> Result<(), ConfigError> {
    if group.trim().is_empty()
        || group.contains('/')
        || group == "."
        || group == ".."
        || group.chars().any(char::is_control)
    {
        return Err(invalid(
            "--group",
            format!(
                "{group:?} must be non-empty, not . or .., and hold no '/' or control characters"
            ),
        ));
    }
    Ok(())
}

/// A duration option within `range`, shown as humans write it.
pub(super) fn duration_within(
    setting: &'static str,
    d: Duration,
    range: std::ops::RangeInclusive<Duration>,
    shown: &str,
) -> Result<(), ConfigError> {
    if range.contains(&d) {
        return Ok(());
    }
    Err(invalid(
        setting,
        format!("{} is outside {shown}", humantime::format_duration(d)),
    ))
}

/// The bounds of the options that size or time something.
pub(super) fn check_limits(a: &ServeArgs) -> Result<(), ConfigError> {
    duration_within(
        "--zookeeper-session-timeout",
        a.zookeeper_session_timeout,
        Duration::from_secs(2)..=Duration::from_secs(120),
        "2s..=2m",
    )?;
    if a.max_rate_per_partition > 10_000_000 {
        return Err(invalid(
            "--max-rate-per-partition",
            format!(
                "{} is above 10000000 (use 0 for unlimited)",
                a.max_rate_per_partition
            ),
        ));
    }
    if !(1..=100_000).contains(&a.max_event_streams) {
        return Err(invalid(
            "--max-event-streams",
            format!("{} is outside 1..=100000", a.max_event_streams),
        ));
    }
    if !(16..=1_000_000).contains(&a.max_connections) {
        return Err(invalid(
            "--max-connections",
            format!("{} is outside 16..=1000000", a.max_connections),
        ));
    }
    for (setting, d) in [
        ("--header-timeout", a.header_timeout),
        ("--idle-timeout", a.idle_timeout),
    ] {
        duration_within(
            setting,
            d,
            Duration::from_millis(100)..=Duration::from_secs(3600),
            "100ms..=1h",
        )?;
    }
    if a.demo_rate > 1_000_000 {
        return Err(invalid(
            "--demo-rate",
            format!("{} is above 1000000", a.demo_rate),
        ));
    }
    duration_within(
        "--shutdown-grace",
        a.shutdown_grace,
        Duration::from_secs(1)..=Duration::from_secs(600),
        "1s..=10m",
    )
}

/// `--checkpoint-interval`: five slides unless given, a whole multiple of
/// the slide, at most [`MAX_CHECKPOINT_INTERVAL`].
pub(super) fn checkpoint_interval(
    given: Option<Duration>,
    slide: Duration,
) -> Result<Duration, ConfigError> {
    let interval = given.unwrap_or(slide * 5);
    if interval > MAX_CHECKPOINT_INTERVAL {
        return Err(invalid(
            "--checkpoint-interval",
            format!(
                "{} is longer than {}: a crash would re-read that much",
                humantime::format_duration(interval),
                humantime::format_duration(MAX_CHECKPOINT_INTERVAL)
            ),
        ));
    }
    if interval.is_zero() || !interval.as_nanos().is_multiple_of(slide.as_nanos()) {
        return Err(invalid(
            "--checkpoint-interval",
            format!(
                "{} is not a whole multiple of --slide ({})",
                humantime::format_duration(interval),
                humantime::format_duration(slide)
            ),
        ));
    }
    Ok(interval)
}

pub(super) fn validate_durations(
    batch: Duration,
    window: Duration,
    slide: Duration,
) -> Result<(), ConfigError> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if batch < MIN_BATCH || batch > MAX_BATCH {
        return Err(invalid(
            "--batch",
            format!(
                "{} is outside {}..={}",
                show(batch),
                show(MIN_BATCH),
                show(MAX_BATCH)
            ),
        ));
    }
    for (setting, d) in [("--window", window), ("--slide", slide)] {
        if d.is_zero() || d.as_nanos() % batch.as_nanos() != 0 {
            return Err(invalid(
                setting,
                format!(
                    "{} is not a whole multiple of --batch ({})",
                    show(d),
                    show(batch)
                ),
            ));
        }
    }
    if slide > window {
        return Err(invalid(
            "--slide",
            format!("{} is longer than --window ({})", show(slide), show(window)),
        ));
    }
    if window > MAX_WINDOW {
        return Err(invalid(
            "--window",
            format!("{} is longer than {}", show(window), show(MAX_WINDOW)),
        ));
    }
    if window.as_nanos() / batch.as_nanos() > MAX_PANES {
        return Err(invalid(
            "--window",
            format!(
                "{} holds more than {MAX_PANES} batches of {}; use a longer --batch",
                show(window),
                show(batch)
            ),
        ));
    }
    Ok(())
}

/// `--retention`: default the window; a multiple of the slide from the
/// window to 7 days and [`MAX_RETAINED_PANES`] panes.
pub(super) fn retention(
    retention: Option<Duration>,
    window: Duration,
    slide: Duration,
    batch: Duration,
) -> Result<Duration, ConfigError> {
    let Some(retention) = retention else {
        return Ok(window);
    };
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let rule = if retention < window || retention > MAX_WINDOW {
        format!(
            "{} must be from --window ({}) to {}",
            show(retention),
            show(window),
            show(MAX_WINDOW)
        )
    } else if !retention.as_nanos().is_multiple_of(slide.as_nanos()) {
        format!(
            "{} is not a whole multiple of --slide ({})",
            show(retention),
            show(slide)
        )
    } else if retention.as_nanos() / batch.as_nanos() > MAX_RETAINED_PANES {
        format!(
            "{} holds more than {MAX_RETAINED_PANES} batches of {}; use a longer --batch",
            show(retention),
            show(batch)
        )
    } else {
        return Ok(retention);
    };
    Err(invalid("--retention", rule))
}

/// The most panes `--retention` may keep.
const MAX_RETAINED_PANES: u128 = 1_000_000;
