//! `mirror-daemon`: the command-line front of shadow mirror.
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
    /// Check a config file: exit 0 when it is valid, 3 with one line per problem otherwise.
    CheckConfig(commands::check_config::CheckConfigArgs),
    /// Summarise comparison records (one or several nodes') and decide: exit 0 PROMOTE, 1 HOLD,
    /// 2 REJECT, 3 no report possible.
    Report(commands::report::ReportArgs),
}

/// The command line parser. `run` needs `--interface` and `--port` unless `--config` names a
/// file (which must then provide them), and no `--interface` with `--pod-selector`; `capture`
/// always needs both.
fn command() -> clap::Command {
    let interfaces =
        |arg: clap::Arg| arg.required(false).required_unless_present_any(["config", "pod_selector"]);
    let ports = |arg: clap::Arg| arg.required(false).required_unless_present("config");
    Cli::command()
        .mut_arg("interfaces", interfaces)
        .mut_arg("ports", ports)
        .mut_subcommand("run", |run| run.mut_arg("interfaces", interfaces).mut_arg("ports", ports))
}

/// Parses the command line; the matches are kept to tell flags given from defaults.
fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<(Cli, clap::ArgMatches), clap::Error> {
    let matches = command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok((cli, matches))
}

/// Allocation is a large share of the daemon's work (every exchange is a few dozen buffers, made
/// on one thread and freed on another). mimalloc keeps a heap per thread, with frees from other
/// threads handed back to the owner without a shared lock; glibc's malloc, limited to two arenas
/// to bound the resident set, spent a quarter of the rebuilding threads' time in malloc and free
/// and waited on the arena locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Memory freed is given back to the system at once, and arenas are committed as they are used,
/// so that the resident set follows what the daemon's parts hold under `--memory-limit` (with
/// mimalloc's defaults — freed memory kept 10 ms, arenas committed eagerly and reset rather
/// than decommitted — 256 KiB bodies under overload took the daemon to 104 MiB at a 48MiB
/// limit; measured: README, Memory). Run from the executable's initializers, before anything is
/// allocated: mimalloc reads its options once, when it starts, and reserves its first arena then.
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

