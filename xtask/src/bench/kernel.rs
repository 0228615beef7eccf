//! `cargo xtask bench --which kernel`: what the kernel programs cost per packet, measured by the
//! kernel itself.
//!
//! With `kernel.bpf_stats_enabled` on, the kernel adds up each program's run time and run count
//! (`run_time_ns`, `run_cnt` in the fdinfo of a program's file descriptor, what `bpftool prog show`
//! prints). A client/server namespace pair runs the model server; `mirror-daemon capture` attaches to
//! the server's veth and writes to `/dev/null`, and bounded loads go through it: small exchanges
//! (200 B requests, 1 KiB answers) and 64 KiB bodies both ways, which leave through TC egress as
//! GSO super-packets. For each load and each program (`mirror_xdp` on receive, `mirror_tc` on
//! transmit) the bench prints runs, ns per run, and copied bytes per run; every run counts, bare
//! ACKs (which the programs leave early) included. Only this daemon's programs are read: other
//! daemons on the machine load programs of the same names.
//!
//! Then what the statistics cost by themselves (the reason the daemon's `--kernel-stats` is off by
//! default): each program is run on crafted frames through `BPF_PROG_TEST_RUN` (`bpftool prog
//! run ... repeat N`, whose mean duration the kernel measures with or without statistics), with
//! the sysctl off and on, interleaved; the difference is their cost per run. (Another process
//! holding `BPF_ENABLE_STATS` keeps them on: the "off" column then is not off.)
//!
//! `MIRROR_DAEMON_BIN` names another daemon binary to measure (e.g. one built before a change);
//! without it the bench builds the tree's. The sysctl is set back to what it was afterwards.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use mirror_tests::{
    ChildGuard,
    client::{Ask, run_connection},
    model_server::{self, ServerOptions},
    netns::Pair,
};

use crate::build::{self, BuildArgs};

const PORT: u16 = 8080;
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// Keep-alive client connections per load, run at once.
const CONNECTIONS: usize = 4;
/// Each load is run this many times; each repeat is a line of its own.
const REPEATS: usize = 3;
/// No load runs longer than this, whatever its exchange count.
const LOAD_LIMIT: Duration = Duration::from_secs(60);
/// Test runs per `bpftool prog run`, and rounds of statistics off and on.
const TEST_RUNS: &str = "1000000";
const TEST_ROUNDS: usize = 5;

/// One bounded load: `exchanges` per connection of this shape.
struct Shape {
    name: &'static str,
    exchanges: usize,
    ask: Ask,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "small (200 B / 1 KiB)",
        exchanges: 5000,
        ask: Ask { request_body: 200, response_body: 1024 },
    },
    Shape {
        name: "64 KiB / 64 KiB",
        exchanges: 750,
        ask: Ask { request_body: 65_536, response_body: 65_536 },
    },
];

/// Turns `kernel.bpf_stats_enabled` on, and back to its old value on drop.
struct StatsOn {
    before: String,
}

impl StatsOn {
    fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("read {STATS_SYSCTL} (is this Linux >= 5.1?)"))?;
        std::fs::write(STATS_SYSCTL, "1").with_context(|| format!("enable {STATS_SYSCTL} (needs root)"))?;
        Ok(Self { before: before.trim().to_string() })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.before);
    }
}

/// Run statistics of one loaded program, from its fdinfo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ProgStats {
    prog_id: u64,
    prog_type: u64,
    run_time_ns: u64,
    run_cnt: u64,
}

/// The BPF programs process `pid` holds, by program id (XDP is type 6, TC `sched_cls` type 3).
fn program_stats(pid: u32) -> Result<Vec<ProgStats>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut out: Vec<ProgStats> = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else { continue };
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(prog_id), Some(prog_type)) = (field("prog_id:"), field("prog_type:")) else { continue };
        if out.iter().any(|p| p.prog_id == prog_id) {
            continue;
        }
        out.push(ProgStats {
            prog_id,
            prog_type,
            run_time_ns: field("run_time_ns:").unwrap_or(0),
            run_cnt: field("run_cnt:").unwrap_or(0),
        });
    }
    Ok(out)
}

