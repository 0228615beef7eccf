//! Real gRPC servers and clients for the tests and the demo: the Python scripts of `tests/python`
//! on grpcio (C-core HTTP/2 and HPACK), and `curl --http2-prior-knowledge`, none of them written by
//! this project, run inside network namespaces.
//!
//! The servers answer with the test classifier ([`crate::model_server::Model`], ported operation
//! for operation to `mirror_model.py`); the client writes a truth file with the SHA-256 of every
//! request and response message it exchanged, so a test can check what the daemon rebuilt
//! against what really happened on the wire.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

use crate::{ChildGuard, netns::Netns, python};

/// grpc-encoding of messages (`--compression`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Deflate,
}

impl Compression {
    fn arg(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
        }
    }
}

/// Which model server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// `oip_server.py`: `inference.GRPCInferenceService` (and `mirror.test.Echo`).
    Oip,
    /// `tf_serving_server.py`: `tensorflow.serving.PredictionService/Predict`.
    TfServing,
}

impl ServerKind {
    fn script(self) -> &'static str {
        match self {
            Self::Oip => "oip_server.py",
            Self::TfServing => "tf_serving_server.py",
        }
    }
}

/// How a gRPC model server behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub model_name: String,
    /// Model version; TF Serving's must be a number.
    pub version: String,
    /// Share of rows (0–100) whose top two labels the model swaps.
    pub disagree_percent: f64,
    pub delay_ms: u64,
    /// Every Nth request (by the number ending its id) answers a gRPC error; 0 never.
    pub error_every: u32,
    /// Status code name of those errors (`INVALID_ARGUMENT` when `None`).
    pub error_code: Option<String>,
    /// Response compression.
    pub compression: Compression,
    pub max_message_mb: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS to announce (grpc's default when `None`).
    pub max_concurrent_streams: Option<u32>,
    /// Answer in typed fields (OIP `contents`, TF `float_val`) instead of raw bytes.
    pub typed_output: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            model_name: "demo".into(),
            version: "1".into(),
            disagree_percent: 0.0,
            delay_ms: 0,
            error_every: 0,
            error_code: None,
            compression: Compression::None,
            max_message_mb: 128,
            max_concurrent_streams: None,
            typed_output: false,
        }
    }
}

/// A running gRPC server (killed on drop) and the addresses it listens on (port 0 resolved).
#[derive(Debug)]
pub struct GrpcServer {
    pub child: ChildGuard,
    pub addrs: Vec<SocketAddr>,
}

/// Starts a server of `kind` in `ns` on `addrs` and waits until it listens on all of them.
pub fn start_server(
    kind: ServerKind,
    ns: &Netns,
    addrs: &[SocketAddr],
    options: &ServerOptions,
) -> std::io::Result<GrpcServer> {
    let mut cmd = python::env().script_in(ns, kind.script());
    for addr in addrs {
        cmd.arg("--listen").arg(addr.to_string());
    }
    cmd.args(["--model-name", &options.model_name, "--model-version", &options.version])
        .args(["--disagree-percent", &options.disagree_percent.to_string()])
        .args(["--delay-ms", &options.delay_ms.to_string()])
        .args(["--error-every", &options.error_every.to_string()])
        .args(["--compression", options.compression.arg()])
        .args(["--max-message-mb", &options.max_message_mb.to_string()]);
    if let Some(code) = &options.error_code {
        cmd.args(["--error-code", code]);
    }
    if let Some(streams) = options.max_concurrent_streams {
        cmd.args(["--max-concurrent-streams", &streams.to_string()]);
    }
    if options.typed_output {
        cmd.arg(match kind {
            ServerKind::Oip => "--typed-output",
            ServerKind::TfServing => "--float-val",
        });
    }
    let (child, addrs) = python::spawn_listening(cmd, addrs.len(), kind.script())?;
    Ok(GrpcServer { child, addrs })
}

