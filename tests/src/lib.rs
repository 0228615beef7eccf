//! Support for shadow mirror's integration tests and demo: real network namespaces, a real HTTP
//! model server, a client that records every byte it exchanges, and readers for pcap files.
//!
//! Tests built on this panic with context instead of returning `Result`, so a failure shows where.
//! Traffic only ever goes to addresses inside namespaces created here.
pub mod client;
pub mod daemon;
pub mod gate;
pub mod model_server;
pub mod netns;
pub mod pcap_streams;
