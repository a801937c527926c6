//! `ipstats count FILE|-`: the top-N of a log file, with the service's parser
//! and in the same JSON shape as `/api/v1/top`; the window spans the log's
//! own times (`--time-field`), from the earliest read to the latest.
//!
//! The input is read in large blocks cut at a line end; one thread per core
//! counts blocks with its own parser and tally, merged at the end (counts
//! are sums, so the order blocks are counted in does not matter).

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::config::{ConfigError, CountArgs, Input, MAX_TOP_N};
use crate::count::Tally;
use crate::http::views::{Exactness, NetworkTopView, TopView, WindowView};
use crate::input::hint::Hint;
use crate::input::parse::{ClientField, Parser};
use crate::query::{Grouping, top_networks};
use crate::vocab::SkipReason;
use crate::window::top_k;

/// Bytes read per block (a line longer than this makes its block longer).
const BLOCK_BYTES: u64 = 4 << 20;

/// What a whole input counted to.
#[derive(Debug, Default)]
pub struct Counted {
    pub tally: Tally<u64>,
    /// Settings the skipped lines point to, each once.
    pub hints: Vec<Hint>,
    /// Lines that held invalid UTF-8 (read with U+FFFD).
    pub repaired: u64,
    /// The earliest and the latest time read (epoch ms), if any line had one.
    pub span: Option<(i64, i64)>,
}

impl Counted {
    fn merge(&mut self, mut reader: Reader) {
        let tally = reader.tally;
        for (ip, n) in tally.counts.iter() {
            self.tally.counts.add(ip, n);
        }
        self.tally.requests += tally.requests;
        self.tally.skipped.merge(&tally.skipped);
        for parser in [&mut reader.timed, &mut reader.untimed] {
            for hint in parser.take_new_hints() {
                if !self.hints.contains(&hint) {
                    self.hints.push(hint);
                }
            }
        }
        // The timed parser read every line (the untimed one only re-read some).
        self.repaired += reader.timed.take_repaired();
        self.span = widen(self.span, reader.span);
    }
}

fn widen(a: Option<(i64, i64)>, b: Option<(i64, i64)>) -> Option<(i64, i64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (a, b) => a.or(b),
    }
}

/// One counting thread's parsers and tally. A line is read with its time
/// when it has one; a line without a readable time is counted all the same
/// (read again without it), as a log file need not carry times.
pub struct Reader {
    timed: Parser,
    untimed: Parser,
    tally: Tally<u64>,
    span: Option<(i64, i64)>,
}

impl Reader {
    pub fn new(field: &ClientField, time_field: &str, max_line_bytes: usize) -> Reader {
        Reader {
            timed: Parser::new(field.clone().with_time(Some(time_field)), max_line_bytes),
            untimed: Parser::new(field.clone(), max_line_bytes),
            tally: Tally::default(),
            span: None,
        }
    }

    fn line(&mut self, line: &[u8]) {
        match self.timed.parse_record(line) {
            Ok((ip, time)) => {
                self.tally.counts.add(ip, 1);
                self.tally.requests += 1;
                if let Some(t) = time {
                    self.span = widen(self.span, Some((t, t)));
                }
            }
            Err(SkipReason::BadTime) => self.tally.line(&mut self.untimed, line),
            Err(reason) => self.tally.skipped.add(reason),
        }
    }
}

/// Counts every line of `input` (newline-separated; a final line without a
/// newline counts too) on `workers` threads, each with a parser from
/// `parser`. Blocks are recycled: nothing is allocated per line or block
/// once the first few are in flight.
pub fn count_lines(
    input: impl Read,
    reader: impl Fn() -> Reader + Sync,
    workers: usize,
) -> io::Result<Counted> {
    count_in_blocks(input, reader, workers, BLOCK_BYTES)
}

fn count_in_blocks(
    mut input: impl Read,
    reader: impl Fn() -> Reader + Sync,
    workers: usize,
    block_bytes: u64,
) -> io::Result<Counted> {
    let workers = workers.max(1);
    let (full, blocks) = mpsc::sync_channel::<Vec<u8>>(workers);
    let blocks = Mutex::new(blocks);
    let (emptied, empty) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let counting: Vec<_> = (0..workers)
            .map(|_| {
                let (blocks, emptied, reader) = (&blocks, emptied.clone(), &reader);
                scope.spawn(move || {
                    let mut reader = reader();
                    // The lock is held only while waiting for the next block.
                    while let Ok(block) = blocks
                        .lock()
                        .map_err(drop)
                        .and_then(|b| b.recv().map_err(drop))
                    {
                        count_block(&block, &mut reader);
                        let _ = emptied.send(block);
                    }
                    reader
                })
            })
            .collect();
        let read = read_blocks(&mut input, block_bytes, &full, &empty);
        drop(full);
        let mut counted = Counted::default();
        for worker in counting {
            let reader = worker
                .join()
                .map_err(|_| io::Error::other("a counting thread panicked"))?;
            counted.merge(reader);
        }
        read.map(|()| counted)
    })
}

