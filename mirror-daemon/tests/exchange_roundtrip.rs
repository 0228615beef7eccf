//! Property: random HTTP/1.1 conversations, serialised to TCP segments and then cut, reordered,
//! duplicated and overlapped, come out of the [`Assembler`] exactly as they went in. With capture
//! losses injected, whatever comes out is still exactly one of the originals, correctly paired, and
//! every missing exchange shows up in a drop counter.
use std::{collections::HashMap, net::SocketAddr};

use bytes::Bytes;
use mirror_common::tcp_flags::{ACK, FIN, SYN};
use mirror_daemon::{
    assembler::{Assembler, AssemblerConfig},
    capture::Segment,
    exchange::{Assembled, Exchange, ExchangeId, Header, Request, Response},
    flows::{FlowConfig, FlowLimits},
    framing::HttpConfig,
};
use proptest::prelude::*;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "HEAD", "DELETE"];
const STATUSES: [(u16, &str); 6] = [
    (200, "OK"),
    (201, "Created"),
    (204, "No Content"),
    (304, "Not Modified"),
    (404, "Not Found"),
    (500, "Oops"),
];

#[derive(Clone, Debug)]
struct ExSpec {
    method: usize,
    req_len: usize,
    req_chunks: Option<Vec<usize>>,
    status: usize,
    resp_len: usize,
    resp_chunks: Option<Vec<usize>>,
}

#[derive(Clone, Debug)]
struct ConnSpec {
    exchanges: Vec<ExSpec>,
    depth: usize,
    mss: usize,
    client_isn: u32,
    server_isn: u32,
    /// The last response is delimited by the end of the connection.
    close_delimited_last: bool,
}

fn body_len() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0usize..200, 1 => 0usize..65_536]
}

fn chunks() -> impl Strategy<Value = Option<Vec<usize>>> {
    prop::option::of(prop::collection::vec(1usize..20_000, 1..6))
}

fn ex_spec() -> impl Strategy<Value = ExSpec> {
    (0..METHODS.len(), body_len(), chunks(), 0..STATUSES.len(), body_len(), chunks()).prop_map(
        |(method, req_len, req_chunks, status, resp_len, resp_chunks)| ExSpec {
            method,
            req_len,
            req_chunks,
            status,
            resp_len,
            resp_chunks,
        },
    )
}

fn conn_spec() -> impl Strategy<Value = ConnSpec> {
    (
        prop::collection::vec(ex_spec(), 1..=5),
        1usize..=4,
        prop::sample::select(vec![50usize, 333, 1460, 16_384]),
        any::<u32>(),
        prop_oneof![any::<u32>(), Just(u32::MAX - 100)],
        any::<bool>(),
    )
        .prop_map(|(exchanges, depth, mss, client_isn, server_isn, close_delimited_last)| ConnSpec {
            exchanges,
            depth,
            mss,
            client_isn,
            server_isn,
            close_delimited_last,
        })
}

fn pattern(len: usize, salt: usize) -> Bytes {
    (0..len).map(|i| (i.wrapping_mul(31).wrapping_add(salt) % 251) as u8).collect::<Vec<u8>>().into()
}

fn header(name: &str, value: &str) -> Header {
    Header { name: name.to_string(), value: Bytes::copy_from_slice(value.as_bytes()) }
}

