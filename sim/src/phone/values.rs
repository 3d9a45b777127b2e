//! The values a phone's lockdownd reports through `GetValue`, by domain.
//!
//! Keys, types and shapes follow real devices (ideviceinfo dumps, go-ios `AllValuesType`):
//! integers for ids, data for binary blobs, strings elsewhere. Without a session a phone
//! only hands out a public subset ([`PUBLIC_KEYS`]); the rest needs a paired session.

use std::time::{SystemTime, UNIX_EPOCH};

use plist::{Dictionary, Value};

use super::Phone;
use crate::world::ActivationState;

/// Keys of the global domain in the whole-domain answer without a session.
pub const PUBLIC_KEYS: &[&str] = &[
    "BasebandVersion",
    "BoardId",
    "BuildVersion",
    "CPUArchitecture",
    "ChipID",
    "DeviceClass",
    "DeviceColor",
    "DeviceName",
    "HardwareModel",
    "HasSiDP",
    "PartitionType",
    "ProductName",
    "ProductType",
    "ProductVersion",
    "ProductionSOC",
    "ProtocolVersion",
    "SupportedDeviceFamilies",
    "TelephonyCapability",
    "UniqueChipID",
    "UniqueDeviceID",
    "WiFiAddress",
];

/// Keys readable one at a time without a session on top of [`PUBLIC_KEYS`]: hosts need
/// the key to pair and the activation state to decide what to do.
pub const PUBLIC_SINGLE_KEYS: &[&str] = &["ActivationState", "DevicePublicKey"];

/// Global-domain keys a host may write (`UntrustedHostBUID` even without a session, as
/// usbmuxd's preflight does).
pub const WRITABLE_GLOBAL_KEYS: &[&str] = &[
    "ActivationStateAcknowledged",
    "DeviceName",
    "TimeZone",
    "Uses24HourClock",
    "UntrustedHostBUID",
    "iTunesHasConnected",
];

/// Domains whose keys a host may write and remove.
pub const WRITABLE_DOMAINS: &[&str] = &[
    "com.apple.mobile.wireless_lockdown",
    "com.apple.international",
    "com.apple.mobile.iTunes",
    "com.apple.mobile.backup",
];

