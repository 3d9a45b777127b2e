//! The configuration's types, their defaults and their checks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::exposure::{check_url, is_env_name, SecretOwners, UrlKey};
use crate::secret::Secret;

/// The whole file. Every section is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    #[serde(default)]
    pub station: Station,
    #[serde(default)]
    pub usbmuxd: Usbmuxd,
    #[serde(default)]
    pub pairing: Pairing,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub ui: Ui,
    /// usbmuxd `LocationID` (`0x00010002` or decimal) or USB port path (`1-1.4.2`) → the
    /// label printed on the bench (`A3`).
    #[serde(default, deserialize_with = "slots")]
    pub slots: BTreeMap<SlotKey, String>,
    #[serde(default)]
    pub codes: Codes,
    /// The shared PostgreSQL ledger of a floor of stations (docs/fleet.md); none by default.
    #[serde(default)]
    pub fleet: Option<Fleet>,
    /// Valid but unwise keys found by [`StationConfig::parse`]; `station config check` and
    /// `station run` print them.
    #[serde(skip)]
    pub warnings: Vec<crate::ConfigWarning>,
}

/// The keys whose values are [`Secret`]s (an inline string there is refused).
pub(crate) const SECRET_KEYS: &[&str] = &["client_secret", "token", "database_url"];

/// A key of the slot map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotKey {
    Location(u32),
    PortPath(String),
}

impl SlotKey {
    pub fn parse(text: &str) -> Option<SlotKey> {
        let text = text.trim();
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            return u32::from_str_radix(hex, 16).ok().map(SlotKey::Location);
        }
        if let Ok(n) = text.parse::<u32>() {
            return Some(SlotKey::Location(n));
        }
        // `bus-port[.port…]`, as in /sys/bus/usb/devices.
        let (bus, ports) = text.split_once('-')?;
        let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        (numeric(bus) && ports.split('.').all(numeric)).then(|| SlotKey::PortPath(text.to_string()))
    }
}

fn slots<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<SlotKey, String>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (key, label) in raw {
        let parsed = SlotKey::parse(&key).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "slot `{key}`: expected a usbmuxd LocationID (0x00010002 or 65538) or a USB port path (1-1.4.2)"
            ))
        })?;
        if label.trim().is_empty() || label.len() > 16 {
            return Err(serde::de::Error::custom(format!(
                "slot `{key}`: label must be 1 to 16 characters"
            )));
        }
        out.insert(parsed, label);
    }
    Ok(out)
}

/// What an activation URL carries, said when plain HTTP would expose it.
const ACTIVATION_CARRIES: &str = "the phone's activation info (its identity) and the bypass codes";

/// The plain-HTTP rule for an activation URL given on the command line (`--activation-url`,
/// `STATION_ACTIVATION_URL`), which replaces `[activation] url` after the file was checked.
/// `Ok(Some(warning))`: plain HTTP allowed by `[activation] allow_insecure_http`.
pub fn check_activation_url_override(
    url: &str,
    allow_insecure_http: bool,
) -> Result<Option<String>, String> {
    check_url(&UrlKey {
        key: "--activation-url".into(),
        url,
        carries: ACTIVATION_CARRIES,
        section: "[activation]",
        allow_insecure_http,
    })
}

impl StationConfig {
    /// The bench label of a phone: by its USB port path when known (stable across
    /// replugs), else by its usbmuxd `LocationID` (which is not).
    pub fn slot_label(&self, port_path: Option<&str>, location_id: u32) -> Option<&str> {
        port_path
            .and_then(|p| self.slots.get(&SlotKey::PortPath(p.to_string())))
            .or_else(|| self.slots.get(&SlotKey::Location(location_id)))
            .map(String::as_str)
    }

    /// Environment variables named by a `{ env = … }` secret, each with the secret it
    /// holds (`client_secret of code source `intune``): never passed to a hook.
    pub fn secret_env_names(&self) -> BTreeMap<String, String> {
        let mut owners = SecretOwners::new();
        for source in &self.codes.sources {
            let secrets: Vec<(&str, &Secret)> = match source {
                SourceConfig::Intune(intune) => intune
                    .client_secret
                    .iter()
                    .map(|s| ("client_secret", s))
                    .collect(),
                SourceConfig::Kandji(kandji) => vec![("token", &kandji.token)],
                SourceConfig::Csv(_) | SourceConfig::Command(_) => Vec::new(),
            };
            for (key, secret) in secrets {
                if let Secret::Env(name) = secret {
                    owners
                        .entry(name.clone())
                        .or_insert_with(|| format!("{key} of code source `{}`", source.name()));
                }
            }
        }
        if let Some(Fleet {
            database_url: Secret::Env(name),
            ..
        }) = &self.fleet
        {
            owners
                .entry(name.clone())
                .or_insert_with(|| "database_url of [fleet]".to_string());
        }
        owners
    }

