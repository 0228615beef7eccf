//! Types shared by the kernel capture programs (`mirror-ebpf`) and the daemon.
//!
//! Everything here is `#[repr(C)]` and checked for size at compile time, because the kernel writes
//! these bytes and userspace reads them: a silent layout difference would corrupt every record.
//! Multi-byte protocol fields (ports, sequence numbers) are converted to host order in the kernel so
//! that userspace never has to guess; addresses stay as network-order byte arrays.
#![no_std]

/// Direction in which a hook saw a packet, relative to the interface it is attached to.
pub mod direction {
    /// Received on the interface (seen by the XDP program).
    pub const INGRESS: u8 = 0;
    /// Transmitted by the interface (seen by the TC program).
    pub const EGRESS: u8 = 1;
}

/// Bits of [`SegmentHeader::flags`].
pub mod record_flags {
    /// The bytes `[chunk_offset, chunk_offset + chunk_len)` of the segment's payload could not be
    /// copied (ring buffer full, a failed load, or beyond the per-packet copy limit). The record
    /// carries no payload; userspace must treat the range as a gap in the stream.
    pub const LOST: u8 = 1;
}

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Largest number of payload bytes carried by one ring-buffer record. A larger segment (TC sees
/// GSO/TSO super-packets of up to 64 KiB) is split into several records ("chunks").
pub const CHUNK_SIZE: usize = 16384;
/// Chunks copied per packet at most. `MAX_CHUNKS * CHUNK_SIZE` = 64 KiB covers every GSO packet of
/// an interface with the default `gso_max_size` (65536); anything beyond (BIG TCP) is reported as a
/// [`record_flags::LOST`] range. Each further chunk multiplies the verifier's work.
pub const MAX_CHUNKS: usize = 4;
/// Server ports the kernel filter holds at most.
pub const MAX_PORTS: usize = 64;
/// Server addresses the kernel filter holds at most.
pub const MAX_ADDRS: u32 = 64;
/// Number of 64-bit words of the port bitmap (one bit per TCP port).
pub const PORT_BITMAP_WORDS: u32 = 65536 / 64;

/// Metadata written before the payload bytes of every ring-buffer record.
///
/// A record is `size_of::<SegmentHeader>()` bytes, then `captured_len` payload bytes, then possibly
/// unused room: the kernel reserves records in a few size classes (the verifier wants constant
/// sizes), so a record may be longer than its payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the hook saw the packet.
    pub ts_ns: u64,
    /// TCP sequence number of the segment's first payload byte (host order).
    pub seq: u32,
    /// TCP acknowledgement number (host order).
    pub ack: u32,
    /// TCP payload length of the whole segment (all chunks together).
    pub payload_len: u32,
    /// Offset of this record's range within the segment's payload.
    pub chunk_offset: u32,
    /// Length of this record's range within the segment's payload.
    pub chunk_len: u32,
    /// Payload bytes that follow this header: `chunk_len`, or 0 when the range was lost.
    pub captured_len: u32,
    /// Interface index the hook is attached to.
    pub ifindex: u32,
    /// TCP source port (host order).
    pub src_port: u16,
    /// TCP destination port (host order).
    pub dst_port: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// [`direction::INGRESS`] or [`direction::EGRESS`].
    pub direction: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// [`record_flags`] bits.
    pub flags: u8,
    /// TCP window (host order); carried so that a pcap export is faithful.
    pub window: u16,
    pub _pad: [u8; 2],
    /// Source address, network order; IPv4 uses the first 4 bytes, the rest is zero.
    pub src_addr: [u8; 16],
    /// Destination address, network order; IPv4 uses the first 4 bytes, the rest is zero.
    pub dst_addr: [u8; 16],
}

/// Size of [`SegmentHeader`] in bytes, as written in the ring buffer.
pub const HEADER_SIZE: usize = core::mem::size_of::<SegmentHeader>();
const _: () = assert!(HEADER_SIZE == 80);
const _: () = assert!(HEADER_SIZE.is_multiple_of(8));

