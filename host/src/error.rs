//! Operator-facing failures: a stable code, a one-line message and a next step.
//!
//! [`StationError`]'s variants carry what went wrong; its code, exit code, retry rule, message
//! and help are all decided here. The workflow matches on variants (or on [`ErrorCode`]),
//! never on code strings. `docs/errors.md` documents every code of [`ErrorCode::ALL`]; a test
//! keeps the two in step.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use station_config::{ConfigError, EnvFileError};
use station_protocol::channel::ChannelError;
use station_protocol::lockdown::{LockdownError, LockdownErrorKind};
use station_protocol::pairing::PairingError;
use station_protocol::tls::TlsError;
use station_protocol::usbmux::{Address, UsbmuxError};

use crate::codes::chain::ChainError;
use crate::ledger::LedgerError;
use crate::storage::StorageProblem;
use crate::usb::UsbError;

/// Process exit codes; stable, listed per error code in `docs/errors.md`.
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_USBMUXD: u8 = 3;
    pub const NO_DEVICE: u8 = 4;
    pub const NEEDS_OPERATOR: u8 = 5;
    pub const DEVICE_ERROR: u8 = 6;
    /// Activation-Locked and not released (no code, codes rejected, personal account).
    pub const LOCKED: u8 = 7;
    pub const SERVER_ERROR: u8 = 8;
    /// The phone was unplugged mid-way.
    pub const INTERRUPTED: u8 = 9;
    /// The phone's iOS is older than the station serves.
    pub const UNSUPPORTED: u8 = 10;
    /// An activated phone still signed in to Find My (the `find_my_on` outcome).
    pub const FIND_MY_ON: u8 = 11;
}

/// usbmuxd's usual socket, for the catalogue's example.
#[cfg_attr(not(test), allow(dead_code))]
const DEFAULT_USBMUXD: &str = "UNIX:/var/run/usbmuxd";

/// Every stable error code the station reports (`error[code]`, `"code"` in `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    DeviceNotFound,
    TrustPending,
    TrustDenied,
    PasscodeLocked,
    NotPaired,
    PairRecordStale,
    SessionTlsRejected,
    TlsTooOld,
    DeviceDisconnected,
    DeviceTimeout,
    DeviceError,
    UsbmuxdUnreachable,
    UsbmuxdAddress,
    UsbmuxdError,
    UsbUnavailable,
    UsbBusy,
    UsbAccess,
    PairingError,
    TlsError,
    HostIdentity,
    Internal,
    LedgerInUse,
    LedgerNewer,
    LedgerNoWal,
    LedgerError,
    LedgerFull,
    LedgerReadOnly,
    ActivationUrl,
    ActivationClient,
    CodesSource,
    CodesNotConfigured,
    CodesSourcesFailed,
    CodesInvalid,
    ConfigInvalid,
    ConfigRefused,
    EnvFile,
    ReportRange,
    ReportOutput,
    NoRun,
    WatchDenied,
    WatchFailed,
    RunGone,
    Output,
    Demo,
    HttpView,
    FleetConfig,
    FleetDatabase,
}

impl ErrorCode {
    /// The catalogue, in the order `docs/errors.md` lists it.
    #[cfg_attr(not(test), allow(dead_code))] // read by the docs test
    pub const ALL: [ErrorCode; 47] = [
        ErrorCode::DeviceNotFound,
        ErrorCode::TrustPending,
        ErrorCode::TrustDenied,
        ErrorCode::PasscodeLocked,
        ErrorCode::NotPaired,
        ErrorCode::PairRecordStale,
        ErrorCode::SessionTlsRejected,
        ErrorCode::TlsTooOld,
        ErrorCode::DeviceDisconnected,
        ErrorCode::DeviceTimeout,
        ErrorCode::DeviceError,
        ErrorCode::UsbmuxdUnreachable,
        ErrorCode::UsbmuxdAddress,
        ErrorCode::UsbmuxdError,
        ErrorCode::UsbUnavailable,
        ErrorCode::UsbBusy,
        ErrorCode::UsbAccess,
        ErrorCode::PairingError,
        ErrorCode::TlsError,
        ErrorCode::HostIdentity,
        ErrorCode::Internal,
        ErrorCode::LedgerInUse,
        ErrorCode::LedgerNewer,
        ErrorCode::LedgerNoWal,
        ErrorCode::LedgerError,
        ErrorCode::LedgerFull,
        ErrorCode::LedgerReadOnly,
        ErrorCode::ActivationUrl,
        ErrorCode::ActivationClient,
        ErrorCode::CodesSource,
        ErrorCode::CodesNotConfigured,
        ErrorCode::CodesSourcesFailed,
        ErrorCode::CodesInvalid,
        ErrorCode::ConfigInvalid,
        ErrorCode::ConfigRefused,
        ErrorCode::EnvFile,
        ErrorCode::ReportRange,
        ErrorCode::ReportOutput,
        ErrorCode::NoRun,
        ErrorCode::WatchDenied,
        ErrorCode::WatchFailed,
        ErrorCode::RunGone,
        ErrorCode::Output,
        ErrorCode::Demo,
        ErrorCode::HttpView,
        ErrorCode::FleetConfig,
        ErrorCode::FleetDatabase,
    ];

