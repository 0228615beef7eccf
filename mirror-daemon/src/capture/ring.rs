//! Reads the kernel's ring buffer without blocking the runtime and hands out decoded segments.
use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use super::{Segment, record};

/// How long records may wait in the ring before the reader looks. The kernel wakes the reader
/// only when a sizeable backlog builds up (see `mirror_common::config::WAKEUP_BYTES`): one
/// wake-up per record would cost more than the copy itself.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// Ring-buffer reader: drains every available record on each wake-up or poll tick.
pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
    /// Records that did not decode (kernel/daemon mismatch); counted, never fatal.
    pub undecodable: u64,
}

impl std::fmt::Debug for RingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingReader").field("fd", &self.fd.get_ref().as_raw_fd()).finish()
    }
}

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        Ok(Self { fd: register_readable(ring)?, undecodable: 0 })
    }

    /// Waits for records (a kernel wake-up, or at most [`POLL_INTERVAL`]), then passes every
    /// available one to `sink`. Returns the number of segments delivered. Cancel-safe: records are
    /// consumed only inside the synchronous drain.
    pub async fn read(&mut self, sink: impl FnMut(Segment)) -> std::io::Result<usize> {
        tokio::select! {
            guard = self.fd.readable_mut() => guard?.clear_ready(),
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        Ok(self.drain(sink))
    }

    /// Drains what is in the ring right now without waiting.
    pub fn drain(&mut self, mut sink: impl FnMut(Segment)) -> usize {
        let ring = self.fd.get_mut();
        let mut delivered = 0;
        while let Some(item) = ring.next() {
            match record::decode(&item) {
                Ok(segment) => {
                    delivered += 1;
                    sink(segment);
                }
                Err(err) => {
                    self.undecodable += 1;
                    if self.undecodable == 1 {
                        tracing::warn!(%err, "undecodable capture record (kernel object and daemon differ?)");
                    }
                }
            }
        }
        delivered
    }
}

/// Registers a kernel map (ring buffer) that owns its file descriptor with the tokio reactor.
pub fn register_readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: every `T` used here (aya `RingBuf`, `EbpfLogger`) owns its map file descriptor for its
    // whole lifetime and always returns the same one from `as_raw_fd`; the `AsyncFd` owns `T`.
    Ok(unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }?)
}
