//! One memory budget that holds, and replay concurrency that follows the shadow, on the real
//! daemon in namespaces (client → production ← daemon → shadow).
//!
//! - A shadow answering in 200 ms at 1,000 requests/s needs 200 replays in flight (Little's law):
//!   with the adaptive default at least 99% are replayed, while the old fixed 64 (given
//!   explicitly) drops most of them as `queue_full`; production answers every request either way.
//! - Under an as-fast-as-possible load of large bodies to a slow shadow, the daemon's memory stays
//!   within `--memory-limit 48MiB`, and what did not fit is counted.
//!
//! Memory is the daemon's resident set, with one correction: the kernel maps a BPF ring buffer's
//! data pages twice in a row (so that records wrapping around the end read as one), so `VmRSS`
//! counts those pages twice. Half the resident size of the `anon_inode:bpf-map` mappings is taken
//! off; what remains is what the daemon holds.
use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
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

const PORT: u16 = 8080;

fn model_server(ns: &Netns, addr: std::net::Ipv4Addr, version: &str, delay_ms: u64) -> ChildGuard {
    let options = ServerOptions { version: version.into(), disagree_percent: 0.0, delay_ms };
    model_server::start_test_build(ns, &[SocketAddr::from((addr, PORT))], &options)
}

/// `rate` inference requests/s for `seconds`, paced over `workers` keep-alive connections;
/// returns every (status, latency).
fn paced_load(ns: &Netns, server: SocketAddr, rate: u32, seconds: u64, workers: u64) -> Vec<(u16, Duration)> {
    let per_worker = f64::from(rate) / workers as f64;
    ns.run(move || {
        let threads: Vec<_> = (0..workers)
            .map(|w| {
                std::thread::spawn(move || {
                    let mut conn = connect(server);
                    let host = server.to_string();
                    let begin = Instant::now();
                    let mut out = Vec::new();
                    let mut n = w;
                    while begin.elapsed() < Duration::from_secs(seconds) {
                        let rows: Vec<Vec<f64>> = (0..1 + n % 3)
                            .map(|r| (0..4).map(|f| ((n + r + f) % 17) as f64).collect())
                            .collect();
                        let body = infer_request(&format!("r-{n}"), &rows);
                        let (status, _, latency) =
                            post_json(&mut conn, &host, "/v2/models/demo/infer", &body);
                        out.push((status, latency));
                        n += workers;
                        let due = Duration::from_secs_f64(out.len() as f64 / per_worker);
                        if let Some(wait) = due.checked_sub(begin.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    out
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("load worker")).collect()
    })
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

/// The last value of `name=N` in the daemon's log lines (summary fields), if any.
fn last_field(lines: &str, name: &str) -> Option<u64> {
    let needle = format!("{name}=");
    lines.lines().rev().filter(|l| l.contains("summary")).find_map(|l| {
        let at = l.find(&needle)? + needle.len();
        let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Records written, the share of the `sent` requests compared (replayed, answered or not, and
/// judged), and the `not_compared` reasons seen.
fn replayed_share(record: &Path, sent: usize) -> (usize, f64, Vec<String>) {
    let records = read_records(record);
    let not_compared: Vec<String> = records
        .iter()
        .filter(|r| r["verdict"] == "not_compared")
        .map(|r| r["reason"].as_str().unwrap_or("?").to_string())
        .collect();
    let share = (records.len() - not_compared.len()) as f64 / sent.max(1) as f64;
    let mut reasons = not_compared;
    reasons.sort();
    reasons.dedup();
    (records.len(), share, reasons)
}

#[test]
fn replay_concurrency_follows_a_slow_shadow() {
    if !kernel_tests_allowed("replay_concurrency_follows_a_slow_shadow") {
        return;
    }
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1", 0);
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2", 200);
    let production = SocketAddr::from((trio.production_addr, PORT));
    let (rate, seconds, workers) = (1000, 4, 16);
    let baseline = paced_load(&trio.client, production, rate, 2, workers);
    let baseline_p99 = p99(baseline.iter().map(|(_, l)| *l).collect());

    let mut shares = Vec::new();
    for (name, extra) in [("adaptive", vec![]), ("fixed-64", vec!["--shadow-max-in-flight", "64"])] {
        let record = scratch_file(&format!("budget-concurrency-{name}.jsonl"));
        let daemon = start_mirror(&trio, PORT, &record, "off", &extra);
        let answers = paced_load(&trio.client, production, rate, seconds, workers);
        // The last replays get their answers (200 ms) before the daemon is stopped.
        std::thread::sleep(Duration::from_millis(800));
        let finished = daemon.stop();
        assert!(finished.success, "{name}: {}", finished.stderr);
        assert!(answers.iter().all(|(status, _)| *status == 200), "{name}: production failed a request");
        let achieved = answers.len() as f64 / seconds as f64;
        assert!(achieved > f64::from(rate) * 0.9, "{name}: the load reached only {achieved:.0}/s");
        let with_p99 = p99(answers.iter().map(|(_, l)| *l).collect());
        let (records, share, reasons) = replayed_share(&record, answers.len());
        let limit = last_field(&finished.stderr, "max_in_flight");
        println!(
            "{name}: {} requests, {records} records, {:.1}% replayed and compared (not: {reasons:?}), \
             max_in_flight {limit:?}, production p99 {with_p99:?} (without the daemon {baseline_p99:?})",
            answers.len(),
            share * 100.0
        );
        assert!(records <= answers.len(), "{name}: at most one record per exchange");
        // Production is untouched: no proxy in its path, whatever the shadow does.
        assert!(
            with_p99 <= baseline_p99 * 3 + Duration::from_millis(5),
            "{name}: production p99 {with_p99:?} vs {baseline_p99:?} without the daemon"
        );
        shares.push((name, share, limit));
    }
    let (_, adaptive, limit) = shares[0];
    assert!(adaptive >= 0.99, "adaptive: only {:.1}% replayed", adaptive * 100.0);
    assert!(limit.is_some_and(|l| l >= 200), "adaptive limit {limit:?}: 1,000/s × 200 ms needs 200");
    let (_, fixed, limit) = shares[1];
    assert_eq!(limit, Some(64), "an explicit limit stays fixed");
    assert!(
        fixed < 0.9,
        "fixed 64 in flight cannot carry 1,000/s at 200 ms, yet {:.1}% replayed",
        fixed * 100.0
    );
}

/// Resident memory as the daemon holds it (see the module's header), in bytes.
fn held_memory(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut ring) = (0u64, 0u64);
    let mut in_ring = false;
    for line in smaps.lines() {
        if line.split_whitespace().next().is_some_and(|f| f.contains('-') && f.len() > 8) {
            in_ring = line.contains("anon_inode:bpf-map");
        } else if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            total += kb << 10;
            if in_ring {
                ring += kb << 10;
            }
        }
    }
    total - ring / 2
}

#[test]
fn memory_stays_within_a_small_budget_under_overload() {
    if !kernel_tests_allowed("memory_stays_within_a_small_budget_under_overload") {
        return;
    }
    const BUDGET: u64 = 48 << 20;
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1", 0);
    // A slow shadow: replays and their bodies pile up unless the budget holds them back.
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2", 300);
    let record = scratch_file("budget-overload.jsonl");
    let daemon =
        start_mirror(&trio, PORT, &record, "off", &["--memory-limit", "48MiB", "--shadow-queue", "4096"]);
    let pid = daemon.child.id();
    let production = SocketAddr::from((trio.production_addr, PORT));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let now = held_memory(pid);
                if now > peak {
                    peak = now;
                    if std::env::var_os("BUDGET_DEBUG").is_some() {
                        let status =
                            std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                        let rss: Vec<&str> = status
                            .lines()
                            .filter(|l| l.starts_with("Rss") || l.starts_with("VmRSS"))
                            .collect();
                        eprintln!("peak {} KiB: {rss:?}", now >> 10);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    // As fast as possible for 6 s: 16 connections, 256 KiB bodies each way.
    let (seconds, workers, size) = (6u64, 16u64, 256 << 10);
    let sent: usize = trio.client.run(move || {
        let threads: Vec<_> = (0..workers)
            .map(|w| {
                std::thread::spawn(move || {
                    let mut conn = connect(production);
                    let host = production.to_string();
                    let body: Vec<u8> = (0..size).map(|i| b'a' + ((i as u64 + w) % 26) as u8).collect();
                    let path = format!("/blob?size={size}");
                    let begin = Instant::now();
                    let mut n = 0;
                    while begin.elapsed() < Duration::from_secs(seconds) {
                        let (status, _, _) = post_json(&mut conn, &host, &path, &body);
                        assert_eq!(status, 200, "production answers every request");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("load worker")).sum()
    });
    std::thread::sleep(Duration::from_millis(500));
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let counted: Vec<(&str, Option<u64>)> =
        ["memory_budget", "memory_limit", "memory_limit_events", "ringbuf_full", "queue_full"]
            .into_iter()
            .map(|name| (name, last_field(&finished.stderr, name)))
            .collect();
    let (records, share, reasons) = replayed_share(&record, sent);
    println!(
        "{sent} requests of {} KiB in {seconds} s ({:.0}/s, {:.0} MiB/s each way); held memory peak {:.1} MiB \
         of a {} MiB budget; {records} records, {:.1}% compared (not: {reasons:?}); counted {counted:?}",
        size >> 10,
        sent as f64 / seconds as f64,
        (sent * size) as f64 / seconds as f64 / f64::from(1 << 20),
        peak as f64 / f64::from(1 << 20),
        BUDGET >> 20,
        share * 100.0
    );
    assert!(peak > 0, "memory was sampled");
    assert!(peak <= BUDGET, "held memory peaked at {peak} B, over the {BUDGET} B budget");
    let memory_losses: u64 = counted.iter().take(3).filter_map(|(_, v)| *v).sum();
    assert!(memory_losses > 0, "the overflow is counted: {counted:?}");
    assert!(
        finished.stderr.contains("memory budget") && finished.stderr.contains("ring_buffer=4MiB"),
        "the start-up line says how the budget is split"
    );
}
