//! `cargo xtask demo`: a self-contained run on a namespace topology, nothing else needed.
//!
//! A client namespace talks HTTP to a model server in a server namespace over a veth pair; the
//! daemon attaches to the server's interface and captures both directions into a pcap file.
//! At the end every TCP stream rebuilt from the kernel capture is checked against what the client
//! itself sent and received. Everything created is removed on exit.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use mirror_tests::{
    client::{Ask, Transcript, run_connection},
    netns::Pair,
    pcap_streams,
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
    /// Requests per second (bounded load).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    let daemon_bin = build::run_build(&BuildArgs { debug: false })?;
    let server_bin = daemon_bin.with_file_name("model-server");

    println!("\n== topology: client namespace <-> veth <-> server namespace (model server on :8080)");
    let pair = Pair::new();
    let server = SocketAddr::new(pair.server_ip(false), 8080);
    let server_v6 = SocketAddr::new(pair.server_ip(true), 8080);
    let mut model = pair
        .server
        .command(&server_bin)
        .args(["--listen", &server.to_string(), "--listen", &server_v6.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("start the model server")?;
    let model_out = model.stdout.take().context("model server stdout")?;
    let _model = Killed(model);
    let mut lines = BufReader::new(model_out).lines();
    for _ in 0..2 {
        let line = lines.next().context("model server exited")??;
        println!("   model server: {line}");
    }

    let pcap: PathBuf = std::env::temp_dir().join(format!("shadow-mirror-demo-{}.pcap", std::process::id()));
    println!("\n== mirror-daemon capture on {} (server side), writing {}", pair.server_if, pcap.display());
    let mut daemon = pair
        .server
        .command(&daemon_bin)
        .args(["capture", "--interface", &pair.server_if, "--port", "8080", "--write"])
        .arg(&pcap)
        .stderr(Stdio::piped())
        .spawn()
        .context("start mirror-daemon")?;
    let daemon_err = daemon.stderr.take().context("daemon stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(daemon_err).lines().map_while(Result::ok) {
            println!("   daemon: {line}");
            let _ = tx.send(line);
        }
    });
    let daemon = Killed(daemon);
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).context("mirror-daemon did not start")?;
        if line.contains("capturing") {
            break;
        }
    }

    println!(
        "\n== driving ~{} requests/s for {} s (IPv4 and IPv6, bodies 0 B to 256 KiB)",
        args.rate, args.seconds
    );
    let transcripts = drive(&pair, server, server_v6, args);
    let exchanges: usize = transcripts.iter().map(|t| t.exchanges).sum();
    let up: usize = transcripts.iter().map(|t| t.sent.len()).sum();
    let down: usize = transcripts.iter().map(|t| t.received.len()).sum();
    println!(
        "   client: {exchanges} exchanges on {} connections, {up} bytes sent, {down} received",
        transcripts.len()
    );

    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGINT) };
    let mut daemon = daemon;
    let status = daemon.0.wait()?;
    std::thread::sleep(Duration::from_millis(200));
    if !status.success() {
        bail!("mirror-daemon exited with {status}");
    }

    println!("\n== first packets of the capture (tcpdump -r)");
    let _ = Command::new("tcpdump").args(["-nn", "-c", "6", "-r"]).arg(&pcap).stderr(Stdio::null()).status();

    println!("\n== checking every rebuilt stream against the client's own record");
    let streams = pcap_streams::read(&pcap);
    let mut matched = 0;
    for t in &transcripts {
        let client = t.local.context("client address")?;
        let server = if client.is_ipv6() { server_v6 } else { server };
        let up = streams.get(&(client, server)).map(|s| s.bytes == t.sent).unwrap_or(false);
        let down = streams.get(&(server, client)).map(|s| s.bytes == t.received).unwrap_or(false);
        if up && down {
            matched += 1;
        } else {
            println!("   MISMATCH on {client}: request stream equal {up}, response stream equal {down}");
        }
    }
    let _ = std::fs::remove_file(&pcap);
    println!("   {matched} of {} connections rebuilt byte for byte, both directions", transcripts.len());
    println!("\n== cleaning up: namespaces {} and {} removed", pair.client.name, pair.server.name);
    if matched != transcripts.len() {
        bail!("the capture differs from what the client exchanged");
    }
    Ok(())
}

/// Bounded load: one keep-alive connection of 10 requests at a time, paced to `rate`.
fn drive(pair: &Pair, v4: SocketAddr, v6: SocketAddr, args: &DemoArgs) -> Vec<Transcript> {
    let seconds = args.seconds;
    let rate = args.rate.max(1);
    pair.client.run(move || {
        let started = Instant::now();
        let mut transcripts = Vec::new();
        let mut sent = 0u64;
        let sizes = [0usize, 120, 1_500, 16_000, 64_000, 262_144];
        while started.elapsed() < Duration::from_secs(seconds) {
            let n = transcripts.len();
            let asks: Vec<Ask> = (0..10)
                .map(|i| Ask {
                    request_body: sizes[(n + i) % 4],
                    response_body: sizes[(n * 3 + i) % sizes.len()],
                })
                .collect();
            let server = if n % 4 == 3 { v6 } else { v4 };
            transcripts.push(run_connection(server, &asks));
            sent += 10;
            let due = Duration::from_secs_f64(sent as f64 / f64::from(rate));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        transcripts
    })
}
