//! The verdict document: the one JSON shape in which the decision is handed to machines — the
//! daemon's `GET /verdict` (live, from the reporter's aggregates) and `mirror-daemon report
//! --format json` (offline, from records). Both build it here with [`VerdictDocument::build`], so
//! a pipeline can move from one to the other without a second parser. The schema is documented in
//! the README ("The verdict as an API"); fields are only ever added.
//!
//! The daemon's reporter owns the aggregates; HTTP handlers must neither wait for it nor see a
//! half-updated state. So the reporter *publishes* a finished document into a [`VerdictBoard`]
//! (an `Arc` swapped under a lock held for a pointer copy), at most once a second while
//! comparisons arrive and at every summary, and handlers read the latest one.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::{
    aggregate::{Proportion, Quantiles, RouteSummary, ShadowSummary, Summary, VerdictCounts},
    criteria::{Check, Criteria, Promotion, checks, evaluate},
    llm::TextStats,
};
use crate::drops::{Losses, Stage};

/// Version of the document's schema.
pub const SCHEMA: u32 = 1;

/// Exit status of `report` (and the document's `exit_code`) when there is no shadow to decide on.
pub const EXIT_NO_DECISION: u8 = 3;

/// How often at most the daemon publishes a new document while comparisons arrive.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// RFC 3339 UTC with microseconds, as records' `ts`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// How one input file of `report` went.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InputFile {
    pub file: String,
    /// Non-blank lines.
    pub lines: u64,
    /// Lines with a comparison verdict (including `not_compared`).
    pub comparison_records: u64,
    /// Valid exchange records without a comparison.
    pub other_records: u64,
    pub malformed: u64,
}

/// Where the numbers come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A running daemon's aggregates.
    Daemon,
    /// `mirror-daemon report` over record files.
    Records { files: Vec<InputFile> },
}

/// The stretch of traffic the aggregates cover.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Window {
    /// `daemon_lifetime`: everything since the daemon started (a reload does not reset it);
    /// `records`: the records read, from the earliest `ts` to the latest.
    pub basis: &'static str,
    /// RFC 3339; `None` when unknown (records without `ts`).
    pub from: Option<String>,
    pub to: Option<String>,
}

impl Window {
    /// From the daemon's start to `now`.
    pub fn daemon(started: SystemTime, now: SystemTime) -> Self {
        Self { basis: "daemon_lifetime", from: Some(timestamp(started)), to: Some(timestamp(now)) }
    }

    /// The earliest and latest record timestamps.
    pub fn records(from: Option<String>, to: Option<String>) -> Self {
        Self { basis: "records", from, to }
    }
}

/// Losses of the capture itself: segments the kernel matched but could not hand over whole.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaptureHealth {
    /// Segments that matched the port and address filter.
    pub segments_matched: u64,
    /// Of those, copied only in part or not at all (`ringbuf_full` + `truncated`).
    pub segments_lost: u64,
    /// `segments_lost / segments_matched`; `None` before the first segment.
    pub loss_rate: Option<f64>,
}

/// The daemon's own health at its last summary: what it could not see or could not compare.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    /// When these counters were read (RFC 3339): the last periodic summary.
    pub as_of: String,
    pub capture: CaptureHealth,
    /// Every loss counter of `drops.rs`, by stage and reason (replay losses summed over shadows).
    pub drops: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// The sum of `drops`.
    pub drops_total: u64,
}

impl Health {
    /// From the kernel counters by name (`Counters::named`) and every loss counter.
    pub fn new(kernel: &BTreeMap<&'static str, u64>, losses: &Losses, as_of: SystemTime) -> Self {
        let get = |name: &str| kernel.get(name).copied().unwrap_or_default();
        let (matched, lost) = (get("matched"), get("ringbuf_full") + get("truncated"));
        let mut drops: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for loss in losses.list() {
            *drops.entry(loss.stage.as_str()).or_default().entry(loss.reason).or_default() += loss.value;
        }
        // A stage with no counter listed yet (no shadow: no replay losses) still has its key.
        drops.entry(Stage::Replay.as_str()).or_default();
        let drops_total = drops.values().flat_map(|reasons| reasons.values()).sum();
        Self {
            as_of: timestamp(as_of),
            capture: CaptureHealth {
                segments_matched: matched,
                segments_lost: lost,
                loss_rate: (matched > 0).then(|| lost as f64 / matched as f64),
            },
            drops,
            drops_total,
        }
    }
}

