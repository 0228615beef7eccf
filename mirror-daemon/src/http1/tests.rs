//! Framing and pairing rules, driven through the whole pipeline with segments built in memory.
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

const CISN: u32 = 1000;
const SISN: u32 = 5000;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// One TCP connection's worth of segments.
struct Conn {
    client: SocketAddr,
    server: SocketAddr,
    cseq: u32,
    sseq: u32,
    ts: u64,
    segs: Vec<Segment>,
}

impl Conn {
    fn new() -> Self {
        let mut c = Conn {
            client: addr("10.0.0.1:40000"),
            server: addr("10.0.0.2:8080"),
            cseq: CISN + 1,
            sseq: SISN + 1,
            ts: 0,
            segs: Vec::new(),
        };
        c.push_raw(true, CISN, SYN, Bytes::new(), 0);
        c.push_raw(false, SISN, SYN | ACK, Bytes::new(), 0);
        c
    }

    /// A segment acknowledging everything the other side sent before it, as TCP does.
    fn push_raw(&mut self, from_client: bool, seq: u32, flags: u8, payload: Bytes, lost: u32) {
        self.ts += 10;
        let (src, dst) = if from_client { (self.client, self.server) } else { (self.server, self.client) };
        let mut s = Segment::new(src, dst, seq, flags, payload, self.ts).with_lost(lost);
        s.ack = if from_client { self.sseq } else { self.cseq };
        self.segs.push(s);
    }

    /// Sends `bytes` from one side in segments of at most `mss` bytes.
    fn send(&mut self, from_client: bool, bytes: &[u8], mss: usize) -> &mut Self {
        for part in bytes.chunks(mss.max(1)) {
            let seq = if from_client { self.cseq } else { self.sseq };
            self.push_raw(from_client, seq, ACK, Bytes::copy_from_slice(part), 0);
            let next = seq.wrapping_add(part.len() as u32);
            if from_client { self.cseq = next } else { self.sseq = next }
        }
        self
    }

    fn client(&mut self, bytes: &str) -> &mut Self {
        self.send(true, bytes.as_bytes(), 1460)
    }

    fn server(&mut self, bytes: &str) -> &mut Self {
        self.send(false, bytes.as_bytes(), 1460)
    }

    /// `len` bytes the capture lost.
    fn lose(&mut self, from_client: bool, len: u32) -> &mut Self {
        let seq = if from_client { self.cseq } else { self.sseq };
        self.push_raw(from_client, seq, ACK, Bytes::new(), len);
        let next = seq.wrapping_add(len);
        if from_client {
            self.cseq = next
        } else {
            self.sseq = next
        }
        self
    }

    fn fin(&mut self) -> &mut Self {
        self.push_raw(true, self.cseq, FIN | ACK, Bytes::new(), 0);
        self.push_raw(false, self.sseq, FIN | ACK, Bytes::new(), 0);
        self
    }

    fn run_with(&self, http: HttpConfig) -> (Vec<Exchange>, AssemblyDrops, Assembler) {
        let cfg = AssemblerConfig {
            flows: FlowConfig { server_ports: vec![8080], limits: FlowLimits::default() },
            http,
            announce_requests: false,
            ..AssemblerConfig::default()
        };
        let mut a = Assembler::new(cfg);
        let mut out = Vec::new();
        for s in &self.segs {
            a.push(s.clone(), &mut out);
        }
        let stats = a.drops().clone();
        (out.into_iter().filter_map(Assembled::into_exchange).collect(), stats, a)
    }

    fn run(&self) -> (Vec<Exchange>, AssemblyDrops) {
        let (out, stats, a) = self.run_with(HttpConfig::default());
        assert_eq!(a.memory_bytes(), 0, "everything released after the connection ended");
        (out, stats)
    }
}

fn header<'a>(h: &'a [crate::exchange::Header], name: &str) -> Option<&'a [u8]> {
    h.iter().find(|f| f.name.eq_ignore_ascii_case(name)).map(|f| &f.value[..])
}

#[test]
fn complete_requests_are_announced_before_their_response() {
    let mut c = Conn::new();
    c.client("POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").client("GET /b HTTP/1.1\r\n\r\n");
    let mut a = Assembler::new(AssemblerConfig {
        flows: FlowConfig { server_ports: vec![8080], limits: FlowLimits::default() },
        http: HttpConfig::default(),
        announce_requests: true,
        ..AssemblerConfig::default()
    });
    let mut out = Vec::new();
    let sent = c.segs.len();
    for s in &c.segs {
        a.push(s.clone(), &mut out);
    }
    assert!(out.iter().all(|item| matches!(item, Assembled::Request(_))), "no response yet");
    let ready: Vec<_> = out.drain(..).filter_map(Assembled::into_request).collect();
    assert_eq!(ready.len(), 2, "both requests are complete");
    assert_eq!((ready[0].request.target.as_str(), &ready[0].request.body[..]), ("/a", &b"hi"[..]));
    assert_eq!(ready[1].request.target, "/b");
    assert_eq!((ready[0].id.seq, ready[1].id.seq), (0, 1));
    assert_eq!(ready[0].id.connection, ready[1].id.connection);

    c.server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx").server("HTTP/1.1 204 No Content\r\n\r\n");
    for s in &c.segs[sent..] {
        a.push(s.clone(), &mut out);
    }
    assert!(out.iter().all(|item| matches!(item, Assembled::Exchange(_))), "announced once: {out:?}");
    let out: Vec<Exchange> = out.into_iter().filter_map(Assembled::into_exchange).collect();
    assert_eq!(out.len(), 2, "{:?}", a.drops());
    assert_eq!(out[0].id, ready[0].id);
    assert_eq!(out[1].id, ready[1].id);
    assert_eq!(out[1].response.status, 204);
}

