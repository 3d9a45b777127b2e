//! Each virtual phone speaks the TLS of its iOS version (docs/protocol.md §4.6): iOS 12+ TLS 1.2
//! with ECDHE-RSA-AES256-GCM-SHA384 over P-256, iOS 10–11 TLS 1.0–1.2, iOS 9 TLS 1.0 only.

mod common;

use std::time::{Duration, Instant};

use common::*;
use plist::Value;
use station_protocol::channel::{ChannelError, PlistChannel};
use station_protocol::pairing::PairRecord;
use station_protocol::tls_engine::{TlsVersion, ECDHE_RSA_AES_256_GCM_SHA384, SECP256R1};
use station_sim::legacy_tls::{client_context, LegacyVersions, OpenSslEngine};
use station_sim::{ActivationState, DeviceSpec};
use tokio::net::UnixStream;

fn phone(product_type: &str, version: Option<&str>) -> DeviceSpec {
    DeviceSpec {
        product_type: Some(product_type.into()),
        product_version: version.map(Into::into),
        activation_state: Some(ActivationState::Unactivated),
        ..DeviceSpec::default()
    }
}

/// A bench with one phone, paired; returns the lockdown channel (plaintext) and the record.
async fn paired(spec: DeviceSpec) -> (TestBench, String, PlistChannel<UnixStream>, PairRecord) {
    let tb = start(world(5, vec![spec])).await;
    let udid = tb.udids()[0].clone();
    let buid = tb.bench.system_buid().to_string();
    let mut ch = lockdown(&tb, &udid).await;
    let record = make_record(&mut ch, &buid).await;
    let r = pair(&mut ch, &record).await;
    assert_eq!(error_of(&r), None, "{r:?}");
    (tb, udid, ch, record)
}

fn station_client(record: &PairRecord) -> std::sync::Arc<rustls::ClientConfig> {
    station_protocol::tls::client_config(&record.host_certificate, &record.host_private_key)
        .expect("client config")
}

#[tokio::test]
async fn a_modern_phone_negotiates_tls_1_2_with_ecdhe_rsa_aes256_gcm() {
    // No version pinned: generated from the catalogue (iOS 17/18).
    let (tb, _udid, mut ch, record) = paired(phone("iPhone12,1", None)).await;
    request_session(&mut ch, &record).await;
    within(ch.start_tls_client(station_client(&record)))
        .await
        .expect("handshake");
    let tls = ch.negotiated_tls().expect("TLS is up");
    assert_eq!(tls.version, TlsVersion::Tls1_2);
    assert_eq!(tls.cipher_suite, ECDHE_RSA_AES_256_GCM_SHA384);
    assert_eq!(
        tls.cipher_suite_name,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
    );
    assert_eq!(tls.key_exchange_group, Some(SECP256R1));
    // The session works.
    let r = call(&mut ch, "GetValue", vec![("Key", "ProductVersion".into())]).await;
    assert_eq!(error_of(&r), None, "{r:?}");
    tb.shutdown().await;
}

