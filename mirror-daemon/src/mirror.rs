//! The mirror: rebuilt exchanges → replay to shadows → comparison → records, logs, metrics,
//! aggregates and the promotion verdict.
//!
//! Two halves, so that capture never waits for anything slower than itself:
//!
//! - [`Dispatcher`] runs inside the capture loop. It samples each request as soon as it is
//!   complete, hands it to every shadow's bounded queue, and joins the shadows' answers with the
//!   production response when that is rebuilt. All of it is non-blocking: a full queue or table is
//!   a counted drop.
//! - [`Reporter`] runs as its own task. It compares, writes records, feeds the aggregates and the
//!   metrics, and logs per-comparison events and the periodic summary.
use std::{collections::BTreeMap, io::Write, sync::Arc};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};

use crate::{
    compare::{self, CompareRules, Message, RequestView, ShadowOutcome},
    exchange::{DropCounters, Exchange, ReadyRequest},
    kernel::Counters,
    metrics::{ComparisonLabels, Metrics, ReasonLabels, RouteLabels, ShadowReasonLabels, ShadowRouteLabels},
    replay::{
        client::{Done, Job, ShadowClient},
        join::{Complete, Expired, JoinTable, Joined, ShadowResult},
        request::{self, ReplayOptions},
        sample::{Decision, Sampler},
        target::ModelInfo,
    },
    report::{
        aggregate::{Aggregator, Observation},
        criteria::{Criteria, evaluate},
        record::{ComparisonRecord, ExchangeRecord, RecordOptions, ShadowRecord},
        summary::{ExchangeStats, nonzero},
    },
};

/// `METHOD /path` (no query): the unit of per-route aggregates and metrics.
pub fn route(method: &str, target: &str) -> String {
    format!("{method} {}", target.split('?').next().unwrap_or_default())
}

/// Losses between the rebuilt exchange and the comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchCounters {
    /// Replays not started because the join table was full.
    pub join_full: u64,
    /// Replayed requests whose production response was never rebuilt.
    pub production_missing: u64,
    /// Entries whose shadow result never came (replays time out, so this stays 0).
    pub shadow_missing: u64,
    /// Items dropped because the reporter fell behind.
    pub report_queue_full: u64,
}

