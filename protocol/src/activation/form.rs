//! `deviceActivation` form bodies: encoding for the client, parsing for a stand-in server.
//! Albert accepts `application/x-www-form-urlencoded` and `multipart/form-data`
//! (docs/protocol.md §5.4); the parser accepts both, and `activation-info` both as a full XML plist
//! and as libideviceactivation's stripped `<dict>…</dict>`.

use std::fmt;

use base64::Engine as _;

use super::{
    content_type, field, parse_xml_plist, EncodeError, Endpoint, FormEncoding, HttpRequestParts,
    PlistTextError,
};

/// Which field carried the activation-info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationInfoSource {
    /// `activation-info`: XML plist text (first request).
    Field,
    /// `activation-info-base64`: echoed from the lock form's hidden fields (resubmission).
    Base64Field,
}

/// A parsed `deviceActivation` form, as a stand-in server sees it.
///
/// `Debug` lists field names only: a resubmission carries a password (the bypass code).
#[derive(Clone, PartialEq)]
pub struct ActivationForm {
    activation_info: plist::Value,
    source: ActivationInfoSource,
    activation_info_base64: Option<String>,
    /// Every field but `activation-info` / `activation-info-base64`, in request order.
    fields: Vec<(String, String)>,
}

impl ActivationForm {
    /// The device's activation-info, from whichever field carried it.
    pub fn activation_info(&self) -> &plist::Value {
        &self.activation_info
    }

    pub fn activation_info_source(&self) -> ActivationInfoSource {
        self.source
    }

    /// The `activation-info-base64` text as received, if that field carried the info.
    pub fn activation_info_base64(&self) -> Option<&str> {
        self.activation_info_base64.as_deref()
    }

    /// `isAuthRequired=true`: the client answers a lock form.
    pub fn is_auth_required(&self) -> bool {
        self.field(field::IS_AUTH_REQUIRED)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// Any other field (`login`, `password`, `isAuthRequired`, …) by name.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every field except the activation-info ones, in request order. Values may be secrets.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

impl fmt::Debug for ActivationForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.fields.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ActivationForm")
            .field("source", &self.source)
            .field("fields", &names)
            .finish_non_exhaustive()
    }
}

/// Why a `deviceActivation` body is not an acceptable form. Never carries field values.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("unsupported form content type {content_type:?}")]
    UnsupportedContentType { content_type: String },
    #[error("multipart form without a boundary parameter")]
    MissingBoundary,
    #[error("malformed multipart body: {reason}")]
    MalformedMultipart { reason: &'static str },
    #[error("form field {field:?} is not UTF-8")]
    InvalidUtf8 { field: String },
    #[error("form field {field:?} appears more than once")]
    DuplicateField { field: String },
    /// Albert reads `activation-info` first and answers "Verification Failed / Please retry
    /// activation" (docs/protocol.md §5.4).
    #[error("the form carries both activation-info and activation-info-base64")]
    BothActivationInfoFields,
    #[error("the form carries neither activation-info nor activation-info-base64")]
    MissingActivationInfo,
    #[error("activation-info-base64 is not valid base64")]
    InvalidBase64,
    #[error("{field} is not a valid plist: {source}")]
    InvalidActivationInfo {
        field: &'static str,
        source: PlistTextError,
    },
}

