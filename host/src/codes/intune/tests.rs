//! The Intune source against a stand-in Entra ID and Graph.

use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use station_config::SecretString;

use super::*;
use crate::codes::answer::encode_component;
use crate::codes::CodeKind;
use crate::test_server::{Reply, Request, TestServer};

const SECRET: &str = "s3cret-Value~with.ChArs";
const SERIAL: &str = "C8TJ500QF1MN";
const UDID: &str = "00008030-001A2B3C4D5E802E";
const GOOD: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
const OTHER: &str = "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86";
const THIRD: &str = "J4DNT-6VT2Y-3LD8-1VV7-AT3U-LW17";
const TENANT_PATH: &str = "/contoso.onmicrosoft.com/oauth2/v2.0/token";
const DEVICES: &str = "/v1.0/deviceManagement/managedDevices";

#[derive(Clone)]
struct FakeDevice {
    id: String,
    serial: String,
    udid: String,
    code: Option<String>,
    enrolled: String,
}

fn device(id: &str, serial: &str, udid: &str, code: Option<&str>, enrolled: &str) -> FakeDevice {
    FakeDevice {
        id: id.into(),
        serial: serial.into(),
        udid: udid.into(),
        code: code.map(str::to_string),
        enrolled: enrolled.into(),
    }
}

/// This phone's record, with its code.
fn this_phone() -> FakeDevice {
    device("dev-1", SERIAL, UDID, Some(GOOD), "2025-01-01T00:00:00Z")
}

/// A stand-in for Entra ID and Graph's managedDevices, with the faults the tests need.
#[derive(Default)]
struct Fake {
    devices: Vec<FakeDevice>,
    ignore_filter: bool,
    page_size: usize,
    token_lifetime: u64,
    issued: usize,
    valid_tokens: Vec<String>,
    /// The first Graph call finds the token expired.
    expire_first_token: bool,
    /// Answers to the next Graph calls, before the normal one.
    faults: Vec<Reply>,
    no_read_permission: bool,
    no_action_permission: bool,
    actions: Vec<String>,
}

fn graph_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        serde_json::json!({ "error": { "code": code, "message": message, "innerError": { "request-id": "1b0c4c7b-0d9a-4e8a-9f6e-0123456789ab" } } }),
    )
}

impl Fake {
    fn holding(devices: Vec<FakeDevice>) -> Fake {
        Fake {
            devices,
            ..Fake::default()
        }
    }

    fn handle(&mut self, request: &Request) -> Reply {
        if request.path() == TENANT_PATH {
            return self.token(request);
        }
        let Some(token) = request.bearer().map(str::to_string) else {
            return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.");
        };
        if !self.valid_tokens.contains(&token) {
            return graph_error(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            );
        }
        if self.expire_first_token {
            self.expire_first_token = false;
            self.valid_tokens.retain(|t| t != &token);
            return graph_error(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            );
        }
        if !self.faults.is_empty() {
            return self.faults.remove(0);
        }
        let path = request.path();
        if request.method == "POST" {
            let Some(id) = path
                .strip_prefix(&format!("{DEVICES}/"))
                .and_then(|p| p.strip_suffix("/bypassActivationLock"))
            else {
                return Reply::empty(404);
            };
            if self.no_action_permission {
                return graph_error(
                    403,
                    "Forbidden",
                    "Application is not authorized to perform this operation.",
                );
            }
            self.actions.push(id.to_string());
            return Reply::empty(204);
        }
        if self.no_read_permission {
            return graph_error(
                403,
                "Forbidden",
                "Application is not authorized to perform this operation.",
            );
        }
        if path == DEVICES {
            return self.list(request);
        }
        let id = path
            .strip_prefix(&format!("{DEVICES}/"))
            .unwrap_or_default();
        let Some(d) = self.devices.iter().find(|d| d.id == id) else {
            return graph_error(404, "ResourceNotFound", "not found");
        };
        let select = request.query("$select").unwrap_or_default();
        let mut body = serde_json::json!({ "id": d.id, "serialNumber": d.serial });
        if select.contains("udid") {
            body["udid"] = d.udid.clone().into();
        }
        body["activationLockBypassCode"] = if select.contains("activationLockBypassCode") {
            d.code.clone().into()
        } else {
            serde_json::Value::Null
        };
        Reply::json(200, body)
    }

