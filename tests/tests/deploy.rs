//! The deployment files under deploy/ are checked, not just shipped:
//!
//! - every Kubernetes document is read into its typed API object (k8s-openapi), and serialised back:
//!   the API types ignore unknown fields, so a misspelt field would silently vanish; every key of
//!   the YAML must survive the round trip, which makes this a schema check;
//! - the DaemonSet has what the daemon needs on a node (host network, bpffs, BTF, the journald
//!   socket, its node name, probes that reach a loopback-bound metrics server, resources), and the
//!   pieces agree with each other (names, namespaces, ports, the shadow Service's address);
//! - the daemon's command line in the ConfigMap and in the systemd environment example is accepted
//!   by the real `mirror-daemon`: every option exists, and a full parse gets past the CLI;
//! - the systemd unit passes `systemd-analyze verify` with no warning, and keeps its hardening.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use mirror_tests::daemon;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("deploy")
}

/// One YAML document of a manifest file.
#[derive(Debug)]
struct Document {
    file: String,
    value: Value,
}

impl Document {
    fn kind(&self) -> (&str, &str) {
        let field = |name: &str| {
            self.value[name].as_str().unwrap_or_else(|| panic!("{}: a document without {name}", self.file))
        };
        (field("apiVersion"), field("kind"))
    }
}

fn documents() -> Vec<Document> {
    let dir = deploy_dir().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}: not valid YAML: {e}"));
            if !value.is_null() {
                docs.push(Document { file: file.clone(), value });
            }
        }
    }
    docs
}

/// Every key of `original` is in `typed` (the same document after a trip through the API type),
/// recursively; returns the paths of keys that were dropped.
fn lost_keys(original: &Value, typed: &Value, path: &str, lost: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(orig), Value::Object(back)) => {
            for (key, value) in orig {
                let here = format!("{path}.{key}");
                match back.get(key) {
                    Some(again) => lost_keys(value, again, &here, lost),
                    None => lost.push(here),
                }
            }
        }
        (Value::Array(orig), Value::Array(back)) => {
            if orig.len() != back.len() {
                lost.push(format!("{path} (list of {} became {})", orig.len(), back.len()));
            }
            for (i, (value, again)) in orig.iter().zip(back).enumerate() {
                lost_keys(value, again, &format!("{path}[{i}]"), lost);
            }
        }
        (Value::Object(_) | Value::Array(_), other) => lost.push(format!("{path} (became {other})")),
        _ => {}
    }
}

/// Reads `doc` as a `T`, and checks that nothing of it was ignored.
fn typed<T: DeserializeOwned + Serialize>(doc: &Document) -> T {
    let (api_version, kind) = doc.kind();
    let object: T = serde_json::from_value(doc.value.clone())
        .unwrap_or_else(|e| panic!("{}: not a valid {api_version} {kind}: {e}", doc.file));
    let back = serde_json::to_value(&object).expect("serialise");
    let mut lost = Vec::new();
    lost_keys(&doc.value, &back, "", &mut lost);
    assert!(
        lost.is_empty(),
        "{}: {kind} fields unknown to the Kubernetes API (misspelt or misplaced): {lost:?}",
        doc.file
    );
    object
}

/// All objects of deploy/kubernetes, each checked against its API type.
#[derive(Default)]
struct Manifests {
    daemonsets: Vec<DaemonSet>,
    configmaps: Vec<ConfigMap>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    namespaces: Vec<Namespace>,
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for doc in documents() {
        match doc.kind() {
            ("apps/v1", "DaemonSet") => m.daemonsets.push(typed(&doc)),
            ("v1", "ConfigMap") => m.configmaps.push(typed(&doc)),
            ("v1", "Service") => m.services.push(typed(&doc)),
            ("v1", "ServiceAccount") => m.service_accounts.push(typed(&doc)),
            ("v1", "Namespace") => m.namespaces.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.cluster_roles.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => m.bindings.push(typed(&doc)),
            (api_version, kind) => {
                panic!("{}: {api_version} {kind} is not checked by this test: add it", doc.file)
            }
        }
    }
    m
}

fn one<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "expected exactly one {what} under deploy/kubernetes");
    &items[0]
}

fn daemon_container(ds: &DaemonSet) -> &Container {
    let pod = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("DaemonSet pod spec");
    pod.containers.iter().find(|c| c.name == "mirror-daemon").expect("container mirror-daemon")
}

/// `MIRROR_ARGS` split as `sh` and systemd split it (whitespace; the files use no quoting).
fn split_args(text: &str) -> Vec<String> {
    assert!(!text.contains(['"', '\'', '\\', '$']), "MIRROR_ARGS must not need quoting: {text}");
    text.split_whitespace().map(str::to_string).collect()
}

