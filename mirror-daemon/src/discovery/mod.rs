//! Finding what to capture on a Kubernetes node, and keeping the kernel programs on it.
//!
//! The chain, one module per step: [`pods`] watches the production pods scheduled on this node
//! through the API server; [`follow`] finds the host-side interface that carries each pod's
//! traffic ([`interfaces`]: routed and bridged CNIs, hostNetwork pods); [`targets`] keeps the
//! wanted interfaces and server addresses (the configuration's and the pods'); [`attach`] brings
//! the kernel to them.
pub mod attach;
pub mod follow;
pub mod interfaces;
pub mod pods;
pub mod targets;
