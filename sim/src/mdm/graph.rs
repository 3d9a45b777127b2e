//! The stand-in Microsoft Graph: `deviceManagement/managedDevices` under `/v1.0` and
//! `/beta` (docs/mdm.md §1.1–1.4, §1.7).
//!
//! - list: `$filter=serialNumber eq '…'` (and `operatingSystem eq '…'`, joined by `and`)
//!   is honoured; any other filter is silently ignored and everything is returned, as Graph
//!   does; `$select` and `$top` are honoured; pages link on with `@odata.nextLink`;
//!   `activationLockBypassCode` is always null here, even when selected;
//! - `GET managedDevices/{id}` (or `managedDevices('{id}')`): the code only when
//!   `$select` names it;
//! - `POST managedDevices/{id}/bypassActivationLock`: 204; what it then does is the world's
//!   reading of Microsoft's two descriptions (docs/mdm.md §1.3): "submits the stored code"
//!   (default) releases the phone's `mdm` lock only when the record's code is the phone's
//!   current one, "refreshes the code" puts the phone's current code on the record and
//!   releases nothing; neither helps a record without a code, and a record not supervised
//!   through ADE gets nothing done. `deviceActionResults` shows the action `pending`, then
//!   `done`, `failed` or `notSupported`, after `bypass_delay_ms`; a POST that declares no
//!   length (neither `Content-Length` nor `Transfer-Encoding`) gets 411, as Graph's
//!   HTTP/1.1 front end answers (docs/mdm.md §1.3);
//! - Intune's own errors (403, 404, 5xx of `managedDevices`) carry a JSON document inside
//!   `error.message`, as the real service's do (docs/mdm.md §1.8).
//!
//! `udid` and a few other properties are `$select`-only: null unless selected.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::intune::{IntuneInner, IntuneRecord};
use super::service::{outcome_for, unix_now, utc_timestamp, Answer, MdmOutcome, Req};
use crate::world::mdm::{PRIVILEGED_PERMISSION, READ_PERMISSIONS};

const JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// Graph's largest `$top` for managed devices.
const MAX_TOP: usize = 1000;

/// A Graph error answer: `{"error": {"code", "message", "innerError"}}`.
fn graph_error(status: u16, code: &str, message: &str, outcome: MdmOutcome) -> Answer {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": utc_timestamp(unix_now()),
                "request-id": uuid::Uuid::new_v4().hyphenated().to_string(),
                "client-request-id": uuid::Uuid::new_v4().hyphenated().to_string(),
            }
        }
    });
    Answer::json(status, JSON, &body, outcome)
}

fn bad_request(message: &str) -> Answer {
    graph_error(
        400,
        "BadRequest",
        message,
        MdmOutcome::BadRequest {
            reason: message.to_string(),
        },
    )
}

/// An error raised by Intune behind Graph: `error.message` is itself a JSON document whose
/// `Message` ends in the support identifiers and the Intune URL (docs/mdm.md §1.8).
fn intune_error(status: u16, code: &str, message: &str, outcome: MdmOutcome) -> Answer {
    let operation = uuid::Uuid::new_v4().hyphenated().to_string();
    let activity = uuid::Uuid::new_v4().hyphenated().to_string();
    let inner = json!({
        "_version": 3,
        "Message": format!(
            "{message} - Operation ID (for customer support): {operation} - Activity ID: {activity} - Url: https://fef.msua06.manage.microsoft.com/DeviceFE/StatelessDeviceFEService/deviceManagement/managedDevices?api-version=2024-01-01"
        ),
        "CustomApiErrorPhrase": "",
        "RetryAfter": null,
        "ErrorSourceService": "",
        "HttpHeaders": "{}",
    });
    graph_error(status, code, &inner.to_string(), outcome)
}

/// Throttling and injected failures; a throttled request is answered by Graph's gateway,
/// anything else by Intune.
pub(crate) fn error_answer(status: u16, message: &str) -> Answer {
    let code = match status {
        429 => {
            return graph_error(
                status,
                "TooManyRequests",
                message,
                outcome_for(status, message),
            )
        }
        503 => "ServiceNotAvailable",
        504 => "GatewayTimeout",
        _ => "InternalServerError",
    };
    intune_error(status, code, message, outcome_for(status, message))
}

