//! The daemon's config file (`--config FILE`): YAML (`.yaml`, `.yml`) or TOML (`.toml`).
//!
//! A DaemonSet or a systemd unit is easier to review with its settings in one file than in a long
//! command line, and a file can say what flags cannot: comparison rules per route. The file covers
//! everything `run` takes on the command line; a flag given on the command line overrides the
//! file's value for that setting (and only that setting), so one file can serve many nodes.
//!
//! Reading happens in two steps, so that `check-config` can list every problem at once instead of
//! stopping at the first:
//!
//! 1. [`parse`]: syntax and shape. Unknown fields are errors (`deny_unknown_fields` everywhere): a
//!    misspelt setting silently falling back to its default would be worse than refusing to start.
//! 2. [`FileConfig::resolve`]: meaning. Every value is checked and converted to the type the daemon
//!    uses; each problem names the field path (`shadows[1].endpoint`) and says how to fix it.
//!
//! Durations and sizes are strings (`"5s"`, `"32MiB"`) read by [`parse_duration`] and
//! [`parse_size`], the same parsers as the command line's.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::ValueEnum;
use serde::Deserialize;

use crate::{
    compare::CompareRules,
    kernel::XdpModeChoice,
    logging::LogFormat,
    mirror::RouteRules,
    replay::{
        sample::RoutePattern,
        target::{ModelInfo, ShadowTarget, TargetError},
    },
    report::{criteria::Criteria, sink::Compression},
};

/// Most ports (and server addresses) the kernel filter holds.
pub const MAX_PORTS: usize = 64;

/// `4096`, `64KiB`, `32MiB`, `1GiB` (K/M/G also accepted).
pub fn parse_size(text: &str) -> Result<u32, String> {
    let n = parse_size_u64(text)?;
    u32::try_from(n).map_err(|_| format!("`{}` is too large (at most 4GiB)", text.trim()))
}

/// [`parse_size`] without the 4 GiB limit (T/TiB accepted too).
pub fn parse_size_u64(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size like 32MiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        other => return Err(format!("unknown size unit `{other}`: use KiB, MiB or GiB")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("`{text}` is too large"))
}

/// The record file's rotation size: a size of at least 4KiB, or `off` (never rotate, e.g. when
/// logrotate does it).
pub fn parse_record_max_size(text: &str) -> Result<Option<u64>, String> {
    if text.trim() == "off" {
        return Ok(None);
    }
    match parse_size_u64(text)? {
        n if n < 4096 => Err(format!("`{text}`: rotate at 4KiB or more (e.g. 256MiB), or say off")),
        n => Ok(Some(n)),
    }
}

/// `10s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (e.g. 10s, 500ms, 2m)"))
}

/// `name: value`, or `off` for none.
pub fn parse_marker_header(text: &str) -> Result<Option<(String, String)>, String> {
    if text == "off" {
        return Ok(None);
    }
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok(Some((name.trim().to_ascii_lowercase(), value.trim().to_string())))
        }
        _ => Err(format!("`{text}`: expected `name: value` (e.g. `x-shadow-mirror: 1`) or off")),
    }
}

/// `IP:PORT`, or `off` for none.
pub fn parse_metrics_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| format!("`{text}`: expected IP:PORT (e.g. 127.0.0.1:9464) or off"))
}

/// The file as written. Every field is optional: what the file leaves out comes from the command
/// line or its defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub capture: CaptureSection,
    pub production_model: Option<ModelEntry>,
    pub shadows: Option<Vec<ShadowEntry>>,
    pub sampling: SamplingSection,
    pub replay: ReplaySection,
    /// Default comparison rules.
    pub compare: Option<CompareRules>,
    /// Comparison rules per route; the first matching route wins, others use `compare`.
    pub routes: Vec<RouteEntry>,
    pub criteria: Option<Criteria>,
    /// Descriptor sets of gRPC services compared as JSON (`protoc --include_imports
    /// --descriptor_set_out` or `buf build` output).
    pub proto_descriptors: Option<Vec<PathBuf>>,
    pub limits: LimitsSection,
    pub output: OutputSection,
}

