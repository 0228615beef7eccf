//! The JSON-lines record written for every rebuilt exchange (`--record FILE.jsonl`).
//!
//! The schema is documented in the README and kept stable: fields are only ever added. Secrets stay
//! out: `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` and configured headers are
//! redacted, and bodies are written only when asked for (`--record-bodies`).
use std::net::SocketAddr;

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::exchange::{Exchange, Header};

/// Version of the record layout, written in every record.
pub const SCHEMA_VERSION: u32 = 1;

/// Headers whose values never reach a log or a record.
pub const ALWAYS_REDACTED: [&str; 5] =
    ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"];

/// Replaces the value of sensitive headers.
///
/// Every header of every exchange is checked, so the check allocates nothing: a handful of
/// lowercase names compared ignoring ASCII case (cheaper than lowercasing and hashing each name).
#[derive(Clone, Debug)]
pub struct Redactor {
    names: Vec<String>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Redactor {
    /// The always-redacted headers plus `extra` (case-insensitive).
    pub fn new(extra: &[String]) -> Self {
        let mut names: Vec<String> = ALWAYS_REDACTED
            .iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.to_ascii_lowercase()))
            .collect();
        names.sort();
        names.dedup();
        Self { names }
    }

    pub fn is_redacted(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// `[name, value]` pairs in wire order; values lossily decoded, secrets replaced.
    pub fn headers(&self, headers: &[Header]) -> Vec<[String; 2]> {
        headers
            .iter()
            .map(|h| {
                let value = if self.is_redacted(&h.name) {
                    "[redacted]".to_string()
                } else {
                    String::from_utf8_lossy(&h.value).into_owned()
                };
                [h.name.clone(), value]
            })
            .collect()
    }
}

