//! shadow mirror: a node agent that mirrors a model server's HTTP traffic from the kernel.
//!
//! Map of the crate, in the order data flows through it:
//!
//! - [`kernel`]: the seam in front of the kernel — loads the embedded eBPF programs, sets their
//!   filters, attaches them to interfaces, reads their counters. Everything that needs root.
//! - [`capture`]: ring-buffer records decoded into typed [`capture::Segment`]s, and the async reader
//!   that produces them. Everything above this works on segments and is testable without root.
//! - [`pcap`]: writes segments as a standard pcap file.
//! - [`flows`]: TCP reassembly, one ordered byte stream per direction, gaps made explicit.
//! - [`http`]: HTTP/1.1 framing and first-in-first-out request/response pairing per connection.
//! - [`exchange`]: the rebuilt [`exchange::Exchange`]s, drop counters, and the pure
//!   [`exchange::Assembler`] that runs segments through `flows` and `http`.
//!
//! - [`config`]: the config file (`--config`), checked field by field.
//!
//! Errors are `thiserror` enums per module; the binary adds context with `anyhow`.
pub mod capture;
pub mod compare;
pub mod config;
pub mod discovery;
pub mod exchange;
pub mod flows;
pub mod grpc;
pub mod http;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod pcap;
pub mod proto;
pub mod replay;
pub mod report;
