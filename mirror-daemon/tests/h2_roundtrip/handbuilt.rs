//! Hand-built conversations: what hyper's `h2` never writes, written by hand and checked the same
//! way — padded DATA and HEADERS, HEADERS with priority fields and PRIORITY frames, header blocks
//! split into CONTINUATION frames anywhere, SETTINGS_HEADER_TABLE_SIZE advertised at the start and
//! again later, each answered by one or two dynamic table size updates at the start of the
//! encoder's next block, every HPACK representation (indexed, incremental indexing, without
//! indexing, never indexed, indexed names), PUSH_PROMISE with the pushed response, interim 1xx
//! answers, Trailers-Only answers, resets from either end, GOAWAY, and frames of unknown type.
//!
//! A conversation is a script of per-stream events interleaved at random, each end writing only
//! after it read what the other wrote before (so the recording is causally consistent), with each
//! header block encoded when it is written, as a real encoder must.
use bytes::Bytes;
use mirror_daemon::exchange::{Header, HttpVersion, Request, Response};
use proptest::prelude::*;

use super::{
    Caused, Recording, Rng, Truth,
    frames::{
        ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, Encoder, GOAWAY, HEADERS, PADDED, PING, PREFACE,
        PRIORITY, PRIORITY_FLAG, PUSH_PROMISE, RST_STREAM, Representation, SETTINGS,
        SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_FRAME_SIZE, WINDOW_UPDATE, frame, padded, settings,
    },
    pattern,
};

const AUTHORITY: &[u8] = b"model.test:8081";
/// Fields whose values repeat across streams, so that blocks refer to table entries.
const VOCABULARY: [(&[u8], [&[u8]; 4]); 5] = [
    (b"x-tenant", [b"alpha", b"beta", b"gamma", b"delta"]),
    (b"x-model", [b"resnet-50", b"bert-base", b"llama-8b", b"t5-small"]),
    (b"accept", [b"application/grpc", b"application/json", b"*/*", b"text/plain"]),
    (b"user-agent", [b"grpc-python/1.60", b"grpc-go/1.59", b"curl/8.5", b"h2-roundtrip"]),
    (b"x-trace", [b"on", b"off", b"sampled", b"debug"]),
];

/// DATA frames of a body: payload length and padding.
pub type Body = Vec<(usize, Option<u8>)>;

