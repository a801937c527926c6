//! Questions asked at query time: `window` and `end` (any run of kept panes),
//! `prefix4` / `prefix6` (networks instead of addresses), and one network's
//! members. Answers are merged from the snapshot's panes on [`MAX_ADHOC`]
//! worker threads of lower scheduling priority (nice 10), so that ingest
//! and the default answers keep the processor when both want it. A question
//! finding every worker busy waits its turn in a short queue (see [`Gate`]);
//! only a full queue, or a wait past the deadline, is answered 503.
//! Answers are cached per snapshot, and a snapshot whose panes did not
//! change keeps its predecessor's cache: the same question costs a lookup.
//! Without these parameters nothing here runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use super::problem::Problem;
use super::views::{IpCount, NetworkTopView, PaneCount, WindowView, rfc3339};
use crate::query::{self, Grouping, Range};
use crate::snapshot::Snapshot;
use crate::vocab::{IpKey, Network};
use crate::window::Pane;

/// Ad-hoc merges running at once (the machine's cores do the work).
pub const MAX_ADHOC: usize = 2;

/// Questions that may wait for a place while every place is taken: a
/// dashboard or two asking for a window and its networks at once.
pub const MAX_WAITING: usize = 16;

/// How long a question waits for a place before it is answered 503.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// The seconds a client is told to wait after a 503 from the gate.
const RETRY_AFTER_SECONDS: u32 = 1;

/// Places for ad-hoc merges: [`MAX_ADHOC`] run at once, up to
/// [`MAX_WAITING`] more wait their turn (first come, first served) for at
/// most [`MAX_WAIT`]. Past either bound the question is answered 503 with
/// `Retry-After`, so a burst can neither run more merges than the cores
/// can do nor pile up questions without end.
pub struct Gate {
    places: Arc<Semaphore>,
    running: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
}

/// A question's place: while it is held, a merge may run.
pub type Place = OwnedSemaphorePermit;

impl Default for Gate {
    fn default() -> Self {
        Gate::new(MAX_ADHOC, MAX_WAITING, MAX_WAIT)
    }
}

impl Gate {
    pub fn new(places: usize, max_waiting: usize, max_wait: Duration) -> Self {
        Gate {
            places: Arc::new(Semaphore::new(places)),
            running: places,
            waiting: AtomicUsize::new(0),
            max_waiting,
            max_wait,
        }
    }

    /// Places free now.
    pub fn free(&self) -> usize {
        self.places.available_permits()
    }

    /// A place: at once when one is free, else after waiting in the queue.
    pub async fn enter(&self) -> Result<Place, Problem> {
        if let Ok(place) = self.places.clone().try_acquire_owned() {
            return Ok(place);
        }
        let waiting = Waiting::join(&self.waiting, self.max_waiting).ok_or_else(|| {
            busy(format!(
                "{} questions about other windows or networks are being answered and {} more are waiting, the most at once",
                self.running, self.max_waiting
            ))
        })?;
        let place = tokio::time::timeout(self.max_wait, self.places.clone().acquire_owned()).await;
        drop(waiting);
        match place {
            Ok(Ok(place)) => Ok(place),
            Ok(Err(_)) => Err(Problem::unavailable("the ad-hoc workers are gone")),
            Err(_) => Err(busy(format!(
                "no place for a question about another window or network came free within {}",
                show(self.max_wait)
            ))),
        }
    }
}

