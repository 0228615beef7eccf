//! The books balance, end to end: every request the daemon sees is compared or counted exactly
//! once, in requests, whatever happens to it — a shadow that is down for part of the run, a valid
//! request followed by garbage on its connection, a client that resets mid-request, a shadow too
//! slow for its queue, and SIGINT while replays to that slow shadow are still queued and in
//! flight. The test knows how many requests its clients started, and checks the final summary's
//! books and the records against that number.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use mirror_tests::{
    ChildGuard,
    client::{connect, post_json},
    daemon::start_mirror,
    gate::kernel_tests_allowed,
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Trio},
    read_records, scratch_file,
};
use serde_json::Value;

const PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:19466";
const PATH: &str = "/v2/models/demo/infer";

fn model_server(ns: &Netns, addr: std::net::Ipv4Addr, version: &str, delay_ms: u64) -> ChildGuard {
    let options = ServerOptions { version: version.into(), disagree_percent: 0.0, delay_ms };
    model_server::start_test_build(ns, &[SocketAddr::from((addr, PORT))], &options)
}

fn body(i: usize) -> Vec<u8> {
    infer_request(&format!("req-{i}"), &[vec![i as f64 / 10.0, 1.0, -2.0, 0.5]])
}

/// `count` requests over `connections` keep-alive connections, every answer read.
fn drive(ns: &Netns, server: SocketAddr, from: usize, count: usize, connections: usize) {
    ns.run(move || {
        let mut conns: Vec<_> = (0..connections).map(|_| connect(server)).collect();
        let host = server.to_string();
        for i in from..from + count {
            let (status, _, _) = post_json(&mut conns[i % connections], &host, PATH, &body(i));
            assert_eq!(status, 200, "production answers request {i}");
        }
    });
}

/// One valid request, then bytes that are no HTTP at all on the same connection: production
/// answers the request and rejects the rest.
fn request_then_garbage(ns: &Netns, server: SocketAddr) {
    ns.run(move || {
        let mut stream = connect(server);
        let body = body(9_999);
        let mut bytes = format!(
            "POST {PATH} HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(b"\x16\x03\x01\x00\xa5 this is not HTTP\r\n\r\n");
        stream.write_all(&bytes).expect("send");
        let mut answers = Vec::new();
        let _ = stream.read_to_end(&mut answers);
        let text = String::from_utf8_lossy(&answers);
        assert!(text.starts_with("HTTP/1.1 200"), "the valid request is answered: {text}");
    });
}

/// A client that sends a request head and part of its body, then resets the connection.
fn reset_mid_request(ns: &Netns, server: SocketAddr) {
    ns.run(move || {
        let mut stream = connect(server);
        let head =
            format!("POST {PATH} HTTP/1.1\r\nHost: {server}\r\nContent-Length: 1000\r\n\r\n{{\"inputs\": [");
        stream.write_all(head.as_bytes()).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket and a `linger` of the size passed; closing then sends a RST.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER");
        drop::<TcpStream>(stream);
    });
}

/// `GET /metrics` from inside `ns`.
fn scrape(ns: &Netns, addr: &'static str) -> String {
    ns.run(move || {
        let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read metrics");
        text
    })
}

/// The value of the first sample of `series` (name and labels, as exported).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The final summary's JSON line.
fn final_summary(stderr: &str) -> Value {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "final summary")
        .unwrap_or_else(|| panic!("no final summary in:\n{stderr}"))
}

/// `name=value` pairs inside the `(…)` after `label` in the books' text.
fn reasons(books: &str, label: &str) -> HashMap<String, u64> {
    let Some(rest) = books.split(&format!("{label} ")).nth(1) else { return HashMap::new() };
    let Some(inner) = rest.split_once('(').filter(|(n, _)| !n.contains('+')).map(|(_, r)| r) else {
        return HashMap::new();
    };
    inner
        .split(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().expect("count")))
        .collect()
}

