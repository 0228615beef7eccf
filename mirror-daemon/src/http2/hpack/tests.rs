//! Tests: RFC 7541 Appendix C, Huffman, errors, the partial state, and property tests against an
//! encoder written for the tests.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use proptest::prelude::*;

use super::huffman::{self, CODES};
use super::table::{ENTRY_OVERHEAD, MAX_PLACEHOLDERS, SLOT_MEMORY, STATIC_TABLE};
use super::*;

const UNLIMITED: Limits = Limits { max_list_size: usize::MAX, max_fields: usize::MAX };

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
}

fn field(name: &str, value: &str) -> Field {
    Field { name: Bytes::copy_from_slice(name.as_bytes()), value: Bytes::copy_from_slice(value.as_bytes()) }
}

fn fields(pairs: &[(&str, &str)]) -> Vec<Field> {
    pairs.iter().map(|(name, value)| field(name, value)).collect()
}

/// The decoder's tracked entries, newest first, all of them known.
fn table_fields(decoder: &Decoder) -> Vec<Field> {
    decoder
        .table
        .entries()
        .into_iter()
        .map(|entry| {
            let (name, value) = entry.expect("placeholder in a table expected to be known");
            Field { name, value }
        })
        .collect()
}

/// Decodes `block` (hex), checks the fields and the resulting table (newest first) and its size.
fn check_block(
    decoder: &mut Decoder,
    block: &str,
    expected: &[(&str, &str)],
    table: &[(&str, &str)],
    size: usize,
) {
    let decoded = decoder.decode(&hex(block), &UNLIMITED).unwrap();
    assert_eq!(decoded, Decoded { fields: fields(expected), unresolved: 0, over_limit: false });
    assert!(decoder.fully_known());
    assert_eq!(table_fields(decoder), fields(table));
    assert_eq!(decoder.table.size(), Some(size));
}

// ---------------------------------------------------------------------------------------------
// RFC 7541 Appendix C

fn read_integer(bytes: &[u8], prefix_bits: u32) -> Result<(usize, usize), HpackError> {
    let mut input = Input { bytes };
    let first = input.byte().ok_or(HpackError::Truncated)?;
    let value = input.integer(first, prefix_bits)?;
    Ok((value, bytes.len() - input.bytes.len()))
}

#[test]
fn c1_integer_representation() {
    // C.1.1: 10 with a 5-bit prefix (the top 3 bits belong to the representation).
    assert_eq!(read_integer(&[0b1110_1010], 5), Ok((10, 1)));
    assert_eq!(encode_integer(0b1110_0000, 5, 10), vec![0b1110_1010]);
    // C.1.2: 1337 with a 5-bit prefix.
    assert_eq!(read_integer(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
    assert_eq!(encode_integer(0, 5, 1337), vec![0x1f, 0x9a, 0x0a]);
    // C.1.3: 42 at an octet boundary.
    assert_eq!(read_integer(&[0x2a], 8), Ok((42, 1)));
    assert_eq!(encode_integer(0, 8, 42), vec![0x2a]);
}

#[test]
fn integer_limits() {
    let max = usize::try_from(u32::MAX).unwrap();
    for prefix_bits in 4..=7 {
        let encoded = encode_integer(0, prefix_bits, max);
        assert_eq!(read_integer(&encoded, prefix_bits), Ok((max, encoded.len())));
        let too_big = encode_integer(0, prefix_bits, max + 1);
        assert_eq!(read_integer(&too_big, prefix_bits), Err(HpackError::IntegerOverflow));
    }
    // Zero continuation bytes add nothing but cannot go on forever.
    assert_eq!(read_integer(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x00], 5), Ok((31, 6)));
    assert_eq!(
        read_integer(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 5),
        Err(HpackError::IntegerOverflow)
    );
    assert_eq!(read_integer(&[0x1f, 0xff], 5), Err(HpackError::Truncated));
}

#[test]
fn c2_field_representations() {
    // C.2.1: literal with indexing.
    let mut decoder = Decoder::new();
    check_block(
        &mut decoder,
        "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        &[("custom-key", "custom-header")],
        &[("custom-key", "custom-header")],
        55,
    );
    // C.2.2: literal without indexing.
    let mut decoder = Decoder::new();
    check_block(&mut decoder, "040c 2f73 616d 706c 652f 7061 7468", &[(":path", "/sample/path")], &[], 0);
    // C.2.3: literal never indexed.
    let mut decoder = Decoder::new();
    check_block(
        &mut decoder,
        "1008 7061 7373 776f 7264 0673 6563 7265 74",
        &[("password", "secret")],
        &[],
        0,
    );
    // C.2.4: indexed.
    let mut decoder = Decoder::new();
    check_block(&mut decoder, "82", &[(":method", "GET")], &[], 0);
}

fn check_requests(blocks: [&str; 3]) {
    let mut decoder = Decoder::new();
    let authority = (":authority", "www.example.com");
    let cache_control = ("cache-control", "no-cache");
    check_block(
        &mut decoder,
        blocks[0],
        &[(":method", "GET"), (":scheme", "http"), (":path", "/"), authority],
        &[authority],
        57,
    );
    check_block(
        &mut decoder,
        blocks[1],
        &[(":method", "GET"), (":scheme", "http"), (":path", "/"), authority, cache_control],
        &[cache_control, authority],
        110,
    );
    let custom = ("custom-key", "custom-value");
    check_block(
        &mut decoder,
        blocks[2],
        &[(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), authority, custom],
        &[custom, cache_control, authority],
        164,
    );
}

#[test]
fn c3_requests_without_huffman() {
    check_requests([
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ]);
}

#[test]
fn c4_requests_with_huffman() {
    check_requests([
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ]);
}

fn check_responses(blocks: [&str; 3]) {
    // Appendix C.5 and C.6 assume a maximum table size of 256 from the start.
    let mut decoder = Decoder::with_initial_max_size(256);
    let status_302 = (":status", "302");
    let status_307 = (":status", "307");
    let private = ("cache-control", "private");
    let date_21 = ("date", "Mon, 21 Oct 2013 20:13:21 GMT");
    let location = ("location", "https://www.example.com");
    check_block(
        &mut decoder,
        blocks[0],
        &[status_302, private, date_21, location],
        &[location, date_21, private, status_302],
        222,
    );
    // (":status", "302") is evicted to make room for (":status", "307").
    check_block(
        &mut decoder,
        blocks[1],
        &[status_307, private, date_21, location],
        &[status_307, location, date_21, private],
        222,
    );
    let date_22 = ("date", "Mon, 21 Oct 2013 20:13:22 GMT");
    let gzip = ("content-encoding", "gzip");
    let cookie = ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1");
    check_block(
        &mut decoder,
        blocks[2],
        &[(":status", "200"), private, date_22, location, gzip, cookie],
        &[cookie, gzip, date_22],
        215,
    );
}

#[test]
fn c5_responses_without_huffman() {
    check_responses([
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 \
         3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a \
         6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d \
         6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
    ]);
}

#[test]
fn c6_responses_with_huffman() {
    check_responses([
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d \
         29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d \
         d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 \
         3d50 07",
    ]);
}

#[test]
fn static_table_matches_rfc_name_lengths() {
    // Name lengths of RFC 7541 Appendix A, an independent check of the transcription.
    let lengths = [
        10, 7, 7, 5, 5, 7, 7, 7, 7, 7, 7, 7, 7, 7, 14, 15, 15, 13, 6, 27, 3, 5, 13, 13, 19, 16, 16, 14, 16,
        13, 12, 6, 4, 4, 6, 7, 4, 4, 8, 17, 13, 8, 19, 13, 4, 8, 12, 18, 19, 5, 7, 7, 11, 6, 10, 25, 17, 10,
        4, 3, 16,
    ];
    let actual: Vec<usize> = STATIC_TABLE.iter().map(|(name, _)| name.len()).collect();
    assert_eq!(actual, lengths);
    let with_values: Vec<(usize, &[u8])> = STATIC_TABLE
        .iter()
        .enumerate()
        .filter(|(_, (_, value))| !value.is_empty())
        .map(|(i, (_, value))| (i + 1, *value))
        .collect();
    let expected: Vec<(usize, &[u8])> = vec![
        (2, b"GET"),
        (3, b"POST"),
        (4, b"/"),
        (5, b"/index.html"),
        (6, b"http"),
        (7, b"https"),
        (8, b"200"),
        (9, b"204"),
        (10, b"206"),
        (11, b"304"),
        (12, b"400"),
        (13, b"404"),
        (14, b"500"),
        (16, b"gzip, deflate"),
    ];
    assert_eq!(with_values, expected);
}

// ---------------------------------------------------------------------------------------------
// Huffman

/// Huffman-encodes `src`, padding with the most significant bits of EOS.
fn huffman_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    for &byte in src {
        let (code, len) = CODES[usize::from(byte)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) | (0xff >> bits)) as u8);
    }
    out
}

