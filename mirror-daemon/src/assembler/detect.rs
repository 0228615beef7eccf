//! Which protocol a connection speaks, from the client's first bytes.
//!
//! An HTTP/2 connection with prior knowledge (h2c, every gRPC connection without TLS) opens with
//! the client preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` (RFC 9113 §3.4); anything else is taken
//! for HTTP/1.x, whose framing then checks every head. Until the client's first bytes tell, a
//! connection's events wait here (bounded): server bytes can be captured before the client's, since
//! the two directions come from different hooks.
//!
//! A connection first seen mid-stream has no preface to look at. Its client bytes are offered to an
//! HTTP/2 frame reader looking for frame boundaries: when it finds a chain of frames, the connection
//! is HTTP/2; a client chunk that starts like an HTTP/1.x request, or a server chunk that starts
//! like a status line, makes it HTTP/1.x (whose framing counts it, or resynchronises it when asked).
//! So gRPC connections that were open before the daemon started are picked up as soon as one of
//! their streams can be proven.
use std::net::SocketAddr;

use crate::{
    flows::{ConnKey, FlowEvent, Side},
    http2::frame::{FrameEvent, FrameReader},
};

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
    /// A side was first seen mid-connection: an HTTP/2 frame reader looks at the client's bytes.
    probe: Option<Box<FrameReader>>,
    frames: Vec<FrameEvent>,
}

/// What [`Detect::push`] found.
#[derive(Debug)]
pub enum Detected {
    /// Still undecided: the event was kept.
    NotYet,
    /// HTTP/1.x: these events, in order, start the connection.
    Http1(Vec<FlowEvent>),
    /// HTTP/2 (the preface, or frames found mid-stream): these events start the connection.
    Http2(Vec<FlowEvent>),
}

impl Detect {
    pub fn new(key: ConnKey) -> Self {
        Self {
            key,
            events: Vec::new(),
            client_start: Vec::new(),
            buffered: 0,
            probe: None,
            frames: Vec::new(),
        }
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

    /// Takes the connection's next event. Waiting bytes beyond `max_waiting` decide for HTTP/1.x,
    /// whose framing bounds and counts them like any response without a request.
    pub fn push(&mut self, event: FlowEvent, max_waiting: usize) -> Detected {
        if let FlowEvent::Data { data, .. } = &event {
            self.buffered += data.len();
        }
        let decided = match &event {
            FlowEvent::StreamStart { mid_stream: true, .. } => {
                self.probe.get_or_insert_with(|| Box::new(FrameReader::mid_stream()));
                None
            }
            FlowEvent::Data { side: Side::Client, data, ts_ns, .. } if self.probe.is_some() => {
                if may_start_request(data) {
                    Some(false)
                } else {
                    self.probe_frames(data.clone(), *ts_ns)
                }
            }
            FlowEvent::Data { side: Side::Server, data, .. } if self.probe.is_some() => {
                data.starts_with(b"HTTP/1.").then_some(false)
            }
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
            FlowEvent::Data { side: Side::Server, .. }
            | FlowEvent::Opened { .. }
            | FlowEvent::StreamStart { mid_stream: false, .. }
            | FlowEvent::Fin { side: Side::Server, .. } => None,
            FlowEvent::Gap { side: Side::Client, len, .. } if self.probe.is_some() => {
                if let Some(probe) = self.probe.as_mut() {
                    probe.gap(*len, &mut self.frames);
                    self.frames.clear();
                }
                None
            }
            FlowEvent::Gap { side: Side::Server, .. } if self.probe.is_some() => None,
            // A gap before the first bytes, the client's end or the connection's: HTTP/1.x framing
            // knows how to count each.
            FlowEvent::Gap { .. } | FlowEvent::Fin { side: Side::Client, .. } | FlowEvent::Closed { .. } => {
                Some(false)
            }
        };
        let decided = decided.or((self.buffered > max_waiting).then_some(false));
        self.events.push(event);
        match decided {
            None => Detected::NotYet,
            Some(http2) => {
                self.buffered = 0;
                self.probe = None;
                let events = std::mem::take(&mut self.events);
                if http2 { Detected::Http2(events) } else { Detected::Http1(events) }
            }
        }
    }

    /// Offers client bytes of a mid-stream connection to the HTTP/2 frame reader: `Some(true)` once
    /// it found frame boundaries, `Some(false)` when it gave up.
    fn probe_frames(&mut self, data: bytes::Bytes, ts_ns: u64) -> Option<bool> {
        let probe = self.probe.as_mut()?;
        probe.push(data, ts_ns, &mut self.frames);
        let found = self.frames.iter().any(|f| matches!(f, FrameEvent::Synced { .. }));
        let failed = probe.is_stopped();
        self.frames.clear();
        if found {
            Some(true)
        } else if failed {
            Some(false)
        } else {
            None
        }
    }
}

/// Whether a chunk starts like an HTTP/1.x request line.
fn may_start_request(data: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] =
        [b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"TRACE ", b"CONNECT "];
    METHODS.iter().any(|m| data.starts_with(m))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn key() -> ConnKey {
        ConnKey { client: "10.0.0.1:1000".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
    }

    fn data(side: Side, bytes: &'static [u8]) -> FlowEvent {
        FlowEvent::Data { id: 1, side, data: Bytes::from_static(bytes), ts_ns: 0, ack: None }
    }

    #[test]
    fn the_preface_decides_even_split_and_after_server_bytes() {
        let mut d = Detect::new(key());
        assert!(matches!(d.push(data(Side::Server, b"\0\0\0\x04\0\0\0\0\0"), 1024), Detected::NotYet));
        assert!(matches!(d.push(data(Side::Client, b"PRI * HTTP/2.0\r\n"), 1024), Detected::NotYet));
        let Detected::Http2(events) = d.push(data(Side::Client, b"\r\nSM\r\n\r\n\0\0"), 1024) else {
            panic!("the preface is HTTP/2")
        };
        assert_eq!(events.len(), 3, "every event kept, in order");
        assert!(matches!(&events[0], FlowEvent::Data { side: Side::Server, .. }));
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
        let started = FlowEvent::StreamStart { id: 1, side: Side::Client, mid_stream: true, seq: 0 };
        assert!(matches!(d.push(started, 1024), Detected::NotYet), "mid-stream: the bytes tell");
        assert!(
            matches!(d.push(data(Side::Client, b"GET / HTTP/1.1\r\n"), 1024), Detected::Http1(e) if e.len() == 2)
        );
    }

    #[test]
    fn waiting_server_bytes_are_bounded() {
        let mut d = Detect::new(key());
        assert!(matches!(d.push(data(Side::Server, b"0123456789"), 16), Detected::NotYet));
        assert!(matches!(d.push(data(Side::Server, b"0123456789"), 16), Detected::Http1(e) if e.len() == 2));
    }
}
