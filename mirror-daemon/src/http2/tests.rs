//! Streams rebuilt through the whole pipeline (segments → assembler → exchanges), with frames and
//! header blocks written by hand: exact pairing by stream id, out-of-order completion, resets,
//! Trailers-Only answers, limits, and what a mid-stream start can and cannot prove.
use std::net::SocketAddr;

use bytes::Bytes;
use mirror_common::tcp_flags::{ACK, FIN, SYN};

use crate::{
    assembler::{Assembler, AssemblerConfig},
    capture::Segment,
    drops::AssemblyDrops,
    exchange::{Assembled, Exchange, HttpVersion},
    flows::{FlowConfig, FlowLimits},
    framing::HttpConfig,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literal fields without indexing (new names): decodable by any decoder, and
/// touching no table.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0x00);
        for s in [name, value] {
            assert!(s.len() < 127);
            b.push(s.len() as u8);
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

/// A literal field *with* incremental indexing (inserted into the dynamic table).
fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x40];
    for s in [name, value] {
        b.push(s.len() as u8);
        b.extend_from_slice(s.as_bytes());
    }
    b
}

fn request_block(path: &str) -> Vec<u8> {
    block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "10.0.0.2:8081"),
        ("content-type", "application/grpc"),
    ])
}

fn response_block(status: &str) -> Vec<u8> {
    block(&[(":status", status), ("content-type", "application/grpc")])
}

fn grpc_message(payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// One TCP connection on port 8081; each direction's bytes are cut into segments of `mss`.
struct Conn {
    client: SocketAddr,
    server: SocketAddr,
    seq: [u32; 2],
    ts: u64,
    segs: Vec<Segment>,
}

impl Conn {
    fn new(syn: bool) -> Self {
        let mut c = Conn {
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:8081".parse().unwrap(),
            seq: [1001, 5001],
            ts: 0,
            segs: Vec::new(),
        };
        if syn {
            c.raw(true, SYN, Bytes::new(), 0);
            c.raw(false, SYN | ACK, Bytes::new(), 0);
        }
        c
    }

    fn raw(&mut self, from_client: bool, flags: u8, payload: Bytes, lost: u32) {
        self.ts += 10;
        let (src, dst) = if from_client { (self.client, self.server) } else { (self.server, self.client) };
        let i = usize::from(!from_client);
        let seq = if flags & SYN != 0 { self.seq[i] - 1 } else { self.seq[i] };
        self.segs.push(Segment::new(src, dst, seq, flags, payload.clone(), self.ts).with_lost(lost));
        self.seq[i] = self.seq[i].wrapping_add(payload.len() as u32 + lost);
    }

    fn send(&mut self, from_client: bool, bytes: &[u8], mss: usize) -> &mut Self {
        for part in bytes.chunks(mss) {
            self.raw(from_client, ACK, Bytes::copy_from_slice(part), 0);
        }
        self
    }

    fn client(&mut self, bytes: &[u8]) -> &mut Self {
        self.send(true, bytes, 1460)
    }

    fn server(&mut self, bytes: &[u8]) -> &mut Self {
        self.send(false, bytes, 1460)
    }

    fn lose(&mut self, from_client: bool, len: u32) -> &mut Self {
        self.raw(from_client, ACK, Bytes::new(), len);
        self
    }

    fn fin(&mut self) -> &mut Self {
        self.raw(true, FIN | ACK, Bytes::new(), 0);
        self.raw(false, FIN | ACK, Bytes::new(), 0);
        self
    }

    fn run(&self) -> (Vec<Assembled>, AssemblyDrops) {
        self.run_with(HttpConfig::default())
    }

    fn run_with(&self, http: HttpConfig) -> (Vec<Assembled>, AssemblyDrops) {
        let mut a = Assembler::new(AssemblerConfig {
            flows: FlowConfig { server_ports: vec![8081], limits: FlowLimits::default() },
            http,
            announce_requests: true,
            ..AssemblerConfig::default()
        });
        let mut out = Vec::new();
        for s in &self.segs {
            a.push(s.clone(), &mut out);
        }
        a.tick(u64::MAX / 2, &mut out);
        assert_eq!(a.memory_bytes(), 0, "everything released");
        (out, a.drops().clone())
    }
}

fn exchanges(items: &[Assembled]) -> Vec<Exchange> {
    items.iter().cloned().filter_map(Assembled::into_exchange).collect()
}

fn nonzero(drops: &AssemblyDrops) -> Vec<(&'static str, u64)> {
    drops.list().into_iter().filter(|l| l.2 > 0).map(|l| (l.1, l.2)).collect()
}

fn start(c: &mut Conn) {
    c.client(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).server(&frame(
        SETTINGS,
        0,
        0,
        &[0, 1, 0, 0, 0x10, 0],
    ));
}

#[test]
fn interleaved_streams_pair_by_stream_id_whatever_order_they_complete_in() {
    let mut c = Conn::new(true);
    start(&mut c);
    c.client(&frame(HEADERS, END_HEADERS, 1, &request_block("/pkg.Svc/A")))
        .client(&frame(HEADERS, END_HEADERS, 3, &request_block("/pkg.Svc/B")))
        .client(&frame(DATA, 0, 1, &grpc_message(b"a-part1")))
        .client(&frame(DATA, END_STREAM, 3, &grpc_message(b"b")))
        .client(&frame(DATA, END_STREAM, 1, b"-part2"))
        // Stream 3 answers first, with trailers; stream 1 second.
        .server(&frame(HEADERS, END_HEADERS, 3, &response_block("200")))
        .server(&frame(HEADERS, END_HEADERS, 1, &response_block("200")))
        .server(&frame(DATA, 0, 3, &grpc_message(b"answer-b")))
        .server(&frame(DATA, 0, 1, &grpc_message(b"answer-a")))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &block(&[("grpc-status", "0")])))
        .server(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &block(&[("grpc-status", "5"), ("grpc-message", "nope")]),
        ))
        .fin();
    let (items, drops) = c.run();
    assert_eq!(nonzero(&drops), [], "nothing lost");
    // Requests are announced at their END_STREAM (3 before 1), exchanges at the response's.
    let order: Vec<String> = items
        .iter()
        .map(|i| match i {
            Assembled::Request(r) => format!("req {}", r.request.target),
            Assembled::Exchange(e) => format!("ex {}", e.request.target),
        })
        .collect();
    assert_eq!(order, ["req /pkg.Svc/B", "req /pkg.Svc/A", "ex /pkg.Svc/B", "ex /pkg.Svc/A"]);
    let ex = exchanges(&items);
    let (b, a) = (&ex[0], &ex[1]);
    assert_eq!((a.stream_id, b.stream_id), (Some(1), Some(3)));
    assert_eq!((a.id.seq, b.id.seq), (1, 3));
    assert_eq!(&a.request.body[..], [&grpc_message(b"a-part1")[..], b"-part2"].concat());
    assert_eq!(&a.response.body[..], grpc_message(b"answer-a"));
    assert_eq!(&b.response.body[..], grpc_message(b"answer-b"));
    assert_eq!(a.response.trailers[1].name, "grpc-message");
    assert_eq!(&b.response.trailers[0].value[..], b"0");
    assert_eq!(
        (a.request.version, a.response.version, a.response.status),
        (HttpVersion::Http2, HttpVersion::Http2, 200)
    );
    assert_eq!(a.request.method, "POST");
    assert_eq!(a.request.headers[0].name, "host", ":authority becomes host");
    assert!(a.timing.request_last_ns < a.timing.response_last_ns);
}

