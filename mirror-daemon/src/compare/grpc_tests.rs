//! End-to-end tests of [`compare`] on gRPC answers, with real encoded protobuf messages.
use std::{collections::HashMap, io::Write, sync::LazyLock};

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Value as ReflectValue};
use serde_json::json;

use super::{
    tensor::{bf16_to_f32, half_to_f32},
    tests::builtin,
    *,
};
use crate::{
    exchange::Header,
    proto::{
        inference::{
            InferParameter, InferTensorContents, ModelInferResponse, infer_parameter::ParameterChoice,
            model_infer_response::InferOutputTensor,
        },
        tensorflow::{
            DataType, TensorProto, TensorShapeProto,
            serving::{ModelSpec, PredictResponse},
            tensor_shape_proto::Dim,
        },
    },
};

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const PREDICT: &str = "/tensorflow.serving.PredictionService/Predict";

fn header(name: &str, value: &str) -> Header {
    Header { name: name.into(), value: Bytes::from(value.to_string()) }
}

static GRPC: LazyLock<Vec<Header>> = LazyLock::new(|| vec![header("content-type", "application/grpc")]);
static OK: LazyLock<Vec<Header>> = LazyLock::new(|| vec![header("grpc-status", "0")]);

fn frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend((payload.len() as u32).to_be_bytes());
    out.extend(payload);
    out
}

fn body(messages: &[Vec<u8>]) -> Vec<u8> {
    messages.iter().flat_map(|m| frame(false, m)).collect()
}

fn request(path: &str) -> RequestView<'_> {
    RequestView { method: "POST", path, headers: &GRPC, body: b"" }
}

fn answer<'a>(body: &'a [u8], trailers: &'a [Header]) -> Message<'a> {
    Message { status: 200, headers: &GRPC, body, trailers }
}

fn run_with(path: &str, prod: &[u8], shadow: &[u8], rules: &CompareRules, schemas: &Schemas) -> Comparison {
    compare(&request(path), &answer(prod, &OK), &ShadowOutcome::Answered(answer(shadow, &OK)), rules, schemas)
}

fn run(path: &str, prod: &[u8], shadow: &[u8], rules: &CompareRules) -> Comparison {
    run_with(path, prod, shadow, rules, builtin())
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

fn diff_texts(c: &Comparison) -> Vec<String> {
    c.diffs.iter().map(|d| serde_json::to_string(d).unwrap()).collect()
}

// ---- Open Inference Protocol ----

fn output(
    name: &str,
    datatype: &str,
    shape: &[i64],
    contents: Option<InferTensorContents>,
) -> InferOutputTensor {
    InferOutputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents,
    }
}

fn infer(model: &str, outputs: Vec<InferOutputTensor>, raw: Vec<Vec<u8>>) -> Vec<u8> {
    ModelInferResponse {
        model_name: model.into(),
        model_version: "1".into(),
        id: format!("{model}-id"),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    }
    .encode_to_vec()
}

fn fp32(values: &[f32]) -> InferTensorContents {
    InferTensorContents { fp32_contents: values.to_vec(), ..Default::default() }
}

fn le_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Scores `[2, 3]` as typed contents.
fn typed_scores(model: &str, values: &[f32]) -> Vec<u8> {
    body(&[infer(model, vec![output("probs", "FP32", &[2, 3], Some(fp32(values)))], vec![])])
}

/// The same scores as raw contents.
fn raw_scores(model: &str, values: &[f32]) -> Vec<u8> {
    body(&[infer(model, vec![output("probs", "FP32", &[2, 3], None)], vec![le_f32(values)])])
}

const SCORES: [f32; 6] = [0.1, 0.2, 0.7, 0.6, 0.3, 0.1];

#[test]
fn typed_and_raw_contents_of_the_same_scores_match() {
    for (prod, shadow) in [
        (typed_scores("m-v1", &SCORES), raw_scores("m-v2", &SCORES)),
        (raw_scores("m-v1", &SCORES), typed_scores("m-v2", &SCORES)),
        (raw_scores("m-v1", &SCORES), raw_scores("m-v2", &SCORES)),
    ] {
        let c = run(MODEL_INFER, &prod, &shadow, &strict());
        assert_eq!((c.verdict, c.protocol, c.note.as_deref()), (Verdict::Match, Protocol::Oip, None));
        assert_eq!(c.metrics.rows, 2);
        assert_eq!((c.metrics.label_agreements, c.metrics.label_flips), (2, 0));
    }
    // Without the protocol's default ignores, the model's name, version and id differ.
    let rules = CompareRules { protocol_default_ignores: false, ..strict() };
    let c = run(MODEL_INFER, &typed_scores("m-v1", &SCORES), &raw_scores("m-v2", &SCORES), &rules);
    assert_eq!(pointers(&c), ["/id", "/model_name"]);
}

