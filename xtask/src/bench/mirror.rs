//! `--which mirror`: shadow mirror side by side with no mirror and with nginx's inline `mirror`,
//! measured in one run and judged against issue 12's Targets.
//!
//! Topology (namespaces of `mirror_tests::netns::Trio`): the client, production and shadow hosts.
//! Production and shadow are Debian's nginx answering every request with the same 1 KiB JSON
//! document (one worker each: they stand in for model servers, and take little of the two
//! cores). Three modes per rate, interleaved (their order rotates every repeat) so that a drift of
//! the machine touches all of them alike:
//!
//! - no mirror: client → production;
//! - shadow mirror: client → production, the daemon attached to production's interface, every
//!   request replayed to the shadow and compared;
//! - nginx mirror: client → nginx in production's namespace (`proxy_pass` to production over
//!   keep-alive, `mirror` to the shadow), the inline proxy shadow mirror replaces.
//!
//! Load comes from `mirror_tests::load`: open loop on 64 keep-alive connections, latencies from the
//! intended send time (so queueing is not hidden), or closed loop for `max`. What is mirrored is
//! counted twice: compared records ÷ answered requests for shadow mirror, and requests that
//! reached the shadow ÷ answered (nginx's `stub_status` at the shadow) for both mirrors.
//!
//! Then: short connections (a new connection per request) at `--short-rates`; a slow shadow
//! (answering in 200 ms: the test support's model server) at `--slow-rate`; shadow mirror at 2× and
//! 5× its lossless rate; and each Target with its measured value.
use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    str::FromStr,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use mirror_tests::{
    ChildGuard,
    load::{self, Outcome, Plan, Shape},
    model_server::{self, ServerOptions, infer_request},
    netns::Trio,
    nginx::{self, Nginx},
};

use super::{BenchArgs, cpu_seconds, final_summary, rss_mib, spawn_logged, verdicts};

/// A keep-alive load rate: requests/s, or as fast as answers come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    PerSecond(u32),
    Max,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "max" => Ok(Rate::Max),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(Rate::PerSecond)
                .ok_or_else(|| format!("{s:?} is not a rate: give requests/s (e.g. 6000) or `max`")),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::PerSecond(n) => write!(f, "{n}/s"),
            Rate::Max => f.write_str("max"),
        }
    }
}

impl Rate {
    fn per_second(self) -> Option<f64> {
        match self {
            Rate::PerSecond(n) => Some(f64::from(n)),
            Rate::Max => None,
        }
    }
}

/// Long-lived client connections of the keep-alive load (the measurement).
const CONNECTIONS: usize = 64;
/// Production's and the shadow's port (nginx), where the daemon captures.
const PORT: u16 = 8080;
/// nginx `mirror`, inline in production's namespace, in front of production.
const INLINE_PORT: u16 = 8081;
/// The slow shadow (the test support's model server, answering after `SLOW_SHADOW`).
const SLOW_PORT: u16 = 8082;
/// nginx `mirror` to the slow shadow.
const SLOW_INLINE_PORT: u16 = 8083;
/// The shadow's `stub_status`, on its loopback.
const STATUS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8099);
/// How long the slow shadow takes to answer.
const SLOW_SHADOW: Duration = Duration::from_millis(200);
/// The highest rate GoReplay held losslessly on this box (issue 12: 6,000/s; 19–35% lost at 10k/s).
const GOREPLAY_LOSSLESS: f64 = 6_000.0;
/// At most this many short connections open at once on the client.
const SHORT_IN_FLIGHT: usize = 4_096;

/// What carries production's traffic in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Client straight to production.
    NoMirror,
    /// Client straight to production, shadow mirror's daemon capturing and replaying.
    Daemon,
    /// Client to nginx `mirror`, inline in front of production.
    Nginx,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NoMirror => "no mirror",
            Mode::Daemon => "shadow mirror",
            Mode::Nginx => "nginx mirror",
        }
    }
}

/// Which shadow a run mirrors to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shadow {
    /// nginx, the same answer as production, requests counted.
    Fast,
    /// The model server answering after [`SLOW_SHADOW`].
    Slow,
}

