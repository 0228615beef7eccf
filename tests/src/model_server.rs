//! A small HTTP server that stands in for a model server in tests and the demo.
//!
//! Built on hyper, keep-alive by default. Each port speaks HTTP/1.1, and HTTP/2 to a client that
//! opens with the HTTP/2 preface (h2c with prior knowledge, as a model server's gRPC or HTTP/2
//! port does); it never accepts `Upgrade: h2c`, so a client asking for it goes on in HTTP/1.1. Two
//! kinds of endpoint:
//!
//! - `POST /v2/models/{name}/infer` speaks the Open Inference Protocol (KServe v2): a tiny
//!   deterministic classifier ([`Model`]) answers class probabilities per input row. A candidate
//!   ("v2") can be told to flip the top label on a known share of rows (chosen by a hash of the row,
//!   so anyone can compute which) and to be slower.
//! - Anything else is read in full and answered with the size asked for with `?size=N` (or the
//!   `x-response-size` header) and deterministic content, so a client can check every byte it got.
//!   `x-request-bytes` echoes how many body bytes arrived.
use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

/// Deterministic body of `len` bytes (printable, so failures are readable).
pub fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]).collect()
}

fn requested_size(req: &Request<Incoming>) -> usize {
    let from_query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("size=")).and_then(|v| v.parse().ok()));
    let from_header = req.headers().get("x-response-size").and_then(|v| v.to_str().ok()?.parse().ok());
    from_query.or(from_header).unwrap_or(2)
}

/// The classifier behind the inference endpoint.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub name: String,
    pub version: String,
    /// Share of rows (0–100) whose top label this model flips.
    pub disagree_percent: f64,
}

/// Classes of the demo classifier.
pub const CLASSES: usize = 3;

/// FNV-1a of a row's feature bits: decides, reproducibly, whether a candidate flips it.
pub fn row_hash(row: &[f64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in row {
        for byte in (*x as f32).to_bits().to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Whether a model that disagrees on `percent` of rows flips this one.
pub fn flips(row: &[f64], percent: f64) -> bool {
    (row_hash(row) % 10_000) as f64 / 100.0 < percent
}

impl Model {
    /// Class probabilities of one row (softmax of fixed linear scores), rounded to 6 digits.
    pub fn predict(&self, row: &[f64]) -> [f64; CLASSES] {
        let mut scores = [0.0f64; CLASSES];
        for (c, score) in scores.iter_mut().enumerate() {
            for (j, x) in row.iter().enumerate() {
                let w = ((c * 7 + j * 3) % 5) as f64 - 2.0;
                *score += 0.5 * w * x;
            }
        }
        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
        let mut p = scores.map(|s| (((s - max).exp() / sum) * 1e6).round() / 1e6);
        if flips(row, self.disagree_percent) {
            // Swap the two most likely classes: the label changes, the values stay plausible.
            let mut order: Vec<usize> = (0..CLASSES).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            p.swap(order[0], order[1]);
        }
        p
    }

    /// Answers an Open Inference Protocol request body.
    pub fn infer(&self, body: &[u8]) -> Result<serde_json::Value, String> {
        let request: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        let input = request["inputs"].get(0).ok_or("no inputs[0]")?;
        let shape: Vec<usize> = input["shape"]
            .as_array()
            .ok_or("no shape")?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).ok_or("bad shape"))
            .collect::<Result<_, _>>()?;
        let data: Vec<f64> =
            input["data"].as_array().ok_or("no data")?.iter().filter_map(|v| v.as_f64()).collect();
        let [rows, features] = shape[..] else { return Err("shape must be [rows, features]".into()) };
        if rows * features != data.len() || features == 0 {
            return Err("data does not match shape".into());
        }
        let out: Vec<f64> = data.chunks(features).flat_map(|row| self.predict(row)).collect();
        Ok(serde_json::json!({
            "model_name": self.name,
            "model_version": self.version,
            "id": request.get("id").cloned().unwrap_or(serde_json::Value::Null),
            "outputs": [{"name": "probabilities", "shape": [rows, CLASSES], "datatype": "FP32", "data": out}]
        }))
    }
}

/// An OIP request body for `rows` (used by clients and tests).
pub fn infer_request(id: &str, rows: &[Vec<f64>]) -> Vec<u8> {
    let features = rows.first().map_or(0, Vec::len);
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "inputs": [{"name": "features", "shape": [rows.len(), features], "datatype": "FP32", "data": data}]
    }))
    .expect("serialisable")
}

