//! Runs the real `mirror-daemon` binary inside a namespace and collects what it reports.
use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::netns::{Netns, Trio};

/// The daemon binary next to the test binary (target/<profile>/mirror-daemon), or
/// `MIRROR_DAEMON_BIN`. `cargo xtask test` builds it with the kernel programs embedded.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MIRROR_DAEMON_BIN") {
        return PathBuf::from(path);
    }
    crate::sibling_binary("mirror-daemon")
}

/// A running daemon. Its stderr is collected in the background; stdout is left to the caller.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    stderr_lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

impl Daemon {
    /// Starts `mirror-daemon ARGS...` in `ns` and waits until it says it is capturing.
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        Self::start_with_env(ns, args, &[])
    }

    /// [`start`](Self::start) with extra environment variables (e.g. `NODE_NAME`, `KUBECONFIG`).
    pub fn start_with_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_wrapped(ns, &[], args, env)
    }

    /// [`start_with_env`](Self::start_with_env) through `wrapper` (a program and its arguments that
    /// end by running the daemon, e.g. `setpriv` with fewer privileges).
    pub fn start_wrapped(ns: &Netns, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = ns.command(program);
                command.args(rest).arg(binary());
                command
            }
            None => ns.command(binary()),
        };
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .env("MIRROR_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mirror-daemon");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Self { child, stderr_lines: rx, stderr: Vec::new() };
        daemon.wait_for("capturing", Duration::from_secs(30));
        daemon
    }

    /// Waits for a stderr line containing `needle`; panics with everything seen so far if it does
    /// not come (or the daemon exits first).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        self.wait_for_line(&[needle], timeout);
    }

    /// Waits for a stderr line containing every one of `needles` and returns the latest such line;
    /// panics with everything seen so far if none comes (or the daemon exits first).
    pub fn wait_for_line(&mut self, needles: &[&str], timeout: Duration) -> String {
        let found =
            |lines: &[String]| lines.iter().rev().find(|l| needles.iter().all(|n| l.contains(n))).cloned();
        self.wait_until(&format!("{needles:?}"), timeout, found)
    }

    /// Waits until `n` stderr lines contain `needle` (the n-th periodic summary, say); panics with
    /// everything seen so far if they do not come in time (or the daemon exits first).
    pub fn wait_for_count(&mut self, needle: &str, n: usize, timeout: Duration) {
        let enough =
            |lines: &[String]| (lines.iter().filter(|l| l.contains(needle)).count() >= n).then_some(());
        self.wait_until(&format!("{n} lines with {needle:?}"), timeout, enough)
    }

    /// Collects stderr lines until `done` says so; panics naming `what` otherwise.
    fn wait_until<T>(&mut self, what: &str, timeout: Duration, done: impl Fn(&[String]) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(found) = done(&self.stderr) {
                return found;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr_lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => self.stderr.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        self.collect();
                        panic!("mirror-daemon exited ({status}) before {what}:\n{}", self.stderr.join("\n"));
                    }
                    if left.is_zero() {
                        panic!(
                            "no {what} from mirror-daemon within {timeout:?}:\n{}",
                            self.stderr.join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("mirror-daemon closed stderr before {what}:\n{}", self.stderr.join("\n"));
                }
            }
        }
    }

    /// Takes in the stderr lines that have arrived so far, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.stderr_lines.try_recv() {
            self.stderr.push(line);
        }
    }

    fn collect(&mut self) {
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(100)) {
            self.stderr.push(line);
        }
    }

    /// Sends a signal to the daemon (through `ip netns exec`, which execs it: same pid).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGINT, then waits for exit; returns (success, stdout, stderr lines).
    pub fn stop(self) -> Finished {
        self.signal(libc::SIGINT);
        self.finish()
    }

    /// Waits for the daemon to exit by itself (e.g. `--duration`).
    pub fn finish(mut self) -> Finished {
        self.finish_in_place()
    }

    fn finish_in_place(&mut self) -> Finished {
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut stdout).expect("read daemon stdout");
        }
        let status = self.child.wait().expect("wait daemon");
        let mut rest = Vec::new();
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(2)) {
            rest.push(line);
        }
        self.stderr.extend(rest);
        Finished { success: status.success(), stdout, stderr: self.stderr.join("\n") }
    }
}

impl Drop for Daemon {
    /// A test that fails half-way must not leave a daemon attached behind it.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished daemon left behind.
#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// A kernel counter from the "kernel counters:" line printed at exit.
    pub fn counter(&self, name: &str) -> u64 {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("kernel counters:"))
            .unwrap_or_else(|| panic!("no kernel counters in daemon output:\n{}", self.stderr));
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no counter {name} in `{line}`"))
    }

    /// The `drops` field of the final summary (JSON logs): every non-zero loss after capture, by
    /// name.
    pub fn final_drops(&self) -> std::collections::HashMap<String, u64> {
        let line = self
            .stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "final summary")
            .unwrap_or_else(|| panic!("no final summary in:\n{}", self.stderr));
        line["drops"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().expect("counter value")))
            .collect()
    }
}

/// `mirror-daemon run` as the mirroring tests start it on a [`Trio`]: capturing production's
/// interface on `port`, replaying to one shadow (`model-v2@2` on the shadow's address and the same
/// port), recording to `record`, a summary every second, metrics on `metrics_addr` (`off`, or an
/// address in production's namespace), then the test's own `extra` arguments. Returns once the
/// daemon captures.
pub fn start_mirror(trio: &Trio, port: u16, record: &Path, metrics_addr: &str, extra: &[&str]) -> Daemon {
    let port = port.to_string();
    let shadow = format!("model-v2@2=http://{}:{port}", trio.shadow_addr);
    let record = record.to_str().expect("a UTF-8 record path");
    let mut args = vec![
        "run",
        "-i",
        &trio.production_if,
        "-p",
        &port,
        "--shadow",
        &shadow,
        "--record",
        record,
        "--summary-interval",
        "1s",
        "--metrics-addr",
        metrics_addr,
    ];
    args.extend_from_slice(extra);
    Daemon::start(&trio.production, &args)
}

/// Runs the daemon to completion (for argument errors); returns (success, stderr).
pub fn run_to_end(ns: Option<&Netns>, args: &[&str]) -> (bool, String) {
    let mut cmd = match ns {
        Some(ns) => ns.command(binary()),
        None => std::process::Command::new(binary()),
    };
    let out = cmd.args(args).env("NO_COLOR", "1").output().expect("run mirror-daemon");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}
