//! HTTP/1.1 framing and request/response pairing on one reassembled connection.
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
//!   reason: nothing proves where a message starts. [`HttpConfig::resync_mid_stream`] opts into
//!   picking such a connection up at a request, under an assumption that makes it safe: the client
//!   does not pipeline (see [`Resync`]).
//! - `Upgrade`, `CONNECT`, 101 responses and the HTTP/2 preface stop parsing the connection.
//! - A limit (head size, header count, pipelining depth, buffer total) stops the connection; a body
//!   over the body limit keeps the framing and drops only that exchange.
//!
//! Once a connection stops being parsed, its remaining bytes are counted and ignored until it ends.
use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};

use crate::{
    exchange::{DropCounters, Exchange, ExchangeId, Header, ReadyRequest, Request, Response, Timing},
    flows::{CloseReason, FlowEvent, Side},
};

#[cfg(test)]
mod tests;

/// Framing limits. Hitting one is counted, never blocks.
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
    /// Pick up connections first seen mid-stream at the next request (see [`Resync`]). Off by
    /// default: it assumes clients do not pipeline.
    pub resync_mid_stream: bool,
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
        }
    }
}

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
    #[error("HTTP/2 connection preface")]
    Http2,
    #[error("response without a request to answer")]
    UnpairedResponse,
    #[error("total HTTP buffer limit reached")]
    MemoryLimit,
    #[error("final response to `Expect: 100-continue` before the request body")]
    ExpectAmbiguous,
}

impl Stop {
    fn counter(self, stats: &mut DropCounters) -> &mut u64 {
        match self {
            Stop::Gap => &mut stats.gap,
            Stop::HeaderTooLarge => &mut stats.header_too_large,
            Stop::PipelineOverflow => &mut stats.pipeline_overflow,
            Stop::MalformedRequest => &mut stats.malformed_request,
            Stop::MalformedResponse => &mut stats.malformed_response,
            Stop::Upgrade => &mut stats.unsupported_upgrade,
            Stop::Connect => &mut stats.unsupported_connect,
            Stop::Http2 => &mut stats.unsupported_http2_connections,
            Stop::UnpairedResponse => &mut stats.unpaired_response,
            Stop::MemoryLimit => &mut stats.memory_limit,
            Stop::ExpectAmbiguous => &mut stats.expect_ambiguous,
        }
    }
}

/// Why one exchange is dropped although the framing held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    Gap,
    BodyTooLarge,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
}

/// Framing state of one direction.
#[derive(Debug, Default)]
struct Reader {
    phase: Phase,
    /// Head bytes split across segments.
    head_buf: BytesMut,
    /// Chunk-size line or trailer block split across segments.
    line_buf: BytesMut,
    trailer_buf: BytesMut,
    body: Vec<Bytes>,
    body_len: usize,
    too_large: bool,
    damaged: bool,
    /// A byte of the current message has been seen.
    started: bool,
    first_ts: u64,
    last_ts: u64,
}

enum HeadResult {
    /// All input consumed, head not complete yet.
    Partial,
    Complete(Bytes),
}

impl Reader {
    fn buffered(&self) -> usize {
        self.head_buf.len() + self.line_buf.len() + self.trailer_buf.len() + self.body_len
    }

    /// Records that bytes captured at `ts` belong to the current message. Segments can be captured
    /// out of order, so the first and last times are the earliest and latest seen.
    fn touch(&mut self, ts: u64) {
        if !self.started {
            self.started = true;
            self.first_ts = ts;
            self.last_ts = ts;
        }
        self.first_ts = self.first_ts.min(ts);
        self.last_ts = self.last_ts.max(ts);
    }

    /// Prepares for the next message, keeping allocations.
    fn reset(&mut self) {
        self.phase = Phase::Head;
        self.head_buf.clear();
        self.line_buf.clear();
        self.trailer_buf.clear();
        self.body.clear();
        self.body_len = 0;
        self.too_large = false;
        self.damaged = false;
        self.started = false;
    }

    /// Extracts a complete head from `data` (zero-copy when one segment holds it).
    fn take_head(
        &mut self,
        data: &mut Bytes,
        ts: u64,
        cfg: &HttpConfig,
        side: Side,
    ) -> Result<HeadResult, Stop> {
        self.touch(ts);
        if self.head_buf.is_empty() {
            match head_len(data, cfg, side)? {
                Some(n) if n > cfg.max_header_bytes => return Err(Stop::HeaderTooLarge),
                Some(n) => return Ok(HeadResult::Complete(data.split_to(n))),
                None if data.len() > cfg.max_header_bytes => return Err(Stop::HeaderTooLarge),
                None => {
                    self.head_buf.extend_from_slice(data);
                    data.clear();
                    return Ok(HeadResult::Partial);
                }
            }
        }
        let take = data.len().min(cfg.max_header_bytes + 1 - self.head_buf.len().min(cfg.max_header_bytes));
        let old = self.head_buf.len();
        self.head_buf.extend_from_slice(&data[..take]);
        match head_len(&self.head_buf, cfg, side)? {
            Some(n) if n > cfg.max_header_bytes => Err(Stop::HeaderTooLarge),
            Some(n) => {
                data.advance(n - old);
                self.head_buf.truncate(n);
                Ok(HeadResult::Complete(self.head_buf.split().freeze()))
            }
            None if self.head_buf.len() > cfg.max_header_bytes => Err(Stop::HeaderTooLarge),
            None => {
                data.advance(take);
                Ok(HeadResult::Partial)
            }
        }
    }

