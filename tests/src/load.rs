//! An open-loop HTTP/1.1 load generator, efficient enough for tens of thousands of requests/s on
//! two shared cores.
//!
//! Closed-loop tools (wrk, a client that sends its next request when the last one is answered)
//! slow down with the server and so hide its queueing: the coordinated omission problem. Here each
//! request has an *intended* send time fixed in advance by the rate, and a request that had to
//! wait because its connection was still busy with a late answer is timed from that intended time.
//! A request sent late only because this process's own timer woke late (the connection was idle)
//! is timed from when it really left, so the generator's timer slop (a millisecond in tokio) is not
//! charged to the server.
//!
//! Two shapes: [`Shape::KeepAlive`] deals the schedule round-robin over long-lived connections
//! (connection `i` sends requests `i`, `i + C`, `i + 2C`, ...); [`Shape::ShortConnections`] opens a
//! new connection for every request (`Connection: close`, the server closes first so its side
//! keeps the TIME_WAIT). Without a rate, keep-alive connections send as fast as they are answered.
//!
//! Responses must carry `Content-Length` (nginx's `return`, hyper's full bodies and proxies of
//! them do); anything else counts as a failed request. The run is bounded: nothing is sent after
//! the planned duration plus a grace period, and what was not sent by then is counted as unsent.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
    time::Instant,
};

use crate::netns::Netns;

/// How requests are carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// This many long-lived connections, opened before the clock starts.
    KeepAlive { connections: usize },
    /// A new connection per request, at most `max_in_flight` open at once (requests due while
    /// that many are open are counted as unsent: the client, not the server, ran out).
    ShortConnections { max_in_flight: usize },
}

/// One load run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: SocketAddr,
    /// Request path, e.g. `/v2/models/demo/infer`.
    pub path: String,
    /// JSON request bodies, used in turn.
    pub bodies: Vec<Vec<u8>>,
    /// Requests per second across all connections; `None` sends as fast as answers come
    /// (keep-alive only).
    pub rate: Option<f64>,
    pub duration: Duration,
    pub shape: Shape,
}

/// What one run measured, from the client's side.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Requests whose answer arrived complete (any status).
    pub answered: usize,
    /// Answered with a status other than 200, or failed on the connection.
    pub failed: usize,
    /// Requests the schedule asked for that never left (the run's bound, or the short-connection
    /// in-flight limit).
    pub unsent: usize,
    /// Latencies of answered requests (from the intended send time, see the module doc), sorted.
    pub latencies: Vec<Duration>,
    /// From the first intended send to the last answer.
    pub elapsed: Duration,
    /// The first connection error seen, if any (for the report).
    pub first_error: Option<String>,
}

impl Outcome {
    /// Answered requests per second over the run.
    pub fn achieved_rps(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile `q` (0..=1) in milliseconds; 0 when nothing was answered.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.latencies.len();
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        self.latencies[i].as_secs_f64() * 1e3
    }

    fn merge(&mut self, other: Outcome) {
        self.answered += other.answered;
        self.failed += other.failed;
        self.unsent += other.unsent;
        self.latencies.extend(other.latencies);
        self.elapsed = self.elapsed.max(other.elapsed);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// How long past the planned duration requests may still be sent (a saturated server's backlog).
const GRACE: Duration = Duration::from_secs(3);
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `plan` from a thread inside `ns`, on a single-threaded runtime (one core at most).
pub fn run(ns: &Netns, plan: Plan) -> Outcome {
    ns.run(move || {
        raise_fd_limit();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the load generator");
        runtime.block_on(run_plan(plan))
    })
}

/// Short connections keep thousands of sockets open at once; the soft limit is often 1024.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The wire form of each body's request.
fn requests(plan: &Plan, close: bool) -> Arc<Vec<Vec<u8>>> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    Arc::new(
        plan.bodies
            .iter()
            .map(|body| {
                let mut wire = format!(
                    "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{connection}\
                     Content-Length: {}\r\n\r\n",
                    plan.path,
                    plan.target,
                    body.len()
                )
                .into_bytes();
                wire.extend_from_slice(body);
                wire
            })
            .collect(),
    )
}

async fn run_plan(plan: Plan) -> Outcome {
    assert!(!plan.bodies.is_empty(), "a load plan needs at least one request body");
    match plan.shape {
        Shape::KeepAlive { connections } => keep_alive(&plan, connections).await,
        Shape::ShortConnections { max_in_flight } => short_connections(&plan, max_in_flight).await,
    }
}

/// Per-connection results, merged at the end.
struct Tally {
    outcome: Outcome,
    started: Instant,
    last_answer: Instant,
}

impl Tally {
    fn new(started: Instant) -> Self {
        Self { outcome: Outcome::default(), started, last_answer: started }
    }

    fn answered(&mut self, status: u16, latency: Duration, at: Instant) {
        self.outcome.answered += 1;
        self.outcome.failed += usize::from(status != 200);
        self.outcome.latencies.push(latency);
        self.last_answer = self.last_answer.max(at);
    }

    fn failed(&mut self, error: String) {
        self.outcome.failed += 1;
        self.outcome.first_error.get_or_insert(error);
    }

