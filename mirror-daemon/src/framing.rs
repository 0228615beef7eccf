//! Limits of the HTTP framings (HTTP/1.x and HTTP/2 alike), declared once.
//!
//! Every limit bounds memory or work per connection or in total; hitting one is counted under a
//! reason in [`crate::drops`], never blocks and never grows without bound.

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
