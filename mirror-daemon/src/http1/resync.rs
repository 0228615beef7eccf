//! Picking up a connection at a request: one first seen mid-stream, or one whose framing a gap
//! lost (`--resync-mid-stream`).
use std::collections::VecDeque;

use bytes::Bytes;

use super::{
    connection::{Connection, Input},
    reader::Phase,
};
use crate::{drops::AssemblyDrops, exchange::Assembled, flows::Side, framing::HttpConfig};

/// Picking up a connection at a request, where nothing on the wire proves where a message starts.
///
/// Resynchronising rests on one assumption: **the client does not pipeline** (it sends a request
/// only after reading the previous response whole — what browsers, gateways and most clients do).
/// Then, when the client sends a request, it has received every byte the server sent, and the
/// server sends nothing more until the request arrives: the acknowledgement number of the segment
/// carrying the request's first byte is exactly where the answer starts in the server's stream.
/// Sequence numbers, unlike timestamps, do not move when a segment is retransmitted: TCP only
/// retransmits bytes not acknowledged yet, and the first byte of the answer acknowledges the
/// request, so every copy of that segment carries the same acknowledgement. So:
///
/// 1. On the client side, a chunk (a segment's payload, in order) that starts with a known method
///    and whose bytes, with the following ones, form a complete request head is taken as a request
///    start; the acknowledgement of the segment carrying its first byte gives the server offset
///    where its answer starts.
/// 2. Server bytes before that offset belong to earlier responses and are skipped. The bytes at
///    that offset must start with `HTTP/1.`: then both sides are at a message boundary and
///    parsing goes on as for any connection. Otherwise (the client pipelined, the bytes at that
///    offset were not captured, the segment carried no acknowledgement, or the server's stream
///    was first captured after that offset), the request is dropped and counted
///    (`mid_stream_resync_failed`), and the next request start — already framed, or still to come
///    — is tried.
///
/// The two directions are captured by different hooks and may arrive out of order, so server
/// chunks seen before the client side is resynchronised are kept (bounded) with their offsets and
/// judged once it is. What a pipelining client can still defeat: a request pipelined behind one
/// whose response had not started yet acknowledges that older response's start, and pairs with it.
/// Afterwards every answer must start where its request's acknowledgement says
/// ([`Connection::doubt_answer`]), so a wrong pick-up costs one exchange, not every later one.
#[derive(Debug, Default)]
pub(super) struct Resync {
    /// Client chunks of a candidate request head, from its first chunk, with their timestamps and
    /// acknowledgements.
    pub(super) candidate: Vec<(Bytes, u64, Option<u32>)>,
    pub(super) candidate_bytes: usize,
    /// The client side is at a request (the first pending one, or the head being read).
    pub(super) synced: bool,
    /// Server input seen before the client side was resynchronised (data with its offsets, and
    /// the holes between).
    pub(super) server: VecDeque<Input>,
    pub(super) server_bytes: usize,
    /// Server chunks from the answer's start on, held while they are too short to tell whether
    /// they start with `HTTP/1.` (a record split inside it).
    pub(super) held: Vec<(Bytes, u64, u64)>,
}

/// Whether `data` starts a request line, or is too short to tell.
pub(super) fn may_start_request(data: &[u8]) -> bool {
    RESYNC_METHODS.iter().any(|m| data.starts_with(m) || (data.len() < m.len() && m.starts_with(data)))
}

