//! The daemon builds each observation from the typed comparison record; `mirror-daemon report`
//! reads it back from the record's JSON. These tests hold the two equal for every kind of record
//! the reporter writes, so the live verdict and the offline one never disagree.
use bytes::Bytes;
use proptest::prelude::*;

use super::{
    aggregate::{Observation, Outcome, RecordError},
    llm::StreamEnding,
    record::{ComparisonRecord, ExchangeRecord, RecordOptions, ShadowRecord},
};
use crate::{
    compare::{self, CompareRules, Message, RequestView, Schemas, ShadowOutcome},
    exchange::{Arrivals, Exchange, ExchangeId, Header, HttpVersion, Request, Response, Timing},
    replay::{
        join::{ShadowAnswer, ShadowResult},
        target::parse_model,
    },
};

/// What the exchange carried.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// OIP JSON over HTTP/1.1.
    Json,
    /// OIP `ModelInfer` over gRPC, with a `grpc-status` trailer.
    Grpc,
    /// A streamed (SSE) completion, its events timed.
    Stream,
}

/// What became of the shadow's replay.
#[derive(Clone, Debug)]
enum Fate {
    /// It answered production's body.
    Same,
    /// It answered another body.
    Different,
    /// It answered with this status.
    Status(u16),
    TimedOut,
    Failed(String),
    NotSent(&'static str),
}

/// Values a test writes into the typed record, as a buggy or future producer could: they must
/// read the same (or fail the same) both ways.
#[derive(Clone, Debug, Default)]
struct Tampering {
    max_abs_error: Option<f64>,
    ttft_ms: Option<f64>,
    gap_ms: Option<f64>,
}

#[derive(Clone, Debug)]
struct Case {
    kind: Kind,
    fate: Fate,
    production_status: u16,
    grpc_status: u32,
    /// Gaps between production's events, and the shadow's, in µs.
    production_gaps_us: Vec<u32>,
    shadow_gaps_us: Vec<u32>,
    latency_ns: u64,
    shadow_latency_ns: u64,
    model_id: String,
    route: String,
    tampering: Tampering,
}

fn header(name: &str, value: &str) -> Header {
    Header { name: name.into(), value: Bytes::copy_from_slice(value.as_bytes()) }
}

/// An SSE completion of one word per gap (and a first one), with its arrivals `start_ns` onwards.
fn stream(words: &str, gaps_us: &[u32], start_ns: u64) -> (Bytes, Arrivals) {
    let mut body = String::new();
    let mut arrivals = Arrivals::default();
    let mut at = start_ns;
    for (i, gap) in std::iter::once(&1_000).chain(gaps_us).enumerate() {
        at += u64::from(*gap) * 1_000;
        let finish = if i == gaps_us.len() { r#","finish_reason":"stop""# } else { "" };
        body.push_str(&format!(
            "data: {{\"object\":\"text_completion\",\"choices\":[{{\"index\":0,\"text\":\" {words}{i}\"{finish}}}]}}\n\n"
        ));
        arrivals.push(body.len() as u64, at);
    }
    body.push_str("data: [DONE]\n\n");
    arrivals.push(body.len() as u64, at + 1_000);
    (Bytes::from(body), arrivals)
}

fn exchange(case: &Case) -> Exchange {
    let (target, request_headers, mut response_headers, body, arrivals, trailers) = match case.kind {
        Kind::Json => (
            "/v2/models/m/infer",
            vec![header("content-type", "application/json")],
            vec![header("content-type", "application/json")],
            Bytes::from_static(
                br#"{"outputs":[{"name":"p","datatype":"FP32","shape":[2],"data":[0.25,0.75]}]}"#,
            ),
            Arrivals::default(),
            vec![],
        ),
        Kind::Grpc => (
            "/inference.GRPCInferenceService/ModelInfer",
            vec![header("content-type", "application/grpc")],
            vec![header("content-type", "application/grpc")],
            Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]),
            Arrivals::default(),
            vec![header("grpc-status", &case.grpc_status.to_string())],
        ),
        Kind::Stream => {
            let (body, arrivals) = stream("a", &case.production_gaps_us, 1_000_000_000);
            ("/v1/completions", vec![], vec![], body, arrivals, vec![])
        }
    };
    if let Kind::Stream = case.kind {
        response_headers.push(header("content-type", "text/event-stream"));
    }
    let last = arrivals.pieces().last().map_or(1_000_000_000 + case.latency_ns, |p| p.1);
    Exchange {
        id: ExchangeId { connection: 1, seq: 1 },
        stream_id: matches!(case.kind, Kind::Grpc).then_some(1),
        client: "10.0.0.1:40000".parse().unwrap(),
        server: "10.0.0.2:8080".parse().unwrap(),
        request: Request {
            method: "POST".into(),
            target: target.into(),
            version: if matches!(case.kind, Kind::Grpc) { HttpVersion::Http2 } else { HttpVersion::Http11 },
            headers: request_headers,
            body: Bytes::from_static(b"{}"),
            trailers: vec![],
        },
        response: Response {
            status: case.production_status,
            reason: String::new(),
            version: Default::default(),
            headers: response_headers,
            body,
            arrivals,
            trailers,
        },
        timing: Timing {
            request_first_ns: 999_000_000,
            request_last_ns: 1_000_000_000,
            response_first_ns: 1_000_000_000 + case.latency_ns / 2,
            response_last_ns: last.max(1_000_000_000),
        },
    }
}

