//! Properties of the HTTP/2 rebuilding pipeline, proven on conversations that a real HTTP/2 stack
//! (hyper's `h2` client and server, [`stack`]) and a hand-written encoder ([`handbuilt`], for what
//! `h2` never sends) put on the wire, captured as the kernel would hand them over: cut into
//! segments of any size, the two directions interleaved in any order causality allows, reordered
//! and duplicated within a direction, with losses, or starting in the middle of the connection.
//!
//! - A clean capture rebuilds every completed stream exactly (request and response heads in order,
//!   bodies, trailers), paired by stream id; only what the workload itself causes (resets, a
//!   GOAWAY, pushes) is counted, and everything is released at the end.
//! - A lossy capture never emits a wrong exchange, and a missing one is always counted.
//! - A capture that starts mid-connection only emits exact exchanges.
//! - Hostile input (random frames, mutated conversations) never panics and stays within bounds.
//!
//! Every exchange must also have been announced first, with the same request.
#[path = "h2_roundtrip/frames.rs"]
mod frames;
#[path = "h2_roundtrip/handbuilt.rs"]
mod handbuilt;
#[path = "h2_roundtrip/stack.rs"]
mod stack;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use bytes::Bytes;
use mirror_common::tcp_flags::{ACK, FIN, SYN};
use mirror_daemon::{
    assembler::{Assembler, AssemblerConfig},
    capture::Segment,
    drops::AssemblyDrops,
    exchange::{Assembled, Exchange, ExchangeId, Request, Response},
    flows::{FlowConfig, FlowLimits},
    framing::HttpConfig,
};
use proptest::prelude::*;

use self::stack::{Conversation, Fate, Outcome, ResetPoint, ResponseEnd, Settings, StreamPlan};

const SERVER_PORT: u16 = 8081;

// ---------------------------------------------------------------------------------------------
// What was on the wire

/// Both directions of one connection as the endpoints wrote them, and when each end read the
/// other's bytes, on one clock (each write and each read is one tick). Direction 0 is client →
/// server, 1 is server → client.
#[derive(Debug, Default)]
pub struct Recording {
    clock: u64,
    pub bytes: [Vec<u8>; 2],
    /// Per direction, after each write: (time, bytes written so far).
    writes: [Vec<(u64, usize)>; 2],
    /// Per direction, after each read by the receiver: (time, bytes read so far).
    reads: [Vec<(u64, usize)>; 2],
}

impl Recording {
    pub fn note_write(&mut self, direction: usize, bytes: &[u8]) {
        self.clock += 1;
        self.bytes[direction].extend_from_slice(bytes);
        self.writes[direction].push((self.clock, self.bytes[direction].len()));
    }

    pub fn note_read(&mut self, direction: usize, read_so_far: usize) {
        self.clock += 1;
        self.reads[direction].push((self.clock, read_so_far));
    }

    /// A write by an endpoint that has read everything the other one wrote so far (a sender
    /// that answers what it saw): what hand-built conversations are made of.
    pub fn write_after_reading(&mut self, direction: usize, bytes: &[u8]) {
        let other = 1 - direction;
        let written = self.bytes[other].len();
        if self.reads[other].last().map_or(0, |r| r.1) < written {
            self.note_read(other, written);
        }
        self.note_write(direction, bytes);
    }

    /// When the byte at `offset` was written.
    fn written_at(&self, direction: usize, offset: usize) -> u64 {
        let writes = &self.writes[direction];
        let i = writes.partition_point(|&(_, end)| end <= offset);
        writes.get(i).map_or(self.clock, |w| w.0)
    }

    /// When the receiver read the byte at `offset`, if it did.
    fn read_at(&self, direction: usize, offset: usize) -> Option<u64> {
        let reads = &self.reads[direction];
        let i = reads.partition_point(|&(_, end)| end <= offset);
        reads.get(i).map(|r| r.0)
    }

    /// Bytes written before `time`.
    fn written_before(&self, direction: usize, time: u64) -> usize {
        let writes = &self.writes[direction];
        let i = writes.partition_point(|&(t, _)| t < time);
        i.checked_sub(1).map_or(0, |i| writes[i].1)
    }

    fn end(&self) -> u64 {
        self.clock
    }
}

/// Small deterministic generator for the network's misbehaviour.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Bytes that differ for every `salt`, so that a body paired with the wrong stream shows.
pub fn pattern(len: usize, salt: usize) -> Bytes {
    (0..len).map(|i| (i.wrapping_mul(31).wrapping_add(salt) % 251) as u8).collect::<Vec<u8>>().into()
}

// ---------------------------------------------------------------------------------------------
// From the wire to captured segments

/// How the capture treats the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    /// Everything captured (reordered and duplicated as causality allows).
    Clean,
    /// Also ranges reported lost by the kernel, ranges cut short, segments never seen.
    Lossy,
    /// No handshake; each direction's capture starts at its own random point in time.
    MidStream,
    /// As `MidStream`, from these points in time (client's, server's).
    From([u64; 2]),
}

impl Capture {
    fn mid_stream(self) -> bool {
        matches!(self, Capture::MidStream | Capture::From(_))
    }
}

/// Where segments end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cutting {
    /// Anywhere: random sizes up to 4 KiB, sometimes 16 KiB.
    Random,
    /// As a TCP stack without Nagle's delay cuts: each write into segments of at most `mss`
    /// bytes, sometimes several writes coalesced into one 16 KiB super-packet (GSO).
    Writes { mss: usize },
}

/// One connection's endpoints.
#[derive(Clone, Copy, Debug)]
struct Endpoints {
    client: SocketAddr,
    server: SocketAddr,
}