    fn push_body(&mut self, part: Bytes, cfg: &HttpConfig) {
        if self.too_large || part.is_empty() {
            return;
        }
        if self.body_len + part.len() > cfg.max_body_bytes {
            self.too_large = true;
            self.body.clear();
            self.body_len = 0;
            return;
        }
        self.body_len += part.len();
        self.body.push(part);
    }

    /// The de-chunked body; one copy only when it arrived in several pieces.
    fn take_body(&mut self) -> Bytes {
        let body = match self.body.len() {
            0 => Bytes::new(),
            1 => self.body.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.body_len);
                for part in self.body.drain(..) {
                    all.extend_from_slice(&part);
                }
                all.freeze()
            }
        };
        self.body.clear();
        self.body_len = 0;
        body
    }

    /// Consumes body bytes; `Ok(true)` when the message is complete.
    fn feed_body(&mut self, data: &mut Bytes, ts: u64, cfg: &HttpConfig, bad: Stop) -> Result<bool, Stop> {
        self.touch(ts);
        loop {
            match self.phase {
                Phase::Head => return Ok(true),
                Phase::Length(0) => return Ok(true),
                Phase::Length(rest) | Phase::ChunkData(rest) => {
                    if data.is_empty() {
                        return Ok(false);
                    }
                    let n = rest.min(data.len() as u64) as usize;
                    let part = data.split_to(n);
                    self.push_body(part, cfg);
                    let rest = rest - n as u64;
                    self.phase = match self.phase {
                        Phase::Length(_) => Phase::Length(rest),
                        _ if rest == 0 => Phase::ChunkEnd,
                        _ => Phase::ChunkData(rest),
                    };
                }
                Phase::UntilClose => {
                    let part = std::mem::take(data);
                    self.push_body(part, cfg);
                    return Ok(false);
                }
                Phase::ChunkSize => {
                    if !read_line(&mut self.line_buf, data, 1024).ok_or(bad)? {
                        return Ok(false);
                    }
                    let size = match httparse::parse_chunk_size(&self.line_buf) {
                        Ok(httparse::Status::Complete((_, size))) => size,
                        _ => return Err(bad),
                    };
                    self.line_buf.clear();
                    self.phase = if size == 0 { Phase::Trailers } else { Phase::ChunkData(size) };
                }
                Phase::ChunkEnd => {
                    if !read_line(&mut self.line_buf, data, 2).ok_or(bad)? {
                        return Ok(false);
                    }
                    if !is_empty_line(&self.line_buf) {
                        return Err(bad);
                    }
                    self.line_buf.clear();
                    self.phase = Phase::ChunkSize;
                }
                Phase::Trailers => {
                    if !read_line(&mut self.line_buf, data, cfg.max_header_bytes)
                        .ok_or(Stop::HeaderTooLarge)?
                    {
                        return Ok(false);
                    }
                    let done = is_empty_line(&self.line_buf);
                    self.trailer_buf.extend_from_slice(&self.line_buf);
                    self.line_buf.clear();
                    if self.trailer_buf.len() > cfg.max_header_bytes {
                        return Err(Stop::HeaderTooLarge);
                    }
                    if done {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Applies a gap of `len` bytes; `Err` when the framing cannot survive it.
    fn gap(&mut self, len: u64) -> Result<(), Stop> {
        match self.phase {
            Phase::Length(rest) if len <= rest => self.phase = Phase::Length(rest - len),
            Phase::ChunkData(rest) if len < rest => self.phase = Phase::ChunkData(rest - len),
            Phase::ChunkData(rest) if len == rest => self.phase = Phase::ChunkEnd,
            Phase::UntilClose => {}
            _ => return Err(Stop::Gap),
        }
        self.damaged = true;
        Ok(())
    }

    /// Trailer fields of the finished chunked body.
    /// Takes the finished message's body and trailers and readies the reader for the next one.
    fn finish(&mut self) -> Finished {
        let damage = if self.damaged {
            Some(Damage::Gap)
        } else if self.too_large {
            Some(Damage::BodyTooLarge)
        } else {
            None
        };
        let finished =
            Finished { body: self.take_body(), trailers: self.take_trailers(), last: self.last_ts, damage };
        self.reset();
        finished
    }

    fn take_trailers(&mut self) -> Vec<Header> {
        if self.trailer_buf.len() <= 2 {
            return Vec::new();
        }
        let block = self.trailer_buf.split().freeze();
        let mut headers = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(&block, &mut headers) {
            Ok(httparse::Status::Complete((_, fields))) => to_headers(&block, fields),
            // Trailers are informative only; unparsable ones are left out rather than guessed.
            _ => Vec::new(),
        }
    }
}

/// Appends bytes up to and including the next LF to `line`: `Some(true)` once the line is
/// complete, `None` when it exceeds `max` bytes.
fn read_line(line: &mut BytesMut, data: &mut Bytes, max: usize) -> Option<bool> {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&data[..=i]);
            data.advance(i + 1);
        }
        None => {
            line.extend_from_slice(data);
            data.clear();
        }
    }
    if line.len() > max {
        return None;
    }
    Some(line.last() == Some(&b'\n'))
}

fn is_empty_line(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

/// Length of the complete head at the start of `buf`, if there is one.
fn head_len(buf: &[u8], cfg: &HttpConfig, side: Side) -> Result<Option<usize>, Stop> {
    let mut headers = vec_headers(cfg);
    let status = match side {
        Side::Client => httparse::Request::new(&mut headers).parse(buf),
        Side::Server => httparse::Response::new(&mut headers).parse(buf),
    };
    match status {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Stop::HeaderTooLarge),
        Err(_) if side == Side::Client && buf.starts_with(b"PRI * HTTP/2") => Err(Stop::Http2),
        Err(_) if side == Side::Client => Err(Stop::MalformedRequest),
        Err(_) => Err(Stop::MalformedResponse),
    }
}

fn vec_headers(cfg: &HttpConfig) -> Vec<httparse::Header<'static>> {
    // A small stack array would need a fixed bound; the count is configurable, and this
    // allocation happens once per head, which is far below the per-byte work.
    vec![httparse::EMPTY_HEADER; cfg.max_headers.max(1)]
}

