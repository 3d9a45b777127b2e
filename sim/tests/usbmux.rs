//! The bench's usbmuxd socket, driven with raw usbmux packets.

mod common;

use common::*;
use plist::Value;
use station_protocol::channel::PlistChannel;
use station_protocol::frame::dict;
use station_protocol::lockdown::LOCKDOWN_PORT;
use station_protocol::usbmux::{
    self, DeviceInfo, Event, MessageType, BINARY_DEVICE_RECORD_LEN, HEADER_LEN,
};
use station_sim::{default_world, DeviceSpec, PlugPeriod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn device_list(p: &station_protocol::usbmux::Packet) -> Vec<DeviceInfo> {
    let v = p.plist().expect("plist reply");
    v.as_dictionary()
        .and_then(|d| d.get("DeviceList"))
        .and_then(Value::as_array)
        .expect("DeviceList")
        .iter()
        .map(|e| DeviceInfo::from_attached_plist(e).expect("Attached entry"))
        .collect()
}

#[tokio::test]
async fn list_devices_reports_every_plugged_phone() {
    let tb = start(default_world(3, 7)).await;
    let p = mux_call(&tb.socket, &request("ListDevices", vec![])).await;
    let raw = p.plist().expect("plist");
    let entries = raw
        .as_dictionary()
        .and_then(|d| d.get("DeviceList"))
        .and_then(Value::as_array)
        .expect("DeviceList");
    // Each element is exactly the Attached event dict.
    for e in entries {
        let d = e.as_dictionary().expect("dict");
        assert_eq!(
            d.get("MessageType").and_then(Value::as_string),
            Some("Attached")
        );
        let props = d
            .get("Properties")
            .and_then(Value::as_dictionary)
            .expect("Properties");
        assert_eq!(
            props
                .get("ConnectionSpeed")
                .and_then(Value::as_unsigned_integer),
            Some(480_000_000)
        );
        assert_eq!(
            props.get("ConnectionType").and_then(Value::as_string),
            Some("USB")
        );
        assert_eq!(
            props.get("ProductID").and_then(Value::as_unsigned_integer),
            Some(0x12a8)
        );
        assert_eq!(
            props.get("DeviceID").and_then(Value::as_unsigned_integer),
            d.get("DeviceID").and_then(Value::as_unsigned_integer)
        );
    }
    let list = device_list(&p);
    let udids: Vec<String> = list.iter().map(|d| d.udid.clone()).collect();
    assert_eq!(udids, tb.udids());
    let ids: Vec<u32> = list.iter().map(|d| d.device_id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let ready = tb.bench.ready_info();
    for (info, dev) in list.iter().zip(&ready.devices) {
        assert_eq!(info.location_id, dev.location_id);
    }
    tb.shutdown().await;
}

#[tokio::test]
async fn a_replugged_phone_gets_a_new_address_on_the_same_bus() {
    let tb = start(default_world(3, 7)).await;
    let before = device_list(&mux_call(&tb.socket, &request("ListDevices", vec![])).await);
    let udid = before[1].udid.clone();
    let old = before[1].location_id;
    tb.bench.unplug(&udid).expect("unplug");
    tb.bench.plug(&udid).expect("plug");
    let after = device_list(&mux_call(&tb.socket, &request("ListDevices", vec![])).await);
    let replugged = after.iter().find(|d| d.udid == udid).expect("back");
    // Linux usbmuxd: LocationID = (bus << 16) | address, and a re-enumeration takes a new
    // address on the same bus, not one another phone holds.
    assert_ne!(replugged.location_id, old);
    assert_eq!(replugged.location_id >> 16, old >> 16);
    for other in after.iter().filter(|d| d.udid != udid) {
        assert_ne!(other.location_id, replugged.location_id);
    }
    let ready = tb.bench.ready_info();
    let listed = ready
        .devices
        .iter()
        .find(|d| d.udid == udid)
        .expect("ready");
    assert_eq!(listed.location_id, replugged.location_id);
    tb.shutdown().await;
}

#[tokio::test]
async fn listen_sends_current_phones_then_live_events() {
    let tb = start(default_world(2, 8)).await;
    let udids = tb.udids();
    let mut s = mux(&tb.socket).await;
    send_plist(&mut s, 5, &request("Listen", vec![])).await;
    let p = read_packet(&mut s).await;
    assert_eq!(p.header.tag, 5);
    assert_eq!(result_number(&p), Some(0));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let p = read_packet(&mut s).await;
        assert_eq!(p.header.tag, 0, "events carry tag 0");
        match Event::from_packet(&p).expect("event") {
            Event::Attached(info) => seen.push(info.udid),
            other => panic!("expected Attached, got {other:?}"),
        }
    }
    assert_eq!(seen, udids);

    tb.bench.unplug(&udids[0]).expect("unplug");
    let p = read_packet(&mut s).await;
    assert_eq!(
        Event::from_packet(&p).expect("event"),
        Event::Detached { device_id: 1 }
    );

    let id = tb.bench.plug(&udids[0]).expect("plug");
    assert_eq!(id, 3, "a replugged phone gets a new DeviceID");
    match Event::from_packet(&read_packet(&mut s).await).expect("event") {
        Event::Attached(info) => {
            assert_eq!(info.device_id, 3);
            assert_eq!(info.udid, udids[0]);
        }
        other => panic!("expected Attached, got {other:?}"),
    }

    // A listening socket accepts no more commands.
    send_plist(&mut s, 9, &request("ListDevices", vec![])).await;
    let p = read_packet(&mut s).await;
    assert_eq!(p.header.tag, 9);
    assert_eq!(result_number(&p), Some(1), "BADCOMMAND");
    let mut rest = Vec::new();
    let n = within(s.read_to_end(&mut rest)).await.expect("read");
    assert_eq!(n, 0, "and the socket is closed");
    tb.shutdown().await;
}

#[tokio::test]
async fn connect_is_refused_for_closed_ports_and_unknown_devices() {
    let tb = start(default_world(1, 9)).await;
    let udid = tb.udids()[0].clone();
    let id = tb.device_id(&udid);
    assert_eq!(
        connect(&tb.socket, id, 1234).await.err(),
        Some(3),
        "CONNREFUSED"
    );
    assert_eq!(
        connect(&tb.socket, 999, LOCKDOWN_PORT).await.err(),
        Some(2),
        "BADDEV"
    );
    tb.bench.unplug(&udid).expect("unplug");
    assert_eq!(
        connect(&tb.socket, id, LOCKDOWN_PORT).await.err(),
        Some(2),
        "unplugged → BADDEV"
    );

    // A refused Connect leaves the socket in command state.
    let mut s = mux(&tb.socket).await;
    let req = request(
        "Connect",
        vec![
            ("DeviceID", Value::Integer(77u64.into())),
            (
                "PortNumber",
                Value::Integer(u64::from(usbmux::swap_port(LOCKDOWN_PORT)).into()),
            ),
        ],
    );
    send_plist(&mut s, 1, &req).await;
    assert_eq!(result_number(&read_packet(&mut s).await), Some(2));
    send_plist(&mut s, 2, &request("ListDevices", vec![])).await;
    let p = read_packet(&mut s).await;
    assert_eq!(p.header.tag, 2);
    assert!(device_list(&p).is_empty());
    tb.shutdown().await;
}

#[tokio::test]
async fn connect_to_lockdown_becomes_a_raw_stream() {
    let tb = start(default_world(1, 10)).await;
    let udid = tb.udids()[0].clone();
    let stream = connect(&tb.socket, tb.device_id(&udid), LOCKDOWN_PORT)
        .await
        .expect("connected");
    let mut ch = PlistChannel::new(stream);
    let reply = call(&mut ch, "QueryType", vec![]).await;
    assert_eq!(
        reply.get("Type").and_then(Value::as_string),
        Some("com.apple.mobile.lockdown")
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn read_buid_is_stable_across_restarts() {
    let tb = start(default_world(1, 11)).await;
    let read = |p: station_protocol::usbmux::Packet| -> String {
        p.plist()
            .expect("plist")
            .as_dictionary()
            .and_then(|d| d.get("BUID"))
            .and_then(Value::as_string)
            .expect("BUID")
            .to_string()
    };
    let a = read(mux_call(&tb.socket, &request("ReadBUID", vec![])).await);
    let b = read(mux_call(&tb.socket, &request("ReadBUID", vec![])).await);
    assert_eq!(a, b);
    assert_eq!(a.len(), 36);
    assert_eq!(a, tb.bench.system_buid());
    let dir = tb.shutdown().await;
    let tb = start_in(dir, default_world(1, 11), |_| {}).await;
    let c = read(mux_call(&tb.socket, &request("ReadBUID", vec![])).await);
    assert_eq!(a, c, "SystemBUID persists in the state dir");
    tb.shutdown().await;
}

#[tokio::test]
async fn pair_records_are_saved_read_and_deleted() {
    let tb = start(default_world(1, 12)).await;
    let udid = tb.udids()[0].clone();
    let id = tb.device_id(&udid);
    let read_req = request(
        "ReadPairRecord",
        vec![("PairRecordID", udid.clone().into())],
    );
    assert_eq!(
        result_number(&mux_call(&tb.socket, &read_req).await),
        Some(2),
        "ENOENT"
    );

    // A listener sees Paired when the record is saved with the DeviceID.
    let mut listener = mux(&tb.socket).await;
    send_plist(&mut listener, 1, &request("Listen", vec![])).await;
    assert_eq!(result_number(&read_packet(&mut listener).await), Some(0));
    assert!(matches!(
        Event::from_packet(&read_packet(&mut listener).await),
        Ok(Event::Attached(_))
    ));

    let record = dict([
        ("HostID", Value::from("HOST-1")),
        ("SystemBUID", Value::from("BUID")),
    ]);
    let mut binary = Vec::new();
    record.to_writer_binary(&mut binary).expect("encode");
    let save = request(
        "SavePairRecord",
        vec![
            ("PairRecordID", udid.clone().into()),
            ("PairRecordData", Value::Data(binary)),
            ("DeviceID", Value::Integer(u64::from(id).into())),
        ],
    );
    assert_eq!(result_number(&mux_call(&tb.socket, &save).await), Some(0));
    assert_eq!(
        Event::from_packet(&read_packet(&mut listener).await).expect("event"),
        Event::Paired { device_id: id }
    );

    let p = mux_call(&tb.socket, &read_req).await;
    let data = p
        .plist()
        .expect("plist")
        .as_dictionary()
        .and_then(|d| d.get("PairRecordData"))
        .and_then(Value::as_data)
        .map(<[u8]>::to_vec)
        .expect("PairRecordData");
    assert!(data.starts_with(b"<?xml"), "stored as XML like usbmuxd");
    let back = Value::from_reader(std::io::Cursor::new(&data)).expect("plist");
    assert_eq!(back, record);
    let on_disk = tb.state_dir.join("lockdown").join(format!("{udid}.plist"));
    assert_eq!(std::fs::read(&on_disk).expect("file"), data);

    let bad = request(
        "SavePairRecord",
        vec![
            ("PairRecordID", udid.clone().into()),
            ("PairRecordData", Value::Data(b"garbage!!".to_vec())),
        ],
    );
    assert_eq!(
        result_number(&mux_call(&tb.socket, &bad).await),
        Some(22),
        "EINVAL"
    );

    let del = request(
        "DeletePairRecord",
        vec![("PairRecordID", udid.clone().into())],
    );
    assert_eq!(result_number(&mux_call(&tb.socket, &del).await), Some(0));
    assert_eq!(
        result_number(&mux_call(&tb.socket, &read_req).await),
        Some(2)
    );
    assert_eq!(result_number(&mux_call(&tb.socket, &del).await), Some(2));
    let no_id = request("ReadPairRecord", vec![]);
    assert_eq!(result_number(&mux_call(&tb.socket, &no_id).await), Some(22));
    tb.shutdown().await;
}

#[tokio::test]
async fn binary_protocol_listen_and_connect() {
    let tb = start(default_world(1, 13)).await;
    let udid = tb.udids()[0].clone();
    let mut s = mux(&tb.socket).await;
    within(s.write_all(&usbmux::packet_bytes(0, MessageType::Listen as u32, 4, &[])))
        .await
        .expect("write");
    let p = read_packet(&mut s).await;
    assert_eq!(
        (p.header.version, p.header.message, p.header.tag),
        (0, 1, 4)
    );
    assert_eq!(p.payload, 0u32.to_le_bytes());
    let p = read_packet(&mut s).await;
    assert_eq!(p.header.message, MessageType::DeviceAdd as u32);
    assert_eq!(p.payload.len(), BINARY_DEVICE_RECORD_LEN);
    let info = DeviceInfo::from_binary_record(&p.payload).expect("record");
    assert_eq!(info.udid, udid);
    assert_eq!(info.product_id, 0x12a8);
    tb.bench.unplug(&udid).expect("unplug");
    let p = read_packet(&mut s).await;
    assert_eq!(p.header.message, MessageType::DeviceRemove as u32);
    assert_eq!(p.payload, info.device_id.to_le_bytes());
    let new_id = tb.bench.plug(&udid).expect("plug");

    // v0 CONNECT: device id LE, port in network byte order, 2 reserved bytes.
    let mut c = mux(&tb.socket).await;
    let mut payload = new_id.to_le_bytes().to_vec();
    payload.extend_from_slice(&LOCKDOWN_PORT.to_be_bytes());
    payload.extend_from_slice(&[0, 0]);
    within(c.write_all(&usbmux::packet_bytes(
        0,
        MessageType::Connect as u32,
        6,
        &payload,
    )))
    .await
    .expect("write");
    let p = read_packet(&mut c).await;
    assert_eq!(
        (p.header.version, p.header.message, p.header.tag),
        (0, 1, 6)
    );
    assert_eq!(p.payload, 0u32.to_le_bytes());
    let mut ch = PlistChannel::new(c);
    let reply = call(&mut ch, "QueryType", vec![]).await;
    assert_eq!(
        reply.get("Type").and_then(Value::as_string),
        Some("com.apple.mobile.lockdown")
    );
    tb.shutdown().await;
}

/// The bench closed the socket without answering (EOF, or RST when our bytes were unread).
async fn assert_closed(s: &mut tokio::net::UnixStream) {
    let mut rest = Vec::new();
    match within(s.read_to_end(&mut rest)).await {
        Ok(_) => assert!(rest.is_empty(), "no reply expected, got {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[tokio::test]
async fn malformed_commands() {
    let tb = start(default_world(1, 14)).await;
    // Version 2: BADVERSION, and the socket stays usable.
    let mut s = mux(&tb.socket).await;
    within(s.write_all(&usbmux::packet_bytes(
        2,
        MessageType::Plist as u32,
        1,
        b"<plist/>",
    )))
    .await
    .expect("write");
    let p = read_packet(&mut s).await;
    assert_eq!(p.header.tag, 1);
    assert_eq!(p.payload, 6u32.to_le_bytes(), "RESULT_BADVERSION");
    send_plist(&mut s, 2, &request("ReadBUID", vec![])).await;
    assert_eq!(read_packet(&mut s).await.header.tag, 2);

    // Unknown plist message and unknown binary message type: BADCOMMAND.
    assert_eq!(
        result_number(&mux_call(&tb.socket, &request("Frobnicate", vec![])).await),
        Some(1)
    );
    let mut s = mux(&tb.socket).await;
    within(s.write_all(&usbmux::packet_bytes(0, 7, 3, &[])))
        .await
        .expect("write");
    let p = read_packet(&mut s).await;
    assert_eq!(
        (p.header.message, p.payload.clone()),
        (1, 1u32.to_le_bytes().to_vec())
    );

    // A command larger than usbmuxd's 64 KiB buffer: the connection is dropped unread.
    let mut s = mux(&tb.socket).await;
    let mut header = usbmux::Header {
        length: 0x20000,
        version: 1,
        message: 8,
        tag: 1,
    }
    .encode()
    .to_vec();
    header.extend_from_slice(&[0u8; 64]);
    within(s.write_all(&header)).await.expect("write");
    assert_closed(&mut s).await;

    // Shorter than its own header: dropped too.
    let mut s = mux(&tb.socket).await;
    let short = usbmux::Header {
        length: 8,
        version: 1,
        message: 8,
        tag: 1,
    }
    .encode();
    within(s.write_all(&short)).await.expect("write");
    assert_closed(&mut s).await;
    assert_eq!(HEADER_LEN, 16);
    tb.shutdown().await;
}

#[tokio::test]
async fn list_listeners_shows_listening_clients() {
    let tb = start(default_world(1, 15)).await;
    let mut l = mux(&tb.socket).await;
    send_plist(&mut l, 1, &request("Listen", vec![])).await;
    assert_eq!(result_number(&read_packet(&mut l).await), Some(0));
    let p = mux_call(&tb.socket, &request("ListListeners", vec![])).await;
    let v = p.plist().expect("plist");
    let list = v
        .as_dictionary()
        .and_then(|d| d.get("ListenerList"))
        .and_then(Value::as_array)
        .expect("ListenerList");
    assert_eq!(list.len(), 1);
    let entry = list[0].as_dictionary().expect("dict");
    assert_eq!(
        entry.get("ProgName").and_then(Value::as_string),
        Some("sim-tests")
    );
    assert_eq!(
        entry
            .get("kLibUSBMuxVersion")
            .and_then(Value::as_unsigned_integer),
        Some(3)
    );
    drop(l);
    tb.shutdown().await;
}

#[tokio::test]
async fn world_schedules_plug_and_unplug() {
    let spec = DeviceSpec {
        plug_at_ms: Some(300),
        unplug_at_ms: Some(900),
        ..DeviceSpec::default()
    };
    let tb = start(world(5, vec![spec])).await;
    let udid = tb.udids()[0].clone();
    assert!(!tb.bench.ready_info().devices[0].attached);
    let mut s = mux(&tb.socket).await;
    send_plist(&mut s, 1, &request("Listen", vec![])).await;
    assert_eq!(result_number(&read_packet(&mut s).await), Some(0));
    match Event::from_packet(&read_packet(&mut s).await).expect("event") {
        Event::Attached(info) => assert_eq!(info.udid, udid),
        other => panic!("expected Attached, got {other:?}"),
    }
    assert!(matches!(
        Event::from_packet(&read_packet(&mut s).await),
        Ok(Event::Detached { .. })
    ));
    tb.shutdown().await;
}

#[tokio::test]
async fn world_schedules_several_plug_periods_of_one_phone() {
    // Plugged at 300 ms, pulled out at 900, back at 1500 for good: Attached, Detached,
    // Attached again with a new DeviceID and a new address on the same bus.
    let spec = DeviceSpec {
        plug_periods: Some(vec![
            PlugPeriod {
                plug_at_ms: Some(300),
                unplug_at_ms: Some(900),
            },
            PlugPeriod {
                plug_at_ms: Some(1500),
                unplug_at_ms: None,
            },
        ]),
        ..DeviceSpec::default()
    };
    let tb = start(world(5, vec![spec])).await;
    let udid = tb.udids()[0].clone();
    let ready = tb.bench.ready_info();
    assert!(!ready.devices[0].attached);
    assert_eq!(ready.devices[0].plug_periods.len(), 2);
    assert_eq!(ready.devices[0].plug_at_ms, None);
    let mut s = mux(&tb.socket).await;
    send_plist(&mut s, 1, &request("Listen", vec![])).await;
    assert_eq!(result_number(&read_packet(&mut s).await), Some(0));
    let first = match Event::from_packet(&read_packet(&mut s).await).expect("event") {
        Event::Attached(info) => info,
        other => panic!("expected Attached, got {other:?}"),
    };
    assert_eq!(first.udid, udid);
    match Event::from_packet(&read_packet(&mut s).await).expect("event") {
        Event::Detached { device_id } => assert_eq!(device_id, first.device_id),
        other => panic!("expected Detached, got {other:?}"),
    }
    let second = match Event::from_packet(&read_packet(&mut s).await).expect("event") {
        Event::Attached(info) => info,
        other => panic!("expected Attached again, got {other:?}"),
    };
    assert_eq!(second.udid, udid);
    assert_ne!(second.device_id, first.device_id);
    assert_ne!(second.location_id, first.location_id);
    assert_eq!(second.location_id >> 16, first.location_id >> 16);
    assert!(tb.bench.ready_info().devices[0].attached);
    tb.shutdown().await;
}

#[tokio::test]
async fn unplug_closes_open_connections() {
    let tb = start(default_world(1, 16)).await;
    let udid = tb.udids()[0].clone();
    let mut ch = lockdown(&tb, &udid).await;
    call(&mut ch, "QueryType", vec![]).await;
    tb.bench.unplug(&udid).expect("unplug");
    let err = within(ch.recv()).await.expect_err("connection closes");
    assert!(
        matches!(err, station_protocol::channel::ChannelError::Closed),
        "{err:?}"
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn socket_in_use_and_removed_on_shutdown() {
    let tb = start(default_world(1, 17)).await;
    let mut cfg = config(&tb.dir, default_world(1, 17));
    cfg.state_dir = tb.dir.path().join("other-state");
    let err = within(station_sim::Bench::start(cfg))
        .await
        .expect_err("socket is taken");
    assert!(
        matches!(err, station_sim::SimError::SocketInUse { .. }),
        "{err}"
    );
    let socket = tb.socket.clone();
    let _dir = tb.shutdown().await;
    assert!(!socket.exists(), "socket removed on shutdown");
}

/// Like the real daemon exiting (Debian's `--systemd` usbmuxd on an empty bench) and being
/// started again: the socket goes, every connection closes, the phones come back under
/// DeviceIDs numbered afresh.
#[tokio::test]
async fn usbmuxd_stops_and_starts_again_like_the_daemon() {
    let mut tb = start(default_world(2, 18)).await;
    let udids = tb.udids();
    // A second plug cycle moves the DeviceID counter on, so "afresh" is visible.
    tb.bench.unplug(&udids[0]).expect("unplug");
    tb.bench.plug(&udids[0]).expect("plug");
    let mut listener = mux(&tb.socket).await;
    send_plist(&mut listener, 1, &request("Listen", vec![])).await;
    assert_eq!(result_number(&read_packet(&mut listener).await), Some(0));
    let mut ch = lockdown(&tb, &udids[1]).await;
    call(&mut ch, "QueryType", vec![]).await;

    within(tb.bench.stop_usbmuxd()).await;
    assert!(!tb.bench.usbmuxd_running());
    // usbmuxd 1.1.1 leaves its socket file behind, refusing connections.
    assert!(tb.socket.exists(), "the socket file stays");
    let refused = tokio::net::UnixStream::connect(&tb.socket)
        .await
        .expect_err("nothing accepts");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // Both open connections end: the listener (after its replayed Attached events) and
    // the device stream.
    let mut rest = Vec::new();
    within(listener.read_to_end(&mut rest))
        .await
        .expect("listener closed cleanly");
    let err = within(ch.recv()).await.expect_err("device stream closes");
    assert!(
        matches!(err, station_protocol::channel::ChannelError::Closed),
        "{err:?}"
    );

    tb.bench.start_usbmuxd().expect("start again");
    assert!(tb.bench.usbmuxd_running());
    let list = device_list(&mux_call(&tb.socket, &request("ListDevices", vec![])).await);
    let ids: Vec<u32> = list.iter().map(|d| d.device_id).collect();
    assert_eq!(ids, vec![1, 2], "a new daemon numbers from 1");
    let mut seen: Vec<String> = list.into_iter().map(|d| d.udid).collect();
    seen.sort();
    let mut want = udids.clone();
    want.sort();
    assert_eq!(seen, want, "the same phones are still plugged in");
    let mut ch = lockdown(&tb, &udids[1]).await;
    call(&mut ch, "QueryType", vec![]).await;
    tb.shutdown().await;
}

#[tokio::test]
async fn a_phone_leaves_once_the_host_let_go_of_it() {
    // `leave_when_idle_ms`: through the usbmuxd socket, a lockdown connection keeps the
    // phone on the bench; closing it starts the clock; then Detached, as with a cable pull.
    let mut world = default_world(1, 17);
    world.leave_when_idle_ms = Some(300);
    let tb = start(world).await;
    let udid = tb.udids()[0].clone();
    let device_id = tb.device_id(&udid);
    let mut ch = lockdown(&tb, &udid).await;
    call(&mut ch, "QueryType", vec![]).await;
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    call(&mut ch, "QueryType", vec![]).await;
    let use_now = tb.bench.host_use(&udid).expect("phone");
    assert!(
        use_now.attached && use_now.connections.open == 1 && use_now.connections.talked_to,
        "{use_now:?}"
    );
    drop(ch);
    let closed = std::time::Instant::now();
    let mut s = mux(&tb.socket).await;
    send_plist(&mut s, 1, &request("Listen", vec![])).await;
    assert_eq!(result_number(&read_packet(&mut s).await), Some(0));
    assert!(matches!(
        Event::from_packet(&read_packet(&mut s).await),
        Ok(Event::Attached(_))
    ));
    assert_eq!(
        Event::from_packet(&read_packet(&mut s).await).expect("event"),
        Event::Detached { device_id }
    );
    assert!(closed.elapsed() >= std::time::Duration::from_millis(300));
    tb.shutdown().await;
}
