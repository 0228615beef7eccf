//! The config file: both formats mean the same, every check names the field and the fix, unknown
//! fields are refused, per-route rules pick the first match, and the shipped examples are valid.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use mirror_daemon::{
    compare::{CompareRules, ProtocolChoice},
    config::{ConfigError, FileSettings, Format, Problem, load, parse},
    kernel::XdpModeChoice,
    logging::LogFormat,
    mirror::RuleSet,
};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn yaml(text: &str) -> Result<FileSettings, Vec<Problem>> {
    parse(Path::new("test.yaml"), text, Format::Yaml).expect("parses").resolve()
}

/// The one problem `text` has; panics unless there is exactly one.
fn problem(text: &str) -> Problem {
    let problems = yaml(text).expect_err("invalid");
    assert_eq!(problems.len(), 1, "{problems:?}");
    problems.into_iter().next().unwrap()
}

/// Asserts the problem names `field` and its message contains every one of `hints`.
fn assert_problem(text: &str, field: &str, hints: &[&str]) {
    let p = problem(text);
    assert_eq!(p.field, field, "{p}");
    for hint in hints {
        assert!(p.message.contains(hint), "`{hint}` missing from: {p}");
    }
}

#[test]
fn yaml_and_toml_examples_mean_the_same() {
    let from_yaml = load(&examples().join("shadow-mirror.yaml")).expect("yaml example loads");
    let from_toml = load(&examples().join("shadow-mirror.toml")).expect("toml example loads");
    assert_eq!(from_yaml, from_toml);
    // And they say what the scene is.
    let s = from_yaml;
    assert_eq!(s.interfaces.as_deref(), Some(&["eth0".to_string()][..]));
    assert_eq!(s.ports.as_deref(), Some(&[8080][..]));
    assert_eq!(s.xdp_mode, Some(XdpModeChoice::Auto));
    assert_eq!(s.ring_buffer_size, Some(32 << 20));
    assert_eq!(s.shed, Some(true), "the examples show the default");
    let production = s.production_model.as_ref().unwrap();
    assert_eq!((production.model_id.as_str(), production.is_production), ("model-v1", true));
    let shadows = s.shadows.as_ref().unwrap();
    assert_eq!(shadows.len(), 1);
    assert_eq!(shadows[0].model.model_id, "model-v2");
    assert_eq!(shadows[0].model.version, "1.0.0");
    assert_eq!(shadows[0].endpoints_text(), "http://ml-inference-v2.default.svc:8080");
    assert_eq!(s.sample_percent, Some(100.0));
    assert_eq!(s.shadow_timeout, Some(Duration::from_secs(5)));
    assert_eq!(s.shadow_max_response, Some(16 << 20));
    assert_eq!(s.memory_limit, Some(256 << 20));
    assert!(s.standalone_problems().is_empty(), "the example fits its memory limit");
    assert_eq!(s.route_rules.len(), 1);
    assert_eq!(s.route_rules[0].rules.protocol, ProtocolChoice::Oip);
    assert_eq!(s.criteria.as_ref().unwrap().min_samples, 100);
    assert_eq!(s.metrics_addr, Some(Some("127.0.0.1:9464".parse().unwrap())));
    assert_eq!(s.log_format, Some(LogFormat::Auto));
    assert_eq!(s.summary_interval, Some(Duration::from_secs(60)));
    assert_eq!(s.record_max_size, Some(Some(256 << 20)));
    assert_eq!(s.record_keep, Some(10));
    assert_eq!(s.record_compress, Some(mirror_daemon::report::sink::Compression::Gzip));
}

#[test]
fn an_empty_file_sets_nothing() {
    assert_eq!(yaml("").unwrap(), FileSettings::default());
    assert_eq!(yaml("{}").unwrap(), FileSettings::default());
}

#[test]
fn the_examples_pass_check_config() {
    for name in ["shadow-mirror.yaml", "shadow-mirror.toml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_mirror-daemon"))
            .arg("check-config")
            .arg(examples().join(name))
            .output()
            .expect("run mirror-daemon");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("valid (1 shadows, 1 routes)"), "{stdout}");
    }
}