/// Head and body bytes on the wire for a message with `headers` (framing fields appended here).
fn serialise(
    start: &str,
    headers: &mut Vec<Header>,
    body: &Bytes,
    chunks: &Option<Vec<usize>>,
    framed: bool,
) -> Vec<u8> {
    let mut trailers = Vec::new();
    match chunks {
        Some(_) if framed => {
            headers.push(header("Transfer-Encoding", "chunked"));
            trailers.push(header("X-Trailer", "t"));
        }
        None if framed => headers.push(header("Content-Length", &body.len().to_string())),
        _ => {}
    }
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers.iter() {
        out.extend_from_slice(format!("{}: ", h.name).as_bytes());
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    match chunks {
        Some(sizes) if framed => {
            let mut rest = &body[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
        }
        _ => out.extend_from_slice(body),
    }
    out
}

/// The expected exchanges of one connection and its two byte streams, one entry per pipelined batch.
struct Built {
    expected: Vec<Exchange>,
    batches: Vec<(Vec<u8>, Vec<u8>)>,
}

fn build(c: usize, spec: &ConnSpec, client: SocketAddr, server: SocketAddr) -> Built {
    let mut expected = Vec::new();
    let mut batches = Vec::new();
    let n = spec.exchanges.len();
    for (b, batch) in spec.exchanges.chunks(spec.depth).enumerate() {
        let (mut cbytes, mut sbytes) = (Vec::new(), Vec::new());
        for (k, ex) in batch.iter().enumerate() {
            let i = b * spec.depth + k;
            let method = METHODS[ex.method];
            let target = format!("/c{c}/r{i}");
            let has_req_body = !matches!(method, "GET" | "HEAD");
            let req_body = if has_req_body { pattern(ex.req_len, i) } else { Bytes::new() };
            let mut req_headers = vec![header("Host", "model"), header("X-Id", &target)];
            let req_chunks = if has_req_body { ex.req_chunks.clone() } else { None };
            cbytes.extend(serialise(
                &format!("{method} {target} HTTP/1.1"),
                &mut req_headers,
                &req_body,
                &req_chunks,
                has_req_body,
            ));
            let req_trailers = if req_chunks.is_some() { vec![header("X-Trailer", "t")] } else { vec![] };

            let (status, reason) = STATUSES[ex.status];
            let last = i + 1 == n;
            let close_delimited = last && spec.close_delimited_last;
            let no_body = method == "HEAD" || matches!(status, 204 | 304);
            let mut resp_headers = vec![header("X-For", &target)];
            if close_delimited {
                resp_headers.push(header("Connection", "close"));
            }
            let resp_chunks = if no_body || close_delimited { None } else { ex.resp_chunks.clone() };
            let wire_body =
                if matches!(status, 204 | 304) { Bytes::new() } else { pattern(ex.resp_len, i + 7) };
            // HEAD answers carry the length of the body they do not send.
            let mut s = serialise(
                &format!("HTTP/1.1 {status} {reason}"),
                &mut resp_headers,
                &wire_body,
                &resp_chunks,
                !close_delimited && !matches!(status, 204 | 304),
            );
            let resp_body = if no_body {
                let head_end = s.windows(4).position(|w| w == b"\r\n\r\n").map_or(s.len(), |p| p + 4);
                s.truncate(head_end);
                Bytes::new()
            } else {
                wire_body
            };
            sbytes.extend(s);
            let resp_trailers =
                if resp_chunks.is_some() && !no_body { vec![header("X-Trailer", "t")] } else { vec![] };
            expected.push(Exchange {
                id: ExchangeId::default(),
                stream_id: None,
                client,
                server,
                request: Request {
                    method: method.to_string(),
                    target,
                    version: Default::default(),
                    headers: req_headers,
                    body: req_body,
                    trailers: req_trailers,
                },
                response: Response {
                    status,
                    reason: reason.to_string(),
                    version: Default::default(),
                    headers: resp_headers,
                    body: resp_body,
                    arrivals: Default::default(),
                    trailers: resp_trailers,
                },
                timing: Default::default(),
            });
        }
        batches.push((cbytes, sbytes));
        if spec.close_delimited_last && expected.len() == n {
            break;
        }
    }
    Built { expected, batches }
}

/// Small deterministic generator for the network's misbehaviour.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Chaos {
    /// Reordering, duplicates and overlaps only: everything must come out exactly.
    Clean,
    /// Also lost ranges and dropped segments, and more retransmissions.
    Lossy,
    /// No handshake, and each connection's segments before a random point are not captured (a
    /// capture started on open keep-alive connections); otherwise as `Clean`, minus the
    /// retransmissions.
    MidStream,
}

struct Wire {
    segments: Vec<Segment>,
    expected: HashMap<SocketAddr, Vec<Exchange>>,
}

fn wire(conns: &[ConnSpec], seed: u64, chaos: Chaos) -> Wire {
    let mut rng = Rng(seed | 1);
    let server: SocketAddr = "10.1.0.1:8080".parse().expect("address");
    let mut head = Vec::new();
    let mut per_conn: Vec<Vec<Segment>> = Vec::new();
    let mut expected = HashMap::new();
    let mut ts = 0u64;
    for (c, spec) in conns.iter().enumerate() {
        let client: SocketAddr = format!("10.2.0.{}:{}", c + 1, 40_000 + c).parse().expect("address");
        let built = build(c, spec, client, server);
        expected.insert(client, built.expected);
        ts += 1;
        if chaos != Chaos::MidStream {
            head.push(Segment::new(client, server, spec.client_isn, SYN, Bytes::new(), ts));
            let mut syn_ack = Segment::new(server, client, spec.server_isn, SYN | ACK, Bytes::new(), ts);
            syn_ack.ack = spec.client_isn.wrapping_add(1);
            head.push(syn_ack);
        }
        let mut segs = Vec::new();
        // Where each batch's first request starts in `segs`.
        let mut batch_starts = Vec::new();
        let (mut cseq, mut sseq) = (spec.client_isn.wrapping_add(1), spec.server_isn.wrapping_add(1));
        let mut streams: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        // Per side, where each batch ends in its stream and what its segments acknowledged.
        let mut batch_ends: [Vec<(usize, u32)>; 2] = [Vec::new(), Vec::new()];
        for (cbytes, sbytes) in &built.batches {
            batch_starts.push(segs.len());
            for (from_client, bytes) in [(true, cbytes), (false, sbytes)] {
                // Each side acknowledges everything the other sent before: the client sends a
                // batch once the previous answers arrived, the server answers a batch once it
                // arrived.
                let ack = if from_client { sseq } else { cseq };
                let (src, dst, seq) =
                    if from_client { (client, server, &mut cseq) } else { (server, client, &mut sseq) };
                streams[usize::from(!from_client)].extend_from_slice(bytes);
                let end = streams[usize::from(!from_client)].len();
                batch_ends[usize::from(!from_client)].push((end, ack));
                let bytes = Bytes::copy_from_slice(bytes);
                for start in (0..bytes.len()).step_by(spec.mss) {
                    let part = bytes.slice(start..(start + spec.mss).min(bytes.len()));
                    ts += 1;
                    let len = part.len() as u32;
                    let mut s = Segment::new(src, dst, *seq, ACK, part, ts);
                    s.ack = ack;
                    if len > 8 && rng.below(6) == 0 {
                        // The kernel's split of a large segment into two records.
                        let k = 1 + rng.below(u64::from(len) - 1) as usize;
                        let mut a = s.clone();
                        a.payload = s.payload.slice(..k);
                        let mut b = s.clone();
                        b.offset = k as u32;
                        b.payload = s.payload.slice(k..);
                        segs.push(a);
                        segs.push(b);
                    } else {
                        segs.push(s);
                    }
                    *seq = seq.wrapping_add(len);
                }
            }
        }
        ts += 1;
        let mut fin = Segment::new(client, server, cseq, FIN | ACK, Bytes::new(), ts);
        fin.ack = sseq;
        segs.push(fin);
        let mut fin = Segment::new(server, client, sseq, FIN | ACK, Bytes::new(), ts);
        fin.ack = cseq;
        segs.push(fin);
        if chaos == Chaos::MidStream {
            // The capture starts at a random segment: exchanges whose request started earlier are
            // not expected (batches are single exchanges here: no pipelining).
            let cut = rng.below(segs.len() as u64 + 1) as usize;
            segs.drain(..cut);
            let kept: Vec<Exchange> = expected[&client]
                .iter()
                .zip(&batch_starts)
                .filter(|&(_, &start)| start >= cut)
                .map(|(e, _)| e.clone())
                .collect();
            expected.insert(client, kept);
            per_conn.push(segs);
            continue;
        }
        // Retransmissions covering arbitrary ranges (overlapping several original segments), with
        // the connection's last timestamp, inserted anywhere: late, and often delivered before the
        // originals they repeat. TCP retransmits only bytes not acknowledged yet, so a range stays
        // within one batch and carries that batch's acknowledgement: the answers to a batch
        // acknowledge its requests, and the client sends the next batch only after reading them.
        for _ in 0..rng.below(if chaos == Chaos::Lossy { 8 } else { 4 }) {
            let side = rng.below(2) as usize;
            let stream = &streams[side];
            if stream.is_empty() {
                continue;
            }
            let a = rng.below(stream.len() as u64) as usize;
            let Some(&(batch_end, ack)) = batch_ends[side].iter().find(|&&(end, _)| end > a) else {
                continue;
            };
            let b = (a + 1 + rng.below(3000) as usize).min(batch_end);
            let (src, dst, isn) =
                if side == 0 { (client, server, spec.client_isn) } else { (server, client, spec.server_isn) };
            let seq = isn.wrapping_add(1).wrapping_add(a as u32);
            let pos = rng.below(segs.len() as u64 + 1) as usize;
            let mut s = Segment::new(src, dst, seq, ACK, Bytes::copy_from_slice(&stream[a..b]), ts);
            s.ack = ack;
            segs.insert(pos, s);
        }
        per_conn.push(segs);
    }
    // Interleave connections, keeping each connection's order for now.
    let mut merged = Vec::new();
    let mut idx = vec![0usize; per_conn.len()];
    loop {
        let open: Vec<usize> = (0..per_conn.len()).filter(|&c| idx[c] < per_conn[c].len()).collect();
        if open.is_empty() {
            break;
        }
        let c = open[rng.below(open.len() as u64) as usize];
        merged.push(per_conn[c][idx[c]].clone());
        idx[c] += 1;
    }
    // Reorder within a bounded window, and duplicate some segments.
    let window = 8;
    for i in 0..merged.len() {
        if rng.below(4) == 0 {
            let j = (i + 1 + rng.below(window) as usize).min(merged.len() - 1);
            merged.swap(i, j);
        }
    }
    let mut out = head;
    for s in merged {
        if chaos == Chaos::Lossy && rng.below(40) == 0 {
            match rng.below(2) {
                0 => continue, // dropped: a hole that only a limit or the timeout resolves
                _ => {
                    let mut lost = s.clone();
                    lost.lost = s.payload.len() as u32;
                    lost.payload = Bytes::new();
                    out.push(lost);
                    continue;
                }
            }
        }
        if rng.below(10) == 0 {
            out.push(s.clone());
        }
        out.push(s);
    }
    if chaos == Chaos::Lossy && rng.below(5) == 0 {
        // Sometimes a handshake segment is lost too.
        let victim = rng.below(out.len().min(4) as u64) as usize;
        out.remove(victim);
    }
    Wire { segments: out, expected }
}

fn assemble(w: &Wire) -> (Vec<Exchange>, Assembler) {
    assemble_with(w, HttpConfig::default())
}

fn assemble_with(w: &Wire, http: HttpConfig) -> (Vec<Exchange>, Assembler) {
    let cfg = AssemblerConfig {
        flows: FlowConfig {
            server_ports: vec![8080],
            limits: FlowLimits { idle_timeout_ns: 1_000_000, ..FlowLimits::default() },
        },
        http,
        announce_requests: true,
        ..AssemblerConfig::default()
    };
    let mut a = Assembler::new(cfg);
    let mut items = Vec::new();
    let mut out = Vec::new();
    // Every exchange must have been announced, with the same request, no later than it is emitted:
    // the early replay of a request and the production response it is compared with never differ.
    let mut announced: HashMap<ExchangeId, Request> = HashMap::new();
    let mut check = |items: &mut Vec<Assembled>, out: &mut Vec<Exchange>| {
        for item in items.drain(..) {
            match item {
                Assembled::Request(r) => {
                    assert!(announced.insert(r.id, r.request).is_none(), "announced twice: {:?}", r.id)
                }
                Assembled::Exchange(e) => {
                    let request =
                        announced.get(&e.id).unwrap_or_else(|| panic!("exchange {:?} never announced", e.id));
                    assert_eq!(request, &e.request, "announced request differs from the exchange's");
                    out.push(e);
                }
            }
        }
    };
    for s in &w.segments {
        a.push(s.clone(), &mut items);
        check(&mut items, &mut out);
    }
    a.tick(u64::MAX / 2, &mut items);
    check(&mut items, &mut out);
    (out, a)
}

/// Whether each direction of `client`'s connection is first captured at its earliest byte: when a
/// later segment (or the FIN) comes first, the stream starts there and earlier bytes are lost.
fn in_order_start(segments: &[Segment], client: SocketAddr) -> bool {
    [true, false].into_iter().all(|from_client| {
        let mut own = segments
            .iter()
            .filter(|s| (s.src == client) == from_client && (s.src == client || s.dst == client));
        let Some(first) = own.next() else { return true };
        let start = first.seq.wrapping_add(first.offset);
        own.all(|s| s.seq.wrapping_add(s.offset).wrapping_sub(start) as i32 >= 0)
    })
}

/// Timestamps depend on the cut; everything else must match exactly.
fn strip(e: &Exchange) -> Exchange {
    let response = Response { arrivals: Default::default(), ..e.response.clone() };
    Exchange { timing: Default::default(), id: ExchangeId::default(), response, ..e.clone() }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn clean_capture_round_trips_exactly(conns in prop::collection::vec(conn_spec(), 1..=3), seed in any::<u64>()) {
        let w = wire(&conns, seed, Chaos::Clean);
        let (out, a) = assemble(&w);
        let mut got: HashMap<SocketAddr, Vec<Exchange>> = HashMap::new();
        for e in &out {
            prop_assert!(e.timing.request_first_ns <= e.timing.request_last_ns);
            prop_assert!(e.timing.response_first_ns <= e.timing.response_last_ns);
            got.entry(e.client).or_default().push(strip(e));
        }
        for (client, expected) in &w.expected {
            let got = got.remove(client).unwrap_or_default();
            prop_assert_eq!(got.len(), expected.len(), "{:?}", a.drops());
            for (g, x) in got.iter().zip(expected) {
                prop_assert_eq!(g, x);
            }
        }
        let drops: Vec<_> = a.drops().list().into_iter().filter(|&(_, _, v)| v > 0).collect();
        prop_assert!(drops.is_empty(), "{:?}", drops);
        prop_assert_eq!(a.drops().requests_seen, out.len() as u64, "every request seen is rebuilt");
        prop_assert_eq!(a.memory_bytes(), 0);
        prop_assert_eq!(a.connections(), 0);
    }

    #[test]
    fn lossy_capture_never_mispairs_and_counts_what_is_missing(
        conns in prop::collection::vec(conn_spec(), 1..=3),
        seed in any::<u64>(),
    ) {
        let w = wire(&conns, seed, Chaos::Lossy);
        let (out, a) = assemble(&w);
        let mut last_index: HashMap<SocketAddr, usize> = HashMap::new();
        for e in &out {
            let expected = &w.expected[&e.client];
            let pos = expected.iter().position(|x| x.request.target == e.request.target);
            prop_assert!(pos.is_some(), "unknown request {}", e.request.target);
            let pos = pos.unwrap_or_default();
            // Exactly the original request with exactly its own response.
            prop_assert_eq!(&strip(e), &expected[pos]);
            if let Some(&prev) = last_index.get(&e.client) {
                prop_assert!(pos > prev, "out of order or duplicated");
            }
            last_index.insert(e.client, pos);
        }
        let total: usize = w.expected.values().map(Vec::len).sum();
        let drops: u64 = a.drops().list().into_iter().map(|(_, _, v)| v).sum();
        if out.len() < total {
            prop_assert!(drops > 0, "{} of {} exchanges missing without a counter", total - out.len(), total);
        }
        // The books: every request seen is rebuilt or counted exactly once, in requests.
        let d = a.drops();
        prop_assert_eq!(a.requests_in_progress(), 0);
        prop_assert_eq!(d.requests_seen, out.len() as u64 + d.requests_lost(), "{:?}", d);
        prop_assert_eq!(a.memory_bytes(), 0);
        prop_assert_eq!(a.connections(), 0);
    }

    /// `--resync-mid-stream` on a lossy capture of clients that do not pipeline (a lost SYN makes
    /// a connection mid-stream, and holes restart its resynchronisation), with late, duplicate and
    /// overlapping retransmissions: what comes out is still only exact originals, each with its
    /// own response, in order.
    #[test]
    fn resync_on_a_lossy_capture_never_mispairs(
        conns in prop::collection::vec(conn_spec(), 1..=3),
        seed in any::<u64>(),
    ) {
        let conns: Vec<ConnSpec> = conns.into_iter().map(|c| ConnSpec { depth: 1, ..c }).collect();
        let w = wire(&conns, seed, Chaos::Lossy);
        let http = HttpConfig { resync_mid_stream: true, ..HttpConfig::default() };
        let (out, a) = assemble_with(&w, http);
        let mut last_index: HashMap<SocketAddr, usize> = HashMap::new();
        for e in &out {
            let expected = &w.expected[&e.client];
            let pos = expected.iter().position(|x| x.request.target == e.request.target);
            prop_assert!(pos.is_some(), "unknown request {}", e.request.target);
            let pos = pos.unwrap_or_default();
            prop_assert_eq!(&strip(e), &expected[pos], "{:?}", a.drops());
            if let Some(&prev) = last_index.get(&e.client) {
                prop_assert!(pos > prev, "out of order or duplicated");
            }
            last_index.insert(e.client, pos);
        }
        let d = a.drops();
        prop_assert_eq!(a.requests_in_progress(), 0);
        prop_assert_eq!(d.requests_seen, out.len() as u64 + d.requests_lost(), "{:?}", d);
        prop_assert_eq!(a.memory_bytes(), 0);
        prop_assert_eq!(a.connections(), 0);
    }

    /// `--resync-mid-stream` on connections already open when the capture starts, from clients
    /// that do not pipeline: every exchange whose request starts after the capture began comes out
    /// exactly, correctly paired — with the two directions reordered and duplicated, heads split
    /// across segments, and the capture starting anywhere, even inside a head or a body.
    #[test]
    fn mid_stream_resync_recovers_every_later_exchange_of_non_pipelining_clients(
        conns in prop::collection::vec(conn_spec(), 1..=3),
        seed in any::<u64>(),
    ) {
        let conns: Vec<ConnSpec> = conns.into_iter().map(|c| ConnSpec { depth: 1, ..c }).collect();
        let w = wire(&conns, seed, Chaos::MidStream);
        let http = HttpConfig { resync_mid_stream: true, ..HttpConfig::default() };
        let (out, a) = assemble_with(&w, http);
        let mut got: HashMap<SocketAddr, Vec<Exchange>> = HashMap::new();
        for e in &out {
            got.entry(e.client).or_default().push(strip(e));
        }
        let stats = a.drops();
        for (client, expected) in &w.expected {
            let got = got.remove(client).unwrap_or_default();
            let targets = |v: &[Exchange]| v.iter().map(|e| e.request.target.clone()).collect::<Vec<_>>();
            prop_assert!(got.len() <= expected.len(), "{:?} vs {:?}", targets(&got), targets(expected));
            // Exactly the originals, each with its own response: a suffix of what was expected.
            let suffix = &expected[expected.len() - got.len()..];
            prop_assert_eq!(targets(&got), targets(suffix), "{:?}", stats);
            for (g, x) in got.iter().zip(suffix) {
                prop_assert_eq!(g, x);
            }
            // Liveness: when each direction's first captured segment is its earliest (nothing of
            // the stream's start arrives late), at most one exchange is lost — the first request,
            // when the server's stream was first captured only after it.
            if in_order_start(&w.segments, *client) {
                prop_assert!(got.len() + 1 >= expected.len(), "{:?} of {:?}: {:?}", targets(&got), targets(expected), stats);
            }
        }
        prop_assert!(got.is_empty(), "exchanges of unknown clients");
        prop_assert_eq!(stats.requests_seen, out.len() as u64 + stats.requests_lost(), "{:?}", stats);
        prop_assert_eq!(a.memory_bytes(), 0);
        prop_assert_eq!(a.connections(), 0);
    }
}

/// What resuming after a gap buys on a lossy capture of long keep-alive connections (the
/// property tests above prove it never mispairs): connections whose handshake was captured, so
/// that only gaps, not a mid-stream start, set the two runs apart. Prints the counts
/// (`--nocapture`).
#[test]
fn resuming_after_gaps_recovers_exchanges_a_lossy_capture_loses() {
    let mut rng = Rng(0x5eed_0012);
    let (mut total, mut recovered, mut resumed, mut stopped) = (0usize, [0usize; 2], 0, 0);
    for _ in 0..100 {
        let conns: Vec<ConnSpec> = (0..3)
            .map(|_| ConnSpec {
                exchanges: (0..20)
                    .map(|_| ExSpec {
                        method: rng.below(METHODS.len() as u64) as usize,
                        req_len: rng.below(2000) as usize,
                        req_chunks: (rng.below(3) == 0).then(|| vec![1 + rng.below(700) as usize]),
                        status: rng.below(STATUSES.len() as u64) as usize,
                        resp_len: rng.below(4000) as usize,
                        resp_chunks: (rng.below(3) == 0).then(|| vec![1 + rng.below(900) as usize]),
                    })
                    .collect(),
                depth: 1,
                mss: if rng.below(2) == 0 { 333 } else { 1460 },
                client_isn: rng.next() as u32,
                server_isn: rng.next() as u32,
                close_delimited_last: false,
            })
            .collect();
        let w = wire(&conns, rng.next(), Chaos::Lossy);
        let handshake = |client: &SocketAddr| {
            let syn = |from_client: bool| {
                w.segments.iter().any(|s| s.is_syn() && (if from_client { s.src } else { s.dst }) == *client)
            };
            syn(true) && syn(false)
        };
        total += w.expected.iter().filter(|(c, _)| handshake(c)).map(|(_, x)| x.len()).sum::<usize>();
        for (run, resync_mid_stream) in [false, true].into_iter().enumerate() {
            let (out, a) = assemble_with(&w, HttpConfig { resync_mid_stream, ..HttpConfig::default() });
            for e in &out {
                let expected = &w.expected[&e.client];
                let pos = expected.iter().position(|x| x.request.target == e.request.target);
                assert_eq!(pos.map(|p| strip(&expected[p])), Some(strip(e)), "mispaired");
            }
            recovered[run] += out.iter().filter(|e| handshake(&e.client)).count();
            let d = a.drops();
            assert_eq!(d.requests_seen, out.len() as u64 + d.requests_lost(), "{d:?}");
            if resync_mid_stream {
                resumed += d.gap_resumed_connections;
                stopped += d.gap_desync_connections;
            } else {
                assert_eq!(d.gap_resumed_connections, 0, "nothing resumes without the option");
            }
        }
    }
    eprintln!(
        "exchanges on connections with their handshake: {total}; rebuilt without resuming {}, \
         with {} ({resumed} resumptions after {stopped} connection-stopping gaps)",
        recovered[0], recovered[1]
    );
    assert!(recovered[1] > recovered[0], "resuming recovered nothing: {recovered:?} of {total}");
}
