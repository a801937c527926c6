//! The running parts of the service, owned in one place: each is started
//! through [`Parts`] with its stage and the way it is told to stop; the
//! [`Supervisor`] hears of the first one to end on its own, and stops them
//! all stage by stage, in the one order declared by [`Stage`].

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::stop::Stop;

/// When a part stops. Stages stop in this order, each after the one before
/// has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Start-up, still resolving where to start: cancelled, it launches
    /// nothing. Once it has launched the parts below, it is done.
    Startup,
    /// Reading Kafka: ingest closes its last batch and hands it to the
    /// checkpoint writer; the cluster monitor stops.
    Consume,
    /// The checkpoint writer makes that last batch durable. It ends when
    /// ingest has gone, with nothing left to write.
    Persist,
    /// The committers commit the last durable offsets.
    Commit,
    /// HTTP and the progress line: they answer until everything above is done.
    Serve,
    /// The embedded demo broker outlives every client that reads from it.
    Demo,
}

impl Stage {
    const ORDER: [Stage; 6] = [
        Stage::Startup,
        Stage::Consume,
        Stage::Persist,
        Stage::Commit,
        Stage::Serve,
        Stage::Demo,
    ];
}

/// How a part is told to stop.
pub enum Signal {
    /// A dedicated thread polling a stop flag.
    Flag(Stop),
    /// A task selecting on a token.
    Token(CancellationToken),
    /// Nothing to tell: it ends when what feeds it ends.
    Upstream,
}

impl Signal {
    fn send(&self) {
        match self {
            Signal::Flag(stop) => stop.set(),
            Signal::Token(token) => token.cancel(),
            Signal::Upstream => {}
        }
    }
}

/// Whether a part's end is news.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Any end before shutdown stops the service (`… stopped unexpectedly`).
    Always,
    /// The part ends only because its upstream did, which reports the cause:
    /// only a failure of its own is news.
    FailuresOnly,
}

enum Handle {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

struct Part {
    name: &'static str,
    stage: Stage,
    signal: Signal,
    handle: Handle,
    /// How long to wait for it once told to stop; `None`: as long as it takes
    /// (the whole stop is bounded by `--shutdown-grace`).
    patience: Option<Duration>,
}

type Exit = (&'static str, anyhow::Result<()>);

/// Starts parts. Cheap to clone, so that start-up can launch parts while
/// the service runs.
#[derive(Clone)]
pub struct Parts {
    running: Arc<Mutex<Vec<Part>>>,
    exits: mpsc::UnboundedSender<Exit>,
}

/// The owner of every part: hears the first to end, stops them all.
pub struct Supervisor {
    parts: Parts,
    exits: mpsc::UnboundedReceiver<Exit>,
    progress: StopProgress,
}

/// How far a stop has got: readable while the stop runs (or after it was
/// abandoned at the shutdown deadline).
#[derive(Clone, Debug, Default)]
pub struct StopProgress(Arc<AtomicUsize>);

impl StopProgress {
    /// Whether every part of `stage` has ended.
    pub fn stopped(&self, stage: Stage) -> bool {
        let done = self.0.load(Ordering::Acquire);
        Stage::ORDER.iter().take(done).any(|s| *s == stage)
    }

    fn stage_done(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl Parts {
    fn add(&self, part: Part) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(part);
    }

    /// The parts of one stage, taken out of the running list.
    fn take(&self, stage: Stage) -> Vec<Part> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let (now, later) = std::mem::take(&mut *running)
            .into_iter()
            .partition(|p| p.stage == stage);
        *running = later;
        now
    }

    /// Runs `body` on a named thread of its own.
    pub fn thread(
        &self,
        name: &'static str,
        stage: Stage,
        signal: Signal,
        report: Report,
        body: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let exits = self.exits.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || send_exit(&exits, name, report, body()))
            .with_context(|| format!("spawning the {name} thread"))?;
        self.add(Part {
            name,
            stage,
            signal,
            handle: Handle::Thread(handle),
            patience: None,
        });
        Ok(())
    }

    /// Runs `body` as a task on the async runtime; `patience` bounds the wait
    /// for it at shutdown.
    pub fn task(
        &self,
        name: &'static str,
        stage: Stage,
        signal: Signal,
        report: Report,
        patience: Option<Duration>,
        body: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let exits = self.exits.clone();
        let handle = tokio::spawn(async move { send_exit(&exits, name, report, body.await) });
        self.add(Part {
            name,
            stage,
            signal,
            handle: Handle::Task(handle),
            patience,
        });
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Supervisor {
            parts: Parts {
                running: Arc::default(),
                exits: exits_tx,
            },
            exits,
            progress: StopProgress::default(),
        }
    }
}

impl Supervisor {
    pub fn parts(&self) -> &Parts {
        &self.parts
    }

    pub fn progress(&self) -> StopProgress {
        self.progress.clone()
    }

    /// The first part to end on its own, and how it ended.
    pub async fn ended(&mut self) -> (&'static str, anyhow::Result<()>) {
        match self.exits.recv().await {
            Some(exit) => exit,
            // Unreachable: `self` holds a sender.
            None => ("supervisor", Err(anyhow!("the exit channel closed"))),
        }
    }

