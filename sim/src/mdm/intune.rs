//! The Intune stand-in's state: the station's app registration (tenant, client id, secret,
//! certificates, permissions), the tokens it issued, and the managed-device records of the
//! bench's phones. [`Graph`] is its run-time handle; [`super::entra`] and [`super::graph`]
//! answer the requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rand::Rng;
use station_protocol::bypass_code::BypassCode;
use x509_parser::prelude::FromDer;

use super::service::{rate, Budget, LoadReport, MdmRequest, MdmService, ServiceCore};
use crate::phone::Phone;
use crate::world::mdm::{
    guid, DEFAULT_PAGE_SIZE, DEFAULT_TOKEN_LIFETIME_SECS, PRIVILEGED_PERMISSION, READ_PERMISSIONS,
};
use crate::world::{BypassActionReading, DeviceProfile, Enrollment, IntuneSpec, Mdm};

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// Expired tokens are remembered this long, so Graph can say "expired" rather than "unknown".
const EXPIRED_TOKEN_MEMORY: Duration = Duration::from_secs(3600);
/// Tokens remembered at most (a client that never reuses its token cannot fill memory).
const MAX_TOKENS: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a certificate or key cannot sign client assertions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("no PEM block in the text")]
    NoPem,
    #[error("PEM block {label:?}: expected CERTIFICATE, PUBLIC KEY or RSA PUBLIC KEY")]
    UnknownLabel { label: String },
    #[error("certificate or key is not readable: {0}")]
    Unreadable(String),
    #[error("the key is not an RSA key (Entra signs client assertions with RS256 or PS256)")]
    NotRsa,
}

/// A key client assertions may be signed with: an RSA public key, and the certificate's
/// thumbprints when it came as one (the JWT header's `x5t` / `x5t#S256` name it).
#[derive(Clone)]
pub(crate) struct AssertionKey {
    pub sha1: Option<Vec<u8>>,
    pub sha256: Option<Vec<u8>>,
    /// PKCS#1 `RSAPublicKey` DER, what aws-lc-rs verifies with.
    pub rsa_public_key: Vec<u8>,
}

/// The RSA keys in a PEM text (certificates, SPKI or PKCS#1 public keys).
pub(crate) fn parse_assertion_keys(text: &str) -> Result<Vec<AssertionKey>, CertificateError> {
    let blocks = pem::parse_many(text).map_err(|e| CertificateError::Unreadable(e.to_string()))?;
    if blocks.is_empty() {
        return Err(CertificateError::NoPem);
    }
    let unreadable = |e: &dyn std::fmt::Display| CertificateError::Unreadable(e.to_string());
    let rsa_of = |spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>| {
        if spki.algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            Ok(spki.subject_public_key.data.to_vec())
        } else {
            Err(CertificateError::NotRsa)
        }
    };
    blocks
        .iter()
        .map(|block| match block.tag() {
            "CERTIFICATE" => {
                let der = block.contents();
                let (_, cert) =
                    x509_parser::parse_x509_certificate(der).map_err(|e| unreadable(&e))?;
                let digest = |alg| aws_lc_rs::digest::digest(alg, der).as_ref().to_vec();
                Ok(AssertionKey {
                    sha1: Some(digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY)),
                    sha256: Some(digest(&aws_lc_rs::digest::SHA256)),
                    rsa_public_key: rsa_of(cert.public_key())?,
                })
            }
            "PUBLIC KEY" => {
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(block.contents())
                    .map_err(|e| unreadable(&e))?;
                Ok(AssertionKey {
                    sha1: None,
                    sha256: None,
                    rsa_public_key: rsa_of(&spki)?,
                })
            }
            "RSA PUBLIC KEY" => Ok(AssertionKey {
                sha1: None,
                sha256: None,
                rsa_public_key: block.contents().to_vec(),
            }),
            other => Err(CertificateError::UnknownLabel {
                label: other.to_string(),
            }),
        })
        .collect()
}

/// A token handed out by the token endpoint; the permissions are those of the app when it
/// was issued (as the `roles` claim of a real one).
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    pub expires_at: Instant,
    pub roles: Vec<String>,
}

