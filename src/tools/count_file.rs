//! `ipstats count FILE|-`: the top-N of a log file, with the service's parser
//! and in the same JSON shape as `/api/v1/top` (the window is the run).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::SystemTime;

use anyhow::Context;

use crate::config::{ConfigError, CountArgs, Input, MAX_TOP_N};
use crate::http::views::{NetworkTopView, TopView, WindowView};
use crate::pipeline::counter::Tally;
use crate::pipeline::parse::{ClientField, Parser};
use crate::pipeline::query::{Grouping, top_networks};
use crate::pipeline::window::top_k;

/// Counts every line of `input` (newline-separated; a final line without a
/// newline counts too). One reused buffer: nothing is allocated per line.
pub fn count_lines(input: impl Read, parser: &mut Parser) -> io::Result<Tally<u64>> {
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut counted = Tally::default();
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(counted);
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        counted.line(parser, text);
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
    let mut parser = Parser::new(ClientField::from(&input), input.max_line_bytes);
    let counted = if args.file.as_os_str() == "-" {
        count_lines(io::stdin().lock(), &mut parser).context("reading standard input")?
    } else {
        let file =
            File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
        count_lines(file, &mut parser)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
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
    for hint in parser.take_new_hints() {
        eprintln!("ipstats: {}", hint.advice());
    }
    let repaired = parser.take_repaired();
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

    #[test]
    fn counts_every_line_including_a_last_one_without_newline() {
        let input = b"{\"client_real_ip\":\"10.0.0.1\"}\r\nnot json\n{\"client_real_ip\":\"10.0.0.1\"}\n{\"client_real_ip\":\"::1\"}";
        let mut parser = Parser::new("client_real_ip", 1024);
        let counted = count_lines(&input[..], &mut parser).expect("reads");
        assert_eq!(
            (
                counted.requests,
                counted.counts.len(),
                counted.skipped.total()
            ),
            (3, 2, 1)
        );
    }
}
