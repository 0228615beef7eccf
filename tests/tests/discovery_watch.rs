//! Pod discovery (`mirror_daemon::discovery::pods::watch`) against the live API-server double
//! (`mirror_tests::kube_api`): the Kubernetes list/watch JSON, resourceVersions, selectors evaluated
//! by the server, `410 Gone` and `403 Forbidden`, and pods changing while the watch is open.

use std::{net::IpAddr, time::Duration};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use mirror_daemon::discovery::pods::{self, DiscoveryError, PodChange, PodSelector, ProductionPod};
use mirror_tests::{
    gate::kernel_tests_allowed,
    kube_api::{self, KubeApi, Query, terminating},
    netns::Netns,
    scratch_file,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const LABELS: &str = "app=ml-inference,version=v1";
const PRODUCTION: &[(&str, &str)] = &[("app", "ml-inference"), ("version", "v1")];
const NAMESPACE: &str = "prod";
const NODE: &str = "node-1";
/// Long enough for two rounds of the watcher's backoff (0.8 s and up, with jitter).
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A production pod in `prod`.
fn prod(name: &str, node: &str, phase: &str, ips: &[&str]) -> Value {
    kube_api::pod(NAMESPACE, name, PRODUCTION, node, phase, ips)
}

fn up(name: &str, ips: &[&str]) -> PodChange {
    let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().expect("test IP")).collect();
    PodChange::Up(ProductionPod {
        namespace: NAMESPACE.into(),
        name: name.into(),
        uid: format!("uid-{NAMESPACE}-{name}"),
        ip: ips[0],
        ips,
        host_network: false,
    })
}

fn down(name: &str) -> PodChange {
    PodChange::Down { uid: format!("uid-{NAMESPACE}-{name}") }
}

