//! Builds the kernel programs with Debian's toolchain, then the userspace crates.
use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    setup,
    util::{cargo, run_command, workspace_root},
};

#[derive(Debug, Args, Default)]
pub struct BuildArgs {
    /// Build the daemon in debug mode (faster to compile; the kernel programs are always optimised).
    #[arg(long)]
    pub debug: bool,
}

/// The compiled kernel object.
pub fn ebpf_object() -> PathBuf {
    workspace_root().join("mirror-ebpf/target/bpfel-unknown-none/release/mirror-ebpf")
}

/// Compiles `mirror-ebpf` for `bpfel-unknown-none` and returns the object's path.
pub fn build_ebpf() -> Result<PathBuf> {
    setup::run_setup_if_needed()?;
    let path = format!("{}:{}", setup::cargo_bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("/usr/bin/cargo");
    cmd.current_dir(workspace_root().join("mirror-ebpf"))
        .args(["build", "--release"])
        // The outer (rustup) cargo's variables must not leak into Debian's toolchain.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        // The object is looked for in the kernel crate's own target directory (`ebpf_object`),
        // whatever directory the userspace build uses.
        .env_remove("CARGO_TARGET_DIR")
        .env("RUSTC", "/usr/bin/rustc")
        // aya-ebpf enables `asm_experimental_arch` on the BPF target; Debian's rustc is a stable
        // release, so unstable features must be allowed explicitly.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", path);
    run_command(&mut cmd)?;
    let object = ebpf_object();
    if !object.exists() {
        bail!("the kernel build finished but {} is missing", object.display());
    }
    Ok(object)
}

/// Builds everything; returns the daemon binary's path.
pub fn run_build(args: &BuildArgs) -> Result<PathBuf> {
    let object = build_ebpf()?;
    let mut cmd = cargo();
    cmd.current_dir(workspace_root()).args([
        "build",
        "--package",
        "mirror-daemon",
        "--package",
        "mirror-tests",
    ]);
    if !args.debug {
        cmd.arg("--release");
    }
    cmd.env("MIRROR_EBPF_OBJECT", &object);
    run_command(&mut cmd)?;
    Ok(workspace_root()
        .join("target")
        .join(if args.debug { "debug" } else { "release" })
        .join("mirror-daemon"))
}

pub fn run(args: &BuildArgs) -> Result<PathBuf> {
    let bin = run_build(args)?;
    eprintln!("built {}", bin.display());
    Ok(bin)
}
