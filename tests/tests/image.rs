//! The container image, run by podman the way the DaemonSet runs it, mirrors and detaches.
//!
//! Everything the DaemonSet decides is read from deploy/kubernetes, so changing a manifest changes
//! this test: the container's command and args (with `$(NODE_NAME)` expanded, as the kubelet
//! does), its environment (the ConfigMap's keys, the node name), `securityContext` (user, added
//! capabilities after `drop: [ALL]`, no privilege escalation, read-only root, unconfined seccomp),
//! the hostPath mounts (bpffs with HostToContainer propagation, BTF read-only; the records volume
//! goes to a scratch directory instead of the host's), the resource limits and the grace period of
//! `podman stop`. Host networking becomes the production namespace of a client → production →
//! shadow scene, and the ConfigMap's command line follows that scene: its interface instead of the
//! pod selector (there is no Kubernetes API here), its shadow's address; the other options stay.
//!
//! It also times start-up: from `podman run` to the daemon saying it captures, to `/healthz`
//! answering (the DaemonSet's startup probe) and to the first comparison record.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use mirror_tests::{
    ChildGuard,
    caps::grantable,
    client::{connect, post_json},
    gate::kernel_tests_allowed,
    image,
    model_server::{self, ServerOptions, infer_request},
    netns::{Netns, Trio},
    read_records,
};
use serde_json::Value;

fn deploy_yaml(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default()
}

/// Makes sure the image is in local storage: builds it with `cargo xtask image` when it is missing.
/// False (after saying why) when podman is not installed and the kernel tests are not required.
fn image_ready() -> bool {
    if !image::podman_available() {
        if std::env::var("MIRROR_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1") {
            panic!("podman is required here: `cargo xtask image` installs it (apt-get install podman)");
        }
        eprintln!("skipping: podman is not installed (`cargo xtask image` installs it)");
        return false;
    }
    let reference = image::local_reference();
    if !image::exists(&reference) {
        eprintln!("{reference} is missing: building it with `cargo xtask image`");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["xtask", "image"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .status()
            .expect("run cargo xtask image");
        assert!(status.success(), "cargo xtask image failed ({status})");
    }
    let binary = mirror_tests::daemon::binary();
    if let (Ok(bytes), Some(label)) =
        (std::fs::read(&binary), image::label(&reference, image::LABEL_DAEMON_SHA256))
        && mirror_tests::sha256_hex(&bytes) != label
    {
        eprintln!(
            "note: {reference} holds another build than {} (rebuild: cargo xtask image)",
            binary.display()
        );
    }
    true
}

/// A container removed (killed first) on drop, whatever happened to the test.
struct Container {
    name: String,
    podman: ChildGuard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "--force", "--time", "0", &self.name]).output();
    }
}

impl Container {
    /// Waits for a log line containing `needle` (stdout or stderr of the container).
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    panic!("no {needle:?} from the container within {timeout:?}:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Every log line until the container's output closes.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) {
            self.seen.push(line);
        }
    }
}

