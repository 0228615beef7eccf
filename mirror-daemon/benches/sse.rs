//! Streamed LLM answers read per core (`cargo bench --bench sse`): an OpenAI chat stream of 200
//! events, as vLLM sends one (`data: {chunk}\n\n`, one token each, a usage chunk, `[DONE]`),
//! parsed, folded into its text and timed from its arrivals; the same answer compared with
//! itself by assembled content; and the whole of what the daemon does with one streamed exchange
//! and its shadow's streamed answer — both sides' records and their comparison — with each stream
//! read twice (for its record, then for the comparison) and read once. Times are the benchmark
//! thread's CPU time.
#[path = "support/cpu_time.rs"]
mod cpu_time;

use cpu_time::cpu_time_of;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mirror_daemon::{
    compare::{self, CompareRules, Message, RequestView, Schemas, ShadowOutcome},
    exchange::{Arrivals, Header},
    report::record::{RecordOptions, StreamRecord},
    sse::{self, StreamFigures},
};

const EVENTS: usize = 200;

/// The stream's body and its arrivals: one TCP segment per event, 20 ms apart.
fn stream() -> (Vec<u8>, Arrivals) {
    let mut body = String::new();
    let mut arrivals = Arrivals::default();
    for i in 0..EVENTS {
        let chunk = format!(
            r#"{{"id":"chatcmpl-8f2a7c4e9b1d","object":"chat.completion.chunk","created":1733040000,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{{"index":0,"delta":{{"content":" token{i}"}},"logprobs":null,"finish_reason":null}}]}}"#
        );
        body.push_str(&format!("data: {chunk}\n\n"));
        arrivals.push(body.len() as u64, 1_000_000_000 + i as u64 * 20_000_000);
    }
    body.push_str(r#"data: {"id":"chatcmpl-8f2a7c4e9b1d","object":"chat.completion.chunk","created":1733040000,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":200,"total_tokens":212}}"#);
    body.push_str("\n\ndata: [DONE]\n\n");
    arrivals.push(body.len() as u64, 1_000_000_000 + EVENTS as u64 * 20_000_000);
    (body.into_bytes(), arrivals)
}

fn bench(c: &mut Criterion) {
    let (body, arrivals) = stream();
    let mut group = c.benchmark_group("sse_chat_200_events");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("read_and_time", |b| {
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let answer = sse::read(&body, &arrivals, 0).expect("readable");
                let figures = StreamFigures::of(&answer, 999_000_000, 5_000_000_000);
                assert_eq!((answer.content_times.len(), figures.output_tokens), (EVENTS, 200));
            })
        })
    });
    let headers = [Header { name: "content-type".into(), value: "text/event-stream".into() }];
    let request = RequestView { method: "POST", path: "/v1/chat/completions", headers: &[], body: b"{}" };
    let message = Message { status: 200, headers: &headers, body: &body, trailers: &[] };
    let (rules, schemas) = (CompareRules::default(), Schemas::builtin());
    group.bench_function("compare_by_content", |b| {
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let c =
                    compare::compare(&request, &message, &ShadowOutcome::Answered(message), &rules, &schemas);
                assert_eq!(c.verdict, compare::Verdict::Match);
            })
        })
    });
    let options = RecordOptions::default();
    let times = (999_000_000, 5_000_000_000);
    group.bench_function("records_and_comparison_read_twice", |b| {
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let records = [
                    StreamRecord::of(&headers, &body, &arrivals, times, &options),
                    StreamRecord::of(&headers, &body, &arrivals, times, &options),
                ];
                let c =
                    compare::compare(&request, &message, &ShadowOutcome::Answered(message), &rules, &schemas);
                assert!(records.iter().all(Option::is_some) && c.verdict == compare::Verdict::Match);
            })
        })
    });
    group.bench_function("records_and_comparison_read_once", |b| {
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let read = [
                    StreamRecord::read(&headers, &body, &arrivals, times.1),
                    StreamRecord::read(&headers, &body, &arrivals, times.1),
                ];
                let records =
                    read.each_ref().map(|r| r.as_ref().map(|a| StreamRecord::of_answer(a, times, &options)));
                let shadow = ShadowOutcome::Answered(message);
                let c = compare::compare_read(
                    &request,
                    &message,
                    &shadow,
                    &rules,
                    &schemas,
                    read.each_ref().map(Option::as_ref),
                );
                assert!(records.iter().all(Option::is_some) && c.verdict == compare::Verdict::Match);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
