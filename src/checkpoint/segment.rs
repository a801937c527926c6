//! Segment files: the panes one checkpoint wrote, in one file.

use std::io::{self, Write};
use std::path::Path;

use super::codec::{Reader, decode_pane, encode_pane_to, encoded_pane_len, verify_crc};
use super::sink::{Crc, Out, Sink};
use super::{CheckpointError, corrupt};
use crate::window::Pane;

const SEGMENT_MAGIC: &[u8; 8] = b"IPSSEGM1";

/// The panes one checkpoint wrote, in one file: the magic, the number of
/// panes, then each pane's length and its bytes as a pane file holds them
/// (with its own CRC); the file's CRC last. Written to `writer` as it is
/// encoded, so no copy of the segment is held; returns the bytes written.
pub(super) fn write_segment(panes: &[&Pane], writer: impl Write) -> io::Result<u64> {
    let mut out = Out::new(writer);
    let mut crc = Crc::new(&mut out);
    crc.put(SEGMENT_MAGIC);
    crc.put(&(panes.len() as u32).to_le_bytes());
    for pane in panes {
        crc.put(&(encoded_pane_len(pane) as u32).to_le_bytes());
        encode_pane_to(pane, &mut crc);
    }
    let sum = crc.finish();
    out.put(&sum.to_le_bytes());
    out.finish()
}

/// The panes of a segment file.
pub fn decode_segment(path: &Path, bytes: &[u8]) -> Result<Vec<Pane>, CheckpointError> {
    let body = verify_crc(path, bytes)?;
    let bad = || corrupt(path, "malformed segment");
    let mut r = Reader(body);
    if r.take::<8>().as_ref() != Some(SEGMENT_MAGIC) {
        return Err(corrupt(path, "not a segment file"));
    }
    let count = r.u32().ok_or_else(bad)? as usize;
    let mut panes = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = r.u32().ok_or_else(bad)? as usize;
        panes.push(decode_pane(path, r.bytes(len).ok_or_else(bad)?)?);
    }
    if !r.0.is_empty() {
        return Err(bad());
    }
    Ok(panes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::codec::encode_pane;
    use crate::checkpoint::test_support::pane;

    #[test]
    fn a_segment_is_written_as_it_is_encoded_and_reads_back_pane_by_pane() {
        // One pane larger than a block of the stream, one empty, one small.
        let many: Vec<(String, u32)> = (0..20_000u32)
            .map(|i| {
                (
                    format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                    1 + i % 5,
                )
            })
            .collect();
        let pairs: Vec<(&str, u32)> = many.iter().map(|(ip, n)| (ip.as_str(), *n)).collect();
        let panes = [
            pane(1, &pairs),
            pane(2, &[]),
            pane(3, &[("2001:db8::1", 9)]),
        ];
        let refs: Vec<&Pane> = panes.iter().map(|p| &**p).collect();
        let mut bytes = Vec::new();
        let written = write_segment(&refs, &mut bytes).expect("writes");
        assert_eq!(written, bytes.len() as u64);
        // The layout is what the builds before wrote from one buffer.
        let mut expected = SEGMENT_MAGIC.to_vec();
        expected.extend_from_slice(&3u32.to_le_bytes());
        for p in &panes {
            let one = encode_pane(p);
            assert_eq!(encoded_pane_len(p), one.len());
            expected.extend_from_slice(&(one.len() as u32).to_le_bytes());
            expected.extend_from_slice(&one);
        }
        let crc = crc32fast::hash(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        assert!(bytes == expected, "the segment's bytes differ");
        let decoded = decode_segment(Path::new("s"), &bytes).expect("decodes");
        assert_eq!(decoded.len(), 3);
        for (d, p) in decoded.iter().zip(&panes) {
            assert_eq!((d.seq, &d.counts), (p.seq, &p.counts));
        }
        // A writer that fails part way: the error, not a short file.
        let mut short = [0u8; 1000];
        let err = write_segment(&refs, &mut short[..]).expect_err("no room");
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
    }
}
