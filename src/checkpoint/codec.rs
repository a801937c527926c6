//! The bytes of a checkpoint: pane files (binary, little-endian) and
//! manifests (JSON), each followed by a CRC-32 of what precedes it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sink::{Crc, Length, Sink};
use super::{CheckpointError, corrupt};
use crate::config::Settings;

use crate::owners::OwnerKind;
use crate::vocab::{IngestTotals, IpKey, Network, SKIP_REASONS, SkipCounts};
use crate::window::counts::Summarized;
use crate::window::distinct::Distinct;
use crate::window::owners::OwnerTotal;
use crate::window::summary::Summary;
use crate::window::{OffsetRange, Pane, PaneCounts, PaneOwners};

/// On-disk format version of manifests and exact panes written. Version 1
/// (five fixed skip counts, `not_utf8` among them) is still read.
pub const FORMAT_VERSION: u32 = 2;
/// The version of a summarized pane: version 2's layout, its counts the
/// lower bounds of the listed addresses, followed by the summary (see
/// [`encode_summary`]). Exact panes keep version 2, so a checkpoint that
/// never summarized is read by the builds before.
pub const SUMMARIZED_VERSION: u32 = 3;
/// A summarized pane with its owners' totals (`--asn-db`, `--country-db`)
/// after the summary: they were read from the exact counts before the pane
/// was folded, and cannot be read again from what it keeps.
pub const OWNED_VERSION: u32 = 4;
const PANE_MAGIC: &[u8; 8] = b"IPSPANE1";
/// The version of manifests that name segments (files holding the panes one
/// checkpoint wrote). Versions 1 and 2 (a file per pane) are still read.
pub const MANIFEST_VERSION: u32 = 3;

pub(super) use crate::vocab::{epoch_ms as millis, from_epoch_ms as from_millis};

// ---- panes -----------------------------------------------------------------

#[cfg(test)]
pub(super) fn encode_pane(pane: &Pane) -> Vec<u8> {
    let mut out = Vec::new();
    encode_pane_to(pane, &mut out);
    out
}

/// A pane's bytes, then their CRC-32.
pub(super) fn encode_pane_to<S: Sink>(pane: &Pane, sink: &mut S) {
    let mut crc = Crc::new(sink);
    encode_pane_body(pane, &mut crc);
    let sum = crc.finish();
    sink.put(&sum.to_le_bytes());
}

/// How many bytes [`encode_pane_to`] writes.
pub(super) fn encoded_pane_len(pane: &Pane) -> usize {
    let mut length = Length::default();
    encode_pane_body(pane, &mut length);
    length.0 + 4
}

fn encode_pane_body(pane: &Pane, out: &mut impl Sink) {
    out.put(PANE_MAGIC);
    let owners = pane.owners.as_deref().filter(|_| !pane.counts.is_exact());
    let version = match (pane.counts.summary(), owners) {
        (Some(_), Some(_)) => OWNED_VERSION,
        (Some(_), None) => SUMMARIZED_VERSION,
        (None, _) => FORMAT_VERSION,
    };
    out.put(&version.to_le_bytes());
    out.put(&pane.seq.to_le_bytes());
    out.put(&millis(pane.start).to_le_bytes());
    out.put(&millis(pane.end).to_le_bytes());
    out.put(&pane.requests.to_le_bytes());
    let skipped = pane.skipped.to_array();
    out.put(&[skipped.len() as u8]);
    for count in skipped {
        out.put(&count.to_le_bytes());
    }
    out.put(&(pane.ranges.len() as u32).to_le_bytes());
    for r in &pane.ranges {
        out.put(&(r.topic.len() as u16).to_le_bytes());
        out.put(r.topic.as_bytes());
        out.put(&r.partition.to_le_bytes());
        out.put(&r.from.to_le_bytes());
        out.put(&r.until.to_le_bytes());
    }
    out.put(&(pane.counts.len() as u32).to_le_bytes());
    for (ip, n) in pane.counts.iter() {
        out.put(&ip.to_bits().to_le_bytes());
        out.put(&n.to_le_bytes());
    }
    if let Some(summary) = pane.counts.summary() {
        encode_summary(summary, out);
    }
    if let Some(owners) = owners {
        encode_owners(owners, out);
    }
}

