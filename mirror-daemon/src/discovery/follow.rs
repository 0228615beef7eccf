//! Following the production pods: each pod reported up gets the interface that carries its
//! traffic looked up, and the run loop receives the pod with its interface.
//!
//! The lookup runs `ip`/`bridge` commands (and, on the bridged fallback path, visits network
//! namespaces), so it runs on the blocking pool, one pod at a time, in this task: the capture loop
//! never waits for it. A lookup can fail for a moment (a pod reported Running before its CNI has
//! finished, a bridge that has not learned its MAC yet). Such a pod is still passed on, without an
//! interface, so that its addresses are selected, and its lookup is retried every `retry_every`
//! until it succeeds or the pod goes down. A bridged pod whose port could not be found yet (the
//! bridge has not learned its MAC) is captured on the whole bridge meanwhile, and looked up again
//! the same way until its port is found.
use std::{collections::BTreeMap, time::Duration};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::{
    interfaces::{self, Attachment, InterfaceError},
    pods::{PodChange, ProductionPod},
    targets::PodTarget,
};

/// How often failed lookups are retried.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// A change for the run loop: what to capture for a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodEvent {
    /// The pod is up (or its interface became known).
    Up { uid: String, target: PodTarget },
    /// The pod is gone.
    Down { uid: String },
}

/// How a pod's interface is found: [`lookup`] on a node, a stand-in in tests.
pub type Lookup = fn(&ProductionPod) -> Result<Attachment, InterfaceError>;

/// Where a pod's traffic crosses this host.
pub fn lookup(pod: &ProductionPod) -> Result<Attachment, InterfaceError> {
    if pod.host_network {
        interfaces::interface_for_host_network_pod(pod.ip)
    } else {
        interfaces::interface_for_pod(pod.ip)
    }
}

fn name(pod: &ProductionPod) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

/// What one lookup found.
struct Found {
    /// The interface to capture on, if any.
    interface: Option<String>,
    /// Look again later: the lookup failed, or settled for a bridge instead of the pod's port.
    again: bool,
}

/// Looks the pod's interface up on the blocking pool and logs the outcome (at DEBUG on retries
/// that change nothing).
async fn resolve(lookup: Lookup, pod: &ProductionPod, retry: bool, failures: &Counter) -> Found {
    let copy = pod.clone();
    let result = tokio::task::spawn_blocking(move || lookup(&copy)).await.unwrap_or_else(|join| {
        Err(InterfaceError::Parse { command: "lookup".into(), detail: join.to_string() })
    });
    let pod_name = name(pod);
    match result {
        Ok(attachment) => {
            let interface = attachment.interface().to_string();
            match &attachment {
                Attachment::Routed { .. } => {
                    tracing::info!(pod = %pod_name, ip = %pod.ip, %interface, cni = "routed", "production pod up")
                }
                Attachment::BridgePort { bridge, .. } => {
                    tracing::info!(pod = %pod_name, ip = %pod.ip, %interface, %bridge, cni = "bridged", "production pod up")
                }
                Attachment::HostNetwork { .. } => {
                    tracing::info!(pod = %pod_name, ip = %pod.ip, %interface, "production pod up (hostNetwork)")
                }
                Attachment::Bridge { reason, .. } if retry => {
                    tracing::debug!(pod = %pod_name, %interface, %reason, "bridge port still not found");
                }
                Attachment::Bridge { reason, .. } => tracing::warn!(
                    pod = %pod_name, ip = %pod.ip, %interface, %reason, retry_every = ?RETRY_EVERY,
                    "production pod up; capturing on its bridge until its port is found (the address \
                     filter keeps only its traffic)"
                ),
            }
            Found { again: matches!(attachment, Attachment::Bridge { .. }), interface: Some(interface) }
        }
        Err(err) => {
            failures.inc();
            if retry {
                tracing::debug!(pod = %pod_name, ip = %pod.ip, error = %err, "interface lookup still failing");
            } else {
                tracing::warn!(
                    pod = %pod_name, ip = %pod.ip, error = %err,
                    retry_every = ?RETRY_EVERY,
                    "production pod up, but the interface carrying its traffic was not found; retrying"
                );
            }
            Found { interface: None, again: true }
        }
    }
}

fn target(pod: &ProductionPod, interface: Option<String>) -> PodTarget {
    PodTarget { name: name(pod), ips: pod.ips.clone(), interface }
}

