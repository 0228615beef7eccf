//! Undoing `Content-Encoding` before bodies are compared.
//!
//! Production and shadow may compress differently (or one not at all), so bodies are compared
//! decoded. Decoding is bounded: a body that inflates past the configured cap is refused rather
//! than allowed to exhaust memory (a "zip bomb" answer from a shadow must not take the daemon
//! down), and a corrupt stream is an error to report, never a panic.
use std::{borrow::Cow, io::Read};

use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

use crate::exchange::Header;

/// More stacked codings than any real server uses; a bound on work per body.
const MAX_CODINGS: usize = 4;

/// Why a body could not be decoded. Messages read after "<side> body is ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid {coding} ({reason})")]
    Corrupt { coding: &'static str, reason: String },
    #[error("larger than {limit} bytes once decoded")]
    TooLarge { limit: usize },
    #[error("encoded with more than {MAX_CODINGS} content codings")]
    TooManyCodings,
}

/// A body with its content codings undone, or left as sent when a coding is not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub body: Cow<'a, [u8]>,
    /// The first coding not understood; `body` is then the body as sent.
    pub unknown_coding: Option<String>,
}

/// The content codings named by all `Content-Encoding` fields, in the order they were applied.
fn codings(headers: &[Header]) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-encoding"))
        .flat_map(|h| {
            String::from_utf8_lossy(&h.value)
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A gzip-encoded body decoded piece by piece, so that each decoded byte keeps the capture time of
/// the encoded piece that brought it (a compressed event stream is still timed per event).
/// `None` unless the body's only coding is gzip, or when it is corrupt or inflates past `limit`.
pub fn decode_gzip_timed(
    headers: &[Header],
    body: &[u8],
    arrivals: &crate::exchange::Arrivals,
    limit: usize,
) -> Option<(Vec<u8>, crate::exchange::Arrivals)> {
    use std::io::Write;
    if !matches!(codings(headers).as_slice(), [c] if c == "gzip" || c == "x-gzip") {
        return None;
    }
    let mut decoder = flate2::write::MultiGzDecoder::new(Vec::new());
    let mut timed = crate::exchange::Arrivals::default();
    let mut from = 0usize;
    for &(end, ts) in arrivals.pieces() {
        let end = (end as usize).min(body.len());
        if end <= from {
            continue;
        }
        decoder.write_all(&body[from..end]).ok()?;
        decoder.flush().ok()?;
        from = end;
        if decoder.get_ref().len() > limit {
            return None;
        }
        timed.push(decoder.get_ref().len() as u64, ts);
    }
    decoder.write_all(&body[from..]).ok()?;
    let decoded = decoder.finish().ok()?;
    (decoded.len() <= limit).then_some((decoded, timed))
}

/// Undoes the body's `Content-Encoding` (gzip, x-gzip, deflate as zlib or raw, identity), with
/// the decoded size capped at `limit` bytes.
pub fn decode<'a>(headers: &[Header], body: &'a [u8], limit: usize) -> Result<Decoded<'a>, DecodeError> {
    let codings = codings(headers);
    // An empty body with a coding (HEAD, 204, some error paths) is simply empty.
    if body.is_empty() {
        return Ok(Decoded { body: Cow::Borrowed(body), unknown_coding: None });
    }
    if let Some(unknown) =
        codings.iter().find(|c| !matches!(c.as_str(), "gzip" | "x-gzip" | "deflate" | "identity"))
    {
        return Ok(Decoded { body: Cow::Borrowed(body), unknown_coding: Some(unknown.clone()) });
    }
    let codings: Vec<&String> = codings.iter().filter(|c| c.as_str() != "identity").collect();
    if codings.len() > MAX_CODINGS {
        return Err(DecodeError::TooManyCodings);
    }
    let mut current: Cow<'a, [u8]> = Cow::Borrowed(body);
    // Codings are listed in the order they were applied, so they are undone last first.
    for coding in codings.iter().rev() {
        let decoded = match coding.as_str() {
            "gzip" | "x-gzip" => read_bounded(MultiGzDecoder::new(&current[..]), limit, "gzip")?,
            _ => inflate(&current, limit)?,
        };
        current = Cow::Owned(decoded);
    }
    if current.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(Decoded { body: current, unknown_coding: None })
}

/// HTTP `deflate` is meant to be zlib-wrapped, but some servers send raw deflate: accept both.
fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    if looks_like_zlib(data) {
        match read_bounded(ZlibDecoder::new(data), limit, "deflate") {
            Ok(decoded) => return Ok(decoded),
            Err(e @ DecodeError::TooLarge { .. }) => return Err(e),
            // A raw deflate stream can start with bytes that pass the zlib header check.
            Err(_) => {}
        }
    }
    read_bounded(DeflateDecoder::new(data), limit, "deflate")
}