fn to_headers(block: &Bytes, fields: &[httparse::Header<'_>]) -> Vec<Header> {
    fields.iter().map(|h| Header { name: h.name.to_owned(), value: block.slice_ref(h.value) }).collect()
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Framing {
    fn phase(self) -> Phase {
        match self {
            Framing::None => Phase::Length(0),
            Framing::Length(n) => Phase::Length(n),
            Framing::Chunked => Phase::ChunkSize,
            Framing::UntilClose => Phase::UntilClose,
        }
    }
}

fn has_token(headers: &[Header], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .any(|h| h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
}

/// Body framing from `Transfer-Encoding` and `Content-Length` (RFC 9112 §6.3); `None` when the
/// fields are contradictory or invalid.
fn body_framing(headers: &[Header], is_request: bool) -> Option<Framing> {
    let mut te = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).peekable();
    if te.peek().is_some() {
        let last = te.flat_map(|h| h.value.split(|&b| b == b',')).map(<[u8]>::trim_ascii).last();
        return match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => Some(Framing::Chunked),
            _ if is_request => None,
            _ => Some(Framing::UntilClose),
        };
    }
    let mut length = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        for v in h.value.split(|&b| b == b',') {
            let v = v.trim_ascii();
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) => Some(Framing::Length(n)),
        None if is_request => Some(Framing::None),
        None => Some(Framing::UntilClose),
    }
}

struct RequestHead {
    request: Request,
    framing: Framing,
}

fn parse_request(head: &Bytes, cfg: &HttpConfig) -> Result<RequestHead, Stop> {
    let mut fields = vec_headers(cfg);
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Stop::MalformedRequest),
    }
    let method = req.method.unwrap_or_default();
    let headers = to_headers(head, req.headers);
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Stop::Connect);
    }
    if headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade")) {
        return Err(Stop::Upgrade);
    }
    let framing = body_framing(&headers, true).ok_or(Stop::MalformedRequest)?;
    let request = Request {
        method: method.to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        version: req.version.unwrap_or(1),
        headers,
        body: Bytes::new(),
        trailers: Vec::new(),
    };
    Ok(RequestHead { request, framing })
}

fn parse_response(head: &Bytes, cfg: &HttpConfig) -> Result<Response, Stop> {
    let mut fields = vec_headers(cfg);
    let mut resp = httparse::Response::new(&mut fields);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Stop::MalformedResponse),
    }
    Ok(Response {
        status: resp.code.unwrap_or_default(),
        reason: resp.reason.unwrap_or_default().to_owned(),
        version: resp.version.unwrap_or(1),
        headers: to_headers(head, resp.headers),
        body: Bytes::new(),
        trailers: Vec::new(),
    })
}

/// A message body read to its end, and what (if anything) spoiled it.
struct Finished {
    body: Bytes,
    trailers: Vec<Header>,
    last: u64,
    damage: Option<Damage>,
}

/// A request waiting for its response to complete (or for its own end, after an early response).
#[derive(Debug)]
struct Pending {
    id: ExchangeId,
    request: Request,
    expect_continue: bool,
    request_done: bool,
    request_first_ns: u64,
    request_last_ns: u64,
    response: Option<Response>,
    response_done: bool,
    response_first_ns: u64,
    response_last_ns: u64,
    damage: Option<Damage>,
    bytes: usize,
}

