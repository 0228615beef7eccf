//! Pairing on one connection: requests and responses are framed per direction and paired first
//! in, first out; response bytes captured before the request they answer wait in a bounded
//! backlog (the two directions are captured by different hooks and may be reordered).
use std::{collections::VecDeque, net::SocketAddr};

use bytes::Bytes;

use super::{
    Stop,
    head::{Framing, RequestHead, body_framing, has_token, request_head},
    reader::{Damage, Finished, HeadResult, Phase, Reader},
    resync::Resync,
};
use crate::{
    drops::AssemblyDrops,
    exchange::{Assembled, BodyBuilder, Exchange, ExchangeId, ReadyRequest, Request, Response, Timing},
    flows::{CloseReason, FlowEvent, Side, Unfinished},
    framing::{H2cUpgrade, HttpConfig},
    sse,
};

/// A request waiting for its response to complete (or for its own end, after an early response).
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) id: ExchangeId,
    pub(super) request: Request,
    pub(super) expect_continue: bool,
    pub(super) request_done: bool,
    pub(super) request_first_ns: u64,
    pub(super) request_last_ns: u64,
    /// The acknowledgement number of the segment carrying the request's first byte (see
    /// `resync.rs`).
    pub(super) request_ack: Option<u32>,
    /// Where its answer starts was checked against `request_ack` (see `checks_acks`).
    pub(super) answer_checked: bool,
    pub(super) response: Option<Response>,
    pub(super) response_done: bool,
    pub(super) response_first_ns: u64,
    pub(super) response_last_ns: u64,
    pub(super) damage: Option<Damage>,
    pub(super) bytes: usize,
    /// The request asked for `Upgrade: h2c`.
    pub(super) upgrade_h2c: bool,
}

/// Server-side input waiting for a request to answer.
#[derive(Debug)]
pub(super) enum Input {
    /// Bytes, their capture time, and the offset of the first one in the server's stream.
    Data(Bytes, u64, u64),
    Gap(u64),
    Fin,
}

/// HTTP state of one connection.
#[derive(Debug)]
pub struct Connection {
    pub(super) client: SocketAddr,
    pub(super) server: SocketAddr,
    /// Parsing stopped; further bytes are counted and ignored.
    pub(super) stopped: bool,
    /// The client's bytes stopped being HTTP after complete requests: those are still answered,
    /// then the connection stops; further client bytes are counted and ignored.
    pub(super) client_stopped: bool,
    /// Stopped because the connection was first seen mid-stream.
    pub(super) mid_stream: bool,
    /// Resynchronising a connection first seen mid-stream (opt-in).
    pub(super) resync: Option<Box<Resync>>,
    /// The server's FIN came while resynchronising: it ends the stream once its bytes are framed.
    pub(super) server_fin_held: bool,
    /// A gap stopped parsing; the server input after it, kept so that `--resync-mid-stream` can
    /// pick the connection up again (`resume_after_gap`).
    pub(super) after_gap: Option<VecDeque<Input>>,
    /// Resynchronising after a gap: counted as resumed once it succeeds.
    pub(super) resuming: bool,
    /// Picked up at a request (`--resync-mid-stream`): from then on, each answer must start where
    /// its request's acknowledgement says, or the pairing is doubted (`doubt_answer`).
    pub(super) checks_acks: bool,
    /// Sequence number of the server stream's first byte, once it started.
    pub(super) server_base: Option<u32>,
    /// Offset in the server's stream of its next byte to be delivered.
    pub(super) server_pos: u64,
    /// [`Pending::request_ack`] of the request whose head is being read.
    pub(super) head_ack: Option<u32>,
    pub(super) requests: Reader,
    pub(super) responses: Reader,
    pub(super) pending: VecDeque<Pending>,
    pub(super) pending_bytes: usize,
    pub(super) backlog: VecDeque<Input>,
    pub(super) backlog_bytes: usize,
    /// The flow table's id of this connection, for [`ExchangeId`]s.
    pub(super) conn_id: u64,
    /// Requests seen so far (the next request's [`ExchangeId::seq`]).
    pub(super) next_seq: u64,
    /// Announce complete requests ([`Assembled::Request`]).
    pub(super) announce: bool,
    /// A complete request asked for `Upgrade: h2c` and its response has not come: the client's
    /// next bytes are HTTP/1.1 or HTTP/2 depending on it, so they wait here (bounded).
    pub(super) upgrade_held: Option<Vec<(Bytes, u64)>>,
    /// The connection switched to HTTP/2: for the assembler to take.
    pub(super) upgraded: Option<Box<H2cUpgrade>>,
    /// The server declined an upgrade: the held client bytes are framed as HTTP/1.1.
    pub(super) upgrade_declined: bool,
}

