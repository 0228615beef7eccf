//! Comparing a shadow model's answer with the production answer taken from the wire, the way an
//! ML engineer would: status first, then bodies after undoing `Content-Encoding`, then
//! protocol-aware (inference protocols), then generic JSON, then bytes.
//!
//! [`compare`] is pure: no I/O, no clock, no async. It never panics on any input, because both
//! answers come from the network (and the shadow is, by definition, untested); whatever cannot be
//! understood is reported as a mismatch with a [`Comparison::note`] saying why.
//!
//! Order of decisions:
//! 1. The shadow timed out or failed: [`Verdict::ShadowTimeout`] / [`Verdict::ShadowError`].
//! 2. Statuses differ: [`Verdict::ShadowError`] when production was 2xx and the shadow is not,
//!    [`Verdict::Mismatch`] otherwise. Bodies are then not compared; the single [`Diff`] has the
//!    pointer `""` (the whole answer) and `{"status": s, "bytes": n}` on each side, and the note
//!    says `status 200 vs 503`. A synthetic pointer such as `/_status` was avoided because it
//!    could collide with a real body field.
//! 3. A gRPC call (the request's or production's `content-type` is `application/grpc*`) is
//!    compared by `grpc.rs`: `grpc-status` like the HTTP status, then message by message, the
//!    messages decoded with the built-in inference APIs or the user's descriptor sets
//!    ([`Schemas`]) and compared through the same adapters as below.
//!    Otherwise bodies are decoded ([`body`]); a corrupt or oversized encoded body is a mismatch
//!    with a note. An unknown coding leaves the bodies as sent and compares them as bytes, with a
//!    note.
//! 4. Bodies that both parse as JSON ([`json`], which keeps every number's text) are compared as
//!    the detected protocol ([`protocol`]): Open Inference Protocol (`oip.rs`), TensorFlow Serving
//!    and MLflow (`predictions.rs`), OpenAI (`openai.rs`), else generic JSON (`json_diff.rs`).
//!    Otherwise they are compared as bytes.
//!
//! Numbers are equal only when their decimal values are (`1.0` equals `1e0`; `0.1` does not equal
//! `0.10000000000000001`, though both are one `f64`), and a [`Diff`] shows them as written.
//!
//! The verdict is [`Verdict::Match`] when nothing differs, [`Verdict::WithinTolerance`] when the
//! only differences are numbers within [`CompareRules`]' tolerance (and no argmax label flipped),
//! [`Verdict::Mismatch`] otherwise.
pub mod body;
pub mod config;
mod grpc;
pub mod json;
mod json_diff;
mod oip;
mod openai;
mod pointer;
mod predictions;
pub mod protocol;
pub mod schemas;
mod stream;
pub mod tensor;
pub mod text;
pub mod verdict;

#[cfg(test)]
mod grpc_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;

use serde::Serialize;
use serde_json::json;

pub use self::{
    config::{CompareRules, ProtocolChoice},
    json::Json,
    protocol::Protocol,
    schemas::Schemas,
    verdict::Verdict,
};
use self::{json_diff::Collector, pointer::IgnoreSet};
use crate::{
    exchange::{Header, Request, Response},
    sse::StreamedAnswer,
};

/// An HTTP response as compared: production's from the wire, or the shadow's.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub status: u16,
    pub headers: &'a [Header],
    /// The body as sent (de-chunked, still content-encoded; for gRPC, the DATA payload).
    pub body: &'a [u8],
    /// Trailer fields (HTTP/1.1 chunked trailers, HTTP/2 trailers: gRPC's status); may be empty.
    pub trailers: &'a [Header],
}

impl<'a> Message<'a> {
    /// A response rebuilt from the wire (production's).
    pub fn of(response: &'a Response) -> Self {
        Self {
            status: response.status,
            headers: &response.headers,
            body: &response.body,
            trailers: &response.trailers,
        }
    }
}

/// The request both answers respond to; its path selects the protocol.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Request target as sent (`/path?query`).
    pub path: &'a str,
    pub headers: &'a [Header],
    pub body: &'a [u8],
}

