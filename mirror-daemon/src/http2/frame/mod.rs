//! HTTP/2 framing (RFC 9113 §4–6) of one direction of a passively observed connection.
//!
//! The mirror never takes part in the connection: it sees each direction as TCP reassembly hands it
//! over, an ordered run of data chunks (each stamped with the kernel time of the segment that carried
//! it), explicit gaps of bytes that will never be seen, and the end. [`FrameReader`] turns that run
//! into [`FrameEvent`]s: DATA payload pieces, joined header blocks, control frames, and — as events of
//! their own — every loss. The layer above decodes HPACK and pairs streams; what it needs from here is
//! that nothing it receives is wrong, and that everything missing is said.
//!
//! Why the reader is shaped this way:
//!
//! - **DATA is streamed, never buffered.** Pieces are zero-copy slices of the input chunks, each with
//!   the timestamp of the chunk that carried it; padding (possibly split across chunks) is cut off.
//!   Buffered bytes are limited to a partial 9-byte frame header, the fixed fields of a control frame,
//!   the parameters of one SETTINGS frame, one header block (bounded by
//!   [`Limits::max_header_block`]) and, before sync, the mid-stream sync buffer
//!   ([`Limits::max_sync_buffer`]).
//! - **A gap inside a frame whose length is known keeps the framing.** The next frame boundary is
//!   still exact, so only the frame's content is lost: [`FrameEvent::DataGap`] for DATA payload bytes,
//!   [`FrameEvent::HeaderBlockLost`] at the end of a header block that was hit (the HPACK decoder of
//!   this direction must then forget its table), [`FrameEvent::ControlLost`] for a control frame
//!   whose values were hit. Bytes that carry nothing reported (padding, PRIORITY fields of HEADERS,
//!   PING payloads, GOAWAY debug data) can be lost without any event. When a gap covers the pad
//!   length byte of a padded DATA frame, which of the remaining bytes are payload and which are
//!   padding is unknown: the whole rest of the frame is reported as one `DataGap`, whose `len` is then
//!   an upper bound of the payload bytes lost.
//! - **Anything that makes the next boundary unprovable ends the reader** with one
//!   [`FrameEvent::Desync`]: a gap in a frame header, between frames or running past the end of the
//!   current frame, a frame over the size limit, a bad preface, or a violation of the RFC 9113 §6
//!   rules that fix a frame's length, stream or order (padding longer than the payload, fixed-size
//!   frames of another size, connection frames on a stream and stream frames on stream 0, anything but
//!   a CONTINUATION of the same stream inside a header block). Unknown frame types and unused flags
//!   are ignored, as RFC 9113 §4.1 and §5.5 require.
//! - **A direction first seen mid-connection** has no known boundary; [`FrameReader::mid_stream`]
//!   looks for one with the heuristic described in the `sync` module: it accepts a chunk start only
//!   when at least three consecutive frame headers from there are plausible and line up exactly.
//!   Random bytes pass one header check with a probability of roughly 10⁻⁶, so a false sync needs
//!   several unrelated byte runs to look like one consistent frame chain; the layer above adds its
//!   own checks (HPACK decoding, pseudo-headers), and a wrong exchange would need all of them fooled.
//!
//! Timestamps: a DATA piece carries the timestamp of the chunk it was sliced from; frame-level events
//! (`Headers`, `RstStream`, the final empty `Data` piece) carry the timestamp of the chunk holding the
//! frame's last byte, or of the last chunk seen when a gap ended the frame.
use std::fmt;

use bytes::{Bytes, BytesMut};

mod sync;
#[cfg(test)]
mod tests;

use self::sync::Syncer;

/// The client connection preface (RFC 9113 §3.4) that starts the client direction.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// SETTINGS_MAX_FRAME_SIZE before any SETTINGS frame, and its smallest legal value.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest legal SETTINGS_MAX_FRAME_SIZE (2^24 - 1).
pub const MAX_FRAME_SIZE_CEILING: u32 = (1 << 24) - 1;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 9;

const END_STREAM: u8 = 0x01;
const ACK: u8 = 0x01;
const END_HEADERS: u8 = 0x04;
const PADDED: u8 = 0x08;
const PRIORITY: u8 = 0x20;
const STREAM_MASK: u32 = 0x7fff_ffff;

/// An HTTP/2 frame type (RFC 9113 §6), with extension types kept by their code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    /// A type this reader does not know (an extension): skipped.
    Unknown(u8),
}