    /// The stable identifier, e.g. `trust-pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::DeviceNotFound => "device-not-found",
            ErrorCode::TrustPending => "trust-pending",
            ErrorCode::TrustDenied => "trust-denied",
            ErrorCode::PasscodeLocked => "passcode-locked",
            ErrorCode::NotPaired => "not-paired",
            ErrorCode::PairRecordStale => "pair-record-stale",
            ErrorCode::SessionTlsRejected => "session-tls-rejected",
            ErrorCode::TlsTooOld => "tls-too-old",
            ErrorCode::DeviceDisconnected => "device-disconnected",
            ErrorCode::DeviceTimeout => "device-timeout",
            ErrorCode::DeviceError => "device-error",
            ErrorCode::UsbmuxdUnreachable => "usbmuxd-unreachable",
            ErrorCode::UsbmuxdAddress => "usbmuxd-address",
            ErrorCode::UsbmuxdError => "usbmuxd-error",
            ErrorCode::UsbUnavailable => "usb-unavailable",
            ErrorCode::UsbBusy => "usb-busy",
            ErrorCode::UsbAccess => "usb-access",
            ErrorCode::PairingError => "pairing-error",
            ErrorCode::TlsError => "tls-error",
            ErrorCode::HostIdentity => "host-identity",
            ErrorCode::Internal => "internal",
            ErrorCode::LedgerInUse => "ledger-in-use",
            ErrorCode::LedgerNewer => "ledger-newer",
            ErrorCode::LedgerNoWal => "ledger-no-wal",
            ErrorCode::LedgerError => "ledger-error",
            ErrorCode::LedgerFull => "ledger-full",
            ErrorCode::LedgerReadOnly => "ledger-read-only",
            ErrorCode::ActivationUrl => "activation-url",
            ErrorCode::ActivationClient => "activation-client",
            ErrorCode::CodesSource => "codes-source",
            ErrorCode::CodesNotConfigured => "codes-not-configured",
            ErrorCode::CodesSourcesFailed => "codes-sources-failed",
            ErrorCode::CodesInvalid => "codes-invalid",
            ErrorCode::ConfigInvalid => "config-invalid",
            ErrorCode::ConfigRefused => "config-refused",
            ErrorCode::EnvFile => "env-file",
            ErrorCode::ReportRange => "report-range",
            ErrorCode::ReportOutput => "report-output",
            ErrorCode::NoRun => "no-run",
            ErrorCode::WatchDenied => "watch-denied",
            ErrorCode::WatchFailed => "watch-failed",
            ErrorCode::RunGone => "run-gone",
            ErrorCode::Output => "output",
            ErrorCode::Demo => "demo",
            ErrorCode::HttpView => "http-view",
            ErrorCode::FleetConfig => "fleet-config",
            ErrorCode::FleetDatabase => "fleet-database",
        }
    }

    /// The process exit code of a command that fails with this error.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::DeviceNotFound => exit::NO_DEVICE,
            ErrorCode::TrustPending
            | ErrorCode::TrustDenied
            | ErrorCode::PasscodeLocked
            | ErrorCode::NotPaired
            | ErrorCode::PairRecordStale
            | ErrorCode::SessionTlsRejected => exit::NEEDS_OPERATOR,
            ErrorCode::TlsTooOld => exit::UNSUPPORTED,
            ErrorCode::DeviceDisconnected | ErrorCode::DeviceTimeout | ErrorCode::DeviceError => {
                exit::DEVICE_ERROR
            }
            ErrorCode::UsbmuxdUnreachable
            | ErrorCode::UsbUnavailable
            | ErrorCode::UsbBusy
            | ErrorCode::UsbAccess => exit::NO_USBMUXD,
            ErrorCode::UsbmuxdAddress
            | ErrorCode::ActivationUrl
            | ErrorCode::CodesSource
            | ErrorCode::CodesNotConfigured
            | ErrorCode::CodesInvalid
            | ErrorCode::ConfigInvalid
            | ErrorCode::ConfigRefused
            | ErrorCode::EnvFile
            | ErrorCode::ReportRange
            | ErrorCode::HttpView
            | ErrorCode::FleetConfig => exit::USAGE,
            ErrorCode::UsbmuxdError
            | ErrorCode::PairingError
            | ErrorCode::TlsError
            | ErrorCode::HostIdentity
            | ErrorCode::Internal
            | ErrorCode::LedgerInUse
            | ErrorCode::LedgerNewer
            | ErrorCode::LedgerNoWal
            | ErrorCode::LedgerError
            | ErrorCode::LedgerFull
            | ErrorCode::LedgerReadOnly
            | ErrorCode::ActivationClient
            | ErrorCode::CodesSourcesFailed
            | ErrorCode::ReportOutput
            | ErrorCode::NoRun
            | ErrorCode::WatchDenied
            | ErrorCode::WatchFailed
            | ErrorCode::RunGone
            | ErrorCode::Output
            | ErrorCode::Demo
            | ErrorCode::FleetDatabase => exit::FAILURE,
        }
    }

    /// Whether the line works on the phone again by itself: the cause is passing (a trust
    /// prompt not yet answered, a cable wobble), not something the operator must fix.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::TrustPending | ErrorCode::DeviceTimeout | ErrorCode::DeviceDisconnected
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The next step for every `fleet-config` failure.
const FLEET_CONFIG_HELP: &str = "give [fleet] database_url as { env = \"NAME\" } or { file = \"PATH\" } holding a postgresql:// URL (docs/fleet.md); `station config check` tests it";

/// What a phone took too long to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Answer,
    TlsHandshake,
}

