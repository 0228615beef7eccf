//! The aggregates of generated text (OpenAI-compatible answers, streamed or not): how often the
//! shadow wrote exactly production's text, how close it came otherwise, and the streaming figures
//! an LLM user measures — TTFT, TPOT and ITL — for production, the shadow, and their paired
//! differences.
//!
//! ITL is aggregated as one value per stream, its median gap (records keep p50/p95/max per
//! stream, not every gap); E2E is the exchange's latency, aggregated with it.
use serde::Serialize;
use serde_json::Value;

use super::aggregate::{
    LatencyHistogram, Proportion, Quantiles, RecordError, SignedHistogram, ms_to_us, opt_measure,
};

/// The figures of one side's streamed answer, from a record.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamTimes {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
}

impl StreamTimes {
    fn from_record(record: &Value, side: &'static str) -> Result<Option<Self>, RecordError> {
        let field = |name: &'static str| -> Result<Option<f64>, RecordError> {
            opt_measure(
                record,
                match (side, name) {
                    ("production", "ttft_ms") => "production.ttft_ms",
                    ("production", "tpot_ms") => "production.tpot_ms",
                    ("production", _) => "production.itl_ms.p50",
                    (_, "ttft_ms") => "shadow.ttft_ms",
                    (_, "tpot_ms") => "shadow.tpot_ms",
                    _ => "shadow.itl_ms.p50",
                },
            )
        };
        let times =
            Self { ttft_ms: field("ttft_ms")?, tpot_ms: field("tpot_ms")?, itl_p50_ms: field("itl_ms")? };
        Ok((times != Self::default()).then_some(times))
    }
}

/// The generated-text part of a comparison record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextObservation {
    /// Every choice's text equal (`metrics.text_equal`).
    pub text_equal: Option<bool>,
    /// `metrics.similarity`.
    pub similarity: Option<f64>,
    pub production: Option<StreamTimes>,
    pub shadow: Option<StreamTimes>,
}

impl TextObservation {
    pub fn from_record(record: &Value) -> Result<Self, RecordError> {
        let text_equal = match record.get("metrics").and_then(|m| m.get("text_equal")) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(RecordError::Invalid {
                    field: "metrics.text_equal",
                    problem: format!("expected true or false, found {other}"),
                });
            }
        };
        Ok(Self {
            text_equal,
            similarity: opt_measure(record, "metrics.similarity")?,
            production: StreamTimes::from_record(record, "production")?,
            shadow: StreamTimes::from_record(record, "shadow")?,
        })
    }
}

/// One figure for production and the shadow, and their paired difference.
#[derive(Clone, Debug)]
struct PairedFigure {
    production: LatencyHistogram,
    shadow: LatencyHistogram,
    difference: SignedHistogram,
}

impl PairedFigure {
    fn new() -> Self {
        Self {
            production: LatencyHistogram::new(),
            shadow: LatencyHistogram::new(),
            difference: SignedHistogram::new(),
        }
    }

    fn add(&mut self, production: Option<f64>, shadow: Option<f64>) {
        if let Some(p) = production {
            self.production.record_us(ms_to_us(p));
        }
        if let Some(s) = shadow {
            self.shadow.record_us(ms_to_us(s));
        }
        if let (Some(p), Some(s)) = (production, shadow) {
            self.difference.record_ms(s - p);
        }
    }

    fn stats(&self) -> PairedStats {
        let production = self.production.quantiles();
        let shadow = self.shadow.quantiles();
        let p99_ratio = match (production, shadow) {
            (Some(p), Some(s)) if p.p99 > 0.0 => Some(s.p99 / p.p99),
            _ => None,
        };
        PairedStats { production, shadow, difference: self.difference.quantiles(), p99_ratio }
    }

    fn bytes(&self) -> usize {
        self.production.bytes() + self.shadow.bytes() + self.difference.bytes()
    }
}

/// Quantiles of one figure (ms) for each side, their paired difference (shadow − production), and
/// the shadow's p99 over production's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PairedStats {
    pub production: Option<Quantiles>,
    pub shadow: Option<Quantiles>,
    pub difference: Option<Quantiles>,
    pub p99_ratio: Option<f64>,
}

/// Buckets of the similarity histogram: [0, 0.01), …, [0.99, 1), and exactly 1.
const SIMILARITY_BUCKETS: usize = 101;

/// Running totals of generated text for one group.
#[derive(Clone, Debug)]
pub(super) struct TextGroup {
    texts: u64,
    exact: u64,
    similarity: [u64; SIMILARITY_BUCKETS],
    similarity_sum: f64,
    ttft: PairedFigure,
    tpot: PairedFigure,
    itl: PairedFigure,
}

