//! HTTP/2 connections built from the input, captured with losses, duplicates and reordering, into
//! the [`Assembler`]: it must never panic, its memory must stay within the configured limits after
//! every segment, every exchange must have been announced first with the same request, and
//! everything must be released once the connections end.
//!
//! The input is a flags byte, then records of a 5-byte header and a payload: each record appends
//! one frame (or raw bytes) to one direction of one of up to two connections and says how the
//! capture treats the segments that carry it. Frames get a valid frame header around whatever
//! payload the input gives, so the fuzzer works on frame sequences and their contents rather than
//! on finding frame boundaries; two record kinds write header blocks of literal fields (a request
//! head, a response head or trailers), so that streams get far into their lives.
//!
//! Run with `cargo +nightly fuzz run h2` from `mirror-daemon/`.
#![no_main]

use std::{collections::HashMap, net::SocketAddr};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirror_common::tcp_flags::{ACK, FIN, SYN};
use mirror_daemon::{
    assembler::{Assembler, AssemblerConfig},
    capture::Segment,
    exchange::{Assembled, ExchangeId, Request},
    flows::{FlowConfig, FlowLimits},
    framing::HttpConfig,
};

const FLOW_TOTAL: usize = 256 << 10;
const HTTP_TOTAL: usize = 1 << 20;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Flags byte: no handshake and no preface (a connection joined mid-stream).
const MID_STREAM: u8 = 0x01;
/// Flags byte: the connections end without FIN (the idle timeout ends them).
const NO_FIN: u8 = 0x02;
/// Flags byte: the client opens with an empty SETTINGS frame after the preface.
const SETTINGS_FIRST: u8 = 0x04;

/// What the capture does with the segments of one record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Captured,
    /// The kernel reports the range lost.
    Lost,
    /// Never captured: a hole.
    Dropped,
    /// Captured twice, the copy later.
    Duplicated,
    /// Captured after the next segment.
    Delayed,
}

fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    // Literal without indexing, new name, lengths below 127 (longer values are cut).
    let value = &value[..value.len().min(126)];
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name);
    block.push(value.len() as u8);
    block.extend_from_slice(value);
}

