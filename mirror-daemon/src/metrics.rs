//! Prometheus metrics, served over HTTP (127.0.0.1:9464 by default) for scraping, on the listener
//! that also answers `/verdict` ([`crate::verdict_api`]).
//!
//! Everything is a counter or a histogram labelled by shadow model and route, so that the
//! cluster-wide picture is a `sum by` away (the README's Metrics section has the queries, which
//! `tests/tests/prometheus.rs` runs on a real Prometheus).
//! Routes are capped (see [`MAX_ROUTES`]) so that a path with ids in it cannot explode the series.
use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{budget::MemoryUse, kernel::ProgramRuns, report::document::VerdictBoard};

/// Largest request body read (a webhook's payload); larger ones are cut off, not answered differently.
const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Distinct routes labelled at most; later ones are counted under `route="other"`.
pub const MAX_ROUTES: usize = 200;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComparisonLabels {
    pub model_id: String,
    pub route: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowRouteLabels {
    pub model_id: String,
    pub route: String,
}

/// Comparisons of generated text, by whether every choice's text was equal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TextLabels {
    pub model_id: String,
    pub route: String,
    /// `true` or `false`.
    pub exact: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// A part of the memory budget (`replay`, `queues`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartLabels {
    pub part: String,
}

/// A kernel program: `mirror_xdp` (receive side) or `mirror_tc` (transmit side).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// What became of requests: `outcome` `seen`, `compared`, `recorded`, `not_compared` or `lost`,
/// with the `reason` of the last two.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowReasonLabels {
    pub model_id: String,
    pub reason: String,
}

