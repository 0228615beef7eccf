//! A live Kubernetes API-server double for pods: `GET /api/v1/pods` lists and watches, with real
//! selectors, resourceVersions, and the watch semantics clients rely on.
//!
//! The daemon discovers its production pods by listing and then watching them through the API
//! server (`mirror_daemon::discovery::pods`). This double lets that code, and the daemon binary with
//! `KUBECONFIG`, be tested against the real Kubernetes JSON and watch behaviour without a cluster:
//! tests change pods while a watch is open ([`KubeApi::apply`], [`KubeApi::delete`]), refuse lists as
//! before RBAC is applied ([`KubeApi::forbid_lists`]), and expire resourceVersions as etcd
//! compaction does ([`KubeApi::expire_watches`]).
//!
//! What it serves, as the real API server does:
//!
//! - a list answers the pods matching `labelSelector` and `fieldSelector` at the current
//!   resourceVersion, in one page (`limit` is accepted; no `continue` is ever returned);
//! - a watch streams newline-delimited events: first every change after its `resourceVersion`
//!   (or, without one or with `0`, the current pods as `ADDED`), then live changes. A modified pod
//!   that stops matching the selectors is sent as `DELETED`, one that starts matching as `ADDED`,
//!   as the API server's watch cache does. A watch from a compacted resourceVersion gets an `ERROR`
//!   event with a `410 Expired` Status. `timeoutSeconds` ends the watch;
//! - label selectors `k=v`, `k==v`, `k!=v`, `k`, `!k` (comma-separated, all must hold); the only
//!   field selector is `spec.nodeName=NODE`. Anything else is a `400 BadRequest` Status.
//!
//! The server runs on its own thread with its own tokio runtime, so synchronous and asynchronous
//! tests use it alike; it stops when the [`KubeApi`] is dropped.
use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

/// Changes kept for watches to resume from; older ones are compacted away (bounded memory).
const HISTORY_LIMIT: usize = 10_000;
/// Watch events buffered per watch before the stream waits for its client.
const WATCH_BUFFER: usize = 64;

/// One `GET /api/v1/pods` as the double received it, with the query values decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `watch=true` (or `1`): a watch rather than a list.
    pub watch: bool,
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
}

