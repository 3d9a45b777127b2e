//! libimobiledevice's own tools (`idevice_id`, `ideviceinfo`, `idevicepair`), unchanged,
//! against `station-sim serve --devices 3` (found through `USBMUXD_SOCKET_ADDRESS=UNIX:<socket>`).
//! If these disagree with our host, the simulator is wrong.

use std::collections::BTreeSet;

use station_tests::fixtures::PAIR_RECORD_KEYS;
use station_tests::{output_lines, parse_ideviceinfo, Bench, ReadyDevice};

#[test]
fn idevice_id_lists_exactly_the_three_udids() {
    let bench = Bench::start(3);
    assert_eq!(bench.ready.devices.len(), 3, "{}", bench.ready.raw);
    let out = bench.idevice("idevice_id", &["-l"]);
    out.assert_success();
    let listed = output_lines(&out.stdout);
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "a UDID listed twice: {out}");
    assert_eq!(
        unique,
        bench.udids(),
        "idevice_id -l disagrees with the ready file: {out}"
    );
}

#[test]
fn ideviceinfo_prints_the_full_dump_matching_the_ready_file() {
    let bench = Bench::start(3);
    let devices = bench.pairable_devices();
    assert!(
        !devices.is_empty(),
        "no pairable phone: {}",
        bench.ready.raw
    );
    // Every phone that pairs at once: at Setup Assistant and, in the default world, an activated one.
    for dev in devices {
        check_full_dump(&bench, dev);
    }
}

fn check_full_dump(bench: &Bench, dev: &ReadyDevice) {
    let out = bench.idevice("ideviceinfo", &["-u", &dev.udid]);
    out.assert_success();
    let dump = parse_ideviceinfo(&out.stdout);
    let expect = [
        ("UniqueDeviceID", dev.udid.as_str()),
        ("SerialNumber", dev.serial.as_str()),
        ("ProductType", dev.product_type.as_str()),
        ("ProductVersion", dev.product_version.as_str()),
        ("ActivationState", dev.activation_state.as_str()),
        ("DeviceClass", "iPhone"),
    ];
    for (key, value) in expect {
        assert_eq!(
            dump.get(key).map(String::as_str),
            Some(value),
            "ideviceinfo's {key} disagrees with the ready file ({}): {out}",
            dev.raw
        );
    }
    // Fields the ready file carries beyond the five above, when it carries them.
    for (field, key) in [
        ("build_version", "BuildVersion"),
        ("hardware_model", "HardwareModel"),
        ("wifi_address", "WiFiAddress"),
        ("imei", "InternationalMobileEquipmentIdentity"),
        ("device_name", "DeviceName"),
    ] {
        if let Some(expected) = dev.raw.get(field).and_then(serde_json::Value::as_str) {
            assert_eq!(
                dump.get(key).map(String::as_str),
                Some(expected),
                "ideviceinfo's {key} disagrees with the ready file's {field} ({}): {out}",
                dev.raw
            );
        }
    }
    for key in [
        "BuildVersion",
        "HardwareModel",
        "DeviceName",
        "UniqueChipID",
        "WiFiAddress",
        "CPUArchitecture",
        "ProtocolVersion",
    ] {
        assert!(
            dump.get(key).is_some_and(|v| !v.is_empty()),
            "ideviceinfo's full dump has no {key}: {out}"
        );
    }
    assert!(
        dump.len() >= 25,
        "a full dump has dozens of keys, this one {}: {out}",
        dump.len()
    );
}

#[test]
fn ideviceinfo_key_activation_state_prints_the_state() {
    let bench = Bench::start(3);
    for dev in bench.pairable_devices() {
        check_single_keys(&bench, dev);
    }
}

fn check_single_keys(bench: &Bench, dev: &ReadyDevice) {
    let out = bench.idevice("ideviceinfo", &["-u", &dev.udid, "-k", "ActivationState"]);
    out.assert_success();
    assert_eq!(
        out.stdout.trim(),
        dev.activation_state,
        "ideviceinfo -k ActivationState: {out}"
    );
    // Same through a domain-less single key the other way round: the serial number.
    let out = bench.idevice("ideviceinfo", &["-u", &dev.udid, "-k", "SerialNumber"]);
    out.assert_success();
    assert_eq!(
        out.stdout.trim(),
        dev.serial,
        "ideviceinfo -k SerialNumber: {out}"
    );
}

#[test]
fn idevicepair_pair_then_validate_succeed() {
    let bench = Bench::start(3);
    let dev = bench.pairable_device().clone();
    assert!(
        bench.pair_record(&dev.udid).is_none(),
        "a fresh bench already holds a pair record for {}",
        dev.udid
    );

    let out = bench.idevice("idevicepair", &["-u", &dev.udid, "pair"]);
    out.assert_success();
    assert!(
        out.stdout.contains("SUCCESS") && out.stdout.contains(&dev.udid),
        "idevicepair pair did not report SUCCESS for {}: {out}",
        dev.udid
    );

    // libimobiledevice stores the record through usbmuxd (SavePairRecord): the bench has it now.
    let record = bench
        .pair_record(&dev.udid)
        .expect("idevicepair pair saved no pair record through the bench's usbmuxd");
    for &key in PAIR_RECORD_KEYS {
        assert!(
            record.contains_key(key),
            "pair record without {key}: {record:?}"
        );
    }

    let out = bench.idevice("idevicepair", &["-u", &dev.udid, "validate"]);
    out.assert_success();
    assert!(
        out.stdout.contains("SUCCESS") && out.stdout.contains(&dev.udid),
        "idevicepair validate did not report SUCCESS for {}: {out}",
        dev.udid
    );
}

/// Debian's libimobiledevice (OpenSSL 3) caps TLS at 1.0 below iOS 10 and lets 1.2 through
/// from iOS 10 on (docs/protocol.md §4.6): it must pair with and read the old phones a world file
/// pins, the iOS 9 one over the TLS 1.0 only that phone speaks.
#[test]
fn idevicepair_and_ideviceinfo_work_with_ios_9_and_ios_11_phones() {
    let world_dir = tempfile::tempdir().expect("tempdir");
    let world = world_dir.path().join("old-phones.toml");
    std::fs::write(
        &world,
        "seed = 4\n\n\
         [[device]]\nproduct_type = \"iPhone8,1\"\nproduct_version = \"9.3.5\"\n\
         activation_state = \"Unactivated\"\n\n\
         [[device]]\nproduct_type = \"iPhone9,3\"\nproduct_version = \"11.4.1\"\n\
         activation_state = \"Unactivated\"\n",
    )
    .expect("write world");
    let world = world.to_string_lossy().into_owned();
    let bench = Bench::start_with(&["--world", &world]);
    for (product_version, build) in [("9.3.5", "13G36"), ("11.4.1", "15G77")] {
        let dev = bench
            .ready
            .devices
            .iter()
            .find(|d| d.product_version == product_version)
            .unwrap_or_else(|| panic!("no {product_version} phone: {}", bench.ready.raw))
            .clone();
        bench
            .idevice("idevicepair", &["-u", &dev.udid, "pair"])
            .assert_success();
        // A full dump needs the TLS session.
        let out = bench.idevice("ideviceinfo", &["-u", &dev.udid]);
        out.assert_success();
        let info = parse_ideviceinfo(&out.stdout);
        assert_eq!(
            info.get("BuildVersion").map(String::as_str),
            Some(build),
            "{out}"
        );
        assert_eq!(
            info.get("SerialNumber").map(String::as_str),
            Some(dev.serial.as_str()),
            "{out}"
        );
    }
}