/// CPU and memory of the mirroring tool (the daemon, or nginx's master and workers).
#[derive(Clone, Copy, Debug, Default)]
struct ToolUse {
    /// Cores used over the load.
    cores: f64,
    /// CPU seconds from the load's start until the tool had drained, per 1,000 answered requests:
    /// cores per 1,000 requests/s.
    per_1k: f64,
    rss_mib: f64,
    peak_mib: f64,
}

/// One measured run.
struct Run {
    mode: Mode,
    rate: Rate,
    repeat: usize,
    load: Outcome,
    tool: Option<ToolUse>,
    /// Compared records (shadow mirror).
    compared: Option<usize>,
    /// Requests that reached the (fast) shadow during the run.
    at_shadow: Option<u64>,
    /// What the daemon counted when not everything was compared.
    losses: Option<String>,
}

impl Run {
    fn share(count: Option<f64>, of: usize) -> Option<f64> {
        count.map(|c| c / of.max(1) as f64)
    }

    /// Compared ÷ answered (shadow mirror), or requests at the shadow ÷ answered (nginx).
    fn mirrored(&self) -> Option<f64> {
        match self.mode {
            Mode::NoMirror => None,
            Mode::Daemon => Self::share(self.compared.map(|c| c as f64), self.load.answered),
            Mode::Nginx => Self::share(self.at_shadow.map(|c| c as f64), self.load.answered),
        }
    }

    fn at_shadow_share(&self) -> Option<f64> {
        Self::share(self.at_shadow.map(|c| c as f64), self.load.answered)
    }

    /// Less than 0.1% not compared, no production failure, and (at a set rate) at least 95% of
    /// it achieved.
    fn lossless(&self) -> bool {
        let achieved = self.rate.per_second().is_none_or(|r| self.load.achieved_rps() >= 0.95 * r);
        self.load.answered > 0
            && self.load.failed == 0
            && achieved
            && self.mirrored().is_some_and(|share| share >= 0.999)
    }
}

/// The topology and its long-lived servers.
struct Bench<'a> {
    args: &'a BenchArgs,
    daemon_bin: &'a Path,
    trio: Trio,
    record: PathBuf,
    bodies: Vec<Vec<u8>>,
    inline: Nginx,
    _shadow: Nginx,
    _production: Nginx,
    _slow_shadow: ChildGuard,
}

/// A JSON document of exactly `len` bytes, shaped as an Open Inference Protocol answer.
fn json_answer(len: usize) -> String {
    let mut data = Vec::new();
    let text = |data: &[String], pad: usize| {
        format!(
            "{{\"model_name\":\"demo\",\"model_version\":\"1\",\"id\":\"bench\",\"outputs\":[{{\"name\":\
             \"probabilities\",\"shape\":[1,{}],\"datatype\":\"FP32\",\"data\":[{}]}}]{}}}",
            data.len(),
            data.join(","),
            " ".repeat(pad)
        )
    };
    while text(&data, 0).len() + 12 < len {
        data.push(format!("0.{:06}", (data.len() * 7_919 + 13) % 1_000_000));
    }
    let pad = len.saturating_sub(text(&data, 0).len());
    text(&data, pad)
}