#[test]
fn trailers_only_and_resets() {
    let mut c = Conn::new(true);
    start(&mut c);
    c.client(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("/pkg.Svc/Missing")))
        .client(&frame(HEADERS, END_HEADERS, 3, &request_block("/pkg.Svc/Cancelled")))
        .client(&frame(RST_STREAM, 0, 3, &8u32.to_be_bytes()))
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &request_block("/pkg.Svc/Refused")))
        .server(&frame(RST_STREAM, 0, 5, &7u32.to_be_bytes()))
        // Trailers-Only: the status in the only HEADERS, which ends the stream.
        .server(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &block(&[(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "12")]),
        ))
        .fin();
    let (items, drops) = c.run();
    let ex = exchanges(&items);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].request.target, "/pkg.Svc/Missing");
    assert!(ex[0].response.body.is_empty() && ex[0].response.trailers.is_empty());
    assert_eq!(ex[0].response.headers[1].name, "grpc-status");
    assert_eq!(nonzero(&drops), [("h2_reset_cancel", 1), ("h2_reset_refused_stream", 1)]);
}

#[test]
fn an_event_stream_cancelled_after_its_done_event_is_complete_and_one_cut_before_is_counted() {
    let sse = block(&[(":status", "200"), ("content-type", "text/event-stream")]);
    let event = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    let mut c = Conn::new(true);
    start(&mut c);
    c.client(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("/v1/chat/completions")))
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &request_block("/v1/chat/completions")))
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &request_block("/v1/chat/completions")))
        .server(&frame(HEADERS, END_HEADERS, 1, &sse))
        .server(&frame(HEADERS, END_HEADERS, 3, &sse))
        .server(&frame(HEADERS, END_HEADERS, 5, &sse))
        .server(&frame(DATA, 0, 1, event))
        .server(&frame(DATA, 0, 1, b"data: [DONE]\n\n"))
        .server(&frame(DATA, 0, 3, event))
        .server(&frame(DATA, 0, 5, event))
        .server(&frame(DATA, 0, 5, b"data: [DONE]\n\n"))
        // The client cancels 1 and 3 as soon as it has read what it wanted; 5 stays open.
        .client(&frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()))
        .client(&frame(RST_STREAM, 0, 3, &8u32.to_be_bytes()))
        .fin();
    let (items, drops) = c.run();
    let ex = exchanges(&items);
    assert_eq!(ex.iter().map(|e| e.stream_id).collect::<Vec<_>>(), [Some(1), Some(5)]);
    assert!(ex[0].response.body.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(nonzero(&drops), [("sse_stream_cut", 1)]);
}