/// Where and what to capture.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureSection {
    pub interfaces: Option<Vec<String>>,
    /// Wider than `u16` so that an out-of-range port gets a clear message rather than a type error.
    pub ports: Option<Vec<i64>>,
    pub server_addrs: Option<Vec<String>>,
    /// Label selector of the production pods to follow through the Kubernetes API.
    pub pod_selector: Option<String>,
    /// Pick up connections open before capture started at their next request.
    pub resync_mid_stream: Option<bool>,
    /// Shed whole connections under overload (the default); `false` is `--no-shed`.
    pub shed: Option<bool>,
    pub xdp_mode: Option<String>,
    pub ring_buffer_size: Option<String>,
    /// Keep the kernel's run-time statistics on and report the programs' ns per run.
    pub kernel_stats: Option<bool>,
}

/// A model as in the registry: `{model_id, version, is_production}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub model_id: String,
    #[serde(default = "unknown_version")]
    pub version: String,
    pub is_production: Option<bool>,
}

fn unknown_version() -> String {
    "unknown".into()
}

/// A shadow: the model plus where its deployment listens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowEntry {
    pub model_id: String,
    #[serde(default = "unknown_version")]
    pub version: String,
    pub is_production: Option<bool>,
    /// `http://HOST:PORT[/PREFIX]` for HTTP/1.x requests and/or `h2c://HOST:PORT` (`grpc://`) for
    /// HTTP/2 ones, comma-separated; or a host alone for the ports production was captured on.
    pub endpoint: String,
}

/// Which requests are replayed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingSection {
    pub percent: Option<f64>,
    pub routes: Option<Vec<String>>,
}

/// How requests are replayed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplaySection {
    pub keep_host: Option<bool>,
    pub marker_header: Option<String>,
    pub timeout: Option<String>,
    pub stream_idle_timeout: Option<String>,
    pub stream_timeout: Option<String>,
    pub max_in_flight: Option<usize>,
    pub queue: Option<usize>,
    pub max_response: Option<String>,
}

/// Comparison rules for one route pattern.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub route: String,
    #[serde(default)]
    pub compare: CompareRules,
}

/// Bounds of reassembly, framing and joining.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// All the daemon holds (`--memory-limit`), split into each part's share.
    pub memory_limit: Option<String>,
    pub max_connections: Option<usize>,
    pub max_body_size: Option<String>,
    pub max_buffered_per_connection: Option<String>,
    pub max_buffered_total: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_pending_comparisons: Option<usize>,
    /// Threads rebuilding exchanges (`--workers`).
    pub workers: Option<usize>,
}

/// Records, logs and metrics.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSection {
    pub record: Option<PathBuf>,
    /// `256MiB`, or `off`.
    pub record_max_size: Option<String>,
    pub record_keep: Option<u32>,
    /// `gzip` or `none`.
    pub record_compress: Option<String>,
    pub record_bodies: Option<bool>,
    pub redact_headers: Option<Vec<String>>,
    pub summary_interval: Option<String>,
    pub metrics_addr: Option<String>,
    pub log_format: Option<String>,
}