/// Reads `input` into blocks that end at a line end (the last may not) and
/// sends them; reuses the blocks counted so far.
fn read_blocks(
    input: &mut impl Read,
    block_bytes: u64,
    full: &mpsc::SyncSender<Vec<u8>>,
    empty: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    let send = |block| {
        full.send(block)
            .map_err(|_| io::Error::other("the counting threads are gone"))
    };
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut block = empty.try_recv().unwrap_or_default();
        block.clear();
        block.append(&mut carry);
        let read = input.by_ref().take(block_bytes).read_to_end(&mut block)?;
        if read == 0 {
            return if block.is_empty() {
                Ok(())
            } else {
                send(block)
            };
        }
        match memchr::memrchr(b'\n', &block) {
            Some(end) => carry.extend_from_slice(&block[end + 1..]),
            // A line longer than the block: read on.
            None => {
                carry = block;
                continue;
            }
        }
        block.truncate(block.len() - carry.len());
        send(block)?;
    }
}

/// Counts the lines of one block (line ends found with `memchr`).
fn count_block(block: &[u8], reader: &mut Reader) {
    let mut count = |line: &[u8]| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        reader.line(line);
    };
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', block) {
        count(&block[start..end]);
        start = end + 1;
    }
    if start < block.len() {
        count(&block[start..]);
    }
}