#[test]
fn every_request_seen_is_compared_or_counted_once() {
    if !kernel_tests_allowed("every_request_seen_is_compared_or_counted_once") {
        return;
    }
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1", 0);
    let production = SocketAddr::from((trio.production_addr, PORT));
    let record = scratch_file("books.jsonl");
    let daemon = start_mirror(
        &trio,
        PORT,
        &record,
        METRICS,
        &["--shadow-max-in-flight", "2", "--shadow-queue", "16", "--shadow-timeout", "2s"],
    );

    // The shadow is down: every replay fails (compared, `shadow_error`).
    drive(&trio.client, production, 0, 40, 2);
    request_then_garbage(&trio.client, production);
    reset_mid_request(&trio.client, production);
    // A periodic summary with nothing in progress.
    std::thread::sleep(Duration::from_millis(1_200));
    // Now it is up but slow: 2 replays in flight and 16 queued at a time, 1.5 s each; the rest of
    // a burst is `queue_full`, and SIGINT comes while the queue is still full.
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2", 1_500);
    drive(&trio.client, production, 100, 60, 4);
    // A periodic summary while replays are queued and in flight (the books' in-progress term):
    // 18 replays of 1.5 s, two at a time, take 13 s, so most are still waiting at SIGINT.
    std::thread::sleep(Duration::from_millis(1_200));
    let metrics = scrape(&trio.production, METRICS);
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);

    // 40 + (1 valid + 1 garbage) + 1 reset + 60: the capture is clean, so every one is seen.
    let started = 40 + 2 + 1 + 60;
    let summary = final_summary(&finished.stderr);
    let number = |field: &str| summary[field].as_u64().unwrap_or_else(|| panic!("{field} in {summary}"));
    let books = summary["requests"].as_str().expect("the books in the final summary").to_string();
    eprintln!("requests: {books}");
    assert_eq!(number("requests_seen"), started, "{books}");
    assert_eq!(summary["requests_difference"].as_i64(), Some(0), "{books}");
    assert_eq!(number("requests_in_progress"), 0, "{books}");
    let (compared, not_compared, lost) =
        (number("requests_compared"), number("requests_not_compared"), number("requests_lost"));
    assert_eq!(compared + not_compared + lost, started, "{books}");
    // The periodic summaries balance too, with the requests in progress as a term of their own.
    let periodic: Vec<Value> = finished
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "summary")
        .collect();
    assert!(periodic.len() >= 2, "a summary every second: {books}");
    for s in &periodic {
        assert_eq!(s["requests_difference"].as_i64(), Some(0), "{}", s["requests"]);
    }
    assert!(
        finished.stderr.contains(&format!("requests: {books}")),
        "the books are printed at exit: {}",
        finished.stderr
    );

    // The metrics, as of the last summary before SIGINT (replays still waiting): seen = the
    // outcomes so far + in progress.
    let seen = sample(&metrics, r#"mirror_requests_total{outcome="seen",reason=""}"#);
    assert_eq!(seen, Some(started as f64), "{metrics}");
    let outcomes: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("mirror_requests_total{") && !l.contains(r#"outcome="seen""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let in_progress = sample(&metrics, "mirror_requests_in_progress").expect("the in-progress gauge");
    assert!(in_progress > 0.0, "replays were waiting: {metrics}");
    assert_eq!(outcomes + in_progress, started as f64, "{metrics}");
    // What waits is held against the memory budget, within each share.
    for part in ["replay", "queues"] {
        let used = sample(&metrics, &format!(r#"mirror_memory_used_bytes{{part="{part}"}}"#));
        let limit = sample(&metrics, &format!(r#"mirror_memory_limit_bytes{{part="{part}"}}"#));
        let (Some(used), Some(limit)) = (used, limit) else { panic!("memory gauges of {part}: {metrics}") };
        assert!(used > 0.0 && used <= limit, "{part}: {used} of {limit}: {metrics}");
    }

    // Lost before comparison: the garbage and the request cut by the reset, once each.
    let lost_by = reasons(&books, "lost");
    assert_eq!(lost_by.get("malformed_request"), Some(&1), "{books}");
    assert_eq!(lost_by.get("reset_with_pending"), Some(&1), "{books}");
    assert_eq!(lost_by.values().sum::<u64>(), lost, "{books}");
    assert_eq!(finished.final_drops().get("framing_error_connections"), Some(&1), "{}", finished.stderr);

    // The records say the same, one per request compared or not compared.
    let records = read_records(&record);
    assert_eq!(records.len() as u64, compared + not_compared, "{books}");
    let verdicts = |r: &&Value| r["verdict"] != "not_compared";
    assert_eq!(records.iter().filter(verdicts).count() as u64, compared, "{books}");
    let mut by_reason: HashMap<String, u64> = HashMap::new();
    for r in records.iter().filter(|r| r["verdict"] == "not_compared") {
        *by_reason.entry(r["reason"].as_str().expect("a reason").to_string()).or_default() += 1;
    }
    assert_eq!(by_reason, reasons(&books, "not_compared"), "{books}");
    let at_exit = by_reason.get("in_flight_at_exit").copied().unwrap_or(0);
    assert!(at_exit >= 1, "replays queued or in flight at SIGINT are recorded: {books}");
    assert!(by_reason.get("queue_full").copied().unwrap_or(0) >= 1, "{books}");
    for r in records.iter().filter(|r| r["reason"] == "in_flight_at_exit") {
        assert!(r["shadow"]["status"].is_null(), "no answer for {r}");
    }
    let errors = records.iter().filter(|r| r["verdict"] == "shadow_error").count();
    // The shadow was down for the first 41 requests: those replays failed, or found the queue
    // full behind the failing ones.
    assert!(errors >= 1, "{books}");
}
