//! When a request happened, from the text a server logged: nginx's
//! `$time_local` (`24/Nov/2026:06:35:13 +0000`, also CLF's bracketed date),
//! RFC 3339 (`$time_iso8601`: `2026-11-24T06:35:13+00:00`, with or without a
//! fraction) and epoch seconds with an optional fraction (`$msec`:
//! `1795502113.123`). Times are epoch milliseconds.
//!
//! Consecutive lines share the same second, so [`TimeCache`] keeps the last
//! text and its value: most lines cost one short comparison.

/// Epoch milliseconds of a logged time, or `None` when the text is none of
/// the accepted forms or names an impossible date.
pub fn parse_time(text: &[u8]) -> Option<i64> {
    let text = trim(text);
    match text.first()? {
        b'0'..=b'9' if text.get(2) == Some(&b'/') => time_local(text),
        b'0'..=b'9' if text.get(4) == Some(&b'-') => rfc3339(text),
        b'0'..=b'9' => epoch(text),
        _ => None,
    }
}

/// The last text parsed and its value.
#[derive(Debug, Default)]
pub struct TimeCache {
    text: Vec<u8>,
    value: Option<i64>,
}

impl TimeCache {
    /// [`parse_time`], answered from the cache when the text repeats.
    #[inline]
    pub fn parse(&mut self, text: &[u8]) -> Option<i64> {
        if text != self.text.as_slice() {
            self.value = parse_time(text);
            self.text.clear();
            self.text.extend_from_slice(text);
        }
        self.value
    }
}

fn trim(text: &[u8]) -> &[u8] {
    let start = text.iter().position(|b| *b != b' ').unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(start, |i| i + 1);
    &text[start..end]
}