fn json_response(status: u16, value: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("static response parts are valid")
}

async fn handle(
    req: Request<Incoming>,
    delay: Duration,
    model: std::sync::Arc<Model>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path.starts_with("/v2/models/") && path.ends_with("/infer") && req.method() == hyper::Method::POST {
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return Ok(match model.infer(&body) {
            Ok(answer) => json_response(200, &answer),
            Err(error) => json_response(400, &serde_json::json!({ "error": error })),
        });
    }
    if path == "/v2/health/ready" {
        return Ok(json_response(200, &serde_json::json!({ "ready": true })));
    }
    let size = requested_size(&req);
    let body_len = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = Response::builder()
        .header("content-type", "application/octet-stream")
        .header("x-request-bytes", body_len.to_string())
        .body(Full::new(Bytes::from(body_of(size))))
        .expect("static response parts are valid");
    Ok(response)
}

/// Serves on every address until the process ends. Prints "listening on ADDR" once bound.
pub async fn serve(addrs: Vec<SocketAddr>, delay: Duration, model: Model) -> std::io::Result<()> {
    let model = std::sync::Arc::new(model);
    // HTTP/1.1, or HTTP/2 when the client's first bytes are the preface.
    let builder = std::sync::Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut tasks = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr).await?;
        println!("listening on {addr}");
        let model = model.clone();
        let builder = builder.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let model = model.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, delay, model.clone()));
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        }));
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// How a model server is started: the model it answers as, and how it behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub version: String,
    /// Share of rows (0–100) whose top label the model flips.
    pub disagree_percent: f64,
    pub delay_ms: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { version: "1".into(), disagree_percent: 0.0, delay_ms: 0 }
    }
}

/// Starts the `model-server` binary `bin` in `ns` on `addrs` and waits until it listens on all
/// of them. Returns the process (killed on drop) and the "listening on" lines it printed.
pub fn start(
    bin: &std::path::Path,
    ns: &crate::netns::Netns,
    addrs: &[SocketAddr],
    options: &ServerOptions,
) -> std::io::Result<(crate::ChildGuard, Vec<String>)> {
    use std::io::BufRead;
    let mut cmd = ns.command(bin);
    for addr in addrs {
        cmd.arg("--listen").arg(addr.to_string());
    }
    cmd.args(["--model-name", "demo", "--model-version", &options.version])
        .args(["--disagree-percent", &options.disagree_percent.to_string()])
        .args(["--delay-ms", &options.delay_ms.to_string()])
        .stdout(std::process::Stdio::piped());
    let mut child = crate::ChildGuard(cmd.spawn()?);
    let stdout = child.0.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut said = Vec::new();
    for _ in addrs {
        let line =
            lines.next().ok_or_else(|| std::io::Error::other("model-server exited before listening"))??;
        if !line.starts_with("listening on") {
            return Err(std::io::Error::other(format!("model-server said {line}")));
        }
        said.push(line);
    }
    Ok((child, said))
}

/// Starts the test build of `model-server` (next to the test binary) in `ns` on `addrs`.
pub fn start_test_build(
    ns: &crate::netns::Netns,
    addrs: &[SocketAddr],
    options: &ServerOptions,
) -> crate::ChildGuard {
    start(&crate::sibling_binary("model-server"), ns, addrs, options).expect("start model-server").0
}

/// Starts the test build of `model-server` in the pair's server namespace on its IPv4 and IPv6
/// addresses for each port.
pub fn spawn(pair: &crate::netns::Pair, ports: &[u16]) -> crate::ChildGuard {
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .flat_map(|p| [SocketAddr::new(pair.server_ip(false), *p), SocketAddr::new(pair.server_ip(true), *p)])
        .collect();
    start_test_build(&pair.server, &addrs, &ServerOptions::default())
}