/// What the app registration and Graph's behaviour are right now.
pub(crate) struct Settings {
    pub client_secret: String,
    pub keys: Vec<AssertionKey>,
    pub permissions: Vec<String>,
    pub token_lifetime: Duration,
    pub page_size: u32,
    pub ignore_filters: bool,
    pub bypass_delay: Duration,
    /// What `bypassActivationLock` does (docs/mdm.md §1.3).
    pub bypass_reading: BypassActionReading,
    /// Only PS256 client assertions are accepted.
    pub strict_assertions: bool,
    pub tokens: HashMap<String, IssuedToken>,
    /// The next requests inside `$batch`es answered 429 (with this `Retry-After`) / 404.
    pub batch_throttle_next: u32,
    pub batch_retry_after_secs: u64,
    pub batch_not_found_next: u32,
}

/// One Intune managed-device record as Graph serves it: what a test gives a standalone
/// stand-in ([`super::GraphServer`]), and what the bench makes of each Intune enrolment of a
/// phone. [`ManagedDevice::new`] fills the properties a test rarely cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedDevice {
    /// Graph's `id` of the record.
    pub id: String,
    /// `serialNumber`.
    pub serial: String,
    /// The `$select`-only `udid`; `None`: the record carries none (older enrolments).
    pub udid: Option<String>,
    /// `activationLockBypassCode` (test data); `None`: null.
    pub code: Option<String>,
    /// `enrolledDateTime`, `YYYY-MM-DDTHH:MM:SSZ`.
    pub enrolled_at: String,
    /// `deviceName` and `managedDeviceName`.
    pub device_name: String,
    /// `model`: the marketing name.
    pub model: String,
    /// `osVersion`.
    pub os_version: String,
    pub imei: Option<String>,
    pub meid: Option<String>,
    /// The Wi-Fi address as the phone reports it (`wiFiMacAddress` drops the colons).
    pub wifi_address: String,
    pub storage_gb: u32,
    /// `isSupervised`: supervised through ADE, which `bypassActivationLock` needs.
    pub ade_supervised: bool,
    /// The code Apple holds for the phone now: what a "refreshes the code" action puts on
    /// the record; `None`: Apple has none to give.
    pub apple_code: Option<String>,
}

impl ManagedDevice {
    /// A record of `serial` with no UDID and no code, enrolled on 1 January 2025.
    pub fn new(id: &str, serial: &str) -> ManagedDevice {
        ManagedDevice {
            id: id.to_string(),
            serial: serial.to_string(),
            udid: None,
            code: None,
            enrolled_at: "2025-01-01T00:00:00Z".to_string(),
            device_name: "iPhone".to_string(),
            model: "iPhone".to_string(),
            os_version: "17.5".to_string(),
            imei: None,
            meid: None,
            wifi_address: "00:00:00:00:00:00".to_string(),
            storage_gb: 128,
            ade_supervised: true,
            apple_code: None,
        }
    }

    /// Not supervised through ADE: the action is accepted and does nothing.
    pub fn unsupervised(mut self) -> Self {
        self.ade_supervised = false;
        self
    }

    /// The code Apple would hand out now (what a refresh puts on the record).
    pub fn with_apple_code(mut self, code: &str) -> Self {
        self.apple_code = Some(code.to_string());
        self
    }

