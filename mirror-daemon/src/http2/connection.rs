//! One HTTP/2 connection: both directions framed and decoded, each client stream rebuilt as one
//! exchange.
//!
//! A stream is tracked from the request head on a new client stream id (ids only grow, so any
//! frame on an id that is not tracked belongs to a stream already finished, dropped or opened
//! before capture began, and is skipped). The request completes at END_STREAM (after DATA and
//! trailers), then it is announced; the response on the same id completes at its END_STREAM, then
//! the exchange is emitted. Every header block of a direction is decoded in order — also those of
//! streams not rebuilt, and PUSH_PROMISE blocks — because each can change the direction's HPACK
//! table.
//!
//! Losses drop only what they touch: a stream whose header block cannot be proven, a stream reset,
//! a stream over a limit, a gap in a stream's DATA. Losing the framing of a direction ends what
//! depends on it: without the client side no new request can be seen (streams whose requests are
//! complete still get their answers); without the server side no answer can, so the connection
//! stops.
use std::{collections::BTreeMap, net::SocketAddr};

use super::{
    fields::{self, Malformed, RequestHead, ResponseHead},
    frame::{DesyncReason, FrameEvent, FrameReader, Limits as FrameLimits},
    hpack::{self, Decoded, HpackError},
};
use crate::{
    drops::AssemblyDrops,
    exchange::{
        Assembled, BodyBuilder, Exchange, ExchangeId, HttpVersion, ReadyRequest, Request, Response, Timing,
    },
    flows::{CloseReason, FlowEvent, Side, Unfinished},
    framing::{H2cUpgrade, HttpConfig},
};

/// SETTINGS parameters that change how the other direction is read (RFC 9113 §6.5.2).
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// RST_STREAM error codes counted apart (RFC 9113 §7).
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

/// One direction: its frames and its header compression state.
#[derive(Debug)]
struct Direction {
    frames: FrameReader,
    hpack: hpack::Decoder,
    /// Framing is lost for good (or the direction ended).
    lost: bool,
}

impl Direction {
    fn new(frames: FrameReader, hpack: hpack::Decoder, cfg: &HttpConfig) -> Self {
        let limits = FrameLimits {
            max_header_block: cfg.max_header_bytes,
            max_sync_buffer: cfg.max_backlog_bytes,
            ..FrameLimits::default()
        };
        Self { frames: frames.with_limits(limits), hpack, lost: false }
    }

    /// Applies the SETTINGS of the endpoint that *receives* this direction: the frame size it
    /// accepts, and the HPACK table size its decoder allows this direction's encoder.
    fn apply_settings(&mut self, params: &[(u16, u32)]) {
        for &(id, value) in params {
            match id {
                SETTINGS_HEADER_TABLE_SIZE => self.hpack.advertised_table_size(value),
                SETTINGS_MAX_FRAME_SIZE => self.frames.set_max_frame_size(value),
                _ => {}
            }
        }
    }

    /// A direction no longer read, holding nothing.
    fn released() -> Self {
        Self { frames: FrameReader::server(), hpack: hpack::Decoder::new(), lost: true }
    }

    fn buffered(&self) -> usize {
        self.frames.buffered() + self.hpack.memory()
    }
}

/// One client stream being rebuilt.
#[derive(Debug)]
struct Stream {
    request: Request,
    request_body: BodyBuilder,
    request_done: bool,
    request_first_ns: u64,
    request_last_ns: u64,
    response: Option<Response>,
    response_body: BodyBuilder,
    response_done: bool,
    response_first_ns: u64,
    response_last_ns: u64,
}

impl Stream {
    /// Body bytes held, wherever they are in the stream's progress.
    fn held(&self) -> usize {
        let response = self.response.as_ref().map_or(0, |r| r.body.len());
        self.request.body.len() + self.request_body.len() + self.response_body.len() + response
    }

    fn unfinished(&self) -> Unfinished {
        if !self.request_done {
            Unfinished::Request
        } else if self.response.is_some() {
            Unfinished::Response
        } else {
            Unfinished::Unanswered
        }
    }
}

/// Why a stream is dropped; each names its counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drop {
    Unresolved,
    HpackError,
    HeaderTooLarge,
    BodyTooLarge,
    Gap,
    MalformedRequest,
    MalformedResponse,
    Connect,
    Reset(u32),
    GoAway,
    StreamLimit,
    Desync,
}

