//! The Python stack of the tests and the demo: a virtualenv with the pinned packages of
//! `tests/python/requirements.txt` (grpcio's C-core HTTP/2 and HPACK, aiohttp's HTTP/1.1 server and
//! the official `openai` client — none of it code of this project) and the stubs generated from the
//! vendored protos.
//!
//! The environment is made once per machine, under `<workspace>/target/python-venv-<hash>` (or
//! `$MIRROR_PYTHON_CACHE/python-venv-<hash>`), where the hash covers the requirements, every proto
//! and the interpreter: changing any of them makes a new one. It is built in a temporary
//! directory and renamed into place under a file lock, so concurrent test processes wait for one
//! another and an interrupted install never leaves a half-made environment behind.
//! `cargo xtask setup` prepares it up front; tests prepare it on first use otherwise.
use std::{
    fs::{self, File},
    io::{self, BufRead, BufReader},
    net::SocketAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{ChildStdout, Command, Output, Stdio},
    sync::{OnceLock, mpsc},
    time::Duration,
};

use crate::ChildGuard;

/// Bumped when the layout of an environment changes, so older ones are not reused.
const LAYOUT_VERSION: &str = "1";

/// A prepared environment: its interpreter and the generated stubs.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    /// The virtualenv's directory.
    pub root: PathBuf,
    /// Its interpreter (`bin/python`).
    pub python: PathBuf,
    /// Where the generated `*_pb2.py` / `*_pb2_grpc.py` modules are (put on `PYTHONPATH`).
    pub stubs: PathBuf,
}

impl PythonEnv {
    /// `python tests/python/SCRIPT` with the stubs importable.
    pub fn script(&self, script: &str) -> Command {
        let mut cmd = Command::new(&self.python);
        self.prepare_script(&mut cmd, script);
        cmd
    }

    /// The same, run inside network namespace `ns`.
    pub fn script_in(&self, ns: &crate::netns::Netns, script: &str) -> Command {
        let mut cmd = ns.command(&self.python);
        self.prepare_script(&mut cmd, script);
        cmd
    }

    fn prepare_script(&self, cmd: &mut Command, script: &str) {
        cmd.arg(scripts_dir().join(script))
            .env("PYTHONPATH", &self.stubs)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1");
    }
}

/// How long a server script may take to say it listens (the interpreter and its packages load first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads stdout lines on a thread, so a caller can wait for one with a timeout.
pub fn line_reader(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts a server script (`cmd`, from [`PythonEnv::script_in`]) and waits until it printed
/// `listening on ADDR` once for each of its `count` addresses; returns it (killed on drop) and the
/// bound addresses (port 0 resolved).
pub fn spawn_listening(
    mut cmd: Command,
    count: usize,
    script: &str,
) -> io::Result<(ChildGuard, Vec<SocketAddr>)> {
    cmd.stdout(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn()?);
    let stdout = child.0.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
    let lines = line_reader(stdout);
    let mut bound = Vec::with_capacity(count);
    for _ in 0..count {
        let line = lines
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| io::Error::other(format!("{script} did not say it listens (exited or hung)")))?;
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| io::Error::other(format!("{script} said {line:?}")))?;
        bound.push(addr);
    }
    Ok((child, bound))
}

/// Why the environment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PythonEnvError {
    /// A file or directory operation failed.
    #[error("preparing the Python test environment: {what}: {error}")]
    Io { what: String, error: io::Error },
    /// A step (venv, pip, protoc, the import check) could not start or exited with an error.
    #[error("preparing the Python test environment: {step} failed\n  command: {command}\n{detail}\n  {hint}")]
    Step { step: &'static str, command: String, detail: String, hint: &'static str },
}

const PIP_HINT: &str = "pip installs tests/python/requirements.txt from PyPI: check that PyPI (or the \
     mirror in PIP_INDEX_URL) is reachable and that every pinned version has a wheel for this Python, \
     then run `cargo xtask setup` again";