impl TextGroup {
    pub(super) fn new() -> Self {
        Self {
            texts: 0,
            exact: 0,
            similarity: [0; SIMILARITY_BUCKETS],
            similarity_sum: 0.0,
            ttft: PairedFigure::new(),
            tpot: PairedFigure::new(),
            itl: PairedFigure::new(),
        }
    }

    /// Adds the text part of one compared record.
    pub(super) fn add(&mut self, o: &TextObservation) {
        if let Some(equal) = o.text_equal {
            self.texts += 1;
            self.exact += u64::from(equal);
        }
        if let Some(s) = o.similarity.filter(|s| s.is_finite()) {
            let s = s.clamp(0.0, 1.0);
            self.similarity[((s * 100.0).floor() as usize).min(SIMILARITY_BUCKETS - 1)] += 1;
            self.similarity_sum += s;
        }
        let (p, s) = (o.production.unwrap_or_default(), o.shadow.unwrap_or_default());
        self.ttft.add(p.ttft_ms, s.ttft_ms);
        self.tpot.add(p.tpot_ms, s.tpot_ms);
        self.itl.add(p.itl_p50_ms, s.itl_p50_ms);
    }

    pub(super) fn bytes(&self) -> usize {
        size_of::<Self>() + self.ttft.bytes() + self.tpot.bytes() + self.itl.bytes()
    }

    /// `None` when the group saw no generated text and no stream.
    pub(super) fn stats(&self) -> Option<TextStats> {
        let scored: u64 = self.similarity.iter().sum();
        let ttft = self.ttft.stats();
        if self.texts == 0 && scored == 0 && ttft.production.is_none() && ttft.shadow.is_none() {
            return None;
        }
        let similarity = (scored > 0).then(|| {
            let at = |q: f64| {
                let rank = ((q * scored as f64).ceil() as u64).clamp(1, scored);
                let mut seen = 0;
                for (i, n) in self.similarity.iter().enumerate() {
                    seen += n;
                    if seen >= rank {
                        return i as f64 / 100.0;
                    }
                }
                1.0
            };
            Similarity {
                count: scored,
                mean: self.similarity_sum / scored as f64,
                p10: at(0.1),
                p50: at(0.5),
            }
        });
        Some(TextStats {
            exact_match: Proportion::new(self.exact, self.texts),
            similarity,
            ttft_ms: ttft,
            tpot_ms: self.tpot.stats(),
            itl_ms: self.itl.stats(),
        })
    }
}

/// The distribution of similarity scores; quantiles are bucket lower bounds (0.01 wide).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Similarity {
    pub count: u64,
    pub mean: f64,
    pub p10: f64,
    pub p50: f64,
}

/// Generated text, for groups that had any.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TextStats {
    /// Comparisons whose every choice's text was equal, with its 95% Wilson interval.
    pub exact_match: Option<Proportion>,
    pub similarity: Option<Similarity>,
    pub ttft_ms: PairedStats,
    pub tpot_ms: PairedStats,
    /// One value per stream: its median inter-token gap.
    pub itl_ms: PairedStats,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_figures_aggregate_from_records() {
        let mut g = TextGroup::new();
        assert_eq!(g.stats(), None);
        for i in 0..10 {
            let record = json!({
                "metrics": {"text_equal": i < 7, "similarity": if i < 7 { 1.0 } else { 0.5 }},
                "production": {"ttft_ms": 100.0, "tpot_ms": 10.0, "itl_ms": {"p50": 9.0, "p95": 12.0, "max": 20.0}},
                "shadow": {"ttft_ms": 150.0, "tpot_ms": 12.0},
            });
            g.add(&TextObservation::from_record(&record).unwrap());
        }
        let s = g.stats().unwrap();
        let exact = s.exact_match.unwrap();
        assert_eq!((exact.successes, exact.trials), (7, 10));
        assert!(exact.low < 0.7 && exact.high > 0.7);
        let sim = s.similarity.unwrap();
        assert_eq!((sim.count, sim.p10, sim.p50), (10, 0.5, 1.0));
        assert!((sim.mean - 0.85).abs() < 1e-9);
        let ttft = s.ttft_ms;
        assert!((ttft.production.unwrap().p99 - 100.0).abs() < 1.0);
        assert!((ttft.difference.unwrap().p50 - 50.0).abs() < 0.5);
        assert!((ttft.p99_ratio.unwrap() - 1.5).abs() < 0.02);
        assert!(s.itl_ms.shadow.is_none() && s.itl_ms.production.is_some());
        let bad = json!({"metrics": {"text_equal": "yes"}});
        assert!(matches!(
            TextObservation::from_record(&bad),
            Err(RecordError::Invalid { field: "metrics.text_equal", .. })
        ));
    }
}
