//! Sends replays to one shadow: a bounded queue in front of pooled clients — keep-alive HTTP/1.1
//! and multiplexed h2c — with a cap on requests in flight and a per-request timeout.
//!
//! Capture never waits for a shadow. [`ShadowClient::submit`] only tries to enqueue; when the
//! queue is full (the shadow is slow or down) the replay is dropped and counted. How many replays
//! are in flight at once follows the shadow ([`super::concurrency`]) unless a fixed limit is set.
//! Memory is bounded by the replay share of the memory budget: each queued request holds a
//! [`Charge`] for its bytes, and an answer is charged as it is read; an answer that does not fit
//! is given up (`memory_budget`) rather than read further.
//!
//! Every connection is opened by [`ReplayConnector`], which binds the socket first and registers
//! it in [`OwnConnections`] before the SYN leaves, so the capture never rebuilds the daemon's own
//! replays, wherever the shadow is. A pooled connection can be closed by the shadow between two
//! replays (a server that closes keep-alive connections after an error, an idle timeout racing a
//! new request); a replay that fails on a reused connection before any response byte came is sent
//! once more on a fresh connection (counted), since nothing says the shadow saw it. A fresh
//! connection's failure is the shadow's.
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Request, Uri,
    header::{HeaderName, HeaderValue},
};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection, capture_connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use tokio::sync::{Notify, mpsc};

use super::{
    concurrency::{Controller, Observation},
    join::{NOT_SENT_MEMORY_BUDGET, ShadowAnswer, ShadowResult},
    request::Outgoing,
    target::{ShadowTarget, Transport},
};
use crate::{
    budget::{Account, Charge},
    capture::ignore::OwnConnections,
    exchange::{ExchangeId, Header},
};

/// How often an adaptive in-flight limit is updated.
const CONTROL_EVERY: Duration = Duration::from_millis(100);

/// Bounds of the replay to one shadow.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// Until the response head, and for a plain body until its end.
    pub timeout: Duration,
    /// An event-stream answer: longest wait between two pieces of its body.
    pub stream_idle_timeout: Duration,
    /// An event-stream answer: longest time in all.
    pub stream_timeout: Duration,
    /// Replays in flight at most: a fixed limit, or `None` to follow the shadow's latency and
    /// the request rate.
    pub max_in_flight: Option<usize>,
    pub queue: usize,
    pub max_response_bytes: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            stream_idle_timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(600),
            max_in_flight: None,
            queue: 1024,
            max_response_bytes: 64 << 20,
        }
    }
}

/// One replay to send.
#[derive(Debug)]
pub struct Job {
    pub id: ExchangeId,
    pub outgoing: Outgoing,
    /// The request's bytes, held against the replay share until the replay ends.
    pub charge: Charge,
}

/// One replay's result, sent back to the pipeline.
#[derive(Debug)]
pub struct Done {
    pub id: ExchangeId,
    pub shadow: usize,
    pub result: ShadowResult,
    /// The answer's bytes, held against the replay share until it is compared.
    pub charge: Charge,
}

/// Monotonic counters of one shadow's replays (and the in-flight gauge).
#[derive(Debug, Default)]
pub struct ReplayCounters {
    pub submitted: AtomicU64,
    pub queue_full: AtomicU64,
    pub answered: AtomicU64,
    pub timed_out: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicU64,
    /// Replays sent again on a fresh connection after the reused one failed before answering.
    pub retries: AtomicU64,
    /// Answers given up because the replay share of the memory budget was full.
    pub memory_budget: AtomicU64,
    /// Replays not sent (never submitted) because the replay share had no room for the request,
    /// or the queues share none for production's exchange until the answer comes.
    pub not_sent_memory_budget: AtomicU64,
    /// The in-flight limit now (a gauge).
    pub max_in_flight: AtomicU64,
    /// Latencies of finished replays added up, in ns (for the in-flight limit).
    pub latency_ns_total: AtomicU64,
    /// Request and answer bytes of finished replays added up (for the in-flight limit).
    pub bytes_total: AtomicU64,
}

