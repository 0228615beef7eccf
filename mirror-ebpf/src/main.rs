//! Kernel side of shadow mirror: copy the TCP segments of a model server's ports into a ring buffer.
//!
//! Two programs share one parser and one copier: `mirror_xdp` sees what an interface receives and
//! `mirror_tc` what it transmits, so together they see both halves of every conversation.
//!
//! They only observe. XDP always returns `XDP_PASS` and TC always returns `TC_ACT_UNSPEC` (continue
//! with the next program or the default action), whatever happens here: a full ring buffer or a
//! malformed packet costs a counter, never a packet.
//!
//! Payloads are copied once, straight from the packet into a record reserved in the ring buffer
//! (`bpf_ringbuf_reserve`, load, `bpf_ringbuf_submit`), in chunks of at most `CHUNK_SIZE` bytes. The
//! verifier wants a constant reservation size, so a chunk goes into the smallest of a few size
//! classes that holds it (`copy_tail`); classes are spaced so that a full-sized Ethernet segment
//! wastes little ring space. A chunk that cannot be copied becomes a small `LOST` marker record so
//! userspace sees the gap instead of guessing.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::warn;
use mirror_common::{
    CHUNK_SIZE, MAX_ADDRS, MAX_CHUNKS, PORT_BITMAP_WORDS, SegmentHeader, config, counter, direction,
    record_flags, shed_bucket, tcp_flags,
};

/// Captured records. Userspace sets the real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// One bit per TCP port: set for the model server's ports.
#[map]
static PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// Optional server-address filter (IPv4 addresses in the first 4 bytes, rest zero).
#[map]
static SERVER_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_ADDRS, 0);

/// `mirror_common::config` words.
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(config::WORDS, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// One ring-buffer record of size class `N`: the header, then room for up to `N` payload bytes
/// (`header.captured_len` of them are used).
#[repr(C)]
struct Record<const N: usize> {
    header: SegmentHeader,
    data: [u8; N],
}

const ETH_HLEN: u32 = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;

/// Packet access, implemented once per hook.
trait Packet: EbpfContext {
    /// Total packet length, including non-linear parts.
    fn len(&self) -> u32;
    /// Copies a small fixed-size header field.
    fn load<T: Copy>(&self, offset: u32) -> Option<T>;
    /// Copies `len` bytes (already proven to the verifier to fit `dst`) into `dst`.
    fn load_into(&self, offset: u32, dst: *mut u8, len: u32) -> i64;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: the helper only reads the context it is given.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as u32 }
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        // Headers live in the linear part: direct packet access is the cheapest way to read them.
        let start = self.data();
        let end = self.data_end();
        let at = start + offset as usize;
        if at + core::mem::size_of::<T>() > end {
            return None;
        }
        // SAFETY: bounds checked against data_end just above (and again by the verifier).
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }

    #[inline(always)]
    fn load_into(&self, offset: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: dst points into a reserved ring-buffer record with room for len bytes.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, dst.cast(), len) }
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        TcContext::load(self, offset as usize).ok()
    }

    #[inline(always)]
    fn load_into(&self, offset: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: as above. `TcContext::load_bytes` is not used because its `min()` clamp compiles
        // to a `[0, N]` range the verifier rejects ("invalid zero-sized read").
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), offset, dst.cast(), len) }
    }
}

#[xdp(frags)]
pub fn mirror_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    observe(&ctx, ifindex, direction::INGRESS);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn mirror_tc(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    observe(&ctx, ifindex, direction::EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(index: u32, by: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; programs do not preempt each other on one CPU.
        unsafe { *slot += by };
    }
}

#[inline(always)]
fn port_selected(port: u16) -> bool {
    match PORTS.get(u32::from(port >> 6)) {
        Some(word) => word & (1u64 << (port & 63)) != 0,
        None => false,
    }
}

/// Whether the packet's *server* end is selected: a selected port at a selected address (when the
/// address filter is on). The destination for requests, the source for responses — a client that
/// happens to have a server's address (the daemon's own replays from a production pod's node, a
/// client on the same host) does not make its packets the server's.
#[inline(always)]
fn server_end_selected(src: &[u8; 16], src_port: u16, dst: &[u8; 16], dst_port: u16) -> bool {
    let filtered = CONFIG.get(config::FLAGS).is_some_and(|c| c & config::FILTER_ADDRS != 0);
    // SAFETY: lookups only read the map.
    let address = |a: &[u8; 16]| !filtered || unsafe { SERVER_ADDRS.get(a).is_some() };
    (port_selected(dst_port) && address(dst)) || (port_selected(src_port) && address(src))
}

/// The TCP header fields we read, in wire order.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHeader {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    data_offset: u8,
    flags: u8,
    window: [u8; 2],
}

