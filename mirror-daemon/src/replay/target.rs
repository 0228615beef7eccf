//! Models and shadow endpoints, described as in a model registry: `model_id`, `version`,
//! `is_production`, plus where the shadow deployment listens.
//!
//! A model server usually serves two protocols on two ports (Triton 8000 HTTP / 8001 gRPC, KServe
//! and MLServer 8080 / 8081), and so does its shadow: a shadow names one endpoint per protocol —
//! `http://` for HTTP/1.x requests, `h2c://` (or its synonym `grpc://`) for HTTP/2 ones, gRPC or
//! not. When the shadow runs the same image as production (its Service has production's ports),
//! naming the host alone is enough: each request goes to that host on the port it was captured on,
//! in its own protocol.
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::exchange::HttpVersion;

/// A model as the team names it (`{"model_id": "model-v2", "version": "1.0.0", "is_production": false}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub model_id: String,
    pub version: String,
    #[serde(default)]
    pub is_production: bool,
}

/// How a replay reaches the shadow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// HTTP/1.1 over TCP.
    Http1,
    /// HTTP/2 over TCP with prior knowledge (h2c), as gRPC without TLS.
    H2c,
}

impl Transport {
    /// The transport that replays a request carried by `version`.
    pub fn for_version(version: HttpVersion) -> Self {
        match version {
            HttpVersion::Http2 => Transport::H2c,
            HttpVersion::Http10 | HttpVersion::Http11 => Transport::Http1,
        }
    }

    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Http1 => "http",
            Transport::H2c => "h2c",
        }
    }
}

/// One endpoint: `host:port` and an optional path prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub transport: Transport,
    /// `host:port` (IPv6 in brackets), also the `Host` (`:authority`) sent by default.
    pub authority: String,
    /// Prefix prepended to every replayed path ("" for none), e.g. `/shadow`.
    pub path_prefix: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.transport.scheme(), self.authority, self.path_prefix)
    }
}

/// Where a shadow's replays go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Named endpoints, at most one per transport.
    Fixed(Vec<Endpoint>),
    /// The same image as production: this host, on the port each request was captured on.
    SameImage { host: String },
}

/// A shadow deployment to replay requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowTarget {
    pub model: ModelInfo,
    pub endpoints: Endpoints,
}

/// Why a `--shadow` value was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "shadow `{0}`: expected [MODEL_ID[@VERSION]=]URL[,URL] with URLs http://HOST:PORT[/PREFIX] or h2c://HOST:PORT, or [MODEL_ID[@VERSION]=]HOST, e.g. model-v2@1.0.0=http://10.0.0.7:8080,h2c://10.0.0.7:8081"
    )]
    Syntax(String),
    #[error(
        "shadow `{0}`: only http:// and h2c:// (grpc://) endpoints are supported (replay inside the cluster, next to the model, without TLS)"
    )]
    Scheme(String),
    #[error(
        "shadow `{0}`: the endpoint needs a port, e.g. http://shadow:8080 (or name the host alone to use the captured ports)"
    )]
    NoPort(String),
    #[error("shadow `{0}`: two endpoints for the same protocol; give one http:// and one h2c:// at most")]
    Duplicate(String),
}

fn endpoint(url: &str, text: &str) -> Result<Endpoint, TargetError> {
    let (transport, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Transport::Http1, rest)
    } else if let Some(rest) = url.strip_prefix("h2c://").or_else(|| url.strip_prefix("grpc://")) {
        (Transport::H2c, rest)
    } else if url.contains("://") {
        return Err(TargetError::Scheme(text.into()));
    } else {
        return Err(TargetError::Syntax(text.into()));
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let port = authority.rsplit_once(':').map(|(_, p)| p).filter(|p| !p.contains(']'));
    match port {
        None => return Err(TargetError::NoPort(text.into())),
        Some(p) if p.parse::<u16>().map_or(true, |p| p == 0) => return Err(TargetError::Syntax(text.into())),
        Some(_) => {}
    }
    if authority.starts_with(':') || authority.is_empty() {
        return Err(TargetError::Syntax(text.into()));
    }
    Ok(Endpoint { transport, authority: authority.to_string(), path_prefix: prefix.to_string() })
}

