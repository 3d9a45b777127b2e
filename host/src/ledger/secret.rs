//! Keeping bypass codes out of the ledger: a release is stored only with a code in masked
//! form, and free text (reasons, source names) has any whole code masked before it is
//! written.

use station_protocol::bypass_code::BypassCode;

use super::LedgerError;
use crate::activation::Release;
use crate::redact::scrub_codes;

/// A bypass code in the masked form `3UM43-…-FKA4`; nothing else can be built, so a whole
/// code cannot reach the ledger through this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedCode(String);

impl MaskedCode {
    /// Accepts exactly the shape [`BypassCode::masked`] produces. `source` names where the
    /// code came from, for the error (the text itself is never echoed).
    pub fn new(text: &str, source: &str) -> Result<MaskedCode, LedgerError> {
        let refuse = || LedgerError::UnmaskedCode {
            code_source: source.to_string(),
        };
        // Belt and braces: the shape check below already excludes every whole code.
        if BypassCode::parse(text).is_ok() {
            return Err(refuse());
        }
        if BypassCode::is_masked(text) {
            Ok(MaskedCode(text.to_string()))
        } else {
            Err(refuse())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which code source released a lock, as stored: the code only masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRelease {
    pub source: String,
    pub kind: String,
    pub code: MaskedCode,
}

impl TryFrom<&Release> for StoredRelease {
    type Error = LedgerError;

    fn try_from(release: &Release) -> Result<Self, LedgerError> {
        let source = scrub_codes(&release.source).into_owned();
        Ok(StoredRelease {
            code: MaskedCode::new(&release.code, &source)?,
            kind: super::wire_name(&release.kind),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
    const COMPACT: &str = "3UM43PUYVYQYD1UVCCHEHJFKA4";

    #[test]
    fn only_the_masked_form_is_accepted() {
        assert!(MaskedCode::new("3UM43-\u{2026}-FKA4", "intune").is_ok());
        for text in [
            CODE,
            COMPACT,
            "3um43 puyvy qyd1 uvcc hehj fka4",
            "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4-",
            "3UM43-…-FKA4 3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4",
            "3UM43-...-FKA4",
            "3UM4-…-FKA4",
            "",
        ] {
            assert!(
                matches!(
                    MaskedCode::new(text, "intune"),
                    Err(LedgerError::UnmaskedCode { .. })
                ),
                "{text:?} was accepted"
            );
        }
    }

    #[test]
    fn the_refusal_does_not_echo_the_code() {
        let Err(e) = MaskedCode::new(CODE, "intune") else {
            panic!("a whole code was accepted");
        };
        assert!(!e.to_string().contains("PUYVY"));
    }
}