impl Endpoints {
    fn nth(c: usize) -> Self {
        Endpoints {
            client: format!("10.2.0.{}:{}", c + 1, 40_000 + c).parse().expect("address"),
            server: format!("10.1.0.1:{SERVER_PORT}").parse().expect("address"),
        }
    }
}

/// A segment size: mostly up to 4 KiB (often tiny), sometimes a 16 KiB GSO super-packet.
fn segment_size(rng: &mut Rng) -> usize {
    match rng.below(8) {
        0 => 16_384,
        1 | 2 => 1 + rng.below(64) as usize,
        3..=5 => 1 + rng.below(1460) as usize,
        _ => 1 + rng.below(4096) as usize,
    }
}

/// Cuts a recording into captured segments, in capture order.
///
/// A segment holds bytes of one direction written before the receiver read its first byte (a
/// segment is on the wire between its last byte's write and its first byte's read), and is
/// captured at a random time within that window: so a server answer always comes after the
/// request bytes it could have read, while segments of one direction overtake each other.
fn capture(rec: &Recording, ends: Endpoints, how: Capture, cutting: Cutting, rng: &mut Rng) -> Vec<Segment> {
    let isn = [rng.next_u64() as u32, rng.next_u64() as u32];
    let end = rec.end() + 1;
    // (capture time, order of creation, segment)
    let mut timed: Vec<(u64, usize, u8, Segment)> = Vec::new();
    let addr = |direction: usize| {
        if direction == 0 { (ends.client, ends.server) } else { (ends.server, ends.client) }
    };
    let mut n = 0usize;
    let mut push = |timed: &mut Vec<(u64, usize, u8, Segment)>, time: u64, direction: usize, s: Segment| {
        n += 1;
        timed.push((time, n, direction as u8, s));
    };
    if !how.mid_stream() {
        let (src, dst) = addr(0);
        push(&mut timed, 0, 0, Segment::new(src, dst, isn[0], SYN, Bytes::new(), 0));
        push(&mut timed, 0, 1, Segment::new(dst, src, isn[1], SYN | ACK, Bytes::new(), 0));
    }
    // Where each direction's capture starts.
    let start = match how {
        Capture::MidStream => {
            let at = rng.below(end);
            let skew = rng.below(end / 8 + 1);
            let later = at.saturating_add(skew);
            if rng.one_in(2) { [at, later] } else { [later, at] }
        }
        Capture::From(start) => start,
        Capture::Clean | Capture::Lossy => [0, 0],
    };
    for direction in 0..2 {
        let bytes = Bytes::copy_from_slice(&rec.bytes[direction]);
        let (src, dst) = addr(direction);
        let mut a = 0usize;
        while a < bytes.len() {
            let read = rec.read_at(direction, a);
            let limit = read.map_or(bytes.len(), |t| rec.written_before(direction, t));
            let want = match cutting {
                Cutting::Random => a + segment_size(rng),
                Cutting::Writes { mss } => {
                    let writes = &rec.writes[direction];
                    let mut i = writes.partition_point(|&(_, end)| end <= a);
                    if rng.one_in(8) {
                        // GSO: the writes that follow go out in one 16 KiB super-packet.
                        while writes.get(i + 1).is_some_and(|w| w.1 - a <= 16_384) {
                            i += 1;
                        }
                        writes.get(i).map_or(bytes.len(), |w| w.1).min(a + 16_384)
                    } else {
                        writes.get(i).map_or(bytes.len(), |w| w.1).min(a + mss)
                    }
                }
            };
            let b = want.min(limit).max(a + 1);
            let lo = rec.written_at(direction, b - 1);
            let hi = read.unwrap_or(end).max(lo);
            let time = lo + rng.below(hi - lo + 1);
            let seq = isn[direction].wrapping_add(1).wrapping_add(a as u32);
            let payload = bytes.slice(a..b);
            let segment = Segment::new(src, dst, seq, ACK, payload.clone(), time * 1_000);
            a = b;
            if time < start[direction] {
                // Not captured; a later retransmission sometimes is.
                if how.mid_stream() && rng.one_in(16) {
                    let late = start[direction] + rng.below(end - start[direction].min(end) + 1);
                    push(&mut timed, late, direction, segment);
                }
                continue;
            }
            if how == Capture::Lossy {
                match rng.below(60) {
                    // Never captured: a hole that only the end of the connection resolves.
                    0 => continue,
                    // The ring buffer was full: the kernel reports the range lost.
                    1 | 2 => {
                        let mut lost = segment.clone();
                        lost.payload = Bytes::new();
                        push(&mut timed, time, direction, lost.with_lost(payload.len() as u32));
                        continue;
                    }
                    // Beyond the copy limit: a first range captured, the rest reported lost in a
                    // record of its own, as the kernel writes them.
                    3 if payload.len() > 1 => {
                        let k = 1 + rng.below(payload.len() as u64 - 1) as usize;
                        let mut first = segment.clone();
                        first.payload = payload.slice(..k);
                        let mut rest = segment.clone();
                        rest.offset = k as u32;
                        rest.payload = Bytes::new();
                        push(&mut timed, time, direction, first);
                        push(&mut timed, time, direction, rest.with_lost((payload.len() - k) as u32));
                        continue;
                    }
                    // The same as one range: its captured bytes, then `lost` more.
                    4 if payload.len() > 1 => {
                        let k = 1 + rng.below(payload.len() as u64 - 1) as usize;
                        let mut cut = segment.clone();
                        cut.payload = payload.slice(..k);
                        push(&mut timed, time, direction, cut.with_lost((payload.len() - k) as u32));
                        continue;
                    }
                    _ => {}
                }
            }
            if payload.len() > 8 && rng.one_in(6) {
                // The kernel's split of a large segment into two records.
                let k = 1 + rng.below(payload.len() as u64 - 1) as usize;
                let mut first = segment.clone();
                first.payload = payload.slice(..k);
                let mut second = segment.clone();
                second.offset = k as u32;
                second.payload = payload.slice(k..);
                push(&mut timed, time, direction, first);
                push(&mut timed, time, direction, second);
            } else {
                if rng.one_in(10) {
                    // A retransmission, captured again later.
                    let again = time + rng.below(end - time.min(end) + 1);
                    push(&mut timed, again, direction, segment.clone());
                }
                push(&mut timed, time, direction, segment);
            }
        }
    }
    for (direction, isn) in isn.into_iter().enumerate() {
        let (src, dst) = addr(direction);
        let seq = isn.wrapping_add(1).wrapping_add(rec.bytes[direction].len() as u32);
        let fin = Segment::new(src, dst, seq, FIN | ACK, Bytes::new(), end * 1_000);
        push(&mut timed, end, direction, fin);
    }
    timed.sort_by_key(|&(time, n, _, _)| (time, n));
    timed.into_iter().map(|(_, _, _, s)| s).collect()
}