    pub fn with_udid(mut self, udid: &str) -> Self {
        self.udid = Some(udid.to_string());
        self
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    pub fn enrolled_at(mut self, at: &str) -> Self {
        self.enrolled_at = at.to_string();
        self
    }

    /// The record of a bench phone's Intune enrolment.
    fn of_phone(profile: &DeviceProfile, enrollment: &Enrollment) -> ManagedDevice {
        ManagedDevice {
            id: enrollment.id.clone(),
            serial: profile.serial.clone(),
            udid: enrollment.udid.then(|| profile.udid.clone()),
            code: enrollment.code.clone(),
            enrolled_at: enrollment.enrolled_at.clone(),
            device_name: profile.device_name.clone(),
            model: profile.marketing_name.clone(),
            os_version: profile.product_version.clone(),
            imei: profile.imei.clone(),
            meid: profile.meid.clone(),
            wifi_address: profile.wifi_address.clone(),
            storage_gb: profile.storage_gb,
            ade_supervised: enrollment.ade_supervised,
            // Only an `mdm` lock has a code Apple will take.
            apple_code: (profile.lock == crate::world::Lock::Mdm)
                .then(|| profile.codes.first().cloned())
                .flatten(),
        }
    }

    /// `lastSyncDateTime`: derived from the enrolment.
    pub fn last_sync_at(&self) -> String {
        crate::world::mdm::last_sync_after(&self.enrolled_at)
    }
}

/// One record Graph holds, and what `bypassActivationLock` on it does.
pub(crate) struct IntuneRecord {
    pub device: ManagedDevice,
    /// The bench phone whose `mdm` lock the action releases; `None`: the action is
    /// accepted and releases nothing (a standalone stand-in, or a record that does not).
    pub releases: Option<Arc<Phone>>,
    /// What the action changed on the record.
    pub action: Mutex<ActionTrace>,
}

/// What `bypassActivationLock` left on a record.
#[derive(Debug, Default)]
pub(crate) struct ActionTrace {
    /// The code a "refreshes the code" action put on the record, and from when it shows.
    pub refreshed_code: Option<(String, Instant)>,
    /// The last action, for `deviceActionResults`.
    pub last: Option<ActionRun>,
}

/// Graph's `DateTimeOffset` form: seven fractional digits, UTC.
fn graph_timestamp(since_epoch: Duration) -> String {
    let whole = super::service::utc_timestamp(since_epoch.as_secs());
    format!(
        "{}.{:07}Z",
        whole.trim_end_matches('Z'),
        since_epoch.subsec_nanos() / 100
    )
}

/// One `bypassActivationLock`: `pending` until `settles_at`, then `outcome`.
#[derive(Debug, Clone)]
pub(crate) struct ActionRun {
    pub started: String,
    pub settled: String,
    pub settles_at: Instant,
    /// `done`, `failed` or `notSupported` (Graph's `actionState` values).
    pub outcome: &'static str,
}

impl IntuneRecord {
    fn new(device: ManagedDevice, releases: Option<Arc<Phone>>) -> IntuneRecord {
        IntuneRecord {
            device,
            releases,
            action: Mutex::new(ActionTrace::default()),
        }
    }

    /// `activationLockBypassCode` now: a refreshed code replaces the stored one once the
    /// action has settled.
    pub fn code(&self) -> Option<String> {
        match &lock(&self.action).refreshed_code {
            Some((code, from)) if Instant::now() >= *from => Some(code.clone()),
            _ => self.device.code.clone(),
        }
    }

    /// `bypassActivationLock` on this record under `reading`, taking effect after `delay`;
    /// the `actionState` it settles to. Never releases a phone whose record holds no code,
    /// and does nothing for a phone not supervised through ADE (docs/mdm.md §1.3).
    pub fn bypass_activation_lock(
        &self,
        reading: BypassActionReading,
        delay: Duration,
    ) -> &'static str {
        let same = |a: &str, b: &str| match (BypassCode::parse(a), BypassCode::parse(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        let stored = self.code();
        let settles_at = Instant::now() + delay;
        let mut refreshed = None;
        let outcome = if !self.device.ade_supervised {
            "notSupported"
        } else {
            match (
                reading,
                stored.as_deref(),
                self.device.apple_code.as_deref(),
            ) {
                // Apple takes the stored code only when it is the phone's current one.
                (BypassActionReading::SubmitsStoredCode, Some(stored), Some(current))
                    if same(stored, current) =>
                {
                    if let Some(phone) = &self.releases {
                        phone.release_activation_lock(delay);
                    }
                    "done"
                }
                // A fresh code only for a record that held one (the phone was escrowed).
                (BypassActionReading::RefreshesCode, Some(_), Some(current)) => {
                    refreshed = Some((current.to_string(), settles_at));
                    "done"
                }
                _ => "failed",
            }
        };
        let now = super::service::unix_now_precise();
        let mut trace = lock(&self.action);
        if refreshed.is_some() {
            trace.refreshed_code = refreshed;
        }
        trace.last = Some(ActionRun {
            started: graph_timestamp(now),
            settled: graph_timestamp(now + delay),
            settles_at,
            outcome,
        });
        outcome
    }

    /// `deviceActionResults` now.
    pub fn action_results(&self) -> serde_json::Value {
        let trace = lock(&self.action);
        let Some(run) = &trace.last else {
            return serde_json::Value::Array(Vec::new());
        };
        let settled = Instant::now() >= run.settles_at;
        serde_json::json!([{
            "actionName": "bypassActivationLock",
            "actionState": if settled { run.outcome } else { "pending" },
            "startDateTime": run.started,
            "lastUpdatedDateTime": if settled { &run.settled } else { &run.started },
        }])
    }
}

impl IntuneRecord {
    /// A record of its own, tied to no phone.
    pub fn standalone(device: ManagedDevice) -> IntuneRecord {
        IntuneRecord::new(device, None)
    }

