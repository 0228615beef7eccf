//! Host-side interfaces of pods (routed and bridged CNIs).
//!
//! The capture programs must sit on the interface that carries a production pod's traffic. Which
//! one that is depends on the CNI:
//!
//! - **Routed** CNIs (Calico, Cilium in routing mode, kindnet/ptp, AWS VPC CNI) give the host a route
//!   to the pod's address (usually a /32 or /128) through the host side of the pod's veth
//!   (`cali…`, `lxc…`, `veth…`). That route's output device is the answer.
//! - **Bridged** CNIs (the bridge plugin, flannel's `cni0`, `docker0`) route the pod's subnet to a
//!   bridge. The answer is the bridge port behind which the pod lives: the pod's address is resolved
//!   to its MAC through the neighbour table, and the MAC to the port through the bridge's forwarding
//!   database (FDB).
//!
//! The daemon never sends traffic to find a pod: if the neighbour table has no entry (the node has
//! not talked to the pod lately) or the FDB entry has aged out, the pod's network namespace is
//! looked for instead (named namespaces under `/run/netns`, where containerd and CRI-O keep pod
//! namespaces, Docker's under `/var/run/docker/netns`, and those of every process in `/proc`). The
//! namespace whose interface holds the pod's address names its veth peer by index, and the bridge
//! port is the one whose own peer index points back at that interface: both ends must agree, since
//! interface indexes are only unique within one namespace. If that fails too, the bridge itself is
//! returned with the reason: it sees the pod's traffic in both directions, along with its
//! neighbours'.
//!
//! The kernel is asked through iproute2's JSON output (`ip -j`, `bridge -j`), which is stable and
//! present wherever the daemon runs; this keeps the daemon free of a netlink stack for a lookup done
//! once per pod. The parsers are pure functions over that JSON and are tested on captured samples;
//! running the commands stays in a thin layer at the edge. Commands inherit the calling thread's
//! network namespace, so [`interface_for_pod`] answers for the namespace its thread is in.
use std::{
    fs,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;
use thiserror::Error;

/// Where to attach the capture programs for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// The host's route to the pod leaves through this interface (the host side of its veth).
    Routed { interface: String },
    /// The pod sits behind this port (the host side of its veth) of `bridge`.
    BridgePort { interface: String, bridge: String },
    /// The pod is behind `bridge` but its port could not be found; the bridge carries its traffic
    /// too, mixed with its neighbours'. `reason` says why, for the log.
    Bridge { bridge: String, reason: String },
    /// A hostNetwork pod: its address is the node's, held by this interface (the node's NIC).
    HostNetwork { interface: String },
}

impl Attachment {
    /// The interface to attach to.
    pub fn interface(&self) -> &str {
        match self {
            Attachment::Routed { interface }
            | Attachment::BridgePort { interface, .. }
            | Attachment::HostNetwork { interface } => interface,
            Attachment::Bridge { bridge, .. } => bridge,
        }
    }
}

/// Why a pod's interface could not be found.
#[derive(Debug, Error)]
pub enum InterfaceError {
    /// The node has no usable route to the address.
    #[error(
        "no route to pod {ip} on this node: is the pod scheduled here? check `ip route get {ip}` ({detail})"
    )]
    NoRoute { ip: IpAddr, detail: String },
    /// The route goes through a gateway: the pod is on another node.
    #[error(
        "pod {ip} is reached through gateway {gateway} on {dev}, so it runs on another node: run the daemon on the pod's node (check `ip route get {ip}`)"
    )]
    Remote { ip: IpAddr, gateway: String, dev: String },
    /// The address belongs to this host itself.
    #[error(
        "{ip} is an address of this host, not of a pod network (`ip route get {ip}` says {kind} on {dev}): a hostNetwork pod has no interface of its own, capture on the node's interface instead"
    )]
    Local { ip: IpAddr, kind: String, dev: String },
    /// A hostNetwork pod's address is not on any interface of this host.
    #[error(
        "hostNetwork pod address {ip} is on no interface of this host (check `ip -br addr`): is the pod scheduled on this node?"
    )]
    NotOnHost { ip: IpAddr },
    /// `ip` or `bridge` could not be started.
    #[error("could not run `{command}`: {source} (is iproute2 installed?)")]
    Spawn { command: String, source: std::io::Error },
    /// `ip` or `bridge` reported an error.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    /// `ip` or `bridge` printed something other than the JSON expected.
    #[error("unexpected output from `{command}`: {detail}")]
    Parse { command: String, detail: String },
}

