//! Property tests for the codecs: whatever one side encodes, the other decodes to the same value.
//! Fast by design (64 cases per property) so they run in every `cargo nextest run`.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use station_protocol::bypass_code::BypassCode;
use station_protocol::frame::{decode_plist, encode_frame, encode_plist, read_frame, PlistFormat};
use station_protocol::mobileactivation::Command;
use station_protocol::usbmux::{
    packet_bytes, plist_packet_bytes, read_packet, swap_port, Address, DeviceInfo, Event, Header,
    Request,
};
use station_protocol::{lockdown, mcinstall};

/// Polls a future over an in-memory reader to completion: such a reader never waits.
fn run_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

/// Text without control characters: XML blanks those on purpose (see `decode_plist`).
fn text() -> impl Strategy<Value = String> {
    "[ -~éü€中]{0,24}"
}

/// Plist values the station exchanges: no reals or dates, whose text forms round.
fn plist_value() -> impl Strategy<Value = plist::Value> {
    let leaf = prop_oneof![
        text().prop_map(plist::Value::String),
        any::<i64>().prop_map(|n| plist::Value::Integer(n.into())),
        any::<bool>().prop_map(plist::Value::Boolean),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(plist::Value::Data),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(plist::Value::Array),
            proptest::collection::btree_map(text(), inner, 0..6).prop_map(|entries| {
                plist::Value::Dictionary(entries.into_iter().collect::<plist::Dictionary>())
            }),
        ]
    })
}

fn format() -> impl Strategy<Value = PlistFormat> {
    prop_oneof![Just(PlistFormat::Xml), Just(PlistFormat::Binary)]
}

fn udid() -> impl Strategy<Value = String> {
    "[0-9A-F]{8}-[0-9A-F]{16}|[0-9a-f]{40}"
}

fn device_info() -> impl Strategy<Value = DeviceInfo> {
    (
        any::<u32>(),
        udid(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        "USB|Network",
    )
        .prop_map(
            |(device_id, udid, product_id, location_id, connection_speed, connection_type)| {
                DeviceInfo {
                    device_id,
                    udid,
                    product_id,
                    location_id,
                    connection_speed,
                    connection_type,
                }
            },
        )
}

fn usbmux_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::ListDevices),
        Just(Request::Listen),
        (any::<u32>(), any::<u16>())
            .prop_map(|(device_id, port)| Request::Connect { device_id, port }),
        Just(Request::ReadBuid),
        udid().prop_map(|udid| Request::ReadPairRecord { udid }),
        (
            udid(),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(udid, data, device_id)| Request::SavePairRecord {
                udid,
                data,
                device_id
            }),
        udid().prop_map(|udid| Request::DeletePairRecord { udid }),
        Just(Request::ListListeners),
        "[A-Z][A-Za-z]{0,12}"
            .prop_filter("a known request name", |name| {
                !matches!(
                    name.as_str(),
                    "ListDevices"
                        | "Listen"
                        | "Connect"
                        | "ReadBUID"
                        | "ReadPairRecord"
                        | "SavePairRecord"
                        | "DeletePairRecord"
                        | "ListListeners"
                )
            })
            .prop_map(Request::Unknown),
    ]
}

/// Header names in their canonical spelling, which is what the phone receives.
fn header_name() -> impl Strategy<Value = String> {
    "[A-Z][a-z]{0,8}(-[A-Z][a-z]{0,8}){0,2}"
}

