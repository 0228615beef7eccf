//! Huffman decoding of HPACK string literals (RFC 7541 §5.2 and Appendix B).
//!
//! The code is canonical (codes of each length are consecutive, in symbol order, and shorter codes
//! come first), which the tables below are built on, at compile time, from [`CODES`], the table of
//! Appendix B; the construction checks that property and that the code is complete. Decoding keeps
//! up to 64 input bits in an accumulator. A direct lookup on the next [`FAST_BITS`] bits yields the
//! codes that fit in them, up to two (the common header characters have codes of 5 to 8 bits);
//! a longer code is found by comparing the next 32 bits with the limit of each code length.
//!
//! Strictness (RFC 7541 §5.2): a string containing the EOS symbol is rejected, and the padding after
//! the last symbol must be at most 7 bits, all ones (a prefix of EOS).

use bytes::BytesMut;

use super::HpackError;

/// The code of each symbol (0..=255, and 256 for EOS): the code bits right-aligned, and the number of
/// bits. Transcribed from RFC 7541 Appendix B.
pub(super) const CODES: [(u32, u8); 257] = [
    // 0..=31: control characters
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    // 32..=63: ' ' to '?'
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    // 64..=95: '@' to '_'
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    // 96..=127: '`' to DEL
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    // 128..=159
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    // 160..=191
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    // 192..=223
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    // 224..=255
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    // 256: EOS
    (0x3fffffff, 30),
];

/// The EOS symbol, which must never appear inside a string.
const EOS: u16 = 256;
/// The shortest and longest code lengths.
const MIN_LEN: u32 = 5;
const MAX_LEN: u32 = 30;
/// The next this many bits index [`FAST`].
const FAST_BITS: u32 = 12;
/// The longest padding allowed after the last symbol (RFC 7541 §5.2).
const MAX_PADDING_BITS: u32 = 7;

/// For each value of the next [`FAST_BITS`] bits, the codes they hold completely (up to two):
/// `count << 25 | total_len << 20 | first_len << 16 | second << 8 | first`; `count` 0 when the
/// first code is longer than [`FAST_BITS`].
static FAST: [u32; 1 << FAST_BITS] = build_fast();
/// The canonical decoding tables.
static CANONICAL: Canonical = build_canonical();

/// Decoding tables of the canonical code, indexed by code length.
struct Canonical {
    /// One past the last code of each length, left-aligned in 32 bits (as `u64`, since the last one
    /// is 2^32): the next 32 bits start with a code of the smallest length whose limit exceeds them.
    limit: [u64; MAX_LEN as usize + 1],
    /// The first code of each length, right-aligned.
    first: [u32; MAX_LEN as usize + 1],
    /// Where the symbols of each length start in `symbols`.
    offset: [u16; MAX_LEN as usize + 1],
    /// Symbols sorted by (code length, symbol), i.e. in code order.
    symbols: [u16; 257],
}

const fn build_canonical() -> Canonical {
    let mut count = [0u16; MAX_LEN as usize + 1];
    let mut symbol = 0;
    while symbol < CODES.len() {
        let len = CODES[symbol].1 as u32;
        assert!(len >= MIN_LEN && len <= MAX_LEN, "code length out of range");
        count[len as usize] += 1;
        symbol += 1;
    }
    let mut table = Canonical {
        limit: [0; MAX_LEN as usize + 1],
        first: [0; MAX_LEN as usize + 1],
        offset: [0; MAX_LEN as usize + 1],
        symbols: [0; 257],
    };
    // Canonical assignment: each length starts where the previous one ended, shifted left.
    let mut code: u64 = 0;
    let mut offset: u16 = 0;
    let mut len = 1;
    while len <= MAX_LEN as usize {
        code <<= 1;
        table.first[len] = code as u32;
        table.offset[len] = offset;
        code += count[len] as u64;
        offset += count[len];
        table.limit[len] = code << (32 - len);
        len += 1;
    }
    // A complete code uses up the whole code space.
    assert!(code == 1 << MAX_LEN, "the code is not complete");
    // Symbols in code order; every transcribed code must be the canonical one.
    let mut next = table.offset;
    let mut symbol = 0;
    while symbol < CODES.len() {
        let (code, len) = CODES[symbol];
        let len = len as usize;
        let rank = next[len];
        assert!(code == table.first[len] + (rank - table.offset[len]) as u32, "the code is not canonical");
        table.symbols[rank as usize] = symbol as u16;
        next[len] += 1;
        symbol += 1;
    }
    table
}

