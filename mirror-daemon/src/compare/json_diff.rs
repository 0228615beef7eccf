//! Generic JSON comparison, and the [`Collector`] every protocol adapter records into.
//!
//! Objects are compared by key and arrays element by element; a key or element present on one
//! side only is a difference with `null` on the missing side. Numbers compare by decimal value
//! (`1` equals `1.0`; `0.1` does not equal `0.10000000000000001`, though both are one `f64`; see
//! [`super::json`]) and may agree within the rules' tolerance, which is measured in `f64`.
//! Ignored locations are skipped entirely, so they can never produce a difference.
//!
//! Only differences that break agreement are recorded as [`Diff`]s; numeric differences within
//! tolerance are summarised by the absolute-error statistics instead, so that a float output with
//! noise in every element does not bury a real difference.
use std::borrow::Cow;

use serde_json::json;

use super::{
    CompareRules, Diff, Verdict,
    json::{Json, Number, Object},
    pointer::IgnoreSet,
};

/// Longest string kept in a [`Diff`] value, in characters.
const CLIP_CHARS: usize = 256;
/// Largest array or object kept in a [`Diff`] value; larger ones are summarised by their length.
const CLIP_ITEMS: usize = 32;
/// Deepest nesting kept in a [`Diff`] value.
const CLIP_DEPTH: usize = 4;

/// Absolute error statistics over compared numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ErrorStats {
    pub(crate) count: u64,
    pub(crate) sum: f64,
    pub(crate) max: f64,
}

impl ErrorStats {
    fn add(&mut self, error: f64) {
        self.count += 1;
        self.sum += error;
        if error > self.max || error.is_nan() {
            self.max = error;
        }
    }

    pub(crate) fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    pub(crate) fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// How two numbers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NumberOutcome {
    Equal,
    WithinTolerance,
    Beyond,
}

/// Walks two bodies, tracking the current location and recording what differs.
#[derive(Debug)]
pub(crate) struct Collector<'r> {
    rules: &'r CompareRules,
    ignore: IgnoreSet,
    path: Vec<String>,
    /// Segments of `path` that locate a message in a stream (`messages`, `3`); ignore patterns
    /// also match the path after them, so patterns written for one message apply to each.
    message_prefix: usize,
    pub(crate) diffs: Vec<Diff>,
    pub(crate) diff_count: usize,
    /// A numeric difference within tolerance was seen.
    pub(crate) tolerated: bool,
    pub(crate) errors: ErrorStats,
    pub(crate) notes: Vec<String>,
}

impl<'r> Collector<'r> {
    pub(crate) fn new(rules: &'r CompareRules, ignore: IgnoreSet) -> Self {
        Self {
            rules,
            ignore,
            path: Vec::new(),
            message_prefix: 0,
            diffs: Vec::new(),
            diff_count: 0,
            tolerated: false,
            errors: ErrorStats::default(),
            notes: Vec::new(),
        }
    }

    /// Runs `f` one segment deeper.
    pub(crate) fn at<R>(&mut self, segment: impl Into<String>, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push(segment.into());
        let result = f(self);
        self.path.pop();
        result
    }