const VENV_HINT: &str = "needs Python 3 with its venv module (Debian: apt-get install python3-venv); \
     MIRROR_PYTHON names another interpreter";
const PROTOC_HINT: &str = "grpc_tools.protoc compiles mirror-daemon/proto and tests/python/*.proto: \
     the error above names the file and line";

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `tests/python`: the servers, clients and requirements.
pub fn scripts_dir() -> PathBuf {
    workspace_root().join("tests").join("python")
}

/// `mirror-daemon/proto`: the vendored protos (an include root).
pub fn proto_dir() -> PathBuf {
    workspace_root().join("mirror-daemon").join("proto")
}

/// Where environments are kept: `$MIRROR_PYTHON_CACHE`, or `<workspace>/target`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("MIRROR_PYTHON_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The interpreter environments are made from: `$MIRROR_PYTHON`, or `python3`.
pub fn base_interpreter() -> PathBuf {
    std::env::var_os("MIRROR_PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into())
}

/// The environment of this process's tests, prepared on first use; panics with what to do.
pub fn env() -> &'static PythonEnv {
    static ENV: OnceLock<PythonEnv> = OnceLock::new();
    ENV.get_or_init(|| prepare().unwrap_or_else(|e| panic!("{e}")))
}

/// Prepares (or finds) the environment in [`default_cache_dir`].
pub fn prepare() -> Result<PythonEnv, PythonEnvError> {
    prepare_in(&default_cache_dir())
}

