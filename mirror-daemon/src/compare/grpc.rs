//! gRPC answers, compared the way an ML engineer reads them.
//!
//! Order of decisions, after the shadow answered with production's HTTP status:
//! 1. `grpc-status` (from the trailers, or the headers of a Trailers-Only answer) is compared like
//!    an HTTP status: production OK and the shadow not (or no status at all) is
//!    [`Verdict::ShadowError`]; two different codes otherwise are [`Verdict::Mismatch`]. The
//!    single [`Diff`] has the pointer `""` and `{"grpc_status", "grpc_message", "bytes"}` on each
//!    side, and the note gives both codes and messages. Equal non-OK codes go on: their
//!    `grpc-message`s are compared (a difference is a mismatch at `""`), the note says whether
//!    they are equal, and any messages sent before the error are compared as below.
//! 2. Each body is split into its messages and decompressed (`grpc-encoding`); a broken stream
//!    is a mismatch whose note says what is wrong.
//! 3. The messages are decoded and compared:
//!    - `inference.GRPCInferenceService/ModelInfer`: each `ModelInferResponse` in the shape of the
//!      REST answer ([`super::tensor`]) through the Open Inference Protocol's comparison, so
//!      labels, tolerance, ignores and default ignores (`/id`, `/model_name`, `/model_version`) are
//!      those of OIP over REST, and so are pointers (`/outputs/0/data/3` is element 3 of output
//!      0, whether it came from typed contents or from `raw_output_contents`). Protocol `oip`.
//!    - `tensorflow.serving.PredictionService/Predict`: each `PredictResponse`'s tensors (an
//!      object keyed by output name, so pointers read `/outputs/scores/data/3`), each compared as
//!      an OIP output: a map of named tensors is what OIP's outputs are, while the REST
//!      `predictions` rows have no names, dtypes or shapes to compare. `/model_spec` is ignored by
//!      default like OIP's model name and version. Protocol `tf_serving`.
//!    - another method with a definition in [`Schemas`] (a `--proto-descriptor` file): its output
//!      type, as JSON, with the generic rules (or a protocol's, when the rules force one or the
//!      decoded answer has its shape). Protocol `json`, or the protocol used.
//!    - `application/grpc+json`: each message parsed as JSON, likewise.
//!    - otherwise, or when a message does not decode: message bytes, with a note saying why
//!      (`no descriptor for /pkg.Svc/Method; compared as bytes`). Protocol `bytes`.
//!
//! Unary calls (one message each way) compare their messages at the root, so pointers and ignore
//! patterns are the same as over REST. When either side has another number of messages (a
//! stream), message `i` is compared at `/messages/{i}`, a message on one side only is a
//! difference with `null` on the other, and ignore patterns match either the whole pointer
//! (`/messages/0/**`) or the pointer within each message (`/outputs/*/name`).
use std::borrow::Cow;

use prost::Message as _;
use serde_json::json;

use super::{
    CompareRules, Comparison, Diff, Message, PredictionMetrics, Protocol, ProtocolChoice, RequestView,
    Schemas, Verdict, compare_as, finish,
    json::{self, Json},
    json_diff::Collector,
    oip, pointer,
    pointer::IgnoreSet,
    protocol,
    schemas::Direction,
    tensor::{self, Converted, Malformed},
};
use crate::{
    grpc::{self, Codec, Status},
    proto::{inference::ModelInferResponse, tensorflow::serving::PredictResponse},
};

/// The Open Inference Protocol's inference method.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// TF Serving's Predict.
pub const PREDICT: &str = "/tensorflow.serving.PredictionService/Predict";