/// A phone's answer the station cannot use.
#[derive(Debug)]
pub enum DeviceFault {
    Lockdown(LockdownError),
    /// A lockdown value of the wrong type, e.g. `DevicePublicKey` that is not data.
    NotData(&'static str),
}

/// Why an activation server URL is refused.
#[derive(Debug)]
pub enum UrlProblem {
    Invalid(String),
    NotHttp,
    /// Plain `http://` to another machine, not allowed (the reason names the key).
    PlainHttp(String),
}

/// How `station watch` failed to follow a run.
#[derive(Debug)]
pub enum WatchFailure {
    Connect(std::io::Error),
    NoAnswer(Duration),
    /// A line without its newline: the run closed mid-event.
    NotAnEvent,
}

/// How the run a watcher follows went away.
#[derive(Debug)]
pub enum RunLoss {
    /// The stream ended before the run's summary.
    EndedEarly,
    Read(std::io::Error),
}

#[derive(Debug)]
pub enum StationError {
    DeviceNotFound {
        udid: String,
    },
    TrustPending {
        udid: String,
    },
    TrustDenied {
        udid: String,
    },
    PasscodeLocked {
        udid: String,
    },
    NotPaired {
        udid: String,
    },
    /// The phone no longer knows this station's pair record (erased since pairing?).
    PairRecordStale {
        udid: String,
    },
    /// The phone took `StartSession` but then failed the TLS handshake with the stored record:
    /// like an erased phone, it no longer trusts these certificates (libimobiledevice sees
    /// "SSL error -5" here; usbmuxd's preflight deletes such a record).
    SessionTlsRejected {
        udid: String,
        reason: ChannelError,
    },
    /// The phone offers only TLS 1.0/1.1: an iOS older than the station serves.
    TlsTooOld {
        udid: String,
        reason: String,
    },
    DeviceDisconnected {
        udid: String,
    },
    DeviceTimeout {
        udid: String,
        waiting: Waiting,
        after: Duration,
    },
    Device {
        udid: String,
        fault: DeviceFault,
    },
    /// `usbmuxd-unreachable`, `usbmuxd-address` or `usbmuxd-error`, by the inner error.
    Usbmuxd(UsbmuxError),
    /// `usb-unavailable`, `usb-busy` or `usb-access`: the direct USB transport, by the inner error.
    Usb(UsbError),
    Pairing(PairingError),
    Tls(TlsError),
    /// The station's pairing identity cannot be read or made.
    HostIdentity(String),
    /// A background task panicked or was cancelled.
    Internal {
        task: &'static str,
        reason: String,
    },
    /// `ledger-in-use`, `ledger-newer`, `ledger-no-wal` or `ledger-error`, by the inner error.
    Ledger(LedgerError),
    /// `ledger-full` or `ledger-read-only`: the data directory cannot take the ledger's writes.
    Storage(StorageProblem),
    ActivationUrl {
        url: String,
        problem: UrlProblem,
    },
    ActivationClient(String),
    /// The configured code sources cannot be built.
    CodesSource(ChainError),
    CodesNotConfigured,
    /// Every source failed a look-up.
    CodesSourcesFailed(ChainError),
    /// The `--codes` CSV file is unusable.
    CodesInvalid(String),
    ConfigInvalid(ConfigError),
    ConfigRefused {
        problems: Vec<String>,
    },
    EnvFile(EnvFileError),
    /// `--since` is after `--until`.
    ReportRange,
    ReportJson(String),
    ReportCsv(String),
    NoRun {
        socket: PathBuf,
    },
    WatchDenied {
        socket: PathBuf,
    },
    WatchFailed {
        socket: PathBuf,
        failure: WatchFailure,
    },
    RunGone {
        socket: PathBuf,
        loss: RunLoss,
    },
    Output(std::io::Error),
    Demo {
        what: &'static str,
        reason: String,
    },
    /// The live view's address is refused (not this machine's, without `[ui]
    /// allow_remote`), unreadable, or cannot be bound.
    HttpView {
        reason: String,
    },
    /// A fleet command without `[fleet]`.
    FleetNotConfigured,
    /// The fleet database's URL, or the database itself.
    Fleet(crate::fleet::FleetError),
}

impl From<crate::fleet::FleetError> for StationError {
    fn from(e: crate::fleet::FleetError) -> Self {
        StationError::Fleet(e)
    }
}

impl StationError {
    pub fn device_not_found(udid: &str) -> Self {
        StationError::DeviceNotFound { udid: udid.into() }
    }

    pub fn not_paired(udid: &str) -> Self {
        StationError::NotPaired { udid: udid.into() }
    }

    /// Maps a lockdown refusal to the operator's next step.
    pub fn from_lockdown(udid: &str, err: LockdownError) -> Self {
        let udid = udid.to_string();
        match err.kind() {
            Some(LockdownErrorKind::PairingDialogResponsePending) => {
                StationError::TrustPending { udid }
            }
            Some(LockdownErrorKind::UserDeniedPairing) => StationError::TrustDenied { udid },
            Some(LockdownErrorKind::PasswordProtected) => StationError::PasscodeLocked { udid },
            Some(LockdownErrorKind::InvalidHostID) => StationError::PairRecordStale { udid },
            _ => match err {
                LockdownError::Channel(ChannelError::Closed) => {
                    StationError::DeviceDisconnected { udid }
                }
                LockdownError::Channel(ChannelError::Timeout(after)) => {
                    StationError::DeviceTimeout {
                        udid,
                        waiting: Waiting::Answer,
                        after,
                    }
                }
                LockdownError::SessionTls(ChannelError::Timeout(after)) => {
                    StationError::DeviceTimeout {
                        udid,
                        waiting: Waiting::TlsHandshake,
                        after,
                    }
                }
                LockdownError::SessionTls(ChannelError::PeerTlsTooOld { reason })
                | LockdownError::Channel(ChannelError::PeerTlsTooOld { reason }) => {
                    StationError::TlsTooOld { udid, reason }
                }
                LockdownError::SessionTls(reason) => {
                    StationError::SessionTlsRejected { udid, reason }
                }
                other => StationError::Device {
                    udid,
                    fault: DeviceFault::Lockdown(other),
                },
            },
        }
    }