fn option_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}

fn configmap_args(m: &Manifests) -> Vec<String> {
    let cm = one(&m.configmaps, "ConfigMap");
    let data = cm.data.as_ref().expect("ConfigMap data");
    split_args(data.get("MIRROR_ARGS").expect("ConfigMap key MIRROR_ARGS"))
}

/// A Kubernetes memory quantity in bytes: `320Mi`, `1Gi`, `512M`, `1048576`.
fn quantity_bytes(text: &str) -> u64 {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("quantity {text}"));
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => panic!("quantity unit {other} in {text}"),
    };
    n * factor
}

/// Runs a command with a time limit (coreutils `timeout`), so a hang fails instead of blocking.
fn run_bounded(seconds: u32, program: &Path, args: &[String]) -> Output {
    Command::new("timeout")
        .arg("--kill-after=5")
        .arg(seconds.to_string())
        .arg(program)
        .args(args)
        .env("NO_COLOR", "1")
        // As the DaemonSet sets it from the downward API (checked in the DaemonSet test).
        .env("NODE_NAME", "node-a")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// Every option is one `mirror-daemon run` has, and the whole command line parses: run without any
/// privilege, the daemon gets past argument parsing (exit 3 is a usage error) and stops at the
/// capability check, before touching any interface.
fn assert_daemon_accepts(args: &[String], origin: &str) {
    let bin = daemon::binary();
    let help = run_bounded(30, &bin, &["run".into(), "--help".into()]);
    assert!(help.status.success(), "mirror-daemon run --help: {help:?}");
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in args {
        assert!(arg.starts_with("--"), "{origin}: `{arg}` is not an option (use --name=value)");
        let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
        assert!(help.contains(&format!("{name} ")), "{origin}: mirror-daemon run has no option {name}");
    }

    // Metrics off (the option may be given once only) and no record file: nothing on this machine
    // is touched by the attempt.
    let mut attempt: Vec<String> = vec!["--log-format=json".into()];
    attempt.extend(
        args.iter().filter(|a| !a.starts_with("--metrics-addr") && !a.starts_with("--record")).cloned(),
    );
    attempt.push("--metrics-addr=off".into());
    // SAFETY: geteuid has no preconditions.
    let out = if unsafe { libc::geteuid() } == 0 {
        let mut drop_privileges: Vec<String> = ["--reuid=65534", "--regid=65534", "--clear-groups"]
            .into_iter()
            .chain(["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"])
            .map(String::from)
            .collect();
        drop_privileges.push(bin.to_string_lossy().into_owned());
        drop_privileges.extend(attempt);
        run_bounded(30, Path::new("setpriv"), &drop_privileges)
    } else {
        run_bounded(30, &bin, &attempt)
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(3), "{origin}: mirror-daemon rejects the arguments:\n{stderr}");
    assert!(
        stderr.contains("needs root, or the capabilities"),
        "{origin}: expected the daemon to stop at its capability check ({:?}):\n{stderr}",
        out.status
    );
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object() {
    let m = manifests();
    one(&m.daemonsets, "DaemonSet");
    one(&m.configmaps, "ConfigMap");
    one(&m.service_accounts, "ServiceAccount");
    one(&m.cluster_roles, "ClusterRole");
    one(&m.bindings, "ClusterRoleBinding");
    one(&m.services, "Service");
}

#[test]
fn the_schema_check_catches_a_misspelt_field() {
    // The check itself must be able to fail: a typo in a real document is reported.
    let docs = documents();
    let ds = docs.iter().find(|d| d.kind().1 == "DaemonSet").expect("a DaemonSet");
    let mut broken = ds.value.clone();
    let pod = broken.pointer_mut("/spec/template/spec").expect("pod spec").as_object_mut().unwrap();
    let host_network = pod.remove("hostNetwork").expect("hostNetwork is set");
    pod.insert("hostNetwrok".into(), host_network);
    let broken = Document { file: ds.file.clone(), value: broken };
    let result = std::panic::catch_unwind(|| typed::<DaemonSet>(&broken));
    let message = *result.expect_err("a misspelt field must fail").downcast::<String>().unwrap();
    assert!(message.contains(".spec.template.spec.hostNetwrok"), "{message}");
}

#[test]
fn the_daemonset_has_what_the_daemon_needs_on_a_node() {
    let m = manifests();
    let ds = one(&m.daemonsets, "DaemonSet");
    let pod = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod spec");
    assert_eq!(pod.host_network, Some(true), "XDP/TC attach to the node's interfaces");
    assert_ne!(pod.host_pid, Some(true), "the daemon has no use for the host's processes");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"), "to resolve the shadow Service");
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "must tolerate every taint to run on every node: {tolerations:?}"
    );

    let c = daemon_container(ds);
    let env = c.env.as_deref().unwrap_or_default();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(
        node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );

    // Mounts: each named host path is mounted where the daemon (or the kernel libraries) look.
    let host_path = |name: &str| {
        pod.volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let mount = |path: &str| {
        let m = mounts.iter().find(|m| m.mount_path == path).unwrap_or_else(|| panic!("no mount at {path}"));
        assert_eq!(host_path(&m.name).as_deref(), Some(path), "{path} must be the node's {path}");
        m
    };
    mount("/sys/fs/bpf");
    assert_eq!(mount("/sys/kernel/btf").read_only, Some(true), "BTF is only read");
    mount("/run/systemd/journal");

    // Probes reach the metrics server where the ConfigMap binds it.
    let args = configmap_args(&m);
    let metrics: std::net::SocketAddr =
        option_value(&args, "--metrics-addr").expect("--metrics-addr in the ConfigMap").parse().unwrap();
    for (name, probe) in [("liveness", &c.liveness_probe), ("readiness", &c.readiness_probe)] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{name} probe"));
        assert_eq!(get.path.as_deref(), Some("/healthz"), "{name} probe");
        assert_eq!(get.port, IntOrString::Int(metrics.port().into()), "{name} probe port");
        assert_eq!(get.host.as_deref(), Some(metrics.ip().to_string().as_str()), "{name} probe host");
    }

    let resources = c.resources.as_ref().expect("resources");
    for (what, list) in [("requests", &resources.requests), ("limits", &resources.limits)] {
        let list = list.as_ref().unwrap_or_else(|| panic!("resources.{what}"));
        assert!(list.contains_key("cpu") && list.contains_key("memory"), "resources.{what}: {list:?}");
    }

    // The container's memory limit is set from the daemon's --memory-limit, with headroom for
    // what the budget does not count byte for byte: at least 20% above it (or the kernel kills
    // the daemon before it sheds), at most 50% (or the budget is not what holds memory).
    let budget = option_value(&args, "--memory-limit")
        .map(|v| mirror_daemon::config::parse_size_u64(v).expect("--memory-limit is a size"))
        .unwrap_or(mirror_daemon::budget::DEFAULT_MEMORY_LIMIT);
    let limit = resources.limits.as_ref().and_then(|l| l.get("memory")).expect("limits.memory");
    let limit = quantity_bytes(&limit.0);
    assert!(
        limit >= budget + budget / 5 && limit <= budget + budget / 2,
        "limits.memory {limit} B should be --memory-limit {budget} B plus 20–50% headroom"
    );

    let security = c.security_context.as_ref().expect("securityContext");
    if security.privileged != Some(true) {
        let added = security.capabilities.as_ref().and_then(|c| c.add.clone()).unwrap_or_default();
        for needed in ["BPF", "NET_ADMIN"] {
            assert!(added.iter().any(|a| a == needed), "capability {needed} is needed: {added:?}");
        }
    }
}

#[test]
fn the_objects_refer_to_each_other_correctly() {
    let m = manifests();
    let ds = one(&m.daemonsets, "DaemonSet");
    let cm = one(&m.configmaps, "ConfigMap");
    let sa = one(&m.service_accounts, "ServiceAccount");
    let role = one(&m.cluster_roles, "ClusterRole");
    let binding = one(&m.bindings, "ClusterRoleBinding");
    let namespace = ds.metadata.namespace.as_deref().expect("DaemonSet namespace");
    assert_eq!(cm.metadata.namespace.as_deref(), Some(namespace));
    assert_eq!(sa.metadata.namespace.as_deref(), Some(namespace));
    if let Some(ns) = m.namespaces.first() {
        assert_eq!(ns.metadata.name.as_deref(), Some(namespace));
    }

    let spec = ds.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).expect("pod labels");
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the selector must match the pod");

    let env_from = daemon_container(ds).env_from.as_deref().unwrap_or_default();
    assert!(
        env_from.iter().any(|e| e.config_map_ref.as_ref().map(|r| &r.name) == cm.metadata.name.as_ref()),
        "the daemon must load the ConfigMap's MIRROR_ARGS"
    );
    let command = [daemon_container(ds).command.clone(), daemon_container(ds).args.clone()]
        .into_iter()
        .flatten()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(command.contains("$MIRROR_ARGS"), "{command}");

    // Read-only access to pods, bound to the daemon's ServiceAccount.
    let rules = role.rules.as_deref().unwrap_or_default();
    assert!(!rules.is_empty());
    for rule in rules {
        assert!(rule.verbs.iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())), "{rule:?}");
    }
    let pods = rules
        .iter()
        .find(|r| r.resources.as_deref().unwrap_or_default().contains(&"pods".into()))
        .expect("a rule for pods");
    for verb in ["list", "watch"] {
        assert!(pods.verbs.iter().any(|v| v == verb), "pod discovery needs `{verb}` on pods: {pods:?}");
    }
    // Pod discovery watches only this node's pods: NODE_NAME from the downward API.
    let env = daemon_container(ds).env.as_deref().unwrap_or_default();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME in the daemon's env");
    let field =
        node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"), "{node_name:?}");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(subjects.iter().any(|s| s.kind == "ServiceAccount"
        && Some(&s.name) == sa.metadata.name.as_ref()
        && s.namespace.as_deref() == Some(namespace)));

    // The shadow the daemon replays to is the v2 Service, and only v2 pods are behind it.
    let shadow = one(&m.services, "Service");
    let selector: BTreeMap<String, String> =
        shadow.spec.as_ref().and_then(|s| s.selector.clone()).expect("Service selector");
    assert_eq!(selector.get("version").map(String::as_str), Some("v2"), "{selector:?}");
    let port = shadow.spec.as_ref().and_then(|s| s.ports.as_ref()).expect("ports")[0].port;
    let url = format!(
        "http://{}.{}.svc.cluster.local:{port}",
        shadow.metadata.name.as_deref().unwrap(),
        shadow.metadata.namespace.as_deref().unwrap_or("default")
    );
    let args = configmap_args(&m);
    let target = option_value(&args, "--shadow").expect("--shadow in the ConfigMap");
    assert!(target.ends_with(&format!("={url}")) || target == url, "--shadow {target} is not {url}");
    assert_eq!(option_value(&args, "--port"), Some("8080"), "production v1 listens on 8080");
    // The daemon follows the seed's production pods: ml-inference v1, never the v2 shadow.
    assert_eq!(option_value(&args, "--pod-selector"), Some("app=ml-inference,version=v1"));
}