/// A summarized pane's summary, after its addresses' lower bounds: the
/// addresses' offset, the capacity, each network level (offset, total,
/// count, then first address, prefix and lower bound of each), and the
/// distinct-address sketch's registers.
fn encode_summary(s: &Summarized, out: &mut impl Sink) {
    out.put(&s.offset.to_le_bytes());
    out.put(&(s.capacity as u32).to_le_bytes());
    for level in [&s.v4, &s.v6] {
        out.put(&level.error_bound().to_le_bytes());
        out.put(&level.total().to_le_bytes());
        out.put(&(level.len() as u32).to_le_bytes());
        for (network, bounds) in level.iter() {
            let (bits, prefix) = network.to_parts();
            out.put(&bits.to_le_bytes());
            out.put(&[prefix]);
            out.put(&bounds.lower.to_le_bytes());
        }
    }
    let registers = s.distinct.registers();
    out.put(&(registers.len() as u32).to_le_bytes());
    out.put(registers);
}

/// A summarized pane's owners: for ASes, then countries, what any key may
/// lack, the number of keys, then each key, count and distinct addresses.
fn encode_owners(owners: &PaneOwners, out: &mut impl Sink) {
    for kind in [OwnerKind::Asn, OwnerKind::Country] {
        let totals = owners.totals(kind);
        out.put(&owners.error_bound(kind).to_le_bytes());
        out.put(&(totals.len() as u32).to_le_bytes());
        for t in totals {
            out.put(&t.key.to_le_bytes());
            out.put(&t.count.to_le_bytes());
            out.put(&t.distinct.to_le_bytes());
        }
    }
}

/// What [`encode_owners`] wrote; `None` when it does not read back whole
/// or a kind's counts add up to more than the pane's requests.
fn decode_owners(r: &mut Reader<'_>, requests: u64) -> Option<PaneOwners> {
    let mut kinds = Vec::with_capacity(2);
    for _ in 0..2 {
        let error = r.u64()?;
        let n = r.u32()? as usize;
        if n.saturating_mul(20) > r.0.len() {
            return None;
        }
        let mut totals = Vec::with_capacity(n);
        for _ in 0..n {
            totals.push(OwnerTotal {
                key: r.u32()?,
                count: r.u64()?,
                distinct: r.u64()?,
            });
        }
        let counted = totals
            .iter()
            .try_fold(0u64, |sum, t| sum.checked_add(t.count))?;
        if counted > requests {
            return None;
        }
        kinds.push((totals, error));
    }
    let (countries, country_error) = kinds.pop()?;
    let (asns, asn_error) = kinds.pop()?;
    PaneOwners::summarized_from(asns, countries, asn_error, country_error)
}

/// What [`encode_summary`] wrote; `None` when it does not read back whole.
fn decode_summary(r: &mut Reader<'_>, total: u64) -> Option<Summarized> {
    let offset = r.u64()?;
    let capacity = r.u32()? as usize;
    let mut levels = Vec::with_capacity(2);
    for _ in 0..2 {
        let (level_offset, level_total, n) = (r.u64()?, r.u64()?, r.u32()? as usize);
        if n > capacity {
            return None;
        }
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let network = Network::from_parts(r.u128()?, r.take::<1>()?[0])?;
            items.push((network, r.u64()?));
        }
        levels.push(Summary::from_parts(
            items,
            level_offset,
            level_total,
            capacity,
        )?);
    }
    let registers = r.u32()? as usize;
    let distinct = Distinct::from_registers(r.bytes(registers)?)?;
    let v6 = levels.pop()?;
    let v4 = levels.pop()?;
    // Every request is an IPv4 or an IPv6 one.
    if v4.total().checked_add(v6.total())? != total {
        return None;
    }
    Some(Summarized {
        offset,
        total,
        capacity,
        v4,
        v6,
        distinct,
    })
}

/// A bounds-checked little-endian reader.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl Reader<'_> {
    pub(super) fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    pub(super) fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_le_bytes)
    }
    pub(super) fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
    pub(super) fn u128(&mut self) -> Option<u128> {
        self.take().map(u128::from_le_bytes)
    }
    pub(super) fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

pub(super) fn verify_crc<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], CheckpointError> {
    let (body, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or_else(|| corrupt(path, "truncated"))?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(corrupt(path, "checksum mismatch"));
    }
    Ok(body)
}