/// Which resource a path names.
enum Resource<'a> {
    List,
    One(&'a str),
    BypassActivationLock(&'a str),
}

/// `/{v1.0|beta}/deviceManagement/managedDevices[/{id}|('{id}')][/bypassActivationLock]`;
/// segment names compare case-insensitively, as Graph's do.
/// Errors are boxed: an answer is large, and these are the rare path.
fn resource(path: &str) -> Result<(&str, Resource<'_>), Box<Answer>> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let not_found = |segment: &str| {
        Box::new(bad_request(&format!(
            "Resource not found for the segment '{segment}'."
        )))
    };
    let Some((&version, rest)) = segments.split_first() else {
        return Err(not_found(""));
    };
    if version != "v1.0" && version != "beta" {
        return Err(Box::new(graph_error(
            404,
            "NotFound",
            &format!("Invalid version: {version}"),
            MdmOutcome::NotFound,
        )));
    }
    match rest {
        [dm, ..] if !dm.eq_ignore_ascii_case("deviceManagement") => Err(not_found(dm)),
        [_, devices, tail @ ..] => {
            let lower = devices.to_ascii_lowercase();
            // `managedDevices('id')` puts the key in the same segment.
            let (key, tail) = if let Some(inner) = lower
                .strip_prefix("manageddevices(")
                .and_then(|k| k.strip_suffix(')'))
            {
                let start = "manageddevices(".len();
                let raw = &devices[start..start + inner.len()];
                (Some(raw.trim_matches('\'')), tail)
            } else if lower == "manageddevices" {
                match tail {
                    [] => (None, tail),
                    [id, tail @ ..] => (Some(*id), tail),
                }
            } else {
                return Err(not_found(devices));
            };
            match (key, tail) {
                (None, []) => Ok((version, Resource::List)),
                (Some(id), []) if !id.is_empty() => Ok((version, Resource::One(id))),
                (Some(id), [action])
                    if action.eq_ignore_ascii_case("bypassActivationLock")
                        || action.eq_ignore_ascii_case("microsoft.graph.bypassActivationLock") =>
                {
                    Ok((version, Resource::BypassActivationLock(id)))
                }
                (_, [other, ..]) => Err(not_found(other)),
                _ => Err(not_found(devices)),
            }
        }
        [other] => Err(not_found(other)),
        [] => Err(not_found("")),
    }
}

pub(crate) fn route(inner: &IntuneInner, req: &Req) -> Answer {
    if let Some(version) = batch_path(req.path) {
        return batch(inner, req, version);
    }
    let (version, resource) = match resource(req.path) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    let wanted = match resource {
        Resource::List | Resource::One(_) => "GET",
        Resource::BypassActivationLock(_) => "POST",
    };
    if req.method != wanted {
        return graph_error(
            405,
            "BadRequest",
            &format!("The HTTP method '{}' is not allowed here.", req.method),
            MdmOutcome::MethodNotAllowed,
        )
        .with_header("Allow", wanted);
    }
    if req.method == "POST" && !req.declares_length {
        let message = "Length Required: a POST must carry Content-Length (0 when it has no body).";
        return graph_error(
            411,
            "LengthRequired",
            message,
            MdmOutcome::BadRequest {
                reason: message.to_string(),
            },
        );
    }
    let roles = match authorize(inner, req) {
        Ok(roles) => roles,
        Err(answer) => return *answer,
    };
    match resource {
        Resource::List | Resource::One(_) => {
            if !roles.iter().any(|r| READ_PERMISSIONS.contains(&r.as_str())) {
                return forbidden(&READ_PERMISSIONS);
            }
            match resource {
                Resource::One(id) => one(inner, req, version, id),
                _ => list(inner, req, version),
            }
        }
        Resource::BypassActivationLock(id) => {
            if !roles.iter().any(|r| r == PRIVILEGED_PERMISSION) {
                return forbidden(&[PRIVILEGED_PERMISSION]);
            }
            let Some(record) = find(inner, id) else {
                return not_found(id);
            };
            let (delay, reading) = {
                let settings = inner.settings();
                (settings.bypass_delay, settings.bypass_reading)
            };
            let (id, serial) = (&record.device.id, &record.device.serial);
            let outcome = record.bypass_activation_lock(reading, delay);
            tracing::info!(%id, %serial, ?reading, ?delay, outcome, "bypassActivationLock accepted");
            Answer::empty(204, MdmOutcome::Ok)
        }
    }
}

