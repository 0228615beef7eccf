//! TCP reassembly: captured segments become one ordered byte stream per direction and connection.
//!
//! The HTTP layer needs exact bytes in order, and must learn about every byte it will never see:
//! a guessed byte could turn into a wrong comparison. So this layer
//!
//! - keys connections by their 4-tuple, oriented client → server by the configured server ports;
//! - works in 64-bit stream offsets (relative to the first byte), so sequence wrap-around is a
//!   non-event;
//! - keeps out-of-order data in a bounded buffer, and lets the first-seen copy of a byte win over
//!   retransmissions and overlaps, so no byte is ever delivered twice;
//! - reports every missing range as an explicit [`FlowEvent::Gap`]: a `lost` range from the kernel,
//!   or a hole that a buffer limit or the idle timeout forces it to skip;
//! - marks a stream first seen without its SYN (the daemon started mid-connection) so that the
//!   layer above can refuse to guess where messages start;
//! - treats a new SYN on a closed (or differently numbered) 4-tuple as a new connection.
//!
//! Time only comes from segments and from the `now_ns` given to [`FlowTable::tick`].
//!
//! Eviction (a full table) and the idle sweep cost O(1) per connection they touch, whatever the
//! table's size: [`order`] keeps the connections by last activity, so a burst of new connections
//! against a full table (a port scan, refused connects) does not scan the table per connection.
mod order;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
};

use bytes::Bytes;

use self::order::{Order, Queue, Slot};
use mirror_common::tcp_flags;

use crate::{capture::Segment, drops::AssemblyDrops};

/// Identifies one connection for its whole life; a reused 4-tuple gets a new id.
pub type ConnId = u64;

/// Bookkeeping cost charged per buffered out-of-order range, so that many tiny segments hit the
/// byte limits too.
const PIECE_OVERHEAD: usize = 64;

/// Bounds of the reassembly state. Hitting one is counted, never blocks.
#[derive(Clone, Debug)]
pub struct FlowLimits {
    /// Connections tracked at most; the least recently active is evicted first.
    pub max_connections: usize,
    /// Out-of-order bytes buffered per connection (both directions) before holes are skipped.
    pub max_buffered_per_conn: usize,
    /// Out-of-order bytes buffered across all connections.
    pub max_buffered_total: usize,
    /// A connection without a segment for this long is expired by [`FlowTable::tick`].
    pub idle_timeout_ns: u64,
    /// Segments further than this ahead of the next expected byte are ignored.
    pub max_ahead_bytes: u64,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_buffered_per_conn: 4 << 20,
            max_buffered_total: 256 << 20,
            idle_timeout_ns: 120_000_000_000,
            max_ahead_bytes: 1 << 30,
        }
    }
}

/// What to track: segments to or from one of `server_ports` belong to a connection whose server
/// side is that port.
#[derive(Clone, Debug, Default)]
pub struct FlowConfig {
    pub server_ports: Vec<u16>,
    pub limits: FlowLimits,
}

/// Which endpoint sent the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The client (requests).
    Client,
    /// The server (responses).
    Server,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

/// A connection's endpoints, oriented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides sent FIN and all their bytes were delivered.
    Finished,
    /// A RST was seen.
    Reset,
    /// No segment for the idle timeout.
    IdleTimeout,
    /// Evicted because the connection table was full.
    Evicted,
    /// A new SYN reused the 4-tuple.
    Reused,
    /// The daemon stopped while the connection was open.
    Shutdown,
    /// The kernel stopped capturing it (overload shedding, `capture::shed`).
    Shed,
}

/// How far an exchange had come when its connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfinished {
    /// The request was not complete.
    Request,
    /// The request was complete and nothing of the response came.
    Unanswered,
    /// The response had started.
    Response,
}

impl CloseReason {
    /// Counts one exchange left unfinished by the end of its connection: after a clean end, what
    /// was missing; otherwise, how the connection ended.
    pub fn count_unfinished(self, unfinished: Unfinished, drops: &mut AssemblyDrops) {
        let counter = match (self, unfinished) {
            (CloseReason::Finished, Unfinished::Request) => &mut drops.truncated_request,
            (CloseReason::Finished, Unfinished::Unanswered) => &mut drops.unanswered_request,
            (CloseReason::Finished, Unfinished::Response) => &mut drops.truncated_response,
            (CloseReason::Reset, _) => &mut drops.reset_with_pending,
            (CloseReason::IdleTimeout, _) => &mut drops.idle_timeout_with_pending,
            (CloseReason::Evicted | CloseReason::Reused, _) => &mut drops.evicted_with_pending,
            (CloseReason::Shutdown, _) => &mut drops.open_at_exit,
            (CloseReason::Shed, _) => &mut drops.shed_with_pending,
        };
        *counter += 1;
    }
}

