//! The mirror: rebuilt exchanges → replay to shadows → comparison → records, logs, metrics,
//! aggregates and the promotion verdict.
//!
//! Two halves, so that capture never waits for anything slower than itself:
//!
//! - [`Dispatcher`] runs inside the capture loop. It samples each request as soon as it is
//!   complete, keeps room in the memory budget for its production exchange, hands it to every
//!   shadow's bounded queue, and joins the shadows' answers with the production response when
//!   that is rebuilt. All of it is non-blocking: a full queue, table or share is a counted drop.
//! - [`Reporter`] runs on its own thread. It compares (a backlog on several threads), writes
//!   records, feeds the aggregates and the metrics, and logs per-comparison events and the
//!   periodic summary.
//!
//! Both can be reconfigured while running (SIGHUP): [`Dispatcher::reconfigure`] and
//! [`ReportItem::Reconfigure`]. Shadows are handled in *generations*: a comparison is joined
//! against the shadows that were configured when its request was replayed, so a comparison opened
//! before a reload completes with the old set and one opened after it with the new set. Clients of
//! shadows that did not change are shared between generations (same connections, same counters);
//! an old generation is dropped once nothing waits on it any more. Each client has an id that is
//! never reused, so a late answer from a removed shadow still finds its comparison.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};

use crate::{
    budget::{Account, Charge, MemoryUse},
    capture::{ignore::OwnConnections, shed::mirrored_share},
    compare::{self, CompareRules, Message, RequestView, ShadowOutcome},
    drops::{Books, DispatchDrops, KernelDrops, Losses, Outcomes, RecordDrops, Stage},
    exchange::{Assembled, Exchange, ExchangeId, ReadyRequest},
    kernel::{Counters, ProgramRuns},
    metrics::{
        ComparisonLabels, Metrics, OutcomeLabels, ReasonLabels, RouteLabels, ShadowReasonLabels,
        ShadowRouteLabels, TextLabels,
    },
    replay::{
        client::{ClientLimits, Done, Job, ShadowClient},
        join::{
            Complete, Expired, JoinTable, Joined, NOT_SENT_MEMORY_BUDGET, NOT_SENT_NO_ENDPOINT,
            NOT_SENT_QUEUE_FULL, ShadowResult,
        },
        request::{self, ReplayOptions},
        sample::{Decision, RoutePattern, Sampler},
        target::ModelInfo,
    },
    report::{
        aggregate::{Aggregator, Observation, RecordError},
        criteria::{Criteria, evaluate},
        document::{Health, VerdictPublisher},
        record::{ComparisonRecord, ExchangeRecord, GrpcStatus, RecordOptions, ShadowRecord},
        sink::{CLOSE_GRACE, RecordSink},
        summary::{ExchangeStats, nonzero},
    },
};

/// `METHOD /path` (no query): the unit of per-route aggregates and metrics.
pub fn route(method: &str, target: &str) -> String {
    format!("{method} {}", target.split('?').next().unwrap_or_default())
}

/// Comparison rules for the routes that match `pattern`.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteRules {
    pub pattern: RoutePattern,
    pub rules: CompareRules,
}

/// Default comparison rules and per-route exceptions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSet {
    pub default: CompareRules,
    /// Tried in order; the first pattern that matches the request wins.
    pub routes: Vec<RouteRules>,
    /// Message definitions gRPC answers are decoded with (built-ins and `--proto-descriptor`).
    pub schemas: compare::Schemas,
}

impl RuleSet {
    /// The rules for a request: the first matching route's, or the default.
    pub fn for_request(&self, method: &str, target: &str) -> &CompareRules {
        self.routes.iter().find(|r| r.pattern.matches(method, target)).map_or(&self.default, |r| &r.rules)
    }
}

