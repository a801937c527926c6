//! The JSON scanner of the fast path: validates a whole line in one pass
//! over its bytes, exactly as strictly as serde_json, and reports where the
//! value at a dotted path is, without building a tree or allocating.
//!
//! Invalid UTF-8 can only change a line inside strings (outside them, bytes
//! ≥ 0x80 are invalid JSON either way), and never swallows an ASCII byte, so
//! the scanner reads bytes and decodes lossily only what it compares or
//! returns. A valid line without a byte ≥ 0x80 is ASCII, which spares
//! ordinary lines a separate UTF-8 check.
//!
//! A first pass ([`super::classify`]) marks the bytes that end a run of
//! string contents; the scanner crosses each string by looking up the next
//! mark, and reads the bytes between strings itself.

use super::classify::classify;
use crate::vocab::SkipReason;

/// serde_json refuses containers nested this deep; so do we.
const MAX_DEPTH: usize = 128;
/// Numbers longer than this, or with an exponent, may overflow an `f64`,
/// which serde_json rejects; such rare numbers are checked by serde_json itself.
const SIMPLE_NUMBER_MAX_LEN: usize = 300;

/// Up to two dotted paths looked for in one scan (the client, the time).
pub(super) type Paths<'p> = [Option<&'p [Box<str>]>; 2];
/// What was found at each of the [`Paths`].
pub(super) type Found = [Option<FieldValue>; 2];

/// The values at `paths` of a JSON line, validating the whole line; `ascii`
/// is set when the line proved to be ASCII. With `lossy_keys` (a segment of
/// a path holds U+FFFD), keys that are not UTF-8 are decoded to compare.
pub(super) fn json_fields(
    line: &[u8],
    paths: Paths<'_>,
    lossy_keys: bool,
    scratch: &mut JsonScratch,
    ascii: &mut bool,
) -> Result<Found, SkipReason> {
    let high = classify(line, &mut scratch.special);
    let mut scanner = Scanner {
        bytes: line,
        special: &scratch.special,
        pos: 0,
        lossy_keys,
    };
    let found = scanner
        .top_level(paths, &mut scratch.text)
        .map_err(|Invalid| SkipReason::NotJson)?;
    // Outside strings a byte >= 0x80 is invalid: a valid line holds them in
    // strings only.
    *ascii = !high;
    Ok(found)
}

/// Buffers the scanner reuses from line to line.
#[derive(Debug, Default)]
pub(super) struct JsonScratch {
    /// Decoded keys (and, for the caller, decoded values).
    pub(super) text: String,
    /// The marks of [`classify`].
    special: Vec<u64>,
}

/// The line is not valid JSON.
struct Invalid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FieldValue {
    /// A value that is not a string (number, literal, object, array) at
    /// `text[start..end]`.
    Other { start: usize, end: usize },
    /// String contents `text[start..end]` hold no escapes.
    Plain { start: usize, end: usize },
    /// String contents `text[start..end]` need unescaping.
    Escaped { start: usize, end: usize },
}

struct Scanner<'a> {
    bytes: &'a [u8],
    /// A bit per byte of `bytes`: quotes, backslashes, control characters.
    special: &'a [u64],
    pos: usize,
    /// Keys that are not UTF-8 may match the path (it holds U+FFFD).
    lossy_keys: bool,
}

