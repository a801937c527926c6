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
    if let Some(envelope) = &field.envelope {
        if line.len() > max_line_bytes {
            return Err(SkipReason::TooLarge);
        }
        let value: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(line))
            .map_err(|_| SkipReason::NotJson)?;
        if !value.is_object() {
            return Err(SkipReason::NotJson);
        }
        let mut at = &value;
        for segment in envelope {
            at = at
                .as_object()
                .and_then(|o| o.get(&**segment))
                .ok_or(SkipReason::MissingField)?;
        }
        let inner = at.as_str().ok_or(SkipReason::BadFormat)?;
        let bare = field.clone().with_envelope(None);
        return parse_reference(strip_newline(inner.as_bytes()), &bare, usize::MAX);
    }
    if line.len() > max_line_bytes {
        return Err(SkipReason::TooLarge);
    }
    if field.format == Format::Clf {
        let host = String::from_utf8_lossy(clf::parse(line)?.host).into_owned();
        return field.client(&host);
    }
    let text = String::from_utf8_lossy(line);
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|_| SkipReason::NotJson)?;
    if !value.is_object() {
        return Err(SkipReason::NotJson);
    }
    let mut at = &value;
    for segment in &field.path {
        at = at
            .as_object()
            .and_then(|o| o.get(&**segment))
            .ok_or(SkipReason::MissingField)?;
    }
    match at {
        serde_json::Value::String(s) => field.client(s),
        _ => Err(SkipReason::InvalidIp),
    }
}
