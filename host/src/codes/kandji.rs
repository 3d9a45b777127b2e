//! Kandji (docs/mdm.md §3.1): the device by serial number (the API matches partial serials, so the
//! exact serial is checked here), then `secrets/bypasscode`, which holds both codes:
//! `user_based_albc` (device-generated) and `device_based_albc` (server-generated).

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use station_config::{KandjiSource, SecretString};
use station_protocol::bypass_code::BypassCode;
use zeroize::Zeroizing;

use super::answer::{encode_component, parse_json};
use super::registry::{BuildContext, CodeSource, Description};
use super::{CodeKind, CodeLookup, Lookup, LookupError, SourcedCode, MDM_REQUEST_TIMEOUT};
use crate::http::{HttpClient, HttpError, HttpResponse, RetryPolicy};
use crate::redact::scrubbed;

/// The device list's page size: Kandji's hard upper `limit` (docs/mdm.md §3.1).
const PAGE_SIZE: usize = 300;
/// Pages followed at most by default: the serial filter matches partially, so a short or
/// odd serial could list a large fleet; 20 pages are 6 000 devices.
pub const DEFAULT_MAX_PAGES: usize = 20;
/// Kandji allows about 10 000 requests an hour per tenant; a bench needs far fewer.
const REQUESTS_PER_SECOND: f64 = 5.0;

#[derive(Debug)]
pub struct KandjiSettings {
    pub name: String,
    /// `https://<subdomain>.api.kandji.io` (or `.api.eu.kandji.io`), or a stand-in.
    pub api_url: String,
    pub token: SecretString,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Device-list pages followed at most ([`DEFAULT_MAX_PAGES`]).
    pub max_pages: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum KandjiError {
    #[error("Kandji refused the API token (HTTP 401): check the token and api_url")]
    Unauthorized,
    #[error(
        "the Kandji API token may not read {what} (HTTP 403): give it the {permission} permission"
    )]
    Forbidden {
        what: &'static str,
        permission: &'static str,
    },
    #[error("Kandji is throttling this token (HTTP 429): retry later")]
    Throttled,
    #[error("Kandji answered HTTP {status} for {what}{}", if .message.is_empty() { String::new() } else { format!(": {message}") })]
    Service {
        status: u16,
        what: &'static str,
        message: String,
    },
    #[error("unreadable answer from Kandji for {what}: {reason}")]
    BadAnswer { what: &'static str, reason: String },
    /// Every page up to the cap was full and none held the exact serial: the device may be
    /// on a page not read, so "not in Kandji" would be a guess.
    #[error("Kandji lists more than {pages} full pages of devices whose serial contains this one, none of them the serial itself: not searched further")]
    TooManyMatches { pages: usize },
    #[error(transparent)]
    Http(#[from] HttpError),
}

#[derive(Deserialize)]
struct Device {
    device_id: Option<String>,
    serial_number: Option<String>,
}

/// The list is a bare array; some API versions wrap it as `{"results": [...]}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum DeviceList {
    Bare(Vec<Device>),
    Wrapped { results: Vec<Device> },
}

#[derive(Deserialize)]
struct Secrets {
    user_based_albc: Option<String>,
    device_based_albc: Option<String>,
}

pub struct Kandji {
    settings: KandjiSettings,
    http: HttpClient,
}

impl Kandji {
    pub fn new(settings: KandjiSettings) -> Result<Self, KandjiError> {
        let http = HttpClient::for_service(
            "Kandji",
            super::USER_AGENT,
            settings.timeout,
            settings.retry,
        )?
        .with_rate_limit(REQUESTS_PER_SECOND);
        Ok(Kandji { settings, http })
    }

