//! `--pod-selector` end to end: the real daemon, on a "node" (a network namespace) with a routed
//! pod (Calico-style /32 route into its veth) and a bridged pod (behind a `cni0` port), follows the
//! production pods that a Kubernetes API double reports on its node, attaches the kernel programs
//! to each pod's host-side interface as it comes up and detaches them when it goes, and captures
//! the production pods' traffic and nothing else: not a pod with other labels, not an address that
//! belongs to a production pod on another node, not a pod after it was deleted.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use mirror_tests::{
    ChildGuard,
    client::{connect, post_json},
    daemon::Daemon,
    gate::kernel_tests_allowed,
    kube_api::{self, KubeApi},
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, ip},
    read_records, scratch_file,
};
use serde_json::Value;

const PORT: u16 = 8080;
const NODE: &str = "node-1";
const SELECTOR: &str = "app=ml-inference,version=v1";
const PRODUCTION: &[(&str, &str)] = &[("app", "ml-inference"), ("version", "v1")];
const OTHER: &[(&str, &str)] = &[("app", "feature-store")];

/// A node namespace with its own address (on its loopback: the machine may lack the dummy
/// interface module) and pods.
struct Node {
    ns: Netns,
    pods: Vec<Netns>,
}

impl Node {
    fn new(x: u8) -> Self {
        let ns = Netns::new("node");
        let n = &ns.name;
        ip(&["-n", n, "addr", "add", &format!("198.19.{x}.1/32"), "dev", "lo"]);
        Self { ns, pods: Vec::new() }
    }

    /// A routed pod: a /32 in the pod with an on-link default route (the node answers ARP for its
    /// own address), and the node's /32 route into `host_if`.
    fn routed_pod(&mut self, host_if: &str, addr: Ipv4Addr) -> usize {
        self.pods.push(Netns::new("pod"));
        let index = self.pods.len() - 1;
        self.wire_routed(index, host_if, addr);
        index
    }

