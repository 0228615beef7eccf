//! Plain HTTP/2 (not gRPC) mirrored end to end, with HTTP/2 stacks the project did not write on
//! every side: curl (libcurl with nghttp2) and nghttp as clients; hyper, nghttpx and nghttpd as
//! servers. The daemon captures production's interface, rebuilds each stream, replays it to the
//! shadow in the protocol it came in, and compares. The truth comes from what the clients received
//! (written to files) and from what each side must answer: the Rust model for inference bodies, the
//! files served for the file servers.
//!
//! - Prior knowledge: one connection carrying many multiplexed POSTs with unique bodies, so every
//!   stream must be paired with exactly the answer its own body got.
//! - `Upgrade: h2c`: the HTTP/1.1 request that asks for it is answered on HTTP/2 stream 1, and the
//!   connection goes on in HTTP/2. nghttpd speaks HTTP/2 with prior knowledge only (it answers an
//!   upgrade request with a SETTINGS frame, not a 101), so production is nghttpx, nghttp2's proxy,
//!   which does accept the upgrade, in front of nghttpd serving the files; and, for inference
//!   bodies, in front of the model server, where the upgrade request is a POST with its body.
//! - A declined upgrade (the model server never upgrades): the connection goes on in HTTP/1.1.
use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use mirror_tests::{
    ChildGuard,
    daemon::Daemon,
    gate::kernel_tests_allowed,
    model_server::{self, Model, ServerOptions, infer_request},
    netns::{Netns, Trio},
    read_records, scratch_file, sha256_hex,
};
use serde_json::Value;

const PORT: u16 = 8080;
const PATH: &str = "/v2/models/demo/infer";

/// Fails with what to do when a tool of the Debian packages `cargo xtask setup` installs is missing.
fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file());
    assert!(found, "`{tool}` is missing: install Debian's {package} (`cargo xtask setup` does)");
}

fn model_server(ns: &Netns, addr: Ipv4Addr, version: &str, disagree: f64, delay_ms: u64) -> ChildGuard {
    let options = ServerOptions { version: version.into(), disagree_percent: disagree, delay_ms };
    model_server::start_test_build(ns, &[SocketAddr::from((addr, PORT))], &options)
}

/// The models the servers run, to compute what each side must answer.
fn model(version: &str, disagree_percent: f64) -> Model {
    Model { name: "demo".into(), version: version.into(), disagree_percent }
}

/// Deterministic request bodies: 1–4 rows of 4 features each, unique ids (as in mirror.rs).
fn bodies(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let rows: Vec<Vec<f64>> = (0..1 + i % 4)
                .map(|r| (0..4).map(|f| (((i * 31 + r * 7 + f * 13) % 97) as f64 - 48.0) / 10.0).collect())
                .collect();
            infer_request(&format!("req-{i}"), &rows)
        })
        .collect()
}

fn outputs(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).expect("model answer is JSON");
    v["outputs"].clone()
}

/// The daemon on production's interface, port 8080, recording every comparison.
fn start_daemon(trio: &Trio, record: &Path, shadows: &[String]) -> Daemon {
    let mut args = vec!["run", "-i", &trio.production_if, "-p", "8080"];
    for shadow in shadows {
        args.extend(["--shadow", shadow]);
    }
    args.extend([
        "--production-model",
        "model-v1@1",
        "--record",
        record.to_str().unwrap(),
        "--summary-interval",
        "1s",
        "--metrics-addr",
        "off",
    ]);
    Daemon::start(&trio.production, &args)
}

/// The `drops` of the final summary, as name → value.
fn final_drops(stderr: &str) -> HashMap<String, u64> {
    let line = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "final summary")
        .unwrap_or_else(|| panic!("no final summary in:\n{stderr}"));
    line["drops"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// Checks the final summary's counts: `exchanges` rebuilt, and for `model_id` over all routes
/// the comparisons made, the mismatches among them and the requests not compared.
fn assert_summary_counts(stderr: &str, exchanges: usize, model_id: &str, counts: [usize; 3]) {
    let events: Vec<Value> = stderr.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    let last = events.iter().rfind(|v| v["message"] == "final summary").expect("a final summary");
    assert_eq!(last["exchanges"], exchanges, "exchanges rebuilt: {last}");
    let shadow = events
        .iter()
        .rfind(|v| v["message"] == "shadow summary" && v["model_id"] == model_id && v["route"] == "all")
        .unwrap_or_else(|| panic!("no summary of {model_id}"));
    let [comparisons, mismatches, not_compared] = counts;
    assert_eq!(shadow["comparisons"], comparisons, "{shadow}");
    assert_eq!(shadow["mismatches"], mismatches, "{shadow}");
    assert_eq!(shadow["not_compared"], not_compared, "{shadow}");
}

/// A header's value in a recorded `[name, value]` list (names compared without case).
fn header<'a>(side: &'a Value, name: &str) -> Option<&'a str> {
    side["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|h| h[1].as_str())
}

