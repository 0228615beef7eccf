//! `cargo xtask demo`: the whole mission on a self-contained namespace topology, in two scenes.
//!
//! A client namespace calls the production model (v1, Open Inference Protocol) in a production
//! namespace; a shadow namespace runs the candidate (v2), which flips the top label on a known share
//! of rows and is a little slower. `mirror-daemon` runs next to production, attached to its
//! interface: it rebuilds every exchange from the wire, replays the inference requests to v2,
//! compares the answers, logs a live summary and ends with the promotion verdict. Then the
//! `report` command reads the records it wrote. Everything created is removed on exit.
//!
//! The `rest` scene speaks the protocol over HTTP/1.1 JSON; the `grpc` scene over gRPC
//! (`inference.GRPCInferenceService/ModelInfer`, HTTP/2), with real grpcio servers and client from
//! the test environment's pinned virtualenv, replayed to the candidate over h2c. The `llm` scene
//! swaps the classifier for streaming LLMs: OpenAI-compatible servers (aiohttp, Server-Sent Events)
//! and the official `openai` client with `stream=True`, the candidate changing a word in a share of
//! its answers. `--scene` picks one; all run by default.
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

/// Which scene to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scene {
    /// Open Inference Protocol over HTTP/1.1 (JSON).
    Rest,
    /// Open Inference Protocol over gRPC (HTTP/2).
    Grpc,
    /// Streamed LLM answers: OpenAI-compatible chat and completions over Server-Sent Events.
    Llm,
    /// Every scene, one after the other.
    All,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Which scene to run.
    #[arg(long, value_enum, default_value_t = Scene::All)]
    pub scene: Scene,
    /// How long to drive traffic.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Inference requests per second (bounded load).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Share of rows (0-100) on which the candidate model disagrees.
    #[arg(long, default_value_t = 0.5)]
    pub disagree_percent: f64,
    /// LLM scene: share of prompts (0-100) whose answer the candidate LLM words differently.
    #[arg(long, default_value_t = 5.0)]
    pub differ_percent: f64,
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
    if matches!(args.scene, Scene::Rest | Scene::All) {
        rest_scene(&daemon_bin, args)?;
    }
    if matches!(args.scene, Scene::Grpc | Scene::All) {
        grpc_scene(&daemon_bin, args)?;
    }
    if matches!(args.scene, Scene::Llm | Scene::All) {
        llm_scene(&daemon_bin, args)?;
    }
    Ok(())
}

/// A running `mirror-daemon` whose log is printed as it comes.
struct RunningDaemon {
    child: ChildGuard,
    printer: std::thread::JoinHandle<()>,
}

/// Starts `mirror-daemon run ARGS...` in `ns`, printing its log, and waits until it captures.
fn start_daemon(daemon_bin: &Path, ns: &Netns, args: &[&str], record: &Path) -> Result<RunningDaemon> {
    let mut daemon = ns
        .command(daemon_bin)
        .args(["--log-format", "pretty", "run"])
        .args(args)
        .arg("--record")
        .arg(record)
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
    let child = ChildGuard(daemon);
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).context("mirror-daemon did not start")?;
        if line.contains("capturing") {
            break;
        }
    }
    Ok(RunningDaemon { child, printer })
}

/// Stops the daemon (SIGINT: final summary and verdict), then shows `report` on its records.
fn finish(daemon: RunningDaemon, daemon_bin: &Path, record: &Path) -> Result<()> {
    std::thread::sleep(Duration::from_millis(1500));
    let RunningDaemon { mut child, printer } = daemon;
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let status = child.0.wait()?;
    let _ = printer.join();
    if !status.success() {
        bail!("mirror-daemon exited with {status}");
    }
    println!("\n== the same verdict offline: mirror-daemon report {}", record.display());
    let report = Command::new(daemon_bin).arg("report").arg(record).status().context("run report")?;
    println!("   (exit status {}: 0 PROMOTE, 1 HOLD, 2 REJECT)", report.code().unwrap_or(-1));
    let _ = std::fs::remove_file(record);
    Ok(())
}

