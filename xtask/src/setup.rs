//! Installs what the eBPF build needs, skipping what is already there.
//!
//! Debian provides a rustc (1.96) with a prebuilt `core` for `bpfel-unknown-none`
//! (`libstd-rust-web-dev-bpf`), so no nightly `-Z build-std` is needed; bpf-linker is built from
//! crates.io against Debian's LLVM 22. Test and benchmark tools (tcpdump, wrk, curl, nghttp2's
//! tools incl. h2load, nginx, linux-perf, python3, prometheus and promtool) come from Debian too;
//! the Python gRPC stack of the tests is a pinned virtualenv (`mirror_tests::python`).
use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::util::{run_command, succeeds};

/// Debian packages: the BPF toolchain, then what the tests and the demo drive.
pub const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "bpftool",
    "tcpdump",
    "curl",
    // HTTP/2 peers of the plain HTTP/2 mirroring tests: nghttp (client), nghttpd (h2c server) and
    // nghttpx (the proxy, which also accepts `Upgrade: h2c`); h2load (in nghttp2-client), the paced
    // HTTP/2 load of the gRPC mirror benchmark.
    "nghttp2-client",
    "nghttp2-server",
    "nghttp2-proxy",
    "wrk",
    // The mirror benchmark's production and shadow (a static 1 KiB JSON answer) and the inline
    // `mirror` proxy shadow mirror is measured against.
    "nginx",
    // `perf record -g -p PID`: where the daemon's CPU goes under the mirror benchmark's load.
    "linux-perf",
    "python3",
    "python3-venv",
    "util-linux",
    // systemd-journald, journalctl and systemd-analyze for the logging and unit tests.
    "systemd",
    // The cluster-view test scrapes two daemons with a real Prometheus (its own process, config and
    // storage in a temp dir: the packaged service is never used) and checks the recording rules
    // in deploy/prometheus/ with promtool.
    "prometheus",
];

/// Debian packages that build and run the container image (`cargo xtask image`, and so
/// `cargo xtask test`, install them on demand: about 120 MB that building the daemon does not need).
/// mmdebstrap makes the root filesystem from the machine's own apt sources (with Debian's keyring),
/// buildah turns it into an image without a daemon, podman runs it, with runc as its runtime
/// (`mirror_tests::image::podman_run_options` says why); objcopy (binutils) strips the binary.
pub const IMAGE_PACKAGES: &[&str] =
    &["mmdebstrap", "debian-archive-keyring", "buildah", "podman", "runc", "binutils"];

/// cargo-fuzz, for the fuzz run in `cargo xtask test` (with the machine's nightly toolchain).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
        .join("bin")
}

fn bpf_linker_ok() -> bool {
    Command::new(cargo_bin_dir().join("bpf-linker"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

fn missing_packages() -> Vec<&'static str> {
    missing_of(PACKAGES)
}

fn missing_of(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// True when everything the build needs is present.
pub fn ready() -> bool {
    missing_packages().is_empty()
        && bpf_linker_ok()
        && std::path::Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists()
}

/// Installs cargo-fuzz unless this version is there (the fuzz pass needs it; building does not).
pub fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new(cargo_bin_dir().join("cargo-fuzz"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if present {
        eprintln!("setup: cargo-fuzz {CARGO_FUZZ_VERSION} present");
        Ok(())
    } else {
        run_command(crate::util::cargo().args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION]))
    }
}

pub fn run_setup_if_needed() -> Result<()> {
    if ready() { Ok(()) } else { self::run() }
}

/// Installs the Debian packages in `packages` that are missing.
fn install_missing(packages: &[&'static str], what: &str) -> Result<()> {
    let missing = missing_of(packages);
    if missing.is_empty() {
        eprintln!("setup: {what} present");
        return Ok(());
    }
    if !crate::util::is_root() {
        bail!("setup must install {missing:?}: run it as root (sudo -E cargo xtask ...)");
    }
    run_command(Command::new("apt-get").args(["update", "-qq"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs what builds and runs the container image, unless it is there.
pub fn ensure_image_tools() -> Result<()> {
    install_missing(IMAGE_PACKAGES, "image tools (mmdebstrap, buildah, podman)")
}

pub fn run() -> Result<()> {
    install_missing(PACKAGES, "Debian packages")?;
    if bpf_linker_ok() {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        // Without LLVM_PREFIX its build script searches /usr/lib64 and fails with
        // "unable to find library -lLLVM".
        run_command(
            crate::util::cargo()
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    ensure_cargo_fuzz()?;
    let python = mirror_tests::python::prepare()?;
    eprintln!("setup: Python gRPC test environment at {}", python.root.display());
    if !succeeds(Command::new("/usr/bin/rustc").arg("--version")) {
        bail!("/usr/bin/rustc (Debian's rustc-web) does not run after setup");
    }
    Ok(())
}
