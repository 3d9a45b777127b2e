//! A pair record whose certificates are SHA-1-signed (go-ios signs all three with SHA-1;
//! docs/protocol.md §4.2) is accepted by the virtual phone, and `station activate` uses it as it
//! is: the station's TLS client presents the SHA-1 host certificate, the phone accepts it,
//! and the station neither re-pairs nor rewrites the record.

use std::time::Duration;

use station_protocol::pairing::{generate_pair_record, PairRecord};
use station_protocol::tls_engine::TlsVersion;
use station_tests::fixtures::{self, Phone};
use station_tests::inproc::{HandLockdown, InProcBench};
use station_tests::sha1_records::sha1_signed;
use x509_parser::oid_registry::OID_PKCS1_SHA1WITHRSA;
use x509_parser::prelude::{FromDer, X509Certificate};

const STEP: Duration = Duration::from_secs(20);

/// The one phone of [`world`].
const PHONE: &str = "phone";

fn world() -> String {
    fixtures::world(17, &[Phone::unactivated(PHONE)])
}

fn host_cert_is_sha1(record: &PairRecord) -> bool {
    let block = pem::parse(&record.host_certificate).expect("PEM");
    let (_, cert) = X509Certificate::from_der(block.contents()).expect("certificate");
    cert.signature_algorithm.algorithm == OID_PKCS1_SHA1WITHRSA
}

/// Pairs the phone the way go-ios does (every certificate SHA-1-signed), checks a session
/// with the station's TLS client, and saves the record through usbmuxd.
async fn pair_with_sha1_record(bench: &InProcBench, udid: &str) -> PairRecord {
    let HandLockdown {
        mut lockdown,
        buid,
        device_id,
    } = bench.lockdown_by_hand(udid, "sha1-host").await;
    let key = lockdown
        .get_value(None, Some("DevicePublicKey"))
        .await
        .expect("DevicePublicKey");
    let key = key.as_data().expect("key is data").to_vec();
    let generated = {
        let buid = buid.clone();
        tokio::task::spawn_blocking(move || generate_pair_record(&key, &buid, None, None))
            .await
            .expect("join")
            .expect("pair record")
    };
    let mut record = sha1_signed(&generated).expect("SHA-1 record");
    assert!(host_cert_is_sha1(&record));

    let escrow = lockdown
        .pair(record.pair_request_value())
        .await
        .expect("the phone accepts a SHA-1 pair record");
    record.escrow_bag = escrow;

    let tls =
        station_protocol::tls::client_config(&record.host_certificate, &record.host_private_key)
            .expect("client config");
    lockdown
        .start_session(&record.host_id, &record.system_buid, tls)
        .await
        .expect("session with the SHA-1 host certificate");
    assert_eq!(
        lockdown.negotiated_tls().map(|t| t.version),
        Some(TlsVersion::Tls1_2)
    );
    let serial = lockdown
        .get_value(None, Some("SerialNumber"))
        .await
        .expect("a value in the session");
    assert!(serial.as_string().is_some());
    lockdown.stop_session().await.expect("StopSession");
    let _ = lockdown.goodbye().await;

    bench
        .usbmux_client()
        .await
        .save_pair_record(udid, record.to_binary(), Some(device_id))
        .await
        .expect("SavePairRecord");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_activates_through_a_sha1_signed_pair_record() {
    let bench = InProcBench::start(&world()).await;
    let udid = bench.udid(PHONE).to_string();
    let record = tokio::time::timeout(STEP * 2, pair_with_sha1_record(&bench, &udid))
        .await
        .expect("pairing in time");

    let (out, json) = bench.activate_json(&udid, None, &[]).await;
    assert_eq!(json["outcome"], "activated", "{out}");
    assert_eq!(out.status.code(), Some(0), "{out}");

    // The station used the record as it was: same pairing, same SHA-1 certificate.
    let stored = bench
        .usbmux_client()
        .await
        .read_pair_record(&udid)
        .await
        .expect("ReadPairRecord")
        .expect("a stored record");
    let stored = PairRecord::from_bytes(&stored).expect("record");
    assert_eq!(stored.host_id, record.host_id);
    assert_eq!(stored.host_certificate, record.host_certificate);
    assert!(host_cert_is_sha1(&stored));
}
