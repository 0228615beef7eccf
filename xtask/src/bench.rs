//! `cargo xtask bench`: what the daemon costs and how much it can take, measured.
//!
//! Parts, chosen with `--which` (`all`, the default, runs every part in this order):
//!
//! - `pipeline` (criterion, `mirror-daemon/benches/pipeline.rs`): TCP reassembly + HTTP/1.1
//!   framing throughput per core for 1 KiB and 100 KiB bodies, and the live-heap change per
//!   exchange on long-lived connections; then `mirror-daemon/benches/shards.rs`: the same stage
//!   on 1 and 2 worker threads (`assembler::shards`) against one assembler inline.
//! - `pipeline-h2` (criterion, `mirror-daemon/benches/h2_grpc.rs`): HTTP/2 framing + HPACK + gRPC
//!   per core on gRPC traffic recorded from the `h2` crate (1 KiB and 1 MiB messages, cut into
//!   1448 B, 16 KiB and 64 KiB segments): exchanges/s, message GB/s against the 1 GB/s target
//!   for 1 MiB messages, and the live-heap change per exchange.
//! - `records` (criterion, `mirror-daemon/benches/records.rs`): the record writer with rotation
//!   on — 1 KiB records pushed as the reporter does, appended, rotated every 16 MiB, rotated files
//!   gzip-compressed in the background (or not): records/s and MB/s sustained.
//! - `mirror` (needs root, `bench/mirror.rs`): shadow mirror side by side with no mirror and with
//!   nginx's inline `mirror`, nginx answering 1 KiB JSON as production and shadow, open-loop load on
//!   64 keep-alive connections at each of `--rates` (`max`: as fast as answered), the three modes
//!   interleaved and `--repeats` times; then short connections at `--short-rates`, a shadow
//!   answering in 200 ms at `--slow-rate`, shadow mirror at 2x and 5x its lossless rate, and issue
//!   12's Targets, each with its measured value and pass/fail.
//! - `mirror-grpc` (needs root): the same topology with gRPC: production and shadow are the
//!   grpcio Open Inference Protocol servers of the test support (`tests/python/oip_server.py`),
//!   the client makes unary `ModelInfer` calls at each of `--grpc-rates`, over each number of
//!   long-lived HTTP/2 connections in `--grpc-connections`. The default client is nghttp2's
//!   `h2load` (`--grpc-client h2load`): written in C, it takes less of the shared cores than the
//!   grpcio client and holds the asked pace (`--rps` per connection) to higher rates. It sends one
//!   `ModelInfer` request of 2 rows (written by `grpc_client.py`'s own encoder) for every call and
//!   checks HTTP statuses only. `--grpc-client python` runs `tests/python/grpc_client.py` instead:
//!   a distinct request of 1–4 rows per call, each call's gRPC status checked.
//!
//! - `mirror-llm` (needs root, `bench/llm.rs`): 1,000 streamed LLM answers of 200 events open at
//!   once through the same topology: daemon CPU and RSS, the share of streams compared, and
//!   production's TTFT with and without the daemon.
//! - `verdict` (needs root): `GET /verdict` latency on the daemon's metrics listener, each request
//!   on a new connection as an analysis tool makes it: idle, then while the daemon mirrors
//!   `--verdict-rate` requests/s, first one client asking in a loop, then `--verdict-clients` at
//!   once; p50/p99/max of each phase, and production's p99 and the share compared meanwhile.
//!
//! - `kernel` (needs root, `bench/kernel.rs`): the kernel programs' ns per packet from bpf_stats,
//!   under bounded loads of small exchanges and of 64 KiB bodies (GSO super-packets on TC).
//!
//! `mirror-grpc` runs each rate once without the daemon and once with it mirroring every request
//! (100% sampling) to the shadow, and reports production p50/p99 latency with and without (as the
//! client measured it), the daemon's CPU (user + system, % of one core, over the load) and RSS, and
//! how many exchanges were compared; the highest rate with less than 0.1% not compared and at least
//! 95% of the asked rate achieved is the headline. Nothing is expected: every number is what was
//! measured on this machine, whose cores client, servers and daemon share.
//!
//! Flags: `--which pipeline|pipeline-h2|records|mirror|mirror-grpc|mirror-llm|verdict|kernel|all`,
//! `--seconds S` (load per rate and mode, default 5), `--rates R,...` (HTTP/1.1 requests/s or `max`, default 6000,10000,20000,max),
//! `--repeats N` (default 2), `--short-rates R,...` (new connections/s, default 1000,2000,5000),
//! `--slow-rate R` (default 1000), `--daemon-workers N` (the daemon's `--workers`), `--perf-record DIR` (`perf record` each shadow-mirror run), `--daemon-logs DIR` (keep each run's log, a summary a second),
//! `--grpc-rates R,...` (calls/s, default 250,500,1000,2000,3000), `--grpc-connections N,...`
//! (default 1,4), `--grpc-concurrency C` (calls in flight at most, across the connections, default
//! 64: the pacing is open-loop until that many are waiting), `--grpc-client h2load|python`
//! (default h2load), `--verdict-rate R` (default 1000), `--verdict-clients C` (default 8).
mod kernel;
mod llm;
mod mirror;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use mirror_tests::{
    ChildGuard,
    client::{connect, post_json},
    grpc::{self, ClientOptions, Rpc, ServerKind},
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Trio},
    python,
};

