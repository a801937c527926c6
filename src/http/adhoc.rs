//! Questions asked at query time: `window` and `end` (any run of kept panes),
//! `prefix4` / `prefix6` (networks instead of addresses), and one network's
//! members. Answers are merged from the snapshot's panes on [`MAX_ADHOC`]
//! worker threads of lower scheduling priority (nice 10), so that ingest
//! and the default answers keep the processor when both want it; a
//! question finding every worker busy is answered 503 rather than queued.
//! Answers are cached per snapshot, and a snapshot whose panes did not
//! change keeps its predecessor's cache: the same question costs a lookup.
//! Without these parameters nothing here runs.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::AppState;
use super::problem::Problem;
use super::views::{IpCount, NetworkTopView, PaneCount, WindowView, rfc3339};
use crate::pipeline::query::{self, Grouping, Range};
use crate::pipeline::snapshot::Snapshot;
use crate::pipeline::window::Pane;
use crate::vocab::{IpKey, Network};

/// Ad-hoc merges running at once (the machine's cores do the work).
pub const MAX_ADHOC: usize = 2;

/// The permits for ad-hoc merges.
pub fn permits() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_ADHOC))
}

/// How much less eager the workers are than the rest of the process.
const WORKER_NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The ad-hoc workers, started at the first question. A permit is taken
/// before a job is sent, so the queue never holds more than the workers
/// can start at once.
fn workers() -> &'static SyncSender<Job> {
    static WORKERS: OnceLock<SyncSender<Job>> = OnceLock::new();
    WORKERS.get_or_init(|| {
        let (jobs, queue) = sync_channel::<Job>(MAX_ADHOC);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..MAX_ADHOC {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ipstats-adhoc-{i}"))
                .spawn(move || work(&queue));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start an ad-hoc worker");
            }
        }
        jobs
    })
}

/// The ranges the workers merged lately (see [`query::MergeCache`]).
fn merge_cache() -> &'static query::MergeCache {
    static CACHE: OnceLock<query::MergeCache> = OnceLock::new();
    CACHE.get_or_init(query::MergeCache::default)
}

fn work(queue: &Mutex<Receiver<Job>>) {
    // Only this thread: Linux applies PRIO_PROCESS with a thread id to
    // that thread alone.
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), WORKER_NICENESS) {
        tracing::debug!(error = %e, "ad-hoc worker keeps the normal priority");
    }
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        match job {
            // A failed answer drops its sender (the asker gets a 503); the
            // worker stays.
            Ok(job) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            Err(_) => return,
        }
    }
}

/// The parameters that choose a range and a grouping, as given.
#[derive(Debug, Default)]
pub struct Asked<'a> {
    pub window: Option<&'a str>,
    pub end: Option<&'a str>,
    pub prefix4: Option<&'a str>,
    pub prefix6: Option<&'a str>,
}

impl Asked<'_> {
    /// No parameter beyond `n`: the pre-rendered default answer.
    pub fn is_default(&self) -> bool {
        self.window.is_none()
            && self.end.is_none()
            && self.prefix4.is_none()
            && self.prefix6.is_none()
    }
}

