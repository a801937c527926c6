//! Where answers come from: the one type between the routes and the
//! snapshots.
//!
//! [`Answers`] hands out the current view (what the default answers — the
//! window's top-N, one address in the window, offsets, status, alerts and
//! the block list — are read from) and answers [`Question`]s about any kept
//! range (top addresses or networks, one network's members, one address's
//! panes) by merging panes on the [`pool`]'s workers. Today every answer
//! comes from this instance's snapshots; instances answering as one add
//! their peers here, and the routes do not change.

pub mod pool;

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::owners::OwnerKind;
use crate::query::bounded::{self, Trust};
use crate::query::owners::{AsnMembers, OwnerCount, OwnerTrust};
use crate::query::{self, Grouping, MergeCache, NetworkCount, Range};
use crate::snapshot::{Published, Snapshot};
use crate::vocab::{IpKey, Network};
use crate::window::Pane;
pub use pool::{Pool, PoolGone};

/// The names of the query workers' threads: as many workers as names.
pub const WORKERS: [&str; 2] = ["ipstats-adhoc-0", "ipstats-adhoc-1"];

/// A question about a kept range.
#[derive(Clone, Debug)]
pub enum Question {
    /// The most counted addresses, or networks with a grouping.
    Top {
        range: Range,
        grouping: Option<Grouping>,
        n: usize,
    },
    /// One network: its count, distinct members and top members.
    Network {
        range: Range,
        network: Network,
        n: usize,
    },
    /// One address, pane by pane.
    Ip { range: Range, ip: IpKey },
    /// The most counted autonomous systems or countries.
    Owners {
        range: Range,
        kind: OwnerKind,
        n: usize,
    },
    /// One autonomous system: its count, distinct members, top members and
    /// networks.
    Asn { range: Range, asn: u32, n: usize },
}

/// One pane's count of an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaneCount {
    pub start: SystemTime,
    pub end: SystemTime,
    pub count: u32,
}

/// The answer to a [`Question`]: counts, or lower bounds of them when
/// `trust` says a pane of the range is summarized.
#[derive(Clone, Debug)]
pub enum Answer {
    Top {
        range: Range,
        trust: Trust,
        total_requests: u64,
        distinct_ips: usize,
        top: Vec<(IpKey, u64)>,
    },
    Networks {
        range: Range,
        trust: Trust,
        total_requests: u64,
        distinct_ips: usize,
        grouping: Grouping,
        top: Vec<NetworkCount>,
        distinct_networks: usize,
    },
    Network {
        range: Range,
        trust: Trust,
        network: Network,
        count: u64,
        distinct_ips: u64,
        top: Vec<(IpKey, u64)>,
    },
    Ip {
        range: Range,
        trust: Trust,
        ip: IpKey,
        panes: Vec<PaneCount>,
    },
    Owners {
        range: Range,
        kind: OwnerKind,
        total_requests: u64,
        distinct_ips: usize,
        top: Vec<OwnerCount>,
        owners: usize,
        trust: OwnerTrust,
    },
    Asn {
        range: Range,
        asn: u32,
        members: AsnMembers,
    },
}

impl Question {
    /// What identifies the question among those asked of one view.
    pub fn key(&self) -> String {
        match self {
            Question::Top { range, grouping, n } => format!("top {range:?} {grouping:?} {n}"),
            Question::Network { range, network, n } => format!("net {range:?} {network} {n}"),
            Question::Ip { range, ip } => format!("ip {range:?} {ip}"),
            Question::Owners { range, kind, n } => format!("owners {range:?} {kind:?} {n}"),
            Question::Asn { range, asn, n } => format!("asn {range:?} {asn} {n}"),
        }
    }

