//! `mirror-daemon [run]`: capture, rebuild HTTP exchanges, log and record each one.
//!
//! With no shadow configured this is a passive HTTP monitor of the production model: one
//! structured log event per exchange (target `exchange`, so `MIRROR_LOG=info,exchange=off` silences
//! them) and, with `--record`, one JSON object per exchange. A summary with every loss counter is
//! logged periodically and at shutdown.
use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;
use mirror_daemon::{
    capture::ring::RingReader,
    exchange::{Assembler, AssemblerConfig, Exchange},
    flows::{FlowConfig, FlowLimits},
    http::HttpConfig,
    kernel::KernelCapture,
    pcap::monotonic_to_realtime_offset,
    report::{
        record::{ExchangeRecord, RecordOptions, Redactor},
        summary::{ExchangeStats, nonzero},
    },
};
use tokio::signal::unix::{SignalKind, signal};

use super::{AttachArgs, parse_duration, parse_size};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Append one JSON object per exchange to this file (`-` for stdout). Schema: README.
    #[arg(long, value_name = "FILE.jsonl")]
    pub record: Option<PathBuf>,
    /// Include request and response bodies in records.
    #[arg(long)]
    pub record_bodies: bool,
    /// Also redact this header in records and logs (repeatable); Authorization, Cookie,
    /// Set-Cookie, Proxy-Authorization and X-Api-Key always are.
    #[arg(long, value_name = "NAME")]
    pub redact_header: Vec<String>,
    /// How often to log the summary.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub summary_interval: Duration,
    /// Stop after this long; otherwise run until SIGINT or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Bounds of the reassembly and framing state; hitting one drops and counts, never blocks.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Connections tracked at most (least recently active evicted first).
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Largest request or response body kept (larger ones are counted and dropped).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_body_size: u32,
    /// Out-of-order bytes buffered per connection.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub max_buffered_per_connection: u32,
    /// Bytes buffered across all connections (reassembly and partial messages, each).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub max_buffered_total: u32,
    /// A connection idle this long is forgotten.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

impl LimitArgs {
    pub fn assembler_config(&self, server_ports: &[u16]) -> AssemblerConfig {
        AssemblerConfig {
            flows: FlowConfig {
                server_ports: server_ports.to_vec(),
                limits: FlowLimits {
                    max_connections: self.max_connections,
                    max_buffered_per_conn: self.max_buffered_per_connection as usize,
                    max_buffered_total: self.max_buffered_total as usize,
                    idle_timeout_ns: self.idle_timeout.as_nanos() as u64,
                    ..FlowLimits::default()
                },
            },
            http: HttpConfig {
                max_body_bytes: self.max_body_size as usize,
                max_buffered_total: self.max_buffered_total as usize,
                ..HttpConfig::default()
            },
            announce_requests: false,
        }
    }
}

/// Kernel CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where exchanges go once rebuilt.
struct Sink {
    records: Option<Box<dyn Write + Send>>,
    options: RecordOptions,
    stats: ExchangeStats,
}

impl Sink {
    fn exchange(&mut self, exchange: &Exchange) -> Result<()> {
        let latency_ns = exchange.production_latency_ns();
        self.stats.record(latency_ns);
        let path = exchange.request.target.split('?').next().unwrap_or_default();
        tracing::info!(
            target: "exchange",
            client = %exchange.client,
            server = %exchange.server,
            method = %exchange.request.method,
            path,
            prod_status = exchange.response.status,
            request_bytes = exchange.request.body.len(),
            response_bytes = exchange.response.body.len(),
            prod_latency_ms = latency_ns as f64 / 1e6,
            "exchange"
        );
        if let Some(out) = self.records.as_mut() {
            let record = ExchangeRecord::new(exchange, &self.options);
            serde_json::to_writer(&mut *out, &record)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

fn summary(
    kernel: &KernelCapture,
    reader: &RingReader,
    assembler: &Assembler,
    stats: &ExchangeStats,
    last: bool,
) {
    let kernel_counters = kernel.counters().map(|c| c.to_string()).unwrap_or_else(|e| e.to_string());
    let drops = nonzero(assembler.stats().list());
    tracing::info!(
        exchanges = stats.exchanges,
        prod_latency_p50_ms = stats.latency_ms(0.5),
        prod_latency_p99_ms = stats.latency_ms(0.99),
        connections = assembler.connections(),
        buffered_bytes = assembler.memory_bytes(),
        undecodable_records = reader.undecodable,
        kernel = %kernel_counters,
        drops = %drops,
        "{}",
        if last { "final summary" } else { "summary" }
    );
}

pub async fn run(args: RunArgs) -> Result<()> {
    let cfg = args.attach.capture_config();
    let records: Option<Box<dyn Write + Send>> = match &args.record {
        Some(path) if path.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open record file {}", path.display()))?;
            Some(Box::new(BufWriter::new(file)))
        }
        None => None,
    };
    let mut sink = Sink {
        records,
        options: RecordOptions {
            bodies: args.record_bodies,
            redactor: Redactor::new(&args.redact_header),
            realtime_offset_ns: monotonic_to_realtime_offset(),
        },
        stats: ExchangeStats::default(),
    };
    let mut assembler = Assembler::new(args.limits.assembler_config(&cfg.ports));
    let (mut kernel, mut reader) = KernelCapture::start(&cfg)?;
    tracing::info!(interfaces = ?cfg.interfaces, ports = ?cfg.ports, "capturing; rebuilding HTTP exchanges");

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut summary_every = tokio::time::interval(args.summary_interval);
    summary_every.tick().await;
    let mut expire_every = tokio::time::interval(Duration::from_secs(1));
    let mut ready = Vec::new();
    loop {
        tokio::select! {
            read = reader.read(|s| assembler.push(s, &mut ready)) => {
                read.context("read the kernel ring buffer")?;
            }
            _ = expire_every.tick() => assembler.tick(monotonic_now_ns(), &mut ready),
            _ = summary_every.tick() => summary(&kernel, &reader, &assembler, &sink.stats, false),
            () = kernel.poll_logs() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = &mut deadline => break,
        }
        for exchange in ready.drain(..) {
            sink.exchange(&exchange).context("write exchange record")?;
        }
        if let Some(out) = sink.records.as_mut() {
            out.flush().context("flush exchange records")?;
        }
    }
    reader.drain(|s| assembler.push(s, &mut ready));
    for exchange in ready.drain(..) {
        sink.exchange(&exchange).context("write exchange record")?;
    }
    if let Some(out) = sink.records.as_mut() {
        out.flush().context("flush exchange records")?;
    }
    summary(&kernel, &reader, &assembler, &sink.stats, true);
    kernel.detach();
    Ok(())
}
