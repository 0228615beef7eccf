//! Framing of one direction: a message head, then its body by `Content-Length`, chunked coding
//! (trailers kept) or the end of the connection, with the kernel timestamps of its bytes.
use bytes::{Buf, Bytes, BytesMut};

use super::{
    Stop,
    head::{MessageHead, to_headers},
};
use crate::{
    exchange::{Arrivals, BodyBuilder, Header},
    framing::HttpConfig,
};

/// Why one exchange is dropped although the framing held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Damage {
    Gap,
    BodyTooLarge,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Phase {
    #[default]
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
}

/// Framing state of one direction.
#[derive(Debug, Default)]
pub(super) struct Reader {
    pub(super) phase: Phase,
    /// Head bytes split across segments.
    pub(super) head_buf: BytesMut,
    /// Chunk-size line or trailer block split across segments.
    pub(super) line_buf: BytesMut,
    pub(super) trailer_buf: BytesMut,
    pub(super) body: BodyBuilder,
    pub(super) damaged: bool,
    /// A byte of the current message has been seen.
    pub(super) started: bool,
    pub(super) first_ts: u64,
    pub(super) last_ts: u64,
}

pub(super) enum HeadResult<H> {
    /// All input consumed, head not complete yet.
    Partial,
    /// The head, parsed; the input goes on after it.
    Complete(H),
}

impl Reader {
    pub(super) fn buffered(&self) -> usize {
        self.head_buf.len() + self.line_buf.len() + self.trailer_buf.len() + self.body.len()
    }

    /// Records that bytes captured at `ts` belong to the current message. Segments can be captured
    /// out of order, so the first and last times are the earliest and latest seen.
    pub(super) fn touch(&mut self, ts: u64) {
        if !self.started {
            self.started = true;
            self.first_ts = ts;
            self.last_ts = ts;
        }
        self.first_ts = self.first_ts.min(ts);
        self.last_ts = self.last_ts.max(ts);
    }

    /// Prepares for the next message, keeping allocations.
    pub(super) fn reset(&mut self) {
        self.phase = Phase::Head;
        self.head_buf.clear();
        self.line_buf.clear();
        self.trailer_buf.clear();
        self.body.clear();
        self.damaged = false;
        self.started = false;
    }

    /// Takes a complete head from `data` and parses it, once (zero-copy when one segment holds
    /// it; a head split across segments is gathered first, up to the head size limit).
    pub(super) fn take_head<H: MessageHead>(
        &mut self,
        data: &mut Bytes,
        ts: u64,
        cfg: &HttpConfig,
    ) -> Result<HeadResult<H>, Stop> {
        self.touch(ts);
        if self.head_buf.is_empty() {
            match H::parse(data, cfg)? {
                Some((n, head)) => {
                    data.advance(n);
                    return Ok(HeadResult::Complete(head));
                }
                None if data.len() > cfg.max_header_bytes => return Err(Stop::HeaderTooLarge),
                None => {
                    self.head_buf.extend_from_slice(data);
                    data.clear();
                    return Ok(HeadResult::Partial);
                }
            }
        }
        let take = data.len().min(cfg.max_header_bytes + 1 - self.head_buf.len().min(cfg.max_header_bytes));
        let old = self.head_buf.len();
        self.head_buf.extend_from_slice(&data[..take]);
        // Frozen to be parsed into shared header values; given back while the head is partial
        // (the buffer is not shared then, so that costs no copy).
        let gathered = std::mem::take(&mut self.head_buf).freeze();
        let parsed = H::parse(&gathered, cfg);
        if !matches!(parsed, Ok(Some(_))) {
            self.head_buf = gathered.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        }
        match parsed? {
            Some((n, head)) => {
                data.advance(n - old);
                Ok(HeadResult::Complete(head))
            }
            None if self.head_buf.len() > cfg.max_header_bytes => Err(Stop::HeaderTooLarge),
            None => {
                data.advance(take);
                Ok(HeadResult::Partial)
            }
        }
    }

