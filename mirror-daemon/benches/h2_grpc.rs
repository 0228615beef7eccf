//! HTTP/2 framing + HPACK + gRPC throughput on recorded gRPC traffic (`cargo xtask bench`).
//!
//! The traffic is real HTTP/2 written by a stack this project did not write: the `h2` crate's
//! client and server run in-process over `tokio::io::duplex`, and every byte each side writes is
//! recorded in order. The client makes unary gRPC calls (`ModelInfer` heads with the metadata
//! grpcio sends, a per-call `grpc-timeout` and request id, so HPACK both reuses and churns its
//! dynamic table; `h2` Huffman-codes every string), several streams in flight per connection; the
//! server answers each with one message and `grpc-status: 0` trailers. Messages are 1 KiB or
//! 1 MiB, 5-byte-prefixed, in DATA frames of at most 16 KiB. The recording is cut into MTU-sized
//! (1448 B) or GSO-sized (16 KiB, 64 KiB) segments and pushed through [`Assembler`] as in
//! `pipeline.rs`.
//!
//! Measured, in the benchmark thread's CPU time (other work on a shared machine does not count):
//! segments → exchanges (TCP reassembly, HTTP/2 framing, HPACK, stream pairing) per case, and the
//! gRPC layer on the rebuilt exchanges (`grpc::decode_messages`, which splits the length-prefixed
//! messages, on both bodies, and `grpc::read_status`). A summary gives exchanges/s, message
//! payload GB/s and wire GiB/s per case, and whether 1 MiB messages reach 1 GB/s per core. A
//! counting allocator then checks that a long-lived connection does not grow the heap per exchange.
#[path = "support/cpu_time.rs"]
mod cpu_time;

