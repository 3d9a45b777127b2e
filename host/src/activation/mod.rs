//! Activating one phone (docs/protocol.md §5.7): pair, read the state, run the
//! session-mode exchange with the activation server, release an Activation Lock with the
//! organisation's bypass code (blank username, code as password), hand the record to the
//! phone, acknowledge, and re-read the state. Every failure ends in a named outcome.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use station_protocol::activation::{
    self, classify_response, continue_form_submission, device_activation_request,
    drm_handshake_request, lock_form_submission, ActivationResponse, BuddyPage, Endpoint,
    FormEncoding, HttpRequestParts,
};
use station_protocol::channel::ChannelError;
use station_protocol::ios::{IosVersion, Support, FULLY_SUPPORTED_FROM, TRIED_FROM};
use station_protocol::lockdown::LockdownError;
use station_protocol::mobileactivation::{self, Command, MobileActivationError};
use station_protocol::usbmux::{DeviceInfo, UsbmuxError};

use crate::codes::{
    ActionState, CodeKind, CodeLookup, Lookup, LookupError, RemoteRelease, SourcedCode,
};
use crate::error::{ErrorCode, StationError, UrlProblem};
use crate::http::{HttpClient, HttpError, RetryPolicy};
use crate::line::events::AnswerClass;
use crate::lockstate::{read_management_state, ActivationLock, ManagementState};
use crate::phone::{Bench, Session};

/// Stable outcome names (`--json`, ledger, reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Activated,
    AlreadyActivated,
    LockedNoCode,
    CodeRejected,
    UserLocked,
    ServerError,
    /// The phone's iOS is older than the station serves (it needs a Mac or Configurator).
    Unsupported,
    DeviceError,
    Interrupted,
    /// An activated phone still signed in to Find My: the owner or the organisation must
    /// remove it from Find My before it is erased (the `stop_on_find_my` line policy).
    FindMyOn,
}

impl Outcome {
    /// Whether the phone needs nothing more from the station.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Activated | Outcome::AlreadyActivated)
    }
}

/// Where a phone is in the workflow; reported when it stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Pair,
    /// "Trust This Computer?" is showing; the operator has to tap Trust.
    WaitingForTrust,
    Identify,
    Handshake,
    ActivationInfo,
    ActivationRequest,
    Bypass,
    ApplyRecord,
    Verify,
}

impl Step {
    pub fn describe(self) -> &'static str {
        match self {
            Step::Pair => "pairing",
            Step::WaitingForTrust => "waiting for Trust on the phone",
            Step::Identify => "reading its identity",
            Step::Handshake => "the activation handshake",
            Step::ActivationInfo => "building activation info",
            Step::ActivationRequest => "the activation request",
            Step::Bypass => "the Activation Lock bypass",
            Step::ApplyRecord => "handing the activation record to the phone",
            Step::Verify => "verifying the activation",
        }
    }

    /// At most 9 columns, for the compact screen where a phone gets a narrow cell.
    pub fn short(self) -> &'static str {
        match self {
            Step::Pair => "pairing",
            Step::WaitingForTrust => "tap Trust",
            Step::Identify => "identify",
            Step::Handshake => "handshake",
            Step::ActivationInfo => "act. info",
            Step::ActivationRequest => "activate",
            Step::Bypass => "bypass",
            Step::ApplyRecord => "record",
            Step::Verify => "verify",
        }
    }
}

/// Which code released the lock; the code itself only masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub source: String,
    pub kind: CodeKind,
    pub code: String,
}

impl From<&SourcedCode> for Release {
    fn from(c: &SourcedCode) -> Self {
        Release {
            source: c.source.clone(),
            kind: c.kind,
            code: c.code.masked(),
        }
    }
}

/// The result for one phone.
#[derive(Debug, Clone, Serialize)]
pub struct ActivationReport {
    pub udid: String,
    pub serial: Option<String>,
    pub product_type: Option<String>,
    pub product_version: Option<String>,
    pub outcome: Outcome,
    /// One line for the operator: what happened and the next step.
    pub message: String,
    /// The phone's state at the end, when it could be read.
    pub activation_state: Option<String>,
    /// Apple answered with the Activation Lock form.
    pub activation_locked: bool,
    /// Find My, passcode and management as the phone told them while identified.
    #[serde(flatten)]
    pub management: ManagementState,
    /// The lock as Apple's answer showed it; `None` when Apple was not asked.
    pub activation_lock: Option<ActivationLock>,
    pub codes_tried: usize,
    pub released_by: Option<Release>,
    /// An MDM was asked to release the lock itself (Intune `bypassActivationLock`), as no
    /// code did; with `activated`, that is what released it.
    pub remote_release: Option<RemoteRelease>,
    /// Where the workflow stopped, for anything but success.
    pub step: Option<Step>,
    /// The failure may pass on its own (5xx, a timeout, a trust prompt not yet answered):
    /// worth another attempt after a backoff.
    pub retryable: bool,
    pub elapsed_ms: u64,
}

/// How long the phone's state is polled after it took the record, and how often: the
/// phone may report `Activated` a moment after answering the command.
const STATE_POLL: Duration = Duration::from_secs(8);
const STATE_POLL_INTERVAL: Duration = Duration::from_millis(400);
/// Pages of hidden fields posted back in a row before the answer counts as a loop.
const MAX_CONTINUE_PAGES: usize = 3;
/// A phone's lockdown session idle for longer than this is closed rather than reused for
/// its next command: half the ~10 s after which a phone drops an idle lockdown connection
/// (docs/protocol.md §3.1), so a reused session is seldom found closed (and if it is, a new
/// one is opened).
const SESSION_REUSE_IDLE: Duration = Duration::from_secs(5);

/// Apple's activation server, or a stand-in at another base URL, and how the exchange with
/// the phone is paced (the `[activation]` section).
#[derive(Debug, Clone)]
pub struct ActivationServer {
    http: HttpClient,
    /// `scheme://host[:port]`; endpoints live under `/deviceservices/`.
    base: String,
    encoding: RequestEncoding,
    user_agent: String,
    /// Bound for one mobileactivationd command.
    command_timeout: Duration,
    /// A handshake older than this is redone before a bypass code is submitted.
    session_max_age: Duration,
    /// Line policy: an activated phone with Find My on ends `find_my_on`.
    stop_on_find_my: bool,
}

/// How `activation-info` is posted: both are accepted by Apple (docs/protocol.md §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestEncoding {
    UrlEncoded,
    Multipart,
}

