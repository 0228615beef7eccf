//! `mirror-daemon capture`: attach, stream segments to a pcap file or to stdout, detach.
//!
//! Its ring buffer defaults to the ring's share of the default `--memory-limit`, as `run`'s does;
//! `capture` takes no limit of its own since it holds little besides the ring (a pcap buffer).
use std::{
    collections::HashMap,
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use clap::Args;
use mirror_daemon::{
    capture::Segment,
    kernel::KernelCapture,
    pcap::{SegmentPcapWriter, monotonic_to_realtime_offset},
};
use tokio::signal::unix::{SignalKind, signal};

use super::{AttachArgs, parse_duration};

#[derive(Debug, Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Write a pcap file (tcpdump -r / Wireshark) instead of one line per segment on stdout.
    #[arg(long, short = 'w', value_name = "FILE.pcap")]
    pub write: Option<PathBuf>,
    /// Stop after this long (e.g. 30s); otherwise run until SIGINT or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

enum Output {
    Pcap(SegmentPcapWriter<BufWriter<File>>),
    Lines { out: BufWriter<std::io::Stdout>, names: HashMap<u32, String>, offset: i128 },
}

impl Output {
    fn write(&mut self, s: &Segment) -> Result<()> {
        match self {
            Output::Pcap(w) => Ok(w.write(s)?),
            Output::Lines { out, names, offset } => {
                let name = names.entry(s.ifindex).or_insert_with(|| interface_name(s.ifindex));
                let wall = (i128::from(s.ts_ns) + *offset).max(0) as u128;
                let when = UNIX_EPOCH + Duration::from_nanos(wall as u64);
                write!(
                    out,
                    "{} {name} {} {} > {} [{}] seq {} ack {} win {} len {}",
                    humantime::format_rfc3339_micros(when),
                    s.direction.label(),
                    s.src,
                    s.dst,
                    s.flag_letters(),
                    s.range_seq(),
                    s.ack,
                    s.window,
                    s.range_len(),
                )?;
                if s.range_len() != s.segment_len {
                    write!(out, " (part at {} of {})", s.offset, s.segment_len)?;
                }
                if s.lost > 0 {
                    write!(out, " LOST")?;
                }
                writeln!(out)?;
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<String> {
        match self {
            Output::Pcap(w) => {
                let summary =
                    format!("pcap: {} packets written, {} lost ranges skipped", w.written, w.lost_ranges);
                w.into_inner().flush().context("flush pcap file")?;
                Ok(summary)
            }
            Output::Lines { mut out, .. } => {
                out.flush()?;
                Ok(String::new())
            }
        }
    }
}

/// Counts segments and keeps the first output error (the ring reader's sink cannot fail).
struct Recorder {
    output: Output,
    segments: u64,
    failure: Option<anyhow::Error>,
}

impl Recorder {
    fn record(&mut self, s: &Segment) {
        self.segments += 1;
        if self.failure.is_none() {
            self.failure = self.output.write(s).err();
        }
    }
}

fn interface_name(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE bytes as the call requires.
    let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return format!("if{index}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

pub async fn run(args: CaptureArgs) -> Result<()> {
    let cfg = args.attach.capture_config();
    let offset = monotonic_to_realtime_offset();
    let output = match &args.write {
        Some(path) => {
            let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
            Output::Pcap(SegmentPcapWriter::new(BufWriter::with_capacity(1 << 20, file), offset)?)
        }
        None => Output::Lines { out: BufWriter::new(std::io::stdout()), names: HashMap::new(), offset },
    };
    let (mut kernel, mut reader) = KernelCapture::start(&cfg)?;
    tracing::info!(interfaces = ?cfg.interfaces, ports = ?cfg.ports, "capturing; stop with Ctrl-C");

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let started = SystemTime::now();
    let mut recorder = Recorder { output, segments: 0, failure: None };
    loop {
        tokio::select! {
            read = reader.read(|s| recorder.record(&s)) => {
                read.context("read the kernel ring buffer")?;
            }
            () = kernel.poll_logs() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = &mut deadline => break,
        }
        if recorder.failure.is_some() {
            break;
        }
    }
    reader.drain(|s| recorder.record(&s));
    let counters = kernel.counters()?;
    let programs = kernel.program_runs()?;
    kernel.detach();
    let Recorder { output, segments, failure } = recorder;
    if let Some(err) = failure {
        return Err(err.context("write captured segments"));
    }
    let summary = output.finish()?;
    let elapsed = started.elapsed().unwrap_or_default();
    eprintln!("captured {segments} segments in {:.1}s", elapsed.as_secs_f64());
    eprintln!("kernel counters: {counters}");
    eprintln!("undecodable records: {}", reader.undecodable);
    if !programs.is_empty() {
        let each: Vec<String> = programs
            .iter()
            .map(|p| format!("{} {} runs, {:.0} ns/run", p.program, p.runs, p.ns_per_run()))
            .collect();
        eprintln!("kernel programs: {}", each.join("; "));
    }
    if !summary.is_empty() {
        eprintln!("{summary}");
    }
    Ok(())
}
