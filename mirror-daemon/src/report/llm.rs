//! The aggregates of generated text (OpenAI-compatible answers, streamed or not): how often the
//! shadow wrote exactly production's text, how close it came otherwise, the streaming figures an
//! LLM user measures — TTFT, TPOT, ITL and E2E — for production, the shadow, and their paired
//! differences, and how the streams ended.
//!
//! ITL quantiles are over every gap of every stream, pooled, as vLLM's serving benchmark reports
//! them: records keep each stream's gaps to two significant digits (`itl_ms.gaps`), so `report`
//! and the daemon pool the same values. Its paired difference is per stream, of the median gaps.
use serde::Serialize;
use serde_json::Value;

use super::{
    aggregate::{
        LatencyHistogram, Proportion, Quantiles, RecordError, SignedHistogram, ms_to_us, opt_measure,
        typed_measure,
    },
    record::{ComparisonRecord, StreamRecord},
};

/// Most `itl_ms.gaps` entries read from one side of a record (a stream's gaps take a few distinct
/// values; a record with more is not one the daemon wrote).
const MAX_GAP_ENTRIES: usize = 10_000;

/// The figures of one side's streamed answer, from a record.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamTimes {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

impl StreamTimes {
    fn from_record(record: &Value, side: &'static str) -> Result<Option<Self>, RecordError> {
        let field = |name: &'static str| -> Result<Option<f64>, RecordError> {
            opt_measure(
                record,
                match (side, name) {
                    ("production", "ttft_ms") => "production.ttft_ms",
                    ("production", "tpot_ms") => "production.tpot_ms",
                    ("production", "e2e_ms") => "production.e2e_ms",
                    ("production", _) => "production.itl_ms.p50",
                    (_, "ttft_ms") => "shadow.ttft_ms",
                    (_, "tpot_ms") => "shadow.tpot_ms",
                    (_, "e2e_ms") => "shadow.e2e_ms",
                    _ => "shadow.itl_ms.p50",
                },
            )
        };
        let times = Self {
            ttft_ms: field("ttft_ms")?,
            tpot_ms: field("tpot_ms")?,
            itl_p50_ms: field("itl_ms")?,
            e2e_ms: field("e2e_ms")?,
        };
        Ok((times != Self::default()).then_some(times))
    }

    /// [`Self::from_record`] of a typed record's side; `paths` name its ttft, tpot, itl p50 and
    /// e2e fields, in that order.
    fn from_stream(
        stream: Option<&StreamRecord>,
        paths: [&'static str; 4],
    ) -> Result<Option<Self>, RecordError> {
        let Some(stream) = stream else { return Ok(None) };
        let times = Self {
            ttft_ms: typed_measure(stream.ttft_ms, paths[0])?,
            tpot_ms: typed_measure(stream.tpot_ms, paths[1])?,
            itl_p50_ms: typed_measure(stream.itl_ms.as_ref().map(|itl| itl.p50), paths[2])?,
            e2e_ms: typed_measure(Some(stream.e2e_ms), paths[3])?,
        };
        Ok((times != Self::default()).then_some(times))
    }
}

/// How a side's stream ended: its `stream_end`, or for a shadow that answered no stream to a
/// streamed production answer, why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnding {
    /// `[DONE]`.
    Done,
    /// A native stream's final event.
    Final,
    /// An error event.
    Error,
    /// The body ended without an end event.
    Open,
    /// The shadow stalled or ran out of time (`shadow.error` `timeout`).
    Timeout,
    /// The shadow's replay failed (any other `shadow.error`).
    Failed,
    /// A `stream_end` this version does not know.
    Other,
}

impl StreamEnding {
    fn of(stream_end: &str) -> Self {
        match stream_end {
            "done" => Self::Done,
            "final" => Self::Final,
            "error" => Self::Error,
            "open" => Self::Open,
            _ => Self::Other,
        }
    }

