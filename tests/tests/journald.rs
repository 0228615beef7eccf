//! `--log-format journald` against a real systemd-journald: what an operator types
//! (`journalctl -t shadow-mirror`, `journalctl MIRROR_INTERFACE=eth0`) finds the daemon's events,
//! with their structured fields as MIRROR_* journal fields.
//!
//! The journald is private to the test (see `mirror_tests::journal`); the daemon captures on the
//! loopback of its own network namespace for two seconds, which logs the attach events with fields
//! `interface`, `mode` and `via`.
use mirror_tests::{daemon, gate::kernel_tests_allowed, journal::PrivateJournal, netns::Netns, scratch_file};
use serde_json::Value;

fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or_else(|| panic!("entry without {name}: {entry}"))
}

#[test]
fn daemon_events_are_structured_journal_entries() {
    if !kernel_tests_allowed("daemon_events_are_structured_journal_entries") {
        return;
    }
    let ns = Netns::new("journal");
    let journal = PrivateJournal::new(scratch_file("journal"));
    let bin = daemon::binary();
    let bin = bin.to_string_lossy();
    let out = journal.run(
        90,
        "ip",
        &["netns", "exec", &ns.name, &bin, "--log-format", "journald", "capture", "-i", "lo", "-p", "8080"]
            .into_iter()
            .chain(["--duration", "2s"])
            .collect::<Vec<_>>(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "daemon under a private journald failed ({:?}):\n{stderr}", out.status);
    // Logs went to journald, not to the JSON fallback on stderr.
    assert!(!stderr.contains("journald is not reachable"), "{stderr}");
    assert!(!stderr.contains("\"level\""), "log events on stderr instead of the journal:\n{stderr}");

    // `journalctl -t shadow-mirror`: everything the daemon logged, under the unit's identifier.
    let entries = journal.query(&["-t", "shadow-mirror"]);
    let messages: Vec<&str> = entries.iter().map(|e| field(e, "MESSAGE")).collect();
    for expected in ["XDP (receive side) attached", "TC (transmit side) attached", "capturing", "detached"] {
        assert!(messages.iter().any(|m| m.starts_with(expected)), "no `{expected}` in {messages:?}");
    }
    for entry in &entries {
        assert_eq!(field(entry, "SYSLOG_IDENTIFIER"), "shadow-mirror");
        assert_eq!(field(entry, "_TRANSPORT"), "journal", "native protocol, not stdout: {entry}");
        assert!(field(entry, "TARGET").starts_with("mirror_daemon"), "{entry}");
        assert!(field(entry, "CODE_FILE").starts_with("mirror-daemon/src/"), "{entry}");
    }

    // Structured fields are journal fields with the MIRROR_ prefix, and can be matched on.
    let attached = journal.query(&["SYSLOG_IDENTIFIER=shadow-mirror", "MIRROR_INTERFACE=lo"]);
    let xdp = attached
        .iter()
        .find(|e| field(e, "MESSAGE") == "XDP (receive side) attached")
        .unwrap_or_else(|| panic!("MIRROR_INTERFACE=lo does not find the XDP event: {attached:?}"));
    assert!(["driver", "generic"].contains(&field(xdp, "MIRROR_MODE")), "{xdp}");
    let tc = attached
        .iter()
        .find(|e| field(e, "MESSAGE") == "TC (transmit side) attached")
        .unwrap_or_else(|| panic!("MIRROR_INTERFACE=lo does not find the TC event: {attached:?}"));
    assert!(!field(tc, "MIRROR_VIA").is_empty(), "{tc}");
    // INFO events carry a syslog priority journalctl -p can filter on (tracing-journald: 5, notice).
    assert!(matches!(field(tc, "PRIORITY"), "5" | "6"), "{tc}");

    // A match on a value the daemon never logged finds nothing: the queries above really filter.
    assert!(journal.query(&["SYSLOG_IDENTIFIER=shadow-mirror", "MIRROR_INTERFACE=nosuch0"]).is_empty());
}