impl<'a> Bench<'a> {
    fn new(args: &'a BenchArgs, daemon_bin: &'a Path) -> Result<Self> {
        let trio = Trio::new();
        let production = SocketAddr::from((trio.production_addr, PORT));
        let production_lo = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
        let shadow = SocketAddr::from((trio.shadow_addr, PORT));
        let answer = json_answer(1024);
        let production_nginx = Nginx::start(
            &trio.production,
            "production",
            1,
            &nginx::static_json(
                &[production, production_lo],
                &answer,
                SocketAddr::from((Ipv4Addr::LOCALHOST, 8098)),
            ),
            production,
        )
        .context("start production (nginx)")?;
        let shadow_nginx =
            Nginx::start(&trio.shadow, "shadow", 1, &nginx::static_json(&[shadow], &answer, STATUS), shadow)
                .context("start the shadow (nginx)")?;
        let slow = SocketAddr::from((trio.shadow_addr, SLOW_PORT));
        let options = ServerOptions { delay_ms: SLOW_SHADOW.as_millis() as u64, ..ServerOptions::default() };
        let (slow_shadow, _) =
            model_server::start(&daemon_bin.with_file_name("model-server"), &trio.shadow, &[slow], &options)
                .context("start the slow shadow (model-server)")?;
        let inline_addr = SocketAddr::from((trio.production_addr, INLINE_PORT));
        let inline_http = format!(
            "{}\n{}",
            nginx::inline_mirror(inline_addr, production_lo, shadow),
            nginx::inline_mirror(
                SocketAddr::from((trio.production_addr, SLOW_INLINE_PORT)),
                production_lo,
                slow
            )
        );
        // As many workers as cores, nginx's `auto`.
        let inline = Nginx::start(&trio.production, "mirror", 2, &inline_http, inline_addr)
            .context("start nginx mirror")?;
        // Short connections: thousands per second for many seconds, from more ports than the
        // default range. nginx `mirror` reads only the head of the shadow's answer, so it cannot
        // keep its shadow connections alive: one new connection per mirrored request, which at
        // these rates exhausts production's ports within seconds unless TIME_WAIT ports are
        // reused (the usual tuning of a proxy host). Both settings are per namespace.
        for (ns, settings) in [
            (&trio.client, &["net.ipv4.ip_local_port_range=1024 65000"][..]),
            (&trio.production, &["net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1"][..]),
        ] {
            for setting in settings {
                let status = ns.command("sysctl").args(["-qw", setting]).status().context("run sysctl")?;
                if !status.success() {
                    bail!("sysctl -w {setting} failed in namespace {}", ns.name);
                }
            }
        }
        let bodies = (0..16)
            .map(|n| {
                let rows: Vec<Vec<f64>> = (0..1 + n % 4)
                    .map(|r| (0..4).map(|f| ((n * 31 + r * 7 + f * 3) % 89) as f64 / 8.0).collect())
                    .collect();
                infer_request(&format!("bench-{n}"), &rows)
            })
            .collect();
        let record = std::env::temp_dir().join(format!("shadow-mirror-bench-{}.jsonl", std::process::id()));
        Ok(Self {
            args,
            daemon_bin,
            trio,
            record,
            bodies,
            inline,
            _shadow: shadow_nginx,
            _production: production_nginx,
            _slow_shadow: slow_shadow,
        })
    }

    fn plan(&self, target: SocketAddr, rate: Rate, shape: Shape) -> Plan {
        Plan {
            target,
            path: "/v2/models/demo/infer".into(),
            bodies: self.bodies.clone(),
            rate: rate.per_second(),
            duration: Duration::from_secs(self.args.seconds),
            shape,
        }
    }

    fn shadow_count(&self) -> Result<u64> {
        nginx::requests_served(&self.trio.shadow, STATUS)
            .context("read the shadow's request count (stub_status)")
    }

    /// One run of `mode` at `rate`.
    fn run(&self, mode: Mode, rate: Rate, repeat: usize, shape: Shape, shadow: Shadow) -> Result<Run> {
        let production = SocketAddr::from((self.trio.production_addr, PORT));
        let before = self.shadow_count()?;
        let (load, tool, compared, losses) = match mode {
            Mode::NoMirror => {
                (load::run(&self.trio.client, self.plan(production, rate, shape)), None, None, None)
            }
            Mode::Daemon => {
                let (port, shadow_port) = match shadow {
                    Shadow::Fast => (PORT, PORT),
                    Shadow::Slow => (PORT, SLOW_PORT),
                };
                let spec =
                    format!("model-v2=http://{}", SocketAddr::from((self.trio.shadow_addr, shadow_port)));
                let plan = self.plan(production, rate, shape);
                let (load, tool, compared, losses) =
                    self.with_daemon(port, &spec, plan, &format!("{rate}-{}", repeat + 1))?;
                (load, Some(tool), Some(compared), losses)
            }
            Mode::Nginx => {
                let port = match shadow {
                    Shadow::Fast => INLINE_PORT,
                    Shadow::Slow => SLOW_INLINE_PORT,
                };
                let plan = self.plan(SocketAddr::from((self.trio.production_addr, port)), rate, shape);
                let (load, tool) = self.with_nginx(plan);
                (load, Some(tool), None, None)
            }
        };
        // The second query counts itself.
        let at_shadow = (shadow == Shadow::Fast).then(|| self.shadow_count().map(|after| after - before - 1));
        Ok(Run { mode, rate, repeat, load, tool, compared, at_shadow: at_shadow.transpose()?, losses })
    }