    fn token(&mut self, request: &Request) -> Reply {
        let by_secret = request.form("client_secret").as_deref() == Some(SECRET);
        let by_assertion = request.form("client_assertion").is_some();
        if !(by_secret || by_assertion)
            || request.form("grant_type").as_deref() != Some("client_credentials")
        {
            return Reply::json(
                401,
                serde_json::json!({
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided. Trace ID: 1b0c4c7b-0d9a-4e8a-9f6e-0123456789ab",
                }),
            );
        }
        self.issued += 1;
        let token = format!("eyJ0eXAiOiJKV1Qi.token-{}.sig", self.issued);
        self.valid_tokens.push(token.clone());
        Reply::json(
            200,
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": if self.token_lifetime == 0 { 3599 } else { self.token_lifetime },
                "access_token": token,
            }),
        )
    }

    fn list(&mut self, request: &Request) -> Reply {
        let filter = request.query("$filter").unwrap_or_default();
        let wanted = filter
            .strip_prefix("serialNumber eq '")
            .and_then(|f| f.strip_suffix('\''))
            .map(|s| s.replace("''", "'"));
        let matching: Vec<&FakeDevice> = self
            .devices
            .iter()
            .filter(|d| self.ignore_filter || Some(&d.serial) == wanted.as_ref())
            .collect();
        let skip: usize = request
            .query("$skiptoken")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let size = if self.page_size == 0 {
            1000
        } else {
            self.page_size
        };
        let page: Vec<serde_json::Value> = matching
            .iter()
            .skip(skip)
            .take(size)
            // As Graph: no udid, null code in list calls.
            .map(|d| serde_json::json!({ "id": d.id, "serialNumber": d.serial, "enrolledDateTime": d.enrolled, "activationLockBypassCode": null }))
            .collect();
        let mut body = serde_json::json!({ "value": page });
        if skip + size < matching.len() {
            let host = request.header("host").unwrap_or_default();
            body["@odata.nextLink"] = format!(
                "http://{host}{DEVICES}?$filter={}&$skiptoken={}",
                encode_component(&filter),
                skip + size
            )
            .into();
        }
        Reply::json(200, body)
    }
}

struct Setup {
    server: TestServer,
    fake: Arc<Mutex<Fake>>,
}

async fn setup(fake: Fake) -> Setup {
    let fake = Arc::new(Mutex::new(fake));
    let handler_fake = fake.clone();
    let server = TestServer::start(move |r| handler_fake.lock().expect("fake").handle(r)).await;
    Setup { server, fake }
}

impl Setup {
    fn settings(&self) -> IntuneSettings {
        IntuneSettings {
            name: "contoso".into(),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            credential: Credential::Secret(SecretString::new(SECRET)),
            token_url: format!("{}{TENANT_PATH}", self.server.url),
            graph_root: self.server.url.clone(),
            scope: "https://graph.microsoft.com/.default".into(),
            max_requests_per_second: 1000.0,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                attempts: 4,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(40),
            },
            bypass_action: None,
        }
    }

    fn client(&self) -> Intune {
        Intune::new(self.settings()).expect("client")
    }

    fn graph_requests(&self) -> Vec<Request> {
        self.server.requests_to(DEVICES)
    }

    fn token_requests(&self) -> usize {
        self.server.requests_to(TENANT_PATH).len()
    }
}

fn revealed(lookup: &Lookup) -> Vec<String> {
    lookup.codes.iter().map(|c| c.code.reveal()).collect()
}

