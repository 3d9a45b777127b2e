//! The stand-in MDM services: Entra token endpoint, Graph `managedDevices`, Kandji, the
//! `bypassActivationLock` action wired to the stand-in Albert, and the station configuration
//! the bench writes. Driven with a plain HTTP client, as the station's sources will be.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::flow::Driver;
use common::*;
use serde_json::{json, Value};
use station_protocol::activation::{ActivationResponse, FormEncoding};
use station_protocol::bypass_code::BypassCode;
use station_sim::{
    default_world, DeviceSpec, EnrollmentSpec, Lock, Mdm, MdmOutcome, MdmService, ReadyDevice,
    World,
};

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const READ: &str = "DeviceManagementManagedDevices.Read.All";
const PRIVILEGED: &str = "DeviceManagementManagedDevices.PrivilegedOperations.All";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `default_world(10, …)` kinds (docs/world.md): index → what its MDMs hold.
const STALE_AND_GOOD: usize = 2;
const USER_LOCKED: usize = 3;
const KANDJI_ONLY: usize = 5;
const SINGLE_RECORD: usize = 6;
const NO_CODE: usize = 7;
const CLEAN_ENROLLED: usize = 8;
const INTUNE_AND_KANDJI: usize = 9;

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .expect("HTTP client")
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = within(req.send()).await.expect("HTTP answer");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = within(resp.bytes()).await.expect("body");
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("a JSON body")
    };
    Reply {
        status,
        headers,
        json,
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

async fn token_request(tb: &TestBench, pairs: &[(&str, &str)]) -> Reply {
    let url = tb.bench.graph().token_url();
    send(
        client()
            .post(url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(pairs)),
    )
    .await
}

async fn token_with_secret(tb: &TestBench, secret: &str) -> Reply {
    let g = tb.bench.graph();
    let client_id = g.client_id().to_string();
    let scope = g.scope().to_string();
    token_request(
        tb,
        &[
            ("client_id", &client_id),
            ("scope", &scope),
            ("client_secret", secret),
            ("grant_type", "client_credentials"),
        ],
    )
    .await
}

async fn token(tb: &TestBench) -> String {
    let secret = tb.bench.graph().client_secret();
    let r = token_with_secret(tb, &secret).await;
    assert_eq!(r.status, 200, "{}", r.json);
    r.json["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

fn devices_url(tb: &TestBench, query: &[(&str, &str)]) -> String {
    let base = format!(
        "{}/v1.0/deviceManagement/managedDevices",
        tb.bench.graph().url()
    );
    if query.is_empty() {
        base
    } else {
        format!("{base}?{}", form(query))
    }
}

async fn graph_get(url: &str, token: &str) -> Reply {
    send(client().get(url).bearer_auth(token)).await
}

/// A bodyless POST as Graph wants it: `Content-Length: 0` (docs/mdm.md §1.3).
async fn graph_post(url: &str, token: &str) -> Reply {
    send(
        client()
            .post(url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_LENGTH, "0"),
    )
    .await
}

/// The status line, headers and body of one raw HTTP/1.1 exchange, sent exactly as given.
async fn raw_http(url: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let addr = addr.split('/').next().unwrap_or(addr);
    let mut stream = within(tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    within(stream.write_all(request.as_bytes()))
        .await
        .expect("request");
    let mut raw = Vec::new();
    within(stream.read_to_end(&mut raw)).await.expect("answer");
    String::from_utf8_lossy(&raw).into_owned()
}

/// Intune's nested error: `error.message` holds a JSON document whose `Message` ends in the
/// support identifiers (docs/mdm.md §1.8). Returns that `Message`.
fn nested_message(reply: &Reply) -> String {
    let outer = reply.json["error"]["message"].as_str().expect("message");
    let inner: Value = serde_json::from_str(outer).expect("a JSON document in error.message");
    assert_eq!(inner["_version"], 3, "{inner}");
    let message = inner["Message"].as_str().expect("Message").to_string();
    assert!(
        message.contains(" - Operation ID (for customer support): ")
            && message.contains(" - Url: "),
        "{message}"
    );
    message
}

/// Every record of a listing, following `@odata.nextLink`; returns the records and pages.
async fn list_all(first: &str, token: &str) -> (Vec<Value>, usize) {
    let mut url = first.to_string();
    let mut records = Vec::new();
    let mut pages = 0;
    loop {
        let r = graph_get(&url, token).await;
        assert_eq!(r.status, 200, "{}", r.json);
        pages += 1;
        records.extend(r.json["value"].as_array().expect("value").iter().cloned());
        match r.json["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => return (records, pages),
        }
        assert!(pages < 100, "paging never ends");
    }
}

fn device(tb: &TestBench, index: usize) -> ReadyDevice {
    tb.bench.ready_info().devices[index].clone()
}

fn intune_ids(d: &ReadyDevice) -> Vec<String> {
    d.enrollments
        .iter()
        .filter(|e| e.mdm == Mdm::Intune)
        .map(|e| e.id.clone())
        .collect()
}

#[tokio::test]
async fn token_endpoint_checks_the_client_secret() {
    let tb = start(default_world(3, 40)).await;
    let r = token_with_secret(&tb, &tb.bench.graph().client_secret()).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["token_type"], "Bearer");
    assert_eq!(r.json["expires_in"], 3599);
    assert_eq!(r.json["ext_expires_in"], 3599);
    assert!(r.json["access_token"]
        .as_str()
        .is_some_and(|t| t.len() > 20));

    let r = token_with_secret(&tb, "not-the-secret").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["error"], "invalid_client");
    let description = r.json["error_description"].as_str().expect("description");
    assert!(
        description.starts_with("AADSTS7000215: Invalid client secret provided"),
        "{description}"
    );
    assert!(!description.contains("not-the-secret"));
    assert_eq!(r.json["error_codes"], json!([7000215]));

    // The wrong scope, grant, tenant or client: Entra's 400s.
    let g = tb.bench.graph().clone();
    let secret = g.client_secret();
    let cid = g.client_id().to_string();
    for (pairs, error) in [
        (
            vec![
                ("client_id", cid.as_str()),
                ("scope", "https://graph.microsoft.us/.default"),
                ("client_secret", &secret),
                ("grant_type", "client_credentials"),
            ],
            "invalid_scope",
        ),
        (
            vec![
                ("client_id", cid.as_str()),
                ("scope", g.scope()),
                ("client_secret", &secret),
                ("grant_type", "password"),
            ],
            "unsupported_grant_type",
        ),
        (
            vec![
                ("client_id", "11111111-2222-3333-4444-555555555555"),
                ("scope", g.scope()),
                ("client_secret", &secret),
                ("grant_type", "client_credentials"),
            ],
            "unauthorized_client",
        ),
        (
            vec![("client_id", cid.as_str()), ("scope", g.scope())],
            "invalid_request",
        ),
    ] {
        let r = token_request(&tb, &pairs).await;
        assert_eq!(r.status, 400, "{pairs:?}: {}", r.json);
        assert_eq!(r.json["error"], error, "{}", r.json);
    }
    let other_tenant = format!("{}/contoso.example/oauth2/v2.0/token", g.token_url_base());
    let r = send(
        client()
            .post(other_tenant)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(&[("grant_type", "client_credentials")])),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json["error_description"]
        .as_str()
        .is_some_and(|d| d.starts_with("AADSTS90002")));

    // The log names the form's fields, never their values.
    let log = g.token_requests();
    assert_eq!(log[0].service, MdmService::Token);
    assert_eq!(
        log[0].fields,
        ["client_id", "scope", "client_secret", "grant_type"]
    );
    assert!(matches!(log[1].outcome, MdmOutcome::Unauthorized { .. }));
    assert!(!format!("{log:?}").contains(&secret));
    tb.shutdown().await;
}

/// An RSA key and its self-signed certificate, as an app registration's.
fn app_certificate() -> (aws_lc_rs::signature::RsaKeyPair, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let cert = rcgen::CertificateParams::new(vec!["station-intune".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&key.serialize_der()).expect("PKCS#8");
    (pair, cert.pem(), cert.der().to_vec())
}

fn jwt(key: &aws_lc_rs::signature::RsaKeyPair, header: &Value, claims: &Value) -> String {
    let signed = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let padding: &'static dyn aws_lc_rs::signature::RsaEncoding = match header["alg"].as_str() {
        Some("PS256") => &aws_lc_rs::signature::RSA_PSS_SHA256,
        _ => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
    };
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        padding,
        &aws_lc_rs::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut sig,
    )
    .expect("sign");
    format!("{signed}.{}", B64URL.encode(sig))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

async fn assertion_request(tb: &TestBench, assertion: &str) -> Reply {
    let g = tb.bench.graph();
    let (cid, scope) = (g.client_id().to_string(), g.scope().to_string());
    token_request(
        tb,
        &[
            ("client_id", &cid),
            ("scope", &scope),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("grant_type", "client_credentials"),
        ],
    )
    .await
}

#[tokio::test]
async fn certificate_assertions_are_verified() {
    let (key, cert_pem, cert_der) = within(tokio::task::spawn_blocking(app_certificate))
        .await
        .expect("join");
    let (other_key, _, _) = within(tokio::task::spawn_blocking(app_certificate))
        .await
        .expect("join");
    // The certificate comes from the world file, as for `station-sim serve`.
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_file = dir.path().join("app.pem");
    std::fs::write(&cert_file, &cert_pem).expect("write cert");
    let mut world = default_world(1, 41);
    world.intune.certificate_file = Some(cert_file);
    let tb = start(world).await;
    let g = tb.bench.graph().clone();
    let cid = g.client_id().to_string();
    let x5t = B64URL.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &cert_der,
    ));
    let x5t256 = B64URL.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &cert_der,
    ));
    let now = unix_now();
    let claims = |aud: &str, iss: &str, exp: u64| {
        json!({"aud": aud, "iss": iss, "sub": iss, "exp": exp, "nbf": now - 5,
               "iat": now - 5, "jti": uuid::Uuid::new_v4().to_string()})
    };
    let aud = g.token_url();
    let rs256 = json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
    let ps256 = json!({"alg": "PS256", "typ": "JWT", "x5t#S256": x5t256});

    for header in [&rs256, &ps256] {
        let r = assertion_request(&tb, &jwt(&key, header, &claims(&aud, &cid, now + 600))).await;
        assert_eq!(r.status, 200, "{header}: {}", r.json);
        assert_eq!(r.json["token_type"], "Bearer");
    }
    // Signed by another key; for another audience; expired; issued by someone else.
    let cases = [
        (
            jwt(&other_key, &rs256, &claims(&aud, &cid, now + 600)),
            700027,
        ),
        (
            jwt(
                &key,
                &rs256,
                &claims(
                    "https://login.microsoftonline.com/x/oauth2/v2.0/token",
                    &cid,
                    now + 600,
                ),
            ),
            700212,
        ),
        (jwt(&key, &rs256, &claims(&aud, &cid, now - 10)), 700024),
        (
            jwt(
                &key,
                &rs256,
                &claims(&aud, "99999999-9999-9999-9999-999999999999", now + 600),
            ),
            700021,
        ),
        (
            jwt(
                &key,
                &json!({"alg": "RS256", "x5t": B64URL.encode([1u8; 20])}),
                &claims(&aud, &cid, now + 600),
            ),
            700027,
        ),
        ("not.a.jwt".to_string(), 50027),
    ];
    for (assertion, code) in cases {
        let r = assertion_request(&tb, &assertion).await;
        assert_eq!(r.status, 401, "AADSTS{code}: {}", r.json);
        assert_eq!(r.json["error"], "invalid_client");
        assert_eq!(r.json["error_codes"], json!([code]), "{}", r.json);
    }

    // Strict mode: Entra's current form only. RS256 (and a SHA-1 `x5t`) is refused with
    // Entra's answer; PS256 with `x5t#S256` still passes.
    g.set_strict_assertions(true);
    let ps256_sha1 = json!({"alg": "PS256", "typ": "JWT", "x5t": x5t});
    for header in [&rs256, &ps256_sha1] {
        let r = assertion_request(&tb, &jwt(&key, header, &claims(&aud, &cid, now + 600))).await;
        assert_eq!(r.status, 401, "{header}: {}", r.json);
        assert_eq!(r.json["error"], "invalid_client");
        assert_eq!(r.json["error_codes"], json!([5002738]), "{}", r.json);
        assert!(r.json["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("AADSTS5002738: ")));
    }
    let r = assertion_request(&tb, &jwt(&key, &ps256, &claims(&aud, &cid, now + 600))).await;
    assert_eq!(r.status, 200, "{}", r.json);
    g.set_strict_assertions(false);

    // A certificate added at run time is accepted from then on.
    let (new_key, new_pem, _) = within(tokio::task::spawn_blocking(app_certificate))
        .await
        .expect("join");
    let unsigned = json!({"alg": "RS256", "typ": "JWT"});
    let assertion = jwt(&new_key, &unsigned, &claims(&aud, &cid, now + 600));
    assert_eq!(assertion_request(&tb, &assertion).await.status, 401);
    g.add_certificate_pem(&new_pem).expect("a certificate");
    assert_eq!(assertion_request(&tb, &assertion).await.status, 200);
    assert!(g.add_certificate_pem("no PEM here").is_err());
    tb.shutdown().await;
}

#[tokio::test]
async fn expired_tokens_are_refused_until_refreshed() {
    let mut world = default_world(7, 42);
    world.intune.token_lifetime_secs = Some(1);
    let tb = start(world).await;
    let url = devices_url(&tb, &[("$top", "1")]);
    let r = token_with_secret(&tb, &tb.bench.graph().client_secret()).await;
    assert_eq!(r.json["expires_in"], 1);
    let t = r.json["access_token"].as_str().expect("token").to_string();
    assert_eq!(graph_get(&url, &t).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = graph_get(&url, &t).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["error"]["code"], "InvalidAuthenticationToken");
    assert!(r.json["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("expired")));
    assert!(r.header("www-authenticate").is_some());
    // A fresh token works; `expire_tokens` ends it at once.
    let t = token(&tb).await;
    assert_eq!(graph_get(&url, &t).await.status, 200);
    tb.bench.graph().expire_tokens();
    assert_eq!(graph_get(&url, &t).await.status, 401);
    // No token, or one Graph never issued.
    let r = send(client().get(&url)).await;
    assert_eq!(r.status, 401);
    assert_eq!(graph_get(&url, "eyJhbGciOi.forged.token").await.status, 401);
    let log = tb.bench.graph().graph_requests();
    assert!(!log[log.len() - 2].authorization);
    tb.shutdown().await;
}

#[tokio::test]
async fn list_by_serial_honours_the_filter_and_never_shows_codes() {
    let tb = start(default_world(10, 43)).await;
    let t = token(&tb).await;
    let dev = device(&tb, SINGLE_RECORD);
    assert_eq!(dev.lock, "mdm");
    assert_eq!(intune_ids(&dev).len(), 1);
    for serial in [dev.serial.clone(), dev.serial.to_lowercase()] {
        let filter = format!("serialNumber eq '{serial}'");
        let r = graph_get(&devices_url(&tb, &[("$filter", &filter)]), &t).await;
        assert_eq!(r.status, 200, "{}", r.json);
        let value = r.json["value"].as_array().expect("value");
        assert_eq!(value.len(), 1, "{}", r.json);
        let rec = &value[0];
        assert_eq!(rec["serialNumber"], dev.serial.as_str());
        assert_eq!(rec["id"], intune_ids(&dev)[0].as_str());
        assert_eq!(rec["operatingSystem"], "iOS");
        assert_eq!(rec["isSupervised"], true);
        assert_eq!(rec["deviceName"], dev.device_name.as_str());
        assert_eq!(rec["model"], dev.marketing_name.as_str());
        assert!(rec["enrolledDateTime"].as_str().is_some());
        assert!(rec["lastSyncDateTime"].as_str().is_some());
        // Null in a list call; the UDID is `$select`-only.
        assert_eq!(rec["activationLockBypassCode"], Value::Null);
        assert_eq!(rec["udid"], Value::Null);
        assert!(r.json["@odata.nextLink"].is_null());
        assert!(r.json["@odata.context"]
            .as_str()
            .is_some_and(|c| c.ends_with("$metadata#deviceManagement/managedDevices")));
    }
    // Selecting the code in a list call does not help; selecting the UDID does.
    let filter = format!("serialNumber eq '{}'", dev.serial);
    let r = graph_get(
        &devices_url(
            &tb,
            &[
                ("$filter", &filter),
                ("$select", "id,serialNumber,activationLockBypassCode,udid"),
            ],
        ),
        &t,
    )
    .await;
    let rec = &r.json["value"][0];
    assert_eq!(rec.as_object().map(|o| o.len()), Some(4), "{rec}");
    assert_eq!(rec["activationLockBypassCode"], Value::Null);
    assert_eq!(rec["udid"], dev.udid.as_str());
    let r = graph_get(&devices_url(&tb, &[("$select", "colour")]), &t).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"]["code"], "BadRequest");

    // A serial nobody has (quotes escaped OData's way), a user-locked phone, a Kandji-only
    // phone: nothing.
    for serial in [
        "NO''SUCH".to_string(),
        device(&tb, USER_LOCKED).serial,
        device(&tb, KANDJI_ONLY).serial,
    ] {
        let filter = format!("serialNumber eq '{serial}'");
        let r = graph_get(&devices_url(&tb, &[("$filter", &filter)]), &t).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json["value"], json!([]), "{serial}");
    }
    // A filter Graph does not support is ignored: everything comes back, paged.
    let all_records: usize = tb
        .bench
        .ready_info()
        .devices
        .iter()
        .map(|d| intune_ids(d).len())
        .sum();
    let filter = format!("startswith(serialNumber,'{}')", dev.serial);
    let (records, pages) = list_all(&devices_url(&tb, &[("$filter", &filter)]), &t).await;
    assert_eq!(records.len(), all_records);
    assert!(pages > 1);
    let r = graph_get(
        &devices_url(&tb, &[("$filter", "serialNumber eq 'open")]),
        &t,
    )
    .await;
    assert_eq!(r.status, 400, "a filter that does not parse");
    tb.shutdown().await;
}

#[tokio::test]
async fn ignore_filters_mode_returns_everything_paged() {
    let tb = start(default_world(10, 44)).await;
    let t = token(&tb).await;
    let ready = tb.bench.ready_info();
    let ids: Vec<String> = ready.devices.iter().flat_map(intune_ids).collect();
    assert_eq!(ids.len(), 6, "{ids:?}");
    let dev = device(&tb, SINGLE_RECORD);
    let filter = format!("serialNumber eq '{}'", dev.serial);
    tb.bench.graph().set_ignore_filters(true);
    let first = graph_get(&devices_url(&tb, &[("$filter", &filter)]), &t).await;
    assert_eq!(
        first.json["value"].as_array().map(Vec::len),
        Some(3),
        "default page: 3"
    );
    let next = first.json["@odata.nextLink"].as_str().expect("nextLink");
    assert!(next.starts_with(&format!("{}/v1.0/", tb.bench.graph().url())));
    let (records, pages) = list_all(&devices_url(&tb, &[("$filter", &filter)]), &t).await;
    let got: Vec<&str> = records.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(pages, ids.len().div_ceil(3));
    // The host has to pick its serial out of everything.
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["serialNumber"] == dev.serial.as_str())
        .collect();
    assert_eq!(mine.len(), 1);
    // `$top` sets the page size; `$select` carries over to later pages.
    let (records, pages) = list_all(
        &devices_url(&tb, &[("$top", "2"), ("$select", "id,serialNumber")]),
        &t,
    )
    .await;
    assert_eq!(records.len(), ids.len());
    assert_eq!(pages, ids.len().div_ceil(2));
    assert!(records
        .iter()
        .all(|r| r.as_object().map(|o| o.len()) == Some(2)));
    // Back to honouring the filter.
    tb.bench.graph().set_ignore_filters(false);
    let (records, _) = list_all(&devices_url(&tb, &[("$filter", &filter)]), &t).await;
    assert_eq!(records.len(), 1);
    let r = graph_get(&devices_url(&tb, &[("$skiptoken", "garbage")]), &t).await;
    assert_eq!(r.status, 400);
    tb.shutdown().await;
}

#[tokio::test]
async fn single_get_with_select_returns_the_code() {
    let tb = start(default_world(10, 45)).await;
    let t = token(&tb).await;
    let g = tb.bench.graph().url().to_string();
    let dev = device(&tb, SINGLE_RECORD);
    let id = &intune_ids(&dev)[0];
    let url = format!("{g}/v1.0/deviceManagement/managedDevices/{id}");
    let r = graph_get(&format!("{url}?$select=activationLockBypassCode"), &t).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["activationLockBypassCode"], dev.codes[0].as_str());
    assert_eq!(dev.codes[0].len(), 31, "dashed, as Intune shows it");
    assert!(r.json["@odata.context"].as_str().is_some_and(|c| c
        .ends_with("$metadata#deviceManagement/managedDevices(activationLockBypassCode)/$entity")));
    // Without `$select` the code stays null; the beta alias and the key syntax work too.
    let r = graph_get(&url, &t).await;
    assert_eq!(r.json["activationLockBypassCode"], Value::Null);
    assert_eq!(r.json["serialNumber"], dev.serial.as_str());
    let beta = format!(
        "{g}/beta/deviceManagement/managedDevices('{id}')?$select=activationLockBypassCode,udid"
    );
    let r = graph_get(&beta, &t).await;
    assert_eq!(r.json["activationLockBypassCode"], dev.codes[0].as_str());
    assert_eq!(r.json["udid"], dev.udid.as_str());
    // A record without a code: null. An unknown id: 404.
    let none = device(&tb, NO_CODE);
    assert!(none.codes.is_empty());
    let r = graph_get(
        &format!(
            "{g}/v1.0/deviceManagement/managedDevices/{}?$select=activationLockBypassCode",
            intune_ids(&none)[0]
        ),
        &t,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["activationLockBypassCode"], Value::Null);
    let r = graph_get(
        &format!("{g}/v1.0/deviceManagement/managedDevices/00000000-0000-0000-0000-000000000000"),
        &t,
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(nested_message(&r).starts_with("Resource not found"));
    // A clean phone may be enrolled too: its code is there, harmless.
    let clean = device(&tb, CLEAN_ENROLLED);
    assert_eq!(clean.lock, "none");
    let code = clean.enrollments[0].code.clone().expect("a code");
    let r = graph_get(
        &format!(
            "{g}/v1.0/deviceManagement/managedDevices/{}?$select=activationLockBypassCode",
            intune_ids(&clean)[0]
        ),
        &t,
    )
    .await;
    assert_eq!(r.json["activationLockBypassCode"], code.as_str());
    // The request log never holds the code.
    let log = format!("{:?}", tb.bench.graph().requests());
    assert!(!log.contains(&dev.codes[0]) && !log.contains(&code));
    tb.shutdown().await;
}

#[tokio::test]
async fn a_phone_enrolled_twice_has_two_records_with_their_codes() {
    let tb = start(default_world(10, 46)).await;
    let t = token(&tb).await;
    let dev = device(&tb, STALE_AND_GOOD);
    assert_eq!((dev.codes.len(), dev.stale_codes.len()), (1, 1));
    let filter = format!("serialNumber eq '{}'", dev.serial);
    let r = graph_get(
        &devices_url(
            &tb,
            &[
                ("$filter", &filter),
                ("$select", "id,serialNumber,udid,enrolledDateTime"),
            ],
        ),
        &t,
    )
    .await;
    let records = r.json["value"].as_array().expect("value").clone();
    assert_eq!(records.len(), 2, "{}", r.json);
    // The newer record carries the UDID and the good code; the older the stale one.
    let (older, newer) = (&records[0], &records[1]);
    assert!(older["enrolledDateTime"].as_str() < newer["enrolledDateTime"].as_str());
    assert_eq!(older["udid"], Value::Null);
    assert_eq!(newer["udid"], dev.udid.as_str());
    let mut codes = Vec::new();
    for rec in &records {
        let id = rec["id"].as_str().expect("id");
        let url = format!(
            "{}/v1.0/deviceManagement/managedDevices/{id}?$select=activationLockBypassCode",
            tb.bench.graph().url()
        );
        codes.push(graph_get(&url, &t).await.json["activationLockBypassCode"].clone());
    }
    assert_eq!(
        codes,
        [
            json!(dev.stale_codes[0].as_str()),
            json!(dev.codes[0].as_str())
        ]
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn throttled_requests_get_retry_after_and_early_ones_are_refused() {
    let mut world = default_world(3, 47);
    world.intune.graph.throttle_next = 1;
    world.intune.graph.retry_after_secs = Some(1);
    let tb = start(world).await;
    let t = token(&tb).await;
    let url = devices_url(&tb, &[]);
    // From the world file: the first request is throttled.
    let r = graph_get(&url, &t).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json["error"]["code"], "TooManyRequests");
    // Coming back at once is throttled again; after the wait it goes through.
    assert_eq!(graph_get(&url, &t).await.status, 429);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(graph_get(&url, &t).await.status, 200);

    // At run time: two throttled answers in a row for a patient client.
    tb.bench.graph().clear_requests();
    tb.bench
        .graph()
        .set_throttle_next(2, Duration::from_millis(1200));
    let started = Instant::now();
    loop {
        let r = graph_get(&url, &t).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429);
        let secs: u64 = r
            .header("retry-after")
            .and_then(|s| s.parse().ok())
            .expect("Retry-After seconds");
        assert_eq!(secs, 2, "rounded up to whole seconds");
        tokio::time::sleep(Duration::from_secs(secs)).await;
        assert!(started.elapsed() < STEP);
    }
    let log = tb.bench.graph().graph_requests();
    let outcomes: Vec<&MdmOutcome> = log.iter().map(|r| &r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            &MdmOutcome::Throttled { early: false },
            &MdmOutcome::Throttled { early: false },
            &MdmOutcome::Ok
        ]
    );
    // The timestamps show the client waited the advised time before each retry.
    for pair in log.windows(2) {
        let waited = pair[1].at - pair[0].at;
        let advised = Duration::from_secs(pair[0].retry_after.expect("Retry-After"));
        assert!(waited >= advised, "{waited:?} < {advised:?}");
    }
    tb.shutdown().await;
}

