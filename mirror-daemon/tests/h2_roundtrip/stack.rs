//! Real HTTP/2 conversations: hyper's `h2` client and server talk over an in-memory pipe whose two
//! ends record every byte written, and when the other end read it, on one clock.
//!
//! The recording is the wire; the truth is what the client sent and what it received, stream by
//! stream. Each stream follows a [`StreamPlan`] that both ends know (the request path names it), so
//! the server can answer out of order, reset, push, send interim answers or Trailers-Only answers,
//! and the client can cancel, exactly as planned.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use h2::{Reason, RecvStream, client, server};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use mirror_daemon::exchange::{Header, HttpVersion, Request, Response};
use tokio::{
    io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf},
    sync::Semaphore,
};

use super::{Recording, Rng, pattern};

/// The `:authority` of every request.
pub const AUTHORITY: &str = "model.test:8081";

/// How a stream's response ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseEnd {
    /// DATA, then trailers (`grpc-status`).
    Trailers,
    /// One HEADERS frame that ends the stream and carries `grpc-status` (gRPC's Trailers-Only).
    TrailersOnly,
    /// END_STREAM on the last DATA frame.
    LastData,
    /// END_STREAM on an empty DATA frame after the body.
    EmptyData,
}

/// Where in a stream a reset is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetPoint {
    /// Right after the request head.
    BeforeBody,
    /// After the first DATA of the request.
    MidBody,
    /// After the whole request.
    AfterRequest,
    /// After the response head (and, from the server, a first DATA).
    AfterResponseHead,
}

/// Whether a stream completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Complete,
    /// The client sends RST_STREAM(CANCEL); the server never ends the response.
    ClientReset(ResetPoint),
    /// The server sends RST_STREAM with this code instead of ending the response.
    ServerReset(ResetPoint, u32),
}

/// One stream of a conversation.
#[derive(Clone, Debug)]
pub struct StreamPlan {
    /// POST, PUT or GET (GET requests have no body).
    pub method: usize,
    /// Sizes of the request's DATA writes (0 allowed; over 16 KiB makes several frames).
    pub request_chunks: Vec<usize>,
    pub request_trailers: bool,
    /// Length of a large header value (its block then spans CONTINUATION frames).
    pub large_header: Option<usize>,
    /// Picks the values of the headers that vary between requests.
    pub variant: u8,
    pub status: u16,
    /// A 103 (Early Hints) before the final response.
    pub interim: bool,
    /// The server starts answering (head and a first DATA) before it reads the request body.
    pub early_head: bool,
    pub response_chunks: Vec<usize>,
    pub response_end: ResponseEnd,
    /// The server pushes a resource on this stream (when the client allows push).
    pub push: bool,
    pub fate: Fate,
    /// Yields before each step: streams overtake each other.
    pub delay: u8,
}

/// Connection settings one end announces; `None` keeps h2's default.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// SETTINGS_HEADER_TABLE_SIZE: the peer's encoder then sends a table size update.
    pub header_table_size: Option<u32>,
    /// SETTINGS_MAX_FRAME_SIZE: how large the peer's frames may be.
    pub max_frame_size: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
    /// SETTINGS_ENABLE_PUSH (client only).
    pub enable_push: bool,
}

/// One connection's workload.
#[derive(Clone, Debug)]
pub struct Conversation {
    /// Makes every stream's content unique across connections.
    pub label: String,
    pub streams: Vec<StreamPlan>,
    /// Streams the client keeps in flight at once.
    pub concurrency: usize,
    pub client: Settings,
    pub server: Settings,
    /// Capacity of the pipe in each direction (small ones cut writes short).
    pub pipe_buffer: usize,
    /// The server shuts down gracefully (GOAWAY) once it has accepted this many streams.
    pub goaway_after: Option<usize>,
    /// Requests and answers carry a header unique to the stream (besides the path, which always is).
    pub unique_ids: bool,
    pub seed: u64,
}

/// What the client sent and received on one stream it opened.
#[derive(Clone, Debug)]
pub struct StreamTruth {
    pub stream_id: u32,
    pub request: Request,
    /// The response head came (the stream was certainly on the wire).
    pub response_head: bool,
    /// The client received the whole response, and sent the whole request.
    pub completed: Option<Response>,
    pub fate: Fate,
}

/// A finished conversation.
#[derive(Debug)]
pub struct Outcome {
    pub recording: Recording,
    pub streams: Vec<StreamTruth>,
    /// Resets sent, by error code (client CANCELs included).
    pub resets: Vec<u32>,
    pub goaway: bool,
    /// Pushes the server promised.
    pub pushes: usize,
}

