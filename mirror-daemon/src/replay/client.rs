//! Sends replays to one shadow: a bounded queue in front of a pooled keep-alive client with a
//! cap on requests in flight and a per-request timeout.
//!
//! Capture never waits for a shadow. [`ShadowClient::submit`] only tries to enqueue; when the
//! queue is full (the shadow is slow or down) the replay is dropped and counted. Memory is bounded
//! by `queue + max_in_flight` requests and `max_in_flight` responses of at most
//! `max_response_bytes`.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Request,
    header::{HeaderName, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::sync::{Semaphore, mpsc};

use super::{
    join::{ShadowAnswer, ShadowResult},
    request::Outgoing,
    target::ShadowTarget,
};
use crate::exchange::{ExchangeId, Header};

/// Bounds of the replay to one shadow.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub queue: usize,
    pub max_response_bytes: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(5), max_in_flight: 64, queue: 1024, max_response_bytes: 64 << 20 }
    }
}

/// One replay to send.
#[derive(Debug)]
pub struct Job {
    pub id: ExchangeId,
    pub outgoing: Outgoing,
}

/// One replay's result, sent back to the pipeline.
#[derive(Debug)]
pub struct Done {
    pub id: ExchangeId,
    pub shadow: usize,
    pub result: ShadowResult,
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
}

impl ReplayCounters {
    /// Replays submitted and not finished yet (queued or in flight).
    pub fn pending(&self) -> u64 {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        get(&self.submitted).saturating_sub(get(&self.answered) + get(&self.timed_out) + get(&self.failed))
    }

    /// `(name, value)` pairs for logs and metrics.
    pub fn list(&self) -> [(&'static str, u64); 6] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("submitted", get(&self.submitted)),
            ("queue_full", get(&self.queue_full)),
            ("answered", get(&self.answered)),
            ("timed_out", get(&self.timed_out)),
            ("failed", get(&self.failed)),
            ("in_flight", get(&self.in_flight)),
        ]
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
    /// Starts the dispatcher for shadow number `index`; results go to `done`.
    pub fn spawn(
        index: usize,
        target: ShadowTarget,
        limits: ClientLimits,
        done: mpsc::UnboundedSender<Done>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(limits.queue.max(1));
        let counters = Arc::new(ReplayCounters::default());
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(limits.timeout));
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(limits.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let permits = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
        let task_counters = counters.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let (client, done, counters, limits) =
                    (client.clone(), done.clone(), task_counters.clone(), limits.clone());
                counters.in_flight.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let result = send(&client, job.outgoing, &limits).await;
                    let counter = match &result {
                        ShadowResult::Answered { .. } => &counters.answered,
                        ShadowResult::TimedOut { .. } => &counters.timed_out,
                        _ => &counters.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                    let _ = done.send(Done { id: job.id, shadow: index, result });
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

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    outgoing: Outgoing,
    limits: &ClientLimits,
) -> ShadowResult {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_nanos() as u64;
    let mut builder = Request::builder().method(outgoing.method.as_str()).uri(outgoing.uri.as_str());
    for (name, value) in &outgoing.headers {
        // Headers that were valid on the wire are valid here; anything else is left out.
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_maybe_shared(value.clone()))
        {
            builder = builder.header(name, value);
        }
    }
    let request = match builder.body(Full::new(outgoing.body)) {
        Ok(request) => request,
        Err(err) => return ShadowResult::Failed { error: format!("build request: {err}"), latency_ns: 0 },
    };
    let exchange = async {
        let response = client.request(request).await.map_err(|e| chain(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_string(),
                value: Bytes::copy_from_slice(value.as_bytes()),
            })
            .collect();
        let body = Limited::new(response.into_body(), limits.max_response_bytes)
            .collect()
            .await
            .map_err(|e| format!("read response body: {}", chain(e.as_ref())))?
            .to_bytes();
        Ok::<_, String>(ShadowAnswer { status, headers, body })
    };
    match tokio::time::timeout(limits.timeout, exchange).await {
        Ok(Ok(answer)) => ShadowResult::Answered { answer, latency_ns: elapsed() },
        Ok(Err(error)) => ShadowResult::Failed { error, latency_ns: elapsed() },
        Err(_) => ShadowResult::TimedOut { latency_ns: elapsed() },
    }
}