    pub async fn fetch(&self, serial: &str) -> Result<Lookup, KandjiError> {
        let serial = serial.trim();
        let mut lookup = Lookup::default();
        let devices = self.devices(serial).await?;
        let mut without_secrets = 0usize;
        for id in &devices {
            let id = id.as_str();
            let url = format!(
                "{}/api/v1/devices/{}/secrets/bypasscode",
                self.base(),
                encode_component(id)
            );
            let response = self.get(&url).await?;
            match response.status {
                200 => {}
                // The device is Kandji's; it holds no secrets for it (docs/mdm.md §3.1).
                404 => {
                    lookup.known = true;
                    without_secrets += 1;
                    continue;
                }
                _ => return Err(failure(&response, "device secrets", "Device secrets")),
            }
            lookup.known = true;
            let secrets: Secrets =
                parse_json(&response.body).map_err(|reason| KandjiError::BadAnswer {
                    what: "device secrets",
                    reason,
                })?;
            for (field, text, kind) in [
                ("user_based_albc", secrets.user_based_albc, CodeKind::Device),
                (
                    "device_based_albc",
                    secrets.device_based_albc,
                    CodeKind::Server,
                ),
            ] {
                let Some(text) = text.map(Zeroizing::new).filter(|t| !t.trim().is_empty()) else {
                    continue;
                };
                match BypassCode::parse(&text) {
                    Ok(code) => lookup.push(SourcedCode {
                        code,
                        kind,
                        source: self.settings.name.clone(),
                    }),
                    Err(e) => tracing::warn!(
                        source = %self.settings.name,
                        device = %id,
                        field,
                        error = %e,
                        "Kandji holds an unreadable bypass code; skipped"
                    ),
                }
            }
        }
        let name = &self.settings.name;
        lookup.explain_absence(|| {
            if devices.is_empty() {
                format!("not in Kandji ({name}): no device with the serial (deleted, or never enrolled there)")
            } else if without_secrets > 0 {
                format!("known to Kandji ({name}), no code: secrets/bypasscode answered 404 (the code was removed by a reset, or never escrowed)")
            } else {
                format!("known to Kandji ({name}), no code: its secrets hold no bypass code")
            }
        });
        Ok(lookup)
    }

    /// Ids of the devices whose serial is exactly `serial`. Kandji's serial filter matches
    /// partially and answers at most [`PAGE_SIZE`] devices a request, so the list is paged
    /// with `limit`/`offset`, ordered by `serial_number` so that the pages do not shift
    /// between requests, as Kandji's own export script does (docs/mdm.md §3.1). It stops at
    /// an empty page, or a short one (no page follows it), or after `max_pages`.
    async fn devices(&self, serial: &str) -> Result<Vec<String>, KandjiError> {
        let mut ids: Vec<String> = Vec::new();
        for page in 0..self.settings.max_pages.max(1) {
            let url = format!(
                "{}/api/v1/devices?serial_number={}&ordering=serial_number&limit={PAGE_SIZE}&offset={}",
                self.base(),
                encode_component(serial),
                page * PAGE_SIZE
            );
            let response = self.get(&url).await?;
            if response.status != 200 {
                return Err(failure(&response, "the device list", "Device list"));
            }
            let devices =
                match parse_json(&response.body).map_err(|reason| KandjiError::BadAnswer {
                    what: "the device list",
                    reason,
                })? {
                    DeviceList::Bare(d) | DeviceList::Wrapped { results: d } => d,
                };
            // A page longer than asked for is not Kandji's paging: stop rather than guess.
            if devices.len() > PAGE_SIZE {
                return Err(KandjiError::BadAnswer {
                    what: "the device list",
                    reason: format!("{} devices on a page of {PAGE_SIZE}", devices.len()),
                });
            }
            let full_page = devices.len() == PAGE_SIZE;
            for device in devices {
                let exact = device
                    .serial_number
                    .as_deref()
                    .is_some_and(|s| s.trim().eq_ignore_ascii_case(serial));
                match device.device_id {
                    // A device seen on two pages (the list changed while paging) counts once.
                    Some(id) if exact && !ids.contains(&id) => ids.push(id),
                    _ => {}
                }
            }
            if !full_page {
                return Ok(ids);
            }
        }
        if ids.is_empty() {
            return Err(KandjiError::TooManyMatches {
                pages: self.settings.max_pages.max(1),
            });
        }
        tracing::warn!(
            source = %self.settings.name,
            pages = self.settings.max_pages,
            "Kandji lists more devices containing the serial than the station pages through; \
             using the exact matches found"
        );
        Ok(ids)
    }

    fn base(&self) -> &str {
        self.settings.api_url.trim_end_matches('/')
    }