#[tokio::test]
async fn a_single_record() {
    let s = setup(Fake {
        devices: vec![
            this_phone(),
            device(
                "dev-2",
                "F2LXXXXXXXXX",
                "other",
                Some(OTHER),
                "2025-01-01T00:00:00Z",
            ),
        ],
        ..Fake::default()
    })
    .await;
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert!(lookup.known);
    assert_eq!(revealed(&lookup), vec![GOOD]);
    assert_eq!(lookup.codes[0].kind, CodeKind::Device);
    assert_eq!(lookup.codes[0].source, "contoso");

    let requests = s.graph_requests();
    assert_eq!(requests.len(), 2, "one list, one GET");
    assert_eq!(
        requests[0].query("$filter").as_deref(),
        Some("serialNumber eq 'C8TJ500QF1MN'")
    );
    assert!(!requests[0]
        .query("$select")
        .unwrap_or_default()
        .contains("activationLockBypassCode"));
    assert_eq!(requests[1].path(), format!("{DEVICES}/dev-1"));
    assert_eq!(
        requests[1].query("$select").as_deref(),
        Some("id,serialNumber,udid,activationLockBypassCode")
    );
    let token = s.server.requests_to(TENANT_PATH);
    assert_eq!(token.len(), 1);
    assert_eq!(
        token[0].form("scope").as_deref(),
        Some("https://graph.microsoft.com/.default")
    );
    assert_eq!(
        token[0].form("client_id").as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
}

#[tokio::test]
async fn two_records_for_one_serial_this_udid_first() {
    let s = setup(Fake {
        devices: vec![
            // Newer enrolment of another phone with the same serial (stale record) first.
            device(
                "old-phone",
                SERIAL,
                "00008030-0000000000000BBB",
                Some(OTHER),
                "2025-06-01T00:00:00Z",
            ),
            device(
                "no-code",
                SERIAL,
                "00008030-0000000000000CCC",
                None,
                "2025-07-01T00:00:00Z",
            ),
            device(
                "this-phone",
                SERIAL,
                UDID,
                Some(GOOD),
                "2024-01-01T00:00:00Z",
            ),
        ],
        ..Fake::default()
    })
    .await;
    let client = s.client();
    let lookup = client
        .fetch(SERIAL, &UDID.to_lowercase())
        .await
        .expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD, OTHER]);
    let records = client.records(SERIAL, UDID).await.expect("records");
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["this-phone", "no-code", "old-phone"]);
    assert_eq!(records[1].code, None);
}

#[tokio::test]
async fn a_record_without_code_is_known_and_an_unknown_serial_is_not() {
    let s = setup(Fake {
        devices: vec![device("dev-1", SERIAL, UDID, None, "2025-01-01T00:00:00Z")],
        ..Fake::default()
    })
    .await;
    let client = s.client();
    let lookup = client.fetch(SERIAL, UDID).await.expect("lookup");
    assert!(lookup.known && lookup.codes.is_empty());
    let lookup = client.fetch("F2LNOTKNOWN1", UDID).await.expect("lookup");
    assert_eq!(lookup, Lookup::default());
    // The unmatched filter cost one list call and no GET.
    assert_eq!(s.graph_requests().len(), 3);
}

#[tokio::test]
async fn a_graph_that_ignores_the_filter_is_checked_client_side() {
    let mut devices: Vec<FakeDevice> = (0..6)
        .map(|i| {
            device(
                &format!("other-{i}"),
                &format!("F2L00000000{i}"),
                "x",
                Some(OTHER),
                "2025-01-01T00:00:00Z",
            )
        })
        .collect();
    devices.push(device(
        "dev-1",
        &SERIAL.to_lowercase(),
        UDID,
        Some(GOOD),
        "2025-01-01T00:00:00Z",
    ));
    let s = setup(Fake {
        devices,
        ignore_filter: true,
        ..Fake::default()
    })
    .await;
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    let gets: Vec<String> = s
        .graph_requests()
        .iter()
        .skip(1)
        .map(|r| r.path().to_string())
        .collect();
    assert_eq!(gets, vec![format!("{DEVICES}/dev-1")]);
}

#[tokio::test]
async fn pages_are_followed() {
    let devices = vec![
        device("a", SERIAL, "x", Some(OTHER), "2025-01-01T00:00:00Z"),
        device(
            "b",
            "F2L000000001",
            "y",
            Some(THIRD),
            "2025-01-01T00:00:00Z",
        ),
        device("c", "F2L000000002", "y", None, "2025-01-01T00:00:00Z"),
        device("d", SERIAL, UDID, Some(GOOD), "2025-01-01T00:00:00Z"),
        device("e", SERIAL, "z", Some(THIRD), "2026-01-01T00:00:00Z"),
    ];
    let s = setup(Fake {
        devices,
        ignore_filter: true,
        page_size: 2,
        ..Fake::default()
    })
    .await;
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD, THIRD, OTHER]);
    let lists = s
        .graph_requests()
        .iter()
        .filter(|r| r.path() == DEVICES)
        .count();
    assert_eq!(lists, 3);
}

