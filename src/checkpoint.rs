//! The checkpoint: panes, per-partition next offsets and the settings that
//! shape state, durable together. It is the source of truth for exactly-once:
//! offsets reach ZooKeeper and the Kafka group only after the checkpoint
//! holding them is on disk.
//!
//! Layout of `--checkpoint-dir`:
//! ```text
//! instance-id                     this instance's name in ZooKeeper's owner znodes
//! panes/pane-<seq>.bin            one closed pane, written once (immutable)
//! manifest-<seq>.json             live panes + next offsets + shaping settings
//! ```
//! Every file ends with a CRC-32 of its contents and is written atomically:
//! temp file, fsync, rename, fsync the directory. The newest two manifests
//! are kept; a torn or corrupt newest one falls back to the one before.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::parse::{IpKey, SkipCounts};
use crate::window::{OffsetRange, Pane, SortedCounts};

/// On-disk format version of panes and manifests.
pub const FORMAT_VERSION: u32 = 1;
const PANE_MAGIC: &[u8; 8] = b"IPSPANE1";
const INSTANCE_ID_FILE: &str = "instance-id";
const PANES_DIR: &str = "panes";
const MANIFESTS_KEPT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source} (--checkpoint-dir)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds {found:?}, not an instance id; delete the file to get a new id")]
    BadInstanceId { path: PathBuf, found: String },
    #[error("{path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the checkpoint in {dir} was written with {old}, but ipstats now runs with {new}; \
         start with --reset-checkpoint to discard that state, or use another --checkpoint-dir"
    )]
    Incompatible {
        dir: PathBuf,
        old: String,
        new: String,
    },
    #[error(
        "{dir} holds checkpoint files but no valid manifest ({reasons}); start with \
         --reset-checkpoint to discard them, or use another --checkpoint-dir"
    )]
    NothingValid { dir: PathBuf, reasons: String },
}

impl CheckpointError {
    /// The label of `ipstats_checkpoint_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            CheckpointError::Io { source, .. } => match source.raw_os_error() {
                Some(28) => "no_space",       // ENOSPC
                Some(13 | 1) => "permission", // EACCES, EPERM
                Some(30) => "read_only",      // EROFS
                _ => "io",
            },
            _ => "invalid",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// This instance's id, created on first use: `<hostname>-<random hex>`.