    fn finish(mut self) -> Outcome {
        self.outcome.elapsed = self.last_answer.saturating_duration_since(self.started);
        self.outcome
    }
}

async fn keep_alive(plan: &Plan, connections: usize) -> Outcome {
    let connections = connections.max(1);
    let wire = requests(plan, false);
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        match TcpStream::connect(plan.target).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                streams.push(stream);
            }
            Err(e) => {
                return Outcome {
                    first_error: Some(format!("connect to {}: {e}", plan.target)),
                    ..Outcome::default()
                };
            }
        }
    }
    let started = Instant::now() + Duration::from_millis(20);
    let interval = plan.rate.map(|rate| Duration::from_secs_f64(connections as f64 / rate.max(1e-3)));
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let wire = wire.clone();
            let plan = plan.clone();
            tokio::spawn(async move {
                // Connection i's first intended send is offset so the connections interleave.
                let offset = interval.map_or(Duration::ZERO, |d| d.mul_f64(i as f64 / connections as f64));
                connection_loop(stream, &plan, &wire, i, connections, started + offset, interval, started)
                    .await
            })
        })
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        outcome.merge(task.await.expect("a load connection task"));
    }
    outcome.latencies.sort_unstable();
    outcome
}

/// One keep-alive connection's share of the schedule.
#[expect(clippy::too_many_arguments, reason = "the loop's whole state, passed once")]
async fn connection_loop(
    mut stream: TcpStream,
    plan: &Plan,
    wire: &[Vec<u8>],
    index: usize,
    connections: usize,
    first: Instant,
    interval: Option<Duration>,
    started: Instant,
) -> Outcome {
    let end = started + plan.duration;
    let hard_end = end + GRACE;
    let mut tally = Tally::new(started);
    let mut buffer = Vec::with_capacity(4096);
    let mut free_since = Instant::now();
    tokio::time::sleep_until(first).await;
    for k in 0usize.. {
        let intended = match interval {
            Some(d) => first + d.mul_f64(k as f64),
            None => Instant::now(),
        };
        if intended >= end {
            break;
        }
        let now = Instant::now();
        if now >= hard_end {
            // Everything still due on this connection was never sent.
            let left = interval.map_or(0, |d| {
                (end.saturating_duration_since(intended).as_secs_f64() / d.as_secs_f64()).ceil() as usize
            });
            tally.outcome.unsent += left;
            break;
        }
        if intended > now {
            tokio::time::sleep_until(intended).await;
        }
        let sent = Instant::now();
        // Waiting for a busy connection is the server's doing; a late wake-up on an idle one is ours.
        let from = if free_since > intended { intended } else { sent };
        let request = &wire[(k * connections + index) % wire.len()];
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut stream, request, &mut buffer, false)).await
        {
            Ok(Ok(status)) => {
                let done = Instant::now();
                tally.answered(status, done - from, done);
                free_since = done;
            }
            Ok(Err(e)) => {
                tally.failed(e);
                match TcpStream::connect(plan.target).await {
                    Ok(fresh) => {
                        let _ = fresh.set_nodelay(true);
                        stream = fresh;
                        free_since = Instant::now();
                    }
                    Err(e) => {
                        tally.failed(format!("reconnect to {}: {e}", plan.target));
                        break;
                    }
                }
            }
            Err(_) => {
                tally.failed(format!("no answer within {REQUEST_TIMEOUT:?}"));
                break;
            }
        }
    }
    tally.finish()
}

async fn short_connections(plan: &Plan, max_in_flight: usize) -> Outcome {
    let rate = plan.rate.expect("short connections need a rate");
    let wire = requests(plan, true);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let started = Instant::now() + Duration::from_millis(20);
    let end = started + plan.duration;
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let shared = Arc::new(Mutex::new(Tally::new(started)));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0usize.. {
        let intended = started + interval.mul_f64(k as f64);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.lock().expect("tally").outcome.unsent += 1;
            continue;
        };
        let request = wire.clone();
        let tally = shared.clone();
        let target = plan.target;
        tasks.spawn(async move {
            let from = Instant::now();
            let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut stream =
                    TcpStream::connect(target).await.map_err(|e| format!("connect to {target}: {e}"))?;
                let _ = stream.set_nodelay(true);
                let mut buffer = Vec::with_capacity(2048);
                exchange(&mut stream, &request[k % request.len()], &mut buffer, true).await
            })
            .await;
            let done = Instant::now();
            let mut tally = tally.lock().expect("tally");
            match result {
                Ok(Ok(status)) => tally.answered(status, done - from, done),
                Ok(Err(e)) => tally.failed(e),
                Err(_) => tally.failed(format!("no answer within {REQUEST_TIMEOUT:?}")),
            }
            drop(slot);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let tally = Arc::try_unwrap(shared).ok().expect("all tasks done").into_inner().expect("tally");
    let mut outcome = tally.finish();
    outcome.latencies.sort_unstable();
    outcome
}

