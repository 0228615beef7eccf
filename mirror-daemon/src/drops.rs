//! Every loss the daemon counts, in one place.
//!
//! Invariant 4 of the design: every loss is visible. A request can be lost at any stage — the kernel
//! could not copy a packet, reassembly had to skip a hole, framing could not prove a message
//! boundary, the join table was full, a shadow's queue was full, the reporter fell behind — and each
//! stage counts its losses under a named reason. This module declares all of them, so that logs,
//! metrics and the summary list the same names from one [`Losses::list`], and a reader finds "where
//! is a loss counted" in one file.
//!
//! Counts are requests (exchanges) unless the name ends in `_bytes`, `_segments`, `_connections`,
//! `_events`, `_streams` or `_records`, starts with `records_` (lines of the `--record` file), or is
//! `unpaired_response` (responses). The request counts are the books' terms ([`Books`]): every
//! request the framing saw start ends exactly once — compared, recorded, not compared for a reason,
//! or lost under one of these counters — and the summary shows that they add up.
use std::{collections::BTreeMap, fmt};

/// Where in the pipeline a loss happened, in the order data flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The kernel programs or the ring buffer (packets not copied, records not decodable).
    Kernel,
    /// TCP reassembly (segments out of window, holes skipped, connections evicted).
    Reassembly,
    /// HTTP/1.x and HTTP/2 framing and pairing (messages that cannot be proven).
    Framing,
    /// Between rebuilt exchanges and comparisons (join table, missing parts).
    Dispatch,
    /// Replays not sent to a shadow.
    Replay,
    /// Comparisons and records not reported.
    Reporting,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Kernel => "kernel",
            Stage::Reassembly => "reassembly",
            Stage::Framing => "framing",
            Stage::Dispatch => "dispatch",
            Stage::Replay => "replay",
            Stage::Reporting => "reporting",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Declares a struct of monotonic counters grouped by [`Stage`], with a way to list and add them.