use cpu_time::thread_cpu_time;
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::RefCell,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicIsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mirror_common::tcp_flags::{ACK, FIN, PSH, SYN};
use mirror_daemon::{
    assembler::{Assembler, AssemblerConfig},
    capture::Segment,
    exchange::{Assembled, Exchange},
    flows::FlowConfig,
    grpc,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

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

const PORT: u16 = 8081;
const PATH: &str = "/inference.GRPCInferenceService/ModelInfer";
/// What grpcio's Python client says it is.
const USER_AGENT: &str = "grpc-python-asyncio/1.85.1 grpc-c/52.0.0 (linux; chttp2)";
/// Flow-control windows of both ends, as gRPC stacks raise them for large messages (BDP probing).
const WINDOW: u32 = 8 << 20;
/// Largest decoded message total, as the comparison's default.
const DECODE_LIMIT: usize = 256 << 20;

/// Which end wrote the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// One connection's bytes in the order they were written: runs of consecutive writes of one side.
type Runs = Vec<(Side, Vec<u8>)>;

/// An I/O end that appends every byte written through it to the connection's log.
struct Recording {
    io: DuplexStream,
    side: Side,
    log: Arc<Mutex<Runs>>,
}

impl AsyncRead for Recording {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            let mut log = this.log.lock().expect("log lock");
            match log.last_mut() {
                Some((side, bytes)) if *side == this.side => bytes.extend_from_slice(&buf[..n]),
                _ => log.push((this.side, buf[..n].to_vec())),
            }
        }
        written
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A gRPC message in its length prefix: `len` deterministic bytes.
fn grpc_message(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    let mut framed = Vec::with_capacity(len + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(len).expect("message under 4 GiB").to_be_bytes());
    framed.extend((0..len).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    Bytes::from(framed)
}

/// The server: one message back per call, then `grpc-status: 0`.
async fn serve(io: Recording, reply: Bytes) -> Result<(), h2::Error> {
    let mut conn = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .handshake(io)
        .await?;
    while let Some(accepted) = conn.accept().await {
        let (request, mut respond) = accepted?;
        let reply = reply.clone();
        tokio::spawn(async move {
            let mut body = request.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                body.flow_control().release_capacity(chunk.len())?;
            }
            let head = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-accept-encoding", "identity, deflate, gzip")
                .body(())
                .expect("response head");
            let mut send = respond.send_response(head, false)?;
            send.send_data(reply, false)?;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            send.send_trailers(trailers)
        });
    }
    Ok(())
}

/// One unary call, `n` the call's number.
async fn call(send: h2::client::SendRequest<Bytes>, n: usize, message: Bytes) -> Result<usize, h2::Error> {
    let head = http::Request::builder()
        .method("POST")
        .uri(format!("http://10.0.0.2:{PORT}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", USER_AGENT)
        .header("grpc-accept-encoding", "identity, deflate, gzip")
        .header("grpc-timeout", format!("{}u", 59_999_000 + n % 977))
        .header("x-request-id", format!("bench-{n}"))
        .body(())
        .expect("request head");
    let mut send = send.ready().await?;
    let (response, mut stream) = send.send_request(head, false)?;
    stream.send_data(message, true)?;
    let mut body = response.await?.into_body();
    let mut received = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        received += chunk.len();
        body.flow_control().release_capacity(chunk.len())?;
    }
    body.trailers().await?;
    Ok(received)
}

/// What to record.
#[derive(Clone, Copy, Debug)]
struct Plan {
    connections: usize,
    /// Calls in flight at once on each connection (their streams interleave).
    in_flight: usize,
    /// Calls per connection.
    calls: usize,
    message: usize,
}

/// Runs the plan over `h2` in-process and returns each connection's recorded bytes.
fn record(plan: Plan) -> Vec<Runs> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let request = grpc_message(plan.message, 0x9e37_79b9_7f4a_7c15);
        let reply = grpc_message(plan.message, 0xd1b5_4a32_d192_ed03);
        let mut connections = tokio::task::JoinSet::new();
        for c in 0..plan.connections {
            let (request, reply) = (request.clone(), reply.clone());
            connections.spawn(async move {
                let log = Arc::new(Mutex::new(Vec::new()));
                let (client_io, server_io) = tokio::io::duplex(256 << 10);
                let server = tokio::spawn(serve(
                    Recording { io: server_io, side: Side::Server, log: Arc::clone(&log) },
                    reply.clone(),
                ));
                let (send, conn) = h2::client::Builder::new()
                    .initial_window_size(WINDOW)
                    .initial_connection_window_size(WINDOW)
                    .handshake::<_, Bytes>(Recording {
                        io: client_io,
                        side: Side::Client,
                        log: Arc::clone(&log),
                    })
                    .await
                    .expect("client handshake");
                let client = tokio::spawn(conn);
                let mut calls: tokio::task::JoinSet<Result<usize, h2::Error>> = tokio::task::JoinSet::new();
                for n in 0..plan.calls {
                    if calls.len() == plan.in_flight
                        && let Some(done) = calls.join_next().await
                    {
                        assert_eq!(done.expect("call task").expect("call"), reply.len());
                    }
                    calls.spawn(call(send.clone(), c * plan.calls + n, request.clone()));
                }
                while let Some(done) = calls.join_next().await {
                    assert_eq!(done.expect("call task").expect("call"), reply.len());
                }
                drop(send);
                client.await.expect("client task").expect("client connection");
                server.await.expect("server task").expect("server connection");
                let runs = std::mem::take(&mut *log.lock().expect("log lock"));
                (c, runs)
            });
        }
        let mut recorded = vec![Vec::new(); plan.connections];
        while let Some(done) = connections.join_next().await {
            let (c, runs) = done.expect("connection task");
            recorded[c] = runs;
        }
        recorded
    })
}

/// A connection's TCP endpoints and next sequence numbers while cutting segments.
struct Tcp {
    client: SocketAddr,
    server: SocketAddr,
    cseq: u32,
    sseq: u32,
}

impl Tcp {
    fn new(index: usize) -> Self {
        let port = 40_000 + u16::try_from(index).expect("few connections");
        Tcp {
            client: SocketAddr::from(([10, 0, 0, 1], port)),
            server: SocketAddr::from(([10, 0, 0, 2], PORT)),
            cseq: 1,
            sseq: 1,
        }
    }

    fn open(&self, ts: u64, segs: &mut Vec<Segment>) {
        segs.push(Segment::new(self.client, self.server, 0, SYN, Bytes::new(), ts));
        segs.push(Segment::new(self.server, self.client, 0, SYN | ACK, Bytes::new(), ts));
    }