    /// Runs `f` at message `index` of a stream (`/messages/{index}`).
    pub(crate) fn in_message<R>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        let (depth, outer) = (self.path.len(), self.message_prefix);
        self.path.push("messages".into());
        self.path.push(index.to_string());
        self.message_prefix = depth + 2;
        let result = f(self);
        self.path.truncate(depth);
        self.message_prefix = outer;
        result
    }

    /// Whether the current location is ignored.
    pub(crate) fn ignored(&self) -> bool {
        self.ignore.matches(&self.path)
            || (self.message_prefix > 0
                && self.path.get(self.message_prefix..).is_some_and(|inner| self.ignore.matches(inner)))
    }

    /// Records a difference at the current location.
    pub(crate) fn record(&mut self, production: &Json<'_>, shadow: &Json<'_>) {
        self.diff_count += 1;
        if self.diffs.len() < self.rules.max_diffs {
            self.diffs.push(Diff {
                pointer: super::pointer::to_pointer(&self.path),
                production: clip(production, 0),
                shadow: clip(shadow, 0),
            });
        }
    }

    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Compares two numbers at the current location, recording a difference beyond tolerance.
    /// With `track_error`, the absolute error joins the error statistics.
    ///
    /// Numbers are equal only when their decimal values are. Unequal numbers agree within
    /// tolerance when a non-zero tolerance covers their `f64` distance, so at tolerance 0 any
    /// difference counts, even one below `f64`'s resolution (measured as an error of 0).
    pub(crate) fn numbers(&mut self, a: &Number<'_>, b: &Number<'_>, track_error: bool) -> NumberOutcome {
        let outcome = self.number_outcome(a, b, track_error);
        if outcome == NumberOutcome::Beyond {
            self.record(&Json::Number(a.clone()), &Json::Number(b.clone()));
        }
        outcome
    }

    /// How two numbers compare, as [`Self::numbers`] but leaving the recording of a difference
    /// beyond tolerance to the caller.
    pub(crate) fn number_outcome(
        &mut self,
        a: &Number<'_>,
        b: &Number<'_>,
        track_error: bool,
    ) -> NumberOutcome {
        let outcome = if a.value_eq(b) {
            if track_error {
                self.errors.add(0.0);
            }
            NumberOutcome::Equal
        } else {
            let error = a.distance(b);
            if track_error {
                self.errors.add(error);
            }
            let magnitude = a.as_f64().abs().max(b.as_f64().abs());
            let (abs, rel) = (self.rules.abs_tolerance, self.rules.rel_tolerance);
            if (abs > 0.0 && error <= abs) || (rel > 0.0 && error <= rel * magnitude) {
                NumberOutcome::WithinTolerance
            } else {
                NumberOutcome::Beyond
            }
        };
        if outcome == NumberOutcome::WithinTolerance {
            self.tolerated = true;
        }
        outcome
    }

    /// The verdict for what was recorded: any difference is a mismatch.
    pub(crate) fn verdict(&self) -> Verdict {
        if self.diff_count > 0 {
            Verdict::Mismatch
        } else if self.tolerated {
            Verdict::WithinTolerance
        } else {
            Verdict::Match
        }
    }
}

/// Value equality where numbers compare by value (`1 == 1.0`), used for exact (label) comparison.
pub(crate) fn exact_eq(a: &Json<'_>, b: &Json<'_>) -> bool {
    a == b
}

/// Compares two values recursively at the current location.
pub(crate) fn diff_values(c: &mut Collector<'_>, a: &Json<'_>, b: &Json<'_>) {
    if c.ignored() {
        return;
    }
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            c.numbers(x, y, true);
        }
        (Json::Object(x), Json::Object(y)) => diff_fields(c, x, y, &[]),
        (Json::Array(x), Json::Array(y)) => diff_arrays(c, x, y),
        _ => {
            if a != b {
                c.record(a, b);
            }
        }
    }
}

/// Compares two arrays element by element; elements past the shorter one are differences.
pub(crate) fn diff_arrays(c: &mut Collector<'_>, x: &[Json<'_>], y: &[Json<'_>]) {
    for i in 0..x.len().max(y.len()) {
        c.at(i.to_string(), |c| match (x.get(i), y.get(i)) {
            (Some(a), Some(b)) => diff_values(c, a, b),
            (Some(a), None) => missing(c, a, &Json::Null),
            (None, Some(b)) => missing(c, &Json::Null, b),
            (None, None) => {}
        });
    }
}

/// Compares two objects key by key, except the keys in `skip` (compared by the caller).
pub(crate) fn diff_fields(c: &mut Collector<'_>, x: &Object<'_>, y: &Object<'_>, skip: &[&str]) {
    for (key, a) in x.iter() {
        if skip.contains(&key) {
            continue;
        }
        c.at(key, |c| match y.get(key) {
            Some(b) => diff_values(c, a, b),
            None => missing(c, a, &Json::Null),
        });
    }
    for (key, b) in y.iter() {
        if !skip.contains(&key) && !x.contains_key(key) {
            c.at(key, |c| missing(c, &Json::Null, b));
        }
    }
}

fn missing(c: &mut Collector<'_>, a: &Json<'_>, b: &Json<'_>) {
    if !c.ignored() {
        c.record(a, b);
    }
}

