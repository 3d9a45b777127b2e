//! Apple's activation-server exchange (docs/protocol.md §5.3–5.6) as plain types and
//! functions: the `drmHandshake` and `deviceActivation` requests, the classification of every
//! answer, the buddyml (Setup Assistant XML UI) pages of the Activation Lock, and the form
//! resubmission that carries a bypass code.
//!
//! No I/O: the caller does the HTTP round trip. Both sides use it — the station builds requests
//! and classifies answers; the simulator's stand-in Albert parses requests
//! ([`parse_device_activation_form`]) and renders pages ([`BuddyPage::render`]).

mod buddyml;
mod form;
mod html;
mod response;
mod submit;

use std::fmt;

pub use buddyml::{Alert, BuddyPage, BuddymlError, HelpLink, InputField, SubmitTarget};
pub use form::{
    activation_info_base64, parse_activation_info_text, parse_device_activation_form,
    ActivationForm, ActivationInfoSource, FormError,
};
pub use response::{classify_response, ActivationResponse, RecordContainer};
pub use submit::{
    continue_form_submission, lock_form_submission, FieldValue, FormField, FormSubmission,
    SecretValue, SubmissionError,
};

/// Apple's handshake endpoint (session mode, iOS ≥ 10).
pub const DRM_HANDSHAKE_URL: &str = "https://albert.apple.com/deviceservices/drmHandshake";
/// Apple's activation endpoint; also where lock-form resubmissions go.
pub const DEVICE_ACTIVATION_URL: &str = "https://albert.apple.com/deviceservices/deviceActivation";
/// User-Agent of libideviceactivation since 2022 and go-ios; a device-style UA makes Albert
/// answer with plists and buddyml instead of HTML.
pub const USER_AGENT: &str = "iOS Device Activator (MobileActivation-592.103.2)";
/// The 2012 device UA (pymobiledevice3, older libideviceactivation); one capture claims Albert
/// requires it exactly (docs/protocol.md §7), so it stays at hand.
pub const USER_AGENT_LEGACY_2012: &str =
    "iOS Device Activator (MobileActivation-20 built on Jan 15 2012 at 19:07:28)";
/// The iTunes UA: Albert then answers with HTML pages, which cannot carry the lock form's fields.
pub const USER_AGENT_ITUNES: &str = "iTunes/11.1.4 (Macintosh; OS X 10.9.1) AppleWebKit/537.73.11";

/// Content types of the exchange (docs/protocol.md §5.4, §5.5).
pub mod content_type {
    /// Body of a `drmHandshake` request.
    pub const APPLE_PLIST: &str = "application/x-apple-plist";
    /// Plist answers (records, handshake replies); also the handshake's `Accept`.
    pub const APPLICATION_XML: &str = "application/xml";
    /// Plist answers; what Albert sends records as.
    pub const TEXT_XML: &str = "text/xml";
    /// Setup Assistant XML UI pages: lock form, alerts, error pages, acknowledgements.
    pub const BUDDYML: &str = "application/x-buddyml";
    /// iTunes-style pages.
    pub const HTML: &str = "text/html";
    /// `type` of the `<script>` holding a plist inside an HTML page.
    pub const HTML_PLIST_SCRIPT: &str = "text/x-apple-plist";
    pub const FORM_URLENCODED: &str = "application/x-www-form-urlencoded";
    pub const MULTIPART_FORM_DATA: &str = "multipart/form-data";
}

/// Form field names with a meaning to Albert.
pub mod field {
    /// The device's activation-info dictionary as XML plist text (first request).
    pub const ACTIVATION_INFO: &str = "activation-info";
    /// Base64 of the activation-info XML, handed out as a hidden field of the lock form and echoed
    /// on resubmission. Never sent together with [`ACTIVATION_INFO`].
    pub const ACTIVATION_INFO_BASE64: &str = "activation-info-base64";
    /// Hidden field of the lock form: credentials (or a bypass code) are required.
    pub const IS_AUTH_REQUIRED: &str = "isAuthRequired";
}