/// Packs codes given as (bits, length) into bytes, padding with `pad` ones or zeros.
fn pack_bits(codes: &[(u64, u32)], pad_with_ones: bool) -> Vec<u8> {
    let mut bits: Vec<bool> = Vec::new();
    for &(code, len) in codes {
        for i in (0..len).rev() {
            bits.push((code >> i) & 1 == 1);
        }
    }
    while !bits.len().is_multiple_of(8) {
        bits.push(pad_with_ones);
    }
    bits.chunks(8).map(|byte| byte.iter().fold(0u8, |acc, &bit| (acc << 1) | u8::from(bit))).collect()
}

fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, HpackError> {
    let mut out = bytes::BytesMut::new();
    huffman::decode(src, &mut out).map(|()| out.to_vec())
}

#[test]
fn huffman_codes_are_canonical() {
    // HPACK's code is canonical: sorted by (length, symbol), each code is the previous plus one,
    // shifted left when the length grows. This checks every transcribed code against the lengths.
    let mut order: Vec<usize> = (0..CODES.len()).collect();
    order.sort_by_key(|&symbol| (CODES[symbol].1, symbol));
    let mut expected: u64 = 0;
    let mut previous_len = CODES[order[0]].1;
    for (rank, &symbol) in order.iter().enumerate() {
        let (code, len) = CODES[symbol];
        if rank > 0 {
            expected = (expected + 1) << (len - previous_len);
        }
        assert_eq!(u64::from(code), expected, "symbol {symbol}");
        previous_len = len;
    }
    // The last code is EOS: 30 ones.
    assert_eq!(CODES[256], (0x3fff_ffff, 30));
}

#[test]
fn huffman_every_symbol_round_trips() {
    for symbol in 0..=255u8 {
        for repeat in [1, 2, 3, 7] {
            let text = vec![symbol; repeat];
            assert_eq!(huffman_decode(&huffman_encode(&text)), Ok(text), "symbol {symbol}");
        }
    }
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(huffman_decode(&huffman_encode(&all)), Ok(all.clone()));
    let reversed: Vec<u8> = all.iter().rev().copied().collect();
    assert_eq!(huffman_decode(&huffman_encode(&reversed)), Ok(reversed));
    assert_eq!(huffman_decode(&[]), Ok(vec![]));
}

#[test]
fn huffman_rfc_strings() {
    assert_eq!(huffman_encode(b"www.example.com"), hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"));
    assert_eq!(huffman_encode(b"no-cache"), hex("a8eb 1064 9cbf"));
    assert_eq!(huffman_encode(b"custom-value"), hex("25a8 49e9 5bb8 e8b4 bf"));
    assert_eq!(huffman_encode(b"302"), hex("6402"));
}

#[test]
fn huffman_rejects_bad_padding_and_eos() {
    let (a_code, a_len) = (u64::from(CODES[usize::from(b'a')].0), u32::from(CODES[usize::from(b'a')].1));
    // 'a' (5 bits) padded with 3 ones is valid; with zeros it is not.
    assert_eq!(huffman_decode(&pack_bits(&[(a_code, a_len)], true)), Ok(b"a".to_vec()));
    assert_eq!(huffman_decode(&pack_bits(&[(a_code, a_len)], false)), Err(HpackError::HuffmanPadding));
    // Padding of 8 or more ones: a whole byte of EOS prefix after a byte-aligned string.
    let aligned = huffman_encode(b"0a0a0a0a"); // 8 codes of 5 bits: 5 bytes exactly
    assert_eq!(aligned.len(), 5);
    assert_eq!(huffman_decode(&aligned), Ok(b"0a0a0a0a".to_vec()));
    let mut padded = aligned.clone();
    padded.push(0xff);
    assert_eq!(huffman_decode(&padded), Err(HpackError::HuffmanPadding));
    // 'a' then 11 ones.
    assert_eq!(
        huffman_decode(&pack_bits(&[(a_code, a_len), (0x7ff, 11)], true)),
        Err(HpackError::HuffmanPadding)
    );
    // Every padding from 0 to 7 ones is valid, 8 to 29 ones invalid, 30 ones are EOS.
    for ones in 0..30u32 {
        let mut codes = vec![(a_code, a_len)];
        let total = a_len + ones;
        // `pack_bits` completes the last byte with more ones.
        let align = (8 - total % 8) % 8;
        codes.push(((1u64 << ones) - 1, ones));
        let packed = pack_bits(&codes, true);
        let padding = ones + align;
        let expected = match padding {
            0..=7 => Ok(b"a".to_vec()),
            8..=29 => Err(HpackError::HuffmanPadding),
            // 30 ones are the EOS symbol itself.
            _ => Err(HpackError::HuffmanEos),
        };
        assert_eq!(huffman_decode(&packed), expected, "{ones} ones");
    }
    // EOS inside a string, with or without a symbol before it.
    let (eos_code, eos_len) = (u64::from(CODES[256].0), u32::from(CODES[256].1));
    assert_eq!(huffman_decode(&pack_bits(&[(eos_code, eos_len)], true)), Err(HpackError::HuffmanEos));
    assert_eq!(
        huffman_decode(&pack_bits(&[(a_code, a_len), (eos_code, eos_len), (a_code, a_len)], true)),
        Err(HpackError::HuffmanEos)
    );
    assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]), Err(HpackError::HuffmanEos));
}