/// Server-side input waiting for a request to answer.
#[derive(Debug)]
enum Input {
    Data(Bytes, u64),
    Gap(u64),
    Fin,
}

/// Picking up a connection first seen mid-stream, at a request.
///
/// Mid-stream, nothing on the wire proves where a message starts, nor which response answers which
/// request. Resynchronising rests on one assumption: **the client does not pipeline** (it sends a
/// request only after reading the previous response whole — what browsers, gateways and most
/// clients do). Then, at the server's interface, every byte of earlier responses was sent before
/// the next request arrived, so:
///
/// 1. On the client side, a chunk (a segment's payload, in order) that starts with a known method
///    and whose bytes, with the following ones, form a complete request head is taken as a request
///    start; its first byte's kernel timestamp is `t`.
/// 2. Server bytes captured before `t` belong to earlier responses and are skipped. The first
///    server chunk captured at or after `t` must start with `HTTP/1.`, and the server stream must
///    have started before `t` (its first captured byte is older than the request): only then is
///    that chunk provably the first thing the server sent after the request — reassembly delivers
///    a stream in order from its first byte, and reports any hole. Then both sides are at a
///    message boundary and parsing goes on as for any connection. Otherwise (the client
///    pipelined, a retransmission, or the server stream's capture began after the request), the
///    request is dropped and counted (`mid_stream_resync_failed`), and the next request start —
///    already framed, or still to come — is tried.
///
/// The two directions are captured by different hooks and may arrive out of order, so server
/// chunks seen before the client side is resynchronised are kept (bounded) and judged by their
/// timestamps once it is. What a pipelining client can still defeat: a request pipelined behind one
/// whose response had not started yet pairs with that older response.
#[derive(Debug, Default)]
struct Resync {
    /// Client chunks of a candidate request head, from its first chunk.
    candidate: Vec<(Bytes, u64)>,
    candidate_bytes: usize,
    /// The chosen request's first-byte timestamp, once the client side is resynchronised.
    synced_at: Option<u64>,
    /// Server chunks seen before the client side was resynchronised.
    server: VecDeque<(Bytes, u64)>,
    server_bytes: usize,
    /// Timestamp of the server stream's first captured chunk (kept across restarts).
    server_started_at: Option<u64>,
    /// Server chunks at or after the request, held while they are too short to tell whether
    /// they start with `HTTP/1.` (a record split inside it).
    held: Vec<(Bytes, u64)>,
}

/// Whether `data` starts a request line, or is too short to tell.
fn may_start_request(data: &[u8]) -> bool {
    RESYNC_METHODS.iter().any(|m| data.starts_with(m) || (data.len() < m.len() && m.starts_with(data)))
}