pub fn instance_id(dir: &Path) -> Result<String, CheckpointError> {
    let path = dir.join(INSTANCE_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let valid = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            return if valid {
                Ok(id.to_string())
            } else {
                Err(CheckpointError::BadInstanceId {
                    found: text.chars().take(64).collect(),
                    path,
                })
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut random = [0u8; 8];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(io(Path::new("/dev/urandom")))?;
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ipstats".to_string());
    let id = format!(
        "{host}-{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    write_atomically(&path, id.as_bytes())?;
    sync_dir(dir)?;
    Ok(id)
}

/// Temp file, fsync, rename: the file is whole or absent. The caller fsyncs
/// the directory (once for a group of files).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

// ---- panes -----------------------------------------------------------------

#[cfg(test)]
fn encode_pane(pane: &Pane) -> Vec<u8> {
    let mut out = Vec::new();
    encode_pane_into(pane, &mut out);
    out
}

/// Encodes into `out` (cleared first), so that a writer reuses one buffer.
fn encode_pane_into(pane: &Pane, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(128 + pane.counts.len() * 20);
    out.extend_from_slice(PANE_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&pane.seq.to_le_bytes());
    out.extend_from_slice(&millis(pane.start).to_le_bytes());
    out.extend_from_slice(&millis(pane.end).to_le_bytes());
    out.extend_from_slice(&pane.requests.to_le_bytes());
    for count in pane.skipped.to_array() {
        out.extend_from_slice(&count.to_le_bytes());
    }
    out.extend_from_slice(&(pane.ranges.len() as u32).to_le_bytes());
    for r in &pane.ranges {
        out.extend_from_slice(&(r.topic.len() as u16).to_le_bytes());
        out.extend_from_slice(r.topic.as_bytes());
        out.extend_from_slice(&r.partition.to_le_bytes());
        out.extend_from_slice(&r.from.to_le_bytes());
        out.extend_from_slice(&r.until.to_le_bytes());
    }
    out.extend_from_slice(&(pane.counts.len() as u32).to_le_bytes());
    for (ip, n) in pane.counts.iter() {
        out.extend_from_slice(&ip.to_bits().to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// A bounds-checked little-endian reader.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
    fn u128(&mut self) -> Option<u128> {
        self.take().map(u128::from_le_bytes)
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

fn verify_crc<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], CheckpointError> {
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
    if version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!("format version {version}, expected {FORMAT_VERSION}"),
        ));
    }
    let seq = r.u64().ok_or_else(bad)?;
    let start = from_millis(r.i64().ok_or_else(bad)?);
    let end = from_millis(r.i64().ok_or_else(bad)?);
    let requests = r.u64().ok_or_else(bad)?;
    let mut skipped = [0u64; 5];
    for count in &mut skipped {
        *count = r.u64().ok_or_else(bad)?;
    }
    let skipped = SkipCounts::from_array(skipped);
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
    if r.0.len() != ncounts * 20 {
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
    let counts = SortedCounts::from_pairs(pairs)
        .ok_or_else(|| corrupt(path, "an address is listed twice"))?;
    if total != requests {
        return Err(corrupt(path, "counts do not add up to the pane's requests"));
    }
    Ok(Pane {
        seq,
        start,
        end,
        counts,
        requests,
        skipped,
        ranges,
    })
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
}

impl Shape {
    fn describe(&self) -> String {
        format!(
            "--topics {} --ip-field {} --batch {} --window {} --slide {}",
            self.topics.join(","),
            self.ip_field,
            humantime::format_duration(Duration::from_millis(self.batch_ms)),
            humantime::format_duration(Duration::from_millis(self.window_ms)),
            humantime::format_duration(Duration::from_millis(self.slide_ms)),
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

/// Counters carried across restarts so that `/api/v1/status` keeps its totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub batches: u64,
    pub records_consumed: u64,
    pub records_counted: u64,
    pub skipped: [u64; 5],
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
    pub counters: Counters,
}

fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(m).unwrap_or_default();
    out.push(b'\n');
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, CheckpointError> {
    let body = verify_crc(path, bytes)?;
    let manifest: Manifest = serde_json::from_slice(body)
        .map_err(|e| corrupt(path, format!("malformed manifest: {e}")))?;
    if manifest.format != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!(
                "format version {}, expected {FORMAT_VERSION}",
                manifest.format
            ),
        ));
    }
    Ok(manifest)
}

fn pane_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(PANES_DIR).join(format!("pane-{seq:016}.bin"))
}

fn manifest_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("manifest-{seq:016}.json"))
}

fn parse_seq(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// Manifest seqs present in `dir`, newest first.
fn manifest_seqs(dir: &Path) -> Result<Vec<u64>, CheckpointError> {
    let mut seqs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(seqs),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        if let Some(seq) = entry
            .file_name()
            .to_str()
            .and_then(|n| parse_seq(n, "manifest-", ".json"))
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    Ok(seqs)
}

/// State restored from the newest valid manifest.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    pub panes: Vec<Arc<Pane>>,
    /// Newer manifests that were damaged and skipped, with the reason.
    pub skipped: Vec<String>,
}

