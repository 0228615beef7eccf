//! `mirror-daemon [run]`: capture, rebuild HTTP exchanges, replay them to shadow models, compare,
//! and report — or, with no `--shadow`, monitor production passively.
//!
//! Without shadows each exchange is logged (target `exchange`) and recorded. With shadows each
//! comparison is logged (target `comparison`: mismatches and errors at INFO, matches at DEBUG) and
//! recorded, and the periodic summary carries the promotion verdict (target `verdict`).
use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Args;
use mirror_daemon::{
    compare::CompareRules,
    exchange::{Assembler, AssemblerConfig},
    flows::{FlowConfig, FlowLimits},
    http::HttpConfig,
    kernel::KernelCapture,
    metrics::{self, Metrics},
    mirror::{Dispatcher, ReportItem, Reporter, ShadowInfo, Snapshot},
    pcap::monotonic_to_realtime_offset,
    replay::{
        client::{ClientLimits, ShadowClient},
        join::JoinTable,
        request::ReplayOptions,
        sample::{RoutePattern, Sampler},
        target::{ShadowTarget, parse_model},
    },
    report::{
        aggregate::Aggregator,
        record::{RecordOptions, Redactor},
        summary::ExchangeStats,
    },
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use super::{AttachArgs, CriteriaArgs, parse_duration, parse_size};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Append one JSON object per exchange (per exchange and shadow, with shadows) to this file
    /// (`-` for stdout). Schema: README.
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
    /// Serve Prometheus metrics here (`/metrics`, `/healthz`); `off` disables.
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub mirror: MirrorArgs,
    #[command(flatten)]
    pub criteria: CriteriaArgs,
}

/// Where metrics are served.
#[derive(Clone, Copy, Debug)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "off" {
        return Ok(MetricsAddr(None));
    }
    text.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|_| format!("`{text}`: expected IP:PORT (e.g. 127.0.0.1:9464) or off"))
}

/// Shadows, what is replayed to them, and how answers are compared.
#[derive(Debug, Clone, Args)]
pub struct MirrorArgs {
    /// Shadow model to replay to (repeatable): `[MODEL_ID[@VERSION]=]http://HOST:PORT[/PREFIX]`.
    #[arg(long, value_name = "SPEC", value_parser = |s: &str| ShadowTarget::parse(s).map_err(|e| e.to_string()))]
    pub shadow: Vec<ShadowTarget>,
    /// The production model's name for records: `MODEL_ID[@VERSION]`.
    #[arg(long, value_name = "MODEL_ID[@VERSION]")]
    pub production_model: Option<String>,
    /// Share of requests replayed, 0–100; decided by a hash of the request so all nodes agree.
    #[arg(long, default_value_t = 100.0)]
    pub sample_percent: f64,
    /// Only replay these routes (repeatable): `[METHOD ]/path/glob`, `*` one segment, `**` many.
    #[arg(long, value_name = "ROUTE", value_parser = RoutePattern::parse)]
    pub route: Vec<RoutePattern>,
    /// Keep the original Host header (default: the shadow's host:port).
    #[arg(long)]
    pub keep_host: bool,
    /// Header added to every replayed request so shadows can skip side effects; `off` disables.
    #[arg(long, default_value = "x-shadow-mirror: 1")]
    pub marker_header: String,
    /// Per-request timeout of a replay.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub shadow_timeout: Duration,
    /// Replays in flight per shadow at most.
    #[arg(long, default_value_t = 64)]
    pub shadow_max_in_flight: usize,
    /// Replays queued per shadow at most; beyond, requests are dropped and counted.
    #[arg(long, default_value_t = 1024)]
    pub shadow_queue: usize,
    /// Largest shadow answer read (larger ones fail the comparison).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub shadow_max_response: u32,
    /// Never compare this part of JSON bodies (repeatable): a JSON Pointer or glob (`/id`,
    /// `/outputs/*/name`, `**/timestamp`).
    #[arg(long, value_name = "POINTER")]
    pub ignore: Vec<String>,
    /// Numbers within this absolute difference agree (within tolerance).
    #[arg(long, default_value_t = 0.0)]
    pub abs_tolerance: f64,
    /// Numbers within this relative difference agree (within tolerance).
    #[arg(long, default_value_t = 0.0)]
    pub rel_tolerance: f64,
    /// Compare as: auto, oip, tf_serving, mlflow, openai, json, bytes.
    #[arg(long, default_value = "auto")]
    pub protocol: String,
}