    /// Checks that need more than one field. `Err`: the dotted key at fault and why;
    /// `Ok`: warnings, each with its dotted key.
    pub(crate) fn validate(&self) -> Result<Vec<(String, String)>, (String, String)> {
        let mut warnings = Vec::new();
        if self.station.id.trim().is_empty() || self.station.id.len() > 64 {
            return Err((
                "station.id".into(),
                "station.id must be 1 to 64 characters".into(),
            ));
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            return Err((
                "retry.initial_backoff_ms".into(),
                "retry.initial_backoff_ms must not exceed retry.max_backoff_ms".into(),
            ));
        }
        let mut url_keys = vec![UrlKey {
            key: "activation.url".into(),
            url: &self.activation.url,
            carries: ACTIVATION_CARRIES,
            section: "[activation]",
            allow_insecure_http: self.activation.allow_insecure_http,
        }];
        let secret_owners = self.secret_env_names();
        let mut names = std::collections::BTreeSet::new();
        for (index, source) in self.codes.sources.iter().enumerate() {
            let at = |key: &str| format!("codes.sources[{index}].{key}");
            if !names.insert(source.name().to_string()) {
                return Err((
                    at("name"),
                    format!(
                        "two code sources are named `{}`: give each a distinct `name`",
                        source.name()
                    ),
                ));
            }
            const ENTRY: &str = "this [[codes.sources]] entry";
            if let SourceConfig::Intune(intune) = source {
                match (&intune.client_secret, &intune.certificate) {
                    (None, None) => {
                        return Err((
                            at("client_id"),
                            "an intune source needs `client_secret` or `certificate`".into(),
                        ))
                    }
                    (Some(_), Some(_)) => {
                        return Err((
                            at("certificate"),
                            "give either `client_secret` or `certificate`, not both".into(),
                        ))
                    }
                    _ => {}
                }
                if intune.assertion_alg.is_some() && intune.certificate.is_none() {
                    return Err((
                        at("assertion_alg"),
                        "`assertion_alg` applies to a `certificate` credential only".into(),
                    ));
                }
                for (key, url, carries) in [
                    (
                        "token_url",
                        &intune.token_url,
                        "the client secret (or signed assertion) and the access token",
                    ),
                    (
                        "graph_url",
                        &intune.graph_url,
                        "the access token, serial numbers and bypass codes",
                    ),
                ] {
                    if let Some(url) = url {
                        url_keys.push(UrlKey {
                            key: at(key),
                            url,
                            carries,
                            section: ENTRY,
                            allow_insecure_http: intune.allow_insecure_http,
                        });
                    }
                }
            }
            if let SourceConfig::Kandji(kandji) = source {
                url_keys.push(UrlKey {
                    key: at("api_url"),
                    url: &kandji.api_url,
                    carries: "the API token, serial numbers and bypass codes",
                    section: ENTRY,
                    allow_insecure_http: kandji.allow_insecure_http,
                });
            }
            if let SourceConfig::Command(command) = source {
                for name in &command.pass_env {
                    if !is_env_name(name) {
                        return Err((
                            at("pass_env"),
                            format!("pass_env: `{name}` is not an environment variable name (letters, digits and _)"),
                        ));
                    }
                    if let Some(owner) = secret_owners.get(name) {
                        warnings.push((
                            at("pass_env"),
                            format!(
                                "{} lists {name}, which holds the {owner}: it is never passed to the hook",
                                at("pass_env")
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(fleet) = &self.fleet {
            if let Some(id) = &fleet.station_id {
                if id.trim().is_empty() || id.len() > 64 {
                    return Err((
                        "fleet.station_id".into(),
                        "fleet.station_id must be 1 to 64 characters".into(),
                    ));
                }
            }
        }
        if let Some(http) = &self.ui.http {
            match check_http_listen("ui.http", http, self.ui.allow_remote) {
                Ok((_, Some(warning))) => warnings.push(("ui.http".into(), warning)),
                Ok((_, None)) => {}
                Err(message) => return Err(("ui.http".into(), message)),
            }
        }
        for url_key in &url_keys {
            match check_url(url_key) {
                Ok(Some(warning)) => warnings.push((url_key.key.clone(), warning)),
                Ok(None) => {}
                Err(message) => return Err((url_key.key.clone(), message)),
            }
        }
        Ok(warnings)
    }
}

macro_rules! ranged {
    ($name:ident, $ty:ty, $min:expr, $max:expr) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            let value = <$ty>::deserialize(d)?;
            if !($min..=$max).contains(&value) {
                return Err(serde::de::Error::custom(format!(
                    "{value} is out of range {}..={}",
                    $min, $max
                )));
            }
            Ok(value)
        }
    };
}

ranged!(concurrency_range, u32, 1, 256);
ranged!(timeout_range, u64, 1, 600);
ranged!(attempts_range, u32, 1, 20);
ranged!(backoff_range, u64, 0, 600_000);
ranged!(hook_timeout_range, u64, 1, 300);
ranged!(wait_range, u64, 0, 3600);
ranged!(session_age_range, u64, 1, 3600);

fn rate_range<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if !(0.1..=50.0).contains(&value) {
        return Err(serde::de::Error::custom(format!(
            "{value} is out of range 0.1..=50"
        )));
    }
    Ok(value)
}

/// `[station] id` when the file names none.
pub const DEFAULT_STATION_ID: &str = "station-1";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Station {
    /// Names this station in the ledger and reports.
    pub id: String,
    /// Ledger and caches.
    pub data_dir: PathBuf,
    /// Phones worked on at once; the rest wait in a queue.
    #[serde(deserialize_with = "concurrency_range")]
    pub concurrency: u32,
    /// Seconds to wait for usbmuxd and for each answer of a phone.
    #[serde(deserialize_with = "timeout_range")]
    pub timeout_secs: u64,
    /// How the phones are reached: through usbmuxd (default) or straight over USB.
    pub transport: TransportKind,
}

impl Default for Station {
    fn default() -> Self {
        Station {
            id: DEFAULT_STATION_ID.to_string(),
            data_dir: default_data_dir(),
            concurrency: 10,
            timeout_secs: 10,
            transport: TransportKind::Usbmuxd,
        }
    }
}

/// `[station] transport`: `"usbmuxd"` (the daemon) or `"usb"` (direct, no daemon).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    #[default]
    Usbmuxd,
    Usb,
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "usbmuxd" => Ok(TransportKind::Usbmuxd),
            "usb" => Ok(TransportKind::Usb),
            other => Err(format!(
                "unknown transport {other:?}: expected usbmuxd or usb"
            )),
        }
    }
}

/// `/var/lib/station` for root (a bench box), else `$XDG_DATA_HOME/station`.
fn default_data_dir() -> PathBuf {
    let root = std::env::var("USER").is_ok_and(|u| u == "root")
        || std::env::var_os("HOME").is_some_and(|h| h == "/root");
    if root {
        return PathBuf::from("/var/lib/station");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map_or_else(|| PathBuf::from("station-data"), |d| d.join("station"))
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Usbmuxd {
    /// `UNIX:/path`, `/path` or `host:port`; `USBMUXD_SOCKET_ADDRESS` and then
    /// `/var/run/usbmuxd` apply when absent.
    pub address: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pairing {
    /// Keep pair records in this directory (`/var/lib/lockdown` layout) instead of usbmuxd.
    pub records_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Urlencoded,
    Multipart,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Activation {
    /// Apple's server by default; a stand-in's base URL for the virtual bench.
    pub url: String,
    #[serde(deserialize_with = "timeout_range")]
    pub timeout_secs: u64,
    pub encoding: Encoding,
    /// Seconds a phone may take to answer one mobileactivationd command: building the
    /// activation info runs FairPlay on the phone (libimobiledevice allows 30 s).
    #[serde(deserialize_with = "timeout_range")]
    pub command_timeout_secs: u64,
    /// Seconds after the handshake beyond which the exchange is started again before a
    /// bypass code is submitted (a slow code look-up must not answer a stale session).
    #[serde(deserialize_with = "session_age_range")]
    pub session_max_age_secs: u64,
    /// The User-Agent sent to the activation server; the station's built-in device-style
    /// one when absent.
    #[serde(deserialize_with = "user_agent")]
    pub user_agent: Option<String>,
    /// Line policy: an activated phone arriving with Find My on ends `find_my_on` (needs
    /// attention: it must be removed from Find My before it is erased) instead of
    /// `already_activated`.
    pub stop_on_find_my: bool,
    /// Lets `url` be plain `http://` to another machine (the phone's identity then crosses
    /// that network in clear; logged at start). Loopback needs no permission.
    pub allow_insecure_http: bool,
}

impl Default for Activation {
    fn default() -> Self {
        Activation {
            url: "https://albert.apple.com".to_string(),
            timeout_secs: 30,
            encoding: Encoding::Urlencoded,
            command_timeout_secs: 60,
            session_max_age_secs: 120,
            user_agent: None,
            stop_on_find_my: true,
            allow_insecure_http: false,
        }
    }
}

/// A User-Agent that is a valid, printable header value.
fn user_agent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = String::deserialize(d)?;
    let printable = value.chars().all(|c| c == ' ' || c.is_ascii_graphic());
    if value.trim().is_empty() || value.len() > 256 || !printable {
        return Err(serde::de::Error::custom(
            "user_agent must be 1 to 256 printable ASCII characters",
        ));
    }
    Ok(Some(value))
}

/// Bounded retries with exponential backoff for transient failures.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    #[serde(deserialize_with = "attempts_range")]
    pub attempts: u32,
    #[serde(deserialize_with = "backoff_range")]
    pub initial_backoff_ms: u64,
    #[serde(deserialize_with = "backoff_range")]
    pub max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 8000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ui {
    #[serde(default)]
    pub color: ColorMode,
    /// Where `station run` serves the live view of the line (docs/dashboard.md), e.g.
    /// `127.0.0.1:8080`; none by default. `--http` overrides it.
    #[serde(default)]
    pub http: Option<String>,
    /// Lets `http` (and `--http`) be an address other hosts can reach. The view has no
    /// log-in: it is read-only and carries no code or secret, but it does show serial
    /// numbers and the line's state to whoever can reach the port.
    #[serde(default)]
    pub allow_remote: bool,
}

/// The loopback rule of the live view's listen address (`[ui] http`, `--http`): an address
/// of this machine passes; any other (a LAN address, `0.0.0.0`, `[::]`) only with
/// `[ui] allow_remote = true`, with a warning. `Ok((address, warning))`.
pub fn check_http_listen(
    key: &str,
    text: &str,
    allow_remote: bool,
) -> Result<(std::net::SocketAddr, Option<String>), String> {
    let addr: std::net::SocketAddr = text.trim().parse().map_err(|_| {
        format!("{key} must be an IP address and port, like 127.0.0.1:8080 (got `{text}`)")
    })?;
    let ip = addr.ip();
    let loopback = ip.is_loopback()
        || matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
    if loopback {
        return Ok((addr, None));
    }
    if allow_remote {
        return Ok((
            addr,
            Some(format!(
                "{key} = {addr} serves the live view beyond this machine, without a log-in (allowed by [ui] allow_remote = true): anyone who reaches the port sees serial numbers and the line's state"
            )),
        ));
    }
    Err(format!(
        "{key} = {addr} would serve the live view beyond this machine, without a log-in; use a loopback address (127.0.0.1:8080), or set allow_remote = true in [ui] if that network is trusted"
    ))
}

/// `[fleet]`: ship every finished attempt to a shared PostgreSQL database (docs/fleet.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// `postgresql://user:password@host:port/database?sslmode=verify-full`: a secret (it
    /// carries the password), so a reference, never inline.
    pub database_url: Secret,
    /// Names this station in the fleet database; default `[station] id`, or the host name
    /// while that is still the default `station-1` (two stations must never share one).
    #[serde(default)]
    pub station_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Codes {
    /// Tried in order; codes from all sources that answer are merged.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// A source's answer without a code is reused this long in a run, then asked again
    /// (codes reappear: a phone re-enrolled, an admin re-escrowing).
    #[serde(
        default = "default_no_code_recheck",
        deserialize_with = "no_code_recheck_range"
    )]
    pub no_code_recheck_secs: u64,
}

impl Default for Codes {
    fn default() -> Self {
        Codes {
            sources: Vec::new(),
            no_code_recheck_secs: default_no_code_recheck(),
        }
    }
}

fn default_no_code_recheck() -> u64 {
    600
}

/// 0 (always ask again) to a day.
fn no_code_recheck_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let secs = u64::deserialize(d)?;
    if secs > 86_400 {
        return Err(serde::de::Error::custom(format!(
            "no_code_recheck_secs = {secs}: at most 86400 (a day)"
        )));
    }
    Ok(secs)
}

/// One bypass-code source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Csv(CsvSource),
    Intune(IntuneSource),
    Kandji(KandjiSource),
    Command(CommandSource),
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Csv(_) => "csv",
            SourceConfig::Intune(_) => "intune",
            SourceConfig::Kandji(_) => "kandji",
            SourceConfig::Command(_) => "command",
        }
    }

    /// The label in reports: `name`, or the type.
    pub fn name(&self) -> &str {
        let name = match self {
            SourceConfig::Csv(s) => &s.name,
            SourceConfig::Intune(s) => &s.name,
            SourceConfig::Kandji(s) => &s.name,
            SourceConfig::Command(s) => &s.name,
        };
        name.as_deref().unwrap_or(self.kind())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CsvSource {
    pub name: Option<String>,
    pub path: PathBuf,
}

/// Microsoft national clouds (docs/mdm.md §1.6), with their endpoints: the one home of these
/// facts for the station's Intune source and the bench's stand-in Entra ID and Graph.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    #[default]
    Global,
    Usgov,
    Dod,
    China,
}

