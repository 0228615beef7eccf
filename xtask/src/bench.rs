//! `cargo xtask bench`: what the daemon costs and how much it can take, measured.
//!
//! Two parts:
//!
//! - `pipeline` (criterion): TCP reassembly + HTTP framing throughput per core for 1 KiB and
//!   100 KiB bodies, and the live-heap change per exchange on long-lived connections.
//! - `mirror` (needs root): a client/production/shadow namespace topology under paced inference
//!   load at increasing rates. Each rate runs once without the daemon and once with it mirroring
//!   every request (100% sampling) to the shadow, and reports production p50/p99 latency with and
//!   without, the daemon's CPU and RSS, and the share of exchanges that were not compared. The
//!   highest rate with less than 0.1% lost is the headline.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use mirror_tests::{
    ChildGuard,
    client::{connect, post_json},
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Trio},
};

use crate::{
    build::{self, BuildArgs},
    util::{cargo, is_root, run_command, workspace_root},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Pipeline,
    Mirror,
    All,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmarks to run.
    #[arg(long, value_enum, default_value_t = Which::All)]
    pub which: Which,
    /// Request rates (per second) tried by the mirror benchmark.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,3000")]
    pub rates: Vec<u32>,
    /// Seconds of load per rate and mode.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if matches!(args.which, Which::Pipeline | Which::All) {
        let mut cmd = cargo();
        cmd.current_dir(workspace_root()).args([
            "bench",
            "--package",
            "mirror-daemon",
            "--bench",
            "pipeline",
            "--",
            "--noplot",
        ]);
        run_command(&mut cmd)?;
    }
    if matches!(args.which, Which::Mirror | Which::All) {
        if !is_root() {
            bail!("the mirror benchmark creates network namespaces and loads eBPF programs: run it as root");
        }
        mirror(args)?;
    }
    Ok(())
}

