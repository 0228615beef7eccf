//! End-to-end tests of [`compare`]: statuses, encodings, every protocol, malformed inputs, and
//! properties over arbitrary JSON.
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{
    body::tests::{encoding, gzip, raw_deflate, zlib},
    *,
};

/// The built-in message definitions, loaded once for all tests.
pub(crate) fn builtin() -> &'static Schemas {
    static BUILTIN: std::sync::LazyLock<Schemas> = std::sync::LazyLock::new(Schemas::builtin);
    &BUILTIN
}

/// [`super::compare`] with the built-in message definitions.
fn compare(
    request: &RequestView<'_>,
    production: &Message<'_>,
    shadow: &ShadowOutcome<'_>,
    rules: &CompareRules,
) -> Comparison {
    super::compare(request, production, shadow, rules, builtin())
}

fn req(path: &str) -> RequestView<'_> {
    RequestView { method: "POST", path, headers: &[], body: b"{}" }
}

fn ok(body: &[u8]) -> Message<'_> {
    Message { status: 200, headers: &[], body, trailers: &[] }
}

fn run(path: &str, prod: &[u8], shadow: &[u8], rules: &CompareRules) -> Comparison {
    compare(&req(path), &ok(prod), &ShadowOutcome::Answered(ok(shadow)), rules)
}

fn run_json(path: &str, prod: &Value, shadow: &Value, rules: &CompareRules) -> Comparison {
    run(path, prod.to_string().as_bytes(), shadow.to_string().as_bytes(), rules)
}

fn strict() -> CompareRules {
    CompareRules::default()
}

fn tol(abs: f64) -> CompareRules {
    CompareRules { abs_tolerance: abs, ..CompareRules::default() }
}

fn pointers(c: &Comparison) -> Vec<&str> {
    c.diffs.iter().map(|d| d.pointer.as_str()).collect()
}

// ---- shadow outcome and status ----

#[test]
fn timeout_and_failure_are_reported_before_anything_else() {
    let c = compare(&req("/v2/models/m/infer"), &ok(b"{}"), &ShadowOutcome::TimedOut, &strict());
    assert_eq!(c.verdict, Verdict::ShadowTimeout);
    assert_eq!(c.protocol, Protocol::Oip);
    assert_eq!(c.diff_count, 0);
    let c = compare(&req("/x"), &ok(b"{}"), &ShadowOutcome::Failed("connection refused"), &strict());
    assert_eq!(c.verdict, Verdict::ShadowError);
    assert_eq!(c.note.as_deref(), Some("connection refused"));
    assert_eq!(c.protocol, Protocol::Bytes);
}

#[test]
fn shadow_failing_where_production_succeeded_is_a_shadow_error() {
    let shadow = Message { status: 503, headers: &[], body: b"busy", trailers: &[] };
    let c = compare(&req("/x"), &ok(b"{}"), &ShadowOutcome::Answered(shadow), &strict());
    assert_eq!(c.verdict, Verdict::ShadowError);
    assert_eq!(c.note.as_deref(), Some("status 200 vs 503"));
    assert_eq!(c.diff_count, 1);
    assert_eq!(c.diffs[0].pointer, "");
    assert_eq!(c.diffs[0].production, json!({"status": 200, "bytes": 2}));
    assert_eq!(c.diffs[0].shadow, json!({"status": 503, "bytes": 4}));
}

#[test]
fn other_status_differences_are_mismatches() {
    for (p, s) in [(404, 200), (200, 201), (500, 400), (200, 304)] {
        let prod = Message { status: p, headers: &[], body: b"", trailers: &[] };
        let shadow = Message { status: s, headers: &[], body: b"", trailers: &[] };
        let c = compare(&req("/x"), &prod, &ShadowOutcome::Answered(shadow), &strict());
        let want = if s == 304 { Verdict::ShadowError } else { Verdict::Mismatch };
        assert_eq!(c.verdict, want, "{p} vs {s}");
        assert_eq!(c.note, Some(format!("status {p} vs {s}")));
    }
}

