//! A streamed LLM answer folded from its events: the text of each choice, its tool calls and
//! finish reason, token usage, how the stream ended, and when content arrived.
//!
//! Shapes understood (every OpenAI-compatible server — vLLM, TGI's `/v1`, llama.cpp's `/v1`,
//! gateways — sends the first):
//! - OpenAI `chat.completion.chunk`: `choices[].delta.content`, `delta.tool_calls[]` assembled by
//!   `index` (name and arguments arrive in pieces), `finish_reason`; `text_completion` chunks:
//!   `choices[].text`; the usage chunk (`stream_options.include_usage`, empty `choices`);
//!   `data: [DONE]` ends the stream; `{"error": ...}` is an error event.
//! - TGI's native `/generate_stream`: `token.text` per event, ended by the event whose
//!   `generated_text` is set (its `details.finish_reason`, `details.generated_tokens`).
//! - llama.cpp's native `/completion`: `content` per event, ended by `"stop": true`.
//!
//! Events are folded as they come and not kept; only the assembled text and the content times
//! (one number per content event) grow with the stream, and the body they come from is bounded.
use std::borrow::Cow;

use serde::Deserialize;

use super::parser::Event;

/// How a stream ended, as far as its events say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamEnd {
    /// No end event (yet): a stream cut before its end.
    #[default]
    Open,
    /// `data: [DONE]` (OpenAI-compatible).
    Done,
    /// The protocol's own final event (TGI `generated_text`, llama.cpp `stop`).
    Final,
    /// An error event.
    Error,
}

impl StreamEnd {
    /// As records name it: `open`, `done`, `final`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Open => "open",
            StreamEnd::Done => "done",
            StreamEnd::Final => "final",
            StreamEnd::Error => "error",
        }
    }

    /// The answer is whole: nothing more was to come.
    pub fn is_complete(self) -> bool {
        self != StreamEnd::Open
    }
}

/// One tool (function) call, assembled from its deltas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCall {
    pub index: u64,
    /// Generated per call by the server (random), so never compared.
    pub id: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub arguments: String,
}

/// One choice of the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    pub index: u64,
    pub text: String,
    pub finish_reason: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// Which kind of stream it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamKind {
    /// Nothing recognisable yet.
    #[default]
    Unknown,
    /// `chat.completion.chunk`.
    Chat,
    /// `text_completion`.
    Completion,
    /// TGI's native stream.
    Tgi,
    /// llama.cpp's native stream.
    LlamaCpp,
}

/// The folded answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamedAnswer {
    pub kind: StreamKind,
    /// By `index`, ascending.
    pub choices: Vec<Choice>,
    /// Output tokens the server reported (usage chunk, TGI `generated_tokens`).
    pub completion_tokens: Option<u64>,
    pub end: StreamEnd,
    /// The error event's message, when the stream ended in one.
    pub error: Option<String>,
    /// Events received (`[DONE]` included).
    pub events: u64,
    /// Events whose data was not JSON of a known shape (and not `[DONE]`).
    pub malformed_events: u64,
    /// Capture time of each event that carried generated content (text or tool-call pieces).
    pub content_times: Vec<u64>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    object: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    // TGI
    #[serde(borrow, default)]
    token: Option<TgiToken<'a>>,
    #[serde(borrow, default)]
    generated_text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    details: Option<TgiDetails<'a>>,
    // llama.cpp
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    stop: Option<bool>,
    #[serde(borrow, default)]
    stop_type: Option<Cow<'a, str>>,
    #[serde(default)]
    tokens_predicted: Option<u64>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct TgiToken<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct TgiDetails<'a> {
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    generated_tokens: Option<u64>,
}

