//! One memory budget for the whole daemon (`--memory-limit`), split into what each part may hold.
//!
//! Each stage has its own bound — the kernel ring buffer, out-of-order bytes in reassembly,
//! partial messages in framing, replay bodies, exchanges waiting to be joined or reported, records
//! waiting to be written — and an operator has to give the container one number.
//! [`Shares::split`] derives every bound from that number, so that their sum (plus what the daemon
//! itself needs: code, tables, the allocator's slack) never exceeds it. A per-part setting given explicitly (`--ring-buffer-size`,
//! `--max-buffered-total`, `--max-body-size`, `--shadow-max-response`) keeps working: it takes its
//! part's place and the others share what is left, or the split fails with an error that says
//! which setting to change.
//!
//! Reassembly and framing enforce their shares themselves (their `max_buffered_total`). The bytes
//! held after framing — replay requests and shadow answers, exchanges waiting in the join table or
//! for the reporter — are counted in an [`Account`]: whatever holds bytes takes a [`Charge`]
//! first, and when the account is at its share the charge is refused and the caller sheds the
//! work and counts it (`memory_budget`) instead of growing. The record writer's queue holds its
//! share itself (`report::sink`): records beyond it are dropped and counted (`queue_full`).
use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

/// The default `--memory-limit`.
pub const DEFAULT_MEMORY_LIMIT: u64 = 256 << 20;
/// The smallest `--memory-limit` the daemon runs in.
pub const MIN_MEMORY_LIMIT: u64 = 32 << 20;
/// What the daemon needs whatever the load: code, runtime, connection table, metrics.
const RUNTIME_BASE: u64 = 16 << 20;
/// The smallest share a part is given (below it, the part would drop nearly everything).
const MIN_PART: u64 = 1 << 20;
/// The smallest ring buffer the kernel program is given.
const MIN_RING: u64 = 1 << 20;

/// A size as people write it: `48MiB`, `1.5GiB`, `4096B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n >= 1 << shift {
                let value = n as f64 / (1u64 << shift) as f64;
                return if n.is_multiple_of(1 << shift) {
                    write!(f, "{}{unit}", n >> shift)
                } else {
                    write!(f, "{value:.1}{unit}")
                };
            }
        }
        write!(f, "{n}B")
    }
}

/// Per-part settings given explicitly (`None`: derived from the budget).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Explicit {
    /// `--ring-buffer-size`.
    pub ring_buffer: Option<u64>,
    /// `--max-buffered-total`: reassembly and framing, each.
    pub buffered_total: Option<u64>,
    /// `--max-body-size`: one body, held by framing.
    pub max_body: Option<u64>,
    /// `--shadow-max-response`: one shadow answer, held by the replay share.
    pub max_response: Option<u64>,
}

/// What each part may hold, in bytes. The parts never add up to more than `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares {
    /// The whole budget (`--memory-limit`).
    pub total: u64,
    /// Kept for the daemon itself (code, runtime, connection table, allocator); not enforced.
    pub runtime: u64,
    /// The kernel ring buffer (a power of two).
    pub ring_buffer: u64,
    /// Kept for what the parts below do not count byte for byte (copies, allocator); not enforced.
    pub slack: u64,
    /// Records waiting for the record writer (`--record`): what absorbs a slow disk.
    pub records: u64,
    /// Out-of-order bytes in TCP reassembly, across connections.
    pub reassembly: u64,
    /// Partial messages in HTTP framing, across connections.
    pub framing: u64,
    /// Replay requests queued and in flight, and shadow answers until they are compared.
    pub replay: u64,
    /// Production exchanges waiting for their shadows' answers or for the reporter.
    pub queues: u64,
    /// Largest body framing keeps.
    pub max_body: u64,
    /// Largest shadow answer read.
    pub max_response: u64,
}

/// Why a budget cannot be split.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("--memory-limit {total}: the daemon needs at least {min}; give e.g. 256MiB", min = Size(MIN_MEMORY_LIMIT))]
    TooSmall { total: Size },
    #[error(
        "{settings} take {fixed} of --memory-limit {total}, leaving less than the {needed} the daemon needs for itself and its other parts: raise --memory-limit to at least {suggest} or lower them"
    )]
    Overcommitted { settings: String, fixed: Size, total: Size, needed: Size, suggest: Size },
    #[error(
        "{setting} {value} is more than the {share} that {part} may hold under --memory-limit {total}: such a body could never be kept; lower {setting} or raise --memory-limit"
    )]
    PartTooSmall { setting: &'static str, value: Size, part: &'static str, share: Size, total: Size },
}

