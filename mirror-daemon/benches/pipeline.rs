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
use mirror_common::tcp_flags::{ACK, FIN, PSH, SYN};
use mirror_daemon::{
    assembler::{Assembler, AssemblerConfig},
    capture::Segment,
    flows::FlowConfig,
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
    steady_state_heap();
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