#[test]
fn goaway_drops_the_streams_it_did_not_process_and_close_counts_the_rest() {
    let mut c = Conn::new(true);
    start(&mut c);
    for stream in [1, 3, 5] {
        c.client(&frame(HEADERS, END_HEADERS | END_STREAM, stream, &request_block("/x")));
    }
    let mut goaway = 1u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    c.server(&frame(GOAWAY, 0, 0, &goaway))
        .server(&frame(HEADERS, END_HEADERS, 1, &response_block("200")))
        .fin();
    let (items, drops) = c.run();
    assert!(exchanges(&items).is_empty());
    assert_eq!(nonzero(&drops), [("truncated_response", 1), ("h2_goaway_unprocessed", 2)]);
}

#[test]
fn a_gap_in_data_drops_that_stream_only_and_a_gap_in_a_header_forgets_the_table() {
    let mut c = Conn::new(true);
    start(&mut c);
    let data = frame(DATA, END_STREAM, 1, &grpc_message(&[7; 100]));
    c.client(&frame(HEADERS, END_HEADERS, 1, &request_block("/a")))
        .client(&data[..50])
        .lose(true, 20)
        .client(&data[70..])
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &request_block("/b")))
        .server(&frame(HEADERS, END_HEADERS, 1, &response_block("200")))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &response_block("200")))
        .fin();
    let (items, drops) = c.run();
    let ex = exchanges(&items);
    assert_eq!(ex.iter().map(|e| e.request.target.as_str()).collect::<Vec<_>>(), ["/b"]);
    // The bytes of stream 1 after the gap are counted as skipped.
    assert_eq!(nonzero(&drops), [("gap", 1), ("desync_skipped_bytes", 44)]);

    // A header block hit by a gap: that stream is lost and so is the client's table; a later
    // block referring to an entry inserted before the gap cannot be decoded, one with literals can.
    let mut c = Conn::new(true);
    start(&mut c);
    let mut first = request_block("/a");
    first.extend(indexed_literal("x-tenant", "t1"));
    c.client(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &first)).server(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &response_block("200"),
    ));
    let lost = frame(HEADERS, END_HEADERS | END_STREAM, 3, &request_block("/lost"));
    c.client(&lost[..12]).lose(true, 8).client(&lost[20..]);
    let mut refers = request_block("/refers");
    refers.push(0x80 | 62); // the x-tenant entry, inserted before the loss
    c.client(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &refers))
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 7, &request_block("/fresh")))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &response_block("200")))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 7, &response_block("200")))
        .fin();
    let (items, drops) = c.run();
    let targets: Vec<String> = exchanges(&items).into_iter().map(|e| e.request.target).collect();
    assert_eq!(targets, ["/a", "/fresh"]);
    assert_eq!(exchanges(&items)[0].request.headers.last().map(|h| h.name.as_str()), Some("x-tenant"));
    assert_eq!(nonzero(&drops), [("gap", 1), ("h2_unresolved_headers", 1)]);
}