/// Relative weights of the parts that share what the ring buffer and the runtime leave.
const WEIGHTS: [(Part, u64); 4] =
    [(Part::Reassembly, 2), (Part::Framing, 3), (Part::Replay, 3), (Part::Queues, 2)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Reassembly,
    Framing,
    Replay,
    Queues,
}

/// The largest power of two at most `n` (`n` > 0).
fn power_of_two_below(n: u64) -> u64 {
    1 << (63 - n.leading_zeros())
}

impl Shares {
    /// The runtime's reserve under `total`.
    pub fn runtime_reserve(total: u64) -> u64 {
        RUNTIME_BASE + total / 16
    }

    /// Splits `total` with every part derived from it.
    pub fn split(total: u64) -> Result<Self, BudgetError> {
        Self::with(total, Explicit::default())
    }

    /// Splits `total`, the parts in `explicit` taking the given sizes and the others sharing the
    /// rest by weight.
    pub fn with(total: u64, explicit: Explicit) -> Result<Self, BudgetError> {
        Self::with_hint(total, explicit, true)
    }

    /// [`Self::with`]; the smallest total that would do is looked for only if `hint`.
    fn with_hint(total: u64, explicit: Explicit, hint: bool) -> Result<Self, BudgetError> {
        if total < MIN_MEMORY_LIMIT {
            return Err(BudgetError::TooSmall { total: Size(total) });
        }
        let runtime = Self::runtime_reserve(total);
        let ring_buffer = explicit.ring_buffer.unwrap_or_else(|| power_of_two_below(total / 8).max(MIN_RING));
        let fixed_buffered = explicit.buffered_total;
        let is_fixed =
            |part: Part| matches!(part, Part::Reassembly | Part::Framing) && fixed_buffered.is_some();
        let fixed = fixed_buffered.map_or(0, |b| 2 * b);
        let free_parts: Vec<(Part, u64)> = WEIGHTS.iter().copied().filter(|(p, _)| !is_fixed(*p)).collect();
        let needed = runtime + ring_buffer + 2 * free_parts.len() as u64 * MIN_PART;
        let share_of = |part: Part, free: u64| -> u64 {
            if is_fixed(part) {
                return fixed_buffered.unwrap_or_default();
            }
            let weights: u64 = free_parts.iter().map(|(_, w)| w).sum();
            let weight = free_parts.iter().find(|(p, _)| *p == part).map_or(0, |(_, w)| *w);
            free / weights * weight
        };
        // Half of what the runtime and the ring buffer leave is kept for what the shares do not
        // count byte for byte: a body copied whole when it is complete, buffers grown by
        // doubling, the clients' read buffers, the allocator's slack. Measured under overload,
        // the daemon's heap is about twice the bytes its parts hold. An eighth of that half bounds
        // the record writer's queue instead: records are counted byte for byte, and they were part
        // of the heap measured (the queue had a fixed bound then). It only fills while the disk
        // stalls, so it needs no share of the pipeline's.
        let rest = total.saturating_sub(runtime + ring_buffer);
        let records = rest / 16;
        let slack = rest / 2 - records;
        let free = (rest - rest / 2)
            .checked_sub(fixed)
            .filter(|free| free_parts.iter().all(|(p, _)| share_of(*p, *free) >= MIN_PART));
        let Some(free) = free else {
            let mut settings = Vec::new();
            if explicit.ring_buffer.is_some() {
                settings.push(format!("--ring-buffer-size {}", Size(ring_buffer)));
            } else {
                settings.push(format!("the ring buffer ({})", Size(ring_buffer)));
            }
            if let Some(b) = fixed_buffered {
                settings.push(format!("--max-buffered-total {} (reassembly and framing, each)", Size(b)));
            }
            // The smallest total (in steps of 16MiB) that holds these settings.
            let suggest = (1..=4096u64)
                .filter(|_| hint)
                .map(|step| total.next_multiple_of(16 << 20) + step * (16 << 20))
                .find(|&t| Self::with_hint(t, explicit, false).is_ok())
                .unwrap_or(total + 2 * (fixed + needed));
            return Err(BudgetError::Overcommitted {
                settings: settings.join(" and "),
                fixed: Size(fixed + ring_buffer),
                total: Size(total),
                needed: Size(needed),
                suggest: Size(suggest),
            });
        };
        let (reassembly, framing) = (share_of(Part::Reassembly, free), share_of(Part::Framing, free));
        let (replay, queues) = (share_of(Part::Replay, free), share_of(Part::Queues, free));
        let pick = |setting, value: Option<u64>, part, share: u64| match value {
            None => Ok(share.min(64 << 20)),
            Some(v) if v <= share => Ok(v),
            Some(v) => Err(BudgetError::PartTooSmall {
                setting,
                value: Size(v),
                part,
                share: Size(share),
                total: Size(total),
            }),
        };
        let max_body = pick("--max-body-size", explicit.max_body, "partial messages", framing)?;
        let max_response = pick("--shadow-max-response", explicit.max_response, "replay bodies", replay)?;
        Ok(Self {
            total,
            runtime,
            ring_buffer,
            slack,
            records,
            reassembly,
            framing,
            replay,
            queues,
            max_body,
            max_response,
        })
    }