#[inline(always)]
fn observe<P: Packet>(p: &P, ifindex: u32, dir: u8) {
    count(counter::SEEN, 1);

    let Some(mut ethertype) = p.load::<[u8; 2]>(12).map(u16::from_be_bytes) else {
        return;
    };
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = p.load::<[u8; 2]>(16).map(u16::from_be_bytes) else {
            return;
        };
        ethertype = inner;
        l3 += 4;
    }

    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    let ip_version: u8;
    let l4: u32;
    let ip_end: u32;
    let mut fragmented = false;
    let packet_len = p.len();
    if ethertype == ETH_P_IP {
        // version/ihl, tos, total length, id, flags/fragment offset, ttl, protocol
        let Some(h) = p.load::<[u8; 10]>(l3) else {
            return;
        };
        if h[9] != IPPROTO_TCP {
            return;
        }
        let Some(addrs) = p.load::<[u8; 8]>(l3 + 12) else {
            return;
        };
        src_addr[..4].copy_from_slice(&addrs[..4]);
        dst_addr[..4].copy_from_slice(&addrs[4..]);
        ip_version = 4;
        l4 = l3 + u32::from(h[0] & 0x0f) * 4;
        let total = u32::from(u16::from_be_bytes([h[2], h[3]]));
        // A GSO packet above 64 KiB (BIG TCP) carries total length 0.
        ip_end = if total == 0 { packet_len } else { l3 + total };
        // More-fragments bit or a non-zero fragment offset.
        fragmented = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
    } else if ethertype == ETH_P_IPV6 {
        let Some(h) = p.load::<[u8; 8]>(l3) else {
            return;
        };
        let Some(addrs) = p.load::<[u8; 32]>(l3 + 8) else {
            return;
        };
        src_addr.copy_from_slice(&addrs[..16]);
        dst_addr.copy_from_slice(&addrs[16..]);
        ip_version = 6;
        l4 = l3 + 40;
        let payload = u32::from(u16::from_be_bytes([h[4], h[5]]));
        ip_end = if payload == 0 { packet_len } else { l4 + payload };
        if h[6] != IPPROTO_TCP {
            // Extension headers before TCP are rare on a model server's traffic; whether this
            // is our traffic is unknown without walking them, so only TCP-first packets count.
            return;
        }
    } else {
        return;
    }

    let Some(tcp) = p.load::<TcpHeader>(l4) else {
        return;
    };
    let src_port = u16::from_be_bytes(tcp.src_port);
    let dst_port = u16::from_be_bytes(tcp.dst_port);
    if !server_end_selected(&src_addr, src_port, &dst_addr, dst_port) {
        return;
    }
    count(counter::MATCHED, 1);
    if fragmented {
        count(counter::UNPARSED, 1);
        return;
    }

    let payload_off = l4 + u32::from(tcp.data_offset >> 4) * 4;
    let ip_end = if ip_end > packet_len { packet_len } else { ip_end };
    let payload_len = ip_end.saturating_sub(payload_off);
    if payload_len == 0 && tcp.flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0 {
        return; // a bare ACK: nothing for userspace
    }
    // Shed whole connections, never bytes inside one: both directions of a connection fall in the
    // same bucket, and the daemon computes the same bucket to know which connections are cut.
    let shed_level = CONFIG.get(config::SHED_LEVEL).copied().unwrap_or(0);
    if shed_level > 0 && shed_bucket(&src_addr, src_port, &dst_addr, dst_port) < shed_level {
        count(counter::SHED_SEGMENTS, 1);
        count(counter::SHED_BYTES, u64::from(payload_len));
        return;
    }

    let header = SegmentHeader {
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        seq: u32::from_be_bytes(tcp.seq),
        ack: u32::from_be_bytes(tcp.ack),
        payload_len,
        chunk_offset: 0,
        chunk_len: 0,
        captured_len: 0,
        ifindex,
        src_port,
        dst_port,
        ip_version,
        direction: dir,
        tcp_flags: tcp.flags,
        flags: 0,
        window: u16::from_be_bytes(tcp.window),
        _pad: [0; 2],
        src_addr,
        dst_addr,
    };

    if payload_len == 0 {
        emit_header(&header);
        return;
    }

    // Full chunks first (a constant size: no class to choose), then the tail in its size class.
    let mut done: u32 = 0;
    for _ in 0..MAX_CHUNKS - 1 {
        if payload_len - done <= CHUNK_SIZE as u32 {
            break;
        }
        copy::<P, 0, CHUNK_SIZE>(p, &header, payload_off, done, CHUNK_SIZE as u32);
        done += CHUNK_SIZE as u32;
    }
    let remaining = payload_len - done;
    let n = if remaining > CHUNK_SIZE as u32 { CHUNK_SIZE as u32 } else { remaining };
    copy_tail(p, &header, payload_off, done, n);
    done += n;
    if done < payload_len {
        // Beyond the per-packet copy limit: say so rather than cut silently.
        count(counter::TRUNCATED, 1);
        lost(&header, done, payload_len - done);
    }
}