impl<'a> RequestView<'a> {
    /// A request rebuilt from the wire.
    pub fn of(request: &'a Request) -> Self {
        Self {
            method: &request.method,
            path: &request.target,
            headers: &request.headers,
            body: &request.body,
        }
    }
}

/// What the shadow did with the replayed request.
#[derive(Clone, Copy, Debug)]
pub enum ShadowOutcome<'a> {
    Answered(Message<'a>),
    TimedOut,
    /// The request failed (connection refused, reset, not HTTP); the text says how.
    Failed(&'a str),
}

impl<'a> ShadowOutcome<'a> {
    /// What a replay came to, as compared; `None` when it was never sent.
    pub fn of(result: &'a crate::replay::join::ShadowResult) -> Option<Self> {
        use crate::replay::join::ShadowResult;
        Some(match result {
            ShadowResult::Answered { answer, .. } => ShadowOutcome::Answered(Message {
                status: answer.status,
                headers: &answer.headers,
                body: &answer.body,
                trailers: &answer.trailers,
            }),
            ShadowResult::TimedOut { .. } => ShadowOutcome::TimedOut,
            ShadowResult::Failed { error, .. } => ShadowOutcome::Failed(error),
            ShadowResult::NotSent { .. } => return None,
        })
    }
}

/// One difference between the answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diff {
    /// RFC 6901 JSON Pointer into the production body (`""` for the whole answer).
    pub pointer: String,
    /// Production's value (`null` when missing), numbers written exactly as on the wire; long
    /// values are clipped or summarised, and byte bodies are summarised as `{"bytes": n}`.
    pub production: Json<'static>,
    /// The shadow's value, as for `production`.
    pub shadow: Json<'static>,
}

/// Prediction-level measurements; only the fields that apply to the protocol are set.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PredictionMetrics {
    /// Prediction rows compared (batch size, `predictions` elements, or choices).
    pub rows: u64,
    /// Rows (or label elements) whose predicted label agrees.
    pub label_agreements: u64,
    /// Rows (or label elements) whose predicted label differs.
    pub label_flips: u64,
    /// Largest absolute difference over compared floating-point values.
    pub max_abs_error: Option<f64>,
    /// Mean absolute difference over compared floating-point values.
    pub mean_abs_error: Option<f64>,
    /// OpenAI: every choice's generated text is equal.
    pub text_equal: Option<bool>,
    /// OpenAI: every choice's `finish_reason` is equal.
    pub finish_reason_equal: Option<bool>,
    /// OpenAI: production's `usage.completion_tokens` (else `total_tokens`).
    pub prod_tokens: Option<u64>,
    /// OpenAI: the shadow's `usage.completion_tokens` (else `total_tokens`).
    pub shadow_tokens: Option<u64>,
    /// OpenAI: token-level F1 of the shadow's text against production's, averaged over choices
    /// (a choice only one side has scores 0); 1.0 when the texts are equal. See [`text`].
    pub similarity: Option<f64>,
    /// OpenAI chat: every choice's tool calls (type, name, arguments) are equal.
    pub tool_calls_equal: Option<bool>,
}

/// The result of comparing one exchange.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub verdict: Verdict,
    /// The protocol the bodies were compared as. When bodies were not compared (timeout, error,
    /// status difference, undecodable body) it is the protocol the rules or the path name, or
    /// `bytes`. For gRPC: `oip` (ModelInfer), `tf_serving` (Predict), `json` (a method decoded
    /// with a descriptor, or `application/grpc+json`), `bytes` (no descriptor, or a message that
    /// does not decode).
    pub protocol: Protocol,
    /// The first [`CompareRules::max_diffs`] differences.
    pub diffs: Vec<Diff>,
    /// All differences, including those not kept in `diffs`.
    pub diff_count: usize,
    pub metrics: PredictionMetrics,
    /// Why the comparison came out as it did when the diffs alone do not say
    /// (`status 200 vs 503`, `shadow body is not valid gzip (...)`).
    pub note: Option<String>,
}