#[test]
fn the_configmap_command_line_is_accepted_by_the_daemon() {
    let m = manifests();
    let mut args = configmap_args(&m);
    // The DaemonSet adds the per-node record file after $MIRROR_ARGS.
    let command =
        daemon_container(one(&m.daemonsets, "DaemonSet")).args.clone().unwrap_or_default().join(" ");
    let rest = command.split_once("$MIRROR_ARGS").expect("$MIRROR_ARGS in the container args").1;
    args.extend(rest.split_whitespace().map(|a| a.replace("$(NODE_NAME)", "node-a")));
    assert!(args.iter().any(|a| a.starts_with("--record=")), "{args:?}");
    assert_daemon_accepts(&args, "deploy/kubernetes/configmap.yaml");
}

/// `deploy/Dockerfile` (the recipe for Docker users) builds what `cargo xtask image` builds: its
/// last stage installs the same runtime packages (iproute2's `ip` and `bridge`, for pod discovery),
/// puts the daemon where the image's entrypoint and the DaemonSet's `exec` expect it, and works in
/// the records directory; the DaemonSet pulls the image by its published name and this version.
#[test]
fn the_container_image_has_what_the_daemon_runs() {
    use mirror_tests::image;
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let last_stage = text.rsplit_once("\nFROM ").expect("a multi-stage Dockerfile").1;
    assert!(last_stage.starts_with("debian:bookworm-slim"), "runtime base: {last_stage}");
    for package in image::RUNTIME_PACKAGES {
        assert!(
            last_stage.contains("apt-get install") && last_stage.contains(package),
            "the runtime stage must install {package}, as `cargo xtask image` does:\n{last_stage}"
        );
    }
    let entrypoint = last_stage.lines().find_map(|l| l.strip_prefix("ENTRYPOINT ")).expect("an ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).expect("ENTRYPOINT in exec form");
    assert_eq!(entrypoint, [image::BINARY], "the entrypoint of `cargo xtask image`");
    assert!(last_stage.contains(&format!("WORKDIR {}", image::WORKDIR)), "{last_stage}");
    let m = manifests();
    let container = daemon_container(one(&m.daemonsets, "DaemonSet"));
    let command = container.args.clone().unwrap_or_default().join(" ");
    assert!(command.contains(&format!("exec {} ", image::BINARY)), "{command} vs {entrypoint:?}");
    assert!(last_stage.contains(&format!("COPY --from=build /out/mirror-daemon {}", image::BINARY)));
    let reference = container.image.as_deref().expect("the DaemonSet's image");
    let (registry, name) = reference.split_once('/').expect("REGISTRY/REPOSITORY:TAG");
    assert!(registry.contains('.') || registry.contains(':'), "a registry host first: {reference}");
    assert_eq!(name, format!("{}:{}", image::REPOSITORY, image::VERSION), "what `cargo xtask image` tags");

    // What the binary links against is in every Debian base image (libc6 and libgcc-s1).
    let out = Command::new("ldd").arg(daemon::binary()).output().expect("run ldd");
    assert!(out.status.success(), "ldd: {out:?}");
    let base = ["linux-vdso.so.1", "libgcc_s.so.1", "libm.so.6", "libc.so.6", "ld-linux-x86-64.so.2"];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = line.split_whitespace().next().unwrap_or_default();
        let name = lib.rsplit('/').next().unwrap_or(lib);
        assert!(base.contains(&name), "mirror-daemon needs {lib}, not in debian:bookworm-slim");
    }
}

