//! Segments in, exchanges out: TCP reassembly, then per connection the protocol its first bytes
//! announce, bounded and counted.
//!
//! [`Assembler`] is the front door of the rebuilding pipeline: captured [`Segment`]s go through
//! [`crate::flows`] (one ordered byte stream per direction, gaps explicit), then each connection's
//! streams go to the framing of its protocol — HTTP/1.x ([`crate::http1`]) or HTTP/2 — chosen from
//! the client's first bytes ([`detect`]). What leaves is one ordered sequence of [`Assembled`]
//! items: each request as soon as it is complete (to be replayed at once) and each exchange when
//! its response is.
//!
//! It is plain synchronous code with time passed in (`Segment::ts_ns` and [`Assembler::tick`]'s
//! `now_ns`), so it is tested with segments built in memory and never reads a clock or does I/O.
//! Whatever cannot be rebuilt with certainty is dropped and counted in [`AssemblyDrops`]: a wrong
//! comparison is worse than a missing one (the design's invariant 2).
mod detect;
pub mod shards;

use std::{collections::HashMap, sync::Arc};

use self::detect::{Detect, Detected};
use crate::{
    capture::{
        Segment,
        ignore::OwnConnections,
        shed::{ShedFilter, connection_bucket},
    },
    drops::AssemblyDrops,
    exchange::Assembled,
    flows::{ConnId, FlowConfig, FlowEvent, FlowTable},
    framing::HttpConfig,
    http1, http2,
};

/// Configuration of the whole pipeline.
#[derive(Clone, Debug, Default)]
pub struct AssemblerConfig {
    pub flows: FlowConfig,
    pub http: HttpConfig,
    /// Announce each complete request before its response ([`Assembled::Request`]).
    pub announce_requests: bool,
    /// The daemon's own replay connections: their segments are dropped before reassembly.
    pub own_connections: Option<Arc<OwnConnections>>,
}

/// A connection's protocol state.
#[derive(Debug)]
enum Conn {
    /// Its protocol is not known yet: events wait until the client's first bytes tell.
    Detecting(Detect),
    Http1(Box<http1::Connection>),
    Http2(Box<http2::Connection>),
}

impl Conn {
    fn buffered(&self) -> usize {
        match self {
            Conn::Detecting(detect) => detect.buffered(),
            Conn::Http1(conn) => conn.buffered(),
            Conn::Http2(conn) => conn.buffered(),
        }
    }
}

/// Segments in, [`Assembled`] items out; see the module documentation.
#[derive(Debug)]
pub struct Assembler {
    flows: FlowTable,
    conns: HashMap<ConnId, Conn>,
    http_config: HttpConfig,
    events: Vec<FlowEvent>,
    drops: AssemblyDrops,
    /// Bytes buffered above reassembly: partial messages and undecided connections.
    buffered: usize,
    announce_requests: bool,
    own_connections: Option<Arc<OwnConnections>>,
    /// Which connections the kernel is told to shed, and which it shed recently.
    shed: ShedFilter,
}

impl Assembler {
    pub fn new(config: AssemblerConfig) -> Self {
        let shed = ShedFilter::new(config.flows.limits.idle_timeout_ns);
        Self {
            flows: FlowTable::new(config.flows),
            conns: HashMap::new(),
            http_config: config.http,
            events: Vec::new(),
            drops: AssemblyDrops::default(),
            buffered: 0,
            announce_requests: config.announce_requests,
            shed,
            own_connections: config.own_connections,
        }
    }

    /// Numbers connections as [`FlowTable::number_ids`] does (for a shard of [`shards`]).
    pub fn number_ids(&mut self, first: ConnId, step: ConnId) {
        self.flows.number_ids(first, step);
    }

    /// Feeds one captured segment; what it completes is appended to `out`.
    pub fn push(&mut self, segment: Segment, out: &mut Vec<Assembled>) {
        if self.own_connections.as_ref().is_some_and(|own| own.matches(&segment)) {
            self.drops.own_replay_segments += 1;
            return;
        }
        if self.shed.is_shed(&segment) {
            self.drops.shed_late_segments += 1;
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        let resumed_if_opened = !segment.is_syn() && self.shed.was_shed(&segment);
        self.flows.push(segment, &mut events, &mut self.drops);
        if resumed_if_opened && events.iter().any(|e| matches!(e, FlowEvent::Opened { .. })) {
            self.drops.shed_resumed_connections += 1;
        }
        self.dispatch(&mut events, out);
        self.events = events;
    }

    /// Expires connections idle since before `now_ns - idle_timeout` (same clock as `ts_ns`).
    /// Their holes become gaps and unfinished exchanges are dropped and counted.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Assembled>) {
        let mut events = std::mem::take(&mut self.events);
        self.flows.tick(now_ns, &mut events, &mut self.drops);
        self.dispatch(&mut events, out);
        self.events = events;
    }

