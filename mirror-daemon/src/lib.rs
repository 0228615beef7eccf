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
//! - [`assembler`]: the pure pipeline from segments to exchanges: reassembly, then per connection
//!   the framing of its protocol.
//! - [`http1`]: HTTP/1.x framing and first-in-first-out request/response pairing per connection.
//! - [`http2`]: HTTP/2 framing, HPACK and one exchange per stream, paired by stream id.
//! - [`sse`]: server-sent event streams (streamed LLM answers): events, the folded answer, its timing.
//! - [`exchange`]: the rebuilt [`exchange::Exchange`]s, whatever protocol carried them: what every
//!   later stage works on.
//! - [`replay`], [`compare`], [`mirror`], [`report`]: replay to shadows, comparison, and reporting.
//! - [`drops`]: every loss counter of every stage, in one place.
//! - [`metrics`], [`verdict_api`]: the HTTP listener: Prometheus metrics and the verdict as JSON.
//!
//! - [`config`]: the config file (`--config`), checked field by field.
//! - [`budget`]: one memory budget (`--memory-limit`) split into each part's share, and the
//!   accounts that hold the shares after framing.
//!
//! Errors are `thiserror` enums per module; the binary adds context with `anyhow`.
pub mod assembler;
pub mod budget;
pub mod capture;
pub mod compare;
pub mod config;
pub mod discovery;
pub mod drops;
pub mod exchange;
pub mod flows;
pub mod framing;
pub mod grpc;
pub mod http1;
pub mod http2;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod pcap;
pub mod proto;
pub mod replay;
pub mod report;
pub mod sse;
pub mod verdict_api;
