//! The kernel capture, end to end: real programs attached to a veth in namespaces this test creates,
//! real HTTP traffic, and the daemon's pcap compared byte for byte with what the client sent and
//! received and with tcpdump's capture of the same traffic.
use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mirror_tests::{
    ChildGuard as Guard,
    client::{Ask, Transcript, run_connection},
    daemon::{Daemon, run_to_end},
    gate::kernel_tests_allowed,
    netns::{Netns, Pair},
    pcap_streams::{self, Streams},
    scratch_file,
};

const PORT: u16 = 8080;

fn start_server(pair: &Pair, ports: &[u16]) -> Guard {
    mirror_tests::model_server::spawn(pair, ports)
}

fn start_tcpdump(ns: &Netns, iface: &str, file: &Path) -> Guard {
    let mut child = ns
        .command("tcpdump")
        .args(["-i", iface, "-s", "0", "-B", "65536", "--immediate-mode", "-U", "-n", "-w"])
        .arg(file)
        .arg(format!("tcp port {PORT}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcpdump");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let line = lines.next().expect("tcpdump ended early").expect("read");
    assert!(line.contains("listening on"), "tcpdump said {line}");
    Guard(child)
}

fn stop_tcpdump(mut guard: Guard) {
    // SAFETY: kill(2) on our child; SIGINT makes tcpdump flush and close the file.
    unsafe { libc::kill(guard.0.id() as i32, libc::SIGINT) };
    let _ = guard.0.wait();
}

/// Every byte each transcript sent and received appears, in order and without holes, in `streams`.
fn assert_streams_match(streams: &Streams, server: SocketAddr, transcripts: &[Transcript], who: &str) {
    for t in transcripts {
        let client = t.local.expect("client address");
        let up =
            streams.get(&(client, server)).unwrap_or_else(|| panic!("{who}: no {client} → {server} stream"));
        let down =
            streams.get(&(server, client)).unwrap_or_else(|| panic!("{who}: no {server} → {client} stream"));
        assert_eq!(up.holes, 0, "{who}: holes in {client} → {server}");
        assert_eq!(down.holes, 0, "{who}: holes in {server} → {client}");
        assert!(up.saw_syn && down.saw_syn, "{who}: SYN of {client} not captured");
        assert_eq!(up.bytes.len(), t.sent.len(), "{who}: request stream length of {client}");
        assert!(up.bytes == t.sent, "{who}: request bytes of {client} differ from what the client sent");
        assert_eq!(down.bytes.len(), t.received.len(), "{who}: response stream length of {client}");
        assert!(
            down.bytes == t.received,
            "{who}: response bytes of {client} differ from what the client got"
        );
    }
}

fn capture_round_trip(v6: bool) {
    let pair = Pair::new();
    let _server = start_server(&pair, &[PORT]);
    let tag = if v6 { "v6" } else { "v4" };
    let ours = scratch_file(&format!("daemon-{tag}.pcap"));
    let theirs = scratch_file(&format!("tcpdump-{tag}.pcap"));
    let tcpdump = start_tcpdump(&pair.server, &pair.server_if, &theirs);
    let daemon = Daemon::start(
        &pair.server,
        &["capture", "-i", &pair.server_if, "-p", "8080", "-w", ours.to_str().unwrap()],
    );

    let server = SocketAddr::new(pair.server_ip(v6), PORT);
    let mib = 1 << 20;
    let keep_alive: Vec<Ask> =
        [(0, 0), (1, 1), (1000, 1500), (65_536, 100_000), (mib, 0), (0, mib), (300_000, mib)]
            .into_iter()
            .map(|(request_body, response_body)| Ask { request_body, response_body })
            .collect();
    let small: Vec<Ask> = (0..20).map(|i| Ask { request_body: i * 7, response_body: i * 13 }).collect();
    let transcripts =
        pair.client.run(move || vec![run_connection(server, &keep_alive), run_connection(server, &small)]);
    assert_eq!(transcripts[0].exchanges, 7);

    std::thread::sleep(Duration::from_millis(300));
    let finished = daemon.stop();
    stop_tcpdump(tcpdump);
    assert!(finished.success, "daemon failed:\n{}", finished.stderr);
    for counter in ["ringbuf_full", "truncated", "marker_lost", "unparsed"] {
        assert_eq!(finished.counter(counter), 0, "{counter}:\n{}", finished.stderr);
    }

    let daemon_streams = pcap_streams::read(&ours);
    let tcpdump_streams = pcap_streams::read(&theirs);
    assert_streams_match(&daemon_streams, server, &transcripts, "daemon");
    assert_streams_match(&tcpdump_streams, server, &transcripts, "tcpdump");
    // The two captures agree on every stream tcpdump saw, not only the client's.
    for (key, theirs) in &tcpdump_streams {
        let ours = daemon_streams.get(key).unwrap_or_else(|| panic!("daemon lacks stream {key:?}"));
        assert!(ours.bytes == theirs.bytes, "daemon and tcpdump disagree on {key:?}");
    }
    // The 1 MiB responses left through TC egress as GSO super-packets, larger than one record:
    // they were split into chunks and arrived complete.
    let client = transcripts[0].local.unwrap();
    let down = &tcpdump_streams[&(server, client)];
    assert!(
        down.largest_payload > mirror_common::CHUNK_SIZE,
        "no GSO packet seen: largest {}",
        down.largest_payload
    );
}

#[test]
fn capture_ipv4_matches_client_and_tcpdump() {
    if kernel_tests_allowed("capture_ipv4_matches_client_and_tcpdump") {
        capture_round_trip(false);
    }
}

#[test]
fn capture_ipv6_matches_client_and_tcpdump() {
    if kernel_tests_allowed("capture_ipv6_matches_client_and_tcpdump") {
        capture_round_trip(true);
    }
}

#[test]
fn non_matching_port_yields_no_records() {
    if !kernel_tests_allowed("non_matching_port_yields_no_records") {
        return;
    }
    let pair = Pair::new();
    let _server = start_server(&pair, &[9090]);
    let daemon = Daemon::start(&pair.server, &["capture", "-i", &pair.server_if, "-p", "8080"]);
    let server = SocketAddr::new(pair.server_ip(false), 9090);
    let asks = vec![Ask { request_body: 5000, response_body: 200_000 }; 5];
    let t = pair.client.run(move || run_connection(server, &asks));
    assert_eq!(t.exchanges, 5);
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    assert!(finished.counter("seen") > 10, "the programs ran: {}", finished.stderr);
    assert_eq!(finished.counter("matched"), 0);
    assert_eq!(finished.counter("emitted"), 0);
    assert!(finished.stdout.is_empty(), "no segment lines expected, got:\n{}", finished.stdout);
    assert!(finished.stderr.contains("captured 0 segments"), "{}", finished.stderr);
}

/// `ip link` shows no XDP program and bpftool shows no TC program on the interface.
fn assert_nothing_attached(ns: &Netns, iface: &str) {
    assert!(!ns.xdp_attached(iface), "XDP still attached to {iface}");
    let net = ns.command("bpftool").args(["net", "show", "dev", iface]).output().expect("bpftool net");
    let net = String::from_utf8_lossy(&net.stdout);
    assert!(!net.contains("mirror_"), "programs still attached:\n{net}");
}

#[test]
fn sigkill_leaves_traffic_untouched_and_restart_attaches() {
    if !kernel_tests_allowed("sigkill_leaves_traffic_untouched_and_restart_attaches") {
        return;
    }
    let pair = Pair::new();
    let _server = start_server(&pair, &[PORT]);
    let daemon = Daemon::start(&pair.server, &["capture", "-i", &pair.server_if, "-p", "8080"]);
    let server = SocketAddr::new(pair.server_ip(false), PORT);

    // Traffic on several keep-alive connections while the daemon is killed mid-way; every
    // exchange must complete (run_connection panics on any error or wrong byte).
    let client_ns = pair.client.name.clone();
    let traffic = std::thread::spawn(move || {
        let ns = Netns { name: client_ns };
        let started = Instant::now();
        let mut done = 0;
        while started.elapsed() < Duration::from_secs(3) && done < 2_000 {
            let asks = vec![Ask { request_body: 2000, response_body: 50_000 }; 20];
            done += ns.run(move || run_connection(server, &asks)).exchanges;
        }
        std::mem::forget(ns); // the namespace belongs to `pair`
        done
    });
    std::thread::sleep(Duration::from_millis(1000));
    daemon.signal(libc::SIGKILL);
    let killed = daemon.finish();
    assert!(!killed.success);
    let exchanges = traffic.join().expect("client traffic failed while the daemon was killed");
    assert!(exchanges >= 40, "only {exchanges} exchanges completed");
    assert_nothing_attached(&pair.server, &pair.server_if);

    // A new daemon attaches cleanly and captures.
    let daemon = Daemon::start(&pair.server, &["capture", "-i", &pair.server_if, "-p", "8080"]);
    let t = pair.client.run(move || run_connection(server, &[Ask { request_body: 10, response_body: 10 }]));
    assert_eq!(t.exchanges, 1);
    std::thread::sleep(Duration::from_millis(200));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    assert!(finished.counter("emitted") >= 4, "{}", finished.stderr);
    assert!(finished.stdout.contains(&format!("> {server} [S]")), "SYN line missing:\n{}", finished.stdout);
    assert_nothing_attached(&pair.server, &pair.server_if);
}

#[test]
fn refuses_second_xdp_program_and_keeps_the_first() {
    if !kernel_tests_allowed("refuses_second_xdp_program_and_keeps_the_first") {
        return;
    }
    let pair = Pair::new();
    let _server = start_server(&pair, &[PORT]);
    let first = Daemon::start(&pair.server, &["capture", "-i", &pair.server_if, "-p", "8080"]);
    let (ok, stderr) = run_to_end(Some(&pair.server), &["capture", "-i", &pair.server_if, "-p", "8080"]);
    assert!(!ok);
    assert!(stderr.contains("already has an XDP program attached"), "{stderr}");
    assert!(stderr.contains("ip link set dev"), "{stderr}");
    // The first daemon still captures both directions.
    let server = SocketAddr::new(pair.server_ip(false), PORT);
    pair.client.run(move || run_connection(server, &[Ask { request_body: 3, response_body: 3 }]));
    std::thread::sleep(Duration::from_millis(200));
    let finished = first.stop();
    assert!(
        finished.stdout.lines().any(|l| l.contains(" in ") && l.contains(&format!("> {server}"))),
        "no received segment:\n{}",
        finished.stdout
    );
    assert!(
        finished.stdout.lines().any(|l| l.contains(" out ") && l.contains(&format!("{server} >"))),
        "no transmitted segment:\n{}",
        finished.stdout
    );
    assert_nothing_attached(&pair.server, &pair.server_if);
}

#[test]
fn clear_errors_for_common_mistakes() {
    if !kernel_tests_allowed("clear_errors_for_common_mistakes") {
        return;
    }
    let ns = Netns::new("err");
    let (ok, stderr) = run_to_end(Some(&ns), &["capture", "-i", "nosuch0", "-p", "8080"]);
    assert!(!ok);
    assert!(stderr.contains("interface nosuch0 not found; list interfaces with `ip link`"), "{stderr}");

    let (ok, stderr) = run_to_end(Some(&ns), &["capture", "-i", "lo", "-p", "0"]);
    assert!(!ok);
    assert!(stderr.contains("0 is not in 1..=65535"), "{stderr}");
    let (ok, stderr) = run_to_end(Some(&ns), &["capture", "-i", "lo", "-p", "70000"]);
    assert!(!ok);
    assert!(stderr.contains("70000"), "{stderr}");

    // Unprivileged: the same command as user nobody, with no capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(mirror_tests::daemon::binary())
        .args(["capture", "-i", "lo", "-p", "8080"])
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN"), "{stderr}");
}

/// Runs a loaded program once on `frame` with `bpftool prog run`; returns its return value.
fn prog_run(program: &str, frame: &[u8]) -> u64 {
    let path = scratch_file(&format!("frame-{program}.bin"));
    std::fs::write(&path, frame).expect("write frame");
    let out = Command::new("bpftool")
        .args(["prog", "run", "name", program, "data_in"])
        .arg(&path)
        .output()
        .expect("run bpftool");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.strip_prefix("Return value: "))
        .and_then(|v| v.split(',').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("bpftool prog run {program} on {} bytes: {text}", frame.len()))
}

