//! HTTP exchanges rebuilt from the real kernel capture, checked against what real clients
//! (curl, Python's http.client, wrk) recorded themselves.
//!
//! Every request asks the model server for a response size no other request uses, so the SHA-256
//! of a response identifies the request it answers: a mispaired exchange cannot go unnoticed.
use std::{collections::HashMap, path::Path, process::Stdio, time::Duration};

use mirror_tests::{
    ChildGuard, daemon::Daemon, gate::kernel_tests_allowed, model_server, netns::Pair, read_records,
    scratch_file, sha256_hex,
};
use serde_json::Value;

const PORT: u16 = 8080;

/// A keep-alive client: `conns` connections (or, with a duration, new connections until it has
/// passed) of `per_conn` POSTs each, every other one with a chunked body. Writes what it sent and
/// got as JSON.
const PYTHON_CLIENT: &str = r#"
import hashlib, http.client, json, sys, time
host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conns, per_conn, duration, first = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
records, n, c, start = [], first, 0, time.time()
def pieces(data, size):
    for i in range(0, len(data), size):
        yield data[i:i + size]
while (duration == 0 and c < conns) or (duration > 0 and time.time() - start < duration):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    for _ in range(per_conn):
        n += 1
        size = 1000 + n
        body = bytes((n * 7 + j) % 251 for j in range((n * 37) % 5000))
        path = "/v2/models/demo/infer?size=%d" % size
        if n % 2:
            conn.request("POST", path, body=pieces(body, 700), encode_chunked=True,
                         headers={"Content-Type": "application/octet-stream"})
        else:
            conn.request("POST", path, body=body)
        r = conn.getresponse()
        data = r.read()
        records.append({"size": size, "status": r.status, "chunked": bool(n % 2),
                        "request_sha256": hashlib.sha256(body).hexdigest(), "request_bytes": len(body),
                        "response_sha256": hashlib.sha256(data).hexdigest(), "ended": time.time()})
    conn.close()
    c += 1
json.dump(records, open(out, "w"))
"#;

fn python_client(pair: &Pair, out: &Path, conns: u32, per_conn: u32, duration_s: f64) -> std::process::Child {
    pair.client
        .command("python3")
        .args(["-c", PYTHON_CLIENT, &pair.server_v4.to_string(), &PORT.to_string()])
        .arg(out)
        .args([conns.to_string(), per_conn.to_string(), duration_s.to_string(), "0".into()])
        .spawn()
        .expect("run python3")
}

fn start_monitor(pair: &Pair, record: &Path) -> Daemon {
    start_monitor_with(pair, record, &[])
}

/// [`start_monitor`] with more options.
fn start_monitor_with(pair: &Pair, record: &Path, more: &[&str]) -> Daemon {
    let mut args = vec!["run", "-i", &pair.server_if, "-p", "8080", "--record", record.to_str().unwrap()];
    args.extend(["--summary-interval", "1s"]);
    args.extend(more);
    Daemon::start(&pair.server, &args)
}

/// Every record is a request the client made, paired with the response that request got.
fn assert_paired(records: &[Value], client: &[Value]) -> usize {
    let expected: HashMap<&str, &Value> =
        client.iter().map(|c| (c["request_sha256"].as_str().expect("sha"), c)).collect();
    for r in records {
        let request = r["request"]["sha256"].as_str().expect("request sha");
        let c = expected
            .get(request)
            .unwrap_or_else(|| panic!("record for a request the client never made: {r}"));
        assert_eq!(r["production"]["sha256"], c["response_sha256"], "MISPAIRED exchange: {r}");
        assert_eq!(r["production"]["status"], c["status"]);
        assert_eq!(r["request"]["bytes"], c["request_bytes"], "de-chunked request body length");
        assert_eq!(r["method"], "POST");
        assert_eq!(r["path"], "/v2/models/demo/infer");
        assert!(r["production"]["latency_ms"].as_f64().expect("latency") >= 0.0);
    }
    records.len()
}