impl FrameKind {
    /// The frame type for a type code.
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Self::Data,
            1 => Self::Headers,
            2 => Self::Priority,
            3 => Self::RstStream,
            4 => Self::Settings,
            5 => Self::PushPromise,
            6 => Self::Ping,
            7 => Self::GoAway,
            8 => Self::WindowUpdate,
            9 => Self::Continuation,
            other => Self::Unknown(other),
        }
    }

    /// The type code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::Headers => 1,
            Self::Priority => 2,
            Self::RstStream => 3,
            Self::Settings => 4,
            Self::PushPromise => 5,
            Self::Ping => 6,
            Self::GoAway => 7,
            Self::WindowUpdate => 8,
            Self::Continuation => 9,
            Self::Unknown(code) => code,
        }
    }

    /// The flags RFC 9113 defines for this type (all others are unused and ignored).
    fn defined_flags(self) -> u8 {
        match self {
            Self::Data => END_STREAM | PADDED,
            Self::Headers => END_STREAM | END_HEADERS | PADDED | PRIORITY,
            Self::Settings | Self::Ping => ACK,
            Self::PushPromise => END_HEADERS | PADDED,
            Self::Continuation => END_HEADERS,
            Self::Priority | Self::RstStream | Self::GoAway | Self::WindowUpdate | Self::Unknown(_) => 0,
        }
    }

    /// Whether the PADDED flag gives this type a pad length byte.
    fn can_be_padded(self) -> bool {
        matches!(self, Self::Data | Self::Headers | Self::PushPromise)
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Data => "DATA",
            Self::Headers => "HEADERS",
            Self::Priority => "PRIORITY",
            Self::RstStream => "RST_STREAM",
            Self::Settings => "SETTINGS",
            Self::PushPromise => "PUSH_PROMISE",
            Self::Ping => "PING",
            Self::GoAway => "GOAWAY",
            Self::WindowUpdate => "WINDOW_UPDATE",
            Self::Continuation => "CONTINUATION",
            Self::Unknown(code) => return write!(f, "frame type {code:#04x}"),
        };
        f.write_str(name)
    }
}

/// Why a reader lost the framing of its direction for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DesyncReason {
    #[error("the client direction does not start with the HTTP/2 connection preface")]
    BadPreface,
    #[error("bytes missing in the connection preface, a frame header or between frames")]
    GapOutsidePayload,
    #[error("bytes missing past the end of a {kind} frame's payload")]
    GapPastFrameEnd { kind: FrameKind },
    #[error("a {len}-byte {kind} frame is over the {max}-byte frame size limit")]
    FrameTooLarge { kind: FrameKind, len: u32, max: u32 },
    #[error("a {kind} frame cannot be {len} bytes long")]
    BadLength { kind: FrameKind, len: u32 },
    #[error("a {kind} frame cannot be sent on stream {stream}")]
    BadStream { kind: FrameKind, stream: u32 },
    #[error("a SETTINGS acknowledgement carries a {len}-byte payload")]
    SettingsAckWithPayload { len: u32 },
    #[error("{pad} bytes of padding do not fit in a {kind} frame of {len} bytes")]
    PaddingTooLong { kind: FrameKind, pad: u8, len: u32 },
    #[error("a {got} frame on stream {got_stream} inside the header block of stream {stream}")]
    ExpectedContinuation { stream: u32, got: FrameKind, got_stream: u32 },
    #[error("a CONTINUATION frame on stream {stream} outside any header block")]
    UnexpectedContinuation { stream: u32 },
}