/// Fields marked `@tally` are counts that are not losses (listed nowhere as drops, but added).
macro_rules! counters {
    (
        $(#[doc = $sdoc:literal])+
        pub struct $name:ident {
            $(@tally $(#[doc = $tdoc:literal])+ $tally:ident,)*
            $($stage:ident: { $($(#[doc = $doc:literal])+ $field:ident,)* })*
        }
    ) => {
        $(#[doc = $sdoc])+
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[doc = $tdoc])+ pub $tally: u64,)*
            $($($(#[doc = $doc])+ pub $field: u64,)*)*
        }

        impl $name {
            /// Counter names, in the order [`Self::list`] returns them.
            pub const NAMES: &[&str] = &[$($(stringify!($field),)*)*];

            /// `(stage, name, value)` of every counter.
            pub fn list(&self) -> Vec<(Stage, &'static str, u64)> {
                vec![$($((Stage::$stage, stringify!($field), self.$field),)*)*]
            }

            /// Adds `other`'s counts to these (for counters kept by several workers).
            pub fn add(&mut self, other: &Self) {
                $(self.$tally += other.$tally;)*
                $($(self.$field += other.$field;)*)*
            }
        }
    };
}

counters! {
    /// Losses of the kernel capture and the ring-buffer reader.
    pub struct KernelDrops {
        Kernel: {
            /// Packet ranges not copied because the ring buffer was full (segments).
            ringbuf_full,
            /// Packet ranges beyond the copy limit (segments).
            truncated,
            /// Loss markers that could not be written either: the stream has a hole nobody reported.
            marker_lost,
            /// Matching packets the kernel programs could not parse (fragments, options).
            unparsed,
            /// Ring-buffer records userspace could not decode (records).
            undecodable_records,
            /// Packets not copied because their connection was shed (`capture::shed`): the
            /// connection is left out whole, never cut inside an exchange.
            shed_segments,
            /// Payload bytes of those packets.
            shed_bytes,
        }
    }
}

counters! {
    /// Losses between captured segments and rebuilt exchanges (TCP reassembly, then framing).
    pub struct AssemblyDrops {
        @tally
        /// Requests the framing saw start: HTTP/1 request bytes at a message boundary, HTTP/2
        /// client header blocks opening a stream. Not a loss: the books' total ([`Books`]).
        requests_seen,
        Reassembly: {
            /// Segments of the daemon's own replay connections (the shadow is where the capture
            /// sees it): never rebuilt, so never replayed again.
            own_replay_segments,
            /// Segments whose ports match no configured server port.
            not_server_port_segments,
            /// Segments too far outside the receive window to be placed in the stream.
            out_of_window_segments,
            /// Times a connection's out-of-order buffer limit forced a hole to become a gap.
            out_of_order_overflow_events,
            /// Times the total buffer limit forced a hole to become a gap.
            memory_limit_events,
            /// Open connections evicted because the connection table was full.
            conn_limit_evicted_connections,
            /// Open connections that timed out while idle.
            idle_timeout_connections,
            /// Records of shed connections copied before the kernel took the new shed level:
            /// dropped before reassembly.
            shed_late_segments,
            /// Open connections ended because the shed level rose over their bucket.
            shed_cut_connections,
            /// Connections first seen without their SYN in a bucket shed in the recent past:
            /// shedding had cut their start (also counted in `mid_stream_connections`).
            shed_resumed_connections,
        }
        Framing: {
            /// Exchanges lost to missing bytes (a gap inside a message).
            gap,
            /// Connections whose framing was lost to a gap: no further exchange is rebuilt on them.
            gap_desync_connections,
            /// Connections first seen without a SYN: never parsed (no provable message boundary), unless
            /// `--resync-mid-stream` picks them up at a request.
            mid_stream_connections,
            /// Bytes of connections first seen without a SYN (with `--resync-mid-stream`: until resynced).
            mid_stream_skipped_bytes,
            /// With `--resync-mid-stream`: requests dropped because the server bytes where the
            /// request chosen to resynchronise at says its answer starts (its acknowledgement) were
            /// not captured or did not start a status line (a pipelining client, or a loss).
            mid_stream_resync_failed,
            /// With `--resync-mid-stream`: times a connection whose framing a gap had lost
            /// (`gap_desync_connections`) was picked up again at a later request.
            gap_resumed_connections,
            /// Bytes skipped on connections that stopped being parsed (gap, malformed, unsupported,
            /// limit), and HTTP/2 DATA of streams that are not rebuilt.
            desync_skipped_bytes,
            /// Exchanges whose head exceeded the header size limit or the header count limit.
            header_too_large,
            /// Exchanges whose body exceeded the body size limit.
            body_too_large,
            /// Requests beyond the pipelining depth limit.
            pipeline_overflow,
            /// Requests that could not be parsed.
            malformed_request,
            /// Responses that could not be parsed.
            malformed_response,
            /// Exchanges on connections that switched protocol (`Upgrade`, 101).
            unsupported_upgrade,
            /// Exchanges on `CONNECT` tunnels.
            unsupported_connect,
            /// Responses with no request to pair with (responses, not requests).
            unpaired_response,
            /// Requests that got no response before the connection ended.
            unanswered_request,
            /// Requests cut short by the end of the connection.
            truncated_request,
            /// Responses cut short by the end of the connection.
            truncated_response,
            /// Streamed answers (`text/event-stream`) cut before their end event (`[DONE]`): the
            /// client disconnected mid-stream, or the connection ended otherwise. Not compared.
            sse_stream_cut,
            /// Exchanges in progress when the connection was reset.
            reset_with_pending,
            /// Exchanges in progress when the connection timed out.
            idle_timeout_with_pending,
            /// Exchanges in progress when the connection was evicted or its 4-tuple reused.
            evicted_with_pending,
            /// Requests in progress on connections still open when the daemon stopped (their
            /// responses were never captured).
            open_at_exit,
            /// HTTP/1 connections whose client bytes stopped being HTTP after a request (a valid
            /// request followed by garbage): the requests before are still paired, the garbage is
            /// counted once as `malformed_request`, and nothing after it is parsed.
            framing_error_connections,
            /// Exchanges in progress when the connection was shed.
            shed_with_pending,
            /// Exchanges dropped because the total HTTP buffer limit was hit.
            memory_limit,
            /// Connections stopped because a final response to `Expect: 100-continue` came before the
            /// request body: whether the body follows cannot be proven.
            expect_ambiguous,
            /// HTTP/2 streams whose header block refers to table entries inserted before capture began
            /// (or before bytes were lost): their fields cannot be proven, so they are not rebuilt.
            h2_unresolved_headers,
            /// HTTP/2 streams whose header block could not be decoded (malformed HPACK); the
            /// direction's table is forgotten and rebuilt from later blocks.
            h2_hpack_errors,
            /// HTTP/2 streams pushed by the server (`PUSH_PROMISE`): not rebuilt (server streams,
            /// not requests).
            h2_push_promised_streams,
            /// HTTP/2 exchanges ended by `RST_STREAM` with `CANCEL` (a client gave up, e.g. a
            /// deadline).
            h2_reset_cancel,
            /// HTTP/2 exchanges ended by `RST_STREAM` with `REFUSED_STREAM` (not processed).
            h2_reset_refused_stream,
            /// HTTP/2 exchanges ended by `RST_STREAM` with any other code.
            h2_reset_other,
            /// HTTP/2 streams above the last stream a `GOAWAY` said would be processed.
            h2_goaway_unprocessed,
            /// HTTP/2 streams beyond the per-connection limit of streams tracked at once.
            h2_stream_limit,
            /// HTTP/2 connections whose framing broke a rule that fixes frame boundaries (a frame over
            /// the size limit, a misplaced CONTINUATION, a bad preface), or, joined mid-stream, whose
            /// frame boundary was disproved later: not parsed further.
            h2_framing_error_connections,
            /// HTTP/2 streams of a connection joined mid-stream, dropped when a later client frame
            /// proved the frame boundary found false: a stream opened before capture began has an id
            /// above one seen opening since, and ids only grow (frames embedded in a payload, such
            /// as a tunnelled connection, had been read as the connection's own).
            h2_mid_stream_disproved,
        }
    }
}

counters! {
    /// Losses between rebuilt exchanges and reported comparisons.
    pub struct DispatchDrops {
        Dispatch: {
            /// Requests carrying this daemon's marker header (a replay captured again): not
            /// replayed.
            own_replays_ignored,
            /// Replays not started because the join table was full (replays: the request itself
            /// ends as not compared, `not_replayed`).
            join_full,
            /// Exchanges not reported because their bytes did not fit in the queues' share of
            /// `--memory-limit`: shed rather than grown. (Replays not sent and answers not kept
            /// for the same reason are `not_compared` with reason `memory_budget`, per shadow.)
            memory_budget,
            /// Replays whose production response was never rebuilt (replays: the request is
            /// counted where its exchange was lost).
            production_missing,
            /// Requests whose shadow result never came (replays time out, so this stays 0).
            shadow_missing,
        }
        Reporting: {
            /// Items dropped because the reporter fell behind.
            report_queue_full,
        }
    }
}

counters! {
    /// Records (`--record` lines) not written. The comparisons behind them were made and are in
    /// the logs, metrics and verdict; only their line is missing. Exported as
    /// `mirror_records_dropped_total{reason}`, the reason being the name without `records_dropped_`.
    pub struct RecordDrops {
        Reporting: {
            /// The record writer fell behind (a slow disk, a stdout reader that stopped reading):
            /// its queue was full.
            records_dropped_queue_full,
            /// The file system was full (ENOSPC, or a quota).
            records_dropped_disk_full,
            /// Any other write or open error.
            records_dropped_write_error,
            /// Still queued when the daemon stopped, and not written within the grace period.
            records_dropped_at_exit,
        }
    }
}

impl RecordDrops {
    /// The metric's `reason` label of a counter name (`records_dropped_disk_full` → `disk_full`).
    pub fn reason(name: &str) -> Option<&str> {
        name.strip_prefix("records_dropped_")
    }
}

/// The replay loss counted per shadow: replays dropped because the shadow's queue was full.
pub const REPLAY_QUEUE_FULL: &str = "queue_full";

/// Counters that count something other than requests although their name does not say so.
const NOT_REQUESTS: [&str; 3] = ["unpaired_response", "join_full", "production_missing"];

/// Whether a loss counter counts requests (see the module documentation).
pub fn counts_requests(name: &str) -> bool {
    const UNITS: [&str; 6] = ["_bytes", "_segments", "_connections", "_events", "_streams", "_records"];
    !UNITS.iter().any(|unit| name.ends_with(unit))
        && !name.starts_with("records_")
        && !NOT_REQUESTS.contains(&name)
}

impl AssemblyDrops {
    /// Requests lost in reassembly and framing: the sum of the request-counting counters.
    pub fn requests_lost(&self) -> u64 {
        self.list().into_iter().filter(|l| counts_requests(l.1)).map(|l| l.2).sum()
    }
}

/// What became of the requests that reached the reporter, one outcome per request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Compared with at least one shadow (a verdict, errors and timeouts included).
    pub compared: u64,
    /// Recorded without shadows (monitoring only).
    pub recorded: u64,
    /// Compared with no shadow, by reason (the first shadow's, when several were configured).
    pub not_compared: BTreeMap<&'static str, u64>,
}

/// The books in request units: every request seen is compared, recorded, not compared for a
/// reason, lost under a counted reason, or still in progress — once. `difference` is what does
/// not add up, and is 0 unless a request went uncounted (or was counted twice).
///
/// Requests never seen at all (a whole connection lost before its first byte was captured, or
/// the bytes skipped on a connection whose framing was lost) cannot be counted in requests: they
/// are in the kernel's segment counters and the `_bytes` and `_connections` counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Books {
    pub seen: u64,
    pub compared: u64,
    pub recorded: u64,
    /// Not compared, by reason (the `reason` of `not_compared` records).
    pub not_compared: Vec<(&'static str, u64)>,
    /// Lost before comparison, by reason (the request-counting loss counters, non-zero ones).
    pub lost: Vec<(&'static str, u64)>,
    /// Seen and not yet ended: partial messages, answers awaited (0 in the final summary).
    pub in_progress: u64,
}

impl Books {
    pub fn new(losses: &Losses, outcomes: &Outcomes, in_progress: u64) -> Self {
        let lost = losses
            .list()
            .into_iter()
            .filter(|l| matches!(l.stage, Stage::Framing | Stage::Dispatch | Stage::Reporting))
            .filter(|l| l.value > 0 && counts_requests(l.reason))
            .map(|l| (l.reason, l.value))
            .collect();
        Self {
            seen: losses.assembly.requests_seen,
            compared: outcomes.compared,
            recorded: outcomes.recorded,
            not_compared: outcomes
                .not_compared
                .iter()
                .map(|(r, v)| (*r, *v))
                .filter(|(_, v)| *v > 0)
                .collect(),
            lost,
            in_progress,
        }
    }

    pub fn not_compared_total(&self) -> u64 {
        self.not_compared.iter().map(|(_, v)| v).sum()
    }

    pub fn lost_total(&self) -> u64 {
        self.lost.iter().map(|(_, v)| v).sum()
    }

    /// Requests seen minus every outcome: 0 when the books balance.
    pub fn difference(&self) -> i64 {
        let accounted =
            self.compared + self.recorded + self.not_compared_total() + self.lost_total() + self.in_progress;
        self.seen as i64 - accounted as i64
    }
}

impl fmt::Display for Books {
    /// `seen 500 = compared 300 + not_compared 150 (queue_full=150) + lost 50 (gap=50) +
    /// in_progress 0; difference 0` (monitoring adds `recorded`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = |pairs: &[(&str, u64)]| {
            let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if text.is_empty() { String::new() } else { format!(" ({})", text.join(" ")) }
        };
        write!(f, "seen {} = compared {}", self.seen, self.compared)?;
        if self.recorded > 0 {
            write!(f, " + recorded {}", self.recorded)?;
        }
        write!(
            f,
            " + not_compared {}{} + lost {}{} + in_progress {}; difference {}",
            self.not_compared_total(),
            pairs(&self.not_compared),
            self.lost_total(),
            pairs(&self.lost),
            self.in_progress,
            self.difference()
        )
    }
}

/// One counted loss, as logs and metrics name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub stage: Stage,
    pub reason: &'static str,
    /// The shadow's model id, for [`Stage::Replay`] losses.
    pub shadow: Option<String>,
    pub value: u64,
}

/// Every loss counter of the daemon at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    pub kernel: KernelDrops,
    pub assembly: AssemblyDrops,
    pub dispatch: DispatchDrops,
    /// Per shadow (model id): replays dropped because its queue was full.
    pub replay_queue_full: Vec<(String, u64)>,
    /// Records not written (counted by the record writer, filled in by the reporter).
    pub records: RecordDrops,
}

impl Losses {
    /// Every counter, in pipeline order.
    pub fn list(&self) -> Vec<Loss> {
        let plain = |(stage, reason, value)| Loss { stage, reason, shadow: None, value };
        let mut all: Vec<Loss> = self.kernel.list().into_iter().map(plain).collect();
        all.extend(self.assembly.list().into_iter().map(plain));
        all.extend(self.dispatch.list().into_iter().filter(|l| l.0 == Stage::Dispatch).map(plain));
        all.extend(self.replay_queue_full.iter().map(|(shadow, value)| Loss {
            stage: Stage::Replay,
            reason: REPLAY_QUEUE_FULL,
            shadow: Some(shadow.clone()),
            value: *value,
        }));
        all.extend(self.dispatch.list().into_iter().filter(|l| l.0 == Stage::Reporting).map(plain));
        all.extend(self.records.list().into_iter().map(plain));
        all
    }

    /// The losses after capture (reassembly, framing, dispatch, reporting) as `(name, value)`: the
    /// summary's `drops` field. Kernel and replay losses have fields of their own there.
    pub fn pipeline(&self) -> Vec<(&'static str, u64)> {
        self.list()
            .into_iter()
            .filter(|l| !matches!(l.stage, Stage::Kernel | Stage::Replay))
            .map(|l| (l.reason, l.value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_is_listed_once_in_pipeline_order() {
        let losses = Losses {
            kernel: KernelDrops { ringbuf_full: 1, ..KernelDrops::default() },
            assembly: AssemblyDrops { gap: 2, out_of_window_segments: 3, ..AssemblyDrops::default() },
            dispatch: DispatchDrops { join_full: 4, report_queue_full: 5, ..DispatchDrops::default() },
            replay_queue_full: vec![("m2".into(), 6)],
            records: RecordDrops { records_dropped_disk_full: 7, ..RecordDrops::default() },
        };
        let list = losses.list();
        let stages: Vec<Stage> = list.iter().map(|l| l.stage).collect();
        let mut sorted = stages.clone();
        sorted.sort();
        assert_eq!(stages, sorted, "pipeline order");
        let names = KernelDrops::NAMES.len()
            + AssemblyDrops::NAMES.len()
            + DispatchDrops::NAMES.len()
            + 1
            + RecordDrops::NAMES.len();
        assert_eq!(list.len(), names);
        let nonzero: Vec<(&str, u64)> =
            list.iter().filter(|l| l.value > 0).map(|l| (l.reason, l.value)).collect();
        assert_eq!(
            nonzero,
            [
                ("ringbuf_full", 1),
                ("out_of_window_segments", 3),
                ("gap", 2),
                ("join_full", 4),
                ("queue_full", 6),
                ("report_queue_full", 5),
                ("records_dropped_disk_full", 7)
            ]
        );
        let pipeline: Vec<(&str, u64)> = losses.pipeline().into_iter().filter(|(_, v)| *v > 0).collect();
        assert_eq!(
            pipeline,
            [
                ("out_of_window_segments", 3),
                ("gap", 2),
                ("join_full", 4),
                ("report_queue_full", 5),
                ("records_dropped_disk_full", 7)
            ]
        );
        assert_eq!(RecordDrops::reason("records_dropped_disk_full"), Some("disk_full"));
        assert_eq!(RecordDrops::reason("report_queue_full"), None);
    }

    #[test]
    fn the_books_balance_only_in_requests() {
        let losses = Losses {
            kernel: KernelDrops { ringbuf_full: 40, ..KernelDrops::default() },
            assembly: AssemblyDrops {
                requests_seen: 20,
                gap: 2,
                malformed_request: 1,
                desync_skipped_bytes: 900,
                gap_desync_connections: 1,
                unpaired_response: 1,
                h2_push_promised_streams: 3,
                ..AssemblyDrops::default()
            },
            dispatch: DispatchDrops {
                join_full: 4,
                production_missing: 1,
                report_queue_full: 2,
                ..DispatchDrops::default()
            },
            replay_queue_full: vec![("m2".into(), 5)],
            records: RecordDrops { records_dropped_disk_full: 7, ..RecordDrops::default() },
        };
        let outcomes = Outcomes {
            compared: 9,
            recorded: 0,
            not_compared: BTreeMap::from([("queue_full", 5), ("sampled_out", 0)]),
        };
        let books = Books::new(&losses, &outcomes, 1);
        assert_eq!(books.lost, [("gap", 2), ("malformed_request", 1), ("report_queue_full", 2)]);
        assert_eq!(books.not_compared, [("queue_full", 5)]);
        assert_eq!(books.difference(), 0, "{books}");
        assert_eq!(
            books.to_string(),
            "seen 20 = compared 9 + not_compared 5 (queue_full=5) + lost 5 (gap=2 malformed_request=1 \
             report_queue_full=2) + in_progress 1; difference 0"
        );
        let short = Books::new(&losses, &Outcomes { compared: 7, ..outcomes.clone() }, 0);
        assert_eq!(short.difference(), 3, "three requests unaccounted for");
        let over = Books::new(&losses, &Outcomes { compared: 12, ..outcomes }, 0);
        assert_eq!(over.difference(), -2, "counted twice");
        for name in AssemblyDrops::NAMES.iter().chain(DispatchDrops::NAMES) {
            let unit = ["_bytes", "_segments", "_connections", "_events", "_streams"]
                .iter()
                .any(|u| name.ends_with(u));
            if unit {
                assert!(!counts_requests(name), "{name}");
            }
        }
        assert!(counts_requests("open_at_exit") && counts_requests("own_replays_ignored"));
    }

    #[test]
    fn counters_add_up() {
        let mut a = AssemblyDrops { gap: 1, ..AssemblyDrops::default() };
        a.add(&AssemblyDrops { gap: 2, memory_limit: 1, ..AssemblyDrops::default() });
        assert_eq!((a.gap, a.memory_limit), (3, 1));
    }
}
