//! Models and shadow endpoints, described as in a model registry: `model_id`, `version`,
//! `is_production`, plus where the shadow deployment listens.
use std::fmt;

use serde::{Deserialize, Serialize};

/// A model as the team names it (`{"model_id": "model-v2", "version": "1.0.0", "is_production": false}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub model_id: String,
    pub version: String,
    #[serde(default)]
    pub is_production: bool,
}

/// A shadow deployment to replay requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowTarget {
    pub model: ModelInfo,
    /// `host:port` (IPv6 in brackets), also the `Host` header sent by default.
    pub authority: String,
    /// Prefix prepended to every replayed path ("" for none), e.g. `/shadow`.
    pub path_prefix: String,
}

/// Why a `--shadow` value was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "shadow `{0}`: expected [MODEL_ID[@VERSION]=]http://HOST:PORT[/PREFIX], e.g. model-v2@1.0.0=http://10.0.0.7:8080"
    )]
    Syntax(String),
    #[error(
        "shadow `{0}`: only http:// endpoints are supported (replay inside the cluster, next to the model)"
    )]
    Scheme(String),
    #[error("shadow `{0}`: the endpoint needs a port, e.g. http://shadow:8080")]
    NoPort(String),
}

impl ShadowTarget {
    /// Parses `[MODEL_ID[@VERSION]=]http://HOST:PORT[/PREFIX]`.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let (name, url) = match text.split_once('=') {
            Some((name, url)) if !name.contains("://") => (Some(name), url),
            _ => (None, text),
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.contains("://") {
                TargetError::Scheme(text.into())
            } else {
                TargetError::Syntax(text.into())
            }
        })?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let port = authority.rsplit_once(':').map(|(_, p)| p).filter(|p| !p.contains(']'));
        match port {
            None => return Err(TargetError::NoPort(text.into())),
            Some(p) if p.parse::<u16>().map_or(true, |p| p == 0) => {
                return Err(TargetError::Syntax(text.into()));
            }
            Some(_) => {}
        }
        if authority.starts_with(':') || authority.is_empty() {
            return Err(TargetError::Syntax(text.into()));
        }
        let (model_id, version) = match name {
            Some(name) => match name.split_once('@') {
                Some((id, version)) => (id.to_string(), version.to_string()),
                None => (name.to_string(), "unknown".to_string()),
            },
            None => (authority.to_string(), "unknown".to_string()),
        };
        if model_id.is_empty() {
            return Err(TargetError::Syntax(text.into()));
        }
        Ok(Self {
            model: ModelInfo { model_id, version, is_production: false },
            authority: authority.to_string(),
            path_prefix: prefix.to_string(),
        })
    }
}

impl fmt::Display for ShadowTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} (http://{}{})",
            self.model.model_id, self.model.version, self.authority, self.path_prefix
        )
    }
}

/// `MODEL_ID[@VERSION]` for the production model's label.
pub fn parse_model(text: &str, is_production: bool) -> ModelInfo {
    let (model_id, version) = text.split_once('@').unwrap_or((text, "unknown"));
    ModelInfo { model_id: model_id.to_string(), version: version.to_string(), is_production }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_and_bare_targets() {
        let t = ShadowTarget::parse("model-v2@1.0.0=http://10.0.0.7:8080").unwrap();
        assert_eq!(
            t.model,
            ModelInfo { model_id: "model-v2".into(), version: "1.0.0".into(), is_production: false }
        );
        assert_eq!((t.authority.as_str(), t.path_prefix.as_str()), ("10.0.0.7:8080", ""));
        let t = ShadowTarget::parse("http://[fd00::7]:9000/shadow/").unwrap();
        assert_eq!((t.model.model_id.as_str(), t.model.version.as_str()), ("[fd00::7]:9000", "unknown"));
        assert_eq!((t.authority.as_str(), t.path_prefix.as_str()), ("[fd00::7]:9000", "/shadow"));
        let t = ShadowTarget::parse("candidate=http://svc.ns:80").unwrap();
        assert_eq!(t.model.version, "unknown");
        assert_eq!(parse_model("model-v1@1.0.0", true).version, "1.0.0");
    }

    #[test]
    fn rejects_with_a_message_that_shows_the_form() {
        assert!(matches!(ShadowTarget::parse("https://x:443"), Err(TargetError::Scheme(_))));
        assert!(matches!(ShadowTarget::parse("http://shadow"), Err(TargetError::NoPort(_))));
        assert!(matches!(ShadowTarget::parse("http://[fd00::7]"), Err(TargetError::NoPort(_))));
        assert!(matches!(ShadowTarget::parse("shadow:8080"), Err(TargetError::Syntax(_))));
        assert!(matches!(ShadowTarget::parse("http://x:0"), Err(TargetError::Syntax(_))));
        assert!(matches!(ShadowTarget::parse("=http://x:1"), Err(TargetError::Syntax(_))));
        let err = ShadowTarget::parse("shadow:8080").unwrap_err().to_string();
        assert!(err.contains("model-v2@1.0.0=http://"), "{err}");
    }
}
