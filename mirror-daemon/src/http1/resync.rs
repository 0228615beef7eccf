//! Picking up a connection first seen mid-stream (`--resync-mid-stream`), at a request.
use std::collections::VecDeque;

use bytes::Bytes;

use super::{
    connection::{Connection, Input},
    reader::Phase,
};
use crate::{drops::AssemblyDrops, exchange::Assembled, flows::Side, framing::HttpConfig};

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
pub(super) struct Resync {
    /// Client chunks of a candidate request head, from its first chunk.
    pub(super) candidate: Vec<(Bytes, u64)>,
    pub(super) candidate_bytes: usize,
    /// The chosen request's first-byte timestamp, once the client side is resynchronised.
    pub(super) synced_at: Option<u64>,
    /// Server chunks seen before the client side was resynchronised.
    pub(super) server: VecDeque<(Bytes, u64)>,
    pub(super) server_bytes: usize,
    /// Timestamp of the server stream's first captured chunk (kept across restarts).
    pub(super) server_started_at: Option<u64>,
    /// Server chunks at or after the request, held while they are too short to tell whether
    /// they start with `HTTP/1.` (a record split inside it).
    pub(super) held: Vec<(Bytes, u64)>,
}

/// Whether `data` starts a request line, or is too short to tell.
pub(super) fn may_start_request(data: &[u8]) -> bool {
    RESYNC_METHODS.iter().any(|m| data.starts_with(m) || (data.len() < m.len() && m.starts_with(data)))
}

/// Methods a resynchronisation accepts as a request start.
pub(super) const RESYNC_METHODS: [&[u8]; 7] =
    [b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS "];

impl Connection {
    /// Drops what a resynchronisation had put together and waits for the next request start;
    /// the requests dropped are counted by the caller.
    pub(super) fn restart_resync(&mut self) -> u64 {
        let dropped = self.requests_in_progress();
        let server_started_at = self.resync.as_ref().and_then(|r| r.server_started_at);
        self.clear();
        self.resync = Some(Box::new(Resync { server_started_at, ..Resync::default() }));
        dropped
    }

    /// Data on a connection being resynchronised (see [`Resync`]).
    pub(super) fn resync_data(
        &mut self,
        side: Side,
        data: Bytes,
        ts: u64,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
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
    pub(super) fn resync_server(
        &mut self,
        data: Bytes,
        ts: u64,
        cfg: &HttpConfig,
        stats: &mut AssemblyDrops,
        out: &mut Vec<Assembled>,
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
            stats.mid_stream_resync_failed += self.restart_resync();
            for (chunk, chunk_ts) in held {
                self.resync_data(Side::Server, chunk, chunk_ts, cfg, stats, out);
            }
        }
    }

    /// When the request after the first pending one started: framed already, or its head in
    /// progress.
    pub(super) fn next_request_start(&self) -> Option<u64> {
        match self.pending.get(1) {
            Some(next) => Some(next.request_first_ns),
            None if self.requests.started && self.requests.phase == Phase::Head => {
                Some(self.requests.first_ts)
            }
            None => None,
        }
    }
}
