//! Shedding whole connections when capture falls behind (the design's invariant 8: degrade, never
//! collapse).
//!
//! A full ring buffer drops records of every connection alike, and each drop ruins an exchange: at
//! overload almost nothing comes out whole. Shedding instead stops the kernel copying a share of
//! *connections* — those whose [`mirror_common::shed_bucket`] is below the shed level in the
//! `CONFIG` map — so that the rest is captured complete.
//!
//! [`ShedController`] decides the level from what the reader saw each tick (new `ringbuf_full`
//! drops, the largest backlog one drain found, the longest drain): it doubles the shed share under
//! pressure, and halves it after several calm ticks in a row, with a gap between the "pressure" and
//! "calm" thresholds so that it does not flap. [`ShedFilter`] is the daemon's side of the same
//! rule: it computes the same buckets, so records of shed connections still in the ring are dropped
//! before reassembly, connections cut by a raise are ended and counted as shed, and a connection
//! that shows up mid-stream once its bucket is unshed is counted as one that shedding had cut.
//! Both are pure: time and measurements are passed in.
use std::{net::IpAddr, time::Duration};

use mirror_common::{SHED_BUCKETS, shed_bucket};

use super::Segment;
use crate::flows::ConnKey;

/// What the controller reacts to, and how strongly.
#[derive(Clone, Debug, PartialEq)]
pub struct ShedPolicy {
    /// Pressure: one drain found at least this share of the ring waiting.
    pub high_fill: f64,
    /// Calm: every drain of the tick found less than this share waiting.
    pub low_fill: f64,
    /// Pressure: one drain (decoding and rebuilding what it read) took this long or longer; calm
    /// needs every drain under half of it.
    pub slow_drain: Duration,
    /// Calm ticks in a row before the shed share is halved.
    pub calm_ticks: u32,
    /// The smallest step, in buckets: the first raise, and below it a lowering goes to 0.
    pub step: u32,
    /// The highest level: this many buckets of [`SHED_BUCKETS`] are shed at most, so that a share
    /// is always mirrored and the controller can see it get better.
    pub max_level: u32,
}

impl Default for ShedPolicy {
    fn default() -> Self {
        Self {
            high_fill: 0.5,
            low_fill: 0.125,
            slow_drain: Duration::from_millis(100),
            calm_ticks: 3,
            step: SHED_BUCKETS / 32,
            max_level: SHED_BUCKETS - SHED_BUCKETS / 32,
        }
    }
}

/// What the ring reader saw during one controller tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    /// Records the kernel dropped because the ring buffer was full, since the last tick.
    pub ringbuf_full: u64,
    /// The largest backlog one drain found, as a share of the ring's size.
    pub peak_fill: f64,
    /// The longest drain.
    pub longest_drain: Duration,
}

/// Why the shed level moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// The kernel found the ring buffer full.
    RingbufFull,
    /// The reader found the ring buffer filling up.
    RingFilling,
    /// Reading and rebuilding fell behind.
    SlowDrain,
    /// Calm for long enough.
    Calm,
}

impl ShedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::RingbufFull => "ringbuf_full",
            ShedReason::RingFilling => "ring_filling",
            ShedReason::SlowDrain => "slow_drain",
            ShedReason::Calm => "calm",
        }
    }
}

/// A move of the shed level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShedChange {
    pub from: u32,
    pub to: u32,
    pub reason: ShedReason,
}

/// Decides the shed level, one tick at a time.
#[derive(Clone, Debug, Default)]
pub struct ShedController {
    policy: ShedPolicy,
    level: u32,
    calm: u32,
}

impl ShedController {
    pub fn new(policy: ShedPolicy) -> Self {
        Self { policy, level: 0, calm: 0 }
    }

    /// Buckets shed now (0..=[`SHED_BUCKETS`]).
    pub fn level(&self) -> u32 {
        self.level
    }

    /// One tick: the new level if it moved.
    pub fn update(&mut self, p: Pressure) -> Option<ShedChange> {
        let policy = &self.policy;
        let pressure = if p.ringbuf_full > 0 {
            Some(ShedReason::RingbufFull)
        } else if p.peak_fill >= policy.high_fill {
            Some(ShedReason::RingFilling)
        } else if p.longest_drain >= policy.slow_drain {
            Some(ShedReason::SlowDrain)
        } else {
            None
        };
        let from = self.level;
        if let Some(reason) = pressure {
            self.calm = 0;
            let to = self.level.saturating_mul(2).max(self.level + policy.step).min(policy.max_level);
            self.level = to;
            return (to != from).then_some(ShedChange { from, to, reason });
        }
        let calm = p.peak_fill < policy.low_fill && p.longest_drain < policy.slow_drain / 2;
        if !calm || self.level == 0 {
            self.calm = 0;
            return None;
        }
        self.calm += 1;
        if self.calm < policy.calm_ticks {
            return None;
        }
        self.calm = 0;
        let half = self.level / 2;
        self.level = if half < policy.step { 0 } else { half };
        Some(ShedChange { from, to: self.level, reason: ShedReason::Calm })
    }
}