/// What one direction's reader reports, in wire order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameEvent {
    /// A piece of a DATA frame's payload (padding removed), a zero-copy slice of the input, stamped
    /// with the chunk that carried it. `end_stream` is set on the last piece of a frame carrying
    /// END_STREAM; that piece is empty when the frame's last payload bytes came earlier (or there are
    /// none). Frames without END_STREAM and without payload give no event.
    Data {
        stream: u32,
        data: Bytes,
        ts_ns: u64,
        end_stream: bool,
    },
    /// A complete header block: HEADERS and its CONTINUATIONs joined, padding and priority fields
    /// removed, stamped with the chunk that completed it. `end_stream` comes from the HEADERS frame.
    Headers {
        stream: u32,
        block: Bytes,
        end_stream: bool,
        ts_ns: u64,
    },
    /// A complete PUSH_PROMISE header block.
    PushPromise {
        stream: u32,
        promised: u32,
        block: Bytes,
    },
    /// A PRIORITY frame (deprecated by RFC 9113; only counted).
    Priority {
        stream: u32,
    },
    RstStream {
        stream: u32,
        code: u32,
        ts_ns: u64,
    },
    Settings {
        ack: bool,
        params: Vec<(u16, u32)>,
    },
    Ping {
        ack: bool,
    },
    GoAway {
        last_stream: u32,
        code: u32,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    /// A frame of an extension type, skipped (RFC 9113 §4.1: unknown types are ignored).
    Unknown {
        kind: u8,
        stream: u32,
    },
    /// `len` bytes of a DATA frame's payload on `stream` are missing; the framing is intact. When the
    /// pad length byte itself was lost, `len` counts every byte of the frame after it (an upper bound).
    DataGap {
        stream: u32,
        len: u64,
    },
    /// A gap hit a header block (its frames' lengths are known, so the framing survives); reported at
    /// the end of the block. The HPACK decoder of this direction must forget its table. `end_stream`
    /// is as far as known: `false` when the block's HEADERS frame was not seen (mid-stream start).
    HeaderBlockLost {
        stream: u32,
        end_stream: bool,
    },
    /// A header block grew over [`Limits::max_header_block`] (a CONTINUATION flood or a huge block):
    /// its bytes were skipped, the framing is intact, and as for `HeaderBlockLost` HPACK state is lost.
    HeaderBlockTooLarge {
        stream: u32,
        end_stream: bool,
    },
    /// A gap hit the fields of a control frame (PRIORITY, RST_STREAM, SETTINGS, GOAWAY,
    /// WINDOW_UPDATE): its values are unknown, the framing is intact.
    ControlLost {
        kind: FrameKind,
        stream: u32,
    },
    /// Mid-stream only: a frame boundary was found; `skipped` received bytes before it (not counting
    /// gaps) could not be used.
    Synced {
        skipped: u64,
    },
    /// The direction ended inside a frame or a header block; `stream` is that frame's or block's
    /// stream when its header was complete.
    Truncated {
        stream: Option<u32>,
    },
    /// The framing is lost for good: no further events come from this reader.
    Desync {
        reason: DesyncReason,
    },
}

/// Bounds on what a reader buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest joined header block (HEADERS or PUSH_PROMISE plus CONTINUATIONs) kept.
    pub max_header_block: usize,
    /// Most bytes retained while looking for a frame boundary mid-stream.
    pub max_sync_buffer: usize,
    /// Most candidate boundaries (chunk starts) considered at once mid-stream.
    pub max_sync_candidates: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_header_block: 64 << 10, max_sync_buffer: 256 << 10, max_sync_candidates: 4096 }
    }
}

/// A parsed 9-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHeader {
    len: u32,
    kind: FrameKind,
    flags: u8,
    stream: u32,
    /// The reserved bit before the stream id (ignored on receipt, but never set by real senders).
    reserved: bool,
}

impl FrameHeader {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        let raw_stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: FrameKind::from_code(b[3]),
            flags: b[4],
            stream: raw_stream & STREAM_MASK,
            reserved: raw_stream & !STREAM_MASK != 0,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Whether this frame starts with a pad length byte.
    fn padded(&self) -> bool {
        self.kind.can_be_padded() && self.has(PADDED)
    }

    /// Bytes of fixed fields after the pad length byte: priority of HEADERS, promised id of
    /// PUSH_PROMISE, or a control frame's values.
    fn fixed_len(&self) -> u8 {
        match self.kind {
            FrameKind::Headers if self.has(PRIORITY) => 5,
            FrameKind::PushPromise | FrameKind::RstStream | FrameKind::WindowUpdate => 4,
            FrameKind::Priority => 5,
            FrameKind::Settings if self.len > 0 => 6,
            FrameKind::GoAway => 8,
            _ => 0,
        }
    }
}