/// Parses a `deviceActivation` request body in either encoding (Content-Type decides,
/// case-insensitively) and reads the activation-info from the one field that carries it.
pub fn parse_device_activation_form(
    content_type: &str,
    body: &[u8],
) -> Result<ActivationForm, FormError> {
    let lower = content_type.trim().to_ascii_lowercase();
    let raw_fields = if lower.starts_with(content_type::FORM_URLENCODED) {
        form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect::<Vec<_>>()
    } else if lower.starts_with(content_type::MULTIPART_FORM_DATA) {
        let boundary = multipart_boundary(content_type).ok_or(FormError::MissingBoundary)?;
        parse_multipart(boundary.as_bytes(), body)?
    } else {
        return Err(FormError::UnsupportedContentType {
            content_type: content_type.chars().take(100).collect(),
        });
    };

    for (i, (name, _)) in raw_fields.iter().enumerate() {
        if raw_fields[..i].iter().any(|(n, _)| n == name) {
            return Err(FormError::DuplicateField {
                field: name.clone(),
            });
        }
    }

    let mut info_text = None;
    let mut info_base64 = None;
    let mut fields = Vec::new();
    for (name, value) in raw_fields {
        match name.as_str() {
            field::ACTIVATION_INFO => info_text = Some(value),
            field::ACTIVATION_INFO_BASE64 => info_base64 = Some(value),
            _ => fields.push((name, value)),
        }
    }

    let (activation_info, source) = match (&info_text, &info_base64) {
        (Some(_), Some(_)) => return Err(FormError::BothActivationInfoFields),
        (None, None) => return Err(FormError::MissingActivationInfo),
        (Some(text), None) => (
            parse_activation_info_text(text).map_err(|source| {
                FormError::InvalidActivationInfo {
                    field: field::ACTIVATION_INFO,
                    source,
                }
            })?,
            ActivationInfoSource::Field,
        ),
        (None, Some(b64)) => {
            let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let bytes = BASE64
                .decode(compact.as_bytes())
                .map_err(|_| FormError::InvalidBase64)?;
            let value =
                parse_xml_plist(&bytes).map_err(|source| FormError::InvalidActivationInfo {
                    field: field::ACTIVATION_INFO_BASE64,
                    source,
                })?;
            (value, ActivationInfoSource::Base64Field)
        }
    };

    Ok(ActivationForm {
        activation_info,
        source,
        activation_info_base64: info_base64,
        fields,
    })
}

/// Standard alphabet; padding optional on input (clients differ), written on output.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The `activation-info-base64` value a lock form hands out: base64 of the activation-info as
/// an XML plist.
pub fn activation_info_base64(activation_info: &plist::Value) -> Result<String, EncodeError> {
    let mut xml = Vec::new();
    activation_info.to_writer_xml(&mut xml)?;
    Ok(BASE64.encode(xml))
}

/// Reads `activation-info` text: a full XML plist, or the bare `<dict>…</dict>` that
/// libideviceactivation sends in multipart forms.
pub fn parse_activation_info_text(text: &str) -> Result<plist::Value, PlistTextError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    let has_envelope = ["<?xml", "<!DOCTYPE", "<plist"]
        .iter()
        .any(|p| trimmed.starts_with(p));
    if has_envelope {
        parse_xml_plist(trimmed.as_bytes())
    } else {
        let wrapped = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">\n{trimmed}\n</plist>"
        );
        parse_xml_plist(wrapped.as_bytes())
    }
}

/// Builds a `deviceActivation` POST from string fields.
pub(super) fn form_request(
    fields: &[(&str, &str)],
    encoding: &FormEncoding,
) -> Result<HttpRequestParts, EncodeError> {
    let body = match encoding {
        FormEncoding::UrlEncoded => form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields.iter().copied())
            .finish()
            .into_bytes(),
        FormEncoding::Multipart { boundary } => encode_multipart(boundary, fields)?,
    };
    Ok(HttpRequestParts {
        method: "POST",
        endpoint: Endpoint::DeviceActivation,
        headers: vec![
            ("User-Agent".to_string(), super::USER_AGENT.to_string()),
            ("Content-Type".to_string(), encoding.content_type()),
        ],
        body,
    })
}

fn valid_boundary(boundary: &str) -> bool {
    (1..=70).contains(&boundary.len())
        && boundary
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&b))
}

/// curl's layout: `--B CRLF Content-Disposition: form-data; name="N" CRLF CRLF value CRLF`, …,
/// `--B-- CRLF`; no per-part Content-Type (as in the libideviceactivation#58 dump).
fn encode_multipart(boundary: &str, fields: &[(&str, &str)]) -> Result<Vec<u8>, EncodeError> {
    if !valid_boundary(boundary) {
        return Err(EncodeError::InvalidBoundary);
    }
    let delimiter = format!("--{boundary}");
    let mut body = Vec::new();
    for (name, value) in fields {
        if value.contains(&delimiter) {
            return Err(EncodeError::BoundaryInContent);
        }
        let name = name
            .replace('"', "%22")
            .replace('\r', "%0D")
            .replace('\n', "%0A");
        body.extend_from_slice(delimiter.as_bytes());
        body.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"");
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(b"\"\r\n\r\n");
        body.extend_from_slice(value.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(delimiter.as_bytes());
    body.extend_from_slice(b"--\r\n");
    Ok(body)
}

/// The `boundary` parameter of a multipart Content-Type, unquoted.
fn multipart_boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty()).then(|| value.to_string())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Strips one line ending (CRLF, or a bare LF from lenient writers) from the front.
fn skip_line_end(bytes: &[u8]) -> Option<&[u8]> {
    bytes
        .strip_prefix(b"\r\n")
        .or_else(|| bytes.strip_prefix(b"\n"))
}

