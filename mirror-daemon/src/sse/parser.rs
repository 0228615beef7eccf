//! The event-stream parser of the HTML Living Standard (§9.2.6 "Interpreting an event stream"),
//! fed bytes as they were captured.
//!
//! Hand-written rather than taken from a crate: the crates in this space are async stream adapters,
//! and here each event must carry the capture time of the byte that completed it, input comes in
//! arbitrary pieces (TCP segments, chunks, DATA frames), and an event's size must be bounded.
//!
//! What the standard says, and this parser does: lines end with CRLF, LF or CR (a CR at the end of
//! one piece and an LF at the start of the next are one line end); a leading UTF-8 BOM is skipped;
//! `:` starts a comment; `field: value` loses one space after the colon; a line without a colon is
//! a field with an empty value; `data` lines are joined with LF; an empty line dispatches the event
//! unless no data was given; `id` (without NUL) persists across events; `retry` counts only when
//! it is all ASCII digits; unknown fields are ignored; bytes after the last empty line are not an
//! event. Lines are decoded as UTF-8 with replacement, as the standard's decoder does.

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The event type (`message` unless an `event:` field named another).
    pub event: String,
    /// The data lines joined with LF.
    pub data: String,
    /// The last event ID in force when the event was dispatched.
    pub id: Option<String>,
    /// A reconnection time the stream asked for (ms), if this event's fields set one.
    pub retry: Option<u64>,
    /// Capture time of the byte that completed the event (its empty line).
    pub ts_ns: u64,
}

/// Why a stream cannot be read further.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// Incremental event-stream parser.
#[derive(Debug)]
pub struct EventParser {
    max_event_bytes: usize,
    line: Vec<u8>,
    /// The previous piece ended with CR: an LF starting this piece belongs to that line end.
    after_cr: bool,
    /// Whether the first bytes (and a BOM among them) have been looked at.
    started: bool,
    data: String,
    event_type: String,
    last_id: Option<String>,
    retry: Option<u64>,
    /// Bytes of the event being built (its lines so far), for the size limit.
    event_bytes: usize,
    failed: Option<StreamError>,
}

