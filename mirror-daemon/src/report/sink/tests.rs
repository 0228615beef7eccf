use super::*;
use std::{io::Read, sync::atomic::AtomicU32};

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mirror-sink-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The record queue's share of the default memory budget.
fn queue_bytes() -> usize {
    crate::budget::Shares::split(crate::budget::DEFAULT_MEMORY_LIMIT).unwrap().records as usize
}

fn config(target: Target, max_size: Option<u64>, keep: u32, compression: Compression) -> SinkConfig {
    SinkConfig { target, max_size, keep, compression, log_every: Duration::from_secs(10) }
}

/// Record `seq` padded to exactly `len` bytes, newline included.
fn line(seq: usize, len: usize) -> Vec<u8> {
    let head = format!("{{\"seq\":{seq},\"pad\":\"");
    let pad = len - head.len() - 3;
    format!("{head}{}\"}}\n", "x".repeat(pad)).into_bytes()
}

/// The sequence numbers of the records in `bytes`; panics on a line that is not a whole record.
fn seqs(bytes: &[u8]) -> Vec<usize> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "ends inside a record: {text:?}");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            v["seq"].as_u64().unwrap() as usize
        })
        .collect()
}

fn read_seqs(path: &Path) -> Vec<usize> {
    let mut bytes = Vec::new();
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::MultiGzDecoder::new(file).read_to_end(&mut bytes).unwrap();
    } else {
        file.read_to_end(&mut bytes).unwrap();
    }
    seqs(&bytes)
}

#[test]
fn a_record_never_spans_two_files() {
    let max = Some(100);
    assert!(!starts_new_file(0, 60, max));
    assert!(!starts_new_file(40, 60, max), "exactly at the limit: stays");
    assert!(starts_new_file(41, 60, max), "one byte over: a new file");
    assert!(!starts_new_file(0, 500, max), "larger than the limit: into the empty file");
    assert!(starts_new_file(500, 1, max), "after it, a new file at once");
    assert!(!starts_new_file(u64::MAX - 1, 10, None), "no limit: never");
}

#[test]
fn rotated_names_are_recognised_exactly() {
    let is = |name: &str| parse_rotated("records.jsonl", name);
    assert_eq!(is("records.jsonl.1"), Some(Rotated { number: 1, gzip: false }));
    assert_eq!(is("records.jsonl.12.gz"), Some(Rotated { number: 12, gzip: true }));
    for other in [
        "records.jsonl",
        "records.jsonl.",
        "records.jsonl.01",
        "records.jsonl.1.gz.tmp",
        ".records.jsonl.1.gz.tmp",
        "records.jsonl.x",
        "records.jsonlx.1",
        "other.jsonl.1",
    ] {
        assert_eq!(is(other), None, "{other}");
    }
    assert_eq!(rotated_path(Path::new("/a/r.jsonl"), 3, true), Path::new("/a/r.jsonl.3.gz"));
}

#[test]
fn the_plan_shifts_newest_last_and_removes_beyond_keep() {
    let base = Path::new("/d/r.jsonl");
    let p = |n, gz| rotated_path(base, n, gz);
    let rename = |from, to| Step::Rename { from, to };
    let existing = [
        Rotated { number: 1, gzip: true },
        Rotated { number: 2, gzip: true },
        Rotated { number: 3, gzip: true },
    ];
    assert_eq!(
        rotation_plan(base, &existing, 3),
        [
            Step::Remove(p(3, true)),
            rename(p(2, true), p(3, true)),
            rename(p(1, true), p(2, true)),
            rename(base.to_path_buf(), p(1, false)),
        ]
    );
    // Keep lowered from 5 to 2: everything from .2 up goes, .1 becomes .2.
    let five: Vec<Rotated> = (1..=5).map(|number| Rotated { number, gzip: number > 1 }).collect();
    let plan = rotation_plan(base, &five, 2);
    assert_eq!(plan.iter().filter(|s| matches!(s, Step::Remove(_))).count(), 4);
    assert_eq!(plan[4], rename(p(1, false), p(2, false)));
    // Keep 0: no rotated file at all, the current one removed.
    let plan = rotation_plan(base, &existing, 0);
    assert_eq!(plan.last(), Some(&Step::Remove(base.to_path_buf())));
    assert!(plan.iter().all(|s| matches!(s, Step::Remove(_))));
}

