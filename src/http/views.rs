//! The JSON shapes of the API, as `openapi.yaml` describes them. `ipstats
//! count` prints [`TopView`] too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::owners::{OwnerKind, Owners};
use crate::query::owners::{AsnMembers, OwnerCount};
use crate::query::{Grouping, NetworkCount};
use crate::rules::{Firing, Transition};
use crate::snapshot::{HistoryPoint, MemoryStatus, Snapshot};
use crate::vocab::{Country, IpKey};

pub use crate::vocab::rfc3339;

#[derive(Serialize)]
pub struct WindowView {
    pub start: String,
    pub end: String,
    pub length_seconds: f64,
    pub slide_seconds: f64,
}

impl WindowView {
    pub fn new(start: SystemTime, end: SystemTime, length: Duration, slide: Duration) -> Self {
        WindowView {
            start: rfc3339(start),
            end: rfc3339(end),
            length_seconds: length.as_secs_f64(),
            slide_seconds: slide.as_secs_f64(),
        }
    }

    pub fn of(s: &Snapshot) -> Self {
        WindowView::new(s.window_start, s.window_end, s.window_length, s.slide)
    }
}

/// How far an answer can be trusted. An answer from exact panes only says
/// `"exact": true`; one that reads a summarized pane says `"exact": false`,
/// the largest error any count in it may have, and whether `distinct_ips`
/// is an estimate. Its items then carry `lower` and `upper` beside `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Exactness {
    pub exact: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_bound: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_ips_estimated: Option<bool>,
}

impl Exactness {
    pub const EXACT: Exactness = Exactness {
        exact: true,
        error_bound: None,
        distinct_ips_estimated: None,
    };

    /// `summarized`: a pane the answer read is summarized.
    pub fn of(summarized: bool, error_bound: u64, distinct_estimated: bool) -> Self {
        if !summarized {
            return Exactness::EXACT;
        }
        Exactness {
            exact: false,
            error_bound: Some(error_bound),
            distinct_ips_estimated: Some(distinct_estimated),
        }
    }

    /// A snapshot's window.
    pub fn of_window(s: &Snapshot) -> Self {
        Exactness::of(s.distinct_estimated, s.error_bound, s.distinct_estimated)
    }

    /// A count known to lie in `[lower, lower + error_bound]`, as items
    /// report it.
    pub fn counted(&self, lower: u64) -> Counted {
        match self.error_bound {
            None => Counted {
                count: lower,
                lower: None,
                upper: None,
            },
            Some(e) => Counted {
                count: lower + e / 2,
                lower: Some(lower),
                upper: Some(lower + e),
            },
        }
    }
}

/// An item's count: exact, or the middle of its bounds with both bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Counted {
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper: Option<u64>,
}

#[derive(Serialize)]
pub struct IpCount {
    pub ip: String,
    #[serde(flatten)]
    pub count: Counted,
}

impl IpCount {
    pub fn new(ip: IpKey, lower: u64, exactness: &Exactness) -> Self {
        IpCount {
            ip: ip.to_string(),
            count: exactness.counted(lower),
        }
    }
}

#[derive(Serialize)]
pub struct NetworkItem {
    pub network: String,
    #[serde(flatten)]
    pub count: Counted,
    pub distinct_ips: u64,
}

/// The top networks of a range (`prefix4`, `prefix6`).
#[derive(Serialize)]
pub struct NetworkTopView {
    pub window: WindowView,
    pub total_requests: u64,
    pub distinct_ips: usize,
    pub prefix4: u8,
    pub prefix6: u8,
    pub distinct_networks: usize,
    pub top: Vec<NetworkItem>,
    #[serde(flatten)]
    pub exactness: Exactness,
}

impl NetworkTopView {
    pub fn new(
        window: WindowView,
        total_requests: u64,
        distinct_ips: usize,
        grouping: Grouping,
        (top, distinct_networks): (Vec<NetworkCount>, usize),
        exactness: Exactness,
    ) -> Self {
        NetworkTopView {
            exactness,
            window,
            total_requests,
            distinct_ips,
            prefix4: grouping.prefix4,
            prefix6: grouping.prefix6,
            distinct_networks,
            top: top.iter().map(|t| NetworkItem::of(t, &exactness)).collect(),
        }
    }
}

impl NetworkItem {
    pub fn of(t: &NetworkCount, exactness: &Exactness) -> Self {
        NetworkItem {
            network: t.network.to_string(),
            count: exactness.counted(t.count),
            distinct_ips: t.distinct_ips,
        }
    }
}

/// An autonomous system's share of a range (`group=asn`).
#[derive(Serialize)]
pub struct AsnItem {
    pub asn: u32,
    /// The organisation the database names; null when it names none.
    pub org: Option<String>,
    #[serde(flatten)]
    pub count: Counted,
    pub distinct_ips: u64,
}

