//! Several instances, one answer (`--cluster`).
//!
//! Kafka's consumer-group protocol decides which instance counts which
//! partition; this module keeps what the rest of ipstats needs to know
//! about it:
//!
//! - [`Ownership`]: the partitions this instance holds in its state, which
//!   of them are still being rebuilt, and (with ZooKeeper) the version of
//!   each partition's owner znode that fences its commits. Ingest writes it;
//!   the registry, the committers and the answers read it.
//! - [`registry`]: the ZooKeeper registry (`/ipstats/<group>/instances`,
//!   `/ipstats/<group>/owners`) or the `--peers` list: who the others are.
//! - [`part`]: one instance's part of an answer, for a range all instances
//!   share; [`merge`]: the parts merged, exactly (TPUT for top-N);
//!   [`fanout`]: the answers, asked of every instance in parallel in
//!   [`rounds`] within one deadline;
//!   [`span`]: the range an answer covers, and the views every round of it
//!   reads.
//!
//! The rule that keeps answers honest: a partition's counts may reach an
//! answer from one instance only. An answer is complete when every
//! partition of the topics is held by exactly one instance that answered,
//! and that instance has counted it (it is not rebuilding). An instance that
//! holds a partition it may have lost (its ZooKeeper ownership was taken, or
//! its own loop stalled, as under SIGSTOP) serves nothing until the group
//! has settled it.

pub mod fanout;
pub mod merge;
pub mod owned;
pub mod part;
pub mod registry;
pub mod rounds;
pub mod rules;
pub mod span;
pub mod threshold;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use crate::config::Cluster;
use crate::snapshot::PartitionStatus;

/// A partition, as the contract writes it: `topic/partition`.
pub fn label(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// A partition: `(topic, partition)`.
pub type Key = (Arc<str>, i32);

/// How long ingest's loop or the registry's last confirmation may be old
/// before this instance stops vouching for its partitions: a process
/// frozen past this (SIGSTOP, a long pause) serves nothing on waking
/// until both have run again.
pub const TRUST_FOR: Duration = Duration::from_secs(3);

/// One partition this instance holds.
#[derive(Clone, Debug)]
struct Held {
    /// Offset the rebuild started at, and the log end it must reach.
    start: i64,
    target: i64,
    /// Next offset to count.
    position: i64,
    /// Still reading the history it started with.
    rebuilding: bool,
    /// Since when it is held (for the rebuild time).
    since: Instant,
    /// ZooKeeper: the owner znode's version this instance wrote (fences
    /// commits); `None` until the registry has taken ownership.
    fence: Option<i32>,
    /// ZooKeeper: another instance has taken the owner znode since.
    lost: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped at every change of the held set (a rebalance).
    generation: u64,
    held: BTreeMap<(Arc<str>, i32), Held>,
    /// The last turn of ingest's loop.
    ingest_alive: Option<Instant>,
    /// With ZooKeeper: the last time the registry confirmed every held
    /// partition's owner znode.
    confirmed: Option<Instant>,
    uses_zookeeper: bool,
    /// Partitions given up lately, with the owner znode version this
    /// instance wrote: the checkpoint taken as they left still commits
    /// them to ZooKeeper, fenced, for [`LEAVING_FOR`].
    leaving: BTreeMap<(Arc<str>, i32), (i32, i64, Instant)>,
}

/// How long a partition given up may still be committed (fenced) to
/// ZooKeeper from the checkpoint taken as it left.
const LEAVING_FOR: Duration = Duration::from_secs(30);

/// This instance's share of the cluster: see the module's description.
#[derive(Debug, Default)]
pub struct Ownership {
    state: Mutex<State>,
}

/// One held partition as answers and status show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HeldView {
    pub partition: String,
    pub rebuilding: bool,
    /// Share of the rebuild done, 0 to 1 (1 once counted up to the end).
    pub progress: f64,
    pub position: i64,
    pub target: i64,
}

/// A partition handed to this instance, with where its rebuild starts and
/// the log end it must reach to be counted up to date.
#[derive(Clone, Debug)]
pub struct Taken {
    pub topic: Arc<str>,
    pub partition: i32,
    pub start: i64,
    pub target: i64,
}