    /// The parts that hold memory, `(name, bytes)`: what adds up to at most `total`.
    pub fn parts(&self) -> [(&'static str, u64); 8] {
        [
            ("runtime", self.runtime),
            ("ring_buffer", self.ring_buffer),
            ("slack", self.slack),
            ("records", self.records),
            ("reassembly", self.reassembly),
            ("framing", self.framing),
            ("replay", self.replay),
            ("queues", self.queues),
        ]
    }
}

/// Bytes held by one part of the pipeline against its share. Shared between threads.
#[derive(Debug)]
pub struct Account {
    limit: usize,
    used: AtomicUsize,
}

impl Account {
    /// An account of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { limit: usize::try_from(limit).unwrap_or(usize::MAX), used: AtomicUsize::new(0) })
    }

    /// An account that never refuses (tests, and parts without a budget).
    pub fn unlimited() -> Arc<Self> {
        Self::new(u64::MAX)
    }

    /// Holds `bytes` if they fit under the limit; `None` (nothing held) if they do not.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        self.take(bytes).then(|| Charge { account: Some(self.clone()), bytes })
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The share: most bytes held at once.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// What one part holds now against its share, for the summary and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    /// The part, as [`Shares::parts`] names it.
    pub part: &'static str,
    pub used: u64,
    pub limit: u64,
}

impl MemoryUse {
    /// What `account` holds, as `part`.
    pub fn of(part: &'static str, account: &Account) -> Self {
        Self { part, used: account.used() as u64, limit: account.limit() as u64 }
    }
}

impl fmt::Display for MemoryUse {
    /// `queues=1.2MiB/19.2MiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}/{}", self.part, Size(self.used), Size(self.limit))
    }
}

/// Bytes held against an [`Account`], given back when dropped.
#[derive(Debug, Default)]
pub struct Charge {
    account: Option<Arc<Account>>,
    bytes: usize,
}

impl Charge {
    /// Holds `bytes` more if they fit; false (and nothing more held) if they do not. A charge
    /// of no account grows freely.
    pub fn grow(&mut self, bytes: usize) -> bool {
        match &self.account {
            Some(account) if !account.take(bytes) => false,
            _ => {
                self.bytes += bytes;
                true
            }
        }
    }