/// Forwards each line of `from` to `to`.
fn forward(from: impl Read + Send + 'static, to: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

/// `podman run` with what the DaemonSet sets, in `netns`, with `mirror_args` as the ConfigMap's
/// MIRROR_ARGS and `records` as the records volume.
fn run_as_daemonset(netns: &Netns, mirror_args: &str, records: &Path, node: &str) -> Container {
    let ds = deploy_yaml("daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "the DaemonSet runs in the host network namespace");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    let name = format!("sm-image-{}", std::process::id());

    let mut cmd = Command::new("podman");
    cmd.args(["run", "--rm", "--pull=never", "--name", &name])
        .args(image::podman_run_options())
        .arg(format!("--network=ns:/run/netns/{}", netns.name));

    // securityContext.
    cmd.arg(format!("--user={}", security["runAsUser"].as_u64().expect("runAsUser")));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"], "capabilities.drop");
    cmd.arg("--cap-drop=all");
    let (caps, missing) = grantable(strings(&security["capabilities"]["add"]));
    if !missing.is_empty() {
        eprintln!("not in this machine's bounding set, so not granted: {missing:?}");
    }
    for cap in &caps {
        cmd.arg(format!("--cap-add={}", cap.to_ascii_lowercase()));
    }
    assert_eq!(security["privileged"], false);
    if security["allowPrivilegeEscalation"] == false {
        cmd.args(["--security-opt", "no-new-privileges"]);
    }
    if security["readOnlyRootFilesystem"] == true {
        // Kubernetes adds no tmpfs of its own.
        cmd.args(["--read-only", "--read-only-tmpfs=false"]);
    }
    if security["seccompProfile"]["type"] == "Unconfined" {
        cmd.args(["--security-opt", "seccomp=unconfined"]);
    }

    // Limits.
    let limits = &container["resources"]["limits"];
    let memory = limits["memory"].as_str().expect("memory limit");
    let memory = memory.strip_suffix("Mi").map(|m| format!("{m}m")).expect("a memory limit in Mi");
    cmd.arg(format!("--memory={memory}"));
    cmd.arg(format!("--cpus={}", limits["cpu"].as_str().expect("cpu limit")));

    // Volumes: the node's paths, except the records, which go to the test's directory.
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let volume = pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
            .expect("the mount's volume");
        let target = mount["mountPath"].as_str().expect("mountPath");
        let host = volume["hostPath"]["path"].as_str().expect("a hostPath volume");
        let source = if target == image::WORKDIR { records.to_path_buf() } else { PathBuf::from(host) };
        if !source.exists() {
            eprintln!("{} is not on this machine: not mounted ({})", source.display(), mount["name"]);
            continue;
        }
        let mut options = vec![if mount["readOnly"] == true { "ro" } else { "rw" }];
        if mount["mountPropagation"] == "HostToContainer" {
            options.push("rslave");
        }
        cmd.arg(format!("--volume={}:{target}:{}", source.display(), options.join(",")));
    }

    // Environment: the ConfigMap's keys (MIRROR_ARGS for this scene), then `env`.
    let configmap = deploy_yaml("configmap.yaml");
    let mut env: Vec<(String, String)> = Vec::new();
    for (key, value) in configmap["data"].as_object().expect("ConfigMap data") {
        let value =
            if key == "MIRROR_ARGS" { mirror_args.to_string() } else { value.as_str().unwrap().to_string() };
        env.push((key.clone(), value));
    }
    for var in container["env"].as_array().expect("env") {
        let key = var["name"].as_str().expect("env name");
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName", "{key}");
        env.push((key.to_string(), node.to_string()));
    }
    for (key, value) in &env {
        cmd.arg(format!("--env={key}={value}"));
    }

    // Command and args, with $(VAR) expanded from the container's environment.
    let command = strings(&container["command"]);
    let (entrypoint, command_rest) = command.split_first().expect("a command");
    cmd.arg(format!("--entrypoint={entrypoint}")).arg(image::local_reference()).args(command_rest);
    for arg in strings(&container["args"]) {
        let mut arg = arg;
        for (key, value) in &env {
            arg = arg.replace(&format!("$({key})"), value);
        }
        cmd.arg(arg);
    }

    eprintln!("+ {cmd:?}");
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn podman run");
    let (tx, lines) = mpsc::channel();
    forward(child.stdout.take().expect("stdout"), tx.clone());
    forward(child.stderr.take().expect("stderr"), tx);
    Container { name, podman: ChildGuard(child), lines, seen: Vec::new() }
}

/// The ConfigMap's command line, for this scene: `--interface` instead of `--pod-selector`, and
/// each shadow's URL pointing at `shadow` (on the URL's port). Returns it with the production and
/// the shadow ports it names.
fn scene_args(interface: &str, shadow: std::net::Ipv4Addr) -> (String, u16, u16) {
    let configmap = deploy_yaml("configmap.yaml");
    let args = configmap["data"]["MIRROR_ARGS"].as_str().expect("MIRROR_ARGS");
    let mut out = vec![format!("--interface={interface}")];
    let mut port = None;
    let mut shadow_port = None;
    for arg in args.split_whitespace() {
        if arg.starts_with("--pod-selector=") {
            continue;
        }
        if let Some(p) = arg.strip_prefix("--port=") {
            port = Some(p.parse().expect("--port"));
        }
        if let Some(spec) = arg.strip_prefix("--shadow=") {
            let (model, url) = spec.split_once('=').expect("--shadow=MODEL=URL");
            let p: u16 =
                url.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("a port in the shadow URL");
            shadow_port = Some(p);
            out.push(format!("--shadow={model}=http://{shadow}:{p}"));
            continue;
        }
        out.push(arg.to_string());
    }
    (out.join(" "), port.expect("--port in MIRROR_ARGS"), shadow_port.expect("--shadow in MIRROR_ARGS"))
}

/// GET /healthz on `addr` from inside `netns` (the kubelet's probe); true on 200.
fn healthy(netns: &Netns, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("metrics address");
    netns.run(move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    })
}

/// The BPF links process `pid` holds, as (link type, link id), from its descriptors' fdinfo.
fn held_links(pid: u32) -> Vec<(String, u64)> {
    let mut links = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")).flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
        let field =
            |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
        if let (Some(kind), Some(id)) = (field("link_type:"), field("link_id:")) {
            links.push((kind, id.parse().expect("link id")));
        }
    }
    links.sort();
    links
}

