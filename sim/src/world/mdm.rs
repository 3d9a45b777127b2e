//! What the organisations' MDMs know about the phones: per phone, its enrolments (Intune
//! records, Kandji devices) and the bypass codes they hold; per world, how the stand-in MDM
//! services are set up (`[intune]`, `[kandji]`) and how they misbehave.
//!
//! Apple's view of a phone (`lock`, `codes`, `stale_codes`) stays the truth: every code an
//! enrolment of a locked phone holds must be one of them, so the ready file's lists tell a
//! test which codes work.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
/// Which Microsoft cloud the stand-in plays: decides the scope a token request must ask for.
pub use station_config::Cloud;
use station_protocol::bypass_code::BypassCode;

use super::{gen, DeviceSpec, Lock, WorldError};

/// Which MDM holds an enrolment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mdm {
    /// A Microsoft Intune managed-device record (Graph `managedDevices`).
    #[default]
    Intune,
    /// A Kandji device.
    Kandji,
}

impl Mdm {
    pub fn as_str(self) -> &'static str {
        match self {
            Mdm::Intune => "intune",
            Mdm::Kandji => "kandji",
        }
    }
}

/// One `[[device.enrollments]]` entry. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrollmentSpec {
    /// `intune` (default) or `kandji`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mdm: Option<Mdm>,
    /// Graph `id` / Kandji `device_id`: a GUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Intune: `activationLockBypassCode` (left out: null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Kandji: the MDM-generated code (org-linked lock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_based_albc: Option<String>,
    /// Kandji: the device-generated code (lock turned on with Find My).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_based_albc: Option<String>,
    /// Intune: the record carries the phone's UDID (default: only the newest record does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udid: Option<bool>,
    /// `YYYY-MM-DDTHH:MM:SSZ` (Intune `enrolledDateTime`, Kandji `first_enrollment`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<String>,
    /// Intune: whether `bypassActivationLock` on this record can reach the phone's lock at
    /// all (default true); what it then does is the world's `[intune] bypass_action`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_releases: Option<bool>,
    /// Intune: the phone is supervised through Automated Device Enrollment (default true).
    /// Without it `bypassActivationLock` is accepted, has no effect, and its
    /// `deviceActionResults` entry ends `notSupported` (docs/mdm.md §1.3, §1.8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ade_supervised: Option<bool>,
}

/// A resolved enrolment (what the stand-in MDM serves). Codes are dashed; test data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub mdm: Mdm,
    pub id: String,
    /// Intune's `activationLockBypassCode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_based_albc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_based_albc: Option<String>,
    /// Intune: the record carries the phone's UDID.
    #[serde(default)]
    pub udid: bool,
    pub enrolled_at: String,
    /// Intune: `bypassActivationLock` on this record can reach the phone's `mdm` lock.
    #[serde(default)]
    pub action_releases: bool,
    /// Intune: supervised through ADE, the action's precondition.
    #[serde(default = "supervised_by_default")]
    pub ade_supervised: bool,
}

fn supervised_by_default() -> bool {
    true
}

impl Enrollment {
    /// Every code this enrolment holds, in the order the MDM hands them out.
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        [&self.code, &self.device_based_albc, &self.user_based_albc]
            .into_iter()
            .filter_map(|c| c.as_deref())
    }

    /// `lastSyncDateTime` / `last_check_in`: after the enrolment, derived from it.
    pub fn last_sync_at(&self) -> String {
        last_sync_after(&self.enrolled_at)
    }

    fn pinned(&self) -> EnrollmentSpec {
        let intune = self.mdm == Mdm::Intune;
        EnrollmentSpec {
            mdm: Some(self.mdm),
            id: Some(self.id.clone()),
            code: self.code.clone(),
            device_based_albc: self.device_based_albc.clone(),
            user_based_albc: self.user_based_albc.clone(),
            udid: intune.then_some(self.udid),
            enrolled_at: Some(self.enrolled_at.clone()),
            action_releases: intune.then_some(self.action_releases),
            ade_supervised: (intune && !self.ade_supervised).then_some(false),
        }
    }
}

/// The `lastSyncDateTime` / `last_check_in` the stand-ins serve for an enrolment made at
/// `enrolled_at` (`YYYY-…`): mid-January of the next year.
pub(crate) fn last_sync_after(enrolled_at: &str) -> String {
    let year: u32 = enrolled_at
        .get(..4)
        .and_then(|y| y.parse().ok())
        .unwrap_or(2025);
    format!("{}-01-15T08:00:00Z", year + 1)
}