/// Graph's limit of requests in one `$batch` (docs/mdm.md §1.7).
pub(crate) const MAX_BATCH: usize = 20;

/// `/{v1.0|beta}/$batch`: the version.
fn batch_path(path: &str) -> Option<&str> {
    let (version, rest) = path.trim_start_matches('/').split_once('/')?;
    ((version == "v1.0" || version == "beta") && rest.eq_ignore_ascii_case("$batch"))
        .then_some(version)
}

/// JSON batching (docs/code-sources.md, "Graph JSON batching"): `{"requests": [{"id",
/// "method", "url"}, …]}`, at most 20, each answered as if sent alone with the batch's
/// token, in `{"responses": [{"id", "status", "headers", "body"}, …]}`. Each inner request
/// counts against the budget and may be throttled (or injected a 404) on its own, so a batch
/// answered 200 can hold 429s.
fn batch(inner: &IntuneInner, req: &Req, version: &str) -> Answer {
    if req.method != "POST" {
        return graph_error(
            405,
            "BadRequest",
            &format!("The HTTP method '{}' is not allowed here.", req.method),
            MdmOutcome::MethodNotAllowed,
        )
        .with_header("Allow", "POST");
    }
    if !req
        .content_type
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json"))
    {
        return bad_request("Invalid batch payload format: Content-Type must be application/json.");
    }
    let Ok(payload) = serde_json::from_slice::<Value>(req.body) else {
        return bad_request("Invalid batch payload format.");
    };
    let Some(requests) = payload.get("requests").and_then(Value::as_array) else {
        return bad_request("Invalid batch payload format: no requests array.");
    };
    if requests.is_empty() {
        return bad_request("Invalid batch payload format: the batch holds no request.");
    }
    if requests.len() > MAX_BATCH {
        return bad_request(&format!(
            "Number of batch request steps exceeds the maximum of {MAX_BATCH}."
        ));
    }
    let mut steps = Vec::with_capacity(requests.len());
    for step in requests {
        let field = |name: &str| {
            step.get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        };
        let (Some(id), Some(method), Some(url)) = (field("id"), field("method"), field("url"))
        else {
            return bad_request(
                "Invalid batch payload format: every request needs an id, a method and a url.",
            );
        };
        if steps.iter().any(|(other, _, _)| *other == id) {
            return bad_request(&format!(
                "Invalid batch payload format: request id '{id}' is used twice."
            ));
        }
        if url.contains("://") {
            return bad_request("Invalid batch payload format: urls are relative to the version.");
        }
        steps.push((id, method.to_ascii_uppercase(), url));
    }
    // The batch request itself was counted as it arrived; each inner request counts too.
    inner.graph_core.count(req.at, steps.len() - 1);
    let mut responses = Vec::with_capacity(steps.len());
    for (id, method, url) in steps {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let path = format!("/{version}/{}", path.trim_start_matches('/'));
        let query: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let answer = if batch_path(&path).is_some() {
            bad_request("A batch cannot hold a batch.")
        } else {
            match inner_fault(inner) {
                Some(answer) => answer,
                None => route(
                    inner,
                    &Req {
                        at: req.at,
                        method: &method,
                        path: &path,
                        query: &query,
                        authorization: req.authorization,
                        content_type: None,
                        declares_length: true,
                        body: &[],
                    },
                ),
            }
        };
        inner
            .graph_core
            .log_inner(&method, &path, &query, &answer, req.at);
        let mut headers = Map::new();
        if let Some(content_type) = answer.content_type {
            headers.insert("Content-Type".into(), content_type.into());
        }
        for (name, value) in &answer.headers {
            headers.insert(name.clone(), value.clone().into());
        }
        let mut response = Map::new();
        response.insert("id".into(), id.into());
        response.insert("status".into(), answer.status.into());
        response.insert("headers".into(), Value::Object(headers));
        if !answer.body.is_empty() {
            let body = serde_json::from_slice::<Value>(&answer.body).unwrap_or_else(|_| {
                base64::engine::general_purpose::STANDARD
                    .encode(&answer.body)
                    .into()
            });
            response.insert("body".into(), body);
        }
        responses.push(Value::Object(response));
    }
    Answer::json(
        200,
        JSON,
        &json!({ "responses": responses }),
        MdmOutcome::Ok,
    )
}