/// Indices of the kernel's per-CPU counters (`COUNTERS` map).
pub mod counter {
    /// Packets the programs ran on.
    pub const SEEN: u32 = 0;
    /// TCP packets whose port (and address, if filtered) matched.
    pub const MATCHED: u32 = 1;
    /// Records written to the ring buffer (chunks and loss markers).
    pub const EMITTED: u32 = 2;
    /// Payload bytes copied into the ring buffer.
    pub const BYTES: u32 = 3;
    /// Chunks that could not be written because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 4;
    /// Payload ranges not copied for another reason (beyond the per-packet limit, failed load).
    pub const TRUNCATED: u32 = 5;
    /// Loss markers that could not be written either: userspace learns of the loss only from
    /// the stream's sequence numbers and this counter.
    pub const MARKER_LOST: u32 = 6;
    /// Matching-port packets that could not be parsed (IPv4 fragments, IPv6 extension headers).
    pub const UNPARSED: u32 = 7;
    /// Matching packets not copied because their connection's bucket is shed
    /// ([`crate::config::SHED_LEVEL`]).
    pub const SHED_SEGMENTS: u32 = 8;
    /// Payload bytes of those packets.
    pub const SHED_BYTES: u32 = 9;
    /// Number of counters.
    pub const COUNT: u32 = 10;

    /// Names for logs and metrics, indexed like the counters.
    pub const NAMES: [&str; COUNT as usize] = [
        "seen",
        "matched",
        "emitted",
        "bytes",
        "ringbuf_full",
        "truncated",
        "marker_lost",
        "unparsed",
        "shed_segments",
        "shed_bytes",
    ];
}

/// The `CONFIG` map: words set by userspace before attaching.
pub mod config {
    /// Index of the flags word.
    pub const FLAGS: u32 = 0;
    /// Index of the wake-up threshold: the kernel wakes the reader only once this many bytes are
    /// waiting in the ring buffer (the reader also polls on a short timer). Waking it for every
    /// record costs more than copying a small one.
    pub const WAKEUP_BYTES: u32 = 1;
    /// Index of the shed level: connections whose [`crate::shed_bucket`] is below it are not
    /// captured (0 captures every connection, [`crate::SHED_BUCKETS`] none). Userspace moves it
    /// when the ring buffer or the pipeline falls behind.
    pub const SHED_LEVEL: u32 = 2;
    /// Number of words.
    pub const WORDS: u32 = 3;
    /// Flag: only packets from or to an address in `SERVER_ADDRS` match.
    pub const FILTER_ADDRS: u32 = 1;
}

/// Connections are shed in this many buckets: the shed level moves in steps of 1/1024 of them.
pub const SHED_BUCKETS: u32 = 1024;

/// The shed bucket of a connection, from its two endpoints (address in the 16-byte layout of
/// [`SegmentHeader::src_addr`], port in host order), whichever way the packet goes: both halves of a
/// connection always fall in the same bucket. The kernel and the daemon compute it with this same
/// code, so the daemon knows exactly which connections a shed level cuts.
#[inline(always)]
pub fn shed_bucket(a_addr: &[u8; 16], a_port: u16, b_addr: &[u8; 16], b_port: u16) -> u32 {
    let a = endpoint_key(a_addr, a_port);
    let b = endpoint_key(b_addr, b_port);
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    (mix64(mix64(lo) ^ hi) % SHED_BUCKETS as u64) as u32
}

/// An endpoint folded into 64 bits: the address's four words xor-ed, and the port.
#[inline(always)]
fn endpoint_key(addr: &[u8; 16], port: u16) -> u64 {
    let word = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = word(0) ^ word(4).rotate_left(8) ^ word(8).rotate_left(16) ^ word(12).rotate_left(24);
    (u64::from(folded) << 16) | u64::from(port)
}

/// The 64-bit finaliser of MurmurHash3: every input bit affects every output bit.
#[inline(always)]
fn mix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with no padding holes the kernel leaves undefined (the
    // explicit `_pad` keeps the layout total) and no pointers.
    unsafe impl aya::Pod for super::SegmentHeader {}
}