/// One question in the queue; leaves it when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn join(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn busy(why: String) -> Problem {
    Problem::unavailable(format!(
        "{why}; ask again shortly (the default /api/v1/top is always answered)"
    ))
    .retry_after(RETRY_AFTER_SECONDS)
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
///
/// A parameter that is not what it claims to be (not a duration, not an
/// RFC 3339 time) is malformed: 400. A well-formed one naming a range that
/// is not kept (longer than `--retention`, not whole panes, not ending at a
/// pane boundary, outside the kept history) is not found: 404, naming it.
pub fn range(state: &AppState, snapshot: &Snapshot, asked: &Asked<'_>) -> Result<Range, Problem> {
    let batch = state.info.batch;
    let retention = state.info.retention;
    let length = match asked.window {
        None => snapshot.window_length,
        Some(text) => window_length(text, batch, retention)?,
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
            let ms = crate::input::time::rfc3339_ms(text.as_bytes()).ok_or_else(|| {
                Problem::bad_request(format!(
                    "end must be an RFC 3339 time (2026-11-24T06:35:10Z), got {text:?}"
                ))
            })?;
            let kept = |back: Duration| {
                back < retention && back.as_nanos().is_multiple_of(batch.as_nanos())
            };
            u64::try_from(ms)
                .ok()
                .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .filter(|t| newest.duration_since(*t).is_ok_and(kept))
                .ok_or_else(|| {
                    Problem::not_found(format!(
                        "end {text:?} is not a kept pane boundary: ranges end every {} from {} to {}",
                        show(batch),
                        rfc3339(horizon + batch),
                        rfc3339(newest)
                    ))
                })?
        }
    };
    let range = Range::ending(end, length);
    if range.start < horizon {
        return Err(Problem::not_found(format!(
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

/// `window`: a duration (400 when it is none) of whole panes within the
/// retention (404 when no kept range is that long).
fn window_length(text: &str, batch: Duration, retention: Duration) -> Result<Duration, Problem> {
    let length = humantime::parse_duration(text).map_err(|e| {
        Problem::bad_request(format!(
            "window must be a duration such as 10s, 5m or 1h, got {text:?} ({e})"
        ))
    })?;
    if length > retention {
        return Err(Problem::not_found(format!(
            "window {text:?} is longer than the kept history (--retention {})",
            show(retention)
        )));
    }
    if length.is_zero() || !length.as_nanos().is_multiple_of(batch.as_nanos()) {
        return Err(Problem::not_found(format!(
            "window {text:?} is not a kept range: ranges are whole multiples of the batch ({}) from {} to the retention ({})",
            show(batch),
            show(batch),
            show(retention)
        )));
    }
    Ok(length)
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

/// A worker's job: `work` runs while `place` is held; the place is free
/// again before `deliver` hands the answer over, so a client asking again
/// the moment it hears finds it free, even when the worker (at nice 10 on
/// a busy machine) is preempted between the two.
fn job<W, D>(place: Place, work: W, deliver: D) -> Job
where
    W: FnOnce() -> Bytes + Send + 'static,
    D: FnOnce(Bytes) + Send + 'static,
{
    Box::new(move || {
        let body = work();
        drop(place);
        deliver(body);
    })
}

/// Answers `question` from the current snapshot: from its cache, or merged
/// on a worker once the [`Gate`] gives it a place.
pub async fn answer(
    state: &AppState,
    snapshot: Arc<Snapshot>,
    question: Question,
) -> Result<Response, Problem> {
    let key = question.key();
    let body = match snapshot.rendered_adhoc.get(&key) {
        Some(body) => body,
        None => {
            let place = state.adhoc.enter().await?;
            let worker = snapshot.clone();
            let (done, answered) = tokio::sync::oneshot::channel();
            workers()
                .send(job(
                    place,
                    move || question.answer(&kept(&worker), &worker),
                    move |body| {
                        let _ = done.send(body);
                    },
                ))
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

    #[tokio::test]
    async fn a_place_is_free_before_its_answer_is_delivered() {
        let gate = Arc::new(Gate::new(1, 0, Duration::ZERO));
        let place = gate.enter().await.expect("a free place");
        assert_eq!(gate.free(), 0);
        let (seen, free_at_delivery) = std::sync::mpsc::channel();
        let watched = gate.clone();
        job(
            place,
            || Bytes::from_static(b"answer"),
            move |body| {
                let _ = seen.send((watched.free(), body));
            },
        )();
        let (free, body) = free_at_delivery.recv().expect("delivered");
        assert_eq!(free, 1, "the place was still held when the answer left");
        assert_eq!(body, Bytes::from_static(b"answer"));
    }

    #[tokio::test]
    async fn questions_wait_their_turn_in_a_bounded_queue() {
        let gate = Arc::new(Gate::new(2, 3, Duration::from_secs(60)));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let mut askers = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
            let mut released = released.clone();
            askers.spawn(async move {
                let _place = gate.enter().await?;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Problem>(())
            });
        }
        // Two run, three wait: the queue is full.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while gate.waiting.load(Ordering::SeqCst) < 3 || running.load(Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "askers never queued");
            tokio::task::yield_now().await;
        }
        // A sixth finds the queue full: 503 at once, with Retry-After.
        let refused = gate.enter().await.expect_err("the queue is full");
        let response = refused.into_response();
        assert_eq!(
            response.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(RETRY_AFTER_SECONDS))
        );
        // Released, every waiter gets its turn, never more than two at once.
        release.send_replace(true);
        while let Some(asked) = askers.join_next().await {
            asked.expect("asker").expect("a place in turn");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(gate.free(), 2);
        assert_eq!(gate.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn windows_are_durations_of_whole_panes_within_the_retention() {
        let (batch, retention) = (Duration::from_millis(200), Duration::from_secs(7200));
        let length =
            |text| window_length(text, batch, retention).map_err(|p| p.into_response().status());
        assert_eq!(length("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(length("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(length("400ms"), Ok(Duration::from_millis(400)));
        // The spec's pattern admits these: never 400.
        for kept_nowhere in ["0s", "300ms", "999999999d", "3h", "1ns"] {
            assert_eq!(
                length(kept_nowhere),
                Err(axum::http::StatusCode::NOT_FOUND),
                "{kept_nowhere}"
            );
        }
        for malformed in ["", "s", "10", "ten seconds", "-1s"] {
            assert_eq!(
                length(malformed),
                Err(axum::http::StatusCode::BAD_REQUEST),
                "{malformed}"
            );
        }
    }

    #[tokio::test]
    async fn a_wait_past_the_deadline_is_answered_503() {
        let gate = Gate::new(1, 4, Duration::from_millis(20));
        let _held = gate.enter().await.expect("a free place");
        let refused = gate.enter().await.expect_err("no place came free");
        assert_eq!(
            refused.into_response().status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            gate.waiting.load(Ordering::SeqCst),
            0,
            "the waiter left the queue"
        );
    }

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