/// A header block of literal fields: a request head (client), a response head (server), or a
/// trailer section, with `text` in the varying value.
fn head_block(server: bool, trailers: bool, text: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    match (server, trailers) {
        (false, false) => {
            literal(&mut block, b":method", b"POST");
            literal(&mut block, b":scheme", b"http");
            literal(&mut block, b":path", &[b"/f/", text].concat());
            literal(&mut block, b":authority", b"model:8081");
        }
        (true, false) => {
            literal(
                &mut block,
                b":status",
                if text.first().is_some_and(|b| b & 1 == 1) { b"103" } else { b"200" },
            );
            literal(&mut block, b"x-for", text);
        }
        (_, true) => literal(&mut block, b"grpc-status", text),
    }
    block
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One direction of one connection being written: its bytes and, per record, where the record's
/// bytes end and what happens to them.
#[derive(Default)]
struct Direction {
    bytes: Vec<u8>,
    cuts: Vec<(usize, Fate, u8)>,
}

/// Builds the connections' directions from the records.
fn directions(flags: u8, mut data: &[u8]) -> [[Direction; 2]; 2] {
    let mut dirs: [[Direction; 2]; 2] = Default::default();
    if flags & MID_STREAM == 0 {
        for conn in &mut dirs {
            conn[0].bytes.extend_from_slice(PREFACE);
            if flags & SETTINGS_FIRST != 0 {
                conn[0].bytes.extend(frame(4, 0, 0, &[]));
            }
        }
    }
    while data.len() >= 5 {
        let (h, rest) = data.split_at(5);
        let len = (usize::from(h[1] >> 4) << 8 | usize::from(h[4])).min(rest.len());
        let (payload, rest) = rest.split_at(len);
        data = rest;
        let server = h[0] & 0x80 != 0;
        let conn = usize::from(h[0] & 0x40 != 0);
        let fate = match (h[0] >> 3) & 7 {
            4 => Fate::Lost,
            5 => Fate::Dropped,
            6 => Fate::Duplicated,
            7 => Fate::Delayed,
            _ => Fate::Captured,
        };
        let pieces = h[0] & 7;
        let (kind, frame_flags, stream) = (h[1] & 0x0f, h[2], u32::from(h[3]));
        let d = &mut dirs[conn][usize::from(server)];
        match kind {
            0..=9 => d.bytes.extend(frame(kind, frame_flags, stream, payload)),
            10 => d.bytes.extend(frame(0xfa, frame_flags, stream, payload)),
            11 => d.bytes.extend_from_slice(payload),
            // A header block that decodes: HEADERS with END_HEADERS and the given END_STREAM.
            12 | 13 => {
                let block = head_block(server, kind == 13, payload);
                d.bytes.extend(frame(1, 0x04 | (frame_flags & 0x01), stream, &block));
            }
            // A header block split in two: HEADERS without END_HEADERS, then a CONTINUATION.
            _ => {
                let block = head_block(server, kind == 15, payload);
                let half = block.len() / 2;
                d.bytes.extend(frame(1, frame_flags & 0x01, stream, &block[..half]));
                d.bytes.extend(frame(9, 0x04, stream, &block[half..]));
            }
        }
        d.cuts.push((d.bytes.len(), fate, pieces));
    }
    dirs
}

/// The captured segments of all connections, in capture order.
fn segments(flags: u8, data: &[u8]) -> Vec<Segment> {
    let server: SocketAddr = "10.0.0.2:8081".parse().expect("address");
    let mut out: Vec<Segment> = Vec::new();
    let mut later: Vec<Segment> = Vec::new();
    let mut ts = 1_000u64;
    let dirs = directions(flags, data);
    let mut streams = Vec::new();
    for (c, conn) in dirs.iter().enumerate() {
        let client: SocketAddr = format!("10.0.0.1:{}", 40_000 + c).parse().expect("address");
        for (d, dir) in conn.iter().enumerate() {
            let (src, dst) = if d == 0 { (client, server) } else { (server, client) };
            let isn = 1000 + 77_777 * (c as u32 * 2 + d as u32);
            streams.push((src, dst, isn, dir));
            if flags & MID_STREAM == 0 {
                out.push(Segment::new(src, dst, isn, if d == 0 { SYN } else { SYN | ACK }, Bytes::new(), ts));
            }
        }
    }
    // Records of all directions in turn: the first record of each, then the second, ...
    let records = streams.iter().map(|s| s.3.cuts.len()).max().unwrap_or(0);
    let mut from = vec![0usize; streams.len()];
    let mut delayed: Option<Segment> = None;
    for r in 0..records {
        for (i, (src, dst, isn, dir)) in streams.iter().enumerate() {
            let Some(&(end, fate, pieces)) = dir.cuts.get(r) else { continue };
            let start = from[i];
            from[i] = end;
            let bytes = Bytes::copy_from_slice(&dir.bytes[start..end]);
            let n = usize::from(pieces).max(1);
            let step = bytes.len().div_ceil(n).max(1);
            let mut at = 0;
            while at < bytes.len() {
                let to = (at + step).min(bytes.len());
                ts += 1_000;
                let seq = isn.wrapping_add(1).wrapping_add((start + at) as u32);
                let payload = bytes.slice(at..to);
                let segment = Segment::new(*src, *dst, seq, ACK, payload.clone(), ts);
                at = to;
                match fate {
                    Fate::Captured => out.push(segment),
                    Fate::Lost => {
                        let mut lost = segment;
                        lost.payload = Bytes::new();
                        out.push(lost.with_lost(payload.len() as u32));
                    }
                    Fate::Dropped => {}
                    Fate::Duplicated => {
                        out.push(segment.clone());
                        later.push(segment);
                    }
                    Fate::Delayed => {
                        if let Some(previous) = delayed.replace(segment) {
                            out.push(previous);
                        }
                        continue;
                    }
                }
                if let Some(previous) = delayed.take() {
                    out.push(previous);
                }
            }
        }
    }
    out.extend(delayed);
    out.extend(later);
    if flags & NO_FIN == 0 {
        ts += 1_000;
        for (src, dst, isn, dir) in &streams {
            let seq = isn.wrapping_add(1).wrapping_add(dir.bytes.len() as u32);
            out.push(Segment::new(*src, *dst, seq, FIN | ACK, Bytes::new(), ts));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, records)) = data.split_first() else { return };
    let mut a = Assembler::new(AssemblerConfig {
        flows: FlowConfig {
            server_ports: vec![8081],
            limits: FlowLimits {
                max_connections: 4,
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
            resync_mid_stream: false,
            max_streams: 8,
        },
        announce_requests: true,
        own_connections: None,
    });
    let mut out = Vec::new();
    let mut announced: HashMap<ExchangeId, Request> = HashMap::new();
    let mut last_ts = 0;
    let mut check = |out: &mut Vec<Assembled>| {
        for item in out.drain(..) {
            match item {
                Assembled::Request(r) => {
                    assert!(announced.insert(r.id, r.request).is_none(), "announced twice")
                }
                Assembled::Exchange(e) => {
                    assert_eq!(
                        announced.remove(&e.id).as_ref(),
                        Some(&e.request),
                        "exchange not announced as is"
                    )
                }
            }
        }
    };
    for s in segments(flags, records) {
        last_ts = last_ts.max(s.ts_ns);
        a.push(s, &mut out);
        assert!(a.memory_bytes() <= FLOW_TOTAL + HTTP_TOTAL, "memory {}", a.memory_bytes());
        check(&mut out);
    }
    a.tick(last_ts + 1_000_000_000, &mut out);
    check(&mut out);
    assert_eq!(a.memory_bytes(), 0);
    assert_eq!(a.connections(), 0);
});
