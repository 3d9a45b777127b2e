//! Intune through Microsoft Graph (docs/mdm.md §1): an app-only token (client secret or
//! certificate assertion), `managedDevices` by serial number, then one GET per record for
//! the `$select`-only `udid` and `activationLockBypassCode`; and the opt-in
//! `bypassActivationLock` action.
//!
//! Graph silently ignores filters it does not support and may hold several records for one
//! serial (re-enrolments), so every record's serial is checked here, and the codes of all
//! matching records are returned, the record of this very phone (same UDID) first.
//! National clouds are resolved by `station-config` (token host, Graph root, scope).

mod batch;
mod graph;
#[cfg(test)]
mod tests;
mod token;

use std::time::Duration;

use futures_util::future::BoxFuture;
use station_config::IntuneSource;

use super::registry::{BuildContext, CodeSource, Description};
use station_protocol::bypass_code::BypassCode;

use super::{
    ActionState, CodeKind, CodeLookup, Lookup, LookupError, RemoteRelease, SourcedCode,
    MDM_REQUEST_TIMEOUT,
};
use crate::http::{Budget, HttpClient, HttpError, RetryPolicy};
#[doc(hidden)]
pub use graph::decode_answer_for_fuzzing;
use graph::MAX_PAGES;
use token::Token;
pub use token::{Certificate, Credential};

/// Application permission for reading devices and their codes.
pub const READ_PERMISSION: &str = "DeviceManagementManagedDevices.Read.All";
/// Application permission for `bypassActivationLock`.
pub const ACTION_PERMISSION: &str = "DeviceManagementManagedDevices.PrivilegedOperations.All";
/// The action's name, as in Graph's URL.
pub const ACTION: &str = "bypassActivationLock";

