//! The definition every fast path is held to: a full `serde_json` parse of
//! the line with invalid UTF-8 replaced by U+FFFD (`String::from_utf8_lossy`,
//! as the original JVM job decoded records), the path walked as serde_json
//! walks it; CLF lines by [`clf::parse`].

use super::clf;
use super::field::{ClientField, strip_newline};
use super::time::parse_time;
use crate::config::Format;
use crate::vocab::{IpKey, SkipReason};

/// The definition the fast path must agree with: a full `serde_json` parse of
/// the line with invalid UTF-8 replaced by U+FFFD.
pub fn parse_reference(
    line: &[u8],
    field: impl Into<ClientField>,
    max_line_bytes: usize,
) -> Result<IpKey, SkipReason> {
    reference_record(line, field, max_line_bytes).map(|(ip, _)| ip)
}

/// [`parse_reference`] with the record's time, when the field names one:
/// a string in a form [`parse_time`] reads, or a JSON number of epoch
/// seconds (its value as serde_json prints it). Client errors come first.
pub fn reference_record(
    line: &[u8],
    field: impl Into<ClientField>,
    max_line_bytes: usize,
) -> Result<(IpKey, Option<i64>), SkipReason> {
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
        return reference_record(strip_newline(inner.as_bytes()), &bare, usize::MAX);
    }
    let wants_time = field.time_path.is_some();
    if field.format == Format::Clf {
        let parsed = clf::parse(line)?;
        let ip = field.client(&String::from_utf8_lossy(parsed.host))?;
        if !wants_time {
            return Ok((ip, None));
        }
        let time = parse_time(
            &String::from_utf8_lossy(parsed.time)
                .into_owned()
                .into_bytes(),
        );
        return Ok((ip, Some(time.ok_or(SkipReason::BadTime)?)));
    }
    let object = json_object(line)?;
    let ip = match at_path(&object, &field.path)? {
        serde_json::Value::String(s) => field.client(s)?,
        _ => return Err(SkipReason::InvalidIp),
    };
    let Some(time_path) = &field.time_path else {
        return Ok((ip, None));
    };
    let time = match at_path(&object, time_path) {
        Ok(serde_json::Value::String(s)) => parse_time(s.as_bytes()),
        Ok(serde_json::Value::Number(n)) => parse_time(n.to_string().as_bytes()),
        _ => None,
    };
    Ok((ip, Some(time.ok_or(SkipReason::BadTime)?)))
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
