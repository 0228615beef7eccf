//! Embeds the compiled kernel programs into the daemon binary.
//!
//! `cargo xtask build` compiles `mirror-ebpf` first (with Debian's rustc, see TOOLCHAIN notes in the
//! README) and points `MIRROR_EBPF_OBJECT` at the result. Plain `cargo build/check/clippy/test`
//! still work without the BPF toolchain: an empty object is embedded instead, and the binary says
//! "built without the kernel programs: run `cargo xtask build`" when asked to capture.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("mirror.bpf.o");
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../mirror-ebpf/target/bpfel-unknown-none/release/mirror-ebpf");
    println!("cargo:rerun-if-env-changed=MIRROR_EBPF_OBJECT");
    let object = env::var_os("MIRROR_EBPF_OBJECT").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-changed={}", object.display());
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write embedded object"),
        Err(_) => fs::write(&out, []).expect("write empty object"),
    }
}