/// A country's share of a range (`group=country`).
#[derive(Serialize)]
pub struct CountryItem {
    pub country: String,
    #[serde(flatten)]
    pub count: Counted,
    pub distinct_ips: u64,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum OwnerItem {
    Asn(AsnItem),
    Country(CountryItem),
}

impl OwnerItem {
    /// The item of `key` of `kind`, its count as `exactness` says.
    pub fn new(
        kind: OwnerKind,
        owner: &OwnerCount,
        exactness: &Exactness,
        owners: Option<&Owners>,
    ) -> Self {
        let count = exactness.counted(owner.count);
        match kind {
            OwnerKind::Asn => OwnerItem::Asn(AsnItem {
                asn: owner.key,
                org: owners
                    .and_then(|o| o.org(owner.key))
                    .map(|org| org.to_string()),
                count,
                distinct_ips: owner.distinct_ips,
            }),
            OwnerKind::Country => OwnerItem::Country(CountryItem {
                country: Country::from_bits(owner.key as u16).to_string(),
                count,
                distinct_ips: owner.distinct_ips,
            }),
        }
    }
}

/// The top autonomous systems or countries of a range (`group`).
#[derive(Serialize)]
pub struct OwnerTopView {
    pub window: WindowView,
    pub total_requests: u64,
    pub distinct_ips: usize,
    pub group: &'static str,
    /// How many ASes (or countries) the range holds.
    pub distinct_owners: usize,
    pub top: Vec<OwnerItem>,
    #[serde(flatten)]
    pub exactness: Exactness,
}

impl AsnView {
    pub fn new(
        asn: u32,
        owners: Option<&Owners>,
        window: WindowView,
        members: AsnMembers,
        exactness: Exactness,
    ) -> Self {
        AsnView {
            asn,
            org: owners.and_then(|o| o.org(asn)).map(|org| org.to_string()),
            window,
            count: exactness.counted(members.count),
            distinct_ips: members.distinct_ips,
            top: members
                .top
                .into_iter()
                .map(|(ip, lower)| IpCount::new(ip, lower, &exactness))
                .collect(),
            networks: members
                .networks
                .iter()
                .map(|t| NetworkItem::of(t, &exactness))
                .collect(),
            exactness,
        }
    }
}

/// One autonomous system over a range (`/api/v1/asns/{asn}`).
#[derive(Serialize)]
pub struct AsnView {
    pub asn: u32,
    pub org: Option<String>,
    pub window: WindowView,
    #[serde(flatten)]
    pub count: Counted,
    pub distinct_ips: u64,
    pub top: Vec<IpCount>,
    /// Its most counted networks (`/24`, `/64`).
    pub networks: Vec<NetworkItem>,
    #[serde(flatten)]
    pub exactness: Exactness,
}

#[derive(Serialize)]
pub struct TopView {
    pub window: WindowView,
    pub total_requests: u64,
    pub distinct_ips: usize,
    pub top: Vec<IpCount>,
    #[serde(flatten)]
    pub exactness: Exactness,
}

impl TopView {
    /// The top list of one window; `top` in order.
    pub fn new(
        window: WindowView,
        total_requests: u64,
        distinct_ips: usize,
        top: &[(IpKey, u64)],
        exactness: Exactness,
    ) -> Self {
        TopView {
            exactness,
            window,
            total_requests,
            distinct_ips,
            top: top
                .iter()
                .map(|(ip, lower)| IpCount::new(*ip, *lower, &exactness))
                .collect(),
        }
    }

    /// The first `n` of a snapshot's top list.
    pub fn of(snapshot: &Snapshot, n: usize) -> Self {
        TopView::new(
            WindowView::of(snapshot),
            snapshot.total_requests,
            snapshot.distinct_ips,
            &snapshot.top.first(n),
            Exactness::of_window(snapshot),
        )
    }
}

#[derive(Serialize)]
pub struct PaneCount {
    pub start: String,
    pub end: String,
    pub count: u32,
}

#[derive(Serialize)]
pub struct IpView {
    pub ip: String,
    #[serde(flatten)]
    pub count: Counted,
    pub window: WindowView,
    pub panes: Vec<PaneCount>,
    #[serde(flatten)]
    pub exactness: Exactness,
}

#[derive(Serialize)]
pub struct ResetView {
    pub reason: &'static str,
    pub stored_offset: Option<i64>,
    /// The store that held `stored_offset` (`checkpoint`, `zookeeper`,
    /// `kafka`); null for records expired while consuming.
    pub stored_in: Option<&'static str>,
    pub reset_to: i64,
    pub log_start: i64,
    pub log_end: i64,
    pub records_lost: i64,
    pub at: String,
}

#[derive(Serialize)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    pub from_offset: i64,
    pub until_offset: i64,
    pub committed_zookeeper: Option<i64>,
    pub committed_kafka: Option<i64>,
    pub log_start: Option<i64>,
    pub log_end: Option<i64>,
    pub lag: Option<i64>,
    pub lag_seconds: Option<f64>,
    /// Event time: the newest time counted from this partition.
    pub newest_event_time: Option<String>,
    /// Event time: records that arrived after their pane closed.
    pub records_late: u64,
    pub last_reset: Option<ResetView>,
    pub start: StartView,
}

