//! Reassembly + HTTP framing throughput on synthetic captured traffic (`cargo xtask bench`).
//!
//! Keep-alive connections carry request and response bodies of 1 KiB and 100 KiB, cut into
//! MTU-sized (1460 B, as XDP sees them without GRO) or GSO-sized (16 KiB records, as TC egress
//! produces them) segments. Criterion reports MB/s of payload per core; exchanges/s follows from
//! the bytes per exchange printed with each group. A counting allocator then checks that a
//! long-running connection does not grow the heap per exchange.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    sync::atomic::{AtomicIsize, Ordering},
};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mirror_common::tcp_flags::{ACK, FIN, PSH, RST, SYN};
use mirror_daemon::{
    assembler::{Assembler, AssemblerConfig},
    capture::Segment,
    flows::{FlowConfig, FlowLimits},
};

/// Live heap bytes, to see growth per exchange.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CONNECTIONS: u16 = 8;

/// One connection's state while generating traffic.
struct Conn {
    client: SocketAddr,
    server: SocketAddr,
    cseq: u32,
    sseq: u32,
}

/// Opens `CONNECTIONS` connections and returns their SYN segments.
fn open(first_port: u16, ts: &mut u64) -> (Vec<Conn>, Vec<Segment>) {
    let server: SocketAddr = "10.0.0.2:8080".parse().expect("address");
    let mut conns = Vec::new();
    let mut segs = Vec::new();
    for i in 0..CONNECTIONS {
        let client = SocketAddr::from(([10, 0, 0, 1], first_port + i));
        *ts += 1;
        segs.push(Segment::new(client, server, 0, SYN, Bytes::new(), *ts));
        segs.push(Segment::new(server, client, 0, SYN | ACK, Bytes::new(), *ts));
        conns.push(Conn { client, server, cseq: 1, sseq: 1 });
    }
    (conns, segs)
}

/// Appends `exchanges` request/response pairs, round-robin over the connections.
fn traffic(
    conns: &mut [Conn],
    exchanges: usize,
    body: usize,
    mss: usize,
    ts: &mut u64,
    segs: &mut Vec<Segment>,
) {
    let payload = Bytes::from(vec![b'x'; body]);
    let head =
        Bytes::from(format!("POST /v2/models/m/infer HTTP/1.1\r\nHost: m\r\nContent-Length: {body}\r\n\r\n"));
    let resp = Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {body}\r\n\r\n"
    ));
    for n in 0..exchanges {
        let c = &mut conns[n % conns.len()];
        for (from_client, h) in [(true, &head), (false, &resp)] {
            let mut message = Vec::with_capacity(h.len() + body);
            message.extend_from_slice(h);
            message.extend_from_slice(&payload);
            let message = Bytes::from(message);
            let (src, dst, seq) = if from_client {
                (c.client, c.server, &mut c.cseq)
            } else {
                (c.server, c.client, &mut c.sseq)
            };
            for start in (0..message.len()).step_by(mss) {
                *ts += 1_000;
                let part = message.slice(start..(start + mss).min(message.len()));
                let len = part.len() as u32;
                segs.push(Segment::new(src, dst, *seq, ACK | PSH, part, *ts));
                *seq = seq.wrapping_add(len);
            }
        }
    }
}

fn close(conns: &[Conn], ts: u64, segs: &mut Vec<Segment>) {
    for c in conns {
        segs.push(Segment::new(c.client, c.server, c.cseq, FIN | ACK, Bytes::new(), ts));
        segs.push(Segment::new(c.server, c.client, c.sseq, FIN | ACK, Bytes::new(), ts));
    }
}

fn assembler() -> Assembler {
    Assembler::new(AssemblerConfig {
        flows: FlowConfig { server_ports: vec![8080], ..FlowConfig::default() },
        ..AssemblerConfig::default()
    })
}

fn bench(c: &mut Criterion) {
    for (label, body, exchanges) in [("1KiB", 1024usize, 4096usize), ("100KiB", 100 * 1024, 256)] {
        for mss in [1460usize, 16_384] {
            let mut ts = 0;
            let (mut conns, mut segs) = open(40_000, &mut ts);
            traffic(&mut conns, exchanges, body, mss, &mut ts, &mut segs);
            close(&conns, ts + 1, &mut segs);
            let payload: u64 = segs.iter().map(|s| s.payload.len() as u64).sum();
            println!(
                "{label} bodies, {mss} B segments: {exchanges} exchanges, {} payload bytes per exchange",
                payload / exchanges as u64
            );

            let mut group = c.benchmark_group(format!("reassembly+framing/{label}/mss{mss}"));
            group.throughput(Throughput::Bytes(payload));
            group.sample_size(20);
            group.bench_function("segments→exchanges", |b| {
                b.iter_batched(
                    || (assembler(), segs.clone(), Vec::new()),
                    |(mut a, segs, mut out)| {
                        let mut done = 0;
                        for s in segs {
                            a.push(s, &mut out);
                            done += out.len();
                            out.clear();
                        }
                        assert_eq!(done, exchanges, "every exchange rebuilt: {:?}", a.drops());
                    },
                    BatchSize::LargeInput,
                )
            });
            group.finish();
        }
    }
    connection_churn(c);
    steady_state_heap();
}

/// The address of the `n`th distinct client (10.1.0.0/16 and up, ports 10000–59999: never the
/// server's port).
fn client_addr(n: u32) -> SocketAddr {
    let host = n / 50_000;
    let port = 10_000 + (n % 50_000) as u16;
    SocketAddr::from(([10, 1, (host >> 8) as u8, host as u8], port))
}