    /// `bytes` written by `side`, cut into segments of at most `mss` bytes.
    fn data(&mut self, side: Side, bytes: &Bytes, mss: usize, ts: &mut u64, segs: &mut Vec<Segment>) {
        let (src, dst, seq) = match side {
            Side::Client => (self.client, self.server, &mut self.cseq),
            Side::Server => (self.server, self.client, &mut self.sseq),
        };
        for start in (0..bytes.len()).step_by(mss) {
            *ts += 1_000;
            let part = bytes.slice(start..(start + mss).min(bytes.len()));
            let len = u32::try_from(part.len()).expect("segment under 4 GiB");
            segs.push(Segment::new(src, dst, *seq, ACK | PSH, part, *ts));
            *seq = seq.wrapping_add(len);
        }
    }

    fn close(&self, ts: u64, segs: &mut Vec<Segment>) {
        segs.push(Segment::new(self.client, self.server, self.cseq, FIN | ACK, Bytes::new(), ts));
        segs.push(Segment::new(self.server, self.client, self.sseq, FIN | ACK, Bytes::new(), ts));
    }
}

/// The recorded connections as captured segments: opened, their runs dealt round-robin across
/// connections (each run in order within its connection), closed.
fn segments(recorded: &[Vec<(Side, Bytes)>], mss: usize) -> Vec<Segment> {
    let mut ts = 0;
    let mut segs = Vec::new();
    let mut tcp: Vec<Tcp> = (0..recorded.len()).map(Tcp::new).collect();
    for t in &tcp {
        ts += 1;
        t.open(ts, &mut segs);
    }
    let longest = recorded.iter().map(Vec::len).max().unwrap_or(0);
    for run in 0..longest {
        for (t, runs) in tcp.iter_mut().zip(recorded) {
            if let Some((side, bytes)) = runs.get(run) {
                t.data(*side, bytes, mss, &mut ts, &mut segs);
            }
        }
    }
    for t in &tcp {
        t.close(ts + 1, &mut segs);
    }
    segs
}

/// What the recorded header blocks are made of: evidence that the input exercises HPACK's dynamic
/// table and Huffman coding rather than literals only.
#[derive(Debug, Default)]
struct HpackCensus {
    blocks: usize,
    block_bytes: usize,
    indexed_static: usize,
    indexed_dynamic: usize,
    literal_inserted: usize,
    literal_not_inserted: usize,
    size_updates: usize,
    huffman_strings: usize,
    plain_strings: usize,
}

