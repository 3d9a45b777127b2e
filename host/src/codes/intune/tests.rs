//! The Intune source against the simulator's stand-in Entra ID and Graph
//! ([`station_sim::GraphServer`], the same one a bench runs), started alone with the records
//! each test needs.

use std::time::Instant as StdInstant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use station_config::{Cloud, Environment, IntuneSource, Secret, SecretString};
use station_sim::{GraphServer, IntuneSpec, ManagedDevice, MdmOutcome, MdmRequest};

use super::*;
use crate::codes::CodeKind;
use crate::test_server::{Reply, TestServer};

const SECRET: &str = "s3cret-Value~with.ChArs";
const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SERIAL: &str = "C8TJ500QF1MN";
const UDID: &str = "00008030-001A2B3C4D5E802E";
const GOOD: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
const OTHER: &str = "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86";
const THIRD: &str = "J4DNT-6VT2Y-3LD8-1VV7-AT3U-LW17";
const DEVICES: &str = "/v1.0/deviceManagement/managedDevices";

fn device(id: &str, serial: &str, udid: &str, code: Option<&str>, enrolled: &str) -> ManagedDevice {
    let record = ManagedDevice::new(id, serial)
        .with_udid(udid)
        .enrolled_at(enrolled);
    match code {
        Some(code) => record.with_code(code),
        None => record,
    }
}

/// This phone's record, with its code.
fn this_phone() -> ManagedDevice {
    device("dev-1", SERIAL, UDID, Some(GOOD), "2025-01-01T00:00:00Z")
}

/// The app registration the station's settings name.
fn spec() -> IntuneSpec {
    IntuneSpec {
        tenant: Some(TENANT.into()),
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(SECRET.into()),
        // Graph's pages hold about 1000 records (docs/mdm.md §1.7): one page unless a test pages.
        page_size: Some(1000),
        ..IntuneSpec::default()
    }
}

struct Setup {
    graph: GraphServer,
}

async fn setup(devices: Vec<ManagedDevice>) -> Setup {
    setup_with(spec(), devices).await
}

async fn setup_with(spec: IntuneSpec, devices: Vec<ManagedDevice>) -> Setup {
    let graph = GraphServer::start(&spec, 1, devices)
        .await
        .expect("the stand-in starts");
    Setup { graph }
}

