//! Finding a frame boundary in a direction first seen mid-connection.
//!
//! Nothing marks where an HTTP/2 frame starts; what the wire does offer is that senders usually write
//! a frame (or several) per TCP segment, so a chunk start is often a frame start. Every chunk start is
//! therefore a candidate. From a candidate, the chain of frame headers is followed across the
//! retained chunks (each header's length says where the next one is), and the candidate is accepted
//! once **three consecutive headers** are plausible, which also proves that the first two frames line
//! up exactly. A header is plausible when:
//!
//! - its length is at most the frame size limit (16384 unless a larger one was set);
//! - its type is one of the ten of RFC 9113 (0–9) and it sets only the flags defined for that type;
//! - the reserved bit is clear;
//! - it obeys the rules the reader itself enforces: stream 0 or not as the type requires, the fixed
//!   lengths (PRIORITY 5, RST_STREAM 4, PING 8, WINDOW_UPDATE 4, SETTINGS a multiple of 6 and empty
//!   when ACK, GOAWAY at least 8), a pad length that fits (the pad length byte is read too);
//! - header blocks are consistent: after HEADERS or PUSH_PROMISE without END_HEADERS only a
//!   CONTINUATION of the same stream, and a CONTINUATION without an open block only as the chain's
//!   first frame (its block started before the capture: reported as lost).
//!
//! A chain that needs bytes not yet received waits; the earliest candidate wins, and a later one is
//! taken only once every earlier one was rejected (or dropped by the bounds), so a candidate inside a
//! large frame that starts at an earlier, still undecided candidate cannot win early. Accepting a
//! chunk whose third header starts the next chunk is the same rule: the chain runs across chunks.
//!
//! What this guarantees: for uniformly random bytes one header passes with a probability of about
//! 4·10⁻⁷ (length ≤ 16384: 2⁻¹⁰; then type and flags: about 4·10⁻⁴ summed over the types, the
//! fixed-length and stream-0 types contributing almost nothing), so three in a row at the offsets
//! their own lengths dictate is far below 10⁻¹⁸ per candidate. Payload bytes are not random, and a
//! payload that itself embeds HTTP/2 frames (a tunnelled connection, a capture file) can fool any
//! framing heuristic; that is why the layer above checks again (HPACK decoding, pseudo-headers).
//!
//! Bounds: at most `Limits::max_sync_buffer` bytes and `Limits::max_sync_candidates` candidates are
//! retained; the oldest go first. Chunks are kept as they came (zero-copy), and once a boundary is
//! found they are replayed through the normal reader, so events and timestamps are exactly those a
//! reader started at that boundary would give. A gap discards every candidate.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use bytes::Bytes;

use super::{
    DesyncReason, END_HEADERS, END_STREAM, FRAME_HEADER_LEN, FrameHeader, FrameKind, Limits, check_header,
    check_order, check_padding,
};

/// How many consecutive plausible frame headers accept a candidate (one of them after the sync point).
const CHAIN_TO_ACCEPT: u32 = 4;

/// A frame boundary found: received bytes skipped before it, and the chunks from it on.
#[derive(Debug)]
pub(super) struct Found {
    pub(super) skipped: u64,
    pub(super) chunks: Vec<(Bytes, u64)>,
}

/// A retained chunk and its offset in the direction (counted from the reader's first chunk).
#[derive(Debug)]
struct Chunk {
    data: Bytes,
    ts: u64,
    start: u64,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Rejected,
    Accepted,
}

/// A chunk start being tried as a frame boundary, and how far its chain got.
#[derive(Debug)]
struct Candidate {
    start: u64,
    /// Offset of the next frame header of the chain.
    next: u64,
    /// Plausible headers so far.
    frames: u32,
    /// The first header after the first one that lies exactly at a chunk start, and its index in
    /// the chain: the sync point if the candidate is accepted.
    sync_at: Option<(u64, u32)>,
    /// The stream whose header block the chain has open.
    open_block: Option<u32>,
    status: Status,
    /// Offset the retained bytes must reach before the chain can go on.
    need: u64,
}

/// The state of a reader that has not found a boundary yet.
#[derive(Debug)]
pub(super) struct Syncer {
    chunks: VecDeque<Chunk>,
    /// Offset just past the last retained byte.
    end: u64,
    retained: usize,
    /// Candidates in offset order; `first_seq` is the sequence number of the front one.
    candidates: VecDeque<Candidate>,
    first_seq: u64,
    /// Pending candidates by the offset they wait for (entries of dropped candidates are stale).
    waiting: BinaryHeap<Reverse<(u64, u64)>>,
    /// Received bytes discarded so far.
    skipped: u64,
}

