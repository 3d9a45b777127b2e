//! What the stand-in server answers, endpoint by endpoint: no HTTP here, only bodies in and
//! answers out, so the behaviour reads (and tests) as plain functions.

use std::collections::HashMap;
use std::sync::Arc;

use plist::{Dictionary, Value};
use station_protocol::activation::{
    activation_info_base64, activation_record_body, content_type, field,
    parse_activation_info_text, parse_device_activation_form, ActivationForm, ActivationInfoSource,
    BuddyPage, FormError, InputField,
};
use station_protocol::bypass_code::BypassCode;

use super::AlbertOutcome;
use crate::activation::{build_record, Authority, RequestInfo, SIGNATURE_HEADER};
use crate::phone::Phone;
use crate::world::{ActivationState, Lock, WrongCredentials};

/// Ids of the lock form's rows (read from the page by clients, never hard-coded there).
pub const LOGIN_FIELD: &str = "login";
pub const PASSWORD_FIELD: &str = "password";
/// The lock form's opaque hidden field; a resubmission must echo it.
pub const CHALLENGE_FIELD: &str = "challenge";

const LOCK_TITLE: &str = "Activation Lock";
const WRONG_CREDENTIALS: &str = "Incorrect Apple ID or password.";
/// Where the lock page's Next goes: relative, as on Albert's page (docs/protocol.md §5.6).
const SUBMIT_PATH: &str = "/deviceservices/deviceActivation";
const HELP_URL: &str = "https://support.apple.com/HT201441";
/// `page name` of the hidden-fields-only page of the `continue_page` scenario.
const CONTINUE_PAGE: &str = "ActivationContinue";

/// The lock page's checks, written for the bench after the structure of Albert's 2023 page:
/// Next is enabled for an Apple ID with a password, or for a blank Apple ID with a
/// 26-symbol bypass code (dashes ignored); fields are capped at 1000 characters.
const LOCK_SCRIPT: &str = r#"
function fieldText(id) {
  var field = xmlui.getFieldWithId(id);
  return field ? String(field.value) : "";
}
function enableNext() {
  var login = fieldText("login");
  var password = fieldText("password");
  if (login.length > 0) {
    return password.length > 0;
  }
  return password.split("-").join("").length == 26;
}
function limitFieldLength(id) {
  var field = xmlui.getFieldWithId(id);
  if (field && String(field.value).length > 1000) {
    field.value = String(field.value).substring(0, 1000);
  }
  return true;
}
function enablePasscodeButton() {
  return fieldText("login").length == 0;
}
"#;

/// Albert's run-time choices of how to answer (world file `[activation_server]`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Scenario {
    pub record_ack: bool,
    pub continue_page: bool,
    pub wrong_credentials: WrongCredentials,
}

/// One answer, before HTTP.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    pub outcome: AlbertOutcome,
}

impl Answer {
    fn plist(status: u16, value: &Value, outcome: AlbertOutcome) -> Self {
        let mut body = Vec::new();
        // Writing an in-memory plist to a Vec cannot fail.
        let _ = value.to_writer_xml(&mut body);
        Answer {
            status,
            content_type: content_type::TEXT_XML,
            body,
            headers: Vec::new(),
            outcome,
        }
    }

    fn plist_error(status: u16, reason: &str) -> Self {
        let mut d = Dictionary::new();
        d.insert("ErrorMessage".into(), reason.into());
        Self::plist(
            status,
            &Value::Dictionary(d),
            AlbertOutcome::BadRequest {
                reason: reason.to_string(),
            },
        )
    }

    fn page(status: u16, page: &BuddyPage, outcome: AlbertOutcome) -> Self {
        Answer {
            status,
            content_type: content_type::BUDDYML,
            body: page.render().into_bytes(),
            headers: Vec::new(),
            outcome,
        }
    }

    fn error_page(title: &str, description: &str) -> Self {
        Self::page(
            200,
            &BuddyPage::error_page(title, description),
            AlbertOutcome::ErrorPage {
                title: title.to_string(),
            },
        )
    }

    fn bad_form(reason: String) -> Self {
        Self::page(
            400,
            &BuddyPage::error_page("Activation Error", "Invalid activation request."),
            AlbertOutcome::BadRequest { reason },
        )
    }
}

/// What the request log keeps of a request besides its HTTP headers. Never a secret: the
/// password is kept masked.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub udid: Option<String>,
    pub fields: Vec<String>,
    pub login: Option<String>,
    pub password: Option<String>,
}