#[test]
fn equal_error_statuses_compare_bodies() {
    let prod = Message { status: 400, headers: &[], body: br#"{"error": "bad input"}"#, trailers: &[] };
    let same = Message { status: 400, headers: &[], body: br#"{"error":"bad input"}"#, trailers: &[] };
    let other = Message { status: 400, headers: &[], body: br#"{"error":"other"}"#, trailers: &[] };
    assert_eq!(compare(&req("/x"), &prod, &ShadowOutcome::Answered(same), &strict()).verdict, Verdict::Match);
    let c = compare(&req("/x"), &prod, &ShadowOutcome::Answered(other), &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), vec!["/error"]);
}

// ---- encodings ----

#[test]
fn encoded_bodies_compare_decoded() {
    let text = br#"{"predictions": [1, 2]}"#;
    let headers = encoding("gzip");
    let gz = gzip(text);
    let shadow = Message { status: 200, headers: &headers, body: &gz, trailers: &[] };
    let c = compare(&req("/x"), &ok(text), &ShadowOutcome::Answered(shadow), &strict());
    assert_eq!(c.verdict, Verdict::Match);
    assert_eq!(c.protocol, Protocol::TfServing);
    let headers = encoding("deflate");
    let z = zlib(br#"{"predictions": [1, 3]}"#);
    let shadow = Message { status: 200, headers: &headers, body: &z, trailers: &[] };
    let c = compare(&req("/x"), &ok(text), &ShadowOutcome::Answered(shadow), &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), vec!["/predictions/1"]);
}

#[test]
fn corrupt_encoding_is_a_mismatch_with_a_note() {
    let headers = encoding("gzip");
    let shadow = Message { status: 200, headers: &headers, body: b"{\"a\":1}", trailers: &[] };
    let c = compare(&req("/x"), &ok(b"{\"a\":1}"), &ShadowOutcome::Answered(shadow), &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    let note = c.note.unwrap();
    assert!(note.starts_with("shadow body is not valid gzip"), "{note}");
}

#[test]
fn zip_bomb_is_a_mismatch_not_an_allocation() {
    let zeros = vec![b' '; 8 << 20];
    let bomb = gzip(&zeros);
    let headers = encoding("gzip");
    let rules = CompareRules { max_decoded_bytes: 1 << 20, ..strict() };
    let shadow = Message { status: 200, headers: &headers, body: &bomb, trailers: &[] };
    let c = compare(&req("/x"), &ok(b"{}"), &ShadowOutcome::Answered(shadow), &rules);
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(c.note.as_deref(), Some("shadow body is larger than 1048576 bytes once decoded"));
}

#[test]
fn unknown_encoding_compares_bytes_as_sent_with_a_note() {
    let headers = encoding("br");
    let prod = Message { status: 200, headers: &headers, body: b"\x1b\x01", trailers: &[] };
    let same = Message { status: 200, headers: &headers, body: b"\x1b\x01", trailers: &[] };
    let c = compare(&req("/x"), &prod, &ShadowOutcome::Answered(same), &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Match, Protocol::Bytes));
    assert_eq!(
        c.note.as_deref(),
        Some(
            "production body has unknown content-encoding br; compared as sent; shadow body has unknown content-encoding br; compared as sent"
        )
    );
    let c = compare(&req("/x"), &prod, &ShadowOutcome::Answered(ok(b"{}")), &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
}

// ---- bytes and malformed bodies ----

#[test]
fn non_json_bodies_compare_as_bytes() {
    let c = run("/x", b"hello", b"hello", &strict());
    assert_eq!((c.verdict, c.protocol, c.note), (Verdict::Match, Protocol::Bytes, None));
    let c = run("/x", b"hello", b"hello!", &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(c.diffs[0].production, json!({"bytes": 5}));
    assert_eq!(c.diffs[0].shadow, json!({"bytes": 6}));
}

#[test]
fn invalid_json_on_one_side_is_a_mismatch_with_a_note() {
    let c = run("/x", b"{\"a\": 1}", b"{\"a\": 1", &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Mismatch, Protocol::Bytes));
    assert!(c.note.unwrap().starts_with("shadow body is not JSON"));
}

#[test]
fn empty_bodies() {
    let c = run("/x", b"", b"", &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Match, Protocol::Bytes));
    let c = run("/x", b"{}", b"", &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(c.note.as_deref(), Some("shadow body is empty"));
}

#[test]
fn numbers_json_cannot_hold_are_compared_as_bytes() {
    // NaN is not JSON, and 1e400 does not fit an f64: such bodies compare byte for byte.
    let c = run("/x", b"[NaN]", b"[NaN]", &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Match, Protocol::Bytes));
    let c = run("/x", b"[1e400]", b"[1e401]", &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Mismatch, Protocol::Bytes));
}

#[test]
fn forced_bytes_compares_json_byte_for_byte() {
    let rules = CompareRules { protocol: ProtocolChoice::Bytes, ..strict() };
    let c = run("/x", b"{\"a\":1}", b"{\"a\": 1}", &rules);
    assert_eq!((c.verdict, c.protocol), (Verdict::Mismatch, Protocol::Bytes));
}

#[test]
fn deeply_nested_json_does_not_overflow_the_stack() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let c = run("/x", deep.as_bytes(), deep.as_bytes(), &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Match, Protocol::Bytes));
}

