//! Following production pods as they come and go: which interfaces must carry the capture
//! programs and which addresses the kernel filter must select.
//!
//! Pure bookkeeping, so every transition is unit-tested: several pods can sit behind one interface
//! (a bridge fallback, or pods sharing a host veth in some CNIs), so interfaces are reference
//! counted and detached only when their last pod leaves.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// What the daemon must do to the kernel after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Attach(String),
    Detach(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Tracked {
    ips: Vec<IpAddr>,
    interface: String,
}

/// The production pods on this node and the interfaces they use.
#[derive(Debug, Default)]
pub struct AttachmentTracker {
    pods: HashMap<String, Tracked>,
    interfaces: BTreeMap<String, usize>,
}

impl AttachmentTracker {
    /// A pod (by uid) is up with these addresses behind `interface`. Moving to another interface
    /// (a restarted pod keeps its uid only across in-place changes) detaches the old one if unused.
    pub fn up(&mut self, uid: &str, ips: Vec<IpAddr>, interface: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(old) = self.pods.get(uid) {
            if old.interface == interface {
                self.pods.insert(uid.to_string(), Tracked { ips, interface: interface.to_string() });
                return actions;
            }
            actions.extend(self.down(uid));
        }
        let count = self.interfaces.entry(interface.to_string()).or_insert(0);
        *count += 1;
        if *count == 1 {
            actions.push(Action::Attach(interface.to_string()));
        }
        self.pods.insert(uid.to_string(), Tracked { ips, interface: interface.to_string() });
        actions
    }

    /// A pod is gone (deleted, terminating, lost its address, no longer matching).
    pub fn down(&mut self, uid: &str) -> Vec<Action> {
        let Some(gone) = self.pods.remove(uid) else { return Vec::new() };
        match self.interfaces.get_mut(&gone.interface) {
            Some(count) if *count > 1 => {
                *count -= 1;
                Vec::new()
            }
            _ => {
                self.interfaces.remove(&gone.interface);
                vec![Action::Detach(gone.interface)]
            }
        }
    }

    /// Every production pod address, for the kernel's server-address filter.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.pods.values().flat_map(|p| p.ips.iter().copied()).collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Interfaces in use, with how many pods each carries.
    pub fn interfaces(&self) -> &BTreeMap<String, usize> {
        &self.interfaces
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn attaches_on_first_pod_and_detaches_after_the_last() {
        let mut t = AttachmentTracker::default();
        assert_eq!(t.up("a", vec![ip("10.244.1.7")], "cni0"), vec![Action::Attach("cni0".into())]);
        assert_eq!(t.up("b", vec![ip("10.244.1.8")], "cni0"), vec![], "shared interface");
        assert_eq!(
            t.up("c", vec![ip("10.244.1.9"), ip("fd00::9")], "cali1"),
            vec![Action::Attach("cali1".into())]
        );
        assert_eq!(t.addresses(), vec![ip("10.244.1.7"), ip("10.244.1.8"), ip("10.244.1.9"), ip("fd00::9")]);
        assert_eq!(t.down("a"), vec![], "b still uses cni0");
        assert_eq!(t.down("b"), vec![Action::Detach("cni0".into())]);
        assert_eq!(t.down("b"), vec![], "already gone");
        assert_eq!(t.addresses(), vec![ip("10.244.1.9"), ip("fd00::9")]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn updates_in_place_and_moves_between_interfaces() {
        let mut t = AttachmentTracker::default();
        t.up("a", vec![ip("10.0.0.1")], "veth1");
        assert_eq!(t.up("a", vec![ip("10.0.0.2")], "veth1"), vec![], "new address, same interface");
        assert_eq!(t.addresses(), vec![ip("10.0.0.2")]);
        assert_eq!(
            t.up("a", vec![ip("10.0.0.3")], "veth2"),
            vec![Action::Detach("veth1".into()), Action::Attach("veth2".into())]
        );
        assert_eq!(t.interfaces().len(), 1);
        assert_eq!(t.down("a"), vec![Action::Detach("veth2".into())]);
        assert!(t.is_empty() && t.addresses().is_empty());
    }
}
