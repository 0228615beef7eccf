//! The length-prefixed message stream in a gRPC body, and message compression.
//!
//! A body is a sequence of messages, each a 1-byte compressed flag, a 4-byte big-endian length and
//! that many bytes. A set flag means the message is compressed with the stream's `grpc-encoding`
//! (`identity`, `gzip` or `deflate` here); a clear flag means it is sent as is, whatever the
//! encoding. Splitting is bounded in the number of messages and decompression in the total size,
//! so a body of millions of empty messages or a compression bomb is refused, not followed.
use std::{borrow::Cow, io::Read};

use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

use super::header;
use crate::exchange::Header;

/// Most messages taken from one body.
pub const MAX_MESSAGES: usize = 65_536;

/// Bytes before each message: the compressed flag and the length.
const PREFIX: usize = 5;

/// One message as framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The compressed flag (any non-zero byte counts, as gRPC implementations read it).
    pub compressed: bool,
    pub payload: &'a [u8],
}

/// Why a body does not split into messages. Messages read after "<side> body ...".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("ends inside a message prefix ({remaining} of {PREFIX} bytes at offset {offset})")]
    TruncatedPrefix { offset: usize, remaining: usize },
    #[error("has a message of {length} bytes at offset {offset}, but only {remaining} bytes follow")]
    LengthBeyondBody { offset: usize, length: usize, remaining: usize },
    #[error("has more than {limit} gRPC messages")]
    TooManyMessages { limit: usize },
}

/// Why a message could not be decompressed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message {index} is flagged compressed but the stream names no grpc-encoding")]
    CompressedWithoutEncoding { index: usize },
    #[error("message {index} is compressed with grpc-encoding {encoding:?}, which is not understood")]
    UnknownEncoding { index: usize, encoding: String },
    #[error("message {index} is not valid {encoding} ({reason})")]
    Corrupt { index: usize, encoding: &'static str, reason: String },
    #[error("messages are larger than {limit} bytes once decompressed")]
    TooLarge { limit: usize },
}

/// Splits a body into its messages, at most `max_messages` of them.
pub fn split(body: &[u8], max_messages: usize) -> Result<Vec<Frame<'_>>, FrameError> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while offset < body.len() {
        let rest = body.get(offset..).unwrap_or_default();
        let Some((prefix, after)) = rest.split_first_chunk::<PREFIX>() else {
            return Err(FrameError::TruncatedPrefix { offset, remaining: rest.len() });
        };
        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let Some(payload) = after.get(..length) else {
            return Err(FrameError::LengthBeyondBody { offset, length, remaining: after.len() });
        };
        if frames.len() == max_messages {
            return Err(FrameError::TooManyMessages { limit: max_messages });
        }
        frames.push(Frame { compressed: prefix[0] != 0, payload });
        offset += PREFIX + length;
    }
    Ok(frames)
}

/// The stream's message encoding (`grpc-encoding`), lowercased; `identity` when absent.
pub fn encoding(headers: &[Header]) -> String {
    header(headers, "grpc-encoding")
        .map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "identity".to_string())
}

/// Decompresses message `index` of a stream encoded with `encoding`, within `budget` bytes
/// (reduced by what the message takes).
pub fn decode_message<'a>(
    frame: &Frame<'a>,
    index: usize,
    encoding: &str,
    budget: &mut usize,
    limit: usize,
) -> Result<Cow<'a, [u8]>, MessageError> {
    let data: Cow<'a, [u8]> = if !frame.compressed {
        Cow::Borrowed(frame.payload)
    } else {
        match encoding {
            "identity" => return Err(MessageError::CompressedWithoutEncoding { index }),
            "gzip" => {
                Cow::Owned(read_bounded(MultiGzDecoder::new(frame.payload), *budget, limit, index, "gzip")?)
            }
            "deflate" => Cow::Owned(inflate(frame.payload, *budget, limit, index)?),
            other => return Err(MessageError::UnknownEncoding { index, encoding: other.to_string() }),
        }
    };
    *budget = budget.checked_sub(data.len()).ok_or(MessageError::TooLarge { limit })?;
    Ok(data)
}

/// Splits a body and decompresses every message, the total capped at `limit` bytes.
pub fn decode_messages<'a>(
    headers: &[Header],
    body: &'a [u8],
    limit: usize,
) -> Result<Vec<Cow<'a, [u8]>>, DecodeError> {
    let frames = split(body, MAX_MESSAGES)?;
    let encoding = encoding(headers);
    let mut budget = limit;
    let mut out = Vec::with_capacity(frames.len());
    for (index, frame) in frames.iter().enumerate() {
        out.push(decode_message(frame, index, &encoding, &mut budget, limit)?);
    }
    Ok(out)
}

/// Why a body's messages could not be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// gRPC's `deflate` is the zlib format; a raw deflate stream is accepted too, as for HTTP bodies.
fn inflate(data: &[u8], budget: usize, limit: usize, index: usize) -> Result<Vec<u8>, MessageError> {
    match read_bounded(ZlibDecoder::new(data), budget, limit, index, "deflate") {
        Ok(decoded) => Ok(decoded),
        Err(e @ MessageError::TooLarge { .. }) => Err(e),
        Err(_) => read_bounded(DeflateDecoder::new(data), budget, limit, index, "deflate"),
    }
}

fn read_bounded(
    reader: impl Read,
    budget: usize,
    limit: usize,
    index: usize,
    encoding: &'static str,
) -> Result<Vec<u8>, MessageError> {
    let mut out = Vec::new();
    // One byte past the budget tells "exactly at the cap" from "over it".
    let cap = u64::try_from(budget).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out).map_err(|e| MessageError::Corrupt {
        index,
        encoding,
        reason: e.to_string(),
    })?;
    if out.len() > budget {
        return Err(MessageError::TooLarge { limit });
    }
    Ok(out)
}
