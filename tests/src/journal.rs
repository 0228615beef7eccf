//! A private systemd-journald for one test, so the daemon's native journald logging can be read back
//! with `journalctl` without touching the machine's own journal (or needing one at all).
//!
//! The daemon (tracing-journald) always sends to `/run/systemd/journal/socket`. So the command runs
//! in a private mount namespace (`unshare --mount --propagation private`) where a tmpfs covers
//! `/run/systemd` and a scratch directory is bind-mounted on `/run/log`; a journald started there
//! creates its sockets in the tmpfs and writes its files (volatile storage) into the scratch
//! directory, which the test then reads from outside with `journalctl --directory`. The mounts
//! vanish with the namespace. Needs root and Debian's `systemd` package (journald, journalctl).
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

pub const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// Runs inside the private mount namespace: $1 is the scratch directory, the rest the command.
/// journald is told to keep its files in the runtime directory and forward nothing. It still imports
/// the kernel log (bookworm's systemd 252 has no `ReadKMSG=`), so queries should match on fields.
const SCRIPT: &str = r#"
set -eu
scratch=$1; shift
mkdir -p /run/systemd /run/log "$scratch/log"
mount -t tmpfs -o mode=0755 mirror-test-journal /run/systemd
mount --bind "$scratch/log" /run/log
mkdir -p /run/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\n' \
    > /run/systemd/journald.conf.d/50-mirror-test.conf
JOURNALD &
journald=$!
i=0
while [ ! -S /run/systemd/journal/socket ]; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then echo "journald did not create its socket within 10s" >&2; exit 90; fi
    sleep 0.1
done
status=0
"$@" || status=$?
# Everything sent before this returns is on disk; then stop journald, which closes its files.
timeout 10 journalctl --sync || echo "journalctl --sync failed" >&2
kill "$journald"
wait "$journald" || true
exit "$status"
"#;

/// Where a private journal's files end up.
#[derive(Debug)]
pub struct PrivateJournal {
    pub scratch: PathBuf,
}

impl PrivateJournal {
    /// Panics with what to install when journald or the namespace tools are missing.
    pub fn new(scratch: PathBuf) -> Self {
        for tool in [JOURNALD, "/usr/bin/journalctl", "/usr/bin/unshare", "/usr/bin/timeout"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install --no-install-recommends systemd util-linux"
            );
        }
        std::fs::create_dir_all(&scratch).expect("create journal scratch directory");
        Self { scratch }
    }

    /// Runs `program args...` with a private journald listening at the standard socket; the whole
    /// run is bounded by `limit_seconds`. Returns the command's output (journald's exit is not).
    pub fn run(&self, limit_seconds: u32, program: impl AsRef<OsStr>, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("--kill-after=5")
            .arg(limit_seconds.to_string())
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(SCRIPT.replace("JOURNALD", JOURNALD))
            .arg("sh")
            .arg(&self.scratch)
            .arg(program)
            .args(args)
            .output()
            .expect("run unshare")
    }

    /// The directory journald wrote to (`/run/log/journal` inside the namespace).
    pub fn directory(&self) -> PathBuf {
        self.scratch.join("log/journal")
    }

    /// `journalctl --directory DIR -o json ARGS...` (matches such as `FIELD=value`, `-t ID`), one
    /// JSON object per entry.
    pub fn query(&self, args: &[&str]) -> Vec<Value> {
        let out = Command::new("timeout")
            .args(["30", "journalctl", "--no-pager", "-o", "json", "--directory"])
            .arg(self.directory())
            .args(args)
            .output()
            .expect("run journalctl");
        assert!(out.status.success(), "journalctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journalctl -o json line {l}: {e}")))
            .collect()
    }
}
