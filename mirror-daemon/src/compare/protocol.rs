//! Which protocol an exchange speaks, from the request path and the production body's shape.
//!
//! The path is the strongest hint (`/v2/models/{name}/infer` is the Open Inference Protocol
//! whatever the body says), but an error answer on an inference path has no predictions in it, so
//! a hinted protocol is only used when the production body has that protocol's shape; otherwise
//! the bodies are compared as generic JSON. Without a path hint, the body's shape decides.
use serde::Serialize;

use super::{ProtocolChoice, json::Json};

/// The protocol a comparison was made as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Open Inference Protocol (KServe v2, Triton): `outputs[]` tensors.
    Oip,
    /// TensorFlow Serving `predictions`.
    TfServing,
    /// MLflow `/invocations`: `predictions` or a bare array.
    Mlflow,
    /// OpenAI-compatible completions or chat completions: `choices[]`.
    #[serde(rename = "openai")]
    OpenAi,
    /// Generic JSON.
    Json,
    /// Raw bytes (bodies that are not JSON, or not compared).
    Bytes,
}

impl Protocol {
    /// The snake_case name used in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Oip => "oip",
            Protocol::TfServing => "tf_serving",
            Protocol::Mlflow => "mlflow",
            Protocol::OpenAi => "openai",
            Protocol::Json => "json",
            Protocol::Bytes => "bytes",
        }
    }

    pub(crate) fn from_choice(choice: ProtocolChoice) -> Option<Self> {
        match choice {
            ProtocolChoice::Auto => None,
            ProtocolChoice::Oip => Some(Protocol::Oip),
            ProtocolChoice::TfServing => Some(Protocol::TfServing),
            ProtocolChoice::Mlflow => Some(Protocol::Mlflow),
            ProtocolChoice::OpenAi => Some(Protocol::OpenAi),
            ProtocolChoice::Json => Some(Protocol::Json),
            ProtocolChoice::Bytes => Some(Protocol::Bytes),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The protocol the rules or the path name, without looking at bodies.
pub(crate) fn hinted(choice: ProtocolChoice, path: &str) -> Option<Protocol> {
    Protocol::from_choice(choice).or_else(|| from_path(path))
}

/// The protocol a request path belongs to. Prefixes added by gateways are allowed.
pub(crate) fn from_path(path: &str) -> Option<Protocol> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [.., "v2", "models", _, "infer"] | [.., "v2", "models", _, "versions", _, "infer"] => {
            Some(Protocol::Oip)
        }
        [.., "v1", "models", last]
        | [.., "v1", "models", _, "versions", last]
        | [.., "v1", "models", _, "labels", last]
            if last.ends_with(":predict") =>
        {
            Some(Protocol::TfServing)
        }
        [.., "invocations"] => Some(Protocol::Mlflow),
        [.., "completions"] => Some(Protocol::OpenAi),
        _ => None,
    }
}

/// Whether a body has the shape a protocol's adapter needs.
pub(crate) fn fits(protocol: Protocol, body: &Json<'_>) -> bool {
    match protocol {
        Protocol::Oip => body.get("outputs").and_then(Json::as_array).is_some_and(|outputs| {
            body.is_object() && outputs.iter().all(|o| o.is_object() && o.get("data").is_some())
        }),
        Protocol::TfServing => body.get("predictions").is_some_and(Json::is_array),
        Protocol::Mlflow => body.is_array() || body.get("predictions").is_some_and(Json::is_array),
        Protocol::OpenAi => body
            .get("choices")
            .and_then(Json::as_array)
            .is_some_and(|choices| choices.iter().all(Json::is_object)),
        Protocol::Json | Protocol::Bytes => true,
    }
}

/// The protocol to compare two parsed bodies as, and a note when a requested protocol does not fit.
pub(crate) fn choose(
    choice: ProtocolChoice,
    path: &str,
    production: &Json<'_>,
) -> (Protocol, Option<String>) {
    if let Some(forced) = Protocol::from_choice(choice) {
        if fits(forced, production) {
            return (forced, None);
        }
        let note = format!("production body does not have the {forced} shape; compared as json");
        return (Protocol::Json, Some(note));
    }
    if let Some(hint) = from_path(path) {
        return (if fits(hint, production) { hint } else { Protocol::Json }, None);
    }
    // No path hint: a bare array is too common to call MLflow, so only object shapes count.
    let by_shape = [Protocol::Oip, Protocol::OpenAi, Protocol::TfServing]
        .into_iter()
        .find(|&p| production.is_object() && fits(p, production));
    (by_shape.unwrap_or(Protocol::Json), None)
}