/// Where this run started a partition: `from` is the store whose offset was
/// used (`checkpoint`, `zookeeper`, `kafka`), `offset_reset` or
/// `new_partition`; `note` says why when the stores disagree.
#[derive(Serialize)]
pub struct StartView {
    pub offset: i64,
    pub from: &'static str,
    pub note: Option<String>,
}

#[derive(Serialize)]
pub struct OffsetsView {
    pub group: String,
    pub partitions: Vec<PartitionView>,
}

/// `/api/v1/status`.
#[derive(Serialize)]
pub struct StatusView {
    pub version: &'static str,
    pub mode: &'static str,
    pub ready: bool,
    pub degraded: Vec<&'static str>,
    pub phase: &'static str,
    pub uptime_seconds: f64,
    pub group: String,
    pub topics: Vec<String>,
    pub window: WindowView,
    pub retention_seconds: f64,
    pub snapshot_age_seconds: f64,
    pub batches: u64,
    pub records_consumed: u64,
    pub records_counted: u64,
    pub records_per_second: f64,
    /// Skipped records by reason, every reason listed.
    pub skipped: BTreeMap<&'static str, u64>,
    pub records_repaired: u64,
    pub time: TimeView,
    pub checkpoint: CheckpointView,
    pub kafka: KafkaView,
    pub zookeeper: StoreView,
    pub memory: MemoryView,
    /// `--asn-db`, `--country-db`: the databases in force.
    pub databases: Vec<crate::owners::DatabaseInfo>,
}

/// The counting state against its budget.
#[derive(Serialize)]
pub struct MemoryView {
    pub budget_bytes: usize,
    pub state_bytes: usize,
    pub panes_summarized: usize,
    pub summarizing_since: Option<String>,
}

impl MemoryView {
    pub fn of(m: &MemoryStatus) -> Self {
        MemoryView {
            budget_bytes: m.budget_bytes,
            state_bytes: m.state_bytes,
            panes_summarized: m.panes_summarized,
            summarizing_since: m.summarizing_since.map(rfc3339),
        }
    }
}

/// Which time the window runs on, and how fresh its answer is.
#[derive(Serialize)]
pub struct TimeView {
    pub source: &'static str,
    pub field: Option<String>,
    pub lateness_seconds: f64,
    pub window_end: Option<String>,
    pub event_time_lag_seconds: Option<f64>,
    pub records_late: u64,
}

#[derive(Serialize)]
pub struct CheckpointView {
    pub dir: String,
    pub age_seconds: Option<f64>,
    pub failing: bool,
    pub last_error: Option<String>,
    pub restored_from: Option<String>,
}

#[derive(Serialize)]
pub struct KafkaView {
    pub state: &'static str,
    pub brokers: String,
    pub last_error: Option<String>,
    pub last_contact_age_seconds: Option<f64>,
    pub group_commits: StoreView,
}

/// One offset store (ZooKeeper, the Kafka group's commits).
#[derive(Serialize)]
pub struct StoreView {
    pub state: &'static str,
    /// Where it is (ZooKeeper's connect string); always present, null
    /// when there is none to name.
    pub connect: Option<String>,
    pub last_error: Option<String>,
    pub last_commit_age_seconds: Option<f64>,
}

/// One slide's totals, for the dashboard's sparklines.
#[derive(Serialize)]
pub struct HistoryView {
    pub at: String,
    pub records_per_second: f64,
    pub window_requests: u64,
    pub distinct_ips: usize,
}

impl HistoryView {
    pub fn of(p: &HistoryPoint) -> Self {
        HistoryView {
            at: rfc3339(p.at),
            records_per_second: p.records_per_second,
            window_requests: p.window_requests,
            distinct_ips: p.distinct_ips,
        }
    }
}

/// What the dashboard shows of the alerts: all that fires, the last
/// transitions.
#[derive(Serialize)]
pub struct DashboardAlerts<'a> {
    pub firing: &'a [Firing],
    pub transitions: &'a [Arc<Transition>],
}

/// One `/api/v1/events` event.
#[derive(Serialize)]
pub struct EventView<'a> {
    pub top: TopView,
    pub offsets: OffsetsView,
    pub status: StatusView,
    pub history: Vec<HistoryView>,
    pub alerts: DashboardAlerts<'a>,
}
