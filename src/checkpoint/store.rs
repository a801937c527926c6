//! Reading checkpoints back: the newest manifest whose panes all verify,
//! `--reset-checkpoint`, and whether a checkpoint fits the running settings.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use super::codec::{Manifest, Shape, decode_manifest, decode_pane};
use super::segment::decode_segment;
use super::{
    CheckpointError, PANES_DIR, corrupt, io, manifest_path, manifest_seqs, pane_path, segment_path,
};
use crate::durable::sync_dir;
use crate::window::Pane;

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
    if seqs.is_empty() {
        // Panes but no manifest at all: the first checkpoint was cut short
        // between its panes and its manifest. Offsets are committed only
        // after a manifest is durable, so nothing was ever acknowledged from
        // these panes; the writer removes them and ingest starts as new.
        let unfinished = fs::read_dir(dir.join(PANES_DIR)).map_or(0, Iterator::count);
        if unfinished > 0 {
            warn!(
                panes = unfinished,
                "pane files of an unfinished first checkpoint (no manifest was written); discarding them"
            );
        }
        return Ok(None);
    }
    Err(CheckpointError::NothingValid {
        dir: dir.to_path_buf(),
        reasons: skipped.join("; "),
    })
}

fn load_manifest(dir: &Path, path: &Path) -> Result<(Manifest, Vec<Arc<Pane>>), CheckpointError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let manifest = decode_manifest(path, &bytes)?;
    let mut in_segments: HashMap<u64, Pane> = HashMap::new();
    for segment in &manifest.segments {
        let file = segment_path(dir, segment.id);
        let bytes = fs::read(&file).map_err(|e| corrupt(&file, e.to_string()))?;
        let wanted: std::collections::HashSet<u64> = segment.panes.iter().copied().collect();
        for pane in decode_segment(&file, &bytes)? {
            if wanted.contains(&pane.seq) {
                in_segments.insert(pane.seq, pane);
            }
        }
        if let Some(missing) = segment.panes.iter().find(|s| !in_segments.contains_key(s)) {
            return Err(corrupt(&file, format!("holds no pane {missing}")));
        }
    }
    let mut panes = Vec::with_capacity(manifest.panes.len());
    for seq in &manifest.panes {
        if let Some(pane) = in_segments.remove(seq) {
            panes.push(Arc::new(pane));
            continue;
        }
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
    let fits = old.topics == new.topics
        && old.ip_field == new.ip_field
        && old.batch_ms == new.batch_ms
        && old.time == new.time;
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
    use crate::checkpoint::Writer;
    use crate::checkpoint::test_support::{job, pane, shape, temp};

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

        // the newest pane is damaged (in the segment the second checkpoint
        // wrote): the older manifest is used
        let newest_pane = segment_path(&dir, 1);
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
    fn panes_of_an_unfinished_first_checkpoint_are_discarded_not_refused() {
        // kill -9 between the first panes and the first manifest
        let dir = temp("unfinished");
        fs::create_dir_all(dir.join(PANES_DIR)).expect("panes dir");
        let bytes = crate::checkpoint::codec::encode_pane(&pane(0, &[("10.0.0.1", 3)]));
        fs::write(pane_path(&dir, 0), &bytes).expect("orphan pane");
        assert!(load(&dir).expect("starts as new").is_none());
        let mut writer = Writer::new(&dir, shape(), None).expect("writer");
        assert!(!pane_path(&dir, 0).exists(), "the orphan is removed");
        writer
            .write(&job(vec![pane(0, &[("10.0.0.2", 1)])]))
            .expect("first checkpoint");
        let restored = load(&dir).expect("load").expect("a checkpoint");
        assert_eq!(restored.panes[0].requests, 1);
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
        // Panes by another time are other panes: refused, naming both.
        for time in ["arrival", "kafka", "event:msec"] {
            let mut other_time = shape();
            other_time.time = time.into();
            let err = check_shape(dir, &shape(), &other_time)
                .expect_err("time changed")
                .to_string();
            assert!(
                err.contains("--time-source event --time-field time_local"),
                "{err}"
            );
        }
        // A checkpoint from before the time source existed was by arrival.
        let old: Shape = serde_json::from_str(
            r#"{"topics":["t"],"ip_field":"client_real_ip","batch_ms":1000,"window_ms":60000,"slide_ms":5000}"#,
        )
        .expect("an old shape");
        assert_eq!(old.time, "arrival");
    }
}