impl Syncer {
    pub(super) fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            end: 0,
            retained: 0,
            candidates: VecDeque::new(),
            first_seq: 0,
            waiting: BinaryHeap::new(),
            skipped: 0,
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.retained
    }

    /// Bytes will never be seen: no retained candidate can be followed across them.
    pub(super) fn gap(&mut self) {
        self.skipped = self.skipped.saturating_add(self.retained as u64);
        self.chunks.clear();
        self.retained = 0;
        self.first_seq += self.candidates.len() as u64;
        self.candidates.clear();
        self.waiting.clear();
    }

    /// Takes a chunk; returns the boundary once one is accepted.
    pub(super) fn push(
        &mut self,
        data: Bytes,
        ts: u64,
        max_frame_size: u32,
        limits: &Limits,
    ) -> Option<Found> {
        let start = self.end;
        self.end += data.len() as u64;
        self.retained += data.len();
        self.chunks.push_back(Chunk { data, ts, start });
        if self.candidates.len() >= limits.max_sync_candidates.max(1) {
            self.drop_oldest_candidate();
        }
        let seq = self.first_seq + self.candidates.len() as u64;
        let need = start + FRAME_HEADER_LEN as u64;
        self.candidates.push_back(Candidate {
            start,
            next: start,
            frames: 0,
            sync_at: None,
            open_block: None,
            status: Status::Pending,
            need,
        });
        self.waiting.push(Reverse((need, seq)));
        self.follow_chains(max_frame_size);
        self.decide(limits)
    }

    /// Moves every chain whose next bytes have arrived.
    fn follow_chains(&mut self, max_frame_size: u32) {
        while let Some(&Reverse((need, seq))) = self.waiting.peek() {
            if need > self.end {
                break;
            }
            self.waiting.pop();
            let Some(index) = seq.checked_sub(self.first_seq).and_then(|i| usize::try_from(i).ok()) else {
                continue;
            };
            let Some(candidate) = self.candidates.get_mut(index) else { continue };
            if candidate.status != Status::Pending || candidate.need != need {
                continue;
            }
            follow(&self.chunks, candidate, max_frame_size);
            if candidate.status == Status::Pending {
                self.waiting.push(Reverse((candidate.need, seq)));
            }
        }
        // Stale entries of dropped candidates: rebuild once they dominate.
        if self.waiting.len() > 2 * self.candidates.len() + 16 {
            let first_seq = self.first_seq;
            self.waiting = self
                .candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.status == Status::Pending)
                .map(|(i, c)| Reverse((c.need, first_seq + i as u64)))
                .collect();
        }
    }

    /// Accepts the earliest candidate once nothing earlier is undecided; enforces the bounds.
    fn decide(&mut self, limits: &Limits) -> Option<Found> {
        loop {
            while self.candidates.front().is_some_and(|c| c.status == Status::Rejected) {
                self.candidates.pop_front();
                self.first_seq += 1;
            }
            if let Some((at, _)) =
                self.candidates.front().filter(|c| c.status == Status::Accepted).and_then(|c| c.sync_at)
            {
                return Some(self.take_from(at));
            }
            let keep_from = self.candidates.front().map_or(self.end, |c| c.start);
            while self.chunks.front().is_some_and(|c| c.end() <= keep_from) {
                self.drop_oldest_chunk();
            }
            if self.retained <= limits.max_sync_buffer {
                return None;
            }
            self.drop_oldest_candidate();
        }
    }

    fn drop_oldest_candidate(&mut self) {
        if self.candidates.pop_front().is_some() {
            self.first_seq += 1;
        }
    }

    fn drop_oldest_chunk(&mut self) {
        if let Some(chunk) = self.chunks.pop_front() {
            self.retained -= chunk.data.len();
            self.skipped = self.skipped.saturating_add(chunk.data.len() as u64);
        }
    }

    /// Hands over the chunks from `start` (a chunk start) on; the rest counts as skipped.
    fn take_from(&mut self, start: u64) -> Found {
        while self.chunks.front().is_some_and(|c| c.start < start) {
            self.drop_oldest_chunk();
        }
        let chunks = self.chunks.drain(..).map(|c| (c.data, c.ts)).collect();
        self.retained = 0;
        self.candidates.clear();
        self.waiting.clear();
        Found { skipped: self.skipped, chunks }
    }
}

