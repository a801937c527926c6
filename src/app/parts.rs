//! The running parts of the service, owned in one place: each is started
//! here with its stage and the way it is told to stop; the first one to end
//! on its own is reported; and [`Parts::stop`] stops them stage by stage, in
//! the one order declared by [`Stage`].

use std::future::Future;
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
    const ORDER: [Stage; 5] = [
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

/// The supervisor of the running parts.
pub struct Parts {
    running: Vec<Part>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
}

impl Default for Parts {
    fn default() -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Parts {
            running: Vec::new(),
            exits_tx,
            exits,
        }
    }
}

impl Parts {
    /// Runs `body` on a named thread of its own.
    pub fn thread(
        &mut self,
        name: &'static str,
        stage: Stage,
        signal: Signal,
        report: Report,
        body: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let exits = self.exits_tx.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || send_exit(&exits, name, report, body()))
            .with_context(|| format!("spawning the {name} thread"))?;
        self.running.push(Part {
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
        &mut self,
        name: &'static str,
        stage: Stage,
        signal: Signal,
        report: Report,
        patience: Option<Duration>,
        body: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let exits = self.exits_tx.clone();
        let handle = tokio::spawn(async move { send_exit(&exits, name, report, body.await) });
        self.running.push(Part {
            name,
            stage,
            signal,
            handle: Handle::Task(handle),
            patience,
        });
    }

    /// The first part to end on its own, and how it ended.
    pub async fn ended(&mut self) -> (&'static str, anyhow::Result<()>) {
        match self.exits.recv().await {
            Some(exit) => exit,
            // Unreachable: `self` holds a sender.
            None => ("supervisor", Err(anyhow!("the exit channel closed"))),
        }
    }

    /// Stops every part, stage by stage; the first failure any part reported
    /// (before or during the stop) is the result.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Parts {
            mut running,
            exits_tx,
            mut exits,
        } = self;
        drop(exits_tx);
        for stage in Stage::ORDER {
            let (now, later): (Vec<Part>, Vec<Part>) =
                running.into_iter().partition(|p| p.stage == stage);
            running = later;
            for part in &now {
                part.signal.send();
            }
            for part in now {
                join(part).await?;
            }
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
        let mut parts = Parts::default();
        let note = |what: &'static str| {
            let order = order.clone();
            move || order.lock().expect("lock").push(what)
        };
        // Started in an order unlike the stop order.
        for (name, stage) in [
            ("demo", Stage::Demo),
            ("http", Stage::Serve),
            ("committer", Stage::Commit),
        ] {
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
        let err = parts.stop().await.expect_err("the writer failed");
        assert!(
            format!("{err:#}").contains("writer failed: disk on fire"),
            "{err:#}"
        );
        assert_eq!(
            *order.lock().expect("lock"),
            ["ingest", "writer", "committer", "http", "demo"]
        );
    }

    #[tokio::test]
    async fn the_first_part_to_end_is_reported_and_followers_only_when_they_fail() {
        let mut parts = Parts::default();
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
        let (name, result) = parts.ended().await;
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
        parts.stop().await.expect("nothing failed");
    }
}