/// `3UM43-…-FKA4` for a code, `<N characters>` for anything else typed as a password.
pub(crate) fn mask_password(password: &str) -> String {
    match BypassCode::parse(password) {
        Ok(code) => code.masked(),
        Err(_) if password.is_empty() => String::new(),
        Err(_) => format!("<{} characters>", password.chars().count()),
    }
}

/// The server's knowledge and keys.
pub(crate) struct Exchange {
    pub authority: Arc<Authority>,
    pub phones: HashMap<String, Arc<Phone>>,
}

impl Seen {
    /// The phone is known: kept for the log and put on the request's span.
    fn udid(&mut self, udid: &str) {
        tracing::Span::current().record("udid", udid);
        self.udid = Some(udid.to_string());
    }
}

impl Exchange {
    /// `POST /deviceservices/drmHandshake`: the phone's session info (XML plist) in, a
    /// handshake reply bound to its `HandshakeRequestMessage` out.
    pub fn drm_handshake(&self, ct: Option<&str>, body: &[u8], seen: &mut Seen) -> Answer {
        let plist_ct = ct.is_some_and(|ct| {
            ct.trim()
                .to_ascii_lowercase()
                .starts_with(content_type::APPLE_PLIST)
        });
        if !plist_ct {
            return Answer::plist_error(415, "Content-Type must be application/x-apple-plist");
        }
        let Some(session) = std::str::from_utf8(body)
            .ok()
            .and_then(|text| parse_activation_info_text(text).ok())
        else {
            return Answer::plist_error(400, "body is not an XML plist");
        };
        let Some(session) = session.as_dictionary() else {
            return Answer::plist_error(400, "body is not a dictionary");
        };
        let udid = session.get("UniqueDeviceID").and_then(Value::as_string);
        let request = session
            .get("HandshakeRequestMessage")
            .and_then(Value::as_data);
        let (Some(udid), Some(request)) = (udid, request) else {
            return Answer::plist_error(400, "no HandshakeRequestMessage or UniqueDeviceID");
        };
        seen.udid(udid);
        if !self.phones.contains_key(udid) {
            return Answer::plist_error(400, "unknown device");
        }
        if !self.authority.check_handshake_request(udid, request) {
            return Answer::plist_error(400, "handshake request not made by this device");
        }
        let server_kp = self.authority.server_kp(udid);
        let response = self.authority.handshake_response(udid, request, &server_kp);
        let mut d = Dictionary::new();
        d.insert("HandshakeResponseMessage".into(), Value::Data(response));
        d.insert("serverKP".into(), Value::Data(server_kp));
        Answer::plist(200, &Value::Dictionary(d), AlbertOutcome::HandshakeReply)
    }

