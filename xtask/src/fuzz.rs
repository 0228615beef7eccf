//! `cargo xtask fuzz`: libFuzzer over the segment → exchange pipeline.
//!
//! The target (`mirror-daemon/fuzz/fuzz_targets/assembler.rs`) turns arbitrary bytes into
//! segment sequences — reordered, overlapping, lost ranges, many connections — and checks that
//! nothing panics, memory stays within the configured bounds and everything is released at the end.
//! `cargo xtask test` runs a short deterministic pass (fixed seed and run count); run longer here.
use anyhow::Result;
use clap::Args;

use crate::util::{run_command, workspace_root};

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Inputs to run (deterministic with the seed).
    #[arg(long, default_value_t = 200_000)]
    pub runs: u64,
    /// libFuzzer seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
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
        .args(["+nightly", "fuzz", "run", "assembler", "--", "-max_len=4096"])
        .arg(format!("-runs={}", args.runs))
        .arg(format!("-seed={}", args.seed));
    run_command(&mut cmd)
}
