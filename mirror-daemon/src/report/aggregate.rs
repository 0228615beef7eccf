//! Aggregates of comparison records: the numbers a promotion decision is made from.
//!
//! One record says how one request fared; whether a candidate can replace production depends on
//! rates and distributions over many of them, and on how sure we are of those rates. So, per shadow
//! model and per (shadow, route):
//!
//! - **Agreement** = (match + within_tolerance) / (match + within_tolerance + mismatch): only the
//!   comparisons where both models answered. Failures are measured separately (below), so that a
//!   shadow that times out is not also counted as disagreeing. The rate comes with a 95% Wilson score
//!   interval, which stays inside [0, 1] and is honest for small samples and rates near 1, where the
//!   normal approximation claims far too much confidence.
//! - **Labels and numeric error**: label flips / rows, the largest `max_abs_error` seen and the mean
//!   of the per-comparison `mean_abs_error`.
//! - **Latency**: production and shadow p50/p95/p99 over comparisons, and the quantiles of the
//!   paired difference shadow − production for the comparisons where both were measured. The paired
//!   difference removes what the two share (the request's size, the time of day) and can be negative.
//! - **Failures**, as fractions of comparisons: `shadow_error` verdicts, `shadow_timeout` verdicts,
//!   non-2xx production answers (or gRPC calls whose status is not OK), and shadow failures (a
//!   `shadow_error` or `shadow_timeout` verdict, or a non-2xx shadow status or non-OK gRPC status). Timeouts count as failures because a user would not have received an
//!   answer either. The error-rate increase is shadow failure rate − production error rate.
//!
//! Records with the `not_compared` verdict (sampled out, queue full, ...) are counted per reason and
//! take no part in any rate.
//!
//! # Memory
//!
//! The same aggregator runs in the long-lived daemon and in `mirror-daemon report`, so its size does
//! not depend on how many observations it has seen: latencies go to fixed-size HDR histograms
//! (0 µs .. 1 h, 2 significant digits, so every quantile is within 1% of an exact one), and every
//! key that comes from the input is capped in count and in length: at most
//! [`Limits::max_shadows`] shadows (observations of further shadows are counted in
//! [`Summary::untracked_observations`]), [`Limits::max_routes_per_shadow`] routes per shadow (further
//! routes are merged into [`OTHER_ROUTES`]), [`MAX_REASONS`] not-compared reasons per group (further
//! ones are merged into `other`) and [`MAX_KEY_BYTES`] bytes per key. One group (a shadow's totals or
//! one route) holds four histograms of about 26 KiB each, so the default limits bound the whole
//! aggregator at 16 × (1 + 32 + 1) groups × ~107 KiB ≈ 57 MiB; one shadow with a handful of routes
//! takes well under 1 MiB. A group that saw generated text (OpenAI-compatible answers) holds nine
//! more ([`super::llm`]), about 340 KiB in all, so at most ~190 MiB with every group an LLM route. [`Aggregator::footprint_bytes`] reports the current figure.
use std::{collections::BTreeMap, fmt};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use super::{
    llm::{TextGroup, TextObservation, TextStats},
    record::ComparisonRecord,
};
use crate::compare::verdict::Verdict;

/// z for a two-sided 95% interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// Route name under which routes beyond [`Limits::max_routes_per_shadow`] are merged.
pub const OTHER_ROUTES: &str = "(other routes)";

/// Distinct not-compared reasons kept per group; further reasons are merged into `other`.
pub const MAX_REASONS: usize = 16;

/// Longest model id, route or reason kept (longer ones are truncated at a character boundary).
pub const MAX_KEY_BYTES: usize = 128;

/// Largest latency kept: one hour, in µs. Longer values are recorded as one hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Significant digits of the latency histograms: quantiles within 1%.
const LATENCY_SIGFIG: u8 = 2;

/// A 95% confidence interval for a proportion.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// Wilson score interval for `successes` out of `trials` at normal quantile `z`; `None` when there
/// are no trials (nothing is known).
pub fn wilson_interval(successes: u64, trials: u64, z: f64) -> Option<Interval> {
    if trials == 0 {
        return None;
    }
    let n = trials as f64;
    let p = successes.min(trials) as f64 / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // Clamp away rounding: at p = 0 or 1 one bound is mathematically exactly 0 or 1.
    Some(Interval { low: (center - half).clamp(0.0, p), high: (center + half).clamp(p, 1.0) })
}

/// A rate with its 95% Wilson interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Proportion {
    pub successes: u64,
    pub trials: u64,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

impl Proportion {
    /// `None` when there are no trials.
    pub fn new(successes: u64, trials: u64) -> Option<Self> {
        let interval = wilson_interval(successes, trials, Z_95)?;
        Some(Self {
            successes,
            trials,
            rate: successes.min(trials) as f64 / trials as f64,
            low: interval.low,
            high: interval.high,
        })
    }
}

/// Why a comparison record could not be turned into an [`Observation`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// The line is a JSON value but not an object.
    #[error("the record is not a JSON object")]
    NotAnObject,
    /// An exchange record without a comparison (no `verdict`): skipped, not malformed.
    #[error("not a comparison record (no `verdict` field)")]
    NotAComparison,
    /// A required field is absent or null.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong type or an impossible value.
    #[error("field `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
}

/// What happened to one mirrored request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The two answers were compared.
    Compared(Verdict),
    /// The request was not replayed or not compared, for this reason (`sampled_out`, ...).
    NotCompared(String),
}

/// The part of a comparison record the aggregates need.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub shadow_model_id: String,
    /// `route`, or `METHOD path` for records that predate it.
    pub route: String,
    pub outcome: Outcome,
    pub production_status: u16,
    /// gRPC calls: production's `grpc-status`.
    pub production_grpc_status: Option<u64>,
    pub production_latency_ms: f64,
    pub shadow_status: Option<u16>,
    /// gRPC calls: the shadow's `grpc-status`.
    pub shadow_grpc_status: Option<u64>,
    pub shadow_latency_ms: Option<f64>,
    pub shadow_error: Option<String>,
    pub rows: Option<u64>,
    pub label_agreements: Option<u64>,
    pub label_flips: Option<u64>,
    pub max_abs_error: Option<f64>,
    pub mean_abs_error: Option<f64>,
    /// Generated text (OpenAI-compatible answers) and streaming figures.
    pub text: TextObservation,
}

/// The value at a dotted path; JSON `null` counts as absent.
fn field<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(record, |value, key| value.get(key)).filter(|value| !value.is_null())
}

fn opt_str<'a>(record: &'a Value, path: &'static str) -> Result<Option<&'a str>, RecordError> {
    match field(record, path) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(RecordError::Invalid { field: path, problem: "is not a string".into() }),
    }
}