#[derive(Clone, Debug)]
pub enum Answer {
    /// `interim` 1xx answers, then the final one.
    Full { interim: u8, status: u16, body: Body, trailers: bool },
    /// The status and `grpc-status` in one HEADERS frame that ends the stream.
    TrailersOnly { grpc_status: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandFate {
    Complete,
    /// The client sends RST_STREAM(CANCEL) after the server's first events.
    ClientCancel,
    /// The server resets with this code after its first events.
    ServerReset(u32),
}

#[derive(Clone, Debug)]
pub struct HandStream {
    pub get: bool,
    /// Vocabulary fields: (name, value) indices.
    pub extra: Vec<(usize, usize)>,
    /// A value long enough to need CONTINUATION frames.
    pub large: Option<usize>,
    pub body: Body,
    pub trailers: bool,
    pub answer: Answer,
    pub push: bool,
    pub fate: HandFate,
}

#[derive(Clone, Debug)]
pub struct HandConversation {
    pub streams: Vec<HandStream>,
    /// SETTINGS_HEADER_TABLE_SIZE advertised at the start by the client and by the server.
    pub table_size: [Option<u32>; 2],
    /// Advertised again (by the client if `.0`, else by the server) after `.1` events.
    pub readvertise: Option<(bool, usize, u32)>,
    /// An encoder answers a new size with two updates, the first to 0.
    pub two_updates: bool,
    /// The server's SETTINGS_MAX_FRAME_SIZE: how large the client's frames may be.
    pub max_frame_size: u32,
    /// The server sends GOAWAY after this many events; streams not opened by then never are.
    pub goaway_after: Option<usize>,
    pub seed: u64,
}

fn body() -> impl Strategy<Value = Body> {
    prop::collection::vec(
        (
            prop_oneof![4 => 0usize..300, 1 => 300usize..16_000],
            prop_oneof![2 => Just(None), 1 => (0u8..=255).prop_map(Some)],
        ),
        0..=4,
    )
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => (0u8..=2, prop::sample::select(vec![200u16, 204, 404, 500]), body(), any::<bool>())
            .prop_map(|(interim, status, body, trailers)| Answer::Full { interim, status, body, trailers }),
        1 => (0u8..17).prop_map(|grpc_status| Answer::TrailersOnly { grpc_status }),
    ]
}

fn fate() -> impl Strategy<Value = HandFate> {
    prop_oneof![
        8 => Just(HandFate::Complete),
        1 => Just(HandFate::ClientCancel),
        1 => prop::sample::select(vec![0x2u32, 0x7, 0x8]).prop_map(HandFate::ServerReset),
    ]
}

fn stream() -> impl Strategy<Value = HandStream> {
    (
        any::<bool>(),
        prop::collection::vec((0usize..VOCABULARY.len(), 0usize..4), 0..6),
        prop_oneof![6 => Just(None), 1 => (20_000usize..40_000).prop_map(Some)],
        body(),
        any::<bool>(),
        answer(),
        prop::bool::weighted(0.15),
        fate(),
    )
        .prop_map(|(get, extra, large, body, trailers, answer, push, fate)| HandStream {
            get,
            extra,
            large,
            body,
            trailers,
            answer,
            push,
            fate,
        })
}

fn table_size() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![3 => Just(None), 1 => Just(Some(0u32)), 1 => Just(Some(100)), 1 => Just(Some(1024)), 1 => Just(Some(8192))]
}

pub fn conversation() -> impl Strategy<Value = HandConversation> {
    (
        prop::collection::vec(stream(), 1..=8),
        [table_size(), table_size()],
        prop::option::weighted(
            0.3,
            (any::<bool>(), 0usize..30, prop::sample::select(vec![0u32, 64, 512, 4096, 6000])),
        ),
        any::<bool>(),
        prop::sample::select(vec![16_384u32, 16_384, 65_536]),
        prop::option::weighted(0.2, 0usize..40),
        any::<u64>(),
    )
        .prop_map(
            |(streams, table_size, readvertise, two_updates, max_frame_size, goaway_after, seed)| {
                HandConversation {
                    streams,
                    table_size,
                    readvertise,
                    two_updates,
                    max_frame_size,
                    goaway_after,
                    seed,
                }
            },
        )
}

/// One step of a stream, from one end.
#[derive(Clone, Debug)]
enum Step {
    /// The request head (HEADERS and CONTINUATIONs).
    Open,
    Data {
        index: usize,
        last: bool,
    },
    Trailers,
    Cancel,
    Push,
    Interim,
    Head,
    ResponseData {
        index: usize,
        last: bool,
    },
    ResponseTrailers,
    Reset(u32),
    /// The head of a pushed response, then its body.
    PushedHead {
        promised: u32,
    },
    PushedData {
        promised: u32,
    },
}

/// A stream's remaining steps from each end, and what it needs before going on.
#[derive(Debug)]
struct Script {
    id: u32,
    client: Vec<Step>,
    server: Vec<Step>,
    /// Steps taken so far, per end.
    done: [usize; 2],
    /// Whether the client's last step ended the request.
    request_ended: bool,
    stopped: bool,
}

/// Fields as `(name, value)` wire bytes.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn field(name: &[u8], value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (name.to_vec(), value.to_vec())
}

fn listed(fields: &Fields) -> Vec<Header> {
    fields
        .iter()
        .filter(|(n, _)| !n.starts_with(b":"))
        .map(|(n, v)| Header {
            name: String::from_utf8(n.clone()).expect("ascii"),
            value: Bytes::from(v.clone()),
        })
        .collect()
}

