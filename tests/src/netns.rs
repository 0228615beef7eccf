//! Network namespaces joined by veth pairs, created for one test and removed when dropped.
//!
//! Names carry the process id and a counter, so concurrent tests never collide. Addresses are from
//! the benchmarking range 198.18.0.0/15 and the ULA prefix fd00:5eed::/32, only ever inside these
//! namespaces.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS...` (iproute2), panicking with its error if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A network namespace that is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        let name =
            format!("sm{}-{}-{role}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// `ip netns exec NAME program`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it creates live there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: valid namespace fd; setns affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Netns {
    /// Whether an XDP program is attached to `iface` in this namespace (`ip -d link` shows it).
    pub fn xdp_attached(&self, iface: &str) -> bool {
        let out = self.command("ip").args(["-d", "link", "show", "dev", iface]).output().expect("ip link");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair: the usual client ↔ server test network.
#[derive(Debug)]
pub struct Pair {
    pub client: Netns,
    pub server: Netns,
    /// The server-side interface, where the capture programs attach.
    pub server_if: String,
    pub client_if: String,
    pub client_v4: Ipv4Addr,
    pub server_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    pub server_v6: Ipv6Addr,
}

impl Pair {
    pub fn new() -> Self {
        let client = Netns::new("cli");
        let server = Netns::new("srv");
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 250;
        let client_if = "smc0".to_string();
        let server_if = "sms0".to_string();
        ip(&[
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &server_if,
            "netns",
            &server.name,
        ]);
        let client_v4 = Ipv4Addr::new(198, 18, n as u8, 1);
        let server_v4 = Ipv4Addr::new(198, 18, n as u8, 2);
        let client_v6: Ipv6Addr = format!("fd00:5eed:{n:x}::1").parse().expect("v6");
        let server_v6: Ipv6Addr = format!("fd00:5eed:{n:x}::2").parse().expect("v6");
        for (ns, ifname, v4, v6) in
            [(&client, &client_if, client_v4, client_v6), (&server, &server_if, server_v4, server_v6)]
        {
            ip(&["-n", &ns.name, "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            ip(&["-n", &ns.name, "addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
            ip(&["-n", &ns.name, "link", "set", ifname, "up"]);
        }
        Self { client, server, server_if, client_if, client_v4, server_v4, client_v6, server_v6 }
    }

    pub fn server_ip(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.server_v6) } else { IpAddr::V4(self.server_v4) }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

/// Joins `a` and `b` with a veth pair `a_if`/`b_if` and gives them `net.1` and `net.2` (/24).
fn link(a: &Netns, b: &Netns, a_if: &str, b_if: &str, net: [u8; 3]) -> (Ipv4Addr, Ipv4Addr) {
    ip(&["link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name]);
    let a_addr = Ipv4Addr::new(net[0], net[1], net[2], 1);
    let b_addr = Ipv4Addr::new(net[0], net[1], net[2], 2);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ip(&["-n", &ns.name, "addr", "add", &format!("{addr}/24"), "dev", ifname]);
        ip(&["-n", &ns.name, "link", "set", ifname, "up"]);
    }
    (a_addr, b_addr)
}

/// Client ↔ production ↔ shadow: the daemon runs in `production`, attached to `production_if`
/// (facing the client), and replays to the shadow over the second link.
#[derive(Debug)]
pub struct Trio {
    pub client: Netns,
    pub production: Netns,
    pub shadow: Netns,
    /// Production's interface towards the client (capture here).
    pub production_if: String,
    pub client_addr: Ipv4Addr,
    pub production_addr: Ipv4Addr,
    pub shadow_addr: Ipv4Addr,
}

impl Trio {
    pub fn new() -> Self {
        let client = Netns::new("cli");
        let production = Netns::new("prod");
        let shadow = Netns::new("shadow");
        let n = (NEXT.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        let (client_addr, production_addr) = link(&client, &production, "smc0", "smp0", [198, 18, n]);
        let (_, shadow_addr) = link(&production, &shadow, "smq0", "smr0", [198, 19, n]);
        Self {
            client,
            production,
            shadow,
            production_if: "smp0".into(),
            client_addr,
            production_addr,
            shadow_addr,
        }
    }
}

impl Default for Trio {
    fn default() -> Self {
        Self::new()
    }
}