fn opt_u64(record: &Value, path: &'static str) -> Result<Option<u64>, RecordError> {
    match field(record, path) {
        None => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| RecordError::Invalid {
            field: path,
            problem: format!("is {value}, not a non-negative integer"),
        }),
    }
}

fn opt_status(record: &Value, path: &'static str) -> Result<Option<u16>, RecordError> {
    match opt_u64(record, path)? {
        None => Ok(None),
        Some(status) => {
            u16::try_from(status).ok().filter(|s| (100..1000).contains(s)).map(Some).ok_or_else(|| {
                RecordError::Invalid { field: path, problem: format!("is {status}, not an HTTP status") }
            })
        }
    }
}

pub(super) fn opt_measure(record: &Value, path: &'static str) -> Result<Option<f64>, RecordError> {
    match field(record, path) {
        None => Ok(None),
        Some(value) => value.as_f64().filter(|x| x.is_finite() && *x >= 0.0).map(Some).ok_or_else(|| {
            RecordError::Invalid { field: path, problem: format!("is {value}, not a non-negative number") }
        }),
    }
}

fn required<T>(value: Option<T>, path: &'static str) -> Result<T, RecordError> {
    value.ok_or(RecordError::Missing(path))
}

/// `text` cut to at most [`MAX_KEY_BYTES`] at a character boundary.
fn key_str(text: &str) -> &str {
    let mut end = text.len().min(MAX_KEY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn key(text: &str) -> String {
    key_str(text).to_string()
}

/// The outcome a record's `verdict` (and, when not compared, its `reason`) names.
fn outcome(verdict: &str, reason: Option<&str>) -> Result<Outcome, RecordError> {
    if verdict == "not_compared" {
        return Ok(Outcome::NotCompared(key(reason.unwrap_or("unspecified"))));
    }
    let verdict = Verdict::ALL.into_iter().find(|v| v.as_str() == verdict).ok_or_else(|| {
        RecordError::Invalid { field: "verdict", problem: format!("`{verdict}` is not a known verdict") }
    })?;
    Ok(Outcome::Compared(verdict))
}

/// A typed record's measure as [`opt_measure`] reads it back from its JSON: a non-finite number is
/// written as `null` (absent), a negative one is invalid.
pub(super) fn typed_measure(value: Option<f64>, path: &'static str) -> Result<Option<f64>, RecordError> {
    match value {
        Some(x) if !x.is_finite() => Ok(None),
        Some(x) if x < 0.0 => Err(RecordError::Invalid {
            field: path,
            problem: format!("is {}, not a non-negative number", Value::from(x)),
        }),
        other => Ok(other),
    }
}

/// A typed record's status as [`opt_status`] reads it back.
fn typed_status(status: Option<u16>, path: &'static str) -> Result<Option<u16>, RecordError> {
    match status {
        Some(status) if !(100..1000).contains(&status) => {
            Err(RecordError::Invalid { field: path, problem: format!("is {status}, not an HTTP status") })
        }
        other => Ok(other),
    }
}

impl Observation {
    /// The observation of a comparison record as the daemon builds it, without a trip through
    /// JSON: the same as [`Self::from_record`] of the record's JSON (a test holds them equal), so
    /// the live verdict and `mirror-daemon report` agree, at a fraction of the cost per comparison.
    pub fn from_comparison(record: &ComparisonRecord<'_>) -> Result<Observation, RecordError> {
        let production = &record.exchange.production;
        let shadow = &record.shadow;
        let metrics = record.metrics;
        let shadow_model_id = key(&shadow.model_id);
        let outcome = outcome(record.verdict, record.reason)?;
        Ok(Observation {
            shadow_model_id,
            route: key(record.route),
            outcome,
            production_status: required(
                typed_status(Some(production.status), "production.status")?,
                "production.status",
            )?,
            production_grpc_status: production.grpc.as_ref().map(|g| u64::from(g.grpc_status)),
            production_latency_ms: required(
                typed_measure(Some(production.latency_ms), "production.latency_ms")?,
                "production.latency_ms",
            )?,
            shadow_status: typed_status(shadow.status, "shadow.status")?,
            shadow_grpc_status: shadow.grpc.as_ref().map(|g| u64::from(g.grpc_status)),
            shadow_latency_ms: typed_measure(shadow.latency_ms, "shadow.latency_ms")?,
            shadow_error: shadow.error.as_deref().map(key),
            rows: metrics.map(|m| m.rows),
            label_agreements: metrics.map(|m| m.label_agreements),
            label_flips: metrics.map(|m| m.label_flips),
            max_abs_error: typed_measure(metrics.and_then(|m| m.max_abs_error), "metrics.max_abs_error")?,
            mean_abs_error: typed_measure(metrics.and_then(|m| m.mean_abs_error), "metrics.mean_abs_error")?,
            text: TextObservation::from_comparison(record)?,
        })
    }

    /// Reads one comparison record (README "Exchange records" plus the comparison fields).
    ///
    /// A record without `verdict` is [`RecordError::NotAComparison`]; the others name the field
    /// that is missing or wrong.
    pub fn from_record(record: &Value) -> Result<Observation, RecordError> {
        if !record.is_object() {
            return Err(RecordError::NotAnObject);
        }
        let verdict = opt_str(record, "verdict")?.ok_or(RecordError::NotAComparison)?;
        let shadow_model_id = key(required(opt_str(record, "shadow.model_id")?, "shadow.model_id")?);
        let reason = if verdict == "not_compared" { opt_str(record, "reason")? } else { None };
        let outcome = outcome(verdict, reason)?;
        let route = match opt_str(record, "route")? {
            Some(route) => key(route),
            None => {
                let method = required(opt_str(record, "method")?, "route")?;
                let path = required(opt_str(record, "path")?, "route")?;
                key(&format!("{method} {path}"))
            }
        };
        Ok(Observation {
            shadow_model_id,
            route,
            outcome,
            production_status: required(opt_status(record, "production.status")?, "production.status")?,
            production_grpc_status: opt_u64(record, "production.grpc_status")?,
            production_latency_ms: required(
                opt_measure(record, "production.latency_ms")?,
                "production.latency_ms",
            )?,
            shadow_status: opt_status(record, "shadow.status")?,
            shadow_grpc_status: opt_u64(record, "shadow.grpc_status")?,
            shadow_latency_ms: opt_measure(record, "shadow.latency_ms")?,
            shadow_error: opt_str(record, "shadow.error")?.map(key),
            rows: opt_u64(record, "metrics.rows")?,
            label_agreements: opt_u64(record, "metrics.label_agreements")?,
            label_flips: opt_u64(record, "metrics.label_flips")?,
            max_abs_error: opt_measure(record, "metrics.max_abs_error")?,
            mean_abs_error: opt_measure(record, "metrics.mean_abs_error")?,
            text: TextObservation::from_record(record)?,
        })
    }
}

fn is_2xx(status: u16) -> bool {
    (200..300).contains(&status)
}

/// An answer failed: a non-2xx HTTP status, or a gRPC call whose status is not OK.
fn failed(status: u16, grpc_status: Option<u64>) -> bool {
    !is_2xx(status) || grpc_status.is_some_and(|code| code != 0)
}

/// Nearest-rank position (1-based) of quantile `q` among `n` values.
fn rank(q: f64, n: u64) -> u64 {
    ((q * n as f64).ceil() as u64).clamp(1, n)
}

/// Non-negative latencies in µs, fixed size.
#[derive(Clone, Debug)]
pub(super) struct LatencyHistogram(Histogram<u64>);

impl LatencyHistogram {
    pub(super) fn new() -> Self {
        Self(
            Histogram::new_with_bounds(1, MAX_LATENCY_US, LATENCY_SIGFIG).expect("constant bounds are valid"),
        )
    }

    pub(super) fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.min(MAX_LATENCY_US));
    }

    /// `count` values of `us` at once.
    pub(super) fn record_us_n(&mut self, us: u64, count: u64) {
        self.0.saturating_record_n(us.min(MAX_LATENCY_US), count);
    }

    fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `rank`-th smallest value (1-based) in µs, as the middle of its histogram bucket.
    fn value_at_rank(&self, rank: u64) -> Option<u64> {
        let mut seen = 0;
        for step in self.0.iter_recorded() {
            seen += step.count_at_value();
            if seen >= rank {
                return Some(self.0.median_equivalent(step.value_iterated_to()));
            }
        }
        None
    }

    pub(super) fn bytes(&self) -> usize {
        self.0.distinct_values() * size_of::<u64>()
    }
}