impl Connection {
    /// Sets the connection's id and whether complete requests are announced early.
    pub fn identify(&mut self, conn_id: u64, announce: bool) {
        self.conn_id = conn_id;
        self.announce = announce;
    }

    pub fn new(client: SocketAddr, server: SocketAddr) -> Self {
        Self {
            client,
            server,
            stopped: false,
            client_stopped: false,
            mid_stream: false,
            resync: None,
            server_fin_held: false,
            after_gap: None,
            resuming: false,
            checks_acks: false,
            server_base: None,
            server_pos: 0,
            head_ack: None,
            requests: Reader::default(),
            responses: Reader { body: BodyBuilder::timed(), ..Reader::default() },
            pending: VecDeque::new(),
            pending_bytes: 0,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            conn_id: 0,
            next_seq: 0,
            announce: false,
            upgrade_held: None,
            upgraded: None,
            upgrade_declined: false,
        }
    }

    /// Bytes buffered by this connection's partial messages.
    pub fn buffered(&self) -> usize {
        let resync = self.resync.as_ref().map_or(0, |r| r.candidate_bytes + r.server_bytes);
        let held: usize = self.upgrade_held.iter().flatten().map(|(d, _)| d.len()).sum();
        self.requests.buffered()
            + self.responses.buffered()
            + self.pending_bytes
            + self.backlog_bytes
            + resync
            + held
    }

