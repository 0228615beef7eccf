//! `cargo xtask bench`: the benchmarks, with what they measured printed as they run.
//!
//! Speed and memory targets live here, not in timed tests: criterion reports payload MB/s per core
//! of TCP reassembly + HTTP framing for 1 KiB and 100 KiB bodies, and the live-heap change per
//! exchange on long-lived connections.
use anyhow::Result;
use clap::Args;

use crate::util::{cargo, run_command, workspace_root};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Only run benchmarks whose name contains this filter.
    pub filter: Option<String>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root()).args([
        "bench",
        "--package",
        "mirror-daemon",
        "--bench",
        "pipeline",
        "--",
    ]);
    cmd.arg("--noplot");
    if let Some(filter) = &args.filter {
        cmd.arg(filter);
    }
    run_command(&mut cmd)
}