fn tcp_frame(v6: bool, vlan: bool, dst_port: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    use etherparse::{PacketBuilder, SingleVlanHeader, VlanId};
    let eth = PacketBuilder::ethernet2([2; 6], [4; 6]);
    let mut out = Vec::new();
    let ip = match (vlan, v6) {
        (true, _) => eth
            .vlan(etherparse::VlanHeader::Single(SingleVlanHeader {
                vlan_id: VlanId::try_new(42).unwrap(),
                ..Default::default()
            }))
            .ipv4([198, 51, 100, 1], [198, 51, 100, 2], 64),
        (false, false) => eth.ipv4([198, 51, 100, 1], [198, 51, 100, 2], 64),
        (false, true) => eth.ipv6([0xfd; 16], [0xfe; 16], 64),
    };
    let tcp = ip.tcp(4321, dst_port, 7000, 1000);
    let tcp = if syn { tcp.syn() } else { tcp.ack(1).psh() };
    tcp.write(&mut out, payload).expect("build frame");
    out
}

/// The programs only observe: on every kind of frame, matching or not, well-formed or not, XDP
/// returns XDP_PASS (2) and TC returns TC_ACT_UNSPEC (-1, "continue"). Matching frames reach the
/// daemon; the others do not.
#[test]
fn programs_always_pass_and_parse_every_frame_shape() {
    if !kernel_tests_allowed("programs_always_pass_and_parse_every_frame_shape") {
        return;
    }
    let ns = Netns::new("run");
    let daemon = Daemon::start(&ns, &["capture", "-i", "lo", "-p", "8080"]);
    let body = b"GET / HTTP/1.1\r\n\r\n";
    let mut fragment = tcp_frame(false, false, 8080, false, body);
    fragment[14 + 6] |= 0x20; // IPv4 more-fragments bit
    let mut udp = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([198, 51, 100, 1], [198, 51, 100, 2], 64)
        .udp(4321, 8080)
        .write(&mut udp, body)
        .expect("udp frame");
    // "truncated-ip" and "runt" run through XDP only: the kernel's skb test run rejects a frame
    // whose IPv4 header is cut short before any program runs.
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("ipv4", tcp_frame(false, false, 8080, false, body)),
        ("ipv6", tcp_frame(true, false, 8080, false, body)),
        ("vlan", tcp_frame(false, true, 8080, false, body)),
        ("syn", tcp_frame(false, false, 8080, true, b"")),
        ("other-port", tcp_frame(false, false, 9999, false, body)),
        ("udp", udp),
        ("fragment", fragment),
        ("truncated-tcp", tcp_frame(false, false, 8080, false, body)[..40].to_vec()),
        ("truncated-ip", tcp_frame(false, false, 8080, false, body)[..24].to_vec()),
        // An Ethernet header announcing IPv4 and nothing after it (test runs need >= 14 bytes).
        ("runt", [[0xff; 12].as_slice(), &[0x08, 0x00]].concat()),
    ];
    let mut runs = 0;
    for (name, frame) in &frames {
        assert_eq!(prog_run("mirror_xdp", frame), 2, "XDP verdict for {name}");
        runs += 1;
        if !matches!(*name, "truncated-ip" | "runt") {
            assert_eq!(prog_run("mirror_tc", frame), u64::from(u32::MAX), "TC verdict for {name}");
            runs += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let lines: Vec<&str> = finished.stdout.lines().collect();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    // ipv4 + vlan (same addresses, payload) and the SYN, each seen by both programs.
    assert_eq!(count("198.51.100.1:4321 > 198.51.100.2:8080 [P.] seq 7000"), 4, "{}", finished.stdout);
    assert_eq!(count("198.51.100.1:4321 > 198.51.100.2:8080 [S]"), 2, "{}", finished.stdout);
    assert_eq!(count("[fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd]:4321 > "), 2, "{}", finished.stdout);
    assert_eq!(lines.len(), 8, "nothing else is emitted:\n{}", finished.stdout);
    assert!(lines.iter().all(|l| l.contains(&format!("len {}", body.len())) || l.contains("[S]")));
    assert_eq!(finished.counter("unparsed"), 2, "the fragment, once per program");
    assert_eq!(finished.counter("seen"), runs);
}

/// With `--server-addr`, only traffic to or from a server at those addresses matches, even on the
/// right port.
#[test]
fn server_address_filter_selects_traffic() {
    if !kernel_tests_allowed("server_address_filter_selects_traffic") {
        return;
    }
    let pair = Pair::new();
    let _server = start_server(&pair, &[PORT]);
    let v4 = SocketAddr::new(pair.server_ip(false), PORT);
    let v6 = SocketAddr::new(pair.server_ip(true), PORT);
    let only_v4 = pair.server_v4.to_string();
    let daemon = Daemon::start(
        &pair.server,
        &["capture", "-i", &pair.server_if, "-p", "8080", "--server-addr", &only_v4],
    );
    let asks = [Ask { request_body: 100, response_body: 100 }];
    pair.client.run(move || {
        run_connection(v4, &asks);
        run_connection(v6, &asks);
    });
    std::thread::sleep(Duration::from_millis(300));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains(&format!("> {v4} [S]"))),
        "IPv4 SYN captured:\n{}",
        finished.stdout
    );
    assert!(
        lines.iter().any(|l| l.contains(&format!("{v4} > ")) && l.contains("[P.]")),
        "{}",
        finished.stdout
    );
    assert!(
        !finished.stdout.contains(&pair.server_v6.to_string()),
        "IPv6 is filtered out:\n{}",
        finished.stdout
    );
    assert!(finished.counter("seen") > finished.counter("matched"), "{}", finished.stderr);
}