    /// The records of the bench phones' Intune enrolments, in phone order.
    pub fn of_phones(phones: &[Arc<Phone>]) -> Vec<IntuneRecord> {
        phones
            .iter()
            .flat_map(|phone| {
                let profile = phone.profile();
                profile
                    .enrollments
                    .iter()
                    .filter(|e| e.mdm == Mdm::Intune)
                    .map(|e| {
                        IntuneRecord::new(
                            ManagedDevice::of_phone(profile, e),
                            e.action_releases.then(|| phone.clone()),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

pub(crate) struct IntuneInner {
    pub token_core: ServiceCore,
    pub graph_core: ServiceCore,
    /// `http://127.0.0.1:PORT` of the token endpoint (stands for `login.microsoftonline.com`).
    pub token_base: String,
    /// `http://127.0.0.1:PORT` of Graph (stands for `graph.microsoft.com`).
    pub graph_base: String,
    pub tenant: String,
    pub client_id: String,
    pub scope: &'static str,
    pub records: Vec<IntuneRecord>,
    pub settings: Mutex<Settings>,
}

impl IntuneInner {
    pub fn settings(&self) -> MutexGuard<'_, Settings> {
        lock(&self.settings)
    }

    /// A new access token for the app, remembered with its expiry and permissions.
    pub fn issue_token(&self) -> (String, u64) {
        let mut s = self.settings();
        let lifetime = s.token_lifetime;
        let now = Instant::now();
        // JWT-shaped, as Entra's are; the bench only ever looks it up, never parses it.
        let unix = super::service::unix_now();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": "sim"});
        let claims = serde_json::json!({
            "aud": "https://graph.microsoft.com",
            "iss": format!("https://sts.windows.net/{}/", self.tenant),
            "iat": unix,
            "nbf": unix,
            "exp": unix + lifetime.as_secs(),
            "appid": self.client_id,
            "roles": s.permissions,
            "tid": self.tenant,
        });
        let mut signature = [0u8; 64];
        rand::rng().fill(&mut signature[..]);
        let token = format!(
            "{}.{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string()),
            B64URL.encode(signature)
        );
        if s.tokens.len() >= MAX_TOKENS {
            s.tokens
                .retain(|_, t| t.expires_at + EXPIRED_TOKEN_MEMORY > now);
            if s.tokens.len() >= MAX_TOKENS {
                s.tokens.clear();
            }
        }
        let roles = s.permissions.clone();
        s.tokens.insert(
            token.clone(),
            IssuedToken {
                expires_at: now + lifetime,
                roles,
            },
        );
        (token, lifetime.as_secs())
    }

    pub fn token(&self, token: &str) -> Option<IssuedToken> {
        self.settings().tokens.get(token).cloned()
    }

    /// `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token` on the stand-in.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.token_base, self.tenant)
    }
}

/// The stand-in Intune: the Microsoft Entra token endpoint and Graph's
/// `deviceManagement/managedDevices`, with run-time controls and a log of what they
/// received. Cheap to clone; every clone controls the same stand-in.
#[derive(Clone)]
pub struct Graph {
    pub(crate) inner: Arc<IntuneInner>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("graph_url", &self.inner.graph_base)
            .field("token_url", &self.inner.token_url())
            .finish_non_exhaustive()
    }
}

/// A generated client secret in the shape Entra gives them (`xxxQ~` + 35 characters).
fn generate_secret(rng: &mut impl Rng) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~";
    let mut s: String = (0..3)
        .map(|_| char::from(CHARS[rng.random_range(0..62)]))
        .collect();
    s.push_str("8Q~");
    s.extend((0..34).map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())])));
    s
}

impl Graph {
    /// The stand-in holding `records`, on already bound listeners.
    pub(crate) fn new(
        spec: &IntuneSpec,
        seed: u64,
        token_base: String,
        graph_base: String,
        records: Vec<IntuneRecord>,
        keys: Vec<AssertionKey>,
    ) -> Graph {
        // Identities and the secret come from the seed: the same world, the same app.
        let mut rng = crate::world::gen::device_rng(seed ^ 0x1A7E_6EA9, usize::MAX);
        let tenant_guid = guid(&mut rng);
        let client_guid = guid(&mut rng);
        let secret = generate_secret(&mut rng);
        let permissions = spec.permissions.clone().unwrap_or_else(|| {
            vec![
                READ_PERMISSIONS[0].to_string(),
                PRIVILEGED_PERMISSION.to_string(),
            ]
        });
        Graph {
            inner: Arc::new(IntuneInner {
                token_core: ServiceCore::new(MdmService::Token, &spec.token, seed ^ 0x7013_E400),
                graph_core: ServiceCore::new(MdmService::Graph, &spec.graph, seed ^ 0x6EA9_0000),
                token_base,
                graph_base,
                tenant: spec.tenant.clone().unwrap_or(tenant_guid),
                client_id: spec.client_id.clone().unwrap_or(client_guid),
                scope: spec.cloud.unwrap_or_default().graph_scope(),
                records,
                settings: Mutex::new(Settings {
                    client_secret: spec.client_secret.clone().unwrap_or(secret),
                    keys,
                    permissions,
                    token_lifetime: Duration::from_secs(
                        spec.token_lifetime_secs
                            .unwrap_or(DEFAULT_TOKEN_LIFETIME_SECS),
                    ),
                    page_size: spec.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
                    ignore_filters: spec.ignore_filters,
                    bypass_delay: Duration::from_millis(spec.bypass_delay_ms),
                    bypass_reading: spec.bypass_action,
                    strict_assertions: spec.strict_assertions,
                    tokens: HashMap::new(),
                    batch_throttle_next: 0,
                    batch_retry_after_secs: 1,
                    batch_not_found_next: 0,
                }),
            }),
        }
    }

