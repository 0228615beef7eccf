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
    /// Since [`Self::take_load`]: the most record bytes one drain found, and the longest drain.
    peak_drained_bytes: usize,
    longest_drain: std::time::Duration,
}

/// How hard the reader worked since it was last asked ([`RingReader::take_load`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderLoad {
    /// The most record bytes (headers included) one drain took out of the ring.
    pub peak_drained_bytes: usize,
    /// The longest drain, decoding and everything the sink did with the segments included.
    pub longest_drain: std::time::Duration,
}

impl std::fmt::Debug for RingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingReader").field("fd", &self.fd.get_ref().as_raw_fd()).finish()
    }
}

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        Ok(Self {
            fd: register_readable(ring)?,
            undecodable: 0,
            peak_drained_bytes: 0,
            longest_drain: std::time::Duration::ZERO,
        })
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
        let started = std::time::Instant::now();
        let ring = self.fd.get_mut();
        let mut delivered = 0;
        let mut drained = 0;
        while let Some(item) = ring.next() {
            drained += item.len();
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
        self.peak_drained_bytes = self.peak_drained_bytes.max(drained);
        self.longest_drain = self.longest_drain.max(started.elapsed());
        delivered
    }

    /// What the drains found since the last call, and starts over.
    pub fn take_load(&mut self) -> ReaderLoad {
        let load =
            ReaderLoad { peak_drained_bytes: self.peak_drained_bytes, longest_drain: self.longest_drain };
        self.peak_drained_bytes = 0;
        self.longest_drain = std::time::Duration::ZERO;
        load
    }
}

/// Registers a kernel map (ring buffer) that owns its file descriptor with the tokio reactor.
pub fn register_readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: every `T` used here (aya `RingBuf`, `EbpfLogger`) owns its map file descriptor for its
    // whole lifetime and always returns the same one from `as_raw_fd`; the `AsyncFd` owns `T`.
    Ok(unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }?)
}