#[test]
fn a_connection_seen_mid_stream_is_picked_up_at_streams_it_can_prove() {
    // The capture starts after the preface, SETTINGS and a first stream that inserted x-tenant.
    let mut c = Conn::new(false);
    let mut refers = request_block("/old-entry");
    refers.push(0x80 | 62);
    // Each frame in a segment of its own, as a client writing each call does.
    c.client(&frame(DATA, END_STREAM, 1, &grpc_message(b"tail of an older stream")))
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &refers))
        .client(&frame(HEADERS, END_HEADERS, 5, &request_block("/new")))
        .client(&frame(DATA, END_STREAM, 5, &grpc_message(b"q")));
    c.server(&frame(DATA, 0, 1, b"old answer bytes"))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(&[("grpc-status", "0")])))
        .server(&frame(HEADERS, END_HEADERS, 3, &response_block("200")))
        .server(&frame(HEADERS, END_HEADERS, 5, &response_block("200")))
        .server(&frame(DATA, 0, 5, &grpc_message(b"a")))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &block(&[("grpc-status", "0")])))
        .fin();
    let (items, drops) = c.run();
    let ex = exchanges(&items);
    assert_eq!(ex.len(), 1, "{items:?}");
    assert_eq!(ex[0].request.target, "/new");
    assert_eq!(&ex[0].response.body[..], grpc_message(b"a"));
    assert_eq!(drops.mid_stream_connections, 1);
    assert_eq!(drops.h2_unresolved_headers, 1, "stream 3 referred to an entry from before capture");
}

#[test]
fn stream_and_body_limits_are_counted_not_fatal() {
    let mut c = Conn::new(true);
    start(&mut c);
    for stream in (1..=9).step_by(2) {
        c.client(&frame(HEADERS, END_HEADERS, stream, &request_block("/x")));
    }
    c.client(&frame(DATA, END_STREAM, 1, &[1; 64])).fin();
    let http = HttpConfig { max_streams: 3, max_body_bytes: 32, ..HttpConfig::default() };
    let (items, drops) = c.run_with(http);
    assert!(items.is_empty());
    assert_eq!(nonzero(&drops), [("body_too_large", 1), ("truncated_request", 2), ("h2_stream_limit", 2)]);
}

#[test]
fn upgrade_h2c_goes_on_in_http2_with_the_answer_on_stream_1() {
    let mut c = Conn::new(true);
    // curl --http2 http://...: the request asks to upgrade; the client's preface follows the 101
    // (here captured before it, since the hooks can reorder the directions).
    c.client(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
        .client(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &block(&[(":method", "GET"), (":scheme", "http"), (":path", "/second")])))
        .server(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        .server(&frame(SETTINGS, 0, 0, &[]))
        .server(&frame(HEADERS, END_HEADERS, 1, &block(&[(":status", "200"), ("content-type", "application/json")])))
        .server(&frame(DATA, END_STREAM, 1, b"{\"ready\":true}"))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &block(&[(":status", "204")])))
        .fin();
    let (items, drops) = c.run();
    assert_eq!(nonzero(&drops), []);
    let announced: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Assembled::Request(r) => Some(r.id.seq),
            _ => None,
        })
        .collect();
    let ex = exchanges(&items);
    assert_eq!(ex.len(), 2, "{items:?}");
    let first = &ex[0];
    assert_eq!(
        (first.request.target.as_str(), first.request.version),
        ("/v2/health/ready", HttpVersion::Http11)
    );
    assert_eq!(
        (first.response.version, first.response.status, first.stream_id),
        (HttpVersion::Http2, 200, Some(1))
    );
    assert_eq!(&first.response.body[..], b"{\"ready\":true}");
    assert_eq!(ex[1].request.target, "/second");
    // Each exchange joins the request announced for it, and ids never collide.
    assert_eq!(announced, [first.id.seq, ex[1].id.seq]);
    assert_ne!(first.id.seq, ex[1].id.seq);
}