/// A running API-server double; see the [module documentation](self). Shuts down on drop.
#[derive(Debug)]
pub struct KubeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl KubeApi {
    /// Serves on an already-bound listener.
    ///
    /// The listener may have been bound inside a network namespace
    /// (`ns.run(|| TcpListener::bind("127.0.0.1:0"))`): the connections it accepts stay there.
    pub fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("the double's listener has an address");
        listener.set_nonblocking(true).expect("make the double's listener non-blocking");
        let shared = Arc::new(Shared::new());
        let (stop, stopped) = oneshot::channel();
        let server = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("kube-api-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for the API-server double");
                runtime.block_on(accept(listener, server, stopped));
                // Dropping the runtime drops every connection, which ends open watches.
            })
            .expect("spawn the API-server double's thread");
        Self { addr, shared, stop: Some(stop), thread: Some(thread) }
    }

    /// Serves on 127.0.0.1 (an ephemeral port) in the caller's network namespace.
    pub fn start() -> Self {
        Self::serve(TcpListener::bind("127.0.0.1:0").expect("bind the API-server double on 127.0.0.1"))
    }

    /// Serves on 127.0.0.1 (an ephemeral port) inside `ns`: reachable only from there.
    pub fn start_in(ns: &crate::netns::Netns) -> Self {
        let name = ns.name.clone();
        let listener = ns.run(move || {
            TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("bind the API-server double on 127.0.0.1 in {name}: {e}"))
        });
        Self::serve(listener)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (plain http, no credentials) to `path`, for clients run
    /// with `KUBECONFIG=path`.
    pub fn write_kubeconfig(&self, path: &Path) {
        let config = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: double\n  cluster:\n    server: {}\n\
             users:\n\
             - name: double\n  user: {{}}\n\
             contexts:\n\
             - name: double\n  context:\n    cluster: double\n    user: double\n\
             current-context: double\n",
            self.url()
        );
        std::fs::write(path, config).unwrap_or_else(|e| panic!("write kubeconfig {}: {e}", path.display()));
    }

    /// Creates or replaces a pod (keyed by namespace and name) at the next resourceVersion, and sends
    /// `ADDED` or `MODIFIED` to the watches it matches.
    ///
    /// As on the real API server, an update that changes nothing (apart from
    /// `metadata.resourceVersion`) writes nothing: no new resourceVersion, no event.
    pub fn apply(&self, pod: Value) {
        let key = pod_key(&pod);
        let mut state = self.shared.lock();
        let prev = state.pods.get(&key).cloned();
        if prev.as_ref().is_some_and(|prev| same_object(prev, &pod)) {
            return;
        }
        state.rv += 1;
        let mut pod = pod;
        pod["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        state.pods.insert(key, pod.clone());
        state.record(Some(pod), prev);
        drop(state);
        self.shared.notify();
    }

    /// Deletes a pod at the next resourceVersion and sends `DELETED` (with its last state) to the
    /// watches it matched. Panics if there is no such pod.
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut state = self.shared.lock();
        let Some(prev) = state.pods.remove(&(namespace.to_owned(), name.to_owned())) else {
            drop(state);
            panic!("the API-server double has no pod {namespace}/{name} to delete");
        };
        state.rv += 1;
        state.record(None, Some(prev));
        drop(state);
        self.shared.notify();
    }

    /// The next `n` lists answer `403 Forbidden`, as before the RBAC binding is applied.
    pub fn forbid_lists(&self, n: usize) {
        self.shared.lock().forbidden_lists = n;
    }

    /// Compacts the history, as etcd does: every open watch ends with an `ERROR` event carrying a
    /// `410 Expired` Status, and so does any watch asking for a resourceVersion handed out before
    /// now, so clients must re-list.
    pub fn expire_watches(&self) {
        let mut state = self.shared.lock();
        // A write elsewhere in etcd: every resourceVersion handed out so far is now compacted.
        state.rv += 1;
        state.compacted = state.rv;
        state.history.clear();
        drop(state);
        self.shared.notify();
    }

    /// Sends a `BOOKMARK` at the current resourceVersion to every open watch that allows them, as
    /// the API server does periodically.
    pub fn bookmark(&self) {
        self.shared.lock().bookmarks += 1;
        self.shared.notify();
    }

    /// The current resourceVersion: what a list would answer now.
    pub fn resource_version(&self) -> String {
        self.shared.lock().rv.to_string()
    }

    /// How many watches are streaming now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Every `GET /api/v1/pods` received so far, in order.
    pub fn queries(&self) -> Vec<Query> {
        self.shared.lock().queries.clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the server thread is reported by the test that caused it.
            let _ = thread.join();
        }
    }
}

/// A pod as the API server returns it, with `metadata.uid` `uid-{namespace}-{name}` and, when
/// `ips` is not empty, `status.podIP` (the first) and `status.podIPs`.
pub fn pod(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    node: &str,
    phase: &str,
    ips: &[&str],
) -> Value {
    let mut status = json!({ "phase": phase });
    if let Some(first) = ips.first() {
        status["podIP"] = json!(first);
        status["podIPs"] = json!(ips.iter().map(|ip| json!({ "ip": ip })).collect::<Vec<_>>());
    }
    let labels: serde_json::Map<String, Value> =
        labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("uid-{namespace}-{name}"),
            "labels": labels,
        },
        "spec": {
            "nodeName": node,
            "containers": [{ "name": "server", "image": "ml-inference:v1" }],
        },
        "status": status,
    })
}

/// The pod marked for deletion (`metadata.deletionTimestamp`), as during its grace period.
pub fn terminating(mut pod: Value) -> Value {
    pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    pod
}