#[test]
fn content_length_request_and_response() {
    let (out, stats) = Conn::new()
        .client("POST /v1/predict HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\n\r\nhello")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .fin()
        .run();
    assert_eq!(out.len(), 1, "{stats:?}");
    let e = &out[0];
    assert_eq!(e.request.method, "POST");
    assert_eq!(e.request.target, "/v1/predict");
    assert_eq!(&e.request.body[..], b"hello");
    assert_eq!(header(&e.request.headers, "host"), Some(&b"m"[..]));
    assert_eq!(e.response.status, 200);
    assert_eq!(e.response.reason, "OK");
    assert_eq!(&e.response.body[..], b"ok");
    assert_eq!(e.client, addr("10.0.0.1:40000"));
    assert_eq!(stats, AssemblyDrops { requests_seen: 1, ..AssemblyDrops::default() });
}

#[test]
fn chunked_bodies_with_trailers_are_dechunked() {
    let (out, _) = Conn::new()
        .client("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n")
        .fin()
        .run();
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].request.body[..], b"abcde");
    assert_eq!(out[0].request.trailers.len(), 1);
    assert_eq!(header(&out[0].request.trailers, "x-sum"), Some(&b"9"[..]));
    assert_eq!(&out[0].response.body[..], b"0123456789");
}

#[test]
fn one_byte_segments_give_the_same_exchange() {
    let req = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let resp = "HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nxyz";
    let mut c = Conn::new();
    c.send(true, req.as_bytes(), 1).send(false, resp.as_bytes(), 1).fin();
    let (out, _) = c.run();
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].request.body[..], b"abc");
    assert_eq!(out[0].response.status, 201);
    assert_eq!(&out[0].response.body[..], b"xyz");
}

#[test]
fn request_without_body_and_keep_alive_sequence() {
    let (out, _) = Conn::new()
        .client("GET /a HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")
        .client("GET /b HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nB")
        .fin()
        .run();
    let pairs: Vec<_> = out.iter().map(|e| (e.request.target.as_str(), e.response.status)).collect();
    assert_eq!(pairs, [("/a", 200), ("/b", 404)]);
}

#[test]
fn expect_continue_interim_response_is_skipped() {
    let (out, _) = Conn::new()
        .client("POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .server("HTTP/1.1 100 Continue\r\n\r\n")
        .client("abc")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .fin()
        .run();
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].request.body[..], b"abc");
    assert_eq!(out[0].response.status, 200);
    // The final response's first byte, not the 100's.
    assert!(out[0].timing.response_first_ns > out[0].timing.request_last_ns);
}

#[test]
fn head_204_and_304_responses_have_no_body() {
    let (out, stats) = Conn::new()
        .client(
            "HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\nGET /z HTTP/1.1\r\n\r\n",
        )
        .server("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
        .server("HTTP/1.1 204 No Content\r\n\r\n")
        .server("HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")
        .fin()
        .run();
    let got: Vec<_> =
        out.iter().map(|e| (e.request.target.as_str(), e.response.status, e.response.body.len())).collect();
    assert_eq!(got, [("/h", 200, 0), ("/n", 204, 0), ("/c", 304, 0), ("/z", 200, 1)], "{stats:?}");
}

#[test]
fn close_delimited_response_ends_at_fin() {
    let (out, _) = Conn::new()
        .client("GET / HTTP/1.0\r\n\r\n")
        .server("HTTP/1.0 200 OK\r\n\r\nall of ")
        .server("this until close")
        .fin()
        .run();
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].response.body[..], b"all of this until close");
    assert_eq!(out[0].request.version, HttpVersion::Http10);
}

#[test]
fn pipelined_requests_pair_first_in_first_out() {
    let (out, _) = Conn::new()
        .client(
            "GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nxxGET /3 HTTP/1.1\r\n\r\n",
        )
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 201 OK\r\nContent-Length: 1\r\n\r\n2")
        .server("HTTP/1.1 202 OK\r\nContent-Length: 1\r\n\r\n3")
        .fin()
        .run();
    let got: Vec<_> =
        out.iter().map(|e| (e.request.target.clone(), e.response.status, e.response.body.clone())).collect();
    assert_eq!(
        got,
        [
            ("/1".to_string(), 200, Bytes::from_static(b"1")),
            ("/2".to_string(), 201, Bytes::from_static(b"2")),
            ("/3".to_string(), 202, Bytes::from_static(b"3"))
        ]
    );
}

#[test]
fn response_captured_before_its_request_still_pairs() {
    let mut c = Conn::new();
    c.server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").client("GET /late HTTP/1.1\r\n\r\n").fin();
    let (out, _) = c.run();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/late");
}

