//! The bench's world: which virtual iPhones exist, who they are and what state they are in.
//!
//! A [`World`] is what a TOML world file holds (format in `docs/world.md`). Device entries
//! may leave any field out; [`World::resolve`] fills the gaps deterministically from the
//! world's seed and checks the result, giving one [`DeviceProfile`] per phone.

pub mod catalog;
pub mod demo;
pub mod gen;
pub mod mdm;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use rand::Rng;
use serde::{Deserialize, Serialize};
use station_protocol::bypass_code::BypassCode;

use crate::phone::tls::TlsGeneration;

use catalog::{Model, MODELS};
pub use mdm::{
    BypassActionReading, Cloud, Enrollment, EnrollmentSpec, HttpFaultSpec, IntuneSpec, KandjiSpec,
    Mdm,
};

/// Default USB product id of an iPhone in normal mode (0x12a8).
pub const IPHONE_PRODUCT_ID: u32 = 0x12a8;
/// High-speed USB, what usbmuxd reports for an iPhone (also its value for "unknown").
pub const USB2_SPEED: u64 = 480_000_000;

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("cannot read world file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors, unknown fields (named by serde) and wrong types.
    #[error("world file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("device #{index} ({who}): `{field}` {reason}")]
    Invalid {
        index: usize,
        who: String,
        field: &'static str,
        reason: String,
    },
    #[error("[activation_server] `{field}` {reason}")]
    InvalidServer { field: &'static str, reason: String },
    /// A world-wide value (outside every table) that is out of range.
    #[error("world `{field}` {reason}")]
    InvalidWorld { field: &'static str, reason: String },
    #[error("[{table}] `{field}` {reason}")]
    InvalidMdm {
        table: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("devices #{first} and #{second} have the same {field} {value}")]
    Duplicate {
        field: &'static str,
        value: String,
        first: usize,
        second: usize,
    },
}

/// What lockdown reports as `ActivationState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActivationState {
    /// Erased, at Setup Assistant: pairs without a trust prompt.
    Unactivated,
    /// Set up and in use: pairing asks "Trust this computer?".
    Activated,
}

impl ActivationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationState::Unactivated => "Unactivated",
            ActivationState::Activated => "Activated",
        }
    }
}

impl fmt::Display for ActivationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the (virtual) user answers "Trust this computer?" on an activated phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Taps Trust `trust_delay_ms` after the dialog appears.
    Accept,
    /// Taps Don't Trust `trust_delay_ms` after the dialog appears.
    Deny,
    /// Never answers.
    Pending,
}

impl Trust {
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Accept => "accept",
            Trust::Deny => "deny",
            Trust::Pending => "pending",
        }
    }
}

/// Activation Lock as Apple's activation server sees the phone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lock {
    /// Not locked: `deviceActivation` answers an activation record.
    #[default]
    None,
    /// Locked to the organisation (supervised, MDM): a blank Apple Account and one of the
    /// phone's bypass `codes` as password release it.
    Mdm,
    /// Locked to a person's Apple Account: no bypass code ever releases it.
    User,
}

impl Lock {
    pub fn as_str(self) -> &'static str {
        match self {
            Lock::None => "none",
            Lock::Mdm => "mdm",
            Lock::User => "user",
        }
    }
}

impl fmt::Display for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A world file: a seed, the stand-in activation server and a list of devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    /// Seed for every value a device entry leaves out.
    #[serde(default)]
    pub seed: u64,
    /// `leave_when_idle_ms` of every device that does not set its own (docs/world.md "USB").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_when_idle_ms: Option<u64>,
    /// Latency and injected failures of the stand-in activation server.
    #[serde(default, skip_serializing_if = "ActivationServerSpec::is_default")]
    pub activation_server: ActivationServerSpec,
    /// The stand-in Microsoft Entra token endpoint and Graph (Intune).
    #[serde(default, skip_serializing_if = "IntuneSpec::is_default")]
    pub intune: IntuneSpec,
    /// The stand-in Kandji API.
    #[serde(default, skip_serializing_if = "KandjiSpec::is_default")]
    pub kandji: KandjiSpec,
    #[serde(default, rename = "device", skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
}

/// Largest `nand_info_bytes`: the lockdown answer carries it base64-encoded in an XML plist,
/// which must stay under the 4 MiB frame limit (`station_protocol::frame::MAX_FRAME_LEN`).
pub const MAX_NAND_INFO_BYTES: u32 = 2 * 1024 * 1024;

/// Longest mobileactivationd delay a world may ask for.
const MAX_COMMAND_DELAY_MS: u64 = 600_000;

/// HTTP status the stand-in activation server answers injected failures with by default.
pub const DEFAULT_FAILURE_STATUS: u16 = 503;

/// `[activation_server]`: how the stand-in of Apple's activation server misbehaves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActivationServerSpec {
    /// Added before every answer.
    #[serde(skip_serializing_if = "is_zero")]
    pub latency_ms: u64,
    /// Status of injected failures (5xx) [default 503].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_status: Option<u16>,
    #[serde(skip_serializing_if = "FaultSpec::is_default")]
    pub drm_handshake: FaultSpec,
    #[serde(skip_serializing_if = "FaultSpec::is_default")]
    pub device_activation: FaultSpec,
    /// Records come with `ack-received = true` in the `ActivationRecord` dictionary.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub record_ack: bool,
    /// A first `deviceActivation` request is answered by a page of hidden fields only,
    /// which the client posts back as it is.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub continue_page: bool,
    /// What a wrong code or password gets.
    #[serde(skip_serializing_if = "WrongCredentials::is_default")]
    pub wrong_credentials: WrongCredentials,
    /// Stretches of the run in which every request is answered wrongly
    /// (`[[activation_server.window]]`), for the soak (issue 13).
    #[serde(rename = "window", skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<FaultWindow>,
}

/// A stretch of a bench's run (milliseconds since the bench started, `from_ms` included,
/// `until_ms` not) in which a stand-in service answers every request one wrong way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultWindow {
    pub from_ms: u64,
    pub until_ms: u64,
    pub answer: WindowAnswer,
    /// `slow`: the answer comes this much later than it otherwise would [default 0].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_ms: u64,
}

/// How a service answers inside a [`FaultWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowAnswer {
    /// The failure status (5xx), as an injected failure.
    Fail,
    /// The usual answer, `latency_ms` late: longer than a client's request timeout, a
    /// timeout for it.
    Slow,
    /// HTTP 200 whose body is no answer at all (bytes that are neither a plist, a page nor
    /// JSON).
    Garbage,
}

impl FaultWindow {
    /// Whether `elapsed` (since the bench started) is inside the window.
    pub fn covers(&self, elapsed: std::time::Duration) -> bool {
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.from_ms <= ms && ms < self.until_ms
    }

    /// The window in force at `elapsed`, the first listed when several are.
    pub fn active(windows: &[FaultWindow], elapsed: std::time::Duration) -> Option<FaultWindow> {
        windows.iter().copied().find(|w| w.covers(elapsed))
    }

    /// `until_ms` after `from_ms`, latencies within 10 minutes.
    pub fn validate(&self) -> Result<(), String> {
        if self.until_ms <= self.from_ms {
            return Err(format!(
                "until_ms {} is not after from_ms {}",
                self.until_ms, self.from_ms
            ));
        }
        if self.latency_ms > MAX_WINDOW_LATENCY_MS {
            return Err(format!(
                "latency_ms {} is over {MAX_WINDOW_LATENCY_MS}",
                self.latency_ms
            ));
        }
        if self.answer == WindowAnswer::Slow && self.latency_ms == 0 {
            return Err("answer = \"slow\" needs latency_ms".to_string());
        }
        Ok(())
    }
}

/// The longest delay a window may add (10 minutes, like the phone's delays).
const MAX_WINDOW_LATENCY_MS: u64 = 600_000;

/// Albert's answer to wrong credentials on the lock form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WrongCredentials {
    /// `<xmlui><alert title message/></xmlui>` and nothing else: no form to fill in again,
    /// the exchange starts over (docs/protocol.md §5.6: a page with an alert).
    #[default]
    Alert,
    /// The alert over the lock form again.
    AlertOverForm,
}

impl WrongCredentials {
    pub fn is_default(&self) -> bool {
        *self == WrongCredentials::default()
    }
}

/// Injected failures of one endpoint. A request fails if any rule says so; `fail_next`
/// counts down first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// The next N requests fail.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub fail_next: u32,
    /// Every request fails.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fail_always: bool,
    /// Each request fails with this probability (0.0–1.0), drawn from the world's seed.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub fail_rate: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

impl FaultSpec {
    pub fn is_default(&self) -> bool {
        *self == FaultSpec::default()
    }
}

impl ActivationServerSpec {
    pub fn is_default(&self) -> bool {
        *self == ActivationServerSpec::default()
    }

    pub fn failure_status(&self) -> u16 {
        self.failure_status.unwrap_or(DEFAULT_FAILURE_STATUS)
    }

    fn validate(&self) -> Result<(), WorldError> {
        let invalid =
            |field: &'static str, reason: String| WorldError::InvalidServer { field, reason };
        if let Some(status) = self.failure_status {
            if !(500..=599).contains(&status) {
                return Err(invalid(
                    "failure_status",
                    format!("{status} is not a 5xx status"),
                ));
            }
        }
        for window in &self.windows {
            window
                .validate()
                .map_err(|reason| invalid("window", reason))?;
        }
        for (field, fault) in [
            ("drm_handshake.fail_rate", &self.drm_handshake),
            ("device_activation.fail_rate", &self.device_activation),
        ] {
            if !(0.0..=1.0).contains(&fault.fail_rate) {
                return Err(invalid(
                    field,
                    format!("{} is not between 0.0 and 1.0", fault.fail_rate),
                ));
            }
        }
        Ok(())
    }
}