    /// Closes every connection (the daemon is stopping): requests still in progress are counted
    /// `open_at_exit`, exchanges completed by what was captured are appended to `out`.
    pub fn finish(&mut self, out: &mut Vec<Assembled>) {
        let mut events = std::mem::take(&mut self.events);
        self.flows.close_all(&mut events);
        self.dispatch(&mut events, out);
        self.events = events;
    }

    /// Follows the shed level the kernel was given at `now_ns` (same clock as `ts_ns`). When it
    /// rose, the connections in the newly shed buckets are ended now and counted as shed: the
    /// kernel copies none of their later bytes.
    pub fn set_shed_level(&mut self, level: u32, now_ns: u64, out: &mut Vec<Assembled>) {
        let Some(cut) = self.shed.set_level(level, now_ns) else { return };
        let mut events = std::mem::take(&mut self.events);
        self.drops.shed_cut_connections +=
            self.flows.shed_where(|key| cut.contains(&connection_bucket(key)), &mut events);
        self.dispatch(&mut events, out);
        self.events = events;
    }

    /// Requests seen whose exchange is neither rebuilt nor counted lost yet (a term of the books,
    /// [`crate::drops::Books`]). Walks the connections: for the periodic summary, not per segment.
    pub fn requests_in_progress(&self) -> u64 {
        self.conns
            .values()
            .map(|conn| match conn {
                Conn::Detecting(_) => 0,
                Conn::Http1(http) => http.requests_in_progress(),
                Conn::Http2(h2) => h2.requests_in_progress(),
            })
            .sum()
    }

    /// Buckets shed now (see [`crate::capture::shed`]).
    pub fn shed_level(&self) -> u32 {
        self.shed.level()
    }

    /// Losses since creation.
    pub fn drops(&self) -> &AssemblyDrops {
        &self.drops
    }

    /// Bytes currently buffered: out-of-order TCP data plus partial messages.
    pub fn memory_bytes(&self) -> usize {
        self.flows.buffered_bytes() + self.buffered
    }

    /// Connections tracked by TCP reassembly (including recently closed ones kept to recognise
    /// their late retransmissions).
    pub fn connections(&self) -> usize {
        self.flows.len()
    }

    fn dispatch(&mut self, events: &mut Vec<FlowEvent>, out: &mut Vec<Assembled>) {
        for event in events.drain(..) {
            let id = event.id();
            if let FlowEvent::Opened { key, .. } = event {
                self.conns.insert(id, Conn::Detecting(Detect::new(key)));
                continue;
            }
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            let before = conn.buffered();
            let closed = matches!(event, FlowEvent::Closed { .. });
            match conn {
                Conn::Detecting(detect) => match detect.push(event, self.http_config.max_backlog_bytes) {
                    Detected::NotYet => {}
                    Detected::Http1(events) => {
                        let mut http = Box::new(http1::Connection::new(detect.client(), detect.server()));
                        http.identify(id, self.announce_requests);
                        for event in events {
                            http.handle(event, &self.http_config, &mut self.drops, out);
                        }
                        *conn = Conn::Http1(http);
                    }
                    Detected::Http2(events) => {
                        let mut h2 = Box::new(http2::Connection::new(
                            detect.client(),
                            detect.server(),
                            &self.http_config,
                        ));
                        h2.identify(id, self.announce_requests);
                        for event in events {
                            h2.handle(event, &self.http_config, &mut self.drops, out);
                        }
                        *conn = Conn::Http2(h2);
                    }
                },
                Conn::Http1(http) => {
                    http.handle(event, &self.http_config, &mut self.drops, out);
                    if let Some(mut upgrade) = http.take_upgrade() {
                        let (client, server) = (http.client(), http.server());
                        let mut h2 = Box::new(http2::Connection::upgraded(
                            client,
                            server,
                            &self.http_config,
                            &mut upgrade,
                        ));
                        h2.identify(id, self.announce_requests);
                        for event in std::mem::take(&mut upgrade.events) {
                            h2.handle(event, &self.http_config, &mut self.drops, out);
                        }
                        *conn = Conn::Http2(h2);
                    }
                }
                Conn::Http2(h2) => h2.handle(event, &self.http_config, &mut self.drops, out),
            }
            let after = conn.buffered();
            self.buffered = self.buffered + after - before;
            if closed {
                self.buffered -= after;
                self.conns.remove(&id);
            } else if self.buffered > self.http_config.max_buffered_total {
                // Bounded memory: give up on the connection that just grew rather than grow.
                let before = conn.buffered();
                match conn {
                    Conn::Http1(http) => http.abort_memory_limit(&mut self.drops),
                    Conn::Http2(h2) => h2.abort_memory_limit(&mut self.drops),
                    Conn::Detecting(_) => {}
                }
                self.buffered = self.buffered + conn.buffered() - before;
            }
        }
    }
}