/// The pinned form of resolved enrolments (what `station-sim world` prints).
pub(super) fn pinned(list: &[Enrollment]) -> Vec<EnrollmentSpec> {
    list.iter().map(Enrollment::pinned).collect()
}

/// Graph permission needed to read managed devices (one of these).
pub const READ_PERMISSIONS: [&str; 2] = [
    "DeviceManagementManagedDevices.Read.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
];
/// Graph permission `bypassActivationLock` needs.
pub const PRIVILEGED_PERMISSION: &str = "DeviceManagementManagedDevices.PrivilegedOperations.All";

/// How one stand-in HTTP service misbehaves. `throttle_next`/`fail_next` count down first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpFaultSpec {
    /// Added before every answer.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub latency_ms: u64,
    /// The next N requests are answered `429` with `Retry-After`.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub throttle_next: u32,
    /// Each request is throttled with this probability (0.0–1.0), drawn from the seed.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub throttle_rate: f64,
    /// `Retry-After` seconds of a throttled answer; requests before it ends are throttled
    /// too [default 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// The next N requests fail with `failure_status`.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub fail_next: u32,
    /// Each request fails with this probability (0.0–1.0), drawn from the seed.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub fail_rate: f64,
    /// Status of injected failures, 500–599 [default 503].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_status: Option<u16>,
    /// The clients' request budget per second: more in any one second is a violation the
    /// stand-in reports (and `station-sim serve` exits non-zero for) [default: none].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<f64>,
    /// The same per hour [default: none].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_hour: Option<u32>,
    /// Stretches of the run in which every request is answered wrongly (`[[kandji.api.window]]`
    /// and so on), before throttling and failures are decided.
    #[serde(rename = "window", skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<super::FaultWindow>,
}

/// `Retry-After` of a throttled answer unless the world says otherwise.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 1;

impl HttpFaultSpec {
    pub fn is_default(&self) -> bool {
        *self == HttpFaultSpec::default()
    }

    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs.unwrap_or(DEFAULT_RETRY_AFTER_SECS)
    }

    pub fn failure_status(&self) -> u16 {
        self.failure_status.unwrap_or(super::DEFAULT_FAILURE_STATUS)
    }

    fn validate(&self, table: &'static str) -> Result<(), WorldError> {
        let invalid = |field: &'static str, reason: String| WorldError::InvalidMdm {
            table,
            field,
            reason,
        };
        if let Some(status) = self.failure_status {
            if !(500..=599).contains(&status) {
                return Err(invalid(
                    "failure_status",
                    format!("{status} is not a 5xx status"),
                ));
            }
        }
        for (field, rate) in [
            ("throttle_rate", self.throttle_rate),
            ("fail_rate", self.fail_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid(field, format!("{rate} is not between 0.0 and 1.0")));
            }
        }
        if self
            .max_requests_per_second
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return Err(invalid(
                "max_requests_per_second",
                "must be a positive number".to_string(),
            ));
        }
        if self.max_requests_per_hour == Some(0) {
            return Err(invalid(
                "max_requests_per_hour",
                "must be at least 1".to_string(),
            ));
        }
        for window in &self.windows {
            window
                .validate()
                .map_err(|reason| invalid("window", reason))?;
        }
        if self.retry_after_secs.is_some_and(|s| s > 3600) {
            return Err(invalid(
                "retry_after_secs",
                "is over an hour: no test waits that long".to_string(),
            ));
        }
        Ok(())
    }
}