impl Comparison {
    fn bare(verdict: Verdict, protocol: Protocol, note: Option<String>) -> Self {
        Self {
            verdict,
            protocol,
            diffs: Vec::new(),
            diff_count: 0,
            metrics: PredictionMetrics::default(),
            note,
        }
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

fn summary(message: &Message<'_>) -> Json<'static> {
    Json::from(json!({ "status": message.status, "bytes": message.body.len() }))
}

/// Compares the shadow's outcome with production's answer to `request`; `schemas` decodes gRPC
/// messages.
pub fn compare(
    request: &RequestView<'_>,
    production: &Message<'_>,
    shadow: &ShadowOutcome<'_>,
    rules: &CompareRules,
    schemas: &Schemas,
) -> Comparison {
    compare_read(request, production, shadow, rules, schemas, [None, None])
}

/// [`compare`], with each side's event stream as already read for its record
/// (`report::record::StreamRecord::read`), so that a streamed answer is parsed once. A side's
/// answer is taken only when its body is sent as is or gzip-compressed (what its decoding here
/// would give too); otherwise, and for a side without one, the body is read here.
pub fn compare_read(
    request: &RequestView<'_>,
    production: &Message<'_>,
    shadow: &ShadowOutcome<'_>,
    rules: &CompareRules,
    schemas: &Schemas,
    read: [Option<&StreamedAnswer>; 2],
) -> Comparison {
    let codec = crate::grpc::codec(request.headers).or_else(|| crate::grpc::codec(production.headers));
    let hinted = match codec {
        Some(_) => grpc::hinted(request.path, rules, schemas),
        None => protocol::hinted(rules.protocol, request.path).unwrap_or(Protocol::Bytes),
    };
    let shadow = match shadow {
        ShadowOutcome::Answered(message) => message,
        ShadowOutcome::TimedOut => {
            return Comparison::bare(Verdict::ShadowTimeout, hinted, Some("shadow timed out".into()));
        }
        ShadowOutcome::Failed(error) => {
            return Comparison::bare(Verdict::ShadowError, hinted, Some((*error).to_string()));
        }
    };

    if production.status != shadow.status {
        let verdict = if is_success(production.status) && !is_success(shadow.status) {
            Verdict::ShadowError
        } else {
            Verdict::Mismatch
        };
        let note = format!("status {} vs {}", production.status, shadow.status);
        let mut comparison = Comparison::bare(verdict, hinted, Some(note));
        if rules.max_diffs > 0 {
            comparison.diffs.push(Diff {
                pointer: String::new(),
                production: summary(production),
                shadow: summary(shadow),
            });
        }
        comparison.diff_count = 1;
        return comparison;
    }

    if let Some(codec) = &codec {
        return grpc::compare(request, production, shadow, rules, schemas, codec);
    }
    let codings = [
        crate::sse::readable_while_open(production.headers),
        crate::sse::readable_while_open(shadow.headers),
    ];
    let read = [read[0].filter(|_| codings[0].is_some()), read[1].filter(|_| codings[1].is_some())];
    // Both streams read and sent as is: their bodies are what decoding would give, so neither is
    // decoded again.
    let identity = codings.iter().all(|c| *c == Some(crate::sse::StreamCoding::Identity));
    if identity && read.iter().all(Option::is_some) && rules.protocol != ProtocolChoice::Bytes {
        return streams([production.body, shadow.body], [true, true], read, rules);
    }

    let decoded = (
        body::decode(production.headers, production.body, rules.max_decoded_bytes),
        body::decode(shadow.headers, shadow.body, rules.max_decoded_bytes),
    );
    let (prod_body, shadow_body) = match decoded {
        (Ok(p), Ok(s)) => (p, s),
        (p, s) => {
            let mut notes = Vec::new();
            if let Err(e) = &p {
                notes.push(format!("production body is {e}"));
            }
            if let Err(e) = &s {
                notes.push(format!("shadow body is {e}"));
            }
            return Comparison::bare(Verdict::Mismatch, hinted, Some(notes.join("; ")));
        }
    };
    let mut notes = Vec::new();
    for (side, decoded) in [("production", &prod_body), ("shadow", &shadow_body)] {
        if let Some(coding) = &decoded.unknown_coding {
            notes.push(format!("{side} body has unknown content-encoding {coding}; compared as sent"));
        }
    }
    if !notes.is_empty() || rules.protocol == ProtocolChoice::Bytes {
        return bytes(&prod_body.body, &shadow_body.body, notes, rules);
    }
    let mut streamed =
        [crate::sse::is_event_stream(production.headers), crate::sse::is_event_stream(shadow.headers)];
    let unlabelled = [
        unlabelled_stream(production.headers, &prod_body.body),
        unlabelled_stream(shadow.headers, &shadow_body.body),
    ];
    // The request body is parsed only when an answer looks like an unlabelled stream: never for
    // the large tensor requests of inference APIs.
    if unlabelled.contains(&true) && asks_for_stream(request, rules) {
        streamed = [streamed[0] || unlabelled[0], streamed[1] || unlabelled[1]];
    }
    if streamed[0] || streamed[1] {
        let read = [read[0].filter(|_| streamed[0]), read[1].filter(|_| streamed[1])];
        return streams([&prod_body.body, &shadow_body.body], streamed, read, rules);
    }

    let parsed = (json::parse(&prod_body.body), json::parse(&shadow_body.body));
    let (a, b) = match parsed {
        (Ok(a), Ok(b)) => (a, b),
        (Err(_), Err(_)) => {
            if rules.protocol != ProtocolChoice::Auto {
                notes.push("neither body is JSON; compared as bytes".into());
            }
            return bytes(&prod_body.body, &shadow_body.body, notes, rules);
        }
        (p, s) => {
            for (side, result, raw) in
                [("production", &p, &prod_body.body), ("shadow", &s, &shadow_body.body)]
            {
                match result {
                    Err(_) if raw.is_empty() => notes.push(format!("{side} body is empty")),
                    Err(e) => notes.push(format!("{side} body is not JSON ({e})")),
                    Ok(_) => {}
                }
            }
            return bytes(&prod_body.body, &shadow_body.body, notes, rules);
        }
    };

    let (protocol, note) = protocol::choose(rules.protocol, request.path, &a);
    notes.extend(note);
    let mut c = Collector::new(rules, ignores(rules, protocol));
    let mut metrics = PredictionMetrics::default();
    compare_as(&mut c, protocol, &a, &b, &mut metrics, &mut notes);
    finish(c, protocol, metrics, notes)
}

/// The ignore patterns in force for a comparison as `protocol`.
fn ignores(rules: &CompareRules, protocol: Protocol) -> IgnoreSet {
    let mut ignores: Vec<&str> = rules.ignore.iter().map(String::as_str).collect();
    if rules.protocol_default_ignores {
        ignores.extend(protocol::default_ignores(protocol));
    }
    IgnoreSet::new(ignores)
}

/// Compares two parsed bodies as `protocol` (chosen by [`protocol::choose`]).
fn compare_as(
    c: &mut Collector<'_>,
    protocol: Protocol,
    a: &Json<'_>,
    b: &Json<'_>,
    metrics: &mut PredictionMetrics,
    notes: &mut Vec<String>,
) {
    match (protocol, a, b) {
        (Protocol::Oip, Json::Object(x), Json::Object(y)) => oip::compare(c, x, y, metrics),
        (Protocol::OpenAi, Json::Object(x), Json::Object(y)) => openai::compare(c, x, y, metrics),
        (Protocol::TfServing | Protocol::Mlflow, a, b) => predictions::compare(c, a, b, metrics),
        // A protocol other than JSON gets here only when the shadow body lacks its shape.
        (_, a, b) => {
            if protocol != Protocol::Json {
                notes.push(format!("shadow body does not have the {protocol} shape"));
            }
            json_diff::diff_values(c, a, b);
        }
    }
}

/// The comparison a collector's findings amount to.
fn finish(
    mut c: Collector<'_>,
    protocol: Protocol,
    mut metrics: PredictionMetrics,
    mut notes: Vec<String>,
) -> Comparison {
    metrics.max_abs_error = c.errors.max();
    metrics.mean_abs_error = c.errors.mean();
    notes.append(&mut c.notes);
    Comparison {
        verdict: c.verdict(),
        protocol,
        diff_count: c.diff_count,
        diffs: std::mem::take(&mut c.diffs),
        metrics,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// The request asked for a streamed answer: `"stream": true` in its JSON body, or the rules force
/// the OpenAI protocol.
fn asks_for_stream(request: &RequestView<'_>, rules: &CompareRules) -> bool {
    rules.protocol == ProtocolChoice::OpenAi
        || json::parse(request.body).is_ok_and(|body| matches!(body.get("stream"), Some(Json::Bool(true))))
}

/// An answer that reads like an event stream although its `Content-Type` does not say so (servers
/// that label their streams otherwise); taken for one when the request asked for a stream.
fn unlabelled_stream(headers: &[crate::exchange::Header], body: &[u8]) -> bool {
    body.trim_ascii_start().starts_with(b"data:") && !crate::sse::is_json(headers)
}

/// Answers of which at least one is an event stream (`streamed`), compared by what they
/// assembled; `bodies` decoded, and the sides whose stream was already read (`read`) not read again.
fn streams(
    bodies: [&[u8]; 2],
    streamed: [bool; 2],
    read: [Option<&StreamedAnswer>; 2],
    rules: &CompareRules,
) -> Comparison {
    let mut notes = Vec::new();
    let mut sides = Vec::with_capacity(2);
    for (((side, body), streamed), read) in
        ["production", "shadow"].into_iter().zip(bodies).zip(streamed).zip(read)
    {
        let assembled = if let Some(answer) = read {
            Ok(stream::from_stream(answer))
        } else if streamed {
            crate::sse::read(body, &Default::default(), 0)
                .map(|answer| stream::from_stream(&answer))
                .map_err(|e| format!("{side} event stream is unreadable ({e})"))
        } else {
            json::parse(body)
                .map(|json| stream::from_plain(&json))
                .map_err(|e| format!("{side} body is not JSON ({e})"))
        };
        match assembled {
            Ok(a) => {
                if a.malformed_events > 0 {
                    notes.push(format!("{side} stream: {} events not understood", a.malformed_events));
                }
                sides.push(a);
            }
            Err(note) => notes.push(note),
        }
    }
    let [a, b] = match <[stream::Assembled; 2]>::try_from(sides) {
        Ok(sides) if !(sides[0].unknown && sides[1].unknown) => sides,
        Ok(_) => {
            notes.push("event streams of an unknown shape; compared as bytes".into());
            return bytes(bodies[0], bodies[1], notes, rules);
        }
        Err(_) => return bytes(bodies[0], bodies[1], notes, rules),
    };
    match (&a.error, &b.error) {
        (None, Some(error)) => {
            let note = format!("shadow stream ended in an error: {error}");
            return Comparison::bare(Verdict::ShadowError, Protocol::OpenAi, Some(note));
        }
        (Some(error), None) => notes.push(format!("production stream ended in an error: {error}")),
        _ => {}
    }
    let mut c = Collector::new(rules, ignores(rules, Protocol::OpenAi));
    let mut metrics = PredictionMetrics::default();
    compare_as(&mut c, Protocol::OpenAi, &a.answer, &b.answer, &mut metrics, &mut notes);
    if a.error.is_some() && b.error.is_none() {
        c.diff_count = c.diff_count.max(1);
    }
    finish(c, Protocol::OpenAi, metrics, notes)
}

/// Byte-for-byte comparison, for bodies that are not JSON.
fn bytes(a: &[u8], b: &[u8], notes: Vec<String>, rules: &CompareRules) -> Comparison {
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    if a == b {
        return Comparison::bare(Verdict::Match, Protocol::Bytes, note);
    }
    let mut comparison = Comparison::bare(Verdict::Mismatch, Protocol::Bytes, note);
    if rules.max_diffs > 0 {
        comparison.diffs.push(Diff {
            pointer: String::new(),
            production: Json::from(json!({ "bytes": a.len() })),
            shadow: Json::from(json!({ "bytes": b.len() })),
        });
    }
    comparison.diff_count = 1;
    comparison
}