/// Reference decoder: walks the bits one at a time against the code table.
fn huffman_decode_bitwise(src: &[u8]) -> Result<Vec<u8>, HpackError> {
    let codes: std::collections::HashMap<(u32, u32), usize> =
        CODES.iter().enumerate().map(|(symbol, &(code, len))| ((u32::from(len), code), symbol)).collect();
    let mut out = Vec::new();
    let (mut code, mut len) = (0u32, 0u32);
    for i in 0..src.len() * 8 {
        let bit = (src[i / 8] >> (7 - i % 8)) & 1;
        code = (code << 1) | u32::from(bit);
        len += 1;
        if let Some(&symbol) = codes.get(&(len, code)) {
            if symbol == 256 {
                return Err(HpackError::HuffmanEos);
            }
            out.push(symbol as u8);
            (code, len) = (0, 0);
        }
    }
    if len <= 7 && code == (1 << len) - 1 { Ok(out) } else { Err(HpackError::HuffmanPadding) }
}

proptest! {
    #[test]
    fn huffman_round_trips(text in proptest::collection::vec(any::<u8>(), 0..200)) {
        let encoded = huffman_encode(&text);
        prop_assert_eq!(huffman_decode(&encoded), Ok(text));
    }

    #[test]
    fn huffman_matches_the_bitwise_reference(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..48),
            // Valid strings with some bits flipped or cut short.
            (proptest::collection::vec(any::<u8>(), 0..40), any::<prop::sample::Index>(), any::<u8>(), 0usize..3)
                .prop_map(|(text, at, flip, cut)| {
                    let mut encoded = huffman_encode(&text);
                    if !encoded.is_empty() {
                        let at = at.index(encoded.len());
                        encoded[at] ^= flip;
                    }
                    encoded.truncate(encoded.len().saturating_sub(cut));
                    encoded
                }),
            // Runs of ones, around the EOS length.
            (0usize..6, any::<u8>()).prop_map(|(ones, last)| {
                let mut bytes = vec![0xff; ones];
                bytes.push(last);
                bytes
            }),
        ]
    ) {
        prop_assert_eq!(huffman_decode(&bytes), huffman_decode_bitwise(&bytes));
    }

    #[test]
    fn huffman_random_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(decoded) = huffman_decode(&bytes) {
            // Whatever decodes must encode back to the same bytes: the code is a bijection on valid
            // strings with valid padding.
            prop_assert_eq!(huffman_encode(&decoded), bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn errors_are_reported_and_leave_the_partial_state() {
    let cases: Vec<(Vec<u8>, HpackError)> = vec![
        (vec![0x80], HpackError::ZeroIndex),
        (vec![0xbe], HpackError::IndexBeyondTable { index: 62, dynamic: 0 }),
        (vec![0x7f, 0x00, 0x01, b'v'], HpackError::IndexBeyondTable { index: 63, dynamic: 0 }),
        (vec![0x40, 0x05, b'a'], HpackError::StringPastEnd { claimed: 5, remaining: 1 }),
        (vec![0x40, 0x01, b'a'], HpackError::Truncated),
        (vec![0x82, 0x20], HpackError::SizeUpdateNotAtStart),
        (encode_integer(0x20, 5, 4097), HpackError::SizeUpdateTooLarge { size: 4097, limit: 4096 }),
        (vec![0x00, 0x01, b'n', 0x81, 0x18], HpackError::HuffmanPadding),
        (vec![0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00], HpackError::HuffmanEos),
        (vec![0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], HpackError::IntegerOverflow),
    ];
    for (block, error) in cases {
        let mut decoder = Decoder::new();
        assert!(decoder.fully_known());
        assert_eq!(decoder.decode(&block, &UNLIMITED), Err(error.clone()), "{block:02x?}");
        assert!(!decoder.fully_known(), "{error}");
        // The next block still decodes what does not depend on the lost state.
        let decoded = decoder.decode(&[0x82, 0xbe], &UNLIMITED).unwrap();
        assert_eq!(decoded.fields, fields(&[(":method", "GET")]));
        assert_eq!(decoded.unresolved, 1);
    }
}

#[test]
fn size_updates_within_the_advertised_limit() {
    let mut decoder = Decoder::new();
    decoder.advertised_table_size(1000);
    // The largest advertised size applies, and never less than 4096.
    assert!(decoder.decode(&encode_integer(0x20, 5, 4096), &UNLIMITED).is_ok());
    decoder.advertised_table_size(8192);
    decoder.advertised_table_size(100);
    let mut block = encode_integer(0x20, 5, 0);
    block.extend(encode_integer(0x20, 5, 8192));
    assert!(decoder.decode(&block, &UNLIMITED).is_ok());
    assert_eq!(decoder.table.max_size(), Some(8192));
    assert_eq!(
        decoder.decode(&encode_integer(0x20, 5, 8193), &UNLIMITED),
        Err(HpackError::SizeUpdateTooLarge { size: 8193, limit: 8192 })
    );
}

#[test]
fn size_update_evicts() {
    let mut decoder = Decoder::new();
    let mut block = Vec::new();
    for value in ["first", "second", "third"] {
        block.extend(literal(0x40, 6, b"name", value.as_bytes()));
    }
    decoder.decode(&block, &UNLIMITED).unwrap();
    assert_eq!(decoder.table.size(), Some(3 * 32 + 3 * 4 + 5 + 6 + 5));
    // Room for the two newest entries only.
    let block = encode_integer(0x20, 5, 32 + 4 + 6 + 32 + 4 + 5);
    decoder.decode(&block, &UNLIMITED).unwrap();
    assert_eq!(table_fields(&decoder), fields(&[("name", "third"), ("name", "second")]));
    assert_eq!(
        decoder.decode(&[0xc0], &UNLIMITED),
        Err(HpackError::IndexBeyondTable { index: 64, dynamic: 2 })
    );
}

// ---------------------------------------------------------------------------------------------
// Partial state

fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Decoded {
    decoder.decode(block, &UNLIMITED).unwrap()
}

#[test]
fn mid_stream_resolves_what_was_inserted_since() {
    let mut decoder = Decoder::mid_stream();
    assert!(!decoder.fully_known());
    // Old entries are unresolved, never an error, whatever their index.
    let decoded = decode_all(&mut decoder, &[0x82, 0xbe, 0xff, 0x80, 0x10]);
    assert_eq!(decoded, Decoded { fields: fields(&[(":method", "GET")]), unresolved: 2, over_limit: false });
    // An insertion takes index 62; the old entries move to 63 and beyond.
    let mut block = literal(0x40, 6, b"x-new", b"1");
    block.extend([0xbe, 0xbf]);
    let decoded = decode_all(&mut decoder, &block);
    assert_eq!(decoded.fields, fields(&[("x-new", "1"), ("x-new", "1")]));
    assert_eq!(decoded.unresolved, 1);
    assert_eq!(decoder.memory(), 5 + 1 + SLOT_MEMORY);
}

#[test]
fn placeholders_keep_positions_exact() {
    let mut decoder = Decoder::mid_stream();
    // Name from the unknown entry 62, value known: inserted as a placeholder.
    let mut block = literal_indexed_name(0x40, 6, 62, b"value");
    // Then a known insertion with a static name.
    block.extend(literal_indexed_name(0x40, 6, 31, b"application/grpc"));
    let decoded = decode_all(&mut decoder, &block);
    assert_eq!(decoded.fields, fields(&[("content-type", "application/grpc")]));
    assert_eq!(decoded.unresolved, 1);
    // 62: content-type, 63: the placeholder, 64: an old entry.
    let decoded = decode_all(&mut decoder, &[0xbe, 0xbf, 0xc0]);
    assert_eq!(decoded.fields, fields(&[("content-type", "application/grpc")]));
    assert_eq!(decoded.unresolved, 2);
    // A literal with incremental indexing inserts even when unresolved, so later positions stay exact.
    let mut block = literal_indexed_name(0x40, 6, 63, b"again");
    block.extend(literal(0x40, 6, b"x-after", b"ok"));
    decode_all(&mut decoder, &block);
    let decoded = decode_all(&mut decoder, &[0xbe, 0xbf, 0xc0, 0xc1]);
    assert_eq!(decoded.fields, fields(&[("x-after", "ok"), ("content-type", "application/grpc")]));
    assert_eq!(decoded.unresolved, 2);
    assert_eq!(
        decoder.table.entries(),
        vec![
            Some((Bytes::from_static(b"x-after"), Bytes::from_static(b"ok"))),
            None,
            Some((Bytes::from_static(b"content-type"), Bytes::from_static(b"application/grpc"))),
            None,
        ]
    );
}

#[test]
fn size_update_to_zero_makes_the_table_known() {
    let mut decoder = Decoder::mid_stream();
    decode_all(&mut decoder, &literal(0x40, 6, b"a", b"b"));
    assert!(!decoder.fully_known());
    let mut block = vec![0x20];
    block.extend(encode_integer(0x20, 5, 4096));
    block.extend(literal(0x40, 6, b"c", b"d"));
    decode_all(&mut decoder, &block);
    assert!(decoder.fully_known());
    assert_eq!(table_fields(&decoder), fields(&[("c", "d")]));
    // Beyond the table is an error again.
    assert_eq!(
        decoder.decode(&[0xbf], &UNLIMITED),
        Err(HpackError::IndexBeyondTable { index: 63, dynamic: 1 })
    );
}

/// A literal field line with a new name whose entry size is `size` (`size` ≥ 34).
fn sized_literal(size: usize, tag: u8) -> Vec<u8> {
    let name = vec![tag; 1];
    let value = vec![b'v'; size - ENTRY_OVERHEAD - 1];
    literal(0x40, 6, &name, &value)
}

#[test]
fn known_again_once_old_entries_cannot_fit() {
    let mut decoder = Decoder::mid_stream();
    let mut block = encode_integer(0x20, 5, 100);
    block.extend(sized_literal(60, b'a'));
    decode_all(&mut decoder, &block);
    // 60 + 32 ≤ 100: an unknown entry may still be there.
    assert!(!decoder.fully_known());
    assert_eq!(decode_all(&mut decoder, &[0xbf]).unresolved, 1);
    // Inserting 60 more bytes evicts "a" and everything older: the table is exactly ["b"].
    decode_all(&mut decoder, &sized_literal(60, b'b'));
    assert!(decoder.fully_known());
    assert_eq!(decoder.table.size(), Some(60));
    assert_eq!(decoder.table.entries().len(), 1);
}

#[test]
fn unknown_tail_boundary() {
    // Tracked entries of 60 bytes under a maximum of 92: an unknown 32-byte entry (empty name and
    // value) may still fit behind them, so index 63 is unresolved rather than an error.
    let mut decoder = Decoder::mid_stream();
    let mut block = encode_integer(0x20, 5, 92);
    block.extend(sized_literal(60, b'a'));
    decode_all(&mut decoder, &block);
    assert_eq!(decode_all(&mut decoder, &[0xbf]).unresolved, 1);
    // Under 91, nothing older fits.
    let mut decoder = Decoder::mid_stream();
    let mut block = encode_integer(0x20, 5, 91);
    block.extend(sized_literal(60, b'a'));
    decode_all(&mut decoder, &block);
    assert_eq!(
        decoder.decode(&[0xbf], &UNLIMITED),
        Err(HpackError::IndexBeyondTable { index: 63, dynamic: 1 })
    );
}

#[test]
fn entries_inserted_under_an_unknown_maximum_stay_uncertain() {
    // The encoder's maximum was 50 (unknown to the observer): inserting "b" (34 bytes) evicted
    // "a" (40 bytes). A later size update to 100 proves older unknown entries gone (74 + 32 > 100),
    // but not that "a" is still there, so the table must not count as fully known.
    let mut decoder = Decoder::mid_stream();
    let mut block = sized_literal(40, b'a');
    block.extend(sized_literal(34, b'b'));
    decode_all(&mut decoder, &block);
    decode_all(&mut decoder, &encode_integer(0x20, 5, 100));
    assert!(!decoder.fully_known());
    // References still resolve: a valid encoder only refers to what is present.
    assert_eq!(decode_all(&mut decoder, &[0xbe]).unresolved, 0);
    // Beyond the tracked entries: provably nothing, an error.
    assert!(matches!(decoder.decode(&[0xc0], &UNLIMITED), Err(HpackError::IndexBeyondTable { .. })));
}

#[test]
fn lose_state_forgets_and_tracks_again() {
    let mut decoder = Decoder::new();
    decode_all(&mut decoder, &literal(0x40, 6, b"old", b"1"));
    decoder.lose_state();
    assert!(!decoder.fully_known());
    assert_eq!(decoder.memory(), 0);
    let mut block = literal(0x40, 6, b"new", b"2");
    block.extend([0xbe, 0xbf]);
    let decoded = decode_all(&mut decoder, &block);
    assert_eq!(decoded.fields, fields(&[("new", "2"), ("new", "2")]));
    assert_eq!(decoded.unresolved, 1);
}

#[test]
fn over_limit_keeps_table_effects() {
    let mut decoder = Decoder::new();
    let limits = Limits { max_list_size: 100, max_fields: 2 };
    let mut block = vec![0x82, 0x84];
    block.extend(literal(0x40, 6, b"x-late", b"inserted"));
    block.push(0x86);
    let decoded = decoder.decode(&block, &limits).unwrap();
    assert!(decoded.over_limit);
    assert_eq!(decoded.fields, fields(&[(":method", "GET"), (":path", "/")]));
    assert!(decoder.fully_known());
    let decoded = decoder.decode(&[0xbe], &limits).unwrap();
    assert_eq!(
        decoded,
        Decoded { fields: fields(&[("x-late", "inserted")]), unresolved: 0, over_limit: false }
    );
    // The size limit counts name + value + 32 per field.
    let limits = Limits { max_list_size: 32 + 7 + 3, max_fields: 10 };
    assert!(!decoder.decode(&[0x82], &limits).unwrap().over_limit);
    assert!(decoder.decode(&[0x82, 0x82], &limits).unwrap().over_limit);
}

#[test]
fn table_size_abuse_stays_bounded() {
    for mut decoder in [Decoder::new(), Decoder::mid_stream()] {
        decoder.advertised_table_size(1 << 31);
        let mut block = encode_integer(0x20, 5, 1 << 31);
        let value = vec![b'x'; 1000];
        for i in 0..1000u32 {
            block.extend(literal(0x40, 6, format!("n{i}").as_bytes(), &value));
        }
        let decoded = decoder.decode(&block, &UNLIMITED).unwrap();
        assert_eq!(decoded.fields.len(), 1000);
        assert!(decoder.memory() <= DEFAULT_MEMORY_CAP, "{}", decoder.memory());
        assert!(decoder.memory() > DEFAULT_MEMORY_CAP - 2000);
        assert!(!decoder.fully_known());
        // The newest entries are still known; the dropped ones are unresolved.
        let decoded = decoder.decode(&[0xbe, 0xff, 0x80, 0x10], &UNLIMITED).unwrap();
        assert_eq!(
            decoded.fields,
            vec![Field { name: Bytes::from_static(b"n999"), value: value.clone().into() }]
        );
        assert_eq!(decoded.unresolved, 1);
    }
}

#[test]
fn placeholders_are_bounded_by_count() {
    let mut decoder = Decoder::mid_stream();
    let mut block = Vec::new();
    for _ in 0..2000 {
        block.extend(literal_indexed_name(0x40, 6, 62 + 3000, b""));
    }
    let decoded = decode_all(&mut decoder, &block);
    assert_eq!(decoded.unresolved, 2000);
    assert_eq!(decoder.table.entries().len(), MAX_PLACEHOLDERS);
    assert_eq!(decoder.memory(), MAX_PLACEHOLDERS * SLOT_MEMORY);
}

#[test]
fn memory_cap_is_configurable() {
    let mut decoder = Decoder::new().with_memory_cap(1000);
    assert!(decoder.fully_known());
    let mut block = Vec::new();
    for i in 0..20u8 {
        block.extend(sized_literal(100, b'a' + i));
    }
    decode_all(&mut decoder, &block);
    assert!(decoder.memory() <= 1000);
    assert!(!decoder.fully_known());
    assert_eq!(decoder.table.entries().len(), 1000 / (100 - ENTRY_OVERHEAD + SLOT_MEMORY));
}

// ---------------------------------------------------------------------------------------------
// Test encoder

/// Encodes an integer with an N-bit prefix after the representation bits `flags`.
fn encode_integer(flags: u8, prefix_bits: u32, value: usize) -> Vec<u8> {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        return vec![flags | value as u8];
    }
    let mut out = vec![flags | mask as u8];
    let mut rest = value - mask;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

fn encode_string(text: &[u8], use_huffman: bool) -> Vec<u8> {
    if use_huffman {
        let encoded = huffman_encode(text);
        let mut out = encode_integer(0x80, 7, encoded.len());
        out.extend(encoded);
        out
    } else {
        let mut out = encode_integer(0, 7, text.len());
        out.extend_from_slice(text);
        out
    }
}

/// A literal field line with a literal name, without Huffman.
fn literal(flags: u8, prefix_bits: u32, name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = encode_integer(flags, prefix_bits, 0);
    out.extend(encode_string(name, false));
    out.extend(encode_string(value, false));
    out
}

/// A literal field line with an indexed name, without Huffman.
fn literal_indexed_name(flags: u8, prefix_bits: u32, index: usize, value: &[u8]) -> Vec<u8> {
    let mut out = encode_integer(flags, prefix_bits, index);
    out.extend(encode_string(value, false));
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Representation {
    IncrementalIndexing,
    WithoutIndexing,
    NeverIndexed,
}

#[derive(Debug, Clone)]
struct Line {
    name: Vec<u8>,
    value: Vec<u8>,
    representation: Representation,
    huffman: bool,
    /// Whether the encoder may refer to a matching table entry.
    reuse: bool,
}

#[derive(Debug, Clone)]
struct BlockSpec {
    size_updates: Vec<usize>,
    lines: Vec<Line>,
}

/// What an encoded field line refers to in the dynamic table, by insertion number.
#[derive(Debug, Clone, Default)]
struct LineRefs {
    referenced: Option<u64>,
    inserted: Option<u64>,
}

#[derive(Debug, Clone)]
struct EncodedBlock {
    bytes: Vec<u8>,
    refs: Vec<LineRefs>,
    fields: Vec<Field>,
}

/// A straightforward RFC 7541 encoder with its own dynamic table.
#[derive(Debug)]
struct TestEncoder {
    /// Newest first: name, value, insertion number.
    table: VecDeque<(Vec<u8>, Vec<u8>, u64)>,
    size: usize,
    max_size: usize,
    inserted: u64,
}

impl TestEncoder {
    fn new() -> Self {
        TestEncoder { table: VecDeque::new(), size: 0, max_size: DEFAULT_TABLE_SIZE, inserted: 0 }
    }

    fn evict_to(&mut self, room: usize) {
        while self.size > room {
            let (name, value, _) = self.table.pop_back().expect("size accounts for entries");
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) -> u64 {
        let id = self.inserted;
        self.inserted += 1;
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.evict_to(0);
        } else {
            self.evict_to(self.max_size - size);
            self.table.push_front((name.to_vec(), value.to_vec(), id));
            self.size += size;
        }
        id
    }

    /// The wire index and dynamic insertion number of a matching entry.
    fn find(&self, name: &[u8], value: Option<&[u8]>) -> Option<(usize, Option<u64>)> {
        let matches = |n: &[u8], v: &[u8]| n == name && value.is_none_or(|value| v == value);
        if let Some(i) = STATIC_TABLE.iter().position(|(n, v)| matches(n, v)) {
            return Some((i + 1, None));
        }
        self.table.iter().position(|(n, v, _)| matches(n, v)).map(|i| (i + 62, Some(self.table[i].2)))
    }

    fn encode(&mut self, spec: &BlockSpec) -> EncodedBlock {
        let mut bytes = Vec::new();
        for &size in &spec.size_updates {
            bytes.extend(encode_integer(0x20, 5, size));
            self.max_size = size;
            self.evict_to(size);
        }
        let mut refs = Vec::new();
        for line in &spec.lines {
            let mut line_refs = LineRefs::default();
            if line.reuse
                && let Some((index, id)) = self.find(&line.name, Some(&line.value))
            {
                bytes.extend(encode_integer(0x80, 7, index));
                line_refs.referenced = id;
                refs.push(line_refs);
                continue;
            }
            let (flags, prefix_bits) = match line.representation {
                Representation::IncrementalIndexing => (0x40, 6),
                Representation::WithoutIndexing => (0x00, 4),
                Representation::NeverIndexed => (0x10, 4),
            };
            match line.reuse.then(|| self.find(&line.name, None)).flatten() {
                Some((index, id)) => {
                    bytes.extend(encode_integer(flags, prefix_bits, index));
                    line_refs.referenced = id;
                }
                None => {
                    bytes.extend(encode_integer(flags, prefix_bits, 0));
                    bytes.extend(encode_string(&line.name, line.huffman));
                }
            }
            bytes.extend(encode_string(&line.value, line.huffman));
            if line.representation == Representation::IncrementalIndexing {
                line_refs.inserted = Some(self.insert(&line.name, &line.value));
            }
            refs.push(line_refs);
        }
        let fields = spec
            .lines
            .iter()
            .map(|line| Field { name: line.name.clone().into(), value: line.value.clone().into() })
            .collect();
        EncodedBlock { bytes, refs, fields }
    }

    fn entries(&self) -> Vec<Field> {
        self.table
            .iter()
            .map(|(name, value, _)| Field { name: name.clone().into(), value: value.clone().into() })
            .collect()
    }
}

#[test]
fn test_encoder_matches_rfc_c3() {
    // The encoder produces RFC 7541 C.3 byte for byte, which validates it for the property tests.
    let line = |name: &str, value: &str| Line {
        name: name.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        representation: Representation::IncrementalIndexing,
        huffman: false,
        reuse: true,
    };
    let mut encoder = TestEncoder::new();
    let blocks = [
        vec![
            line(":method", "GET"),
            line(":scheme", "http"),
            line(":path", "/"),
            line(":authority", "www.example.com"),
        ],
        vec![
            line(":method", "GET"),
            line(":scheme", "http"),
            line(":path", "/"),
            line(":authority", "www.example.com"),
            line("cache-control", "no-cache"),
        ],
        vec![
            line(":method", "GET"),
            line(":scheme", "https"),
            line(":path", "/index.html"),
            line(":authority", "www.example.com"),
            line("custom-key", "custom-value"),
        ],
    ];
    let expected = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];
    for (lines, expected) in blocks.into_iter().zip(expected) {
        let encoded = encoder.encode(&BlockSpec { size_updates: vec![], lines });
        assert_eq!(encoded.bytes, hex(expected));
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![
            ":path", ":authority", "content-type", "user-agent", "te", "grpc-timeout",
            "grpc-encoding", "x-request-id", "traceparent", "cookie",
        ])
        .prop_map(|name| name.as_bytes().to_vec()),
        2 => "[a-z0-9-]{1,16}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
    ]
}

fn value_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "", "/", "GET", "application/grpc", "trailers", "gzip", "grpc-go/1.62.1", "1S", "abc",
        ])
        .prop_map(|value| value.as_bytes().to_vec()),
        3 => "[ -~]{0,40}".prop_map(String::into_bytes),
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(any::<u8>(), 300..1500),
    ]
}