#[test]
fn errors_are_logged_once_per_interval() {
    let t0 = Instant::now();
    let mut log = ErrorLog::new(Duration::from_secs(10));
    assert_eq!(log.succeeded(), None, "nothing failed yet");
    assert_eq!(log.failed(3, t0), Some(3), "the first failure is logged at once");
    assert_eq!(log.failed(1, t0 + Duration::from_secs(1)), None);
    assert_eq!(log.failed(2, t0 + Duration::from_secs(9)), None);
    assert_eq!(log.failed(1, t0 + Duration::from_secs(10)), Some(4), "the count since the last line");
    assert_eq!(log.succeeded(), Some(7), "recovery says how many were dropped");
    assert_eq!(log.succeeded(), None, "once");
    assert_eq!(log.failed(1, t0 + Duration::from_secs(11)), Some(1), "a new outage is logged at once");
}

#[test]
fn rotation_boundaries_on_disk() {
    let dir = Scratch::new("boundaries");
    let base = dir.path("r.jsonl");
    let drops = Arc::new(DropCounters::default());
    let cfg = config(Target::File(base.clone()), Some(100), 5, Compression::None);
    let mut file = RecordFile::open(cfg, drops.clone()).unwrap();
    let now = Instant::now();
    // 50 + 50 = exactly 100: one file. 30 more: a new file.
    file.append(&line(0, 50), now);
    file.append(&line(1, 50), now);
    assert_eq!(file.size(), 100);
    file.append(&line(2, 30), now);
    // Larger than the limit: a file of its own, and the next record starts another one.
    file.append(&line(3, 250), now);
    file.append(&line(4, 30), now);
    file.finish(now);
    assert_eq!(read_seqs(&rotated_path(&base, 3, false)), [0, 1]);
    assert_eq!(std::fs::metadata(rotated_path(&base, 3, false)).unwrap().len(), 100);
    assert_eq!(read_seqs(&rotated_path(&base, 2, false)), [2]);
    assert_eq!(read_seqs(&rotated_path(&base, 1, false)), [3]);
    assert_eq!(std::fs::metadata(rotated_path(&base, 1, false)).unwrap().len(), 250);
    assert_eq!(read_seqs(&base), [4]);
    assert_eq!(drops.get(), RecordDrops::default());
}

#[test]
fn retention_keeps_the_newest_n_compressed() {
    let dir = Scratch::new("retention");
    let base = dir.path("r.jsonl");
    let drops = Arc::new(DropCounters::default());
    let cfg = config(Target::File(base.clone()), Some(200), 3, Compression::Gzip);
    let mut file = RecordFile::open(cfg, drops.clone()).unwrap();
    // 100-byte records, two per file: 14 records make 7 files, of which 3 rotated ones are kept.
    for seq in 0..14 {
        file.append(&line(seq, 100), Instant::now());
    }
    file.finish(Instant::now());
    assert_eq!(read_seqs(&base), [12, 13]);
    assert_eq!(read_seqs(&rotated_path(&base, 1, true)), [10, 11]);
    assert_eq!(read_seqs(&rotated_path(&base, 2, true)), [8, 9]);
    assert_eq!(read_seqs(&rotated_path(&base, 3, true)), [6, 7], "the oldest kept");
    let mut names: Vec<String> =
        std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["r.jsonl", "r.jsonl.1.gz", "r.jsonl.2.gz", "r.jsonl.3.gz"], "older ones removed");
    assert_eq!(drops.get(), RecordDrops::default());
}