#[test]
fn python_keepalive_chunked_exchanges_are_all_recorded_and_paired() {
    if !kernel_tests_allowed("python_keepalive_chunked_exchanges_are_all_recorded_and_paired") {
        return;
    }
    let pair = Pair::new();
    let _server = model_server::spawn(&pair, &[PORT]);
    let record = scratch_file("python.jsonl");
    let daemon = start_monitor(&pair, &record);
    let out = scratch_file("python-client.json");
    let status = python_client(&pair, &out, 4, 25, 0.0).wait().expect("python client");
    assert!(status.success(), "python client failed");
    std::thread::sleep(Duration::from_millis(500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);

    let client: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("client output")).unwrap();
    assert_eq!(client.len(), 100);
    assert!(client.iter().any(|c| c["chunked"] == true));
    let records = read_records(&record);
    assert_eq!(assert_paired(&records, &client), 100, "every exchange exactly once");
    let mut seen: Vec<&str> = records.iter().map(|r| r["request"]["sha256"].as_str().unwrap()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 100, "no exchange twice");
    assert!(finished.final_drops().is_empty(), "nothing dropped: {}", finished.stderr);
}

#[test]
fn curl_exchanges_including_chunked_upload_and_100_continue() {
    if !kernel_tests_allowed("curl_exchanges_including_chunked_upload_and_100_continue") {
        return;
    }
    let pair = Pair::new();
    let _server = model_server::spawn(&pair, &[PORT]);
    let record = scratch_file("curl.jsonl");
    let daemon = start_monitor(&pair, &record);
    let upload = scratch_file("upload.bin");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&upload, &big).unwrap();
    let base = format!("http://{}:{PORT}", pair.server_v4);
    let runs: Vec<Vec<String>> = vec![
        vec![format!("{base}/health?size=2")],
        // Two requests on one keep-alive connection.
        vec![format!("{base}/a?size=3001"), format!("{base}/b?size=3002")],
        // Chunked upload.
        vec![
            "-H".into(),
            "Transfer-Encoding: chunked".into(),
            "--data-binary".into(),
            format!("@{}", upload.display()),
            format!("{base}/chunked?size=3003"),
        ],
        // A large body: curl asks `Expect: 100-continue` and the server answers 100 first.
        vec![
            "-H".into(),
            "Expect: 100-continue".into(),
            "--data-binary".into(),
            format!("@{}", upload.display()),
            format!("{base}/expect?size=3004"),
        ],
        // HEAD: the response carries Content-Length but no body.
        vec!["-I".into(), format!("{base}/head?size=3005")],
    ];
    for args in &runs {
        let mut cmd = pair.client.command("curl");
        cmd.args(["-sS", "--fail"]);
        for _ in args.iter().filter(|a| a.starts_with("http")) {
            cmd.args(["-o", "/dev/null"]);
        }
        let status = cmd.args(args).stdout(Stdio::null()).status().expect("run curl");
        assert!(status.success(), "curl {args:?}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let records = read_records(&record);
    let by_path: HashMap<&str, &Value> = records.iter().map(|r| (r["path"].as_str().unwrap(), r)).collect();
    assert_eq!(records.len(), 6, "{records:#?}");
    let body = |size: usize| sha256_hex(&model_server::body_of(size));
    for (path, size) in [("/health", 2), ("/a", 3001), ("/b", 3002), ("/chunked", 3003), ("/expect", 3004)] {
        let r = by_path.get(path).unwrap_or_else(|| panic!("no record for {path}: {records:#?}"));
        assert_eq!(r["production"]["status"], 200, "{r}");
        assert_eq!(r["production"]["sha256"], body(size), "{path} paired with the wrong response");
    }
    for path in ["/chunked", "/expect"] {
        assert_eq!(
            by_path[path]["request"]["bytes"],
            big.len(),
            "{path}: request body de-chunked and complete"
        );
        assert_eq!(by_path[path]["request"]["sha256"], sha256_hex(&big));
        assert_eq!(by_path[path]["method"], "POST");
    }
    assert_eq!(by_path["/head"]["method"], "HEAD");
    assert_eq!(by_path["/head"]["production"]["bytes"], 0, "HEAD responses have no body");
    assert!(finished.final_drops().is_empty(), "{}", finished.stderr);
}

#[test]
fn wrk_load_is_recorded_completely() {
    if !kernel_tests_allowed("wrk_load_is_recorded_completely") {
        return;
    }
    let pair = Pair::new();
    let _server = model_server::spawn(&pair, &[PORT]);
    let record = scratch_file("wrk.jsonl");
    let daemon = start_monitor(&pair, &record);
    let out = pair
        .client
        .command("wrk")
        .args(["-t1", "-c4", "-d2s", &format!("http://{}:{PORT}/load?size=512", pair.server_v4)])
        .output()
        .expect("run wrk");
    let report = String::from_utf8_lossy(&out.stdout);
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse().expect("count")))
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{report}"));
    assert!(requests > 1000, "wrk made only {requests} requests:\n{report}");
    std::thread::sleep(Duration::from_millis(1000));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let records = read_records(&record);
    let drops = finished.final_drops();
    // wrk counts the responses it read; at its deadline it closes its 4 connections, possibly
    // after a response left the server but before wrk read it. Those appear here, not in wrk.
    let n = records.len() as u64;
    assert!(n >= requests && n <= requests + 4, "{n} records for {requests} wrk requests; drops {drops:?}");
    assert!(records.iter().all(|r| r["production"]["status"] == 200 && r["production"]["bytes"] == 512));
    assert!(
        drops.keys().all(|k| k == "unanswered_request" || k == "truncated_response"),
        "only wrk's closing connections may lose exchanges: {drops:?}"
    );
}

