//! Where records are written: the `--record` file (or stdout), rotated by size, reopened on a
//! signal, and never allowed to stop or slow the mirroring.
//!
//! A node agent runs for months, so its record file must not grow without end, must cooperate
//! with logrotate, and must survive a full disk. Three parts:
//!
//! - The rotation rules, pure and tested without I/O: [`starts_new_file`] (a record never spans
//!   two files; one larger than the limit gets a file of its own) and [`rotation_plan`] (what
//!   happens to `records.jsonl.1`, `.2`, … when the current file is rotated).
//! - [`RecordFile`], the synchronous writer: buffers whole records, appends them, rotates, reopens,
//!   compresses rotated files in the background, and turns every write error into counted dropped
//!   records. On a regular file a failed write is cut back to the last complete record, so a file
//!   never holds half a record.
//! - [`RecordSink`], what the reporter holds: a bounded queue (in bytes, its share of
//!   `--memory-limit`: `budget::Shares::records`) to a writer thread. Pushing never blocks: when
//!   the writer has fallen behind (a slow disk, a stdout reader that stopped reading) the record is
//!   dropped and counted. The reporter keeps comparing, logging and counting
//!   whatever happens to the file.
//!
//! Dropped records are counted by reason in [`RecordDrops`] (declared with every other loss in
//! `drops.rs`); an error is logged when records start being dropped and then at most once per
//! interval, and a line says when writing works again.
use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::fd::FromRawFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::drops::RecordDrops;

/// Default size at which the record file is rotated: large enough that rotations are rare (a
/// busy node writing 1 MB/s of records rotates every four minutes), small enough that one file
/// is quick to copy, compress and read.
pub const DEFAULT_MAX_SIZE: u64 = 256 << 20;
/// Default number of rotated files kept besides the current one.
pub const DEFAULT_KEEP: u32 = 10;
/// How long stopping the daemon waits for queued records to be written.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Records are appended in chunks of about this size (whole records only).
const BUFFER_BYTES: usize = 64 << 10;
/// How long the writer lets records gather after the first one arrives before it writes them
/// (less when a buffer's worth is queued, a reopen is asked or the sink closes). At thousands of
/// records per second, waking the writer thread and writing for every record costs more than the
/// records themselves; a few milliseconds of delay in a file read offline costs nothing.
const GATHER: Duration = Duration::from_millis(5);
/// After a failed open or rotation, how long until the next attempt.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How rotated files are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// `records.jsonl.1.gz`: gzip, compressed by a background thread after the rotation.
    #[default]
    Gzip,
    /// `records.jsonl.1`: left as written.
    None,
}

/// Where records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`--record -`): never rotated or reopened.
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `-` is stdout, anything else a file.
    pub fn of(path: &Path) -> Self {
        if path.as_os_str() == "-" { Target::Stdout } else { Target::File(path.to_path_buf()) }
    }

    fn describe(&self) -> String {
        match self {
            Target::Stdout => "stdout".into(),
            Target::File(path) => path.display().to_string(),
        }
    }
}

/// Everything the record writer is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    pub target: Target,
    /// Rotate before a record would take the file past this size; `None`: never rotate (for
    /// logrotate, which then signals a reopen).
    pub max_size: Option<u64>,
    /// Rotated files kept (`.1` the newest … `.keep` the oldest); 0 keeps none.
    pub keep: u32,
    pub compression: Compression,
    /// An error is logged at most once per this interval.
    pub log_every: Duration,
}

// ---------------------------------------------------------------------------------------------
// The rules, without I/O.

/// Whether a record of `len` bytes goes to a new file, the current one holding `size` bytes: only
/// when it would take a non-empty file past `max`. So a file is never empty after a rotation, a
/// record exactly filling the file stays in it, and a record larger than `max` gets a file alone.
pub fn starts_new_file(size: u64, len: u64, max: Option<u64>) -> bool {
    max.is_some_and(|max| size > 0 && size.saturating_add(len) > max)
}

/// A rotated file next to the record file: `NAME.N` or `NAME.N.gz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rotated {
    pub number: u32,
    pub gzip: bool,
}