impl ReplayCounters {
    /// Replays submitted and not finished yet (queued or in flight).
    pub fn pending(&self) -> u64 {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        get(&self.submitted).saturating_sub(self.finished())
    }

    /// Replays that finished (answered, timed out, failed, or given up for the memory budget).
    pub fn finished(&self) -> u64 {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        get(&self.answered) + get(&self.timed_out) + get(&self.failed) + get(&self.memory_budget)
    }

    /// `(name, value)` pairs for logs and metrics.
    pub fn list(&self) -> [(&'static str, u64); 9] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("submitted", get(&self.submitted)),
            ("queue_full", get(&self.queue_full)),
            ("answered", get(&self.answered)),
            ("timed_out", get(&self.timed_out)),
            ("failed", get(&self.failed)),
            ("in_flight", get(&self.in_flight)),
            ("max_in_flight", get(&self.max_in_flight)),
            ("replay_retries", get(&self.retries)),
            ("memory_budget", get(&self.memory_budget) + get(&self.not_sent_memory_budget)),
        ]
    }
}

/// What a connection tells about itself: how many answers it has carried (a connection that
/// carried none is fresh).
#[derive(Debug, Default)]
struct ConnectionUse {
    answers: AtomicU64,
}

/// A replay connection: the socket, registered as the daemon's own until it is dropped.
#[derive(Debug)]
pub struct ReplayStream {
    io: TokioIo<tokio::net::TcpStream>,
    use_: Arc<ConnectionUse>,
    own: Arc<OwnConnections>,
    remote: SocketAddr,
    local_port: u16,
}

impl Drop for ReplayStream {
    fn drop(&mut self) {
        self.own.closed(self.remote, self.local_port, Instant::now());
    }
}

impl Connection for ReplayStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.use_.clone())
    }
}

impl hyper::rt::Read for ReplayStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ReplayStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Opens replay connections: resolve, bind, register, connect.
#[derive(Clone, Debug)]
pub struct ReplayConnector {
    own: Arc<OwnConnections>,
    timeout: Duration,
}

impl ReplayConnector {
    pub fn new(own: Arc<OwnConnections>, timeout: Duration) -> Self {
        Self { own, timeout }
    }

    async fn connect(self, uri: Uri) -> io::Result<ReplayStream> {
        let host = uri.host().ok_or_else(|| io::Error::other("replay URI without a host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let remote = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| io::Error::other(format!("{host} resolves to no address")))?;
        let socket = if remote.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        let any: SocketAddr = if remote.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }
            .map_err(io::Error::other)?;
        socket.bind(any)?;
        let local_port = socket.local_addr()?.port();
        // Registered before the SYN: the capture knows this connection from its first segment.
        self.own.register(remote, local_port);
        let stream = ReplayStream {
            io: TokioIo::new(match tokio::time::timeout(self.timeout, socket.connect(remote)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    self.own.closed(remote, local_port, Instant::now());
                    return Err(err);
                }
                Err(_) => {
                    self.own.closed(remote, local_port, Instant::now());
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect to {remote} timed out"),
                    ));
                }
            }),
            use_: Arc::default(),
            own: self.own.clone(),
            remote,
            local_port,
        };
        stream.io.inner().set_nodelay(true)?;
        Ok(stream)
    }
}

