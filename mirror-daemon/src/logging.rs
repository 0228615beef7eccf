//! Where the daemon's own logs go, and in which shape.
//!
//! People read this tool with `journalctl` on hosts, `kubectl logs` in clusters and a terminal when
//! trying it out, so `auto` picks journald under systemd (`JOURNAL_STREAM` is set), JSON lines when
//! stderr is not a terminal (a container), and human-readable text otherwise. Logs always go to
//! stderr (or journald): stdout is kept for data (segment lines, JSON records).
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// journald under systemd, JSON when stderr is not a terminal, pretty otherwise.
    #[default]
    Auto,
    /// Native journald protocol, with structured `MIRROR_*` fields.
    Journald,
    /// One JSON object per line on stderr.
    Json,
    /// Human-readable lines on stderr.
    Pretty,
}

/// Journald identifier (`journalctl -t shadow-mirror`).
pub const SYSLOG_IDENTIFIER: &str = "shadow-mirror";

/// Resolves `auto` from the environment.
pub fn resolve(requested: LogFormat, journal_stream: bool, stderr_is_terminal: bool) -> LogFormat {
    match requested {
        LogFormat::Auto if journal_stream => LogFormat::Journald,
        LogFormat::Auto if !stderr_is_terminal => LogFormat::Json,
        LogFormat::Auto => LogFormat::Pretty,
        chosen => chosen,
    }
}

/// Installs the global subscriber. `MIRROR_LOG` holds an env-filter (default `info`).
/// Returns the format in use; falls back to JSON on stderr when journald cannot be reached.
pub fn init(requested: LogFormat) -> LogFormat {
    let stderr_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let format = resolve(requested, std::env::var_os("JOURNAL_STREAM").is_some(), stderr_tty);
    let filter = || EnvFilter::try_from_env("MIRROR_LOG").unwrap_or_else(|_| EnvFilter::new("info,aya=warn"));
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string())
                    .with_field_prefix(Some("MIRROR".to_string()));
                registry.with(layer.with_filter(filter())).init();
                return LogFormat::Journald;
            }
            Err(err) => {
                let json = tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr);
                registry.with(json.with_filter(filter())).init();
                tracing::warn!(%err, "journald is not reachable; logging JSON to stderr instead");
                return LogFormat::Json;
            }
        },
        LogFormat::Json => {
            let json =
                tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr);
            registry.with(json.with_filter(filter())).init();
        }
        LogFormat::Pretty | LogFormat::Auto => {
            let ansi = stderr_tty && std::env::var_os("NO_COLOR").is_none();
            let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
            registry.with(text.with_filter(filter())).init();
        }
    }
    format
}

use tracing_subscriber::Layer as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_environment() {
        assert_eq!(resolve(LogFormat::Auto, true, true), LogFormat::Journald);
        assert_eq!(resolve(LogFormat::Auto, false, false), LogFormat::Json);
        assert_eq!(resolve(LogFormat::Auto, false, true), LogFormat::Pretty);
        assert_eq!(resolve(LogFormat::Pretty, true, false), LogFormat::Pretty);
        assert_eq!(resolve(LogFormat::Json, true, true), LogFormat::Json);
    }
}