    /// Holds exactly `bytes`: less is given back at once, more is taken if it fits. False (and
    /// what was held kept) if more does not fit.
    pub fn resize(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            if let Some(account) = &self.account {
                account.used.fetch_sub(self.bytes - bytes, Ordering::AcqRel);
            }
            self.bytes = bytes;
            return true;
        }
        self.grow(bytes - self.bytes)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(account) = &self.account {
            account.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn sum(s: &Shares) -> u64 {
        s.parts().iter().map(|(_, b)| b).sum()
    }

    #[test]
    fn the_parts_never_exceed_the_whole() {
        let mut total = MIN_MEMORY_LIMIT;
        while total <= 64 << 30 {
            for t in [total, total + 12345, total * 3 / 2] {
                let s = Shares::split(t).unwrap();
                assert!(sum(&s) <= t, "{t}: {s:?}");
                assert!(s.ring_buffer.is_power_of_two() && s.ring_buffer >= MIN_RING, "{s:?}");
                assert!(s.parts().iter().all(|(name, b)| *name == "records" || *b >= MIN_PART), "{s:?}");
                // The record writer's queue holds a few of its 64KiB write buffers at least.
                assert!(s.records >= 8 * (64 << 10), "{s:?}");
                assert!(s.max_body <= s.framing && s.max_response <= s.replay, "{s:?}");
                // Little is lost to rounding.
                assert!(t - sum(&s) < 4 * MIB, "{t}: {s:?}");
            }
            total *= 2;
        }
    }

    #[test]
    fn the_default_split() {
        let s = Shares::split(DEFAULT_MEMORY_LIMIT).unwrap();
        assert_eq!((s.runtime, s.ring_buffer, s.slack), (32 * MIB, 32 * MIB, 84 * MIB));
        // The record writer's queue: an eighth of what the slack would have been.
        assert_eq!(s.records, 12 * MIB);
        // The other 96MiB shared 2:3:3:2.
        assert!(96 * MIB - (s.reassembly + s.framing + s.replay + s.queues) < 16, "{s:?}");
        assert_eq!((s.framing, s.replay), (s.reassembly * 3 / 2, s.queues * 3 / 2));
        assert_eq!(s.max_body, s.framing.min(64 * MIB));
        let small = Shares::split(48 * MIB).unwrap();
        assert_eq!(small.ring_buffer, 4 * MIB);
        assert_eq!(small.runtime, 19 * MIB);
        // (48 - 19 - 4) / 16.
        assert_eq!(small.records, 25 * MIB / 16);
    }

    #[test]
    fn explicit_settings_take_their_part_and_the_others_share_the_rest() {
        let explicit =
            Explicit { ring_buffer: Some(8 * MIB), buffered_total: Some(16 * MIB), ..Explicit::default() };
        let s = Shares::with(256 * MIB, explicit).unwrap();
        assert_eq!((s.ring_buffer, s.reassembly, s.framing), (8 * MIB, 16 * MIB, 16 * MIB));
        assert!(sum(&s) <= 256 * MIB);
        // Replay and queues share (256 - 32 - 8) / 2 - 32 = 76MiB, 3:2.
        assert!(s.replay + s.queues > 75 * MIB, "{s:?}");
        let given = Explicit { max_body: Some(MIB), max_response: Some(2 * MIB), ..Explicit::default() };
        let s = Shares::with(64 * MIB, given).unwrap();
        assert_eq!((s.max_body, s.max_response), (MIB, 2 * MIB));
    }

    #[test]
    fn settings_that_do_not_fit_are_refused_with_what_to_change() {
        let err = Shares::split(16 * MIB).unwrap_err();
        assert!(err.to_string().contains("at least 32MiB"), "{err}");
        let explicit = Explicit { buffered_total: Some(128 * MIB), ..Explicit::default() };
        let err = Shares::with(256 * MIB, explicit).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--max-buffered-total 128MiB") && text.contains("raise --memory-limit to at least"),
            "{text}"
        );
        // The suggestion is enough.
        let BudgetError::Overcommitted { suggest, .. } = err else { panic!("{err:?}") };
        assert!(Shares::with(suggest.0, explicit).is_ok(), "{suggest}");
        let big_ring = Explicit { ring_buffer: Some(64 * MIB), ..Explicit::default() };
        assert!(
            Shares::with(64 * MIB, big_ring).unwrap_err().to_string().contains("--ring-buffer-size 64MiB")
        );
        let body = Explicit { max_body: Some(64 * MIB), ..Explicit::default() };
        let text = Shares::with(48 * MIB, body).unwrap_err().to_string();
        assert!(text.contains("--max-body-size 64MiB") && text.contains("partial messages"), "{text}");
    }

    #[test]
    fn an_account_refuses_what_does_not_fit_and_gets_it_back_on_drop() {
        let account = Account::new(100);
        let a = account.charge(60).unwrap();
        assert!(account.charge(41).is_none(), "over the limit");
        let mut b = account.charge(40).unwrap();
        assert_eq!(account.used(), 100);
        assert!(!b.grow(1));
        drop(a);
        assert!(b.grow(60));
        assert_eq!((b.bytes(), account.used()), (100, 100));
        drop(b);
        assert_eq!(account.used(), 0);
        let mut c = account.charge(50).unwrap();
        assert!(c.resize(20) && account.used() == 20, "shrinking gives back at once");
        assert!(c.resize(100) && account.used() == 100);
        assert!(!c.resize(101) && c.bytes() == 100 && account.used() == 100, "kept when more does not fit");
        drop(c);
        assert_eq!(account.used(), 0);
        let mut free = Charge::default();
        assert!(free.grow(usize::MAX / 2), "a charge of no account grows freely");
    }

    #[test]
    fn sizes_read_as_written() {
        assert_eq!(Size(48 * MIB).to_string(), "48MiB");
        assert_eq!(Size(3 * MIB / 2).to_string(), "1.5MiB");
        assert_eq!(Size(512).to_string(), "512B");
    }
}
