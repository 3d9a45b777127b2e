//! The activation exchange against the bench: mobileactivationd on the phones and the
//! stand-in activation server, driven with the protocol crate's codecs and a plain HTTP
//! client (tests/common/flow.rs), as the station drives them.

mod common;

use std::time::{Duration, Instant};

use common::flow::{Driver, HttpAnswer};
use common::*;
use plist::Value;
use station_protocol::activation::{
    classify_response, continue_form_submission, lock_form_submission, ActivationResponse,
    BuddyPage, Endpoint, FormEncoding, HttpRequestParts, RecordContainer, USER_AGENT,
};
use station_protocol::bypass_code::BypassCode;
use station_protocol::lockdown::LockdownErrorKind;
use station_protocol::mobileactivation::{Command, MobileActivationError};
use station_sim::{
    default_world, ActivationState, AlbertOutcome, DeviceSpec, Lock, ReadyDevice, World,
    WrongCredentials,
};

async fn driver(tb: &TestBench, udid: &str) -> Driver {
    let url = tb.bench.ready_info().activation_url;
    within(Driver::connect(&tb.socket, udid, &url))
        .await
        .expect("paired session")
}

fn device(tb: &TestBench, pred: impl Fn(&ReadyDevice) -> bool) -> ReadyDevice {
    tb.bench
        .ready_info()
        .devices
        .into_iter()
        .find(|d| pred(d))
        .expect("the world has such a phone")
}

fn clean(d: &ReadyDevice) -> bool {
    d.lock == "none" && d.activation_state == "Unactivated"
}

async fn info(d: &mut Driver) -> Value {
    within(d.activation_info()).await.expect("activation info")
}

async fn first_request(d: &mut Driver, info: &Value, encoding: FormEncoding) -> HttpAnswer {
    within(d.request_activation(info, encoding))
        .await
        .expect("deviceActivation")
}

async fn post(d: &Driver, req: &HttpRequestParts) -> HttpAnswer {
    within(d.post(req)).await.expect("HTTP request")
}

/// The record parts a host hands back to the phone.
fn record_of(answer: &HttpAnswer) -> (Vec<u8>, Vec<(String, String)>) {
    match answer.classify() {
        ActivationResponse::Record {
            raw_body,
            headers,
            container,
            ..
        } => {
            assert_eq!(container, RecordContainer::ActivationRecord);
            (raw_body, headers)
        }
        other => panic!("expected a record, got {other:?}"),
    }
}

fn lock_page(answer: &HttpAnswer) -> BuddyPage {
    match answer.classify() {
        ActivationResponse::LockForm(page) => page,
        other => panic!("expected the lock form, got {other:?}"),
    }
}

/// Submits the lock form with a username and password, as the station does.
async fn submit(d: &Driver, page: &BuddyPage, username: &str, password: &str) -> HttpAnswer {
    let sub = lock_form_submission(page, username, password).expect("fillable form");
    post(
        d,
        &sub.to_request(FormEncoding::UrlEncoded).expect("request"),
    )
    .await
}

/// The wrong-credentials alert; its page (empty by default, the form with
/// `wrong_credentials = "alert_over_form"`).
fn alert(answer: &HttpAnswer) -> BuddyPage {
    match answer.classify() {
        ActivationResponse::AuthAlert {
            title,
            message,
            page,
        } => {
            assert_eq!(title.as_deref(), Some("Activation Lock"));
            assert_eq!(message.as_deref(), Some("Incorrect Apple ID or password."));
            page
        }
        other => panic!("expected the wrong-credentials alert, got {other:?}"),
    }
}

/// The default answer to wrong credentials: an alert and nothing to fill in again.
fn alert_only(answer: &HttpAnswer) {
    let page = alert(answer);
    assert!(page.fields.is_empty() && page.hidden.is_empty(), "{page:?}");
    let text = String::from_utf8_lossy(&answer.body);
    assert!(!text.contains("<page"), "{text}");
}

/// A new exchange up to the lock form, as after an alert.
async fn lock_form_again(d: &mut Driver) -> BuddyPage {
    let info = info(d).await;
    lock_page(&first_request(d, &info, FormEncoding::UrlEncoded).await)
}

fn error_title(answer: &HttpAnswer) -> String {
    match answer.classify() {
        ActivationResponse::ErrorPage { title, .. } => title.unwrap_or_default(),
        other => panic!("expected an error page, got {other:?}"),
    }
}

fn refused(result: Result<Option<Value>, MobileActivationError>) -> String {
    match result {
        Err(MobileActivationError::Refused { message, .. }) => message,
        other => panic!("expected mobileactivationd to refuse, got {other:?}"),
    }
}

async fn hand_over(
    d: &mut Driver,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
) -> Result<Option<Value>, MobileActivationError> {
    within(d.hand_over(body, headers))
        .await
        .expect("service reachable")
}

async fn state(d: &mut Driver) -> String {
    within(d.activation_state()).await.expect("state")
}

async fn value(d: &mut Driver, key: &str) -> Value {
    within(d.get_value(key)).await.expect("GetValue")
}

fn world_of(specs: Vec<DeviceSpec>) -> World {
    world(41, specs)
}

fn spec(lock: Lock) -> DeviceSpec {
    DeviceSpec {
        activation_state: Some(ActivationState::Unactivated),
        lock: Some(lock),
        ..DeviceSpec::default()
    }
}