    /// Which catalogue entry this error is.
    pub fn kind(&self) -> ErrorCode {
        match self {
            StationError::DeviceNotFound { .. } => ErrorCode::DeviceNotFound,
            StationError::TrustPending { .. } => ErrorCode::TrustPending,
            StationError::TrustDenied { .. } => ErrorCode::TrustDenied,
            StationError::PasscodeLocked { .. } => ErrorCode::PasscodeLocked,
            StationError::NotPaired { .. } => ErrorCode::NotPaired,
            StationError::PairRecordStale { .. } => ErrorCode::PairRecordStale,
            StationError::SessionTlsRejected { .. } => ErrorCode::SessionTlsRejected,
            StationError::TlsTooOld { .. } => ErrorCode::TlsTooOld,
            StationError::DeviceDisconnected { .. } => ErrorCode::DeviceDisconnected,
            StationError::DeviceTimeout { .. } => ErrorCode::DeviceTimeout,
            StationError::Device { .. } => ErrorCode::DeviceError,
            StationError::Usbmuxd(UsbmuxError::Unreachable { .. }) => ErrorCode::UsbmuxdUnreachable,
            StationError::Usbmuxd(UsbmuxError::BadAddress(_)) => ErrorCode::UsbmuxdAddress,
            StationError::Usbmuxd(_) => ErrorCode::UsbmuxdError,
            StationError::Usb(UsbError::Busy { .. }) => ErrorCode::UsbBusy,
            StationError::Usb(UsbError::Access { .. }) => ErrorCode::UsbAccess,
            StationError::Usb(_) => ErrorCode::UsbUnavailable,
            StationError::Pairing(_) => ErrorCode::PairingError,
            StationError::Tls(_) => ErrorCode::TlsError,
            StationError::HostIdentity(_) => ErrorCode::HostIdentity,
            StationError::Internal { .. } => ErrorCode::Internal,
            StationError::Ledger(LedgerError::InUse { .. }) => ErrorCode::LedgerInUse,
            StationError::Ledger(LedgerError::NewerSchema { .. }) => ErrorCode::LedgerNewer,
            StationError::Ledger(LedgerError::NoWal { .. }) => ErrorCode::LedgerNoWal,
            StationError::Ledger(_) => ErrorCode::LedgerError,
            StationError::Storage(StorageProblem::Full { .. }) => ErrorCode::LedgerFull,
            StationError::Storage(StorageProblem::ReadOnly { .. }) => ErrorCode::LedgerReadOnly,
            StationError::ActivationUrl { .. } => ErrorCode::ActivationUrl,
            StationError::ActivationClient(_) => ErrorCode::ActivationClient,
            StationError::CodesSource { .. } => ErrorCode::CodesSource,
            StationError::CodesNotConfigured => ErrorCode::CodesNotConfigured,
            StationError::CodesSourcesFailed(_) => ErrorCode::CodesSourcesFailed,
            StationError::CodesInvalid(_) => ErrorCode::CodesInvalid,
            StationError::ConfigInvalid(_) => ErrorCode::ConfigInvalid,
            StationError::ConfigRefused { .. } => ErrorCode::ConfigRefused,
            StationError::EnvFile(_) => ErrorCode::EnvFile,
            StationError::ReportRange => ErrorCode::ReportRange,
            StationError::ReportJson(_) | StationError::ReportCsv(_) => ErrorCode::ReportOutput,
            StationError::NoRun { .. } => ErrorCode::NoRun,
            StationError::WatchDenied { .. } => ErrorCode::WatchDenied,
            StationError::WatchFailed { .. } => ErrorCode::WatchFailed,
            StationError::RunGone { .. } => ErrorCode::RunGone,
            StationError::Output(_) => ErrorCode::Output,
            StationError::Demo { .. } => ErrorCode::Demo,
            StationError::HttpView { .. } => ErrorCode::HttpView,
            StationError::FleetNotConfigured => ErrorCode::FleetConfig,
            StationError::Fleet(e) if e.is_configuration() => ErrorCode::FleetConfig,
            StationError::Fleet(_) => ErrorCode::FleetDatabase,
        }
    }

