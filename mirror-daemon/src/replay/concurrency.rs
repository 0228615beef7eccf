//! How many replays one shadow may have in flight, following its latency and the request rate.
//!
//! A fixed limit is wrong for most shadows: by Little's law a shadow answering in `latency`
//! seconds at `rate` requests/s has `rate × latency` requests in flight, so 64 is too few for a
//! shadow taking 200 ms at 1,000 requests/s (200 needed: two thirds of the replays were dropped as
//! `queue_full`) and needlessly many for a fast one. [`Controller`] estimates both from what the
//! client observes — replays offered (sent or not) and the latency of those that finished — each
//! smoothed over about a second, and sets the limit to what Little's law needs with headroom for
//! bursts. It rises at once (a shadow that slows down must not lose replays while the estimate
//! catches up) and falls slowly. The limit is clamped to what the replay share of the memory
//! budget can hold at the bytes a replay has been seen to take. An explicit setting
//! (`--shadow-max-in-flight`) is a fixed limit.
//!
//! Pure: observations carry their own elapsed time, so tests drive it without a clock.

/// The limit a shadow starts with, before anything was observed.
pub const INITIAL: usize = 64;
/// Never fewer in flight than this.
pub const MIN: usize = 8;
/// Never more in flight than this, whatever the budget (one task and a socket each).
pub const MAX: usize = 4096;
/// In flight allowed per in flight needed: room for bursts and latency spikes.
const HEADROOM: f64 = 2.0;
/// Smoothing time constant of the rate and latency estimates, in seconds.
const TAU_S: f64 = 1.0;
/// How fast the limit may fall: this share of it per second.
const FALL_PER_S: f64 = 0.2;
/// Bytes a replay is assumed to hold before any was seen (request, answer, bookkeeping).
const MIN_REPLAY_BYTES: f64 = 16_384.0;

/// What the client saw since the last update.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observation {
    /// Seconds since the last update.
    pub elapsed_s: f64,
    /// Replays offered to the shadow (queued, or dropped because the queue was full).
    pub offered: u64,
    /// Replays that finished (answered, failed or timed out).
    pub finished: u64,
    /// Their latencies added up, in seconds.
    pub latency_sum_s: f64,
    /// Their request and answer bytes added up.
    pub bytes: u64,
}

/// The in-flight limit of one shadow.
#[derive(Clone, Debug)]
pub struct Controller {
    /// An explicit setting: the limit, never changed.
    fixed: Option<usize>,
    /// Bytes the replay share of the memory budget holds.
    budget_bytes: f64,
    limit: usize,
    rate: Option<f64>,
    latency_s: Option<f64>,
    replay_bytes: Option<f64>,
}

/// Exponential smoothing of `old` towards `new` over `elapsed_s`.
fn smooth(old: Option<f64>, new: f64, elapsed_s: f64) -> f64 {
    match old {
        None => new,
        Some(old) => {
            let weight = 1.0 - (-elapsed_s / TAU_S).exp();
            old + (new - old) * weight
        }
    }
}

impl Controller {
    /// A limit that adapts, within what `budget_bytes` of replay memory holds.
    pub fn adaptive(budget_bytes: u64) -> Self {
        let mut controller = Self {
            fixed: None,
            budget_bytes: budget_bytes as f64,
            limit: INITIAL,
            rate: None,
            latency_s: None,
            replay_bytes: None,
        };
        controller.limit = INITIAL.min(controller.ceiling());
        controller
    }

