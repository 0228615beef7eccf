//! `mirror-daemon`: the command-line front of shadow mirror.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod commands;

/// Mirrors a model server's HTTP traffic from the kernel (XDP + TC) without touching the live path.
#[derive(Debug, Parser)]
#[command(name = "mirror-daemon", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture the model server's TCP segments (both directions) and print them or write a pcap file.
    Capture(commands::capture::CaptureArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Capture(args) => commands::capture::run(args).await,
        }
    })
}

/// Daemon logs go to stderr so that stdout stays free for data (segment lines, JSON records).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIRROR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aya=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}
