//! The trust prompt as an operator meets it: pending, denied, passcode-locked and accepted
//! after a while each end in their own message and exit code, and nothing hangs.

use std::path::PathBuf;

use station_tests::fixtures::{self, Phone};
use station_tests::Bench;

/// The phones of [`world`]: activated, their virtual user behaving differently at "Trust
/// This Computer?".
const PENDING: &str = "pending";
const DENIED: &str = "denied";
const PASSCODE_LOCKED: &str = "passcode-locked";
const ACCEPTS_LATE: &str = "accepts-late";

fn world() -> String {
    fixtures::world(
        7,
        &[
            Phone::activated(PENDING).with("trust", "\"pending\""),
            Phone::activated(DENIED).with("trust", "\"deny\""),
            Phone::activated(PASSCODE_LOCKED).with("passcode_locked", "true"),
            Phone::activated(ACCEPTS_LATE)
                .with("trust", "\"accept\"")
                .with("trust_delay_ms", "1500"),
        ],
    )
}

/// Exit code the station uses when the operator has to act on the phone.
const NEEDS_OPERATOR: i32 = 5;

fn bench() -> (Bench, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("world dir");
    let world: PathBuf = dir.path().join("trust.toml");
    std::fs::write(&world, self::world()).expect("write world");
    let bench = Bench::start_with(&["--world", world.to_str().expect("utf-8 path")]);
    assert_eq!(bench.ready.devices.len(), 4, "{}", bench.ready.raw);
    (bench, dir)
}

fn udid(bench: &Bench, phone: &str) -> String {
    bench.device_named(phone).udid.clone()
}

#[test]
fn each_trust_failure_has_its_own_message_and_exit_code() {
    let (bench, _world) = bench();
    let cases = [
        (PENDING, "trust-pending", "tap Trust"),
        (DENIED, "trust-denied", "Don't Trust"),
        (
            PASSCODE_LOCKED,
            "passcode-locked",
            "unlock the phone with its passcode",
        ),
    ];
    for (phone, code, hint) in cases {
        let udid = udid(&bench, phone);
        let out = bench.station(&["pair", "--udid", &udid, "--wait", "0"]);
        out.assert_failure();
        assert_eq!(out.status.code(), Some(NEEDS_OPERATOR), "{out}");
        assert!(
            out.stderr.contains(&format!("error[{code}]")),
            "{code}: {out}"
        );
        assert!(out.stderr.contains(hint), "{code}: {out}");
        assert!(out.stderr.contains(&udid), "message names the phone: {out}");

        let json = bench.station(&["--json", "pair", "--udid", &udid, "--wait", "0"]);
        assert_eq!(json.json()["error"]["code"], code, "{json}");
    }
}

#[test]
fn a_trust_accepted_after_a_delay_pairs_when_the_station_waits() {
    let (bench, _world) = bench();
    let udid = udid(&bench, ACCEPTS_LATE);
    let out = bench.station(&["pair", "--udid", &udid, "--wait", "20"]);
    out.assert_success();
    assert!(
        out.stdout.contains(&format!("SUCCESS: paired with {udid}")),
        "{out}"
    );
    // Now trusted: info works through a TLS session and shows values only a session gives.
    let serial = bench.station(&["info", "--udid", &udid, "--key", "SerialNumber"]);
    serial.assert_success();
    assert_eq!(
        serial.stdout.trim(),
        bench.device_named(ACCEPTS_LATE).serial,
        "{serial}"
    );
    let again = bench.station(&["pair", "--udid", &udid]);
    again.assert_success();
    assert!(again.stdout.contains("already paired"), "{again}");
}

#[test]
fn devices_lists_untrusted_phones_without_prompting_them() {
    let (bench, _world) = bench();
    let out = bench.station(&["devices", "--json"]);
    out.assert_success();
    let rows = out.json();
    let rows = rows.as_array().expect("a list");
    assert_eq!(rows.len(), 4, "{out}");
    for row in rows {
        // Identity readable before pairing; serial needs trust, so it is absent with a hint.
        assert!(row["product_type"].is_string(), "{row}");
        assert_eq!(row["activation_state"], "Activated", "{row}");
        assert_eq!(row["paired"], false, "{row}");
        assert!(row["serial"].is_null(), "{row}");
        let note = row["note"].as_str().unwrap_or_default();
        assert!(note.contains("station pair --udid"), "{row}");
    }
    // Listing never opened a trust dialog: the delayed-accept phone is still unpaired.
    let udid = udid(&bench, ACCEPTS_LATE);
    assert!(bench.pair_record(&udid).is_none());
}

#[test]
fn unknown_udid_is_a_clear_error() {
    let (bench, _world) = bench();
    let out = bench.station(&["info", "--udid", "00008030-0000000000000000"]);
    assert_eq!(out.status.code(), Some(4), "{out}");
    assert!(
        out.stderr
            .contains("no phone with UDID 00008030-0000000000000000"),
        "{out}"
    );
}