/// How many observations the decision rests on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Samples {
    /// Records seen, compared or not.
    pub observations: u64,
    /// With a comparison verdict: what `min_samples` counts.
    pub comparisons: u64,
    /// Answered by both models: the agreement's denominator.
    pub answered_by_both: u64,
    pub not_compared: u64,
    pub not_compared_reasons: BTreeMap<String, u64>,
}

/// Production's and the shadow's latency, and how they compare.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub production_ms: Option<Quantiles>,
    pub shadow_ms: Option<Quantiles>,
    /// Paired shadow − production per comparison.
    pub difference_ms: Option<Quantiles>,
    /// Shadow p99 / production p99.
    pub p99_ratio: Option<f64>,
}

/// Failure rates, as fractions of comparisons.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorRates {
    pub production_error_rate: Option<f64>,
    pub shadow_failure_rate: Option<f64>,
    pub shadow_error_rate: Option<f64>,
    pub shadow_timeout_rate: Option<f64>,
    /// shadow_failure_rate − production_error_rate.
    pub increase: Option<f64>,
}

/// Prediction-level agreement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Predictions {
    pub rows: u64,
    pub label_flips: u64,
    pub label_flip_rate: Option<f64>,
    pub max_abs_error: Option<f64>,
    pub mean_abs_error: Option<f64>,
}

/// The decision about one shadow and everything it was made from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShadowVerdict {
    pub model_id: String,
    pub decision: Promotion,
    /// Sentences with the numbers behind the decision.
    pub reasons: Vec<String>,
    /// Each criterion: value, threshold, pass/fail.
    pub criteria: Vec<Check>,
    /// (match + within_tolerance) / answered by both, with its 95% Wilson interval.
    pub agreement: Option<Proportion>,
    pub samples: Samples,
    pub verdicts: VerdictCounts,
    pub latency: Latency,
    pub errors: ErrorRates,
    pub predictions: Predictions,
    /// Generated text and streaming figures (TTFT, TPOT, ITL), for shadows with LLM answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextStats>,
    /// The same statistics per route, busiest first.
    pub routes: Vec<RouteSummary>,
}

impl ShadowVerdict {
    /// Decides on `shadow` with `criteria`.
    pub fn new(shadow: &ShadowSummary, criteria: &Criteria) -> Self {
        let decision = evaluate(shadow, criteria);
        let s = &shadow.stats;
        Self {
            model_id: shadow.model_id.clone(),
            decision: decision.verdict,
            reasons: decision.reasons,
            criteria: checks(shadow, criteria),
            agreement: s.agreement,
            samples: Samples {
                observations: s.observations,
                comparisons: s.comparisons,
                answered_by_both: s.agreement.map_or(0, |a| a.trials),
                not_compared: s.not_compared,
                not_compared_reasons: s.not_compared_reasons.clone(),
            },
            verdicts: s.verdicts,
            latency: Latency {
                production_ms: s.production_latency_ms,
                shadow_ms: s.shadow_latency_ms,
                difference_ms: s.latency_difference_ms,
                p99_ratio: s.p99_latency_ratio,
            },
            errors: ErrorRates {
                production_error_rate: s.production_error_rate,
                shadow_failure_rate: s.shadow_failure_rate,
                shadow_error_rate: s.shadow_error_rate,
                shadow_timeout_rate: s.shadow_timeout_rate,
                increase: s.error_rate_increase,
            },
            predictions: Predictions {
                rows: s.rows,
                label_flips: s.label_flips,
                label_flip_rate: s.label_flip_rate,
                max_abs_error: s.max_abs_error,
                mean_abs_error: s.mean_abs_error,
            },
            text: s.text,
            routes: shadow.routes.clone(),
        }
    }
}