/// A Kubernetes `Status` object for a failure.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn pod_key(pod: &Value) -> (String, String) {
    let field = |name: &str| {
        pod["metadata"][name]
            .as_str()
            .unwrap_or_else(|| panic!("a pod for the API-server double needs metadata.{name}: {pod}"))
            .to_owned()
    };
    (field("namespace"), field("name"))
}

/// Equal apart from `metadata.resourceVersion`.
fn same_object(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// One write: `object` is the new state (`None` once deleted), `prev` the state before (`None`
/// when created).
#[derive(Debug)]
struct Change {
    rv: u64,
    object: Option<Value>,
    prev: Option<Value>,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    /// Every change after `compacted`, oldest first.
    history: VecDeque<Change>,
    /// Watches from an older resourceVersion get `410 Expired`.
    compacted: u64,
    /// Bookmarks asked for so far.
    bookmarks: u64,
    forbidden_lists: usize,
    queries: Vec<Query>,
}

impl State {
    fn record(&mut self, object: Option<Value>, prev: Option<Value>) {
        self.history.push_back(Change { rv: self.rv, object, prev });
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = self.compacted.max(dropped.rv);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped after every change, waking the watches.
    changed: watch::Sender<u64>,
    open_watches: AtomicUsize,
}

impl Shared {
    fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
            open_watches: AtomicUsize::new(0),
        }
    }

    /// The state, even after a panic elsewhere (a failing test) poisoned the lock.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let listener =
        tokio::net::TcpListener::from_std(listener).expect("register the double's listener with tokio");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors or a connection reset before accept: try the next one.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = handle(&shared, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that goes away mid-request or mid-watch is not an error of the double.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("static response parts are valid")
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status(code.as_u16(), reason, message))
}

fn handle(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/api/v1/pods" {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let params = parse_query(req.uri().query().unwrap_or(""));
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let query = Query {
        watch: param("watch").is_some_and(|w| w == "true" || w == "1"),
        label_selector: param("labelSelector"),
        field_selector: param("fieldSelector"),
        resource_version: param("resourceVersion"),
    };
    let mut state = shared.lock();
    state.queries.push(query.clone());
    if req.method() != Method::GET {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the API-server double serves only GET /api/v1/pods",
        );
    }
    // Authorization comes before the request is looked at, as in the API server's filter chain.
    if !query.watch && state.forbidden_lists > 0 {
        state.forbidden_lists -= 1;
        return failure(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "pods is forbidden: User \"system:serviceaccount:shadow-mirror:shadow-mirror\" cannot list \
             resource \"pods\" in API group \"\" at the cluster scope",
        );
    }
    let filter = match Filter::parse(query.label_selector.as_deref(), query.field_selector.as_deref()) {
        Ok(filter) => filter,
        Err(message) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    if !query.watch {
        let items: Vec<Value> = state.pods.values().filter(|p| filter.matches(p)).map(list_item).collect();
        return json_response(
            StatusCode::OK,
            &json!({
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": { "resourceVersion": state.rv.to_string() },
                "items": items,
            }),
        );
    }

    let rv = query.resource_version.as_deref().unwrap_or("");
    let from = match rv {
        // "Any" and "most recent": the current pods first, as ADDED.
        "" | "0" => None,
        rv => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                let message = format!("invalid resource version: {rv:?}");
                return failure(StatusCode::BAD_REQUEST, "BadRequest", &message);
            }
        },
    };
    let initial_events_end = param("sendInitialEvents").is_some_and(|s| s == "true");
    let watch = Watch {
        filter,
        bookmarks: param("allowWatchBookmarks").is_some_and(|b| b == "true"),
        bookmarks_seen: state.bookmarks,
        timeout: param("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs),
    };
    let mut first = Vec::new();
    let cursor = match from {
        Some(rv) => rv,
        None => {
            first.extend(state.pods.values().filter(|p| watch.filter.matches(p)).map(|p| event("ADDED", p)));
            if initial_events_end {
                first.push(event("BOOKMARK", &bookmark(state.rv, true)));
            }
            state.rv
        }
    };
    // Counted here, under the lock, so a watch is open for the tests as soon as it is recorded.
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    drop(state);

    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let guard = OpenWatch(Arc::clone(shared));
    tokio::spawn(async move { stream(&guard.0, watch, cursor, first, tx).await });
    Response::builder()
        .header("content-type", "application/json")
        .body(WatchBody(rx).boxed())
        .expect("static response parts are valid")
}