impl ActivationServer {
    /// `url` may be a base (`https://host`), the `…/deviceservices` prefix or a full
    /// endpoint URL (`…/deviceservices/deviceActivation`, as `ideviceactivation -s` takes).
    pub fn new(url: &str, timeout: Duration, retry: RetryPolicy) -> Result<Self, StationError> {
        let base = normalise_base(url);
        let parsed = reqwest::Url::parse(&base).map_err(|e| StationError::ActivationUrl {
            url: url.to_string(),
            problem: UrlProblem::Invalid(e.to_string()),
        })?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(StationError::ActivationUrl {
                url: url.to_string(),
                problem: UrlProblem::NotHttp,
            });
        }
        let http = HttpClient::new(activation::USER_AGENT, timeout, retry)
            .map_err(|e| StationError::ActivationClient(e.to_string()))?;
        Ok(ActivationServer {
            http,
            base,
            encoding: RequestEncoding::UrlEncoded,
            user_agent: activation::USER_AGENT.to_string(),
            command_timeout: Duration::from_secs(60),
            session_max_age: Duration::from_secs(120),
            stop_on_find_my: true,
        })
    }

    /// The server as the configuration's `[activation]` and `[retry]` set it up.
    pub fn from_config(config: &station_config::StationConfig) -> Result<Self, StationError> {
        let encoding = match config.activation.encoding {
            station_config::Encoding::Urlencoded => RequestEncoding::UrlEncoded,
            station_config::Encoding::Multipart => RequestEncoding::Multipart,
        };
        let server = ActivationServer::new(
            &config.activation.url,
            Duration::from_secs(config.activation.timeout_secs),
            RetryPolicy::from_config(&config.retry),
        )?
        .with_encoding(encoding)
        .with_command_timeout(Duration::from_secs(config.activation.command_timeout_secs))
        .with_session_max_age(Duration::from_secs(config.activation.session_max_age_secs))
        .with_stop_on_find_my(config.activation.stop_on_find_my);
        Ok(match &config.activation.user_agent {
            Some(user_agent) => server.with_user_agent(user_agent),
            None => server,
        })
    }

    /// Whether an activated phone with Find My on ends `find_my_on` (the default).
    pub fn with_stop_on_find_my(mut self, stop: bool) -> Self {
        self.stop_on_find_my = stop;
        self
    }

    pub fn with_encoding(mut self, encoding: RequestEncoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The User-Agent of every request (a device-style one makes Albert answer plists and
    /// buddyml).
    pub fn with_user_agent(mut self, user_agent: &str) -> Self {
        self.user_agent = user_agent.to_string();
        self
    }

    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    pub fn with_session_max_age(mut self, age: Duration) -> Self {
        self.session_max_age = age;
        self
    }

    fn url(&self, endpoint: Endpoint) -> String {
        endpoint.url_on(&self.base)
    }

    /// Where a form goes: the page's own target when it is on this server (a page must not
    /// send a bypass code elsewhere), else `deviceActivation`.
    fn submit_url(&self, page_target: Option<&str>) -> String {
        let default = self.url(Endpoint::DeviceActivation);
        let Some(target) = page_target else {
            return default;
        };
        let (Ok(base), Ok(joined)) = (
            reqwest::Url::parse(&default),
            reqwest::Url::parse(&default).and_then(|b| b.join(target)),
        ) else {
            return default;
        };
        if joined.origin() == base.origin() {
            joined.to_string()
        } else {
            tracing::warn!(
                target,
                "lock form points at another host; submitting to the activation server instead"
            );
            default
        }
    }

    async fn send(
        &self,
        url: &str,
        request: &HttpRequestParts,
    ) -> Result<ActivationResponse, HttpError> {
        // The request's own User-Agent would win over the client's: replace it.
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("User-Agent"))
            .cloned()
            .chain([("User-Agent".to_string(), self.user_agent.clone())])
            .collect();
        let response = self.http.post(url, &headers, &request.body).await?;
        Ok(classify_response(
            response.status,
            &response.headers,
            &response.body,
        ))
    }
}

fn normalise_base(url: &str) -> String {
    let mut base = url.trim().trim_end_matches('/').to_string();
    for suffix in [
        Endpoint::DeviceActivation.path(),
        Endpoint::DrmHandshake.path(),
        "/deviceservices",
    ] {
        if let Some(stripped) = base.strip_suffix(suffix) {
            base = stripped.to_string();
            break;
        }
    }
    base
}

/// How the lock form was answered.
enum Bypassed {
    /// A code released the lock: Apple's activation record and its headers.
    Record(Vec<u8>, Vec<(String, String)>),
    /// No code did; an MDM was asked to release the lock itself.
    Released(RemoteRelease),
}

/// Why the workflow stopped before the end.
struct Stop {
    outcome: Outcome,
    message: String,
    retryable: bool,
    /// The station error behind a device failure, to name its cause afterwards.
    cause: Option<ErrorCode>,
}

impl Stop {
    fn new(outcome: Outcome, message: impl Into<String>) -> Self {
        Stop {
            outcome,
            message: message.into(),
            retryable: outcome == Outcome::ServerError,
            cause: None,
        }
    }

    fn device(e: StationError) -> Self {
        let message = match e.help() {
            Some(help) => format!("{e}: {help}"),
            None => e.to_string(),
        };
        Stop {
            retryable: e.is_retryable(),
            cause: Some(e.kind()),
            ..Stop::new(Outcome::DeviceError, message)
        }
    }

    /// A phone of an iOS the station does not serve; `why` says what failed.
    fn unsupported(version: IosVersion, why: &str) -> Self {
        Stop::new(
            Outcome::Unsupported,
            format!(
                "iOS {version} {why}: the station serves iOS {FULLY_SUPPORTED_FROM} and later (iOS {TRIED_FROM}–{} are tried); activate this phone with a Mac (Finder) or Apple Configurator, or update its iOS first",
                FULLY_SUPPORTED_FROM - 1
            ),
        )
    }

    /// A TLS failure on a phone the station only tries (iOS 10–11) is the version's fault
    /// as far as the operator can act on it; anything else stands.
    fn naming_the_ios(self, version: Option<IosVersion>) -> Self {
        match (self.cause, version) {
            (Some(ErrorCode::SessionTlsRejected), Some(v)) if v.support() == Support::Tried => {
                Stop::unsupported(v, "failed the TLS handshake with the station")
            }
            (Some(ErrorCode::TlsTooOld), Some(v)) => {
                Stop::unsupported(v, "offers only TLS 1.0/1.1 to the station")
            }
            (Some(ErrorCode::TlsTooOld), None) => Stop {
                outcome: Outcome::Unsupported,
                ..self
            },
            _ => self,
        }
    }
}

impl From<StationError> for Stop {
    fn from(e: StationError) -> Self {
        Stop::device(e)
    }
}

struct Identity {
    serial: String,
    state: String,
    product_type: Option<String>,
    product_version: Option<String>,
}

/// Hears where each phone is; the line turns this into events. Defaults do nothing.
pub trait Observer: Send + Sync {
    fn step(&self, _udid: &str, _step: Step) {}
    fn identified(
        &self,
        _udid: &str,
        _serial: &str,
        _product_type: Option<&str>,
        _product_version: Option<&str>,
        _management: &ManagementState,
    ) {
    }
    /// The phone's bypass-code look-up came back, after `elapsed` (the metrics count it).
    fn code_lookup(&self, _result: &Result<Lookup, LookupError>, _elapsed: Duration) {}
    /// The activation server answered one request (or did not: `Transport`).
    fn server_answer(&self, _class: AnswerClass, _elapsed: Duration) {}
}

