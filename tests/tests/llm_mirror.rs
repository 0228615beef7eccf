//! Streamed LLM answers end to end, with stacks the project did not write on both sides: the
//! official `openai` Python client (`stream=True`, which closes the connection as soon as it reads
//! `data: [DONE]`) calls an OpenAI-compatible server (aiohttp, SSE over chunked HTTP/1.1) in
//! production; the daemon, capturing production's interface, assembles each streamed answer from
//! the wire, replays the request to the shadow and compares the assembled choices.
//!
//! The truth comes from the client (the text it assembled per choice, finish reasons, tool calls,
//! its own time to first token), from calling the shadow directly with the same requests, and from
//! `llm_model.py`'s rule for which prompts a candidate changes (re-implemented in
//! `mirror_tests::llm::differs`). Records are matched to the truth by `x-request-id`.
use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use mirror_tests::{
    daemon::{Daemon, Finished},
    gate::kernel_tests_allowed,
    llm::{self, ClientOptions, LlmServer, ServerOptions, Truth},
    netns::Trio,
    read_records, scratch_file,
};
use serde_json::Value;

const PORT: u16 = 8000;
/// Every server's first-token delay; the wire's TTFT must come out close to it.
const TTFT_MS: f64 = 40.0;
const TOKEN_DELAY_MS: f64 = 4.0;

/// Production and shadow LLM servers in a client ↔ production ↔ shadow topology, and the daemon
/// in production's namespace comparing them.
struct Scene {
    daemon: Option<Daemon>,
    _production: LlmServer,
    _shadow: LlmServer,
    record: PathBuf,
    /// Last: the namespaces go after everything running in them.
    trio: Trio,
}

fn timed(options: ServerOptions) -> ServerOptions {
    ServerOptions { ttft_ms: TTFT_MS, token_delay_ms: TOKEN_DELAY_MS, ..options }
}

impl Scene {
    fn new(name: &str, production: ServerOptions, shadow: ServerOptions, daemon_args: &[&str]) -> Self {
        let trio = Trio::new();
        let at = |addr| [SocketAddr::from((addr, PORT))];
        let production = llm::start_server(&trio.production, &at(trio.production_addr), &timed(production))
            .expect("start the production LLM server");
        let shadow = llm::start_server(&trio.shadow, &at(trio.shadow_addr), &timed(shadow))
            .expect("start the shadow LLM server");
        let record = scratch_file(&format!("llm-{name}.jsonl"));
        let _ = std::fs::remove_file(&record);
        let shadow_spec = format!("llm-v2@2=http://{}:{PORT}", trio.shadow_addr);
        let port = PORT.to_string();
        let mut args = vec![
            "run",
            "-i",
            &trio.production_if,
            "-p",
            &port,
            "--shadow",
            &shadow_spec,
            "--production-model",
            "llm-v1@1",
            "--record",
            record.to_str().expect("a UTF-8 path"),
            "--record-bodies",
            "--summary-interval",
            "1s",
            "--metrics-addr",
            "off",
        ];
        args.extend_from_slice(daemon_args);
        let daemon = Daemon::start(&trio.production, &args);
        Self { trio, _production: production, _shadow: shadow, record, daemon: Some(daemon) }
    }

    fn production(&self) -> SocketAddr {
        SocketAddr::from((self.trio.production_addr, PORT))
    }

    /// Runs the client against production, through the capture.
    fn drive(&self, options: &ClientOptions, name: &str) -> Vec<Truth> {
        llm::run_client(&self.trio.client, options, &scratch_file(&format!("llm-{name}-truth.jsonl")))
    }

    /// Lets the last comparisons finish, stops the daemon; returns its records, by request id, and
    /// what it said. The servers keep running.
    fn finish(&mut self, settle: Duration) -> (HashMap<String, Value>, Finished) {
        std::thread::sleep(settle);
        let finished = self.daemon.take().expect("the daemon runs").stop();
        assert!(finished.success, "{}", finished.stderr);
        let mut records = HashMap::new();
        for r in read_records(&self.record) {
            let id = llm::request_id(&r).unwrap_or_else(|| panic!("a record without x-request-id: {r}"));
            assert!(records.insert(id.to_string(), r.clone()).is_none(), "request {id} recorded twice");
        }
        (records, finished)
    }
}

