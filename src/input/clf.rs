//! NCSA Common and Combined Log Format, as nginx (`combined`, its default)
//! and Apache (`common`, `combined`) write it:
//!
//! ```text
//! host ident user [time] "request" status bytes ["referer" "user-agent" [more...]]
//! ```
//!
//! The client is the first field; the time is the bracketed date. Quoted
//! fields may hold escapes (nginx writes `\x22` for a quote, Apache `\"`), so
//! a backslash always takes the byte after it. Bytes that are not UTF-8 may
//! appear anywhere (nginx writes them raw); only the structure is read. A
//! line without that structure is `bad_format`; after `bytes`, two quoted
//! fields (combined) may follow, then anything (custom additions).

use crate::vocab::SkipReason;

/// The fields of one CLF line that ipstats reads.
#[derive(Debug, PartialEq, Eq)]
pub struct ClfLine<'a> {
    /// The first field: the client address as written (`-` when unknown).
    pub host: &'a [u8],
    /// Between the brackets: `24/Nov/2026:06:35:13 +0000`.
    pub time: &'a [u8],
}

/// The line's host and time, or `bad_format`.
pub fn parse(line: &[u8]) -> Result<ClfLine<'_>, SkipReason> {
    let mut r = Fields { line, pos: 0 };
    let host = r.token()?;
    r.token()?; // ident
    r.token()?; // user
    let time = r.bracketed()?;
    r.space()?;
    r.quoted()?; // request
    r.space()?;
    r.number(false)?; // status
    r.space()?;
    r.number(true)?; // bytes, or -
    if r.at_end() {
        return Ok(ClfLine { host, time }); // common
    }
    r.space()?;
    r.quoted()?; // referer
    r.space()?;
    r.quoted()?; // user agent
    // Combined; custom formats append more after a space.
    if r.at_end() || r.peek() == Some(b' ') {
        Ok(ClfLine { host, time })
    } else {
        Err(SkipReason::BadFormat)
    }
}

