//! Property tests: however a stream is written (line ends, comments) and however it is cut into
//! pieces, the parser gives the events it was written from, and the folded answer its text.
use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
struct Written {
    event: Option<String>,
    data: Vec<String>,
    id: Option<String>,
    comment: bool,
}

fn line_text() -> impl Strategy<Value = String> {
    // Any text without line ends, including colons, spaces and non-ASCII.
    proptest::string::string_regex("[a-z :{}\"é😀0-9]{0,12}").expect("valid regex")
}

fn written() -> impl Strategy<Value = Written> {
    (
        proptest::option::of("[a-z]{1,8}"),
        proptest::collection::vec(line_text(), 1..4),
        proptest::option::of("[a-z0-9]{0,6}"),
        any::<bool>(),
    )
        .prop_map(|(event, data, id, comment)| Written { event, data, id, comment })
}

fn eol(choice: u8) -> &'static str {
    ["\n", "\r\n", "\r"][choice as usize % 3]
}

/// The stream text, with a line end picked per line from `ends`.
fn render(events: &[Written], ends: &[u8]) -> String {
    let mut out = String::new();
    let mut k = 0;
    let mut line = |out: &mut String, text: &str| {
        // A CR line end followed by an empty line ended by LF would read as one CRLF.
        let end = match eol(ends[k % ends.len()]) {
            "\n" if text.is_empty() && out.ends_with('\r') => "\r\n",
            end => end,
        };
        out.push_str(text);
        out.push_str(end);
        k += 1;
    };
    for e in events {
        if e.comment {
            line(&mut out, ": keep-alive");
        }
        if let Some(t) = &e.event {
            line(&mut out, &format!("event: {t}"));
        }
        for d in &e.data {
            line(&mut out, &format!("data: {d}"));
        }
        if let Some(id) = &e.id {
            line(&mut out, &format!("id: {id}"));
        }
        line(&mut out, "");
    }
    out
}

proptest! {
    #[test]
    fn any_split_and_line_ends_give_the_written_events(
        events in proptest::collection::vec(written(), 1..8),
        ends in proptest::collection::vec(0u8..3, 1..16),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let text = render(&events, &ends);
        let bytes = text.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut parser = EventParser::new(MAX_EVENT_BYTES);
        let mut got = Vec::new();
        let mut from = 0;
        for (i, &p) in points.iter().chain(std::iter::once(&bytes.len())).enumerate() {
            parser.push(&bytes[from..p], i as u64, &mut |e| got.push(e)).unwrap();
            from = p;
        }
        prop_assert_eq!(got.len(), events.len(), "stream {:?}", text);
        let mut last_id = None;
        for (g, w) in got.iter().zip(&events) {
            // "data: " loses exactly one space; the rest of the value is kept.
            prop_assert_eq!(&g.data, &w.data.join("\n"));
            let event = w.event.clone().unwrap_or_else(|| "message".into());
            prop_assert_eq!(&g.event, &event);
            if w.id.is_some() {
                last_id = w.id.clone();
            }
            prop_assert_eq!(&g.id, &last_id);
        }
        // Each event is stamped with the piece holding its final line end.
        let stamps: Vec<u64> = got.iter().map(|e| e.ts_ns).collect();
        prop_assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_chat_stream_folds_to_its_text_however_it_is_cut(
        words in proptest::collection::vec("[a-zA-Z,.!é]{1,6}", 1..30),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        crlf in any::<bool>(),
    ) {
        let end = if crlf { "\r\n" } else { "\n" };
        let mut body = String::new();
        for w in &words {
            let chunk = serde_json::json!({
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": format!("{w} ")}, "finish_reason": null}],
            });
            body.push_str(&format!("data: {chunk}{end}{end}"));
        }
        body.push_str(&format!("data: [DONE]{end}{end}"));
        let bytes = body.as_bytes();
        let mut arrivals = crate::exchange::Arrivals::default();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len())).filter(|&p| p > 0).collect();
        points.sort_unstable();
        points.dedup();
        for (i, &p) in points.iter().chain(std::iter::once(&bytes.len())).enumerate() {
            arrivals.push(p as u64, 1_000 + i as u64);
        }
        let answer = read(bytes, &arrivals, 0).unwrap();
        let expected: String = words.iter().map(|w| format!("{w} ")).collect();
        prop_assert_eq!(&answer.choices[0].text, &expected);
        prop_assert_eq!(answer.end, StreamEnd::Done);
        prop_assert_eq!(answer.content_times.len(), words.len());
        let pieces: Vec<Bytes> = std::iter::once(0)
            .chain(points.iter().copied())
            .zip(points.iter().copied().chain(std::iter::once(bytes.len())))
            .map(|(a, b)| Bytes::copy_from_slice(&bytes[a..b]))
            .collect();
        prop_assert!(ended_by_its_events(&pieces, StreamCoding::Identity));
        // Cut before the end event's empty line: not ended.
        let cut = bytes.len() - end.len();
        prop_assert!(!ended_by_its_events(&[Bytes::copy_from_slice(&bytes[..cut])], StreamCoding::Identity));
    }
}

#[test]
fn event_streams_are_recognised_by_content_type() {
    let h = |v: &str| {
        vec![crate::exchange::Header {
            name: "Content-Type".into(),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }]
    };
    assert!(is_event_stream(&h("text/event-stream")));
    assert!(is_event_stream(&h("Text/Event-Stream; charset=utf-8")));
    assert!(!is_event_stream(&h("application/json")));
    assert!(!is_event_stream(&[]));
}

#[test]
fn a_gzip_stream_flushed_per_event_is_read_while_open() {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut pieces = Vec::new();
    for event in ["data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n", "data: [DONE]\n\n"] {
        encoder.write_all(event.as_bytes()).unwrap();
        encoder.flush().unwrap();
        pieces.push(Bytes::from(std::mem::take(encoder.get_mut())));
    }
    // No gzip trailer: the stream is still open.
    assert!(ended_by_its_events(&pieces, StreamCoding::Gzip));
    assert!(!ended_by_its_events(&pieces[..1], StreamCoding::Gzip));
    assert!(!ended_by_its_events(&[Bytes::from_static(b"not gzip at all")], StreamCoding::Gzip));
    let h = |pairs: &[(&str, &str)]| -> Vec<crate::exchange::Header> {
        pairs
            .iter()
            .map(|(n, v)| crate::exchange::Header {
                name: n.to_string(),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect()
    };
    let sse = ("content-type", "text/event-stream");
    assert_eq!(readable_while_open(&h(&[sse])), Some(StreamCoding::Identity));
    assert_eq!(readable_while_open(&h(&[sse, ("content-encoding", "gzip")])), Some(StreamCoding::Gzip));
    assert_eq!(readable_while_open(&h(&[sse, ("content-encoding", "br")])), None);
    assert_eq!(readable_while_open(&h(&[sse, ("content-encoding", "gzip, gzip")])), None);
    assert_eq!(readable_while_open(&h(&[("content-type", "application/json")])), None);
}