pub fn decode_pane(path: &Path, bytes: &[u8]) -> Result<Pane, CheckpointError> {
    let body = verify_crc(path, bytes)?;
    let bad = || corrupt(path, "malformed pane");
    let mut r = Reader(body);
    if r.take::<8>().as_ref() != Some(PANE_MAGIC) {
        return Err(corrupt(path, "not a pane file"));
    }
    let version = r.u32().ok_or_else(bad)?;
    if !(1..=OWNED_VERSION).contains(&version) {
        return Err(corrupt(
            path,
            format!("format version {version}, expected 1..={OWNED_VERSION}"),
        ));
    }
    let seq = r.u64().ok_or_else(bad)?;
    let start = from_millis(r.i64().ok_or_else(bad)?);
    let end = from_millis(r.i64().ok_or_else(bad)?);
    let requests = r.u64().ok_or_else(bad)?;
    let skipped = if version == 1 {
        let mut old = [0u64; 5];
        for count in &mut old {
            *count = r.u64().ok_or_else(bad)?;
        }
        SkipCounts::from_format_1(old)
    } else {
        // Reasons are appended over versions: fewer is an older build's pane.
        let n = usize::from(r.take::<1>().ok_or_else(bad)?[0]);
        if n > SKIP_REASONS {
            return Err(corrupt(
                path,
                format!("{n} skip reasons, this build knows {SKIP_REASONS}"),
            ));
        }
        let mut counts = [0u64; SKIP_REASONS];
        for count in &mut counts[..n] {
            *count = r.u64().ok_or_else(bad)?;
        }
        SkipCounts::from_array(counts)
    };
    let nranges = r.u32().ok_or_else(bad)?;
    let mut ranges = Vec::with_capacity(nranges.min(1 << 16) as usize);
    for _ in 0..nranges {
        let len = r.u16().ok_or_else(bad)?;
        let topic =
            std::str::from_utf8(r.bytes(usize::from(len)).ok_or_else(bad)?).map_err(|_| bad())?;
        ranges.push(OffsetRange {
            topic: Arc::from(topic),
            partition: r.i32().ok_or_else(bad)?,
            from: r.i64().ok_or_else(bad)?,
            until: r.i64().ok_or_else(bad)?,
        });
    }
    let ncounts = r.u32().ok_or_else(bad)? as usize;
    let exact = version < SUMMARIZED_VERSION;
    if (exact && r.0.len() != ncounts * 20) || r.0.len() < ncounts * 20 {
        return Err(bad());
    }
    let mut pairs = Vec::with_capacity(ncounts);
    let mut total = 0u64;
    for _ in 0..ncounts {
        let ip = IpKey::from_bits(r.u128().ok_or_else(bad)?);
        let n = r.u32().ok_or_else(bad)?;
        total += u64::from(n);
        pairs.push((ip, n));
    }
    let mut owners = None;
    let counts = if exact {
        let counts = PaneCounts::from_pairs(pairs)
            .ok_or_else(|| corrupt(path, "an address is listed twice"))?;
        if total != requests {
            return Err(corrupt(path, "counts do not add up to the pane's requests"));
        }
        counts
    } else {
        let summary = decode_summary(&mut r, requests)
            .ok_or_else(|| corrupt(path, "malformed pane summary"))?;
        if version == OWNED_VERSION {
            owners = Some(Arc::new(decode_owners(&mut r, requests).ok_or_else(
                || corrupt(path, "malformed owners of a summarized pane"),
            )?));
        }
        if !r.0.is_empty() {
            return Err(corrupt(path, "malformed pane summary"));
        }
        PaneCounts::summarized_from(pairs, summary).ok_or_else(|| {
            corrupt(
                path,
                "an address is listed twice, or the lower bounds add up to more than the requests",
            )
        })?
    };
    Ok(Pane {
        seq,
        start,
        end,
        counts,
        requests,
        skipped,
        ranges,
        owners,
    })
}

// ---- segments ----------------------------------------------------------------

/// A segment a manifest uses: its file (named by `id`, the first pane it
/// holds) and which of its panes the manifest takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub id: u64,
    pub panes: Vec<u64>,
}

// ---- manifests -------------------------------------------------------------

