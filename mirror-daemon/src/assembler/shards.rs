//! The assembler spread over worker threads, connections sharded by their addresses and ports.
//!
//! One core rebuilds only so many exchanges a second; a busy node's daemon must not be bound to
//! it. Every segment of a connection goes to the same shard — the direction-independent bucket of
//! [`crate::capture::shed`], so a request and its response meet — and each shard is an ordinary
//! [`Assembler`] on its own thread, with its own flow table, framing and share of the limits. What a
//! shard emits for one connection keeps its order; shards interleave only across connections,
//! which nothing downstream depends on. Connection ids are numbered apart per shard
//! ([`Assembler::number_ids`]), so exchange ids stay unique.
//!
//! Counters stay exact. A snapshot ([`ShardEvent::Snapshot`]) is a barrier: each shard answers a
//! stats request in line with its output, and what a shard emits after its answer is held back
//! until every shard has answered. When the snapshot is delivered, whoever consumes the events has
//! seen exactly what each shard had emitted when it counted — so the books balance in every
//! summary, not only the last.
//!
//! Back-pressure, not loss: each shard's input queue is bounded; when a shard falls behind, the
//! capture loop waits on it, the ring buffer fills, and the kernel sheds connections
//! ([`crate::capture::shed`]) — the same path as a capture loop that cannot keep up.
use std::{collections::VecDeque, thread::JoinHandle};

use tokio::sync::mpsc;

use super::{Assembler, AssemblerConfig};
use crate::{
    capture::{Segment, shed::segment_bucket},
    drops::AssemblyDrops,
    exchange::Assembled,
};

/// Segments sent to a shard at once at most.
const BATCH_SEGMENTS: usize = 256;
/// Batches waiting per shard at most (with [`BATCH_SEGMENTS`]: the shard's input queue).
const QUEUED_BATCHES: usize = 16;

/// Threads used when none are asked for: the cores this process may use, at most this many.
pub const MAX_DEFAULT_WORKERS: usize = 4;

/// The default number of workers: the cores the daemon may run on (its CPU affinity and cgroup
/// quota), at most [`MAX_DEFAULT_WORKERS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_DEFAULT_WORKERS)
}

/// The rebuilding state the summary and the books read, summed over shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub drops: AssemblyDrops,
    /// Connections tracked (closed ones awaiting expiry included).
    pub connections: usize,
    /// Bytes buffered: out-of-order TCP data plus partial messages.
    pub buffered_bytes: usize,
    /// Requests seen whose exchange is neither rebuilt nor counted lost yet.
    pub requests_in_progress: u64,
    /// Buckets shed now (the same in every shard).
    pub shed_level: u32,
}

impl ShardStats {
    fn of(assembler: &Assembler) -> Self {
        Self {
            drops: assembler.drops().clone(),
            connections: assembler.connections(),
            buffered_bytes: assembler.memory_bytes(),
            requests_in_progress: assembler.requests_in_progress(),
            shed_level: assembler.shed_level(),
        }
    }

    fn add(&mut self, other: &Self) {
        self.drops.add(&other.drops);
        self.connections += other.connections;
        self.buffered_bytes += other.buffered_bytes;
        self.requests_in_progress += other.requests_in_progress;
        self.shed_level = self.shed_level.max(other.shed_level);
    }
}

/// What the capture loop gets from the shards.
#[derive(Debug)]
pub enum ShardEvent {
    /// Requests and exchanges one shard rebuilt, in its order.
    Items(Vec<Assembled>),
    /// Every shard's state at a barrier: the items delivered before it are exactly those the
    /// shards had emitted when they counted.
    Snapshot(Box<ShardStats>),
}

/// A command to one shard.
enum Input {
    Segments(Vec<Segment>),
    /// Expire idle connections at this time, then answer with stats if asked.
    Tick {
        now_ns: u64,
        answer: bool,
    },
    /// Follow the kernel's shed level.
    ShedLevel {
        level: u32,
        now_ns: u64,
    },
    /// Answer with stats.
    Stats,
    /// Close every connection, emit what that completes, answer with the last stats and stop.
    Finish,
}

/// What one shard sends back.
enum Output {
    Items(Vec<Assembled>),
    Stats(Box<ShardStats>),
    Finished(Box<ShardStats>),
}

/// The shards' answers to one stats request, and the items held back meanwhile.
struct Barrier {
    answers: Vec<Option<Box<ShardStats>>>,
    held: Vec<Vec<Assembled>>,
}

