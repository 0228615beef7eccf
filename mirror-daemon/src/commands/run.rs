//! `mirror-daemon [run]`: capture, rebuild HTTP exchanges, replay them to shadow models, compare,
//! and report — or, with no `--shadow`, monitor production passively.
//!
//! Without shadows each exchange is logged (target `exchange`) and recorded. With shadows each
//! comparison is logged (target `comparison`: mismatches and errors at INFO, matches at DEBUG) and
//! recorded, and the periodic summary carries the promotion verdict (target `verdict`).
//!
//! Settings come from the command line and, with `--config FILE`, from a file. **A flag given on
//! the command line overrides the file's value for that setting; a flag left out (even one with a
//! default) does not**, so the file is the node's configuration and flags are deliberate one-off
//! exceptions. List flags (`--shadow`, `--route`, `--ignore`...) replace the file's list whole.
//! Comparison flags (`--ignore`, tolerances, `--protocol`) change the default rules only: the
//! file's per-route rules are taken as written.
//!
//! With `--pod-selector` the capture follows the production pods on this node (see
//! [`mirror_daemon::discovery`]): pod changes arrive from the watch as [`PodEvent`]s, update the
//! [`CaptureTargets`], and the kernel is reconciled with them — then, and every few seconds, so
//! that failed attaches are retried.
//!
//! SIGHUP re-reads the file and applies what can change without re-attaching the kernel programs:
//! shadows, sampling, routes, replay options, comparison rules, criteria and the production model's
//! name. Capture, limits and outputs keep their running values (a WARN line lists them). An invalid
//! file is rejected with an ERROR line and the running settings stay in force. SIGHUP and SIGUSR1
//! also reopen the record file (for logrotate; see [`mirror_daemon::report::sink`]).
use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Args;
use mirror_daemon::{
    assembler::{
        AssemblerConfig,
        shards::{self, ShardEvent, ShardStats, ShardedAssembler},
    },
    budget::{self, Account, Shares},
    capture::{
        ignore::OwnConnections,
        shed::{Pressure, ShedController, ShedPolicy, mirrored_share},
    },
    compare::CompareRules,
    config::{self, FileSettings},
    discovery::{
        attach::Attacher,
        follow::{self, PodEvent},
        pods,
        targets::CaptureTargets,
    },
    drops::Losses,
    flows::{FlowConfig, FlowLimits},
    framing::HttpConfig,
    kernel::KernelCapture,
    logging::LogFormat,
    metrics::{self, Metrics},
    mirror::{
        DispatchMemory, DispatchSettings, Dispatcher, ReportItem, Reporter, ReporterSettings, RouteRules,
        RuleSet, Snapshot, shadow_info,
    },
    pcap::monotonic_to_realtime_offset,
    replay::{
        client::ClientLimits,
        request::ReplayOptions,
        sample::{RoutePattern, Sampler},
        target::{ShadowTarget, parse_model},
    },
    report::{
        aggregate::Aggregator,
        document::{VerdictBoard, VerdictPublisher},
        record::{RecordOptions, Redactor},
        sink::{self, Compression, RecordSink, Reopener, SinkConfig, Target},
        summary::ExchangeStats,
    },
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use super::{AttachArgs, CriteriaArgs, parse_duration, parse_size, parse_size_u64};

#[derive(Debug, Clone, PartialEq, Args)]
pub struct RunArgs {
    /// Read settings from this file (.yaml, .yml or .toml); flags given on the command line
    /// override it. SIGHUP re-reads it. Check it with `mirror-daemon check-config FILE`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Follow the production pods on this node through the Kubernetes API: those matching this
    /// label selector (e.g. `app=ml-inference,version=v1`) and scheduled on `--node-name`. Their
    /// addresses become the server-address filter and their host-side interfaces are attached as
    /// they come and go; `--interface` is then optional.
    #[arg(long, value_name = "LABELS")]
    pub pod_selector: Option<String>,
    /// This node's name, for `--pod-selector` (the DaemonSet sets NODE_NAME from the downward API).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Pick up connections that were already open when capture started, at their next request,
    /// instead of ignoring them until they reconnect. Assumes clients do not pipeline (most do
    /// not); a request pipelined behind one whose response has not started could be mispaired.
    #[arg(long)]
    pub resync_mid_stream: bool,
    /// Never shed connections: when capture falls behind, the full ring buffer drops records of
    /// every connection alike (counted `ringbuf_full`) instead of whole connections being left out.
    /// In a config file: `capture.shed: false`.
    #[arg(long)]
    pub no_shed: bool,
    /// Append one JSON object per exchange (per exchange and shadow, with shadows) to this file
    /// (`-` for stdout). Schema: README. SIGUSR1 (and SIGHUP) reopen it, for logrotate.
    #[arg(long, value_name = "FILE.jsonl")]
    pub record: Option<PathBuf>,
    /// Rotate the record file before a record would take it past this size: FILE → FILE.1, the
    /// older ones shifted up. `off` never rotates (when logrotate does it).
    #[arg(long, value_name = "SIZE|off", default_value = "256MiB", value_parser = parse_record_max_size)]
    pub record_max_size: RecordMaxSize,
    /// Rotated record files kept (FILE.1 … FILE.N); older ones are removed. 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = sink::DEFAULT_KEEP)]
    pub record_keep: u32,
    /// How rotated record files are stored: gzip (FILE.1.gz, compressed in the background) or none.
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    pub record_compress: Compression,
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
    /// The config file's log format, unless `--log-format` was given.
    #[arg(skip)]
    pub log_format: Option<LogFormat>,
}

/// When the record file is rotated (`None`: never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMaxSize(pub Option<u64>);

fn parse_record_max_size(text: &str) -> Result<RecordMaxSize, String> {
    config::parse_record_max_size(text).map(RecordMaxSize)
}

/// Where metrics are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    config::parse_metrics_addr(text).map(MetricsAddr)
}

