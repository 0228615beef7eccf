//! Replaying captured production requests to shadow deployments, never at production's expense:
//! sampled ([`sample`]), rewritten ([`request`]), sent by a bounded, pooled client ([`client`])
//! whose concurrency follows the shadow ([`concurrency`]), and joined with the production
//! response ([`join`]) for comparison.
pub mod client;
pub mod concurrency;
pub mod join;
pub mod request;
pub mod sample;
pub mod target;