/// The file's settings, checked and converted; `None` where the file says nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileSettings {
    pub interfaces: Option<Vec<String>>,
    pub ports: Option<Vec<u16>>,
    pub server_addrs: Option<Vec<IpAddr>>,
    pub pod_selector: Option<String>,
    pub resync_mid_stream: Option<bool>,
    /// `capture.shed`: `false` never sheds connections (`--no-shed`).
    pub shed: Option<bool>,
    pub xdp_mode: Option<XdpModeChoice>,
    pub ring_buffer_size: Option<u32>,
    pub kernel_stats: Option<bool>,
    pub production_model: Option<ModelInfo>,
    pub shadows: Option<Vec<ShadowTarget>>,
    pub sample_percent: Option<f64>,
    pub routes: Option<Vec<RoutePattern>>,
    pub keep_host: Option<bool>,
    pub marker_header: Option<String>,
    pub shadow_timeout: Option<Duration>,
    pub shadow_stream_idle_timeout: Option<Duration>,
    pub shadow_stream_timeout: Option<Duration>,
    pub shadow_max_in_flight: Option<usize>,
    pub shadow_queue: Option<usize>,
    pub shadow_max_response: Option<u32>,
    pub compare: Option<CompareRules>,
    pub route_rules: Vec<RouteRules>,
    pub criteria: Option<Criteria>,
    pub proto_descriptors: Option<Vec<PathBuf>>,
    pub memory_limit: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_body_size: Option<u32>,
    pub max_buffered_per_connection: Option<u32>,
    pub max_buffered_total: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub max_pending_comparisons: Option<usize>,
    pub workers: Option<u16>,
    pub record: Option<PathBuf>,
    pub record_max_size: Option<Option<u64>>,
    pub record_keep: Option<u32>,
    pub record_compress: Option<Compression>,
    pub record_bodies: Option<bool>,
    pub redact_headers: Option<Vec<String>>,
    pub summary_interval: Option<Duration>,
    pub metrics_addr: Option<Option<SocketAddr>>,
    pub log_format: Option<LogFormat>,
}

/// One thing wrong with a setting: where, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `shadows[1].endpoint`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is part of the message (not a `source`), so that one line says it all.
    #[error("{path}: cannot read it: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: unknown config format: name the file .yaml, .yml or .toml")]
    Format { path: PathBuf },
    #[error("{path}{}: {message}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Parse { path: PathBuf, location: Option<(usize, usize)>, message: String },
    #[error("{path}: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

impl ConfigError {
    /// One line per problem, each starting with the file name: what `check-config` prints.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => {
                problems.iter().map(|p| format!("{}: {p}", path.display())).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// The file formats understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    /// From the file name's extension.
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses `text` (syntax and shape only). `path` is used in messages.
pub fn parse(path: &Path, text: &str, format: Format) -> Result<FileConfig, ConfigError> {
    let parse_error = |location, message: String| ConfigError::Parse { path: path.into(), location, message };
    match format {
        Format::Yaml => {
            // An empty document is an empty config, not an error.
            if text.trim().is_empty() {
                return Ok(FileConfig::default());
            }
            serde_norway::from_str(text).map_err(|e| {
                let location = e.location().map(|l| (l.line(), l.column()));
                let message = e.to_string();
                // The location is reported separately, in the usual FILE:LINE:COLUMN form.
                let message = match message.rfind(" at line ") {
                    Some(i) if location.is_some() => message[..i].to_string(),
                    _ => message,
                };
                parse_error(location, message)
            })
        }
        Format::Toml => toml::from_str(text).map_err(|e| {
            let location = e.span().map(|s| line_column(text, s.start));
            parse_error(location, e.message().trim().to_string())
        }),
    }
}

/// Reads, parses and checks a config file.
pub fn load(path: &Path) -> Result<FileSettings, ConfigError> {
    let format = Format::of(path).ok_or_else(|| ConfigError::Format { path: path.into() })?;
    let text =
        std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.into(), error })?;
    parse(path, &text, format)?
        .resolve()
        .map_err(|problems| ConfigError::Invalid { path: path.into(), problems })
}

