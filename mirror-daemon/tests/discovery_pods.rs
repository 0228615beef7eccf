//! Pod discovery against an API-server double that speaks the Kubernetes JSON for
//! `GET /api/v1/pods` (list, and the `watch=true` stream of newline-delimited events), filters by
//! `spec.nodeName` like the real server, and records every query it was asked.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mirror_daemon::discovery::pods::{self, DiscoveryError, PodChange, PodSelector, ProductionPod};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const LABELS: &str = "app=ml-inference,version=v1";
const NODE: &str = "node-1";
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// One `GET /api/v1/pods` as the double received it.
#[derive(Debug, Clone)]
struct Query {
    watch: bool,
    label_selector: Option<String>,
    field_selector: Option<String>,
    resource_version: Option<String>,
}

/// What the double answers: the n-th list gets `lists[n]` (the last one repeats), the n-th watch
/// streams `watches[n]` and then stays open without events (the last one repeats).
#[derive(Debug)]
struct Script {
    lists: Vec<(String, Vec<Value>)>,
    watches: Vec<Vec<Value>>,
    /// The first lists answered `403 Forbidden`, as before the RBAC binding exists.
    forbidden_lists: usize,
}

#[derive(Debug)]
struct Double {
    script: Script,
    queries: Mutex<Vec<Query>>,
}

fn pod(name: &str, node: &str, phase: &str, ips: &[&str]) -> Value {
    let mut status = json!({ "phase": phase });
    if let Some(first) = ips.first() {
        status["podIP"] = json!(first);
        status["podIPs"] = json!(ips.iter().map(|ip| json!({ "ip": ip })).collect::<Vec<_>>());
    }
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "prod",
            "uid": format!("uid-{name}"),
            "resourceVersion": "1",
            "labels": { "app": "ml-inference", "version": "v1" },
        },
        "spec": {
            "nodeName": node,
            "containers": [{ "name": "server", "image": "ml-inference:v1" }],
        },
        "status": status,
    })
}

fn terminating(mut pod: Value) -> Value {
    pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    pod
}

fn event(kind: &str, object: Value) -> Value {
    json!({ "type": kind, "object": object })
}

fn up(name: &str, ips: &[&str]) -> PodChange {
    let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().expect("test IP")).collect();
    PodChange::Up(ProductionPod {
        namespace: "prod".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        ip: ips[0],
        ips,
        host_network: false,
    })
}

fn down(name: &str) -> PodChange {
    PodChange::Down { uid: format!("uid-{name}") }
}

fn decode(text: &str) -> String {
    let text = text.replace('+', " ");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("query is UTF-8")
}

fn parse_query(query: &str) -> Query {
    let mut q = Query { watch: false, label_selector: None, field_selector: None, resource_version: None };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value);
        match key {
            "watch" => q.watch = value == "true" || value == "1",
            "labelSelector" => q.label_selector = Some(value),
            "fieldSelector" => q.field_selector = Some(value),
            "resourceVersion" => q.resource_version = Some(value),
            _ => {}
        }
    }
    q
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(value.to_string())).boxed();
    Response::builder().status(code).header("content-type", "application/json").body(body).expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
}

/// Only objects on the node the field selector names, as the API server does.
fn on_node(object: &Value, node: &str) -> bool {
    match object.pointer("/spec/nodeName") {
        Some(name) => name == node,
        // BOOKMARK and ERROR objects carry no spec.
        None => true,
    }
}