fn shadow_result(case: &Case, production: &Exchange) -> ShadowResult {
    let latency_ns = case.shadow_latency_ns;
    let answer = |status: u16, body: Bytes, arrivals: Arrivals| ShadowResult::Answered {
        answer: ShadowAnswer {
            status,
            headers: production.response.headers.clone(),
            body,
            arrivals,
            trailers: production.response.trailers.clone(),
        },
        latency_ns,
    };
    let response = &production.response;
    match &case.fate {
        Fate::Same => answer(200, response.body.clone(), response.arrivals.clone()),
        Fate::Status(status) => answer(*status, response.body.clone(), Arrivals::default()),
        Fate::Different => match case.kind {
            Kind::Stream => {
                let (body, arrivals) = stream("b", &case.shadow_gaps_us, 0);
                answer(200, body, arrivals)
            }
            Kind::Grpc => answer(200, Bytes::from_static(&[0, 0, 0, 0, 2, 8, 2]), Arrivals::default()),
            Kind::Json => answer(
                200,
                Bytes::from_static(
                    br#"{"outputs":[{"name":"p","datatype":"FP32","shape":[2],"data":[0.75,0.25]}]}"#,
                ),
                Arrivals::default(),
            ),
        },
        Fate::TimedOut => ShadowResult::TimedOut { latency_ns },
        Fate::Failed(error) => ShadowResult::Failed { error: error.clone(), latency_ns },
        Fate::NotSent(reason) => ShadowResult::NotSent { reason },
    }
}

/// Builds the case's comparison record as the reporter does and hands it to `check`.
fn with_record<T>(case: &Case, check: impl FnOnce(&ComparisonRecord<'_>) -> T) -> T {
    let options = RecordOptions::default();
    let production = exchange(case);
    let (mut record, production_read) = ExchangeRecord::new_reading(&production, &options);
    let model = parse_model(&format!("{}@2", case.model_id), false);
    let production_model = parse_model("production@1", true);
    let result = shadow_result(case, &production);
    let (mut shadow, shadow_read) =
        ShadowRecord::from_result_reading(&model, "http://10.0.0.3:8080", &result, &options);
    if let Some(ttft) = case.tampering.ttft_ms {
        for stream in [record.production.stream.as_mut(), shadow.stream.as_mut()].into_iter().flatten() {
            stream.ttft_ms = Some(ttft);
        }
    }
    if let Some(gap) = case.tampering.gap_ms
        && let Some(itl) = shadow.stream.as_mut().and_then(|s| s.itl_ms.as_mut())
    {
        itl.gaps.push((gap, 1));
    }
    if let ShadowResult::NotSent { reason } = result {
        return check(&ComparisonRecord::not_compared(
            &record,
            &case.route,
            Some(&production_model),
            shadow,
            reason,
        ));
    }
    let outcome = ShadowOutcome::of(&result).expect("not-sent results returned above");
    let request = RequestView::of(&production.request);
    let production_message = Message::of(&production.response);
    let read = [production_read.as_ref(), shadow_read.as_ref()];
    let mut comparison = compare::compare_read(
        &request,
        &production_message,
        &outcome,
        &CompareRules::default(),
        &Schemas::builtin(),
        read,
    );
    if let Some(max) = case.tampering.max_abs_error {
        comparison.metrics.max_abs_error = Some(max);
    }
    check(&ComparisonRecord::compared(&record, &case.route, Some(&production_model), shadow, &comparison))
}

/// The observation both ways: from the typed record, and from its JSON as `report` reads it.
fn both_ways(record: &ComparisonRecord<'_>) -> [Result<Observation, RecordError>; 2] {
    let value = serde_json::to_value(record).expect("a record serialises");
    [Observation::from_comparison(record), Observation::from_record(&value)]
}

fn base(kind: Kind, fate: Fate) -> Case {
    Case {
        kind,
        fate,
        production_status: 200,
        grpc_status: 0,
        production_gaps_us: vec![12_000, 8_500, 8_500],
        shadow_gaps_us: vec![20_000, 9_000],
        latency_ns: 4_500_000,
        shadow_latency_ns: 6_250_000,
        model_id: "candidate".into(),
        route: "POST /v2/models/m/infer".into(),
        tampering: Tampering::default(),
    }
}

#[test]
fn every_kind_of_record_gives_the_same_observation_both_ways() {
    let kinds = [Kind::Json, Kind::Grpc, Kind::Stream];
    let fates = [
        Fate::Same,
        Fate::Different,
        Fate::Status(503),
        Fate::TimedOut,
        Fate::Failed("connect: connection refused".into()),
        Fate::NotSent("queue_full"),
    ];
    let mut outcomes = Vec::new();
    for kind in kinds {
        for fate in fates.clone() {
            let case = base(kind, fate);
            with_record(&case, |record| {
                let [typed, read] = both_ways(record);
                let typed = typed.unwrap_or_else(|e| panic!("{case:?}: {e}"));
                assert_eq!(Ok(&typed), read.as_ref(), "{case:?}");
                outcomes.push(typed.outcome.clone());
                if let (Kind::Stream, Fate::Different) = (kind, &case.fate) {
                    // Not vacuous: a streamed comparison carries both sides' figures and gaps.
                    assert!(typed.text.production.is_some_and(|t| t.ttft_ms.is_some()));
                    assert_eq!(typed.text.production_gaps.len(), 2, "{typed:?}");
                    assert!(!typed.text.shadow_gaps.is_empty(), "{typed:?}");
                    assert_eq!(typed.text.shadow_end, Some(StreamEnding::Done));
                }
                if let (Kind::Stream, Fate::TimedOut) = (kind, &case.fate) {
                    assert_eq!(typed.text.shadow_end, Some(StreamEnding::Timeout));
                }
            });
        }
    }
    use crate::compare::verdict::Verdict;
    for expected in [
        Outcome::Compared(Verdict::Match),
        Outcome::Compared(Verdict::Mismatch),
        Outcome::Compared(Verdict::ShadowError),
        Outcome::Compared(Verdict::ShadowTimeout),
        Outcome::NotCompared("queue_full".into()),
    ] {
        assert!(outcomes.contains(&expected), "no {expected:?} among {outcomes:?}");
    }
}

#[test]
fn invalid_values_fail_the_same_way_both_ways() {
    let mut negative = base(Kind::Json, Fate::Different);
    negative.tampering.max_abs_error = Some(-1.5);
    let mut not_a_status = base(Kind::Grpc, Fate::Same);
    not_a_status.production_status = 42;
    let mut bad_gap = base(Kind::Stream, Fate::Different);
    bad_gap.tampering.gap_ms = Some(f64::NAN);
    for case in [negative, not_a_status, bad_gap] {
        with_record(&case, |record| {
            let [typed, read] = both_ways(record);
            assert!(typed.is_err(), "{case:?}: {typed:?}");
            assert_eq!(typed, read, "{case:?}");
        });
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Json), Just(Kind::Grpc), Just(Kind::Stream)]
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        Just(Fate::Same),
        Just(Fate::Different),
        any::<u16>().prop_map(Fate::Status),
        Just(Fate::TimedOut),
        "\\PC{0,40}".prop_map(Fate::Failed),
        prop::sample::select(vec!["queue_full", "no_endpoint", "memory_budget", "in_flight_at_exit"])
            .prop_map(Fate::NotSent),
    ]
}

