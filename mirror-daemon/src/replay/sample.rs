//! Which requests are replayed: a route allow-list and a percentage.
//!
//! The percentage is decided by a hash of the request itself (method, target, body), not by a
//! random draw, so every node of a cluster — and a rerun over the same records — makes the same
//! choice for the same request.
use crate::exchange::Request;

/// Why a request was or was not replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Replay,
    /// Outside the sampled percentage.
    SampledOut,
    /// Not on an allowed route.
    RouteFiltered,
}

impl Decision {
    pub fn reason(self) -> &'static str {
        match self {
            Decision::Replay => "replayed",
            Decision::SampledOut => "sampled_out",
            Decision::RouteFiltered => "route_filtered",
        }
    }
}

/// `[METHOD ]PATH-GLOB`: `*` matches one path segment, `**` any number; no method means any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePattern {
    method: Option<String>,
    segments: Vec<String>,
}

impl RoutePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (method, path) = match text.split_once(' ') {
            Some((m, p)) => (Some(m.to_ascii_uppercase()), p.trim()),
            None => (None, text),
        };
        if !path.starts_with('/') {
            return Err(format!(
                "route `{text}`: expected [METHOD ]/path/glob, e.g. `POST /v2/models/*/infer`"
            ));
        }
        Ok(Self { method, segments: path.split('/').skip(1).map(str::to_string).collect() })
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self.method.as_deref().is_some_and(|m| !m.eq_ignore_ascii_case(method)) {
            return false;
        }
        let path = path.split('?').next().unwrap_or_default();
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        glob(&self.segments, &parts)
    }
}

fn glob(pattern: &[String], parts: &[&str]) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((p, rest)) if p == "**" => (0..=parts.len()).any(|skip| glob(rest, &parts[skip..])),
        Some((p, rest)) => match parts.split_first() {
            Some((part, tail)) => (p == "*" || p == part) && glob(rest, tail),
            None => false,
        },
    }
}

/// The replay policy.
#[derive(Clone, Debug)]
pub struct Sampler {
    /// 0.0–100.0.
    percent: f64,
    routes: Vec<RoutePattern>,
}

impl Sampler {
    /// `routes` empty means every route.
    pub fn new(percent: f64, routes: Vec<RoutePattern>) -> Self {
        Self { percent: percent.clamp(0.0, 100.0), routes }
    }

    pub fn decide(&self, request: &Request) -> Decision {
        if !self.routes.is_empty() && !self.routes.iter().any(|r| r.matches(&request.method, &request.target))
        {
            return Decision::RouteFiltered;
        }
        if self.percent >= 100.0 {
            return Decision::Replay;
        }
        // 1e6 buckets: percentages down to 0.0001 %.
        let bucket = request_hash(request) % 1_000_000;
        if (bucket as f64) < self.percent * 10_000.0 { Decision::Replay } else { Decision::SampledOut }
    }
}

/// FNV-1a over method, target and body: stable across processes, machines and versions.
pub fn request_hash(request: &Request) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [request.method.as_bytes(), b"\0", request.target.as_bytes(), b"\0", &request.body] {
        for &byte in part {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn req(method: &str, target: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            version: Default::default(),
            headers: vec![],
            body: Bytes::copy_from_slice(body.as_bytes()),
            trailers: vec![],
        }
    }

    #[test]
    fn route_globs() {
        let infer = RoutePattern::parse("POST /v2/models/*/infer").unwrap();
        assert!(infer.matches("POST", "/v2/models/resnet/infer"));
        assert!(infer.matches("post", "/v2/models/resnet/infer?debug=1"));
        assert!(!infer.matches("GET", "/v2/models/resnet/infer"));
        assert!(!infer.matches("POST", "/v2/models/resnet/versions/2/infer"));
        let deep = RoutePattern::parse("/v2/**/infer").unwrap();
        assert!(deep.matches("POST", "/v2/models/resnet/versions/2/infer"));
        assert!(deep.matches("GET", "/v2/infer"));
        assert!(!deep.matches("GET", "/v1/infer"));
        assert!(RoutePattern::parse("POST v2/x").is_err());
    }

    #[test]
    fn sampling_is_deterministic_and_close_to_the_percentage() {
        let sampler = Sampler::new(25.0, vec![]);
        let mut replayed = 0;
        for i in 0..20_000 {
            let r = req("POST", "/infer", &format!("{{\"x\":{i}}}"));
            let d = sampler.decide(&r);
            assert_eq!(d, sampler.decide(&r.clone()), "same request, same decision");
            replayed += usize::from(d == Decision::Replay);
        }
        let share = replayed as f64 / 20_000.0;
        assert!((share - 0.25).abs() < 0.02, "{share}");
        assert_eq!(Sampler::new(0.0, vec![]).decide(&req("GET", "/", "")), Decision::SampledOut);
        assert_eq!(Sampler::new(100.0, vec![]).decide(&req("GET", "/", "")), Decision::Replay);
        let only = Sampler::new(100.0, vec![RoutePattern::parse("POST /v2/models/*/infer").unwrap()]);
        assert_eq!(only.decide(&req("GET", "/health", "")), Decision::RouteFiltered);
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // A changed hash would make nodes running different versions sample differently.
        // FNV-1a 64 of "POST\0/v2/models/m/infer\0{\"inputs\":[1]}", computed independently.
        assert_eq!(
            request_hash(&req("POST", "/v2/models/m/infer", "{\"inputs\":[1]}")),
            0x21d4_9632_8b85_224c
        );
        assert_ne!(request_hash(&req("POST", "/a", "b")), request_hash(&req("POST", "/ab", "")));
    }
}