impl MirrorArgs {
    fn rules(&self) -> Result<CompareRules> {
        let protocol = serde_json::from_value(serde_json::Value::String(self.protocol.clone()))
            .with_context(|| {
                format!(
                    "--protocol {}: use auto, oip, tf_serving, mlflow, openai, json or bytes",
                    self.protocol
                )
            })?;
        Ok(CompareRules {
            ignore: self.ignore.clone(),
            abs_tolerance: self.abs_tolerance,
            rel_tolerance: self.rel_tolerance,
            protocol,
            ..CompareRules::default()
        })
    }

    fn replay_options(&self) -> Result<ReplayOptions> {
        let marker = if self.marker_header == "off" {
            None
        } else {
            let Some((name, value)) = self.marker_header.split_once(':') else {
                bail!("--marker-header `{}`: expected `name: value` or off", self.marker_header);
            };
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        };
        Ok(ReplayOptions { keep_host: self.keep_host, marker })
    }

    fn client_limits(&self) -> ClientLimits {
        ClientLimits {
            timeout: self.shadow_timeout,
            max_in_flight: self.shadow_max_in_flight.max(1),
            queue: self.shadow_queue.max(1),
            max_response_bytes: self.shadow_max_response as usize,
        }
    }
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
    /// Comparisons waiting for their production response or shadow answers at most.
    #[arg(long, default_value_t = 8192)]
    pub max_pending_comparisons: usize,
}

