//! What the HTTP framings share: their limits (HTTP/1.x and HTTP/2 alike), declared once, and the
//! hand-over from one to the other when a connection upgrades.
//!
//! Every limit bounds memory or work per connection or in total; hitting one is counted under a
//! reason in [`crate::drops`], never blocks and never grows without bound.
use crate::{
    exchange::{ExchangeId, Request},
    flows::FlowEvent,
};

/// Framing limits, of HTTP/1.x and HTTP/2 alike. Hitting one is counted, never blocks.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request or response head (start line and header fields), and trailer block.
    pub max_header_bytes: usize,
    /// Most header fields in one head.
    pub max_headers: usize,
    /// Largest de-chunked body kept; larger bodies are framed but dropped.
    pub max_body_bytes: usize,
    /// Most requests waiting for their response on one connection.
    pub max_pipelined: usize,
    /// Most response bytes waiting for the request they answer.
    pub max_backlog_bytes: usize,
    /// Partial messages buffered across all connections.
    pub max_buffered_total: usize,
    /// Pick up connections first seen mid-stream at the next request (see `resync.rs`). Off by
    /// default: it assumes clients do not pipeline.
    pub resync_mid_stream: bool,
    /// HTTP/2: most streams of one connection tracked at once.
    pub max_streams: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 << 10,
            max_headers: 128,
            max_body_bytes: 64 << 20,
            max_pipelined: 32,
            max_backlog_bytes: 1 << 20,
            max_buffered_total: 1 << 30,
            resync_mid_stream: false,
            max_streams: 1024,
        }
    }
}

/// A connection that switched to HTTP/2 after `Upgrade: h2c` and a 101 (RFC 7540 §3.2): the
/// HTTP/1.1 request that asked for it, whose response comes on HTTP/2 stream 1, and the events of
/// each direction after the switch, which are HTTP/2.
#[derive(Debug)]
pub struct H2cUpgrade {
    /// The request's id (it was announced as an HTTP/1.1 request).
    pub id: ExchangeId,
    pub request: Request,
    pub request_first_ns: u64,
    pub request_last_ns: u64,
    /// The first [`ExchangeId::seq`] the HTTP/1.1 part did not use.
    pub next_seq: u64,
    /// Client and server events after the switch, in order per direction.
    pub events: Vec<FlowEvent>,
}
