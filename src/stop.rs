//! A stop signal for the service's dedicated threads: cheap to check in a
//! hot loop, and able to wake a thread that waits between periodic jobs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    flag: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Stop {
    pub fn new() -> Self {
        Stop::default()
    }

    pub fn set(&self) {
        self.0.flag.store(true, Ordering::Release);
        let _guard = self.0.lock.lock();
        self.0.wake.notify_all();
    }

    pub fn is_set(&self) -> bool {
        self.0.flag.load(Ordering::Acquire)
    }

    /// Waits up to `timeout`; returns true when stop was requested.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Ok(mut guard) = self.0.lock.lock() else {
            return self.is_set();
        };
        while !self.is_set() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            guard = match self.0.wake.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(_) => return self.is_set(),
            };
        }
        self.is_set()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_wakes_a_waiting_thread() {
        let stop = Stop::new();
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.wait(Duration::from_secs(600)))
        };
        stop.set();
        assert!(waiter.join().expect("waiter thread"));
        assert!(!Stop::new().wait(Duration::from_millis(1)));
    }
}