impl Setup {
    fn settings(&self) -> IntuneSettings {
        IntuneSettings {
            name: "contoso".into(),
            client_id: CLIENT_ID.into(),
            credential: Credential::Secret(SecretString::new(SECRET)),
            token_url: self.graph.token_url(),
            graph_root: self.graph.url().to_string(),
            scope: "https://graph.microsoft.com/.default".into(),
            budget: crate::http::Budget::per_second(1000.0),
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

    fn graph_requests(&self) -> Vec<MdmRequest> {
        self.graph.graph_requests()
    }

    fn token_requests(&self) -> usize {
        self.graph.token_requests().len()
    }
}

fn revealed(lookup: &Lookup) -> Vec<String> {
    lookup.codes.iter().map(|c| c.code.reveal()).collect()
}

/// GUID-shaped words of `text`: Entra's trace and correlation ids and Graph's request ids
/// look like this, and none belongs in a message.
fn guids(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .filter(|word| word.split('-').map(str::len).eq([8, 4, 4, 4, 12]))
        .collect()
}

#[tokio::test]
async fn a_single_record() {
    let s = setup(vec![
        this_phone(),
        device(
            "dev-2",
            "F2LXXXXXXXXX",
            "other",
            Some(OTHER),
            "2025-01-01T00:00:00Z",
        ),
    ])
    .await;
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert!(lookup.known);
    assert_eq!(revealed(&lookup), vec![GOOD]);
    assert_eq!(lookup.codes[0].kind, CodeKind::Device);
    assert_eq!(lookup.codes[0].source, "contoso");

    let requests = s.graph_requests();
    assert_eq!(requests.len(), 2, "one list, one GET");
    assert_eq!(
        requests[0].query_value("$filter"),
        Some("serialNumber eq 'C8TJ500QF1MN'")
    );
    assert!(!requests[0]
        .query_value("$select")
        .unwrap_or_default()
        .contains("activationLockBypassCode"));
    assert_eq!(requests[1].path, format!("{DEVICES}/dev-1"));
    assert_eq!(
        requests[1].query_value("$select"),
        Some("id,serialNumber,udid,activationLockBypassCode")
    );
    let token = s.graph.token_requests();
    assert_eq!(token.len(), 1);
    // The stand-in refuses any other scope or client id (400): its 200 says these were sent.
    assert_eq!(token[0].status, 200);
    assert_eq!(s.graph.scope(), "https://graph.microsoft.com/.default");
    assert_eq!(s.graph.client_id(), CLIENT_ID);
    for field in ["client_id", "scope", "grant_type", "client_secret"] {
        assert!(token[0].fields.iter().any(|f| f == field), "{field}");
    }
}

#[tokio::test]
async fn two_records_for_one_serial_this_udid_first() {
    let s = setup(vec![
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
    ])
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
    let s = setup(vec![device(
        "dev-1",
        SERIAL,
        UDID,
        None,
        "2025-01-01T00:00:00Z",
    )])
    .await;
    let client = s.client();
    let lookup = client.fetch(SERIAL, UDID).await.expect("lookup");
    assert!(lookup.known && lookup.codes.is_empty());
    assert_eq!(
        lookup.absent,
        ["in Intune (contoso) without a code: the code was removed by a reset before it was copied, expired, or was never escrowed (the phone not supervised with Activation Lock allowed)"]
    );
    let lookup = client.fetch("F2LNOTKNOWN1", UDID).await.expect("lookup");
    assert!(!lookup.known && lookup.codes.is_empty());
    assert_eq!(
        lookup.absent,
        ["not in Intune (contoso): no record of the serial (record deleted by a clean-up rule or a retirement, or the phone was never enrolled there)"]
    );
    // The unmatched filter cost one list call and no GET.
    assert_eq!(s.graph_requests().len(), 3);
}

#[tokio::test]
async fn a_graph_that_ignores_the_filter_is_checked_client_side() {
    let mut devices: Vec<ManagedDevice> = (0..6)
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
    let s = setup_with(
        IntuneSpec {
            ignore_filters: true,
            ..spec()
        },
        devices,
    )
    .await;
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    let gets: Vec<String> = s
        .graph_requests()
        .iter()
        .skip(1)
        .map(|r| r.path.clone())
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
    let s = setup_with(
        IntuneSpec {
            ignore_filters: true,
            page_size: Some(2),
            ..spec()
        },
        devices,
    )
    .await;
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD, THIRD, OTHER]);
    let lists = s
        .graph_requests()
        .iter()
        .filter(|r| r.path == DEVICES)
        .count();
    assert_eq!(lists, 3);
}

#[tokio::test]
async fn a_next_link_to_another_host_is_not_followed() {
    // The real Graph links only to itself, so the stand-in cannot be told to link elsewhere:
    // a one-answer double plays a rogue Graph here (the token still comes from the stand-in).
    let s = setup(Vec::new()).await;
    let rogue = TestServer::start(|_| {
        Reply::json(
            200,
            serde_json::json!({ "value": [], "@odata.nextLink": "https://evil.example/v1.0/x" }),
        )
    })
    .await;
    let mut settings = s.settings();
    settings.graph_root = rogue.url.clone();
    let err = Intune::new(settings)
        .expect("client")
        .fetch(SERIAL, UDID)
        .await
        .expect_err("foreign link");
    assert!(matches!(err, IntuneError::ForeignLink { .. }), "{err}");
    let asked: Vec<String> = rogue
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .collect();
    assert_eq!(asked, vec![DEVICES], "the link was not followed");
}

#[tokio::test]
async fn throttling_waits_for_retry_after() {
    let s = setup(vec![this_phone()]).await;
    s.graph.set_throttle_next(1, Duration::from_secs(1));
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    let requests = s.graph_requests();
    assert_eq!(requests.len(), 3, "429, list again, GET");
    assert_eq!(requests[0].retry_after, Some(1));
    // The stand-in throttles a request that comes back early again: none did.
    assert!(requests
        .iter()
        .all(|r| r.outcome != MdmOutcome::Throttled { early: true }));
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(
        gap >= Duration::from_millis(990),
        "asked again after {gap:?}"
    );
}

#[tokio::test]
async fn throttling_past_the_attempts_is_reported() {
    let s = setup(Vec::new()).await;
    s.graph.set_throttle_next(4, Duration::ZERO);
    let err = s.client().fetch(SERIAL, UDID).await.expect_err("throttled");
    assert!(matches!(err, IntuneError::Throttled { .. }), "{err}");
    assert!(err.to_string().contains("max_requests_per_second"), "{err}");
}

