//! The definition every fast path is held to: a full `serde_json` parse of
//! the line with invalid UTF-8 replaced by U+FFFD (`String::from_utf8_lossy`,
//! as the original JVM job decoded records), the path walked as serde_json
//! walks it; CLF lines by [`clf::parse`].

use super::clf;
use super::field::ClientField;
use super::parse::strip_newline;
use crate::config::Format;
use crate::vocab::{IpKey, SkipReason};

/// The definition the fast path must agree with: a full `serde_json` parse of
/// the line with invalid UTF-8 replaced by U+FFFD.
pub fn parse_reference(
    line: &[u8],
    field: impl Into<ClientField>,
    max_line_bytes: usize,
) -> Result<IpKey, SkipReason> {
    let field = field.into();
    if line.len() > max_line_bytes {
        return Err(SkipReason::TooLarge);
    }
    if let Some(envelope) = &field.envelope {
        let value = json_object(line)?;
        let inner = at_path(&value, envelope)?
            .as_str()
            .ok_or(SkipReason::BadFormat)?;
        let bare = field.clone().with_envelope(None);
        return parse_reference(strip_newline(inner.as_bytes()), &bare, usize::MAX);
    }
    if field.format == Format::Clf {
        let host = String::from_utf8_lossy(clf::parse(line)?.host).into_owned();
        return field.client(&host);
    }
    match at_path(&json_object(line)?, &field.path)? {
        serde_json::Value::String(s) => field.client(s),
        _ => Err(SkipReason::InvalidIp),
    }
}

/// The line as serde_json reads it after a lossy repair; only an object is
/// a record.
fn json_object(line: &[u8]) -> Result<serde_json::Value, SkipReason> {
    let value: serde_json::Value =
        serde_json::from_str(&String::from_utf8_lossy(line)).map_err(|_| SkipReason::NotJson)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(SkipReason::NotJson)
    }
}

/// The value at a dotted path, walked as serde_json walks it.
fn at_path<'a>(
    value: &'a serde_json::Value,
    path: &[Box<str>],
) -> Result<&'a serde_json::Value, SkipReason> {
    path.iter().try_fold(value, |at, segment| {
        at.as_object()
            .and_then(|o| o.get(&**segment))
            .ok_or(SkipReason::MissingField)
    })
}
