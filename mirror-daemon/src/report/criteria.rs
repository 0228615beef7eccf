//! Promotion criteria: turns a shadow's aggregates into PROMOTE, HOLD or REJECT, with reasons.
//!
//! A decision made on a point estimate flips back and forth as data arrives, so agreement is judged
//! by its 95% Wilson interval: PROMOTE only when even the lower bound reaches the threshold, REJECT
//! only when even the upper bound misses it, and HOLD in between, where more traffic will settle
//! it. Latency (shadow p99 / production p99) and errors (shadow failure rate − production error
//! rate) are hard limits. Nothing is decided below a minimum number of comparisons. Every reason
//! is a sentence with the numbers behind it, so that the decision can be checked by hand.
use std::fmt;

use serde::{Deserialize, Serialize};

use super::aggregate::{Ms, Proportion, Quantiles, ShadowSummary};

/// Default [`Criteria::min_samples`].
pub const DEFAULT_MIN_SAMPLES: u64 = 100;
/// Default [`Criteria::min_agreement`].
pub const DEFAULT_MIN_AGREEMENT: f64 = 0.95;
/// Default [`Criteria::max_p99_latency_ratio`].
pub const DEFAULT_MAX_P99_LATENCY_RATIO: f64 = 1.5;
/// Default [`Criteria::max_error_rate_increase`].
pub const DEFAULT_MAX_ERROR_RATE_INCREASE: f64 = 0.01;
/// Default [`Criteria::max_ttft_p99_ratio`] and [`Criteria::max_tpot_p99_ratio`].
pub const DEFAULT_MAX_STREAM_P99_RATIO: f64 = 1.5;
/// Default [`Criteria::min_exact_match`]: not judged (agreement already counts a changed text as
/// a mismatch; this sets a separate bar for text alone).
pub const DEFAULT_MIN_EXACT_MATCH: f64 = 0.0;

/// What a candidate must show before it is promoted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct Criteria {
    /// Comparisons needed before any decision other than HOLD.
    pub min_samples: u64,
    /// Agreement the 95% interval's lower bound must reach (a fraction, 0.95 = 95%).
    pub min_agreement: f64,
    /// Largest acceptable shadow p99 latency / production p99 latency.
    pub max_p99_latency_ratio: f64,
    /// Largest acceptable shadow failure rate − production error rate (a fraction, 0.01 = 1 point).
    pub max_error_rate_increase: f64,
    /// Streamed answers: largest acceptable shadow p99 time to first token / production's.
    pub max_ttft_p99_ratio: f64,
    /// Streamed answers: largest acceptable shadow p99 time per output token / production's.
    pub max_tpot_p99_ratio: f64,
    /// Generated text: the share of comparisons with every choice's text equal that the 95%
    /// interval's lower bound must reach (0 = not judged).
    pub min_exact_match: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Self {
            min_samples: DEFAULT_MIN_SAMPLES,
            min_agreement: DEFAULT_MIN_AGREEMENT,
            max_p99_latency_ratio: DEFAULT_MAX_P99_LATENCY_RATIO,
            max_error_rate_increase: DEFAULT_MAX_ERROR_RATE_INCREASE,
            max_ttft_p99_ratio: DEFAULT_MAX_STREAM_P99_RATIO,
            max_tpot_p99_ratio: DEFAULT_MAX_STREAM_P99_RATIO,
            min_exact_match: DEFAULT_MIN_EXACT_MATCH,
        }
    }
}

/// A criterion outside its meaningful range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field} is {value}: {expected}")]
pub struct CriteriaError {
    pub field: &'static str,
    pub value: f64,
    pub expected: &'static str,
}

impl Criteria {
    /// Checks that every threshold can be met and means something.
    pub fn validate(&self) -> Result<(), CriteriaError> {
        let check = |field, value: f64, ok: bool, expected| {
            if ok { Ok(()) } else { Err(CriteriaError { field, value, expected }) }
        };
        check(
            "min_agreement",
            self.min_agreement,
            (0.0..=1.0).contains(&self.min_agreement),
            "it must be a fraction between 0 and 1 (0.95 = 95%)",
        )?;
        check(
            "max_p99_latency_ratio",
            self.max_p99_latency_ratio,
            self.max_p99_latency_ratio.is_finite() && self.max_p99_latency_ratio > 0.0,
            "it must be a positive ratio (1.5 = the shadow's p99 may be 50% higher)",
        )?;
        check(
            "max_error_rate_increase",
            self.max_error_rate_increase,
            (-1.0..=1.0).contains(&self.max_error_rate_increase),
            "it must be a fraction between -1 and 1 (0.01 = one percentage point)",
        )?;
        for (field, value) in
            [("max_ttft_p99_ratio", self.max_ttft_p99_ratio), ("max_tpot_p99_ratio", self.max_tpot_p99_ratio)]
        {
            check(
                field,
                value,
                value.is_finite() && value > 0.0,
                "it must be a positive ratio (1.5 = the shadow's p99 may be 50% higher)",
            )?;
        }
        check(
            "min_exact_match",
            self.min_exact_match,
            (0.0..=1.0).contains(&self.min_exact_match),
            "it must be a fraction between 0 and 1 (0.9 = 90%; 0 = not judged)",
        )
    }
}