/// Every `.proto` file to compile, as (include root, path relative to it), in a stable order.
fn proto_files() -> Result<Vec<(PathBuf, PathBuf)>, PythonEnvError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> Result<(), PythonEnvError> {
        let entries =
            fs::read_dir(dir).map_err(|error| io_error(format!("list {}", dir.display()), error))?;
        for entry in entries {
            let path = entry.map_err(|error| io_error(format!("list {}", dir.display()), error))?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if path.extension().is_some_and(|e| e == "proto") {
                let relative = path.strip_prefix(root).expect("walked below root").to_path_buf();
                out.push((root.to_path_buf(), relative));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(&proto_dir(), &proto_dir(), &mut files)?;
    let scripts = scripts_dir();
    let entries =
        fs::read_dir(&scripts).map_err(|error| io_error(format!("list {}", scripts.display()), error))?;
    for entry in entries {
        let path = entry.map_err(|error| io_error(format!("list {}", scripts.display()), error))?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            files.push((scripts.clone(), PathBuf::from(path.file_name().expect("a file"))));
        }
    }
    files.sort();
    Ok(files)
}

fn io_error(what: String, error: io::Error) -> PythonEnvError {
    PythonEnvError::Io { what, error }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a step, turning a failure into an error that shows the command and its last output.
fn run_step(step: &'static str, cmd: &mut Command, hint: &'static str) -> Result<Output, PythonEnvError> {
    let command = describe(cmd);
    let output = cmd.output().map_err(|error| PythonEnvError::Step {
        step,
        command: command.clone(),
        detail: format!("  could not start it: {error}"),
        hint,
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n    ");
    Err(PythonEnvError::Step { step, command, detail: format!("  {}:\n    {tail}", output.status), hint })
}

/// The key of the environment: layout, requirements, protos and interpreter.
fn environment_hash(files: &[(PathBuf, PathBuf)]) -> Result<String, PythonEnvError> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut add = |label: &str, data: &[u8]| {
        hash.update((label.len() as u64).to_le_bytes());
        hash.update(label.as_bytes());
        hash.update((data.len() as u64).to_le_bytes());
        hash.update(data);
    };
    add("layout", LAYOUT_VERSION.as_bytes());
    let requirements = scripts_dir().join("requirements.txt");
    let text =
        fs::read(&requirements).map_err(|e| io_error(format!("read {}", requirements.display()), e))?;
    add("requirements.txt", &text);
    for (root, relative) in files {
        let path = root.join(relative);
        let text = fs::read(&path).map_err(|e| io_error(format!("read {}", path.display()), e))?;
        add(&relative.to_string_lossy(), &text);
    }
    let identity = run_step(
        "asking the interpreter its version",
        Command::new(base_interpreter())
            .args(["-c", "import sys; print(sys.version); print(sys.base_prefix); print(sys.platform)"]),
        VENV_HINT,
    )?;
    add("interpreter", &identity.stdout);
    Ok(hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// An exclusive `flock` on `path`, released when the file is closed.
fn lock(path: &Path) -> Result<File, PythonEnvError> {
    let file = File::create(path).map_err(|e| io_error(format!("create {}", path.display()), e))?;
    // SAFETY: a valid open file descriptor; flock has no other preconditions.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(io_error(format!("lock {}", path.display()), io::Error::last_os_error()));
    }
    Ok(file)
}

fn layout(root: PathBuf) -> PythonEnv {
    PythonEnv { python: root.join("bin").join("python"), stubs: root.join("stubs"), root }
}

/// Prepares (or finds) the environment under `cache`.
pub fn prepare_in(cache: &Path) -> Result<PythonEnv, PythonEnvError> {
    let files = proto_files()?;
    let name = format!("python-venv-{}", environment_hash(&files)?);
    let done = layout(cache.join(&name));
    if done.python.exists() && done.stubs.is_dir() {
        return Ok(done);
    }
    fs::create_dir_all(cache).map_err(|e| io_error(format!("create {}", cache.display()), e))?;
    let _lock = lock(&cache.join(format!("{name}.lock")))?;
    // Another process may have finished it while this one waited for the lock.
    if done.python.exists() && done.stubs.is_dir() {
        return Ok(done);
    }
    // Left-overs of interrupted builds: only the lock holder builds, so none is in use.
    let stale_prefix = format!("{name}.tmp-");
    if let Ok(entries) = fs::read_dir(cache) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&stale_prefix) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let building = layout(cache.join(format!("{stale_prefix}{}", std::process::id())));
    let result = build(&building, &files);
    if let Err(error) = result {
        let _ = fs::remove_dir_all(&building.root);
        return Err(error);
    }
    fs::rename(&building.root, &done.root)
        .map_err(|e| io_error(format!("rename {} to {}", building.root.display(), done.root.display()), e))?;
    Ok(done)
}

fn build(env: &PythonEnv, files: &[(PathBuf, PathBuf)]) -> Result<(), PythonEnvError> {
    run_step(
        "creating the virtualenv",
        Command::new(base_interpreter()).args(["-m", "venv"]).arg(&env.root),
        VENV_HINT,
    )?;
    let requirements = scripts_dir().join("requirements.txt");
    run_step(
        "pip install",
        Command::new(&env.python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"])
            .arg("--requirement")
            .arg(&requirements),
        PIP_HINT,
    )?;
    fs::create_dir_all(&env.stubs).map_err(|e| io_error(format!("create {}", env.stubs.display()), e))?;
    let mut protoc = Command::new(&env.python);
    protoc.args(["-m", "grpc_tools.protoc"]);
    let mut roots: Vec<&PathBuf> = files.iter().map(|(root, _)| root).collect();
    roots.dedup();
    for root in roots {
        protoc.arg(format!("--proto_path={}", root.display()));
    }
    protoc
        .arg(format!("--python_out={}", env.stubs.display()))
        .arg(format!("--grpc_python_out={}", env.stubs.display()))
        .args(files.iter().map(|(_, relative)| relative));
    run_step("generating the stubs", &mut protoc, PROTOC_HINT)?;
    run_step(
        "importing the stubs",
        Command::new(&env.python).env("PYTHONPATH", &env.stubs).args([
            "-c",
            "import grpc, grpc_predict_v2_pb2_grpc, stream_test_pb2_grpc, aiohttp, openai; \
             from tensorflow_serving.apis import prediction_service_pb2_grpc",
        ]),
        PROTOC_HINT,
    )?;
    Ok(())
}