/// An HPACK integer with an `n`-bit prefix at the start of `b`: (value, bytes used).
fn hpack_int(b: &[u8], n: u32) -> Option<(usize, usize)> {
    let mask = (1usize << n) - 1;
    let mut value = usize::from(*b.first()?) & mask;
    if value < mask {
        return Some((value, 1));
    }
    let mut shift = 0;
    for (i, byte) in b.iter().enumerate().skip(1) {
        value = value.checked_add(usize::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
    }
    None
}

impl HpackCensus {
    /// A string literal at the start of `b`; returns the bytes it takes.
    fn string(&mut self, b: &[u8]) -> Option<usize> {
        let huffman = b.first()? & 0x80 != 0;
        let (len, used) = hpack_int(b, 7)?;
        *if huffman { &mut self.huffman_strings } else { &mut self.plain_strings } += 1;
        used.checked_add(len)
    }

    /// A literal field line whose name index has an `n`-bit prefix; returns the bytes it takes.
    fn literal(&mut self, b: &[u8], n: u32) -> Option<usize> {
        let (name, mut used) = hpack_int(b, n)?;
        if name == 0 {
            used += self.string(b.get(used..)?)?;
        }
        Some(used + self.string(b.get(used..)?)?)
    }

    fn block(&mut self, mut b: &[u8]) {
        self.blocks += 1;
        self.block_bytes += b.len();
        while let Some(&first) = b.first() {
            let used = if first & 0x80 != 0 {
                hpack_int(b, 7).map(|(index, used)| {
                    *if index <= 61 { &mut self.indexed_static } else { &mut self.indexed_dynamic } += 1;
                    used
                })
            } else if first & 0x40 != 0 {
                self.literal_inserted += 1;
                self.literal(b, 6)
            } else if first & 0x20 != 0 {
                self.size_updates += 1;
                hpack_int(b, 5).map(|(_, used)| used)
            } else {
                self.literal_not_inserted += 1;
                self.literal(b, 4)
            };
            match used.and_then(|n| b.get(n..)) {
                Some(rest) => b = rest,
                None => return,
            }
        }
    }

    /// Walks the frames of one direction (client bytes start with the preface) and counts the
    /// header blocks of its HEADERS frames (the recorded ones fit in one frame each).
    fn direction(&mut self, mut bytes: &[u8]) {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        bytes = bytes.strip_prefix(PREFACE).unwrap_or(bytes);
        while let Some((head, rest)) = bytes.split_first_chunk::<9>() {
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let Some(payload) = rest.get(..len) else { return };
            let (kind, flags) = (head[3], head[4]);
            if kind == 0x1 {
                let mut block = payload;
                if flags & 0x8 != 0 {
                    let pad = usize::from(block.first().copied().unwrap_or(0));
                    block = block.get(1..block.len().saturating_sub(pad)).unwrap_or_default();
                }
                if flags & 0x20 != 0 {
                    block = block.get(5..).unwrap_or_default();
                }
                self.block(block);
            }
            bytes = &rest[len..];
        }
    }
}

/// Prints what one recording holds.
fn describe(label: &str, recorded: &[Vec<(Side, Bytes)>]) {
    let mut census = HpackCensus::default();
    for runs in recorded {
        for side in [Side::Client, Side::Server] {
            let bytes: Vec<u8> =
                runs.iter().filter(|(s, _)| *s == side).flat_map(|(_, b)| b.iter().copied()).collect();
            census.direction(&bytes);
        }
    }
    println!(
        "{label}: {} header blocks, {:.1} bytes each on average; field lines: {} static-indexed, {} \
         dynamic-indexed, {} literal inserted into the table, {} literal not inserted, {} size updates; \
         {} Huffman-coded strings, {} plain",
        census.blocks,
        census.block_bytes as f64 / census.blocks.max(1) as f64,
        census.indexed_static,
        census.indexed_dynamic,
        census.literal_inserted,
        census.literal_not_inserted,
        census.size_updates,
        census.huffman_strings,
        census.plain_strings,
    );
}

/// The non-zero loss counters of an assembler, or "none".
fn losses(a: &Assembler) -> String {
    let listed: Vec<String> = a
        .drops()
        .list()
        .into_iter()
        .filter(|(.., n)| *n > 0)
        .map(|(_, name, n)| format!("{name}={n}"))
        .collect();
    if listed.is_empty() { "none".to_string() } else { listed.join(" ") }
}

fn assembler() -> Assembler {
    Assembler::new(AssemblerConfig {
        flows: FlowConfig { server_ports: vec![PORT], ..FlowConfig::default() },
        ..AssemblerConfig::default()
    })
}

/// Criterion samples per benchmark.
const SAMPLES: usize = 10;

/// The (iterations, CPU seconds) of every batch criterion ran, for the summary.
#[derive(Default)]
struct Samples(RefCell<Vec<(u64, f64)>>);

impl Samples {
    fn add(&self, iters: u64, took: Duration) {
        self.0.borrow_mut().push((iters, took.as_secs_f64()));
    }

    /// Seconds per iteration over the measured samples (criterion's last [`SAMPLES`] batches,
    /// after its warm-up ones), if the benchmark ran (a filter may have skipped it).
    fn per_iteration(&self) -> Option<f64> {
        let all = self.0.borrow();
        let measured = all.get(all.len().checked_sub(SAMPLES)?..)?;
        let iters: u64 = measured.iter().map(|(n, _)| n).sum();
        let seconds: f64 = measured.iter().map(|(_, s)| s).sum();
        (iters > 0).then(|| seconds / iters as f64)
    }
}

/// Segments → exchanges for one recording; returns the rebuilt exchanges (once, outside timing).
fn rebuild(segs: &[Segment], expected: usize) -> Vec<Exchange> {
    let mut a = assembler();
    let mut out = Vec::new();
    for s in segs.iter().cloned() {
        a.push(s, &mut out);
    }
    let exchanges: Vec<Exchange> = out.into_iter().filter_map(Assembled::into_exchange).collect();
    assert_eq!(exchanges.len(), expected, "every exchange rebuilt; losses: {}", losses(&a));
    exchanges
}

/// The gRPC layer on one exchange: both bodies split and decoded, the status read.
fn grpc_layer(exchange: &Exchange) -> usize {
    let request = grpc::decode_messages(&exchange.request.headers, &exchange.request.body, DECODE_LIMIT)
        .expect("request messages");
    let response = grpc::decode_messages(&exchange.response.headers, &exchange.response.body, DECODE_LIMIT)
        .expect("response messages");
    let status =
        grpc::read_status(&exchange.response.headers, &exchange.response.trailers).expect("grpc-status");
    assert_eq!(status.code, grpc::Code(0));
    request.iter().chain(&response).map(|m| m.len()).sum()
}

/// One row of the summary.
struct Row {
    case: String,
    exchanges: usize,
    message_bytes: u64,
    wire_bytes: u64,
    seconds: f64,
}

fn bench(c: &mut Criterion) {
    let mut rows = Vec::new();
    let mut grpc_rows = Vec::new();
    let sizes = [
        ("1KiB", Plan { connections: 8, in_flight: 4, calls: 512, message: 1024 }),
        ("1MiB", Plan { connections: 4, in_flight: 2, calls: 8, message: 1 << 20 }),
    ];
    for (label, plan) in sizes {
        let exchanges = plan.connections * plan.calls;
        let recorded: Vec<Vec<(Side, Bytes)>> = record(plan)
            .into_iter()
            .map(|runs| runs.into_iter().map(|(side, bytes)| (side, Bytes::from(bytes))).collect())
            .collect();
        describe(&format!("{label} messages, HPACK"), &recorded);
        // Message payload both ways (the 5-byte prefixes excluded).
        let message_bytes = 2 * (plan.message as u64) * exchanges as u64;
        let mut rebuilt = Vec::new();
        for mss in [1448usize, 16 << 10, 64 << 10] {
            let segs = segments(&recorded, mss);
            let wire_bytes: u64 = segs.iter().map(|s| s.payload.len() as u64).sum();
            println!(
                "{label} messages, {mss} B segments: {exchanges} exchanges over {} connections, {} in flight \
                 each, {} segments, {} wire bytes per exchange",
                plan.connections,
                plan.in_flight,
                segs.len(),
                wire_bytes / exchanges as u64
            );
            if rebuilt.is_empty() {
                rebuilt = rebuild(&segs, exchanges);
            }
            let samples = Samples::default();
            let mut group = c.benchmark_group(format!("h2+hpack/{label}/mss{mss}"));
            group.throughput(Throughput::Bytes(wire_bytes));
            group
                .sample_size(SAMPLES)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3));
            group.bench_function("segments→exchanges", |b| {
                b.iter_custom(|iters| {
                    let mut took = Duration::ZERO;
                    for _ in 0..iters {
                        let (mut a, segs, mut out) = (assembler(), segs.clone(), Vec::new());
                        let start = thread_cpu_time();
                        let mut done = 0;
                        for s in segs {
                            a.push(s, &mut out);
                            done += out.len();
                            out.clear();
                        }
                        took += thread_cpu_time().saturating_sub(start);
                        assert_eq!(done, exchanges, "every exchange rebuilt; losses: {}", losses(&a));
                    }
                    samples.add(iters, took);
                    took
                })
            });
            group.finish();
            if let Some(seconds) = samples.per_iteration() {
                rows.push(Row {
                    case: format!("{label} mss {mss}"),
                    exchanges,
                    message_bytes,
                    wire_bytes,
                    seconds,
                });
            }
        }

        let samples = Samples::default();
        let mut group = c.benchmark_group(format!("grpc/{label}"));
        group.throughput(Throughput::Bytes(message_bytes));
        group
            .sample_size(SAMPLES)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        group.bench_function("decode_messages+read_status", |b| {
            b.iter_custom(|iters| {
                let start = thread_cpu_time();
                for _ in 0..iters {
                    let decoded: usize = rebuilt.iter().map(grpc_layer).sum();
                    assert_eq!(decoded as u64, message_bytes);
                }
                let took = thread_cpu_time().saturating_sub(start);
                samples.add(iters, took);
                took
            })
        });
        group.finish();
        if let Some(seconds) = samples.per_iteration() {
            grpc_rows.push((label, exchanges, message_bytes, seconds));
        }
    }
    summary(&rows, &grpc_rows);
    steady_state_heap();
}