/// What the reporter is handed.
#[derive(Debug)]
pub enum ReportItem {
    /// An exchange that was not replayed; `reason` is set when shadows are configured. `held`
    /// is its bytes' charge against the memory budget, given back once it is reported.
    Exchange { exchange: Exchange, reason: Option<&'static str>, held: Charge },
    /// Production and every shadow's result, with the shadows the results are indexed by (those
    /// configured when the request was replayed).
    Replayed(Complete, Arc<[ShadowInfo]>),
    /// New settings from a reload; items after it follow them.
    Reconfigure(Box<ReporterSettings>),
    /// Counters for the periodic summary.
    Summary(Box<Snapshot>),
    /// The last summary; the reporter flushes and answers.
    Final(Box<Snapshot>, oneshot::Sender<()>),
}

/// Counters owned by the capture side, sent to the reporter for the summary and the metrics.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every kernel counter (packets seen and copied too, not only losses).
    pub kernel: Counters,
    /// Every loss counter.
    pub losses: Losses,
    pub connections: usize,
    pub buffered_bytes: usize,
    /// Requests seen and not ended yet: partial messages, and comparisons awaiting shadows.
    pub requests_in_progress: u64,
    /// Connection buckets the kernel sheds now (`capture::shed`; 0: every connection captured).
    pub shed_level: u32,
    /// Per shadow: `(name, value)` replay counters.
    pub replay: Vec<(String, Vec<(&'static str, u64)>)>,
    /// Run time and runs of each kernel program since it was loaded (empty without
    /// `--kernel-stats`).
    pub programs: Vec<ProgramRuns>,
    /// What the dispatcher's parts of the memory budget hold.
    pub memory: Vec<MemoryUse>,
    /// Items waiting for the reporter.
    pub report_queue: usize,
}

impl Snapshot {
    /// The kernel's loss counters, with the ring reader's undecodable records.
    pub fn kernel_drops(kernel: &Counters, undecodable_records: u64) -> KernelDrops {
        let named = kernel.named();
        let get = |name: &str| named.get(name).copied().unwrap_or_default();
        KernelDrops {
            ringbuf_full: get("ringbuf_full"),
            truncated: get("truncated"),
            marker_lost: get("marker_lost"),
            unparsed: get("unparsed"),
            undecodable_records,
            shed_segments: get("shed_segments"),
            shed_bytes: get("shed_bytes"),
        }
    }

    /// `mirror_xdp=85 mirror_tc=240`: mean ns per run of each kernel program since start, for
    /// the summary; `None` without run-time statistics.
    pub fn ns_per_run(&self) -> Option<String> {
        (!self.programs.is_empty()).then(|| {
            let each: Vec<String> =
                self.programs.iter().map(|p| format!("{}={:.0}", p.program, p.ns_per_run())).collect();
            each.join(" ")
        })
    }

    /// `mirror_xdp=1234 mirror_tc=5678`: runs of each kernel program since start.
    pub fn program_runs(&self) -> Option<String> {
        (!self.programs.is_empty()).then(|| {
            let each: Vec<String> =
                self.programs.iter().map(|p| format!("{}={}", p.program, p.runs)).collect();
            each.join(" ")
        })
    }
}

/// The shadows of one configuration and the comparisons opened while it was current.
#[derive(Debug)]
struct Generation {
    /// `(client id, client)`; results are indexed by position in this list.
    clients: Vec<(usize, Arc<ShadowClient>)>,
    shadows: Arc<[ShadowInfo]>,
    join: JoinTable,
}

/// The shares of the memory budget the dispatcher and its clients hold bytes against.
#[derive(Clone, Debug)]
pub struct DispatchMemory {
    /// Replay requests queued and in flight, and shadow answers until they are compared.
    pub replay: Arc<Account>,
    /// Production exchanges waiting for their shadows' answers or for the reporter.
    pub queues: Arc<Account>,
}

impl Default for DispatchMemory {
    /// Unlimited: only the counts bound memory.
    fn default() -> Self {
        Self { replay: Account::unlimited(), queues: Account::unlimited() }
    }
}

/// Bytes of an exchange's bookkeeping, whatever its messages: what it holds is this plus
/// [`request_bytes`] and [`response_bytes`] (bodies and header fields).
const EXCHANGE_OVERHEAD: usize = 512;

fn field_bytes(headers: &[crate::exchange::Header]) -> usize {
    headers.iter().map(|h| h.name.len() + h.value.len() + 32).sum()
}

/// Bytes a request holds in its exchange.
fn request_bytes(request: &crate::exchange::Request) -> usize {
    request.target.len() + request.body.len() + field_bytes(&request.headers) + field_bytes(&request.trailers)
}

/// Bytes a response holds in its exchange.
fn response_bytes(response: &crate::exchange::Response) -> usize {
    response.body.len()
        + field_bytes(&response.headers)
        + field_bytes(&response.trailers)
        + response.arrivals.pieces().len() * 16
}

/// The bytes production's responses have been seen to hold, smoothed: what a replayed request's
/// exchange is expected to need when its response comes in.
#[derive(Clone, Copy, Debug)]
struct ResponseEstimate(usize);

impl ResponseEstimate {
    /// Before any response was seen.
    const INITIAL: usize = 2048;

    fn observe(&mut self, bytes: usize) {
        // A moving average over about 16 responses: it follows a change of workload within a
        // fraction of a second at any useful rate.
        self.0 = self.0 - self.0 / 16 + bytes / 16;
    }
}

impl Default for ResponseEstimate {
    fn default() -> Self {
        Self(Self::INITIAL)
    }
}

/// What [`Dispatcher::reconfigure`] takes.
#[derive(Debug)]
pub struct DispatchSettings {
    pub sampler: Sampler,
    pub replay: ReplayOptions,
    pub shadows: Vec<crate::replay::target::ShadowTarget>,
    pub limits: ClientLimits,
}

/// The non-blocking half, driven by the capture loop.
#[derive(Debug)]
pub struct Dispatcher {
    sampler: Sampler,
    replay: ReplayOptions,
    limits: ClientLimits,
    current: Generation,
    /// Earlier generations with comparisons still open.
    retired: Vec<Generation>,
    next_client: usize,
    done: mpsc::UnboundedSender<Done>,
    /// Where the clients register their connections, so that the capture skips them.
    own: Arc<OwnConnections>,
    memory: DispatchMemory,
    max_pending: usize,
    to_report: mpsc::Sender<ReportItem>,
    pub counters: DispatchDrops,
    expired: Vec<Expired>,
    response_estimate: ResponseEstimate,
}

/// How long a comparison waits: the replay's timeout plus the time production may take to finish.
fn join_wait(limits: &ClientLimits) -> u64 {
    (limits.timeout + Duration::from_secs(60)).as_nanos() as u64
}

/// The shadow as records name it: its model and its endpoints.
pub fn shadow_info(target: &crate::replay::target::ShadowTarget) -> ShadowInfo {
    ShadowInfo { model: target.model.clone(), endpoint: target.endpoints_text() }
}

impl Dispatcher {
    /// Starts a client per shadow; their results come back on `done` (pass them to
    /// [`Self::shadow_done`]), their connections are registered in `own`. At most `max_pending`
    /// comparisons wait at once, and the bytes held are charged to `memory`.
    pub fn new(
        settings: DispatchSettings,
        max_pending: usize,
        memory: DispatchMemory,
        own: Arc<OwnConnections>,
        done: mpsc::UnboundedSender<Done>,
        to_report: mpsc::Sender<ReportItem>,
    ) -> Self {
        let mut dispatcher = Self {
            sampler: settings.sampler,
            replay: settings.replay,
            limits: settings.limits.clone(),
            current: Generation {
                clients: Vec::new(),
                shadows: Arc::from([]),
                join: JoinTable::new(0, 0, 0),
            },
            retired: Vec::new(),
            next_client: 0,
            done,
            own,
            memory,
            max_pending,
            to_report,
            counters: DispatchDrops::default(),
            expired: Vec::new(),
            response_estimate: ResponseEstimate::default(),
        };
        dispatcher.current = dispatcher.generation(&settings.shadows, &settings.limits, &[]);
        dispatcher
    }

    /// A generation for `targets`, reusing the clients in `reuse` whose target and limits are
    /// unchanged.
    fn generation(
        &mut self,
        targets: &[crate::replay::target::ShadowTarget],
        limits: &ClientLimits,
        reuse: &[(usize, Arc<ShadowClient>)],
    ) -> Generation {
        let same_limits = limits_eq(limits, &self.limits);
        let clients: Vec<(usize, Arc<ShadowClient>)> = targets
            .iter()
            .map(|target| {
                if same_limits && let Some(kept) = reuse.iter().find(|(_, c)| &c.target == target) {
                    return kept.clone();
                }
                let id = self.next_client;
                self.next_client += 1;
                let client = ShadowClient::spawn(
                    id,
                    target.clone(),
                    limits.clone(),
                    self.own.clone(),
                    self.memory.replay.clone(),
                    self.done.clone(),
                );
                (id, Arc::new(client))
            })
            .collect();
        let shadows: Arc<[ShadowInfo]> = targets.iter().map(shadow_info).collect();
        Generation {
            join: JoinTable::new(clients.len(), self.max_pending, join_wait(limits)),
            clients,
            shadows,
        }
    }

    /// Applies new settings. Comparisons already open complete with the shadows they were
    /// replayed to; requests from now on follow the new settings.
    pub fn reconfigure(&mut self, settings: DispatchSettings) {
        self.sampler = settings.sampler;
        self.replay = settings.replay;
        let unchanged = limits_eq(&settings.limits, &self.limits)
            && settings.shadows.len() == self.current.clients.len()
            && settings.shadows.iter().zip(&self.current.clients).all(|(t, (_, c))| &c.target == t);
        if unchanged {
            return;
        }
        let reuse = self.current.clients.clone();
        let next = self.generation(&settings.shadows, &settings.limits, &reuse);
        self.limits = settings.limits;
        let old = std::mem::replace(&mut self.current, next);
        if !old.join.is_empty() {
            self.retired.push(old);
        }
    }

    /// Every live client once (current and retired generations).
    pub fn shadows(&self) -> Vec<&ShadowClient> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for generation in std::iter::once(&self.current).chain(&self.retired) {
            for (id, client) in &generation.clients {
                if !seen.contains(id) {
                    seen.push(*id);
                    out.push(client.as_ref());
                }
            }
        }
        out
    }

    /// The shadows requests are replayed to now.
    pub fn current_shadows(&self) -> Arc<[ShadowInfo]> {
        self.current.shadows.clone()
    }

    /// Takes what the assembler produced, in its order: requests are replayed, exchanges joined.
    pub fn assembled(&mut self, items: impl Iterator<Item = Assembled>, now_ns: u64) {
        for item in items {
            match item {
                Assembled::Request(ready) => self.request(ready, now_ns),
                Assembled::Exchange(exchange) => self.exchange(exchange),
            }
        }
    }

    /// Starts the replays of a request that just completed.
    pub fn request(&mut self, ready: ReadyRequest, now_ns: u64) {
        if self.current.clients.is_empty() || self.sampler.decide(&ready.request) != Decision::Replay {
            return;
        }
        if self.replay.is_own_replay(&ready.request) {
            // One of this daemon's replays, captured again (possible only through another path
            // than its own connections, e.g. a proxy in front of the shadow): never replayed,
            // and counted once its exchange is in (as every request is counted once it ends).
            return;
        }
        let generation = &mut self.current;
        if !generation.join.open(ready.id, now_ns) {
            self.counters.join_full += 1;
            return;
        }
        // Room for production's exchange is kept from now until the answers are in: a replay
        // whose exchange could not be kept would be shadow work thrown away. Without room the
        // request is not replayed (recorded `not_compared`, reason `memory_budget`).
        let expected = EXCHANGE_OVERHEAD + request_bytes(&ready.request) + self.response_estimate.0;
        let Some(reservation) = self.memory.queues.charge(expected) else {
            for (index, (_, client)) in generation.clients.iter().enumerate() {
                over_budget(&mut generation.join, ready.id, index, client);
            }
            return;
        };
        let _ = generation.join.reserve(ready.id, reservation);
        for (index, (_, client)) in generation.clients.iter().enumerate() {
            let Some(endpoint) = client.target.endpoint_for(ready.request.version, ready.server.port())
            else {
                not_sent(&mut generation.join, ready.id, index, NOT_SENT_NO_ENDPOINT);
                continue;
            };
            let outgoing = request::build(&ready.request, &endpoint, &self.replay);
            let Some(charge) = self.memory.replay.charge(outgoing_bytes(&outgoing)) else {
                // No room for the request's bytes: shed rather than grow.
                over_budget(&mut generation.join, ready.id, index, client);
                continue;
            };
            if !client.submit(Job { id: ready.id, outgoing, charge }) {
                not_sent(&mut generation.join, ready.id, index, NOT_SENT_QUEUE_FULL);
            }
        }
    }

    /// A production exchange was rebuilt. Its bytes are charged to the queues' share until it is
    /// reported (in place of what its replay reserved); without room it is shed and counted
    /// (`memory_budget`).
    pub fn exchange(&mut self, mut exchange: Exchange) {
        if !self.current.clients.is_empty() && self.replay.is_own_replay(&exchange.request) {
            // A replay of this daemon's, captured again: not production's traffic.
            self.counters.own_replays_ignored += 1;
            return;
        }
        let response = response_bytes(&exchange.response);
        self.response_estimate.observe(response);
        let held = EXCHANGE_OVERHEAD + request_bytes(&exchange.request) + response;
        let reserved = std::iter::once(&mut self.current)
            .chain(self.retired.iter_mut())
            .find_map(|generation| generation.join.take_reserved(exchange.id));
        let charge = match reserved {
            Some(mut charge) => charge.resize(held).then_some(charge),
            None => self.memory.queues.charge(held),
        };
        for generation in self.retired.iter_mut().chain(std::iter::once(&mut self.current)) {
            let id = exchange.id;
            match generation.join.production(exchange) {
                Joined::Complete(mut complete) => {
                    let Some(charge) = charge else {
                        self.counters.memory_budget += 1;
                        return;
                    };
                    complete.held.push(charge);
                    let item = ReportItem::Replayed(complete, generation.shadows.clone());
                    return self.send(item);
                }
                Joined::Waiting => {
                    match charge {
                        Some(charge) => {
                            // The entry waits, so it takes the charge.
                            let _ = generation.join.hold(id, charge);
                        }
                        None => {
                            generation.join.abandon(id);
                            self.counters.memory_budget += 1;
                        }
                    }
                    return;
                }
                Joined::NotWaiting(back) => exchange = back,
            }
        }
        let Some(held) = charge else {
            self.counters.memory_budget += 1;
            return;
        };
        let reason = if self.current.clients.is_empty() {
            None
        } else {
            // The decision is a function of the request: the same one as at replay time.
            Some(match self.sampler.decide(&exchange.request) {
                Decision::Replay => "not_replayed",
                other => other.reason(),
            })
        };
        self.send(ReportItem::Exchange { exchange, reason, held });
    }

    /// A shadow answered (or failed, or timed out).
    pub fn shadow_done(&mut self, done: Done) {
        let mut completed = Vec::new();
        let mut charge = Some(done.charge);
        for generation in std::iter::once(&mut self.current).chain(self.retired.iter_mut()) {
            let Some(index) = generation.clients.iter().position(|(id, _)| *id == done.shadow) else {
                continue;
            };
            // Only the generation that opened this exchange has an entry for it; the others ignore it.
            match generation.join.shadow(done.id, index, done.result.clone()) {
                Some(mut complete) => {
                    complete.held.extend(charge.take());
                    completed.push(ReportItem::Replayed(complete, generation.shadows.clone()));
                }
                None => {
                    if let Some(held) = charge.take() {
                        // Not this generation's entry: kept for the next one.
                        charge = generation.join.hold(done.id, held).err();
                    }
                }
            }
        }
        for item in completed {
            self.send(item);
        }
    }

    /// Forgets what waited too long, and old generations nothing waits on any more.
    pub fn expire(&mut self, now_ns: u64) {
        for generation in std::iter::once(&mut self.current).chain(self.retired.iter_mut()) {
            generation.join.expire(now_ns, &mut self.expired);
        }
        // Dropping a generation drops its removed clients: their tasks end once their queue is empty.
        self.retired.retain(|g| !g.join.is_empty());
        for expired in self.expired.drain(..) {
            match expired {
                Expired::ProductionMissing => self.counters.production_missing += 1,
                Expired::ShadowMissing => self.counters.shadow_missing += 1,
            }
        }
    }

    /// Sends without waiting; a full queue is a counted drop.
    pub fn send(&mut self, item: ReportItem) {
        if self.to_report.try_send(item).is_err() {
            self.counters.report_queue_full += 1;
        }
    }

    /// Sends a periodic summary without waiting: when the reporter is that far behind, this one
    /// is skipped (the next one has the counts), and it is no request lost.
    pub fn send_summary(&self, snapshot: Snapshot) {
        let _ = self.to_report.try_send(ReportItem::Summary(Box::new(snapshot)));
    }

    /// What the replay and queues shares hold now.
    pub fn memory_use(&self) -> Vec<MemoryUse> {
        vec![MemoryUse::of("replay", &self.memory.replay), MemoryUse::of("queues", &self.memory.queues)]
    }

    /// Items handed to the reporter and not taken yet.
    pub fn report_queue(&self) -> usize {
        self.to_report.max_capacity() - self.to_report.capacity()
    }

    /// Comparisons whose production exchange is in and whose shadow answers are awaited.
    pub fn requests_in_progress(&self) -> u64 {
        std::iter::once(&self.current).chain(&self.retired).map(|g| g.join.awaiting_shadows()).sum()
    }

    /// At shutdown, after the replays' grace period: every comparison still waiting for a
    /// shadow is reported, the missing answers as `in_flight_at_exit`, so that each request has
    /// its record. Waits for room in the reporter's queue: these must not be lost.
    pub async fn finish(&mut self) {
        let mut items = Vec::new();
        for generation in std::iter::once(&mut self.current).chain(self.retired.iter_mut()) {
            for complete in generation.join.drain_at_exit() {
                items.push(ReportItem::Replayed(complete, generation.shadows.clone()));
            }
        }
        for item in items {
            self.send_control(item).await;
        }
    }

    /// Sends a summary, final or reconfiguration item, waiting for room: these must not be lost.
    pub async fn send_control(&self, item: ReportItem) {
        let _ = self.to_report.send(item).await;
    }

    /// Per shadow: replays dropped because its queue was full.
    pub fn replay_losses(&self) -> Vec<(String, u64)> {
        self.shadows()
            .iter()
            .map(|c| {
                (
                    c.target.model.model_id.clone(),
                    c.counters.queue_full.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Per-shadow replay counters for the summary.
    pub fn replay_counters(&self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        self.shadows().iter().map(|c| (c.target.model.model_id.clone(), c.counters.list().to_vec())).collect()
    }
}

/// Shadow `index` will not answer `id`, for `reason`. Production has not answered yet either, so
/// this never completes the entry.
fn not_sent(join: &mut JoinTable, id: ExchangeId, index: usize, reason: &'static str) {
    let _ = join.shadow(id, index, ShadowResult::NotSent { reason });
}

/// Not sent for want of memory: recorded `not_compared` with reason `memory_budget`, and counted
/// per shadow.
fn over_budget(join: &mut JoinTable, id: ExchangeId, index: usize, client: &ShadowClient) {
    client.counters.not_sent_memory_budget.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    not_sent(join, id, index, NOT_SENT_MEMORY_BUDGET);
}

/// Bytes a replay request holds until it is sent.
fn outgoing_bytes(outgoing: &request::Outgoing) -> usize {
    256 + outgoing.uri.len()
        + outgoing.body.len()
        + outgoing.headers.iter().map(|(name, value)| name.len() + value.len() + 32).sum::<usize>()
}

fn limits_eq(a: &ClientLimits, b: &ClientLimits) -> bool {
    (a.timeout, a.max_in_flight, a.queue, a.max_response_bytes)
        == (b.timeout, b.max_in_flight, b.queue, b.max_response_bytes)
}

/// What a reload can change in the reporter.
#[derive(Debug)]
pub struct ReporterSettings {
    pub shadows: Arc<[ShadowInfo]>,
    pub production_model: Option<ModelInfo>,
    pub rules: RuleSet,
    pub criteria: Criteria,
}

/// One shadow as the reporter knows it.
#[derive(Clone, Debug)]
pub struct ShadowInfo {
    pub model: ModelInfo,
    pub endpoint: String,
}

/// The reporting half.
pub struct Reporter {
    /// The shadows configured now: those not-compared records are written for.
    pub shadows: Arc<[ShadowInfo]>,
    pub production_model: Option<ModelInfo>,
    pub rules: RuleSet,
    pub criteria: Criteria,
    pub record: RecordOptions,
    /// Where records go (`--record`); pushing never blocks, failures are counted there.
    pub records: Option<RecordSink>,
    /// The record writer's drop counts as last read (kept once the writer is closed).
    pub record_drops: RecordDrops,
    pub metrics: Arc<Metrics>,
    pub stats: ExchangeStats,
    pub aggregator: Aggregator,
    /// Records that could not be turned into observations (a bug if ever non-zero).
    pub unaggregated: u64,
    /// What became of each request handed over (compared, recorded, not compared): the books'
    /// outcomes, balanced against the capture side's counts at each summary.
    pub outcomes: Outcomes,
    /// Where the verdict document is published for `GET /verdict`.
    pub verdict: VerdictPublisher,
    /// Threads that may prepare a backlog of comparisons at once (1: the reporter's alone).
    pub threads: usize,
}

/// Most items the reporter takes from its queue at once.
const REPORT_BATCH: usize = 512;
/// Fewest comparisons worth another thread: below it, starting the thread costs more than it saves.
const PER_THREAD_MIN: usize = 16;

/// What a reporter's settings give the preparing of comparisons: shared by the threads that
/// prepare a batch.
#[derive(Debug)]
pub struct PrepareContext<'a> {
    pub rules: &'a RuleSet,
    pub record: &'a RecordOptions,
    pub production_model: Option<&'a ModelInfo>,
    /// Whether record lines are written (`--record`).
    pub lines: bool,
}

/// A replayed exchange's record and comparisons, made before anything is counted: this is most
/// of a comparison's cost and depends on nothing but the exchange and the settings, so a backlog
/// is prepared on several threads, and then counted, aggregated and written in order.
#[derive(Debug)]
pub struct Prepared {
    pub route: String,
    pub record: ExchangeRecord,
    /// Indexed like the shadows; `None` where there is nothing to compare.
    pub shadows: Vec<Option<PreparedComparison>>,
}

/// One shadow's comparison, prepared.
#[derive(Debug)]
pub struct PreparedComparison {
    pub comparison: compare::Comparison,
    /// The record line (with `--record`).
    pub line: Option<Vec<u8>>,
    pub observation: Result<Observation, RecordError>,
    pub shadow_ttft_ms: Option<f64>,
    pub shadow_tpot_ms: Option<f64>,
}

/// One record line, as written.
fn record_line(record: &impl serde::Serialize) -> Result<Vec<u8>> {
    let mut line = Vec::with_capacity(1024);
    serde_json::to_writer(&mut line, record).context("serialize a record")?;
    line.push(b'\n');
    Ok(line)
}

impl PrepareContext<'_> {
    /// The records and comparisons of one replayed exchange, before anything is counted.
    pub fn prepare(&self, complete: &Complete, shadows: &[ShadowInfo]) -> Result<Prepared> {
        let exchange = &complete.exchange;
        let route = route(&exchange.request.method, &exchange.request.target);
        // Production's event stream is read once, for the record and every comparison.
        let (record, production_read) = ExchangeRecord::new_reading(exchange, self.record);
        let request = RequestView::of(&exchange.request);
        let production = Message::of(&exchange.response);
        let rules = self.rules.for_request(&exchange.request.method, &exchange.request.target);
        let mut prepared = Vec::with_capacity(complete.results.len());
        for (index, result) in complete.results.iter().enumerate() {
            let (Some(shadow), Some(outcome)) = (shadows.get(index), ShadowOutcome::of(result)) else {
                prepared.push(None);
                continue;
            };
            let (shadow_record, shadow_read) =
                ShadowRecord::from_result_reading(&shadow.model, &shadow.endpoint, result, self.record);
            let read = [production_read.as_ref(), shadow_read.as_ref()];
            let comparison =
                compare::compare_read(&request, &production, &outcome, rules, &self.rules.schemas, read);
            let compared = ComparisonRecord::compared(
                &record,
                &route,
                self.production_model,
                shadow_record,
                &comparison,
            );
            // Written from the record itself: a `serde_json::Value` would round numbers in diffs.
            let line = if self.lines { Some(record_line(&compared)?) } else { None };
            let observation = Observation::from_comparison(&compared);
            let shadow_ttft_ms = compared.shadow.stream.as_ref().and_then(|s| s.ttft_ms);
            let shadow_tpot_ms = compared.shadow.stream.as_ref().and_then(|s| s.tpot_ms);
            drop(compared);
            prepared.push(Some(PreparedComparison {
                comparison,
                line,
                observation,
                shadow_ttft_ms,
                shadow_tpot_ms,
            }));
        }
        Ok(Prepared { route, record, shadows: prepared })
    }

    /// Prepares `run` in order, on up to `threads` threads.
    fn prepare_all(&self, run: &[(Complete, Arc<[ShadowInfo]>)], threads: usize) -> Result<Vec<Prepared>> {
        let threads = threads.min(run.len() / PER_THREAD_MIN).max(1);
        let prepare_part = |part: &[(Complete, Arc<[ShadowInfo]>)]| -> Result<Vec<Prepared>> {
            part.iter().map(|(complete, shadows)| self.prepare(complete, shadows)).collect()
        };
        if threads == 1 {
            return prepare_part(run);
        }
        let size = run.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let mut parts = run.chunks(size);
            let own = parts.next().unwrap_or_default();
            let helpers = parts
                .map(|part| {
                    std::thread::Builder::new()
                        .name("compare".into())
                        .spawn_scoped(scope, move || prepare_part(part))
                        .context("start a comparison thread")
                })
                .collect::<Result<Vec<_>>>()?;
            let mut prepared = prepare_part(own)?;
            for helper in helpers {
                let part = helper.join().map_err(|_| anyhow::anyhow!("a comparison thread panicked"))?;
                prepared.extend(part?);
            }
            Ok(prepared)
        })
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("shadows", &self.shadows).finish_non_exhaustive()
    }
}

impl Reporter {
    /// Handles items until the channel closes or a final item has been answered.
    pub async fn run(mut self, mut items: mpsc::Receiver<ReportItem>) -> Result<()> {
        self.publish_verdict(&self.aggregator.summary());
        let mut batch = Vec::with_capacity(REPORT_BATCH);
        // Comparisons next to each other in the queue are prepared together.
        let mut run = Vec::new();
        while items.recv_many(&mut batch, REPORT_BATCH).await > 0 {
            for item in batch.drain(..) {
                if self.item(item, &mut run).await? {
                    return Ok(());
                }
            }
            self.report_run(&mut run)?;
        }
        Ok(())
    }