#[test]
fn keep_zero_keeps_only_the_current_file() {
    let dir = Scratch::new("keep0");
    let base = dir.path("r.jsonl");
    let cfg = config(Target::File(base.clone()), Some(100), 0, Compression::Gzip);
    let mut file = RecordFile::open(cfg, Arc::default()).unwrap();
    for seq in 0..5 {
        file.append(&line(seq, 100), Instant::now());
    }
    file.finish(Instant::now());
    assert_eq!(read_seqs(&base), [4]);
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
}

#[test]
fn an_existing_file_is_appended_to_and_counts_toward_the_limit() {
    let dir = Scratch::new("existing");
    let base = dir.path("r.jsonl");
    std::fs::write(&base, line(0, 80)).unwrap();
    let cfg = config(Target::File(base.clone()), Some(100), 2, Compression::None);
    let mut file = RecordFile::open(cfg, Arc::default()).unwrap();
    assert_eq!(file.size(), 80);
    file.append(&line(1, 30), Instant::now());
    file.finish(Instant::now());
    assert_eq!(read_seqs(&rotated_path(&base, 1, false)), [0]);
    assert_eq!(read_seqs(&base), [1]);
}

#[test]
fn reopen_after_the_file_was_moved_away() {
    let dir = Scratch::new("reopen");
    let base = dir.path("r.jsonl");
    let sink =
        RecordSink::start(config(Target::File(base.clone()), None, 0, Compression::None), queue_bytes())
            .unwrap();
    sink.push(line(0, 60));
    sink.push(line(1, 60));
    assert!(sink.sync(Duration::from_secs(5)));
    // logrotate: move the file, then signal.
    let moved = dir.path("r.jsonl-20261201");
    std::fs::rename(&base, &moved).unwrap();
    sink.push(line(2, 60));
    assert!(sink.sync(Duration::from_secs(5)));
    sink.reopener().reopen();
    sink.push(line(3, 60));
    sink.push(line(4, 60));
    let drops = sink.close(Duration::from_secs(5));
    assert_eq!(read_seqs(&moved), [0, 1, 2], "before the reopen: the moved file");
    assert_eq!(read_seqs(&base), [3, 4], "after it: a new file of the configured name");
    assert_eq!(drops, RecordDrops::default());
}

#[test]
fn dev_full_counts_every_record_and_is_never_rotated() {
    let drops = Arc::new(DropCounters::default());
    let cfg = config(Target::File("/dev/full".into()), Some(10), 2, Compression::Gzip);
    let mut file = RecordFile::open(cfg, drops.clone()).unwrap();
    for seq in 0..30 {
        file.append(&line(seq, 100), Instant::now());
    }
    file.finish(Instant::now());
    assert_eq!(drops.get().records_dropped_disk_full, 30);
    assert_eq!(drops.get().records_dropped_write_error, 0);
    assert!(!Path::new("/dev/full.1").exists(), "a device is never rotated");
    assert!(Path::new("/dev/full").exists());
}

/// A tmpfs of `size` mounted on a scratch directory for the test, unmounted when dropped.
struct Tmpfs(Scratch);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = Scratch::new("tmpfs");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", dir.0.display());
        Self(dir)
    }

    /// Fills the file system, then frees `free` bytes: returns the filler file.
    fn fill_leaving(&self, free: u64) -> PathBuf {
        let filler = self.0.path("filler");
        let mut file = File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("fill: {e}"),
            }
        }
        file.set_len(written.saturating_sub(free)).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0.0).status();
    }
}

