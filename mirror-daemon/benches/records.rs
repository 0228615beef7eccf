//! Record writer throughput with rotation on (`cargo bench --bench records`, or `cargo xtask
//! bench --which records`).
//!
//! The whole path of a record after the reporter made it: pushed into the writer's queue (as the
//! reporter does), appended by the writer thread in 64 KiB chunks, the file rotated every 16 MiB
//! (keeping 2 rotated files) and each rotated file gzip-compressed in the background — a rotation
//! waits for the previous compression, so a compressor slower than the writer shows here. The
//! records are 1 KiB comparison records (three SHA-256 digests, numbers, headers), so records/s is
//! MiB/s × 1024. Pushes go in 4 MiB bursts, each waited for, so that nothing is dropped.
//!
//! Wall-clock time: the work is on the writer and compression threads. Files go to the system
//! temporary directory (the page cache, as a record file on a node mostly does).
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mirror_daemon::report::sink::{Compression, RecordSink, SinkConfig, Target};

const RECORD: usize = 1024;
const BURST: usize = (4 << 20) / RECORD;
const PER_ITERATION: usize = (32 << 20) / RECORD;

/// A 1 KiB comparison record, distinct per `seq`.
fn record(seq: u64) -> Vec<u8> {
    let digest = |salt: u64| {
        let mut state = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
        (0..4)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                format!("{state:016x}")
            })
            .collect::<String>()
    };
    let head = format!(
        r#"{{"schema":1,"ts":"2026-12-01T13:00:{:02}.{:06}Z","connection":{{"client":"10.0.{}.{}:{}","server":"10.0.3.7:8080"}},"method":"POST","path":"/v2/models/demo/infer","http_version":"HTTP/1.1","request":{{"bytes":{},"sha256":"{}","content_type":"application/json","headers":[["host","10.0.3.7:8080"],["content-type","application/json"],["authorization","[redacted]"]]}},"production":{{"status":200,"latency_ms":{:.3},"ttfb_ms":{:.3},"bytes":{},"sha256":"{}","content_type":"application/json","headers":[["content-type","application/json"]]}},"route":"POST /v2/models/demo/infer","production_model":{{"model_id":"model-v1","version":"1","is_production":true}},"shadow":{{"model_id":"model-v2","version":"2","endpoint":"http://10.0.3.8:8080","status":200,"sha256":"{}","latency_ms":{:.3},"error":null}},"verdict":"match","protocol":"oip","diff_count":0,"diffs":[],"metrics":{{"rows":{},"label_agreements":{},"label_flips":0}},"pad":""#,
        seq % 60,
        seq % 1_000_000,
        seq % 250,
        seq % 200,
        30_000 + seq % 30_000,
        100 + seq % 900,
        digest(1),
        1.0 + (seq % 97) as f64 / 10.0,
        0.5 + (seq % 89) as f64 / 10.0,
        200 + seq % 4000,
        digest(2),
        digest(3),
        1.2 + (seq % 83) as f64 / 10.0,
        1 + seq % 4,
        1 + seq % 4,
    );
    let mut line = head.into_bytes();
    line.resize(RECORD - 3, b'x');
    line.extend_from_slice(b"\"}\n");
    line
}

fn bench(c: &mut Criterion) {
    let records: Vec<Vec<u8>> = (0..PER_ITERATION as u64).map(record).collect();
    let dir = std::env::temp_dir().join(format!("mirror-bench-records-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    // The record queue's share of the default memory budget, as the daemon runs it.
    let queue_bytes = mirror_daemon::budget::Shares::split(mirror_daemon::budget::DEFAULT_MEMORY_LIMIT)
        .expect("the default budget splits")
        .records as usize;
    let mut group = c.benchmark_group("records");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes((PER_ITERATION * RECORD) as u64));
    for (name, compression) in
        [("rotate-16MiB-gzip", Compression::Gzip), ("rotate-16MiB-plain", Compression::None)]
    {
        let sink = RecordSink::start(
            SinkConfig {
                target: Target::File(dir.join(format!("{name}.jsonl"))),
                max_size: Some(16 << 20),
                keep: 2,
                compression,
                log_every: Duration::from_secs(10),
            },
            queue_bytes,
        )
        .expect("open the bench record file");
        group.bench_function(name, |b| {
            b.iter(|| {
                for burst in records.chunks(BURST) {
                    for line in burst {
                        sink.push(line.clone());
                    }
                    assert!(sink.sync(Duration::from_secs(60)), "the writer stalled");
                }
            })
        });
        let drops = sink.close(Duration::from_secs(60));
        assert_eq!(drops, Default::default(), "nothing may be dropped in the benchmark");
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