/// Assemblers on worker threads; see the module documentation.
pub struct ShardedAssembler {
    inputs: Vec<mpsc::Sender<Input>>,
    /// Segments routed since the last [`Self::flush`]: each shard's batch being filled, and the
    /// full batches in the order they filled.
    pending: Vec<Vec<Segment>>,
    full: VecDeque<(usize, Vec<Segment>)>,
    outputs: mpsc::UnboundedReceiver<(usize, Output)>,
    threads: Vec<JoinHandle<()>>,
    barrier: Option<Barrier>,
    ready: VecDeque<ShardEvent>,
    /// Stats of the shards that have finished ([`Self::finish`]).
    finished: Vec<Option<Box<ShardStats>>>,
}

impl std::fmt::Debug for ShardedAssembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedAssembler").field("workers", &self.inputs.len()).finish_non_exhaustive()
    }
}

/// A shard stopped before it was told to: only a bug in the rebuilding code (a panic) does this.
#[derive(Debug, thiserror::Error)]
#[error(
    "rebuilding worker {0} stopped unexpectedly (see the panic message above); restart the daemon, and \
     report it with the log"
)]
pub struct ShardStopped(pub usize);

impl ShardedAssembler {
    /// Starts `workers` shards (at least 1). `config` is the whole daemon's: each shard gets an
    /// equal part of the connection and buffer limits.
    pub fn start(config: AssemblerConfig, workers: usize) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let (output_tx, outputs) = mpsc::unbounded_channel();
        let mut inputs = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for shard in 0..workers {
            let mut assembler = Assembler::new(shard_config(&config, workers));
            assembler.number_ids(shard as u64 + 1, workers as u64);
            let (input_tx, input) = mpsc::channel(QUEUED_BATCHES);
            let output = output_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("rebuild-{shard}"))
                .spawn(move || work(shard, assembler, input, output))?;
            inputs.push(input_tx);
            threads.push(thread);
        }
        Ok(Self {
            inputs,
            pending: (0..workers).map(|_| Vec::new()).collect(),
            full: VecDeque::new(),
            outputs,
            threads,
            barrier: None,
            ready: VecDeque::new(),
            finished: vec![None; workers],
        })
    }

    pub fn workers(&self) -> usize {
        self.inputs.len()
    }

    /// The shard a segment's connection belongs to.
    pub fn shard_of(&self, segment: &Segment) -> usize {
        segment_bucket(segment) as usize % self.inputs.len()
    }

    /// Routes one captured segment to its shard; it is sent on the next [`Self::flush`].
    pub fn route(&mut self, segment: Segment) {
        let shard = self.shard_of(&segment);
        let batch = &mut self.pending[shard];
        batch.push(segment);
        if batch.len() == BATCH_SEGMENTS {
            let batch = std::mem::replace(batch, Vec::with_capacity(BATCH_SEGMENTS));
            self.full.push_back((shard, batch));
        }
    }

    /// Sends the routed segments, waiting while a shard's queue is full.
    pub async fn flush(&mut self) -> Result<(), ShardStopped> {
        // A shard's full batches were filled before its partial one: its order is kept.
        while let Some((shard, batch)) = self.full.pop_front() {
            self.send(shard, Input::Segments(batch)).await?;
        }
        for shard in 0..self.inputs.len() {
            if !self.pending[shard].is_empty() {
                let batch = std::mem::take(&mut self.pending[shard]);
                self.send(shard, Input::Segments(batch)).await?;
            }
        }
        Ok(())
    }

    /// Expires idle connections in every shard; a [`ShardEvent::Snapshot`] follows (unless one
    /// is already on its way, which serves as well).
    pub async fn tick(&mut self, now_ns: u64) -> Result<(), ShardStopped> {
        self.flush().await?;
        let answer = self.barrier.is_none();
        self.broadcast(|| Input::Tick { now_ns, answer }, answer).await
    }

    /// Asks every shard for its state; a [`ShardEvent::Snapshot`] follows (unless one is already
    /// on its way, which serves as well).
    pub async fn request_snapshot(&mut self) -> Result<(), ShardStopped> {
        if self.barrier.is_some() {
            return Ok(());
        }
        self.flush().await?;
        self.broadcast(|| Input::Stats, true).await
    }

    /// Moves every shard to the kernel's new shed level.
    pub async fn set_shed_level(&mut self, level: u32, now_ns: u64) -> Result<(), ShardStopped> {
        self.flush().await?;
        self.broadcast(|| Input::ShedLevel { level, now_ns }, false).await
    }

    /// The next event. Cancel-safe: an event taken from the shards is never lost.
    pub async fn next(&mut self) -> Result<ShardEvent, ShardStopped> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            let Some((shard, output)) = self.outputs.recv().await else {
                return Err(ShardStopped(0));
            };
            self.take(shard, output)?;
        }
    }

    /// Stops every shard: connections still open are closed (their requests counted
    /// `open_at_exit`), what that completes goes to `each`, and the last state is returned.
    pub async fn finish(&mut self, mut each: impl FnMut(Vec<Assembled>)) -> Result<ShardStats, ShardStopped> {
        // A barrier still open never completes now: what it held is delivered, without a snapshot.
        if let Some(barrier) = self.barrier.take() {
            let held = barrier.held.into_iter().filter(|items| !items.is_empty());
            self.ready.extend(held.map(ShardEvent::Items));
        }
        self.flush().await?;
        self.broadcast(|| Input::Finish, false).await?;
        while self.finished.iter().any(Option::is_none) || !self.ready.is_empty() {
            if let Some(event) = self.ready.pop_front() {
                if let ShardEvent::Items(items) = event {
                    each(items);
                }
                continue;
            }
            let Some((shard, output)) = self.outputs.recv().await else { break };
            self.take(shard, output)?;
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let mut total = ShardStats::default();
        for (shard, stats) in self.finished.iter().enumerate() {
            total.add(stats.as_ref().ok_or(ShardStopped(shard))?);
        }
        Ok(total)
    }

    async fn send(&self, shard: usize, input: Input) -> Result<(), ShardStopped> {
        self.inputs[shard].send(input).await.map_err(|_| ShardStopped(shard))
    }

    /// Sends `input` to every shard; with `answers`, opens the barrier their stats will close
    /// (never while one is open: its held items would be lost).
    async fn broadcast(&mut self, input: impl Fn() -> Input, answers: bool) -> Result<(), ShardStopped> {
        if answers {
            debug_assert!(self.barrier.is_none(), "a barrier is already open");
            let n = self.inputs.len();
            self.barrier = Some(Barrier { answers: vec![None; n], held: vec![Vec::new(); n] });
        }
        for shard in 0..self.inputs.len() {
            self.send(shard, input()).await?;
        }
        Ok(())
    }

    /// Files one shard's output: delivered, held behind a barrier, or completing it.
    fn take(&mut self, shard: usize, output: Output) -> Result<(), ShardStopped> {
        match output {
            Output::Items(items) => match &mut self.barrier {
                Some(barrier) if barrier.answers[shard].is_some() => barrier.held[shard].extend(items),
                _ => self.ready.push_back(ShardEvent::Items(items)),
            },
            Output::Stats(stats) => {
                let Some(barrier) = &mut self.barrier else { return Ok(()) };
                barrier.answers[shard] = Some(stats);
                if barrier.answers.iter().all(Option::is_some) {
                    let barrier = self.barrier.take().expect("checked above");
                    let mut total = ShardStats::default();
                    barrier.answers.iter().flatten().for_each(|s| total.add(s));
                    self.ready.push_back(ShardEvent::Snapshot(Box::new(total)));
                    let held = barrier.held.into_iter().filter(|items| !items.is_empty());
                    self.ready.extend(held.map(ShardEvent::Items));
                }
            }
            Output::Finished(stats) => {
                if self.finished[shard].replace(stats).is_some() {
                    return Err(ShardStopped(shard));
                }
            }
        }
        Ok(())
    }
}