impl Ownership {
    pub fn new(uses_zookeeper: bool) -> Self {
        Ownership {
            state: Mutex::new(State {
                uses_zookeeper,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new generation: exactly `taken` is held from now on, each from
    /// its start (a rebuild when the start is behind the target).
    pub fn hold(&self, taken: &[Taken]) {
        let mut s = self.lock();
        let now = Instant::now();
        let old = std::mem::take(&mut s.held);
        s.leaving
            .retain(|_, (_, _, at)| now.duration_since(*at) <= LEAVING_FOR);
        for (key, h) in &old {
            if let (Some(fence), false) = (h.fence, h.lost)
                && !taken
                    .iter()
                    .any(|t| t.topic == key.0 && t.partition == key.1)
            {
                s.leaving.insert(key.clone(), (fence, h.target, now));
            }
        }
        s.generation += 1;
        for t in taken {
            let key = (t.topic.clone(), t.partition);
            let fence = old.get(&key).filter(|h| !h.lost).and_then(|h| h.fence);
            s.held.insert(
                key,
                Held {
                    start: t.start,
                    target: t.target,
                    position: t.start,
                    rebuilding: t.start < t.target,
                    since: now,
                    fence,
                    lost: false,
                },
            );
        }
    }

    /// Ingest's loop turned; `positions` are the next offsets it counts.
    /// Returns the partitions whose rebuild just ended, with how long each took.
    pub fn advance(
        &self,
        positions: impl Iterator<Item = (Arc<str>, i32, i64)>,
    ) -> Vec<(String, Duration)> {
        let mut s = self.lock();
        let now = Instant::now();
        s.ingest_alive = Some(now);
        let mut rebuilt = Vec::new();
        for (topic, partition, position) in positions {
            if let Some(h) = s.held.get_mut(&(topic.clone(), partition)) {
                h.position = position;
                if h.rebuilding && position >= h.target {
                    h.rebuilding = false;
                    rebuilt.push((label(&topic, partition), now - h.since));
                }
            }
        }
        rebuilt
    }

    /// Ingest's loop is alive (called when it turns without closing a batch).
    pub fn beat(&self) {
        self.lock().ingest_alive = Some(Instant::now());
    }

    /// Every held partition not lost: generation, `(topic, partition)`,
    /// fence (`None`: not taken in ZooKeeper yet). A lost partition is never
    /// taken again in this generation: only the group's next assignment
    /// hands it back.
    pub fn held(&self) -> (u64, Vec<(Key, Option<i32>)>) {
        let s = self.lock();
        let held = s
            .held
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(k, h)| (k.clone(), h.fence))
            .collect();
        (s.generation, held)
    }

    /// Every held partition, lost or not, as `topic/partition`.
    pub fn held_labels(&self) -> Vec<String> {
        self.lock().held.keys().map(|(t, p)| label(t, *p)).collect()
    }

    /// The registry took (or confirmed) the owner znode of a partition at `version`.
    pub fn fenced(&self, generation: u64, key: &(Arc<str>, i32), version: i32) {
        let mut s = self.lock();
        if s.generation != generation {
            return;
        }
        if let Some(h) = s.held.get_mut(key) {
            h.fence = Some(version);
        }
    }

    /// The registry found another instance's id on a held partition's owner znode.
    pub fn lost(&self, generation: u64, key: &(Arc<str>, i32)) {
        let mut s = self.lock();
        if s.generation != generation {
            return;
        }
        if let Some(h) = s.held.get_mut(key) {
            h.lost = true;
            h.fence = None;
        }
    }

    /// A fenced commit found another version on a partition's owner
    /// znode: another instance has taken it.
    pub fn fence_failed(&self, topic: &str, partition: i32) {
        let mut s = self.lock();
        s.leaving
            .retain(|(t, p), _| !(&**t == topic && *p == partition));
        if let Some(h) = s
            .held
            .iter_mut()
            .find(|((t, p), _)| &**t == topic && *p == partition)
            .map(|(_, h)| h)
        {
            h.lost = true;
            h.fence = None;
        }
    }

    /// The registry checked every owner znode just now.
    pub fn confirmed(&self, generation: u64) {
        let mut s = self.lock();
        if s.generation == generation {
            s.confirmed = Some(Instant::now());
        }
    }

    /// The ZooKeeper version a commit of `offset` for this partition must
    /// find on its owner znode; `None`: this instance must not commit it,
    /// because another instance has it or because `offset` is behind the
    /// log end the partition had when this instance took it (a rebuild's
    /// progress: committing it would move the stored offset back).
    pub fn fence_of(&self, topic: &str, partition: i32, offset: i64) -> Option<i32> {
        let s = self.lock();
        if let Some((_, h)) = s
            .held
            .iter()
            .find(|((t, p), _)| &**t == topic && *p == partition)
        {
            return (!h.lost && offset >= h.target).then_some(h.fence).flatten();
        }
        s.leaving
            .iter()
            .find(|((t, p), _)| &**t == topic && *p == partition)
            .filter(|(_, (_, target, at))| at.elapsed() <= LEAVING_FOR && offset >= *target)
            .map(|(_, (fence, _, _))| *fence)
    }

    /// Whether a commit of `offset` for this partition to the Kafka group
    /// is this instance's to make: it holds the partition and `offset` is
    /// not behind the log end it had when taken (a partition given up was
    /// committed as it left: a later commit could overwrite its new
    /// owner's).
    pub fn may_commit(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let s = self.lock();
        s.held
            .iter()
            .any(|((t, p), h)| &**t == topic && *p == partition && !h.lost && offset >= h.target)
    }

    /// What this instance's state holds and which of it it vouches for in
    /// `view` (the partitions of the published view whose answers are
    /// given, with the offsets counted in it): each held partition the
    /// view has counted up to its rebuild's target. It vouches for none
    /// when the view also holds a partition it gave up, when one it holds
    /// may be lost, or when it may have been frozen: its counts could then
    /// hold another instance's partition.
    pub fn coverage(&self, view: &[PartitionStatus]) -> Coverage {
        let s = self.lock();
        let now = Instant::now();
        let fresh = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) <= TRUST_FOR);
        let find = |topic: &str, partition: i32| {
            s.held
                .iter()
                .find(|((t, p), _)| &**t == topic && *p == partition)
                .map(|(_, h)| h)
        };
        let mut doubt = None;
        if !fresh(s.ingest_alive) {
            doubt = Some("its ingest loop has not turned lately");
        } else if s.uses_zookeeper && !s.held.is_empty() && !fresh(s.confirmed) {
            doubt = Some("its ZooKeeper ownership is not confirmed lately");
        } else if s.held.values().any(|h| h.lost) {
            doubt = Some("another instance took a partition it holds");
        } else if view.iter().any(|v| find(&v.topic, v.partition).is_none()) {
            doubt = Some("its published view still counts a partition it gave up");
        }
        let mut held: Vec<HeldView> = s
            .held
            .iter()
            .map(|((t, p), h)| HeldView {
                partition: label(t, *p),
                rebuilding: h.rebuilding,
                progress: progress(h),
                position: h.position,
                target: h.target,
            })
            .collect();
        for v in view {
            if find(&v.topic, v.partition).is_none() {
                held.push(HeldView {
                    partition: label(&v.topic, v.partition),
                    rebuilding: false,
                    progress: 1.0,
                    position: v.until_offset,
                    target: v.until_offset,
                });
            }
        }
        let served = if doubt.is_some() {
            Vec::new()
        } else {
            view.iter()
                .filter(|v| find(&v.topic, v.partition).is_some_and(|h| v.until_offset >= h.target))
                .map(|v| label(&v.topic, v.partition))
                .collect()
        };
        Coverage {
            held,
            served,
            doubt: doubt.map(str::to_string),
        }
    }

    /// Changes of the held set so far: one a generation.
    pub fn rebalances(&self) -> u64 {
        self.lock().generation
    }
}

fn progress(h: &Held) -> f64 {
    if !h.rebuilding || h.target <= h.start {
        return 1.0;
    }
    ((h.position - h.start) as f64 / (h.target - h.start) as f64).clamp(0.0, 1.0)
}

/// What one instance's counts cover.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Coverage {
    /// Every partition in its state, with its rebuild's progress.
    pub held: Vec<HeldView>,
    /// The partitions it vouches for: counted up to date.
    pub served: Vec<String>,
    /// Why it vouches for none, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doubt: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(p: i32, start: i64, target: i64) -> Taken {
        Taken {
            topic: "t".into(),
            partition: p,
            start,
            target,
        }
    }

    fn view(p: i32, until: i64) -> PartitionStatus {
        use crate::vocab::{Started, StartedFrom};
        PartitionStatus {
            topic: "t".into(),
            partition: p,
            from_offset: 0,
            until_offset: until,
            log_start: None,
            log_end: None,
            lag_seconds: None,
            last_reset: None,
            started: Started {
                offset: 0,
                from: StartedFrom::Reset,
                note: None,
            },
            newest_event_ms: None,
            records_late: 0,
        }
    }

    #[test]
    fn a_rebuilding_partition_is_held_but_not_served_until_it_reaches_its_target() {
        let o = Ownership::new(false);
        o.hold(&[taken(0, 0, 10), taken(1, 5, 5)]);
        o.beat();
        // A rebuild's progress is never committed: it is behind what was.
        assert!(!o.may_commit("t", 0, 9));
        assert!(o.may_commit("t", 0, 10));
        let c = o.coverage(&[view(0, 4), view(1, 5)]);
        assert_eq!(c.held.len(), 2);
        assert_eq!(c.served, vec!["t/1".to_string()]);
        let done = o.advance([("t".into(), 0, 10)].into_iter());
        assert_eq!(done.len(), 1);
        // Served once the published view has counted it, not before.
        assert_eq!(
            o.coverage(&[view(0, 4), view(1, 5)]).served,
            vec!["t/1".to_string()]
        );
        let both = o.coverage(&[view(0, 10), view(1, 5)]).served;
        assert_eq!(both, vec!["t/0".to_string(), "t/1".to_string()]);
        // A view still counting a partition given up vouches for nothing.
        let c = o.coverage(&[view(0, 10), view(1, 5), view(2, 1)]);
        assert!(c.served.is_empty());
        assert_eq!(c.held.len(), 3);
    }

    #[test]
    fn a_lost_partition_or_a_stalled_loop_serves_nothing_and_fences_commits() {
        let o = Ownership::new(true);
        o.hold(&[taken(0, 0, 0), taken(1, 0, 0)]);
        let (generation, _) = o.held();
        o.beat();
        let v = [view(0, 0), view(1, 0)];
        assert!(o.coverage(&v).served.is_empty(), "not confirmed yet");
        // Not fenced yet, though this instance's to commit: a commit must
        // wait for the fence, not skip the partition for good.
        assert_eq!(o.fence_of("t", 0, 0), None);
        assert!(o.may_commit("t", 0, 0));
        o.fenced(generation, &("t".into(), 0), 4);
        assert_eq!(o.fence_of("t", 0, 0), Some(4));
        o.fenced(generation, &("t".into(), 1), 2);
        o.confirmed(generation);
        assert_eq!(o.coverage(&v).served.len(), 2);
        assert_eq!(o.fence_of("t", 0, 0), Some(4));
        o.lost(generation, &("t".into(), 1));
        // Lost: never taken again until the group hands it back.
        assert_eq!(o.held().1.len(), 1);
        let c = o.coverage(&v);
        assert!(c.served.is_empty());
        assert!(c.doubt.expect("a value").contains("took"));
        assert_eq!(o.fence_of("t", 1, 0), None);
        assert!(!o.may_commit("t", 1, 0));
        assert!(o.may_commit("t", 0, 0));
        // A stale generation's report changes nothing.
        o.hold(&[taken(0, 0, 0)]);
        o.lost(generation, &("t".into(), 0));
        assert_eq!(o.fence_of("t", 0, 0), Some(4));
    }
}