/// Interleaves connections' captures, keeping each connection's order.
fn interleave(per_conn: Vec<Vec<Segment>>, rng: &mut Rng) -> Vec<Segment> {
    let mut merged = Vec::new();
    let mut next = vec![0usize; per_conn.len()];
    loop {
        let open: Vec<usize> = (0..per_conn.len()).filter(|&c| next[c] < per_conn[c].len()).collect();
        if open.is_empty() {
            return merged;
        }
        let c = open[rng.below(open.len() as u64) as usize];
        merged.push(per_conn[c][next[c]].clone());
        next[c] += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Through the assembler

fn assembler_config(http: HttpConfig) -> AssemblerConfig {
    AssemblerConfig {
        flows: FlowConfig { server_ports: vec![SERVER_PORT], limits: FlowLimits::default() },
        http,
        announce_requests: true,
        own_connections: None,
    }
}

/// Feeds the segments; returns the exchanges (each checked to have been announced before, with
/// an equal request) and the assembler after the connections ended and expired.
fn assemble(segments: &[Segment], config: AssemblerConfig) -> (Vec<Exchange>, Assembler) {
    let mut a = Assembler::new(config);
    let mut items = Vec::new();
    let mut out = Vec::new();
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
    for s in segments {
        a.push(s.clone(), &mut items);
        check(&mut items, &mut out);
    }
    a.tick(u64::MAX / 2, &mut items);
    check(&mut items, &mut out);
    (out, a)
}

fn strip(response: &Response) -> Response {
    Response { arrivals: Default::default(), ..response.clone() }
}

/// One stream's truth, whatever produced it.
#[derive(Clone, Debug)]
pub struct Truth {
    pub stream_id: u32,
    pub request: Request,
    /// The response, when the stream completed.
    pub response: Option<Response>,
}

/// What a workload caused that the assembler must count: resets by code, GOAWAY, pushes.
#[derive(Clone, Debug, Default)]
pub struct Caused {
    pub resets: Vec<u32>,
    /// Resets of streams certainly on the wire (the server accepted them, or answered them).
    pub resets_on_wire: usize,
    pub goaway: bool,
    pub pushes: usize,
}

impl Caused {
    fn add(&mut self, other: &Caused) {
        self.resets.extend(&other.resets);
        self.resets_on_wire += other.resets_on_wire;
        self.goaway |= other.goaway;
        self.pushes += other.pushes;
    }

    /// Counters the workload may move (besides what losses move).
    fn allows(&self, name: &str) -> bool {
        let code = |c: u32| self.resets.contains(&c);
        match name {
            "h2_reset_cancel" => code(0x8),
            "h2_reset_refused_stream" => code(0x7),
            "h2_reset_other" => self.resets.iter().any(|&c| c != 0x7 && c != 0x8),
            "h2_goaway_unprocessed" => self.goaway,
            "h2_push_promised_streams" => self.pushes > 0,
            // DATA of streams no longer rebuilt: after a reset, above a GOAWAY, or pushed.
            "desync_skipped_bytes" => !self.resets.is_empty() || self.goaway || self.pushes > 0,
            _ => false,
        }
    }
}

fn truths_of(outcome: &Outcome) -> (Vec<Truth>, Caused) {
    let truths = outcome
        .streams
        .iter()
        .map(|s| Truth { stream_id: s.stream_id, request: s.request.clone(), response: s.completed.clone() })
        .collect();
    let server_resets = outcome.resets.len()
        - outcome.streams.iter().filter(|s| matches!(s.fate, Fate::ClientReset(_))).count();
    let answered_then_cancelled =
        outcome.streams.iter().filter(|s| matches!(s.fate, Fate::ClientReset(_)) && s.response_head).count();
    let caused = Caused {
        resets: outcome.resets.clone(),
        resets_on_wire: server_resets + answered_then_cancelled,
        goaway: outcome.goaway,
        pushes: outcome.pushes,
    };
    (truths, caused)
}

/// A captured workload: segments of every connection and each connection's truth.
struct Captured {
    segments: Vec<Segment>,
    truths: HashMap<SocketAddr, Vec<Truth>>,
    caused: Caused,
}

fn captured(recordings: Vec<(Recording, Vec<Truth>, Caused)>, how: Capture, seed: u64) -> Captured {
    let mut rng = Rng::new(seed);
    let mut per_conn = Vec::new();
    let mut truths = HashMap::new();
    let mut caused = Caused::default();
    for (c, (rec, truth, cause)) in recordings.into_iter().enumerate() {
        let ends = Endpoints::nth(c);
        let cutting = if rng.one_in(2) {
            Cutting::Random
        } else {
            Cutting::Writes { mss: 500 + rng.below(9000) as usize }
        };
        per_conn.push(capture(&rec, ends, how, cutting, &mut rng));
        truths.insert(ends.client, truth);
        caused.add(&cause);
    }
    Captured { segments: interleave(per_conn, &mut rng), truths, caused }
}

/// Checks that every exchange is exactly the truth of its stream and that none comes twice;
/// returns how many came per connection.
fn check_exact(out: &[Exchange], truths: &HashMap<SocketAddr, Vec<Truth>>) -> Result<usize, TestCaseError> {
    let mut seen = HashSet::new();
    let mut connection_ids: HashMap<SocketAddr, u64> = HashMap::new();
    for e in out {
        let Some(truth) = truths.get(&e.client) else {
            return Err(TestCaseError::fail(format!("an exchange of an unknown client {}", e.client)));
        };
        let stream = e.stream_id.unwrap_or_default();
        let Some(t) = truth.iter().find(|t| t.stream_id == stream) else {
            return Err(TestCaseError::fail(format!("stream {stream} was never opened")));
        };
        prop_assert!(seen.insert((e.client, stream)), "stream {} emitted twice", stream);
        let Some(response) = &t.response else {
            return Err(TestCaseError::fail(format!(
                "stream {stream} did not complete, yet was emitted: {e:?}"
            )));
        };
        prop_assert_eq!(&e.request, &t.request, "request of stream {}", stream);
        prop_assert_eq!(&strip(&e.response), response, "response of stream {}", stream);
        prop_assert_eq!(e.id.seq, u64::from(stream));
        let connection = *connection_ids.entry(e.client).or_insert(e.id.connection);
        prop_assert_eq!(e.id.connection, connection, "one connection id per connection");
        prop_assert!(e.timing.request_first_ns <= e.timing.request_last_ns);
        prop_assert!(e.timing.response_first_ns <= e.timing.response_last_ns);
    }
    Ok(seen.len())
}

fn nonzero(drops: &AssemblyDrops) -> Vec<(&'static str, u64)> {
    drops.list().into_iter().filter(|l| l.2 > 0).map(|l| (l.1, l.2)).collect()
}

/// Clean: exactly the completed streams, only the workload's own counters, everything released.
fn check_clean(c: &Captured, http: HttpConfig) -> Result<(), TestCaseError> {
    let (out, a) = assemble(&c.segments, assembler_config(http));
    let drops = a.drops().clone();
    let emitted = check_exact(&out, &c.truths)?;
    let completed: usize = c.truths.values().flatten().filter(|t| t.response.is_some()).count();
    prop_assert_eq!(emitted, completed, "completed streams missing: {:?}", nonzero(&drops));
    let unexpected: Vec<_> = nonzero(&drops).into_iter().filter(|(name, _)| !c.caused.allows(name)).collect();
    prop_assert!(unexpected.is_empty(), "{:?} (workload: {:?})", unexpected, c.caused);
    let count = |code: u32| c.caused.resets.iter().filter(|&&r| r == code).count() as u64;
    prop_assert!(drops.h2_reset_cancel <= count(0x8));
    prop_assert!(drops.h2_reset_refused_stream <= count(0x7));
    prop_assert!(drops.h2_reset_other <= c.caused.resets.len() as u64 - count(0x7) - count(0x8));
    let resets = drops.h2_reset_cancel + drops.h2_reset_refused_stream + drops.h2_reset_other;
    prop_assert!(
        resets + drops.h2_goaway_unprocessed >= c.caused.resets_on_wire as u64,
        "streams reset on the wire not counted: {:?} {:?}",
        nonzero(&drops),
        c.caused
    );
    prop_assert_eq!(drops.h2_push_promised_streams, c.caused.pushes as u64);
    check_books(out.len(), &a)?;
    prop_assert_eq!(a.memory_bytes(), 0);
    prop_assert_eq!(a.connections(), 0);
    Ok(())
}

/// The books: every stream a client header block opened became an exchange or was counted once,
/// in requests, when every connection has ended.
fn check_books(emitted: usize, a: &Assembler) -> Result<(), TestCaseError> {
    let drops = a.drops();
    prop_assert_eq!(a.requests_in_progress(), 0);
    prop_assert_eq!(
        drops.requests_seen,
        emitted as u64 + drops.requests_lost(),
        "the books do not balance: {:?}",
        nonzero(drops)
    );
    Ok(())
}

/// Lossy or mid-stream: only exact exchanges; with losses, a missing one is counted.
fn check_subset(c: &Captured, http: HttpConfig, how: Capture) -> Result<(), TestCaseError> {
    let (out, a) = assemble(&c.segments, assembler_config(http));
    let drops = a.drops().clone();
    let emitted = check_exact(&out, &c.truths)?;
    let completed: usize = c.truths.values().flatten().filter(|t| t.response.is_some()).count();
    if how == Capture::Lossy && emitted < completed {
        // Counters a workload moves by itself are no evidence of a loss.
        let workload = [
            "h2_reset_cancel",
            "h2_reset_refused_stream",
            "h2_reset_other",
            "h2_goaway_unprocessed",
            "h2_push_promised_streams",
            "desync_skipped_bytes",
        ];
        let losses: Vec<_> =
            nonzero(&drops).into_iter().filter(|(name, _)| !workload.contains(name)).collect();
        prop_assert!(
            !losses.is_empty(),
            "{} of {} completed streams missing, no loss counted: {:?}",
            completed - emitted,
            completed,
            nonzero(&drops)
        );
    }
    check_books(out.len(), &a)?;
    prop_assert_eq!(a.memory_bytes(), 0);
    prop_assert_eq!(a.connections(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workloads of the real stack

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![3 => 1usize..200, 2 => 200usize..4_000, 1 => Just(0usize), 1 => 16_000usize..40_000],
        0..=4,
    )
}

fn reset_point() -> impl Strategy<Value = ResetPoint> {
    prop_oneof![
        Just(ResetPoint::BeforeBody),
        Just(ResetPoint::MidBody),
        Just(ResetPoint::AfterRequest),
        Just(ResetPoint::AfterResponseHead),
    ]
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        10 => Just(Fate::Complete),
        1 => reset_point().prop_map(Fate::ClientReset),
        1 => (reset_point(), prop::sample::select(vec![0x2u32, 0x7, 0x8])).prop_map(|(p, c)| Fate::ServerReset(p, c)),
    ]
}

fn response_end() -> impl Strategy<Value = ResponseEnd> {
    prop_oneof![
        4 => Just(ResponseEnd::Trailers),
        1 => Just(ResponseEnd::TrailersOnly),
        1 => Just(ResponseEnd::LastData),
        1 => Just(ResponseEnd::EmptyData),
    ]
}

fn stream_plan() -> impl Strategy<Value = StreamPlan> {
    (
        (
            0usize..3,
            chunk_sizes(),
            any::<bool>(),
            prop_oneof![8 => Just(None), 1 => (17_000usize..30_000).prop_map(Some)],
        ),
        (
            any::<u8>(),
            prop::sample::select(vec![200u16, 201, 404, 500, 503]),
            prop::bool::weighted(0.15),
            any::<bool>(),
        ),
        (chunk_sizes(), response_end(), prop::bool::weighted(0.15), fate(), 0u8..4),
    )
        .prop_map(
            |(
                (method, request_chunks, request_trailers, large_header),
                (variant, status, interim, early_head),
                (response_chunks, response_end, push, fate, delay),
            )| StreamPlan {
                method,
                request_chunks,
                request_trailers,
                large_header,
                variant,
                status,
                interim,
                early_head,
                response_chunks,
                response_end,
                push,
                fate,
                delay,
            },
        )
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![4 => Just(None), 1 => Just(Some(0u32)), 1 => Just(Some(256)), 1 => Just(Some(1024)), 1 => Just(Some(65_536))],
        prop_oneof![3 => Just(None), 1 => Just(Some(16_384u32)), 1 => Just(Some(32_768)), 1 => Just(Some(100_000))],
        prop_oneof![3 => Just(None), 1 => Just(Some(4_096u32)), 1 => Just(Some(1 << 20))],
        prop_oneof![3 => Just(None), 1 => Just(Some(1u32)), 1 => Just(Some(2))],
        prop::bool::weighted(0.4),
    )
        .prop_map(|(header_table_size, max_frame_size, initial_window_size, max_concurrent_streams, enable_push)| {
            Settings { header_table_size, max_frame_size, initial_window_size, max_concurrent_streams, enable_push }
        })
}

fn conversation(label: &'static str) -> impl Strategy<Value = Conversation> {
    (
        prop::collection::vec(stream_plan(), 1..=8),
        1usize..=6,
        settings(),
        settings(),
        prop::sample::select(vec![64usize, 1_000, 16_384, 100_000]),
        prop_oneof![4 => Just(None), 1 => (1usize..=8).prop_map(Some)],
        prop::bool::weighted(0.7),
        any::<u64>(),
    )
        .prop_map(
            move |(streams, concurrency, client, server, pipe_buffer, goaway_after, unique_ids, seed)| {
                Conversation {
                    label: label.to_string(),
                    streams,
                    concurrency,
                    client,
                    server,
                    pipe_buffer,
                    goaway_after,
                    unique_ids,
                    seed,
                }
            },
        )
}

fn conversations() -> impl Strategy<Value = Vec<Conversation>> {
    prop_oneof![3 => conversation("a").prop_map(|c| vec![c]), 1 => (conversation("a"), conversation("b")).prop_map(|(a, b)| vec![a, b])]
}

fn record(conversations: &[Conversation]) -> Vec<(Recording, Vec<Truth>, Caused)> {
    conversations
        .iter()
        .map(|c| {
            let outcome = stack::run(c);
            let (truths, caused) = truths_of(&outcome);
            (outcome.recording, truths, caused)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn h2_clean_capture_rebuilds_every_completed_stream_exactly(conversations in conversations(), seed in any::<u64>()) {
        let c = captured(record(&conversations), Capture::Clean, seed);
        check_clean(&c, HttpConfig::default())?;
    }

    #[test]
    fn h2_lossy_capture_never_emits_a_wrong_exchange_and_counts_what_is_missing(
        conversations in conversations(),
        seed in any::<u64>(),
    ) {
        let c = captured(record(&conversations), Capture::Lossy, seed);
        check_subset(&c, HttpConfig::default(), Capture::Lossy)?;
    }

    #[test]
    fn h2_capture_started_mid_connection_only_emits_exact_exchanges(
        conversations in conversations(),
        seed in any::<u64>(),
    ) {
        let c = captured(record(&conversations), Capture::MidStream, seed);
        check_subset(&c, HttpConfig::default(), Capture::MidStream)?;
    }
}

fn hand_conversations() -> impl Strategy<Value = Vec<handbuilt::HandConversation>> {
    prop::collection::vec(handbuilt::conversation(), 1..=2)
}

fn hand(conversations: &[handbuilt::HandConversation]) -> Vec<(Recording, Vec<Truth>, Caused)> {
    conversations.iter().map(handbuilt::build).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn hand_built_clean_capture_rebuilds_every_completed_stream_exactly(
        conversations in hand_conversations(),
        seed in any::<u64>(),
    ) {
        let c = captured(hand(&conversations), Capture::Clean, seed);
        check_clean(&c, HttpConfig::default())?;
    }

    #[test]
    fn hand_built_lossy_capture_never_emits_a_wrong_exchange_and_counts_what_is_missing(
        conversations in hand_conversations(),
        seed in any::<u64>(),
    ) {
        let c = captured(hand(&conversations), Capture::Lossy, seed);
        check_subset(&c, HttpConfig::default(), Capture::Lossy)?;
    }

    #[test]
    fn hand_built_capture_started_mid_connection_only_emits_exact_exchanges(
        conversations in hand_conversations(),
        seed in any::<u64>(),
    ) {
        let c = captured(hand(&conversations), Capture::MidStream, seed);
        check_subset(&c, HttpConfig::default(), Capture::MidStream)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input

const FLOW_TOTAL: usize = 256 << 10;
const HTTP_TOTAL: usize = 1 << 20;

/// Tight limits, so that hostile input reaches them.
fn tight() -> AssemblerConfig {
    AssemblerConfig {
        flows: FlowConfig {
            server_ports: vec![SERVER_PORT],
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
            max_streams: 16,
        },
        announce_requests: true,
        own_connections: None,
    }
}

/// Random frames: any type (known or not), any flags, small stream ids, random payloads, and
/// sometimes a header block that decodes.
fn random_frames(rng: &mut Rng, count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = frames::Encoder::default();
    for _ in 0..count {
        let kind = rng.below(11) as u8;
        let flags = rng.next_u64() as u8;
        let stream = if rng.one_in(4) { 0 } else { rng.below(12) as u32 };
        let payload: Vec<u8> = if kind == frames::HEADERS && rng.one_in(2) {
            let path = format!("/r/{}", rng.below(100));
            let fields: Vec<(Vec<u8>, Vec<u8>)> = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path.as_str()),
                (":status", "200"),
                ("x", "y"),
            ]
            .iter()
            .filter(|_| !rng.one_in(4))
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
            let mut r = rng.clone();
            encoder.encode(&fields, |_| (frames::Representation::Incremental, r.one_in(2)))
        } else {
            let len = match rng.below(8) {
                0 => 0,
                1 => 17_000 + rng.below(4000) as usize,
                _ => rng.below(64) as usize,
            };
            (0..len).map(|_| rng.next_u64() as u8).collect()
        };
        out.extend(frames::frame(kind, flags, stream, &payload));
    }
    out
}

/// One of the mutations a hostile or broken peer could make.
fn mutate(bytes: &mut Vec<u8>, client: bool, rng: &mut Rng) {
    if bytes.is_empty() {
        return;
    }
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        1 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
        2 | 3 => {
            // A frame duplicated, dropped or moved.
            let found = frames::frames_of(bytes, client);
            if found.is_empty() {
                return;
            }
            let f = found[rng.below(found.len() as u64) as usize];
            let copy = bytes[f.start..f.end].to_vec();
            match rng.below(3) {
                0 => {
                    let at = found[rng.below(found.len() as u64) as usize].end;
                    bytes.splice(at..at, copy);
                }
                1 => {
                    bytes.drain(f.start..f.end);
                }
                _ => {
                    bytes.drain(f.start..f.end);
                    let at = rng.below(bytes.len() as u64 + 1) as usize;
                    bytes.splice(at..at, copy);
                }
            }
        }
        4 => {
            let at = rng.below(bytes.len() as u64 + 1) as usize;
            let garbage: Vec<u8> = (0..1 + rng.below(40)).map(|_| rng.next_u64() as u8).collect();
            bytes.splice(at..at, garbage);
        }
        _ => {
            // A frame header's length field changed.
            let found = frames::frames_of(bytes, client);
            if let Some(f) = found.get(rng.below(found.len().max(1) as u64) as usize) {
                bytes[f.start + 2] = rng.next_u64() as u8;
            }
        }
    }
}

/// Both directions cut at random and interleaved at random (no causality: anything goes).
fn hostile_capture(directions: [Vec<u8>; 2], ends: Endpoints, rng: &mut Rng) -> Vec<Segment> {
    let syn = !rng.one_in(4);
    let isn = [rng.next_u64() as u32, rng.next_u64() as u32];
    let mut per_direction: [Vec<Segment>; 2] = [Vec::new(), Vec::new()];
    for (d, bytes) in directions.iter().enumerate() {
        let (src, dst) = if d == 0 { (ends.client, ends.server) } else { (ends.server, ends.client) };
        if syn {
            per_direction[d].push(Segment::new(
                src,
                dst,
                isn[d],
                if d == 0 { SYN } else { SYN | ACK },
                Bytes::new(),
                0,
            ));
        }
        let bytes = Bytes::copy_from_slice(bytes);
        let mut a = 0;
        while a < bytes.len() {
            let b = (a + segment_size(rng)).min(bytes.len());
            let seq = isn[d].wrapping_add(1).wrapping_add(a as u32);
            let mut s = Segment::new(src, dst, seq, ACK, bytes.slice(a..b), a as u64);
            if rng.one_in(30) {
                s.payload = Bytes::new();
                s = s.with_lost((b - a) as u32);
            }
            if !rng.one_in(50) {
                per_direction[d].push(s);
            }
            a = b;
        }
        let seq = isn[d].wrapping_add(1).wrapping_add(bytes.len() as u32);
        per_direction[d].push(Segment::new(src, dst, seq, FIN | ACK, Bytes::new(), bytes.len() as u64));
    }
    let [client, server] = per_direction;
    let mut merged = interleave(vec![client, server], rng);
    for i in 0..merged.len() {
        if rng.one_in(5) {
            let j = (i + 1 + rng.below(6) as usize).min(merged.len() - 1);
            merged.swap(i, j);
        }
    }
    merged
}

/// Feeds hostile segments: no panic, memory within the limits after every segment, nothing left.
fn survive(segments: &[Segment]) -> Result<(), TestCaseError> {
    let mut a = Assembler::new(tight());
    let mut out = Vec::new();
    let mut last = 0;
    for s in segments {
        last = last.max(s.ts_ns);
        a.push(s.clone(), &mut out);
        prop_assert!(a.memory_bytes() <= FLOW_TOTAL + HTTP_TOTAL, "memory {}", a.memory_bytes());
        out.clear();
    }
    a.tick(last + 1_000_000_000, &mut out);
    prop_assert_eq!(a.memory_bytes(), 0);
    prop_assert_eq!(a.connections(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn hostile_random_frames_after_a_valid_preface_are_survived_within_bounds(
        seed in any::<u64>(),
        frames_each in 1usize..60,
        connections in 1usize..=3,
    ) {
        let mut rng = Rng::new(seed);
        let mut per_conn = Vec::new();
        for c in 0..connections {
            let client = [frames::PREFACE, &frames::settings(&[]), &random_frames(&mut rng, frames_each)].concat();
            let server = random_frames(&mut rng, frames_each);
            per_conn.push(hostile_capture([client, server], Endpoints::nth(c), &mut rng));
        }
        survive(&interleave(per_conn, &mut rng))?;
    }

    #[test]
    fn hostile_mutations_of_real_conversations_are_survived_within_bounds(
        conversation in conversation("m"),
        hand_built in handbuilt::conversation(),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let mut per_conn = Vec::new();
        let real = stack::run(&conversation).recording;
        let (written, _, _) = handbuilt::build(&hand_built);
        for (c, rec) in [real, written].into_iter().enumerate() {
            let mut bytes = rec.bytes;
            for _ in 0..1 + rng.below(4) {
                let d = rng.below(2) as usize;
                mutate(&mut bytes[d], d == 0, &mut rng);
            }
            per_conn.push(hostile_capture(bytes, Endpoints::nth(c), &mut rng));
        }
        survive(&interleave(per_conn, &mut rng))?;
    }
}

// ---------------------------------------------------------------------------------------------
// The workloads contain what the properties claim to cover

/// Counts, over many generated workloads, the wire features the properties are meant to cover;
/// each must show up, or the generators have stopped producing it.
#[test]
fn workloads_cover_the_features_they_claim() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut count = |name: String, yes: bool| *seen.entry(name).or_default() += usize::from(yes);
    let mut look = |rec: &Recording, origin: &'static str| {
        for (d, bytes) in rec.bytes.iter().enumerate() {
            let found = frames::frames_of(bytes, d == 0);
            let has = |f: &dyn Fn(&frames::FrameAt) -> bool| found.iter().any(f);
            let key = |name: &str| format!("{origin} {name}");
            count(key("CONTINUATION"), has(&|f| f.kind == frames::CONTINUATION));
            count(key("RST_STREAM"), has(&|f| f.kind == frames::RST_STREAM));
            count(key("GOAWAY"), has(&|f| f.kind == frames::GOAWAY));
            count(key("PUSH_PROMISE"), has(&|f| f.kind == frames::PUSH_PROMISE));
            count(key("DATA over 16 KiB"), has(&|f| f.kind == frames::DATA && f.end - f.start - 9 > 16_384));
            count(
                key("empty DATA ending a stream"),
                has(&|f| f.kind == frames::DATA && f.end - f.start == 9 && f.flags & frames::END_STREAM != 0),
            );
            count(
                key("HEADERS ending a stream"),
                has(&|f| f.kind == frames::HEADERS && f.flags & frames::END_STREAM != 0),
            );
            let blocks = || found.iter().filter(|f| f.kind == frames::HEADERS).map(|f| f.fragment(bytes));
            count(key("table size update"), blocks().any(|b| b.first().is_some_and(|&x| x & 0xe0 == 0x20)));
            // An indexed field line referring to the dynamic table (index 62 and up, 7-bit prefix).
            count(
                key("dynamic table reference"),
                blocks().any(|b| b.first().is_some_and(|&x| x >= 0x80 | 62)),
            );
            count(key("padded DATA"), has(&|f| f.kind == frames::DATA && f.flags & frames::PADDED != 0));
            count(
                key("padded HEADERS"),
                has(&|f| f.kind == frames::HEADERS && f.flags & frames::PADDED != 0),
            );
            count(
                key("HEADERS with priority"),
                has(&|f| f.kind == frames::HEADERS && f.flags & frames::PRIORITY_FLAG != 0),
            );
            count(key("PRIORITY"), has(&|f| f.kind == frames::PRIORITY));
            count(key("unknown type"), has(&|f| f.kind > frames::CONTINUATION));
        }
    };
    for _ in 0..40 {
        let conversations = conversations().new_tree(&mut runner).expect("tree").current();
        for c in &conversations {
            look(&stack::run(c).recording, "h2");
        }
        let hand_built = handbuilt::conversation().new_tree(&mut runner).expect("tree").current();
        look(&handbuilt::build(&hand_built).0, "hand-built");
    }
    let h2 = [
        "CONTINUATION",
        "RST_STREAM",
        "GOAWAY",
        "PUSH_PROMISE",
        "DATA over 16 KiB",
        "empty DATA ending a stream",
        "HEADERS ending a stream",
        "table size update",
        "dynamic table reference",
    ];
    let hand = [
        "CONTINUATION",
        "RST_STREAM",
        "GOAWAY",
        "PUSH_PROMISE",
        "HEADERS ending a stream",
        "table size update",
        "dynamic table reference",
        "padded DATA",
        "padded HEADERS",
        "HEADERS with priority",
        "PRIORITY",
        "unknown type",
    ];
    let missing: Vec<String> = h2
        .iter()
        .map(|n| format!("h2 {n}"))
        .chain(hand.iter().map(|n| format!("hand-built {n}")))
        .filter(|n| seen.get(n.as_str()).copied().unwrap_or(0) == 0)
        .collect();
    assert!(missing.is_empty(), "never generated: {missing:?}; seen: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Measurement: a capture started in the middle of a long-lived gRPC connection

/// A long-lived connection of unary gRPC calls: the same metadata on every call (as a gRPC
/// client sends it), optionally a request id per call.
fn long_lived(calls: usize, unique_ids: bool, table_size: Option<u32>) -> Conversation {
    let plan = |i: usize| StreamPlan {
        method: 0,
        request_chunks: vec![5 + (i * 37) % 400],
        request_trailers: false,
        large_header: None,
        variant: (i % 7) as u8,
        status: 200,
        interim: false,
        early_head: false,
        response_chunks: vec![5 + (i * 53) % 900],
        response_end: ResponseEnd::Trailers,
        push: false,
        fate: Fate::Complete,
        delay: (i % 3) as u8,
    };
    Conversation {
        label: "long".into(),
        streams: (0..calls).map(plan).collect(),
        concurrency: 4,
        client: Settings { header_table_size: table_size, ..Settings::default() },
        server: Settings { header_table_size: table_size, ..Settings::default() },
        pipe_buffer: 16_384,
        goaway_after: None,
        unique_ids,
        seed: 7,
    }
}

/// When the first HEADERS frame of each client stream was written.
fn request_times(rec: &Recording) -> HashMap<u32, u64> {
    let mut times = HashMap::new();
    for f in frames::frames_of(&rec.bytes[0], true) {
        if f.kind == frames::HEADERS {
            times.entry(f.stream).or_insert_with(|| rec.written_at(0, f.start));
        }
    }
    times
}

/// How many streams of a long-lived connection become visible after the capture starts in its
/// middle. Run with `cargo test --test h2_roundtrip -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, printed: run with --ignored --nocapture"]
fn measure_streams_visible_after_a_mid_stream_start() {
    const CALLS: usize = 600;
    println!("streams visible after a mid-stream start, h2's encoder, {CALLS} unary calls, 4 in flight");
    let workloads = [
        ("constant metadata", false, None),
        ("a request id per call", true, None),
        ("request ids, 256 B tables", true, Some(256)),
    ];
    for (workload, unique_ids, table_size) in workloads {
        let outcome = stack::run(&long_lived(CALLS, unique_ids, table_size));
        let (truths, _) = truths_of(&outcome);
        let rec = &outcome.recording;
        let times = request_times(rec);
        let mut ids: Vec<u32> = truths.iter().map(|t| t.stream_id).collect();
        ids.sort_unstable();
        for start_at in [1usize, 20, 100, 300] {
            for (cutting, skew) in [
                (Cutting::Writes { mss: 1448 }, false),
                (Cutting::Writes { mss: 1448 }, true),
                (Cutting::Random, false),
            ] {
                // The capture starts just before the request of the `start_at`-th call (both
                // directions, or the server's a little later).
                let t = times[&ids[start_at]] - 1;
                let start = if skew { [t, t + 40] } else { [t, t] };
                let mut rng = Rng::new(start_at as u64);
                let segments = capture(rec, Endpoints::nth(0), Capture::From(start), cutting, &mut rng);
                let (out, a) = assemble(&segments, assembler_config(HttpConfig::default()));
                let c = HashMap::from([(Endpoints::nth(0).client, truths.clone())]);
                check_exact(&out, &c).expect("only exact exchanges");
                let after: Vec<u32> =
                    ids.iter().copied().filter(|id| times[id] >= start[0].max(start[1])).collect();
                let emitted: HashSet<u32> = out.iter().filter_map(|e| e.stream_id).collect();
                let first = after.iter().position(|id| emitted.contains(id));
                let within = |n: usize| after.iter().take(n).filter(|id| emitted.contains(id)).count();
                println!(
                    "  {workload:<26} start before call {start_at:>3} ({cutting:?}{}): {} of the {} calls after it visible; first visible: {}; of the next 10/50/200: {}/{}/{}; unresolved {} hpack errors {} framing errors {}",
                    if skew { ", server 40 ticks later" } else { "" },
                    after.iter().filter(|id| emitted.contains(id)).count(),
                    after.len(),
                    first.map_or("none".to_string(), |i| format!("call #{} after the start", i + 1)),
                    within(10),
                    within(50),
                    within(200),
                    a.drops().h2_unresolved_headers,
                    a.drops().h2_hpack_errors,
                    a.drops().h2_framing_error_connections,
                );
            }
        }
    }
}
