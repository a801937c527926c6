//! How records are read ([`Input`]) and when they happened ([`Time`]),
//! validated.

use std::time::Duration;

use super::cli::{Format, InputArgs, TimeSource};
use super::{ConfigError, invalid};
use crate::vocab::Network;

/// How records are read, validated ([`InputArgs`]).
#[derive(Clone, Debug)]
pub struct Input {
    pub format: Format,
    /// The envelope field holding the raw line, if records are wrapped.
    pub envelope: Option<String>,
    pub ip_field: String,
    /// Proxies looked past in an X-Forwarded-For list.
    pub trusted_proxies: Vec<Network>,
    pub max_line_bytes: usize,
}

impl TryFrom<InputArgs> for Input {
    type Error = ConfigError;

    fn try_from(a: InputArgs) -> Result<Self, ConfigError> {
        check_path("--ip-field", &a.ip_field)?;
        if let Some(envelope) = &a.envelope {
            check_path("--envelope", envelope)?;
        }
        if !(256..=16 * 1024 * 1024).contains(&a.max_line_bytes) {
            return Err(invalid(
                "--max-line-bytes",
                format!("{} is outside 256..=16777216", a.max_line_bytes),
            ));
        }
        Ok(Input {
            trusted_proxies: parse_networks("--trusted-proxies", a.trusted_proxies.as_deref())?,
            format: a.format,
            envelope: a.envelope,
            ip_field: a.ip_field,
            max_line_bytes: a.max_line_bytes,
        })
    }
}

/// `--ip-field`, `--envelope`: a dotted path of non-empty names.
pub(super) fn check_path(setting: &'static str, path: &str) -> Result<(), ConfigError> {
    if path.is_empty() {
        return Err(invalid(setting, "must not be empty"));
    }
    if path.split('.').any(str::is_empty) {
        return Err(invalid(
            setting,
            format!("{path:?} has an empty name: a dotted path is name(.name)* (source.ip)"),
        ));
    }
    Ok(())
}

/// A comma-separated list of networks (`10.0.0.0/8,2001:db8::/32`, or bare
/// addresses); none given is an empty list.
fn parse_networks(setting: &'static str, list: Option<&str>) -> Result<Vec<Network>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|text| {
            Network::parse(text).ok_or_else(|| {
                invalid(
                    setting,
                    format!("{text:?} is not an address or a network in CIDR form (10.0.0.0/8)"),
                )
            })
        })
        .collect()
}

/// When a record happened, and how late it may arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Time {
    pub source: TimeSource,
    /// `--time-field`: a dotted JSON path (CLF reads its bracketed date).
    pub field: String,
    /// Records this far behind the window's end still join their pane.
    pub lateness: Duration,
    /// Records this far ahead of the wall clock are skipped as `future_time`.
    pub max_future: Duration,
}

impl Time {
    /// The largest `--lateness` and `--max-future`.
    pub const MAX_SLACK: Duration = Duration::from_secs(24 * 3600);

    pub fn new(
        source: TimeSource,
        field: String,
        lateness: Duration,
        max_future: Duration,
        window: Duration,
    ) -> Result<Self, ConfigError> {
        check_path("--time-field", &field)?;
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if lateness > Time::MAX_SLACK || lateness >= window {
            return Err(invalid(
                "--lateness",
                format!(
                    "{} must be shorter than --window ({}) and at most 24h",
                    show(lateness),
                    show(window)
                ),
            ));
        }
        if max_future > Time::MAX_SLACK {
            return Err(invalid(
                "--max-future",
                format!("{} is above 24h", show(max_future)),
            ));
        }
        Ok(Time {
            source,
            field,
            lateness,
            max_future,
        })
    }

    /// Panes are by the records' own time (the log's or Kafka's), not by arrival.
    pub fn is_event(&self) -> bool {
        self.source != TimeSource::Arrival
    }

    /// The time field the parser reads: only with `--time-source event`.
    pub fn parsed_field(&self) -> Option<&str> {
        (self.source == TimeSource::Event).then_some(self.field.as_str())
    }

    /// How a checkpoint names these settings (they shape its panes).
    pub fn describe(&self) -> String {
        match self.source {
            TimeSource::Event => format!("event:{}", self.field),
            TimeSource::Arrival => "arrival".into(),
            TimeSource::Kafka => "kafka".into(),
        }
    }
}
