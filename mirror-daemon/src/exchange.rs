//! Rebuilt exchanges, whatever protocol carried them: the types every later stage works on.
//!
//! The assembler ([`crate::assembler`]) produces them from captured segments through HTTP/1.x
//! ([`crate::http1`]) or HTTP/2 framing; replay, comparison and reporting only ever see these types.
//! So they say what an exchange *is* — heads as ordered name/value lists, bodies, trailers, kernel
//! timestamps, and which protocol (and HTTP/2 stream) carried it — never how it was framed.
use std::{fmt, net::SocketAddr};

use bytes::{Bytes, BytesMut};

/// One header field; the value keeps the wire bytes (it need not be UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
}

/// The protocol an exchange was carried by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http10,
    #[default]
    Http11,
    Http2,
}

impl HttpVersion {
    /// As records and logs name it: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
            HttpVersion::Http2 => "HTTP/2",
        }
    }

    /// The HTTP/1.x minor version (`HTTP/1.0` → 0); `None` for HTTP/2.
    pub fn http1_minor(self) -> Option<u8> {
        match self {
            HttpVersion::Http10 => Some(0),
            HttpVersion::Http11 => Some(1),
            HttpVersion::Http2 => None,
        }
    }
}

impl fmt::Display for HttpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request as the client sent it, body de-chunked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Request target as sent (usually origin form, `/path?query`; HTTP/2's `:path`).
    pub target: String,
    pub version: HttpVersion,
    /// Header fields in wire order. For HTTP/2, regular fields only: `:method` and `:path` are
    /// above, `:authority` is given as a `host` field, `:scheme` is left out.
    pub headers: Vec<Header>,
    /// Body with any chunked framing removed.
    pub body: Bytes,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<Header>,
}

/// The production server's final (non-1xx) response, body de-chunked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Reason phrase (HTTP/1.x; empty for HTTP/2).
    pub reason: String,
    pub version: HttpVersion,
    /// Header fields in wire order (for HTTP/2 without `:status`).
    pub headers: Vec<Header>,
    /// Body with any chunked framing removed.
    pub body: Bytes,
    /// When the body's bytes were captured, piece by piece.
    pub arrivals: Arrivals,
    /// Trailer fields (of a chunked body, or HTTP/2 trailers).
    pub trailers: Vec<Header>,
}

/// When each piece of a body was captured: the kernel timestamp at which the body had reached
/// each length. Streamed answers (chunked bodies, server-sent events) are judged by when their
/// parts arrived, not only by their last byte; pieces captured at the same time are merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Arrivals {
    /// `(body length so far, ts_ns)`, lengths increasing.
    pieces: Vec<(u64, u64)>,
}

impl Arrivals {
    /// The body grew to `length` bytes with bytes captured at `ts_ns`.
    pub fn push(&mut self, length: u64, ts_ns: u64) {
        match self.pieces.last_mut() {
            Some(last) if last.1 == ts_ns => last.0 = length,
            Some(last) if last.0 >= length => {}
            _ => self.pieces.push((length, ts_ns)),
        }
    }

    /// `(body length so far, ts_ns)` per piece, in body order.
    pub fn pieces(&self) -> &[(u64, u64)] {
        &self.pieces
    }

    /// When the body's byte at `offset` was captured (`None` beyond the body).
    pub fn time_of(&self, offset: u64) -> Option<u64> {
        let i = self.pieces.partition_point(|&(end, _)| end <= offset);
        self.pieces.get(i).map(|&(_, ts)| ts)
    }

    pub fn clear(&mut self) {
        self.pieces.clear();
    }
}

/// A body being received piece by piece (a content-length body, chunks, HTTP/2 DATA frames):
/// bounded, and zero-copy when it came in one piece.
#[derive(Debug, Default)]
pub struct BodyBuilder {
    parts: Vec<Bytes>,
    len: usize,
    /// Keep the [`Arrivals`] of the pieces (for responses).
    timed: bool,
    arrivals: Arrivals,
    too_large: bool,
}

impl BodyBuilder {
    /// A builder that also keeps when each piece arrived.
    pub fn timed() -> Self {
        Self { timed: true, ..Self::default() }
    }

    /// Appends a piece captured at `ts_ns`. Beyond `max` bytes the body is dropped (its pieces
    /// released) and only [`Self::too_large`] remains.
    pub fn push(&mut self, part: Bytes, ts_ns: u64, max: usize) {
        if self.too_large || part.is_empty() {
            return;
        }
        if self.len + part.len() > max {
            self.too_large = true;
            self.parts.clear();
            self.len = 0;
            self.arrivals.clear();
            return;
        }
        self.len += part.len();
        self.parts.push(part);
        if self.timed {
            self.arrivals.push(self.len as u64, ts_ns);
        }
    }