impl EventParser {
    /// A parser refusing events (all their lines, comments included) larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            started: false,
            data: String::new(),
            event_type: String::new(),
            last_id: None,
            retry: None,
            event_bytes: 0,
            failed: None,
        }
    }

    /// Feeds the next bytes of the stream, captured at `ts_ns`; every event they complete goes to
    /// `emit`. After an error the parser stays failed and ignores input.
    pub fn push(
        &mut self,
        mut input: &[u8],
        ts_ns: u64,
        emit: &mut impl FnMut(Event),
    ) -> Result<(), StreamError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if !self.started {
            // A BOM can only be judged once three bytes, or a line end, are in.
            self.line.extend_from_slice(input);
            if self.line.len() < 3 && !self.line.iter().any(|&b| b == b'\n' || b == b'\r') {
                return Ok(());
            }
            self.started = true;
            let held = std::mem::take(&mut self.line);
            let skip = if held.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
            return self.push_lines(&held[skip..], ts_ns, emit);
        }
        if self.after_cr && input.first() == Some(&b'\n') {
            input = &input[1..];
        }
        self.after_cr = false;
        self.push_lines(input, ts_ns, emit)
    }

    fn push_lines(
        &mut self,
        mut input: &[u8],
        ts_ns: u64,
        emit: &mut impl FnMut(Event),
    ) -> Result<(), StreamError> {
        while let Some(end) = input.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (line, rest) = input.split_at(end);
            let crlf = rest[0] == b'\r' && rest.get(1) == Some(&b'\n');
            let ends_with_cr = rest[0] == b'\r' && rest.len() == 1;
            input = &rest[if crlf { 2 } else { 1 }..];
            self.grow(line.len() + 1)?;
            if self.line.is_empty() {
                self.line_done(line, ts_ns, emit);
            } else {
                let mut whole = std::mem::take(&mut self.line);
                whole.extend_from_slice(line);
                self.line_done(&whole, ts_ns, emit);
                whole.clear();
                self.line = whole;
            }
            if ends_with_cr {
                self.after_cr = true;
            }
        }
        self.grow(input.len())?;
        self.line.extend_from_slice(input);
        Ok(())
    }

    fn grow(&mut self, n: usize) -> Result<(), StreamError> {
        self.event_bytes += n;
        if self.event_bytes > self.max_event_bytes {
            let error = StreamError::EventTooLarge { limit: self.max_event_bytes };
            self.failed = Some(error);
            self.line = Vec::new();
            self.data = String::new();
            return Err(error);
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], ts_ns: u64, emit: &mut impl FnMut(Event)) {
        if line.is_empty() {
            self.dispatch(ts_ns, emit);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"event" => self.event_type = String::from_utf8_lossy(value).into_owned(),
            b"id" if !value.contains(&0) => self.last_id = Some(String::from_utf8_lossy(value).into_owned()),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, ts_ns: u64, emit: &mut impl FnMut(Event)) {
        self.event_bytes = 0;
        let retry = self.retry.take();
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        let event = match std::mem::take(&mut self.event_type) {
            t if t.is_empty() => "message".to_string(),
            t => t,
        };
        emit(Event { event, data, id: self.last_id.clone(), retry, ts_ns });
    }

    /// Bytes received after the last complete event (an event cut short, or a partial line).
    pub fn pending_bytes(&self) -> usize {
        self.event_bytes + self.line.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(pieces: &[&[u8]]) -> Vec<Event> {
        let mut parser = EventParser::new(1 << 20);
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            parser.push(piece, i as u64, &mut |e| out.push(e)).unwrap();
        }
        out
    }

    fn data(pieces: &[&[u8]]) -> Vec<String> {
        events(pieces).into_iter().map(|e| e.data).collect()
    }

    #[test]
    fn the_standards_examples() {
        // §9.2.6: a comment, two data lines, an event with id, an event without.
        let stream =
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
        let got = events(&[stream]);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].data, "first event");
        assert_eq!(got[0].id.as_deref(), Some("1"));
        assert_eq!(got[1].data, "second event");
        assert_eq!(got[1].id.as_deref(), Some(""), "an empty id resets the last event ID");
        assert_eq!(got[2].data, " third event", "only one space is stripped");
        // `data` with no colon is a data line with an empty value; two of them make "\n".
        assert_eq!(data(&[b"data\n\ndata\ndata\n\ndata:\n"]), ["", "\n"]);
        assert_eq!(data(&[b"data: YHOO\ndata: +2\ndata: 10\n\n"]), vec!["YHOO\n+2\n10"]);
    }

    #[test]
    fn line_ends_and_splits() {
        for stream in [
            &b"event: add\r\ndata: 1\r\n\r\ndata: 2\r\rdata: 3\n\n"[..],
            &b"event: add\rdata: 1\r\rdata: 2\r\n\r\ndata: 3\r\n\n"[..],
        ] {
            let whole = events(&[stream]);
            assert_eq!(whole.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["1", "2", "3"]);
            assert_eq!(whole[0].event, "add");
            assert_eq!(whole[1].event, "message");
            for split in 0..stream.len() {
                let (a, b) = stream.split_at(split);
                let parts = events(&[a, b]);
                assert_eq!(
                    parts.iter().map(|e| (&e.event, &e.data)).collect::<Vec<_>>(),
                    whole.iter().map(|e| (&e.event, &e.data)).collect::<Vec<_>>(),
                    "split at {split}"
                );
            }
        }
    }

    #[test]
    fn bom_retry_and_unknown_fields() {
        let got =
            events(&[b"\xEF\xBB", b"\xBFdata: a\nretry: 3000\nfoo: bar\n\n", b"retry: x1\ndata: b\n\n"]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].data, "a");
        assert_eq!(got[0].retry, Some(3000));
        assert_eq!(got[1].retry, None);
        // No BOM, a short first piece.
        assert_eq!(data(&[b"d", b"a", b"ta: x\n\n"]), ["x"]);
        assert_eq!(data(&[b"\n", b"data: y\n\n"]), ["y"]);
    }

    #[test]
    fn events_carry_the_time_of_their_empty_line_and_incomplete_ones_are_not_events() {
        let got = events(&[b"data: a\n", b"\ndata: b\n\n", b"data: c\n"]);
        assert_eq!(got.iter().map(|e| (e.data.as_str(), e.ts_ns)).collect::<Vec<_>>(), [("a", 1), ("b", 1)]);
    }

    #[test]
    fn an_oversized_event_fails_the_stream() {
        let mut parser = EventParser::new(16);
        let mut n = 0;
        assert!(parser.push(b"data: ok\n\n", 0, &mut |_| n += 1).is_ok());
        let err = parser.push(b"data: 0123456789abcdef\n\n", 1, &mut |_| n += 1).unwrap_err();
        assert_eq!(err, StreamError::EventTooLarge { limit: 16 });
        assert!(parser.push(b"data: ok\n\n", 2, &mut |_| n += 1).is_err());
        assert_eq!(n, 1);
    }
}