#[tokio::test]
async fn injected_server_errors_then_success() {
    let tb = start(default_world(3, 48)).await;
    let t = token(&tb).await;
    let url = devices_url(&tb, &[]);
    tb.bench.graph().set_fail_next(2);
    let r = graph_get(&url, &t).await;
    assert_eq!(r.status, 503);
    // Intune's answer, nested as the real service's (docs/mdm.md §1.8).
    assert!(nested_message(&r).starts_with("The service is temporarily unavailable."));
    tb.bench.graph().set_failure_status(502);
    assert_eq!(graph_get(&url, &t).await.status, 502);
    assert_eq!(graph_get(&url, &t).await.status, 200);
    // The token endpoint fails on its own switch.
    tb.bench.graph().set_token_fail_next(1);
    let r = token_with_secret(&tb, &tb.bench.graph().client_secret()).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json["error"], "server_error");
    let _ = token(&tb).await;
    let outcomes: Vec<MdmOutcome> = tb
        .bench
        .graph()
        .graph_requests()
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            MdmOutcome::InjectedFailure,
            MdmOutcome::InjectedFailure,
            MdmOutcome::Ok
        ]
    );
    tb.shutdown().await;
}

#[tokio::test]
async fn missing_permissions_are_named() {
    let mut world = default_world(10, 49);
    world.intune.permissions = Some(Vec::new());
    let tb = start(world).await;
    let t = token(&tb).await;
    let r = graph_get(&devices_url(&tb, &[]), &t).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json["error"]["code"], "Forbidden");
    let message = nested_message(&r);
    assert!(message.starts_with("Application is not authorized to perform this operation. Application must have one of the following scopes: DeviceManagementManagedDevices.Read.All"), "{message}");

    // Read granted, but not the privileged action. Permissions count for new tokens.
    tb.bench.graph().set_permissions(&[READ]);
    assert_eq!(graph_get(&devices_url(&tb, &[]), &t).await.status, 403);
    let t = token(&tb).await;
    assert_eq!(graph_get(&devices_url(&tb, &[]), &t).await.status, 200);
    let dev = device(&tb, NO_CODE);
    let action = format!(
        "{}/v1.0/deviceManagement/managedDevices/{}/bypassActivationLock",
        tb.bench.graph().url(),
        intune_ids(&dev)[0]
    );
    let r = graph_post(&action, &t).await;
    assert_eq!(r.status, 403);
    assert!(r.json["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(PRIVILEGED)));
    assert!(!device(&tb, NO_CODE).lock_released);
    let log = tb.bench.graph().graph_requests();
    assert!(matches!(
        &log.last().expect("logged").outcome,
        MdmOutcome::Forbidden { missing } if missing == PRIVILEGED
    ));
    tb.shutdown().await;
}

#[tokio::test]
async fn bypass_action_releases_the_lock_on_the_activation_server() {
    let tb = start(default_world(10, 50)).await;
    // The record holds the phone's current code: the default reading ("submits the stored
    // code") releases the lock.
    let dev = device(&tb, SINGLE_RECORD);
    assert_eq!(dev.lock, "mdm");
    assert!(!dev.codes.is_empty() && !dev.lock_released);
    let url = tb.bench.ready_info().activation_url;
    let mut d = within(Driver::connect(&tb.socket, &dev.udid, &url))
        .await
        .expect("paired session");
    let info = within(d.activation_info()).await.expect("activation info");
    let answer = within(d.request_activation(&info, FormEncoding::UrlEncoded))
        .await
        .expect("deviceActivation");
    assert!(
        matches!(answer.classify(), ActivationResponse::LockForm(_)),
        "locked before the action"
    );

    let t = token(&tb).await;
    let action = format!(
        "{}/v1.0/deviceManagement/managedDevices/{}/bypassActivationLock",
        tb.bench.graph().url(),
        intune_ids(&dev)[0]
    );
    // Only POST.
    assert_eq!(graph_get(&action, &t).await.status, 405);
    // Without a length, as a bare HTTP/1.1 client sends it: 411, and nothing happens.
    let path = action.trim_start_matches(tb.bench.graph().url());
    let raw = raw_http(
        tb.bench.graph().url(),
        &format!("POST {path} HTTP/1.1\r\nHost: graph\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 411"), "{raw}");
    assert!(raw.contains("LengthRequired"), "{raw}");
    assert!(!device(&tb, SINGLE_RECORD).lock_released);
    let r = graph_post(&action, &t).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.json, Value::Null, "no body");
    assert!(device(&tb, SINGLE_RECORD).lock_released);

    // Albert answers a record now, without any code.
    let info = within(d.activation_info()).await.expect("activation info");
    let answer = within(d.request_activation(&info, FormEncoding::UrlEncoded))
        .await
        .expect("deviceActivation");
    let ActivationResponse::Record {
        raw_body, headers, ..
    } = answer.classify()
    else {
        panic!("expected a record, got {:?}", answer.classify());
    };
    within(d.hand_over(raw_body, headers))
        .await
        .expect("service")
        .expect("record accepted");
    assert_eq!(
        within(d.activation_state()).await.expect("state"),
        "Activated"
    );
    let results = action_results(&tb, &dev, &t).await;
    assert_eq!(results[0]["actionName"], "bypassActivationLock");
    assert_eq!(results[0]["actionState"], "done");

    // A record without a code: accepted, and nothing is released (the action can only hand
    // Apple a code Intune holds); `deviceActionResults` says it failed.
    let none = device(&tb, NO_CODE);
    let action = format!(
        "{}/v1.0/deviceManagement/managedDevices/{}/bypassActivationLock",
        tb.bench.graph().url(),
        intune_ids(&none)[0]
    );
    assert_eq!(graph_post(&action, &t).await.status, 204);
    assert!(!device(&tb, NO_CODE).lock_released);
    assert_eq!(
        action_results(&tb, &none, &t).await[0]["actionState"],
        "failed"
    );
    tb.shutdown().await;
}

