//! The production pods on this node, from the Kubernetes API.
//!
//! Pods come and go (rollouts, evictions, restarts on another node) and their addresses change
//! with them, so the set of endpoints to capture cannot be written once into a config file. The
//! daemon runs once per node, so it asks the API server only for the production pods *scheduled on
//! its own node*: a label selector (the production Deployment's labels) plus the field selector
//! `spec.nodeName=NODE`, evaluated by the API server, so a node never receives, and never
//! captures, another node's pods. `NODE_NAME` comes from the downward API
//! (`deploy/kubernetes/daemonset.yaml`), and the read-only access comes from
//! `deploy/kubernetes/rbac.yaml`.
//!
//! [`watch`] lists and then watches those pods through [`kube::runtime::watcher`], which keeps the
//! resourceVersion, re-lists when the API server answers `410 Gone` (an expired resourceVersion)
//! and backs off on errors. A pod counts as serving traffic ([`PodChange::Up`]) when its phase is
//! `Running`, it has an IP and it is not terminating; anything else (deleted, terminating, no IP,
//! no longer matching the selectors, or missing from a re-list) is [`PodChange::Down`]. A
//! [`PodTracker`] keeps the last state sent so that consumers receive changes only: the same pod
//! reported twice, or a deleted pod that was already down, produces nothing.
//!
//! Watch errors are retried with backoff (the usual causes, RBAC not yet applied or an API server
//! restart, heal by themselves) and logged with what to check; only a query the API server can
//! never accept (a malformed label selector) ends [`watch`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;

/// The environment variable holding this node's name, set from the downward API
/// (`fieldRef: spec.nodeName`) in the DaemonSet.
pub const NODE_NAME_VAR: &str = "NODE_NAME";

/// Which pods are the production pods to capture on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSelector {
    /// A Kubernetes label selector for the production pods, e.g. `app=ml-inference,version=v1`.
    pub labels: String,
    /// The node this daemon runs on: only pods scheduled here are watched.
    pub node_name: String,
}

impl PodSelector {
    /// The field selector sent to the API server: `spec.nodeName=NODE`.
    pub fn field_selector(&self) -> String {
        format!("spec.nodeName={}", self.node_name)
    }

    fn validate(&self) -> Result<(), DiscoveryError> {
        if self.labels.trim().is_empty() {
            return Err(DiscoveryError::EmptyLabelSelector);
        }
        if self.node_name.trim().is_empty() {
            return Err(DiscoveryError::NodeNameMissing);
        }
        Ok(())
    }
}

/// A production pod that is serving on this node: Running, with an IP, not terminating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductionPod {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID: names one incarnation of a pod (a re-created pod with the same name has a
    /// new UID), and is the key of [`PodChange::Down`].
    pub uid: String,
    /// The primary pod IP (`status.podIP`).
    pub ip: IpAddr,
    /// Every pod IP (`status.podIPs`): one per address family on a dual-stack cluster; always
    /// contains [`ip`](Self::ip).
    pub ips: Vec<IpAddr>,
    /// The pod shares the node's network namespace (`spec.hostNetwork`): it has no veth of its
    /// own, and its traffic crosses the node's interfaces.
    pub host_network: bool,
}

/// A change in the set of production pods serving on this node.
///
/// Consumers key their state by UID: [`Up`](Self::Up) inserts or replaces a pod (it is sent again
/// only if one of its fields changed), [`Down`](Self::Down) removes it. Each `Down` follows an
/// `Up` for the same UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodChange {
    /// The pod is serving, or its details changed.
    Up(ProductionPod),
    /// The pod stopped serving: deleted, terminating, without an IP, or no longer selected.
    Down {
        /// The UID of a pod previously reported [`Up`](Self::Up).
        uid: String,
    },
}