/// The method a request path names, without a query (gRPC paths have none, gateways may add one).
fn method_path(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

/// The protocol a gRPC method's answers are compared as, before anything is decoded.
pub(crate) fn hinted(path: &str, rules: &CompareRules, schemas: &Schemas) -> Protocol {
    let path = method_path(path);
    match (rules.protocol, path) {
        (ProtocolChoice::Bytes, _) => Protocol::Bytes,
        (ProtocolChoice::Auto, MODEL_INFER) => Protocol::Oip,
        (ProtocolChoice::Auto, PREDICT) => Protocol::TfServing,
        (ProtocolChoice::Auto, _) if schemas.knows(path) => Protocol::Json,
        (ProtocolChoice::Auto, _) => Protocol::Bytes,
        (choice, _) => protocol::hinted(choice, path).unwrap_or(Protocol::Bytes),
    }
}

fn status_summary(status: Option<&Status>, message: &Message<'_>) -> Json<'static> {
    Json::from(json!({
        "grpc_status": status.map(|s| s.code.0),
        "grpc_message": status.map(|s| s.message.as_str()),
        "bytes": message.body.len(),
    }))
}

fn describe(status: &Status) -> String {
    if status.message.is_empty() {
        format!("{}", status.code)
    } else {
        format!("{} {:?}", status.code, status.message)
    }
}

/// A comparison that stops at the status, with its one diff.
fn status_difference(
    verdict: Verdict,
    protocol: Protocol,
    note: String,
    rules: &CompareRules,
    production: (Option<&Status>, &Message<'_>),
    shadow: (Option<&Status>, &Message<'_>),
) -> Comparison {
    let mut comparison = Comparison::bare(verdict, protocol, Some(note));
    if rules.max_diffs > 0 {
        comparison.diffs.push(Diff {
            pointer: String::new(),
            production: status_summary(production.0, production.1),
            shadow: status_summary(shadow.0, shadow.1),
        });
    }
    comparison.diff_count = 1;
    comparison
}

/// One side's messages, decoded for comparison.
enum Decoded {
    Json(Vec<Converted>),
    Bytes(String),
}

/// Compares two gRPC answers to `request` (whose HTTP statuses are equal).
pub(crate) fn compare(
    request: &RequestView<'_>,
    production: &Message<'_>,
    shadow: &Message<'_>,
    rules: &CompareRules,
    schemas: &Schemas,
    codec: &Codec,
) -> Comparison {
    let path = method_path(request.path);
    let hinted = hinted(path, rules, schemas);
    let statuses = (
        grpc::read_status(production.headers, production.trailers),
        grpc::read_status(shadow.headers, shadow.trailers),
    );
    let mut notes = Vec::new();
    let mut status_diff = None;
    match &statuses {
        (Ok(p), Ok(s)) if p.code != s.code => {
            let verdict = if p.is_ok() { Verdict::ShadowError } else { Verdict::Mismatch };
            let note = format!("grpc-status {} vs {}", describe(p), describe(s));
            return status_difference(verdict, hinted, note, rules, (Some(p), production), (Some(s), shadow));
        }
        (Ok(p), Err(e)) => {
            let verdict = if p.is_ok() { Verdict::ShadowError } else { Verdict::Mismatch };
            let note = format!("shadow answer {e}");
            return status_difference(verdict, hinted, note, rules, (Some(p), production), (None, shadow));
        }
        (Err(e), Ok(s)) => {
            let note = format!("production answer {e}");
            return status_difference(
                Verdict::Mismatch,
                hinted,
                note,
                rules,
                (None, production),
                (Some(s), shadow),
            );
        }
        (Err(p), Err(s)) => {
            notes.push(format!("production answer {p}; shadow answer {s}"));
        }
        (Ok(p), Ok(s)) if !p.is_ok() => {
            let same = p.message == s.message;
            notes.push(format!(
                "both grpc-status {}; grpc-message {}",
                p.code,
                if same { "equal" } else { "differs" }
            ));
            if !same {
                status_diff = Some(Diff {
                    pointer: String::new(),
                    production: status_summary(Some(p), production),
                    shadow: status_summary(Some(s), shadow),
                });
            }
        }
        (Ok(_), Ok(_)) => {}
    }

    let limit = rules.max_decoded_bytes;
    let (prod_messages, shadow_messages) = match (
        grpc::decode_messages(production.headers, production.body, limit),
        grpc::decode_messages(shadow.headers, shadow.body, limit),
    ) {
        (Ok(p), Ok(s)) => (p, s),
        (p, s) => {
            if let Err(e) = &p {
                notes.push(format!("production body {e}"));
            }
            if let Err(e) = &s {
                notes.push(format!("shadow body {e}"));
            }
            return Comparison::bare(Verdict::Mismatch, hinted, Some(notes.join("; ")));
        }
    };

    let decoded = decode(path, codec, rules, schemas, &prod_messages, &shadow_messages);
    let (prod, shadow_json) = match decoded {
        (Decoded::Json(p), Decoded::Json(s)) => (p, s),
        (p, s) => {
            for d in [p, s] {
                if let Decoded::Bytes(note) = d
                    && !note.is_empty()
                    && !notes.contains(&note)
                {
                    notes.push(note);
                }
            }
            return bytes(&prod_messages, &shadow_messages, notes, rules, status_diff);
        }
    };
    let first = prod.first().map(|c| &c.json).unwrap_or(&Json::Null);
    let builtin = match path {
        MODEL_INFER => Some(Protocol::Oip),
        PREDICT => Some(Protocol::TfServing),
        _ => None,
    };
    let (protocol, adapter) = match builtin {
        Some(p)
            if rules.protocol == ProtocolChoice::Auto || Protocol::from_choice(rules.protocol) == Some(p) =>
        {
            (p, Adapter::Builtin)
        }
        _ => {
            let (protocol, note) = protocol::choose(rules.protocol, path, first);
            notes.extend(note);
            (protocol, Adapter::Rest)
        }
    };
    judge(protocol, adapter, &prod, &shadow_json, rules, notes, status_diff)
}

/// How decoded messages are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Adapter {
    /// The built-in shape of the method's protocol (OIP outputs array, TF tensor map).
    Builtin,
    /// As a REST body of the chosen protocol.
    Rest,
}

/// Decodes both sides' messages, or says why they are compared as bytes.
fn decode(
    path: &str,
    codec: &Codec,
    rules: &CompareRules,
    schemas: &Schemas,
    production: &[Cow<'_, [u8]>],
    shadow: &[Cow<'_, [u8]>],
) -> (Decoded, Decoded) {
    if rules.protocol == ProtocolChoice::Bytes {
        return (Decoded::Bytes(String::new()), Decoded::Bytes(String::new()));
    }
    let side = |name: &str, messages: &[Cow<'_, [u8]>]| -> Decoded {
        let mut out = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            let converted = match codec {
                Codec::Other(name) => {
                    return Decoded::Bytes(format!("payload codec {name}; compared as bytes"));
                }
                Codec::Json => match json::parse(message) {
                    Ok(value) => Converted { json: value.into_owned(), ..Converted::default() },
                    Err(e) => {
                        return Decoded::Bytes(format!(
                            "{name} message {i} is not JSON ({e}); compared as bytes"
                        ));
                    }
                },
                Codec::Proto => match path {
                    MODEL_INFER => match ModelInferResponse::decode(&message[..]) {
                        Ok(response) => tensor::model_infer_response(&response),
                        Err(e) => return not_valid(name, i, "inference.ModelInferResponse", &e.to_string()),
                    },
                    PREDICT => match PredictResponse::decode(&message[..]) {
                        Ok(response) => tensor::predict_response(&response),
                        Err(e) => {
                            return not_valid(name, i, "tensorflow.serving.PredictResponse", &e.to_string());
                        }
                    },
                    _ => match schemas.decode(path, Direction::Response, message) {
                        None => {
                            return Decoded::Bytes(format!("no descriptor for {path}; compared as bytes"));
                        }
                        Some(Ok(json)) => Converted { json, ..Converted::default() },
                        Some(Err(e)) => {
                            return Decoded::Bytes(format!("{name} message {i} {e}; compared as bytes"));
                        }
                    },
                },
            };
            out.push(converted);
        }
        Decoded::Json(out)
    };
    (side("production", production), side("shadow", shadow))
}

fn not_valid(side: &str, index: usize, type_name: &str, reason: &str) -> Decoded {
    Decoded::Bytes(format!("{side} message {index} is not a valid {type_name} ({reason}); compared as bytes"))
}

/// The value at `segments` of `value` (object keys and array indices).
fn lookup<'j, 'a>(value: &'j Json<'a>, segments: &[String]) -> Option<&'j Json<'a>> {
    segments.iter().try_fold(value, |v, segment| match v {
        Json::Object(o) => o.get(segment),
        Json::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn record_at(c: &mut Collector<'_>, segments: &[String], a: &Json<'_>, b: &Json<'_>) {
    match segments.split_first() {
        None => c.record(a, b),
        Some((first, rest)) => c.at(first.as_str(), |c| record_at(c, rest, a, b)),
    }
}

/// Compares decoded messages, message by message.
fn judge(
    protocol: Protocol,
    adapter: Adapter,
    production: &[Converted],
    shadow: &[Converted],
    rules: &CompareRules,
    mut notes: Vec<String>,
    status_diff: Option<Diff>,
) -> Comparison {
    let unary = production.len() == 1 && shadow.len() == 1;
    let prefix = |i: usize| if unary { Vec::new() } else { vec!["messages".to_string(), i.to_string()] };
    // Malformed tensor content: a difference at its location whatever the other side holds, and
    // the location is not compared element by element.
    let mut malformed: Vec<(usize, &Malformed)> = Vec::new();
    for (side, messages) in [("production", production), ("shadow", shadow)] {
        for (i, converted) in messages.iter().enumerate() {
            for problem in &converted.malformed {
                notes.push(format!("{side} message {i}: {}", problem.problem));
                malformed.push((i, problem));
            }
            for note in &converted.notes {
                let note = format!("{side} message {i}: {note}");
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    let mut malformed_at: Vec<Vec<String>> = Vec::new();
    for (i, problem) in &malformed {
        let at: Vec<String> = prefix(*i).into_iter().chain(problem.at.iter().cloned()).collect();
        if !malformed_at.contains(&at) {
            malformed_at.push(at);
        }
    }
    let mut patterns: Vec<String> = rules.ignore.clone();
    if rules.protocol_default_ignores {
        patterns.extend(protocol::default_ignores(protocol).iter().map(|p| p.to_string()));
        if protocol == Protocol::TfServing && adapter == Adapter::Builtin {
            patterns.push("/model_spec".into());
        }
    }
    patterns.extend(malformed_at.iter().map(|at| pointer::to_pointer(at)));
    let mut c = Collector::new(rules, IgnoreSet::new(patterns.iter().map(String::as_str)));
    if let Some(diff) = status_diff {
        c.record(&diff.production, &diff.shadow);
    }
    let mut metrics = PredictionMetrics::default();
    let mut compare_one = |c: &mut Collector<'_>, a: &Json<'_>, b: &Json<'_>, notes: &mut Vec<String>| {
        let mut m = PredictionMetrics::default();
        match (adapter, protocol, a, b) {
            (Adapter::Builtin, Protocol::Oip, Json::Object(x), Json::Object(y)) => {
                oip::compare(c, x, y, &mut m)
            }
            (Adapter::Builtin, Protocol::TfServing, Json::Object(x), Json::Object(y)) => {
                oip::compare_tensor_map(c, x, y, &mut m)
            }
            _ => compare_as(c, protocol, a, b, &mut m, notes),
        }
        merge(&mut metrics, m);
    };
    if unary {
        if let (Some(a), Some(b)) = (production.first(), shadow.first()) {
            compare_one(&mut c, &a.json, &b.json, &mut notes);
        }
    } else {
        if production.len() != shadow.len() {
            notes.push(format!("production sent {} messages, shadow {}", production.len(), shadow.len()));
        }
        for i in 0..production.len().max(shadow.len()) {
            c.in_message(i, |c| match (production.get(i), shadow.get(i)) {
                (Some(a), Some(b)) => compare_one(c, &a.json, &b.json, &mut notes),
                (Some(a), None) if !c.ignored() => c.record(&a.json, &Json::Null),
                (None, Some(b)) if !c.ignored() => c.record(&Json::Null, &b.json),
                _ => {}
            });
        }
    }
    let null = Json::Null;
    for (i, problem) in malformed {
        let at: Vec<String> = prefix(i).into_iter().chain(problem.at.iter().cloned()).collect();
        if !malformed_at.contains(&at) {
            continue;
        }
        malformed_at.retain(|m| *m != at);
        let side = |messages: &[Converted]| -> Json<'static> {
            messages.get(i).and_then(|m| lookup(&m.json, &problem.at)).unwrap_or(&null).clone()
        };
        record_at(&mut c, &at, &side(production), &side(shadow));
    }
    finish(c, protocol, metrics, notes)
}

/// Adds one message's measurements to the answer's.
fn merge(total: &mut PredictionMetrics, m: PredictionMetrics) {
    total.rows += m.rows;
    total.label_agreements += m.label_agreements;
    total.label_flips += m.label_flips;
    let and = |a: Option<bool>, b: Option<bool>| match (a, b) {
        (Some(x), Some(y)) => Some(x && y),
        (x, None) | (None, x) => x,
    };
    total.text_equal = and(total.text_equal, m.text_equal);
    total.finish_reason_equal = and(total.finish_reason_equal, m.finish_reason_equal);
    let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.saturating_add(y)),
        (x, None) | (None, x) => x,
    };
    total.prod_tokens = sum(total.prod_tokens, m.prod_tokens);
    total.shadow_tokens = sum(total.shadow_tokens, m.shadow_tokens);
}

/// Message-by-message byte comparison.
fn bytes(
    production: &[Cow<'_, [u8]>],
    shadow: &[Cow<'_, [u8]>],
    mut notes: Vec<String>,
    rules: &CompareRules,
    status_diff: Option<Diff>,
) -> Comparison {
    let mut c = Collector::new(rules, IgnoreSet::new(rules.ignore.iter().map(String::as_str)));
    if let Some(diff) = status_diff {
        c.record(&diff.production, &diff.shadow);
    }
    let size = |m: Option<&Cow<'_, [u8]>>| m.map_or(Json::Null, |m| Json::from(json!({ "bytes": m.len() })));
    if production.len() == 1 && shadow.len() == 1 {
        if production.first() != shadow.first() {
            c.record(&size(production.first()), &size(shadow.first()));
        }
    } else {
        if production.len() != shadow.len() {
            notes.push(format!("production sent {} messages, shadow {}", production.len(), shadow.len()));
        }
        for i in 0..production.len().max(shadow.len()) {
            let (a, b) = (production.get(i), shadow.get(i));
            if a != b {
                c.in_message(i, |c| {
                    if !c.ignored() {
                        c.record(&size(a), &size(b))
                    }
                });
            }
        }
    }
    finish(c, Protocol::Bytes, PredictionMetrics::default(), notes)
}