/// `[intune]`: the stand-in Microsoft Entra token endpoint and Graph. Left-out identities
/// and the secret are generated from the world's seed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntuneSpec {
    /// Directory (tenant) id or verified domain [default: a GUID].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Application (client) id of the station's app registration [default: a GUID].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The app's client secret (test data) [default: generated].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// PEM certificate (or public key) whose RSA key may sign client assertions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_file: Option<std::path::PathBuf>,
    /// `global` (default), `usgov`, `dod`, `china`: the scope tokens must be asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Cloud>,
    /// Application permissions granted [default: Read.All and PrivilegedOperations.All].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// `expires_in` of issued tokens [default 3599].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_lifetime_secs: Option<u64>,
    /// Records per list page without `$top` [default 3, so paging shows up].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    /// Ignore every `$filter`, as Graph does with filters it does not support.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_filters: bool,
    /// `bypassActivationLock` takes effect this long after it is accepted.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub bypass_delay_ms: u64,
    /// What `bypassActivationLock` does, as Microsoft's two pages describe it (docs/mdm.md
    /// §1.3): `submits_stored_code` (default) or `refreshes_code`.
    #[serde(skip_serializing_if = "BypassActionReading::is_default")]
    pub bypass_action: BypassActionReading,
    /// Refuse RS256 client assertions (and SHA-1 `x5t`), as a tenant that only takes Entra's
    /// current PS256 + `x5t#S256` form would (docs/mdm.md §1.5).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strict_assertions: bool,
    /// Faults of Graph.
    #[serde(skip_serializing_if = "HttpFaultSpec::is_default")]
    pub graph: HttpFaultSpec,
    /// Faults of the token endpoint.
    #[serde(skip_serializing_if = "HttpFaultSpec::is_default")]
    pub token: HttpFaultSpec,
}

/// What the stand-in's `bypassActivationLock` does. Microsoft documents it both ways
/// (docs/mdm.md §1.3); the default is the reading under which the action helps less, so a
/// station that works against it also works against the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BypassActionReading {
    /// Intune hands Apple the code the record holds: the lock goes only when that code is
    /// the phone's current one; a record without a code gets nothing released
    /// (memdocs `device-activation-lock-disable.md`, 2025).
    #[default]
    SubmitsStoredCode,
    /// Intune fetches a fresh code from Apple and puts it on the record; the lock stays
    /// until someone uses it. A record that never held a code gets none
    /// (memdocs `troubleshoot-device-actions.md`, 2019).
    RefreshesCode,
}

impl BypassActionReading {
    pub fn is_default(&self) -> bool {
        *self == BypassActionReading::default()
    }
}

pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 3599;
pub const DEFAULT_PAGE_SIZE: u32 = 3;

impl IntuneSpec {
    pub fn is_default(&self) -> bool {
        *self == IntuneSpec::default()
    }

    pub(super) fn validate(&self) -> Result<(), WorldError> {
        let invalid = |field: &'static str, reason: String| WorldError::InvalidMdm {
            table: "intune",
            field,
            reason,
        };
        for (field, value) in [
            ("tenant", &self.tenant),
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
        ] {
            if let Some(v) = value {
                let printable = v.bytes().all(|b| b.is_ascii_graphic());
                if v.is_empty() || v.len() > 256 || !printable {
                    // Never echo the value: it may be the secret.
                    return Err(invalid(
                        field,
                        "must be 1 to 256 printable ASCII characters without spaces".to_string(),
                    ));
                }
            }
        }
        if let Some(tenant) = &self.tenant {
            if tenant.contains(['/', '?', '#', '%']) {
                return Err(invalid(
                    "tenant",
                    format!("{tenant:?} cannot be a URL path segment"),
                ));
            }
        }
        if self.token_lifetime_secs == Some(0) {
            return Err(invalid(
                "token_lifetime_secs",
                "must be at least 1".to_string(),
            ));
        }
        if let Some(size) = self.page_size {
            if !(1..=1000).contains(&size) {
                return Err(invalid(
                    "page_size",
                    format!("{size} is not between 1 and 1000"),
                ));
            }
        }
        self.graph.validate("intune.graph")?;
        self.token.validate("intune.token")
    }
}

/// `[kandji]`: the stand-in Kandji API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KandjiSpec {
    /// The API token (test data) [default: generated].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Also hold a look-alike device per Kandji phone, whose serial contains the phone's
    /// (Kandji's `serial_number` filter is a partial match), listed before it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub lookalikes: bool,
    /// Faults of the API.
    #[serde(skip_serializing_if = "HttpFaultSpec::is_default")]
    pub api: HttpFaultSpec,
}

impl KandjiSpec {
    pub fn is_default(&self) -> bool {
        *self == KandjiSpec::default()
    }

