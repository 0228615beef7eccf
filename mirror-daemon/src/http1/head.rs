//! Message heads: parsed with `httparse`, and how the body that follows is delimited.
use bytes::Bytes;

use super::{Stop, reader::Phase};
use crate::{
    exchange::{Header, HttpVersion, Request, Response},
    framing::HttpConfig,
};

/// A message head, parsed once: `httparse` both finds where the head ends and reads it, into a
/// message whose header values share the head's bytes.
pub(super) trait MessageHead: Sized {
    /// The complete head at the start of `buf` and its length, if there is one. A head longer
    /// than `cfg.max_header_bytes` or with more than `cfg.max_headers` fields is
    /// [`Stop::HeaderTooLarge`]; bytes that are not a head are the side's malformed-message stop.
    fn parse(buf: &Bytes, cfg: &HttpConfig) -> Result<Option<(usize, Self)>, Stop>;
}

/// `httparse`'s answer for a head, as the framing stops on it.
fn complete(
    status: httparse::Result<usize>,
    cfg: &HttpConfig,
    malformed: Stop,
) -> Result<Option<usize>, Stop> {
    match status {
        Ok(httparse::Status::Complete(n)) if n > cfg.max_header_bytes => Err(Stop::HeaderTooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Stop::HeaderTooLarge),
        Err(_) => Err(malformed),
    }
}

impl MessageHead for Request {
    fn parse(buf: &Bytes, cfg: &HttpConfig) -> Result<Option<(usize, Self)>, Stop> {
        let mut fields = vec_headers(cfg);
        let mut req = httparse::Request::new(&mut fields);
        let Some(n) = complete(req.parse(buf), cfg, Stop::MalformedRequest)? else { return Ok(None) };
        let request = Request {
            method: req.method.unwrap_or_default().to_owned(),
            target: req.path.unwrap_or_default().to_owned(),
            version: http1_version(req.version),
            headers: to_headers(buf, req.headers),
            body: Bytes::new(),
            trailers: Vec::new(),
        };
        Ok(Some((n, request)))
    }
}

impl MessageHead for Response {
    fn parse(buf: &Bytes, cfg: &HttpConfig) -> Result<Option<(usize, Self)>, Stop> {
        let mut fields = vec_headers(cfg);
        let mut resp = httparse::Response::new(&mut fields);
        let Some(n) = complete(resp.parse(buf), cfg, Stop::MalformedResponse)? else { return Ok(None) };
        let response = Response {
            status: resp.code.unwrap_or_default(),
            reason: resp.reason.unwrap_or_default().to_owned(),
            version: http1_version(resp.version),
            headers: to_headers(buf, resp.headers),
            ..Response::default()
        };
        Ok(Some((n, response)))
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

/// What a request's head means for the connection: refused (`CONNECT`, an upgrade other than
/// h2c, contradictory framing) or how its body is delimited.
pub(super) fn request_head(request: Request) -> Result<RequestHead, Stop> {
    if request.method.eq_ignore_ascii_case("CONNECT") {
        return Err(Stop::Connect);
    }
    let upgrade = request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    let upgrade_h2c = upgrade && has_token(&request.headers, "upgrade", "h2c");
    if upgrade && !upgrade_h2c {
        return Err(Stop::Upgrade);
    }
    let framing = body_framing(&request.headers, true).ok_or(Stop::MalformedRequest)?;
    Ok(RequestHead { request, framing, upgrade_h2c })
}

/// `httparse`'s minor version as a [`HttpVersion`].
fn http1_version(minor: Option<u8>) -> HttpVersion {
    if minor == Some(0) { HttpVersion::Http10 } else { HttpVersion::Http11 }
}