/// Builds the conversation: the recording and every opened stream's truth.
pub fn build(conv: &HandConversation) -> (Recording, Vec<Truth>, Caused) {
    Builder::new(conv).run()
}

struct Builder<'a> {
    conv: &'a HandConversation,
    rng: Rng,
    rec: Recording,
    /// Encoder of each direction (0: the client's, 1: the server's).
    encoders: [Encoder; 2],
    /// Bytes waiting to be written by one end, as one write.
    pending: Option<(usize, Vec<u8>)>,
    scripts: Vec<Script>,
    opened: usize,
    next_promised: u32,
    goaway: bool,
    caused: Caused,
    truths: Vec<Truth>,
    events: usize,
}

impl<'a> Builder<'a> {
    fn new(conv: &'a HandConversation) -> Self {
        let mut scripts = Vec::new();
        for (i, s) in conv.streams.iter().enumerate() {
            let id = 2 * i as u32 + 1;
            let body = if s.get { Vec::new() } else { s.body.clone() };
            let trailers = s.trailers && !s.get;
            let mut client = vec![Step::Open];
            let n = body.len();
            client.extend((0..n).map(|index| Step::Data { index, last: index + 1 == n && !trailers }));
            if trailers {
                client.push(Step::Trailers);
            }
            let mut server = Vec::new();
            if s.push && s.fate == HandFate::Complete {
                server.push(Step::Push);
            }
            match &s.answer {
                Answer::Full { interim, body, trailers, .. } => {
                    server.extend((0..*interim).map(|_| Step::Interim));
                    server.push(Step::Head);
                    let n = body.len();
                    server.extend(
                        (0..n).map(|index| Step::ResponseData { index, last: index + 1 == n && !trailers }),
                    );
                    if *trailers {
                        server.push(Step::ResponseTrailers);
                    }
                }
                Answer::TrailersOnly { .. } => server.push(Step::Head),
            }
            match s.fate {
                HandFate::Complete => {}
                HandFate::ClientCancel => {
                    // The server answers in part; then the client cancels.
                    server.truncate(server.iter().position(|s| matches!(s, Step::Head)).unwrap_or(0));
                    client.truncate(1 + body.len() / 2);
                    client.push(Step::Cancel);
                }
                HandFate::ServerReset(code) => {
                    server.truncate(server.iter().position(|s| matches!(s, Step::Head)).unwrap_or(0));
                    server.push(Step::Reset(code));
                }
            }
            scripts.push(Script { id, client, server, done: [0, 0], request_ended: false, stopped: false });
        }
        Builder {
            conv,
            rng: Rng::new(conv.seed),
            rec: Recording::default(),
            encoders: [Encoder::default(), Encoder::default()],
            pending: None,
            scripts,
            opened: 0,
            next_promised: 2,
            goaway: false,
            caused: Caused::default(),
            truths: Vec::new(),
            events: 0,
        }
    }

