//! Debian's nginx as a peer in benchmarks: a server answering one static body, a shadow that
//! counts what reaches it, and the inline `mirror` proxy that shadow mirror is measured against.
//!
//! Each instance runs in the foreground (`daemon off`) from its own scratch directory (config,
//! pid, logs, temp paths), so instances never share state with each other or with a packaged
//! nginx service. It is stopped on drop with SIGTERM to its master, which takes its workers down.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// A running nginx (master and workers), removed with its directory on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in `ns` with `workers` worker processes and `http` as the body of its `http`
    /// block, and waits until it accepts connections on `ready` (an address it listens on).
    pub fn start(
        ns: &Netns,
        name: &str,
        workers: usize,
        http: &str,
        ready: SocketAddr,
    ) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("shadow-mirror-nginx-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let config = format!(
            "worker_processes {workers};\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             keepalive_requests 1000000;\n  keepalive_timeout 120s;\n{http}\n}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let child = ns
            .command("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| std::io::Error::other(format!("start nginx (Debian: nginx): {e}")))?;
        let mut nginx = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns.run(move || TcpStream::connect_timeout(&ready, Duration::from_millis(200)).is_ok()) {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut err) = nginx.child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
                return Err(std::io::Error::other(format!("nginx {name} exited ({status}): {stderr}")));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!("nginx {name} does not accept on {ready}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// The master's pid and its workers' (for CPU and memory accounting).
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent pid is the second field after the command name, which ends at ") ".
            let parent =
                stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok());
            if parent == Some(master) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child (`ip netns exec` execs nginx: same pid).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An `http` block body: every request on `listen` answered 200 with `body` as JSON, and the
/// request counter of `stub_status` on `status` (see [`requests_served`]).
pub fn static_json(listen: &[SocketAddr], body: &str, status: SocketAddr) -> String {
    assert!(!body.contains('\'') && !body.contains('$'), "the body goes into an nginx string literal");
    let listens: String = listen.iter().map(|a| format!("    listen {a} backlog=4096;\n")).collect();
    format!(
        "  server {{\n{listens}    default_type application/json;\n    \
         location / {{ return 200 '{body}'; }}\n  }}\n  \
         server {{\n    listen {status};\n    location / {{ stub_status; }}\n  }}"
    )
}

/// An `http` block body: an inline proxy on `listen` to `production`, every request mirrored to
/// `shadow` with nginx's `mirror` module, both upstreams over keep-alive connections.
pub fn inline_mirror(listen: SocketAddr, production: SocketAddr, shadow: SocketAddr) -> String {
    let id = listen.port();
    format!(
        "  upstream production_{id} {{ server {production}; keepalive 256; }}\n  \
         upstream shadow_{id} {{ server {shadow}; keepalive 256; }}\n  \
         server {{\n    listen {listen} backlog=4096;\n    \
         location / {{\n      mirror /mirror;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n      proxy_pass http://production_{id};\n    }}\n    \
         location = /mirror {{\n      internal;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n      proxy_pass http://shadow_{id}$request_uri;\n    }}\n  }}"
    )
}

/// The `requests` total of the `stub_status` served on `status` in `ns` (this query included).
pub fn requests_served(ns: &Netns, status: SocketAddr) -> std::io::Result<u64> {
    ns.run(move || {
        let mut stream = TcpStream::connect_timeout(&status, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(stream, "GET / HTTP/1.1\r\nHost: {status}\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        // "Active connections: N\nserver accepts handled requests\n A H R\n..."
        let counts = text
            .lines()
            .skip_while(|l| !l.contains("accepts handled requests"))
            .nth(1)
            .ok_or_else(|| std::io::Error::other(format!("not a stub_status answer: {text}")))?;
        counts
            .split_whitespace()
            .nth(2)
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no request count in {counts:?}")))
    })
}