impl Scanner<'_> {
    /// Validates the whole line as one JSON value and returns the last
    /// occurrence of each path (serde_json keeps the last duplicate).
    fn top_level(&mut self, paths: Paths<'_>, scratch: &mut String) -> Result<Found, Invalid> {
        self.skip_ws();
        // Anything but an object is `not_json` to the reference as well, so
        // there is no need to validate it.
        self.expect(b'{')?;
        let found = self.object_members(1, paths, scratch)?;
        self.skip_ws();
        if self.pos != self.bytes.len() {
            return Err(Invalid);
        }
        Ok(found)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), Invalid> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// After `{`: members up to and including `}`. Reports the value at
    /// each of `paths` under the last member named by its first segment
    /// (serde_json keeps the last duplicate at every level).
    fn object_members(
        &mut self,
        depth: usize,
        paths: Paths<'_>,
        scratch: &mut String,
    ) -> Result<Found, Invalid> {
        if depth >= MAX_DEPTH {
            return Err(Invalid);
        }
        let mut found: Found = [None, None];
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(found);
        }
        let wanted = paths[0].is_some() || paths[1].is_some();
        loop {
            self.skip_ws();
            self.expect(b'"')?;
            let (start, end, escaped) = self.string_body()?;
            // Per path: the rest of it when this member leads on, or an
            // empty rest when the member is the value itself.
            let mut matched: Paths<'_> = [None, None];
            if wanted {
                let key = &self.bytes[start..end];
                if escaped || self.lossy_keys {
                    // Escapes, or bytes that are not UTF-8 where U+FFFD
                    // is wanted: compare what the reference compares, the
                    // decoded key.
                    decode_string(key, scratch);
                }
                for (at, path) in matched.iter_mut().zip(paths) {
                    if let Some(path) = path {
                        let field = path[0].as_bytes();
                        let hit = if escaped || self.lossy_keys {
                            scratch.as_bytes() == field
                        } else {
                            key == field
                        };
                        if hit {
                            *at = Some(&path[1..]);
                        }
                    }
                }
            }
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            if matched[0].is_none() && matched[1].is_none() {
                self.value(depth + 1)?;
            } else {
                self.wanted_value(depth, matched, &mut found, scratch)?;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(found);
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// The value of a member some path goes through (`rest` non-empty: only
    /// an object holds the rest of it) or ends at (`rest` empty).
    fn wanted_value(
        &mut self,
        depth: usize,
        rests: Paths<'_>,
        found: &mut Found,
        scratch: &mut String,
    ) -> Result<(), Invalid> {
        let nested = rests.map(|r| r.filter(|r| !r.is_empty()));
        let start = self.pos;
        let value = match self.peek() {
            Some(b'{') if nested.iter().any(Option::is_some) => {
                self.pos += 1;
                let inner = self.object_members(depth + 1, nested, scratch)?;
                for (slot, (rest, value)) in found.iter_mut().zip(nested.iter().zip(inner)) {
                    if rest.is_some() {
                        *slot = value;
                    }
                }
                FieldValue::Other {
                    start,
                    end: self.pos,
                }
            }
            Some(b'"') => {
                self.pos += 1;
                let (start, end, escaped) = self.string_body()?;
                if escaped {
                    FieldValue::Escaped { start, end }
                } else {
                    FieldValue::Plain { start, end }
                }
            }
            _ => {
                self.value(depth + 1)?;
                FieldValue::Other {
                    start,
                    end: self.pos,
                }
            }
        };
        for (slot, rest) in found.iter_mut().zip(rests) {
            match rest {
                Some([]) => *slot = Some(value),
                // The path goes on into something that is not an object.
                Some(_) if !matches!(self.bytes[start], b'{') => *slot = None,
                _ => {}
            }
        }
        Ok(())
    }

    fn array_elements(&mut self, depth: usize) -> Result<(), Invalid> {
        if depth >= MAX_DEPTH {
            return Err(Invalid);
        }
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.value(depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// Any JSON value at `pos`; `depth` counts the containers it sits in
    /// (the value itself included when it is one).
    fn value(&mut self, depth: usize) -> Result<(), Invalid> {
        match self.peek().ok_or(Invalid)? {
            b'"' => {
                self.pos += 1;
                self.string_body().map(drop)
            }
            b'{' => {
                self.pos += 1;
                // No path is looked for here, so the scratch stays unused.
                self.object_members(depth, [None, None], &mut String::new())
                    .map(drop)
            }
            b'[' => {
                self.pos += 1;
                self.array_elements(depth)
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Invalid),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Invalid> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), Invalid> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Invalid),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            exponent = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        // serde_json rejects numbers that overflow an f64 (`1e400`); only an
        // exponent or a very long number can, so only those pay for the check.
        if exponent || self.pos - start > SIMPLE_NUMBER_MAX_LEN {
            // Numbers are ASCII: the bytes are their text.
            let text = std::str::from_utf8(&self.bytes[start..self.pos]).map_err(|_| Invalid)?;
            serde_json::from_str::<serde_json::Number>(text).map_err(|_| Invalid)?;
        }
        Ok(())
    }

    /// After the opening quote: validates up to and including the closing
    /// quote; returns the contents' bounds and whether they hold escapes.
    fn string_body(&mut self) -> Result<(usize, usize, bool), Invalid> {
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos = self.next_special().ok_or(Invalid)?;
            match self.bytes[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Ok((start, self.pos - 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    self.escape()?;
                }
                _ => return Err(Invalid), // control character
            }
        }
    }

    /// The first quote, backslash or control character at or after `pos`.
    fn next_special(&self) -> Option<usize> {
        let mut word = self.pos / 64;
        let mut bits = self.special.get(word)? & (!0 << (self.pos % 64));
        while bits == 0 {
            word += 1;
            bits = *self.special.get(word)?;
        }
        Some(word * 64 + bits.trailing_zeros() as usize)
    }

    /// After a backslash: one escape, with serde_json's surrogate rules.
    fn escape(&mut self) -> Result<(), Invalid> {
        let byte = self.peek().ok_or(Invalid)?;
        self.pos += 1;
        match byte {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                let unit = self.hex4()?;
                match unit {
                    0xD800..=0xDBFF => {
                        if self.bytes[self.pos..].starts_with(b"\\u") {
                            self.pos += 2;
                            let low = self.hex4()?;
                            if (0xDC00..=0xDFFF).contains(&low) {
                                Ok(())
                            } else {
                                Err(Invalid)
                            }
                        } else {
                            Err(Invalid)
                        }
                    }
                    0xDC00..=0xDFFF => Err(Invalid),
                    _ => Ok(()),
                }
            }
            _ => Err(Invalid),
        }
    }

    fn hex4(&mut self) -> Result<u16, Invalid> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or(Invalid)?;
        let mut unit = 0u16;
        for &d in digits {
            let v = (d as char).to_digit(16).ok_or(Invalid)?;
            unit = unit << 4 | v as u16;
        }
        self.pos += 4;
        Ok(unit)
    }
}