/// Checks what RFC 9113 §6 fixes about a frame's size and stream, given the header alone.
fn check_header(h: &FrameHeader, max_frame_size: u32) -> Result<(), DesyncReason> {
    use FrameKind as K;
    if h.len > max_frame_size {
        return Err(DesyncReason::FrameTooLarge { kind: h.kind, len: h.len, max: max_frame_size });
    }
    let on_stream = match h.kind {
        K::Data | K::Headers | K::Priority | K::RstStream | K::PushPromise | K::Continuation => Some(true),
        K::Settings | K::Ping | K::GoAway => Some(false),
        K::WindowUpdate | K::Unknown(_) => None,
    };
    if on_stream.is_some_and(|needs_stream| needs_stream != (h.stream != 0)) {
        return Err(DesyncReason::BadStream { kind: h.kind, stream: h.stream });
    }
    let bad_len = match h.kind {
        K::Priority => h.len != 5,
        K::RstStream | K::WindowUpdate => h.len != 4,
        K::Ping => h.len != 8,
        K::GoAway => h.len < 8,
        K::Settings => !h.len.is_multiple_of(6),
        K::Data | K::Headers | K::PushPromise => h.len < u32::from(h.padded()) + u32::from(h.fixed_len()),
        K::Continuation | K::Unknown(_) => false,
    };
    if bad_len {
        return Err(DesyncReason::BadLength { kind: h.kind, len: h.len });
    }
    if h.kind == K::Settings && h.has(ACK) && h.len != 0 {
        return Err(DesyncReason::SettingsAckWithPayload { len: h.len });
    }
    Ok(())
}

/// Checks a pad length against the bytes of the frame that follow the pad length byte.
fn check_padding(h: &FrameHeader, pad: u8) -> Result<(), DesyncReason> {
    let room = h.len.saturating_sub(1).saturating_sub(u32::from(h.fixed_len()));
    if u32::from(pad) > room {
        return Err(DesyncReason::PaddingTooLong { kind: h.kind, pad, len: h.len });
    }
    Ok(())
}

/// Checks that a frame may come where it comes with respect to an open header block.
fn check_order(h: &FrameHeader, open_block: Option<u32>) -> Result<(), DesyncReason> {
    match open_block {
        Some(stream) if h.kind != FrameKind::Continuation || h.stream != stream => {
            Err(DesyncReason::ExpectedContinuation { stream, got: h.kind, got_stream: h.stream })
        }
        None if h.kind == FrameKind::Continuation => {
            Err(DesyncReason::UnexpectedContinuation { stream: h.stream })
        }
        _ => Ok(()),
    }
}

/// Where the reader is in its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Matching the client preface; the number of bytes matched so far.
    Preface(u8),
    /// Between frames or inside a frame header (`head_len` bytes of it buffered).
    Head,
    /// Inside a frame's payload (see `Frame`).
    Payload,
    /// Looking for a frame boundary (see `sync`).
    Sync,
    /// The framing is lost or the direction ended: input is ignored.
    Dead,
}

/// Which part of a frame's payload comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The pad length byte.
    PadLength,
    /// `Frame::fixed_need` bytes of fixed fields gathered in `Frame::fixed`.
    Fixed,
    /// DATA payload or header block fragment, up to the padding.
    Body,
    /// Bytes nobody needs (padding, PING payload, GOAWAY debug data, unknown types, lost frames).
    Rest,
}

/// The frame whose payload is being read.
#[derive(Debug)]
struct Frame {
    head: FrameHeader,
    /// Payload bytes not yet consumed.
    left: u32,
    /// Trailing padding bytes (known once the pad length byte is read; never more than `left`).
    pad: u32,
    step: Step,
    fixed: [u8; 8],
    fixed_have: u8,
    fixed_need: u8,
    /// A gap hit the fixed fields of this control frame.
    lost: bool,
    /// The last DATA piece with END_STREAM was emitted.
    end_sent: bool,
    settings: Vec<(u16, u32)>,
}

impl Frame {
    fn idle() -> Self {
        let head =
            FrameHeader { len: 0, kind: FrameKind::Unknown(0xff), flags: 0, stream: 0, reserved: false };
        Self {
            head,
            left: 0,
            pad: 0,
            step: Step::Rest,
            fixed: [0; 8],
            fixed_have: 0,
            fixed_need: 0,
            lost: false,
            end_sent: false,
            settings: Vec::new(),
        }
    }

    fn start(&mut self, head: FrameHeader) {
        let fixed_need = head.fixed_len();
        let has_body = matches!(
            head.kind,
            FrameKind::Data | FrameKind::Headers | FrameKind::PushPromise | FrameKind::Continuation
        );
        self.step = if head.padded() {
            Step::PadLength
        } else if fixed_need > 0 {
            Step::Fixed
        } else if has_body {
            Step::Body
        } else {
            Step::Rest
        };
        self.head = head;
        self.left = head.len;
        self.pad = 0;
        self.fixed_have = 0;
        self.fixed_need = fixed_need;
        self.lost = false;
        self.end_sent = false;
        self.settings.clear();
    }

