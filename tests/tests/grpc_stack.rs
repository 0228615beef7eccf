//! The real gRPC stack the daemon's tests stand on, checked without the daemon: the Python model is
//! the Rust test model, the servers answer as specified (computed here, in Rust, from
//! `mirror_tests::model_server::Model`), and the client's truth files say what crossed the wire
//! (hashes recomputed here from messages encoded by hand).
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use mirror_tests::{
    gate::kernel_tests_allowed,
    grpc::{
        self, ClientOptions, Compression, GrpcServer, InputEncoding, Rpc, ServerOptions, TruthLine, curl_h2c,
        grpc_frame, grpc_unframe,
    },
    model_server::{CLASSES, Model},
    netns::{Netns, Pair},
    scratch_file, sha256_hex,
};

/// Rows of `features` values from a small LCG: negatives, fractions, large values, and zeros.
fn pseudo_random_rows(count: usize) -> Vec<Vec<f32>> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u32
    };
    (0..count)
        .map(|i| {
            let features = 1 + i % 8;
            (0..features)
                .map(|_| match next() % 10 {
                    0 => 0.0,
                    1 => (next() % 2000) as f32 - 1000.0,
                    _ => ((next() % 20_001) as f32 - 10_000.0) / 997.0,
                })
                .collect()
        })
        .collect()
}

/// The feature the client sends: request `i`, row `r`, column `f` (as tests/tests/mirror.rs does).
fn client_feature(i: usize, r: usize, f: usize) -> f32 {
    ((((i * 31 + r * 7 + f * 13) % 97) as f64 - 48.0) / 10.0) as f32
}

fn model(disagree_percent: f64) -> Model {
    Model { name: "demo".into(), version: "1".into(), disagree_percent }
}

#[test]
fn python_model_is_the_rust_model() {
    let mut rows = pseudo_random_rows(600);
    rows.extend((0..200).map(|i| (0..4).map(|f| client_feature(i, i % 5, f)).collect()));
    rows.push(vec![0.0; 4]); // all scores equal: the tie order of the label swap matters
    rows.push(vec![1e30, -1e30, 3.5]);
    let mut flipped_somewhere = false;
    for percent in [0.0, 12.5, 50.0, 100.0] {
        let python = grpc::python_predict(&rows, percent);
        assert_eq!(python.len(), rows.len());
        for (row, answer) in rows.iter().zip(&python) {
            let as_f64: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
            let rust = model(percent).predict(&as_f64);
            let rust_bits: Vec<u64> = rust.iter().map(|p| p.to_bits()).collect();
            let python_bits: Vec<u64> = answer.iter().map(|p| p.to_bits()).collect();
            assert_eq!(python_bits, rust_bits, "row {row:?} at {percent}%: python {answer:?}, rust {rust:?}");
            flipped_somewhere |= rust != model(0.0).predict(&as_f64);
        }
    }
    assert!(flipped_somewhere, "no row was flipped: the swap was never compared");
}

/// The probabilities the servers must answer for `features`, as FP32.
fn expected(features: &[Vec<f32>], disagree_percent: f64) -> Vec<Vec<f32>> {
    features
        .iter()
        .map(|row| {
            let row: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
            model(disagree_percent).predict(&row).iter().map(|&p| p as f32).collect()
        })
        .collect()
}

/// Checks every line of a unary run: the features sent are the client's, the answer is the
/// model's, and ids and answers are unique.
fn assert_answers_are_the_model(truth: &[TruthLine], rpc: Rpc, requests: usize, disagree_percent: f64) {
    assert_eq!(truth.len(), requests, "one truth line per call");
    let mut answers = HashSet::new();
    for (i, line) in truth.iter().enumerate() {
        assert_eq!(line.index, i as u64);
        assert_eq!(line.id, format!("req-{i}"));
        assert_eq!(line.method, rpc.path());
        assert_eq!((line.code, line.status.as_str()), (0, "OK"), "call {i}: {:?}", line.message);
        let features = line.features.as_ref().expect("--with-tensors writes the features");
        let rows = 1 + i % 4;
        let sent: Vec<Vec<f32>> =
            (0..rows).map(|r| (0..4).map(|f| client_feature(i, r, f)).collect()).collect();
        assert_eq!(features, &sent, "call {i}: features");
        assert_eq!(line.rows, Some(rows as u64));
        let probabilities = line.probabilities.as_ref().expect("an OK call has probabilities");
        assert_eq!(probabilities, &expected(features, disagree_percent), "call {i}: probabilities");
        assert!(probabilities.iter().all(|p| p.len() == CLASSES));
        assert!(
            answers.insert(line.response_sha256.clone().expect("a response")),
            "call {i}: answer repeated"
        );
    }
}

