//! `cargo xtask demo`: the whole mission on a self-contained namespace topology.
//!
//! A client namespace calls the production model (v1, Open Inference Protocol) in a production
//! namespace; a shadow namespace runs the candidate (v2), which flips the top label on a known share
//! of rows and is a little slower. `mirror-daemon` runs next to production, attached to its
//! interface: it rebuilds every exchange from the wire, replays the inference requests to v2,
//! compares the answers, logs a live summary and ends with the promotion verdict. Then the
//! `report` command reads the records it wrote. Everything created is removed on exit.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use mirror_tests::{
    ChildGuard,
    client::{connect, post_json},
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Trio},
};

use crate::{
    build::{self, BuildArgs},
    util::is_root,
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to drive traffic.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Inference requests per second (bounded load).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Share of rows (0-100) on which the candidate model disagrees.
    #[arg(long, default_value_t = 0.5)]
    pub disagree_percent: f64,
}

fn model_server(bin: &Path, ns: &Netns, addr: SocketAddr, options: &ServerOptions) -> Result<ChildGuard> {
    let (child, said) = model_server::start(bin, ns, &[addr], options).context("start the model server")?;
    for line in said {
        println!("   {} v{}: {line}", ns.name, options.version);
    }
    Ok(child)
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    let daemon_bin = build::run_build(&BuildArgs { debug: false })?;
    let server_bin = daemon_bin.with_file_name("model-server");

    println!("\n== topology: client <-> production (model v1) <-> shadow (candidate model v2)");
    let trio = Trio::new();
    let production = SocketAddr::from((trio.production_addr, 8080));
    let shadow = SocketAddr::from((trio.shadow_addr, 8080));
    let v1 = ServerOptions { version: "1.0.0".into(), disagree_percent: 0.0, delay_ms: 20 };
    let v2 = ServerOptions { version: "2.0.0".into(), disagree_percent: args.disagree_percent, delay_ms: 24 };
    let _v1 = model_server(&server_bin, &trio.production, production, &v1)?;
    let _v2 = model_server(&server_bin, &trio.shadow, shadow, &v2)?;

    let record: PathBuf =
        std::env::temp_dir().join(format!("shadow-mirror-demo-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&record);
    println!(
        "\n== mirror-daemon on {} (production side), replaying to model-v2 at {shadow}",
        trio.production_if
    );
    let shadow_spec = format!("model-v2@2.0.0=http://{shadow}");
    let mut daemon = trio
        .production
        .command(&daemon_bin)
        .args(["--log-format", "pretty", "run", "--interface", &trio.production_if, "--port", "8080"])
        .args(["--shadow", &shadow_spec, "--production-model", "model-v1@1.0.0"])
        .args(["--route", "POST /v2/models/*/infer", "--summary-interval", "5s", "--record"])
        .arg(&record)
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .context("start mirror-daemon")?;
    let daemon_err = daemon.stderr.take().context("daemon stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let printer = std::thread::spawn(move || {
        for line in BufReader::new(daemon_err).lines().map_while(Result::ok) {
            println!("   | {line}");
            let _ = tx.send(line);
        }
    });
    let daemon = ChildGuard(daemon);
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).context("mirror-daemon did not start")?;
        if line.contains("capturing") {
            break;
        }
    }

    println!(
        "\n== driving ~{} inference requests/s for {} s from the client (plus health checks, not replayed)\n",
        args.rate, args.seconds
    );
    let (sent, failed) = drive(&trio.client, production, args)?;

    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGINT) };
    let mut daemon = daemon;
    let status = daemon.0.wait()?;
    let _ = printer.join();
    if !status.success() {
        bail!("mirror-daemon exited with {status}");
    }
    println!("\n== client: {sent} inference requests, {failed} failed (production is never touched)");

    println!("\n== the same verdict offline: mirror-daemon report {}", record.display());
    let report = Command::new(&daemon_bin).arg("report").arg(&record).status().context("run report")?;
    println!("   (exit status {}: 0 PROMOTE, 1 HOLD, 2 REJECT)", report.code().unwrap_or(-1));
    let _ = std::fs::remove_file(&record);
    println!(
        "\n== cleaning up: namespaces {}, {} and {} removed",
        trio.client.name, trio.production.name, trio.shadow.name
    );
    if failed > 0 {
        bail!("{failed} production requests failed");
    }
    Ok(())
}

/// Paced load: 4 keep-alive connections in parallel, rows of 4 features, batches of 1–4.
fn drive(ns: &Netns, server: SocketAddr, args: &DemoArgs) -> Result<(usize, usize)> {
    let seconds = args.seconds;
    let per_worker = f64::from(args.rate.max(4)) / 4.0;
    let results = ns.run(move || {
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                std::thread::spawn(move || {
                    let mut conn = connect(server);
                    let host = server.to_string();
                    let started = Instant::now();
                    let (mut sent, mut failed) = (0usize, 0usize);
                    let mut n = w;
                    while started.elapsed() < Duration::from_secs(seconds) {
                        let rows: Vec<Vec<f64>> = (0..1 + n % 4)
                            .map(|r| {
                                (0..4)
                                    .map(|f| (((n * 37 + r * 11 + f * 5) % 101) as f64 - 50.0) / 9.0)
                                    .collect()
                            })
                            .collect();
                        let body = infer_request(&format!("demo-{n}"), &rows);
                        let (status, _, _) = post_json(&mut conn, &host, "/v2/models/demo/infer", &body);
                        sent += 1;
                        failed += usize::from(status != 200);
                        if n % 10 == 0 {
                            let _ = post_json(&mut conn, &host, "/v2/health/ready", b"");
                        }
                        n += 4;
                        let due = Duration::from_secs_f64(sent as f64 / per_worker);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    (sent, failed)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or((0, 1))).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    Ok(results)
}