impl Drop {
    fn count(self, drops: &mut AssemblyDrops) {
        let counter = match self {
            Drop::Unresolved => &mut drops.h2_unresolved_headers,
            Drop::HpackError => &mut drops.h2_hpack_errors,
            Drop::HeaderTooLarge => &mut drops.header_too_large,
            Drop::BodyTooLarge => &mut drops.body_too_large,
            Drop::Gap | Drop::Desync => &mut drops.gap,
            Drop::MalformedRequest => &mut drops.malformed_request,
            Drop::MalformedResponse => &mut drops.malformed_response,
            Drop::Connect => &mut drops.unsupported_connect,
            Drop::Reset(CANCEL) => &mut drops.h2_reset_cancel,
            Drop::Reset(REFUSED_STREAM) => &mut drops.h2_reset_refused_stream,
            Drop::Reset(_) => &mut drops.h2_reset_other,
            Drop::GoAway => &mut drops.h2_goaway_unprocessed,
            Drop::StreamLimit => &mut drops.h2_stream_limit,
        };
        *counter += 1;
    }
}

/// What every frame handler needs besides the connection: the limits and where results go.
struct Ctx<'a> {
    cfg: &'a HttpConfig,
    drops: &'a mut AssemblyDrops,
    out: &'a mut Vec<Assembled>,
}

/// HTTP/2 state of one connection.
#[derive(Debug)]
pub struct Connection {
    client: SocketAddr,
    server: SocketAddr,
    /// The flow table's id of this connection, for [`ExchangeId`]s.
    conn_id: u64,
    /// Added to stream ids to make [`ExchangeId::seq`] (non-zero after an `Upgrade: h2c`, so that
    /// the HTTP/1.1 requests before it keep their own numbers).
    seq_base: u64,
    /// After an `Upgrade: h2c`: stream 1 answers the HTTP/1.1 request with this id.
    upgraded: Option<ExchangeId>,
    announce: bool,
    client_side: Direction,
    server_side: Direction,
    streams: BTreeMap<u32, Stream>,
    /// Bytes of request and response bodies held by `streams`.
    held: usize,
    /// Highest client stream id seen: a request head on a higher id opens a stream.
    last_client_stream: u32,
    /// A request head opened a stream on this connection (see [`Self::untracked_client_stream`]).
    opened: bool,
    /// The server's GOAWAY: streams above it are not processed.
    goaway: Option<u32>,
    /// Parsing stopped (the server side's framing was lost, or a limit hit); bytes are skipped.
    stopped: bool,
    /// A direction was first seen mid-connection.
    mid_stream: bool,
    events: Vec<FrameEvent>,
}

impl Connection {
    /// A connection seen from its start (the client's preface comes first).
    pub fn new(client: SocketAddr, server: SocketAddr, cfg: &HttpConfig) -> Self {
        Self {
            client,
            server,
            conn_id: 0,
            seq_base: 0,
            upgraded: None,
            announce: false,
            client_side: Direction::new(FrameReader::client(), hpack::Decoder::new(), cfg),
            server_side: Direction::new(FrameReader::server(), hpack::Decoder::new(), cfg),
            streams: BTreeMap::new(),
            held: 0,
            last_client_stream: 0,
            opened: false,
            goaway: None,
            stopped: false,
            mid_stream: false,
            events: Vec::new(),
        }
    }

    /// A connection that switched to HTTP/2 after `Upgrade: h2c`: stream 1 carries the answer to
    /// the upgrade request (already announced as an HTTP/1.1 request). The client's settings come
    /// in its `HTTP2-Settings` header; they apply to what the server sends. Feed
    /// [`H2cUpgrade::events`] next.
    pub fn upgraded(
        client: SocketAddr,
        server: SocketAddr,
        cfg: &HttpConfig,
        upgrade: &mut H2cUpgrade,
    ) -> Self {
        let mut conn = Self::new(client, server, cfg);
        conn.conn_id = upgrade.id.connection;
        conn.seq_base = upgrade.next_seq;
        conn.upgraded = Some(upgrade.id);
        conn.last_client_stream = 1;
        let settings = upgrade.request.headers.iter().find(|h| h.name.eq_ignore_ascii_case("http2-settings"));
        conn.server_side.apply_settings(&settings.map(|h| settings_header(&h.value)).unwrap_or_default());
        let request = std::mem::take(&mut upgrade.request);
        conn.held = request.body.len();
        conn.streams.insert(
            1,
            Stream {
                request,
                request_body: BodyBuilder::default(),
                request_done: true,
                request_first_ns: upgrade.request_first_ns,
                request_last_ns: upgrade.request_last_ns,
                response: None,
                response_body: BodyBuilder::timed(),
                response_done: false,
                response_first_ns: 0,
                response_last_ns: 0,
            },
        );
        conn
    }

