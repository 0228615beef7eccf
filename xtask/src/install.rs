//! `cargo xtask install`: puts the daemon and its systemd unit on this machine (or into a staging
//! root), so that `systemctl enable --now shadow-mirror` is the only step left.
//!
//! What goes where:
//!
//!     PREFIX/bin/mirror-daemon                       the release build (kernel programs embedded)
//!     /etc/systemd/system/shadow-mirror.service      deploy/shadow-mirror.service, with ExecStart
//!                                                    pointing at PREFIX/bin when PREFIX differs
//!     /etc/shadow-mirror/shadow-mirror.env           deploy/shadow-mirror.env.example, only when
//!                                                    absent: it holds the operator's settings
//!
//! The unit and the binary are always replaced (they belong to the release); the environment file
//! never is. `--root` installs under a staging directory (a package build, or a test that inspects
//! the result); `--dry-run` only prints. The install is planned first and then carried out, so both
//! print the same list.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{
    build::{BuildArgs, run_build},
    util::{run_command, workspace_root},
};

/// Where the unit in deploy/ expects the binary.
const UNIT_BINARY: &str = "/usr/local/bin/mirror-daemon";
const UNIT_PATH: &str = "/etc/systemd/system/shadow-mirror.service";
const ENV_PATH: &str = "/etc/shadow-mirror/shadow-mirror.env";

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Install the binary into PREFIX/bin.
    #[arg(long, default_value = "/usr/local", value_name = "PREFIX")]
    pub prefix: PathBuf,
    /// Install under this directory instead of `/` (no systemctl call then).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print what would be done, change nothing (and build nothing).
    #[arg(long)]
    pub dry_run: bool,
    /// Install this daemon binary instead of building one (it must embed the kernel programs,
    /// as `cargo xtask build` makes it).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

/// One step of an installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Copy a file (replacing what is there) with this mode.
    Copy { from: PathBuf, to: PathBuf, mode: u32 },
    /// Write this text (replacing what is there) with this mode.
    Write { to: PathBuf, text: String, mode: u32 },
    /// An operator's file already exists and is left as it is.
    Keep { path: PathBuf },
    /// `systemctl daemon-reload`, so systemd sees the new unit.
    DaemonReload,
    /// systemd is not told; the reason is printed.
    SkipReload { reason: String },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Copy { from, to, mode } => {
                write!(f, "install -m {mode:04o} {} {}", from.display(), to.display())
            }
            Action::Write { to, mode, .. } => write!(f, "write {} (mode {mode:04o})", to.display()),
            Action::Keep { path } => write!(f, "keep {} (already present, not overwritten)", path.display()),
            Action::DaemonReload => write!(f, "systemctl daemon-reload"),
            Action::SkipReload { reason } => write!(f, "skip systemctl daemon-reload: {reason}"),
        }
    }
}