    /// Prepares the comparisons of `run` (on several threads when there are enough), then
    /// counts, aggregates and writes them in order.
    fn report_run(&mut self, run: &mut Vec<(Complete, Arc<[ShadowInfo]>)>) -> Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let context = PrepareContext {
            rules: &self.rules,
            record: &self.record,
            production_model: self.production_model.as_ref(),
            lines: self.records.is_some(),
        };
        let prepared = context.prepare_all(run, self.threads)?;
        for ((complete, shadows), prepared) in run.drain(..).zip(prepared) {
            self.replayed(&complete, &shadows, prepared)?;
        }
        if self.verdict.due(std::time::Instant::now()) {
            self.publish_verdict(&self.aggregator.summary());
        }
        Ok(())
    }

    /// Handles one item, a comparison by adding it to `run` (reported with its neighbours by
    /// [`Self::report_run`]); true once the final item has been answered.
    async fn item(&mut self, item: ReportItem, run: &mut Vec<(Complete, Arc<[ShadowInfo]>)>) -> Result<bool> {
        if !matches!(item, ReportItem::Replayed(..)) {
            // The comparisons before this item go first, with the settings they came under.
            self.report_run(run)?;
        }
        match item {
            ReportItem::Replayed(complete, shadows) => {
                run.push((complete, shadows));
                return Ok(false);
            }
            ReportItem::Exchange { exchange, reason, .. } => self.exchange(&exchange, reason)?,
            ReportItem::Reconfigure(settings) => {
                let ReporterSettings { shadows, production_model, rules, criteria } = *settings;
                self.shadows = shadows;
                self.production_model = production_model;
                self.rules = rules;
                self.criteria = criteria;
                // New shadows or criteria: the verdict changes with them.
                self.verdict.changed();
            }
            ReportItem::Summary(snapshot) => self.summary(&snapshot, false),
            ReportItem::Final(snapshot, done) => {
                // Written (or counted) first, so that the final summary has the last counts.
                if let Some(sink) = self.records.take() {
                    let closed = tokio::task::spawn_blocking(move || sink.close(CLOSE_GRACE));
                    self.record_drops = closed.await.context("close the record file")?;
                }
                self.summary(&snapshot, true);
                let _ = done.send(());
                return Ok(true);
            }
        }
        if self.verdict.due(std::time::Instant::now()) {
            self.publish_verdict(&self.aggregator.summary());
        }
        Ok(false)
    }