extern "C" fn tune_allocator() {
    // `mi_option_e` of the mimalloc 3 that libmimalloc-sys builds (include/mimalloc.h); the
    // crate's own constants are mimalloc 2's numbering.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_option_set only sets an allocator parameter.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

fn main() -> ExitCode {
    let (cli, matches) = match parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(err) => {
            // Usage errors exit 3, not clap's 2: `report` uses 2 for REJECT.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 3 } else { 0 });
        }
    };
    // Pure file processing: no logging setup, no runtime; the exit status is the decision.
    match cli.command {
        Some(Command::Report(args)) => {
            return commands::report::run(args).unwrap_or_else(|err| {
                eprintln!("Error: {err:#}");
                ExitCode::from(3)
            });
        }
        Some(Command::CheckConfig(args)) => return commands::check_config::run(&args),
        _ => {}
    }
    // The settings in force for `run`: the config file's under the flags given.
    let (capture, run_args, run_matches) = match cli.command {
        Some(Command::Run(args)) => {
            (None, Some(*args), matches.subcommand_matches("run").unwrap_or(&matches))
        }
        Some(Command::Capture(args)) => (Some(args), None, &matches),
        _ => (None, Some(cli.run), &matches),
    };
    let run = match run_args.map(|args| {
        let invocation = commands::run::Invocation::from_matches(args, run_matches);
        invocation.settings().map(|settings| (invocation, settings))
    }) {
        Some(Ok(run)) => Some(run),
        Some(Err(err)) => {
            eprintln!("Error: {err:#}");
            return ExitCode::from(3);
        }
        None => None,
    };
    let log_format = run.as_ref().and_then(|(_, settings)| settings.log_format).unwrap_or(cli.log_format);
    mirror_daemon::logging::init(log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| {
            runtime.block_on(async {
                match (capture, run) {
                    (Some(args), _) => commands::capture::run(args).await,
                    (None, Some((invocation, settings))) => commands::run::run(invocation, settings).await,
                    (None, None) => unreachable!("either capture or run"),
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
        super::parse(std::iter::once("mirror-daemon").chain(args.iter().copied()).map(Into::into))
            .map(|(cli, _)| cli)
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

    /// The settings `run` would use for `args`, with `config` (YAML) written to a scratch file.
    fn settings(config: &str, args: &[&str]) -> anyhow::Result<commands::run::RunArgs> {
        let file = std::env::temp_dir().join(format!(
            "mirror-cli-{}-{:?}.yaml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&file, config).unwrap();
        let mut argv = vec!["mirror-daemon".to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.extend(["--config".to_string(), file.display().to_string()]);
        let (cli, matches) = super::parse(argv.into_iter().map(Into::into))?;
        let (args, matches) = match cli.command {
            Some(Command::Run(args)) => (*args, matches.subcommand_matches("run").unwrap().clone()),
            _ => (cli.run, matches),
        };
        let result = commands::run::Invocation::from_matches(args, &matches).settings();
        std::fs::remove_file(&file).unwrap();
        result
    }

    const FILE: &str = "capture: {interfaces: [eth0], ports: [8080]}\nsampling: {percent: 10}\n\
        compare: {abs_tolerance: 0.5, ignore: [/id]}\nshadows: [{model_id: v2, endpoint: 'http://s:80'}]\n\
        criteria: {min_samples: 7}\noutput: {log_format: json}\n";

    #[test]
    fn the_file_fills_in_what_the_command_line_leaves_out() {
        let s = settings(FILE, &[]).unwrap();
        assert_eq!(s.attach.interfaces, ["eth0"]);
        assert_eq!(s.attach.ports, [8080]);
        assert_eq!(s.mirror.sample_percent, 10.0, "the CLI default (100) does not override the file");
        assert_eq!(s.mirror.shadow[0].model.model_id, "v2");
        assert_eq!(s.criteria.min_samples, 7);
        assert_eq!(s.criteria.min_agreement, 0.95, "unset in the file: the default");
        assert_eq!(s.log_format, Some(LogFormat::Json));
        let rules = s.mirror.compare.as_ref().unwrap();
        assert_eq!((rules.abs_tolerance, rules.ignore.as_slice()), (0.5, &["/id".to_string()][..]));
    }

    #[test]
    fn flags_given_override_the_file() {
        let s = settings(FILE, &["--sample-percent", "50", "-i", "lo", "--abs-tolerance", "0.1"]).unwrap();
        assert_eq!(s.mirror.sample_percent, 50.0);
        assert_eq!(s.attach.interfaces, ["lo"], "a list flag replaces the file's list");
        assert_eq!(s.attach.ports, [8080], "not given: the file's");
        let rules = s.mirror.compare.as_ref().unwrap();
        assert_eq!(rules.abs_tolerance, 0.1);
        assert_eq!(rules.ignore, ["/id"], "not given: the file's");
        let s = settings(FILE, &["--log-format", "pretty", "run", "--min-samples", "3"]).unwrap();
        assert_eq!(s.criteria.min_samples, 3, "also after `run`");
        assert_eq!(s.log_format, None, "--log-format given: the file's is not used");
        // Given explicitly with the default value still counts as given.
        assert_eq!(settings(FILE, &["--sample-percent", "100"]).unwrap().mirror.sample_percent, 100.0);
    }

    #[test]
    fn shedding_is_on_unless_the_file_or_the_flag_turns_it_off() {
        assert!(!settings(FILE, &[]).unwrap().no_shed, "left out: connections are shed");
        let off = FILE.replace("ports: [8080]}", "ports: [8080], shed: false}");
        assert!(settings(&off, &[]).unwrap().no_shed, "capture.shed: false is --no-shed");
        let on = FILE.replace("ports: [8080]}", "ports: [8080], shed: true}");
        assert!(!settings(&on, &[]).unwrap().no_shed);
        assert!(settings(&on, &["--no-shed"]).unwrap().no_shed, "the flag given overrides the file");
        let changes = commands::run::changes(&settings(&on, &[]).unwrap(), &settings(&off, &[]).unwrap());
        assert_eq!(changes.restart, ["capture.shed"], "the kernel's shedding is set up at start");
    }

    #[test]
    fn with_a_config_file_interface_and_port_may_come_from_it() {
        assert!(parse(&["--config", "x.yaml"]).is_ok());
        assert!(parse(&["run", "--config", "x.yaml"]).is_ok());
        assert!(parse(&["run", "-p", "80"]).is_err(), "no file: --interface is required");
        assert!(parse(&["capture", "-p", "80"]).is_err(), "capture still needs --interface");
        assert!(parse(&["run", "-p", "80", "--pod-selector", "app=m"]).is_ok(), "pods replace --interface");
        assert!(parse(&["--pod-selector", "app=m"]).is_err(), "a port is still required");
        let err = settings("sampling: {percent: 5}", &[]).unwrap_err().to_string();
        assert!(err.contains("capture.interfaces") && err.contains("--interface"), "{err}");
        let err = settings("sampling: {percent: 500}", &["-i", "lo", "-p", "1"]).unwrap_err().to_string();
        assert!(err.contains("sampling.percent"), "{err}");
    }

    #[test]
    fn capture_and_run_give_the_ring_buffer_the_same_default() {
        let Some(Command::Capture(capture)) = parse(&["capture", "-i", "lo", "-p", "80"]).unwrap().command
        else {
            panic!("capture parses as capture")
        };
        let run = parse(&["run", "-i", "lo", "-p", "80"]).unwrap();
        let Some(Command::Run(run)) = run.command else { panic!("run parses as run") };
        let ring = run.shares().unwrap().ring_buffer;
        assert_eq!(u64::from(capture.attach.capture_config().ring_bytes), ring);
        // A smaller budget shrinks `run`'s ring; `capture` has no budget and keeps the default's.
        let small = parse(&["run", "-i", "lo", "-p", "80", "--memory-limit", "64MiB"]).unwrap();
        let Some(Command::Run(small)) = small.command else { panic!("run parses as run") };
        assert!(small.shares().unwrap().ring_buffer < ring);
    }

    #[test]
    fn kernel_stats_come_from_the_flag_or_the_file() {
        assert!(!settings(FILE, &[]).unwrap().attach.kernel_stats, "off by default");
        let file = FILE.replace("ports: [8080]}", "ports: [8080], kernel_stats: true}");
        let s = settings(&file, &[]).unwrap();
        assert!(s.attach.kernel_stats && s.attach.capture_config().kernel_stats);
        assert!(settings(FILE, &["--kernel-stats"]).unwrap().attach.kernel_stats);
        let changes = commands::run::changes(&settings(FILE, &[]).unwrap(), &s);
        assert_eq!(
            changes.restart,
            ["capture.kernel_stats"],
            "the programs keep their statistics until restart"
        );
    }

    #[test]
    fn reload_sorts_changes_into_applied_and_restart() {
        let old = settings(FILE, &[]).unwrap();
        let new = settings(
            &FILE
                .replace("percent: 10", "percent: 20")
                .replace("[eth0]", "[eth1]")
                .replace("ports: [8080]", "ports: [8081]")
                .replace("min_samples: 7", "min_samples: 8"),
            &[],
        )
        .unwrap();
        let changes = commands::run::changes(&old, &new);
        assert_eq!(changes.applied, ["sampling.percent", "criteria", "capture.interfaces"]);
        assert_eq!(changes.restart, ["capture.ports"]);
        assert_eq!(commands::run::changes(&old, &old), commands::run::Changes::default());
        let more = settings(&FILE.replace("'http://s:80'", "'http://s:81'"), &[]).unwrap();
        assert_eq!(commands::run::changes(&old, &more).applied, ["shadows"]);
    }
}