#[tokio::test]
async fn a_next_link_to_another_host_is_not_followed() {
    let s = setup(Fake::default()).await;
    s.fake.lock().expect("fake").faults.push(Reply::json(
        200,
        serde_json::json!({ "value": [], "@odata.nextLink": "https://evil.example/v1.0/x" }),
    ));
    let err = s
        .client()
        .fetch(SERIAL, UDID)
        .await
        .expect_err("foreign link");
    assert!(matches!(err, IntuneError::ForeignLink { .. }), "{err}");
}

#[tokio::test]
async fn throttling_waits_for_retry_after() {
    let s = setup(Fake::holding(vec![this_phone()])).await;
    s.fake.lock().expect("fake").faults.push(
        graph_error(429, "TooManyRequests", "Too many requests").with_header("Retry-After", "1"),
    );
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    let requests = s.graph_requests();
    assert_eq!(requests.len(), 3, "429, list again, GET");
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(
        gap >= Duration::from_millis(990),
        "asked again after {gap:?}"
    );
}

#[tokio::test]
async fn throttling_past_the_attempts_is_reported() {
    let s = setup(Fake::default()).await;
    for _ in 0..4 {
        s.fake.lock().expect("fake").faults.push(
            graph_error(429, "TooManyRequests", "Too many requests")
                .with_header("Retry-After", "0"),
        );
    }
    let err = s.client().fetch(SERIAL, UDID).await.expect_err("throttled");
    assert!(matches!(err, IntuneError::Throttled { .. }), "{err}");
    assert!(err.to_string().contains("max_requests_per_second"), "{err}");
}

#[tokio::test]
async fn server_errors_then_success() {
    let s = setup(Fake::holding(vec![this_phone()])).await;
    {
        let mut fake = s.fake.lock().expect("fake");
        fake.faults
            .push(graph_error(503, "ServiceUnavailable", "busy"));
        fake.faults.push(Reply::empty(502));
    }
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    assert_eq!(s.graph_requests().len(), 4);
}

