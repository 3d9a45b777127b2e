//! A virtual phone's lockdownd: values, pairing, trust dialog, sessions, services.

mod common;

use std::time::{Duration, Instant};

use common::*;
use plist::Value;
use station_protocol::channel::{ChannelError, PlistChannel};
use station_sim::services::{BoxFuture, LockdownService, ServiceConnection};
use station_sim::{ActivationState, DeviceSpec, Trust};
use tokio::net::UnixStream;

fn phone(state: ActivationState) -> DeviceSpec {
    DeviceSpec {
        product_type: Some("iPhone12,1".into()),
        activation_state: Some(state),
        ..DeviceSpec::default()
    }
}

fn activated(trust: Trust, delay_ms: u64, locked: bool) -> DeviceSpec {
    DeviceSpec {
        trust: Some(trust),
        trust_delay_ms: Some(delay_ms),
        passcode_locked: Some(locked),
        ..phone(ActivationState::Activated)
    }
}

/// One request lockdown must refuse, and the error it answers with.
struct Refusal {
    /// Says which row failed.
    case: &'static str,
    request: &'static str,
    args: Vec<(&'static str, Value)>,
    error: &'static str,
}

fn refusal(
    case: &'static str,
    request: &'static str,
    args: Vec<(&'static str, Value)>,
    error: &'static str,
) -> Refusal {
    Refusal {
        case,
        request,
        args,
        error,
    }
}

/// Sends each request in order on `ch` and checks that it is refused with its error.
async fn assert_refused(ch: &mut PlistChannel<UnixStream>, table: Vec<Refusal>) {
    for Refusal {
        case,
        request,
        args,
        error,
    } in table
    {
        let r = call(ch, request, args).await;
        assert_eq!(error_of(&r), Some(error), "{case}: {r:?}");
    }
}

async fn one_phone(spec: DeviceSpec) -> (TestBench, String) {
    let tb = start(world(21, vec![spec])).await;
    let udid = tb.udids()[0].clone();
    (tb, udid)
}

#[tokio::test]
async fn query_type() {
    let (tb, udid) = one_phone(phone(ActivationState::Unactivated)).await;
    let mut ch = lockdown(&tb, &udid).await;
    let r = call(&mut ch, "QueryType", vec![]).await;
    assert_eq!(
        r.get("Type").and_then(Value::as_string),
        Some("com.apple.mobile.lockdown")
    );
    assert_eq!(error_of(&r), None);
    tb.shutdown().await;
}

#[tokio::test]
async fn get_value_before_pairing_gives_the_public_subset() {
    let (tb, udid) = one_phone(phone(ActivationState::Unactivated)).await;
    let mut ch = lockdown(&tb, &udid).await;

    let r = call(&mut ch, "GetValue", vec![]).await;
    let all = r
        .get("Value")
        .and_then(Value::as_dictionary)
        .expect("Value dict");
    for key in [
        "BuildVersion",
        "DeviceClass",
        "DeviceName",
        "HardwareModel",
        "ProductName",
        "ProductType",
        "ProductVersion",
        "ProtocolVersion",
        "UniqueDeviceID",
        "UniqueChipID",
        "WiFiAddress",
        "CPUArchitecture",
        "TelephonyCapability",
    ] {
        assert!(all.contains_key(key), "{key} missing from {all:?}");
    }
    assert_eq!(
        all.get("UniqueDeviceID").and_then(Value::as_string),
        Some(udid.as_str())
    );
    assert_eq!(
        all.get("ProductName").and_then(Value::as_string),
        Some("iPhone OS")
    );
    assert_eq!(
        all.get("ProtocolVersion").and_then(Value::as_string),
        Some("2")
    );
    assert!(all
        .get("UniqueChipID")
        .and_then(Value::as_unsigned_integer)
        .is_some());
    for key in [
        "SerialNumber",
        "InternationalMobileEquipmentIdentity",
        "ActivationState",
    ] {
        assert!(!all.contains_key(key), "{key} must need a session");
    }

    let r = call(&mut ch, "GetValue", vec![("Key", "ProductVersion".into())]).await;
    assert_eq!(
        r.get("Key").and_then(Value::as_string),
        Some("ProductVersion")
    );
    assert!(r.get("Value").and_then(Value::as_string).is_some());

    let r = call(&mut ch, "GetValue", vec![("Key", "ActivationState".into())]).await;
    assert_eq!(
        r.get("Value").and_then(Value::as_string),
        Some("Unactivated")
    );

    let r = call(&mut ch, "GetValue", vec![("Key", "DevicePublicKey".into())]).await;
    let pem = r.get("Value").and_then(Value::as_data).expect("data");
    assert!(
        pem.starts_with(b"-----BEGIN RSA PUBLIC KEY-----"),
        "PKCS#1 PEM"
    );

    let r = call(&mut ch, "GetValue", vec![("Key", "SerialNumber".into())]).await;
    assert_eq!(error_of(&r), Some("GetProhibited"));
    assert!(r.get("Value").is_none());
    assert_refused(
        &mut ch,
        vec![
            refusal(
                "an unknown key",
                "GetValue",
                vec![("Key", "NoSuchKey".into())],
                "MissingValue",
            ),
            refusal(
                "a private domain",
                "GetValue",
                vec![("Domain", "com.apple.mobile.battery".into())],
                "GetProhibited",
            ),
        ],
    )
    .await;
    tb.shutdown().await;
}

#[tokio::test]
async fn session_only_requests_need_a_session() {
    let (tb, udid) = one_phone(phone(ActivationState::Unactivated)).await;
    let mut ch = lockdown(&tb, &udid).await;
    assert_refused(
        &mut ch,
        vec![
            refusal(
                "SetValue",
                "SetValue",
                vec![
                    ("Key", "ActivationStateAcknowledged".into()),
                    ("Value", Value::Boolean(true)),
                ],
                "SessionInactive",
            ),
            refusal(
                "RemoveValue",
                "RemoveValue",
                vec![("Key", "DeviceName".into())],
                "SessionInactive",
            ),
            refusal(
                "StopSession",
                "StopSession",
                vec![("SessionID", "X".into())],
                "SessionInactive",
            ),
            refusal("EnterRecovery", "EnterRecovery", vec![], "SessionInactive"),
            refusal(
                "StartService",
                "StartService",
                vec![("Service", "com.apple.afc".into())],
                "InvalidService",
            ),
        ],
    )
    .await;
    // usbmuxd's preflight writes this before pairing.
    let r = call(
        &mut ch,
        "SetValue",
        vec![
            ("Key", "UntrustedHostBUID".into()),
            ("Value", "BUID".into()),
        ],
    )
    .await;
    assert_eq!(error_of(&r), None, "{r:?}");
    tb.shutdown().await;
}

#[tokio::test]
async fn unactivated_phone_pairs_silently_and_serves_a_tls_session() {
    let (tb, udid) = one_phone(phone(ActivationState::Unactivated)).await;
    let buid = tb.bench.system_buid().to_string();
    let mut ch = lockdown(&tb, &udid).await;
    let record = make_record(&mut ch, &buid).await;

    // No session yet: StartSession with an unknown HostID fails.
    let r = call(
        &mut ch,
        "StartSession",
        vec![
            ("HostID", record.host_id.clone().into()),
            ("SystemBUID", buid.clone().into()),
        ],
    )
    .await;
    assert_eq!(error_of(&r), Some("InvalidHostID"));

    let r = pair(&mut ch, &record).await;
    assert_eq!(error_of(&r), None, "{r:?}");
    let escrow = r
        .get("EscrowBag")
        .and_then(Value::as_data)
        .expect("EscrowBag");
    assert!(escrow.len() >= 32);

    let r = call(
        &mut ch,
        "ValidatePair",
        vec![
            ("PairRecord", record.pair_request_value()),
            ("ProtocolVersion", "2".into()),
        ],
    )
    .await;
    assert_eq!(error_of(&r), None, "{r:?}");

    let session = start_session(&mut ch, &record, false).await;
    assert!(ch.is_tls());

    let r = call(&mut ch, "GetValue", vec![]).await;
    let all = r
        .get("Value")
        .and_then(Value::as_dictionary)
        .expect("all values");
    assert_eq!(
        all.get("UniqueDeviceID").and_then(Value::as_string),
        Some(udid.as_str())
    );
    assert!(all.get("SerialNumber").and_then(Value::as_string).is_some());
    assert!(all
        .get("InternationalMobileEquipmentIdentity")
        .and_then(Value::as_string)
        .is_some());
    assert_eq!(
        all.get("ActivationState").and_then(Value::as_string),
        Some("Unactivated")
    );
    assert_eq!(
        all.get("BrickState").and_then(Value::as_boolean),
        Some(true)
    );
    assert_eq!(
        all.get("PasswordProtected").and_then(Value::as_boolean),
        Some(false)
    );
    assert!(all
        .get("DevicePublicKey")
        .and_then(Value::as_data)
        .is_some());

    let r = call(&mut ch, "GetValue", vec![("Key", "SerialNumber".into())]).await;
    assert_eq!(error_of(&r), None);
    let r = call(&mut ch, "GetValue", vec![("Key", "NoSuchKey".into())]).await;
    assert_eq!(error_of(&r), Some("MissingValue"));

    let r = call(
        &mut ch,
        "GetValue",
        vec![
            ("Domain", "com.apple.mobile.battery".into()),
            ("Key", "BatteryCurrentCapacity".into()),
        ],
    )
    .await;
    assert!(
        r.get("Value")
            .and_then(Value::as_unsigned_integer)
            .is_some(),
        "{r:?}"
    );
    let r = call(
        &mut ch,
        "GetValue",
        vec![("Domain", "com.apple.fmip".into())],
    )
    .await;
    let fmip = r.get("Value").and_then(Value::as_dictionary).expect("fmip");
    assert_eq!(
        fmip.get("IsAssociated").and_then(Value::as_boolean),
        Some(false)
    );
    for domain in [
        "com.apple.disk_usage",
        "com.apple.international",
        "com.apple.PurpleBuddy",
    ] {
        let r = call(&mut ch, "GetValue", vec![("Domain", domain.into())]).await;
        assert!(
            r.get("Value").and_then(Value::as_dictionary).is_some(),
            "{domain}: {r:?}"
        );
    }
    assert_refused(
        &mut ch,
        vec![
            refusal(
                "an unknown domain",
                "GetValue",
                vec![("Domain", "com.example.none".into())],
                "MissingValue",
            ),
            refusal(
                "a wireless lockdown value never set on a fresh phone",
                "GetValue",
                vec![
                    ("Domain", "com.apple.mobile.wireless_lockdown".into()),
                    ("Key", "EnableWifiConnections".into()),
                ],
                "MissingValue",
            ),
        ],
    )
    .await;

    let r = call(
        &mut ch,
        "SetValue",
        vec![
            ("Key", "ActivationStateAcknowledged".into()),
            ("Value", Value::Boolean(true)),
        ],
    )
    .await;
    assert_eq!(error_of(&r), None);
    let r = call(
        &mut ch,
        "GetValue",
        vec![("Key", "ActivationStateAcknowledged".into())],
    )
    .await;
    assert_eq!(r.get("Value").and_then(Value::as_boolean), Some(true));
    assert_refused(
        &mut ch,
        vec![
            refusal(
                "a read-only value",
                "SetValue",
                vec![("Key", "SerialNumber".into()), ("Value", "X".into())],
                "SetProhibited",
            ),
            refusal(
                "a service the phone does not have",
                "StartService",
                vec![("Service", "com.apple.afc".into())],
                "InvalidService",
            ),
            refusal(
                "a second session",
                "StartSession",
                vec![("HostID", record.host_id.clone().into())],
                "SessionActive",
            ),
            refusal(
                "stopping another session",
                "StopSession",
                vec![("SessionID", "WRONG".into())],
                "InvalidSessionID",
            ),
        ],
    )
    .await;
    let r = call(
        &mut ch,
        "StopSession",
        vec![("SessionID", session.clone().into())],
    )
    .await;
    assert_eq!(error_of(&r), None);
    assert_eq!(r.get("Result").and_then(Value::as_string), Some("Success"));
    within(ch.stop_tls()).await.expect("stop TLS");

    // Back to plaintext on the same connection.
    let r = call(&mut ch, "QueryType", vec![]).await;
    assert_eq!(
        r.get("Type").and_then(Value::as_string),
        Some("com.apple.mobile.lockdown")
    );
    let r = call(&mut ch, "GetValue", vec![("Key", "SerialNumber".into())]).await;
    assert_eq!(error_of(&r), Some("GetProhibited"));

    // libimobiledevice's OpenSSL path presents the root certificate: also accepted.
    start_session(&mut ch, &record, true).await;
    let r = call(&mut ch, "GetValue", vec![("Key", "SerialNumber".into())]).await;
    assert_eq!(error_of(&r), None);
    tb.shutdown().await;
}

#[tokio::test]
async fn bad_pair_records_are_rejected() {
    let spec2 = phone(ActivationState::Unactivated);
    let tb = start(world(22, vec![phone(ActivationState::Unactivated), spec2])).await;
    let udids = tb.udids();
    let buid = tb.bench.system_buid().to_string();
    // A record made for the other phone's key.
    let mut other = lockdown(&tb, &udids[1]).await;
    let foreign = make_record(&mut other, &buid).await;
    let mut ch = lockdown(&tb, &udids[0]).await;
    let r = pair(&mut ch, &foreign).await;
    assert_eq!(error_of(&r), Some("InvalidPairRecord"));
    let r = call(&mut ch, "Pair", vec![("ProtocolVersion", "2".into())]).await;
    assert_eq!(error_of(&r), Some("MissingPairRecord"));
    tb.shutdown().await;
}

#[tokio::test]
async fn trust_pending_then_accepted_after_the_delay() {
    let (tb, udid) = one_phone(activated(Trust::Accept, 800, false)).await;
    let buid = tb.bench.system_buid().to_string();
    let mut ch = lockdown(&tb, &udid).await;
    let record = make_record(&mut ch, &buid).await;
    let started = Instant::now();
    let r = pair(&mut ch, &record).await;
    assert_eq!(error_of(&r), Some("PairingDialogResponsePending"));
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = pair(&mut ch, &record).await;
        match error_of(&r) {
            Some("PairingDialogResponsePending") => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "dialog never answered"
                );
            }
            None => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(800));
    start_session(&mut ch, &record, false).await;
    let r = call(&mut ch, "GetValue", vec![("Key", "ActivationState".into())]).await;
    assert_eq!(r.get("Value").and_then(Value::as_string), Some("Activated"));
    tb.shutdown().await;
}

