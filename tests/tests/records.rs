//! Records on a long-lived node, against the real daemon and kernel programs: a full file system
//! (a tiny tmpfs mounted here, and `/dev/full`) costs record lines, never comparisons, and writing
//! resumes when space is back; logrotate moves the file away and SIGUSR1 or SIGHUP reopens it; the
//! built-in rotation keeps its files; a stdout reader that stops reading never stalls the daemon.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use mirror_tests::{
    ChildGuard,
    client::{connect, post_json},
    daemon::Daemon,
    gate::kernel_tests_allowed,
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Trio},
    read_records, scratch_file, sha256_hex,
};
use serde_json::Value;

const PORT: u16 = 8080;
const PATH: &str = "/v2/models/demo/infer";
const METRICS: &str = "127.0.0.1:19464";

fn model_server(ns: &Netns, addr: Ipv4Addr, version: &str) -> ChildGuard {
    let options = ServerOptions { version: version.into(), ..ServerOptions::default() };
    model_server::start_test_build(ns, &[SocketAddr::from((addr, PORT))], &options)
}

/// Request bodies tagged `tag`, `rows` rows each.
fn bodies(tag: &str, n: usize, rows: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let rows: Vec<Vec<f64>> = (0..rows).map(|r| vec![i as f64, r as f64, -2.5, 0.25]).collect();
            infer_request(&format!("{tag}-{i}"), &rows)
        })
        .collect()
}

/// Sends every body over 4 keep-alive connections from the client namespace.
fn drive(trio: &Trio, bodies: &[Vec<u8>]) {
    let server = SocketAddr::from((trio.production_addr, PORT));
    let bodies = bodies.to_vec();
    trio.client.run(move || {
        let mut conns: Vec<_> = (0..4).map(|_| connect(server)).collect();
        for (i, body) in bodies.iter().enumerate() {
            let (status, _, _) = post_json(&mut conns[i % 4], &server.to_string(), PATH, body);
            assert_eq!(status, 200);
        }
    });
}

fn start(trio: &Trio, record: &str, extra: &[&str]) -> Daemon {
    let shadow = format!("model-v2@2=http://{}:{PORT}", trio.shadow_addr);
    let mut args = vec![
        "run",
        "-i",
        &trio.production_if,
        "-p",
        "8080",
        "--shadow",
        &shadow,
        "--record",
        record,
        "--summary-interval",
        "1s",
        "--metrics-addr",
        METRICS,
    ];
    args.extend_from_slice(extra);
    Daemon::start(&trio.production, &args)
}

fn metrics(trio: &Trio) -> String {
    trio.production.run(|| {
        let mut s = connect(METRICS.parse().unwrap());
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let raw = mirror_tests::client::read_response(&mut s).expect("metrics response");
        String::from_utf8_lossy(&raw).into_owned()
    })
}