/// A scratch directory of its own, empty.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch_file(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs a client to its end in `ns`; panics with its output if it fails.
fn run_client(ns: &Netns, program: &str, args: &[String], cwd: &Path) -> std::process::Output {
    let out = ns
        .command(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A curl config file of POSTs, one transfer per body, each answer written to `out-N.json`.
/// `first` and `rest` are the HTTP version options of the first transfer and of the others.
fn curl_config(dir: &Path, server: SocketAddr, requests: &[Vec<u8>], first: &str, rest: &str) -> PathBuf {
    let mut config = String::new();
    for (i, body) in requests.iter().enumerate() {
        std::fs::write(dir.join(format!("body-{i}.json")), body).expect("write body");
        if i > 0 {
            config.push_str("next\n");
        }
        let version = if i == 0 { first } else { rest };
        config.push_str(&format!(
            "{version}\nurl = \"http://{server}{PATH}\"\nheader = \"content-type: application/json\"\n\
             data-binary = \"@body-{i}.json\"\noutput = \"out-{i}.json\"\n"
        ));
    }
    let path = dir.join("curl.config");
    std::fs::write(&path, config).expect("write curl config");
    path
}

/// What curl wrote for each request, by index.
fn curl_answers(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            std::fs::read(dir.join(format!("out-{i}.json")))
                .unwrap_or_else(|e| panic!("curl wrote no answer for request {i}: {e}"))
        })
        .collect()
}

/// What an OIP comparison must say for each request body, from both models' answers.
struct InferTruth {
    /// SHA-256 of the request body → its index.
    by_request: HashMap<String, usize>,
    production: Vec<Vec<u8>>,
    shadow: Vec<Vec<u8>>,
    verdicts: Vec<&'static str>,
}

impl InferTruth {
    fn new(requests: &[Vec<u8>], v1: &Model, v2: &Model) -> Self {
        let answer = |m: &Model, body: &[u8]| m.infer(body).expect("a valid body").to_string().into_bytes();
        let production: Vec<Vec<u8>> = requests.iter().map(|b| answer(v1, b)).collect();
        let shadow: Vec<Vec<u8>> = requests.iter().map(|b| answer(v2, b)).collect();
        let verdicts = production
            .iter()
            .zip(&shadow)
            .map(|(p, s)| if outputs(p) == outputs(s) { "match" } else { "mismatch" })
            .collect();
        let by_request = requests.iter().enumerate().map(|(i, b)| (sha256_hex(b), i)).collect();
        Self { by_request, production, shadow, verdicts }
    }

    /// Checks one record against the truth and what the client received; returns the request's
    /// index.
    fn check(&self, r: &Value, received: &[Vec<u8>]) -> usize {
        let request = r["request"]["sha256"].as_str().expect("request sha256");
        let i = *self.by_request.get(request).unwrap_or_else(|| panic!("a request nobody sent: {r}"));
        assert_eq!(received[i], self.production[i], "the client got v1's answer to request {i}");
        assert_eq!(
            r["production"]["sha256"].as_str(),
            Some(sha256_hex(&received[i]).as_str()),
            "request {i} paired with the answer the client got for it: {r}"
        );
        assert_eq!(r["production"]["status"], 200, "{r}");
        assert_eq!(
            r["shadow"]["sha256"].as_str(),
            Some(sha256_hex(&self.shadow[i]).as_str()),
            "request {i}: v2's own answer: {r}"
        );
        assert_eq!(r["verdict"], self.verdicts[i], "request {i}: {r}");
        assert_eq!(r["protocol"], "oip", "{r}");
        if self.verdicts[i] == "mismatch" {
            assert!(r["metrics"]["label_flips"].as_u64() >= Some(1), "a mismatch is a label flip: {r}");
        }
        i
    }

    fn mismatches(&self) -> usize {
        self.verdicts.iter().filter(|v| **v == "mismatch").count()
    }
}

/// Seconds since the epoch of a record's `ts` (`2026-11-27T12:58:47.159079Z`).
fn epoch_seconds(ts: &str) -> f64 {
    let field = |range: std::ops::Range<usize>| -> i64 {
        ts.get(range).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad ts {ts}"))
    };
    let (y, m, d) = (field(0..4), field(5..7), field(8..10));
    // Days from the civil date (proleptic Gregorian), as in H. Hinnant's `days_from_civil`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let seconds: f64 = ts.get(17..ts.len() - 1).and_then(|s| s.parse().ok()).expect("seconds");
    (days * 86_400 + field(11..13) * 3600 + field(14..16) * 60) as f64 + seconds
}