    /// Consumes body bytes; `Ok(true)` when the message is complete.
    pub(super) fn feed_body(
        &mut self,
        data: &mut Bytes,
        ts: u64,
        cfg: &HttpConfig,
        bad: Stop,
    ) -> Result<bool, Stop> {
        self.touch(ts);
        loop {
            match self.phase {
                Phase::Head => return Ok(true),
                Phase::Length(0) => return Ok(true),
                Phase::Length(rest) | Phase::ChunkData(rest) => {
                    if data.is_empty() {
                        return Ok(false);
                    }
                    let n = rest.min(data.len() as u64) as usize;
                    let part = data.split_to(n);
                    self.body.push(part, ts, cfg.max_body_bytes);
                    let rest = rest - n as u64;
                    self.phase = match self.phase {
                        Phase::Length(_) => Phase::Length(rest),
                        _ if rest == 0 => Phase::ChunkEnd,
                        _ => Phase::ChunkData(rest),
                    };
                }
                Phase::UntilClose => {
                    let part = std::mem::take(data);
                    self.body.push(part, ts, cfg.max_body_bytes);
                    return Ok(false);
                }
                Phase::ChunkSize => {
                    if !read_line(&mut self.line_buf, data, 1024).ok_or(bad)? {
                        return Ok(false);
                    }
                    let size = match httparse::parse_chunk_size(&self.line_buf) {
                        Ok(httparse::Status::Complete((_, size))) => size,
                        _ => return Err(bad),
                    };
                    self.line_buf.clear();
                    self.phase = if size == 0 { Phase::Trailers } else { Phase::ChunkData(size) };
                }
                Phase::ChunkEnd => {
                    if !read_line(&mut self.line_buf, data, 2).ok_or(bad)? {
                        return Ok(false);
                    }
                    if !is_empty_line(&self.line_buf) {
                        return Err(bad);
                    }
                    self.line_buf.clear();
                    self.phase = Phase::ChunkSize;
                }
                Phase::Trailers => {
                    if !read_line(&mut self.line_buf, data, cfg.max_header_bytes)
                        .ok_or(Stop::HeaderTooLarge)?
                    {
                        return Ok(false);
                    }
                    let done = is_empty_line(&self.line_buf);
                    self.trailer_buf.extend_from_slice(&self.line_buf);
                    self.line_buf.clear();
                    if self.trailer_buf.len() > cfg.max_header_bytes {
                        return Err(Stop::HeaderTooLarge);
                    }
                    if done {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Applies a gap of `len` bytes; `Err` when the framing cannot survive it.
    pub(super) fn gap(&mut self, len: u64) -> Result<(), Stop> {
        match self.phase {
            Phase::Length(rest) if len <= rest => self.phase = Phase::Length(rest - len),
            Phase::ChunkData(rest) if len < rest => self.phase = Phase::ChunkData(rest - len),
            Phase::ChunkData(rest) if len == rest => self.phase = Phase::ChunkEnd,
            Phase::UntilClose => {}
            _ => return Err(Stop::Gap),
        }
        self.damaged = true;
        Ok(())
    }

    /// Takes the finished message's body and trailers and readies the reader for the next one.
    pub(super) fn finish(&mut self) -> Finished {
        let damage = if self.damaged {
            Some(Damage::Gap)
        } else if self.body.too_large() {
            Some(Damage::BodyTooLarge)
        } else {
            None
        };
        let (body, arrivals) = self.body.take();
        let finished =
            Finished { body, arrivals, trailers: self.take_trailers(), last: self.last_ts, damage };
        self.reset();
        finished
    }

    pub(super) fn take_trailers(&mut self) -> Vec<Header> {
        if self.trailer_buf.len() <= 2 {
            return Vec::new();
        }
        let block = self.trailer_buf.split().freeze();
        let mut headers = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(&block, &mut headers) {
            Ok(httparse::Status::Complete((_, fields))) => to_headers(&block, fields),
            // Trailers are informative only; unparsable ones are left out rather than guessed.
            _ => Vec::new(),
        }
    }
}

/// Appends bytes up to and including the next LF to `line`: `Some(true)` once the line is
/// complete, `None` when it exceeds `max` bytes.
pub(super) fn read_line(line: &mut BytesMut, data: &mut Bytes, max: usize) -> Option<bool> {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&data[..=i]);
            data.advance(i + 1);
        }
        None => {
            line.extend_from_slice(data);
            data.clear();
        }
    }
    if line.len() > max {
        return None;
    }
    Some(line.last() == Some(&b'\n'))
}

pub(super) fn is_empty_line(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

/// A message body read to its end, and what (if anything) spoiled it.
pub(super) struct Finished {
    pub(super) body: Bytes,
    pub(super) arrivals: Arrivals,
    pub(super) trailers: Vec<Header>,
    pub(super) last: u64,
    pub(super) damage: Option<Damage>,
}