/// Methods a resynchronisation accepts as a request start.
const RESYNC_METHODS: [&[u8]; 7] = [b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS "];

/// HTTP state of one connection.
#[derive(Debug)]
pub struct Connection {
    client: SocketAddr,
    server: SocketAddr,
    /// Parsing stopped; further bytes are counted and ignored.
    stopped: bool,
    /// Stopped because the connection was first seen mid-stream.
    mid_stream: bool,
    /// Resynchronising a connection first seen mid-stream (opt-in).
    resync: Option<Box<Resync>>,
    /// The server's FIN came while resynchronising: it ends the stream once its bytes are framed.
    server_fin_held: bool,
    requests: Reader,
    responses: Reader,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    backlog: VecDeque<Input>,
    backlog_bytes: usize,
    /// The flow table's id of this connection, for [`ExchangeId`]s.
    conn_id: u64,
    /// Requests seen so far (the next request's [`ExchangeId::seq`]).
    next_seq: u64,
    /// Announce complete requests into `ready`.
    announce: bool,
    ready: Vec<ReadyRequest>,
}

impl Connection {
    /// Sets the connection's id and whether complete requests are announced early.
    pub fn identify(&mut self, conn_id: u64, announce: bool) {
        self.conn_id = conn_id;
        self.announce = announce;
    }

    /// Moves the requests announced since the last call into `out`.
    pub fn take_ready(&mut self, out: &mut Vec<ReadyRequest>) {
        out.append(&mut self.ready);
    }

    pub fn new(client: SocketAddr, server: SocketAddr) -> Self {
        Self {
            client,
            server,
            stopped: false,
            mid_stream: false,
            resync: None,
            server_fin_held: false,
            requests: Reader::default(),
            responses: Reader::default(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            conn_id: 0,
            next_seq: 0,
            announce: false,
            ready: Vec::new(),
        }
    }

    /// Bytes buffered by this connection's partial messages.
    pub fn buffered(&self) -> usize {
        let resync = self.resync.as_ref().map_or(0, |r| r.candidate_bytes + r.server_bytes);
        self.requests.buffered()
            + self.responses.buffered()
            + self.pending_bytes
            + self.backlog_bytes
            + resync
    }

    /// Applies one stream event; completed exchanges are appended to `out`.
    pub fn handle(
        &mut self,
        event: FlowEvent,
        cfg: &HttpConfig,
        stats: &mut DropCounters,
        out: &mut Vec<Exchange>,
    ) {
        match event {
            FlowEvent::Opened { .. } => {}
            FlowEvent::StreamStart { mid_stream, .. } => {
                if mid_stream && !self.stopped && self.resync.is_none() {
                    // Only one side lacks its SYN: what the other side already started is lost
                    // like bytes in a gap.
                    let in_progress = u64::from(self.requests.started && self.requests.phase == Phase::Head);
                    stats.gap += self.pending.len() as u64 + in_progress;
                    stats.mid_stream_connections += 1;
                    self.mid_stream = true;
                    self.clear();
                    if cfg.resync_mid_stream {
                        self.resync = Some(Box::default());
                    } else {
                        self.stopped = true;
                    }
                }
            }
            FlowEvent::Data { side, data, ts_ns, .. } => {
                if self.stopped {
                    self.skipped(data.len(), stats);
                } else if self.resync.is_some() {
                    self.resync_data(side, data, ts_ns, cfg, stats, out);
                    if self.resync.is_none() && std::mem::take(&mut self.server_fin_held) {
                        self.server_input(Input::Fin, cfg, stats, out);
                    }
                } else if side == Side::Client {
                    self.client_data(data, ts_ns, cfg, stats, out);
                } else {
                    self.server_input(Input::Data(data, ts_ns), cfg, stats, out);
                }
            }
            FlowEvent::Gap { side, len, .. } => {
                if self.stopped {
                    self.skipped(len as usize, stats);
                } else if self.resync.is_some() {
                    // Whatever was being put together around the hole is no longer provable.
                    self.skipped(len as usize, stats);
                    stats.gap += self.restart_resync();
                } else if side == Side::Client {
                    if self.requests.gap(len).is_err() {
                        self.stop(Stop::Gap, stats);
                    }
                } else {
                    self.server_input(Input::Gap(len), cfg, stats, out);
                }
            }
            FlowEvent::Fin { side: Side::Server, .. } if self.resync.is_some() => {
                self.server_fin_held = true;
            }
            FlowEvent::Fin { side: Side::Server, .. } => {
                if !self.stopped {
                    self.server_input(Input::Fin, cfg, stats, out);
                }
            }
            // The client's half-close ends requests only; what is unfinished is counted at close.
            FlowEvent::Fin { side: Side::Client, .. } => {}
            FlowEvent::Closed { reason, .. } => self.close(reason, stats),
        }
    }

    /// Stops parsing because the total HTTP buffer limit was hit.
    pub fn abort_memory_limit(&mut self, stats: &mut DropCounters) {
        if !self.stopped {
            self.stop(Stop::MemoryLimit, stats);
        }
    }

    fn skipped(&self, len: usize, stats: &mut DropCounters) {
        if self.mid_stream {
            stats.mid_stream_skipped_bytes += len as u64;
        } else {
            stats.desync_skipped_bytes += len as u64;
        }
    }

    /// Stops parsing: every exchange in progress is dropped and counted under `why`.
    fn stop(&mut self, why: Stop, stats: &mut DropCounters) {
        let in_progress = u64::from(self.requests.started && self.requests.phase == Phase::Head);
        let lost = (self.pending.len() as u64 + in_progress).max(1);
        if why == Stop::Gap {
            stats.gap_desync_connections += 1;
        }
        // The HTTP/2 counter counts connections; the others count the exchanges lost.
        *why.counter(stats) += if why == Stop::Http2 { 1 } else { lost };
        self.stopped = true;
        self.clear();
    }

    /// Drops what a resynchronisation had put together and waits for the next request start;
    /// the requests dropped are counted by the caller.
    fn restart_resync(&mut self) -> u64 {
        let dropped = self.pending.len() as u64;
        let server_started_at = self.resync.as_ref().and_then(|r| r.server_started_at);
        self.clear();
        self.resync = Some(Box::new(Resync { server_started_at, ..Resync::default() }));
        dropped
    }

    /// Data on a connection being resynchronised (see [`Resync`]).
    fn resync_data(
        &mut self,
        side: Side,
        data: Bytes,
        ts: u64,
        cfg: &HttpConfig,
        stats: &mut DropCounters,
        out: &mut Vec<Exchange>,
    ) {
        let Some(resync) = self.resync.as_mut() else { return };
        if side == Side::Server && resync.server_started_at.is_none() {
            resync.server_started_at = Some(ts);
        }
        match (side, resync.synced_at) {
            // The request's own later bytes (a body), or the next requests, parsed as usual.
            (Side::Client, Some(_)) => self.client_data(data, ts, cfg, stats, out),
            (Side::Client, None) => {
                if resync.candidate.is_empty() && !may_start_request(&data) {
                    return self.skipped(data.len(), stats);
                }
                resync.candidate_bytes += data.len();
                resync.candidate.push((data, ts));
                let head: Vec<u8> = resync.candidate.iter().flat_map(|(d, _)| d.iter().copied()).collect();
                let mut headers = vec![httparse::EMPTY_HEADER; cfg.max_headers];
                match httparse::Request::new(&mut headers).parse(&head) {
                    Ok(httparse::Status::Complete(_)) => {
                        let chunks = std::mem::take(&mut resync.candidate);
                        resync.candidate_bytes = 0;
                        resync.synced_at = Some(chunks[0].1);
                        let server: Vec<(Bytes, u64)> = resync.server.drain(..).collect();
                        resync.server_bytes = 0;
                        for (chunk, chunk_ts) in chunks {
                            self.client_data(chunk, chunk_ts, cfg, stats, out);
                        }
                        for (chunk, chunk_ts) in server {
                            self.resync_server(chunk, chunk_ts, cfg, stats, out);
                        }
                    }
                    Ok(httparse::Status::Partial) if resync.candidate_bytes <= cfg.max_header_bytes => {}
                    _ => {
                        // Not a request head after all: skip it; the chunk just added may still
                        // start one.
                        let mut chunks = std::mem::take(&mut resync.candidate);
                        resync.candidate_bytes = 0;
                        let last = chunks.pop().filter(|(d, _)| !chunks.is_empty() && may_start_request(d));
                        self.skipped(chunks.iter().map(|(d, _)| d.len()).sum(), stats);
                        if let Some((d, t)) = last {
                            self.resync_data(Side::Client, d, t, cfg, stats, out);
                        }
                    }
                }
            }
            (Side::Server, Some(_)) => self.resync_server(data, ts, cfg, stats, out),
            (Side::Server, None) => {
                resync.server_bytes += data.len();
                resync.server.push_back((data, ts));
                // Bounded like response bytes waiting for their request; oldest dropped first.
                while resync.server_bytes > cfg.max_backlog_bytes {
                    let Some((old, _)) = resync.server.pop_front() else { break };
                    resync.server_bytes -= old.len();
                    stats.mid_stream_skipped_bytes += old.len() as u64;
                }
            }
        }
    }

    /// A server chunk once the client side is resynchronised at a request that started at `t`:
    /// earlier bytes are skipped; the first later chunk must start a response.
    fn resync_server(
        &mut self,
        data: Bytes,
        ts: u64,
        cfg: &HttpConfig,
        stats: &mut DropCounters,
        out: &mut Vec<Exchange>,
    ) {
        if self.stopped {
            return self.skipped(data.len(), stats);
        }
        // Bytes judged again after the state changed go where the state now says.
        let Some(resync) = self.resync.as_mut() else {
            return self.server_input(Input::Data(data, ts), cfg, stats, out);
        };
        let Some(t) = resync.synced_at else {
            return self.resync_data(Side::Server, data, ts, cfg, stats, out);
        };
        if resync.server_started_at.is_none() {
            resync.server_started_at = Some(ts);
        }
        if ts < t && resync.held.is_empty() {
            return self.skipped(data.len(), stats);
        }
        const STATUS_LINE: &[u8] = b"HTTP/1.";
        resync.held.push((data, ts));
        let head: Vec<u8> =
            resync.held.iter().flat_map(|(d, _)| d.iter().copied()).take(STATUS_LINE.len()).collect();
        if head.len() < STATUS_LINE.len() && STATUS_LINE.starts_with(&head) {
            return; // too short to tell yet
        }
        let held = std::mem::take(&mut resync.held);
        let server_started_before = resync.server_started_at.is_some_and(|start| start < t);
        if head.starts_with(STATUS_LINE) && server_started_before {
            self.resync = None;
            for (chunk, chunk_ts) in held {
                self.server_input(Input::Data(chunk, chunk_ts), cfg, stats, out);
            }
        } else if let Some(next) = self.next_request_start().filter(|&next| next > t) {
            // A later request has already started (the hooks delivered it before this response):
            // it starts a message too, so resynchronise there and judge these bytes again.
            stats.mid_stream_resync_failed += 1;
            if let Some(dropped) = self.pending.pop_front() {
                self.pending_bytes -= dropped.bytes;
            }
            if let Some(resync) = self.resync.as_mut() {
                resync.synced_at = Some(next);
            }
            for (chunk, chunk_ts) in held {
                self.resync_server(chunk, chunk_ts, cfg, stats, out);
            }
        } else {
            // The request will never be paired: that is what is counted. These bytes were not
            // proven to answer it, and may answer a request not delivered yet (the directions
            // arrive out of order): they are judged again at the next request.
            stats.mid_stream_resync_failed += self.restart_resync().max(1);
            for (chunk, chunk_ts) in held {
                self.resync_data(Side::Server, chunk, chunk_ts, cfg, stats, out);
            }
        }
    }

    /// When the request after the first pending one started: framed already, or its head in
    /// progress.
    fn next_request_start(&self) -> Option<u64> {
        match self.pending.get(1) {
            Some(next) => Some(next.request_first_ns),
            None if self.requests.started && self.requests.phase == Phase::Head => {
                Some(self.requests.first_ts)
            }
            None => None,
        }
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
        self.backlog.clear();
        self.backlog_bytes = 0;
        self.requests = Reader::default();
        self.responses = Reader::default();
    }

    fn close(&mut self, reason: CloseReason, stats: &mut DropCounters) {
        if self.stopped {
            self.clear();
            return;
        }
        // After a clean end, say what was missing; otherwise, say how the connection ended.
        let counter = |stats: &mut DropCounters, clean: fn(&mut DropCounters) -> &mut u64| {
            let c = match reason {
                CloseReason::Finished => clean(stats),
                CloseReason::Reset => &mut stats.reset_with_pending,
                CloseReason::IdleTimeout => &mut stats.idle_timeout_with_pending,
                CloseReason::Evicted | CloseReason::Reused => &mut stats.evicted_with_pending,
            };
            *c += 1;
        };
        for p in &self.pending {
            if p.response.is_some() && !p.response_done {
                counter(stats, |s| &mut s.truncated_response);
            } else if !p.request_done {
                counter(stats, |s| &mut s.truncated_request);
            } else {
                counter(stats, |s| &mut s.unanswered_request);
            }
        }
        if self.requests.started && self.requests.phase == Phase::Head {
            counter(stats, |s| &mut s.truncated_request);
        }
        if self.backlog.iter().any(|i| matches!(i, Input::Data(..))) {
            stats.unpaired_response += 1;
        }
        self.clear();
    }

    fn client_data(
        &mut self,
        mut data: Bytes,
        ts: u64,
        cfg: &HttpConfig,
        stats: &mut DropCounters,
        out: &mut Vec<Exchange>,
    ) {
        while !data.is_empty() {
            if self.stopped {
                self.skipped(data.len(), stats);
                return;
            }
            if self.requests.phase == Phase::Head {
                let head = match self.requests.take_head(&mut data, ts, cfg, Side::Client) {
                    Ok(HeadResult::Partial) => return,
                    Ok(HeadResult::Complete(head)) => head,
                    Err(why) => return self.stop(why, stats),
                };
                if self.pending.len() >= cfg.max_pipelined {
                    return self.stop(Stop::PipelineOverflow, stats);
                }
                let RequestHead { request, framing } = match parse_request(&head, cfg) {
                    Ok(parsed) => parsed,
                    Err(why) => return self.stop(why, stats),
                };
                self.requests.phase = framing.phase();
                let expect_continue = has_token(&request.headers, "expect", "100-continue");
                let id = ExchangeId { connection: self.conn_id, seq: self.next_seq };
                self.next_seq += 1;
                self.pending.push_back(Pending {
                    id,
                    request,
                    expect_continue,
                    request_done: false,
                    request_first_ns: self.requests.first_ts,
                    request_last_ns: ts,
                    response: None,
                    response_done: false,
                    response_first_ns: 0,
                    response_last_ns: 0,
                    damage: None,
                    bytes: 0,
                });
            }
            // Called even with no data left: a message without body completes with its head.
            match self.requests.feed_body(&mut data, ts, cfg, Stop::MalformedRequest) {
                Ok(true) => self.finish_request(stats, out),
                Ok(false) => {}
                Err(why) => return self.stop(why, stats),
            }
            // Response bytes captured before this request may now have a request to answer.
            if !self.backlog.is_empty() {
                self.drive_server(cfg, stats, out);
            }
        }
    }

    fn finish_request(&mut self, stats: &mut DropCounters, out: &mut Vec<Exchange>) {
        let Finished { body, trailers, last, damage } = self.requests.finish();
        if let Some(p) = self.pending.back_mut() {
            p.request.body = body;
            p.request.trailers = trailers;
            p.request_done = true;
            p.request_last_ns = last;
            p.damage = p.damage.or(damage);
            p.bytes += p.request.body.len();
            self.pending_bytes += p.request.body.len();
            if self.announce && p.damage.is_none() {
                // Bodies and header values are reference-counted: the copy is cheap.
                self.ready.push(ReadyRequest {
                    id: p.id,
                    client: self.client,
                    server: self.server,
                    request: p.request.clone(),
                    first_ns: p.request_first_ns,
                    last_ns: p.request_last_ns,
                });
            }
        }
        self.emit(stats, out);
    }

    fn server_input(
        &mut self,
        input: Input,
        cfg: &HttpConfig,
        stats: &mut DropCounters,
        out: &mut Vec<Exchange>,
    ) {
        if let Input::Data(d, _) = &input {
            self.backlog_bytes += d.len();
        }
        self.backlog.push_back(input);
        self.drive_server(cfg, stats, out);
        if !self.stopped && self.backlog_bytes > cfg.max_backlog_bytes {
            self.stop(Stop::UnpairedResponse, stats);
        }
    }

    /// Frames backlogged response bytes as far as the known requests allow.
    fn drive_server(&mut self, cfg: &HttpConfig, stats: &mut DropCounters, out: &mut Vec<Exchange>) {
        while let Some(input) = self.backlog.pop_front() {
            if self.stopped {
                return;
            }
            match input {
                Input::Data(mut data, ts) => {
                    self.backlog_bytes -= data.len();
                    let blocked = self.server_data(&mut data, ts, cfg, stats, out);
                    if !data.is_empty() && !self.stopped {
                        self.backlog_bytes += data.len();
                        self.backlog.push_front(Input::Data(data, ts));
                    }
                    if blocked {
                        return;
                    }
                }
                Input::Gap(len) => {
                    if self.responses.phase == Phase::Head || self.responses.gap(len).is_err() {
                        return self.stop(Stop::Gap, stats);
                    }
                }
                Input::Fin => {
                    if self.responses.phase == Phase::UntilClose {
                        self.finish_response(stats, out);
                    }
                }
            }
        }
    }

    /// Frames response bytes; returns `true` when a response head is due but no request waits.
    fn server_data(
        &mut self,
        data: &mut Bytes,
        ts: u64,
        cfg: &HttpConfig,
        stats: &mut DropCounters,
        out: &mut Vec<Exchange>,
    ) -> bool {
        while !data.is_empty() {
            if self.stopped {
                return false;
            }
            if self.responses.phase == Phase::Head {
                let Some(idx) = self.pending.iter().position(|p| p.response.is_none()) else {
                    return true;
                };
                let head = match self.responses.take_head(data, ts, cfg, Side::Server) {
                    Ok(HeadResult::Partial) => return false,
                    Ok(HeadResult::Complete(head)) => head,
                    Err(why) => {
                        self.stop(why, stats);
                        return false;
                    }
                };
                let response = match parse_response(&head, cfg) {
                    Ok(r) => r,
                    Err(why) => {
                        self.stop(why, stats);
                        return false;
                    }
                };
                match response.status {
                    101 => {
                        self.stop(Stop::Upgrade, stats);
                        return false;
                    }
                    // Interim responses (100 Continue, 103 Early Hints) are not paired.
                    100..=199 => {
                        self.responses.reset();
                        continue;
                    }
                    _ => {}
                }
                let p = &self.pending[idx];
                if p.expect_continue && !p.request_done {
                    // A final answer to `Expect: 100-continue` may mean the body is never sent:
                    // the client's next bytes could be a body or a request. Not provable.
                    self.stop(Stop::ExpectAmbiguous, stats);
                    return false;
                }
                let framing = if p.request.method.eq_ignore_ascii_case("HEAD")
                    || matches!(response.status, 204 | 304)
                {
                    Some(Framing::None)
                } else {
                    body_framing(&response.headers, false)
                };
                let Some(framing) = framing else {
                    self.stop(Stop::MalformedResponse, stats);
                    return false;
                };
                self.responses.phase = framing.phase();
                let first = self.responses.first_ts;
                let p = &mut self.pending[idx];
                p.response = Some(response);
                p.response_first_ns = first;
                p.response_last_ns = ts;
            }
            match self.responses.feed_body(data, ts, cfg, Stop::MalformedResponse) {
                Ok(true) => self.finish_response(stats, out),
                Ok(false) => {}
                Err(why) => {
                    self.stop(why, stats);
                    return false;
                }
            }
        }
        false
    }

    fn finish_response(&mut self, stats: &mut DropCounters, out: &mut Vec<Exchange>) {
        let Finished { body, trailers, last, damage } = self.responses.finish();
        if let Some(p) = self.pending.iter_mut().find(|p| p.response.is_some() && !p.response_done)
            && let Some(resp) = p.response.as_mut()
        {
            p.bytes += body.len();
            self.pending_bytes += body.len();
            resp.body = body;
            resp.trailers = trailers;
            p.response_done = true;
            p.response_last_ns = last;
            p.damage = p.damage.or(damage);
        }
        self.emit(stats, out);
    }

    /// Emits the exchanges at the front of the queue that are complete on both sides.
    fn emit(&mut self, stats: &mut DropCounters, out: &mut Vec<Exchange>) {
        while self.pending.front().is_some_and(|p| p.request_done && p.response_done) {
            let Some(p) = self.pending.pop_front() else { break };
            self.pending_bytes -= p.bytes;
            match p.damage {
                Some(Damage::Gap) => stats.gap += 1,
                Some(Damage::BodyTooLarge) => stats.body_too_large += 1,
                None => {}
            }
            if p.damage.is_some() {
                continue;
            }
            let Some(response) = p.response else { continue };
            out.push(Exchange {
                id: p.id,
                client: self.client,
                server: self.server,
                request: p.request,
                response,
                timing: Timing {
                    request_first_ns: p.request_first_ns,
                    request_last_ns: p.request_last_ns,
                    response_first_ns: p.response_first_ns,
                    response_last_ns: p.response_last_ns,
                },
            });
        }
    }
}