/// The share of connections mirrored at a shed level (1.0: all of them).
pub fn mirrored_share(level: u32) -> f64 {
    1.0 - f64::from(level.min(SHED_BUCKETS)) / f64::from(SHED_BUCKETS)
}

/// An address in the kernel's 16-byte layout (IPv4 in the first 4 bytes, the rest zero).
fn address_bytes(ip: IpAddr) -> [u8; 16] {
    let mut key = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => key[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => key = v6.octets(),
    }
    key
}

/// The shed bucket of a segment's connection, as the kernel computes it.
pub fn segment_bucket(s: &Segment) -> u32 {
    shed_bucket(&address_bytes(s.src.ip()), s.src.port(), &address_bytes(s.dst.ip()), s.dst.port())
}

/// The shed bucket of a connection.
pub fn connection_bucket(key: &ConnKey) -> u32 {
    shed_bucket(
        &address_bytes(key.client.ip()),
        key.client.port(),
        &address_bytes(key.server.ip()),
        key.server.port(),
    )
}

/// The daemon's view of the shed level: which records to drop, and which new connections were
/// cut by shedding rather than open before capture began.
#[derive(Clone, Debug, Default)]
pub struct ShedFilter {
    level: u32,
    /// The highest level of the recent past, and until when it counts: a connection in a bucket
    /// below it that shows up without its SYN had been shed.
    high_water: u32,
    high_water_until_ns: u64,
    /// How long a lowered level is remembered (the idle timeout: a connection quiet for longer
    /// would have been forgotten anyway).
    memory_ns: u64,
}

impl ShedFilter {
    pub fn new(memory_ns: u64) -> Self {
        Self { memory_ns, ..Self::default() }
    }

    pub fn level(&self) -> u32 {
        self.level
    }

    /// Moves the level at `now_ns`; returns the buckets newly shed (`from..to`), if it rose.
    pub fn set_level(&mut self, level: u32, now_ns: u64) -> Option<std::ops::Range<u32>> {
        let from = self.level;
        self.level = level;
        if level < from {
            if now_ns >= self.high_water_until_ns {
                self.high_water = 0;
            }
            self.high_water = self.high_water.max(from);
            self.high_water_until_ns = now_ns.saturating_add(self.memory_ns);
        }
        (level > from).then_some(from..level)
    }

    /// Whether the segment's connection is shed now (its record was copied before the kernel
    /// took the new level).
    pub fn is_shed(&self, s: &Segment) -> bool {
        self.level > 0 && segment_bucket(s) < self.level
    }