/// The most exchanges in production at once, from each record's request start and latency.
fn most_in_flight(records: &[&Value]) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for r in records {
        let start = epoch_seconds(r["ts"].as_str().expect("ts"));
        let latency = r["production"]["latency_ms"].as_f64().expect("latency") / 1000.0;
        edges.push((start, 1));
        edges.push((start + latency, -1));
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// curl with prior knowledge, many POSTs multiplexed on one connection (8 in flight): every
/// stream paired with its own answer, verdicts equal to the models' truth, nothing lost.
#[test]
fn curl_prior_knowledge_streams_are_paired_exactly_and_verdicts_equal_the_truth() {
    if !kernel_tests_allowed("curl_prior_knowledge_streams_are_paired_exactly_and_verdicts_equal_the_truth") {
        return;
    }
    require("curl", "curl");
    let trio = Trio::new();
    // Production takes 5 ms per answer, so streams are in flight together.
    let _v1 = model_server(&trio.production, trio.production_addr, "1", 0.0, 5);
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2", 10.0, 1);
    let requests = bodies(200);
    let truth = InferTruth::new(&requests, &model("1", 0.0), &model("2", 10.0));
    assert!((10..=150).contains(&truth.mismatches()), "v2 flips a share: {}", truth.mismatches());

    let record = scratch_file("h2-curl.jsonl");
    // The shadow runs the same server as production: HTTP/2 requests go to its port 8080 in h2c.
    let daemon = start_daemon(&trio, &record, &[format!("model-v2@2={}", trio.shadow_addr)]);
    let dir = scratch_dir("h2-curl");
    let production = SocketAddr::from((trio.production_addr, PORT));
    // curl 7.88's --http2-prior-knowledge cannot reuse its own connection ("Error in the HTTP2
    // framing layer" on every later transfer, curl issue 10634, fixed in 8.0): the first transfer
    // opens the connection with prior knowledge and the others, asking for HTTP/2, join it as
    // streams. --parallel waits for it to be known to multiplex rather than opening more.
    let config = curl_config(&dir, production, &requests, "http2-prior-knowledge", "http2");
    let args = ["--silent", "--show-error", "--parallel", "--parallel-max", "8", "--config"];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(config.display().to_string());
    run_client(&trio.client, "curl", &args, &dir);
    let received = curl_answers(&dir, requests.len());
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);

    let records = read_records(&record);
    let drops = final_drops(&finished.stderr);
    assert_eq!(records.len(), requests.len(), "one record per request: {drops:?}");
    let mut seen = HashSet::new();
    let mut streams = HashSet::new();
    let clients: HashSet<&str> = records.iter().filter_map(|r| r["connection"]["client"].as_str()).collect();
    assert_eq!(clients.len(), 1, "one connection: {clients:?}");
    for r in &records {
        assert_eq!(r["http_version"], "HTTP/2", "{r}");
        assert_eq!(r["method"], "POST");
        assert_eq!(r["path"], PATH);
        assert!(r["grpc"].is_null(), "not gRPC: {r}");
        let stream = r["stream_id"].as_u64().expect("a stream id");
        assert_eq!(stream % 2, 1, "client streams are odd: {r}");
        assert!(streams.insert(stream), "stream {stream} recorded twice");
        assert_eq!(r["shadow"]["model_id"], "model-v2");
        assert!(
            r["shadow"]["endpoint"].as_str().is_some_and(|e| e.contains(&trio.shadow_addr.to_string())),
            "{r}"
        );
        let i = truth.check(r, &received);
        assert!(seen.insert(i), "request {i} recorded twice");
    }
    let expected_streams: HashSet<u64> = (0..requests.len() as u64).map(|k| 2 * k + 1).collect();
    assert_eq!(streams, expected_streams, "curl's streams 1, 3, 5, ... one per transfer");
    let in_flight = most_in_flight(&records.iter().collect::<Vec<_>>());
    assert!(in_flight >= 2, "streams were multiplexed: at most {in_flight} in flight at once");
    assert!(drops.is_empty(), "nothing lost: {drops:?}");
    let n = requests.len();
    assert_summary_counts(&finished.stderr, n, "model-v2", [n, truth.mismatches(), 0]);
}

/// The files served in the upgrade test: varied sizes (empty, within one DATA frame, on and
/// across the 16 KiB frame size and the 64 KiB flow-control window, 1 MiB), each with contents
/// of its own.
const FILE_SIZES: [usize; 14] =
    [0, 1, 37, 1000, 4096, 16_383, 16_384, 16_385, 65_535, 65_536, 70_000, 131_072, 1 << 20, 3000];

/// Deterministic letters, seeded by the file's index.
fn file_contents(index: usize, size: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64).wrapping_mul(0x0100_0000_01b3);
    (0..size)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            b'a' + ((state >> 33) % 26) as u8
        })
        .collect()
}

/// One served file: its path, production's contents and the shadow's.
struct ServedFile {
    path: String,
    production: Vec<u8>,
    shadow: Vec<u8>,
}

/// Every third file differs on the shadow: a letter changed, or a byte more.
fn served_files() -> Vec<ServedFile> {
    FILE_SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let production = file_contents(i, size);
            let mut shadow = production.clone();
            if i % 3 == 1 {
                match shadow.get_mut(size / 2) {
                    Some(letter) if i % 2 == 1 => *letter ^= 0x20,
                    _ => shadow.push(b'\n'),
                }
            }
            ServedFile { path: format!("/f{i:02}.txt"), production, shadow }
        })
        .collect()
}