const METHODS: [&str; 3] = ["POST", "PUT", "GET"];

/// The request body of stream `index` of connection `label`.
fn request_body(label: &str, index: usize, len: usize) -> Bytes {
    pattern(len, salt(label, index, 1))
}

fn response_body(label: &str, index: usize, len: usize) -> Bytes {
    pattern(len, salt(label, index, 2))
}

fn salt(label: &str, index: usize, kind: usize) -> usize {
    label.bytes().fold(index * 7 + kind, |acc, b| acc.wrapping_mul(31).wrapping_add(usize::from(b)))
}

fn path(label: &str, index: usize) -> String {
    format!("/inference.GRPCInferenceService/ModelInfer/{label}/{index}")
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("header value")
}

fn name(text: &'static str) -> HeaderName {
    HeaderName::from_static(text)
}

/// The request head of a plan: headers that repeat on every request, some from a few variants,
/// and one unique to the stream.
fn request_head(label: &str, index: usize, plan: &StreamPlan, unique_ids: bool) -> http::Request<()> {
    let mut headers = HeaderMap::new();
    headers.insert(name("content-type"), value("application/grpc"));
    headers.insert(name("te"), value("trailers"));
    headers.insert(name("user-agent"), value("grpc-rust/1.0 h2-roundtrip"));
    if unique_ids {
        headers.insert(name("x-request-id"), value(&format!("{label}-{index}")));
    }
    headers.insert(name("x-shard"), value(&format!("shard-{}", plan.variant % 3)));
    headers.append(name("x-tag"), value(&format!("tag-{}", plan.variant % 5)));
    headers.append(name("x-tag"), value("common"));
    if plan.variant.is_multiple_of(4) {
        headers.insert(name("grpc-timeout"), value(&format!("{}m", 100 + u32::from(plan.variant))));
    }
    if let Some(len) = plan.large_header {
        let text: String = (0..len).map(|i| char::from(b'a' + ((i * 7 + index) % 26) as u8)).collect();
        headers.insert(name("x-large"), value(&text));
    }
    let mut request = http::Request::builder()
        .method(METHODS[plan.method % METHODS.len()])
        .uri(format!("http://{AUTHORITY}{}", path(label, index)))
        .body(())
        .expect("request");
    *request.headers_mut() = headers;
    request
}

fn request_trailers(label: &str, index: usize) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(name("x-checksum"), value(&format!("sum-{label}-{index}")));
    trailers.insert(name("x-trailer"), value("end"));
    trailers
}

fn response_head(
    label: &str,
    index: usize,
    plan: &StreamPlan,
    trailers_only: bool,
    unique_ids: bool,
) -> http::Response<()> {
    let mut response = http::Response::builder()
        .status(StatusCode::from_u16(plan.status).expect("status"))
        .header("content-type", "application/grpc")
        .header("server", "h2-roundtrip");
    if unique_ids {
        response = response.header("x-answer-for", format!("{label}-{index}"));
    }
    response = response.header("x-variant", format!("v{}", plan.variant % 3));
    if trailers_only {
        response = response.header("grpc-status", format!("{}", plan.variant % 17));
    }
    response.body(()).expect("response")
}

fn response_trailers(plan: &StreamPlan) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    let status = plan.variant % 3;
    trailers.insert(name("grpc-status"), value(&status.to_string()));
    if status != 0 {
        trailers.insert(name("grpc-message"), value(&format!("failed with {status}")));
    }
    trailers
}

/// Fields as the daemon lists them: in order, as the HTTP/2 encoder wrote them.
fn listed(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(n, v)| Header { name: n.as_str().to_string(), value: Bytes::copy_from_slice(v.as_bytes()) })
        .collect()
}

/// Runs the conversation to its end and returns what was on the wire and the client's truth.
pub fn run(conversation: &Conversation) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), converse(conversation))
            .await
            .unwrap_or_else(|_| panic!("conversation did not finish: {conversation:?}"))
    })
}