    async fn get(&self, url: &str) -> Result<HttpResponse, KandjiError> {
        let headers = [
            (
                "authorization".to_string(),
                format!("Bearer {}", self.settings.token.expose()),
            ),
            ("accept".to_string(), "application/json".to_string()),
        ];
        Ok(self.http.get(url, &headers).await?)
    }
}

fn failure(response: &HttpResponse, what: &'static str, permission: &'static str) -> KandjiError {
    match response.status {
        401 => KandjiError::Unauthorized,
        403 => KandjiError::Forbidden { what, permission },
        429 => KandjiError::Throttled,
        status => {
            // Kandji errors are `{"detail": "..."}`; anything else is not quoted.
            let message = serde_json::from_slice::<serde_json::Value>(&response.body)
                .ok()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(scrubbed))
                .unwrap_or_default();
            KandjiError::Service {
                status,
                what,
                message,
            }
        }
    }
}

/// Every decoder of a Kandji answer body, for the fuzz target `kandji_answer`
/// (fuzz/fuzz_targets/kandji_answer.rs): the device list (bare or wrapped), the device
/// secrets and their two bypass codes, and the error each refused status makes of the body.
/// Not used by the station itself.
#[doc(hidden)]
pub fn decode_answer_for_fuzzing(body: &[u8]) {
    if let Ok(DeviceList::Bare(devices) | DeviceList::Wrapped { results: devices }) =
        parse_json::<DeviceList>(body)
    {
        for device in devices {
            let _ = device
                .serial_number
                .as_deref()
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("C39XK0AAJC67"));
            let _ = device.device_id.map(|id| encode_component(&id));
        }
    }
    if let Ok(secrets) = parse_json::<Secrets>(body) {
        for text in [secrets.user_based_albc, secrets.device_based_albc]
            .into_iter()
            .flatten()
        {
            let _ = BypassCode::parse(&text).map(|code| code.reveal());
        }
    }
    for status in [401, 403, 429, 500] {
        let response = HttpResponse {
            status,
            headers: Vec::new(),
            body: body.to_vec(),
        };
        let _ = failure(&response, "fuzzing", "fuzzing").to_string();
    }
}

impl CodeLookup for Kandji {
    fn lookup<'a>(
        &'a self,
        serial: &'a str,
        _udid: &'a str,
    ) -> BoxFuture<'a, Result<Lookup, LookupError>> {
        Box::pin(async move { Ok(self.fetch(serial).await?) })
    }
}

impl CodeSource for Kandji {
    type Config = KandjiSource;

    fn from_config(config: &KandjiSource, context: &BuildContext<'_>) -> Result<Self, String> {
        Kandji::new(KandjiSettings {
            name: context.name.to_string(),
            api_url: config.api_url.clone(),
            token: config
                .token
                .load_from(context.env)
                .map_err(|e| format!("token: {e}"))?,
            timeout: MDM_REQUEST_TIMEOUT,
            retry: context.retry,
            max_pages: DEFAULT_MAX_PAGES,
        })
        .map_err(|e| e.to_string())
    }

    fn describe(config: &KandjiSource) -> Description {
        Description {
            detail: format!("{}, token from {}", config.api_url, config.token.describe()),
            warning: None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against the simulator's stand-in Kandji API ([`station_sim::KandjiServer`], the same
    //! one a bench runs), started alone with the devices each test needs.

    use super::*;
    use station_sim::{KandjiDevice, KandjiServer, KandjiSpec};

    const TOKEN: &str = "kandji-token-0123456789abcdef";
    const SERIAL: &str = "C8TJ500QF1MN";
    const GOOD: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
    const OTHER: &str = "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86";

    /// Kandji's device list as the API sends it: a bare array of devices with many more
    /// fields than the station reads (docs/mdm.md §3.1).
    #[test]
    fn a_real_device_list_is_a_bare_array() {
        let body = format!(
            r#"[{{"device_id":"9f5b3a62-1c4e-4d7a-8e2b-5a6c7d8e9f01","device_name":"Loaner 14","model":"iPhone 12","serial_number":"{SERIAL}","platform":"iPhone","os_version":"17.5.1","last_check_in":"2025-03-14T09:26:53.000000Z","user":"","asset_tag":"","blueprint_id":"4c0f1d2e-3b4a-5c6d-7e8f-9a0b1c2d3e4f","mdm_enabled":true,"agent_installed":false,"is_missing":false,"is_removed":false,"first_enrollment":"2024-09-02 08:11:40.000000+00:00"}}]"#
        );
        let list: DeviceList = parse_json(body.as_bytes()).expect("a real list parses");
        let DeviceList::Bare(devices) = list else {
            panic!("read as the wrapped form");
        };
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].serial_number.as_deref(), Some(SERIAL));
        assert_eq!(
            devices[0].device_id.as_deref(),
            Some("9f5b3a62-1c4e-4d7a-8e2b-5a6c7d8e9f01")
        );
    }

