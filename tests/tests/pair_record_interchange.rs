//! Pair records are interchangeable between libimobiledevice and the station: one that
//! `idevicepair pair` saved (through usbmuxd `SavePairRecord`) works for `station info`, and
//! one that `station pair` saved works for `ideviceinfo`. Neither side may quietly re-pair:
//! the record's HostID and host certificate must be the same before and after.

use serde_json::Value;
use station_tests::fixtures::PAIR_RECORD_KEYS;
use station_tests::{json_find, json_text, parse_ideviceinfo, Bench};

/// The parts of a record that change when a tool pairs again.
fn identity(record: &plist::Dictionary) -> (Option<String>, Option<Vec<u8>>) {
    (
        record
            .get("HostID")
            .and_then(plist::Value::as_string)
            .map(str::to_string),
        record
            .get("HostCertificate")
            .and_then(plist::Value::as_data)
            .map(<[u8]>::to_vec),
    )
}

/// Keys both `station info --json` and `ideviceinfo` must show, with the same values.
const COMPARED_KEYS: &[&str] = &[
    "UniqueDeviceID",
    "SerialNumber",
    "ProductType",
    "ProductVersion",
    "BuildVersion",
    "ActivationState",
    "DeviceClass",
];

#[test]
fn record_saved_by_idevicepair_works_for_station_info() {
    let bench = Bench::start(3);
    let dev = bench.pairable_device().clone();

    bench
        .idevice("idevicepair", &["-u", &dev.udid, "pair"])
        .assert_success();
    let before = bench
        .pair_record(&dev.udid)
        .expect("idevicepair pair saved no pair record through the bench's usbmuxd");

    let out = bench.station(&["info", "--udid", &dev.udid, "--json"]);
    out.assert_success();
    let info: Value = out.json();

    let after = bench
        .pair_record(&dev.udid)
        .expect("the pair record disappeared after station info");
    assert_eq!(
        identity(&before),
        identity(&after),
        "station info replaced idevicepair's pair record instead of using it"
    );
    let dump = parse_ideviceinfo(
        &bench
            .idevice("ideviceinfo", &["-u", &dev.udid])
            .assert_success()
            .stdout,
    );
    for key in COMPARED_KEYS {
        let station_value = json_find(&info, key)
            .map(json_text)
            .unwrap_or_else(|| panic!("station info --json has no {key}: {out}"));
        assert_eq!(
            Some(&station_value),
            dump.get(*key),
            "station info and ideviceinfo disagree on {key}: {out}"
        );
    }
    assert_eq!(
        json_find(&info, "UniqueDeviceID").map(json_text),
        Some(dev.udid.clone()),
        "{out}"
    );
    bench
        .idevice("idevicepair", &["-u", &dev.udid, "validate"])
        .assert_success();
}

#[test]
fn record_saved_by_station_pair_works_for_ideviceinfo() {
    let bench = Bench::start(3);
    let dev = bench.pairable_device().clone();

    bench
        .station(&["pair", "--udid", &dev.udid])
        .assert_success();
    let before = bench
        .pair_record(&dev.udid)
        .expect("station pair saved no pair record through usbmuxd (SavePairRecord)");
    for key in PAIR_RECORD_KEYS {
        assert!(
            before.contains_key(key),
            "the station's pair record has no {key}: {before:?}"
        );
    }

    let out = bench.idevice("ideviceinfo", &["-u", &dev.udid]);
    out.assert_success();
    let dump = parse_ideviceinfo(&out.stdout);
    assert_eq!(
        dump.get("UniqueDeviceID"),
        Some(&dev.udid),
        "ideviceinfo with the station's record: {out}"
    );
    assert_eq!(dump.get("SerialNumber"), Some(&dev.serial), "{out}");
    let out = bench.idevice("ideviceinfo", &["-u", &dev.udid, "-k", "ActivationState"]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), dev.activation_state, "{out}");
    let out = bench.idevice("idevicepair", &["-u", &dev.udid, "validate"]);
    out.assert_success();
    assert!(out.stdout.contains("SUCCESS"), "{out}");

    let after = bench
        .pair_record(&dev.udid)
        .expect("the pair record disappeared after ideviceinfo");
    assert_eq!(
        identity(&before),
        identity(&after),
        "ideviceinfo re-paired instead of using the station's pair record"
    );
}