/// An observer for single-phone commands: the log is enough there.
pub struct Quiet;

impl Observer for Quiet {}

/// Runs the workflow for phones of one bench.
pub struct Activator<'a> {
    pub bench: &'a Bench,
    pub server: &'a ActivationServer,
    pub codes: &'a dyn CodeLookup,
    pub observer: &'a dyn Observer,
    /// How long to wait for the operator to tap Trust on an activated phone.
    pub trust_wait: Duration,
}

struct Progress {
    report: ActivationReport,
    step: Step,
    /// When the phone's current activation session began (`CreateTunnel1SessionInfoRequest`).
    handshake_at: Option<Instant>,
    /// The phone's lockdown session, kept open for its next command.
    kept: Option<KeptSession>,
}

/// A lockdown session kept between the steps of one phone's activation. pymobiledevice3
/// starts every mobileactivationd command, and acknowledges the record, through the one
/// session it opened at the start (docs/protocol.md §5.3); every new session would be
/// another TLS handshake on both sides. mobileactivationd still gets a new service
/// connection per command (§5.1).
struct KeptSession {
    session: Session,
    /// The session's last request: the phone closes it after ~10 s without one (§3.1).
    used_at: Instant,
}

/// Whether a request on a lockdown connection failed because the connection is gone (the
/// phone closed it, e.g. idle), as opposed to the phone answering or staying silent.
fn connection_gone(e: &LockdownError) -> bool {
    matches!(
        e,
        LockdownError::Channel(ChannelError::Closed | ChannelError::Io(_))
    )
}

/// The bypass-code look-up of one phone: started as soon as its serial is known, driven
/// while the exchange with the phone goes on, awaited only when Apple asks for the lock
/// (a clean phone never waits on an MDM).
enum PendingLookup<'a> {
    Running(BoxFuture<'a, Result<Lookup, LookupError>>),
    Done(Result<Lookup, LookupError>),
    Taken,
}

impl PendingLookup<'_> {
    fn progress(&mut self, cx: &mut std::task::Context<'_>) {
        if let PendingLookup::Running(lookup) = self {
            if let Poll::Ready(result) = lookup.as_mut().poll(cx) {
                *self = PendingLookup::Done(result);
            }
        }
    }

    /// Runs `work` with the look-up making progress alongside.
    async fn alongside<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = pin!(work);
        std::future::poll_fn(|cx| {
            self.progress(cx);
            work.as_mut().poll(cx)
        })
        .await
    }

    /// The look-up's result, waiting for it if need be; `None` once taken.
    async fn take(&mut self) -> Option<Result<Lookup, LookupError>> {
        std::future::poll_fn(|cx| {
            self.progress(cx);
            match self {
                PendingLookup::Running(_) => Poll::Pending,
                _ => Poll::Ready(()),
            }
        })
        .await;
        match std::mem::replace(self, PendingLookup::Taken) {
            PendingLookup::Done(result) => Some(result),
            _ => None,
        }
    }
}

