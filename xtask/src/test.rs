//! Runs every test. The privileged integration tests (real kernel programs in network namespaces)
//! are required here: `MIRROR_REQUIRE_KERNEL_TESTS=1` turns their "not root" skip into a failure.
use anyhow::{Result, bail};
use clap::Args;

use crate::{
    build::{self, BuildArgs},
    util::{cargo, is_root, run_command, workspace_root},
};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Only run tests whose name contains this filter.
    pub filter: Option<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    if !is_root() {
        bail!("the integration tests load eBPF programs and create network namespaces: run as root");
    }
    let object = build::build_ebpf()?;
    // Debug builds: the integration tests start the debug daemon next to them in target/debug.
    build::run_build(&BuildArgs { debug: true })?;

    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace"])
        .env("MIRROR_EBPF_OBJECT", &object)
        .env("MIRROR_REQUIRE_KERNEL_TESTS", "1");
    cmd.arg("--");
    // Kernel tests share the machine's 2 cores and time traffic; one at a time keeps them honest.
    cmd.arg("--test-threads=1");
    if let Some(filter) = &args.filter {
        cmd.arg(filter);
    }
    run_command(&mut cmd)
}