/// Starts `oip_server.py` in `ns` on `addrs`; panics if it does not come up.
pub fn start_oip_server(ns: &Netns, addrs: &[SocketAddr], options: &ServerOptions) -> GrpcServer {
    start_server(ServerKind::Oip, ns, addrs, options).expect("start oip_server.py")
}

/// Starts `tf_serving_server.py` in `ns` on `addrs`; panics if it does not come up.
pub fn start_tf_serving_server(ns: &Netns, addrs: &[SocketAddr], options: &ServerOptions) -> GrpcServer {
    start_server(ServerKind::TfServing, ns, addrs, options).expect("start tf_serving_server.py")
}

/// The RPC a client drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// `/inference.GRPCInferenceService/ModelInfer`, unary.
    Infer,
    /// `/tensorflow.serving.PredictionService/Predict`, unary.
    Predict,
    /// `/mirror.test.Echo/Chat`, bidirectional streaming.
    Chat,
}

impl Rpc {
    fn command(self) -> &'static str {
        match self {
            Self::Infer => "infer",
            Self::Predict => "predict",
            Self::Chat => "chat",
        }
    }

    /// The gRPC method path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Infer => "/inference.GRPCInferenceService/ModelInfer",
            Self::Predict => "/tensorflow.serving.PredictionService/Predict",
            Self::Chat => "/mirror.test.Echo/Chat",
        }
    }
}

/// How the features of a unary request are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputEncoding {
    /// OIP `raw_input_contents`, TF `tensor_content`.
    #[default]
    Raw,
    /// OIP `contents.fp32_contents`, TF `float_val`.
    Typed,
    /// Raw for even request indexes, typed for odd ones.
    Mixed,
}

/// What `grpc_client.py` does (see its `--help`).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub rpc: Rpc,
    pub target: SocketAddr,
    /// Calls (for `Chat`, streams).
    pub requests: usize,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Long-lived connections, calls dealt round-robin.
    pub channels: usize,
    /// A new connection per call instead.
    pub fresh_channel: bool,
    /// Request compression.
    pub compression: Compression,
    /// Calls started per second (`None`: as fast as the concurrency allows).
    pub rate: Option<f64>,
    /// Rows per request (`None`: 1 + index % 4).
    pub rows: Option<usize>,
    pub features: usize,
    pub input: InputEncoding,
    /// Request ids are this prefix + the call's index.
    pub id_prefix: String,
    pub model_name: String,
    /// Version to ask for ("" lets the server choose).
    pub model_version: String,
    /// Custom metadata on every call.
    pub metadata: Vec<(String, String)>,
    /// Wait after this many calls until [`RunningClient::resume`].
    pub pause_after: Option<usize>,
    /// Also record features and probabilities in the truth.
    pub with_tensors: bool,
    /// `Chat`: messages per stream.
    pub messages: usize,
    /// `Chat`: payload bytes per message.
    pub payload_bytes: usize,
    /// `Chat`: ask the server to fail each stream at this message.
    pub fail_at: Option<usize>,
    /// Deadline of each call, seconds.
    pub timeout_s: f64,
    pub max_message_mb: u32,
}

impl ClientOptions {
    /// `requests` calls of `rpc` to `target` over one connection, one at a time.
    pub fn new(rpc: Rpc, target: SocketAddr, requests: usize) -> Self {
        Self {
            rpc,
            target,
            requests,
            concurrency: 1,
            channels: 1,
            fresh_channel: false,
            compression: Compression::None,
            rate: None,
            rows: None,
            features: 4,
            input: InputEncoding::Raw,
            id_prefix: "req-".into(),
            model_name: "demo".into(),
            model_version: String::new(),
            metadata: Vec::new(),
            pause_after: None,
            with_tensors: false,
            messages: 3,
            payload_bytes: 64,
            fail_at: None,
            timeout_s: 60.0,
            max_message_mb: 128,
        }
    }