    pub(super) fn validate(&self) -> Result<(), WorldError> {
        if let Some(token) = &self.token {
            if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(WorldError::InvalidMdm {
                    table: "kandji",
                    field: "token",
                    reason: "must be 1 to 256 printable ASCII characters without spaces"
                        .to_string(),
                });
            }
        }
        self.api.validate("kandji.api")
    }
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// The random stream of device `index`'s enrolments: separate from the identity stream so
/// worlds written before MDMs existed keep every value.
fn enrollment_rng(seed: u64, index: usize) -> StdRng {
    gen::device_rng(seed.rotate_left(23) ^ 0xE4B0_11ED_5EED_0001, index)
}

/// A GUID as Graph and Kandji write ids: lower-case, hyphenated.
pub(crate) fn guid(rng: &mut StdRng) -> String {
    let bytes: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Whether `text` is `YYYY-MM-DDTHH:MM:SSZ` with plausible fields.
fn is_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
            && text[r].parse::<u32>().is_ok()
    };
    let num = |r: std::ops::Range<usize>| text.get(r).and_then(|s| s.parse::<u32>().ok());
    b.len() == 20
        && digits(0..4)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && [5..7, 8..10, 11..13, 14..16, 17..19]
            .into_iter()
            .all(digits)
        && num(5..7).is_some_and(|m| (1..=12).contains(&m))
        && num(8..10).is_some_and(|d| (1..=31).contains(&d))
        && num(11..13).is_some_and(|h| h < 24)
        && num(14..16).is_some_and(|m| m < 60)
        && num(17..19).is_some_and(|s| s < 60)
}

fn is_guid(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok() && text.len() == 36
}

/// Values drawn for one enrolment slot, whether or not the spec pins them.
struct Drawn {
    id: String,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
}

fn draw(rng: &mut StdRng) -> Drawn {
    Drawn {
        id: guid(rng),
        month: rng.random_range(1..=12),
        day: rng.random_range(1..=28),
        hour: rng.random_range(8..=17),
        minute: rng.random_range(0..60),
    }
}

/// The enrolments of device `index`: its `enrollments` list, or the defaults its lock and
/// the `intune`/`kandji` switches give (docs/world.md "MDM enrolments").
pub(super) fn resolve_enrollments(
    seed: u64,
    index: usize,
    spec: &DeviceSpec,
    lock: Lock,
    codes: &[String],
    stale_codes: &[String],
    invalid: &dyn Fn(&'static str, String) -> WorldError,
) -> Result<Vec<Enrollment>, WorldError> {
    let mut rng = enrollment_rng(seed, index);
    // A code an enrolment of an unlocked phone may hold: it is never asked for.
    let harmless = gen::bypass_code(&mut rng);

    let entries: Vec<EnrollmentSpec> = match &spec.enrollments {
        Some(list) => {
            if spec.intune.is_some() || spec.kandji.is_some() {
                return Err(invalid(
                    "enrollments",
                    "lists the enrolments itself: leave out `intune` and `kandji`".to_string(),
                ));
            }
            list.clone()
        }
        None => default_entries(spec, lock, codes, stale_codes, &harmless),
    };

    // Only the newest Intune record carries the UDID, unless the entries say which do.
    let udid_pinned = entries
        .iter()
        .any(|e| e.mdm.unwrap_or_default() == Mdm::Intune && e.udid.is_some());
    let last_intune = entries
        .iter()
        .rposition(|e| e.mdm.unwrap_or_default() == Mdm::Intune);
    let count = entries.len();
    let mut out = Vec::with_capacity(count);
    for (i, entry) in entries.iter().enumerate() {
        let n = i + 1;
        let drawn = draw(&mut rng);
        let mdm = entry.mdm.unwrap_or_default();
        let bad = |reason: String| invalid("enrollments", format!("entry {n}: {reason}"));
        match mdm {
            Mdm::Intune => {
                if entry.device_based_albc.is_some() || entry.user_based_albc.is_some() {
                    return Err(bad(
                        "device_based_albc/user_based_albc are Kandji's; an Intune record holds one `code`".to_string(),
                    ));
                }
            }
            Mdm::Kandji => {
                if entry.code.is_some()
                    || entry.udid.is_some()
                    || entry.action_releases.is_some()
                    || entry.ade_supervised.is_some()
                {
                    return Err(bad(
                        "code/udid/action_releases/ade_supervised are Intune's; a Kandji device holds device_based_albc and user_based_albc".to_string(),
                    ));
                }
            }
        }
        let id = match &entry.id {
            Some(id) if is_guid(id) => id.to_lowercase(),
            Some(id) => return Err(bad(format!("id {id:?} is not a GUID"))),
            None => drawn.id,
        };
        let enrolled_at = match &entry.enrolled_at {
            Some(t) if is_timestamp(t) => t.clone(),
            Some(t) => {
                return Err(bad(format!(
                    "enrolled_at {t:?} is not YYYY-MM-DDTHH:MM:SSZ"
                )))
            }
            // Older entries first: one year apart, the last one in 2025.
            None => format!(
                "{}-{:02}-{:02}T{:02}:{:02}:00Z",
                2025 - (count - 1 - i) as u32,
                drawn.month,
                drawn.day,
                drawn.hour,
                drawn.minute
            ),
        };
        let code_of = |field: &'static str, text: &Option<String>| {
            let Some(text) = text else {
                return Ok(None);
            };
            let code = BypassCode::parse(text)
                .map_err(|e| bad(format!("{field}: {e}")))?
                .reveal();
            // Apple's view stays complete: a locked phone's MDM codes are listed there.
            let known = match lock {
                Lock::None => true,
                Lock::Mdm => codes.contains(&code) || stale_codes.contains(&code),
                Lock::User => stale_codes.contains(&code),
            };
            if !known {
                return Err(bad(format!(
                    "{field} is not among the phone's codes or stale_codes: list it there too (as stale_codes if Apple rejects it)"
                )));
            }
            Ok(Some(code))
        };
        let code = code_of("code", &entry.code)?;
        let device_based_albc = code_of("device_based_albc", &entry.device_based_albc)?;
        let user_based_albc = code_of("user_based_albc", &entry.user_based_albc)?;
        let intune = mdm == Mdm::Intune;
        out.push(Enrollment {
            mdm,
            id,
            code,
            device_based_albc,
            user_based_albc,
            udid: intune
                && match entry.udid {
                    Some(u) => u,
                    None => !udid_pinned && last_intune == Some(i),
                },
            enrolled_at,
            action_releases: intune && entry.action_releases.unwrap_or(true),
            ade_supervised: entry.ade_supervised.unwrap_or(true),
        });
    }
    Ok(out)
}

