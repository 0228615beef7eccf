//! `mirror-daemon`: the command-line front of shadow mirror.
use anyhow::Result;
use clap::{Parser, Subcommand};
use mirror_daemon::logging::LogFormat;

mod commands;

/// Mirrors a model server's HTTP traffic from the kernel (XDP + TC) without touching the live path.
#[derive(Debug, Parser)]
#[command(
    name = "mirror-daemon",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Log format: journald under systemd, JSON in a container, pretty on a terminal (auto).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: `run`.
    #[command(flatten)]
    run: commands::run::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture, rebuild every HTTP exchange, log and record it (the default).
    Run(commands::run::RunArgs),
    /// Capture the model server's TCP segments (both directions) and print them or write a pcap file.
    Capture(commands::capture::CaptureArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    mirror_daemon::logging::init(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Some(Command::Capture(args)) => commands::capture::run(args).await,
            Some(Command::Run(args)) => commands::run::run(args).await,
            None => commands::run::run(cli.run).await,
        }
    })
}
