//! Where encoded checkpoint bytes go: a buffer, a byte count, or a file
//! written as it is encoded, with a CRC-32 taken on the way. A segment is
//! streamed to its file, so no copy of it is ever held in memory.

use std::io::{self, Write};

/// A destination for encoded bytes.
pub(super) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts what would be written: a pane's length, before it is written.
#[derive(Default)]
pub(super) struct Length(pub usize);

impl Sink for Length {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Bytes passed on in blocks, each added to a CRC-32 on the way: hashing
/// and writing a block at a time costs what hashing a whole buffer did.
pub(super) struct Crc<'a, S: Sink> {
    inner: &'a mut S,
    hasher: crc32fast::Hasher,
    block: Vec<u8>,
}

const BLOCK: usize = 64 * 1024;

impl<'a, S: Sink> Crc<'a, S> {
    pub(super) fn new(inner: &'a mut S) -> Self {
        Crc {
            inner,
            hasher: crc32fast::Hasher::new(),
            block: Vec::with_capacity(BLOCK),
        }
    }

    fn flush(&mut self) {
        self.hasher.update(&self.block);
        self.inner.put(&self.block);
        self.block.clear();
    }

    /// Passes on what is pending; the CRC-32 of everything put.
    pub(super) fn finish(mut self) -> u32 {
        self.flush();
        self.hasher.finalize()
    }
}

impl<S: Sink> Sink for Crc<'_, S> {
    fn put(&mut self, bytes: &[u8]) {
        if self.block.len() + bytes.len() > BLOCK {
            self.flush();
        }
        if bytes.len() > BLOCK {
            self.hasher.update(bytes);
            self.inner.put(bytes);
        } else {
            self.block.extend_from_slice(bytes);
        }
    }
}

/// A writer as a sink: the first error is kept, and nothing is written
/// after it.
pub(super) struct Out<W: Write> {
    writer: W,
    error: Option<io::Error>,
    written: u64,
}

impl<W: Write> Out<W> {
    pub(super) fn new(writer: W) -> Self {
        Out {
            writer,
            error: None,
            written: 0,
        }
    }

    /// The bytes written, or the first error.
    pub(super) fn finish(self) -> io::Result<u64> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.written),
        }
    }
}

impl<W: Write> Sink for Out<W> {
    fn put(&mut self, bytes: &[u8]) {
        if self.error.is_none() {
            match self.writer.write_all(bytes) {
                Ok(()) => self.written += bytes.len() as u64,
                Err(e) => self.error = Some(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_and_the_bytes_are_those_of_everything_put_at_any_piece_size() {
        let data: Vec<u8> = (0..3 * BLOCK + 17).map(|i| (i * 31 % 251) as u8).collect();
        for piece in [1, 7, 4096, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 5] {
            let mut out = Vec::new();
            let mut crc = Crc::new(&mut out);
            for chunk in data.chunks(piece) {
                crc.put(chunk);
            }
            let sum = crc.finish();
            assert_eq!(out, data, "piece {piece}");
            assert_eq!(sum, crc32fast::hash(&data), "piece {piece}");
        }
    }

    #[test]
    fn a_write_error_is_kept_and_nothing_follows_it() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk full"));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Out::new(Full(5));
        out.put(b"abc");
        out.put(b"defg");
        out.put(b"h");
        let err = out.finish().err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("disk full"));
        let mut ok = Out::new(Vec::new());
        ok.put(b"abc");
        ok.put(b"de");
        assert_eq!(ok.finish().ok(), Some(5));
    }
}
