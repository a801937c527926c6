//! The first pass of the JSON scan: which bytes of a line end a run of plain
//! string contents (a quote, a backslash, a control character), as a bit per
//! byte, and whether the line holds any byte >= 0x80.
//!
//! With the bits in hand, the scanner crosses a string by looking up the next
//! set bit instead of reading the string's bytes, so the bytes of a line are
//! compared sixteen at a time, once. On x86-64 the comparisons are SSE2
//! instructions, part of every x86-64 processor; elsewhere a plain loop gives
//! the same bits (the tests hold the two to each other).
//!
//! This module is one of the two places in ipstats where `unsafe` is allowed
//! (the other is `kafka::batch`): calling a function compiled for SSE2 is
//! `unsafe` in Rust even where the target always has it. The one block says
//! why it is sound; the intrinsics themselves are safe inside it.
#![allow(unsafe_code)]

/// Bytes compared per step.
const CHUNK: usize = 16;

/// Sets `words` to one bit per byte of `line` (bit `i % 64` of word `i / 64`)
/// for each quote, backslash and byte below 0x20, and zero bits past the end;
/// returns whether any byte is >= 0x80.
pub(super) fn classify(line: &[u8], words: &mut Vec<u64>) -> bool {
    words.clear();
    words.resize(line.len().div_ceil(64), 0);
    // (The SSE2 pass writes every word; the zeroes are for the plain one.)
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        // SAFETY: `classify_sse2` only needs SSE2, and this block is compiled
        // only for targets that have it (`target_feature = "sse2"`, part of
        // the x86-64 baseline). It reads `line` through safe slices only.
        unsafe { classify_sse2(line, words) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        classify_bytes(line, words)
    }
}

/// The special bits of one byte.
fn special(byte: u8) -> bool {
    byte == b'"' || byte == b'\\' || byte < 0x20
}

/// The same bits, one byte at a time: for other targets, and the tests.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
fn classify_bytes(line: &[u8], words: &mut [u64]) -> bool {
    let mut high = false;
    for (i, &byte) in line.iter().enumerate() {
        if special(byte) {
            words[i / 64] |= 1 << (i % 64);
        }
        high |= byte >= 0x80;
    }
    high
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn classify_sse2(line: &[u8], words: &mut [u64]) -> bool {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8,
    };
    let quote = _mm_set1_epi8(b'"' as i8);
    let backslash = _mm_set1_epi8(b'\\' as i8);
    let below_space = _mm_set1_epi8(0x1f);
    // Bit i of each mask is byte i of the chunk.
    let masks = |chunk: &[u8; CHUNK]| -> (u64, u64) {
        let [lo, hi] = [&chunk[..8], &chunk[8..]]
            .map(|half| i64::from_le_bytes(half.try_into().unwrap_or_default()));
        let v: __m128i = _mm_set_epi64x(hi, lo);
        // Unsigned `min(v, 0x1f) == v` is `v <= 0x1f`.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, below_space), v);
        let hits = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
            control,
        );
        (
            u64::from(_mm_movemask_epi8(hits) as u16),
            u64::from(_mm_movemask_epi8(v) as u16),
        )
    };
    // A word of bits per 64 bytes, kept in a register until whole.
    let mut high = 0;
    let mut word_of = |block: &[u8; 64]| -> u64 {
        let mut word = 0;
        for (i, chunk) in block.chunks_exact(CHUNK).enumerate() {
            let (hits, highs) = masks(chunk.try_into().unwrap_or(&[b' '; CHUNK]));
            word |= hits << (CHUNK * i);
            high |= highs;
        }
        word
    };
    let mut blocks = line.chunks_exact(64);
    for (slot, block) in words.iter_mut().zip(&mut blocks) {
        *slot = word_of(block.try_into().unwrap_or(&[b' '; 64]));
    }
    let rest = blocks.remainder();
    if let Some(last) = words.last_mut().filter(|_| !rest.is_empty()) {
        // Spaces are neither special nor high.
        let mut block = [b' '; 64];
        block[..rest.len()].copy_from_slice(rest);
        *last = word_of(&block);
    }
    high != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The bits are exactly the special bytes, at every length and
        /// alignment, and the high flag is exactly "some byte >= 0x80".
        #[test]
        fn bits_mark_exactly_the_special_bytes(
            bytes in prop::collection::vec(prop_oneof![
                0x20u8..0x7f, Just(b'"'), Just(b'\\'), 0u8..0x20, 0x80u8..=0xff,
            ], 0..300),
        ) {
            let mut words = Vec::new();
            let high = classify(&bytes, &mut words);
            prop_assert_eq!(words.len(), bytes.len().div_ceil(64));
            for (i, &byte) in bytes.iter().enumerate() {
                prop_assert_eq!(words[i / 64] >> (i % 64) & 1 == 1, special(byte), "byte {} ({:#x})", i, byte);
            }
            // Nothing past the end.
            if let Some(&last) = words.last() {
                let used = bytes.len() - 64 * (words.len() - 1);
                prop_assert_eq!(last.checked_shr(used as u32).unwrap_or(0), 0);
            }
            prop_assert_eq!(high, bytes.iter().any(|&b| b >= 0x80));
            let mut plain = vec![0; words.len()];
            prop_assert_eq!(classify_bytes(&bytes, &mut plain), high);
            prop_assert_eq!(plain, words);
        }
    }

    #[test]
    fn a_reused_buffer_holds_only_the_new_line() {
        let mut words = Vec::new();
        classify(&[b'"'; 200], &mut words);
        assert!(!classify(b"abc\"", &mut words));
        assert_eq!(words, [0b1000]);
        assert!(classify(&[0xff], &mut words));
        assert_eq!(words, [0]);
    }
}