fn handle(double: &Double, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/api/v1/pods" {
        return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", "not in the double"));
    }
    let query = parse_query(req.uri().query().unwrap_or(""));
    let count = {
        let mut queries = double.queries.lock().expect("lock");
        let count = queries.iter().filter(|q| q.watch == query.watch).count();
        queries.push(query.clone());
        count
    };
    // The real API server validates the selectors; this one accepts only the expected ones.
    let Some(node) = query.field_selector.as_deref().and_then(|f| f.strip_prefix("spec.nodeName=")) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "expected fieldSelector=spec.nodeName=NODE"),
        );
    };
    if query.label_selector.as_deref() != Some(LABELS) {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "unable to parse requirement: unexpected label selector"),
        );
    }
    let node = node.to_owned();
    if !query.watch && count < double.script.forbidden_lists {
        let message = "pods is forbidden: User \"system:serviceaccount:shadow-mirror:shadow-mirror\" \
                       cannot list resource \"pods\" in API group \"\" at the cluster scope";
        return json_response(StatusCode::FORBIDDEN, &status(403, "Forbidden", message));
    }
    if query.watch {
        let script = &double.script.watches;
        let events = script.get(count).or(script.last()).cloned().unwrap_or_default();
        let lines: Vec<Result<Frame<Bytes>, Infallible>> = events
            .into_iter()
            .filter(|e| on_node(&e["object"], &node))
            .map(|e| Ok(Frame::data(Bytes::from(format!("{e}\n")))))
            .collect();
        let stream = futures_util::stream::iter(lines).chain(futures_util::stream::pending());
        Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("response")
    } else {
        let script = &double.script.lists;
        let (rv, items) = script.get(count).or(script.last()).cloned().unwrap_or_default();
        let items: Vec<Value> = items.into_iter().filter(|p| on_node(p, &node)).collect();
        json_response(
            StatusCode::OK,
            &json!({
                "kind": "PodList", "apiVersion": "v1",
                "metadata": { "resourceVersion": rv }, "items": items,
            }),
        )
    }
}

async fn serve(script: Script) -> (SocketAddr, Arc<Double>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let double = Arc::new(Double { script, queries: Mutex::new(Vec::new()) });
    let shared = Arc::clone(&double);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let double = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = handle(&double, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, double)
}

fn client(addr: SocketAddr) -> kube::Client {
    let url = format!("http://{addr}").parse().expect("url");
    kube::Client::try_from(kube::Config::new(url)).expect("client")
}

fn selector(labels: &str) -> PodSelector {
    PodSelector { labels: labels.into(), node_name: NODE.into() }
}

async fn recv(rx: &mut mpsc::Receiver<PodChange>, what: &str) -> PodChange {
    match tokio::time::timeout(RECV_TIMEOUT, rx.recv()).await {
        Ok(Some(change)) => change,
        Ok(None) => panic!("watch ended before {what}"),
        Err(_) => panic!("no change within {RECV_TIMEOUT:?} while waiting for {what}"),
    }
}

async fn expect_quiet(rx: &mut mpsc::Receiver<PodChange>) {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected change: {extra:?}");
    }
}

/// Checks every query carried the production selectors, and returns them.
fn queries(double: &Double) -> Vec<Query> {
    let queries = double.queries.lock().expect("lock").clone();
    for q in &queries {
        assert_eq!(q.label_selector.as_deref(), Some(LABELS), "{q:?}");
        assert_eq!(q.field_selector.as_deref(), Some("spec.nodeName=node-1"), "{q:?}");
    }
    queries
}

#[tokio::test]
async fn changes_follow_list_and_watch() {
    let script = Script {
        lists: vec![(
            "100".into(),
            vec![
                pod("a", NODE, "Running", &["10.0.0.5"]),
                pod("b", NODE, "Pending", &[]),
                pod("x", "node-2", "Running", &["10.0.1.9"]),
            ],
        )],
        watches: vec![vec![
            event("MODIFIED", pod("b", NODE, "Running", &["10.0.0.6"])),
            event("ADDED", pod("y", "node-2", "Running", &["10.0.1.7"])),
            event(
                "BOOKMARK",
                json!({ "kind": "Pod", "apiVersion": "v1", "metadata": { "resourceVersion": "105" } }),
            ),
            event("MODIFIED", terminating(pod("a", NODE, "Running", &["10.0.0.5"]))),
            event("ADDED", pod("c", NODE, "Running", &["10.0.0.7", "fd00::7"])),
            // Already down since it started terminating: no second Down.
            event("DELETED", terminating(pod("a", NODE, "Running", &["10.0.0.5"]))),
            // Same state again: nothing to report.
            event("MODIFIED", pod("b", NODE, "Running", &["10.0.0.6"])),
            event("MODIFIED", pod("c", NODE, "Succeeded", &["10.0.0.7", "fd00::7"])),
        ]],
        forbidden_lists: 0,
    };
    let (addr, double) = serve(script).await;
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(pods::watch(client(addr), selector(LABELS), tx));

    let mut got = Vec::new();
    for what in ["a up", "b up", "a down", "c up", "c down"] {
        got.push(recv(&mut rx, what).await);
    }
    assert_eq!(
        got,
        vec![
            up("a", &["10.0.0.5"]),
            up("b", &["10.0.0.6"]),
            down("a"),
            up("c", &["10.0.0.7", "fd00::7"]),
            down("c"),
        ]
    );
    expect_quiet(&mut rx).await;

    let queries = queries(&double);
    assert!(!queries[0].watch, "starts with a list: {queries:?}");
    let watch = queries.iter().find(|q| q.watch).expect("a watch request");
    assert_eq!(watch.resource_version.as_deref(), Some("100"), "watches from the list's version");

    drop(rx);
    let result = tokio::time::timeout(RECV_TIMEOUT, task).await.expect("ends once rx is dropped");
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
}

