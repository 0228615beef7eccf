//! The cluster view on a real Prometheus. Two "nodes" (each a client → production → shadow scene in
//! its own namespaces, with its own daemon writing `--record`) mirror to the same candidate
//! `model-v2` with different traffic: node A's shadow flips the label of a share of rows, node B's
//! shadow is down for part of the traffic. A Prometheus process (Debian's package, run with its own
//! config, storage and listen address in a monitoring namespace; any packaged service is never
//! touched) scrapes both daemons every second. Then every PromQL query of the README's Metrics
//! section, read from the README itself, is evaluated through the HTTP API and checked against
//! `mirror-daemon report` over both nodes' records; the recording rules of deploy/prometheus/ are
//! loaded and their series checked against the same queries, and promtool checks and unit-tests
//! them.
//!
//! Each query is evaluated twice: as written (`rate(...[10m])`, after the traffic), and with every
//! `rate(S[10m])` / `increase(S[10m])` replaced by `last_over_time(S[10m])`, the counters' totals
//! since the daemons started — the same population `report` reads from the records. Tolerances,
//! and why:
//!
//! - Totals of counters, and ratios of them, are the same integers `report` counts: equal to 1e-12.
//! - `rate`/`increase` extrapolate: each counter series `S` comes out as `S × (1 + e)`, where `e`
//!   depends on when the series was born and sampled. The test measures `e` for every series a
//!   query reads (`increase(S[10m]) / S`, from Prometheus), and a ratio of sums of such series must
//!   lie within `[R (1+e_min)/(1+e_max), R (1+e_max)/(1+e_min)]` of the exact ratio `R`.
//! - `histogram_quantile` interpolates inside the bucket where the quantile falls: `report`'s p99
//!   (exact to 1%, and records round to 1 µs) must lie in the bucket of Prometheus's estimate, and
//!   the p99 ratio between the ratios of those buckets' bounds.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mirror_tests::{
    ChildGuard,
    client::{connect, post_json},
    daemon::Daemon,
    gate::kernel_tests_allowed,
    llm,
    model_server::{self, ServerOptions, flips, infer_request},
    netns::{Netns, Trio, ip},
    read_records, scratch_file,
};
use serde_json::Value;

const PORT: u16 = 8080;
const METRICS_PORT: u16 = 9464;
const PROMETHEUS: &str = "127.0.0.1:19090";
const PATH: &str = "/v2/models/demo/infer";
/// Requests per node after the warm-up, paced over about 8 s.
const REQUESTS: usize = 400;
const PACE: Duration = Duration::from_millis(20);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn rules_file() -> PathBuf {
    workspace().join("deploy/prometheus/shadow-mirror.rules.yml")
}

fn promtool() -> PathBuf {
    let path = PathBuf::from("/usr/bin/promtool");
    assert!(path.exists(), "promtool is missing: apt-get install prometheus (cargo xtask setup)");
    path
}

// ---------------------------------------------------------------------------------------------
// The README's queries.

/// One query of the README's Metrics section: the comment line above it and the query.
#[derive(Debug, Clone)]
struct Query {
    /// The comment's words before the first `:` or `,` (`agreement`, `p99 latency ratio`...).
    key: String,
    promql: String,
}

/// The indented blocks of `### Metrics`: `# comment` lines, each followed by a query over one or
/// more lines.
fn readme_queries() -> Vec<Query> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("read README.md");
    let start = readme.find("\n### Metrics\n").expect("README has a ### Metrics section");
    let section = &readme[start + 1..];
    let end = section[4..].find("\n#").map_or(section.len(), |i| i + 4);
    let mut queries: Vec<Query> = Vec::new();
    for line in section[..end].lines().filter_map(|l| l.strip_prefix("    ")) {
        if let Some(comment) = line.strip_prefix("# ") {
            let key = comment.split([':', ',']).next().unwrap_or_default().trim().to_string();
            queries.push(Query { key, promql: String::new() });
        } else if let Some(query) = queries.last_mut() {
            query.promql.push(' ');
            query.promql.push_str(line.trim());
        } else {
            panic!("README Metrics: a query line before any `# comment` line: {line}");
        }
    }
    assert!(queries.iter().all(|q| !q.promql.trim().is_empty()), "a comment without a query: {queries:?}");
    queries.iter_mut().for_each(|q| q.promql = q.promql.trim().to_string());
    queries
}

/// Every `rate(S[10m])` and `increase(S[10m])` of `promql`, as (the call, S).
fn range_calls(promql: &str) -> Vec<(String, String)> {
    let mut calls = Vec::new();
    let mut rest = promql;
    while let Some(at) = ["rate(", "increase("].iter().filter_map(|f| rest.find(f).map(|i| (i, *f))).min() {
        let (i, function) = at;
        let after = &rest[i + function.len()..];
        let close = after.find("[10m])").unwrap_or_else(|| panic!("{function} without [10m]: {promql}"));
        calls.push((
            rest[i..i + function.len() + close + "[10m])".len()].to_string(),
            after[..close].to_string(),
        ));
        rest = &after[close..];
    }
    calls
}