    fn command(&self, ns: &Netns, truth: &Path, resume_file: &Path) -> Command {
        let mut cmd = python::env().script_in(ns, "grpc_client.py");
        cmd.arg(self.rpc.command())
            .args(["--target", &self.target.to_string()])
            .args(["--requests", &self.requests.to_string()])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--channels", &self.channels.to_string()])
            .args(["--compression", self.compression.arg()])
            .args(["--id-prefix", &self.id_prefix])
            .args(["--model-name", &self.model_name, "--model-version", &self.model_version])
            .args(["--timeout", &self.timeout_s.to_string()])
            .args(["--max-message-mb", &self.max_message_mb.to_string()])
            .arg("--truth")
            .arg(truth);
        if self.fresh_channel {
            cmd.arg("--fresh-channel");
        }
        if let Some(rate) = self.rate {
            cmd.args(["--rate", &rate.to_string()]);
        }
        for (key, value) in &self.metadata {
            cmd.arg("--metadata").arg(format!("{key}={value}"));
        }
        if let Some(after) = self.pause_after {
            cmd.args(["--pause-after", &after.to_string()]).arg("--resume-file").arg(resume_file);
        }
        match self.rpc {
            Rpc::Chat => {
                cmd.args(["--messages", &self.messages.to_string()])
                    .args(["--payload-bytes", &self.payload_bytes.to_string()]);
                if let Some(at) = self.fail_at {
                    cmd.args(["--fail-at", &at.to_string()]);
                }
            }
            Rpc::Infer | Rpc::Predict => {
                cmd.args(["--features", &self.features.to_string()]).args([
                    "--input",
                    match self.input {
                        InputEncoding::Raw => "raw",
                        InputEncoding::Typed => "typed",
                        InputEncoding::Mixed => "mixed",
                    },
                ]);
                if let Some(rows) = self.rows {
                    cmd.args(["--rows", &rows.to_string()]);
                }
                if self.with_tensors {
                    cmd.arg("--with-tensors");
                }
            }
        }
        cmd
    }
}

/// One line of a truth file: one unary call, or one message of a `Chat` stream.
#[derive(Clone, Debug, PartialEq)]
pub struct TruthLine {
    /// Call index (for `Chat`: stream × messages + seq).
    pub index: u64,
    /// Request id (OIP `id`, TF `key` input, Echo `Msg.id`).
    pub id: String,
    /// gRPC method path.
    pub method: String,
    /// Which connection: the long-lived channel's number, or the call index with a fresh channel.
    pub channel: u64,
    /// `Chat`: the stream and the message's position in it.
    pub stream: Option<u64>,
    pub seq: Option<u64>,
    /// Unary: rows of the request.
    pub rows: Option<u64>,
    /// SHA-256 (hex) and size of the serialized request message.
    pub request_sha256: String,
    pub request_bytes: u64,
    /// gRPC status of the call (for `Chat`, of the whole stream): 0 is OK.
    pub code: u32,
    /// Its name (`OK`, `INVALID_ARGUMENT`, ...) and grpc-message.
    pub status: String,
    pub message: Option<String>,
    /// SHA-256 (hex) and size of the serialized response message, if one came.
    pub response_sha256: Option<String>,
    pub response_bytes: Option<u64>,
    /// Client-side latency of the call (for `Chat`, of this message's round trip).
    pub latency_ms: Option<f64>,
    /// Wall clock when the call started (ns since the epoch).
    pub sent_unix_ns: u64,
    /// With `with_tensors`: the request's features and the answer's probabilities.
    pub features: Option<Vec<Vec<f32>>>,
    pub probabilities: Option<Vec<Vec<f32>>>,
}

fn bits_matrix(value: &Value) -> Option<Vec<Vec<f32>>> {
    value
        .as_array()?
        .iter()
        .map(|row| row.as_array()?.iter().map(|b| Some(f32::from_bits(b.as_u64()? as u32))).collect())
        .collect()
}