/// Counts a streaming watch until dropped.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What one watch sends.
#[derive(Debug)]
struct Watch {
    filter: Filter,
    bookmarks: bool,
    bookmarks_seen: u64,
    timeout: Option<Duration>,
}

/// Streams `first`, then every change after `cursor`, until the client goes away, the history is
/// compacted past the watch (410), or its timeout.
async fn stream(
    shared: &Shared,
    mut watch: Watch,
    mut cursor: u64,
    first: Vec<Value>,
    tx: mpsc::Sender<Bytes>,
) {
    let deadline = watch.timeout.map(|t| tokio::time::Instant::now() + t);
    // Subscribed before the first look at the state, so no change is missed.
    let mut changed = shared.changed.subscribe();
    let mut lines = first;
    loop {
        let mut expired = false;
        {
            let state = shared.lock();
            if cursor < state.compacted {
                let message = format!("too old resource version: {cursor} ({})", state.compacted);
                lines.push(event("ERROR", &status(410, "Expired", &message)));
                expired = true;
            } else {
                for change in state.history.iter().filter(|c| c.rv > cursor) {
                    lines.extend(watch.filter.event_for(change));
                }
                cursor = state.rv;
                if state.bookmarks != watch.bookmarks_seen {
                    watch.bookmarks_seen = state.bookmarks;
                    if watch.bookmarks {
                        lines.push(event("BOOKMARK", &bookmark(state.rv, false)));
                    }
                }
            }
        }
        for line in lines.drain(..) {
            if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            woken = changed.changed() => if woken.is_err() { return },
            () = tx.closed() => return,
            () = timeout => return,
        }
    }
}

/// The body of a watch response: the lines [`stream`] sends, as they come.
struct WatchBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|line| line.map(|line| Ok(Frame::data(line))))
    }
}

fn event(kind: &str, object: &Value) -> Value {
    json!({ "type": kind, "object": object })
}

fn bookmark(rv: u64, initial_events_end: bool) -> Value {
    let mut object = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": { "resourceVersion": rv.to_string() },
    });
    if initial_events_end {
        object["metadata"]["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    object
}

/// Items of a list carry no `kind`/`apiVersion`: the list has them.
fn list_item(pod: &Value) -> Value {
    let mut item = pod.clone();
    if let Some(object) = item.as_object_mut() {
        object.remove("kind");
        object.remove("apiVersion");
    }
    item
}

/// The query's `key=value` pairs, percent-decoded (`+` is a space).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One label requirement.
#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let requirement = if let Some((key, value)) = text.split_once("!=") {
            Self::NotEquals(key.trim().to_owned(), value.trim().to_owned())
        } else if let Some((key, value)) = text.split_once("==").or_else(|| text.split_once('=')) {
            Self::Equals(key.trim().to_owned(), value.trim().to_owned())
        } else if let Some(key) = text.strip_prefix('!') {
            Self::NotExists(key.trim().to_owned())
        } else {
            Self::Exists(text.to_owned())
        };
        let (key, value) = match &requirement {
            Self::Equals(k, v) | Self::NotEquals(k, v) => (k, v.as_str()),
            Self::Exists(k) | Self::NotExists(k) => (k, ""),
        };
        if valid_key(key) && valid_value(value) {
            Ok(requirement)
        } else {
            Err(format!(
                "unable to parse requirement: {text:?} (the API-server double understands k=v, k==v, \
                 k!=v, k and !k, comma-separated)"
            ))
        }
    }

    fn matches(&self, labels: &serde_json::Map<String, Value>) -> bool {
        let label = |key: &String| labels.get(key).and_then(Value::as_str);
        match self {
            Self::Equals(key, value) => label(key) == Some(value.as_str()),
            Self::NotEquals(key, value) => label(key) != Some(value.as_str()),
            Self::Exists(key) => label(key).is_some(),
            Self::NotExists(key) => label(key).is_none(),
        }
    }
}