/// The summary table, from the CPU time per iteration of each benchmark above.
fn summary(rows: &[Row], grpc_rows: &[(&str, usize, u64, f64)]) {
    if rows.is_empty() && grpc_rows.is_empty() {
        return;
    }
    println!("\nsummary (CPU time per iteration over the measured samples, one core):");
    println!(
        "{:<16} | {:>12} {:>11} {:>11} | {:>26}",
        "case", "exchanges/s", "message GB/s", "wire GiB/s", "with gRPC layer: exch/s GB/s"
    );
    let mut slowest_mib: Option<f64> = None;
    for row in rows {
        let size = row.case.split_whitespace().next().unwrap_or_default();
        let layer = grpc_rows.iter().find(|(label, ..)| *label == size);
        // The whole path: the gRPC layer's time per exchange added to the assembler's.
        let total = row.seconds + layer.map_or(0.0, |(_, n, _, s)| s * row.exchanges as f64 / *n as f64);
        let gb = row.message_bytes as f64 / total / 1e9;
        println!(
            "{:<16} | {:>12.0} {:>11.3} {:>11.3} | {:>14.0} {:>11.3}",
            row.case,
            row.exchanges as f64 / row.seconds,
            row.message_bytes as f64 / row.seconds / 1e9,
            row.wire_bytes as f64 / row.seconds / f64::from(1u32 << 30),
            row.exchanges as f64 / total,
            gb,
        );
        if size == "1MiB" {
            slowest_mib = Some(slowest_mib.map_or(gb, |s: f64| s.min(gb)));
        }
    }
    for (label, exchanges, message_bytes, seconds) in grpc_rows {
        println!(
            "gRPC layer {label:<5} | {:>12.0} {:>11.3} {:>11} | {:.0} ns per exchange",
            *exchanges as f64 / seconds,
            *message_bytes as f64 / seconds / 1e9,
            "-",
            seconds / *exchanges as f64 * 1e9
        );
    }
    if !grpc_rows.is_empty() {
        println!(
            "(the gRPC layer borrows identity-encoded messages from the body, so its cost is per message, \
             not per byte)"
        );
    }
    if let Some(gb) = slowest_mib {
        println!(
            "target ≥ 1 GB/s of message payload per core for 1 MiB messages (slowest segment size, gRPC \
             layer included): {gb:.3} GB/s, {}",
            if gb >= 1.0 { "met" } else { "not met" }
        );
    }
}