/// The two Albert endpoints. The path lets a caller aim at a stand-in server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    DrmHandshake,
    DeviceActivation,
}

impl Endpoint {
    pub const fn path(self) -> &'static str {
        match self {
            Self::DrmHandshake => "/deviceservices/drmHandshake",
            Self::DeviceActivation => "/deviceservices/deviceActivation",
        }
    }

    /// Apple's URL for this endpoint.
    pub const fn default_url(self) -> &'static str {
        match self {
            Self::DrmHandshake => DRM_HANDSHAKE_URL,
            Self::DeviceActivation => DEVICE_ACTIVATION_URL,
        }
    }

    /// The endpoint on another server: `base` is `scheme://host[:port][/prefix]`.
    pub fn url_on(self, base: &str) -> String {
        format!("{}{}", base.trim_end_matches('/'), self.path())
    }

    /// Routing for a server: the endpoint a request path (query ignored) names.
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        [Self::DrmHandshake, Self::DeviceActivation]
            .into_iter()
            .find(|e| path == e.path())
    }
}

/// An HTTP request to send as is. `Debug` shows the body's length only: a lock-form
/// resubmission body carries the password (the bypass code).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequestParts {
    pub method: &'static str,
    pub endpoint: Endpoint,
    /// Includes `User-Agent` ([`USER_AGENT`]) and `Content-Type`; replace the UA if needed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequestParts {
    /// First header of that name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("Content-Type")
    }
}

impl fmt::Debug for HttpRequestParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRequestParts")
            .field("method", &self.method)
            .field("endpoint", &self.endpoint)
            .field("headers", &self.headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// How the `deviceActivation` form is encoded. Albert accepts both (docs/protocol.md §5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormEncoding {
    /// go-ios and pymobiledevice3: `activation-info` is the full XML plist, `<?xml …?>` included.
    UrlEncoded,
    /// libideviceactivation: the XML plist with its `<?xml …><!DOCTYPE …><plist version="1.0">`
    /// prefix and `</plist>` suffix stripped, so the part body starts with `<dict>`.
    Multipart { boundary: String },
}

