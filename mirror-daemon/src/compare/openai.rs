//! OpenAI-compatible answers: `/v1/completions` (`choices[].text`) and `/v1/chat/completions`
//! (`choices[].message.content`).
//!
//! Generated text is what users see, so the verdict rests on it: each choice's text, its tool
//! calls, and its `finish_reason` (a model that stops on length where production stopped
//! naturally has not answered the same). Per-choice `logprobs`, `index` and `role` are not
//! compared. Other top-level fields compare as generic JSON, minus the default ignores (`id`,
//! `created`, `model`, `system_fingerprint`, `usage`): token usage is reported in the metrics
//! (`completion_tokens`, else `total_tokens`) rather than judged.
//!
//! `text_equal` and `finish_reason_equal` are measured whatever the ignore rules say; the ignores
//! only keep differences out of the verdict.
use super::{
    PredictionMetrics,
    json::{Json, Object},
    json_diff::{Collector, diff_fields, diff_values},
};

/// Compares two answers whose production side has a `choices` array of objects.
pub(crate) fn compare(c: &mut Collector<'_>, a: &Object<'_>, b: &Object<'_>, m: &mut PredictionMetrics) {
    diff_fields(c, a, b, &["choices"]);
    m.prod_tokens = tokens(a);
    m.shadow_tokens = tokens(b);
    let empty = Vec::new();
    let xs = a.get("choices").and_then(Json::as_array).unwrap_or(&empty);
    let Some(ys) = b.get("choices").and_then(Json::as_array) else {
        m.text_equal = Some(false);
        m.finish_reason_equal = Some(false);
        let y = b.get("choices").unwrap_or(&Json::Null);
        c.at("choices", |c| diff_values(c, a.get("choices").unwrap_or(&Json::Null), y));
        return;
    };
    m.rows = xs.len() as u64;
    let mut text_equal = xs.len() == ys.len();
    let mut finish_equal = xs.len() == ys.len();
    let mut tools_equal = xs.len() == ys.len();
    let mut similarity = 0.0;
    let paired = xs.len().max(ys.len());
    c.at("choices", |c| {
        for i in 0..paired {
            c.at(i.to_string(), |c| match (xs.get(i), ys.get(i)) {
                (Some(x), Some(y)) => {
                    let (t, f) = choice(c, x, y);
                    text_equal &= t;
                    finish_equal &= f;
                    tools_equal &= tool_calls(x) == tool_calls(y);
                    similarity += super::text::token_f1(text_of(x), text_of(y));
                }
                (Some(x), None) => missing(c, x, &Json::Null),
                (None, Some(y)) => missing(c, &Json::Null, y),
                (None, None) => {}
            });
        }
    });
    m.text_equal = Some(text_equal);
    m.finish_reason_equal = Some(finish_equal);
    m.similarity = Some(if paired == 0 { 1.0 } else { similarity / paired as f64 });
    if xs.iter().chain(ys).any(|x| x.get("message").is_some()) {
        m.tool_calls_equal = Some(tools_equal);
    }
}

/// A choice's generated text: chat `message.content`, or completion `text`.
fn text_of<'j>(choice: &'j Json<'_>) -> &'j str {
    let text = choice.get("message").and_then(|m| m.get("content")).or_else(|| choice.get("text"));
    text.and_then(Json::as_str).unwrap_or("")
}

/// A chat choice's tool calls as (type, name, arguments); ids are per call and not compared.
fn tool_calls<'j>(choice: &'j Json<'_>) -> Vec<[&'j str; 3]> {
    let calls = choice.get("message").and_then(|m| m.get("tool_calls")).and_then(Json::as_array);
    let field = |v: Option<&'j Json<'_>>| v.and_then(Json::as_str).unwrap_or("");
    calls
        .into_iter()
        .flatten()
        .map(|t| {
            let f = t.get("function");
            [
                field(t.get("type")),
                field(f.and_then(|f| f.get("name"))),
                field(f.and_then(|f| f.get("arguments"))),
            ]
        })
        .collect()
}

fn missing(c: &mut Collector<'_>, x: &Json<'_>, y: &Json<'_>) {
    if !c.ignored() {
        c.record(x, y);
    }
}

fn tokens(answer: &Object<'_>) -> Option<u64> {
    let usage = answer.get("usage")?;
    usage.get("completion_tokens").or_else(|| usage.get("total_tokens")).and_then(Json::as_u64)
}

/// Compares one pair of choices; returns whether text and finish reason are equal.
fn choice(c: &mut Collector<'_>, x: &Json<'_>, y: &Json<'_>) -> (bool, bool) {
    let null = &Json::Null;
    fn field<'a>(v: &Json<'a>, path: &[&str]) -> Option<Json<'a>> {
        path.iter().try_fold(v, |v, key| v.get(key)).cloned()
    }
    let mut text_equal = true;
    // Completions carry `text`; chat completions carry `message`.
    let chat = x.get("message").is_some() || y.get("message").is_some();
    let fields: &[&[&str]] = if chat {
        &[&["message", "content"], &["message", "tool_calls"], &["message", "function_call"]]
    } else {
        &[&["text"]]
    };
    for path in fields {
        let (a, b) = (field(x, path), field(y, path));
        if a.is_none() && b.is_none() {
            continue;
        }
        let (a, b) = (a.as_ref().unwrap_or(null), b.as_ref().unwrap_or(null));
        let is_text = path.last().is_some_and(|k| *k == "content" || *k == "text");
        if is_text && a != b {
            text_equal = false;
        }
        at_path(c, path, |c| {
            if is_text {
                if !c.ignored() && a != b {
                    c.record(a, b);
                }
            } else {
                diff_values(c, a, b);
            }
        });
    }
    let (a, b) = (x.get("finish_reason").unwrap_or(null), y.get("finish_reason").unwrap_or(null));
    c.at("finish_reason", |c| {
        if !c.ignored() && a != b {
            c.record(a, b);
        }
    });
    (text_equal, a == b)
}

fn at_path(c: &mut Collector<'_>, path: &[&str], f: impl FnOnce(&mut Collector<'_>)) {
    match path.split_first() {
        None => f(c),
        Some((first, rest)) => c.at(*first, |c| {
            if !c.ignored() {
                at_path(c, rest, f)
            }
        }),
    }
}
