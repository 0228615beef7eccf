//! Brings together the parts of one comparison, which arrive independently and in any order:
//! the replay starts when the request is complete, the shadow answers whenever it does, and the
//! production response is rebuilt from the wire when its last byte is captured.
//!
//! Bounded: at most `max_entries` comparisons wait at once (more are refused and counted), and an
//! entry whose production response never completes (dropped by the capture) expires after `wait`.
//! The bytes an entry holds are charged to the memory budget by the caller; the [`Charge`]s are
//! kept with the entry ([`JoinTable::hold`]) and handed on with the [`Complete`] comparison, and
//! the room kept for production's exchange from the moment its request is replayed waits with the
//! entry until that exchange comes in ([`JoinTable::reserve`]).
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::{
    budget::Charge,
    exchange::{Arrivals, Exchange, ExchangeId, Header},
};

/// What a shadow answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShadowAnswer {
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Bytes,
    /// When each piece of the body came, in ns since the replay was sent (the shadow's figures of
    /// a streamed answer are measured on them).
    pub arrivals: Arrivals,
    /// Trailer fields (HTTP/2, gRPC's status).
    pub trailers: Vec<Header>,
}

/// [`ShadowResult::NotSent`]: the shadow's queue was full.
pub const NOT_SENT_QUEUE_FULL: &str = "queue_full";
/// [`ShadowResult::NotSent`]: the shadow has no endpoint for the request's protocol.
pub const NOT_SENT_NO_ENDPOINT: &str = "no_endpoint";
/// [`ShadowResult::NotSent`] given at shutdown to a shadow whose answer had not come: the replay
/// was queued or in flight when the daemon stopped.
pub const IN_FLIGHT_AT_EXIT: &str = "in_flight_at_exit";
/// [`ShadowResult::NotSent`]: the replay share of the memory budget was full (the request was not
/// sent, or its answer could not be kept).
pub const NOT_SENT_MEMORY_BUDGET: &str = "memory_budget";

/// The outcome of replaying one request to one shadow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShadowResult {
    Answered {
        answer: ShadowAnswer,
        latency_ns: u64,
    },
    TimedOut {
        latency_ns: u64,
    },
    /// Connection refused or reset, not HTTP, body too large...
    Failed {
        error: String,
        latency_ns: u64,
    },
    /// Not compared: `queue_full` (never sent: the shadow is slow or down), `no_endpoint` (the
    /// shadow has no endpoint for the request's protocol), `memory_budget` (no room to hold
    /// it) or `in_flight_at_exit` (its answer had not come when the daemon stopped).
    NotSent {
        reason: &'static str,
    },
}

impl ShadowResult {
    pub fn latency_ns(&self) -> Option<u64> {
        match self {
            ShadowResult::Answered { latency_ns, .. }
            | ShadowResult::TimedOut { latency_ns }
            | ShadowResult::Failed { latency_ns, .. } => Some(*latency_ns),
            ShadowResult::NotSent { .. } => None,
        }
    }
}

/// Production response and every shadow's result for one request.
#[derive(Debug)]
pub struct Complete {
    pub exchange: Exchange,
    /// Indexed like the shadows.
    pub results: Vec<ShadowResult>,
    /// The bytes held by the comparison, given back when it is dropped.
    pub held: Vec<Charge>,
}

/// What became of a production exchange handed to the table.
#[derive(Debug)]
pub enum Joined {
    /// Every part is in.
    Complete(Complete),
    /// Shadow results are still missing.
    Waiting,
    /// Nothing waits for it (not replayed, or expired): given back.
    NotWaiting(Exchange),
}

/// An entry that waited too long.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired {
    /// The production response was never rebuilt (lost in capture, connection reset...).
    ProductionMissing,
    /// A shadow result never came (it should: replays have timeouts).
    ShadowMissing,
}

#[derive(Debug)]
struct Entry {
    production: Option<Exchange>,
    results: Vec<Option<ShadowResult>>,
    missing: usize,
    held: Vec<Charge>,
    /// Bytes kept for the production exchange from the moment its request was replayed, so that
    /// an answer the shadow was asked for is not thrown away for want of room when production's
    /// exchange comes in ([`JoinTable::reserve`]).
    reserved: Option<Charge>,
}