    fn with_nginx(&self, plan: Plan) -> (Outcome, ToolUse) {
        let pids = self.inline.pids();
        let cpu = || pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
        let before = cpu();
        let load = load::run(&self.trio.client, plan);
        let over_load = cpu() - before;
        let (rss, peak) = pids.iter().map(|&p| rss_mib(p)).fold((0.0, 0.0), |(r, p), (a, b)| (r + a, p + b));
        let tool = ToolUse {
            cores: over_load / load.elapsed.as_secs_f64().max(1e-9),
            per_1k: over_load / (load.answered.max(1) as f64 / 1000.0),
            rss_mib: rss,
            peak_mib: peak,
        };
        (load, tool)
    }

    /// Starts the daemon in production's namespace capturing `port` and mirroring to
    /// `shadow_spec`, runs `plan` once it is attached, lets it drain, stops it and reads its
    /// record: (load, the daemon's use, compared records, its losses when not all were compared).
    fn with_daemon(
        &self,
        port: u16,
        shadow_spec: &str,
        plan: Plan,
        label: &str,
    ) -> Result<(Outcome, ToolUse, usize, Option<String>)> {
        let _ = std::fs::remove_file(&self.record);
        let (mut daemon, log) = spawn_logged(
            self.trio
                .production
                .command(self.daemon_bin)
                .args(["--log-format", "json", "run", "--interface", &self.trio.production_if])
                .args(["--port", &port.to_string()])
                .args(["--shadow", shadow_spec, "--metrics-addr", "off", "--record"])
                .arg(&self.record)
                .args(["--record-max-size", "off"])
                .args(self.args.daemon_workers.map(|n| format!("--workers={n}")))
                .args(self.args.daemon_logs.as_ref().map(|_| "--summary-interval=1s"))
                // Warnings, and the summaries of the mirror loop (the final one counts every loss).
                .env("MIRROR_LOG", "warn,mirror_daemon::mirror=info"),
        )?;
        let pid = daemon.0.id();
        // Attached when the kernel programs show up; the JSON log is quiet at warn.
        std::thread::sleep(Duration::from_millis(1500));
        let perf = self.args.perf_record.as_ref().map(|dir| perf_record(dir, label, pid)).transpose()?;
        let cpu_before = cpu_seconds(pid);
        let load = load::run(&self.trio.client, plan);
        let over_load = cpu_seconds(pid) - cpu_before;
        if let Some(perf) = perf {
            stop_perf(perf)?;
        }
        let (rss_now, _) = rss_mib(pid);
        // Replays still in flight finish; their CPU belongs to the requests just sent.
        std::thread::sleep(Duration::from_millis(1500));
        let drained = cpu_seconds(pid) - cpu_before;
        let (_, peak_mib) = rss_mib(pid);
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let status = daemon.0.wait()?;
        let log = log.join().unwrap_or_default();
        if let Some(dir) = &self.args.daemon_logs {
            let path = run_file(dir, "daemon", label, "log")?;
            std::fs::write(&path, &log).with_context(|| format!("write {}", path.display()))?;
        }
        if !status.success() {
            bail!("mirror-daemon failed ({status}): {log}");
        }
        let (compared, verdicts) = verdicts(&self.record);
        let _ = std::fs::remove_file(&self.record);
        let tool = ToolUse {
            cores: over_load / load.elapsed.as_secs_f64().max(1e-9),
            per_1k: drained / (load.answered.max(1) as f64 / 1000.0),
            rss_mib: rss_now,
            peak_mib,
        };
        let losses =
            (compared < load.answered).then(|| format!("records: {verdicts}; {}", final_summary(&log)));
        Ok((load, tool, compared, losses))
    }
}

/// `dir/KIND-LABEL.EXT` for one run (`label` as `20000/s-1` gives `20000s-1`), `dir` created.
fn run_file(dir: &Path, kind: &str, label: &str, ext: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir.join(format!("{kind}-{}.{ext}", label.replace('/', ""))))
}

/// `perf record` on the daemon (`pid`) into `dir/perf-LABEL.data`, DWARF call graphs (the
/// release build keeps line tables and has no frame pointers).
fn perf_record(dir: &Path, label: &str, pid: u32) -> Result<ChildGuard> {
    let out = run_file(dir, "perf", label, "data")?;
    let child = std::process::Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run perf (Debian: linux-perf)")?;
    println!("      perf: recording the daemon into {}", out.display());
    Ok(ChildGuard(child))
}

