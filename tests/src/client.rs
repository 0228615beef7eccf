//! A keep-alive HTTP/1.1 client over a plain socket that records every byte it sends and receives,
//! so tests can compare what the capture rebuilt with what really crossed the wire.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// The bytes one connection exchanged, in order, per direction.
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    pub local: Option<SocketAddr>,
    pub sent: Vec<u8>,
    pub received: Vec<u8>,
    /// Completed request/response pairs.
    pub exchanges: usize,
}

/// One request: method, path, request body size, response body size asked of the model server.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub request_body: usize,
    pub response_body: usize,
}

/// Runs `asks` in order over one keep-alive connection to `server` and records the transcript.
/// Panics with context on any protocol error (the server is ours, so any error is a failure).
pub fn run_connection(server: SocketAddr, asks: &[Ask]) -> Transcript {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {server}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    let mut t = Transcript { local: stream.local_addr().ok(), ..Transcript::default() };
    for (i, ask) in asks.iter().enumerate() {
        let body = crate::model_server::body_of(ask.request_body);
        let method = if ask.request_body > 0 { "POST" } else { "GET" };
        let head = format!(
            "{method} /infer/{i}?size={} HTTP/1.1\r\nHost: {server}\r\nContent-Length: {}\r\n\r\n",
            ask.response_body, ask.request_body
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        stream.write_all(&request).unwrap_or_else(|e| panic!("send request {i}: {e}"));
        t.sent.extend_from_slice(&request);
        let response =
            read_response(&mut stream).unwrap_or_else(|e| panic!("response {i} from {server}: {e}"));
        let expected = crate::model_server::body_of(ask.response_body);
        assert!(response.ends_with(&expected), "response {i} body differs from what the server sends");
        t.received.extend_from_slice(&response);
        t.exchanges += 1;
    }
    t
}

/// Reads one Content-Length-framed response, returning its raw bytes.
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let header_end = loop {
        if let Some(pos) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before headers"));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no content-length in {head:?}")))?;
    while raw.len() < header_end + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in body"));
        }
        raw.extend_from_slice(&buf[..n]);
    }
    if raw.len() != header_end + length {
        return Err(std::io::Error::other("more bytes than the response announced"));
    }
    Ok(raw)
}

/// Sends one POST with a JSON body over a keep-alive connection; returns (status, body, latency).
pub fn post_json(stream: &mut TcpStream, host: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>, Duration) {
    let started = std::time::Instant::now();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).unwrap_or_else(|e| panic!("send to {host}: {e}"));
    let raw = read_response(stream).unwrap_or_else(|e| panic!("response from {host}: {e}"));
    let latency = started.elapsed();
    let header_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("complete head") + 4;
    let status: u16 = String::from_utf8_lossy(&raw[9..12]).parse().expect("status code");
    (status, raw[header_end..].to_vec(), latency)
}

/// A keep-alive connection for [`post_json`].
pub fn connect(server: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {server}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}
