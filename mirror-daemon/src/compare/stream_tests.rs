//! Streamed LLM answers compared by what they assembled.
use serde_json::json;

use super::{body::tests::gzip, tests::builtin, *};
use crate::exchange::Header;

fn sse_headers(gzipped: bool) -> Vec<Header> {
    let mut headers = vec![Header { name: "content-type".into(), value: "text/event-stream".into() }];
    if gzipped {
        headers.push(Header { name: "content-encoding".into(), value: "gzip".into() });
    }
    headers
}

/// A chat stream of `words` (one chunk each), chunk ids and timestamps unique to `seed`.
fn chat_stream(seed: u32, words: &[&str], finish: &str, tool_args: Option<&[&str]>) -> Vec<u8> {
    let mut out = String::new();
    let mut chunk = |choice: serde_json::Value| {
        let c = json!({"id": format!("chatcmpl-{seed}"), "object": "chat.completion.chunk", "created": 1_700_000_000 + seed, "model": format!("m{seed}"), "choices": [choice]});
        out.push_str(&format!("data: {c}\n\n"));
    };
    chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}));
    for w in words {
        chunk(json!({"index": 0, "delta": {"content": w}, "finish_reason": null}));
    }
    for (i, part) in tool_args.unwrap_or(&[]).iter().enumerate() {
        let call = if i == 0 {
            json!({"index": 0, "id": format!("call_{seed}"), "type": "function", "function": {"name": "get_weather", "arguments": part}})
        } else {
            json!({"index": 0, "function": {"arguments": part}})
        };
        chunk(json!({"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": null}));
    }
    chunk(json!({"index": 0, "delta": {}, "finish_reason": finish}));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

fn run(prod: (&[Header], &[u8]), shadow: (&[Header], &[u8])) -> Comparison {
    let request = RequestView { method: "POST", path: "/v1/chat/completions", headers: &[], body: b"{}" };
    let production = Message { status: 200, headers: prod.0, body: prod.1, trailers: &[] };
    let shadow = Message { status: 200, headers: shadow.0, body: shadow.1, trailers: &[] };
    compare(&request, &production, &ShadowOutcome::Answered(shadow), &CompareRules::default(), builtin())
}

#[test]
fn equal_streams_match_whatever_their_ids_and_timestamps() {
    let h = sse_headers(false);
    let c = run(
        (&h, &chat_stream(1, &["Hel", "lo", " world"], "stop", None)),
        (&h, &chat_stream(2, &["Hello", " wor", "ld"], "stop", None)),
    );
    assert_eq!(c.verdict, Verdict::Match, "{c:?}");
    assert_eq!(c.protocol, Protocol::OpenAi);
    assert_eq!(
        (c.metrics.text_equal, c.metrics.finish_reason_equal, c.metrics.similarity),
        (Some(true), Some(true), Some(1.0))
    );
}

#[test]
fn a_changed_word_is_a_mismatch_with_its_similarity() {
    let h = sse_headers(false);
    let c = run(
        (&h, &chat_stream(1, &["a ", "b ", "c ", "d"], "stop", None)),
        (&h, &chat_stream(1, &["a ", "b ", "c ", "e"], "stop", None)),
    );
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(c.metrics.text_equal, Some(false));
    assert!((c.metrics.similarity.unwrap() - 0.75).abs() < 1e-12);
    assert_eq!(c.diffs[0].pointer, "/choices/0/message/content");
    let c = run((&h, &chat_stream(1, &["a"], "stop", None)), (&h, &chat_stream(1, &["a"], "length", None)));
    assert_eq!((c.verdict, c.metrics.finish_reason_equal), (Verdict::Mismatch, Some(false)));
}

#[test]
fn tool_calls_compare_by_name_and_assembled_arguments_not_ids() {
    let h = sse_headers(false);
    let c = run(
        (&h, &chat_stream(1, &[], "tool_calls", Some(&["{\"city\":", "\"Paris\"}"]))),
        (&h, &chat_stream(2, &[], "tool_calls", Some(&["{\"ci", "ty\":\"Paris\"}"]))),
    );
    assert_eq!((c.verdict, c.metrics.tool_calls_equal), (Verdict::Match, Some(true)), "{c:?}");
    let c = run(
        (&h, &chat_stream(1, &[], "tool_calls", Some(&["{\"city\":\"Paris\"}"]))),
        (&h, &chat_stream(1, &[], "tool_calls", Some(&["{\"city\":\"Rome\"}"]))),
    );
    assert_eq!((c.verdict, c.metrics.tool_calls_equal), (Verdict::Mismatch, Some(false)));
}

