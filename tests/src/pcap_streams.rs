//! Rebuilds the TCP byte streams in a pcap file (ours or tcpdump's), per direction, so that two
//! captures of the same traffic can be compared byte for byte with what the client recorded.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::Path,
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::{DataLink, pcap::PcapReader};

/// One direction of one connection.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    /// Payload bytes in sequence order (holes are not filled).
    pub bytes: Vec<u8>,
    /// Ranges of sequence space with no captured byte before the last captured one.
    pub holes: usize,
    /// Packets carrying payload.
    pub packets: usize,
    /// Largest payload of one packet (shows GSO super-packets).
    pub largest_payload: usize,
    pub saw_syn: bool,
    pub saw_fin: bool,
}

/// (source, destination) → stream.
pub type Streams = HashMap<(SocketAddr, SocketAddr), Stream>;

#[derive(Default)]
struct Builder {
    base: Option<u32>,
    ranges: BTreeMap<u64, Vec<u8>>,
    stream: Stream,
}

/// Reads every TCP packet of a pcap file (raw IP or Ethernet link type).
pub fn read(path: &Path) -> Streams {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut reader = PcapReader::new(file).unwrap_or_else(|e| panic!("read pcap {}: {e}", path.display()));
    let link = reader.header().datalink;
    let mut builders: HashMap<(SocketAddr, SocketAddr), Builder> = HashMap::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap_or_else(|e| panic!("pcap packet in {}: {e}", path.display()));
        let sliced = match link {
            DataLink::RAW => SlicedPacket::from_ip(&packet.data),
            DataLink::ETHERNET => SlicedPacket::from_ethernet(&packet.data),
            other => panic!("unexpected link type {other:?} in {}", path.display()),
        };
        let Ok(sliced) = sliced else { continue };
        let (src_ip, dst_ip): (IpAddr, IpAddr) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => {
                (ip.header().source_addr().into(), ip.header().destination_addr().into())
            }
            Some(NetSlice::Ipv6(ip)) => {
                (ip.header().source_addr().into(), ip.header().destination_addr().into())
            }
            _ => continue,
        };
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else { continue };
        let key =
            (SocketAddr::new(src_ip, tcp.source_port()), SocketAddr::new(dst_ip, tcp.destination_port()));
        let b = builders.entry(key).or_default();
        if tcp.syn() {
            b.base = Some(tcp.sequence_number().wrapping_add(1));
            b.stream.saw_syn = true;
        }
        b.stream.saw_fin |= tcp.fin();
        let payload = tcp.payload();
        if payload.is_empty() {
            continue;
        }
        let base = *b.base.get_or_insert(tcp.sequence_number());
        let offset = u64::from(tcp.sequence_number().wrapping_sub(base));
        b.stream.packets += 1;
        b.stream.largest_payload = b.stream.largest_payload.max(payload.len());
        // Keep the longest copy of a retransmitted range.
        let slot = b.ranges.entry(offset).or_default();
        if payload.len() > slot.len() {
            *slot = payload.to_vec();
        }
    }
    builders
        .into_iter()
        .map(|(key, mut b)| {
            let mut next = 0u64;
            for (offset, bytes) in std::mem::take(&mut b.ranges) {
                let end = offset + bytes.len() as u64;
                if offset > next {
                    b.stream.holes += 1;
                    next = offset;
                }
                if end > next {
                    let skip = (next - offset) as usize;
                    b.stream.bytes.extend_from_slice(&bytes[skip..]);
                    next = end;
                }
            }
            (key, b.stream)
        })
        .collect()
}