fn write_docs(dir: &Path, files: &[ServedFile], shadow: bool) {
    for f in files {
        let contents = if shadow { &f.shadow } else { &f.production };
        std::fs::write(dir.join(f.path.trim_start_matches('/')), contents).expect("write a served file");
    }
}

/// Waits until something accepts connections on `addr` in `ns`.
fn wait_listening(ns: &Netns, addr: SocketAddr, what: &str) {
    let ok = ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    assert!(ok, "{what} does not listen on {addr}");
}

/// A program in `ns`, its stderr kept in a scratch file.
fn spawn_logged(ns: &Netns, program: &str, args: &[String], log: &str) -> ChildGuard {
    let log = std::fs::File::create(scratch_file(log)).expect("log file");
    ChildGuard(
        ns.command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("run {program}: {e}")),
    )
}

/// nghttpd serving `docs` over h2c (prior knowledge only) on `addr`.
fn nghttpd(ns: &Netns, addr: SocketAddr, docs: &Path, log: &str) -> ChildGuard {
    let (ip, docs, port) = (addr.ip().to_string(), docs.display().to_string(), addr.port().to_string());
    let args = ["--no-tls", "-a", &ip, "-d", &docs, &port].map(String::from);
    let child = spawn_logged(ns, "nghttpd", &args, log);
    wait_listening(ns, addr, "nghttpd");
    child
}

/// nghttpx on `addr` in front of the h2c `backend`: HTTP/1.1, HTTP/2 with prior knowledge, and
/// HTTP/1.1 upgraded to HTTP/2 with `Upgrade: h2c`.
/// `padding` adds up to that many bytes of padding to each frame it sends its clients.
fn nghttpx(ns: &Netns, addr: SocketAddr, backend: SocketAddr, padding: u8, log: &str) -> ChildGuard {
    let args = [
        "--conf=/dev/null".to_string(),
        "--single-process".into(),
        "--workers=1".into(),
        format!("--frontend={},{};no-tls", addr.ip(), addr.port()),
        format!("--backend={},{};;proto=h2", backend.ip(), backend.port()),
        format!("--padding={padding}"),
    ];
    let child = spawn_logged(ns, "nghttpx", &args, log);
    wait_listening(ns, addr, "nghttpx");
    child
}

/// A client of the upgrade test: the paths it asked for, in order (the first asked for the
/// upgrade), and, from its own verbose transcript, the stream each went on and what came back.
struct FileClient {
    name: &'static str,
    paths: Vec<String>,
    /// Path → (stream id, body received), as the client reports them.
    got: HashMap<String, (u64, Vec<u8>)>,
}

impl FileClient {
    fn got(&self, path: &str) -> &(u64, Vec<u8>) {
        self.got.get(path).unwrap_or_else(|| panic!("{} reports nothing for {path}", self.name))
    }
}

/// `curl -v` of sequential transfers: `* Using Stream ID: N` precedes each HTTP/2 request line;
/// the upgrade request (`> GET /p HTTP/1.1`) is answered on stream 1. Bodies are in the files
/// named after the paths in `dir`.
fn curl_transcript(stderr: &str, dir: &Path) -> HashMap<String, (u64, Vec<u8>)> {
    let mut got = HashMap::new();
    let mut stream = None;
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("* Using Stream ID: ") {
            stream = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("> GET ") {
            let mut words = rest.split_whitespace();
            let (Some(path), Some(version)) = (words.next(), words.next()) else { continue };
            let on = if version == "HTTP/1.1" { Some(1) } else { stream.take() };
            let on = on.unwrap_or_else(|| panic!("curl named no stream for {path}:\n{stderr}"));
            let body = std::fs::read(dir.join(path.trim_start_matches('/')))
                .unwrap_or_else(|e| panic!("curl wrote nothing for {path}: {e}"));
            assert!(got.insert(path.to_string(), (on, body)).is_none(), "curl asked for {path} twice");
        }
    }
    got
}

