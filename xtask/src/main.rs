//! `cargo xtask`: the one front door for setting up, building, testing and demonstrating.
//!
//! Each verb is a module. Verbs that need the eBPF toolchain run `setup` themselves when it is
//! missing, so that on a fresh machine `cargo xtask demo` and `cargo xtask test` are enough.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod build;
mod demo;
mod fuzz;
mod image;
mod install;
mod setup;
mod test;
mod util;

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Build, test and demonstrate shadow mirror")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the Debian packages and bpf-linker the eBPF build needs (idempotent).
    Setup,
    /// Build the kernel programs, then the daemon with the programs embedded.
    Build(build::BuildArgs),
    /// Run every test: unit, property, and the privileged integration tests (needs root).
    Test(test::TestArgs),
    /// Build everything and run a self-contained demo in network namespaces (needs root).
    Demo(demo::DemoArgs),
    /// Run the benchmarks: reassembly + framing throughput (criterion) and the mirror under load.
    Bench(bench::BenchArgs),
    /// Fuzz the segment → exchange pipeline, HTTP/2 included (cargo-fuzz, nightly).
    Fuzz(fuzz::FuzzArgs),
    /// Build the container image with mmdebstrap and buildah (no Docker needed; needs root).
    Image(image::ImageArgs),
    /// Install the daemon, its systemd unit and an example environment file.
    Install(install::InstallArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build(args) => build::run(&args).map(|_| ()),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Image(args) => image::run(&args),
        Command::Install(args) => install::run(&args),
    }
}