    /// Queues bytes of one end; a change of end writes what the other end queued.
    fn send(&mut self, direction: usize, bytes: Vec<u8>) {
        match &mut self.pending {
            Some((d, queued)) if *d == direction && !self.rng.one_in(3) => queued.extend(bytes),
            _ => {
                self.flush();
                self.pending = Some((direction, bytes));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((direction, bytes)) = self.pending.take() {
            self.rec.write_after_reading(direction, &bytes);
        }
    }

    /// A new table size advertised by the decoder of `direction`: its encoder answers at the start
    /// of its next block.
    fn advertise(&mut self, direction: usize, size: u32) {
        let size = size as usize;
        let updates = if self.conv.two_updates && size > 0 { vec![0, size] } else { vec![size] };
        self.encoders[direction].update_sizes(&updates);
    }

    fn run(mut self) -> (Recording, Vec<Truth>, Caused) {
        let [client_size, server_size] = self.conv.table_size;
        let mut client_settings = Vec::new();
        if let Some(size) = client_size {
            client_settings.push((SETTINGS_HEADER_TABLE_SIZE, size));
        }
        self.send(0, [PREFACE, &settings(&client_settings)].concat());
        self.flush();
        let mut server_settings = vec![(SETTINGS_MAX_FRAME_SIZE, self.conv.max_frame_size)];
        if let Some(size) = server_size {
            server_settings.push((SETTINGS_HEADER_TABLE_SIZE, size));
        }
        // The server read the client's SETTINGS: its encoder follows the client's table size.
        if let Some(size) = client_size {
            self.advertise(1, size);
        }
        self.send(1, [settings(&server_settings), frame(SETTINGS, ACK, 0, &[])].concat());
        self.flush();
        if let Some(size) = server_size {
            self.advertise(0, size);
        }
        self.send(0, frame(SETTINGS, ACK, 0, &[]));
        loop {
            if self.goaway_due() {
                self.send_goaway();
            }
            if let Some((by_client, after, size)) = self.conv.readvertise
                && after == self.events
            {
                // SETTINGS from one end; the other end's encoder answers in its next block.
                let direction = usize::from(!by_client);
                self.send(direction, settings(&[(SETTINGS_HEADER_TABLE_SIZE, size)]));
                self.flush();
                self.advertise(1 - direction, size);
                self.send(1 - direction, frame(SETTINGS, ACK, 0, &[]));
            }
            let runnable = self.runnable();
            if runnable.is_empty() {
                break;
            }
            let (s, end) = runnable[self.rng.below(runnable.len() as u64) as usize];
            self.noise();
            self.step(s, end);
            self.events += 1;
        }
        self.flush();
        self.caused.goaway |= self.goaway;
        (self.rec, self.truths, self.caused)
    }

    fn goaway_due(&self) -> bool {
        !self.goaway && self.conv.goaway_after.is_some_and(|n| n <= self.events)
    }

    fn send_goaway(&mut self) {
        self.goaway = true;
        let last = self.scripts.iter().take(self.opened).map(|s| s.id).max().unwrap_or(0);
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes());
        self.send(1, frame(GOAWAY, 0, 0, &payload));
        // Streams not opened by now never are.
        self.scripts.truncate(self.opened);
    }

    /// (stream, end) pairs whose next step may be taken now.
    fn runnable(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, s) in self.scripts.iter().enumerate() {
            if s.stopped {
                continue;
            }
            // Streams open in id order.
            if s.done[0] < s.client.len() && (s.done[0] > 0 || i == self.opened) {
                out.push((i, 0));
            }
            if s.done[1] < s.server.len() && s.done[0] > 0 {
                let ending = s.done[1] + 1 == s.server.len() && self.ends_stream(&s.server[s.done[1]], i);
                // The answer ends only after the request did; a cancel comes after the server's part.
                if !ending || s.request_ended {
                    out.push((i, 1));
                }
            }
        }
        // A cancel waits for the server's part.
        out.retain(|&(i, end)| {
            let s = &self.scripts[i];
            end == 1 || !matches!(s.client.get(s.done[0]), Some(Step::Cancel)) || s.done[1] == s.server.len()
        });
        out
    }

    fn ends_stream(&self, step: &Step, i: usize) -> bool {
        let stream = &self.conv.streams[i];
        match step {
            Step::Head => match &stream.answer {
                Answer::TrailersOnly { .. } => true,
                Answer::Full { body, trailers, .. } => body.is_empty() && !trailers,
            },
            Step::ResponseData { last, .. } => *last,
            Step::ResponseTrailers => true,
            _ => false,
        }
    }

