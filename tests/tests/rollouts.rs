//! The progressive-delivery examples under deploy/rollouts are checked, not just shipped:
//!
//! - each is read into its resource's real shape ([`crd`]: Argo Rollouts' AnalysisTemplate,
//!   Flagger's MetricTemplate and Canary), where unknown fields fail, and nothing of it may be
//!   dropped on the way;
//! - the Prometheus queries are the README's cluster-wide PromQL, restricted to one model;
//! - the job template's command, run as written, exits as the Job must (0 on PROMOTE, 2 on
//!   REJECT) and keeps reading the records while the verdict is HOLD;
//! - against a real daemon mirroring a good and then a bad shadow in a namespace scene, the web
//!   template's URL, `jsonPath` and conditions (parsed from the file and evaluated with
//!   [`mirror_tests::expr`]) give Successful for the good shadow, Failed for the bad one and
//!   Inconclusive before any traffic; and Flagger's webhooks, posted the payload Flagger posts,
//!   pass or fail as the Canary's comments say.
#[path = "rollouts/crd.rs"]
mod crd;

use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crd::{AnalysisTemplate, Canary, HOOK_TYPES, Metric, MetricTemplate};
use mirror_tests::{
    ChildGuard,
    client::{connect, post_json, read_response},
    daemon::{self, start_mirror},
    expr,
    gate::kernel_tests_allowed,
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Trio},
    scratch_file,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

fn rollouts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("deploy/rollouts")
}

/// `(file name, document)` for every YAML file of deploy/rollouts (one document each).
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(rollouts_dir())
        .expect("deploy/rollouts")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read example");
            let value: Value = serde_norway::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
            (path.file_name().unwrap().to_string_lossy().into_owned(), value)
        })
        .collect()
}

/// Paths of keys of `original` missing from `typed` (the same object after a round trip).
fn lost_keys(original: &Value, typed: &Value, path: &str, lost: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(orig), Value::Object(back)) => {
            for (key, value) in orig {
                let here = format!("{path}.{key}");
                match back.get(key) {
                    Some(again) => lost_keys(value, again, &here, lost),
                    None => lost.push(here),
                }
            }
        }
        (Value::Array(orig), Value::Array(back)) => {
            for (i, (value, again)) in orig.iter().zip(back).enumerate() {
                lost_keys(value, again, &format!("{path}[{i}]"), lost);
            }
        }
        _ => {}
    }
}

/// `value` read as a `T`; an unknown field, or a key the Kubernetes types inside dropped, fails.
fn typed<T: DeserializeOwned + Serialize>(file: &str, value: &Value) -> Result<T, String> {
    let object: T = serde_json::from_value(value.clone()).map_err(|e| format!("{file}: {e}"))?;
    let mut lost = Vec::new();
    lost_keys(value, &serde_json::to_value(&object).expect("serialise"), "", &mut lost);
    if lost.is_empty() {
        Ok(object)
    } else {
        Err(format!("{file}: fields unknown to the resource: {lost:?}"))
    }
}

#[derive(Default)]
struct Examples {
    analysis: BTreeMap<String, AnalysisTemplate>,
    metric_templates: Vec<MetricTemplate>,
    canaries: Vec<Canary>,
}

fn fail<T>(e: String) -> T {
    panic!("{e}")
}

fn examples() -> Examples {
    let mut ex = Examples::default();
    for (file, value) in documents() {
        let kind =
            (value["apiVersion"].as_str().unwrap_or_default(), value["kind"].as_str().unwrap_or_default());
        match kind {
            ("argoproj.io/v1alpha1", "AnalysisTemplate") => {
                ex.analysis.insert(file.clone(), typed(&file, &value).unwrap_or_else(fail));
            }
            ("flagger.app/v1beta1", "MetricTemplate") => {
                ex.metric_templates.push(typed(&file, &value).unwrap_or_else(fail))
            }
            ("flagger.app/v1beta1", "Canary") => ex.canaries.push(typed(&file, &value).unwrap_or_else(fail)),
            (api, kind) => panic!("{file}: {api} {kind} is not checked by this test: add it"),
        }
    }
    ex
}

