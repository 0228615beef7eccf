//! HTTP/2, passively: one exchange per stream, paired by stream id.
//!
//! The daemon watches connections it is not part of, so every piece here is built for an observer
//! that may have missed bytes or the connection's start:
//!
//! - [`frame`] frames each direction (RFC 9113 §4–6), streaming DATA payloads and reporting every
//!   loss as an event of its own; a direction first seen mid-connection looks for a provable frame
//!   boundary first.
//! - [`hpack`] decodes header blocks per direction (RFC 7541) with a dynamic table that may be only
//!   partly known: entries inserted before capture began (or before bytes were lost) are unknown, and
//!   a block that refers to one is reported unresolved — never guessed.
//! - [`fields`] turns a header list into a request or response head (pseudo-header rules).
//! - [`connection`] follows the streams: request head, DATA and trailers on a client stream, the
//!   response on the same stream id. Pairing is exact; whatever cannot be proven (an unresolved
//!   header block, a gap, a reset stream) drops that stream, counted by reason, and nothing else.
//!
//! gRPC rides on this unchanged: a gRPC call is one stream whose bodies are length-prefixed
//! messages and whose status is in the trailers.
mod connection;
pub mod fields;
pub mod frame;
pub mod hpack;
#[cfg(test)]
mod tests;

pub use connection::Connection;