#[tokio::test]
async fn server_errors_then_success() {
    let s = setup(vec![this_phone()]).await;
    s.graph.set_fail_next(2);
    let lookup = s.client().fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    let statuses: Vec<u16> = s.graph_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 200, 200]);
}

#[tokio::test]
async fn the_token_is_cached_and_renewed_when_graph_finds_it_expired() {
    let s = setup(vec![this_phone()]).await;
    let client = s.client();
    client.fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(s.token_requests(), 1);
    // Graph finds the cached token expired (revoked, or a clock off) on the next call.
    s.graph.expire_tokens();
    let lookup = client.fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    assert_eq!(s.token_requests(), 2, "renewed once after the 401");
    client.fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(s.token_requests(), 2, "cached");
    // Only the first call with the old token was refused; the renewed one served the rest.
    let refused: Vec<(usize, MdmOutcome)> = s
        .graph_requests()
        .into_iter()
        .enumerate()
        .filter(|(_, r)| r.status != 200)
        .map(|(i, r)| (i, r.outcome))
        .collect();
    assert!(
        matches!(refused.as_slice(), [(2, MdmOutcome::Unauthorized { reason })] if reason.contains("expired")),
        "{refused:?}"
    );
    assert_eq!(s.graph_requests().len(), 7);
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires() {
    let s = setup_with(
        IntuneSpec {
            token_lifetime_secs: Some(1),
            ..spec()
        },
        Vec::new(),
    )
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
    let s = setup(Vec::new()).await;
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
    assert!(!text.contains("wrong-secret"), "{text}");
    // Entra's description ends with trace and correlation ids: not repeated.
    assert!(guids(&text).iter().all(|g| *g == CLIENT_ID), "{text}");
    assert!(s.graph_requests().is_empty());
}

#[tokio::test]
async fn a_missing_permission_is_named() {
    let s = setup(Vec::new()).await;
    s.graph.set_permissions(&[ACTION_PERMISSION]);
    let err = s.client().fetch(SERIAL, UDID).await.expect_err("forbidden");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            IntuneError::Permission {
                status: 403,
                permission: READ_PERMISSION,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "needs the application permission {READ_PERMISSION}"
        )),
        "{text}"
    );
    assert!(text.contains("HTTP 403 Forbidden"), "{text}");
    assert!(guids(&text).is_empty(), "{text}");
    // The stand-in nests Intune's message as the real service does; only its text shows.
    assert!(
        text.contains(": Application is not authorized to perform this operation."),
        "{text}"
    );
    for tail in ["{", "_version", "Operation ID", "Activity ID", "Url:"] {
        assert!(!text.contains(tail), "{tail} in {text}");
    }
}

#[tokio::test]
async fn a_repeated_401_points_at_tenant_cloud_or_client() {
    // Tokens from one directory's Entra, sent to another's Graph: Entra issues them, Graph
    // never takes them.
    let s = setup(vec![this_phone()]).await;
    let elsewhere = setup(vec![this_phone()]).await;
    let mut settings = s.settings();
    settings.graph_root = elsewhere.graph.url().to_string();
    let err = Intune::new(settings)
        .expect("client")
        .fetch(SERIAL, UDID)
        .await
        .expect_err("401");
    let text = err.to_string();
    assert!(
        matches!(&err, IntuneError::TokenRejected { code, .. } if code == "InvalidAuthenticationToken"),
        "{text}"
    );
    assert!(
        text.contains("usually means the wrong tenant, cloud or client_id")
            && text.contains("not a missing permission"),
        "{text}"
    );
    assert!(!text.contains("needs the application permission"), "{text}");
    assert_eq!(s.token_requests(), 2, "renewed once, then reported");
    assert_eq!(
        LookupError::from(err).kind(),
        crate::codes::error::FailureKind::Unauthorised
    );
}