/// An injected answer to one request of a batch: a 429 or a 404 (the record gone between
/// the list and the GET), as the run-time controls say.
fn inner_fault(inner: &IntuneInner) -> Option<Answer> {
    let mut settings = inner.settings();
    if settings.batch_throttle_next > 0 {
        settings.batch_throttle_next -= 1;
        let secs = settings.batch_retry_after_secs;
        let mut answer = error_answer(429, "Too many requests: retry after the advised delay.");
        answer.outcome = MdmOutcome::Throttled { early: false };
        answer
            .headers
            .push(("Retry-After".into(), secs.to_string()));
        answer.retry_after = Some(secs);
        return Some(answer);
    }
    if settings.batch_not_found_next > 0 {
        settings.batch_not_found_next -= 1;
        return Some(not_found("(removed)"));
    }
    None
}

/// The bearer token's permissions, or the 401 Graph answers.
fn authorize(inner: &IntuneInner, req: &Req) -> Result<Vec<String>, Box<Answer>> {
    let unauthorized = |message: &str| {
        Box::new(graph_error(
            401,
            "InvalidAuthenticationToken",
            message,
            MdmOutcome::Unauthorized {
                reason: message.to_string(),
            },
        )
        .with_header(
            "WWW-Authenticate",
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
        ))
    };
    let Some(token) = req.bearer() else {
        return Err(unauthorized("Access token is empty."));
    };
    match inner.token(token) {
        None => Err(unauthorized(
            "Access token validation failure. Invalid audience.",
        )),
        Some(t) if t.expires_at <= std::time::Instant::now() => Err(unauthorized(
            "Lifetime validation failed, the token is expired.",
        )),
        Some(t) => Ok(t.roles),
    }
}

fn forbidden(any_of: &[&str]) -> Answer {
    let message = format!(
        "Application is not authorized to perform this operation. Application must have one of the following scopes: {}",
        any_of.join(", ")
    );
    intune_error(
        403,
        "Forbidden",
        &message,
        MdmOutcome::Forbidden {
            missing: any_of.join(" or "),
        },
    )
}

fn not_found(id: &str) -> Answer {
    intune_error(
        404,
        "ResourceNotFound",
        &format!("Resource not found: no managedDevice with id '{id}'."),
        MdmOutcome::NotFound,
    )
}

fn find<'a>(inner: &'a IntuneInner, id: &str) -> Option<&'a IntuneRecord> {
    inner
        .records
        .iter()
        .find(|r| r.device.id.eq_ignore_ascii_case(id))
}

/// The managedDevice properties the stand-in serves, in Graph's order.
const PROPERTIES: &[&str] = &[
    "id",
    "userId",
    "deviceName",
    "managedDeviceOwnerType",
    "enrolledDateTime",
    "lastSyncDateTime",
    "operatingSystem",
    "complianceState",
    "jailBroken",
    "managementAgent",
    "osVersion",
    "easActivated",
    "easDeviceId",
    "easActivationDateTime",
    "azureADRegistered",
    "deviceEnrollmentType",
    "activationLockBypassCode",
    "emailAddress",
    "azureADDeviceId",
    "deviceRegistrationState",
    "deviceCategoryDisplayName",
    "isSupervised",
    "exchangeLastSuccessfulSyncDateTime",
    "exchangeAccessState",
    "exchangeAccessStateReason",
    "remoteAssistanceSessionUrl",
    "remoteAssistanceSessionErrorDetails",
    "isEncrypted",
    "userPrincipalName",
    "model",
    "manufacturer",
    "imei",
    "complianceGracePeriodExpirationDateTime",
    "serialNumber",
    "phoneNumber",
    "androidSecurityPatchLevel",
    "userDisplayName",
    "configurationManagerClientEnabledFeatures",
    "wiFiMacAddress",
    "deviceHealthAttestationState",
    "subscriberCarrier",
    "meid",
    "totalStorageSpaceInBytes",
    "freeStorageSpaceInBytes",
    "managedDeviceName",
    "partnerReportedThreatState",
    "iccid",
    "udid",
    "notes",
    "ethernetMacAddress",
    "physicalMemoryInBytes",
    "deviceActionResults",
];

