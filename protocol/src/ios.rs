//! iOS versions as lockdown reports them (`ProductVersion`, e.g. `9.3.5`), and what the
//! station can do with a phone of each.
//!
//! The floor comes from two facts (docs/fidelity.md): rustls speaks only TLS 1.2 and 1.3,
//! while phones before iOS 10 speak TLS 1.0 only (libimobiledevice caps them at TLS 1.0)
//! and lack the session-mode activation (drmHandshake) the station runs; reports for
//! iOS 10–11 conflict, and iOS 12 and later negotiate TLS 1.2.

use std::fmt;

/// A parsed `ProductVersion`: `major.minor[.patch]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IosVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

/// How far the station serves a phone of some iOS version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// iOS 12 and later: TLS 1.2 and session-mode activation, as tested.
    Full,
    /// iOS 10–11: tried; a failed TLS handshake is reported naming the version.
    Tried,
    /// iOS 9 and earlier: refused before pairing.
    Unsupported,
}

/// The oldest major version that is fully supported.
pub const FULLY_SUPPORTED_FROM: u16 = 12;
/// The oldest major version the station tries at all.
pub const TRIED_FROM: u16 = 10;

impl IosVersion {
    /// Parses `ProductVersion`; `None` for anything that is not 2–3 dot-separated numbers.
    pub fn parse(text: &str) -> Option<IosVersion> {
        let mut parts = text.trim().split('.');
        let mut next = || -> Option<Option<u16>> {
            match parts.next() {
                None => Some(None),
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().ok().map(Some)
                }
                Some(_) => None,
            }
        };
        let major = next()??;
        let minor = next()??;
        let patch = next()?.unwrap_or(0);
        if parts.next().is_some() {
            return None;
        }
        Some(IosVersion {
            major,
            minor,
            patch,
        })
    }

    /// The TLS a phone of this version speaks as the server of its lockdown sessions.
    pub fn tls_generation(self) -> TlsGeneration {
        if self.major >= FULLY_SUPPORTED_FROM {
            TlsGeneration::Tls12
        } else if self.major >= TRIED_FROM {
            TlsGeneration::Tls10To12
        } else {
            TlsGeneration::Tls10Only
        }
    }

    /// What the station can do with such a phone follows from the TLS it speaks.
    pub fn support(self) -> Support {
        match self.tls_generation() {
            TlsGeneration::Tls12 => Support::Full,
            TlsGeneration::Tls10To12 => Support::Tried,
            TlsGeneration::Tls10Only => Support::Unsupported,
        }
    }
}

/// The TLS versions a phone accepts, by generation (docs/fidelity.md): iOS 12 and later TLS
/// 1.2 only, iOS 10 and 11 TLS 1.0 to 1.2, iOS 9 and earlier TLS 1.0 only. The virtual bench
/// serves each, and a world file may pin one (`tls = "tls1.0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TlsGeneration {
    #[serde(rename = "tls1.2")]
    Tls12,
    #[serde(rename = "tls1.0-1.2")]
    Tls10To12,
    #[serde(rename = "tls1.0")]
    Tls10Only,
}

impl TlsGeneration {
    /// From a `ProductVersion` such as `9.3.5`; an unreadable one counts as modern.
    pub fn for_ios(product_version: &str) -> Self {
        IosVersion::parse(product_version).map_or(TlsGeneration::Tls12, IosVersion::tls_generation)
    }
}

impl fmt::Display for IosVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.patch == 0 {
            write!(f, "{}.{}", self.major, self.minor)
        } else {
            write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_versions_parse() {
        assert_eq!(
            IosVersion::parse("9.3.5"),
            Some(IosVersion {
                major: 9,
                minor: 3,
                patch: 5
            })
        );
        assert_eq!(
            IosVersion::parse("18.6").map(|v| v.to_string()),
            Some("18.6".into())
        );
        for bad in ["", "18", "18.", "a.b", "18.6.1.2", "-1.0", "18.6 beta"] {
            assert_eq!(IosVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_floor_is_ios_10_and_full_support_starts_at_12() {
        let support = |v: &str| IosVersion::parse(v).map(IosVersion::support);
        assert_eq!(support("9.3.5"), Some(Support::Unsupported));
        assert_eq!(support("10.3.3"), Some(Support::Tried));
        assert_eq!(support("11.4.1"), Some(Support::Tried));
        assert_eq!(support("12.0"), Some(Support::Full));
        assert_eq!(support("26.1"), Some(Support::Full));
    }
}
