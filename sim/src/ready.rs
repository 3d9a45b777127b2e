//! The `--ready` file: written once the socket listens, read by tests and the station's
//! demo to learn the socket and the phones. New fields may be added at any time; readers
//! must ignore fields they do not know.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::world::Enrollment;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// The bench's usbmuxd SystemBUID (`ReadBUID`).
    pub system_buid: String,
    pub pid: u32,
    /// Base URL of the stand-in activation server, `http://127.0.0.1:PORT/deviceservices`;
    /// the endpoints are `<activation_url>/drmHandshake` and `<activation_url>/deviceActivation`.
    #[serde(default)]
    pub activation_url: String,
    /// `http://127.0.0.1:PORT`: an HTTP proxy that opens only `CONNECT albert.apple.com:443`
    /// and answers there, over TLS with a self-signed certificate, as the stand-in at
    /// `activation_url`. For clients whose URLs are fixed: `https_proxy=<albert_proxy>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub albert_proxy: Option<String>,
    /// The stand-in MDM services (no secrets: those are in the files `station_config` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdm: Option<ReadyMdm>,
    /// A ready-made station configuration (TOML) pointing every source at this bench.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station_config: Option<PathBuf>,
    pub devices: Vec<ReadyDevice>,
}

/// `mdm` in the ready file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyMdm {
    pub intune: ReadyIntune,
    pub kandji: ReadyKandji,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyIntune {
    /// Stands for `https://login.microsoftonline.com`.
    pub token_url_base: String,
    /// `<token_url_base>/<tenant>/oauth2/v2.0/token`.
    pub token_url: String,
    /// Graph's root (stands for `https://graph.microsoft.com`; `/v1.0` and `/beta` below).
    pub graph_url: String,
    pub tenant: String,
    pub client_id: String,
    /// The scope a token request must name.
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyKandji {
    /// Stands for `https://<subdomain>.api.kandji.io`.
    pub api_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyDevice {
    pub udid: String,
    pub serial: String,
    pub product_type: String,
    pub product_version: String,
    pub build_version: String,
    pub hardware_model: String,
    pub marketing_name: String,
    pub device_class: String,
    pub device_name: String,
    /// `Unactivated` or `Activated`, as lockdown reports it.
    pub activation_state: String,
    /// `accept`, `deny` or `pending`: how the trust dialog will be answered.
    pub trust: String,
    pub trust_delay_ms: u64,
    pub passcode_locked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imei: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imei2: Option<String>,
    pub wifi_address: String,
    pub unique_chip_id: u64,
    pub location_id: u32,
    pub product_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plug_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplug_at_ms: Option<u64>,
    /// The world's `plug_periods` of a phone plugged in more than once (then `plug_at_ms` and
    /// `unplug_at_ms` are left out); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plug_periods: Vec<crate::world::PlugPeriod>,
    /// The phone's effective `leave_when_idle_ms`: its own, else the world's default; left
    /// out when neither sets one (it never leaves on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_when_idle_ms: Option<u64>,
    /// Plugged in when the file was written.
    pub attached: bool,
    /// usbmuxd DeviceID while plugged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<u32>,
    /// Activation Lock as the stand-in activation server sees it: `none`, `mdm` or `user`.
    #[serde(default = "no_lock")]
    pub lock: String,
    /// Bypass codes that release an `mdm` lock, dashed (test data, not secrets).
    #[serde(default)]
    pub codes: Vec<String>,
    /// Codes an MDM would still list for the phone but the server rejects.
    #[serde(default)]
    pub stale_codes: Vec<String>,
    /// The phone's Intune records and Kandji devices, with the codes they hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enrollments: Vec<Enrollment>,
    /// Its `mdm` lock was released through the MDM (Intune's bypassActivationLock).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lock_released: bool,
    /// `station-sim gadget`: the USB device controller the phone's gadget is on
    /// (`/sys/class/udc/<udc>`; with dummy_hcd, `dummy_udc.N` pairs with USB bus N+1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udc: Option<String>,
}

fn no_lock() -> String {
    "none".to_string()
}

impl ReadyInfo {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes the file atomically (temporary file + rename) so a poller never reads half.
    pub fn write(&self, path: &Path) -> Result<(), SimError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| SimError::io("create directory", parent, e))?;
        }
        let mut text = self.to_json();
        text.push('\n');
        station_protocol::atomic_file::write(
            path,
            text.as_bytes(),
            station_protocol::atomic_file::SHARED,
        )
        .map_err(|e| SimError::io("write ready file", path, e))
    }

    pub fn read(path: &Path) -> Result<ReadyInfo, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::io("read", path, e))?;
        Self::from_json(&text).map_err(|e| SimError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Parses the file's text; what [`ReadyInfo::read`] does after reading it. Public for the
    /// fuzz target and the round-trip property test.
    #[doc(hidden)]
    pub fn from_json(text: &str) -> Result<ReadyInfo, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[ -~é\\n\\t\"]{0,16}"
    }

    prop_compose! {
        fn device()(
            udid in "[0-9A-F]{8}-[0-9A-F]{16}",
            names in proptest::collection::vec(text(), 12),
            numbers in (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()),
            flags in (any::<bool>(), any::<bool>(), any::<bool>()),
            optional in (
                proptest::option::of("[0-9]{15}"),
                proptest::option::of("[0-9]{15}"),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of("dummy_udc\\.[0-9]{1,2}"),
                proptest::option::of(any::<u64>()),
            ),
            codes in proptest::collection::vec(text(), 0..3),
            periods in proptest::collection::vec(
                (proptest::option::of(any::<u64>()), proptest::option::of(any::<u64>()))
                    .prop_map(|(plug_at_ms, unplug_at_ms)| crate::world::PlugPeriod { plug_at_ms, unplug_at_ms }),
                0..3,
            ),
        ) -> ReadyDevice {
            ReadyDevice {
                udid,
                serial: names[0].clone(),
                product_type: names[1].clone(),
                product_version: names[2].clone(),
                build_version: names[3].clone(),
                hardware_model: names[4].clone(),
                marketing_name: names[5].clone(),
                device_class: names[6].clone(),
                device_name: names[7].clone(),
                activation_state: names[8].clone(),
                trust: names[9].clone(),
                trust_delay_ms: numbers.0,
                passcode_locked: flags.0,
                imei: optional.0,
                imei2: optional.1,
                wifi_address: names[10].clone(),
                unique_chip_id: numbers.1,
                location_id: numbers.2,
                product_id: numbers.3,
                plug_at_ms: optional.2,
                unplug_at_ms: optional.3,
                plug_periods: periods,
                leave_when_idle_ms: optional.6,
                attached: flags.1,
                device_id: optional.4,
                lock: names[11].clone(),
                codes: codes.clone(),
                stale_codes: codes,
                enrollments: Vec::new(),
                lock_released: flags.2,
                udc: optional.5,
            }
        }
    }

    prop_compose! {
        fn ready_info()(
            paths in ("/[a-z0-9/._-]{1,24}", "/[a-z0-9/._-]{1,24}"),
            system_buid in text(),
            pid: u32,
            activation_url in text(),
            albert_proxy in proptest::option::of(text()),
            mdm in proptest::option::of(proptest::collection::vec(text(), 7)),
            station_config in proptest::option::of("/[a-z0-9/._-]{1,24}"),
            devices in proptest::collection::vec(device(), 0..3),
        ) -> ReadyInfo {
            ReadyInfo {
                socket: paths.0.into(),
                state_dir: paths.1.into(),
                system_buid,
                pid,
                activation_url,
                albert_proxy,
                mdm: mdm.map(|m| ReadyMdm {
                    intune: ReadyIntune {
                        token_url_base: m[0].clone(),
                        token_url: m[1].clone(),
                        graph_url: m[2].clone(),
                        tenant: m[3].clone(),
                        client_id: m[4].clone(),
                        scope: m[5].clone(),
                    },
                    kandji: ReadyKandji { api_url: m[6].clone() },
                }),
                station_config: station_config.map(PathBuf::from),
                devices,
            }
        }
    }

    /// A file from before `leave_when_idle_ms` was written reads as "not set", and "not
    /// set" is left out, as the other optional fields are.
    #[test]
    fn leave_when_idle_ms_is_optional() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut device = device().new_tree(&mut runner).expect("device").current();
        device.leave_when_idle_ms = None;
        let mut json = serde_json::to_value(&device).expect("json");
        assert!(json.get("leave_when_idle_ms").is_none(), "{json}");
        let parsed: ReadyDevice = serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(parsed.leave_when_idle_ms, None);
        json["leave_when_idle_ms"] = serde_json::json!(30000);
        let parsed: ReadyDevice = serde_json::from_value(json).expect("parses");
        assert_eq!(parsed.leave_when_idle_ms, Some(30000));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn ready_files_round_trip(info in ready_info()) {
            let parsed = ReadyInfo::from_json(&info.to_json()).expect("parses");
            prop_assert_eq!(parsed, info);
        }
    }
}
