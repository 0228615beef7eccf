//! Connections the capture must not rebuild: the daemon's own replays.
//!
//! A shadow can sit where the capture sees it — on the captured interface, even on the captured
//! port (a shadow on the same node, or `lo`). Its replays would then be captured, rebuilt and
//! replayed again: a replay storm. The marker header cannot be relied on (it can be turned off),
//! and an address filter cannot tell a replay from production traffic to the same address. What
//! can be known exactly is each replay connection: the replay client binds its socket before
//! connecting, registers the local port with the shadow's address, and only then sends the SYN. The
//! assembler drops every segment of a registered connection before reassembly.
//!
//! A closed connection stays registered for a while ([`LINGER`]), so that its late segments (FIN
//! retransmissions, the last ACKs) are not taken for a new connection.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::Segment;

/// How long a closed replay connection stays registered.
pub const LINGER: Duration = Duration::from_secs(120);

/// Most connections registered at once; beyond, the oldest closed ones go first.
pub const MAX_REGISTERED: usize = 1 << 16;

/// A replay connection: the shadow's address and the daemon's local port.
type Key = (SocketAddr, u16);

/// The daemon's own replay connections (shared by the replay clients and the assembler).
#[derive(Debug, Default)]
pub struct OwnConnections {
    /// Key → when the connection closed (`None` while open).
    connections: RwLock<HashMap<Key, Option<Instant>>>,
    /// Entries, read without the lock: most segments are checked against an empty set.
    len: AtomicUsize,
}

impl OwnConnections {
    pub fn new() -> Self {
        Self::default()
    }

    /// A replay connection from local port `local_port` to `remote` is about to open.
    pub fn register(&self, remote: SocketAddr, local_port: u16) {
        let Ok(mut map) = self.connections.write() else { return };
        if map.len() >= MAX_REGISTERED {
            let oldest = map.iter().filter_map(|(k, closed)| closed.map(|t| (t, *k))).min();
            if let Some((_, key)) = oldest {
                map.remove(&key);
            }
        }
        map.insert((remote, local_port), None);
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// The connection closed at `now`; it stays registered for [`LINGER`].
    pub fn closed(&self, remote: SocketAddr, local_port: u16, now: Instant) {
        if let Ok(mut map) = self.connections.write()
            && let Some(closed) = map.get_mut(&(remote, local_port))
        {
            *closed = Some(now);
        }
    }

    /// Forgets connections closed more than [`LINGER`] before `now`.
    pub fn expire(&self, now: Instant) {
        if let Ok(mut map) = self.connections.write() {
            map.retain(|_, closed| closed.is_none_or(|t| now.saturating_duration_since(t) < LINGER));
            self.len.store(map.len(), Ordering::Relaxed);
        }
    }

    /// Whether `segment` belongs to one of the daemon's replay connections (either direction).
    pub fn matches(&self, segment: &Segment) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let Ok(map) = self.connections.read() else { return false };
        map.contains_key(&(segment.dst, segment.src.port()))
            || map.contains_key(&(segment.src, segment.dst.port()))
    }

    /// Connections registered (open or lingering).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn seg(src: &str, dst: &str) -> Segment {
        Segment::new(src.parse().unwrap(), dst.parse().unwrap(), 1, 0, Bytes::new(), 0)
    }

    #[test]
    fn both_directions_of_a_registered_connection_match_and_nothing_else() {
        let own = OwnConnections::new();
        assert!(!own.matches(&seg("127.0.0.1:40000", "127.0.0.2:8080")));
        own.register("127.0.0.2:8080".parse().unwrap(), 40000);
        assert!(own.matches(&seg("127.0.0.1:40000", "127.0.0.2:8080")), "request direction");
        assert!(own.matches(&seg("127.0.0.2:8080", "127.0.0.1:40000")), "response direction");
        assert!(!own.matches(&seg("127.0.0.1:40001", "127.0.0.2:8080")), "another client port");
        assert!(!own.matches(&seg("127.0.0.1:40000", "127.0.0.1:8080")), "production at another address");
    }

    #[test]
    fn closed_connections_linger_then_go() {
        let own = OwnConnections::new();
        let shadow: SocketAddr = "10.0.3.7:8080".parse().unwrap();
        own.register(shadow, 50000);
        let t0 = Instant::now();
        own.closed(shadow, 50000, t0);
        own.expire(t0 + LINGER - Duration::from_secs(1));
        assert!(own.matches(&seg("10.0.0.1:50000", "10.0.3.7:8080")), "late segments are still ours");
        own.expire(t0 + LINGER);
        assert!(own.is_empty());
        assert!(!own.matches(&seg("10.0.0.1:50000", "10.0.3.7:8080")));
    }
}