fn mobileactivation_command() -> impl Strategy<Value = Command> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        Just(Command::GetActivationState),
        Just(Command::CreateTunnel1SessionInfo),
        bytes().prop_map(|handshake_response| Command::CreateTunnel1ActivationInfo {
            handshake_response
        }),
        (
            bytes(),
            proptest::collection::btree_map(header_name(), text(), 0..5)
        )
            .prop_map(|(body, headers)| Command::HandleActivationInfoWithSession {
                body,
                headers: headers.into_iter().collect(),
            }),
        Just(Command::CreateActivationInfo),
        plist_value().prop_map(|record| Command::HandleActivationInfo { record }),
        Just(Command::Deactivate),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn plist_encode_decode_is_identity(value in plist_value(), format in format()) {
        let bytes = encode_plist(&value, format).expect("encodes");
        prop_assert_eq!(decode_plist(&bytes).expect("decodes"), value);
    }

    #[test]
    fn plist_channel_frames_round_trip(
        values in proptest::collection::vec(plist_value(), 1..4),
        format in format(),
    ) {
        let mut wire = Vec::new();
        for value in &values {
            wire.extend(encode_frame(value, format).expect("encodes"));
        }
        let mut reader = wire.as_slice();
        for value in &values {
            prop_assert_eq!(&run_now(read_frame(&mut reader)).expect("frame"), value);
        }
        prop_assert!(reader.is_empty());
    }

    #[test]
    fn usbmux_header_round_trips(length: u32, version: u32, message: u32, tag: u32) {
        let header = Header { length, version, message, tag };
        prop_assert_eq!(Header::decode(&header.encode()), header);
    }

    #[test]
    fn usbmux_packets_round_trip(
        version: u32,
        message: u32,
        tag: u32,
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let wire = packet_bytes(version, message, tag, &payload);
        let packet = run_now(read_packet(&mut wire.as_slice())).expect("packet");
        prop_assert_eq!(packet.header.version, version);
        prop_assert_eq!(packet.header.message, message);
        prop_assert_eq!(packet.header.tag, tag);
        prop_assert_eq!(packet.header.length as usize, wire.len());
        prop_assert_eq!(packet.payload, payload);
    }

    #[test]
    fn usbmux_requests_round_trip_through_plist_packets(request in usbmux_request(), tag: u32) {
        let wire = plist_packet_bytes(tag, &request.to_plist());
        let packet = run_now(read_packet(&mut wire.as_slice())).expect("packet");
        prop_assert_eq!(packet.header.tag, tag);
        let decoded = Request::from_plist(&packet.plist().expect("plist")).expect("request");
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn usbmux_events_round_trip_as_plist(info in device_info(), device_id: u32, tag: u32) {
        for event in [
            Event::Attached(info.clone()),
            Event::Detached { device_id },
            Event::Paired { device_id },
        ] {
            let wire = plist_packet_bytes(tag, &event.to_plist());
            let packet = run_now(read_packet(&mut wire.as_slice())).expect("packet");
            prop_assert_eq!(Event::from_packet(&packet).expect("event"), event);
        }
    }

    #[test]
    fn usbmux_binary_device_records_round_trip(info in device_info()) {
        // v0 records carry a 16-bit product id and no speed or connection type.
        let expected = DeviceInfo {
            product_id: info.product_id & 0xffff,
            connection_speed: 0,
            connection_type: "USB".into(),
            ..info.clone()
        };
        let decoded = DeviceInfo::from_binary_record(&info.to_binary_record()).expect("record");
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn usbmux_port_swap_is_an_involution(port: u16) {
        prop_assert_eq!(swap_port(swap_port(port)), port);
    }

    #[test]
    fn usbmux_addresses_round_trip_through_display(
        address in prop_oneof![
            "/[a-z0-9_./-]{1,30}".prop_map(|p| Address::Unix(p.into())),
            ("[a-z][a-z0-9.-]{0,20}", 1u16..).prop_map(|(host, port)| Address::Tcp { host, port }),
            ("[0-9a-f]{1,4}(:[0-9a-f]{1,4}){2,7}", 1u16..)
                .prop_map(|(host, port)| Address::Tcp { host, port }),
        ]
    ) {
        prop_assert_eq!(Address::parse(&address.to_string()).expect("parses"), address);
    }

    #[test]
    fn bypass_codes_round_trip_through_text(raw: [u8; 16]) {
        let code = BypassCode::from_raw(&raw);
        let revealed = BypassCode::parse(&code.reveal()).expect("dashed form parses");
        prop_assert_eq!(&revealed, &code);
        prop_assert_eq!(*revealed.to_raw(), raw);
        let compact = BypassCode::parse(&code.reveal_compact()).expect("compact form parses");
        prop_assert_eq!(&compact, &code);
        let lower = BypassCode::parse(&code.reveal().to_lowercase()).expect("lower case parses");
        prop_assert_eq!(&lower, &code);
    }

    #[test]
    fn mobileactivation_commands_round_trip(
        command in mobileactivation_command(),
        format in format(),
    ) {
        let bytes = encode_plist(&command.to_plist(), format).expect("encodes");
        let decoded = Command::from_plist(&decode_plist(&bytes).expect("decodes")).expect("command");
        prop_assert!(decoded == command, "{:?} decoded as {:?}", command, decoded);
    }

    #[test]
    fn lockdown_error_kinds_round_trip(name in "[A-Za-z]{1,24}") {
        let kind = lockdown::LockdownErrorKind::parse(&name);
        prop_assert_eq!(kind.as_str(), name.as_str());
    }
}

#[test]
fn mcinstall_request_names_round_trip() {
    for request in [
        mcinstall::Request::HelloHostIdentifier,
        mcinstall::Request::Flush,
        mcinstall::Request::GetCloudConfiguration,
    ] {
        assert_eq!(mcinstall::Request::parse(request.name()), Some(request));
    }
}