/// Loads the newest manifest whose panes all verify, falling back to older
/// ones; `Ok(None)` for a directory without checkpoint files.
pub fn load(dir: &Path) -> Result<Option<Restored>, CheckpointError> {
    let mut skipped = Vec::new();
    let seqs = manifest_seqs(dir)?;
    for seq in &seqs {
        let path = manifest_path(dir, *seq);
        match load_manifest(dir, &path) {
            Ok((manifest, panes)) => {
                for reason in &skipped {
                    warn!(%reason, "damaged checkpoint skipped; fell back to an older manifest");
                }
                return Ok(Some(Restored {
                    manifest,
                    panes,
                    skipped,
                }));
            }
            Err(e @ (CheckpointError::Corrupt { .. } | CheckpointError::Io { .. })) => {
                warn!(error = %e, "checkpoint manifest unusable");
                skipped.push(e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    let panes_present = fs::read_dir(dir.join(PANES_DIR))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if seqs.is_empty() && !panes_present {
        return Ok(None);
    }
    Err(CheckpointError::NothingValid {
        dir: dir.to_path_buf(),
        reasons: if skipped.is_empty() {
            "panes without a manifest".to_string()
        } else {
            skipped.join("; ")
        },
    })
}

fn load_manifest(dir: &Path, path: &Path) -> Result<(Manifest, Vec<Arc<Pane>>), CheckpointError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let manifest = decode_manifest(path, &bytes)?;
    let mut panes = Vec::with_capacity(manifest.panes.len());
    for seq in &manifest.panes {
        let pane_file = pane_path(dir, *seq);
        let bytes = fs::read(&pane_file).map_err(|e| corrupt(&pane_file, e.to_string()))?;
        let pane = decode_pane(&pane_file, &bytes)?;
        if pane.seq != *seq {
            return Err(corrupt(
                &pane_file,
                format!("holds pane {} instead of {seq}", pane.seq),
            ));
        }
        panes.push(Arc::new(pane));
    }
    Ok((manifest, panes))
}

/// The newest manifest that verifies, without loading its panes (for tools
/// and tests that watch a running instance).
pub fn newest_manifest(dir: &Path) -> Option<Manifest> {
    manifest_seqs(dir).ok()?.into_iter().find_map(|seq| {
        let path = manifest_path(dir, seq);
        decode_manifest(&path, &fs::read(&path).ok()?).ok()
    })
}

/// `--reset-checkpoint`: removes manifests and panes (the instance id stays).
pub fn reset(dir: &Path) -> Result<usize, CheckpointError> {
    let mut removed = 0;
    for seq in manifest_seqs(dir)? {
        let path = manifest_path(dir, seq);
        fs::remove_file(&path).map_err(io(&path))?;
        removed += 1;
    }
    let panes = dir.join(PANES_DIR);
    if panes.exists() {
        fs::remove_dir_all(&panes).map_err(io(&panes))?;
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Checks a restored checkpoint against the running settings. Window and
/// slide may change when the batch did not: the panes still fit.
pub fn check_shape(dir: &Path, old: &Shape, new: &Shape) -> Result<(), CheckpointError> {
    let fits =
        old.topics == new.topics && old.ip_field == new.ip_field && old.batch_ms == new.batch_ms;
    if fits {
        if old != new {
            info!(old = %old.describe(), new = %new.describe(), "re-windowing the restored panes");
        }
        return Ok(());
    }
    Err(CheckpointError::Incompatible {
        dir: dir.to_path_buf(),
        old: old.describe(),
        new: new.describe(),
    })
}

// ---- writer ----------------------------------------------------------------

/// One checkpoint to write: the window's panes (shared, never copied) and
/// the offsets that go with them.
#[derive(Clone, Debug)]
pub struct Job {
    pub panes: Vec<Arc<Pane>>,
    pub offsets: Vec<(Arc<str>, i32, i64)>,
    pub next_pane_seq: u64,
    pub counters: Counters,
}

/// What one successful write did.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub manifest_seq: u64,
    pub bytes_written: u64,
    pub panes_written: usize,
}

/// Writes checkpoints into one directory; remembers what is already there.
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    shape: Shape,
    on_disk: BTreeSet<u64>,
    /// The kept manifests (oldest first) and the panes each references.
    kept: VecDeque<(u64, Vec<u64>)>,
    next_manifest: u64,
    /// Reused for every pane file: no large allocation per write.
    buffer: Vec<u8>,
}

impl Writer {
    /// A writer continuing after `restored` (if any). Whatever a crashed run
    /// left beyond that checkpoint — damaged newer manifests, panes it wrote
    /// but never recorded — is removed first: pane numbers are reused from
    /// the restored manifest on, and a stale pane must never stand in for a
    /// new one.
    pub fn new(
        dir: &Path,
        shape: Shape,
        restored: Option<&Restored>,
    ) -> Result<Writer, CheckpointError> {
        let panes_dir = dir.join(PANES_DIR);
        fs::create_dir_all(&panes_dir).map_err(io(dir))?;
        let (last_manifest, next_pane) =
            restored.map_or((0, 0), |r| (r.manifest.seq, r.manifest.next_pane_seq));
        for seq in manifest_seqs(dir)? {
            if seq > last_manifest {
                let path = manifest_path(dir, seq);
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        let mut on_disk = BTreeSet::new();
        for entry in fs::read_dir(&panes_dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            match parse_seq(name, "pane-", ".bin") {
                Some(seq) if seq < next_pane => {
                    on_disk.insert(seq);
                }
                _ => fs::remove_file(entry.path()).map_err(io(&entry.path()))?,
            }
        }
        sync_dir(&panes_dir)?;
        sync_dir(dir)?;
        let mut kept = VecDeque::new();
        if let Some(r) = restored {
            kept.push_back((r.manifest.seq, r.manifest.panes.clone()));
        }
        Ok(Writer {
            dir: dir.to_path_buf(),
            shape,
            on_disk,
            kept,
            next_manifest: last_manifest + 1,
            buffer: Vec::new(),
        })
    }

    /// Writes the panes not yet on disk, then the manifest; then removes what
    /// no kept manifest needs. Nothing is deleted unless the new manifest is
    /// durable, so a failure never costs the last good checkpoint.
    pub fn write(&mut self, job: &Job) -> Result<Written, CheckpointError> {
        let mut bytes_written = 0u64;
        let mut panes_written = 0;
        let panes_dir = self.dir.join(PANES_DIR);
        for pane in &job.panes {
            if self.on_disk.contains(&pane.seq) {
                continue;
            }
            encode_pane_into(pane, &mut self.buffer);
            write_atomically(&pane_path(&self.dir, pane.seq), &self.buffer)?;
            bytes_written += self.buffer.len() as u64;
            panes_written += 1;
        }
        if panes_written > 0 {
            sync_dir(&panes_dir)?;
        }
        for pane in &job.panes {
            self.on_disk.insert(pane.seq);
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            seq: self.next_manifest,
            written_at_ms: millis(SystemTime::now()),
            shape: self.shape.clone(),
            panes: job.panes.iter().map(|p| p.seq).collect(),
            offsets: job
                .offsets
                .iter()
                .map(|(t, p, o)| PartitionOffset {
                    topic: t.to_string(),
                    partition: *p,
                    next: *o,
                })
                .collect(),
            next_pane_seq: job.next_pane_seq,
            counters: job.counters.clone(),
        };
        let bytes = encode_manifest(&manifest);
        write_atomically(&manifest_path(&self.dir, manifest.seq), &bytes)?;
        sync_dir(&self.dir)?;
        bytes_written += bytes.len() as u64;
        self.next_manifest += 1;
        self.kept.push_back((manifest.seq, manifest.panes));
        self.prune();
        Ok(Written {
            manifest_seq: manifest.seq,
            bytes_written,
            panes_written,
        })
    }

    /// Removes manifests beyond the newest two and panes none of them uses.
    /// Best effort: leftovers are retried at the next checkpoint.
    fn prune(&mut self) {
        while self.kept.len() > MANIFESTS_KEPT {
            self.kept.pop_front();
        }
        let keep_manifests: BTreeSet<u64> = self.kept.iter().map(|(s, _)| *s).collect();
        if let Ok(seqs) = manifest_seqs(&self.dir) {
            for seq in seqs.into_iter().filter(|s| !keep_manifests.contains(s)) {
                let _ = fs::remove_file(manifest_path(&self.dir, seq));
            }
        }
        let needed: BTreeSet<u64> = self
            .kept
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        let unneeded: Vec<u64> = self.on_disk.difference(&needed).copied().collect();
        for seq in unneeded {
            match fs::remove_file(pane_path(&self.dir, seq)) {
                Ok(()) => {
                    self.on_disk.remove(&seq);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.on_disk.remove(&seq);
                }
                Err(_) => {}
            }
        }
    }
}

/// The writer's health, read by `/api/v1/status`, `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct Status {
    last_success_ms: AtomicU64,
    last_error: ArcSwap<Option<String>>,
    failing: AtomicBool,
    restored_from: ArcSwap<Option<String>>,
}

impl Status {
    pub fn age(&self) -> Option<Duration> {
        match self.last_success_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                SystemTime::now()
                    .duration_since(from_millis(ms as i64))
                    .unwrap_or_default(),
            ),
        }
    }

    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.load().as_ref().clone()
    }

    pub fn restored_from(&self) -> Option<String> {
        self.restored_from.load().as_ref().clone()
    }

    pub fn set_restored_from(&self, what: String) {
        self.restored_from.store(Arc::new(Some(what)));
    }

    fn succeeded(&self) {
        self.last_success_ms
            .store(millis(SystemTime::now()) as u64, Ordering::Release);
        self.failing.store(false, Ordering::Release);
    }

    fn failed(&self, error: &CheckpointError) {
        self.failing.store(true, Ordering::Release);
        self.last_error.store(Arc::new(Some(error.to_string())));
    }
}

/// The checkpoint thread: writes each job (the newest wins when several
/// wait), and only then hands its offsets to the committers. A failed write
/// (full or unwritable disk) is retried with backoff while ingest goes on;
/// the last good checkpoint stays on disk.
pub fn run_writer(
    mut writer: Writer,
    jobs: std::sync::mpsc::Receiver<Job>,
    commits: tokio::sync::watch::Sender<Arc<crate::offsets::CommitRequest>>,
    status: Arc<Status>,
    metrics: crate::metrics::Metrics,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut retry: Option<Job> = None;
    let mut backoff = Duration::from_millis(500);
    loop {
        let next = match retry.take() {
            None => jobs.recv().ok(),
            Some(failed) => match jobs.recv_timeout(backoff) {
                Ok(newer) => Some(newer),
                Err(RecvTimeoutError::Timeout) => Some(failed),
                // Ingest is done: one last try of what failed, then stop.
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(error) = writer.write(&failed) {
                        warn!(%error, "the final checkpoint could not be written; the previous one stays");
                    }
                    return;
                }
            },
        };
        let Some(job) = next else { return };
        let job = jobs.try_iter().last().unwrap_or(job);
        let started = std::time::Instant::now();
        match writer.write(&job) {
            Ok(written) => {
                metrics
                    .checkpoint_duration
                    .observe(started.elapsed().as_secs_f64());
                metrics.checkpoint_bytes.set(written.bytes_written as i64);
                metrics.checkpoints.inc();
                if status.failing() {
                    info!(
                        manifest = written.manifest_seq,
                        "checkpoints are written again"
                    );
                }
                status.succeeded();
                backoff = Duration::from_millis(500);
                commits.send_replace(Arc::new(crate::offsets::CommitRequest {
                    offsets: job.offsets.clone(),
                }));
            }
            Err(error) => {
                metrics
                    .checkpoint_failures
                    .with_label_values(&[error.reason()])
                    .inc();
                if !status.failing() {
                    warn!(%error, "checkpoint failed; counting goes on, retrying with backoff");
                }
                status.failed(&error);
                retry = Some(job);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Offsets of a manifest as the start-offset map ingest uses.
pub fn manifest_offsets(manifest: &Manifest) -> HashMap<(Arc<str>, i32), i64> {
    manifest
        .offsets
        .iter()
        .map(|o| ((Arc::from(o.topic.as_str()), o.partition), o.next))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_ip;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipstats-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn shape() -> Shape {
        Shape {
            topics: vec!["t".into()],
            ip_field: "client_real_ip".into(),
            batch_ms: 1000,
            window_ms: 60_000,
            slide_ms: 5000,
        }
    }

    fn pane(seq: u64, ips: &[(&str, u32)]) -> Arc<Pane> {
        let counts =
            SortedCounts::from_pairs(ips.iter().map(|(ip, n)| (parse_ip(ip).expect("ip"), *n)))
                .expect("distinct addresses");
        let mut skipped = SkipCounts::default();
        skipped.add(crate::parse::SkipReason::NotJson);
        Arc::new(Pane {
            seq,
            start: from_millis(1_000 * seq as i64),
            end: from_millis(1_000 * (seq as i64 + 1)),
            requests: ips.iter().map(|(_, n)| u64::from(*n)).sum(),
            counts,
            skipped,
            ranges: vec![OffsetRange {
                topic: "t".into(),
                partition: 0,
                from: 10 * seq as i64,
                until: 10 * seq as i64 + 10,
            }],
        })
    }

    fn job(panes: Vec<Arc<Pane>>) -> Job {
        let next = panes.last().map_or(0, |p| p.seq + 1);
        Job {
            offsets: vec![(Arc::from("t"), 0, 10 * next as i64)],
            panes,
            next_pane_seq: next,
            counters: Counters::default(),
        }
    }

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
    fn write_load_and_fall_back_past_a_damaged_newest_manifest() {
        let dir = temp("fallback");
        assert!(load(&dir).expect("empty dir").is_none());
        let mut writer = Writer::new(&dir, shape(), None).expect("writer");
        writer
            .write(&job(vec![pane(0, &[("10.0.0.1", 1)])]))
            .expect("first");
        writer
            .write(&job(vec![
                pane(0, &[("10.0.0.1", 1)]),
                pane(1, &[("10.0.0.2", 2)]),
            ]))
            .expect("second");
        let restored = load(&dir).expect("load").expect("a checkpoint");
        assert_eq!(restored.manifest.panes, [0, 1]);
        assert_eq!(restored.manifest.offsets[0].next, 20);

        // the newest pane is damaged: the older manifest is used
        let newest_pane = pane_path(&dir, 1);
        let mut bytes = fs::read(&newest_pane).expect("pane");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&newest_pane, bytes).expect("damage");
        let restored = load(&dir).expect("load").expect("fallback");
        assert_eq!(
            (restored.manifest.panes.as_slice(), restored.skipped.len()),
            (&[0][..], 1)
        );

        // nothing valid: refuse, naming the way out
        fs::write(manifest_path(&dir, 1), b"{").expect("damage");
        let err = load(&dir).expect_err("nothing valid").to_string();
        assert!(err.contains("--reset-checkpoint"), "{err}");
        assert_eq!(reset(&dir).expect("reset"), 2);
        assert!(load(&dir).expect("after reset").is_none());
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn leftovers_of_a_crashed_run_never_stand_in_for_new_panes() {
        let dir = temp("leftovers");
        let mut writer = Writer::new(&dir, shape(), None).expect("writer");
        writer
            .write(&job(vec![pane(0, &[("10.0.0.1", 1)])]))
            .expect("first");
        // A crashed run wrote pane 1 and a torn manifest 2, and died.
        fs::write(
            pane_path(&dir, 1),
            encode_pane(&pane(1, &[("10.0.0.9", 9)])),
        )
        .expect("orphan");
        fs::write(manifest_path(&dir, 2), b"{\"torn").expect("torn");
        let restored = load(&dir).expect("load").expect("manifest 1");
        assert_eq!(restored.manifest.seq, 1);
        let mut writer = Writer::new(&dir, shape(), Some(&restored)).expect("writer");
        assert!(!pane_path(&dir, 1).exists() && !manifest_path(&dir, 2).exists());
        // The new pane 1 is written, not mistaken for the orphan.
        writer
            .write(&job(vec![
                pane(0, &[("10.0.0.1", 1)]),
                pane(1, &[("10.0.0.2", 2)]),
            ]))
            .expect("second");
        let restored = load(&dir).expect("load").expect("manifest 2");
        assert_eq!(
            restored.panes[1].count(parse_ip("10.0.0.2").expect("ip")),
            2
        );
        assert_eq!(
            restored.panes[1].count(parse_ip("10.0.0.9").expect("ip")),
            0
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn old_files_are_pruned_and_two_manifests_kept() {
        let dir = temp("prune");
        let mut writer = Writer::new(&dir, shape(), None).expect("writer");
        for seq in 0..6u64 {
            let panes: Vec<_> = (seq.saturating_sub(1)..=seq)
                .map(|s| pane(s, &[("10.0.0.1", 1)]))
                .collect();
            writer.write(&job(panes)).expect("write");
        }
        assert_eq!(manifest_seqs(&dir).expect("list"), [6, 5]);
        let mut panes: Vec<_> = fs::read_dir(dir.join(PANES_DIR))
            .expect("panes")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        panes.sort();
        assert_eq!(
            panes,
            [
                "pane-0000000000000003.bin",
                "pane-0000000000000004.bin",
                "pane-0000000000000005.bin"
            ]
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn shape_changes_are_refused_unless_only_window_or_slide_moved() {
        let dir = Path::new("/ckpt");
        let mut rewindowed = shape();
        rewindowed.window_ms = 120_000;
        rewindowed.slide_ms = 10_000;
        assert!(check_shape(dir, &shape(), &rewindowed).is_ok());
        let mut rebatched = shape();
        rebatched.batch_ms = 2000;
        let err = check_shape(dir, &shape(), &rebatched)
            .expect_err("batch changed")
            .to_string();
        assert!(
            err.contains("--batch 1s")
                && err.contains("--batch 2s")
                && err.contains("--reset-checkpoint"),
            "{err}"
        );
        let mut other_field = shape();
        other_field.ip_field = "remote_addr".into();
        assert!(check_shape(dir, &shape(), &other_field).is_err());
    }
}