/// The decision about one candidate. Ordered from best to worst, so the worst of several is `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Promotion {
    /// Ready: agreement, latency and errors are within the criteria with enough data.
    Promote,
    /// Not yet known: too few comparisons, or the interval still straddles the threshold.
    Hold,
    /// Not ready: a criterion is missed beyond doubt.
    Reject,
}

impl Promotion {
    /// Process exit status of `mirror-daemon report`: 0, 1 or 2.
    pub fn exit_code(self) -> u8 {
        match self {
            Promotion::Promote => 0,
            Promotion::Hold => 1,
            Promotion::Reject => 2,
        }
    }
}

impl fmt::Display for Promotion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Promotion::Promote => "PROMOTE",
            Promotion::Hold => "HOLD",
            Promotion::Reject => "REJECT",
        })
    }
}

/// A decision and the sentences that justify it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub verdict: Promotion,
    pub reasons: Vec<String>,
}

/// The worst of several decisions (REJECT > HOLD > PROMOTE); `None` for none.
pub fn worst<'a>(decisions: impl IntoIterator<Item = &'a Decision>) -> Option<Promotion> {
    decisions.into_iter().map(|d| d.verdict).max()
}

fn p99(q: Option<Quantiles>) -> String {
    q.map_or_else(|| "n/a".into(), |q| Ms(q.p99).to_string())
}

/// Applies `criteria` to one shadow's totals.
pub fn evaluate(shadow: &ShadowSummary, criteria: &Criteria) -> Decision {
    let s = &shadow.stats;
    let n = s.comparisons;
    if n < criteria.min_samples || n == 0 {
        let mut reason = format!(
            "{n} comparisons so far: need {} more to reach the minimum of {}",
            criteria.min_samples.max(1) - n,
            criteria.min_samples.max(1)
        );
        if let Some(a) = s.agreement {
            reason.push_str(&format!(" (agreement so far {:.3}, 95% CI {:.3}–{:.3})", a.rate, a.low, a.high));
        }
        return Decision { verdict: Promotion::Hold, reasons: vec![reason] };
    }

    let mut rejects = Vec::new();
    let mut holds = Vec::new();
    let mut passes = Vec::new();

    let min = criteria.min_agreement;
    match s.agreement {
        None => holds.push(format!(
            "agreement is unknown: none of the {n} comparisons got an answer from both models"
        )),
        Some(a) => {
            let interval = format!("agreement {:.3} (95% CI {:.3}–{:.3})", a.rate, a.low, a.high);
            if a.high < min {
                rejects.push(format!("{interval} is below {min}: even the upper bound misses it"));
            } else if a.low >= min {
                passes.push(format!("{interval} is at least {min} with 95% confidence"));
            } else {
                holds.push(format!(
                    "{interval} straddles {min}: not yet confident; more comparisons will narrow the interval"
                ));
            }
        }
    }

    let max_ratio = criteria.max_p99_latency_ratio;
    match s.p99_latency_ratio {
        None => holds.push("shadow latency was not measured: no comparison has both latencies".into()),
        Some(ratio) => {
            let text = format!(
                "shadow p99 latency {} ms is {ratio:.2}× production's {} ms",
                p99(s.shadow_latency_ms),
                p99(s.production_latency_ms)
            );
            if ratio > max_ratio {
                rejects.push(format!("{text}, above the maximum of {max_ratio}×"));
            } else {
                passes.push(format!("{text}, within the maximum of {max_ratio}×"));
            }
        }
    }

    let max_increase = criteria.max_error_rate_increase;
    if let (Some(increase), Some(shadow), Some(production)) =
        (s.error_rate_increase, s.shadow_failure_rate, s.production_error_rate)
    {
        let text = format!(
            "shadow failure rate {:.2}% vs production error rate {:.2}% ({:+.2} points)",
            shadow * 100.0,
            production * 100.0,
            increase * 100.0
        );
        if increase > max_increase {
            rejects.push(format!("{text} is above the maximum of {:+.2}", max_increase * 100.0));
        } else {
            passes.push(format!("{text} is within the maximum of {:+.2}", max_increase * 100.0));
        }
    }

    if let Some(text) = &s.text {
        let min = criteria.min_exact_match;
        if let Some(e) = text.exact_match.filter(|_| min > 0.0) {
            let interval = format!("exact text match {:.3} (95% CI {:.3}–{:.3})", e.rate, e.low, e.high);
            match interval_status(Some(e), min) {
                CheckStatus::Fail => {
                    rejects.push(format!("{interval} is below {min}: even the upper bound misses it"))
                }
                CheckStatus::Pass => passes.push(format!("{interval} is at least {min} with 95% confidence")),
                CheckStatus::Pending => holds.push(format!("{interval} straddles {min}: not yet confident")),
            }
        }
        for (what, figure, max) in [
            ("time to first token", &text.ttft_ms, criteria.max_ttft_p99_ratio),
            ("time per output token", &text.tpot_ms, criteria.max_tpot_p99_ratio),
        ] {
            let Some(ratio) = figure.p99_ratio else { continue };
            let text = format!(
                "shadow p99 {what} {} ms is {ratio:.2}× production's {} ms",
                p99(figure.shadow),
                p99(figure.production)
            );
            if ratio > max {
                rejects.push(format!("{text}, above the maximum of {max}×"));
            } else {
                passes.push(format!("{text}, within the maximum of {max}×"));
            }
        }
    }

    if !rejects.is_empty() {
        Decision { verdict: Promotion::Reject, reasons: rejects }
    } else if !holds.is_empty() {
        holds.extend(passes);
        Decision { verdict: Promotion::Hold, reasons: holds }
    } else {
        Decision { verdict: Promotion::Promote, reasons: passes }
    }
}