/// `n` ASCII digits at `at` as a number.
fn digits(text: &[u8], at: usize, n: usize) -> Option<i64> {
    let field = text.get(at..at + n)?;
    field.iter().try_fold(0i64, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `24/Nov/2026:06:35:13 +0000`
fn time_local(t: &[u8]) -> Option<i64> {
    if t.len() != 26 || t[2] != b'/' || t[6] != b'/' || t[11] != b':' || t[20] != b' ' {
        return None;
    }
    if t[14] != b':' || t[17] != b':' {
        return None;
    }
    let month = MONTHS.iter().position(|m| &t[3..6] == *m)? as i64 + 1;
    let offset = utc_offset(t[21], digits(t, 22, 2)?, digits(t, 24, 2)?)?;
    civil_ms(
        digits(t, 7, 4)?,
        month,
        digits(t, 0, 2)?,
        (digits(t, 12, 2)?, digits(t, 15, 2)?, digits(t, 18, 2)?),
        0,
        offset,
    )
}

/// `2026-11-24T06:35:13.250+01:00`, `…Z`; a space may stand for the `T`.
fn rfc3339(t: &[u8]) -> Option<i64> {
    rfc3339_ms(t).filter(|ms| *ms >= 0)
}

/// Epoch milliseconds of an RFC 3339 time, negative before 1970 (a time
/// asked about, which may well precede anything logged); `None` when the
/// text is not one.
pub fn rfc3339_ms(t: &[u8]) -> Option<i64> {
    if t.len() < 20 || t[4] != b'-' || t[7] != b'-' || t[13] != b':' || t[16] != b':' {
        return None;
    }
    if !matches!(t[10], b'T' | b't' | b' ') {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if t[at] == b'.' {
        let start = at + 1;
        at = start;
        while t.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        millis = (0..3).fold(0, |ms, i| {
            ms * 10
                + t.get(start + i)
                    .filter(|_| start + i < at)
                    .map_or(0, |d| i64::from(d - b'0'))
        });
    }
    let offset = match &t[at..] {
        [b'Z' | b'z'] => 0,
        [sign, h1, h2, b':', m1, m2] => {
            let zone = [*h1, *h2, *m1, *m2];
            utc_offset(*sign, digits(&zone, 0, 2)?, digits(&zone, 2, 2)?)?
        }
        _ => return None,
    };
    signed_civil_ms(
        digits(t, 0, 4)?,
        digits(t, 5, 2)?,
        digits(t, 8, 2)?,
        (digits(t, 11, 2)?, digits(t, 14, 2)?, digits(t, 17, 2)?),
        millis,
        offset,
    )
}

/// `1795502113`, `1795502113.123`: seconds since the epoch.
fn epoch(t: &[u8]) -> Option<i64> {
    let (whole, fraction) = match t.iter().position(|b| *b == b'.') {
        Some(dot) => (&t[..dot], Some(&t[dot + 1..])),
        None => (t, None),
    };
    // Up to year 5138 in seconds; more digits are not a time we accept.
    if whole.is_empty() || whole.len() > 11 {
        return None;
    }
    let seconds = digits(whole, 0, whole.len())?;
    let millis = match fraction {
        None => 0,
        Some([]) => return None,
        Some(f) => {
            if !f.iter().all(u8::is_ascii_digit) {
                return None;
            }
            (0..3).fold(0, |ms, i| {
                ms * 10 + f.get(i).map_or(0, |d| i64::from(d - b'0'))
            })
        }
    };
    Some(seconds * 1000 + millis)
}

/// `+0130` → seconds east of UTC.
fn utc_offset(sign: u8, hours: i64, minutes: i64) -> Option<i64> {
    if hours > 23 || minutes > 59 {
        return None;
    }
    let seconds = hours * 3600 + minutes * 60;
    match sign {
        b'+' => Some(seconds),
        b'-' => Some(-seconds),
        _ => None,
    }
}

/// Epoch milliseconds of a civil date and time at a UTC offset; `None` for a
/// date that does not exist (31 Feb) or a time out of range (a leap second
/// `:60` is read as the next second's start, as most parsers do).
fn civil_ms(
    year: i64,
    month: i64,
    day: i64,
    time: (i64, i64, i64),
    millis: i64,
    offset_seconds: i64,
) -> Option<i64> {
    signed_civil_ms(year, month, day, time, millis, offset_seconds).filter(|ms| *ms >= 0)
}

/// [`civil_ms`], negative before 1970.
fn signed_civil_ms(
    year: i64,
    month: i64,
    day: i64,
    (hour, minute, second): (i64, i64, i64),
    millis: i64,
    offset_seconds: i64,
) -> Option<i64> {
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: i64 = 1_795_502_113_000; // 2026-11-24T06:35:13Z

    #[test]
    fn every_accepted_form_of_one_moment() {
        for text in [
            "24/Nov/2026:06:35:13 +0000",
            "24/Nov/2026:07:35:13 +0100",
            "23/Nov/2026:22:35:13 -0800",
            "2026-11-24T06:35:13+00:00",
            "2026-11-24T06:35:13Z",
            "2026-11-24 06:35:13z",
            "2026-11-24T12:05:13+05:30",
            "1795502113",
            " 1795502113.000 ",
        ] {
            assert_eq!(parse_time(text.as_bytes()), Some(T), "{text}");
        }
        assert_eq!(parse_time(b"1795502113.25"), Some(T + 250));
        assert_eq!(parse_time(b"1795502113.1239"), Some(T + 123));
        assert_eq!(parse_time(b"2026-11-24T06:35:13.5Z"), Some(T + 500));
        assert_eq!(parse_time(b"2026-11-24T06:35:13.123456789Z"), Some(T + 123));
    }

    #[test]
    fn anything_else_is_no_time() {
        for text in [
            "",
            "-",
            "24/Nov/2026:06:35:13",
            "24/Foo/2026:06:35:13 +0000",
            "31/Feb/2026:06:35:13 +0000",
            "29/Feb/2026:06:35:13 +0000",
            "24/Nov/2026:24:00:00 +0000",
            "24/Nov/2026:06:35:13 *0000",
            "2026-11-24T06:35:13",
            "2026-13-24T06:35:13Z",
            "2026-11-24T06:35:13.Z",
            "2026-11-24T06:35:13+0000",
            "1795502113.",
            "1795502113.1x",
            "123456789012",
            "17955e2113",
            "yesterday",
        ] {
            assert_eq!(parse_time(text.as_bytes()), None, "{text:?}");
        }
        assert!(
            parse_time(b"29/Feb/2024:00:00:00 +0000").is_some(),
            "leap year"
        );
    }

    #[test]
    fn the_cache_answers_as_the_parser() {
        let mut cache = TimeCache::default();
        for text in [
            "1795502113",
            "1795502113",
            "bad",
            "bad",
            "1795502114",
            "1795502113",
        ] {
            assert_eq!(cache.parse(text.as_bytes()), parse_time(text.as_bytes()));
        }
    }

    proptest! {
        #[test]
        fn all_three_forms_agree_with_humantime(seconds in 0i64..4_102_444_800, millis in 0i64..1000) {
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis((seconds * 1000 + millis) as u64);
            let rfc = humantime::format_rfc3339_millis(when).to_string();
            prop_assert_eq!(parse_time(rfc.as_bytes()), Some(seconds * 1000 + millis));
            let epoch = format!("{seconds}.{millis:03}");
            prop_assert_eq!(parse_time(epoch.as_bytes()), Some(seconds * 1000 + millis));
            // $time_local in UTC, rebuilt from the RFC 3339 text.
            let month = &MONTHS[rfc[5..7].parse::<usize>().expect("month digits") - 1];
            let local = format!(
                "{}/{}/{}:{} +0000",
                &rfc[8..10],
                std::str::from_utf8(&month[..]).expect("ascii month"),
                &rfc[0..4],
                &rfc[11..19]
            );
            prop_assert_eq!(parse_time(local.as_bytes()), Some(seconds * 1000));
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_time(&bytes);
        }
    }
}