/// The whole document: `GET /verdict` and `report --format json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerdictDocument {
    pub schema: u32,
    /// The worst decision over the shadows (REJECT > HOLD > PROMOTE); `None` without shadows.
    pub decision: Option<Promotion>,
    /// `report`'s exit status for this document: 0 PROMOTE, 1 HOLD, 2 REJECT, 3 no shadow.
    pub exit_code: u8,
    pub source: Source,
    pub window: Window,
    /// The thresholds in force.
    pub thresholds: Criteria,
    /// One per shadow, in model-id order.
    pub shadows: Vec<ShadowVerdict>,
    /// Observations of shadows beyond the aggregator's limit, not decided on.
    pub untracked_observations: u64,
    /// The daemon's own health; `None` offline (records do not carry it) and before the first
    /// summary.
    pub health: Option<Health>,
}

impl VerdictDocument {
    /// Decides on every shadow of `summary`, plus each of `configured` not seen yet (HOLD with no
    /// sample: a pipeline asking about a shadow that has had no traffic gets "not yet", not 404).
    pub fn build(
        summary: &Summary,
        configured: &[&str],
        criteria: &Criteria,
        source: Source,
        window: Window,
        health: Option<Health>,
    ) -> Self {
        let mut shadows: Vec<ShadowVerdict> =
            summary.shadows.iter().map(|s| ShadowVerdict::new(s, criteria)).collect();
        for id in configured {
            let empty = ShadowSummary::empty(id);
            if !shadows.iter().any(|s| s.model_id == empty.model_id) {
                shadows.push(ShadowVerdict::new(&empty, criteria));
            }
        }
        shadows.sort_by(|a, b| a.model_id.cmp(&b.model_id));
        let decision = shadows.iter().map(|s| s.decision).max();
        Self {
            schema: SCHEMA,
            decision,
            exit_code: decision.map_or(EXIT_NO_DECISION, Promotion::exit_code),
            source,
            window,
            thresholds: criteria.clone(),
            shadows,
            untracked_observations: summary.untracked_observations,
            health,
        }
    }

    /// One shadow's verdict, or `None` for an unknown model id.
    pub fn shadow(&self, model_id: &str) -> Option<ShadowDocument<'_>> {
        let shadow = self.shadows.iter().find(|s| s.model_id == model_id)?;
        Some(ShadowDocument {
            schema: self.schema,
            shadow,
            source: &self.source,
            window: &self.window,
            health: &self.health,
        })
    }

    /// The model ids decided on.
    pub fn model_ids(&self) -> Vec<&str> {
        self.shadows.iter().map(|s| s.model_id.as_str()).collect()
    }
}

/// `GET /verdict/{model_id}`: one shadow's verdict at the top level (so that `$.decision` is
/// its decision), with the window and health it was made in.
#[derive(Debug, Serialize)]
pub struct ShadowDocument<'a> {
    pub schema: u32,
    #[serde(flatten)]
    pub shadow: &'a ShadowVerdict,
    pub source: &'a Source,
    pub window: &'a Window,
    pub health: &'a Option<Health>,
}

/// The latest published document; read by HTTP handlers, written by the reporter.
#[derive(Debug, Default)]
pub struct VerdictBoard {
    current: Mutex<Option<Arc<VerdictDocument>>>,
}

impl VerdictBoard {
    /// Replaces the document (the lock is held for a pointer swap).
    pub fn publish(&self, document: VerdictDocument) {
        let document = Arc::new(document);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(document);
    }

