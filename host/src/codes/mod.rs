//! Bypass codes for a phone, by serial number, from the station's code sources.

pub mod csv_file;

use std::fmt;

use serde::Serialize;
use station_protocol::bypass_code::BypassCode;

/// Which of a device's two possible codes this is (mdm.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

impl Lookup {
    /// Adds a code unless the same code is already there.
    pub fn push(&mut self, code: SourcedCode) {
        self.known = true;
        if !self.codes.iter().any(|c| c.code == code.code) {
            self.codes.push(code);
        }
    }
}

/// Something that can name the bypass codes of a phone.
pub trait CodeLookup: Send + Sync {
    fn lookup<'a>(
        &'a self,
        serial: &'a str,
        udid: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Lookup, String>>;
}