impl TruthLine {
    /// Parses one JSON line of a truth file.
    pub fn parse(line: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("truth line {line:?}: {e}"))?;
        let text = |key: &str| v[key].as_str().map(str::to_string);
        let number = |key: &str| v[key].as_u64();
        let need = |key: &str| format!("truth line without {key}: {line}");
        Ok(Self {
            index: number("index").ok_or_else(|| need("index"))?,
            id: text("id").ok_or_else(|| need("id"))?,
            method: text("method").ok_or_else(|| need("method"))?,
            channel: number("channel").ok_or_else(|| need("channel"))?,
            stream: number("stream"),
            seq: number("seq"),
            rows: number("rows"),
            request_sha256: text("request_sha256").ok_or_else(|| need("request_sha256"))?,
            request_bytes: number("request_bytes").ok_or_else(|| need("request_bytes"))?,
            code: number("code").and_then(|c| u32::try_from(c).ok()).ok_or_else(|| need("code"))?,
            status: text("status").ok_or_else(|| need("status"))?,
            message: text("message"),
            response_sha256: text("response_sha256"),
            response_bytes: number("response_bytes"),
            latency_ms: v["latency_ms"].as_f64(),
            sent_unix_ns: number("sent_unix_ns").ok_or_else(|| need("sent_unix_ns"))?,
            features: bits_matrix(&v["features"]),
            probabilities: bits_matrix(&v["probabilities"]),
        })
    }
}

/// The lines of a truth file, by index.
pub fn read_truth(path: &Path) -> Vec<TruthLine> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut lines: Vec<TruthLine> =
        text.lines().map(|l| TruthLine::parse(l).unwrap_or_else(|e| panic!("{e}"))).collect();
    lines.sort_by_key(|l| l.index);
    lines
}

/// A client running in the background.
#[derive(Debug)]
pub struct RunningClient {
    pub child: ChildGuard,
    pub truth: PathBuf,
    resume_file: PathBuf,
    lines: mpsc::Receiver<String>,
    /// What it printed so far.
    pub said: Vec<String>,
}