    /// Sometimes a frame that carries nothing for the exchanges.
    fn noise(&mut self) {
        match self.rng.below(24) {
            0 => {
                // PRIORITY for an open, an idle or a closed stream.
                let stream = 1 + self.rng.below(40) as u32;
                let mut payload = self.rng.below(stream.into()).to_be_bytes()[4..].to_vec();
                payload.push(self.rng.below(256) as u8);
                self.send(0, frame(PRIORITY, 0, stream, &payload));
            }
            1 => {
                let end = self.rng.below(2) as usize;
                let opaque = self.rng.next_u64().to_be_bytes();
                self.send(end, frame(PING, 0, 0, &opaque));
            }
            2 => {
                let end = self.rng.below(2) as usize;
                let increment = 1 + self.rng.below(1 << 20) as u32;
                self.send(end, frame(WINDOW_UPDATE, 0, 0, &increment.to_be_bytes()));
            }
            3 => {
                // An extension frame: ignored by the rules of RFC 9113 §4.1.
                let end = self.rng.below(2) as usize;
                let len = self.rng.below(20) as usize;
                let stream = self.rng.below(8) as u32;
                self.send(end, frame(0xfa, 0x3, stream, &vec![0x5a; len]));
            }
            _ => {}
        }
    }

    fn request_fields(&self, i: usize) -> Fields {
        let s = &self.conv.streams[i];
        let mut fields = vec![
            field(b":method", if s.get { b"GET" } else { b"POST" }),
            field(b":scheme", b"http"),
            field(b":path", format!("/hand.Service/Call/{i}").as_bytes()),
            field(b":authority", AUTHORITY),
        ];
        for &(name, value) in &s.extra {
            fields.push(field(VOCABULARY[name].0, VOCABULARY[name].1[value]));
        }
        fields.push(field(b"x-id", format!("hand-{i}").as_bytes()));
        if let Some(len) = s.large {
            let value: Vec<u8> = (0..len).map(|k| b'a' + ((k * 7 + i) % 26) as u8).collect();
            fields.push(field(b"x-large", &value));
        }
        fields
    }

    fn response_fields(&self, i: usize) -> Fields {
        let s = &self.conv.streams[i];
        let status = match &s.answer {
            Answer::Full { status, .. } => *status,
            Answer::TrailersOnly { .. } => 200,
        };
        let mut fields = vec![
            field(b":status", status.to_string().as_bytes()),
            field(b"content-type", b"application/grpc"),
            field(b"x-answer", format!("hand-{i}").as_bytes()),
        ];
        if let Some(&(name, value)) = s.extra.first() {
            fields.push(field(VOCABULARY[name].0, VOCABULARY[name].1[(value + 1) % 4]));
        }
        if let Answer::TrailersOnly { grpc_status } = s.answer {
            fields.push(field(b"grpc-status", grpc_status.to_string().as_bytes()));
            fields.push(field(b"grpc-message", b"trailers only"));
        }
        fields
    }

    fn request_trailers(i: usize) -> Fields {
        vec![field(b"x-checksum", format!("sum-{i}").as_bytes())]
    }

    fn response_trailers(i: usize) -> Fields {
        vec![field(b"grpc-status", (i % 3).to_string().as_bytes()), field(b"grpc-message", b"done")]
    }

    fn request_body(i: usize, body: &Body) -> Bytes {
        pattern(body.iter().map(|f| f.0).sum(), i * 2 + 1)
    }

    fn response_body(i: usize, body: &Body) -> Bytes {
        pattern(body.iter().map(|f| f.0).sum(), i * 2 + 2)
    }