const fn build_fast() -> [u32; 1 << FAST_BITS] {
    // First pass: the first code of each window, as `len << 16 | symbol` (0: longer than the window).
    let mut single = [0u32; 1 << FAST_BITS];
    let mut symbol = 0;
    while symbol < CODES.len() {
        let (code, len) = CODES[symbol];
        let len = len as u32;
        if len <= FAST_BITS {
            let base = (code as usize) << (FAST_BITS - len);
            let mut i = 0;
            while i < 1 << (FAST_BITS - len) {
                assert!(single[base + i] == 0, "a code is the prefix of another");
                single[base + i] = len << 16 | symbol as u32;
                i += 1;
            }
        }
        symbol += 1;
    }
    // Second pass: a second code fits when it ends within the window's bits after the first one.
    let mut fast = [0u32; 1 << FAST_BITS];
    let mut window = 0;
    while window < fast.len() {
        let first = single[window];
        if first != 0 {
            let first_len = first >> 16;
            let second = single[(window << first_len) & ((1 << FAST_BITS) - 1)];
            let second_len = second >> 16;
            fast[window] = if second != 0 && first_len + second_len <= FAST_BITS {
                2 << 25
                    | (first_len + second_len) << 20
                    | first_len << 16
                    | (second & 0xff) << 8
                    | (first & 0xff)
            } else {
                1 << 25 | first_len << 20 | first_len << 16 | (first & 0xff)
            };
        }
        window += 1;
    }
    fast
}

/// The symbol whose code starts the left-aligned bits `acc`, and its length.
#[inline]
fn next_symbol(acc: u64) -> (u16, u32) {
    let fast = FAST[(acc >> (64 - FAST_BITS)) as usize & ((1 << FAST_BITS) - 1)];
    if fast != 0 {
        return ((fast & 0xff) as u16, (fast >> 16) & 0xf);
    }
    slow_symbol(acc)
}

/// [`next_symbol`] for a code longer than [`FAST_BITS`].
#[inline(never)]
fn slow_symbol(acc: u64) -> (u16, u32) {
    let window = acc >> 32;
    let mut len = FAST_BITS + 1;
    while len < MAX_LEN {
        if window < CANONICAL.limit[len as usize] {
            break;
        }
        len += 1;
    }
    // `len` is at most MAX_LEN, whose limit (2^32) exceeds every window.
    let code = (window >> (32 - len)) as u32;
    let rank = usize::from(CANONICAL.offset[len as usize])
        + (code.wrapping_sub(CANONICAL.first[len as usize])) as usize;
    (CANONICAL.symbols.get(rank).copied().unwrap_or(EOS), len)
}

/// The most bytes that `encoded_len` bytes of Huffman code can decode to (the shortest code is 5
/// bits).
pub(super) fn max_decoded_len(encoded_len: usize) -> usize {
    encoded_len.saturating_mul(8) / 5 + 1
}

/// Decodes the Huffman-coded string `src`, appending the decoded bytes to `out`.
///
/// On error, `out` is left as it was.
pub(super) fn decode(src: &[u8], out: &mut BytesMut) -> Result<(), HpackError> {
    let start = out.len();
    out.resize(start.saturating_add(max_decoded_len(src.len())), 0);
    // `start` is within the resized buffer, so the slice is never the empty default.
    match decode_into(src, out.get_mut(start..).unwrap_or_default()) {
        Ok(written) => {
            out.truncate(start.saturating_add(written));
            Ok(())
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

/// Decodes `src` into `dst`, which must hold [`max_decoded_len`] bytes; returns the decoded length.
fn decode_into(src: &[u8], dst: &mut [u8]) -> Result<usize, HpackError> {
    let mut input = src.iter();
    // Unconsumed bits, left-aligned; the bits below the `bits` valid ones are zero.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut written = 0;
    loop {
        while bits <= 56 {
            let Some(&byte) = input.next() else { break };
            acc |= u64::from(byte) << (56 - bits);
            bits += 8;
        }
        if bits < MAX_LEN {
            // The input is exhausted: the end of the string.
            break;
        }
        // Every code fits in the buffered bits.
        while bits >= MAX_LEN {
            let fast = FAST[(acc >> (64 - FAST_BITS)) as usize & ((1 << FAST_BITS) - 1)];
            if fast != 0 {
                // Writes both symbols; a single one leaves a byte that the next write or the final
                // length discards. Every symbol takes at least 5 bits, so `dst` has room for the
                // decoded string plus one byte; `get_mut` keeps it panic-free.
                let pair = dst.get_mut(written..written + 2).ok_or(HpackError::HuffmanPadding)?;
                pair[0] = fast as u8;
                pair[1] = (fast >> 8) as u8;
                written += (fast >> 25) as usize;
                let len = (fast >> 20) & 0x1f;
                acc <<= len;
                bits -= len;
            } else {
                let (symbol, len) = slow_symbol(acc);
                if symbol == EOS {
                    return Err(HpackError::HuffmanEos);
                }
                *dst.get_mut(written).ok_or(HpackError::HuffmanPadding)? = symbol as u8;
                written += 1;
                acc <<= len;
                bits -= len;
            }
        }
    }
    // The last bits: whole codes, then at most 7 one-bits of padding.
    while bits > 0 {
        if bits <= MAX_PADDING_BITS && acc >> (64 - bits) == (1 << bits) - 1 {
            break;
        }
        let (symbol, len) = next_symbol(acc);
        if len > bits {
            return Err(HpackError::HuffmanPadding);
        }
        if symbol == EOS {
            return Err(HpackError::HuffmanEos);
        }
        *dst.get_mut(written).ok_or(HpackError::HuffmanPadding)? = symbol as u8;
        written += 1;
        acc <<= len;
        bits -= len;
    }
    Ok(written)
}