/// `Key=value` lines of a unit or environment file, by key (in order of appearance).
fn directives(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '['])) {
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
        map.entry(key.trim().to_string()).or_default().push(value.trim().to_string());
    }
    map
}

fn systemd_analyze() -> PathBuf {
    let path = PathBuf::from("/usr/bin/systemd-analyze");
    assert!(
        path.exists(),
        "systemd-analyze is missing: apt-get install --no-install-recommends systemd (cargo xtask setup)"
    );
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(deploy_dir().join("shadow-mirror.service")).expect("read unit");
    let d = directives(&unit);
    let is = |key: &str, value: &str| {
        assert_eq!(d.get(key).map(Vec::as_slice), Some(&[value.to_string()][..]), "{key}= in the unit")
    };
    is("ExecStart", "/usr/local/bin/mirror-daemon $MIRROR_ARGS");
    is("EnvironmentFile", "-/etc/shadow-mirror/shadow-mirror.env");
    is("SyslogIdentifier", "shadow-mirror");
    is("StandardError", "journal");
    is("Restart", "on-failure");
    is("NoNewPrivileges", "yes");
    is("ProtectSystem", "strict");
    is("ProtectHome", "yes");
    is("PrivateTmp", "yes");
    is("StateDirectory", "shadow-mirror");
    let caps = "CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE";
    is("AmbientCapabilities", caps);
    is("CapabilityBoundingSet", caps);
    for forbidden in ["PrivateUsers", "PrivateNetwork", "User"] {
        assert!(!d.contains_key(forbidden), "{forbidden}= would keep the daemon from the kernel");
    }

    // Verify a copy that runs the binary under test (verify checks ExecStart is executable).
    let bin = daemon::binary();
    let copy = mirror_tests::scratch_file("shadow-mirror.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/mirror-daemon", &bin.to_string_lossy())).unwrap();
    let verify =
        |path: &Path| run_bounded(60, &systemd_analyze(), &["verify".into(), path.display().to_string()]);
    let out = verify(&copy);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown or unparsable directives (it only warns): any output is a failure.
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {out:?}");

    // The same check rejects a damaged unit, so a passing verify means something.
    let broken = mirror_tests::scratch_file("broken.service");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&copy).unwrap().replace("ProtectSystem=", "ProtectSytem="),
    )
    .unwrap();
    let out = verify(&broken);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ProtectSytem"), "{out:?}");

    // systemd's own exposure score (0 = locked down, 100 = unprotected) stays low.
    let out = run_bounded(
        60,
        &systemd_analyze(),
        &["security".into(), "--offline=true".into(), "--threshold=50".into(), copy.display().to_string()],
    );
    assert!(out.status.success(), "systemd-analyze security: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_environment_example_is_accepted_by_the_daemon() {
    let text = std::fs::read_to_string(deploy_dir().join("shadow-mirror.env.example")).expect("read");
    let d = directives(&text);
    let args = d.get("MIRROR_ARGS").and_then(|v| v.first()).expect("MIRROR_ARGS in the example");
    let args = split_args(args);
    // Records must go where the hardened unit may write: its StateDirectory.
    let record = option_value(&args, "--record").expect("--record in the example");
    assert!(record.starts_with("/var/lib/shadow-mirror/"), "{record}");
    assert_daemon_accepts(&args, "deploy/shadow-mirror.env.example");
}
