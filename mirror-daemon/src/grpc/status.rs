//! The status of a gRPC call: `grpc-status` and `grpc-message`.
//!
//! They travel in the trailers after the last message, or — in a Trailers-Only response, which
//! has no messages — in the one header block. The trailers are read first; the headers only when
//! the trailers carry no status. `grpc-message` is percent-encoded UTF-8 (`%` and bytes outside
//! printable ASCII as `%XX`); it is decoded leniently, as the specification asks: a `%` not
//! followed by two hex digits is kept as is, and invalid UTF-8 is replaced.
use std::fmt;

use super::header;
use crate::exchange::Header;

/// A gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u32);

impl Code {
    pub const OK: Code = Code(0);

    /// The code's name in the gRPC specification (`UNAVAILABLE`), or `None` for codes past 16.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        NAMES.get(usize::try_from(self.0).ok()?).copied()
    }
}

/// `14 (UNAVAILABLE)`, or `99` for a code without a name.
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A call's status: its code and decoded message (empty when none was sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn is_ok(&self) -> bool {
        self.code == Code::OK
    }
}

/// Why a gRPC response has no status to read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("has no grpc-status in its trailers or headers")]
    Missing,
    #[error("has grpc-status {0:?}, which is not a decimal code")]
    Invalid(String),
}

/// Reads the status from the trailers, or from the headers of a Trailers-Only response.
pub fn read_status(headers: &[Header], trailers: &[Header]) -> Result<Status, StatusError> {
    let block = if header(trailers, "grpc-status").is_some() { trailers } else { headers };
    let raw = header(block, "grpc-status").ok_or(StatusError::Missing)?;
    let text = String::from_utf8_lossy(raw);
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StatusError::Invalid(text.into_owned()));
    }
    let code = digits.parse::<u32>().map_err(|_| StatusError::Invalid(text.to_string()))?;
    let message = header(block, "grpc-message").map(percent_decode).unwrap_or_default();
    Ok(Status { code: Code(code), message })
}

/// Decodes a percent-encoded `grpc-message`.
pub fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let hex = |at: usize| raw.get(at).and_then(|&d| char::from(d).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
