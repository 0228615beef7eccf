//! The container image: its name, what it holds, and how podman runs containers on these machines.
//!
//! `cargo xtask image` builds it from these settings and the image test runs it, so the name, the
//! paths and the labels are declared once, here.
use std::process::Command;

/// The image's repository, under whichever registry it is pushed to.
pub const REPOSITORY: &str = "shadow-mirror/mirror-daemon";
/// Its tag: the workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the daemon sits in the image (the entrypoint, and what the DaemonSet `exec`s).
pub const BINARY: &str = "/usr/local/bin/mirror-daemon";
/// The working directory, where the DaemonSet mounts the node's record directory.
pub const WORKDIR: &str = "/var/lib/shadow-mirror";
/// Debian packages installed beyond the libraries the binary links to (found with `ldd`):
/// iproute2's `ip` and `bridge`, which pod discovery runs.
pub const RUNTIME_PACKAGES: &[&str] = &["iproute2"];
/// Label holding the SHA-256 of the daemon binary the image was built from (before stripping).
pub const LABEL_DAEMON_SHA256: &str = "io.shadow-mirror.daemon.sha256";
/// Label naming the base layer's key (suite, sources and package set).
pub const LABEL_BASE: &str = "io.shadow-mirror.base";

/// The reference `cargo xtask image` commits to in local storage.
pub fn local_reference() -> String {
    format!("localhost/{REPOSITORY}:{VERSION}")
}

/// Whether podman runs here.
pub fn podman_available() -> bool {
    Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Whether `reference` is in local storage.
pub fn exists(reference: &str) -> bool {
    Command::new("podman").args(["image", "exists", reference]).status().is_ok_and(|s| s.success())
}

/// A label of a local image (None when the image or the label is missing).
pub fn label(reference: &str, key: &str) -> Option<String> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", &format!("{{{{index .Labels \"{key}\"}}}}"), reference])
        .output()
        .ok()?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !value.is_empty() && value != "<no value>").then_some(value)
}

/// `podman run` options this machine needs, whatever the container:
///
/// - `--runtime runc` when runc is installed: crun (podman's default) refuses a cgroup v1 host whose
///   cgroup2 hierarchy holds a controller ("cgroups in hybrid mode not supported"), as here;
/// - `--ulimit` for open files and processes at most this process's hard limits: podman's defaults
///   for root (1048576 files) exceed them when the machine withholds CAP_SYS_RESOURCE, and the
///   runtime's setrlimit then fails with "operation not permitted".
pub fn podman_run_options() -> Vec<String> {
    let mut options = Vec::new();
    if std::path::Path::new("/usr/bin/runc").exists() || std::path::Path::new("/usr/sbin/runc").exists() {
        options.extend(["--runtime".to_string(), "runc".to_string()]);
    }
    // conmon runs with at most 32768 processes when podman could not raise its own limit.
    for (name, resource, cap) in
        [("nofile", libc::RLIMIT_NOFILE, u64::MAX), ("nproc", libc::RLIMIT_NPROC, 32_768)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we pass.
        if unsafe { libc::getrlimit(resource, &mut limit) } == 0 {
            let hard = limit.rlim_max.min(cap);
            options.push(format!("--ulimit={name}={hard}:{hard}"));
        }
    }
    options
}