fn line_strategy() -> impl Strategy<Value = Line> {
    let representation = prop_oneof![
        3 => Just(Representation::IncrementalIndexing),
        1 => Just(Representation::WithoutIndexing),
        1 => Just(Representation::NeverIndexed),
    ];
    (name_strategy(), value_strategy(), representation, any::<bool>(), prop::bool::weighted(0.7)).prop_map(
        |(name, value, representation, huffman, reuse)| Line { name, value, representation, huffman, reuse },
    )
}

fn block_strategy() -> impl Strategy<Value = BlockSpec> {
    let size = prop_oneof![
        Just(0usize),
        Just(64),
        Just(256),
        Just(1024),
        Just(DEFAULT_TABLE_SIZE),
        0..=DEFAULT_TABLE_SIZE
    ];
    let size_updates = prop_oneof![
        6 => Just(Vec::new()),
        1 => proptest::collection::vec(size, 1..=2),
    ];
    (size_updates, proptest::collection::vec(line_strategy(), 0..12))
        .prop_map(|(size_updates, lines)| BlockSpec { size_updates, lines })
}

fn sequence_strategy() -> impl Strategy<Value = Vec<BlockSpec>> {
    proptest::collection::vec(block_strategy(), 1..16)
}

fn encode_sequence(specs: &[BlockSpec]) -> (Vec<EncodedBlock>, Vec<Vec<Field>>) {
    let mut encoder = TestEncoder::new();
    let mut tables = Vec::new();
    let blocks = specs
        .iter()
        .map(|spec| {
            let block = encoder.encode(spec);
            tables.push(encoder.entries());
            block
        })
        .collect();
    (blocks, tables)
}

