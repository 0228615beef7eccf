//! The built-in gRPC message types, generated at build time from the vendored protos in `proto/`
//! (see `build.rs`), and their descriptor set for reflection.
//!
//! - [`inference`]: the Open Inference Protocol (KServe v2 `grpc_predict_v2.proto`), as served by
//!   KServe, Triton and Seldon MLServer: `inference.GRPCInferenceService/ModelInfer`.
//! - [`tensorflow`] and [`tensorflow::serving`]: TF Serving's
//!   `tensorflow.serving.PredictionService/Predict` and the `TensorProto` it carries.

/// The Open Inference Protocol's messages (package `inference`).
#[allow(clippy::all, missing_docs)]
pub mod inference {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

/// TensorFlow's tensor messages (package `tensorflow`).
#[allow(clippy::all, missing_docs)]
pub mod tensorflow {
    include!(concat!(env!("OUT_DIR"), "/tensorflow.rs"));

    /// TF Serving's messages (package `tensorflow.serving`).
    #[allow(clippy::all, missing_docs)]
    pub mod serving {
        include!(concat!(env!("OUT_DIR"), "/tensorflow.serving.rs"));
    }
}

/// The encoded `FileDescriptorSet` of the built-in protos and everything they import.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin_descriptors.bin"));