#[tokio::test]
async fn an_ios_9_phone_refuses_the_station_fast_with_an_old_tls_error() {
    let (tb, _udid, mut ch, record) = paired(phone("iPhone8,1", Some("9.3.5"))).await;
    request_session(&mut ch, &record).await;
    let started = Instant::now();
    let err = within(ch.start_tls_client(station_client(&record)))
        .await
        .expect_err("TLS 1.0 only");
    assert!(matches!(err, ChannelError::PeerTlsTooOld { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
    tb.shutdown().await;
}

#[tokio::test]
async fn an_ios_9_phone_serves_a_tls_1_0_client_sessions_and_services() {
    let (tb, udid, mut ch, record) = paired(phone("iPhone8,1", Some("9.3.5"))).await;
    let r = call(&mut ch, "GetValue", vec![("Key", "ProductVersion".into())]).await;
    assert_eq!(r.get("Value").and_then(Value::as_string), Some("9.3.5"));
    let session_id = request_session(&mut ch, &record).await;
    let ctx = client_context(
        LegacyVersions::Tls10Only,
        &record.host_certificate,
        &record.host_private_key,
    )
    .expect("OpenSSL client");
    let engine = OpenSslEngine::client(&ctx).expect("engine");
    within(ch.start_tls(Box::new(engine)))
        .await
        .expect("TLS 1.0 handshake");
    let tls = ch.negotiated_tls().expect("TLS is up");
    assert_eq!(tls.version, TlsVersion::Tls1_0);
    let r = call(&mut ch, "GetValue", vec![("Key", "BuildVersion".into())]).await;
    assert_eq!(r.get("Value").and_then(Value::as_string), Some("13G36"));

    // A service started in this session speaks the same TLS 1.0.
    let r = call(
        &mut ch,
        "StartService",
        vec![("Service", "com.apple.mobileactivationd".into())],
    )
    .await;
    assert_eq!(error_of(&r), None, "{r:?}");
    let port = r
        .get("Port")
        .and_then(Value::as_unsigned_integer)
        .and_then(|p| u16::try_from(p).ok())
        .expect("Port");
    let stream = connect(&tb.socket, tb.device_id(&udid), port)
        .await
        .expect("service port");
    let mut svc = PlistChannel::new(stream);
    let engine = OpenSslEngine::client(&ctx).expect("engine");
    within(svc.start_tls(Box::new(engine)))
        .await
        .expect("service TLS 1.0 handshake");
    assert_eq!(
        svc.negotiated_tls().map(|t| t.version),
        Some(TlsVersion::Tls1_0)
    );
    within(svc.send(&station_protocol::frame::dict([(
        "Command",
        Value::from("GetActivationStateRequest"),
    )])))
    .await
    .expect("send");
    let reply = within(svc.recv())
        .await
        .expect("service answers over TLS 1.0");
    assert!(reply
        .as_dictionary()
        .is_some_and(|d| d.contains_key("Value")));

    // StopSession returns the lockdown connection to plaintext, as with rustls: the
    // phone's close_notify is skipped and the next frame is read in the clear.
    let r = call(
        &mut ch,
        "StopSession",
        vec![("SessionID", session_id.into())],
    )
    .await;
    assert_eq!(error_of(&r), None, "{r:?}");
    within(ch.stop_tls()).await.expect("stop TLS");
    assert!(!ch.is_tls());
    let r = call(&mut ch, "QueryType", vec![]).await;
    assert_eq!(
        r.get("Type").and_then(Value::as_string),
        Some("com.apple.mobile.lockdown")
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn an_ios_11_phone_negotiates_tls_1_2_with_the_station_through_openssl() {
    let (tb, _udid, mut ch, record) = paired(phone("iPhone9,3", Some("11.4.1"))).await;
    request_session(&mut ch, &record).await;
    within(ch.start_tls_client(station_client(&record)))
        .await
        .expect("handshake");
    let tls = ch.negotiated_tls().expect("TLS is up");
    assert_eq!(tls.version, TlsVersion::Tls1_2);
    assert_eq!(tls.cipher_suite, ECDHE_RSA_AES_256_GCM_SHA384);
    let r = call(&mut ch, "GetValue", vec![("Key", "BuildVersion".into())]).await;
    assert_eq!(r.get("Value").and_then(Value::as_string), Some("15G77"));
    tb.shutdown().await;
}

#[tokio::test]
async fn an_old_phone_refuses_a_host_certificate_it_never_paired() {
    let (tb, _udid, mut ch, record) = paired(phone("iPhone9,1", Some("10.3.3"))).await;
    request_session(&mut ch, &record).await;
    // Same HostID, but a certificate from another identity.
    let stranger = station_protocol::pairing::HostIdentity::generate().expect("identity");
    let cfg = station_protocol::tls::client_config(
        stranger.host_cert_pem.as_bytes(),
        stranger.host_key_pem.as_bytes(),
    )
    .expect("client config");
    let result = within(async {
        ch.start_tls_client(cfg).await?;
        // TLS 1.2 clients may learn of the rejection only on the first read.
        ch.recv().await.map(drop)
    })
    .await;
    let err = result.expect_err("refused");
    assert!(
        !matches!(err, ChannelError::PeerTlsTooOld { .. }),
        "a refused certificate is not an old-TLS error: {err:?}"
    );
    tb.shutdown().await;
}
