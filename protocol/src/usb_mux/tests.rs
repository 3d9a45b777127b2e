//! Exact bytes of docs/protocol.md §2.5–2.8 and the behaviour of both ends of the mux.

use super::wire::*;
use super::*;

fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("test hex"))
        .collect()
}

fn events(mux: &mut Mux) -> Vec<MuxEvent> {
    std::iter::from_fn(|| mux.poll_event()).collect()
}

fn transmit_all(mux: &mut Mux) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| mux.poll_transmit()).collect()
}

/// Moves packets both ways until neither side has anything to send.
fn pump(host: &mut Mux, device: &mut Mux) {
    loop {
        let to_device = transmit_all(host);
        let to_host = transmit_all(device);
        if to_device.is_empty() && to_host.is_empty() {
            return;
        }
        for p in to_device {
            device.handle_transfer(&p);
        }
        for p in to_host {
            host.handle_transfer(&p);
        }
    }
}

fn up() -> (Mux, Mux) {
    let mut host = Mux::host(MuxConfig::default());
    let mut device = Mux::device(MuxConfig::default());
    pump(&mut host, &mut device);
    assert_eq!(
        events(&mut host),
        vec![MuxEvent::Ready {
            version: MuxVersion::V2
        }]
    );
    assert_eq!(
        events(&mut device),
        vec![MuxEvent::Ready {
            version: MuxVersion::V2
        }]
    );
    (host, device)
}

/// A connected pair of ends with one connection to lockdownd.
fn connected() -> (Mux, Mux, ConnId, ConnId) {
    let (mut host, mut device) = up();
    let hid = host.connect(62078).expect("connect");
    pump(&mut host, &mut device);
    let incoming = events(&mut device);
    let did = match incoming.as_slice() {
        [MuxEvent::Incoming(id)] => *id,
        other => panic!("expected one Incoming, got {other:?}"),
    };
    device.accept(did).expect("accept");
    pump(&mut host, &mut device);
    assert_eq!(events(&mut host), vec![MuxEvent::Connected(hid)]);
    (host, device, hid, did)
}