/// How a record is being read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    List,
    Single,
}

/// One property of a record. `selected`: named by `$select`.
fn property(rec: &IntuneRecord, name: &str, selected: bool, read: Read) -> Value {
    let d = &rec.device;
    const NEVER: &str = "0001-01-01T00:00:00Z";
    match name {
        "id" => d.id.clone().into(),
        "deviceName" | "managedDeviceName" => d.device_name.clone().into(),
        "managedDeviceOwnerType" => "company".into(),
        "enrolledDateTime" => d.enrolled_at.clone().into(),
        "lastSyncDateTime" => d.last_sync_at().into(),
        "operatingSystem" => "iOS".into(),
        "complianceState" => "compliant".into(),
        "jailBroken" => "False".into(),
        "managementAgent" => "mdm".into(),
        "osVersion" => d.os_version.clone().into(),
        "easActivated" | "azureADRegistered" => false.into(),
        "easActivationDateTime" | "exchangeLastSuccessfulSyncDateTime" => NEVER.into(),
        "deviceEnrollmentType" => "appleBulkWithoutUser".into(),
        // docs/mdm.md §1.1: null in every list call, even when selected.
        "activationLockBypassCode" if selected && read == Read::Single => {
            rec.code().map_or(Value::Null, Value::from)
        }
        "deviceActionResults" => rec.action_results(),
        "azureADDeviceId" => "00000000-0000-0000-0000-000000000000".into(),
        "deviceRegistrationState" => "notRegistered".into(),
        "deviceCategoryDisplayName" => "Unknown".into(),
        "isSupervised" => d.ade_supervised.into(),
        "isEncrypted" => true.into(),
        "exchangeAccessState" | "exchangeAccessStateReason" => "none".into(),
        "model" => d.model.clone().into(),
        "manufacturer" => "Apple".into(),
        "imei" => d.imei.clone().unwrap_or_default().into(),
        "meid" => d.meid.clone().unwrap_or_default().into(),
        "complianceGracePeriodExpirationDateTime" => "9999-12-31T23:59:59Z".into(),
        "serialNumber" => d.serial.clone().into(),
        "wiFiMacAddress" => d.wifi_address.replace(':', "").into(),
        "totalStorageSpaceInBytes" => (u64::from(d.storage_gb) * 1_000_000_000).into(),
        "freeStorageSpaceInBytes" => (u64::from(d.storage_gb) * 600_000_000).into(),
        "partnerReportedThreatState" => "unknown".into(),
        "udid" if selected => d.udid.clone().map_or(Value::Null, Value::from),
        "physicalMemoryInBytes" => 0.into(),
        "userId"
        | "easDeviceId"
        | "emailAddress"
        | "userPrincipalName"
        | "phoneNumber"
        | "androidSecurityPatchLevel"
        | "userDisplayName"
        | "subscriberCarrier" => "".into(),
        _ => Value::Null,
    }
}

fn record_json(rec: &IntuneRecord, select: Option<&[String]>, read: Read) -> Map<String, Value> {
    let mut out = Map::new();
    match select {
        None => {
            for name in PROPERTIES {
                out.insert((*name).to_string(), property(rec, name, false, read));
            }
        }
        Some(names) => {
            for name in names {
                out.insert(name.clone(), property(rec, name, true, read));
            }
        }
    }
    out
}

/// `$select`: canonical property names, or the 400 Graph answers for an unknown one.
fn parse_select(text: Option<&str>) -> Result<Option<Vec<String>>, Box<Answer>> {
    let Some(text) = text else {
        return Ok(None);
    };
    let mut out: Vec<String> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some(name) = PROPERTIES.iter().find(|p| p.eq_ignore_ascii_case(part)) else {
            return Err(Box::new(bad_request(&format!(
                "Could not find a property named '{part}' on type 'microsoft.graph.managedDevice'."
            ))));
        };
        if !out.iter().any(|n| n == name) {
            out.push((*name).to_string());
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

fn context(inner: &IntuneInner, version: &str, select: Option<&[String]>, entity: bool) -> String {
    let selected = select
        .map(|s| format!("({})", s.join(",")))
        .unwrap_or_default();
    let entity = if entity { "/$entity" } else { "" };
    format!(
        "{}/{version}/$metadata#deviceManagement/managedDevices{selected}{entity}",
        inner.graph_base
    )
}

fn one(inner: &IntuneInner, req: &Req, version: &str, id: &str) -> Answer {
    let select = match parse_select(req.query_value("$select")) {
        Ok(s) => s,
        Err(answer) => return *answer,
    };
    let Some(record) = find(inner, id) else {
        return not_found(id);
    };
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        context(inner, version, select.as_deref(), true).into(),
    );
    body.extend(record_json(record, select.as_deref(), Read::Single));
    Answer::json(200, JSON, &Value::Object(body), MdmOutcome::Ok)
}

/// One `$filter` clause the stand-in honours.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Clause {
    Serial(String),
    OperatingSystem(String),
}