/// Checks a decoder that tracks from block `start` on (earlier insertions unknown to it): every
/// line that depends only on static entries and on insertions it could know decodes exactly, every
/// other line is unresolved, and when it claims to know the whole table, that table is exact.
fn check_partial(
    decoder: &mut Decoder,
    blocks: &[EncodedBlock],
    tables: &[Vec<Field>],
    start: usize,
) -> Result<PartialStats, TestCaseError> {
    let mut known: HashSet<u64> = HashSet::new();
    let mut stats = PartialStats::default();
    for (i, block) in blocks.iter().enumerate().skip(start) {
        let mut expected = Decoded::default();
        for (refs, field) in block.refs.iter().zip(&block.fields) {
            let resolvable = refs.referenced.is_none_or(|id| known.contains(&id));
            if resolvable {
                expected.fields.push(field.clone());
                if let Some(id) = refs.inserted {
                    known.insert(id);
                }
                stats.resolved_dynamic += usize::from(refs.referenced.is_some());
            } else {
                expected.unresolved += 1;
                stats.placeholders += usize::from(refs.inserted.is_some());
            }
        }
        stats.unresolved += expected.unresolved;
        let decoded = decoder.decode(&block.bytes, &UNLIMITED);
        prop_assert_eq!(decoded, Ok(expected), "block {}", i);
        if decoder.fully_known() {
            prop_assert_eq!(table_fields(decoder), tables[i].clone(), "block {}", i);
        }
        prop_assert!(decoder.memory() <= DEFAULT_MEMORY_CAP);
        stats.fully_known_blocks += usize::from(decoder.fully_known());
    }
    Ok(stats)
}