    /// Graph's root, `http://127.0.0.1:PORT` (the API is under `/v1.0` and `/beta`).
    pub fn url(&self) -> &str {
        &self.inner.graph_base
    }

    /// The token endpoint's root, `http://127.0.0.1:PORT` (stands for
    /// `https://login.microsoftonline.com`).
    pub fn token_url_base(&self) -> &str {
        &self.inner.token_base
    }

    /// `<token_url_base>/<tenant>/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        self.inner.token_url()
    }

    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }

    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The scope a token request must name (`https://graph.microsoft.com/.default`).
    pub fn scope(&self) -> &str {
        self.inner.scope
    }

    /// The app's client secret (test data: what the station's secret file holds).
    pub fn client_secret(&self) -> String {
        self.inner.settings().client_secret.clone()
    }

    /// Replaces the client secret (a rotated one: the old one is refused from now on).
    pub fn set_client_secret(&self, secret: &str) {
        self.inner.settings().client_secret = secret.to_string();
    }

    /// Accepts client assertions signed with the RSA key of this PEM certificate (or
    /// public key) from now on.
    pub fn add_certificate_pem(&self, pem: &str) -> Result<(), CertificateError> {
        let keys = parse_assertion_keys(pem)?;
        self.inner.settings().keys.extend(keys);
        Ok(())
    }

    /// The application permissions granted to the app. Like Entra's `roles` claim, they
    /// count for tokens issued after the change.
    pub fn set_permissions(&self, permissions: &[&str]) {
        self.inner.settings().permissions = permissions.iter().map(|p| p.to_string()).collect();
    }

    /// `expires_in` of tokens issued from now on (whole seconds, at least 1).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.inner.settings().token_lifetime = Duration::from_secs(lifetime.as_secs().max(1));
    }

    /// Every token issued so far expires now (Graph answers them 401 "expired").
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for t in self.inner.settings().tokens.values_mut() {
            t.expires_at = t.expires_at.min(now);
        }
    }

    /// Records per list page when the request has no `$top`.
    pub fn set_page_size(&self, size: u32) {
        self.inner.settings().page_size = size.clamp(1, 1000);
    }

    /// Ignore every `$filter` (return everything, paged), as Graph does with unsupported ones.
    pub fn set_ignore_filters(&self, on: bool) {
        self.inner.settings().ignore_filters = on;
    }

    /// Refuse RS256 client assertions with Entra's `invalid_client` answer: only PS256 with
    /// `x5t#S256` (or a bare key) passes, as Entra's current documentation prescribes.
    pub fn set_strict_assertions(&self, on: bool) {
        self.inner.settings().strict_assertions = on;
    }

    /// `bypassActivationLock` takes effect this long after it is accepted.
    pub fn set_bypass_delay(&self, delay: Duration) {
        self.inner.settings().bypass_delay = delay;
    }

    /// What `bypassActivationLock` does from now on (docs/mdm.md §1.3).
    pub fn set_bypass_reading(&self, reading: BypassActionReading) {
        self.inner.settings().bypass_reading = reading;
    }

    /// The next `n` Graph requests are answered `429` with `Retry-After: <retry_after>`
    /// (whole seconds, rounded up); a request before that wait is over is throttled again.
    pub fn set_throttle_next(&self, n: u32, retry_after: Duration) {
        let mut f = self.inner.graph_core.faults();
        f.throttle_next = n;
        f.retry_after_secs = whole_secs(retry_after);
    }

    /// The next `n` requests inside `$batch`es are answered `429` with `Retry-After:
    /// <retry_after>` (the batch itself answers 200), as Graph throttles each inner request
    /// on its own.
    pub fn set_batch_throttle_next(&self, n: u32, retry_after: Duration) {
        let mut s = self.inner.settings();
        s.batch_throttle_next = n;
        s.batch_retry_after_secs = whole_secs(retry_after);
    }

    /// The next `n` requests inside `$batch`es are answered `404` (the record removed
    /// between the list and the GET).
    pub fn set_batch_not_found_next(&self, n: u32) {
        self.inner.settings().batch_not_found_next = n;
    }

    /// Holds the station to `budget` (Graph requests; a `$batch` counts its inner requests).
    pub fn set_budget(&self, budget: Budget) {
        self.inner.graph_core.set_budget(budget);
    }

    /// What Graph saw of the station's request rate, against its budget.
    pub fn load(&self) -> LoadReport {
        self.inner.graph_core.load()
    }

    /// Each Graph request is throttled with probability `rate`, drawn from the world's seed.
    pub fn set_throttle_rate(&self, rate_: f64, retry_after: Duration) {
        let mut f = self.inner.graph_core.faults();
        f.throttle_rate = rate(rate_);
        f.retry_after_secs = whole_secs(retry_after);
    }

    /// The next `n` Graph requests fail with the failure status (503 unless set).
    pub fn set_fail_next(&self, n: u32) {
        self.inner.graph_core.faults().fail_next = n;
    }

    /// Each Graph request fails with probability `rate`.
    pub fn set_fail_rate(&self, rate_: f64) {
        self.inner.graph_core.faults().fail_rate = rate(rate_);
    }

    /// The status of injected Graph failures (a 5xx; others are ignored).
    pub fn set_failure_status(&self, status: u16) {
        if (500..=599).contains(&status) {
            self.inner.graph_core.faults().failure_status = status;
        }
    }

    /// Delay added before every Graph answer.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.graph_core.faults().latency = latency;
    }

    /// The next `n` token requests fail with the token endpoint's failure status (503).
    pub fn set_token_fail_next(&self, n: u32) {
        self.inner.token_core.faults().fail_next = n;
    }

    /// The next `n` token requests are answered `429` with `Retry-After`.
    pub fn set_token_throttle_next(&self, n: u32, retry_after: Duration) {
        let mut f = self.inner.token_core.faults();
        f.throttle_next = n;
        f.retry_after_secs = whole_secs(retry_after);
    }

    /// Ends every injected fault of Graph and of the token endpoint.
    pub fn clear_faults(&self) {
        self.inner.graph_core.faults().clear();
        self.inner.token_core.faults().clear();
    }

    /// Requests to the token endpoint and to Graph (the last 10 000 of each), oldest
    /// first. Never a secret, token or code.
    pub fn requests(&self) -> Vec<MdmRequest> {
        let mut all = self.inner.token_core.requests();
        all.extend(self.inner.graph_core.requests());
        all.sort_by_key(|r| r.at);
        all
    }

    /// Graph requests only.
    pub fn graph_requests(&self) -> Vec<MdmRequest> {
        self.inner.graph_core.requests()
    }

    /// Token requests only.
    pub fn token_requests(&self) -> Vec<MdmRequest> {
        self.inner.token_core.requests()
    }

    pub fn clear_requests(&self) {
        self.inner.token_core.clear_requests();
        self.inner.graph_core.clear_requests();
    }
}

fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Serves the token endpoint.
#[derive(Clone)]
pub(crate) struct EntraHandler(pub Arc<IntuneInner>);

/// Serves Graph.
#[derive(Clone)]
pub(crate) struct GraphHandler(pub Arc<IntuneInner>);

impl crate::http::Handler for EntraHandler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let inner = &self.0;
        inner
            .token_core
            .serve(
                req,
                |r| super::entra::route(inner, r),
                super::entra::error_answer,
            )
            .await
    }
}

impl crate::http::Handler for GraphHandler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let inner = &self.0;
        inner
            .graph_core
            .serve(
                req,
                |r| super::graph::route(inner, r),
                super::graph::error_answer,
            )
            .await
    }
}