/// Stops `perf record` so that it writes its file out.
fn stop_perf(mut perf: ChildGuard) -> Result<()> {
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(perf.0.id() as i32, libc::SIGINT) };
    perf.0.wait().context("wait for perf")?;
    Ok(())
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".into(), |s| format!("{:.2}%", s * 100.0))
}

fn ratio(with: f64, without: Option<f64>) -> String {
    match without {
        Some(w) if w > 0.0 => format!("{:.2}x", with / w),
        _ => "-".into(),
    }
}

fn print_head() {
    println!(
        "  {:<13} {:>3} {:>9} {:>8} {:>8} {:>7} {:>7} {:>9} {:>9} {:>6} {:>7} {:>7} {:>7}",
        "mode",
        "rep",
        "achieved",
        "p50 ms",
        "p99 ms",
        "p50÷no",
        "p99÷no",
        "mirrored",
        "at shadow",
        "cores",
        "core/1k",
        "RSS MiB",
        "peak"
    );
}

/// Prints `run`, its latency ratios against the no-mirror run `base` of the same repeat.
fn print_run(run: &Run, base: Option<&Run>) {
    let (p50, p99) = (run.load.quantile_ms(0.5), run.load.quantile_ms(0.99));
    let tool = |f: fn(&ToolUse) -> String| run.tool.as_ref().map_or_else(|| "-".into(), f);
    println!(
        "  {:<13} {:>3} {:>7.0}/s {:>8.2} {:>8.2} {:>7} {:>7} {:>9} {:>9} {:>6} {:>7} {:>7} {:>7}",
        run.mode.name(),
        run.repeat + 1,
        run.load.achieved_rps(),
        p50,
        p99,
        if run.mode == Mode::NoMirror {
            "-".into()
        } else {
            ratio(p50, base.map(|b| b.load.quantile_ms(0.5)))
        },
        if run.mode == Mode::NoMirror {
            "-".into()
        } else {
            ratio(p99, base.map(|b| b.load.quantile_ms(0.99)))
        },
        percent(run.mirrored()),
        percent(run.at_shadow_share()),
        tool(|t| format!("{:.2}", t.cores)),
        tool(|t| format!("{:.3}", t.per_1k)),
        tool(|t| format!("{:.0}", t.rss_mib)),
        tool(|t| format!("{:.0}", t.peak_mib)),
    );
    if run.load.failed + run.load.unsent > 0 {
        let cause = match (&run.load.first_error, run.load.failed) {
            (Some(error), _) => format!(" (first error: {error})"),
            (None, 0) => String::new(),
            (None, _) => " (non-200 answers)".into(),
        };
        println!(
            "      production: {} failed{cause}, {} due but never sent (production fell behind the schedule)",
            run.load.failed, run.load.unsent
        );
    }
    if let Some(losses) = &run.losses {
        println!("      {losses}");
    }
}

/// Runs every mode `repeats` times at `rate`, the modes' order rotated each repeat, and prints them.
fn interleaved(bench: &Bench, modes: &[Mode], rate: Rate, shape: Shape, shadow: Shadow) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for repeat in 0..bench.args.repeats {
        let mut order = modes.to_vec();
        order.rotate_left(repeat % modes.len());
        for mode in order {
            runs.push(
                bench
                    .run(mode, rate, repeat, shape, shadow)
                    .with_context(|| format!("{} at {rate}", mode.name()))?,
            );
        }
    }
    runs.sort_by_key(|r| (r.repeat, modes.iter().position(|&m| m == r.mode)));
    for run in &runs {
        let base = runs.iter().find(|b| b.mode == Mode::NoMirror && b.repeat == run.repeat);
        print_run(run, base);
    }
    Ok(runs)
}