#[tokio::test]
async fn the_remote_action_targets_this_phones_record() {
    let s = setup(vec![
        device(
            "old-phone",
            SERIAL,
            "00008030-0000000000000BBB",
            None,
            "2025-06-01T00:00:00Z",
        ),
        device("this-phone", SERIAL, UDID, None, "2024-01-01T00:00:00Z"),
    ])
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
    let actions: Vec<(String, u16)> = s
        .graph_requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| (r.path, r.status))
        .collect();
    assert_eq!(
        actions,
        vec![(format!("{DEVICES}/this-phone/bypassActivationLock"), 204)]
    );
    assert_eq!(
        client
            .bypass_activation_lock("F2LNOTKNOWN1", UDID)
            .await
            .expect("none"),
        None
    );

    // Permissions count for tokens issued after the change, as Entra's `roles` claim:
    // revoke, and expire the cached token so the client gets one without the permission.
    s.graph.set_permissions(&[READ_PERMISSION]);
    s.graph.expire_tokens();
    let err = client
        .bypass_activation_lock(SERIAL, UDID)
        .await
        .expect_err("forbidden");
    assert!(
        matches!(
            err,
            IntuneError::Permission {
                status: 403,
                permission: ACTION_PERMISSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(ACTION_PERMISSION), "{err}");
}

/// After the action the record is read again (`deviceActionResults` and the code) until
/// the action ends: what it reports, and only a code the record did not hold before.
#[tokio::test]
async fn the_action_is_watched_and_the_record_read_again() {
    let stale =
        device("stale", SERIAL, UDID, Some(OTHER), "2025-01-01T00:00:00Z").with_apple_code(GOOD);
    let none =
        device("none", "F2LNOCODE001", "u2", None, "2025-01-01T00:00:00Z").with_apple_code(GOOD);
    let unsupervised = device("unsup", "F2LNOTADE001", "u3", None, "2025-01-01T00:00:00Z")
        .unsupervised()
        .with_apple_code(GOOD);
    let records = vec![stale, none, unsupervised];
    let watch = |s: &Setup| {
        let mut settings = s.settings();
        settings.bypass_action = Some(Duration::from_secs(3));
        Intune::new(settings).expect("client")
    };
    let summary = |r: Option<RemoteRelease>| {
        let r = r.expect("a record");
        (
            r.action_state,
            r.record_has_code,
            r.codes.iter().map(|c| c.code.reveal()).collect::<Vec<_>>(),
        )
    };

    // "Submits the stored code" (the stand-in's default): a stale code gets nothing done.
    let s = setup(records.clone()).await;
    s.graph.set_bypass_delay(Duration::from_millis(700));
    let client = watch(&s);
    let started = StdInstant::now();
    let release = client.release(SERIAL, UDID).await.expect("action");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ended before the time allowed"
    );
    assert_eq!(summary(release), (ActionState::Failed, true, vec![]));
    let reads: Vec<String> = s
        .graph_requests()
        .into_iter()
        .filter_map(|r| r.query_value("$select").map(str::to_string))
        .filter(|q| q.contains("deviceActionResults"))
        .collect();
    assert!(reads.len() >= 3, "before, while pending, after: {reads:?}");
    assert_eq!(
        summary(client.release("F2LNOCODE001", "u2").await.expect("action")),
        (ActionState::Failed, false, vec![])
    );
    assert_eq!(
        summary(client.release("F2LNOTADE001", "u3").await.expect("action")),
        (ActionState::NotSupported, false, vec![])
    );
    assert_eq!(
        client.release("F2LNOTKNOWN1", UDID).await.expect("none"),
        None
    );

    // "Refreshes the code": the new code is read and handed back; none for a record that
    // never held one.
    let s = setup_with(
        IntuneSpec {
            bypass_action: station_sim::world::BypassActionReading::RefreshesCode,
            ..spec()
        },
        records,
    )
    .await;
    let client = watch(&s);
    assert_eq!(
        summary(client.release(SERIAL, UDID).await.expect("action")),
        (ActionState::Done, true, vec![GOOD.to_string()])
    );
    assert_eq!(
        summary(client.release("F2LNOCODE001", "u2").await.expect("action")),
        (ActionState::Failed, false, vec![])
    );
    // Done again: the code is no longer new, and an earlier result is not taken for this one.
    assert_eq!(
        summary(client.release(SERIAL, UDID).await.expect("action")),
        (ActionState::Done, true, vec![])
    );
}

/// A stand-in that never reports the action: the watch ends at the time allowed.
#[tokio::test]
async fn an_action_never_reported_ends_at_the_time_allowed() {
    let s = setup(vec![this_phone()]).await;
    s.graph.set_bypass_delay(Duration::from_secs(60));
    let mut settings = s.settings();
    settings.bypass_action = Some(Duration::from_secs(1));
    let client = Intune::new(settings).expect("client");
    let started = StdInstant::now();
    let release = client
        .release(SERIAL, UDID)
        .await
        .expect("action")
        .expect("a record");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(release.action_state, ActionState::Pending);
    assert!(release.codes.is_empty());
}