impl Activator<'_> {
    pub async fn activate(&self, device: &DeviceInfo) -> ActivationReport {
        let started = Instant::now();
        let mut progress = Progress {
            report: ActivationReport {
                udid: device.udid.clone(),
                serial: None,
                product_type: None,
                product_version: None,
                outcome: Outcome::DeviceError,
                message: String::new(),
                activation_state: None,
                activation_locked: false,
                management: Default::default(),
                activation_lock: None,
                codes_tried: 0,
                released_by: None,
                remote_release: None,
                step: None,
                retryable: false,
                elapsed_ms: 0,
            },
            step: Step::Pair,
            handshake_at: None,
            kept: None,
        };
        let span = tracing::info_span!("phone", udid = %device.udid, location = %format!("0x{:08x}", device.location_id));
        let result = tracing::Instrument::instrument(self.run(device, &mut progress), span).await;
        if let Some(kept) = progress.kept.take() {
            kept.session.close().await;
        }
        let mut report = progress.report;
        match result {
            Ok(()) => report.step = None,
            Err(stop) => {
                report.step = Some(progress.step);
                if stop.cause == Some(ErrorCode::PasscodeLocked) {
                    // Pairing refused with `PasswordProtected`: the phone told its passcode.
                    report.management.passcode_set = Some(true);
                }
                let presence = if stop.outcome == Outcome::DeviceError {
                    self.presence(device).await
                } else {
                    Presence::Attached
                };
                if presence != Presence::Attached {
                    report.outcome = Outcome::Interrupted;
                    report.message = presence.interrupted_during(progress.step);
                } else {
                    let version = report
                        .product_version
                        .as_deref()
                        .and_then(IosVersion::parse);
                    let stop = stop.naming_the_ios(version);
                    report.outcome = stop.outcome;
                    report.message = stop.message;
                    report.retryable = stop.retryable;
                }
            }
        }
        report.activation_lock = ActivationLock::from_report(&report);
        report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(udid = %report.udid, outcome = ?report.outcome, "{}", report.message);
        report
    }

    fn enter(&self, device: &DeviceInfo, progress: &mut Progress, step: Step) {
        progress.step = step;
        self.observer.step(&device.udid, step);
    }

    async fn still_attached(&self, device: &DeviceInfo) -> bool {
        self.presence(device).await == Presence::Attached
    }

    /// Whether a failure was the phone (or usbmuxd) going away rather than the phone.
    async fn presence(&self, device: &DeviceInfo) -> Presence {
        // Same usbmuxd DeviceID: a replugged phone gets a new one, and is a new attempt.
        match self.bench.transport.probe().await {
            Ok(devices) if devices.iter().any(|d| d.device_id == device.device_id) => {
                Presence::Attached
            }
            Ok(_) => Presence::Unplugged,
            // usbmuxd exited (Debian's does when the bench empties): every device stream
            // went with it, so the phone's work was cut, not failed.
            Err(UsbmuxError::Unreachable { .. } | UsbmuxError::Closed) => Presence::UsbmuxdGone,
            Err(_) => Presence::Attached,
        }
    }

    async fn run(&self, device: &DeviceInfo, progress: &mut Progress) -> Result<(), Stop> {
        self.enter(device, progress, Step::Pair);
        self.check_ios(device, &mut progress.report).await?;
        let mut session = self.session(device).await?;

        self.enter(device, progress, Step::Identify);
        let identity = self.identify(device, &mut session).await;
        if let Ok(identity) = &identity {
            progress.report.management =
                read_management_state(self.bench, device, &mut session, Some(&identity.state))
                    .await;
        }
        // Kept for the first mobileactivationd command; `activate` closes what is left.
        Self::keep(progress, session);
        let identity = identity?;
        let report = &mut progress.report;
        report.serial = Some(identity.serial.clone());
        report.product_type = identity.product_type.or(report.product_type.take());
        report.product_version = identity.product_version.or(report.product_version.take());
        report.activation_state = Some(identity.state.clone());
        self.observer.identified(
            &device.udid,
            &identity.serial,
            report.product_type.as_deref(),
            report.product_version.as_deref(),
            &report.management,
        );
        let (serial, state) = (identity.serial, identity.state);
        if mobileactivation::is_activated(&state) {
            if self.server.stop_on_find_my && report.management.find_my == Some(true) {
                report.outcome = Outcome::FindMyOn;
                report.message = format!(
                    "activated (state {state}) and still signed in to Find My: the owner or the organisation must remove it from Find My before the phone is erased"
                );
                return Ok(());
            }
            report.outcome = Outcome::AlreadyActivated;
            report.message = format!("already activated (state {state}): nothing to do");
            return Ok(());
        }

        // Codes are looked up while the phone and Apple talk, not after the lock form:
        // a slow MDM then does not leave the phone's activation session waiting.
        let timed_lookup = async {
            let asked = Instant::now();
            let result = self.codes.lookup(&serial, &device.udid).await;
            self.observer.code_lookup(&result, asked.elapsed());
            result
        };
        let mut lookup = PendingLookup::Running(Box::pin(timed_lookup));
        let answer = lookup
            .alongside(self.request_activation(device, progress))
            .await?;
        let (raw_body, headers) = match answer {
            ActivationResponse::Record {
                raw_body,
                headers,
                acknowledged,
                ..
            } => {
                if acknowledged {
                    tracing::info!("the record comes with ack-received: applying it first");
                }
                (raw_body, headers)
            }
            ActivationResponse::Acknowledged => {
                progress.report.outcome = Outcome::AlreadyActivated;
                progress.report.message =
                    "the activation server says this phone is already activated".into();
                return Ok(());
            }
            ActivationResponse::LockForm(page) | ActivationResponse::AuthAlert { page, .. } => {
                self.enter(device, progress, Step::Bypass);
                progress.report.activation_locked = true;
                match self
                    .bypass(device, &serial, page, progress, &mut lookup)
                    .await?
                {
                    Bypassed::Record(body, headers) => (body, headers),
                    Bypassed::Released(release) => {
                        self.after_release(device, &serial, &release, progress)
                            .await?
                    }
                }
            }
            other => return Err(unexpected_answer("deviceActivation", other)),
        };

        self.enter(device, progress, Step::ApplyRecord);
        let command = Command::HandleActivationInfoWithSession {
            body: raw_body,
            headers,
        };
        self.mobileactivation(device, progress, command).await?;

        self.enter(device, progress, Step::Verify);
        let state = self.acknowledge(device, progress).await?;
        let report = &mut progress.report;
        report.activation_state = Some(state.clone());
        if !mobileactivation::is_activated(&state) {
            return Err(Stop::new(
                Outcome::DeviceError,
                format!(
                    "the phone accepted the activation record but still reports {state} after {} s: replug it and run again",
                    STATE_POLL.as_secs()
                ),
            ));
        }
        report.outcome = Outcome::Activated;
        report.message = match (&report.released_by, &report.remote_release) {
            (Some(release), _) => format!(
                "Activation Lock released with code {} from {}",
                release.code, release.source
            ),
            (None, Some(remote)) => format!(
                "Activation Lock released by {}'s {} action",
                remote.source, remote.action
            ),
            (None, None) => "no Activation Lock".to_string(),
        };
        Ok(())
    }

    /// Handshake, activation info and the activation request: Apple's first answer.
    async fn request_activation(
        &self,
        device: &DeviceInfo,
        progress: &mut Progress,
    ) -> Result<ActivationResponse, Stop> {
        self.enter(device, progress, Step::Handshake);
        let session_info = self
            .mobileactivation(device, progress, Command::CreateTunnel1SessionInfo)
            .await?;
        progress.handshake_at = Some(Instant::now());
        let session_info =
            mobileactivation::dictionary(&Command::CreateTunnel1SessionInfo, session_info)
                .map_err(|e| Stop::new(Outcome::DeviceError, format!("{}: {e}", device.udid)))?;
        let request =
            drm_handshake_request(&plist::Value::Dictionary(session_info)).map_err(|e| {
                Stop::new(
                    Outcome::DeviceError,
                    format!("cannot encode the handshake: {e}"),
                )
            })?;
        let handshake = match self.post(Endpoint::DrmHandshake, &request).await? {
            ActivationResponse::HandshakeReply { raw_body, .. } => raw_body,
            other => return Err(unexpected_answer("drmHandshake", other)),
        };

        self.enter(device, progress, Step::ActivationInfo);
        let command = Command::CreateTunnel1ActivationInfo {
            handshake_response: handshake,
        };
        let info = self
            .mobileactivation(device, progress, command.clone())
            .await?;
        let info = mobileactivation::dictionary(&command, info)
            .map_err(|e| Stop::new(Outcome::DeviceError, format!("{}: {e}", device.udid)))?;

        self.enter(device, progress, Step::ActivationRequest);
        let encoding = match self.server.encoding {
            RequestEncoding::UrlEncoded => FormEncoding::UrlEncoded,
            RequestEncoding::Multipart => FormEncoding::multipart(),
        };
        let request = device_activation_request(&plist::Value::Dictionary(info), encoding)
            .map_err(|e| {
                Stop::new(
                    Outcome::DeviceError,
                    format!("cannot encode the activation request: {e}"),
                )
            })?;
        let url = self.server.url(Endpoint::DeviceActivation);
        self.post_following(&url, &request).await
    }

    /// Posts to `deviceActivation`; a page of hidden fields only is posted back as it is
    /// (ideviceactivation's loop), a few times at most.
    async fn post_following(
        &self,
        url: &str,
        request: &HttpRequestParts,
    ) -> Result<ActivationResponse, Stop> {
        let mut answer = self.post_to(url, request).await?;
        for _ in 0..MAX_CONTINUE_PAGES {
            let ActivationResponse::ContinueForm(page) = answer else {
                return Ok(answer);
            };
            tracing::info!(
                page = page.name.as_deref().unwrap_or(""),
                "a page of hidden fields: posting it back"
            );
            let submission = continue_form_submission(&page);
            let request = submission
                .to_request(FormEncoding::UrlEncoded)
                .map_err(|e| {
                    Stop::new(Outcome::ServerError, format!("cannot encode the page: {e}"))
                })?;
            let url = self.server.submit_url(submission.submit_url());
            answer = self.post_to(&url, &request).await?;
        }
        match answer {
            ActivationResponse::ContinueForm(_) => Err(Stop::new(
                Outcome::ServerError,
                format!(
                    "the activation server sent more than {MAX_CONTINUE_PAGES} pages without input in a row: retry later"
                ),
            )),
            other => Ok(other),
        }
    }

    /// Whether the phone's activation session is older than the configured bound.
    fn session_is_stale(&self, progress: &Progress) -> bool {
        progress
            .handshake_at
            .is_none_or(|at| at.elapsed() > self.server.session_max_age)
    }

    /// The exchange once more, up to Apple's answer: after an alert without a form, or when
    /// the session grew stale. Returns the lock form, or a record if the lock is gone.
    async fn exchange_again(
        &self,
        device: &DeviceInfo,
        progress: &mut Progress,
    ) -> Result<Result<BuddyPage, Bypassed>, Stop> {
        let answer = self.request_activation(device, progress).await?;
        self.enter(device, progress, Step::Bypass);
        match answer {
            ActivationResponse::LockForm(page) => Ok(Ok(page)),
            ActivationResponse::AuthAlert { page, .. } if !page.fields.is_empty() => Ok(Ok(page)),
            ActivationResponse::Record {
                raw_body, headers, ..
            } => {
                tracing::info!("Apple no longer asks for the lock");
                Ok(Err(Bypassed::Record(raw_body, headers)))
            }
            other => Err(unexpected_answer("deviceActivation", other)),
        }
    }

    /// An MDM was asked to release the lock and its record read again (the source watched
    /// the action): Apple is asked once more, any code the record gained since is tried, and
    /// a lock that stays is reported with what the action can and cannot do.
    async fn after_release(
        &self,
        device: &DeviceInfo,
        serial: &str,
        release: &RemoteRelease,
        progress: &mut Progress,
    ) -> Result<(Vec<u8>, Vec<(String, String)>), Stop> {
        tracing::info!(source = %release.source, action = %release.action, state = release.action_state.as_str(), new_codes = release.codes.len(), "activating again after the MDM's action");
        let page = match self.request_activation(device, progress).await? {
            ActivationResponse::Record {
                raw_body, headers, ..
            } => return Ok((raw_body, headers)),
            ActivationResponse::LockForm(page) | ActivationResponse::AuthAlert { page, .. } => page,
            other => return Err(unexpected_answer("deviceActivation", other)),
        };
        self.enter(device, progress, Step::Bypass);
        if !release.codes.is_empty() {
            if let Some(Bypassed::Record(body, headers)) = self
                .submit_codes(device, page, &release.codes, progress)
                .await?
            {
                return Ok((body, headers));
            }
        }
        Err(Stop::new(
            Outcome::LockedNoCode,
            release_limits(serial, release),
        ))
    }

    /// No code released the lock: where a source is configured to, the MDM is asked to
    /// release it itself; otherwise `stop` stands.
    async fn try_release(
        &self,
        device: &DeviceInfo,
        serial: &str,
        report: &mut ActivationReport,
        stop: Stop,
    ) -> Result<Bypassed, Stop> {
        // Whatever the sources said did not release the lock: a later attempt asks afresh.
        self.codes.forget(serial, &device.udid);
        match self.codes.release(serial, &device.udid).await {
            Ok(Some(release)) => {
                tracing::info!(source = %release.source, action = %release.action, serial, "asked the MDM to release the Activation Lock");
                report.remote_release = Some(release.clone());
                Ok(Bypassed::Released(release))
            }
            Ok(None) => Err(stop),
            Err(reason) => Err(Stop {
                message: format!(
                    "{}; the MDM's release action failed too: {reason}",
                    stop.message
                ),
                ..stop
            }),
        }
    }

    /// Reads `ProductVersion` before pairing (lockdown tells anyone, as usbmuxd's preflight
    /// relies on) and refuses a phone older than the station serves before anything is
    /// written to it. A phone that does not say goes on: the TLS handshake will tell.
    async fn check_ios(
        &self,
        device: &DeviceInfo,
        report: &mut ActivationReport,
    ) -> Result<(), Stop> {
        let mut lockdown = self.bench.lockdown(device).await?;
        // The whole public subset in one round trip, as pymobiledevice3 reads it.
        let values = lockdown.get_value(None, None).await;
        let _ = lockdown.goodbye().await;
        let values = values.ok();
        let public = |key: &str| {
            values
                .as_ref()
                .and_then(plist::Value::as_dictionary)
                .and_then(|d| d.get(key))
                .and_then(plist::Value::as_string)
                .map(str::to_string)
        };
        report.product_type = public("ProductType");
        let Some(text) = public("ProductVersion") else {
            tracing::info!(udid = %device.udid, "ProductVersion not readable before pairing");
            return Ok(());
        };
        let parsed = IosVersion::parse(&text);
        report.product_version = Some(text);
        match parsed {
            Some(v) if v.support() == Support::Unsupported => Err(Stop::unsupported(
                v,
                "speaks only TLS 1.0 and has no session-mode activation",
            )),
            _ => Ok(()),
        }
    }

    /// A session, pairing if needed. A phone at Setup Assistant pairs without a prompt; a
    /// record the phone forgot (it was erased) or whose certificates it now rejects in the
    /// TLS handshake is replaced, once.
    async fn session(&self, device: &DeviceInfo) -> Result<Session, Stop> {
        match self.bench.session(device).await {
            Ok(Some(session)) => return Ok(session),
            Ok(None) => {}
            Err(
                e
                @ (StationError::PairRecordStale { .. } | StationError::SessionTlsRejected { .. }),
            ) => {
                // An unplug mid-handshake looks the same; keep the record for the replug.
                if !self.still_attached(device).await {
                    return Err(e.into());
                }
                tracing::info!(udid = %device.udid, reason = %e, "phone no longer trusts this station's pair record; pairing again");
                self.bench.forget(&device.udid).await?;
            }
            Err(e) => return Err(e.into()),
        }
        let record = match self.bench.pair(device, Duration::ZERO).await {
            Ok(record) => record,
            Err(StationError::TrustPending { .. }) if !self.trust_wait.is_zero() => {
                self.observer.step(&device.udid, Step::WaitingForTrust);
                let record = self.bench.pair(device, self.trust_wait).await?;
                self.observer.step(&device.udid, Step::Pair);
                record
            }
            Err(e) => return Err(e.into()),
        };
        Ok(self.bench.session_with(device, record).await?)
    }

    async fn identify(&self, device: &DeviceInfo, session: &mut Session) -> Result<Identity, Stop> {
        let udid = device.udid.as_str();
        let text = |value: plist::Value| value.as_string().map(str::to_string);
        let values = session
            .get_value(None, None)
            .await
            .map_err(|e| StationError::from_lockdown(udid, e))?;
        let get = |key: &str| {
            values
                .as_dictionary()
                .and_then(|d| d.get(key))
                .cloned()
                .and_then(text)
        };
        let serial = get("SerialNumber").ok_or_else(|| {
            Stop::new(
                Outcome::DeviceError,
                format!("{udid} did not report its SerialNumber"),
            )
        })?;
        let state = get("ActivationState").ok_or_else(|| {
            Stop::new(
                Outcome::DeviceError,
                format!("{udid} did not report its ActivationState"),
            )
        })?;
        Ok(Identity {
            serial,
            state,
            product_type: get("ProductType"),
            product_version: get("ProductVersion"),
        })
    }

    /// `ActivationStateAcknowledged`, then the state read until it says activated, on the
    /// phone's session (kept or new; left kept for `activate` to close).
    async fn acknowledge(
        &self,
        device: &DeviceInfo,
        progress: &mut Progress,
    ) -> Result<String, Stop> {
        let udid = device.udid.as_str();
        async fn ack(session: &mut Session) -> Result<(), LockdownError> {
            session
                .lockdown
                .set_value(
                    None,
                    "ActivationStateAcknowledged",
                    plist::Value::Boolean(true),
                )
                .await
        }
        let (mut session, ()) = self.on_session(device, progress, ack).await?;
        let state = Self::poll_activated(udid, &mut session).await;
        Self::keep(progress, session);
        state
    }

    async fn poll_activated(udid: &str, session: &mut Session) -> Result<String, Stop> {
        // The phone may say `Activated` a moment after it took the record: poll a while.
        let started = Instant::now();
        loop {
            let state = session
                .get_value(None, Some("ActivationState"))
                .await
                .map_err(|e| StationError::from_lockdown(udid, e))?;
            let state = state.as_string().map(str::to_string).ok_or_else(|| {
                Stop::new(
                    Outcome::DeviceError,
                    format!("{udid}: ActivationState is not a string"),
                )
            })?;
            if mobileactivation::is_activated(&state) || started.elapsed() >= STATE_POLL {
                return Ok(state);
            }
            tokio::time::sleep(STATE_POLL_INTERVAL).await;
        }
    }

    /// The phone's session for its next request: the kept one if it was used within
    /// [`SESSION_REUSE_IDLE`], else a new one; and whether it was the kept one.
    async fn lockdown_session(
        &self,
        device: &DeviceInfo,
        progress: &mut Progress,
    ) -> Result<(Session, bool), Stop> {
        if let Some(kept) = progress.kept.take() {
            if kept.used_at.elapsed() < SESSION_REUSE_IDLE {
                return Ok((kept.session, true));
            }
            kept.session.close().await;
        }
        Ok((self.session(device).await?, false))
    }

    /// Keeps the phone's session for its next request (replacing any kept one).
    fn keep(progress: &mut Progress, session: Session) {
        progress.kept = Some(KeptSession {
            session,
            used_at: Instant::now(),
        });
    }

    /// `request` on the phone's session (kept or new). A kept session the phone has closed
    /// meanwhile (idle limit, docs/protocol.md §3.1) is replaced by a new one, once.
    async fn on_session<T>(
        &self,
        device: &DeviceInfo,
        progress: &mut Progress,
        mut request: impl AsyncFnMut(&mut Session) -> Result<T, LockdownError>,
    ) -> Result<(Session, T), Stop> {
        let udid = device.udid.as_str();
        let (mut session, reused) = self.lockdown_session(device, progress).await?;
        match request(&mut session).await {
            Ok(value) => Ok((session, value)),
            Err(e) if reused && connection_gone(&e) => {
                tracing::debug!(udid, error = %e, "the kept lockdown session is gone: a new one");
                let mut session = self.session(device).await?;
                let value = request(&mut session)
                    .await
                    .map_err(|e| StationError::from_lockdown(udid, e))?;
                Ok((session, value))
            }
            Err(e) => Err(StationError::from_lockdown(udid, e).into()),
        }
    }

    /// One mobileactivationd command on a service connection of its own (the daemon wants
    /// one connection per command, docs/protocol.md §5.1), started through the phone's
    /// session, which stays open for the next step (kept sessions: [`KeptSession`]). A
    /// command may take longer than lockdown's idle limit: the next step then opens a new
    /// session.
    async fn mobileactivation(
        &self,
        device: &DeviceInfo,
        progress: &mut Progress,
        command: Command,
    ) -> Result<Option<plist::Value>, Stop> {
        let (session, info) = self
            .on_session(device, progress, async |session: &mut Session| {
                session
                    .lockdown
                    .start_service(mobileactivation::SERVICE, None)
                    .await
            })
            .await?;
        let channel = self
            .bench
            .connect_service(device, &session.record, &info)
            .await;
        Self::keep(progress, session);
        let mut channel = channel?;
        // Building the activation info runs FairPlay on the phone: its own, longer bound.
        channel.set_timeout(Some(self.server.command_timeout));
        mobileactivation::send_command(&mut channel, &command)
            .await
            .map_err(|e| match e {
                MobileActivationError::Channel(ChannelError::Timeout(after)) => Stop {
                    retryable: true,
                    ..Stop::new(
                        Outcome::DeviceError,
                        format!(
                            "{}: no answer to {} within {} s (a slow phone): retry, or raise [activation] command_timeout_secs",
                            device.udid,
                            command.name(),
                            after.as_secs()
                        ),
                    )
                },
                e => Stop::new(Outcome::DeviceError, format!("{}: {e}", device.udid)),
            })
    }

    async fn post(
        &self,
        endpoint: Endpoint,
        request: &HttpRequestParts,
    ) -> Result<ActivationResponse, Stop> {
        self.post_to(&self.server.url(endpoint), request).await
    }

    async fn post_to(
        &self,
        url: &str,
        request: &HttpRequestParts,
    ) -> Result<ActivationResponse, Stop> {
        let asked = Instant::now();
        let answer = self.server.send(url, request).await;
        self.observer
            .server_answer(answer_class(answer.as_ref().ok()), asked.elapsed());
        match answer {
            Ok(ActivationResponse::ServerError { status }) => Err(Stop::new(
                Outcome::ServerError,
                format!(
                    "activation server answered HTTP {status} after {} attempts: retry later",
                    self.server.http_attempts()
                ),
            )),
            Ok(answer) => Ok(answer),
            Err(e) => Err(Stop::new(
                Outcome::ServerError,
                format!("{e}: check the network, retry later"),
            )),
        }
    }

    /// Answers the Activation Lock form with each known code once: blank username, the code
    /// in the secure field, every hidden field echoed. A wrong code answered by an alert
    /// alone starts the exchange over for the next code; so does a session grown stale while
    /// the codes were looked up. Returns the record on success.
    async fn bypass(
        &self,
        device: &DeviceInfo,
        serial: &str,
        page: BuddyPage,
        progress: &mut Progress,
        lookup: &mut PendingLookup<'_>,
    ) -> Result<Bypassed, Stop> {
        let lookup = match lookup.take().await {
            Some(Ok(lookup)) => lookup,
            Some(Err(reason)) => {
                return Err(Stop::new(
                    Outcome::LockedNoCode,
                    format!("Activation-Locked; the bypass-code sources failed for serial {serial}: {reason}"),
                ))
            }
            None => self
                .codes
                .lookup(serial, &device.udid)
                .await
                .map_err(|reason| {
                    Stop::new(
                        Outcome::LockedNoCode,
                        format!("Activation-Locked; the bypass-code sources failed for serial {serial}: {reason}"),
                    )
                })?,
        };
        if lookup.codes.is_empty() {
            // Each source says why it has none: a code that vanished (a reset, a deleted
            // record) must not read as a personal Apple Account.
            let why = if lookup.absent.is_empty() {
                String::new()
            } else {
                format!(" ({})", lookup.absent.join("; "))
            };
            let stop = if lookup.known {
                Stop::new(
                    Outcome::LockedNoCode,
                    format!("Activation-Locked and no bypass code for serial {serial}{why}: ask the customer's IT for the code, or to release the phone in Apple Business Manager"),
                )
            } else {
                Stop::new(
                    Outcome::UserLocked,
                    format!("Activation-Locked, and no code source knows serial {serial}{why}: a phone that left the MDM (record deleted, code removed by a reset) looks the same as one locked to a personal Apple Account; the owner must remove it from Find My, or the customer's IT must release it in Apple Business Manager or give the code"),
                )
            };
            return self
                .try_release(device, serial, &mut progress.report, stop)
                .await;
        }
        if let Some(record) = self
            .submit_codes(device, page, &lookup.codes, progress)
            .await?
        {
            return Ok(record);
        }
        let stop = Stop::new(
            Outcome::CodeRejected,
            format!(
                "Activation-Locked: Apple rejected all {} bypass code(s) for serial {serial}: stale in {} (the phone was supervised again or erased since); fetch a fresh code there",
                progress.report.codes_tried,
                sources_of(&lookup.codes)
            ),
        );
        self.try_release(device, serial, &mut progress.report, stop)
            .await
    }

    /// Answers the lock form with each of `codes` once (see [`Self::bypass`]): the record when
    /// one released the lock (or Apple stopped asking), `None` when Apple rejected them all.
    async fn submit_codes(
        &self,
        device: &DeviceInfo,
        page: BuddyPage,
        codes: &[SourcedCode],
        progress: &mut Progress,
    ) -> Result<Option<Bypassed>, Stop> {
        let mut form = Some(page);
        for code in codes {
            let page = match form.take() {
                Some(page) if !self.session_is_stale(progress) => page,
                stale => {
                    if stale.is_some() {
                        tracing::info!(
                            max_age_s = self.server.session_max_age.as_secs(),
                            "the activation session is too old to answer: starting it again"
                        );
                    }
                    match self.exchange_again(device, progress).await? {
                        Ok(page) => page,
                        Err(record) => return Ok(Some(record)),
                    }
                }
            };
            let submission = lock_form_submission(&page, "", &code.code.reveal()).map_err(|e| {
                Stop::new(
                    Outcome::ServerError,
                    format!("cannot answer the Activation Lock form: {e}"),
                )
            })?;
            let request = submission
                .to_request(FormEncoding::UrlEncoded)
                .map_err(|e| {
                    Stop::new(Outcome::ServerError, format!("cannot encode the form: {e}"))
                })?;
            let url = self.server.submit_url(submission.submit_url());
            progress.report.codes_tried += 1;
            tracing::info!(code = %code.code.masked(), source = %code.source, "submitting bypass code");
            match self.post_following(&url, &request).await? {
                ActivationResponse::Record {
                    raw_body, headers, ..
                } => {
                    progress.report.released_by = Some(Release::from(code));
                    return Ok(Some(Bypassed::Record(raw_body, headers)));
                }
                ActivationResponse::AuthAlert { page: next, .. }
                | ActivationResponse::LockForm(next) => {
                    tracing::info!(code = %code.code.masked(), "bypass code rejected");
                    // The form again: fill it in again. An alert alone: start over.
                    form = (!next.fields.is_empty()).then_some(next);
                }
                other => return Err(unexpected_answer("the Activation Lock form", other)),
            }
        }
        Ok(None)
    }
}