pub fn run(args: CountArgs) -> anyhow::Result<()> {
    if !(1..=MAX_TOP_N).contains(&args.n) {
        return Err(ConfigError {
            setting: "--n",
            rule: format!("{} is outside 1..={MAX_TOP_N}", args.n),
        }
        .into());
    }
    let input = Input::try_from(args.input)?;
    let started = SystemTime::now();
    let field = ClientField::from(&input);
    let reader = || Reader::new(&field, &args.time.time_field, input.max_line_bytes);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
    let counted = if args.file.as_os_str() == "-" {
        count_lines(io::stdin().lock(), reader, workers).context("reading standard input")?
    } else {
        let file =
            File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
        count_lines(file, reader, workers)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let Counted {
        tally: counted,
        hints,
        repaired,
        span,
    } = counted;
    let elapsed = started.elapsed().unwrap_or_default();
    let window = match span {
        Some((earliest, latest)) => {
            let at = |ms: i64| UNIX_EPOCH + Duration::from_millis(ms.max(0).unsigned_abs());
            let length = at(latest).duration_since(at(earliest)).unwrap_or_default();
            WindowView::new(at(earliest), at(latest), length, length)
        }
        // No line had a time: the window says so by being empty at the epoch.
        None => WindowView::new(UNIX_EPOCH, UNIX_EPOCH, Duration::ZERO, Duration::ZERO),
    };
    let mut stdout = io::stdout().lock();
    if args.prefix4.is_some() || args.prefix6.is_some() {
        let grouping = Grouping {
            prefix4: args.prefix4.unwrap_or(32),
            prefix6: args.prefix6.unwrap_or(128),
        };
        let top = top_networks(counted.counts.iter(), grouping, args.n);
        let out = NetworkTopView::new(
            window,
            counted.requests,
            counted.counts.len(),
            grouping,
            top,
            Exactness::EXACT,
        );
        serde_json::to_writer(&mut stdout, &out)?;
    } else {
        let top = top_k(counted.counts.iter().collect(), args.n);
        let out = TopView::new(
            window,
            counted.requests,
            counted.counts.len(),
            &top,
            Exactness::EXACT,
        );
        serde_json::to_writer(&mut stdout, &out)?;
    }
    writeln!(stdout)?;
    let skipped: Vec<String> = counted
        .skipped
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    for hint in hints {
        eprintln!("ipstats: {}", hint.advice());
    }
    if span.is_none() && counted.requests > 0 {
        eprintln!(
            "ipstats: no line had a readable time at --time-field {:?}: the window is empty",
            args.time.time_field
        );
    }
    eprintln!(
        "counted {} {} from {} {} in {:.2}s; skipped {} lines{}{}",
        counted.requests,
        plural(counted.requests, "request", "requests"),
        counted.counts.len(),
        plural(counted.counts.len() as u64, "address", "addresses"),
        elapsed.as_secs_f64(),
        counted.skipped.total(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join(", "))
        },
        if repaired == 0 {
            String::new()
        } else {
            format!("; {repaired} lines held invalid UTF-8 (read with U+FFFD)")
        }
    );
    Ok(())
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parser() -> Parser {
        Parser::new("client_real_ip", 1024)
    }

    fn reader() -> Reader {
        Reader::new(&ClientField::from("client_real_ip"), "time_local", 1024)
    }

    #[test]
    fn the_window_spans_the_logs_own_times() {
        let input =
            b"{\"client_real_ip\":\"10.0.0.1\",\"time_local\":\"24/Nov/2026:06:35:14 +0000\"}\n\
            {\"client_real_ip\":\"10.0.0.2\"}\n\
            {\"client_real_ip\":\"10.0.0.1\",\"time_local\":\"24/Nov/2026:06:35:13 +0000\"}\n\
            {\"client_real_ip\":\"10.0.0.3\",\"time_local\":\"24/Nov/2026:07:35:13 +0100\"}\n";
        let counted = count_in_blocks(&input[..], reader, 2, 40).expect("reads");
        const T: i64 = 1_795_502_113_000; // 2026-11-24T06:35:13Z
        assert_eq!(counted.span, Some((T, T + 1000)));
        assert_eq!(
            counted.tally.requests, 4,
            "a line without a time counts too"
        );
        assert_eq!(counted.tally.skipped.total(), 0);
    }

    #[test]
    fn counts_every_line_including_a_last_one_without_newline() {
        let input = b"{\"client_real_ip\":\"10.0.0.1\"}\r\nnot json\n{\"client_real_ip\":\"10.0.0.1\"}\n{\"client_real_ip\":\"::1\"}";
        let counted = count_lines(&input[..], reader, 2).expect("reads").tally;
        assert_eq!(
            (
                counted.requests,
                counted.counts.len(),
                counted.skipped.total()
            ),
            (3, 2, 1)
        );
    }

    #[test]
    fn hints_and_repaired_lines_are_gathered_from_every_thread() {
        let mut input = Vec::new();
        for i in 0..400 {
            match i % 4 {
                0 => input.extend_from_slice(b"{\"client_real_ip\":\"10.0.0.1\",\"a\":\"\xff\"}\n"),
                1 => input.extend_from_slice(b"{\"client_real_ip\":\\x2210.0.0.2\\x22}\n"),
                _ => input.extend_from_slice(b"{\"client_real_ip\":\"10.0.0.3\"}\n"),
            }
        }
        let counted = count_in_blocks(&input[..], reader, 3, 64).expect("reads");
        assert_eq!(counted.repaired, 100);
        assert_eq!(counted.hints, [Hint::NginxDefaultEscaping]);
        assert_eq!(counted.tally.requests, 300);
    }

    proptest! {
        /// Any cut into blocks, on any number of threads, counts what one
        /// pass over the lines counts.
        #[test]
        fn blocks_and_threads_count_what_one_pass_counts(
            lines in prop::collection::vec(prop_oneof![
                Just(b"{\"client_real_ip\":\"10.0.0.1\"}".to_vec()),
                Just(b"{\"client_real_ip\":\"10.0.0.2\"}\r".to_vec()),
                Just(b"{\"client_real_ip\":\"2001:db8::7\"}".to_vec()),
                Just(b"not json".to_vec()),
                Just(b"{\"client_real_ip\":\"10.0.0.4\",\"time_local\":\"24/Nov/2026:06:35:13 +0000\"}".to_vec()),
                Just(b"{\"client_real_ip\":\"10.0.0.5\",\"time_local\":\"soon\"}".to_vec()),
                Just(Vec::new()),
                Just(format!("{{\"client_real_ip\":\"10.9.9.9\",\"x\":\"{}\"}}", "y".repeat(1500)).into_bytes()),
            ], 0..60),
            trailing_newline in any::<bool>(),
            block_bytes in 1u64..400,
            workers in 1usize..4,
        ) {
            let mut input = lines.join(&b'\n');
            if trailing_newline && !lines.is_empty() {
                input.push(b'\n');
            }
            let mut one = parser();
            let mut expected = Tally::<u64>::default();
            if !input.is_empty() {
                let body = input.strip_suffix(b"\n").unwrap_or(&input);
                for line in body.split(|&b| b == b'\n') {
                    expected.line(&mut one, line.strip_suffix(b"\r").unwrap_or(line));
                }
            }
            let got = count_in_blocks(&input[..], reader, workers, block_bytes).expect("reads").tally;
            let sorted = |t: &Tally<u64>| {
                let mut v: Vec<_> = t.counts.iter().collect();
                v.sort();
                v
            };
            prop_assert_eq!(got.requests, expected.requests);
            prop_assert_eq!(got.skipped.total(), expected.skipped.total());
            prop_assert_eq!(sorted(&got), sorted(&expected));
        }
    }
}