/// A bare host: a DNS name, an IPv4 address, or a bracketed IPv6 address — no port, no path.
fn bare_host(text: &str) -> Option<String> {
    let ok = if let Some(v6) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    ok.then(|| text.to_string())
}

impl ShadowTarget {
    /// Parses `[MODEL_ID[@VERSION]=]URL[,URL]` or `[MODEL_ID[@VERSION]=]HOST`.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let (name, spec) = match text.split_once('=') {
            Some((name, spec)) if !name.contains("://") => (Some(name), spec),
            _ => (None, text),
        };
        let endpoints = if !spec.contains("://")
            && let Some(host) = bare_host(spec)
        {
            Endpoints::SameImage { host }
        } else {
            let mut list: Vec<Endpoint> = Vec::new();
            for url in spec.split(',') {
                let e = endpoint(url.trim(), text)?;
                if list.iter().any(|other| other.transport == e.transport) {
                    return Err(TargetError::Duplicate(text.into()));
                }
                list.push(e);
            }
            Endpoints::Fixed(list)
        };
        let default_name = match &endpoints {
            Endpoints::Fixed(list) => list.first().map(|e| e.authority.clone()).unwrap_or_default(),
            Endpoints::SameImage { host } => host.clone(),
        };
        let (model_id, version) = match name {
            Some(name) => match name.split_once('@') {
                Some((id, version)) => (id.to_string(), version.to_string()),
                None => (name.to_string(), "unknown".to_string()),
            },
            None => (default_name, "unknown".to_string()),
        };
        if model_id.is_empty() {
            return Err(TargetError::Syntax(text.into()));
        }
        Ok(Self { model: ModelInfo { model_id, version, is_production: false }, endpoints })
    }

    /// Where a request carried by `version` and captured on server port `port` is replayed, if
    /// the shadow has an endpoint for its protocol.
    pub fn endpoint_for(&self, version: HttpVersion, port: u16) -> Option<Endpoint> {
        let transport = Transport::for_version(version);
        match &self.endpoints {
            Endpoints::Fixed(list) => list.iter().find(|e| e.transport == transport).cloned(),
            Endpoints::SameImage { host } => {
                Some(Endpoint { transport, authority: format!("{host}:{port}"), path_prefix: String::new() })
            }
        }
    }

    /// The endpoints as records and logs name them (`http://a:1,h2c://a:2`, or the host with
    /// `:*` for the captured port).
    pub fn endpoints_text(&self) -> String {
        match &self.endpoints {
            Endpoints::Fixed(list) => list.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            Endpoints::SameImage { host } => format!("{host}:*"),
        }
    }
}

