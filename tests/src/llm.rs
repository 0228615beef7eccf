//! Real streaming LLM servers and clients for the tests and the demo: `tests/python/llm_server.py`
//! (an OpenAI-compatible server on aiohttp that streams Server-Sent Events over chunked HTTP/1.1)
//! and `tests/python/llm_client.py` (the official `openai` package with `stream=True`), neither
//! protocol stack written by this project, run inside network namespaces.
//!
//! The server's answers are deterministic words of the prompt (`llm_model.py`); a candidate
//! (`variant`) changes one word for the prompts [`differs`] picks, so a test knows which answers
//! must mismatch. The client writes a truth file: per request its `x-request-id`, the text it
//! assembled per choice, finish reasons, tool calls and its own time to first token.
use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use serde::Deserialize;
use serde_json::Value;

use crate::{ChildGuard, netns::Netns, python};

/// The header the client tags every request with, to match records to its truth.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How an `llm_server.py` behaves (see `tests/python/README.md`).
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Delay before the first event (the first token and the role chunk with it).
    pub ttft_ms: f64,
    /// Delay before each later token.
    pub token_delay_ms: f64,
    /// Answer as the candidate: one word changed for the prompts [`differs`] picks.
    pub variant: bool,
    /// With `variant`: the share (0–100) of prompts whose answer changes.
    pub differ_percent: f64,
    /// Stop sending after this many events, connection left open.
    pub stall_after: Option<u32>,
    /// Share of prompts `stall_after` applies to (100 when `None`).
    pub stall_percent: Option<f64>,
    /// Share of prompts answered with an error event half-way through the stream.
    pub error_midstream_percent: f64,
    /// `Content-Encoding: gzip`, flushed per event.
    pub gzip: bool,
    /// Answer whole JSON even when the request asks for a stream.
    pub never_stream: bool,
    /// The `model` of answers (the request's when `None`).
    pub model_name: Option<String>,
    /// Every answer exactly this many words (tokens) instead of 8–24 (load tests).
    pub words: Option<u32>,
}

/// A running LLM server (killed on drop) and the addresses it listens on.
#[derive(Debug)]
pub struct LlmServer {
    pub child: ChildGuard,
    pub addrs: Vec<SocketAddr>,
}

/// Starts `llm_server.py` in `ns` on `addrs` and waits until it listens on all of them.
pub fn start_server(ns: &Netns, addrs: &[SocketAddr], options: &ServerOptions) -> std::io::Result<LlmServer> {
    let mut cmd = python::env().script_in(ns, "llm_server.py");
    for addr in addrs {
        cmd.arg("--listen").arg(addr.to_string());
    }
    cmd.args(["--ttft-ms", &options.ttft_ms.to_string()])
        .args(["--token-delay-ms", &options.token_delay_ms.to_string()])
        .args(["--error-midstream-percent", &options.error_midstream_percent.to_string()]);
    if options.variant {
        cmd.arg("--variant").args(["--differ-percent", &options.differ_percent.to_string()]);
    }
    if let Some(after) = options.stall_after {
        cmd.args(["--stall-after", &after.to_string()]);
    }
    if let Some(percent) = options.stall_percent {
        cmd.args(["--stall-percent", &percent.to_string()]);
    }
    if options.gzip {
        cmd.arg("--gzip");
    }
    if options.never_stream {
        cmd.arg("--never-stream");
    }
    if let Some(name) = &options.model_name {
        cmd.args(["--model-name", name]);
    }
    if let Some(words) = options.words {
        cmd.args(["--words", &words.to_string()]);
    }
    let (child, addrs) = python::spawn_listening(cmd, addrs.len(), "llm_server.py")?;
    Ok(LlmServer { child, addrs })
}

/// Which API the client calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
    /// Chat for even request indexes, completions for odd ones.
    #[default]
    Both,
}

/// What `llm_client.py` does (see its `--help`). The `*_every` options pick every Kth request
/// (0: none).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The server's API root, `http://HOST:PORT/v1`.
    pub base_url: String,
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// `x-request-id` is this + the index.
    pub id_prefix: String,
    /// Prompts are made from the index and this, so two runs with one seed send the same prompts.
    pub seed: String,
    pub api: Api,
    pub non_stream_every: usize,
    /// Streams that ask for the usage chunk (`stream_options.include_usage`).
    pub usage_every: usize,
    /// Chat requests (counted among chat requests) that offer a tool.
    pub tools_every: usize,
    /// Requests that ask for `n = 2`.
    pub choices_every: usize,
    /// Requests with a small `max_tokens` (answered `finish_reason: length`).
    pub max_tokens_every: usize,
    /// Close the streams that `abort_every` picks after this many events.
    pub abort_after_events: Option<usize>,
    pub abort_every: usize,
    pub timeout_s: f64,
}