    /// Encodes a header block with random representations and frames it as HEADERS (or
    /// PUSH_PROMISE) and CONTINUATIONs, with random padding, priority fields and split points.
    fn header_block(
        &mut self,
        end: usize,
        kind: u8,
        stream: u32,
        fields: &Fields,
        end_stream: bool,
        promised: Option<u32>,
    ) -> Vec<u8> {
        let mut rng = Rng::new(self.rng.next_u64());
        let block = self.encoders[end].encode(fields, |_| {
            let representation = match rng.below(10) {
                0..=4 => Representation::Incremental,
                5..=7 => Representation::WithoutIndexing,
                _ => Representation::NeverIndexed,
            };
            (representation, !rng.one_in(4))
        });
        let max = if end == 0 { self.conv.max_frame_size as usize } else { 16_384 };
        let pad = self.rng.one_in(3).then(|| self.rng.below(64) as u8);
        let priority = kind == HEADERS && self.rng.one_in(3);
        let mut overhead = pad.map_or(0, |p| 1 + usize::from(p)) + if priority { 5 } else { 0 };
        if promised.is_some() {
            overhead += 4;
        }
        let mut out = Vec::new();
        let mut rest = &block[..];
        let mut first = true;
        while first || !rest.is_empty() {
            let room = if first { max - overhead } else { max };
            // Split early sometimes, wherever: CONTINUATION frames then carry small fragments.
            let take = if self.rng.one_in(3) {
                1 + self.rng.below(rest.len().max(1) as u64) as usize
            } else {
                rest.len()
            };
            let take = take.min(room).min(rest.len());
            let (fragment, after) = rest.split_at(take);
            rest = after;
            let end_headers = if rest.is_empty() { END_HEADERS } else { 0 };
            if first {
                let mut payload = Vec::new();
                if let Some(promised) = promised {
                    payload.extend_from_slice(&promised.to_be_bytes());
                }
                if priority {
                    payload.extend_from_slice(&(self.rng.below(u64::from(stream)) as u32).to_be_bytes());
                    payload.push(self.rng.below(256) as u8);
                }
                payload.extend_from_slice(fragment);
                let mut flags = end_headers | if end_stream { END_STREAM } else { 0 };
                if priority {
                    flags |= PRIORITY_FLAG;
                }
                if let Some(pad) = pad {
                    flags |= PADDED;
                    payload = padded(&payload, pad);
                }
                out.extend(frame(kind, flags, stream, &payload));
                first = false;
            } else {
                out.extend(frame(CONTINUATION, end_headers, stream, fragment));
            }
        }
        out
    }

    fn data_frames(stream: u32, body: &Bytes, frames: &Body, index: usize, last: bool) -> Vec<u8> {
        let from: usize = frames[..index].iter().map(|f| f.0).sum();
        let (len, pad) = frames[index];
        let piece = &body[from..from + len];
        let flags = if last { END_STREAM } else { 0 };
        match pad {
            Some(pad) => frame(DATA, flags | PADDED, stream, &padded(piece, pad)),
            None => frame(DATA, flags, stream, piece),
        }
    }