#[tokio::test]
async fn requests_are_rate_limited() {
    let devices = (0..15)
        .map(|i| device(&format!("d{i}"), SERIAL, "x", None, "2025-01-01T00:00:00Z"))
        .collect();
    let s = setup(devices).await;
    let mut settings = s.settings();
    settings.budget = crate::http::Budget::per_second(10.0);
    let started = StdInstant::now();
    Intune::new(settings)
        .expect("client")
        .fetch(SERIAL, UDID)
        .await
        .expect("lookup");
    // 17 requests, 10 at once, then 10 a second.
    assert_eq!(s.token_requests() + s.graph_requests().len(), 17);
    assert!(
        started.elapsed() >= Duration::from_millis(650),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn quotes_in_a_serial_are_escaped() {
    let s = setup(vec![device(
        "q",
        "AB'CD0000",
        UDID,
        Some(GOOD),
        "2025-01-01T00:00:00Z",
    )])
    .await;
    let lookup = s.client().fetch("AB'CD0000", UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    assert_eq!(
        s.graph_requests()[0].query_value("$filter"),
        Some("serialNumber eq 'AB''CD0000'")
    );
}

#[tokio::test]
async fn a_national_cloud_asks_for_its_own_graph() {
    // The stand-in plays US Government (GCC High): it issues tokens for that Graph only.
    let s = setup_with(
        IntuneSpec {
            cloud: Some(Cloud::Usgov),
            ..spec()
        },
        vec![this_phone()],
    )
    .await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, SECRET).expect("secret file");
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod 600");
    // As configured: the cloud decides the scope; the URLs point at the stand-in.
    let config = |cloud| IntuneSource {
        name: None,
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(Secret::File(secret_file.clone())),
        certificate: None,
        assertion_alg: None,
        cloud,
        token_url: Some(s.graph.token_url()),
        graph_url: Some(s.graph.url().to_string()),
        max_requests_per_second: 1000.0,
        bypass_action: false,
        bypass_action_wait_secs: 60,
        allow_insecure_http: false,
    };
    let env = Environment::process();
    let secret_env = std::collections::BTreeSet::new();
    let context = BuildContext {
        name: "contoso",
        retry: s.settings().retry,
        env: &env,
        secret_env: &secret_env,
    };
    let usgov = Intune::from_config(&config(Cloud::Usgov), &context).expect("source");
    let lookup = usgov.fetch(SERIAL, UDID).await.expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);

    let global = Intune::from_config(&config(Cloud::Global), &context).expect("source");
    let err = global
        .fetch(SERIAL, UDID)
        .await
        .expect_err("a token for another cloud's Graph");
    assert!(
        matches!(&err, IntuneError::TokenRefused { status: 400, code, .. } if code == "invalid_scope"),
        "{err}"
    );
}

/// A self-signed RSA certificate and its key, PEM.
fn certificate_pair() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
    let cert = rcgen::CertificateParams::new(vec!["station".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    (cert, key)
}

/// Header, claims, the signed part and the signature of a JWT.
fn jwt_parts(jwt: &str) -> (serde_json::Value, serde_json::Value, String, Vec<u8>) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("json")
    };
    (
        decode(parts[0]),
        decode(parts[1]),
        format!("{}.{}", parts[0], parts[1]),
        URL_SAFE_NO_PAD.decode(parts[2]).expect("signature"),
    )
}

fn check_claims(claims: &serde_json::Value, token_url: &str) {
    assert_eq!(claims["aud"], token_url);
    assert_eq!(claims["iss"], CLIENT_ID);
    assert_eq!(claims["sub"], claims["iss"]);
    assert_eq!(claims["jti"].as_str().map(str::len), Some(32));
    let (nbf, exp) = (
        claims["nbf"].as_u64().expect("nbf"),
        claims["exp"].as_u64().expect("exp"),
    );
    assert!(exp > nbf);
}

