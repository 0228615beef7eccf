//! `mirror-daemon report FILE.jsonl...`: is the candidate ready? Reads the comparison records that
//! one or several nodes wrote with `--record` — files, directories, patterns, rotated and gzip
//! files alike (see `report::record_set`) — prints per-shadow and per-route statistics and a
//! PROMOTE / HOLD / REJECT decision per shadow, and says it in the exit status so that a pipeline
//! can gate a rollout on it:
//!
//! | exit | meaning |
//! | --- | --- |
//! | 0 | PROMOTE |
//! | 1 | HOLD: not enough data yet, or not yet confident |
//! | 2 | REJECT |
//! | 3 | the report could not be made: bad option, unreadable file, no comparison records |
//!
//! With several shadows the status is the worst decision (REJECT > HOLD > PROMOTE), or the one of
//! the shadow chosen with `--shadow`. Errors are reported here rather than returned, so that they
//! cannot be mistaken for HOLD (exit 1, the status `main` gives to an error).
//!
//! Reading is streaming and the aggregates are bounded (see `report::aggregate`), so files of any
//! size can be read. A line that is not a valid record is counted and reported with its file and
//! line number; the report fails only when no line at all is valid.

use std::{
    io::{self, BufRead, Write},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Args, ValueEnum};
use mirror_daemon::report::{
    aggregate::{Aggregator, Observation, RecordError, Summary},
    criteria::{Criteria, Decision, Promotion, evaluate, worst},
    document::{InputFile, Source, VerdictDocument, Window},
    record_set::{self, Source as Input},
};

use super::CriteriaArgs;

/// Exit status when no report could be made.
const EXIT_USAGE: u8 = 3;

/// Malformed lines listed one by one before the rest are only counted.
const MAX_LISTED_MALFORMED: usize = 20;

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Comparison records written with `--record`: files (one per node, gzip ones too), directories
    /// (every file in them) or patterns such as `records.jsonl*` (a rotated set); `-` reads stdin.
    #[arg(required = true, value_name = "FILE.jsonl|DIR|PATTERN")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub criteria: CriteriaArgs,
    /// Report and decide on this shadow model only.
    #[arg(long, value_name = "MODEL_ID")]
    pub shadow: Option<String>,
    /// `text` for people, `json` for machines: the verdict document, the same as the daemon's
    /// `GET /verdict` (schema: README).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

/// What `report` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

impl ReportArgs {
    fn criteria(&self) -> Criteria {
        self.criteria.unchecked()
    }

    fn format(&self) -> Format {
        if self.json { Format::Json } else { self.format }
    }
}

/// Runs the report on stdin/stdout/stderr; the exit status is the decision (module docs).
pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let stdin = io::stdin();
    let code = execute(&args, &mut stdin.lock(), &mut io::stdout().lock(), &mut io::stderr().lock());
    Ok(ExitCode::from(code))
}

/// A line that could not be used.
#[derive(Debug)]
struct Malformed {
    file: String,
    line: u64,
    problem: String,
}

/// The earliest and latest record timestamps seen (RFC 3339 strings of one format compare as
/// times).
#[derive(Debug, Default)]
struct Span {
    from: Option<String>,
    to: Option<String>,
}

impl Span {
    fn see(&mut self, ts: &str) {
        if self.from.as_deref().is_none_or(|from| ts < from) {
            self.from = Some(ts.to_string());
        }
        if self.to.as_deref().is_none_or(|to| ts > to) {
            self.to = Some(ts.to_string());
        }
    }
}

fn name(source: &Input) -> String {
    match source {
        Input::Stdin => "stdin".into(),
        Input::File(path) => path.display().to_string(),
    }
}

/// Reads one file's lines into `aggregator`.
fn read(
    input: &mut dyn BufRead,
    file: &str,
    aggregator: &mut Aggregator,
    malformed: &mut Vec<Malformed>,
    span: &mut Span,
) -> io::Result<InputFile> {
    let mut counts = InputFile { file: file.to_string(), ..InputFile::default() };
    let mut buffer = Vec::new();
    let mut line = 0u64;
    loop {
        buffer.clear();
        if input.read_until(b'\n', &mut buffer)? == 0 {
            break;
        }
        line += 1;
        if buffer.trim_ascii().is_empty() {
            continue;
        }
        counts.lines += 1;
        let problem = match serde_json::from_slice::<serde_json::Value>(&buffer) {
            Err(e) => format!("not JSON: {e}"),
            Ok(value) => match Observation::from_record(&value) {
                Ok(observation) => {
                    counts.comparison_records += 1;
                    aggregator.add(&observation);
                    if let Some(ts) = value.get("ts").and_then(serde_json::Value::as_str) {
                        span.see(ts);
                    }
                    continue;
                }
                // A valid exchange record without a comparison is skipped, not malformed.
                Err(RecordError::NotAComparison) => {
                    counts.other_records += 1;
                    continue;
                }
                Err(e) => e.to_string(),
            },
        };
        counts.malformed += 1;
        // Only the first few are kept for listing, so that a huge bad input stays cheap.
        if malformed.len() < MAX_LISTED_MALFORMED {
            malformed.push(Malformed { file: file.to_string(), line, problem });
        }
    }
    Ok(counts)
}