/// `nghttp -v` writes each DATA payload to stdout as it arrives, in pieces, before the log record
/// of its frame (`[  0.003] recv DATA frame <length=15, flags=0x01, stream_id=13>`); records of
/// other frames (a WINDOW_UPDATE it sends, say) can come between the pieces, but the pieces of two
/// DATA frames never mix. It logs `:path` under each `send HEADERS frame`, and the upgrade request
/// (stream 1) as an HTTP/1.1 request line. The files are lowercase letters only, so a payload
/// piece is the run of letters that a line starts with when a log record follows it.
fn nghttp_transcript(stdout: &[u8]) -> HashMap<String, (u64, Vec<u8>)> {
    let text = std::str::from_utf8(stdout).expect("nghttp's transcript of letter files is text");
    let number = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(key)? + key.len();
        line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    // A log record starts with its timestamp: `[  0.003]`.
    let is_record = |s: &str| {
        s.strip_prefix('[').and_then(|r| r.split_once(']')).is_some_and(|(ts, _)| {
            let ts = ts.trim_start();
            !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        })
    };
    let mut paths: HashMap<u64, String> = HashMap::new();
    let mut bodies: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut pending = String::new();
    let mut headers_of: Option<u64> = None;
    let mut padded: Option<(u64, u64, usize)> = None;
    for line in text.lines() {
        let (piece, rest) = line.split_at(line.bytes().take_while(u8::is_ascii_lowercase).count());
        if is_record(rest) {
            pending.push_str(piece);
            if rest.contains("] recv DATA frame <") {
                let length = number(rest, "length=").expect("DATA length");
                let stream = number(rest, "stream_id=").expect("DATA stream");
                let flags =
                    rest.split_once("flags=0x").and_then(|(_, f)| u8::from_str_radix(f.get(..2)?, 16).ok());
                // A padded frame's length counts its padding, logged on the next line.
                padded = (flags.expect("DATA flags") & 0x08 != 0).then_some((stream, length, pending.len()));
                if padded.is_none() {
                    assert_eq!(
                        pending.len() as u64,
                        length,
                        "nghttp's DATA payload on stream {stream}: {rest}"
                    );
                }
                bodies.entry(stream).or_default().extend_from_slice(pending.as_bytes());
                pending.clear();
            }
            headers_of =
                if rest.contains("] send HEADERS frame <") { number(rest, "stream_id=") } else { None };
        } else if let (Some((stream, length, got)), Some(padding)) = (padded, number(line, "(padlen=")) {
            // nghttp2's padlen counts the Pad Length field too.
            assert_eq!(got as u64 + padding, length, "nghttp's padded DATA payload on stream {stream}");
            padded = None;
        } else if let (Some(stream), Some(path)) = (headers_of, line.trim_start().strip_prefix(":path: ")) {
            paths.insert(stream, path.to_string());
        } else if let Some(path) = line.strip_prefix("GET ").and_then(|r| r.strip_suffix(" HTTP/1.1")) {
            paths.insert(1, path.to_string());
        }
    }
    assert!(pending.is_empty(), "nghttp's transcript ends inside a DATA frame");
    paths
        .into_iter()
        .map(|(stream, path)| (path, (stream, bodies.remove(&stream).unwrap_or_default())))
        .collect()
}

