//! One module per subcommand; shared argument groups live here.
pub mod capture;
pub mod check_config;
pub mod report;
pub mod run;

use std::net::IpAddr;

use clap::Args;
use mirror_daemon::{
    budget::{DEFAULT_MEMORY_LIMIT, Shares},
    kernel::{CaptureConfig, XdpModeChoice},
};

/// Where and what to capture: shared by every command that attaches the kernel programs.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct AttachArgs {
    /// Interface to attach to (repeatable): a node NIC or a pod's host-side veth.
    #[arg(long = "interface", short = 'i', required = true, value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Model server port (repeatable, up to 64); packets from or to it are captured.
    #[arg(long = "port", short = 'p', required = true, value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Only capture packets from or to this server address (repeatable, up to 64).
    #[arg(long = "server-addr", value_name = "IP")]
    pub server_addrs: Vec<IpAddr>,
    /// XDP attach mode: driver where supported with fallback to generic (auto), or forced.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
    pub xdp_mode: XdpModeChoice,
    /// Kernel ring buffer size (power of two, e.g. 32MiB); when it is full, records are dropped
    /// and counted, never the traffic. Default: its share of `--memory-limit` (`run`), or of the
    /// default 256MiB (`capture`, which holds little else): 32MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_ring_size)]
    pub ring_buffer_size: Option<u32>,
    /// Keep the kernel's run-time statistics of BPF programs on, and report what this daemon's
    /// programs cost: ns per run in the summary, `mirror_kernel_program_run_seconds_total` and
    /// `mirror_kernel_program_runs_total` (and at exit of `capture`). Off by default: while on,
    /// every BPF program on the host pays two clock reads per run. Needs CAP_SYS_ADMIN, unless
    /// `kernel.bpf_stats_enabled` is on already.
    #[arg(long)]
    pub kernel_stats: bool,
}

/// The ring buffer when no `--ring-buffer-size` is given and no `--memory-limit` applies: the
/// ring's share of the default budget, as `run` gives it.
pub fn default_ring_buffer() -> u32 {
    Shares::split(DEFAULT_MEMORY_LIMIT).map_or(32 << 20, |s| u32::try_from(s.ring_buffer).unwrap_or(32 << 20))
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    match parse_size(text)? {
        n if n.is_power_of_two() && n >= 4096 => Ok(n),
        _ => Err(format!("`{text}`: must be a power of two of at least 4KiB (e.g. 32MiB)")),
    }
}

impl AttachArgs {
    pub fn capture_config(&self) -> CaptureConfig {
        CaptureConfig {
            interfaces: self.interfaces.clone(),
            ports: self.ports.clone(),
            server_addrs: self.server_addrs.clone(),
            filter_addrs: !self.server_addrs.is_empty(),
            xdp_mode: self.xdp_mode,
            ring_bytes: self.ring_buffer_size.unwrap_or_else(default_ring_buffer),
            kernel_stats: self.kernel_stats,
        }
    }
}

/// Promotion criteria, shared by `run` (live verdict) and `report` (from records).
#[derive(Debug, Clone, PartialEq, Args)]
pub struct CriteriaArgs {
    /// Comparisons needed before a verdict other than HOLD.
    #[arg(long, default_value_t = mirror_daemon::report::criteria::DEFAULT_MIN_SAMPLES)]
    pub min_samples: u64,
    /// Agreement the 95% interval's lower bound must reach (0.95 = 95%).
    #[arg(long, default_value_t = mirror_daemon::report::criteria::DEFAULT_MIN_AGREEMENT)]
    pub min_agreement: f64,
    /// Largest acceptable shadow p99 latency / production p99 latency.
    #[arg(long, default_value_t = mirror_daemon::report::criteria::DEFAULT_MAX_P99_LATENCY_RATIO)]
    pub max_p99_latency_ratio: f64,
    /// Largest acceptable increase of the error rate (0.01 = one percentage point).
    #[arg(long, default_value_t = mirror_daemon::report::criteria::DEFAULT_MAX_ERROR_RATE_INCREASE)]
    pub max_error_rate_increase: f64,
    /// Streamed answers: largest acceptable shadow p99 time to first token / production's.
    #[arg(long, default_value_t = mirror_daemon::report::criteria::DEFAULT_MAX_STREAM_P99_RATIO)]
    pub max_ttft_p99_ratio: f64,
    /// Streamed answers: largest acceptable shadow p99 time per output token / production's.
    #[arg(long, default_value_t = mirror_daemon::report::criteria::DEFAULT_MAX_STREAM_P99_RATIO)]
    pub max_tpot_p99_ratio: f64,
    /// Generated text: exact-match share the 95% interval's lower bound must reach (0 = not judged).
    #[arg(long, default_value_t = mirror_daemon::report::criteria::DEFAULT_MIN_EXACT_MATCH)]
    pub min_exact_match: f64,
}

impl CriteriaArgs {
    /// The criteria as given, not yet validated.
    pub fn unchecked(&self) -> mirror_daemon::report::criteria::Criteria {
        mirror_daemon::report::criteria::Criteria {
            min_samples: self.min_samples,
            min_agreement: self.min_agreement,
            max_p99_latency_ratio: self.max_p99_latency_ratio,
            max_error_rate_increase: self.max_error_rate_increase,
            max_ttft_p99_ratio: self.max_ttft_p99_ratio,
            max_tpot_p99_ratio: self.max_tpot_p99_ratio,
            min_exact_match: self.min_exact_match,
        }
    }

    /// The criteria, checked.
    pub fn criteria(&self) -> anyhow::Result<mirror_daemon::report::criteria::Criteria> {
        let criteria = self.unchecked();
        criteria.validate()?;
        Ok(criteria)
    }
}

/// Sizes and durations read the same on the command line as in the config file.
pub use mirror_daemon::config::{parse_duration, parse_size, parse_size_u64};