#[tokio::test]
async fn clean_phone_activates_and_every_client_sees_it() {
    let tb = start(default_world(4, 31)).await;
    let dev = device(&tb, clean);
    let mut d = driver(&tb, &dev.udid).await;
    assert_eq!(state(&mut d).await, "Unactivated");
    assert_eq!(value(&mut d, "BrickState").await, Value::Boolean(true));

    // Session info: docs/protocol.md §5.2.
    let command = Command::CreateTunnel1SessionInfo;
    let session = within(d.command(&command))
        .await
        .expect("service")
        .expect("session info");
    let session = station_protocol::mobileactivation::dictionary(&command, session).expect("dict");
    let msg = session
        .get("HandshakeRequestMessage")
        .and_then(Value::as_data)
        .expect("HandshakeRequestMessage");
    assert_eq!(msg.len(), 21);
    assert_eq!(
        session.get("UniqueDeviceID").and_then(Value::as_string),
        Some(dev.udid.as_str())
    );
    assert!(session
        .get("CollectionBlob")
        .and_then(Value::as_data)
        .is_some());

    // Activation info: its keys and the XML inside.
    let info = info(&mut d).await;
    let dict = info.as_dictionary().expect("dict");
    for key in [
        "ActivationInfoXML",
        "FairPlayCertChain",
        "FairPlaySignature",
        "RKCertification",
        "RKSignature",
        "serverKP",
        "signActRequest",
    ] {
        assert!(
            dict.get(key).and_then(Value::as_data).is_some(),
            "{key} is data"
        );
    }
    let xml = dict
        .get("ActivationInfoXML")
        .and_then(Value::as_data)
        .expect("xml");
    let inner = Value::from_reader_xml(xml).expect("ActivationInfoXML is an XML plist");
    let section = |name: &str| {
        inner
            .as_dictionary()
            .and_then(|d| d.get(name))
            .and_then(Value::as_dictionary)
            .cloned()
            .unwrap_or_else(|| panic!("section {name}"))
    };
    let request = section("ActivationRequestInfo");
    assert_eq!(
        request.get("ActivationState").and_then(Value::as_string),
        Some("Unactivated")
    );
    assert_eq!(
        request.get("FMiPAccountExists"),
        Some(&Value::Boolean(false))
    );
    assert!(request.get("ActivationRandomness").is_some());
    let id = section("DeviceID");
    assert_eq!(
        id.get("SerialNumber").and_then(Value::as_string),
        Some(dev.serial.as_str())
    );
    assert_eq!(
        id.get("UniqueDeviceID").and_then(Value::as_string),
        Some(dev.udid.as_str())
    );
    let device_info = section("DeviceInfo");
    for (key, expected) in [
        ("ProductType", &dev.product_type),
        ("ProductVersion", &dev.product_version),
        ("BuildVersion", &dev.build_version),
    ] {
        assert_eq!(
            device_info.get(key).and_then(Value::as_string),
            Some(expected.as_str())
        );
    }

    let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/xml"));
    assert!(answer.header("x-apple-activation-signature").is_some());
    let (body, headers) = record_of(&answer);
    hand_over(&mut d, body, headers)
        .await
        .expect("record accepted");

    assert_eq!(state(&mut d).await, "Activated");
    assert_eq!(
        value(&mut d, "ActivationState").await,
        Value::from("Activated")
    );
    assert_eq!(value(&mut d, "BrickState").await, Value::Boolean(false));
    assert_eq!(
        value(&mut d, "ActivationStateAcknowledged").await,
        Value::Boolean(false),
        "not acknowledged until the host says so"
    );
    within(d.set_value("ActivationStateAcknowledged", Value::Boolean(true)))
        .await
        .expect("SetValue");
    assert_eq!(
        value(&mut d, "ActivationStateAcknowledged").await,
        Value::Boolean(true)
    );
    assert_eq!(
        tb.bench.activation_state(&dev.udid).expect("phone"),
        ActivationState::Activated
    );
    let ready = device(&tb, |r| r.udid == dev.udid);
    assert_eq!(ready.activation_state, "Activated");

    // What the server saw.
    let log = tb.bench.albert().requests_for(&dev.udid);
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].endpoint, Some(Endpoint::DrmHandshake));
    assert_eq!(log[0].outcome, AlbertOutcome::HandshakeReply);
    assert_eq!(
        log[0].content_type.as_deref(),
        Some("application/x-apple-plist")
    );
    assert_eq!(log[1].endpoint, Some(Endpoint::DeviceActivation));
    assert_eq!(log[1].outcome, AlbertOutcome::Record);
    assert_eq!(log[1].fields, ["activation-info"]);
    assert!(log
        .iter()
        .all(|r| r.user_agent.as_deref() == Some(USER_AGENT)));

    // A restart keeps the state, as a phone keeps it across reboots.
    let udid = dev.udid.clone();
    let dir = tb.shutdown().await;
    let tb = start_in(dir, default_world(4, 31), |_| {}).await;
    assert_eq!(
        tb.bench.activation_state(&udid).expect("phone"),
        ActivationState::Activated
    );
    let mut d = driver(&tb, &udid).await;
    assert_eq!(
        value(&mut d, "ActivationState").await,
        Value::from("Activated")
    );
    assert_eq!(
        value(&mut d, "ActivationStateAcknowledged").await,
        Value::Boolean(true)
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn multipart_activation_info_is_accepted_too() {
    let tb = start(default_world(1, 32)).await;
    let dev = device(&tb, clean);
    let mut d = driver(&tb, &dev.udid).await;
    let info = info(&mut d).await;
    let answer = first_request(&mut d, &info, FormEncoding::multipart()).await;
    let (body, headers) = record_of(&answer);
    hand_over(&mut d, body, headers).await.expect("accepted");
    assert_eq!(state(&mut d).await, "Activated");
    let log = tb.bench.albert().requests_for(&dev.udid);
    assert!(log[1]
        .content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with("multipart/form-data; boundary=")));
    tb.shutdown().await;
}