/// Unescapes the contents of a JSON string already validated by the scanner;
/// bytes that are not UTF-8 become U+FFFD, as `String::from_utf8_lossy` makes
/// them (escapes are ASCII and decode to whole characters, so repairing
/// after decoding is the same as before). The string's buffer is reused.
pub(super) fn decode_string(raw: &[u8], out: &mut String) {
    let mut bytes = std::mem::take(out).into_bytes();
    decode_bytes(raw, &mut bytes);
    *out = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(bad) => String::from_utf8_lossy(bad.as_bytes()).into_owned(),
    };
}

/// Unescapes the contents of a JSON string into bytes, without checking
/// UTF-8: the runs between escapes are copied as they are (an envelope's
/// line is read as bytes; invalid UTF-8 in it is what it would be
/// unescaped).
pub(super) fn decode_bytes(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut rest = raw;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..at]);
        let Some((&escape, after)) = rest[at + 1..].split_first() else {
            return;
        };
        rest = after;
        let code = match escape {
            b'b' => 0x8,
            b'f' => 0xC,
            b'n' => u32::from(b'\n'),
            b'r' => u32::from(b'\r'),
            b't' => u32::from(b'\t'),
            b'u' => {
                let high = hex_bytes(&mut rest);
                if (0xD800..0xDC00).contains(&high) {
                    rest = rest.get(2..).unwrap_or_default(); // "\\u"
                    let low = hex_bytes(&mut rest);
                    0x10000 + ((high - 0xD800) << 10) + low.wrapping_sub(0xDC00)
                } else {
                    high
                }
            }
            // `\"`, `\\`, `\/`; a byte of a longer character is copied
            // and the rest of it follows in the next run.
            other => {
                out.push(other);
                continue;
            }
        };
        let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
    out.extend_from_slice(rest);
}

/// Up to four hex digits (one that is not reads as 0), taken from `rest`.
fn hex_bytes(rest: &mut &[u8]) -> u32 {
    let (digits, after) = rest.split_at(rest.len().min(4));
    *rest = after;
    digits.iter().fold(0, |acc, &b| {
        acc << 4 | char::from(b).to_digit(16).unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any string as JSON writes it (escapes, `\\u` escapes, surrogate
        /// pairs) decodes to itself, as bytes and as text.
        #[test]
        fn escaped_strings_decode_to_themselves_as_bytes_and_as_text(
            text in any::<String>(),
            ascii_only in any::<bool>(),
        ) {
            let written = if ascii_only {
                // Everything beyond ASCII as `\\u` escapes (pairs for astral).
                let mut out = String::new();
                for c in text.chars() {
                    if c.is_ascii() {
                        let json = serde_json::to_string(&c.to_string()).expect("json");
                        out.push_str(&json[1..json.len() - 1]);
                    } else {
                        for unit in c.encode_utf16(&mut [0; 2]) {
                            out.push_str(&format!("\\u{unit:04x}"));
                        }
                    }
                }
                out
            } else {
                let json = serde_json::to_string(&text).expect("json");
                json[1..json.len() - 1].to_string()
            };
            let mut bytes = Vec::new();
            decode_bytes(written.as_bytes(), &mut bytes);
            prop_assert_eq!(&bytes, text.as_bytes());
            let mut decoded = String::new();
            decode_string(written.as_bytes(), &mut decoded);
            prop_assert_eq!(decoded, text);
        }
    }
}