fn client(api: &KubeApi) -> kube::Client {
    let url = api.url().parse().expect("the double's URL");
    kube::Client::try_from(kube::Config::new(url)).expect("client for the double")
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

/// Waits (yielding to the watch task) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "not {what} within {RECV_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks every query carried the production selectors, and returns them.
fn queries(api: &KubeApi) -> Vec<Query> {
    let queries = api.queries();
    for q in &queries {
        assert_eq!(q.label_selector.as_deref(), Some(LABELS), "{q:?}");
        assert_eq!(q.field_selector.as_deref(), Some("spec.nodeName=node-1"), "{q:?}");
    }
    queries
}

fn lists(queries: &[Query]) -> usize {
    queries.iter().filter(|q| !q.watch).count()
}

#[tokio::test]
async fn changes_follow_list_and_watch() {
    let api = KubeApi::start();
    api.apply(prod("a", NODE, "Running", &["10.0.0.5"]));
    api.apply(prod("b", NODE, "Pending", &[]));
    api.apply(prod("x", "node-2", "Running", &["10.0.1.9"]));
    let listed = api.resource_version();
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(pods::watch(client(&api), selector(LABELS), tx));
    assert_eq!(recv(&mut rx, "a up from the list").await, up("a", &["10.0.0.5"]));
    until("watching", || api.open_watches() == 1).await;

    api.apply(prod("b", NODE, "Running", &["10.0.0.6"]));
    api.apply(prod("y", "node-2", "Running", &["10.0.1.7"]));
    api.bookmark();
    api.apply(terminating(prod("a", NODE, "Running", &["10.0.0.5"])));
    api.apply(prod("c", NODE, "Running", &["10.0.0.7", "fd00::7"]));
    // Already down since it started terminating: no second Down.
    api.delete(NAMESPACE, "a");
    // Nothing the daemon looks at changed: nothing to report.
    let mut b = prod("b", NODE, "Running", &["10.0.0.6"]);
    b["metadata"]["annotations"] = json!({ "note": "touched" });
    api.apply(b);
    api.apply(prod("c", NODE, "Succeeded", &["10.0.0.7", "fd00::7"]));

    let mut got = Vec::new();
    for what in ["b up", "a down", "c up", "c down"] {
        got.push(recv(&mut rx, what).await);
    }
    assert_eq!(got, vec![up("b", &["10.0.0.6"]), down("a"), up("c", &["10.0.0.7", "fd00::7"]), down("c")]);
    expect_quiet(&mut rx).await;

    let queries = queries(&api);
    assert!(!queries[0].watch, "starts with a list: {queries:?}");
    let watches: Vec<&Query> = queries.iter().filter(|q| q.watch).collect();
    assert_eq!(watches.len(), 1, "one watch, kept open: {queries:?}");
    assert_eq!(
        watches[0].resource_version.as_deref(),
        Some(listed.as_str()),
        "watches from the list's version"
    );

    drop(rx);
    let result = tokio::time::timeout(RECV_TIMEOUT, task).await.expect("ends once rx is dropped");
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
}

#[tokio::test]
async fn relabelled_pods_leave_and_rejoin_the_watch() {
    let api = KubeApi::start();
    api.apply(prod("a", NODE, "Running", &["10.0.0.5"]));
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(pods::watch(client(&api), selector(LABELS), tx));
    assert_eq!(recv(&mut rx, "a up from the list").await, up("a", &["10.0.0.5"]));
    until("watching", || api.open_watches() == 1).await;

    // No longer selected: the server turns the update into DELETED for this watch (the daemon
    // itself does not look at labels, so only that makes it Down).
    let v2 = [("app", "ml-inference"), ("version", "v2")];
    api.apply(kube_api::pod(NAMESPACE, "a", &v2, NODE, "Running", &["10.0.0.5"]));
    assert_eq!(recv(&mut rx, "a down once relabelled").await, down("a"));
    // Selected again: ADDED.
    api.apply(prod("a", NODE, "Running", &["10.0.0.5"]));
    assert_eq!(recv(&mut rx, "a up once relabelled back").await, up("a", &["10.0.0.5"]));
    // Created and deleted while the watch is open; another node's pod never shows.
    api.apply(prod("z", "node-2", "Running", &["10.0.1.2"]));
    api.apply(prod("d", NODE, "Running", &["10.0.0.8"]));
    assert_eq!(recv(&mut rx, "d up").await, up("d", &["10.0.0.8"]));
    api.delete(NAMESPACE, "d");
    assert_eq!(recv(&mut rx, "d down").await, down("d"));
    api.delete(NAMESPACE, "z");
    expect_quiet(&mut rx).await;

    let queries = queries(&api);
    assert_eq!((lists(&queries), queries.len()), (1, 2), "one list, one watch: {queries:?}");
    task.abort();
}

#[tokio::test]
async fn expired_watch_relists_and_reports_what_disappeared() {
    let api = KubeApi::start();
    api.apply(prod("a", NODE, "Running", &["10.0.0.5"]));
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(pods::watch(client(&api), selector(LABELS), tx));
    assert_eq!(recv(&mut rx, "a up").await, up("a", &["10.0.0.5"]));
    until("watching", || api.open_watches() == 1).await;

    // The watch expires (410), and the re-list is refused once, so the pods change while the daemon
    // sees nothing, as when it is cut off from the API server: it must learn it from the re-list.
    api.forbid_lists(1);
    api.expire_watches();
    until("re-listing", || lists(&api.queries()) == 2).await;
    api.delete(NAMESPACE, "a");
    api.apply(prod("b", NODE, "Running", &["10.0.0.6"]));
    api.apply(prod("a2", NODE, "Pending", &[]));
    let relisted = api.resource_version();

    assert_eq!(recv(&mut rx, "b up after the re-list").await, up("b", &["10.0.0.6"]));
    assert_eq!(recv(&mut rx, "a down after the re-list").await, down("a"));
    expect_quiet(&mut rx).await;

    let queries = queries(&api);
    assert_eq!(lists(&queries), 3, "listed, re-listed after 410 Gone (refused once): {queries:?}");
    let last_watch = queries.iter().rev().find(|q| q.watch).expect("a watch");
    assert_eq!(last_watch.resource_version.as_deref(), Some(relisted.as_str()), "{queries:?}");
    task.abort();
}

#[tokio::test]
async fn a_forbidden_list_is_retried_until_rbac_allows_it() {
    let api = KubeApi::start();
    api.apply(prod("a", NODE, "Running", &["10.0.0.5"]));
    api.forbid_lists(1);
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(pods::watch(client(&api), selector(LABELS), tx));
    assert_eq!(recv(&mut rx, "a up after the retry").await, up("a", &["10.0.0.5"]));
    assert_eq!(lists(&queries(&api)), 2, "one refused list, one retry");
    task.abort();
}

#[tokio::test]
async fn a_rejected_selector_ends_the_watch_with_the_query_in_the_error() {
    let api = KubeApi::start();
    let (tx, _rx) = mpsc::channel(16);
    let result = tokio::time::timeout(RECV_TIMEOUT, pods::watch(client(&api), selector("app in ("), tx))
        .await
        .expect("a rejected query is not retried");
    let err = result.expect_err("400 from the API server");
    assert!(matches!(err, DiscoveryError::Rejected { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("app in (") && message.contains("spec.nodeName=node-1"), "{message}");
    assert!(message.contains("unable to parse requirement"), "the server's reason: {message}");
    let queries = api.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert_eq!(queries[0].label_selector.as_deref(), Some("app in ("), "sent as typed");
}

#[tokio::test]
async fn an_empty_label_selector_is_refused_before_asking() {
    let api = KubeApi::start();
    let (tx, _rx) = mpsc::channel(16);
    let err = pods::watch(client(&api), selector(" "), tx).await.expect_err("refused");
    assert!(matches!(err, DiscoveryError::EmptyLabelSelector), "{err:?}");
    assert!(api.queries().is_empty());
}

#[tokio::test]
async fn an_https_client_builds_with_the_ring_provider() {
    // In-cluster API servers are https: the rustls stack must come up without aws-lc.
    let url = "https://127.0.0.1:6443".parse().expect("url");
    kube::Client::try_from(kube::Config::new(url)).expect("https client");
}

/// The double itself, through kube's plain `Api`: lists, and watches from an expired version.
#[tokio::test]
async fn the_double_lists_and_expires_like_the_api_server() {
    let api = KubeApi::start();
    api.apply(prod("a", NODE, "Running", &["10.0.0.5"]));
    api.apply(prod("x", "node-2", "Running", &["10.0.1.9"]));
    let pods: Api<Pod> = Api::all(client(&api));

    let list = pods.list(&ListParams::default().fields("spec.nodeName=node-1")).await.expect("list");
    let names: Vec<_> = list.items.iter().map(|p| p.metadata.name.as_deref().unwrap_or("")).collect();
    assert_eq!(names, ["a"]);
    assert_eq!(list.metadata.resource_version.as_deref(), Some(api.resource_version().as_str()));

    let old = api.resource_version();
    api.expire_watches();
    let mut events = pods.watch(&WatchParams::default(), &old).await.expect("watch").boxed();
    match tokio::time::timeout(RECV_TIMEOUT, events.next()).await.expect("an event") {
        Some(Ok(WatchEvent::Error(status))) => assert_eq!(status.code, 410, "{status:?}"),
        other => panic!("expected 410 Expired, got {other:?}"),
    }
    // From the current version the watch stays open and sees changes.
    let mut events =
        pods.watch(&WatchParams::default(), &api.resource_version()).await.expect("watch").boxed();
    api.delete(NAMESPACE, "x");
    match tokio::time::timeout(RECV_TIMEOUT, events.next()).await.expect("an event") {
        Some(Ok(WatchEvent::Deleted(pod))) => assert_eq!(pod.metadata.name.as_deref(), Some("x")),
        other => panic!("expected x DELETED, got {other:?}"),
    }
}

/// A sync test with the double inside a network namespace, reached through a kubeconfig.
#[test]
fn serves_inside_a_network_namespace_through_a_kubeconfig() {
    if !kernel_tests_allowed("serves_inside_a_network_namespace_through_a_kubeconfig") {
        return;
    }
    let ns = Netns::new("kube");
    let api = KubeApi::start_in(&ns);
    api.apply(prod("a", NODE, "Running", &["10.0.0.5"]));
    let kubeconfig = scratch_file("kubeconfig-netns.yaml");
    api.write_kubeconfig(&kubeconfig);

    let first = ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let config = kube::config::Kubeconfig::read_from(&kubeconfig).expect("read the kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
                .await
                .expect("config from the kubeconfig");
            let client = kube::Client::try_from(config).expect("client");
            let (tx, mut rx) = mpsc::channel(16);
            let task = tokio::spawn(pods::watch(client, selector(LABELS), tx));
            let first = recv(&mut rx, "a up inside the namespace").await;
            task.abort();
            first
        })
    });
    assert_eq!(first, up("a", &["10.0.0.5"]));
    let queries = api.queries();
    assert!(queries.first().is_some_and(|q| !q.watch), "listed from inside the namespace: {queries:?}");
}