/// RFC 7578 multipart/form-data, leniently: LF line ends and transport padding accepted.
fn parse_multipart(boundary: &[u8], body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let malformed = |reason| FormError::MalformedMultipart { reason };
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);

    // The first delimiter may follow a preamble; later ones always follow a line end.
    let first = if body.starts_with(&delimiter) {
        0
    } else {
        let mut line_delimiter = b"\n".to_vec();
        line_delimiter.extend_from_slice(&delimiter);
        find(body, &line_delimiter)
            .map(|i| i + 1)
            .ok_or(malformed("no opening boundary"))?
    };
    let mut rest = &body[first + delimiter.len()..];
    let mut line_delimiter = b"\n".to_vec();
    line_delimiter.extend_from_slice(&delimiter);

    let mut fields = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(fields);
        }
        let padded = rest
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        rest = skip_line_end(&rest[padded..]).ok_or(malformed("boundary line not terminated"))?;
        let end = find(rest, &line_delimiter).ok_or(malformed("no closing boundary"))?;
        let mut part = &rest[..end];
        if part.ends_with(b"\r") {
            part = &part[..part.len() - 1];
        }
        fields.push(parse_part(part)?);
        rest = &rest[end + line_delimiter.len()..];
    }
}

fn parse_part(part: &[u8]) -> Result<(String, String), FormError> {
    let malformed = |reason| FormError::MalformedMultipart { reason };
    let (head, content) = if let Some(i) = find(part, b"\r\n\r\n") {
        (&part[..i], &part[i + 4..])
    } else if let Some(i) = find(part, b"\n\n") {
        (&part[..i], &part[i + 2..])
    } else if part.starts_with(b"\r\n") || part.starts_with(b"\n") {
        return Err(malformed("part without a Content-Disposition header"));
    } else {
        return Err(malformed("part headers not terminated"));
    };
    let head = std::str::from_utf8(head).map_err(|_| malformed("part headers are not UTF-8"))?;
    let name = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(h, _)| h.trim().eq_ignore_ascii_case("content-disposition"))
        .and_then(|(_, v)| disposition_name(v))
        .ok_or(malformed("part without a form-data name"))?;
    let value = String::from_utf8(content.to_vec()).map_err(|_| FormError::InvalidUtf8 {
        field: name.clone(),
    })?;
    Ok((name, value))
}