/// A server in the pair's server namespace on port 0, and its address as the client dials it.
fn serve(pair: &Pair, kind: grpc::ServerKind, options: &ServerOptions) -> GrpcServer {
    grpc::start_server(kind, &pair.server, &[SocketAddr::new(pair.server_ip(false), 0)], options)
        .expect("start the gRPC server")
}

#[test]
fn oip_server_answers_with_the_model_in_raw_and_typed_contents() {
    if !kernel_tests_allowed("oip_server_answers_with_the_model_in_raw_and_typed_contents") {
        return;
    }
    let pair = Pair::new();
    let raw = serve(&pair, grpc::ServerKind::Oip, &ServerOptions::default());
    let typed_candidate = serve(
        &pair,
        grpc::ServerKind::Oip,
        &ServerOptions {
            version: "2".into(),
            disagree_percent: 30.0,
            typed_output: true,
            ..Default::default()
        },
    );
    for (server, percent) in [(&raw, 0.0), (&typed_candidate, 30.0)] {
        let options = ClientOptions {
            concurrency: 4,
            input: InputEncoding::Mixed,
            with_tensors: true,
            ..ClientOptions::new(Rpc::Infer, server.addrs[0], 40)
        };
        let truth = grpc::run_client(&pair.client, &options, &scratch_file(&format!("oip-{percent}.jsonl")));
        assert_answers_are_the_model(&truth, Rpc::Infer, 40, percent);
        assert!(truth.iter().all(|l| l.channel == 0), "every call on the one channel");
    }
}

#[test]
fn tf_serving_server_answers_with_the_model_in_tensor_content_and_float_val() {
    if !kernel_tests_allowed("tf_serving_server_answers_with_the_model_in_tensor_content_and_float_val") {
        return;
    }
    let pair = Pair::new();
    let content = serve(&pair, grpc::ServerKind::TfServing, &ServerOptions::default());
    let float_val = serve(
        &pair,
        grpc::ServerKind::TfServing,
        &ServerOptions {
            version: "2".into(),
            disagree_percent: 40.0,
            typed_output: true,
            ..Default::default()
        },
    );
    for (server, percent) in [(&content, 0.0), (&float_val, 40.0)] {
        let options = ClientOptions {
            concurrency: 3,
            input: InputEncoding::Mixed,
            with_tensors: true,
            ..ClientOptions::new(Rpc::Predict, server.addrs[0], 30)
        };
        let truth = grpc::run_client(&pair.client, &options, &scratch_file(&format!("tf-{percent}.jsonl")));
        assert_answers_are_the_model(&truth, Rpc::Predict, 30, percent);
    }
}

