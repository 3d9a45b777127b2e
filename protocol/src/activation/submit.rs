//! Answering the Activation Lock form (docs/protocol.md §5.6): the rows the page itself names get the
//! username and password — for a bypass code, a blank username and the code as password — and
//! every hidden `serverInfo` field is echoed, as ideviceactivation's loop does.

use std::fmt;

use zeroize::Zeroizing;

use super::buddyml::BuddyPage;
use super::{field, form, EncodeError, FormEncoding, HttpRequestParts};

/// A secret form value (password, bypass code). `Debug` never shows it; wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The value itself, for the request body only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// A form value: plain, or secret (from a `secure="true"` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Plain(String),
    Secret(SecretValue),
}

impl FieldValue {
    pub fn expose(&self) -> &str {
        match self {
            Self::Plain(v) => v,
            Self::Secret(s) => s.expose(),
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, Self::Secret(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormField {
    pub name: String,
    pub value: FieldValue,
}

/// The fields of a lock-form resubmission, in order: the page's input rows, then its hidden
/// fields. Safe to `Debug`: the password is redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormSubmission {
    fields: Vec<FormField>,
    submit_url: Option<String>,
}

impl FormSubmission {
    pub fn fields(&self) -> &[FormField] {
        &self.fields
    }

    pub fn value(&self, name: &str) -> Option<&FieldValue> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.value)
    }

    /// The page's `linkBarItem` URL, if any. libideviceactivation ignores it and posts to the
    /// default `deviceActivation` URL; the caller decides.
    pub fn submit_url(&self) -> Option<&str> {
        self.submit_url.as_deref()
    }

    /// The `deviceActivation` POST carrying these fields. URL-encoded is what ideviceactivation
    /// and pymobiledevice3 send back. The body holds the password.
    pub fn to_request(&self, encoding: FormEncoding) -> Result<HttpRequestParts, EncodeError> {
        let pairs: Vec<(&str, &str)> = self
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.expose()))
            .collect();
        form::form_request(&pairs, &encoding)
    }
}

/// Why a page cannot be answered with a username and a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmissionError {
    #[error("the form has no secure (password) field to put the code in")]
    NoSecureField,
    /// More than one place the username or the password could go: guessing could send the code
    /// to the wrong field.
    #[error("the form has {secure} secure and {plain} plain input fields; expected one password field and at most one account field")]
    AmbiguousFields { secure: usize, plain: usize },
}

/// Fills the lock form: the one non-secure row (if any) gets `username` (blank for a bypass
/// code), the one secure row gets `password`; every hidden field is echoed — except that
/// `activation-info` is dropped when `activation-info-base64` is present, since Albert rejects
/// a request carrying both.
pub fn lock_form_submission(
    page: &BuddyPage,
    username: &str,
    password: &str,
) -> Result<FormSubmission, SubmissionError> {
    let secure = page.fields.iter().filter(|f| f.secure).count();
    let plain = page.fields.len() - secure;
    if secure == 0 {
        return Err(SubmissionError::NoSecureField);
    }
    if secure > 1 || plain > 1 {
        return Err(SubmissionError::AmbiguousFields { secure, plain });
    }

    let mut fields: Vec<FormField> = page
        .fields
        .iter()
        .map(|f| FormField {
            name: f.id.clone(),
            value: if f.secure {
                FieldValue::Secret(SecretValue::new(password))
            } else {
                FieldValue::Plain(username.to_string())
            },
        })
        .collect();

    echo_hidden(page, &mut fields);
    Ok(FormSubmission {
        fields,
        submit_url: page.submit.as_ref().map(|s| s.url.clone()),
    })
}

/// A page of hidden fields only, posted back as it is (ideviceactivation's loop resubmits
/// every field of a page that asks for no input).
pub fn continue_form_submission(page: &BuddyPage) -> FormSubmission {
    let mut fields = Vec::new();
    echo_hidden(page, &mut fields);
    FormSubmission {
        fields,
        submit_url: page.submit.as_ref().map(|s| s.url.clone()),
    }
}