    /// Stable identifier, e.g. `trust-pending`; appears in `--json` output.
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    pub fn exit_code(&self) -> u8 {
        self.kind().exit_code()
    }

    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// The operator's next step, when there is one.
    pub fn help(&self) -> Option<String> {
        let help = match self {
            StationError::DeviceNotFound { .. } => {
                "check the cable and run `station devices` to see the attached phones".into()
            }
            StationError::TrustPending { .. } => {
                "unlock the phone and tap Trust, then run the command again (or pass --wait SECONDS)".into()
            }
            StationError::TrustDenied { .. } => {
                "unplug and replug the phone, then tap Trust when it asks".into()
            }
            StationError::PasscodeLocked { .. } => {
                "unlock the phone with its passcode, then run the command again".into()
            }
            StationError::NotPaired { udid } => {
                format!("run `station pair --udid {udid}` and tap Trust on the phone")
            }
            StationError::PairRecordStale { udid } => {
                format!("run `station unpair --udid {udid}` then `station pair --udid {udid}`")
            }
            StationError::SessionTlsRejected { udid, .. } => format!(
                "the phone was erased or paired elsewhere since: run `station unpair --udid {udid}` then `station pair --udid {udid}`"
            ),
            StationError::TlsTooOld { .. } => {
                "phones before iOS 10 speak only old TLS: activate this one with a Mac (Finder) or Apple Configurator".into()
            }
            StationError::DeviceDisconnected { .. } => {
                "check the cable; replug the phone and retry".into()
            }
            StationError::DeviceTimeout { .. } => {
                "replug the phone; if it persists, restart it".into()
            }
            StationError::Usbmuxd(UsbmuxError::Unreachable { address, .. }) => format!(
                "start usbmuxd (`systemctl start usbmuxd`) or point USBMUXD_SOCKET_ADDRESS at it (tried {address})"
            ),
            StationError::Usb(UsbError::Busy { .. }) => {
                "stop usbmuxd for direct USB (`systemctl stop usbmuxd`, and the udev rule in hardware/README.md keeps it off) or run with `--transport usbmuxd`".into()
            }
            StationError::Usb(UsbError::Access { .. }) => {
                "install the station's udev rule (hardware/README.md) so the station's user may open Apple devices, then replug".into()
            }
            StationError::Usb(UsbError::NoBus { .. }) => {
                "this machine shows no USB bus: run on the bench machine, or use `--transport usbmuxd`".into()
            }
            StationError::Ledger(LedgerError::InUse { .. }) => {
                "only one `station run` per data directory: stop the other one, or give this one its own --data-dir".into()
            }
            StationError::Ledger(LedgerError::NewerSchema { .. }) => {
                "a newer station version wrote this ledger: upgrade this one".into()
            }
            StationError::Ledger(LedgerError::NoWal { .. }) => {
                "put the data directory on a local filesystem (not NFS/SMB)".into()
            }
            StationError::Storage(StorageProblem::Full { .. }) => {
                "free space in the data directory (or give it a larger disk); the line takes phones again by itself once there is room".into()
            }
            StationError::Storage(StorageProblem::ReadOnly { .. }) => {
                "the filesystem went read-only (often after a disk error): check the disk and remount it read-write; the line takes phones again by itself".into()
            }
            StationError::CodesSource(e) => e.help().into(),
            StationError::CodesNotConfigured => {
                "add [[codes.sources]] to the configuration (`station config example` shows them)".into()
            }
            StationError::CodesSourcesFailed(_) => {
                "fix the sources named above; `station config check` validates the file".into()
            }
            StationError::CodesInvalid(_) => {
                "fix the rows named above; the file is the station's CSV (header serial_number,udid,bypass_code,code_kind,source,retrieved_at), a Kandji device-secrets export or an IntuneCD activation-lock backup (docs/code-sources.md)".into()
            }
            StationError::ConfigInvalid(e) => e.help().into(),
            StationError::ConfigRefused { .. } => {
                "fix what is named above; `station config check` lists every problem".into()
            }
            StationError::EnvFile(_) => {
                "one KEY=VALUE per line, like systemd's EnvironmentFile; mode 0600".into()
            }
            StationError::NoRun { .. } => {
                "start it with `systemctl start station` (or `station run`), then watch again".into()
            }
            StationError::WatchDenied { .. } => {
                "the socket is private to the user the station runs as: `sudo station watch`".into()
            }
            StationError::RunGone {
                loss: RunLoss::EndedEarly,
                ..
            } => {
                "it was stopped, or this watcher fell behind and was dropped; `station report` shows what it recorded".into()
            }
            StationError::HttpView { .. } => {
                "give --http (or [ui] http) a free address of this machine, like 127.0.0.1:8080; another host's only with [ui] allow_remote = true".into()
            }
            StationError::FleetNotConfigured => FLEET_CONFIG_HELP.into(),
            StationError::Fleet(e) if e.is_configuration() => FLEET_CONFIG_HELP.into(),
            StationError::Fleet(_) => {
                "check that the fleet database is up and the station's role may use it (docs/fleet.md); the stations keep working and ship later".into()
            }
            StationError::Device { .. }
            | StationError::Usbmuxd(_)
            | StationError::Usb(_)
            | StationError::Pairing(_)
            | StationError::Tls(_)
            | StationError::HostIdentity(_)
            | StationError::Internal { .. }
            | StationError::Ledger(_)
            | StationError::ActivationUrl { .. }
            | StationError::ActivationClient(_)
            | StationError::ReportRange
            | StationError::ReportJson(_)
            | StationError::ReportCsv(_)
            | StationError::WatchFailed { .. }
            | StationError::RunGone { .. }
            | StationError::Output(_)
            | StationError::Demo { .. } => return None,
        };
        Some(help)
    }