fn name_chars(text: &str, extra: &[char]) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    edge(text.chars().next())
        && edge(text.chars().last())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// `[prefix/]name`, as Kubernetes label keys.
fn valid_key(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    (prefix.is_empty() || name_chars(prefix, &['-', '.']))
        && name.len() <= 63
        && name_chars(name, &['-', '_', '.'])
}

fn valid_value(value: &str) -> bool {
    value.is_empty() || (value.len() <= 63 && name_chars(value, &['-', '_', '.']))
}

/// Which pods a query selects.
#[derive(Debug)]
struct Filter {
    labels: Vec<Requirement>,
    node: Option<String>,
}

impl Filter {
    fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        let labels = match labels.map(str::trim) {
            None | Some("") => Vec::new(),
            Some(labels) => labels.split(',').map(Requirement::parse).collect::<Result<_, _>>()?,
        };
        let node = match fields.map(str::trim) {
            None | Some("") => None,
            Some(fields) => {
                let node = fields
                    .strip_prefix("spec.nodeName==")
                    .or_else(|| fields.strip_prefix("spec.nodeName="))
                    .filter(|node| !node.contains(','));
                let Some(node) = node else {
                    return Err(format!(
                        "field label not supported: {fields:?} (the API-server double understands \
                         spec.nodeName=NODE only)"
                    ));
                };
                Some(node.to_owned())
            }
        };
        Ok(Self { labels, node })
    }

    fn matches(&self, pod: &Value) -> bool {
        let empty = serde_json::Map::new();
        let labels = pod["metadata"]["labels"].as_object().unwrap_or(&empty);
        let on_node =
            self.node.as_deref().is_none_or(|node| pod["spec"]["nodeName"].as_str().unwrap_or("") == node);
        on_node && self.labels.iter().all(|r| r.matches(labels))
    }

    /// The event this watch sees for a change, as the API server's watch cache decides it.
    fn event_for(&self, change: &Change) -> Option<Value> {
        let now = change.object.as_ref().is_some_and(|o| self.matches(o));
        let before = change.prev.as_ref().is_some_and(|p| self.matches(p));
        match (before, now) {
            (false, true) => Some(event("ADDED", change.object.as_ref()?)),
            (true, true) => Some(event("MODIFIED", change.object.as_ref()?)),
            (true, false) => {
                // The last state it was seen in, at the change's resourceVersion.
                let mut gone = change.prev.clone()?;
                gone["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                Some(event("DELETED", &gone))
            }
            (false, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(decode("app+in+%28a%2Cb%29"), "app in (a,b)");
        assert_eq!(decode("spec.nodeName%3Dnode-1"), "spec.nodeName=node-1");
        assert_eq!(decode("100%"), "100%");
    }

    #[test]
    fn label_selectors() {
        let labels = json!({ "app": "ml", "version": "v1" });
        let pod = json!({ "metadata": { "labels": labels }, "spec": { "nodeName": "n" } });
        let matches = |selector: &str| Filter::parse(Some(selector), None).expect(selector).matches(&pod);
        assert!(matches("app=ml,version=v1"));
        assert!(matches("app==ml, version != v2"));
        assert!(matches("app,!track"));
        assert!(!matches("app=ml,version=v2"));
        assert!(!matches("!app"));
        for bad in ["app in (", "app in (ml)", "=ml", "app=m l", "a,,b"] {
            let err = Filter::parse(Some(bad), None).expect_err(bad);
            assert!(err.starts_with("unable to parse requirement"), "{bad}: {err}");
        }
        assert!(Filter::parse(None, Some("metadata.name=x")).is_err());
        assert!(!Filter::parse(None, Some("spec.nodeName=m")).expect("node").matches(&pod));
    }
}