#[test]
fn connection_close_completes_then_ends_and_counts_unanswered() {
    let (out, stats) = Conn::new()
        .client("GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
        .fin()
        .run();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/1");
    assert_eq!(stats.unanswered_request, 1);
}

#[test]
fn upgrade_and_connect_stop_parsing() {
    let (out, stats) = Conn::new()
        .client("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .server("HTTP/1.1 101 Switching Protocols\r\n\r\n\u{1}\u{2}binary")
        .fin()
        .run();
    assert!(out.is_empty());
    assert_eq!(stats.unsupported_upgrade, 1);
    assert!(stats.desync_skipped_bytes > 0);

    let (out, stats) = Conn::new().client("CONNECT host:443 HTTP/1.1\r\n\r\n").fin().run();
    assert!(out.is_empty());
    assert_eq!(stats.unsupported_connect, 1);

    // A 101 without an `Upgrade` request is stopped at the response.
    let (out, stats) = Conn::new()
        .client("GET / HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 101 Switching Protocols\r\n\r\n")
        .fin()
        .run();
    assert!(out.is_empty());
    assert_eq!(stats.unsupported_upgrade, 1);
}

#[test]
fn header_limit_stops_and_body_limit_drops_one_exchange() {
    let http = HttpConfig { max_header_bytes: 64, max_body_bytes: 4, ..HttpConfig::default() };
    let mut c = Conn::new();
    c.client("POST /big HTTP/1.1\r\nContent-Length: 5\r\n\r\n12345")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        .client("GET /small HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ny")
        .fin();
    let (out, stats, _) = c.run_with(http.clone());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/small");
    assert_eq!(stats.body_too_large, 1);

    let mut c = Conn::new();
    c.client(&format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(100))).fin();
    let (out, stats, _) = c.run_with(http);
    assert!(out.is_empty());
    assert_eq!(stats.header_too_large, 1);
}

#[test]
fn gap_inside_a_known_length_body_drops_only_that_exchange() {
    let (out, stats) = Conn::new()
        .client("POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nab")
        .lose(true, 6)
        .client("ij")
        .server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe")
        .lose(false, 2)
        .server("o\r\n0\r\n\r\n")
        .client("GET /b HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        .fin()
        .run();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/b");
    assert_eq!(&out[0].response.body[..], b"b");
    assert_eq!(stats.gap, 1);
    assert_eq!(stats.gap_desync_connections, 0);
}

#[test]
fn gap_in_a_head_stops_the_connection() {
    let (out, stats) = Conn::new()
        .client("GET /a HTTP/1.1\r\n\r\nGET /b HT")
        .lose(true, 8)
        .client("\r\nGET /c HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc")
        .fin()
        .run();
    // The client stream is captured first here, so the gap stops the connection while /a still
    // waits for its response: /a and the partial /b are dropped, and nothing after the gap pairs.
    assert!(out.is_empty());
    assert_eq!(stats.gap_desync_connections, 1);
    assert_eq!(stats.gap, 2);
    assert!(stats.desync_skipped_bytes > 0);
}

#[test]
fn mid_stream_connection_is_not_parsed() {
    let mut c = Conn::new();
    c.segs.clear(); // no SYNs seen
    c.client("GET /a HTTP/1.1\r\n\r\n").server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let (out, stats, _) = c.run_with(HttpConfig::default());
    assert!(out.is_empty());
    assert_eq!(stats.mid_stream_connections, 1);
    assert!(stats.mid_stream_skipped_bytes > 0);
}

#[test]
fn malformed_and_unpaired_messages_are_counted() {
    let (out, stats) = Conn::new().client("NOT HTTP AT ALL\r\n\r\n").fin().run();
    assert!(out.is_empty());
    assert_eq!(stats.malformed_request, 1);

    let (out, stats) = Conn::new().server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").fin().run();
    assert!(out.is_empty());
    assert_eq!(stats.unpaired_response, 1);

    let (out, stats) =
        Conn::new().client("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").fin().run();
    assert!(out.is_empty());
    assert_eq!(stats.malformed_request, 1);
}

#[test]
fn timestamps_and_latency_come_from_the_segments() {
    let (out, _) = Conn::new()
        .client("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n")
        .client("ab")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        .server("ok")
        .fin()
        .run();
    // SYN 10, SYN-ACK 20, then one segment every 10 ns.
    let t = out[0].timing;
    assert_eq!(
        (t.request_first_ns, t.request_last_ns, t.response_first_ns, t.response_last_ns),
        (30, 40, 50, 60)
    );
    assert_eq!(out[0].production_latency_ns(), 20);
    assert_eq!(out[0].time_to_first_byte_ns(), 10);
}

#[test]
fn reset_counts_pending_exchanges() {
    let mut c = Conn::new();
    c.client("GET / HTTP/1.1\r\n\r\n");
    c.push_raw(false, c.sseq, mirror_common::tcp_flags::RST, Bytes::new(), 0);
    let (out, stats, a) = c.run_with(HttpConfig::default());
    assert!(out.is_empty());
    assert_eq!(stats.reset_with_pending, 1);
    assert_eq!(a.memory_bytes(), 0);
}

/// A chunked event stream as OpenAI-compatible servers send it, each event in its own chunk.
fn event_stream_chunks(events: &[&str]) -> String {
    let mut out = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for e in events {
        let event = format!("data: {e}\n\n");
        out.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
    }
    out
}

#[test]
fn an_event_stream_whose_done_event_was_seen_is_complete_without_its_last_chunk() {
    // The official `openai` client resets the connection as soon as it reads `[DONE]`.
    for flags in [mirror_common::tcp_flags::RST, FIN | ACK] {
        let mut c = Conn::new();
        c.client("POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}");
        c.server(&event_stream_chunks(&[r#"{"choices":[{"index":0,"delta":{"content":"hi"}}]}"#, "[DONE]"]));
        c.push_raw(true, c.cseq, flags, Bytes::new(), 0);
        c.push_raw(false, c.sseq, flags, Bytes::new(), 0);
        let (out, stats) = c.run();
        assert_eq!(out.len(), 1, "{stats:?}");
        assert!(std::str::from_utf8(&out[0].response.body).unwrap().ends_with("data: [DONE]\n\n"));
        assert_eq!(stats, AssemblyDrops { requests_seen: 1, ..AssemblyDrops::default() });
    }
}

#[test]
fn an_event_stream_cut_before_its_end_event_is_counted_as_cut() {
    for cut in [0, 1] {
        let mut c = Conn::new();
        c.client("POST /v1/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}");
        let mut body = event_stream_chunks(&[r#"{"choices":[{"index":0,"text":"a"}]}"#, "[DONE]"]);
        // Without the `[DONE]` chunk, or with it short of its empty line.
        body.truncate(body.len() - if cut == 0 { 21 } else { 4 });
        c.server(&body);
        c.push_raw(true, c.cseq, mirror_common::tcp_flags::RST, Bytes::new(), 0);
        let (out, stats) = c.run();
        assert!(out.is_empty());
        assert_eq!(stats, AssemblyDrops { requests_seen: 1, sse_stream_cut: 1, ..Default::default() });
    }
    // A gzip stream is read as far as it goes (here: not gzip at all, so no end event); a coding
    // that cannot be read before its end is cut like any response.
    for (coding, drops) in [
        ("gzip", AssemblyDrops { requests_seen: 1, sse_stream_cut: 1, ..Default::default() }),
        ("br", AssemblyDrops { requests_seen: 1, reset_with_pending: 1, ..Default::default() }),
    ] {
        let mut c = Conn::new();
        c.client("GET /s HTTP/1.1\r\n\r\n");
        c.server(&format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: {coding}\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"));
        c.push_raw(true, c.cseq, mirror_common::tcp_flags::RST, Bytes::new(), 0);
        let (out, stats) = c.run();
        assert!(out.is_empty());
        assert_eq!(stats, drops, "{coding}");
    }
}

#[test]
fn final_answer_to_expect_before_the_body_stops_the_connection() {
    let (out, stats) = Conn::new()
        .client("POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .server("HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
        .client("GET /next HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .fin()
        .run();
    assert!(out.is_empty(), "the next request must not be taken for the body");
    assert_eq!(stats.expect_ambiguous, 1);
}

#[test]
fn missing_server_syn_drops_the_requests_already_seen() {
    let mut c = Conn::new();
    c.segs.remove(1); // the SYN-ACK was not captured
    c.client("GET /a HTTP/1.1\r\n\r\n").server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").fin();
    let (out, stats) = c.run();
    assert!(out.is_empty());
    assert_eq!(stats.mid_stream_connections, 1);
    assert_eq!(stats.gap, 1);
}

fn resync() -> HttpConfig {
    HttpConfig { resync_mid_stream: true, ..HttpConfig::default() }
}

/// A keep-alive connection already open: the capture starts inside a response body.
fn joined_mid_response() -> Conn {
    let mut c = Conn::new();
    c.segs.clear(); // no SYNs seen
    c.server("bcdefghij") // the tail of a response to a request before the capture
        .client("GET /a HTTP/1.1\r\nHost: m\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    c
}

#[test]
fn resync_picks_a_mid_stream_connection_up_at_the_next_request() {
    let mut c = joined_mid_response();
    c.client("POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
        .client("xyz")
        .server("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        .fin();
    let (out, stats, a) = c.run_with(resync());
    let targets: Vec<_> = out.iter().map(|e| (e.request.target.as_str(), e.response.status)).collect();
    assert_eq!(targets, [("/a", 200), ("/b", 201)]);
    assert_eq!(out[1].request.body, "xyz");
    assert_eq!(stats.mid_stream_connections, 1);
    assert_eq!(stats.mid_stream_skipped_bytes, 9, "only the old response's tail");
    assert_eq!(stats.mid_stream_resync_failed, 0);
    assert_eq!(a.memory_bytes(), 0);
    // Off by default: the same traffic is not parsed.
    let (out, _, _) = joined_mid_response().fin().run_with(HttpConfig::default());
    assert!(out.is_empty());
}

#[test]
fn resync_starts_in_the_middle_of_a_request_body_without_taking_it_for_a_request() {
    let mut c = Conn::new();
    c.segs.clear();
    // A body chunk, a head split over two segments, then its answer.
    c.client("\"inputs\": [1, 2]}")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .send(true, b"POST /c HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 10)
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc")
        .fin();
    let (out, stats, _) = c.run_with(resync());
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].request.target.as_str(), &out[0].response.body[..]), ("/c", &b"c"[..]));
    assert_eq!(stats.mid_stream_resync_failed, 0);
}

#[test]
fn resync_judges_response_bytes_by_sequence_even_when_they_arrive_first() {
    // The two hooks may deliver the directions out of order: here the answer's segment comes
    // before the request's, whose acknowledgement still points at it.
    let mut c = joined_mid_response();
    c.fin();
    let request = c.segs.iter().position(|s| s.payload.starts_with(b"GET /a")).expect("request");
    let answer = c.segs.remove(request + 1);
    c.segs.insert(request, answer);
    let (out, stats, _) = c.run_with(resync());
    assert_eq!(out.len(), 1, "{stats:?}");
    assert_eq!(out[0].response.body, "ok");
}

#[test]
fn resync_gives_up_when_the_next_response_does_not_start_a_message() {
    // A pipelining client: /a was sent while the previous response was still being written.
    let mut c = Conn::new();
    c.segs.clear();
    c.client("GET /a HTTP/1.1\r\n\r\n")
        .server("tail of an older response")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .client("GET /b HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 204 No Content\r\n\r\n")
        .fin();
    let (out, stats, _) = c.run_with(resync());
    assert_eq!(stats.mid_stream_resync_failed, 1, "/a is dropped, never mispaired");
    let pairs: Vec<_> = out.iter().map(|e| (e.request.target.as_str(), e.response.status)).collect();
    assert_eq!(pairs, [("/b", 204)], "picked up again at the next request");
}

#[test]
fn resync_pairs_by_sequence_numbers_whatever_the_timestamps_of_retransmissions() {
    // Joined mid-stream. /b's segment is captured first as a late retransmission (its original
    // comes later and is a duplicate), and /c's answer too, before /c itself: timestamps say /c's
    // answer is the first server byte after /b. /b's acknowledgement says where /b's answer is.
    let mut c = Conn::new();
    c.segs.clear();
    c.server("xyz") // the tail of an older response
        .client("GET /b HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 204 No Content\r\n\r\n")
        .client("GET /c HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc")
        .fin();
    let find =
        |c: &Conn, start: &[u8]| c.segs.iter().position(|s| s.payload.starts_with(start)).expect("segment");
    let mut late_b = c.segs[find(&c, b"GET /b")].clone();
    late_b.ts_ns = 1_000;
    let b = find(&c, b"GET /b");
    c.segs.insert(b, late_b);
    let mut late_c_answer = c.segs[find(&c, b"HTTP/1.1 200")].clone();
    late_c_answer.ts_ns = 1_000;
    let after_b_answer = find(&c, b"HTTP/1.1 204") + 1;
    c.segs.insert(after_b_answer, late_c_answer);
    let (out, stats, a) = c.run_with(resync());
    let pairs: Vec<_> =
        out.iter().map(|e| (e.request.target.as_str(), e.response.status, &e.response.body[..])).collect();
    assert_eq!(pairs, [("/b", 204, &b""[..]), ("/c", 200, &b"c"[..])], "{stats:?}");
    assert_eq!(stats.mid_stream_resync_failed, 0);
    assert_books(&out, &stats);
    assert_eq!(a.memory_bytes(), 0);
}

#[test]
fn resync_does_not_take_a_short_chunk_for_a_method_it_only_began() {
    // A body ends in a chunk `O` (which could begin `OPTIONS `), and the next request follows:
    // `OGET /x` is not a request, `GET /x` is.
    let mut c = Conn::new();
    c.segs.clear();
    c.client("{\"a\": 1}")
        .client("O")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        .client("GET /x HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        .fin();
    let (out, stats, _) = c.run_with(resync());
    let pairs: Vec<_> = out.iter().map(|e| (e.request.method.as_str(), &e.response.body[..])).collect();
    assert_eq!(pairs, [("GET", &b"x"[..])], "{stats:?}");
    assert_books(&out, &stats);
}

#[test]
fn resync_resumes_a_keep_alive_connection_after_a_client_gap() {
    let traffic = || {
        let mut c = Conn::new();
        c.client("GET /a HTTP/1.1\r\n\r\n")
            .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
            .client("GET /b HT")
            .lose(true, 8)
            .client("\r\n\r\n")
            .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
            .client("POST /c HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
            .server("HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nc")
            .client("GET /d HTTP/1.1\r\n\r\n")
            .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd")
            .fin();
        c
    };
    let pairs = |out: &[Exchange]| -> Vec<(String, u16, Vec<u8>)> {
        out.iter().map(|e| (e.request.target.clone(), e.response.status, e.response.body.to_vec())).collect()
    };
    let (out, stats, a) = traffic().run_with(resync());
    assert_eq!(
        pairs(&out),
        [
            ("/a".into(), 200, b"a".to_vec()),
            ("/c".into(), 201, b"c".to_vec()),
            ("/d".into(), 200, b"d".to_vec())
        ],
        "{stats:?}"
    );
    assert_eq!(out[1].request.body, "hi");
    assert_eq!((stats.gap, stats.gap_desync_connections, stats.gap_resumed_connections), (1, 1, 1));
    assert_eq!(stats.mid_stream_resync_failed, 0);
    assert_books(&out, &stats);
    assert_eq!(a.memory_bytes(), 0);
    // Without the option, as before: nothing after the gap is parsed.
    let (out, stats, _) = traffic().run_with(HttpConfig::default());
    assert_eq!(pairs(&out), [("/a".into(), 200, b"a".to_vec())]);
    assert_eq!((stats.gap, stats.gap_resumed_connections), (1, 0));
    assert_books(&out, &stats);
}

#[test]
fn resync_resumes_after_a_gap_in_a_response_head_and_never_mispairs() {
    let mut c = Conn::new();
    c.client("GET /a HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nCont")
        .lose(false, 6)
        .server("Length: 3\r\n\r\naaa")
        .client("GET /b HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        .fin();
    let (out, stats, _) = c.run_with(resync());
    let pairs: Vec<_> = out.iter().map(|e| (e.request.target.as_str(), &e.response.body[..])).collect();
    assert_eq!(pairs, [("/b", &b"b"[..])], "/a's answer was cut; /b pairs with its own");
    assert_eq!((stats.gap, stats.gap_resumed_connections), (1, 1));
    assert_books(&out, &stats);
}

#[test]
fn a_hole_in_an_answer_captured_before_its_request_keeps_its_place_after_a_gap() {
    // A gap stops /a; /b's answer, with a hole in its body, is captured before /b: once resumed
    // at /b, the hole still drops /b (its body is not the bytes around the hole run together),
    // and /c pairs with its own answer.
    let mut c = Conn::new();
    c.client("GET /a HT").lose(true, 4).client("\r\n\r\n");
    c.server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    c.client("GET /b HTTP/1.1\r\n\r\n");
    let b = c.segs.len() - 1;
    c.server("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nbb").lose(false, 2).server("bb");
    let request_b = c.segs.remove(b);
    c.segs.push(request_b);
    c.client("GET /c HTTP/1.1\r\n\r\n").server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc").fin();
    let (out, stats, a) = c.run_with(resync());
    let pairs: Vec<_> = out.iter().map(|e| (e.request.target.as_str(), &e.response.body[..])).collect();
    assert_eq!(pairs, [("/c", &b"c"[..])], "{stats:?}");
    assert_eq!((stats.gap, stats.gap_resumed_connections), (2, 1), "/a and /b");
    assert_books(&out, &stats);
    assert_eq!(a.memory_bytes(), 0);
}

#[test]
fn a_second_gap_after_resuming_is_resumed_from_too() {
    let mut c = Conn::new();
    c.client("GET /a HT").lose(true, 4).client("\r\n\r\n");
    c.server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    c.client("GET /b HTTP/1.1\r\n\r\n").server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
    c.client("GET /c HT").lose(true, 4).client("\r\n\r\n");
    c.server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    c.client("GET /d HTTP/1.1\r\n\r\n").server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd").fin();
    let (out, stats, _) = c.run_with(resync());
    let targets: Vec<_> = out.iter().map(|e| e.request.target.as_str()).collect();
    assert_eq!(targets, ["/b", "/d"], "{stats:?}");
    assert_eq!((stats.gap, stats.gap_desync_connections, stats.gap_resumed_connections), (2, 2, 2));
    assert_books(&out, &stats);
}

#[test]
fn an_answer_that_does_not_start_where_its_request_acknowledged_stops_a_wrong_pick_up() {
    // A pipelining client, joined inside /a's body: /b was sent before /a's answer, so it
    // acknowledges that answer's start and is paired with it (what resynchronisation cannot
    // tell). /c, sent after /b's answer, acknowledges its own answer's start, not where first in,
    // first out would put it: the pick-up was wrong, so /c is dropped instead of paired with /b's
    // answer, and /d is picked up again correctly.
    let mut c = Conn::new();
    c.segs.clear();
    c.client("\"inputs\": [1, 2]}")
        .client("GET /b HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        .client("GET /c HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc")
        .client("GET /d HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd")
        .fin();
    let (out, stats, a) = c.run_with(resync());
    let pairs: Vec<_> = out.iter().map(|e| (e.request.target.as_str(), &e.response.body[..])).collect();
    assert_eq!(pairs, [("/b", &b"a"[..]), ("/d", &b"d"[..])], "{stats:?}");
    assert_eq!(stats.mid_stream_resync_failed, 1, "/c");
    assert_books(&out, &stats);
    assert_eq!(a.memory_bytes(), 0);
}

/// The books: every request the framing saw start is an exchange or counted once, in requests.
fn assert_books(out: &[Exchange], stats: &AssemblyDrops) {
    assert_eq!(stats.requests_seen, out.len() as u64 + stats.requests_lost(), "{stats:?}");
}

#[test]
fn requests_before_garbage_are_still_paired_and_the_garbage_is_counted_once() {
    let garbage = "\x16\x03\x01\x02 not http\r\n\r\n";
    // The garbage is captured before the answers: the two requests wait for theirs, the server's
    // 400 for the garbage is skipped, and so is everything the client sends after it.
    let (out, stats) = Conn::new()
        .client("POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        .client("GET /b HTTP/1.1\r\n\r\n")
        .client(garbage)
        .client("GET /after HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        .server("HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        .fin()
        .run();
    let targets: Vec<&str> = out.iter().map(|e| e.request.target.as_str()).collect();
    assert_eq!(targets, ["/a", "/b"], "{stats:?}");
    assert_eq!((out[0].response.status, out[1].response.status), (200, 204));
    assert_eq!((stats.requests_seen, stats.malformed_request, stats.framing_error_connections), (3, 1, 1));
    assert_eq!((stats.unpaired_response, stats.unanswered_request), (0, 0), "{stats:?}");
    assert!(stats.desync_skipped_bytes > 0);
    assert_books(&out, &stats);

    // Answered before the garbage came: the same counts.
    let (out, stats) = Conn::new()
        .client("GET /a HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        .client(garbage)
        .server("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        .fin()
        .run();
    assert_eq!(out.len(), 1, "{stats:?}");
    assert_eq!((stats.requests_seen, stats.malformed_request, stats.framing_error_connections), (2, 1, 1));
    assert_eq!(stats.unpaired_response, 0);
    assert_books(&out, &stats);

    // The connection ends before the request before the garbage is answered: counted once.
    let (out, stats) = Conn::new().client("GET /a HTTP/1.1\r\n\r\n").client(garbage).fin().run();
    assert!(out.is_empty());
    assert_eq!((stats.malformed_request, stats.unanswered_request), (1, 1), "{stats:?}");
    assert_books(&out, &stats);
}

#[test]
fn the_books_balance_whatever_ends_a_request() {
    let cases: Vec<(&str, Conn)> = vec![
        ("clean", {
            let mut c = Conn::new();
            c.client("GET /a HTTP/1.1\r\n\r\n").server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").fin();
            c
        }),
        ("gap in a body", {
            let mut c = Conn::new();
            c.client("POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nab");
            c.lose(true, 8);
            c.client("GET /b HTTP/1.1\r\n\r\n");
            c.server(
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            );
            c.fin();
            c
        }),
        ("gap in a head", {
            let mut c = Conn::new();
            c.client("GET /a HTTP/1.1\r\n\r\nGET /b HT");
            c.lose(true, 5);
            c.client("\r\n\r\nGET /c HTTP/1.1\r\n\r\n");
            c.fin();
            c
        }),
        ("unanswered and half a head", {
            let mut c = Conn::new();
            c.client("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nHo").fin();
            c
        }),
        ("unpaired response", {
            let mut c = Conn::new();
            c.server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").fin();
            c
        }),
        ("reset mid-request", {
            let mut c = Conn::new();
            c.client("GET /a HTTP/1.1\r\n\r\n").server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            c.client("POST /b HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc");
            c.push_raw(true, c.cseq, mirror_common::tcp_flags::RST, Bytes::new(), 0);
            c
        }),
    ];
    for (name, c) in cases {
        let (out, stats, a) = c.run_with(HttpConfig::default());
        assert_eq!(a.requests_in_progress(), 0, "{name}: every connection ended");
        assert_eq!(stats.requests_seen, out.len() as u64 + stats.requests_lost(), "{name}: {stats:?}");
    }
}

#[test]
fn requests_of_connections_open_at_exit_are_counted_once() {
    let mut c = Conn::new();
    c.client("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    c.server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let cfg = AssemblerConfig {
        flows: FlowConfig { server_ports: vec![8080], limits: FlowLimits::default() },
        ..AssemblerConfig::default()
    };
    let mut a = Assembler::new(cfg);
    let mut out = Vec::new();
    for s in &c.segs {
        a.push(s.clone(), &mut out);
    }
    assert_eq!((out.len(), a.requests_in_progress()), (1, 1), "/b waits for its answer");
    a.finish(&mut out);
    assert_eq!((out.len(), a.requests_in_progress(), a.connections()), (1, 0, 0));
    let stats = a.drops();
    assert_eq!((stats.requests_seen, stats.open_at_exit), (2, 1), "{stats:?}");
    assert_eq!(stats.requests_seen, out.len() as u64 + stats.requests_lost());
}

#[test]
fn a_shed_connection_is_ended_counted_and_picked_up_again_once_unshed() {
    use crate::capture::shed::segment_bucket;
    let cfg = AssemblerConfig {
        flows: FlowConfig { server_ports: vec![8080], limits: FlowLimits::default() },
        http: resync(),
        ..AssemblerConfig::default()
    };
    let mut a = Assembler::new(cfg);
    let mut out = Vec::new();
    let mut c = Conn::new();
    c.client("GET /a HTTP/1.1\r\n\r\n");
    for s in c.segs.drain(..) {
        a.push(s, &mut out);
    }
    let bucket = segment_bucket(&Segment::new(c.client, c.server, 0, 0, Bytes::new(), 0));
    // The level rises over the connection's bucket: it ends now, its request counted as shed.
    a.set_shed_level(bucket + 1, c.ts, &mut out);
    assert_eq!((a.drops().shed_cut_connections, a.drops().shed_with_pending), (1, 1));
    assert_eq!(a.connections(), 0);
    // Its answer was already in the ring: dropped before reassembly, not a new connection.
    c.server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
    for s in c.segs.drain(..) {
        a.push(s, &mut out);
    }
    assert_eq!(a.drops().shed_late_segments, 1);
    assert_eq!(a.connections(), 0);
    // Unshed: the connection comes back mid-stream, counted as one shedding had cut, and is
    // picked up at a request whose answer provably follows it.
    a.set_shed_level(0, c.ts, &mut out);
    c.client("GET /b HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        .client("GET /c HTTP/1.1\r\n\r\n")
        .server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc")
        .fin();
    for s in c.segs.drain(..) {
        a.push(s, &mut out);
    }
    assert_eq!(a.drops().shed_resumed_connections, 1);
    let exchanges: Vec<Exchange> = out.into_iter().filter_map(Assembled::into_exchange).collect();
    let pairs: Vec<_> = exchanges.iter().map(|e| (e.request.target.as_str(), &e.response.body[..])).collect();
    // /b's answer is the first server byte seen again, and /b's acknowledgement points at it.
    assert_eq!(pairs, [("/b", &b"b"[..]), ("/c", &b"c"[..])], "{:?}", a.drops());
    assert_eq!(a.drops().mid_stream_resync_failed, 0);
}

/// `start` (a start line and fields) made a head of `fields` header fields in all, padded with
/// `X-Pad` to exactly `len` bytes.
fn head_of(start: &str, fields: usize, len: usize) -> String {
    let mut head = start.to_string();
    let given = start.matches("\r\n").count() - 1;
    for i in 0..fields - given - 1 {
        head.push_str(&format!("X-Field-{i}: value-{i}\r\n"));
    }
    let pad = len - head.len() - "X-Pad: \r\n\r\n".len();
    head.push_str(&format!("X-Pad: {}\r\n\r\n", "p".repeat(pad)));
    assert_eq!(head.len(), len);
    head
}

/// Heads are found and read in one parse, whether one segment holds them or they come a few
/// bytes at a time: at the size and count limits they are read whole, past them the connection
/// stops with the same counters whatever the segmentation.
#[test]
fn heads_split_across_segments_and_heads_over_the_limits() {
    let http = HttpConfig { max_header_bytes: 256, max_headers: 8, ..HttpConfig::default() };
    let request = format!("{}hello", head_of("POST /in HTTP/1.1\r\nContent-Length: 5\r\n", 8, 256));
    let response = format!("{}ok", head_of("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", 8, 256));
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let get = "GET /next HTTP/1.1\r\n\r\n";
    // (what the client sends, what the server sends, exchanges, header_too_large, malformed
    // requests, malformed responses)
    let cases: Vec<(String, String, usize, u64, u64, u64)> = vec![
        // At both limits, followed by a second exchange on the same connection.
        (format!("{request}{get}"), format!("{response}{ok}"), 2, 0, 0, 0),
        // One byte over the size limit, on either side.
        (head_of("GET /big HTTP/1.1\r\n", 2, 257), ok.into(), 0, 1, 0, 0),
        (get.into(), head_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", 2, 257), 0, 1, 0, 0),
        // One field over the count limit, on either side.
        (head_of("GET /many HTTP/1.1\r\n", 9, 250), ok.into(), 0, 1, 0, 0),
        (get.into(), head_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", 9, 250), 0, 1, 0, 0),
        // Not a head at all.
        ("GET / HTTP/1.1\r\nno colon here\r\n\r\n".into(), ok.into(), 0, 0, 1, 0),
        (get.into(), "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n".into(), 0, 0, 0, 1),
    ];
    for (client, server, exchanges, too_large, malformed_request, malformed_response) in cases {
        let mut seen = None;
        for mss in [1, 2, 3, 7, 64, 255, 1460] {
            let mut c = Conn::new();
            c.send(true, client.as_bytes(), mss).send(false, server.as_bytes(), mss).fin();
            let (out, stats, a) = c.run_with(http.clone());
            let what = format!("{client:?} / {server:?} in segments of {mss}");
            assert_eq!(a.memory_bytes(), 0, "{what}");
            assert_eq!(out.len(), exchanges, "{what}");
            assert_eq!(
                (stats.header_too_large, stats.malformed_request, stats.malformed_response),
                (too_large, malformed_request, malformed_response),
                "{what}"
            );
            if let Some(first) = out.first() {
                assert_eq!(&first.request.body[..], b"hello", "{what}");
                assert_eq!(first.request.headers.len(), 8, "{what}");
                assert_eq!(header(&first.request.headers, "x-field-5"), Some(&b"value-5"[..]), "{what}");
                assert_eq!(header(&first.response.headers, "x-field-0"), Some(&b"value-0"[..]), "{what}");
                assert_eq!(&first.response.body[..], b"ok", "{what}");
                assert_eq!(out[1].request.target, "/next", "{what}");
            }
            // Every counter the same whatever the segmentation, but the bytes skipped once the
            // connection stopped: those are the rest of the segment it stopped in.
            assert!(stats.desync_skipped_bytes <= (client.len() + server.len()) as u64, "{what}");
            let counters = format!("{:?}", AssemblyDrops { desync_skipped_bytes: 0, ..stats });
            assert_eq!(seen.get_or_insert_with(|| counters.clone()), &counters, "{what}");
        }
    }
}
