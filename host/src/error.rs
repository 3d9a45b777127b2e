//! Operator-facing failures: a stable code, a one-line message and a next step.

use std::fmt;

use station_protocol::channel::ChannelError;
use station_protocol::lockdown::{LockdownError, LockdownErrorKind};
use station_protocol::pairing::PairingError;
use station_protocol::tls::TlsError;
use station_protocol::usbmux::UsbmuxError;

/// Process exit codes; stable, documented in the README.
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
}

#[derive(Debug)]
pub struct StationError {
    /// Stable identifier, e.g. `trust-pending`; appears in `--json` output.
    pub code: &'static str,
    pub message: String,
    pub help: Option<String>,
    pub exit: u8,
}

impl StationError {
    pub fn new(code: &'static str, exit: u8, message: impl Into<String>) -> Self {
        StationError {
            code,
            message: message.into(),
            help: None,
            exit,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn device_not_found(udid: &str) -> Self {
        StationError::new(
            "device-not-found",
            exit::NO_DEVICE,
            format!("no phone with UDID {udid} is attached"),
        )
        .help("check the cable and run `station devices` to see the attached phones")
    }

    pub fn trust_pending(udid: &str) -> Self {
        StationError::new(
            "trust-pending",
            exit::NEEDS_OPERATOR,
            format!("trust prompt pending on {udid}"),
        )
        .help("unlock the phone and tap Trust, then run the command again (or pass --wait SECONDS)")
    }

    pub fn trust_denied(udid: &str) -> Self {
        StationError::new(
            "trust-denied",
            exit::NEEDS_OPERATOR,
            format!("{udid} refused to trust this station (Don't Trust was tapped)"),
        )
        .help("unplug and replug the phone, then tap Trust when it asks")
    }

    pub fn passcode_locked(udid: &str) -> Self {
        StationError::new(
            "passcode-locked",
            exit::NEEDS_OPERATOR,
            format!("{udid} is locked with a passcode"),
        )
        .help("unlock the phone with its passcode, then run the command again")
    }

    pub fn not_paired(udid: &str) -> Self {
        StationError::new(
            "not-paired",
            exit::NEEDS_OPERATOR,
            format!("this station is not paired with {udid}"),
        )
        .help(format!(
            "run `station pair --udid {udid}` and tap Trust on the phone"
        ))
    }

    pub fn stale_pair_record(udid: &str) -> Self {
        StationError::new(
            "pair-record-stale",
            exit::NEEDS_OPERATOR,
            format!("{udid} no longer knows this station's pair record (erased since pairing?)"),
        )
        .help(format!(
            "run `station unpair --udid {udid}` then `station pair --udid {udid}`"
        ))
    }

    /// The phone took `StartSession` but then failed the TLS handshake with the stored record:
    /// like an erased phone, it no longer trusts these certificates (libimobiledevice sees
    /// "SSL error -5" here; usbmuxd's preflight deletes such a record).
    pub fn session_tls_rejected(udid: &str, reason: &ChannelError) -> Self {
        StationError::new(
            "session-tls-rejected",
            exit::NEEDS_OPERATOR,
            format!("{udid} rejected the TLS session with this station's pair record ({reason})"),
        )
        .help(format!(
            "the phone was erased or paired elsewhere since: run `station unpair --udid {udid}` then `station pair --udid {udid}`"
        ))
    }

    /// The phone offers only TLS 1.0/1.1: an iOS older than the station serves.
    pub fn tls_too_old(udid: &str, reason: &str) -> Self {
        StationError::new(
            "tls-too-old",
            exit::UNSUPPORTED,
            format!("{udid} speaks only TLS 1.0/1.1, older than the TLS 1.2 the station needs ({reason})"),
        )
        .help("phones before iOS 10 speak only old TLS: activate this one with a Mac (Finder) or Apple Configurator")
    }

    /// Maps a lockdown refusal to the operator's next step.
    pub fn from_lockdown(udid: &str, err: LockdownError) -> Self {
        match err.kind() {
            Some(LockdownErrorKind::PairingDialogResponsePending) => Self::trust_pending(udid),
            Some(LockdownErrorKind::UserDeniedPairing) => Self::trust_denied(udid),
            Some(LockdownErrorKind::PasswordProtected) => Self::passcode_locked(udid),
            Some(LockdownErrorKind::InvalidHostID) => Self::stale_pair_record(udid),
            _ => match err {
                LockdownError::Channel(ChannelError::Closed) => StationError::new(
                    "device-disconnected",
                    exit::DEVICE_ERROR,
                    format!("{udid} closed the connection (unplugged?)"),
                )
                .help("check the cable; replug the phone and retry"),
                LockdownError::Channel(ChannelError::Timeout(after)) => StationError::new(
                    "device-timeout",
                    exit::DEVICE_ERROR,
                    format!("{udid} did not answer within {after:?}"),
                )
                .help("replug the phone; if it persists, restart it"),
                LockdownError::SessionTls(ChannelError::Timeout(after)) => StationError::new(
                    "device-timeout",
                    exit::DEVICE_ERROR,
                    format!("{udid} did not finish the TLS handshake within {after:?}"),
                )
                .help("replug the phone; if it persists, restart it"),
                LockdownError::SessionTls(ChannelError::PeerTlsTooOld { reason })
                | LockdownError::Channel(ChannelError::PeerTlsTooOld { reason }) => {
                    Self::tls_too_old(udid, &reason)
                }
                LockdownError::SessionTls(reason) => Self::session_tls_rejected(udid, &reason),
                other => StationError::new(
                    "device-error",
                    exit::DEVICE_ERROR,
                    format!("{udid}: {other}"),
                ),
            },
        }
    }
}

impl fmt::Display for StationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StationError {}

impl From<UsbmuxError> for StationError {
    fn from(err: UsbmuxError) -> Self {
        match &err {
            UsbmuxError::Unreachable { address, .. } => StationError::new(
                "usbmuxd-unreachable",
                exit::NO_USBMUXD,
                err.to_string(),
            )
            .help(format!(
                "start usbmuxd (`systemctl start usbmuxd`) or point USBMUXD_SOCKET_ADDRESS at it (tried {address})"
            )),
            UsbmuxError::BadAddress(_) => {
                StationError::new("usbmuxd-address", exit::USAGE, err.to_string())
            }
            _ => StationError::new("usbmuxd-error", exit::FAILURE, err.to_string()),
        }
    }
}

impl From<PairingError> for StationError {
    fn from(err: PairingError) -> Self {
        StationError::new("pairing-error", exit::FAILURE, err.to_string())
    }
}

impl From<TlsError> for StationError {
    fn from(err: TlsError) -> Self {
        StationError::new("tls-error", exit::FAILURE, err.to_string())
    }
}
