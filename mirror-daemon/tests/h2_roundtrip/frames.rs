//! HTTP/2 frames and HPACK header blocks written by hand, and a frame splitter for recorded
//! directions: what the hand-built conversations are made of and what the coverage and mutation
//! tests look at.
use std::collections::VecDeque;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// One frame on the wire.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24, "frame payload of {len} bytes");
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A payload with a pad length byte in front and `pad` zero bytes behind.
pub fn padded(payload: &[u8], pad: u8) -> Vec<u8> {
    let mut p = vec![pad];
    p.extend_from_slice(payload);
    p.extend(std::iter::repeat_n(0, usize::from(pad)));
    p
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> =
        params.iter().flat_map(|(id, v)| [&id.to_be_bytes()[..], &v.to_be_bytes()].concat()).collect();
    frame(SETTINGS, 0, 0, &payload)
}

/// Where one frame lies in a recorded direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameAt {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    /// Offset of the frame header.
    pub start: usize,
    /// Offset just past the payload.
    pub end: usize,
}

impl FrameAt {
    pub fn payload<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.start + 9..self.end]
    }

    /// The header block fragment of a HEADERS frame (padding and priority removed).
    pub fn fragment<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        let p = self.payload(bytes);
        let (pad, mut from) = if self.flags & PADDED != 0 { (usize::from(p[0]), 1) } else { (0, 0) };
        if self.kind == HEADERS && self.flags & PRIORITY_FLAG != 0 {
            from += 5;
        }
        &p[from..p.len() - pad]
    }
}

/// The frames of a recorded direction (after the preface, for the client's), as far as they are
/// complete.
pub fn frames_of(bytes: &[u8], client: bool) -> Vec<FrameAt> {
    let mut at = if client && bytes.starts_with(PREFACE) { PREFACE.len() } else { 0 };
    let mut out = Vec::new();
    while at + 9 <= bytes.len() {
        let h = &bytes[at..at + 9];
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let end = at + 9 + len;
        if end > bytes.len() {
            break;
        }
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        out.push(FrameAt { kind: h[3], flags: h[4], stream, start: at, end });
        at = end;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HPACK (RFC 7541), without Huffman coding: the real stack's encoder covers that.

/// The static table (RFC 7541 Appendix A); wire index `i` is entry `i - 1`.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

const ENTRY_OVERHEAD: usize = 32;

/// How a field line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Representation {
    /// Literal with incremental indexing: inserted into the table.
    Incremental,
    WithoutIndexing,
    NeverIndexed,
}

/// A straightforward encoder with its own dynamic table.
#[derive(Debug)]
pub struct Encoder {
    /// Newest first.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// Size updates to write at the start of the next block.
    pending_updates: Vec<usize>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder { table: VecDeque::new(), size: 0, max_size: 4096, pending_updates: Vec::new() }
    }
}

fn integer(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: usize) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn string(out: &mut Vec<u8>, text: &[u8]) {
    integer(out, 0, 7, text.len());
    out.extend_from_slice(text);
}

impl Encoder {
    /// The next block starts with these table size updates (each at most what the decoder
    /// advertised).
    pub fn update_sizes(&mut self, sizes: &[usize]) {
        self.pending_updates.extend_from_slice(sizes);
    }

    fn evict_to(&mut self, room: usize) {
        while self.size > room {
            let (name, value) = self.table.pop_back().expect("size accounts for entries");
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.evict_to(0);
        } else {
            self.evict_to(self.max_size - size);
            self.table.push_front((name.to_vec(), value.to_vec()));
            self.size += size;
        }
    }

    /// The wire index of an entry with this name (and value, if given).
    fn find(&self, name: &[u8], value: Option<&[u8]>) -> Option<usize> {
        let matches = |n: &[u8], v: &[u8]| n == name && value.is_none_or(|value| v == value);
        if let Some(i) = STATIC_TABLE.iter().position(|(n, v)| matches(n, v)) {
            return Some(i + 1);
        }
        self.table.iter().position(|(n, v)| matches(n, v)).map(|i| i + 62)
    }

    /// Encodes a header block; `choose(i)` says how field `i` is written and whether the encoder
    /// may refer to a matching table entry.
    pub fn encode(
        &mut self,
        fields: &[(Vec<u8>, Vec<u8>)],
        mut choose: impl FnMut(usize) -> (Representation, bool),
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for size in std::mem::take(&mut self.pending_updates) {
            integer(&mut out, 0x20, 5, size);
            self.max_size = size;
            self.evict_to(size);
        }
        for (i, (name, value)) in fields.iter().enumerate() {
            let (representation, reuse) = choose(i);
            if reuse && let Some(index) = self.find(name, Some(value)) {
                integer(&mut out, 0x80, 7, index);
                continue;
            }
            let (flags, prefix_bits) = match representation {
                Representation::Incremental => (0x40, 6),
                Representation::WithoutIndexing => (0x00, 4),
                Representation::NeverIndexed => (0x10, 4),
            };
            match reuse.then(|| self.find(name, None)).flatten() {
                Some(index) => integer(&mut out, flags, prefix_bits, index),
                None => {
                    integer(&mut out, flags, prefix_bits, 0);
                    string(&mut out, name);
                }
            }
            string(&mut out, value);
            if representation == Representation::Incremental {
                self.insert(name, value);
            }
        }
        out
    }
}