/// The kept panes of a snapshot, oldest first.
fn kept(snapshot: &Snapshot) -> Vec<Arc<Pane>> {
    snapshot
        .retained
        .iter()
        .chain(&snapshot.panes)
        .cloned()
        .collect()
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The range `window` and `end` name, checked against the kept panes.
pub fn range(state: &AppState, snapshot: &Snapshot, asked: &Asked<'_>) -> Result<Range, Problem> {
    let batch = state.info.batch;
    let retention = state.info.retention;
    let length = match asked.window {
        None => snapshot.window_length,
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| {
                !d.is_zero() && *d <= retention && d.as_nanos().is_multiple_of(batch.as_nanos())
            })
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "window must be a whole multiple of the batch ({}) from {} to the retention ({}), got {text:?}",
                    show(batch),
                    show(batch),
                    show(retention)
                ))
            })?,
    };
    // The kept history: the retention back from the newest pane's end.
    // Panes missing in it (before the first record, or a quiet spell) held
    // nothing, so any range inside it is answered.
    let Some(newest) = snapshot.panes.last().map(|p| p.end) else {
        return Err(Problem::unavailable(
            "no pane is closed yet: ask again after the first batch",
        ));
    };
    let horizon = newest
        .checked_sub(retention)
        .unwrap_or(std::time::UNIX_EPOCH);
    let end = match asked.end {
        None => snapshot.window_end,
        Some(text) => {
            let on_grid = |t: &std::time::SystemTime| {
                newest.duration_since(*t).is_ok_and(|back| {
                    back < retention && back.as_nanos().is_multiple_of(batch.as_nanos())
                })
            };
            humantime::parse_rfc3339_weak(text)
                .ok()
                .filter(on_grid)
                .ok_or_else(|| {
                    Problem::bad_request(format!(
                        "end must be an RFC 3339 time at a pane boundary (every {}) from {} to {}, got {text:?}",
                        show(batch),
                        rfc3339(horizon + batch),
                        rfc3339(newest)
                    ))
                })?
        }
    };
    let range = Range::ending(end, length);
    if range.start < horizon {
        return Err(Problem::bad_request(format!(
            "window {} ending at {} reaches back to {}, before the kept history (from {}, --retention {})",
            show(length),
            rfc3339(end),
            rfc3339(range.start),
            rfc3339(horizon),
            show(retention)
        )));
    }
    Ok(range)
}

/// `prefix4` (0–32) and `prefix6` (0–128); `None` when neither is given.
pub fn grouping(asked: &Asked<'_>) -> Result<Option<Grouping>, Problem> {
    let parse = |name: &str, text: Option<&str>, max: u8| -> Result<Option<u8>, Problem> {
        text.map(|t| {
            t.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                Problem::bad_request(format!(
                    "{name} must be an integer from 0 to {max}, got {t:?}"
                ))
            })
        })
        .transpose()
    };
    let prefix4 = parse("prefix4", asked.prefix4, 32)?;
    let prefix6 = parse("prefix6", asked.prefix6, 128)?;
    Ok((prefix4.is_some() || prefix6.is_some()).then(|| Grouping {
        prefix4: prefix4.unwrap_or(32),
        prefix6: prefix6.unwrap_or(128),
    }))
}

#[derive(Serialize)]
struct AddressTopView {
    window: WindowView,
    total_requests: u64,
    distinct_ips: usize,
    top: Vec<IpCount>,
}

#[derive(Serialize)]
struct NetworkView {
    network: String,
    window: WindowView,
    count: u64,
    distinct_ips: u64,
    top: Vec<IpCount>,
}

#[derive(Serialize)]
struct IpRangeView {
    ip: String,
    count: u64,
    window: WindowView,
    panes: Vec<PaneCount>,
}

fn window_view(range: Range, snapshot: &Snapshot) -> WindowView {
    let length = range.end.duration_since(range.start).unwrap_or_default();
    WindowView::new(range.start, range.end, length, snapshot.slide)
}

fn ip_counts(top: Vec<(IpKey, u64)>) -> Vec<IpCount> {
    top.into_iter()
        .map(|(ip, count)| IpCount {
            ip: ip.to_string(),
            count,
        })
        .collect()
}

/// What is asked, once parsed.
pub enum Question {
    Top {
        range: Range,
        grouping: Option<Grouping>,
        n: usize,
    },
    Network {
        range: Range,
        network: Network,
        n: usize,
    },
    Ip {
        range: Range,
        ip: IpKey,
    },
}

impl Question {
    fn key(&self) -> String {
        match self {
            Question::Top { range, grouping, n } => format!("top {range:?} {grouping:?} {n}"),
            Question::Network { range, network, n } => format!("net {range:?} {network} {n}"),
            Question::Ip { range, ip } => format!("ip {range:?} {ip}"),
        }
    }