/// The one metric of an AnalysisTemplate whose provider is `provider`.
fn metric<'a>(ex: &'a Examples, provider: &str) -> (&'a AnalysisTemplate, &'a Metric) {
    let found: Vec<_> = ex
        .analysis
        .values()
        .flat_map(|t| t.spec.metrics.iter().map(move |m| (t, m)))
        .filter(|(_, m)| match provider {
            "web" => m.provider.web.is_some(),
            "prometheus" => m.provider.prometheus.is_some(),
            "job" => m.provider.job.is_some(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(found.len(), 1, "one AnalysisTemplate metric with the {provider} provider");
    found[0]
}

/// `text` with Argo's `{{args.NAME}}` (or `{{ args.NAME }}`) replaced by the arguments' values
/// (`given` over the template's defaults); an argument without a value fails.
fn substitute(text: &str, template: &AnalysisTemplate, given: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closing }}") + start;
        let inner = rest[start + 2..end].trim();
        let name = inner.strip_prefix("args.").unwrap_or_else(|| panic!("unknown placeholder {inner}"));
        let value = given
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .or_else(|| template.spec.args.iter().find(|a| a.name == name).and_then(|a| a.value.clone()));
        out.push_str(&value.unwrap_or_else(|| panic!("argument {name} has no value")));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

#[test]
fn every_example_is_a_valid_resource() {
    let ex = examples();
    assert_eq!(ex.analysis.len(), 3, "web, prometheus and job templates");
    assert_eq!((ex.metric_templates.len(), ex.canaries.len()), (1, 1));
    for provider in ["web", "prometheus", "job"] {
        let (template, m) = metric(&ex, provider);
        for arg in &template.spec.args {
            assert!(
                serde_json::to_string(&template.spec).unwrap().contains(&format!("args.{}", arg.name)),
                "{provider}: argument {} is never used",
                arg.name
            );
        }
        if provider != "job" {
            assert!(m.success_condition.is_some() && m.failure_condition.is_some(), "{provider}: {m:?}");
        }
    }
    let canary = &ex.canaries[0];
    let analysis = canary.spec.analysis.as_ref().expect("analysis");
    for hook in &analysis.webhooks {
        let kind = hook.kind.as_deref().unwrap_or("rollout");
        assert!(HOOK_TYPES.contains(&kind), "{}: unknown hook type {kind}", hook.name);
        assert!(hook.url.contains("/verdict/") && hook.url.contains("/gate"), "{}", hook.url);
    }
    let template = &ex.metric_templates[0];
    let reference = analysis.metrics[0].template_ref.as_ref().expect("templateRef");
    assert_eq!(Some(&reference.name), template.metadata.name.as_ref());
    assert_eq!(reference.namespace, template.metadata.namespace);
}

#[test]
fn the_shape_check_catches_misspelt_fields() {
    let docs: BTreeMap<String, Value> = documents().into_iter().collect();
    let misspell = |file: &str, pointer: &str, from: &str, to: &str| -> String {
        let mut value = docs[file].clone();
        let object = value.pointer_mut(pointer).and_then(Value::as_object_mut).expect("an object");
        let moved = object.remove(from).unwrap_or_else(|| panic!("{file}{pointer} has no {from}"));
        object.insert(to.into(), moved);
        value.to_string()
    };
    let web = misspell("argo-analysis-web.yaml", "/spec/metrics/0", "successCondition", "sucessCondition");
    let e = typed::<AnalysisTemplate>("web", &serde_json::from_str(&web).unwrap()).unwrap_err();
    assert!(e.contains("sucessCondition"), "{e}");
    let url = misspell("argo-analysis-web.yaml", "/spec/metrics/0/provider/web", "jsonPath", "jsonpath");
    assert!(typed::<AnalysisTemplate>("web", &serde_json::from_str(&url).unwrap()).is_err());
    // Inside the Kubernetes JobSpec, which ignores unknown fields: the round trip catches it.
    let job = misspell(
        "argo-analysis-job.yaml",
        "/spec/metrics/0/provider/job/spec",
        "backoffLimit",
        "backofLimit",
    );
    let e = typed::<AnalysisTemplate>("job", &serde_json::from_str(&job).unwrap()).unwrap_err();
    assert!(e.contains("backofLimit"), "{e}");
    let hook = misspell("flagger-canary.yaml", "/spec/analysis/webhooks/0", "timeout", "timout");
    let e = typed::<Canary>("canary", &serde_json::from_str(&hook).unwrap()).unwrap_err();
    assert!(e.contains("timout"), "{e}");
    let query = misspell("flagger-metric-template.yaml", "/spec", "query", "querry");
    assert!(typed::<MetricTemplate>("metric", &serde_json::from_str(&query).unwrap()).is_err());
}

/// The PromQL queries of the README's Metrics section (the indented blocks under a `#` line).
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let mut queries: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match line.strip_prefix("    ") {
            Some(code) if code.trim_start().starts_with('#') => {
                queries.extend(current.take());
                current = Some(String::new());
            }
            Some(code) if current.is_some() => {
                let q = current.as_mut().unwrap();
                q.push(' ');
                q.push_str(code);
            }
            _ => queries.extend(current.take()),
        }
    }
    queries.extend(current);
    queries.into_iter().filter(|q| q.contains("rate(mirror_")).map(|q| normalise(&q)).collect()
}