#[tokio::test]
async fn trust_denied() {
    let (tb, udid) = one_phone(activated(Trust::Deny, 0, false)).await;
    let buid = tb.bench.system_buid().to_string();
    let mut ch = lockdown(&tb, &udid).await;
    let record = make_record(&mut ch, &buid).await;
    let r = pair(&mut ch, &record).await;
    assert_eq!(error_of(&r), Some("UserDeniedPairing"));
    let r = call(
        &mut ch,
        "StartSession",
        vec![
            ("HostID", record.host_id.clone().into()),
            ("SystemBUID", buid.into()),
        ],
    )
    .await;
    assert_eq!(error_of(&r), Some("InvalidHostID"));
    tb.shutdown().await;
}

#[tokio::test]
async fn trust_pending_forever() {
    let (tb, udid) = one_phone(activated(Trust::Pending, 0, false)).await;
    let buid = tb.bench.system_buid().to_string();
    let mut ch = lockdown(&tb, &udid).await;
    let record = make_record(&mut ch, &buid).await;
    for _ in 0..3 {
        let r = pair(&mut ch, &record).await;
        assert_eq!(error_of(&r), Some("PairingDialogResponsePending"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tb.shutdown().await;
}

#[tokio::test]
async fn passcode_locked_phone_refuses_until_unlocked() {
    let (tb, udid) = one_phone(activated(Trust::Accept, 0, true)).await;
    let buid = tb.bench.system_buid().to_string();
    let mut ch = lockdown(&tb, &udid).await;
    let record = make_record(&mut ch, &buid).await;
    let r = pair(&mut ch, &record).await;
    assert_eq!(error_of(&r), Some("PasswordProtected"));
    tb.bench.set_passcode_locked(&udid, false).expect("unlock");
    let r = pair(&mut ch, &record).await;
    assert_eq!(error_of(&r), None, "{r:?}");
    tb.shutdown().await;
}

#[tokio::test]
async fn unpair_forgets_the_host_and_validate_checks_certificates() {
    let (tb, udid) = one_phone(phone(ActivationState::Unactivated)).await;
    let buid = tb.bench.system_buid().to_string();
    let mut ch = lockdown(&tb, &udid).await;
    let record = make_record(&mut ch, &buid).await;
    let validate = |r: &station_protocol::pairing::PairRecord| {
        vec![
            ("PairRecord", r.pair_request_value()),
            ("ProtocolVersion", Value::from("2")),
        ]
    };
    let r = call(&mut ch, "ValidatePair", validate(&record)).await;
    assert_eq!(error_of(&r), Some("InvalidHostID"), "not paired yet");
    assert_eq!(error_of(&pair(&mut ch, &record).await), None);

    // Same HostID, certificates of another host: not the pairing the phone knows.
    let key = call(&mut ch, "GetValue", vec![("Key", "DevicePublicKey".into())])
        .await
        .get("Value")
        .and_then(Value::as_data)
        .expect("key")
        .to_vec();
    let buid2 = buid.clone();
    let mut other = within(tokio::task::spawn_blocking(move || {
        station_protocol::pairing::generate_pair_record(&key, &buid2, None, None)
    }))
    .await
    .expect("join")
    .expect("record");
    other.host_id = record.host_id.clone();
    let r = call(&mut ch, "ValidatePair", validate(&other)).await;
    assert_eq!(error_of(&r), Some("InvalidHostID"));

    let r = call(
        &mut ch,
        "Unpair",
        vec![
            (
                "PairRecord",
                station_protocol::frame::dict([("HostID", record.host_id.clone().into())]),
            ),
            ("ProtocolVersion", "2".into()),
        ],
    )
    .await;
    assert_eq!(error_of(&r), None, "{r:?}");
    assert_refused(
        &mut ch,
        vec![
            refusal(
                "a session for the forgotten host",
                "StartSession",
                vec![
                    ("HostID", record.host_id.clone().into()),
                    ("SystemBUID", buid.into()),
                ],
                "InvalidHostID",
            ),
            refusal(
                "unpairing twice",
                "Unpair",
                vec![("PairRecord", record.pair_request_value())],
                "InvalidHostID",
            ),
        ],
    )
    .await;
    tb.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let tb = start_with(
        world(23, vec![phone(ActivationState::Unactivated)]),
        |cfg| {
            cfg.idle_timeout = Duration::from_millis(300);
        },
    )
    .await;
    let udid = tb.udids()[0].clone();
    let mut ch = lockdown(&tb, &udid).await;
    call(&mut ch, "QueryType", vec![]).await;
    let started = Instant::now();
    let err = within(ch.recv()).await.expect_err("closed by the phone");
    assert!(matches!(err, ChannelError::Closed), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    tb.shutdown().await;
}

#[tokio::test]
async fn goodbye_closes_the_connection() {
    let (tb, udid) = one_phone(phone(ActivationState::Unactivated)).await;
    let mut ch = lockdown(&tb, &udid).await;
    call(&mut ch, "Goodbye", vec![]).await;
    let err = within(ch.recv()).await.expect_err("closed");
    assert!(matches!(err, ChannelError::Closed), "{err:?}");
    tb.shutdown().await;
}

#[tokio::test]
async fn pairings_survive_a_bench_restart() {
    let w = world(24, vec![phone(ActivationState::Unactivated)]);
    let tb = start(w.clone()).await;
    let udid = tb.udids()[0].clone();
    let buid = tb.bench.system_buid().to_string();
    let mut ch = lockdown(&tb, &udid).await;
    let record = make_record(&mut ch, &buid).await;
    assert_eq!(error_of(&pair(&mut ch, &record).await), None);
    drop(ch);
    let dir = tb.shutdown().await;

    let tb = start_in(dir, w, |_| {}).await;
    let mut ch = lockdown(&tb, &udid).await;
    start_session(&mut ch, &record, false).await;
    let r = call(&mut ch, "GetValue", vec![("Key", "SerialNumber".into())]).await;
    assert_eq!(error_of(&r), None);
    tb.shutdown().await;
}

/// Answers every plist with itself: enough to prove StartService → Connect → TLS.
struct Echo;

impl LockdownService for Echo {
    fn name(&self) -> &str {
        "com.example.echo"
    }

    fn serve(&self, mut conn: ServiceConnection) -> BoxFuture<()> {
        Box::pin(async move {
            while let Ok(v) = conn.channel.recv().await {
                if conn.channel.send(&v).await.is_err() {
                    break;
                }
            }
        })
    }
}

#[tokio::test]
async fn started_services_are_reachable_through_their_port() {
    let tb = start_with(
        world(25, vec![phone(ActivationState::Unactivated)]),
        |cfg| {
            cfg.services.register(Echo);
        },
    )
    .await;
    let udid = tb.udids()[0].clone();
    let id = tb.device_id(&udid);
    let buid = tb.bench.system_buid().to_string();
    let mut ch = lockdown(&tb, &udid).await;
    let r = call(
        &mut ch,
        "StartService",
        vec![("Service", "com.example.echo".into())],
    )
    .await;
    assert_eq!(error_of(&r), Some("SessionInactive"));
    let record = make_record(&mut ch, &buid).await;
    assert_eq!(error_of(&pair(&mut ch, &record).await), None);
    start_session(&mut ch, &record, false).await;
    let r = call(
        &mut ch,
        "StartService",
        vec![("Service", "com.example.echo".into())],
    )
    .await;
    assert_eq!(error_of(&r), None, "{r:?}");
    assert_eq!(
        r.get("EnableServiceSSL").and_then(Value::as_boolean),
        Some(true)
    );
    let port = r
        .get("Port")
        .and_then(Value::as_unsigned_integer)
        .and_then(|p| u16::try_from(p).ok())
        .expect("Port");
    assert!(port >= 49152);

    let stream = connect(&tb.socket, id, port)
        .await
        .expect("service port open");
    let mut svc = station_protocol::channel::PlistChannel::new(stream);
    let cfg =
        station_protocol::tls::client_config(&record.host_certificate, &record.host_private_key)
            .expect("tls config");
    within(svc.start_tls_client(cfg))
        .await
        .expect("service TLS");
    let msg = station_protocol::frame::dict([("Hello", Value::from("phone"))]);
    within(svc.send(&msg)).await.expect("send");
    assert_eq!(within(svc.recv()).await.expect("echo"), msg);

    // Each start serves one connection: the port is closed again.
    assert_eq!(connect(&tb.socket, id, port).await.err(), Some(3));
    tb.shutdown().await;
}

/// The station's own clients (station_protocol) against the bench: the two sides built on
/// the same codecs must agree, end to end.
#[tokio::test]
async fn protocol_clients_drive_the_bench() {
    use station_protocol::lockdown::{LockdownClient, LOCKDOWN_PORT};
    use station_protocol::usbmux::UsbmuxClient;

    let (tb, udid) = one_phone(activated(Trust::Accept, 0, false)).await;
    let mut mux = UsbmuxClient::new(mux(&tb.socket).await);
    let devices = within(mux.list_devices()).await.expect("list");
    assert_eq!(devices.len(), 1);
    let buid = within(mux.read_buid()).await.expect("buid");
    let stream = within(
        UsbmuxClient::new(mux_stream(&tb).await).connect(devices[0].device_id, LOCKDOWN_PORT),
    )
    .await
    .expect("connect");
    let mut client = LockdownClient::new(stream, "sim-tests");
    within(client.query_type()).await.expect("QueryType");
    let key = within(client.get_value(None, Some("DevicePublicKey")))
        .await
        .expect("key");
    let key = key.as_data().expect("data").to_vec();
    let identity = host_identity().await;
    let buid2 = buid.clone();
    let record = within(tokio::task::spawn_blocking(move || {
        station_protocol::pairing::generate_pair_record(&key, &buid2, None, Some(&identity))
    }))
    .await
    .expect("join")
    .expect("record");
    let escrow = within(client.pair(record.pair_request_value()))
        .await
        .expect("pair")
        .expect("the virtual phone hands out its EscrowBag");
    assert!(escrow.len() >= 32);
    let tls =
        station_protocol::tls::client_config(&record.host_certificate, &record.host_private_key)
            .expect("tls");
    let session = within(client.start_session(&record.host_id, &buid, tls))
        .await
        .expect("session");
    assert!(session.ssl);
    let serial = within(client.get_value(None, Some("SerialNumber")))
        .await
        .expect("serial");
    assert_eq!(
        serial.as_string(),
        Some(tb.bench.ready_info().devices[0].serial.as_str())
    );
    within(client.stop_session()).await.expect("stop");
    // Plaintext again: the public subset only.
    let err = within(client.get_value(None, Some("SerialNumber")))
        .await
        .expect_err("needs a session again");
    assert_eq!(err.kind().map(|k| k.as_str()), Some("GetProhibited"));
    within(client.goodbye()).await.expect("goodbye");
    assert_eq!(udid, devices[0].udid);
    tb.shutdown().await;
}

async fn mux_stream(tb: &TestBench) -> tokio::net::UnixStream {
    mux(&tb.socket).await
}