/// `path` (absolute on the target system) under the staging root, if any.
fn staged(root: Option<&Path>, path: &Path) -> PathBuf {
    match root {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

/// The unit text with ExecStart pointing at `binary` (its path on the target system).
pub fn unit_for(unit: &str, binary: &Path) -> Result<String> {
    if !unit.contains(UNIT_BINARY) {
        bail!("deploy/shadow-mirror.service no longer mentions {UNIT_BINARY}: update `cargo xtask install`");
    }
    Ok(unit.replace(UNIT_BINARY, &binary.to_string_lossy()))
}

/// Whether systemd manages this machine (the test sd_booted(3) uses).
fn systemd_is_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Plans the installation of `binary` with the files in `deploy/`.
pub fn plan(args: &InstallArgs, binary: &Path, deploy: &Path, systemd_running: bool) -> Result<Vec<Action>> {
    if !args.prefix.is_absolute() {
        bail!("--prefix {}: must be an absolute path", args.prefix.display());
    }
    let root = args.root.as_deref();
    let target_binary = args.prefix.join("bin/mirror-daemon");
    let unit_source = deploy.join("shadow-mirror.service");
    let unit = fs::read_to_string(&unit_source).with_context(|| format!("read {}", unit_source.display()))?;
    let mut actions = vec![
        Action::Copy { from: binary.to_path_buf(), to: staged(root, &target_binary), mode: 0o755 },
        Action::Write {
            to: staged(root, Path::new(UNIT_PATH)),
            text: unit_for(&unit, &target_binary)?,
            mode: 0o644,
        },
    ];
    let env = staged(root, Path::new(ENV_PATH));
    if env.exists() {
        actions.push(Action::Keep { path: env });
    } else {
        // The file holds settings, not secrets, but only root needs to read it (systemd does).
        actions.push(Action::Copy { from: deploy.join("shadow-mirror.env.example"), to: env, mode: 0o640 });
    }
    actions.push(if root.is_some() {
        Action::SkipReload { reason: "installing under --root, not into this machine".into() }
    } else if !systemd_running {
        Action::SkipReload { reason: "systemd is not running here (PID 1 is not systemd)".into() }
    } else {
        Action::DaemonReload
    });
    Ok(actions)
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    Ok(())
}

/// Carries out one planned step.
pub fn apply(action: &Action) -> Result<()> {
    match action {
        Action::Copy { from, to, mode } => {
            create_parent(to)?;
            // Copy beside the target and rename over it: a running daemon's binary is replaced,
            // never rewritten in place (which fails with ETXTBSY).
            let tmp = to.with_extension("install-tmp");
            fs::copy(from, &tmp).with_context(|| format!("copy {} to {}", from.display(), tmp.display()))?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(*mode))
                .with_context(|| format!("chmod {}", tmp.display()))?;
            fs::rename(&tmp, to).with_context(|| format!("rename {} to {}", tmp.display(), to.display()))
        }
        Action::Write { to, text, mode } => {
            create_parent(to)?;
            fs::write(to, text).with_context(|| format!("write {}", to.display()))?;
            fs::set_permissions(to, fs::Permissions::from_mode(*mode))
                .with_context(|| format!("chmod {}", to.display()))
        }
        Action::DaemonReload => run_command(Command::new("systemctl").arg("daemon-reload")),
        Action::Keep { .. } | Action::SkipReload { .. } => Ok(()),
    }
}

pub fn run(args: &InstallArgs) -> Result<()> {
    if args.root.is_none() && !args.dry_run && !crate::util::is_root() {
        bail!("installing into {} and /etc needs root: sudo -E cargo xtask install", args.prefix.display());
    }
    let deploy = workspace_root().join("deploy");
    let binary = match (&args.binary, args.dry_run) {
        (Some(path), _) => {
            if !path.is_file() {
                bail!("--binary {}: no such file", path.display());
            }
            path.clone()
        }
        // A dry run shows the plan without spending minutes on a build.
        (None, true) => workspace_root().join("target/release/mirror-daemon"),
        (None, false) => run_build(&BuildArgs { debug: false })?,
    };
    let actions = plan(args, &binary, &deploy, systemd_is_running())?;
    for action in &actions {
        if args.dry_run {
            println!("would {action}");
        } else {
            eprintln!("install: {action}");
            apply(action)?;
        }
    }
    if !args.dry_run {
        eprintln!(
            "install: done. Edit {} (MIRROR_ARGS), then: systemctl enable --now shadow-mirror; \
             journalctl -u shadow-mirror -f",
            staged(args.root.as_deref(), Path::new(ENV_PATH)).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(root: &Path, prefix: &str) -> InstallArgs {
        InstallArgs { prefix: prefix.into(), root: Some(root.into()), dry_run: false, binary: None }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-install-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn installs_into_a_staging_root_and_rewrites_the_binary_path() {
        let root = scratch("stage");
        let binary = root.join("built-daemon");
        fs::write(&binary, b"\x7fELF not really").unwrap();
        let deploy = workspace_root().join("deploy");
        let actions = plan(&args(&root, "/opt/shadow"), &binary, &deploy, true).unwrap();
        assert!(matches!(actions.last(), Some(Action::SkipReload { .. })), "{actions:?}");
        for action in &actions {
            apply(action).unwrap();
        }
        let installed = root.join("opt/shadow/bin/mirror-daemon");
        assert_eq!(fs::read(&installed).unwrap(), b"\x7fELF not really");
        assert_eq!(fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755);
        let unit = fs::read_to_string(root.join("etc/systemd/system/shadow-mirror.service")).unwrap();
        assert!(unit.contains("ExecStart=/opt/shadow/bin/mirror-daemon $MIRROR_ARGS"), "{unit}");
        assert!(!unit.contains(UNIT_BINARY), "{unit}");
        let env = root.join("etc/shadow-mirror/shadow-mirror.env");
        assert!(fs::read_to_string(&env).unwrap().contains("MIRROR_ARGS="));

        // A second install keeps the operator's settings.
        fs::write(&env, "MIRROR_ARGS=--interface=ens5 --port=9000\n").unwrap();
        let again = plan(&args(&root, "/opt/shadow"), &binary, &deploy, true).unwrap();
        assert!(again.contains(&Action::Keep { path: env.clone() }), "{again:?}");
        for action in &again {
            apply(action).unwrap();
        }
        assert_eq!(fs::read_to_string(&env).unwrap(), "MIRROR_ARGS=--interface=ens5 --port=9000\n");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reloads_systemd_only_on_a_real_install_under_systemd() {
        let root = scratch("reload");
        let deploy = workspace_root().join("deploy");
        let mut real = args(&root, "/usr/local");
        real.root = None;
        let bin = Path::new("/nonexistent/mirror-daemon");
        assert_eq!(plan(&real, bin, &deploy, true).unwrap().last(), Some(&Action::DaemonReload));
        assert!(matches!(plan(&real, bin, &deploy, false).unwrap().last(), Some(Action::SkipReload { .. })));
        let unit = plan(&real, bin, &deploy, true).unwrap();
        assert!(
            matches!(&unit[1], Action::Write { to, text, .. }
                if to == Path::new(UNIT_PATH) && text.contains("ExecStart=/usr/local/bin/mirror-daemon ")),
            "{unit:?}"
        );
        assert!(plan(&args(&root, "relative"), bin, &deploy, true).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