/// Collects problems while converting.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { field: field.into(), message: message.into() });
    }

    /// Converts `value` with `parse`, recording a problem (and returning `None`) on failure.
    fn convert<T, U>(
        &mut self,
        field: &str,
        value: Option<T>,
        parse: impl FnOnce(T) -> Result<U, String>,
    ) -> Option<U> {
        match parse(value?) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(field, message);
                None
            }
        }
    }

    fn positive_duration(&mut self, field: &str, value: Option<&String>) -> Option<Duration> {
        self.convert(field, value, |s| match parse_duration(s)? {
            d if d.is_zero() => Err(format!("`{s}`: must be longer than 0 (e.g. 5s)")),
            d => Ok(d),
        })
    }

    fn size(&mut self, field: &str, value: Option<&String>) -> Option<u32> {
        self.convert(field, value, |s| match parse_size(s)? {
            0 => Err(format!("`{s}`: must be larger than 0 (e.g. 64MiB)")),
            n => Ok(n),
        })
    }

    fn at_least_one(&mut self, field: &str, value: Option<usize>) -> Option<usize> {
        self.convert(field, value, |n| if n == 0 { Err("must be at least 1".to_string()) } else { Ok(n) })
    }

    fn rules(&mut self, field: &str, rules: &CompareRules) {
        for (name, value) in [("abs_tolerance", rules.abs_tolerance), ("rel_tolerance", rules.rel_tolerance)]
        {
            if !(value.is_finite() && value >= 0.0) {
                self.problem(
                    format!("{field}.{name}"),
                    format!("{value} is not a tolerance: use a number ≥ 0 (0 = exact)"),
                );
            }
        }
        if rules.max_diffs == 0 {
            self.problem(format!("{field}.max_diffs"), "must be at least 1 (the default is 10)");
        }
    }

    fn route(&mut self, field: &str, text: &str) -> Option<RoutePattern> {
        self.convert(field, Some(text), RoutePattern::parse)
    }
}

fn model(
    c: &mut Checker,
    field: &str,
    id: &str,
    version: &str,
    production: Option<bool>,
    want: bool,
) -> ModelInfo {
    if id.trim().is_empty() {
        c.problem(format!("{field}.model_id"), "is empty: name the model as in your registry, e.g. model-v2");
    }
    if production.is_some_and(|p| p != want) {
        c.problem(
            format!("{field}.is_production"),
            if want {
                "is false: the production model has is_production: true (or leave it out)"
            } else {
                "is true: a shadow is never the production model; set is_production: false (or leave it out)"
            },
        );
    }
    ModelInfo { model_id: id.to_string(), version: version.to_string(), is_production: want }
}

fn endpoint_problem(endpoint: &str, err: &TargetError) -> String {
    match err {
        TargetError::Scheme(_) => format!(
            "\"{endpoint}\": only http:// and h2c:// (grpc://) endpoints are supported: replay inside the cluster, next to the model (e.g. http://model-v2.default.svc:8080,h2c://model-v2.default.svc:8081)"
        ),
        TargetError::NoPort(_) => format!(
            "\"{endpoint}\": the endpoint needs a port, e.g. http://model-v2.default.svc:8080 (or give the host alone, model-v2.default.svc, to use the ports production was captured on)"
        ),
        TargetError::Syntax(_) => format!(
            "\"{endpoint}\": expected http://HOST:PORT[/PREFIX] and/or h2c://HOST:PORT, comma-separated, or a host alone, e.g. http://10.0.0.7:8080,h2c://10.0.0.7:8081"
        ),
        TargetError::Duplicate(_) => {
            format!("\"{endpoint}\": two endpoints for one protocol; give at most one http:// and one h2c://")
        }
    }
}

/// Reads a descriptor set and checks that it decodes with the built-in definitions; the error
/// says what to do.
pub fn check_descriptor_set(path: &Path) -> Result<crate::compare::Schemas, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {}: {e}: give a file written by `protoc --include_imports --descriptor_set_out=FILE` or `buf build -o FILE`",
            path.display()
        )
    })?;
    crate::compare::Schemas::with_descriptor_sets([bytes.as_slice()])
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A light check of a Kubernetes label selector (the API server has the last word): not empty, no
/// empty requirement, and each one a key with an operator (`k=v`, `k==v`, `k!=v`, `k in (a,b)`,
/// `k notin (a)`, `k`, `!k`).
pub fn check_label_selector(text: &str) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. app=ml-inference,version=v1";
    if text.trim().is_empty() {
        return Err(format!(
            "is empty: it would select every pod on the node; give the production pods' labels, {EXAMPLE}"
        ));
    }
    // Commas inside `in (...)` sets do not separate requirements.
    let mut depth = 0i32;
    let mut requirement = String::new();
    let mut requirements = Vec::new();
    for ch in text.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                requirements.push(std::mem::take(&mut requirement));
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("`{text}`: unbalanced parentheses ({EXAMPLE})"));
        }
        requirement.push(ch);
    }
    if depth != 0 {
        return Err(format!("`{text}`: unbalanced parentheses ({EXAMPLE})"));
    }
    requirements.push(requirement);
    for r in &requirements {
        let r = r.trim();
        let key = r.trim_start_matches('!').split(['=', '!', ' ']).next().unwrap_or("").trim();
        if r.is_empty() || key.is_empty() {
            return Err(format!(
                "`{text}`: an empty requirement; separate `key=value` pairs with commas ({EXAMPLE})"
            ));
        }
    }
    Ok(())
}

