//! Embeds the compiled kernel programs into the daemon binary, and generates the built-in gRPC
//! message types.
//!
//! `cargo xtask build` compiles `mirror-ebpf` first (with Debian's rustc, see TOOLCHAIN notes in the
//! README) and points `MIRROR_EBPF_OBJECT` at the result. Plain `cargo build/check/clippy/test`
//! still work without the BPF toolchain: an empty object is embedded instead, and the binary says
//! "built without the kernel programs: run `cargo xtask build`" when asked to capture.
//!
//! The protos under `proto/` (KServe's Open Inference Protocol, TF Serving's Predict) are compiled
//! by protox, a protobuf compiler in Rust, so no `protoc` is needed to build; prost-build turns the
//! descriptor set into Rust types, and the set itself is embedded for `prost-reflect`.
use std::{env, fs, path::PathBuf};

use prost::Message;

/// The vendored protos the daemon understands; their imports are found under `proto/`.
const PROTOS: &[&str] = &["grpc_predict_v2.proto", "tensorflow_serving/apis/prediction_service.proto"];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    kernel_object(&out_dir);
    protos(&out_dir);
}

fn kernel_object(out_dir: &std::path::Path) {
    let out = out_dir.join("mirror.bpf.o");
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../mirror-ebpf/target/bpfel-unknown-none/release/mirror-ebpf");
    println!("cargo:rerun-if-env-changed=MIRROR_EBPF_OBJECT");
    let object = env::var_os("MIRROR_EBPF_OBJECT").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-changed={}", object.display());
    let bytes = fs::read(&object).unwrap_or_default();
    // Written beside and renamed into place, never written through: a target directory seeded
    // with hard links shares `out/mirror.bpf.o` with other trees, and writing the shared file
    // would hand another tree's build (with or without its kernel object) to this one.
    let fresh = out_dir.join("mirror.bpf.o.new");
    fs::write(&fresh, bytes).expect("write the embedded object");
    fs::rename(&fresh, &out).expect("move the embedded object into place");
}

fn protos(out_dir: &std::path::Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile(PROTOS, [&root]).unwrap_or_else(|e| panic!("compile {PROTOS:?}: {e}"));
    fs::write(out_dir.join("builtin_descriptors.bin"), descriptors.encode_to_vec())
        .expect("write the descriptor set");
    prost_build::Config::new()
        .disable_comments(["."])
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generate types from {PROTOS:?}: {e}"));
}