fn uint(n: u64) -> Value {
    Value::Integer(n.into())
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

/// Stable pseudo-random bytes derived from the phone's identity, for blobs such as
/// `BasebandSerialNumber` (same phone, same bytes, every run).
pub(crate) fn blob(phone: &Phone, label: &str, len: usize) -> Vec<u8> {
    let mut state = phone.profile().unique_chip_id ^ 0xA076_1D64_78BD_642F;
    for b in label.bytes() {
        state = state.rotate_left(5) ^ u64::from(b);
        state = state.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The whole global domain as seen in a session. `public_key_pem` is the phone's
/// `DevicePublicKey`.
pub fn global_domain(phone: &Phone, public_key_pem: Option<&str>) -> Dictionary {
    let p = phone.profile();
    let activation = phone.activation_state();
    let activated = activation != ActivationState::Unactivated;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let mut d = Dictionary::new();
    d.insert("ActivationState".into(), string(activation.as_str()));
    d.insert(
        "ActivationStateAcknowledged".into(),
        Value::Boolean(phone.activation_acknowledged()),
    );
    d.insert("BasebandActivationTicketVersion".into(), string("V2"));
    d.insert("BasebandCertId".into(), uint(2_315_222_105));
    d.insert("BasebandChipID".into(), uint(0x1F_80E1));
    d.insert(
        "BasebandRegionSKU".into(),
        Value::Data(blob(phone, "sku", 4)),
    );
    d.insert(
        "BasebandSerialNumber".into(),
        Value::Data(blob(phone, "bbsn", 12)),
    );
    d.insert("BasebandStatus".into(), string("BBInfoAvailable"));
    d.insert("BasebandVersion".into(), string("5.00.00"));
    d.insert("BluetoothAddress".into(), string(&p.bluetooth_address));
    d.insert("BoardId".into(), uint(u64::from(p.board_id)));
    // The baseband stays "bricked" until activation (every unactivated dump shows true).
    d.insert("BrickState".into(), Value::Boolean(!activated));
    d.insert("BuildVersion".into(), string(&p.build_version));
    d.insert("CPUArchitecture".into(), string(&p.cpu_architecture));
    d.insert("CarrierBundleInfoArray".into(), Value::Array(Vec::new()));
    d.insert("CertID".into(), uint(3_840_149_528));
    d.insert("ChipID".into(), uint(u64::from(p.chip_id)));
    d.insert(
        "ChipSerialNo".into(),
        Value::Data(blob(phone, "chipsn", 12)),
    );
    d.insert("DeviceClass".into(), string(&p.device_class));
    d.insert("DeviceColor".into(), string("1"));
    d.insert("DeviceName".into(), string(&p.device_name));
    if let Some(pem) = public_key_pem {
        d.insert(
            "DevicePublicKey".into(),
            Value::Data(pem.as_bytes().to_vec()),
        );
    }
    d.insert("DieID".into(), uint(p.die_id));
    d.insert("EthernetAddress".into(), string(&p.ethernet_address));
    d.insert("FirmwareVersion".into(), string("iBoot-11881.140.96"));
    d.insert("FusingStatus".into(), uint(3));
    d.insert("HardwareModel".into(), string(&p.hardware_model));
    d.insert("HardwarePlatform".into(), string(&p.hardware_platform));
    d.insert("HasSiDP".into(), Value::Boolean(true));
    d.insert("HostAttached".into(), Value::Boolean(true));
    if let Some(imei) = &p.imei {
        d.insert("InternationalMobileEquipmentIdentity".into(), string(imei));
    }
    if let Some(imei2) = &p.imei2 {
        d.insert(
            "InternationalMobileEquipmentIdentity2".into(),
            string(imei2),
        );
    }
    d.insert("MLBSerialNumber".into(), string(&p.mlb_serial));
    if let Some(meid) = &p.meid {
        d.insert("MobileEquipmentIdentifier".into(), string(meid));
    }
    d.insert("ModelNumber".into(), string(&p.model_number));
    d.insert("PartitionType".into(), string("GUID_partition_scheme"));
    d.insert(
        "PasswordProtected".into(),
        Value::Boolean(phone.passcode_locked()),
    );
    d.insert("PkHash".into(), Value::Data(blob(phone, "pkhash", 32)));
    d.insert("ProductName".into(), string("iPhone OS"));
    d.insert("ProductType".into(), string(&p.product_type));
    d.insert("ProductVersion".into(), string(&p.product_version));
    d.insert("ProductionSOC".into(), Value::Boolean(true));
    d.insert("ProtocolVersion".into(), string("2"));
    d.insert("RegionInfo".into(), string(&p.region_info));
    d.insert(
        "RegulatoryModelNumber".into(),
        string(&p.regulatory_model_number),
    );
    d.insert(
        "SIMStatus".into(),
        string("kCTSIMSupportSIMStatusNotInserted"),
    );
    d.insert(
        "SIMTrayStatus".into(),
        string("kCTSIMSupportSIMTrayInsertedNoSIM"),
    );
    d.insert("SerialNumber".into(), string(&p.serial));
    d.insert("SoftwareBehavior".into(), Value::Data(vec![0; 16]));
    d.insert(
        "SupportedDeviceFamilies".into(),
        Value::Array(vec![uint(1)]),
    );
    d.insert("TelephonyCapability".into(), Value::Boolean(p.telephony()));
    d.insert("TimeIntervalSince1970".into(), Value::Real(now));
    d.insert("TimeZone".into(), string("US/Pacific"));
    d.insert("TimeZoneOffsetFromUTC".into(), Value::Real(-28800.0));
    d.insert("TrustedHostAttached".into(), Value::Boolean(true));
    d.insert("UniqueChipID".into(), uint(p.unique_chip_id));
    d.insert("UniqueDeviceID".into(), string(&p.udid));
    d.insert("UseRaptorCerts".into(), Value::Boolean(true));
    d.insert("Uses24HourClock".into(), Value::Boolean(false));
    d.insert("WiFiAddress".into(), string(&p.wifi_address));
    d.insert(
        "kCTPostponementInfoServiceProvisioningState".into(),
        Value::Boolean(false),
    );
    d.insert("kCTPostponementStatus".into(), string("Ready"));
    apply_overrides(phone, "", &mut d);
    d
}

/// The subset handed out without a session.
pub fn public_global_domain(phone: &Phone) -> Dictionary {
    let full = global_domain(phone, None);
    PUBLIC_KEYS
        .iter()
        .filter_map(|k| full.get(k).map(|v| ((*k).to_string(), v.clone())))
        .collect()
}

/// A non-global domain as seen in a session; `None` if the phone has no such domain.
/// `nand_info_bytes` of a fixed pattern that does not compress to nothing.
fn nand_info(len: u32) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect()
}

pub fn domain(phone: &Phone, name: &str) -> Option<Dictionary> {
    let p = phone.profile();
    let activated = phone.activation_state() != ActivationState::Unactivated;
    // Activating an erased phone does not finish Setup Assistant: only a phone that was in
    // use in the world file reports setup as done.
    let set_up = activated && p.activation_state != ActivationState::Unactivated;
    let mut d = Dictionary::new();
    match name {
        "com.apple.mobile.battery" => {
            d.insert(
                "BatteryCurrentCapacity".into(),
                uint(u64::from(p.battery_percent)),
            );
            d.insert(
                "BatteryIsCharging".into(),
                Value::Boolean(p.battery_percent < 100),
            );
            d.insert("ExternalChargeCapable".into(), Value::Boolean(true));
            d.insert("ExternalConnected".into(), Value::Boolean(true));
            d.insert(
                "FullyCharged".into(),
                Value::Boolean(p.battery_percent >= 100),
            );
            d.insert("GasGaugeCapability".into(), Value::Boolean(true));
            d.insert("HasBattery".into(), Value::Boolean(true));
        }
        "com.apple.disk_usage" | "com.apple.disk_usage.factory" => {
            let total = u64::from(p.storage_gb) * 1_000_000_000;
            let system = 12_000_000_000u64.min(total / 4);
            let data = total - system;
            let used = if activated { data / 3 } else { data / 40 };
            d.insert("TotalDiskCapacity".into(), uint(total));
            d.insert("TotalSystemCapacity".into(), uint(system));
            d.insert("TotalSystemAvailable".into(), uint(system / 10));
            d.insert("TotalDataCapacity".into(), uint(data));
            d.insert("TotalDataAvailable".into(), uint(data - used));
            d.insert("AmountDataAvailable".into(), uint(data - used));
            d.insert("AmountDataReserved".into(), uint(200_000_000));
            d.insert("NANDInfo".into(), Value::Data(nand_info(p.nand_info_bytes)));
            // Literally what phones report here.
            d.insert("CalculateDiskUsage".into(), string("OkilyDokily"));
        }
        // Nothing is set until a host enables Wi-Fi sync (pymobiledevice3 reads a missing
        // EnableWifiConnections as "off").
        "com.apple.mobile.wireless_lockdown" => {}
        "com.apple.PurpleBuddy" | "com.apple.purplebuddy" => {
            d.insert("SetupDone".into(), Value::Boolean(set_up));
            d.insert("SetupFinishedAllSteps".into(), Value::Boolean(set_up));
            d.insert("ForceNoBuddy".into(), Value::Boolean(false));
        }
        // On an erased phone Find My reports not associated even when Activation Lock is on
        // (reference §3.6): only the activation server knows. A running phone signed in to
        // Find My says so.
        "com.apple.fmip" => {
            d.insert(
                "IsAssociated".into(),
                Value::Boolean(activated && p.find_my),
            );
        }
        "com.apple.international" => {
            d.insert("Locale".into(), string("en_US"));
            d.insert("Language".into(), string("en"));
            d.insert("Keyboard".into(), string("en_US"));
            d.insert(
                "SupportedLanguages".into(),
                Value::Array(
                    ["en", "fr", "de", "es", "it", "ja", "zh-Hans"]
                        .map(string)
                        .to_vec(),
                ),
            );
            d.insert(
                "SupportedLocales".into(),
                Value::Array(["en_US", "en_GB", "fr_FR", "de_DE"].map(string).to_vec()),
            );
        }
        "com.apple.mobile.iTunes" => {
            d.insert("MinITunesVersion".into(), string("12.10.10"));
            d.insert("MinMacOSVersion".into(), string("10.5.8"));
            d.insert("iTunesSetupComplete".into(), Value::Boolean(set_up));
        }
        "com.apple.mobile.backup" => {
            d.insert("WillEncrypt".into(), Value::Boolean(false));
        }
        "com.apple.mobile.lockdownd" => {
            d.insert("LogToDisk".into(), Value::Boolean(false));
        }
        _ => return None,
    }
    apply_overrides(phone, name, &mut d);
    Some(d)
}

fn apply_overrides(phone: &Phone, domain: &str, d: &mut Dictionary) {
    for (key, value) in phone.overrides_in(domain) {
        match value {
            Some(v) => {
                d.insert(key, v);
            }
            None => {
                d.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;
    use crate::world::default_world;

    /// Domains this phone knows (`GetValue` with an unknown one answers `MissingValue`).
    const DOMAINS: &[&str] = &[
        "com.apple.disk_usage",
        "com.apple.disk_usage.factory",
        "com.apple.mobile.battery",
        "com.apple.mobile.wireless_lockdown",
        "com.apple.PurpleBuddy",
        "com.apple.purplebuddy",
        "com.apple.fmip",
        "com.apple.international",
        "com.apple.mobile.iTunes",
        "com.apple.mobile.backup",
        "com.apple.mobile.lockdownd",
    ];

    fn phone() -> (Phone, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(dir.path());
        sd.create().expect("create");
        let profile = default_world(1, 11).resolve().expect("world").remove(0);
        (Phone::new(profile, &sd, false).expect("phone"), dir)
    }

    #[test]
    fn public_subset_hides_identity_secrets() {
        let (p, _d) = phone();
        let public = public_global_domain(&p);
        for key in [
            "UniqueDeviceID",
            "ProductType",
            "ProductVersion",
            "BuildVersion",
            "WiFiAddress",
        ] {
            assert!(public.contains_key(key), "{key}");
        }
        assert_eq!(
            public.get("ProductName").and_then(|v| v.as_string()),
            Some("iPhone OS")
        );
        for key in [
            "SerialNumber",
            "InternationalMobileEquipmentIdentity",
            "DevicePublicKey",
            "ActivationState",
        ] {
            assert!(!public.contains_key(key), "{key}");
        }
        let full = global_domain(&p, Some("PEM"));
        for key in PUBLIC_KEYS {
            assert!(
                full.contains_key(key),
                "public key {key} missing from the full domain"
            );
        }
        assert!(full.contains_key("SerialNumber"));
        assert_eq!(
            full.get("BrickState").and_then(|v| v.as_boolean()),
            Some(true)
        );
    }

    #[test]
    fn overrides_apply() {
        let (p, _d) = phone();
        p.set_override(
            "",
            "ActivationStateAcknowledged",
            Some(Value::Boolean(true)),
        );
        p.set_override(
            "com.apple.mobile.wireless_lockdown",
            "EnableWifiConnections",
            Some(Value::Boolean(true)),
        );
        let full = global_domain(&p, None);
        assert_eq!(
            full.get("ActivationStateAcknowledged")
                .and_then(|v| v.as_boolean()),
            Some(true)
        );
        let wl = domain(&p, "com.apple.mobile.wireless_lockdown").expect("domain");
        assert_eq!(
            wl.get("EnableWifiConnections").and_then(|v| v.as_boolean()),
            Some(true)
        );
        p.set_override("com.apple.fmip", "IsAssociated", None);
        assert!(domain(&p, "com.apple.fmip").expect("domain").is_empty());
        assert!(domain(&p, "com.example.nothing").is_none());
        for name in DOMAINS {
            assert!(domain(&p, name).is_some(), "{name}");
        }
    }

    #[tokio::test]
    async fn find_my_answers_only_on_a_running_phone_signed_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(dir.path());
        sd.create().expect("create");
        let world = crate::world::World::from_toml(
            "[[device]]\nactivation_state = \"Activated\"\nfind_my = true\npasscode_locked = true\n[[device]]\nactivation_state = \"Activated\"\n[[device]]\nlock = \"user\"\n",
            "t",
        )
        .expect("world");
        let phones: Vec<Phone> = world
            .resolve()
            .expect("resolve")
            .into_iter()
            .map(|p| Phone::new(p, &sd, false).expect("phone"))
            .collect();
        let associated = |p: &Phone| {
            domain(p, "com.apple.fmip")
                .and_then(|d| d.get("IsAssociated").and_then(Value::as_boolean))
        };
        let password_protected = |p: &Phone| {
            global_domain(p, None)
                .get("PasswordProtected")
                .and_then(Value::as_boolean)
        };
        assert_eq!(associated(&phones[0]), Some(true));
        assert_eq!(password_protected(&phones[0]), Some(true));
        assert_eq!(associated(&phones[1]), Some(false));
        assert_eq!(password_protected(&phones[1]), Some(false));
        // Activation-Locked to a person, erased at Setup Assistant: still false (§3.6).
        assert_eq!(associated(&phones[2]), Some(false));
        // Deactivated on the bench: back at Setup Assistant, no longer associated.
        phones[0]
            .set_activation_state(ActivationState::Unactivated)
            .await;
        assert_eq!(associated(&phones[0]), Some(false));
    }

    #[test]
    fn blobs_are_stable() {
        let (p, _d) = phone();
        assert_eq!(blob(&p, "x", 8), blob(&p, "x", 8));
        assert_ne!(blob(&p, "x", 8), blob(&p, "y", 8));
    }
}
