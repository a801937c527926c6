//! `ipstats count FILE|-`: the top-N of a log file, with the service's parser
//! and in the same JSON shape as `/api/v1/top` (the window is the run).
//!
//! The input is read in large blocks cut at a line end; one thread per core
//! counts blocks with its own parser and tally, merged at the end (counts
//! are sums, so the order blocks are counted in does not matter).

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Mutex, mpsc};
use std::time::SystemTime;

use anyhow::Context;

use crate::config::{ConfigError, CountArgs, Input, MAX_TOP_N};
use crate::http::views::{NetworkTopView, TopView, WindowView};
use crate::pipeline::counter::Tally;
use crate::pipeline::hint::Hint;
use crate::pipeline::parse::{ClientField, Parser};
use crate::pipeline::query::{Grouping, top_networks};
use crate::pipeline::window::top_k;

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
}

impl Counted {
    fn merge(&mut self, mut parser: Parser, tally: Tally<u64>) {
        for (ip, n) in tally.counts.iter() {
            self.tally.counts.add(ip, n);
        }
        self.tally.requests += tally.requests;
        self.tally.skipped.merge(&tally.skipped);
        for hint in parser.take_new_hints() {
            if !self.hints.contains(&hint) {
                self.hints.push(hint);
            }
        }
        self.repaired += parser.take_repaired();
    }
}

/// Counts every line of `input` (newline-separated; a final line without a
/// newline counts too) on `workers` threads, each with a parser from
/// `parser`. Blocks are recycled: nothing is allocated per line or block
/// once the first few are in flight.
pub fn count_lines(
    input: impl Read,
    parser: impl Fn() -> Parser + Sync,
    workers: usize,
) -> io::Result<Counted> {
    count_in_blocks(input, parser, workers, BLOCK_BYTES)
}

fn count_in_blocks(
    mut input: impl Read,
    parser: impl Fn() -> Parser + Sync,
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
                let (blocks, emptied, parser) = (&blocks, emptied.clone(), &parser);
                scope.spawn(move || {
                    let mut parser = parser();
                    let mut tally = Tally::default();
                    // The lock is held only while waiting for the next block.
                    while let Ok(block) = blocks
                        .lock()
                        .map_err(drop)
                        .and_then(|b| b.recv().map_err(drop))
                    {
                        count_block(&block, &mut parser, &mut tally);
                        let _ = emptied.send(block);
                    }
                    (parser, tally)
                })
            })
            .collect();
        let read = read_blocks(&mut input, block_bytes, &full, &empty);
        drop(full);
        let mut counted = Counted::default();
        for worker in counting {
            let (parser, tally) = worker
                .join()
                .map_err(|_| io::Error::other("a counting thread panicked"))?;
            counted.merge(parser, tally);
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
fn count_block(block: &[u8], parser: &mut Parser, tally: &mut Tally<u64>) {
    let mut count = |line: &[u8]| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        tally.line(parser, line);
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
    let parser = || Parser::new(field.clone(), input.max_line_bytes);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
    let counted = if args.file.as_os_str() == "-" {
        count_lines(io::stdin().lock(), parser, workers).context("reading standard input")?
    } else {
        let file =
            File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
        count_lines(file, parser, workers)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let Counted {
        tally: counted,
        hints,
        repaired,
    } = counted;
    let ended = SystemTime::now();
    let elapsed = ended.duration_since(started).unwrap_or_default();
    // The window is the run.
    let window = WindowView::new(started, ended, elapsed, elapsed);
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
        );
        serde_json::to_writer(&mut stdout, &out)?;
    } else {
        let top = top_k(counted.counts.iter().collect(), args.n);
        let out = TopView::new(window, counted.requests, counted.counts.len(), &top);
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
    eprintln!(
        "counted {} requests from {} IPs in {:.2}s; skipped {} lines{}{}",
        counted.requests,
        counted.counts.len(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parser() -> Parser {
        Parser::new("client_real_ip", 1024)
    }

    #[test]
    fn counts_every_line_including_a_last_one_without_newline() {
        let input = b"{\"client_real_ip\":\"10.0.0.1\"}\r\nnot json\n{\"client_real_ip\":\"10.0.0.1\"}\n{\"client_real_ip\":\"::1\"}";
        let counted = count_lines(&input[..], parser, 2).expect("reads").tally;
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
        let counted = count_in_blocks(&input[..], parser, 3, 64).expect("reads");
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
            let got = count_in_blocks(&input[..], parser, workers, block_bytes).expect("reads").tally;
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