#[tokio::test]
async fn the_token_is_cached_and_renewed_when_graph_finds_it_expired() {
    let s = setup(Fake {
        devices: vec![this_phone()],
        expire_first_token: true,
        ..Fake::default()
    })
    .await;
    let client = s.client();
    let lookup = client.fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    assert_eq!(s.token_requests(), 2, "renewed once after the 401");
    client.fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(s.token_requests(), 2, "cached");
    let tokens: Vec<String> = s
        .graph_requests()
        .iter()
        .filter_map(|r| r.bearer().map(str::to_string))
        .collect();
    assert!(tokens[0].contains("token-1") && tokens[1..].iter().all(|t| t.contains("token-2")));
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires() {
    let s = setup(Fake {
        token_lifetime: 1,
        ..Fake::default()
    })
    .await;
    let client = s.client();
    client.fetch(SERIAL, UDID).await.expect("lookup");
    client.fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(s.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(s.token_requests(), 2);
}

#[tokio::test]
async fn a_bad_secret_is_named_without_the_secret() {
    let s = setup(Fake::default()).await;
    let mut settings = s.settings();
    settings.credential = Credential::Secret(SecretString::new("wrong-secret-123456789"));
    let err = Intune::new(settings)
        .expect("client")
        .fetch(SERIAL, UDID)
        .await
        .expect_err("bad secret");
    let text = err.to_string();
    assert!(
        matches!(err, IntuneError::TokenRefused { status: 401, .. }),
        "{text}"
    );
    assert!(
        text.contains("invalid_client") && text.contains("AADSTS7000215"),
        "{text}"
    );
    assert!(text.contains("client secret or certificate"), "{text}");
    assert!(
        !text.contains("wrong-secret") && !text.contains("1b0c4c7b"),
        "{text}"
    );
    assert!(s.graph_requests().is_empty());
}

#[tokio::test]
async fn a_missing_permission_is_named() {
    let s = setup(Fake {
        no_read_permission: true,
        ..Fake::default()
    })
    .await;
    let err = s.client().fetch(SERIAL, UDID).await.expect_err("forbidden");
    let text = err.to_string();
    assert!(text.contains(READ_PERMISSION), "{text}");
    assert!(text.contains("HTTP 403 Forbidden"), "{text}");
    assert!(!text.contains("1b0c4c7b"), "{text}");
}

#[tokio::test]
async fn the_remote_action_targets_this_phones_record() {
    let s = setup(Fake {
        devices: vec![
            device(
                "old-phone",
                SERIAL,
                "00008030-0000000000000BBB",
                None,
                "2025-06-01T00:00:00Z",
            ),
            device("this-phone", SERIAL, UDID, None, "2024-01-01T00:00:00Z"),
        ],
        ..Fake::default()
    })
    .await;
    let client = s.client();
    assert_eq!(
        client
            .bypass_activation_lock(SERIAL, UDID)
            .await
            .expect("action")
            .as_deref(),
        Some("this-phone")
    );
    assert_eq!(s.fake.lock().expect("fake").actions, vec!["this-phone"]);
    assert_eq!(
        client
            .bypass_activation_lock("F2LNOTKNOWN1", UDID)
            .await
            .expect("none"),
        None
    );

    s.fake.lock().expect("fake").no_action_permission = true;
    let err = client
        .bypass_activation_lock(SERIAL, UDID)
        .await
        .expect_err("forbidden");
    assert!(err.to_string().contains(ACTION_PERMISSION), "{err}");
}

#[tokio::test]
async fn requests_are_rate_limited() {
    let devices = (0..15)
        .map(|i| device(&format!("d{i}"), SERIAL, "x", None, "2025-01-01T00:00:00Z"))
        .collect();
    let s = setup(Fake {
        devices,
        ..Fake::default()
    })
    .await;
    let mut settings = s.settings();
    settings.max_requests_per_second = 10.0;
    let started = StdInstant::now();
    Intune::new(settings)
        .expect("client")
        .fetch(SERIAL, UDID)
        .await
        .expect("lookup");
    // 17 requests, 10 at once, then 10 a second.
    assert!(
        started.elapsed() >= Duration::from_millis(650),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn quotes_in_a_serial_are_escaped() {
    let s = setup(Fake {
        devices: vec![device(
            "q",
            "AB'CD0000",
            UDID,
            Some(GOOD),
            "2025-01-01T00:00:00Z",
        )],
        ..Fake::default()
    })
    .await;
    let lookup = s.client().fetch("AB'CD0000", UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    assert_eq!(
        s.graph_requests()[0].query("$filter").as_deref(),
        Some("serialNumber eq 'AB''CD0000'")
    );
}

#[tokio::test]
async fn a_certificate_signs_an_rs256_assertion() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
    let cert = rcgen::CertificateParams::new(vec!["station".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let certificate = Certificate::from_pem(&cert.pem(), &key.serialize_pem()).expect("credential");
    let thumbprint =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.der());
    assert_eq!(
        certificate.x5t(),
        URL_SAFE_NO_PAD.encode(thumbprint.as_ref())
    );
    assert!(!format!("{certificate:?}").contains("PRIVATE"));
    let public_key = certificate.public_key();

    let s = setup(Fake::holding(vec![this_phone()])).await;
    let mut settings = s.settings();
    settings.credential = Credential::Certificate(certificate);
    let token_url = settings.token_url.clone();
    let lookup = Intune::new(settings)
        .expect("client")
        .fetch(SERIAL, UDID)
        .await
        .expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);

    let request = &s.server.requests_to(TENANT_PATH)[0];
    assert_eq!(request.form("client_secret"), None);
    assert_eq!(
        request.form("client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    let jwt = request.form("client_assertion").expect("assertion");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("json")
    };
    let header = decode(parts[0]);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(thumbprint.as_ref()));
    let claims = decode(parts[1]);
    assert_eq!(claims["aud"], token_url.as_str());
    assert_eq!(claims["iss"], "11111111-2222-3333-4444-555555555555");
    assert_eq!(claims["sub"], claims["iss"]);
    assert_eq!(claims["jti"].as_str().map(str::len), Some(32));
    let (nbf, exp) = (
        claims["nbf"].as_u64().expect("nbf"),
        claims["exp"].as_u64().expect("exp"),
    );
    assert!(exp > nbf);
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
    .expect("signature verifies");
}

#[test]
fn unusable_key_files_are_refused_without_their_contents() {
    let err = Certificate::from_pem(
        "nothing",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect_err("no cert");
    assert!(err.to_string().contains("CERTIFICATE"), "{err}");
}