/// The same requests sent to the shadow directly (from production's namespace, off the captured
/// interface, after the daemon stopped): what the shadow answers to each, by index.
fn direct(trio: &Trio, options: &ClientOptions, name: &str) -> HashMap<u64, Truth> {
    let shadow = SocketAddr::from((trio.shadow_addr, PORT));
    let truth = llm::run_client(
        &trio.production,
        &options.to(shadow, "direct-"),
        &scratch_file(&format!("llm-{name}-direct.jsonl")),
    );
    truth.into_iter().map(|t| (t.index, t)).collect()
}

/// A side's `choices` as (index, finish_reason, text), by index. A streamed side must carry them;
/// a whole answer may, else they are read from its recorded body (`--record-bodies`).
fn recorded_choices(side: &Value, what: &str) -> Vec<(u64, Option<String>, Option<String>)> {
    let whole;
    let choices = match side["choices"].as_array() {
        Some(choices) => choices,
        None if !side["content_type"].as_str().is_some_and(|t| t.starts_with("text/event-stream")) => {
            whole = whole_body_choices(side, what);
            &whole
        }
        None => panic!("{what}: a streamed answer without choices: {side}"),
    };
    let mut out: Vec<_> = choices
        .iter()
        .map(|c| {
            (
                c["index"].as_u64().unwrap_or_else(|| panic!("{what}: a choice without index: {c}")),
                c["finish_reason"].as_str().map(str::to_string),
                c["text"].as_str().map(str::to_string),
            )
        })
        .collect();
    out.sort();
    out
}

/// The choices of a whole (not streamed) answer's recorded body, in the record's shape.
fn whole_body_choices(side: &Value, what: &str) -> Vec<Value> {
    use base64::Engine as _;
    use std::io::Read as _;
    let raw = match (side["body_base64"].as_str(), side["body"].as_str()) {
        (Some(b64), _) => base64::engine::general_purpose::STANDARD.decode(b64).expect("base64 body"),
        (None, Some(text)) => text.as_bytes().to_vec(),
        (None, None) => panic!("{what}: neither choices nor a body: {side}"),
    };
    // The shadow's side records no headers: gzip is known by its magic bytes.
    let gzip = raw.starts_with(&[0x1f, 0x8b]);
    let mut body = Vec::new();
    if gzip {
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut body).expect("a gzip body");
    } else {
        body = raw;
    }
    let answer: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: body not JSON: {e}"));
    let choices = answer["choices"].as_array().unwrap_or_else(|| panic!("{what}: no choices: {answer}"));
    choices
        .iter()
        .map(|c| {
            let text = c["message"]["content"].as_str().or(c["text"].as_str()).unwrap_or_default();
            serde_json::json!({"index": c["index"], "finish_reason": c["finish_reason"], "text": text})
        })
        .collect()
}

/// What a truth line says the choices are, in the record's shape.
fn truth_choices(truth: &Truth) -> Vec<(u64, Option<String>, Option<String>)> {
    let mut out: Vec<_> =
        truth.choices.iter().map(|c| (c.index, c.finish_reason.clone(), Some(c.text.clone()))).collect();
    out.sort();
    out
}

fn number(v: &Value, pointer: &str, r: &Value) -> f64 {
    v.pointer(pointer).and_then(Value::as_f64).unwrap_or_else(|| panic!("no number at {pointer}: {r}"))
}

/// The figures of a streamed side, as the record contract describes them.
fn assert_stream_fields(side: &Value, r: &Value) {
    for field in ["/ttft_ms", "/tpot_ms", "/e2e_ms", "/itl_ms/p50", "/itl_ms/p95", "/itl_ms/max"] {
        let value = number(side, field, r);
        assert!(value >= 0.0, "{field} = {value}: {r}");
    }
    let ttft = number(side, "/ttft_ms", r);
    let e2e = number(side, "/e2e_ms", r);
    assert!(ttft <= e2e, "the first token comes before the end: {r}");
    assert!(number(side, "/events", r) >= 1.0, "{r}");
    assert!(number(side, "/output_tokens", r) >= 1.0, "{r}");
    assert!(["usage", "events"].contains(&side["tokens_from"].as_str().unwrap_or_default()), "{r}");
    assert_eq!(side["stream_end"], "done", "{r}");
}