#[test]
fn error_every_fails_exactly_the_nth_requests_with_their_own_message() {
    if !kernel_tests_allowed("error_every_fails_exactly_the_nth_requests_with_their_own_message") {
        return;
    }
    let pair = Pair::new();
    let failing = ServerOptions { error_every: 4, ..Default::default() };
    for (kind, rpc) in [(grpc::ServerKind::Oip, Rpc::Infer), (grpc::ServerKind::TfServing, Rpc::Predict)] {
        let server = serve(&pair, kind, &failing);
        let options = ClientOptions { concurrency: 2, ..ClientOptions::new(rpc, server.addrs[0], 20) };
        let truth = grpc::run_client(&pair.client, &options, &scratch_file(&format!("errors-{rpc:?}.jsonl")));
        assert_eq!(truth.len(), 20);
        for (i, line) in truth.iter().enumerate() {
            if (i + 1) % 4 == 0 {
                assert_eq!((line.code, line.status.as_str()), (3, "INVALID_ARGUMENT"), "{rpc:?} call {i}");
                let message = line.message.as_deref().expect("an error has a message");
                assert!(message.contains(&format!("req-{i} ")), "{rpc:?} call {i}: {message}");
                assert_eq!(line.response_sha256, None, "an error has no response message");
            } else {
                assert_eq!(line.code, 0, "{rpc:?} call {i}: {:?}", line.message);
                assert!(line.response_sha256.is_some());
            }
        }
    }
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `mirror.test.Msg` as protobuf encodes it (fields in order, defaults left out).
fn echo_msg(id: &str, seq: u64, payload: &[u8], fail: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes_field = |tag: u8, bytes: &[u8], out: &mut Vec<u8>| {
        if !bytes.is_empty() {
            out.push(tag);
            varint(bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }
    };
    bytes_field(0x0a, id.as_bytes(), &mut out);
    if seq != 0 {
        out.push(0x10);
        varint(seq, &mut out);
    }
    bytes_field(0x1a, payload, &mut out);
    if fail {
        out.extend_from_slice(&[0x20, 0x01]);
    }
    out
}

/// The client's chat payload: "STREAM/SEQ:" repeated to `size` bytes.
fn chat_payload(stream: usize, seq: usize, size: usize) -> Vec<u8> {
    format!("{stream}/{seq}:").into_bytes().into_iter().cycle().take(size).collect()
}

#[test]
fn chat_answers_each_message_and_truth_hashes_are_of_the_real_messages() {
    if !kernel_tests_allowed("chat_answers_each_message_and_truth_hashes_are_of_the_real_messages") {
        return;
    }
    let pair = Pair::new();
    let server = serve(&pair, grpc::ServerKind::Oip, &ServerOptions::default());
    let (streams, messages, payload) = (6, 4, 100);
    let options = ClientOptions {
        concurrency: 3,
        messages,
        payload_bytes: payload,
        ..ClientOptions::new(Rpc::Chat, server.addrs[0], streams)
    };
    let truth = grpc::run_client(&pair.client, &options, &scratch_file("chat.jsonl"));
    assert_eq!(truth.len(), streams * messages);
    for line in &truth {
        let (stream, seq) = (line.stream.expect("stream") as usize, line.seq.expect("seq") as usize);
        let id = format!("req-{stream}-{seq}");
        let body = chat_payload(stream, seq, payload);
        assert_eq!(line.id, id);
        assert_eq!(line.method, "/mirror.test.Echo/Chat");
        assert_eq!(line.code, 0, "{id}: {:?}", line.message);
        assert_eq!(
            line.request_sha256,
            sha256_hex(&echo_msg(&id, seq as u64, &body, false)),
            "{id}: request"
        );
        let reversed: Vec<u8> = body.iter().rev().copied().collect();
        let answer = echo_msg(&format!("re:{id}"), seq as u64, &reversed, false);
        assert_eq!(line.response_sha256.as_deref(), Some(sha256_hex(&answer).as_str()), "{id}: answer");
        assert_eq!(line.response_bytes, Some(answer.len() as u64));
    }

    // A stream asked to fail at message 2: messages 0 and 1 are answered, 2 is not, 3 is never sent,
    // and every message carries the stream's INVALID_ARGUMENT.
    let failing = ClientOptions { fail_at: Some(2), ..options.clone() };
    let truth = grpc::run_client(&pair.client, &failing, &scratch_file("chat-fail.jsonl"));
    assert_eq!(truth.len(), streams * 3);
    for line in &truth {
        let seq = line.seq.expect("seq");
        assert_eq!((line.code, line.status.as_str()), (3, "INVALID_ARGUMENT"), "{}", line.id);
        assert_eq!(line.response_sha256.is_some(), seq < 2, "{}: answered only before the failure", line.id);
        if seq == 2 {
            let body = chat_payload(line.stream.expect("stream") as usize, 2, payload);
            assert_eq!(line.request_sha256, sha256_hex(&echo_msg(&line.id, 2, &body, true)));
            assert_eq!(line.message.as_deref(), Some(format!("message {} asked to fail", line.id).as_str()));
        }
    }
}

/// Established TCP connections to `port` in `ns` (`ss`).
fn established(ns: &Netns, port: u16) -> usize {
    let out = ns
        .command("ss")
        .args(["-Htn", "state", "established", "sport", "=", &format!(":{port}")])
        .output()
        .expect("run ss");
    assert!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn a_paused_client_keeps_its_one_connection_open_and_goes_on_when_told() {
    if !kernel_tests_allowed("a_paused_client_keeps_its_one_connection_open_and_goes_on_when_told") {
        return;
    }
    let pair = Pair::new();
    let server = serve(&pair, grpc::ServerKind::Oip, &ServerOptions::default());
    let port = server.addrs[0].port();
    for fresh in [false, true] {
        let truth_file = scratch_file(&format!("pause-{fresh}.jsonl"));
        let options = ClientOptions {
            pause_after: Some(5),
            fresh_channel: fresh,
            concurrency: 2,
            ..ClientOptions::new(Rpc::Infer, server.addrs[0], 12)
        };
        let mut client = grpc::spawn_client(&pair.client, &options, &truth_file);
        assert_eq!(client.wait_paused(Duration::from_secs(60)), 5);
        assert_eq!(grpc::read_truth(&truth_file).len(), 5, "five calls done before the pause");
        std::thread::sleep(Duration::from_millis(500));
        let open = established(&pair.server, port);
        // One long-lived connection stays open while idle; fresh channels are each closed.
        assert_eq!(open, if fresh { 0 } else { 1 }, "fresh channel: {fresh}");
        assert_eq!(grpc::read_truth(&truth_file).len(), 5, "nothing sent while paused");
        client.resume();
        let truth = client.finish(Duration::from_secs(60));
        assert_eq!(truth.len(), 12);
        assert!(truth.iter().all(|l| l.code == 0));
        let channels: HashSet<u64> = truth.iter().map(|l| l.channel).collect();
        assert_eq!(channels.len(), if fresh { 12 } else { 1 });
    }
}

#[test]
fn concurrent_calls_interleave_on_one_connection() {
    if !kernel_tests_allowed("concurrent_calls_interleave_on_one_connection") {
        return;
    }
    let pair = Pair::new();
    let server = serve(&pair, grpc::ServerKind::Oip, &ServerOptions { delay_ms: 100, ..Default::default() });
    let options = ClientOptions { concurrency: 16, ..ClientOptions::new(Rpc::Infer, server.addrs[0], 32) };
    let started = Instant::now();
    let truth = grpc::run_client(&pair.client, &options, &scratch_file("interleave.jsonl"));
    let elapsed = started.elapsed();
    assert_eq!(truth.len(), 32);
    assert!(truth.iter().all(|l| l.code == 0 && l.channel == 0));
    // One at a time, 32 calls of 100 ms take 3.2 s; sixteen at once, about 0.2 s plus start-up.
    let first = truth.iter().map(|l| l.sent_unix_ns).min().expect("calls");
    let last_start = truth.iter().map(|l| l.sent_unix_ns).max().expect("calls");
    assert!(
        Duration::from_nanos(last_start - first) < Duration::from_millis(1600),
        "calls were not in flight together (last started {:?} after the first; run took {elapsed:?})",
        Duration::from_nanos(last_start - first)
    );
}

/// Bytes sent and received on `iface` in `ns`.
fn iface_bytes(ns: &Netns, iface: &str) -> (u64, u64) {
    let read = |counter: &str| -> u64 {
        let out = ns
            .command("cat")
            .arg(format!("/sys/class/net/{iface}/statistics/{counter}"))
            .output()
            .expect("read interface counters");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a byte count")
    };
    (read("tx_bytes"), read("rx_bytes"))
}

#[test]
fn gzip_compresses_on_the_wire_and_leaves_the_messages_alone() {
    if !kernel_tests_allowed("gzip_compresses_on_the_wire_and_leaves_the_messages_alone") {
        return;
    }
    let pair = Pair::new();
    let plain = serve(&pair, grpc::ServerKind::Oip, &ServerOptions::default());
    let gzip = serve(
        &pair,
        grpc::ServerKind::Oip,
        &ServerOptions { compression: Compression::Gzip, ..Default::default() },
    );
    let rows = 1 << 18; // 4 MiB of features, 3 MiB of probabilities per call
    let mut runs = Vec::new();
    for (server, compression) in [(&plain, Compression::None), (&gzip, Compression::Gzip)] {
        let options = ClientOptions {
            rows: Some(rows),
            compression,
            ..ClientOptions::new(Rpc::Infer, server.addrs[0], 2)
        };
        let before = iface_bytes(&pair.client, &pair.client_if);
        let truth =
            grpc::run_client(&pair.client, &options, &scratch_file(&format!("gzip-{compression:?}.jsonl")));
        let after = iface_bytes(&pair.client, &pair.client_if);
        assert!(truth.iter().all(|l| l.code == 0), "{compression:?}: {truth:?}");
        runs.push((truth, after.0 - before.0, after.1 - before.1));
    }
    let (plain_truth, plain_sent, plain_received) = &runs[0];
    let (gzip_truth, gzip_sent, gzip_received) = &runs[1];
    let request_bytes: u64 = plain_truth.iter().map(|l| l.request_bytes).sum();
    let response_bytes: u64 = plain_truth.iter().filter_map(|l| l.response_bytes).sum();
    assert!(*plain_sent > request_bytes && *plain_received > response_bytes, "uncompressed: all bytes cross");
    assert!(*gzip_sent < request_bytes / 4, "gzip requests: {gzip_sent} bytes sent for {request_bytes}");
    assert!(
        *gzip_received < response_bytes / 4,
        "gzip responses: {gzip_received} bytes for {response_bytes}"
    );
    // The truth is of the messages, not of their encoding: both runs exchanged the same ones.
    for (a, b) in plain_truth.iter().zip(gzip_truth) {
        assert_eq!((&a.request_sha256, &a.response_sha256), (&b.request_sha256, &b.response_sha256));
    }
}

#[test]
fn messages_of_64_mib_cross_both_ways() {
    if !kernel_tests_allowed("messages_of_64_mib_cross_both_ways") {
        return;
    }
    let pair = Pair::new();
    let server = serve(&pair, grpc::ServerKind::Oip, &ServerOptions::default());
    let rows = 64 << 20 >> 4; // 64 MiB of 4-feature FP32 rows
    let options = ClientOptions { rows: Some(rows), ..ClientOptions::new(Rpc::Infer, server.addrs[0], 1) };
    let truth = grpc::run_client(&pair.client, &options, &scratch_file("64mib.jsonl"));
    let line = &truth[0];
    assert_eq!(line.code, 0, "{:?}", line.message);
    assert!(line.request_bytes > 64 << 20, "request of {} bytes", line.request_bytes);
    let response = line.response_bytes.expect("a response");
    assert!(response > (rows * CLASSES * 4) as u64, "response of {response} bytes");
}

#[test]
fn health_and_metadata_answer_for_the_served_model_only() {
    if !kernel_tests_allowed("health_and_metadata_answer_for_the_served_model_only") {
        return;
    }
    let pair = Pair::new();
    let server =
        serve(&pair, grpc::ServerKind::Oip, &ServerOptions { version: "7".into(), ..Default::default() });
    let served = grpc::health(&pair.client, server.addrs[0], "demo", "7");
    assert_eq!((served["live"].as_bool(), served["ready"].as_bool()), (Some(true), Some(true)));
    assert_eq!(served["model_ready"], true);
    assert_eq!(served["metadata"]["name"], "demo");
    assert_eq!(served["metadata"]["versions"], serde_json::json!(["7"]));
    assert_eq!(served["metadata"]["inputs"][0]["name"], "features");
    assert_eq!(served["metadata"]["outputs"][0]["shape"], serde_json::json!(["-1", "3"]));
    let other = grpc::health(&pair.client, server.addrs[0], "other", "");
    assert_eq!(other["model_ready"], false);
    assert_eq!(other["metadata_error"]["status"], "NOT_FOUND");
}

#[test]
fn curl_speaks_grpc_over_h2c_to_the_python_server() {
    if !kernel_tests_allowed("curl_speaks_grpc_over_h2c_to_the_python_server") {
        return;
    }
    let ns = Netns::new("grpc");
    let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let server = grpc::start_oip_server(&ns, &[loopback], &ServerOptions::default());
    let url = |method: &str| format!("http://{}/inference.GRPCInferenceService/{method}", server.addrs[0]);
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];

    let live = curl_h2c(&ns, &url("ServerLive"), &headers, &grpc_frame(&[]));
    assert_eq!(live.status, 200);
    assert_eq!(live.trailer("grpc-status"), Some("0"));
    assert_eq!(
        grpc_unframe(&live.body),
        Ok(vec![(false, vec![0x08, 0x01])]),
        "ServerLiveResponse{{live: true}}"
    );

    // ModelReadyRequest{name: "demo"} is 0a 04 "demo"; "nope" is not served.
    for (name, answer) in [("demo", vec![0x08, 0x01]), ("nope", vec![])] {
        let request = [&[0x0a, 0x04][..], name.as_bytes()].concat();
        let ready = curl_h2c(&ns, &url("ModelReady"), &headers, &grpc_frame(&request));
        assert_eq!(ready.trailer("grpc-status"), Some("0"), "{name}");
        assert_eq!(grpc_unframe(&ready.body), Ok(vec![(false, answer)]), "{name}");
    }

    // An error before any message is a Trailers-Only response: grpc-status in the only header block.
    let request = [&[0x0a, 0x04][..], b"nope"].concat();
    let missing = curl_h2c(&ns, &url("ModelMetadata"), &headers, &grpc_frame(&request));
    let status = missing
        .trailer("grpc-status")
        .or_else(|| missing.headers.iter().find(|(n, _)| n == "grpc-status").map(|(_, v)| v.as_str()));
    assert_eq!(status, Some("5"), "NOT_FOUND; headers {:?} trailers {:?}", missing.headers, missing.trailers);
    assert!(missing.body.is_empty());
}