impl FormEncoding {
    /// Multipart with a fresh random boundary in curl's style.
    pub fn multipart() -> Self {
        Self::Multipart {
            boundary: format!("------------------------{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// The request's `Content-Type` value.
    pub fn content_type(&self) -> String {
        match self {
            Self::UrlEncoded => content_type::FORM_URLENCODED.to_string(),
            Self::Multipart { boundary } => {
                format!("{}; boundary={boundary}", content_type::MULTIPART_FORM_DATA)
            }
        }
    }
}

/// Why a request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot serialise the plist as XML: {0}")]
    Plist(#[from] plist::Error),
    /// RFC 2046: 1–70 characters from a restricted set.
    #[error("invalid multipart boundary (1-70 characters of A-Z a-z 0-9 '()+_,-./:=?)")]
    InvalidBoundary,
    #[error("the multipart boundary occurs inside a field value")]
    BoundaryInContent,
}

/// The `drmHandshake` request: the `CreateTunnel1SessionInfoRequest` dictionary as an XML plist.
pub fn drm_handshake_request(session_info: &plist::Value) -> Result<HttpRequestParts, EncodeError> {
    Ok(HttpRequestParts {
        method: "POST",
        endpoint: Endpoint::DrmHandshake,
        headers: vec![
            ("User-Agent".to_string(), USER_AGENT.to_string()),
            (
                "Content-Type".to_string(),
                content_type::APPLE_PLIST.to_string(),
            ),
            (
                "Accept".to_string(),
                content_type::APPLICATION_XML.to_string(),
            ),
        ],
        body: plist_to_xml(session_info)?,
    })
}

/// The first `deviceActivation` request: one field `activation-info` holding the device's
/// activation-info as XML plist text (full for [`FormEncoding::UrlEncoded`], stripped to the
/// `<dict>…</dict>` for [`FormEncoding::Multipart`], as each reference client sends it).
pub fn device_activation_request(
    activation_info: &plist::Value,
    encoding: FormEncoding,
) -> Result<HttpRequestParts, EncodeError> {
    // The plist writer emits UTF-8, so the lossy conversion never replaces anything.
    let xml = String::from_utf8_lossy(&plist_to_xml(activation_info)?).into_owned();
    let text = match encoding {
        FormEncoding::UrlEncoded => xml,
        FormEncoding::Multipart { .. } => strip_plist_envelope(&xml).to_string(),
    };
    form::form_request(&[(field::ACTIVATION_INFO, text.as_str())], &encoding)
}

/// The body of a record answer as a stand-in server sends it (`text/xml`):
/// `{ActivationRecord: record}`.
pub fn activation_record_body(record: &plist::Dictionary) -> Result<Vec<u8>, EncodeError> {
    let mut top = plist::Dictionary::new();
    top.insert(
        "ActivationRecord".to_string(),
        plist::Value::Dictionary(record.clone()),
    );
    plist_to_xml(&plist::Value::Dictionary(top))
}

fn plist_to_xml(value: &plist::Value) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    value.to_writer_xml(&mut out)?;
    Ok(out)
}

/// libideviceactivation's `plist_strip_xml`: what lies between `<plist …>` and `</plist>`.
/// Text without that envelope comes back unchanged.
fn strip_plist_envelope(xml: &str) -> &str {
    let Some(open) = xml.find("<plist") else {
        return xml;
    };
    let Some(open_end) = xml[open..].find('>').map(|i| open + i + 1) else {
        return xml;
    };
    let Some(close) = xml.rfind("</plist>") else {
        return xml;
    };
    if close < open_end {
        return xml;
    }
    xml[open_end..close].trim_matches(['\n', '\r'])
}

/// Deeper plists are refused before parsing: `plist::Value` drops (and compares) recursively,
/// so a hostile 100 000-level body would overflow the stack. Real ones nest a handful of levels.
pub const MAX_PLIST_DEPTH: usize = 64;

/// Why a text is not an acceptable XML plist.
#[derive(Debug, thiserror::Error)]
pub enum PlistTextError {
    #[error("plist nests deeper than {MAX_PLIST_DEPTH} levels")]
    TooDeep,
    #[error(transparent)]
    Plist(#[from] plist::Error),
}

/// Parses an XML plist (the only kind Albert and its clients exchange), depth-checked.
fn parse_xml_plist(bytes: &[u8]) -> Result<plist::Value, PlistTextError> {
    if !plist_depth_within(bytes, MAX_PLIST_DEPTH) {
        return Err(PlistTextError::TooDeep);
    }
    Ok(plist::Value::from_reader_xml(bytes)?)
}

/// Counts `<dict>`/`<array>` nesting over the raw text. Escaped text cannot contain `<`, so
/// tags are found exactly; CDATA can only make the count stricter.
fn plist_depth_within(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    for (i, _) in bytes.iter().enumerate().filter(|(_, &b)| b == b'<') {
        let rest = &bytes[i + 1..];
        if rest.starts_with(b"dict") || rest.starts_with(b"array") {
            let self_closing = rest
                .iter()
                .position(|&b| b == b'>')
                .is_some_and(|end| end > 0 && rest[end - 1] == b'/');
            if !self_closing {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
        } else if rest.starts_with(b"/dict") || rest.starts_with(b"/array") {
            depth = depth.saturating_sub(1);
        }
    }
    true
}

/// First value of a header, name compared case-insensitively.
fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_info() -> plist::Value {
        let mut d = plist::Dictionary::new();
        d.insert(
            "HandshakeRequestMessage".into(),
            plist::Value::Data(vec![1, 2, 3, 4]),
        );
        d.insert("UniqueDeviceID".into(), "00008030-000A1B2C3D4E5F60".into());
        plist::Value::Dictionary(d)
    }

    #[test]
    fn endpoints_and_paths() {
        assert_eq!(
            Endpoint::DrmHandshake.default_url(),
            "https://albert.apple.com/deviceservices/drmHandshake"
        );
        assert_eq!(
            Endpoint::DeviceActivation.default_url(),
            "https://albert.apple.com/deviceservices/deviceActivation"
        );
        assert_eq!(
            Endpoint::DeviceActivation.url_on("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080/deviceservices/deviceActivation"
        );
        assert_eq!(
            Endpoint::from_path("/deviceservices/drmHandshake?x=1"),
            Some(Endpoint::DrmHandshake)
        );
        assert_eq!(Endpoint::from_path("/deviceservices/other"), None);
    }

    #[test]
    fn drm_handshake_request_is_an_xml_plist_post() {
        let req = drm_handshake_request(&session_info()).expect("request");
        assert_eq!(req.method, "POST");
        assert_eq!(req.endpoint, Endpoint::DrmHandshake);
        assert_eq!(req.content_type(), Some("application/x-apple-plist"));
        assert_eq!(req.header("accept"), Some("application/xml"));
        assert_eq!(req.header("User-Agent"), Some(USER_AGENT));
        assert!(req.body.starts_with(b"<?xml"));
        let back = plist::Value::from_reader_xml(req.body.as_slice()).expect("plist body");
        assert_eq!(back, session_info());
    }

    #[test]
    fn strip_envelope_like_libideviceactivation() {
        let xml = String::from_utf8(plist_to_xml(&session_info()).expect("xml")).expect("utf8");
        let stripped = strip_plist_envelope(&xml);
        assert!(stripped.starts_with("<dict>"), "{stripped}");
        assert!(stripped.ends_with("</dict>"), "{stripped}");
        assert_eq!(strip_plist_envelope("<dict/>"), "<dict/>");
        assert_eq!(strip_plist_envelope("</plist><plist>"), "</plist><plist>");
    }

    #[test]
    fn deep_plists_are_refused_not_overflowing() {
        let n = 100_000;
        let deep = format!(
            "<plist version=\"1.0\">{}{}</plist>",
            "<array>".repeat(n),
            "</array>".repeat(n)
        );
        assert!(matches!(
            parse_xml_plist(deep.as_bytes()),
            Err(PlistTextError::TooDeep)
        ));
        let ok = format!(
            "<plist version=\"1.0\">{}<dict/>{}</plist>",
            "<dict><key>k</key>".repeat(MAX_PLIST_DEPTH),
            "</dict>".repeat(MAX_PLIST_DEPTH)
        );
        assert!(parse_xml_plist(ok.as_bytes()).is_ok());
        let headers = vec![("Content-Type".to_string(), "text/xml".to_string())];
        assert!(matches!(
            classify_response(200, &headers, deep.as_bytes()),
            ActivationResponse::Malformed { .. }
        ));
    }

    #[test]
    fn request_debug_hides_the_body() {
        let mut req = drm_handshake_request(&session_info()).expect("request");
        req.body = b"password=SECRET".to_vec();
        let debug = format!("{req:?}");
        assert!(!debug.contains("SECRET"));
        assert!(debug.contains("<15 bytes>"));
    }

    #[test]
    fn record_body_round_trips_through_classification() {
        let mut record = plist::Dictionary::new();
        record.insert("DeviceCertificate".into(), plist::Value::Data(vec![9; 8]));
        let body = activation_record_body(&record).expect("body");
        let headers = vec![("Content-Type".to_string(), "text/xml".to_string())];
        match classify_response(200, &headers, &body) {
            ActivationResponse::Record {
                raw_body,
                record: got,
                container,
                ..
            } => {
                assert_eq!(raw_body, body);
                assert_eq!(got, record);
                assert_eq!(container, RecordContainer::ActivationRecord);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
