//! The checkpoint writer: writes the panes not yet on disk and a manifest,
//! prunes what no kept manifest needs, and tells its caller when a
//! checkpoint is durable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::CheckpointJob;
use super::codec::{
    MANIFEST_VERSION, Manifest, PartitionOffset, Segment, Shape, encode_manifest, millis,
};
use super::segment::write_segment;
use super::store::Restored;
use super::{
    CheckpointError, MANIFESTS_KEPT, PANES_DIR, io, manifest_path, manifest_seqs, pane_path,
    parse_seq, segment_path,
};
use crate::durable::{sync_dir, write_atomically, write_atomically_with};
use crate::metrics::Metrics;
use crate::vocab::{LastError, Stamp};

/// What one successful write did.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub manifest_seq: u64,
    pub bytes_written: u64,
    pub panes_written: usize,
}

/// Where a pane on disk is: a file of its own (written by an older build),
/// or a segment (the panes one checkpoint wrote).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    File,
    Segment(u64),
}

/// Writes checkpoints into one directory; remembers what is already there.
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    shape: Shape,
    on_disk: BTreeMap<u64, Place>,
    /// Segment files on disk.
    segments: BTreeSet<u64>,
    /// The kept manifests (oldest first) and the panes each references.
    kept: VecDeque<(u64, Vec<u64>)>,
    next_manifest: u64,
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
        let mut on_disk = BTreeMap::new();
        let mut segments = BTreeSet::new();
        for entry in fs::read_dir(&panes_dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            let pane = parse_seq(name, "pane-", ".bin");
            let segment = parse_seq(name, "seg-", ".bin");
            match (pane, segment) {
                (Some(seq), _) if seq < next_pane => {
                    on_disk.insert(seq, Place::File);
                }
                (_, Some(id)) if id < next_pane => {
                    segments.insert(id);
                }
                _ => fs::remove_file(entry.path()).map_err(io(&entry.path()))?,
            }
        }
        // The restored manifest says which panes its segments hold; a
        // segment it does not use goes at the first prune.
        for segment in restored.iter().flat_map(|r| &r.manifest.segments) {
            if segments.contains(&segment.id) {
                for seq in &segment.panes {
                    on_disk.insert(*seq, Place::Segment(segment.id));
                }
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
            segments,
            kept,
            next_manifest: last_manifest + 1,
        })
    }

    /// Writes the panes not yet on disk (one segment file), then the
    /// manifest; then removes what no kept manifest needs. Nothing is
    /// deleted unless the new manifest is durable, so a failure never costs
    /// the last good checkpoint.
    pub fn write(&mut self, job: &CheckpointJob) -> Result<Written, CheckpointError> {
        let mut bytes_written = 0u64;
        let new: Vec<&Arc<crate::window::Pane>> = job
            .panes
            .iter()
            .filter(|p| !self.on_disk.contains_key(&p.seq))
            .collect();
        let panes_written = new.len();
        // One file for all of them: a replay at small panes writes hundreds
        // of new panes a checkpoint, and a file each costs the filesystem
        // far more than their bytes.
        if let Some(id) = new.iter().map(|p| p.seq).min() {
            let panes: Vec<&crate::window::Pane> = new.iter().map(|p| &***p).collect();
            bytes_written += write_atomically_with(&segment_path(&self.dir, id), |file| {
                write_segment(&panes, file)
            })?;
            sync_dir(&self.dir.join(PANES_DIR))?;
            self.segments.insert(id);
            for pane in &new {
                self.on_disk.insert(pane.seq, Place::Segment(id));
            }
        }
        let mut segments: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for pane in &job.panes {
            if let Some(Place::Segment(id)) = self.on_disk.get(&pane.seq) {
                segments.entry(*id).or_default().push(pane.seq);
            }
        }
        let manifest = Manifest {
            segments: segments
                .into_iter()
                .map(|(id, panes)| Segment { id, panes })
                .collect(),
            format: MANIFEST_VERSION,
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
            event_end_ms: job.event_end_ms,
            alerts: job.alerts.clone(),
            totals: (&job.totals).into(),
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
        let unneeded: Vec<(u64, Place)> = self
            .on_disk
            .iter()
            .filter(|(seq, _)| !needed.contains(seq))
            .map(|(seq, place)| (*seq, *place))
            .collect();
        for (seq, place) in unneeded {
            match place {
                Place::Segment(_) => {
                    self.on_disk.remove(&seq);
                }
                Place::File => {
                    if removed(&pane_path(&self.dir, seq)) {
                        self.on_disk.remove(&seq);
                    }
                }
            }
        }
        // A segment goes once none of its panes is needed.
        let used: BTreeSet<u64> = self
            .on_disk
            .values()
            .filter_map(|place| match place {
                Place::Segment(id) => Some(*id),
                Place::File => None,
            })
            .collect();
        let unused: Vec<u64> = self.segments.difference(&used).copied().collect();
        for id in unused {
            if removed(&segment_path(&self.dir, id)) {
                self.segments.remove(&id);
            }
        }
    }
}