/// Whitespace collapsed, `model_id="..."` selectors taken out and range windows written `[W]`:
/// what is left is the query's shape, the same for one model as for all.
fn normalise(query: &str) -> String {
    let mut out = String::new();
    let mut rest = query;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("model_id=\"") {
            let end = after.find('"').expect("closing quote");
            rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
        } else if let Some(after) = rest.strip_prefix('[') {
            out.push_str("[W]");
            rest = &after[after.find(']').expect("closing ]") + 1..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out.replace("{}", "").split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_prometheus_queries_are_the_readme_ones() {
    let documented = readme_queries();
    assert!(documented.len() >= 2, "the README documents its PromQL: {documented:?}");
    let ex = examples();
    let (template, m) = metric(&ex, "prometheus");
    let argo = substitute(&m.provider.prometheus.as_ref().unwrap().query, template, &[]);
    assert!(argo.contains(r#"model_id="model-v2""#), "{argo}");
    let flagger = &ex.metric_templates[0].spec.query;
    for query in [argo.as_str(), flagger.as_str()] {
        assert!(
            documented.contains(&normalise(query)),
            "not one of the README's queries:\n{}\n{documented:#?}",
            normalise(query)
        );
    }
    // The conditions read a number against the thresholds.
    for (value, success, failure) in [(0.97, true, false), (0.93, false, false), (0.5, false, true)] {
        let result = json!([value]);
        assert_eq!(expr::evaluate(m.success_condition.as_ref().unwrap(), &result), Ok(success));
        assert_eq!(expr::evaluate(m.failure_condition.as_ref().unwrap(), &result), Ok(failure));
    }
}

/// A comparison record as the daemon writes it.
fn record(verdict: &str) -> String {
    json!({
        "schema": 1, "ts": "2026-01-01T00:00:00.000000Z", "method": "POST", "path": "/infer", "route": "POST /infer",
        "production": {"status": 200, "latency_ms": 10.0},
        "shadow": {"model_id": "model-v2", "status": 200, "latency_ms": 10.5, "error": null},
        "verdict": verdict,
    })
    .to_string()
}

fn write_records(path: &Path, matches: usize, mismatches: usize) {
    let mut lines = vec![record("match"); matches];
    lines.extend(vec![record("mismatch"); mismatches]);
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("records");
    writeln!(file, "{}", lines.join("\n")).expect("write records");
}

/// The job template's container command, as written, with its environment (`RECORDS` pointed at
/// `records`, retries every second) and the daemon binary on PATH.
fn job_command(records: &Path) -> Command {
    let ex = examples();
    let (template, m) = metric(&ex, "job");
    let pod = m.provider.job.as_ref().unwrap().spec.template.spec.as_ref().expect("pod spec");
    let container = &pod.containers[0];
    let argv = container.command.as_ref().expect("command");
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    for var in container.env.as_ref().expect("env") {
        let value = substitute(var.value.as_deref().unwrap_or_default(), template, &[]);
        command.env(&var.name, value);
    }
    // The image has the daemon on PATH as `mirror-daemon`; so does this directory.
    let bin = scratch_file("job-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let _ = std::fs::remove_file(bin.join("mirror-daemon"));
    std::os::unix::fs::symlink(daemon::binary(), bin.join("mirror-daemon")).expect("link the daemon");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    command.env("RECORDS", records).env("HOLD_RETRY_SECONDS", "1").env("PATH", path);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

#[test]
fn the_job_decides_by_the_report_exit_status() {
    let dir = scratch_file("job-records");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Two nodes' files; 120 + 80 matches: PROMOTE.
    write_records(&dir.join("node-a.jsonl"), 120, 0);
    write_records(&dir.join("node-b.jsonl"), 80, 0);
    let out = job_command(&dir).output().expect("run the job's command");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let document: Value = serde_json::from_slice(&out.stdout).expect("the verdict document");
    assert_eq!(document["decision"], "PROMOTE");
    assert_eq!(document["shadows"][0]["samples"]["comparisons"], 200);
    // A node that disagrees: REJECT, and the Job fails at once.
    write_records(&dir.join("node-c.jsonl"), 0, 100);
    let started = Instant::now();
    let out = job_command(&dir).output().expect("run the job's command");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(10));

    // HOLD: the command keeps reading, and succeeds once enough records have arrived.
    let hold = scratch_file("job-records-hold");
    let _ = std::fs::remove_dir_all(&hold);
    std::fs::create_dir_all(&hold).unwrap();
    write_records(&hold.join("node-a.jsonl"), 20, 0);
    let child = ChildGuard(job_command(&hold).spawn().expect("spawn the job's command"));
    std::thread::sleep(Duration::from_millis(2500));
    let mut child = child;
    assert!(child.0.try_wait().unwrap().is_none(), "HOLD must not end the Job");
    write_records(&hold.join("node-a.jsonl"), 200, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the Job did not notice the new records");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("HOLD: reading the records again"), "{stderr}");
}

// ---- against a real daemon ----

const PORT: u16 = 8080;
const PATH: &str = "/v2/models/demo/infer";
const DAEMON: &str = "127.0.0.1:19471";

/// One HTTP/1.1 request from inside `ns`; returns the status and the JSON body.
fn http(ns: &Netns, method: &str, authority: &str, target: &str, body: &str) -> (u16, Value) {
    let (method, authority, target, body) =
        (method.to_string(), authority.to_string(), target.to_string(), body.to_string());
    ns.run(move || {
        let mut stream = connect(authority.parse::<SocketAddr>().expect("an address"));
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        let raw = read_response(&mut stream).expect("response");
        let status: u16 = String::from_utf8_lossy(&raw[9..12]).parse().expect("status");
        let start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (status, serde_json::from_slice(&raw[start..]).unwrap_or(Value::Null))
    })
}

/// `http://AUTHORITY/TARGET` split in two.
fn split_url(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let slash = rest.find('/').unwrap_or(rest.len());
    (&rest[..slash], &rest[slash..])
}

#[derive(Debug, PartialEq)]
enum Measurement {
    Successful,
    Failed,
    Inconclusive,
}

/// One measurement of the web metric, as Argo takes it: GET the URL, select `jsonPath`, then the
/// failure condition, then the success condition; neither with both given is inconclusive.
fn measure_web(ns: &Netns, template: &AnalysisTemplate, m: &Metric) -> (Measurement, Value) {
    let web = m.provider.web.as_ref().unwrap();
    let url = substitute(&web.url, template, &[("daemon-address", DAEMON)]);
    let (authority, target) = split_url(&url);
    let method = web.method.as_deref().unwrap_or("GET");
    let (status, body) = http(ns, method, authority, target, "");
    assert_eq!(status, 200, "{url}: {body}");
    // A Kubernetes JSONPath template holds one expression in braces: `{$.field}`.
    let template_path = web.json_path.as_deref().unwrap_or("{$}");
    let path = template_path.strip_prefix('{').and_then(|p| p.strip_suffix('}')).expect("{...}");
    let query = serde_json_path::JsonPath::parse(path).unwrap_or_else(|e| panic!("jsonPath {path}: {e}"));
    let result = query.query(&body).exactly_one().unwrap_or_else(|e| panic!("{path}: {e}")).clone();
    let failure = expr::evaluate(m.failure_condition.as_deref().unwrap(), &result).expect("failureCondition");
    let success = expr::evaluate(m.success_condition.as_deref().unwrap(), &result).expect("successCondition");
    let outcome = if failure {
        Measurement::Failed
    } else if success {
        Measurement::Successful
    } else {
        Measurement::Inconclusive
    };
    (outcome, result)
}

/// Each webhook of the Canary posted as Flagger posts it, to the daemon: `(type, status)`.
fn call_webhooks(ns: &Netns, canary: &Canary) -> Vec<(String, u16)> {
    let payload = json!({
        "name": canary.metadata.name, "namespace": canary.metadata.namespace,
        "phase": "Progressing", "checksum": "6d5b7c9f", "metadata": {}
    })
    .to_string();
    let hooks = &canary.spec.analysis.as_ref().unwrap().webhooks;
    hooks
        .iter()
        .map(|hook| {
            let (_, target) = split_url(&hook.url);
            let (status, body) = http(ns, "POST", DAEMON, target, &payload);
            if status != 404 {
                assert_eq!(body["model_id"], "model-v2", "the gate answers with the document: {body}");
            }
            (hook.kind.clone().unwrap_or_else(|| "rollout".into()), status)
        })
        .collect()
}

/// The daemon's verdict once it covers `comparisons` comparisons.
fn wait_for_comparisons(ns: &Netns, comparisons: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, doc) = http(ns, "GET", DAEMON, "/verdict/model-v2", "");
        if doc["samples"]["comparisons"].as_u64() >= Some(comparisons) {
            return doc;
        }
        assert!(Instant::now() < deadline, "the verdict never covered {comparisons} comparisons: {doc}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bodies(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let rows: Vec<Vec<f64>> = (0..1 + i % 3)
                .map(|r| (0..4).map(|f| (((i * 31 + r * 7 + f * 13) % 97) as f64 - 48.0) / 10.0).collect())
                .collect();
            infer_request(&format!("req-{i}"), &rows)
        })
        .collect()
}

/// A scene whose shadow flips `disagree` percent of labels; `check` runs with the daemon up and
/// no traffic yet, then `after` once 150 requests have been compared.
fn scene(disagree: f64, before: impl FnOnce(&Netns), after: impl FnOnce(&Netns)) {
    let trio = Trio::new();
    let server = |ns: &Netns, addr, version: &str, disagree_percent| {
        let options = ServerOptions { version: version.into(), disagree_percent, delay_ms: 5 };
        model_server::start_test_build(ns, &[SocketAddr::from((addr, PORT))], &options)
    };
    let _v1 = server(&trio.production, trio.production_addr, "1", 0.0);
    let _v2 = server(&trio.shadow, trio.shadow_addr, "2", disagree);
    let record = scratch_file(&format!("rollouts-{disagree}.jsonl"));
    // Latency is not what this test is about: on a shared machine a replay's p99 is noisy.
    let daemon = start_mirror(&trio, PORT, &record, DAEMON, &["--max-p99-latency-ratio", "5"]);
    before(&trio.production);
    let production = SocketAddr::from((trio.production_addr, PORT));
    let requests = bodies(150);
    let answers = trio.client.run(move || {
        let mut conns: Vec<_> = (0..4).map(|_| connect(production)).collect();
        let host = production.to_string();
        requests
            .iter()
            .enumerate()
            .map(|(i, b)| post_json(&mut conns[i % 4], &host, PATH, b).0)
            .collect::<Vec<_>>()
    });
    assert!(answers.iter().all(|s| *s == 200), "production answered every request");
    wait_for_comparisons(&trio.production, 150);
    after(&trio.production);
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
}

#[test]
fn the_web_analysis_and_the_webhooks_follow_a_real_daemon() {
    if !kernel_tests_allowed("the_web_analysis_and_the_webhooks_follow_a_real_daemon") {
        return;
    }
    let ex = examples();
    let (template, m) = metric(&ex, "web");
    let canary = &ex.canaries[0];
    let hooks = |ns: &Netns| -> BTreeMap<String, u16> { call_webhooks(ns, canary).into_iter().collect() };

    scene(
        0.0,
        |ns| {
            // Up, configured, no traffic yet: HOLD, so the measurement is inconclusive; the rollout
            // hook passes (a shadow gathering samples is not a failed check), promotion waits.
            let (outcome, result) = measure_web(ns, template, m);
            assert_eq!(outcome, Measurement::Inconclusive, "{result}");
            assert_eq!(result["decision"], "HOLD");
            assert_eq!(
                hooks(ns),
                BTreeMap::from([("confirm-promotion".into(), 503), ("rollout".into(), 200)])
            );
        },
        |ns| {
            let (outcome, result) = measure_web(ns, template, m);
            assert_eq!(outcome, Measurement::Successful, "a good shadow passes: {result:#}");
            assert!(result["criteria"].as_array().unwrap().iter().all(|c| c["passed"] == true), "{result:#}");
            assert_eq!(
                hooks(ns),
                BTreeMap::from([("confirm-promotion".into(), 200), ("rollout".into(), 200)])
            );
            let (status, all) = http(ns, "GET", DAEMON, "/verdict", "");
            assert_eq!((status, all["decision"].as_str()), (200, Some("PROMOTE")));
            assert!(all["health"]["capture"]["segments_matched"].as_u64() > Some(0), "{:#}", all["health"]);
            let (status, unknown) = http(ns, "GET", DAEMON, "/verdict/model-v9", "");
            assert_eq!((status, &unknown["known_model_ids"]), (404, &json!(["model-v2"])));
        },
    );
    scene(
        40.0,
        |_| {},
        |ns| {
            let (outcome, result) = measure_web(ns, template, m);
            assert_eq!(outcome, Measurement::Failed, "a bad shadow fails: {result:#}");
            assert_eq!(result["decision"], "REJECT");
            let failed: Vec<&str> = result["criteria"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["status"] == "fail")
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert_eq!(failed, ["min_agreement"], "{result:#}");
            assert_eq!(
                hooks(ns),
                BTreeMap::from([("confirm-promotion".into(), 412), ("rollout".into(), 412)])
            );
        },
    );
}
