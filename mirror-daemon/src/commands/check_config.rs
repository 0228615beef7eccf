//! `mirror-daemon check-config FILE`: validates a config file without starting anything, so that
//! a bad file is caught in CI or before `systemctl reload`, not by a daemon that refuses to start
//! (or, on SIGHUP, keeps its old settings).
//!
//! Prints `FILE: valid (N shadows, M routes)` and exits 0, or prints one line per problem —
//! `FILE: field.path: what is wrong and how to fix it` — and exits 3, like a usage error.
use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::Args;
use mirror_daemon::config::{self, ConfigError};

#[derive(Debug, Clone, Args)]
pub struct CheckConfigArgs {
    /// The config file (.yaml, .yml or .toml).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Exit status 0 when valid, 3 otherwise.
pub fn run(args: &CheckConfigArgs) -> ExitCode {
    let (code, text) = check(&args.file);
    let _ = if code == 0 {
        std::io::stdout().write_all(text.as_bytes())
    } else {
        std::io::stderr().write_all(text.as_bytes())
    };
    ExitCode::from(code)
}

/// The exit status and what to print.
pub fn check(path: &std::path::Path) -> (u8, String) {
    let result = config::load(path).and_then(|settings| {
        let problems = settings.standalone_problems();
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::Invalid { path: path.into(), problems })
        }
    });
    match result {
        Ok(settings) => {
            let shadows = settings.shadows.as_ref().map_or(0, Vec::len);
            let routes = settings.route_rules.len();
            (0, format!("{}: valid ({shadows} shadows, {routes} routes)\n", path.display()))
        }
        Err(err) => (3, err.lines().into_iter().map(|l| l + "\n").collect()),
    }
}