/// Errors from pod discovery, each saying what to check. Each message carries its cause (none is
/// chained as a `source`), so it reads whole in a log line and once at the command line.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `NODE_NAME` is not set (or empty).
    #[error(
        "{NODE_NAME_VAR} is not set: the daemon watches only the pods of the node it runs on. In the \
         DaemonSet set it from the downward API (env {NODE_NAME_VAR}, valueFrom.fieldRef.fieldPath: \
         spec.nodeName, as in deploy/kubernetes/daemonset.yaml); elsewhere pass --node-name (or \
         export {NODE_NAME_VAR}) with the node's name as `kubectl get nodes` shows it"
    )]
    NodeNameMissing,
    /// The label selector is empty, which would make every pod on the node "production".
    #[error(
        "the production pod label selector is empty: it would select every pod on the node; give \
         the production pods' labels, e.g. app=ml-inference,version=v1"
    )]
    EmptyLabelSelector,
    /// Neither an in-cluster service account nor a kubeconfig was found.
    #[error(
        "no Kubernetes API configuration found ({0}): in a pod, check that the ServiceAccount token \
         is mounted (automountServiceAccountToken is not false); outside a cluster, set KUBECONFIG \
         or write ~/.kube/config"
    )]
    Config(kube::config::InferConfigError),
    /// The configuration was found but a client could not be built from it (TLS, credentials).
    #[error("cannot set up a client for the Kubernetes API at {api}: {error}")]
    Client {
        /// The API server's URL.
        api: String,
        /// What kube reported.
        error: kube::Error,
    },
    /// The API server could not be reached (connection, TLS, timeout).
    #[error(
        "cannot reach the Kubernetes API to list/watch pods: {0} (check that this node reaches the \
         API server: KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT in a pod, the kubeconfig's \
         server otherwise)"
    )]
    Unreachable(watcher::Error),
    /// The API server refused the credentials or the permission (401/403).
    #[error(
        "the Kubernetes API refused to list/watch pods ({code} {reason}: {message}) (is the \
         DaemonSet's ServiceAccount bound to the ClusterRole in deploy/kubernetes/rbac.yaml?)"
    )]
    Forbidden {
        /// HTTP status code.
        code: u16,
        /// The API server's reason, e.g. `Forbidden`.
        reason: String,
        /// The API server's message.
        message: String,
    },
    /// The API server cannot evaluate the query (400): retrying will not help.
    #[error(
        "the Kubernetes API rejected the pod query (labelSelector `{labels}`, fieldSelector \
         `{fields}`): {message} (check the label selector's syntax, e.g. app=ml-inference,version=v1)"
    )]
    Rejected {
        /// The label selector sent.
        labels: String,
        /// The field selector sent.
        fields: String,
        /// The API server's message.
        message: String,
    },
    /// Any other failure while listing or watching.
    #[error("listing/watching pods failed: {0}")]
    Watch(watcher::Error),
}

impl DiscoveryError {
    fn from_watch(err: watcher::Error, selector: &PodSelector) -> Self {
        let status = match &err {
            watcher::Error::WatchError(status) => Some(status.as_ref()),
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.as_ref()),
            _ => None,
        };
        match status {
            Some(s) if s.code == 401 || s.code == 403 => {
                Self::Forbidden { code: s.code, reason: s.reason.clone(), message: s.message.clone() }
            }
            Some(s) if s.code == 400 => Self::Rejected {
                labels: selector.labels.clone(),
                fields: selector.field_selector(),
                message: s.message.clone(),
            },
            Some(_) => Self::Watch(err),
            None => match &err {
                watcher::Error::InitialListFailed(kube::Error::HyperError(_) | kube::Error::Service(_))
                | watcher::Error::WatchStartFailed(kube::Error::HyperError(_) | kube::Error::Service(_)) => {
                    Self::Unreachable(err)
                }
                _ => Self::Watch(err),
            },
        }
    }

    /// Whether retrying cannot fix it.
    fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }
}

/// A client for the API server: in-cluster (the pod's ServiceAccount) or else the kubeconfig,
/// as [`kube::Client::try_default`] does.
pub async fn client() -> Result<Client, DiscoveryError> {
    // kube uses rustls with the process-wide crypto provider; install ring explicitly so the
    // choice does not depend on which rustls features other crates enable. An error means one is
    // already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::infer().await.map_err(DiscoveryError::Config)?;
    let api = config.cluster_url.to_string();
    let client =
        Client::try_from(config).map_err(|error| DiscoveryError::Client { api: api.clone(), error })?;
    tracing::info!(api = %api, "Kubernetes API client ready");
    Ok(client)
}