impl Cloud {
    /// Entra token host.
    pub fn login_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov | Cloud::Dod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// Graph root (without `/v1.0`).
    pub fn graph_root(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::Dod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// The `.default` scope of the cloud's Graph: what an app-only token is asked for.
    pub fn graph_scope(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com/.default",
            Cloud::Usgov => "https://graph.microsoft.us/.default",
            Cloud::Dod => "https://dod-graph.microsoft.us/.default",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn/.default",
        }
    }
}

/// An app registration's certificate credential (PEM files; the key file must be private).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateCredential {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// How a certificate credential signs its client assertion (docs/mdm.md §1.5).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AssertionAlg {
    /// RSA-PSS with SHA-256, the certificate named by `x5t#S256`: Entra's current form.
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, the certificate named by its SHA-1 `x5t`: the older
    /// form, still accepted by Entra but no longer documented.
    Rs256,
}

fn default_rate() -> f64 {
    5.0
}

fn default_action_wait() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntuneSource {
    pub name: Option<String>,
    /// Tenant GUID or verified domain.
    pub tenant: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub certificate: Option<CertificateCredential>,
    /// How the certificate's assertion is signed [default: ps256]; only with `certificate`.
    pub assertion_alg: Option<AssertionAlg>,
    #[serde(default)]
    pub cloud: Cloud,
    /// Overrides for stand-ins: the token endpoint URL and the Graph root.
    pub token_url: Option<String>,
    pub graph_url: Option<String>,
    /// Request budget, below Graph's Intune limits.
    #[serde(default = "default_rate", deserialize_with = "rate_range")]
    pub max_requests_per_second: f64,
    /// Opt-in: trigger `bypassActivationLock` when no code is available.
    #[serde(default)]
    pub bypass_action: bool,
    /// Seconds to wait after the action before activating again.
    #[serde(default = "default_action_wait", deserialize_with = "wait_range")]
    pub bypass_action_wait_secs: u64,
    /// Lets `token_url` / `graph_url` be plain `http://` to another machine (logged at start).
    #[serde(default)]
    pub allow_insecure_http: bool,
}