/// Shadows, what is replayed to them, and how answers are compared.
#[derive(Debug, Clone, PartialEq, Args)]
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
    /// A streamed (event-stream) shadow answer: longest wait between two pieces of it.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shadow_stream_idle_timeout: Duration,
    /// A streamed (event-stream) shadow answer: longest time in all, from sending the request.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub shadow_stream_timeout: Duration,
    /// Replays in flight per shadow at most, fixed. Without it the limit follows the shadow:
    /// request rate × shadow latency (Little's law) with headroom, within the memory budget.
    #[arg(long, value_name = "N")]
    pub shadow_max_in_flight: Option<usize>,
    /// Replays queued per shadow at most; beyond, requests are dropped and counted.
    #[arg(long, default_value_t = 1024)]
    pub shadow_queue: usize,
    /// Largest shadow answer read (larger ones fail the comparison). Default: 64MiB, or the
    /// replay share of `--memory-limit` if smaller.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub shadow_max_response: Option<u32>,
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
    /// Descriptor set of gRPC services to compare as JSON (repeatable), as written by `protoc
    /// --include_imports --descriptor_set_out=FILE` or `buf build -o FILE`; without one, other
    /// gRPC methods than the built-in inference APIs are compared as bytes.
    #[arg(long, value_name = "FILE")]
    pub proto_descriptor: Vec<std::path::PathBuf>,
    /// The default rules when a config file is in use (the file's, with the flags given applied).
    #[arg(skip)]
    pub compare: Option<CompareRules>,
    /// Per-route rules from the config file.
    #[arg(skip)]
    pub route_rules: Vec<RouteRules>,
}

impl MirrorArgs {
    fn rules(&self) -> Result<RuleSet> {
        let default = match &self.compare {
            Some(rules) => rules.clone(),
            None => self.flag_rules(CompareRules::default(), &|_| true)?,
        };
        Ok(RuleSet { default, routes: self.route_rules.clone(), schemas: self.schemas()? })
    }

    /// The built-in message definitions plus the `--proto-descriptor` files.
    fn schemas(&self) -> Result<mirror_daemon::compare::Schemas> {
        let mut schemas = mirror_daemon::compare::Schemas::builtin();
        for path in &self.proto_descriptor {
            let bytes = std::fs::read(path).with_context(|| {
                format!(
                    "--proto-descriptor {}: cannot read it (give a file written by `protoc --include_imports \
                     --descriptor_set_out=FILE` or `buf build -o FILE`)",
                    path.display()
                )
            })?;
            schemas
                .add_descriptor_set(&bytes)
                .with_context(|| format!("--proto-descriptor {}", path.display()))?;
        }
        Ok(schemas)
    }

    /// `base` with the comparison flags for which `given` is true applied.
    fn flag_rules(&self, base: CompareRules, given: &dyn Fn(&str) -> bool) -> Result<CompareRules> {
        let mut rules = base;
        if given("ignore") {
            rules.ignore = self.ignore.clone();
        }
        if given("abs_tolerance") {
            rules.abs_tolerance = self.abs_tolerance;
        }
        if given("rel_tolerance") {
            rules.rel_tolerance = self.rel_tolerance;
        }
        if given("protocol") {
            rules.protocol = self.protocol()?;
        }
        Ok(rules)
    }

    fn protocol(&self) -> Result<mirror_daemon::compare::ProtocolChoice> {
        serde_json::from_value(serde_json::Value::String(self.protocol.clone())).with_context(|| {
            format!("--protocol {}: use auto, oip, tf_serving, mlflow, openai, json or bytes", self.protocol)
        })
    }

    fn replay_options(&self) -> Result<ReplayOptions> {
        let marker = config::parse_marker_header(&self.marker_header)
            .map_err(|e| anyhow::anyhow!("--marker-header {e}"))?;
        Ok(ReplayOptions { keep_host: self.keep_host, marker })
    }

    fn client_limits(&self, shares: &Shares) -> ClientLimits {
        ClientLimits {
            timeout: self.shadow_timeout,
            stream_idle_timeout: self.shadow_stream_idle_timeout,
            stream_timeout: self.shadow_stream_timeout.max(self.shadow_timeout),
            max_in_flight: self.shadow_max_in_flight.map(|n| n.max(1)),
            queue: self.shadow_queue.max(1),
            max_response_bytes: shares.max_response as usize,
        }
    }
}