impl LimitArgs {
    pub fn assembler_config(&self, server_ports: &[u16], announce_requests: bool) -> AssemblerConfig {
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
            announce_requests,
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

fn open_records(path: &Option<PathBuf>) -> Result<Option<Box<dyn Write + Send>>> {
    Ok(match path {
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
    })
}

pub async fn run(args: RunArgs) -> Result<()> {
    let cfg = args.attach.capture_config();
    let rules = args.mirror.rules()?;
    let replay_options = args.mirror.replay_options()?;
    let criteria = args.criteria.criteria()?;
    let shadows = args.mirror.shadow.clone();
    let metrics = Arc::new(Metrics::new());
    if let MetricsAddr(Some(addr)) = args.metrics_addr {
        let local = metrics::serve(addr, metrics.clone()).await.with_context(|| {
            format!("serve metrics on {addr} (choose another with --metrics-addr, or off)")
        })?;
        tracing::info!(%local, "metrics on http://{local}/metrics");
    }

    // Room for bursts; beyond it exchanges are dropped and counted (`report_queue_full`).
    let (report_tx, report_rx) = mpsc::channel(32_768);
    let reporter = Reporter {
        shadows: shadows
            .iter()
            .map(|t| ShadowInfo {
                model: t.model.clone(),
                endpoint: format!("http://{}{}", t.authority, t.path_prefix),
            })
            .collect(),
        production_model: args.mirror.production_model.as_deref().map(|m| parse_model(m, true)),
        rules,
        criteria,
        record: RecordOptions {
            bodies: args.record_bodies,
            redactor: Redactor::new(&args.redact_header),
            realtime_offset_ns: monotonic_to_realtime_offset(),
        },
        records: open_records(&args.record)?,
        metrics,
        stats: ExchangeStats::default(),
        aggregator: Aggregator::default(),
        unaggregated: 0,
    };
    let reporter = tokio::spawn(reporter.run(report_rx));

    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let clients: Vec<ShadowClient> = shadows
        .iter()
        .enumerate()
        .map(|(i, t)| ShadowClient::spawn(i, t.clone(), args.mirror.client_limits(), done_tx.clone()))
        .collect();
    drop(done_tx);
    // An entry waits for the replay's timeout plus the time production may take to finish.
    let wait = args.mirror.shadow_timeout + Duration::from_secs(60);
    let join = JoinTable::new(clients.len(), args.limits.max_pending_comparisons, wait.as_nanos() as u64);
    let sampler = Sampler::new(args.mirror.sample_percent, args.mirror.route.clone());
    let mut dispatcher = Dispatcher::new(sampler, replay_options, clients, join, report_tx);

    let mut assembler = Assembler::new(args.limits.assembler_config(&cfg.ports, !shadows.is_empty()));
    let (mut kernel, mut reader) = KernelCapture::start(&cfg)?;
    if shadows.is_empty() {
        tracing::info!(interfaces = ?cfg.interfaces, ports = ?cfg.ports, "capturing; rebuilding HTTP exchanges (no --shadow: monitoring only)");
    } else {
        let names: Vec<String> = shadows.iter().map(ToString::to_string).collect();
        tracing::info!(interfaces = ?cfg.interfaces, ports = ?cfg.ports, shadows = ?names, "capturing; mirroring to shadows");
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut summary_every = tokio::time::interval(args.summary_interval);
    summary_every.tick().await;
    let mut expire_every = tokio::time::interval(Duration::from_secs(1));
    let mut exchanges = Vec::new();
    let snapshot = |kernel: &KernelCapture,
                    reader: &mirror_daemon::capture::ring::RingReader,
                    assembler: &Assembler,
                    dispatcher: &Dispatcher| Snapshot {
        kernel: kernel.counters().unwrap_or_default(),
        drops: assembler.stats().clone(),
        undecodable: reader.undecodable,
        connections: assembler.connections(),
        buffered_bytes: assembler.memory_bytes(),
        dispatch: dispatcher.counters,
        replay: dispatcher.replay_counters(),
    };
    loop {
        tokio::select! {
            read = reader.read(|s| assembler.push(s, &mut exchanges)) => {
                read.context("read the kernel ring buffer")?;
            }
            Some(done) = done_rx.recv() => dispatcher.shadow_done(done),
            _ = expire_every.tick() => {
                let now = monotonic_now_ns();
                assembler.tick(now, &mut exchanges);
                dispatcher.expire(now);
            }
            _ = summary_every.tick() => {
                let s = snapshot(&kernel, &reader, &assembler, &dispatcher);
                dispatcher.send(ReportItem::Summary(Box::new(s)));
            }
            () = kernel.poll_logs() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = &mut deadline => break,
        }
        dispatcher.requests(assembler.take_ready_requests(), monotonic_now_ns());
        for exchange in exchanges.drain(..) {
            dispatcher.exchange(exchange);
        }
    }

    // Stop capturing, then give replays in flight up to their timeout to finish.
    reader.drain(|s| assembler.push(s, &mut exchanges));
    dispatcher.requests(assembler.take_ready_requests(), monotonic_now_ns());
    for exchange in exchanges.drain(..) {
        dispatcher.exchange(exchange);
    }
    let grace = tokio::time::sleep(args.mirror.shadow_timeout + Duration::from_millis(100));
    tokio::pin!(grace);
    while dispatcher.shadows().iter().any(|c| c.counters.pending() > 0) {
        tokio::select! {
            Some(done) = done_rx.recv() => dispatcher.shadow_done(done),
            () = &mut grace => break,
        }
    }
    let (tx, rx) = oneshot::channel();
    let last = snapshot(&kernel, &reader, &assembler, &dispatcher);
    dispatcher.send_control(ReportItem::Final(Box::new(last), tx)).await;
    let _ = rx.await;
    drop(dispatcher);
    reporter.await.context("reporter task")?.context("report")?;
    kernel.detach();
    Ok(())
}