    fn step(&mut self, i: usize, end: usize) {
        let script = &mut self.scripts[i];
        let step = if end == 0 {
            script.client[script.done[0]].clone()
        } else {
            script.server[script.done[1]].clone()
        };
        script.done[end] += 1;
        let id = script.id;
        let s = self.conv.streams[i].clone();
        let request_body = if s.get { Vec::new() } else { s.body.clone() };
        let trailers = s.trailers && !s.get;
        match step {
            Step::Open => {
                self.opened += 1;
                let fields = self.request_fields(i);
                let ends = request_body.is_empty() && !trailers;
                let bytes = self.header_block(0, HEADERS, id, &fields, ends, None);
                self.send(0, bytes);
                self.scripts[i].request_ended = ends;
                let mut headers = vec![Header { name: "host".into(), value: Bytes::from_static(AUTHORITY) }];
                headers.extend(listed(&fields));
                self.truths.push(Truth {
                    stream_id: id,
                    request: Request {
                        method: if s.get { "GET" } else { "POST" }.into(),
                        target: format!("/hand.Service/Call/{i}"),
                        version: HttpVersion::Http2,
                        headers,
                        body: Self::request_body(i, &request_body),
                        trailers: if trailers { listed(&Self::request_trailers(i)) } else { Vec::new() },
                    },
                    response: None,
                });
            }
            Step::Data { index, last } => {
                let body = Self::request_body(i, &request_body);
                self.send(0, Self::data_frames(id, &body, &request_body, index, last));
                self.scripts[i].request_ended |= last;
            }
            Step::Trailers => {
                let bytes = self.header_block(0, HEADERS, id, &Self::request_trailers(i), true, None);
                self.send(0, bytes);
                self.scripts[i].request_ended = true;
            }
            Step::Cancel => {
                self.send(0, frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
                self.caused.resets.push(0x8);
                self.caused.resets_on_wire += 1;
                self.scripts[i].stopped = true;
            }
            Step::Reset(code) => {
                self.send(1, frame(RST_STREAM, 0, id, &code.to_be_bytes()));
                self.caused.resets.push(code);
                self.caused.resets_on_wire += 1;
                self.scripts[i].stopped = true;
            }
            Step::Push => {
                let promised = self.next_promised;
                self.next_promised += 2;
                let fields = vec![
                    field(b":method", b"GET"),
                    field(b":scheme", b"http"),
                    field(b":path", format!("/pushed/{i}").as_bytes()),
                    field(b":authority", AUTHORITY),
                ];
                let bytes = self.header_block(1, PUSH_PROMISE, id, &fields, false, Some(promised));
                self.send(1, bytes);
                self.caused.pushes += 1;
                // The pushed response follows later, as steps of this stream's server end.
                let script = &mut self.scripts[i];
                let at =
                    script.done[1] + self.rng.below((script.server.len() - script.done[1]) as u64) as usize;
                script.server.insert(at, Step::PushedHead { promised });
                script.server.insert(at + 1, Step::PushedData { promised });
            }
            Step::PushedHead { promised } => {
                let fields = vec![field(b":status", b"200"), field(b"content-type", b"text/css")];
                let bytes = self.header_block(1, HEADERS, promised, &fields, false, None);
                self.send(1, bytes);
            }
            Step::PushedData { promised } => {
                self.send(1, frame(DATA, END_STREAM, promised, &pattern(100, promised as usize)));
            }
            Step::Interim => {
                let fields = vec![field(b":status", b"103"), field(b"link", b"</model/config>; rel=preload")];
                let bytes = self.header_block(1, HEADERS, id, &fields, false, None);
                self.send(1, bytes);
            }
            Step::Head => {
                let fields = self.response_fields(i);
                let ends = self.ends_stream(&Step::Head, i);
                let bytes = self.header_block(1, HEADERS, id, &fields, ends, None);
                self.send(1, bytes);
                if ends {
                    self.complete(i, &fields, Bytes::new(), Vec::new());
                }
            }
            Step::ResponseData { index, last } => {
                let Answer::Full { body, .. } = &s.answer else { return };
                let bytes = Self::response_body(i, body);
                self.send(1, Self::data_frames(id, &bytes, body, index, last));
                if last {
                    let fields = self.response_fields(i);
                    self.complete(i, &fields, bytes, Vec::new());
                }
            }
            Step::ResponseTrailers => {
                let Answer::Full { body, .. } = &s.answer else { return };
                let bytes = self.header_block(1, HEADERS, id, &Self::response_trailers(i), true, None);
                self.send(1, bytes);
                let fields = self.response_fields(i);
                self.complete(i, &fields, Self::response_body(i, body), listed(&Self::response_trailers(i)));
            }
        }
    }

    fn complete(&mut self, i: usize, fields: &Fields, body: Bytes, trailers: Vec<Header>) {
        let status = fields[0].1.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        let id = self.scripts[i].id;
        if let Some(truth) = self.truths.iter_mut().find(|t| t.stream_id == id) {
            truth.response = Some(Response {
                status,
                reason: String::new(),
                version: HttpVersion::Http2,
                headers: listed(fields),
                body,
                arrivals: Default::default(),
                trailers,
            });
        }
    }
}