/// Watches the production pods on `selector.node_name` and sends each change to `tx`.
///
/// Runs until `tx` is closed (then returns `Ok`) or the API server rejects the query itself.
/// Transient failures (unreachable API server, missing RBAC, expired resourceVersion) are logged
/// and retried with backoff; after a re-list, pods that disappeared meanwhile are reported
/// [`PodChange::Down`].
pub async fn watch(
    client: Client,
    selector: PodSelector,
    tx: mpsc::Sender<PodChange>,
) -> Result<(), DiscoveryError> {
    selector.validate()?;
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().labels(&selector.labels).fields(&selector.field_selector());
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut tracker = PodTracker::new(selector.node_name.clone());
    // The last failure logged, so a failure repeating through the backoff is logged once.
    let mut failing: Option<String> = None;
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            () = tx.closed() => return Ok(()),
        };
        let Some(item) = item else { return Ok(()) };
        match item {
            Ok(event) => {
                if failing.take().is_some() {
                    tracing::info!(labels = %selector.labels, "pod watch recovered");
                }
                for change in tracker.apply(event) {
                    if tx.send(change).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Err(err) => {
                let gone = matches!(&err, watcher::Error::WatchError(s) if s.code == 410);
                let err = DiscoveryError::from_watch(err, &selector);
                if err.is_permanent() {
                    return Err(err);
                }
                if gone {
                    // The resourceVersion expired: the watcher re-lists, nothing is lost.
                    tracing::debug!(error = %err, "pod watch expired; re-listing");
                } else {
                    let message = err.to_string();
                    if failing.as_ref() == Some(&message) {
                        tracing::debug!(error = %message, "pod watch still failing; retrying with backoff");
                    } else {
                        tracing::warn!(error = %message, "pod watch failed; retrying with backoff");
                        failing = Some(message);
                    }
                }
            }
        }
    }
}

/// The last state sent for each pod, turning watch events into [`PodChange`]s.
///
/// Pure: feed it the [`watcher::Event`]s in order; [`watch`] does exactly that.
#[derive(Debug)]
pub struct PodTracker {
    node_name: String,
    up: HashMap<String, ProductionPod>,
    /// UIDs seen since the last `Init`, while a (re-)list is in progress.
    relisted: Option<HashSet<String>>,
}

impl PodTracker {
    /// A tracker with no pod up, for pods scheduled on `node_name`.
    pub fn new(node_name: String) -> Self {
        Self { node_name, up: HashMap::new(), relisted: None }
    }

    /// The changes implied by one watcher event, in a deterministic order.
    pub fn apply(&mut self, event: watcher::Event<Pod>) -> Vec<PodChange> {
        match event {
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (self.relisted.as_mut(), pod.metadata.uid.as_ref()) {
                    seen.insert(uid.clone());
                }
                self.applied(&pod).into_iter().collect()
            }
            watcher::Event::Apply(pod) => self.applied(&pod).into_iter().collect(),
            watcher::Event::Delete(pod) => {
                pod.metadata.uid.and_then(|uid| self.down(uid)).into_iter().collect()
            }
            watcher::Event::InitDone => {
                let Some(seen) = self.relisted.take() else { return Vec::new() };
                let mut gone: Vec<String> =
                    self.up.keys().filter(|uid| !seen.contains(*uid)).cloned().collect();
                gone.sort();
                gone.into_iter().filter_map(|uid| self.down(uid)).collect()
            }
        }
    }

    fn applied(&mut self, pod: &Pod) -> Option<PodChange> {
        let uid = pod.metadata.uid.as_ref()?;
        match production_pod(pod, &self.node_name) {
            Some(serving) => {
                if self.up.get(uid) == Some(&serving) {
                    return None;
                }
                self.up.insert(uid.clone(), serving.clone());
                Some(PodChange::Up(serving))
            }
            None => self.down(uid.clone()),
        }
    }

    fn down(&mut self, uid: String) -> Option<PodChange> {
        self.up.remove(&uid).map(|_| PodChange::Down { uid })
    }
}

/// The pod as a [`ProductionPod`] if it is serving on `node_name`: scheduled there (checked again
/// here, the API server already filtered), phase `Running`, not terminating, with an IP.
pub fn production_pod(pod: &Pod, node_name: &str) -> Option<ProductionPod> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    if spec.node_name.as_deref() != Some(node_name) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let primary = status.pod_ip.as_deref().and_then(parse_ip);
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in primary.into_iter().chain(status.pod_ips.iter().flatten().filter_map(|p| parse_ip(&p.ip))) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let ip = *ips.first()?;
    Some(ProductionPod {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone()?,
        ip,
        ips,
        host_network: spec.host_network.unwrap_or(false),
    })
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    match text.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            if !text.is_empty() {
                tracing::warn!(ip = text, "ignoring a pod IP that is not an IP address");
            }
            None
        }
    }
}