impl fmt::Display for ShadowTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} ({})", self.model.model_id, self.model.version, self.endpoints_text())
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

    fn fixed(t: &ShadowTarget) -> Vec<(Transport, &str, &str)> {
        match &t.endpoints {
            Endpoints::Fixed(list) => {
                list.iter().map(|e| (e.transport, e.authority.as_str(), e.path_prefix.as_str())).collect()
            }
            Endpoints::SameImage { .. } => panic!("fixed endpoints expected"),
        }
    }

    #[test]
    fn parses_named_and_bare_targets() {
        let t = ShadowTarget::parse("model-v2@1.0.0=http://10.0.0.7:8080").unwrap();
        assert_eq!(
            t.model,
            ModelInfo { model_id: "model-v2".into(), version: "1.0.0".into(), is_production: false }
        );
        assert_eq!(fixed(&t), [(Transport::Http1, "10.0.0.7:8080", "")]);
        let t = ShadowTarget::parse("http://[fd00::7]:9000/shadow/").unwrap();
        assert_eq!((t.model.model_id.as_str(), t.model.version.as_str()), ("[fd00::7]:9000", "unknown"));
        assert_eq!(fixed(&t), [(Transport::Http1, "[fd00::7]:9000", "/shadow")]);
        let t = ShadowTarget::parse("candidate=http://svc.ns:80").unwrap();
        assert_eq!(t.model.version, "unknown");
        assert_eq!(parse_model("model-v1@1.0.0", true).version, "1.0.0");
    }

    #[test]
    fn one_endpoint_per_protocol() {
        let t = ShadowTarget::parse("model-v2=http://127.0.0.1:9080,h2c://127.0.0.1:9081").unwrap();
        assert_eq!(
            fixed(&t),
            [(Transport::Http1, "127.0.0.1:9080", ""), (Transport::H2c, "127.0.0.1:9081", "")]
        );
        let grpc = ShadowTarget::parse("model-v2=grpc://127.0.0.1:9081").unwrap();
        assert_eq!(fixed(&grpc), [(Transport::H2c, "127.0.0.1:9081", "")], "grpc:// is h2c://");
        assert_eq!(t.endpoint_for(HttpVersion::Http11, 8000).unwrap().authority, "127.0.0.1:9080");
        assert_eq!(t.endpoint_for(HttpVersion::Http2, 8001).unwrap().authority, "127.0.0.1:9081");
        assert_eq!(grpc.endpoint_for(HttpVersion::Http11, 8000), None, "no HTTP/1 endpoint");
        assert_eq!(t.endpoints_text(), "http://127.0.0.1:9080,h2c://127.0.0.1:9081");
        assert!(matches!(ShadowTarget::parse("m=http://a:1,http://b:2"), Err(TargetError::Duplicate(_))));
    }

    #[test]
    fn a_host_alone_uses_the_captured_port_and_protocol() {
        let t = ShadowTarget::parse("model-v2@2=ml-inference-v2.default.svc").unwrap();
        assert_eq!(t.endpoints, Endpoints::SameImage { host: "ml-inference-v2.default.svc".into() });
        let e = t.endpoint_for(HttpVersion::Http2, 8081).unwrap();
        assert_eq!((e.transport, e.authority.as_str()), (Transport::H2c, "ml-inference-v2.default.svc:8081"));
        let e = t.endpoint_for(HttpVersion::Http11, 8080).unwrap();
        assert_eq!(
            (e.transport, e.authority.as_str()),
            (Transport::Http1, "ml-inference-v2.default.svc:8080")
        );
        let v6 = ShadowTarget::parse("m=[fd00::7]").unwrap();
        assert_eq!(v6.endpoint_for(HttpVersion::Http11, 80).unwrap().authority, "[fd00::7]:80");
        assert_eq!(t.endpoints_text(), "ml-inference-v2.default.svc:*");
    }

    #[test]
    fn rejects_with_a_message_that_shows_the_form() {
        assert!(matches!(ShadowTarget::parse("https://x:443"), Err(TargetError::Scheme(_))));
        assert!(matches!(ShadowTarget::parse("http://shadow"), Err(TargetError::NoPort(_))));
        assert!(matches!(ShadowTarget::parse("h2c://shadow"), Err(TargetError::NoPort(_))));
        assert!(matches!(ShadowTarget::parse("http://[fd00::7]"), Err(TargetError::NoPort(_))));
        assert!(matches!(ShadowTarget::parse("shadow:8080"), Err(TargetError::Syntax(_))));
        assert!(matches!(ShadowTarget::parse("http://x:0"), Err(TargetError::Syntax(_))));
        assert!(matches!(ShadowTarget::parse("=http://x:1"), Err(TargetError::Syntax(_))));
        assert!(matches!(ShadowTarget::parse("m=http://x:1,"), Err(TargetError::Syntax(_))));
        let err = ShadowTarget::parse("shadow:8080").unwrap_err().to_string();
        assert!(err.contains("model-v2@1.0.0=http://"), "{err}");
    }
}