/// Appends the page's hidden fields not already in `fields`, never `activation-info` next to
/// `activation-info-base64`.
fn echo_hidden(page: &BuddyPage, fields: &mut Vec<FormField>) {
    let has_base64 = page.hidden_field(field::ACTIVATION_INFO_BASE64).is_some();
    for (name, value) in &page.hidden {
        let shadowed = fields.iter().any(|f| &f.name == name);
        let forbidden = has_base64 && name == field::ACTIVATION_INFO;
        if !shadowed && !forbidden {
            fields.push(FormField {
                name: name.clone(),
                value: FieldValue::Plain(value.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        activation_info_base64, parse_device_activation_form, ActivationInfoSource, InputField,
    };
    use super::*;

    const CODE: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";

    fn activation_info() -> plist::Value {
        let mut d = plist::Dictionary::new();
        d.insert("SerialNumber".into(), "F2LXK0AAHG7F".into());
        plist::Value::Dictionary(d)
    }

    fn page() -> BuddyPage {
        let b64 = activation_info_base64(&activation_info()).expect("b64");
        BuddyPage::lock_form(
            "Activation Lock",
            "Locked.",
            vec![
                InputField::text("appleId").with_label("Apple Account"),
                InputField::secure("pass").with_label("Password"),
            ],
            vec![
                ("activation-info-base64".into(), b64),
                ("machineName".into(), "FMIP".into()),
                ("activation-info".into(), "<dict/>".into()),
                ("appleId".into(), "hidden value loses".into()),
            ],
        )
        .with_submit_url("/deviceservices/deviceActivation")
    }

    #[test]
    fn a_page_of_hidden_fields_is_posted_back_as_it_is() {
        let page = BuddyPage {
            hidden: vec![
                ("activation-info-base64".into(), "QUJD".into()),
                ("activation-info".into(), "<dict/>".into()),
                ("challenge".into(), "c1".into()),
            ],
            ..BuddyPage::default()
        };
        let sub = continue_form_submission(&page);
        let pairs: Vec<(&str, &str)> = sub
            .fields()
            .iter()
            .map(|f| (f.name.as_str(), f.value.expose()))
            .collect();
        assert_eq!(
            pairs,
            [("activation-info-base64", "QUJD"), ("challenge", "c1")]
        );
        assert!(sub.fields().iter().all(|f| !f.value.is_secret()));
    }

    #[test]
    fn fills_rows_from_the_page_and_echoes_hidden_fields() {
        let page = page();
        let sub = lock_form_submission(&page, "", CODE).expect("submission");
        let names: Vec<&str> = sub.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "appleId",
                "pass",
                "activation-info-base64",
                "machineName",
                "isAuthRequired"
            ]
        );
        assert_eq!(
            sub.value("appleId"),
            Some(&FieldValue::Plain(String::new()))
        );
        let pass = sub.value("pass").expect("pass");
        assert!(pass.is_secret());
        assert_eq!(pass.expose(), CODE);
        assert_eq!(
            sub.value("activation-info-base64").map(FieldValue::expose),
            page.hidden_field("activation-info-base64")
        );
        assert_eq!(
            sub.value("isAuthRequired").map(FieldValue::expose),
            Some("true")
        );
        assert!(sub.value("activation-info").is_none());
        assert_eq!(sub.submit_url(), Some("/deviceservices/deviceActivation"));
    }

    #[test]
    fn resubmission_round_trips_through_the_server_parser() {
        let sub = lock_form_submission(&page(), "", CODE).expect("submission");
        for encoding in [FormEncoding::UrlEncoded, FormEncoding::multipart()] {
            let req = sub.to_request(encoding).expect("request");
            let form = parse_device_activation_form(req.content_type().expect("ct"), &req.body)
                .expect("server accepts the resubmission");
            assert_eq!(
                form.activation_info_source(),
                ActivationInfoSource::Base64Field
            );
            assert_eq!(form.activation_info(), &activation_info());
            assert_eq!(form.field("appleId"), Some(""));
            assert_eq!(form.field("pass"), Some(CODE));
            assert_eq!(form.field("machineName"), Some("FMIP"));
            assert!(form.is_auth_required());
        }
        let body = String::from_utf8(
            sub.to_request(FormEncoding::UrlEncoded)
                .expect("request")
                .body,
        )
        .expect("ascii");
        assert!(
            body.starts_with("appleId=&pass=3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4&"),
            "{body}"
        );
        assert!(!body.contains("activation-info="));
    }

    #[test]
    fn password_never_in_debug() {
        let sub = lock_form_submission(&page(), "", CODE).expect("submission");
        let req = sub.to_request(FormEncoding::UrlEncoded).expect("request");
        for debug in [format!("{sub:?}"), format!("{sub:#?}"), format!("{req:?}")] {
            assert!(!debug.contains("3UM43"), "{debug}");
            assert!(!debug.contains("FKA4"), "{debug}");
        }
        assert!(format!("{sub:?}").contains("<redacted>"));
    }

    #[test]
    fn keeps_activation_info_when_it_is_the_only_one() {
        let page = BuddyPage::lock_form(
            "t",
            "",
            vec![InputField::secure("password")],
            vec![("activation-info".into(), "<dict/>".into())],
        );
        let sub = lock_form_submission(&page, "", CODE).expect("submission");
        assert!(sub.value("activation-info").is_some());
        assert!(sub.value("activation-info-base64").is_none());
    }

    #[test]
    fn refuses_forms_it_cannot_fill_safely() {
        let no_secure = BuddyPage::lock_form("t", "", vec![InputField::text("login")], vec![]);
        assert_eq!(
            lock_form_submission(&no_secure, "", CODE),
            Err(SubmissionError::NoSecureField)
        );
        let two_secure = BuddyPage::lock_form(
            "t",
            "",
            vec![InputField::secure("a"), InputField::secure("b")],
            vec![],
        );
        assert_eq!(
            lock_form_submission(&two_secure, "", CODE),
            Err(SubmissionError::AmbiguousFields {
                secure: 2,
                plain: 0
            })
        );
        let two_plain = BuddyPage::lock_form(
            "t",
            "",
            vec![
                InputField::text("a"),
                InputField::text("b"),
                InputField::secure("c"),
            ],
            vec![],
        );
        assert_eq!(
            lock_form_submission(&two_plain, "", CODE),
            Err(SubmissionError::AmbiguousFields {
                secure: 1,
                plain: 2
            })
        );
        // A password-only form is fine.
        let only_password = BuddyPage::lock_form("t", "", vec![InputField::secure("p")], vec![]);
        assert!(lock_form_submission(&only_password, "", CODE).is_ok());
    }
}
