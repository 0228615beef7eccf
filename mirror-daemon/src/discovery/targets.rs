//! What the kernel programs must capture: on which interfaces, and for which server addresses.
//!
//! Two sources feed it. The configuration names interfaces and addresses directly (a host, or a
//! node NIC for hostNetwork pods); pod discovery adds the production pods on this node as they
//! come up, with the host-side interface that carries each one's traffic, and removes them when
//! they go. The kernel is then brought to the union by [`CaptureTargets::plan`], which compares
//! what should be attached with what is: an attach that failed is simply planned again next time,
//! and an interface is detached only when neither the configuration nor any pod still needs it
//! (several pods can sit behind one interface: a bridge fallback, or pods sharing a veth).
//!
//! Pure bookkeeping, so every transition is unit-tested; the run loop does the I/O.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

/// A production pod as far as capture is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTarget {
    /// `namespace/name`, for logs.
    pub name: String,
    /// Every address of the pod, for the server-address filter.
    pub ips: Vec<IpAddr>,
    /// The interface carrying its traffic; `None` while it is not known (the lookup failed and is
    /// retried): its addresses are selected anyway, in case a configured interface carries them.
    pub interface: Option<String>,
}

/// The interfaces and addresses to capture.
#[derive(Debug, Default)]
pub struct CaptureTargets {
    /// Pod discovery is on: the address filter selects the pods' addresses (and the configured
    /// ones) even when there are none yet, so that nothing is captured before a pod is up.
    follow_pods: bool,
    configured_interfaces: BTreeSet<String>,
    configured_addrs: BTreeSet<IpAddr>,
    /// Production pods by UID.
    pods: BTreeMap<String, PodTarget>,
}

/// The changes that bring the kernel to the targets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub attach: Vec<String>,
    pub detach: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.attach.is_empty() && self.detach.is_empty()
    }
}

impl CaptureTargets {
    /// Targets with only what the configuration names; `follow_pods` when pod discovery is on.
    pub fn new(follow_pods: bool, interfaces: &[String], addrs: &[IpAddr]) -> Self {
        let mut targets = Self { follow_pods, ..Self::default() };
        targets.configure(interfaces, addrs);
        targets
    }

    /// Replaces what the configuration names (a reload); pods are kept.
    pub fn configure(&mut self, interfaces: &[String], addrs: &[IpAddr]) {
        self.configured_interfaces = interfaces.iter().cloned().collect();
        self.configured_addrs = addrs.iter().copied().collect();
    }

    /// A pod is up (or changed). Returns whether anything changed.
    pub fn pod_up(&mut self, uid: &str, pod: PodTarget) -> bool {
        self.pods.insert(uid.to_string(), pod.clone()).as_ref() != Some(&pod)
    }

    /// A pod is gone; returns it if it was known.
    pub fn pod_down(&mut self, uid: &str) -> Option<PodTarget> {
        self.pods.remove(uid)
    }

    /// Every interface that must carry the programs.
    pub fn interfaces(&self) -> BTreeSet<String> {
        let from_pods = self.pods.values().filter_map(|p| p.interface.clone());
        self.configured_interfaces.iter().cloned().chain(from_pods).collect()
    }