impl DispatchCounters {
    pub fn list(&self) -> [(&'static str, u64); 4] {
        [
            ("join_full", self.join_full),
            ("production_missing", self.production_missing),
            ("shadow_missing", self.shadow_missing),
            ("report_queue_full", self.report_queue_full),
        ]
    }
}

/// What the reporter is handed.
#[derive(Debug)]
pub enum ReportItem {
    /// An exchange that was not replayed; `reason` is set when shadows are configured.
    Exchange { exchange: Exchange, reason: Option<&'static str> },
    /// Production and every shadow's result.
    Replayed(Complete),
    /// Counters for the periodic summary.
    Summary(Box<Snapshot>),
    /// The last summary; the reporter flushes and answers.
    Final(Box<Snapshot>, oneshot::Sender<()>),
}

/// Counters owned by the capture side, sent to the reporter for the summary and the metrics.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub kernel: Counters,
    pub drops: DropCounters,
    pub undecodable: u64,
    pub connections: usize,
    pub buffered_bytes: usize,
    pub dispatch: DispatchCounters,
    /// Per shadow: `(name, value)` replay counters.
    pub replay: Vec<(String, Vec<(&'static str, u64)>)>,
}

/// The non-blocking half, driven by the capture loop.
#[derive(Debug)]
pub struct Dispatcher {
    sampler: Sampler,
    replay: ReplayOptions,
    clients: Vec<ShadowClient>,
    join: JoinTable,
    to_report: mpsc::Sender<ReportItem>,
    pub counters: DispatchCounters,
    expired: Vec<Expired>,
}

impl Dispatcher {
    pub fn new(
        sampler: Sampler,
        replay: ReplayOptions,
        clients: Vec<ShadowClient>,
        join: JoinTable,
        to_report: mpsc::Sender<ReportItem>,
    ) -> Self {
        Self {
            sampler,
            replay,
            clients,
            join,
            to_report,
            counters: DispatchCounters::default(),
            expired: Vec::new(),
        }
    }

    pub fn shadows(&self) -> &[ShadowClient] {
        &self.clients
    }

    /// Starts the replays of requests that just completed.
    pub fn requests(&mut self, ready: impl Iterator<Item = ReadyRequest>, now_ns: u64) {
        if self.clients.is_empty() {
            return;
        }
        for r in ready {
            if self.sampler.decide(&r.request) != Decision::Replay {
                continue;
            }
            if !self.join.open(r.id, now_ns) {
                self.counters.join_full += 1;
                continue;
            }
            for (index, client) in self.clients.iter().enumerate() {
                let outgoing = request::build(&r.request, &client.target, &self.replay);
                if !client.submit(Job { id: r.id, outgoing }) {
                    // Production has not answered yet, so this cannot complete the entry.
                    let _ = self.join.shadow(r.id, index, ShadowResult::NotSent);
                }
            }
        }
    }

    /// A production exchange was rebuilt.
    pub fn exchange(&mut self, exchange: Exchange) {
        match self.join.production(exchange) {
            Joined::Complete(complete) => self.send(ReportItem::Replayed(complete)),
            Joined::Waiting => {}
            Joined::NotWaiting(exchange) => {
                let reason = if self.clients.is_empty() {
                    None
                } else {
                    // The decision is a function of the request: the same one as at replay time.
                    Some(match self.sampler.decide(&exchange.request) {
                        Decision::Replay => "not_replayed",
                        other => other.reason(),
                    })
                };
                self.send(ReportItem::Exchange { exchange, reason });
            }
        }
    }

    /// A shadow answered (or failed, or timed out).
    pub fn shadow_done(&mut self, done: Done) {
        if let Some(complete) = self.join.shadow(done.id, done.shadow, done.result) {
            self.send(ReportItem::Replayed(complete));
        }
    }

    /// Forgets what waited too long.
    pub fn expire(&mut self, now_ns: u64) {
        self.join.expire(now_ns, &mut self.expired);
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

    /// Sends a summary or final item, waiting for room: these must not be lost.
    pub async fn send_control(&self, item: ReportItem) {
        let _ = self.to_report.send(item).await;
    }

    /// Per-shadow replay counters for the summary.
    pub fn replay_counters(&self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        self.clients.iter().map(|c| (c.target.model.model_id.clone(), c.counters.list().to_vec())).collect()
    }
}

/// One shadow as the reporter knows it.
#[derive(Clone, Debug)]
pub struct ShadowInfo {
    pub model: ModelInfo,
    pub endpoint: String,
}

/// The reporting half.
pub struct Reporter {
    pub shadows: Vec<ShadowInfo>,
    pub production_model: Option<ModelInfo>,
    pub rules: CompareRules,
    pub criteria: Criteria,
    pub record: RecordOptions,
    pub records: Option<Box<dyn Write + Send>>,
    pub metrics: Arc<Metrics>,
    pub stats: ExchangeStats,
    pub aggregator: Aggregator,
    /// Records that could not be turned into observations (a bug if ever non-zero).
    pub unaggregated: u64,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("shadows", &self.shadows).finish_non_exhaustive()
    }
}

impl Reporter {
    /// Handles items until the channel closes or a final item has been answered.
    pub async fn run(mut self, mut items: mpsc::Receiver<ReportItem>) -> Result<()> {
        while let Some(item) = items.recv().await {
            match item {
                ReportItem::Exchange { exchange, reason } => self.exchange(&exchange, reason)?,
                ReportItem::Replayed(complete) => self.replayed(&complete)?,
                ReportItem::Summary(snapshot) => self.summary(&snapshot, false),
                ReportItem::Final(snapshot, done) => {
                    self.summary(&snapshot, true);
                    if let Some(out) = self.records.as_mut() {
                        out.flush().context("flush records")?;
                    }
                    let _ = done.send(());
                    return Ok(());
                }
            }
            if items.is_empty()
                && let Some(out) = self.records.as_mut()
            {
                out.flush().context("flush records")?;
            }
        }
        Ok(())
    }

    fn production(&mut self, exchange: &Exchange, route: &str) {
        let latency_ns = exchange.production_latency_ns();
        self.stats.record(latency_ns);
        let label = RouteLabels { route: self.metrics.route_label(route) };
        self.metrics.exchanges.get_or_create(&label).inc();
        self.metrics.production_latency.get_or_create(&label).observe(latency_ns as f64 / 1e9);
        tracing::debug!(
            target: "exchange",
            client = %exchange.client,
            server = %exchange.server,
            route,
            prod_status = exchange.response.status,
            request_bytes = exchange.request.body.len(),
            response_bytes = exchange.response.body.len(),
            prod_latency_ms = latency_ns as f64 / 1e6,
            "exchange"
        );
    }

    fn write(&mut self, record: &impl serde::Serialize) -> Result<()> {
        if let Some(out) = self.records.as_mut() {
            serde_json::to_writer(&mut *out, record).context("write record")?;
            out.write_all(b"\n").context("write record")?;
        }
        Ok(())
    }

    fn observe(&mut self, value: &serde_json::Value) {
        match Observation::from_record(value) {
            Ok(observation) => self.aggregator.add(&observation),
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
        self.production(exchange, &route);
        let record = ExchangeRecord::new(exchange, &self.record);
        let Some(reason) = reason else {
            // Monitor mode: the exchange is the whole story.
            tracing::info!(
                target: "exchange",
                client = %exchange.client,
                route,
                prod_status = exchange.response.status,
                request_bytes = exchange.request.body.len(),
                response_bytes = exchange.response.body.len(),
                prod_latency_ms = exchange.production_latency_ns() as f64 / 1e6,
                "exchange"
            );
            return self.write(&record);
        };
        for index in 0..self.shadows.len() {
            let shadow = &self.shadows[index];
            let labels =
                ShadowReasonLabels { model_id: shadow.model.model_id.clone(), reason: reason.to_string() };
            self.metrics.not_compared.get_or_create(&labels).inc();
            let value = serde_json::to_value(ComparisonRecord::not_compared(
                &record,
                &route,
                self.production_model.as_ref(),
                ShadowRecord::absent(&shadow.model, &shadow.endpoint),
                reason,
            ))?;
            self.write(&value)?;
            self.observe(&value);
        }
        Ok(())
    }

    fn replayed(&mut self, complete: &Complete) -> Result<()> {
        let exchange = &complete.exchange;
        let route = route(&exchange.request.method, &exchange.request.target);
        self.production(exchange, &route);
        let record = ExchangeRecord::new(exchange, &self.record);
        let request = RequestView {
            method: &exchange.request.method,
            path: &exchange.request.target,
            headers: &exchange.request.headers,
            body: &exchange.request.body,
        };
        let production = Message {
            status: exchange.response.status,
            headers: &exchange.response.headers,
            body: &exchange.response.body,
        };
        let route_label = self.metrics.route_label(&route);
        for (index, result) in complete.results.iter().enumerate() {
            let Some(shadow) = self.shadows.get(index).cloned() else { continue };
            let model_id = shadow.model.model_id.clone();
            if matches!(result, ShadowResult::NotSent) {
                let labels = ShadowReasonLabels { model_id, reason: "queue_full".into() };
                self.metrics.not_compared.get_or_create(&labels).inc();
                let value = serde_json::to_value(ComparisonRecord::not_compared(
                    &record,
                    &route,
                    self.production_model.as_ref(),
                    ShadowRecord::absent(&shadow.model, &shadow.endpoint),
                    "queue_full",
                ))?;
                self.write(&value)?;
                self.observe(&value);
                continue;
            }
            let outcome = match result {
                ShadowResult::Answered { answer, .. } => ShadowOutcome::Answered(Message {
                    status: answer.status,
                    headers: &answer.headers,
                    body: &answer.body,
                }),
                ShadowResult::TimedOut { .. } => ShadowOutcome::TimedOut,
                ShadowResult::Failed { error, .. } => ShadowOutcome::Failed(error),
                ShadowResult::NotSent => continue,
            };
            let comparison = compare::compare(&request, &production, &outcome, &self.rules);
            let shadow_record =
                ShadowRecord::from_result(&shadow.model, &shadow.endpoint, result, &self.record);
            let value = serde_json::to_value(ComparisonRecord::compared(
                &record,
                &route,
                self.production_model.as_ref(),
                shadow_record,
                &comparison,
            ))?;
            self.write(&value)?;
            self.observe(&value);

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
            self.metrics.prediction_rows.get_or_create(&labels).inc_by(comparison.metrics.rows);
            self.metrics.label_flips.get_or_create(&labels).inc_by(comparison.metrics.label_flips);

            let shadow_status = match result {
                ShadowResult::Answered { answer, .. } => Some(answer.status),
                _ => None,
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
                        prod_latency_ms = exchange.production_latency_ns() as f64 / 1e6,
                        shadow_latency_ms,
                        diff_count = comparison.diff_count,
                        first_diff,
                        label_flips = comparison.metrics.label_flips,
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
        for (name, value) in s.drops.list().into_iter().chain(s.dispatch.list()) {
            Metrics::advance(
                &self.metrics.drops.get_or_create(&ReasonLabels { reason: name.to_string() }),
                value,
            );
        }
        for (name, value) in s.kernel.named() {
            if matches!(name, "ringbuf_full" | "truncated" | "marker_lost" | "unparsed") {
                let labels = ReasonLabels { reason: format!("kernel_{name}") };
                Metrics::advance(&self.metrics.drops.get_or_create(&labels), value);
            }
        }
        for (model_id, counters) in &s.replay {
            if let Some((_, in_flight)) = counters.iter().find(|(n, _)| *n == "in_flight") {
                let labels = ShadowRouteLabels { model_id: model_id.clone(), route: "all".into() };
                self.metrics.replays_in_flight.get_or_create(&labels).set(*in_flight as i64);
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
            undecodable_records = s.undecodable,
            kernel = %s.kernel,
            drops = %nonzero(s.drops.list().into_iter().chain(s.dispatch.list())),
            replay = ?replay,
            "{}",
            if last { "final summary" } else { "summary" }
        );
        if self.shadows.is_empty() {
            return;
        }
        let summary = self.aggregator.summary();
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
            eprintln!("\n{summary}");
            for shadow in &summary.shadows {
                let decision = evaluate(shadow, &self.criteria);
                eprintln!("{}: {} — {}", shadow.model_id, decision.verdict, decision.reasons.join("; "));
            }
        }
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
