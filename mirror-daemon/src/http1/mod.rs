//! HTTP/1.x framing and request/response pairing on one reassembled connection.
//!
//! Each direction is framed independently (RFC 9112 §6): heads with `httparse`, bodies by
//! `Content-Length`, chunked coding (trailers kept), or — for responses only — the end of the
//! connection. Responses pair with requests first in, first out, which is what HTTP/1.1 keep-alive
//! and pipelining guarantee. Response bytes that arrive before the request they answer (the two
//! directions are captured by different hooks and may be reordered) wait in a bounded backlog.
//!
//! Mispairing is the worst possible outcome, so this layer is deliberately conservative:
//!
//! - A gap inside a region whose length is already known (a `Content-Length` body, a chunk's data,
//!   a close-delimited body) keeps the framing: only that exchange is dropped (`gap`) and the next
//!   message boundary is still exact. A gap anywhere else (a head, a chunk-size line, between
//!   messages, or longer than the known region) loses the framing of that direction, and with it
//!   the count of messages: the connection stops being parsed (`gap_desync_connections`), because
//!   no later request boundary can be proven to pair with the right response.
//! - A connection first seen mid-stream is never parsed (`mid_stream_connections`), for the same
//!   reason: nothing proves where a message starts. [`crate::framing::HttpConfig::resync_mid_stream`] opts into
//!   picking such a connection up at a request, under an assumption that makes it safe: the client
//!   does not pipeline (see `resync.rs`).
//! - `Upgrade`, `CONNECT` and 101 responses stop parsing the connection — except `Upgrade: h2c`
//!   answered by a 101, where the connection goes on in HTTP/2 (handed over as a [`crate::framing::H2cUpgrade`]).
//! - A limit (head size, header count, pipelining depth, buffer total) stops the connection; a body
//!   over the body limit keeps the framing and drops only that exchange.
//! - Client bytes that are not HTTP where a request should start (garbage after a request) stop
//!   the client side only: the requests before them were complete and are answered in order, so
//!   they are still paired; then the connection stops (`framing_error_connections`).
//!
//! Once a connection stops being parsed, its remaining bytes are counted and ignored until it ends.
//!
//! One concern per file: [`reader`] frames one direction (heads, bodies, chunked coding),
//! [`head`] parses heads and decides body framing, [`connection`] pairs requests with responses,
//! and [`resync`] picks up connections first seen mid-stream.
mod connection;
mod head;
mod reader;
mod resync;
#[cfg(test)]
mod tests;

pub use connection::Connection;

use crate::drops::AssemblyDrops;

/// Why a connection stopped being parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    #[error("bytes missing where the framing needed them")]
    Gap,
    #[error("message head over the size or header-count limit")]
    HeaderTooLarge,
    #[error("more requests in flight than the pipelining limit")]
    PipelineOverflow,
    #[error("request could not be parsed")]
    MalformedRequest,
    #[error("response could not be parsed")]
    MalformedResponse,
    #[error("protocol upgrade")]
    Upgrade,
    #[error("CONNECT tunnel")]
    Connect,
    #[error("response without a request to answer")]
    UnpairedResponse,
    #[error("total HTTP buffer limit reached")]
    MemoryLimit,
    #[error("final response to `Expect: 100-continue` before the request body")]
    ExpectAmbiguous,
}

impl Stop {
    fn counter(self, stats: &mut AssemblyDrops) -> &mut u64 {
        match self {
            Stop::Gap => &mut stats.gap,
            Stop::HeaderTooLarge => &mut stats.header_too_large,
            Stop::PipelineOverflow => &mut stats.pipeline_overflow,
            Stop::MalformedRequest => &mut stats.malformed_request,
            Stop::MalformedResponse => &mut stats.malformed_response,
            Stop::Upgrade => &mut stats.unsupported_upgrade,
            Stop::Connect => &mut stats.unsupported_connect,
            Stop::UnpairedResponse => &mut stats.unpaired_response,
            Stop::MemoryLimit => &mut stats.memory_limit,
            Stop::ExpectAmbiguous => &mut stats.expect_ambiguous,
        }
    }
}