/// Looks the phone up with `certificate` as the credential; the token request's status.
async fn lookup_with_certificate(
    s: &Setup,
    certificate: Certificate,
) -> Result<Lookup, IntuneError> {
    let mut settings = s.settings();
    settings.credential = Credential::Certificate(certificate);
    let result = Intune::new(settings)
        .expect("client")
        .fetch(SERIAL, UDID)
        .await;
    let request = s
        .graph
        .token_requests()
        .last()
        .cloned()
        .expect("a token request");
    assert!(!request.fields.iter().any(|f| f == "client_secret"));
    for field in ["client_assertion_type", "client_assertion"] {
        assert!(request.fields.iter().any(|f| f == field), "{field}");
    }
    result
}

#[tokio::test]
async fn a_certificate_signs_a_ps256_assertion_by_default() {
    let (cert, key) = certificate_pair();
    let certificate = Certificate::from_pem(&cert.pem(), &key.serialize_pem()).expect("credential");
    let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.der());
    assert_eq!(
        certificate.x5t_s256(),
        URL_SAFE_NO_PAD.encode(sha256.as_ref())
    );
    assert!(!format!("{certificate:?}").contains("PRIVATE"));

    let s = setup(vec![this_phone()]).await;
    s.graph
        .add_certificate_pem(&cert.pem())
        .expect("certificate registered");
    // Entra's current form only: RS256 and SHA-1 `x5t` would be refused.
    s.graph.set_strict_assertions(true);
    let token_url = s.graph.token_url();

    let jwt = certificate
        .assertion(CLIENT_ID, &token_url)
        .expect("assertion");
    let (header, claims, signed, signature) = jwt_parts(jwt.expose());
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["x5t#S256"], URL_SAFE_NO_PAD.encode(sha256.as_ref()));
    assert!(header.get("x5t").is_none(), "{header}");
    check_claims(&claims, &token_url);
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        certificate.public_key(),
    )
    .verify(signed.as_bytes(), &signature)
    .expect("signature verifies");

    let lookup = lookup_with_certificate(&s, certificate)
        .await
        .expect("lookup in strict mode");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    assert_eq!(s.graph.token_requests()[0].status, 200);
}

#[tokio::test]
async fn an_rs256_assertion_is_a_fallback_strict_tenants_refuse() {
    let (cert, key) = certificate_pair();
    let certificate = || {
        Certificate::from_pem(&cert.pem(), &key.serialize_pem())
            .expect("credential")
            .with_algorithm(station_config::AssertionAlg::Rs256)
    };
    let thumbprint =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.der());
    assert_eq!(
        certificate().x5t(),
        URL_SAFE_NO_PAD.encode(thumbprint.as_ref())
    );

    let s = setup(vec![this_phone()]).await;
    s.graph
        .add_certificate_pem(&cert.pem())
        .expect("certificate registered");
    let token_url = s.graph.token_url();

    // The assertion as the token request carries it (the stand-in's log keeps no values).
    let jwt = certificate()
        .assertion(CLIENT_ID, &token_url)
        .expect("assertion");
    let (header, claims, signed, signature) = jwt_parts(jwt.expose());
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(thumbprint.as_ref()));
    check_claims(&claims, &token_url);
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        certificate().public_key(),
    )
    .verify(signed.as_bytes(), &signature)
    .expect("signature verifies");

    // The stand-in checks what Entra checks: the assertion type, the key the `x5t` names,
    // the signature, `aud` = the URL posted to, `iss` = `sub` = the client id, the times.
    let lookup = lookup_with_certificate(&s, certificate())
        .await
        .expect("lookup");
    assert_eq!(revealed(&lookup), vec![GOOD]);
    assert_eq!(s.graph.token_requests()[0].status, 200);

    // A tenant that takes only Entra's current form refuses it, as Entra does.
    s.graph.set_strict_assertions(true);
    let err = lookup_with_certificate(&s, certificate())
        .await
        .expect_err("refused in strict mode");
    assert!(
        matches!(&err, IntuneError::TokenRefused { status: 401, code, .. } if code == "invalid_client"),
        "{err}"
    );
    assert!(err.to_string().contains("AADSTS5002738"), "{err}");
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

