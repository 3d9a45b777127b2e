//! pymobiledevice3, unchanged, against `station-sim serve --devices 3` (found through
//! `USBMUXD_SOCKET_ADDRESS=<bare socket path>`, the form it understands).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;
use station_tests::{json_text, Bench, ReadyDevice};

/// UDIDs in `usbmux list` output: each entry is a device dict (`UniqueDeviceID`, or the usbmux
/// `Identifier`), or a bare UDID string.
fn listed_udids(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(map) => map
                        .get("UniqueDeviceID")
                        .or_else(|| map.get("Identifier"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pymobiledevice3_usbmux_list_lists_the_three_udids() {
    let bench = Bench::start(3);
    let out = bench.pmd3(&["usbmux", "list"]);
    out.assert_success();
    let list = out.json();
    let udids = listed_udids(&list);
    assert_eq!(udids.len(), 3, "expected three devices: {out}");
    assert_eq!(
        udids.iter().cloned().collect::<BTreeSet<_>>(),
        bench.udids(),
        "pymobiledevice3 usbmux list disagrees with the ready file: {out}"
    );
    // Without --simple it also read each phone's lockdown values (unpaired): check they agree.
    for entry in list.as_array().into_iter().flatten() {
        let Some(udid) = entry.get("UniqueDeviceID").and_then(Value::as_str) else {
            continue;
        };
        let dev = bench.device(udid);
        if let Some(pt) = entry.get("ProductType") {
            assert_eq!(
                json_text(pt),
                dev.product_type,
                "ProductType of {udid}: {out}"
            );
        }
        if let Some(pv) = entry.get("ProductVersion") {
            assert_eq!(
                json_text(pv),
                dev.product_version,
                "ProductVersion of {udid}: {out}"
            );
        }
    }
}

#[test]
fn pymobiledevice3_usbmux_list_simple() {
    let bench = Bench::start(3);
    let out = bench.pmd3(&["usbmux", "list", "--simple"]);
    out.assert_success();
    let udids = listed_udids(&out.json());
    assert_eq!(
        udids.iter().cloned().collect::<BTreeSet<_>>(),
        bench.udids(),
        "pymobiledevice3 usbmux list --simple disagrees with the ready file: {out}"
    );
}

#[test]
fn pymobiledevice3_lockdown_info_matches_the_ready_file() {
    let bench = Bench::start(3);
    let devices = bench.pairable_devices();
    assert!(
        !devices.is_empty(),
        "no pairable phone: {}",
        bench.ready.raw
    );
    for dev in devices {
        check_lockdown_info(&bench, dev);
    }
}

/// Where pymobiledevice3 would keep a pair record for `udid` in the real home.
fn real_home_records(udid: &str) -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    [".pymobiledevice3", ".local/share/pymobiledevice3"]
        .iter()
        .map(|dir| Path::new(&home).join(dir).join(format!("{udid}.plist")))
        .collect()
}

fn check_lockdown_info(bench: &Bench, dev: &ReadyDevice) {
    let before: Vec<Option<SystemTime>> = real_home_records(&dev.udid)
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect();
    let out = bench.pmd3(&["lockdown", "info", "--udid", &dev.udid]);
    out.assert_success();
    let info = out.json();
    for (key, expected) in [
        ("UniqueDeviceID", &dev.udid),
        ("ProductType", &dev.product_type),
        ("SerialNumber", &dev.serial),
        ("ProductVersion", &dev.product_version),
        ("ActivationState", &dev.activation_state),
    ] {
        assert_eq!(
            info.get(key).map(json_text).as_deref(),
            Some(expected.as_str()),
            "pymobiledevice3 lockdown info's {key} disagrees with the ready file ({}): {out}",
            dev.raw
        );
    }
    // pymobiledevice3 paired and handed the record to "its" usbmuxd: that must be the bench
    // (it honours USBMUXD_SOCKET_ADDRESS there too; its --usbmux option alone would not be).
    assert!(
        bench.pair_record(&dev.udid).is_some(),
        "pymobiledevice3 saved no pair record for {} in the bench's usbmuxd",
        dev.udid
    );
    // It keeps its own copy under HOME: the harness gave it a private one, so nothing may
    // be written into the real home (a record left there earlier by hand must stay untouched).
    for (path, before) in real_home_records(&dev.udid).into_iter().zip(before) {
        let after = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        assert_eq!(
            before,
            after,
            "pymobiledevice3 wrote a pair record into the real home: {}",
            path.display()
        );
    }
}
