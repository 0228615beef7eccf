//! What the kernel programs cost per packet, as the daemon reports it live (`--kernel-stats`):
//! real programs attached to a veth in namespaces this test creates, bounded traffic through them,
//! and the counters `mirror_kernel_program_run_seconds_total` / `mirror_kernel_program_runs_total`
//! read from the daemon's `/metrics`, checked against the traffic sent and against the kernel's
//! own figures for the programs this daemon holds (its fdinfo, by program id: other daemons on the
//! machine load programs of the same names).
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use mirror_tests::{
    client::{Ask, run_connection},
    daemon::Daemon,
    gate::kernel_tests_allowed,
    netns::{Netns, Pair},
};

const PORT: u16 = 8080;
/// Where the daemon serves metrics, on the loopback of the server's namespace.
const METRICS: &str = "127.0.0.1:19472";
const CONNECTIONS: usize = 4;
const EXCHANGES: usize = 150;

/// `GET /metrics` from inside `ns`.
fn scrape(ns: &Netns) -> String {
    ns.run(|| {
        let mut stream = TcpStream::connect(METRICS).expect("connect to the metrics listener");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read metrics");
        text
    })
}

/// The value of the series `name{program="PROGRAM"}`, if exported.
fn series(text: &str, name: &str, program: &str) -> Option<f64> {
    let prefix = format!("{name}{{program=\"{program}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().expect("a number"))
}

/// (runs, seconds) of each program in `text`.
fn program_metrics(text: &str) -> HashMap<&'static str, (f64, f64)> {
    ["mirror_xdp", "mirror_tc"]
        .into_iter()
        .filter_map(|p| {
            let runs = series(text, "mirror_kernel_program_runs_total", p)?;
            let seconds = series(text, "mirror_kernel_program_run_seconds_total", p)?;
            Some((p, (runs, seconds)))
        })
        .collect()
}

/// `run_cnt` of each BPF program `pid` holds, by program type (XDP 6, TC `sched_cls` 3), from its
/// fdinfo: the kernel's count for exactly this daemon's programs.
fn kernel_runs(pid: u32) -> HashMap<u64, u64> {
    let mut seen = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("the daemon's fdinfo") {
        let Ok(text) = std::fs::read_to_string(entry.expect("fdinfo entry").path()) else { continue };
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(kind), Some(runs)) =
            (field("prog_id:"), field("prog_type:"), field("run_cnt:"))
        {
            seen.insert(id, (kind, runs));
        }
    }
    let mut by_type = HashMap::new();
    for (kind, runs) in seen.into_values() {
        *by_type.entry(kind).or_insert(0) += runs;
    }
    by_type
}

fn drive(pair: &Pair, asks: Vec<Ask>) -> usize {
    let server = SocketAddr::new(pair.server_ip(false), PORT);
    pair.client.run(move || {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let asks = asks.clone();
                std::thread::spawn(move || run_connection(server, &asks).exchanges)
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("client thread")).sum()
    })
}

/// A periodic summary's line (the final one says "final summary").
const SUMMARY: &str = "\"message\":\"summary\"";

/// Waits for the second periodic summary from now: the counters it carries were read after
/// everything before this call (they move at each summary).
fn summary_after_now(daemon: &mut Daemon) {
    daemon.drain();
    let seen = daemon.stderr.iter().filter(|l| l.contains(SUMMARY)).count();
    daemon.wait_for_count(SUMMARY, seen + 2, Duration::from_secs(10));
}

#[test]
fn kernel_programs_cost_is_exported_per_program() {
    if !kernel_tests_allowed("kernel_programs_cost_is_exported_per_program") {
        return;
    }
    let pair = Pair::new();
    let _server = mirror_tests::model_server::spawn(&pair, &[PORT]);
    let mut daemon = Daemon::start(
        &pair.server,
        &[
            "run",
            "-i",
            &pair.server_if,
            "-p",
            "8080",
            "--kernel-stats",
            "--summary-interval",
            "1s",
            "--metrics-addr",
            METRICS,
        ],
    );
    let pid = daemon.child.id();
    summary_after_now(&mut daemon);
    let before = program_metrics(&scrape(&pair.server));

    let small = vec![Ask { request_body: 200, response_body: 1024 }; EXCHANGES];
    let large = vec![Ask { request_body: 65_536, response_body: 65_536 }; 10];
    let exchanges = drive(&pair, small) + drive(&pair, large);
    assert_eq!(exchanges, CONNECTIONS * (EXCHANGES + 10), "every exchange completed");

    summary_after_now(&mut daemon);
    let text = scrape(&pair.server);
    let after = program_metrics(&text);
    let kernel = kernel_runs(pid);

    for (program, kind) in [("mirror_xdp", 6u64), ("mirror_tc", 3)] {
        let (runs, seconds) = after[program];
        let (runs0, seconds0) = before.get(program).copied().unwrap_or_default();
        let (d_runs, d_seconds) = (runs - runs0, seconds - seconds0);
        // Each exchange took at least one packet each way: requests are received (XDP), answers
        // transmitted (TC).
        assert!(d_runs >= exchanges as f64, "{program}: {d_runs} runs for {exchanges} exchanges\n{text}");
        assert!(d_seconds > 0.0, "{program}: no run time\n{text}");
        let ns_per_run = d_seconds * 1e9 / d_runs;
        assert!(ns_per_run > 0.0 && ns_per_run < 1e6, "{program}: {ns_per_run} ns per run");
        // The daemon's figures are the kernel's for its own programs: never more than the kernel
        // counted since, and short of it by at most a few stray packets (ARP, neighbour discovery).
        let counted =
            kernel.get(&kind).copied().unwrap_or_else(|| panic!("no {program} in fdinfo: {kernel:?}"));
        assert!(
            runs as u64 <= counted && counted - (runs as u64) < 50,
            "{program}: {runs} exported, kernel {counted}"
        );
        println!("{program}: {d_runs} runs, {ns_per_run:.0} ns/run");
    }

    let finished = daemon.stop();
    assert!(finished.success, "daemon failed:\n{}", finished.stderr);
    let last = finished
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "final summary")
        .unwrap_or_else(|| panic!("no final summary:\n{}", finished.stderr));
    let per_run =
        last["kernel_ns_per_run"].as_str().unwrap_or_else(|| panic!("no kernel_ns_per_run: {last}"));
    for program in ["mirror_xdp", "mirror_tc"] {
        let ns: f64 = per_run
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{program}=")))
            .unwrap_or_else(|| panic!("{program} missing from `{per_run}`"))
            .parse()
            .expect("ns per run");
        assert!(ns > 0.0 && ns < 1e6, "{program}: {ns} ns per run in the summary");
    }
}

#[test]
fn without_the_flag_nothing_is_turned_on() {
    if !kernel_tests_allowed("without_the_flag_nothing_is_turned_on") {
        return;
    }
    let pair = Pair::new();
    let _server = mirror_tests::model_server::spawn(&pair, &[PORT]);
    let mut daemon = Daemon::start(
        &pair.server,
        &["run", "-i", &pair.server_if, "-p", "8080", "--summary-interval", "1s", "--metrics-addr", METRICS],
    );
    drive(&pair, vec![Ask { request_body: 10, response_body: 10 }; 5]);
    summary_after_now(&mut daemon);
    let text = scrape(&pair.server);
    assert!(program_metrics(&text).is_empty(), "series without --kernel-stats:\n{text}");
    let finished = daemon.stop();
    assert!(finished.success, "daemon failed:\n{}", finished.stderr);
    assert!(!finished.stderr.contains("kernel_ns_per_run"), "{}", finished.stderr);
}