    /// Applies one stream event; completed exchanges are appended to `out`.
    pub fn handle(
        &mut self,
        event: FlowEvent,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        match event {
            FlowEvent::Opened { .. } => {}
            FlowEvent::StreamStart { side, mid_stream, seq, .. } => {
                if side == Side::Server {
                    self.server_base = Some(seq);
                }
                if mid_stream && !self.stopped && self.resync.is_none() {
                    // Only one side lacks its SYN: what the other side already started is lost
                    // like bytes in a gap.
                    stats.gap += self.requests_in_progress();
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
            FlowEvent::Data { side, data, ts_ns, ack, .. } => {
                let off = self.server_pos;
                if side == Side::Server {
                    self.server_pos += data.len() as u64;
                }
                if self.stopped {
                    self.skipped(data.len(), stats);
                } else if self.resync.is_some() {
                    match side {
                        Side::Client => self.resync_client(data, ts_ns, ack, cfg, stats, out),
                        Side::Server => self.resync_server(data, ts_ns, off, cfg, stats, out),
                    }
                    if self.resync.is_none() && std::mem::take(&mut self.server_fin_held) {
                        self.server_input(Input::Fin, cfg, stats, out);
                    }
                } else if side == Side::Client {
                    self.client_data(data, ts_ns, ack, cfg, stats, out);
                } else {
                    self.server_input(Input::Data(data, ts_ns, off), cfg, stats, out);
                }
            }
            FlowEvent::Gap { side, len, .. } => {
                if side == Side::Server {
                    self.server_pos += len;
                }
                if self.stopped {
                    self.skipped(len as usize, stats);
                } else if self.resync.is_some() {
                    self.skipped(len as usize, stats);
                    self.resync_gap(side, Some(Input::Gap(len)), stats);
                } else if side == Side::Client {
                    if self.client_stopped {
                        self.skipped(len as usize, stats);
                    } else if self.requests.gap(len).is_err() {
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
            FlowEvent::Closed { reason, .. } => self.close(reason, stats, out),
        }
        if let Some(rest) = self.after_gap.take()
            && cfg.resync_mid_stream
            && self.stopped
            && self.upgraded.is_none()
        {
            self.resume_after_gap(rest, cfg, stats, out);
        }
        if self.upgrade_declined {
            self.resume_after_declined_upgrade(cfg, stats, out);
        }
    }

    /// Stops parsing because the total HTTP buffer limit was hit.
    pub fn abort_memory_limit(&mut self, stats: &mut AssemblyDrops) {
        if !self.stopped {
            self.stop(Stop::MemoryLimit, stats);
        }
    }

    pub(super) fn skipped(&self, len: usize, stats: &mut AssemblyDrops) {
        if self.mid_stream {
            stats.mid_stream_skipped_bytes += len as u64;
        } else {
            stats.desync_skipped_bytes += len as u64;
        }
    }

    /// Requests seen and not ended yet: those waiting for (or receiving) their response, and
    /// one whose head is being read.
    pub fn requests_in_progress(&self) -> u64 {
        let in_head = u64::from(self.requests.started && self.requests.phase == Phase::Head);
        self.pending.len() as u64 + in_head
    }

    /// Stops parsing: every request in progress is dropped and counted under `why` (in requests,
    /// so a stop with none in progress counts none there; the connection's own counter says it).
    pub(super) fn stop(&mut self, why: Stop, stats: &mut AssemblyDrops) {
        let lost = self.requests_in_progress();
        match why {
            Stop::Gap => stats.gap_desync_connections += 1,
            // A response no request explains is counted once (a response); the requests it
            // leaves unprovable are lost as responses that cannot be framed.
            Stop::UnpairedResponse => {
                stats.unpaired_response += 1;
                stats.malformed_response += lost;
            }
            _ => {}
        }
        if why != Stop::UnpairedResponse {
            *why.counter(stats) += lost;
        }
        if why == Stop::Gap {
            // What the server sent after the hole may answer a later request.
            self.after_gap = Some(std::mem::take(&mut self.backlog));
        }
        self.stopped = true;
        self.clear();
    }

    /// The client sent something that is not a request where one should start. Requests before it
    /// were complete and are still answered in order, so they stay; the bytes are counted once as
    /// a malformed request, the connection as a framing error, and nothing after them is parsed.
    fn stop_client(&mut self, why: Stop, stats: &mut AssemblyDrops) {
        if why == Stop::MalformedRequest {
            stats.framing_error_connections += 1;
        }
        if why != Stop::MalformedRequest || self.pending.is_empty() {
            return self.stop(why, stats);
        }
        stats.malformed_request += 1;
        self.client_stopped = true;
        self.requests = Reader::default();
    }

    pub(super) fn clear(&mut self) {
        self.client_stopped = false;
        self.pending.clear();
        self.pending_bytes = 0;
        self.backlog.clear();
        self.backlog_bytes = 0;
        self.requests = Reader::default();
        self.responses = Reader { body: BodyBuilder::timed(), ..Reader::default() };
        self.upgrade_held = None;
        self.upgrade_declined = false;
    }

    pub(super) fn close(&mut self, reason: CloseReason, stats: &mut AssemblyDrops, out: &mut Vec<Assembled>) {
        if self.stopped {
            self.clear();
            return;
        }
        if let Some(coding) = self.event_stream_in_progress() {
            if !self.responses.damaged && sse::ended_by_its_events(self.responses.body.parts(), coding) {
                // The stream had ended by its own rule; only the body's framing end is missing.
                self.finish_response(stats, out);
            } else if let Some(p) = self.pending.iter().position(|p| p.response.is_some() && !p.response_done)
            {
                self.pending.remove(p);
                stats.sse_stream_cut += 1;
            }
        }
        for p in &self.pending {
            let unfinished = if p.response.is_some() && !p.response_done {
                Unfinished::Response
            } else if !p.request_done {
                Unfinished::Request
            } else {
                Unfinished::Unanswered
            };
            reason.count_unfinished(unfinished, stats);
        }
        if self.requests.started && self.requests.phase == Phase::Head {
            reason.count_unfinished(Unfinished::Request, stats);
        }
        if self.backlog.iter().any(|i| matches!(i, Input::Data(..))) {
            stats.unpaired_response += 1;
        }
        self.clear();
    }

    /// The response being received is an event stream whose events can be read before its end.
    fn event_stream_in_progress(&self) -> Option<sse::StreamCoding> {
        let p = self.pending.iter().find(|p| p.response.is_some() && !p.response_done)?;
        sse::readable_while_open(&p.response.as_ref()?.headers)
    }

    pub(super) fn client_data(
        &mut self,
        mut data: Bytes,
        ts: u64,
        ack: Option<u32>,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        while !data.is_empty() {
            if self.stopped || self.client_stopped {
                self.skipped(data.len(), stats);
                return;
            }
            if let Some(held) = self.upgrade_held.as_mut() {
                held.push((data, ts));
                if held.iter().map(|(d, _)| d.len()).sum::<usize>() > cfg.max_backlog_bytes {
                    self.stop(Stop::Upgrade, stats);
                }
                return;
            }
            if self.requests.phase == Phase::Head {
                if !self.requests.started {
                    stats.requests_seen += 1;
                    self.head_ack = ack;
                }
                let head = match self.requests.take_head(&mut data, ts, cfg) {
                    Ok(HeadResult::Partial) => return,
                    Ok(HeadResult::Complete(head)) => head,
                    Err(why) => return self.stop_client(why, stats),
                };
                if self.pending.len() >= cfg.max_pipelined {
                    return self.stop(Stop::PipelineOverflow, stats);
                }
                let RequestHead { request, framing, upgrade_h2c } = match request_head(head) {
                    Ok(parsed) => parsed,
                    Err(why) => return self.stop_client(why, stats),
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
                    request_ack: self.head_ack,
                    answer_checked: false,
                    response: None,
                    response_done: false,
                    response_first_ns: 0,
                    response_last_ns: 0,
                    damage: None,
                    bytes: 0,
                    upgrade_h2c,
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

    pub(super) fn finish_request(&mut self, stats: &mut AssemblyDrops, out: &mut Vec<Assembled>) {
        let Finished { body, trailers, last, damage, .. } = self.requests.finish();
        if let Some(p) = self.pending.back_mut() {
            p.request.body = body;
            p.request.trailers = trailers;
            p.request_done = true;
            p.request_last_ns = last;
            p.damage = p.damage.or(damage);
            p.bytes += p.request.body.len();
            self.pending_bytes += p.request.body.len();
            if p.upgrade_h2c && p.damage.is_none() {
                self.upgrade_held = Some(Vec::new());
            }
            if self.announce && p.damage.is_none() {
                // Bodies and header values are reference-counted: the copy is cheap.
                out.push(Assembled::Request(ReadyRequest {
                    id: p.id,
                    client: self.client,
                    server: self.server,
                    request: p.request.clone(),
                    first_ns: p.request_first_ns,
                    last_ns: p.request_last_ns,
                }));
            }
        }
        self.emit(stats, out);
    }

    pub(super) fn server_input(
        &mut self,
        input: Input,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        if let Input::Data(d, ..) = &input {
            self.backlog_bytes += d.len();
        }
        self.backlog.push_back(input);
        self.drive_server(cfg, stats, out);
        if !self.stopped && self.backlog_bytes > cfg.max_backlog_bytes {
            self.stop(Stop::UnpairedResponse, stats);
        }
    }

    /// Frames backlogged response bytes as far as the known requests allow.
    pub(super) fn drive_server(
        &mut self,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        while let Some(input) = self.backlog.pop_front() {
            if self.stopped {
                return;
            }
            match input {
                Input::Data(mut data, ts, off) => {
                    let len = data.len();
                    self.backlog_bytes -= len;
                    let blocked = self.server_data(&mut data, ts, off, cfg, stats, out);
                    if !data.is_empty() && !self.stopped {
                        self.backlog_bytes += data.len();
                        let off = off + (len - data.len()) as u64;
                        self.backlog.push_front(Input::Data(data, ts, off));
                    } else if self.stopped {
                        self.skipped(data.len(), stats);
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
    pub(super) fn server_data(
        &mut self,
        data: &mut Bytes,
        ts: u64,
        off: u64,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) -> bool {
        let end = off + data.len() as u64;
        while !data.is_empty() {
            if self.stopped {
                return false;
            }
            if self.responses.phase == Phase::Head {
                let Some(idx) = self.pending.iter().position(|p| p.response.is_none()) else {
                    return true;
                };
                if self.checks_acks && !self.responses.started && !self.pending[idx].answer_checked {
                    self.pending[idx].answer_checked = true;
                    let at = self.pending[idx].request_ack.and_then(|ack| self.server_offset(ack));
                    let pos = end - data.len() as u64;
                    if at != Some(pos) {
                        self.doubt_answer(std::mem::take(data), ts, pos, cfg, stats, out);
                        return false;
                    }
                }
                let response: Response = match self.responses.take_head(data, ts, cfg) {
                    Ok(HeadResult::Partial) => return false,
                    Ok(HeadResult::Complete(response)) => response,
                    Err(why) => {
                        self.stop(why, stats);
                        return false;
                    }
                };
                match response.status {
                    101 => {
                        let p = &self.pending[idx];
                        let h2c =
                            p.upgrade_h2c && p.request_done && has_token(&response.headers, "upgrade", "h2c");
                        if h2c && idx == 0 && self.pending.len() == 1 {
                            self.upgrade(std::mem::take(data), ts);
                        } else {
                            self.stop(Stop::Upgrade, stats);
                        }
                        return false;
                    }
                    // Interim responses (100 Continue, 103 Early Hints) are not paired.
                    100..=199 => {
                        self.responses.reset();
                        continue;
                    }
                    _ => {}
                }
                if self.pending[idx].upgrade_h2c {
                    // Declined: the connection goes on in HTTP/1.1; what the client sent since is
                    // framed once this event is handled.
                    self.pending[idx].upgrade_h2c = false;
                    self.upgrade_declined = true;
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

    /// Switches to HTTP/2 at the 101 answering `Upgrade: h2c`: `rest` (after the 101 head) and
    /// whatever else the server sent are HTTP/2, and so is what the client sent since its request.
    fn upgrade(&mut self, rest: Bytes, ts: u64) {
        let Some(p) = self.pending.pop_front() else { return };
        let id = self.conn_id;
        let mut events: Vec<FlowEvent> = self
            .upgrade_held
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|(data, ts_ns)| FlowEvent::Data { id, side: Side::Client, data, ts_ns, ack: None })
            .collect();
        if !rest.is_empty() {
            events.push(FlowEvent::Data { id, side: Side::Server, data: rest, ts_ns: ts, ack: None });
        }
        for input in std::mem::take(&mut self.backlog) {
            events.push(match input {
                Input::Data(data, ts_ns, _) => {
                    FlowEvent::Data { id, side: Side::Server, data, ts_ns, ack: None }
                }
                Input::Gap(len) => FlowEvent::Gap { id, side: Side::Server, len },
                Input::Fin => FlowEvent::Fin { id, side: Side::Server, ts_ns: ts },
            });
        }
        self.upgraded = Some(Box::new(H2cUpgrade {
            id: p.id,
            request: p.request,
            request_first_ns: p.request_first_ns,
            request_last_ns: p.request_last_ns,
            next_seq: self.next_seq,
            events,
        }));
        // Nothing is lost: from here on the assembler feeds the connection to HTTP/2.
        self.stopped = true;
        self.clear();
    }

    pub fn client(&self) -> SocketAddr {
        self.client
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The connection switched to HTTP/2 (see [`H2cUpgrade`]).
    pub fn take_upgrade(&mut self) -> Option<Box<H2cUpgrade>> {
        self.upgraded.take()
    }

    /// The server answered an `Upgrade: h2c` request in HTTP/1.1: the client bytes held meanwhile
    /// are HTTP/1.1 after all.
    fn resume_after_declined_upgrade(
        &mut self,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        self.upgrade_declined = false;
        for (data, ts) in self.upgrade_held.take().unwrap_or_default() {
            self.client_data(data, ts, None, cfg, stats, out);
        }
    }

    pub(super) fn finish_response(&mut self, stats: &mut AssemblyDrops, out: &mut Vec<Assembled>) {
        let Finished { body, arrivals, trailers, last, damage } = self.responses.finish();
        if let Some(p) = self.pending.iter_mut().find(|p| p.response.is_some() && !p.response_done)
            && let Some(resp) = p.response.as_mut()
        {
            p.bytes += body.len();
            self.pending_bytes += body.len();
            resp.body = body;
            resp.arrivals = arrivals;
            resp.trailers = trailers;
            p.response_done = true;
            p.response_last_ns = last;
            p.damage = p.damage.or(damage);
        }
        self.emit(stats, out);
    }

    /// Emits the exchanges at the front of the queue that are complete on both sides.
    pub(super) fn emit(&mut self, stats: &mut AssemblyDrops, out: &mut Vec<Assembled>) {
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
            out.push(Assembled::Exchange(Exchange {
                id: p.id,
                stream_id: None,
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
            }));
        }
        if self.client_stopped && self.pending.is_empty() {
            // Every request before the client's garbage is answered: nothing more can be paired.
            self.stopped = true;
            self.clear();
        }
    }
}