/// Bounds of the reassembly and framing state; hitting one drops and counts, never blocks.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct LimitArgs {
    /// Memory the daemon holds at most, in all: the ring buffer, reassembly, partial messages,
    /// replay bodies, and exchanges waiting to be joined or reported each get a share of it
    /// (README: Memory). At its share a part sheds and counts (`memory_budget`) rather than grow.
    #[arg(long, default_value = "256MiB", value_parser = parse_size_u64)]
    pub memory_limit: u64,
    /// Connections tracked at most (least recently active evicted first).
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Largest request or response body kept (larger ones are counted and dropped). Default:
    /// 64MiB, or the partial messages' share of `--memory-limit` if smaller.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_body_size: Option<u32>,
    /// Out-of-order bytes buffered per connection.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub max_buffered_per_connection: u32,
    /// Bytes buffered across all connections (reassembly and partial messages, each). Default:
    /// their shares of `--memory-limit`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_buffered_total: Option<u32>,
    /// A connection idle this long is forgotten.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Comparisons waiting for their production response or shadow answers at most.
    #[arg(long, default_value_t = 8192)]
    pub max_pending_comparisons: usize,
    /// Threads rebuilding exchanges (TCP reassembly and HTTP framing); connections are spread over
    /// them by their addresses and ports, and the connection and buffer limits split between them.
    /// A backlog of comparisons is prepared on as many threads. Default: the cores the daemon may
    /// use, at most 4.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,
}

impl LimitArgs {
    /// Rebuilding threads: `--workers`, or [`shards::default_workers`].
    pub fn workers(&self) -> usize {
        self.workers.map_or_else(shards::default_workers, usize::from)
    }

    pub fn assembler_config(
        &self,
        shares: &Shares,
        server_ports: &[u16],
        announce_requests: bool,
        resync_mid_stream: bool,
    ) -> AssemblerConfig {
        AssemblerConfig {
            flows: FlowConfig {
                server_ports: server_ports.to_vec(),
                limits: FlowLimits {
                    max_connections: self.max_connections,
                    max_buffered_per_conn: self.max_buffered_per_connection as usize,
                    max_buffered_total: shares.reassembly as usize,
                    idle_timeout_ns: self.idle_timeout.as_nanos() as u64,
                    ..FlowLimits::default()
                },
            },
            http: HttpConfig {
                max_body_bytes: shares.max_body as usize,
                max_buffered_total: shares.framing as usize,
                resync_mid_stream,
                ..HttpConfig::default()
            },
            announce_requests,
            own_connections: None,
        }
    }
}

/// Where the settings came from: what `run` needs to apply the file again on SIGHUP.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The command line alone, with its defaults.
    pub cli: RunArgs,
    /// Ids of the arguments given on the command line (or in their environment variable).
    pub given: BTreeSet<String>,
}