/// Copies the last chunk (`n` in 1..=CHUNK_SIZE bytes at `chunk_offset`) into the smallest size
/// class that holds it. Each class `(LO, N]` spans a power of two, which is what lets `copy` prove
/// the length to the verifier with one mask.
#[inline(always)]
fn copy_tail<P: Packet>(p: &P, header: &SegmentHeader, payload_off: u32, chunk_offset: u32, n: u32) {
    if n <= 128 {
        copy::<P, 0, 128>(p, header, payload_off, chunk_offset, n)
    } else if n <= 256 {
        copy::<P, 128, 256>(p, header, payload_off, chunk_offset, n)
    } else if n <= 512 {
        copy::<P, 256, 512>(p, header, payload_off, chunk_offset, n)
    } else if n <= 1024 {
        copy::<P, 512, 1024>(p, header, payload_off, chunk_offset, n)
    } else if n <= 1536 {
        // A full-sized segment of a 1500-byte MTU (1448 or 1460 bytes) fits here.
        copy::<P, 1024, 1536>(p, header, payload_off, chunk_offset, n)
    } else if n <= 2048 {
        copy::<P, 1536, 2048>(p, header, payload_off, chunk_offset, n)
    } else if n <= 4096 {
        copy::<P, 2048, 4096>(p, header, payload_off, chunk_offset, n)
    } else if n <= 8192 {
        copy::<P, 4096, 8192>(p, header, payload_off, chunk_offset, n)
    } else {
        copy::<P, 8192, CHUNK_SIZE>(p, header, payload_off, chunk_offset, n)
    }
}

/// Copies payload bytes `[chunk_offset, chunk_offset + n)` (`LO < n <= N`, `N - LO` a power of
/// two) from the packet straight into a reserved record of class `N`, and submits it. A full ring
/// buffer or a failed load leaves a `LOST` marker for the range instead.
#[inline(always)]
fn copy<P: Packet, const LO: u32, const N: usize>(
    p: &P,
    header: &SegmentHeader,
    payload_off: u32,
    chunk_offset: u32,
    n: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<Record<N>>(0) else {
        count(counter::RINGBUF_FULL, 1);
        lost(header, chunk_offset, n);
        return;
    };
    // Make the verifier see the length in [LO + 1, N]: LLVM must forget what the class choice
    // told it first, or it drops the mask.
    // SAFETY: reading a local.
    let len = unsafe { core::ptr::read_volatile(&n) };
    let len = LO + (len.wrapping_sub(LO + 1) & (N as u32 - LO - 1)) + 1;
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved, writable record of `size_of::<Record<N>>()` bytes;
    // only raw pointers are formed into it (its contents are uninitialised).
    let loaded = unsafe {
        let mut h = *header;
        h.chunk_offset = chunk_offset;
        h.chunk_len = len;
        h.captured_len = len;
        core::ptr::addr_of_mut!((*record).header).write(h);
        let data = core::ptr::addr_of_mut!((*record).data).cast::<u8>();
        p.load_into(payload_off + chunk_offset, data, len)
    };
    if loaded != 0 {
        entry.discard(0);
        count(counter::TRUNCATED, 1);
        // Rare (a malformed length): one log line per affected packet, never per healthy one.
        warn!(p, "mirror: payload load failed: {}", loaded);
        lost(header, chunk_offset, n);
        return;
    }
    entry.submit(wakeup_flags());
    count(counter::EMITTED, 1);
    count(counter::BYTES, u64::from(len));
}

/// Writes a header-only record (a SYN, FIN or RST without payload).
#[inline(always)]
fn emit_header(header: &SegmentHeader) -> bool {
    let Some(mut entry) = EVENTS.reserve::<SegmentHeader>(0) else {
        return false;
    };
    entry.write(*header);
    entry.submit(wakeup_flags());
    count(counter::EMITTED, 1);
    true
}

/// Writes a header-only `LOST` record for `len` payload bytes at `chunk_offset`.
#[inline(always)]
fn lost(header: &SegmentHeader, chunk_offset: u32, len: u32) {
    let mut marker = *header;
    marker.chunk_offset = chunk_offset;
    marker.chunk_len = len;
    marker.captured_len = 0;
    marker.flags = record_flags::LOST;
    if !emit_header(&marker) {
        count(counter::MARKER_LOST, 1);
    }
}

/// Wake the reader only when enough is waiting; it also polls on a timer.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let threshold = CONFIG.get(config::WAKEUP_BYTES).copied().unwrap_or(0);
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(threshold) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