    fn answer(&self, kept: &[Arc<Pane>], snapshot: &Snapshot) -> Bytes {
        let json = match self {
            Question::Top { range, grouping, n } => {
                let counts = merge_cache().merge(range.panes(kept));
                let total_requests = counts.total();
                match grouping {
                    None => serde_json::to_vec(&AddressTopView {
                        window: window_view(*range, snapshot),
                        total_requests,
                        distinct_ips: counts.len(),
                        top: ip_counts(counts.top(*n)),
                    }),
                    Some(g) => serde_json::to_vec(&NetworkTopView::new(
                        window_view(*range, snapshot),
                        total_requests,
                        counts.len(),
                        *g,
                        counts.top_networks(*g, *n),
                    )),
                }
            }
            Question::Network { range, network, n } => {
                let (count, distinct_ips, top) =
                    query::network_members(range.panes(kept), *network, *n);
                serde_json::to_vec(&NetworkView {
                    network: network.to_string(),
                    window: window_view(*range, snapshot),
                    count,
                    distinct_ips,
                    top: ip_counts(top),
                })
            }
            Question::Ip { range, ip } => {
                let panes: Vec<PaneCount> = range
                    .panes(kept)
                    .map(|p| PaneCount {
                        start: rfc3339(p.start),
                        end: rfc3339(p.end),
                        count: p.count(*ip),
                    })
                    .collect();
                serde_json::to_vec(&IpRangeView {
                    ip: ip.to_string(),
                    count: panes.iter().map(|p| u64::from(p.count)).sum(),
                    window: window_view(*range, snapshot),
                    panes,
                })
            }
        };
        json.unwrap_or_default().into()
    }
}

/// Answers `question` from the current snapshot: from its cache, or merged
/// on a blocking thread if one of the [`MAX_ADHOC`] places is free.
pub async fn answer(
    state: &AppState,
    snapshot: Arc<Snapshot>,
    question: Question,
) -> Result<Response, Problem> {
    let key = question.key();
    let body = match snapshot.rendered_adhoc.get(&key) {
        Some(body) => body,
        None => {
            let permit = state.adhoc.clone().try_acquire_owned().map_err(|_| {
                Problem::unavailable(format!(
                    "{MAX_ADHOC} questions about other windows or networks are being answered, the most at once; \
                     ask again shortly (the default /api/v1/top is always answered)"
                ))
            })?;
            let worker = snapshot.clone();
            let (done, answered) = tokio::sync::oneshot::channel();
            workers()
                .send(Box::new(move || {
                    let _permit = permit;
                    let _ = done.send(question.answer(&kept(&worker), &worker));
                }))
                .map_err(|_| Problem::unavailable("the ad-hoc workers are gone".to_string()))?;
            let body = answered.await.map_err(|_| {
                Problem::unavailable("the answer could not be computed".to_string())
            })?;
            snapshot.rendered_adhoc.put(key, body.clone());
            body
        }
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_jobs_at_a_lower_priority_than_the_process() {
        let process = rustix::process::getpriority_process(None).expect("own priority");
        let (done, got) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let done = done.clone();
            workers()
                .send(Box::new(move || {
                    let me = rustix::thread::gettid();
                    let _ = done.send(rustix::process::getpriority_process(Some(me)));
                }))
                .expect("workers");
        }
        for _ in 0..3 {
            let nice = got
                .recv_timeout(Duration::from_secs(10))
                .expect("a job ran")
                .expect("priority");
            assert!(nice >= WORKER_NICENESS.max(process), "{nice}");
        }
        // A job that panics leaves its worker running.
        workers()
            .send(Box::new(|| panic!("a bug in one answer")))
            .expect("workers");
        for _ in 0..MAX_ADHOC + 1 {
            let done = done.clone();
            workers()
                .send(Box::new(move || {
                    let _ = done.send(Ok(0));
                }))
                .expect("workers");
            assert!(got.recv_timeout(Duration::from_secs(10)).is_ok());
        }
    }
}