impl ClientOptions {
    /// `requests` streamed requests, chat and completions alternately, to the server at `server`.
    pub fn new(server: SocketAddr, requests: usize) -> Self {
        Self {
            base_url: format!("http://{server}/v1"),
            requests,
            concurrency: 1,
            id_prefix: "req-".into(),
            seed: "llm".into(),
            api: Api::Both,
            non_stream_every: 0,
            usage_every: 0,
            tools_every: 0,
            choices_every: 0,
            max_tokens_every: 0,
            abort_after_events: None,
            abort_every: 1,
            timeout_s: 60.0,
        }
    }

    /// The same requests (same prompts and shapes) to another server, tagged with other ids.
    pub fn to(&self, server: SocketAddr, id_prefix: &str) -> Self {
        Self { base_url: format!("http://{server}/v1"), id_prefix: id_prefix.into(), ..self.clone() }
    }

    fn command(&self, ns: &Netns, truth: &Path) -> Command {
        let mut cmd = python::env().script_in(ns, "llm_client.py");
        let api = match self.api {
            Api::Chat => "chat",
            Api::Completions => "completions",
            Api::Both => "both",
        };
        cmd.args(["--base-url", &self.base_url])
            .args(["--requests", &self.requests.to_string()])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--id-prefix", &self.id_prefix, "--seed", &self.seed, "--api", api])
            .args(["--non-stream-every", &self.non_stream_every.to_string()])
            .args(["--usage-every", &self.usage_every.to_string()])
            .args(["--tools-every", &self.tools_every.to_string()])
            .args(["--choices-every", &self.choices_every.to_string()])
            .args(["--max-tokens-every", &self.max_tokens_every.to_string()])
            .args(["--abort-every", &self.abort_every.to_string()])
            .args(["--timeout", &self.timeout_s.to_string()])
            .arg("--truth")
            .arg(truth);
        if let Some(k) = self.abort_after_events {
            cmd.args(["--abort-after-events", &k.to_string()]);
        }
        cmd
    }
}

/// A tool call as the client assembled it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ToolCall {
    pub index: u64,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// One choice as the client assembled it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Choice {
    pub index: u64,
    pub text: String,
    pub finish_reason: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// One line of the client's truth file: one request.
#[derive(Clone, Debug, Deserialize)]
pub struct Truth {
    pub index: u64,
    /// Its `x-request-id`.
    pub id: String,
    /// `chat` or `completions`, and the path it was sent to.
    pub api: String,
    pub path: String,
    pub stream: bool,
    pub include_usage: bool,
    pub tools: bool,
    pub n: u64,
    pub max_tokens: Option<u64>,
    /// What the model read (`llm_model.prompt_of`): decides the answer and [`differs`].
    pub prompt: String,
    /// The client closed the stream early (`abort_after_events`).
    pub aborted: bool,
    pub error: Option<String>,
    /// The usage the server reported (usage chunk or whole answer).
    pub usage: Option<Value>,
    /// Chunks the client received (`[DONE]` not counted).
    pub events: u64,
    /// From just before the call to the first content delta (monotonic clock); streams only.
    pub ttft_ms: Option<f64>,
    pub e2e_ms: f64,
    pub sent_unix_ns: u64,
    pub ended_unix_ns: u64,
    pub choices: Vec<Choice>,
}

/// The lines of a truth file, by index.
pub fn read_truth(path: &Path) -> Vec<Truth> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut lines: Vec<Truth> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("truth line {l:?}: {e}")))
        .collect();
    lines.sort_by_key(|l| l.index);
    lines
}

/// Runs `llm_client.py` in `ns` to the end (it must succeed) and returns its truth.
pub fn run_client(ns: &Netns, options: &ClientOptions, truth: &Path) -> Vec<Truth> {
    let mut cmd = options.command(ns, truth);
    let mut child =
        ChildGuard(cmd.stdout(std::process::Stdio::piped()).spawn().expect("start llm_client.py"));
    let lines = python::line_reader(child.0.stdout.take().expect("piped stdout"));
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for llm_client.py") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "llm_client.py still running after 600 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let said: Vec<String> = lines.try_iter().collect();
    assert!(status.success(), "llm_client.py failed ({status}); it said {said:?}");
    let truth = read_truth(truth);
    assert_eq!(truth.len(), options.requests, "one truth line per request; the client said {said:?}");
    truth
}

/// `llm_model.share`: a number in [0, 10000) from `label` and the prompt.
pub fn share(label: &str, prompt: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{label}:{prompt}").as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 10_000
}

/// `llm_model.picked`: whether the prompt is in the `percent` share picked for `label` (`stall`,
/// `error`, `differ`).
pub fn picked(label: &str, prompt: &str, percent: f64) -> bool {
    share(label, prompt) < (percent * 100.0).round() as u64
}

/// `llm_model.differs`: whether a candidate with `differ_percent` changes its answer to `prompt`.
pub fn differs(prompt: &str, differ_percent: f64) -> bool {
    picked("differ", prompt, differ_percent)
}

/// The `x-request-id` of a record's request (from `request.headers`).
pub fn request_id(record: &Value) -> Option<&str> {
    record["request"]["headers"].as_array()?.iter().find_map(|h| {
        let name = h[0].as_str()?;
        name.eq_ignore_ascii_case(REQUEST_ID_HEADER).then(|| h[1].as_str()).flatten()
    })
}