/// Ignores every comparison of the protocol applies unless disabled: the parts of an answer that
/// identify the model or the response rather than the prediction.
///
/// - Open Inference Protocol: `/id`, `/model_name`, `/model_version` (a candidate model has its
///   own name and version; ids are per response).
/// - OpenAI: `/id`, `/created`, `/model`, `/system_fingerprint`, `/usage` (token counts are
///   reported in the metrics instead), and the ids of tool calls.
pub fn default_ignores(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Oip => &["/id", "/model_name", "/model_version"],
        Protocol::OpenAi => &[
            "/id",
            "/created",
            "/model",
            "/system_fingerprint",
            "/usage",
            "/choices/*/message/tool_calls/*/id",
        ],
        Protocol::TfServing | Protocol::Mlflow | Protocol::Json | Protocol::Bytes => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serde_json::json!`, as the comparison's value type.
    macro_rules! json {
        ($($t:tt)+) => { Json::from(serde_json::json!($($t)+)) };
    }

    #[test]
    fn paths_hint_protocols() {
        let cases = [
            ("/v2/models/iris/infer", Some(Protocol::Oip)),
            ("/v2/models/iris/versions/3/infer", Some(Protocol::Oip)),
            ("/serving/v2/models/iris/infer?x=1", Some(Protocol::Oip)),
            ("/v2/models/iris/ready", None),
            ("/v1/models/iris:predict", Some(Protocol::TfServing)),
            ("/v1/models/iris/versions/2:predict", Some(Protocol::TfServing)),
            ("/v1/models/iris/labels/stable:predict", Some(Protocol::TfServing)),
            ("/v1/models/iris:classify", None),
            ("/invocations", Some(Protocol::Mlflow)),
            ("/v1/completions", Some(Protocol::OpenAi)),
            ("/v1/chat/completions", Some(Protocol::OpenAi)),
            ("/openai/v1/chat/completions", Some(Protocol::OpenAi)),
            ("/", None),
            ("", None),
            ("/predict", None),
        ];
        for (path, want) in cases {
            assert_eq!(from_path(path), want, "{path}");
        }
    }

    #[test]
    fn shapes_decide_without_a_path_hint() {
        let oip = json!({"outputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1.0]}]});
        let openai = json!({"choices": [{"text": "hi"}]});
        let tf = json!({"predictions": [1, 2]});
        assert_eq!(choose(ProtocolChoice::Auto, "/x", &oip).0, Protocol::Oip);
        assert_eq!(choose(ProtocolChoice::Auto, "/x", &openai).0, Protocol::OpenAi);
        assert_eq!(choose(ProtocolChoice::Auto, "/x", &tf).0, Protocol::TfServing);
        assert_eq!(choose(ProtocolChoice::Auto, "/x", &json!([1, 2])).0, Protocol::Json);
        assert_eq!(choose(ProtocolChoice::Auto, "/invocations", &json!([1, 2])).0, Protocol::Mlflow);
        // The path hint wins, but only with the right shape.
        assert_eq!(choose(ProtocolChoice::Auto, "/v2/models/m/infer", &tf).0, Protocol::Json);
        assert_eq!(
            choose(ProtocolChoice::Auto, "/v2/models/m/infer", &json!({"error": "x"})).0,
            Protocol::Json
        );
        assert_eq!(choose(ProtocolChoice::Auto, "/v2/models/m/infer", &oip).0, Protocol::Oip);
        // Outputs without data are not OIP.
        assert_eq!(
            choose(ProtocolChoice::Auto, "/x", &json!({"outputs": [{"name": "y"}]})).0,
            Protocol::Json
        );
    }

    #[test]
    fn forced_protocols_fall_back_to_json_with_a_note() {
        let (p, note) = choose(ProtocolChoice::Oip, "/v1/completions", &json!({"choices": []}));
        assert_eq!(p, Protocol::Json);
        assert_eq!(note.as_deref(), Some("production body does not have the oip shape; compared as json"));
        let (p, note) = choose(ProtocolChoice::OpenAi, "/anything", &json!({"choices": []}));
        assert_eq!((p, note), (Protocol::OpenAi, None));
        assert_eq!(hinted(ProtocolChoice::Auto, "/invocations"), Some(Protocol::Mlflow));
        assert_eq!(hinted(ProtocolChoice::Bytes, "/invocations"), Some(Protocol::Bytes));
    }
}
