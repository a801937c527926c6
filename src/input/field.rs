//! Where the client address is in a record: the format, the JSON path, and
//! the proxies to look past in an X-Forwarded-For list.

use crate::config::{Format, Input};
use crate::vocab::{IpKey, Network, SkipReason, parse_ip};

/// Where the client address is: a dotted path into nested objects
/// (`client_real_ip`, `source.ip`), and the proxies to look past when the
/// value is an X-Forwarded-For list.
#[derive(Clone, Debug)]
pub struct ClientField {
    pub(super) format: Format,
    pub(super) path: Box<[Box<str>]>,
    /// The path of the envelope's string field holding the raw line.
    pub(super) envelope: Option<Box<[Box<str>]>>,
    /// Where the record's time is: a JSON path; any value means CLF's
    /// bracketed date. `None`: the time is not read.
    pub(super) time_path: Option<Box<[Box<str>]>>,
    /// A segment of either path holds U+FFFD, which a key that is not UTF-8
    /// reads as: only then are such keys decoded to be compared.
    pub(super) lossy_keys: bool,
    trusted: Box<[Network]>,
}

impl ClientField {
    pub fn new(path: &str, trusted: Vec<Network>) -> Self {
        ClientField {
            format: Format::Json,
            path: path.split('.').map(Box::from).collect(),
            envelope: None,
            time_path: None,
            lossy_keys: path.contains(char::REPLACEMENT_CHARACTER),
            trusted: trusted.into(),
        }
    }

    /// Records are JSON envelopes whose string field at `path` (dotted)
    /// holds the raw line, read with the format (Filebeat/Vector `message`,
    /// Fluent Bit/Docker `log`).
    pub fn with_envelope(mut self, path: Option<&str>) -> Self {
        self.envelope = path.map(|p| p.split('.').map(Box::from).collect());
        self.lossy_keys |= path.is_some_and(|p| p.contains(char::REPLACEMENT_CHARACTER));
        self
    }

    /// The record's time is read too, at this dotted path (JSON; CLF reads
    /// its bracketed date whatever the path).
    pub fn with_time(mut self, path: Option<&str>) -> Self {
        self.time_path = path.map(|p| p.split('.').map(Box::from).collect());
        self.lossy_keys |= path.is_some_and(|p| p.contains(char::REPLACEMENT_CHARACTER));
        self
    }

    /// Whether the record's time is read.
    pub fn reads_time(&self) -> bool {
        self.time_path.is_some()
    }

    /// Records read as `format` (the path applies to JSON only).
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The client of the field's text: one address, or the right-most
    /// address of a comma-separated list that is not a trusted proxy (all
    /// trusted: the left-most). `-` and empty are `missing_field` (nginx's
    /// empty variable); any malformed entry makes the line `invalid_ip`.
    pub(super) fn client(&self, text: &str) -> Result<IpKey, SkipReason> {
        if text.is_empty() || text == "-" {
            return Err(SkipReason::MissingField);
        }
        if !text.contains(',') {
            return parse_ip(text).ok_or(SkipReason::InvalidIp);
        }
        let mut hops = Vec::new();
        for entry in text.split(',') {
            hops.push(parse_ip(entry.trim_matches([' ', '\t'])).ok_or(SkipReason::InvalidIp)?);
        }
        let untrusted = hops
            .iter()
            .rev()
            .find(|ip| !self.trusted.iter().any(|net| net.contains(**ip)));
        Ok(*untrusted.unwrap_or(&hops[0]))
    }
}

impl From<&Input> for ClientField {
    fn from(input: &Input) -> Self {
        ClientField::new(&input.ip_field, input.trusted_proxies.clone())
            .with_format(input.format)
            .with_envelope(input.envelope.as_deref())
    }
}

impl From<&str> for ClientField {
    fn from(path: &str) -> Self {
        ClientField::new(path, Vec::new())
    }
}

impl From<&ClientField> for ClientField {
    fn from(field: &ClientField) -> Self {
        field.clone()
    }
}

/// An envelope's line without the newline shippers keep (Docker's
/// json-file, Fluent Bit).
pub(super) fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
