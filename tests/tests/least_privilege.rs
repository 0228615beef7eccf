//! The capabilities the deployment files grant are enough, and nothing more is needed: the real
//! daemon, run with exactly those, attaches the kernel programs, mirrors real traffic to a shadow
//! and detaches — as the systemd unit runs it (an unprivileged uid holding the unit's
//! `AmbientCapabilities`, no-new-privileges) and as the DaemonSet's container runs it (uid 0 with
//! only the capabilities in `securityContext.capabilities.add`).
use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use mirror_tests::{
    ChildGuard,
    caps::grantable,
    client::{connect, post_json},
    daemon::Daemon,
    gate::kernel_tests_allowed,
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Trio},
    read_records, scratch_file,
};
use serde_json::Value;

const PORT: u16 = 8080;

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The unit's `AmbientCapabilities=`, as setpriv names them (`bpf`, `net_admin`...).
fn unit_capabilities() -> Vec<String> {
    let unit = deploy_file("shadow-mirror.service");
    let line = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase()).collect()
}

/// The DaemonSet container's `capabilities.add`, as setpriv names them.
fn daemonset_capabilities() -> Vec<String> {
    let ds: Value =
        serde_norway::from_str(&deploy_file("kubernetes/daemonset.yaml")).expect("DaemonSet YAML");
    let add = ds
        .pointer("/spec/template/spec/containers/0/securityContext/capabilities/add")
        .and_then(Value::as_array)
        .expect("capabilities.add in the DaemonSet");
    add.iter().map(|c| c.as_str().expect("a capability name").to_ascii_lowercase()).collect()
}

fn model_server(ns: &Netns, addr: Ipv4Addr, version: &str) -> ChildGuard {
    let options = ServerOptions { version: version.into(), ..ServerOptions::default() };
    model_server::start_test_build(ns, &[SocketAddr::from((addr, PORT))], &options)
}

/// Runs the daemon in the trio's production namespace through `wrapper`, drives `n` requests and
/// checks each was mirrored and compared, and that the programs are gone after it stops.
fn mirrors_with(wrapper: &[&str], tag: &str) {
    let trio = Trio::new();
    let _v1 = model_server(&trio.production, trio.production_addr, "1");
    let _v2 = model_server(&trio.shadow, trio.shadow_addr, "1");
    // The unprivileged uid must be able to append to the record file.
    let record = scratch_file(&format!("least-privilege-{tag}.jsonl"));
    std::fs::write(&record, "").expect("create record file");
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let shadow = format!("model-v2@1=http://{}:{PORT}", trio.shadow_addr);
    let args = [
        "run",
        "-i",
        &trio.production_if,
        "-p",
        "8080",
        "--shadow",
        &shadow,
        "--record",
        record.to_str().expect("utf-8 path"),
        "--metrics-addr",
        "off",
        "--log-format",
        "json",
    ];
    let daemon = Daemon::start_wrapped(&trio.production, wrapper, &args, &[]);

    let n = 20;
    let server = SocketAddr::from((trio.production_addr, PORT));
    trio.client.run(move || {
        let mut conn = connect(server);
        for i in 0..n {
            let body = infer_request(&format!("privilege-{i}"), &[vec![i as f64, 1.0, -1.0, 0.5]]);
            let (status, _, _) = post_json(&mut conn, &server.to_string(), "/v2/models/demo/infer", &body);
            assert_eq!(status, 200);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let records = loop {
        let records = read_records(&record);
        if records.len() >= n || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(records.len(), n, "{records:?}\n{}", daemon.stderr.join("\n"));
    assert!(records.iter().all(|r| r["verdict"] == "match"), "{records:?}");

    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    assert!(!trio.production.xdp_attached(&trio.production_if), "left attached");
}

#[test]
fn the_systemd_units_capabilities_are_enough() {
    if !kernel_tests_allowed("the_systemd_units_capabilities_are_enough") {
        return;
    }
    let (caps, missing) = grantable(unit_capabilities());
    if !missing.is_empty() {
        eprintln!("not in this machine's bounding set, so not granted: {missing:?}");
    }
    let list = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
    // DynamicUser: an unprivileged uid; the capabilities are ambient, as systemd grants them.
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={list}"),
        &format!("--ambient-caps={list}"),
        "--no-new-privs",
        "--",
    ];
    mirrors_with(&wrapper, "unit");
}

#[test]
fn the_daemonsets_capabilities_are_enough() {
    if !kernel_tests_allowed("the_daemonsets_capabilities_are_enough") {
        return;
    }
    let (caps, missing) = grantable(daemonset_capabilities());
    if !missing.is_empty() {
        eprintln!("not in this machine's bounding set, so not granted: {missing:?}");
    }
    let list = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
    // Root in the container with `drop: [ALL]` and only these added: the bounding set limits
    // what uid 0 holds after exec.
    let bounding = format!("--bounding-set=-all,{list}");
    mirrors_with(&["setpriv", &bounding, "--no-new-privs", "--"], "daemonset");
}

/// The wrapper really takes privileges away: without CAP_BPF the daemon stops at its check.
#[test]
fn without_the_capabilities_the_daemon_refuses_to_start() {
    if !kernel_tests_allowed("without_the_capabilities_the_daemon_refuses_to_start") {
        return;
    }
    let ns = Netns::new("noprivs");
    let out = ns
        .command("setpriv")
        .args(["--bounding-set=-all,+net_admin,+perfmon", "--no-new-privs", "--"])
        .arg(mirror_tests::daemon::binary())
        .args(["capture", "-i", "lo", "-p", "8080", "--duration", "1s"])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("CAP_BPF"), "{stderr}");
}

/// `--kernel-stats` needs CAP_SYS_ADMIN, which the deployment files do not grant: with their
/// capabilities the daemon refuses to start and says what to do, unless the host has the
/// statistics on already (`kernel.bpf_stats_enabled`, e.g. during a kernel benchmark), in which
/// case it reads them.
#[test]
fn kernel_stats_without_cap_sys_admin_need_the_sysctl() {
    if !kernel_tests_allowed("kernel_stats_without_cap_sys_admin_need_the_sysctl") {
        return;
    }
    let (caps, _) = grantable(daemonset_capabilities());
    assert!(!caps.iter().any(|c| c == "sys_admin"), "the DaemonSet grants CAP_SYS_ADMIN: {caps:?}");
    let list = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
    let ns = Netns::new("nostats");
    let host_wide =
        || std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1");
    let before = host_wide();
    let out = ns
        .command("setpriv")
        .args([&format!("--bounding-set=-all,{list}"), "--no-new-privs", "--"])
        .arg(mirror_tests::daemon::binary())
        .args(["capture", "-i", "lo", "-p", "8080", "--duration", "1s", "--kernel-stats"])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // Only possible with the statistics on host-wide for the whole run.
        assert!(before && host_wide(), "started without CAP_SYS_ADMIN or the sysctl:\n{stderr}");
        assert!(stderr.contains("kernel programs: mirror_xdp"), "{stderr}");
    } else {
        assert!(!before || !host_wide(), "refused though the sysctl is on:\n{stderr}");
        assert!(
            stderr.contains("CAP_SYS_ADMIN") && stderr.contains("kernel.bpf_stats_enabled=1"),
            "{stderr}"
        );
    }
}
