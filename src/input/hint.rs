//! Misconfigurations that skipped lines point to, each with the setting or
//! nginx directive that would read them.

/// A misconfiguration that skipped lines point to, and what would read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// JSON-looking lines with `\x22`: nginx's default escaping.
    NginxDefaultEscaping,
    /// CLF text while `--format json`.
    ClfAsJson,
    /// A JSON object while `--format clf`.
    JsonAsClf,
}

impl Hint {
    pub(super) const ALL: [Hint; 3] =
        [Hint::NginxDefaultEscaping, Hint::ClfAsJson, Hint::JsonAsClf];

    /// What to change, in the words of the setting or nginx directive.
    pub fn advice(self) -> &'static str {
        match self {
            Hint::NginxDefaultEscaping => {
                "lines hold \\x22 where JSON needs \\\": nginx wrote them with its default \
                 escaping; add escape=json to the log_format (they are skipped as not_json)"
            }
            Hint::ClfAsJson => {
                "lines are common/combined log format text: run with --format clf \
                 (they are skipped as not_json)"
            }
            Hint::JsonAsClf => {
                "lines are JSON objects: run with --format json, or --envelope FIELD when \
                 the object wraps a log line (they are skipped as bad_format)"
            }
        }
    }

    pub(super) fn bit(self) -> u8 {
        1 << self as u8
    }
}
