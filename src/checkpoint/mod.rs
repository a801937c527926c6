//! The checkpoint: panes, per-partition next offsets and the settings that
//! shape state, durable together. It is the source of truth for exactly-once:
//! offsets reach ZooKeeper and the Kafka group only after the checkpoint
//! holding them is on disk (the writer says so through its `on_durable`
//! callback; this module knows nothing of the offset stores).
//!
//! Layout of `--checkpoint-dir`:
//! ```text
//! lock                            held (flock) by the one process using the directory
//! instance-id                     this instance's name in ZooKeeper's owner znodes (see offsets::instance)
//! panes/seg-<seq>.bin             the panes one checkpoint wrote (the first is <seq>),
//!                                 written once (immutable), removed when no kept
//!                                 manifest uses any of them
//! panes/pane-<seq>.bin            one pane a file, as builds before segments wrote
//!                                 (still read)
//! manifest-<seq>.json             live panes and the segments holding them + next
//!                                 offsets + shaping settings
//! ```
//! Every file ends with a CRC-32 of its contents and is written atomically:
//! temp file, fsync, rename, fsync the directory. The newest two manifests
//! are kept; a torn or corrupt newest one falls back to the one before.
//!
//! - [`codec`]: the bytes of a pane file and of a manifest.
//! - [`store`]: loading the newest valid checkpoint, `--reset-checkpoint`,
//!   and whether a checkpoint fits the running settings.
//! - [`writer`]: the thread that writes checkpoints and prunes old ones.

pub mod codec;
pub mod lock;
mod segment;
mod sink;
pub mod store;
pub mod writer;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use codec::{Manifest, SavedTotals, Shape};
pub use store::{Restored, check_shape, load, newest_manifest, reset};
pub use writer::{Status, Writer, run_writer};

use crate::durable::FileError;
use crate::rules::SavedAlerts;
use crate::vocab::IngestTotals;
use crate::window::Pane;

/// What ingest hands to the checkpoint writer: the window's panes (shared,
/// never copied) and the next offset of every partition, which those panes
/// account for exactly.
#[derive(Clone, Debug)]
pub struct CheckpointJob {
    pub panes: Vec<Arc<Pane>>,
    pub offsets: Vec<(Arc<str>, i32, i64)>,
    pub next_pane_seq: u64,
    pub totals: IngestTotals,
    /// Event time: the window's end (epoch ms); panes starting at or after
    /// it wait ahead of the window.
    pub event_end_ms: Option<i64>,
    /// `--rules`: which keys fire, are pending or cooling down.
    pub alerts: Option<SavedAlerts>,
}

const PANES_DIR: &str = "panes";
const MANIFESTS_KEPT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source} (--checkpoint-dir)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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

impl From<FileError> for CheckpointError {
    fn from(e: FileError) -> Self {
        CheckpointError::Io {
            path: e.path,
            source: e.source,
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

fn pane_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(PANES_DIR).join(format!("pane-{seq:016}.bin"))
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(PANES_DIR).join(format!("seg-{id:016}.bin"))
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

#[cfg(test)]
pub(crate) mod test_support {
    //! Panes and jobs for the checkpoint tests.
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::Shape;
    use crate::checkpoint::CheckpointJob;
    use crate::vocab::IngestTotals;
    use crate::vocab::{SkipCounts, SkipReason, parse_ip};
    use crate::window::{OffsetRange, Pane, PaneCounts};

    pub fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipstats-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    pub fn shape() -> Shape {
        Shape {
            topics: vec!["t".into()],
            ip_field: "client_real_ip".into(),
            batch_ms: 1000,
            window_ms: 60_000,
            slide_ms: 5000,
            time: "event:time_local".into(),
        }
    }

    pub fn pane(seq: u64, ips: &[(&str, u32)]) -> Arc<Pane> {
        let counts =
            PaneCounts::from_pairs(ips.iter().map(|(ip, n)| (parse_ip(ip).expect("ip"), *n)))
                .expect("distinct addresses");
        let mut skipped = SkipCounts::default();
        skipped.add(SkipReason::NotJson);
        Arc::new(Pane {
            owners: None,
            seq,
            start: UNIX_EPOCH + Duration::from_secs(seq),
            end: UNIX_EPOCH + Duration::from_secs(seq + 1),
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

    pub fn job(panes: Vec<Arc<Pane>>) -> CheckpointJob {
        let next = panes.last().map_or(0, |p| p.seq + 1);
        CheckpointJob {
            offsets: vec![(Arc::from("t"), 0, 10 * next as i64)],
            panes,
            next_pane_seq: next,
            totals: IngestTotals::default(),
            event_end_ms: None,
            alerts: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CHECKPOINT_FAILURE_REASONS;

    #[test]
    fn every_failure_reason_is_a_series_present_from_the_start() {
        let io = |code| CheckpointError::Io {
            path: PathBuf::from("x"),
            source: std::io::Error::from_raw_os_error(code),
        };
        let corrupt = CheckpointError::Corrupt {
            path: PathBuf::from("x"),
            reason: "bad".into(),
        };
        let reasons: Vec<_> = [io(28), io(13), io(30), io(5), corrupt]
            .iter()
            .map(CheckpointError::reason)
            .collect();
        assert_eq!(reasons, CHECKPOINT_FAILURE_REASONS);
    }
}
