//! The request sent to a shadow: the production request as captured, made safe to resend.
//!
//! Hop-by-hop headers belong to the original connection and are dropped (RFC 9110 §7.6.1), the
//! body is sent whole (de-chunked, with its length), `Host` names the shadow unless the original is
//! kept on purpose, and a marker header tells shadow services that this is a replay so they can
//! skip side effects.
use bytes::Bytes;

use super::target::ShadowTarget;
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

/// A request ready to be sent: absolute URI and the headers to send (Content-Length is added by
/// the client from the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
}

/// Rewrites a captured request for `target`.
pub fn build(request: &Request, target: &ShadowTarget, options: &ReplayOptions) -> Outgoing {
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
        HOP_BY_HOP.contains(&name.as_str())
            || named.contains(&name)
            || (name == "host" && !options.keep_host)
            || options.marker.as_ref().is_some_and(|(m, _)| m.eq_ignore_ascii_case(&name))
    };
    let mut headers: Vec<(String, Bytes)> =
        request.headers.iter().filter(|h| !drop(h)).map(|h| (h.name.clone(), h.value.clone())).collect();
    if !options.keep_host || !request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
        headers.insert(0, ("host".into(), Bytes::from(target.authority.clone())));
    }
    if let Some((name, value)) = &options.marker {
        headers.push((name.clone(), Bytes::from(value.clone())));
    }
    let target_path =
        if request.target.starts_with('/') { request.target.clone() } else { format!("/{}", request.target) };
    Outgoing {
        method: request.method.clone(),
        uri: format!("http://{}{}{}", target.authority, target.path_prefix, target_path),
        headers,
        body: request.body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::target::ShadowTarget;

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
        let target = ShadowTarget::parse("m2=http://10.0.0.7:8080/prefix").unwrap();
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
        let target = ShadowTarget::parse("http://s:1").unwrap();
        let options = ReplayOptions { keep_host: true, marker: None };
        let o = build(&request(), &target, &options);
        assert_eq!(&o.headers[0], &("Host".to_string(), Bytes::from_static(b"ml-inference:80")));
        assert!(names(&o).contains(&"x-shadow-mirror".to_string()), "a client's own header is left alone");
        assert!(!names(&o).contains(&"transfer-encoding".to_string()));
    }
}