#[test]
fn a_streamed_answer_compares_with_a_plain_one_by_content_both_ways() {
    let h = sse_headers(false);
    let plain = |text: &str| {
        json!({"id": "x", "object": "chat.completion", "created": 5, "model": "other",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
        .to_string()
        .into_bytes()
    };
    let stream = chat_stream(1, &["Hello", " world"], "stop", None);
    let json_headers = vec![Header { name: "content-type".into(), value: "application/json".into() }];
    assert_eq!(run((&h, &stream), (&json_headers, &plain("Hello world"))).verdict, Verdict::Match);
    assert_eq!(run((&json_headers, &plain("Hello world")), (&h, &stream)).verdict, Verdict::Match);
    let c = run((&h, &stream), (&json_headers, &plain("Hello there")));
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert_eq!(c.metrics.shadow_tokens, Some(2));
}

#[test]
fn gzip_streams_errors_and_undecodable_streams() {
    let stream = chat_stream(1, &["Hi"], "stop", None);
    let c = run((&sse_headers(true), &gzip(&stream)), (&sse_headers(false), &stream));
    assert_eq!(c.verdict, Verdict::Match, "{c:?}");
    let h = sse_headers(false);
    let failed = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"H\"}}]}\n\ndata: {\"error\":{\"message\":\"CUDA out of memory\"}}\n\n";
    let c = run((&h, &stream), (&h, failed));
    assert_eq!(c.verdict, Verdict::ShadowError);
    assert!(c.note.as_deref().unwrap().contains("CUDA out of memory"), "{c:?}");
    let c = run((&h, b"data: not json\n\n"), (&h, b"data: not json\n\n"));
    assert_eq!(c.protocol, Protocol::Bytes, "{c:?}");
    assert_eq!(c.verdict, Verdict::Match);
}

#[test]
fn a_stream_is_recognised_without_its_content_type_when_the_request_asked_for_one() {
    let body = chat_stream(1, &["Hi"], "stop", None);
    let plain =
        json!({"choices": [{"index": 0, "message": {"content": "Hi"}, "finish_reason": "stop"}]}).to_string();
    let run_with = |request: &[u8], rules: &CompareRules| {
        let request = RequestView { method: "POST", path: "/generate", headers: &[], body: request };
        let production = Message { status: 200, headers: &[], body: &body, trailers: &[] };
        let shadow = Message { status: 200, headers: &[], body: plain.as_bytes(), trailers: &[] };
        compare(&request, &production, &ShadowOutcome::Answered(shadow), rules, builtin()).verdict
    };
    let rules = CompareRules::default();
    assert_eq!(run_with(br#"{"stream": true, "messages": []}"#, &rules), Verdict::Match);
    // Not asked for: the bodies are what they are (not JSON on one side: bytes).
    assert_eq!(run_with(br#"{"messages": []}"#, &rules), Verdict::Mismatch);
    let forced = CompareRules { protocol: ProtocolChoice::OpenAi, ..CompareRules::default() };
    assert_eq!(run_with(br#"{"messages": []}"#, &forced), Verdict::Match);
}

/// Streams already read for their records compare exactly as when the comparison reads them:
/// sent as is, gzip-compressed, against a whole answer, equal or not, with one side unread.
#[test]
fn streams_read_once_compare_as_streams_read_here() {
    let (plain, gz) = (sse_headers(false), sse_headers(true));
    let a = chat_stream(1, &["Hel", "lo", " world"], "stop", None);
    let b = chat_stream(2, &["Hello", " there"], "length", None);
    let json_headers = vec![Header { name: "content-type".into(), value: "application/json".into() }];
    let whole =
        br#"{"choices": [{"index": 0, "message": {"content": "Hello world"}, "finish_reason": "stop"}]}"#;
    let read = |headers: &[Header], body: &[u8]| {
        crate::report::record::StreamRecord::read(headers, body, &Default::default(), 0)
    };
    /// Production's headers and body, then the shadow's.
    type Case = (Vec<Header>, Vec<u8>, Vec<Header>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (plain.clone(), a.clone(), plain.clone(), a.clone()),
        (plain.clone(), a.clone(), plain.clone(), b.clone()),
        (gz.clone(), gzip(&a), plain.clone(), b.clone()),
        (gz.clone(), gzip(&a), gz.clone(), gzip(&a)),
        (plain.clone(), a.clone(), json_headers.clone(), whole.to_vec()),
        (json_headers, whole.to_vec(), plain.clone(), b.clone()),
    ];
    let request = RequestView { method: "POST", path: "/v1/chat/completions", headers: &[], body: b"{}" };
    let rules = CompareRules::default();
    let mut verdicts = Vec::new();
    for (ph, pb, sh, sb) in &cases {
        let production = Message { status: 200, headers: ph, body: pb, trailers: &[] };
        let shadow = ShadowOutcome::Answered(Message { status: 200, headers: sh, body: sb, trailers: &[] });
        let expected = compare(&request, &production, &shadow, &rules, builtin());
        let (p, s) = (read(ph, pb), read(sh, sb));
        for sides in [[p.as_ref(), s.as_ref()], [p.as_ref(), None], [None, s.as_ref()]] {
            let got = compare_read(&request, &production, &shadow, &rules, builtin(), sides);
            assert_eq!(
                (got.verdict, got.protocol, got.diff_count, &got.note, got.metrics.similarity),
                (
                    expected.verdict,
                    expected.protocol,
                    expected.diff_count,
                    &expected.note,
                    expected.metrics.similarity
                ),
                "{sides:?}"
            );
        }
        verdicts.push(expected.verdict);
    }
    // The cases are not all alike: a pass means something.
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Match).count(), 3, "{verdicts:?}");
}