/// The name of rotated file `number` of `base`.
pub fn rotated_path(base: &Path, number: u32, gzip: bool) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{number}{}", if gzip { ".gz" } else { "" }));
    PathBuf::from(name)
}

/// `file_name` as a rotated file of the record file named `base_name`, if it is one.
pub fn parse_rotated(base_name: &str, file_name: &str) -> Option<Rotated> {
    let rest = file_name.strip_prefix(base_name)?.strip_prefix('.')?;
    let (digits, gzip) = match rest.strip_suffix(".gz") {
        Some(digits) => (digits, true),
        None => (rest, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    Some(Rotated { number: digits.parse().ok()?, gzip })
}

/// One file-system change of a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Remove(PathBuf),
    Rename { from: PathBuf, to: PathBuf },
}

/// What rotating `base` does, given the rotated files already there: the oldest beyond `keep`
/// are removed, the others move up one number (newest first never overwrites: the highest moves
/// first), and the current file becomes `.1` — or is removed when `keep` is 0.
pub fn rotation_plan(base: &Path, existing: &[Rotated], keep: u32) -> Vec<Step> {
    let mut existing = existing.to_vec();
    existing.sort_by(|a, b| b.cmp(a));
    let mut steps: Vec<Step> = existing
        .iter()
        .map(|r| {
            let from = rotated_path(base, r.number, r.gzip);
            if r.number >= keep {
                Step::Remove(from)
            } else {
                Step::Rename { from, to: rotated_path(base, r.number + 1, r.gzip) }
            }
        })
        .collect();
    steps.push(if keep == 0 {
        Step::Remove(base.to_path_buf())
    } else {
        Step::Rename { from: base.to_path_buf(), to: rotated_path(base, 1, false) }
    });
    steps
}

/// Decides when a failure is logged: at the first failed record, then at most once per `every`;
/// and says once when writing works again.
#[derive(Debug)]
pub struct ErrorLog {
    every: Duration,
    last: Option<Instant>,
    /// Records dropped since the last line.
    unreported: u64,
    /// Records dropped since writing last worked.
    failing: u64,
}

impl ErrorLog {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None, unreported: 0, failing: 0 }
    }

    /// `records` were dropped at `now`: the number to report when a line is due.
    pub fn failed(&mut self, records: u64, now: Instant) -> Option<u64> {
        self.unreported += records;
        self.failing += records;
        if self.last.is_some_and(|last| now.duration_since(last) < self.every) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }

    /// A record was written: after failures, the number dropped meanwhile (once).
    pub fn succeeded(&mut self) -> Option<u64> {
        if self.failing == 0 {
            return None;
        }
        self.last = None;
        self.unreported = 0;
        Some(std::mem::take(&mut self.failing))
    }
}

// ---------------------------------------------------------------------------------------------
// Counters shared by the reporter and the writer thread.

/// Why a record was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    DiskFull,
    WriteError,
    AtExit,
}

impl DropReason {
    /// The reason of a failed write: a full file system (or quota) is told apart from the rest.
    pub fn of(err: &io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => DropReason::DiskFull,
            _ => DropReason::WriteError,
        }
    }

    fn what(self) -> &'static str {
        match self {
            DropReason::QueueFull => {
                "the record writer fell behind (a slow disk or a stdout reader that stopped reading)"
            }
            DropReason::DiskFull => "the file system is full",
            DropReason::WriteError => "writing failed",
            DropReason::AtExit => "they were still queued when the daemon stopped",
        }
    }
}

/// Dropped records, by reason (atomics: counted by the reporter and the writer thread).
#[derive(Debug, Default)]
pub struct DropCounters {
    queue_full: AtomicU64,
    disk_full: AtomicU64,
    write_error: AtomicU64,
    at_exit: AtomicU64,
}

impl DropCounters {
    pub fn add(&self, reason: DropReason, records: u64) {
        let counter = match reason {
            DropReason::QueueFull => &self.queue_full,
            DropReason::DiskFull => &self.disk_full,
            DropReason::WriteError => &self.write_error,
            DropReason::AtExit => &self.at_exit,
        };
        counter.fetch_add(records, Ordering::Relaxed);
    }