/// One time a phone is plugged in, in milliseconds after the bench starts: `plug_at_ms`
/// absent = plugged in at start (first period only), `unplug_at_ms` absent = stays plugged
/// in (last period only). See docs/world.md ("USB").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlugPeriod {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plug_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unplug_at_ms: Option<u64>,
}

/// At most this many plug periods per phone: a schedule, not a stress generator.
pub const MAX_PLUG_PERIODS: usize = 1000;

/// Longest `leave_when_idle_ms`: an hour (an operator who waits longer has left too).
pub const MAX_LEAVE_WHEN_IDLE_MS: u64 = 3_600_000;

/// `leave_when_idle_ms` is positive and at most [`MAX_LEAVE_WHEN_IDLE_MS`].
fn check_leave_when_idle(ms: u64) -> Result<(), String> {
    if ms == 0 {
        return Err("must be positive (leave it out for a phone that stays)".to_string());
    }
    if ms > MAX_LEAVE_WHEN_IDLE_MS {
        return Err(format!("at most {MAX_LEAVE_WHEN_IDLE_MS} ms (an hour)"));
    }
    Ok(())
}

/// One `[[device]]` entry. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSpec {
    // --- identity ---
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imei: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imei2: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wifi_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bluetooth_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_chip_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_gb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_percent: Option<u8>,
    /// Bytes of `NANDInfo` in `com.apple.disk_usage`: one large `GetValue` answer, for
    /// measuring a transport's throughput (`scripts/usb-vm-bench`) [default 0, at most
    /// [`MAX_NAND_INFO_BYTES`]].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nand_info_bytes: Option<u32>,
    // --- USB ---
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_id: Option<u32>,
    // --- state ---
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_state: Option<ActivationState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<Trust>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passcode_locked: Option<bool>,
    /// `false`: `Pair` succeeds without an `EscrowBag`, as a phone that cannot unwrap its
    /// keybag answers (go-ios documents such replies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair_escrow_bag: Option<bool>,
    /// The TLS the phone speaks when not its iOS version's (see docs/world.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsGeneration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plug_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unplug_at_ms: Option<u64>,
    /// Several plugged-in periods, in order (the phone pulled out and put back); instead of
    /// `plug_at_ms`/`unplug_at_ms`, which are one period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plug_periods: Option<Vec<PlugPeriod>>,
    /// Once the host has talked to the phone, it is pulled out (its plug period ends) when
    /// no host connection to it has been open for this long, as an operator unplugs a
    /// phone the station is done with [default: never; at most [`MAX_LEAVE_WHEN_IDLE_MS`]].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leave_when_idle_ms: Option<u64>,
    // --- mobileactivationd timing ---
    /// `CreateTunnel1ActivationInfoRequest` takes this long (FairPlay on a real phone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_info_delay_ms: Option<u64>,
    /// `HandleActivationInfoWithSessionRequest` takes this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle_record_delay_ms: Option<u64>,
    /// The handshake session ends this long after `CreateTunnel1SessionInfoRequest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_session_lifetime_ms: Option<u64>,
    /// After taking a record the phone reports `Activated` only this much later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activated_after_ms: Option<u64>,
    /// `[device.hostile]`: the phone answers one request wrongly (crate::hostile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostile: Option<crate::hostile::HostileSpec>,
    // --- Activation Lock (what Apple's activation server knows) ---
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<Lock>,
    /// Bypass codes that release an `mdm` lock (any case, dashes optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<String>>,
    /// Codes the MDM still lists for the phone but Apple rejects (superseded ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_codes: Option<Vec<String>>,
    /// The masked owner account the lock page shows, e.g. `j•••@icloud.com`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_hint: Option<String>,
    // --- MDM enrolments (what the organisation's MDMs hold) ---
    /// `false` keeps an `mdm` phone out of Intune; `true` enrols any phone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intune: Option<bool>,
    /// `true` makes the phone a Kandji device (and, unless `intune = true`, not an Intune one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kandji: Option<bool>,
    /// The phone's MDM records, each with its own codes; replaces `intune`/`kandji`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollments: Option<Vec<EnrollmentSpec>>,
    // --- Find My and management (what the running phone itself reports) ---
    /// Find My is on: `com.apple.fmip` `IsAssociated` answers true. Needs an activated phone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub find_my: Option<bool>,
    /// The cloud configuration's `IsSupervised`. Any of the four cloud-configuration fields
    /// gives the phone a configuration (MCInstall `GetCloudConfiguration`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervised: Option<bool>,
    /// The cloud configuration's `OrganizationName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// The cloud configuration's `ConfigurationURL`: the MDM the phone enrols in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration_url: Option<String>,
    /// The cloud configuration's `IsMDMUnremovable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mdm_unremovable: Option<bool>,
}

/// The cloud configuration a phone holds (docs/protocol.md §3.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloudConfig {
    pub supervised: bool,
    pub organization: Option<String>,
    pub configuration_url: Option<String>,
    pub mdm_unremovable: bool,
}

/// Longest `organization` a world may give (what the station keeps of one).
const MAX_ORGANIZATION_CHARS: usize = station_protocol::mcinstall::MAX_ORGANIZATION_CHARS;
/// Longest `configuration_url` a world may give.
const MAX_CONFIGURATION_URL_LEN: usize = 2048;

/// A fully resolved virtual iPhone: every identity value lockdown reports, and its state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceProfile {
    pub udid: String,
    pub serial: String,
    pub product_type: String,
    pub product_version: String,
    pub build_version: String,
    pub hardware_model: String,
    pub hardware_platform: String,
    pub marketing_name: String,
    pub model_number: String,
    pub region_info: String,
    pub regulatory_model_number: String,
    pub device_class: String,
    pub device_name: String,
    pub cpu_architecture: String,
    pub chip_id: u32,
    pub board_id: u32,
    pub unique_chip_id: u64,
    pub die_id: u64,
    pub imei: Option<String>,
    pub imei2: Option<String>,
    /// MEID: the first 14 digits of the IMEI on cellular iPhones.
    pub meid: Option<String>,
    pub wifi_address: String,
    pub bluetooth_address: String,
    pub ethernet_address: String,
    pub mlb_serial: String,
    pub storage_gb: u32,
    pub battery_percent: u8,
    pub nand_info_bytes: u32,
    pub location_id: u32,
    pub product_id: u32,
    pub activation_state: ActivationState,
    pub trust: Trust,
    pub trust_delay_ms: u64,
    pub passcode_locked: bool,
    pub pair_escrow_bag: bool,
    /// `None`: the TLS of `product_version`.
    pub tls: Option<TlsGeneration>,
    /// When the phone is plugged in: never empty, validated (times strictly increase).
    pub plug_periods: Vec<PlugPeriod>,
    /// `Some`: the phone leaves the bench once it has been talked to and then left
    /// without a host connection this long (the device's value, else the world's).
    pub leave_when_idle_ms: Option<u64>,
    pub activation_info_delay_ms: u64,
    pub handle_record_delay_ms: u64,
    /// `None`: the session lasts until the next `CreateTunnel1SessionInfoRequest`.
    pub activation_session_lifetime_ms: Option<u64>,
    pub activated_after_ms: u64,
    /// Where and how the phone misbehaves, if it does.
    pub hostile: Option<crate::hostile::HostileSpec>,
    pub lock: Lock,
    /// Dashed display form (`XXXXX-XXXXX-XXXX-XXXX-XXXX-XXXX`); test data, not secrets.
    pub codes: Vec<String>,
    pub stale_codes: Vec<String>,
    pub owner_hint: String,
    /// Intune records and Kandji devices for this phone, in enrolment order.
    pub enrollments: Vec<Enrollment>,
    /// Find My is on (only ever on an activated phone).
    pub find_my: bool,
    /// `None`: the phone has no cloud configuration (erased, or never enrolled).
    pub cloud_configuration: Option<CloudConfig>,
}

impl DeviceProfile {
    pub fn telephony(&self) -> bool {
        self.imei.is_some()
    }
}

impl World {
    /// Parses a world from TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<World, WorldError> {
        toml::from_str(text).map_err(|e| WorldError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<World, WorldError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorldError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut world = World::from_toml(&text, &path.display().to_string())?;
        // A relative certificate path means: next to the world file.
        if let (Some(cert), Some(dir)) = (&world.intune.certificate_file, path.parent()) {
            if cert.is_relative() {
                world.intune.certificate_file = Some(dir.join(cert));
            }
        }
        Ok(world)
    }

    /// The world as TOML (what `station-sim world` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The same world with every generated value written out (what `station-sim world`
    /// prints): editing one field of it changes nothing else.
    pub fn pinned(&self) -> Result<World, WorldError> {
        Ok(World {
            seed: self.seed,
            leave_when_idle_ms: self.leave_when_idle_ms,
            activation_server: self.activation_server.clone(),
            intune: self.intune.clone(),
            kandji: self.kandji.clone(),
            devices: self.resolve()?.iter().map(spec_from_profile).collect(),
        })
    }