// ---- exact numbers ----

/// The diffs as the record file shows them.
fn diff_texts(c: &Comparison) -> Vec<String> {
    c.diffs.iter().map(|d| serde_json::to_string(d).unwrap()).collect()
}

#[test]
fn numbers_one_ulp_apart_differ_at_tolerance_zero() {
    let (a, b) = ("0.9736888111888111", "0.9736888111888112");
    assert_ne!(a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap(), "one ulp apart");
    for (p, s) in [(a, b), (b, a)] {
        let (prod, shadow) = (format!("[{p}, 0.5]"), format!("[{s}, 0.5]"));
        let c = run("/x", prod.as_bytes(), shadow.as_bytes(), &strict());
        assert_eq!((c.verdict, c.protocol), (Verdict::Mismatch, Protocol::Json));
        assert_eq!(diff_texts(&c), [format!(r#"{{"pointer":"/0","production":{p},"shadow":{s}}}"#)]);
        assert!(c.metrics.max_abs_error.unwrap() > 0.0);
        // A tolerance still applies, on the f64 values.
        let c = run("/x", prod.as_bytes(), shadow.as_bytes(), &tol(1e-15));
        assert_eq!(c.verdict, Verdict::WithinTolerance);
        let c = run("/x", prod.as_bytes(), shadow.as_bytes(), &tol(1e-17));
        assert_eq!(c.verdict, Verdict::Mismatch);
    }
}

#[test]
fn numbers_of_one_f64_but_different_values_differ() {
    let c = run("/x", b"[0.1]", b"[0.10000000000000001]", &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(diff_texts(&c), [r#"{"pointer":"/0","production":0.1,"shadow":0.10000000000000001}"#]);
    // Their f64 distance is 0, so any non-zero tolerance covers it.
    assert_eq!(c.metrics.max_abs_error, Some(0.0));
    assert_eq!(run("/x", b"[0.1]", b"[0.10000000000000001]", &tol(1e-300)).verdict, Verdict::WithinTolerance);
    let rel = CompareRules { rel_tolerance: 1e-300, ..strict() };
    assert_eq!(run("/x", b"[0.1]", b"[0.10000000000000001]", &rel).verdict, Verdict::WithinTolerance);
}

#[test]
fn one_value_written_differently_matches() {
    let c = run(
        "/x",
        b"[1, 1.0, 1e0, 10e-1, 1e308, -0, 0.50]",
        b"[1.0, 1e0, 10e-1, 1, 1.0e308, 0, 5E-1]",
        &strict(),
    );
    assert_eq!((c.verdict, c.diff_count), (Verdict::Match, 0));
    assert_eq!(c.metrics.max_abs_error, Some(0.0));
}

#[test]
fn extreme_exponents_compare_exactly() {
    let c = run("/x", b"[5e-324, 1e-400]", b"[5e-324, 0]", &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(diff_texts(&c), [r#"{"pointer":"/1","production":1e-400,"shadow":0}"#]);
    assert_eq!(run("/x", b"[1e-400]", b"[0]", &tol(1e-300)).verdict, Verdict::WithinTolerance);
    let c = run("/x", b"[5e-324]", b"[0]", &strict());
    assert_eq!(diff_texts(&c), [r#"{"pointer":"/0","production":5e-324,"shadow":0}"#]);
    assert_eq!(run("/x", b"[1e-400]", b"[1e-401]", &strict()).verdict, Verdict::Mismatch);
    assert_eq!(run("/x", b"[1e308]", b"[1.0e308]", &strict()).verdict, Verdict::Match);
    assert_eq!(run("/x", b"[1e308]", b"[1.0000000000000001e308]", &strict()).verdict, Verdict::Mismatch);
}

#[test]
fn integers_of_any_length_compare_exactly() {
    let cases: [(&str, &str, f64); 3] = [
        ("9007199254740993", "9007199254740992", 1.0),
        ("18446744073709551617", "18446744073709551616", 1.0),
        ("-36893488147419103232", "-36893488147419103231", 1.0),
    ];
    for (p, s, error) in cases {
        let c = run("/x", format!("[{p}]").as_bytes(), format!("[{s}]").as_bytes(), &strict());
        assert_eq!(c.verdict, Verdict::Mismatch, "{p} vs {s}");
        assert_eq!(diff_texts(&c), [format!(r#"{{"pointer":"/0","production":{p},"shadow":{s}}}"#)]);
        assert_eq!(c.metrics.max_abs_error, Some(error));
    }
    let long = format!("[{}]", "9".repeat(300));
    assert_eq!(run("/x", long.as_bytes(), long.as_bytes(), &strict()).verdict, Verdict::Match);
    let longer = format!("[{}8]", "9".repeat(299));
    assert_eq!(run("/x", long.as_bytes(), longer.as_bytes(), &strict()).verdict, Verdict::Mismatch);
    // Integer labels beyond 2^64 compare exactly too.
    let c = run("/invocations", b"[18446744073709551617]", b"[18446744073709551616]", &tol(10.0));
    assert_eq!((c.verdict, c.metrics.label_flips), (Verdict::Mismatch, 1));
}

#[test]
fn negative_zero_equals_zero() {
    assert_eq!(run("/x", b"[-0, -0.0, 0e-5]", b"[0, 0.0, -0]", &strict()).verdict, Verdict::Match);
}

#[test]
fn oip_scores_one_ulp_apart_differ_and_the_diff_shows_the_wire_text() {
    let body = |x: &str| {
        format!(
            r#"{{"outputs":[{{"name":"p","datatype":"FP64","shape":[1,2],"data":[{x},0.0263111888111889]}}]}}"#
        )
    };
    let c = run(OIP, body("0.9736888111888111").as_bytes(), body("0.9736888111888112").as_bytes(), &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Mismatch, Protocol::Oip));
    assert_eq!(
        diff_texts(&c),
        [r#"{"pointer":"/outputs/0/data/0","production":0.9736888111888111,"shadow":0.9736888111888112}"#]
    );
    assert_eq!((c.metrics.label_agreements, c.metrics.label_flips), (1, 0));
}

// ---- generic JSON ----

#[test]
fn generic_json_tolerance_and_ignores() {
    let a = json!({"score": 0.5, "id": "a", "meta": {"timestamp": 1}});
    let b = json!({"score": 0.5004, "id": "b", "meta": {"timestamp": 2}});
    let rules = CompareRules { ignore: vec!["/id".into(), "**/timestamp".into()], ..tol(0.001) };
    let c = run_json("/x", &a, &b, &rules);
    assert_eq!((c.verdict, c.protocol), (Verdict::WithinTolerance, Protocol::Json));
    assert!((c.metrics.max_abs_error.unwrap() - 0.0004).abs() < 1e-9);
    let c = run_json("/x", &a, &b, &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), vec!["/id", "/meta/timestamp", "/score"]);
}

// ---- Open Inference Protocol ----

fn oip(outputs: Value) -> Value {
    json!({"model_name": "m-v1", "model_version": "1", "id": "abc", "outputs": outputs})
}

fn scores(name: &str, data: Value) -> Value {
    json!({"name": name, "shape": [2, 3], "datatype": "FP32", "data": data})
}

const OIP: &str = "/v2/models/m/infer";

#[test]
fn oip_identical_answers_from_different_models_match() {
    let a = oip(json!([scores("probs", json!([0.1, 0.2, 0.7, 0.6, 0.3, 0.1]))]));
    let mut b = a.clone();
    b["model_name"] = json!("m-v2");
    b["model_version"] = json!("2");
    b["id"] = json!("other");
    let c = run_json(OIP, &a, &b, &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Match, Protocol::Oip));
    assert_eq!(c.metrics.rows, 2);
    assert_eq!((c.metrics.label_agreements, c.metrics.label_flips), (2, 0));
    assert_eq!(c.metrics.max_abs_error, Some(0.0));
    // Without the protocol's default ignores the name and version differ.
    let rules = CompareRules { protocol_default_ignores: false, ..strict() };
    let c = run_json(OIP, &a, &b, &rules);
    assert_eq!(pointers(&c), vec!["/id", "/model_name", "/model_version"]);
}

#[test]
fn oip_scores_within_tolerance_with_same_argmax() {
    let a = oip(json!([scores("probs", json!([0.1, 0.2, 0.7, 0.6, 0.3, 0.1]))]));
    let b = oip(json!([scores("probs", json!([0.12, 0.2, 0.68, 0.6, 0.3, 0.1]))]));
    let c = run_json(OIP, &a, &b, &tol(0.05));
    assert_eq!(c.verdict, Verdict::WithinTolerance);
    assert_eq!((c.metrics.label_agreements, c.metrics.label_flips), (2, 0));
    assert!((c.metrics.max_abs_error.unwrap() - 0.02).abs() < 1e-9);
    assert!((c.metrics.mean_abs_error.unwrap() - 0.04 / 6.0).abs() < 1e-9);
    let c = run_json(OIP, &a, &b, &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), vec!["/outputs/0/data/0", "/outputs/0/data/2"]);
}

#[test]
fn oip_argmax_flip_is_a_mismatch_even_within_tolerance() {
    let a = oip(json!([scores("probs", json!([0.1, 0.44, 0.46, 0.6, 0.3, 0.1]))]));
    let b = oip(json!([scores("probs", json!([0.1, 0.46, 0.44, 0.6, 0.3, 0.1]))]));
    let c = run_json(OIP, &a, &b, &tol(0.05));
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!((c.metrics.label_agreements, c.metrics.label_flips), (1, 1));
    assert_eq!(c.diff_count, 1);
    assert_eq!(c.diffs[0].pointer, "/outputs/0/data");
    assert_eq!(c.diffs[0].production, json!({"row": 0, "label": 2}));
    assert_eq!(c.diffs[0].shadow, json!({"row": 0, "label": 1}));
}

#[test]
fn oip_integer_labels_compare_exactly() {
    let labels = |data: Value| json!({"name": "label", "shape": [4], "datatype": "INT64", "data": data});
    let a = oip(json!([labels(json!([1, 0, 2, 2]))]));
    let b = oip(json!([labels(json!([1, 1, 2, 0]))]));
    let c = run_json(OIP, &a, &b, &tol(5.0));
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!((c.metrics.label_agreements, c.metrics.label_flips), (2, 2));
    assert_eq!(pointers(&c), vec!["/outputs/0/data/1", "/outputs/0/data/3"]);
    assert_eq!(c.metrics.max_abs_error, None);
    let bytes = |data: Value| json!({"name": "cls", "shape": [2], "datatype": "BYTES", "data": data});
    let c = run_json(
        OIP,
        &oip(json!([bytes(json!(["cat", "dog"]))])),
        &oip(json!([bytes(json!(["cat", "dog"]))])),
        &strict(),
    );
    assert_eq!((c.verdict, c.metrics.label_agreements), (Verdict::Match, 2));
}

#[test]
fn oip_outputs_match_by_name_not_position() {
    let y = json!({"name": "y", "shape": [1], "datatype": "FP32", "data": [0.5]});
    let z = json!({"name": "z", "shape": [1], "datatype": "INT32", "data": [3]});
    let c =
        run_json(OIP, &oip(json!([y.clone(), z.clone()])), &oip(json!([z.clone(), y.clone()])), &strict());
    assert_eq!(c.verdict, Verdict::Match);
    let c = run_json(OIP, &oip(json!([y.clone(), z.clone()])), &oip(json!([y.clone()])), &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), vec!["/outputs/1"]);
    assert_eq!(c.diffs[0].shadow, Value::Null);
}

#[test]
fn oip_ignoring_names_pairs_outputs_by_position() {
    let out = |name: &str| json!({"name": name, "shape": [1], "datatype": "FP32", "data": [0.5]});
    let rules = CompareRules { ignore: vec!["/outputs/*/name".into()], ..strict() };
    let c = run_json(OIP, &oip(json!([out("a")])), &oip(json!([out("b")])), &rules);
    assert_eq!(c.verdict, Verdict::Match);
    let c = run_json(OIP, &oip(json!([out("a")])), &oip(json!([out("b")])), &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), vec!["/outputs/0", "/outputs/0"]);
}

#[test]
fn oip_shape_and_datatype_differences_are_exact() {
    let a = oip(json!([{"name": "y", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]));
    let b = oip(json!([{"name": "y", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]));
    let c = run_json(OIP, &a, &b, &tol(10.0));
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), vec!["/outputs/0/shape", "/outputs/0/datatype"]);
}

#[test]
fn oip_shape_and_data_length_disagreeing_is_noted_and_compared_as_json() {
    let bad = oip(json!([{"name": "y", "shape": [2, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]));
    let c = run_json(OIP, &bad, &bad, &strict());
    assert_eq!(c.verdict, Verdict::Match);
    assert_eq!(
        c.note.as_deref(),
        Some("output y: shape [2, 3] does not match 3 data elements on production")
    );
    let good = oip(json!([{"name": "y", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]));
    let short = oip(json!([{"name": "y", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0]}]));
    let c = run_json(OIP, &good, &short, &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), vec!["/outputs/0/data/2"]);
    assert!(c.note.unwrap().ends_with("on shadow"));
}

#[test]
fn oip_wrong_shapes_never_panic() {
    let cases = [
        json!({"name": "y", "shape": "2x3", "datatype": "FP32", "data": [1.0]}),
        json!({"name": "y", "shape": [-1], "datatype": "FP32", "data": [1.0]}),
        json!({"name": "y", "shape": [u64::MAX, u64::MAX], "datatype": "FP32", "data": [1.0]}),
        json!({"name": "y", "shape": [2, 0], "datatype": "FP32", "data": []}),
        json!({"name": "y", "shape": [1, 2], "datatype": "FP32", "data": [[1.0, "x"]]}),
        json!({"name": "y", "shape": [1], "datatype": "FP32", "data": 5}),
        json!({"name": "y", "data": [1]}),
        json!({"data": null}),
    ];
    for case in &cases {
        let a = oip(json!([case]));
        assert_eq!(run_json(OIP, &a, &a, &strict()).verdict, Verdict::Match, "{case}");
        for other in &cases {
            let _ = run_json(OIP, &a, &oip(json!([other])), &tol(0.1));
        }
        let _ = run_json(OIP, &a, &json!({"outputs": 3}), &strict());
        let c = run_json(OIP, &a, &json!([1]), &strict());
        assert_eq!(c.verdict, Verdict::Mismatch);
        assert_eq!(c.note.as_deref(), Some("shadow body does not have the oip shape"));
    }
}

#[test]
fn oip_nested_data_is_flattened() {
    let a = oip(json!([scores("p", json!([0.1, 0.2, 0.7, 0.6, 0.3, 0.1]))]));
    let b = oip(json!([scores("p", json!([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]))]));
    let c = run_json(OIP, &a, &b, &strict());
    assert_eq!(c.verdict, Verdict::Match);
    assert_eq!(c.metrics.label_agreements, 2);
}

// ---- TF Serving and MLflow ----

#[test]
fn tf_serving_rows_of_scores() {
    let a = json!({"predictions": [[0.1, 0.9], [0.8, 0.2], [0.5, 0.4]]});
    let b = json!({"predictions": [[0.11, 0.89], [0.7, 0.3], [0.4, 0.5]]});
    let c = run_json("/v1/models/m:predict", &a, &b, &tol(0.2));
    assert_eq!((c.verdict, c.protocol), (Verdict::Mismatch, Protocol::TfServing));
    assert_eq!(c.metrics.rows, 3);
    assert_eq!((c.metrics.label_agreements, c.metrics.label_flips), (2, 1));
    assert_eq!(pointers(&c), vec!["/predictions/2"]);
    assert_eq!(c.diffs[0].production, json!({"label": 0}));
    assert!((c.metrics.max_abs_error.unwrap() - 0.1).abs() < 1e-9);
    let b2 = json!({"predictions": [[0.11, 0.89], [0.7, 0.3], [0.45, 0.4]]});
    assert_eq!(run_json("/v1/models/m:predict", &a, &b2, &tol(0.2)).verdict, Verdict::WithinTolerance);
}

#[test]
fn tf_serving_scalars_labels_and_row_counts() {
    let a = json!({"predictions": [1.5, 3, "cat", true]});
    let b = json!({"predictions": [1.55, 4, "cat", true, 9]});
    let c = run_json("/v1/models/m:predict", &a, &b, &tol(0.1));
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(c.metrics.rows, 4);
    assert_eq!((c.metrics.label_agreements, c.metrics.label_flips), (2, 1));
    assert_eq!(pointers(&c), vec!["/predictions/1", "/predictions/4"]);
}

#[test]
fn mlflow_bare_array_and_predictions_object() {
    let c = run("/invocations", b"[0, 1, 1]", b"[0, 1, 0]", &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Mismatch, Protocol::Mlflow));
    assert_eq!((c.metrics.label_agreements, c.metrics.label_flips), (2, 1));
    let c = run("/invocations", br#"{"predictions": [0.5]}"#, br#"{"predictions": [0.5]}"#, &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Match, Protocol::Mlflow));
    let c = run("/invocations", br#"[{"a": 1.0}]"#, br#"[{"a": 1.01}]"#, &tol(0.1));
    assert_eq!(c.verdict, Verdict::WithinTolerance);
    let c = run("/invocations", b"[1]", br#"{"predictions": [1]}"#, &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
}

// ---- OpenAI ----

fn chat(content: &str, finish: &str, tokens: u64) -> Value {
    json!({
        "id": format!("chatcmpl-{tokens}"), "object": "chat.completion", "created": tokens,
        "model": format!("model-{tokens}"), "system_fingerprint": "fp",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": tokens + 5}
    })
}

#[test]
fn openai_chat_same_text_matches_and_reports_tokens() {
    let c =
        run_json("/v1/chat/completions", &chat("Paris.", "stop", 2), &chat("Paris.", "stop", 3), &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Match, Protocol::OpenAi));
    assert_eq!(c.metrics.text_equal, Some(true));
    assert_eq!(c.metrics.finish_reason_equal, Some(true));
    assert_eq!((c.metrics.prod_tokens, c.metrics.shadow_tokens), (Some(2), Some(3)));
    assert_eq!(c.metrics.rows, 1);
}

#[test]
fn openai_text_or_finish_reason_differences_are_mismatches() {
    let c =
        run_json("/v1/chat/completions", &chat("Paris.", "stop", 2), &chat("Lyon.", "stop", 2), &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(c.metrics.text_equal, Some(false));
    assert_eq!(pointers(&c), vec!["/choices/0/message/content"]);
    assert_eq!(c.diffs[0].shadow, json!("Lyon."));
    let c =
        run_json("/v1/chat/completions", &chat("Paris.", "stop", 2), &chat("Paris.", "length", 2), &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!((c.metrics.text_equal, c.metrics.finish_reason_equal), (Some(true), Some(false)));
    assert_eq!(pointers(&c), vec!["/choices/0/finish_reason"]);
    let rules = CompareRules { ignore: vec!["/choices/*/finish_reason".into()], ..strict() };
    let c =
        run_json("/v1/chat/completions", &chat("Paris.", "stop", 2), &chat("Paris.", "length", 2), &rules);
    assert_eq!(c.verdict, Verdict::Match);
    assert_eq!(c.metrics.finish_reason_equal, Some(false));
}

#[test]
fn openai_completions_and_choice_counts() {
    let a = json!({"id": "1", "object": "text_completion", "choices": [{"text": "a", "finish_reason": "stop"}, {"text": "b", "finish_reason": "stop"}], "usage": {"total_tokens": 9}});
    let b = json!({"id": "2", "object": "text_completion", "choices": [{"text": "a", "finish_reason": "stop", "logprobs": {"x": 1}}]});
    let c = run_json("/v1/completions", &a, &b, &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), vec!["/choices/1"]);
    assert_eq!(c.metrics.text_equal, Some(false));
    assert_eq!((c.metrics.prod_tokens, c.metrics.shadow_tokens), (Some(9), None));
    let c = run_json("/v1/completions", &a, &a, &strict());
    assert_eq!(c.verdict, Verdict::Match);
}

#[test]
fn openai_tool_calls_compare_without_their_ids() {
    let call = |id: &str, args: &str| json!({"choices": [{"message": {"content": null, "tool_calls": [{"id": id, "type": "function", "function": {"name": "f", "arguments": args}}]}, "finish_reason": "tool_calls"}]});
    let c = run_json("/v1/chat/completions", &call("call_1", "{}"), &call("call_2", "{}"), &strict());
    assert_eq!(c.verdict, Verdict::Match);
    let c = run_json("/v1/chat/completions", &call("call_1", "{}"), &call("call_1", "{\"x\":1}"), &strict());
    assert_eq!(pointers(&c), vec!["/choices/0/message/tool_calls/0/function/arguments"]);
}

#[test]
fn openai_shadow_without_choices_is_a_mismatch() {
    let c = run_json(
        "/v1/chat/completions",
        &chat("x", "stop", 1),
        &json!({"error": {"message": "overloaded"}}),
        &strict(),
    );
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(c.metrics.text_equal, Some(false));
    assert!(pointers(&c).contains(&"/choices"));
}

#[test]
fn comparison_serializes_for_records() {
    let c = run_json("/v1/chat/completions", &chat("a", "stop", 1), &chat("b", "stop", 1), &strict());
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["verdict"], json!("mismatch"));
    assert_eq!(v["protocol"], json!("openai"));
    assert_eq!(v["diffs"][0]["pointer"], json!("/choices/0/message/content"));
    assert_eq!(v["metrics"]["text_equal"], json!(false));
    assert_eq!(v["diff_count"], json!(1));
}

// ---- properties ----

pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z~/]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z~/]{0,4}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Pointers to every number in `v`.
fn numbers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Number(_) => out.push(at),
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, x)| numbers(x, format!("{at}/{i}"), out))
        }
        Value::Object(map) => {
            map.iter().for_each(|(k, x)| numbers(x, format!("{at}/{}", pointer::escape(k)), out))
        }
        _ => {}
    }
}

fn paths(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Array(items) => items.iter().enumerate().for_each(|(i, x)| paths(x, format!("{at}/{i}"), out)),
        Value::Object(map) => {
            map.iter().for_each(|(k, x)| paths(x, format!("{at}/{}", pointer::escape(k)), out))
        }
        _ => {}
    }
}

proptest! {
    #[test]
    fn any_value_matches_itself(v in arb_json(), path in prop_oneof![Just("/x"), Just("/v2/models/m/infer"), Just("/v1/chat/completions"), Just("/invocations")]) {
        let c = run_json(path, &v, &v, &strict());
        prop_assert_eq!(c.verdict, Verdict::Match);
        prop_assert_eq!(c.diff_count, 0);
    }

    #[test]
    fn diff_count_is_symmetric(a in arb_json(), b in arb_json()) {
        let rules = CompareRules { max_diffs: usize::MAX, ..tol(0.5) };
        let ab = run_json("/x", &a, &b, &rules);
        let ba = run_json("/x", &b, &a, &rules);
        prop_assert_eq!(ab.diff_count, ba.diff_count);
        prop_assert_eq!(ab.verdict, ba.verdict);
        let sorted = |c: &Comparison| {
            let mut p: Vec<String> = c.diffs.iter().map(|d| d.pointer.clone()).collect();
            p.sort();
            p
        };
        prop_assert_eq!(sorted(&ab), sorted(&ba));
    }

    #[test]
    fn perturbing_one_number_respects_the_tolerance(v in arb_json(), pick in any::<prop::sample::Index>(), small in 0.01f64..0.9, big in 1.1f64..100.0) {
        let mut targets = Vec::new();
        numbers(&v, String::new(), &mut targets);
        prop_assume!(!targets.is_empty());
        let target = &targets[pick.index(targets.len())];
        let perturb = |delta: f64| {
            let mut w = v.clone();
            if let Some(n) = w.pointer_mut(target) {
                let x = n.as_f64().unwrap_or(0.0);
                *n = json!(x + delta);
            }
            w
        };
        // Values are at most 1e6 or i64, so an f64 step of 0.01..100 on magnitudes up to 2^63
        // can round away; only assert where the step survives.
        let base = v.pointer(target).and_then(Value::as_f64).unwrap_or(0.0);
        prop_assume!(base.abs() < 1e9);
        let rules = tol(1.0);
        let c = run_json("/x", &v, &perturb(small), &rules);
        prop_assert_eq!(c.verdict, Verdict::WithinTolerance);
        prop_assert_eq!(c.diff_count, 0);
        let c = run_json("/x", &v, &perturb(big), &rules);
        prop_assert_eq!(c.verdict, Verdict::Mismatch);
        prop_assert_eq!(c.diff_count, 1);
        prop_assert_eq!(&c.diffs[0].pointer, target);
    }

    #[test]
    fn ignored_pointers_never_produce_diffs(a in arb_json(), b in arb_json(), pick in any::<prop::sample::Index>()) {
        let mut all = Vec::new();
        paths(&a, String::new(), &mut all);
        paths(&b, String::new(), &mut all);
        let ignored = all[pick.index(all.len())].clone();
        let rules = CompareRules { ignore: vec![ignored.clone()], max_diffs: usize::MAX, ..strict() };
        let c = run_json("/x", &a, &b, &rules);
        for d in &c.diffs {
            prop_assert!(d.pointer != ignored && !d.pointer.starts_with(&format!("{ignored}/")),
                "{} under ignored {}", d.pointer, ignored);
        }
    }

    #[test]
    fn encoded_bodies_equal_their_decoded_form(v in arb_json(), coding in 0..3usize) {
        let text = v.to_string();
        let (name, body) = match coding {
            0 => ("gzip", gzip(text.as_bytes())),
            1 => ("deflate", zlib(text.as_bytes())),
            _ => ("deflate", raw_deflate(text.as_bytes())),
        };
        let headers = encoding(name);
        let shadow = Message { status: 200, headers: &headers, body: &body, trailers: &[] };
        let c = compare(&req("/x"), &ok(text.as_bytes()), &ShadowOutcome::Answered(shadow), &strict());
        prop_assert_eq!(c.verdict, Verdict::Match);
        prop_assert_eq!(c.note, None);
    }

    #[test]
    fn arbitrary_bytes_never_panic(a in prop::collection::vec(any::<u8>(), 0..64), b in prop::collection::vec(any::<u8>(), 0..64), enc in prop_oneof![Just("gzip"), Just("deflate"), Just("identity"), Just("br")]) {
        let headers = encoding(enc);
        let prod = Message { status: 200, headers: &headers, body: &a, trailers: &[] };
        let shadow = Message { status: 200, headers: &[], body: &b, trailers: &[] };
        let _ = compare(&req("/v2/models/m/infer"), &prod, &ShadowOutcome::Answered(shadow), &strict());
    }
}
