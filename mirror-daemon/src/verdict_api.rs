//! The verdict over HTTP, on the metrics listener: what progressive-delivery tools ask before they
//! go on.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /verdict` | 200, the whole [`VerdictDocument`] |
//! | `GET /verdict/{model_id}` | 200, that shadow's [`ShadowDocument`]; 404 with the known model ids |
//! | `GET` or `POST /verdict/{model_id}/gate` | the shadow's document, with 200 on PROMOTE, 503 on HOLD, 412 on REJECT |
//! | the same with `?hold=pass` | 200 on PROMOTE and HOLD, 412 on REJECT |
//!
//! The gate is shaped for webhooks that pass on HTTP 200 and nothing else (Flagger's): the plain
//! gate holds a promotion until the verdict is PROMOTE (`confirm-promotion`), and `?hold=pass`
//! fails an analysis step only on REJECT, so that a shadow still gathering samples does not count
//! as a failed check (`rollout`). A POST body (Flagger's JSON payload) is accepted and ignored.
//! Model ids in the path are percent-decoded.
use crate::report::{
    criteria::Promotion,
    document::{VerdictBoard, VerdictDocument},
};

/// One HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

const JSON: &str = "application/json";

fn json(status: u16, value: &impl serde::Serialize) -> Answer {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    body.push('\n');
    Answer { status, content_type: JSON, body }
}

fn error(status: u16, message: String, document: Option<&VerdictDocument>) -> Answer {
    let known: Vec<&str> = document.map(VerdictDocument::model_ids).unwrap_or_default();
    json(status, &serde_json::json!({ "error": message, "known_model_ids": known }))
}