/// Why a lock outlived an MDM's release action, naming what the action needs and can do
/// (docs/mdm.md §1.3, §1.8): it only works on a phone supervised through Automated Device
/// Enrollment with "Activation Lock Allowed While Supervised", and it can only hand Apple a
/// code the MDM holds (or, by Microsoft's other description, fetch a fresh one).
fn release_limits(serial: &str, release: &RemoteRelease) -> String {
    const NEEDS: &str = "it works only for a phone supervised through Automated Device Enrollment (ADE) with the policy \"Activation Lock Allowed While Supervised\"";
    const NEXT: &str = "ask the customer's IT to release the phone in Apple Business Manager or to read the code from the device's Hardware page";
    let head = format!(
        "Activation-Locked: {}'s {} for serial {serial}",
        release.source, release.action
    );
    match release.action_state {
        ActionState::NotSupported => format!(
            "{head} had no effect (Intune reports it not supported for this device): {NEEDS}; {NEXT}"
        ),
        ActionState::Pending | ActionState::Active | ActionState::NotReported => format!(
            "{head} was accepted but is still {} after {} s and Apple still asks for the lock: {NEEDS}, and it can only hand Apple a code Intune holds; run again later, or {NEXT}",
            release.action_state.as_str(),
            release.wait.as_secs()
        ),
        _ if !release.record_has_code => format!(
            "{head} ended {} and cannot help: Intune holds no bypass code for this record, and the action can only hand Apple a code Intune holds ({NEEDS}); {NEXT}",
            release.action_state.as_str()
        ),
        _ => format!(
            "{head} ended {}, but Apple still asks for the lock: Apple rejected the code Intune holds and the action brought no new one ({NEEDS}); {NEXT}",
            release.action_state.as_str()
        ),
    }
}