    /// Stops every part, stage by stage (a stage's parts are taken only once
    /// the stages before it have ended, so that start-up's launches are
    /// among them); the first failure any part reported, before or during
    /// the stop, is the result.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Supervisor {
            parts,
            mut exits,
            progress,
        } = self;
        for stage in Stage::ORDER {
            let now = parts.take(stage);
            for part in &now {
                part.signal.send();
            }
            for part in now {
                join(part).await?;
            }
            progress.stage_done();
        }
        let mut first_error = None;
        while let Ok((name, result)) = exits.try_recv() {
            if let Err(e) = result {
                first_error.get_or_insert(e.context(format!("{name} failed")));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn send_exit(
    exits: &mpsc::UnboundedSender<Exit>,
    name: &'static str,
    report: Report,
    result: anyhow::Result<()>,
) {
    if report == Report::Always || result.is_err() {
        // The receiver is gone only once everything has stopped.
        let _ = exits.send((name, result));
    }
}

async fn join(part: Part) -> anyhow::Result<()> {
    let name = part.name;
    match part.handle {
        Handle::Thread(handle) => {
            let joined = tokio::task::spawn_blocking(move || handle.join())
                .await
                .with_context(|| format!("joining the {name} thread"))?;
            if joined.is_err() {
                error!(thread = name, "thread panicked");
            }
        }
        Handle::Task(handle) => {
            let joined = match part.patience {
                Some(patience) => match tokio::time::timeout(patience, handle).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        warn!(task = name, "still running at shutdown; left behind");
                        return Ok(());
                    }
                },
                None => handle.await,
            };
            if let Err(e) = joined
                && e.is_panic()
            {
                error!(task = name, "task panicked");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn parts_stop_stage_by_stage_in_the_declared_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let supervisor = Supervisor::default();
        let parts = supervisor.parts().clone();
        let note = |what: &'static str| {
            let order = order.clone();
            move || order.lock().expect("lock").push(what)
        };
        // Started in an order unlike the stop order.
        for (name, stage) in [("demo", Stage::Demo), ("http", Stage::Serve)] {
            let token = CancellationToken::new();
            let (wait, done) = (token.clone(), note(name));
            parts.task(
                name,
                stage,
                Signal::Token(token),
                Report::FailuresOnly,
                None,
                async move {
                    wait.cancelled().await;
                    done();
                    Ok(())
                },
            );
        }
        let (stop, ingest_gone) = (Stop::new(), CancellationToken::new());
        let (wait, gone, done) = (stop.clone(), ingest_gone.clone(), note("ingest"));
        parts
            .thread(
                "ingest",
                Stage::Consume,
                Signal::Flag(stop),
                Report::Always,
                move || {
                    wait.wait(Duration::from_secs(600));
                    done();
                    gone.cancel();
                    Ok(())
                },
            )
            .expect("thread");
        parts.task(
            "writer",
            Stage::Persist,
            Signal::Upstream,
            Report::FailuresOnly,
            None,
            {
                let done = note("writer");
                async move {
                    ingest_gone.cancelled().await;
                    done();
                    Err(anyhow!("disk on fire"))
                }
            },
        );
        // Start-up launches parts of later stages while the service runs:
        // they are stopped in their turn.
        let (launcher, token) = (parts.clone(), CancellationToken::new());
        let done = note("startup");
        let late = note("committer launched by startup");
        parts.task(
            "startup",
            Stage::Startup,
            Signal::Token(token.clone()),
            Report::FailuresOnly,
            None,
            async move {
                token.cancelled().await;
                let stop = CancellationToken::new();
                launcher.task(
                    "committer",
                    Stage::Commit,
                    Signal::Token(stop.clone()),
                    Report::FailuresOnly,
                    None,
                    async move {
                        stop.cancelled().await;
                        late();
                        Ok(())
                    },
                );
                done();
                Ok(())
            },
        );
        let progress = supervisor.progress();
        assert!(!progress.stopped(Stage::Startup));
        let err = supervisor.stop().await.expect_err("the writer failed");
        assert!(progress.stopped(Stage::Persist) && progress.stopped(Stage::Demo));
        assert!(
            format!("{err:#}").contains("writer failed: disk on fire"),
            "{err:#}"
        );
        assert_eq!(
            *order.lock().expect("lock"),
            [
                "startup",
                "ingest",
                "writer",
                "committer launched by startup",
                "http",
                "demo"
            ]
        );
    }

    #[tokio::test]
    async fn the_first_part_to_end_is_reported_and_followers_only_when_they_fail() {
        let mut supervisor = Supervisor::default();
        let parts = supervisor.parts().clone();
        parts.task(
            "quiet",
            Stage::Commit,
            Signal::Upstream,
            Report::FailuresOnly,
            None,
            async { Ok(()) },
        );
        parts
            .thread(
                "monitor",
                Stage::Consume,
                Signal::Upstream,
                Report::Always,
                || Ok(()),
            )
            .expect("thread");
        let (name, result) = supervisor.ended().await;
        assert_eq!(name, "monitor");
        assert!(result.is_ok());
        // A part that outstays its patience is left behind, not waited for.
        parts.task(
            "stuck",
            Stage::Serve,
            Signal::Upstream,
            Report::FailuresOnly,
            Some(Duration::from_millis(10)),
            std::future::pending(),
        );
        supervisor.stop().await.expect("nothing failed");
    }
}
