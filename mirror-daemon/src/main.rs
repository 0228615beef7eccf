//! `mirror-daemon`: the command-line front of shadow mirror.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mirror_daemon::logging::LogFormat;

mod commands;

/// Mirrors a model server's HTTP traffic from the kernel (XDP + TC) without touching the live path.
#[derive(Debug, Parser)]
#[command(name = "mirror-daemon", version, about, subcommand_negates_reqs = true)]
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
    Run(Box<commands::run::RunArgs>),
    /// Capture the model server's TCP segments (both directions) and print them or write a pcap file.
    Capture(commands::capture::CaptureArgs),
    /// Summarise comparison records (one or several nodes') and decide: exit 0 PROMOTE, 1 HOLD,
    /// 2 REJECT, 3 no report possible.
    Report(commands::report::ReportArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Usage errors exit 3, not clap's 2: `report` uses 2 for REJECT.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 3 } else { 0 });
        }
    };
    if let Some(Command::Report(args)) = cli.command {
        // Pure file processing: no logging setup, no runtime; the exit status is the decision.
        return commands::report::run(args).unwrap_or_else(|err| {
            eprintln!("Error: {err:#}");
            ExitCode::from(3)
        });
    }
    mirror_daemon::logging::init(cli.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Some(Command::Capture(args)) => commands::capture::run(args).await,
                    Some(Command::Run(args)) => commands::run::run(*args).await,
                    Some(Command::Report(_)) => unreachable!("handled above"),
                    None => commands::run::run(cli.run).await,
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mirror-daemon").chain(args.iter().copied()))
    }

    #[test]
    fn every_command_form_parses() {
        let cli = parse(&["--log-format", "json", "capture", "-i", "lo", "-p", "80"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Capture(_))));
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = parse(&["capture", "--log-format", "pretty", "-i", "lo", "-p", "80"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Pretty);
        let cli = parse(&["-i", "eth0", "-p", "8080", "--shadow", "m@1=http://s:80"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.attach.interfaces, ["eth0"]);
        assert_eq!(cli.run.mirror.shadow[0].model.model_id, "m");
        let cli = parse(&["--log-format", "pretty", "run", "-i", "eth0", "-p", "8080"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Run(_))));
        assert!(matches!(
            parse(&["report", "a.jsonl", "b.jsonl"]).unwrap().command,
            Some(Command::Report(_))
        ));
    }

    #[test]
    fn mistakes_are_usage_errors() {
        assert!(parse(&["-i", "eth0"]).is_err(), "a port is required");
        assert!(parse(&["capture", "-i", "lo", "-p", "0"]).is_err());
        let err = parse(&["-i", "eth0", "-p", "1", "--shadow", "https://s:443"]).err().unwrap().to_string();
        assert!(err.contains("only http://"), "{err}");
        assert!(parse(&["report"]).is_err(), "report needs a file");
    }
}