impl Drop for ShardedAssembler {
    fn drop(&mut self) {
        // Closing the inputs stops the workers; they are not waited for.
        self.inputs.clear();
    }
}

/// One shard's part of the daemon-wide configuration.
fn shard_config(config: &AssemblerConfig, workers: usize) -> AssemblerConfig {
    let mut c = config.clone();
    let part = |total: usize| total.div_ceil(workers).max(1);
    c.flows.limits.max_connections = part(c.flows.limits.max_connections);
    c.flows.limits.max_buffered_total = part(c.flows.limits.max_buffered_total);
    c.http.max_buffered_total = part(c.http.max_buffered_total);
    c
}

/// A shard's thread: commands in, items and stats out, until told to finish or abandoned.
fn work(
    shard: usize,
    mut assembler: Assembler,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::UnboundedSender<(usize, Output)>,
) {
    let mut out = Vec::new();
    while let Some(command) = input.blocking_recv() {
        let answer = match command {
            Input::Segments(segments) => {
                for segment in segments {
                    assembler.push(segment, &mut out);
                }
                false
            }
            Input::Tick { now_ns, answer } => {
                assembler.tick(now_ns, &mut out);
                answer
            }
            Input::ShedLevel { level, now_ns } => {
                assembler.set_shed_level(level, now_ns, &mut out);
                false
            }
            Input::Stats => true,
            Input::Finish => {
                assembler.finish(&mut out);
                if !out.is_empty() {
                    let _ = output.send((shard, Output::Items(std::mem::take(&mut out))));
                }
                let _ = output.send((shard, Output::Finished(Box::new(ShardStats::of(&assembler)))));
                return;
            }
        };
        if !out.is_empty() && output.send((shard, Output::Items(std::mem::take(&mut out)))).is_err() {
            return;
        }
        if answer && output.send((shard, Output::Stats(Box::new(ShardStats::of(&assembler))))).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, HashSet},
        net::SocketAddr,
    };

    use bytes::Bytes;
    use mirror_common::tcp_flags::{ACK, FIN, PSH, SYN};

    use super::*;
    use crate::flows::FlowConfig;

    const SERVER_PORT: u16 = 8080;

    fn config() -> AssemblerConfig {
        AssemblerConfig {
            flows: FlowConfig { server_ports: vec![SERVER_PORT], ..FlowConfig::default() },
            ..AssemblerConfig::default()
        }
    }

    /// `connections` keep-alive connections with `per_connection` exchanges each, interleaved
    /// round-robin; request `n` of connection `c` carries `c:n` and its response `r-c:n`.
    fn capture(connections: u16, per_connection: u32) -> Vec<Segment> {
        let server: SocketAddr = ([10, 0, 0, 2], SERVER_PORT).into();
        let clients: Vec<SocketAddr> = (0..connections).map(|i| ([10, 0, 1, 1], 20_000 + i).into()).collect();
        let mut seqs = vec![(1u32, 1u32); clients.len()];
        let mut segs = Vec::new();
        let mut ts = 0;
        let mut at = || {
            ts += 10;
            ts
        };
        for client in &clients {
            segs.push(Segment::new(*client, server, 0, SYN, Bytes::new(), at()));
            segs.push(Segment::new(server, *client, 0, SYN | ACK, Bytes::new(), at()));
        }
        for n in 0..per_connection {
            for (c, client) in clients.iter().enumerate() {
                let body = format!("{c}:{n}");
                let request = format!("POST /infer HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let response =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nr-{body}", body.len() + 2);
                let (cseq, sseq) = &mut seqs[c];
                segs.push(Segment::new(
                    *client,
                    server,
                    *cseq,
                    ACK | PSH,
                    Bytes::from(request.clone()),
                    at(),
                ));
                *cseq += request.len() as u32;
                segs.push(Segment::new(
                    server,
                    *client,
                    *sseq,
                    ACK | PSH,
                    Bytes::from(response.clone()),
                    at(),
                ));
                *sseq += response.len() as u32;
            }
        }
        for (c, client) in clients.iter().enumerate() {
            let (cseq, sseq) = seqs[c];
            segs.push(Segment::new(*client, server, cseq, FIN | ACK, Bytes::new(), at()));
            segs.push(Segment::new(server, *client, sseq, FIN | ACK, Bytes::new(), at()));
        }
        segs
    }

    /// Per client: the (request, response) bodies in the order they were rebuilt.
    fn by_client(items: &[Assembled]) -> BTreeMap<SocketAddr, Vec<(Bytes, Bytes)>> {
        let mut map: BTreeMap<SocketAddr, Vec<(Bytes, Bytes)>> = BTreeMap::new();
        for item in items {
            if let Assembled::Exchange(e) = item {
                map.entry(e.client).or_default().push((e.request.body.clone(), e.response.body.clone()));
            }
        }
        map
    }

    fn inline(segs: &[Segment]) -> (Vec<Assembled>, AssemblyDrops) {
        let mut a = Assembler::new(config());
        let mut out = Vec::new();
        for s in segs {
            a.push(s.clone(), &mut out);
        }
        a.finish(&mut out);
        (out, a.drops().clone())
    }

    /// Routes `chunk` segments per flush (a ring-buffer drain), more than a batch included.
    async fn sharded(segs: &[Segment], workers: usize, chunk: usize) -> (Vec<Assembled>, ShardStats) {
        let mut shards = ShardedAssembler::start(config(), workers).expect("start");
        let mut out = Vec::new();
        for chunk in segs.chunks(chunk) {
            chunk.iter().for_each(|s| shards.route(s.clone()));
            shards.flush().await.expect("flush");
        }
        let stats = shards.finish(|items| out.extend(items)).await.expect("finish");
        (out, stats)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shards_rebuild_what_one_assembler_does_each_connection_in_order() {
        let segs = capture(40, 25);
        let (expected, expected_drops) = inline(&segs);
        assert_eq!(by_client(&expected).values().map(Vec::len).sum::<usize>(), 1000);
        for (workers, chunk) in [(1, 97), (2, 97), (3, 97), (1, segs.len()), (2, 1000)] {
            let (items, stats) = sharded(&segs, workers, chunk).await;
            assert_eq!(by_client(&items), by_client(&expected), "{workers} workers");
            assert_eq!(stats.drops, expected_drops, "{workers} workers");
            assert_eq!(stats.requests_in_progress, 0);
            let ids: HashSet<_> = items
                .iter()
                .filter_map(|i| match i {
                    Assembled::Exchange(e) => Some(e.id),
                    Assembled::Request(_) => None,
                })
                .collect();
            assert_eq!(ids.len(), 1000, "{workers} workers: exchange ids are unique across shards");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pairs_are_each_requests_own_answer() {
        let (items, _) = sharded(&capture(16, 40), 2, 97).await;
        let mut n = 0;
        for (request, response) in by_client(&items).values().flatten() {
            assert_eq!(&response[..], [&b"r-"[..], &request[..]].concat(), "mispaired");
            n += 1;
        }
        assert_eq!(n, 640);
    }

    /// Every snapshot balances against what was delivered before it: requests seen = exchanges
    /// delivered + requests in progress (this traffic loses nothing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_snapshot_matches_what_was_delivered_before_it() {
        let segs = capture(30, 30);
        let mut shards = ShardedAssembler::start(config(), 3).expect("start");
        let mut delivered = 0u64;
        let mut snapshots = 0;
        let check = |event: ShardEvent, delivered: &mut u64, snapshots: &mut u32| match event {
            ShardEvent::Items(items) => *delivered += items.len() as u64,
            ShardEvent::Snapshot(stats) => {
                *snapshots += 1;
                assert_eq!(stats.drops.requests_seen, *delivered + stats.requests_in_progress, "{stats:?}");
            }
        };
        // Segments keep flowing while barriers are open, and events are taken only now and then:
        // shards answer at different points of their work, and go on emitting after answering.
        for (i, chunk) in segs.chunks(11).enumerate() {
            chunk.iter().for_each(|s| shards.route(s.clone()));
            shards.flush().await.expect("flush");
            if i % 4 == 0 {
                shards.request_snapshot().await.expect("snapshot");
            }
            // Ticks (nothing is idle yet) overlap the open barriers: none may be lost or doubled.
            if i % 3 == 0 {
                shards.tick(0).await.expect("tick");
            }
            if i % 16 == 15 {
                while let Ok(Ok(event)) =
                    tokio::time::timeout(std::time::Duration::from_micros(100), shards.next()).await
                {
                    check(event, &mut delivered, &mut snapshots);
                }
            }
        }
        shards.request_snapshot().await.expect("snapshot");
        let before = snapshots;
        while snapshots == before {
            let event = shards.next().await.expect("next");
            check(event, &mut delivered, &mut snapshots);
        }
        assert!(snapshots >= 2, "{snapshots} snapshots");
        let stats = shards.finish(|items| delivered += items.len() as u64).await.expect("finish");
        assert_eq!(delivered, 900);
        assert_eq!(stats.drops.requests_seen, 900);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limits_are_split_between_shards() {
        let mut whole = config();
        whole.flows.limits.max_connections = 1000;
        whole.flows.limits.max_buffered_total = 3 << 20;
        whole.http.max_buffered_total = 1 << 20;
        let part = shard_config(&whole, 4);
        assert_eq!(part.flows.limits.max_connections, 250);
        assert_eq!(part.flows.limits.max_buffered_total, (3 << 20) / 4);
        assert_eq!(part.http.max_buffered_total, (1 << 20) / 4);
        assert_eq!(part.flows.limits.max_buffered_per_conn, whole.flows.limits.max_buffered_per_conn);
    }
}
