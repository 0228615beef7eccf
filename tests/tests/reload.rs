//! SIGHUP reload of the config file, against the real kernel programs: what can change while
//! running is applied to the next requests, an invalid file is refused while the running settings
//! stay in force, interfaces are attached and detached live, and a change that needs a restart
//! (ports) is reported while capture continues.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use mirror_tests::{
    ChildGuard,
    client::{connect, post_json},
    daemon::Daemon,
    gate::kernel_tests_allowed,
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Trio},
    read_records, scratch_file,
};
use serde_json::Value;

const PORT: u16 = 8080;
const PATH: &str = "/v2/models/demo/infer";

fn model_server(ns: &Netns, addr: Ipv4Addr, version: &str) -> ChildGuard {
    let options = ServerOptions { version: version.into(), ..ServerOptions::default() };
    model_server::start_test_build(ns, &[SocketAddr::from((addr, PORT))], &options)
}

/// Sends `n` distinct inference requests (tagged `tag`) from the client namespace.
fn drive(trio: &Trio, tag: &str, n: usize) {
    let server = SocketAddr::from((trio.production_addr, PORT));
    let bodies: Vec<Vec<u8>> =
        (0..n).map(|i| infer_request(&format!("{tag}-{i}"), &[vec![i as f64, 1.0, -2.5, 0.25]])).collect();
    trio.client.run(move || {
        let mut conn = connect(server);
        for body in &bodies {
            let (status, _, _) = post_json(&mut conn, &server.to_string(), PATH, body);
            assert_eq!(status, 200);
        }
    });
}

/// Waits (at most 15 s) until the records hold `compared` comparisons and `sampled_out`
/// not-compared ones; panics with what there is otherwise.
fn wait_for_records(path: &Path, compared: usize, sampled_out: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let records = read_records(path);
        let count = |f: &dyn Fn(&Value) -> bool| records.iter().filter(|r| f(r)).count();
        let got_compared = count(&|r| r["verdict"] != "not_compared");
        let got_sampled_out = count(&|r| r["verdict"] == "not_compared" && r["reason"] == "sampled_out");
        if (got_compared, got_sampled_out) == (compared, sampled_out) {
            return records;
        }
        assert!(
            got_compared <= compared && got_sampled_out <= sampled_out && Instant::now() < deadline,
            "expected {compared} compared and {sampled_out} sampled out, got {got_compared} and \
             {got_sampled_out}:\n{}",
            records.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The daemon's JSON log line whose message contains `needle`.
fn log_line(daemon: &Daemon, needle: &str) -> Value {
    let line = daemon
        .stderr
        .iter()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}` in:\n{}", daemon.stderr.join("\n")));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
}

fn config(trio: &Trio, interface: &str, shadow: &str, percent: &str, record: &Path) -> String {
    format!(
        "capture: {{interfaces: [{interface}], ports: [{PORT}]}}\n\
         production_model: {{model_id: model-v1, version: '1', is_production: true}}\n\
         shadows:\n  - {{model_id: {shadow}, version: '2', endpoint: 'http://{}:{PORT}'}}\n\
         sampling: {{percent: {percent}, routes: ['POST /v2/models/*/infer']}}\n\
         output: {{record: '{}', summary_interval: 1s, metrics_addr: 'off', log_format: json}}\n",
        trio.shadow_addr,
        record.display()
    )
}

#[test]
fn sighup_applies_the_new_config_and_keeps_the_old_one_when_the_new_is_invalid() {
    if !kernel_tests_allowed("sighup_applies_the_new_config_and_keeps_the_old_one_when_the_new_is_invalid") {
        return;
    }
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1");
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "2");
    let record = scratch_file("reload.jsonl");
    let file = scratch_file("reload.yaml");
    std::fs::write(&file, config(&trio, &trio.production_if, "model-v2", "0", &record)).unwrap();
    let mut daemon = Daemon::start(&trio.production, &["--config", file.to_str().unwrap()]);

    // Sampling at 0%: nothing is compared, every exchange is recorded as sampled out.
    drive(&trio, "before", 10);
    wait_for_records(&record, 0, 10);

    // 100%: later traffic is compared.
    std::fs::write(&file, config(&trio, &trio.production_if, "model-v2", "100", &record)).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("config reloaded", Duration::from_secs(10));
    let applied = log_line(&daemon, "config reloaded");
    assert_eq!(applied["level"], "INFO", "{applied}");
    assert!(applied["changed"].as_str().unwrap().contains("sampling.percent"), "{applied}");
    drive(&trio, "after", 10);
    let records = wait_for_records(&record, 10, 10);
    for r in records.iter().filter(|r| r["verdict"] != "not_compared") {
        assert_eq!(r["verdict"], "match", "{r}");
        assert_eq!(r["shadow"]["model_id"], "model-v2", "{r}");
    }

    // Another shadow: requests from now on go to it, and records name it.
    std::fs::write(&file, config(&trio, &trio.production_if, "model-v3", "100", &record)).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("\"changed\":\"[\\\"shadows\\\"]\"", Duration::from_secs(10));
    drive(&trio, "renamed", 10);
    let records = wait_for_records(&record, 20, 10);
    let v3 = records.iter().filter(|r| r["shadow"]["model_id"] == "model-v3").count();
    assert_eq!(v3, 10, "the new shadow's comparisons");
    assert!(
        records.iter().filter(|r| r["shadow"]["model_id"] == "model-v3").all(|r| r["verdict"] == "match")
    );

    // An invalid file is refused with the problem named; the running settings stay in force.
    std::fs::write(&file, config(&trio, &trio.production_if, "model-v2", "150", &record)).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("config reload rejected", Duration::from_secs(10));
    let rejected = log_line(&daemon, "config reload rejected");
    assert_eq!(rejected["level"], "ERROR", "{rejected}");
    assert!(rejected["error"].as_str().unwrap().contains("sampling.percent: 150"), "{rejected}");
    drive(&trio, "rejected", 10);
    let records = wait_for_records(&record, 30, 10);
    assert_eq!(records.iter().filter(|r| r["shadow"]["model_id"] == "model-v3").count(), 20, "still v3");

    // Interfaces change without a restart: `lo` is attached next to the production interface...
    let xdp_on_lo = || trio.production.xdp_attached("lo");
    assert!(!xdp_on_lo());
    let both = format!("{}, lo", trio.production_if);
    std::fs::write(&file, config(&trio, &both, "model-v3", "100", &record)).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("capture.interfaces", Duration::from_secs(10));
    assert!(xdp_on_lo(), "lo attached on reload");
    drive(&trio, "two-interfaces", 10);
    wait_for_records(&record, 40, 10);

    // ...and detached again, while a port change (which needs re-loading the programs) is refused
    // with a warning and the running value kept.
    let text = config(&trio, &trio.production_if, "model-v3", "100", &record)
        .replace(&format!("ports: [{PORT}]"), &format!("ports: [{PORT}, 9999]"));
    std::fs::write(&file, text).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("need a restart", Duration::from_secs(10));
    let warned = log_line(&daemon, "need a restart");
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert!(warned["settings"].as_str().unwrap().contains("capture.ports"), "{warned}");
    assert!(!xdp_on_lo(), "lo detached on reload");
    drive(&trio, "restart", 10);
    wait_for_records(&record, 50, 10);

    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    assert!(finished.stderr.contains("final summary"), "{}", finished.stderr);
}