/// Reassembled stream events, in stream order per side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    /// A new connection; always the first event of `id`.
    Opened { id: ConnId, key: ConnKey },
    /// A side's stream starts; `mid_stream` when its SYN was not seen, so its first byte is not
    /// known to be the start of anything. `seq` is the sequence number of its first byte (offset 0).
    StreamStart { id: ConnId, side: Side, mid_stream: bool, seq: u32 },
    /// The next bytes of a side's stream, carried by a segment seen at `ts_ns` whose
    /// acknowledgement number was `ack` (when its ACK flag was set): every byte of the other
    /// side's stream before it had reached this side when the segment was sent.
    Data { id: ConnId, side: Side, data: Bytes, ts_ns: u64, ack: Option<u32> },
    /// The next `len` bytes of a side's stream are missing and will never be delivered.
    Gap { id: ConnId, side: Side, len: u64 },
    /// The side sent FIN and every byte before it was delivered (as data or gaps).
    Fin { id: ConnId, side: Side, ts_ns: u64 },
    /// The connection ended; always its last event.
    Closed { id: ConnId, reason: CloseReason },
}

impl FlowEvent {
    /// The connection the event belongs to.
    pub fn id(&self) -> ConnId {
        match self {
            FlowEvent::Opened { id, .. }
            | FlowEvent::StreamStart { id, .. }
            | FlowEvent::Data { id, .. }
            | FlowEvent::Gap { id, .. }
            | FlowEvent::Fin { id, .. }
            | FlowEvent::Closed { id, .. } => *id,
        }
    }
}

/// An out-of-order range: `len` captured bytes (`data` holds them all), or `len` bytes the kernel
/// reported lost (`data` is `None`), with the segment's acknowledgement (see [`FlowEvent::Data`]).
#[derive(Clone, Debug)]
struct Piece {
    len: u64,
    data: Option<Bytes>,
    ts_ns: u64,
    ack: Option<u32>,
}

impl Piece {
    fn cost(&self) -> usize {
        self.data.as_ref().map_or(0, Bytes::len) + PIECE_OVERHEAD
    }

    /// The part of the piece starting `skip` bytes in.
    fn tail(&self, skip: u64) -> Piece {
        Piece {
            len: self.len - skip,
            data: self.data.as_ref().map(|d| d.slice(skip as usize..)),
            ts_ns: self.ts_ns,
            ack: self.ack,
        }
    }

    /// The first `len` bytes of the piece.
    fn head(&self, len: u64) -> Piece {
        Piece {
            len,
            data: self.data.as_ref().map(|d| d.slice(..len as usize)),
            ts_ns: self.ts_ns,
            ack: self.ack,
        }
    }
}

#[derive(Debug, Default)]
struct Stream {
    started: bool,
    /// Sequence number of stream offset 0.
    base_seq: u32,
    /// ISN when the SYN was seen.
    isn: Option<u32>,
    /// Offset of the next byte to deliver.
    next: u64,
    /// Out-of-order pieces by start offset; they never overlap each other.
    pending: BTreeMap<u64, Piece>,
    buffered: usize,
    fin_at: Option<u64>,
    fin_ts: u64,
    finished: bool,
}

impl Stream {
    /// Stream offset of sequence number `seq`, if it lies in the window around `next`.
    fn offset_of(&self, seq: u32) -> Option<u64> {
        let next_seq = self.base_seq.wrapping_add(self.next as u32);
        let delta = seq.wrapping_sub(next_seq) as i32 as i64;
        let off = self.next as i64 + delta;
        (off >= 0).then_some(off as u64)
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    /// Its place in the eviction and expiry order.
    slot: Slot,
    streams: [Stream; 2],
    last_ts: u64,
    /// Closed (FIN both ways or RST): kept until idle so that late retransmissions are not taken
    /// for a new mid-stream connection.
    closed: bool,
}

impl Conn {
    fn buffered(&self) -> usize {
        self.streams[0].buffered + self.streams[1].buffered
    }
}

/// All tracked connections.
#[derive(Debug)]
pub struct FlowTable {
    server_ports: HashSet<u16>,
    limits: FlowLimits,
    conns: HashMap<ConnKey, Conn>,
    /// Open connections by last activity, closed ones by closing time.
    order: Order,
    next_id: ConnId,
    /// Added to `next_id` per new connection: tables of sharded assemblers number their
    /// connections apart ([`FlowTable::number_ids`]).
    id_step: ConnId,
    buffered: usize,
}

impl FlowTable {
    pub fn new(config: FlowConfig) -> Self {
        Self {
            server_ports: config.server_ports.into_iter().collect(),
            limits: config.limits,
            conns: HashMap::new(),
            order: Order::new(),
            next_id: 1,
            id_step: 1,
            buffered: 0,
        }
    }

