//! Classification of an activation-server answer (docs/protocol.md §5.5): dispatch on Content-Type
//! (case-insensitive prefix, as libideviceactivation), then on the body's structure.

use super::buddyml::BuddyPage;
use super::{content_type, header_value, html};

/// Where in a plist answer the activation record sat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordContainer {
    /// Top-level `ActivationRecord` (session mode): hand the raw body to the device.
    ActivationRecord,
    /// `iphone-activation` → `activation-record` (older flows): hand the record dictionary.
    IphoneActivation,
    /// `device-activation` → `activation-record`.
    DeviceActivation,
}

/// What an answer from `drmHandshake` or `deviceActivation` means.
#[derive(Debug, Clone, PartialEq)]
pub enum ActivationResponse {
    /// An activation record. `raw_body` is the plist document exactly as received (the whole
    /// HTTP body, or the embedded plist of an HTML page): mobileactivationd's
    /// `HandleActivationInfoWithSessionRequest` wants those bytes and `headers` unchanged.
    /// `acknowledged`: the answer also said `ack-received`; the record is still to be applied
    /// (libideviceactivation's tool looks for a record before it looks at the ack).
    Record {
        raw_body: Vec<u8>,
        record: plist::Dictionary,
        container: RecordContainer,
        headers: Vec<(String, String)>,
        acknowledged: bool,
    },
    /// A `drmHandshake` reply (top-level `HandshakeResponseMessage`); `raw_body` is what
    /// `CreateTunnel1ActivationInfoRequest` is given.
    HandshakeReply {
        raw_body: Vec<u8>,
        reply: plist::Value,
    },
    /// `ack-received` without a record (plist, HTML-embedded plist or buddyml `clientInfo`):
    /// the server considers the device activated already. With a record the answer is a
    /// [`ActivationResponse::Record`] (`acknowledged: true`): the record comes first.
    Acknowledged,
    /// A form with input rows: the Activation Lock (Apple Account + password).
    LockForm(BuddyPage),
    /// A form with hidden fields only: libideviceactivation posts them straight back.
    ContinueForm(BuddyPage),
    /// An `<alert>` over the form: wrong credentials (or wrong bypass code).
    AuthAlert {
        title: Option<String>,
        message: Option<String>,
        page: BuddyPage,
    },
    /// A buddyml error page (or a page without any field), or an HTML page with neither form nor
    /// plist: nothing to submit.
    ErrorPage {
        title: Option<String>,
        description: Option<String>,
    },
    /// iTunes-style HTML asking for credentials; it carries no usable fields (docs/protocol.md §5.6).
    HtmlAuthRequired { title: Option<String> },
    /// HTTP 5xx: worth a bounded retry.
    ServerError { status: u16 },
    /// A known content type whose body could not be understood.
    Malformed {
        content_type: String,
        status: u16,
        reason: String,
    },
    /// A content type (or status) this exchange does not know.
    Unknown {
        content_type: Option<String>,
        status: u16,
    },
}