/// curl and nghttp (twice, the second time with HPACK table size changes, padding, CONTINUATION
/// and small windows) ask for `Upgrade: h2c` on their first request and go on in HTTP/2 on the
/// same connection: curl one stream after the other, nghttp all streams at once (after PRIORITY
/// frames on idle streams, its dependency tree); production pads its frames. Every stream is
/// paired with the file its path names, on the stream the client used, the upgrade request with
/// its answer on stream 1, and verdicts follow the shadow's files.
#[test]
fn h2c_upgrade_answer_on_stream_1_and_every_later_stream_are_paired_exactly() {
    if !kernel_tests_allowed("h2c_upgrade_answer_on_stream_1_and_every_later_stream_are_paired_exactly") {
        return;
    }
    for (tool, package) in [
        ("curl", "curl"),
        ("nghttp", "nghttp2-client"),
        ("nghttpd", "nghttp2-server"),
        ("nghttpx", "nghttp2-proxy"),
    ] {
        require(tool, package);
    }
    let trio = Trio::new();
    let files = served_files();
    let file_of: HashMap<&str, &ServedFile> = files.iter().map(|f| (f.path.as_str(), f)).collect();
    let production_docs = scratch_dir("h2-docs-production");
    let shadow_docs = scratch_dir("h2-docs-shadow");
    write_docs(&production_docs, &files, false);
    write_docs(&shadow_docs, &files, true);
    let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let production = SocketAddr::from((trio.production_addr, PORT));
    let _files_v1 = nghttpd(&trio.production, local(8091), &production_docs, "nghttpd-production.log");
    // Production pads its frames: DATA and HEADERS carry padding the daemon must strip.
    let _front_v1 = nghttpx(&trio.production, production, local(8091), 64, "nghttpx-production.log");
    // The shadow: nghttpd on 8081 (h2c only), and nghttpx in front of it on 8080 like production.
    let shadow_h2 = SocketAddr::from((trio.shadow_addr, 8081));
    let _files_v2 = nghttpd(&trio.shadow, shadow_h2, &shadow_docs, "nghttpd-shadow.log");
    let shadow_front = SocketAddr::from((trio.shadow_addr, PORT));
    let _front_v2 = nghttpx(&trio.shadow, shadow_front, shadow_h2, 0, "nghttpx-shadow.log");

    let record = scratch_file("h2-upgrade.jsonl");
    // `files-v2` runs what production runs: each request goes to its port 8080 in its own
    // protocol, so the upgrade request (HTTP/1.1) is compared too. `files-h2` names an h2c
    // endpoint only: the upgrade request has no endpoint there and is not compared, said so.
    let shadows = [format!("files-v2@2={}", trio.shadow_addr), format!("files-h2@2=h2c://{shadow_h2}")];
    let daemon = start_daemon(&trio, &record, &shadows);

    let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let rotated =
        |first: usize| -> Vec<String> { paths[first..].iter().chain(&paths[..first]).cloned().collect() };
    let curl_dir = scratch_dir("h2-curl-got");
    let curl_paths = rotated(3);
    let mut curl_args: Vec<String> =
        ["--verbose", "--silent", "--show-error", "--http2"].map(String::from).to_vec();
    for path in &curl_paths {
        curl_args.extend([
            format!("http://{production}{path}"),
            "-o".into(),
            path.trim_start_matches('/').into(),
        ]);
    }
    let out = run_client(&trio.client, "curl", &curl_args, &curl_dir);
    let curl_got = curl_transcript(&String::from_utf8_lossy(&out.stderr), &curl_dir);
    let curl = FileClient { name: "curl", paths: curl_paths, got: curl_got };
    let nghttp = |name: &'static str, first: usize, options: &[&str]| {
        let paths = rotated(first);
        let mut args: Vec<String> =
            ["--upgrade", "--verbose"].iter().chain(options).map(|a| a.to_string()).collect();
        args.extend(paths.iter().map(|path| format!("http://{production}{path}")));
        let out = run_client(&trio.client, "nghttp", &args, &scratch_dir(name));
        FileClient { name, paths, got: nghttp_transcript(&out.stdout) }
    };
    // nghttp's upgrade request asks for the 1 MiB file: stream 1 carries a long answer.
    let plain = nghttp("nghttp", 12, &[]);
    // Again with what HTTP/2 allows and a passive reader must follow: the server told to shrink
    // its HPACK table to nothing and grow it again (two table size updates in its next block),
    // a smaller table for the client's own encoder, padded frames, a header block too large for
    // one frame (CONTINUATION), and 4 KiB stream windows (many WINDOW_UPDATEs).
    let tuned = nghttp(
        "nghttp-tuned",
        7,
        &[
            "--header-table-size=0",
            "--header-table-size=4096",
            "--encoder-header-table-size=256",
            "--padding=32",
            "--continuation",
            "--window-bits=12",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);

    let records = read_records(&record);
    let drops = final_drops(&finished.stderr);
    assert_eq!(records.len(), 3 * 2 * files.len(), "one record per request and shadow: {drops:?}");
    let clients = [&curl, &plain, &tuned];
    // Each client's connection is named by its upgrade request (stream 1): their first paths differ.
    let mut connection_of: HashMap<&str, &str> = HashMap::new();
    for r in records.iter().filter(|r| r["stream_id"] == 1) {
        let client =
            clients.iter().find(|c| r["path"] == c.paths[0].as_str()).expect("a client's first path");
        let connection = r["connection"]["client"].as_str().expect("client address");
        assert!(
            *connection_of.entry(client.name).or_insert(connection) == connection,
            "{}: one connection",
            client.name
        );
    }
    assert_eq!(connection_of.len(), clients.len(), "one upgraded connection per client: {connection_of:?}");
    for client in clients {
        let name = client.name;
        let ours: Vec<&Value> =
            records.iter().filter(|r| r["connection"]["client"] == connection_of[name]).collect();
        for shadow in ["files-v2", "files-h2"] {
            let mut streams = HashSet::new();
            let mut record_of: HashMap<&str, &Value> = HashMap::new();
            for r in ours.iter().filter(|r| r["shadow"]["model_id"] == shadow) {
                let path = r["path"].as_str().expect("path");
                assert!(record_of.insert(path, r).is_none(), "{name}/{shadow}: {path} recorded twice");
                let stream = r["stream_id"].as_u64().expect("every exchange here is on a stream");
                assert!(stream % 2 == 1 && streams.insert(stream), "{name}/{shadow}: stream {stream}: {r}");
            }
            let mut asked: Vec<&str> = client.paths.iter().map(String::as_str).collect();
            let mut got: Vec<&str> = record_of.keys().copied().collect();
            asked.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, asked, "{name}/{shadow}: every path once");
            for (k, path) in client.paths.iter().enumerate() {
                let r = record_of[path.as_str()];
                let served = file_of[path.as_str()];
                let (stream, received) = client.got(path);
                assert_eq!(r["stream_id"], *stream, "{name}: {path} on the stream the client used: {r}");
                check_file_record(r, served, received, k, name);
                let upgrade = k == 0;
                match (shadow, upgrade) {
                    ("files-h2", true) => {
                        assert_eq!(r["verdict"], "not_compared", "{r}");
                        assert_eq!(r["reason"], "no_endpoint", "{r}");
                        assert!(r["shadow"]["status"].is_null(), "not replayed: {r}");
                    }
                    _ => {
                        assert_eq!(r["shadow"]["status"], 200, "{r}");
                        assert_eq!(
                            r["shadow"]["sha256"].as_str(),
                            Some(sha256_hex(&served.shadow).as_str()),
                            "{name}/{shadow}: the shadow's file for {path}: {r}"
                        );
                        let expected = if served.shadow == served.production { "match" } else { "mismatch" };
                        assert_eq!(r["verdict"], expected, "{name}/{shadow}: {path}: {r}");
                    }
                }
            }
        }
    }
    let differing = files.iter().filter(|f| f.shadow != f.production).count();
    assert!(differing >= 3 && differing < files.len(), "some files differ, not all: {differing}");
    assert!(drops.is_empty(), "nothing lost: {drops:?}");
    let n = clients.len() * files.len();
    let differs = |path: &String| file_of[path.as_str()].shadow != file_of[path.as_str()].production;
    let upgrades_differing = clients.iter().filter(|c| differs(&c.paths[0])).count();
    let mismatches = clients.len() * differing;
    assert_summary_counts(&finished.stderr, n, "files-v2", [n, mismatches, 0]);
    let h2_only = [n - clients.len(), mismatches - upgrades_differing, clients.len()];
    assert_summary_counts(&finished.stderr, n, "files-h2", h2_only);
}