    /// The pieces held so far, in order (empty once the body grew too large).
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body grew over its limit.
    pub fn too_large(&self) -> bool {
        self.too_large
    }

    /// The whole body and its arrivals; one copy only when it came in several pieces. The
    /// builder is empty afterwards (and keeps whether it is timed).
    pub fn take(&mut self) -> (Bytes, Arrivals) {
        let body = match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.len);
                for part in self.parts.drain(..) {
                    all.extend_from_slice(&part);
                }
                all.freeze()
            }
        };
        self.len = 0;
        self.too_large = false;
        (body, std::mem::take(&mut self.arrivals))
    }

    /// Forgets everything received (keeps whether it is timed).
    pub fn clear(&mut self) {
        self.parts.clear();
        self.len = 0;
        self.too_large = false;
        self.arrivals.clear();
    }
}

/// Kernel timestamps (CLOCK_MONOTONIC ns, from [`Segment::ts_ns`]) of the segments that carried
/// each message: `*_first_ns` is the earliest and `*_last_ns` the latest capture time among them
/// (with in-order capture, the segments of the first and the last byte; a retransmitted or
/// reordered segment can only move `*_last_ns` later, i.e. to when the message was complete).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub request_first_ns: u64,
    pub request_last_ns: u64,
    /// First byte of the final response; interim 1xx responses are not counted.
    pub response_first_ns: u64,
    pub response_last_ns: u64,
}

/// Identifies one exchange from its request to its response: the connection and the request's
/// position on it. A replay started when the request completed is joined with the production
/// response through it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId {
    /// The connection (unique for the daemon's lifetime, also across 4-tuple reuse).
    pub connection: u64,
    /// HTTP/1.x: the request's position on the connection, from 0. HTTP/2: the stream id.
    pub seq: u64,
}

/// A request that is complete and undamaged, announced before its response (when the assembler
/// is asked to) so that it can be replayed right away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyRequest {
    pub id: ExchangeId,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub request: Request,
    /// Kernel timestamps of the request's first and last byte.
    pub first_ns: u64,
    pub last_ns: u64,
}

/// One request and the production response that answered it, both taken from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub id: ExchangeId,
    /// The HTTP/2 stream that carried it.
    pub stream_id: Option<u32>,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub request: Request,
    pub response: Response,
    pub timing: Timing,
}

impl Exchange {
    /// Production latency: the response's last byte minus the request's last byte.
    ///
    /// The server cannot start work before the request is complete, and the answer is only usable
    /// once its last byte left, so this measures processing plus response transfer as seen at the
    /// capture point, which is also what a shadow replay measures. For streamed responses it covers
    /// the whole generation. Saturates at 0 (an early response, e.g. a 413, can precede the end of
    /// the request body).
    pub fn production_latency_ns(&self) -> u64 {
        self.timing.response_last_ns.saturating_sub(self.timing.request_last_ns)
    }

    /// Time to first byte: the response's first byte minus the request's last byte (saturating).
    pub fn time_to_first_byte_ns(&self) -> u64 {
        self.timing.response_first_ns.saturating_sub(self.timing.request_last_ns)
    }
}

/// What the assembler hands on, in the order it happened: each request as soon as it is complete
/// (when asked to announce requests), and each exchange when its response is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assembled {
    Request(ReadyRequest),
    Exchange(Exchange),
}

impl Assembled {
    /// The exchange, if this is one.
    pub fn into_exchange(self) -> Option<Exchange> {
        match self {
            Assembled::Exchange(exchange) => Some(exchange),
            Assembled::Request(_) => None,
        }
    }

    /// The announced request, if this is one.
    pub fn into_request(self) -> Option<ReadyRequest> {
        match self {
            Assembled::Request(ready) => Some(ready),
            Assembled::Exchange(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_merge_same_time_pieces_and_answer_by_offset() {
        let mut a = Arrivals::default();
        a.push(10, 100);
        a.push(25, 100);
        a.push(40, 300);
        a.push(40, 400);
        assert_eq!(a.pieces(), [(25, 100), (40, 300)]);
        assert_eq!(a.time_of(0), Some(100));
        assert_eq!(a.time_of(24), Some(100));
        assert_eq!(a.time_of(25), Some(300));
        assert_eq!(a.time_of(40), None);
    }
}