/// The settings that shape state: a checkpoint only fits a run with the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub topics: Vec<String>,
    pub ip_field: String,
    pub batch_ms: u64,
    pub window_ms: u64,
    pub slide_ms: u64,
    /// Which time put records in panes (`arrival`, `event:<field>`, `kafka`);
    /// checkpoints written before it existed were by arrival.
    #[serde(default = "arrival")]
    pub time: String,
}

impl Shape {
    /// The time settings as flags: `event --time-field time_local`.
    fn time_flags(&self) -> String {
        match self.time.split_once(':') {
            Some((source, field)) => format!("{source} --time-field {field}"),
            None => self.time.clone(),
        }
    }
}

fn arrival() -> String {
    "arrival".into()
}

impl Shape {
    /// The shape of the running settings.
    pub fn of(s: &Settings) -> Self {
        Shape {
            topics: s.topics.clone(),
            ip_field: s.input.ip_field.clone(),
            batch_ms: s.batch.as_millis() as u64,
            window_ms: s.window.as_millis() as u64,
            slide_ms: s.slide.as_millis() as u64,
            time: s.time.describe(),
        }
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "--topics {} --ip-field {} --batch {} --window {} --slide {} --time-source {}",
            self.topics.join(","),
            self.ip_field,
            humantime::format_duration(Duration::from_millis(self.batch_ms)),
            humantime::format_duration(Duration::from_millis(self.window_ms)),
            humantime::format_duration(Duration::from_millis(self.slide_ms)),
            self.time_flags(),
        )
    }
}

/// Next offset of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
}

/// Ingest's totals as manifests store them, carried across restarts so
/// that `/api/v1/status` keeps them ([`IngestTotals`] in memory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTotals {
    pub batches: u64,
    pub records_consumed: u64,
    pub records_counted: u64,
    pub skipped: Skipped,
    /// Lines read with invalid UTF-8 replaced (format 2 on).
    #[serde(default)]
    pub repaired: u64,
    /// Event time: records that arrived after their pane closed.
    #[serde(default)]
    pub late: u64,
}

/// Skip counts in a manifest: by reason name (format 2), or the five fixed
/// counts of format 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Skipped {
    ByName(std::collections::BTreeMap<String, u64>),
    Format1([u64; 5]),
}

impl Default for Skipped {
    fn default() -> Self {
        Skipped::ByName(Default::default())
    }
}

impl From<&IngestTotals> for SavedTotals {
    fn from(c: &IngestTotals) -> Self {
        SavedTotals {
            batches: c.batches,
            records_consumed: c.records_consumed,
            records_counted: c.records_counted,
            skipped: Skipped::ByName(
                c.skipped
                    .iter()
                    .map(|(reason, n)| (reason.as_str().to_string(), n))
                    .collect(),
            ),
            repaired: c.repaired,
            late: c.late,
        }
    }
}

