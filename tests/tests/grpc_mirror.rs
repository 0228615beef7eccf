//! gRPC end to end, with a real gRPC stack the project did not write (Python `grpcio`, C-core
//! HTTP/2 and HPACK) on both sides: a client calls production (model v1) over one long-lived
//! connection with many streams in flight; the daemon, capturing production's interface, rebuilds
//! every stream, replays it over h2c to the shadow (model v2) and compares. The truth comes from the
//! client (what it sent and got on each call) and from calling the shadow directly with the same
//! requests: every stream must be paired exactly, and every verdict must equal the truth.
use std::{
    collections::HashMap,
    io::Read,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use base64::Engine as _;
use mirror_tests::{
    daemon::Daemon,
    gate::kernel_tests_allowed,
    grpc::{self, ClientOptions, Compression, Rpc, ServerKind, ServerOptions, TruthLine},
    netns::Trio,
    read_records, scratch_file, sha256_hex,
};
use serde_json::Value;

const PORT: u16 = 8081;

fn server(kind: ServerKind, trio: &Trio, production: bool, options: ServerOptions) -> grpc::GrpcServer {
    let (ns, addr) =
        if production { (&trio.production, trio.production_addr) } else { (&trio.shadow, trio.shadow_addr) };
    grpc::start_server(kind, ns, &[SocketAddr::from((addr, PORT))], &options).expect("start the gRPC server")
}

fn start_daemon(trio: &Trio, record: &Path, extra: &[&str]) -> Daemon {
    let shadow = format!("model-v2@2=h2c://{}:{PORT}", trio.shadow_addr);
    let port = PORT.to_string();
    let mut args = vec![
        "run",
        "-i",
        &trio.production_if,
        "-p",
        &port,
        "--shadow",
        &shadow,
        "--production-model",
        "model-v1@1",
        "--record",
        record.to_str().unwrap(),
        "--record-bodies",
        "--summary-interval",
        "1s",
        "--metrics-addr",
        "off",
    ];
    args.extend_from_slice(extra);
    Daemon::start(&trio.production, &args)
}

/// The messages of a recorded gRPC body (`--record-bodies`), decompressed per `grpc-encoding`.
fn messages(side: &Value) -> Vec<Vec<u8>> {
    let body = match (side["body_base64"].as_str(), side["body"].as_str()) {
        (Some(b64), _) => base64::engine::general_purpose::STANDARD.decode(b64).expect("base64 body"),
        (None, Some(text)) => text.as_bytes().to_vec(),
        (None, None) => Vec::new(),
    };
    let encoding = side["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case("grpc-encoding")))
        .and_then(|h| h[1].as_str().map(str::to_string));
    grpc::grpc_unframe(&body)
        .expect("a gRPC body")
        .into_iter()
        .map(|(compressed, message)| {
            if !compressed {
                return message;
            }
            let mut out = Vec::new();
            match encoding.as_deref() {
                Some("gzip") => flate2::read::GzDecoder::new(&message[..]).read_to_end(&mut out),
                Some("deflate") => flate2::read::ZlibDecoder::new(&message[..]).read_to_end(&mut out),
                other => panic!("compressed message with grpc-encoding {other:?}"),
            }
            .expect("decompress a recorded message");
            out
        })
        .collect()
}

/// The SHA-256 of the one message of a recorded side (what the client's truth hashes).
fn message_sha(side: &Value) -> Option<String> {
    let messages = messages(side);
    assert!(messages.len() <= 1, "unary calls carry one message each way: {}", messages.len());
    messages.first().map(|m| sha256_hex(m))
}

/// What the comparison must say for one call, from production's and the shadow's truth.
fn expected_verdict(production: &TruthLine, shadow: &TruthLine) -> &'static str {
    match (production.code, shadow.code) {
        (0, 0) if production.probabilities == shadow.probabilities => "match",
        (0, 0) => "mismatch",
        (0, _) => "shadow_error",
        (p, s) if p == s && production.message == shadow.message => "match",
        _ => "mismatch",
    }
}

/// Checks every record against the truth: exact pairing, statuses, verdicts. Returns how many
/// records there were per verdict.
fn check_records(
    records: &[Value],
    truth: &[TruthLine],
    direct: &HashMap<String, TruthLine>,
    label: &str,
) -> HashMap<String, usize> {
    let by_request: HashMap<&str, &TruthLine> =
        truth.iter().map(|t| (t.request_sha256.as_str(), t)).collect();
    let mut verdicts: HashMap<String, usize> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in records {
        assert_eq!(r["http_version"], "HTTP/2", "{label}: {r}");
        assert_eq!(r["grpc"]["service"], "inference.GRPCInferenceService", "{label}");
        assert_eq!(r["grpc"]["method"], "ModelInfer", "{label}");
        let stream = r["stream_id"].as_u64().expect("stream id");
        assert_eq!(stream % 2, 1, "{label}: client streams are odd");
        let request = message_sha(&r["request"]).expect("a request message");
        let call =
            by_request.get(request.as_str()).unwrap_or_else(|| panic!("{label}: a request nobody sent: {r}"));
        assert!(seen.insert(call.index), "{label}: call {} recorded twice", call.index);
        // Exactly the answer production gave to this very call.
        assert_eq!(
            message_sha(&r["production"]),
            call.response_sha256,
            "{label}: call {} mispaired",
            call.index
        );
        assert_eq!(r["production"]["grpc_status"].as_u64(), Some(u64::from(call.code)), "{label}: {r}");
        let shadow = &direct[&call.id];
        assert_eq!(r["shadow"]["grpc_status"].as_u64(), Some(u64::from(shadow.code)), "{label}: {r}");
        assert_eq!(message_sha(&r["shadow"]), shadow.response_sha256, "{label}: the shadow's own answer");
        let verdict = r["verdict"].as_str().unwrap_or_default();
        assert_eq!(verdict, expected_verdict(call, shadow), "{label}: call {} {r}", call.index);
        *verdicts.entry(verdict.to_string()).or_default() += 1;
    }
    verdicts
}

fn by_id(truth: Vec<TruthLine>) -> HashMap<String, TruthLine> {
    truth.into_iter().map(|t| (t.id.clone(), t)).collect()
}

#[test]
fn grpc_streams_are_paired_exactly_and_verdicts_equal_the_truth() {
    if !kernel_tests_allowed("grpc_streams_are_paired_exactly_and_verdicts_equal_the_truth") {
        return;
    }
    let trio = Trio::new();
    // Production fails every 100th call; the shadow those and every 25th, and flips 10% of labels.
    let _v1 =
        server(ServerKind::Oip, &trio, true, ServerOptions { error_every: 100, ..ServerOptions::default() });
    let v2 = ServerOptions {
        version: "2".into(),
        disagree_percent: 10.0,
        error_every: 25,
        ..ServerOptions::default()
    };
    let _v2 = server(ServerKind::Oip, &trio, false, v2);
    let calls = |target| ClientOptions {
        concurrency: 8,
        rows: None,
        with_tensors: true,
        ..ClientOptions::new(Rpc::Infer, target, 400)
    };
    // The truth of the shadow: the same calls, made to it directly (before the daemon runs).
    let shadow_addr = SocketAddr::from((trio.shadow_addr, PORT));
    let direct =
        by_id(grpc::run_client(&trio.production, &calls(shadow_addr), &scratch_file("direct.jsonl")));

    let record = scratch_file("grpc-mirror.jsonl");
    let daemon = start_daemon(&trio, &record, &[]);
    let production = SocketAddr::from((trio.production_addr, PORT));
    let truth = grpc::run_client(&trio.client, &calls(production), &scratch_file("truth.jsonl"));
    assert_eq!(truth.len(), 400);
    assert!(truth.iter().all(|t| t.channel == 0), "one long-lived connection");
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);

    let records = read_records(&record);
    let verdicts = check_records(&records, &truth, &direct, "unary");
    assert_eq!(records.len(), 400, "every call compared once: {verdicts:?}\n{:?}", finished.final_drops());
    // 4 calls fail on both sides alike, 12 more on the shadow only, and labels flip on others.
    assert_eq!(verdicts.get("shadow_error"), Some(&12), "{verdicts:?}");
    assert!(verdicts.get("mismatch").copied().unwrap_or(0) >= 10, "label flips seen: {verdicts:?}");
    assert!(finished.final_drops().is_empty(), "nothing lost: {}", finished.stderr);
    // The verdict and the route tables speak of the gRPC method.
    assert!(
        finished.stderr.contains("POST /inference.GRPCInferenceService/ModelInfer"),
        "{}",
        finished.stderr
    );
}