    fn fixed_u32(&self, at: usize) -> u32 {
        let b = |i: usize| self.fixed.get(at + i).copied().unwrap_or(0);
        u32::from_be_bytes([b(0), b(1), b(2), b(3)])
    }
}

/// The contents of a header block gathered so far: one zero-copy slice while it fits in one, copied
/// together once it does not.
#[derive(Debug, Default)]
enum BlockBytes {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BlockBytes {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    fn append(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(piece),
            Self::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + piece.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&piece);
                Self::Many(joined)
            }
            Self::Many(mut joined) => {
                joined.extend_from_slice(&piece);
                Self::Many(joined)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(b) => b,
            Self::Many(b) => b.freeze(),
        }
    }
}

/// A header block between its HEADERS/PUSH_PROMISE frame and END_HEADERS.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// `Some` for PUSH_PROMISE: the promised stream id once read.
    promised: Option<Option<u32>>,
    bytes: BlockBytes,
    lost: bool,
    too_large: bool,
}

impl Block {
    fn append(&mut self, piece: Bytes, max: usize) {
        if self.lost || self.too_large {
            return;
        }
        if self.bytes.len().saturating_add(piece.len()) > max {
            self.too_large = true;
            self.bytes = BlockBytes::Empty;
            return;
        }
        self.bytes.append(piece);
    }

    fn into_event(self, ts_ns: u64) -> FrameEvent {
        let Self { stream, end_stream, promised, bytes, lost, too_large } = self;
        if lost {
            return FrameEvent::HeaderBlockLost { stream, end_stream };
        }
        if too_large {
            return FrameEvent::HeaderBlockTooLarge { stream, end_stream };
        }
        match promised {
            None => FrameEvent::Headers { stream, block: bytes.into_bytes(), end_stream, ts_ns },
            Some(Some(promised)) => FrameEvent::PushPromise { stream, promised, block: bytes.into_bytes() },
            Some(None) => FrameEvent::HeaderBlockLost { stream, end_stream },
        }
    }
}

/// Reads the HTTP/2 frames of one direction of a connection (see the module docs).
#[derive(Debug)]
pub struct FrameReader {
    limits: Limits,
    max_frame_size: u32,
    phase: Phase,
    head: [u8; FRAME_HEADER_LEN],
    head_len: u8,
    frame: Frame,
    block: Option<Block>,
    /// The next frame may be a CONTINUATION of a block whose start was not seen (just synced).
    orphan_continuation_ok: bool,
    syncer: Option<Box<Syncer>>,
    last_ts: u64,
}

impl FrameReader {
    fn new(phase: Phase) -> Self {
        Self {
            limits: Limits::default(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            syncer: (phase == Phase::Sync).then(|| Box::new(Syncer::new())),
            phase,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            frame: Frame::idle(),
            block: None,
            orphan_continuation_ok: false,
            last_ts: 0,
        }
    }

    /// The client direction from the connection start: expects the 24-byte preface first (a mismatch
    /// is a `Desync`).
    pub fn client() -> Self {
        Self::new(Phase::Preface(0))
    }

    /// The server direction from the connection start (no preface).
    pub fn server() -> Self {
        Self::new(Phase::Head)
    }

    /// A direction first seen mid-connection: looks for a frame boundary first (module docs).
    pub fn mid_stream() -> Self {
        Self::new(Phase::Sync)
    }

    /// The same reader with other buffering limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Records a SETTINGS_MAX_FRAME_SIZE announced by the endpoint receiving this direction (clamped
    /// to 16384..=2^24-1). Frames over the largest value announced so far are a `Desync`.
    pub fn set_max_frame_size(&mut self, size: u32) {
        let size = size.clamp(DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_CEILING);
        self.max_frame_size = self.max_frame_size.max(size);
    }

    /// The frame size limit in force.
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Whether the reader stopped for good (after `Desync` or `finish`): further input is ignored.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Dead
    }

    /// Bytes buffered: a partial frame header, control frame fields, SETTINGS parameters (6 bytes
    /// each), the header block being joined, and the mid-stream sync buffer.
    pub fn buffered(&self) -> usize {
        let frame = match self.phase {
            Phase::Payload => usize::from(self.frame.fixed_have) + self.frame.settings.len() * 6,
            _ => 0,
        };
        let block = self.block.as_ref().map_or(0, |b| b.bytes.len());
        let sync = self.syncer.as_ref().map_or(0, |s| s.buffered());
        usize::from(self.head_len) + frame + block + sync
    }