pub(super) fn ms_to_us(ms: f64) -> u64 {
    // Saturating float-to-int conversion; callers pass finite values.
    (ms * 1_000.0).round().abs() as u64
}

fn us_to_ms(us: i128) -> f64 {
    us as f64 / 1_000.0
}

/// p50, p95 and p99 of a set of latencies or latency differences, in ms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Quantiles {
    /// How many values the quantiles are over.
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Latencies that may be negative (paired differences): one histogram per sign.
#[derive(Clone, Debug)]
pub(super) struct SignedHistogram {
    negative: LatencyHistogram,
    non_negative: LatencyHistogram,
}

impl SignedHistogram {
    pub(super) fn new() -> Self {
        Self { negative: LatencyHistogram::new(), non_negative: LatencyHistogram::new() }
    }

    pub(super) fn record_ms(&mut self, ms: f64) {
        if ms < 0.0 {
            self.negative.record_us(ms_to_us(ms));
        } else {
            self.non_negative.record_us(ms_to_us(ms));
        }
    }

    fn count(&self) -> u64 {
        self.negative.count() + self.non_negative.count()
    }

    /// The `rank`-th smallest value (1-based) in µs.
    fn value_at_rank(&self, rank: u64) -> Option<i128> {
        let negatives = self.negative.count();
        if rank <= negatives {
            // Ascending order starts with the largest magnitude among the negatives.
            self.negative.value_at_rank(negatives - rank + 1).map(|us| -i128::from(us))
        } else {
            self.non_negative.value_at_rank(rank - negatives).map(i128::from)
        }
    }

    pub(super) fn quantiles(&self) -> Option<Quantiles> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let at = |q| self.value_at_rank(rank(q, n)).map(us_to_ms);
        Some(Quantiles { count: n, p50: at(0.5)?, p95: at(0.95)?, p99: at(0.99)? })
    }

    pub(super) fn bytes(&self) -> usize {
        self.negative.bytes() + self.non_negative.bytes()
    }
}

impl LatencyHistogram {
    pub(super) fn quantiles(&self) -> Option<Quantiles> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let at = |q| self.value_at_rank(rank(q, n)).map(|us| us_to_ms(i128::from(us)));
        Some(Quantiles { count: n, p50: at(0.5)?, p95: at(0.95)?, p99: at(0.99)? })
    }
}

/// Running totals for one group of observations (a shadow, or a shadow's route).
#[derive(Clone, Debug)]
struct Group {
    observations: u64,
    verdicts: [u64; Verdict::ALL.len()],
    not_compared: u64,
    reasons: BTreeMap<String, u64>,
    rows: u64,
    label_agreements: u64,
    label_flips: u64,
    max_abs_error: Option<f64>,
    mean_abs_error_sum: f64,
    mean_abs_error_count: u64,
    production_latency: LatencyHistogram,
    shadow_latency: LatencyHistogram,
    difference: SignedHistogram,
    production_errors: u64,
    shadow_failures: u64,
    /// Allocated at the first observation with generated text (nine more histograms).
    text: Option<Box<TextGroup>>,
}

impl Group {
    fn new() -> Self {
        Self {
            observations: 0,
            verdicts: [0; Verdict::ALL.len()],
            not_compared: 0,
            reasons: BTreeMap::new(),
            rows: 0,
            label_agreements: 0,
            label_flips: 0,
            max_abs_error: None,
            mean_abs_error_sum: 0.0,
            mean_abs_error_count: 0,
            production_latency: LatencyHistogram::new(),
            shadow_latency: LatencyHistogram::new(),
            difference: SignedHistogram::new(),
            production_errors: 0,
            shadow_failures: 0,
            text: None,
        }
    }

    fn add(&mut self, o: &Observation) {
        self.observations += 1;
        let verdict = match &o.outcome {
            Outcome::NotCompared(reason) => {
                self.not_compared += 1;
                let reason = key_str(reason);
                let reason = if self.reasons.len() < MAX_REASONS || self.reasons.contains_key(reason) {
                    reason
                } else {
                    "other"
                };
                match self.reasons.get_mut(reason) {
                    Some(count) => *count += 1,
                    None => {
                        self.reasons.insert(reason.to_string(), 1);
                    }
                }
                return;
            }
            Outcome::Compared(verdict) => *verdict,
        };
        if let Some(i) = Verdict::ALL.iter().position(|v| *v == verdict) {
            self.verdicts[i] += 1;
        }
        self.rows += o.rows.unwrap_or(0);
        self.label_agreements += o.label_agreements.unwrap_or(0);
        self.label_flips += o.label_flips.unwrap_or(0);
        if let Some(max) = o.max_abs_error {
            self.max_abs_error = Some(self.max_abs_error.map_or(max, |m| m.max(max)));
        }
        if let Some(mean) = o.mean_abs_error {
            self.mean_abs_error_sum += mean;
            self.mean_abs_error_count += 1;
        }
        if o.text != TextObservation::default() {
            self.text.get_or_insert_with(|| Box::new(TextGroup::new())).add(&o.text);
        }
        self.production_latency.record_us(ms_to_us(o.production_latency_ms));
        if let Some(shadow) = o.shadow_latency_ms {
            self.shadow_latency.record_us(ms_to_us(shadow));
            self.difference.record_ms(shadow - o.production_latency_ms);
        }
        if failed(o.production_status, o.production_grpc_status) {
            self.production_errors += 1;
        }
        let shadow_failed = matches!(verdict, Verdict::ShadowError | Verdict::ShadowTimeout)
            || o.shadow_status.is_some_and(|s| failed(s, o.shadow_grpc_status));
        if shadow_failed {
            self.shadow_failures += 1;
        }
    }

