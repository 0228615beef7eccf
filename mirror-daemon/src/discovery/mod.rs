//! Finding what to capture on a Kubernetes node: the production pods scheduled here
//! ([`pods`], through the API server) and the host-side interface that carries each pod's traffic
//! ([`interfaces`]).
pub mod attach;
pub mod follow;
pub mod interfaces;
pub mod pods;
pub mod targets;
