//! Rebuilt HTTP exchanges and the pure pipeline that produces them from captured segments.
//!
//! [`Assembler`] is the front door: it feeds [`Segment`]s through TCP reassembly ([`crate::flows`])
//! and HTTP/1.1 framing and pairing ([`crate::http`]) and hands back complete [`Exchange`]s. It is
//! plain synchronous code with time passed in (`Segment::ts_ns` and [`Assembler::tick`]'s `now_ns`),
//! so it is tested with segments built in memory and never reads a clock or does I/O.
//!
//! Whatever cannot be rebuilt with certainty is dropped and counted in [`DropCounters`]: a wrong
//! comparison is worse than a missing one (see the design's invariant 2).
use std::{collections::HashMap, net::SocketAddr};

use bytes::Bytes;

use crate::{
    capture::Segment,
    flows::{ConnId, FlowConfig, FlowEvent, FlowTable},
    http::{self, HttpConfig},
};

/// One header field; the value keeps the wire bytes (it need not be UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
}

/// A request as the client sent it, body de-chunked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Request target as sent (usually origin form, `/path?query`).
    pub target: String,
    /// HTTP minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<Header>,
    /// Body with any chunked framing removed.
    pub body: Bytes,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<Header>,
}

/// The production server's final (non-1xx) response, body de-chunked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// HTTP minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<Header>,
    /// Body with any chunked framing removed.
    pub body: Bytes,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<Header>,
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
    /// The request's position on the connection, from 0.
    pub seq: u64,
}

/// A request that is complete and undamaged, announced before its response (when
/// [`AssemblerConfig::announce_requests`] is set) so that it can be replayed right away.
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

macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)*) => {
        /// Why data was dropped or not rebuilt: one counter per reason, all monotonic.
        ///
        /// Counts are exchanges (requests) unless the name ends in `_bytes`, `_segments`,
        /// `_connections` or `_events`.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct DropCounters {
            $($(#[doc = $doc])+ pub $name: u64,)*
        }

        impl DropCounters {
            /// Counter names, in the order [`DropCounters::list`] returns them.
            pub const NAMES: &[&str] = &[$(stringify!($name),)*];

            /// `(name, value)` pairs for logs and metrics.
            pub fn list(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Segments whose ports match no configured server port.
    not_server_port_segments,
    /// Segments too far outside the receive window to be placed in the stream.
    out_of_window_segments,
    /// Times a connection's out-of-order buffer limit forced a hole to become a gap.
    out_of_order_overflow_events,
    /// Times the total buffer limit forced a hole to become a gap.
    memory_limit_events,
    /// Open connections evicted because the connection table was full.
    conn_limit_evicted_connections,
    /// Open connections that timed out while idle.
    idle_timeout_connections,
    /// Exchanges lost to missing bytes (a gap inside a message).
    gap,
    /// Connections whose framing was lost to a gap: no further exchange is rebuilt on them.
    gap_desync_connections,
    /// Connections first seen without a SYN: never parsed (no provable message boundary), unless
    /// `--resync-mid-stream` picks them up at a request.
    mid_stream_connections,
    /// Bytes of connections first seen without a SYN (with `--resync-mid-stream`: until resynced).
    mid_stream_skipped_bytes,
    /// With `--resync-mid-stream`: requests dropped because the first response after the request
    /// chosen to resynchronise at did not start with a status line (a pipelining client, or a
    /// retransmission).
    mid_stream_resync_failed,
    /// Bytes skipped on connections that stopped being parsed (gap, malformed, unsupported, limit).
    desync_skipped_bytes,
    /// Exchanges whose head exceeded the header size limit or the header count limit.
    header_too_large,
    /// Exchanges whose body exceeded the body size limit.
    body_too_large,
    /// Requests beyond the pipelining depth limit.
    pipeline_overflow,
    /// Requests that could not be parsed.
    malformed_request,
    /// Responses that could not be parsed.
    malformed_response,
    /// Exchanges on connections that switched protocol (`Upgrade`, 101).
    unsupported_upgrade,
    /// Exchanges on `CONNECT` tunnels.
    unsupported_connect,
    /// Connections that opened with the HTTP/2 preface.
    unsupported_http2_connections,
    /// Responses with no request to pair with.
    unpaired_response,
    /// Requests that got no response before the connection ended.
    unanswered_request,
    /// Requests cut short by the end of the connection.
    truncated_request,
    /// Responses cut short by the end of the connection.
    truncated_response,
    /// Exchanges in progress when the connection was reset.
    reset_with_pending,
    /// Exchanges in progress when the connection timed out.
    idle_timeout_with_pending,
    /// Exchanges in progress when the connection was evicted or its 4-tuple reused.
    evicted_with_pending,
    /// Exchanges dropped because the total HTTP buffer limit was hit.
    memory_limit,
    /// Connections stopped because a final response to `Expect: 100-continue` came before the
    /// request body: whether the body follows cannot be proven.
    expect_ambiguous,
}

/// Configuration of the whole pipeline.
#[derive(Clone, Debug, Default)]
pub struct AssemblerConfig {
    pub flows: FlowConfig,
    pub http: HttpConfig,
    /// Announce each complete request before its response ([`Assembler::take_ready_requests`]).
    pub announce_requests: bool,
}

/// Segments in, exchanges out: TCP reassembly, HTTP framing and FIFO pairing, bounded and counted.
#[derive(Debug)]
pub struct Assembler {
    flows: FlowTable,
    conns: HashMap<ConnId, http::Connection>,
    http_config: HttpConfig,
    events: Vec<FlowEvent>,
    stats: DropCounters,
    http_buffered: usize,
    announce_requests: bool,
    ready: Vec<ReadyRequest>,
}

impl Assembler {
    pub fn new(config: AssemblerConfig) -> Self {
        Self {
            flows: FlowTable::new(config.flows),
            conns: HashMap::new(),
            http_config: config.http,
            events: Vec::new(),
            stats: DropCounters::default(),
            http_buffered: 0,
            announce_requests: config.announce_requests,
            ready: Vec::new(),
        }
    }

    /// Requests completed since the last call, in completion order (only with
    /// [`AssemblerConfig::announce_requests`]). Each may still end up without an exchange (a
    /// damaged or missing response), so consumers must expire what they wait for.
    pub fn take_ready_requests(&mut self) -> std::vec::Drain<'_, ReadyRequest> {
        self.ready.drain(..)
    }

    /// Feeds one captured segment; exchanges it completes are appended to `out`.
    pub fn push(&mut self, segment: Segment, out: &mut Vec<Exchange>) {
        let mut events = std::mem::take(&mut self.events);
        self.flows.push(&segment, &mut events, &mut self.stats);
        self.dispatch(&mut events, out);
        self.events = events;
    }

    /// Expires connections idle since before `now_ns - idle_timeout` (same clock as `ts_ns`).
    /// Their holes become gaps and unfinished exchanges are dropped and counted.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Exchange>) {
        let mut events = std::mem::take(&mut self.events);
        self.flows.tick(now_ns, &mut events, &mut self.stats);
        self.dispatch(&mut events, out);
        self.events = events;
    }

    /// Drop and unsupported counters since creation.
    pub fn stats(&self) -> &DropCounters {
        &self.stats
    }

    /// Bytes currently buffered: out-of-order TCP data plus partial HTTP messages.
    pub fn memory_bytes(&self) -> usize {
        self.flows.buffered_bytes() + self.http_buffered
    }

    /// Connections tracked by TCP reassembly (including recently closed ones kept to recognise
    /// their late retransmissions).
    pub fn connections(&self) -> usize {
        self.flows.len()
    }

    fn dispatch(&mut self, events: &mut Vec<FlowEvent>, out: &mut Vec<Exchange>) {
        for event in events.drain(..) {
            let id = event.id();
            if let FlowEvent::Opened { id, key } = event {
                let mut conn = http::Connection::new(key.client, key.server);
                conn.identify(id, self.announce_requests);
                self.conns.insert(id, conn);
                continue;
            }
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            let before = conn.buffered();
            let closed = matches!(event, FlowEvent::Closed { .. });
            conn.handle(event, &self.http_config, &mut self.stats, out);
            conn.take_ready(&mut self.ready);
            let after = conn.buffered();
            self.http_buffered = self.http_buffered + after - before;
            if closed {
                self.http_buffered -= after;
                self.conns.remove(&id);
            } else if self.http_buffered > self.http_config.max_buffered_total {
                // Bounded memory: give up on the connection that just grew rather than grow.
                let before = conn.buffered();
                conn.abort_memory_limit(&mut self.stats);
                self.http_buffered = self.http_buffered + conn.buffered() - before;
            }
        }
    }
}