/// Latency buckets in seconds: 100 µs to 30 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0, 30.0,
    ]
    .into_iter()
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    routes: Mutex<HashSet<String>>,
    /// Exchanges rebuilt from the wire, by route.
    pub exchanges: Family<RouteLabels, Counter>,
    /// Comparisons by shadow, route and verdict.
    pub comparisons: Family<ComparisonLabels, Counter>,
    /// Exchanges not compared, by shadow and reason (sampled out, queue full...).
    pub not_compared: Family<ShadowReasonLabels, Counter>,
    /// Production latency from kernel timestamps.
    pub production_latency: Family<RouteLabels, Histogram>,
    /// Shadow latency as measured by the replay client.
    pub shadow_latency: Family<ShadowRouteLabels, Histogram>,
    /// Streamed answers: production's time to first token (from the wire) and time per output
    /// token, by route; the shadow's, by shadow and route.
    pub production_ttft: Family<RouteLabels, Histogram>,
    pub shadow_ttft: Family<ShadowRouteLabels, Histogram>,
    pub production_tpot: Family<RouteLabels, Histogram>,
    pub shadow_tpot: Family<ShadowRouteLabels, Histogram>,
    /// Comparisons of generated text, exact or not.
    pub text_comparisons: Family<TextLabels, Counter>,
    /// Prediction rows compared and label flips among them.
    pub prediction_rows: Family<ShadowRouteLabels, Counter>,
    pub label_flips: Family<ShadowRouteLabels, Counter>,
    /// Losses before comparison (kernel, reassembly, framing), by reason.
    pub drops: Family<ReasonLabels, Counter>,
    /// Record lines not written (disk full, write errors, a writer that fell behind), by reason;
    /// the comparisons themselves are counted as usual.
    pub records_dropped: Family<ReasonLabels, Counter>,
    /// Replays in flight, by shadow.
    pub replays_in_flight: Family<ShadowRouteLabels, Gauge>,
    /// The books in requests: seen, and each one's outcome (see [`crate::drops::Books`]).
    pub requests: Family<OutcomeLabels, Counter>,
    /// Requests seen whose outcome is not known yet.
    pub requests_in_progress: Gauge,
    /// The limit of replays in flight, by shadow (it follows the shadow unless fixed).
    pub replay_max_in_flight: Family<ShadowRouteLabels, Gauge>,
    /// Interfaces carrying the capture programs.
    pub attached_interfaces: Gauge,
    /// The share of connections captured (1: all; less while overload sheds connections).
    pub mirrored_share: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Production pods followed on this node (with `--pod-selector`).
    pub production_pods: Gauge,
    /// Failed lookups of a production pod's interface (each retry counts).
    pub pod_lookup_failures: Counter,
    /// With `--kernel-stats`: how long each kernel program ran, and how often (ns per packet is
    /// the ratio of their rates).
    pub kernel_program_run_seconds: Family<ProgramLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub kernel_program_runs: Family<ProgramLabels, Counter>,
    /// Bytes each part of the memory budget holds now, and its share.
    pub memory_used: Family<PartLabels, Gauge>,
    pub memory_limit: Family<PartLabels, Gauge>,
    /// Items waiting for the reporter (comparisons to make, exchanges to record).
    pub report_queue: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mirror");
        let exchanges = Family::<RouteLabels, Counter>::default();
        let comparisons = Family::<ComparisonLabels, Counter>::default();
        let not_compared = Family::<ShadowReasonLabels, Counter>::default();
        let production_latency =
            Family::<RouteLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        let shadow_latency =
            Family::<ShadowRouteLabels, Histogram>::new_with_constructor(
                || Histogram::new(latency_buckets()),
            );
        let route_histograms =
            || Family::<RouteLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        let shadow_histograms = || {
            Family::<ShadowRouteLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()))
        };
        let (production_ttft, shadow_ttft) = (route_histograms(), shadow_histograms());
        let (production_tpot, shadow_tpot) = (route_histograms(), shadow_histograms());
        let text_comparisons = Family::<TextLabels, Counter>::default();
        let prediction_rows = Family::<ShadowRouteLabels, Counter>::default();
        let label_flips = Family::<ShadowRouteLabels, Counter>::default();
        let drops = Family::<ReasonLabels, Counter>::default();
        let records_dropped = Family::<ReasonLabels, Counter>::default();
        let replays_in_flight = Family::<ShadowRouteLabels, Gauge>::default();
        let requests = Family::<OutcomeLabels, Counter>::default();
        let requests_in_progress = Gauge::default();
        let replay_max_in_flight = Family::<ShadowRouteLabels, Gauge>::default();
        let attached_interfaces = Gauge::default();
        let mirrored_share = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        mirrored_share.set(1.0);
        let production_pods = Gauge::default();
        let pod_lookup_failures = Counter::default();
        let kernel_program_run_seconds =
            Family::<ProgramLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let kernel_program_runs = Family::<ProgramLabels, Counter>::default();
        let memory_used = Family::<PartLabels, Gauge>::default();
        let memory_limit = Family::<PartLabels, Gauge>::default();
        let report_queue = Gauge::default();
        registry.register("exchanges", "HTTP exchanges rebuilt from the wire", exchanges.clone());
        registry.register("comparisons", "Shadow comparisons by verdict", comparisons.clone());
        registry.register("not_compared", "Exchanges not compared, by reason", not_compared.clone());
        registry.register(
            "production_latency_seconds",
            "Production latency: response last byte minus request last byte, from the wire",
            production_latency.clone(),
        );
        registry.register(
            "shadow_latency_seconds",
            "Shadow latency as measured by the replay client",
            shadow_latency.clone(),
        );
        registry.register(
            "production_ttft_seconds",
            "Streamed answers: first content event minus request last byte, from the wire",
            production_ttft.clone(),
        );
        registry.register(
            "shadow_ttft_seconds",
            "Streamed answers: the shadow's time to first token, measured by the replay client",
            shadow_ttft.clone(),
        );
        registry.register(
            "production_tpot_seconds",
            "Streamed answers: production's time per output token after the first",
            production_tpot.clone(),
        );
        registry.register(
            "shadow_tpot_seconds",
            "Streamed answers: the shadow's time per output token after the first",
            shadow_tpot.clone(),
        );
        registry.register(
            "text_comparisons",
            "Comparisons of generated text, by whether every choice's text was equal",
            text_comparisons.clone(),
        );
        registry.register("prediction_rows", "Prediction rows compared", prediction_rows.clone());
        registry.register("label_flips", "Prediction rows whose label differs", label_flips.clone());
        registry.register("drops", "Data lost before comparison, by reason", drops.clone());
        registry.register(
            "records_dropped",
            "Record lines not written (the comparisons were made), by reason",
            records_dropped.clone(),
        );
        registry.register(
            "replays_in_flight",
            "Replays waiting for a shadow answer",
            replays_in_flight.clone(),
        );
        registry.register(
            "requests",
            "Requests seen (outcome=seen) and what became of each: compared, recorded, not_compared or lost, by reason",
            requests.clone(),
        );
        registry.register(
            "requests_in_progress",
            "Requests seen whose outcome is not known yet",
            requests_in_progress.clone(),
        );
        registry.register(
            "replay_max_in_flight",
            "The limit of replays in flight: rate × shadow latency with headroom, unless fixed",
            replay_max_in_flight.clone(),
        );
        registry.register(
            "attached_interfaces",
            "Interfaces carrying the capture programs",
            attached_interfaces.clone(),
        );
        registry.register(
            "mirrored_share",
            "Share of connections captured: below 1 while overload sheds whole connections",
            mirrored_share.clone(),
        );
        registry.register(
            "production_pods",
            "Production pods followed on this node",
            production_pods.clone(),
        );
        registry.register(
            "pod_lookup_failures",
            "Failed lookups of the interface carrying a production pod's traffic",
            pod_lookup_failures.clone(),
        );
        registry.register(
            "kernel_program_run_seconds",
            "Time the kernel program ran, over every interface it is attached to (with --kernel-stats)",
            kernel_program_run_seconds.clone(),
        );
        registry.register(
            "kernel_program_runs",
            "Times the kernel program ran: packets, bare ACKs included (with --kernel-stats)",
            kernel_program_runs.clone(),
        );
        registry.register(
            "memory_used_bytes",
            "Bytes a part of the memory budget holds now (replay: requests and answers; queues: production exchanges waiting)",
            memory_used.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "The share of --memory-limit a part may hold",
            memory_limit.clone(),
        );
        registry.register(
            "report_queue_items",
            "Comparisons and exchanges waiting for the reporter",
            report_queue.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            routes: Mutex::new(HashSet::new()),
            exchanges,
            comparisons,
            not_compared,
            production_latency,
            shadow_latency,
            production_ttft,
            shadow_ttft,
            production_tpot,
            shadow_tpot,
            text_comparisons,
            prediction_rows,
            label_flips,
            drops,
            records_dropped,
            replays_in_flight,
            requests,
            requests_in_progress,
            replay_max_in_flight,
            attached_interfaces,
            mirrored_share,
            production_pods,
            pod_lookup_failures,
            kernel_program_run_seconds,
            kernel_program_runs,
            memory_used,
            memory_limit,
            report_queue,
        }
    }

    /// Sets the memory gauges to what each part holds now.
    pub fn memory(&self, parts: &[MemoryUse]) {
        for p in parts {
            let labels = PartLabels { part: p.part.to_string() };
            self.memory_used.get_or_create(&labels).set(p.used as i64);
            self.memory_limit.get_or_create(&labels).set(p.limit as i64);
        }
    }

    /// Advances the kernel programs' run time and run counts to the kernel's totals.
    pub fn kernel_programs(&self, programs: &[ProgramRuns]) {
        for p in programs {
            let labels = ProgramLabels { program: p.program.to_string() };
            Self::advance(&self.kernel_program_runs.get_or_create(&labels), p.runs);
            let seconds = self.kernel_program_run_seconds.get_or_create(&labels);
            let total = p.run_time_ns as f64 / 1e9;
            let current = seconds.get();
            if total > current {
                seconds.inc_by(total - current);
            }
        }
    }

    /// The label for `route`, or `other` once [`MAX_ROUTES`] routes are known.
    pub fn route_label(&self, route: &str) -> String {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.contains(route) {
            return route.to_string();
        }
        if routes.len() < MAX_ROUTES {
            routes.insert(route.to_string());
            return route.to_string();
        }
        "other".to_string()
    }

    /// Advances a counter that mirrors a monotonic total kept elsewhere.
    pub fn advance(counter: &Counter, total: u64) {
        let current = counter.get();
        if total > current {
            counter.inc_by(total - current);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Serves `GET /metrics`, `GET /healthz` and the verdict ([`crate::verdict_api`]) until the
/// process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    verdict: Arc<VerdictBoard>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (metrics, verdict) = (metrics.clone(), verdict.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (metrics, verdict) = (metrics.clone(), verdict.clone());
                    async move {
                        let (method, path) =
                            (req.method().as_str().to_string(), req.uri().path().to_string());
                        let query = req.uri().query().map(str::to_string);
                        // A webhook's payload (Flagger posts one) is read, bounded, and ignored.
                        let _ = Limited::new(req.into_body(), MAX_REQUEST_BODY).collect().await;
                        let (status, content_type, body) =
                            match crate::verdict_api::answer(&verdict, &method, &path, query.as_deref()) {
                                Some(answer) => (answer.status, answer.content_type, answer.body),
                                None => match path.as_str() {
                                    "/metrics" => (
                                        200,
                                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                        metrics.encode(),
                                    ),
                                    "/healthz" => (200, "text/plain", "ok\n".to_string()),
                                    _ => (
                                        404,
                                        "text/plain",
                                        "try /metrics, /healthz or /verdict\n".to_string(),
                                    ),
                                },
                            };
                        Response::builder()
                            .status(status)
                            .header("content-type", content_type)
                            .body(Full::new(bytes::Bytes::from(body)))
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_labelled_series_and_caps_routes() {
        let m = Metrics::new();
        let labels = ComparisonLabels {
            model_id: "model-v2".into(),
            route: "POST /infer".into(),
            verdict: "match".into(),
        };
        m.comparisons.get_or_create(&labels).inc_by(3);
        m.production_latency.get_or_create(&RouteLabels { route: "POST /infer".into() }).observe(0.002);
        Metrics::advance(&m.drops.get_or_create(&ReasonLabels { reason: "gap".into() }), 7);
        Metrics::advance(&m.drops.get_or_create(&ReasonLabels { reason: "gap".into() }), 5);
        let text = m.encode();
        assert!(
            text.contains(
                r#"mirror_comparisons_total{model_id="model-v2",route="POST /infer",verdict="match"} 3"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"mirror_drops_total{reason="gap"} 7"#), "{text}");
        assert!(text.contains("mirror_production_latency_seconds_bucket"), "{text}");
        for i in 0..MAX_ROUTES {
            assert_eq!(m.route_label(&format!("GET /items/{i}")), format!("GET /items/{i}"));
        }
        assert_eq!(m.route_label("GET /items/new"), "other");
        assert_eq!(m.route_label("GET /items/3"), "GET /items/3");
    }

    #[test]
    fn kernel_program_counters_follow_the_kernel_totals() {
        let m = Metrics::new();
        let runs = |ns, runs| ProgramRuns { program: "mirror_tc", run_time_ns: ns, runs };
        m.kernel_programs(&[runs(1_500_000_000, 1_000)]);
        m.kernel_programs(&[runs(2_500_000_000, 4_000)]);
        let text = m.encode();
        assert!(text.contains(r#"mirror_kernel_program_runs_total{program="mirror_tc"} 4000"#), "{text}");
        assert!(
            text.contains(r#"mirror_kernel_program_run_seconds_total{program="mirror_tc"} 2.5"#),
            "{text}"
        );
    }
}