async fn converse(conversation: &Conversation) -> Outcome {
    let log = Arc::new(Mutex::new(Recording::default()));
    let (client_end, server_end) = tokio::io::duplex(conversation.pipe_buffer.max(1));
    let client_io = Tee { io: client_end, writes: 0, log: log.clone(), read: 0 };
    let server_io = Tee { io: server_end, writes: 1, log: log.clone(), read: 0 };
    let shared = Arc::new(conversation.clone());
    let server = tokio::spawn(serve(server_io, shared.clone()));

    let mut builder = client::Builder::new();
    let settings = &conversation.client;
    builder.enable_push(settings.enable_push);
    if let Some(size) = settings.header_table_size {
        builder.header_table_size(size);
    }
    if let Some(size) = settings.max_frame_size {
        builder.max_frame_size(size);
    }
    if let Some(size) = settings.initial_window_size {
        builder.initial_window_size(size);
    }
    let (send, connection) = builder.handshake::<_, Bytes>(client_io).await.expect("client handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let permits = Arc::new(Semaphore::new(conversation.concurrency.max(1)));
    let push_tasks = PushTasks::default();
    let mut tasks = Vec::new();
    for index in 0..conversation.streams.len() {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let (send, shared, push_tasks) = (send.clone(), shared.clone(), push_tasks.clone());
        tasks.push(tokio::spawn(async move {
            let truth = client_stream(send, &shared, index, push_tasks).await;
            drop(permit);
            truth
        }));
    }
    drop(send);
    let mut streams = Vec::new();
    for task in tasks {
        if let Some(truth) = task.await.expect("client stream task") {
            streams.push(truth);
        }
    }
    // Waiting for further pushes keeps the streams referenced, and so the connection open.
    for task in push_tasks.lock().expect("push tasks").drain(..) {
        task.abort();
    }
    driver.await.expect("client connection");
    let (resets, goaway, pushes) = server.await.expect("server");
    let mut resets = resets;
    resets.extend(streams.iter().filter(|s| matches!(s.fate, Fate::ClientReset(_))).map(|_| 0x8));
    let recording = std::mem::take(&mut *log.lock().expect("log"));
    Outcome { recording, streams, resets, goaway, pushes }
}

/// The clients' tasks receiving pushed responses, stopped once every stream is done.
type PushTasks = Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>;

async fn pause(rng: &mut Rng, delay: u8) {
    for _ in 0..rng.below(u64::from(delay) + 1) {
        tokio::task::yield_now().await;
    }
}

/// One client stream; `None` when it was never opened.
async fn client_stream(
    send: client::SendRequest<Bytes>,
    conversation: &Conversation,
    index: usize,
    push_tasks: PushTasks,
) -> Option<StreamTruth> {
    let plan = &conversation.streams[index];
    let label = &conversation.label;
    let mut rng = Rng::new(conversation.seed ^ (index as u64).wrapping_mul(0x9e37_79b9));
    pause(&mut rng, plan.delay).await;
    let mut send = send.ready().await.ok()?;
    let head = request_head(label, index, plan, conversation.unique_ids);
    let is_get = head.method() == Method::GET;
    let chunks: Vec<Bytes> = if is_get {
        Vec::new()
    } else {
        let mut at = 0;
        let body = request_body(label, index, plan.request_chunks.iter().sum());
        plan.request_chunks
            .iter()
            .map(|&n| {
                at += n;
                body.slice(at - n..at)
            })
            .collect()
    };
    let trailers = plan.request_trailers && !is_get;
    let reset_early = matches!(plan.fate, Fate::ClientReset(ResetPoint::BeforeBody | ResetPoint::MidBody));
    let ends_at_head = chunks.is_empty() && !trailers && !reset_early;
    let mut headers = vec![Header { name: "host".into(), value: Bytes::from_static(AUTHORITY.as_bytes()) }];
    headers.extend(listed(head.headers()));
    let mut truth = StreamTruth {
        stream_id: 0,
        request: Request {
            method: head.method().to_string(),
            target: path(label, index),
            version: HttpVersion::Http2,
            headers,
            body: chunks.iter().flat_map(|c| c.iter().copied()).collect::<Vec<u8>>().into(),
            trailers: if trailers { listed(&request_trailers(label, index)) } else { Vec::new() },
        },
        response_head: false,
        completed: None,
        fate: plan.fate,
    };
    let (mut response, mut stream) = send.send_request(head, ends_at_head).ok()?;
    truth.stream_id = stream.stream_id().as_u32();
    if conversation.client.enable_push && plan.push && plan.fate == Fate::Complete {
        let mut pushes = response.push_promises();
        let task = tokio::spawn(async move {
            while let Some(Ok(pushed)) = pushes.push_promise().await {
                if let Ok(response) = pushed.into_parts().1.await {
                    let _ = drain(response.into_body()).await;
                }
            }
        });
        push_tasks.lock().expect("push tasks").push(task);
    }
    let cancel = |stream: &mut h2::SendStream<Bytes>, truth: StreamTruth| {
        stream.send_reset(Reason::CANCEL);
        Some(truth)
    };
    if plan.fate == Fate::ClientReset(ResetPoint::BeforeBody) {
        return cancel(&mut stream, truth);
    }
    let count = chunks.len();
    for (k, chunk) in chunks.into_iter().enumerate() {
        pause(&mut rng, plan.delay).await;
        let last = k + 1 == count && !trailers;
        if stream.send_data(chunk, last).is_err() {
            return Some(truth);
        }
        if k == 0 && plan.fate == Fate::ClientReset(ResetPoint::MidBody) {
            return cancel(&mut stream, truth);
        }
    }
    if plan.fate == Fate::ClientReset(ResetPoint::MidBody) {
        return cancel(&mut stream, truth);
    }
    if trailers && stream.send_trailers(request_trailers(label, index)).is_err() {
        return Some(truth);
    }
    if plan.fate == Fate::ClientReset(ResetPoint::AfterRequest) {
        return cancel(&mut stream, truth);
    }
    let Ok(response) = response.await else { return Some(truth) };
    truth.response_head = true;
    if plan.fate == Fate::ClientReset(ResetPoint::AfterResponseHead) {
        return cancel(&mut stream, truth);
    }
    let (parts, body) = response.into_parts();
    let Ok((body, trailers)) = drain(body).await else { return Some(truth) };
    truth.completed = Some(Response {
        status: parts.status.as_u16(),
        reason: String::new(),
        version: HttpVersion::Http2,
        headers: listed(&parts.headers),
        body,
        arrivals: Default::default(),
        trailers: trailers.as_ref().map(listed).unwrap_or_default(),
    });
    Some(truth)
}

/// Reads a body to its end (giving the flow-control window back) and its trailers.
async fn drain(mut body: RecvStream) -> Result<(Bytes, Option<HeaderMap>), h2::Error> {
    let mut all = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?;
    Ok((all.into(), trailers))
}

/// The server: accepts streams and answers each as its plan says. Returns the resets it sent,
/// whether it sent GOAWAY and how many pushes it promised.
async fn serve(io: Tee, conversation: Arc<Conversation>) -> (Vec<u32>, bool, usize) {
    let mut builder = server::Builder::new();
    let settings = &conversation.server;
    if let Some(size) = settings.header_table_size {
        builder.header_table_size(size);
    }
    if let Some(size) = settings.max_frame_size {
        builder.max_frame_size(size);
    }
    if let Some(size) = settings.initial_window_size {
        builder.initial_window_size(size);
    }
    if let Some(max) = settings.max_concurrent_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(mut connection) = builder.handshake::<_, Bytes>(io).await else { return (Vec::new(), false, 0) };
    let mut accepted = 0;
    let mut goaway = false;
    let mut tasks = Vec::new();
    while let Some(Ok((request, respond))) = connection.accept().await {
        accepted += 1;
        let shared = conversation.clone();
        tasks.push(tokio::spawn(async move { server_stream(request, respond, &shared).await }));
        if conversation.goaway_after.is_some_and(|n| accepted >= n) && !goaway {
            connection.graceful_shutdown();
            goaway = true;
        }
    }
    let (mut resets, mut pushes) = (Vec::new(), 0);
    for task in tasks {
        let (reset, pushed) = task.await.expect("server stream task");
        resets.extend(reset);
        pushes += usize::from(pushed);
    }
    (resets, goaway, pushes)
}

/// Answers one stream; returns the reset code it sent, if any, and whether it pushed.
async fn server_stream(
    request: http::Request<RecvStream>,
    mut respond: server::SendResponse<Bytes>,
    conversation: &Conversation,
) -> (Option<u32>, bool) {
    let (parts, mut body) = request.into_parts();
    let label = &conversation.label;
    let Some(index) = parts
        .uri
        .path()
        .rsplit('/')
        .next()
        .and_then(|i| i.parse::<usize>().ok())
        .filter(|&i| parts.uri.path() == path(label, i) && i < conversation.streams.len())
    else {
        respond.send_reset(Reason::PROTOCOL_ERROR);
        return (Some(0x1), false);
    };
    let plan = &conversation.streams[index];
    let mut rng = Rng::new(conversation.seed ^ 0x5eed ^ (index as u64).wrapping_mul(0x2545_f491));
    let reset_at = |point: ResetPoint| match plan.fate {
        Fate::ServerReset(p, code) if p == point => Some(code),
        _ => None,
    };
    if let Some(code) = reset_at(ResetPoint::BeforeBody) {
        respond.send_reset(Reason::from(code));
        return (Some(code), false);
    }
    let mut pushed = false;
    // Only on streams that complete: h2 drops a queued PUSH_PROMISE when its stream is reset.
    if plan.push && conversation.client.enable_push && plan.fate == Fate::Complete {
        let promise = http::Request::builder()
            .method("GET")
            .uri(format!("http://{AUTHORITY}/pushed/{label}/{index}"))
            .body(())
            .expect("push request");
        if let Ok(mut pushed_response) = respond.push_request(promise) {
            pushed = true;
            let head = http::Response::builder().status(200).body(()).expect("pushed response");
            if let Ok(mut stream) = pushed_response.send_response(head, false) {
                let _ = stream.send_data(response_body(label, index + 1000, 300), true);
            }
        }
    }
    if plan.interim {
        let hints = http::Response::builder()
            .status(103)
            .header("link", "</model/config>; rel=preload")
            .body(())
            .expect("interim");
        let _ = respond.send_informational(hints);
    }
    let trailers_only = plan.response_end == ResponseEnd::TrailersOnly
        && matches!(plan.fate, Fate::Complete | Fate::ServerReset(..))
        && reset_at(ResetPoint::AfterResponseHead).is_none();
    let mut at = 0;
    let full = response_body(label, index, plan.response_chunks.iter().sum());
    let mut chunks: Vec<Bytes> = plan
        .response_chunks
        .iter()
        .map(|&n| {
            at += n;
            full.slice(at - n..at)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let mut stream = None;
    if plan.early_head && !trailers_only {
        let Ok(mut s) =
            respond.send_response(response_head(label, index, plan, false, conversation.unique_ids), false)
        else {
            return (None, pushed);
        };
        if let Some(chunk) = chunks.pop() {
            let _ = s.send_data(chunk, false);
        }
        stream = Some(s);
    }
    let reset =
        |respond: &mut server::SendResponse<Bytes>, stream: Option<&mut h2::SendStream<Bytes>>, code| {
            match stream {
                Some(stream) => stream.send_reset(Reason::from(code)),
                None => respond.send_reset(Reason::from(code)),
            }
            (Some(code), pushed)
        };
    let mut first = true;
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return (None, pushed) };
        let _ = body.flow_control().release_capacity(chunk.len());
        if first && let Some(code) = reset_at(ResetPoint::MidBody) {
            return reset(&mut respond, stream.as_mut(), code);
        }
        first = false;
    }
    if body.trailers().await.is_err() {
        return (None, pushed);
    }
    if let Some(code) = reset_at(ResetPoint::MidBody).or(reset_at(ResetPoint::AfterRequest)) {
        return reset(&mut respond, stream.as_mut(), code);
    }
    pause(&mut rng, plan.delay).await;
    if trailers_only {
        let _ = respond.send_response(response_head(label, index, plan, true, conversation.unique_ids), true);
        return (None, pushed);
    }
    let mut stream = match stream {
        Some(stream) => stream,
        None => match respond
            .send_response(response_head(label, index, plan, false, conversation.unique_ids), false)
        {
            Ok(stream) => stream,
            Err(_) => return (None, pushed),
        },
    };
    if let Some(code) = reset_at(ResetPoint::AfterResponseHead) {
        if let Some(chunk) = chunks.pop() {
            let _ = stream.send_data(chunk, false);
        }
        return reset(&mut respond, Some(&mut stream), code);
    }
    if let Fate::ClientReset(_) = plan.fate {
        // Answer partly, then wait for the client's cancel: this stream never completes.
        if let Some(chunk) = chunks.pop() {
            let _ = stream.send_data(chunk, false);
        }
        let _ = std::future::poll_fn(|cx| stream.poll_reset(cx)).await;
        return (None, pushed);
    }
    while let Some(chunk) = chunks.pop() {
        pause(&mut rng, plan.delay).await;
        let last = chunks.is_empty() && plan.response_end == ResponseEnd::LastData;
        if stream.send_data(chunk, last).is_err() {
            return (None, pushed);
        }
        if last {
            return (None, pushed);
        }
    }
    let _ = match plan.response_end {
        ResponseEnd::Trailers => stream.send_trailers(response_trailers(plan)),
        _ => stream.send_data(Bytes::new(), true),
    };
    (None, pushed)
}

/// One end of the pipe: what it writes is appended to the recording, and what it reads is noted
/// as read by this end, on the recording's clock.
struct Tee {
    io: DuplexStream,
    /// The direction this end writes (0: client → server, 1: server → client).
    writes: usize,
    log: Arc<Mutex<Recording>>,
    /// Bytes read so far (of the other direction).
    read: usize,
}

impl AsyncRead for Tee {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n;
            let (direction, read) = (1 - self.writes, self.read);
            self.log.lock().expect("log").note_read(direction, read);
        }
        result
    }
}

impl AsyncWrite for Tee {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            self.log.lock().expect("log").note_write(self.writes, &buf[..n]);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
