//! Server-sent event streams (`text/event-stream`): how streamed LLM answers arrive.
//!
//! A streamed answer is one HTTP body, but neither its bytes nor its last byte say what a user of an
//! LLM sees: each chunk carries its own id and timestamp, and what matters first is how soon the
//! first token came and how fast the rest followed. This module reads such a body the way a client
//! does — events ([`parser`]), folded into the generated text, tool calls and finish reason of each
//! choice ([`answer`]) — and times it from when each piece was captured ([`figures`]).
//!
//! It sits between framing and comparison: HTTP/1.x framing asks it whether a stream cut short had
//! already ended by its own rule ([`ended_by_its_events`]); comparison and records read the folded
//! answer ([`read`]).
pub mod answer;
pub mod figures;
pub mod parser;

use bytes::Bytes;

pub use self::{
    answer::{Choice, StreamEnd, StreamKind, StreamedAnswer, ToolCall},
    figures::{Spread, StreamFigures, TokensFrom},
    parser::{Event, EventParser, StreamError},
};
use crate::exchange::{Arrivals, Header};

/// Largest event accepted (all its lines): far above any chunk a server sends.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// The answer is an event stream (`Content-Type: text/event-stream`, parameters allowed).
pub fn is_event_stream(headers: &[Header]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-type")
            && h.value
                .split(|&b| b == b';')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"text/event-stream"))
    })
}

/// The answer says it is JSON (`application/json`, `+json`): never read as an event stream.
pub fn is_json(headers: &[Header]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-type") && {
            let t =
                h.value.split(|&b| b == b';').next().unwrap_or_default().trim_ascii().to_ascii_lowercase();
            t == b"application/json" || t.ends_with(b"+json")
        }
    })
}

/// How an event stream's bytes are encoded on the wire, when its events can be read before its
/// body ends: as sent, or gzip (servers that compress streams flush after each event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamCoding {
    Identity,
    Gzip,
}

/// The coding of an event-stream answer whose events can be read while it is open; `None` for
/// other answers, and for codings whose output cannot be read before the end.
pub fn readable_while_open(headers: &[Header]) -> Option<StreamCoding> {
    if !is_event_stream(headers) {
        return None;
    }
    let mut codings = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-encoding"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|c| c.trim_ascii().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != b"identity");
    match (codings.next().as_deref(), codings.next()) {
        (None, _) => Some(StreamCoding::Identity),
        (Some(b"gzip" | b"x-gzip"), None) => Some(StreamCoding::Gzip),
        _ => None,
    }
}

/// Folds a whole event-stream body; each event is timed by the capture time of the piece that
/// completed it (`arrivals`; without arrivals every event gets `default_ts_ns`).
pub fn read(body: &[u8], arrivals: &Arrivals, default_ts_ns: u64) -> Result<StreamedAnswer, StreamError> {
    let mut parser = EventParser::new(MAX_EVENT_BYTES);
    let mut answer = StreamedAnswer::default();
    let mut fold = |event: Event| answer.fold(&event);
    let mut from = 0usize;
    for &(end, ts) in arrivals.pieces() {
        let end = (end as usize).min(body.len());
        if end > from {
            parser.push(&body[from..end], ts, &mut fold)?;
            from = end;
        }
    }
    if from < body.len() {
        parser.push(&body[from..], default_ts_ns, &mut fold)?;
    }
    Ok(answer)
}

/// Whether the pieces of an event stream received so far hold its end by the protocol's own rule
/// (`data: [DONE]`, or a native stream's final event). Clients close the connection as soon as
/// they read it — the official `openai` client does — so the body's own end (the last chunk) often
/// never reaches the wire although the answer was whole. A gzip stream is decoded as far as its
/// pieces go.
pub fn ended_by_its_events(pieces: &[Bytes], coding: StreamCoding) -> bool {
    use std::io::Write;
    let mut parser = EventParser::new(MAX_EVENT_BYTES);
    let mut answer = StreamedAnswer::default();
    let mut gzip = (coding == StreamCoding::Gzip).then(|| flate2::write::MultiGzDecoder::new(Vec::new()));
    for piece in pieces {
        let decoded: &[u8] = match gzip.as_mut() {
            None => piece,
            Some(decoder) => {
                decoder.get_mut().clear();
                if decoder.write_all(piece).and_then(|()| decoder.flush()).is_err() {
                    return false;
                }
                decoder.get_ref()
            }
        };
        if parser.push(decoded, 0, &mut |event| answer.fold(&event)).is_err() {
            return false;
        }
        if answer.end.is_complete() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;