#[test]
fn grpc_compressed_and_64_mib_messages_are_rebuilt_and_compared() {
    if !kernel_tests_allowed("grpc_compressed_and_64_mib_messages_are_rebuilt_and_compared") {
        return;
    }
    let trio = Trio::new();
    let gzip = ServerOptions { compression: Compression::Gzip, ..ServerOptions::default() };
    let _v1 = server(ServerKind::Oip, &trio, true, gzip.clone());
    let _v2 = server(ServerKind::Oip, &trio, false, ServerOptions { version: "2".into(), ..gzip });
    let record = scratch_file("grpc-big.jsonl");
    let daemon = start_daemon(
        &trio,
        &record,
        &[
            "--max-body-size",
            "96MiB",
            "--ring-buffer-size",
            "256MiB",
            // Two 64 MiB calls held at once (request, answer and the shadow's) need a budget
            // to match.
            "--memory-limit",
            "4GiB",
            "--shadow-timeout",
            "60s",
        ],
    );
    let production = SocketAddr::from((trio.production_addr, PORT));
    let small =
        ClientOptions { compression: Compression::Gzip, ..ClientOptions::new(Rpc::Infer, production, 50) };
    let truth_small = grpc::run_client(&trio.client, &small, &scratch_file("gzip.jsonl"));
    // 4 Mi rows of 4 FP32 features: a 64 MiB request, a 48 MiB answer, uncompressed.
    let big = ClientOptions {
        rows: Some(4 << 20),
        id_prefix: "big-".into(),
        timeout_s: 120.0,
        ..ClientOptions::new(Rpc::Infer, production, 2)
    };
    let started = Instant::now();
    let truth_big = grpc::run_client(&trio.client, &big, &scratch_file("big.jsonl"));
    assert!(truth_big.iter().all(|t| t.code == 0 && t.request_bytes > 64 << 20), "{truth_big:?}");
    // Comparing 2 × 12 Mi probabilities takes a moment.
    std::thread::sleep(Duration::from_secs(3).max(started.elapsed() / 2));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let records = read_records(&record);
    let truth: HashMap<&str, &TruthLine> =
        truth_small.iter().chain(&truth_big).map(|t| (t.request_sha256.as_str(), t)).collect();
    for r in &records {
        let request = message_sha(&r["request"]).expect("request message");
        let call = truth.get(request.as_str()).unwrap_or_else(|| panic!("unknown request: {}", r["path"]));
        assert_eq!(message_sha(&r["production"]), call.response_sha256, "call {} mispaired", call.id);
        assert_eq!(
            r["verdict"], "match",
            "same model on both sides (versions are not judged): {}",
            r["note"]
        );
    }
    let gzipped = records.iter().filter(|r| r["request"]["bytes"].as_u64() < Some(1 << 20)).count();
    assert_eq!(gzipped, 50, "every compressed call");
    assert_eq!(records.len(), 52, "both 64 MiB calls too: {:?}", finished.final_drops());
}