/// `promql` over the counters' totals: every `rate(S[10m])` and `increase(S[10m])` becomes
/// `last_over_time(S[10m])`, the last value scraped (a plain `S` would find nothing once the
/// daemons have stopped and their series gone stale).
fn over_totals(promql: &str) -> String {
    range_calls(promql).into_iter().fold(promql.to_string(), |q, (call, series)| {
        q.replace(&call, &format!("last_over_time({series}[10m])"))
    })
}

// ---------------------------------------------------------------------------------------------
// Prometheus.

/// A Prometheus server of our own in `ns`, killed (and its storage removed) on drop.
struct Prometheus<'a> {
    ns: &'a Netns,
    process: Option<ChildGuard>,
    storage: PathBuf,
}

impl<'a> Prometheus<'a> {
    fn start(ns: &'a Netns, targets: &[SocketAddr]) -> Self {
        let config = scratch_file("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: shadow-mirror\n    static_configs:\n      - targets: [{}]\n",
                rules_file().display(),
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let storage = scratch_file("prometheus-data");
        let _ = std::fs::remove_dir_all(&storage);
        let process = ChildGuard(
            ns.command("/usr/bin/prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", storage.display()))
                .arg(format!("--web.listen-address={PROMETHEUS}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("start prometheus (apt-get install prometheus, or cargo xtask setup)"),
        );
        let prometheus = Self { ns, process: Some(process), storage };
        let deadline = Instant::now() + Duration::from_secs(30);
        while prometheus.get("/-/ready", &[]).is_err() {
            assert!(Instant::now() < deadline, "prometheus did not become ready in 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// `GET path?params` on the API with curl, run in the monitoring namespace.
    fn get(&self, path: &str, params: &[(&str, String)]) -> Result<String, String> {
        let mut cmd = self.ns.command("curl");
        cmd.args(["-sS", "--fail-with-body", "--max-time", "10", "--get"]);
        for (name, value) in params {
            cmd.arg("--data-urlencode").arg(format!("{name}={value}"));
        }
        let out = cmd.arg(format!("http://{PROMETHEUS}{path}")).output().expect("run curl");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(body)
        } else {
            Err(format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// An instant query at `time` (Unix seconds): the result vector.
    fn query(&self, promql: &str, time: f64) -> Vec<Sample> {
        let body = self
            .get("/api/v1/query", &[("query", promql.to_string()), ("time", format!("{time:.3}"))])
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let answer: Value = serde_json::from_str(&body).expect("API answer is JSON");
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        assert_eq!(answer["data"]["resultType"], "vector", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|s| Sample {
                labels: s["metric"]
                    .as_object()
                    .expect("metric")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect(),
                value: s["value"][1].as_str().expect("value").parse().expect("a number"),
            })
            .collect()
    }

    /// The one sample of `promql` whose labels include `labels`.
    fn one(&self, promql: &str, time: f64, labels: &[(&str, &str)]) -> f64 {
        let samples = self.query(promql, time);
        let found: Vec<&Sample> = samples
            .iter()
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert_eq!(found.len(), 1, "{promql} {labels:?}: {samples:?}");
        found[0].value
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        // Killed (and waited for) first, then its storage goes.
        self.process = None;
        let _ = std::fs::remove_dir_all(&self.storage);
    }
}

#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// The scene.

/// One node: client, production (with the daemon) and shadow namespaces, plus a link from
/// production to the monitoring namespace that the daemon's metrics listener is bound to.
struct Node {
    name: &'static str,
    trio: Trio,
    _production: ChildGuard,
    shadow: Option<ChildGuard>,
    shadow_options: ServerOptions,
    daemon: Option<Daemon>,
    record: PathBuf,
    metrics: SocketAddr,
}

impl Node {
    fn new(name: &'static str, monitor: &Netns, subnet: u8, shadow_options: ServerOptions) -> Self {
        let trio = Trio::new();
        let metrics = monitor_link(&trio, monitor, subnet);
        let production_options = ServerOptions { version: "1".into(), disagree_percent: 0.0, delay_ms: 1 };
        let production = model_server::start_test_build(
            &trio.production,
            &[SocketAddr::from((trio.production_addr, PORT))],
            &production_options,
        );
        let mut node = Self {
            name,
            trio,
            _production: production,
            shadow: None,
            shadow_options,
            daemon: None,
            record: scratch_file(&format!("prometheus-{name}.jsonl")),
            metrics,
        };
        node.shadow_up();
        let shadow = format!("model-v2@2=http://{}:{PORT}", node.trio.shadow_addr);
        let metrics_addr = metrics.to_string();
        let args = [
            "run",
            "-i",
            &node.trio.production_if,
            "-p",
            "8080",
            "--shadow",
            &shadow,
            "--production-model",
            "model-v1@1",
            "--record",
            node.record.to_str().expect("utf-8 path"),
            "--metrics-addr",
            &metrics_addr,
        ];
        node.daemon = Some(Daemon::start(&node.trio.production, &args));
        node
    }

    fn shadow_up(&mut self) {
        self.shadow = Some(model_server::start_test_build(
            &self.trio.shadow,
            &[SocketAddr::from((self.trio.shadow_addr, PORT))],
            &self.shadow_options,
        ));
    }

    fn shadow_down(&mut self) {
        self.shadow = None;
    }

    fn drive(&self, bodies: Vec<Vec<u8>>, pace: Duration) {
        drive(&self.trio, self.name, bodies, pace);
    }

    fn comparison_records(&self) -> usize {
        read_records(&self.record).iter().filter(|r| r.get("verdict").is_some()).count()
    }

    fn instance(&self) -> String {
        self.metrics.to_string()
    }
}

/// A link from production's namespace to the monitoring one: 198.18.<subnet>.1 on the monitoring
/// side, .2 on the node, where the daemon's metrics listener goes (the returned address).
fn monitor_link(trio: &Trio, monitor: &Netns, subnet: u8) -> SocketAddr {
    let (node_if, monitor_if) = (format!("smn{subnet}"), format!("smm{subnet}"));
    ip(&[
        "link",
        "add",
        &node_if,
        "netns",
        &trio.production.name,
        "type",
        "veth",
        "peer",
        "name",
        &monitor_if,
        "netns",
        &monitor.name,
    ]);
    for (ns, ifname, host) in [(&trio.production, &node_if, 2), (monitor, &monitor_if, 1)] {
        ip(&["-n", &ns.name, "addr", "add", &format!("198.18.{subnet}.{host}/24"), "dev", ifname]);
        ip(&["-n", &ns.name, "link", "set", ifname, "up"]);
    }
    SocketAddr::from((Ipv4Addr::new(198, 18, subnet, 2), METRICS_PORT))
}

/// Sends `bodies` to `trio`'s production over 4 keep-alive connections, `pace` apart; every answer
/// must be a 200.
fn drive(trio: &Trio, name: &str, bodies: Vec<Vec<u8>>, pace: Duration) {
    let server = SocketAddr::from((trio.production_addr, PORT));
    let statuses: Vec<u16> = trio.client.run(move || {
        let mut conns: Vec<_> = (0..4).map(|_| connect(server)).collect();
        let host = server.to_string();
        bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                std::thread::sleep(pace);
                post_json(&mut conns[i % 4], &host, PATH, b).0
            })
            .collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{name}: production answered {statuses:?}");
}

/// Request bodies of 1–4 rows of 4 features, `seed` making each node's traffic its own.
fn bodies(seed: usize, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let i = i + seed * 100_000;
            let rows: Vec<Vec<f64>> = (0..1 + i % 4)
                .map(|r| (0..4).map(|f| (((i * 31 + r * 7 + f * 13) % 97) as f64 - 48.0) / 10.0).collect())
                .collect();
            infer_request(&format!("req-{i}"), &rows)
        })
        .collect()
}

/// Whether the shadow flips at least one row of `body` (so the comparison is a mismatch).
fn flipped(body: &[u8], percent: f64) -> bool {
    let v: Value = serde_json::from_slice(body).expect("JSON body");
    let data: Vec<f64> =
        v["inputs"][0]["data"].as_array().expect("data").iter().filter_map(Value::as_f64).collect();
    data.chunks(4).any(|row| flips(row, percent))
}

/// `report --format json` over `files`: the verdict document's part about `model-v2`.
fn report(files: &[&Path]) -> Value {
    let out = Command::new(mirror_tests::daemon::binary())
        .arg("report")
        .args(["--format", "json"])
        .args(files)
        .output()
        .expect("run mirror-daemon report");
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report --format json: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let shadows = json["shadows"].as_array().expect("shadows");
    assert_eq!(shadows.len(), 1, "one shadow: {json}");
    assert_eq!(shadows[0]["model_id"], "model-v2");
    shadows[0].clone()
}

fn number(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer).and_then(Value::as_f64).unwrap_or_else(|| panic!("report has no {pointer}: {v}"))
}

// ---------------------------------------------------------------------------------------------
// Tolerances.

/// The smallest and largest `increase(S[10m]) / S - 1` over the series every range call of
/// `promql` reads (on `instance`, if given): how far Prometheus's extrapolation moved each counter
/// from its exact total.
fn extrapolation(prometheus: &Prometheus, promql: &str, at: f64, instance: Option<&str>) -> (f64, f64) {
    let mut factors = Vec::new();
    for (_, series) in range_calls(promql) {
        for s in
            prometheus.query(&format!("increase({series}[10m]) / (last_over_time({series}[10m]) > 0)"), at)
        {
            if instance.is_none_or(|i| s.labels.get("instance").map(String::as_str) == Some(i)) {
                factors.push(s.value - 1.0);
            }
        }
    }
    assert!(!factors.is_empty(), "no counter behind {promql}");
    let min = factors.iter().copied().fold(f64::INFINITY, f64::min);
    let max = factors.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// The histogram bucket (lower, upper] in seconds that holds `value`.
fn bucket(bounds: &[f64], value: f64) -> (f64, f64) {
    let upper = bounds.iter().copied().find(|b| value <= *b).unwrap_or(f64::INFINITY);
    let lower = bounds.iter().copied().rfind(|b| *b < value).unwrap_or(0.0);
    (lower, upper)
}

/// A row of the table printed at the end.
struct Row {
    query: String,
    scope: String,
    as_written: f64,
    totals: f64,
    report: f64,
    allowed: String,
}

fn check_ratio(
    rows: &mut Vec<Row>,
    q: &Query,
    scope: &str,
    written: f64,
    totals: f64,
    exact: f64,
    e: (f64, f64),
) {
    assert!(
        (totals - exact).abs() <= 1e-12,
        "{}: {scope} over the totals is {totals}, report {exact}",
        q.key
    );
    let (low, high) = (exact * (1.0 + e.0) / (1.0 + e.1), exact * (1.0 + e.1) / (1.0 + e.0));
    assert!(
        low - 1e-12 <= written && written <= high + 1e-12,
        "{}: {scope} is {written}, outside [{low}, {high}] around report's {exact} (extrapolation {e:?})",
        q.key
    );
    rows.push(Row {
        query: q.key.clone(),
        scope: scope.into(),
        as_written: written,
        totals,
        report: exact,
        allowed: format!("[{low:.4}, {high:.4}]"),
    });
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_rules_pass_promtool() {
    let check =
        Command::new(promtool()).args(["check", "rules"]).arg(rules_file()).output().expect("promtool");
    assert!(check.status.success(), "promtool check rules: {check:?}");
    let tests = workspace().join("deploy/prometheus/shadow-mirror.rules.test.yml");
    let test = Command::new(promtool())
        .current_dir(tests.parent().expect("dir"))
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .expect("promtool");
    assert!(test.status.success(), "promtool test rules: {}", String::from_utf8_lossy(&test.stdout));
    // The same check fails on a rule that is wrong, so a pass means something.
    let broken = scratch_file("broken.rules.yml");
    std::fs::write(
        &broken,
        "groups:\n  - name: x\n    rules:\n      - record: a:b\n        expr: sum(rate(x[5m])\n",
    )
    .expect("write");
    let out = Command::new(promtool()).args(["check", "rules"]).arg(&broken).output().expect("promtool");
    assert!(!out.status.success(), "promtool accepted a broken rule: {out:?}");
}

/// The recorded series of deploy/prometheus/ are the README's queries, word for word (but the
/// ratio, which divides two recorded series): one place to change, checked here.
#[test]
fn the_recording_rules_are_the_readme_queries() {
    let rules: Value = serde_norway::from_str(&std::fs::read_to_string(rules_file()).expect("read rules"))
        .expect("rules are YAML");
    let normal =
        |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").replace("( ", "(").replace(" )", ")");
    let readme: BTreeMap<String, String> =
        readme_queries().into_iter().map(|q| (q.key, normal(&q.promql))).collect();
    let recorded: BTreeMap<String, String> = rules["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (r["record"].as_str().expect("record").to_string(), normal(r["expr"].as_str().expect("expr")))
        })
        .collect();
    for (key, record) in [
        ("agreement", "model_id:mirror_agreement:ratio_rate10m"),
        ("comparisons", "model_id:mirror_comparisons:increase10m"),
        ("shadow failure rate", "model_id:mirror_shadow_failures:ratio_rate10m"),
        ("shadow p99 latency", "model_id:mirror_shadow_latency_seconds:p99_rate10m"),
        ("production p99 latency", "mirror_production_latency_seconds:p99_rate10m"),
    ] {
        assert!(recorded.contains_key(record), "no rule records {record}: {recorded:?}");
        assert_eq!(readme.get(key), recorded.get(record), "README `{key}` and rule {record} differ");
    }
    assert!(recorded.contains_key("model_id:mirror_p99_latency:ratio_rate10m"), "{recorded:?}");
}

#[test]
fn readme_queries_match_report_on_a_real_prometheus() {
    if !kernel_tests_allowed("readme_queries_match_report_on_a_real_prometheus") {
        return;
    }
    let queries = readme_queries();
    let monitor = Netns::new("prom");
    let a_shadow = ServerOptions { version: "2".into(), disagree_percent: 10.0, delay_ms: 2 };
    let b_shadow = ServerOptions { version: "2".into(), disagree_percent: 0.0, delay_ms: 3 };
    let mut a = Node::new("node-a", &monitor, 250, a_shadow);
    let mut b = Node::new("node-b", &monitor, 251, b_shadow);
    let prometheus = Prometheus::start(&monitor, &[a.metrics, b.metrics]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus.query("up == 1", now()).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "prometheus does not scrape both daemons: {:?}",
            prometheus.query("up", now())
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Warm-up: one request of each kind, so that every series is born before the traffic and its
    // first scrape holds one comparison, not a second's worth (see the tolerances above).
    let warm_up = now();
    let a_bodies = bodies(1, 2_000);
    let agreeing = a_bodies.iter().find(|b| !flipped(b, 10.0)).expect("a body the shadow agrees on").clone();
    let disagreeing = a_bodies.iter().find(|b| flipped(b, 10.0)).expect("a body the shadow flips").clone();
    a.drive(vec![agreeing, disagreeing], Duration::ZERO);
    b.drive(bodies(2, 1), Duration::ZERO);
    b.shadow_down();
    b.drive(bodies(3, 1), Duration::ZERO);
    b.shadow_up();
    std::thread::sleep(Duration::from_millis(2_500));

    // The traffic: both nodes at once, ~8 s each; node B's shadow is down for a sixth of it.
    std::thread::scope(|scope| {
        let (a_trio, a_name) = (&a.trio, a.name);
        scope.spawn(move || drive(a_trio, a_name, bodies(4, REQUESTS), PACE));
        let b = &mut b;
        let traffic = bodies(5, REQUESTS);
        b.drive(traffic[..200].to_vec(), PACE);
        b.shadow_down();
        b.drive(traffic[200..270].to_vec(), PACE);
        b.shadow_up();
        b.drive(traffic[270..].to_vec(), PACE);
    });

    // Every comparison recorded, and scraped.
    let expected = [(&a, REQUESTS + 2), (&b, REQUESTS + 2)];
    let deadline = Instant::now() + Duration::from_secs(30);
    for (node, count) in expected {
        loop {
            let recorded = node.comparison_records();
            let scraped = prometheus
                .query(&format!("sum(mirror_comparisons_total{{instance=\"{}\"}})", node.instance()), now());
            if recorded == count && scraped.first().map(|s| s.value) == Some(count as f64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {recorded} records, {scraped:?} scraped of {count}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // One more scrape, then the daemons stop: no sample comes after, so that a rule evaluated at
    // t saw the same samples as a query at t made later (a scrape stamped just before t can land
    // after the rule ran), and the records are complete.
    std::thread::sleep(Duration::from_millis(1_500));
    let stopped = now();
    for node in [&mut a, &mut b] {
        let finished = node.daemon.take().expect("running").stop();
        assert!(finished.success, "{}: {}", node.name, finished.stderr);
    }
    std::thread::sleep(Duration::from_millis(3_000));
    let at = now();

    let both = report(&[&a.record, &b.record]);
    let per_node = [(a.instance(), report(&[&a.record])), (b.instance(), report(&[&b.record]))];
    // The shadow failure rate is report's error-rate input only when production never fails.
    assert_eq!(number(&both, "/errors/production_error_rate"), 0.0, "production errors: {both}");
    assert!(number(&both, "/verdicts/mismatch") >= 10.0, "node A's shadow disagrees: {both}");
    assert!(number(&both, "/verdicts/shadow_error") >= 30.0, "node B's shadow was down: {both}");

    let buckets = |metric: &str| -> Vec<f64> {
        let mut bounds: Vec<f64> = prometheus
            .query(&format!("count by (le) (last_over_time({metric}[10m]))"), at)
            .iter()
            .filter_map(|s| s.labels["le"].parse().ok())
            .filter(|b: &f64| b.is_finite())
            .collect();
        bounds.sort_by(f64::total_cmp);
        bounds
    };
    let shadow_bounds = buckets("mirror_shadow_latency_seconds_bucket");
    let production_bounds = buckets("mirror_production_latency_seconds_bucket");

    let mut rows = Vec::new();
    let mut p99 = BTreeMap::new();
    let model = [("model_id", "model-v2")];
    for q in &queries {
        let totals = over_totals(&q.promql);
        match q.key.as_str() {
            "agreement" | "comparisons" | "shadow failure rate" => {
                let exact = match q.key.as_str() {
                    "agreement" => number(&both, "/agreement/rate"),
                    "comparisons" => number(&both, "/samples/comparisons"),
                    _ => number(&both, "/errors/shadow_failure_rate"),
                };
                let written = prometheus.one(&q.promql, at, &model);
                let total = prometheus.one(&totals, at, &model);
                let e = extrapolation(&prometheus, &q.promql, at, None);
                if q.key == "comparisons" {
                    // A sum, not a ratio: each series scaled by 1 + e.
                    assert_eq!(total, exact, "comparisons over the totals");
                    let (low, high) = (exact * (1.0 + e.0), exact * (1.0 + e.1));
                    assert!(
                        low - 1e-9 <= written && written <= high + 1e-9,
                        "comparisons {written} vs {exact}, {e:?}"
                    );
                    rows.push(Row {
                        query: q.key.clone(),
                        scope: "all nodes".into(),
                        as_written: written,
                        totals: total,
                        report: exact,
                        allowed: format!("[{low:.1}, {high:.1}]"),
                    });
                } else {
                    check_ratio(&mut rows, q, "all nodes", written, total, exact, e);
                }
            }
            "agreement per node" => {
                let e = extrapolation(&prometheus, &q.promql, at, None);
                for (instance, stats) in &per_node {
                    let labels = [("model_id", "model-v2"), ("instance", instance.as_str())];
                    let written = prometheus.one(&q.promql, at, &labels);
                    let total = prometheus.one(&totals, at, &labels);
                    check_ratio(&mut rows, q, instance, written, total, number(stats, "/agreement/rate"), e);
                }
            }
            "shadow p99 latency" | "production p99 latency" => {
                let (labels, bounds, pointer): (&[(&str, &str)], _, _) = if q.key.starts_with("shadow") {
                    (&model, &shadow_bounds, "/latency/shadow_ms/p99")
                } else {
                    (&[], &production_bounds, "/latency/production_ms/p99")
                };
                let exact = number(&both, pointer) / 1_000.0;
                let written = prometheus.one(&q.promql, at, labels);
                let total = prometheus.one(&totals, at, labels);
                for estimate in [written, total] {
                    let (low, high) = bucket(bounds, estimate);
                    assert!(
                        low / 1.01 - 1e-6 <= exact && exact <= high * 1.01 + 1e-6,
                        "{}: report's {exact} s is outside the bucket ({low}, {high}] of Prometheus's {estimate}",
                        q.key
                    );
                }
                let (low, high) = bucket(bounds, written);
                p99.insert(q.key.clone(), (written, low, high));
                rows.push(Row {
                    query: q.key.clone(),
                    scope: "all nodes".into(),
                    as_written: written * 1_000.0,
                    totals: total * 1_000.0,
                    report: exact * 1_000.0,
                    allowed: format!("({:.2}, {:.2}] ms", low * 1_000.0, high * 1_000.0),
                });
            }
            "p99 latency ratio" => {
                let written = prometheus.one(&q.promql, at, &model);
                let total = prometheus.one(&totals, at, &model);
                p99.insert(q.key.clone(), (written, total, 0.0));
            }
            // Streamed answers: checked by readme_stream_queries_match_report_on_a_real_prometheus.
            "TTFT p99 ratio" | "TPOT p99 ratio" => {}
            other => panic!("README query `{other}` has no check here: add one ({})", q.promql),
        }
    }
    for key in ["agreement", "agreement per node", "comparisons", "shadow failure rate", "p99 latency ratio"]
    {
        assert!(queries.iter().any(|q| q.key == key), "README lost its `{key}` query");
    }
    // The ratio: the quotient of the two p99 queries, and report's ratio within their buckets.
    let (shadow, s_low, s_high) = p99["shadow p99 latency"];
    let (production, p_low, p_high) = p99["production p99 latency"];
    let (ratio, ratio_totals, _) = p99["p99 latency ratio"];
    assert!((ratio - shadow / production).abs() <= 1e-9 * ratio, "{ratio} vs {shadow} / {production}");
    let exact = number(&both, "/latency/p99_ratio");
    let (low, high) = (s_low / 1.01 / (p_high * 1.01), s_high * 1.01 / (p_low / 1.01));
    assert!(low <= exact && exact <= high, "report's p99 ratio {exact} outside [{low}, {high}]");
    rows.push(Row {
        query: "p99 latency ratio".into(),
        scope: "all nodes".into(),
        as_written: ratio,
        totals: ratio_totals,
        report: exact,
        allowed: format!("[{low:.2}, {high:.2}]"),
    });

    // Why the counters moved: Prometheus extrapolates each end of a series' samples by up to 1.1
    // scrape intervals (1 s here) at the series' average rate, and a series whose first sample held
    // n comparisons loses up to n of them (n is 1 or 2 after the warm-up). So every counter lies
    // within [-2/total, 2.2 s / sampled time] of its total; and the counters of one daemon, born
    // and scraped together, by about the same factor, which keeps the ratios close to report's.
    let counters = "rate(mirror_comparisons_total[10m])";
    let e = extrapolation(&prometheus, counters, at, None);
    // Each series' first sample is within a scrape of the warm-up, its last within one of the stop.
    let sampled = stopped - warm_up - 2.0;
    let smallest = prometheus.one("min(last_over_time(mirror_comparisons_total[10m]))", at, &[]);
    println!("increase(mirror_comparisons_total[10m]) / total - 1: {:.4} .. {:.4}", e.0, e.1);
    assert!(
        e.0 >= -2.0 / smallest && e.1 <= 2.2 / sampled,
        "extrapolation {e:?} over {sampled:.1} s, smallest series {smallest}"
    );
    for node in [&a, &b] {
        let e = extrapolation(&prometheus, counters, at, Some(&node.instance()));
        println!("  {}: {:.4} .. {:.4}", node.name, e.0, e.1);
        assert!(e.1 - e.0 <= 2.0 / smallest, "{}: one daemon's counters extrapolate alike: {e:?}", node.name);
    }

    // The recording rules: healthy, and each recorded value equal to its expression evaluated at
    // the same instant.
    let rules: Value =
        serde_json::from_str(&prometheus.get("/api/v1/rules", &[]).expect("rules")).expect("JSON");
    let mut recorded = 0;
    for group in rules["data"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert_eq!(rule["health"], "ok", "rule {}: {}", rule["name"], rule["lastError"]);
            if rule["type"] != "recording" {
                continue;
            }
            let name = rule["name"].as_str().expect("name");
            let series = prometheus.query(name, at);
            assert!(!series.is_empty(), "{name} recorded nothing");
            // An instant query answers with its own time; `timestamp()` gives the evaluation's.
            let stamps = prometheus.query(&format!("timestamp({name})"), at);
            let matches = |a: &Sample, b: &Sample| {
                a.labels.iter().all(|(k, v)| k == "__name__" || b.labels.get(k) == Some(v))
            };
            for s in series {
                let stamp = stamps.iter().find(|t| matches(&s, t)).expect("a timestamp per series").value;
                let direct = prometheus.query(rule["query"].as_str().expect("query"), stamp);
                let same = direct
                    .iter()
                    .find(|d| matches(&s, d))
                    .unwrap_or_else(|| panic!("{name}: {:?} not in {direct:?}", s.labels));
                assert!(
                    (same.value - s.value).abs() <= 1e-9 * s.value.abs(),
                    "{name}{:?}: recorded {} vs {} evaluated",
                    s.labels,
                    s.value,
                    same.value
                );
                println!("recorded {name}{:?} = {}", s.labels, s.value);
                recorded += 1;
            }
        }
    }
    assert!(recorded >= 6, "{recorded} recorded series");

    println!(
        "\n{:<22} {:<20} {:>12} {:>12} {:>12}  allowed",
        "query", "scope", "PromQL", "over totals", "report"
    );
    for r in &rows {
        println!(
            "{:<22} {:<20} {:>12.4} {:>12.4} {:>12.4}  {}",
            r.query, r.scope, r.as_written, r.totals, r.report, r.allowed
        );
    }
    drop(prometheus);
}

// ---------------------------------------------------------------------------------------------
// Streamed answers.

/// The LLM port of both nodes' servers.
const LLM_PORT: u16 = 8000;
/// Streams per node.
const STREAMS: usize = 120;

/// A node whose production and candidate are streaming LLM servers (`tests/python/llm_server.py`),
/// driven by the official `openai` client; its daemon's metrics reach the monitoring namespace.
struct LlmNode {
    name: &'static str,
    daemon: Option<Daemon>,
    _production: llm::LlmServer,
    _shadow: llm::LlmServer,
    record: PathBuf,
    metrics: SocketAddr,
    /// Last: the namespaces go after everything running in them.
    trio: Trio,
}

impl LlmNode {
    fn new(name: &'static str, monitor: &Netns, subnet: u8, shadow: llm::ServerOptions) -> Self {
        let trio = Trio::new();
        let metrics = monitor_link(&trio, monitor, subnet);
        let at = |addr| [SocketAddr::from((addr, LLM_PORT))];
        let paced = llm::ServerOptions { ttft_ms: 8.0, token_delay_ms: 2.0, ..Default::default() };
        let production = llm::start_server(&trio.production, &at(trio.production_addr), &paced)
            .expect("start the production LLM server");
        let shadow = llm::start_server(&trio.shadow, &at(trio.shadow_addr), &shadow)
            .expect("start the candidate LLM server");
        let record = scratch_file(&format!("prometheus-{name}.jsonl"));
        let _ = std::fs::remove_file(&record);
        let shadow_spec = format!("model-v2@2=http://{}:{LLM_PORT}", trio.shadow_addr);
        let (port, metrics_addr) = (LLM_PORT.to_string(), metrics.to_string());
        let args = [
            "run",
            "-i",
            &trio.production_if,
            "-p",
            &port,
            "--shadow",
            &shadow_spec,
            "--production-model",
            "model-v1@1",
            "--record",
            record.to_str().expect("utf-8 path"),
            "--metrics-addr",
            &metrics_addr,
        ];
        let daemon = Some(Daemon::start(&trio.production, &args));
        Self { name, daemon, _production: production, _shadow: shadow, record, metrics, trio }
    }

    fn drive(&self, id_prefix: &str, seed: &str, count: usize) {
        drive_streams(&self.trio, self.name, id_prefix, seed, count);
    }

    fn comparison_records(&self) -> usize {
        read_records(&self.record).iter().filter(|r| r.get("verdict").is_some()).count()
    }
}

/// `count` streamed requests (chat and completions, a third with the usage chunk) through
/// `trio`'s capture, 4 at a time; none may fail.
fn drive_streams(trio: &Trio, name: &str, id_prefix: &str, seed: &str, count: usize) {
    let options = llm::ClientOptions {
        concurrency: 4,
        usage_every: 3,
        id_prefix: id_prefix.into(),
        seed: seed.into(),
        ..llm::ClientOptions::new(SocketAddr::from((trio.production_addr, LLM_PORT)), count)
    };
    let truth = llm::run_client(
        &trio.client,
        &options,
        &scratch_file(&format!("prometheus-{name}-{id_prefix}truth.jsonl")),
    );
    assert!(truth.iter().all(|t| t.error.is_none()), "{name}: a request failed");
}

/// The README's streamed-answer ratios (`TTFT p99 ratio`, `TPOT p99 ratio`) on a real Prometheus
/// scraping two nodes whose candidates are slower to start and to stream than production, each
/// by its own margin, checked against `report` over both nodes' records: the sample counts behind
/// each histogram equal report's exactly; report's p99 of each side lies in the bucket of
/// Prometheus's estimate (the numerator and denominator of the README's query, evaluated alone);
/// the README's ratio is their quotient, and report's ratio lies between the ratios of those
/// buckets' bounds.
#[test]
fn readme_stream_queries_match_report_on_a_real_prometheus() {
    if !kernel_tests_allowed("readme_stream_queries_match_report_on_a_real_prometheus") {
        return;
    }
    let queries: Vec<Query> = readme_queries()
        .into_iter()
        .filter(|q| q.key == "TTFT p99 ratio" || q.key == "TPOT p99 ratio")
        .collect();
    assert_eq!(queries.len(), 2, "README lost its streamed-answer ratio queries");
    let monitor = Netns::new("promllm");
    let candidate = |ttft_ms, token_delay_ms| llm::ServerOptions {
        ttft_ms,
        token_delay_ms,
        variant: true,
        differ_percent: 5.0,
        ..Default::default()
    };
    let mut c = LlmNode::new("node-c", &monitor, 248, candidate(30.0, 3.5));
    let mut d = LlmNode::new("node-d", &monitor, 249, candidate(60.0, 6.0));
    let prometheus = Prometheus::start(&monitor, &[c.metrics, d.metrics]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus.query("up == 1", now()).len() < 2 {
        assert!(Instant::now() < deadline, "prometheus does not scrape both daemons");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Warm-up: every series born before the traffic.
    c.drive("warm-", "warm-c", 2);
    d.drive("warm-", "warm-d", 2);
    std::thread::sleep(Duration::from_millis(2_500));
    std::thread::scope(|scope| {
        let (c_trio, c_name) = (&c.trio, c.name);
        scope.spawn(move || drive_streams(c_trio, c_name, "req-", "c", STREAMS));
        d.drive("req-", "d", STREAMS);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in [&c, &d] {
        let count = STREAMS + 2;
        loop {
            let recorded = node.comparison_records();
            let scraped = prometheus
                .query(&format!("sum(mirror_comparisons_total{{instance=\"{}\"}})", node.metrics), now());
            if recorded == count && scraped.first().map(|s| s.value) == Some(count as f64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {recorded} records, {scraped:?} scraped of {count}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    std::thread::sleep(Duration::from_millis(1_500));
    for node in [&mut c, &mut d] {
        let finished = node.daemon.take().expect("running").stop();
        assert!(finished.success, "{}: {}", node.name, finished.stderr);
    }
    std::thread::sleep(Duration::from_millis(3_000));
    let at = now();
    let both = report(&[&c.record, &d.record]);

    let model = [("model_id", "model-v2")];
    let mut rows = Vec::new();
    for q in &queries {
        let (figure, metric) =
            if q.key.starts_with("TTFT") { ("ttft_ms", "ttft") } else { ("tpot_ms", "tpot") };
        let (shadow_q, production_q) = q
            .promql
            .split_once(" / ignoring(model_id) group_left ")
            .unwrap_or_else(|| panic!("{}: not a quotient of two quantiles: {}", q.key, q.promql));
        let mut estimates = BTreeMap::new();
        for (side, promql, labels) in
            [("shadow", shadow_q, &model[..]), ("production", production_q, &[][..])]
        {
            let series = format!("mirror_{side}_{metric}_seconds");
            // The samples behind the histogram are exactly the records' figures.
            let count = prometheus.one(&format!("sum(last_over_time({series}_count[10m]))"), at, &[]);
            let exact_count = number(&both, &format!("/text/{figure}/{side}/count"));
            assert_eq!(count, exact_count, "{}: {series} holds {count} samples, report {exact_count}", q.key);
            let mut bounds: Vec<f64> = prometheus
                .query(&format!("count by (le) (last_over_time({series}_bucket[10m]))"), at)
                .iter()
                .filter_map(|s| s.labels["le"].parse().ok())
                .filter(|b: &f64| b.is_finite())
                .collect();
            bounds.sort_by(f64::total_cmp);
            let estimate = prometheus.one(promql, at, labels);
            let exact = number(&both, &format!("/text/{figure}/{side}/p99")) / 1_000.0;
            let (low, high) = bucket(&bounds, estimate);
            assert!(
                low / 1.01 - 1e-6 <= exact && exact <= high * 1.01 + 1e-6,
                "{}: report's {side} p99 {exact} s is outside the bucket ({low}, {high}] of Prometheus's {estimate}",
                q.key
            );
            estimates.insert(side, (estimate, low, high));
        }
        let (shadow, s_low, s_high) = estimates["shadow"];
        let (production, p_low, p_high) = estimates["production"];
        let ratio = prometheus.one(&q.promql, at, &model);
        assert!(
            (ratio - shadow / production).abs() <= 1e-9 * ratio,
            "{}: {ratio} vs {shadow} / {production}",
            q.key
        );
        let exact = number(&both, &format!("/text/{figure}/p99_ratio"));
        let (low, high) = (s_low / 1.01 / (p_high * 1.01), s_high * 1.01 / (p_low / 1.01));
        assert!(low <= exact && exact <= high, "{}: report's ratio {exact} outside [{low}, {high}]", q.key);
        // The candidates are slower by construction: a ratio at or below 1 means the figures are
        // not the ones the servers were told to produce.
        assert!(exact > 1.2 && ratio > 1.0, "{}: report {exact}, PromQL {ratio}", q.key);
        rows.push((
            q.key.clone(),
            ratio,
            prometheus.one(&over_totals(&q.promql), at, &model),
            exact,
            low,
            high,
        ));
    }
    println!("\n{:<16} {:>12} {:>12} {:>12}  allowed", "query", "PromQL", "over totals", "report");
    for (key, ratio, totals, exact, low, high) in rows {
        println!("{key:<16} {ratio:>12.4} {totals:>12.4} {exact:>12.4}  [{low:.2}, {high:.2}]");
    }
    drop(prometheus);
}