/// Everything an Intune source needs, resolved from the configuration.
#[derive(Debug)]
pub struct IntuneSettings {
    /// The source's name in reports and code tags.
    pub name: String,
    pub client_id: String,
    pub credential: Credential,
    pub token_url: String,
    /// Graph root without `/v1.0`.
    pub graph_root: String,
    pub scope: String,
    /// Requests per second; a `$batch` counts each request in it, as Graph does.
    pub budget: Budget,
    /// Per request.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// `Some(wait)` when the `bypassActivationLock` action is enabled: how long at most to
    /// watch its progress (`deviceActionResults`) before activating again.
    pub bypass_action: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntuneError {
    #[error("Intune credential unusable: {reason}")]
    Credential { reason: String },
    #[error("Entra ID refused a token (HTTP {status} {code}{}): {hint}", colon_prefixed(.message))]
    TokenRefused {
        status: u16,
        code: String,
        message: String,
        hint: &'static str,
    },
    #[error("Graph refused the request (HTTP {status} {code}{}): the app registration needs the application permission {permission} with admin consent", colon_prefixed(.message))]
    Permission {
        status: u16,
        code: String,
        message: String,
        permission: &'static str,
    },
    /// Graph refused a token Entra ID had just issued, also after renewing it.
    #[error("Graph keeps refusing the token Entra ID issued (HTTP 401 {code}{}): this usually means the wrong tenant, cloud or client_id (a token for another directory or national cloud), not a missing permission", colon_prefixed(.message))]
    TokenRejected { code: String, message: String },
    #[error("Graph is throttling this app (HTTP 429{}): retry later or lower max_requests_per_second", retry_after_text(*.retry_after))]
    Throttled { retry_after: Option<Duration> },
    #[error("Graph answered HTTP {status} {code}{}", colon_prefixed(.message))]
    Service {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unreadable answer from {what}: {reason}")]
    BadAnswer { what: &'static str, reason: String },
    #[error("Graph listed more than {MAX_PAGES} pages of devices for one serial")]
    TooManyPages,
    #[error("Graph's next page link points at another host ({origin}); not followed")]
    ForeignLink { origin: String },
    #[error(transparent)]
    Http(#[from] HttpError),
}

fn colon_prefixed(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn retry_after_text(after: Option<Duration>) -> String {
    after.map_or(String::new(), |d| {
        format!(", Retry-After {} s", d.as_secs())
    })
}

pub struct Intune {
    settings: IntuneSettings,
    http: HttpClient,
    /// Held while a token is fetched, so concurrent lookups share one request.
    token: tokio::sync::Mutex<Option<Token>>,
    /// The per-record GETs of every phone, batched (`$batch`) when several wait at once.
    batch: batch::Batcher,
}

impl Intune {
    pub fn new(settings: IntuneSettings) -> Result<Self, IntuneError> {
        let http = HttpClient::for_service(
            "Intune (Microsoft Graph)",
            super::USER_AGENT,
            settings.timeout,
            settings.retry,
        )?
        .with_budget(settings.budget);
        Ok(Intune {
            settings,
            http,
            token: tokio::sync::Mutex::new(None),
            batch: batch::Batcher::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn bypass_action_wait(&self) -> Option<Duration> {
        self.settings.bypass_action
    }
}

impl CodeLookup for Intune {
    fn lookup<'a>(
        &'a self,
        serial: &'a str,
        udid: &'a str,
    ) -> BoxFuture<'a, Result<Lookup, LookupError>> {
        Box::pin(async move { Ok(self.fetch(serial, udid).await?) })
    }

    fn release<'a>(
        &'a self,
        serial: &'a str,
        udid: &'a str,
    ) -> BoxFuture<'a, Result<Option<RemoteRelease>, LookupError>> {
        Box::pin(async move {
            let Some(wait) = self.bypass_action_wait() else {
                return Ok(None);
            };
            Ok(self.release_and_watch(serial, udid, wait).await?)
        })
    }
}

/// How often the record is read again while the action runs: a tenth of the time allowed,
/// within bounds (the request budget spaces them further when it must).
fn poll_interval(wait: Duration) -> Duration {
    (wait / 10).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

impl Intune {
    /// `bypassActivationLock` for the phone's record, then the record read again until the
    /// action's `deviceActionResults` entry ends or `wait` passes (docs/mdm.md §1.3): what it
    /// reports, whether the record holds a code, and any code it did not hold before.
    /// `Ok(None)` when Intune has no record of the serial.
    async fn release_and_watch(
        &self,
        serial: &str,
        udid: &str,
        wait: Duration,
    ) -> Result<Option<RemoteRelease>, IntuneError> {
        let records = self.records(serial, udid).await?;
        let Some(record) = records.first() else {
            return Ok(None);
        };
        let known_before: Vec<BypassCode> = records
            .iter()
            .filter_map(|r| r.code.as_deref())
            .filter_map(|c| BypassCode::parse(c).ok())
            .collect();
        let earlier = self
            .action_status(&record.id, serial)
            .await?
            .and_then(|s| s.result)
            .map(|r| r.started);
        let started = tokio::time::Instant::now();
        self.send_action(serial, &record.id).await?;
        let deadline = started + wait;
        let status = loop {
            tokio::time::sleep_until(
                (tokio::time::Instant::now() + poll_interval(wait)).min(deadline),
            )
            .await;
            let status = self.action_status(&record.id, serial).await?;
            let finished = status
                .as_ref()
                .and_then(|s| s.result.as_ref())
                .is_some_and(|r| Some(&r.started) != earlier.as_ref() && r.state.is_final());
            if finished || tokio::time::Instant::now() >= deadline {
                break status.unwrap_or_default();
            }
        };
        let state = status
            .result
            .filter(|r| Some(&r.started) != earlier.as_ref())
            .map_or(ActionState::NotReported, |r| r.state);
        let code = status
            .code
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .and_then(|c| BypassCode::parse(c).ok());
        let record_has_code = code.is_some();
        let codes = code
            .filter(|c| !known_before.contains(c))
            .map(|code| SourcedCode {
                code,
                kind: CodeKind::Device,
                source: self.settings.name.clone(),
            })
            .into_iter()
            .collect::<Vec<_>>();
        tracing::info!(
            source = %self.settings.name,
            serial,
            device = %record.id,
            state = state.as_str(),
            record_has_code,
            new_codes = codes.len(),
            "Intune {ACTION} watched"
        );
        Ok(Some(RemoteRelease {
            source: self.settings.name.clone(),
            action: ACTION.to_string(),
            action_state: state,
            record_has_code,
            codes,
            wait: started.elapsed(),
        }))
    }
}

impl CodeSource for Intune {
    type Config = IntuneSource;

    fn from_config(config: &IntuneSource, context: &BuildContext<'_>) -> Result<Self, String> {
        let credential = match (&config.client_secret, &config.certificate) {
            (Some(secret), _) => Credential::Secret(
                secret
                    .load_from(context.env)
                    .map_err(|e| format!("client_secret: {e}"))?,
            ),
            (None, Some(cert)) => {
                let cert_pem = std::fs::read_to_string(&cert.cert_file)
                    .map_err(|e| format!("cannot read {}: {e}", cert.cert_file.display()))?;
                let key_pem =
                    station_config::read_private_file(&cert.key_file).map_err(|e| e.to_string())?;
                Credential::Certificate(
                    Certificate::from_pem(&cert_pem, &key_pem)
                        .map_err(|e| e.to_string())?
                        .with_algorithm(config.assertion_alg()),
                )
            }
            (None, None) => return Err("needs client_secret or certificate".into()),
        };
        Intune::new(IntuneSettings {
            name: context.name.to_string(),
            client_id: config.client_id.clone(),
            credential,
            token_url: config.token_url(),
            graph_root: config.graph_root(),
            scope: config.scope(),
            budget: Budget::per_second(config.max_requests_per_second),
            timeout: MDM_REQUEST_TIMEOUT,
            retry: context.retry,
            bypass_action: config
                .bypass_action
                .then(|| Duration::from_secs(config.bypass_action_wait_secs)),
        })
        .map_err(|e| e.to_string())
    }

    fn describe(config: &IntuneSource) -> Description {
        let credential = match (&config.client_secret, &config.certificate) {
            (Some(secret), _) => format!("client secret from {}", secret.describe()),
            (None, Some(cert)) => format!(
                "certificate {} ({})",
                cert.cert_file.display(),
                match config.assertion_alg() {
                    station_config::AssertionAlg::Ps256 => "PS256, x5t#S256",
                    station_config::AssertionAlg::Rs256 => "RS256, SHA-1 x5t",
                }
            ),
            (None, None) => "no credential".into(),
        };
        let action = if config.bypass_action {
            format!(
                ", bypassActivationLock when no code works (watched up to {} s)",
                config.bypass_action_wait_secs
            )
        } else {
            String::new()
        };
        Description {
            detail: format!(
                "tenant {}, app {}, {credential}, Graph {}{action}",
                config.tenant,
                config.client_id,
                config.graph_root()
            ),
            warning: None,
        }
    }
}
