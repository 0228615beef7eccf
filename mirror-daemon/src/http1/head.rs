//! Message heads: parsed with `httparse`, and how the body that follows is delimited.
use bytes::Bytes;

use super::{Stop, reader::Phase};
use crate::{
    exchange::{Header, HttpVersion, Request, Response},
    flows::Side,
    framing::HttpConfig,
};

/// Length of the complete head at the start of `buf`, if there is one.
pub(super) fn head_len(buf: &[u8], cfg: &HttpConfig, side: Side) -> Result<Option<usize>, Stop> {
    let mut headers = vec_headers(cfg);
    let status = match side {
        Side::Client => httparse::Request::new(&mut headers).parse(buf),
        Side::Server => httparse::Response::new(&mut headers).parse(buf),
    };
    match status {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Stop::HeaderTooLarge),
        Err(_) if side == Side::Client => Err(Stop::MalformedRequest),
        Err(_) => Err(Stop::MalformedResponse),
    }
}

pub(super) fn vec_headers(cfg: &HttpConfig) -> Vec<httparse::Header<'static>> {
    // A small stack array would need a fixed bound; the count is configurable, and this
    // allocation happens once per head, which is far below the per-byte work.
    vec![httparse::EMPTY_HEADER; cfg.max_headers.max(1)]
}

pub(super) fn to_headers(block: &Bytes, fields: &[httparse::Header<'_>]) -> Vec<Header> {
    fields.iter().map(|h| Header { name: h.name.to_owned(), value: block.slice_ref(h.value) }).collect()
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Framing {
    pub(super) fn phase(self) -> Phase {
        match self {
            Framing::None => Phase::Length(0),
            Framing::Length(n) => Phase::Length(n),
            Framing::Chunked => Phase::ChunkSize,
            Framing::UntilClose => Phase::UntilClose,
        }
    }
}

pub(super) fn has_token(headers: &[Header], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .any(|h| h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
}

/// Body framing from `Transfer-Encoding` and `Content-Length` (RFC 9112 §6.3); `None` when the
/// fields are contradictory or invalid.
pub(super) fn body_framing(headers: &[Header], is_request: bool) -> Option<Framing> {
    let mut te = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).peekable();
    if te.peek().is_some() {
        let last = te.flat_map(|h| h.value.split(|&b| b == b',')).map(<[u8]>::trim_ascii).last();
        return match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => Some(Framing::Chunked),
            _ if is_request => None,
            _ => Some(Framing::UntilClose),
        };
    }
    let mut length = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        for v in h.value.split(|&b| b == b',') {
            let v = v.trim_ascii();
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) => Some(Framing::Length(n)),
        None if is_request => Some(Framing::None),
        None => Some(Framing::UntilClose),
    }
}

pub(super) struct RequestHead {
    pub(super) request: Request,
    pub(super) framing: Framing,
    /// `Upgrade: h2c`: the client asks to go on in HTTP/2 (RFC 7540 §3.2).
    pub(super) upgrade_h2c: bool,
}

pub(super) fn parse_request(head: &Bytes, cfg: &HttpConfig) -> Result<RequestHead, Stop> {
    let mut fields = vec_headers(cfg);
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Stop::MalformedRequest),
    }
    let method = req.method.unwrap_or_default();
    let headers = to_headers(head, req.headers);
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Stop::Connect);
    }
    let upgrade = headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    let upgrade_h2c = upgrade && has_token(&headers, "upgrade", "h2c");
    if upgrade && !upgrade_h2c {
        return Err(Stop::Upgrade);
    }
    let framing = body_framing(&headers, true).ok_or(Stop::MalformedRequest)?;
    let request = Request {
        method: method.to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        version: http1_version(req.version),
        headers,
        body: Bytes::new(),
        trailers: Vec::new(),
    };
    Ok(RequestHead { request, framing, upgrade_h2c })
}

pub(super) fn parse_response(head: &Bytes, cfg: &HttpConfig) -> Result<Response, Stop> {
    let mut fields = vec_headers(cfg);
    let mut resp = httparse::Response::new(&mut fields);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Stop::MalformedResponse),
    }
    Ok(Response {
        status: resp.code.unwrap_or_default(),
        reason: resp.reason.unwrap_or_default().to_owned(),
        version: http1_version(resp.version),
        headers: to_headers(head, resp.headers),
        ..Response::default()
    })
}

/// `httparse`'s minor version as a [`HttpVersion`].
fn http1_version(minor: Option<u8>) -> HttpVersion {
    if minor == Some(0) { HttpVersion::Http10 } else { HttpVersion::Http11 }
}