/// The `--memory-limit` default the daemon declares, in MiB, if it declares one.
fn memory_budget(daemon_bin: &Path) -> Option<(String, f64)> {
    let out = std::process::Command::new(daemon_bin).args(["run", "--help"]).output().ok()?;
    let help = String::from_utf8_lossy(&out.stdout);
    let rest = &help[help.find("--memory-limit")?..];
    let default = rest.split("[default: ").nth(1)?.split(']').next()?.trim().to_string();
    let digits: String = default.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let number: f64 = digits.parse().ok()?;
    let mib = match default[digits.len()..].trim().to_ascii_lowercase().as_str() {
        "gib" | "g" | "gb" => number * 1024.0,
        "mib" | "m" | "mb" => number,
        "kib" | "k" | "kb" => number / 1024.0,
        _ => return None,
    };
    Some((default, mib))
}

/// One Target's line: pass, FAIL, or not measured.
fn target(verdict: Option<bool>, what: &str, measured: &str) {
    let mark = match verdict {
        Some(true) => "pass",
        Some(false) => "FAIL",
        None => "----",
    };
    println!("  [{mark}] {what}: {measured}");
}

fn worst(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.fold(None, |w: Option<f64>, v| Some(w.map_or(v, |w| w.max(v))))
}

pub(super) fn run(args: &BenchArgs, daemon_bin: &Path) -> Result<()> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let bench = Bench::new(args, daemon_bin)?;
    println!(
        "\nmirror benchmark (HTTP/1.1), side by side: production and shadow are nginx answering 1 KiB JSON; \
         open-loop load on {CONNECTIONS} keep-alive connections"
    );
    println!(
        "(latency from each request's intended send time; `max` is closed loop), {} s per run, {} repeats, \
         modes interleaved;",
        args.seconds, args.repeats
    );
    println!(
        "100% sampling to one shadow; client, servers and mirror share this machine's 2 cores. mirrored = compared \
         ÷ answered (shadow mirror), at the shadow ÷ answered (nginx);"
    );
    println!(
        "cores = the tool's CPU over the load; core/1k = its CPU-seconds until drained per 1,000 requests."
    );
    match args.daemon_workers {
        Some(n) => println!("shadow mirror rebuilds on {n} thread(s) (--workers {n})."),
        None => println!(
            "shadow mirror rebuilds on its default number of threads (the cores it may use, at most 4)."
        ),
    }
    let modes = [Mode::NoMirror, Mode::Daemon, Mode::Nginx];
    let keep_alive = Shape::KeepAlive { connections: CONNECTIONS };
    let mut sweep = Vec::new();
    for &rate in &args.rates {
        println!("\noffered {rate}:");
        print_head();
        sweep.extend(interleaved(&bench, &modes, rate, keep_alive, Shadow::Fast)?);
    }

    println!(
        "\nshort connections (a new connection per request, `Connection: close`), shadow mirror against none:"
    );
    print_head();
    let short = Shape::ShortConnections { max_in_flight: SHORT_IN_FLIGHT };
    let mut shorts = Vec::new();
    for &rate in &args.short_rates {
        println!("  offered {rate}/s:");
        shorts.extend(interleaved(
            &bench,
            &[Mode::NoMirror, Mode::Daemon],
            Rate::PerSecond(rate),
            short,
            Shadow::Fast,
        )?);
    }

    println!(
        "\nslow shadow (the model server answering in {} ms) at {}/s, keep-alive; mirrored = replayed and compared \
         (the answers differ: not judged):",
        SLOW_SHADOW.as_millis(),
        args.slow_rate
    );
    print_head();
    let slow = interleaved(&bench, &modes, Rate::PerSecond(args.slow_rate), keep_alive, Shadow::Slow)?;

    // Shadow mirror past its lossless rate.
    let lossless = lossless_rate(&sweep);
    let mut beyond = Vec::new();
    if let Some(rate) = lossless {
        println!("\nshadow mirror beyond its lossless rate ({rate:.0}/s):");
        print_head();
        for factor in [2u32, 5] {
            let offered = Rate::PerSecond((rate * f64::from(factor)) as u32);
            let measured: Vec<&Run> =
                sweep.iter().filter(|r| r.rate == offered && r.mode == Mode::Daemon).collect();
            if measured.is_empty() {
                println!("  offered {offered}:");
                beyond.extend(interleaved(&bench, &[Mode::Daemon], offered, keep_alive, Shadow::Fast)?);
            } else {
                println!("  offered {offered}: measured in the sweep above");
            }
        }
    }

    println!("\nTargets (issue 12), judged on this run:");
    judge(&bench, &sweep, &shorts, &slow, &beyond, lossless);
    let _ = std::fs::remove_file(&bench.record);
    Ok(())
}

