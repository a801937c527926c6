//! Facts one thread records and others read without a lock: when something
//! last happened, and the last error a component reported; and how a time
//! is written in answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

/// A moment in wall-clock time, kept as epoch milliseconds in an atomic
/// (0 = never), so that HTTP can tell its age while another thread sets it.
#[derive(Debug, Default)]
pub struct Stamp(AtomicU64);

impl Stamp {
    /// Records now.
    pub fn touch(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // 0 means never: a clock at the epoch still counts as a moment.
        self.0
            .store((now.as_millis() as u64).max(1), Ordering::Release);
    }

    /// Time since the last [`Stamp::touch`]; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH + Duration::from_millis(ms))
                    .unwrap_or_default(),
            ),
        }
    }
}

/// The last error a component reported, kept for status pages after the
/// component recovers.
#[derive(Debug, Default)]
pub struct LastError(ArcSwap<Option<String>>);

impl LastError {
    pub fn set(&self, error: String) {
        self.0.store(Arc::new(Some(error)));
    }

    pub fn get(&self) -> Option<String> {
        self.0.load().as_ref().clone()
    }
}

/// RFC 3339 in UTC with milliseconds, as every time in the API (the
/// epoch for earlier times, which it cannot write).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t.max(std::time::UNIX_EPOCH)).to_string()
}

/// Epoch milliseconds of a time (0 before the epoch), as checkpoints keep times.
pub fn epoch_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The time of epoch milliseconds (the epoch for negative ones).
pub fn from_epoch_ms(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_has_no_age_until_touched_and_keeps_the_last_error() {
        let stamp = Stamp::default();
        assert_eq!(stamp.age(), None);
        stamp.touch();
        assert!(stamp.age().is_some_and(|age| age < Duration::from_secs(60)));
        let error = LastError::default();
        assert_eq!(error.get(), None);
        error.set("disk full".into());
        error.set("permission denied".into());
        assert_eq!(error.get().as_deref(), Some("permission denied"));
    }
}