/// Finds the host-side interface that carries the traffic of the pod at `ip`, in the network
/// namespace of the calling thread.
///
/// Synchronous: it runs a few short `ip`/`bridge` commands (and, on the fallback path, one per
/// network namespace on the node); call it from `spawn_blocking` in async code.
pub fn interface_for_pod(ip: IpAddr) -> Result<Attachment, InterfaceError> {
    let ip_s = ip.to_string();
    let route = match run("ip", &["-j", "route", "get", &ip_s]) {
        Ok(out) => parse_route(&out).map_err(|detail| parse_error("ip -j route get", detail))?,
        Err(InterfaceError::Command { stderr, .. }) => {
            return Err(InterfaceError::NoRoute { ip, detail: stderr });
        }
        Err(e) => return Err(e),
    };
    let dev = check_route(ip, route)?;
    let link = run("ip", &["-j", "-d", "link", "show", "dev", &dev])?;
    if !parse_is_bridge(&link).map_err(|detail| parse_error("ip -j -d link show", detail))? {
        return Ok(Attachment::Routed { interface: dev });
    }
    bridge_port(ip, dev)
}

/// Finds the interface of this host holding `ip`: where a hostNetwork pod's traffic arrives.
/// The loopback interface does not count (it only carries the node's traffic to itself).
pub fn interface_for_host_network_pod(ip: IpAddr) -> Result<Attachment, InterfaceError> {
    let addrs = run("ip", &["-j", "addr", "show"])?;
    match parse_holder(&addrs, ip).map_err(|detail| parse_error("ip -j addr show", detail))? {
        Some(interface) => Ok(Attachment::HostNetwork { interface }),
        None => Err(InterfaceError::NotOnHost { ip }),
    }
}

/// The bridged case: neighbour table and FDB first, then the pod's namespace, then the bridge.
fn bridge_port(ip: IpAddr, bridge: String) -> Result<Attachment, InterfaceError> {
    let mut why = match port_from_tables(ip, &bridge)? {
        Ok(interface) => return Ok(Attachment::BridgePort { interface, bridge }),
        Err(why) => why,
    };
    let ports = run("ip", &["-j", "-d", "link", "show", "master", &bridge])?;
    let ports = parse_ports(&ports).map_err(|detail| parse_error("ip -j -d link show master", detail))?;
    match port_from_namespaces(ip, &ports) {
        Some(interface) => Ok(Attachment::BridgePort { interface, bridge }),
        None => {
            why.push_str(" and no network namespace on this node holds it behind a port of the bridge");
            Ok(Attachment::Bridge { reason: format!("{why}; capturing on {bridge} itself"), bridge })
        }
    }
}

/// The port of `bridge` found through the neighbour table and the FDB, or why there is none.
fn port_from_tables(ip: IpAddr, bridge: &str) -> Result<Result<String, String>, InterfaceError> {
    let ip_s = ip.to_string();
    let neigh = run("ip", &["-j", "neigh", "show", "to", &ip_s, "dev", bridge])?;
    let mac = parse_neighbour(&neigh).map_err(|detail| parse_error("ip -j neigh show", detail))?;
    let Some(mac) = mac else {
        return Ok(Err(format!("the neighbour table has no MAC for {ip}")));
    };
    let fdb = run("bridge", &["-j", "fdb", "show", "br", bridge])?;
    let port =
        parse_fdb_port(&fdb, &mac, bridge).map_err(|detail| parse_error("bridge -j fdb show", detail))?;
    Ok(port.ok_or_else(|| format!("the bridge has not learned {mac} (the MAC of {ip}) on any port")))
}

/// Checks a route looks like one to a pod on this node and returns its output device.
fn check_route(ip: IpAddr, route: Route) -> Result<String, InterfaceError> {
    let kind = route.kind.unwrap_or_else(|| "unicast".to_string());
    match kind.as_str() {
        "unicast" => {}
        "local" | "broadcast" | "multicast" | "anycast" => {
            return Err(InterfaceError::Local { ip, kind, dev: route.dev.unwrap_or_default() });
        }
        other => return Err(InterfaceError::NoRoute { ip, detail: format!("the route is of type {other}") }),
    }
    let Some(dev) = route.dev else {
        return Err(InterfaceError::NoRoute { ip, detail: "the route has no output device".into() });
    };
    if dev == "lo" {
        return Err(InterfaceError::Local { ip, kind, dev });
    }
    if let Some(gateway) = route.gateway {
        return Err(InterfaceError::Remote { ip, gateway, dev });
    }
    Ok(dev)
}