/// Checks a record against the client's truth and the shadow's direct answer; returns its verdict.
fn check_compared(r: &Value, truth: &Truth, shadow: &Truth) -> String {
    let id = &truth.id;
    assert_eq!(r["path"], truth.path.as_str(), "{id}: {r}");
    assert_eq!(r["protocol"], "openai", "{id}: {r}");
    assert!(truth.error.is_none() && !truth.aborted, "{id}: the client got a whole answer: {truth:?}");
    // Production's text is exactly what the client assembled; the shadow's what it answers directly.
    assert_eq!(recorded_choices(&r["production"], "production"), truth_choices(truth), "{id}: {r}");
    assert_eq!(recorded_choices(&r["shadow"], "shadow"), truth_choices(shadow), "{id}: {r}");
    if truth.stream {
        assert_stream_fields(&r["production"], r);
        let events = number(&r["production"], "/events", r) as u64;
        assert!(
            events == truth.events || events == truth.events + 1,
            "{id}: {events} events on the wire, the client read {} chunks and [DONE]: {r}",
            truth.events
        );
        let tokens = number(&r["production"], "/output_tokens", r) as u64;
        match &truth.usage {
            Some(usage) => {
                assert_eq!(r["production"]["tokens_from"], "usage", "{id}: {r}");
                assert_eq!(Some(tokens), usage["completion_tokens"].as_u64(), "{id}: {r}");
            }
            None => assert_eq!(r["production"]["tokens_from"], "events", "{id}: {r}"),
        }
    }
    // Token usage as each server reported it (usage chunk or whole answer).
    let reported = |t: &Truth| t.usage.as_ref().and_then(|u| u["completion_tokens"].as_u64());
    if let Some(tokens) = reported(truth) {
        assert_eq!(r["metrics"]["prod_tokens"].as_u64(), Some(tokens), "{id}: {r}");
    }
    if let Some(tokens) = reported(shadow) {
        assert_eq!(r["metrics"]["shadow_tokens"].as_u64(), Some(tokens), "{id}: {r}");
    }
    let verdict = r["verdict"].as_str().unwrap_or_default().to_string();
    let equal = truth.choices == shadow.choices;
    assert_eq!(verdict, if equal { "match" } else { "mismatch" }, "{id}: {r}");
    assert_eq!(r["metrics"]["text_equal"].as_bool(), Some(texts(truth) == texts(shadow)), "{id}: {r}");
    assert_eq!(
        r["metrics"]["finish_reason_equal"].as_bool(),
        Some(finishes(truth) == finishes(shadow)),
        "{r}"
    );
    let calls = |t: &Truth| -> Vec<Vec<(Option<String>, String)>> {
        t.choices
            .iter()
            .map(|c| c.tool_calls.iter().map(|k| (k.name.clone(), k.arguments.clone())).collect())
            .collect()
    };
    // Completions have no tool calls to compare.
    let tool_calls_equal = r["metrics"]["tool_calls_equal"].as_bool();
    if truth.api == "chat" {
        assert_eq!(tool_calls_equal, Some(calls(truth) == calls(shadow)), "{id}: {r}");
    } else {
        assert_ne!(tool_calls_equal, Some(false), "{id}: {r}");
    }
    let similarity = number(r, "/metrics/similarity", r);
    assert!((0.0..=1.0).contains(&similarity), "{id}: {r}");
    if texts(truth) == texts(shadow) {
        assert_eq!(similarity, 1.0, "{id}: equal texts: {r}");
    }
    verdict
}

fn texts(t: &Truth) -> Vec<&str> {
    t.choices.iter().map(|c| c.text.as_str()).collect()
}

fn finishes(t: &Truth) -> Vec<Option<&str>> {
    t.choices.iter().map(|c| c.finish_reason.as_deref()).collect()
}

