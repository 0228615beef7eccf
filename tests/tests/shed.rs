//! Overload sheds whole connections: with a ring buffer far too small for a burst of large answers,
//! the daemon stops the kernel copying a share of connections instead of losing bytes everywhere.
//! What it does rebuild is complete and correct, what it shed is counted, and once the burst is
//! over capture comes back to every connection — the keep-alive ones it had cut included, picked
//! up at a request (`--resync-mid-stream`).
use std::{
    collections::HashMap,
    io::Write,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use mirror_tests::{
    client::{Ask, connect, read_response, run_connection},
    daemon::Daemon,
    gate::kernel_tests_allowed,
    model_server::{self, body_of},
    netns::Pair,
    read_records, scratch_file, sha256_hex,
};
use serde_json::Value;

const PORT: u16 = 8080;
/// The burst: 1 KiB requests answered with 256 KiB, four times the ring buffer.
const BURST: Ask = Ask { request_body: 1024, response_body: 256 << 10 };
/// Exchanges on the long-lived connections: small, and of their own request size.
const LONG: Ask = Ask { request_body: 10, response_body: 3000 };
const LONG_LIVED: usize = 12;
const AFTER: usize = 5;

/// One exchange on a kept connection, as `client::run_connection` sends it.
fn exchange(stream: &mut TcpStream, server: SocketAddr, i: usize, ask: Ask) {
    let head = format!(
        "POST /infer/{i}?size={} HTTP/1.1\r\nHost: {server}\r\nContent-Length: {}\r\n\r\n",
        ask.response_body, ask.request_body
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(&body_of(ask.request_body));
    stream.write_all(&request).expect("send request");
    let response = read_response(stream).expect("response");
    assert!(response.ends_with(&body_of(ask.response_body)), "answer {i} differs from what the server sends");
}

/// The final summary (JSON log line).
fn final_summary(stderr: &str) -> Value {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "final summary")
        .unwrap_or_else(|| panic!("no final summary in:\n{stderr}"))
}

/// `name=value` out of the summary's `kernel` field.
fn kernel_counter(summary: &Value, name: &str) -> u64 {
    let text = summary["kernel"].as_str().unwrap_or_default();
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no kernel counter {name} in {summary}"))
}

#[test]
fn overload_sheds_whole_connections_and_recovers() {
    if !kernel_tests_allowed("overload_sheds_whole_connections_and_recovers") {
        return;
    }
    let pair = Pair::new();
    let _server = model_server::spawn(&pair, &[PORT]);
    let record = scratch_file("shed.jsonl");
    let mut daemon = Daemon::start(
        &pair.server,
        &[
            "run",
            "-i",
            &pair.server_if,
            "-p",
            "8080",
            "--record",
            record.to_str().unwrap(),
            "--resync-mid-stream",
            "--ring-buffer-size",
            "128KiB",
            "--summary-interval",
            "1s",
        ],
    );
    let server = SocketAddr::new(pair.server_ip(false), PORT);

    // Long-lived keep-alive connections, each used once before the burst.
    let long_lived: Vec<TcpStream> = pair.client.run(move || {
        (0..LONG_LIVED)
            .map(|i| {
                let mut s = connect(server);
                exchange(&mut s, server, i, LONG);
                s
            })
            .collect()
    });

    // The burst: 8 workers, each a series of short keep-alive connections, bounded in count and
    // time.
    let burst_exchanges = pair.client.run(move || {
        let begin = Instant::now();
        let workers: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut done = 0;
                    for _ in 0..40 {
                        if begin.elapsed() > Duration::from_secs(4) {
                            break;
                        }
                        done += run_connection(server, &[BURST; 5]).exchanges;
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("burst worker")).sum::<usize>()
    });
    assert!(burst_exchanges > 0);
    daemon.wait_for("shedding connections", Duration::from_secs(10));
    daemon.wait_for("capture recovered", Duration::from_secs(30));

    // After the burst: every long-lived connection asks again, and new connections come.
    let after = pair.client.run(move || {
        let mut long_lived = long_lived;
        for round in 0..AFTER {
            for (i, s) in long_lived.iter_mut().enumerate() {
                exchange(s, server, 100 + round * LONG_LIVED + i, LONG);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let fresh: usize = (0..4).map(|_| run_connection(server, &[LONG; 5]).exchanges).sum();
        (long_lived.len() * AFTER, fresh)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "daemon failed:\n{}", finished.stderr);

    // Everything rebuilt is complete and correct: each request's answer is the one the server
    // sends for a request of its shape.
    let expected: HashMap<String, String> = [BURST, LONG]
        .into_iter()
        .map(|a| (sha256_hex(&body_of(a.request_body)), sha256_hex(&body_of(a.response_body))))
        .collect();
    let records = read_records(&record);
    let mut long_records = 0;
    for r in &records {
        let request = r["request"]["sha256"].as_str().expect("request sha256");
        let answer = expected.get(request).unwrap_or_else(|| panic!("a request never sent: {r}"));
        assert_eq!(r["production"]["sha256"].as_str(), Some(answer.as_str()), "mispaired or partial: {r}");
        if r["request"]["bytes"] == LONG.request_body {
            long_records += 1;
        }
    }
    let summary = final_summary(&finished.stderr);
    let shed = kernel_counter(&summary, "shed_segments");
    assert!(shed > 0, "nothing shed:\n{}", finished.stderr);
    assert_eq!(summary["mirrored_share"].as_f64(), Some(1.0), "{summary}");
    let drops = finished.final_drops();
    assert!(drops.get("shed_cut_connections").copied().unwrap_or(0) > 0, "no connection cut: {drops:?}");
    // Recovered: every exchange after the burst is rebuilt, but at most the first request of a
    // connection picked up mid-stream, which resynchronisation may not be able to prove.
    let (long_after, fresh) = after;
    assert_eq!(fresh, 20);
    let resumed = drops.get("shed_resumed_connections").copied().unwrap_or(0) as usize;
    let minimum = LONG_LIVED + long_after - resumed + fresh;
    eprintln!(
        "burst exchanges {burst_exchanges}, records {}, kernel shed_segments {shed} ringbuf_full {}, \
         shed_cut_connections {}, shed_resumed_connections {resumed}, small exchanges rebuilt \
         {long_records} of {}",
        records.len(),
        kernel_counter(&summary, "ringbuf_full"),
        drops.get("shed_cut_connections").copied().unwrap_or(0),
        LONG_LIVED + long_after + fresh
    );
    assert!(
        long_records >= minimum,
        "{long_records} small exchanges rebuilt, at least {minimum} expected (resumed {resumed}):\n{}",
        finished.stderr
    );
}