/// What a partial-state check exercised.
#[derive(Debug, Default)]
struct PartialStats {
    /// Lines resolved through a dynamic entry inserted after the start.
    resolved_dynamic: usize,
    unresolved: usize,
    /// Unresolved lines that inserted a placeholder.
    placeholders: usize,
    /// Blocks after which the decoder had proven the whole table.
    fully_known_blocks: usize,
}

#[test]
fn partial_state_properties_exercise_every_case() {
    // Guards the generators of the property tests: over a fixed batch of generated sequences, the
    // mid-stream check must meet resolved dynamic references, unresolved lines, placeholders and
    // a recovered fully known table, or it could pass without testing them.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total = PartialStats::default();
    for _ in 0..200 {
        let specs = sequence_strategy().new_tree(&mut runner).unwrap().current();
        let (blocks, tables) = encode_sequence(&specs);
        let start = blocks.len() / 3;
        let stats = check_partial(&mut Decoder::mid_stream(), &blocks, &tables, start).unwrap();
        total.resolved_dynamic += stats.resolved_dynamic;
        total.unresolved += stats.unresolved;
        total.placeholders += stats.placeholders;
        total.fully_known_blocks += stats.fully_known_blocks;
    }
    assert!(total.resolved_dynamic > 100, "{total:?}");
    assert!(total.unresolved > 100, "{total:?}");
    assert!(total.placeholders > 10, "{total:?}");
    assert!(total.fully_known_blocks > 10, "{total:?}");
}