    fn count(&self, verdict: Verdict) -> u64 {
        Verdict::ALL.iter().position(|v| *v == verdict).map_or(0, |i| self.verdicts[i])
    }

    fn bytes(&self) -> usize {
        size_of::<Self>()
            + self.production_latency.bytes()
            + self.shadow_latency.bytes()
            + self.difference.bytes()
            + self.text.as_ref().map_or(0, |t| t.bytes())
            + self.reasons.keys().map(|k| k.len() + size_of::<(String, u64)>()).sum::<usize>()
    }

    fn stats(&self) -> Stats {
        let comparisons: u64 = self.verdicts.iter().sum();
        let agreed = self.count(Verdict::Match) + self.count(Verdict::WithinTolerance);
        let answered = agreed + self.count(Verdict::Mismatch);
        let rate = |count: u64| (comparisons > 0).then(|| count as f64 / comparisons as f64);
        let production_latency_ms = self.production_latency.quantiles();
        let shadow_latency_ms = self.shadow_latency.quantiles();
        let p99_latency_ratio = match (production_latency_ms, shadow_latency_ms) {
            (Some(production), Some(shadow)) if production.p99 > 0.0 => Some(shadow.p99 / production.p99),
            _ => None,
        };
        let shadow_failure_rate = rate(self.shadow_failures);
        let production_error_rate = rate(self.production_errors);
        Stats {
            observations: self.observations,
            comparisons,
            verdicts: VerdictCounts {
                matched: self.count(Verdict::Match),
                within_tolerance: self.count(Verdict::WithinTolerance),
                mismatch: self.count(Verdict::Mismatch),
                shadow_error: self.count(Verdict::ShadowError),
                shadow_timeout: self.count(Verdict::ShadowTimeout),
            },
            not_compared: self.not_compared,
            not_compared_reasons: self.reasons.clone(),
            agreement: Proportion::new(agreed, answered),
            rows: self.rows,
            label_agreements: self.label_agreements,
            label_flips: self.label_flips,
            label_flip_rate: (self.rows > 0).then(|| self.label_flips as f64 / self.rows as f64),
            max_abs_error: self.max_abs_error,
            mean_abs_error: (self.mean_abs_error_count > 0)
                .then(|| self.mean_abs_error_sum / self.mean_abs_error_count as f64),
            production_latency_ms,
            shadow_latency_ms,
            latency_difference_ms: self.difference.quantiles(),
            p99_latency_ratio,
            shadow_error_rate: rate(self.count(Verdict::ShadowError)),
            shadow_timeout_rate: rate(self.count(Verdict::ShadowTimeout)),
            production_error_rate,
            shadow_failure_rate,
            error_rate_increase: shadow_failure_rate.zip(production_error_rate).map(|(s, p)| s - p),
            text: self.text.as_ref().and_then(|t| t.stats()),
        }
    }
}

/// Comparisons per verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerdictCounts {
    #[serde(rename = "match")]
    pub matched: u64,
    pub within_tolerance: u64,
    pub mismatch: u64,
    pub shadow_error: u64,
    pub shadow_timeout: u64,
}

/// Everything known about one group of observations. Rates are `None` when their denominator is
/// zero; rates are fractions (0.01 = 1%).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// Records seen, compared or not.
    pub observations: u64,
    /// Records with a comparison verdict (not `not_compared`): the denominator of the error rates.
    pub comparisons: u64,
    pub verdicts: VerdictCounts,
    pub not_compared: u64,
    pub not_compared_reasons: BTreeMap<String, u64>,
    /// (match + within_tolerance) / (match + within_tolerance + mismatch), with its 95% interval.
    pub agreement: Option<Proportion>,
    pub rows: u64,
    pub label_agreements: u64,
    pub label_flips: u64,
    /// label_flips / rows.
    pub label_flip_rate: Option<f64>,
    /// Largest `max_abs_error` of any comparison.
    pub max_abs_error: Option<f64>,
    /// Mean over comparisons of their `mean_abs_error`.
    pub mean_abs_error: Option<f64>,
    pub production_latency_ms: Option<Quantiles>,
    pub shadow_latency_ms: Option<Quantiles>,
    /// Quantiles of shadow − production latency, paired per comparison.
    pub latency_difference_ms: Option<Quantiles>,
    /// Shadow p99 / production p99.
    pub p99_latency_ratio: Option<f64>,
    /// `shadow_error` verdicts / comparisons.
    pub shadow_error_rate: Option<f64>,
    /// `shadow_timeout` verdicts / comparisons.
    pub shadow_timeout_rate: Option<f64>,
    /// Non-2xx production answers / comparisons.
    pub production_error_rate: Option<f64>,
    /// (shadow_error or shadow_timeout verdict, or a non-2xx or non-OK gRPC shadow status) / comparisons.
    pub shadow_failure_rate: Option<f64>,
    /// shadow_failure_rate − production_error_rate.
    pub error_rate_increase: Option<f64>,
    /// Generated text and streaming figures, for groups with OpenAI-compatible answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextStats>,
}

/// One route of one shadow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteSummary {
    pub route: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// One shadow model: its totals and its routes (busiest first).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShadowSummary {
    pub model_id: String,
    #[serde(flatten)]
    pub stats: Stats,
    pub routes: Vec<RouteSummary>,
}

impl ShadowSummary {
    /// A shadow with no observation yet (configured, but nothing replayed to it so far).
    pub fn empty(model_id: &str) -> Self {
        Self { model_id: key(model_id), stats: Group::new().stats(), routes: Vec::new() }
    }
}

/// Every shadow model, in model-id order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub shadows: Vec<ShadowSummary>,
    /// Observations of shadows beyond [`Limits::max_shadows`], not aggregated.
    pub untracked_observations: u64,
}

/// Caps on the keys taken from the input (see the module docs for the memory they imply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_shadows: usize,
    pub max_routes_per_shadow: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_shadows: 16, max_routes_per_shadow: 32 }
    }
}

#[derive(Clone, Debug)]
struct ShadowGroups {
    total: Group,
    routes: BTreeMap<String, Group>,
}

/// Accumulates [`Observation`]s into per-shadow and per-route statistics in bounded memory.
#[derive(Clone, Debug, Default)]
pub struct Aggregator {
    limits: Limits,
    shadows: BTreeMap<String, ShadowGroups>,
    untracked: u64,
}