#[test]
fn a_daemon_started_inside_a_long_lived_grpc_connection_never_mispairs() {
    if !kernel_tests_allowed("a_daemon_started_inside_a_long_lived_grpc_connection_never_mispairs") {
        return;
    }
    let trio = Trio::new();
    let _v1 = server(ServerKind::Oip, &trio, true, ServerOptions::default());
    let _v2 = server(
        ServerKind::Oip,
        &trio,
        false,
        ServerOptions { version: "2".into(), ..ServerOptions::default() },
    );
    let production = SocketAddr::from((trio.production_addr, PORT));
    // The connection carries 200 calls, then idles while the daemon starts, then 800 more.
    let long_lived = ClientOptions {
        pause_after: Some(200),
        concurrency: 4,
        ..ClientOptions::new(Rpc::Infer, production, 1000)
    };
    let mut client = grpc::spawn_client(&trio.client, &long_lived, &scratch_file("long.jsonl"));
    assert_eq!(client.wait_paused(Duration::from_secs(60)), 200);
    let record = scratch_file("grpc-mid.jsonl");
    let daemon = start_daemon(&trio, &record, &[]);
    client.resume();
    let truth = client.finish(Duration::from_secs(120));
    // A connection opened after the daemon started is seen from its preface: all of it.
    let fresh =
        ClientOptions { id_prefix: "fresh-".into(), ..ClientOptions::new(Rpc::Infer, production, 100) };
    let fresh_truth = grpc::run_client(&trio.client, &fresh, &scratch_file("fresh.jsonl"));
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);

    let records = read_records(&record);
    let all: HashMap<&str, &TruthLine> =
        truth.iter().chain(&fresh_truth).map(|t| (t.request_sha256.as_str(), t)).collect();
    let mut long_seen = 0;
    for r in &records {
        let request = message_sha(&r["request"]).expect("request message");
        let call = all.get(request.as_str()).unwrap_or_else(|| panic!("a request nobody sent: {r}"));
        assert_eq!(message_sha(&r["production"]), call.response_sha256, "call {} mispaired", call.id);
        assert_eq!(r["verdict"], "match");
        if call.id.starts_with("req-") {
            assert!(call.index >= 200, "only calls made after the daemon started: {}", call.id);
            long_seen += 1;
        }
    }
    let fresh_seen = records.len() - long_seen;
    assert_eq!(fresh_seen, 100, "the new connection is rebuilt whole");
    let drops = finished.final_drops();
    assert_eq!(drops.get("mid_stream_connections"), Some(&1), "{drops:?}");
    // Reported, not asserted: how many of the 800 later calls on the old connection could be proven
    // (grpcio's HPACK encoder refers to the table entries it made for the first call).
    println!(
        "mid-stream start: {long_seen} of 800 later calls on the long-lived connection rebuilt; {} streams \
         unresolved (h2_unresolved_headers)",
        drops.get("h2_unresolved_headers").copied().unwrap_or(0)
    );
}