impl StreamedAnswer {
    /// Folds one event in. Events after the end are counted and otherwise ignored.
    pub fn fold(&mut self, event: &Event) {
        self.events += 1;
        if self.end.is_complete() {
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.end = StreamEnd::Done;
            return;
        }
        if event.event == "error" {
            self.end = StreamEnd::Error;
            self.error = Some(clip(data));
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(data) else {
            self.malformed_events += 1;
            return;
        };
        if let Some(error) = chunk.error {
            self.end = StreamEnd::Error;
            let message = error.get("message").and_then(|m| m.as_str()).map(str::to_string);
            self.error = Some(message.unwrap_or_else(|| clip(&error.to_string())));
            return;
        }
        let before = self.content_bytes();
        if let Some(usage) = &chunk.usage
            && let Some(tokens) = usage.completion_tokens
        {
            self.completion_tokens = Some(tokens);
        }
        if let Some(choices) = &chunk.choices {
            self.kind = match chunk.object.as_deref() {
                Some("text_completion") => StreamKind::Completion,
                Some("chat.completion.chunk") => StreamKind::Chat,
                _ if choices.iter().any(|c| c.delta.is_some()) => StreamKind::Chat,
                _ if choices.iter().any(|c| c.text.is_some()) => StreamKind::Completion,
                _ => self.kind,
            };
            for c in choices {
                let choice = self.choice(c.index);
                if let Some(text) = &c.text {
                    choice.text.push_str(text);
                }
                if let Some(delta) = &c.delta {
                    if let Some(content) = &delta.content {
                        choice.text.push_str(content);
                    }
                    for call in delta.tool_calls.iter().flatten() {
                        let slot = match choice.tool_calls.iter().position(|t| t.index == call.index) {
                            Some(i) => &mut choice.tool_calls[i],
                            None => {
                                let at = choice.tool_calls.partition_point(|t| t.index < call.index);
                                choice
                                    .tool_calls
                                    .insert(at, ToolCall { index: call.index, ..ToolCall::default() });
                                &mut choice.tool_calls[at]
                            }
                        };
                        if let Some(id) = &call.id {
                            slot.id = Some(id.to_string());
                        }
                        if let Some(kind) = &call.kind {
                            slot.kind = Some(kind.to_string());
                        }
                        if let Some(function) = &call.function {
                            slot.name.push_str(function.name.as_deref().unwrap_or(""));
                            slot.arguments.push_str(function.arguments.as_deref().unwrap_or(""));
                        }
                    }
                }
                if let Some(reason) = &c.finish_reason {
                    choice.finish_reason = Some(reason.to_string());
                }
            }
        } else if let Some(token) = &chunk.token {
            self.kind = StreamKind::Tgi;
            let choice = self.choice(0);
            if !token.special
                && let Some(text) = &token.text
            {
                choice.text.push_str(text);
            }
            if chunk.generated_text.is_some() {
                let details = chunk.details.as_ref();
                choice.finish_reason = details.and_then(|d| d.finish_reason.as_deref()).map(str::to_string);
                if let Some(tokens) = details.and_then(|d| d.generated_tokens) {
                    self.completion_tokens = Some(tokens);
                }
                self.end = StreamEnd::Final;
            }
        } else if chunk.content.is_some() || chunk.stop.is_some() {
            self.kind = StreamKind::LlamaCpp;
            let choice = self.choice(0);
            choice.text.push_str(chunk.content.as_deref().unwrap_or(""));
            if chunk.stop == Some(true) {
                choice.finish_reason = chunk.stop_type.as_deref().map(str::to_string);
                if let Some(tokens) = chunk.tokens_predicted {
                    self.completion_tokens = Some(tokens);
                }
                self.end = StreamEnd::Final;
            }
        } else if chunk.usage.is_none() {
            self.malformed_events += 1;
            return;
        }
        if self.content_bytes() > before {
            self.content_times.push(event.ts_ns);
        }
    }

    fn choice(&mut self, index: u64) -> &mut Choice {
        match self.choices.binary_search_by_key(&index, |c| c.index) {
            Ok(i) => &mut self.choices[i],
            Err(i) => {
                self.choices.insert(i, Choice { index, ..Choice::default() });
                &mut self.choices[i]
            }
        }
    }

    /// Generated bytes so far: text and tool-call pieces of every choice.
    fn content_bytes(&self) -> usize {
        self.choices
            .iter()
            .map(|c| {
                c.text.len() + c.tool_calls.iter().map(|t| t.name.len() + t.arguments.len()).sum::<usize>()
            })
            .sum()
    }
}

fn clip(text: &str) -> String {
    const MAX: usize = 512;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(datas: &[&str]) -> StreamedAnswer {
        let mut answer = StreamedAnswer::default();
        for (i, data) in datas.iter().enumerate() {
            answer.fold(&Event {
                event: "message".into(),
                data: data.to_string(),
                ts_ns: i as u64,
                ..Event::default()
            });
        }
        answer
    }

    #[test]
    fn chat_chunks_with_tool_calls_by_index_and_usage() {
        let a = fold(&[
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[{"index":1,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"lookup","arguments":""}}]}}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_","arguments":"{\"ci"}}]}}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"function":{"name":"weather","arguments":"ty\":1}"}}]}}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"},{"index":1,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}"#,
            "[DONE]",
            r#"{"late":1}"#,
        ]);
        assert_eq!(a.kind, StreamKind::Chat);
        assert_eq!(a.end, StreamEnd::Done);
        assert_eq!(a.events, 9);
        assert_eq!(a.malformed_events, 0);
        assert_eq!(a.completion_tokens, Some(7));
        assert_eq!(a.choices.len(), 2);
        assert_eq!(a.choices[0].text, "Hello");
        assert_eq!(a.choices[0].finish_reason.as_deref(), Some("stop"));
        let calls = &a.choices[1].tool_calls;
        assert_eq!(
            calls.iter().map(|c| (c.index, c.name.as_str(), c.arguments.as_str())).collect::<Vec<_>>(),
            [(0, "get_weather", "{\"city\":1}"), (1, "lookup", "")]
        );
        assert_eq!(calls[0].id.as_deref(), Some("call_a"));
        assert_eq!(a.choices[1].finish_reason.as_deref(), Some("tool_calls"));
        // The role-only first chunk and the usage chunk carry no content.
        assert_eq!(a.content_times, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn completions_errors_and_malformed_events() {
        let a = fold(&[
            r#"{"object":"text_completion","choices":[{"index":0,"text":"a b","finish_reason":null}]}"#,
            "not json",
            r#"{"unexpected":true}"#,
            r#"{"error":{"message":"out of memory","type":"server_error"}}"#,
            r#"{"object":"text_completion","choices":[{"index":0,"text":" c"}]}"#,
        ]);
        assert_eq!(a.kind, StreamKind::Completion);
        assert_eq!(a.choices[0].text, "a b");
        assert_eq!(a.malformed_events, 2);
        assert_eq!(a.end, StreamEnd::Error);
        assert_eq!(a.error.as_deref(), Some("out of memory"));
        assert!(!StreamEnd::Open.is_complete());
    }

    #[test]
    fn tgi_and_llama_cpp_native_streams_end_by_their_own_rule() {
        let tgi = fold(&[
            r#"{"index":1,"token":{"id":1,"text":"Hi","logprob":-0.1,"special":false},"generated_text":null,"details":null}"#,
            r#"{"index":2,"token":{"id":2,"text":"</s>","logprob":-0.1,"special":true},"generated_text":"Hi","details":{"finish_reason":"eos_token","generated_tokens":2}}"#,
        ]);
        assert_eq!((tgi.kind, tgi.end), (StreamKind::Tgi, StreamEnd::Final));
        assert_eq!(tgi.choices[0].text, "Hi");
        assert_eq!(tgi.choices[0].finish_reason.as_deref(), Some("eos_token"));
        assert_eq!(tgi.completion_tokens, Some(2));
        let open = fold(&[r#"{"content":"x","stop":false}"#]);
        assert_eq!((open.kind, open.end), (StreamKind::LlamaCpp, StreamEnd::Open));
        let llama = fold(&[
            r#"{"content":"x","stop":false}"#,
            r#"{"content":"","stop":true,"stop_type":"eos","tokens_predicted":1}"#,
        ]);
        assert_eq!(llama.end, StreamEnd::Final);
        assert_eq!(llama.choices[0].finish_reason.as_deref(), Some("eos"));
        assert_eq!(llama.content_times, [0]);
    }
}