/// Whether the kernel still has BPF link `id`.
fn link_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_image_mirrors_as_the_daemonset_runs_it_and_detaches_on_stop() {
    if !kernel_tests_allowed("the_image_mirrors_as_the_daemonset_runs_it_and_detaches_on_stop")
        || !image_ready()
    {
        return;
    }
    let trio = Trio::new();
    let (args, port, shadow_port) = scene_args(&trio.production_if, trio.shadow_addr);
    let options = ServerOptions::default();
    let production = [SocketAddr::from((trio.production_addr, port))];
    let _v1 = model_server::start_test_build(&trio.production, &production, &options);
    let _v2 = model_server::start_test_build(
        &trio.shadow,
        &[SocketAddr::from((trio.shadow_addr, shadow_port))],
        &options,
    );
    let metrics = args
        .split_whitespace()
        .find_map(|a| a.strip_prefix("--metrics-addr="))
        .expect("--metrics-addr in MIRROR_ARGS")
        .to_string();

    let records = mirror_tests::scratch_file("image-records");
    std::fs::create_dir_all(&records).expect("records directory");
    let node = "node-image";
    let started = Instant::now();
    let mut container = run_as_daemonset(&trio.production, &args, &records, node);
    container.wait_for("capturing", Duration::from_secs(60));
    let capturing = started.elapsed();
    let healthz_deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(&trio.production, &metrics) {
        assert!(Instant::now() < healthz_deadline, "no /healthz 200:\n{}", container.seen.join("\n"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let probed = started.elapsed();

    // The container holds exactly the capabilities the DaemonSet adds (those this machine has).
    let inspect = Command::new("podman")
        .args(["inspect", "--format", "{{json .EffectiveCaps}}", &container.name])
        .output()
        .expect("podman inspect");
    let mut effective: Vec<String> = serde_json::from_slice(&inspect.stdout).expect("EffectiveCaps");
    effective.sort();
    let ds = deploy_yaml("daemonset.yaml");
    let (granted, _) = grantable(strings(
        &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"],
    ));
    let mut expected: Vec<String> =
        granted.iter().map(|c| format!("CAP_{}", c.to_ascii_uppercase())).collect();
    expected.sort();
    assert_eq!(effective, expected, "the container's capabilities");
    // The daemon (PID 1 in the container) holds an XDP and a TC (tcx, or clsact before Linux 6.6)
    // attachment of the scene's interface.
    let pid = Command::new("podman")
        .args(["inspect", "--format", "{{.State.Pid}}", &container.name])
        .output()
        .expect("podman inspect");
    let pid: u32 = String::from_utf8_lossy(&pid.stdout).trim().parse().expect("the container's pid");
    let links = held_links(pid);
    assert!(trio.production.xdp_attached(&trio.production_if), "no XDP program on the interface");
    assert!(links.iter().any(|(kind, _)| kind == "xdp"), "no XDP link held by the daemon: {links:?}");
    let tc_filters = || {
        let out = trio
            .production
            .command("tc")
            .args(["filter", "show", "dev", &trio.production_if, "egress"])
            .output();
        String::from_utf8_lossy(&out.expect("run tc").stdout).into_owned()
    };
    assert!(
        links.iter().any(|(kind, _)| kind == "tcx") || tc_filters().contains("mirror"),
        "no TC attachment: links {links:?}, clsact filters {:?}",
        tc_filters()
    );

    // Requests from the client to production, mirrored to the shadow and compared.
    let n = 20;
    let server = SocketAddr::from((trio.production_addr, port));
    let record_file = records.join(format!("{node}.jsonl"));
    let first_record = trio.client.run({
        let record_file = record_file.clone();
        move || {
            let mut conn = connect(server);
            let mut first = None;
            for i in 0..n {
                let body = infer_request(&format!("image-{i}"), &[vec![i as f64, 1.0, -1.0, 0.5]]);
                let (status, _, _) =
                    post_json(&mut conn, &server.to_string(), "/v2/models/demo/infer", &body);
                assert_eq!(status, 200);
                if i == 0 {
                    let deadline = Instant::now() + Duration::from_secs(15);
                    while read_records(&record_file).is_empty() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    first = Some(Instant::now());
                }
            }
            first.expect("a first request")
        }
    });
    let first_comparison = first_record - started;
    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        let got = read_records(&record_file);
        if got.len() >= n || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(got.len(), n, "{got:?}\n{}", container.seen.join("\n"));
    assert!(got.iter().all(|r| r["verdict"] == "match"), "{got:?}");

    // `podman stop`: SIGTERM to PID 1 (the daemon, through `exec`), within the grace period.
    let grace =
        ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().expect("grace period");
    let stopping = Instant::now();
    let stop = Command::new("podman")
        .args(["stop", "--time", &grace.to_string(), &container.name])
        .output()
        .expect("podman stop");
    assert!(stop.status.success(), "podman stop: {}", String::from_utf8_lossy(&stop.stderr));
    let stopped_in = stopping.elapsed();
    let status = container.podman.0.wait().expect("wait for podman run");
    container.drain();
    let logs = container.seen.join("\n");
    assert!(status.success(), "the container exited with {status}:\n{logs}");
    assert!(stopped_in < Duration::from_secs(grace), "stopped after {stopped_in:?}, past SIGKILL");
    assert!(logs.contains("detached"), "the daemon did not say it detached:\n{logs}");
    assert!(!trio.production.xdp_attached(&trio.production_if), "XDP left attached:\n{logs}");
    let left: Vec<_> = links.iter().filter(|(_, id)| link_exists(*id)).collect();
    assert!(left.is_empty(), "links left after stop: {left:?}");
    assert!(!tc_filters().contains("mirror"), "a TC filter left after stop: {}", tc_filters());

    eprintln!(
        "image start-up: capturing after {capturing:.2?}, /healthz 200 after {probed:.2?}, first comparison \
         {first_comparison:.2?} after `podman run`; stopped in {stopped_in:.2?}"
    );
}