    /// Reads the next chunk of the direction, carried by a segment with kernel timestamp `ts_ns`.
    pub fn push(&mut self, data: Bytes, ts_ns: u64, out: &mut Vec<FrameEvent>) {
        if data.is_empty() {
            return;
        }
        match self.phase {
            Phase::Dead => {}
            Phase::Sync => {
                let Some(syncer) = self.syncer.as_mut() else { return };
                if let Some(found) = syncer.push(data, ts_ns, self.max_frame_size, &self.limits) {
                    self.syncer = None;
                    out.push(FrameEvent::Synced { skipped: found.skipped });
                    self.phase = Phase::Head;
                    self.orphan_continuation_ok = true;
                    for (chunk, ts) in found.chunks {
                        self.read(&chunk, ts, out);
                    }
                }
            }
            _ => self.read(&data, ts_ns, out),
        }
    }

    /// Records `len` bytes of the direction that will never be seen.
    pub fn gap(&mut self, len: u64, out: &mut Vec<FrameEvent>) {
        if len == 0 {
            return;
        }
        match self.phase {
            Phase::Dead => {}
            Phase::Sync => {
                if let Some(syncer) = self.syncer.as_mut() {
                    syncer.gap();
                }
            }
            Phase::Preface(_) | Phase::Head => self.desync(DesyncReason::GapOutsidePayload, out),
            Phase::Payload => {
                if len > u64::from(self.frame.left) {
                    let kind = self.frame.head.kind;
                    self.desync(DesyncReason::GapPastFrameEnd { kind }, out);
                } else {
                    // At most `left`, which is at most 2^24 - 1.
                    let len = u32::try_from(len).unwrap_or(u32::MAX);
                    self.lose(len, out);
                }
            }
        }
    }

    /// Ends the direction: reports a frame or header block left incomplete, then stops.
    pub fn finish(&mut self, out: &mut Vec<FrameEvent>) {
        let stream = match self.phase {
            Phase::Payload => Some(Some(self.frame.head.stream)),
            Phase::Head if self.head_len > 0 => Some(None),
            Phase::Head => self.block.as_ref().map(|b| Some(b.stream)),
            Phase::Preface(matched) if matched > 0 => Some(None),
            Phase::Preface(_) | Phase::Sync | Phase::Dead => None,
        };
        if let Some(stream) = stream {
            out.push(FrameEvent::Truncated { stream });
        }
        self.stop();
    }

    fn stop(&mut self) {
        self.phase = Phase::Dead;
        self.head_len = 0;
        self.block = None;
        self.syncer = None;
        self.frame = Frame::idle();
    }

    fn desync(&mut self, reason: DesyncReason, out: &mut Vec<FrameEvent>) {
        out.push(FrameEvent::Desync { reason });
        self.stop();
    }

    /// Reads one chunk with a known frame boundary behind it.
    fn read(&mut self, data: &Bytes, ts: u64, out: &mut Vec<FrameEvent>) {
        self.last_ts = ts;
        let mut pos = 0usize;
        while pos < data.len() {
            let result = match self.phase {
                Phase::Preface(matched) => self.read_preface(matched, data, &mut pos),
                Phase::Head => self.read_head(data, &mut pos, ts, out),
                Phase::Payload => self.read_payload(data, &mut pos, ts, out),
                Phase::Sync | Phase::Dead => return,
            };
            if let Err(reason) = result {
                self.desync(reason, out);
                return;
            }
        }
    }

    fn read_preface(&mut self, matched: u8, data: &[u8], pos: &mut usize) -> Result<(), DesyncReason> {
        let expected = PREFACE.get(usize::from(matched)..).unwrap_or_default();
        let input = data.get(*pos..).unwrap_or_default();
        let n = expected.len().min(input.len());
        if expected.get(..n) != input.get(..n) {
            return Err(DesyncReason::BadPreface);
        }
        *pos += n;
        let matched = usize::from(matched) + n;
        self.phase = if matched == PREFACE.len() { Phase::Head } else { Phase::Preface(matched as u8) };
        Ok(())
    }