/// Sends `request` and reads one response (its status); with `until_close`, also waits for the
/// server to close the connection.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buffer: &mut Vec<u8>,
    until_close: bool,
) -> Result<u16, String> {
    stream.write_all(request).await.map_err(|e| format!("send: {e}"))?;
    buffer.clear();
    let (status, head_end, body_len) = loop {
        if let Some(head) = parse_head(buffer)? {
            break head;
        }
        read_more(stream, buffer).await?;
    };
    while buffer.len() < head_end + body_len {
        read_more(stream, buffer).await?;
    }
    if buffer.len() > head_end + body_len {
        return Err("the server sent bytes after the response (none was asked for)".into());
    }
    if until_close {
        let mut rest = [0u8; 64];
        while stream.read(&mut rest).await.map_err(|e| format!("read: {e}"))? > 0 {}
    }
    Ok(status)
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), String> {
    buffer.reserve(4096);
    let n = stream.read_buf(buffer).await.map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("the server closed the connection before the response was complete".into());
    }
    Ok(())
}

/// (status, length of the head, Content-Length) once the head is complete.
fn parse_head(buffer: &[u8]) -> Result<Option<(u16, usize, usize)>, String> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buffer.len() > 64 * 1024 {
            return Err("a response head longer than 64 KiB".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..end]).map_err(|_| "a response head that is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .ok_or("a response without Content-Length (this load generator reads only those)")?;
    Ok(Some((status, end + 4, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_once_complete() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n").unwrap(), None);
        let head = b"HTTP/1.1 503 Busy\r\ncontent-length:  12 \r\nServer: x\r\n\r\nhello";
        assert_eq!(parse_head(head).unwrap(), Some((503, head.len() - 5, 12)));
    }

    #[test]
    fn a_head_without_length_or_status_is_refused() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn quantiles_are_taken_from_sorted_latencies() {
        let outcome =
            Outcome { latencies: (1..=100).map(Duration::from_millis).collect(), ..Outcome::default() };
        assert_eq!(outcome.quantile_ms(0.5), 50.0);
        assert_eq!(outcome.quantile_ms(0.99), 99.0);
        assert_eq!(outcome.quantile_ms(1.0), 100.0);
        assert_eq!(Outcome::default().quantile_ms(0.99), 0.0);
    }

    /// A loopback server that answers every request after `delay`: the open-loop schedule keeps
    /// its rate while answers are slow, and the latencies show the queueing.
    async fn slow_server(delay: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        // Each test request is one head plus a 2-byte body.
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            if buffer.len() < end + 6 {
                                break;
                            }
                            let close = buffer[..end].windows(17).any(|w| w == b"Connection: close");
                            buffer.drain(..end + 6);
                            tokio::time::sleep(delay).await;
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn plan(target: SocketAddr, rate: Option<f64>, shape: Shape) -> Plan {
        Plan {
            target,
            path: "/".into(),
            bodies: vec![b"{}".to_vec()],
            rate,
            duration: Duration::from_millis(500),
            shape,
        }
    }

    #[tokio::test]
    async fn keep_alive_holds_the_asked_rate() {
        let target = slow_server(Duration::ZERO).await;
        let outcome = run_plan(plan(target, Some(400.0), Shape::KeepAlive { connections: 4 })).await;
        assert_eq!(outcome.failed, 0, "{:?}", outcome.first_error);
        assert_eq!(outcome.answered, 200, "400/s for half a second");
        assert_eq!(outcome.unsent, 0);
    }

    #[tokio::test]
    async fn queueing_behind_a_slow_answer_is_measured_from_the_intended_time() {
        // One connection, 100/s asked, each answer takes 20 ms: the connection can carry only 50/s,
        // so requests fall ever further behind their schedule and the latencies grow past 20 ms.
        let target = slow_server(Duration::from_millis(20)).await;
        let outcome = run_plan(plan(target, Some(100.0), Shape::KeepAlive { connections: 1 })).await;
        assert_eq!(outcome.failed, 0, "{:?}", outcome.first_error);
        assert!(outcome.answered >= 20, "{} answered", outcome.answered);
        assert!(outcome.quantile_ms(0.99) > 150.0, "p99 {} ms hides the queue", outcome.quantile_ms(0.99));
        assert!(outcome.quantile_ms(0.0) < 40.0, "the first request waited for nothing");
    }

    #[tokio::test]
    async fn short_connections_open_one_connection_per_request() {
        let target = slow_server(Duration::ZERO).await;
        let shape = Shape::ShortConnections { max_in_flight: 64 };
        let outcome = run_plan(plan(target, Some(200.0), shape)).await;
        assert_eq!(outcome.failed, 0, "{:?}", outcome.first_error);
        assert_eq!(outcome.answered, 100);
    }

    #[tokio::test]
    async fn as_fast_as_possible_is_closed_loop() {
        let target = slow_server(Duration::from_millis(10)).await;
        let outcome = run_plan(plan(target, None, Shape::KeepAlive { connections: 2 })).await;
        assert_eq!(outcome.failed, 0, "{:?}", outcome.first_error);
        // 2 connections, 10 ms each, half a second: about 100 answers, each about 10 ms.
        assert!((60..=110).contains(&outcome.answered), "{} answered", outcome.answered);
        assert!(outcome.quantile_ms(0.5) < 30.0);
    }
}