impl From<&SavedTotals> for IngestTotals {
    fn from(c: &SavedTotals) -> Self {
        IngestTotals {
            batches: c.batches,
            records_consumed: c.records_consumed,
            records_counted: c.records_counted,
            skipped: match &c.skipped {
                Skipped::Format1(old) => SkipCounts::from_format_1(*old),
                Skipped::ByName(named) => {
                    let mut counts = SkipCounts::default();
                    for (name, n) in named {
                        // A reason this build does not know is a display
                        // total only: nothing to count it under.
                        counts.add_named(name, *n);
                    }
                    counts
                }
            },
            repaired: c.repaired,
            late: c.late,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub seq: u64,
    pub written_at_ms: i64,
    pub shape: Shape,
    /// Pane seqs in the window, oldest first.
    pub panes: Vec<u64>,
    pub offsets: Vec<PartitionOffset>,
    pub next_pane_seq: u64,
    #[serde(rename = "counters")]
    pub totals: SavedTotals,
    /// Event time: the window's end (epoch ms); panes starting at or after
    /// it wait ahead of the window. Absent with arrival time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_end_ms: Option<i64>,
    /// `--rules`: the alerts' state (absent without rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<crate::rules::SavedAlerts>,
    /// The segment files holding the panes (format 3); a pane in none of
    /// them has a file of its own (written by an older build).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
}

pub(super) fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(m).unwrap_or_default();
    out.push(b'\n');
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub(super) fn decode_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, CheckpointError> {
    let body = verify_crc(path, bytes)?;
    let manifest: Manifest = serde_json::from_slice(body)
        .map_err(|e| corrupt(path, format!("malformed manifest: {e}")))?;
    if !(1..=MANIFEST_VERSION).contains(&manifest.format) {
        return Err(corrupt(
            path,
            format!(
                "format version {}, expected 1..={MANIFEST_VERSION}",
                manifest.format
            ),
        ));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::test_support::pane;

    #[test]
    fn panes_round_trip_exactly() {
        let original = pane(7, &[("10.0.0.1", 3), ("2001:db8::1", 4)]);
        let bytes = encode_pane(&original);
        let decoded = decode_pane(Path::new("p"), &bytes).expect("decodes");
        assert_eq!(decoded.counts, original.counts);
        assert_eq!(
            (decoded.seq, decoded.requests, decoded.start),
            (7, 7, original.start)
        );
        assert_eq!(decoded.ranges, original.ranges);
        assert_eq!(decoded.skipped, original.skipped);
        for cut in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                decode_pane(Path::new("p"), &bytes[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        for flip in [0, 9, 40, bytes.len() - 6] {
            let mut damaged = bytes.clone();
            damaged[flip] ^= 0x10;
            assert!(
                decode_pane(Path::new("p"), &damaged).is_err(),
                "flipped byte {flip}"
            );
        }
    }

    #[test]
    fn a_summarized_pane_keeps_its_owners_totals() {
        let many: Vec<(String, u32)> = (0..400u32)
            .map(|i| (format!("10.{}.{}.1", i / 200, i % 200), 1))
            .collect();
        let pairs: Vec<(&str, u32)> = many.iter().map(|(ip, n)| (ip.as_str(), *n)).collect();
        let exact = pane(4, &pairs);
        let owner = |ip: IpKey| crate::owners::Owner {
            asn: 64500 + (ip.to_bits() >> 16 & 1) as u32,
            country: crate::vocab::Country::parse("DE").expect("DE"),
        };
        let owners = PaneOwners::of(&exact.counts, owner).folded(1);
        let summarized = Pane {
            counts: exact.counts.summarized(8),
            owners: Some(Arc::new(owners.clone())),
            ..Pane::clone(&exact)
        };
        let bytes = encode_pane(&summarized);
        assert_eq!(bytes[8..12], OWNED_VERSION.to_le_bytes());
        let decoded = decode_pane(Path::new("p"), &bytes).expect("decodes");
        assert_eq!(decoded.owners.as_deref(), Some(&owners));
        assert_eq!(decoded.counts, summarized.counts);
        for cut in [bytes.len() - 10, bytes.len() - 30] {
            assert!(
                decode_pane(Path::new("p"), &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // An exact pane's owners are looked up again at restore: not stored.
        let exact_owned = Pane {
            owners: Some(Arc::new(PaneOwners::of(&exact.counts, owner))),
            ..Pane::clone(&exact)
        };
        assert_eq!(encode_pane(&exact_owned), encode_pane(&exact));
    }

    #[test]
    fn summarized_panes_round_trip_with_their_bounds_and_exact_ones_keep_version_2() {
        let many: Vec<(String, u32)> = (0..300u32)
            .map(|i| (format!("2001:db8::{i:x}"), 1 + i % 7))
            .chain((0..50u32).map(|i| (format!("10.0.{}.{}", i % 3, i), 2)))
            .chain((0..3u32).map(|i| (format!("192.0.2.{i}"), 500)))
            .collect();
        let pairs: Vec<(&str, u32)> = many.iter().map(|(ip, n)| (ip.as_str(), *n)).collect();
        let exact = pane(3, &pairs);
        assert_eq!(encode_pane(&exact)[8..12], FORMAT_VERSION.to_le_bytes());
        let summarized = Pane {
            counts: exact.counts.summarized(20),
            ..Pane::clone(&exact)
        };
        assert!(
            !summarized.counts.is_empty(),
            "the heavy addresses are listed"
        );
        let bytes = encode_pane(&summarized);
        assert_eq!(bytes[8..12], SUMMARIZED_VERSION.to_le_bytes());
        let decoded = decode_pane(Path::new("p"), &bytes).expect("decodes");
        assert_eq!(decoded.counts, summarized.counts);
        assert_eq!(decoded.requests, exact.requests);
        for (ip, n) in exact.counts.iter() {
            let b = decoded.counts.bounds(ip);
            assert!(b.lower <= u64::from(n) && u64::from(n) <= b.upper, "{ip}");
        }
        for cut in [bytes.len() - 40, bytes.len() - 1100, bytes.len() - 5] {
            assert!(
                decode_pane(Path::new("p"), &bytes[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        // A summary whose listed bounds exceed the pane's requests is refused.
        let mut inflated = bytes[..bytes.len() - 4].to_vec();
        let head = 8 + 4 + 8 + 8 + 8;
        inflated[head..head + 8].copy_from_slice(&1u64.to_le_bytes());
        let crc = crc32fast::hash(&inflated);
        inflated.extend_from_slice(&crc.to_le_bytes());
        assert!(decode_pane(Path::new("p"), &inflated).is_err());
    }

    /// A pane as format 1 wrote it: five fixed skip counts, `not_utf8` second.
    fn format_1(pane_v2: &[u8], old_skipped: [u64; 5]) -> Vec<u8> {
        // magic 8, version 4, seq 8, start 8, end 8, requests 8, then n + n counts.
        let head = 8 + 4 + 8 + 8 + 8 + 8;
        let n = usize::from(pane_v2[head]);
        let tail = &pane_v2[head + 1 + 8 * n..pane_v2.len() - 4];
        let mut out = pane_v2[..head].to_vec();
        out[8..12].copy_from_slice(&1u32.to_le_bytes());
        for count in old_skipped {
            out.extend_from_slice(&count.to_le_bytes());
        }
        out.extend_from_slice(tail);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn a_pane_with_fewer_reasons_than_this_build_knows_reads_the_rest_as_0() {
        let original = pane(4, &[("10.0.0.1", 2)]);
        let bytes = encode_pane(&original);
        let head = 8 + 4 + 8 + 8 + 8 + 8;
        let n = usize::from(bytes[head]);
        // The pane an older build wrote: one reason fewer.
        let mut older = bytes[..head].to_vec();
        older.push((n - 1) as u8);
        older.extend_from_slice(&bytes[head + 1..head + 1 + 8 * (n - 1)]);
        older.extend_from_slice(&bytes[head + 1 + 8 * n..bytes.len() - 4]);
        let crc = crc32fast::hash(&older);
        older.extend_from_slice(&crc.to_le_bytes());
        let decoded = decode_pane(Path::new("p"), &older).expect("decodes");
        let mut expected = original.skipped.to_array();
        expected[n - 1] = 0;
        assert_eq!(decoded.skipped.to_array(), expected);
        assert_eq!(decoded.counts, original.counts);
    }

    #[test]
    fn format_1_panes_and_manifests_are_read_with_not_utf8_as_not_json() {
        let original = pane(3, &[("10.0.0.1", 2)]);
        let old = format_1(&encode_pane(&original), [1, 20, 300, 4000, 50000]);
        let decoded = decode_pane(Path::new("p"), &old).expect("format 1 decodes");
        assert_eq!(decoded.counts, original.counts);
        assert_eq!(decoded.ranges, original.ranges);
        assert_eq!(decoded.skipped.to_array(), [1, 320, 4000, 50000, 0, 0, 0]);

        let totals: SavedTotals = serde_json::from_str(
            r#"{"batches":2,"records_consumed":9,"records_counted":3,"skipped":[1,2,3,0,0]}"#,
        )
        .expect("format 1 totals");
        let restored = IngestTotals::from(&totals);
        assert_eq!(restored.skipped.to_array(), [1, 5, 0, 0, 0, 0, 0]);
        assert_eq!(restored.repaired, 0);
        // Format 2 names the reasons, and keeps the repaired lines.
        let again = SavedTotals::from(&IngestTotals {
            repaired: 7,
            ..restored
        });
        let text = serde_json::to_string(&again).expect("json");
        assert!(
            text.contains(r#""not_json":5"#) && text.contains(r#""repaired":7"#),
            "{text}"
        );
        let back: SavedTotals = serde_json::from_str(&text).expect("format 2 totals");
        assert_eq!(IngestTotals::from(&back).skipped, restored.skipped);
    }
}
