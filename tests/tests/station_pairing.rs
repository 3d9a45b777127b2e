//! Pairing as it happens on a real line (issue 8 §6): a record the phone no longer accepts
//! in the TLS handshake is replaced once, and a `Pair` success without `EscrowBag` is a
//! pairing.

use std::path::PathBuf;

use serde_json::Value;
use station_protocol::pairing::{HostIdentity, PairRecord};
use station_tests::fixtures::{self, Phone};
use station_tests::inproc::InProcBench;

/// The phones of [`world`].
const STALE_RECORD: &str = "stale-record";
const NO_ESCROW_BAG: &str = "no-escrow-bag";

fn world() -> String {
    fixtures::world(
        23,
        &[
            Phone::unactivated(STALE_RECORD),
            Phone::unactivated(NO_ESCROW_BAG).with("pair_escrow_bag", "false"),
        ],
    )
}

fn record_path(bench: &InProcBench, udid: &str) -> PathBuf {
    bench
        .dir
        .path()
        .join("state")
        .join("lockdown")
        .join(format!("{udid}.plist"))
}

fn read_record(bench: &InProcBench, udid: &str) -> PairRecord {
    let bytes = std::fs::read(record_path(bench, udid)).expect("the station saved a pair record");
    PairRecord::from_bytes(&bytes).expect("pair record")
}

/// The same HostID with other certificates: what a phone sees when another host re-paired
/// under this HostID, or when the record was restored from an old backup.
fn replace_certificates(bench: &InProcBench, udid: &str) -> PairRecord {
    let mut record = read_record(bench, udid);
    let other = HostIdentity::generate().expect("identity");
    record.host_certificate = other.host_cert_pem.into_bytes();
    record.host_private_key = other.host_key_pem.into_bytes();
    record.root_certificate = other.root_cert_pem.into_bytes();
    record.root_private_key = other.root_key_pem.into_bytes();
    std::fs::write(record_path(bench, udid), record.to_xml()).expect("write record");
    record
}

fn json(out: &station_tests::Output) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_phone_rejects_in_the_tls_handshake_is_replaced_once() {
    let bench = InProcBench::start(&world()).await;
    let udid = bench.udid(STALE_RECORD).to_string();

    let out = bench.station(&["pair", "--udid", &udid], false).await;
    out.assert_success();
    let first = read_record(&bench, &udid);
    let tampered = replace_certificates(&bench, &udid);
    assert_eq!(
        tampered.host_id, first.host_id,
        "the phone still knows this HostID"
    );

    // A single-phone command that only reads says what happened and what to do.
    let out = bench
        .station(
            &[
                "--json",
                "info",
                "--udid",
                &udid,
                "--key",
                "ActivationState",
            ],
            false,
        )
        .await;
    out.assert_failure();
    assert_eq!(json(&out)["error"]["code"], "session-tls-rejected", "{out}");
    assert!(out.stdout.contains("station unpair"), "{out}");

    // The workflow pairs again (a phone at Setup Assistant needs no prompt) and goes on.
    let (out, report) = bench.activate_json(&udid, None, &[]).await;
    assert_eq!(report["outcome"], "activated", "{out}");
    let replaced = read_record(&bench, &udid);
    assert_ne!(
        replaced.host_certificate, tampered.host_certificate,
        "the rejected record was replaced"
    );
    assert_eq!(bench.ideviceinfo_state(STALE_RECORD).await, "Activated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pairing_without_escrow_bag_is_kept_and_used() {
    let bench = InProcBench::start(&world()).await;
    let udid = bench.udid(NO_ESCROW_BAG).to_string();
    let (out, report) = bench.activate_json(&udid, None, &[]).await;
    assert_eq!(report["outcome"], "activated", "{out}");
    let record = read_record(&bench, &udid);
    assert_eq!(record.escrow_bag, None, "the phone handed out no EscrowBag");
    assert_eq!(bench.ideviceinfo_state(NO_ESCROW_BAG).await, "Activated");
}