impl FileConfig {
    /// Checks every value and converts it; on failure, every problem found.
    pub fn resolve(&self) -> Result<FileSettings, Vec<Problem>> {
        let mut c = Checker::default();
        let mut s = FileSettings::default();

        let cap = &self.capture;
        if let Some(interfaces) = &cap.interfaces {
            if interfaces.is_empty() && cap.pod_selector.is_none() {
                c.problem(
                    "capture.interfaces",
                    "is empty: name at least one interface, e.g. [eth0], or follow the production pods with capture.pod_selector",
                );
            }
            for (i, name) in interfaces.iter().enumerate() {
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                    c.problem(
                        format!("capture.interfaces[{i}]"),
                        format!("\"{name}\" is not an interface name (1–15 characters, no '/' or space)"),
                    );
                }
            }
            s.interfaces = Some(interfaces.clone());
        }
        if let Some(ports) = &cap.ports {
            if ports.is_empty() {
                c.problem("capture.ports", "is empty: name the model server's port, e.g. [8080]");
            }
            if ports.len() > MAX_PORTS {
                c.problem(
                    "capture.ports",
                    format!("{} ports: at most {MAX_PORTS} are supported", ports.len()),
                );
            }
            let mut good = Vec::new();
            for (i, &port) in ports.iter().enumerate() {
                match u16::try_from(port) {
                    Ok(p) if p > 0 => good.push(p),
                    _ => {
                        c.problem(format!("capture.ports[{i}]"), format!("{port} is not a port: use 1–65535"))
                    }
                }
            }
            s.ports = Some(good);
        }
        if let Some(addrs) = &cap.server_addrs {
            if addrs.len() > MAX_PORTS {
                c.problem(
                    "capture.server_addrs",
                    format!("{} addresses: at most {MAX_PORTS} are supported", addrs.len()),
                );
            }
            let parsed = addrs
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    c.convert(&format!("capture.server_addrs[{i}]"), Some(a), |a| {
                        a.parse::<IpAddr>()
                            .map_err(|_| format!("\"{a}\" is not an IP address (e.g. 10.0.0.7 or fd00::7)"))
                    })
                })
                .collect();
            s.server_addrs = Some(parsed);
        }
        s.pod_selector = c.convert("capture.pod_selector", cap.pod_selector.as_ref(), |labels| {
            check_label_selector(labels).map(|()| labels.trim().to_string())
        });
        s.resync_mid_stream = cap.resync_mid_stream;
        s.kernel_stats = cap.kernel_stats;
        s.shed = cap.shed;
        s.xdp_mode = c.convert("capture.xdp_mode", cap.xdp_mode.as_ref(), |m| {
            XdpModeChoice::from_str(m, true).map_err(|_| format!("\"{m}\": use auto, driver or generic"))
        });
        s.ring_buffer_size = c.convert("capture.ring_buffer_size", cap.ring_buffer_size.as_ref(), |t| {
            let n = parse_size(t)?;
            if n.is_power_of_two() && n >= 4096 {
                Ok(n)
            } else {
                Err(format!("`{t}`: must be a power of two of at least 4KiB (e.g. 32MiB)"))
            }
        });

        if let Some(m) = &self.production_model {
            s.production_model =
                Some(model(&mut c, "production_model", &m.model_id, &m.version, m.is_production, true));
        }
        if let Some(shadows) = &self.shadows {
            let mut targets: Vec<ShadowTarget> = Vec::new();
            for (i, entry) in shadows.iter().enumerate() {
                let field = format!("shadows[{i}]");
                let info = model(&mut c, &field, &entry.model_id, &entry.version, entry.is_production, false);
                if targets.iter().any(|t| t.model.model_id == entry.model_id) {
                    c.problem(
                        format!("{field}.model_id"),
                        format!("\"{}\" is listed twice: give each shadow its own model_id", entry.model_id),
                    );
                }
                match ShadowTarget::parse(&entry.endpoint) {
                    Ok(mut target) => {
                        target.model = info;
                        targets.push(target);
                    }
                    Err(err) => {
                        c.problem(format!("{field}.endpoint"), endpoint_problem(&entry.endpoint, &err))
                    }
                }
            }
            s.shadows = Some(targets);
        }

        s.sample_percent = c.convert("sampling.percent", self.sampling.percent, |p| {
            if (0.0..=100.0).contains(&p) {
                Ok(p)
            } else {
                Err(format!("{p} is not a percentage: use 0–100 (100 = every request)"))
            }
        });
        if let Some(routes) = &self.sampling.routes {
            s.routes = Some(
                routes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| c.route(&format!("sampling.routes[{i}]"), r))
                    .collect(),
            );
        }

        let replay = &self.replay;
        s.keep_host = replay.keep_host;
        s.marker_header = c.convert("replay.marker_header", replay.marker_header.as_ref(), |m| {
            parse_marker_header(m).map(|_| m.clone())
        });
        s.shadow_timeout = c.positive_duration("replay.timeout", replay.timeout.as_ref());
        s.shadow_stream_idle_timeout =
            c.positive_duration("replay.stream_idle_timeout", replay.stream_idle_timeout.as_ref());
        s.shadow_stream_timeout =
            c.positive_duration("replay.stream_timeout", replay.stream_timeout.as_ref());
        s.shadow_max_in_flight = c.at_least_one("replay.max_in_flight", replay.max_in_flight);
        s.shadow_queue = c.at_least_one("replay.queue", replay.queue);
        s.shadow_max_response = c.size("replay.max_response", replay.max_response.as_ref());

        if let Some(rules) = &self.compare {
            c.rules("compare", rules);
            s.compare = Some(rules.clone());
        }
        for (i, entry) in self.routes.iter().enumerate() {
            c.rules(&format!("routes[{i}].compare"), &entry.compare);
            if let Some(pattern) = c.route(&format!("routes[{i}].route"), &entry.route) {
                s.route_rules.push(RouteRules { pattern, rules: entry.compare.clone() });
            }
        }
        if let Some(criteria) = &self.criteria {
            if let Err(err) = criteria.validate() {
                c.problem(format!("criteria.{}", err.field), format!("{}: {}", err.value, err.expected));
            }
            s.criteria = Some(criteria.clone());
        }
        if let Some(paths) = &self.proto_descriptors {
            for (i, path) in paths.iter().enumerate() {
                if let Err(message) = check_descriptor_set(path) {
                    c.problem(format!("proto_descriptors[{i}]"), message);
                }
            }
            s.proto_descriptors = Some(paths.clone());
        }

        let limits = &self.limits;
        s.memory_limit =
            c.convert("limits.memory_limit", limits.memory_limit.as_ref(), |t| match parse_size_u64(t)? {
                n if n < crate::budget::MIN_MEMORY_LIMIT => Err(format!(
                    "`{t}`: the daemon needs at least {} (e.g. 256MiB)",
                    crate::budget::Size(crate::budget::MIN_MEMORY_LIMIT)
                )),
                n => Ok(n),
            });
        s.max_connections = c.at_least_one("limits.max_connections", limits.max_connections);
        s.max_body_size = c.size("limits.max_body_size", limits.max_body_size.as_ref());
        s.max_buffered_per_connection =
            c.size("limits.max_buffered_per_connection", limits.max_buffered_per_connection.as_ref());
        s.max_buffered_total = c.size("limits.max_buffered_total", limits.max_buffered_total.as_ref());
        s.idle_timeout = c.positive_duration("limits.idle_timeout", limits.idle_timeout.as_ref());
        s.max_pending_comparisons =
            c.at_least_one("limits.max_pending_comparisons", limits.max_pending_comparisons);
        s.workers = c.convert("limits.workers", limits.workers, |n| match u16::try_from(n) {
            Ok(n @ 1..=256) => Ok(n),
            _ => Err(format!("{n}: use 1 to 256 threads (default: the cores the daemon may use, at most 4)")),
        });

        let out = &self.output;
        s.record = out.record.clone();
        s.record_max_size =
            c.convert("output.record_max_size", out.record_max_size.as_ref(), |t| parse_record_max_size(t));
        s.record_keep = out.record_keep;
        s.record_compress = c.convert("output.record_compress", out.record_compress.as_ref(), |t| {
            Compression::from_str(t, true).map_err(|_| format!("\"{t}\": use gzip or none"))
        });
        s.record_bodies = out.record_bodies;
        s.redact_headers = out.redact_headers.clone();
        s.summary_interval = c.positive_duration("output.summary_interval", out.summary_interval.as_ref());
        s.metrics_addr =
            c.convert("output.metrics_addr", out.metrics_addr.as_ref(), |a| parse_metrics_addr(a));
        s.log_format = c.convert("output.log_format", out.log_format.as_ref(), |f| {
            LogFormat::from_str(f, true).map_err(|_| format!("\"{f}\": use auto, journald, json or pretty"))
        });

        if c.problems.is_empty() { Ok(s) } else { Err(c.problems) }
    }
}