    /// Fills every omitted value from the seed and validates the devices (and the
    /// `[activation_server]` table).
    pub fn resolve(&self) -> Result<Vec<DeviceProfile>, WorldError> {
        self.activation_server.validate()?;
        self.intune.validate()?;
        self.kandji.validate()?;
        if let Some(ms) = self.leave_when_idle_ms {
            check_leave_when_idle(ms).map_err(|reason| WorldError::InvalidWorld {
                field: "leave_when_idle_ms",
                reason,
            })?;
        }
        let mut out: Vec<DeviceProfile> = Vec::with_capacity(self.devices.len());
        for (index, spec) in self.devices.iter().enumerate() {
            let mut profile = resolve_device(self.seed, index, spec)?;
            // The world's default for a device without its own.
            profile.leave_when_idle_ms = profile.leave_when_idle_ms.or(self.leave_when_idle_ms);
            for (first, other) in out.iter().enumerate() {
                let dup = |field: &'static str, value: &str| WorldError::Duplicate {
                    field,
                    value: value.to_string(),
                    first,
                    second: index,
                };
                if station_protocol::udid::same_udid(&other.udid, &profile.udid) {
                    return Err(dup("udid", &profile.udid));
                }
                if other.serial == profile.serial {
                    return Err(dup("serial", &profile.serial));
                }
                if other.location_id == profile.location_id {
                    return Err(dup("location_id", &format!("{:#x}", profile.location_id)));
                }
                for e in &profile.enrollments {
                    if other.enrollments.iter().any(|o| o.id == e.id) {
                        return Err(dup("enrollment id", &e.id));
                    }
                }
            }
            out.push(profile);
        }
        Ok(out)
    }
}

/// The organisation supervising the default world's kind-1 phones.
pub const DEFAULT_ORGANIZATION: &str = "Example School District";
/// Its MDM's enrolment address.
pub const DEFAULT_CONFIGURATION_URL: &str = "https://mdm.example.org/enroll";

/// `n` phones, deterministic from `seed`, with realistic identities and a mix of states.
/// Devices cycle through ten kinds:
///
/// 0. Unactivated, not locked (a clean erased phone);
/// 1. Activated, trust accepted at once, supervised by an organisation (its cloud
///    configuration names the organisation and its MDM);
/// 2. Unactivated, MDM-locked, with a bypass code and a stale one: enrolled in Intune
///    twice (an older record with the stale code, the newer one with the good code and
///    the UDID);
/// 3. Unactivated, locked to a person's Apple Account (enrolled nowhere);
/// 4. Activated, trust accepted after 2.5 s, Find My on;
/// 5. Unactivated, MDM-locked with two codes, only in Kandji (device- and user-based);
/// 6. Unactivated, MDM-locked, one Intune record with its code;
/// 7. Unactivated, MDM-locked, no code anywhere: one Intune record whose code is null
///    (only Intune's `bypassActivationLock` releases it);
/// 8. Unactivated, not locked, enrolled in Intune (its code is never asked for);
/// 9. Unactivated, MDM-locked, one code held by both Intune and Kandji.
///
/// So with `n >= 4` there is one of each activation case, the first three are usable by
/// every tool without waiting, and from `n >= 6` every MDM case appears in turn.
pub fn default_world(n: usize, seed: u64) -> World {
    let mut devices = Vec::with_capacity(n);
    let mut udids = HashSet::new();
    let mut serials = HashSet::new();
    for index in 0..n {
        let mut rng = gen::device_rng(seed, index);
        let model = MODELS[rng.random_range(0..MODELS.len())];
        // Re-draw on the (astronomically unlikely) collision so identities stay unique.
        let (spec_udid, spec_serial, ecid) = loop {
            let ecid = gen::ecid(&mut rng);
            let udid = gen::udid(&model, ecid, &mut rng);
            let serial = gen::serial(&model, &mut rng);
            if !udids.contains(&udid) && !serials.contains(&serial) {
                break (udid, serial, ecid);
            }
        };
        udids.insert(spec_udid.clone());
        serials.insert(spec_serial.clone());
        let kind = index % 10;
        let (activation_state, trust_delay_ms, lock) = match kind {
            1 => (ActivationState::Activated, 0, Lock::None),
            4 => (ActivationState::Activated, 2500, Lock::None),
            2 | 5 | 6 | 7 | 9 => (ActivationState::Unactivated, 0, Lock::Mdm),
            3 => (ActivationState::Unactivated, 0, Lock::User),
            _ => (ActivationState::Unactivated, 0, Lock::None),
        };
        // A separate stream, so extra codes do not shift any other generated value.
        let mut codes_rng = gen::device_rng(!seed, index);
        let (codes, stale_codes) = match kind {
            2 => (None, Some(vec![gen::bypass_code(&mut codes_rng)])),
            5 => (
                Some(vec![
                    gen::bypass_code(&mut codes_rng),
                    gen::bypass_code(&mut codes_rng),
                ]),
                None,
            ),
            7 => (Some(Vec::new()), None),
            _ => (None, None),
        };
        let (intune, kandji) = match kind {
            5 => (None, Some(true)),
            8 => (Some(true), None),
            9 => (Some(true), Some(true)),
            _ => (None, None),
        };
        // Fixed values, not drawn: they must not shift any generated identity.
        let supervised = kind == 1;
        let find_my = kind == 4;
        let spec = DeviceSpec {
            udid: Some(spec_udid),
            serial: Some(spec_serial),
            product_type: Some(model.product_type.to_string()),
            unique_chip_id: Some(ecid),
            activation_state: Some(activation_state),
            trust: Some(Trust::Accept),
            trust_delay_ms: Some(trust_delay_ms),
            passcode_locked: Some(false),
            lock: Some(lock),
            codes,
            stale_codes,
            intune,
            kandji,
            find_my: find_my.then_some(true),
            supervised: supervised.then_some(true),
            organization: supervised.then(|| DEFAULT_ORGANIZATION.to_string()),
            configuration_url: supervised.then(|| DEFAULT_CONFIGURATION_URL.to_string()),
            ..DeviceSpec::default()
        };
        // Fill the remaining identity from the same per-device stream, then pin it in the
        // spec so a printed default world reproduces exactly.
        let profile = match resolve_device(seed, index, &spec) {
            Ok(p) => p,
            // Only catalogue values went in, so this cannot fail; keep the partial spec.
            Err(_) => {
                devices.push(spec);
                continue;
            }
        };
        devices.push(spec_from_profile(&profile));
    }
    World {
        seed,
        devices,
        ..World::default()
    }
}

/// A spec that pins every value of `p`.
fn spec_from_profile(p: &DeviceProfile) -> DeviceSpec {
    DeviceSpec {
        udid: Some(p.udid.clone()),
        serial: Some(p.serial.clone()),
        product_type: Some(p.product_type.clone()),
        product_version: Some(p.product_version.clone()),
        build_version: Some(p.build_version.clone()),
        hardware_model: Some(p.hardware_model.clone()),
        model_number: Some(p.model_number.clone()),
        region_info: Some(p.region_info.clone()),
        device_class: Some(p.device_class.clone()),
        device_name: Some(p.device_name.clone()),
        imei: p.imei.clone(),
        imei2: p.imei2.clone(),
        wifi_address: Some(p.wifi_address.clone()),
        bluetooth_address: Some(p.bluetooth_address.clone()),
        unique_chip_id: Some(p.unique_chip_id),
        storage_gb: Some(p.storage_gb),
        battery_percent: Some(p.battery_percent),
        nand_info_bytes: (p.nand_info_bytes != 0).then_some(p.nand_info_bytes),
        location_id: Some(p.location_id),
        product_id: Some(p.product_id),
        activation_state: Some(p.activation_state),
        trust: Some(p.trust),
        trust_delay_ms: Some(p.trust_delay_ms),
        passcode_locked: Some(p.passcode_locked),
        pair_escrow_bag: (!p.pair_escrow_bag).then_some(false),
        tls: p.tls,
        plug_at_ms: p.single_plug_period().and_then(|only| only.plug_at_ms),
        unplug_at_ms: p.single_plug_period().and_then(|only| only.unplug_at_ms),
        plug_periods: (p.plug_periods.len() > 1).then(|| p.plug_periods.clone()),
        leave_when_idle_ms: p.leave_when_idle_ms,
        activation_info_delay_ms: (p.activation_info_delay_ms != 0)
            .then_some(p.activation_info_delay_ms),
        handle_record_delay_ms: (p.handle_record_delay_ms != 0).then_some(p.handle_record_delay_ms),
        activation_session_lifetime_ms: p.activation_session_lifetime_ms,
        activated_after_ms: (p.activated_after_ms != 0).then_some(p.activated_after_ms),
        hostile: p.hostile.clone(),
        lock: Some(p.lock),
        // A phone that is not MDM-locked has no codes: leave the empty list out.
        codes: (p.lock == Lock::Mdm || !p.codes.is_empty()).then(|| p.codes.clone()),
        stale_codes: (!p.stale_codes.is_empty()).then(|| p.stale_codes.clone()),
        owner_hint: (!p.owner_hint.is_empty()).then(|| p.owner_hint.clone()),
        intune: None,
        kandji: None,
        // An `mdm` phone is enrolled by default: an empty list keeps it out.
        enrollments: (p.lock == Lock::Mdm || !p.enrollments.is_empty())
            .then(|| mdm::pinned(&p.enrollments)),
        find_my: p.find_my.then_some(true),
        supervised: p.cloud_configuration.as_ref().map(|c| c.supervised),
        organization: p
            .cloud_configuration
            .as_ref()
            .and_then(|c| c.organization.clone()),
        configuration_url: p
            .cloud_configuration
            .as_ref()
            .and_then(|c| c.configuration_url.clone()),
        mdm_unremovable: p
            .cloud_configuration
            .as_ref()
            .and_then(|c| c.mdm_unremovable.then_some(true)),
    }
}

