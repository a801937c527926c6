//! Repeated identical messages (a broker that refuses every connection,
//! retried many times a second) are logged once, then at most once per
//! interval with the number of repeats in between.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often one repeated message is logged again.
pub const EVERY: Duration = Duration::from_secs(30);
/// Distinct messages remembered; more (a flood of distinct ones) start afresh.
const KEPT: usize = 256;

#[derive(Debug)]
struct Seen {
    logged_at: Instant,
    repeats: u64,
}

#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(EVERY)
    }
}

/// Messages that differ only in numbers (timings, counters) are the same.
fn key(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl LogLimit {
    pub fn new(every: Duration) -> Self {
        LogLimit {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether to log `message` now: `Some(repeats)` (0 the first time,
    /// else how many were held back since it was last logged), or `None`.
    pub fn admit(&self, message: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let key = key(message);
        if let Some(s) = seen.get_mut(&key) {
            if now.saturating_duration_since(s.logged_at) < self.every {
                s.repeats += 1;
                return None;
            }
            let repeats = std::mem::take(&mut s.repeats);
            s.logged_at = now;
            return Some(repeats);
        }
        if seen.len() >= KEPT {
            seen.clear();
        }
        seen.insert(
            key,
            Seen {
                logged_at: now,
                repeats: 0,
            },
        );
        Some(0)
    }
}

/// `" (repeated N times in the last 30s)"`, or nothing.
pub fn repeats_note(repeats: u64, every: Duration) -> String {
    if repeats == 0 {
        String::new()
    } else {
        format!(
            " (repeated {repeats} times in the last {})",
            humantime::format_duration(every)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_message_is_logged_once_then_once_per_interval_with_its_count() {
        let limit = LogLimit::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let refused = |ms: u32| format!("connect to 127.0.0.1:1 failed (after {ms}ms)");
        assert_eq!(limit.admit(&refused(0), t0), Some(0));
        for i in 1..=40 {
            let at = t0 + Duration::from_millis(25 * u64::from(i));
            assert_eq!(limit.admit(&refused(i), at), None, "repeat {i}");
        }
        assert_eq!(limit.admit("another error", t0), Some(0), "its own count");
        let later = t0 + Duration::from_secs(31);
        assert_eq!(limit.admit(&refused(7), later), Some(40));
        assert_eq!(limit.admit(&refused(7), later), None);
        assert_eq!(
            repeats_note(40, Duration::from_secs(30)),
            " (repeated 40 times in the last 30s)"
        );
        assert_eq!(repeats_note(0, Duration::from_secs(30)), "");
    }
}