    /// One error of each code, with placeholder data: the catalogue's help texts come from
    /// the same [`StationError::help`] the operator sees.
    #[cfg_attr(not(test), allow(dead_code))] // read by the docs test
    pub fn example(code: ErrorCode) -> StationError {
        let udid = "<udid>".to_string();
        let socket = PathBuf::from("<data-dir>/station.sock");
        let text = || "<reason>".to_string();
        match code {
            ErrorCode::DeviceNotFound => StationError::DeviceNotFound { udid },
            ErrorCode::TrustPending => StationError::TrustPending { udid },
            ErrorCode::TrustDenied => StationError::TrustDenied { udid },
            ErrorCode::PasscodeLocked => StationError::PasscodeLocked { udid },
            ErrorCode::NotPaired => StationError::NotPaired { udid },
            ErrorCode::PairRecordStale => StationError::PairRecordStale { udid },
            ErrorCode::SessionTlsRejected => StationError::SessionTlsRejected {
                udid,
                reason: ChannelError::Closed,
            },
            ErrorCode::TlsTooOld => StationError::TlsTooOld {
                udid,
                reason: text(),
            },
            ErrorCode::DeviceDisconnected => StationError::DeviceDisconnected { udid },
            ErrorCode::DeviceTimeout => StationError::DeviceTimeout {
                udid,
                waiting: Waiting::Answer,
                after: Duration::from_secs(10),
            },
            ErrorCode::DeviceError => StationError::Device {
                udid,
                fault: DeviceFault::NotData("DevicePublicKey"),
            },
            ErrorCode::UsbmuxdUnreachable => match Address::parse(DEFAULT_USBMUXD) {
                Ok(address) => StationError::Usbmuxd(UsbmuxError::Unreachable {
                    address,
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                }),
                Err(e) => StationError::Usbmuxd(e),
            },
            ErrorCode::UsbmuxdAddress => StationError::Usbmuxd(UsbmuxError::BadAddress(text())),
            ErrorCode::UsbmuxdError => StationError::Usbmuxd(UsbmuxError::Closed),
            ErrorCode::UsbUnavailable => StationError::Usb(UsbError::NoBus {
                reason: "/sys/bus/usb/devices does not exist".into(),
            }),
            ErrorCode::UsbBusy => StationError::Usb(UsbError::Busy {
                location: "1-1.4".into(),
                holder: "usbmuxd, running as pid 812".into(),
                reason: "device or resource busy".into(),
            }),
            ErrorCode::UsbAccess => StationError::Usb(UsbError::Access {
                location: "1-1.4".into(),
                reason: "permission denied".into(),
            }),
            ErrorCode::PairingError => StationError::Pairing(PairingError::NotADictionary),
            ErrorCode::TlsError => StationError::Tls(TlsError::NoCertificate),
            ErrorCode::HostIdentity => StationError::HostIdentity(text()),
            ErrorCode::Internal => StationError::Internal {
                task: "ledger",
                reason: text(),
            },
            ErrorCode::LedgerInUse => StationError::Ledger(LedgerError::InUse {
                dir: PathBuf::from("<data-dir>"),
            }),
            ErrorCode::LedgerNewer => StationError::Ledger(LedgerError::NewerSchema {
                path: PathBuf::from("<data-dir>/ledger.sqlite"),
                found: 2,
                supported: 1,
            }),
            ErrorCode::LedgerNoWal => StationError::Ledger(LedgerError::NoWal {
                mode: "delete".into(),
            }),
            ErrorCode::LedgerError => StationError::Ledger(LedgerError::Io {
                path: PathBuf::from("<data-dir>"),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            }),
            ErrorCode::LedgerFull => StationError::Storage(StorageProblem::Full {
                dir: PathBuf::from("<data-dir>"),
                free_bytes: 0,
            }),
            ErrorCode::LedgerReadOnly => StationError::Storage(StorageProblem::ReadOnly {
                dir: PathBuf::from("<data-dir>"),
            }),
            ErrorCode::ActivationUrl => StationError::ActivationUrl {
                url: "ftp://example".into(),
                problem: UrlProblem::NotHttp,
            },
            ErrorCode::ActivationClient => StationError::ActivationClient(text()),
            ErrorCode::CodesSource => StationError::CodesSource(ChainError::Build {
                source_name: "<name>".into(),
                kind: "csv",
                reason: text(),
            }),
            ErrorCode::CodesNotConfigured => StationError::CodesNotConfigured,
            ErrorCode::CodesSourcesFailed => {
                StationError::CodesSourcesFailed(ChainError::AllFailed {
                    failures: Vec::new(),
                })
            }
            ErrorCode::CodesInvalid => StationError::CodesInvalid(text()),
            ErrorCode::ConfigInvalid => StationError::ConfigInvalid(ConfigError::Invalid {
                location: "station.toml:1:1".into(),
                message: text(),
                has_line: true,
            }),
            ErrorCode::ConfigRefused => StationError::ConfigRefused {
                problems: vec![text()],
            },
            ErrorCode::EnvFile => StationError::EnvFile(EnvFileError::Syntax {
                path: PathBuf::from("<env-file>"),
                line: 1,
            }),
            ErrorCode::ReportRange => StationError::ReportRange,
            ErrorCode::ReportOutput => StationError::ReportCsv(text()),
            ErrorCode::NoRun => StationError::NoRun { socket },
            ErrorCode::WatchDenied => StationError::WatchDenied { socket },
            ErrorCode::WatchFailed => StationError::WatchFailed {
                socket,
                failure: WatchFailure::NotAnEvent,
            },
            ErrorCode::RunGone => StationError::RunGone {
                socket,
                loss: RunLoss::EndedEarly,
            },
            ErrorCode::Output => {
                StationError::Output(std::io::Error::from(std::io::ErrorKind::WriteZero))
            }
            ErrorCode::Demo => StationError::Demo {
                what: "demo world",
                reason: text(),
            },
            ErrorCode::HttpView => StationError::HttpView { reason: text() },
            ErrorCode::FleetConfig => StationError::FleetNotConfigured,
            ErrorCode::FleetDatabase => StationError::Fleet(crate::fleet::FleetError::Connect {
                target: "postgresql://station:***@db/fleet".into(),
                reason: text(),
            }),
        }
    }