impl FileSettings {
    /// Problems that make the file unusable on its own (without command-line flags): what
    /// `check-config` requires on top of [`FileConfig::resolve`].
    pub fn standalone_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.interfaces.is_none() && self.pod_selector.is_none() {
            problems.push(Problem {
                field: "capture.interfaces".into(),
                message: "missing: name at least one interface to capture on, e.g. [eth0], or follow the \
                          production pods with capture.pod_selector"
                    .into(),
            });
        }
        if self.ports.is_none() {
            problems.push(Problem {
                field: "capture.ports".into(),
                message: "missing: name the model server's port, e.g. [8080]".into(),
            });
        }
        let explicit = crate::budget::Explicit {
            ring_buffer: self.ring_buffer_size.map(u64::from),
            buffered_total: self.max_buffered_total.map(u64::from),
            max_body: self.max_body_size.map(u64::from),
            max_response: self.shadow_max_response.map(u64::from),
        };
        let total = self.memory_limit.unwrap_or(crate::budget::DEFAULT_MEMORY_LIMIT);
        if let Err(err) = crate::budget::Shares::with(total, explicit) {
            problems.push(Problem { field: "limits.memory_limit".into(), message: err.to_string() });
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert!(parse_size("5GiB").is_err());
        assert!(parse_size("12 parsecs").unwrap_err().contains("unit"));
        assert!(parse_size("MiB").is_err());
        assert_eq!(parse_size_u64("5GiB"), Ok(5 << 30));
        assert_eq!(parse_record_max_size("off"), Ok(None));
        assert_eq!(parse_record_max_size("256MiB"), Ok(Some(256 << 20)));
        assert!(parse_record_max_size("100").unwrap_err().contains("4KiB"));
    }

    #[test]
    fn durations_and_headers() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_marker_header("off"), Ok(None));
        assert_eq!(parse_marker_header("X-A: 1"), Ok(Some(("x-a".into(), "1".into()))));
        assert!(parse_marker_header("x-a").is_err());
    }

    #[test]
    fn line_columns_are_one_based() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
