//! Reading an MDM's answers without quoting them: error bodies and JSON faults reduced to
//! scrubbed one-liners ([`crate::redact`]), and URL components encoded.

use crate::redact::scrubbed;

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
