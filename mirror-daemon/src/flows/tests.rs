use std::net::SocketAddr;

use bytes::Bytes;
use mirror_common::tcp_flags::{ACK, FIN, RST, SYN};

use super::*;
use crate::capture::Segment;

const CLIENT: &str = "10.0.0.1:40000";
const SERVER: &str = "10.0.0.2:8080";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn seg(from_client: bool, seq: u32, flags: u8, payload: &[u8], ts_ns: u64) -> Segment {
    let (src, dst) = if from_client { (addr(CLIENT), addr(SERVER)) } else { (addr(SERVER), addr(CLIENT)) };
    Segment::new(src, dst, seq, flags, Bytes::copy_from_slice(payload), ts_ns)
}

fn lost(from_client: bool, seq: u32, len: u32) -> Segment {
    let mut s = seg(from_client, seq, ACK, b"", 0);
    s.segment_len = len;
    s.lost = len;
    s
}

fn table(limits: FlowLimits) -> FlowTable {
    FlowTable::new(FlowConfig { server_ports: vec![8080], limits })
}

/// The client stream as text, gaps written as `<gap N>`.
fn client_stream(events: &[FlowEvent]) -> String {
    let mut s = String::new();
    for e in events {
        match e {
            FlowEvent::Data { side: Side::Client, data, .. } => s.push_str(&String::from_utf8_lossy(data)),
            FlowEvent::Gap { side: Side::Client, len, .. } => s.push_str(&format!("<gap {len}>")),
            _ => {}
        }
    }
    s
}

fn run(t: &mut FlowTable, segs: Vec<Segment>) -> (Vec<FlowEvent>, AssemblyDrops) {
    let mut out = Vec::new();
    let mut stats = AssemblyDrops::default();
    for s in segs {
        t.push(s, &mut out, &mut stats);
    }
    (out, stats)
}

#[test]
fn in_order_stream_starts_after_syn() {
    let mut t = table(FlowLimits::default());
    let (ev, _) = run(&mut t, vec![seg(true, 100, SYN, b"", 1), seg(true, 101, ACK, b"hello", 2)]);
    assert!(matches!(ev[0], FlowEvent::Opened { .. }));
    assert_eq!(ev[1], FlowEvent::StreamStart { id: 1, side: Side::Client, mid_stream: false, seq: 101 });
    assert_eq!(client_stream(&ev), "hello");
}

#[test]
fn sequence_wrap_around_is_seamless() {
    let mut t = table(FlowLimits::default());
    let isn = u32::MAX - 3;
    let (ev, stats) = run(
        &mut t,
        vec![
            seg(true, isn, SYN, b"", 1),
            seg(true, isn.wrapping_add(1), ACK, b"abc", 2),
            // Arrives out of order, across the wrap.
            seg(true, isn.wrapping_add(7), ACK, b"ghi", 3),
            seg(true, isn.wrapping_add(4), ACK, b"def", 4),
        ],
    );
    assert_eq!(client_stream(&ev), "abcdefghi");
    assert_eq!(stats.out_of_window_segments, 0);
}

#[test]
fn out_of_order_retransmission_and_overlap_deliver_each_byte_once_first_seen_wins() {
    let mut t = table(FlowLimits::default());
    let (ev, _) = run(
        &mut t,
        vec![
            seg(true, 0, SYN, b"", 1),
            seg(true, 5, ACK, b"FGH", 2),
            seg(true, 5, ACK, b"XXX", 3), // duplicate with other content: first seen wins
            seg(true, 4, ACK, b"dYYYh", 4), // overlaps the buffered piece on both sides
            seg(true, 1, ACK, b"abc", 5), // fills the start
            seg(true, 1, ACK, b"abcdefghi", 6), // full retransmission
            seg(true, 10, ACK, b"jk", 7),
        ],
    );
    assert_eq!(client_stream(&ev), "abcdFGHhijk");
}

#[test]
fn lost_range_is_an_explicit_gap() {
    let mut t = table(FlowLimits::default());
    let (ev, _) = run(
        &mut t,
        vec![
            seg(true, 0, SYN, b"", 1),
            seg(true, 1, ACK, b"ab", 2),
            lost(true, 3, 4),
            seg(true, 7, ACK, b"cd", 3),
        ],
    );
    assert_eq!(client_stream(&ev), "ab<gap 4>cd");
}