impl Clause {
    fn matches(&self, rec: &IntuneRecord) -> bool {
        match self {
            // Graph compares strings case-insensitively.
            Clause::Serial(s) => rec.device.serial.eq_ignore_ascii_case(s),
            Clause::OperatingSystem(os) => os.eq_ignore_ascii_case("iOS"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Text(String),
    Open,
    Close,
    Comma,
}

/// OData tokens; `Err` only for an unterminated string literal (`''` is a quote inside one).
fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                });
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string literal".to_string()),
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => s.push(c),
                    }
                }
                out.push(Token::Text(s));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | ',' | '\'') {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

/// The clauses of a filter the stand-in honours (`prop eq 'text'` joined by `and`), `None`
/// for any other filter (which Graph ignores), `Err` for one that does not parse.
fn parse_filter(text: &str) -> Result<Option<Vec<Clause>>, String> {
    let tokens = tokens(text)?;
    let mut clauses = Vec::new();
    let mut rest = tokens.as_slice();
    loop {
        let [Token::Word(prop), Token::Word(op), Token::Text(value), tail @ ..] = rest else {
            return Ok(None);
        };
        if !op.eq_ignore_ascii_case("eq") {
            return Ok(None);
        }
        let clause = if prop.eq_ignore_ascii_case("serialNumber") {
            Clause::Serial(value.clone())
        } else if prop.eq_ignore_ascii_case("operatingSystem") {
            Clause::OperatingSystem(value.clone())
        } else {
            return Ok(None);
        };
        clauses.push(clause);
        match tail {
            [] => return Ok(Some(clauses)),
            [Token::Word(and), tail @ ..] if and.eq_ignore_ascii_case("and") => rest = tail,
            _ => return Ok(None),
        }
    }
}

/// Where a listing is: everything `@odata.nextLink` must carry (opaque to clients).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// The honoured filter's text; `None`: everything.
    f: Option<String>,
    s: Option<Vec<String>>,
    n: usize,
    o: usize,
}

