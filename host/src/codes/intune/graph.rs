//! The Graph queries: `managedDevices` by serial number (pages followed, on Graph's host
//! only), one GET per record for its `$select`-only fields, and the `bypassActivationLock`
//! action; a token Graph finds expired is renewed once.

use serde::Deserialize;
use station_protocol::bypass_code::BypassCode;

use super::{Intune, IntuneError, ACTION, ACTION_PERMISSION, READ_PERMISSION};
use crate::codes::answer::{encode_component, service_error};
use crate::codes::{ActionState, CodeKind, Lookup, SourcedCode};
use crate::http::HttpResponse;

/// Pages of a device list followed at most: a Graph that ignores the filter lists the whole
/// tenant, about 1000 devices a page.
pub(super) const MAX_PAGES: usize = 100;
const LIST_SELECT: &str = "id,serialNumber,enrolledDateTime";
const DEVICE_SELECT: &str = "id,serialNumber,udid,activationLockBypassCode";
/// The record again after the action: its code and the action's progress (docs/mdm.md §1.3).
const ACTION_SELECT: &str = "id,serialNumber,activationLockBypassCode,deviceActionResults";

/// A record read again after `bypassActivationLock`.
#[derive(Debug, Clone, Default)]
pub struct ActionStatus {
    pub(super) code: Option<String>,
    /// The newest `bypassActivationLock` entry of `deviceActionResults`.
    pub result: Option<ActionResult>,
}