/// An assembler whose connection table holds `max` open keep-alive connections (each with one
/// exchange done), as on a busy node.
fn full_table(max: usize) -> Assembler {
    let mut a = Assembler::new(AssemblerConfig {
        flows: FlowConfig {
            server_ports: vec![8080],
            limits: FlowLimits { max_connections: max, ..FlowLimits::default() },
        },
        ..AssemblerConfig::default()
    });
    let mut out = Vec::new();
    let mut segs = Vec::new();
    for n in 0..max as u32 {
        let mut ts = u64::from(n) * 10;
        short_connection(client_addr(n), &mut ts, false, &mut segs);
        for s in segs.drain(..) {
            a.push(s, &mut out);
        }
        out.clear();
    }
    assert_eq!(a.connections(), max);
    a
}

/// SYN → request → response (→ FIN both ways, when `close`): one short connection's segments.
fn short_connection(client: SocketAddr, ts: &mut u64, close: bool, segs: &mut Vec<Segment>) {
    const REQUEST: &[u8] = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\n\r\n{}";
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    let server: SocketAddr = "10.0.0.2:8080".parse().expect("address");
    let mut at = || {
        *ts += 1;
        *ts
    };
    segs.push(Segment::new(client, server, 0, SYN, Bytes::new(), at()));
    segs.push(Segment::new(server, client, 0, SYN | ACK, Bytes::new(), at()));
    segs.push(Segment::new(client, server, 1, ACK | PSH, Bytes::from_static(REQUEST), at()));
    segs.push(Segment::new(server, client, 1, ACK | PSH, Bytes::from_static(RESPONSE), at()));
    if close {
        let (c, s) = (1 + REQUEST.len() as u32, 1 + RESPONSE.len() as u32);
        segs.push(Segment::new(client, server, c, FIN | ACK, Bytes::new(), at()));
        segs.push(Segment::new(server, client, s, FIN | ACK, Bytes::new(), at()));
    }
}

/// The connection table under churn: refused connects against a full table (each one evicts the
/// least recently active connection), the once-a-second idle sweep of a full table, and short
/// connections (SYN → request → response → FIN) through reassembly and framing.
fn connection_churn(c: &mut Criterion) {
    const TABLE: usize = 16_384;
    const REFUSED: u32 = 30_000;
    let mut refused = Vec::with_capacity(2 * REFUSED as usize);
    let start = TABLE as u64 * 10;
    for n in 0..REFUSED {
        let client = client_addr(TABLE as u32 + n);
        let server: SocketAddr = "10.0.0.2:8080".parse().expect("address");
        let ts = start + u64::from(n) * 2;
        refused.push(Segment::new(client, server, 0, SYN, Bytes::new(), ts));
        refused.push(Segment::new(server, client, 1, RST | ACK, Bytes::new(), ts + 1));
    }
    let mut group = c.benchmark_group("connection-table");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(REFUSED)));
    group.bench_function("full table, 30000 refused connects (SYN, RST)", |b| {
        b.iter_batched(
            || (full_table(TABLE), refused.clone(), Vec::new()),
            |(mut a, segs, mut out)| {
                for s in segs {
                    a.push(s, &mut out);
                }
                assert_eq!(a.connections(), TABLE, "the table stays full");
                a
            },
            BatchSize::PerIteration,
        )
    });
    group.throughput(Throughput::Elements(TABLE as u64));
    group.bench_function("idle sweep of a full table, nothing expired", |b| {
        let mut a = full_table(TABLE);
        let mut out = Vec::new();
        let now = start;
        b.iter(|| {
            a.tick(now, &mut out);
            assert!(out.is_empty());
        })
    });
    const SHORT: u32 = 50_000;
    let mut ts = 0;
    let mut short = Vec::with_capacity(6 * SHORT as usize);
    for n in 0..SHORT {
        short_connection(client_addr(n), &mut ts, true, &mut short);
    }
    group.throughput(Throughput::Elements(u64::from(SHORT)));
    group.bench_function("short connections, SYN → request → response → FIN", |b| {
        b.iter_batched(
            || (assembler(), short.clone(), Vec::new()),
            |(mut a, segs, mut out)| {
                let mut done = 0;
                for s in segs {
                    a.push(s, &mut out);
                    done += out.len();
                    out.clear();
                }
                assert_eq!(done, SHORT as usize, "every exchange rebuilt: {:?}", a.drops());
                a
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Heap growth per exchange on long-lived keep-alive connections, once warmed up. Segments are
/// generated one exchange at a time and dropped after use, so the only memory that can stay is the
/// pipeline's own.
fn steady_state_heap() {
    let mut ts = 0;
    let (mut conns, opening) = open(50_000, &mut ts);
    let mut a = assembler();
    let mut out = Vec::with_capacity(16);
    let mut batch = Vec::with_capacity(64);
    for s in opening {
        a.push(s, &mut out);
    }
    let mut run = |a: &mut Assembler, exchanges: usize, ts: &mut u64| {
        let mut done = 0;
        for _ in 0..exchanges {
            traffic(&mut conns[..1], 1, 1024, 1460, ts, &mut batch);
            for s in batch.drain(..) {
                a.push(s, &mut out);
            }
            done += out.len();
            out.clear();
        }
        done
    };
    assert_eq!(run(&mut a, 2_000, &mut ts), 2_000, "warm-up");
    let before = LIVE.load(Ordering::Relaxed);
    assert_eq!(run(&mut a, 10_000, &mut ts), 10_000);
    let middle = LIVE.load(Ordering::Relaxed);
    assert_eq!(run(&mut a, 10_000, &mut ts), 10_000);
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "steady state: live heap {before} -> {middle} -> {after} bytes over 2 x 10000 further exchanges \
         ({:.3} bytes/exchange); {} bytes buffered, {} connection(s)",
        (after - before) as f64 / 20_000.0,
        a.memory_bytes(),
        a.connections()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