/// How records are written.
#[derive(Clone, Debug, Default)]
pub struct RecordOptions {
    /// Include request and response bodies.
    pub bodies: bool,
    pub redactor: Redactor,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC in ns, to turn kernel stamps into wall time.
    pub realtime_offset_ns: i128,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Connection {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// One side of an exchange as recorded.
#[derive(Debug, Serialize, PartialEq)]
pub struct Message {
    /// Body length after removing chunked framing.
    pub bytes: usize,
    /// SHA-256 of that body, lowercase hex.
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub headers: Vec<[String; 2]>,
    /// The body as text, when bodies are recorded and it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, when bodies are recorded and it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// A gRPC call's status as recorded.
#[derive(Debug, Serialize, PartialEq)]
pub struct GrpcStatus {
    /// `grpc-status` (0 is OK).
    pub grpc_status: u32,
    /// `grpc-message`, percent-decoded (omitted when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub grpc_message: String,
}

impl GrpcStatus {
    /// The status of a gRPC answer; `None` for other answers, or a gRPC answer without a status.
    pub fn of(headers: &[Header], trailers: &[Header]) -> Option<Self> {
        crate::grpc::codec(headers)?;
        let status = crate::grpc::read_status(headers, trailers).ok()?;
        Some(Self { grpc_status: status.code.0, grpc_message: status.message })
    }
}

/// A gRPC call's name, split from the path.
#[derive(Debug, Serialize, PartialEq)]
pub struct GrpcCall {
    /// `package.Service`.
    pub service: String,
    pub method: String,
}

/// p50, p95 and max of the inter-token latencies (ms), and every gap to two significant digits.
#[derive(Debug, Serialize, PartialEq)]
pub struct ItlRecord {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    /// `[gap ms, how many]`, ascending: what aggregates pool over streams.
    pub gaps: Vec<(f64, u64)>,
}

/// One choice of a streamed answer.
#[derive(Debug, Serialize, PartialEq)]
pub struct ChoiceRecord {
    pub index: u64,
    pub finish_reason: Option<String>,
    /// The assembled text, only with `--record-bodies`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A streamed (`text/event-stream`) answer's timing and content, on either side of a record. The
/// figures are vLLM's benchmark ones ([`crate::sse::figures`]): production's from kernel
/// timestamps, the shadow's from the replay client as the stream arrived.
#[derive(Debug, Serialize, PartialEq)]
pub struct StreamRecord {
    /// First event carrying content − request's last byte; null when none carried content.
    pub ttft_ms: Option<f64>,
    /// (E2E − TTFT) / (output tokens − 1); null with fewer than two tokens.
    pub tpot_ms: Option<f64>,
    /// Last byte of the answer − request's last byte.
    pub e2e_ms: f64,
    /// Gaps between content events; null with fewer than two.
    pub itl_ms: Option<ItlRecord>,
    /// Events received.
    pub events: u64,
    pub output_tokens: u64,
    /// `usage` (the server's count) or `events` (content events counted).
    pub tokens_from: &'static str,
    /// `done` (`[DONE]` seen), `final` (a native stream's last event), `error`, or `open` (the
    /// body ended without an end event).
    pub stream_end: &'static str,
    pub choices: Vec<ChoiceRecord>,
}

/// An event-stream answer read once, for its record and its comparison alike.
pub type ReadStream = Option<crate::sse::StreamedAnswer>;

impl StreamRecord {
    /// The answer's events folded, when it is an event stream (`text/event-stream`) that can be
    /// read. `arrivals` time the body's pieces; `end_ns` times what they do not cover.
    pub fn read(
        headers: &[Header],
        body: &[u8],
        arrivals: &crate::exchange::Arrivals,
        end_ns: u64,
    ) -> ReadStream {
        if !crate::sse::is_event_stream(headers) {
            return None;
        }
        const LIMIT: usize = 64 << 20;
        match crate::compare::body::decode_gzip_timed(headers, body, arrivals, LIMIT) {
            Some((decoded, timed)) => crate::sse::read(&decoded, &timed, end_ns),
            None => {
                let decoded = crate::compare::body::decode(headers, body, LIMIT).ok()?;
                let timed =
                    if decoded.body.len() == body.len() { arrivals.clone() } else { Default::default() };
                crate::sse::read(&decoded.body, &timed, end_ns)
            }
        }
        .ok()
    }

    /// The stream record of an answer, when it is an event stream that can be read. `arrivals`
    /// time the body's pieces on the clock of `request_last_ns` and `end_ns`.
    pub fn of(
        headers: &[Header],
        body: &[u8],
        arrivals: &crate::exchange::Arrivals,
        (request_last_ns, end_ns): (u64, u64),
        options: &RecordOptions,
    ) -> Option<Self> {
        let answer = Self::read(headers, body, arrivals, end_ns)?;
        Some(Self::of_answer(&answer, (request_last_ns, end_ns), options))
    }

    /// The record of an answer already read ([`Self::read`]).
    pub fn of_answer(
        answer: &crate::sse::StreamedAnswer,
        (request_last_ns, end_ns): (u64, u64),
        options: &RecordOptions,
    ) -> Self {
        let f = crate::sse::StreamFigures::of(answer, request_last_ns, end_ns);
        Self {
            ttft_ms: f.ttft_ns.map(ms),
            tpot_ms: f.tpot_ns.map(ms),
            e2e_ms: ms(f.e2e_ns),
            itl_ms: f.itl.map(|s| ItlRecord {
                p50: ms(s.p50),
                p95: ms(s.p95),
                max: ms(s.max),
                // Not `ms()`: that rounds to whole µs, and gaps keep two digits at any scale.
                gaps: f.itl_gaps.iter().map(|&(ns, n)| (ns as f64 / 1e6, n)).collect(),
            }),
            events: f.events,
            output_tokens: f.output_tokens,
            tokens_from: f.tokens_from.as_str(),
            stream_end: answer.end.as_str(),
            choices: answer
                .choices
                .iter()
                .map(|c| ChoiceRecord {
                    index: c.index,
                    finish_reason: c.finish_reason.clone(),
                    text: options.bodies.then(|| c.text.clone()),
                })
                .collect(),
        }
    }
}

/// The production response as recorded.
#[derive(Debug, Serialize, PartialEq)]
pub struct Production {
    pub status: u16,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcStatus>,
    /// Response last byte − request last byte, from kernel timestamps.
    pub latency_ms: f64,
    /// Response first byte − request last byte.
    pub ttfb_ms: f64,
    #[serde(flatten)]
    pub message: Message,
    /// A streamed answer's timing and content.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRecord>,
}

/// One line of the `--record` file.
#[derive(Debug, Serialize, PartialEq)]
pub struct ExchangeRecord {
    pub schema: u32,
    /// Wall-clock time of the request's first byte (RFC 3339, UTC, microseconds).
    pub ts: String,
    pub connection: Connection,
    pub method: String,
    /// Request path without the query string (queries can carry credentials).
    pub path: String,
    /// The protocol that carried the exchange: `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub http_version: &'static str,
    /// The HTTP/2 stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u32>,
    /// A gRPC call's service and method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcCall>,
    pub request: Message,
    pub production: Production,
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

fn message(headers: &[Header], body: &[u8], options: &RecordOptions) -> Message {
    let content_type = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
        .map(|h| String::from_utf8_lossy(&h.value).into_owned());
    let (text, encoded) = if options.bodies {
        match std::str::from_utf8(body) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(body))),
        }
    } else {
        (None, None)
    };
    Message {
        bytes: body.len(),
        sha256: sha256_hex(body),
        content_type,
        headers: options.redactor.headers(headers),
        body: text,
        body_base64: encoded,
    }
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1_000.0).round() / 1_000.0
}

/// Kernel CLOCK_MONOTONIC ns → RFC 3339 wall-clock time.
pub fn wall_time(ts_ns: u64, realtime_offset_ns: i128) -> String {
    let wall = (i128::from(ts_ns) + realtime_offset_ns).max(0) as u64;
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(wall))
        .to_string()
}