fn list(inner: &IntuneInner, req: &Req, version: &str) -> Answer {
    let cursor = match req.query_value("$skiptoken") {
        Some(token) => match B64URL
            .decode(token)
            .ok()
            .and_then(|raw| serde_json::from_slice::<Cursor>(&raw).ok())
        {
            Some(c) => c,
            None => return bad_request("The $skiptoken is not valid."),
        },
        None => {
            let select = match parse_select(req.query_value("$select")) {
                Ok(s) => s,
                Err(answer) => return *answer,
            };
            let (ignore, default_size) = {
                let s = inner.settings();
                (s.ignore_filters, s.page_size as usize)
            };
            let filter = match req.query_value("$filter") {
                None => None,
                Some(text) => match parse_filter(text) {
                    Err(why) => return bad_request(&format!("Invalid filter clause: {why}.")),
                    // Unsupported filters are silently ignored, as Graph does (docs/mdm.md §1.2).
                    Ok(None) => None,
                    Ok(Some(_)) if ignore => None,
                    Ok(Some(_)) => Some(text.to_string()),
                },
            };
            let size = match req.query_value("$top") {
                None => default_size,
                Some(top) => match top.trim().parse::<usize>() {
                    Ok(n) => n.clamp(1, MAX_TOP),
                    Err(_) => return bad_request(&format!("Invalid value '{top}' for $top.")),
                },
            };
            Cursor {
                f: filter,
                s: select,
                n: size.max(1),
                o: 0,
            }
        }
    };
    let clauses = match cursor.f.as_deref().map(parse_filter) {
        Some(Ok(Some(c))) => c,
        Some(_) => return bad_request("The $skiptoken is not valid."),
        None => Vec::new(),
    };
    let matching: Vec<&IntuneRecord> = inner
        .records
        .iter()
        .filter(|r| clauses.iter().all(|c| c.matches(r)))
        .collect();
    let end = cursor.o.saturating_add(cursor.n).min(matching.len());
    let page = matching.get(cursor.o.min(end)..end).unwrap_or_default();
    let value: Vec<Value> = page
        .iter()
        .map(|r| Value::Object(record_json(r, cursor.s.as_deref(), Read::List)))
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        context(inner, version, cursor.s.as_deref(), false).into(),
    );
    if end < matching.len() {
        let next = Cursor {
            o: end,
            ..cursor.clone()
        };
        let token = B64URL.encode(serde_json::to_vec(&next).unwrap_or_default());
        body.insert(
            "@odata.nextLink".into(),
            format!(
                "{}/{version}/deviceManagement/managedDevices?$skiptoken={token}",
                inner.graph_base
            )
            .into(),
        );
    }
    body.insert("value".into(), Value::Array(value));
    Answer::json(200, JSON, &Value::Object(body), MdmOutcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert_eq!(
            parse_filter("serialNumber eq 'F2LZK0ABN72J'"),
            Ok(Some(vec![Clause::Serial("F2LZK0ABN72J".into())]))
        );
        assert_eq!(
            parse_filter("serialnumber EQ 'it''s' and operatingSystem eq 'iOS'"),
            Ok(Some(vec![
                Clause::Serial("it's".into()),
                Clause::OperatingSystem("iOS".into())
            ]))
        );
        for ignored in [
            "udid eq 'x'",
            "serialNumber ne 'x'",
            "startswith(serialNumber,'F2L')",
            "serialNumber eq 'a' or serialNumber eq 'b'",
            "(serialNumber eq 'a')",
            "serialNumber eq 'a' and",
            "",
        ] {
            assert_eq!(parse_filter(ignored), Ok(None), "{ignored}");
        }
        assert!(parse_filter("serialNumber eq 'open").is_err());
    }

    #[test]
    fn paths() {
        let kind = |p: &str| match resource(p) {
            Ok((_, Resource::List)) => "list".to_string(),
            Ok((_, Resource::One(id))) => format!("one {id}"),
            Ok((_, Resource::BypassActivationLock(id))) => format!("bypass {id}"),
            Err(a) => format!("error {}", a.status),
        };
        assert_eq!(kind("/v1.0/deviceManagement/managedDevices"), "list");
        assert_eq!(kind("/beta/devicemanagement/manageddevices"), "list");
        assert_eq!(kind("/v1.0/deviceManagement/managedDevices/abc"), "one abc");
        assert_eq!(
            kind("/beta/deviceManagement/managedDevices('abc')"),
            "one abc"
        );
        assert_eq!(
            kind("/v1.0/deviceManagement/managedDevices/abc/bypassActivationLock"),
            "bypass abc"
        );
        assert_eq!(
            kind(
                "/v1.0/deviceManagement/managedDevices('abc')/microsoft.graph.bypassActivationLock"
            ),
            "bypass abc"
        );
        assert_eq!(
            kind("/v1.0/deviceManagement/managedDevices/abc/retire"),
            "error 400"
        );
        assert_eq!(kind("/v2.0/deviceManagement/managedDevices"), "error 404");
        assert_eq!(kind("/v1.0/users"), "error 400");
    }
}

#[cfg(test)]
mod batch_tests {
    //! `$batch` as Graph serves it, straight through `route` (no sockets).

    use std::time::{Duration, Instant};

    use super::*;
    use crate::mdm::intune::{Graph, ManagedDevice};
    use crate::mdm::Budget;
    use crate::world::IntuneSpec;

    const CODE: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";

    fn graph() -> Graph {
        let records = vec![
            IntuneRecord::standalone(ManagedDevice::new("dev-1", "SERIAL1").with_code(CODE)),
            IntuneRecord::standalone(ManagedDevice::new("dev-2", "SERIAL2")),
        ];
        Graph::new(
            &IntuneSpec::default(),
            1,
            "http://127.0.0.1:1".into(),
            "http://127.0.0.1:2".into(),
            records,
            Vec::new(),
        )
    }