use crate::{
    build::{self, BuildArgs},
    util::{cargo, is_root, run_command, workspace_root},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// HTTP/1.1 reassembly + framing (criterion).
    Pipeline,
    /// HTTP/2 framing + HPACK + gRPC (criterion).
    PipelineH2,
    /// The record writer with rotation on (criterion).
    Records,
    /// HTTP/1.1 mirroring side by side with nginx `mirror` under load, judged on issue 12's Targets (root).
    Mirror,
    /// gRPC mirroring under load (root).
    MirrorGrpc,
    /// `GET /verdict` latency while the daemon mirrors load (root).
    Verdict,
    /// Streamed LLM answers mirrored, 1,000 open at once (root).
    MirrorLlm,
    /// The kernel programs' ns per packet, from bpf_stats (root).
    Kernel,
    /// Every part.
    All,
}

impl Which {
    fn includes(self, part: Which) -> bool {
        self == part || self == Which::All
    }
}

/// What drives the gRPC load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GrpcClient {
    /// nghttp2's `h2load`: one request body for every call, paced with `--rps` per connection.
    H2load,
    /// `tests/python/grpc_client.py` on grpcio: a distinct request per call, per-call status and latency.
    Python,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmarks to run.
    #[arg(long, value_enum, default_value_t = Which::All)]
    pub which: Which,
    /// Request rates (per second, or `max`: as fast as answered) of the HTTP/1.1 mirror benchmark.
    #[arg(long, value_delimiter = ',', default_value = "6000,10000,20000,max")]
    pub rates: Vec<mirror::Rate>,
    /// Runs of each mode at each rate in the HTTP/1.1 mirror benchmark, interleaved.
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// New connections per second (one request each) tried by the HTTP/1.1 mirror benchmark.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000")]
    pub short_rates: Vec<u32>,
    /// Requests/s of the HTTP/1.1 mirror benchmark's slow-shadow case (the shadow answers in 200 ms).
    #[arg(long, default_value_t = 1000)]
    pub slow_rate: u32,
    /// Rebuilding threads of the daemon in the HTTP/1.1 mirror benchmark (`--workers`; default: the
    /// daemon's own default, the cores it may use, at most 4).
    #[arg(long, value_name = "N")]
    pub daemon_workers: Option<u16>,
    /// Record each shadow-mirror run of the HTTP/1.1 mirror benchmark with `perf record` into
    /// this directory (`perf-RATE-REPEAT.data`; read with `perf report -i FILE`).
    #[arg(long)]
    pub perf_record: Option<PathBuf>,
    /// Keep the JSON log of each shadow-mirror run of the HTTP/1.1 mirror benchmark in this
    /// directory (`daemon-RATE-REPEAT.log`), with a summary every second: memory, queues and
    /// losses over the run.
    #[arg(long)]
    pub daemon_logs: Option<PathBuf>,
    /// Seconds of load per rate and mode.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Call rates (per second) tried by the gRPC mirror benchmark.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,3000")]
    pub grpc_rates: Vec<u32>,
    /// Long-lived HTTP/2 connections the gRPC calls are dealt over; each count is a run of its own.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub grpc_connections: Vec<usize>,
    /// Most gRPC calls in flight at once, across the connections.
    #[arg(long, default_value_t = 64)]
    pub grpc_concurrency: usize,
    /// The gRPC load generator.
    #[arg(long, value_enum, default_value_t = GrpcClient::H2load)]
    pub grpc_client: GrpcClient,
    /// Requests/s mirrored while `/verdict` is asked (the verdict benchmark).
    #[arg(long, default_value_t = 1000)]
    pub verdict_rate: u32,
    /// Clients asking `/verdict` at once in the concurrent phase of the verdict benchmark.
    #[arg(long, default_value_t = 8)]
    pub verdict_clients: usize,
    #[command(flatten)]
    pub llm: llm::LlmBenchArgs,
}