/// The production side of one record of the upgrade test: the answer is the file the path names,
/// exactly what the client received; the first request is the upgrade, answered on stream 1.
fn check_file_record(r: &Value, file: &ServedFile, received: &[u8], k: usize, client: &str) {
    let path = &file.path;
    assert_eq!(received, &file.production[..], "{client} got production's {path}");
    assert_eq!(r["method"], "GET", "{r}");
    assert_eq!(r["production"]["status"], 200, "{r}");
    assert_eq!(r["production"]["bytes"], file.production.len(), "{client}: {path}: {r}");
    assert_eq!(
        r["production"]["sha256"].as_str(),
        Some(sha256_hex(received).as_str()),
        "{client}: {path} paired with its own file: {r}"
    );
    if k == 0 {
        // The HTTP/1.1 request that asked for the upgrade, answered in HTTP/2 on stream 1.
        assert_eq!(r["http_version"], "HTTP/1.1", "{client}: the upgrade request: {r}");
        assert_eq!(r["stream_id"], 1, "{client}: the upgrade's answer is stream 1: {r}");
        assert_eq!(
            header(&r["request"], "upgrade").map(str::to_ascii_lowercase).as_deref(),
            Some("h2c"),
            "{r}"
        );
        // The answer's head is stream 1's HEADERS, not the 101 that switched protocols.
        assert!(header(&r["production"], "upgrade").is_none(), "{client}: not the 101's head: {r}");
        assert_eq!(header(&r["production"], "content-type"), Some("text/plain"), "{r}");
    } else {
        assert_eq!(r["http_version"], "HTTP/2", "{client}: {path}: {r}");
        assert!(r["stream_id"].as_u64() > Some(1), "{client}: {path} after the upgrade: {r}");
        assert!(header(&r["request"], "upgrade").is_none(), "{r}");
    }
}

/// `curl --http2` asks every request for `Upgrade: h2c`; the model server (hyper) answers in
/// HTTP/1.1 instead of 101, so the connection goes on in HTTP/1.1 and each exchange is compared as
/// usual.
#[test]
fn a_declined_h2c_upgrade_goes_on_in_http1_and_is_compared() {
    if !kernel_tests_allowed("a_declined_h2c_upgrade_goes_on_in_http1_and_is_compared") {
        return;
    }
    require("curl", "curl");
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1", 0.0, 0);
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2", 10.0, 1);
    let requests = bodies(60);
    let truth = InferTruth::new(&requests, &model("1", 0.0), &model("2", 10.0));
    assert!(truth.mismatches() >= 3, "v2 flips a share: {}", truth.mismatches());

    let record = scratch_file("h2-declined.jsonl");
    // Nothing listens on the h2c endpoint's port: a request replayed there would be a shadow error.
    let shadow = format!("model-v2@2=http://{0}:{PORT},h2c://{0}:9", trio.shadow_addr);
    let daemon = start_daemon(&trio, &record, &[shadow]);
    let dir = scratch_dir("h2-declined");
    let production = SocketAddr::from((trio.production_addr, PORT));
    let config = curl_config(&dir, production, &requests, "http2", "http2");
    let args =
        vec!["--silent".into(), "--show-error".into(), "--config".into(), config.display().to_string()];
    run_client(&trio.client, "curl", &args, &dir);
    let received = curl_answers(&dir, requests.len());
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);

    let records = read_records(&record);
    let drops = final_drops(&finished.stderr);
    assert_eq!(records.len(), requests.len(), "one record per request: {drops:?}");
    let clients: HashSet<&str> = records.iter().filter_map(|r| r["connection"]["client"].as_str()).collect();
    assert_eq!(clients.len(), 1, "curl kept one connection: {clients:?}");
    let mut seen = HashSet::new();
    for r in &records {
        assert_eq!(r["http_version"], "HTTP/1.1", "{r}");
        assert!(r["stream_id"].is_null(), "no HTTP/2 stream: {r}");
        assert_eq!(
            header(&r["request"], "upgrade").map(str::to_ascii_lowercase).as_deref(),
            Some("h2c"),
            "curl asked for the upgrade: {r}"
        );
        let i = truth.check(r, &received);
        assert!(seen.insert(i), "request {i} recorded twice");
    }
    assert!(drops.is_empty(), "nothing lost: {drops:?}");
    let n = requests.len();
    assert_summary_counts(&finished.stderr, n, "model-v2", [n, truth.mismatches(), 0]);
}