#[test]
fn a_full_file_system_drops_whole_records_and_writing_resumes() {
    if !mirror_tests::gate::kernel_tests_allowed("a_full_file_system_drops_whole_records_and_writing_resumes")
    {
        return;
    }
    let fs = Tmpfs::mount("1m");
    let filler = fs.fill_leaving(16 << 10);
    let base = fs.0.path("r.jsonl");
    let sink = RecordSink::start(
        config(Target::File(base.clone()), Some(1 << 20), 2, Compression::None),
        queue_bytes(),
    )
    .unwrap();
    // Small batches, so that some are written before the file system is full.
    for seq in 0..100 {
        sink.push(line(seq, 1000));
        if seq % 4 == 3 {
            assert!(sink.sync(Duration::from_secs(5)));
        }
    }
    assert!(sink.sync(Duration::from_secs(5)));
    let during = read_seqs(&base);
    let dropped = sink.drops().records_dropped_disk_full;
    assert!(!during.is_empty() && dropped > 0, "{} written, {dropped} dropped", during.len());
    assert_eq!(during.len() as u64 + dropped, 100, "every record written or counted");
    assert_eq!(sink.drops().records_dropped_write_error, 0);

    // Space is back: every later record is written, after the earlier ones, whole.
    std::fs::remove_file(&filler).unwrap();
    for seq in 100..150 {
        sink.push(line(seq, 1000));
    }
    let drops = sink.close(Duration::from_secs(5));
    assert_eq!(drops.records_dropped_disk_full, dropped, "nothing more dropped");
    let after = read_seqs(&base);
    assert_eq!(after[..during.len()], during[..]);
    assert_eq!(after[during.len()..], (100..150).collect::<Vec<_>>()[..]);
}

#[test]
fn a_reader_that_stops_reading_never_blocks_the_pusher() {
    // A pipe nobody reads, as the record file.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) =
        // SAFETY: both descriptors are new and owned here.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let target = PathBuf::from(format!("/proc/self/fd/{}", fds[1]));
    let sink =
        RecordSink::start(config(Target::File(target), Some(1000), 2, Compression::Gzip), queue_bytes())
            .unwrap();
    drop(write_end);
    let started = Instant::now();
    let record = line(0, 4096);
    // 40 MiB: more than the pipe and the queue hold together.
    for _ in 0..10_240 {
        sink.push(record.clone());
    }
    let pushing = started.elapsed();
    assert!(pushing < Duration::from_secs(2), "pushing took {pushing:?}");
    assert!(!sink.sync(Duration::from_millis(200)), "the writer is stuck on the pipe");
    let closing = Instant::now();
    let drops = sink.close(Duration::from_millis(300));
    assert!(closing.elapsed() < Duration::from_secs(2), "close waits its grace only");
    assert!(drops.records_dropped_queue_full > 0, "{drops:?}");
    assert!(drops.records_dropped_at_exit > 0, "{drops:?}");
    // Less than the pipe's capacity plus one buffer was ever written.
    let in_pipe = 10_240 - drops.records_dropped_queue_full - drops.records_dropped_at_exit;
    assert!(in_pipe * 4096 < (2 << 20), "{in_pipe} records accounted as written");
    drop(read_end);
}

#[test]
fn the_queue_holds_no_more_than_its_share() {
    // A pipe nobody reads: the writer gets stuck on its first write.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) =
        // SAFETY: both descriptors are new and owned here.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let target = PathBuf::from(format!("/proc/self/fd/{}", fds[1]));
    let share = 256 << 10;
    let sink = RecordSink::start(config(Target::File(target), None, 0, Compression::None), share).unwrap();
    drop(write_end);
    let record = line(0, 4096);
    // 2 × 2 MiB: far more than the pipe, the writer's buffer and the share hold together. In two
    // bursts, so that the second comes while the writer is stuck with what it took of the first:
    // what it holds still counts.
    for burst in 0..2 {
        for _ in 0..512 {
            sink.push(record.clone());
        }
        if burst == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(!sink.sync(Duration::from_millis(200)), "the writer is stuck on the pipe");
    let drops = sink.close(Duration::from_millis(200));
    // What was still held at exit (queued, or taken by the writer and not written) fits the share.
    assert!(drops.records_dropped_at_exit > 0, "{drops:?}");
    assert!(drops.records_dropped_at_exit * 4096 <= share as u64, "{drops:?}");
    // Everything else went to the pipe (its 64 KiB and a write buffer or two) or was dropped.
    let written = 1024 - drops.records_dropped_queue_full - drops.records_dropped_at_exit;
    assert!(written * 4096 <= 4 * (64 << 10), "{written} records accounted as written: {drops:?}");
    drop(read_end);
}