/// Classifies one HTTP answer. Never panics; garbage ends in `Malformed` or `Unknown`.
/// Statuses other than 2xx and 5xx (redirects are the caller's) are `Unknown`.
pub fn classify_response(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> ActivationResponse {
    let ct = header_value(headers, "Content-Type").map(str::to_string);
    if status >= 500 {
        return ActivationResponse::ServerError { status };
    }
    if !(200..300).contains(&status) {
        return ActivationResponse::Unknown {
            content_type: ct,
            status,
        };
    }
    let Some(ct) = ct else {
        return ActivationResponse::Unknown {
            content_type: None,
            status,
        };
    };
    let lower = ct.trim().to_ascii_lowercase();
    let malformed = |reason: String| ActivationResponse::Malformed {
        content_type: ct.clone(),
        status,
        reason,
    };
    if lower.starts_with(content_type::APPLICATION_XML) || lower.starts_with(content_type::TEXT_XML)
    {
        classify_plist(body, body, headers).unwrap_or_else(malformed)
    } else if lower.starts_with(content_type::BUDDYML) {
        match BuddyPage::parse(body) {
            Ok(page) => classify_buddyml(page),
            Err(e) => malformed(e.to_string()),
        }
    } else if lower.starts_with(content_type::HTML) {
        classify_html(body, headers).unwrap_or_else(malformed)
    } else {
        ActivationResponse::Unknown {
            content_type: Some(ct),
            status,
        }
    }
}

/// A plist answer: handshake reply, record or acknowledgement. `raw` is kept as the record.
fn classify_plist(
    plist_bytes: &[u8],
    raw: &[u8],
    headers: &[(String, String)],
) -> Result<ActivationResponse, String> {
    let value = super::parse_xml_plist(plist_bytes).map_err(|e| format!("not a plist: {e}"))?;
    let Some(top) = value.as_dictionary() else {
        return Err("plist is not a dictionary".to_string());
    };
    if top.contains_key("HandshakeResponseMessage") {
        return Ok(ActivationResponse::HandshakeReply {
            raw_body: raw.to_vec(),
            reply: value,
        });
    }
    let record_response =
        |record: &plist::Dictionary, container, acknowledged| ActivationResponse::Record {
            raw_body: raw.to_vec(),
            record: record.clone(),
            container,
            headers: headers.to_vec(),
            acknowledged,
        };
    if let Some(record) = top.get("ActivationRecord") {
        let record = record
            .as_dictionary()
            .ok_or("ActivationRecord is not a dictionary")?;
        let ack = ack_received(record);
        // A dictionary holding nothing but the flag is no record to apply.
        if ack && record.keys().all(|k| k == ACK_RECEIVED) {
            return Ok(ActivationResponse::Acknowledged);
        }
        return Ok(record_response(
            record,
            RecordContainer::ActivationRecord,
            ack,
        ));
    }
    for (key, container) in [
        ("iphone-activation", RecordContainer::IphoneActivation),
        ("device-activation", RecordContainer::DeviceActivation),
    ] {
        let Some(node) = top.get(key) else { continue };
        let node = node
            .as_dictionary()
            .ok_or_else(|| format!("{key} is not a dictionary"))?;
        let ack = ack_received(node);
        return match node
            .get("activation-record")
            .and_then(|r| r.as_dictionary())
        {
            Some(record) => Ok(record_response(record, container, ack)),
            None if ack => Ok(ActivationResponse::Acknowledged),
            None => Err(format!(
                "{key} has neither activation-record nor ack-received"
            )),
        };
    }
    Err("plist has no ActivationRecord, iphone-activation, device-activation or HandshakeResponseMessage".to_string())
}

const ACK_RECEIVED: &str = "ack-received";

/// `ack-received` as a boolean, or as the string "true" some servers send.
fn ack_received(dict: &plist::Dictionary) -> bool {
    match dict.get(ACK_RECEIVED) {
        Some(plist::Value::Boolean(b)) => *b,
        Some(plist::Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// libideviceactivation's order: error navigationBar, ack, alert, then fields.
fn classify_buddyml(page: BuddyPage) -> ActivationResponse {
    if page.error_title.is_some() {
        return ActivationResponse::ErrorPage {
            title: page.error_title,
            description: page.description,
        };
    }
    if page.ack_received {
        return ActivationResponse::Acknowledged;
    }
    if let Some(alert) = page.alert.clone() {
        return ActivationResponse::AuthAlert {
            title: alert.title,
            message: alert.message,
            page,
        };
    }
    if !page.fields.is_empty() {
        ActivationResponse::LockForm(page)
    } else if !page.hidden.is_empty() {
        ActivationResponse::ContinueForm(page)
    } else {
        ActivationResponse::ErrorPage {
            title: page.page_title,
            description: page.description,
        }
    }
}

fn classify_html(body: &[u8], headers: &[(String, String)]) -> Result<ActivationResponse, String> {
    let text = String::from_utf8_lossy(body);
    if html::auth_required(&text) {
        return Ok(ActivationResponse::HtmlAuthRequired {
            title: html::title(&text),
        });
    }
    if let Some(script) = html::plist_script(&text) {
        return classify_plist(script.as_bytes(), script.as_bytes(), headers);
    }
    Ok(ActivationResponse::ErrorPage {
        title: html::title(&text),
        description: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{BuddyPage, InputField};
    use super::*;

    fn headers(ct: &str) -> Vec<(String, String)> {
        vec![
            ("Content-Type".to_string(), ct.to_string()),
            ("X-Apple-Request-UUID".to_string(), "abc".to_string()),
        ]
    }

    fn xml(value: plist::Value) -> Vec<u8> {
        let mut out = Vec::new();
        value.to_writer_xml(&mut out).expect("xml");
        out
    }

    fn dict(pairs: Vec<(&str, plist::Value)>) -> plist::Value {
        plist::Value::Dictionary(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn record() -> plist::Value {
        dict(vec![
            ("AccountToken", plist::Value::Data(b"token".to_vec())),
            ("unbrick", true.into()),
        ])
    }

    #[test]
    fn session_record_keeps_raw_body_and_headers() {
        // Odd whitespace must survive: the device checks the bytes it was sent.
        let mut body = xml(dict(vec![("ActivationRecord", record())]));
        body.extend_from_slice(b"\n\n  ");
        let hs = headers("text/xml; charset=UTF-8");
        match classify_response(200, &hs, &body) {
            ActivationResponse::Record {
                raw_body,
                record: r,
                container,
                headers,
                acknowledged,
            } => {
                assert!(!acknowledged);
                assert_eq!(raw_body, body);
                assert_eq!(plist::Value::Dictionary(r), record());
                assert_eq!(container, RecordContainer::ActivationRecord);
                assert_eq!(headers, hs);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn iphone_and_device_activation_records() {
        for (key, container) in [
            ("iphone-activation", RecordContainer::IphoneActivation),
            ("device-activation", RecordContainer::DeviceActivation),
        ] {
            let body = xml(dict(vec![(
                key,
                dict(vec![
                    ("activation-record", record()),
                    ("show-settings", true.into()),
                ]),
            )]));
            match classify_response(200, &headers("Application/XML"), &body) {
                ActivationResponse::Record {
                    record: r,
                    container: c,
                    ..
                } => {
                    assert_eq!(plist::Value::Dictionary(r), record());
                    assert_eq!(c, container);
                }
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn acknowledgements() {
        let plist_ack = xml(dict(vec![(
            "iphone-activation",
            dict(vec![("ack-received", true.into())]),
        )]));
        let record_ack = xml(dict(vec![(
            "ActivationRecord",
            dict(vec![("ack-received", true.into())]),
        )]));
        let buddy_ack = BuddyPage::ack_page().render().into_bytes();
        let hand_ack = b"<xmlui><clientInfo ack-received=\"true\"/></xmlui>".to_vec();
        // A record with the flag is still a record, applied first (libideviceactivation's
        // tool checks for a record before the ack).
        let mut with_ack = record().into_dictionary().expect("a dictionary");
        with_ack.insert("ack-received".into(), true.into());
        for body in [
            xml(dict(vec![(
                "ActivationRecord",
                plist::Value::Dictionary(with_ack.clone()),
            )])),
            xml(dict(vec![(
                "iphone-activation",
                dict(vec![
                    ("activation-record", record()),
                    ("ack-received", true.into()),
                ]),
            )])),
        ] {
            match classify_response(200, &headers("text/xml"), &body) {
                ActivationResponse::Record {
                    acknowledged,
                    raw_body,
                    ..
                } => {
                    assert!(acknowledged);
                    assert_eq!(raw_body, body);
                }
                other => panic!("record with ack: {other:?}"),
            }
        }
        for (ct, body) in [
            ("text/xml", plist_ack),
            ("text/xml", record_ack),
            ("application/x-buddyml", buddy_ack),
            ("application/x-buddyml; charset=utf-8", hand_ack),
        ] {
            assert_eq!(
                classify_response(200, &headers(ct), &body),
                ActivationResponse::Acknowledged,
                "{ct}"
            );
        }
    }

    #[test]
    fn handshake_reply() {
        let reply = dict(vec![(
            "HandshakeResponseMessage",
            plist::Value::Data(vec![7; 16]),
        )]);
        let body = xml(reply.clone());
        assert_eq!(
            classify_response(200, &headers("application/xml"), &body),
            ActivationResponse::HandshakeReply {
                raw_body: body.clone(),
                reply
            }
        );
    }

    fn lock_page() -> BuddyPage {
        BuddyPage::lock_form(
            "Activation Lock",
            "This iPhone is linked to an Apple Account.",
            vec![
                InputField::text("login").with_label("Apple Account"),
                InputField::secure("password").with_label("Password"),
            ],
            vec![("activation-info-base64".into(), "QUJD".into())],
        )
    }

    #[test]
    fn lock_form_alert_and_error_pages() {
        let ct = headers("application/x-buddyml");
        match classify_response(200, &ct, lock_page().render().as_bytes()) {
            ActivationResponse::LockForm(page) => assert_eq!(page, lock_page()),
            other => panic!("{other:?}"),
        }

        let alert = BuddyPage::auth_alert("Incorrect", "Wrong code.", lock_page());
        match classify_response(200, &ct, alert.render().as_bytes()) {
            ActivationResponse::AuthAlert {
                title,
                message,
                page,
            } => {
                assert_eq!(title.as_deref(), Some("Incorrect"));
                assert_eq!(message.as_deref(), Some("Wrong code."));
                assert_eq!(page.fields.len(), 2);
            }
            other => panic!("{other:?}"),
        }

        let error = BuddyPage::error_page("Activation Error", "Device Unknown");
        assert_eq!(
            classify_response(200, &ct, error.render().as_bytes()),
            ActivationResponse::ErrorPage {
                title: Some("Activation Error".into()),
                description: Some("Device Unknown".into())
            }
        );

        // No fields at all is an error too (libideviceactivation step 7).
        let bare = b"<xmlui><page><navigationBar title=\"Verification Failed\"/><tableView><section><footer>Please retry activation.</footer></section></tableView></page></xmlui>";
        assert_eq!(
            classify_response(200, &ct, bare),
            ActivationResponse::ErrorPage {
                title: Some("Verification Failed".into()),
                description: Some("Please retry activation.".into())
            }
        );

        let hidden_only = b"<xmlui><page/><serverInfo token=\"x\"/></xmlui>";
        assert!(matches!(
            classify_response(200, &ct, hidden_only),
            ActivationResponse::ContinueForm(_)
        ));
    }

    #[test]
    fn html_pages() {
        let ct = headers("text/html; charset=utf-8");
        let locked = b"<html><head><title>iCloud Activation Lock</title></head><body>\
            <form method=post><input type=hidden name=isAuthRequired value=true>\
            <input name=login><input type=password name=password></form></body></html>";
        assert_eq!(
            classify_response(200, &ct, locked),
            ActivationResponse::HtmlAuthRequired {
                title: Some("iCloud Activation Lock".into())
            }
        );

        let inner = r#"<plist version="1.0"><dict><key>iphone-activation</key><dict><key>activation-record</key><dict><key>unbrick</key><true/></dict></dict></dict></plist>"#;
        let page = format!(
            "<html><body><script id=\"protocol\" type=\"text/x-apple-plist\">{inner}</script></body></html>"
        );
        match classify_response(200, &ct, page.as_bytes()) {
            ActivationResponse::Record {
                raw_body,
                container,
                record,
                ..
            } => {
                assert_eq!(raw_body, inner.as_bytes());
                assert_eq!(container, RecordContainer::IphoneActivation);
                assert_eq!(record.get("unbrick"), Some(&plist::Value::Boolean(true)));
            }
            other => panic!("{other:?}"),
        }

        let ack = r#"<html><script type="text/x-apple-plist"><plist version="1.0"><dict><key>iphone-activation</key><dict><key>ack-received</key><true/></dict></dict></plist></script></html>"#;
        assert_eq!(
            classify_response(200, &ct, ack.as_bytes()),
            ActivationResponse::Acknowledged
        );

        assert_eq!(
            classify_response(200, &ct, b"<html><title>Oops</title></html>"),
            ActivationResponse::ErrorPage {
                title: Some("Oops".into()),
                description: None
            }
        );
    }

    #[test]
    fn statuses_and_unknown_types() {
        let ct = headers("text/xml");
        assert_eq!(
            classify_response(500, &ct, b""),
            ActivationResponse::ServerError { status: 500 }
        );
        assert_eq!(
            classify_response(503, &[], b"<html/>"),
            ActivationResponse::ServerError { status: 503 }
        );
        assert_eq!(
            classify_response(404, &ct, b""),
            ActivationResponse::Unknown {
                content_type: Some("text/xml".into()),
                status: 404
            }
        );
        assert_eq!(
            classify_response(200, &headers("application/json"), b"{}"),
            ActivationResponse::Unknown {
                content_type: Some("application/json".into()),
                status: 200
            }
        );
        assert_eq!(
            classify_response(200, &[], b"<plist/>"),
            ActivationResponse::Unknown {
                content_type: None,
                status: 200
            }
        );
        // Header names are case-insensitive.
        let lower = vec![("content-type".to_string(), "TEXT/XML".to_string())];
        assert!(matches!(
            classify_response(200, &lower, b"junk"),
            ActivationResponse::Malformed { status: 200, .. }
        ));
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let bodies: [&[u8]; 9] = [
            b"",
            b"\x00\xff\xfe",
            b"<plist version=\"1.0\"><array/></plist>",
            b"<plist version=\"1.0\"><dict><key>ActivationRecord</key><string>x</string></dict></plist>",
            b"<plist version=\"1.0\"><dict><key>iphone-activation</key><dict/></dict></plist>",
            b"<plist version=\"1.0\"><dict><key>other</key><true/></dict></plist>",
            b"<xmlui><page><editableTextRow/></page></xmlui>",
            b"bplist00garbage",
            b"<<<<",
        ];
        for ct in ["text/xml", "application/x-buddyml", "text/html"] {
            for body in bodies {
                let r = classify_response(200, &headers(ct), body);
                assert!(
                    matches!(
                        r,
                        ActivationResponse::Malformed { .. } | ActivationResponse::ErrorPage { .. }
                    ),
                    "{ct} {body:?}: {r:?}"
                );
            }
        }
    }
}