impl Aggregator {
    /// An aggregator with other limits than the defaults.
    pub fn with_limits(limits: Limits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// Adds one observation (O(1) in time and memory once its shadow and route are known).
    pub fn add(&mut self, observation: &Observation) {
        let id = key_str(&observation.shadow_model_id);
        if !self.shadows.contains_key(id) {
            if self.shadows.len() >= self.limits.max_shadows {
                self.untracked += 1;
                return;
            }
            self.shadows
                .insert(id.to_string(), ShadowGroups { total: Group::new(), routes: BTreeMap::new() });
        }
        let Some(shadow) = self.shadows.get_mut(id) else { return };
        shadow.total.add(observation);
        let route = key_str(&observation.route);
        let route =
            if shadow.routes.contains_key(route) || shadow.routes.len() < self.limits.max_routes_per_shadow {
                route
            } else {
                OTHER_ROUTES
            };
        match shadow.routes.get_mut(route) {
            Some(group) => group.add(observation),
            None => shadow.routes.entry(route.to_string()).or_insert_with(Group::new).add(observation),
        }
    }

    /// Observations added, including untracked ones.
    pub fn observations(&self) -> u64 {
        self.untracked + self.shadows.values().map(|s| s.total.observations).sum::<u64>()
    }

    /// Approximate heap and inline size in bytes; bounded by the [`Limits`] (module docs).
    pub fn footprint_bytes(&self) -> usize {
        size_of::<Self>()
            + self
                .shadows
                .iter()
                .map(|(id, s)| {
                    id.len()
                        + s.total.bytes()
                        + s.routes.iter().map(|(route, g)| route.len() + g.bytes()).sum::<usize>()
                })
                .sum::<usize>()
    }

    /// The statistics so far.
    pub fn summary(&self) -> Summary {
        let shadows = self
            .shadows
            .iter()
            .map(|(id, groups)| {
                let mut routes: Vec<RouteSummary> = groups
                    .routes
                    .iter()
                    .map(|(route, g)| RouteSummary { route: route.clone(), stats: g.stats() })
                    .collect();
                routes.sort_by_key(|r| std::cmp::Reverse(r.stats.observations));
                ShadowSummary { model_id: id.clone(), stats: groups.total.stats(), routes }
            })
            .collect();
        Summary { shadows, untracked_observations: self.untracked }
    }
}

/// Displays milliseconds with about three significant digits (`{:+}` adds the sign).
#[derive(Clone, Copy, Debug)]
pub struct Ms(pub f64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let magnitude = self.0.abs();
        let decimals = if magnitude >= 100.0 {
            0
        } else if magnitude >= 10.0 {
            1
        } else {
            2
        };
        if f.sign_plus() && self.0 >= 0.0 {
            write!(f, "+{:.*}", decimals, self.0)
        } else {
            write!(f, "{:.*}", decimals, self.0)
        }
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "n/a".into(), |r| format!("{:.2}%", r * 100.0))
}

fn quantiles_line(q: Option<Quantiles>, signed: bool) -> String {
    match q {
        None => "n/a".into(),
        Some(q) if signed => format!("p50 {:+} p95 {:+} p99 {:+}", Ms(q.p50), Ms(q.p95), Ms(q.p99)),
        Some(q) => format!("p50 {} p95 {} p99 {}", Ms(q.p50), Ms(q.p95), Ms(q.p99)),
    }
}

/// `text` shortened to `width` characters with a trailing ellipsis.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

/// The generated-text lines of a shadow's summary.
fn write_text(f: &mut fmt::Formatter<'_>, t: &TextStats) -> fmt::Result {
    match t.exact_match {
        Some(e) => write!(
            f,
            "  text        exact {:.3} (95% CI {:.3}–{:.3}) over {}",
            e.rate, e.low, e.high, e.trials
        )?,
        None => write!(f, "  text        exact n/a")?,
    }
    match t.similarity {
        Some(s) => writeln!(f, "   similarity mean {:.3} p10 {:.2} p50 {:.2}", s.mean, s.p10, s.p50)?,
        None => writeln!(f)?,
    }
    if let Some(cut) = t.cut_short() {
        writeln!(f, "  streams     cut short or failed: {cut}")?;
    }
    for (name, figure) in [("ttft", &t.ttft_ms), ("tpot", &t.tpot_ms), ("itl", &t.itl_ms), ("e2e", &t.e2e_ms)]
    {
        if figure.production.is_none() && figure.shadow.is_none() {
            continue;
        }
        let ratio = figure.p99_ratio.map_or(String::new(), |r| format!("   (p99 ratio {r:.2})"));
        writeln!(
            f,
            "  {name:<4} ms     production  {}\n              shadow      {}{ratio}\n              difference  {}",
            quantiles_line(figure.production, false),
            quantiles_line(figure.shadow, false),
            quantiles_line(figure.difference, true),
        )?;
    }
    Ok(())
}