#[test]
fn typed_and_raw_contents_give_the_same_verdicts() {
    let close = [0.12, 0.2, 0.68, 0.6, 0.3, 0.1];
    let flipped = [0.1, 0.46, 0.44, 0.6, 0.3, 0.1];
    let base = [0.1, 0.44, 0.46, 0.6, 0.3, 0.1];
    for (shadow_values, rules, verdict, flips) in [
        (close, tol(0.05), Verdict::WithinTolerance, 0),
        (close, strict(), Verdict::Mismatch, 0),
        (flipped, tol(0.05), Verdict::Mismatch, 1),
    ] {
        let prod_values = if flips == 1 { base } else { SCORES };
        let typed =
            run(MODEL_INFER, &typed_scores("a", &prod_values), &typed_scores("b", &shadow_values), &rules);
        let raw = run(MODEL_INFER, &raw_scores("a", &prod_values), &raw_scores("b", &shadow_values), &rules);
        let mixed =
            run(MODEL_INFER, &typed_scores("a", &prod_values), &raw_scores("b", &shadow_values), &rules);
        for c in [&typed, &raw, &mixed] {
            assert_eq!(c.verdict, verdict);
            assert_eq!(c.metrics.label_flips, flips);
            assert_eq!(c.diffs, typed.diffs);
            assert_eq!(c.metrics.max_abs_error, typed.metrics.max_abs_error);
        }
    }
    let c = run(MODEL_INFER, &typed_scores("a", &base), &raw_scores("b", &flipped), &tol(0.05));
    assert_eq!(pointers(&c), ["/outputs/0/data"]);
    assert_eq!(c.diffs[0].production, json!({"row": 0, "label": 2}));
    let c = run(MODEL_INFER, &typed_scores("a", &SCORES), &raw_scores("b", &close), &strict());
    assert_eq!(pointers(&c), ["/outputs/0/data/0", "/outputs/0/data/2"]);
    // f32 elements are shown as their shortest text.
    assert_eq!(diff_texts(&c)[0], r#"{"pointer":"/outputs/0/data/0","production":0.1,"shadow":0.12}"#);
}

#[test]
fn fp32_one_ulp_apart_differs_at_tolerance_zero() {
    let x = 0.97368884f32;
    let next = f32::from_bits(x.to_bits() + 1);
    let c = run(
        MODEL_INFER,
        &raw_scores("a", &[x, 0.0, 0.0, 0.0, 0.0, 0.0]),
        &raw_scores("a", &[next, 0.0, 0.0, 0.0, 0.0, 0.0]),
        &strict(),
    );
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(
        diff_texts(&c),
        [format!(r#"{{"pointer":"/outputs/0/data/0","production":{x},"shadow":{next}}}"#)]
    );
}

#[test]
fn half_and_bfloat16_bit_patterns_widen_exactly() {
    for (bits, value) in [
        (0x3c00u16, 1.0f32),
        (0xc000, -2.0),
        (0x3555, 0.333_251_95),
        (0x7bff, 65504.0),
        (0x0400, 6.103_515_6e-5),
        (0x0001, 5.960_464_5e-8),
        (0x03ff, 6.097_555e-5),
        (0x0000, 0.0),
    ] {
        assert_eq!(half_to_f32(bits), value, "{bits:#06x}");
    }
    assert!(half_to_f32(0x8000).is_sign_negative() && half_to_f32(0x8000) == 0.0);
    assert_eq!(half_to_f32(0x7c00), f32::INFINITY);
    assert_eq!(half_to_f32(0xfc00), f32::NEG_INFINITY);
    assert!(half_to_f32(0x7e00).is_nan());
    assert_eq!(bf16_to_f32(0x3f80), 1.0);
    assert_eq!(bf16_to_f32(0x4049), 3.140625);
    assert_eq!(bf16_to_f32(0xc2f7), -123.5);
    assert!(bf16_to_f32(0x7fc0).is_nan());
}

fn raw16(name: &str, datatype: &str, shape: &[i64], bits: &[u16]) -> Vec<u8> {
    let raw: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    body(&[infer("m", vec![output(name, datatype, shape, None)], vec![raw])])
}

#[test]
fn fp16_and_bf16_raw_contents_compare_as_numbers() {
    // FP16 1.0, 0.5, -2.0 against 1.0, 0.50048828125 (the next half after 0.5), -2.0.
    let a = raw16("h", "FP16", &[3], &[0x3c00, 0x3800, 0xc000]);
    let b = raw16("h", "FP16", &[3], &[0x3c00, 0x3801, 0xc000]);
    let c = run(MODEL_INFER, &a, &b, &strict());
    assert_eq!(diff_texts(&c), [r#"{"pointer":"/outputs/0/data/1","production":0.5,"shadow":0.5004883}"#]);
    assert_eq!(run(MODEL_INFER, &a, &b, &tol(0.001)).verdict, Verdict::WithinTolerance);
    assert_eq!(run(MODEL_INFER, &a, &a, &strict()).verdict, Verdict::Match);
    // BF16 scores [1, 2]: argmax flips from 1 to 0.
    let x = raw16("p", "BF16", &[1, 2], &[0x3e80, 0x3f40]); // 0.25, 0.75
    let y = raw16("p", "BF16", &[1, 2], &[0x3f40, 0x3e80]);
    let c = run(MODEL_INFER, &x, &y, &tol(1.0));
    assert_eq!((c.verdict, c.metrics.label_flips), (Verdict::Mismatch, 1));
    assert_eq!(c.diffs[0].shadow, json!({"row": 0, "label": 0}));
}

fn bytes_raw(elements: &[&[u8]]) -> Vec<u8> {
    elements
        .iter()
        .flat_map(|e| (e.len() as u32).to_le_bytes().into_iter().chain(e.iter().copied()))
        .collect()
}

#[test]
fn bytes_outputs_are_labels_from_typed_or_raw_contents() {
    let typed = |labels: &[&[u8]]| {
        let contents = InferTensorContents {
            bytes_contents: labels.iter().map(|l| l.to_vec()).collect(),
            ..Default::default()
        };
        body(&[infer("m", vec![output("cls", "BYTES", &[labels.len() as i64], Some(contents))], vec![])])
    };
    let raw = |labels: &[&[u8]]| {
        body(&[infer(
            "m",
            vec![output("cls", "BYTES", &[labels.len() as i64], None)],
            vec![bytes_raw(labels)],
        )])
    };
    let c = run(MODEL_INFER, &typed(&[b"cat", b"dog", b""]), &raw(&[b"cat", b"dog", b""]), &strict());
    assert_eq!((c.verdict, c.metrics.label_agreements), (Verdict::Match, 3));
    let c = run(MODEL_INFER, &raw(&[b"cat", b"dog"]), &raw(&[b"cat", b"cow"]), &tol(100.0));
    assert_eq!((c.verdict, c.metrics.label_flips), (Verdict::Mismatch, 1));
    assert_eq!(diff_texts(&c), [r#"{"pointer":"/outputs/0/data/1","production":"dog","shadow":"cow"}"#]);
    // Elements that are not UTF-8 are shown in base64.
    let c = run(MODEL_INFER, &raw(&[b"\xff\x00"]), &raw(&[b"\xfe"]), &strict());
    assert_eq!(c.diffs[0].production, json!({"base64": "/wA="}));
}

#[test]
fn integer_labels_flip_exactly_whatever_the_tolerance() {
    let labels = |values: &[i64]| {
        let contents = InferTensorContents { int64_contents: values.to_vec(), ..Default::default() };
        body(&[infer("m", vec![output("label", "INT64", &[values.len() as i64], Some(contents))], vec![])])
    };
    let raw = |values: &[i64]| {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        body(&[infer("m", vec![output("label", "INT64", &[values.len() as i64], None)], vec![bytes])])
    };
    let big = i64::MAX;
    for prod in [labels(&[1, 0, 2, big]), raw(&[1, 0, 2, big])] {
        let c = run(MODEL_INFER, &prod, &raw(&[1, 1, 2, big - 1]), &tol(5.0));
        assert_eq!((c.verdict, c.metrics.label_agreements, c.metrics.label_flips), (Verdict::Mismatch, 2, 2));
        assert_eq!(pointers(&c), ["/outputs/0/data/1", "/outputs/0/data/3"]);
        assert_eq!(
            diff_texts(&c)[1],
            format!(r#"{{"pointer":"/outputs/0/data/3","production":{big},"shadow":{}}}"#, big - 1)
        );
    }
    // Narrow raw integers are sign-extended.
    let int8 =
        |v: &[u8]| body(&[infer("m", vec![output("q", "INT8", &[v.len() as i64], None)], vec![v.to_vec()])]);
    let typed8 = body(&[infer(
        "m",
        vec![output(
            "q",
            "INT8",
            &[2],
            Some(InferTensorContents { int_contents: vec![-1, 127], ..Default::default() }),
        )],
        vec![],
    )]);
    assert_eq!(run(MODEL_INFER, &int8(&[0xff, 0x7f]), &typed8, &strict()).verdict, Verdict::Match);
}

#[test]
fn malformed_raw_contents_are_mismatches_with_a_note() {
    let good = raw_scores("m", &SCORES);
    // 10 bytes of FP32.
    let ragged = body(&[infer("m", vec![output("probs", "FP32", &[2, 3], None)], vec![vec![0; 10]])]);
    let c = run(MODEL_INFER, &good, &ragged, &tol(1.0));
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), ["/outputs/0/data"]);
    assert!(
        c.note.as_deref().unwrap().contains(
            "shadow message 0: output probs: has 10 bytes of raw content, not a multiple of 4 (FP32)"
        ),
        "{:?}",
        c.note
    );
    // Both sides equally malformed is still a mismatch: neither answer can be read.
    assert_eq!(run(MODEL_INFER, &ragged, &ragged, &strict()).verdict, Verdict::Mismatch);
    // 5 elements for a [2, 3] shape.
    let short = body(&[infer("m", vec![output("probs", "FP32", &[2, 3], None)], vec![le_f32(&[0.1; 5])])]);
    let c = run(MODEL_INFER, &short, &good, &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert!(c.note.as_deref().unwrap().contains("production message 0: output probs: raw_output_contents holds 5 FP32 elements but shape [2, 3] needs 6"), "{:?}", c.note);
    assert_eq!(c.diff_count, 1);
    // Missing raw entry, truncated BYTES prefix, length beyond the content.
    let two_outputs = body(&[infer(
        "m",
        vec![output("a", "FP32", &[1], None), output("b", "FP32", &[1], None)],
        vec![le_f32(&[1.0])],
    )]);
    let c = run(MODEL_INFER, &two_outputs, &two_outputs, &strict());
    assert_eq!((c.verdict, pointers(&c)), (Verdict::Mismatch, vec!["/outputs/1/data"]));
    assert!(c.note.unwrap().contains("output b: no raw_output_contents entry at index 1"));
    for broken in [vec![3, 0, 0], vec![9, 0, 0, 0, b'a']] {
        let b = body(&[infer("m", vec![output("s", "BYTES", &[1], None)], vec![broken])]);
        let c = run(MODEL_INFER, &b, &b, &strict());
        assert_eq!(c.verdict, Verdict::Mismatch);
        assert!(c.note.unwrap().contains("output s: BYTES element 0"));
    }
    // Typed contents whose count disagrees with the shape follow the REST rules: noted, compared as JSON.
    let typed_short =
        body(&[infer("m", vec![output("probs", "FP32", &[2, 3], Some(fp32(&[0.1; 5])))], vec![])]);
    let c = run(MODEL_INFER, &typed_short, &typed_short, &strict());
    assert_eq!(c.verdict, Verdict::Match);
    assert_eq!(
        c.note.as_deref(),
        Some("output probs: shape [2, 3] does not match 5 data elements on production")
    );
}

#[test]
fn unknown_datatypes_compare_raw_contents_as_bytes() {
    let b = |raw: Vec<u8>| body(&[infer("m", vec![output("x", "FP8", &[4], None)], vec![raw])]);
    let c = run(MODEL_INFER, &b(vec![1, 2, 3, 4]), &b(vec![1, 2, 3, 4]), &strict());
    assert_eq!(c.verdict, Verdict::Match);
    assert!(c.note.unwrap().contains("datatype \"FP8\" has no known layout; raw contents compared as bytes"));
    let c = run(MODEL_INFER, &b(vec![1, 2, 3, 4]), &b(vec![1, 2, 3, 5]), &strict());
    assert_eq!((c.verdict, pointers(&c)), (Verdict::Mismatch, vec!["/outputs/0/data/sha256"]));
}

#[test]
fn parameters_and_outputs_by_name() {
    let with_param = |value: i64| {
        let mut o = output("y", "FP32", &[1], Some(fp32(&[0.5])));
        o.parameters.insert(
            "classes".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(value)) },
        );
        body(&[infer(
            "m",
            vec![
                o,
                output(
                    "z",
                    "INT32",
                    &[1],
                    Some(InferTensorContents { int_contents: vec![3], ..Default::default() }),
                ),
            ],
            vec![],
        )])
    };
    assert_eq!(run(MODEL_INFER, &with_param(2), &with_param(2), &strict()).verdict, Verdict::Match);
    let c = run(MODEL_INFER, &with_param(2), &with_param(3), &strict());
    assert_eq!(pointers(&c), ["/outputs/0/parameters/classes"]);
    // Outputs pair by name, whatever their order.
    let reversed = body(&[infer(
        "m",
        vec![
            output(
                "z",
                "INT32",
                &[1],
                Some(InferTensorContents { int_contents: vec![3], ..Default::default() }),
            ),
            output("y", "FP32", &[1], Some(fp32(&[0.5]))),
        ],
        vec![],
    )]);
    let plain = body(&[infer(
        "m",
        vec![
            output("y", "FP32", &[1], Some(fp32(&[0.5]))),
            output(
                "z",
                "INT32",
                &[1],
                Some(InferTensorContents { int_contents: vec![3], ..Default::default() }),
            ),
        ],
        vec![],
    )]);
    assert_eq!(run(MODEL_INFER, &plain, &reversed, &strict()).verdict, Verdict::Match);
}

#[test]
fn non_finite_floats_compare_as_their_names() {
    let a = raw_scores("m", &[f32::NAN, 0.2, 0.7, f32::INFINITY, 0.3, 0.1]);
    assert_eq!(run(MODEL_INFER, &a, &a, &strict()).verdict, Verdict::Match);
    let b = raw_scores("m", &[0.1, 0.2, 0.7, f32::NEG_INFINITY, 0.3, 0.1]);
    let c = run(MODEL_INFER, &a, &b, &tol(1.0));
    assert_eq!(diff_texts(&c)[0], r#"{"pointer":"/outputs/0/data/0","production":"NaN","shadow":0.1}"#);
    assert_eq!(
        diff_texts(&c)[1],
        r#"{"pointer":"/outputs/0/data/3","production":"Infinity","shadow":"-Infinity"}"#
    );
}

// ---- encodings, framing and statuses ----

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn compressed_messages_compare_decompressed() {
    let message = infer("m", vec![output("probs", "FP32", &[2, 3], None)], vec![le_f32(&SCORES)]);
    let plain = body(std::slice::from_ref(&message));
    for (encoding, compressed) in [("gzip", gzip(&message)), ("deflate", zlib(&message))] {
        let headers = vec![header("content-type", "application/grpc"), header("grpc-encoding", encoding)];
        let framed = frame(true, &compressed);
        let shadow = Message { status: 200, headers: &headers, body: &framed, trailers: &OK };
        let c = compare(
            &request(MODEL_INFER),
            &answer(&plain, &OK),
            &ShadowOutcome::Answered(shadow),
            &strict(),
            builtin(),
        );
        assert_eq!((c.verdict, c.note), (Verdict::Match, None), "{encoding}");
    }
    // Flagged compressed without an encoding, and an unknown encoding, are mismatches that say so.
    let framed = frame(true, &gzip(&message));
    let c = run(MODEL_INFER, &plain, &framed, &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(
        c.note.as_deref(),
        Some("shadow body message 0 is flagged compressed but the stream names no grpc-encoding")
    );
    let headers = vec![header("content-type", "application/grpc"), header("grpc-encoding", "snappy")];
    let shadow = Message { status: 200, headers: &headers, body: &framed, trailers: &OK };
    let c = compare(
        &request(MODEL_INFER),
        &answer(&plain, &OK),
        &ShadowOutcome::Answered(shadow),
        &strict(),
        builtin(),
    );
    assert!(c.note.unwrap().contains("grpc-encoding \"snappy\", which is not understood"));
    // Truncated framing.
    let c = run(MODEL_INFER, &plain, &plain[..plain.len() - 1], &strict());
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert!(c.note.unwrap().starts_with("shadow body has a message of"));
}

#[test]
fn a_trailers_only_error_from_the_shadow_is_a_shadow_error() {
    let prod = raw_scores("m", &SCORES);
    let trailers_only = vec![
        header("content-type", "application/grpc"),
        header("grpc-status", "14"),
        header("grpc-message", "upstream%20connect%20error"),
    ];
    let shadow = Message { status: 200, headers: &trailers_only, body: b"", trailers: &[] };
    let c = compare(
        &request(MODEL_INFER),
        &answer(&prod, &OK),
        &ShadowOutcome::Answered(shadow),
        &strict(),
        builtin(),
    );
    assert_eq!((c.verdict, c.protocol), (Verdict::ShadowError, Protocol::Oip));
    assert_eq!(c.note.as_deref(), Some(r#"grpc-status 0 (OK) vs 14 (UNAVAILABLE) "upstream connect error""#));
    assert_eq!(c.diff_count, 1);
    assert_eq!(c.diffs[0].pointer, "");
    assert_eq!(
        c.diffs[0].shadow,
        json!({"grpc_status": 14, "grpc_message": "upstream connect error", "bytes": 0})
    );
    assert_eq!(c.diffs[0].production, json!({"grpc_status": 0, "grpc_message": "", "bytes": prod.len()}));
}

fn status(code: &str, message: &str) -> Vec<Header> {
    vec![header("grpc-status", code), header("grpc-message", message)]
}

fn statuses(prod: &[Header], shadow: &[Header]) -> Comparison {
    compare(
        &request(MODEL_INFER),
        &Message { status: 200, headers: &GRPC, body: b"", trailers: prod },
        &ShadowOutcome::Answered(Message { status: 200, headers: &GRPC, body: b"", trailers: shadow }),
        &strict(),
        builtin(),
    )
}

#[test]
fn statuses_compare_like_http_statuses() {
    let not_found = status("5", "model m not found");
    let c = statuses(&not_found, &not_found);
    assert_eq!(c.verdict, Verdict::Match);
    assert_eq!(c.note.as_deref(), Some("both grpc-status 5 (NOT_FOUND); grpc-message equal"));
    let c = statuses(&not_found, &status("5", "model m-v2 not found"));
    assert_eq!((c.verdict, pointers(&c)), (Verdict::Mismatch, vec![""]));
    assert_eq!(c.note.as_deref(), Some("both grpc-status 5 (NOT_FOUND); grpc-message differs"));
    assert_eq!(
        c.diffs[0].shadow,
        json!({"grpc_status": 5, "grpc_message": "model m-v2 not found", "bytes": 0})
    );
    let c = statuses(&status("3", "bad input"), &not_found);
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(
        c.note.as_deref(),
        Some(r#"grpc-status 3 (INVALID_ARGUMENT) "bad input" vs 5 (NOT_FOUND) "model m not found""#)
    );
    let c = statuses(&status("3", "bad input"), &OK);
    assert_eq!(c.verdict, Verdict::Mismatch);
    let c = statuses(&OK, &status("13", ""));
    assert_eq!(
        (c.verdict, c.note.as_deref()),
        (Verdict::ShadowError, Some("grpc-status 0 (OK) vs 13 (INTERNAL)"))
    );
    let c = statuses(&OK, &[]);
    assert_eq!(c.verdict, Verdict::ShadowError);
    assert_eq!(c.note.as_deref(), Some("shadow answer has no grpc-status in its trailers or headers"));
    let c = statuses(&[], &OK);
    assert_eq!(
        (c.verdict, c.note.as_deref()),
        (Verdict::Mismatch, Some("production answer has no grpc-status in its trailers or headers"))
    );
    // A different HTTP status comes first, as for any answer.
    let c = compare(
        &request(MODEL_INFER),
        &answer(b"", &OK),
        &ShadowOutcome::Answered(Message {
            status: 503,
            headers: &[],
            body: b"no healthy upstream",
            trailers: &[],
        }),
        &strict(),
        builtin(),
    );
    assert_eq!(
        (c.verdict, c.note.as_deref(), c.protocol),
        (Verdict::ShadowError, Some("status 200 vs 503"), Protocol::Oip)
    );
    let c = compare(&request(MODEL_INFER), &answer(b"", &OK), &ShadowOutcome::TimedOut, &strict(), builtin());
    assert_eq!((c.verdict, c.protocol), (Verdict::ShadowTimeout, Protocol::Oip));
}

// ---- TF Serving ----

fn tensor(dtype: DataType, shape: &[i64]) -> TensorProto {
    TensorProto {
        dtype: dtype as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: shape.iter().map(|&size| Dim { size, name: String::new() }).collect(),
            unknown_rank: false,
        }),
        ..Default::default()
    }
}

fn predict(version: i64, outputs: Vec<(&str, TensorProto)>) -> Vec<u8> {
    let response = PredictResponse {
        model_spec: Some(ModelSpec {
            name: "m".into(),
            version: Some(version),
            signature_name: "serving_default".into(),
        }),
        outputs: outputs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    };
    body(&[response.encode_to_vec()])
}

#[test]
fn tf_serving_tensors_compare_by_name_from_vals_or_tensor_content() {
    let typed = TensorProto { float_val: SCORES.to_vec(), ..tensor(DataType::DtFloat, &[2, 3]) };
    let content = TensorProto { tensor_content: le_f32(&SCORES), ..tensor(DataType::DtFloat, &[2, 3]) };
    let classes = TensorProto { int64_val: vec![2, 0], ..tensor(DataType::DtInt64, &[2]) };
    let a = predict(1, vec![("scores", typed), ("classes", classes.clone())]);
    let b = predict(2, vec![("classes", classes.clone()), ("scores", content)]);
    let c = run(PREDICT, &a, &b, &strict());
    assert_eq!((c.verdict, c.protocol, c.note.as_deref()), (Verdict::Match, Protocol::TfServing, None));
    assert_eq!((c.metrics.rows, c.metrics.label_agreements), (2, 4));
    let rules = CompareRules { protocol_default_ignores: false, ..strict() };
    assert_eq!(pointers(&run(PREDICT, &a, &b, &rules)), ["/model_spec/version"]);
    let moved =
        TensorProto { float_val: vec![0.1, 0.2, 0.7, 0.6, 0.3, 0.11], ..tensor(DataType::DtFloat, &[2, 3]) };
    let other = TensorProto { int64_val: vec![2, 1], ..tensor(DataType::DtInt64, &[2]) };
    let c = run(PREDICT, &a, &predict(1, vec![("scores", moved), ("classes", other)]), &tol(0.05));
    assert_eq!((c.verdict, c.metrics.label_flips), (Verdict::Mismatch, 1));
    assert_eq!(diff_texts(&c), [r#"{"pointer":"/outputs/classes/data/1","production":0,"shadow":1}"#]);
    let missing = run(
        PREDICT,
        &a,
        &predict(
            1,
            vec![(
                "scores",
                TensorProto { float_val: SCORES.to_vec(), ..tensor(DataType::DtFloat, &[2, 3]) },
            )],
        ),
        &strict(),
    );
    assert_eq!(pointers(&missing), ["/outputs/classes"]);
}

#[test]
fn tf_serving_half_values_and_repeated_last_values() {
    let half = |bits: Vec<i32>| TensorProto { half_val: bits, ..tensor(DataType::DtHalf, &[2]) };
    let bf = |bits: Vec<i32>| TensorProto { half_val: bits, ..tensor(DataType::DtBfloat16, &[2]) };
    let c = run(
        PREDICT,
        &predict(1, vec![("h", half(vec![0x3c00, 0x3800]))]),
        &predict(1, vec![("h", half(vec![0x3c00, 0x3801]))]),
        &strict(),
    );
    assert_eq!(diff_texts(&c), [r#"{"pointer":"/outputs/h/data/1","production":0.5,"shadow":0.5004883}"#]);
    let c = run(
        PREDICT,
        &predict(1, vec![("b", bf(vec![0x3f80, 0x4049]))]),
        &predict(1, vec![("b", bf(vec![0x3f80, 0x4049]))]),
        &strict(),
    );
    assert_eq!(c.verdict, Verdict::Match);
    // One value for a [2, 3] shape fills it, as TensorFlow reads it.
    let constant = TensorProto { float_val: vec![0.5], ..tensor(DataType::DtFloat, &[2, 3]) };
    let full = TensorProto { float_val: vec![0.5; 6], ..tensor(DataType::DtFloat, &[2, 3]) };
    let c = run(PREDICT, &predict(1, vec![("x", constant)]), &predict(1, vec![("x", full)]), &strict());
    assert_eq!((c.verdict, c.note), (Verdict::Match, None));
    // A tensor_content of the wrong length is malformed.
    let ragged = TensorProto { tensor_content: vec![0; 7], ..tensor(DataType::DtFloat, &[2]) };
    let c =
        run(PREDICT, &predict(1, vec![("x", ragged.clone())]), &predict(1, vec![("x", ragged)]), &strict());
    assert_eq!((c.verdict, pointers(&c)), (Verdict::Mismatch, vec!["/outputs/x/data"]));
    assert!(c.note.unwrap().contains("output x: has 7 bytes of raw content, not a multiple of 4 (DT_FLOAT)"));
    // Strings are labels.
    let s = |v: &[u8]| TensorProto { string_val: vec![v.to_vec()], ..tensor(DataType::DtString, &[1]) };
    let c = run(PREDICT, &predict(1, vec![("s", s(b"cat"))]), &predict(1, vec![("s", s(b"dog"))]), &tol(9.0));
    assert_eq!((c.verdict, c.metrics.label_flips), (Verdict::Mismatch, 1));
}

// ---- other methods: descriptors, JSON, bytes, streams ----

const DEMO_PROTO: &str = r#"
syntax = "proto3";
package demo;

enum Kind { KIND_UNSPECIFIED = 0; CAT = 1; DOG = 2; }

message Query { string text = 1; }

message Reply {
  string label = 1;
  double score = 2;
  repeated int64 ids = 3;
  map<string, int32> counts = 4;
  Kind kind = 5;
  optional string trace = 6;
  bytes blob = 7;
  Inner inner = 8;
  float ratio = 9;
}

message Inner { uint64 big = 1; }

service Scorer {
  rpc Score(Query) returns (Reply);
  rpc Watch(Query) returns (stream Reply);
}
"#;

/// A descriptor set for [`DEMO_PROTO`], as `protoc --include_imports --descriptor_set_out` writes.
pub(crate) fn demo_descriptor_set() -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("compare-demo-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("demo.proto"), DEMO_PROTO).unwrap();
    let set = protox::compile(["demo.proto"], [&dir]).unwrap();
    set.encode_to_vec()
}

static DEMO: LazyLock<Schemas> =
    LazyLock::new(|| Schemas::with_descriptor_sets([demo_descriptor_set().as_slice()]).unwrap());

fn reply(label: &str, score: f64, ids: &[i64], fill: impl FnOnce(&mut DynamicMessage)) -> Vec<u8> {
    let descriptor = DEMO.method("/demo.Scorer/Score").unwrap().output();
    let mut m = DynamicMessage::new(descriptor);
    m.set_field_by_name("label", ReflectValue::String(label.into()));
    m.set_field_by_name("score", ReflectValue::F64(score));
    m.set_field_by_name("ids", ReflectValue::List(ids.iter().map(|&i| ReflectValue::I64(i)).collect()));
    fill(&mut m);
    m.encode_to_vec()
}

#[test]
fn methods_with_a_descriptor_compare_as_json() {
    let a = body(&[reply("cat", 0.9, &[1, 2], |_| {})]);
    let c = run_with("/demo.Scorer/Score", &a, &a, &strict(), &DEMO);
    assert_eq!((c.verdict, c.protocol, c.note.as_deref()), (Verdict::Match, Protocol::Json, None));
    let b = body(&[reply("cat", 0.9000001, &[1, 3], |_| {})]);
    let c = run_with("/demo.Scorer/Score", &a, &b, &tol(1e-3), &DEMO);
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(diff_texts(&c), [r#"{"pointer":"/ids/1","production":2,"shadow":3}"#]);
    let rules = CompareRules { ignore: vec!["/ids".into()], ..tol(1e-3) };
    assert_eq!(run_with("/demo.Scorer/Score", &a, &b, &rules, &DEMO).verdict, Verdict::WithinTolerance);
    // A field left out and its default written out (label "", score 0.0) are the same answer.
    let defaults = body(&[vec![0x0a, 0x00, 0x11, 0, 0, 0, 0, 0, 0, 0, 0]]);
    let empty = body(&[Vec::new()]);
    let c = run_with("/demo.Scorer/Score", &defaults, &empty, &strict(), &DEMO);
    assert_eq!((c.verdict, c.diff_count), (Verdict::Match, 0));
    let set = body(&[vec![0x11, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]]); // score 1.0
    assert_eq!(pointers(&run_with("/demo.Scorer/Score", &set, &empty, &strict(), &DEMO)), ["/score"]);
}

#[test]
fn descriptor_json_has_proto_names_enums_maps_and_unknown_fields() {
    let inner = DEMO.method("/demo.Scorer/Score").unwrap().output().get_field_by_name("inner").unwrap();
    let full = |kind: i32, count: i32, big: u64| {
        body(&[reply("dog", 0.5, &[], |m| {
            m.set_field_by_name("kind", ReflectValue::EnumNumber(kind));
            let mut counts = HashMap::new();
            counts.insert(prost_reflect::MapKey::String("x".into()), ReflectValue::I32(count));
            m.set_field_by_name("counts", ReflectValue::Map(counts));
            m.set_field_by_name("trace", ReflectValue::String("t-1".into()));
            m.set_field_by_name("blob", ReflectValue::Bytes(Bytes::from_static(b"\x00\x01")));
            let mut i = DynamicMessage::new(inner.kind().as_message().unwrap().clone());
            i.set_field_by_name("big", ReflectValue::U64(big));
            m.set_field_by_name("inner", ReflectValue::Message(i));
            m.set_field_by_name("ratio", ReflectValue::F32(0.1));
        })])
    };
    let value = DEMO
        .decode("/demo.Scorer/Score", schemas::Direction::Response, &full(2, 7, u64::MAX)[5..])
        .unwrap()
        .unwrap();
    assert_eq!(
        value,
        json!({"label": "dog", "score": 0.5, "ids": [], "counts": {"x": 7}, "kind": "DOG", "trace": "t-1",
               "blob": "AAE=", "inner": {"big": u64::MAX}, "ratio": 0.1})
    );
    let c =
        run_with("/demo.Scorer/Score", &full(2, 7, u64::MAX), &full(9, 8, u64::MAX - 1), &strict(), &DEMO);
    assert_eq!(pointers(&c), ["/counts/x", "/inner/big", "/kind"]);
    assert_eq!(c.diffs[2].shadow, json!(9), "unknown enum numbers stay numbers");
    assert_eq!(
        diff_texts(&c)[1],
        format!(r#"{{"pointer":"/inner/big","production":{},"shadow":{}}}"#, u64::MAX, u64::MAX - 1)
    );
    // A field the descriptor does not know still takes part.
    let mut extra = reply("dog", 0.5, &[], |_| {});
    extra.extend([0x50, 0x01]); // field 10, varint 1
    let c = run_with(
        "/demo.Scorer/Score",
        &body(&[reply("dog", 0.5, &[], |_| {})]),
        &body(&[extra]),
        &strict(),
        &DEMO,
    );
    assert_eq!((c.verdict, pointers(&c)), (Verdict::Mismatch, vec!["/#10"]));
    // Requests decode with the input type.
    let query = {
        let mut q = DynamicMessage::new(DEMO.method("/demo.Scorer/Score").unwrap().input());
        q.set_field_by_name("text", ReflectValue::String("hi".into()));
        q.encode_to_vec()
    };
    assert_eq!(
        DEMO.decode("/demo.Scorer/Score", schemas::Direction::Request, &query).unwrap().unwrap(),
        json!({"text": "hi"})
    );
    assert!(DEMO.decode("/demo.Scorer/Nope", schemas::Direction::Request, &query).is_none());
}

#[test]
fn streams_compare_message_by_message() {
    let path = "/demo.Scorer/Watch";
    let three =
        body(&[reply("a", 0.1, &[], |_| {}), reply("b", 0.2, &[], |_| {}), reply("c", 0.3, &[], |_| {})]);
    let c = run_with(path, &three, &three, &strict(), &DEMO);
    assert_eq!((c.verdict, c.protocol), (Verdict::Match, Protocol::Json));
    let two = body(&[reply("a", 0.1, &[], |_| {}), reply("x", 0.2, &[], |_| {})]);
    let c = run_with(path, &three, &two, &strict(), &DEMO);
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(pointers(&c), ["/messages/1/label", "/messages/2"]);
    assert_eq!(c.diffs[1].shadow, json!(null));
    assert_eq!(c.note.as_deref(), Some("production sent 3 messages, shadow 2"));
    // Patterns match within each message, or the whole pointer.
    let rules = CompareRules { ignore: vec!["/label".into(), "/messages/2".into()], ..strict() };
    assert_eq!(run_with(path, &three, &two, &rules, &DEMO).verdict, Verdict::Match);
    // Streams of OIP answers add up their rows.
    let stream = [typed_scores("m", &SCORES), typed_scores("m", &SCORES)].concat();
    let c = run(MODEL_INFER, &stream, &stream, &strict());
    assert_eq!((c.verdict, c.metrics.rows, c.metrics.label_agreements), (Verdict::Match, 4, 4));
    let c = run(MODEL_INFER, &stream, &typed_scores("m", &SCORES), &strict());
    assert_eq!(pointers(&c), ["/messages/1"]);
}

#[test]
fn without_a_descriptor_messages_compare_as_bytes_and_say_so() {
    let path = "/demo.Unknown/Call";
    let c = run(path, &body(&[b"abc".to_vec()]), &body(&[b"abc".to_vec()]), &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Match, Protocol::Bytes));
    assert_eq!(c.note.as_deref(), Some("no descriptor for /demo.Unknown/Call; compared as bytes"));
    let c = run(path, &body(&[b"abc".to_vec()]), &body(&[b"abd".to_vec()]), &strict());
    assert_eq!((c.verdict, pointers(&c)), (Verdict::Mismatch, vec![""]));
    assert_eq!(c.diffs[0].production, json!({"bytes": 3}));
    let c =
        run(path, &body(&[b"a".to_vec(), b"b".to_vec()]), &body(&[b"a".to_vec(), b"c".to_vec()]), &strict());
    assert_eq!(pointers(&c), ["/messages/1"]);
    // Forced bytes, and a payload that does not decode with its type, compare as bytes too.
    let forced = CompareRules { protocol: ProtocolChoice::Bytes, ..strict() };
    let a = typed_scores("m", &SCORES);
    let c = run(MODEL_INFER, &a, &typed_scores("n", &SCORES), &forced);
    assert_eq!((c.verdict, c.protocol, c.note), (Verdict::Mismatch, Protocol::Bytes, None));
    let garbage = body(&[vec![0xff, 0xff, 0xff]]);
    let c = run(MODEL_INFER, &a, &garbage, &strict());
    assert_eq!((c.verdict, c.protocol), (Verdict::Mismatch, Protocol::Bytes));
    assert!(c.note.unwrap().starts_with("shadow message 0 is not a valid inference.ModelInferResponse"));
}

#[test]
fn grpc_json_payloads_compare_as_json() {
    let headers = vec![header("content-type", "application/grpc+json")];
    let req = RequestView { method: "POST", path: "/demo.Scorer/Score", headers: &headers, body: b"" };
    let run_json = |a: &[u8], b: &[u8]| {
        let (pa, pb) = (body(&[a.to_vec()]), body(&[b.to_vec()]));
        compare(
            &req,
            &Message { status: 200, headers: &headers, body: &pa, trailers: &OK },
            &ShadowOutcome::Answered(Message { status: 200, headers: &headers, body: &pb, trailers: &OK }),
            &strict(),
            builtin(),
        )
    };
    let c = run_json(br#"{"score": 0.1}"#, br#"{"score": 0.10000000000000001}"#);
    assert_eq!((c.verdict, c.protocol), (Verdict::Mismatch, Protocol::Json));
    assert_eq!(diff_texts(&c), [r#"{"pointer":"/score","production":0.1,"shadow":0.10000000000000001}"#]);
    let c = run_json(br#"{"score": 1}"#, b"not json");
    assert_eq!(c.protocol, Protocol::Bytes);
    assert!(c.note.unwrap().starts_with("shadow message 0 is not JSON"));
}

// ---- hostile inputs ----

proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        prod in prop::collection::vec(any::<u8>(), 0..96),
        shadow in prop::collection::vec(any::<u8>(), 0..96),
        path in prop_oneof![Just(MODEL_INFER), Just(PREDICT), Just("/demo.Scorer/Score"), Just("/demo.Scorer/Watch"), Just("/x.Y/Z")],
    ) {
        let _ = run_with(path, &prod, &shadow, &tol(0.1), &DEMO);
    }

    #[test]
    fn arbitrary_protobuf_messages_never_panic(
        prod in prop::collection::vec(any::<u8>(), 0..96),
        shadow in prop::collection::vec(any::<u8>(), 0..96),
        path in prop_oneof![Just(MODEL_INFER), Just(PREDICT), Just("/demo.Scorer/Score")],
    ) {
        // Well framed, so the bytes reach the protobuf decoders.
        let c = run_with(path, &body(std::slice::from_ref(&prod)), &body(&[shadow]), &strict(), &DEMO);
        prop_assert!(c.verdict != Verdict::ShadowError && c.verdict != Verdict::ShadowTimeout);
        // An answer matches itself unless it cannot be read (and then a note says why).
        let same = run_with(path, &body(std::slice::from_ref(&prod)), &body(&[prod]), &strict(), &DEMO);
        prop_assert!(same.verdict == Verdict::Match || same.note.is_some(), "{:?}", same);
    }

    #[test]
    fn arbitrary_raw_contents_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..64),
        datatype in prop_oneof![Just("BOOL"), Just("UINT16"), Just("INT32"), Just("INT64"), Just("FP16"), Just("BF16"), Just("FP32"), Just("FP64"), Just("BYTES"), Just("??")],
        shape in prop::collection::vec(-2i64..20, 0..3),
    ) {
        let a = body(&[infer("m", vec![output("o", datatype, &shape, None)], vec![raw.clone()])]);
        let c = run(MODEL_INFER, &a, &a, &strict());
        // The same answer matches itself unless its raw content is malformed.
        if c.verdict != Verdict::Match {
            prop_assert!(c.note.is_some(), "{:?}", c);
        }
        let t = TensorProto { tensor_content: raw, ..tensor(DataType::DtFloat, &shape) };
        let _ = run(PREDICT, &predict(1, vec![("o", t.clone())]), &predict(2, vec![("o", t)]), &strict());
    }
}