    fn read_head(
        &mut self,
        data: &Bytes,
        pos: &mut usize,
        ts: u64,
        out: &mut Vec<FrameEvent>,
    ) -> Result<(), DesyncReason> {
        let have = usize::from(self.head_len);
        let take = (FRAME_HEADER_LEN - have).min(data.len() - *pos);
        let (Some(dst), Some(src)) = (self.head.get_mut(have..have + take), data.get(*pos..*pos + take))
        else {
            return Ok(());
        };
        dst.copy_from_slice(src);
        *pos += take;
        if have + take < FRAME_HEADER_LEN {
            self.head_len = (have + take) as u8;
            return Ok(());
        }
        self.head_len = 0;
        let head = FrameHeader::parse(&self.head);
        self.begin_frame(head)?;
        // Zero-length frames (and frames whose remaining steps need no input) end here.
        self.read_payload(data, pos, ts, out)
    }

    fn begin_frame(&mut self, head: FrameHeader) -> Result<(), DesyncReason> {
        check_header(&head, self.max_frame_size)?;
        let orphan_ok = std::mem::take(&mut self.orphan_continuation_ok);
        let open_block = self.block.as_ref().map(|b| b.stream);
        match check_order(&head, open_block) {
            Err(DesyncReason::UnexpectedContinuation { .. }) if orphan_ok => {
                // The block started before the sync point: its content is unknown.
                self.block = Some(Block {
                    stream: head.stream,
                    end_stream: false,
                    promised: None,
                    bytes: BlockBytes::Empty,
                    lost: true,
                    too_large: false,
                });
            }
            result => result?,
        }
        match head.kind {
            FrameKind::Headers | FrameKind::PushPromise => {
                let push = head.kind == FrameKind::PushPromise;
                self.block = Some(Block {
                    stream: head.stream,
                    end_stream: !push && head.has(END_STREAM),
                    promised: push.then_some(None),
                    bytes: BlockBytes::Empty,
                    lost: false,
                    too_large: false,
                });
            }
            _ => {}
        }
        self.frame.start(head);
        self.phase = Phase::Payload;
        Ok(())
    }

    /// Consumes payload bytes of the current frame from `data[*pos..]`, ending the frame when its
    /// last byte is consumed.
    fn read_payload(
        &mut self,
        data: &Bytes,
        pos: &mut usize,
        ts: u64,
        out: &mut Vec<FrameEvent>,
    ) -> Result<(), DesyncReason> {
        loop {
            let avail = data.len().saturating_sub(*pos);
            let f = &mut self.frame;
            match f.step {
                Step::PadLength => {
                    let Some(&pad) = data.get(*pos) else { return Ok(()) };
                    check_padding(&f.head, pad)?;
                    *pos += 1;
                    f.left -= 1;
                    f.pad = u32::from(pad);
                    f.step = if f.fixed_need > 0 { Step::Fixed } else { Step::Body };
                }
                Step::Fixed => {
                    let have = usize::from(f.fixed_have);
                    let take = (usize::from(f.fixed_need) - have).min(avail);
                    if let (Some(dst), Some(src)) =
                        (f.fixed.get_mut(have..have + take), data.get(*pos..*pos + take))
                    {
                        dst.copy_from_slice(src);
                    }
                    *pos += take;
                    f.left -= take as u32;
                    f.fixed_have += take as u8;
                    if f.fixed_have < f.fixed_need {
                        return Ok(());
                    }
                    self.fixed_done();
                }
                Step::Body => {
                    let body_left = f.left - f.pad;
                    let n = (body_left as usize).min(avail);
                    let piece = data.slice(*pos..*pos + n);
                    *pos += n;
                    f.left -= n as u32;
                    let body_done = f.left == f.pad;
                    if f.head.kind == FrameKind::Data {
                        // The frame's last piece carries END_STREAM when its padding is here too.
                        let frame_done = body_done && avail - n >= f.pad as usize;
                        let end_stream = frame_done && f.head.has(END_STREAM);
                        if n > 0 {
                            f.end_sent = end_stream;
                            let stream = f.head.stream;
                            out.push(FrameEvent::Data { stream, data: piece, ts_ns: ts, end_stream });
                        }
                    } else if let Some(block) = self.block.as_mut() {
                        block.append(piece, self.limits.max_header_block);
                    }
                    if !body_done {
                        return Ok(());
                    }
                    self.frame.step = Step::Rest;
                }
                Step::Rest => {
                    let n = (f.left as usize).min(avail);
                    *pos += n;
                    f.left -= n as u32;
                    if f.left > 0 {
                        return Ok(());
                    }
                    self.end_frame(ts, out);
                    return Ok(());
                }
            }
        }
    }