impl fmt::Display for ShadowSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(f, "shadow {}: {} comparisons", self.model_id, s.comparisons)?;
        if s.not_compared > 0 {
            let reasons: Vec<String> =
                s.not_compared_reasons.iter().map(|(r, n)| format!("{r}={n}")).collect();
            write!(f, ", {} not compared ({})", s.not_compared, reasons.join(" "))?;
        }
        writeln!(f)?;
        let v = &s.verdicts;
        writeln!(
            f,
            "  verdicts    match={} within_tolerance={} mismatch={} shadow_error={} shadow_timeout={}",
            v.matched, v.within_tolerance, v.mismatch, v.shadow_error, v.shadow_timeout
        )?;
        match s.agreement {
            Some(a) => writeln!(
                f,
                "  agreement   {:.3} (95% CI {:.3}–{:.3}) over {} answered by both",
                a.rate, a.low, a.high, a.trials
            )?,
            None => writeln!(f, "  agreement   n/a (no comparison answered by both)")?,
        }
        let numeric = match (s.max_abs_error, s.mean_abs_error) {
            (None, None) => "n/a".to_string(),
            (max, mean) => format!(
                "max {} mean {}",
                max.map_or("n/a".into(), |x| format!("{x:.3e}")),
                mean.map_or("n/a".into(), |x| format!("{x:.3e}"))
            ),
        };
        writeln!(
            f,
            "  labels      {} flips in {} rows ({})   abs error {numeric}",
            s.label_flips,
            s.rows,
            percent(s.label_flip_rate)
        )?;
        writeln!(f, "  latency ms  production  {}", quantiles_line(s.production_latency_ms, false))?;
        let ratio = s.p99_latency_ratio.map_or(String::new(), |r| format!("   (p99 ratio {r:.2})"));
        writeln!(f, "              shadow      {}{ratio}", quantiles_line(s.shadow_latency_ms, false))?;
        writeln!(
            f,
            "              difference  {}   (shadow − production, paired)",
            quantiles_line(s.latency_difference_ms, true)
        )?;
        if let Some(t) = &s.text {
            write_text(f, t)?;
        }
        writeln!(
            f,
            "  errors      shadow {}  timeouts {}  production errors {}  increase {}",
            percent(s.shadow_error_rate),
            percent(s.shadow_timeout_rate),
            percent(s.production_error_rate),
            s.error_rate_increase.map_or("n/a".into(), |d| format!("{:+.2} pp", d * 100.0)),
        )?;
        writeln!(
            f,
            "  {:<36} {:>8} {:>6} {:>13} {:>17} {:>9}",
            "route", "compared", "agree", "95% CI", "p99 prod/shadow", "err +pp"
        )?;
        for route in &self.routes {
            let r = &route.stats;
            let (agree, ci) = match r.agreement {
                Some(a) => (format!("{:.3}", a.rate), format!("{:.3}–{:.3}", a.low, a.high)),
                None => ("n/a".into(), "n/a".into()),
            };
            let p99 = |q: Option<Quantiles>| q.map_or("n/a".to_string(), |q| Ms(q.p99).to_string());
            let p99 = format!("{}/{}", p99(r.production_latency_ms), p99(r.shadow_latency_ms));
            let increase = r.error_rate_increase.map_or("n/a".into(), |d| format!("{:+.2}", d * 100.0));
            writeln!(
                f,
                "    {:<34} {:>8} {agree:>6} {ci:>13} {p99:>17} {increase:>9}",
                fit(&route.route, 34),
                r.comparisons
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shadows.is_empty() {
            writeln!(f, "no comparisons")?;
        }
        for (i, shadow) in self.shadows.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{shadow}")?;
        }
        if self.untracked_observations > 0 {
            writeln!(
                f,
                "{} observations of further shadows were not aggregated",
                self.untracked_observations
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance
    }

    /// A comparison of `shadow` on `route` with the given verdict and latencies.
    fn obs(verdict: Verdict, production_ms: f64, shadow_ms: Option<f64>) -> Observation {
        Observation {
            shadow_model_id: "model-v2".into(),
            route: "POST /v2/models/demo/infer".into(),
            outcome: Outcome::Compared(verdict),
            production_status: 200,
            production_grpc_status: None,
            production_latency_ms: production_ms,
            shadow_status: shadow_ms.map(|_| 200),
            shadow_grpc_status: None,
            shadow_latency_ms: shadow_ms,
            shadow_error: None,
            rows: Some(4),
            label_agreements: Some(4),
            label_flips: Some(0),
            max_abs_error: Some(0.001),
            mean_abs_error: Some(0.0005),
            text: Default::default(),
        }
    }

    fn record() -> Value {
        json!({
            "schema": 1,
            "method": "POST",
            "path": "/v2/models/demo/infer",
            "route": "POST /v2/models/demo/infer",
            "production": {"status": 200, "latency_ms": 4.5, "bytes": 10, "sha256": "ab"},
            "production_model": {"model_id": "model-v1", "version": "1.0.0"},
            "shadow": {"model_id": "model-v2", "version": "1.0.0", "endpoint": "http://shadow:8080",
                       "status": 200, "bytes": 12, "sha256": "cd", "latency_ms": 5.25, "error": null},
            "verdict": "mismatch",
            "protocol": "oip",
            "diff_count": 1,
            "diffs": [{"pointer": "/outputs/0/data/3", "production": 0.1, "shadow": 0.2}],
            "metrics": {"rows": 4, "label_agreements": 3, "label_flips": 1,
                        "max_abs_error": 0.1, "mean_abs_error": 0.025}
        })
    }

    #[test]
    fn wilson_matches_reference_values() {
        // Reference: statsmodels proportion_confint(count, nobs, method="wilson").
        let i = wilson_interval(95, 100, Z_95).unwrap();
        assert!(close(i.low, 0.88826, 1e-4) && close(i.high, 0.97846, 1e-4), "{i:?}");
        let i = wilson_interval(0, 10, Z_95).unwrap();
        assert!(i.low == 0.0 && close(i.high, 0.27753, 1e-4), "{i:?}");
        let i = wilson_interval(10, 10, Z_95).unwrap();
        assert!(close(i.low, 0.72247, 1e-4) && i.high == 1.0, "{i:?}");
        let i = wilson_interval(50, 100, Z_95).unwrap();
        assert!(close(i.low, 0.40383, 1e-4) && close(i.high, 0.59617, 1e-4), "{i:?}");
        assert_eq!(wilson_interval(0, 0, Z_95), None);
        let p = Proportion::new(95, 100).unwrap();
        assert_eq!((p.successes, p.trials, p.rate), (95, 100, 0.95));
    }

    #[test]
    fn latency_quantiles_are_within_one_percent() {
        let mut agg = Aggregator::default();
        for ms in 1..=100 {
            agg.add(&obs(Verdict::Match, ms as f64, Some(2.0 * ms as f64)));
        }
        let s = agg.summary().shadows[0].stats.clone();
        let production = s.production_latency_ms.unwrap();
        assert_eq!(production.count, 100);
        assert!(close(production.p50, 50.0, 0.5), "{production:?}");
        assert!(close(production.p95, 95.0, 0.95), "{production:?}");
        assert!(close(production.p99, 99.0, 0.99), "{production:?}");
        let shadow = s.shadow_latency_ms.unwrap();
        assert!(close(shadow.p99, 198.0, 1.98), "{shadow:?}");
        assert!(close(s.p99_latency_ratio.unwrap(), 2.0, 0.03), "{:?}", s.p99_latency_ratio);
        // Sub-millisecond latencies are exact (µs resolution below 256 µs).
        let mut agg = Aggregator::default();
        agg.add(&obs(Verdict::Match, 0.099, Some(0.25)));
        let s = agg.summary().shadows[0].stats.clone();
        assert_eq!(s.production_latency_ms.unwrap().p50, 0.099);
        assert_eq!(s.latency_difference_ms.unwrap().p99, 0.151);
    }

    #[test]
    fn paired_differences_keep_their_sign() {
        let mut agg = Aggregator::default();
        // Shadow faster by 1..=90 ms on 90 requests, slower by 10 ms on 10.
        for i in 1..=90 {
            agg.add(&obs(Verdict::Match, 100.0, Some(100.0 - i as f64)));
        }
        for _ in 0..10 {
            agg.add(&obs(Verdict::Match, 100.0, Some(110.0)));
        }
        let d = agg.summary().shadows[0].stats.latency_difference_ms.unwrap();
        assert_eq!(d.count, 100);
        // Ascending: -90, -89, ..., -1, then ten +10. Rank 50 is -41, rank 95 and 99 are +10.
        assert!(close(d.p50, -41.0, 0.41), "{d:?}");
        assert!(close(d.p95, 10.0, 0.1), "{d:?}");
        assert!(close(d.p99, 10.0, 0.1), "{d:?}");
        // All negative: the quantiles are the most negative first.
        let mut agg = Aggregator::default();
        for i in 1..=100 {
            agg.add(&obs(Verdict::Match, 200.0, Some(200.0 - i as f64)));
        }
        let d = agg.summary().shadows[0].stats.latency_difference_ms.unwrap();
        assert!(close(d.p50, -51.0, 0.51) && close(d.p99, -2.0, 0.02), "{d:?}");
    }

    #[test]
    fn rates_follow_their_definitions() {
        let mut agg = Aggregator::default();
        for _ in 0..6 {
            agg.add(&obs(Verdict::Match, 1.0, Some(1.0)));
        }
        agg.add(&obs(Verdict::WithinTolerance, 1.0, Some(1.0)));
        let mut flipped = obs(Verdict::Mismatch, 1.0, Some(1.0));
        flipped.label_flips = Some(2);
        flipped.max_abs_error = Some(0.5);
        flipped.mean_abs_error = Some(0.2505);
        agg.add(&flipped);
        let mut error = obs(Verdict::ShadowError, 1.0, Some(1.0));
        error.shadow_status = Some(503);
        agg.add(&error);
        agg.add(&obs(Verdict::ShadowTimeout, 1.0, None));
        let mut production_failed = obs(Verdict::Match, 1.0, Some(1.0));
        production_failed.production_status = 500;
        production_failed.shadow_status = Some(500);
        agg.add(&production_failed);
        let mut sampled = obs(Verdict::Match, 1.0, None);
        sampled.outcome = Outcome::NotCompared("sampled_out".into());
        agg.add(&sampled);

        let s = agg.summary().shadows[0].stats.clone();
        assert_eq!((s.observations, s.comparisons, s.not_compared), (12, 11, 1));
        assert_eq!(s.not_compared_reasons.get("sampled_out"), Some(&1));
        assert_eq!(s.verdicts.matched, 7);
        let a = s.agreement.unwrap();
        assert_eq!((a.successes, a.trials), (8, 9));
        assert_eq!(s.shadow_error_rate, Some(1.0 / 11.0));
        assert_eq!(s.shadow_timeout_rate, Some(1.0 / 11.0));
        assert_eq!(s.production_error_rate, Some(1.0 / 11.0));
        // shadow_error, shadow_timeout and the shadow's 500.
        assert_eq!(s.shadow_failure_rate, Some(3.0 / 11.0));
        assert!(close(s.error_rate_increase.unwrap(), 2.0 / 11.0, 1e-12));
        assert_eq!((s.rows, s.label_flips), (44, 2));
        assert_eq!(s.label_flip_rate, Some(2.0 / 44.0));
        assert_eq!(s.max_abs_error, Some(0.5));
        // Ten comparisons with 0.0005 and one with 0.2505.
        assert!(close(s.mean_abs_error.unwrap(), 0.0232272727, 1e-9), "{:?}", s.mean_abs_error);
    }

    #[test]
    fn grpc_calls_fail_by_their_grpc_status() {
        let mut agg = Aggregator::default();
        let mut ok = obs(Verdict::Match, 1.0, Some(1.0));
        (ok.production_grpc_status, ok.shadow_grpc_status) = (Some(0), Some(0));
        agg.add(&ok);
        // HTTP 200 both sides, but production's call failed with INVALID_ARGUMENT and so did the
        // shadow's; then a call only the shadow failed.
        let mut both = obs(Verdict::Match, 1.0, Some(1.0));
        (both.production_grpc_status, both.shadow_grpc_status) = (Some(3), Some(3));
        agg.add(&both);
        let mut shadow_only = obs(Verdict::ShadowError, 1.0, Some(1.0));
        (shadow_only.production_grpc_status, shadow_only.shadow_grpc_status) = (Some(0), Some(14));
        agg.add(&shadow_only);
        let s = agg.summary().shadows[0].stats.clone();
        assert_eq!(s.production_error_rate, Some(1.0 / 3.0));
        assert_eq!(s.shadow_failure_rate, Some(2.0 / 3.0));
        let record = serde_json::json!({
            "verdict": "match", "route": "POST /pkg.Svc/M", "shadow": {"model_id": "m2", "grpc_status": 5},
            "production": {"status": 200, "latency_ms": 1.0, "grpc_status": 5}
        });
        let o = Observation::from_record(&record).unwrap();
        assert_eq!((o.production_grpc_status, o.shadow_grpc_status), (Some(5), Some(5)));
    }

    #[test]
    fn parses_a_comparison_record() {
        let o = Observation::from_record(&record()).unwrap();
        assert_eq!(o.shadow_model_id, "model-v2");
        assert_eq!(o.route, "POST /v2/models/demo/infer");
        assert_eq!(o.outcome, Outcome::Compared(Verdict::Mismatch));
        assert_eq!((o.production_status, o.production_latency_ms), (200, 4.5));
        assert_eq!((o.shadow_status, o.shadow_latency_ms, o.shadow_error), (Some(200), Some(5.25), None));
        assert_eq!((o.rows, o.label_agreements, o.label_flips), (Some(4), Some(3), Some(1)));
        assert_eq!((o.max_abs_error, o.mean_abs_error), (Some(0.1), Some(0.025)));

        let mut r = record();
        r["verdict"] = json!("not_compared");
        r["reason"] = json!("queue_full");
        r["shadow"]["status"] = Value::Null;
        r["shadow"]["latency_ms"] = Value::Null;
        r.as_object_mut().unwrap().remove("metrics");
        r.as_object_mut().unwrap().remove("route");
        let o = Observation::from_record(&r).unwrap();
        assert_eq!(o.outcome, Outcome::NotCompared("queue_full".into()));
        assert_eq!(o.route, "POST /v2/models/demo/infer", "falls back to method and path");
        assert_eq!((o.shadow_status, o.rows, o.max_abs_error), (None, None, None));

        let mut r = record();
        r["shadow"]["error"] = json!("timeout");
        r["verdict"] = json!("shadow_timeout");
        let o = Observation::from_record(&r).unwrap();
        assert_eq!(o.shadow_error.as_deref(), Some("timeout"));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let without = |path: &[&str]| {
            let mut r = record();
            let (last, parents) = path.split_last().unwrap();
            let mut object = &mut r;
            for p in parents {
                object = &mut object[*p];
            }
            object.as_object_mut().unwrap().remove(*last);
            Observation::from_record(&r).unwrap_err()
        };
        assert_eq!(without(&["verdict"]), RecordError::NotAComparison);
        assert_eq!(without(&["shadow", "model_id"]), RecordError::Missing("shadow.model_id"));
        assert_eq!(without(&["production", "status"]), RecordError::Missing("production.status"));
        assert_eq!(without(&["production", "latency_ms"]), RecordError::Missing("production.latency_ms"));
        assert!(without(&["production", "latency_ms"]).to_string().contains("production.latency_ms"));

        let with = |path: &[&str], value: Value| {
            let mut r = record();
            let mut slot = &mut r;
            for p in path {
                slot = &mut slot[*p];
            }
            *slot = value;
            Observation::from_record(&r).unwrap_err()
        };
        let e = with(&["verdict"], json!("banana"));
        assert!(e.to_string().contains("verdict") && e.to_string().contains("banana"), "{e}");
        let e = with(&["shadow", "latency_ms"], json!(-3.0));
        assert!(matches!(e, RecordError::Invalid { field: "shadow.latency_ms", .. }), "{e}");
        let e = with(&["production", "status"], json!(70000));
        assert!(matches!(e, RecordError::Invalid { field: "production.status", .. }), "{e}");
        let e = with(&["metrics", "rows"], json!("four"));
        assert!(matches!(e, RecordError::Invalid { field: "metrics.rows", .. }), "{e}");
        assert_eq!(Observation::from_record(&json!([1, 2])).unwrap_err(), RecordError::NotAnObject);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut agg = Aggregator::default();
        let mut o = obs(Verdict::Match, 1.0, Some(1.0));
        for i in 0..1_000u32 {
            o.production_latency_ms = f64::from(i % 5_000) * 0.731;
            agg.add(&o);
        }
        let settled = agg.footprint_bytes();
        for i in 0..1_000_000u32 {
            o.production_latency_ms = f64::from(i % 50_000) * 0.731;
            o.shadow_latency_ms = Some(f64::from(i % 7_919) * 3.3);
            o.route = format!("POST /route/{}", i % 10);
            agg.add(&o);
        }
        assert_eq!(agg.observations(), 1_001_000);
        // The shadow's totals and eleven routes (the first and ten more): twelve groups where there
        // were two; histograms do not grow with the number of observations.
        let per_group = settled / 2;
        assert!(agg.footprint_bytes() <= per_group * 12 + 4096, "{} vs {settled}", agg.footprint_bytes());
        assert!(agg.footprint_bytes() < 2 << 20, "{}", agg.footprint_bytes());

        // Adversarial keys: every observation a new shadow, route and reason, with long names.
        let limits = Limits { max_shadows: 4, max_routes_per_shadow: 8 };
        let mut agg = Aggregator::with_limits(limits);
        let long = "x".repeat(10_000);
        for i in 0..100_000u32 {
            let mut o = obs(Verdict::Match, 1.0, Some(1.0));
            o.shadow_model_id = format!("shadow-{}", i % 7);
            o.route = format!("GET /items/{i}{long}");
            if i % 2 == 0 {
                o.outcome = Outcome::NotCompared(format!("reason-{i}"));
            }
            agg.add(&o);
        }
        let summary = agg.summary();
        assert_eq!(summary.shadows.len(), 4);
        assert!(summary.shadows.iter().all(|s| s.routes.len() == 9), "8 routes and the rest");
        assert!(summary.shadows.iter().all(|s| s.routes.iter().any(|r| r.route == OTHER_ROUTES)));
        assert!(summary.shadows.iter().all(|s| s.stats.not_compared_reasons.len() == MAX_REASONS + 1));
        assert!(summary.untracked_observations > 0);
        assert_eq!(agg.observations(), 100_000);
        // 4 shadows × 10 groups of four histograms.
        assert!(agg.footprint_bytes() < 40 * 4 * 30_000, "{}", agg.footprint_bytes());
    }

    #[test]
    fn keys_are_cut_at_a_character_boundary() {
        let k = key(&"é".repeat(200));
        assert!(k.len() <= MAX_KEY_BYTES && k.chars().all(|c| c == 'é'));
    }

    #[test]
    fn rendering_shows_the_key_numbers() {
        let mut agg = Aggregator::default();
        for i in 0..95 {
            agg.add(&obs(Verdict::Match, 10.0, Some(12.0 + f64::from(i % 2))));
        }
        for _ in 0..5 {
            agg.add(&obs(Verdict::Mismatch, 10.0, Some(12.0)));
        }
        let mut other = obs(Verdict::ShadowTimeout, 10.0, None);
        other.route = "GET /health".into();
        agg.add(&other);
        let text = agg.summary().to_string();
        for needle in [
            "shadow model-v2: 101 comparisons",
            "match=95",
            "mismatch=5",
            "shadow_timeout=1",
            "0.950 (95% CI 0.888–0.978)",
            "production  p50 10.0",
            "shadow      p50 12.0",
            "difference  p50 +2.00",
            "p99 ratio 1.30",
            "timeouts 0.99%",
            "increase +0.99 pp",
            "POST /v2/models/demo/infer",
            "GET /health",
        ] {
            assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
        }
        assert!(text.lines().all(|l| l.chars().count() <= 100), "too wide:\n{text}");
        let json = serde_json::to_value(agg.summary()).unwrap();
        assert_eq!(json["shadows"][0]["verdicts"]["match"], 95);
        assert_eq!(json["shadows"][0]["agreement"]["trials"], 100);
    }

    proptest! {
        #[test]
        fn wilson_contains_the_estimate(trials in 1u64..1_000_000, successes in 0u64..1_000_000) {
            let successes = successes % (trials + 1);
            let i = wilson_interval(successes, trials, Z_95).unwrap();
            let p = successes as f64 / trials as f64;
            prop_assert!(0.0 <= i.low && i.low <= p && p <= i.high && i.high <= 1.0, "{:?} {}", i, p);
        }

        #[test]
        fn counts_add_up(verdicts in proptest::collection::vec(0usize..6, 0..300)) {
            let mut agg = Aggregator::default();
            for (n, v) in verdicts.iter().enumerate() {
                let mut o = obs(Verdict::Match, 1.0, Some(1.0));
                o.outcome = Verdict::ALL.get(*v).map_or(Outcome::NotCompared("queue_full".into()), |v| Outcome::Compared(*v));
                o.route = format!("route-{}", n % 3);
                agg.add(&o);
            }
            let summary = agg.summary();
            let total: u64 = summary.shadows.iter().map(|s| s.stats.observations).sum();
            prop_assert_eq!(total, verdicts.len() as u64);
            prop_assert_eq!(agg.observations(), verdicts.len() as u64);
            for s in &summary.shadows {
                let v = s.stats.verdicts;
                let compared = v.matched + v.within_tolerance + v.mismatch + v.shadow_error + v.shadow_timeout;
                prop_assert_eq!(compared, s.stats.comparisons);
                prop_assert_eq!(s.stats.comparisons + s.stats.not_compared, s.stats.observations);
                let by_route: u64 = s.routes.iter().map(|r| r.stats.observations).sum();
                prop_assert_eq!(by_route, s.stats.observations);
            }
        }
    }
}
