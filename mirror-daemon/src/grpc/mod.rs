//! gRPC over HTTP/2, as far as comparing answers needs it: telling a gRPC message from other
//! HTTP/2 traffic, splitting its body into messages and undoing their compression, and reading
//! the call's status.
//!
//! A gRPC exchange reaches the comparison like an HTTP one: the request path is
//! `/package.Service/Method`, the body is the stream's DATA payload concatenated (the
//! length-prefixed messages, see [`message`]), and the status travels in the trailers, or in the
//! headers of a Trailers-Only response (see [`status`]). Everything here is pure and bounded, and
//! never panics on hostile input: both answers come from the network.
//!
//! Reference: gRPC over HTTP/2 (`PROTOCOL-HTTP2.md` in the gRPC repository).
pub mod message;
pub mod status;

#[cfg(test)]
mod tests;

pub use self::{
    message::{DecodeError, Frame, FrameError, MessageError, decode_message, decode_messages, split},
    status::{Code, Status, StatusError, percent_decode, read_status},
};
use crate::exchange::Header;

/// How a gRPC message's payload is encoded, from the `content-type` subtype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Codec {
    /// `application/grpc` or `application/grpc+proto`: protocol buffers.
    Proto,
    /// `application/grpc+json`: each message is a JSON text.
    Json,
    /// Another subtype (`application/grpc+thrift`, ...): opaque bytes.
    Other(String),
}

/// The first value of header `name` (ASCII case-insensitive), if any.
pub fn header<'h>(headers: &'h [Header], name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| &h.value[..])
}

/// The codec of a gRPC message, or `None` when `content-type` does not say `application/grpc`.
pub fn codec(headers: &[Header]) -> Option<Codec> {
    let value = header(headers, "content-type")?;
    let value = std::str::from_utf8(value).ok()?;
    let media = value.split(';').next().unwrap_or_default().trim();
    // Asked of every answer: no allocation unless it is gRPC with a codec of another name.
    const GRPC: &str = "application/grpc";
    let prefix = media.get(..GRPC.len())?;
    if !prefix.eq_ignore_ascii_case(GRPC) {
        return None;
    }
    let subtype = &media[GRPC.len()..];
    if subtype.is_empty() || subtype.eq_ignore_ascii_case("+proto") {
        Some(Codec::Proto)
    } else if subtype.eq_ignore_ascii_case("+json") {
        Some(Codec::Json)
    } else {
        subtype.strip_prefix('+').map(|name| Codec::Other(name.to_ascii_lowercase()))
    }
}

/// The `/package.Service/Method` of a request path, split into the full service name and the
/// method; `None` for paths of another shape.
pub fn method(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(['/', '?', '#']);
    (valid(service) && valid(method)).then_some((service, method))
}