impl ExchangeRecord {
    pub fn new(exchange: &Exchange, options: &RecordOptions) -> Self {
        Self::new_reading(exchange, options).0
    }

    /// The record, and production's event stream as read for it (for the comparisons, so that
    /// the stream is read once).
    pub fn new_reading(exchange: &Exchange, options: &RecordOptions) -> (Self, ReadStream) {
        let response = &exchange.response;
        let timing = (exchange.timing.request_last_ns, exchange.timing.response_last_ns);
        let answer = StreamRecord::read(&response.headers, &response.body, &response.arrivals, timing.1);
        let stream = answer.as_ref().map(|a| StreamRecord::of_answer(a, timing, options));
        (Self::with_stream(exchange, options, stream), answer)
    }

    fn with_stream(exchange: &Exchange, options: &RecordOptions, stream: Option<StreamRecord>) -> Self {
        let target = &exchange.request.target;
        let path = target.split_once('?').map_or(target.as_str(), |(path, _)| path).to_string();
        let grpc = crate::grpc::codec(&exchange.request.headers)
            .and(crate::grpc::method(&path))
            .map(|(service, method)| GrpcCall { service: service.to_string(), method: method.to_string() });
        Self {
            schema: SCHEMA_VERSION,
            ts: wall_time(exchange.timing.request_first_ns, options.realtime_offset_ns),
            connection: Connection { client: exchange.client, server: exchange.server },
            method: exchange.request.method.clone(),
            http_version: exchange.request.version.as_str(),
            stream_id: exchange.stream_id,
            grpc,
            path,
            request: message(&exchange.request.headers, &exchange.request.body, options),
            production: Production {
                status: exchange.response.status,
                grpc: GrpcStatus::of(&exchange.response.headers, &exchange.response.trailers),
                latency_ms: ms(exchange.production_latency_ns()),
                ttfb_ms: ms(exchange.time_to_first_byte_ns()),
                message: message(&exchange.response.headers, &exchange.response.body, options),
                stream,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{Request, Response, Timing};
    use bytes::Bytes;

    fn header(name: &str, value: &str) -> Header {
        Header { name: name.into(), value: Bytes::copy_from_slice(value.as_bytes()) }
    }

    fn exchange() -> Exchange {
        Exchange {
            id: crate::exchange::ExchangeId::default(),
            stream_id: None,
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:8080".parse().unwrap(),
            request: Request {
                method: "POST".into(),
                target: "/v2/models/m/infer?api_key=hunter2".into(),
                version: Default::default(),
                headers: vec![
                    header("Content-Type", "application/json"),
                    header("Authorization", "Bearer secret-token"),
                    header("X-Tenant", "acme"),
                ],
                body: Bytes::from_static(b"{\"inputs\":[1]}"),
                trailers: vec![],
            },
            response: Response {
                status: 200,
                reason: "OK".into(),
                version: Default::default(),
                headers: vec![
                    header("Set-Cookie", "session=abc"),
                    header("Content-Type", "application/octet-stream"),
                ],
                body: Bytes::from_static(&[0xff, 0x00, 0x10]),
                arrivals: Default::default(),
                trailers: vec![],
            },
            timing: Timing {
                request_first_ns: 1_000_000_000,
                request_last_ns: 1_000_500_000,
                response_first_ns: 1_002_000_000,
                response_last_ns: 1_003_250_000,
            },
        }
    }

    #[test]
    fn record_has_the_documented_fields_and_no_secrets() {
        let options =
            RecordOptions { redactor: Redactor::new(&["x-tenant".into()]), ..RecordOptions::default() };
        let record = ExchangeRecord::new(&exchange(), &options);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["ts"], "1970-01-01T00:00:01.000000Z");
        assert_eq!(json["connection"]["client"], "10.0.0.1:40000");
        assert_eq!(json["connection"]["server"], "10.0.0.2:8080");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/v2/models/m/infer");
        assert_eq!(json["request"]["bytes"], 14);
        assert_eq!(json["request"]["sha256"], sha256_hex(b"{\"inputs\":[1]}"));
        assert_eq!(json["request"]["content_type"], "application/json");
        assert_eq!(json["production"]["status"], 200);
        assert_eq!(json["production"]["bytes"], 3);
        assert_eq!(json["production"]["latency_ms"], 2.75);
        assert_eq!(json["production"]["ttfb_ms"], 1.5);
        assert_eq!(json["http_version"], "HTTP/1.1");
        assert!(
            json.get("stream_id").is_none() && json.get("grpc").is_none(),
            "HTTP/2 and gRPC fields only there"
        );
        assert!(json["production"].get("grpc_status").is_none());
        assert!(json["request"].get("body").is_none(), "bodies only when asked for");
        let text = json.to_string();
        for secret in ["secret-token", "session=abc", "hunter2", "acme"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(json["request"]["headers"][1], serde_json::json!(["Authorization", "[redacted]"]));
    }

    #[test]
    fn comparison_records_show_differing_numbers_as_written() {
        use crate::compare::{self, CompareRules, Message, RequestView, Schemas, ShadowOutcome};
        let request = RequestView { method: "POST", path: "/x", headers: &[], body: b"{}" };
        let production = Message { status: 200, headers: &[], body: b"[0.1, 1E+2]", trailers: &[] };
        let shadow =
            Message { status: 200, headers: &[], body: b"[0.10000000000000001, 1E+2]", trailers: &[] };
        let comparison = compare::compare(
            &request,
            &production,
            &ShadowOutcome::Answered(shadow),
            &CompareRules::default(),
            &Schemas::builtin(),
        );
        let exchange = ExchangeRecord::new(&exchange(), &RecordOptions::default());
        let model = crate::replay::target::parse_model("m@2", false);
        let record = ComparisonRecord::compared(
            &exchange,
            "POST /x",
            None,
            ShadowRecord::absent(&model, "http://s:1"),
            &comparison,
        );
        let line = serde_json::to_string(&record).unwrap();
        assert!(
            line.contains(r#""diffs":[{"pointer":"/0","production":0.1,"shadow":0.10000000000000001}]"#),
            "{line}"
        );
    }

    #[test]
    fn grpc_exchanges_record_the_call_the_stream_and_the_status() {
        let mut grpc = exchange();
        grpc.stream_id = Some(7);
        grpc.request.version = crate::exchange::HttpVersion::Http2;
        grpc.request.target = "/inference.GRPCInferenceService/ModelInfer".into();
        grpc.request.headers = vec![header("content-type", "application/grpc")];
        grpc.response.version = crate::exchange::HttpVersion::Http2;
        grpc.response.headers = vec![header("content-type", "application/grpc")];
        grpc.response.trailers = vec![header("grpc-status", "3"), header("grpc-message", "bad%20shape")];
        let json = serde_json::to_value(ExchangeRecord::new(&grpc, &RecordOptions::default())).unwrap();
        assert_eq!(json["http_version"], "HTTP/2");
        assert_eq!(json["stream_id"], 7);
        assert_eq!(
            json["grpc"],
            serde_json::json!({"service": "inference.GRPCInferenceService", "method": "ModelInfer"})
        );
        assert_eq!(json["production"]["grpc_status"], 3);
        assert_eq!(json["production"]["grpc_message"], "bad shape");
        // Trailers-Only: the status in the headers.
        grpc.response.trailers.clear();
        grpc.response.headers.push(header("grpc-status", "0"));
        let json = serde_json::to_value(ExchangeRecord::new(&grpc, &RecordOptions::default())).unwrap();
        assert_eq!(json["production"]["grpc_status"], 0);
        assert!(json["production"].get("grpc_message").is_none());
    }

    #[test]
    fn bodies_as_text_or_base64_when_asked() {
        let options = RecordOptions { bodies: true, ..RecordOptions::default() };
        let json = serde_json::to_value(ExchangeRecord::new(&exchange(), &options)).unwrap();
        assert_eq!(json["request"]["body"], "{\"inputs\":[1]}");
        assert_eq!(json["production"]["body_base64"], "/wAQ");
        assert!(json["production"].get("body").is_none());
    }

    #[test]
    fn streamed_answers_record_their_timing_and_choices() {
        let mut streamed = exchange();
        streamed.response.headers = vec![header("content-type", "text/event-stream")];
        let events = [
            "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n",
            "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\" b\"}]}\n\n",
            "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\" c\",\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        ];
        // Request complete at 1.0005 s; events at +10, +30, +40 ms, [DONE] at +41 ms.
        let mut arrivals = crate::exchange::Arrivals::default();
        let mut len = 0;
        for (event, at_ms) in events.iter().zip([10, 30, 40, 41]) {
            len += event.len() as u64;
            arrivals.push(len, 1_000_500_000 + at_ms * 1_000_000);
        }
        streamed.response.body = Bytes::from(events.concat());
        streamed.response.arrivals = arrivals;
        streamed.timing.response_last_ns = 1_000_500_000 + 41_000_000;
        let json = serde_json::to_value(ExchangeRecord::new(&streamed, &RecordOptions::default())).unwrap();
        let p = &json["production"];
        assert_eq!(p["ttft_ms"], 10.0);
        assert_eq!(p["e2e_ms"], 41.0);
        assert_eq!(
            p["itl_ms"],
            serde_json::json!({"p50": 10.0, "p95": 20.0, "max": 20.0, "gaps": [[10.0, 1], [20.0, 1]]})
        );
        assert_eq!(p["tpot_ms"], 15.5);
        assert_eq!((p["events"].as_u64(), p["output_tokens"].as_u64()), (Some(4), Some(3)));
        assert_eq!((p["tokens_from"].as_str(), p["stream_end"].as_str()), (Some("events"), Some("done")));
        assert_eq!(p["choices"], serde_json::json!([{"index": 0, "finish_reason": "stop"}]));
        let with_bodies = RecordOptions { bodies: true, ..RecordOptions::default() };
        let json = serde_json::to_value(ExchangeRecord::new(&streamed, &with_bodies)).unwrap();
        assert_eq!(json["production"]["choices"][0]["text"], "a b c");
        // Not a stream: none of it.
        let json = serde_json::to_value(ExchangeRecord::new(&exchange(), &RecordOptions::default())).unwrap();
        assert!(json["production"].get("ttft_ms").is_none() && json["production"].get("choices").is_none());
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

/// The shadow's side of a comparison record.
#[derive(Debug, Serialize, PartialEq)]
pub struct ShadowRecord {
    pub model_id: String,
    pub version: String,
    pub endpoint: String,
    pub status: Option<u16>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcStatus>,
    pub bytes: Option<usize>,
    pub sha256: Option<String>,
    /// From sending the request to the last byte of the answer (also for timeouts and failures).
    pub latency_ms: Option<f64>,
    /// `timeout`, or what failed (`connect: ...`); null when the shadow answered.
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// A streamed answer's timing (as the replay client saw it arrive) and content.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRecord>,
}

impl ShadowRecord {
    /// A shadow that was not asked (sampled out, queue full...).
    pub fn absent(model: &crate::replay::target::ModelInfo, endpoint: &str) -> Self {
        Self {
            model_id: model.model_id.clone(),
            version: model.version.clone(),
            endpoint: endpoint.to_string(),
            status: None,
            grpc: None,
            bytes: None,
            sha256: None,
            latency_ms: None,
            error: None,
            content_type: None,
            body: None,
            body_base64: None,
            stream: None,
        }
    }

    pub fn from_result(
        model: &crate::replay::target::ModelInfo,
        endpoint: &str,
        result: &crate::replay::join::ShadowResult,
        options: &RecordOptions,
    ) -> Self {
        Self::from_result_reading(model, endpoint, result, options).0
    }

    /// The record, and the shadow's event stream as read for it (for the comparison).
    pub fn from_result_reading(
        model: &crate::replay::target::ModelInfo,
        endpoint: &str,
        result: &crate::replay::join::ShadowResult,
        options: &RecordOptions,
    ) -> (Self, ReadStream) {
        use crate::replay::join::ShadowResult;
        let mut record = Self::absent(model, endpoint);
        let mut read = None;
        record.latency_ms = result.latency_ns().map(ms);
        match result {
            ShadowResult::Answered { answer, latency_ns } => {
                read = StreamRecord::read(&answer.headers, &answer.body, &answer.arrivals, *latency_ns);
                record.stream = read.as_ref().map(|a| StreamRecord::of_answer(a, (0, *latency_ns), options));
                let message = message(&answer.headers, &answer.body, options);
                record.status = Some(answer.status);
                record.grpc = GrpcStatus::of(&answer.headers, &answer.trailers);
                record.bytes = Some(message.bytes);
                record.sha256 = Some(message.sha256);
                record.content_type = message.content_type;
                record.body = message.body;
                record.body_base64 = message.body_base64;
            }
            ShadowResult::TimedOut { .. } => record.error = Some("timeout".into()),
            ShadowResult::Failed { error, .. } => record.error = Some(error.clone()),
            ShadowResult::NotSent { reason } => {
                record.error = Some(format!("not sent: {}", reason.replace('_', " ")))
            }
        }
        (record, read)
    }
}

/// One line of the `--record` file when shadows are configured: the exchange record plus the
/// shadow's answer and the comparison (one line per exchange and shadow).
#[derive(Debug, Serialize)]
pub struct ComparisonRecord<'a> {
    #[serde(flatten)]
    pub exchange: &'a ExchangeRecord,
    /// `METHOD /path`.
    pub route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub production_model: Option<&'a crate::replay::target::ModelInfo>,
    pub shadow: ShadowRecord,
    /// A [`crate::compare::verdict::Verdict`] name, or `not_compared`.
    pub verdict: &'static str,
    /// Why it was not compared (`sampled_out`, `route_filtered`, `queue_full`, `not_replayed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'a str>,
    pub diff_count: usize,
    pub diffs: &'a [crate::compare::Diff],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<&'a crate::compare::PredictionMetrics>,
}

impl<'a> ComparisonRecord<'a> {
    pub fn compared(
        exchange: &'a ExchangeRecord,
        route: &'a str,
        production_model: Option<&'a crate::replay::target::ModelInfo>,
        shadow: ShadowRecord,
        comparison: &'a crate::compare::Comparison,
    ) -> Self {
        Self {
            exchange,
            route,
            production_model,
            shadow,
            verdict: comparison.verdict.as_str(),
            reason: None,
            protocol: Some(comparison.protocol.as_str()),
            note: comparison.note.as_deref(),
            diff_count: comparison.diff_count,
            diffs: &comparison.diffs,
            metrics: Some(&comparison.metrics),
        }
    }

    pub fn not_compared(
        exchange: &'a ExchangeRecord,
        route: &'a str,
        production_model: Option<&'a crate::replay::target::ModelInfo>,
        shadow: ShadowRecord,
        reason: &'static str,
    ) -> Self {
        Self {
            exchange,
            route,
            production_model,
            shadow,
            verdict: "not_compared",
            reason: Some(reason),
            protocol: None,
            note: None,
            diff_count: 0,
            diffs: &[],
            metrics: None,
        }
    }
}