/// Waiting comparisons by exchange id.
#[derive(Debug)]
pub struct JoinTable {
    shadows: usize,
    max_entries: usize,
    wait_ns: u64,
    entries: HashMap<ExchangeId, Entry>,
    deadlines: VecDeque<(u64, ExchangeId)>,
}

impl JoinTable {
    pub fn new(shadows: usize, max_entries: usize, wait_ns: u64) -> Self {
        Self { shadows, max_entries, wait_ns, entries: HashMap::new(), deadlines: VecDeque::new() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Starts waiting for `id`; false when the table is full (the caller does not replay it).
    pub fn open(&mut self, id: ExchangeId, now_ns: u64) -> bool {
        if self.entries.len() >= self.max_entries || self.entries.contains_key(&id) {
            return false;
        }
        let entry = Entry {
            production: None,
            results: vec![None; self.shadows],
            missing: self.shadows + 1,
            held: Vec::new(),
            reserved: None,
        };
        self.entries.insert(id, entry);
        self.deadlines.push_back((now_ns.saturating_add(self.wait_ns), id));
        true
    }

    /// Keeps `charge` with the entry of `id` until it completes or expires; the charge back when
    /// nothing waits for `id`.
    pub fn hold(&mut self, id: ExchangeId, charge: Charge) -> Result<(), Charge> {
        match self.entries.get_mut(&id) {
            Some(entry) => {
                entry.held.push(charge);
                Ok(())
            }
            None => Err(charge),
        }
    }

    /// Keeps `charge` for the production exchange of `id` until [`Self::take_reserved`]; the
    /// charge back when nothing waits for `id`.
    pub fn reserve(&mut self, id: ExchangeId, charge: Charge) -> Result<(), Charge> {
        match self.entries.get_mut(&id) {
            Some(entry) => {
                entry.reserved = Some(charge);
                Ok(())
            }
            None => Err(charge),
        }
    }

    /// The bytes reserved for the production exchange of `id`, if any.
    pub fn take_reserved(&mut self, id: ExchangeId) -> Option<Charge> {
        self.entries.get_mut(&id)?.reserved.take()
    }

    /// Forgets the entry of `id` (its parts could not be held); false if there was none.
    pub fn abandon(&mut self, id: ExchangeId) -> bool {
        self.entries.remove(&id).is_some()
    }

    /// Records shadow `index`'s result; returns the comparison if it is now complete.
    pub fn shadow(&mut self, id: ExchangeId, index: usize, result: ShadowResult) -> Option<Complete> {
        let entry = self.entries.get_mut(&id)?;
        let slot = entry.results.get_mut(index)?;
        if slot.is_none() {
            *slot = Some(result);
            entry.missing -= 1;
        }
        self.complete(id)
    }

    /// Records the production exchange.
    pub fn production(&mut self, exchange: Exchange) -> Joined {
        let id = exchange.id;
        let Some(entry) = self.entries.get_mut(&id) else { return Joined::NotWaiting(exchange) };
        if entry.production.is_none() {
            entry.production = Some(exchange);
            entry.missing -= 1;
        }
        match self.complete(id) {
            Some(complete) => Joined::Complete(complete),
            None => Joined::Waiting,
        }
    }

    fn complete(&mut self, id: ExchangeId) -> Option<Complete> {
        if self.entries.get(&id)?.missing > 0 {
            return None;
        }
        let entry = self.entries.remove(&id)?;
        Some(Complete {
            exchange: entry.production?,
            results: entry
                .results
                .into_iter()
                .map(|r| r.unwrap_or(ShadowResult::NotSent { reason: NOT_SENT_QUEUE_FULL }))
                .collect(),
            held: entry.held,
        })
    }

    /// Comparisons whose production exchange is in and whose shadow answers are awaited (the
    /// books' requests in progress; a request whose production exchange is not in yet is still
    /// counted by the framing).
    pub fn awaiting_shadows(&self) -> u64 {
        self.entries.values().filter(|e| e.production.is_some()).count() as u64
    }

    /// Empties the table at shutdown: each comparison whose production exchange is in is given
    /// back with [`IN_FLIGHT_AT_EXIT`] for every answer still missing, so that it is recorded;
    /// the others had their request lost before its exchange was rebuilt, which the framing
    /// counted.
    pub fn drain_at_exit(&mut self) -> Vec<Complete> {
        self.deadlines.clear();
        let mut entries: Vec<(ExchangeId, Entry)> = self.entries.drain().collect();
        entries.sort_by_key(|(id, _)| (id.connection, id.seq));
        entries
            .into_iter()
            .filter_map(|(_, entry)| {
                Some(Complete {
                    exchange: entry.production?,
                    results: entry
                        .results
                        .into_iter()
                        .map(|r| r.unwrap_or(ShadowResult::NotSent { reason: IN_FLIGHT_AT_EXIT }))
                        .collect(),
                    held: entry.held,
                })
            })
            .collect()
    }

    /// Removes entries past their deadline, saying what each still lacked.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Expired>) {
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now_ns {
                break;
            }
            self.deadlines.pop_front();
            // Completed entries are already gone; their deadlines are skipped here.
            if let Some(entry) = self.entries.remove(&id) {
                out.push(if entry.production.is_none() {
                    Expired::ProductionMissing
                } else {
                    Expired::ShadowMissing
                });
            }
        }
        // Deadlines of completed entries would otherwise pile up between expiries.
        if self.deadlines.len() > 2 * self.max_entries.max(1) {
            let entries = &self.entries;
            self.deadlines.retain(|(_, id)| entries.contains_key(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{Request, Response, Timing};

    fn id(seq: u64) -> ExchangeId {
        ExchangeId { connection: 1, seq }
    }

    fn exchange(seq: u64) -> Exchange {
        Exchange {
            id: id(seq),
            stream_id: None,
            client: "10.0.0.1:1".parse().unwrap(),
            server: "10.0.0.2:2".parse().unwrap(),
            request: Request {
                method: "GET".into(),
                target: "/".into(),
                version: Default::default(),
                headers: vec![],
                body: Bytes::new(),
                trailers: vec![],
            },
            response: Response {
                status: 200,
                reason: "OK".into(),
                version: Default::default(),
                headers: vec![],
                body: Bytes::new(),
                arrivals: Default::default(),
                trailers: vec![],
            },
            timing: Timing::default(),
        }
    }

    fn answered(status: u16) -> ShadowResult {
        ShadowResult::Answered {
            answer: ShadowAnswer {
                status,
                headers: vec![],
                body: Bytes::new(),
                trailers: vec![],
                ..ShadowAnswer::default()
            },
            latency_ns: 5,
        }
    }

    #[test]
    fn completes_in_any_order() {
        let mut t = JoinTable::new(2, 10, 1_000);
        assert!(t.open(id(1), 0));
        assert!(t.shadow(id(1), 1, answered(500)).is_none());
        assert!(matches!(t.production(exchange(1)), Joined::Waiting));
        let done = t.shadow(id(1), 0, ShadowResult::TimedOut { latency_ns: 9 }).expect("complete");
        assert_eq!(done.exchange.id, id(1));
        assert_eq!(done.results, vec![ShadowResult::TimedOut { latency_ns: 9 }, answered(500)]);
        assert!(t.is_empty());

        assert!(t.open(id(2), 0));
        assert!(t.shadow(id(2), 0, answered(200)).is_none());
        assert!(t.shadow(id(2), 1, ShadowResult::NotSent { reason: NOT_SENT_QUEUE_FULL }).is_none());
        assert!(matches!(t.production(exchange(2)), Joined::Complete(_)), "production last");
    }

    #[test]
    fn unknown_exchanges_are_given_back_and_duplicates_ignored() {
        let mut t = JoinTable::new(1, 10, 1_000);
        assert!(matches!(t.production(exchange(7)), Joined::NotWaiting(_)), "not replayed");
        assert!(t.open(id(3), 0));
        assert!(!t.open(id(3), 0), "opened once");
        assert!(t.shadow(id(3), 5, answered(200)).is_none(), "no such shadow");
        assert!(t.shadow(id(3), 0, answered(200)).is_none());
        assert!(t.shadow(id(3), 0, answered(503)).is_none(), "first result wins");
        let Joined::Complete(done) = t.production(exchange(3)) else { panic!("complete") };
        assert_eq!(done.results, vec![answered(200)]);
    }

    #[test]
    fn at_exit_every_comparison_with_its_production_is_given_back() {
        let mut t = JoinTable::new(2, 10, 1_000);
        for seq in 1..=3 {
            assert!(t.open(id(seq), 0));
        }
        // 1: production in, one shadow answered; 2: production in, nothing answered; 3: only
        // the request was seen.
        assert!(t.shadow(id(1), 0, answered(200)).is_none());
        assert!(matches!(t.production(exchange(1)), Joined::Waiting));
        assert!(matches!(t.production(exchange(2)), Joined::Waiting));
        assert_eq!(t.awaiting_shadows(), 2);
        let done = t.drain_at_exit();
        let at_exit = ShadowResult::NotSent { reason: IN_FLIGHT_AT_EXIT };
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].exchange.id, id(1));
        assert_eq!(done[0].results, vec![answered(200), at_exit.clone()]);
        assert_eq!(done[1].results, vec![at_exit.clone(), at_exit]);
        assert!(t.is_empty());
        assert_eq!(t.awaiting_shadows(), 0);
        let mut expired = Vec::new();
        t.expire(u64::MAX, &mut expired);
        assert!(expired.is_empty(), "nothing left to expire");
    }

    #[test]
    fn bounded_and_expiring() {
        let mut t = JoinTable::new(1, 2, 100);
        assert!(t.open(id(1), 0));
        assert!(t.open(id(2), 50));
        assert!(!t.open(id(3), 60), "full");
        assert!(matches!(t.production(exchange(2)), Joined::Waiting));
        let mut expired = Vec::new();
        t.expire(99, &mut expired);
        assert!(expired.is_empty());
        t.expire(100, &mut expired);
        assert_eq!(expired, vec![Expired::ProductionMissing]);
        t.expire(150, &mut expired);
        assert_eq!(expired, vec![Expired::ProductionMissing, Expired::ShadowMissing]);
        assert!(t.is_empty());
        assert!(t.open(id(3), 200), "room again");
    }

    #[test]
    fn held_bytes_follow_the_entry_and_are_given_back() {
        let account = crate::budget::Account::new(1000);
        let mut t = JoinTable::new(1, 10, 1_000);
        assert!(t.open(id(1), 0));
        assert!(t.hold(id(1), account.charge(300).unwrap()).is_ok());
        let back = t.hold(id(9), account.charge(200).unwrap());
        assert!(back.is_err(), "nothing waits for 9");
        drop(back);
        assert_eq!(account.used(), 300);
        let done = t.shadow(id(1), 0, answered(200));
        assert!(done.is_none());
        let Joined::Complete(done) = t.production(exchange(1)) else { panic!("complete") };
        assert_eq!(account.used(), 300, "held by the comparison");
        drop(done);
        assert_eq!(account.used(), 0);
        assert!(t.open(id(2), 0));
        assert!(t.hold(id(2), account.charge(100).unwrap()).is_ok());
        assert!(t.abandon(id(2)) && t.is_empty());
        assert_eq!(account.used(), 0, "an abandoned entry gives its bytes back");
        assert!(t.open(id(3), 0));
        assert!(t.hold(id(3), account.charge(100).unwrap()).is_ok());
        let mut expired = Vec::new();
        t.expire(2_000, &mut expired);
        assert_eq!(account.used(), 0, "an expired entry gives its bytes back");
    }

    #[test]
    fn a_reservation_waits_for_production_and_goes_with_the_entry() {
        let account = crate::budget::Account::new(1000);
        let mut t = JoinTable::new(1, 10, 1_000);
        assert!(t.open(id(1), 0));
        assert!(t.reserve(id(1), account.charge(400).unwrap()).is_ok());
        assert!(t.reserve(id(9), account.charge(1).unwrap()).is_err(), "nothing waits for 9");
        let reserved = t.take_reserved(id(1)).expect("reserved");
        assert_eq!(reserved.bytes(), 400);
        assert!(t.take_reserved(id(1)).is_none(), "taken once");
        drop(reserved);
        assert!(t.open(id(2), 0));
        assert!(t.reserve(id(2), account.charge(300).unwrap()).is_ok());
        let mut expired = Vec::new();
        t.expire(2_000, &mut expired);
        assert_eq!(account.used(), 0, "an expired entry gives its reservation back");
    }
}