    fn post(graph: &Graph, body: &Value) -> (u16, Value) {
        let (token, _) = graph.inner.issue_token();
        let authorization = format!("Bearer {token}");
        let body = serde_json::to_vec(body).expect("json");
        let answer = route(
            &graph.inner,
            &Req {
                at: Instant::now(),
                method: "POST",
                path: "/v1.0/$batch",
                query: &[],
                authorization: Some(&authorization),
                content_type: Some("application/json"),
                declares_length: true,
                body: &body,
            },
        );
        let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        (answer.status, value)
    }

    fn get(id: &str, url: &str) -> Value {
        json!({"id": id, "method": "GET", "url": url})
    }

    #[test]
    fn inner_requests_are_answered_one_by_one() {
        let graph = graph();
        graph.set_batch_throttle_next(1, Duration::from_secs(3));
        let (status, answer) = post(
            &graph,
            &json!({"requests": [
                get("a", "/deviceManagement/managedDevices/dev-1?$select=id,activationLockBypassCode"),
                get("b", "/deviceManagement/managedDevices/dev-1?$select=id,activationLockBypassCode"),
                get("c", "deviceManagement/managedDevices/nope"),
            ]}),
        );
        assert_eq!(status, 200);
        let responses = answer["responses"].as_array().expect("responses");
        let by_id = |id: &str| {
            responses
                .iter()
                .find(|r| r["id"] == id)
                .unwrap_or_else(|| panic!("no answer {id}"))
        };
        assert_eq!(by_id("a")["status"], 429);
        assert_eq!(by_id("a")["headers"]["Retry-After"], "3");
        assert_eq!(by_id("b")["status"], 200);
        assert_eq!(by_id("b")["body"]["activationLockBypassCode"], CODE);
        assert_eq!(by_id("c")["status"], 404);
        // Each inner request is logged, after the batch counts for three.
        let inner: Vec<u16> = graph
            .graph_requests()
            .iter()
            .filter(|r| r.in_batch)
            .map(|r| r.status)
            .collect();
        assert_eq!(inner, vec![429, 200, 404]);
        assert_eq!(
            graph.load().requests,
            2,
            "the POST itself is counted by serve"
        );
    }

    #[test]
    fn batches_are_checked_as_graph_checks_them() {
        let graph = graph();
        let many: Vec<Value> = (0..21)
            .map(|i| get(&i.to_string(), "/deviceManagement/managedDevices/dev-1"))
            .collect();
        let (status, answer) = post(&graph, &json!({ "requests": many }));
        assert_eq!(status, 400);
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("maximum of 20")),
            "{answer}"
        );
        for bad in [
            json!({"requests": [{"method": "GET", "url": "/deviceManagement/managedDevices"}]}),
            json!({"requests": [{"id": "1", "url": "/deviceManagement/managedDevices"}]}),
            json!({"requests": [{"id": "1", "method": "GET"}]}),
            json!({"requests": [get("1", "/a"), get("1", "/b")]}),
            json!({"requests": []}),
            json!({"nothing": true}),
        ] {
            assert_eq!(post(&graph, &bad).0, 400, "{bad}");
        }
        let twenty: Vec<Value> = (0..20)
            .map(|i| get(&i.to_string(), "/deviceManagement/managedDevices/dev-2"))
            .collect();
        assert_eq!(post(&graph, &json!({ "requests": twenty })).0, 200);
    }

    #[test]
    fn a_batch_counts_as_its_requests_against_the_budget() {
        let graph = graph();
        graph.set_budget(Budget {
            per_second: Some(10.0),
            per_hour: Some(100),
        });
        let at = Instant::now();
        graph.inner.graph_core.count(at, 1);
        graph.inner.graph_core.count(at, 9);
        assert_eq!(graph.load().violations, 0);
        graph
            .inner
            .graph_core
            .count(at + Duration::from_millis(500), 1);
        let load = graph.load();
        assert_eq!(load.violations, 1);
        assert_eq!(load.peak_per_second, 11);
        assert!(load.first_violations[0].contains("11 requests within one second, budget 10"));
        // A second later the window has room again.
        graph
            .inner
            .graph_core
            .count(at + Duration::from_millis(1600), 9);
        assert_eq!(graph.load().violations, 1);
        assert_eq!(graph.load().requests, 20);
    }
}
