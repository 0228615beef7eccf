//! `cargo xtask bench --which mirror-llm` (needs root): what the daemon costs while many streamed
//! LLM answers are open at once, and how many of them it compares.
//!
//! The client/production/shadow namespace topology of the other mirror parts, with the aiohttp
//! OpenAI-compatible server of the tests (`tests/python/llm_server.py`) as production and as the
//! candidate (which words `--llm-differ-percent` of its answers differently). Every answer is
//! `--llm-events` events long (a role chunk, the tokens, a finish chunk, `[DONE]`), the first after
//! `--llm-ttft-ms` and each later token after `--llm-token-delay-ms`, so streams overlap. The load
//! client (`tests/python/llm_load.py`) opens `--llm-streams` chat completions at once, one
//! connection each, on aiohttp's asyncio client: one event loop holds a thousand open streams,
//! which the `openai` package's one-thread-per-call client of the integration tests cannot, and it
//! closes each connection as soon as it reads `[DONE]`, as the `openai` client does. It reports
//! the most streams open at the same moment, so a run that did not really overlap shows it.
//!
//! The load runs once without the daemon and once with it (100% sampling, shadow concurrency as
//! large as the load's, so the candidate sees production's concurrency): production's TTFT p50/p99
//! as the client measured it, with and without; the daemon's CPU (user + system, % of one core)
//! over the load, and over the load plus the time the shadow's streams took to finish; its RSS
//! sampled through the run and its peak (`VmHWM`); the share of streams compared (comparison
//! records ÷ streams the client completed), the records' verdicts and stream ends, production's
//! TTFT as the daemon measured it on the wire, and every loss counter of the daemon's final
//! summary. Client, servers and daemon share the machine's cores: the Python servers are the
//! bottleneck, and their pace sets how long a run takes.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use mirror_tests::{
    llm::{self, ServerOptions},
    netns::{Netns, Trio},
    python,
};
use serde_json::Value;

use super::{cpu_seconds, final_summary, rss_mib};

/// The daemon's `--memory-limit` in this benchmark.
const LLM_MEMORY_LIMIT: &str = "1GiB";

/// Options of the streamed-LLM mirror benchmark.
#[derive(Debug, Args)]
pub struct LlmBenchArgs {
    /// Streamed answers open at once (one connection each).
    #[arg(long, default_value_t = 1000)]
    pub llm_streams: usize,
    /// Events per answer, `[DONE]` included (at least 4: role, a token, finish, `[DONE]`).
    #[arg(long, default_value_t = 200)]
    pub llm_events: u32,
    /// The servers' delay before the first token.
    #[arg(long, default_value_t = 50.0)]
    pub llm_ttft_ms: f64,
    /// The servers' delay before each later token.
    #[arg(long, default_value_t = 20.0)]
    pub llm_token_delay_ms: f64,
    /// Share (0–100) of the candidate's answers worded differently.
    #[arg(long, default_value_t = 5.0)]
    pub llm_differ_percent: f64,
}

/// The port of both LLM servers.
const PORT: u16 = 8000;
/// The route every stream takes.
const ROUTE: &str = "POST /v1/chat/completions";

/// What `llm_load.py` printed.
struct LoadRun {
    completed: usize,
    failed: String,
    peak_open: u64,
    events: (u64, u64),
    ttft_ms: (f64, f64),
    e2e_ms: (f64, f64),
    seconds: f64,
}

