//! The workers that merge ranges for questions at query time: threads of
//! lower scheduling priority (nice 10), so that ingest and the default
//! answers keep the processor when both want it. The supervisor starts them
//! and stops them with the server; a stop ends each worker after the job it
//! is running, and the jobs still queued are dropped (their askers hear that
//! the workers are gone).

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::stop::Stop;

/// How much less eager the workers are than the rest of the process.
const WORKER_NICENESS: i32 = 10;

/// How often an idle worker looks at its stop flag.
const IDLE_CHECK: Duration = Duration::from_millis(200);

pub type Job = Box<dyn FnOnce() + Send>;

/// The workers are gone: the service is stopping.
#[derive(Debug, thiserror::Error)]
#[error("the query workers have stopped")]
pub struct PoolGone;

/// Where jobs go: a queue as long as there are workers, so that a job is
/// only sent once a place to run it has been granted.
#[derive(Clone, Debug)]
pub struct Pool {
    jobs: SyncSender<Job>,
}

/// One worker's body, for the supervisor to run on a thread of its own.
pub struct Worker {
    queue: Arc<Mutex<Receiver<Job>>>,
    stop: Stop,
}

impl Pool {
    /// A pool of `workers` and the bodies to run them; `stop` ends them.
    pub fn new(workers: usize, stop: &Stop) -> (Pool, Vec<Worker>) {
        let (jobs, queue) = sync_channel::<Job>(workers);
        let queue = Arc::new(Mutex::new(queue));
        let bodies = (0..workers)
            .map(|_| Worker {
                queue: queue.clone(),
                stop: stop.clone(),
            })
            .collect();
        (Pool { jobs }, bodies)
    }

    pub fn send(&self, job: Job) -> Result<(), PoolGone> {
        self.jobs.send(job).map_err(|_| PoolGone)
    }
}

impl Worker {
    /// Runs jobs until stopped or until every [`Pool`] is dropped.
    pub fn run(self) {
        // Only this thread: Linux applies PRIO_PROCESS with a thread id to
        // that thread alone.
        let me = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(me), WORKER_NICENESS) {
            tracing::debug!(error = %e, "query worker keeps the normal priority");
        }
        while !self.stop.is_set() {
            let job = match self.queue.lock() {
                Ok(queue) => queue.recv_timeout(IDLE_CHECK),
                Err(_) => return,
            };
            match job {
                // A failed answer drops its sender (the asker hears of it);
                // the worker stays.
                Ok(job) => {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of `n` workers on threads of their own.
    fn started(n: usize, stop: &Stop) -> (Pool, Vec<std::thread::JoinHandle<()>>) {
        let (pool, workers) = Pool::new(n, stop);
        let threads = workers
            .into_iter()
            .map(|w| std::thread::spawn(move || w.run()))
            .collect();
        (pool, threads)
    }

    #[test]
    fn workers_run_jobs_survive_a_panicking_one_and_end_when_stopped() {
        let stop = Stop::new();
        let (pool, threads) = started(2, &stop);
        let (done, heard) = std::sync::mpsc::channel();
        pool.send(Box::new(|| panic!("a failed answer")))
            .expect("sent");
        for i in 0..4 {
            let done = done.clone();
            pool.send(Box::new(move || done.send(i).expect("heard")))
                .expect("sent");
        }
        let mut got: Vec<i32> = (0..4)
            .map(|_| heard.recv_timeout(Duration::from_secs(30)).expect("ran"))
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3]);
        stop.set();
        for t in threads {
            t.join().expect("the worker ended");
        }
        assert!(
            pool.send(Box::new(|| {})).is_err(),
            "no worker takes jobs after the stop"
        );
    }

    #[test]
    fn workers_run_jobs_at_a_lower_priority_than_the_process() {
        let process = rustix::process::getpriority_process(None).expect("own priority");
        let stop = Stop::new();
        let (pool, threads) = started(2, &stop);
        let (done, got) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let done = done.clone();
            pool.send(Box::new(move || {
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
        stop.set();
        for t in threads {
            t.join().expect("the worker ended");
        }
    }
}