    /// The latest document, `None` before the first one.
    pub fn current(&self) -> Option<Arc<VerdictDocument>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The reporter's side of the board: when to publish, and the health to publish with.
#[derive(Debug)]
pub struct VerdictPublisher {
    pub board: Arc<VerdictBoard>,
    started: SystemTime,
    health: Option<Health>,
    last: Option<Instant>,
    dirty: bool,
}

impl VerdictPublisher {
    /// Publishes into `board`; the window starts now.
    pub fn new(board: Arc<VerdictBoard>) -> Self {
        Self { board, started: SystemTime::now(), health: None, last: None, dirty: true }
    }

    /// The aggregates changed.
    pub fn changed(&mut self) {
        self.dirty = true;
    }

    /// New health counters (from a summary).
    pub fn set_health(&mut self, health: Health) {
        self.health = Some(health);
        self.dirty = true;
    }

    /// Whether a publication is due: something changed and [`PUBLISH_EVERY`] has passed.
    pub fn due(&self, now: Instant) -> bool {
        self.dirty && self.last.is_none_or(|last| now.duration_since(last) >= PUBLISH_EVERY)
    }

    /// Builds and publishes the document for `summary`.
    pub fn publish(&mut self, summary: &Summary, configured: &[&str], criteria: &Criteria) {
        let window = Window::daemon(self.started, SystemTime::now());
        let document = VerdictDocument::build(
            summary,
            configured,
            criteria,
            Source::Daemon,
            window,
            self.health.clone(),
        );
        self.board.publish(document);
        self.last = Some(Instant::now());
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::verdict::Verdict;
    use crate::drops::{AssemblyDrops, KernelDrops};
    use crate::report::{
        aggregate::{Aggregator, Observation, Outcome},
        criteria::CheckStatus,
    };
    use proptest::prelude::*;

    fn observation(model: &str, verdict: Verdict, shadow_ms: f64) -> Observation {
        Observation {
            shadow_model_id: model.into(),
            route: "POST /infer".into(),
            outcome: Outcome::Compared(verdict),
            production_status: 200,
            production_grpc_status: None,
            production_latency_ms: 10.0,
            shadow_status: Some(if verdict == Verdict::ShadowError { 503 } else { 200 }),
            shadow_grpc_status: None,
            shadow_latency_ms: Some(shadow_ms),
            shadow_error: None,
            rows: Some(1),
            label_agreements: None,
            label_flips: None,
            max_abs_error: None,
            mean_abs_error: None,
            text: Default::default(),
        }
    }

    /// `agree` matches, `disagree` mismatches and `errors` shadow errors for `model`.
    fn add(agg: &mut Aggregator, model: &str, agree: u64, disagree: u64, errors: u64, shadow_ms: f64) {
        for (verdict, n) in
            [(Verdict::Match, agree), (Verdict::Mismatch, disagree), (Verdict::ShadowError, errors)]
        {
            for _ in 0..n {
                agg.add(&observation(model, verdict, shadow_ms));
            }
        }
    }

    fn document(agg: &Aggregator, configured: &[&str]) -> VerdictDocument {
        let window = Window::daemon(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH + Duration::from_secs(60));
        VerdictDocument::build(&agg.summary(), configured, &Criteria::default(), Source::Daemon, window, None)
    }

    fn check<'a>(shadow: &'a ShadowVerdict, name: &str) -> &'a Check {
        shadow.criteria.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn a_good_shadow_passes_every_criterion() {
        let mut agg = Aggregator::default();
        add(&mut agg, "good", 300, 0, 0, 11.0);
        let doc = document(&agg, &["good"]);
        assert_eq!((doc.decision, doc.exit_code), (Some(Promotion::Promote), 0));
        let good = &doc.shadows[0];
        assert_eq!(good.decision, Promotion::Promote);
        assert!(
            good.criteria.iter().all(|c| c.passed && c.status == CheckStatus::Pass),
            "{:?}",
            good.criteria
        );
        assert_eq!(check(good, "min_samples").value, Some(300.0));
        assert_eq!(check(good, "min_samples").threshold, 100.0);
        let agreement = check(good, "min_agreement");
        assert_eq!(agreement.value, good.agreement.map(|a| a.low));
        assert_eq!((agreement.threshold, agreement.rule), (0.95, ">="));
        let ratio = check(good, "max_p99_latency_ratio");
        assert!((ratio.value.unwrap() - 1.1).abs() < 0.02, "{ratio:?}");
        assert_eq!(ratio.rule, "<=");
        assert_eq!(good.samples.comparisons, 300);
        assert_eq!(good.samples.answered_by_both, 300);
        assert_eq!(doc.window.from.as_deref(), Some("1970-01-01T00:00:00.000000Z"));
        assert_eq!(doc.window.to.as_deref(), Some("1970-01-01T00:01:00.000000Z"));

        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["decision"], "PROMOTE");
        assert_eq!(json["shadows"][0]["criteria"][1]["status"], "pass");
        assert_eq!(json["shadows"][0]["agreement"]["trials"], 300);
        // Histogram bucket middles: within 1% of 10 ms.
        assert!((json["shadows"][0]["latency"]["production_ms"]["p99"].as_f64().unwrap() - 10.0).abs() < 0.1);
        assert_eq!(json["source"]["kind"], "daemon");
        assert_eq!(json["thresholds"]["min_samples"], 100);
        assert!(json["health"].is_null());
    }