fn read_all(mux: &mut Mux, id: ConnId) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Recv::Data(n)) = mux.recv(id, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn host_starts_with_version_1_header_asking_for_2_0() {
    let mut host = Mux::host(MuxConfig::default());
    assert_eq!(
        host.poll_transmit(),
        Some(hex("00000000 00000014 00000002 00000000 00000000"))
    );
    assert_eq!(host.poll_transmit(), None);
    assert!(!host.is_ready());
    assert_eq!(
        host.connect(62078),
        Err(UsbMuxError::NotReady { what: "connect" })
    );
}

#[test]
fn version_2_answer_brings_setup_then_the_worked_example_syn() {
    let mut host = Mux::host(MuxConfig::default());
    host.poll_transmit();
    host.handle_transfer(&hex("00000000 00000014 00000002 00000000 00000000"));
    assert_eq!(
        events(&mut host),
        vec![MuxEvent::Ready {
            version: MuxVersion::V2
        }]
    );
    // §2.6 step 3: SETUP 0x07 with tx_seq 0, rx_seq 0xFFFF.
    assert_eq!(
        host.poll_transmit(),
        Some(hex("00000002 00000011 FEEDFACE 0000 FFFF 07"))
    );
    // §2.8 worked example: the first SYN to lockdownd, host tx_seq 1 after SETUP.
    let id = host.connect(62078).expect("connect");
    assert_eq!(
        id,
        ConnId {
            local_port: 1,
            remote_port: 62078
        }
    );
    assert_eq!(
        host.poll_transmit(),
        Some(hex("00000006 00000024 FEEDFACE 0001 FFFF
             0001 F27E 00000000 00000000 50 02 0200 0000 0000"))
    );
    // The phone's SYN|ACK (its tx_seq 0): the host acknowledges with seq 1, ack 1.
    host.handle_transfer(&hex("00000006 00000024 FEEDFACE 0000 0001
         F27E 0001 00000000 00000001 50 12 0200 0000 0000"));
    assert_eq!(events(&mut host), vec![MuxEvent::Connected(id)]);
    assert_eq!(
        host.poll_transmit(),
        Some(hex("00000006 00000024 FEEDFACE 0002 0000
             0001 F27E 00000001 00000001 50 10 0200 0000 0000"))
    );
    // Data goes with ACK, seq 1, and advances seq by its length.
    assert_eq!(host.send(id, b"hi"), Ok(2));
    assert_eq!(
        host.poll_transmit(),
        Some(hex("00000006 00000026 FEEDFACE 0003 0000
             0001 F27E 00000001 00000001 50 10 0200 0000 0000 6869"))
    );
    host.close(id);
    assert_eq!(
        host.poll_transmit(),
        Some(hex("00000006 00000024 FEEDFACE 0004 0000
             0001 F27E 00000003 00000001 50 04 0200 0000 0000"))
    );
    assert_eq!(host.connection_count(), 0);
}

#[test]
fn device_answers_version_then_syn_with_syn_ack() {
    let mut device = Mux::device(MuxConfig::default());
    device.handle_transfer(&hex("00000000 00000014 00000002 00000000 00000000"));
    assert_eq!(
        device.poll_transmit(),
        Some(hex("00000000 00000014 00000002 00000000 00000000"))
    );
    assert!(!device.is_ready());
    device.handle_transfer(&hex("00000002 00000011 FEEDFACE 0000 FFFF 07"));
    assert!(device.is_ready());
    device.handle_transfer(&hex(
        "00000006 00000024 FEEDFACE 0001 FFFF 0001 F27E 00000000 00000000 50 02 0200 0000 0000",
    ));
    let id = ConnId {
        local_port: 62078,
        remote_port: 1,
    };
    assert_eq!(
        events(&mut device),
        vec![
            MuxEvent::Ready {
                version: MuxVersion::V2
            },
            MuxEvent::Incoming(id)
        ]
    );
    device.accept(id).expect("accept");
    assert_eq!(
        device.poll_transmit(),
        Some(hex(
            "00000006 00000024 FEEDFACE 0000 0001 F27E 0001 00000000 00000001 50 12 0200 0000 0000"
        ))
    );
}

#[test]
fn refused_port_reports_the_reset_reason() {
    let (mut host, mut device) = up();
    let id = host.connect(1234).expect("connect");
    pump(&mut host, &mut device);
    let [MuxEvent::Incoming(did)] = events(&mut device)[..] else {
        panic!("no Incoming")
    };
    device.refuse(did).expect("refuse");
    pump(&mut host, &mut device);
    assert_eq!(
        events(&mut host),
        vec![MuxEvent::Refused { id, reason: None }]
    );
    // A reset with a text, as phones send for a closed port.
    let id = host.connect(1234).expect("connect");
    assert_eq!(id.local_port, 2, "ports go up");
    transmit_all(&mut host);
    let rst = TcpHeader {
        source_port: 1234,
        dest_port: 2,
        seq: 0,
        ack: 1,
        flags: TCP_RST,
        window: 0,
    };
    host.handle_packet(&encode_packet(
        MuxProtocol::Tcp,
        Some(MuxSeq {
            tx_seq: 9,
            rx_seq: 0,
        }),
        &tcp_body(&rst, b"no such service\0"),
    ));
    assert_eq!(
        events(&mut host),
        vec![MuxEvent::Refused {
            id,
            reason: Some("no such service".into())
        }]
    );
    assert_eq!(host.connection_count(), 0);
}

#[test]
fn data_both_ways_and_acks_follow_what_was_read() {
    let (mut host, mut device, hid, did) = connected();
    assert_eq!(host.send(hid, b"request"), Ok(7));
    pump(&mut host, &mut device);
    assert_eq!(events(&mut device), vec![MuxEvent::Readable(did)]);
    assert_eq!(read_all(&mut device, did), b"request");
    assert_eq!(device.send(did, b"reply!"), Ok(6));
    // The reply carries the acknowledgement of the 7 bytes read: ack 1 + 7.
    let packet = device.poll_transmit().expect("reply");
    let parsed = decode_packet(&packet, MuxVersion::V2).expect("decode");
    match parsed.body {
        MuxBody::Tcp { header, payload } => {
            assert_eq!((header.seq, header.ack, header.flags), (1, 8, TCP_ACK));
            assert_eq!(payload, b"reply!");
        }
        other => panic!("not TCP: {other:?}"),
    }
    host.handle_transfer(&packet);
    assert_eq!(read_all(&mut host, hid), b"reply!");
    // Reading owes an ACK, and exactly one goes out.
    let acks = transmit_all(&mut host);
    assert_eq!(acks.len(), 1);
    let parsed = decode_packet(&acks[0], MuxVersion::V2).expect("decode");
    let MuxBody::Tcp { header, payload } = parsed.body else {
        panic!("not TCP")
    };
    assert_eq!((header.seq, header.ack, payload.len()), (8, 7, 0));
}

#[test]
fn large_writes_split_at_49116_bytes_and_stop_at_the_peer_window() {
    let (mut host, mut device, hid, did) = connected();
    let data: Vec<u8> = (0..SEND_BUFFER).map(|i| (i % 251) as u8).collect();
    assert_eq!(host.send(hid, &data), Ok(SEND_BUFFER));
    assert_eq!(host.send(hid, b"more"), Ok(0), "send buffer is full");
    let first = host.poll_transmit().expect("data");
    assert_eq!(first.len(), USB_MTU);
    assert_eq!(
        first.len() - V2_HEADER_LEN - TCP_HEADER_LEN,
        MAX_TCP_PAYLOAD
    );
    let second = host.poll_transmit().expect("rest");
    assert_eq!(second.len(), 36 + SEND_BUFFER - MAX_TCP_PAYLOAD);
    assert!(events(&mut host).contains(&MuxEvent::Writable(hid)));
    device.handle_transfer(&first);
    device.handle_transfer(&second);
    assert_eq!(read_all(&mut device, did), data);

    // The device stops reading: the host may have at most its 131072-byte window in flight.
    pump(&mut host, &mut device);
    let mut sent = 0;
    for _ in 0..10 {
        sent += host.send(hid, &data).expect("send");
        pump(&mut host, &mut device);
    }
    let (unread, _) = device.buffered(did).expect("conn");
    assert_eq!(unread, RECEIVE_WINDOW as usize);
    assert_eq!(host.unsent(hid), SEND_BUFFER);
    assert_eq!(sent, RECEIVE_WINDOW as usize + SEND_BUFFER);
    // Reading opens the window again.
    let got = read_all(&mut device, did);
    assert_eq!(got.len(), RECEIVE_WINDOW as usize);
    pump(&mut host, &mut device);
    assert_eq!(host.unsent(hid), 0);
}

#[test]
fn a_peer_ignoring_the_window_is_reset_not_buffered_without_end() {
    let (mut host, _device, hid, _did) = connected();
    let chunk = vec![0u8; 40_000];
    let mut seq = 1u32;
    for tx in 0..7u16 {
        let header = TcpHeader {
            source_port: 62078,
            dest_port: hid.local_port,
            seq,
            ack: 1,
            flags: TCP_ACK,
            window: 512,
        };
        seq += chunk.len() as u32;
        host.handle_packet(&encode_packet(
            MuxProtocol::Tcp,
            Some(MuxSeq {
                tx_seq: 10 + tx,
                rx_seq: 0,
            }),
            &tcp_body(&header, &chunk),
        ));
    }
    let reset = events(&mut host).into_iter().find_map(|e| match e {
        MuxEvent::Reset { id, reason } => Some((id, reason)),
        _ => None,
    });
    let (id, reason) = reset.expect("reset");
    assert_eq!(id, hid);
    assert!(reason.contains("262144"), "{reason}");
    let (unread, _) = host.buffered(hid).expect("conn");
    assert!(unread <= MAX_RECEIVE_BUFFER);
    // An RST went to the device.
    let out = transmit_all(&mut host);
    let rst = decode_packet(out.last().expect("rst"), MuxVersion::V2).expect("decode");
    assert!(matches!(rst.body, MuxBody::Tcp { header, .. } if header.flags == TCP_RST));
}

#[test]
fn phone_reset_ends_reads_after_buffered_bytes() {
    let (mut host, mut device, hid, did) = connected();
    device.send(did, b"last words").expect("send");
    pump(&mut host, &mut device);
    // Unsent bytes of an abort are dropped: these never arrive.
    device.send(did, b"lost").expect("send");
    device.abort(did);
    pump(&mut host, &mut device);
    let evs = events(&mut host);
    assert!(evs.contains(&MuxEvent::Readable(hid)));
    assert!(evs
        .iter()
        .any(|e| matches!(e, MuxEvent::Reset { id, .. } if *id == hid)));
    assert_eq!(read_all(&mut host, hid), b"last words");
    let mut buf = [0u8; 32];
    assert_eq!(host.recv(hid, &mut buf), Ok(Recv::Closed));
    assert_eq!(
        host.send(hid, b"x"),
        Err(UsbMuxError::ConnectionClosed(hid))
    );
    host.close(hid);
    assert_eq!(host.connection_count(), 0);
}

#[test]
fn graceful_close_sends_the_rest_then_rst() {
    let (mut host, mut device, hid, did) = connected();
    device.send(did, b"bye").expect("send");
    device.close(did);
    pump(&mut host, &mut device);
    assert_eq!(read_all(&mut host, hid), b"bye");
    let mut buf = [0u8; 8];
    assert_eq!(host.recv(hid, &mut buf), Ok(Recv::Closed));
    assert_eq!(device.connection_count(), 0);
}

#[test]
fn packets_over_one_transfer_are_reassembled_and_short_mismatches_dropped() {
    let (mut host, mut device, hid, did) = connected();
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    device.send(did, &data).expect("send");
    let packet = device.poll_transmit().expect("data");
    assert_eq!(packet.len(), 40_036);
    // As the phone's bulk-IN delivers it into 16384-byte transfers.
    for piece in packet.chunks(USB_MRU) {
        host.handle_transfer(piece);
    }
    assert_eq!(read_all(&mut host, hid), data);
    // A short transfer announcing more than it holds is dropped; the next one is fine.
    let mut cut = packet.clone();
    cut.truncate(1000);
    host.handle_transfer(&cut);
    assert_eq!(
        events(&mut host).last(),
        Some(&MuxEvent::Dropped(UsbMuxError::LengthMismatch {
            announced: 40_036,
            received: 1000
        }))
    );
    device.send(did, b"ok").expect("send");
    let next = device.poll_transmit().expect("data");
    host.handle_transfer(&next);
    // The dropped bytes never reach the reader.
    assert_eq!(read_all(&mut host, hid), b"ok");
}

#[test]
fn garbage_is_dropped_with_a_named_error_and_the_link_goes_on() {
    let (mut host, mut device, hid, did) = connected();
    for (bytes, expected) in [
        (
            hex("00000006 00000010 DEADBEEF 0000 0000"),
            UsbMuxError::BadMagic(0xDEAD_BEEF),
        ),
        (
            hex("00000009 00000010 FEEDFACE 0000 0000"),
            UsbMuxError::UnknownProtocol(9),
        ),
        (
            hex("00000006 00000003 FEEDFACE 0000 0000"),
            UsbMuxError::BadLength(3),
        ),
        (
            hex("00000006 00000014 FEEDFACE 0000 0000 01020304"),
            UsbMuxError::Truncated {
                what: "TCP header",
                needed: 20,
                got: 4,
            },
        ),
        (
            hex("00000006 00FFFFFF FEEDFACE 0000 0000"),
            UsbMuxError::BadLength(0xFF_FFFF),
        ),
    ] {
        host.handle_transfer(&bytes);
        assert_eq!(events(&mut host), vec![MuxEvent::Dropped(expected)]);
    }
    // The connection still works.
    device.send(did, b"still here").expect("send");
    pump(&mut host, &mut device);
    assert_eq!(read_all(&mut host, hid), b"still here");
}

#[test]
fn data_for_an_unknown_connection_gets_an_anonymous_rst() {
    let (mut host, _device) = up();
    let stray = TcpHeader {
        source_port: 62078,
        dest_port: 77,
        seq: 0x1234,
        ack: 1,
        flags: TCP_ACK,
        window: 512,
    };
    host.handle_packet(&encode_packet(
        MuxProtocol::Tcp,
        Some(MuxSeq {
            tx_seq: 5,
            rx_seq: 0,
        }),
        &tcp_body(&stray, b"x"),
    ));
    // rx_seq is the stray's tx_seq (5); our tx_seq is 1 after SETUP.
    assert_eq!(
        host.poll_transmit(),
        Some(hex(
            "00000006 00000024 FEEDFACE 0001 0005 004D F27E 00000000 00001234 50 04 0000 0000 0000"
        ))
    );
}

#[test]
fn unexpected_flags_on_an_open_connection_reset_it() {
    let (mut host, _device, hid, _did) = connected();
    let syn = TcpHeader {
        source_port: 62078,
        dest_port: hid.local_port,
        seq: 1,
        ack: 1,
        flags: TCP_SYN,
        window: 512,
    };
    host.handle_packet(&encode_packet(
        MuxProtocol::Tcp,
        Some(MuxSeq {
            tx_seq: 3,
            rx_seq: 0,
        }),
        &tcp_body(&syn, &[]),
    ));
    let evs = events(&mut host);
    assert!(evs
        .iter()
        .any(|e| matches!(e, MuxEvent::Reset { id, .. } if *id == hid)));
    assert!(!host.is_open(hid));
}

#[test]
fn unknown_version_fails_the_link() {
    let mut host = Mux::host(MuxConfig::default());
    host.poll_transmit();
    host.handle_transfer(&hex("00000000 00000014 00000003 00000001 00000000"));
    assert_eq!(
        events(&mut host),
        vec![MuxEvent::Failed(UsbMuxError::UnsupportedVersion {
            major: 3,
            minor: 1
        })]
    );
    assert!(host.is_failed());
    assert_eq!(host.connect(62078), Err(UsbMuxError::LinkFailed));
    assert_eq!(host.poll_transmit(), None);
}

#[test]
fn tcp_before_bring_up_is_dropped() {
    let mut device = Mux::device(MuxConfig::default());
    device.handle_transfer(&hex(
        "00000006 0000001C 0001 F27E 00000000 00000000 50 02 0200 0000 0000",
    ));
    assert_eq!(
        events(&mut device),
        vec![MuxEvent::Dropped(UsbMuxError::NotReady { what: "TCP" })]
    );
}

#[test]
fn control_packets_become_log_events() {
    let (mut host, mut device) = up();
    device
        .send_control(7, "AppleUSBDeviceMux::handleConnectResult new session 0x1")
        .expect("control");
    pump(&mut host, &mut device);
    assert_eq!(
        events(&mut host),
        vec![MuxEvent::Control {
            kind: 7,
            text: "AppleUSBDeviceMux::handleConnectResult new session 0x1".into()
        }]
    );
    host.handle_packet(&encode_packet(
        MuxProtocol::Control,
        Some(MuxSeq {
            tx_seq: 1,
            rx_seq: 0,
        }),
        &[3, b'b', 0xFF, b'd'],
    ));
    assert_eq!(
        events(&mut host),
        vec![MuxEvent::Control {
            kind: 3,
            text: "b?d".into()
        }]
    );
}

#[test]
fn version_1_devices_use_8_byte_headers_throughout() {
    let mut host = Mux::host(MuxConfig::default());
    let mut device = Mux::device(MuxConfig {
        device_version: MuxVersion::V1,
        ..MuxConfig::default()
    });
    pump(&mut host, &mut device);
    assert!(host.is_ready() && device.is_ready());
    assert_eq!(host.version(), MuxVersion::V1);
    let hid = host.connect(62078).expect("connect");
    let syn = host.poll_transmit().expect("syn");
    assert_eq!(
        syn,
        hex("00000006 0000001C 0001 F27E 00000000 00000000 50 02 0200 0000 0000")
    );
    device.handle_transfer(&syn);
    let Some(MuxEvent::Incoming(did)) = events(&mut device).pop() else {
        panic!("no Incoming")
    };
    device.accept(did).expect("accept");
    pump(&mut host, &mut device);
    host.send(hid, b"v1").expect("send");
    pump(&mut host, &mut device);
    assert_eq!(read_all(&mut device, did), b"v1");
}

#[test]
fn source_ports_skip_those_in_use() {
    let (mut host, _device) = up();
    let a = host.connect(62078).expect("a");
    let b = host.connect(62078).expect("b");
    assert_eq!((a.local_port, b.local_port), (1, 2));
    host.abort(a);
    let c = host.connect(1000).expect("c");
    assert_eq!(c.local_port, 3);
}

#[test]
fn zero_length_packet_rule() {
    assert!(needs_zlp(512, 512));
    assert!(needs_zlp(49152, 512));
    assert!(!needs_zlp(36, 512));
    assert!(!needs_zlp(0, 512));
    assert!(needs_zlp(1024, 1024));
    assert!(!needs_zlp(512, 1024));
    assert!(!needs_zlp(512, 0));
}
