//! Writes captured segments as a standard pcap file that `tcpdump -r` and Wireshark open.
//!
//! The kernel records carry the TCP/IP fields, not the original frames, so each captured range is
//! re-framed as a raw IP packet (LINKTYPE_RAW) with its original addresses, ports, seq/ack, flags and
//! window, valid checksums and nanosecond timestamps. Lost ranges are not written (there are no
//! bytes); they are counted, and show up in Wireshark as "previous segment not captured".
use std::{io::Write, net::IpAddr, time::Duration};

use etherparse::{PacketBuilder, TcpHeader};
use mirror_common::tcp_flags;
use pcap_file::{
    DataLink, Endianness, TsResolution,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use crate::capture::Segment;

/// Why a pcap file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PcapWriteError {
    #[error("write pcap: {0}")]
    Pcap(#[from] pcap_file::PcapError),
    #[error("build packet for {0}: {1}")]
    Build(String, String),
}

/// Streams segments into a pcap file.
pub struct SegmentPcapWriter<W: Write> {
    writer: PcapWriter<W>,
    /// Added to kernel monotonic timestamps to get wall-clock time.
    realtime_offset_ns: i128,
    scratch: Vec<u8>,
    /// Segments written.
    pub written: u64,
    /// Lost ranges skipped (no bytes to write).
    pub lost_ranges: u64,
}

impl<W: Write> std::fmt::Debug for SegmentPcapWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentPcapWriter").field("written", &self.written).finish()
    }
}

impl<W: Write> SegmentPcapWriter<W> {
    /// `realtime_offset_ns` converts kernel CLOCK_MONOTONIC stamps to wall-clock time; see
    /// [`monotonic_to_realtime_offset`].
    pub fn new(out: W, realtime_offset_ns: i128) -> Result<Self, PcapWriteError> {
        let header = PcapHeader {
            version_major: 2,
            version_minor: 4,
            ts_correction: 0,
            ts_accuracy: 0,
            snaplen: 262_144,
            datalink: DataLink::RAW,
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::native(),
        };
        Ok(Self {
            writer: PcapWriter::with_header(out, header)?,
            realtime_offset_ns,
            scratch: Vec::with_capacity(70_000),
            written: 0,
            lost_ranges: 0,
        })
    }