    /// `POST /deviceservices/deviceActivation`: the first request (`activation-info`) or a
    /// lock-form resubmission (`activation-info-base64` and the page's fields).
    pub fn device_activation(
        &self,
        ct: Option<&str>,
        body: &[u8],
        scenario: Scenario,
        seen: &mut Seen,
    ) -> Answer {
        let Some(ct) = ct else {
            return Answer::bad_form("no Content-Type".to_string());
        };
        let form = match parse_device_activation_form(ct, body) {
            Ok(form) => form,
            Err(FormError::BothActivationInfoFields) => {
                seen.fields = vec![
                    field::ACTIVATION_INFO.to_string(),
                    field::ACTIVATION_INFO_BASE64.to_string(),
                ];
                // Albert reads activation-info first and rejects the pair (docs/protocol.md §5.4).
                return Answer::error_page("Verification Failed", "Please retry activation.");
            }
            Err(e) => return Answer::bad_form(e.to_string()),
        };
        let info_field = match form.activation_info_source() {
            ActivationInfoSource::Field => field::ACTIVATION_INFO,
            ActivationInfoSource::Base64Field => field::ACTIVATION_INFO_BASE64,
        };
        seen.fields = std::iter::once(info_field.to_string())
            .chain(form.fields().map(|(n, _)| n.to_string()))
            .collect();
        seen.login = form.field(LOGIN_FIELD).map(str::to_string);
        seen.password = form.field(PASSWORD_FIELD).map(mask_password);

        let info = match self.request_info(form.activation_info()) {
            Ok(info) => info,
            Err(reason) => {
                tracing::info!(%reason, "activation info refused");
                return Answer::error_page(
                    "Activation Error",
                    "Activation request could not be completed. Please retry activation.",
                );
            }
        };
        seen.udid(&info.udid);
        let Some(phone) = self.phones.get(&info.udid) else {
            return Answer::error_page("Device Unknown", "This device is not known.");
        };
        // Since iOS 10.2 Albert does not acknowledge re-activation (docs/protocol.md §5.5).
        if info.state != ActivationState::Unactivated.as_str()
            || phone.activation_state() != ActivationState::Unactivated
        {
            return Answer::error_page(
                "Device Unknown",
                "This device is already activated: no activation record was issued.",
            );
        }

        // The world's lock, unless the phone's MDM has had it released since.
        let lock = phone.activation_lock();
        let challenge_ok = form.field(CHALLENGE_FIELD).is_some_and(|c| {
            self.authority
                .check_lock_challenge(&info.udid, &info.randomness, c)
        });
        let fresh = !is_resubmission(&form);
        if fresh && scenario.continue_page {
            return Answer::page(
                200,
                &self.continue_page(&info, &form),
                AlbertOutcome::ContinuePage,
            );
        }
        // The continue page posted back as it was: its hidden fields and nothing else.
        let continued = !fresh
            && challenge_ok
            && form.activation_info_source() == ActivationInfoSource::Base64Field
            && !form.is_auth_required()
            && form.field(LOGIN_FIELD).is_none()
            && form.field(PASSWORD_FIELD).is_none();
        if fresh || continued {
            return match lock {
                Lock::None => self.record(&info, scenario),
                Lock::Mdm | Lock::User => Answer::page(
                    200,
                    &self.lock_page(phone, &info, &form),
                    AlbertOutcome::LockForm,
                ),
            };
        }
        // A resubmission must echo the page's hidden fields: the info as base64, the
        // auth flag and the challenge issued for this very request.
        let echoed = form.activation_info_source() == ActivationInfoSource::Base64Field
            && form.is_auth_required()
            && challenge_ok;
        let (Some(login), Some(password)) = (form.field(LOGIN_FIELD), form.field(PASSWORD_FIELD))
        else {
            return incomplete();
        };
        if !echoed {
            return incomplete();
        }
        match lock {
            Lock::None => self.record(&info, scenario),
            Lock::Mdm if login.trim().is_empty() && self.is_current_code(phone, password) => {
                tracing::info!(code = %mask_password(password), "bypass code accepted: lock released");
                self.record(&info, scenario)
            }
            Lock::Mdm | Lock::User => {
                tracing::info!(
                    %lock,
                    login_blank = login.trim().is_empty(),
                    password = %mask_password(password),
                    "credentials rejected"
                );
                let page = match scenario.wrong_credentials {
                    // An alert and nothing to fill in: the client starts over.
                    WrongCredentials::Alert => {
                        BuddyPage::auth_alert(LOCK_TITLE, WRONG_CREDENTIALS, BuddyPage::default())
                    }
                    WrongCredentials::AlertOverForm => BuddyPage::auth_alert(
                        LOCK_TITLE,
                        WRONG_CREDENTIALS,
                        self.lock_page(phone, &info, &form),
                    ),
                };
                Answer::page(200, &page, AlbertOutcome::AuthAlert)
            }
        }
    }

    /// Case and dashes do not matter: codes compare as [`BypassCode`]s.
    fn is_current_code(&self, phone: &Phone, password: &str) -> bool {
        let Ok(code) = BypassCode::parse(password) else {
            return false;
        };
        phone
            .profile()
            .codes
            .iter()
            .filter_map(|c| BypassCode::parse(c).ok())
            .any(|c| c == code)
    }