/// Runs `llm_load.py` from `ns` against `target`.
fn load(ns: &Netns, target: SocketAddr, args: &LlmBenchArgs, id_prefix: &str) -> Result<LoadRun> {
    let out = python::env()
        .script_in(ns, "llm_load.py")
        .arg("--url")
        .arg(format!("http://{target}/v1/chat/completions"))
        .args(["--streams", &args.llm_streams.to_string(), "--id-prefix", id_prefix])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("run tests/python/llm_load.py")?;
    if !out.status.success() {
        bail!("llm_load.py failed ({})", out.status);
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("llm_load.py said {:?}", String::from_utf8_lossy(&out.stdout)))?;
    let q = |key: &str, at: &str| v[key][at].as_f64().unwrap_or(f64::NAN);
    let failed = v["failed"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    Ok(LoadRun {
        completed: v["completed"].as_u64().unwrap_or(0) as usize,
        failed: if failed.is_empty() { "none".into() } else { failed },
        peak_open: v["peak_open"].as_u64().unwrap_or(0),
        events: (v["events_min"].as_u64().unwrap_or(0), v["events_max"].as_u64().unwrap_or(0)),
        ttft_ms: (q("ttft_ms", "p50"), q("ttft_ms", "p99")),
        e2e_ms: (q("e2e_ms", "p50"), q("e2e_ms", "p99")),
        seconds: v["seconds"].as_f64().unwrap_or(0.0),
    })
}

/// Lines in the record file so far.
fn record_lines(record: &Path) -> usize {
    std::fs::read(record).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

/// What the records of the mirrored run say.
#[derive(Default)]
struct RecordTally {
    /// Records with a verdict (not `not_compared`) on the benchmark's route.
    compared: usize,
    /// Records per verdict (`not_compared` per reason).
    verdicts: BTreeMap<String, usize>,
    /// Production stream ends (`done`, `open`, ...).
    ends: BTreeMap<String, usize>,
    /// Production TTFT as the daemon measured it on the wire, sorted.
    wire_ttft_ms: Vec<f64>,
    exact: usize,
}

fn tally(record: &Path) -> RecordTally {
    let mut t = RecordTally::default();
    for r in mirror_tests::read_records(record) {
        if r["route"].as_str() != Some(ROUTE) {
            continue;
        }
        let verdict = r["verdict"].as_str().unwrap_or("none");
        let key = match r["reason"].as_str() {
            Some(reason) if verdict == "not_compared" => format!("not_compared:{reason}"),
            _ => {
                t.compared += 1;
                verdict.to_string()
            }
        };
        *t.verdicts.entry(key).or_default() += 1;
        let end = r["production"]["stream_end"].as_str().unwrap_or("none").to_string();
        *t.ends.entry(end).or_default() += 1;
        t.wire_ttft_ms.extend(r["production"]["ttft_ms"].as_f64());
        t.exact += usize::from(r["metrics"]["text_equal"].as_bool() == Some(true));
    }
    t.wire_ttft_ms.sort_by(f64::total_cmp);
    t
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn counts(map: &BTreeMap<String, usize>) -> String {
    map.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" ")
}

/// The most `buffered_bytes` (reassembly and framing buffers) and tracked `connections` any
/// summary of the daemon's JSON log reported.
fn buffered_max(log: &str) -> (u64, u64) {
    let mut max = (0, 0);
    for line in log.lines().filter(|l| l.contains("summary")) {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let fields = v.get("fields").unwrap_or(&v);
        max.0 = max.0.max(fields["buffered_bytes"].as_u64().unwrap_or(0));
        max.1 = max.1.max(fields["connections"].as_u64().unwrap_or(0));
    }
    max
}

/// What the daemon took and did in the mirrored run.
struct DaemonRun {
    load: LoadRun,
    /// Share of one core over the load.
    cpu_load: f64,
    /// Share of one core from the load's start until the last record, and that span.
    cpu_all: f64,
    all_seconds: f64,
    rss_max_mib: f64,
    peak_mib: f64,
    records: RecordTally,
    summary: String,
    /// The most buffered bytes and connections the daemon's summaries reported.
    buffered: (u64, u64),
}

fn mirrored(trio: &Trio, daemon_bin: &Path, shadow: SocketAddr, args: &LlmBenchArgs) -> Result<DaemonRun> {
    let record = std::env::temp_dir().join(format!("shadow-mirror-bench-llm-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&record);
    let in_flight = args.llm_streams.max(64).to_string();
    let queue = (args.llm_streams * 2).max(1024).to_string();
    let (mut daemon, log) = super::spawn_logged(
        trio.production
            .command(daemon_bin)
            .args(["--log-format", "json", "run", "--interface", &trio.production_if])
            .args(["--port", &PORT.to_string(), "--production-model", "llm-v1"])
            .args(["--shadow", &format!("llm-v2=http://{shadow}"), "--metrics-addr", "off"])
            .args([
                "--shadow-max-in-flight",
                &in_flight,
                "--shadow-queue",
                &queue,
                "--summary-interval",
                "1s",
            ])
            // 1,000 open streams hold ~38 MiB of partial answers on each side at once, more than
            // the framing and replay shares of the default 256MiB budget (which then sheds and
            // counts): the budget is raised to what this load needs, as a user running it would.
            .args(["--memory-limit", LLM_MEMORY_LIMIT])
            .arg("--record")
            .arg(&record)
            // Warnings, and the summaries of the mirror loop (the final one counts every loss).
            .env("MIRROR_LOG", "warn,mirror_daemon::mirror=info"),
    )?;
    let pid = daemon.0.id();
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(status) = daemon.0.try_wait()? {
        bail!("mirror-daemon exited at start ({status}): {}", log.join().unwrap_or_default());
    }
    let cpu_before = cpu_seconds(pid);
    let began = Instant::now();
    // RSS sampled while the load runs and while the shadow's streams finish.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut max = 0.0f64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(rss_mib(pid).0);
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        })
    };
    let run = load(&trio.client, SocketAddr::from((trio.production_addr, PORT)), args, "mirrored-");
    let cpu_load = (cpu_seconds(pid) - cpu_before) / began.elapsed().as_secs_f64();
    let run = run?;
    // The shadow's streams may still be arriving: wait until a record is written for every
    // completed stream, or none came for 10 s (bounded at 5 minutes).
    let (mut seen, mut last_growth) = (record_lines(&record), Instant::now());
    while seen < run.completed
        && last_growth.elapsed() < Duration::from_secs(10)
        && began.elapsed() < Duration::from_secs(300)
    {
        std::thread::sleep(Duration::from_millis(200));
        let now = record_lines(&record);
        if now > seen {
            (seen, last_growth) = (now, Instant::now());
        }
    }
    let all_seconds = began.elapsed().as_secs_f64();
    let cpu_all = (cpu_seconds(pid) - cpu_before) / all_seconds;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let rss_max_mib = sampler.join().unwrap_or(0.0);
    let peak_mib = rss_mib(pid).1;
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = daemon.0.wait()?;
    let log = log.join().unwrap_or_default();
    if !status.success() {
        bail!("mirror-daemon failed ({status}): {log}");
    }
    let records = tally(&record);
    let _ = std::fs::remove_file(&record);
    Ok(DaemonRun {
        load: run,
        cpu_load,
        cpu_all,
        all_seconds,
        rss_max_mib,
        peak_mib,
        records,
        summary: final_summary(&log),
        buffered: buffered_max(&log),
    })
}

fn print_load(label: &str, l: &LoadRun) {
    println!(
        "{label:<14} {:>9} {:>9} {:>11} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.1}  failed: {}",
        l.completed,
        l.peak_open,
        format!("{}-{}", l.events.0, l.events.1),
        l.ttft_ms.0,
        l.ttft_ms.1,
        l.e2e_ms.0,
        l.e2e_ms.1,
        l.seconds,
        l.failed
    );
}

pub fn run(args: &LlmBenchArgs, daemon_bin: &Path) -> Result<()> {
    if args.llm_events < 4 {
        bail!("--llm-events must be at least 4 (role chunk, a token, finish chunk, [DONE])");
    }
    if !(0.0..=100.0).contains(&args.llm_differ_percent) {
        bail!("--llm-differ-percent must be between 0 and 100");
    }
    let trio = Trio::new();
    let production = SocketAddr::from((trio.production_addr, PORT));
    let shadow = SocketAddr::from((trio.shadow_addr, PORT));
    let paced = ServerOptions {
        ttft_ms: args.llm_ttft_ms,
        token_delay_ms: args.llm_token_delay_ms,
        // The role chunk, the tokens, the finish chunk and [DONE].
        words: Some(args.llm_events - 3),
        ..ServerOptions::default()
    };
    let _v1 = llm::start_server(&trio.production, &[production], &paced)
        .context("start the production LLM server")?;
    let candidate = ServerOptions { variant: true, differ_percent: args.llm_differ_percent, ..paced };
    let _v2 =
        llm::start_server(&trio.shadow, &[shadow], &candidate).context("start the candidate LLM server")?;

    println!(
        "\nstreamed-LLM mirror benchmark: {} chat completions opened at once (aiohttp client, one connection \
         each), {} events per answer,",
        args.llm_streams, args.llm_events
    );
    println!(
        "first token after {} ms, then one every {} ms (aiohttp servers); 100% sampling to one shadow; client, \
         servers and daemon share this machine's cores.\n",
        args.llm_ttft_ms, args.llm_token_delay_ms
    );
    println!(
        "{:<14} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "run", "completed", "peak open", "events", "TTFT p50", "TTFT p99", "E2E p50", "E2E p99", "seconds"
    );
    let without = load(&trio.client, production, args, "direct-")?;
    print_load("no daemon", &without);
    let with = mirrored(&trio, daemon_bin, shadow, args)?;
    print_load("mirrored", &with.load);
    println!("(client-side figures; TTFT and E2E in ms from just before each request was sent)\n");

    let r = &with.records;
    let compared = 100.0 * r.compared as f64 / with.load.completed.max(1) as f64;
    println!(
        "daemon: CPU {:.0}% of a core over the load ({:.1} s), {:.0}% until the last record ({:.1} s); RSS max {:.1} \
         MiB, peak {:.1} MiB",
        with.cpu_load * 100.0,
        with.load.seconds,
        with.cpu_all * 100.0,
        with.all_seconds,
        with.rss_max_mib,
        with.peak_mib
    );
    println!(
        "compared: {} of {} completed streams = {compared:.2}%; exact text {}; verdicts: {}",
        r.compared,
        with.load.completed,
        r.exact,
        counts(&r.verdicts)
    );
    println!(
        "production stream ends: {}; TTFT on the wire p50 {:.1} ms, p99 {:.1} ms",
        counts(&r.ends),
        quantile(&r.wire_ttft_ms, 0.5),
        quantile(&r.wire_ttft_ms, 0.99)
    );
    println!(
        "daemon's accounting: at most {} KiB buffered for reassembly and framing, {} connections tracked",
        with.buffered.0 / 1024,
        with.buffered.1
    );
    println!("final summary: {}", with.summary);
    Ok(())
}