/// The sources codes came from, each once, in order: `Intune`, `Intune and codes.csv`.
fn sources_of(codes: &[SourcedCode]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for code in codes {
        if !names.contains(&code.source.as_str()) {
            names.push(&code.source);
        }
    }
    match names.split_last() {
        None => "the code sources".to_string(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

impl ActivationServer {
    fn http_attempts(&self) -> u32 {
        self.http.attempts()
    }
}

fn unexpected_answer(what: &str, answer: ActivationResponse) -> Stop {
    let detail = match answer {
        ActivationResponse::ErrorPage { title, description } => format!(
            "{}{}",
            title.unwrap_or_else(|| "error page".into()),
            description.map(|d| format!(" — {d}")).unwrap_or_default()
        ),
        ActivationResponse::Malformed {
            content_type,
            status,
            reason,
        } => {
            format!("unreadable {content_type} answer (HTTP {status}): {reason}")
        }
        ActivationResponse::Unknown {
            content_type,
            status,
        } => format!(
            "unexpected answer (HTTP {status}, {})",
            content_type.unwrap_or_else(|| "no content type".into())
        ),
        ActivationResponse::HtmlAuthRequired { .. } => {
            "an HTML credentials page (wrong User-Agent?)".into()
        }
        other => format!("unexpected {}", answer_name(&other)),
    };
    Stop::new(
        Outcome::ServerError,
        format!("activation server refused {what}: {detail}"),
    )
}

/// The class an answer is counted under (`None`: no HTTP answer at all).
fn answer_class(answer: Option<&ActivationResponse>) -> AnswerClass {
    match answer {
        None => AnswerClass::Transport,
        Some(ActivationResponse::Record { .. }) => AnswerClass::Record,
        Some(ActivationResponse::HandshakeReply { .. }) => AnswerClass::HandshakeReply,
        Some(ActivationResponse::Acknowledged) => AnswerClass::Acknowledged,
        Some(ActivationResponse::LockForm(_)) => AnswerClass::LockForm,
        Some(ActivationResponse::ContinueForm(_)) => AnswerClass::ContinueForm,
        Some(ActivationResponse::AuthAlert { .. }) => AnswerClass::AuthAlert,
        Some(ActivationResponse::ErrorPage { .. }) => AnswerClass::ErrorPage,
        Some(ActivationResponse::HtmlAuthRequired { .. }) => AnswerClass::HtmlAuthRequired,
        Some(ActivationResponse::ServerError { .. }) => AnswerClass::ServerError,
        Some(ActivationResponse::Malformed { .. }) => AnswerClass::Malformed,
        Some(ActivationResponse::Unknown { .. }) => AnswerClass::Unknown,
    }
}

fn answer_name(answer: &ActivationResponse) -> &'static str {
    match answer {
        ActivationResponse::Record { .. } => "activation record",
        ActivationResponse::HandshakeReply { .. } => "handshake reply",
        ActivationResponse::Acknowledged => "acknowledgement",
        ActivationResponse::LockForm(_) => "Activation Lock form",
        ActivationResponse::ContinueForm(_) => "form without input fields",
        ActivationResponse::AuthAlert { .. } => "credentials alert",
        ActivationResponse::ErrorPage { .. } => "error page",
        ActivationResponse::HtmlAuthRequired { .. } => "HTML credentials page",
        ActivationResponse::ServerError { .. } => "server error",
        ActivationResponse::Malformed { .. } => "malformed answer",
        ActivationResponse::Unknown { .. } => "unknown answer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_on_old_phones_name_the_ios_version() {
        use station_protocol::channel::ChannelError;
        let udid = "00008030-001A2C3E0E90802E";
        let rejected = || {
            Stop::device(StationError::SessionTlsRejected {
                udid: udid.into(),
                reason: ChannelError::Tls("received fatal alert: HandshakeFailure".into()),
            })
        };
        let version = |v: &str| IosVersion::parse(v);

        // iOS 10–11 are only tried: a failed handshake is the version's.
        let stop = rejected().naming_the_ios(version("10.3.3"));
        assert_eq!(stop.outcome, Outcome::Unsupported);
        assert!(stop.message.contains("iOS 10.3.3"), "{}", stop.message);
        assert!(
            stop.message.contains("Apple Configurator"),
            "{}",
            stop.message
        );
        assert!(!stop.retryable);

        // On a modern phone the same failure is a device error (a pairing problem).
        let stop = rejected().naming_the_ios(version("18.6"));
        assert_eq!(stop.outcome, Outcome::DeviceError);

        // Old TLS is unsupported whatever the phone claims, and says so.
        let old = || {
            Stop::device(StationError::TlsTooOld {
                udid: udid.into(),
                reason: "ProtocolVersion alert".into(),
            })
        };
        let stop = old().naming_the_ios(version("11.4.1"));
        assert_eq!(stop.outcome, Outcome::Unsupported);
        assert!(stop.message.contains("iOS 11.4.1"), "{}", stop.message);
        assert_eq!(old().naming_the_ios(None).outcome, Outcome::Unsupported);
    }

    #[test]
    fn base_url_accepts_every_usual_form() {
        for url in [
            "https://albert.apple.com",
            "https://albert.apple.com/",
            "https://albert.apple.com/deviceservices",
            "https://albert.apple.com/deviceservices/deviceActivation",
            "https://albert.apple.com/deviceservices/drmHandshake",
        ] {
            assert_eq!(normalise_base(url), "https://albert.apple.com", "{url}");
        }
    }

    #[test]
    fn forms_may_only_post_back_to_the_activation_server() {
        let server = ActivationServer::new(
            "http://127.0.0.1:9/deviceservices",
            Duration::from_secs(1),
            RetryPolicy::default(),
        )
        .expect("server");
        let default = "http://127.0.0.1:9/deviceservices/deviceActivation";
        assert_eq!(server.submit_url(None), default);
        assert_eq!(
            server.submit_url(Some("https://evil.example/steal")),
            default
        );
        assert_eq!(
            server.submit_url(Some("/deviceservices/deviceActivation?x=1")),
            "http://127.0.0.1:9/deviceservices/deviceActivation?x=1"
        );
    }

    #[tokio::test]
    async fn the_code_lookup_runs_alongside_the_exchange_and_is_awaited_only_when_needed() {
        let slow = |after_ms: u64| -> BoxFuture<'static, Result<Lookup, LookupError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                Ok(Lookup {
                    known: true,
                    ..Lookup::default()
                })
            })
        };
        // The look-up (1.5 s) overlaps the exchange (1 s): about 1.5 s in all, not 2.5.
        let started = Instant::now();
        let mut lookup = PendingLookup::Running(slow(1500));
        let exchange = lookup
            .alongside(async {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                "lock form"
            })
            .await;
        assert_eq!(exchange, "lock form");
        let result = lookup.take().await;
        assert!(matches!(result, Some(Ok(Lookup { known: true, .. }))));
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(2300),
            "{elapsed:?}"
        );
        // Taken once; later work alongside it is harmless.
        assert!(lookup.take().await.is_none());
        assert_eq!(lookup.alongside(async { 7 }).await, 7);

        // A clean phone: the exchange ends first and nobody waits for the look-up.
        let started = Instant::now();
        let mut lookup = PendingLookup::Running(slow(60_000));
        lookup
            .alongside(tokio::time::sleep(Duration::from_millis(100)))
            .await;
        drop(lookup);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn only_activated_outcomes_are_success() {
        assert!(Outcome::Activated.is_success());
        assert!(Outcome::AlreadyActivated.is_success());
        assert!(!Outcome::CodeRejected.is_success());
        assert_eq!(
            serde_json::to_string(&Outcome::LockedNoCode).expect("json"),
            "\"locked_no_code\""
        );
    }
}

/// Where a phone is after its exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Attached,
    Unplugged,
    UsbmuxdGone,
}

impl Presence {
    /// The `interrupted` message for a phone cut off during `step`.
    fn interrupted_during(self, step: Step) -> String {
        match self {
            Presence::UsbmuxdGone => format!(
                "usbmuxd went away during {}: run again once it is back (the line resumes by itself)",
                step.describe()
            ),
            Presence::Attached | Presence::Unplugged => format!(
                "unplugged during {}: plug it back in and run again",
                step.describe()
            ),
        }
    }
}