    /// Whether the segment's connection was shed in the recent past.
    pub fn was_shed(&self, s: &Segment) -> bool {
        self.high_water > 0 && s.ts_ns < self.high_water_until_ns && segment_bucket(s) < self.high_water
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn calm() -> Pressure {
        Pressure::default()
    }

    fn full() -> Pressure {
        Pressure { ringbuf_full: 3, ..Pressure::default() }
    }

    #[test]
    fn pressure_doubles_the_shed_share_up_to_the_cap() {
        let mut c = ShedController::default();
        let step = ShedPolicy::default().step;
        let levels: Vec<u32> = (0..8).map(|_| c.update(full()).map_or(c.level(), |ch| ch.to)).collect();
        assert_eq!(
            levels[..6],
            [step, 2 * step, 4 * step, 8 * step, 16 * step, ShedPolicy::default().max_level]
        );
        assert_eq!(c.level(), ShedPolicy::default().max_level);
        assert_eq!(c.update(full()), None, "at the cap nothing moves");
    }

    #[test]
    fn each_kind_of_pressure_raises_with_its_reason() {
        let cases = [
            (full(), ShedReason::RingbufFull),
            (Pressure { peak_fill: 0.6, ..Pressure::default() }, ShedReason::RingFilling),
            (
                Pressure { longest_drain: Duration::from_millis(150), ..Pressure::default() },
                ShedReason::SlowDrain,
            ),
        ];
        for (p, reason) in cases {
            let mut c = ShedController::default();
            let change = c.update(p).expect("raised");
            assert_eq!((change.from, change.reason), (0, reason));
        }
    }

    #[test]
    fn calm_lowers_only_after_calm_ticks_in_a_row_and_reaches_zero() {
        let policy = ShedPolicy::default();
        let mut c = ShedController::default();
        for _ in 0..5 {
            c.update(full());
        }
        let top = c.level();
        assert_eq!(c.update(calm()), None);
        assert_eq!(c.update(calm()), None);
        let change = c.update(calm()).expect("third calm tick lowers");
        assert_eq!((change.from, change.to, change.reason), (top, top / 2, ShedReason::Calm));
        // A tick between the thresholds is neither: it resets the calm run without raising.
        assert_eq!(c.update(Pressure { peak_fill: 0.3, ..Pressure::default() }), None);
        assert_eq!(c.update(calm()), None);
        assert_eq!(c.update(calm()), None);
        assert!(c.update(calm()).is_some());
        let mut ticks = 0;
        while c.level() > 0 {
            c.update(calm());
            ticks += 1;
            assert!(ticks < 100, "never recovers");
        }
        assert_eq!(mirrored_share(c.level()), 1.0);
        assert!(ticks >= policy.calm_ticks as usize);
    }

    #[test]
    fn a_healthy_controller_never_sheds() {
        let mut c = ShedController::default();
        for _ in 0..50 {
            assert_eq!(c.update(Pressure { peak_fill: 0.2, ..calm() }), None);
        }
        assert_eq!(c.level(), 0);
    }

    fn seg(src: &str, dst: &str, ts: u64) -> Segment {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        Segment::new(src, dst, 1, 0, Bytes::new(), ts)
    }

    #[test]
    fn filter_drops_shed_buckets_and_remembers_them_after_unshedding() {
        let mut f = ShedFilter::new(1_000);
        // Find a connection in a low bucket and one in a high bucket.
        let conns: Vec<Segment> =
            (0..2000).map(|p| seg(&format!("10.0.0.1:{}", 30000 + p), "10.0.0.2:8080", 10)).collect();
        let low = conns.iter().find(|s| segment_bucket(s) < 100).expect("a low bucket");
        let high = conns.iter().find(|s| segment_bucket(s) >= 600).expect("a high bucket");
        assert!(!f.is_shed(low) && !f.was_shed(low));
        assert_eq!(f.set_level(512, 0), Some(0..512));
        assert!(f.is_shed(low) && !f.is_shed(high));
        assert_eq!(f.set_level(0, 100), None);
        assert!(!f.is_shed(low));
        assert!(f.was_shed(low), "shed until just now");
        assert!(!f.was_shed(high), "never shed");
        let late = seg(&low.src.to_string(), &low.dst.to_string(), 2_000);
        assert!(!f.was_shed(&late), "forgotten after the memory time");
    }

    proptest! {
        #[test]
        fn both_directions_share_a_bucket_in_range(
            a in any::<[u8; 16]>(), ap in any::<u16>(), b in any::<[u8; 16]>(), bp in any::<u16>()
        ) {
            let x = shed_bucket(&a, ap, &b, bp);
            prop_assert_eq!(x, shed_bucket(&b, bp, &a, ap));
            prop_assert!(x < SHED_BUCKETS);
        }

        #[test]
        fn the_level_stays_in_bounds_and_calm_always_recovers(
            ticks in proptest::collection::vec((0u64..3, 0.0f64..1.0, 0u64..300), 1..200)
        ) {
            let policy = ShedPolicy::default();
            let mut c = ShedController::new(policy.clone());
            for (full, fill, drain_ms) in ticks {
                let before = c.level();
                let p = Pressure { ringbuf_full: full, peak_fill: fill, longest_drain: Duration::from_millis(drain_ms) };
                let change = c.update(p);
                prop_assert!(c.level() <= policy.max_level);
                if let Some(ch) = change {
                    prop_assert_eq!(ch.from, before);
                    prop_assert_eq!(ch.to, c.level());
                    prop_assert_eq!(ch.reason == ShedReason::Calm, ch.to < ch.from);
                }
            }
            for _ in 0..(policy.calm_ticks * 12) {
                c.update(Pressure::default());
            }
            prop_assert_eq!(c.level(), 0);
        }

        #[test]
        fn rising_shed_share_tracks_the_level(level in 0u32..=SHED_BUCKETS) {
            // About `level / SHED_BUCKETS` of connections fall below the level.
            let n = 4000u32;
            let shed = (0..n)
                .filter(|p| segment_bucket(&seg(&format!("10.1.{}.{}:{}", p % 7, p % 250, 20000 + p), "10.0.0.2:8080", 0)) < level)
                .count() as f64;
            let expected = f64::from(level) / f64::from(SHED_BUCKETS) * f64::from(n);
            prop_assert!((shed - expected).abs() < 0.05 * f64::from(n), "{shed} vs {expected}");
        }
    }
}