    pub fn get(&self) -> RecordDrops {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RecordDrops {
            records_dropped_queue_full: get(&self.queue_full),
            records_dropped_disk_full: get(&self.disk_full),
            records_dropped_write_error: get(&self.write_error),
            records_dropped_at_exit: get(&self.at_exit),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The synchronous writer.

/// The record file (or stdout) as the writer thread drives it.
#[derive(Debug)]
pub struct RecordFile {
    config: SinkConfig,
    file: Option<File>,
    /// Rotation and cutting back a failed write apply to regular files only (not `/dev/full`,
    /// a FIFO or stdout).
    regular: bool,
    /// Bytes in the current file.
    size: u64,
    /// Whole records not yet appended, and how many.
    buffer: Vec<u8>,
    buffered: u64,
    /// The file may end in part of a record (a failed write that could not be cut back): the
    /// next write starts on a new line.
    partial: bool,
    /// No open or rotation is tried before this.
    retry_at: Option<Instant>,
    compressing: Option<JoinHandle<()>>,
    drops: Arc<DropCounters>,
    errors: ErrorLog,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl RecordFile {
    /// Opens the target (appending to a file that exists). An error here is a configuration
    /// problem and stops the daemon before it starts; later errors never do.
    pub fn open(config: SinkConfig, drops: Arc<DropCounters>) -> io::Result<Self> {
        let errors = ErrorLog::new(config.log_every);
        let mut file = Self {
            config,
            file: None,
            regular: false,
            size: 0,
            buffer: Vec::with_capacity(BUFFER_BYTES * 2),
            buffered: 0,
            partial: false,
            retry_at: None,
            compressing: None,
            drops,
            errors,
        };
        file.open_target()?;
        Ok(file)
    }

    fn open_target(&mut self) -> io::Result<()> {
        self.file = None;
        let file = match &self.config.target {
            // A duplicate of fd 1: written without the std lock or buffer, so that a writer
            // blocked on a full pipe never holds anything the rest of the process needs.
            // SAFETY: dup(2) returns a new descriptor this File then owns, or -1 (checked).
            Target::Stdout => match unsafe { libc::dup(libc::STDOUT_FILENO) } {
                -1 => return Err(io::Error::last_os_error()),
                fd => unsafe { File::from_raw_fd(fd) },
            },
            Target::File(path) => open_append(path)?,
        };
        let meta = file.metadata()?;
        self.regular = meta.is_file();
        self.size = if self.regular { meta.len() } else { 0 };
        self.file = Some(file);
        Ok(())
    }

    /// Bytes of the current file, including what is buffered.
    pub fn size(&self) -> u64 {
        self.size + self.buffer.len() as u64
    }

    /// Appends one record (a whole line, newline included).
    pub fn append(&mut self, line: &[u8], now: Instant) {
        if self.file.is_none() && !self.retry_open(now) {
            self.dropped(DropReason::WriteError, 1, None, now);
            return;
        }
        if self.regular && starts_new_file(self.size(), line.len() as u64, self.config.max_size) {
            self.flush(now);
            if self.retry_at.is_none_or(|at| now >= at) {
                self.rotate(now);
            }
            if self.file.is_none() {
                self.dropped(DropReason::WriteError, 1, None, now);
                return;
            }
        }
        if self.partial && self.buffer.is_empty() {
            self.buffer.push(b'\n');
        }
        self.buffer.extend_from_slice(line);
        self.buffered += 1;
        if self.buffer.len() >= BUFFER_BYTES {
            self.flush(now);
        }
    }

    /// Writes what is buffered. On failure its records are dropped and counted, and a regular
    /// file is cut back to its last complete record.
    pub fn flush(&mut self, now: Instant) {
        if self.buffer.is_empty() {
            return;
        }
        let Some(file) = self.file.as_mut() else {
            let records = std::mem::take(&mut self.buffered);
            self.buffer.clear();
            self.dropped(DropReason::WriteError, records, None, now);
            return;
        };
        let result = file.write_all(&self.buffer);
        let records = std::mem::take(&mut self.buffered);
        let written = self.buffer.len() as u64;
        self.buffer.clear();
        match result {
            Ok(()) => {
                self.size += written;
                self.partial = false;
                if let Some(dropped) = self.errors.succeeded() {
                    tracing::info!(
                        record = %self.config.target.describe(),
                        dropped,
                        "records are written again (the dropped ones are counted as records_dropped_*)"
                    );
                }
            }
            Err(err) => {
                // Whatever part was written is cut away, so that the file ends on a whole record.
                self.partial = !(self.regular && file.set_len(self.size).is_ok());
                self.dropped(DropReason::of(&err), records, Some(&err), now);
            }
        }
    }

    fn dropped(&mut self, reason: DropReason, records: u64, err: Option<&io::Error>, now: Instant) {
        self.drops.add(reason, records);
        if let Some(dropped) = self.errors.failed(records, now) {
            tracing::error!(
                record = %self.config.target.describe(),
                error = %err.map(ToString::to_string).unwrap_or_else(|| "the record file is not open".into()),
                dropped,
                "records are being dropped: {}; comparisons, logs, metrics and the verdict go on, and writing resumes by itself (at most one such line per {})",
                reason.what(),
                humantime::format_duration(self.config.log_every),
            );
        }
    }

    fn retry_open(&mut self, now: Instant) -> bool {
        if self.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        match self.open_target() {
            Ok(()) => {
                self.retry_at = None;
                true
            }
            Err(err) => {
                self.retry_at = Some(now + RETRY_EVERY);
                tracing::debug!(record = %self.config.target.describe(), %err, "cannot open the record file");
                false
            }
        }
    }

    /// Closes and opens the file again (logrotate moved it away): records from now on go to a
    /// file of that name, created if needed. Stdout is left as it is.
    pub fn reopen(&mut self, now: Instant) {
        self.flush(now);
        if self.config.target == Target::Stdout {
            return;
        }
        match self.open_target() {
            Ok(()) => {
                self.retry_at = None;
                tracing::info!(record = %self.config.target.describe(), size = self.size, "record file reopened");
            }
            Err(err) => {
                self.retry_at = Some(now + RETRY_EVERY);
                tracing::error!(
                    record = %self.config.target.describe(),
                    error = %err,
                    "cannot reopen the record file; retrying while records come (they are dropped and counted meanwhile)"
                );
            }
        }
    }

    /// Current file → `.1` (after shifting the older ones), a new current file, and `.1`
    /// compressed in the background. A failure is logged, and retried a second later.
    fn rotate(&mut self, now: Instant) {
        let Target::File(base) = self.config.target.clone() else { return };
        if let Some(previous) = self.compressing.take() {
            // Rotations faster than compression wait here (records queue meanwhile).
            let _ = previous.join();
        }
        let existing = existing_rotated(&base);
        let mut failed = None;
        for step in rotation_plan(&base, &existing, self.config.keep) {
            let result = match &step {
                Step::Remove(path) => std::fs::remove_file(path),
                Step::Rename { from, to } => std::fs::rename(from, to),
            };
            if let Err(err) = result {
                failed = Some((step, err));
            }
        }
        if let Some((step, err)) = failed {
            tracing::error!(record = %base.display(), ?step, error = %err, "record file rotation: a step failed");
        }
        match self.open_target() {
            Ok(()) => {
                tracing::info!(record = %base.display(), keep = self.config.keep, "record file rotated");
            }
            Err(err) => {
                self.file = None;
                self.retry_at = Some(now + RETRY_EVERY);
                tracing::error!(record = %base.display(), error = %err, "cannot open a new record file after rotating");
                return;
            }
        }
        if self.size > 0 {
            // The current file could not be moved away: do not try again for every record.
            self.retry_at = Some(now + RETRY_EVERY);
        }
        let first = rotated_path(&base, 1, false);
        if self.config.compression == Compression::Gzip && self.config.keep > 0 && first.exists() {
            self.compressing = Some(std::thread::spawn(move || {
                if let Err(err) = compress(&first) {
                    tracing::warn!(file = %first.display(), error = %err, "rotated record file left uncompressed");
                }
            }));
        }
    }

    /// Writes what is buffered and waits for a compression in progress.
    pub fn finish(&mut self, now: Instant) {
        self.flush(now);
        if let Some(compressing) = self.compressing.take() {
            let _ = compressing.join();
        }
    }
}

/// The rotated files of `base` that exist now.
fn existing_rotated(base: &Path) -> Vec<Rotated> {
    let (Some(dir), Some(name)) = (base.parent(), base.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(Result::ok).filter_map(|e| parse_rotated(name, e.file_name().to_str()?)).collect()
}

/// `path` → `path.gz`, through a hidden temporary file so that a reader never sees half a gzip
/// file, then `path` removed. On failure `path` stays as it is.
pub fn compress(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("records");
    let temporary = path.with_file_name(format!(".{name}.gz.tmp"));
    let target = path.with_file_name(format!("{name}.gz"));
    let result = (|| {
        let mut input = File::open(path)?;
        let mut encoder = flate2::write::GzEncoder::new(
            io::BufWriter::new(File::create(&temporary)?),
            flate2::Compression::fast(),
        );
        io::copy(&mut input, &mut encoder)?;
        encoder.finish()?.into_inner().map_err(io::IntoInnerError::into_error)?;
        std::fs::rename(&temporary, &target)
    })();
    if let Err(err) = result {
        let _ = std::fs::remove_file(&temporary);
        return Err(err);
    }
    std::fs::remove_file(path)?;
    Ok(target)
}

// ---------------------------------------------------------------------------------------------
// The queue and the writer thread.

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    reopen: bool,
    closing: bool,
    /// Records the writer has taken and not yet flushed, and their bytes (still held: they count
    /// against the queue's bound until written).
    in_hand: u64,
    in_hand_bytes: usize,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The writer waits on it for records or commands.
    wake: Condvar,
    /// Waiters of [`RecordSink::sync`]: signalled when the writer has flushed everything.
    idle: Condvar,
    drops: Arc<DropCounters>,
    queue_errors: Mutex<ErrorLog>,
    /// Records were dropped for a full queue since the last one taken (checked without a lock).
    queue_failing: std::sync::atomic::AtomicBool,
    /// Bytes of records queued or in the writer's hands at most.
    queue_bytes: usize,
    target: String,
    log_every: Duration,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Asks the writer to reopen the record file: what the SIGHUP and SIGUSR1 handlers hold.
#[derive(Clone, Debug)]
pub struct Reopener(Arc<Shared>);

impl Reopener {
    pub fn reopen(&self) {
        self.0.lock().reopen = true;
        self.0.wake.notify_one();
    }
}

/// The record writer as the reporter holds it: [`push`](Self::push) never blocks.
#[derive(Debug)]
pub struct RecordSink {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl RecordSink {
    /// Opens the target (an error means the daemon cannot start: a bad path or permission) and
    /// starts the writer thread. At most `queue_bytes` of records wait for it (the records share
    /// of the memory budget); beyond, records are dropped and counted
    /// (`records_dropped_queue_full`).
    pub fn start(config: SinkConfig, queue_bytes: usize) -> io::Result<Self> {
        let drops = Arc::new(DropCounters::default());
        let target = config.target.describe();
        let log_every = config.log_every;
        let file = RecordFile::open(config, drops.clone())?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
            drops,
            queue_errors: Mutex::new(ErrorLog::new(log_every)),
            queue_failing: Default::default(),
            queue_bytes,
            target,
            log_every,
        });
        let writer = std::thread::Builder::new().name("record-writer".into()).spawn({
            let shared = shared.clone();
            move || write_loop(&shared, file)
        })?;
        Ok(Self { shared, writer: Some(writer) })
    }

    /// Queues one record (a whole line with its newline), or drops and counts it when the queue
    /// is full. A record larger than the whole queue is taken when nothing else is held.
    pub fn push(&self, line: Vec<u8>) {
        let mut state = self.shared.lock();
        let held = state.bytes + state.in_hand_bytes;
        if held > 0 && held + line.len() > self.shared.queue_bytes {
            drop(state);
            self.shared.drops.add(DropReason::QueueFull, 1);
            self.shared.queue_failing.store(true, Ordering::Relaxed);
            let mut log = self.shared.queue_errors.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(dropped) = log.failed(1, Instant::now()) {
                tracing::error!(
                    record = %self.shared.target,
                    dropped,
                    "records are being dropped: {}; comparisons, logs, metrics and the verdict go on (at most one such line per {})",
                    DropReason::QueueFull.what(),
                    humantime::format_duration(self.shared.log_every),
                );
            }
            return;
        }
        // The writer sleeps while the queue is empty and gathers while it is short of a buffer.
        let wake = state.queue.is_empty()
            || (state.bytes < BUFFER_BYTES && state.bytes + line.len() >= BUFFER_BYTES);
        state.bytes += line.len();
        state.queue.push_back(line);
        drop(state);
        if wake {
            self.shared.wake.notify_one();
        }
        if self.shared.queue_failing.swap(false, Ordering::Relaxed) {
            let mut log = self.shared.queue_errors.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(dropped) = log.succeeded() {
                tracing::info!(record = %self.shared.target, dropped, "the record writer keeps up again");
            }
        }
    }

    /// Records dropped so far, by reason.
    pub fn drops(&self) -> RecordDrops {
        self.shared.drops.get()
    }

    pub fn reopener(&self) -> Reopener {
        Reopener(self.shared.clone())
    }

    /// Waits until everything pushed so far is written (or dropped), at most `timeout`; false
    /// when the writer did not get there in time (it is stuck on a full pipe, say).
    pub fn sync(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while !(state.queue.is_empty() && state.in_hand == 0) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.shared.idle.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Writes what is queued (at most `grace`), stops the writer and returns the final counts.
    /// Records the writer could not write in time are counted as dropped at exit, and the writer
    /// thread is left behind (it ends with the process).
    pub fn close(mut self, grace: Duration) -> RecordDrops {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if self.sync(grace) {
            if let Some(writer) = self.writer.take() {
                let _ = writer.join();
            }
        } else {
            let mut state = self.shared.lock();
            let left = state.queue.len() as u64 + state.in_hand;
            state.queue.clear();
            state.bytes = 0;
            state.in_hand_bytes = 0;
            drop(state);
            self.shared.drops.add(DropReason::AtExit, left);
            tracing::error!(
                record = %self.shared.target,
                dropped = left,
                "records still queued at exit were not written within {} (counted as records_dropped_at_exit)",
                humantime::format_duration(grace),
            );
        }
        self.shared.drops.get()
    }
}

impl Drop for RecordSink {
    /// Without [`close`](Self::close) (an early error), the writer still writes what is queued
    /// and ends.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
    }
}

fn write_loop(shared: &Shared, mut file: RecordFile) {
    let mut batch = VecDeque::new();
    loop {
        let (reopen, closing) = {
            let mut state = shared.lock();
            while state.queue.is_empty() && !state.reopen && !state.closing {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            let gathered = Instant::now() + GATHER;
            while !state.reopen && !state.closing && state.bytes < BUFFER_BYTES {
                let left = gathered.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = shared.wake.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
            }
            std::mem::swap(&mut batch, &mut state.queue);
            state.in_hand_bytes = std::mem::take(&mut state.bytes);
            state.in_hand = batch.len() as u64;
            (std::mem::take(&mut state.reopen), state.closing)
        };
        let now = Instant::now();
        if reopen {
            file.reopen(now);
        }
        for line in batch.drain(..) {
            file.append(&line, now);
        }
        let mut state = shared.lock();
        if state.queue.is_empty() {
            drop(state);
            if closing {
                file.finish(Instant::now());
            } else {
                file.flush(Instant::now());
            }
            state = shared.lock();
            state.in_hand = 0;
            state.in_hand_bytes = 0;
            if state.queue.is_empty() {
                shared.idle.notify_all();
                if closing {
                    return;
                }
            }
        } else {
            state.in_hand = 0;
            state.in_hand_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests;
