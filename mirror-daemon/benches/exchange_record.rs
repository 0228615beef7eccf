//! The per-exchange record of a small inference call (`cargo bench --bench exchange_record`).
//!
//! At tens of thousands of requests per second the fixed cost per exchange matters more than
//! throughput on large bodies: this measures what the reporter does for every exchange before a
//! comparison, on the mirror benchmark's traffic (an OIP request of one row, a 1 KiB JSON answer,
//! the headers nginx and a client send): the record built from the exchange (header redaction,
//! body digests, timestamps) and serialised to a JSON line; and the reporter's whole work for one
//! compared exchange (`reporter`): the exchange and shadow records, the comparison, the comparison
//! record's line and its observation added to the aggregates. Times are the thread's CPU time.
#[path = "support/cpu_time.rs"]
mod cpu_time;

use bytes::Bytes;
use cpu_time::cpu_time_of;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mirror_daemon::{
    compare::{self, CompareRules, Message, RequestView, Schemas, ShadowOutcome},
    exchange::{Exchange, Header, Request, Response, Timing},
    mirror::{PrepareContext, RuleSet, ShadowInfo},
    replay::{
        join::{Complete, ShadowAnswer, ShadowResult},
        target::parse_model,
    },
    report::{
        aggregate::{Aggregator, Observation},
        record::{ComparisonRecord, ExchangeRecord, RecordOptions, ShadowRecord},
    },
};

fn header(name: &str, value: &str) -> Header {
    Header { name: name.into(), value: Bytes::copy_from_slice(value.as_bytes()) }
}

fn exchange() -> Exchange {
    let request = br#"{"id":"bench-1","inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[0.0,0.375,0.75,1.125]}]}"#;
    let mut answer = String::from(
        r#"{"model_name":"demo","model_version":"1","outputs":[{"name":"probabilities","data":["#,
    );
    while answer.len() < 1000 {
        answer.push_str("0.123456,");
    }
    answer.push_str("0.5]}]}");
    Exchange {
        id: Default::default(),
        stream_id: None,
        client: "198.18.0.1:40000".parse().expect("address"),
        server: "198.18.0.2:8080".parse().expect("address"),
        request: Request {
            method: "POST".into(),
            target: "/v2/models/demo/infer".into(),
            version: Default::default(),
            headers: vec![
                header("Host", "198.18.0.2:8080"),
                header("Content-Type", "application/json"),
                header("Content-Length", &request.len().to_string()),
                header("User-Agent", "bench/1.0"),
                header("Accept", "*/*"),
            ],
            body: Bytes::from_static(request),
            trailers: vec![],
        },
        response: Response {
            status: 200,
            reason: "OK".into(),
            version: Default::default(),
            headers: vec![
                header("Server", "nginx/1.22.1"),
                header("Date", "Tue, 01 Dec 2026 17:00:00 GMT"),
                header("Content-Type", "application/json"),
                header("Content-Length", &answer.len().to_string()),
                header("Connection", "keep-alive"),
            ],
            body: Bytes::from(answer),
            arrivals: Default::default(),
            trailers: vec![],
        },
        timing: Timing {
            request_first_ns: 1_000_000_000,
            request_last_ns: 1_000_050_000,
            response_first_ns: 1_000_400_000,
            response_last_ns: 1_000_450_000,
        },
    }
}

fn bench(c: &mut Criterion) {
    let exchange = exchange();
    let options = RecordOptions::default();
    let mut group = c.benchmark_group("exchange_record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("build_and_serialise_1KiB", |b| {
        let mut line = Vec::with_capacity(2048);
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let record = ExchangeRecord::new(std::hint::black_box(&exchange), &options);
                line.clear();
                serde_json::to_writer(&mut line, &record).expect("serialisable");
                std::hint::black_box(&line);
            })
        });
    });
    group.finish();
    reporter(c, &exchange, &options);
}

/// The reporter's work for one exchange and one shadow that answered the same: its own
/// preparation ([`PrepareContext::prepare`]) and the observation added to the aggregates.
fn reporter(c: &mut Criterion, exchange: &Exchange, options: &RecordOptions) {
    let model = parse_model("candidate@2", false);
    let production_model = parse_model("production@1", true);
    let result = ShadowResult::Answered {
        answer: ShadowAnswer {
            status: 200,
            headers: exchange.response.headers.clone(),
            body: exchange.response.body.clone(),
            arrivals: Default::default(),
            trailers: vec![],
        },
        latency_ns: 450_000,
    };
    let (rules, schemas) = (CompareRules::default(), Schemas::builtin());
    let rule_set = RuleSet { default: rules.clone(), routes: Vec::new(), schemas: schemas.clone() };
    let context = PrepareContext {
        rules: &rule_set,
        record: options,
        production_model: Some(&production_model),
        lines: true,
    };
    let shadows = [ShadowInfo { model: model.clone(), endpoint: "http://198.18.0.3:8080".into() }];
    let complete = Complete { exchange: exchange.clone(), results: vec![result.clone()], held: Vec::new() };
    let mut aggregator = Aggregator::default();
    let mut group = c.benchmark_group("reporter");
    group.throughput(Throughput::Elements(1));
    group.bench_function("compared_1KiB", |b| {
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let prepared = context.prepare(std::hint::black_box(&complete), &shadows).expect("prepared");
                let compared = prepared.shadows[0].as_ref().expect("compared");
                aggregator.add(compared.observation.as_ref().expect("a comparison record"));
                std::hint::black_box(&prepared);
            })
        });
    });
    group.finish();

    // The observation alone, both ways: through a `serde_json::Value` (what the reporter did
    // before) and from the typed record.
    let (record, _) = ExchangeRecord::new_reading(exchange, options);
    let comparison = compare::compare(
        &RequestView { method: "POST", path: "/v2/models/demo/infer", headers: &[], body: b"{}" },
        &Message { status: 200, headers: &[], body: &exchange.response.body, trailers: &[] },
        &ShadowOutcome::Answered(Message {
            status: 200,
            headers: &[],
            body: &exchange.response.body,
            trailers: &[],
        }),
        &rules,
        &schemas,
    );
    let shadow = ShadowRecord::from_result(&model, "http://198.18.0.3:8080", &result, options);
    let compared =
        ComparisonRecord::compared(&record, "POST /v2/models/demo/infer", None, shadow, &comparison);
    let mut group = c.benchmark_group("observation");
    group.throughput(Throughput::Elements(1));
    group.bench_function("via_json_value", |b| {
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let value = serde_json::to_value(std::hint::black_box(&compared)).expect("serialisable");
                std::hint::black_box(Observation::from_record(&value).expect("a comparison record"));
            })
        });
    });
    group.bench_function("typed", |b| {
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let observation = Observation::from_comparison(std::hint::black_box(&compared));
                std::hint::black_box(observation.expect("a comparison record"));
            })
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