    /// `secrets/bypasscode`: both codes as strings, the organisation-linked one often empty.
    #[test]
    fn a_real_secrets_object_carries_both_codes() {
        let body = format!(r#"{{"user_based_albc":"{GOOD}","device_based_albc":""}}"#);
        let secrets: Secrets = parse_json(body.as_bytes()).expect("a real secrets object parses");
        assert_eq!(secrets.user_based_albc.as_deref(), Some(GOOD));
        assert_eq!(secrets.device_based_albc.as_deref(), Some(""));
    }

    /// The stand-in Kandji API with a partial match of the serial listed first: the serial
    /// filter matches partially, like the real one.
    async fn server() -> KandjiServer {
        let spec = KandjiSpec {
            token: Some(TOKEN.into()),
            ..KandjiSpec::default()
        };
        let devices = vec![
            KandjiDevice::new("dev-partial", "C8TJ500QF1MNX")
                .with_user_based_albc("J4DNT-6VT2Y-3LD8-1VV7-AT3U-LW17"),
            KandjiDevice::new("dev-1", SERIAL)
                .with_user_based_albc(GOOD)
                .with_device_based_albc(OTHER),
            KandjiDevice::new("dev-other", "F2L000000001"),
            KandjiDevice::new("dev-empty", "F2LEMPTY0001"),
            KandjiDevice::new("dev-gone", "F2LGONE00001").without_secrets(),
        ];
        KandjiServer::start(&spec, 1, devices)
            .await
            .expect("the stand-in starts")
    }

    fn client(url: &str, token: &str) -> Kandji {
        Kandji::new(KandjiSettings {
            name: "acme-kandji".into(),
            api_url: format!("{url}/"),
            token: SecretString::new(token),
            timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                attempts: 2,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
            },
            max_pages: DEFAULT_MAX_PAGES,
        })
        .expect("client")
    }

    #[tokio::test]
    async fn both_code_kinds_of_the_exact_serial() {
        let server = server().await;
        let lookup = client(server.url(), TOKEN)
            .fetch(SERIAL)
            .await
            .expect("lookup");
        let codes: Vec<(String, CodeKind, &str)> = lookup
            .codes
            .iter()
            .map(|c| (c.code.reveal(), c.kind, c.source.as_str()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (GOOD.to_string(), CodeKind::Device, "acme-kandji"),
                (OTHER.to_string(), CodeKind::Server, "acme-kandji"),
            ]
        );
        // The partial match was never asked for its secrets.
        let asked: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(
            asked,
            vec![
                "/api/v1/devices",
                "/api/v1/devices/dev-1/secrets/bypasscode"
            ]
        );
        assert_eq!(
            server.requests()[0].query_value("serial_number"),
            Some(SERIAL)
        );

        let lookup = client(server.url(), TOKEN)
            .fetch("F2LNOTKNOWN1")
            .await
            .expect("lookup");
        assert!(!lookup.known && lookup.codes.is_empty());
        assert_eq!(
            lookup.absent,
            ["not in Kandji (acme-kandji): no device with the serial (deleted, or never enrolled there)"]
        );
    }

    /// A device without codes, and one whose `secrets/bypasscode` answers 404: both known,
    /// both say why there is no code.
    #[tokio::test]
    async fn a_known_device_without_a_code_says_so() {
        let server = server().await;
        let kandji = client(server.url(), TOKEN);
        let gone = kandji.fetch("F2LGONE00001").await.expect("lookup");
        assert!(gone.known && gone.codes.is_empty());
        assert_eq!(
            gone.absent,
            ["known to Kandji (acme-kandji), no code: secrets/bypasscode answered 404 (the code was removed by a reset, or never escrowed)"]
        );
        let empty = kandji.fetch("F2LEMPTY0001").await.expect("lookup");
        assert!(empty.known && empty.codes.is_empty());
        assert_eq!(
            empty.absent,
            ["known to Kandji (acme-kandji), no code: its secrets hold no bypass code"]
        );
    }