fn parse_error(command: &str, detail: String) -> InterfaceError {
    InterfaceError::Parse { command: command.to_string(), detail }
}

fn run(program: &str, args: &[&str]) -> Result<String, InterfaceError> {
    let command = || format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| InterfaceError::Spawn { command: command(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(InterfaceError::Command { command: command(), stderr });
    }
    String::from_utf8(out.stdout)
        .map_err(|_| InterfaceError::Parse { command: command(), detail: "not UTF-8".into() })
}

// ---- the pod's namespace (fallback without traffic) ----

/// Network namespaces are visited at most this many times, so a node with a runaway number of
/// processes cannot make the lookup unbounded.
const MAX_NAMESPACES: usize = 4096;

/// Looks through the node's other network namespaces for the interface holding `ip` and returns the
/// bridge port (among `ports`) that is its veth peer.
fn port_from_namespaces(ip: IpAddr, ports: &[Port]) -> Option<String> {
    let own = fs::metadata("/proc/thread-self/ns/net").ok().map(|m| (m.dev(), m.ino()));
    let mut seen = std::collections::HashSet::new();
    if let Some(id) = own {
        seen.insert(id);
    }
    for path in namespace_files() {
        let Ok(meta) = fs::metadata(&path) else { continue };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if seen.len() > MAX_NAMESPACES {
            break;
        }
        let Some(addrs) = addresses_in(&path) else { continue };
        let Ok(Some(pod)) = parse_pod_link(&addrs, ip) else { continue };
        if let Some(port) = match_port(ports, pod) {
            return Some(port);
        }
    }
    None
}

/// Named namespaces first (cheap, and where CNIs put pods), then those of running processes.
fn namespace_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["/run/netns", "/var/run/netns", "/var/run/docker/netns"] {
        if let Ok(entries) = fs::read_dir(dir) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
                files.push(entry.path().join("ns/net"));
            }
        }
    }
    files
}

/// `ip -j -d addr show` inside the namespace at `path`, from a thread that enters it.
fn addresses_in(path: &Path) -> Option<String> {
    let file = fs::File::open(path).ok()?;
    std::thread::spawn(move || {
        // SAFETY: `file` is an open namespace file; setns changes only this short-lived thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        run("ip", &["-j", "-d", "addr", "show"]).ok()
    })
    .join()
    .ok()
    .flatten()
}

/// The bridge port whose veth peer is `pod` and which `pod` names as its own peer.
fn match_port(ports: &[Port], pod: PodLink) -> Option<String> {
    ports
        .iter()
        .find(|p| p.ifindex == pod.peer_index && p.peer_index == Some(pod.ifindex))
        .map(|p| p.name.clone())
}

// ---- pure parsers over iproute2's JSON ----

#[derive(Debug, Deserialize)]
struct Route {
    #[serde(rename = "type")]
    kind: Option<String>,
    dev: Option<String>,
    gateway: Option<String>,
}

/// The first route of `ip -j route get`.
fn parse_route(json: &str) -> Result<Route, String> {
    let routes: Vec<Route> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    routes.into_iter().next().ok_or_else(|| "no route in the answer".to_string())
}

