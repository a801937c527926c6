//! What ingest needs to know from the settings.

use crate::window::budget::Budget;
use std::time::Duration;

use crate::config::{OffsetReset, Settings, Time, TimeSource};
use crate::count::PaneTime;
use crate::count::event_time::EventConfig;
use crate::input::parse::ClientField;

/// What ingest needs to know from the settings.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub batch: Duration,
    pub window: Duration,
    pub slide: Duration,
    pub window_panes: usize,
    /// Panes kept after they leave the window (`--retention`).
    pub retained_panes: usize,
    pub slide_batches: u64,
    pub checkpoint_batches: u64,
    pub max_rate_per_partition: u64,
    pub offset_reset: OffsetReset,
    pub client_field: ClientField,
    pub max_line_bytes: usize,
    pub group: String,
    pub time: Time,
    /// `--memory-limit`: the state's budget.
    pub memory: Budget,
    /// `--rules` (set by the app, which loads them).
    pub rules: Option<std::sync::Arc<crate::rules::Rules>>,
    pub outbox: Option<crate::rules::outbox::Outbox>,
    /// `--asn-db`, `--country-db` (set by the app, which opens them).
    pub owners: Option<std::sync::Arc<crate::owners::Owners>>,
}

impl IngestConfig {
    /// How the counting thread times records.
    pub(super) fn pane_time(&self) -> PaneTime {
        let config = EventConfig {
            batch_ms: self.batch.as_millis() as i64,
            max_future_ms: self.time.max_future.as_millis() as i64,
        };
        match self.time.source {
            TimeSource::Arrival => PaneTime::Arrival,
            TimeSource::Event => PaneTime::Line(config),
            TimeSource::Kafka => PaneTime::Kafka(config),
        }
    }
}

impl From<&Settings> for IngestConfig {
    fn from(s: &Settings) -> Self {
        IngestConfig {
            batch: s.batch,
            window: s.window,
            slide: s.slide,
            window_panes: s.window_panes(),
            retained_panes: s.retained_panes(),
            slide_batches: s.slide_batches(),
            checkpoint_batches: s.checkpoint_batches(),
            max_rate_per_partition: s.max_rate_per_partition,
            offset_reset: s.offset_reset,
            client_field: ClientField::from(&s.input).with_time(s.time.parsed_field()),
            max_line_bytes: s.input.max_line_bytes,
            group: s.group.clone(),
            time: s.time.clone(),
            memory: s.memory,
            rules: None,
            outbox: None,
            owners: None,
        }
    }
}
