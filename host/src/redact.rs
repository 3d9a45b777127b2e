//! Keeping secrets out of text that leaves the station (logs, error messages, reports, the
//! ledger), in one place:
//!
//! - [`scrub`]: what an MDM or a hook said, made fit for a log or a message: one line,
//!   bounded, with anything that could be a code, a token or a secret withheld (`…`);
//! - [`scrub_codes`]: every whole bypass code in a text replaced by its masked form
//!   ([`BypassCode::masked`], `3UM43-…-FKA4`), the rest of the text unchanged.
//!
//! Error bodies may echo request data, so they are never printed whole.

use std::borrow::Cow;

use station_protocol::bypass_code::{BypassCode, ALPHABET, SYMBOL_COUNT};

/// Longest piece of outside text put in a message.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// Symbols of the code alphabet in consecutive words (with a digit among them) from which
/// the words are taken for a code; a whole code has 26.
const CODE_LIKE_SYMBOLS: usize = 16;
/// Length from which a run of letters, digits and token punctuation holding both letters
/// and digits is taken for a token, a secret or a code.
const TOKEN_LIKE_CHARS: usize = 20;

const WITHHELD: &str = "…";

/// The first non-empty line of `text`, at most [`MAX_MESSAGE_CHARS`] characters, with every
/// word that may be (part of) a credential replaced by `…`. The flag says whether anything
/// was replaced.
pub fn scrub(text: &str) -> (String, bool) {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut hidden: Vec<bool> = words.iter().map(|w| has_token_run(w)).collect();
    // A code may be split in groups by spaces: hide runs of code-like words together.
    let mut i = 0;
    while i < words.len() {
        let mut j = i;
        let (mut symbols, mut digit) = (0, false);
        while let Some(core) = words.get(j).and_then(|w| code_word(w)) {
            symbols += core.chars().filter(|c| is_code_symbol(*c)).count();
            digit |= core.chars().any(|c| c.is_ascii_digit());
            j += 1;
        }
        if symbols >= CODE_LIKE_SYMBOLS && digit {
            hidden[i..j].iter_mut().for_each(|h| *h = true);
        }
        i = j.max(i + 1);
    }
    let mut out = String::new();
    let mut replaced = false;
    for (index, word) in words.iter().enumerate() {
        let previous_hidden = index > 0 && hidden[index - 1];
        if hidden[index] && previous_hidden {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        if hidden[index] {
            replaced = true;
            out.push_str(WITHHELD);
        } else {
            out.push_str(word);
        }
        if out.chars().count() > MAX_MESSAGE_CHARS {
            out = out.chars().take(MAX_MESSAGE_CHARS).collect();
            out.push('…');
            break;
        }
    }
    (out, replaced)
}

/// [`scrub`]'s text alone.
pub fn scrubbed(text: &str) -> String {
    scrub(text).0
}

/// A word holding a long run of token characters with letters and digits: a token, a
/// secret, a GUID, a code written without spaces.
fn has_token_run(word: &str) -> bool {
    word.split(|c: char| !is_token_char(c)).any(|run| {
        run.len() >= TOKEN_LIKE_CHARS
            && run.chars().any(|c| c.is_ascii_digit())
            && run.chars().any(|c| c.is_ascii_alphabetic())
    })
}

/// The word without surrounding punctuation, if what is left is code symbols and dashes.
fn code_word(word: &str) -> Option<&str> {
    let core = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-');
    (!core.is_empty() && core.chars().all(|c| is_code_symbol(c) || c == '-')).then_some(core)
}

fn is_code_symbol(c: char) -> bool {
    c.is_ascii() && ALPHABET.contains(&(c.to_ascii_uppercase() as u8))
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '=' | '.' | '~')
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
    fn codes_tokens_and_guids_are_withheld_words_are_kept() {
        let (text, replaced) = scrub("bad code 3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4 for C8TJ500QF1MN");
        assert_eq!(text, "bad code … for C8TJ500QF1MN");
        assert!(replaced);
        let (text, _) = scrub("code: 3um43 puyvy qyd1 uvcc hehj fka4\nsecond line");
        assert!(!text.contains("puyvy"), "{text}");
        let (text, _) = scrub("AADSTS7000215: Invalid client secret provided. Trace ID: 1b0c4c7b-0d9a-4e8a-9f6e-0123456789ab Token eyJ0eXAiOiJKV1QiLCJhbGciOi.eyJhdWQiOi");
        assert!(text.starts_with("AADSTS7000215: Invalid client secret provided."));
        assert!(
            !text.contains("1b0c4c7b") && !text.contains("eyJ0"),
            "{text}"
        );
        let (text, replaced) = scrub("  \nDevice not found: login.microsoftonline.com said no");
        assert_eq!(text, "Device not found: login.microsoftonline.com said no");
        assert!(!replaced);
    }

    #[test]
    fn long_text_is_cut() {
        let (text, _) = scrub(&"word ".repeat(100));
        assert_eq!(text.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(text.ends_with('…'));
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