/// Heap growth per exchange on one long-lived connection, once warmed up. The recording is held
/// before the first measurement; each segment is a fresh copy of its piece, dropped once the
/// pipeline lets go of it, so the only memory that can stay is the pipeline's own.
fn steady_state_heap() {
    const WARM_UP: usize = 2_000;
    const PHASE: usize = 10_000;
    let plan = Plan { connections: 1, in_flight: 4, calls: WARM_UP + 2 * PHASE + 16, message: 1024 };
    let recorded = record(plan);
    let mut tcp = Tcp::new(0);
    let mut a = assembler();
    let mut out = Vec::with_capacity(16);
    let mut batch = Vec::with_capacity(64);
    let mut ts = 1;
    tcp.open(ts, &mut batch);
    let mut runs = recorded.first().expect("one connection").iter();
    let mut done = 0;
    let mut run_until = |a: &mut Assembler, target: usize, done: &mut usize| {
        while *done < target {
            let Some((side, bytes)) = runs.next() else { panic!("recording ends after {done} exchanges") };
            for piece in bytes.chunks(1448) {
                tcp.data(*side, &Bytes::copy_from_slice(piece), 1448, &mut ts, &mut batch);
            }
            for s in batch.drain(..) {
                a.push(s, &mut out);
            }
            *done += out.len();
            out.clear();
        }
    };
    run_until(&mut a, WARM_UP, &mut done);
    let (from, before) = (done, LIVE.load(Ordering::Relaxed));
    run_until(&mut a, WARM_UP + PHASE, &mut done);
    let middle = LIVE.load(Ordering::Relaxed);
    run_until(&mut a, WARM_UP + 2 * PHASE, &mut done);
    let after = LIVE.load(Ordering::Relaxed);
    let measured = done - from;
    println!(
        "steady state: live heap {before} -> {middle} -> {after} bytes over {measured} further exchanges \
         of one connection, 4 streams in flight ({:.3} bytes/exchange); {} bytes buffered; losses: {}",
        (after - before) as f64 / measured as f64,
        a.memory_bytes(),
        losses(&a)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