    fn from_record(record: &Value, side: &'static str) -> Result<Option<Self>, RecordError> {
        let (end, path) = match side {
            "production" => (record.pointer("/production/stream_end"), "production.stream_end"),
            _ => (record.pointer("/shadow/stream_end"), "shadow.stream_end"),
        };
        match end {
            None | Some(Value::Null) => {}
            Some(Value::String(end)) => return Ok(Some(Self::of(end))),
            Some(other) => {
                return Err(RecordError::Invalid {
                    field: path,
                    problem: format!("is {other}, not a string"),
                });
            }
        }
        // A shadow without a stream of its own, answering a streamed production request.
        let production_streamed = record.pointer("/production/stream_end").is_some_and(|v| !v.is_null());
        Ok(match record.pointer("/shadow/error").and_then(Value::as_str) {
            Some("timeout") if side == "shadow" && production_streamed => Some(Self::Timeout),
            Some(_) if side == "shadow" && production_streamed => Some(Self::Failed),
            _ => None,
        })
    }

    /// [`Self::from_record`] of a typed record: production's and the shadow's endings.
    fn from_comparison(record: &ComparisonRecord<'_>) -> (Option<Self>, Option<Self>) {
        let production = record.exchange.production.stream.as_ref().map(|s| Self::of(s.stream_end));
        let shadow = match (&record.shadow.stream, record.shadow.error.as_deref()) {
            (Some(stream), _) => Some(Self::of(stream.stream_end)),
            (None, Some("timeout")) if production.is_some() => Some(Self::Timeout),
            (None, Some(_)) if production.is_some() => Some(Self::Failed),
            (None, _) => None,
        };
        (production, shadow)
    }
}

/// Streams by how they ended, for one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StreamEnds {
    pub done: u64,
    #[serde(rename = "final")]
    pub final_event: u64,
    pub error: u64,
    /// Cut before an end event (a production stream cut this way is not compared: it is counted
    /// `sse_stream_cut` among the drops, not here).
    pub open: u64,
    pub timeout: u64,
    pub failed: u64,
    pub other: u64,
}

impl StreamEnds {
    fn add(&mut self, end: StreamEnding) {
        *match end {
            StreamEnding::Done => &mut self.done,
            StreamEnding::Final => &mut self.final_event,
            StreamEnding::Error => &mut self.error,
            StreamEnding::Open => &mut self.open,
            StreamEnding::Timeout => &mut self.timeout,
            StreamEnding::Failed => &mut self.failed,
            StreamEnding::Other => &mut self.other,
        } += 1;
    }

    fn total(&self) -> u64 {
        self.done + self.final_event + self.error + self.open + self.timeout + self.failed + self.other
    }

    /// `name=count` for the ends that are not whole answers (`done`, `final`), or `none`.
    fn cut_short(&self) -> String {
        let pairs = [
            ("error", self.error),
            ("open", self.open),
            ("timeout", self.timeout),
            ("failed", self.failed),
            ("other", self.other),
        ];
        let text: Vec<String> =
            pairs.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect();
        if text.is_empty() { "none".into() } else { text.join(" ") }
    }
}

/// Both sides' stream ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StreamEndsBySide {
    pub production: StreamEnds,
    pub shadow: StreamEnds,
}

/// Inter-token gaps of one value: (gap ms, how many).
pub type Gap = (f64, u64);

/// A side's `itl_ms.gaps`: `[[gap ms, count], ...]`.
fn gaps(record: &Value, side: &'static str) -> Result<Vec<Gap>, RecordError> {
    let (value, path) = match side {
        "production" => (record.pointer("/production/itl_ms/gaps"), "production.itl_ms.gaps"),
        _ => (record.pointer("/shadow/itl_ms/gaps"), "shadow.itl_ms.gaps"),
    };
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let invalid = |problem: String| RecordError::Invalid { field: path, problem };
    let entries = value.as_array().ok_or_else(|| invalid(format!("is {value}, not an array")))?;
    if entries.len() > MAX_GAP_ENTRIES {
        return Err(invalid(format!("has {} entries, more than {MAX_GAP_ENTRIES}", entries.len())));
    }
    entries
        .iter()
        .map(|entry| match entry.as_array().map(Vec::as_slice) {
            Some([ms, count]) => match (ms.as_f64().filter(|m| m.is_finite() && *m >= 0.0), count.as_u64()) {
                (Some(ms), Some(count)) => Ok((ms, count)),
                _ => Err(invalid(format!("entry {entry} is not [gap ms, count]"))),
            },
            _ => Err(invalid(format!("entry {entry} is not [gap ms, count]"))),
        })
        .collect()
}

