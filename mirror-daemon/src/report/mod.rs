//! What the daemon tells people: one JSON record per exchange (schema in the README) and the
//! periodic summary of exchanges and of every drop counter.
pub mod aggregate;
pub mod criteria;
pub mod document;
pub mod record;
pub mod summary;