/// `deviceActionResults` of the phone's first Intune record.
async fn action_results(tb: &TestBench, dev: &ReadyDevice, t: &str) -> Vec<Value> {
    let url = format!(
        "{}/v1.0/deviceManagement/managedDevices/{}?$select=id,activationLockBypassCode,deviceActionResults",
        tb.bench.graph().url(),
        intune_ids(dev)[0]
    );
    let r = graph_get(&url, t).await;
    assert_eq!(r.status, 200);
    r.json["deviceActionResults"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The two readings of the action (docs/mdm.md §1.3), a record that is not ADE-supervised,
/// and a record without a code, which no reading releases.
#[tokio::test]
async fn bypass_action_readings_and_supervision() {
    const GOOD: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
    const STALE: &str = "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86";
    let phone = |code: Option<&str>, supervised: bool| DeviceSpec {
        lock: Some(Lock::Mdm),
        codes: Some(vec![GOOD.to_string()]),
        stale_codes: Some(vec![STALE.to_string()]),
        enrollments: Some(vec![EnrollmentSpec {
            code: code.map(str::to_string),
            ade_supervised: (!supervised).then_some(false),
            ..EnrollmentSpec::default()
        }]),
        ..DeviceSpec::default()
    };
    let phones = vec![
        phone(Some(STALE), true),
        phone(None, true),
        phone(Some(STALE), false),
    ];
    // Submits the stored code (default): a stale code releases nothing.
    let tb = start(world(52, phones.clone())).await;
    let t = token(&tb).await;
    for i in 0..3 {
        let dev = device(&tb, i);
        let action = format!(
            "{}/v1.0/deviceManagement/managedDevices/{}/bypassActivationLock",
            tb.bench.graph().url(),
            intune_ids(&dev)[0]
        );
        assert_eq!(graph_post(&action, &t).await.status, 204);
        assert!(!device(&tb, i).lock_released, "phone {i}");
    }
    let states: Vec<Value> = action_states(&tb, &t).await;
    assert_eq!(states, ["failed", "failed", "notSupported"]);
    tb.shutdown().await;

    // Refreshes the code: the supervised record with a code gets the phone's current one.
    let mut w = world(52, phones);
    w.intune.bypass_action = station_sim::world::BypassActionReading::RefreshesCode;
    let tb = start(w).await;
    let t = token(&tb).await;
    for i in 0..3 {
        let dev = device(&tb, i);
        let action = format!(
            "{}/v1.0/deviceManagement/managedDevices/{}/bypassActivationLock",
            tb.bench.graph().url(),
            intune_ids(&dev)[0]
        );
        assert_eq!(graph_post(&action, &t).await.status, 204);
        assert!(!device(&tb, i).lock_released, "a refresh releases nothing");
    }
    assert_eq!(
        action_states(&tb, &t).await,
        ["done", "failed", "notSupported"]
    );
    let codes: Vec<Value> = {
        let mut out = Vec::new();
        for i in 0..3 {
            let url = format!(
                "{}/v1.0/deviceManagement/managedDevices/{}?$select=activationLockBypassCode,isSupervised",
                tb.bench.graph().url(),
                intune_ids(&device(&tb, i))[0]
            );
            out.push(graph_get(&url, &t).await.json["activationLockBypassCode"].clone());
        }
        out
    };
    assert_eq!(codes, [Value::from(GOOD), Value::Null, Value::from(STALE)]);
    tb.shutdown().await;
}

/// `actionState` of each phone's action, in phone order.
async fn action_states(tb: &TestBench, t: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..3 {
        let results = action_results(tb, &device(tb, i), t).await;
        out.push(results[0]["actionState"].clone());
    }
    out
}

#[tokio::test]
async fn bypass_action_can_be_delayed_or_have_no_effect() {
    const GOOD: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
    // The record holds the phone's current code: the only case the action releases.
    let phone = |action_releases| DeviceSpec {
        lock: Some(Lock::Mdm),
        codes: Some(vec![GOOD.to_string()]),
        enrollments: Some(vec![EnrollmentSpec {
            code: Some(GOOD.to_string()),
            action_releases: Some(action_releases),
            ..EnrollmentSpec::default()
        }]),
        ..DeviceSpec::default()
    };
    let mut w = world(51, vec![phone(true), phone(false)]);
    w.intune.bypass_delay_ms = 1000;
    let tb = start(w).await;
    let t = token(&tb).await;
    for i in 0..2 {
        let action = format!(
            "{}/v1.0/deviceManagement/managedDevices/{}/bypassActivationLock",
            tb.bench.graph().url(),
            intune_ids(&device(&tb, i))[0]
        );
        assert_eq!(graph_post(&action, &t).await.status, 204);
    }
    assert!(!device(&tb, 0).lock_released, "not yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(device(&tb, 0).lock_released);
    assert!(
        !device(&tb, 1).lock_released,
        "accepted, but Apple kept the lock"
    );
    tb.shutdown().await;
}

async fn kandji_get(tb: &TestBench, path: &str, token: Option<&str>) -> Reply {
    let mut req = client().get(format!("{}{path}", tb.bench.kandji().url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req).await
}

#[tokio::test]
async fn kandji_lookup_by_serial_and_both_code_kinds() {
    let tb = start(default_world(10, 52)).await;
    let k = tb.bench.kandji().clone();
    let t = k.token();
    let dev = device(&tb, KANDJI_ONLY);
    assert_eq!(dev.codes.len(), 2);
    let r = kandji_get(
        &tb,
        &format!("/api/v1/devices?serial_number={}", dev.serial),
        Some(&t),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let list = r.json.as_array().expect("a JSON list").clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["serial_number"], dev.serial.as_str());
    assert_eq!(list[0]["platform"], "iPhone");
    assert_eq!(list[0]["model"], dev.marketing_name.as_str());
    let id = list[0]["device_id"]
        .as_str()
        .expect("device_id")
        .to_string();
    let r = kandji_get(
        &tb,
        &format!("/api/v1/devices/{id}/secrets/bypasscode"),
        Some(&t),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["device_based_albc"], dev.codes[0].as_str());
    assert_eq!(r.json["user_based_albc"], dev.codes[1].as_str());

    // In both Intune and Kandji, with one code: the user-based one is empty.
    let both = device(&tb, INTUNE_AND_KANDJI);
    let kandji_id = both
        .enrollments
        .iter()
        .find(|e| e.mdm == Mdm::Kandji)
        .map(|e| e.id.clone())
        .expect("a Kandji device");
    let r = kandji_get(
        &tb,
        &format!("/api/v1/devices/{kandji_id}/secrets/bypasscode"),
        Some(&t),
    )
    .await;
    assert_eq!(r.json["device_based_albc"], both.codes[0].as_str());
    assert_eq!(r.json["user_based_albc"], "");

    // The serial filter is a partial match: with look-alikes on, a longer serial that
    // contains this one comes first.
    k.set_lookalikes(true);
    let r = kandji_get(
        &tb,
        &format!("/api/v1/devices?serial_number={}", dev.serial),
        Some(&t),
    )
    .await;
    let list = r.json.as_array().expect("list").clone();
    assert_eq!(list.len(), 2);
    assert_ne!(list[0]["serial_number"], dev.serial.as_str());
    assert!(list[0]["serial_number"]
        .as_str()
        .is_some_and(|s| s.contains(&dev.serial)));
    assert_eq!(list[1]["serial_number"], dev.serial.as_str());
    let r = kandji_get(
        &tb,
        &format!("/api/v1/devices?serial_number={}", &dev.serial[..4]),
        Some(&t),
    )
    .await;
    assert!(r.json.as_array().is_some_and(|l| l.len() >= 2));

    // Not in Kandji; bad token; no token; unknown device.
    let intune_only = device(&tb, SINGLE_RECORD);
    let r = kandji_get(
        &tb,
        &format!("/api/v1/devices?serial_number={}", intune_only.serial),
        Some(&t),
    )
    .await;
    assert_eq!(r.json, json!([]));
    let r = kandji_get(&tb, "/api/v1/devices", Some("wrong-token")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["detail"], "Invalid token.");
    assert_eq!(kandji_get(&tb, "/api/v1/devices", None).await.status, 401);
    let r = kandji_get(
        &tb,
        "/api/v1/devices/00000000-0000-0000-0000-000000000000/secrets/bypasscode",
        Some(&t),
    )
    .await;
    assert_eq!(r.status, 404);
    // Paging with limit/offset.
    let r = kandji_get(&tb, "/api/v1/devices?limit=1&offset=1", Some(&t)).await;
    assert_eq!(r.json.as_array().map(Vec::len), Some(1));
    let log = format!("{:?}", k.requests());
    assert!(!log.contains(&t) && !log.contains(&dev.codes[0]));
    tb.shutdown().await;
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn station_config_points_every_source_at_the_bench() {
    let tb = start(default_world(3, 53)).await;
    let ready = tb.bench.ready_info();
    let path = ready.station_config.clone().expect("station_config");
    assert_eq!(path, tb.bench.station_config());
    assert!(path.starts_with(&tb.state_dir));
    let text = std::fs::read_to_string(&path).expect("config written");
    let config: toml::Table = toml::from_str(&text).expect("valid TOML");
    let g = tb.bench.graph();
    let k = tb.bench.kandji();

    assert_eq!(config["station"]["id"].as_str(), Some("sim-bench"));
    let data_dir = config["station"]["data_dir"].as_str().expect("data_dir");
    assert_eq!(
        std::path::Path::new(data_dir),
        tb.state_dir.join("station-data")
    );
    assert_eq!(
        config["usbmuxd"]["address"].as_str(),
        Some(format!("UNIX:{}", tb.socket.display()).as_str())
    );
    assert_eq!(
        config["activation"]["url"].as_str(),
        Some(tb.bench.activation_url())
    );
    let sources = config["codes"]["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 2);
    let intune = &sources[0];
    assert_eq!(intune["type"].as_str(), Some("intune"));
    assert_eq!(intune["tenant"].as_str(), Some(g.tenant()));
    assert_eq!(intune["client_id"].as_str(), Some(g.client_id()));
    assert_eq!(intune["token_url"].as_str(), Some(g.token_url().as_str()));
    assert_eq!(intune["graph_url"].as_str(), Some(g.url()));
    assert_eq!(intune["bypass_action"].as_bool(), Some(false));
    let secret_file = intune["client_secret"]["file"]
        .as_str()
        .expect("secret file");
    let kandji = &sources[1];
    assert_eq!(kandji["type"].as_str(), Some("kandji"));
    assert_eq!(kandji["api_url"].as_str(), Some(k.url()));
    let token_file = kandji["token"]["file"].as_str().expect("token file");

    // The secrets are in their own files, readable by the owner only, never in the config.
    for (file, value) in [(secret_file, g.client_secret()), (token_file, k.token())] {
        let file = std::path::Path::new(file);
        assert!(file.starts_with(tb.state_dir.join("secrets")));
        assert_eq!(mode(file), 0o600, "{}", file.display());
        assert_eq!(std::fs::read_to_string(file).expect("secret"), value);
        assert!(!text.contains(&value), "a secret in the configuration");
    }
    assert_eq!(mode(&tb.state_dir.join("secrets")), 0o700);

    // The ready file's endpoints agree, and the written secret gets a token.
    let mdm = ready.mdm.expect("mdm endpoints");
    assert_eq!(mdm.intune.graph_url, g.url());
    assert_eq!(mdm.intune.tenant, g.tenant());
    assert_eq!(mdm.intune.client_id, g.client_id());
    assert_eq!(
        format!(
            "{}/{}/oauth2/v2.0/token",
            mdm.intune.token_url_base, mdm.intune.tenant
        ),
        g.token_url()
    );
    assert_eq!(mdm.kandji.api_url, k.url());
    let json = tb.bench.ready_info().to_json();
    assert!(!json.contains(&g.client_secret()) && !json.contains(&k.token()));
    let secret = std::fs::read_to_string(secret_file).expect("secret");
    assert_eq!(token_with_secret(&tb, &secret).await.status, 200);
    tb.shutdown().await;

    // Only the sources asked for.
    let tb = start_with(default_world(1, 53), |cfg| {
        cfg.station_config_sources = vec![station_sim::ConfigSource::Kandji];
    })
    .await;
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(tb.bench.station_config()).expect("config"))
            .expect("TOML");
    let sources = config["codes"]["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0]["type"].as_str(), Some("kandji"));
    tb.shutdown().await;
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

// A current-thread runtime: the bench's tasks run on this thread, under this subscriber.
#[tokio::test(flavor = "current_thread")]
async fn no_secret_token_or_code_in_the_sims_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("station_sim=trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let tb = start(default_world(10, 54)).await;
    let g = tb.bench.graph().clone();
    let k = tb.bench.kandji().clone();
    let secret = g.client_secret();
    let _ = token_with_secret(&tb, "wrong-secret-value").await;
    let t = token(&tb).await;
    let mut codes: Vec<String> = Vec::new();
    for d in tb.bench.ready_info().devices {
        for e in &d.enrollments {
            codes.extend(e.code.iter().cloned());
            codes.extend(e.device_based_albc.iter().cloned());
            codes.extend(e.user_based_albc.iter().cloned());
            let path = match e.mdm {
                Mdm::Intune => format!(
                    "{}/v1.0/deviceManagement/managedDevices/{}?$select=activationLockBypassCode",
                    g.url(),
                    e.id
                ),
                Mdm::Kandji => format!("{}/api/v1/devices/{}/secrets/bypasscode", k.url(), e.id),
            };
            let token = if e.mdm == Mdm::Intune {
                t.clone()
            } else {
                k.token()
            };
            assert_eq!(graph_get(&path, &token).await.status, 200);
        }
    }
    // Even a token misplaced in a query string is not kept.
    let _ = graph_get(&format!("{}?access_token={t}", devices_url(&tb, &[])), &t).await;
    let _ = kandji_get(&tb, "/api/v1/devices", Some("a-wrong-kandji-token")).await;
    tb.bench.graph().set_throttle_next(1, Duration::ZERO);
    let _ = graph_get(&devices_url(&tb, &[]), &t).await;
    let logs = capture.text();
    assert!(logs.contains("answered"), "the capture works:\n{logs}");
    let requests = format!("{:?}{:?}", g.requests(), k.requests());
    assert!(codes.len() >= 6, "{codes:?}");
    let mut needles = vec![
        secret,
        "wrong-secret-value".to_string(),
        t.clone(),
        k.token(),
        "a-wrong-kandji-token".to_string(),
    ];
    for c in &codes {
        needles.push(c.clone());
        needles.push(BypassCode::parse(c).expect("code").reveal_compact());
    }
    for needle in &needles {
        assert!(!logs.contains(needle.as_str()), "a secret in the logs");
        assert!(
            !requests.contains(needle.as_str()),
            "a secret in the request log"
        );
    }
    tb.shutdown().await;
}

#[test]
fn default_world_has_every_mdm_case() {
    let profiles = default_world(10, 55).resolve().expect("world");
    let intune = |i: usize| {
        profiles[i]
            .enrollments
            .iter()
            .filter(|e| e.mdm == Mdm::Intune)
            .count()
    };
    let kandji = |i: usize| {
        profiles[i]
            .enrollments
            .iter()
            .filter(|e| e.mdm == Mdm::Kandji)
            .count()
    };
    assert_eq!((intune(STALE_AND_GOOD), kandji(STALE_AND_GOOD)), (2, 0));
    assert_eq!((intune(USER_LOCKED), kandji(USER_LOCKED)), (0, 0));
    assert_eq!((intune(KANDJI_ONLY), kandji(KANDJI_ONLY)), (0, 1));
    assert_eq!(profiles[KANDJI_ONLY].codes.len(), 2);
    assert_eq!((intune(SINGLE_RECORD), kandji(SINGLE_RECORD)), (1, 0));
    assert_eq!(profiles[NO_CODE].enrollments[0].code, None);
    assert_eq!(profiles[CLEAN_ENROLLED].lock, Lock::None);
    assert_eq!(intune(CLEAN_ENROLLED), 1);
    assert_eq!(
        (intune(INTUNE_AND_KANDJI), kandji(INTUNE_AND_KANDJI)),
        (1, 1)
    );
    // The first five keep their kinds; the UDID is on exactly one record of a phone.
    let locks: Vec<Lock> = profiles[..5].iter().map(|p| p.lock).collect();
    assert_eq!(
        locks,
        [Lock::None, Lock::None, Lock::Mdm, Lock::User, Lock::None]
    );
    for p in &profiles {
        let with_udid = p.enrollments.iter().filter(|e| e.udid).count();
        assert!(with_udid <= 1);
    }
    // Every code an MDM holds for a locked phone is one Apple knows.
    for p in profiles.iter().filter(|p| p.lock == Lock::Mdm) {
        for e in &p.enrollments {
            for c in e.codes() {
                assert!(p.codes.iter().chain(&p.stale_codes).any(|k| k == c));
            }
        }
    }
    // World files say the same with `enrollments`.
    let w = World::from_toml(
        "seed = 3\n[[device]]\nlock = \"mdm\"\ncodes = [\"3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4\"]\n\
         stale_codes = [\"TF27L-31WN1-E6FH-DMAM-52X5-NFV0\"]\n\
         [[device.enrollments]]\ncode = \"TF27L-31WN1-E6FH-DMAM-52X5-NFV0\"\nenrolled_at = \"2023-05-01T10:00:00Z\"\n\
         [[device.enrollments]]\nmdm = \"kandji\"\ndevice_based_albc = \"3um43puyvyqyd1uvcchehjfka4\"\n",
        "t",
    )
    .expect("parses");
    let p = &w.resolve().expect("resolves")[0];
    assert_eq!(p.enrollments.len(), 2);
    assert!(
        p.enrollments[0].udid,
        "the only Intune record carries the UDID"
    );
    assert_eq!(p.enrollments[0].enrolled_at, "2023-05-01T10:00:00Z");
    assert_eq!(
        p.enrollments[1].device_based_albc.as_deref(),
        Some("3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4")
    );
}

/// The Kandji stand-in pages as Kandji does (docs/mdm.md §3.1): 300 devices an answer at
/// most (a larger `limit` is cut, none means 300), `offset` skips, past the end an empty
/// array, and `ordering` sorts (a leading `-` descending, unknown fields ignored).
#[tokio::test]
async fn kandji_pages_and_orders_like_kandji() {
    let token = "kandji-paging-token-0123456789";
    let spec = station_sim::KandjiSpec {
        token: Some(token.into()),
        ..station_sim::KandjiSpec::default()
    };
    // Held in descending serial order, so the held order and `ordering` differ.
    let devices: Vec<station_sim::KandjiDevice> = (0..650)
        .rev()
        .map(|i| station_sim::KandjiDevice::new(&format!("dev-{i:04}"), &format!("F2L{i:09}")))
        .collect();
    let server = station_sim::KandjiServer::start(&spec, 7, devices)
        .await
        .expect("the stand-in starts");
    let get = |query: String| {
        let url = format!("{}/api/v1/devices{query}", server.url());
        async move { send(client().get(url).bearer_auth(token)).await }
    };
    let serials = |reply: &Reply| -> Vec<String> {
        reply
            .json
            .as_array()
            .expect("a JSON list")
            .iter()
            .map(|d| d["serial_number"].as_str().expect("serial").to_string())
            .collect()
    };
    let r = get(String::new()).await;
    assert_eq!(r.status, 200);
    let first = serials(&r);
    assert_eq!(first.len(), 300, "no limit: Kandji's 300");
    assert_eq!(first[0], "F2L000000649", "no ordering: the held order");
    assert_eq!(serials(&get("?limit=1000".into()).await).len(), 300);
    let page = |offset: usize| format!("?ordering=serial_number&limit=300&offset={offset}");
    let mut all = Vec::new();
    for offset in [0, 300, 600] {
        all.extend(serials(&get(page(offset)).await));
    }
    assert_eq!(all.len(), 650);
    let expected: Vec<String> = (0..650).map(|i| format!("F2L{i:09}")).collect();
    assert_eq!(all, expected);
    assert_eq!(get(page(900)).await.json, json!([]));
    let r = get("?ordering=-serial_number,no_such_field&limit=2".into()).await;
    assert_eq!(serials(&r), ["F2L000000649", "F2L000000648"]);
    let r = get("?serial_number=F2L00000006&ordering=serial_number".into()).await;
    assert_eq!(
        serials(&r),
        (60..70).map(|i| format!("F2L{i:09}")).collect::<Vec<_>>()
    );
    server.shutdown().await;
}
