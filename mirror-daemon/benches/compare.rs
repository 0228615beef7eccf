//! Parse + compare throughput on large Open Inference Protocol answers (`cargo bench --bench compare`).
//!
//! Every compared body is parsed and walked, so this bounds how many large tensor answers a core
//! can judge per second. The production body is a 10 MiB OIP answer of FP32 scores (printed as
//! f64, the way Python servers print float32 values); the shadow's is the same answer, or one with
//! every 100th score moved by 1e-7 and compared with an absolute tolerance of 1e-6.
//!
//! Times are the benchmark thread's CPU time, not wall time, so that other work on a shared
//! machine does not count against the comparison.
#[path = "support/cpu_time.rs"]
mod cpu_time;

use cpu_time::cpu_time_of;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mirror_daemon::compare::{self, CompareRules, Message, RequestView, Schemas, ShadowOutcome};

const TARGET_BYTES: usize = 10 << 20;
const CLASSES: usize = 10;

/// A 10 MiB OIP answer; `perturb` moves every 100th score by 1e-7.
fn answer(perturb: bool) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut data = String::with_capacity(TARGET_BYTES + 64);
    let mut count = 0usize;
    while data.len() < TARGET_BYTES || !count.is_multiple_of(CLASSES) {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let mut score = f64::from((state >> 40) as f32 / (1u64 << 24) as f32);
        if perturb && count.is_multiple_of(100) {
            score += 1e-7;
        }
        if count > 0 {
            data.push(',');
        }
        data.push_str(&score.to_string());
        count += 1;
    }
    format!(
        r#"{{"model_name":"m","model_version":"1","id":"x","outputs":[{{"name":"probs","datatype":"FP32","shape":[{},{CLASSES}],"data":[{data}]}}]}}"#,
        count / CLASSES
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let production = answer(false);
    let perturbed = answer(true);
    let request = RequestView { method: "POST", path: "/v2/models/m/infer", headers: &[], body: b"{}" };
    let prod = Message { status: 200, headers: &[], body: &production, trailers: &[] };
    let schemas = Schemas::builtin();
    let mut group = c.benchmark_group("compare_oip_10MiB");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(production.len() as u64));
    let strict = CompareRules::default();
    group.bench_function("identical", |b| {
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let shadow = ShadowOutcome::Answered(Message {
                    status: 200,
                    headers: &[],
                    body: &production,
                    trailers: &[],
                });
                let c = compare::compare(&request, &prod, &shadow, &strict, &schemas);
                assert_eq!(c.verdict, compare::Verdict::Match);
            })
        })
    });
    let tolerant = CompareRules { abs_tolerance: 1e-6, ..CompareRules::default() };
    group.bench_function("within_tolerance", |b| {
        b.iter_custom(|iters| {
            cpu_time_of(iters, || {
                let shadow = ShadowOutcome::Answered(Message {
                    status: 200,
                    headers: &[],
                    body: &perturbed,
                    trailers: &[],
                });
                let c = compare::compare(&request, &prod, &shadow, &tolerant, &schemas);
                assert_eq!(c.verdict, compare::Verdict::WithinTolerance);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
