//! Property tests for the USB mux (docs/protocol.md §2.5–2.8): headers round-trip, any byte
//! stream crosses a host/device pair intact whatever the write sizes, and arbitrary input
//! never panics either end. 64 cases each, like roundtrip.rs.

use proptest::prelude::*;
use station_protocol::usb_mux::wire::{
    decode_packet, encode_packet, tcp_body, MuxBody, MuxProtocol, MuxSeq, MuxVersion, TcpHeader,
};
use station_protocol::usb_mux::{ConnId, Mux, MuxConfig, MuxEvent, Recv};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

fn pump(host: &mut Mux, device: &mut Mux) {
    loop {
        let mut moved = false;
        while let Some(p) = host.poll_transmit() {
            device.handle_transfer(&p);
            moved = true;
        }
        while let Some(p) = device.poll_transmit() {
            host.handle_transfer(&p);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn connected() -> (Mux, Mux, ConnId, ConnId) {
    let mut host = Mux::host(MuxConfig::default());
    let mut device = Mux::device(MuxConfig::default());
    pump(&mut host, &mut device);
    let hid = host.connect(62078).expect("connect");
    pump(&mut host, &mut device);
    let did = std::iter::from_fn(|| device.poll_event())
        .find_map(|e| match e {
            MuxEvent::Incoming(id) => Some(id),
            _ => None,
        })
        .expect("incoming");
    device.accept(did).expect("accept");
    pump(&mut host, &mut device);
    (host, device, hid, did)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tcp_packets_round_trip(
        sport in any::<u16>(), dport in any::<u16>(), seq in any::<u32>(), ack in any::<u32>(),
        flags in any::<u8>(), window in any::<u16>(), tx in any::<u16>(), rx in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        v2 in any::<bool>(),
    ) {
        let header = TcpHeader { source_port: sport, dest_port: dport, seq, ack, flags, window };
        let (seq_field, version) = if v2 {
            (Some(MuxSeq { tx_seq: tx, rx_seq: rx }), MuxVersion::V2)
        } else {
            (None, MuxVersion::V1)
        };
        let bytes = encode_packet(MuxProtocol::Tcp, seq_field, &tcp_body(&header, &payload));
        let packet = decode_packet(&bytes, version).expect("decode");
        prop_assert_eq!(packet.header.seq, seq_field);
        prop_assert_eq!(packet.header.length as usize, bytes.len());
        prop_assert_eq!(packet.body, MuxBody::Tcp { header, payload: &payload });
    }

    #[test]
    fn streams_cross_intact_whatever_the_write_sizes(
        data in proptest::collection::vec(any::<u8>(), 0..200_000),
        writes in proptest::collection::vec(1usize..70_000, 1..8),
        reads in 1usize..70_000,
    ) {
        let (mut host, mut device, hid, did) = connected();
        let mut sent = 0;
        let mut received = Vec::new();
        let mut buf = vec![0u8; reads];
        let mut turn = 0;
        while received.len() < data.len() {
            if sent < data.len() {
                let size = writes[turn % writes.len()].min(data.len() - sent);
                sent += host.send(hid, &data[sent..sent + size]).expect("send");
                turn += 1;
            }
            pump(&mut host, &mut device);
            if let Recv::Data(n) = device.recv(did, &mut buf).expect("recv") {
                received.extend_from_slice(&buf[..n]);
            }
            pump(&mut host, &mut device);
        }
        prop_assert_eq!(received, data);
    }

    #[test]
    fn arbitrary_transfers_never_panic_either_end(
        transfers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..128), 0..16),
    ) {
        let (mut host, mut device, hid, did) = connected();
        let mut buf = [0u8; 64];
        for t in &transfers {
            host.handle_transfer(t);
            device.handle_transfer(t);
            let _ = host.recv(hid, &mut buf);
            let _ = device.recv(did, &mut buf);
            while host.poll_transmit().is_some() {}
            while device.poll_transmit().is_some() {}
            while host.poll_event().is_some() {}
            while device.poll_event().is_some() {}
        }
    }
}