/// Reads a world's list of codes into display form; the error names the entry, never the code.
fn parse_codes(
    list: &[String],
    invalid: &dyn Fn(&'static str, String) -> WorldError,
    field: &'static str,
) -> Result<Vec<String>, WorldError> {
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            BypassCode::parse(text)
                .map(|c| c.reveal())
                .map_err(|e| invalid(field, format!("entry {}: {e}", i + 1)))
        })
        .collect()
}

/// The masked owner account a lock page shows when the world names none.
fn default_owner_hint(lock: Lock) -> &'static str {
    match lock {
        Lock::None => "",
        Lock::Mdm => "d\u{2022}\u{2022}\u{2022}\u{2022}\u{2022}@example.com",
        Lock::User => "j\u{2022}\u{2022}\u{2022}\u{2022}\u{2022}@icloud.com",
    }
}

/// Default hub position of device `index`: `(bus << 16) | address` as usbmuxd computes it.
fn default_location(index: usize) -> u32 {
    let bus = 1 + (index / 120) as u32;
    let address = 2 + (index % 120) as u32;
    (bus << 16) | address
}

/// The phone's plug periods: `plug_periods`, or the one period of `plug_at_ms` and
/// `unplug_at_ms` (both absent: plugged in throughout). Every time is after the one before.
fn resolve_plug_periods(
    spec: &DeviceSpec,
    invalid: &impl Fn(&'static str, String) -> WorldError,
) -> Result<Vec<PlugPeriod>, WorldError> {
    let (periods, field) = match &spec.plug_periods {
        None => (
            vec![PlugPeriod {
                plug_at_ms: spec.plug_at_ms,
                unplug_at_ms: spec.unplug_at_ms,
            }],
            "unplug_at_ms",
        ),
        Some(_) if spec.plug_at_ms.is_some() || spec.unplug_at_ms.is_some() => {
            return Err(invalid(
                "plug_periods",
                "give either plug_periods or plug_at_ms/unplug_at_ms, not both".to_string(),
            ))
        }
        Some(periods) if periods.is_empty() => {
            return Err(invalid(
                "plug_periods",
                "is empty (leave it out for a phone plugged in throughout)".to_string(),
            ))
        }
        Some(periods) if periods.len() > MAX_PLUG_PERIODS => {
            return Err(invalid(
                "plug_periods",
                format!("{} periods, at most {MAX_PLUG_PERIODS}", periods.len()),
            ))
        }
        Some(periods) => (periods.clone(), "plug_periods"),
    };
    let last = periods.len() - 1;
    // The time of the event before, to check that each one comes after it.
    let mut previous: Option<(u64, &str)> = None;
    for (i, period) in periods.iter().enumerate() {
        let n = i + 1;
        match period.plug_at_ms {
            None if i > 0 => {
                return Err(invalid(
                    field,
                    format!("period {n} has no plug_at_ms (only the first may start plugged in)"),
                ))
            }
            None => {}
            Some(plug) => {
                if let Some((before, what)) = previous.filter(|(before, _)| plug <= *before) {
                    return Err(invalid(
                        field,
                        format!("plug_at_ms {plug} of period {n} is not after {what} {before}"),
                    ));
                }
                previous = Some((plug, "plug_at_ms"));
            }
        }
        match period.unplug_at_ms {
            None if i < last => {
                return Err(invalid(
                    field,
                    format!("period {n} has no unplug_at_ms but another period follows"),
                ))
            }
            None => {}
            Some(unplug) => {
                if let Some((before, what)) = previous.filter(|(before, _)| unplug <= *before) {
                    return Err(invalid(
                        field,
                        format!("{unplug} is not after {what} {before}"),
                    ));
                }
                previous = Some((unplug, "unplug_at_ms"));
            }
        }
    }
    Ok(periods)
}

impl DeviceProfile {
    /// Plugged in when the bench starts (before any schedule).
    pub fn plugged_at_start(&self) -> bool {
        self.plug_periods
            .first()
            .is_none_or(|first| first.plug_at_ms.is_none())
    }

    /// The timed plugs (`true`) and unplugs (`false`), in milliseconds after the bench
    /// starts, in order.
    pub fn plug_schedule(&self) -> Vec<(u64, bool)> {
        self.plug_periods
            .iter()
            .flat_map(|p| [(p.plug_at_ms, true), (p.unplug_at_ms, false)])
            .filter_map(|(at, plug)| at.map(|at| (at, plug)))
            .collect()
    }

    /// The period of a phone plugged in once (what `plug_at_ms`/`unplug_at_ms` describe).
    pub fn single_plug_period(&self) -> Option<PlugPeriod> {
        match self.plug_periods.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    }
}

fn resolve_device(seed: u64, index: usize, spec: &DeviceSpec) -> Result<DeviceProfile, WorldError> {
    let who = spec
        .udid
        .clone()
        .or_else(|| spec.serial.clone())
        .unwrap_or_else(|| "generated".to_string());
    let invalid = |field: &'static str, reason: String| WorldError::Invalid {
        index,
        who: who.clone(),
        field,
        reason,
    };
    let mut rng = gen::device_rng(seed, index);
    // Draw the model first in every case so specs that only pin state stay stable.
    let drawn = MODELS[rng.random_range(0..MODELS.len())];
    let model: Model = match &spec.product_type {
        Some(pt) => *catalog::model(pt).ok_or_else(|| {
            invalid(
                "product_type",
                format!(
                    "{pt:?} is not in the catalogue (known: {})",
                    catalog::product_types().join(", ")
                ),
            )
        })?,
        None => drawn,
    };
    // Every value is drawn whether or not the spec pins it, so pinning one field never
    // shifts the stream and changes the others.
    let drawn_release = model.releases[rng.random_range(0..model.releases.len())];
    let drawn_model_number = model.model_numbers[rng.random_range(0..model.model_numbers.len())];
    let drawn_storage = model.storage_gb[rng.random_range(0..model.storage_gb.len())];
    let drawn_battery: u8 = rng.random_range(35..=100);
    let die_id = rng.random::<u64>() & 0x00FF_FFFF_FFFF_FFFF;
    let mlb_serial = gen::mlb_serial(&mut rng);
    let release = match (&spec.product_version, &spec.build_version) {
        (Some(v), Some(b)) => (v.clone(), b.clone()),
        (Some(v), None) => model
            .release(v)
            .map(|r| (r.version.to_string(), r.build.to_string()))
            .ok_or_else(|| {
                invalid(
                    "product_version",
                    format!(
                        "{v} has no known build for {}: give build_version too (known: {})",
                        model.product_type,
                        model
                            .releases
                            .iter()
                            .map(|r| r.version)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?,
        (None, Some(_)) => {
            return Err(invalid(
                "build_version",
                "needs product_version as well".to_string(),
            ))
        }
        (None, None) => (
            drawn_release.version.to_string(),
            drawn_release.build.to_string(),
        ),
    };
    let (product_version, build_version) = release;

    let generated_ecid = gen::ecid(&mut rng);
    let generated_udid = gen::udid(&model, generated_ecid, &mut rng);
    let udid = spec.udid.clone().unwrap_or(generated_udid);
    validate_udid(&udid).map_err(|reason| invalid("udid", reason))?;
    let unique_chip_id = spec
        .unique_chip_id
        .or_else(|| gen::ecid_from_udid(&udid))
        .unwrap_or(generated_ecid);

    let generated_serial = gen::serial(&model, &mut rng);
    let serial = spec.serial.clone().unwrap_or(generated_serial);
    if !(8..=14).contains(&serial.len()) || !serial.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(
            "serial",
            format!("{serial:?} is not 8 to 14 letters and digits"),
        ));
    }

    let generated_imei = gen::imei(model.imei_tac, &mut rng);
    let generated_imei2 = gen::imei(model.imei_tac, &mut rng);
    let imei = spec.imei.clone().unwrap_or(generated_imei);
    if !gen::imei_is_valid(&imei) {
        return Err(invalid(
            "imei",
            format!("{imei:?} is not 15 digits with a valid Luhn check digit"),
        ));
    }
    let imei2 = match &spec.imei2 {
        Some(i) => Some(i.clone()),
        None if model.dual_imei => Some(generated_imei2),
        None => None,
    };
    if let Some(i2) = &imei2 {
        if !gen::imei_is_valid(i2) {
            return Err(invalid(
                "imei2",
                format!("{i2:?} is not 15 digits with a valid Luhn check digit"),
            ));
        }
    }

    let generated_mac = gen::mac(&mut rng);
    let wifi = match &spec.wifi_address {
        Some(text) => gen::parse_mac(text).ok_or_else(|| {
            invalid(
                "wifi_address",
                format!("{text:?} is not a MAC address like 3c:22:fb:01:02:03"),
            )
        })?,
        None => generated_mac,
    };
    let bluetooth_address = match &spec.bluetooth_address {
        Some(text) => {
            gen::parse_mac(text).ok_or_else(|| {
                invalid(
                    "bluetooth_address",
                    format!("{text:?} is not a MAC address like 3c:22:fb:01:02:04"),
                )
            })?;
            text.to_lowercase()
        }
        None => gen::format_mac(gen::next_mac(wifi, 1)),
    };

    let model_number = spec
        .model_number
        .clone()
        .unwrap_or_else(|| drawn_model_number.to_string());
    let storage_gb = spec.storage_gb.unwrap_or(drawn_storage);
    let battery_percent = spec.battery_percent.unwrap_or(drawn_battery);
    if battery_percent > 100 {
        return Err(invalid(
            "battery_percent",
            format!("{battery_percent} is above 100"),
        ));
    }
    let nand_info_bytes = spec.nand_info_bytes.unwrap_or(0);
    if nand_info_bytes > MAX_NAND_INFO_BYTES {
        return Err(invalid(
            "nand_info_bytes",
            format!("{nand_info_bytes} is above {MAX_NAND_INFO_BYTES}"),
        ));
    }

    let activation_state = spec
        .activation_state
        .unwrap_or(ActivationState::Unactivated);
    let passcode_locked = spec.passcode_locked.unwrap_or(false);
    if passcode_locked && activation_state == ActivationState::Unactivated {
        return Err(invalid(
            "passcode_locked",
            "needs activation_state = \"Activated\" (an erased phone has no passcode)".to_string(),
        ));
    }
    let find_my = spec.find_my.unwrap_or(false);
    if find_my && activation_state == ActivationState::Unactivated {
        return Err(invalid(
            "find_my",
            "needs activation_state = \"Activated\" (an erased phone is signed out; its Activation Lock is `lock`)".to_string(),
        ));
    }
    let cloud_configuration = resolve_cloud_configuration(spec, activation_state, &invalid)?;
    let plug_periods = resolve_plug_periods(spec, &invalid)?;
    if let Some(ms) = spec.leave_when_idle_ms {
        check_leave_when_idle(ms).map_err(|reason| invalid("leave_when_idle_ms", reason))?;
    }
    for (field, delay) in [
        ("activation_info_delay_ms", spec.activation_info_delay_ms),
        ("handle_record_delay_ms", spec.handle_record_delay_ms),
        ("activated_after_ms", spec.activated_after_ms),
    ] {
        if delay.is_some_and(|d| d > MAX_COMMAND_DELAY_MS) {
            return Err(invalid(
                field,
                format!("at most {MAX_COMMAND_DELAY_MS} ms (10 minutes)"),
            ));
        }
    }
    if spec.activation_session_lifetime_ms == Some(0) {
        return Err(invalid(
            "activation_session_lifetime_ms",
            "must be positive (leave it out for a session without an end)".to_string(),
        ));
    }
    // Drawn last so worlds written before locks existed keep every other value.
    let generated_code = gen::bypass_code(&mut rng);
    let lock = spec.lock.unwrap_or_default();
    let codes = match &spec.codes {
        Some(list) => parse_codes(list, &invalid, "codes")?,
        None if lock == Lock::Mdm => vec![generated_code],
        None => Vec::new(),
    };
    if lock != Lock::Mdm && !codes.is_empty() {
        return Err(invalid(
            "codes",
            format!("only an `mdm` lock is released by codes (lock = \"{lock}\"); list the MDM's codes Apple rejects as stale_codes"),
        ));
    }
    let stale_codes = parse_codes(
        spec.stale_codes.as_deref().unwrap_or_default(),
        &invalid,
        "stale_codes",
    )?;
    if let Some(i) = stale_codes.iter().position(|c| codes.contains(c)) {
        return Err(invalid(
            "stale_codes",
            format!("entry {} is also in codes", i + 1),
        ));
    }
    let owner_hint = spec
        .owner_hint
        .clone()
        .unwrap_or_else(|| default_owner_hint(lock).to_string());
    let enrollments =
        mdm::resolve_enrollments(seed, index, spec, lock, &codes, &stale_codes, &invalid)?;

    let location_id = spec.location_id.unwrap_or_else(|| default_location(index));
    let product_id = spec.product_id.unwrap_or(IPHONE_PRODUCT_ID);
    if product_id > 0xffff {
        return Err(invalid(
            "product_id",
            format!("{product_id:#x} is not a 16-bit USB id"),
        ));
    }

    Ok(DeviceProfile {
        udid,
        serial,
        product_type: model.product_type.to_string(),
        product_version,
        build_version,
        hardware_model: spec
            .hardware_model
            .clone()
            .unwrap_or_else(|| model.hardware_model.to_string()),
        hardware_platform: model.hardware_platform.to_string(),
        marketing_name: model.marketing_name().to_string(),
        model_number,
        region_info: spec
            .region_info
            .clone()
            .unwrap_or_else(|| "LL/A".to_string()),
        regulatory_model_number: model.regulatory_model_number.to_string(),
        device_class: spec
            .device_class
            .clone()
            .unwrap_or_else(|| "iPhone".to_string()),
        device_name: spec
            .device_name
            .clone()
            .unwrap_or_else(|| "iPhone".to_string()),
        cpu_architecture: model.cpu_architecture.to_string(),
        chip_id: model.chip_id,
        board_id: model.board_id,
        unique_chip_id,
        die_id,
        meid: Some(imei[..14].to_string()),
        imei: Some(imei),
        imei2,
        wifi_address: gen::format_mac(wifi),
        bluetooth_address,
        ethernet_address: gen::format_mac(gen::next_mac(wifi, 2)),
        mlb_serial,
        storage_gb,
        battery_percent,
        nand_info_bytes,
        location_id,
        product_id,
        activation_state,
        trust: spec.trust.unwrap_or(Trust::Accept),
        trust_delay_ms: spec.trust_delay_ms.unwrap_or(0),
        passcode_locked,
        pair_escrow_bag: spec.pair_escrow_bag.unwrap_or(true),
        tls: spec.tls,
        plug_periods,
        leave_when_idle_ms: spec.leave_when_idle_ms,
        activation_info_delay_ms: spec.activation_info_delay_ms.unwrap_or(0),
        handle_record_delay_ms: spec.handle_record_delay_ms.unwrap_or(0),
        activation_session_lifetime_ms: spec.activation_session_lifetime_ms,
        activated_after_ms: spec.activated_after_ms.unwrap_or(0),
        hostile: spec.hostile.clone(),
        lock,
        codes,
        stale_codes,
        owner_hint,
        enrollments,
        find_my,
        cloud_configuration,
    })
}

/// The phone's cloud configuration: present when the world sets any of its fields.
fn resolve_cloud_configuration(
    spec: &DeviceSpec,
    activation_state: ActivationState,
    invalid: &dyn Fn(&'static str, String) -> WorldError,
) -> Result<Option<CloudConfig>, WorldError> {
    let fields = [
        ("supervised", spec.supervised.is_some()),
        ("organization", spec.organization.is_some()),
        ("configuration_url", spec.configuration_url.is_some()),
        ("mdm_unremovable", spec.mdm_unremovable.is_some()),
    ];
    let Some((first, _)) = fields.into_iter().find(|(_, set)| *set) else {
        return Ok(None);
    };
    if activation_state == ActivationState::Unactivated {
        return Err(invalid(
            first,
            "needs activation_state = \"Activated\" (an erased phone has no cloud configuration until Setup Assistant downloads one)".to_string(),
        ));
    }
    if let Some(org) = &spec.organization {
        if org.trim().is_empty()
            || org.chars().any(char::is_control)
            || org.chars().count() > MAX_ORGANIZATION_CHARS
        {
            return Err(invalid(
                "organization",
                format!(
                    "must be 1 to {MAX_ORGANIZATION_CHARS} characters without control characters"
                ),
            ));
        }
    }
    if let Some(url) = &spec.configuration_url {
        let valid = url.starts_with("https://")
            && url.len() > "https://".len()
            && url.len() <= MAX_CONFIGURATION_URL_LEN
            && !url.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            return Err(invalid(
                "configuration_url",
                format!("{url:?} is not an https:// address of at most {MAX_CONFIGURATION_URL_LEN} bytes"),
            ));
        }
    }
    let mdm_unremovable = spec.mdm_unremovable.unwrap_or(false);
    if mdm_unremovable && spec.configuration_url.is_none() {
        return Err(invalid(
            "mdm_unremovable",
            "needs a configuration_url (the MDM that cannot be removed)".to_string(),
        ));
    }
    Ok(Some(CloudConfig {
        supervised: spec.supervised.unwrap_or(false),
        organization: spec.organization.clone(),
        configuration_url: spec.configuration_url.clone(),
        mdm_unremovable,
    }))
}

/// A UDID as usbmuxd reports it: 40 hex digits, or 8 + `-` + 16 hex digits.
fn validate_udid(udid: &str) -> Result<(), String> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = match udid.split_once('-') {
        None => udid.len() == 40 && hex(udid),
        Some((a, b)) => a.len() == 8 && b.len() == 16 && hex(a) && hex(b),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{udid:?} is neither 40 hex digits nor the 00008030-001A2C3E0E90802E form"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn profiles(n: usize, seed: u64) -> Vec<DeviceProfile> {
        default_world(n, seed)
            .resolve()
            .expect("default world resolves")
    }

    #[test]
    fn default_world_is_deterministic() {
        assert_eq!(default_world(8, 42), default_world(8, 42));
        assert_eq!(profiles(8, 42), profiles(8, 42));
        assert_ne!(profiles(8, 42)[0].udid, profiles(8, 43)[0].udid);
    }

    #[test]
    fn smaller_world_is_a_prefix_of_a_larger_one() {
        let small = profiles(3, 9);
        let large = profiles(64, 9);
        assert_eq!(small[..], large[..3]);
    }

    #[test]
    fn default_world_identities_are_realistic_and_unique() {
        let all = profiles(64, 1);
        let udids: HashSet<_> = all.iter().map(|p| p.udid.clone()).collect();
        let serials: HashSet<_> = all.iter().map(|p| p.serial.clone()).collect();
        let locations: HashSet<_> = all.iter().map(|p| p.location_id).collect();
        assert_eq!(udids.len(), 64);
        assert_eq!(serials.len(), 64);
        assert_eq!(locations.len(), 64);
        for p in &all {
            let model = catalog::model(&p.product_type).expect("catalogue model");
            if model.legacy_udid {
                assert_eq!(p.udid.len(), 40, "{}", p.udid);
            } else {
                assert_eq!(
                    p.udid,
                    format!("{:08X}-{:016X}", model.chip_id, p.unique_chip_id)
                );
            }
            let serial_len = match model.serial_style {
                catalog::SerialStyle::Legacy => 12,
                catalog::SerialStyle::Randomized => 10,
            };
            assert_eq!(p.serial.len(), serial_len, "{}", p.serial);
            let imei = p.imei.as_deref().expect("iPhones are cellular");
            assert!(gen::imei_is_valid(imei), "{imei}");
            assert!(imei.starts_with(model.imei_tac));
            if let Some(imei2) = &p.imei2 {
                assert!(gen::imei_is_valid(imei2), "{imei2}");
            }
            assert!(gen::parse_mac(&p.wifi_address).is_some());
            assert_eq!(p.wifi_address, p.wifi_address.to_lowercase());
            assert_eq!(p.device_name, "iPhone");
            assert_eq!(p.device_class, "iPhone");
            assert!(model.release(&p.product_version).is_some());
            assert_eq!(
                model.release(&p.product_version).map(|r| r.build),
                Some(p.build_version.as_str())
            );
            assert_eq!(p.product_id, 0x12a8);
        }
    }

    #[test]
    fn default_world_mixes_states() {
        let all = profiles(4, 5);
        assert!(all
            .iter()
            .any(|p| p.activation_state == ActivationState::Unactivated));
        assert!(all
            .iter()
            .any(|p| p.activation_state == ActivationState::Activated
                && p.trust == Trust::Accept
                && p.trust_delay_ms == 0));
        assert!(all.iter().all(|p| !p.passcode_locked));
        // The first three are usable by tools that pair once without retrying.
        assert!(all[..3]
            .iter()
            .all(|p| p.activation_state == ActivationState::Unactivated || p.trust_delay_ms == 0));
        // Every activation case of the station.
        let unactivated = |p: &&DeviceProfile| p.activation_state == ActivationState::Unactivated;
        assert!(all.iter().filter(unactivated).any(|p| p.lock == Lock::None));
        assert!(all
            .iter()
            .filter(unactivated)
            .any(|p| p.lock == Lock::Mdm && !p.codes.is_empty() && !p.stale_codes.is_empty()));
        assert!(all.iter().filter(unactivated).any(|p| p.lock == Lock::User));
        for n in [4, 9, 23] {
            for seed in [0, 1, 99] {
                let all = profiles(n, seed);
                assert!(all.iter().filter(unactivated).any(|p| p.lock == Lock::Mdm));
                assert!(all.iter().filter(unactivated).any(|p| p.lock == Lock::User));
                assert!(all.iter().filter(unactivated).any(|p| p.lock == Lock::None));
                assert!(all
                    .iter()
                    .any(|p| p.activation_state == ActivationState::Activated));
            }
        }
    }

    #[test]
    fn codes_are_generated_for_mdm_phones_and_validated() {
        let w = World::from_toml(
            "seed = 4\n[[device]]\nlock = \"mdm\"\n[[device]]\nlock = \"user\"\n[[device]]\n",
            "t",
        )
        .expect("parses");
        let all = w.resolve().expect("resolves");
        assert_eq!(all[0].codes.len(), 1);
        assert!(BypassCode::parse(&all[0].codes[0]).is_ok());
        assert_eq!(all[0].codes, w.resolve().expect("again")[0].codes, "stable");
        assert!(all[1].codes.is_empty() && all[2].codes.is_empty());
        assert_eq!(all[2].lock, Lock::None);
        assert!(all[0].owner_hint.contains('@') && all[1].owner_hint.contains('@'));

        // Pinning a lock changes no other generated value.
        let plain = World::from_toml("seed = 4\n[[device]]\n", "t")
            .expect("parses")
            .resolve()
            .expect("resolves");
        assert_eq!(plain[0].serial, all[0].serial);
        assert_eq!(plain[0].imei, all[0].imei);

        // Codes are normalised to the dashed form.
        let w = World::from_toml(
            "[[device]]\nlock = \"mdm\"\ncodes = [\"3um43 puyvy qyd1 uvcc hehj fka4\"]\n",
            "t",
        )
        .expect("parses");
        assert_eq!(
            w.resolve().expect("resolves")[0].codes,
            ["3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4"]
        );

        let cases = [
            ("lock = \"mdm\"\ncodes = [\"3UM43-PUYVY\"]", "codes"),
            ("lock = \"user\"\ncodes = [\"3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4\"]", "codes"),
            ("codes = [\"3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4\"]", "codes"),
            ("lock = \"mdm\"\nstale_codes = [\"nope\"]", "stale_codes"),
            (
                "lock = \"mdm\"\ncodes = [\"3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4\"]\nstale_codes = [\"3um43puyvyqyd1uvcchehjfka4\"]",
                "stale_codes",
            ),
        ];
        for (body, field) in cases {
            let world = World::from_toml(&format!("[[device]]\n{body}\n"), "t").expect("parses");
            let err = world.resolve().expect_err(body);
            assert!(
                matches!(&err, WorldError::Invalid { field: f, .. } if *f == field),
                "{body}: {err}"
            );
            assert!(!err.to_string().contains("PUYVY"), "no code in {err}");
        }
        let err = World::from_toml("[[device]]\nlock = \"stolen\"\n", "t").expect_err("bad lock");
        assert!(err.to_string().contains("stolen"), "{err}");
    }

    #[test]
    fn enrollments_are_checked_without_naming_codes() {
        let good = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
        let stale = "TF27L-31WN1-E6FH-DMAM-52X5-NFV0";
        let other = "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86";
        let mdm = format!("lock = \"mdm\"\ncodes = [\"{good}\"]\nstale_codes = [\"{stale}\"]\n");
        let cases = [
            // A code Apple does not know about (neither good nor stale).
            format!("{mdm}[[device.enrollments]]\ncode = \"{other}\"\n"),
            // A user-locked phone's MDM can only hold codes Apple rejects.
            format!("lock = \"user\"\n[[device.enrollments]]\ncode = \"{good}\"\n"),
            format!("{mdm}[[device.enrollments]]\ncode = \"3UM43\"\n"),
            format!("{mdm}[[device.enrollments]]\nmdm = \"kandji\"\ncode = \"{good}\"\n"),
            format!("{mdm}[[device.enrollments]]\ndevice_based_albc = \"{good}\"\n"),
            format!("{mdm}intune = false\n[[device.enrollments]]\ncode = \"{good}\"\n"),
            format!("{mdm}[[device.enrollments]]\nid = \"not-a-guid\"\n"),
            format!("{mdm}[[device.enrollments]]\nenrolled_at = \"yesterday\"\n"),
        ];
        for body in cases {
            let world = World::from_toml(&format!("[[device]]\n{body}"), "t").expect("parses");
            let err = world.resolve().expect_err(&body);
            assert!(
                matches!(
                    &err,
                    WorldError::Invalid {
                        field: "enrollments",
                        ..
                    }
                ),
                "{body}: {err}"
            );
            for code in [good, stale, other] {
                assert!(!err.to_string().contains(&code[..11]), "no code in {err}");
            }
        }
        let err = World::from_toml("[[device]]\n[[device.enrollments]]\nmdm = \"jamf\"\n", "t")
            .expect_err("unknown MDM");
        assert!(err.to_string().contains("jamf"), "{err}");

        // Switches: an `mdm` phone kept out of Intune, a clean phone put in Kandji.
        let w = World::from_toml(
            "[[device]]\nlock = \"mdm\"\nintune = false\n[[device]]\nkandji = true\n",
            "t",
        )
        .expect("parses");
        let all = w.resolve().expect("resolves");
        assert!(all[0].enrollments.is_empty());
        assert_eq!(all[1].enrollments.len(), 1);
        assert_eq!(all[1].enrollments[0].mdm, Mdm::Kandji);
        assert!(
            all[1].enrollments[0].device_based_albc.is_some(),
            "harmless"
        );
        // Pinned worlds keep an `mdm` phone out of Intune with an empty list.
        let again = World::from_toml(&w.pinned().expect("pinned").to_toml(), "p")
            .expect("reparse")
            .resolve()
            .expect("resolves");
        assert_eq!(again, all);

        // The same id twice.
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let text = format!(
            "[[device]]\nintune = true\n[[device]]\n[[device.enrollments]]\nid = \"{id}\"\n[[device]]\n[[device.enrollments]]\nid = \"{id}\"\n"
        );
        let err = World::from_toml(&text, "t")
            .expect("parses")
            .resolve()
            .expect_err("duplicate");
        assert!(
            matches!(
                err,
                WorldError::Duplicate {
                    field: "enrollment id",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn mdm_tables_are_checked() {
        let w = World::from_toml(
            "[intune]\ntenant = \"contoso.example\"\npage_size = 5\nignore_filters = true\n\
             permissions = [\"DeviceManagementManagedDevices.Read.All\"]\n\
             [intune.graph]\nthrottle_next = 2\nretry_after_secs = 3\n\
             [kandji]\nlookalikes = true\n[kandji.api]\nfail_next = 1\n",
            "t",
        )
        .expect("parses");
        w.resolve().expect("valid");
        assert_eq!(w.intune.graph.throttle_next, 2);
        assert!(w.kandji.lookalikes);
        let again = World::from_toml(&w.to_toml(), "printed").expect("reparse");
        assert_eq!(again, w);
        for (text, table, field) in [
            (
                "[intune.graph]\nfailure_status = 404\n",
                "intune.graph",
                "failure_status",
            ),
            (
                "[intune.token]\nthrottle_rate = 2.0\n",
                "intune.token",
                "throttle_rate",
            ),
            ("[intune]\npage_size = 0\n", "intune", "page_size"),
            ("[intune]\ntenant = \"a/b\"\n", "intune", "tenant"),
            (
                "[intune]\nclient_secret = \"has space\"\n",
                "intune",
                "client_secret",
            ),
            (
                "[kandji.api]\nfail_rate = -1.0\n",
                "kandji.api",
                "fail_rate",
            ),
        ] {
            let err = World::from_toml(text, "t")
                .expect("parses")
                .resolve()
                .expect_err(text);
            assert!(
                matches!(&err, WorldError::InvalidMdm { table: t, field: f, .. } if *t == table && *f == field),
                "{text}: {err}"
            );
            assert!(!err.to_string().contains("has space"), "{err}");
        }
        let err = World::from_toml("[intune]\npage_sise = 3\n", "t").expect_err("unknown");
        assert!(err.to_string().contains("page_sise"), "{err}");
    }

    #[test]
    fn activation_server_table_is_checked() {
        let w = World::from_toml(
            "[activation_server]\nlatency_ms = 50\nfailure_status = 502\n\
             [activation_server.device_activation]\nfail_next = 2\nfail_rate = 0.5\n",
            "t",
        )
        .expect("parses");
        assert_eq!(w.activation_server.latency_ms, 50);
        assert_eq!(w.activation_server.failure_status(), 502);
        assert_eq!(w.activation_server.device_activation.fail_next, 2);
        assert!(w.activation_server.drm_handshake.is_default());
        w.resolve().expect("valid");
        let again = World::from_toml(&w.to_toml(), "printed").expect("reparse");
        assert_eq!(again, w);
        for (text, field) in [
            (
                "[activation_server]\nfailure_status = 404\n",
                "failure_status",
            ),
            (
                "[activation_server.drm_handshake]\nfail_rate = 1.5\n",
                "drm_handshake.fail_rate",
            ),
        ] {
            let err = World::from_toml(text, "t")
                .expect("parses")
                .resolve()
                .expect_err(text);
            assert!(
                matches!(&err, WorldError::InvalidServer { field: f, .. } if *f == field),
                "{err}"
            );
        }
        let err = World::from_toml("[activation_server]\nlatncy_ms = 1\n", "t")
            .expect_err("unknown field");
        assert!(err.to_string().contains("latncy_ms"), "{err}");
    }

    /// `[[activation_server.window]]` and `[[kandji.api.window]]` (the soak's stretches of
    /// slow, garbage or failing answers): parsed, printed back, checked.
    #[test]
    fn fault_windows_are_read_and_checked() {
        let w = World::from_toml(
            "[[activation_server.window]]\nfrom_ms = 100\nuntil_ms = 200\nanswer = \"slow\"\nlatency_ms = 5000\n\
             [[activation_server.window]]\nfrom_ms = 300\nuntil_ms = 400\nanswer = \"garbage\"\n\
             [[kandji.api.window]]\nfrom_ms = 0\nuntil_ms = 60000\nanswer = \"fail\"\n",
            "t",
        )
        .expect("parses");
        assert_eq!(w.activation_server.windows.len(), 2);
        assert_eq!(w.activation_server.windows[0].answer, WindowAnswer::Slow);
        assert_eq!(w.activation_server.windows[1].answer, WindowAnswer::Garbage);
        assert_eq!(w.kandji.api.windows[0].answer, WindowAnswer::Fail);
        let at = |ms| Duration::from_millis(ms);
        let windows = &w.activation_server.windows;
        assert_eq!(FaultWindow::active(windows, at(99)), None);
        assert_eq!(FaultWindow::active(windows, at(100)), Some(windows[0]));
        assert_eq!(FaultWindow::active(windows, at(200)), None);
        assert_eq!(FaultWindow::active(windows, at(399)), Some(windows[1]));
        w.resolve().expect("valid");
        let again = World::from_toml(&w.to_toml(), "printed").expect("reparse");
        assert_eq!(again, w);
        for text in [
            "[[activation_server.window]]\nfrom_ms = 200\nuntil_ms = 100\nanswer = \"fail\"\n",
            "[[activation_server.window]]\nfrom_ms = 0\nuntil_ms = 100\nanswer = \"slow\"\n",
        ] {
            let err = World::from_toml(text, "t")
                .expect("parses")
                .resolve()
                .expect_err(text);
            assert!(
                matches!(
                    &err,
                    WorldError::InvalidServer {
                        field: "window",
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = World::from_toml(
            "[[kandji.api.window]]\nfrom_ms = 5\nuntil_ms = 5\nanswer = \"fail\"\n",
            "t",
        )
        .expect("parses")
        .resolve()
        .expect_err("empty window");
        assert!(
            matches!(
                &err,
                WorldError::InvalidMdm {
                    field: "window",
                    ..
                }
            ),
            "{err}"
        );
        let err = World::from_toml(
            "[[kandji.api.window]]\nfrom_ms = 0\nuntil_ms = 5\nanswer = \"late\"\n",
            "t",
        )
        .expect_err("unknown answer");
        assert!(err.to_string().contains("late"), "{err}");
    }

    #[test]
    fn printed_default_world_reloads_identically() {
        let world = default_world(5, 77);
        let text = world.to_toml();
        let again = World::from_toml(&text, "printed").expect("reload");
        assert_eq!(
            again.resolve().expect("resolve"),
            world.resolve().expect("resolve")
        );
    }

    #[test]
    fn example_world_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("worlds/example.toml");
        let world = World::load(&path).expect("example.toml parses");
        let devices = world.resolve().expect("example.toml resolves");
        assert!(devices.len() >= 6);
        assert!(devices.iter().any(|d| d.trust == Trust::Deny));
        assert!(devices.iter().any(|d| d.trust == Trust::Pending));
        assert!(devices.iter().any(|d| d.passcode_locked));
        assert!(devices.iter().any(|d| d.find_my));
        assert!(devices.iter().any(|d| d
            .cloud_configuration
            .as_ref()
            .is_some_and(|c| c.supervised && c.organization.is_some())));
        assert!(devices.iter().any(|d| !d.plugged_at_start()));
        assert!(devices
            .iter()
            .any(|d| d.plug_schedule().iter().any(|(_, plug)| !plug)));
        assert!(devices.iter().any(|d| d.plug_periods.len() > 1));
        assert!(devices.iter().any(|d| d.leave_when_idle_ms == Some(5000)));
        assert!(devices
            .iter()
            .any(|d| d.lock == Lock::Mdm && d.codes.len() == 2));
        assert!(devices
            .iter()
            .any(|d| d.lock == Lock::Mdm && !d.stale_codes.is_empty()));
        assert!(devices.iter().any(|d| d.lock == Lock::User));
        let intune = |d: &DeviceProfile| {
            d.enrollments
                .iter()
                .filter(|e| e.mdm == Mdm::Intune)
                .count()
        };
        assert!(devices.iter().any(|d| intune(d) == 2));
        assert!(devices.iter().any(|d| d
            .enrollments
            .iter()
            .any(|e| e.mdm == Mdm::Intune && e.code.is_none())));
        assert!(devices.iter().any(|d| intune(d) == 0
            && d.enrollments.iter().any(|e| e.mdm == Mdm::Kandji
                && e.device_based_albc.is_some()
                && e.user_based_albc.is_some())));
        assert!(devices
            .iter()
            .filter(|d| d.lock != Lock::Mdm)
            .all(|d| d.enrollments.is_empty()));
        let first = &devices[0];
        assert_eq!(first.udid, "00008030-001A2C3E0E90802E");
        assert_eq!(first.product_type, "iPhone12,1");
        assert_eq!(first.build_version, "21H16");
    }

    #[test]
    fn pinned_world_resolves_to_the_same_phones() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("worlds/example.toml");
        let world = World::load(&path).expect("example.toml parses");
        let pinned = world.pinned().expect("pinned");
        assert!(pinned
            .devices
            .iter()
            .all(|d| d.serial.is_some() && d.imei.is_some()));
        let reparsed = World::from_toml(&pinned.to_toml(), "pinned").expect("reparse");
        assert_eq!(
            reparsed.resolve().expect("resolve"),
            world.resolve().expect("resolve")
        );
    }

    #[test]
    fn plug_periods_make_an_ordered_schedule_and_pin() {
        let text = "seed = 1\n\n[[device]]\n\n[[device]]\nplug_at_ms = 100\nunplug_at_ms = 200\n\n\
                    [[device]]\nplug_periods = [{ unplug_at_ms = 50 }, { plug_at_ms = 80, unplug_at_ms = 90 }, { plug_at_ms = 120 }]\n";
        let world = World::from_toml(text, "t").expect("parses");
        let phones = world.resolve().expect("resolves");
        assert!(phones[0].plugged_at_start());
        assert_eq!(phones[0].plug_schedule(), vec![]);
        assert!(!phones[1].plugged_at_start());
        assert_eq!(phones[1].plug_schedule(), vec![(100, true), (200, false)]);
        assert_eq!(
            phones[1].single_plug_period(),
            Some(PlugPeriod {
                plug_at_ms: Some(100),
                unplug_at_ms: Some(200)
            })
        );
        assert!(phones[2].plugged_at_start());
        assert_eq!(
            phones[2].plug_schedule(),
            vec![(50, false), (80, true), (90, false), (120, true)]
        );
        assert_eq!(phones[2].single_plug_period(), None);
        // Pinned: one period stays in the old fields, several in plug_periods.
        let pinned = world.pinned().expect("pin");
        assert_eq!(pinned.devices[1].plug_at_ms, Some(100));
        assert_eq!(pinned.devices[1].plug_periods, None);
        assert_eq!(pinned.devices[2].plug_at_ms, None);
        assert_eq!(
            pinned.devices[2].plug_periods.as_ref().map(Vec::len),
            Some(3)
        );
        let reparsed = World::from_toml(&pinned.to_toml(), "p").expect("reparse");
        assert_eq!(reparsed.resolve().expect("resolve"), phones);
    }

    #[test]
    fn plug_periods_are_capped() {
        let periods: Vec<String> = (0..=MAX_PLUG_PERIODS as u64)
            .map(|i| {
                format!(
                    "{{ plug_at_ms = {}, unplug_at_ms = {} }}",
                    2 * i + 1,
                    2 * i + 2
                )
            })
            .collect();
        let text = format!("[[device]]\nplug_periods = [{}]\n", periods.join(", "));
        let world = World::from_toml(&text, "t").expect("parses");
        let err = world.resolve().expect_err("too many periods");
        assert!(
            matches!(
                &err,
                WorldError::Invalid {
                    field: "plug_periods",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn nand_info_bytes_resolve_pin_and_are_capped() {
        let world = World::from_toml("seed = 1\n\n[[device]]\nnand_info_bytes = 70000\n", "t")
            .expect("parses");
        let phones = world.resolve().expect("resolves");
        assert_eq!(phones[0].nand_info_bytes, 70000);
        let reparsed =
            World::from_toml(&world.pinned().expect("pin").to_toml(), "p").expect("reparse");
        assert_eq!(reparsed.resolve().expect("resolves"), phones);
        let too_big = format!(
            "seed = 1\n\n[[device]]\nnand_info_bytes = {}\n",
            MAX_NAND_INFO_BYTES + 1
        );
        let err = World::from_toml(&too_big, "t")
            .and_then(|w| w.resolve())
            .expect_err("over the cap");
        assert!(err.to_string().contains("nand_info_bytes"), "{err}");
    }

    #[test]
    fn find_my_and_the_cloud_configuration_resolve_and_pin() {
        let text = "seed = 4\n[[device]]\nactivation_state = \"Activated\"\nfind_my = true\n[[device]]\nactivation_state = \"Activated\"\nsupervised = true\norganization = \"Acme\"\n[[device]]\nactivation_state = \"Activated\"\nconfiguration_url = \"https://mdm.acme.test/enroll\"\nmdm_unremovable = true\n[[device]]\n";
        let world = World::from_toml(text, "t").expect("parses");
        let devices = world.resolve().expect("resolves");
        assert!(devices[0].find_my);
        assert_eq!(devices[0].cloud_configuration, None);
        assert_eq!(
            devices[1].cloud_configuration,
            Some(CloudConfig {
                supervised: true,
                organization: Some("Acme".into()),
                configuration_url: None,
                mdm_unremovable: false,
            })
        );
        assert_eq!(
            devices[2].cloud_configuration,
            Some(CloudConfig {
                supervised: false,
                organization: None,
                configuration_url: Some("https://mdm.acme.test/enroll".into()),
                mdm_unremovable: true,
            })
        );
        assert!(!devices[3].find_my);
        assert_eq!(devices[3].cloud_configuration, None);
        let pinned = world.pinned().expect("pinned");
        assert_eq!(pinned.resolve().expect("resolves"), devices);
    }

    #[test]
    fn the_default_world_has_a_supervised_phone_and_a_find_my_phone() {
        let devices = default_world(10, 5).resolve().expect("resolves");
        let find_my: Vec<usize> = (0..10).filter(|&i| devices[i].find_my).collect();
        assert_eq!(find_my, vec![4]);
        let supervised: Vec<usize> = (0..10)
            .filter(|&i| devices[i].cloud_configuration.is_some())
            .collect();
        assert_eq!(supervised, vec![1]);
        assert_eq!(
            devices[1]
                .cloud_configuration
                .as_ref()
                .and_then(|c| c.organization.as_deref()),
            Some(DEFAULT_ORGANIZATION)
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = World::from_toml("[[device]]\nudid = \"x\"\ncolour = \"red\"\n", "t.toml")
            .expect_err("unknown field");
        let text = err.to_string();
        assert!(text.contains("colour"), "{text}");
        assert!(text.contains("t.toml"), "{text}");
        let err = World::from_toml("sead = 3\n", "t.toml").expect_err("unknown top-level field");
        assert!(err.to_string().contains("sead"), "{err}");
    }

    #[test]
    fn bad_values_are_reported_with_their_field() {
        let cases = [
            ("imei = \"490154203237517\"", "imei"),
            ("udid = \"not-a-udid\"", "udid"),
            ("product_type = \"iPhone99,1\"", "product_type"),
            (
                "product_type = \"iPhone12,1\"\nproduct_version = \"9.0\"",
                "product_version",
            ),
            ("passcode_locked = true", "passcode_locked"),
            ("plug_at_ms = 500\nunplug_at_ms = 100", "unplug_at_ms"),
            ("plug_at_ms = 500\nunplug_at_ms = 500", "unplug_at_ms"),
            ("plug_periods = []", "plug_periods"),
            (
                "plug_at_ms = 5\nplug_periods = [{ unplug_at_ms = 10 }]",
                "plug_periods",
            ),
            (
                "plug_periods = [{ unplug_at_ms = 10 }, { unplug_at_ms = 20 }]",
                "plug_periods",
            ),
            (
                "plug_periods = [{ unplug_at_ms = 10 }, { plug_at_ms = 10 }]",
                "plug_periods",
            ),
            (
                "plug_periods = [{ plug_at_ms = 1 }, { plug_at_ms = 50 }]",
                "plug_periods",
            ),
            (
                "plug_periods = [{ plug_at_ms = 30, unplug_at_ms = 20 }]",
                "plug_periods",
            ),
            ("wifi_address = \"3c:22\"", "wifi_address"),
            (
                "activation_info_delay_ms = 600001",
                "activation_info_delay_ms",
            ),
            ("handle_record_delay_ms = 3600000", "handle_record_delay_ms"),
            ("activated_after_ms = 600001", "activated_after_ms"),
            (
                "activation_session_lifetime_ms = 0",
                "activation_session_lifetime_ms",
            ),
            ("find_my = true", "find_my"),
            ("organization = \"Acme\"", "organization"),
            ("mdm_unremovable = false", "mdm_unremovable"),
            (
                "activation_state = \"Activated\"\norganization = \"\"",
                "organization",
            ),
            (
                "activation_state = \"Activated\"\nconfiguration_url = \"http://mdm.test\"",
                "configuration_url",
            ),
            (
                "activation_state = \"Activated\"\nsupervised = true\nmdm_unremovable = true",
                "mdm_unremovable",
            ),
        ];
        for (body, field) in cases {
            let world = World::from_toml(&format!("[[device]]\n{body}\n"), "t").expect("parses");
            let err = world.resolve().expect_err(body);
            assert!(
                matches!(&err, WorldError::Invalid { field: f, .. } if *f == field),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn duplicates_are_rejected() {
        let text = "[[device]]\nudid = \"00008030-001A2C3E0E90802E\"\n\
                    [[device]]\nudid = \"00008030-001A2C3E0E90802E\"\n";
        let err = World::from_toml(text, "t")
            .expect("parses")
            .resolve()
            .expect_err("duplicate udid");
        assert!(
            matches!(err, WorldError::Duplicate { field: "udid", .. }),
            "{err}"
        );
    }

    #[test]
    fn partial_specs_are_filled_from_the_seed() {
        let text = "seed = 3\n[[device]]\nactivation_state = \"Activated\"\ntrust = \"deny\"\n";
        let a = World::from_toml(text, "t")
            .expect("parses")
            .resolve()
            .expect("resolves");
        let b = World::from_toml(text, "t")
            .expect("parses")
            .resolve()
            .expect("resolves");
        assert_eq!(a, b);
        assert_eq!(a[0].activation_state, ActivationState::Activated);
        assert_eq!(a[0].trust, Trust::Deny);
        assert!(catalog::model(&a[0].product_type).is_some());
    }
}