/// Client-side results of one load run.
struct Load {
    sent: usize,
    failed: usize,
    achieved_rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `rate` requests/s for `seconds` over 8 paced keep-alive connections.
fn load(ns: &Netns, server: SocketAddr, rate: u32, seconds: u64) -> Load {
    const WORKERS: u64 = 8;
    let per_worker = f64::from(rate) / WORKERS as f64;
    let (mut latencies, failed, elapsed) = ns.run(move || {
        let started = Instant::now();
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                std::thread::spawn(move || {
                    let mut conn = connect(server);
                    let host = server.to_string();
                    let begin = Instant::now();
                    let (mut latencies, mut failed) = (Vec::new(), 0usize);
                    let mut n = w;
                    while begin.elapsed() < Duration::from_secs(seconds) {
                        let rows: Vec<Vec<f64>> = (0..1 + n % 4)
                            .map(|r| (0..4).map(|f| ((n * 31 + r * 7 + f * 3) % 89) as f64 / 8.0).collect())
                            .collect();
                        let body = infer_request(&format!("bench-{n}"), &rows);
                        let (status, _, latency) =
                            post_json(&mut conn, &host, "/v2/models/demo/infer", &body);
                        latencies.push(latency);
                        failed += usize::from(status != 200);
                        n += WORKERS;
                        let due = Duration::from_secs_f64(latencies.len() as f64 / per_worker);
                        if let Some(wait) = due.checked_sub(begin.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    (latencies, failed)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut failed = 0;
        for w in workers {
            let (l, f) = w.join().unwrap_or_default();
            all.extend(l);
            failed += f;
        }
        (all, failed, started.elapsed())
    });
    latencies.sort();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Load {
        sent: latencies.len(),
        failed,
        achieved_rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let fields: Vec<&str> =
        stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// (current RSS, peak RSS) in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn mirror(args: &BenchArgs) -> Result<()> {
    let daemon_bin = build::run_build(&BuildArgs { debug: false })?;
    let server_bin = daemon_bin.with_file_name("model-server");
    let trio = Trio::new();
    let production = SocketAddr::from((trio.production_addr, 8080));
    let shadow = SocketAddr::from((trio.shadow_addr, 8080));
    let options = ServerOptions::default();
    let (_v1, _) = model_server::start(&server_bin, &trio.production, &[production], &options)
        .context("start the production model server")?;
    let (_v2, _) = model_server::start(&server_bin, &trio.shadow, &[shadow], &options)
        .context("start the shadow model server")?;
    let record: PathBuf =
        std::env::temp_dir().join(format!("shadow-mirror-bench-{}.jsonl", std::process::id()));

    println!(
        "\nmirror benchmark: {} s per rate, 8 keep-alive client connections, OIP requests of 1-4 rows,",
        args.seconds
    );
    println!(
        "100% sampling to one shadow; client, production, shadow and daemon share this machine's cores.\n"
    );
    println!(
        "{:>6} | {:>9} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>6} {:>8} {:>8} | {:>9} {:>7}",
        "rate",
        "no daemon",
        "p50 ms",
        "p99 ms",
        "mirrored",
        "p50 ms",
        "p99 ms",
        "CPU",
        "RSS MiB",
        "peak MiB",
        "compared",
        "lost %"
    );
    let mut best: Option<u32> = None;
    for &rate in &args.rates {
        let without = load(&trio.client, production, rate, args.seconds);

        let _ = std::fs::remove_file(&record);
        let shadow_spec = format!("model-v2=http://{shadow}");
        let mut child = trio
            .production
            .command(&daemon_bin)
            .args(["--log-format", "json", "run", "--interface", &trio.production_if, "--port", "8080"])
            .args(["--shadow", &shadow_spec, "--metrics-addr", "off", "--record"])
            .arg(&record)
            .env("MIRROR_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .context("start mirror-daemon")?;
        let stderr = child.stderr.take().context("stderr")?;
        let daemon = ChildGuard(child);
        let pid = daemon.0.id();
        // Attached when the kernel programs show up; the JSON log is quiet at warn.
        std::thread::sleep(Duration::from_millis(1500));
        let cpu_before = cpu_seconds(pid);
        let started = Instant::now();
        let with = load(&trio.client, production, rate, args.seconds);
        let cpu = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
        let (rss, peak) = rss_mib(pid);
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let mut daemon = daemon;
        let status = daemon.0.wait()?;
        let mut errors = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut errors)?;
        if !status.success() {
            bail!("mirror-daemon failed at {rate}/s: {errors}");
        }
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        let compared = text.lines().filter(|l| !l.contains("\"verdict\":\"not_compared\"")).count();
        let lost = 100.0 * (with.sent.saturating_sub(compared)) as f64 / with.sent.max(1) as f64;
        println!(
            "{rate:>6} | {:>7.0}/s {:>8.2} {:>8.2} | {:>7.0}/s {:>8.2} {:>8.2} | {:>5.0}% {:>8.1} {:>8.1} | {:>9} {:>7.3}",
            without.achieved_rps,
            without.p50_ms,
            without.p99_ms,
            with.achieved_rps,
            with.p50_ms,
            with.p99_ms,
            cpu * 100.0,
            rss,
            peak,
            compared,
            lost
        );
        if without.failed + with.failed > 0 {
            bail!(
                "production requests failed at {rate}/s: {} without, {} with the daemon",
                without.failed,
                with.failed
            );
        }
        if lost < 0.1 && with.achieved_rps >= 0.95 * f64::from(rate) {
            best = Some(rate);
        }
    }
    let _ = std::fs::remove_file(&record);
    match best {
        Some(rate) => println!("\nhighest rate mirrored with < 0.1% of exchanges not compared: {rate}/s"),
        None => println!("\nno rate was mirrored with < 0.1% of exchanges not compared"),
    }
    println!("(CPU is the daemon's user+system time over the load, in % of one core.)");
    Ok(())
}
