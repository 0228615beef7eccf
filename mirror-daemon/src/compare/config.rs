//! The rules a comparison follows, deserializable from the daemon's config file.
//!
//! Defaults are strict (exact numbers, no extra ignores) so that a comparison never reports
//! agreement the operator did not ask for; the protocol-specific ignores that every candidate model
//! needs (its own name, version, response id, timestamps) are on by default and listed in
//! [`super::protocol::default_ignores`].
use serde::Deserialize;

/// Default cap on a decoded body: large enough for real tensors, small enough to stop a zip bomb.
pub const DEFAULT_MAX_DECODED_BYTES: usize = 256 * 1024 * 1024;

/// Default number of [`super::Diff`]s kept per comparison (all are counted).
pub const DEFAULT_MAX_DIFFS: usize = 10;

/// How to compare two answers.
///
/// Numeric tolerance: two numbers `a` and `b` agree within tolerance when
/// `|a - b| <= abs_tolerance` or `|a - b| <= rel_tolerance * max(|a|, |b|)`. With both tolerances
/// at 0 (the default) only equal numbers agree, so [`super::Verdict::WithinTolerance`] needs a
/// non-zero tolerance. Negative or NaN tolerances behave as 0.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompareRules {
    /// Parts of the body never compared: RFC 6901 JSON Pointers (`/id`, `/a~1b` for key `a/b`,
    /// `/a~0b` for key `a~b`) where a segment that is exactly `*` matches any one segment and `**`
    /// any number of segments (`/outputs/*/name`, `**/timestamp`). A leading `/` is optional.
    pub ignore: Vec<String>,
    /// Absolute numeric tolerance.
    pub abs_tolerance: f64,
    /// Relative numeric tolerance, as a fraction of the larger magnitude.
    pub rel_tolerance: f64,
    /// Which protocol to compare as; `auto` detects it from the path and the body.
    pub protocol: ProtocolChoice,
    /// How many differences to keep in [`super::Comparison::diffs`].
    pub max_diffs: usize,
    /// Cap on a body's size after undoing `Content-Encoding`; a larger body is a mismatch.
    pub max_decoded_bytes: usize,
    /// Whether the protocol's default ignores apply (e.g. `/model_name` for the Open Inference
    /// Protocol, `/id` and `/created` for OpenAI).
    pub protocol_default_ignores: bool,
}

impl Default for CompareRules {
    fn default() -> Self {
        Self {
            ignore: Vec::new(),
            abs_tolerance: 0.0,
            rel_tolerance: 0.0,
            protocol: ProtocolChoice::Auto,
            max_diffs: DEFAULT_MAX_DIFFS,
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
            protocol_default_ignores: true,
        }
    }
}

/// The protocol to compare as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolChoice {
    /// Detect from the request path and the production body's JSON shape.
    #[default]
    Auto,
    /// Open Inference Protocol (KServe v2, Triton).
    Oip,
    /// TensorFlow Serving `predictions`.
    TfServing,
    /// MLflow `/invocations` (`predictions` or a bare array).
    Mlflow,
    /// OpenAI-compatible completions and chat completions.
    #[serde(rename = "openai")]
    OpenAi,
    /// Generic JSON.
    Json,
    /// Raw bytes.
    Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializes_with_defaults_for_missing_fields() {
        let rules: CompareRules =
            serde_json::from_str(r#"{"ignore": ["/id"], "rel_tolerance": 0.01, "protocol": "openai"}"#)
                .unwrap();
        assert_eq!(rules.ignore, vec!["/id".to_string()]);
        assert_eq!(rules.rel_tolerance, 0.01);
        assert_eq!(rules.abs_tolerance, 0.0);
        assert_eq!(rules.protocol, ProtocolChoice::OpenAi);
        assert_eq!(rules.max_diffs, 10);
        assert_eq!(rules.max_decoded_bytes, DEFAULT_MAX_DECODED_BYTES);
        assert!(rules.protocol_default_ignores);
        let choice: ProtocolChoice = serde_json::from_str(r#""tf_serving""#).unwrap();
        assert_eq!(choice, ProtocolChoice::TfServing);
    }

    #[test]
    fn rejects_unknown_fields_and_protocols() {
        assert!(serde_json::from_str::<CompareRules>(r#"{"tolerance": 1}"#).is_err());
        assert!(serde_json::from_str::<CompareRules>(r#"{"protocol": "grpc"}"#).is_err());
    }
}
