//! The rebuilding stage spread over worker threads (`assembler::shards`), 1 and 2 workers against
//! one assembler inline (`cargo xtask bench --which pipeline`).
//!
//! 256 keep-alive connections carry 1 KiB request and response bodies in MTU-sized segments,
//! interleaved as a busy node's capture is. The sharded runs route every segment as the capture
//! loop does (by connection, in batches of one ring-buffer drain) and count what comes back:
//! exchanges/s of the whole stage, routing and channels included. On a machine with fewer free
//! cores than workers + 1, the scaling shown is what those cores allow.
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mirror_common::tcp_flags::{ACK, FIN, PSH, SYN};
use mirror_daemon::{
    assembler::{
        Assembler, AssemblerConfig,
        shards::{ShardEvent, ShardedAssembler},
    },
    capture::Segment,
    flows::FlowConfig,
};

const CONNECTIONS: u16 = 256;
const EXCHANGES: usize = 16_384;
const BODY: usize = 1024;
const MSS: usize = 1460;
/// Segments per ring-buffer drain handed to the shards at once.
const DRAIN: usize = 512;

fn capture() -> Vec<Segment> {
    let server: SocketAddr = ([10, 0, 0, 2], 8080).into();
    let clients: Vec<SocketAddr> = (0..CONNECTIONS).map(|i| ([10, 0, 1, 1], 20_000 + i).into()).collect();
    let mut seqs = vec![(1u32, 1u32); clients.len()];
    let mut segs = Vec::new();
    let mut ts = 0u64;
    for client in &clients {
        ts += 1;
        segs.push(Segment::new(*client, server, 0, SYN, Bytes::new(), ts));
        segs.push(Segment::new(server, *client, 0, SYN | ACK, Bytes::new(), ts));
    }
    let body = vec![b'x'; BODY];
    let request =
        [format!("POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: {BODY}\r\n\r\n").as_bytes(), &body]
            .concat();
    let response = [
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n")
            .as_bytes(),
        &body,
    ]
    .concat();
    let (request, response) = (Bytes::from(request), Bytes::from(response));
    for n in 0..EXCHANGES {
        let c = n % clients.len();
        for (from_client, message) in [(true, &request), (false, &response)] {
            let (src, dst) = if from_client { (clients[c], server) } else { (server, clients[c]) };
            let seq = if from_client { &mut seqs[c].0 } else { &mut seqs[c].1 };
            for start in (0..message.len()).step_by(MSS) {
                ts += 1_000;
                let part = message.slice(start..(start + MSS).min(message.len()));
                let len = part.len() as u32;
                segs.push(Segment::new(src, dst, *seq, ACK | PSH, part, ts));
                *seq = seq.wrapping_add(len);
            }
        }
    }
    for (c, client) in clients.iter().enumerate() {
        let (cseq, sseq) = seqs[c];
        segs.push(Segment::new(*client, server, cseq, FIN | ACK, Bytes::new(), ts + 1));
        segs.push(Segment::new(server, *client, sseq, FIN | ACK, Bytes::new(), ts + 1));
    }
    segs
}

fn config() -> AssemblerConfig {
    AssemblerConfig {
        flows: FlowConfig { server_ports: vec![8080], ..FlowConfig::default() },
        ..AssemblerConfig::default()
    }
}

/// Feeds the capture through `workers` shards as the capture loop does; returns exchanges rebuilt.
async fn sharded(shards: &mut ShardedAssembler, segs: Vec<Segment>) -> usize {
    let mut rebuilt = 0;
    let mut segs = segs.into_iter().peekable();
    while segs.peek().is_some() {
        segs.by_ref().take(DRAIN).for_each(|s| shards.route(s));
        shards.flush().await.expect("flush");
        // What is ready now is taken, as the capture loop's select does between drains.
        while let Some(Ok(event)) = futures_now(shards) {
            if let ShardEvent::Items(items) = event {
                rebuilt += items.len();
            }
        }
    }
    shards.finish(|items| rebuilt += items.len()).await.expect("finish");
    rebuilt
}

/// The next event if one is ready without waiting.
fn futures_now(
    shards: &mut ShardedAssembler,
) -> Option<Result<ShardEvent, mirror_daemon::assembler::shards::ShardStopped>> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut next = std::pin::pin!(shards.next());
    match next.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(event) => Some(event),
        std::task::Poll::Pending => None,
    }
}

fn bench(c: &mut Criterion) {
    let segs = capture();
    let payload: u64 = segs.iter().map(|s| s.payload.len() as u64).sum();
    println!(
        "{EXCHANGES} exchanges of {BODY} B bodies over {CONNECTIONS} connections, {MSS} B segments: {} segments, {} payload bytes",
        segs.len(),
        payload
    );
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("rebuilding-shards/1KiB");
    group.throughput(Throughput::Elements(EXCHANGES as u64));
    group.sample_size(15);
    group.bench_function("inline", |b| {
        b.iter_batched(
            || (Assembler::new(config()), segs.clone(), Vec::new()),
            |(mut a, segs, mut out)| {
                let mut done = 0;
                for s in segs {
                    a.push(s, &mut out);
                    done += out.len();
                    out.clear();
                }
                assert_eq!(done, EXCHANGES);
            },
            BatchSize::LargeInput,
        )
    });
    for workers in [1, 2] {
        group.bench_function(format!("{workers}-workers"), |b| {
            b.iter_batched(
                || (ShardedAssembler::start(config(), workers).expect("start"), segs.clone()),
                |(mut shards, segs)| {
                    let rebuilt = runtime.block_on(sharded(&mut shards, segs));
                    assert_eq!(rebuilt, EXCHANGES);
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
