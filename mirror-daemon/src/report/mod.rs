//! What the daemon tells people: one JSON record per exchange (schema in the README; written,
//! rotated and reopened by [`sink`]) and the periodic summary of exchanges and of every drop counter.
pub mod aggregate;
pub mod criteria;
pub mod document;
pub mod llm;
#[cfg(test)]
mod observation_tests;
pub mod record;
pub mod record_set;
pub mod sink;
pub mod summary;