/// A rate judged by its 95% interval against a minimum: met when even the lower bound reaches it,
/// missed when even the upper bound falls short, not yet known in between (or unmeasured).
fn interval_status(rate: Option<Proportion>, min: f64) -> CheckStatus {
    match rate {
        Some(r) if r.high < min => CheckStatus::Fail,
        Some(r) if r.low >= min => CheckStatus::Pass,
        _ => CheckStatus::Pending,
    }
}

/// Whether one criterion is met, as far as the data tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Met.
    Pass,
    /// Missed beyond doubt: the shadow is rejected.
    Fail,
    /// Not known yet: too few comparisons, an interval straddling the threshold, or nothing measured.
    Pending,
}

/// One criterion with the value it was judged on: the `criteria` list of the verdict document.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// The criterion's setting name (`min_samples`, `min_agreement`, ...).
    pub name: &'static str,
    /// What was measured: comparisons, the agreement interval's lower bound, the p99 ratio, the
    /// error-rate increase; `None` when it was not measured.
    pub value: Option<f64>,
    pub threshold: f64,
    /// How `value` must compare with `threshold` to pass: `>=` or `<=`.
    pub rule: &'static str,
    pub status: CheckStatus,
    /// `status == pass`.
    pub passed: bool,
}

/// Each criterion of [`evaluate`] on its own, judged exactly as `evaluate` judges it, so that
/// the decision is REJECT when a check fails, PROMOTE when all pass, and HOLD otherwise. Below
/// `min_samples` nothing is decided, so every check is pending then. A criterion added to
/// `evaluate` belongs here too (the verdict document's tests check that the two agree).
pub fn checks(shadow: &ShadowSummary, criteria: &Criteria) -> Vec<Check> {
    let s = &shadow.stats;
    let enough = s.comparisons >= criteria.min_samples && s.comparisons > 0;
    let check = |name, value: Option<f64>, threshold: f64, rule, status: CheckStatus| {
        let status = if enough || name == "min_samples" { status } else { CheckStatus::Pending };
        Check { name, value, threshold, rule, status, passed: status == CheckStatus::Pass }
    };
    let verdict = |fail: bool| if fail { CheckStatus::Fail } else { CheckStatus::Pass };
    let agreement = interval_status(s.agreement, criteria.min_agreement);
    let mut checks = vec![
        check(
            "min_samples",
            Some(s.comparisons as f64),
            criteria.min_samples.max(1) as f64,
            ">=",
            if enough { CheckStatus::Pass } else { CheckStatus::Pending },
        ),
        check("min_agreement", s.agreement.map(|a| a.low), criteria.min_agreement, ">=", agreement),
        check(
            "max_p99_latency_ratio",
            s.p99_latency_ratio,
            criteria.max_p99_latency_ratio,
            "<=",
            s.p99_latency_ratio.map_or(CheckStatus::Pending, |r| verdict(r > criteria.max_p99_latency_ratio)),
        ),
        check(
            "max_error_rate_increase",
            s.error_rate_increase,
            criteria.max_error_rate_increase,
            "<=",
            // Unmeasured (no comparison) cannot happen past the minimum; it is not a reason to hold.
            s.error_rate_increase
                .map_or(CheckStatus::Pass, |i| verdict(i > criteria.max_error_rate_increase)),
        ),
    ];
    // Generated text: judged only for shadows that had some, like `evaluate`.
    if let Some(text) = &s.text {
        for (name, figure, max) in [
            ("max_ttft_p99_ratio", &text.ttft_ms, criteria.max_ttft_p99_ratio),
            ("max_tpot_p99_ratio", &text.tpot_ms, criteria.max_tpot_p99_ratio),
        ] {
            if let Some(ratio) = figure.p99_ratio {
                checks.push(check(name, Some(ratio), max, "<=", verdict(ratio > max)));
            }
        }
        let min = criteria.min_exact_match;
        if let Some(e) = text.exact_match.filter(|_| min > 0.0) {
            checks.push(check("min_exact_match", Some(e.low), min, ">=", interval_status(Some(e), min)));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::verdict::Verdict;
    use crate::report::aggregate::{Aggregator, Observation, Outcome};

    /// A shadow with `agree` agreeing and `disagree` mismatching comparisons, production at 10 ms
    /// and the shadow at `shadow_ms`, then `failures` shadow errors.
    fn shadow(agree: u64, disagree: u64, shadow_ms: f64, failures: u64) -> ShadowSummary {
        let mut agg = Aggregator::default();
        let base = Observation { shadow_latency_ms: Some(shadow_ms), ..shadow_observation() };
        let mut add = |verdict, count| {
            for _ in 0..count {
                let mut o = base.clone();
                o.outcome = Outcome::Compared(verdict);
                if verdict == Verdict::ShadowError {
                    o.shadow_status = Some(503);
                }
                agg.add(&o);
            }
        };
        add(Verdict::Match, agree);
        add(Verdict::Mismatch, disagree);
        add(Verdict::ShadowError, failures);
        agg.summary().shadows.remove(0)
    }

    /// A matching comparison, both models at 10 ms.
    fn shadow_observation() -> Observation {
        Observation {
            shadow_model_id: "model-v2".into(),
            route: "POST /infer".into(),
            outcome: Outcome::Compared(Verdict::Match),
            production_status: 200,
            production_grpc_status: None,
            production_latency_ms: 10.0,
            shadow_status: Some(200),
            shadow_grpc_status: None,
            shadow_latency_ms: Some(10.0),
            shadow_error: None,
            rows: None,
            label_agreements: None,
            label_flips: None,
            max_abs_error: None,
            mean_abs_error: None,
            text: Default::default(),
        }
    }

    /// `n` matching streamed comparisons with the given TTFTs, `exact` of them with equal text.
    fn streams(n: u64, exact: u64, prod_ttft: f64, shadow_ttft: f64) -> ShadowSummary {
        use crate::report::llm::{StreamTimes, TextObservation};
        let mut agg = Aggregator::default();
        for i in 0..n {
            let mut o = shadow_observation();
            let times = |ttft| {
                Some(StreamTimes {
                    ttft_ms: Some(ttft),
                    tpot_ms: Some(5.0),
                    itl_p50_ms: Some(5.0),
                    e2e_ms: None,
                })
            };
            o.text = TextObservation {
                text_equal: Some(i < exact),
                similarity: Some(1.0),
                production: times(prod_ttft),
                shadow: times(shadow_ttft),
                ..Default::default()
            };
            agg.add(&o);
        }
        agg.summary().shadows.remove(0)
    }

    #[test]
    fn streamed_answers_are_judged_by_ttft_tpot_and_exact_text() {
        let criteria = Criteria::default();
        let ok = evaluate(&streams(200, 200, 100.0, 120.0), &criteria);
        assert_eq!(ok.verdict, Promotion::Promote, "{:?}", ok.reasons);
        assert!(ok.reasons.iter().any(|r| r.contains("time to first token")), "{:?}", ok.reasons);
        let slow = evaluate(&streams(200, 200, 100.0, 200.0), &criteria);
        assert_eq!(slow.verdict, Promotion::Reject);
        assert!(slow.reasons[0].contains("p99 time to first token"), "{:?}", slow.reasons);
        let strict = Criteria { min_exact_match: 0.9, ..Criteria::default() };
        assert_eq!(evaluate(&streams(200, 200, 100.0, 100.0), &strict).verdict, Promotion::Promote);
        let few = evaluate(&streams(200, 150, 100.0, 100.0), &strict);
        assert_eq!(few.verdict, Promotion::Reject);
        assert!(few.reasons.iter().any(|r| r.starts_with("exact text match 0.750")), "{:?}", few.reasons);
        assert!(Criteria { max_ttft_p99_ratio: 0.0, ..Criteria::default() }.validate().is_err());
        assert!(Criteria { min_exact_match: 1.5, ..Criteria::default() }.validate().is_err());
    }

    fn decide(s: &ShadowSummary) -> Decision {
        evaluate(s, &Criteria::default())
    }

    #[test]
    fn too_few_samples_hold() {
        let d = decide(&shadow(20, 0, 10.0, 0));
        assert_eq!(d.verdict, Promotion::Hold);
        assert!(d.reasons[0].contains("need 80 more"), "{:?}", d.reasons);
        // Even a terrible candidate is held, not rejected, below the minimum.
        assert_eq!(decide(&shadow(10, 89, 100.0, 0)).verdict, Promotion::Hold);
        // Exactly the minimum is enough.
        assert_eq!(decide(&shadow(100, 0, 10.0, 0)).verdict, Promotion::Promote);
        // No comparison at all (only sampled-out requests) is never promoted, whatever the minimum.
        let mut agg = Aggregator::default();
        let mut o = shadow_observation();
        o.outcome = Outcome::NotCompared("sampled_out".into());
        agg.add(&o);
        let none = Criteria { min_samples: 0, ..Criteria::default() };
        let d = evaluate(&agg.summary().shadows[0], &none);
        assert_eq!(d.verdict, Promotion::Hold, "{d:?}");
    }

    #[test]
    fn promotes_only_when_the_lower_bound_reaches_the_threshold() {
        let d = decide(&shadow(200, 0, 10.0, 0));
        assert_eq!(d.verdict, Promotion::Promote, "{d:?}");
        assert!(
            d.reasons.iter().any(|r| r.contains("agreement 1.000 (95% CI 0.981–1.000) is at least 0.95"))
        );
        assert!(
            d.reasons.iter().any(|r| r.contains(
                "shadow p99 latency 10.0 ms is 1.00× production's 10.0 ms, within the maximum of 1.5×"
            )),
            "{:?}",
            d.reasons
        );
        // 95/100: the point estimate is on the threshold but the interval is 0.888–0.978.
        let d = decide(&shadow(95, 5, 10.0, 0));
        assert_eq!(d.verdict, Promotion::Hold, "{d:?}");
        assert!(
            d.reasons[0].contains("agreement 0.950 (95% CI 0.888–0.978) straddles 0.95"),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn agreement_boundaries() {
        // 95/100 has Wilson bounds 0.8883 and 0.9785: a threshold equal to a bound decides.
        let s = shadow(95, 5, 10.0, 0);
        let a = s.stats.agreement.unwrap();
        let at = |min| evaluate(&s, &Criteria { min_agreement: min, ..Criteria::default() }).verdict;
        assert_eq!(at(a.low), Promotion::Promote, "lower bound equal to the threshold");
        assert_eq!(at(a.low + 1e-9), Promotion::Hold);
        assert_eq!(at(a.high), Promotion::Hold, "upper bound equal to the threshold");
        assert_eq!(at(a.high + 1e-9), Promotion::Reject);
        // 60% agreement on 200 comparisons is rejected.
        let d = decide(&shadow(120, 80, 10.0, 0));
        assert_eq!(d.verdict, Promotion::Reject);
        assert!(
            d.reasons[0].contains("agreement 0.600") && d.reasons[0].contains("below 0.95"),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn latency_ratio_limit() {
        // Production p99 10 ms; the histogram reports bucket middles, so compute the ratio used.
        let slow = shadow(200, 0, 16.0, 0);
        let ratio = slow.stats.p99_latency_ratio.unwrap();
        assert!((ratio - 1.6).abs() < 0.02, "{ratio}");
        let d = decide(&slow);
        assert_eq!(d.verdict, Promotion::Reject);
        assert!(d.reasons.iter().any(|r| r.contains("above the maximum of 1.5×")), "{:?}", d.reasons);
        let at =
            |max| evaluate(&slow, &Criteria { max_p99_latency_ratio: max, ..Criteria::default() }).verdict;
        assert_eq!(at(ratio), Promotion::Promote, "a ratio equal to the maximum is within it");
        assert_eq!(at(ratio - 1e-9), Promotion::Reject);
        assert_eq!(decide(&shadow(200, 0, 14.0, 0)).verdict, Promotion::Promote);
    }

    #[test]
    fn error_rate_increase_limit() {
        // 2 shadow errors in 202 comparisons: +0.99 points, within 1 point.
        let s = shadow(200, 0, 10.0, 2);
        let increase = s.stats.error_rate_increase.unwrap();
        assert!((increase - 2.0 / 202.0).abs() < 1e-12);
        assert_eq!(decide(&s).verdict, Promotion::Promote, "{:?}", decide(&s));
        // 3 in 203: +1.48 points.
        let d = decide(&shadow(200, 0, 10.0, 3));
        assert_eq!(d.verdict, Promotion::Reject);
        assert!(
            d.reasons.iter().any(|r| r.contains("shadow failure rate 1.48% vs production error rate 0.00% (+1.48 points) is above the maximum of +1.00")),
            "{:?}",
            d.reasons
        );
        let at =
            |max| evaluate(&s, &Criteria { max_error_rate_increase: max, ..Criteria::default() }).verdict;
        assert_eq!(at(increase), Promotion::Promote);
        assert_eq!(at(increase - 1e-9), Promotion::Reject);
    }

    #[test]
    fn unknown_agreement_holds_or_rejects() {
        // Only shadow errors: no agreement, and a 100-point error increase.
        let d = decide(&shadow(0, 0, 10.0, 150));
        assert_eq!(d.verdict, Promotion::Reject, "{d:?}");
        let lenient = Criteria { max_error_rate_increase: 1.0, ..Criteria::default() };
        let d = evaluate(&shadow(0, 0, 10.0, 150), &lenient);
        assert_eq!(d.verdict, Promotion::Hold, "{d:?}");
        assert!(d.reasons[0].contains("agreement is unknown"), "{:?}", d.reasons);
    }

    #[test]
    fn worst_decision_and_exit_codes() {
        let d = |verdict| Decision { verdict, reasons: vec![] };
        assert_eq!(
            worst(&[d(Promotion::Promote), d(Promotion::Reject), d(Promotion::Hold)]),
            Some(Promotion::Reject)
        );
        assert_eq!(worst(&[d(Promotion::Promote), d(Promotion::Hold)]), Some(Promotion::Hold));
        assert_eq!(worst(&[]), None);
        assert_eq!(
            [Promotion::Promote, Promotion::Hold, Promotion::Reject].map(Promotion::exit_code),
            [0, 1, 2]
        );
        assert_eq!(serde_json::to_string(&Promotion::Promote).unwrap(), "\"PROMOTE\"");
        assert_eq!(Promotion::Reject.to_string(), "REJECT");
    }

    #[test]
    fn criteria_from_config() {
        let c: Criteria = serde_json::from_str(r#"{"min_samples": 500, "min_agreement": 0.99}"#).unwrap();
        assert_eq!(c.min_samples, 500);
        assert_eq!(c.min_agreement, 0.99);
        assert_eq!(c.max_p99_latency_ratio, DEFAULT_MAX_P99_LATENCY_RATIO);
        let e = serde_json::from_str::<Criteria>(r#"{"min_agreemnt": 0.99}"#).unwrap_err();
        assert!(e.to_string().contains("min_agreemnt"), "{e}");
        assert_eq!(Criteria::default().validate(), Ok(()));
        let e = Criteria { min_agreement: 95.0, ..Criteria::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("min_agreement is 95"), "{e}");
        assert!(Criteria { max_p99_latency_ratio: 0.0, ..Criteria::default() }.validate().is_err());
        assert!(Criteria { max_error_rate_increase: f64::NAN, ..Criteria::default() }.validate().is_err());
    }
}