    /// The server addresses to select, sorted.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let from_pods = self.pods.values().flat_map(|p| p.ips.iter().copied());
        let all: BTreeSet<IpAddr> = self.configured_addrs.iter().copied().chain(from_pods).collect();
        all.into_iter().collect()
    }

    /// Whether the kernel filters on [`addresses`](Self::addresses): with pod discovery always
    /// (no pod yet = nothing to capture), otherwise when addresses were configured.
    pub fn filter_addresses(&self) -> bool {
        self.follow_pods || !self.configured_addrs.is_empty()
    }

    /// The production pods known, by UID.
    pub fn pods(&self) -> &BTreeMap<String, PodTarget> {
        &self.pods
    }

    /// What to attach and detach, given the interfaces the programs are on now.
    pub fn plan(&self, attached: &[String]) -> Plan {
        let wanted = self.interfaces();
        Plan {
            attach: wanted.iter().filter(|i| !attached.contains(i)).cloned().collect(),
            detach: attached.iter().filter(|i| !wanted.contains(*i)).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod(ips: &[&str], interface: Option<&str>) -> PodTarget {
        PodTarget {
            name: "prod/p".into(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            interface: interface.map(Into::into),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn interfaces_stay_until_their_last_pod_leaves() {
        let mut t = CaptureTargets::new(true, &[], &[]);
        assert!(t.filter_addresses() && t.addresses().is_empty(), "nothing selected before a pod");
        assert!(t.pod_up("a", pod(&["10.244.1.7"], Some("cni0"))));
        assert!(t.pod_up("b", pod(&["10.244.1.8"], Some("cni0"))));
        assert!(t.pod_up("c", pod(&["10.244.1.9", "fd00::9"], Some("cali1"))));
        assert_eq!(t.plan(&[]), Plan { attach: names(&["cali1", "cni0"]), detach: vec![] });
        assert_eq!(t.addresses(), [ip("10.244.1.7"), ip("10.244.1.8"), ip("10.244.1.9"), ip("fd00::9")]);
        let attached = names(&["cali1", "cni0"]);
        assert!(t.pod_down("a").is_some());
        assert!(t.plan(&attached).is_empty(), "b still uses cni0");
        assert!(t.pod_down("b").is_some());
        assert_eq!(t.plan(&attached), Plan { attach: vec![], detach: names(&["cni0"]) });
        assert!(t.pod_down("b").is_none(), "already gone");
        assert_eq!(t.addresses(), [ip("10.244.1.9"), ip("fd00::9")]);
    }

    #[test]
    fn configured_interfaces_are_never_detached_for_pods() {
        let mut t = CaptureTargets::new(true, &names(&["eth0"]), &[ip("192.0.2.1")]);
        t.pod_up("a", pod(&["10.0.0.1"], Some("eth0")));
        assert!(t.interfaces().contains("eth0"));
        t.pod_down("a");
        assert!(t.interfaces().contains("eth0"), "still configured");
        assert!(t.plan(&names(&["eth0"])).is_empty());
        assert_eq!(t.addresses(), [ip("192.0.2.1")]);
        // A reload drops it from the configuration: now it goes.
        t.configure(&[], &[]);
        assert_eq!(t.plan(&names(&["eth0"])).detach, ["eth0"]);
    }

    #[test]
    fn a_pod_moving_or_changing_is_one_update() {
        let mut t = CaptureTargets::new(true, &[], &[]);
        t.pod_up("a", pod(&["10.0.0.1"], Some("veth1")));
        assert!(!t.pod_up("a", pod(&["10.0.0.1"], Some("veth1"))), "same state: no change");
        assert!(t.pod_up("a", pod(&["10.0.0.2"], Some("veth2"))));
        assert_eq!(t.addresses(), [ip("10.0.0.2")]);
        assert_eq!(t.plan(&names(&["veth1"])), Plan { attach: names(&["veth2"]), detach: names(&["veth1"]) });
    }

    #[test]
    fn a_pod_without_a_known_interface_is_still_selected() {
        let mut t = CaptureTargets::new(true, &[], &[]);
        t.pod_up("a", pod(&["10.0.0.1"], None));
        assert_eq!(t.addresses(), [ip("10.0.0.1")]);
        assert!(t.plan(&[]).is_empty());
        // A failed attach is planned again until it succeeds.
        t.pod_up("a", pod(&["10.0.0.1"], Some("veth1")));
        assert_eq!(t.plan(&[]).attach, ["veth1"]);
        assert_eq!(t.plan(&[]).attach, ["veth1"]);
    }

    #[test]
    fn without_pods_the_filter_follows_the_configuration() {
        assert!(!CaptureTargets::new(false, &names(&["eth0"]), &[]).filter_addresses(), "all addresses");
        assert!(CaptureTargets::new(false, &[], &[ip("10.0.0.1")]).filter_addresses());
    }
}