    /// Sets the connection's id and whether complete requests are announced early.
    pub fn identify(&mut self, conn_id: u64, announce: bool) {
        self.conn_id = conn_id;
        self.announce = announce;
    }

    /// Requests seen and not ended yet: the streams tracked.
    pub fn requests_in_progress(&self) -> u64 {
        self.streams.len() as u64
    }

    /// Bytes buffered: partial frames, header blocks, HPACK tables and stream bodies.
    pub fn buffered(&self) -> usize {
        self.client_side.buffered() + self.server_side.buffered() + self.held
    }

    /// Stops parsing because the total buffer limit was hit: every stream is dropped and counted.
    pub fn abort_memory_limit(&mut self, drops: &mut AssemblyDrops) {
        if self.stopped {
            return;
        }
        drops.memory_limit += self.streams.len() as u64;
        self.stop();
    }

    /// Stops parsing for good, releasing what the streams, readers and tables hold.
    fn stop(&mut self) {
        self.stopped = true;
        self.streams.clear();
        self.held = 0;
        self.client_side = Direction::released();
        self.server_side = Direction::released();
    }

    /// Applies one stream event; what it completes is appended to `out`.
    pub fn handle(
        &mut self,
        event: FlowEvent,
        cfg: &HttpConfig,
        drops: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        let mut events = std::mem::take(&mut self.events);
        let side = match event {
            FlowEvent::Opened { .. } => return self.events = events,
            FlowEvent::StreamStart { side, mid_stream, .. } => {
                if mid_stream && !self.stopped {
                    if !self.mid_stream {
                        drops.mid_stream_connections += 1;
                    }
                    self.mid_stream = true;
                    let direction = self.direction(side);
                    *direction = Direction::new(FrameReader::mid_stream(), hpack::Decoder::mid_stream(), cfg);
                }
                return self.events = events;
            }
            FlowEvent::Closed { reason, .. } => {
                self.close(reason, drops, out);
                return self.events = events;
            }
            FlowEvent::Data { side, data, ts_ns, .. } => {
                if self.stopped || self.direction(side).lost {
                    self.skipped(data.len() as u64, drops);
                } else {
                    self.direction(side).frames.push(data, ts_ns, &mut events);
                }
                side
            }
            FlowEvent::Gap { side, len, .. } => {
                if self.stopped || self.direction(side).lost {
                    self.skipped(len, drops);
                } else {
                    self.direction(side).frames.gap(len, &mut events);
                }
                side
            }
            FlowEvent::Fin { side, .. } => {
                if !self.stopped {
                    self.direction(side).frames.finish(&mut events);
                }
                side
            }
        };
        let mut ctx = Ctx { cfg, drops, out };
        for frame in events.drain(..) {
            if self.stopped {
                break;
            }
            match side {
                Side::Client => self.client_frame(frame, &mut ctx),
                Side::Server => self.server_frame(frame, &mut ctx),
            }
        }
        self.events = events;
    }