impl Invocation {
    /// The arguments that were given explicitly in `matches`.
    pub fn from_matches(cli: RunArgs, matches: &clap::ArgMatches) -> Self {
        use clap::parser::ValueSource;
        let given = matches
            .ids()
            .filter(|id| {
                matches!(
                    matches.value_source(id.as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .map(|id| id.as_str().to_string())
            .collect();
        Self { cli, given }
    }

    /// The settings in force: the config file's (if any) under the flags given.
    pub fn settings(&self) -> Result<RunArgs> {
        let Some(path) = &self.cli.config else {
            self.cli.check()?;
            return Ok(self.cli.clone());
        };
        let file = config::load(path)?;
        self.with_file(&file)
    }

    /// The command line applied over `file`.
    pub fn with_file(&self, file: &FileSettings) -> Result<RunArgs> {
        let mut args = self.cli.clone();
        let given = |id: &str| self.given.contains(id);
        macro_rules! take {
            ($($id:literal: $field:expr => $value:expr;)*) => {$(
                if !given($id) && let Some(value) = $value.clone() {
                    $field = value;
                }
            )*};
        }
        take! {
            "interfaces": args.attach.interfaces => file.interfaces;
            "ports": args.attach.ports => file.ports;
            "server_addrs": args.attach.server_addrs => file.server_addrs;
            "pod_selector": args.pod_selector => file.pod_selector.clone().map(Some);
            "resync_mid_stream": args.resync_mid_stream => file.resync_mid_stream;
            "no_shed": args.no_shed => file.shed.map(|shed| !shed);
            "xdp_mode": args.attach.xdp_mode => file.xdp_mode;
            "ring_buffer_size": args.attach.ring_buffer_size => file.ring_buffer_size.map(Some);
            "kernel_stats": args.attach.kernel_stats => file.kernel_stats;
            "record": args.record => file.record.clone().map(Some);
            "record_max_size": args.record_max_size => file.record_max_size.map(RecordMaxSize);
            "record_keep": args.record_keep => file.record_keep;
            "record_compress": args.record_compress => file.record_compress;
            "record_bodies": args.record_bodies => file.record_bodies;
            "redact_header": args.redact_header => file.redact_headers;
            "summary_interval": args.summary_interval => file.summary_interval;
            "metrics_addr": args.metrics_addr => file.metrics_addr.map(MetricsAddr);
            "log_format": args.log_format => file.log_format.map(Some);
            "max_connections": args.limits.max_connections => file.max_connections;
            "memory_limit": args.limits.memory_limit => file.memory_limit;
            "max_body_size": args.limits.max_body_size => file.max_body_size.map(Some);
            "max_buffered_per_connection": args.limits.max_buffered_per_connection => file.max_buffered_per_connection;
            "max_buffered_total": args.limits.max_buffered_total => file.max_buffered_total.map(Some);
            "idle_timeout": args.limits.idle_timeout => file.idle_timeout;
            "max_pending_comparisons": args.limits.max_pending_comparisons => file.max_pending_comparisons;
            "workers": args.limits.workers => file.workers.map(Some);
            "shadow": args.mirror.shadow => file.shadows;
            "sample_percent": args.mirror.sample_percent => file.sample_percent;
            "route": args.mirror.route => file.routes;
            "keep_host": args.mirror.keep_host => file.keep_host;
            "marker_header": args.mirror.marker_header => file.marker_header;
            "shadow_timeout": args.mirror.shadow_timeout => file.shadow_timeout;
            "shadow_stream_idle_timeout": args.mirror.shadow_stream_idle_timeout => file.shadow_stream_idle_timeout;
            "shadow_stream_timeout": args.mirror.shadow_stream_timeout => file.shadow_stream_timeout;
            "shadow_max_in_flight": args.mirror.shadow_max_in_flight => file.shadow_max_in_flight.map(Some);
            "shadow_queue": args.mirror.shadow_queue => file.shadow_queue;
            "shadow_max_response": args.mirror.shadow_max_response => file.shadow_max_response.map(Some);
            "proto_descriptor": args.mirror.proto_descriptor => file.proto_descriptors;
        }
        if !given("production_model")
            && let Some(model) = &file.production_model
        {
            args.mirror.production_model = Some(format!("{}@{}", model.model_id, model.version));
        }
        if let Some(criteria) = &file.criteria {
            take! {
                "min_samples": args.criteria.min_samples => Some(criteria.min_samples);
                "min_agreement": args.criteria.min_agreement => Some(criteria.min_agreement);
                "max_p99_latency_ratio": args.criteria.max_p99_latency_ratio => Some(criteria.max_p99_latency_ratio);
                "max_error_rate_increase": args.criteria.max_error_rate_increase => Some(criteria.max_error_rate_increase);
                "max_ttft_p99_ratio": args.criteria.max_ttft_p99_ratio => Some(criteria.max_ttft_p99_ratio);
                "max_tpot_p99_ratio": args.criteria.max_tpot_p99_ratio => Some(criteria.max_tpot_p99_ratio);
                "min_exact_match": args.criteria.min_exact_match => Some(criteria.min_exact_match);
            }
        }
        let base = file.compare.clone().unwrap_or_default();
        args.mirror.compare = Some(args.mirror.flag_rules(base, &given)?);
        args.mirror.route_rules = file.route_rules.clone();
        args.check()?;
        Ok(args)
    }
}

impl RunArgs {
    /// What clap checks for flags but a config file may have left out.
    pub fn check(&self) -> Result<()> {
        let source = if self.config.is_some() { "in the config file (capture.interfaces) or " } else { "" };
        if self.attach.interfaces.is_empty() && self.pod_selector.is_none() {
            bail!(
                "no interface to capture on: name one {source}with --interface, or follow the production \
                 pods with --pod-selector"
            );
        }
        if let Some(labels) = &self.pod_selector {
            if labels.trim().is_empty() {
                bail!(pods::DiscoveryError::EmptyLabelSelector);
            }
            if self.node_name.as_deref().is_none_or(|n| n.trim().is_empty()) {
                bail!(pods::DiscoveryError::NodeNameMissing);
            }
        }
        let source = if self.config.is_some() { "in the config file (capture.ports) or " } else { "" };
        if self.attach.ports.is_empty() {
            bail!("no port to capture: name the model server's port {source}with --port");
        }
        self.mirror.rules()?;
        self.mirror.replay_options()?;
        self.criteria.criteria()?;
        self.shares()?;
        Ok(())
    }

    /// `--memory-limit` split into each part's share, the per-part settings given explicitly
    /// taking their place.
    pub fn shares(&self) -> Result<Shares, budget::BudgetError> {
        let explicit = budget::Explicit {
            ring_buffer: self.attach.ring_buffer_size.map(u64::from),
            buffered_total: self.limits.max_buffered_total.map(u64::from),
            max_body: self.limits.max_body_size.map(u64::from),
            max_response: self.mirror.shadow_max_response.map(u64::from),
        };
        Shares::with(self.limits.memory_limit, explicit)
    }
}

/// Settings a reload applies (`applied`) and those that need a restart (`restart`), by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub applied: Vec<&'static str>,
    pub restart: Vec<&'static str>,
}

/// What differs between the running settings and a reloaded file's.
pub fn changes(old: &RunArgs, new: &RunArgs) -> Changes {
    let (o, n) = (&old.mirror, &new.mirror);
    let mut c = Changes::default();
    let mut applied = |name, differs: bool| {
        if differs {
            c.applied.push(name);
        }
    };
    applied("shadows", o.shadow != n.shadow);
    applied(
        "replay limits",
        (o.shadow_timeout, o.shadow_stream_idle_timeout, o.shadow_stream_timeout)
            != (n.shadow_timeout, n.shadow_stream_idle_timeout, n.shadow_stream_timeout)
            || (o.shadow_max_in_flight, o.shadow_queue, o.shadow_max_response)
                != (n.shadow_max_in_flight, n.shadow_queue, n.shadow_max_response),
    );
    applied("production_model", o.production_model != n.production_model);
    applied("sampling.percent", o.sample_percent != n.sample_percent);
    applied("sampling.routes", o.route != n.route);
    applied("replay.keep_host", o.keep_host != n.keep_host);
    applied("replay.marker_header", o.marker_header != n.marker_header);
    applied("compare", o.compare != n.compare);
    applied("routes", o.route_rules != n.route_rules);
    applied("proto_descriptors", o.proto_descriptor != n.proto_descriptor);
    applied("criteria", old.criteria != new.criteria);
    applied("capture.interfaces", old.attach.interfaces != new.attach.interfaces);
    applied("capture.server_addrs", old.attach.server_addrs != new.attach.server_addrs);
    let mut restart = |name, differs: bool| {
        if differs {
            c.restart.push(name);
        }
    };
    restart("capture.ports", old.attach.ports != new.attach.ports);
    restart("capture.pod_selector", old.pod_selector != new.pod_selector);
    restart("capture.resync_mid_stream", old.resync_mid_stream != new.resync_mid_stream);
    restart("capture.shed", old.no_shed != new.no_shed);
    restart("capture.xdp_mode", old.attach.xdp_mode != new.attach.xdp_mode);
    restart("capture.ring_buffer_size", old.attach.ring_buffer_size != new.attach.ring_buffer_size);
    restart("capture.kernel_stats", old.attach.kernel_stats != new.attach.kernel_stats);
    restart("limits", old.limits != new.limits);
    restart("output.record", old.record != new.record);
    restart(
        "output.record_rotation",
        (old.record_max_size, old.record_keep, old.record_compress)
            != (new.record_max_size, new.record_keep, new.record_compress),
    );
    restart("output.record_bodies", old.record_bodies != new.record_bodies);
    restart("output.redact_headers", old.redact_header != new.redact_header);
    restart("output.summary_interval", old.summary_interval != new.summary_interval);
    restart("output.metrics_addr", old.metrics_addr != new.metrics_addr);
    restart("output.log_format", old.log_format != new.log_format);
    c
}

/// `new` with everything a reload cannot change taken from `old`.
fn reloadable_part(old: &RunArgs, new: RunArgs) -> RunArgs {
    let mut attach = old.attach.clone();
    attach.interfaces = new.attach.interfaces;
    attach.server_addrs = new.attach.server_addrs;
    RunArgs { mirror: new.mirror, criteria: new.criteria, attach, ..old.clone() }
}

/// The kernel side of a run: the programs, what they should capture, and what was applied.
struct Capture {
    kernel: KernelCapture,
    targets: CaptureTargets,
    attacher: Attacher,
}

impl Capture {
    /// Makes the kernel match the targets (after a pod change, a reload, or periodically to retry
    /// failures and notice vanished interfaces).
    fn reconcile(&mut self, metrics: &Metrics) {
        self.attacher.reconcile(&mut self.kernel, &self.targets);
        metrics.attached_interfaces.set(self.kernel.interfaces().len() as i64);
        metrics.production_pods.set(self.targets.pods().len() as i64);
    }

    fn pod_event(&mut self, event: PodEvent, metrics: &Metrics) {
        match event {
            PodEvent::Up { uid, target } => {
                if !self.targets.pod_up(&uid, target) {
                    return;
                }
            }
            PodEvent::Down { uid } => {
                let Some(gone) = self.targets.pod_down(&uid) else { return };
                tracing::info!(pod = %gone.name, ips = ?gone.ips, "production pod down");
            }
        }
        self.reconcile(metrics);
    }
}

/// The watch of the production pods on this node, ending only on an error retrying cannot fix.
type PodWatch = tokio::task::JoinHandle<Result<(), pods::DiscoveryError>>;

/// Starts pod discovery: the watch, and the follower that finds each pod's interface.
async fn start_discovery(
    labels: &str,
    node_name: &str,
    metrics: &Metrics,
) -> Result<(mpsc::Receiver<PodEvent>, PodWatch)> {
    let selector = pods::PodSelector { labels: labels.to_string(), node_name: node_name.to_string() };
    let client = pods::client().await?;
    let (change_tx, change_rx) = mpsc::channel(1024);
    let (event_tx, events) = mpsc::channel(1024);
    let watch = tokio::spawn(pods::watch(client, selector, change_tx));
    let failures = metrics.pod_lookup_failures.clone();
    tokio::spawn(follow::follow(change_rx, event_tx, follow::lookup, failures, follow::RETRY_EVERY));
    Ok((events, watch))
}

/// The next pod event; never without discovery, nor once the follower has ended (then the
/// watch has ended too, and [`watch_ended`] says why).
async fn next_pod_event(events: &mut Option<mpsc::Receiver<PodEvent>>) -> PodEvent {
    if let Some(receiver) = events {
        if let Some(event) = receiver.recv().await {
            return event;
        }
        *events = None;
    }
    std::future::pending().await
}

/// Why the watch ended, or never without discovery.
async fn watch_ended(watch: &mut Option<PodWatch>) -> anyhow::Error {
    let Some(watch) = watch else { return std::future::pending().await };
    match watch.await {
        Ok(Err(err)) => anyhow::Error::new(err).context("pod discovery stopped"),
        Ok(Ok(())) => anyhow::anyhow!("pod discovery stopped"),
        Err(join) => anyhow::Error::new(join).context("pod discovery task"),
    }
}

fn dispatch_settings(args: &RunArgs) -> Result<DispatchSettings> {
    Ok(DispatchSettings {
        sampler: Sampler::new(args.mirror.sample_percent, args.mirror.route.clone()),
        replay: args.mirror.replay_options()?,
        shadows: args.mirror.shadow.clone(),
        limits: args.mirror.client_limits(&args.shares()?),
    })
}

fn reporter_settings(args: &RunArgs) -> Result<ReporterSettings> {
    Ok(ReporterSettings {
        shadows: args.mirror.shadow.iter().map(shadow_info).collect(),
        production_model: args.mirror.production_model.as_deref().map(|m| parse_model(m, true)),
        rules: args.mirror.rules()?,
        criteria: args.criteria.criteria()?,
    })
}

/// SIGHUP: re-reads the config file and applies what can change while running.
async fn reload(
    invocation: &Invocation,
    running: &mut RunArgs,
    dispatcher: &mut Dispatcher,
    capture: &mut Capture,
    metrics: &Metrics,
) {
    let Some(path) = &invocation.cli.config else {
        tracing::info!("SIGHUP: nothing to reload (started without --config)");
        return;
    };
    let new = match invocation.settings().and_then(|new| {
        let settings = (dispatch_settings(&new)?, reporter_settings(&new)?);
        Ok((new, settings))
    }) {
        Ok(new) => new,
        Err(err) => {
            tracing::error!(
                config = %path.display(),
                error = %format!("{err:#}"),
                "config reload rejected; the running settings stay in force (check the file with `mirror-daemon check-config`)"
            );
            return;
        }
    };
    let (new, (dispatch, report)) = new;
    let changes = changes(running, &new);
    if !changes.restart.is_empty() {
        tracing::warn!(
            config = %path.display(),
            settings = ?changes.restart,
            "config reload: these settings need a restart to take effect; the running values are kept"
        );
    }
    if changes.applied.is_empty() {
        tracing::info!(config = %path.display(), "config reloaded: nothing to apply");
        return;
    }
    capture.targets.configure(&new.attach.interfaces, &new.attach.server_addrs);
    capture.reconcile(metrics);
    dispatcher.reconfigure(dispatch);
    dispatcher.send_control(ReportItem::Reconfigure(Box::new(report))).await;
    let names: Vec<String> = new.mirror.shadow.iter().map(ToString::to_string).collect();
    tracing::info!(
        config = %path.display(),
        changed = ?changes.applied,
        shadows = ?names,
        sample_percent = new.mirror.sample_percent,
        "config reloaded"
    );
    *running = reloadable_part(running, new);
}

/// Says once that the capture sees the daemon's own replays: they are skipped, but capturing an
/// interface or port the shadows do not use saves the work.
fn own_replay_hint(said: &mut bool, drops: &mirror_daemon::drops::AssemblyDrops, dispatcher: &Dispatcher) {
    if *said || (drops.own_replay_segments == 0 && dispatcher.counters.own_replays_ignored == 0) {
        return;
    }
    *said = true;
    let shadows: Vec<String> = dispatcher.shadows().iter().map(|c| c.target.to_string()).collect();
    tracing::info!(
        shadows = ?shadows,
        "the capture sees this daemon's own replays (a shadow is on a captured interface and port); they are never rebuilt or replayed again (counted as own_replay_segments and own_replays_ignored); capture an interface or port the shadows do not use to save that work"
    );
}

/// How often the shed controller looks at the ring buffer.
const SHED_TICK: Duration = Duration::from_millis(200);

/// The shed controller wired to the kernel and the assembler (`capture::shed`).
struct Shedding {
    controller: ShedController,
    ring_bytes: u32,
    ringbuf_full: u64,
}

impl Shedding {
    fn new(ring_bytes: u32) -> Self {
        Self { controller: ShedController::new(ShedPolicy::default()), ring_bytes, ringbuf_full: 0 }
    }

    /// One controller tick: measures, decides, and moves the kernel's level; returns the new
    /// level for the rebuilding shards to follow.
    fn tick(
        &mut self,
        kernel: &mut KernelCapture,
        reader: &mut mirror_daemon::capture::ring::RingReader,
    ) -> Option<u32> {
        let full =
            kernel.counters().map_or(self.ringbuf_full, |c| c.get(mirror_common::counter::RINGBUF_FULL));
        let load = reader.take_load();
        let pressure = Pressure {
            ringbuf_full: full.saturating_sub(self.ringbuf_full),
            peak_fill: load.peak_drained_bytes as f64 / f64::from(self.ring_bytes.max(1)),
            longest_drain: load.longest_drain,
        };
        self.ringbuf_full = full;
        let change = self.controller.update(pressure)?;
        if let Err(err) = kernel.set_shed_level(change.to) {
            tracing::warn!(%err, "could not move the shed level");
            return None;
        }
        tracing::info!(
            reason = change.reason.as_str(),
            mirrored_share = mirrored_share(change.to),
            shed_buckets = change.to,
            "{}",
            if change.to == 0 {
                "capture recovered: every connection mirrored"
            } else {
                "shedding connections"
            }
        );
        Some(change.to)
    }
}

/// Kernel CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The record writer for `--record`, if any. Only opening can fail (and stop the start); later
/// write errors are counted and never stop the daemon. Its queue holds the records share.
fn open_records(args: &RunArgs, shares: &Shares) -> Result<Option<RecordSink>> {
    let Some(path) = &args.record else { return Ok(None) };
    let config = SinkConfig {
        target: Target::of(path),
        max_size: args.record_max_size.0,
        keep: args.record_keep,
        compression: args.record_compress,
        log_every: args.summary_interval,
    };
    let queue_bytes = usize::try_from(shares.records).unwrap_or(usize::MAX);
    let sink = RecordSink::start(config, queue_bytes).with_context(|| {
        format!("open record file {} (check the directory exists and is writable)", path.display())
    })?;
    Ok(Some(sink))
}

/// SIGUSR1 (and SIGHUP): the record file is opened again, for logrotate.
fn reopen_records(reopener: &Option<Reopener>, signal: &str) {
    match reopener {
        Some(reopener) => {
            tracing::info!(signal, "reopening the record file");
            reopener.reopen();
        }
        None if signal == "SIGUSR1" => tracing::info!("SIGUSR1: no record file to reopen"),
        None => {}
    }
}

/// Runs until SIGINT, SIGTERM or `--duration`. `args` are the settings in force
/// ([`Invocation::settings`]); `invocation` is kept to apply the config file again on SIGHUP.
pub async fn run(invocation: Invocation, args: RunArgs) -> Result<()> {
    // Handlers first: a SIGHUP (or SIGTERM) during start-up must not take the default action.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let mut args = args;
    let targets =
        CaptureTargets::new(args.pod_selector.is_some(), &args.attach.interfaces, &args.attach.server_addrs);
    let shares = args.shares()?;
    let mut cfg = args.attach.capture_config();
    cfg.filter_addrs = targets.filter_addresses();
    cfg.ring_bytes = u32::try_from(shares.ring_buffer).context("ring buffer size")?;
    let parts: Vec<String> =
        shares.parts().iter().map(|(name, bytes)| format!("{name}={}", budget::Size(*bytes))).collect();
    tracing::info!(memory_limit = %budget::Size(shares.total), shares = %parts.join(" "), "memory budget");
    let dispatch = dispatch_settings(&args)?;
    let reporting = reporter_settings(&args)?;
    let shadows = args.mirror.shadow.clone();
    let metrics = Arc::new(Metrics::new());
    let verdict = Arc::new(VerdictBoard::default());
    if let MetricsAddr(Some(addr)) = args.metrics_addr {
        let local = metrics::serve(addr, metrics.clone(), verdict.clone()).await.with_context(|| {
            format!("serve metrics on {addr} (choose another with --metrics-addr, or off)")
        })?;
        tracing::info!(%local, "metrics on http://{local}/metrics, the verdict on http://{local}/verdict");
    }

    // Room for bursts; beyond it exchanges are dropped and counted (`report_queue_full`).
    let (report_tx, report_rx) = mpsc::channel(32_768);
    let ReporterSettings { shadows: shadow_infos, production_model, rules, criteria } = reporting;
    let records = open_records(&args, &shares)?;
    let reopener = records.as_ref().map(RecordSink::reopener);
    let reporter = Reporter {
        shadows: shadow_infos,
        production_model,
        rules,
        criteria,
        record: RecordOptions {
            bodies: args.record_bodies,
            redactor: Redactor::new(&args.redact_header),
            realtime_offset_ns: monotonic_to_realtime_offset(),
        },
        records,
        record_drops: Default::default(),
        metrics: metrics.clone(),
        stats: ExchangeStats::default(),
        aggregator: Aggregator::default(),
        unaggregated: 0,
        outcomes: Default::default(),
        verdict: VerdictPublisher::new(verdict),
        // The cores rebuilding may use: a backlog of comparisons is prepared on as many.
        threads: args.limits.workers(),
    };
    // A thread of its own rather than a task among the replays: with hundreds of replay tasks
    // ready, a task would get its turn too seldom to keep up, and comparisons waiting for it
    // would fill the queues' share of the memory budget.
    let runtime = tokio::runtime::Handle::current();
    let reporter = std::thread::Builder::new()
        .name("reporter".into())
        .spawn(move || runtime.block_on(reporter.run(report_rx)))
        .context("start the reporter thread")?;

    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    // The replay clients register their connections here; the assembler skips them.
    let own = Arc::new(OwnConnections::new());
    let memory = DispatchMemory { replay: Account::new(shares.replay), queues: Account::new(shares.queues) };
    let mut dispatcher = Dispatcher::new(
        dispatch,
        args.limits.max_pending_comparisons,
        memory,
        own.clone(),
        done_tx,
        report_tx,
    );

    // Requests are announced as soon as they are complete even without shadows when a config file
    // is in use: a reload may add the first shadow.
    let announce = !shadows.is_empty() || args.config.is_some();
    let workers = args.limits.workers();
    let mut shards = ShardedAssembler::start(
        AssemblerConfig {
            own_connections: Some(own.clone()),
            ..args.limits.assembler_config(&shares, &cfg.ports, announce, args.resync_mid_stream)
        },
        workers,
    )
    .context("start the rebuilding threads")?;
    let (kernel, mut reader) = KernelCapture::start(&cfg)?;
    let attacher = Attacher::new(&cfg.server_addrs, cfg.filter_addrs);
    let mut capture = Capture { kernel, targets, attacher };
    capture.reconcile(&metrics);
    let (mut pod_events, mut pod_watch) = match &args.pod_selector {
        Some(labels) => {
            let node = args.node_name.as_deref().unwrap_or_default();
            let (events, watch) = start_discovery(labels, node, &metrics).await?;
            tracing::info!(pod_selector = %labels, node = %node, "following the production pods on this node");
            (Some(events), Some(watch))
        }
        None => (None, None),
    };
    let what = if shadows.is_empty() {
        "capturing; rebuilding HTTP exchanges (no --shadow: monitoring only)"
    } else {
        "capturing; mirroring to shadows"
    };
    let names: Vec<String> = shadows.iter().map(ToString::to_string).collect();
    tracing::info!(interfaces = ?cfg.interfaces, ports = ?cfg.ports, shadows = ?names, "{what}");

    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut summary_every = tokio::time::interval(args.summary_interval);
    summary_every.tick().await;
    let mut expire_every = tokio::time::interval(Duration::from_secs(1));
    let mut reconcile_every = tokio::time::interval(follow::RETRY_EVERY);
    let mut failure = None;
    let mut own_replays_seen = false;
    let mut segments = Vec::new();
    let mut shed = (!args.no_shed).then(|| Shedding::new(cfg.ring_bytes));
    let mut shed_every = tokio::time::interval(SHED_TICK);
    // Set by the summary tick; the summary goes out with the next snapshot of the shards, so that
    // their counts and the dispatcher's describe the same moment.
    let mut summary_due = false;
    let snapshot = |capture: &Capture,
                    reader: &mirror_daemon::capture::ring::RingReader,
                    rebuilt: &ShardStats,
                    dispatcher: &Dispatcher| {
        let kernel = capture.kernel.counters().unwrap_or_default();
        Snapshot {
            losses: Losses {
                kernel: Snapshot::kernel_drops(&kernel, reader.undecodable),
                assembly: rebuilt.drops.clone(),
                dispatch: dispatcher.counters.clone(),
                replay_queue_full: dispatcher.replay_losses(),
                // Counted by the record writer; the reporter fills them in.
                records: Default::default(),
            },
            kernel,
            connections: rebuilt.connections,
            buffered_bytes: rebuilt.buffered_bytes,
            requests_in_progress: rebuilt.requests_in_progress + dispatcher.requests_in_progress(),
            shed_level: rebuilt.shed_level,
            replay: dispatcher.replay_counters(),
            programs: capture.kernel.program_runs().unwrap_or_default(),
            memory: dispatcher.memory_use(),
            report_queue: dispatcher.report_queue(),
        }
    };
    tracing::info!(workers, "rebuilding on {workers} thread(s)");
    loop {
        tokio::select! {
            // Collected first and routed here: the read and `shards.next()` cannot both borrow
            // the shards.
            read = reader.read(|s| segments.push(s)) => {
                read.context("read the kernel ring buffer")?;
                segments.drain(..).for_each(|s| shards.route(s));
                shards.flush().await?;
            }
            event = shards.next() => match event? {
                ShardEvent::Items(items) => dispatcher.assembled(items.into_iter(), monotonic_now_ns()),
                ShardEvent::Snapshot(rebuilt) => {
                    own_replay_hint(&mut own_replays_seen, &rebuilt.drops, &dispatcher);
                    if std::mem::take(&mut summary_due) {
                        dispatcher.send_summary(snapshot(&capture, &reader, &rebuilt, &dispatcher));
                    }
                }
            },
            Some(done) = done_rx.recv() => dispatcher.shadow_done(done),
            _ = expire_every.tick() => {
                let now = monotonic_now_ns();
                shards.tick(now).await?;
                dispatcher.expire(now);
                own.expire(std::time::Instant::now());
            }
            _ = shed_every.tick(), if shed.is_some() => {
                if let Some(level) = shed.as_mut().and_then(|shed| shed.tick(&mut capture.kernel, &mut reader)) {
                    shards.set_shed_level(level, monotonic_now_ns()).await?;
                }
            }
            _ = summary_every.tick() => {
                summary_due = true;
                shards.request_snapshot().await?;
            }
            event = next_pod_event(&mut pod_events) => capture.pod_event(event, &metrics),
            err = watch_ended(&mut pod_watch) => {
                failure = Some(err);
                break;
            }
            _ = reconcile_every.tick() => capture.reconcile(&metrics),
            () = capture.kernel.poll_logs() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                reopen_records(&reopener, "SIGHUP");
                reload(&invocation, &mut args, &mut dispatcher, &mut capture, &metrics).await;
            }
            _ = sigusr1.recv() => reopen_records(&reopener, "SIGUSR1"),
            () = &mut deadline => break,
        }
    }

    // Stop capturing: what was captured is rebuilt, and requests on connections still open are
    // counted (`open_at_exit`; their answers will not be captured). Then replays in flight get up
    // to their timeout to finish, and those still waiting are recorded `in_flight_at_exit`: every
    // request seen ends in the books.
    reader.drain(|s| shards.route(s));
    let rebuilt = shards.finish(|items| dispatcher.assembled(items.into_iter(), monotonic_now_ns())).await?;
    let grace = tokio::time::sleep(args.mirror.shadow_timeout + Duration::from_millis(100));
    // Every live client counts, including those of shadows removed by a reload with answers due.
    tokio::pin!(grace);
    while dispatcher.shadows().iter().any(|c| c.counters.pending() > 0) {
        tokio::select! {
            Some(done) = done_rx.recv() => dispatcher.shadow_done(done),
            () = &mut grace => break,
        }
    }
    dispatcher.finish().await;
    let (tx, rx) = oneshot::channel();
    let last = snapshot(&capture, &reader, &rebuilt, &dispatcher);
    dispatcher.send_control(ReportItem::Final(Box::new(last), tx)).await;
    let _ = rx.await;
    drop(dispatcher);
    tokio::task::spawn_blocking(move || reporter.join())
        .await
        .context("reporter thread")?
        .map_err(|_| anyhow::anyhow!("the reporter thread panicked"))?
        .context("report")?;
    capture.kernel.detach();
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}
