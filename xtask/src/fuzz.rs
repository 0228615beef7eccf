//! `cargo xtask fuzz`: libFuzzer over the segment → exchange pipeline.
//!
//! Two targets in `mirror-daemon/fuzz/fuzz_targets/`: `assembler` turns arbitrary bytes into
//! segment sequences — reordered, overlapping, lost ranges, many connections — and `h2` builds
//! HTTP/2 connections from them (frames around fuzzed payloads, header blocks that decode, a
//! preface unless the connection is joined mid-stream) captured with losses, duplicates and
//! reordering. Both check that nothing panics, memory stays within the configured bounds and
//! everything is released at the end. `cargo xtask test` runs a short deterministic pass of each
//! (fixed seed and run counts, under 30 s on two cores); run longer here.
use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::util::{run_command, workspace_root};

/// A fuzz target of `mirror-daemon/fuzz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Arbitrary segments into the assembler (HTTP/1.x and protocol detection).
    Assembler,
    /// HTTP/2 connections built from the input.
    H2,
}

impl Target {
    const ALL: [Target; 2] = [Target::Assembler, Target::H2];

    fn name(self) -> &'static str {
        match self {
            Target::Assembler => "assembler",
            Target::H2 => "h2",
        }
    }

    /// Largest input: the h2 target needs room for a few frames per direction.
    fn max_len(self) -> u32 {
        match self {
            Target::Assembler => 4096,
            Target::H2 => 8192,
        }
    }

    /// Inputs of the deterministic pass in `cargo xtask test`: together 15 s on two idle cores,
    /// under 30 s on busy ones (the assembler target runs 7,000 to 13,000 inputs/s, the h2 target
    /// 2,800 to 5,000).
    fn pass_runs(self) -> u64 {
        match self {
            Target::Assembler => 100_000,
            Target::H2 => 35_000,
        }
    }
}

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Target to run (repeatable); every target when none is named.
    #[arg(long = "target", value_enum)]
    pub targets: Vec<Target>,
    /// Inputs to run per target (deterministic with the seed).
    #[arg(long, default_value_t = 200_000)]
    pub runs: u64,
    /// libFuzzer seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    let targets = if args.targets.is_empty() { Target::ALL.to_vec() } else { args.targets.clone() };
    for target in targets {
        fuzz(target, args.runs, args.seed)?;
    }
    Ok(())
}

/// The short deterministic pass of every target that `cargo xtask test` runs.
pub fn deterministic_pass() -> Result<()> {
    for target in Target::ALL {
        fuzz(target, target.pass_runs(), 1)?;
    }
    Ok(())
}

fn fuzz(target: Target, runs: u64, seed: u64) -> Result<()> {
    crate::setup::ensure_cargo_fuzz()?;
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(workspace_root().join("mirror-daemon"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env(
            "PATH",
            format!(
                "{}:{}",
                crate::setup::cargo_bin_dir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args(["+nightly", "fuzz", "run", target.name(), "--"])
        .arg(format!("-max_len={}", target.max_len()))
        .arg(format!("-runs={runs}"))
        .arg(format!("-seed={seed}"));
    run_command(&mut cmd)
}