    /// A tenant where the serial's partial matches fill more than two pages: the station
    /// pages with `ordering=serial_number`, `limit=300` and a growing `offset` until a short
    /// page, and finds the exact device on the third page (held first, so only the ordered
    /// list puts it there).
    #[tokio::test]
    async fn a_serial_past_the_first_page_is_found() {
        let spec = KandjiSpec {
            token: Some(TOKEN.into()),
            ..KandjiSpec::default()
        };
        let mut devices = vec![KandjiDevice::new("dev-exact", SERIAL).with_user_based_albc(GOOD)];
        // Serials containing SERIAL that sort before it.
        devices.extend(
            (0..650).map(|i| KandjiDevice::new(&format!("dev-{i}"), &format!("0{i:03}{SERIAL}"))),
        );
        let server = KandjiServer::start(&spec, 1, devices)
            .await
            .expect("the stand-in starts");
        let lookup = client(server.url(), TOKEN)
            .fetch(SERIAL)
            .await
            .expect("lookup");
        let codes: Vec<String> = lookup.codes.iter().map(|c| c.code.reveal()).collect();
        assert_eq!(codes, [GOOD]);
        let lists: Vec<_> = server
            .requests()
            .into_iter()
            .filter(|r| r.path == "/api/v1/devices")
            .collect();
        let offsets: Vec<Option<&str>> = lists.iter().map(|r| r.query_value("offset")).collect();
        assert_eq!(offsets, [Some("0"), Some("300"), Some("600")]);
        for list in &lists {
            assert_eq!(list.query_value("ordering"), Some("serial_number"));
            assert_eq!(list.query_value("limit"), Some("300"));
            assert_eq!(list.query_value("serial_number"), Some(SERIAL));
        }
    }

    /// Exactly a page of matches: the next page is empty, and the station stops there.
    /// More full pages than the cap, none with the serial: an error, not "not in Kandji".
    #[tokio::test]
    async fn paging_stops_at_an_empty_page_and_at_the_cap() {
        let spec = KandjiSpec {
            token: Some(TOKEN.into()),
            ..KandjiSpec::default()
        };
        let devices: Vec<KandjiDevice> = (0..600)
            .map(|i| KandjiDevice::new(&format!("dev-{i}"), &format!("{SERIAL}{i:03}")))
            .collect();
        let server = KandjiServer::start(&spec, 1, devices)
            .await
            .expect("the stand-in starts");
        let mut kandji = client(server.url(), TOKEN);
        kandji.settings.max_pages = 3;
        let lookup = kandji.fetch(SERIAL).await.expect("lookup");
        assert!(!lookup.known && lookup.codes.is_empty());
        let offsets: Vec<String> = server
            .requests()
            .iter()
            .filter_map(|r| r.query_value("offset").map(str::to_string))
            .collect();
        assert_eq!(offsets, ["0", "300", "600"]);

        server.clear_requests();
        kandji.settings.max_pages = 2;
        let err = kandji.fetch(SERIAL).await.expect_err("past the cap");
        assert!(
            matches!(err, KandjiError::TooManyMatches { pages: 2 }),
            "{err}"
        );
        assert_eq!(server.requests().len(), 2);
    }

    #[tokio::test]
    async fn a_bad_token_and_a_missing_permission_are_named() {
        let server = server().await;
        let err = client(server.url(), "wrong-token-abcdef0123456789")
            .fetch(SERIAL)
            .await
            .expect_err("401");
        assert!(matches!(err, KandjiError::Unauthorized), "{err}");
        assert!(!err.to_string().contains("wrong-token"));
        server.set_secrets_permission(false);
        let err = client(server.url(), TOKEN)
            .fetch(SERIAL)
            .await
            .expect_err("403");
        assert!(err.to_string().contains("Device secrets"), "{err}");
    }
}