/// Phones looked up at the same time share `$batch`es for their per-record GETs, and each
/// inner answer counts on its own: a 429 inside the batch is waited out (its Retry-After)
/// and asked again, a 404 is a record that is gone.
#[tokio::test]
async fn concurrent_lookups_share_a_batch_whose_inner_429_and_404_are_handled_one_by_one() {
    let codes = [GOOD, OTHER, THIRD];
    let devices: Vec<ManagedDevice> = (0..6)
        .map(|i| {
            device(
                &format!("dev-{i}"),
                &format!("SERIAL{i:04}"),
                &format!("UDID-{i}"),
                Some(codes[i % 3]),
                "2025-01-01T00:00:00Z",
            )
        })
        .collect();
    let s = setup(devices).await;
    s.graph.set_batch_throttle_next(1, Duration::from_secs(1));
    s.graph.set_batch_not_found_next(1);
    let mut client = s.client();
    // Long enough for every phone's list to come back before the batch leaves.
    client.batch = batch::Batcher::with_window(Duration::from_millis(400));
    let started = StdInstant::now();
    let lookups = futures_util::future::join_all((0..6).map(|i| {
        let client = &client;
        async move {
            client
                .fetch(&format!("SERIAL{i:04}"), &format!("UDID-{i}"))
                .await
        }
    }))
    .await;
    let requests = s.graph_requests();
    let batches: Vec<&MdmRequest> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1.0/$batch")
        .collect();
    assert_eq!(batches.len(), 1, "{requests:#?}");
    let inner: Vec<&MdmRequest> = requests.iter().filter(|r| r.in_batch).collect();
    assert_eq!(inner.len(), 6);
    let throttled = inner
        .iter()
        .find(|r| r.status == 429)
        .expect("an inner 429");
    assert_eq!(throttled.retry_after, Some(1));
    let gone = inner
        .iter()
        .find(|r| r.status == 404)
        .expect("an inner 404");
    // The throttled GET was asked again, alone, once its Retry-After was over.
    let again = requests
        .iter()
        .find(|r| !r.in_batch && r.method == "GET" && r.path == throttled.path)
        .expect("the throttled GET again");
    assert_eq!(again.status, 200);
    assert!(
        again.at.duration_since(throttled.at) >= Duration::from_millis(990),
        "{:?}",
        again.at.duration_since(throttled.at)
    );
    let gone_id = gone.path.rsplit('/').next().expect("an id").to_string();
    for (i, lookup) in lookups.into_iter().enumerate() {
        let lookup = lookup.expect("lookup");
        if format!("dev-{i}") == gone_id {
            // Gone between the list and the GET: no record, no code.
            assert!(lookup.codes.is_empty(), "{lookup:?}");
            assert!(
                lookup.absent[0].contains("not in Intune"),
                "{:?}",
                lookup.absent
            );
        } else {
            assert_eq!(revealed(&lookup), vec![codes[i % 3]], "phone {i}");
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(s.token_requests(), 1);
}

/// The batch is never larger than Graph takes (20), nor than the budget allows at once.
#[tokio::test]
async fn batches_hold_at_most_twenty_and_at_most_the_budget() {
    let devices: Vec<ManagedDevice> = (0..25)
        .map(|i| {
            device(
                &format!("dev-{i}"),
                &format!("SERIAL{i:04}"),
                &format!("UDID-{i}"),
                Some(GOOD),
                "2025-01-01T00:00:00Z",
            )
        })
        .collect();
    let s = setup(devices).await;
    for (budget, largest) in [(1000.0, 20), (8.0, 8)] {
        s.graph.clear_requests();
        let mut settings = s.settings();
        settings.budget = crate::http::Budget::per_second(budget);
        let mut client = Intune::new(settings).expect("client");
        client.batch = batch::Batcher::with_window(Duration::from_millis(1500));
        let lookups = futures_util::future::join_all((0..25).map(|i| {
            let client = &client;
            async move {
                client
                    .fetch(&format!("SERIAL{i:04}"), &format!("UDID-{i}"))
                    .await
            }
        }))
        .await;
        assert!(lookups
            .iter()
            .all(|l| l.as_ref().is_ok_and(|l| l.codes.len() == 1)));
        let requests = s.graph_requests();
        let mut sizes = Vec::new();
        let mut size = 0;
        for r in &requests {
            if r.in_batch {
                size += 1;
            } else if size > 0 {
                sizes.push(size);
                size = 0;
            }
        }
        if size > 0 {
            sizes.push(size);
        }
        assert!(
            sizes.iter().all(|n| *n <= largest),
            "budget {budget}: {sizes:?}"
        );
        assert_eq!(
            sizes.iter().max(),
            Some(&largest),
            "budget {budget}: {sizes:?}"
        );
    }
}