/// `%XX` sequences decoded (model ids may hold characters a URL path escapes).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The answer to `method path?query`, or `None` when the path is not under `/verdict`.
pub fn answer(board: &VerdictBoard, method: &str, path: &str, query: Option<&str>) -> Option<Answer> {
    let rest = path.strip_prefix("/verdict")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let rest = rest.trim_start_matches('/');
    let (model, gate) = match rest.strip_suffix("/gate") {
        Some(model) => (model, true),
        None => (rest, false),
    };
    let allowed = method == "GET" || (gate && method == "POST");
    if !allowed {
        let allow = if gate { "GET or POST" } else { "GET" };
        return Some(error(405, format!("{method} {path}: use {allow}"), None));
    }
    let Some(document) = board.current() else {
        return Some(error(503, "no verdict yet: the daemon is starting".into(), None));
    };
    if model.is_empty() {
        if gate {
            return Some(error(404, "name a shadow: /verdict/{model_id}/gate".into(), Some(&document)));
        }
        return Some(json(200, &*document));
    }
    let Some(model) = percent_decode(model) else {
        return Some(error(400, format!("{path}: bad percent-encoding in the model id"), Some(&document)));
    };
    let Some(shadow) = document.shadow(&model) else {
        return Some(error(
            404,
            format!("no shadow with model id `{model}`; known: {}", document.model_ids().join(", ")),
            Some(&document),
        ));
    };
    if !gate {
        return Some(json(200, &shadow));
    }
    let hold_passes = query.is_some_and(|q| q.split('&').any(|kv| kv == "hold=pass"));
    let status = match shadow.shadow.decision {
        Promotion::Promote => 200,
        Promotion::Hold if hold_passes => 200,
        Promotion::Hold => 503,
        Promotion::Reject => 412,
    };
    Some(json(status, &shadow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::verdict::Verdict;
    use crate::report::{
        aggregate::{Aggregator, Observation, Outcome},
        criteria::Criteria,
        document::{Source, Window},
    };
    use serde_json::Value;
    use std::time::SystemTime;

    fn board(shadows: &[(&str, u64, u64)], configured: &[&str]) -> VerdictBoard {
        let mut agg = Aggregator::default();
        for (model, agree, disagree) in shadows {
            for i in 0..agree + disagree {
                agg.add(&Observation {
                    shadow_model_id: model.to_string(),
                    route: "POST /infer".into(),
                    outcome: Outcome::Compared(if i < *agree { Verdict::Match } else { Verdict::Mismatch }),
                    production_status: 200,
                    production_grpc_status: None,
                    production_latency_ms: 10.0,
                    shadow_status: Some(200),
                    shadow_grpc_status: None,
                    shadow_latency_ms: Some(10.0),
                    shadow_error: None,
                    rows: None,
                    label_agreements: None,
                    label_flips: None,
                    max_abs_error: None,
                    mean_abs_error: None,
                    text: Default::default(),
                });
            }
        }
        let now = SystemTime::now();
        let board = VerdictBoard::default();
        board.publish(VerdictDocument::build(
            &agg.summary(),
            configured,
            &Criteria::default(),
            Source::Daemon,
            Window::daemon(now, now),
            None,
        ));
        board
    }

    fn get(board: &VerdictBoard, method: &str, path: &str, query: Option<&str>) -> (u16, Value) {
        let a = answer(board, method, path, query).expect("a /verdict path");
        assert_eq!(a.content_type, "application/json");
        (a.status, serde_json::from_str(&a.body).expect("JSON body"))
    }

    #[test]
    fn every_shadow_and_one_shadow() {
        let b = board(&[("good", 300, 0), ("bad", 100, 100)], &["new model"]);
        let (status, all) = get(&b, "GET", "/verdict", None);
        assert_eq!(status, 200);
        assert_eq!(all["decision"], "REJECT");
        let ids: Vec<&str> =
            all["shadows"].as_array().unwrap().iter().map(|s| s["model_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["bad", "good", "new model"]);
        assert_eq!(get(&b, "GET", "/verdict/", None).1, all, "a trailing slash is the same");

        let (status, good) = get(&b, "GET", "/verdict/good", None);
        assert_eq!((status, good["decision"].as_str()), (200, Some("PROMOTE")));
        assert_eq!(good["model_id"], "good");
        let (status, new) = get(&b, "GET", "/verdict/new%20model", None);
        assert_eq!((status, new["decision"].as_str()), (200, Some("HOLD")));
    }

    #[test]
    fn an_unknown_model_is_404_naming_the_known_ones() {
        let b = board(&[("good", 300, 0), ("bad", 100, 100)], &[]);
        let (status, body) = get(&b, "GET", "/verdict/model-v9", None);
        assert_eq!(status, 404);
        assert!(body["error"].as_str().unwrap().contains("model-v9"), "{body}");
        assert!(body["error"].as_str().unwrap().contains("bad, good"), "{body}");
        assert_eq!(body["known_model_ids"], serde_json::json!(["bad", "good"]));
        assert_eq!(get(&b, "POST", "/verdict/model-v9/gate", None).0, 404);
        assert_eq!(get(&b, "GET", "/verdict/%zz", None).0, 400);
    }

    #[test]
    fn the_gate_passes_on_promote_only_unless_hold_may_pass() {
        let b = board(&[("good", 300, 0), ("bad", 100, 100), ("early", 10, 0)], &[]);
        let status = |method, path, query| get(&b, method, path, query).0;
        assert_eq!(status("GET", "/verdict/good/gate", None), 200);
        assert_eq!(status("POST", "/verdict/good/gate", None), 200);
        assert_eq!(status("POST", "/verdict/early/gate", None), 503);
        assert_eq!(status("POST", "/verdict/early/gate", Some("hold=pass")), 200);
        assert_eq!(status("POST", "/verdict/bad/gate", None), 412);
        assert_eq!(status("POST", "/verdict/bad/gate", Some("x=1&hold=pass")), 412);
        let (_, body) = get(&b, "POST", "/verdict/bad/gate", None);
        assert_eq!(body["decision"], "REJECT", "the gate answers with the document");
    }

    #[test]
    fn other_paths_and_methods() {
        let b = board(&[], &[]);
        assert_eq!(answer(&b, "GET", "/metrics", None), None);
        assert_eq!(answer(&b, "GET", "/verdicts", None), None);
        assert_eq!(get(&b, "DELETE", "/verdict", None).0, 405);
        assert_eq!(get(&b, "POST", "/verdict/m", None).0, 405);
        let (status, all) = get(&b, "GET", "/verdict", None);
        assert_eq!((status, all["decision"].is_null(), all["exit_code"].as_u64()), (200, true, Some(3)));
        assert_eq!(get(&VerdictBoard::default(), "GET", "/verdict", None).0, 503);
    }
}
