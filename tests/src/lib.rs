//! Support for shadow mirror's integration tests and demo: real network namespaces, a real HTTP
//! model server, a client that records every byte it exchanges, and readers for pcap files.
//!
//! Tests built on this panic with context instead of returning `Result`, so a failure shows where.
//! Traffic only ever goes to addresses inside namespaces created here.
pub mod caps;
pub mod client;
pub mod daemon;
pub mod expr;
pub mod gate;
pub mod grpc;
pub mod image;
pub mod journal;
pub mod kube_api;
pub mod llm;
pub mod load;
pub mod model_server;
pub mod netns;
pub mod nginx;
pub mod pcap_streams;
pub mod python;

use std::{path::PathBuf, process::Child};

/// A child process killed on drop (servers, tcpdump, load tools).
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A file path in this test process's scratch directory.
pub fn scratch_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// A binary built next to the running test binary (target/<profile>/NAME).
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is missing: build it with `cargo xtask build --debug`", bin.display());
    bin
}

/// The JSON lines of a record file written by the daemon (none if it does not exist yet).
pub fn read_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l}: {e}")))
        .collect()
}

/// Lowercase hex SHA-256, as the daemon writes it in records.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}
