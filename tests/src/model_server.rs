//! A small HTTP/1.1 server that stands in for a model server in tests and the demo.
//!
//! Built on hyper, keep-alive by default. Any request is read in full; the response body has the
//! size asked for with `?size=N` (or the `x-response-size` header) and deterministic content, so a
//! client can check every byte it got. `x-request-bytes` echoes how many body bytes arrived.
use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
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

async fn handle(req: Request<Incoming>, delay: Duration) -> Result<Response<Full<Bytes>>, Infallible> {
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
pub async fn serve(addrs: Vec<SocketAddr>, delay: Duration) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr).await?;
        println!("listening on {addr}");
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, delay));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
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

/// Starts the `model-server` binary in `ns` on the server's IPv4 and IPv6 addresses for each
/// port, and waits until it listens.
pub fn spawn(pair: &crate::netns::Pair, ports: &[u16]) -> crate::ChildGuard {
    use std::io::BufRead;
    let mut cmd = pair.server.command(crate::sibling_binary("model-server"));
    for port in ports {
        cmd.arg("--listen").arg(SocketAddr::new(pair.server_ip(false), *port).to_string());
        cmd.arg("--listen").arg(SocketAddr::new(pair.server_ip(true), *port).to_string());
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("spawn model-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    for _ in 0..ports.len() * 2 {
        let line = lines.next().expect("model-server ended early").expect("read");
        assert!(line.starts_with("listening on"), "model-server said {line}");
    }
    crate::ChildGuard(child)
}
