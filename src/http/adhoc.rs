//! Questions asked at query time: `window` and `end` (any run of kept panes),
//! `prefix4` / `prefix6` (networks instead of addresses), and one network's
//! members. The parameters are read here; [`crate::answers`] merges the
//! panes on [`MAX_ADHOC`] workers of lower scheduling priority. A question
//! finding every worker busy waits its turn in a short queue (see [`Gate`]);
//! only a full queue, or a wait past the deadline, is answered 503.
//! Answers are cached per view ([`super::render`]), and a view whose panes
//! did not change keeps its predecessor's answers: the same question costs a
//! lookup. Without these parameters nothing here runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use super::problem::Problem;
use super::views::{
    AsnView, Counted, Exactness, IpCount, NetworkTopView, OwnerItem, OwnerTopView, PaneCount,
    WindowView, rfc3339,
};
use crate::answers::{Answer, Question};
use crate::owners::Owners;
use crate::query::bounded::Trust;
use crate::query::{Grouping, Range};
use crate::snapshot::Snapshot;
use crate::vocab::IpKey;

/// Ad-hoc merges running at once (the machine's cores do the work).
pub const MAX_ADHOC: usize = crate::answers::WORKERS.len();

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
    #[serde(flatten)]
    exactness: Exactness,
}

#[derive(Serialize)]
pub(super) struct NetworkView {
    pub(super) network: String,
    pub(super) window: WindowView,
    #[serde(flatten)]
    pub(super) count: Counted,
    pub(super) distinct_ips: u64,
    pub(super) top: Vec<IpCount>,
    #[serde(flatten)]
    pub(super) exactness: Exactness,
}

#[derive(Serialize)]
struct IpRangeView {
    ip: String,
    #[serde(flatten)]
    count: Counted,
    window: WindowView,
    panes: Vec<PaneCount>,
    #[serde(flatten)]
    exactness: Exactness,
}

pub(super) fn ip_counts(top: Vec<(IpKey, u64)>, exactness: &Exactness) -> Vec<IpCount> {
    top.into_iter()
        .map(|(ip, lower)| IpCount::new(ip, lower, exactness))
        .collect()
}

fn exactness(trust: Trust) -> Exactness {
    Exactness::of(
        trust.summarized,
        trust.error_bound,
        trust.distinct_estimated,
    )
}

fn render(answer: Answer, view: &Snapshot, owners: Option<&Owners>) -> Bytes {
    let window = |range: Range| {
        let length = range.end.duration_since(range.start).unwrap_or_default();
        WindowView::new(range.start, range.end, length, view.slide)
    };
    let json = match answer {
        Answer::Top {
            range,
            trust,
            total_requests,
            distinct_ips,
            top,
        } => serde_json::to_vec(&AddressTopView {
            exactness: exactness(trust),
            window: window(range),
            total_requests,
            distinct_ips,
            top: ip_counts(top, &exactness(trust)),
        }),
        Answer::Networks {
            range,
            trust,
            total_requests,
            distinct_ips,
            grouping,
            top,
            distinct_networks,
        } => serde_json::to_vec(&NetworkTopView::new(
            window(range),
            total_requests,
            distinct_ips,
            grouping,
            (top, distinct_networks),
            exactness(trust),
        )),
        Answer::Network {
            range,
            trust,
            network,
            count,
            distinct_ips,
            top,
        } => serde_json::to_vec(&NetworkView {
            exactness: exactness(trust),
            network: network.to_string(),
            window: window(range),
            count: exactness(trust).counted(count),
            distinct_ips,
            top: ip_counts(top, &exactness(trust)),
        }),
        Answer::Ip {
            range,
            trust,
            ip,
            panes,
        } => serde_json::to_vec(&IpRangeView {
            exactness: exactness(trust),
            ip: ip.to_string(),
            count: exactness(trust).counted(panes.iter().map(|p| u64::from(p.count)).sum()),
            window: window(range),
            panes: panes
                .into_iter()
                .map(|p| PaneCount {
                    start: rfc3339(p.start),
                    end: rfc3339(p.end),
                    count: p.count,
                })
                .collect(),
        }),
        Answer::Owners {
            range,
            kind,
            total_requests,
            distinct_ips,
            top,
            owners: distinct_owners,
            trust,
        } => {
            let exactness = Exactness::of(trust.summarized, trust.error_bound, trust.summarized);
            serde_json::to_vec(&OwnerTopView {
                window: window(range),
                total_requests,
                distinct_ips,
                group: kind.name(),
                distinct_owners,
                top: top
                    .iter()
                    .map(|o| OwnerItem::new(kind, o, &exactness, owners))
                    .collect(),
                exactness,
            })
        }
        Answer::Asn {
            range,
            asn,
            members,
        } => {
            let trust = members.trust;
            let exactness = Exactness::of(trust.summarized, trust.error_bound, trust.summarized);
            serde_json::to_vec(&AsnView::new(
                asn,
                owners,
                window(range),
                members,
                exactness,
            ))
        }
    };
    json.unwrap_or_default().into()
}

/// Answers `question` about `view`: from the view's cache, or merged on a
/// worker (and rendered there) once the [`Gate`] gives it a place.
pub async fn answer(
    state: &AppState,
    view: Arc<Snapshot>,
    question: Question,
) -> Result<Response, Problem> {
    let key = question.key();
    let cache = state.renders.of(&view).adhoc.clone();
    let body = match cache.get(&key) {
        Some(body) => body,
        None => {
            let place = state.adhoc.enter().await?;
            let owners = state.sources.owners.clone();
            let body = state
                .answers
                .ask(view, question, place, move |answer, view| {
                    render(answer, view, owners.as_deref())
                })
                .await
                .map_err(|e| {
                    Problem::unavailable(format!("the answer could not be computed: {e}"))
                })?;
            cache.put(key, body.clone());
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
        let answers = crate::answers::Answers::with_detached_workers(1);
        let view = Arc::new(Snapshot::empty(
            Duration::from_secs(2),
            Duration::from_secs(1),
        ));
        let question = Question::Ip {
            range: Range::ending(view.window_end, Duration::from_secs(2)),
            ip: crate::vocab::parse_ip("10.0.0.1").expect("ip"),
        };
        let place = gate.enter().await.expect("a free place");
        let watched = gate.clone();
        let (free_while_working, body) = answers
            .ask(view, question, place, move |answer, view| {
                (watched.free(), render(answer, view, None))
            })
            .await
            .expect("answered");
        assert_eq!(
            free_while_working, 0,
            "the place is held while the work runs"
        );
        assert_eq!(
            gate.free(),
            1,
            "the place was still held when the answer left"
        );
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            (json["ip"].as_str(), json["count"].as_u64()),
            (Some("10.0.0.1"), Some(0))
        );
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
}