impl tower_service::Service<Uri> for ReplayConnector {
    type Response = ReplayStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<ReplayStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

type HttpClient = Client<ReplayConnector, Full<Bytes>>;

/// Idle keep-alive connections kept per shadow when the in-flight limit adapts.
const MAX_IDLE: usize = 256;

/// The in-flight limit and the signal that a replay finished, shared by the sending loop, the
/// replays and the controller.
#[derive(Debug)]
struct Flight {
    limit: AtomicU64,
    finished: Notify,
}

/// Updates an adaptive limit from what the counters saw, until the sending loop ends.
async fn control(mut controller: Controller, flight: std::sync::Weak<Flight>, counters: Arc<ReplayCounters>) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let offered = |c: &ReplayCounters| get(&c.submitted) + get(&c.queue_full);
    let mut last = (
        Instant::now(),
        offered(&counters),
        counters.finished(),
        get(&counters.latency_ns_total),
        get(&counters.bytes_total),
    );
    let mut every = tokio::time::interval(CONTROL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(flight) = flight.upgrade() else { return };
        let now = (
            Instant::now(),
            offered(&counters),
            counters.finished(),
            get(&counters.latency_ns_total),
            get(&counters.bytes_total),
        );
        let limit = controller.update(Observation {
            elapsed_s: now.0.duration_since(last.0).as_secs_f64(),
            offered: now.1 - last.1,
            finished: now.2 - last.2,
            latency_sum_s: (now.3 - last.3) as f64 / 1e9,
            bytes: now.4 - last.4,
        });
        last = now;
        flight.limit.store(limit as u64, Ordering::Relaxed);
        counters.max_in_flight.store(limit as u64, Ordering::Relaxed);
        // A higher limit may let the sending loop go on.
        flight.finished.notify_one();
    }
}

/// The pooled clients of one shadow: per transport, one that keeps connections and one that
/// never reuses them (for the retry).
#[derive(Clone, Debug)]
struct Clients {
    http1: HttpClient,
    h2c: HttpClient,
    fresh_http1: HttpClient,
    fresh_h2c: HttpClient,
}

impl Clients {
    fn new(connector: ReplayConnector, limits: &ClientLimits) -> Self {
        let build = |h2: bool, pool: bool| {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_max_idle_per_host(if pool { limits.max_in_flight.unwrap_or(MAX_IDLE) } else { 0 })
                .pool_idle_timeout(Duration::from_secs(30))
                .http2_only(h2);
            builder.build(connector.clone())
        };
        Self {
            http1: build(false, true),
            h2c: build(true, true),
            fresh_http1: build(false, false),
            fresh_h2c: build(true, false),
        }
    }

    fn get(&self, transport: Transport, fresh: bool) -> &HttpClient {
        match (transport, fresh) {
            (Transport::Http1, false) => &self.http1,
            (Transport::Http1, true) => &self.fresh_http1,
            (Transport::H2c, false) => &self.h2c,
            (Transport::H2c, true) => &self.fresh_h2c,
        }
    }
}

/// The handle the pipeline submits to.
#[derive(Debug)]
pub struct ShadowClient {
    pub target: ShadowTarget,
    pub counters: Arc<ReplayCounters>,
    tx: mpsc::Sender<Job>,
}