/// The kernel counters the daemon printed at exit (`kernel counters: name=value ...`).
fn exit_counter(log: &str, name: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.starts_with("kernel counters:"))?;
    line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{name}="))).and_then(|v| v.parse().ok())
}

fn daemon_binary() -> Result<PathBuf> {
    match std::env::var_os("MIRROR_DAEMON_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => build::run_build(&BuildArgs { debug: false }),
    }
}

pub fn run() -> Result<()> {
    if !crate::util::is_root() {
        bail!("the kernel benchmark creates network namespaces and loads eBPF programs: run it as root");
    }
    let daemon_bin = daemon_binary()?;
    let server_bin = daemon_bin.with_file_name("model-server");
    if !server_bin.exists() {
        bail!("{} is missing: build it with `cargo xtask build`", server_bin.display());
    }
    let _stats = StatsOn::enable()?;
    let pair = Pair::new();
    let server = SocketAddr::new(pair.server_ip(false), PORT);
    let (_server, _) = model_server::start(&server_bin, &pair.server, &[server], &ServerOptions::default())
        .context("start the model server")?;
    let (daemon, log) = start_capture(&pair, &daemon_bin)?;
    let pid = daemon.0.id();

    println!(
        "kernel programs, ns per run (bpf_stats), {} over {CONNECTIONS} connections",
        daemon_bin.display()
    );
    println!(
        "{:<22} {:>3} | {:>9} {:>8} | {:>9} {:>8}",
        "load", "#", "xdp runs", "ns/run", "tc runs", "ns/run"
    );
    for shape in &SHAPES {
        for repeat in 1..=REPEATS {
            let before = program_stats(pid)?;
            let started = Instant::now();
            drive(&pair, server, shape)?;
            let after = program_stats(pid)?;
            let per = |prog_type| delta(&before, &after, prog_type);
            let (xdp, tc) = (per(6), per(3));
            println!(
                "{:<22} {repeat:>3} | {:>9} {:>8.0} | {:>9} {:>8.0}   ({:.1} s)",
                shape.name,
                xdp.0,
                xdp.1,
                tc.0,
                tc.1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    stats_cost(&program_stats(pid)?)?;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let mut daemon = daemon;
    let status = daemon.0.wait()?;
    let log = log.join().unwrap_or_default();
    if !status.success() {
        bail!("mirror-daemon capture failed:\n{log}");
    }
    let bytes = exit_counter(&log, "bytes").unwrap_or(0);
    println!(
        "kernel counters: bytes copied {bytes}, ringbuf_full {}, truncated {}",
        exit_counter(&log, "ringbuf_full").unwrap_or(0),
        exit_counter(&log, "truncated").unwrap_or(0)
    );
    Ok(())
}

/// An Ethernet/IPv4/TCP frame (PSH+ACK, 200 payload bytes) from 10.77.0.1:40000 to 10.77.0.2:`port`.
fn tcp_frame(port: u16) -> Vec<u8> {
    let payload = [b'x'; 200];
    let ip_len = (20 + 20 + payload.len()) as u16;
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    frame.extend([0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    frame.extend([10, 77, 0, 1, 10, 77, 0, 2]);
    frame.extend(40000u16.to_be_bytes());
    frame.extend(port.to_be_bytes());
    frame.extend([0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0x01, 0xf6, 0, 0, 0, 0]);
    frame.extend(payload);
    frame
}

/// Mean ns per run of program `id` on the frame in `data`, as `bpftool prog run` reports it.
fn test_run(id: u64, data: &Path) -> Result<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "run", "id", &id.to_string(), "data_in"])
        .arg(data)
        .args(["repeat", TEST_RUNS])
        .output()
        .context("run bpftool (installed by `cargo xtask setup`)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.split("duration (average): ")
        .nth(1)
        .and_then(|rest| rest.split("ns").next())
        .and_then(|ns| ns.trim().parse().ok())
        .with_context(|| format!("bpftool prog run id {id}: no duration in {text:?}"))
}

/// What run-time statistics cost per run: test runs of each program with them off and on.
fn stats_cost(programs: &[ProgStats]) -> Result<()> {
    let id_of = |prog_type| {
        programs.iter().find(|p| p.prog_type == prog_type).map(|p| p.prog_id).context("the daemon's programs")
    };
    let (xdp, tc) = (id_of(6)?, id_of(3)?);
    let frames = [("another port (left early)", 9999), ("the captured port (copied)", PORT)];
    let mut files = Vec::new();
    for (i, (_, port)) in frames.iter().enumerate() {
        let path = mirror_tests::scratch_file(&format!("bench-kernel-frame-{i}.bin"));
        std::fs::write(&path, tcp_frame(*port)).with_context(|| format!("write {}", path.display()))?;
        files.push(path);
    }
    // [frame][program][stats off, on] → durations of each round.
    let mut ns = vec![[[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]]; frames.len()];
    for _ in 0..TEST_ROUNDS {
        for on in [0, 1] {
            std::fs::write(STATS_SYSCTL, on.to_string()).with_context(|| format!("write {STATS_SYSCTL}"))?;
            for (f, file) in files.iter().enumerate() {
                for (p, id) in [xdp, tc].into_iter().enumerate() {
                    ns[f][p][on].push(test_run(id, file)?);
                }
            }
        }
    }
    std::fs::write(STATS_SYSCTL, "1").with_context(|| format!("write {STATS_SYSCTL}"))?;
    for file in &files {
        let _ = std::fs::remove_file(file);
    }
    let median = |v: &Vec<u64>| {
        let mut v = v.clone();
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!(
        "the statistics' own cost, ns per run (BPF_PROG_TEST_RUN, median of {TEST_ROUNDS} x {TEST_RUNS} runs)"
    );
    println!("{:<28} | {:>7} {:>7} | {:>7} {:>7}", "frame", "xdp off", "on", "tc off", "on");
    for (f, (name, _)) in frames.iter().enumerate() {
        let [x, t] = &ns[f];
        println!(
            "{name:<28} | {:>7} {:>7} | {:>7} {:>7}",
            median(&x[0]),
            median(&x[1]),
            median(&t[0]),
            median(&t[1])
        );
    }
    Ok(())
}

/// (runs, ns per run) of the programs of `prog_type` between two snapshots.
fn delta(before: &[ProgStats], after: &[ProgStats], prog_type: u64) -> (u64, f64) {
    let (mut runs, mut ns) = (0, 0);
    for a in after.iter().filter(|p| p.prog_type == prog_type) {
        let b = before.iter().find(|b| b.prog_id == a.prog_id).copied().unwrap_or_default();
        runs += a.run_cnt - b.run_cnt;
        ns += a.run_time_ns - b.run_time_ns;
    }
    (runs, if runs == 0 { 0.0 } else { ns as f64 / runs as f64 })
}

/// `mirror-daemon capture` on the server's veth, its pcap thrown away; returns once it captures.
fn start_capture(pair: &Pair, daemon_bin: &Path) -> Result<(ChildGuard, std::thread::JoinHandle<String>)> {
    let mut child = pair
        .server
        .command(daemon_bin)
        .args(["capture", "--interface", &pair.server_if, "--port", &PORT.to_string(), "-w", "/dev/null"])
        .env("MIRROR_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start mirror-daemon capture")?;
    let stderr = child.stderr.take().context("stderr")?;
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("capturing") {
                let _ = tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        drop(guard);
        bail!("mirror-daemon capture did not start:\n{}", log.join().unwrap_or_default());
    }
    Ok((guard, log))
}

/// Runs one load: `CONNECTIONS` keep-alive connections at once, each `shape.exchanges` exchanges
/// (cut short at [`LOAD_LIMIT`]).
fn drive(pair: &Pair, server: SocketAddr, shape: &Shape) -> Result<()> {
    let asks = vec![shape.ask; shape.exchanges];
    let done = pair.client.run(move || {
        let begin = Instant::now();
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let asks = asks.clone();
                std::thread::spawn(move || {
                    // In slices, so that the time limit holds.
                    let mut exchanges = 0;
                    for slice in asks.chunks(50) {
                        if begin.elapsed() > LOAD_LIMIT {
                            break;
                        }
                        exchanges += run_connection(server, slice).exchanges;
                    }
                    exchanges
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum::<usize>()
    });
    if done == 0 {
        bail!("no exchange completed");
    }
    Ok(())
}
