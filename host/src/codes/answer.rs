//! Reading an MDM's answers without quoting them: error bodies and JSON faults reduced to
//! scrubbed one-liners ([`crate::redact`]), and URL components encoded.

use crate::redact::scrubbed;

/// `error.code` / `error.message` of a Graph error body, or `error` / `error_description` of
/// an OAuth2 one, both scrubbed. Intune nests a JSON document in `error.message`; its
/// `Message` is used, without the support identifiers and URL after it. `None` when the body
/// is neither.
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
    let message = message.unwrap_or("");
    let message = nested_message(message).unwrap_or_else(|| message.to_string());
    Some((scrubbed(code), scrubbed(&message)))
}

/// Intune's nested error (docs/mdm.md §1.8): `{"_version": 3, "Message": "… - Operation ID
/// (for customer support): … - Activity ID: … - Url: …", …}` gives the text before the
/// first " - Operation ID" (or " - Activity ID", " - Url:").
fn nested_message(message: &str) -> Option<String> {
    let trimmed = message.trim_start();
    if !trimmed.starts_with('{') {
        return None;
    }
    let document: serde_json::Value = serde_json::from_str(trimmed).ok()?;
    let text = document
        .get("Message")
        .or_else(|| document.get("message"))?
        .as_str()?;
    let end = [" - Operation ID", " - Activity ID", " - Url:"]
        .iter()
        .filter_map(|marker| text.find(marker))
        .min()
        .unwrap_or(text.len());
    Some(text[..end].trim().to_string())
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

    /// Shaped like a real Intune 403 (memdocs Graph Explorer sample, docs/mdm.md §1.8).
    const NESTED_403: &[u8] = br#"{"error":{"code":"Forbidden","message":"{\r\n  \"_version\": 3,\r\n  \"Message\": \"Application is not authorized to perform this operation. Application must have one of the following scopes: DeviceManagementManagedDevices.Read.All, DeviceManagementManagedDevices.ReadWrite.All - Operation ID (for customer support): 00000000-0000-0000-0000-000000000000 - Activity ID: 7b3f1c2a-9d4e-4f5a-8b6c-1d2e3f4a5b6c - Url: https://fef.msua06.manage.microsoft.com/DeviceFE/StatelessDeviceFEService/deviceManagement/managedDevices?api-version=2023-08-01\",\r\n  \"CustomApiErrorPhrase\": \"\",\r\n  \"RetryAfter\": null,\r\n  \"ErrorSourceService\": \"\",\r\n  \"HttpHeaders\": \"{}\"\r\n}","innerError":{"date":"2024-05-02T10:11:12","request-id":"7b3f1c2a-9d4e-4f5a-8b6c-1d2e3f4a5b6c","client-request-id":"7b3f1c2a-9d4e-4f5a-8b6c-1d2e3f4a5b6c"}}}"#;

    #[test]
    fn intune_nested_messages_are_unwrapped() {
        let (code, message) = service_error(NESTED_403).expect("a Graph error");
        assert_eq!(code, "Forbidden");
        assert_eq!(
            message,
            "Application is not authorized to perform this operation. Application must have one of the following scopes: DeviceManagementManagedDevices.Read.All, DeviceManagementManagedDevices.ReadWrite.All"
        );
        for tail in [
            "Operation ID",
            "Activity ID",
            "Url",
            "manage.microsoft.com",
            "{",
        ] {
            assert!(!message.contains(tail), "{message}");
        }
    }

    #[test]
    fn nested_messages_never_show_a_token() {
        let body = br#"{"error":{"code":"Forbidden","message":"{\"_version\":3,\"Message\":\"Denied for eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9abc123 - Operation ID (for customer support): x - Url: https://fef.example/\"}"}}"#;
        let (_, message) = service_error(body).expect("a Graph error");
        assert!(!message.contains("eyJ0eXAi"), "{message}");
        assert!(message.starts_with("Denied for"), "{message}");
        // Not a nested document: kept as it is.
        let plain = br#"{"error":{"code":"BadRequest","message":"{ not json"}}"#;
        assert_eq!(service_error(plain).map(|e| e.1), Some("{ not json".into()));
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