    /// The answer from `kept` (the kept panes, oldest first), ranges merged
    /// through `merges`.
    pub fn answer(&self, kept: &[Arc<Pane>], merges: &MergeCache) -> Answer {
        match *self {
            Question::Top { range, grouping, n } => {
                let counts = merges.merge(range.panes(kept));
                let total_requests = range.panes(kept).map(|p| p.requests).sum();
                let distinct_ips = bounded::distinct(range.panes(kept), counts.len()) as usize;
                let trust = Trust::of_addresses(range.panes(kept));
                match grouping {
                    None => Answer::Top {
                        range,
                        trust,
                        total_requests,
                        distinct_ips,
                        top: counts.top(n),
                    },
                    Some(grouping) => {
                        let ((top, distinct_networks), trust) = if trust.summarized {
                            let (top, listed, trust) =
                                bounded::top_networks(range.panes(kept), grouping, n);
                            ((top, listed), trust)
                        } else {
                            (counts.top_networks(grouping, n), trust)
                        };
                        Answer::Networks {
                            range,
                            trust,
                            total_requests,
                            distinct_ips,
                            grouping,
                            top,
                            distinct_networks,
                        }
                    }
                }
            }
            Question::Network { range, network, n } => {
                let (mut count, distinct_ips, top) =
                    query::network_members(range.panes(kept), network, n);
                let mut trust = Trust::of_addresses(range.panes(kept));
                if trust.summarized {
                    (count, trust) = bounded::network_count(range.panes(kept), network);
                }
                Answer::Network {
                    range,
                    trust,
                    network,
                    count,
                    distinct_ips,
                    top,
                }
            }
            Question::Ip { range, ip } => Answer::Ip {
                range,
                trust: Trust::of_addresses(range.panes(kept)),
                ip,
                panes: range
                    .panes(kept)
                    .map(|p| PaneCount {
                        start: p.start,
                        end: p.end,
                        count: p.count(ip),
                    })
                    .collect(),
            },
            Question::Owners { range, kind, n } => {
                let (top, owners, trust) = query::owners::top_owners(range.panes(kept), kind, n);
                let counts = merges.merge(range.panes(kept));
                Answer::Owners {
                    range,
                    kind,
                    total_requests: range.panes(kept).map(|p| p.requests).sum(),
                    distinct_ips: bounded::distinct(range.panes(kept), counts.len()) as usize,
                    top,
                    owners,
                    trust,
                }
            }
            Question::Asn { range, asn, n } => Answer::Asn {
                range,
                asn,
                members: query::owners::asn_members(range.panes(kept), asn, n),
            },
        }
    }
}

/// The kept panes of a snapshot, oldest first.
pub fn kept(snapshot: &Snapshot) -> Vec<Arc<Pane>> {
    snapshot
        .retained
        .iter()
        .chain(&snapshot.panes)
        .cloned()
        .collect()
}

/// Answers for the routes: see the module's description.
#[derive(Clone, Debug)]
pub struct Answers {
    published: Published,
    pool: Pool,
    /// The ranges the workers merged lately (see [`MergeCache`]).
    merges: Arc<MergeCache>,
}

impl Answers {
    pub fn new(published: Published, pool: Pool) -> Self {
        Answers {
            published,
            pool,
            merges: Arc::default(),
        }
    }

    /// Answers with `workers` threads of their own that are never stopped:
    /// for tests, where no supervisor runs.
    #[cfg(test)]
    pub(crate) fn with_detached_workers(workers: usize) -> Self {
        let published = Published::new(Snapshot::empty(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(1),
        ));
        Self::with_detached_workers_for(published, workers)
    }

    /// As [`Self::with_detached_workers`], answering from `published`.
    #[cfg(test)]
    pub(crate) fn with_detached_workers_for(published: Published, workers: usize) -> Self {
        let (pool, bodies) = Pool::new(workers, &crate::stop::Stop::new());
        for body in bodies {
            std::thread::spawn(move || body.run());
        }
        Answers::new(published, pool)
    }

    /// The current view, loaded lock-free.
    pub fn now(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.published.load()
    }

    /// Changes whenever a new view is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Answers `question` from `view` on a worker, and passes the answer
    /// through `then` there (rendering it, say). `hold` is dropped as soon as
    /// that work is done, before the result is handed over: a place granted
    /// for the work is free again by the time the asker hears.
    pub async fn ask<T, H, F>(
        &self,
        view: Arc<Snapshot>,
        question: Question,
        hold: H,
        then: F,
    ) -> Result<T, PoolGone>
    where
        T: Send + 'static,
        H: Send + 'static,
        F: FnOnce(Answer, &Snapshot) -> T + Send + 'static,
    {
        let merges = self.merges.clone();
        let (done, answered) = tokio::sync::oneshot::channel();
        self.pool.send(job(
            hold,
            move || {
                let answer = question.answer(&kept(&view), &merges);
                then(answer, &view)
            },
            move |result| {
                let _ = done.send(result);
            },
        ))?;
        answered.await.map_err(|_| PoolGone)
    }
}