    /// Writes one segment (one packet); lost ranges are skipped and counted.
    pub fn write(&mut self, s: &Segment) -> Result<(), PcapWriteError> {
        if s.lost > 0 {
            self.lost_ranges += 1;
            return Ok(());
        }
        let mut tcp = TcpHeader::new(s.src.port(), s.dst.port(), s.range_seq(), s.window);
        tcp.acknowledgment_number = s.ack;
        tcp.ack = s.flags & tcp_flags::ACK != 0;
        tcp.psh = s.flags & tcp_flags::PSH != 0;
        tcp.rst = s.is_rst();
        tcp.urg = s.flags & 0x20 != 0;
        // A SYN or FIN belongs to the segment, so only to its first/last range.
        tcp.syn = s.is_syn() && s.offset == 0;
        tcp.fin = s.is_fin() && s.offset + s.range_len() == s.segment_len;
        let builder = match (s.src.ip(), s.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => PacketBuilder::ipv4(src.octets(), dst.octets(), 64),
            (IpAddr::V6(src), IpAddr::V6(dst)) => PacketBuilder::ipv6(src.octets(), dst.octets(), 64),
            _ => {
                return Err(PcapWriteError::Build(
                    format!("{} > {}", s.src, s.dst),
                    "mixed IP versions".into(),
                ));
            }
        }
        .tcp_header(tcp);
        self.scratch.clear();
        builder
            .write(&mut self.scratch, &s.payload)
            .map_err(|e| PcapWriteError::Build(format!("{} > {}", s.src, s.dst), e.to_string()))?;
        let wall = (i128::from(s.ts_ns) + self.realtime_offset_ns).max(0) as u128;
        let ts = Duration::new((wall / 1_000_000_000) as u64, (wall % 1_000_000_000) as u32);
        let len = self.scratch.len() as u32;
        self.writer.write_packet(&PcapPacket::new(ts, len, &self.scratch))?;
        self.written += 1;
        Ok(())
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.writer.into_writer()
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds, to turn kernel stamps into wall time.
pub fn monotonic_to_realtime_offset() -> i128 {
    fn now(clock: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Direction;
    use bytes::Bytes;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use pcap_file::pcap::PcapReader;

    fn seg(src: &str, dst: &str, seq: u32, flags: u8, payload: &'static [u8]) -> Segment {
        Segment {
            ts_ns: 1_500_000_123,
            ifindex: 1,
            direction: Direction::Ingress,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            seq,
            ack: 77,
            flags,
            window: 1000,
            segment_len: payload.len() as u32,
            offset: 0,
            payload: Bytes::from_static(payload),
            lost: 0,
        }
    }

    #[test]
    fn written_file_reads_back_with_fields_and_checksums() {
        let segments = [
            seg("10.0.0.1:40000", "10.0.0.2:8080", 100, tcp_flags::SYN, b""),
            seg(
                "10.0.0.1:40000",
                "10.0.0.2:8080",
                101,
                tcp_flags::PSH | tcp_flags::ACK,
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            seg("[fd00::2]:8080", "[fd00::1]:40000", 9, tcp_flags::ACK | tcp_flags::FIN, b"bye"),
        ];
        let mut w = SegmentPcapWriter::new(Vec::new(), 1_000_000_000_000).unwrap();
        for s in &segments {
            w.write(s).unwrap();
        }
        let mut lost = segments[1].clone();
        lost.payload = Bytes::new();
        lost.lost = 5;
        w.write(&lost).unwrap();
        assert_eq!((w.written, w.lost_ranges), (3, 1));
        let bytes = w.into_inner();

        let mut reader = PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(reader.header().datalink, DataLink::RAW);
        let mut n = 0;
        while let Some(pkt) = reader.next_packet() {
            let pkt = pkt.unwrap();
            let original = &segments[n];
            assert_eq!(pkt.timestamp, Duration::new(1001, 500_000_123));
            let sliced = SlicedPacket::from_ip(&pkt.data).unwrap();
            let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!("not tcp") };
            assert_eq!(tcp.source_port(), original.src.port());
            assert_eq!(tcp.destination_port(), original.dst.port());
            assert_eq!(tcp.sequence_number(), original.seq);
            assert_eq!(tcp.acknowledgment_number(), 77);
            assert_eq!(tcp.syn(), original.is_syn());
            assert_eq!(tcp.fin(), original.is_fin());
            assert_eq!(tcp.payload(), &original.payload[..]);
            let checksum = match &sliced.net {
                Some(NetSlice::Ipv4(ip)) => {
                    tcp.to_header().calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
                }
                Some(NetSlice::Ipv6(ip)) => {
                    tcp.to_header().calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
                }
                _ => panic!("no ip"),
            }
            .unwrap();
            assert_eq!(tcp.checksum(), checksum, "valid TCP checksum");
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn chunk_ranges_get_their_own_sequence_numbers() {
        let mut s = seg("10.0.0.1:1", "10.0.0.2:2", u32::MAX, tcp_flags::ACK | tcp_flags::FIN, b"xyz");
        s.segment_len = 10;
        s.offset = 2;
        let mut w = SegmentPcapWriter::new(Vec::new(), 0).unwrap();
        w.write(&s).unwrap();
        let bytes = w.into_inner();
        let mut reader = PcapReader::new(&bytes[..]).unwrap();
        let pkt = reader.next_packet().unwrap().unwrap();
        let sliced = SlicedPacket::from_ip(&pkt.data).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!("not tcp") };
        assert_eq!(tcp.sequence_number(), 1, "seq + offset wraps");
        assert!(!tcp.fin(), "FIN only on the last range");
    }
}