/// The daemon starts while keep-alive connections are already running: their exchanges are never
/// guessed at (counted as mid-stream), later ones are recorded, and nothing is mispaired.
#[test]
fn starting_mid_stream_never_mispairs() {
    if !kernel_tests_allowed("starting_mid_stream_never_mispairs") {
        return;
    }
    let pair = Pair::new();
    let _server = model_server::spawn(&pair, &[PORT]);
    let out = scratch_file("midstream-client.json");
    let client = ChildGuard(python_client(&pair, &out, 0, 40, 4.0));
    std::thread::sleep(Duration::from_millis(1000));
    let record = scratch_file("midstream.jsonl");
    let daemon = start_monitor(&pair, &record);
    std::thread::sleep(Duration::from_millis(2000));
    let finished = daemon.stop();
    let mut client = client;
    let status = client.0.wait().expect("python client");
    assert!(status.success(), "python client failed");
    assert!(finished.success, "{}", finished.stderr);

    let client: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("client output")).unwrap();
    let records = read_records(&record);
    let paired = assert_paired(&records, &client);
    assert!(paired >= 40, "later exchanges are recorded: only {paired}");
    let drops = finished.final_drops();
    assert!(drops.get("mid_stream_connections").copied().unwrap_or(0) >= 1, "{drops:?}");
}

/// With `--resync-mid-stream`, a keep-alive connection already open when the daemon starts is
/// picked up at a request: from then on its exchanges (chunked uploads among them) are recorded,
/// each with its own response.
#[test]
fn resync_picks_up_an_open_keep_alive_connection() {
    if !kernel_tests_allowed("resync_picks_up_an_open_keep_alive_connection") {
        return;
    }
    let pair = Pair::new();
    let _server = model_server::spawn(&pair, &[PORT]);
    let out = scratch_file("resync-client.json");
    // One connection, many requests: it is open long before the daemon starts.
    let mut client = ChildGuard(python_client(&pair, &out, 1, 3000, 0.0));
    std::thread::sleep(Duration::from_millis(700));
    let record = scratch_file("resync.jsonl");
    let daemon = start_monitor_with(&pair, &record, &["--resync-mid-stream"]);
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    let status = client.0.wait().expect("python client");
    assert!(status.success(), "python client failed");
    std::thread::sleep(Duration::from_millis(500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);

    let client: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("client output")).unwrap();
    let after = client.iter().filter(|c| c["ended"].as_f64().expect("time") > started).count();
    assert!(after >= 100, "the client finished too early to test anything: {after} after the start");
    let records = read_records(&record);
    let paired = assert_paired(&records, &client);
    let drops = finished.final_drops();
    eprintln!("recorded {paired} of the {after} exchanges completed after the daemon started");
    // "capturing" is logged just before `started` is read: a request or two may straddle it.
    assert!(
        paired + 3 >= after,
        "{paired} recorded of {after} completed after the daemon started: {drops:?}"
    );
    assert_eq!(drops.get("mid_stream_connections").copied(), Some(1), "{drops:?}");
}