    /// Every code with its exit code, retry rule and help: what `docs/errors.md` documents.
    #[cfg_attr(not(test), allow(dead_code))] // read by the docs test
    pub fn catalogue() -> Vec<CatalogueEntry> {
        ErrorCode::ALL
            .iter()
            .map(|&code| CatalogueEntry {
                code,
                exit_code: code.exit_code(),
                retryable: code.is_retryable(),
                help: StationError::example(code).help(),
            })
            .collect()
    }
}

/// One row of [`StationError::catalogue`]; help texts show placeholders such as `<udid>`.
#[cfg_attr(not(test), allow(dead_code))] // read by the docs test
#[derive(Debug, Clone)]
pub struct CatalogueEntry {
    pub code: ErrorCode,
    pub exit_code: u8,
    pub retryable: bool,
    pub help: Option<String>,
}

impl fmt::Display for StationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StationError::DeviceNotFound { udid } => {
                write!(f, "no phone with UDID {udid} is attached")
            }
            StationError::TrustPending { udid } => write!(f, "trust prompt pending on {udid}"),
            StationError::TrustDenied { udid } => write!(
                f,
                "{udid} refused to trust this station (Don't Trust was tapped)"
            ),
            StationError::PasscodeLocked { udid } => write!(f, "{udid} is locked with a passcode"),
            StationError::NotPaired { udid } => {
                write!(f, "this station is not paired with {udid}")
            }
            StationError::PairRecordStale { udid } => write!(
                f,
                "{udid} no longer knows this station's pair record (erased since pairing?)"
            ),
            StationError::SessionTlsRejected { udid, reason } => write!(
                f,
                "{udid} rejected the TLS session with this station's pair record ({reason})"
            ),
            StationError::TlsTooOld { udid, reason } => write!(
                f,
                "{udid} speaks only TLS 1.0/1.1, older than the TLS 1.2 the station needs ({reason})"
            ),
            StationError::DeviceDisconnected { udid } => {
                write!(f, "{udid} closed the connection (unplugged?)")
            }
            StationError::DeviceTimeout {
                udid,
                waiting: Waiting::Answer,
                after,
            } => write!(f, "{udid} did not answer within {after:?}"),
            StationError::DeviceTimeout {
                udid,
                waiting: Waiting::TlsHandshake,
                after,
            } => write!(f, "{udid} did not finish the TLS handshake within {after:?}"),
            StationError::Device {
                udid,
                fault: DeviceFault::Lockdown(e),
            } => write!(f, "{udid}: {e}"),
            StationError::Device {
                udid,
                fault: DeviceFault::NotData(key),
            } => write!(f, "{udid}: {key} is not data"),
            StationError::Usbmuxd(e) => fmt::Display::fmt(e, f),
            StationError::Usb(e) => fmt::Display::fmt(e, f),
            StationError::Pairing(e) => fmt::Display::fmt(e, f),
            StationError::Tls(e) => fmt::Display::fmt(e, f),
            StationError::HostIdentity(message) => f.write_str(message),
            StationError::Internal { task, reason } => write!(f, "{task} task failed: {reason}"),
            StationError::Ledger(e) => fmt::Display::fmt(e, f),
            StationError::Storage(e) => fmt::Display::fmt(e, f),
            StationError::ActivationUrl {
                url,
                problem: UrlProblem::Invalid(reason),
            } => write!(f, "invalid activation server URL {url:?}: {reason}"),
            StationError::ActivationUrl {
                problem: UrlProblem::PlainHttp(reason),
                ..
            } => write!(f, "{reason}"),
            StationError::ActivationUrl {
                url,
                problem: UrlProblem::NotHttp,
            } => write!(f, "activation server URL {url:?} must be http(s)"),
            StationError::ActivationClient(message) | StationError::CodesInvalid(message) => {
                f.write_str(message)
            }
            StationError::CodesSource(e) | StationError::CodesSourcesFailed(e) => {
                fmt::Display::fmt(e, f)
            }
            StationError::CodesNotConfigured => f.write_str("no bypass-code source is configured"),
            StationError::ConfigInvalid(e) => fmt::Display::fmt(e, f),
            StationError::ConfigRefused { problems } => write!(
                f,
                "the configuration cannot be used: {}",
                problems.join("; ")
            ),
            StationError::EnvFile(e) => fmt::Display::fmt(e, f),
            StationError::ReportRange => f.write_str("--since is after --until: nothing can match"),
            StationError::ReportJson(reason) => write!(f, "cannot encode JSON: {reason}"),
            StationError::ReportCsv(reason) => write!(f, "cannot write CSV: {reason}"),
            StationError::NoRun { socket } => {
                write!(f, "no station run is live at {}", socket.display())
            }
            StationError::WatchDenied { socket } => write!(
                f,
                "cannot attach to the station run at {}: permission denied",
                socket.display()
            ),
            StationError::WatchFailed { socket, failure } => match failure {
                WatchFailure::Connect(e) => write!(
                    f,
                    "cannot attach to the station run at {}: {e}",
                    socket.display()
                ),
                WatchFailure::NoAnswer(after) => write!(
                    f,
                    "the station run at {} did not answer in {after:?}",
                    socket.display()
                ),
                WatchFailure::NotAnEvent => {
                    write!(f, "{} sent a line that is not an event", socket.display())
                }
            },
            StationError::RunGone { socket, loss } => match loss {
                RunLoss::EndedEarly => write!(
                    f,
                    "the station run at {} ended before its summary",
                    socket.display()
                ),
                RunLoss::Read(e) => write!(f, "lost the station run at {}: {e}", socket.display()),
            },
            StationError::Output(e) => write!(f, "cannot write output: {e}"),
            StationError::Demo { what, reason } => write!(f, "{what}: {reason}"),
            StationError::HttpView { reason } => write!(f, "live view: {reason}"),
            StationError::FleetNotConfigured => {
                write!(f, "no fleet database: the configuration has no [fleet] section")
            }
            StationError::Fleet(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StationError {}

impl From<UsbmuxError> for StationError {
    fn from(err: UsbmuxError) -> Self {
        StationError::Usbmuxd(err)
    }
}

impl From<UsbError> for StationError {
    fn from(err: UsbError) -> Self {
        StationError::Usb(err)
    }
}

impl From<PairingError> for StationError {
    fn from(err: PairingError) -> Self {
        StationError::Pairing(err)
    }
}

impl From<TlsError> for StationError {
    fn from(err: TlsError) -> Self {
        StationError::Tls(err)
    }
}

impl From<LedgerError> for StationError {
    fn from(err: LedgerError) -> Self {
        StationError::Ledger(err)
    }
}

impl From<ConfigError> for StationError {
    fn from(err: ConfigError) -> Self {
        StationError::ConfigInvalid(err)
    }
}

impl From<EnvFileError> for StationError {
    fn from(err: EnvFileError) -> Self {
        StationError::EnvFile(err)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// `as_str` and `example` match every variant, so a new code cannot be forgotten there;
    /// this checks `ALL` lists each once and each example is of its own code.
    #[test]
    fn every_code_is_in_the_catalogue_once_and_examples_match() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert_eq!(StationError::example(code).kind(), code);
        }
    }

    /// One row of docs/errors.md's code tables.
    #[derive(Debug, PartialEq)]
    struct Documented {
        exit: u8,
        retried: bool,
        /// "What the operator does", without markdown's backticks.
        operator: String,
    }

    /// `| `code` | exit | yes/no | meaning | what the operator does |` rows of docs/errors.md.
    fn documented() -> BTreeMap<String, Documented> {
        let text = include_str!("../../docs/errors.md");
        let mut rows = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("| `") else {
                continue;
            };
            let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
            let code = cells[0].trim_end_matches('`').to_string();
            let exit: u8 = cells[1]
                .parse()
                .unwrap_or_else(|_| panic!("{code}: exit {:?}", cells[1]));
            let retried = match cells[2] {
                "yes" => true,
                "no" => false,
                other => panic!("{code}: retried {other:?}"),
            };
            let operator = cells[4].replace('`', "");
            let row = Documented {
                exit,
                retried,
                operator,
            };
            assert!(
                rows.insert(code.clone(), row).is_none(),
                "{code} documented twice"
            );
        }
        rows
    }