/// [`gaps`] of a typed record's side.
fn typed_gaps(stream: Option<&StreamRecord>, path: &'static str) -> Result<Vec<Gap>, RecordError> {
    let Some(itl) = stream.and_then(|s| s.itl_ms.as_ref()) else { return Ok(Vec::new()) };
    let invalid = |problem: String| RecordError::Invalid { field: path, problem };
    if itl.gaps.len() > MAX_GAP_ENTRIES {
        return Err(invalid(format!("has {} entries, more than {MAX_GAP_ENTRIES}", itl.gaps.len())));
    }
    itl.gaps
        .iter()
        .map(|&(ms, count)| match ms.is_finite() && ms >= 0.0 {
            true => Ok((ms, count)),
            // Written as the JSON reader would show the entry (a non-finite number is `null`).
            false => Err(invalid(format!("entry {} is not [gap ms, count]", serde_json::json!([ms, count])))),
        })
        .collect()
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
    /// Each side's inter-token gaps, `(ms, count)` (`itl_ms.gaps`).
    pub production_gaps: Vec<Gap>,
    pub shadow_gaps: Vec<Gap>,
    pub production_end: Option<StreamEnding>,
    pub shadow_end: Option<StreamEnding>,
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
            production_gaps: gaps(record, "production")?,
            shadow_gaps: gaps(record, "shadow")?,
            production_end: StreamEnding::from_record(record, "production")?,
            shadow_end: StreamEnding::from_record(record, "shadow")?,
        })
    }

    /// [`Self::from_record`] of the record's JSON, read from the typed record.
    pub fn from_comparison(record: &ComparisonRecord<'_>) -> Result<Self, RecordError> {
        let metrics = record.metrics;
        let production = record.exchange.production.stream.as_ref();
        let shadow = record.shadow.stream.as_ref();
        let (production_end, shadow_end) = StreamEnding::from_comparison(record);
        Ok(Self {
            text_equal: metrics.and_then(|m| m.text_equal),
            similarity: typed_measure(metrics.and_then(|m| m.similarity), "metrics.similarity")?,
            production: StreamTimes::from_stream(
                production,
                ["production.ttft_ms", "production.tpot_ms", "production.itl_ms.p50", "production.e2e_ms"],
            )?,
            shadow: StreamTimes::from_stream(
                shadow,
                ["shadow.ttft_ms", "shadow.tpot_ms", "shadow.itl_ms.p50", "shadow.e2e_ms"],
            )?,
            production_gaps: typed_gaps(production, "production.itl_ms.gaps")?,
            shadow_gaps: typed_gaps(shadow, "shadow.itl_ms.gaps")?,
            production_end,
            shadow_end,
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

    /// Inter-token gaps: each side's pooled (a record's median gap stands in for a side whose
    /// record has no `gaps`), the difference of the two medians paired.
    fn add_gaps(&mut self, medians: (Option<f64>, Option<f64>), gaps: [&[Gap]; 2]) {
        for (histogram, median, gaps) in
            [(&mut self.production, medians.0, gaps[0]), (&mut self.shadow, medians.1, gaps[1])]
        {
            if gaps.is_empty()
                && let Some(median) = median
            {
                histogram.record_us(ms_to_us(median));
            }
            for &(ms, count) in gaps {
                histogram.record_us_n(ms_to_us(ms), count);
            }
        }
        if let (Some(p), Some(s)) = medians {
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
    e2e: PairedFigure,
    ends: StreamEndsBySide,
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
            e2e: PairedFigure::new(),
            ends: StreamEndsBySide::default(),
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
        self.itl.add_gaps((p.itl_p50_ms, s.itl_p50_ms), [&o.production_gaps, &o.shadow_gaps]);
        self.e2e.add(p.e2e_ms, s.e2e_ms);
        if let Some(end) = o.production_end {
            self.ends.production.add(end);
        }
        if let Some(end) = o.shadow_end {
            self.ends.shadow.add(end);
        }
    }

    pub(super) fn bytes(&self) -> usize {
        size_of::<Self>() + self.ttft.bytes() + self.tpot.bytes() + self.itl.bytes() + self.e2e.bytes()
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
            e2e_ms: self.e2e.stats(),
            stream_ends: (self.ends.production.total() + self.ends.shadow.total() > 0).then_some(self.ends),
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
    /// Every gap of every stream, pooled, for each side; the difference pairs each stream's median
    /// gaps.
    pub itl_ms: PairedStats,
    pub e2e_ms: PairedStats,
    /// Streams by how they ended, each side (`null` without streams).
    pub stream_ends: Option<StreamEndsBySide>,
}

impl TextStats {
    /// The ends of the streams that were not whole answers, per side, for the summary.
    pub fn cut_short(&self) -> Option<String> {
        let ends = self.stream_ends?;
        Some(format!("production {}, shadow {}", ends.production.cut_short(), ends.shadow.cut_short()))
    }
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
        assert!(s.e2e_ms.production.is_none() && s.stream_ends.is_none());
        let bad = json!({"metrics": {"text_equal": "yes"}});
        assert!(matches!(
            TextObservation::from_record(&bad),
            Err(RecordError::Invalid { field: "metrics.text_equal", .. })
        ));
    }

    #[test]
    fn itl_pools_every_gap_and_ends_are_counted() {
        let mut g = TextGroup::new();
        // Production: 90 gaps of 10 ms and 10 of 50 ms in one stream, 100 of 20 ms in another: the
        // pooled p50 is 20 ms and the p95 50 ms, which no per-stream median shows.
        let records = [
            json!({
                "production": {"ttft_ms": 5.0, "e2e_ms": 1000.0, "stream_end": "done",
                               "itl_ms": {"p50": 10.0, "p95": 50.0, "max": 50.0, "gaps": [[10.0, 90], [50.0, 10]]}},
                "shadow": {"ttft_ms": 7.0, "e2e_ms": 1500.0, "stream_end": "error",
                           "itl_ms": {"p50": 12.0, "p95": 12.0, "max": 12.0, "gaps": [[12.0, 100]]}},
            }),
            json!({
                "production": {"ttft_ms": 5.0, "e2e_ms": 2000.0, "stream_end": "done",
                               "itl_ms": {"p50": 20.0, "p95": 20.0, "max": 20.0, "gaps": [[20.0, 100]]}},
                "shadow": {"error": "timeout"},
            }),
        ];
        for r in &records {
            g.add(&TextObservation::from_record(r).unwrap());
        }
        let s = g.stats().unwrap();
        let itl = s.itl_ms.production.unwrap();
        assert_eq!(itl.count, 200);
        assert!((itl.p50 - 20.0).abs() < 0.1, "{itl:?}");
        assert!((itl.p95 - 20.0).abs() < 0.1, "{itl:?}");
        assert!((itl.p99 - 50.0).abs() < 0.5, "{itl:?}");
        assert_eq!(s.itl_ms.shadow.unwrap().count, 100);
        // Paired per stream, by median: only the first record has both.
        let d = s.itl_ms.difference.unwrap();
        assert_eq!(d.count, 1);
        assert!((d.p50 - 2.0).abs() < 0.05, "{d:?}");
        let e2e = s.e2e_ms;
        assert_eq!((e2e.production.unwrap().count, e2e.shadow.unwrap().count), (2, 1));
        assert!((e2e.difference.unwrap().p50 - 500.0).abs() < 5.0, "{e2e:?}");
        let ends = s.stream_ends.unwrap();
        assert_eq!(ends.production, StreamEnds { done: 2, ..Default::default() });
        assert_eq!(ends.shadow, StreamEnds { error: 1, timeout: 1, ..Default::default() });
        assert_eq!(s.cut_short().unwrap(), "production none, shadow error=1 timeout=1");
        // A record written before gaps were kept: its median stands in.
        let old = json!({"production": {"ttft_ms": 5.0, "itl_ms": {"p50": 30.0, "p95": 40.0, "max": 41.0}}});
        let mut g = TextGroup::new();
        g.add(&TextObservation::from_record(&old).unwrap());
        let itl = g.stats().unwrap().itl_ms.production.unwrap();
        assert_eq!(itl.count, 1);
        assert!((itl.p50 - 30.0).abs() < 0.1);
        for bad in [json!([[1.0]]), json!([[-1.0, 2]]), json!("10"), json!([[1.0, 0.5]])] {
            let record = json!({"production": {"itl_ms": {"p50": 1.0, "gaps": bad}}});
            assert!(
                matches!(
                    TextObservation::from_record(&record),
                    Err(RecordError::Invalid { field: "production.itl_ms.gaps", .. })
                ),
                "{record}"
            );
        }
    }
}