#[test]
fn check_config_lists_every_problem_and_exits_3() {
    let dir = std::env::temp_dir().join(format!("mirror-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "capture: {interfaces: [eth0], ports: [0]}\nshadows: [{model_id: b, endpoint: 'https://x:443'}]\n",
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_mirror-daemon")).arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].ends_with("bad.yaml: capture.ports[0]: 0 is not a port: use 1–65535"), "{stderr}");
    assert!(lines[1].contains(
        "shadows[0].endpoint: \"https://x:443\": only http:// and h2c:// (grpc://) endpoints are supported"
    ));
    // A file missing what the command line would otherwise give.
    std::fs::write(&file, "sampling: {percent: 5}\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_mirror-daemon")).arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("capture.interfaces: missing") && stderr.contains("capture.ports: missing"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parse_errors_carry_line_and_column() {
    let err = parse(Path::new("x.yaml"), "capture:\n  interfaces: [eth0\n", Format::Yaml).unwrap_err();
    let ConfigError::Parse { location: Some((line, _)), .. } = &err else { panic!("{err}") };
    assert_eq!(*line, 3, "{err}");
    let err = parse(Path::new("x.toml"), "[capture]\nports = [8080\n", Format::Toml).unwrap_err();
    assert!(err.to_string().starts_with("x.toml:"), "{err}");
    assert!(matches!(err, ConfigError::Parse { location: Some(_), .. }), "{err}");
    assert!(matches!(load(Path::new("settings.json")), Err(ConfigError::Format { .. })));
}

#[test]
fn unknown_fields_are_named() {
    for (text, field) in [
        ("capture: {interfaces: [eth0], portz: [1]}", "portz"),
        ("sampling: {percentage: 5}", "percentage"),
        ("shadows: [{model_id: a, endpoint: 'http://a:1', weight: 2}]", "weight"),
        ("compare: {tolerance: 1}", "tolerance"),
        ("routes: [{route: /x, rules: {}}]", "rules"),
        ("criteria: {min_sample: 1}", "min_sample"),
        ("outputs: {}", "outputs"),
    ] {
        let err = parse(Path::new("t.yaml"), text, Format::Yaml).expect_err(text).to_string();
        assert!(err.contains(&format!("unknown field `{field}`")), "{text}: {err}");
        assert!(err.starts_with("t.yaml:1:"), "{text}: {err}");
    }
    let err =
        parse(Path::new("t.toml"), "[replay]\ntimeout = \"1s\"\nretries = 3\n", Format::Toml).unwrap_err();
    assert!(err.to_string().contains("unknown field `retries`") && err.to_string().starts_with("t.toml:3:"));
}

// One test per rule: the problem names the field and says what to do.

#[test]
fn interfaces_must_be_named() {
    assert_problem("capture: {interfaces: []}", "capture.interfaces", &["at least one interface"]);
    assert_problem("capture: {interfaces: ['a/b']}", "capture.interfaces[0]", &["not an interface name"]);
}

#[test]
fn a_pod_selector_replaces_interfaces_and_must_be_a_selector() {
    let s = yaml("capture: {pod_selector: ' app=ml-inference,version=v1 ', interfaces: [], ports: [8080]}")
        .expect("no interface needed when following pods");
    assert_eq!(s.pod_selector.as_deref(), Some("app=ml-inference,version=v1"));
    assert!(s.standalone_problems().is_empty(), "{:?}", s.standalone_problems());
    assert!(yaml("capture: {pod_selector: 'tier in (a, b),!canary,env!=dev'}").is_ok());
    assert_problem("capture: {pod_selector: ' '}", "capture.pod_selector", &["is empty", "app=ml-inference"]);
    assert_problem("capture: {pod_selector: 'app=a,,v=1'}", "capture.pod_selector", &["empty requirement"]);
    assert_problem("capture: {pod_selector: 'tier in (a'}", "capture.pod_selector", &["parentheses"]);
    let without = yaml("capture: {ports: [8080]}").expect("valid");
    assert_eq!(without.standalone_problems()[0].field, "capture.interfaces");
    assert!(without.standalone_problems()[0].message.contains("capture.pod_selector"));
}

#[test]
fn resync_mid_stream_is_a_boolean() {
    assert_eq!(yaml("capture: {resync_mid_stream: true}").expect("valid").resync_mid_stream, Some(true));
    assert!(parse(Path::new("t.yaml"), "capture: {resync_mid_stream: maybe}", Format::Yaml).is_err());
}

#[test]
fn shed_is_a_boolean() {
    assert_eq!(yaml("capture: {shed: false}").expect("valid").shed, Some(false));
    assert_eq!(yaml("capture: {}").expect("valid").shed, None, "left out: the command line decides");
    let problems = parse(Path::new("t.yaml"), "capture: {shed: sometimes}", Format::Yaml);
    assert!(problems.is_err(), "not a boolean");
    assert!(parse(Path::new("t.yaml"), "capture: {no_shed: true}", Format::Yaml).is_err(), "unknown key");
}

#[test]
fn ports_must_be_1_to_65535_and_at_most_64() {
    assert_problem("capture: {ports: []}", "capture.ports", &["e.g. [8080]"]);
    assert_problem("capture: {ports: [8080, 65536]}", "capture.ports[1]", &["use 1–65535"]);
    assert_problem("capture: {ports: [-1]}", "capture.ports[0]", &["use 1–65535"]);
    let many: Vec<String> = (1..=65).map(|p| p.to_string()).collect();
    assert_problem(&format!("capture: {{ports: [{}]}}", many.join(",")), "capture.ports", &["at most 64"]);
}

#[test]
fn server_addresses_must_be_ips() {
    assert_problem(
        "capture: {server_addrs: [10.0.0.300]}",
        "capture.server_addrs[0]",
        &["not an IP address"],
    );
}

#[test]
fn xdp_mode_must_be_known() {
    assert_problem("capture: {xdp_mode: native}", "capture.xdp_mode", &["auto, driver or generic"]);
}

#[test]
fn ring_size_must_be_a_power_of_two() {
    assert_problem("capture: {ring_buffer_size: 24MiB}", "capture.ring_buffer_size", &["power of two"]);
    assert_problem(
        "capture: {ring_buffer_size: 32 parsecs}",
        "capture.ring_buffer_size",
        &["KiB, MiB or GiB"],
    );
}

#[test]
fn shadow_endpoints_are_http_or_h2c_with_a_port_or_a_host_alone() {
    let shadow = |endpoint: &str| format!("shadows: [{{model_id: a, endpoint: '{endpoint}'}}]");
    assert_problem(
        &shadow("https://x:443"),
        "shadows[0].endpoint",
        &["\"https://x:443\"", "only http:// and h2c:// (grpc://) endpoints are supported"],
    );
    assert_problem(&shadow("http://x"), "shadows[0].endpoint", &["needs a port", "http://", "host alone"]);
    assert_problem(&shadow("x:80"), "shadows[0].endpoint", &["expected http://HOST:PORT", "h2c://HOST:PORT"]);
    assert_problem(
        &shadow("http://x:1,http://y:2"),
        "shadows[0].endpoint",
        &["two endpoints for one protocol"],
    );
    for valid in ["http://x:1,h2c://x:2", "grpc://x:2", "ml-inference-v2.default.svc"] {
        let settings = yaml(&shadow(valid)).unwrap_or_else(|p| panic!("{valid}: {p:?}"));
        assert_eq!(settings.shadows.map(|s| s.len()), Some(1), "{valid}");
    }
}

#[test]
fn shadows_are_named_once_and_are_not_production() {
    assert_problem(
        "shadows: [{model_id: a, endpoint: 'http://a:1'}, {model_id: a, endpoint: 'http://b:1'}]",
        "shadows[1].model_id",
        &["listed twice"],
    );
    assert_problem(
        "shadows: [{model_id: a, is_production: true, endpoint: 'http://a:1'}]",
        "shadows[0].is_production",
        &["is_production: false"],
    );
    assert_problem("shadows: [{model_id: '', endpoint: 'http://a:1'}]", "shadows[0].model_id", &["is empty"]);
    assert_problem(
        "production_model: {model_id: m, is_production: false}",
        "production_model.is_production",
        &["is_production: true"],
    );
}

#[test]
fn percent_must_be_0_to_100() {
    assert_problem("sampling: {percent: 100.5}", "sampling.percent", &["0–100"]);
    assert_problem("sampling: {percent: -1}", "sampling.percent", &["0–100"]);
    assert_eq!(yaml("sampling: {percent: 0}").unwrap().sample_percent, Some(0.0));
}

#[test]
fn route_patterns_must_be_valid() {
    assert_problem("sampling: {routes: ['POST v2']}", "sampling.routes[0]", &["[METHOD ]/path/glob"]);
    assert_problem("routes: [{route: 'infer'}]", "routes[0].route", &["[METHOD ]/path/glob"]);
}

#[test]
fn replay_options_must_make_sense() {
    assert_problem("replay: {marker_header: x-shadow}", "replay.marker_header", &["`name: value`", "off"]);
    assert_problem("replay: {timeout: 0s}", "replay.timeout", &["longer than 0"]);
    assert_problem("replay: {timeout: soon}", "replay.timeout", &["e.g. 10s"]);
    assert_problem("replay: {max_in_flight: 0}", "replay.max_in_flight", &["at least 1"]);
    assert_problem("replay: {queue: 0}", "replay.queue", &["at least 1"]);
    assert_problem("replay: {max_response: 0}", "replay.max_response", &["larger than 0"]);
}

#[test]
fn tolerances_must_not_be_negative() {
    assert_problem("compare: {abs_tolerance: -0.1}", "compare.abs_tolerance", &["≥ 0"]);
    assert_problem(
        "routes: [{route: /x, compare: {rel_tolerance: -1}}]",
        "routes[0].compare.rel_tolerance",
        &["≥ 0"],
    );
    assert_problem("compare: {max_diffs: 0}", "compare.max_diffs", &["at least 1"]);
}

#[test]
fn criteria_are_validated() {
    assert_problem("criteria: {min_agreement: 1.5}", "criteria.min_agreement", &["between 0 and 1"]);
    assert_problem(
        "criteria: {max_p99_latency_ratio: 0}",
        "criteria.max_p99_latency_ratio",
        &["positive ratio"],
    );
}

#[test]
fn limits_and_outputs_are_validated() {
    assert_problem("limits: {max_connections: 0}", "limits.max_connections", &["at least 1"]);
    assert_problem("limits: {idle_timeout: 0s}", "limits.idle_timeout", &["longer than 0"]);
    assert_problem("limits: {max_body_size: 5GiB}", "limits.max_body_size", &["at most 4GiB"]);
    assert_problem("limits: {memory_limit: 16MiB}", "limits.memory_limit", &["at least 32MiB"]);
    assert_problem("limits: {workers: 0}", "limits.workers", &["1 to 256 threads"]);
    assert_problem("limits: {workers: 1000}", "limits.workers", &["1 to 256 threads"]);
    assert_eq!(yaml("limits: {workers: 3}").unwrap().workers, Some(3));
    // Settings that do not fit in the budget: check-config says which and what to do.
    let over = yaml("capture: {interfaces: [eth0], ports: [80]}\nlimits: {memory_limit: 64MiB, max_buffered_total: 32MiB}")
        .unwrap()
        .standalone_problems();
    assert_eq!(over.len(), 1, "{over:?}");
    assert_eq!(over[0].field, "limits.memory_limit");
    assert!(over[0].message.contains("raise --memory-limit to at least"), "{}", over[0]);
    assert_problem("output: {metrics_addr: localhost}", "output.metrics_addr", &["IP:PORT", "off"]);
    assert_eq!(yaml("output: {metrics_addr: 'off'}").unwrap().metrics_addr, Some(None));
    assert_problem("output: {log_format: xml}", "output.log_format", &["auto, journald, json or pretty"]);
    assert_problem("output: {summary_interval: 0s}", "output.summary_interval", &["longer than 0"]);
    assert_problem("output: {record_max_size: 1KiB}", "output.record_max_size", &["4KiB or more", "off"]);
    assert_problem("output: {record_compress: zstd}", "output.record_compress", &["gzip or none"]);
    assert_eq!(yaml("output: {record_max_size: 'off'}").unwrap().record_max_size, Some(None));
}

#[test]
fn per_route_rules_pick_the_first_match() {
    let s = yaml(
        "compare: {abs_tolerance: 0.5}\nroutes:\n  - {route: 'POST /v2/models/*/infer', compare: {abs_tolerance: 1}}\n  - {route: '/v2/**', compare: {protocol: json}}\n",
    )
    .unwrap();
    let set = RuleSet {
        default: s.compare.clone().unwrap(),
        routes: s.route_rules.clone(),
        schemas: Default::default(),
    };
    assert_eq!(set.for_request("POST", "/v2/models/m/infer").abs_tolerance, 1.0);
    let health = set.for_request("GET", "/v2/health/ready");
    assert_eq!(
        (health.protocol, health.abs_tolerance),
        (ProtocolChoice::Json, 0.0),
        "second route, its own defaults"
    );
    assert_eq!(set.for_request("POST", "/predict").abs_tolerance, 0.5, "no route: the defaults");
    assert_eq!(
        *set.for_request("POST", "/predict"),
        CompareRules { abs_tolerance: 0.5, ..CompareRules::default() }
    );
}

#[test]
fn proto_descriptors_must_be_readable_descriptor_sets() {
    let dir = std::env::temp_dir().join(format!("config-proto-descriptors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.pb");
    assert_problem(
        &format!("proto_descriptors: [{}]", missing.display()),
        "proto_descriptors[0]",
        &["cannot read", "missing.pb", "protoc --include_imports --descriptor_set_out=FILE", "buf build"],
    );
    let garbage = dir.join("garbage.pb");
    std::fs::write(&garbage, b"\xff\xff not a descriptor set").unwrap();
    assert_problem(
        &format!("proto_descriptors: [{}]", garbage.display()),
        "proto_descriptors[0]",
        &["garbage.pb", "is not a usable FileDescriptorSet", "--include_imports"],
    );
    std::fs::write(dir.join("svc.proto"), "syntax = \"proto3\";\npackage svc;\nmessage R { int64 n = 1; }\nservice S { rpc M(R) returns (R); }\n")
        .unwrap();
    let set = protox::compile(["svc.proto"], [&dir]).unwrap();
    let good = dir.join("svc.pb");
    std::fs::write(&good, prost::Message::encode_to_vec(&set)).unwrap();
    let s = yaml(&format!("proto_descriptors: [{}]", good.display())).expect("a descriptor set is accepted");
    assert_eq!(s.proto_descriptors, Some(vec![good.clone()]));
    // A set whose imports are missing is refused too.
    std::fs::write(
        dir.join("svc2.proto"),
        "syntax = \"proto3\";\npackage svc2;\nimport \"svc.proto\";\nmessage Q { svc.R r = 1; }\n",
    )
    .unwrap();
    let dependent = protox::compile(["svc2.proto"], [&dir]).unwrap();
    let mut only_top = dependent.clone();
    only_top.file.retain(|f| f.name() == "svc2.proto");
    let broken = dir.join("broken.pb");
    std::fs::write(&broken, prost::Message::encode_to_vec(&only_top)).unwrap();
    assert_problem(
        &format!("proto_descriptors: [{}]", broken.display()),
        "proto_descriptors[0]",
        &["is not a usable FileDescriptorSet", "--include_imports"],
    );
}