impl IntuneSource {
    /// The certificate assertion's algorithm: `assertion_alg`, else PS256.
    pub fn assertion_alg(&self) -> AssertionAlg {
        self.assertion_alg.unwrap_or_default()
    }

    pub fn token_url(&self) -> String {
        self.token_url.clone().unwrap_or_else(|| {
            format!(
                "{}/{}/oauth2/v2.0/token",
                self.cloud.login_host(),
                self.tenant
            )
        })
    }

    pub fn graph_root(&self) -> String {
        self.graph_url
            .clone()
            .unwrap_or_else(|| self.cloud.graph_root().to_string())
            .trim_end_matches('/')
            .to_string()
    }

    /// OAuth scope: the cloud's Graph root + `/.default` (the real cloud even with a
    /// stand-in URL, as a token for the real audience is what Graph expects).
    pub fn scope(&self) -> String {
        self.cloud.graph_scope().to_string()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KandjiSource {
    pub name: Option<String>,
    /// `https://<subdomain>.api.kandji.io` or `.api.eu.kandji.io`.
    pub api_url: String,
    pub token: Secret,
    /// Lets `api_url` be plain `http://` to another machine (logged at start).
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn default_hook_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandSource {
    pub name: Option<String>,
    /// Run directly (no shell) in a cleared environment: STATION_SERIAL, STATION_UDID,
    /// STATION_SOURCE_NAME, PATH, HOME, LANG, LC_*, TZ and the names in `pass_env`.
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(
        default = "default_hook_timeout",
        deserialize_with = "hook_timeout_range"
    )]
    pub timeout_secs: u64,
    /// More of the station's environment variables the hook is given; a variable that holds
    /// a `{ env = … }` secret of any source is never passed, even when listed here.
    #[serde(default)]
    pub pass_env: Vec<String>,
}