fn record_of<'a>(records: &'a HashMap<String, Value>, truth: &Truth, finished: &Finished) -> &'a Value {
    records.get(&truth.id).unwrap_or_else(|| {
        panic!("no record of {}; drops {:?}; {} records", truth.id, finished.final_drops(), records.len())
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
fn streamed_answers_are_assembled_and_timed_from_the_wire() {
    if !kernel_tests_allowed("streamed_answers_are_assembled_and_timed_from_the_wire") {
        return;
    }
    let mut scene = Scene::new("same", ServerOptions::default(), ServerOptions::default(), &[]);
    // Chat and completions; some whole, some with the usage chunk, tools, n = 2, max_tokens.
    let options = ClientOptions {
        concurrency: 4,
        non_stream_every: 5,
        usage_every: 3,
        tools_every: 3,
        choices_every: 7,
        max_tokens_every: 6,
        ..ClientOptions::new(scene.production(), 40)
    };
    let truth = scene.drive(&options, "same");
    let (records, finished) = scene.finish(Duration::from_millis(1500));
    let shadow = direct(&scene.trio, &options, "same");
    assert!(truth.iter().any(|t| t.tools && t.choices[0].tool_calls.len() > 1), "a parallel tool call");
    assert!(truth.iter().any(|t| t.choices.iter().any(|c| c.finish_reason.as_deref() == Some("length"))));
    let (mut gaps, mut ttfts) = (Vec::new(), Vec::new());
    for t in &truth {
        let r = record_of(&records, t, &finished);
        assert_eq!(check_compared(r, t, &shadow[&t.index]), "match", "identical models: {r}");
        if !t.stream {
            continue;
        }
        // The wire sees the first token before the client has decoded it, and never before the
        // server made it.
        let wire = number(r, "/production/ttft_ms", r);
        let client = t.ttft_ms.expect("a streamed answer has a first token");
        assert!(wire <= client, "{}: TTFT {wire} ms on the wire, {client} ms at the client", t.id);
        assert!(wire >= TTFT_MS, "{}: the server waits {TTFT_MS} ms before its first token: {wire}", t.id);
        ttfts.push(wire);
        gaps.push(client - wire);
    }
    assert_eq!(records.len(), truth.len(), "one record per request");
    assert!(!finished.final_drops().contains_key("sse_stream_cut"), "{:?}", finished.final_drops());
    // Close to the client's and to the server's delay. A shared machine's scheduling delays a
    // Python client's threads now and then (first calls also open connections), so the bounds
    // are on the median and on 90% of the streams.
    let within = gaps.iter().filter(|&&g| g < 50.0).count();
    println!(
        "TTFT on the wire: median {:.2} ms (server delay {TTFT_MS} ms); client − wire: median {:.2} ms, \
         {within} of {} within 50 ms",
        median(ttfts.clone()),
        median(gaps.clone()),
        gaps.len()
    );
    assert!(median(gaps.clone()) < 20.0, "client − wire TTFT: {gaps:?}");
    assert!(within * 10 >= gaps.len() * 9, "client − wire TTFT within 50 ms: {gaps:?}");
    assert!(median(ttfts.clone()) < TTFT_MS + 20.0, "wire TTFT ≈ the server's {TTFT_MS} ms: {ttfts:?}");
}

#[test]
fn a_candidate_that_changes_words_mismatches_exactly_where_it_changes_them() {
    if !kernel_tests_allowed("a_candidate_that_changes_words_mismatches_exactly_where_it_changes_them") {
        return;
    }
    const DIFFER: f64 = 30.0;
    let candidate = ServerOptions { variant: true, differ_percent: DIFFER, ..ServerOptions::default() };
    let mut scene = Scene::new("variant", ServerOptions::default(), candidate, &[]);
    let options =
        ClientOptions { concurrency: 4, usage_every: 2, ..ClientOptions::new(scene.production(), 40) };
    let truth = scene.drive(&options, "variant");
    let (records, finished) = scene.finish(Duration::from_millis(1500));
    let shadow = direct(&scene.trio, &options, "variant");
    let mut changed = 0;
    for t in &truth {
        let r = record_of(&records, t, &finished);
        let verdict = check_compared(r, t, &shadow[&t.index]);
        let differs = llm::differs(&t.prompt, DIFFER);
        assert_eq!(verdict, if differs { "mismatch" } else { "match" }, "{}: {r}", t.id);
        assert_eq!(r["metrics"]["text_equal"].as_bool(), Some(!differs), "{r}");
        assert_eq!(r["metrics"]["finish_reason_equal"].as_bool(), Some(true), "{r}");
        let similarity = number(r, "/metrics/similarity", r);
        if differs {
            changed += 1;
            // One word of 8–24 changed: a token-level F1 of (n − 1) / n.
            assert!(similarity < 1.0 && similarity > 0.5, "{}: similarity {similarity}: {r}", t.id);
        }
    }
    assert_eq!(records.len(), truth.len());
    assert!(changed >= 4, "the candidate changes ~30% of 40 answers: {changed}");
}

#[test]
fn a_streamed_answer_and_a_whole_one_compare_by_content() {
    if !kernel_tests_allowed("a_streamed_answer_and_a_whole_one_compare_by_content") {
        return;
    }
    let whole = ServerOptions { never_stream: true, ..ServerOptions::default() };
    let mut scene = Scene::new("whole", ServerOptions::default(), whole, &[]);
    let options = ClientOptions {
        concurrency: 4,
        usage_every: 2,
        tools_every: 2,
        ..ClientOptions::new(scene.production(), 20)
    };
    let truth = scene.drive(&options, "whole");
    let (records, finished) = scene.finish(Duration::from_millis(1500));
    // The shadow answers whole JSON: asked without a stream, the client reads it.
    let whole_options = ClientOptions { non_stream_every: 1, ..options };
    let shadow = direct(&scene.trio, &whole_options, "whole");
    for t in &truth {
        let r = record_of(&records, t, &finished);
        assert!(t.stream);
        assert_eq!(check_compared(r, t, &shadow[&t.index]), "match", "{r}");
        assert_eq!(r["shadow"]["content_type"], "application/json", "{r}");
    }
    assert_eq!(records.len(), truth.len());
}

#[test]
fn a_shadow_that_stalls_mid_stream_times_out_alone() {
    if !kernel_tests_allowed("a_shadow_that_stalls_mid_stream_times_out_alone") {
        return;
    }
    const STALL: f64 = 30.0;
    let stalling =
        ServerOptions { stall_after: Some(3), stall_percent: Some(STALL), ..ServerOptions::default() };
    let mut scene = Scene::new(
        "stall",
        ServerOptions::default(),
        stalling,
        &["--shadow-timeout", "2s", "--shadow-stream-idle-timeout", "1s"],
    );
    let options = ClientOptions { concurrency: 4, ..ClientOptions::new(scene.production(), 30) };
    let truth = scene.drive(&options, "stall");
    let (records, finished) = scene.finish(Duration::from_secs(3));
    let mut stalled = 0;
    for t in &truth {
        let r = record_of(&records, t, &finished);
        assert_eq!(recorded_choices(&r["production"], "production"), truth_choices(t), "{r}");
        if llm::picked("stall", &t.prompt, STALL) {
            stalled += 1;
            assert_eq!(r["verdict"], "shadow_timeout", "{}: the shadow stalled: {r}", t.id);
            assert_eq!(r["shadow"]["error"], "timeout", "{r}");
        } else {
            assert_eq!(r["verdict"], "match", "{}: the others go on: {r}", t.id);
        }
    }
    assert!(stalled >= 3, "~30% of 30 prompts stall: {stalled}");
    assert_eq!(records.len(), truth.len());
}

#[test]
fn a_client_that_leaves_mid_stream_is_not_compared_and_is_counted() {
    if !kernel_tests_allowed("a_client_that_leaves_mid_stream_is_not_compared_and_is_counted") {
        return;
    }
    let mut scene = Scene::new("abort", ServerOptions::default(), ServerOptions::default(), &[]);
    // Every third stream is closed by the client after 3 of its ≥ 10 events.
    let options = ClientOptions {
        concurrency: 4,
        abort_after_events: Some(3),
        abort_every: 3,
        ..ClientOptions::new(scene.production(), 30)
    };
    let truth = scene.drive(&options, "abort");
    let (records, finished) = scene.finish(Duration::from_millis(1500));
    let shadow = direct(&scene.trio, &ClientOptions { abort_after_events: None, ..options }, "abort");
    let aborted = truth.iter().filter(|t| t.aborted).count();
    assert_eq!(aborted, 10, "the client closed every third stream");
    for t in &truth {
        match records.get(&t.id) {
            Some(r) if t.aborted => {
                assert_eq!(r["verdict"], "not_compared", "{}: production's answer was cut: {r}", t.id)
            }
            None if t.aborted => {}
            r => {
                let r = r.unwrap_or_else(|| panic!("no record of {}", t.id));
                assert_eq!(check_compared(r, t, &shadow[&t.index]), "match", "{r}");
            }
        }
    }
    let drops = finished.final_drops();
    assert_eq!(drops.get("sse_stream_cut").copied(), Some(aborted as u64), "{drops:?}");
}

/// Gzip-compressed streams compare as `match`, also those whose connection the client closed after
/// `[DONE]`, before the gzip trailer and the last chunk: the daemon decodes a compressed stream as
/// far as it was captured to find its end event (the server flushes after each event, as servers
/// that compress streams do).
#[test]
fn gzip_compressed_streams_compare_as_match() {
    if !kernel_tests_allowed("gzip_compressed_streams_compare_as_match") {
        return;
    }
    let gzip = ServerOptions { gzip: true, ..ServerOptions::default() };
    let mut scene = Scene::new("gzip", gzip.clone(), gzip, &[]);
    let options = ClientOptions {
        concurrency: 4,
        usage_every: 2,
        non_stream_every: 4,
        ..ClientOptions::new(scene.production(), 20)
    };
    let truth = scene.drive(&options, "gzip");
    let (records, finished) = scene.finish(Duration::from_millis(1500));
    let shadow = direct(&scene.trio, &options, "gzip");
    for t in &truth {
        let r = records
            .get(&t.id)
            .unwrap_or_else(|| panic!("{}: no record; drops {:?}", t.id, finished.final_drops()));
        let encoding = r["production"]["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case("content-encoding")));
        assert_eq!(encoding.map(|h| &h[1]), Some(&Value::from("gzip")), "{r}");
        assert_eq!(check_compared(r, t, &shadow[&t.index]), "match", "{r}");
        if t.stream {
            assert!(r["production"]["ttft_ms"].as_f64().is_some(), "a gzip stream is timed per event: {r}");
        }
    }
    let drops = finished.final_drops();
    for name in ["reset_with_pending", "truncated_response", "sse_stream_cut"] {
        assert_eq!(drops.get(name).copied().unwrap_or(0), 0, "{name}: {drops:?}");
    }
}

/// The shared model rule agrees between `llm_model.py` and `mirror_tests::llm`: the verdict checks
/// above depend on it. No namespaces, no daemon.
#[test]
fn the_candidates_choice_of_prompts_is_the_same_in_python_and_rust() {
    use std::io::Write;
    let prompts: Vec<String> =
        (0..200).map(|i| format!("user: question {i} of run llm: what comes next?")).collect();
    let query = serde_json::json!({ "prompts": prompts, "differ_percent": 30.0 });
    let mut child = mirror_tests::python::env()
        .script("llm_model.py")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run llm_model.py");
    child.stdin.take().expect("stdin").write_all(query.to_string().as_bytes()).expect("write prompts");
    let out = child.wait_with_output().expect("llm_model.py output");
    assert!(out.status.success(), "llm_model.py failed");
    let answer: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let python: Vec<bool> = answer.iter().map(|a| a["differs"].as_bool().expect("differs")).collect();
    let rust: Vec<bool> = prompts.iter().map(|p| llm::differs(p, 30.0)).collect();
    assert_eq!(python, rust);
    let share = rust.iter().filter(|&&d| d).count();
    assert!((40..=80).contains(&share), "~30% of 200: {share}");
}