/// The report, with every failure turned into a message on `err` and exit status 3.
fn execute(args: &ReportArgs, stdin: &mut dyn BufRead, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match report(args, stdin, out, err) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            EXIT_USAGE
        }
    }
}

fn report(
    args: &ReportArgs,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, String> {
    let criteria = args.criteria();
    criteria.validate().map_err(|e| format!("--{}", e.to_string().replace('_', "-")))?;

    let mut aggregator = Aggregator::default();
    let mut malformed = Vec::new();
    let mut span = Span::default();
    let mut files = Vec::new();
    for source in record_set::expand(&args.files).map_err(|e| e.to_string())? {
        let file = name(&source);
        let counts = match &source {
            Input::Stdin => read(stdin, &file, &mut aggregator, &mut malformed, &mut span),
            Input::File(path) => {
                let mut opened = record_set::open(path).map_err(|e| e.to_string())?;
                read(&mut opened, &file, &mut aggregator, &mut malformed, &mut span)
            }
        }
        .map_err(|e| format!("cannot read {file}: {e}"))?;
        files.push(counts);
    }

    let total = |f: fn(&InputFile) -> u64| files.iter().map(f).sum::<u64>();
    let (lines, records, bad) = (total(|f| f.lines), total(|f| f.comparison_records), total(|f| f.malformed));
    let warn =
        |err: &mut dyn Write, text: String| writeln!(err, "warning: {text}").map_err(|e| e.to_string());
    for m in &malformed {
        warn(err, format!("{}:{}: {}", m.file, m.line, m.problem))?;
    }
    if bad > malformed.len() as u64 {
        warn(err, format!("{} more malformed lines not listed", bad - malformed.len() as u64))?;
    }
    let names = files.iter().map(|f| f.file.as_str()).collect::<Vec<_>>().join(", ");
    if lines > 0 && bad == lines {
        return Err(format!(
            "none of the {lines} lines in {names} is a valid record (first problem above): is this a \
             file written with --record?"
        ));
    }
    if records == 0 {
        return Err(format!(
            "no comparison records in {names}: was the daemon run with --shadow and --record?"
        ));
    }
    if files.len() > 1 {
        for f in files.iter().filter(|f| f.comparison_records == 0) {
            warn(
                err,
                format!(
                    "no comparison records in {}: was the daemon on that node run with --shadow and --record?",
                    f.file
                ),
            )?;
        }
    }

    let mut summary = aggregator.summary();
    if let Some(wanted) = &args.shadow {
        let present = summary.shadows.iter().map(|s| s.model_id.clone()).collect::<Vec<_>>().join(", ");
        summary.shadows.retain(|s| &s.model_id == wanted);
        if summary.shadows.is_empty() {
            return Err(format!(
                "no records for shadow `{wanted}` in {names}; shadows present: {present}. Pick one of \
                 those with --shadow"
            ));
        }
    }
    let decisions: Vec<Decision> = summary.shadows.iter().map(|s| evaluate(s, &criteria)).collect();
    let overall = worst(&decisions).ok_or("no shadow to decide on")?;
    let code = overall.exit_code();

    let written = match args.format() {
        Format::Json => {
            let window = Window::records(span.from, span.to);
            let source = Source::Records { files };
            let document = VerdictDocument::build(&summary, &[], &criteria, source, window, None);
            debug_assert_eq!(document.exit_code, code);
            serde_json::to_writer_pretty(&mut *out, &document)
                .map_err(io::Error::from)
                .and_then(|()| writeln!(out))
        }
        Format::Text => text(out, &files, &summary, &decisions, overall, code),
    };
    written.map_err(|e| format!("cannot write the report: {e}"))?;
    Ok(code)
}

fn text(
    out: &mut dyn Write,
    files: &[InputFile],
    summary: &Summary,
    decisions: &[Decision],
    overall: Promotion,
    code: u8,
) -> io::Result<()> {
    let total = |f: fn(&InputFile) -> u64| files.iter().map(f).sum::<u64>();
    write!(out, "read {} file(s): {} comparison records", files.len(), total(|f| f.comparison_records))?;
    let other = total(|f| f.other_records);
    if other > 0 {
        write!(out, ", {other} records without a comparison skipped")?;
    }
    let bad = total(|f| f.malformed);
    if bad > 0 {
        write!(out, ", {bad} malformed lines skipped")?;
    }
    writeln!(out)?;
    writeln!(out)?;
    write!(out, "{summary}")?;
    writeln!(out)?;
    for (shadow, decision) in summary.shadows.iter().zip(decisions) {
        writeln!(out, "decision for {}: {}", shadow.model_id, decision.verdict)?;
        for reason in &decision.reasons {
            writeln!(out, "  - {reason}")?;
        }
    }
    if decisions.len() > 1 {
        writeln!(out, "overall: {overall} (the worst of {} shadows; exit status {code})", decisions.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_daemon::report::criteria::{
        DEFAULT_MAX_ERROR_RATE_INCREASE, DEFAULT_MAX_P99_LATENCY_RATIO, DEFAULT_MAX_STREAM_P99_RATIO,
        DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_EXACT_MATCH, DEFAULT_MIN_SAMPLES,
    };
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A file under the system temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(lines: &[String]) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "mirror-report-{}-{}.jsonl",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn record(shadow: &str, verdict: &str, production_ms: f64, shadow_ms: f64) -> String {
        // Timestamps by shadow and verdict: 00:00:03 for matches, 00:00:06 for mismatches.
        let second = (shadow.len() + verdict.len()) % 10;
        let ts = format!("2026-01-01T00:00:0{second}.000000Z");
        serde_json::json!({
            "schema": 1, "method": "POST", "path": "/v2/models/demo/infer", "ts": ts,
            "route": "POST /v2/models/demo/infer",
            "production": {"status": 200, "latency_ms": production_ms},
            "shadow": {"model_id": shadow, "status": 200, "latency_ms": shadow_ms, "error": null},
            "verdict": verdict,
            "metrics": {"rows": 1, "label_agreements": 1, "label_flips": 0}
        })
        .to_string()
    }

    fn records(shadow: &str, matches: usize, mismatches: usize) -> Vec<String> {
        let mut lines = vec![record(shadow, "match", 10.0, 11.0); matches];
        lines.extend(vec![record(shadow, "mismatch", 10.0, 11.0); mismatches]);
        lines
    }

    fn args(files: Vec<PathBuf>) -> ReportArgs {
        ReportArgs {
            files,
            criteria: CriteriaArgs {
                min_samples: DEFAULT_MIN_SAMPLES,
                min_agreement: DEFAULT_MIN_AGREEMENT,
                max_p99_latency_ratio: DEFAULT_MAX_P99_LATENCY_RATIO,
                max_error_rate_increase: DEFAULT_MAX_ERROR_RATE_INCREASE,
                max_ttft_p99_ratio: DEFAULT_MAX_STREAM_P99_RATIO,
                max_tpot_p99_ratio: DEFAULT_MAX_STREAM_P99_RATIO,
                min_exact_match: DEFAULT_MIN_EXACT_MATCH,
            },
            shadow: None,
            format: Format::Text,
            json: false,
        }
    }

    /// Exit status, stdout and stderr of a report over `args` with `stdin`.
    fn report_on(args: &ReportArgs, stdin: &str) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = execute(args, &mut stdin.as_bytes(), &mut out, &mut err);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn all_matches_promote() {
        let file = TempFile::new(&records("model-v2", 200, 0));
        let (code, out, err) = report_on(&args(vec![file.0.clone()]), "");
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("read 1 file(s): 200 comparison records"), "{out}");
        assert!(out.contains("decision for model-v2: PROMOTE"), "{out}");
        assert!(out.contains("agreement 1.000 (95% CI 0.981–1.000) is at least 0.95"), "{out}");
        assert!(err.is_empty(), "{err}");
        // Through the public entry point too.
        assert_eq!(run(args(vec![file.0.clone()])).unwrap(), ExitCode::from(0));
    }

    #[test]
    fn sixty_percent_agreement_rejects() {
        let file = TempFile::new(&records("model-v2", 120, 80));
        let (code, out, _) = report_on(&args(vec![file.0.clone()]), "");
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("decision for model-v2: REJECT"), "{out}");
        assert!(out.contains("agreement 0.600 (95% CI 0.531–0.665) is below 0.95"), "{out}");
    }

    #[test]
    fn few_records_hold() {
        let file = TempFile::new(&records("model-v2", 20, 0));
        let (code, out, _) = report_on(&args(vec![file.0.clone()]), "");
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("HOLD") && out.contains("need 80 more"), "{out}");
        let mut lenient = args(vec![file.0.clone()]);
        lenient.criteria.min_samples = 20;
        assert_eq!(report_on(&lenient, "").0, 1, "20/20 has a lower bound of 0.839: still HOLD");
        lenient.criteria.min_agreement = 0.8;
        assert_eq!(report_on(&lenient, "").0, 0);
    }

    #[test]
    fn malformed_lines_are_counted_with_their_place() {
        let mut lines = records("model-v2", 200, 0);
        lines.insert(3, "{not json".into());
        lines.insert(7, String::new());
        lines.insert(10, r#"{"schema": 1, "verdict": "match"}"#.into());
        // An exchange record without a comparison: skipped, not malformed.
        lines.insert(12, r#"{"schema": 1, "production": {"status": 200, "latency_ms": 1.0}}"#.into());
        let file = TempFile::new(&lines);
        let (code, out, err) = report_on(&args(vec![file.0.clone()]), "");
        assert_eq!(code, 0, "{out}{err}");
        let shown = file.0.display().to_string();
        assert!(err.contains(&format!("{shown}:4: not JSON")), "{err}");
        assert!(err.contains(&format!("{shown}:11: missing field `shadow.model_id`")), "{err}");
        assert!(
            out.contains("200 comparison records, 1 records without a comparison skipped, 2 malformed"),
            "{out}"
        );

        // Only bad lines: an error, exit 3.
        let bad = TempFile::new(&["garbage".into(), "[1]".into()]);
        let (code, _, err) = report_on(&args(vec![bad.0.clone()]), "");
        assert_eq!(code, 3);
        assert!(err.contains("none of the 2 lines") && err.contains("--record"), "{err}");
    }

    #[test]
    fn several_nodes_and_shadows() {
        let node_a = TempFile::new(&records("model-v2", 150, 0));
        let mut b = records("model-v2", 50, 0);
        b.extend(records("model-v3", 120, 80));
        let node_b = TempFile::new(&b);
        let both = args(vec![node_a.0.clone(), node_b.0.clone()]);
        let (code, out, _) = report_on(&both, "");
        assert_eq!(code, 2, "the worst of PROMOTE and REJECT: {out}");
        assert!(out.contains("shadow model-v2: 200 comparisons"), "{out}");
        assert!(
            out.contains("decision for model-v2: PROMOTE") && out.contains("decision for model-v3: REJECT")
        );
        assert!(out.contains("overall: REJECT"), "{out}");
        let one = ReportArgs { shadow: Some("model-v2".into()), ..both.clone() };
        let (code, out, _) = report_on(&one, "");
        assert_eq!(code, 0, "{out}");
        assert!(!out.contains("model-v3"), "{out}");
        let missing = ReportArgs { shadow: Some("model-v9".into()), ..both.clone() };
        let (code, _, err) = report_on(&missing, "");
        assert_eq!(code, 3);
        assert!(err.contains("model-v9") && err.contains("model-v2, model-v3"), "{err}");

        // `--json` and `--format json` print the verdict document.
        let json = ReportArgs { json: true, ..both.clone() };
        let (code, out, _) = report_on(&json, "");
        assert_eq!(code, 2);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["schema"], 1);
        assert_eq!(value["decision"], "REJECT");
        assert_eq!(value["exit_code"], 2);
        assert_eq!(value["shadows"][0]["model_id"], "model-v2");
        assert_eq!(value["shadows"][0]["decision"], "PROMOTE");
        assert_eq!(value["shadows"][1]["agreement"]["trials"], 200);
        assert_eq!(value["shadows"][1]["criteria"][1]["name"], "min_agreement");
        assert_eq!(value["shadows"][1]["criteria"][1]["status"], "fail");
        assert_eq!(value["source"]["kind"], "records");
        assert_eq!(value["source"]["files"][1]["comparison_records"], 250);
        assert_eq!(value["window"]["basis"], "records");
        assert_eq!(value["window"]["from"], "2026-01-01T00:00:03.000000Z");
        assert_eq!(value["window"]["to"], "2026-01-01T00:00:06.000000Z");
        assert!(value["health"].is_null());
        let format = ReportArgs { format: Format::Json, ..both };
        let (code, again, _) = report_on(&format, "");
        assert_eq!((code, again), (2, out));
    }

    /// The `--json` report without its `source` part (which lists the files read).
    fn decision_of(files: Vec<PathBuf>) -> (u8, serde_json::Value) {
        let (code, out, err) = report_on(&ReportArgs { json: true, ..args(files) }, "");
        assert!(code < 3, "{out}{err}");
        let mut value: serde_json::Value = serde_json::from_str(&out).unwrap();
        let source = value.as_object_mut().unwrap().remove("source").unwrap();
        let records: u64 = source["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["comparison_records"].as_u64().unwrap())
            .sum();
        (code, serde_json::json!({"report": value, "records": records}))
    }

    #[test]
    fn a_rotated_set_reports_like_one_file() {
        use mirror_daemon::report::sink::{Compression, RecordFile, SinkConfig, Target};
        // Varied records: two shadows, every verdict, spread latencies.
        let verdicts = ["match", "match", "match", "within_tolerance", "mismatch", "shadow_error"];
        let lines: Vec<String> = (0..600)
            .map(|i| {
                let shadow = if i % 3 == 0 { "model-v3" } else { "model-v2" };
                record(shadow, verdicts[i % verdicts.len()], 5.0 + (i % 17) as f64, 4.0 + (i % 23) as f64)
            })
            .collect();
        let one = TempFile::new(&lines);
        let dir = std::env::temp_dir().join(format!("mirror-report-set-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Written by the daemon's own writer, rotating every ~20 KiB, gzip-compressed.
        let config = SinkConfig {
            target: Target::File(dir.join("node.jsonl")),
            max_size: Some(20 << 10),
            keep: 100,
            compression: Compression::Gzip,
            log_every: std::time::Duration::from_secs(10),
        };
        let mut writer = RecordFile::open(config, Default::default()).unwrap();
        for line in &lines {
            writer.append(format!("{line}\n").as_bytes(), std::time::Instant::now());
        }
        writer.finish(std::time::Instant::now());
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.len() > 4, "rotated: {names:?}");
        assert!(names.iter().any(|n| n == "node.jsonl.2.gz"), "{names:?}");

        let (code, expected) = decision_of(vec![one.0.clone()]);
        assert_eq!(expected["records"], 600);
        for set in [
            vec![dir.clone()],
            vec![dir.join("node.jsonl*")],
            vec![dir.join("node.jsonl.?.gz"), dir.join("node.jsonl")],
        ] {
            let (got_code, got) = decision_of(set.clone());
            assert_eq!((got_code, &got), (code, &expected), "{set:?}");
        }
        // A file named twice (a directory and a pattern) is read once; a compressed twin wins.
        std::fs::copy(dir.join("node.jsonl.1.gz"), dir.join("node.jsonl.1")).unwrap();
        let (_, twice) = decision_of(vec![dir.clone(), dir.join("node.jsonl")]);
        assert_eq!(twice, expected);
        let (code, _, err) = report_on(&args(vec![dir.join("nothing*")]), "");
        assert_eq!(code, 3);
        assert!(err.contains("no file matches"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stdin_and_usage_errors() {
        let input = records("model-v2", 200, 0).join("\n");
        let (code, out, _) = report_on(&args(vec!["-".into()]), &input);
        assert_eq!(code, 0, "{out}");

        let (code, _, err) = report_on(&args(vec!["/nonexistent/records.jsonl".into()]), "");
        assert_eq!(code, 3);
        assert!(err.contains("cannot open /nonexistent/records.jsonl"), "{err}");

        let exchanges_only = r#"{"schema": 1, "production": {"status": 200, "latency_ms": 1.0}}"#;
        let (code, _, err) = report_on(&args(vec!["-".into()]), exchanges_only);
        assert_eq!(code, 3);
        assert!(
            err.contains("no comparison records in stdin: was the daemon run with --shadow and --record?")
        );
        let (code, _, err) = report_on(&args(vec!["-".into()]), "\n\n");
        assert_eq!(code, 3, "{err}");

        let mut wrong = args(vec!["-".into()]);
        wrong.criteria.min_agreement = 95.0;
        let (code, _, err) = report_on(&wrong, &input);
        assert_eq!(code, 3);
        assert!(err.contains("--min-agreement is 95"), "{err}");
    }
}