    /// Numbers new connections `first`, `first + step`, `first + 2 * step`...: shard `i` of `n`
    /// takes `(i + 1, n)`, so ids stay unique across the shards' tables.
    pub fn number_ids(&mut self, first: ConnId, step: ConnId) {
        self.next_id = first.max(1);
        self.id_step = step.max(1);
    }

    /// Connections tracked, closed ones awaiting expiry included.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Out-of-order bytes buffered across all connections (with per-range overhead).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Adds one segment; the stream events it makes possible are appended to `out`. Its payload
    /// becomes the stream's bytes as it is (taken, not cloned: no reference count to touch).
    pub fn push(&mut self, mut seg: Segment, out: &mut Vec<FlowEvent>, stats: &mut AssemblyDrops) {
        let (key, side) = if self.server_ports.contains(&seg.dst.port()) {
            (ConnKey { client: seg.src, server: seg.dst }, Side::Client)
        } else if self.server_ports.contains(&seg.src.port()) {
            (ConnKey { client: seg.dst, server: seg.src }, Side::Server)
        } else {
            stats.not_server_port_segments += 1;
            return;
        };

        if let Some(conn) = self.conns.get(&key) {
            let stream = &conn.streams[side.index()];
            // A client SYN with a new ISN, or any SYN on a closed connection, starts over.
            let reused = seg.is_syn()
                && (conn.closed || (side == Side::Client && stream.isn.is_some_and(|isn| isn != seg.seq)));
            if reused {
                let reason = if conn.closed { CloseReason::Finished } else { CloseReason::Reused };
                self.remove(&key, reason, out);
            } else if conn.closed {
                return;
            }
        }
        if !self.conns.contains_key(&key) {
            if seg.is_rst() {
                return;
            }
            self.make_room(out, stats);
            let id = self.next_id;
            self.next_id += self.id_step;
            let slot = self.order.push(key, Queue::Open);
            let conn = Conn { id, slot, streams: Default::default(), last_ts: seg.ts_ns, closed: false };
            self.conns.insert(key, conn);
            out.push(FlowEvent::Opened { id, key });
        }
        let Some(conn) = self.conns.get_mut(&key) else { return };
        conn.last_ts = conn.last_ts.max(seg.ts_ns);
        let id = conn.id;

        if seg.is_rst() {
            out.push(FlowEvent::Closed { id, reason: CloseReason::Reset });
            self.buffered -= conn.buffered();
            conn.streams = Default::default();
            conn.closed = true;
            self.order.move_back(conn.slot, Queue::Closed);
            return;
        }
        self.order.move_back(conn.slot, Queue::Open);

        let ack = (seg.flags & tcp_flags::ACK != 0).then_some(seg.ack);
        let stream = &mut conn.streams[side.index()];
        if !stream.started {
            stream.started = true;
            if seg.is_syn() {
                stream.isn = Some(seg.seq);
                stream.base_seq = seg.seq.wrapping_add(1);
            } else {
                stream.base_seq = seg.range_seq();
            }
            out.push(FlowEvent::StreamStart { id, side, mid_stream: !seg.is_syn(), seq: stream.base_seq });
        }
        if stream.finished {
            return;
        }

        if seg.is_fin() && stream.fin_at.is_none() {
            let fin_seq = seg.seq.wrapping_add(seg.segment_len);
            if let Some(at) = stream.offset_of(fin_seq) {
                stream.fin_at = Some(at);
                stream.fin_ts = seg.ts_ns;
            }
        }

        // Payload of a SYN (TCP Fast Open) is not handled: the request would start before ISN+1.
        if seg.range_len() > 0 && !seg.is_syn() {
            match stream.offset_of(seg.range_seq()) {
                Some(start) if start.saturating_sub(stream.next) <= self.limits.max_ahead_bytes => {
                    // A range is its captured bytes, then the bytes that were not captured: two
                    // pieces, since a piece is either all bytes or all gap.
                    let captured = seg.payload.len() as u64;
                    let before = stream.buffered;
                    if captured > 0 {
                        let piece = Piece {
                            len: captured,
                            data: Some(std::mem::take(&mut seg.payload)),
                            ts_ns: seg.ts_ns,
                            ack,
                        };
                        insert(stream, start, piece, id, side, out);
                    }
                    if seg.lost > 0 {
                        let piece = Piece { len: u64::from(seg.lost), data: None, ts_ns: seg.ts_ns, ack };
                        insert(stream, start + captured, piece, id, side, out);
                    }
                    self.buffered = self.buffered + stream.buffered - before;
                }
                // Entirely before the stream start or absurdly far ahead: not this stream's bytes.
                _ => stats.out_of_window_segments += 1,
            }
        }

        // Bounds: skip holes (as gaps) until this connection, then the whole table, fit.
        let other = conn.streams[1 - side.index()].buffered;
        let stream = &mut conn.streams[side.index()];
        while stream.buffered + other > self.limits.max_buffered_per_conn && !stream.pending.is_empty() {
            stats.out_of_order_overflow_events += 1;
            let before = stream.buffered;
            skip_hole(stream, id, side, out);
            self.buffered -= before - stream.buffered;
        }
        while self.buffered > self.limits.max_buffered_total && !stream.pending.is_empty() {
            stats.memory_limit_events += 1;
            let before = stream.buffered;
            skip_hole(stream, id, side, out);
            self.buffered -= before - stream.buffered;
        }

        self.buffered -= check_fin(stream, id, side, out);
        if conn.streams.iter().all(|s| s.finished) {
            out.push(FlowEvent::Closed { id, reason: CloseReason::Finished });
            conn.closed = true;
            self.order.move_back(conn.slot, Queue::Closed);
        }
    }