    /// Production's side of every exchange: statistics, metrics and one `exchange` event — at
    /// INFO when it is the whole story (no shadows), at DEBUG when comparisons follow.
    fn production(&mut self, exchange: &Exchange, route: &str, monitoring: bool) {
        let latency_ns = exchange.production_latency_ns();
        let grpc_status = GrpcStatus::of(&exchange.response.headers, &exchange.response.trailers);
        self.stats.record(latency_ns);
        let label = RouteLabels { route: self.metrics.route_label(route) };
        self.metrics.exchanges.get_or_create(&label).inc();
        self.metrics.production_latency.get_or_create(&label).observe(latency_ns as f64 / 1e9);
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(
                    target: "exchange",
                    $level,
                    client = %exchange.client,
                    server = %exchange.server,
                    route,
                    http_version = exchange.request.version.as_str(),
                    prod_status = exchange.response.status,
                    prod_grpc_status = grpc_status.as_ref().map(|g| g.grpc_status),
                    request_bytes = exchange.request.body.len(),
                    response_bytes = exchange.response.body.len(),
                    prod_latency_ms = latency_ns as f64 / 1e6,
                    "exchange"
                )
            };
        }
        if monitoring {
            event!(tracing::Level::INFO);
        } else {
            event!(tracing::Level::DEBUG);
        }
    }

    /// Hands one record line to the writer (never waits; a record not written is counted there).
    fn write(&self, record: &impl serde::Serialize) -> Result<()> {
        if let Some(sink) = &self.records {
            sink.push(record_line(record)?);
        }
        Ok(())
    }

    /// Adds a comparison record's observation to the aggregates: read straight from the typed
    /// record ([`Observation::from_comparison`], the same one `report` reads from its line).
    fn observe(&mut self, observation: Result<Observation, RecordError>) {
        match observation {
            Ok(observation) => {
                self.aggregator.add(&observation);
                self.verdict.changed();
            }
            Err(err) => {
                self.unaggregated += 1;
                if self.unaggregated == 1 {
                    tracing::warn!(%err, "a comparison record could not be aggregated");
                }
            }
        }
    }

    fn exchange(&mut self, exchange: &Exchange, reason: Option<&'static str>) -> Result<()> {
        let route = route(&exchange.request.method, &exchange.request.target);
        self.production(exchange, &route, reason.is_none());
        let record = ExchangeRecord::new(exchange, &self.record);
        let Some(reason) = reason else {
            // Monitor mode: the exchange is the whole story.
            self.outcomes.recorded += 1;
            return self.write(&record);
        };
        *self.outcomes.not_compared.entry(reason).or_default() += 1;
        for shadow in self.shadows.clone().iter() {
            self.not_compared(&record, &route, shadow, reason)?;
        }
        Ok(())
    }

    /// Records, counts and aggregates an exchange that `shadow` did not answer.
    fn not_compared(
        &mut self,
        record: &ExchangeRecord,
        route: &str,
        shadow: &ShadowInfo,
        reason: &'static str,
    ) -> Result<()> {
        let labels =
            ShadowReasonLabels { model_id: shadow.model.model_id.clone(), reason: reason.to_string() };
        self.metrics.not_compared.get_or_create(&labels).inc();
        let record = ComparisonRecord::not_compared(
            record,
            route,
            self.production_model.as_ref(),
            ShadowRecord::absent(&shadow.model, &shadow.endpoint),
            reason,
        );
        self.write(&record)?;
        let observation = Observation::from_comparison(&record);
        self.observe(observation);
        Ok(())
    }

    /// Counts, aggregates and writes a replayed exchange's comparisons, prepared by
    /// [`PrepareContext::prepare`].
    fn replayed(&mut self, complete: &Complete, shadows: &[ShadowInfo], prepared: Prepared) -> Result<()> {
        let exchange = &complete.exchange;
        let not_sent = |r: &ShadowResult| match r {
            ShadowResult::NotSent { reason } => Some(*reason),
            _ => None,
        };
        match complete.results.iter().map(not_sent).collect::<Option<Vec<_>>>() {
            // Every shadow's answer is missing: not compared, for the first shadow's reason.
            Some(reasons) => {
                let reason = reasons.first().copied().unwrap_or("not_replayed");
                *self.outcomes.not_compared.entry(reason).or_default() += 1;
            }
            None => self.outcomes.compared += 1,
        }
        let Prepared { route, record, shadows: prepared } = prepared;
        self.production(exchange, &route, false);
        let route_label = self.metrics.route_label(&route);
        if let Some(stream) = &record.production.stream {
            let labels = RouteLabels { route: route_label.clone() };
            if let Some(ttft) = stream.ttft_ms {
                self.metrics.production_ttft.get_or_create(&labels).observe(ttft / 1e3);
            }
            if let Some(tpot) = stream.tpot_ms {
                self.metrics.production_tpot.get_or_create(&labels).observe(tpot / 1e3);
            }
        }
        for (index, (result, prepared)) in complete.results.iter().zip(prepared).enumerate() {
            let Some(shadow) = shadows.get(index) else { continue };
            let model_id = shadow.model.model_id.clone();
            if let ShadowResult::NotSent { reason } = result {
                self.not_compared(&record, &route, shadow, reason)?;
                continue;
            }
            let Some(PreparedComparison { comparison, line, observation, shadow_ttft_ms, shadow_tpot_ms }) =
                prepared
            else {
                continue;
            };
            if let (Some(sink), Some(line)) = (&self.records, line) {
                sink.push(line);
            }
            self.observe(observation);

            let labels = ShadowRouteLabels { model_id: model_id.clone(), route: route_label.clone() };
            let verdict = comparison.verdict.as_str();
            self.metrics
                .comparisons
                .get_or_create(&ComparisonLabels {
                    model_id: model_id.clone(),
                    route: route_label.clone(),
                    verdict: verdict.to_string(),
                })
                .inc();
            if let Some(latency_ns) = result.latency_ns() {
                self.metrics.shadow_latency.get_or_create(&labels).observe(latency_ns as f64 / 1e9);
            }
            if let Some(ttft) = shadow_ttft_ms {
                self.metrics.shadow_ttft.get_or_create(&labels).observe(ttft / 1e3);
            }
            if let Some(tpot) = shadow_tpot_ms {
                self.metrics.shadow_tpot.get_or_create(&labels).observe(tpot / 1e3);
            }
            if let Some(equal) = comparison.metrics.text_equal {
                let labels = TextLabels {
                    model_id: model_id.clone(),
                    route: route_label.clone(),
                    exact: equal.to_string(),
                };
                self.metrics.text_comparisons.get_or_create(&labels).inc();
            }
            self.metrics.prediction_rows.get_or_create(&labels).inc_by(comparison.metrics.rows);
            self.metrics.label_flips.get_or_create(&labels).inc_by(comparison.metrics.label_flips);

            let (shadow_status, shadow_grpc) = match result {
                ShadowResult::Answered { answer, .. } => {
                    (Some(answer.status), GrpcStatus::of(&answer.headers, &answer.trailers))
                }
                _ => (None, None),
            };
            let first_diff = comparison.diffs.first().map(|d| d.pointer.as_str()).unwrap_or_default();
            let shadow_latency_ms = result.latency_ns().map(|ns| ns as f64 / 1e6);
            macro_rules! event {
                ($level:expr) => {
                    tracing::event!(
                        target: "comparison",
                        $level,
                        model_id = %model_id,
                        route = %route,
                        verdict,
                        protocol = comparison.protocol.as_str(),
                        prod_status = exchange.response.status,
                        shadow_status,
                        prod_grpc_status = record.production.grpc.as_ref().map(|g| g.grpc_status),
                        shadow_grpc_status = shadow_grpc.as_ref().map(|g| g.grpc_status),
                        prod_latency_ms = exchange.production_latency_ns() as f64 / 1e6,
                        shadow_latency_ms,
                        diff_count = comparison.diff_count,
                        first_diff,
                        label_flips = comparison.metrics.label_flips,
                        text_equal = comparison.metrics.text_equal,
                        similarity = comparison.metrics.similarity,
                        prod_ttft_ms = record.production.stream.as_ref().and_then(|s| s.ttft_ms),
                        shadow_ttft_ms,
                        note = comparison.note.as_deref().unwrap_or_default(),
                        "comparison"
                    )
                };
            }
            if comparison.verdict.agrees() {
                event!(tracing::Level::DEBUG);
            } else {
                event!(tracing::Level::INFO);
            }
        }
        Ok(())
    }

    fn summary(&mut self, s: &Snapshot, last: bool) {
        if let Some(sink) = &self.records {
            self.record_drops = sink.drops();
        }
        let losses = Losses { records: self.record_drops.clone(), ..s.losses.clone() };
        for loss in losses.list() {
            if let Some(reason) = RecordDrops::reason(loss.reason) {
                let labels = ReasonLabels { reason: reason.to_string() };
                Metrics::advance(&self.metrics.records_dropped.get_or_create(&labels), loss.value);
                continue;
            }
            let reason = match loss.stage {
                Stage::Kernel => format!("kernel_{}", loss.reason),
                // Counted per shadow as `not_compared{reason="queue_full"}`.
                Stage::Replay => continue,
                _ => loss.reason.to_string(),
            };
            Metrics::advance(&self.metrics.drops.get_or_create(&ReasonLabels { reason }), loss.value);
        }
        let books = Books::new(&losses, &self.outcomes, s.requests_in_progress);
        self.count_requests(&books);
        if last && books.difference() != 0 {
            tracing::warn!(%books, "the books do not balance: some requests were not counted exactly once");
        }
        self.metrics.mirrored_share.set(mirrored_share(s.shed_level));
        self.metrics.kernel_programs(&s.programs);
        self.metrics.memory(&s.memory);
        self.metrics.report_queue.set(s.report_queue as i64);
        for (model_id, counters) in &s.replay {
            let labels = ShadowRouteLabels { model_id: model_id.clone(), route: "all".into() };
            for (name, value) in counters {
                match *name {
                    "in_flight" => self.metrics.replays_in_flight.get_or_create(&labels).set(*value as i64),
                    "max_in_flight" => {
                        self.metrics.replay_max_in_flight.get_or_create(&labels).set(*value as i64)
                    }
                    _ => continue,
                };
            }
        }
        let replay: BTreeMap<&str, String> = s
            .replay
            .iter()
            .map(|(model, counters)| (model.as_str(), nonzero(counters.iter().copied())))
            .collect();
        tracing::info!(
            exchanges = self.stats.exchanges,
            prod_latency_p50_ms = self.stats.latency_ms(0.5),
            prod_latency_p99_ms = self.stats.latency_ms(0.99),
            connections = s.connections,
            buffered_bytes = s.buffered_bytes,
            mirrored_share = mirrored_share(s.shed_level),
            undecodable_records = s.losses.kernel.undecodable_records,
            kernel = %s.kernel,
            drops = %nonzero(losses.pipeline()),
            requests = %books,
            requests_seen = books.seen,
            requests_compared = books.compared,
            requests_recorded = books.recorded,
            requests_not_compared = books.not_compared_total(),
            requests_lost = books.lost_total(),
            requests_in_progress = books.in_progress,
            requests_difference = books.difference(),
            replay = ?replay,
            kernel_ns_per_run = s.ns_per_run(),
            kernel_runs = s.program_runs(),
            memory = %s.memory.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            report_queue = s.report_queue,
            "{}",
            if last { "final summary" } else { "summary" }
        );
        let summary = self.aggregator.summary();
        self.verdict.set_health(Health::new(&s.kernel.named(), &s.losses, std::time::SystemTime::now()));
        self.publish_verdict(&summary);
        if self.shadows.is_empty() && summary.shadows.is_empty() {
            return;
        }
        for shadow in &summary.shadows {
            let totals = std::iter::once(("all", &shadow.stats));
            for (route, stats) in totals.chain(shadow.routes.iter().map(|r| (r.route.as_str(), &r.stats))) {
                log_stats(&shadow.model_id, route, stats);
            }
            let decision = evaluate(shadow, &self.criteria);
            tracing::info!(
                target: "verdict",
                model_id = %shadow.model_id,
                decision = %decision.verdict,
                reasons = %decision.reasons.join("; "),
                "{}",
                if last { "final promotion verdict" } else { "promotion verdict" }
            );
        }
        if last {
            eprintln!("\nrequests: {books}");
            eprintln!("\n{summary}");
            for shadow in &summary.shadows {
                let decision = evaluate(shadow, &self.criteria);
                eprintln!("{}: {} — {}", shadow.model_id, decision.verdict, decision.reasons.join("; "));
            }
        }
    }
}