fn record_file(scene: &str) -> PathBuf {
    let record =
        std::env::temp_dir().join(format!("shadow-mirror-demo-{scene}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&record);
    record
}

fn rest_scene(daemon_bin: &Path, args: &DemoArgs) -> Result<()> {
    let server_bin = daemon_bin.with_file_name("model-server");
    println!("\n== REST scene. Topology: client <-> production (model v1) <-> shadow (candidate model v2)");
    let trio = Trio::new();
    let production = SocketAddr::from((trio.production_addr, 8080));
    let shadow = SocketAddr::from((trio.shadow_addr, 8080));
    let v1 = ServerOptions { version: "1.0.0".into(), disagree_percent: 0.0, delay_ms: 20 };
    let v2 = ServerOptions { version: "2.0.0".into(), disagree_percent: args.disagree_percent, delay_ms: 24 };
    let _v1 = model_server(&server_bin, &trio.production, production, &v1)?;
    let _v2 = model_server(&server_bin, &trio.shadow, shadow, &v2)?;

    let record = record_file("rest");
    println!(
        "\n== mirror-daemon on {} (production side), replaying to model-v2 at {shadow}",
        trio.production_if
    );
    let shadow_spec = format!("model-v2@2.0.0=http://{shadow}");
    let daemon = start_daemon(
        daemon_bin,
        &trio.production,
        &[
            "--interface",
            &trio.production_if,
            "--port",
            "8080",
            "--shadow",
            &shadow_spec,
            "--production-model",
            "model-v1@1.0.0",
            "--route",
            "POST /v2/models/*/infer",
            "--summary-interval",
            "5s",
        ],
        &record,
    )?;

    println!(
        "\n== driving ~{} inference requests/s for {} s from the client (plus health checks, not replayed)\n",
        args.rate, args.seconds
    );
    let (sent, failed) = drive(&trio.client, production, args)?;
    println!("\n== client: {sent} inference requests, {failed} failed (production is never touched)");
    finish(daemon, daemon_bin, &record)?;
    println!(
        "\n== cleaning up: namespaces {}, {} and {} removed",
        trio.client.name, trio.production.name, trio.shadow.name
    );
    if failed > 0 {
        bail!("{failed} production requests failed");
    }
    Ok(())
}

fn grpc_scene(daemon_bin: &Path, args: &DemoArgs) -> Result<()> {
    use mirror_tests::grpc::{self, ClientOptions, Rpc, ServerKind, ServerOptions as GrpcOptions};
    println!(
        "\n== gRPC scene. Topology: client <-> production (model v1, gRPC) <-> shadow (candidate v2, gRPC)"
    );
    println!("   (Python grpcio servers and client from the pinned test environment; preparing it once...)");
    mirror_tests::python::prepare().context("prepare the Python gRPC environment")?;
    let trio = Trio::new();
    let production = SocketAddr::from((trio.production_addr, 8081));
    let shadow = SocketAddr::from((trio.shadow_addr, 8081));
    let v1 = GrpcOptions { version: "1.0.0".into(), delay_ms: 20, ..GrpcOptions::default() };
    let v2 = GrpcOptions {
        version: "2.0.0".into(),
        disagree_percent: args.disagree_percent,
        delay_ms: 24,
        ..GrpcOptions::default()
    };
    let _v1 = grpc::start_server(ServerKind::Oip, &trio.production, &[production], &v1)
        .context("start the production gRPC server")?;
    let _v2 = grpc::start_server(ServerKind::Oip, &trio.shadow, &[shadow], &v2)
        .context("start the shadow gRPC server")?;
    println!("   {}: model v1 serving inference.GRPCInferenceService on {production}", trio.production.name);
    println!("   {}: model v2 serving inference.GRPCInferenceService on {shadow}", trio.shadow.name);

    let record = record_file("grpc");
    println!(
        "\n== mirror-daemon on {} (production side), replaying each gRPC call over h2c to model-v2 at {shadow}",
        trio.production_if
    );
    let shadow_spec = format!("model-v2@2.0.0=h2c://{shadow}");
    let daemon = start_daemon(
        daemon_bin,
        &trio.production,
        &[
            "--interface",
            &trio.production_if,
            "--port",
            "8081",
            "--shadow",
            &shadow_spec,
            "--production-model",
            "model-v1@1.0.0",
            "--summary-interval",
            "5s",
        ],
        &record,
    )?;
    let calls = (u64::from(args.rate) * args.seconds) as usize;
    println!(
        "\n== {calls} ModelInfer calls at ~{} calls/s over one long-lived gRPC connection, 4 streams in flight\n",
        args.rate
    );
    let options = ClientOptions {
        concurrency: 4,
        rate: Some(f64::from(args.rate)),
        ..ClientOptions::new(Rpc::Infer, production, calls)
    };
    let truth = grpc::run_client(&trio.client, &options, &record.with_extension("truth"));
    let failed = truth.iter().filter(|t| t.code != 0).count();
    let _ = std::fs::remove_file(record.with_extension("truth"));
    println!("\n== client: {} calls, {failed} failed (production is never touched)", truth.len());
    finish(daemon, daemon_bin, &record)?;
    println!(
        "\n== cleaning up: namespaces {}, {} and {} removed",
        trio.client.name, trio.production.name, trio.shadow.name
    );
    if failed > 0 {
        bail!("{failed} production calls failed");
    }
    Ok(())
}

fn llm_scene(daemon_bin: &Path, args: &DemoArgs) -> Result<()> {
    use mirror_tests::llm::{self, ClientOptions, ServerOptions as LlmOptions};
    println!(
        "\n== LLM scene. Topology: client <-> production (LLM v1, streaming) <-> shadow (candidate LLM v2)"
    );
    println!(
        "   (aiohttp servers and the openai client from the pinned test environment; preparing it once...)"
    );
    mirror_tests::python::prepare().context("prepare the Python test environment")?;
    let trio = Trio::new();
    let production = SocketAddr::from((trio.production_addr, 8000));
    let shadow = SocketAddr::from((trio.shadow_addr, 8000));
    let v1 = LlmOptions { ttft_ms: 60.0, token_delay_ms: 8.0, ..LlmOptions::default() };
    let v2 = LlmOptions {
        ttft_ms: 75.0,
        token_delay_ms: 9.0,
        variant: true,
        differ_percent: args.differ_percent,
        ..LlmOptions::default()
    };
    let _v1 = llm::start_server(&trio.production, &[production], &v1).context("start the production LLM")?;
    let _v2 = llm::start_server(&trio.shadow, &[shadow], &v2).context("start the candidate LLM")?;
    println!(
        "   {}: LLM v1 streaming /v1/chat/completions and /v1/completions on {production}",
        trio.production.name
    );
    println!(
        "   {}: LLM v2 on {shadow}, first token ~15 ms later, {}% of its answers worded differently",
        trio.shadow.name, args.differ_percent
    );

    let record = record_file("llm");
    println!(
        "\n== mirror-daemon on {} (production side), assembling each stream and replaying it to llm-v2 at {shadow}",
        trio.production_if
    );
    let shadow_spec = format!("llm-v2@2.0.0=http://{shadow}");
    let daemon = start_daemon(
        daemon_bin,
        &trio.production,
        &[
            "--interface",
            &trio.production_if,
            "--port",
            "8000",
            "--shadow",
            &shadow_spec,
            "--production-model",
            "llm-v1@1.0.0",
            "--route",
            "POST /v1/**",
            "--summary-interval",
            "5s",
        ],
        &record,
    )?;
    // A streamed answer takes ~60 ms + 8 ms a token (8-24 tokens): ~5 requests/s per stream in flight.
    let requests = (args.seconds * 20) as usize;
    println!(
        "\n== {requests} requests from the openai client, 4 in flight: chat and completions, streamed \
         (some with the usage chunk, some with tools), every 10th whole\n"
    );
    let options = ClientOptions {
        concurrency: 4,
        usage_every: 2,
        tools_every: 5,
        non_stream_every: 10,
        ..ClientOptions::new(production, requests)
    };
    let truth_file = record.with_extension("truth");
    let truth = llm::run_client(&trio.client, &options, &truth_file);
    let _ = std::fs::remove_file(truth_file);
    let failed = truth.iter().filter(|t| t.error.is_some()).count();
    let mut ttfts: Vec<f64> = truth.iter().filter_map(|t| t.ttft_ms).collect();
    ttfts.sort_by(f64::total_cmp);
    let median = ttfts.get(ttfts.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "\n== client: {} requests, {failed} failed, time to first token (client side) median {median:.1} ms",
        truth.len()
    );
    finish(daemon, daemon_bin, &record)?;
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