    #[test]
    fn too_few_samples_hold_with_every_check_pending() {
        let mut agg = Aggregator::default();
        // Terrible, but only 50 comparisons: nothing is decided yet.
        add(&mut agg, "early", 10, 40, 0, 100.0);
        let doc = document(&agg, &["early", "unseen"]);
        assert_eq!((doc.decision, doc.exit_code), (Some(Promotion::Hold), 1));
        let early = doc.shadow("early").unwrap().shadow;
        assert_eq!(early.decision, Promotion::Hold);
        assert!(early.reasons[0].contains("need 50 more"), "{:?}", early.reasons);
        assert!(early.criteria.iter().all(|c| c.status == CheckStatus::Pending && !c.passed));
        let ratio = check(early, "max_p99_latency_ratio").value.expect("the value is still shown");
        assert!((ratio - 10.0).abs() < 0.1, "{ratio}");
        // A configured shadow with no traffic yet is there, held, with no sample.
        let unseen = doc.shadow("unseen").unwrap().shadow;
        assert_eq!((unseen.decision, unseen.samples.comparisons), (Promotion::Hold, 0));
        assert!(unseen.agreement.is_none());
        assert_eq!(doc.model_ids(), ["early", "unseen"]);
        assert!(doc.shadow("other").is_none());
    }

    #[test]
    fn a_failed_criterion_rejects_and_says_which() {
        let mut agg = Aggregator::default();
        add(&mut agg, "disagrees", 120, 80, 0, 10.0);
        add(&mut agg, "slow", 300, 0, 0, 30.0);
        add(&mut agg, "errors", 300, 0, 20, 10.0);
        let doc = document(&agg, &[]);
        assert_eq!((doc.decision, doc.exit_code), (Some(Promotion::Reject), 2));
        let failed = |id: &str| -> Vec<&str> {
            let s = doc.shadow(id).unwrap().shadow;
            assert_eq!(s.decision, Promotion::Reject, "{id}");
            s.criteria.iter().filter(|c| c.status == CheckStatus::Fail).map(|c| c.name).collect()
        };
        assert_eq!(failed("disagrees"), ["min_agreement"]);
        assert_eq!(failed("slow"), ["max_p99_latency_ratio"]);
        assert_eq!(failed("errors"), ["max_error_rate_increase"]);
        // The per-shadow view puts the decision at the top level, with the window.
        let json = serde_json::to_value(doc.shadow("slow").unwrap()).unwrap();
        assert_eq!(json["model_id"], "slow");
        assert_eq!(json["decision"], "REJECT");
        assert_eq!(json["window"]["basis"], "daemon_lifetime");
        assert!(json["criteria"][2]["value"].as_f64().unwrap() > 2.9);
    }

