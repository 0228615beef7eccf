//! Which protocol a connection speaks, from the client's first bytes.
//!
//! An HTTP/2 connection with prior knowledge (h2c, every gRPC connection without TLS) opens with
//! the client preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` (RFC 9113 §3.4); anything else is taken
//! for HTTP/1.x, whose framing then checks every head. Until the client's first bytes tell, a
//! connection's events wait here (bounded): server bytes can be captured before the client's, since
//! the two directions come from different hooks.
use std::net::SocketAddr;

use crate::flows::{ConnKey, FlowEvent, Side};

/// The HTTP/2 client connection preface.
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Events of a connection whose protocol is not known yet.
#[derive(Debug)]
pub struct Detect {
    key: ConnKey,
    events: Vec<FlowEvent>,
    /// The client's first bytes so far (at most the preface's length).
    client_start: Vec<u8>,
    buffered: usize,
}

/// What [`Detect::push`] found.
#[derive(Debug)]
pub enum Detected {
    /// Still undecided: the event was kept.
    NotYet,
    /// HTTP/1.x: these events, in order, start the connection.
    Http1(Vec<FlowEvent>),
    /// The HTTP/2 preface; `skipped` bytes were waiting.
    Http2 { skipped: u64 },
}

impl Detect {
    pub fn new(key: ConnKey) -> Self {
        Self { key, events: Vec::new(), client_start: Vec::new(), buffered: 0 }
    }

    pub fn client(&self) -> SocketAddr {
        self.key.client
    }

    pub fn server(&self) -> SocketAddr {
        self.key.server
    }

    /// Bytes of the events waiting.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Takes the connection's next event. Waiting server bytes beyond `max_waiting` decide for
    /// HTTP/1.x, whose framing bounds and counts them like any response without a request.
    pub fn push(&mut self, event: FlowEvent, max_waiting: usize) -> Detected {
        let decided = match &event {
            FlowEvent::Data { side: Side::Client, data, .. } => {
                let take = (HTTP2_PREFACE.len() - self.client_start.len()).min(data.len());
                self.client_start.extend_from_slice(&data[..take]);
                if !HTTP2_PREFACE.starts_with(&self.client_start) {
                    Some(false)
                } else if self.client_start.len() == HTTP2_PREFACE.len() {
                    Some(true)
                } else {
                    None
                }
            }
            FlowEvent::Data { side: Side::Server, data, .. } => {
                self.buffered += data.len();
                (self.buffered > max_waiting).then_some(false)
            }
            FlowEvent::Opened { .. } | FlowEvent::StreamStart { mid_stream: false, .. } => None,
            FlowEvent::Fin { side: Side::Server, .. } => None,
            // A stream first seen mid-connection, a gap before the first bytes, the client's end
            // or the connection's: HTTP/1.x framing knows how to count each.
            FlowEvent::StreamStart { mid_stream: true, .. }
            | FlowEvent::Gap { .. }
            | FlowEvent::Fin { side: Side::Client, .. }
            | FlowEvent::Closed { .. } => Some(false),
        };
        if let FlowEvent::Data { side: Side::Client, data, .. } = &event {
            self.buffered += data.len();
        }
        self.events.push(event);
        match decided {
            None => Detected::NotYet,
            Some(false) => {
                self.buffered = 0;
                Detected::Http1(std::mem::take(&mut self.events))
            }
            Some(true) => {
                let skipped = std::mem::take(&mut self.buffered) as u64;
                self.events.clear();
                Detected::Http2 { skipped }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn key() -> ConnKey {
        ConnKey { client: "10.0.0.1:1000".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
    }

    fn data(side: Side, bytes: &'static [u8]) -> FlowEvent {
        FlowEvent::Data { id: 1, side, data: Bytes::from_static(bytes), ts_ns: 0 }
    }

    #[test]
    fn the_preface_decides_even_split_and_after_server_bytes() {
        let mut d = Detect::new(key());
        assert!(matches!(d.push(data(Side::Server, b"\0\0\0\x04\0\0\0\0\0"), 1024), Detected::NotYet));
        assert!(matches!(d.push(data(Side::Client, b"PRI * HTTP/2.0\r\n"), 1024), Detected::NotYet));
        assert!(matches!(
            d.push(data(Side::Client, b"\r\nSM\r\n\r\n\0\0"), 1024),
            Detected::Http2 { skipped: 35 }
        ));
    }

    #[test]
    fn anything_else_is_http1_with_every_event_kept_in_order() {
        let mut d = Detect::new(key());
        assert!(matches!(d.push(data(Side::Server, b"HTTP/1.1 200 OK\r\n"), 1024), Detected::NotYet));
        let Detected::Http1(events) = d.push(data(Side::Client, b"PRI /x HTTP/1.1\r\n"), 1024) else {
            panic!("a PRI method is not the preface")
        };
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], FlowEvent::Data { side: Side::Server, .. }));
        let mut d = Detect::new(key());
        let started = FlowEvent::StreamStart { id: 1, side: Side::Client, mid_stream: true };
        assert!(matches!(d.push(started, 1024), Detected::Http1(e) if e.len() == 1));
    }

    #[test]
    fn waiting_server_bytes_are_bounded() {
        let mut d = Detect::new(key());
        assert!(matches!(d.push(data(Side::Server, b"0123456789"), 16), Detected::NotYet));
        assert!(matches!(d.push(data(Side::Server, b"0123456789"), 16), Detected::Http1(e) if e.len() == 2));
    }
}