impl Reporter {
    /// `mirror_requests_total{outcome,reason}` and `mirror_requests_in_progress` from the books.
    fn count_requests(&self, books: &Books) {
        let terms =
            [("seen", "", books.seen), ("compared", "", books.compared), ("recorded", "", books.recorded)];
        let not_compared = books.not_compared.iter().map(|(r, v)| ("not_compared", *r, *v));
        let lost = books.lost.iter().map(|(r, v)| ("lost", *r, *v));
        for (outcome, reason, value) in terms.into_iter().chain(not_compared).chain(lost) {
            if value == 0 && outcome != "seen" {
                continue;
            }
            let labels = OutcomeLabels { outcome: outcome.to_string(), reason: reason.to_string() };
            Metrics::advance(&self.metrics.requests.get_or_create(&labels), value);
        }
        self.metrics.requests_in_progress.set(books.in_progress as i64);
    }

    /// Publishes the verdict document for `summary` (the configured shadows included).
    fn publish_verdict(&mut self, summary: &crate::report::aggregate::Summary) {
        let configured: Vec<&str> = self.shadows.iter().map(|s| s.model.model_id.as_str()).collect();
        self.verdict.publish(summary, &configured, &self.criteria);
    }
}

/// One structured event per shadow and route (`route="all"` for the shadow's totals), so that
/// journald and log pipelines can query the aggregates field by field.
fn log_stats(model_id: &str, route: &str, s: &crate::report::aggregate::Stats) {
    let q = |q: &Option<crate::report::aggregate::Quantiles>| q.as_ref().map(|q| (q.p50, q.p95, q.p99));
    let (prod_p50, prod_p95, prod_p99) = q(&s.production_latency_ms).unwrap_or_default();
    let (shadow_p50, shadow_p95, shadow_p99) = q(&s.shadow_latency_ms).unwrap_or_default();
    let (diff_p50, diff_p95, diff_p99) = q(&s.latency_difference_ms).unwrap_or_default();
    tracing::info!(
        target: "summary",
        model_id,
        route,
        comparisons = s.comparisons,
        matches = s.verdicts.matched,
        within_tolerance = s.verdicts.within_tolerance,
        mismatches = s.verdicts.mismatch,
        shadow_errors = s.verdicts.shadow_error,
        shadow_timeouts = s.verdicts.shadow_timeout,
        not_compared = s.not_compared,
        agreement = s.agreement.as_ref().map(|a| a.rate),
        agreement_ci_low = s.agreement.as_ref().map(|a| a.low),
        agreement_ci_high = s.agreement.as_ref().map(|a| a.high),
        label_flip_rate = s.label_flip_rate,
        max_abs_error = s.max_abs_error,
        mean_abs_error = s.mean_abs_error,
        prod_latency_p50_ms = prod_p50,
        prod_latency_p95_ms = prod_p95,
        prod_latency_p99_ms = prod_p99,
        shadow_latency_p50_ms = shadow_p50,
        shadow_latency_p95_ms = shadow_p95,
        shadow_latency_p99_ms = shadow_p99,
        latency_difference_p50_ms = diff_p50,
        latency_difference_p95_ms = diff_p95,
        latency_difference_p99_ms = diff_p99,
        shadow_error_rate = s.shadow_error_rate,
        shadow_timeout_rate = s.shadow_timeout_rate,
        error_rate_increase = s.error_rate_increase,
        "shadow summary"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_route_picks_the_rules() {
        let rules = |abs_tolerance| CompareRules { abs_tolerance, ..CompareRules::default() };
        let set = RuleSet {
            default: rules(0.0),
            routes: vec![
                RouteRules {
                    pattern: RoutePattern::parse("POST /v2/models/*/infer").unwrap(),
                    rules: rules(1.0),
                },
                RouteRules { pattern: RoutePattern::parse("/v2/**").unwrap(), rules: rules(2.0) },
            ],
            schemas: compare::Schemas::default(),
        };
        assert_eq!(set.for_request("POST", "/v2/models/m/infer?x=1").abs_tolerance, 1.0);
        assert_eq!(set.for_request("GET", "/v2/models/m/infer").abs_tolerance, 2.0, "method differs");
        assert_eq!(set.for_request("POST", "/v1/predict").abs_tolerance, 0.0, "default");
    }

    /// A shadow that answers every request with `{}` after `delay`; returns its address.
    async fn slow_shadow(delay: Duration) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        tokio::time::sleep(delay).await;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                        if conn.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn exchange(seq: u64) -> Exchange {
        use crate::exchange::{Request, Response, Timing};
        let request = Request {
            method: "POST".into(),
            target: "/infer".into(),
            version: Default::default(),
            headers: vec![],
            body: bytes::Bytes::from(format!("{{\"x\":{seq}}}")),
            trailers: vec![],
        };
        let response = Response {
            status: 200,
            reason: "OK".into(),
            version: Default::default(),
            headers: vec![],
            body: bytes::Bytes::from_static(b"{}"),
            arrivals: Default::default(),
            trailers: vec![],
        };
        Exchange {
            id: ExchangeId { connection: 1, seq },
            stream_id: None,
            client: "10.0.0.1:1".parse().unwrap(),
            server: "10.0.0.2:2".parse().unwrap(),
            request,
            response,
            timing: Timing::default(),
        }
    }

    fn ready(exchange: &Exchange) -> ReadyRequest {
        ReadyRequest {
            id: exchange.id,
            client: exchange.client,
            server: exchange.server,
            request: exchange.request.clone(),
            first_ns: 0,
            last_ns: 0,
        }
    }

    fn settings(shadows: &[(&str, std::net::SocketAddr)]) -> DispatchSettings {
        DispatchSettings {
            sampler: Sampler::new(100.0, vec![]),
            replay: ReplayOptions::default(),
            shadows: shadows
                .iter()
                .map(|(name, addr)| {
                    crate::replay::target::ShadowTarget::parse(&format!("{name}=http://{addr}")).unwrap()
                })
                .collect(),
            limits: ClientLimits { timeout: Duration::from_secs(5), ..ClientLimits::default() },
        }
    }

    #[tokio::test]
    async fn comparisons_opened_before_a_reload_complete_with_the_old_shadows() {
        let (a, b) = (slow_shadow(Duration::from_millis(200)).await, slow_shadow(Duration::ZERO).await);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let (report_tx, mut report_rx) = mpsc::channel(16);
        let own = Arc::new(OwnConnections::new());
        let mut dispatcher = Dispatcher::new(
            settings(&[("a", a), ("b", b)]),
            16,
            DispatchMemory::default(),
            own.clone(),
            done_tx,
            report_tx,
        );
        let (first, second) = (exchange(1), exchange(2));
        dispatcher.request(ready(&first), 0);
        // Shadow `a` is removed and `c` added while the first request is still in flight at `a`.
        dispatcher.reconfigure(settings(&[("b", b), ("c", b)]));
        assert_eq!(dispatcher.shadows().len(), 3, "a stays until its comparison is complete");
        assert_eq!(dispatcher.current_shadows().len(), 2);
        dispatcher.request(ready(&second), 0);
        dispatcher.exchange(first);
        dispatcher.exchange(second);
        let mut replayed = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while replayed.len() < 2 {
            let done = tokio::time::timeout_at(deadline, done_rx.recv()).await.expect("answers within 5 s");
            dispatcher.shadow_done(done.expect("clients alive"));
            while let Ok(item) = report_rx.try_recv() {
                let ReportItem::Replayed(complete, shadows) = item else { panic!("{item:?}") };
                let names: Vec<&str> = shadows.iter().map(|s| s.model.model_id.as_str()).collect();
                assert!(complete.results.iter().all(|r| matches!(r, ShadowResult::Answered { .. })));
                replayed.push((complete.exchange.id.seq, names.join(",")));
            }
        }
        replayed.sort();
        assert_eq!(replayed, [(1, "a,b".to_string()), (2, "b,c".to_string())]);
        dispatcher.expire(0);
        assert_eq!(dispatcher.shadows().len(), 2, "the old generation is gone once nothing waits on it");
        assert_eq!(dispatcher.counters, DispatchDrops::default());
    }

    /// Bytes the dispatcher reserves for `e`'s exchange when it replays `e`'s request, before
    /// any response was seen.
    fn first_reservation(e: &Exchange) -> usize {
        EXCHANGE_OVERHEAD + request_bytes(&e.request) + ResponseEstimate::INITIAL
    }

    #[tokio::test]
    async fn what_does_not_fit_in_the_memory_budget_is_shed_and_counted() {
        let shadow = slow_shadow(Duration::from_millis(100)).await;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let (report_tx, mut report_rx) = mpsc::channel(64);
        let one = outgoing_bytes(&request::build(
            &exchange(1).request,
            &crate::replay::target::ShadowTarget::parse(&format!("s=http://{shadow}"))
                .unwrap()
                .endpoint_for(Default::default(), 80)
                .unwrap(),
            &ReplayOptions::default(),
        ));
        // Room for three replay requests, and for four exchanges' reservations.
        let memory = DispatchMemory {
            replay: Account::new(3 * one as u64 + one as u64 / 2),
            queues: Account::new(4 * first_reservation(&exchange(1)) as u64 + 10),
        };
        let own = Arc::new(OwnConnections::new());
        let mut dispatcher =
            Dispatcher::new(settings(&[("s", shadow)]), 64, memory.clone(), own, done_tx, report_tx);
        let mut exchanges: Vec<Exchange> = (1..=5).map(exchange).collect();
        // Exchange 5's response alone is more than the queues' share.
        exchanges[4].response.body = bytes::Bytes::from(vec![b' '; 5 * first_reservation(&exchanges[4])]);
        for e in &exchanges {
            dispatcher.request(ready(e), 0);
        }
        let not_sent = &dispatcher.shadows()[0].counters.not_sent_memory_budget;
        assert_eq!(
            not_sent.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "request 4 did not fit in the replay share, 5's exchange not in the queues share"
        );
        assert_eq!(dispatcher.counters.memory_budget, 0, "not sent, but still to be reported");
        assert!(memory.replay.used() <= memory.replay.limit());
        assert_eq!(memory.queues.used(), 4 * first_reservation(&exchanges[0]), "four exchanges reserved");
        for e in exchanges {
            dispatcher.exchange(e);
        }
        // Reservations are trimmed to what each exchange holds; 4 completed at once (not sent),
        // and 5 does not fit at all.
        assert!(memory.queues.used() <= memory.queues.limit());
        assert_eq!(dispatcher.counters.memory_budget, 1, "exchange 5 is shed");
        let mut reported = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for _ in 0..3 {
            let done = tokio::time::timeout_at(deadline, done_rx.recv()).await.expect("answers within 5 s");
            dispatcher.shadow_done(done.expect("client alive"));
        }
        while let Ok(item) = report_rx.try_recv() {
            assert!(matches!(item, ReportItem::Replayed(..)), "{item:?}");
            reported += 1;
        }
        assert_eq!(reported, 4, "every other exchange is reported");
        assert_eq!(memory.queues.used(), 0, "everything reported gave its bytes back");
        assert_eq!(memory.replay.used(), 0);
    }

    #[tokio::test]
    async fn a_replayed_request_keeps_room_for_its_exchange_while_others_fill_the_queues() {
        let shadow = slow_shadow(Duration::from_millis(50)).await;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let (report_tx, mut report_rx) = mpsc::channel(64);
        let replayed = exchange(1);
        // Room for the one reservation and a little more.
        let memory = DispatchMemory {
            replay: Account::unlimited(),
            queues: Account::new(first_reservation(&replayed) as u64 + 100),
        };
        let own = Arc::new(OwnConnections::new());
        let mut dispatcher =
            Dispatcher::new(settings(&[("s", shadow)]), 64, memory.clone(), own, done_tx, report_tx);
        dispatcher.request(ready(&replayed), 0);
        // Exchanges of other connections (not replayed: their requests came before a reload
        // added the shadow, say) arrive first and would take the room.
        for seq in 10..20 {
            let mut other = exchange(seq);
            other.id.connection = 2;
            dispatcher.exchange(other);
        }
        assert_eq!(dispatcher.counters.memory_budget, 10, "the others found no room");
        dispatcher.exchange(replayed);
        let done = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await.expect("answer in 5 s");
        dispatcher.shadow_done(done.expect("client alive"));
        let item = report_rx.try_recv().expect("the replayed exchange is compared");
        let ReportItem::Replayed(complete, _) = item else { panic!("{item:?}") };
        assert!(matches!(complete.results[0], ShadowResult::Answered { .. }), "{:?}", complete.results);
        assert_eq!(dispatcher.counters.memory_budget, 10, "and was not shed");
        drop(complete);
        assert_eq!(memory.queues.used(), 0);
    }

    #[test]
    fn a_batch_prepared_on_several_threads_is_what_one_thread_prepares() {
        use crate::{exchange::Header, replay::join::ShadowAnswer};
        let rules = RuleSet::default();
        let record = RecordOptions::default();
        let context = PrepareContext { rules: &rules, record: &record, production_model: None, lines: true };
        let target = crate::replay::target::ShadowTarget::parse("s=http://127.0.0.1:1").unwrap();
        let shadows: Arc<[ShadowInfo]> = Arc::from([shadow_info(&target)]);
        let json = vec![Header { name: "content-type".into(), value: "application/json".into() }];
        let run: Vec<(Complete, Arc<[ShadowInfo]>)> = (0..200u64)
            .map(|seq| {
                let mut production = exchange(seq);
                production.response.headers = json.clone();
                production.response.body = format!(r#"{{"score":{seq}}}"#).into();
                // Every third answer differs.
                let score = if seq % 3 == 0 { seq + 1 } else { seq };
                let answer = ShadowAnswer {
                    status: 200,
                    headers: json.clone(),
                    body: format!(r#"{{"score":{score}}}"#).into(),
                    ..ShadowAnswer::default()
                };
                let results = vec![ShadowResult::Answered { answer, latency_ns: 1_000 * seq }];
                (Complete { exchange: production, results, held: Vec::new() }, shadows.clone())
            })
            .collect();
        let alone = context.prepare_all(&run, 1).unwrap();
        let four = context.prepare_all(&run, 4).unwrap();
        assert_eq!((alone.len(), four.len()), (200, 200));
        let mut disagreements = 0;
        for (a, b) in alone.iter().zip(&four) {
            let (Some(x), Some(y)) = (&a.shadows[0], &b.shadows[0]) else { panic!("each one compared") };
            assert_eq!(x.line, y.line, "the same record line, in the same place");
            assert_eq!(x.comparison.verdict, y.comparison.verdict);
            disagreements += usize::from(!x.comparison.verdict.agrees());
        }
        assert_eq!(disagreements, 67, "every third answer differs");
    }
}