/// Enrolments of a device that does not list them: an `mdm` phone is in Intune (unless
/// `intune = false` or `kandji = true`) with one record per stale code, oldest first, then
/// the newest record with its first code and its UDID; with `kandji = true` it is a Kandji
/// device holding its first code (device-based) and second (user-based). Other phones are
/// enrolled only when asked to, with a code that is never asked for.
fn default_entries(
    spec: &DeviceSpec,
    lock: Lock,
    codes: &[String],
    stale_codes: &[String],
    harmless: &str,
) -> Vec<EnrollmentSpec> {
    let in_kandji = spec.kandji.unwrap_or(false);
    let in_intune = spec.intune.unwrap_or(lock == Lock::Mdm && !in_kandji);
    let first = match lock {
        Lock::Mdm => codes.first().cloned(),
        Lock::None => Some(harmless.to_string()),
        Lock::User => None,
    };
    let mut out = Vec::new();
    if in_intune {
        for stale in stale_codes {
            out.push(EnrollmentSpec {
                mdm: Some(Mdm::Intune),
                code: Some(stale.clone()),
                ..EnrollmentSpec::default()
            });
        }
        out.push(EnrollmentSpec {
            mdm: Some(Mdm::Intune),
            code: first.clone(),
            ..EnrollmentSpec::default()
        });
    }
    if in_kandji {
        out.push(EnrollmentSpec {
            mdm: Some(Mdm::Kandji),
            device_based_albc: first,
            user_based_albc: if lock == Lock::Mdm {
                codes.get(1).cloned()
            } else {
                None
            },
            ..EnrollmentSpec::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_guids() {
        assert!(is_timestamp("2025-03-01T10:00:00Z"));
        assert!(!is_timestamp("2025-13-01T10:00:00Z"));
        assert!(!is_timestamp("2025-03-01 10:00:00Z"));
        assert!(!is_timestamp("2025-03-01T10:00:00"));
        assert!(!is_timestamp("2025-03-01T10:00:00.5Z"));
        assert!(is_guid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!is_guid("0f8fad5bd9cb469fa16570867728950e"));
        let mut rng = enrollment_rng(1, 0);
        assert!(is_guid(&guid(&mut rng)));
    }
}
