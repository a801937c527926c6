//! Why a line was not counted, and how many lines were not, per reason.

use std::fmt;

/// Why a line was not counted. Exposed as `ipstats_records_skipped_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The line is longer than `--max-line-bytes`.
    TooLarge,
    /// The line is not a JSON object (read with invalid UTF-8 replaced by U+FFFD).
    NotJson,
    /// The JSON object has no top-level IP field.
    MissingField,
    /// The IP field is not a string holding an IPv4 or IPv6 address.
    InvalidIp,
    /// The line does not have the structure of `--format` (CLF).
    BadFormat,
    /// Event time: the record has no readable time at `--time-field`.
    BadTime,
    /// Event time: the record's time is more than `--max-future` ahead of
    /// the wall clock.
    FutureTime,
}

impl SkipReason {
    /// Every reason, in the order used by [`SkipCounts`] and stored in
    /// checkpoint panes: a new reason goes at the end.
    pub const ALL: [SkipReason; SKIP_REASONS] = [
        SkipReason::TooLarge,
        SkipReason::NotJson,
        SkipReason::MissingField,
        SkipReason::InvalidIp,
        SkipReason::BadFormat,
        SkipReason::BadTime,
        SkipReason::FutureTime,
    ];

    /// The label value used in metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::TooLarge => "too_large",
            SkipReason::NotJson => "not_json",
            SkipReason::MissingField => "missing_field",
            SkipReason::InvalidIp => "invalid_ip",
            SkipReason::BadFormat => "bad_format",
            SkipReason::BadTime => "bad_time",
            SkipReason::FutureTime => "future_time",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many skip reasons there are.
pub const SKIP_REASONS: usize = 7;

/// Skipped lines counted per reason; indexable without hashing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipCounts([u64; SKIP_REASONS]);

impl SkipCounts {
    pub fn add(&mut self, reason: SkipReason) {
        self.0[reason.index()] += 1;
    }

    pub fn get(&self, reason: SkipReason) -> u64 {
        self.0[reason.index()]
    }

    pub fn merge(&mut self, other: &SkipCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// The counts in [`SkipReason::ALL`] order, as checkpoints store them.
    pub fn to_array(&self) -> [u64; SKIP_REASONS] {
        self.0
    }

    pub fn from_array(counts: [u64; SKIP_REASONS]) -> Self {
        SkipCounts(counts)
    }

    /// Counts in the order of checkpoint format 1 (`too_large`, `not_utf8`,
    /// `not_json`, `missing_field`, `invalid_ip`). `not_utf8` is no reason
    /// any more (such lines are read repaired); its lines were not readable
    /// as JSON then, and count as `not_json`.
    pub fn from_format_1(c: [u64; 5]) -> Self {
        SkipCounts([c[0], c[1] + c[2], c[3], c[4], 0, 0, 0])
    }

    /// The count of the reason named `name`, if it is one.
    pub fn add_named(&mut self, name: &str, count: u64) -> bool {
        match SkipReason::ALL.iter().find(|r| r.as_str() == name) {
            Some(r) => {
                self.0[r.index()] += count;
                true
            }
            None => false,
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (SkipReason, u64)> + '_ {
        SkipReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}