/// RFC 1950 header: compression method 8, window at most 32 KiB, header checksum a multiple of 31.
fn looks_like_zlib(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

fn read_bounded(reader: impl Read, limit: usize, coding: &'static str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it" without reading more.
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Corrupt { coding, reason: e.to_string() })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use bytes::Bytes;
    use flate2::{
        Compression,
        write::{DeflateEncoder, GzEncoder, ZlibEncoder},
    };

    use super::*;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn encoding(value: &str) -> Vec<Header> {
        vec![Header { name: "Content-Encoding".into(), value: Bytes::from(value.to_string()) }]
    }

    const TEXT: &[u8] = b"{\"predictions\": [[0.1, 0.9], [0.8, 0.2]]}";
    const LIMIT: usize = 1 << 20;

    #[test]
    fn identity_and_no_header_borrow_the_body() {
        for headers in [vec![], encoding("identity"), encoding(" Identity ")] {
            let d = decode(&headers, TEXT, LIMIT).unwrap();
            assert!(matches!(d.body, Cow::Borrowed(_)));
            assert_eq!(&d.body[..], TEXT);
            assert_eq!(d.unknown_coding, None);
        }
    }

    #[test]
    fn gzip_zlib_and_raw_deflate_decode() {
        assert_eq!(&decode(&encoding("gzip"), &gzip(TEXT), LIMIT).unwrap().body[..], TEXT);
        assert_eq!(&decode(&encoding("X-GZIP"), &gzip(TEXT), LIMIT).unwrap().body[..], TEXT);
        assert_eq!(&decode(&encoding("deflate"), &zlib(TEXT), LIMIT).unwrap().body[..], TEXT);
        assert_eq!(&decode(&encoding("deflate"), &raw_deflate(TEXT), LIMIT).unwrap().body[..], TEXT);
    }

    #[test]
    fn concatenated_gzip_members_decode_whole() {
        let mut body = gzip(b"hello ");
        body.extend(gzip(b"world"));
        assert_eq!(&decode(&encoding("gzip"), &body, LIMIT).unwrap().body[..], b"hello world");
    }

    #[test]
    fn stacked_codings_are_undone_in_reverse() {
        let body = gzip(&zlib(TEXT));
        // Applied deflate first, then gzip.
        assert_eq!(&decode(&encoding("deflate, gzip"), &body, LIMIT).unwrap().body[..], TEXT);
        let mut headers = encoding("deflate");
        headers.extend(encoding("gzip"));
        assert_eq!(&decode(&headers, &body, LIMIT).unwrap().body[..], TEXT);
        assert!(decode(&encoding("gzip, deflate"), &body, LIMIT).is_err());
        let five = encoding("gzip, gzip, gzip, gzip, gzip");
        assert_eq!(decode(&five, &gzip(TEXT), LIMIT), Err(DecodeError::TooManyCodings));
    }

    #[test]
    fn unknown_coding_leaves_the_body_as_sent() {
        let d = decode(&encoding("br"), b"\x0b\x02\x80", LIMIT).unwrap();
        assert_eq!(d.unknown_coding.as_deref(), Some("br"));
        assert_eq!(&d.body[..], b"\x0b\x02\x80");
        let d = decode(&encoding("gzip, zstd"), b"abc", LIMIT).unwrap();
        assert_eq!(d.unknown_coding.as_deref(), Some("zstd"));
    }

    #[test]
    fn corrupt_and_truncated_streams_are_errors() {
        let err = decode(&encoding("gzip"), TEXT, LIMIT).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { coding: "gzip", .. }), "{err:?}");
        let full = gzip(TEXT);
        let truncated = &full[..full.len() / 2];
        assert!(matches!(
            decode(&encoding("gzip"), truncated, LIMIT),
            Err(DecodeError::Corrupt { coding: "gzip", .. })
        ));
        assert!(matches!(
            decode(&encoding("deflate"), b"\xff\xff\xff\xff", LIMIT),
            Err(DecodeError::Corrupt { coding: "deflate", .. })
        ));
    }

    #[test]
    fn empty_body_with_a_coding_is_empty() {
        let d = decode(&encoding("gzip"), b"", LIMIT).unwrap();
        assert!(d.body.is_empty());
    }

    #[test]
    fn zip_bomb_is_refused_at_the_cap() {
        // 64 MiB of zeros compresses to about 64 KiB.
        let zeros = vec![0u8; 64 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 1 << 20);
        assert_eq!(decode(&encoding("gzip"), &bomb, 1 << 20), Err(DecodeError::TooLarge { limit: 1 << 20 }));
        assert_eq!(
            decode(&encoding("deflate"), &zlib(&zeros), 1 << 20),
            Err(DecodeError::TooLarge { limit: 1 << 20 })
        );
        // Exactly at the limit is fine.
        let at_limit = gzip(&zeros[..1 << 20]);
        let exact = decode(&encoding("gzip"), &at_limit, 1 << 20).unwrap();
        assert_eq!(exact.body.len(), 1 << 20);
        assert!(decode(&encoding("gzip"), &gzip(&zeros[..(1 << 20) + 1]), 1 << 20).is_err());
    }

    #[test]
    fn zlib_header_check() {
        assert!(looks_like_zlib(&zlib(b"x")));
        assert!(!looks_like_zlib(b"{\"a\""));
        assert!(!looks_like_zlib(b"x"));
    }
}
