//! Keeping bypass codes out of the ledger: a release is stored only with a code in masked
//! form, and free text (reasons, source names) has any whole code masked before it is
//! written.

use std::borrow::Cow;

use station_protocol::bypass_code::{BypassCode, ALPHABET, SYMBOL_COUNT};

use super::LedgerError;
use crate::activation::Release;

/// Symbols before and after the ellipsis of [`BypassCode::masked`] (`3UM43-…-FKA4`).
const MASKED_HEAD: usize = 5;
const MASKED_TAIL: usize = 4;
const ELLIPSIS: &str = "-\u{2026}-";

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
        let (head, tail) = text.split_once(ELLIPSIS).ok_or_else(refuse)?;
        let symbols = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| ALPHABET.contains(&b))
        };
        if symbols(head, MASKED_HEAD) && symbols(tail, MASKED_TAIL) {
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

/// What may stand between the groups of a written code: spaces and the dashes people and
/// word processors use.
fn is_group_separator(c: char) -> bool {
    c == ' ' || c == '\t' || c == '-' || ('\u{2010}'..='\u{2015}').contains(&c) || c == '\u{2212}'
}

/// `text` with every whole bypass code in it replaced by its masked form. A code may be
/// written with dashes, spaces or neither (`3UM43-PUYVY-…`, `3um43 puyvy …`, compact).
pub fn scrub_codes(text: &str) -> Cow<'_, str> {
    // Runs of ASCII letters and digits, as byte spans; a code is a few consecutive runs.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_ascii_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, text.len()));
    }

    let mut masked_spans: Vec<(usize, usize, String)> = Vec::new();
    let mut i = 0;
    while i < runs.len() {
        let mut symbols = 0;
        let mut found = None;
        for j in i..runs.len() {
            if j > i
                && !text[runs[j - 1].1..runs[j].0]
                    .chars()
                    .all(is_group_separator)
            {
                break;
            }
            symbols += runs[j].1 - runs[j].0;
            if symbols > SYMBOL_COUNT {
                break;
            }
            if symbols == SYMBOL_COUNT {
                let (s, e) = (runs[i].0, runs[j].1);
                if let Ok(code) = BypassCode::parse(&text[s..e]) {
                    found = Some(((s, e, code.masked()), j));
                }
                break;
            }
        }
        match found {
            Some((span, j)) => {
                masked_spans.push(span);
                i = j + 1;
            }
            None => i += 1,
        }
    }
    if masked_spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e, masked) in masked_spans {
        out.push_str(&text[at..s]);
        out.push_str(&masked);
        at = e;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
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

    #[test]
    fn whole_codes_in_text_are_masked_in_any_spelling() {
        let masked = "3UM43-\u{2026}-FKA4";
        for spelled in [
            CODE,
            COMPACT,
            "3um43 puyvy qyd1 uvcc hehj fka4",
            "3UM43\u{2013}PUYVY\u{2013}QYD1\u{2013}UVCC\u{2013}HEHJ\u{2013}FKA4",
        ] {
            let text = format!("code={spelled}. rejected (x)");
            assert_eq!(scrub_codes(&text), format!("code={masked}. rejected (x)"));
        }
        let two = format!("{CODE},{COMPACT}");
        assert_eq!(scrub_codes(&two), format!("{masked},{masked}"));
        let glued = format!("intune-{CODE}-x");
        assert_eq!(scrub_codes(&glued), format!("intune-{masked}-x"));
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in [
            "unplugged during pairing: plug it back in and run again",
            "activated: Activation Lock released with code 3UM43-\u{2026}-FKA4 from intune",
            "00008030-001A2D3C0E38802E did not answer within 10s",
            "activation server answered HTTP 503 after 3 attempts: retry later",
        ] {
            assert!(matches!(scrub_codes(text), Cow::Borrowed(_)), "{text}");
        }
    }
}