impl ShadowClient {
    /// Starts the dispatcher for shadow number `index`; results go to `done`. Its connections are
    /// registered in `own`; answers are charged to `memory` (the replay share of the budget).
    pub fn spawn(
        index: usize,
        target: ShadowTarget,
        limits: ClientLimits,
        own: Arc<OwnConnections>,
        memory: Arc<Account>,
        done: mpsc::UnboundedSender<Done>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(limits.queue.max(1));
        let counters = Arc::new(ReplayCounters::default());
        let clients = Clients::new(ReplayConnector::new(own, limits.timeout), &limits);
        let controller = match limits.max_in_flight {
            Some(n) => Controller::fixed(n),
            None => Controller::adaptive(memory.limit() as u64),
        };
        let flight =
            Arc::new(Flight { limit: AtomicU64::new(controller.limit() as u64), finished: Notify::new() });
        counters.max_in_flight.store(controller.limit() as u64, Ordering::Relaxed);
        if controller.is_adaptive() {
            tokio::spawn(control(controller, Arc::downgrade(&flight), counters.clone()));
        }
        let task_counters = counters.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                // Wait for room under the limit; a replay finishing or the limit rising wakes this.
                while task_counters.in_flight.load(Ordering::Relaxed) >= flight.limit.load(Ordering::Relaxed)
                {
                    flight.finished.notified().await;
                }
                let (clients, done, counters, limits, flight, memory) = (
                    clients.clone(),
                    done.clone(),
                    task_counters.clone(),
                    limits.clone(),
                    flight.clone(),
                    memory.clone(),
                );
                counters.in_flight.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Job { id, outgoing, charge: request_charge } = job;
                    let request_bytes = request_charge.bytes();
                    let mut charge = memory.charge(0).unwrap_or_default();
                    let started = Instant::now();
                    let result = send(&clients, outgoing, &limits, &counters, &mut charge).await;
                    drop(request_charge);
                    let counter = match &result {
                        ShadowResult::Answered { .. } => &counters.answered,
                        ShadowResult::TimedOut { .. } => &counters.timed_out,
                        ShadowResult::NotSent { .. } => &counters.memory_budget,
                        ShadowResult::Failed { .. } => &counters.failed,
                    };
                    let latency_ns = result.latency_ns().unwrap_or(started.elapsed().as_nanos() as u64);
                    counters.latency_ns_total.fetch_add(latency_ns, Ordering::Relaxed);
                    counters
                        .bytes_total
                        .fetch_add((request_bytes + charge.bytes()) as u64, Ordering::Relaxed);
                    counter.fetch_add(1, Ordering::Relaxed);
                    if !matches!(result, ShadowResult::Answered { .. }) {
                        // Nothing of the answer is kept.
                        charge = Charge::default();
                    }
                    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    flight.finished.notify_one();
                    let _ = done.send(Done { id, shadow: index, result, charge });
                });
            }
        });
        Self { target, counters, tx }
    }

    /// Enqueues a replay without waiting; false (and counted) when the queue is full.
    pub fn submit(&self, job: Job) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.counters.submitted.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The error and its causes, `a: b: c`.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn headers_of(map: &hyper::HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_string(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
        .collect()
}

fn build_request(outgoing: &Outgoing) -> Result<Request<Full<Bytes>>, String> {
    let mut builder = Request::builder().method(outgoing.method.as_str()).uri(outgoing.uri.as_str());
    if outgoing.transport == Transport::H2c {
        builder = builder.version(hyper::Version::HTTP_2);
    }
    for (name, value) in &outgoing.headers {
        // Headers that were valid on the wire are valid here; anything else is left out.
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_maybe_shared(value.clone()))
        {
            builder = builder.header(name, value);
        }
    }
    builder.body(Full::new(outgoing.body.clone())).map_err(|err| format!("build request: {err}"))
}

/// How one attempt ended.
enum Attempt {
    Answered(ShadowAnswer),
    /// Failed before any response byte, on a connection that had carried answers before.
    FailedReused(String),
    Failed(String),
    TimedOut,
    /// The answer did not fit in the replay share of the memory budget.
    OverBudget,
}

/// One attempt, begun at `begun`: the response head within `limits.timeout`; then a plain body
/// within the same time, an event stream (a streamed LLM answer, which may take minutes) with at
/// most `stream_idle_timeout` between two pieces and `stream_timeout` in all. Each piece of the
/// body is timed, as production's are by the kernel, and charged to `charge` as it comes.
async fn attempt(
    client: &HttpClient,
    outgoing: &Outgoing,
    limits: &ClientLimits,
    begun: Instant,
    charge: &mut Charge,
) -> Attempt {
    let mut request = match build_request(outgoing) {
        Ok(request) => request,
        Err(error) => return Attempt::Failed(error),
    };
    let connection = capture_connection(&mut request);
    let head_deadline = tokio::time::Instant::from_std(begun + limits.timeout);
    let response = match tokio::time::timeout_at(head_deadline, client.request(request)).await {
        Err(_) => return Attempt::TimedOut,
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            let mut extensions = hyper::http::Extensions::new();
            if let Some(connected) = connection.connection_metadata().as_ref() {
                connected.get_extras(&mut extensions);
            }
            let reused =
                extensions.get::<Arc<ConnectionUse>>().is_some_and(|u| u.answers.load(Ordering::Relaxed) > 0);
            let error = chain(&err);
            return if reused { Attempt::FailedReused(error) } else { Attempt::Failed(error) };
        }
    };
    if let Some(use_) = response.extensions().get::<Arc<ConnectionUse>>() {
        use_.answers.fetch_add(1, Ordering::Relaxed);
    }
    let status = response.status().as_u16();
    let headers = headers_of(response.headers());
    let streamed = crate::sse::is_event_stream(&headers);
    let (deadline, idle) = if streamed {
        (tokio::time::Instant::from_std(begun + limits.stream_timeout), limits.stream_idle_timeout)
    } else {
        (head_deadline, limits.timeout)
    };
    let mut body = Limited::new(response.into_body(), limits.max_response_bytes);
    let mut answer = ShadowAnswer { status, headers, ..ShadowAnswer::default() };
    let mut parts = crate::exchange::BodyBuilder::timed();
    loop {
        let next = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + idle), body.frame());
        let frame = match next.await {
            Err(_) => return Attempt::TimedOut,
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                return Attempt::Failed(format!("read response body: {}", chain(err.as_ref())));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            // Copied out: hyper's frames are slices of its read buffer, so a stream of small
            // events kept as frames would hold a buffer of several KiB per event (and the budget
            // would be charged a fraction of what is held).
            Ok(data) => {
                if !charge.grow(data.len()) {
                    return Attempt::OverBudget;
                }
                parts.push(Bytes::copy_from_slice(&data), begun.elapsed().as_nanos() as u64, usize::MAX)
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    answer.trailers = headers_of(&trailers);
                }
            }
        }
    }
    (answer.body, answer.arrivals) = parts.take();
    Attempt::Answered(answer)
}