/// `--server-addr` selects the *server* end: packets whose client happens to have a selected
/// address (a client on a production host, the daemon's own replays) are not captured.
#[test]
fn server_address_filter_means_the_server_end() {
    if !kernel_tests_allowed("server_address_filter_means_the_server_end") {
        return;
    }
    let pair = Pair::new();
    let _server = start_server(&pair, &[PORT]);
    let v4 = SocketAddr::new(pair.server_ip(false), PORT);
    // The client's own address, on the server port: no server end matches it.
    let client_addr = pair.client_v4.to_string();
    let daemon = Daemon::start(
        &pair.server,
        &["capture", "-i", &pair.server_if, "-p", "8080", "--server-addr", &client_addr],
    );
    let asks = [Ask { request_body: 100, response_body: 100 }];
    pair.client.run(move || run_connection(v4, &asks));
    std::thread::sleep(Duration::from_millis(300));
    let finished = daemon.stop();
    assert!(finished.success, "{}", finished.stderr);
    assert_eq!(finished.stdout.lines().count(), 0, "nothing captured:\n{}", finished.stdout);
    assert_eq!(finished.counter("matched"), 0, "{}", finished.stderr);
    assert!(finished.counter("seen") > 0, "the traffic passed the hooks: {}", finished.stderr);
}