    /// A fixed limit (an explicit setting).
    pub fn fixed(limit: usize) -> Self {
        Self {
            fixed: Some(limit.max(1)),
            budget_bytes: 0.0,
            limit: limit.max(1),
            rate: None,
            latency_s: None,
            replay_bytes: None,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the limit adapts.
    pub fn is_adaptive(&self) -> bool {
        self.fixed.is_none()
    }

    /// The most the memory budget allows at the bytes a replay takes.
    fn ceiling(&self) -> usize {
        let per_replay = self.replay_bytes.unwrap_or(0.0).max(MIN_REPLAY_BYTES);
        ((self.budget_bytes / per_replay) as usize).clamp(MIN, MAX)
    }

    /// Takes what was seen since the last update; returns the new limit.
    pub fn update(&mut self, seen: Observation) -> usize {
        if self.fixed.is_some() || seen.elapsed_s <= 0.0 {
            return self.limit;
        }
        let rate = smooth(self.rate, seen.offered as f64 / seen.elapsed_s, seen.elapsed_s);
        self.rate = Some(rate);
        if seen.finished > 0 {
            let n = seen.finished as f64;
            self.latency_s = Some(smooth(self.latency_s, seen.latency_sum_s / n, seen.elapsed_s));
            self.replay_bytes = Some(smooth(self.replay_bytes, seen.bytes as f64 / n, seen.elapsed_s));
        }
        let Some(latency_s) = self.latency_s else { return self.limit };
        let needed = (rate * latency_s * HEADROOM).ceil() as usize;
        let target = needed.clamp(MIN, self.ceiling());
        self.limit = if target >= self.limit {
            target
        } else {
            let floor = self.limit as f64 * (1.0 - FALL_PER_S * seen.elapsed_s).max(0.0);
            target.max(floor as usize).min(self.ceiling())
        };
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 64 << 20;

    /// `seconds` of a shadow answering in `latency_s` at `rate`/s, updated every 100 ms.
    fn drive(c: &mut Controller, rate: f64, latency_s: f64, seconds: f64) -> usize {
        let steps = (seconds * 10.0) as usize;
        for _ in 0..steps {
            let offered = (rate * 0.1) as u64;
            c.update(Observation {
                elapsed_s: 0.1,
                offered,
                finished: offered,
                latency_sum_s: offered as f64 * latency_s,
                bytes: offered * 2048,
            });
        }
        c.limit()
    }

    #[test]
    fn the_limit_follows_littles_law_with_headroom() {
        let mut c = Controller::adaptive(BUDGET);
        assert_eq!(c.limit(), INITIAL);
        // 1,000/s at 200 ms: 200 in flight needed.
        let limit = drive(&mut c, 1000.0, 0.2, 3.0);
        assert!((200..=450).contains(&limit), "{limit}");
        // It rises at once when the shadow slows down...
        let first = {
            c.update(Observation {
                elapsed_s: 0.1,
                offered: 100,
                finished: 100,
                latency_sum_s: 100.0,
                bytes: 0,
            });
            c.limit()
        };
        assert!(first > limit, "{first} after {limit}");
        // ...and falls slowly when it speeds up again.
        let before = drive(&mut c, 1000.0, 1.0, 3.0);
        let after_one_step = {
            c.update(Observation {
                elapsed_s: 0.1,
                offered: 100,
                finished: 100,
                latency_sum_s: 0.1,
                bytes: 0,
            });
            c.limit()
        };
        assert!(after_one_step as f64 >= before as f64 * 0.97, "{after_one_step} after {before}");
        let settled = drive(&mut c, 1000.0, 0.001, 30.0);
        assert_eq!(settled, MIN, "a fast shadow needs few");
    }

    #[test]
    fn the_limit_stays_within_the_memory_budget() {
        // 1 MiB replays in a 64 MiB share: 64 at most, however slow the shadow.
        let mut c = Controller::adaptive(BUDGET);
        for _ in 0..50 {
            c.update(Observation {
                elapsed_s: 0.1,
                offered: 100,
                finished: 100,
                latency_sum_s: 100.0,
                bytes: 100 << 20,
            });
        }
        assert!(c.limit() <= 64, "{}", c.limit());
        // Small replays: the budget does not bind, the hard ceiling does.
        let mut c = Controller::adaptive(1 << 40);
        assert_eq!(drive(&mut c, 100_000.0, 1.0, 2.0), MAX);
    }

    #[test]
    fn an_explicit_limit_is_fixed() {
        let mut c = Controller::fixed(4);
        assert_eq!(drive(&mut c, 1000.0, 0.2, 2.0), 4);
        assert!(!c.is_adaptive());
    }

    #[test]
    fn without_finished_replays_the_limit_holds() {
        let mut c = Controller::adaptive(BUDGET);
        c.update(Observation { elapsed_s: 0.1, offered: 500, ..Observation::default() });
        assert_eq!(c.limit(), INITIAL);
    }
}