async fn send(
    clients: &Clients,
    outgoing: Outgoing,
    limits: &ClientLimits,
    counters: &ReplayCounters,
    charge: &mut Charge,
) -> ShadowResult {
    let started = Instant::now();
    let (outcome, from) =
        match attempt(clients.get(outgoing.transport, false), &outgoing, limits, started, charge).await {
            Attempt::FailedReused(_) => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let retried = Instant::now();
                let client = clients.get(outgoing.transport, true);
                (attempt(client, &outgoing, limits, retried, charge).await, retried)
            }
            other => (other, started),
        };
    match outcome {
        Attempt::Answered(answer) => {
            ShadowResult::Answered { answer, latency_ns: from.elapsed().as_nanos() as u64 }
        }
        Attempt::Failed(error) | Attempt::FailedReused(error) => {
            ShadowResult::Failed { error, latency_ns: from.elapsed().as_nanos() as u64 }
        }
        Attempt::TimedOut => ShadowResult::TimedOut { latency_ns: started.elapsed().as_nanos() as u64 },
        Attempt::OverBudget => {
            // What was read is given back: the answer is not kept.
            *charge = Charge::default();
            ShadowResult::NotSent { reason: NOT_SENT_MEMORY_BUDGET }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::{
        capture::Segment,
        exchange::{HttpVersion, Request as Captured},
        replay::request::{ReplayOptions, build},
    };

    fn outgoing(spec: &str, version: HttpVersion, path: &str) -> Outgoing {
        let target = ShadowTarget::parse(spec).unwrap();
        let endpoint = target.endpoint_for(version, 80).unwrap();
        let request = Captured { method: "POST".into(), target: path.into(), version, ..Captured::default() };
        build(&request, &endpoint, &ReplayOptions::default())
    }

    fn limits() -> ClientLimits {
        ClientLimits { timeout: Duration::from_secs(5), ..ClientLimits::default() }
    }

    /// Reads one HTTP/1.1 request head (no body in these tests); false at EOF.
    async fn read_head(conn: &mut tokio::net::TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    /// A shadow that, on each connection, answers `answers` requests and then closes the
    /// connection when the next request arrives, without answering it (as a server that decided
    /// to close a keep-alive connection after an error). Returns its address and the client
    /// addresses it saw.
    async fn closing_shadow(answers: usize) -> (SocketAddr, Arc<std::sync::Mutex<Vec<SocketAddr>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = peers.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer);
                tokio::spawn(async move {
                    for _ in 0..answers {
                        if !read_head(&mut conn).await {
                            return;
                        }
                        let answer = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\n\r\nno";
                        conn.write_all(answer).await.unwrap();
                    }
                    let _ = read_head(&mut conn).await;
                    // Dropped: the request just read is never answered.
                });
            }
        });
        (addr, peers)
    }

    #[tokio::test]
    async fn a_replay_that_fails_on_a_reused_connection_is_sent_once_more_on_a_fresh_one() {
        let (addr, peers) = closing_shadow(1).await;
        let own = Arc::new(OwnConnections::new());
        let clients = Clients::new(ReplayConnector::new(own.clone(), Duration::from_secs(5)), &limits());
        let counters = ReplayCounters::default();
        let spec = format!("m=http://{addr}");
        let first = send(
            &clients,
            outgoing(&spec, HttpVersion::Http11, "/1"),
            &limits(),
            &counters,
            &mut Charge::default(),
        )
        .await;
        assert!(matches!(&first, ShadowResult::Answered { answer, .. } if answer.status == 500), "{first:?}");
        let second = send(
            &clients,
            outgoing(&spec, HttpVersion::Http11, "/2"),
            &limits(),
            &counters,
            &mut Charge::default(),
        )
        .await;
        assert!(
            matches!(&second, ShadowResult::Answered { answer, .. } if answer.status == 500),
            "{second:?}"
        );
        assert_eq!(counters.retries.load(Ordering::Relaxed), 1);
        assert_eq!(peers.lock().unwrap().len(), 2, "the retry went out on a new connection");
        // Every connection the client opened is known to the capture, in both directions.
        for peer in peers.lock().unwrap().iter() {
            let request = Segment::new(*peer, addr, 1, 0, Bytes::new(), 0);
            let response = Segment::new(addr, *peer, 1, 0, Bytes::new(), 0);
            assert!(own.matches(&request) && own.matches(&response), "{peer} registered");
        }
    }

    #[tokio::test]
    async fn a_fresh_connection_that_fails_is_the_shadows_error() {
        let (addr, _) = closing_shadow(0).await;
        let own = Arc::new(OwnConnections::new());
        let clients = Clients::new(ReplayConnector::new(own, Duration::from_secs(5)), &limits());
        let counters = ReplayCounters::default();
        let request = outgoing(&format!("m=http://{addr}"), HttpVersion::Http11, "/");
        let result = send(&clients, request, &limits(), &counters, &mut Charge::default()).await;
        assert!(matches!(result, ShadowResult::Failed { .. }), "{result:?}");
        assert_eq!(counters.retries.load(Ordering::Relaxed), 0, "nothing to retry on a fresh connection");
    }

    #[tokio::test]
    async fn h2c_replays_are_multiplexed_and_keep_trailers() {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                            let path = req.uri().path().to_string();
                            let te = req.headers().get("te").map(|v| v.as_bytes().to_vec());
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("0"));
                            let frames = vec![
                                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(format!(
                                    "{path} te={te:?}"
                                )))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let body = StreamBody::new(futures_util::stream::iter(frames));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        let own = Arc::new(OwnConnections::new());
        let clients = Clients::new(ReplayConnector::new(own, Duration::from_secs(5)), &limits());
        let counters = ReplayCounters::default();
        let spec = format!("m=http://{addr},h2c://{addr}");
        let mut grpc = outgoing(&spec, HttpVersion::Http2, "/pkg.Svc/Method");
        grpc.headers.push(("te".into(), Bytes::from_static(b"trailers")));
        let limits = limits();
        let calls = (0..8).map(|_| async {
            send(&clients, grpc.clone(), &limits, &counters, &mut Charge::default()).await
        });
        for result in futures_util::future::join_all(calls).await {
            let ShadowResult::Answered { answer, .. } = result else { panic!("{result:?}") };
            assert_eq!(&answer.body[..], b"/pkg.Svc/Method te=Some([116, 114, 97, 105, 108, 101, 114, 115])");
            assert_eq!(answer.trailers.len(), 1);
            assert_eq!(
                (answer.trailers[0].name.as_str(), &answer.trailers[0].value[..]),
                ("grpc-status", &b"0"[..])
            );
        }
        assert_eq!(connections.load(Ordering::Relaxed), 1, "eight concurrent replays on one h2c connection");
    }
}
