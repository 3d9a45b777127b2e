//! Pairing: the pair record a host keeps per phone, the certificates in it, and where it is
//! stored (docs/protocol.md §4.1–4.3).
//!
//! A pair record is what lets a host open a TLS session with lockdownd without a trust
//! prompt. The host makes it (root + host certificates, a device certificate issued for the
//! phone's `DevicePublicKey`), sends the public half in lockdown `Pair`, and keeps the whole
//! record where usbmuxd keeps its own (`/var/lib/lockdown/<UDID>.plist`) so that peer tools
//! (`ideviceinfo`, pymobiledevice3) can reuse it.
//!
//! - [`PairRecord`]: the plist, read and written byte-compatibly with usbmuxd/libimobiledevice.
//! - [`HostIdentity`], [`PairingSigner`], [`generate_pair_record`]: certificate generation as
//!   libimobiledevice does it.
//! - [`DeviceKeyPair`], [`verify_pair_request`]: the phone's side, for the simulator.
//! - [`PairRecordStore`], [`DirPairStore`]: where records live.

mod certs;
mod record;
mod store;
mod usbmuxd_store;

pub use certs::{
    generate_pair_record, verify_pair_request, DeviceKeyPair, HostIdentity, PairRequestCerts,
    PairingSigner,
};
pub use record::PairRecord;
pub use store::{validate_udid, BoxFuture, DirPairStore, PairRecordStore};
pub use usbmuxd_store::UsbmuxdPairStore;

use std::path::PathBuf;

/// Everything that can go wrong while reading, making, checking or storing a pair record.
///
/// Variants carry the plist key or file involved so an operator message can say which part
/// of which record is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// The bytes are neither an XML nor a binary plist.
    #[error("pair record is not a valid plist: {source}")]
    Plist {
        #[source]
        source: plist::Error,
    },
    /// The plist's top level is not a dictionary.
    #[error("pair record is not a dictionary")]
    NotADictionary,
    /// A required key is absent.
    #[error("pair record has no `{key}`")]
    MissingKey { key: &'static str },
    /// A key holds a value of the wrong plist type.
    #[error("pair record key `{key}` is {found}, expected {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    /// A PEM field (certificate or key) does not decode as PEM.
    #[error("`{key}` is not valid PEM: {reason}")]
    BadPem { key: &'static str, reason: String },
    /// A certificate's PEM decodes but its DER is not an X.509 certificate.
    #[error("`{key}` is not a valid X.509 certificate: {reason}")]
    BadCertificate { key: &'static str, reason: String },
    /// A key (the phone's `DevicePublicKey`, or a stored private key) cannot be used.
    #[error("`{key}` is not a usable RSA key: {reason}")]
    BadKey { key: &'static str, reason: String },
    /// The DeviceCertificate in a Pair request certifies some other phone's key.
    #[error("DeviceCertificate was issued for a different public key than this device's")]
    WrongDeviceKey,
    /// A certificate in a Pair request is not signed by the request's RootCertificate.
    #[error("`{key}` is not signed by RootCertificate: {reason}")]
    BadSignature { key: &'static str, reason: String },
    /// rcgen / aws-lc-rs refused to generate a key or certificate.
    #[error("certificate generation failed while {step}: {source}")]
    Generation {
        step: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// A UDID that cannot safely become a file name.
    #[error("invalid UDID {udid:?}: expected 24 to 40 characters of hex digits and '-'")]
    InvalidUdid { udid: String },
    /// A file-system operation on the pair-record directory failed.
    #[error(transparent)]
    Io(crate::file_error::FileError),
    /// A stored file exists but does not hold a usable record / configuration.
    #[error("{} is unusable: {source}", path.display())]
    StoredFile {
        path: PathBuf,
        #[source]
        source: Box<PairingError>,
    },
    /// A store backend other than the directory (e.g. the usbmuxd socket) failed.
    #[error("pair record store `{store}` failed: {source}")]
    Store {
        store: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Name of a plist value's type, for [`PairingError::WrongType`].
fn type_name(value: &plist::Value) -> &'static str {
    match value {
        plist::Value::Array(_) => "an array",
        plist::Value::Dictionary(_) => "a dictionary",
        plist::Value::Boolean(_) => "a boolean",
        plist::Value::Data(_) => "data",
        plist::Value::Date(_) => "a date",
        plist::Value::Real(_) => "a real",
        plist::Value::Integer(_) => "an integer",
        plist::Value::String(_) => "a string",
        plist::Value::Uid(_) => "a UID",
        _ => "an unknown plist type",
    }
}
