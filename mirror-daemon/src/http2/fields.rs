//! Request and response heads from decoded header lists (RFC 9113 §8.3).
//!
//! A header list either makes a valid head or the stream is not rebuilt: pseudo-header fields
//! first, each once, only the defined ones, lowercase names. Regular fields keep their wire order;
//! `:authority` becomes a leading `host` field, as an HTTP/2-to-HTTP/1.1 intermediary would write it
//! (RFC 9113 §8.3.1), so replay and records treat both versions alike.
use bytes::Bytes;

use super::hpack::Field;
use crate::exchange::Header;

/// Why a header list makes no valid head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a pseudo-header field after a regular field")]
    PseudoAfterRegular,
    #[error("an unknown or repeated pseudo-header field")]
    BadPseudo,
    #[error("a required pseudo-header field is missing")]
    MissingPseudo,
    #[error("`:status` is not three digits")]
    BadStatus,
    #[error("a field name is not lowercase ASCII")]
    BadName,
    #[error("pseudo-header fields in trailers")]
    PseudoInTrailers,
    #[error("a CONNECT request (a tunnel, not an exchange)")]
    Connect,
}

/// A request's head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    /// Regular fields in order, `host` (from `:authority`) first when there was one.
    pub headers: Vec<Header>,
}

/// A response's head: informational (1xx, skipped like HTTP/1.1's interim responses) or final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseHead {
    Interim,
    Final { status: u16, headers: Vec<Header> },
}

fn name_of(field: &Field) -> Result<String, Malformed> {
    let name = std::str::from_utf8(&field.name).map_err(|_| Malformed::BadName)?;
    let body = name.strip_prefix(':').unwrap_or(name);
    if body.is_empty() || body.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii_graphic()) {
        return Err(Malformed::BadName);
    }
    Ok(name.to_string())
}

/// Pseudo-header fields by name, in order.
type Pseudo = Vec<(String, Bytes)>;

/// Splits a list into its pseudo-header fields and its regular fields, checking their order.
fn split(fields: Vec<Field>) -> Result<(Pseudo, Vec<Header>), Malformed> {
    let mut pseudo = Vec::new();
    let mut regular = Vec::with_capacity(fields.len());
    for field in fields {
        let name = name_of(&field)?;
        if name.starts_with(':') {
            if !regular.is_empty() {
                return Err(Malformed::PseudoAfterRegular);
            }
            if pseudo.iter().any(|(n, _)| n == &name) {
                return Err(Malformed::BadPseudo);
            }
            pseudo.push((name, field.value));
        } else {
            regular.push(Header { name, value: field.value });
        }
    }
    Ok((pseudo, regular))
}

fn text(value: Bytes) -> Result<String, Malformed> {
    String::from_utf8(value.to_vec()).map_err(|_| Malformed::BadPseudo)
}

/// The head of a request.
pub fn request_head(fields: Vec<Field>) -> Result<RequestHead, Malformed> {
    let (pseudo, mut headers) = split(fields)?;
    let (mut method, mut path, mut scheme, mut authority) = (None, None, None, None);
    for (name, value) in pseudo {
        match name.as_str() {
            ":method" => method = Some(text(value)?),
            ":path" => path = Some(text(value)?),
            ":scheme" => scheme = Some(value),
            ":authority" => authority = Some(value),
            _ => return Err(Malformed::BadPseudo),
        }
    }
    let method = method.ok_or(Malformed::MissingPseudo)?;
    if method == "CONNECT" {
        return Err(Malformed::Connect);
    }
    let path = path.filter(|p| !p.is_empty()).ok_or(Malformed::MissingPseudo)?;
    scheme.ok_or(Malformed::MissingPseudo)?;
    if let Some(authority) = authority
        && !headers.iter().any(|h| h.name == "host")
    {
        headers.insert(0, Header { name: "host".into(), value: authority });
    }
    Ok(RequestHead { method, path, headers })
}

/// The head of a response.
pub fn response_head(fields: Vec<Field>) -> Result<ResponseHead, Malformed> {
    let (pseudo, headers) = split(fields)?;
    let mut status = None;
    for (name, value) in pseudo {
        match name.as_str() {
            ":status" => status = Some(value),
            _ => return Err(Malformed::BadPseudo),
        }
    }
    let status = status.ok_or(Malformed::MissingPseudo)?;
    if status.len() != 3 || !status.iter().all(u8::is_ascii_digit) {
        return Err(Malformed::BadStatus);
    }
    let status = status.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if (100..200).contains(&status) {
        return Ok(ResponseHead::Interim);
    }
    Ok(ResponseHead::Final { status, headers })
}

/// A trailer section: regular fields only.
pub fn trailers(fields: Vec<Field>) -> Result<Vec<Header>, Malformed> {
    let (pseudo, headers) = split(fields)?;
    if pseudo.is_empty() { Ok(headers) } else { Err(Malformed::PseudoInTrailers) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> Vec<Field> {
        pairs
            .iter()
            .map(|(n, v)| Field {
                name: Bytes::copy_from_slice(n.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect()
    }

    #[test]
    fn a_grpc_request_head() {
        let head = request_head(list(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/inference.GRPCInferenceService/ModelInfer"),
            (":authority", "10.0.0.2:8081"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]))
        .unwrap();
        assert_eq!(
            (head.method.as_str(), head.path.as_str()),
            ("POST", "/inference.GRPCInferenceService/ModelInfer")
        );
        let names: Vec<&str> = head.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["host", "content-type", "te"]);
        assert_eq!(&head.headers[0].value[..], b"10.0.0.2:8081");
    }

    #[test]
    fn malformed_request_heads_are_refused() {
        let ok = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        assert!(request_head(list(&ok)).is_ok());
        assert_eq!(request_head(list(&ok[..2])), Err(Malformed::MissingPseudo));
        assert_eq!(request_head(list(&[ok[0], ok[1], (":path", "")])), Err(Malformed::MissingPseudo));
        assert_eq!(request_head(list(&[ok[0], ok[1], ok[2], ok[2]])), Err(Malformed::BadPseudo));
        assert_eq!(
            request_head(list(&[ok[0], ok[1], ("a", "1"), ok[2]])),
            Err(Malformed::PseudoAfterRegular)
        );
        assert_eq!(request_head(list(&[ok[0], ok[1], ok[2], (":protocol", "x")])), Err(Malformed::BadPseudo));
        assert_eq!(
            request_head(list(&[ok[0], ok[1], ok[2], ("Content-Type", "x")])),
            Err(Malformed::BadName)
        );
        assert_eq!(
            request_head(list(&[(":method", "CONNECT"), (":authority", "x:1")])),
            Err(Malformed::Connect)
        );
    }

    #[test]
    fn response_heads_and_trailers() {
        assert_eq!(
            response_head(list(&[(":status", "200"), ("content-type", "application/grpc")])).unwrap(),
            ResponseHead::Final {
                status: 200,
                headers: vec![Header {
                    name: "content-type".into(),
                    value: Bytes::from_static(b"application/grpc")
                }]
            }
        );
        assert_eq!(response_head(list(&[(":status", "103")])).unwrap(), ResponseHead::Interim);
        assert_eq!(response_head(list(&[(":status", "20")])), Err(Malformed::BadStatus));
        assert_eq!(response_head(list(&[("grpc-status", "0")])), Err(Malformed::MissingPseudo));
        assert_eq!(trailers(list(&[("grpc-status", "0")])).unwrap().len(), 1);
        assert_eq!(trailers(list(&[(":status", "200")])), Err(Malformed::PseudoInTrailers));
    }
}