/// Mostly ordinary numbers, sometimes ones a JSON number cannot hold or a measure cannot be.
fn odd_f64() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        4 => Just(None),
        2 => (0.0f64..1e6).prop_map(Some),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, -0.0, -1.0, 1e300, 5e-324]).prop_map(Some),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        (kind(), fate(), prop_oneof![Just(200u16), any::<u16>()], 0u32..20),
        (
            prop::collection::vec(0u32..200_000, 0..12),
            prop::collection::vec(0u32..200_000, 0..12),
            0u64..60_000_000_000,
            0u64..60_000_000_000,
        ),
        ("\\PC{0,140}", "\\PC{0,140}"),
        (odd_f64(), odd_f64(), odd_f64()),
    )
        .prop_map(
            |(
                (kind, fate, production_status, grpc_status),
                (production_gaps_us, shadow_gaps_us, latency_ns, shadow_latency_ns),
                (model_id, route),
                (max_abs_error, ttft_ms, gap_ms),
            )| Case {
                kind,
                fate,
                production_status,
                grpc_status,
                production_gaps_us,
                shadow_gaps_us,
                latency_ns,
                shadow_latency_ns,
                model_id,
                route,
                tampering: Tampering { max_abs_error, ttft_ms, gap_ms },
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the record holds (odd statuses, long or non-ASCII keys cut to their limit,
    /// numbers JSON writes as null, negative measures), both ways give the same observation, or
    /// the same error.
    #[test]
    fn the_typed_observation_is_the_one_read_from_json(case in case()) {
        with_record(&case, |record| {
            let [typed, read] = both_ways(record);
            let negative = |x: Option<f64>| x.is_some_and(|x| x.is_finite() && x < 0.0);
            let valid = (100..1000).contains(&case.production_status)
                && !matches!(case.fate, Fate::Status(s) if !(100..1000).contains(&s))
                && !negative(case.tampering.max_abs_error)
                && !negative(case.tampering.ttft_ms)
                && case.tampering.gap_ms.is_none_or(|x| x.is_finite() && x >= 0.0);
            if valid {
                prop_assert!(typed.is_ok(), "{:?}: {:?}", case, typed);
            }
            prop_assert_eq!(typed, read);
            Ok(())
        })?;
    }
}