#[derive(Debug, Deserialize)]
struct Link {
    ifindex: u32,
    ifname: String,
    link_index: Option<u32>,
    link_netnsid: Option<i64>,
    linkinfo: Option<LinkInfo>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct LinkInfo {
    info_kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    local: Option<String>,
}

/// Whether `ip -j -d link show dev DEV` describes a bridge.
fn parse_is_bridge(json: &str) -> Result<bool, String> {
    let links: Vec<Link> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let link = links.first().ok_or("no link in the answer")?;
    Ok(link.linkinfo.as_ref().and_then(|i| i.info_kind.as_deref()) == Some("bridge"))
}

#[derive(Debug, Deserialize)]
struct Neighbour {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// The MAC of `ip -j neigh show to IP dev DEV`, if the entry holds one that is usable (entries being
/// resolved or that failed have none; stale ones still name the last MAC seen).
fn parse_neighbour(json: &str) -> Result<Option<String>, String> {
    let entries: Vec<Neighbour> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(entries
        .into_iter()
        .filter(|n| !n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"))
        .find_map(|n| n.lladdr)
        .map(|mac| mac.to_ascii_lowercase()))
}

#[derive(Debug, Deserialize)]
struct FdbEntry {
    mac: String,
    ifname: Option<String>,
    master: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
}

/// The port of `bridge` that `bridge -j fdb show br BRIDGE` has learned `mac` on. Entries of the
/// bridge itself and the ports' own hardware entries (`self`) are not ports behind which a pod lives.
fn parse_fdb_port(json: &str, mac: &str, bridge: &str) -> Result<Option<String>, String> {
    let entries: Vec<FdbEntry> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(entries
        .into_iter()
        .filter(|e| e.mac.eq_ignore_ascii_case(mac))
        .filter(|e| e.master.as_deref() == Some(bridge) && !e.flags.iter().any(|f| f == "self"))
        .find_map(|e| e.ifname.filter(|name| name != bridge)))
}

/// A bridge port and the index of its veth peer (in the peer's namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Port {
    name: String,
    ifindex: u32,
    peer_index: Option<u32>,
}

/// The ports listed by `ip -j -d link show master BRIDGE`.
fn parse_ports(json: &str) -> Result<Vec<Port>, String> {
    let links: Vec<Link> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(links
        .into_iter()
        .map(|l| Port {
            peer_index: l.link_index.filter(|_| l.link_netnsid.is_some()),
            name: l.ifname,
            ifindex: l.ifindex,
        })
        .collect())
}

/// A pod's interface: its own index and its veth peer's, in another namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PodLink {
    ifindex: u32,
    peer_index: u32,
}

/// In `ip -j addr show`, the interface (other than loopback) holding `ip`.
fn parse_holder(json: &str, ip: IpAddr) -> Result<Option<String>, String> {
    let links: Vec<Link> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(links.into_iter().find_map(|l| {
        let holds = l.addr_info.iter().any(|a| a.local.as_deref().and_then(|s| s.parse().ok()) == Some(ip));
        (holds && l.ifname != "lo").then_some(l.ifname)
    }))
}

/// In `ip -j -d addr show` of a candidate namespace, the interface holding `ip`, if it is one end of
/// a pair whose other end is in another namespace.
fn parse_pod_link(json: &str, ip: IpAddr) -> Result<Option<PodLink>, String> {
    let links: Vec<Link> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(links.into_iter().find_map(|l| {
        let holds = l.addr_info.iter().any(|a| a.local.as_deref().and_then(|s| s.parse().ok()) == Some(ip));
        match (holds, l.link_netnsid, l.link_index) {
            (true, Some(_), Some(peer_index)) => Some(PodLink { ifindex: l.ifindex, peer_index }),
            _ => None,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Samples captured from iproute2 6.1 on Linux 6.x.
    const ROUTE_ROUTED: &str =
        r#"[{"dst":"10.244.9.7","dev":"calix0","prefsrc":"10.245.9.1","flags":[],"uid":0,"cache":[]}]"#;
    const ROUTE_BRIDGED: &str =
        r#"[{"dst":"10.245.9.2","dev":"cni0","prefsrc":"10.245.9.1","flags":[],"uid":0,"cache":[]}]"#;
    const ROUTE_V6: &str = r#"[{"dst":"fd00:244::7","from":"::","dev":"calix0","protocol":"kernel","prefsrc":"fd00:245::1","metric":1024,"flags":[],"pref":"medium"}]"#;
    const ROUTE_GATEWAY: &str = r#"[{"dst":"10.246.0.5","gateway":"10.245.9.3","dev":"cni0","prefsrc":"10.245.9.1","flags":[],"uid":0,"cache":[]}]"#;
    const ROUTE_LOCAL: &str = r#"[{"type":"local","dst":"10.245.9.1","dev":"lo","prefsrc":"10.245.9.1","flags":[],"uid":0,"cache":["local"]}]"#;
    const LINK_BRIDGE: &str = r#"[{"ifindex":2,"ifname":"cni0","flags":["UP"],"mtu":1500,"address":"0a:95:e6:a6:db:c7","linkinfo":{"info_kind":"bridge","info_data":{"forward_delay":1500,"stp_state":0}},"num_tx_queues":1}]"#;
    const LINK_VETH: &str = r#"[{"ifindex":5,"link_index":2,"ifname":"calix0","flags":["UP"],"mtu":1500,"address":"de:8e:65:36:51:f8","link_netnsid":2,"linkinfo":{"info_kind":"veth"}}]"#;
    const NEIGH_HIT: &str = r#"[{"dst":"10.245.9.2","lladdr":"6e:1f:40:2b:aa:b2","state":["REACHABLE"]}]"#;
    const NEIGH_V6: &str =
        r#"[{"dst":"fd00:245::2","dev":"cni0","lladdr":"6E:1F:40:2B:AA:B2","state":["STALE"]}]"#;
    const NEIGH_FAILED: &str = r#"[{"dst":"10.245.9.77","state":["FAILED"]}]"#;
    const FDB: &str = r#"[{"mac":"33:33:00:00:00:01","ifname":"cni0","flags":["self"],"state":"permanent"},{"mac":"6e:1f:40:2b:aa:b2","ifname":"vethA","flags":[],"master":"cni0","state":""},{"mac":"0a:95:e6:a6:db:c7","ifname":"vethA","flags":[],"master":"cni0","state":"permanent"},{"mac":"33:33:ff:a6:db:c7","ifname":"vethA","flags":["self"],"state":"permanent"},{"mac":"b6:fc:95:ce:4a:25","ifname":"vethB","flags":[],"master":"cni0","state":""},{"mac":"2a:a7:84:42:5a:96","ifname":"vethB","flags":[],"master":"cni0","state":"permanent"}]"#;
    const PORTS: &str = r#"[{"ifindex":3,"link_index":2,"ifname":"vethA","master":"cni0","link_netnsid":0,"linkinfo":{"info_kind":"veth","info_slave_kind":"bridge"}},{"ifindex":4,"link_index":2,"ifname":"vethB","master":"cni0","link_netnsid":1,"linkinfo":{"info_kind":"veth","info_slave_kind":"bridge"}}]"#;
    const POD_ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"],"addr_info":[]},{"ifindex":2,"link_index":3,"ifname":"eth0","link_netnsid":0,"linkinfo":{"info_kind":"veth"},"addr_info":[{"family":"inet","local":"10.245.9.2","prefixlen":24,"scope":"global","label":"eth0"},{"family":"inet6","local":"fd00:245::2","prefixlen":64,"scope":"global","nodad":true},{"family":"inet6","local":"fe80::6c1f:40ff:fe2b:aab2","prefixlen":64,"scope":"link"}]}]"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn routed_route_names_the_veth() {
        let dev = check_route(ip("10.244.9.7"), parse_route(ROUTE_ROUTED).unwrap()).unwrap();
        assert_eq!(dev, "calix0");
        assert!(!parse_is_bridge(LINK_VETH).unwrap());
        let dev = check_route(ip("fd00:244::7"), parse_route(ROUTE_V6).unwrap()).unwrap();
        assert_eq!(dev, "calix0");
    }

    #[test]
    fn bridged_route_names_the_bridge() {
        let dev = check_route(ip("10.245.9.2"), parse_route(ROUTE_BRIDGED).unwrap()).unwrap();
        assert_eq!(dev, "cni0");
        assert!(parse_is_bridge(LINK_BRIDGE).unwrap());
    }

    #[test]
    fn routes_that_are_not_to_a_local_pod_are_refused() {
        let err = check_route(ip("10.246.0.5"), parse_route(ROUTE_GATEWAY).unwrap()).unwrap_err();
        assert!(matches!(&err, InterfaceError::Remote { gateway, .. } if gateway == "10.245.9.3"), "{err}");
        assert!(err.to_string().contains("another node"), "{err}");
        let err = check_route(ip("10.245.9.1"), parse_route(ROUTE_LOCAL).unwrap()).unwrap_err();
        assert!(matches!(err, InterfaceError::Local { .. }), "{err}");
        let blackhole = parse_route(r#"[{"type":"blackhole","dst":"10.1.1.1","flags":[]}]"#).unwrap();
        let err = check_route(ip("10.1.1.1"), blackhole).unwrap_err();
        assert!(err.to_string().contains("ip route get 10.1.1.1"), "{err}");
        assert!(parse_route("[]").is_err());
        assert!(parse_route("not json").is_err());
    }

    #[test]
    fn host_network_address_names_the_nic() {
        const HOST_ADDRS: &str = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},{"ifindex":2,"ifname":"ens3","addr_info":[{"family":"inet","local":"10.1.0.4","prefixlen":24},{"family":"inet6","local":"fd00:1::4","prefixlen":64}]}]"#;
        assert_eq!(parse_holder(HOST_ADDRS, ip("10.1.0.4")).unwrap().as_deref(), Some("ens3"));
        assert_eq!(parse_holder(HOST_ADDRS, ip("fd00:1::4")).unwrap().as_deref(), Some("ens3"));
        assert_eq!(parse_holder(HOST_ADDRS, ip("127.0.0.1")).unwrap(), None, "loopback does not count");
        assert_eq!(parse_holder(HOST_ADDRS, ip("10.1.0.5")).unwrap(), None);
        assert!(parse_holder("{", ip("10.1.0.4")).is_err());
    }

    #[test]
    fn neighbour_hit_and_miss() {
        assert_eq!(parse_neighbour(NEIGH_HIT).unwrap().as_deref(), Some("6e:1f:40:2b:aa:b2"));
        assert_eq!(parse_neighbour(NEIGH_V6).unwrap().as_deref(), Some("6e:1f:40:2b:aa:b2"));
        assert_eq!(parse_neighbour(NEIGH_FAILED).unwrap(), None);
        assert_eq!(parse_neighbour("[]").unwrap(), None);
        let incomplete = r#"[{"dst":"10.245.9.5","lladdr":"00:00:00:00:00:00","state":["INCOMPLETE"]}]"#;
        assert_eq!(parse_neighbour(incomplete).unwrap(), None);
    }

    #[test]
    fn fdb_port_lookup() {
        assert_eq!(parse_fdb_port(FDB, "6e:1f:40:2b:aa:b2", "cni0").unwrap().as_deref(), Some("vethA"));
        assert_eq!(parse_fdb_port(FDB, "B6:FC:95:CE:4A:25", "cni0").unwrap().as_deref(), Some("vethB"));
        // Not learned, or a multicast entry of the bridge itself.
        assert_eq!(parse_fdb_port(FDB, "02:00:00:00:00:01", "cni0").unwrap(), None);
        assert_eq!(parse_fdb_port(FDB, "33:33:00:00:00:01", "cni0").unwrap(), None);
        // Learned on another bridge.
        assert_eq!(parse_fdb_port(FDB, "6e:1f:40:2b:aa:b2", "docker0").unwrap(), None);
    }

    #[test]
    fn pod_namespace_names_its_port() {
        let ports = parse_ports(PORTS).unwrap();
        assert_eq!(ports.len(), 2);
        let pod = parse_pod_link(POD_ADDRS, ip("10.245.9.2")).unwrap().unwrap();
        assert_eq!(pod, PodLink { ifindex: 2, peer_index: 3 });
        assert_eq!(match_port(&ports, pod).as_deref(), Some("vethA"));
        let pod6 = parse_pod_link(POD_ADDRS, ip("fd00:245::2")).unwrap().unwrap();
        assert_eq!(pod6, pod);
        assert_eq!(parse_pod_link(POD_ADDRS, ip("10.245.9.3")).unwrap(), None);
        // Indexes must agree both ways: an interface with the same index in an unrelated namespace
        // is not the pod's peer.
        assert_eq!(match_port(&ports, PodLink { ifindex: 7, peer_index: 3 }), None);
    }

    #[test]
    fn attachment_interface() {
        assert_eq!(Attachment::Routed { interface: "cali1".into() }.interface(), "cali1");
        let port = Attachment::BridgePort { interface: "veth1".into(), bridge: "cni0".into() };
        assert_eq!(port.interface(), "veth1");
        let bridge = Attachment::Bridge { bridge: "cni0".into(), reason: "r".into() };
        assert_eq!(bridge.interface(), "cni0");
    }
}

/// The lookup on real kernels: namespaces that mimic a node with a routed and a bridged CNI, built
/// for each test and deleted when it ends. Traffic goes only to addresses inside them.
#[cfg(test)]
mod namespaces {
    use std::{
        net::{Ipv4Addr, SocketAddr, TcpStream},
        time::Duration,
    };

    use mirror_tests::{
        gate::kernel_tests_allowed,
        netns::{Netns, ip as run_ip},
    };

    use super::*;

    /// A third octet per test process and topology, so concurrent runs look different in logs.
    fn octet(offset: u32) -> u8 {
        ((std::process::id() + offset) % 250) as u8
    }

    /// Calico-style: the pod has a /32 and a default route via a link-local gateway that the node
    /// answers for with proxy ARP; the node routes the /32 (and the /128) into the host-side veth.
    #[test]
    fn routed_pod_is_found_on_its_veth() {
        if !kernel_tests_allowed("routed_pod_is_found_on_its_veth") {
            return;
        }
        let node = Netns::new("node");
        let pod = Netns::new("pod");
        let (n, p) = (&node.name, &pod.name);
        let v4 = Ipv4Addr::new(10, 244, octet(0), 7);
        let v6: std::net::Ipv6Addr = format!("fd00:244:{:x}::7", octet(0)).parse().expect("v6");
        run_ip(&["link", "add", "calitest0", "netns", n, "type", "veth", "peer", "name", "eth0", "netns", p]);
        run_ip(&["-n", p, "addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
        run_ip(&["-n", p, "addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"]);
        run_ip(&["-n", p, "link", "set", "eth0", "up"]);
        run_ip(&["-n", p, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
        run_ip(&["-n", p, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
        run_ip(&["-n", n, "link", "set", "calitest0", "up"]);
        run_ip(&["netns", "exec", n, "sysctl", "-qw", "net.ipv4.conf.calitest0.proxy_arp=1"]);
        run_ip(&["-n", n, "route", "add", &format!("{v4}/32"), "dev", "calitest0", "scope", "link"]);
        run_ip(&["-n", n, "route", "add", &format!("{v6}/128"), "dev", "calitest0"]);

        let (found4, found6, missing) = node.run(move || {
            (
                interface_for_pod(IpAddr::V4(v4)),
                interface_for_pod(IpAddr::V6(v6)),
                interface_for_pod(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1))),
            )
        });
        let routed = Attachment::Routed { interface: "calitest0".into() };
        assert_eq!(found4.expect("IPv4 pod"), routed);
        assert_eq!(found6.expect("IPv6 pod"), routed);
        // The node namespace has no default route: an address of no pod here is an error that says
        // what to check.
        let err = missing.expect_err("no route to 10.99.0.1");
        assert!(matches!(err, InterfaceError::NoRoute { .. }), "{err}");
        assert!(err.to_string().contains("ip route get 10.99.0.1"), "{err}");
    }

    /// A hostNetwork pod shares the node's address: the node's NIC (here a veth to a neighbour
    /// namespace) carries its traffic; loopback never counts.
    #[test]
    fn host_network_pod_is_found_on_the_nic_holding_its_address() {
        if !kernel_tests_allowed("host_network_pod_is_found_on_the_nic_holding_its_address") {
            return;
        }
        let node = Netns::new("node");
        let peer = Netns::new("peer");
        let (n, p) = (&node.name, &peer.name);
        let node_ip = Ipv4Addr::new(10, 246, octet(50), 4);
        run_ip(&["link", "add", "ens3", "netns", n, "type", "veth", "peer", "name", "eth0", "netns", p]);
        run_ip(&["-n", n, "addr", "add", &format!("{node_ip}/24"), "dev", "ens3"]);
        run_ip(&["-n", n, "link", "set", "ens3", "up"]);
        let (found, local, missing) = node.run(move || {
            (
                interface_for_host_network_pod(IpAddr::V4(node_ip)),
                interface_for_host_network_pod(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                interface_for_host_network_pod(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1))),
            )
        });
        assert_eq!(found.expect("the node's address"), Attachment::HostNetwork { interface: "ens3".into() });
        assert!(matches!(local, Err(InterfaceError::NotOnHost { .. })), "{local:?}");
        let err = missing.expect_err("not an address of this node");
        assert!(err.to_string().contains("ip -br addr"), "{err}");
    }

    struct BridgedNode {
        node: Netns,
        _pods: [Netns; 2],
        pod_ips: [Ipv4Addr; 2],
    }

    /// flannel/bridge-plugin style: `cni0` with the node's address and two pods, each behind a veth
    /// port (`vethpod0`, `vethpod1`).
    fn bridged_node() -> BridgedNode {
        let node = Netns::new("node");
        let pods = [Netns::new("pod0"), Netns::new("pod1")];
        let x = octet(100);
        let n = &node.name;
        run_ip(&["-n", n, "link", "add", "cni0", "type", "bridge"]);
        run_ip(&["-n", n, "addr", "add", &format!("10.245.{x}.1/24"), "dev", "cni0"]);
        run_ip(&["-n", n, "link", "set", "cni0", "up"]);
        let mut pod_ips = [Ipv4Addr::UNSPECIFIED; 2];
        for (i, pod) in pods.iter().enumerate() {
            let port = format!("vethpod{i}");
            let p = &pod.name;
            pod_ips[i] = Ipv4Addr::new(10, 245, x, 2 + i as u8);
            run_ip(&["link", "add", &port, "netns", n, "type", "veth", "peer", "name", "eth0", "netns", p]);
            run_ip(&["-n", n, "link", "set", &port, "master", "cni0", "up"]);
            run_ip(&["-n", p, "addr", "add", &format!("{}/24", pod_ips[i]), "dev", "eth0"]);
            run_ip(&["-n", p, "link", "set", "eth0", "up"]);
        }
        BridgedNode { node, _pods: pods, pod_ips }
    }

    fn port(i: usize) -> Attachment {
        Attachment::BridgePort { interface: format!("vethpod{i}"), bridge: "cni0".into() }
    }

    #[test]
    fn bridged_pod_is_found_through_neighbour_and_fdb() {
        if !kernel_tests_allowed("bridged_pod_is_found_through_neighbour_and_fdb") {
            return;
        }
        let net = bridged_node();
        let ips = net.pod_ips;
        let before = net.node.run(move || port_from_tables(IpAddr::V4(ips[0]), "cni0"));
        let why = before.expect("lookup").expect_err("no neighbour entry before any traffic");
        assert!(why.contains("neighbour table"), "{why}");

        // The node talks to each pod once: a connection attempt to a closed port resolves the pod's
        // MAC (ARP) and the pod's answer (a reset) teaches the bridge its port.
        let found = net.node.run(move || {
            ips.map(|pod| {
                let _ = TcpStream::connect_timeout(&SocketAddr::new(pod.into(), 9), Duration::from_secs(2));
                (port_from_tables(IpAddr::V4(pod), "cni0"), interface_for_pod(IpAddr::V4(pod)))
            })
        });
        for (i, (tables, full)) in found.into_iter().enumerate() {
            assert_eq!(tables.expect("lookup"), Ok(format!("vethpod{i}")), "pod {i} via the tables");
            assert_eq!(full.expect("lookup"), port(i), "pod {i}");
        }
    }

    #[test]
    fn bridged_pod_without_neighbour_is_found_through_its_namespace() {
        if !kernel_tests_allowed("bridged_pod_without_neighbour_is_found_through_its_namespace") {
            return;
        }
        let net = bridged_node();
        let ips = net.pod_ips;
        let stranger = Ipv4Addr::new(ips[0].octets()[0], ips[0].octets()[1], ips[0].octets()[2], 9);
        let (found, fallback) = net.node.run(move || {
            (ips.map(|pod| interface_for_pod(IpAddr::V4(pod))), interface_for_pod(IpAddr::V4(stranger)))
        });
        for (i, found) in found.into_iter().enumerate() {
            assert_eq!(found.expect("lookup"), port(i), "pod {i}");
        }
        // An address on the bridge's subnet that no namespace holds: the bridge itself, with why.
        match fallback.expect("lookup") {
            Attachment::Bridge { bridge, reason } => {
                assert_eq!(bridge, "cni0");
                assert!(reason.contains("neighbour table has no MAC"), "{reason}");
                assert!(reason.contains("no network namespace"), "{reason}");
            }
            other => panic!("expected the bridge fallback, got {other:?}"),
        }
        // The lookups sent nothing: the node's neighbour table is still empty.
        let out =
            net.node.command("ip").args(["-4", "-j", "neigh", "show", "dev", "cni0"]).output().expect("ip");
        let neigh = String::from_utf8_lossy(&out.stdout);
        assert!(!neigh.contains("lladdr"), "the lookup must not send traffic: {neigh}");
    }
}