    fn record(&self, info: &RequestInfo, scenario: Scenario) -> Answer {
        let mut record = build_record(&self.authority, info);
        if scenario.record_ack {
            record.insert("ack-received".into(), Value::Boolean(true));
        }
        let body = match activation_record_body(&record) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a record");
                return Answer::error_page("Activation Error", "Please retry activation.");
            }
        };
        tracing::info!("activation record issued");
        Answer {
            status: 200,
            content_type: content_type::TEXT_XML,
            headers: vec![
                (SIGNATURE_HEADER, self.authority.response_signature(&body)),
                (
                    "X-Apple-Request-UUID",
                    uuid::Uuid::new_v4().to_string().to_uppercase(),
                ),
            ],
            body,
            outcome: AlbertOutcome::Record,
        }
    }

    /// The Activation Lock form of docs/protocol.md §5.6, built by the protocol crate.
    fn lock_page(&self, phone: &Phone, info: &RequestInfo, form: &ActivationForm) -> BuddyPage {
        let p = phone.profile();
        let owner = if p.owner_hint.is_empty() {
            String::new()
        } else {
            format!(" {}", p.owner_hint)
        };
        let description = format!(
            "This {} is linked to an Apple ID.\nEnter the Apple ID and password that were used to set up this {}.{owner}",
            p.device_class, p.device_class
        );
        let mut server_info = self.echoed_fields(info, form);
        server_info.insert(1, (field::IS_AUTH_REQUIRED.to_string(), "true".to_string()));
        BuddyPage::lock_form(
            LOCK_TITLE,
            description,
            vec![
                InputField::text(LOGIN_FIELD)
                    .with_label("Apple ID")
                    .with_keyboard_type("email"),
                InputField::secure(PASSWORD_FIELD)
                    .with_label("Password")
                    .with_placeholder("Required"),
            ],
            server_info,
        )
        .with_submit_url(SUBMIT_PATH)
        .with_script(LOCK_SCRIPT, "enableNext")
        .with_loading_title("Activating...")
        .with_help("Activation Lock Help", HELP_URL)
    }

    /// A page of hidden fields only (`continue_page`): the client posts it back as is.
    fn continue_page(&self, info: &RequestInfo, form: &ActivationForm) -> BuddyPage {
        BuddyPage {
            name: Some(CONTINUE_PAGE.to_string()),
            hidden: self.echoed_fields(info, form),
            ..BuddyPage::default()
        }
    }

    /// `activation-info-base64` and the challenge bound to this request: what a page hands
    /// out for the client to echo.
    fn echoed_fields(&self, info: &RequestInfo, form: &ActivationForm) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        match activation_info_base64(form.activation_info()) {
            Ok(b64) => fields.push((field::ACTIVATION_INFO_BASE64.to_string(), b64)),
            Err(e) => tracing::warn!(error = %e, "cannot encode activation-info-base64"),
        }
        fields.push((
            CHALLENGE_FIELD.to_string(),
            self.authority.lock_challenge(&info.udid, &info.randomness),
        ));
        fields
    }

    /// Reads and verifies the activation info: signed by the phone after a handshake this
    /// server answered for it.
    fn request_info(&self, info: &Value) -> Result<RequestInfo, &'static str> {
        let d = info
            .as_dictionary()
            .ok_or("activation-info is not a dictionary")?;
        let data = |key: &str| d.get(key).and_then(Value::as_data);
        let xml = data("ActivationInfoXML").ok_or("no ActivationInfoXML")?;
        // Absent from the sessionless info of iOS 9.3-9.x (docs/protocol.md §5.3 B).
        let server_kp = data("serverKP");
        let signature = data("FairPlaySignature").ok_or("no FairPlaySignature")?;
        let inner = std::str::from_utf8(xml)
            .ok()
            .and_then(|t| parse_activation_info_text(t).ok())
            .ok_or("ActivationInfoXML is not an XML plist")?;
        let inner = inner
            .as_dictionary()
            .ok_or("ActivationInfoXML is not a dictionary")?;
        let section = |name: &str| inner.get(name).and_then(Value::as_dictionary);
        let text = |section: Option<&Dictionary>, key: &str| {
            section
                .and_then(|s| s.get(key))
                .and_then(Value::as_string)
                .map(str::to_string)
        };
        let device_id = section("DeviceID");
        let request = section("ActivationRequestInfo");
        let udid = text(device_id, "UniqueDeviceID").ok_or("no UniqueDeviceID")?;
        let signed = match server_kp {
            Some(server_kp) => {
                if !self.authority.check_server_kp(&udid, server_kp) {
                    return Err("serverKP was not issued for this device");
                }
                self.authority
                    .check_activation_info_signature(server_kp, xml, signature)
            }
            None => self
                .authority
                .check_sessionless_info_signature(&udid, xml, signature),
        };
        if !signed {
            return Err("FairPlaySignature does not match");
        }
        Ok(RequestInfo {
            serial: text(device_id, "SerialNumber").ok_or("no SerialNumber")?,
            product_type: text(section("DeviceInfo"), "ProductType").unwrap_or_default(),
            randomness: text(request, "ActivationRandomness").ok_or("no ActivationRandomness")?,
            state: text(request, "ActivationState").ok_or("no ActivationState")?,
            imei: text(
                section("BasebandRequestInfo"),
                "InternationalMobileEquipmentIdentity",
            ),
            udid,
        })
    }
}

/// A request that answers a lock form rather than asking anew.
fn is_resubmission(form: &ActivationForm) -> bool {
    form.activation_info_source() == ActivationInfoSource::Base64Field
        || form.is_auth_required()
        || [LOGIN_FIELD, PASSWORD_FIELD, CHALLENGE_FIELD]
            .iter()
            .any(|f| form.field(f).is_some())
}

fn incomplete() -> Answer {
    Answer::error_page(
        "Activation Error",
        "The request is missing information from the previous page. Please retry activation.",
    )
}
