//! Turning what an MDM or a hook said into text fit for a log or an error message: one line,
//! bounded, with anything that could be a code, a token or a secret taken out. Error bodies
//! may echo request data, so they are never printed whole.

use station_protocol::bypass_code::ALPHABET;

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

/// `error.code` / `error.message` of a Graph error body, or `error` / `error_description` of
/// an OAuth2 one, both scrubbed. `None` when the body is neither.
pub fn service_error(body: &[u8]) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let (code, message) = match error {
        serde_json::Value::String(code) => (
            code.as_str(),
            value.get("error_description").and_then(|d| d.as_str()),
        ),
        serde_json::Value::Object(fields) => (
            fields.get("code").and_then(|c| c.as_str()).unwrap_or(""),
            fields.get("message").and_then(|m| m.as_str()),
        ),
        _ => return None,
    };
    Some((scrubbed(code), scrubbed(message.unwrap_or(""))))
}

/// Parses a JSON answer. serde_json's messages can quote the document (codes, tokens), so
/// the error keeps only the kind of fault and its position.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| json_error(&e))
}

/// Where a JSON document is wrong, without quoting it.
pub fn json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "unexpected shape",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// Percent-encodes a URL component: everything but RFC 3986's unreserved characters.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn graph_and_oauth_errors_are_read() {
        let graph = br#"{"error":{"code":"Forbidden","message":"Application is not authorized to perform this operation."}}"#;
        assert_eq!(
            service_error(graph),
            Some((
                "Forbidden".into(),
                "Application is not authorized to perform this operation.".into()
            ))
        );
        let oauth = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        assert_eq!(
            service_error(oauth).map(|e| e.0),
            Some("invalid_client".into())
        );
        assert_eq!(service_error(b"<html>"), None);
    }

    #[test]
    fn json_errors_do_not_quote_the_document() {
        let err = parse_json::<Vec<u32>>(br#"["3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4"]"#)
            .expect_err("strings are not numbers");
        assert_eq!(err, "unexpected shape at line 1 column 34");
        assert!(parse_json::<Vec<u32>>(b"[1,").is_err());
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(
            encode_component("serialNumber eq 'O''B'"),
            "serialNumber%20eq%20%27O%27%27B%27"
        );
    }
}