    fn direction(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Client => &mut self.client_side,
            Side::Server => &mut self.server_side,
        }
    }

    fn skipped(&self, len: u64, drops: &mut AssemblyDrops) {
        if self.mid_stream {
            drops.mid_stream_skipped_bytes += len;
        } else {
            drops.desync_skipped_bytes += len;
        }
    }

    fn limits(cfg: &HttpConfig) -> hpack::Limits {
        hpack::Limits { max_list_size: cfg.max_header_bytes, max_fields: cfg.max_headers }
    }

    /// Drops a tracked stream, counted under `why`.
    fn drop_stream(&mut self, id: u32, why: Drop, drops: &mut AssemblyDrops) {
        if let Some(stream) = self.streams.remove(&id) {
            self.held -= stream.held();
            why.count(drops);
        }
    }

    /// A header block's fields, or why the stream it belongs to cannot be rebuilt.
    fn fields(decoded: Result<Decoded, HpackError>) -> Result<Vec<hpack::Field>, Drop> {
        match decoded {
            Err(_) => Err(Drop::HpackError),
            Ok(d) if d.unresolved > 0 => Err(Drop::Unresolved),
            Ok(d) if d.over_limit => Err(Drop::HeaderTooLarge),
            Ok(d) => Ok(d.fields),
        }
    }

    fn client_frame(&mut self, frame: FrameEvent, ctx: &mut Ctx<'_>) {
        match frame {
            FrameEvent::Headers { stream, block, end_stream, ts_ns } => {
                let decoded = self.client_side.hpack.decode(&block, &Self::limits(ctx.cfg));
                self.client_headers(stream, Self::fields(decoded), end_stream, ts_ns, ctx);
            }
            FrameEvent::HeaderBlockLost { stream, end_stream } => {
                self.client_side.hpack.lose_state();
                self.client_headers(stream, Err(Drop::Gap), end_stream, 0, ctx);
            }
            FrameEvent::HeaderBlockTooLarge { stream, end_stream } => {
                self.client_side.hpack.lose_state();
                self.client_headers(stream, Err(Drop::HeaderTooLarge), end_stream, 0, ctx);
            }
            FrameEvent::Data { stream, data, ts_ns, end_stream } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    self.skipped(data.len() as u64, ctx.drops);
                    return self.untracked_client_stream(stream, ctx.drops);
                };
                if s.request_done {
                    return self.drop_stream(stream, Drop::MalformedRequest, ctx.drops);
                }
                let before = s.request_body.len();
                s.request_body.push(data, ts_ns, ctx.cfg.max_body_bytes);
                self.held = self.held + s.request_body.len() - before;
                if s.request_body.too_large() {
                    return self.drop_stream(stream, Drop::BodyTooLarge, ctx.drops);
                }
                if end_stream {
                    self.finish_request(stream, ts_ns, ctx.out);
                }
            }
            FrameEvent::DataGap { stream, .. } => self.drop_stream(stream, Drop::Gap, ctx.drops),
            FrameEvent::RstStream { stream, code, .. } => {
                if self.streams.contains_key(&stream) {
                    self.reset(stream, code, ctx.drops, ctx.out);
                } else {
                    self.untracked_client_stream(stream, ctx.drops);
                }
            }
            FrameEvent::WindowUpdate { stream, .. } if !self.streams.contains_key(&stream) => {
                self.untracked_client_stream(stream, ctx.drops)
            }
            // The client's settings govern what the server sends.
            FrameEvent::Settings { ack: false, params } => self.server_side.apply_settings(&params),
            // Only servers push: a client's PUSH_PROMISE is a connection error (RFC 9113 §8.4).
            FrameEvent::PushPromise { .. } => self.lose_client_side(ctx.drops, false),
            FrameEvent::Synced { skipped } => ctx.drops.mid_stream_skipped_bytes += skipped,
            FrameEvent::Desync { reason } => self.lose_client_side(ctx.drops, is_gap(reason)),
            FrameEvent::Truncated { .. } => self.client_side.lost = true,
            FrameEvent::Settings { ack: true, .. }
            | FrameEvent::Priority { .. }
            | FrameEvent::Ping { .. }
            | FrameEvent::GoAway { .. }
            | FrameEvent::WindowUpdate { .. }
            | FrameEvent::Unknown { .. }
            | FrameEvent::ControlLost { .. } => {}
        }
    }

    /// A client header block on `stream`: a request head on a new stream, or trailers.
    fn client_headers(
        &mut self,
        stream: u32,
        fields: Result<Vec<hpack::Field>, Drop>,
        end_stream: bool,
        ts_ns: u64,
        ctx: &mut Ctx<'_>,
    ) {
        if let Some(s) = self.streams.get_mut(&stream) {
            // Trailers end the request; anything else on an open request is malformed.
            let trailers = fields.and_then(|f| fields::trailers(f).map_err(|_| Drop::MalformedRequest));
            match trailers {
                Ok(trailers) if end_stream && !s.request_done => {
                    s.request.trailers = trailers;
                    self.finish_request(stream, ts_ns, ctx.out);
                }
                Ok(_) => self.drop_stream(stream, Drop::MalformedRequest, ctx.drops),
                Err(why) => self.drop_stream(stream, why, ctx.drops),
            }
            return;
        }
        if stream.is_multiple_of(2) || stream <= self.last_client_stream {
            // A stream already finished or dropped, or one the server opened: nothing to rebuild.
            return;
        }
        self.last_client_stream = stream;
        let head = fields.and_then(|f| {
            fields::request_head(f)
                .map_err(|m| if m == Malformed::Connect { Drop::Connect } else { Drop::MalformedRequest })
        });
        let head = match head {
            Ok(_) if self.goaway.is_some_and(|last| stream > last) => Err(Drop::GoAway),
            Ok(_) if self.streams.len() >= ctx.cfg.max_streams => Err(Drop::StreamLimit),
            other => other,
        };
        let RequestHead { method, path, headers } = match head {
            Ok(head) => head,
            // First seen mid-connection, a block without a request head is most likely the
            // trailers of a stream opened before capture began: not one of ours to count.
            Err(Drop::MalformedRequest) if self.mid_stream => return,
            Err(why) => {
                ctx.drops.requests_seen += 1;
                return why.count(ctx.drops);
            }
        };
        ctx.drops.requests_seen += 1;
        self.opened = true;
        let request =
            Request { method, target: path, version: HttpVersion::Http2, headers, ..Request::default() };
        self.streams.insert(
            stream,
            Stream {
                request,
                request_body: BodyBuilder::default(),
                request_done: false,
                request_first_ns: ts_ns,
                request_last_ns: ts_ns,
                response: None,
                response_body: BodyBuilder::timed(),
                response_done: false,
                response_first_ns: 0,
                response_last_ns: 0,
            },
        );
        if end_stream {
            self.finish_request(stream, ts_ns, ctx.out);
        }
    }

    /// A client frame other than a header block on a stream that is not tracked. Stream ids only
    /// grow (RFC 9113 §5.1.1), so in a connection joined mid-stream a client stream above every id
    /// seen so far was opened before capture began: no request head seen since can have opened a
    /// stream with a lower id. If one did, the frame boundary found was false (frames embedded in a
    /// payload, such as a tunnelled connection, were read as the connection's own): what was read
    /// cannot be trusted, and the connection is not parsed further. Otherwise, request heads on
    /// lower ids are not taken for new streams from now on.
    fn untracked_client_stream(&mut self, stream: u32, drops: &mut AssemblyDrops) {
        if !self.mid_stream || stream == 0 || stream.is_multiple_of(2) || stream <= self.last_client_stream {
            return;
        }
        if self.opened {
            drops.h2_framing_error_connections += 1;
            drops.h2_mid_stream_disproved += self.streams.len() as u64;
            self.stop();
        } else {
            self.last_client_stream = stream;
        }
    }

    fn finish_request(&mut self, stream: u32, ts_ns: u64, out: &mut Vec<Assembled>) {
        let id = self.exchange_id(stream);
        let Some(s) = self.streams.get_mut(&stream) else { return };
        let (body, _) = s.request_body.take();
        s.request.body = body;
        s.request_done = true;
        s.request_last_ns = s.request_last_ns.max(ts_ns);
        if self.announce {
            // Bodies and header values are reference-counted: the copy is cheap.
            out.push(Assembled::Request(ReadyRequest {
                id,
                client: self.client,
                server: self.server,
                request: s.request.clone(),
                first_ns: s.request_first_ns,
                last_ns: s.request_last_ns,
            }));
        }
        self.complete(stream, out);
    }

    fn exchange_id(&self, stream: u32) -> ExchangeId {
        match self.upgraded {
            Some(id) if stream == 1 => id,
            _ => ExchangeId { connection: self.conn_id, seq: self.seq_base + u64::from(stream) },
        }
    }

    /// The client side's framing is lost: no new request can be seen; streams whose requests
    /// are incomplete are dropped, those waiting for their answers go on.
    fn lose_client_side(&mut self, drops: &mut AssemblyDrops, gap: bool) {
        if gap {
            drops.gap_desync_connections += 1;
        } else {
            drops.h2_framing_error_connections += 1;
        }
        self.client_side.lost = true;
        let incomplete: Vec<u32> =
            self.streams.iter().filter(|(_, s)| !s.request_done).map(|(&id, _)| id).collect();
        for id in incomplete {
            self.drop_stream(id, Drop::Desync, drops);
        }
    }

    fn server_frame(&mut self, frame: FrameEvent, ctx: &mut Ctx<'_>) {
        match frame {
            FrameEvent::Headers { stream, block, end_stream, ts_ns } => {
                let decoded = self.server_side.hpack.decode(&block, &Self::limits(ctx.cfg));
                self.server_headers(stream, Self::fields(decoded), end_stream, ts_ns, ctx);
            }
            FrameEvent::HeaderBlockLost { stream, end_stream } => {
                self.server_side.hpack.lose_state();
                self.server_headers(stream, Err(Drop::Gap), end_stream, 0, ctx);
            }
            FrameEvent::HeaderBlockTooLarge { stream, end_stream } => {
                self.server_side.hpack.lose_state();
                self.server_headers(stream, Err(Drop::HeaderTooLarge), end_stream, 0, ctx);
            }
            FrameEvent::PushPromise { block, .. } => {
                // Not rebuilt, but its block is part of the server's HPACK state.
                let _ = self.server_side.hpack.decode(&block, &Self::limits(ctx.cfg));
                ctx.drops.h2_push_promised_streams += 1;
            }
            FrameEvent::Data { stream, data, ts_ns, end_stream } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return self.skipped(data.len() as u64, ctx.drops);
                };
                if s.response.is_none() || s.response_done {
                    return self.drop_stream(stream, Drop::MalformedResponse, ctx.drops);
                }
                let before = s.response_body.len();
                s.response_body.push(data, ts_ns, ctx.cfg.max_body_bytes);
                s.response_last_ns = s.response_last_ns.max(ts_ns);
                self.held = self.held + s.response_body.len() - before;
                if s.response_body.too_large() {
                    return self.drop_stream(stream, Drop::BodyTooLarge, ctx.drops);
                }
                if end_stream {
                    self.finish_response(stream, ts_ns, ctx.out);
                }
            }
            FrameEvent::DataGap { stream, .. } => self.drop_stream(stream, Drop::Gap, ctx.drops),
            FrameEvent::RstStream { stream, code, .. } => self.reset(stream, code, ctx.drops, ctx.out),
            FrameEvent::GoAway { last_stream, .. } => {
                let last = self.goaway.map_or(last_stream, |g| g.min(last_stream));
                self.goaway = Some(last);
                let unprocessed: Vec<u32> =
                    self.streams.range(last.saturating_add(1)..).map(|(&id, _)| id).collect();
                for id in unprocessed {
                    self.drop_stream(id, Drop::GoAway, ctx.drops);
                }
            }
            // The server's settings govern what the client sends.
            FrameEvent::Settings { ack: false, params } => self.client_side.apply_settings(&params),
            FrameEvent::Synced { skipped } => ctx.drops.mid_stream_skipped_bytes += skipped,
            FrameEvent::Desync { reason } => {
                // Without the server side no answer can be paired: stop, counting what waited.
                if is_gap(reason) {
                    ctx.drops.gap_desync_connections += 1;
                } else {
                    ctx.drops.h2_framing_error_connections += 1;
                }
                ctx.drops.gap += self.streams.len() as u64;
                self.stop();
            }
            FrameEvent::Truncated { .. } => self.server_side.lost = true,
            FrameEvent::Settings { ack: true, .. }
            | FrameEvent::Priority { .. }
            | FrameEvent::Ping { .. }
            | FrameEvent::WindowUpdate { .. }
            | FrameEvent::Unknown { .. }
            | FrameEvent::ControlLost { .. } => {}
        }
    }

    /// A server header block on `stream`: the response head (after any 1xx), or trailers.
    fn server_headers(
        &mut self,
        stream: u32,
        fields: Result<Vec<hpack::Field>, Drop>,
        end_stream: bool,
        ts_ns: u64,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        let fields = match fields {
            Ok(fields) => fields,
            Err(why) => return self.drop_stream(stream, why, ctx.drops),
        };
        match &mut s.response {
            None => match fields::response_head(fields) {
                Ok(ResponseHead::Interim) if !end_stream => {}
                Ok(ResponseHead::Final { status, headers }) => {
                    s.response = Some(Response {
                        status,
                        version: HttpVersion::Http2,
                        headers,
                        ..Response::default()
                    });
                    s.response_first_ns = ts_ns;
                    s.response_last_ns = ts_ns;
                    if end_stream {
                        self.finish_response(stream, ts_ns, ctx.out);
                    }
                }
                Ok(ResponseHead::Interim) | Err(_) => {
                    self.drop_stream(stream, Drop::MalformedResponse, ctx.drops)
                }
            },
            Some(response) if end_stream && !s.response_done => match fields::trailers(fields) {
                Ok(trailers) => {
                    response.trailers = trailers;
                    self.finish_response(stream, ts_ns, ctx.out);
                }
                Err(_) => self.drop_stream(stream, Drop::MalformedResponse, ctx.drops),
            },
            Some(_) => self.drop_stream(stream, Drop::MalformedResponse, ctx.drops),
        }
    }

    fn finish_response(&mut self, stream: u32, ts_ns: u64, out: &mut Vec<Assembled>) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        let Some(response) = s.response.as_mut() else { return };
        let (body, arrivals) = s.response_body.take();
        response.body = body;
        response.arrivals = arrivals;
        s.response_done = true;
        s.response_last_ns = s.response_last_ns.max(ts_ns);
        self.complete(stream, out);
    }

    /// Emits the stream's exchange once both sides are complete.
    fn complete(&mut self, stream: u32, out: &mut Vec<Assembled>) {
        if !self.streams.get(&stream).is_some_and(|s| s.request_done && s.response_done) {
            return;
        }
        let Some(s) = self.streams.remove(&stream) else { return };
        self.held -= s.held();
        let Some(response) = s.response else { return };
        out.push(Assembled::Exchange(Exchange {
            id: self.exchange_id(stream),
            stream_id: Some(stream),
            client: self.client,
            server: self.server,
            request: s.request,
            response,
            timing: Timing {
                request_first_ns: s.request_first_ns,
                request_last_ns: s.request_last_ns,
                response_first_ns: s.response_first_ns,
                response_last_ns: s.response_last_ns,
            },
        }));
    }

    /// RST_STREAM from either side ends the stream; an exchange already complete was emitted.
    fn reset(&mut self, stream: u32, code: u32, drops: &mut AssemblyDrops, out: &mut Vec<Assembled>) {
        if !self.event_stream_ended(stream, drops, out) {
            self.drop_stream(stream, Drop::Reset(code), drops);
        }
    }

    /// A stream cut short (reset, connection closed) whose answer is an event stream: complete when
    /// its end event was seen — clients cancel the stream as soon as they read `[DONE]` — else
    /// counted as cut. `false` when the stream is not such an answer.
    fn event_stream_ended(
        &mut self,
        stream: u32,
        drops: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) -> bool {
        let Some(s) = self.streams.get(&stream) else { return false };
        let coding = s.response.as_ref().and_then(|r| crate::sse::readable_while_open(&r.headers));
        let Some(coding) = coding.filter(|_| s.request_done && !s.response_done) else { return false };
        if crate::sse::ended_by_its_events(s.response_body.parts(), coding) {
            let last = s.response_last_ns;
            self.finish_response(stream, last, out);
        } else if let Some(s) = self.streams.remove(&stream) {
            self.held -= s.held();
            drops.sse_stream_cut += 1;
        }
        true
    }

    fn close(&mut self, reason: CloseReason, drops: &mut AssemblyDrops, out: &mut Vec<Assembled>) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            if !self.event_stream_ended(id, drops, out)
                && let Some(stream) = self.streams.remove(&id)
            {
                reason.count_unfinished(stream.unfinished(), drops);
            }
        }
        self.streams.clear();
        self.held = 0;
    }
}

/// The SETTINGS parameters of an `HTTP2-Settings` header: base64url (no padding) of a SETTINGS
/// frame's payload (RFC 7540 §3.2.1). Anything undecodable yields none.
fn settings_header(value: &[u8]) -> Vec<(u16, u32)> {
    use base64::Engine as _;
    let text: Vec<u8> = value.iter().copied().filter(|b| !b.is_ascii_whitespace() && *b != b'=').collect();
    let Ok(payload) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text) else {
        return Vec::new();
    };
    payload
        .chunks_exact(6)
        .map(|p| (u16::from_be_bytes([p[0], p[1]]), u32::from_be_bytes([p[2], p[3], p[4], p[5]])))
        .collect()
}

fn is_gap(reason: DesyncReason) -> bool {
    matches!(reason, DesyncReason::GapOutsidePayload | DesyncReason::GapPastFrameEnd { .. })
}