#[tokio::test]
async fn expired_watch_relists_and_reports_what_disappeared() {
    let gone = status(410, "Expired", "too old resource version: 10 (20)");
    let script = Script {
        lists: vec![
            ("10".into(), vec![pod("a", NODE, "Running", &["10.0.0.5"])]),
            ("20".into(), vec![pod("b", NODE, "Running", &["10.0.0.6"]), pod("a2", NODE, "Pending", &[])]),
        ],
        watches: vec![vec![event("ERROR", gone)], vec![]],
        forbidden_lists: 0,
    };
    let (addr, double) = serve(script).await;
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(pods::watch(client(addr), selector(LABELS), tx));

    assert_eq!(recv(&mut rx, "a up").await, up("a", &["10.0.0.5"]));
    assert_eq!(recv(&mut rx, "b up after the re-list").await, up("b", &["10.0.0.6"]));
    assert_eq!(recv(&mut rx, "a down after the re-list").await, down("a"));
    expect_quiet(&mut rx).await;

    let lists = queries(&double).iter().filter(|q| !q.watch).count();
    assert_eq!(lists, 2, "re-listed once after 410 Gone");
    task.abort();
}

#[tokio::test]
async fn a_forbidden_list_is_retried_until_rbac_allows_it() {
    let script = Script {
        lists: vec![("7".into(), vec![pod("a", NODE, "Running", &["10.0.0.5"])])],
        watches: vec![vec![]],
        forbidden_lists: 1,
    };
    let (addr, double) = serve(script).await;
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(pods::watch(client(addr), selector(LABELS), tx));
    assert_eq!(recv(&mut rx, "a up after the retry").await, up("a", &["10.0.0.5"]));
    let lists = queries(&double).iter().filter(|q| !q.watch).count();
    assert_eq!(lists, 2, "one refused list, one retry");
    task.abort();
}

#[tokio::test]
async fn a_rejected_selector_ends_the_watch_with_the_query_in_the_error() {
    let (addr, _double) = serve(Script { lists: vec![], watches: vec![], forbidden_lists: 0 }).await;
    let (tx, _rx) = mpsc::channel(16);
    let result = tokio::time::timeout(RECV_TIMEOUT, pods::watch(client(addr), selector("app in ("), tx))
        .await
        .expect("a rejected query is not retried");
    let err = result.expect_err("400 from the API server");
    assert!(matches!(err, DiscoveryError::Rejected { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("app in (") && message.contains("spec.nodeName=node-1"), "{message}");
}

#[tokio::test]
async fn an_empty_label_selector_is_refused_before_asking() {
    let (addr, double) = serve(Script { lists: vec![], watches: vec![], forbidden_lists: 0 }).await;
    let (tx, _rx) = mpsc::channel(16);
    let err = pods::watch(client(addr), selector(" "), tx).await.expect_err("refused");
    assert!(matches!(err, DiscoveryError::EmptyLabelSelector), "{err:?}");
    assert!(double.queries.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn an_https_client_builds_with_the_ring_provider() {
    // In-cluster API servers are https: the rustls stack must come up without aws-lc.
    let url = "https://127.0.0.1:6443".parse().expect("url");
    kube::Client::try_from(kube::Config::new(url)).expect("https client");
}