/// The highest offered rate at which every shadow-mirror run was lossless (for `max`, the lowest
/// rate achieved in those runs).
fn lossless_rate(sweep: &[Run]) -> Option<f64> {
    let mut rates: Vec<Rate> = sweep.iter().map(|r| r.rate).collect();
    rates.dedup();
    rates
        .into_iter()
        .filter_map(|rate| {
            let runs: Vec<&Run> = sweep.iter().filter(|r| r.rate == rate && r.mode == Mode::Daemon).collect();
            if runs.is_empty() || !runs.iter().all(|r| r.lossless()) {
                return None;
            }
            rate.per_second().or_else(|| worst(runs.iter().map(|r| -r.load.achieved_rps())).map(|v| -v))
        })
        .fold(None, |best: Option<f64>, r| Some(best.map_or(r, |b| b.max(r))))
}

/// The runs of `mode` at `rate`.
fn of(runs: &[Run], mode: Mode, rate: Rate) -> Vec<&Run> {
    runs.iter().filter(|r| r.mode == mode && r.rate == rate).collect()
}

fn judge(bench: &Bench, sweep: &[Run], shorts: &[Run], slow: &[Run], beyond: &[Run], lossless: Option<f64>) {
    let nginx_runs = sweep.iter().filter(|r| r.mode == Mode::Nginx && r.load.answered > 0).count();
    target(
        Some(nginx_runs > 0),
        "nginx `mirror` measured in the same topology, interleaved with shadow mirror",
        &format!("{nginx_runs} nginx runs answered, {} repeats", bench.args.repeats),
    );

    let wanted = 2.0 * GOREPLAY_LOSSLESS;
    target(
        lossless.map(|l| l >= wanted),
        &format!(
            "lossless (< 0.1% not compared, every run) at >= {wanted:.0}/s (2x GoReplay's {GOREPLAY_LOSSLESS:.0}/s)"
        ),
        &lossless.map_or_else(
            || "no rate was lossless in every run".into(),
            |l| format!("lossless up to {l:.0}/s"),
        ),
    );

    let mut rates: Vec<Rate> = sweep.iter().map(|r| r.rate).collect();
    rates.dedup();
    let mut below_nginx = Vec::new();
    let mut all_below = true;
    for &rate in &rates {
        let p99 = |mode| worst(of(sweep, mode, rate).iter().map(|r| r.load.quantile_ms(0.99)));
        if let (Some(ours), Some(theirs)) = (p99(Mode::Daemon), p99(Mode::Nginx)) {
            all_below &= ours <= theirs;
            below_nginx.push(format!("{rate} {ours:.2} vs {theirs:.2} ms"));
        }
    }
    target(
        (!below_nginx.is_empty()).then_some(all_below),
        "production p99 with shadow mirror at or below nginx mirror's at every rate (worst run of each)",
        &below_nginx.join("; "),
    );

    let ratios: Vec<(Rate, f64)> = sweep
        .iter()
        .filter(|r| r.mode == Mode::Daemon && r.rate.per_second().is_some_and(|r| r <= 6_000.0))
        .filter_map(|r| {
            let base = sweep
                .iter()
                .find(|b| b.mode == Mode::NoMirror && b.rate == r.rate && b.repeat == r.repeat)?;
            Some((r.rate, r.load.quantile_ms(0.99) / base.load.quantile_ms(0.99).max(1e-6)))
        })
        .collect();
    let worst_ratio = worst(ratios.iter().map(|r| r.1));
    target(
        worst_ratio.map(|w| w <= 1.5),
        "production p99 within 1.5x of no mirror up to 6,000/s (each repeat against its own no-mirror run)",
        &worst_ratio.map_or_else(|| "no rate <= 6,000/s measured".into(), |w| format!("worst {w:.2}x")),
    );

    let at_10k = of(sweep, Mode::Daemon, Rate::PerSecond(10_000));
    let per_1k = worst(at_10k.iter().filter_map(|r| r.tool.map(|t| t.per_1k)));
    target(
        per_1k.map(|c| c <= 0.03),
        "<= 0.03 core per 1,000 requests/s at 10,000/s",
        &per_1k.map_or_else(
            || "10,000/s not measured".into(),
            |c| format!("{c:.3} core per 1,000/s (worst run)"),
        ),
    );
    let peak = worst(at_10k.iter().filter_map(|r| r.tool.map(|t| t.peak_mib)));
    target(
        peak.map(|p| p <= 64.0),
        "RSS <= 64 MiB at 10,000/s",
        &peak.map_or_else(|| "10,000/s not measured".into(), |p| format!("peak {p:.0} MiB (worst run)")),
    );

    let short_lossless: Vec<u32> = {
        let mut rates: Vec<Rate> = shorts.iter().map(|r| r.rate).collect();
        rates.dedup();
        rates
            .into_iter()
            .filter(|&rate| {
                let runs = of(shorts, Mode::Daemon, rate);
                !runs.is_empty() && runs.iter().all(|r| r.lossless())
            })
            .filter_map(|r| match r {
                Rate::PerSecond(n) => Some(n),
                Rate::Max => None,
            })
            .collect()
    };
    let best_short = short_lossless.iter().max().copied();
    let short_shares: Vec<String> = shorts
        .iter()
        .filter(|r| r.mode == Mode::Daemon)
        .map(|r| format!("{} {}", r.rate, percent(r.mirrored())))
        .collect();
    target(
        (!shorts.is_empty()).then_some(best_short.is_some_and(|n| n >= 5_000)),
        ">= 5,000 short connections/s lossless",
        &format!(
            "{}; compared: {}",
            best_short.map_or_else(
                || "no short-connection rate lossless".into(),
                |n| format!("lossless up to {n}/s")
            ),
            short_shares.join(", ")
        ),
    );

    let budget = memory_budget(bench.daemon_bin);
    match lossless {
        None => target(
            None,
            "at 2x and 5x the lossless rate, compared share >= 80% of lossless ÷ offered",
            "no lossless rate",
        ),
        Some(l) => {
            let candidates: Vec<&Run> = sweep
                .iter()
                .chain(beyond)
                .filter(|r| r.mode == Mode::Daemon)
                .filter(|r| [2.0, 5.0].iter().any(|f| r.rate.per_second() == Some((l * f).trunc())))
                .collect();
            let mut ok = !candidates.is_empty();
            let mut lines = Vec::new();
            for r in &candidates {
                // What reached the daemon is what production answered: a client that fell short of
                // the asked rate offered less.
                let offered = r.rate.per_second().unwrap_or(0.0).min(r.load.achieved_rps()).max(1.0);
                let floor = 0.8 * l / offered;
                let share = r.mirrored().unwrap_or(0.0);
                let peak = r.tool.map_or(0.0, |t| t.peak_mib);
                let within = budget.as_ref().is_some_and(|(_, mib)| peak <= *mib);
                ok &= share >= floor && within;
                lines.push(format!(
                    "{} (achieved {:.0}/s): {} >= {:.1}%? peak {peak:.0} MiB",
                    r.rate,
                    r.load.achieved_rps(),
                    percent(Some(share)),
                    floor * 100.0
                ));
            }
            let budget_text = budget.as_ref().map_or_else(
                || "the daemon declares no memory budget (--memory-limit)".into(),
                |(text, _)| format!("budget {text}"),
            );
            target(
                Some(ok),
                "at 2x and 5x the lossless rate, compared share >= 80% of lossless ÷ offered, within the memory budget",
                &format!("{}; {budget_text}", lines.join("; ")),
            );
        }
    }

    let replayed: Vec<String> =
        slow.iter().filter(|r| r.mode == Mode::Daemon).map(|r| percent(r.mirrored())).collect();
    let slow_p99 = |mode| worst(slow.iter().filter(|r| r.mode == mode).map(|r| r.load.quantile_ms(0.99)));
    let nginx_rate: Vec<String> = slow
        .iter()
        .filter(|r| r.mode == Mode::Nginx)
        .map(|r| format!("{:.0}/s", r.load.achieved_rps()))
        .collect();
    println!(
        "  slow shadow: shadow mirror replayed {}, production p99 {:.2} ms (none {:.2} ms); nginx mirror achieved {}",
        replayed.join(", "),
        slow_p99(Mode::Daemon).unwrap_or(0.0),
        slow_p99(Mode::NoMirror).unwrap_or(0.0),
        nginx_rate.join(", ")
    );
}
