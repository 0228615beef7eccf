//! Decoding of the kernel's ring-buffer records (`mirror_common::SegmentHeader` + payload).
//!
//! Pure and defensive: a record that does not have the shape the kernel promises is an error, never
//! a panic, so a mismatch between kernel object and daemon is reported rather than misread.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use mirror_common::{HEADER_SIZE, SegmentHeader, direction, record_flags};

use super::{Direction, Segment};

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its {HEADER_SIZE}-byte header")]
    Short(usize),
    #[error("record announces {announced} payload bytes but carries {carried}")]
    Length { announced: u32, carried: usize },
    #[error("record has unknown IP version {0}")]
    IpVersion(u8),
    #[error("record has unknown direction {0}")]
    Direction(u8),
    #[error("record range {offset}+{len} exceeds the segment's {segment_len} bytes")]
    Range { offset: u32, len: u32, segment_len: u32 },
}

/// Reads the header of a record.
pub fn header(record: &[u8]) -> Result<SegmentHeader, DecodeError> {
    if record.len() < HEADER_SIZE {
        return Err(DecodeError::Short(record.len()));
    }
    // SAFETY: length checked above; `SegmentHeader` is plain old data valid for any bytes, and
    // `read_unaligned` makes no alignment assumption about the ring buffer.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<SegmentHeader>()) })
}

/// Decodes one record; `copy_payload` turns the record's payload into owned bytes (the one copy
/// out of the ring buffer).
pub fn decode(record: &[u8]) -> Result<Segment, DecodeError> {
    let h = header(record)?;
    let carried = record.len() - HEADER_SIZE;
    // The ring buffer may round a record up to 8 bytes; it never carries less than announced.
    if (h.captured_len as usize) > carried {
        return Err(DecodeError::Length { announced: h.captured_len, carried });
    }
    let lost = h.flags & record_flags::LOST != 0;
    if !lost && h.captured_len != h.chunk_len {
        return Err(DecodeError::Length { announced: h.chunk_len, carried: h.captured_len as usize });
    }
    if u64::from(h.chunk_offset) + u64::from(h.chunk_len) > u64::from(h.payload_len) {
        return Err(DecodeError::Range {
            offset: h.chunk_offset,
            len: h.chunk_len,
            segment_len: h.payload_len,
        });
    }
    let (src_ip, dst_ip) = match h.ip_version {
        4 => (IpAddr::V4(v4(&h.src_addr)), IpAddr::V4(v4(&h.dst_addr))),
        6 => (IpAddr::V6(Ipv6Addr::from(h.src_addr)), IpAddr::V6(Ipv6Addr::from(h.dst_addr))),
        v => return Err(DecodeError::IpVersion(v)),
    };
    let direction = match h.direction {
        direction::INGRESS => Direction::Ingress,
        direction::EGRESS => Direction::Egress,
        d => return Err(DecodeError::Direction(d)),
    };
    let payload = if lost {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&record[HEADER_SIZE..HEADER_SIZE + h.captured_len as usize])
    };
    Ok(Segment {
        ts_ns: h.ts_ns,
        ifindex: h.ifindex,
        direction,
        src: SocketAddr::new(src_ip, h.src_port),
        dst: SocketAddr::new(dst_ip, h.dst_port),
        seq: h.seq,
        ack: h.ack,
        flags: h.tcp_flags,
        window: h.window,
        segment_len: h.payload_len,
        offset: h.chunk_offset,
        payload,
        lost: if lost { h.chunk_len } else { 0 },
    })
}

fn v4(addr: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
}

/// Encodes a segment as the kernel would. Used by tests and benchmarks to produce records.
pub fn encode(segment: &Segment) -> Vec<u8> {
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    let ip_version = match (segment.src.ip(), segment.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            src_addr[..4].copy_from_slice(&s.octets());
            dst_addr[..4].copy_from_slice(&d.octets());
            4
        }
        (s, d) => {
            src_addr = to_v6(s).octets();
            dst_addr = to_v6(d).octets();
            6
        }
    };
    let lost = segment.lost > 0;
    let h = SegmentHeader {
        ts_ns: segment.ts_ns,
        seq: segment.seq,
        ack: segment.ack,
        payload_len: segment.segment_len,
        chunk_offset: segment.offset,
        chunk_len: segment.range_len(),
        captured_len: segment.payload.len() as u32,
        ifindex: segment.ifindex,
        src_port: segment.src.port(),
        dst_port: segment.dst.port(),
        ip_version,
        direction: match segment.direction {
            Direction::Ingress => direction::INGRESS,
            Direction::Egress => direction::EGRESS,
        },
        tcp_flags: segment.flags,
        flags: if lost { record_flags::LOST } else { 0 },
        window: segment.window,
        _pad: [0; 2],
        src_addr,
        dst_addr,
    };
    let mut out = Vec::with_capacity(HEADER_SIZE + segment.payload.len());
    // SAFETY: `SegmentHeader` is `#[repr(C)]` plain data of exactly HEADER_SIZE bytes, no holes.
    out.extend_from_slice(unsafe {
        std::slice::from_raw_parts((&h as *const SegmentHeader).cast::<u8>(), HEADER_SIZE)
    });
    out.extend_from_slice(&segment.payload);
    out
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_common::tcp_flags;
    use proptest::prelude::*;

    fn segment(payload: &'static [u8]) -> Segment {
        Segment {
            ts_ns: 123_456_789,
            ifindex: 7,
            direction: Direction::Egress,
            src: "10.1.2.3:8080".parse().unwrap(),
            dst: "10.9.8.7:40000".parse().unwrap(),
            seq: u32::MAX - 3,
            ack: 42,
            flags: tcp_flags::PSH | tcp_flags::ACK,
            window: 501,
            segment_len: payload.len() as u32 + 10,
            offset: 10,
            payload: Bytes::from_static(payload),
            lost: 0,
        }
    }

    #[test]
    fn round_trips_ipv4_chunk() {
        let s = segment(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        assert_eq!(s.range_seq(), 6, "sequence space wraps");
    }

    #[test]
    fn round_trips_ipv6_and_lost_range() {
        let mut s = segment(b"");
        s.src = "[fd00::1]:8080".parse().unwrap();
        s.dst = "[fd00::2]:555".parse().unwrap();
        s.lost = 5;
        s.segment_len = 15;
        let d = decode(&encode(&s)).unwrap();
        assert_eq!(d, s);
        assert_eq!(d.range_len(), 5);
        assert!(d.payload.is_empty());
    }

    #[test]
    fn rejects_short_and_inconsistent_records() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Short(10)));
        let mut r = encode(&segment(b"abcdef"));
        r.truncate(r.len() - 2);
        assert!(matches!(decode(&r), Err(DecodeError::Length { announced: 6, carried: 4 })));
        let mut r = encode(&segment(b"abcdef"));
        r[std::mem::offset_of!(SegmentHeader, ip_version)] = 9;
        assert_eq!(decode(&r), Err(DecodeError::IpVersion(9)));
        let mut r = encode(&segment(b"abcdef"));
        r[std::mem::offset_of!(SegmentHeader, direction)] = 3;
        assert_eq!(decode(&r), Err(DecodeError::Direction(3)));
        let mut s = segment(b"abcdef");
        s.segment_len = 8; // offset 10 + 6 > 8
        assert!(matches!(decode(&encode(&s)), Err(DecodeError::Range { .. })));
    }

    #[test]
    fn accepts_ring_padding_after_payload() {
        let s = segment(b"abc");
        let mut r = encode(&s);
        r.extend_from_slice(&[0; 5]);
        assert_eq!(decode(&r).unwrap(), s);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