    /// Expires idle connections: holes become gaps, pending data is delivered, then `Closed`.
    ///
    /// Walks each queue from its least recently active connection and stops at the first one
    /// still active, so a sweep costs what it expires. The queues are in arrival order while
    /// `last_ts` is the latest segment timestamp, and the two directions come from different
    /// hooks: a connection a few microseconds older than the one that stops the walk is expired
    /// at the next sweep.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<FlowEvent>, stats: &mut AssemblyDrops) {
        let timeout = self.limits.idle_timeout_ns;
        for queue in [Queue::Closed, Queue::Open] {
            while let Some(key) = self.order.front(queue) {
                let Some(conn) = self.conns.get(&key) else { break };
                if now_ns.saturating_sub(conn.last_ts) <= timeout {
                    break;
                }
                if !conn.closed {
                    stats.idle_timeout_connections += 1;
                }
                self.expire(&key, CloseReason::IdleTimeout, out);
            }
        }
    }

    /// Closes every open connection (the daemon is stopping): what they still held is delivered
    /// or reported as gaps, then each one's unfinished exchanges are counted as
    /// [`CloseReason::Shutdown`].
    pub fn close_all(&mut self, out: &mut Vec<FlowEvent>) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.expire(&key, CloseReason::Shutdown, out);
        }
    }

    /// Ends one connection: holes become gaps, what follows them is delivered, then `Closed`.
    fn expire(&mut self, key: &ConnKey, reason: CloseReason, out: &mut Vec<FlowEvent>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if !conn.closed {
            let id = conn.id;
            for side in [Side::Client, Side::Server] {
                let stream = &mut conn.streams[side.index()];
                let before = stream.buffered;
                while !stream.pending.is_empty() {
                    skip_hole(stream, id, side, out);
                }
                self.buffered -= before - stream.buffered;
                self.buffered -= check_fin(stream, id, side, out);
            }
        }
        self.remove(key, reason, out);
    }

    /// Ends every connection `cut` selects (its capture stopped: overload shedding) with
    /// [`CloseReason::Shed`]; returns how many were open.
    pub fn shed_where(&mut self, cut: impl Fn(&ConnKey) -> bool, out: &mut Vec<FlowEvent>) -> u64 {
        let keys: Vec<(ConnKey, bool)> =
            self.conns.iter().filter(|(key, _)| cut(key)).map(|(key, c)| (*key, c.closed)).collect();
        for (key, _) in &keys {
            self.remove(key, CloseReason::Shed, out);
        }
        keys.iter().filter(|(_, closed)| !closed).count() as u64
    }

    fn remove(&mut self, key: &ConnKey, reason: CloseReason, out: &mut Vec<FlowEvent>) {
        if let Some(conn) = self.conns.remove(key) {
            self.order.remove(conn.slot);
            self.buffered -= conn.buffered();
            if !conn.closed {
                out.push(FlowEvent::Closed { id: conn.id, reason });
            }
        }
    }

    /// Evicts one connection if the table is full: the earliest closed one, else the least
    /// recently active.
    fn make_room(&mut self, out: &mut Vec<FlowEvent>, stats: &mut AssemblyDrops) {
        if self.conns.len() < self.limits.max_connections.max(1) {
            return;
        }
        let victim = self.order.front(Queue::Closed).or_else(|| self.order.front(Queue::Open));
        if let Some(key) = victim {
            if self.conns.get(&key).is_some_and(|c| !c.closed) {
                stats.conn_limit_evicted_connections += 1;
            }
            self.remove(&key, CloseReason::Evicted, out);
        }
    }
}

