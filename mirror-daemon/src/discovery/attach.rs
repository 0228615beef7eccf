//! Bringing the kernel programs to the [`CaptureTargets`]: attach where wanted, detach where not,
//! and keep the server-address filter equal to the targets' addresses.
//!
//! Reconciling (compare what should be with what is, then act) rather than replaying each change
//! keeps the kernel right through failures: an attach that failed (an interface not there yet, a
//! typo in a reload) is tried again at the next reconcile, and an interface that vanished with its
//! pod, or whose name now belongs to a new interface, is noticed and re-attached if still wanted.
//! A failure is logged once per interface and message; repeats go to DEBUG.
use std::{collections::BTreeMap, net::IpAddr};

use crate::kernel::KernelCapture;

use super::targets::CaptureTargets;

/// Remembers what was applied and what is failing, between reconciles.
#[derive(Debug)]
pub struct Attacher {
    /// Interface → the last error attaching it, while it fails.
    failing: BTreeMap<String, String>,
    /// The address filter last written to the kernel (addresses, on/off).
    filter: (Vec<IpAddr>, bool),
    /// The last error writing the filter, while it fails.
    filter_failing: Option<String>,
}

impl Attacher {
    /// For a kernel started with this address filter.
    pub fn new(addresses: &[IpAddr], filter: bool) -> Self {
        let mut addresses = addresses.to_vec();
        addresses.sort();
        addresses.dedup();
        Self { failing: BTreeMap::new(), filter: (addresses, filter), filter_failing: None }
    }

    /// Makes the kernel match `targets`.
    pub fn reconcile(&mut self, kernel: &mut KernelCapture, targets: &CaptureTargets) {
        for iface in kernel.vanished_interfaces() {
            tracing::info!(interface = %iface, "interface gone (or re-created); its programs went with it");
            if let Err(err) = kernel.detach_interface(&iface) {
                tracing::debug!(interface = %iface, %err, "detach of a vanished interface");
            }
        }
        let wanted = targets.interfaces();
        let plan = targets.plan(&kernel.interfaces());
        for iface in &plan.detach {
            if let Err(err) = kernel.detach_interface(iface) {
                tracing::error!(interface = %iface, %err, "could not detach");
            }
        }
        self.failing.retain(|iface, _| wanted.contains(iface));
        for iface in &plan.attach {
            match kernel.attach(iface) {
                Ok(()) => {
                    if self.failing.remove(iface).is_some() {
                        tracing::info!(interface = %iface, "attached after earlier failures");
                    }
                }
                Err(err) => {
                    let message = err.to_string();
                    if self.failing.get(iface) == Some(&message) {
                        tracing::debug!(interface = %iface, error = %message, "attach still failing");
                    } else {
                        tracing::error!(interface = %iface, error = %message, "could not attach; retrying");
                        self.failing.insert(iface.clone(), message);
                    }
                }
            }
        }
        let wanted = (targets.addresses(), targets.filter_addresses());
        if wanted != self.filter {
            match kernel.set_server_addrs(&wanted.0, wanted.1) {
                Ok(()) => {
                    let addresses: Vec<String> = wanted.0.iter().map(ToString::to_string).collect();
                    tracing::info!(?addresses, filter = wanted.1, "server-address filter updated");
                    self.filter = wanted;
                    self.filter_failing = None;
                }
                Err(err) => {
                    let message = err.to_string();
                    if self.filter_failing.as_ref() != Some(&message) {
                        tracing::error!(
                            error = %message,
                            "could not update the server-address filter; the previous one stays in force"
                        );
                        self.filter_failing = Some(message);
                    }
                }
            }
        }
    }
}
