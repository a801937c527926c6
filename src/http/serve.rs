//! Accepting connections so that no number of clients can take the service
//! down: HTTP/1.1 with a header-read timeout (slowloris) and an idle
//! timeout (keep-alive connections that send nothing), and a cap on open
//! connections well below the file-descriptor limit, so that checkpoints and
//! Kafka always have descriptors left. At the cap, the connection idle the
//! longest is closed to make room: a flood of idle or slow clients cannot
//! lock out `/healthz` or a dashboard.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::log_limit::{self, LogLimit, repeats_note};

/// Descriptors kept for everything but HTTP clients: checkpoint files,
/// Kafka and ZooKeeper sockets, librdkafka's internal pipes.
pub const FD_RESERVE: u64 = 256;

#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max: usize,
    /// A request's header must arrive within this (slowloris).
    pub header_timeout: Duration,
    /// A connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// `max` connections, lowered to what the file-descriptor limit leaves
    /// after [`FD_RESERVE`].
    pub fn within(self, fd_limit: u64) -> Self {
        let room = fd_limit.saturating_sub(FD_RESERVE).max(16);
        ConnectionLimits {
            max: self.max.min(usize::try_from(room).unwrap_or(usize::MAX)),
            ..self
        }
    }
}

/// Raises the soft open-files limit to the hard one; returns (soft, hard).
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
        info!(
            from = soft,
            to = hard,
            "open-files limit raised to the hard limit"
        );
    }
    rlimit::Resource::NOFILE.get()
}

/// When a connection last did something, and whether a request is in progress.
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since the registry's epoch.
    last: AtomicU64,
}

#[derive(Debug)]
struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, (Arc<Activity>, CancellationToken)>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<Activity>, CancellationToken)>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn add(&self) -> (u64, Arc<Activity>, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(self.now_ms()),
        });
        let close = CancellationToken::new();
        self.lock().insert(id, (activity.clone(), close.clone()));
        (id, activity, close)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connection idle the longest; false when every one is busy.
    fn evict_idlest(&self) -> bool {
        let mut open = self.lock();
        let idlest = open
            .iter()
            .filter(|(_, (a, _))| a.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, (a, _))| a.last.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        match idlest.and_then(|id| open.remove(&id)) {
            Some((_, close)) => {
                close.cancel();
                true
            }
            None => false,
        }
    }

    /// Closes every connection idle for longer than `idle`; returns how many.
    fn close_idle(&self, idle: Duration) -> usize {
        let cutoff = self.now_ms().saturating_sub(idle.as_millis() as u64);
        let mut open = self.lock();
        let stale: Vec<u64> = open
            .iter()
            .filter(|(_, (a, _))| {
                a.in_flight.load(Ordering::Acquire) == 0 && a.last.load(Ordering::Acquire) < cutoff
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            if let Some((_, close)) = open.remove(id) {
                close.cancel();
            }
        }
        stale.len()
    }
}

/// Marks a request in progress on its connection until the response body
/// is done (an event stream is busy for as long as it is open).
struct Busy {
    activity: Arc<Activity>,
    registry: Arc<Registry>,
}

impl Busy {
    fn new(activity: Arc<Activity>, registry: Arc<Registry>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.last.store(registry.now_ms(), Ordering::Release);
        Busy { activity, registry }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.activity
            .last
            .store(self.registry.now_ms(), Ordering::Release);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection marked busy until it ends.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Accepted sockets not yet closed, beyond the cap, while evicted
/// connections close.
const EVICTION_SLACK: usize = 64;

/// Accepted sockets not closed yet, and a signal when one closes.
#[derive(Default)]
struct Sockets {
    count: AtomicUsize,
    closed: tokio::sync::Notify,
}

/// One accepted socket, counted until its connection task ends.
struct OpenSocket(Arc<Sockets>);

impl OpenSocket {
    fn new(sockets: &Arc<Sockets>) -> Self {
        sockets.count.fetch_add(1, Ordering::AcqRel);
        OpenSocket(sockets.clone())
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_one();
    }
}

/// Serves `app` on `listener` until `shutdown`; then stops accepting, lets
/// open requests finish (event streams end on the same signal) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        next_id: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
    });
    let connections = TaskTracker::new();
    let sockets = Arc::new(Sockets::default());
    let logs = LogLimit::default();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                registry.close_idle(limits.idle_timeout);
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors (another part of the process used many):
                // make room, and do not spin.
                if let Some(repeats) = logs.admit(&error.to_string(), Instant::now()) {
                    warn!(%error, "accept failed{}", repeats_note(repeats, log_limit::EVERY));
                }
                registry.evict_idlest();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if registry.len() >= limits.max && !registry.evict_idlest() {
            // Every connection is busy: this one is refused (closed at once).
            continue;
        }
        // An evicted connection's socket closes when its task next runs; a
        // burst of accepts can outpace that. Past a small slack above the
        // cap, the new connection waits (briefly) for evicted ones to close,
        // so that descriptors never run out (the slack is far below the
        // reserve kept for the rest) and a new client still gets in.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while sockets.count.load(Ordering::Acquire) >= limits.max + EVICTION_SLACK {
            tokio::select! {
                () = sockets.closed.notified() => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let socket = OpenSocket::new(&sockets);
        let _ = stream.set_nodelay(true);
        let (id, activity, close) = registry.add();
        let service = {
            let (app, registry) = (app.clone(), registry.clone());
            tower::service_fn(move |request: hyper::Request<Incoming>| {
                let busy = Busy::new(activity.clone(), registry.clone());
                let app = app.clone();
                async move {
                    let response = app.oneshot(request.map(Body::new)).await?;
                    Ok::<_, Infallible>(
                        response.map(|body| Body::new(Tracked { body, _busy: busy })),
                    )
                }
            })
        };
        let (registry, shutdown) = (registry.clone(), shutdown.clone());
        connections.spawn(async move {
            let _socket = socket;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // Evicted or idle too long: dropping the connection closes it.
                () = close.cancelled() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                }
            }
            registry.remove(id);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest_of_the_process() {
        let limits = ConnectionLimits {
            max: 4096,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        assert_eq!(limits.within(1024).max, 768);
        assert_eq!(limits.within(1 << 20).max, 4096);
        assert_eq!(limits.within(100).max, 16, "never none at all");
    }

    #[test]
    fn the_idlest_connection_makes_room_and_busy_ones_are_never_evicted() {
        let registry = Arc::new(Registry {
            epoch: Instant::now() - Duration::from_secs(100),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        });
        let (_, oldest, oldest_close) = registry.add();
        let (_, busy, busy_close) = registry.add();
        let (_, newer, newer_close) = registry.add();
        oldest.last.store(1_000, Ordering::Release);
        busy.last.store(500, Ordering::Release);
        newer.last.store(2_000, Ordering::Release);
        let request = Busy::new(busy.clone(), registry.clone());
        assert!(registry.evict_idlest());
        assert!(oldest_close.is_cancelled() && !busy_close.is_cancelled());
        assert!(registry.evict_idlest());
        assert!(newer_close.is_cancelled());
        assert!(!registry.evict_idlest(), "only a busy one is left");
        assert_eq!(registry.len(), 1);
        // Once its request is done it counts as idle from then on.
        drop(request);
        assert_eq!(
            registry.close_idle(Duration::from_secs(60)),
            0,
            "just active"
        );
        busy.last.store(0, Ordering::Release);
        assert_eq!(registry.close_idle(Duration::from_secs(60)), 1);
        assert!(busy_close.is_cancelled());
    }
}