/// Every pane of `snapshot` holding counted records, oldest first: the
/// kept panes, then those counted ahead of the window's end.
pub fn counted(snapshot: &Snapshot) -> Vec<Arc<Pane>> {
    let mut panes = kept(snapshot);
    panes.extend(snapshot.ahead.iter().cloned());
    panes
}

impl Answers {
    /// Runs `work` on a worker over every pane of `view` holding counted
    /// records ([`counted`]: those ahead of its window's end too) and the
    /// merge cache: for an instance's part of a cluster answer, whose range
    /// may end past this instance's window.
    pub async fn compute<T, F>(&self, view: Arc<Snapshot>, work: F) -> Result<T, PoolGone>
    where
        T: Send + 'static,
        F: FnOnce(&[Arc<Pane>], &MergeCache) -> T + Send + 'static,
    {
        let merges = self.merges.clone();
        let (done, answered) = tokio::sync::oneshot::channel();
        self.pool.send(job(
            (),
            move || work(&counted(&view), &merges),
            move |result| {
                let _ = done.send(result);
            },
        ))?;
        answered.await.map_err(|_| PoolGone)
    }
}

/// A worker's job: `work` runs while `hold` is held; it is dropped before
/// `deliver` hands the result over, so an asker asking again the moment it
/// hears finds the place free, even when the worker (at nice 10 on a busy
/// machine) is preempted between the two.
fn job<T, H, W, D>(hold: H, work: W, deliver: D) -> pool::Job
where
    H: Send + 'static,
    W: FnOnce() -> T + Send + 'static,
    D: FnOnce(T) + Send + 'static,
{
    Box::new(move || {
        let result = work();
        drop(hold);
        deliver(result);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(Arc<AtomicBool>);

    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn pane(seq: u64, second: u64, ip: &str, n: u32) -> Arc<Pane> {
        let mut counts = crate::window::IpMap::default();
        counts.add(crate::vocab::parse_ip(ip).expect("address"), n);
        let at = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + s);
        Arc::new(Pane {
            owners: None,
            seq,
            start: at(second),
            end: at(second + 1),
            counts: crate::window::PaneCounts::from(&counts),
            requests: u64::from(n),
            skipped: Default::default(),
            ranges: Vec::new(),
        })
    }

    #[test]
    fn a_cluster_part_reads_the_panes_counted_ahead_of_the_window_too() {
        use crate::cluster::part::{Ask, PartRequest};
        let (older, inside, ahead) = (
            pane(1, 0, "10.0.0.1", 1),
            pane(2, 1, "10.0.0.2", 2),
            pane(3, 2, "10.0.0.3", 4),
        );
        let snapshot = Snapshot {
            retained: vec![older.clone()],
            panes: vec![inside.clone()],
            ahead: vec![ahead.clone()],
            ..Snapshot::empty(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(1),
            )
        };
        // Kept panes for this instance's own answers; every counted pane
        // for its part of a cluster answer, in time order.
        assert_eq!(kept(&snapshot).len(), 2);
        let all = counted(&snapshot);
        let seqs: Vec<u64> = all.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        // A range another instance's window ends: the records ahead count.
        let range = crate::query::Range {
            start: older.start,
            end: ahead.end,
        };
        let part = PartRequest::over(range, None, Ask::Totals).answer(&all, &MergeCache::default());
        assert_eq!((part.total_requests, part.distinct_ips), (7, 3));
        let short = crate::query::Range {
            end: inside.end,
            ..range
        };
        let part = PartRequest::over(short, None, Ask::Totals).answer(&all, &MergeCache::default());
        assert_eq!(part.total_requests, 3);
    }

    #[test]
    fn what_is_held_is_dropped_before_the_result_is_delivered() {
        let dropped = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicBool::new(false));
        let (d, s) = (dropped.clone(), seen.clone());
        job(
            Flag(dropped.clone()),
            || 42,
            move |n| {
                assert_eq!(n, 42);
                s.store(d.load(Ordering::SeqCst), Ordering::SeqCst);
            },
        )();
        assert!(seen.load(Ordering::SeqCst), "dropped before delivery");
    }
}
