//! The daemon never mirrors its own replays, wherever the shadow is: with the shadow on the captured
//! interface and port — on `lo`, and across the captured veth — N production requests give exactly
//! N comparisons, with the marker header on or off, with and without the server-address filter.
use std::{collections::HashMap, net::SocketAddr, time::Duration};

use mirror_tests::{
    client::{connect, post_json},
    daemon::Daemon,
    gate::kernel_tests_allowed,
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Pair},
    read_records, scratch_file, sha256_hex,
};

const PATH: &str = "/v2/models/demo/infer";
const REQUESTS: usize = 200;

fn bodies() -> Vec<Vec<u8>> {
    (0..REQUESTS).map(|i| infer_request(&format!("own-{i}"), &[vec![i as f64, 1.0, 2.0, 3.0]])).collect()
}

/// Sends every body to `server` over two keep-alive connections, from `ns`.
fn drive(ns: &Netns, server: SocketAddr) {
    let answers = ns.run(move || {
        let mut conns: Vec<_> = (0..2).map(|_| connect(server)).collect();
        let host = server.to_string();
        bodies()
            .iter()
            .enumerate()
            .map(|(i, b)| post_json(&mut conns[i % 2], &host, PATH, b).0)
            .collect::<Vec<_>>()
    });
    assert!(answers.iter().all(|s| *s == 200), "production answered every request");
}

/// How a scene is run: the daemon's extra flags, and whether its replays reach the capture (the
/// server-address filter keeps them out in the kernel already).
struct Variant<'a> {
    label: &'a str,
    extra: Vec<&'a str>,
    replays_captured: bool,
}

/// Runs the daemon in `ns` on `iface` with the shadow at `shadow`, drives the requests, and checks
/// that each produced exactly one comparison, none of them of a replay.
fn exactly_one_comparison_per_request(
    ns: &Netns,
    client: &Netns,
    iface: &str,
    production: SocketAddr,
    shadow: SocketAddr,
    variant: &Variant<'_>,
) {
    let (label, extra) = (variant.label, &variant.extra);
    let record = scratch_file(&format!("own-{label}.jsonl"));
    let shadow_spec = format!("m2@2=http://{shadow}");
    let port = production.port().to_string();
    let mut args = vec![
        "run",
        "-i",
        iface,
        "-p",
        &port,
        "--shadow",
        &shadow_spec,
        "--record",
        record.to_str().unwrap(),
        "--metrics-addr",
        "off",
        "--summary-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(ns, &args);
    drive(client, production);
    // Long enough for a storm to show: every replay would be replayed again within milliseconds.
    std::thread::sleep(Duration::from_millis(1500));
    let finished = daemon.stop();
    assert!(finished.success, "{label}: {}", finished.stderr);
    let records = read_records(&record);
    let expected: Vec<String> = bodies().iter().map(|b| sha256_hex(b)).collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *seen.entry(r["request"]["sha256"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        assert_eq!(r["verdict"], "match", "{label}: same model both sides: {r}");
        assert_eq!(
            r["connection"]["server"],
            production.to_string(),
            "{label}: only production's exchanges: {r}"
        );
    }
    assert_eq!(records.len(), REQUESTS, "{label}: {} records for {REQUESTS} requests", records.len());
    for sha in &expected {
        assert_eq!(seen.get(sha), Some(&1), "{label}: request {sha} compared once");
    }
    let drops = finished.final_drops();
    let skipped = drops.get("own_replay_segments").copied().unwrap_or(0);
    if variant.replays_captured {
        assert!(skipped > 0, "{label}: the replays were seen and skipped: {drops:?}");
        assert!(
            finished.stderr.contains("the capture sees this daemon's own replays"),
            "{label}: the hint is logged"
        );
    } else {
        assert_eq!(skipped, 0, "{label}: the kernel filter keeps the replays out: {drops:?}");
    }
}

#[test]
fn a_shadow_on_the_captured_loopback_port_is_never_mirrored() {
    if !kernel_tests_allowed("a_shadow_on_the_captured_loopback_port_is_never_mirrored") {
        return;
    }
    let ns = Netns::new("own-lo");
    mirror_tests::netns::ip(&["-n", &ns.name, "addr", "add", "127.0.0.2/8", "dev", "lo"]);
    let production: SocketAddr = "127.0.0.1:18181".parse().unwrap();
    let shadow: SocketAddr = "127.0.0.2:18181".parse().unwrap();
    let options = ServerOptions::default();
    let _prod = model_server::start_test_build(&ns, &[production], &options);
    let _shadow = model_server::start_test_build(&ns, &[shadow], &options);
    for variant in [
        Variant { label: "lo", extra: vec![], replays_captured: true },
        Variant { label: "lo-no-marker", extra: vec!["--marker-header", "off"], replays_captured: true },
        Variant {
            label: "lo-server-addr",
            extra: vec!["--server-addr", "127.0.0.1"],
            replays_captured: false,
        },
        Variant {
            label: "lo-no-marker-server-addr",
            extra: vec!["--marker-header", "off", "--server-addr", "127.0.0.1"],
            replays_captured: false,
        },
    ] {
        exactly_one_comparison_per_request(&ns, &ns, "lo", production, shadow, &variant);
    }
}

#[test]
fn a_shadow_across_the_captured_veth_is_never_mirrored() {
    if !kernel_tests_allowed("a_shadow_across_the_captured_veth_is_never_mirrored") {
        return;
    }
    // Production in the server namespace; the shadow on the client's side of the captured veth,
    // on the captured port: every replay crosses the interface the daemon captures.
    let pair = Pair::new();
    let production = SocketAddr::new(pair.server_ip(false), 8080);
    let shadow = SocketAddr::new(std::net::IpAddr::V4(pair.client_v4), 8080);
    let options = ServerOptions::default();
    let _prod = model_server::start_test_build(&pair.server, &[production], &options);
    let _shadow = model_server::start_test_build(&pair.client, &[shadow], &options);
    let server_addr = pair.server_v4.to_string();
    for variant in [
        Variant { label: "veth", extra: vec![], replays_captured: true },
        Variant { label: "veth-no-marker", extra: vec!["--marker-header", "off"], replays_captured: true },
        Variant {
            label: "veth-no-marker-server-addr",
            extra: vec!["--marker-header", "off", "--server-addr", server_addr.as_str()],
            replays_captured: false,
        },
    ] {
        exactly_one_comparison_per_request(
            &pair.server,
            &pair.client,
            &pair.server_if,
            production,
            shadow,
            &variant,
        );
    }
}