/// Follows a candidate's chain as far as the retained bytes allow.
fn follow(chunks: &VecDeque<Chunk>, candidate: &mut Candidate, max_frame_size: u32) {
    loop {
        let mut raw = [0u8; FRAME_HEADER_LEN];
        if !read_at(chunks, candidate.next, &mut raw) {
            candidate.need = candidate.next + FRAME_HEADER_LEN as u64;
            return;
        }
        let head = FrameHeader::parse(&raw);
        let pad = if head.padded() && head.len > 0 {
            let mut byte = [0u8; 1];
            let at = candidate.next + FRAME_HEADER_LEN as u64;
            if !read_at(chunks, at, &mut byte) {
                candidate.need = at + 1;
                return;
            }
            Some(byte[0])
        } else {
            None
        };
        match plausible(&head, pad, max_frame_size, candidate.open_block, candidate.frames == 0) {
            Some(open_block) => {
                candidate.open_block = open_block;
                if candidate.frames > 0
                    && candidate.sync_at.is_none()
                    && is_sync_point(chunks, candidate.next)
                {
                    candidate.sync_at = Some((candidate.next, candidate.frames));
                }
                candidate.frames = candidate.frames.saturating_add(1);
            }
            None => {
                candidate.status = Status::Rejected;
                return;
            }
        }
        // Accepted with at least three headers, one of them after the sync point.
        if let Some((_, index)) = candidate.sync_at
            && candidate.frames >= CHAIN_TO_ACCEPT.max(index.saturating_add(2))
        {
            candidate.status = Status::Accepted;
            return;
        }
        candidate.next += FRAME_HEADER_LEN as u64 + u64::from(head.len);
    }
}

/// Whether a frame header (and its pad length byte, when it has one) looks written by a real sender
/// where the chain expects it; gives the header block left open after it.
fn plausible(
    head: &FrameHeader,
    pad: Option<u8>,
    max_frame_size: u32,
    open_block: Option<u32>,
    first: bool,
) -> Option<Option<u32>> {
    if head.reserved
        || matches!(head.kind, FrameKind::Unknown(_))
        || head.flags & !head.kind.defined_flags() != 0
    {
        return None;
    }
    check_header(head, max_frame_size).ok()?;
    if let Some(pad) = pad {
        check_padding(head, pad).ok()?;
    }
    // Legal, but not what real senders write: refused as evidence (the reader accepts them once
    // synced). Server push (PUSH_PROMISE, even streams) is unused by gRPC and disabled by browsers;
    // empty DATA without END_STREAM carries nothing; a header block fragment is never empty.
    if head.kind == FrameKind::PushPromise {
        return None;
    }
    let carries_content = matches!(
        head.kind,
        FrameKind::Data | FrameKind::Headers | FrameKind::PushPromise | FrameKind::Continuation
    );
    if carries_content {
        let overhead = u32::from(head.padded()) + u32::from(head.fixed_len()) + pad.map_or(0, u32::from);
        let empty = head.len <= overhead;
        if head.stream.is_multiple_of(2) || (empty && !(head.kind == FrameKind::Data && head.has(END_STREAM)))
        {
            return None;
        }
    }
    match check_order(head, open_block) {
        Ok(()) | Err(DesyncReason::UnexpectedContinuation { .. }) if first => {}
        Ok(()) => {}
        Err(_) => return None,
    }
    let opens = matches!(head.kind, FrameKind::Headers | FrameKind::PushPromise | FrameKind::Continuation)
        && !head.has(END_HEADERS);
    Some(opens.then_some(head.stream))
}

/// Whether a retained chunk starts exactly at `offset` after a chunk of at least a frame header's
/// length: where segments are tiny, their boundaries prove nothing.
fn is_sync_point(chunks: &VecDeque<Chunk>, offset: u64) -> bool {
    match chunks.binary_search_by(|c| c.start.cmp(&offset)) {
        Ok(index) => index
            .checked_sub(1)
            .and_then(|before| chunks.get(before))
            .is_some_and(|before| before.data.len() >= FRAME_HEADER_LEN),
        Err(_) => false,
    }
}

/// Copies the retained bytes at `offset..offset + buf.len()` into `buf`; false if any is missing.
fn read_at(chunks: &VecDeque<Chunk>, offset: u64, buf: &mut [u8]) -> bool {
    let first = chunks.partition_point(|c| c.end() <= offset);
    let mut at = offset;
    let mut filled = 0usize;
    for chunk in chunks.range(first..) {
        if filled == buf.len() {
            break;
        }
        let Some(from) = at.checked_sub(chunk.start).and_then(|d| usize::try_from(d).ok()) else {
            return false;
        };
        let src = chunk.data.get(from..).unwrap_or_default();
        let n = src.len().min(buf.len() - filled);
        let (Some(dst), Some(src)) = (buf.get_mut(filled..filled + n), src.get(..n)) else { return false };
        dst.copy_from_slice(src);
        filled += n;
        at += n as u64;
    }
    filled == buf.len()
}