/// `name` parameter of `Content-Disposition: form-data; name="…"` (quoted or token).
fn disposition_name(value: &str) -> Option<String> {
    let mut params = value.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("form-data") {
        return None;
    }
    params.find_map(|param| {
        let (key, v) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("name") {
            return None;
        }
        let v = v.trim();
        Some(match v.strip_prefix('"') {
            Some(quoted) => quoted.strip_suffix('"').unwrap_or(quoted).to_string(),
            None => v.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::super::{device_activation_request, FormEncoding};
    use super::*;

    fn activation_info() -> plist::Value {
        let mut inner = plist::Dictionary::new();
        inner.insert("ActivationState".into(), "Unactivated".into());
        inner.insert("SerialNumber".into(), "F2LXK0AAHG7F".into());
        let mut d = plist::Dictionary::new();
        d.insert(
            "ActivationInfoXML".into(),
            plist::Value::Data(b"<plist>&amp; \"quoted\" + spaces</plist>".to_vec()),
        );
        d.insert(
            "FairPlaySignature".into(),
            plist::Value::Data(vec![0xff; 40]),
        );
        d.insert("DeviceInfo".into(), plist::Value::Dictionary(inner));
        d.insert("Note".into(), "a & b = c; d+e %20 --boundary".into());
        plist::Value::Dictionary(d)
    }

    #[test]
    fn urlencoded_request_round_trips() {
        let req = device_activation_request(&activation_info(), FormEncoding::UrlEncoded)
            .expect("request");
        assert_eq!(
            req.content_type(),
            Some("application/x-www-form-urlencoded")
        );
        let body = String::from_utf8(req.body.clone()).expect("ascii body");
        assert!(body.starts_with("activation-info=%3C%3Fxml"), "{body}");
        let form = parse_device_activation_form("application/x-www-form-urlencoded", &req.body)
            .expect("parsed");
        assert_eq!(form.activation_info(), &activation_info());
        assert_eq!(form.activation_info_source(), ActivationInfoSource::Field);
        assert_eq!(form.fields().count(), 0);
        assert!(!form.is_auth_required());
    }

    #[test]
    fn multipart_request_round_trips_with_stripped_dict() {
        let encoding = FormEncoding::Multipart {
            boundary: "------------------------3d988c58b7ff881e".into(),
        };
        let req = device_activation_request(&activation_info(), encoding).expect("request");
        let ct = req.content_type().expect("content type").to_string();
        assert_eq!(
            ct,
            "multipart/form-data; boundary=------------------------3d988c58b7ff881e"
        );
        let body = String::from_utf8(req.body.clone()).expect("utf8");
        let expected_head = "--------------------------3d988c58b7ff881e\r\n\
             Content-Disposition: form-data; name=\"activation-info\"\r\n\r\n<dict>\n\t<key>";
        assert!(body.starts_with(expected_head), "{body}");
        assert!(!body.contains("<?xml") && !body.contains("<plist"));
        assert!(body.ends_with("</dict>\r\n--------------------------3d988c58b7ff881e--\r\n"));
        let form = parse_device_activation_form(&ct, &req.body).expect("parsed");
        assert_eq!(form.activation_info(), &activation_info());
    }

    #[test]
    fn random_multipart_boundary_round_trips() {
        let req = device_activation_request(&activation_info(), FormEncoding::multipart())
            .expect("request");
        let ct = req.content_type().expect("ct").to_string();
        let form = parse_device_activation_form(&ct, &req.body).expect("parsed");
        assert_eq!(form.activation_info(), &activation_info());
    }

    #[test]
    fn multipart_accepts_full_plist_quoted_boundary_preamble_and_lf() {
        let mut xml = Vec::new();
        activation_info().to_writer_xml(&mut xml).expect("xml");
        let xml = String::from_utf8(xml).expect("utf8");
        let body = format!(
            "preamble\n--XyZ\nContent-Disposition: form-data; name=activation-info\n\n{xml}\n\
             --XyZ  \nContent-Disposition: Form-Data; name=\"login\"\nContent-Type: text/plain\n\n\n--XyZ--\n"
        );
        let form = parse_device_activation_form(
            "Multipart/Form-Data; charset=utf-8; boundary=\"XyZ\"",
            body.as_bytes(),
        )
        .expect("parsed");
        assert_eq!(form.activation_info(), &activation_info());
        assert_eq!(form.field("login"), Some(""));
    }

    #[test]
    fn resubmission_form_with_base64_and_credentials() {
        let b64 = activation_info_base64(&activation_info()).expect("b64");
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("login", "")
            .append_pair("password", "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4")
            .append_pair("activation-info-base64", &b64)
            .append_pair("isAuthRequired", "true")
            .finish();
        let form =
            parse_device_activation_form("application/x-www-form-urlencoded", body.as_bytes())
                .expect("parsed");
        assert_eq!(form.activation_info(), &activation_info());
        assert_eq!(
            form.activation_info_source(),
            ActivationInfoSource::Base64Field
        );
        assert_eq!(form.activation_info_base64(), Some(b64.as_str()));
        assert!(form.is_auth_required());
        assert_eq!(form.field("login"), Some(""));
        assert_eq!(
            form.field("password"),
            Some("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4")
        );
        let names: Vec<&str> = form.fields().map(|(n, _)| n).collect();
        assert_eq!(names, ["login", "password", "isAuthRequired"]);
        let debug = format!("{form:?}");
        assert!(!debug.contains("3UM43"), "{debug}");
        assert!(debug.contains("password"));
    }

    #[test]
    fn rejects_both_activation_info_fields() {
        let b64 = activation_info_base64(&activation_info()).expect("b64");
        let mut xml = Vec::new();
        activation_info().to_writer_xml(&mut xml).expect("xml");
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("activation-info", &String::from_utf8(xml).expect("utf8"))
            .append_pair("activation-info-base64", &b64)
            .finish();
        let err =
            parse_device_activation_form("application/x-www-form-urlencoded", body.as_bytes())
                .expect_err("both fields");
        assert!(matches!(err, FormError::BothActivationInfoFields), "{err}");

        let multipart = format!(
            "--b\r\nContent-Disposition: form-data; name=\"activation-info-base64\"\r\n\r\n{b64}\r\n\
             --b\r\nContent-Disposition: form-data; name=\"activation-info\"\r\n\r\n<dict/>\r\n--b--\r\n"
        );
        let err =
            parse_device_activation_form("multipart/form-data; boundary=b", multipart.as_bytes())
                .expect_err("both fields");
        assert!(matches!(err, FormError::BothActivationInfoFields), "{err}");
    }

    #[test]
    fn rejects_bad_forms() {
        type Case = (&'static str, &'static [u8], fn(&FormError) -> bool);
        let cases: Vec<Case> = vec![
            ("text/plain", b"activation-info=x", |e| {
                matches!(e, FormError::UnsupportedContentType { .. })
            }),
            ("multipart/form-data", b"--b--", |e| {
                matches!(e, FormError::MissingBoundary)
            }),
            ("multipart/form-data; boundary=b", b"garbage", |e| {
                matches!(e, FormError::MalformedMultipart { .. })
            }),
            ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nno end", |e| {
                matches!(e, FormError::MalformedMultipart { .. })
            }),
            ("multipart/form-data; boundary=b", b"--b\r\nX: y\r\n\r\nv\r\n--b--", |e| {
                matches!(e, FormError::MalformedMultipart { .. })
            }),
            ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\n\xff\xfe\r\n--b--", |e| {
                matches!(e, FormError::InvalidUtf8 { field } if field == "password")
            }),
            ("application/x-www-form-urlencoded", b"login=&password=x", |e| {
                matches!(e, FormError::MissingActivationInfo)
            }),
            ("application/x-www-form-urlencoded", b"activation-info=%3Cdict%3E", |e| {
                matches!(e, FormError::InvalidActivationInfo { field: "activation-info", .. })
            }),
            ("application/x-www-form-urlencoded", b"activation-info-base64=%%%%", |e| {
                matches!(e, FormError::InvalidBase64)
            }),
            ("application/x-www-form-urlencoded", b"activation-info-base64=aGVsbG8=", |e| {
                matches!(e, FormError::InvalidActivationInfo { field: "activation-info-base64", .. })
            }),
            ("application/x-www-form-urlencoded", b"activation-info=%3Cdict%2F%3E&login=a&login=b", |e| {
                matches!(e, FormError::DuplicateField { field } if field == "login")
            }),
        ];
        for (ct, body, check) in cases {
            let err = parse_device_activation_form(ct, body).expect_err(ct);
            assert!(check(&err), "{ct}: {err:?}");
        }
    }

    #[test]
    fn error_messages_never_show_values() {
        let body = b"activation-info=%3Cdict%3E&password=SECRETCODE&password=SECRETCODE";
        let err = parse_device_activation_form("application/x-www-form-urlencoded", body)
            .expect_err("duplicate");
        assert!(!format!("{err} {err:?}").contains("SECRETCODE"));
    }

    #[test]
    fn multipart_encoding_guards_its_boundary() {
        let fields = [("activation-info", "x --abc y")];
        assert!(matches!(
            encode_multipart("abc", &fields),
            Err(EncodeError::BoundaryInContent)
        ));
        assert!(matches!(
            encode_multipart("", &fields),
            Err(EncodeError::InvalidBoundary)
        ));
        assert!(matches!(
            encode_multipart("a\r\nb", &fields),
            Err(EncodeError::InvalidBoundary)
        ));
    }

    #[test]
    fn parses_activation_info_text_in_both_forms() {
        let full = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n<dict>\n\t<key>A</key>\n\t<string>b</string>\n</dict>\n</plist>\n";
        let stripped = "<dict>\n\t<key>A</key>\n\t<string>b</string>\n</dict>";
        let a = parse_activation_info_text(full).expect("full");
        let b = parse_activation_info_text(stripped).expect("stripped");
        assert_eq!(a, b);
        assert!(parse_activation_info_text("").is_err());
        assert!(parse_activation_info_text("</plist><plist>").is_err());
    }
}