struct Fields<'a> {
    line: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos == self.line.len()
    }

    fn space(&mut self) -> Result<(), SkipReason> {
        if self.peek() == Some(b' ') {
            self.pos += 1;
            Ok(())
        } else {
            Err(SkipReason::BadFormat)
        }
    }

    /// A non-empty run of bytes up to a space, and the space.
    fn token(&mut self) -> Result<&'a [u8], SkipReason> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == b' ' {
                break;
            }
            if b == b'"' || b == b'[' || b < 0x20 {
                return Err(SkipReason::BadFormat);
            }
            self.pos += 1;
        }
        let token = &self.line[start..self.pos];
        if token.is_empty() {
            return Err(SkipReason::BadFormat);
        }
        self.space()?;
        Ok(token)
    }

    /// `[...]`: the contents, without brackets.
    fn bracketed(&mut self) -> Result<&'a [u8], SkipReason> {
        if self.peek() != Some(b'[') {
            return Err(SkipReason::BadFormat);
        }
        let start = self.pos + 1;
        let len = self.line[start..]
            .iter()
            .position(|&b| b == b']')
            .filter(|&n| n > 0)
            .ok_or(SkipReason::BadFormat)?;
        self.pos = start + len + 1;
        Ok(&self.line[start..start + len])
    }

    /// `"..."`, where a backslash escapes the byte after it. A user agent
    /// runs to a hundred bytes and more, so the quotes and backslashes are
    /// looked for many bytes at a time (`memchr2`).
    fn quoted(&mut self) -> Result<(), SkipReason> {
        if self.peek() != Some(b'"') {
            return Err(SkipReason::BadFormat);
        }
        self.pos += 1;
        loop {
            let rest = self.line.get(self.pos..).ok_or(SkipReason::BadFormat)?;
            let at = memchr::memchr2(b'"', b'\\', rest).ok_or(SkipReason::BadFormat)?;
            self.pos += at;
            if self.line[self.pos] == b'"' {
                self.pos += 1;
                return Ok(());
            }
            self.pos += 2;
        }
    }

    /// Digits (`-` too when `dash`), up to a space or the end.
    fn number(&mut self, dash: bool) -> Result<(), SkipReason> {
        if dash && self.peek() == Some(b'-') {
            self.pos += 1;
            return Ok(());
        }
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        if self.pos == start || !(self.at_end() || self.peek() == Some(b' ')) {
            return Err(SkipReason::BadFormat);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Where a quoted field starting at `line[0]` ends, a byte at a time:
    /// the definition `Fields::quoted` is held to.
    fn quoted_end(line: &[u8]) -> Option<usize> {
        if line.first() != Some(&b'"') {
            return None;
        }
        let mut pos = 1;
        loop {
            match *line.get(pos)? {
                b'"' => return Some(pos + 1),
                b'\\' => pos += 2,
                _ => pos += 1,
            }
        }
    }

    proptest! {
        #[test]
        fn quoted_fields_end_where_a_byte_at_a_time_reading_ends_them(
            bytes in prop::collection::vec(prop_oneof![
                Just(b'"'), Just(b'\\'), Just(b'a'), Just(b' '), any::<u8>(),
            ], 0..200),
        ) {
            let mut fields = Fields { line: &bytes, pos: 0 };
            let got = fields.quoted().ok().map(|()| fields.pos);
            prop_assert_eq!(got, quoted_end(&bytes));
        }
    }

    fn host(line: &[u8]) -> Result<&[u8], SkipReason> {
        parse(line).map(|l| l.host)
    }

    #[test]
    fn nginx_combined_as_nginx_writes_it() {
        let line = br#"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] "GET /index.html?q=1 HTTP/1.1" 200 612 "-" "curl/8.5.0""#;
        let parsed = parse(line).expect("combined");
        assert_eq!(parsed.host, b"203.0.113.7");
        assert_eq!(parsed.time, b"24/Nov/2026:06:35:13 +0000");
        // nginx escapes a quote as \x22 and writes raw bytes >= 0x80.
        let hostile = b"2001:db8::7 - alice [24/Nov/2026:06:35:13 +0000] \"GET /\\x22\xff HTTP/1.1\" 404 0 \"http://a/\\x22b\" \"Mozilla \xc3\xa9 \\x22x\\x22 \xfe\"";
        assert_eq!(host(hostile), Ok(&b"2001:db8::7"[..]));
        // An empty or garbage request line is logged as such.
        assert_eq!(
            host(br#"198.51.100.1 - - [24/Nov/2026:06:35:13 +0000] "-" 400 0 "-" "-""#),
            Ok(&b"198.51.100.1"[..])
        );
        assert_eq!(
            host(
                br#"198.51.100.1 - - [24/Nov/2026:06:35:13 +0000] "\x16\x03\x01" 400 157 "-" "-""#
            ),
            Ok(&b"198.51.100.1"[..])
        );
    }

    #[test]
    fn apache_common_and_escaped_quotes_and_custom_additions() {
        assert_eq!(
            host(br#"192.0.2.5 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#),
            Ok(&b"192.0.2.5"[..])
        );
        assert_eq!(
            host(br#"192.0.2.5 - - [10/Oct/2000:13:55:36 -0700] "GET /a\"b HTTP/1.0" 200 - "-" "agent \"quoted\"""#),
            Ok(&b"192.0.2.5"[..])
        );
        assert_eq!(
            host(br#"192.0.2.5 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 5 "-" "a" "10.0.0.1, 10.0.0.2" 0.004"#),
            Ok(&b"192.0.2.5"[..])
        );
    }

    #[test]
    fn anything_else_is_bad_format() {
        for line in [
            &b""[..],
            b"{\"client_real_ip\":\"1.2.3.4\"}",
            b"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] \"GET / HTTP/1.1\" 200",
            b"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] \"GET / HTTP/1.1 200 612",
            b"203.0.113.7 - - 24/Nov/2026:06:35:13 \"GET / HTTP/1.1\" 200 612",
            b"203.0.113.7 - - [] \"GET / HTTP/1.1\" 200 612",
            b"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] \"GET / HTTP/1.1\" OK 612",
            b"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] \"GET / HTTP/1.1\" 200 612 \"-\"",
            b"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] \"GET / HTTP/1.1\" 200 612 \"-\" \"a\"x",
            b"203.0.113.7  - [24/Nov/2026:06:35:13 +0000] \"GET / HTTP/1.1\" 200 612",
            b"203.0.113.7 - - [24/Nov/2026:06:35:13 +0000] \"GET / \\",
        ] {
            assert_eq!(
                parse(line),
                Err(SkipReason::BadFormat),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