#[test]
fn a_range_captured_in_part_is_its_bytes_then_a_gap() {
    // `Segment::with_lost` on a segment with payload: the payload, then bytes not captured.
    let partly = |seq: u32, payload: &[u8], lost: u32| seg(true, seq, ACK, payload, 2).with_lost(lost);
    // In order (nothing buffered) and out of order (behind a hole).
    let mut t = table(FlowLimits::default());
    let (ev, _) =
        run(&mut t, vec![seg(true, 0, SYN, b"", 1), partly(1, b"ab", 3), seg(true, 6, ACK, b"cd", 3)]);
    assert_eq!(client_stream(&ev), "ab<gap 3>cd");
    let mut t = table(FlowLimits::default());
    let (ev, _) = run(
        &mut t,
        vec![
            seg(true, 0, SYN, b"", 1),
            seg(true, 8, ACK, b"ef", 3),
            partly(3, b"cd", 3),
            seg(true, 1, ACK, b"ab", 4),
        ],
    );
    assert_eq!(client_stream(&ev), "abcd<gap 3>ef");
    // Overlapping what is buffered: first seen wins, whether bytes or gap.
    let mut t = table(FlowLimits::default());
    let (ev, _) = run(
        &mut t,
        vec![
            seg(true, 0, SYN, b"", 1),
            partly(5, b"xy", 4),
            partly(3, b"cdEF", 6),
            seg(true, 1, ACK, b"ab", 4),
        ],
    );
    assert_eq!(client_stream(&ev), "abcdxy<gap 4><gap 2>");
}