#[test]
fn tf_serving_predict_is_compared_tensor_by_tensor() {
    if !kernel_tests_allowed("tf_serving_predict_is_compared_tensor_by_tensor") {
        return;
    }
    let trio = Trio::new();
    let _v1 = server(ServerKind::TfServing, &trio, true, ServerOptions::default());
    let v2 = ServerOptions { version: "2".into(), disagree_percent: 20.0, ..ServerOptions::default() };
    let _v2 = server(ServerKind::TfServing, &trio, false, v2);
    let calls = |target| ClientOptions {
        with_tensors: true,
        concurrency: 4,
        ..ClientOptions::new(Rpc::Predict, target, 200)
    };
    let direct = by_id(grpc::run_client(
        &trio.production,
        &calls(SocketAddr::from((trio.shadow_addr, PORT))),
        &scratch_file("tf-direct.jsonl"),
    ));
    let record = scratch_file("tf.jsonl");
    let daemon = start_daemon(&trio, &record, &[]);
    let truth = grpc::run_client(
        &trio.client,
        &calls(SocketAddr::from((trio.production_addr, PORT))),
        &scratch_file("tf-truth.jsonl"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let records = read_records(&record);
    assert_eq!(records.len(), 200, "{:?}", finished.final_drops());
    let by_request: HashMap<&str, &TruthLine> =
        truth.iter().map(|t| (t.request_sha256.as_str(), t)).collect();
    let mut mismatches = 0;
    for r in &records {
        assert_eq!(r["grpc"]["method"], "Predict");
        assert_eq!(r["protocol"], "tf_serving", "{r}");
        let call = by_request[message_sha(&r["request"]).expect("request").as_str()];
        assert_eq!(message_sha(&r["production"]), call.response_sha256, "call {} mispaired", call.id);
        let expected = expected_verdict(call, &direct[&call.id]);
        assert_eq!(r["verdict"], expected, "call {}: {r}", call.id);
        mismatches += usize::from(expected == "mismatch");
    }
    assert!(mismatches >= 20, "v2 flips labels on a share of calls: {mismatches}");
}

/// A descriptor set for the test's own streaming service, written by the real `protoc` that
/// grpcio-tools carries (`--include_imports --descriptor_set_out`), as a user would give it.
fn echo_descriptor_set() -> std::path::PathBuf {
    let out = scratch_file("echo.desc");
    let python = mirror_tests::python::env();
    let status = std::process::Command::new(&python.python)
        .args(["-m", "grpc_tools.protoc", "--include_imports"])
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(format!("-I{}", mirror_tests::python::scripts_dir().display()))
        .arg("stream_test.proto")
        .status()
        .expect("run grpc_tools.protoc");
    assert!(status.success(), "protoc failed");
    out
}

#[test]
fn bidirectional_streams_are_compared_message_by_message_with_a_users_descriptor() {
    if !kernel_tests_allowed("bidirectional_streams_are_compared_message_by_message_with_a_users_descriptor")
    {
        return;
    }
    let trio = Trio::new();
    let _v1 = server(ServerKind::Oip, &trio, true, ServerOptions::default());
    let _v2 = server(
        ServerKind::Oip,
        &trio,
        false,
        ServerOptions { version: "2".into(), ..ServerOptions::default() },
    );
    let descriptor = echo_descriptor_set();
    let record = scratch_file("chat.jsonl");
    let daemon = start_daemon(&trio, &record, &["--proto-descriptor", descriptor.to_str().unwrap()]);
    let production = SocketAddr::from((trio.production_addr, PORT));
    // 30 streams of 5 messages each way, 4 streams at a time on one connection.
    let chat = ClientOptions {
        messages: 5,
        payload_bytes: 300,
        concurrency: 4,
        ..ClientOptions::new(Rpc::Chat, production, 30)
    };
    let truth = grpc::run_client(&trio.client, &chat, &scratch_file("chat-truth.jsonl"));
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let records = read_records(&record);
    assert_eq!(records.len(), 30, "one record per stream: {:?}", finished.final_drops());
    let mut by_stream: HashMap<u64, Vec<&TruthLine>> = HashMap::new();
    for t in &truth {
        by_stream.entry(t.stream.expect("a chat line")).or_default().push(t);
    }
    for r in &records {
        assert_eq!(r["grpc"]["method"], "Chat");
        let sent: Vec<String> = messages(&r["request"]).iter().map(|m| sha256_hex(m)).collect();
        let answered: Vec<String> = messages(&r["production"]).iter().map(|m| sha256_hex(m)).collect();
        assert_eq!(sent.len(), 5, "every message of the stream: {r}");
        // The stream this record is, by its first message; then every message each way in order.
        let stream = by_stream
            .values()
            .find(|lines| lines.iter().any(|t| t.seq == Some(0) && t.request_sha256 == sent[0]))
            .unwrap_or_else(|| panic!("a stream nobody opened: {r}"));
        let mut lines = stream.clone();
        lines.sort_by_key(|t| t.seq);
        let truth_sent: Vec<&str> = lines.iter().map(|t| t.request_sha256.as_str()).collect();
        let truth_answered: Vec<&str> = lines.iter().filter_map(|t| t.response_sha256.as_deref()).collect();
        assert_eq!(sent, truth_sent);
        assert_eq!(answered, truth_answered, "the answers of this stream, in order");
        assert_eq!(r["production"]["grpc_status"].as_u64(), Some(u64::from(lines[0].code)));
        assert_eq!(r["protocol"], "json", "decoded with the descriptor: {r}");
        assert_eq!(r["verdict"], "match", "same service both sides: {r}");
    }
}
