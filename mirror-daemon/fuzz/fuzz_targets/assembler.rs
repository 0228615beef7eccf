//! Arbitrary segment sequences into the [`Assembler`]: it must never panic, and its memory must
//! stay within the configured limits whatever the input.
//!
//! Run with `cargo +nightly fuzz run assembler` from `mirror-daemon/`.
#![no_main]

use std::net::SocketAddr;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirror_daemon::{
    assembler::{Assembler, AssemblerConfig},
    capture::Segment,
    exchange::Assembled,
    flows::{FlowConfig, FlowLimits},
    framing::HttpConfig,
};

const FLOW_TOTAL: usize = 256 << 10;
const HTTP_TOTAL: usize = 1 << 20;

/// Reads the input as a list of segments: a 9-byte header (endpoint pair, flags, sequence delta,
/// payload length, lost length, time step) followed by the payload.
fn segments(mut data: &[u8]) -> Vec<Segment> {
    let mut out = Vec::new();
    let server: SocketAddr = "10.0.0.2:8080".parse().expect("address");
    let mut seqs = [0u32; 8];
    let mut ts = 0u64;
    while data.len() >= 9 {
        let (h, rest) = data.split_at(9);
        let conn = usize::from(h[0] & 3);
        let from_client = h[0] & 4 != 0;
        let flags = h[1];
        let delta = i16::from_le_bytes([h[2], h[3]]);
        let len = usize::from(u16::from_le_bytes([h[4], h[5]])) % 4096;
        let lost = u32::from(h[6]);
        ts += u64::from(h[7]) * 1_000_000;
        let split = h[8];
        let len = len.min(rest.len());
        let (payload, rest) = rest.split_at(len);
        data = rest;
        let client: SocketAddr = format!("10.0.0.1:{}", 40_000 + conn).parse().expect("address");
        let (src, dst) = if from_client { (client, server) } else { (server, client) };
        let slot = conn * 2 + usize::from(!from_client);
        let seq = seqs[slot].wrapping_add(delta as i32 as u32);
        seqs[slot] = seq.wrapping_add(len as u32 + lost);
        let lost = if payload.is_empty() { lost } else { 0 };
        let base = Segment::new(src, dst, seq, flags, Bytes::copy_from_slice(payload), ts).with_lost(lost);
        // Sometimes split the payload into two ranges, as the kernel does for large segments.
        let k = usize::from(split);
        if k > 0 && k < len {
            let mut a = base.clone();
            a.payload = base.payload.slice(..k);
            let mut b = base.clone();
            b.offset = k as u32;
            b.payload = base.payload.slice(k..);
            out.push(a);
            out.push(b);
        } else {
            out.push(base);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut a = Assembler::new(AssemblerConfig {
        flows: FlowConfig {
            server_ports: vec![8080],
            limits: FlowLimits {
                max_connections: 3,
                max_buffered_per_conn: 64 << 10,
                max_buffered_total: FLOW_TOTAL,
                idle_timeout_ns: 50_000_000,
                max_ahead_bytes: 1 << 20,
            },
        },
        http: HttpConfig {
            max_header_bytes: 4096,
            max_headers: 16,
            max_body_bytes: 64 << 10,
            max_pipelined: 4,
            max_backlog_bytes: 64 << 10,
            max_buffered_total: HTTP_TOTAL,
            // The top bit of the first byte (unused by the segment header) turns on the
            // resynchronisation of mid-stream connections.
            resync_mid_stream: data.first().is_some_and(|b| b & 0x80 != 0),
            max_streams: 8,
        },
        announce_requests: true,
        ..AssemblerConfig::default()
    });
    let mut out = Vec::new();
    let mut last_ts = 0;
    for s in segments(data) {
        last_ts = s.ts_ns;
        a.push(s, &mut out);
        assert!(a.memory_bytes() <= FLOW_TOTAL + HTTP_TOTAL, "memory {}", a.memory_bytes());
        // Announced requests are handed out, never accumulated.
        let announced = out.iter().filter(|item| matches!(item, Assembled::Request(_))).count();
        assert!(announced <= 64, "announced {announced} requests from one segment");
        out.clear();
    }
    a.tick(last_ts + 1_000_000_000, &mut out);
    assert_eq!(a.memory_bytes(), 0);
    assert_eq!(a.connections(), 0);
});
