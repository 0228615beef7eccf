//! Runs every test. The privileged integration tests (real kernel programs in network namespaces)
//! are required here: `MIRROR_REQUIRE_KERNEL_TESTS=1` turns their "not root" skip into a failure.
use anyhow::{Result, bail};
use clap::Args;

use crate::{
    build::{self, BuildArgs},
    util::{cargo, is_root, workspace_root},
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
    // The integration tests drive real load through the daemon: they run the release binary,
    // the one users run. Test support binaries (the model server) are built with the tests.
    let daemon = build::run_build(&BuildArgs { debug: false })?;
    if args.filter.is_none() {
        // The image test runs this daemon in its container: built (or found up to date) once here.
        let started = std::time::Instant::now();
        let reference = crate::image::build_image(&crate::image::ImageArgs::default())?;
        eprintln!("image: {reference} ready in {:.0?}", started.elapsed());
    }

    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("MIRROR_EBPF_OBJECT", &object)
        .env("MIRROR_DAEMON_BIN", &daemon)
        .env("MIRROR_REQUIRE_KERNEL_TESTS", "1");
    cmd.arg("--");
    // Kernel tests share the machine's 2 cores and time traffic; one at a time keeps them honest.
    cmd.arg("--test-threads=1");
    if let Some(filter) = &args.filter {
        cmd.arg(filter);
    }
    if args.filter.is_none() {
        // A short, deterministic fuzz pass over the segment → exchange pipeline, HTTP/2 included
        // (first, so that the totals line of the tests closes the output).
        crate::fuzz::deterministic_pass()?;
    }
    run_counting(&mut cmd)
}

/// Runs `cargo test`, passing its output through, and ends with one line of totals over every
/// test binary (cargo's own last line is the count of the last binary, often doc-tests).
fn run_counting(cmd: &mut std::process::Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {}", crate::util::describe(cmd));
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut totals = [0u64; 3]; // passed, failed, ignored
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for (i, word) in ["passed", "failed", "ignored"].iter().enumerate() {
                totals[i] += count_before(rest, word);
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {} passed, {} failed, {} skipped", totals[0], totals[1], totals[2]);
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// In "ok. 13 passed; 0 failed; ...", the number before `word`.
fn count_before(text: &str, word: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].trim_end_matches([';', ',']) == word)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_cargo_result_lines() {
        let line = "FAILED. 13 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.02s";
        assert_eq!(super::count_before(line, "passed"), 13);
        assert_eq!(super::count_before(line, "failed"), 2);
        assert_eq!(super::count_before(line, "ignored"), 1);
    }
}