/// Places `piece` at `start`, keeping only bytes not seen before, and delivers what became
/// contiguous.
fn insert(stream: &mut Stream, start: u64, piece: Piece, id: ConnId, side: Side, out: &mut Vec<FlowEvent>) {
    let end = start + piece.len;
    if end <= stream.next {
        return; // Retransmission of delivered bytes.
    }
    let (start, piece) =
        if start < stream.next { (stream.next, piece.tail(stream.next - start)) } else { (start, piece) };
    if stream.pending.is_empty() && start == stream.next {
        // Fast path: in order, nothing buffered.
        deliver(stream, piece, id, side, out);
        return;
    }
    // First seen wins: keep only the parts not covered by buffered pieces.
    let mut cursor = start;
    let mut fresh = Vec::new();
    let before = stream.pending.range(..start).next_back().map(|(&s, p)| s + p.len);
    if let Some(prev_end) = before {
        cursor = cursor.max(prev_end);
    }
    for (&s, p) in stream.pending.range(start..end) {
        if s > cursor {
            fresh.push((cursor, s));
        }
        cursor = cursor.max(s + p.len);
    }
    if cursor < end {
        fresh.push((cursor, end));
    }
    for (s, e) in fresh {
        let part = piece.tail(s - start).head(e - s);
        stream.buffered += part.cost();
        stream.pending.insert(s, part);
    }
    drain(stream, id, side, out);
}

fn deliver(stream: &mut Stream, piece: Piece, id: ConnId, side: Side, out: &mut Vec<FlowEvent>) {
    let mut piece = piece;
    if let Some(fin) = stream.fin_at {
        // Nothing exists after the FIN.
        if stream.next >= fin {
            return;
        }
        if stream.next + piece.len > fin {
            piece = piece.head(fin - stream.next);
        }
    }
    stream.next += piece.len;
    match piece.data {
        Some(data) => out.push(FlowEvent::Data { id, side, data, ts_ns: piece.ts_ns, ack: piece.ack }),
        None => out.push(FlowEvent::Gap { id, side, len: piece.len }),
    }
}

/// Delivers buffered pieces that are now contiguous.
fn drain(stream: &mut Stream, id: ConnId, side: Side, out: &mut Vec<FlowEvent>) {
    while let Some(entry) = stream.pending.first_entry() {
        let s = *entry.key();
        if s > stream.next {
            break;
        }
        let piece = entry.remove();
        stream.buffered -= piece.cost();
        if s + piece.len > stream.next {
            deliver(stream, piece.tail(stream.next - s), id, side, out);
        }
    }
}

/// Gives up on the first hole: reports it as a gap and delivers what follows it.
fn skip_hole(stream: &mut Stream, id: ConnId, side: Side, out: &mut Vec<FlowEvent>) {
    if stream.fin_at.is_some_and(|fin| stream.next >= fin) {
        // Whatever is buffered lies after the FIN: it cannot be stream data.
        stream.pending.clear();
        stream.buffered = 0;
        return;
    }
    if let Some((&s, _)) = stream.pending.first_key_value()
        && s > stream.next
    {
        let len = s - stream.next;
        deliver(stream, Piece { len, data: None, ts_ns: 0, ack: None }, id, side, out);
    }
    drain(stream, id, side, out);
}

/// Emits `Fin` once every byte before the FIN was delivered; returns the buffer bytes freed.
fn check_fin(stream: &mut Stream, id: ConnId, side: Side, out: &mut Vec<FlowEvent>) -> usize {
    if stream.finished || stream.fin_at.is_none_or(|f| stream.next < f) {
        return 0;
    }
    stream.finished = true;
    stream.pending.clear();
    out.push(FlowEvent::Fin { id, side, ts_ns: stream.fin_ts });
    std::mem::take(&mut stream.buffered)
}

#[cfg(test)]
mod tests;