/// Methods a resynchronisation accepts as a request start.
pub(super) const RESYNC_METHODS: [&[u8]; 7] =
    [b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS "];

/// The start of every HTTP/1.x status line.
const STATUS_LINE: &[u8] = b"HTTP/1.";

impl Connection {
    /// Drops what a resynchronisation had put together and waits for the next request start;
    /// returns the requests dropped, for the caller to count. Server chunks waiting to be judged
    /// keep their offsets, so they stay.
    pub(super) fn restart_resync(&mut self, stats: &mut AssemblyDrops) -> u64 {
        let dropped = self.requests_in_progress();
        let (server, server_bytes, candidate_bytes) = match self.resync.take() {
            Some(mut r) => (std::mem::take(&mut r.server), r.server_bytes, r.candidate_bytes),
            None => (VecDeque::new(), 0, 0),
        };
        self.skipped(candidate_bytes, stats);
        self.clear();
        self.resync = Some(Box::new(Resync { server, server_bytes, ..Resync::default() }));
        dropped
    }

    /// After a gap stopped parsing (`--resync-mid-stream`): waits for the next request start and
    /// resynchronises there, as on a connection first seen mid-stream. What the gap cost is
    /// already counted; `rest` is the server input that came after the hole.
    pub(super) fn resume_after_gap(
        &mut self,
        rest: VecDeque<Input>,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        self.stopped = false;
        self.resuming = true;
        self.server_fin_held = false;
        self.resync = Some(Box::default());
        for input in rest {
            if let Input::Gap(len) = input {
                self.skipped(len as usize, stats);
            }
            self.resync_server_input(input, cfg, stats, out);
        }
        if self.resync.is_none() && std::mem::take(&mut self.server_fin_held) {
            self.server_input(Input::Fin, cfg, stats, out);
        }
    }

    /// Server input on a connection being resynchronised, or on one that just was (input judged
    /// again after the state changed goes where the state now says).
    fn resync_server_input(
        &mut self,
        input: Input,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        match input {
            Input::Data(data, ts, off) => self.resync_server(data, ts, off, cfg, stats, out),
            _ if self.stopped => {}
            _ if self.resync.is_none() => self.server_input(input, cfg, stats, out),
            Input::Gap(_) => self.resync_gap(Side::Server, Some(input), stats),
            Input::Fin => self.server_fin_held = true,
        }
    }

    /// A gap while resynchronising (`hole` is the server's input that says so). A hole in the
    /// client's stream, or in the server's right at the answer being checked, leaves what was
    /// put together unprovable. A hole in the server's stream before the client side is at a
    /// request keeps its place among the server input waiting, so that the framing learns of it
    /// if the answer starts before it; any other changes nothing, since offsets, not arrival, say
    /// where the answer starts.
    pub(super) fn resync_gap(&mut self, side: Side, hole: Option<Input>, stats: &mut AssemblyDrops) {
        let Some(resync) = self.resync.as_mut() else { return };
        if side == Side::Client || !resync.held.is_empty() {
            stats.gap += self.restart_resync(stats);
        } else if !resync.synced
            && let Some(hole) = hole
        {
            resync.server.push_back(hole);
        }
    }

    /// Client bytes on a connection being resynchronised (see [`Resync`]).
    pub(super) fn resync_client(
        &mut self,
        data: Bytes,
        ts: u64,
        ack: Option<u32>,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        let Some(resync) = self.resync.as_mut().filter(|r| !r.synced) else {
            // The request's own later bytes (a body), or the next requests, parsed as usual.
            return self.client_data(data, ts, ack, cfg, stats, out);
        };
        if resync.candidate.is_empty() && !may_start_request(&data) {
            return self.skipped(data.len(), stats);
        }
        resync.candidate_bytes += data.len();
        resync.candidate.push((data, ts, ack));
        let head: Vec<u8> = resync.candidate.iter().flat_map(|(d, ..)| d.iter().copied()).collect();
        let mut headers = vec![httparse::EMPTY_HEADER; cfg.max_headers];
        // The head as a whole must start with a known method: a chunk too short to tell (an `O`
        // at the end of a body) may turn out to be the start of something else (`OGET /`).
        let parsed = if may_start_request(&head) {
            httparse::Request::new(&mut headers).parse(&head)
        } else {
            Err(httparse::Error::Token)
        };
        match parsed {
            Ok(httparse::Status::Complete(_)) => {
                let chunks = std::mem::take(&mut resync.candidate);
                resync.candidate_bytes = 0;
                resync.synced = true;
                let server: Vec<Input> = resync.server.drain(..).collect();
                resync.server_bytes = 0;
                for (chunk, chunk_ts, chunk_ack) in chunks {
                    self.client_data(chunk, chunk_ts, chunk_ack, cfg, stats, out);
                }
                for input in server {
                    self.resync_server_input(input, cfg, stats, out);
                }
            }
            Ok(httparse::Status::Partial) if resync.candidate_bytes <= cfg.max_header_bytes => {}
            _ => {
                // Not a request head after all: skip it; the chunk just added may still start one.
                let mut chunks = std::mem::take(&mut resync.candidate);
                resync.candidate_bytes = 0;
                let last = chunks.pop().filter(|(d, ..)| !chunks.is_empty() && may_start_request(d));
                self.skipped(chunks.iter().map(|(d, ..)| d.len()).sum(), stats);
                if let Some((d, t, a)) = last {
                    self.resync_client(d, t, a, cfg, stats, out);
                }
            }
        }
    }

    /// A server chunk starting at offset `off` of the server's stream, on a connection being
    /// resynchronised: kept until the client side is at a request, then skipped up to where that
    /// request's answer starts, which must start a status line.
    pub(super) fn resync_server(
        &mut self,
        data: Bytes,
        ts: u64,
        off: u64,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        if self.stopped {
            return self.skipped(data.len(), stats);
        }
        let answer_at = self.answer_ack().and_then(|ack| self.server_offset(ack));
        // Bytes judged again after the state changed go where the state now says.
        let Some(resync) = self.resync.as_mut() else {
            return self.server_input(Input::Data(data, ts, off), cfg, stats, out);
        };
        if !resync.synced {
            resync.server_bytes += data.len();
            resync.server.push_back(Input::Data(data, ts, off));
            // Bounded like response bytes waiting for their request; oldest dropped first.
            let mut dropped = 0;
            while resync.server_bytes > cfg.max_backlog_bytes {
                let Some(old) = resync.server.pop_front() else { break };
                if let Input::Data(old, ..) = old {
                    resync.server_bytes -= old.len();
                    dropped += old.len();
                }
            }
            return self.skipped(dropped, stats);
        }
        let (mut data, mut off) = (data, off);
        if resync.held.is_empty()
            && let Some(at) = answer_at
        {
            let end = off + data.len() as u64;
            if end <= at {
                // Earlier responses.
                return self.skipped(data.len(), stats);
            }
            if off < at {
                let skip = (at - off) as usize;
                data = data.slice(skip..);
                off = at;
                self.skipped(skip, stats);
            }
        }
        let Some(resync) = self.resync.as_mut() else { return };
        resync.held.push((data, ts, off));
        let at_answer = answer_at.is_some_and(|at| resync.held[0].2 == at);
        let head: Vec<u8> =
            resync.held.iter().flat_map(|(d, ..)| d.iter().copied()).take(STATUS_LINE.len()).collect();
        if at_answer && head.len() < STATUS_LINE.len() && STATUS_LINE.starts_with(&head) {
            return; // too short to tell yet
        }
        let held = std::mem::take(&mut resync.held);
        if at_answer && head.starts_with(STATUS_LINE) {
            self.resync = None;
            self.checks_acks = true;
            if std::mem::take(&mut self.resuming) {
                stats.gap_resumed_connections += 1;
            }
            for (chunk, chunk_ts, chunk_off) in held {
                self.server_input(Input::Data(chunk, chunk_ts, chunk_off), cfg, stats, out);
            }
            return;
        }
        if self.next_request_ack().is_some()
            && let Some(dropped) = self.pending.pop_front()
        {
            // A later request has already started: it is at a message boundary too, so
            // resynchronise there and judge these bytes again.
            self.pending_bytes -= dropped.bytes;
            stats.mid_stream_resync_failed += 1;
        } else {
            // The request will never be paired: that is what is counted. These bytes were not
            // proven to answer it, and may answer a request not delivered yet (the directions
            // arrive out of order): they are judged again at the next request.
            stats.mid_stream_resync_failed += self.restart_resync(stats);
        }
        for (chunk, chunk_ts, chunk_off) in held {
            self.resync_server(chunk, chunk_ts, chunk_off, cfg, stats, out);
        }
    }

    /// On a connection picked up at a request, an answer that does not start where its request's
    /// acknowledgement says: the pairing is no longer certain (the client pipelined, or the
    /// request picked up at was not one). Once synchronised, answers pair first in, first out
    /// whatever the client does, so this only happens when the point picked up at was wrong:
    /// what is in progress is dropped and counted (`mid_stream_resync_failed`) before it can
    /// mispair again, and the connection is resynchronised, `data` (at offset `off`) and the
    /// server input after it included.
    pub(super) fn doubt_answer(
        &mut self,
        data: Bytes,
        ts: u64,
        off: u64,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
    ) {
        let rest = std::mem::take(&mut self.backlog);
        stats.mid_stream_resync_failed += self.restart_resync(stats);
        self.resync_server_input(Input::Data(data, ts, off), cfg, stats, out);
        for input in rest {
            self.resync_server_input(input, cfg, stats, out);
        }
    }

    /// The acknowledgement of the request being resynchronised at: the first pending one, or the
    /// one whose head is being read.
    fn answer_ack(&self) -> Option<u32> {
        match self.pending.front() {
            Some(p) => p.request_ack,
            None if self.requests.started && self.requests.phase == Phase::Head => self.head_ack,
            None => None,
        }
    }

    /// `Some` when a request after the one being resynchronised at has started (framed already,
    /// or its head in progress), with its acknowledgement.
    fn next_request_ack(&self) -> Option<Option<u32>> {
        match self.pending.get(1) {
            Some(next) => Some(next.request_ack),
            None if !self.pending.is_empty()
                && self.requests.started
                && self.requests.phase == Phase::Head =>
            {
                Some(self.head_ack)
            }
            None => None,
        }
    }

    /// The offset in the server's stream of acknowledgement number `ack`: `None` before the
    /// server's stream started, or when `ack` lies before its first captured byte.
    pub(super) fn server_offset(&self, ack: u32) -> Option<u64> {
        let base = self.server_base?;
        let next = base.wrapping_add(self.server_pos as u32);
        let off = self.server_pos as i64 + i64::from(ack.wrapping_sub(next) as i32);
        u64::try_from(off).ok()
    }
}