    /// Creates the routed pod's veth pair, addresses and routes (again, after [`Self::unwire`]).
    fn wire_routed(&self, index: usize, host_if: &str, addr: Ipv4Addr) {
        let (n, p) = (&self.ns.name, &self.pods[index].name);
        ip(&["link", "add", host_if, "netns", n, "type", "veth", "peer", "name", "eth0", "netns", p]);
        ip(&["-n", p, "addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
        ip(&["-n", p, "link", "set", "eth0", "up"]);
        ip(&["-n", p, "route", "add", "default", "dev", "eth0", "scope", "link"]);
        ip(&["-n", n, "link", "set", host_if, "up"]);
        ip(&["-n", n, "route", "add", &format!("{addr}/32"), "dev", host_if, "scope", "link"]);
    }

    /// Deletes a host-side interface (and its veth peer), as a CNI does when a pod's sandbox goes.
    fn unwire(&self, host_if: &str) {
        ip(&["-n", &self.ns.name, "link", "del", host_if]);
    }

    /// A bridged pod behind port `port` of `cni0` (created with the first one, holding `gateway`).
    fn bridged_pod(&mut self, port: &str, addr: Ipv4Addr, gateway: Ipv4Addr) -> usize {
        let n = self.ns.name.clone();
        let has_bridge = Command::new("ip").args(["-n", &n, "link", "show", "cni0"]).output();
        if !has_bridge.is_ok_and(|o| o.status.success()) {
            ip(&["-n", &n, "link", "add", "cni0", "type", "bridge"]);
            ip(&["-n", &n, "addr", "add", &format!("{gateway}/24"), "dev", "cni0"]);
            ip(&["-n", &n, "link", "set", "cni0", "up"]);
        }
        let pod = Netns::new("pod");
        let p = &pod.name;
        ip(&["link", "add", port, "netns", &n, "type", "veth", "peer", "name", "eth0", "netns", p]);
        ip(&["-n", &n, "link", "set", port, "master", "cni0", "up"]);
        ip(&["-n", p, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", p, "link", "set", "eth0", "up"]);
        ip(&["-n", p, "route", "add", "default", "via", &gateway.to_string(), "dev", "eth0"]);
        self.pods.push(pod);
        self.pods.len() - 1
    }

    /// Whether the capture programs are on `iface` in the node namespace.
    fn attached(&self, iface: &str) -> bool {
        self.ns.xdp_attached(iface)
    }
}

fn model_server(ns: &Netns, ip: Ipv4Addr) -> ChildGuard {
    model_server::start_test_build(ns, &[SocketAddr::from((ip, PORT))], &ServerOptions::default())
}

/// `n` inference requests from the node to `ip` over one keep-alive connection.
fn drive(node: &Node, ip: Ipv4Addr, tag: &str, n: usize) {
    let server = SocketAddr::from((ip, PORT));
    let bodies: Vec<Vec<u8>> =
        (0..n).map(|i| infer_request(&format!("{tag}-{i}"), &[vec![i as f64, 0.5, -1.0, 2.0]])).collect();
    node.ns.run(move || {
        let mut conn = connect(server);
        for body in &bodies {
            let (status, _, _) = post_json(&mut conn, &server.to_string(), "/v2/models/demo/infer", body);
            assert_eq!(status, 200);
        }
    });
}

/// Records per server address, waiting (at most 15 s) until `ip` has `want`; panics with all
/// records otherwise, or if `ip` has more.
fn wait_for(path: &Path, ip: Ipv4Addr, want: usize) -> Vec<Value> {
    let server = format!("{ip}:{PORT}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = read_records(path);
        let got = all.iter().filter(|r| r["connection"]["server"] == server.as_str()).count();
        if got == want {
            return all;
        }
        assert!(
            got < want && Instant::now() < deadline,
            "expected {want} records for {server}, got {got}:\n{}",
            all.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(records: &[Value], ip: Ipv4Addr) -> usize {
    let server = format!("{ip}:{PORT}");
    records.iter().filter(|r| r["connection"]["server"] == server.as_str()).count()
}

/// The daemon's latest JSON log line containing every one of `needles`, waiting for it.
fn log_line(daemon: &mut Daemon, needles: &[&str]) -> Value {
    let line = daemon.wait_for_line(needles, Duration::from_secs(15));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
}

/// A metric's value from the daemon's /metrics, read inside the node namespace.
fn metric(node: &Node, name: &str) -> f64 {
    let text = node.ns.run(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9464").expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").expect("ask");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read metrics");
        text
    });
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn the_daemon_follows_production_pods_on_its_node() {
    if !kernel_tests_allowed("the_daemon_follows_production_pods_on_its_node") {
        return;
    }
    let x = (std::process::id() % 200) as u8 + 20;
    let mut node = Node::new(x);
    let routed_ip = Ipv4Addr::new(198, 19, x, 10);
    let other_ip = Ipv4Addr::new(198, 19, x, 11);
    let bridged_ip = Ipv4Addr::new(198, 18, x, 2);
    let routed = node.routed_pod("calitest0", routed_ip);
    let other = node.routed_pod("calitest1", other_ip);
    let bridged = node.bridged_pod("vethpod0", bridged_ip, Ipv4Addr::new(198, 18, x, 1));
    let _servers = [
        model_server(&node.pods[routed], routed_ip),
        model_server(&node.pods[other], other_ip),
        model_server(&node.pods[bridged], bridged_ip),
    ];

    // The API server lives in the node's namespace, as the daemon reaches it from there.
    let api = KubeApi::start_in(&node.ns);
    let kubeconfig = scratch_file("pod-discovery.kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let (routed_s, other_s, bridged_s) =
        (routed_ip.to_string(), other_ip.to_string(), bridged_ip.to_string());
    // The routed pod is still starting; the bridged one serves; a pod with other labels serves on
    // this node; a production pod on another node has the other pod's address.
    api.apply(kube_api::pod("prod", "ml-a", PRODUCTION, NODE, "Pending", &[]));
    api.apply(kube_api::pod("prod", "ml-b", PRODUCTION, NODE, "Running", &[&bridged_s]));
    api.apply(kube_api::pod("prod", "features", OTHER, NODE, "Running", &[&other_s]));
    api.apply(kube_api::pod("prod", "ml-elsewhere", PRODUCTION, "node-2", "Running", &[&other_s]));

    let record = scratch_file("pod-discovery.jsonl");
    let _ = std::fs::remove_file(&record);
    let args = [
        "run",
        "--pod-selector",
        SELECTOR,
        "-p",
        "8080",
        "--record",
        record.to_str().expect("utf-8 path"),
        "--log-format",
        "json",
    ];
    let env = [("NODE_NAME", NODE), ("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))];
    let mut daemon = Daemon::start_with_env(&node.ns, &args, &env);

    // The bridged pod is found behind its port (the node never talked to it: no neighbour entry,
    // so through its namespace), and only its address is selected.
    let up = log_line(&mut daemon, &["production pod up", "prod/ml-b"]);
    assert_eq!((up["interface"].as_str(), up["cni"].as_str()), (Some("vethpod0"), Some("bridged")), "{up}");
    log_line(&mut daemon, &["server-address filter updated", &bridged_s]);
    assert!(node.attached("vethpod0"));
    assert!(!node.attached("calitest0") && !node.attached("calitest1") && !node.attached("cni0"));

    drive(&node, routed_ip, "starting", 5);
    drive(&node, other_ip, "other-labels", 5);
    drive(&node, bridged_ip, "bridged", 5);
    let seen = wait_for(&record, bridged_ip, 5);
    std::thread::sleep(Duration::from_millis(500));
    let seen = read_records(&record).len().max(seen.len());
    assert_eq!(seen, 5, "only the production pod's exchanges: {:?}", read_records(&record));

    // The routed pod starts serving: its veth is attached and its traffic captured.
    let started = Instant::now();
    api.apply(kube_api::pod("prod", "ml-a", PRODUCTION, NODE, "Running", &[&routed_s]));
    let up = log_line(&mut daemon, &["production pod up", "prod/ml-a"]);
    assert_eq!((up["interface"].as_str(), up["cni"].as_str()), (Some("calitest0"), Some("routed")), "{up}");
    log_line(&mut daemon, &["server-address filter updated", &routed_s]);
    eprintln!("routed pod Running → attached and selected in {:?}", started.elapsed());
    assert!(node.attached("calitest0"));
    drive(&node, routed_ip, "routed", 5);
    wait_for(&record, routed_ip, 5);
    assert_eq!(metric(&node, "mirror_production_pods"), 2.0);
    assert_eq!(metric(&node, "mirror_attached_interfaces"), 2.0);

    // The bridged pod is deleted: its port is detached and its address no longer selected.
    api.delete("prod", "ml-b");
    log_line(&mut daemon, &["production pod down", "prod/ml-b"]);
    log_line(&mut daemon, &["detached", "vethpod0"]);
    assert!(!node.attached("vethpod0"));
    drive(&node, bridged_ip, "deleted", 5);
    drive(&node, routed_ip, "routed-again", 5);
    let all = wait_for(&record, routed_ip, 10);
    assert_eq!(count(&all, bridged_ip), 5, "nothing from the deleted pod");

    // The other pod is relabelled into production: it is followed from then on.
    api.apply(kube_api::pod("prod", "features", PRODUCTION, NODE, "Running", &[&other_s]));
    let up = log_line(&mut daemon, &["production pod up", "prod/features"]);
    assert_eq!(up["interface"].as_str(), Some("calitest1"), "{up}");
    // Connections opened before the attach are never parsed (mid-stream): wait for it.
    log_line(&mut daemon, &["server-address filter updated", &other_s]);
    assert!(node.attached("calitest1"));
    drive(&node, other_ip, "relabelled", 5);
    let all = wait_for(&record, other_ip, 5);
    assert_eq!((count(&all, routed_ip), count(&all, bridged_ip)), (10, 5));
    assert_eq!(metric(&node, "mirror_production_pods"), 2.0);

    // The routed pod's sandbox is re-created under the same interface name while the API still
    // reports the pod up: the new interface does not carry the programs, which is noticed (within
    // the 5 s reconcile) and repaired.
    node.unwire("calitest0");
    node.wire_routed(routed, "calitest0", routed_ip);
    log_line(&mut daemon, &["interface gone (or re-created)", "calitest0"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.attached("calitest0") {
        assert!(Instant::now() < deadline, "calitest0 not attached again:\n{}", daemon.stderr.join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
    drive(&node, routed_ip, "re-created", 5);
    wait_for(&record, routed_ip, 15);

    let queries = api.queries();
    assert!(!queries.is_empty());
    for q in &queries {
        assert_eq!(q.label_selector.as_deref(), Some(SELECTOR), "{q:?}");
        assert_eq!(q.field_selector.as_deref(), Some("spec.nodeName=node-1"), "{q:?}");
    }

    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    for iface in ["calitest0", "calitest1", "vethpod0", "cni0", "lo"] {
        assert!(!node.attached(iface), "{iface} left attached");
    }
}

#[test]
fn pod_selector_without_a_node_name_is_refused_with_the_fix() {
    let out = Command::new(mirror_tests::daemon::binary())
        .args(["--pod-selector", SELECTOR, "-p", "8080"])
        .env_remove("NODE_NAME")
        .output()
        .expect("run mirror-daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "a usage error: {stderr}");
    assert!(stderr.contains("NODE_NAME") && stderr.contains("spec.nodeName"), "{stderr}");
    let out = Command::new(mirror_tests::daemon::binary())
        .args(["--pod-selector", " ", "--node-name", NODE, "-p", "8080"])
        .output()
        .expect("run mirror-daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("label selector is empty"), "{stderr}");
}
