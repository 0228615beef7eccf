//! Streamed answers compared by what they assembled: each side — an event stream or a plain JSON
//! answer — becomes the same canonical OpenAI shape, `{"choices": [{"index", "text" or "message":
//! {"content", "tool_calls"}, "finish_reason"}], "usage"}`, and the two are compared as OpenAI
//! answers (`openai.rs`). So a streamed production answer and a non-streamed shadow answer (or
//! the reverse) compare by content, and chunk ids and timestamps never count.
//!
//! Tool calls keep their type, name and arguments (in `index` order); their ids are generated per
//! call by the server and are left out. A chat answer's `content: null` (tool calls only) is `""`,
//! as a stream assembles it.
use std::borrow::Cow;

use super::json::{Json, Number, Object};
use crate::sse::{StreamKind, StreamedAnswer};

/// One side, assembled: the canonical answer, and what its stream said about itself.
pub(crate) struct Assembled {
    pub answer: Json<'static>,
    /// The stream ended in an error event (its message).
    pub error: Option<String>,
    /// Events not understood.
    pub malformed_events: u64,
    /// Neither a stream of a known shape nor an answer with `choices`.
    pub unknown: bool,
}

fn member(key: &'static str, value: Json<'static>) -> (Cow<'static, str>, Json<'static>) {
    (Cow::Borrowed(key), value)
}

fn string(text: &str) -> Json<'static> {
    Json::String(Cow::Owned(text.to_string()))
}

fn optional(text: Option<&str>) -> Json<'static> {
    text.map_or(Json::Null, string)
}

fn number(n: u64) -> Json<'static> {
    Json::Number(Number::from(n))
}

fn tool_call(kind: Option<&str>, name: &str, arguments: &str) -> Json<'static> {
    let function =
        Object::from_members(vec![member("name", string(name)), member("arguments", string(arguments))]);
    Json::Object(Object::from_members(vec![
        member("type", string(kind.unwrap_or("function"))),
        member("function", Json::Object(function)),
    ]))
}

fn answer(choices: Vec<Json<'static>>, tokens: Option<u64>) -> Json<'static> {
    let mut members = vec![member("choices", Json::Array(choices))];
    if let Some(tokens) = tokens {
        members.push(member(
            "usage",
            Json::Object(Object::from_members(vec![member("completion_tokens", number(tokens))])),
        ));
    }
    Json::Object(Object::from_members(members))
}

/// An event stream's canonical answer.
pub(crate) fn from_stream(stream: &StreamedAnswer) -> Assembled {
    let chat = stream.kind == StreamKind::Chat;
    let choices = stream
        .choices
        .iter()
        .map(|c| {
            let mut members = vec![
                member("index", number(c.index)),
                member("finish_reason", optional(c.finish_reason.as_deref())),
            ];
            if chat {
                let mut message = vec![member("content", string(&c.text))];
                if !c.tool_calls.is_empty() {
                    let calls =
                        c.tool_calls.iter().map(|t| tool_call(t.kind.as_deref(), &t.name, &t.arguments));
                    message.push(member("tool_calls", Json::Array(calls.collect())));
                }
                members.push(member("message", Json::Object(Object::from_members(message))));
            } else {
                members.push(member("text", string(&c.text)));
            }
            Json::Object(Object::from_members(members))
        })
        .collect();
    Assembled {
        answer: answer(choices, stream.completion_tokens),
        error: stream.error.clone(),
        malformed_events: stream.malformed_events,
        unknown: stream.kind == StreamKind::Unknown && stream.choices.is_empty() && stream.error.is_none(),
    }
}

/// A plain (non-streamed) answer's canonical form.
pub(crate) fn from_plain(body: &Json<'_>) -> Assembled {
    let Some(choices) = body.get("choices").and_then(Json::as_array) else {
        return Assembled {
            answer: body.clone().into_owned(),
            error: None,
            malformed_events: 0,
            unknown: true,
        };
    };
    let text = |v: Option<&Json<'_>>| v.and_then(Json::as_str).unwrap_or("").to_string();
    let choices = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let index = c.get("index").and_then(Json::as_u64).unwrap_or(i as u64);
            let finish = c.get("finish_reason").and_then(Json::as_str);
            let mut members = vec![member("index", number(index)), member("finish_reason", optional(finish))];
            match c.get("message") {
                Some(m) => {
                    let mut message = vec![member("content", string(&text(m.get("content"))))];
                    if let Some(calls) =
                        m.get("tool_calls").and_then(Json::as_array).filter(|c| !c.is_empty())
                    {
                        let calls = calls.iter().map(|t| {
                            let f = t.get("function");
                            tool_call(
                                t.get("type").and_then(Json::as_str),
                                &text(f.and_then(|f| f.get("name"))),
                                &text(f.and_then(|f| f.get("arguments"))),
                            )
                        });
                        message.push(member("tool_calls", Json::Array(calls.collect())));
                    }
                    members.push(member("message", Json::Object(Object::from_members(message))));
                }
                None => members.push(member("text", string(&text(c.get("text"))))),
            }
            Json::Object(Object::from_members(members))
        })
        .collect();
    let tokens = body.get("usage").and_then(|u| u.get("completion_tokens")).and_then(Json::as_u64);
    Assembled { answer: answer(choices, tokens), error: None, malformed_events: 0, unknown: false }
}
