//! The request sent to a shadow: the production request as captured, made safe to resend.
//!
//! Hop-by-hop headers belong to the original connection and are dropped (RFC 9110 §7.6.1), the
//! body is sent whole (de-chunked, with its length), `Host` names the shadow unless the original is
//! kept on purpose, and a marker header tells shadow services that this is a replay so they can
//! skip side effects.
//!
//! Over HTTP/2 the authority travels as `:authority` (from the URI), so `host` is left out unless
//! the original is kept; `te: trailers` is the one `te` value HTTP/2 allows and gRPC requires, so it
//! stays. A gRPC request is replayed with its body as captured: the same length-prefixed messages
//! with the same compression flags, and the same `grpc-encoding`.
use bytes::Bytes;

use super::target::{Endpoint, Transport};
use crate::exchange::{Header, Request};

/// Headers that never cross a hop.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
];

/// How requests are rewritten for the shadow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Keep the original `Host` instead of the shadow's authority.
    pub keep_host: bool,
    /// `(name, value)` added to every replayed request; `None` disables it.
    pub marker: Option<(String, String)>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self { keep_host: false, marker: Some(("x-shadow-mirror".into(), "1".into())) }
    }
}

impl ReplayOptions {
    /// Whether `request` carries this daemon's marker: one of its own replays, captured again.
    pub fn is_own_replay(&self, request: &Request) -> bool {
        self.marker.as_ref().is_some_and(|(name, value)| {
            request.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name) && h.value == value.as_bytes())
        })
    }
}

/// A request ready to be sent: absolute URI and the headers to send (Content-Length is added by
/// the client from the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub transport: Transport,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
}

/// Rewrites a captured request for `endpoint`.
pub fn build(request: &Request, endpoint: &Endpoint, options: &ReplayOptions) -> Outgoing {
    let h2 = endpoint.transport == Transport::H2c;
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<String> = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| {
            String::from_utf8_lossy(&h.value)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let drop = |h: &Header| {
        let name = h.name.to_ascii_lowercase();
        let te_trailers = h2 && name == "te" && h.value.eq_ignore_ascii_case(b"trailers");
        (HOP_BY_HOP.contains(&name.as_str()) && !te_trailers)
            || named.contains(&name)
            || (name == "host" && !options.keep_host)
            || options.marker.as_ref().is_some_and(|(m, _)| m.eq_ignore_ascii_case(&name))
    };
    let mut headers: Vec<(String, Bytes)> =
        request.headers.iter().filter(|h| !drop(h)).map(|h| (h.name.clone(), h.value.clone())).collect();
    let has_host = request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("host"));
    if !h2 && (!options.keep_host || !has_host) {
        headers.insert(0, ("host".into(), Bytes::from(endpoint.authority.clone())));
    }
    if let Some((name, value)) = &options.marker {
        headers.push((name.clone(), Bytes::from(value.clone())));
    }
    let target_path =
        if request.target.starts_with('/') { request.target.clone() } else { format!("/{}", request.target) };
    Outgoing {
        transport: endpoint.transport,
        method: request.method.clone(),
        uri: format!("http://{}{}{}", endpoint.authority, endpoint.path_prefix, target_path),
        headers,
        body: request.body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{exchange::HttpVersion, replay::target::ShadowTarget};

    fn endpoint(spec: &str, version: HttpVersion) -> Endpoint {
        ShadowTarget::parse(spec).unwrap().endpoint_for(version, 8080).unwrap()
    }

    fn h(name: &str, value: &str) -> Header {
        Header { name: name.into(), value: Bytes::copy_from_slice(value.as_bytes()) }
    }

    fn request() -> Request {
        Request {
            method: "POST".into(),
            target: "/v2/models/m/infer?x=1".into(),
            version: Default::default(),
            headers: vec![
                h("Host", "ml-inference:80"),
                h("Connection", "keep-alive, X-Hop"),
                h("X-Hop", "secret-route"),
                h("Transfer-Encoding", "chunked"),
                h("Expect", "100-continue"),
                h("Content-Type", "application/json"),
                h("Authorization", "Bearer t"),
                h("X-Shadow-Mirror", "spoofed"),
            ],
            body: Bytes::from_static(b"{\"inputs\":[]}"),
            trailers: vec![],
        }
    }

    fn names(o: &Outgoing) -> Vec<String> {
        o.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect()
    }

    #[test]
    fn rewrites_host_drops_hop_by_hop_adds_marker() {
        let target = endpoint("m2=http://10.0.0.7:8080/prefix", HttpVersion::Http11);
        let o = build(&request(), &target, &ReplayOptions::default());
        assert_eq!(o.uri, "http://10.0.0.7:8080/prefix/v2/models/m/infer?x=1");
        assert_eq!(o.method, "POST");
        assert_eq!(&o.body[..], b"{\"inputs\":[]}");
        assert_eq!(names(&o), ["host", "content-type", "authorization", "x-shadow-mirror"]);
        assert_eq!(&o.headers[0].1[..], b"10.0.0.7:8080");
        assert_eq!(&o.headers[3].1[..], b"1", "the marker is ours, not the client's");
    }

    #[test]
    fn keeps_host_and_disables_marker_when_asked() {
        let target = endpoint("http://s:1", HttpVersion::Http11);
        let options = ReplayOptions { keep_host: true, marker: None };
        let o = build(&request(), &target, &options);
        assert_eq!(&o.headers[0], &("Host".to_string(), Bytes::from_static(b"ml-inference:80")));
        assert!(names(&o).contains(&"x-shadow-mirror".to_string()), "a client's own header is left alone");
        assert!(!names(&o).contains(&"transfer-encoding".to_string()));
    }

    #[test]
    fn over_http2_the_authority_is_the_uri_and_te_trailers_stays() {
        let mut grpc = request();
        grpc.version = HttpVersion::Http2;
        grpc.target = "/inference.GRPCInferenceService/ModelInfer".into();
        grpc.headers = vec![
            h("host", "prod:8081"),
            h("content-type", "application/grpc"),
            h("te", "trailers"),
            h("grpc-encoding", "gzip"),
            h("grpc-timeout", "1S"),
        ];
        let target = endpoint("m2=h2c://10.0.0.7:9081", HttpVersion::Http2);
        let o = build(&grpc, &target, &ReplayOptions::default());
        assert_eq!(o.transport, Transport::H2c);
        assert_eq!(o.uri, "http://10.0.0.7:9081/inference.GRPCInferenceService/ModelInfer");
        assert_eq!(names(&o), ["content-type", "te", "grpc-encoding", "grpc-timeout", "x-shadow-mirror"]);
        let kept = build(&grpc, &target, &ReplayOptions { keep_host: true, marker: None });
        assert_eq!(names(&kept)[0], "host", "kept on purpose, next to the shadow's :authority");
    }

    #[test]
    fn a_request_with_this_daemons_marker_is_its_own_replay() {
        let options = ReplayOptions::default();
        let mut replayed = request();
        assert!(!options.is_own_replay(&replayed), "a client's own X-Shadow-Mirror value is not ours");
        replayed.headers.push(h("x-shadow-mirror", "1"));
        assert!(options.is_own_replay(&replayed));
        assert!(!ReplayOptions { marker: None, ..options }.is_own_replay(&replayed), "no marker, no check");
    }
}