/// One `deviceActionResults` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionResult {
    pub state: ActionState,
    /// `startDateTime` as Graph wrote it: tells this action from an earlier one.
    pub started: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusDetail {
    serial_number: Option<String>,
    activation_lock_bypass_code: Option<String>,
    #[serde(default)]
    device_action_results: Option<Vec<DeviceActionResult>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceActionResult {
    action_name: Option<String>,
    action_state: Option<String>,
    start_date_time: Option<String>,
}

/// One managed-device record of the serial, with its `$select`-only fields.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    pub id: String,
    pub udid: Option<String>,
    pub enrolled: Option<String>,
    pub(super) code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    #[serde(default)]
    value: Vec<ListedDevice>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedDevice {
    id: Option<String>,
    serial_number: Option<String>,
    enrolled_date_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceDetail {
    serial_number: Option<String>,
    udid: Option<String>,
    activation_lock_bypass_code: Option<String>,
}

impl Intune {
    /// The codes of every record of `serial`, the record with this `udid` first.
    pub async fn fetch(&self, serial: &str, udid: &str) -> Result<Lookup, IntuneError> {
        let records = self.records(serial, udid).await?;
        let mut lookup = Lookup {
            known: !records.is_empty(),
            ..Lookup::default()
        };
        for record in &records {
            let Some(text) = record.code.as_deref().filter(|c| !c.trim().is_empty()) else {
                continue;
            };
            match BypassCode::parse(text) {
                Ok(code) => lookup.push(SourcedCode {
                    code,
                    kind: CodeKind::Device,
                    source: self.settings.name.clone(),
                }),
                // The error names a position at most, never the code.
                Err(e) => tracing::warn!(
                    source = %self.settings.name,
                    device = %record.id,
                    error = %e,
                    "Intune holds an unreadable bypass code; skipped"
                ),
            }
        }
        let name = &self.settings.name;
        lookup.explain_absence(|| {
            if records.is_empty() {
                format!("not in Intune ({name}): no record of the serial (record deleted by a clean-up rule or a retirement, or the phone was never enrolled there)")
            } else {
                format!("in Intune ({name}) without a code: the code was removed by a reset before it was copied, expired, or was never escrowed (the phone not supervised with Activation Lock allowed)")
            }
        });
        tracing::debug!(
            source = %self.settings.name,
            serial,
            records = records.len(),
            codes = lookup.codes.len(),
            "Intune lookup done"
        );
        Ok(lookup)
    }

    /// Sends `bypassActivationLock` for the phone's record (the one with its UDID, else the
    /// most recently enrolled). `Ok(None)` when Intune has no record of the serial.
    pub async fn bypass_activation_lock(
        &self,
        serial: &str,
        udid: &str,
    ) -> Result<Option<String>, IntuneError> {
        let records = self.records(serial, udid).await?;
        let Some(record) = records.first() else {
            return Ok(None);
        };
        self.send_action(serial, &record.id).await?;
        Ok(Some(record.id.clone()))
    }

    /// The bodyless POST of `bypassActivationLock` for record `id`.
    pub(super) async fn send_action(&self, serial: &str, id: &str) -> Result<(), IntuneError> {
        let url = format!(
            "{}/v1.0/deviceManagement/managedDevices/{}/{ACTION}",
            self.settings.graph_root,
            encode_component(id)
        );
        let response = self
            .graph(reqwest::Method::POST, &url, ACTION_PERMISSION)
            .await?;
        match response.status {
            200..=299 => {
                tracing::info!(source = %self.settings.name, serial, device = %id, "Intune {ACTION} sent");
                Ok(())
            }
            _ => Err(graph_failure(&response, ACTION_PERMISSION)),
        }
    }

    /// Record `id` read again: its code and the newest `bypassActivationLock` result of
    /// `deviceActionResults`. `Ok(None)` when the record is gone.
    pub(super) async fn action_status(
        &self,
        id: &str,
        serial: &str,
    ) -> Result<Option<ActionStatus>, IntuneError> {
        let url = format!(
            "{}/v1.0/deviceManagement/managedDevices/{}?$select={ACTION_SELECT}",
            self.settings.graph_root,
            encode_component(id)
        );
        let response = self
            .graph(reqwest::Method::GET, &url, READ_PERMISSION)
            .await?;
        match response.status {
            200 => {}
            404 => return Ok(None),
            _ => return Err(graph_failure(&response, READ_PERMISSION)),
        }
        let detail: StatusDetail = parse_json(&response.body, "Graph's device record")?;
        if !detail
            .serial_number
            .as_deref()
            .is_some_and(|s| s.trim().eq_ignore_ascii_case(serial))
        {
            return Ok(None);
        }
        Ok(Some(ActionStatus {
            code: detail.activation_lock_bypass_code,
            result: newest_action_result(detail.device_action_results.unwrap_or_default()),
        }))
    }

    /// The serial's records with their `$select`-only fields: UDID match first, then the
    /// most recently enrolled.
    pub async fn records(
        &self,
        serial: &str,
        udid: &str,
    ) -> Result<Vec<DeviceRecord>, IntuneError> {
        let serial = serial.trim();
        let mut records = Vec::new();
        for listed in self.list(serial).await? {
            if let Some(record) = self.device(&listed.0, serial, listed.1).await? {
                records.push(record);
            }
        }
        let wanted = station_protocol::udid::normalise_udid(udid);
        let matches = |r: &DeviceRecord| {
            r.udid
                .as_deref()
                .is_some_and(|u| station_protocol::udid::normalise_udid(u) == wanted)
        };
        records.sort_by(|a, b| {
            matches(b)
                .cmp(&matches(a))
                .then_with(|| b.enrolled.cmp(&a.enrolled))
        });
        Ok(records)
    }

    /// Ids (and enrolment dates) of the listed devices whose serial really is `serial`.
    async fn list(&self, serial: &str) -> Result<Vec<(String, Option<String>)>, IntuneError> {
        let filter = format!("serialNumber eq '{}'", serial.replace('\'', "''"));
        let mut url = format!(
            "{}/v1.0/deviceManagement/managedDevices?$filter={}&$select={LIST_SELECT}",
            self.settings.graph_root,
            encode_component(&filter)
        );
        let mut found = Vec::new();
        let mut ignored = 0usize;
        for _ in 0..MAX_PAGES {
            let response = self
                .graph(reqwest::Method::GET, &url, READ_PERMISSION)
                .await?;
            if response.status != 200 {
                return Err(graph_failure(&response, READ_PERMISSION));
            }
            let page: ListPage = parse_json(&response.body, "Graph's device list")?;
            for device in page.value {
                let same = device
                    .serial_number
                    .as_deref()
                    .is_some_and(|s| s.trim().eq_ignore_ascii_case(serial));
                match device.id {
                    Some(id) if same => found.push((id, device.enrolled_date_time)),
                    _ => ignored += 1,
                }
            }
            match page.next_link {
                Some(next) => {
                    self.check_origin(&next)?;
                    url = next;
                }
                None => {
                    if ignored > 0 {
                        // Graph ignored (part of) the filter: worth knowing, not an error.
                        tracing::debug!(source = %self.settings.name, serial, ignored, "Graph listed devices of other serials; ignored");
                    }
                    return Ok(found);
                }
            }
        }
        Err(IntuneError::TooManyPages)
    }

    /// One record with its code; `None` when it vanished or is another serial's.
    async fn device(
        &self,
        id: &str,
        serial: &str,
        enrolled: Option<String>,
    ) -> Result<Option<DeviceRecord>, IntuneError> {
        let url = format!(
            "{}/v1.0/deviceManagement/managedDevices/{}?$select={DEVICE_SELECT}",
            self.settings.graph_root,
            encode_component(id)
        );
        let response = self
            .graph(reqwest::Method::GET, &url, READ_PERMISSION)
            .await?;
        match response.status {
            200 => {}
            404 => {
                tracing::debug!(source = %self.settings.name, device = id, "record vanished between list and GET");
                return Ok(None);
            }
            _ => return Err(graph_failure(&response, READ_PERMISSION)),
        }
        let detail: DeviceDetail = parse_json(&response.body, "Graph's device record")?;
        if !detail
            .serial_number
            .as_deref()
            .is_some_and(|s| s.trim().eq_ignore_ascii_case(serial))
        {
            tracing::warn!(source = %self.settings.name, device = id, "record's serial differs from its listing; ignored");
            return Ok(None);
        }
        Ok(Some(DeviceRecord {
            id: id.to_string(),
            udid: detail.udid,
            enrolled,
            code: detail.activation_lock_bypass_code,
        }))
    }

    /// A next-page link must not carry the token to another host.
    fn check_origin(&self, link: &str) -> Result<(), IntuneError> {
        let origin = |u: &str| reqwest::Url::parse(u).ok().map(|u| u.origin());
        let link_origin = origin(link);
        if link_origin.is_some() && link_origin == origin(&self.settings.graph_root) {
            Ok(())
        } else {
            Err(IntuneError::ForeignLink {
                origin: link_origin
                    .map_or_else(|| "an unreadable URL".into(), |o| o.ascii_serialization()),
            })
        }
    }

    /// One Graph request with the app's token; a 401 renews the token once (it may have
    /// expired early or been revoked).
    async fn graph(
        &self,
        method: reqwest::Method,
        url: &str,
        permission: &'static str,
    ) -> Result<HttpResponse, IntuneError> {
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let headers = [
                (
                    "authorization".to_string(),
                    format!("Bearer {}", token.expose()),
                ),
                ("accept".to_string(), "application/json".to_string()),
            ];
            let response = self.http.send(method.clone(), url, &headers, &[]).await?;
            if response.status == 401 && !renewed {
                let code = service_error(&response.body)
                    .map(|e| e.0)
                    .unwrap_or_default();
                tracing::debug!(source = %self.settings.name, code, permission, "Graph refused the token; renewing it once");
                self.forget_token(&token).await;
                renewed = true;
                continue;
            }
            return Ok(response);
        }
    }
}

/// The newest `bypassActivationLock` entry (Graph's timestamps sort as text).
fn newest_action_result(results: Vec<DeviceActionResult>) -> Option<ActionResult> {
    results
        .into_iter()
        .filter(|r| {
            r.action_name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(ACTION))
        })
        .map(|r| ActionResult {
            state: ActionState::from_graph(r.action_state.as_deref().unwrap_or("")),
            started: r.start_date_time.unwrap_or_default(),
        })
        .max_by(|a, b| a.started.cmp(&b.started))
}