    /// The fixed fields of the current frame are complete: use them and move on.
    fn fixed_done(&mut self) {
        let f = &mut self.frame;
        match f.head.kind {
            FrameKind::Headers => f.step = Step::Body,
            FrameKind::PushPromise => {
                let promised = f.fixed_u32(0) & STREAM_MASK;
                if let Some(block) = self.block.as_mut() {
                    block.promised = Some(Some(promised));
                }
                f.step = Step::Body;
            }
            FrameKind::Settings => {
                let id = u16::from_be_bytes([f.fixed[0], f.fixed[1]]);
                let value = f.fixed_u32(2);
                f.settings.push((id, value));
                f.fixed_have = 0;
                f.step = if f.left > 0 { Step::Fixed } else { Step::Rest };
            }
            _ => f.step = Step::Rest,
        }
    }

    /// `len` bytes (at most what is left of the current frame) will never be seen.
    fn lose(&mut self, mut len: u32, out: &mut Vec<FrameEvent>) {
        let f = &mut self.frame;
        let stream = f.head.stream;
        while len > 0 {
            match f.step {
                Step::PadLength => {
                    // Which of the remaining bytes are payload is unknown: give up on all of them.
                    len -= 1;
                    f.left -= 1;
                    if f.head.kind == FrameKind::Data {
                        if f.left > 0 {
                            out.push(FrameEvent::DataGap { stream, len: u64::from(f.left) });
                        }
                    } else if let Some(block) = self.block.as_mut() {
                        block.lost = true;
                    }
                    f.step = Step::Rest;
                }
                Step::Fixed => {
                    let take = u32::from(f.fixed_need - f.fixed_have).min(len);
                    len -= take;
                    f.left -= take;
                    if f.head.kind == FrameKind::Headers {
                        // Stream priority, not reported: nothing lost.
                        f.fixed_have += take as u8;
                        if f.fixed_have == f.fixed_need {
                            f.step = Step::Body;
                        }
                    } else {
                        match self.block.as_mut() {
                            Some(block) if f.head.kind == FrameKind::PushPromise => block.lost = true,
                            _ => f.lost = true,
                        }
                        f.step = Step::Rest;
                    }
                }
                Step::Body => {
                    let take = (f.left - f.pad).min(len);
                    len -= take;
                    f.left -= take;
                    if f.head.kind == FrameKind::Data {
                        out.push(FrameEvent::DataGap { stream, len: u64::from(take) });
                    } else if let Some(block) = self.block.as_mut() {
                        block.lost = true;
                    }
                    if f.left == f.pad {
                        f.step = Step::Rest;
                    }
                }
                Step::Rest => {
                    let take = f.left.min(len);
                    len -= take;
                    f.left -= take;
                    if take == 0 {
                        break;
                    }
                }
            }
        }
        if f.left == 0 {
            f.step = Step::Rest;
            self.end_frame(self.last_ts, out);
        }
    }

    /// The current frame's last byte was consumed (or lost): report it.
    fn end_frame(&mut self, ts: u64, out: &mut Vec<FrameEvent>) {
        self.phase = Phase::Head;
        let f = &mut self.frame;
        let FrameHeader { kind, stream, .. } = f.head;
        if f.lost {
            out.push(FrameEvent::ControlLost { kind, stream });
            return;
        }
        let event = match kind {
            FrameKind::Data => {
                if !f.head.has(END_STREAM) || f.end_sent {
                    return;
                }
                FrameEvent::Data { stream, data: Bytes::new(), ts_ns: ts, end_stream: true }
            }
            FrameKind::Headers | FrameKind::PushPromise | FrameKind::Continuation => {
                if !f.head.has(END_HEADERS) {
                    return;
                }
                match self.block.take() {
                    Some(block) => block.into_event(ts),
                    None => return,
                }
            }
            FrameKind::Priority => FrameEvent::Priority { stream },
            FrameKind::RstStream => FrameEvent::RstStream { stream, code: f.fixed_u32(0), ts_ns: ts },
            FrameKind::Settings => {
                FrameEvent::Settings { ack: f.head.has(ACK), params: std::mem::take(&mut f.settings) }
            }
            FrameKind::Ping => FrameEvent::Ping { ack: f.head.has(ACK) },
            FrameKind::GoAway => {
                FrameEvent::GoAway { last_stream: f.fixed_u32(0) & STREAM_MASK, code: f.fixed_u32(4) }
            }
            FrameKind::WindowUpdate => {
                FrameEvent::WindowUpdate { stream, increment: f.fixed_u32(0) & STREAM_MASK }
            }
            FrameKind::Unknown(code) => FrameEvent::Unknown { kind: code, stream },
        };
        out.push(event);
    }
}