/// The sum of every series of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits (at most 20 s) until the daemon has made `n` comparisons; returns the metrics then.
fn wait_for_comparisons(trio: &Trio, n: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(trio);
        let got = metric(&text, "mirror_comparisons_total", "");
        if got >= n || Instant::now() > deadline {
            assert_eq!(got, n, "comparisons made:\n{text}");
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (at most 15 s) until `path` holds `n` records.
fn wait_for_records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let records = read_records(path);
        if records.len() >= n || Instant::now() > deadline {
            assert_eq!(records.len(), n, "records in {}", path.display());
            return records;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The request digests of `records`, sorted.
fn digests(records: &[Value]) -> Vec<String> {
    let mut d: Vec<String> =
        records.iter().map(|r| r["request"]["sha256"].as_str().unwrap().to_string()).collect();
    d.sort();
    d
}

fn digests_of(bodies: &[Vec<u8>]) -> Vec<String> {
    let mut d: Vec<String> = bodies.iter().map(|b| sha256_hex(b)).collect();
    d.sort();
    d
}

/// A tmpfs mounted on a scratch directory for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Self {
        let dir = scratch_file(name);
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", dir.display());
        Self(dir)
    }

    /// Fills the file system, then frees `free` bytes; returns the filler file.
    fn fill_leaving(&self, free: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let mut written = 0u64;
        loop {
            match file.write(&[0u8; 4096]) {
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
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_costs_records_never_comparisons_and_writing_resumes() {
    if !kernel_tests_allowed("a_full_disk_costs_records_never_comparisons_and_writing_resumes") {
        return;
    }
    let tmpfs = Tmpfs::mount("records-tmpfs", "1m");
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1");
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2");
    let filler = tmpfs.fill_leaving(32 << 10);
    let record = tmpfs.0.join("records.jsonl");
    let mut daemon = start(&trio, record.to_str().unwrap(), &[]);

    // About 1 KB per record: 300 records do not fit in 32 KiB.
    let full = bodies("full", 300, 4);
    let started = Instant::now();
    drive(&trio, &full);
    wait_for_comparisons(&trio, 300);
    daemon.wait_for("records are being dropped", Duration::from_secs(10));
    // The writer's last flush and a summary (which updates the metrics) after it.
    std::thread::sleep(Duration::from_millis(2500));
    let text = metrics(&trio);
    let dropped = metric(&text, "mirror_records_dropped_total", r#"reason="disk_full""#);
    let written = read_records(&record);
    assert!(dropped > 0 && !written.is_empty(), "{} written, {dropped} dropped", written.len());
    assert_eq!(written.len() as u64 + dropped, 300, "every record written or counted");
    assert_eq!(metric(&text, "mirror_records_dropped_total", r#"reason="write_error""#), 0);
    assert!(text.contains(r#"mirror_comparisons_total{model_id="model-v2",route="POST /v2/models/demo/infer",verdict="match"} 300"#), "{text}");
    // Logged when it started, then at most once per summary interval (1 s).
    let lines = daemon.stderr.iter().filter(|l| l.contains("records are being dropped")).count();
    let seconds = started.elapsed().as_secs() as usize;
    assert!(lines >= 1 && lines <= seconds + 1, "{lines} error lines in {seconds} s");

    // Space is back: every later record is written, whole.
    std::fs::remove_file(&filler).unwrap();
    let after = bodies("after", 50, 4);
    drive(&trio, &after);
    let records = wait_for_records(&record, written.len() + 50);
    assert_eq!(digests(&records[written.len()..]), digests_of(&after));
    daemon.wait_for("records are written again", Duration::from_secs(5));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let drops = finished.final_drops();
    assert_eq!(drops.get("records_dropped_disk_full").copied(), Some(dropped), "{drops:?}");
    drop(trio);
}

#[test]
fn dev_full_records_nothing_and_mirrors_everything() {
    if !kernel_tests_allowed("dev_full_records_nothing_and_mirrors_everything") {
        return;
    }
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1");
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2");
    let daemon = start(&trio, "/dev/full", &["--record-max-size", "4KiB"]);
    drive(&trio, &bodies("dev-full", 40, 2));
    wait_for_comparisons(&trio, 40);
    // Metrics follow the counters at each summary (1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let text = metrics(&trio);
    assert_eq!(metric(&text, "mirror_records_dropped_total", r#"reason="disk_full""#), 40, "{text}");
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    assert_eq!(finished.final_drops().get("records_dropped_disk_full").copied(), Some(40));
    assert!(Path::new("/dev/full").exists() && !Path::new("/dev/full.1").exists(), "never rotated");
}

#[test]
fn logrotate_moves_the_file_and_sigusr1_or_sighup_reopens_it() {
    if !kernel_tests_allowed("logrotate_moves_the_file_and_sigusr1_or_sighup_reopens_it") {
        return;
    }
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1");
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2");
    let record = scratch_file("logrotate.jsonl");
    let daemon = start(&trio, record.to_str().unwrap(), &["--record-max-size", "off"]);
    let mut moved = Vec::new();
    for (round, signal) in [(0, libc::SIGUSR1), (1, libc::SIGHUP)] {
        let batch = bodies(&format!("round{round}"), 10, 2);
        drive(&trio, &batch);
        let records = wait_for_records(&record, 10);
        assert_eq!(digests(&records), digests_of(&batch));
        let to = scratch_file(&format!("logrotate.jsonl.{}", round + 1));
        std::fs::rename(&record, &to).unwrap();
        daemon.signal(signal);
        // Reopening creates the file again under its name.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !record.exists() {
            assert!(Instant::now() < deadline, "no reopen after signal {signal}");
            std::thread::sleep(Duration::from_millis(50));
        }
        moved.push((to, batch));
    }
    let last = bodies("round2", 10, 2);
    drive(&trio, &last);
    assert_eq!(digests(&wait_for_records(&record, 10)), digests_of(&last), "after the reopens");
    for (path, batch) in &moved {
        assert_eq!(digests(&read_records(path)), digests_of(batch), "{}", path.display());
    }
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    assert!(!finished.final_drops().keys().any(|k| k.starts_with("records_dropped")), "{}", finished.stderr);
}

#[test]
fn built_in_rotation_keeps_n_compressed_files_that_report_reads() {
    if !kernel_tests_allowed("built_in_rotation_keeps_n_compressed_files_that_report_reads") {
        return;
    }
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1");
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2");
    let dir = scratch_file("rotation");
    std::fs::create_dir_all(&dir).unwrap();
    let record = dir.join("node.jsonl");
    let daemon =
        start(&trio, record.to_str().unwrap(), &["--record-max-size", "16KiB", "--record-keep", "50"]);
    let batch = bodies("rotation", 200, 2);
    drive(&trio, &batch);
    wait_for_comparisons(&trio, 200);
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.contains(&"node.jsonl.1.gz".to_string()), "{names:?}");
    assert!(names.iter().all(|n| n == "node.jsonl" || n.ends_with(".gz")), "{names:?}");
    for name in &names {
        assert!(std::fs::metadata(dir.join(name)).unwrap().len() <= 16 << 10, "{name} over the limit");
    }
    // `report` over the directory sees every comparison once.
    let out = Command::new(mirror_tests::daemon::binary())
        .args(["report", "--format", "json", "--min-samples", "10"])
        .arg(&dir)
        .output()
        .expect("run report");
    let value: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let files = value["source"]["files"].as_array().unwrap();
    let total: u64 = files.iter().map(|f| f["comparison_records"].as_u64().unwrap()).sum();
    assert_eq!(total, 200, "{value}");
    assert_eq!(files.len(), names.len());
}

#[test]
fn a_stdout_reader_that_stops_reading_costs_records_never_comparisons() {
    if !kernel_tests_allowed("a_stdout_reader_that_stops_reading_costs_records_never_comparisons") {
        return;
    }
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1");
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2");
    let mut daemon = start(&trio, "-", &["--record-bodies"]);
    // The pipe stays open and is never read.
    let stdout = daemon.child.stdout.take().expect("stdout piped");
    // About 100 KB per record with bodies: 300 are more than the pipe and the writer's queue hold.
    let batch = bodies("stdout", 300, 3000);
    drive(&trio, &batch);
    wait_for_comparisons(&trio, 300);
    daemon.wait_for("records are being dropped", Duration::from_secs(5));
    // Metrics follow the counters at each summary (1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let text = metrics(&trio);
    let queue_full = metric(&text, "mirror_records_dropped_total", r#"reason="queue_full""#);
    assert!(queue_full > 0, "{text}");
    let stopping = Instant::now();
    let finished = daemon.stop();
    let took = stopping.elapsed();
    assert!(finished.success, "{}", finished.stderr);
    assert!(took < Duration::from_secs(15), "stopping took {took:?}");
    let drops = finished.final_drops();
    assert!(drops.get("records_dropped_queue_full").copied() >= Some(queue_full), "{drops:?}");
    assert!(drops.get("records_dropped_at_exit").copied() > Some(0), "{drops:?}");
    drop(stdout);
}