    #[test]
    fn no_shadow_no_decision() {
        let doc = document(&Aggregator::default(), &[]);
        assert_eq!((doc.decision, doc.exit_code), (None, EXIT_NO_DECISION));
        assert!(doc.shadows.is_empty());
    }

    #[test]
    fn health_counts_every_loss_by_stage() {
        let kernel = BTreeMap::from([("matched", 1000), ("ringbuf_full", 5), ("truncated", 5), ("seen", 9)]);
        let losses = Losses {
            kernel: KernelDrops { ringbuf_full: 5, truncated: 5, ..KernelDrops::default() },
            assembly: AssemblyDrops { gap: 3, ..AssemblyDrops::default() },
            replay_queue_full: vec![("a".into(), 2), ("b".into(), 1)],
            ..Losses::default()
        };
        let health = Health::new(&kernel, &losses, SystemTime::UNIX_EPOCH);
        assert_eq!(health.capture.segments_lost, 10);
        assert_eq!(health.capture.loss_rate, Some(0.01));
        assert_eq!(health.drops["kernel"]["ringbuf_full"], 5);
        assert_eq!(health.drops["framing"]["gap"], 3);
        assert_eq!(health.drops["replay"]["queue_full"], 3, "summed over shadows");
        assert_eq!(health.drops["reporting"]["report_queue_full"], 0, "zero counters are listed too");
        assert_eq!(health.drops_total, 5 + 5 + 3 + 3);
        let empty = Health::new(&BTreeMap::new(), &Losses::default(), SystemTime::UNIX_EPOCH);
        assert_eq!(empty.capture.loss_rate, None);
        assert!(empty.drops["replay"].is_empty());
    }

    #[test]
    fn the_publisher_publishes_when_due() {
        let board = Arc::new(VerdictBoard::default());
        let mut publisher = VerdictPublisher::new(board.clone());
        assert!(board.current().is_none());
        assert!(publisher.due(Instant::now()), "the first document is due at once");
        let mut agg = Aggregator::default();
        add(&mut agg, "m", 1, 0, 0, 10.0);
        publisher.publish(&agg.summary(), &["m"], &Criteria::default());
        let first = board.current().expect("published");
        assert_eq!(first.shadows[0].samples.comparisons, 1);
        assert!(!publisher.due(Instant::now() + PUBLISH_EVERY), "nothing changed");
        publisher.changed();
        assert!(!publisher.due(Instant::now()), "changed, but published less than a second ago");
        assert!(publisher.due(Instant::now() + PUBLISH_EVERY));
        add(&mut agg, "m", 1, 0, 0, 10.0);
        publisher.publish(&agg.summary(), &["m"], &Criteria::default());
        assert_eq!(board.current().unwrap().shadows[0].samples.comparisons, 2);
        assert_eq!(first.shadows[0].samples.comparisons, 1, "a reader's snapshot never changes under it");
    }

    proptest! {
        /// The checks and the decision never disagree: REJECT exactly when a check fails,
        /// PROMOTE exactly when all pass.
        #[test]
        fn checks_agree_with_the_decision(
            agree in 0u64..400, disagree in 0u64..60, errors in 0u64..20, shadow_ms in 1.0f64..30.0,
            min_samples in 0u64..300, min_agreement in 0.5f64..1.0,
        ) {
            let mut agg = Aggregator::default();
            add(&mut agg, "m", agree, disagree, errors, shadow_ms);
            let criteria = Criteria { min_samples, min_agreement, ..Criteria::default() };
            let summary = agg.summary();
            prop_assume!(!summary.shadows.is_empty());
            let shadow = ShadowVerdict::new(&summary.shadows[0], &criteria);
            let failed = shadow.criteria.iter().any(|c| c.status == CheckStatus::Fail);
            let all = shadow.criteria.iter().all(|c| c.passed);
            prop_assert_eq!(shadow.decision == Promotion::Reject, failed, "{:?}", shadow);
            prop_assert_eq!(shadow.decision == Promotion::Promote, all, "{:?}", shadow);
        }
    }
}
