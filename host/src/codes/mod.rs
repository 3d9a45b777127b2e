//! Bypass codes for a phone, by serial number, from the station's code sources.

mod answer;
pub mod chain;
pub mod csv_file;
pub mod error;
pub mod hook;
pub mod intune;
pub mod kandji;
pub mod registry;

pub use chain::Chain;
pub use error::LookupError;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use station_protocol::bypass_code::BypassCode;

/// Time limit of one request to an MDM API.
pub const MDM_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `User-Agent` of the requests to MDM APIs.
pub const USER_AGENT: &str = concat!("station/", env!("CARGO_PKG_VERSION"));

/// Which of a device's two possible codes this is (docs/mdm.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    /// Device-generated, escrowed by the MDM (user-linked lock; Kandji `user_based_albc`).
    Device,
    /// Server-generated (organisation-linked lock; Kandji `device_based_albc`).
    Server,
    Unknown,
}

impl CodeKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "device" => Some(CodeKind::Device),
            "server" => Some(CodeKind::Server),
            "" | "unknown" => Some(CodeKind::Unknown),
            _ => None,
        }
    }
}

/// A code and where it came from. `Debug` shows the code masked only.
#[derive(Clone, PartialEq, Eq)]
pub struct SourcedCode {
    pub code: BypassCode,
    pub kind: CodeKind,
    /// Where the code came from, e.g. `intune` or `csv:codes.csv`.
    pub source: String,
}

impl fmt::Debug for SourcedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?}, from {})",
            self.code.masked(),
            self.kind,
            self.source
        )
    }
}

/// What the sources know about one serial number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Some source knows the device (an MDM record, a CSV row), with or without a code.
    /// A lock on a device no source knows is a personal Apple Account's.
    pub known: bool,
    /// Codes to try, without duplicates, in source order.
    pub codes: Vec<SourcedCode>,
    /// The sources that answered, in order (filled by the chain).
    pub answered: Vec<SourceAnswer>,
    /// The sources that failed, in order, and why (filled by the chain).
    pub failures: Vec<SourceFailure>,
    /// Why a source that answered had no code, one line per source naming it ("not in
    /// Intune (contoso): …", "known to Kandji (kandji), no code …"): codes vanish (a reset,
    /// a clean-up rule), and the report must not take that for a personal Apple Account.
    pub absent: Vec<String>,
}

/// One source's answer in a chained lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceAnswer {
    pub source: String,
    /// The source's type: `csv`, `intune`, `kandji`, `command`.
    pub kind: &'static str,
    pub known: bool,
    /// Codes this source gave, duplicates of earlier sources included.
    pub codes: usize,
    /// Answered from this run's cache, without asking the source again.
    pub cached: bool,
    /// Time spent on this source's answer (about 0 when it came from the cache).
    pub elapsed_ms: u64,
    /// Why it had no code (see [`Lookup::absent`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absent: Option<String>,
}

/// A source that could not answer, and why (never a secret or a code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFailure {
    pub source: String,
    pub kind: &'static str,
    pub reason: String,
    /// Time spent before the source failed (its own retries included).
    pub elapsed_ms: u64,
}

impl Lookup {
    /// Notes why this source has no code, when it has none.
    pub fn explain_absence(&mut self, reason: impl FnOnce() -> String) {
        if self.codes.is_empty() {
            self.absent.push(reason());
        }
    }

    /// Adds a code unless the same code is already there.
    pub fn push(&mut self, code: SourcedCode) {
        self.known = true;
        if !self.codes.iter().any(|c| c.code == code.code) {
            self.codes.push(code);
        }
    }
}

/// An MDM told to release a phone's Activation Lock itself (Intune `bypassActivationLock`),
/// and what the station saw of it afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteRelease {
    /// The source's name.
    pub source: String,
    /// The MDM action, e.g. `bypassActivationLock`.
    pub action: String,
    /// The action's progress as the MDM last reported it.
    pub action_state: ActionState,
    /// The phone's record held a bypass code when it was read again after the action.
    pub record_has_code: bool,
    /// Codes the record held after the action that it did not hold before: tried before
    /// Apple is asked again.
    #[serde(skip)]
    pub codes: Vec<SourcedCode>,
    /// How long the station watched the action.
    #[serde(skip)]
    pub wait: Duration,
}

/// An MDM action's progress: Graph's `deviceActionResult.actionState`
/// (`none`, `pending`, `canceled`, `active`, `done`, `failed`, `notSupported`), or that the
/// MDM reported nothing of it while the station watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// No result of this action appeared while the station watched.
    #[default]
    NotReported,
    Pending,
    Active,
    Done,
    Failed,
    Canceled,
    /// The MDM says the action does not apply to this device (not supervised through ADE).
    NotSupported,
    /// A state this station does not know.
    Other,
}

impl ActionState {
    /// Graph's `actionState` text.
    pub fn from_graph(text: &str) -> ActionState {
        match text {
            "none" | "pending" => ActionState::Pending,
            "active" => ActionState::Active,
            "done" => ActionState::Done,
            "failed" => ActionState::Failed,
            "canceled" => ActionState::Canceled,
            "notSupported" => ActionState::NotSupported,
            _ => ActionState::Other,
        }
    }

    /// The action has ended, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ActionState::Done
                | ActionState::Failed
                | ActionState::Canceled
                | ActionState::NotSupported
                | ActionState::Other
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::NotReported => "not reported",
            ActionState::Pending => "pending",
            ActionState::Active => "active",
            ActionState::Done => "done",
            ActionState::Failed => "failed",
            ActionState::Canceled => "canceled",
            ActionState::NotSupported => "not supported",
            ActionState::Other => "in an unknown state",
        }
    }
}

/// Something that can name the bypass codes of a phone.
pub trait CodeLookup: Send + Sync {
    fn lookup<'a>(
        &'a self,
        serial: &'a str,
        udid: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Lookup, LookupError>>;

    /// Drops what this run remembers of a phone's codes: they did not release its lock, so
    /// the next attempt (the operator replugs once a fresh code was issued) asks again.
    fn forget(&self, _serial: &str, _udid: &str) {}

    /// Asks an MDM to release the lock without a code, where a source is configured to;
    /// `Ok(None)` when no source can (the default).
    fn release<'a>(
        &'a self,
        _serial: &'a str,
        _udid: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<RemoteRelease>, LookupError>> {
        Box::pin(async { Ok(None) })
    }
}

/// No source configured: every lock ends `locked_no_code` with that reason.
pub struct NoSources;

impl CodeLookup for NoSources {
    fn lookup<'a>(
        &'a self,
        _serial: &'a str,
        _udid: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Lookup, LookupError>> {
        Box::pin(async { Err(LookupError::NotConfigured) })
    }
}