/// Bounds a value kept in a [`Diff`]: long strings are cut, big arrays and objects summarised.
/// Numbers keep their text as written.
pub(crate) fn clip(value: &Json<'_>, depth: usize) -> Json<'static> {
    match value {
        Json::String(s) if s.chars().count() > CLIP_CHARS => {
            let mut cut: String = s.chars().take(CLIP_CHARS).collect();
            cut.push('…');
            Json::String(Cow::Owned(cut))
        }
        Json::Array(items) if items.len() > CLIP_ITEMS || (depth >= CLIP_DEPTH && !items.is_empty()) => {
            Json::from(json!({ "array_len": items.len() }))
        }
        Json::Object(map) if map.len() > CLIP_ITEMS || (depth >= CLIP_DEPTH && !map.is_empty()) => {
            Json::from(json!({ "object_len": map.len() }))
        }
        Json::Array(items) => Json::Array(items.iter().map(|v| clip(v, depth + 1)).collect()),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (Cow::Owned(k.to_string()), clip(v, depth + 1)))
                .collect::<Object<'static>>(),
        ),
        other => other.clone().into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn run(a: &Value, b: &Value, rules: &CompareRules) -> Collector<'static> {
        let rules: &'static CompareRules = Box::leak(Box::new(rules.clone()));
        let mut c = Collector::new(rules, IgnoreSet::new(rules.ignore.iter().map(String::as_str)));
        diff_values(&mut c, &Json::from(a), &Json::from(b));
        c
    }

    fn tol(abs: f64, rel: f64) -> CompareRules {
        CompareRules { abs_tolerance: abs, rel_tolerance: rel, ..CompareRules::default() }
    }

    #[test]
    fn equal_values_match() {
        let v = json!({"a": [1, 2.5, "x", null, true, {"b": []}]});
        let c = run(&v, &v.clone(), &CompareRules::default());
        assert_eq!(c.verdict(), Verdict::Match);
        assert_eq!(c.diff_count, 0);
        assert_eq!(c.errors.max(), Some(0.0));
    }

    #[test]
    fn integer_and_float_forms_of_one_number_are_equal() {
        let c = run(&json!([1, 2.0]), &json!([1.0, 2]), &CompareRules::default());
        assert_eq!(c.verdict(), Verdict::Match);
    }

    #[test]
    fn big_integers_compare_exactly() {
        let c = run(&json!(u64::MAX), &json!(u64::MAX - 1), &CompareRules::default());
        assert_eq!(c.verdict(), Verdict::Mismatch);
        assert_eq!(c.errors.max(), Some(1.0));
        let c = run(&json!(i64::MIN), &json!(u64::MAX), &CompareRules::default());
        assert_eq!(c.verdict(), Verdict::Mismatch);
    }

    #[test]
    fn missing_keys_and_extra_elements_have_null_on_the_missing_side() {
        let c = run(&json!({"a": 1, "b": [1, 2, 3]}), &json!({"b": [1], "c": "x"}), &CompareRules::default());
        let value = |v: &Json<'_>| serde_json::to_value(v).unwrap();
        let got: Vec<(&str, Value, Value)> =
            c.diffs.iter().map(|d| (d.pointer.as_str(), value(&d.production), value(&d.shadow))).collect();
        assert_eq!(
            got,
            vec![
                ("/a", json!(1), Value::Null),
                ("/b/1", json!(2), Value::Null),
                ("/b/2", json!(3), Value::Null),
                ("/c", Value::Null, json!("x")),
            ]
        );
        assert_eq!(c.diff_count, 4);
    }

    #[test]
    fn type_changes_are_one_difference_at_the_root() {
        let c = run(&json!({"a": 1}), &json!([1]), &CompareRules::default());
        assert_eq!(c.diff_count, 1);
        assert_eq!(c.diffs[0].pointer, "");
    }

    #[test]
    fn tolerance_is_absolute_or_relative() {
        let abs = tol(0.01, 0.0);
        assert_eq!(run(&json!(1.0), &json!(1.005), &abs).verdict(), Verdict::WithinTolerance);
        assert_eq!(run(&json!(1.0), &json!(1.02), &abs).verdict(), Verdict::Mismatch);
        let rel = tol(0.0, 0.01);
        assert_eq!(run(&json!(1000.0), &json!(1009.0), &rel).verdict(), Verdict::WithinTolerance);
        assert_eq!(run(&json!(1000.0), &json!(1011.0), &rel).verdict(), Verdict::Mismatch);
        // Relative tolerance scales with the larger magnitude, so it is symmetric.
        assert_eq!(run(&json!(1009.0), &json!(1000.0), &rel).verdict(), Verdict::WithinTolerance);
        // Zero tolerance is exact.
        assert_eq!(
            run(&json!(1.0), &json!(1.0000001), &CompareRules::default()).verdict(),
            Verdict::Mismatch
        );
        // A within-tolerance difference is not a recorded diff, but it is measured.
        let c = run(&json!([1.0, 2.0]), &json!([1.004, 2.0]), &abs);
        assert_eq!(c.diff_count, 0);
        assert!((c.errors.max().unwrap() - 0.004).abs() < 1e-12);
        assert!((c.errors.mean().unwrap() - 0.002).abs() < 1e-12);
    }

    #[test]
    fn negative_or_nan_tolerances_are_exact() {
        assert_eq!(run(&json!(1.0), &json!(1.5), &tol(-1.0, f64::NAN)).verdict(), Verdict::Mismatch);
    }

    #[test]
    fn huge_numbers_do_not_overflow_into_agreement() {
        let c = run(&json!(1e308), &json!(-1e308), &tol(1.0, 0.5));
        assert_eq!(c.verdict(), Verdict::Mismatch);
        assert_eq!(c.errors.max(), Some(f64::INFINITY));
    }

    #[test]
    fn ignored_locations_produce_no_differences() {
        let rules = CompareRules {
            ignore: vec!["/id".into(), "**/ts".into(), "/items/*/noise".into()],
            ..CompareRules::default()
        };
        let a = json!({"id": 1, "ts": 5, "deep": {"ts": 1}, "items": [{"noise": 1, "v": 1}]});
        let b = json!({"id": 2, "deep": {"ts": 2}, "items": [{"noise": 2, "v": 1}]});
        assert_eq!(run(&a, &b, &rules).verdict(), Verdict::Match);
        let b2 = json!({"id": 2, "deep": {"ts": 2}, "items": [{"noise": 2, "v": 2}]});
        let c = run(&a, &b2, &rules);
        assert_eq!(c.diff_count, 1);
        assert_eq!(c.diffs[0].pointer, "/items/0/v");
    }

    #[test]
    fn pointers_escape_keys() {
        let c = run(&json!({"a/b": {"c~d": 1}}), &json!({"a/b": {"c~d": 2}}), &CompareRules::default());
        assert_eq!(c.diffs[0].pointer, "/a~1b/c~0d");
    }

    #[test]
    fn only_max_diffs_are_kept_but_all_are_counted() {
        let rules = CompareRules { max_diffs: 3, ..CompareRules::default() };
        let c = run(&json!([1, 2, 3, 4, 5]), &json!([0, 0, 0, 0, 0]), &rules);
        assert_eq!(c.diff_count, 5);
        assert_eq!(c.diffs.len(), 3);
        assert_eq!(c.diffs[2].pointer, "/2");
    }

    #[test]
    fn diff_values_are_clipped() {
        let long = "x".repeat(1000);
        let many: Vec<u32> = (0..100).collect();
        let c = run(&json!({"s": long, "a": many}), &json!({}), &CompareRules::default());
        assert_eq!(c.diffs[0].pointer, "/a");
        assert_eq!(c.diffs[0].production, json!({"array_len": 100}));
        let s = c.diffs[1].production.as_str().unwrap();
        assert_eq!(s.chars().count(), CLIP_CHARS + 1);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn exact_eq_compares_numbers_by_value_only() {
        let exact_eq = |a: Value, b: Value| exact_eq(&Json::from(a), &Json::from(b));
        assert!(exact_eq(json!([1, {"a": 2.0}]), json!([1.0, {"a": 2}])));
        assert!(!exact_eq(json!([1]), json!([1, 2])));
        assert!(!exact_eq(json!({"a": 1}), json!({"b": 1})));
        assert!(!exact_eq(json!("1"), json!(1)));
    }
}