/// The error for a Graph answer that is not a success; the body is never quoted whole.
fn graph_failure(response: &HttpResponse, permission: &'static str) -> IntuneError {
    let (code, message) = service_error(&response.body).unwrap_or_default();
    match response.status {
        // Only after the token was renewed once (see `graph`).
        401 => IntuneError::TokenRejected { code, message },
        403 => IntuneError::Permission {
            status: response.status,
            code,
            message,
            permission,
        },
        429 => IntuneError::Throttled {
            retry_after: response.retry_after(),
        },
        status => IntuneError::Service {
            status,
            code,
            message,
        },
    }
}

/// Every decoder of a Graph answer body, for the fuzz target `graph_answer`
/// (fuzz/fuzz_targets/graph_answer.rs): the device list and its next link, a device record
/// and its bypass code, and the error each refused status makes of the body (Entra ID's
/// OAuth2 errors included). Not used by the station itself.
#[doc(hidden)]
pub fn decode_answer_for_fuzzing(body: &[u8]) {
    if let Ok(page) = parse_json::<ListPage>(body, "fuzzing") {
        for device in &page.value {
            let _ = device
                .serial_number
                .as_deref()
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("C39XK0AAJC67"));
        }
        if let Some(link) = &page.next_link {
            let _ = reqwest::Url::parse(link).map(|u| u.origin().ascii_serialization());
        }
    }
    if let Ok(detail) = parse_json::<DeviceDetail>(body, "fuzzing") {
        if let Some(text) = detail.activation_lock_bypass_code.as_deref() {
            let _ = BypassCode::parse(text).map(|code| code.reveal());
        }
        if let Some(udid) = detail.udid.as_deref() {
            let _ = station_protocol::udid::normalise_udid(udid);
        }
    }
    for status in [401, 403, 429, 500] {
        let response = HttpResponse {
            status,
            headers: Vec::new(),
            body: body.to_vec(),
        };
        let _ = graph_failure(&response, READ_PERMISSION).to_string();
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &'static str,
) -> Result<T, IntuneError> {
    crate::codes::answer::parse_json(body).map_err(|reason| IntuneError::BadAnswer { what, reason })
}