// Case counts come from `PROPTEST_CASES` (default 256).
proptest! {
    /// (a) Encoded in sequence, every list decodes exactly and the table stays identical.
    #[test]
    fn round_trip(specs in sequence_strategy()) {
        let (blocks, tables) = encode_sequence(&specs);
        let mut decoder = Decoder::new();
        for (i, block) in blocks.iter().enumerate() {
            let decoded = decoder.decode(&block.bytes, &UNLIMITED);
            prop_assert_eq!(
                decoded,
                Ok(Decoded { fields: block.fields.clone(), unresolved: 0, over_limit: false }),
                "block {}", i
            );
            prop_assert!(decoder.fully_known());
            prop_assert_eq!(table_fields(&decoder), tables[i].clone());
            let size: usize = tables[i].iter().map(|f| f.name.len() + f.value.len() + ENTRY_OVERHEAD).sum();
            prop_assert_eq!(decoder.table.size(), Some(size));
        }
    }

    /// (b) Joining at a random block: exact where provable, unresolved otherwise, never wrong.
    #[test]
    fn mid_stream_never_decodes_a_wrong_field(specs in sequence_strategy(), start in any::<prop::sample::Index>()) {
        let (blocks, tables) = encode_sequence(&specs);
        let start = start.index(blocks.len());
        let mut decoder = Decoder::mid_stream();
        check_partial(&mut decoder, &blocks, &tables, start)?;
    }

    /// (c) Losing a block (skipped, or failing to decode) at a random point: the same guarantee.
    #[test]
    fn lose_state_never_decodes_a_wrong_field(
        specs in sequence_strategy(),
        lost in any::<prop::sample::Index>(),
        fail_instead in any::<bool>(),
    ) {
        let (blocks, tables) = encode_sequence(&specs);
        let lost = lost.index(blocks.len());
        let mut decoder = Decoder::new();
        for block in &blocks[..lost] {
            prop_assert!(decoder.decode(&block.bytes, &UNLIMITED).is_ok());
        }
        if fail_instead {
            // The block's insertions happen, then index 0 makes it fail.
            let mut bytes = blocks[lost].bytes.clone();
            bytes.push(0x80);
            prop_assert_eq!(decoder.decode(&bytes, &UNLIMITED), Err(HpackError::ZeroIndex));
        } else {
            decoder.lose_state();
        }
        prop_assert!(!decoder.fully_known());
        check_partial(&mut decoder, &blocks, &tables, lost + 1)?;
    }

    /// Over-limit blocks keep the table exact: the following blocks decode as with no limit.
    #[test]
    fn over_limit_blocks_keep_the_table_exact(specs in sequence_strategy(), max_fields in 0usize..4) {
        let (blocks, tables) = encode_sequence(&specs);
        let mut decoder = Decoder::new();
        let limits = Limits { max_list_size: 200, max_fields };
        for (i, block) in blocks.iter().enumerate() {
            let decoded = decoder.decode(&block.bytes, &limits).unwrap();
            let list_size: usize = block.fields.iter().map(|f| f.name.len() + f.value.len() + 32).sum();
            prop_assert_eq!(decoded.over_limit, block.fields.len() > max_fields || list_size > 200);
            prop_assert!(block.fields.starts_with(&decoded.fields));
            prop_assert_eq!(table_fields(&decoder), tables[i].clone());
        }
    }

    /// (d) Random bytes never panic and stay within the memory cap, whatever the starting state.
    #[test]
    fn hostile_bytes(
        blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
        advertised in any::<u32>(),
    ) {
        let mut decoders = [Decoder::new(), Decoder::mid_stream(), Decoder::new().with_memory_cap(512)];
        decoders[0].advertised_table_size(advertised);
        for decoder in &mut decoders {
            for block in &blocks {
                let _ = decoder.decode(block, &Limits { max_list_size: 4096, max_fields: 50 });
            }
        }
        prop_assert!(decoders[0].memory() <= DEFAULT_MEMORY_CAP);
        prop_assert!(decoders[1].memory() <= DEFAULT_MEMORY_CAP);
        prop_assert!(decoders[2].memory() <= 512);
    }

    /// Valid sequences with random corruption: no panic, memory bounded.
    #[test]
    fn corrupted_sequences(
        specs in sequence_strategy(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let (mut blocks, _) = encode_sequence(&specs);
        for (block, offset, byte) in flips {
            let block = &mut blocks[block.index(specs.len())].bytes;
            if !block.is_empty() {
                let at = offset.index(block.len());
                block[at] ^= byte | 1;
            }
        }
        for mut decoder in [Decoder::new(), Decoder::mid_stream()] {
            for block in &blocks {
                let _ = decoder.decode(&block.bytes, &UNLIMITED);
                prop_assert!(decoder.memory() <= DEFAULT_MEMORY_CAP);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput

/// Header blocks of a gRPC client's unary calls, encoded like grpc-go does: Huffman strings,
/// incremental indexing, reuse of dynamic entries; per-call values change on every call.
fn grpc_request_blocks(calls: usize) -> Vec<Vec<u8>> {
    let mut encoder = TestEncoder::new();
    (0..calls)
        .map(|call| {
            let line = |name: &str, value: String| Line {
                name: name.as_bytes().to_vec(),
                value: value.into_bytes(),
                representation: Representation::IncrementalIndexing,
                huffman: true,
                reuse: true,
            };
            let lines = vec![
                line(":method", "POST".into()),
                line(":scheme", "http".into()),
                line(":path", "/inference.GRPCInferenceService/ModelInfer".into()),
                line(":authority", "model-server.inference.svc.cluster.local:8001".into()),
                line("content-type", "application/grpc".into()),
                line("user-agent", "grpc-go/1.62.1".into()),
                line("te", "trailers".into()),
                line("grpc-accept-encoding", "gzip".into()),
                line("grpc-timeout", format!("{}m", 29_990 + call % 10)),
                line("x-request-id", format!("5f0c{call:08x}-9a1b-4c2d-8e3f-{:012x}", call * 7919)),
                line("traceparent", format!("00-{:032x}-{:016x}-01", call * 104_729, call * 31)),
            ];
            encoder.encode(&BlockSpec { size_updates: vec![], lines }).bytes
        })
        .collect()
}

/// This thread's CPU time in seconds (user + system, 10 ms resolution), which the machine's other
/// load affects less than wall time.
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("Linux /proc");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Runs `body` repeatedly for about two seconds of CPU time; returns (runs, CPU seconds, wall seconds).
fn time_cpu(mut body: impl FnMut()) -> (usize, f64, f64) {
    let wall = std::time::Instant::now();
    let start = thread_cpu_seconds();
    let mut runs = 0;
    while thread_cpu_seconds() - start < 2.0 {
        for _ in 0..10 {
            body();
        }
        runs += 10;
    }
    (runs, thread_cpu_seconds() - start, wall.elapsed().as_secs_f64())
}

#[test]
#[ignore = "timing; run with --release -- --ignored --nocapture --test-threads=1"]
fn throughput() {
    let blocks = grpc_request_blocks(1000);
    let first_blocks: Vec<Vec<u8>> = vec![blocks[0].clone(); 1000];
    for (label, blocks, fresh) in [
        ("steady state (dynamic table reused)", &blocks, false),
        ("first request (all literals)", &first_blocks, true),
    ] {
        let bytes: usize = blocks.iter().map(Vec::len).sum();
        let mut fields = 0usize;
        let (runs, cpu, wall) = time_cpu(|| {
            let mut decoder = Decoder::new();
            for block in blocks {
                if fresh {
                    decoder = Decoder::new();
                }
                let decoded = decoder.decode(block, &UNLIMITED).unwrap();
                fields += decoded.fields.len();
            }
        });
        assert_eq!(fields, blocks.len() * runs * 11);
        let total = (bytes * runs) as f64;
        println!(
            "{label}: {:.0} bytes/block; per CPU second: {:.1} MB/s, {:.2} M blocks/s, {:.1} M fields/s \
             (wall: {:.1} MB/s)",
            bytes as f64 / blocks.len() as f64,
            total / cpu / 1e6,
            (blocks.len() * runs) as f64 / cpu / 1e6,
            fields as f64 / cpu / 1e6,
            total / wall / 1e6,
        );
    }
}

#[test]
#[ignore = "timing; run with --release -- --ignored --nocapture --test-threads=1"]
fn huffman_throughput() {
    let text: Vec<u8> = b"/inference.GRPCInferenceService/ModelInfer model-server.inference.svc.cluster.local:8001 \
        application/grpc grpc-go/1.62.1 5f0c0000002a-9a1b-4c2d-8e3f-00000004d5e1 00-0000000000000000000000000001991b-0000000000000532-01"
        .repeat(8);
    let encoded = huffman_encode(&text);
    let mut out = bytes::BytesMut::with_capacity(huffman::max_decoded_len(encoded.len()));
    let (runs, cpu, wall) = time_cpu(|| {
        out.clear();
        huffman::decode(&encoded, &mut out).unwrap();
    });
    assert_eq!(&out[..], &text[..]);
    let total = (encoded.len() * runs) as f64;
    println!(
        "huffman: {:.1} MB/s of encoded input per CPU second (wall: {:.1} MB/s)",
        total / cpu / 1e6,
        total / wall / 1e6
    );
}