#[test]
fn a_declined_upgrade_goes_on_in_http1() {
    let mut c = Conn::new(true);
    c.client(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        .client(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .server(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        .server(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        .fin();
    let (items, drops) = c.run();
    assert_eq!(nonzero(&drops), []);
    let ex = exchanges(&items);
    let pairs: Vec<(&str, &[u8])> =
        ex.iter().map(|e| (e.request.target.as_str(), &e.response.body[..])).collect();
    assert_eq!(pairs, [("/a", &b"a"[..]), ("/b", &b"b"[..])]);
    assert!(ex.iter().all(|e| e.response.version == HttpVersion::Http11));
}

#[test]
fn ten_thousand_open_streams_are_bounded_and_counted() {
    let mut c = Conn::new(true);
    start(&mut c);
    // Streams that open and never end, and a CONTINUATION-free flood of header blocks.
    let mut burst = Vec::new();
    for stream in (1..20_000u32).step_by(2) {
        burst.extend(frame(HEADERS, END_HEADERS, stream, &request_block("/open")));
        if burst.len() > 60_000 {
            c.client(&burst);
            burst.clear();
        }
    }
    c.client(&burst).fin();
    let mut a = Assembler::new(AssemblerConfig {
        flows: FlowConfig { server_ports: vec![8081], limits: FlowLimits::default() },
        ..AssemblerConfig::default()
    });
    let mut out = Vec::new();
    let mut peak = 0;
    for s in &c.segs {
        a.push(s.clone(), &mut out);
        peak = peak.max(a.memory_bytes());
    }
    a.tick(u64::MAX / 2, &mut out);
    let drops = a.drops();
    assert!(out.is_empty());
    assert_eq!(drops.h2_stream_limit, 10_000 - 1024, "beyond the 1024 tracked");
    assert_eq!(drops.truncated_request, 1024, "the tracked ones ended with the connection");
    assert!(peak < 4 << 20, "memory stays bounded: {peak} bytes at most");
    assert_eq!(a.memory_bytes(), 0);
}

#[test]
fn frames_embedded_in_a_payload_seen_mid_stream_are_dropped_once_a_later_frame_disproves_them() {
    // The capture starts inside the DATA payload of stream 9 (a tunnel, say), which carries frames
    // of another HTTP/2 connection: among them a complete request on stream 7. The server is
    // answering the real stream 7, opened before capture began. Found frame boundaries line up,
    // the embedded request decodes, and pairing it with the real answer would be a wrong exchange.
    let mut c = Conn::new(false);
    let window_update = frame(WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
    c.client(&window_update)
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 7, &request_block("/embedded")))
        .client(&frame(PING, 0, 0, &[1; 8]))
        .client(&window_update)
        // The rest of the real DATA frame of stream 9, then its next frame: stream 9 was opened
        // before capture began, so stream 7 cannot have been opened after it.
        .client(&frame(DATA, 0, 9, b"tunnelled bytes"));
    c.server(&frame(PING, 0, 0, &[2; 8]))
        .server(&frame(HEADERS, END_HEADERS, 7, &response_block("200")))
        .server(&frame(DATA, 0, 7, &grpc_message(b"the real answer of stream 7")))
        .server(&frame(PING, 0, 0, &[3; 8]))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 7, &block(&[("grpc-status", "0")])))
        .fin();
    let (items, drops) = c.run();
    assert!(exchanges(&items).is_empty(), "{:?}", exchanges(&items));
    assert_eq!(drops.h2_mid_stream_disproved, 1);
    assert_eq!(drops.h2_framing_error_connections, 1);

    // Streams of a connection joined mid-stream that are consistent with ids only growing are
    // rebuilt: a stream opened before capture began (9) goes on, a new one (11) is opened after.
    let mut c = Conn::new(false);
    c.client(&frame(DATA, 0, 9, &[5; 40]))
        .client(&frame(DATA, 0, 9, &[5; 40]))
        .client(&frame(DATA, 0, 9, &[5; 40]))
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 11, &request_block("/new")))
        .client(&frame(DATA, 0, 9, &[5; 40]))
        .client(&frame(WINDOW_UPDATE, 0, 9, &1000u32.to_be_bytes()));
    c.server(&frame(PING, 0, 0, &[2; 8]))
        .server(&frame(PING, 0, 0, &[2; 8]))
        .server(&frame(HEADERS, END_HEADERS, 11, &response_block("200")))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 11, &block(&[("grpc-status", "0")])))
        .fin();
    let (items, drops) = c.run();
    assert_eq!(exchanges(&items).iter().map(|e| e.request.target.as_str()).collect::<Vec<_>>(), ["/new"]);
    assert_eq!(drops.h2_mid_stream_disproved, 0);
    // A request head on an id below a stream already in use cannot open a stream either.
    let mut c = Conn::new(false);
    c.client(&frame(DATA, 0, 9, &[5; 40]))
        .client(&frame(DATA, 0, 9, &[5; 40]))
        .client(&frame(DATA, 0, 9, &[5; 40]))
        .client(&frame(HEADERS, END_HEADERS | END_STREAM, 7, &request_block("/embedded")))
        .client(&frame(DATA, 0, 9, &[5; 40]));
    c.server(&frame(PING, 0, 0, &[2; 8]))
        .server(&frame(PING, 0, 0, &[2; 8]))
        .server(&frame(HEADERS, END_HEADERS, 7, &response_block("200")))
        .server(&frame(HEADERS, END_HEADERS | END_STREAM, 7, &block(&[("grpc-status", "0")])))
        .fin();
    let (items, _) = c.run();
    assert!(exchanges(&items).is_empty(), "{:?}", exchanges(&items));
}