    #[test]
    fn docs_errors_md_documents_the_catalogue() {
        let documented = documented();
        let catalogue = StationError::catalogue();
        let mut unlike_help = Vec::new();
        for entry in &catalogue {
            let code = entry.code.as_str();
            let row = documented
                .get(code)
                .unwrap_or_else(|| panic!("docs/errors.md does not document `{code}`"));
            assert_eq!(
                (row.exit, row.retried),
                (entry.exit_code, entry.retryable),
                "docs/errors.md: `{code}` should say exit {} and retried {}",
                entry.exit_code,
                entry.retryable
            );
            // The operator's step is the help the station prints, word for word.
            if let Some(help) = &entry.help {
                let help = help.replace('`', "");
                if row.operator != help {
                    unlike_help.push(format!("`{code}`: {help}"));
                }
            }
        }
        assert!(
            unlike_help.is_empty(),
            "docs/errors.md: the operator's step should be the help:\n{}",
            unlike_help.join("\n")
        );
        let text = include_str!("../../docs/errors.md");
        let order: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
            .collect();
        let listed: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            order, listed,
            "docs/errors.md lists the codes in ErrorCode::ALL's order"
        );
        for code in documented.keys() {
            assert!(
                catalogue.iter().any(|e| e.code.as_str() == code),
                "docs/errors.md documents `{code}`, which the station does not have"
            );
        }
    }

    #[test]
    fn messages_and_help_read_as_before() {
        let udid = "00008030-0011";
        let stale = StationError::PairRecordStale { udid: udid.into() };
        assert_eq!(stale.code(), "pair-record-stale");
        assert_eq!(stale.exit_code(), exit::NEEDS_OPERATOR);
        assert_eq!(
            stale.to_string(),
            "00008030-0011 no longer knows this station's pair record (erased since pairing?)"
        );
        assert_eq!(
            stale.help().as_deref(),
            Some("run `station unpair --udid 00008030-0011` then `station pair --udid 00008030-0011`")
        );
        let unreachable = StationError::example(ErrorCode::UsbmuxdUnreachable);
        assert_eq!(unreachable.exit_code(), exit::NO_USBMUXD);
        assert!(unreachable
            .help()
            .is_some_and(|h| h.ends_with("(tried UNIX:/var/run/usbmuxd)")));
        let timeout = StationError::from_lockdown(
            udid,
            LockdownError::SessionTls(ChannelError::Timeout(Duration::from_secs(3))),
        );
        assert_eq!(timeout.code(), "device-timeout");
        assert!(timeout.is_retryable());
        assert_eq!(
            timeout.to_string(),
            "00008030-0011 did not finish the TLS handshake within 3s"
        );
        let too_old = StationError::from_lockdown(
            udid,
            LockdownError::Channel(ChannelError::PeerTlsTooOld {
                reason: "TLS 1.0".into(),
            }),
        );
        assert_eq!(too_old.kind(), ErrorCode::TlsTooOld);
        assert_eq!(too_old.exit_code(), exit::UNSUPPORTED);
        // Wrapped errors read as their own Display, as before.
        let in_use = StationError::example(ErrorCode::LedgerInUse);
        assert_eq!(
            in_use.to_string(),
            "another station process is writing the ledger in <data-dir>"
        );
    }
}