/// Runs one criterion benchmark of the daemon crate.
fn criterion_bench(name: &str) -> Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root()).args([
        "bench",
        "--package",
        "mirror-daemon",
        "--bench",
        name,
        "--",
        "--noplot",
    ]);
    run_command(&mut cmd)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.which.includes(Which::Pipeline) {
        criterion_bench("pipeline")?;
        criterion_bench("shards")?;
    }
    if args.which.includes(Which::PipelineH2) {
        criterion_bench("h2_grpc")?;
    }
    if args.which.includes(Which::Records) {
        criterion_bench("records")?;
    }
    let mirror_parts = [Which::Mirror, Which::MirrorGrpc, Which::Verdict, Which::MirrorLlm];
    if mirror_parts.iter().any(|&part| args.which.includes(part)) {
        if !is_root() {
            bail!("the mirror benchmarks create network namespaces and load eBPF programs: run them as root");
        }
        let daemon_bin = build::run_build(&BuildArgs { debug: false })?;
        if args.which.includes(Which::Mirror) {
            mirror::run(args, &daemon_bin)?;
        }
        if args.which.includes(Which::MirrorGrpc) {
            mirror_grpc(args, &daemon_bin)?;
        }
        if args.which.includes(Which::Verdict) {
            verdict(args, &daemon_bin)?;
        }
        if args.which.includes(Which::MirrorLlm) {
            llm::run(&args.llm, &daemon_bin)?;
        }
    }
    if args.which.includes(Which::Kernel) {
        kernel::run()?;
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
    /// How long the load lasted (the daemon's CPU share is over this).
    seconds: f64,
}

/// Quantile `q` of sorted latencies, in milliseconds (0 when there are none).
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// A load run's figures from per-call (start, latency, failed) triples.
fn load_of(mut calls: Vec<(Duration, Duration, bool)>) -> Load {
    let first = calls.iter().map(|c| c.0).min().unwrap_or_default();
    let last = calls.iter().map(|c| c.0 + c.1).max().unwrap_or_default();
    let seconds = last.saturating_sub(first).as_secs_f64().max(1e-9);
    let failed = calls.iter().filter(|c| c.2).count();
    calls.sort_by_key(|c| c.1);
    let latencies: Vec<Duration> = calls.iter().map(|c| c.1).collect();
    Load {
        sent: calls.len(),
        failed,
        achieved_rps: calls.len() as f64 / seconds,
        p50_ms: quantile_ms(&latencies, 0.5),
        p99_ms: quantile_ms(&latencies, 0.99),
        seconds,
    }
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
    let quantile = |q: f64| quantile_ms(&latencies, q);
    Load {
        sent: latencies.len(),
        failed,
        achieved_rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        seconds: elapsed.as_secs_f64(),
    }
}

/// How one gRPC load run is shaped.
#[derive(Clone, Copy, Debug)]
struct GrpcPlan {
    rate: u32,
    seconds: u64,
    connections: usize,
    concurrency: usize,
    client: GrpcClient,
}

