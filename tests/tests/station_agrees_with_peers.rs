//! `station devices --json` and `station info --json` against the virtual bench agree with the
//! ready file and with what libimobiledevice's tools read from the same phones.

use std::collections::BTreeSet;

use serde_json::Value;
use station_tests::fixtures::{self, Phone};
use station_tests::{json_find, json_text, output_lines, parse_ideviceinfo, Bench};

#[test]
fn station_devices_json_agrees_with_idevice_id_and_the_ready_file() {
    let bench = Bench::start(3);
    let out = bench.station(&["devices", "--json"]);
    out.assert_success();
    let json = out.json();
    let entries: Vec<&Value> = match &json {
        Value::Array(items) => items.iter().collect(),
        other => json_find(other, "devices")
            .and_then(Value::as_array)
            .map(|items| items.iter().collect())
            .unwrap_or_else(|| panic!("station devices --json is not a list of phones: {out}")),
    };
    let listed: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e.get("udid").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    assert_eq!(
        listed.len(),
        entries.len(),
        "entries without a distinct udid: {out}"
    );
    assert_eq!(
        listed,
        bench.udids(),
        "station devices vs the ready file: {out}"
    );

    let idevice_id = bench.idevice("idevice_id", &["-l"]);
    idevice_id.assert_success();
    let peer: BTreeSet<String> = output_lines(&idevice_id.stdout).into_iter().collect();
    assert_eq!(
        listed, peer,
        "station devices vs idevice_id -l: {out}\n{idevice_id}"
    );

    for entry in entries {
        let udid = entry
            .get("udid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let dev = bench.device(udid);
        for (field, expected) in [
            ("serial", &dev.serial),
            ("product_type", &dev.product_type),
            ("product_version", &dev.product_version),
            ("activation_state", &dev.activation_state),
        ] {
            let value = entry.get(field).filter(|v| !v.is_null());
            // A phone that needs a trust prompt is not paired just to list it, so what only a
            // paired session tells (the serial number) may be missing; a phone at Setup
            // Assistant pairs silently and shows everything. What is shown must be right.
            if value.is_none() && dev.activation_state != "Unactivated" {
                continue;
            }
            assert_eq!(
                value.map(json_text).as_ref(),
                Some(expected),
                "station devices' {field} of {udid} disagrees with the ready file ({}): {out}",
                dev.raw
            );
        }
    }
}

#[test]
fn station_info_json_agrees_with_ideviceinfo() {
    let bench = Bench::start(3);
    for dev in bench.pairable_devices() {
        let out = bench.station(&["info", "--udid", &dev.udid, "--json"]);
        out.assert_success();
        let info = out.json();
        let peer = bench.idevice("ideviceinfo", &["-u", &dev.udid]);
        peer.assert_success();
        let dump = parse_ideviceinfo(&peer.stdout);
        for key in [
            "UniqueDeviceID",
            "SerialNumber",
            "ProductType",
            "ProductVersion",
            "BuildVersion",
            "ActivationState",
            "HardwareModel",
            "DeviceClass",
            "WiFiAddress",
            "UniqueChipID",
        ] {
            assert_eq!(
                info.get(key).map(json_text).as_ref(),
                dump.get(key),
                "station info and ideviceinfo disagree on {key} of {}: {out}\n{peer}",
                dev.udid
            );
        }

        // One key, one domain, like `ideviceinfo -k` / `-q`.
        let out = bench.station(&["info", "--udid", &dev.udid, "--key", "ActivationState"]);
        out.assert_success();
        assert_eq!(out.stdout.trim(), dev.activation_state, "{out}");
    }
}

#[test]
fn station_find_my_agrees_with_ideviceinfo_where_it_is_believed() {
    let bench = Bench::start(3);
    for dev in bench.pairable_devices() {
        let out = bench.station(&["info", "--udid", &dev.udid, "--summary", "--json"]);
        out.assert_success();
        let summary = out.json();
        assert_eq!(
            summary.get("udid").and_then(Value::as_str),
            Some(dev.udid.as_str()),
            "{out}"
        );
        let peer = bench.idevice(
            "ideviceinfo",
            &[
                "-u",
                &dev.udid,
                "-q",
                "com.apple.fmip",
                "-k",
                "IsAssociated",
            ],
        );
        peer.assert_success();
        let associated = peer.stdout.trim();
        let find_my = summary.get("find_my").cloned().unwrap_or(Value::Null);
        if dev.activation_state == "Unactivated" {
            // At Setup Assistant the phone answers false even when locked (docs/protocol.md §3.6):
            // the station says nothing rather than "off".
            assert_eq!(find_my, Value::Null, "{out}\n{peer}");
        } else {
            assert_eq!(
                find_my.as_bool().map(|b| b.to_string()).as_deref(),
                Some(associated),
                "station info --summary and ideviceinfo disagree on Find My of {}: {out}\n{peer}",
                dev.udid
            );
        }
        for field in [
            "passcode_set",
            "supervised",
            "organization",
            "activation_lock",
        ] {
            assert!(summary.get(field).is_some(), "missing {field}: {out}");
        }
    }
}

/// Phones of [`lock_and_management_world`].
const FIND_MY: &str = "find-my";
const SUPERVISED: &str = "supervised";
const PLAIN: &str = "plain";
const CLEAN: &str = "clean";
const ORGANIZATION: &str = "Example School District";

fn lock_and_management_world() -> String {
    fixtures::world(
        41,
        &[
            Phone::activated(FIND_MY).with("find_my", "true"),
            Phone::activated(SUPERVISED)
                .with("supervised", "true")
                .with("organization", &format!("{ORGANIZATION:?}"))
                .with("configuration_url", "\"https://mdm.example.org/enroll\""),
            Phone::activated(PLAIN),
            Phone::unactivated(CLEAN),
        ],
    )
}

#[test]
fn station_devices_agrees_with_the_peers_on_find_my_and_the_cloud_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = dir.path().join("lockstate.toml");
    std::fs::write(&world, lock_and_management_world()).expect("write world");
    let bench = Bench::start_with(&["--world", &world.to_string_lossy()]);
    let udid = |name: &str| bench.device_named(name).udid.clone();
    for name in [FIND_MY, SUPERVISED, PLAIN] {
        bench
            .idevice("idevicepair", &["-u", &udid(name), "pair"])
            .assert_success();
    }
    let out = bench.station(&["devices", "--json"]);
    out.assert_success();
    let json = out.json();
    let rows = json.as_array().expect("a list of phones");
    let row = |name: &str| {
        let udid = udid(name);
        rows.iter()
            .find(|r| r["udid"] == udid.as_str())
            .unwrap_or_else(|| panic!("{name} not listed: {out}"))
            .clone()
    };
    for name in [FIND_MY, SUPERVISED, PLAIN, CLEAN] {
        let station = row(name);
        let peer = bench.idevice(
            "ideviceinfo",
            &[
                "-u",
                &udid(name),
                "-q",
                "com.apple.fmip",
                "-k",
                "IsAssociated",
            ],
        );
        peer.assert_success();
        if name == CLEAN {
            assert_eq!(station["find_my"], Value::Null, "{station}\n{peer}");
        } else {
            assert_eq!(
                station["find_my"]
                    .as_bool()
                    .map(|b| b.to_string())
                    .as_deref(),
                Some(peer.stdout.trim()),
                "{name}: {station}\n{peer}"
            );
        }
        let cloud = bench.pmd3(&["profile", "cloud-configuration", "--udid", &udid(name)]);
        cloud.assert_success();
        let cloud = cloud.json();
        if cloud.is_null() {
            assert_eq!(station["supervised"], Value::Null, "{name}: {station}");
            assert_eq!(station["organization"], Value::Null, "{name}: {station}");
        } else {
            assert_eq!(
                station["supervised"], cloud["IsSupervised"],
                "{name}: {station}\n{cloud}"
            );
            assert_eq!(
                station["organization"], cloud["OrganizationName"],
                "{name}: {station}\n{cloud}"
            );
        }
    }
    assert_eq!(row(FIND_MY)["find_my"], true);
    assert_eq!(row(SUPERVISED)["organization"], ORGANIZATION);
    assert_eq!(row(SUPERVISED)["mdm_enrolled"], true);
}