/// Turns pod changes into [`PodEvent`]s until `changes` ends or `events` is closed, finding
/// interfaces with `lookup`. `failures` counts failed lookups (first tries and retries).
pub async fn follow(
    mut changes: mpsc::Receiver<PodChange>,
    events: mpsc::Sender<PodEvent>,
    lookup: Lookup,
    failures: Counter,
    retry_every: Duration,
) {
    // Pods to look up again, with the interface they have now.
    let mut unresolved: BTreeMap<String, (ProductionPod, Option<String>)> = BTreeMap::new();
    let mut retry = tokio::time::interval_at(tokio::time::Instant::now() + retry_every, retry_every);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut out = Vec::new();
        tokio::select! {
            change = changes.recv() => match change {
                None => return,
                Some(PodChange::Up(pod)) => {
                    let found = resolve(lookup, &pod, false, &failures).await;
                    if found.again {
                        if unresolved.is_empty() {
                            // The first retry a full period from now, not at a tick long overdue.
                            retry.reset();
                        }
                        unresolved.insert(pod.uid.clone(), (pod.clone(), found.interface.clone()));
                    } else {
                        unresolved.remove(&pod.uid);
                    }
                    out.push(PodEvent::Up { uid: pod.uid.clone(), target: target(&pod, found.interface) });
                }
                Some(PodChange::Down { uid }) => {
                    unresolved.remove(&uid);
                    out.push(PodEvent::Down { uid });
                }
            },
            _ = retry.tick(), if !unresolved.is_empty() => {
                for (uid, (pod, had)) in std::mem::take(&mut unresolved) {
                    let found = resolve(lookup, &pod, true, &failures).await;
                    if found.interface != had {
                        out.push(PodEvent::Up { uid: uid.clone(), target: target(&pod, found.interface.clone()) });
                    }
                    if found.again {
                        unresolved.insert(uid, (pod, found.interface));
                    }
                }
            }
            () = events.closed() => return,
        }
        for event in out {
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn pod(uid: &str, ip: &str) -> ProductionPod {
        let ip = ip.parse().unwrap();
        ProductionPod {
            namespace: "prod".into(),
            name: uid.into(),
            uid: uid.into(),
            ip,
            ips: vec![ip],
            host_network: false,
        }
    }

    /// Pod `a` is found on `veth-a`; pod `late` only from the third lookup on; `never` never;
    /// `bridged` on its bridge at first, then on its port.
    static LATE_CALLS: AtomicUsize = AtomicUsize::new(0);
    static BRIDGED_CALLS: AtomicUsize = AtomicUsize::new(0);
    fn fake_lookup(pod: &ProductionPod) -> Result<Attachment, InterfaceError> {
        let no_route = || InterfaceError::NoRoute { ip: pod.ip, detail: "not yet".into() };
        match pod.uid.as_str() {
            "late" if LATE_CALLS.fetch_add(1, Ordering::SeqCst) < 2 => Err(no_route()),
            "bridged" if BRIDGED_CALLS.fetch_add(1, Ordering::SeqCst) < 2 => {
                Ok(Attachment::Bridge { bridge: "cni0".into(), reason: "no FDB entry yet".into() })
            }
            "bridged" => Ok(Attachment::BridgePort { interface: "vethb".into(), bridge: "cni0".into() }),
            "never" => Err(no_route()),
            uid => Ok(Attachment::Routed { interface: format!("veth-{uid}") }),
        }
    }

    async fn next(rx: &mut mpsc::Receiver<PodEvent>) -> PodEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event in time")
            .expect("open")
    }

    #[tokio::test]
    async fn failed_lookups_pass_the_pod_on_and_are_retried_until_found() {
        let (change_tx, change_rx) = mpsc::channel(8);
        let (event_tx, mut events) = mpsc::channel(8);
        let failures = Counter::default();
        let task = tokio::spawn(follow(
            change_rx,
            event_tx,
            fake_lookup,
            failures.clone(),
            Duration::from_millis(20),
        ));

        change_tx.send(PodChange::Up(pod("a", "10.0.0.1"))).await.unwrap();
        let up = next(&mut events).await;
        let PodEvent::Up { uid, target } = up else { panic!("{up:?}") };
        assert_eq!((uid.as_str(), target.interface.as_deref()), ("a", Some("veth-a")));
        assert_eq!(target.name, "prod/a");

        change_tx.send(PodChange::Up(pod("late", "10.0.0.2"))).await.unwrap();
        change_tx.send(PodChange::Up(pod("never", "10.0.0.3"))).await.unwrap();
        let first = next(&mut events).await;
        assert_eq!(
            first,
            PodEvent::Up {
                uid: "late".into(),
                target: PodTarget {
                    name: "prod/late".into(),
                    ips: vec!["10.0.0.2".parse().unwrap()],
                    interface: None
                }
            },
            "passed on at once without an interface, so its address is selected"
        );
        assert!(
            matches!(next(&mut events).await, PodEvent::Up { uid, target } if uid == "never" && target.interface.is_none())
        );
        let found = next(&mut events).await;
        assert!(
            matches!(&found, PodEvent::Up { uid, target } if uid == "late" && target.interface.as_deref() == Some("veth-late")),
            "{found:?}"
        );
        assert_eq!(LATE_CALLS.load(Ordering::SeqCst), 3, "found on the second retry");
        assert!(failures.get() >= 3, "two failures of `late` and at least one of `never`");

        // A pod that goes down is no longer retried, and its Down is passed on.
        change_tx.send(PodChange::Down { uid: "never".into() }).await.unwrap();
        assert_eq!(next(&mut events).await, PodEvent::Down { uid: "never".into() });
        let settled = failures.get();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(failures.get(), settled, "no retries once nothing is unresolved");
        assert!(events.try_recv().is_err(), "nothing else");

        // A bridge fallback is passed on at once and replaced by the port once it is found, with
        // no event for the retry that found the bridge again.
        change_tx.send(PodChange::Up(pod("bridged", "10.0.0.4"))).await.unwrap();
        let first = next(&mut events).await;
        assert!(
            matches!(&first, PodEvent::Up { uid, target } if uid == "bridged" && target.interface.as_deref() == Some("cni0")),
            "{first:?}"
        );
        let port = next(&mut events).await;
        assert!(
            matches!(&port, PodEvent::Up { uid, target } if uid == "bridged" && target.interface.as_deref() == Some("vethb")),
            "{port:?}"
        );
        assert_eq!(BRIDGED_CALLS.load(Ordering::SeqCst), 3, "bridge, bridge again (no event), port");
        let settled = BRIDGED_CALLS.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(BRIDGED_CALLS.load(Ordering::SeqCst), settled, "the port is final");
        assert!(events.try_recv().is_err(), "nothing else");

        drop(change_tx);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends with its input").unwrap();
    }
}