/// `plan.rate` unary `ModelInfer` calls/s to `target` for `plan.seconds`, from `ns`. `scratch`
/// holds the client's files (`request` is h2load's request body).
fn grpc_load(ns: &Netns, target: SocketAddr, plan: GrpcPlan, scratch: &Path, request: &Path) -> Result<Load> {
    let calls = usize::try_from(u64::from(plan.rate) * plan.seconds)?.max(plan.connections);
    match plan.client {
        GrpcClient::Python => {
            let options = ClientOptions {
                concurrency: plan.concurrency,
                channels: plan.connections,
                rate: Some(f64::from(plan.rate)),
                id_prefix: format!("bench-{}-{}-", plan.rate, plan.connections),
                ..ClientOptions::new(Rpc::Infer, target, calls)
            };
            let truth = grpc::run_client(ns, &options, &scratch.join("truth.jsonl"));
            Ok(load_of(
                truth
                    .iter()
                    .map(|t| {
                        let latency = Duration::from_secs_f64(t.latency_ms.unwrap_or(0.0).max(0.0) / 1e3);
                        (Duration::from_nanos(t.sent_unix_ns), latency, t.code != 0)
                    })
                    .collect(),
            ))
        }
        GrpcClient::H2load => {
            let log = scratch.join("h2load.tsv");
            let _ = std::fs::remove_file(&log);
            let streams = plan.concurrency.div_ceil(plan.connections).max(1);
            let per_connection = f64::from(plan.rate) / plan.connections as f64;
            let out = ns
                .command("h2load")
                .args(["-n", &calls.to_string(), "-c", &plan.connections.to_string()])
                .args(["-m", &streams.to_string(), "--rps", &format!("{per_connection:.3}")])
                .arg("-d")
                .arg(request)
                .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                .arg("--log-file")
                .arg(&log)
                .arg(format!("http://{target}{}", Rpc::Infer.path()))
                .stdin(Stdio::null())
                .output()
                .context("run h2load (Debian: nghttp2-client)")?;
            if !out.status.success() {
                bail!("h2load failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            // start (µs since the epoch), HTTP status, µs until the end of the response.
            let text = std::fs::read_to_string(&log).context("h2load's log file")?;
            let mut rows = Vec::new();
            for line in text.lines() {
                let fields: Vec<u64> = line.split('\t').filter_map(|f| f.trim().parse().ok()).collect();
                if let [start, status, micros, ..] = fields[..] {
                    rows.push((Duration::from_micros(start), Duration::from_micros(micros), status != 200));
                }
            }
            // Calls that never finished are in h2load's summary, not in its log.
            let missing = calls.saturating_sub(rows.len());
            let mut load = load_of(rows);
            load.failed += missing;
            Ok(load)
        }
    }
}

/// The framed `ModelInfer` request `grpc_client.py` sends as call 0 (two rows), for h2load.
fn grpc_request_body(path: &Path) -> Result<()> {
    let env = python::env();
    let code = "import sys, struct; sys.path.insert(0, sys.argv[1]); import grpc_client; \
        args = grpc_client.parse_args(['infer', '--target', 'x', '--rows', '2', '--id-prefix', 'h2load-']); \
        plan = grpc_client.Plan(args); message = plan.infer_request(0, plan.features_raw(0)); \
        open(sys.argv[2], 'wb').write(b'\\x00' + struct.pack('>I', len(message)) + message)";
    let out = std::process::Command::new(&env.python)
        .arg("-c")
        .arg(code)
        .arg(python::scripts_dir())
        .arg(path)
        .env("PYTHONPATH", &env.stubs)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .context("run the Python environment's interpreter")?;
    if !out.status.success() {
        bail!("writing h2load's request failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
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

/// What the daemon took during one mirrored run, and what it compared.
struct DaemonUse {
    /// User + system time over the load, as a share of one core.
    cpu: f64,
    rss_mib: f64,
    peak_mib: f64,
    /// Records with a verdict (not `not_compared`).
    compared: usize,
    /// Records per verdict (`not_compared` per reason), e.g. `match=2400 not_compared:queue_full=3`.
    verdicts: String,
    /// Exchanges the daemon rebuilt, its non-zero pipeline losses and replay counters, from its final
    /// summary.
    summary: String,
}

/// The daemon's final summary: exchanges rebuilt, kernel counters, pipeline losses, replay counters.
fn final_summary(log: &str) -> String {
    let Some(line) = log.lines().rev().find(|l| l.contains("\"final summary\"")) else {
        return "no final summary logged".into();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    let fields = v.get("fields").unwrap_or(&v);
    let field = |key: &str| match &fields[key] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) if s.is_empty() => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "rebuilt {}; kernel: {}; pipeline losses: {}; replay: {}",
        field("exchanges"),
        field("kernel"),
        field("drops"),
        field("replay")
    )
}

/// Spawns the daemon `command` describes with its stderr read as it comes (so a chatty daemon
/// never blocks on a full pipe); the thread gives the whole log back once the daemon exits.
fn spawn_logged(
    command: &mut std::process::Command,
) -> Result<(ChildGuard, std::thread::JoinHandle<String>)> {
    let mut child = command.stderr(Stdio::piped()).spawn().context("start mirror-daemon")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    Ok((ChildGuard(child), log))
}

/// Records per verdict, `not_compared` split by reason.
fn verdicts(record: &Path) -> (usize, String) {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut compared = 0;
    for r in mirror_tests::read_records(record) {
        let verdict = r["verdict"].as_str().unwrap_or("none");
        let key = match r["reason"].as_str() {
            Some(reason) if verdict == "not_compared" => format!("not_compared:{reason}"),
            _ => {
                compared += 1;
                verdict.to_string()
            }
        };
        *counts.entry(key).or_default() += 1;
    }
    let text = counts.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" ");
    (compared, text)
}

/// Starts the daemon in production's namespace on `port`, mirroring to `shadow_spec`, runs `load`
/// once it is attached, stops it and reads its record.
fn with_daemon(
    trio: &Trio,
    daemon_bin: &Path,
    port: u16,
    shadow_spec: &str,
    record: &Path,
    load: impl FnOnce() -> Result<Load>,
) -> Result<(Load, DaemonUse)> {
    let _ = std::fs::remove_file(record);
    let (mut daemon, log) = spawn_logged(
        trio.production
            .command(daemon_bin)
            .args(["--log-format", "json", "run", "--interface", &trio.production_if])
            .args(["--port", &port.to_string()])
            .args(["--shadow", shadow_spec, "--metrics-addr", "off", "--record"])
            .arg(record)
            // Warnings, and the summaries of the mirror loop (the final one counts every loss).
            .env("MIRROR_LOG", "warn,mirror_daemon::mirror=info"),
    )?;
    let pid = daemon.0.id();
    // Attached when the kernel programs show up; the JSON log is quiet at warn.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu_before = cpu_seconds(pid);
    let with = load()?;
    let cpu = (cpu_seconds(pid) - cpu_before) / with.seconds;
    let (rss_mib, peak_mib) = rss_mib(pid);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = daemon.0.wait()?;
    let log = log.join().unwrap_or_default();
    if !status.success() {
        bail!("mirror-daemon failed: {log}");
    }
    let (compared, verdicts) = verdicts(record);
    Ok((with, DaemonUse { cpu, rss_mib, peak_mib, compared, verdicts, summary: final_summary(&log) }))
}

fn print_table_head() {
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
}

/// Prints one rate's row; returns whether it counts for the headline (< 0.1% not compared, at
/// least 95% of the asked rate achieved).
fn print_row(rate: u32, without: &Load, with: &Load, daemon: &DaemonUse) -> bool {
    let lost = 100.0 * (with.sent.saturating_sub(daemon.compared)) as f64 / with.sent.max(1) as f64;
    println!(
        "{rate:>6} | {:>7.0}/s {:>8.2} {:>8.2} | {:>7.0}/s {:>8.2} {:>8.2} | {:>5.0}% {:>8.1} {:>8.1} | {:>9} {:>7.3}",
        without.achieved_rps,
        without.p50_ms,
        without.p99_ms,
        with.achieved_rps,
        with.p50_ms,
        with.p99_ms,
        daemon.cpu * 100.0,
        daemon.rss_mib,
        daemon.peak_mib,
        daemon.compared,
        lost
    );
    if daemon.compared < with.sent || daemon.verdicts.split(' ').any(|v| !v.starts_with("match=")) {
        println!("         records: {}; {}", daemon.verdicts, daemon.summary);
    }
    lost < 0.1 && with.achieved_rps >= 0.95 * f64::from(rate)
}

fn print_headline(best: Option<u32>, what: &str) {
    match best {
        Some(rate) => println!("\nhighest rate mirrored with < 0.1% of {what} not compared: {rate}/s"),
        None => println!("\nno rate was mirrored with < 0.1% of {what} not compared"),
    }
    println!("(CPU is the daemon's user+system time over the load, in % of one core.)");
}

/// The gRPC port of production and shadow (Triton's and the tests' choice).
const GRPC_PORT: u16 = 8081;

fn mirror_grpc(args: &BenchArgs, daemon_bin: &Path) -> Result<()> {
    let trio = Trio::new();
    let production = SocketAddr::from((trio.production_addr, GRPC_PORT));
    let shadow = SocketAddr::from((trio.shadow_addr, GRPC_PORT));
    let _v1 =
        grpc::start_server(ServerKind::Oip, &trio.production, &[production], &grpc::ServerOptions::default())
            .context("start the production gRPC model server")?;
    let v2 = grpc::ServerOptions { version: "2".into(), ..grpc::ServerOptions::default() };
    let _v2 = grpc::start_server(ServerKind::Oip, &trio.shadow, &[shadow], &v2)
        .context("start the shadow gRPC model server")?;
    let scratch = std::env::temp_dir().join(format!("shadow-mirror-bench-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let record = scratch.join("record.jsonl");
    let request = scratch.join("request.bin");
    if args.grpc_client == GrpcClient::H2load {
        grpc_request_body(&request)?;
    }
    let client = match args.grpc_client {
        GrpcClient::Python => "grpcio client (tests/python/grpc_client.py), ModelInfer calls of 1-4 rows",
        GrpcClient::H2load => "h2load, one ModelInfer request of 2 rows",
    };
    println!(
        "\nmirror benchmark (gRPC over h2c): {} s per rate, {client}, at most {} calls in flight,",
        args.seconds, args.grpc_concurrency
    );
    println!(
        "grpcio OIP servers; 100% sampling to one shadow; client, production, shadow and daemon share this \
         machine's cores."
    );
    let shadow_spec = format!("model-v2=h2c://{shadow}");
    for &connections in &args.grpc_connections {
        println!("\n{connections} long-lived HTTP/2 connection{}:", if connections == 1 { "" } else { "s" });
        print_table_head();
        let mut best: Option<u32> = None;
        for &rate in &args.grpc_rates {
            let plan = GrpcPlan {
                rate,
                seconds: args.seconds,
                connections,
                concurrency: args.grpc_concurrency,
                client: args.grpc_client,
            };
            let without = grpc_load(&trio.client, production, plan, &scratch, &request)?;
            let (with, daemon) = with_daemon(&trio, daemon_bin, GRPC_PORT, &shadow_spec, &record, || {
                grpc_load(&trio.client, production, plan, &scratch, &request)
            })
            .with_context(|| format!("at {rate}/s over {connections} connection(s)"))?;
            if print_row(rate, &without, &with, &daemon) {
                best = Some(rate);
            }
            if without.failed + with.failed > 0 {
                bail!(
                    "production calls failed at {rate}/s over {connections} connection(s): {} without, {} \
                     with the daemon",
                    without.failed,
                    with.failed
                );
            }
        }
        print_headline(best, &format!("calls over {connections} connection(s)"));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Where the verdict benchmark's daemon serves, inside production's namespace.
const VERDICT_ADDR: &str = "127.0.0.1:19480";

/// One `GET path` on a new connection to the daemon: (latency, body bytes, status).
fn get_verdict(path: &str) -> (Duration, usize, u16) {
    let started = Instant::now();
    let mut stream = connect(VERDICT_ADDR.parse().expect("address"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {VERDICT_ADDR}\r\nConnection: close\r\n\r\n");
    std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send");
    let raw = mirror_tests::client::read_response(&mut stream).expect("a /verdict answer");
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap_or(0);
    (started.elapsed(), raw.len(), status)
}

/// `clients` threads in production's namespace, each asking `path` until `until` or `max` asks.
fn ask_verdicts(
    trio: &Trio,
    path: &'static str,
    clients: usize,
    until: Duration,
    max: usize,
) -> Vec<Duration> {
    let ns = &trio.production;
    let mut all: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(move || {
                    ns.run(move || {
                        let begin = Instant::now();
                        let mut latencies = Vec::new();
                        while begin.elapsed() < until && latencies.len() < max {
                            let (latency, _, status) = get_verdict(path);
                            assert_eq!(status, 200, "GET {path}");
                            latencies.push(latency);
                        }
                        latencies
                    })
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    all.sort();
    all
}

fn print_verdict_row(phase: &str, latencies: &[Duration]) {
    let max = latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3);
    println!(
        "{phase:<44} {:>7} {:>9.3} {:>9.3} {:>9.3}",
        latencies.len(),
        quantile_ms(latencies, 0.5),
        quantile_ms(latencies, 0.99),
        max
    );
}

fn verdict(args: &BenchArgs, daemon_bin: &Path) -> Result<()> {
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
        std::env::temp_dir().join(format!("shadow-mirror-bench-verdict-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&record);
    let child = trio
        .production
        .command(daemon_bin)
        .args(["--log-format", "json", "run", "--interface", &trio.production_if, "--port", "8080"])
        .args(["--shadow", &format!("model-v2=http://{shadow}"), "--metrics-addr", VERDICT_ADDR])
        .arg("--record")
        .arg(&record)
        .env("MIRROR_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .context("start mirror-daemon")?;
    let mut daemon = ChildGuard(child);
    std::thread::sleep(Duration::from_millis(1500));
    let seconds = Duration::from_secs(args.seconds);
    let (_, bytes, _) = trio.production.run(|| get_verdict("/verdict"));

    println!(
        "\n/verdict benchmark: each GET on a new connection from production's namespace to the daemon's \
         listener;"
    );
    println!(
        "load: {}/s OIP requests mirrored to one shadow (100% sampling), {} s per loaded phase; \
         the document is {bytes} bytes idle.\n",
        args.verdict_rate, args.seconds
    );
    println!("{:<44} {:>7} {:>9} {:>9} {:>9}", "phase", "GETs", "p50 ms", "p99 ms", "max ms");
    print_verdict_row("idle, 1 client, /verdict", &ask_verdicts(&trio, "/verdict", 1, seconds, 2_000));
    let mut production_p99 = Vec::new();
    for (phase, path, clients) in [
        ("under load, 1 client, /verdict", "/verdict", 1),
        ("under load, 1 client, /verdict/model-v2", "/verdict/model-v2", 1),
        ("under load, N clients, /verdict", "/verdict", args.verdict_clients),
    ] {
        let (asked, load) = std::thread::scope(|scope| {
            let load = scope.spawn(|| load(&trio.client, production, args.verdict_rate, args.seconds));
            let asked = ask_verdicts(&trio, path, clients, seconds, 200_000);
            (asked, load.join().expect("load thread"))
        });
        let phase = phase.replace("N clients", &format!("{clients} clients"));
        print_verdict_row(&phase, &asked);
        production_p99.push(format!("{:.0}/s p99 {:.2} ms", load.achieved_rps, load.p99_ms));
    }
    let (_, bytes, _) = trio.production.run(|| get_verdict("/verdict"));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGINT) };
    let status = daemon.0.wait()?;
    if !status.success() {
        bail!("mirror-daemon failed ({status})");
    }
    let (compared, verdicts) = verdicts(&record);
    let _ = std::fs::remove_file(&record);
    println!("\nproduction meanwhile: {}", production_p99.join("; "));
    println!("compared: {compared} ({verdicts}); the document is {bytes} bytes at the end");
    Ok(())
}