/// Removes a file; true when it is gone (also when it already was).
fn removed(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The writer's health, read by `/api/v1/status`, `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct Status {
    last_success: Stamp,
    last_error: LastError,
    failing: AtomicBool,
    restored_from: ArcSwap<Option<String>>,
}

impl Status {
    /// Time since the last checkpoint was made durable.
    pub fn age(&self) -> Option<Duration> {
        self.last_success.age()
    }

    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.get()
    }

    pub fn restored_from(&self) -> Option<String> {
        self.restored_from.load().as_ref().clone()
    }

    pub fn set_restored_from(&self, what: String) {
        self.restored_from.store(Arc::new(Some(what)));
    }

    fn succeeded(&self) {
        self.last_success.touch();
        self.failing.store(false, Ordering::Release);
    }

    fn failed(&self, error: &CheckpointError) {
        self.failing.store(true, Ordering::Release);
        self.last_error.set(error.to_string());
    }
}

/// The checkpoint thread: writes each job (the newest wins when several
/// wait), and only then calls `on_durable` with it (the committers' cue). A
/// failed write (full or unwritable disk) is retried with backoff while
/// ingest goes on; the last good checkpoint stays on disk. Returns once
/// ingest has dropped its end of `jobs` and the last job is handled.
pub fn run_writer(
    mut writer: Writer,
    jobs: std::sync::mpsc::Receiver<CheckpointJob>,
    mut on_durable: impl FnMut(&CheckpointJob),
    status: &Status,
    metrics: &Metrics,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut retry: Option<CheckpointJob> = None;
    let mut backoff = Duration::from_millis(500);
    // The newest checkpoint made durable: said when ingest is done.
    let mut last_written = None;
    loop {
        // `last`: ingest is done and this is the last try of what failed.
        let (next, last) = match retry.take() {
            None => (jobs.recv().ok(), false),
            Some(failed) => match jobs.recv_timeout(backoff) {
                Ok(newer) => (Some(newer), false),
                Err(RecvTimeoutError::Timeout) => (Some(failed), false),
                Err(RecvTimeoutError::Disconnected) => (Some(failed), true),
            },
        };
        let Some(job) = next else {
            match last_written {
                Some(manifest) => info!(manifest, "final checkpoint written"),
                None => info!("no checkpoint was written in this run"),
            }
            return;
        };
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
                last_written = Some(written.manifest_seq);
                on_durable(&job);
                if last {
                    info!(manifest = written.manifest_seq, "final checkpoint written");
                    return;
                }
            }
            Err(error) => {
                metrics
                    .checkpoint_failures
                    .with_label_values(&[error.reason()])
                    .inc();
                if last {
                    warn!(%error, "the final checkpoint could not be written; the previous one stays");
                    return;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointJob;
    use crate::checkpoint::codec::encode_pane;
    use crate::checkpoint::load;
    use crate::checkpoint::test_support::{job, pane, shape, temp};
    use crate::vocab::parse_ip;

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
    fn the_alerts_state_comes_back_with_its_manifest() {
        use crate::rules::{SavedAlerts, SavedRule};
        let dir = temp("alerts-state");
        let mut writer = Writer::new(&dir, shape(), None).expect("writer");
        let panes = vec![pane(0, &[("10.0.0.1", 1)])];
        writer.write(&job(panes.clone())).expect("without rules");
        assert_eq!(load(&dir).expect("load").expect("1").manifest.alerts, None);
        let saved = SavedAlerts {
            rules: vec![SavedRule {
                name: "hot".into(),
                definition: "Rule { .. }".into(),
                firing: vec![("10.0.0.1/32".into(), 1_700_000_000_123)],
                pending: vec![("10.0.0.2/32".into(), 1_700_000_000_000)],
                resolved: vec![("2001:db8::/64".into(), 1_600_000_000_000)],
            }],
            transitions: Vec::new(),
        };
        let with_alerts = CheckpointJob {
            alerts: Some(saved.clone()),
            ..job(panes)
        };
        writer.write(&with_alerts).expect("with rules");
        let restored = load(&dir).expect("load").expect("2");
        assert_eq!(restored.manifest.alerts, Some(saved));
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
                "seg-0000000000000003.bin",
                "seg-0000000000000004.bin",
                "seg-0000000000000005.bin"
            ]
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir.join(PANES_DIR))
            .expect("panes")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_checkpoint_s_new_panes_share_one_file_kept_while_any_is_needed() {
        let dir = temp("segments");
        let mut writer = Writer::new(&dir, shape(), None).expect("writer");
        let p = |s: u64| pane(s, &[("10.0.0.1", 1), ("2001:db8::1", 2)]);
        writer
            .write(&job(vec![p(0), p(1), p(2)]))
            .expect("three new");
        assert_eq!(files(&dir), ["seg-0000000000000000.bin"]);
        writer.write(&job(vec![p(2), p(3)])).expect("one new");
        writer.write(&job(vec![p(3), p(4)])).expect("one new");
        // The kept manifests need 2, 3 and 4: the first segment stays for 2.
        assert_eq!(
            files(&dir),
            [
                "seg-0000000000000000.bin",
                "seg-0000000000000003.bin",
                "seg-0000000000000004.bin"
            ]
        );
        let restored = load(&dir).expect("load").expect("a checkpoint");
        assert_eq!(restored.manifest.panes, [3, 4]);
        assert_eq!(restored.manifest.format, MANIFEST_VERSION);
        writer.write(&job(vec![p(4), p(5)])).expect("one new");
        assert_eq!(
            files(&dir),
            [
                "seg-0000000000000003.bin",
                "seg-0000000000000004.bin",
                "seg-0000000000000005.bin"
            ],
            "the first segment goes with its last needed pane"
        );
        // A writer continuing after a restart knows the segments' panes.
        let restored = load(&dir).expect("load").expect("a checkpoint");
        let counts: Vec<_> = restored.panes.iter().map(|p| p.requests).collect();
        assert_eq!(counts, [3, 3]);
        let mut again = Writer::new(&dir, shape(), Some(&restored)).expect("writer");
        let written = again.write(&job(vec![p(5), p(6)])).expect("one new");
        assert_eq!(written.panes_written, 1);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_checkpoint_of_one_file_a_pane_is_read_and_pruned_as_before() {
        // A manifest to start from, written by this build elsewhere.
        let template = temp("legacy-template");
        Writer::new(&template, shape(), None)
            .expect("writer")
            .write(&job(vec![pane(0, &[("10.0.0.1", 1)])]))
            .expect("template");
        let mut manifest = newest_manifest_of(&template);
        fs::remove_dir_all(&template).expect("cleanup");
        // As a build before segments wrote it: a file a pane, format 2.
        let dir = temp("legacy");
        fs::create_dir_all(dir.join(PANES_DIR)).expect("dir");
        for seq in [0, 1] {
            fs::write(
                pane_path(&dir, seq),
                encode_pane(&pane(seq, &[("10.0.0.1", 1)])),
            )
            .expect("pane");
        }
        manifest.format = 2;
        manifest.segments.clear();
        manifest.panes = vec![0, 1];
        manifest.next_pane_seq = 2;
        fs::write(
            manifest_path(&dir, manifest.seq),
            encode_manifest(&manifest),
        )
        .expect("old manifest");
        let restored = load(&dir).expect("load").expect("the old checkpoint");
        assert_eq!(restored.panes.len(), 2);
        let mut writer = Writer::new(&dir, shape(), Some(&restored)).expect("writer");
        let write = |writer: &mut Writer, seqs: [u64; 2]| {
            let panes = seqs.iter().map(|s| pane(*s, &[("10.0.0.1", 1)])).collect();
            writer.write(&job(panes)).expect("write");
        };
        write(&mut writer, [1, 2]);
        write(&mut writer, [2, 3]);
        assert_eq!(
            files(&dir),
            [
                "pane-0000000000000001.bin",
                "seg-0000000000000002.bin",
                "seg-0000000000000003.bin"
            ]
        );
        assert_eq!(load(&dir).expect("load").expect("new").panes.len(), 2);
        write(&mut writer, [3, 4]);
        assert_eq!(
            files(&dir),
            [
                "seg-0000000000000002.bin",
                "seg-0000000000000003.bin",
                "seg-0000000000000004.bin"
            ],
            "the old pane files go once no kept manifest needs them"
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn newest_manifest_of(dir: &Path) -> Manifest {
        super::super::newest_manifest(dir).expect("a manifest")
    }
}