#[test]
fn per_connection_buffer_limit_turns_the_hole_into_a_gap() {
    let limits = FlowLimits { max_buffered_per_conn: 100 + PIECE_OVERHEAD, ..FlowLimits::default() };
    let mut t = table(limits);
    let (ev, stats) = run(
        &mut t,
        vec![
            seg(true, 0, SYN, b"", 1),
            seg(true, 11, ACK, &[b'x'; 60], 2),
            seg(true, 71, ACK, &[b'y'; 60], 3),
        ],
    );
    let s = client_stream(&ev);
    assert!(s.starts_with("<gap 10>xxx"), "{s}");
    assert_eq!(stats.out_of_order_overflow_events, 1);
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn total_buffer_limit_is_enforced() {
    let limits = FlowLimits { max_buffered_total: 50 + PIECE_OVERHEAD, ..FlowLimits::default() };
    let mut t = table(limits);
    let (ev, stats) = run(&mut t, vec![seg(true, 0, SYN, b"", 1), seg(true, 11, ACK, &[b'x'; 60], 2)]);
    assert!(client_stream(&ev).starts_with("<gap 10>x"));
    assert_eq!(stats.memory_limit_events, 1);
    assert!(t.buffered_bytes() <= 50 + PIECE_OVERHEAD);
}

#[test]
fn idle_timeout_flushes_holes_and_closes() {
    let limits = FlowLimits { idle_timeout_ns: 1_000, ..FlowLimits::default() };
    let mut t = table(limits);
    let (mut ev, mut stats) = run(
        &mut t,
        vec![seg(true, 0, SYN, b"", 1), seg(true, 1, ACK, b"ab", 2), seg(true, 6, ACK, b"ef", 3)],
    );
    t.tick(500, &mut ev, &mut stats);
    assert_eq!(t.len(), 1, "not idle yet");
    t.tick(2_000, &mut ev, &mut stats);
    assert_eq!(client_stream(&ev), "ab<gap 3>ef");
    assert_eq!(ev.last(), Some(&FlowEvent::Closed { id: 1, reason: CloseReason::IdleTimeout }));
    assert_eq!(stats.idle_timeout_connections, 1);
    assert!(t.is_empty());
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn fin_both_ways_closes_and_new_syn_reuses_the_tuple() {
    let mut t = table(FlowLimits::default());
    let (ev, _) = run(
        &mut t,
        vec![
            seg(true, 0, SYN, b"", 1),
            seg(false, 500, SYN | ACK, b"", 2),
            seg(true, 1, ACK | FIN, b"req", 3),
            seg(false, 501, ACK | FIN, b"resp", 4),
            seg(true, 1, ACK | FIN, b"req", 5), // late retransmission: ignored
            seg(true, 9000, SYN, b"", 6),
            seg(true, 9001, ACK, b"again", 7),
        ],
    );
    let kinds: Vec<String> = ev
        .iter()
        .map(|e| match e {
            FlowEvent::Opened { id, .. } => format!("open{id}"),
            FlowEvent::StreamStart { id, .. } => format!("start{id}"),
            FlowEvent::Data { id, .. } => format!("data{id}"),
            FlowEvent::Gap { id, .. } => format!("gap{id}"),
            FlowEvent::Fin { id, .. } => format!("fin{id}"),
            FlowEvent::Closed { id, reason } => format!("closed{id}:{reason:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "open1",
            "start1",
            "start1",
            "data1",
            "fin1",
            "data1",
            "fin1",
            "closed1:Finished",
            "open2",
            "start2",
            "data2"
        ]
    );
}

#[test]
fn new_syn_with_other_isn_on_open_connection_replaces_it() {
    let mut t = table(FlowLimits::default());
    let (ev, _) =
        run(&mut t, vec![seg(true, 0, SYN, b"", 1), seg(true, 0, SYN, b"", 2), seg(true, 77, SYN, b"", 3)]);
    assert!(ev.contains(&FlowEvent::Closed { id: 1, reason: CloseReason::Reused }));
    assert_eq!(ev.iter().filter(|e| matches!(e, FlowEvent::Opened { .. })).count(), 2);
}

#[test]
fn rst_closes_immediately() {
    let mut t = table(FlowLimits::default());
    let (ev, _) = run(&mut t, vec![seg(true, 0, SYN, b"", 1), seg(false, 9, RST, b"", 2)]);
    assert_eq!(ev.last(), Some(&FlowEvent::Closed { id: 1, reason: CloseReason::Reset }));
}

#[test]
fn mid_stream_start_is_marked() {
    let mut t = table(FlowLimits::default());
    let (ev, _) = run(&mut t, vec![seg(true, 12345, ACK, b"tail of something", 1)]);
    assert_eq!(ev[1], FlowEvent::StreamStart { id: 1, side: Side::Client, mid_stream: true, seq: 12345 });
    assert_eq!(client_stream(&ev), "tail of something");
}

#[test]
fn connection_limit_evicts_least_recently_active() {
    let limits = FlowLimits { max_connections: 2, ..FlowLimits::default() };
    let mut t = table(limits);
    let mut segs = Vec::new();
    for (i, port) in [40001u16, 40002, 40003].into_iter().enumerate() {
        let mut s = seg(true, 0, SYN, b"", i as u64 + 1);
        s.src.set_port(port);
        segs.push(s);
    }
    let (ev, stats) = run(&mut t, segs);
    assert_eq!(t.len(), 2);
    assert_eq!(stats.conn_limit_evicted_connections, 1);
    assert!(ev.contains(&FlowEvent::Closed { id: 1, reason: CloseReason::Evicted }));
}

#[test]
fn other_ports_are_ignored_and_counted() {
    let mut t = table(FlowLimits::default());
    let mut s = seg(true, 0, SYN, b"", 1);
    s.dst.set_port(9999);
    let (ev, stats) = run(&mut t, vec![s]);
    assert!(ev.is_empty());
    assert_eq!(stats.not_server_port_segments, 1);
}

#[test]
fn bytes_claimed_after_the_fin_are_discarded_not_delivered() {
    let limits = FlowLimits {
        idle_timeout_ns: 1_000,
        max_buffered_per_conn: 2 * PIECE_OVERHEAD + 4,
        ..FlowLimits::default()
    };
    let mut t = table(limits);
    let (mut ev, mut stats) = run(
        &mut t,
        vec![
            seg(true, 0, SYN, b"", 1),
            seg(true, 1, ACK | FIN, b"ab", 2),
            seg(false, 0, SYN | ACK, b"", 3),
            // Server: FIN at offset 2 seen first, then bytes beyond it around a hole.
            seg(false, 3, ACK | FIN, b"", 4),
            seg(false, 6, ACK, b"zz", 5),
            seg(false, 9, ACK, b"yy", 6),
        ],
    );
    t.tick(10_000, &mut ev, &mut stats);
    let server: Vec<_> =
        ev.iter().filter(|e| matches!(e, FlowEvent::Data { side: Side::Server, .. })).collect();
    assert!(server.is_empty(), "{server:?}");
    assert!(ev.contains(&FlowEvent::Gap { id: 1, side: Side::Server, len: 2 }));
    assert!(ev.iter().any(|e| matches!(e, FlowEvent::Fin { side: Side::Server, .. })));
    assert_eq!(t.buffered_bytes(), 0);
    assert!(t.is_empty());
}

#[test]
fn data_carries_the_acknowledgement_of_the_segment_it_came_from() {
    let mut t = table(FlowLimits::default());
    let mut first = seg(true, 101, ACK, b"GET / HTTP/1.1\r\n\r\n", 2);
    first.ack = 5001;
    // A retransmission overlapping it carries a later acknowledgement: the bytes first seen keep
    // their own.
    let mut again = seg(true, 101, ACK, b"GET / HTTP/1.1\r\n\r\nPOST", 9);
    again.ack = 5040;
    let no_ack = seg(true, 123, 0, b" /x", 10);
    let (ev, _) = run(&mut t, vec![seg(true, 100, SYN, b"", 1), first, again, no_ack]);
    let data: Vec<(String, Option<u32>)> = ev
        .iter()
        .filter_map(|e| match e {
            FlowEvent::Data { data, ack, .. } => Some((String::from_utf8_lossy(data).into_owned(), *ack)),
            _ => None,
        })
        .collect();
    assert_eq!(
        data,
        [("GET / HTTP/1.1\r\n\r\n".into(), Some(5001)), ("POST".into(), Some(5040)), (" /x".into(), None)]
    );
}
