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

/// Drives pymobiledevice3's own activation (`MobileActivationService.activate`) against the
/// bench: its Albert URLs are module constants, pointed at the stand-in; its prompts are
/// answered like an operator with a bypass code (Apple ID blank, the code as password).
const PMD3_ACTIVATE: &str = r#"
import asyncio, sys, types
from pymobiledevice3.lockdown import create_using_usbmux
from pymobiledevice3.services import mobile_activation as ma

base, udid, code = sys.argv[1], sys.argv[2], sys.argv[3]
ma.ACTIVATION_DEFAULT_URL = base + "/deviceActivation"
ma.ACTIVATION_DRM_HANDSHAKE_DEFAULT_URL = base + "/drmHandshake"
ma.questionary = types.SimpleNamespace(
    text=lambda label: ("text", label), password=lambda label: ("password", label)
)
ma.ask_prompt = lambda question: code if question[0] == "password" else ""

async def main():
    lockdown = await create_using_usbmux(serial=udid)
    service = ma.MobileActivationService(lockdown)
    await service.activate()
    print("STATE", await service.state())

asyncio.run(main())
"#;

#[test]
fn pymobiledevice3_activates_a_clean_and_an_mdm_locked_phone() {
    let bench = Bench::start(3);
    let url = bench.ready.raw["activation_url"]
        .as_str()
        .expect("activation_url")
        .to_string();
    let mut activated = 0;
    for dev in bench.ready.devices.clone() {
        if dev.activation_state != "Unactivated" {
            continue;
        }
        let code = dev.raw["codes"][0].as_str().unwrap_or("").to_string();
        // The lock page's structure and Albert's header spelling are what pymobiledevice3
        // reads; the phone takes the headers exactly as pymobiledevice3 passes them on.
        let out = bench.pmd3_python(PMD3_ACTIVATE, &[&url, &dev.udid, &code]);
        out.assert_success();
        assert!(
            out.stdout.contains("STATE Activated"),
            "{} ({}): {out}",
            dev.udid,
            dev.raw["lock"]
        );
        if dev.raw["lock"] == "mdm" {
            assert!(out.stdout.contains("Activation Lock"), "{out}");
        }
        let info = bench.idevice("ideviceinfo", &["-u", &dev.udid, "-k", "ActivationState"]);
        info.assert_success();
        assert_eq!(info.stdout.trim(), "Activated");
        activated += 1;
    }
    assert_eq!(activated, 2, "a clean and an MDM-locked phone");
}
