//! Captured TCP segments: what the kernel programs saw, as typed values.
//!
//! [`record`] decodes the kernel's ring-buffer records (pure, unit-tested); [`ring`] reads them from
//! the ring buffer asynchronously; [`ignore`] knows the daemon's own replay connections, which are
//! never rebuilt; [`shed`] decides which connections the kernel stops copying under overload. The rest of the daemon only ever sees [`Segment`]s, so flow
//! tracking, HTTP framing and pcap export can be tested with segments built in memory.
pub mod ignore;
pub mod record;
pub mod ring;
pub mod shed;

use std::net::SocketAddr;

use bytes::Bytes;
use mirror_common::tcp_flags;

/// Which way a packet crossed the interface the programs are attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received (XDP).
    Ingress,
    /// Transmitted (TC egress).
    Egress,
}

impl Direction {
    /// Short label for one-line output.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Ingress => "in",
            Direction::Egress => "out",
        }
    }
}

/// One captured range of a TCP segment's payload (a whole segment unless it exceeded one record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Kernel CLOCK_MONOTONIC nanoseconds when the packet was seen.
    pub ts_ns: u64,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    pub direction: Direction,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Sequence number of the segment's first payload byte.
    pub seq: u32,
    pub ack: u32,
    /// TCP flags byte (`mirror_common::tcp_flags`).
    pub flags: u8,
    pub window: u16,
    /// Payload length of the whole segment.
    pub segment_len: u32,
    /// Offset of this range within the segment's payload.
    pub offset: u32,
    /// Captured bytes of this range; empty when the range was lost.
    pub payload: Bytes,
    /// Bytes of this range that were not captured (ring buffer full, copy limit): a gap.
    pub lost: u32,
}

impl Segment {
    /// A whole segment as one range, seen on receive by interface 1: what tests, benchmarks and
    /// fuzzers build traffic from.
    pub fn new(src: SocketAddr, dst: SocketAddr, seq: u32, flags: u8, payload: Bytes, ts_ns: u64) -> Self {
        Self {
            ts_ns,
            ifindex: 1,
            direction: Direction::Ingress,
            src,
            dst,
            seq,
            ack: 0,
            flags,
            window: 0,
            segment_len: payload.len() as u32,
            offset: 0,
            payload,
            lost: 0,
        }
    }

    /// The same segment with `lost` further bytes that were not captured (a gap).
    pub fn with_lost(mut self, lost: u32) -> Self {
        self.lost = lost;
        self.segment_len = self.payload.len() as u32 + lost;
        self
    }

    /// Sequence number of this range's first byte.
    pub fn range_seq(&self) -> u32 {
        self.seq.wrapping_add(self.offset)
    }

    /// Length of the range in sequence space, captured or not.
    pub fn range_len(&self) -> u32 {
        self.payload.len() as u32 + self.lost
    }

    pub fn is_syn(&self) -> bool {
        self.flags & tcp_flags::SYN != 0
    }

    pub fn is_fin(&self) -> bool {
        self.flags & tcp_flags::FIN != 0
    }

    pub fn is_rst(&self) -> bool {
        self.flags & tcp_flags::RST != 0
    }

    /// tcpdump-style flag letters, e.g. `S.` or `P.`.
    pub fn flag_letters(&self) -> String {
        let mut s = String::new();
        for (bit, c) in [
            (tcp_flags::SYN, 'S'),
            (tcp_flags::FIN, 'F'),
            (tcp_flags::RST, 'R'),
            (tcp_flags::PSH, 'P'),
            (tcp_flags::ACK, '.'),
        ] {
            if self.flags & bit != 0 {
                s.push(c);
            }
        }
        if s.is_empty() { "none".into() } else { s }
    }
}