/// docs/protocol.md §5.3 B: a phone before iOS 10 hands out its activation info without a
/// drmHandshake (`CreateActivationInfoRequest`, what libideviceactivation asks such a phone
/// first), signed without a `serverKP`; Albert answers a record, which
/// `HandleActivationInfoRequest` takes. From iOS 10 on the phone wants the session.
#[tokio::test]
async fn an_ios_9_phone_activates_without_a_session() {
    let ios9 = DeviceSpec {
        product_type: Some("iPhone8,1".into()),
        product_version: Some("9.3.5".into()),
        // Its TLS 1.0 is beside the point here, and this test's client speaks rustls.
        tls: Some(station_protocol::ios::TlsGeneration::Tls12),
        ..spec(Lock::None)
    };
    let tb = start(world_of(vec![ios9, spec(Lock::None)])).await;
    let old = device(&tb, |d| d.product_version == "9.3.5");
    let modern = device(&tb, |d| d.product_version != "9.3.5");

    let mut d = driver(&tb, &modern.udid).await;
    let message = refused(
        within(d.command(&Command::CreateActivationInfo))
            .await
            .expect("service"),
    );
    assert!(message.contains("Session mode is required"), "{message}");

    let mut d = driver(&tb, &old.udid).await;
    let command = Command::CreateActivationInfo;
    let value = within(d.command(&command))
        .await
        .expect("service")
        .expect("activation info");
    let info = station_protocol::mobileactivation::dictionary(&command, value).expect("dict");
    assert_eq!(
        info.get("ActivationInfoComplete"),
        Some(&Value::Boolean(true))
    );
    assert!(info.get("serverKP").is_none(), "{info:?}");
    assert!(info.get("FairPlaySignature").is_some(), "{info:?}");

    // The signature covers the info: a changed ActivationInfoXML is refused.
    let mut tampered = info.clone();
    if let Some(Value::Data(xml)) = tampered.get_mut("ActivationInfoXML") {
        xml.push(b'\n');
    }
    let answer = first_request(
        &mut d,
        &Value::Dictionary(tampered),
        FormEncoding::multipart(),
    )
    .await;
    assert_eq!(error_title(&answer), "Activation Error");

    let answer = first_request(&mut d, &Value::Dictionary(info), FormEncoding::multipart()).await;
    let (body, _headers) = record_of(&answer);
    within(d.command(&Command::HandleActivationInfo {
        record: Value::Data(body),
    }))
    .await
    .expect("service")
    .expect("record accepted");
    assert_eq!(state(&mut d).await, "Activated");
    let log = tb.bench.albert().requests_for(&old.udid);
    assert!(
        log.iter()
            .all(|r| r.endpoint != Some(Endpoint::DrmHandshake)),
        "{log:?}"
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn mdm_locked_phone_is_released_by_its_code_only() {
    let tb = start(default_world(4, 33)).await;
    let dev = device(&tb, |d| d.lock == "mdm");
    assert_eq!(dev.activation_state, "Unactivated");
    assert_eq!(dev.codes.len(), 1);
    assert_eq!(dev.stale_codes.len(), 1);
    let good = BypassCode::parse(&dev.codes[0]).expect("a valid code");
    let stale = dev.stale_codes[0].clone();
    let mut d = driver(&tb, &dev.udid).await;
    let info = info(&mut d).await;

    let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/x-buddyml"));
    // docs/protocol.md §5.6: the page's structure, as rendered.
    let text = String::from_utf8(answer.body.clone()).expect("utf8");
    for needle in [
        "<xmlui style=\"setupAssistant\">",
        "<page name=\"FMIPLockChallenge\">",
        "<script><![CDATA[",
        "function enableNext()",
        "<navigationBar title=\"Activation Lock\" hidesBackButton=\"false\" loadingTitle=\"Activating...\">",
        "<linkBarItem id=\"next\" url=\"/deviceservices/deviceActivation\" position=\"right\" label=\"Next\" enabledFunction=\"enableNext\" httpMethod=\"POST\"/>",
        "<tableView>",
        "<section>",
        "<footer>",
        "<section/>",
        "<editableTextRow id=\"login\" label=\"Apple ID\" keyboardType=\"email\"",
        "value=\"\"",
        "<editableTextRow id=\"password\" label=\"Password\" placeholder=\"Required\" secure=\"true\"/>",
        "<footer url=\"https://",
        "</page>\n  <serverInfo",
        "activation-info-base64=\"",
        "isAuthRequired=\"true\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let page = lock_page(&answer);
    assert_eq!(page.page_title.as_deref(), Some("Activation Lock"));
    let description = page.description.clone().expect("description");
    assert!(description.contains("d\u{2022}"), "{description}");
    assert_eq!(page.fields[0].id, "login");
    assert!(!page.fields[0].secure);
    assert_eq!(page.fields[0].label.as_deref(), Some("Apple ID"));
    assert_eq!(page.fields[1].id, "password");
    assert!(page.fields[1].secure);
    assert!(page.is_auth_required());
    assert!(page.hidden_field("activation-info-base64").is_some());
    assert!(page.hidden_field("challenge").is_some());
    assert_eq!(
        page.submit.as_ref().map(|s| s.url.clone()),
        Some("/deviceservices/deviceActivation".to_string())
    );

    // A wrong code, the stale one, the right one with a username: an alert alone, and the
    // exchange starts over for the next try.
    let wrong = BypassCode::from_raw(&[7; 16]).reveal();
    alert_only(&submit(&d, &page, "", &wrong).await);
    let page = lock_form_again(&mut d).await;
    alert_only(&submit(&d, &page, "", &stale).await);
    let page = lock_form_again(&mut d).await;
    alert_only(&submit(&d, &page, "someone@example.com", &good.reveal()).await);
    let page = lock_form_again(&mut d).await;
    assert_eq!(state(&mut d).await, "Unactivated");

    // The right code, lower case and without dashes: a record.
    let typed = good.reveal_compact().to_lowercase();
    let answer = submit(&d, &page, "", &typed).await;
    let (body, headers) = record_of(&answer);
    hand_over(&mut d, body, headers).await.expect("accepted");
    assert_eq!(state(&mut d).await, "Activated");

    // What the server saw: blank username, every hidden field echoed, codes masked.
    let log = tb.bench.albert().requests_for(&dev.udid);
    let activations: Vec<_> = log
        .iter()
        .filter(|r| r.endpoint == Some(Endpoint::DeviceActivation))
        .collect();
    assert_eq!(activations.len(), 8);
    for (i, r) in activations.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(r.outcome, AlbertOutcome::LockForm);
            assert_eq!(r.fields, ["activation-info"]);
            continue;
        }
        assert_eq!(r.fields[0], "activation-info-base64");
        for f in ["login", "password", "isAuthRequired", "challenge"] {
            assert!(r.fields.iter().any(|x| x == f), "{f} in {:?}", r.fields);
        }
        assert!(!r.fields.iter().any(|x| x == "activation-info"));
    }
    assert_eq!(activations[1].login.as_deref(), Some(""));
    assert_eq!(activations[1].outcome, AlbertOutcome::AuthAlert);
    assert_eq!(activations[5].login.as_deref(), Some("someone@example.com"));
    assert_eq!(
        activations[7].password.as_deref(),
        Some(good.masked().as_str())
    );
    assert_eq!(activations[7].outcome, AlbertOutcome::Record);
    let everything = format!("{:?}", tb.bench.albert().requests());
    for code in [good.reveal(), good.reveal_compact(), stale.clone(), wrong] {
        assert!(!everything.contains(&code), "a whole code in the log");
    }
    tb.shutdown().await;
}

#[tokio::test]
async fn user_locked_phone_is_never_released_by_a_code() {
    let stale = BypassCode::from_raw(&[0x42; 16]).reveal();
    let tb = start(world_of(vec![DeviceSpec {
        stale_codes: Some(vec![stale.clone()]),
        ..spec(Lock::User)
    }]))
    .await;
    let dev = device(&tb, |d| d.lock == "user");
    assert!(dev.codes.is_empty());
    let mut d = driver(&tb, &dev.udid).await;
    // The alert over the form, to try again on the same page.
    tb.bench
        .albert()
        .set_wrong_credentials(WrongCredentials::AlertOverForm);
    let info = info(&mut d).await;
    let mut page = lock_page(&first_request(&mut d, &info, FormEncoding::UrlEncoded).await);
    for (user, password) in [
        ("", stale.as_str()),
        ("", "not a code"),
        ("", ""),
        ("owner@icloud.com", "hunter2"),
    ] {
        page = alert(&submit(&d, &page, user, password).await);
        assert_eq!(page.fields.len(), 2, "the form comes again");
    }
    assert_eq!(state(&mut d).await, "Unactivated");
    tb.shutdown().await;
}

#[tokio::test]
async fn mdm_lock_with_explicit_codes_from_the_world_file() {
    let a = BypassCode::from_raw(&[1; 16]);
    let b = BypassCode::from_raw(&[2; 16]);
    let tb = start(world_of(vec![DeviceSpec {
        // Any case and spacing in the file; the ready file lists them dashed.
        codes: Some(vec![a.reveal_compact().to_lowercase(), b.reveal()]),
        ..spec(Lock::Mdm)
    }]))
    .await;
    let dev = device(&tb, |d| d.lock == "mdm");
    assert_eq!(dev.codes, [a.reveal(), b.reveal()]);
    let mut d = driver(&tb, &dev.udid).await;
    let info = info(&mut d).await;
    let page = lock_page(&first_request(&mut d, &info, FormEncoding::UrlEncoded).await);
    // The second code works as well as the first.
    let answer = submit(&d, &page, "", &b.reveal()).await;
    let (body, headers) = record_of(&answer);
    hand_over(&mut d, body, headers).await.expect("accepted");
    assert_eq!(state(&mut d).await, "Activated");
    tb.shutdown().await;
}

#[tokio::test]
async fn both_activation_info_fields_get_verification_failed() {
    let tb = start(default_world(1, 34)).await;
    let dev = device(&tb, clean);
    let mut d = driver(&tb, &dev.udid).await;
    let info = info(&mut d).await;
    let mut xml = Vec::new();
    info.to_writer_xml(&mut xml).expect("xml");
    let b64 = station_protocol::activation::activation_info_base64(&info).expect("b64");
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("activation-info", &String::from_utf8(xml).expect("utf8"))
        .append_pair("activation-info-base64", &b64)
        .finish()
        .into_bytes();
    let req = HttpRequestParts {
        method: "POST",
        endpoint: Endpoint::DeviceActivation,
        headers: vec![
            ("User-Agent".into(), USER_AGENT.into()),
            (
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ],
        body,
    };
    let answer = post(&d, &req).await;
    assert_eq!(answer.status, 200);
    match answer.classify() {
        ActivationResponse::ErrorPage { title, description } => {
            assert_eq!(title.as_deref(), Some("Verification Failed"));
            assert_eq!(description.as_deref(), Some("Please retry activation."));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        answer.body.len() < 400,
        "a short page: {} bytes",
        answer.body.len()
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn resubmission_without_the_hidden_fields_is_an_error() {
    let tb = start(default_world(4, 35)).await;
    let dev = device(&tb, |d| d.lock == "mdm");
    let code = dev.codes[0].clone();
    let mut d = driver(&tb, &dev.udid).await;
    let info = info(&mut d).await;
    let page = lock_page(&first_request(&mut d, &info, FormEncoding::UrlEncoded).await);
    let sub = lock_form_submission(&page, "", &code).expect("submission");

    // Each hidden field left out in turn.
    for missing in ["challenge", "isAuthRequired", "activation-info-base64"] {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for f in sub.fields().iter().filter(|f| f.name != missing) {
            ser.append_pair(&f.name, f.value.expose());
        }
        if missing == "activation-info-base64" {
            // The info comes as activation-info instead: still not what the page asked.
            let mut xml = Vec::new();
            info.to_writer_xml(&mut xml).expect("xml");
            ser.append_pair("activation-info", &String::from_utf8(xml).expect("utf8"));
        }
        let req = HttpRequestParts {
            method: "POST",
            endpoint: Endpoint::DeviceActivation,
            headers: vec![(
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            body: ser.finish().into_bytes(),
        };
        let answer = post(&d, &req).await;
        assert_eq!(
            error_title(&answer),
            "Activation Error",
            "without {missing}"
        );
    }
    // A tampered challenge is no better.
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for f in sub.fields() {
        let v = if f.name == "challenge" {
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        } else {
            f.value.expose()
        };
        ser.append_pair(&f.name, v);
    }
    let req = HttpRequestParts {
        method: "POST",
        endpoint: Endpoint::DeviceActivation,
        headers: vec![(
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body: ser.finish().into_bytes(),
    };
    assert_eq!(error_title(&post(&d, &req).await), "Activation Error");
    assert_eq!(state(&mut d).await, "Unactivated");
    tb.shutdown().await;
}

#[tokio::test]
async fn a_record_is_accepted_only_by_its_phone_with_its_headers() {
    let tb = start(world_of(vec![spec(Lock::None), spec(Lock::None)])).await;
    let udids = tb.udids();
    let mut a = driver(&tb, &udids[0]).await;
    let mut b = driver(&tb, &udids[1]).await;
    let info_a = info(&mut a).await;
    let (body, headers) =
        record_of(&first_request(&mut a, &info_a, FormEncoding::UrlEncoded).await);
    // B has an exchange of its own going.
    let _ = info(&mut b).await;

    let msg = refused(hand_over(&mut b, body.clone(), headers.clone()).await);
    assert!(msg.contains("Invalid activation record"), "{msg}");
    assert!(msg.contains("another device"), "{msg}");
    assert_eq!(state(&mut b).await, "Unactivated");

    let msg = refused(hand_over(&mut a, body.clone(), Vec::new()).await);
    assert!(msg.contains("headers are missing"), "{msg}");
    let mut other_headers = headers.clone();
    other_headers.retain(|(n, _)| !n.eq_ignore_ascii_case("x-apple-activation-signature"));
    let msg = refused(hand_over(&mut a, body.clone(), other_headers).await);
    assert!(msg.contains("not signed"), "{msg}");
    // Re-serialised or otherwise changed bytes are not the body the server signed.
    let mut changed = body.clone();
    changed.extend_from_slice(b"\n");
    let msg = refused(hand_over(&mut a, changed, headers.clone()).await);
    assert!(msg.contains("not signed"), "{msg}");
    assert_eq!(state(&mut a).await, "Unactivated");

    // The phone reads the headers as a dictionary: names under another spelling than the
    // server's (`content-type`, as HTTP libraries hand them out) are not found.
    let lower: plist::Dictionary = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), Value::String(v.clone())))
        .collect();
    let mut request = plist::Dictionary::new();
    request.insert(
        "Command".into(),
        "HandleActivationInfoWithSessionRequest".into(),
    );
    request.insert("Value".into(), Value::Data(body.clone()));
    request.insert("ActivationResponseHeaders".into(), Value::Dictionary(lower));
    let reply = within(a.raw_command(&Value::Dictionary(request)))
        .await
        .expect("reply");
    let error = reply
        .as_dictionary()
        .and_then(|d| d.get("Error"))
        .and_then(Value::as_string)
        .expect("an Error reply");
    assert!(error.contains("no Content-Type"), "{error}");
    assert_eq!(state(&mut a).await, "Unactivated");

    // The protocol crate's command restores the canonical spelling.
    let lowered = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    hand_over(&mut a, body, lowered).await.expect("accepted");
    assert_eq!(state(&mut a).await, "Activated");
    assert_eq!(state(&mut b).await, "Unactivated");
    tb.shutdown().await;
}

#[tokio::test]
async fn handshake_replies_are_bound_to_the_phone_and_its_session() {
    let tb = start(world_of(vec![spec(Lock::None), spec(Lock::None)])).await;
    let udids = tb.udids();
    let mut a = driver(&tb, &udids[0]).await;
    let mut b = driver(&tb, &udids[1]).await;

    // No session yet.
    let msg = refused(
        within(a.command(&Command::CreateTunnel1ActivationInfo {
            handshake_response: b"<plist/>".to_vec(),
        }))
        .await
        .expect("service"),
    );
    assert!(msg.contains("Failed to retrieve activation info."), "{msg}");
    assert!(msg.contains("Failed to establish session."), "{msg}");

    let reply_a = within(a.handshake()).await.expect("handshake");
    assert_eq!(reply_a.status, 200);
    assert!(matches!(
        reply_a.classify(),
        ActivationResponse::HandshakeReply { .. }
    ));
    let _ = within(b.handshake()).await.expect("handshake");
    let msg = refused(
        within(b.command(&Command::CreateTunnel1ActivationInfo {
            handshake_response: reply_a.body.clone(),
        }))
        .await
        .expect("service"),
    );
    assert!(msg.contains("Invalid session response"), "{msg}");

    // A newer session on A makes the older reply stale.
    let _ = within(a.handshake()).await.expect("handshake");
    let msg = refused(
        within(a.command(&Command::CreateTunnel1ActivationInfo {
            handshake_response: reply_a.body.clone(),
        }))
        .await
        .expect("service"),
    );
    assert!(msg.contains("Invalid session response"), "{msg}");

    // Garbled handshakes never get a reply.
    for (ct, body) in [
        ("application/x-apple-plist", b"garbage".to_vec()),
        (
            "application/x-apple-plist",
            b"<plist><dict><key>UniqueDeviceID</key><string>x</string></dict></plist>".to_vec(),
        ),
        ("text/plain", reply_a.body.clone()),
    ] {
        let req = HttpRequestParts {
            method: "POST",
            endpoint: Endpoint::DrmHandshake,
            headers: vec![("Content-Type".into(), ct.into())],
            body,
        };
        let answer = post(&a, &req).await;
        assert!(
            answer.status == 400 || answer.status == 415,
            "{}",
            answer.status
        );
    }

    // Activation info that was not built on a completed handshake (tampered XML).
    let mut info = info(&mut a).await;
    if let Some(Value::Data(xml)) = info
        .as_dictionary_mut()
        .and_then(|d| d.get_mut("ActivationInfoXML"))
    {
        let text = String::from_utf8(xml.clone()).expect("utf8");
        *xml = text.replace("Unactivated", "Activated").into_bytes();
    }
    let answer = first_request(&mut a, &info, FormEncoding::UrlEncoded).await;
    assert_eq!(error_title(&answer), "Activation Error");
    tb.shutdown().await;
}

#[tokio::test]
async fn injected_failures_and_latency() {
    let mut w = world_of(vec![spec(Lock::None)]);
    w.activation_server.device_activation.fail_next = 1;
    w.activation_server.failure_status = Some(502);
    let tb = start(w).await;
    let udid = tb.udids()[0].clone();
    let albert = tb.bench.albert().clone();
    let mut d = driver(&tb, &udid).await;

    // Two 503s, then the handshake goes through.
    albert.set_failure_status(503);
    albert.set_failures(Endpoint::DrmHandshake, 2);
    for _ in 0..2 {
        let answer = within(d.handshake()).await.expect("answer");
        assert_eq!(answer.status, 503);
        assert_eq!(
            answer.classify(),
            ActivationResponse::ServerError { status: 503 }
        );
    }
    let info = info(&mut d).await;

    // The world file's one failure (its status was 502, now 503), then "always".
    let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
    assert_eq!(answer.status, 503);
    albert.set_fail_always(Endpoint::DeviceActivation, true);
    for _ in 0..3 {
        let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
        assert_eq!(answer.status, 503);
    }
    albert.set_fail_rate(Endpoint::DeviceActivation, 1.0);
    albert.set_fail_always(Endpoint::DeviceActivation, false);
    let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
    assert_eq!(answer.status, 503, "rate 1.0 always fails");
    albert.clear_failures();

    albert.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    albert.set_latency(Duration::ZERO);
    let (body, headers) = record_of(&answer);
    hand_over(&mut d, body, headers).await.expect("accepted");

    let injected = albert
        .requests()
        .iter()
        .filter(|r| r.outcome == AlbertOutcome::InjectedFailure)
        .count();
    assert_eq!(injected, 2 + 1 + 3 + 1);
    tb.shutdown().await;
}

#[tokio::test]
async fn world_file_failure_status_applies() {
    let mut w = world_of(vec![spec(Lock::None)]);
    w.activation_server.drm_handshake.fail_always = true;
    w.activation_server.failure_status = Some(500);
    let tb = start(w).await;
    let udid = tb.udids()[0].clone();
    let mut d = driver(&tb, &udid).await;
    let answer = within(d.handshake()).await.expect("answer");
    assert_eq!(answer.status, 500);
    tb.shutdown().await;
}

#[tokio::test]
async fn an_activated_phone_gets_no_new_record() {
    let tb = start(default_world(4, 36)).await;
    let dev = device(&tb, |d| {
        d.activation_state == "Activated" && d.trust_delay_ms == 0
    });
    let mut d = driver(&tb, &dev.udid).await;
    assert_eq!(state(&mut d).await, "Activated");
    let info = info(&mut d).await;
    let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
    assert_eq!(error_title(&answer), "Device Unknown");
    assert!(!tb
        .bench
        .albert()
        .requests()
        .iter()
        .any(|r| r.outcome == AlbertOutcome::Record));
    assert_eq!(state(&mut d).await, "Activated");
    tb.shutdown().await;
}

#[tokio::test]
async fn an_unplugged_phone_never_takes_the_record_of_its_exchange() {
    let tb = start(world_of(vec![spec(Lock::None)])).await;
    let udid = tb.udids()[0].clone();
    let mut d = driver(&tb, &udid).await;
    let info = info(&mut d).await;
    // A service started before the cable is pulled.
    let started = within(
        d.lockdown()
            .start_service(station_protocol::mobileactivation::SERVICE, None),
    )
    .await
    .expect("StartService");
    let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
    let (body, headers) = record_of(&answer);

    tb.bench.unplug(&udid).expect("unplug");
    assert!(
        within(d.hand_over(body.clone(), headers.clone()))
            .await
            .is_err(),
        "the old connection and DeviceID are gone"
    );

    let new_id = tb.bench.plug(&udid).expect("plug");
    assert_eq!(
        connect(&tb.socket, new_id, started.port).await.err(),
        Some(3),
        "ports opened before the unplug are closed"
    );
    let mut again = driver(&tb, &udid).await;
    let msg = refused(hand_over(&mut again, body, headers).await);
    assert!(msg.contains("does not answer"), "{msg}");
    assert_eq!(state(&mut again).await, "Unactivated");
    tb.shutdown().await;
}

#[tokio::test]
async fn legacy_activate_and_deactivate() {
    let tb = start(world_of(vec![spec(Lock::None)])).await;
    let udid = tb.udids()[0].clone();
    let mut d = driver(&tb, &udid).await;
    let info = info(&mut d).await;
    let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
    let record = match answer.classify() {
        ActivationResponse::Record { record, .. } => record,
        other => panic!("{other:?}"),
    };

    let err = within(d.lockdown().activate(Value::from("garbage")))
        .await
        .expect_err("refused");
    assert_eq!(
        err.kind(),
        Some(&LockdownErrorKind::InvalidActivationRecord)
    );
    within(d.lockdown().activate(Value::Dictionary(record)))
        .await
        .expect("Activate");
    assert_eq!(state(&mut d).await, "Activated");

    // mobileactivationd's DeactivateRequest: back to the activation screen.
    within(d.command(&Command::Deactivate))
        .await
        .expect("service")
        .expect("deactivated");
    assert_eq!(state(&mut d).await, "Unactivated");
    assert_eq!(
        value(&mut d, "ActivationState").await,
        Value::from("Unactivated")
    );

    // Without a session, lockdown refuses.
    let mut plain = lockdown(&tb, &udid).await;
    let r = call(
        &mut plain,
        "Activate",
        vec![("ActivationRecord", Value::Dictionary(Default::default()))],
    )
    .await;
    assert_eq!(error_of(&r), Some("SessionInactive"));
    tb.shutdown().await;
}

/// The status line and headers of one raw HTTP/1.1 exchange, as sent.
async fn raw_http_head(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn http_limits_and_routes() {
    let tb = start(default_world(1, 37)).await;
    let albert = tb.bench.albert().clone();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .expect("client");
    let status = |r: reqwest::Response| r.status().as_u16();

    let big = vec![b'a'; station_sim::activation::albert::MAX_BODY + 1];
    let r = within(
        client
            .post(albert.endpoint_url(Endpoint::DeviceActivation))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(big)
            .send(),
    )
    .await
    .expect("answer");
    assert_eq!(status(r), 413);
    let r = within(
        client
            .get(albert.endpoint_url(Endpoint::DrmHandshake))
            .send(),
    )
    .await
    .expect("answer");
    assert_eq!(status(r), 405);
    let r = within(client.post(format!("{}/other", albert.url())).send())
        .await
        .expect("answer");
    assert_eq!(status(r), 404);
    let r = within(
        client
            .post(albert.endpoint_url(Endpoint::DeviceActivation))
            .header("Content-Type", "text/plain")
            .body("x")
            .send(),
    )
    .await
    .expect("answer");
    assert_eq!(status(r), 400);

    // On the wire: HTTP/1.1 with Albert's header set under its spelling (docs/protocol.md §5.6).
    let head = within(raw_http_head(
        albert.addr(),
        "GET /deviceservices/drmHandshake HTTP/1.1\r\nHost: albert\r\nConnection: close\r\n\r\n",
    ))
    .await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    for line in [
        "Cache-Control: private, no-cache, no-store, must-revalidate, max-age=0",
        "Content-Type: text/plain",
        "Server: Apple",
        "X-Content-Type-Options: nosniff",
        "X-Frame-Options: SAMEORIGIN",
        "X-Xss-Protection: 1; mode=block",
    ] {
        assert!(
            head.contains(&format!("\r\n{line}")),
            "{line} missing:\n{head}"
        );
    }
    for name in [
        "Connection",
        "Content-Length",
        "Date",
        "Strict-Transport-Security",
        "X-Client-Request-Id",
    ] {
        assert!(
            head.contains(&format!("\r\n{name}: ")),
            "{name} missing:\n{head}"
        );
    }

    let headers = vec![("Content-Type".to_string(), "text/plain".to_string())];
    assert!(matches!(
        classify_response(404, &headers, b""),
        ActivationResponse::Unknown { .. }
    ));
    tb.shutdown().await;
}

#[tokio::test]
async fn ready_info_describes_the_activation_side() {
    let tb = start(default_world(5, 38)).await;
    let ready = tb.bench.ready_info();
    assert!(
        ready.activation_url.starts_with("http://127.0.0.1:")
            && ready.activation_url.ends_with("/deviceservices"),
        "{}",
        ready.activation_url
    );
    assert_eq!(ready.activation_url, tb.bench.activation_url());
    assert_eq!(
        format!("{}/deviceActivation", ready.activation_url),
        tb.bench.albert().endpoint_url(Endpoint::DeviceActivation)
    );
    let locks: Vec<&str> = ready.devices.iter().map(|d| d.lock.as_str()).collect();
    assert_eq!(locks, ["none", "none", "mdm", "user", "none"]);
    let states: Vec<&str> = ready
        .devices
        .iter()
        .map(|d| d.activation_state.as_str())
        .collect();
    assert_eq!(
        states,
        [
            "Unactivated",
            "Activated",
            "Unactivated",
            "Unactivated",
            "Activated"
        ]
    );
    let mdm = &ready.devices[2];
    for code in mdm.codes.iter().chain(&mdm.stale_codes) {
        assert_eq!(code.len(), 31);
        assert!(BypassCode::parse(code).is_ok());
    }
    let json = ready.to_json();
    assert!(json.contains("\"activation_url\""));
    assert!(json.contains("\"lock\": \"mdm\""));
    assert!(json.contains(&mdm.codes[0]));
    assert!(json.contains("\"stale_codes\""));
    tb.shutdown().await;
}

#[tokio::test]
async fn a_page_of_hidden_fields_and_a_record_with_its_ack() {
    let mut w = world_of(vec![spec(Lock::None)]);
    w.activation_server.continue_page = true;
    w.activation_server.record_ack = true;
    let tb = start(w).await;
    let udid = tb.udids()[0].clone();
    let mut d = driver(&tb, &udid).await;
    let info = info(&mut d).await;
    let answer = first_request(&mut d, &info, FormEncoding::UrlEncoded).await;
    let page = match answer.classify() {
        ActivationResponse::ContinueForm(page) => page,
        other => panic!("expected a page of hidden fields, got {other:?}"),
    };
    assert!(page.fields.is_empty());
    // Posted back as it is: the record, which also says ack-received.
    let sub = continue_form_submission(&page);
    let answer = post(
        &d,
        &sub.to_request(FormEncoding::UrlEncoded).expect("request"),
    )
    .await;
    let (body, headers) = match answer.classify() {
        ActivationResponse::Record {
            raw_body,
            headers,
            acknowledged,
            ..
        } => {
            assert!(acknowledged, "record_ack");
            (raw_body, headers)
        }
        other => panic!("expected a record, got {other:?}"),
    };
    hand_over(&mut d, body, headers).await.expect("applied");
    assert_eq!(state(&mut d).await, "Activated");
    let outcomes: Vec<AlbertOutcome> = tb
        .bench
        .albert()
        .requests_for(&udid)
        .into_iter()
        .filter(|r| r.endpoint == Some(Endpoint::DeviceActivation))
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [AlbertOutcome::ContinuePage, AlbertOutcome::Record]
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn slow_commands_keep_their_connection_and_sessions_can_expire() {
    let tb = start(world_of(vec![
        DeviceSpec {
            activation_info_delay_ms: Some(1500),
            handle_record_delay_ms: Some(800),
            ..spec(Lock::None)
        },
        DeviceSpec {
            activation_session_lifetime_ms: Some(1000),
            ..spec(Lock::None)
        },
    ]))
    .await;
    let udids = tb.udids();

    // The phone answers late, on the same connection.
    let mut slow = driver(&tb, &udids[0]).await;
    let started = Instant::now();
    let info_a = info(&mut slow).await;
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let (body, headers) =
        record_of(&first_request(&mut slow, &info_a, FormEncoding::UrlEncoded).await);
    let started = Instant::now();
    hand_over(&mut slow, body, headers).await.expect("applied");
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(state(&mut slow).await, "Activated");

    // A handshake older than the session lifetime is refused.
    let mut expiring = driver(&tb, &udids[1]).await;
    let handshake = within(expiring.handshake()).await.expect("handshake");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refused = within(expiring.activation_info_from(handshake.body))
        .await
        .expect_err("session over");
    assert!(
        refused.to_string().contains("Failed to establish session."),
        "{refused}"
    );
    // A fresh one goes through.
    let _ = info(&mut expiring).await;
    tb.shutdown().await;
}