impl RunningClient {
    fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.said.push(line.clone());
        Some(line)
    }

    /// Waits until the client paused (`pause_after`); returns how many calls it completed.
    pub fn wait_paused(&mut self, timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line =
                self.next_line(left).unwrap_or_else(|| panic!("client did not pause: {:?}", self.said));
            if let Some(rest) = line.strip_prefix("paused after ") {
                return rest.trim_end_matches(" calls").parse().expect("a count of calls");
            }
        }
    }

    /// Lets a paused client go on.
    pub fn resume(&self) {
        std::fs::write(&self.resume_file, b"").expect("write the resume file");
    }

    /// Waits for the client to end (it must succeed) and returns its truth.
    pub fn finish(mut self, timeout: Duration) -> Vec<TruthLine> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.0.try_wait().expect("wait for the client") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.said.push(line);
                }
                assert!(status.success(), "grpc_client.py failed ({status}); it said {:?}", self.said);
                return read_truth(&self.truth);
            }
            assert!(std::time::Instant::now() < deadline, "grpc_client.py still running after {timeout:?}");
            while let Ok(line) = self.lines.try_recv() {
                self.said.push(line);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts `grpc_client.py` in `ns`, writing its truth to `truth`.
pub fn spawn_client(ns: &Netns, options: &ClientOptions, truth: &Path) -> RunningClient {
    let resume_file = truth.with_extension("resume");
    let _ = std::fs::remove_file(&resume_file);
    let mut cmd = options.command(ns, truth, &resume_file);
    cmd.stdout(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("start grpc_client.py"));
    let stdout = child.0.stdout.take().expect("piped stdout");
    RunningClient {
        child,
        truth: truth.to_path_buf(),
        resume_file,
        lines: python::line_reader(stdout),
        said: Vec::new(),
    }
}

/// Runs `grpc_client.py` in `ns` to the end (it must succeed) and returns its truth.
pub fn run_client(ns: &Netns, options: &ClientOptions, truth: &Path) -> Vec<TruthLine> {
    spawn_client(ns, options, truth).finish(Duration::from_secs(600))
}

/// `grpc_client.py health`: ServerLive, ServerReady, ModelReady, ModelMetadata of an OIP server.
pub fn health(ns: &Netns, target: SocketAddr, model_name: &str, model_version: &str) -> Value {
    let out = python::env()
        .script_in(ns, "grpc_client.py")
        .args(["health", "--target", &target.to_string(), "--model-name", model_name])
        .args(["--model-version", model_version])
        .output()
        .expect("run grpc_client.py health");
    assert!(out.status.success(), "grpc_client.py health: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("health prints JSON")
}

/// The Python model's probabilities (f64, before any FP32 rounding) of `rows`, for comparing
/// with [`crate::model_server::Model::predict`]. Runs `mirror_model.py`, no network.
pub fn python_predict(rows: &[Vec<f32>], disagree_percent: f64) -> Vec<Vec<f64>> {
    use std::io::Write;
    let query = serde_json::json!({
        "disagree_percent": disagree_percent,
        "rows": rows.iter().map(|r| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>(),
    });
    let mut child = python::env()
        .script("mirror_model.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run mirror_model.py");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let body = query.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = child.wait_with_output().expect("mirror_model.py output");
    writer.join().expect("writer thread").expect("write the rows");
    assert!(out.status.success(), "mirror_model.py failed");
    let answer: Vec<Vec<u64>> = serde_json::from_slice(&out.stdout).expect("mirror_model.py prints JSON");
    answer.into_iter().map(|row| row.into_iter().map(f64::from_bits).collect()).collect()
}

/// A gRPC message in its length-prefixed frame (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let len = u32::try_from(message.len()).expect("a gRPC message is under 4 GiB");
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The messages of a body of length-prefixed frames: (compressed flag, message).
pub fn grpc_unframe(mut body: &[u8]) -> Result<Vec<(bool, Vec<u8>)>, String> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        let [flag, a, b, c, d, rest @ ..] = body else {
            return Err(format!("{} bytes left, less than a frame header", body.len()));
        };
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        let message = rest.get(..len).ok_or_else(|| format!("frame of {len} bytes, {} left", rest.len()))?;
        messages.push((*flag == 1, message.to_vec()));
        body = &rest[len..];
    }
    Ok(messages)
}

/// What curl got: the status, the response headers and trailers in order, and the body.
#[derive(Clone, Debug)]
pub struct CurlAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub trailers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CurlAnswer {
    /// A trailer's value (`grpc-status`, `grpc-message`).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `curl --http2-prior-knowledge` (h2c, as gRPC clients without TLS speak it): POSTs `body` to
/// `url` with `headers` from inside `ns`. Trailers are what curl prints after the header block.
pub fn curl_h2c(ns: &Netns, url: &str, headers: &[(&str, &str)], body: &[u8]) -> CurlAnswer {
    let dir = crate::scratch_file("curl");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let unique = format!(
        "{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let request = dir.join(format!("{unique}.req"));
    let head = dir.join(format!("{unique}.head"));
    let response = dir.join(format!("{unique}.body"));
    std::fs::write(&request, body).expect("write the request body");
    let mut cmd = ns.command("curl");
    cmd.args(["--silent", "--show-error", "--http2-prior-knowledge", "--max-time", "60", "-X", "POST"]);
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    cmd.arg("--data-binary").arg(format!("@{}", request.display()));
    cmd.arg("--dump-header").arg(&head).arg("--output").arg(&response).arg(url);
    let out = cmd.output().expect("run curl");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    let head_text = std::fs::read_to_string(&head).expect("curl's header dump");
    let mut blocks = head_text.split("\r\n\r\n");
    let mut header_lines = blocks.next().unwrap_or_default().lines();
    let status_line = header_lines.next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        panic!("curl printed no status line: {head_text:?}");
    });
    let pairs = |lines: &mut dyn Iterator<Item = &str>| -> Vec<(String, String)> {
        lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect()
    };
    let headers = pairs(&mut header_lines);
    let trailers = pairs(&mut blocks.next().unwrap_or_default().lines());
    let body = std::fs::read(&response).expect("curl's body");
    for file in [request, head, response] {
        let _ = std::fs::remove_file(file);
    }
    CurlAnswer { status, headers, trailers, body }
}