/// `curl --http2 --parallel` through nghttpx (which accepts `Upgrade: h2c`) in front of the v1
/// model server: the first POST asks for the upgrade with its body and is answered on stream 1,
/// then curl multiplexes the other POSTs on the upgraded connection. Every exchange, the upgrade
/// request too, is paired with its own answer and compared with v2's.
#[test]
fn an_upgrade_request_with_a_body_and_the_streams_multiplexed_after_it_are_compared() {
    if !kernel_tests_allowed(
        "an_upgrade_request_with_a_body_and_the_streams_multiplexed_after_it_are_compared",
    ) {
        return;
    }
    require("curl", "curl");
    require("nghttpx", "nghttp2-proxy");
    let trio = Trio::new();
    let backend = SocketAddr::from((Ipv4Addr::LOCALHOST, 8091));
    let v1 = ServerOptions { version: "1".into(), disagree_percent: 0.0, delay_ms: 5 };
    let _v1 = model_server::start_test_build(&trio.production, &[backend], &v1);
    let production = SocketAddr::from((trio.production_addr, PORT));
    let _front = nghttpx(&trio.production, production, backend, 0, "nghttpx-infer.log");
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2", 10.0, 1);
    // The upgrade request (curl's first transfer) carries 50,000 rows, 2.5 MB: curl sends it after
    // `Expect: 100-continue` and a 100 from nghttpx, all in HTTP/1.1, before the 101.
    let big: Vec<Vec<f64>> =
        (0..50_000).map(|r| (0..4).map(|f| ((r * 7 + f * 13) % 97) as f64 / 10.0 - 4.8).collect()).collect();
    let requests: Vec<Vec<u8>> = std::iter::once(infer_request("req-big", &big)).chain(bodies(120)).collect();
    assert!(requests[0].len() > 1 << 20, "{}", requests[0].len());
    let truth = InferTruth::new(&requests, &model("1", 0.0), &model("2", 10.0));
    assert!(truth.mismatches() >= 5, "v2 flips a share: {}", truth.mismatches());

    let record = scratch_file("h2-upgrade-infer.jsonl");
    let shadow = format!("model-v2@2=http://{0}:{PORT},h2c://{0}:{PORT}", trio.shadow_addr);
    let daemon = start_daemon(&trio, &record, &[shadow]);
    let dir = scratch_dir("h2-upgrade-infer");
    let config = curl_config(&dir, production, &requests, "http2", "http2");
    let args = ["--verbose", "--silent", "--show-error", "--parallel", "--parallel-max", "8", "--config"];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    args.push(config.display().to_string());
    let out = run_client(&trio.client, "curl", &args, &dir);
    let transcript = String::from_utf8_lossy(&out.stderr);
    let http1 = transcript.lines().filter(|l| l.starts_with("> POST ") && l.ends_with(" HTTP/1.1")).count();
    assert_eq!(http1, 1, "curl upgraded its one connection with its first request:\n{transcript}");
    let received = curl_answers(&dir, requests.len());
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);

    let records = read_records(&record);
    let drops = final_drops(&finished.stderr);
    assert_eq!(records.len(), requests.len(), "one record per request: {drops:?}");
    let clients: HashSet<&str> = records.iter().filter_map(|r| r["connection"]["client"].as_str()).collect();
    assert_eq!(clients.len(), 1, "one connection: {clients:?}");
    let mut seen = HashSet::new();
    let mut streams = HashSet::new();
    for r in &records {
        let stream = r["stream_id"].as_u64().expect("every exchange here is on a stream");
        assert!(stream % 2 == 1 && streams.insert(stream), "stream {stream}: {r}");
        let upgrade = header(&r["request"], "upgrade").map(str::to_ascii_lowercase);
        if stream == 1 {
            assert_eq!(r["http_version"], "HTTP/1.1", "the upgrade request: {r}");
            assert_eq!(upgrade.as_deref(), Some("h2c"), "{r}");
            assert_eq!(r["request"]["bytes"], requests[0].len(), "the upgrade request is the first: {r}");
        } else {
            assert_eq!(r["http_version"], "HTTP/2", "{r}");
            assert_eq!(upgrade, None, "{r}");
        }
        let i = truth.check(r, &received);
        assert!(seen.insert(i), "request {i} recorded twice");
    }
    assert!(streams.contains(&1), "the upgrade request's answer came on stream 1");
    let multiplexed: Vec<&Value> = records.iter().filter(|r| r["stream_id"] != 1).collect();
    let in_flight = most_in_flight(&multiplexed);
    assert!(in_flight >= 2, "streams after the upgrade were multiplexed: at most {in_flight} at once");
    assert!(drops.is_empty(), "nothing lost: {drops:?}");
    let n = requests.len();
    assert_summary_counts(&finished.stderr, n, "model-v2", [n, truth.mismatches(), 0]);
}
