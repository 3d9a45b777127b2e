//! The stand-in Kandji API (docs/mdm.md §3.1), Bearer-token authenticated:
//!
//! - `GET /api/v1/devices?serial_number=…&ordering=…&limit=…&offset=…`: a JSON array of
//!   devices; the serial filter is a case-insensitive *partial* match, as Kandji documents it,
//!   so with look-alikes on a host that does not check the exact serial picks the wrong
//!   device. Paged as Kandji pages: at most 300 devices an answer (a larger `limit` is cut to
//!   300, none means 300), `offset` devices skipped, an empty array past the end; `ordering`
//!   sorts by the listed fields (`serial_number`, `device_id`, `device_name`, `model`,
//!   `os_version`, `platform`; `-` before one reverses it; unknown fields are ignored, as
//!   Django REST framework's ordering filter does), otherwise the held order;
//! - `GET /api/v1/devices/{device_id}`: one device;
//! - `GET /api/v1/devices/{device_id}/secrets/bypasscode`:
//!   `{"user_based_albc": …, "device_based_albc": …}`, an absent code being `""` for the
//!   user-based one and `null` for the device-based one (hosts must take both as "none");
//!   403 when the token lacks the *device secrets* permission (`set_secrets_permission`).
//!
//! Errors are Django REST framework's `{"detail": "…"}`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use super::service::{
    outcome_for, rate, Answer, MdmOutcome, MdmRequest, MdmService, Req, ServiceCore,
};
use crate::phone::Phone;
use crate::world::mdm::{guid, last_sync_after};
use crate::world::{gen, KandjiSpec, Mdm};

const JSON: &str = "application/json";
/// Kandji's largest `limit`, also its page size when none is given (docs/mdm.md §3.1).
const MAX_LIMIT: usize = 300;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One device the Kandji stand-in holds: what a test gives a standalone stand-in
/// ([`super::KandjiServer`]), and what the bench makes of each Kandji enrolment of a phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KandjiDevice {
    /// `device_id`.
    pub device_id: String,
    /// `serial_number`.
    pub serial: String,
    /// `device_name`.
    pub name: String,
    /// `model`: the marketing name.
    pub model: String,
    pub os_version: String,
    /// `first_enrollment`, `YYYY-MM-DDTHH:MM:SSZ`.
    pub enrolled_at: String,
    /// The device-generated code (lock turned on with Find My); `None`: `""`.
    pub user_based_albc: Option<String>,
    /// The MDM-generated code (organisation-linked lock); `None`: `null`.
    pub device_based_albc: Option<String>,
    /// Kandji keeps no secrets for the device: `secrets/bypasscode` answers 404 (a known
    /// device whose code is gone).
    pub no_secrets: bool,
}

impl KandjiDevice {
    /// A device of `serial` without codes, enrolled on 1 January 2025.
    pub fn new(device_id: &str, serial: &str) -> KandjiDevice {
        KandjiDevice {
            device_id: device_id.to_string(),
            serial: serial.to_string(),
            name: "iPhone".to_string(),
            model: "iPhone".to_string(),
            os_version: "17.5".to_string(),
            enrolled_at: "2025-01-01T00:00:00Z".to_string(),
            user_based_albc: None,
            device_based_albc: None,
            no_secrets: false,
        }
    }

    pub fn with_user_based_albc(mut self, code: &str) -> Self {
        self.user_based_albc = Some(code.to_string());
        self
    }

    pub fn with_device_based_albc(mut self, code: &str) -> Self {
        self.device_based_albc = Some(code.to_string());
        self
    }

    /// `secrets/bypasscode` answers 404: Kandji keeps no secrets for it.
    pub fn without_secrets(mut self) -> Self {
        self.no_secrets = true;
        self
    }

    fn json(&self) -> Value {
        json!({
            "device_id": self.device_id,
            "device_name": self.name,
            "model": self.model,
            "serial_number": self.serial,
            "platform": "iPhone",
            "os_version": self.os_version,
            "last_check_in": last_sync_after(&self.enrolled_at),
            "user": "",
            "asset_tag": "",
            "blueprint_id": "5e0a2a8c-2a1d-4c3e-9b1f-5ba1d0c0ffee",
            "blueprint_name": "Bench returns",
            "mdm_enabled": true,
            "agent_installed": false,
            "is_missing": false,
            "is_removed": false,
            "agent_version": "",
            "first_enrollment": self.enrolled_at,
            "last_enrollment": self.enrolled_at,
        })
    }
}

/// A device as held: look-alikes are served only while they are switched on.
struct Held {
    device: KandjiDevice,
    lookalike: bool,
}

struct KandjiInner {
    core: ServiceCore,
    url: String,
    token: Mutex<String>,
    lookalikes: Mutex<bool>,
    /// The token has the *device secrets* permission (docs/mdm.md §3.1).
    secrets_permission: Mutex<bool>,
    devices: Vec<Held>,
}

/// The stand-in Kandji API: its URL, run-time controls and request log. Cheap to clone.
#[derive(Clone)]
pub struct Kandji {
    inner: Arc<KandjiInner>,
}

impl std::fmt::Debug for Kandji {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kandji")
            .field("api_url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl Kandji {
    /// The stand-in holding the Kandji enrolments of `phones` (each after its look-alike),
    /// then `given`, on an already bound listener.
    pub(crate) fn new(
        spec: &KandjiSpec,
        seed: u64,
        url: String,
        phones: &[Arc<Phone>],
        given: Vec<KandjiDevice>,
    ) -> Kandji {
        let mut rng = gen::device_rng(seed ^ 0x0CA4_D1E0, usize::MAX);
        let token = spec.token.clone().unwrap_or_else(|| guid(&mut rng));
        let mut devices = Vec::new();
        for phone in phones {
            let p = phone.profile();
            for e in p.enrollments.iter().filter(|e| e.mdm == Mdm::Kandji) {
                // The look-alike: another device whose serial contains this one's, with
                // codes of its own that release nothing. Listed first, so a host that takes
                // the first hit gets it wrong.
                devices.push(Held {
                    device: KandjiDevice {
                        device_id: guid(&mut rng),
                        serial: format!("{}7", p.serial),
                        name: format!("{} (2)", p.device_name),
                        model: p.marketing_name.clone(),
                        os_version: p.product_version.clone(),
                        enrolled_at: e.enrolled_at.clone(),
                        user_based_albc: Some(gen::bypass_code(&mut rng)),
                        device_based_albc: Some(gen::bypass_code(&mut rng)),
                        no_secrets: false,
                    },
                    lookalike: true,
                });
                devices.push(Held {
                    device: KandjiDevice {
                        device_id: e.id.clone(),
                        serial: p.serial.clone(),
                        name: p.device_name.clone(),
                        model: p.marketing_name.clone(),
                        os_version: p.product_version.clone(),
                        enrolled_at: e.enrolled_at.clone(),
                        user_based_albc: e.user_based_albc.clone(),
                        device_based_albc: e.device_based_albc.clone(),
                        no_secrets: false,
                    },
                    lookalike: false,
                });
            }
        }
        devices.extend(given.into_iter().map(|device| Held {
            device,
            lookalike: false,
        }));
        Kandji {
            inner: Arc::new(KandjiInner {
                core: ServiceCore::new(MdmService::Kandji, &spec.api, seed ^ 0x0CA4_D100),
                url,
                token: Mutex::new(token),
                lookalikes: Mutex::new(spec.lookalikes),
                secrets_permission: Mutex::new(true),
                devices,
            }),
        }
    }

    /// `http://127.0.0.1:PORT`: the API root (stands for `https://<sub>.api.kandji.io`).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The API token (test data: what the station's token file holds).
    pub fn token(&self) -> String {
        lock(&self.inner.token).clone()
    }

    /// Replaces the API token (the old one is refused from now on).
    pub fn set_token(&self, token: &str) {
        *lock(&self.inner.token) = token.to_string();
    }

    /// Serve a look-alike device (serial containing the phone's) before each Kandji phone.
    pub fn set_lookalikes(&self, on: bool) {
        *lock(&self.inner.lookalikes) = on;
    }

    /// Whether the token has the *device secrets* permission; without it
    /// `secrets/bypasscode` answers 403, as Kandji does (the device list still answers).
    pub fn set_secrets_permission(&self, on: bool) {
        *lock(&self.inner.secrets_permission) = on;
    }

    /// The next `n` requests are answered `429` with `Retry-After`.
    pub fn set_throttle_next(&self, n: u32, retry_after: Duration) {
        let mut f = self.inner.core.faults();
        f.throttle_next = n;
        f.retry_after_secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    }

    /// The next `n` requests fail with the failure status (503 unless set).
    pub fn set_fail_next(&self, n: u32) {
        self.inner.core.faults().fail_next = n;
    }

    /// Each request fails with probability `rate`.
    pub fn set_fail_rate(&self, rate_: f64) {
        self.inner.core.faults().fail_rate = rate(rate_);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.inner.core.faults().latency = latency;
    }

    pub fn clear_faults(&self) {
        self.inner.core.faults().clear();
    }

    /// Every request received (the last 10 000), oldest first; never a token or code.
    pub fn requests(&self) -> Vec<MdmRequest> {
        self.inner.core.requests()
    }

    pub fn clear_requests(&self) {
        self.inner.core.clear_requests();
    }
}

fn detail(status: u16, text: &str, outcome: MdmOutcome) -> Answer {
    Answer::json(status, JSON, &json!({ "detail": text }), outcome)
}

/// Throttling and injected failures.
fn error_answer(status: u16, message: &str) -> Answer {
    detail(status, message, outcome_for(status, message))
}

fn route(inner: &KandjiInner, req: &Req) -> Answer {
    let segments: Vec<&str> = req
        .path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let resource = match segments.as_slice() {
        ["api", "v1", "devices"] => None,
        ["api", "v1", "devices", id] => Some((*id, false)),
        ["api", "v1", "devices", id, "secrets", "bypasscode"] => Some((*id, true)),
        _ => return detail(404, "Not found.", MdmOutcome::NotFound),
    };
    if req.method != "GET" {
        return detail(
            405,
            &format!("Method \"{}\" not allowed.", req.method),
            MdmOutcome::MethodNotAllowed,
        )
        .with_header("Allow", "GET");
    }
    let Some(token) = req.bearer() else {
        return detail(
            401,
            "Authentication credentials were not provided.",
            MdmOutcome::Unauthorized {
                reason: "no token".to_string(),
            },
        );
    };
    let expected = lock(&inner.token).clone();
    if !crate::activation::same(token.as_bytes(), expected.as_bytes()) {
        return detail(
            401,
            "Invalid token.",
            MdmOutcome::Unauthorized {
                reason: "invalid token".to_string(),
            },
        );
    }
    let lookalikes = *lock(&inner.lookalikes);
    let visible = inner
        .devices
        .iter()
        .filter(|d| lookalikes || !d.lookalike)
        .map(|d| &d.device);
    match resource {
        None => {
            let number = |name: &str, default: usize| match req.query_value(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("A valid integer is required for {name}.")),
            };
            let (limit, offset) = match (number("limit", MAX_LIMIT), number("offset", 0)) {
                (Ok(l), Ok(o)) => (l.clamp(1, MAX_LIMIT), o),
                (Err(why), _) | (_, Err(why)) => {
                    return detail(
                        400,
                        &why,
                        MdmOutcome::BadRequest {
                            reason: why.clone(),
                        },
                    )
                }
            };
            let wanted = req
                .query_value("serial_number")
                .map(str::to_ascii_uppercase);
            let mut matching: Vec<&KandjiDevice> = visible
                .filter(|d| {
                    wanted
                        .as_deref()
                        .is_none_or(|w| d.serial.to_ascii_uppercase().contains(w))
                })
                .collect();
            if let Some(ordering) = req.query_value("ordering") {
                order(&mut matching, ordering);
            }
            let list: Vec<Value> = matching
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(KandjiDevice::json)
                .collect();
            Answer::json(200, JSON, &Value::Array(list), MdmOutcome::Ok)
        }
        Some((id, secrets)) => {
            let Some(device) = visible
                .into_iter()
                .find(|d| d.device_id.eq_ignore_ascii_case(id))
            else {
                return detail(404, "Not found.", MdmOutcome::NotFound);
            };
            if !secrets {
                return Answer::json(200, JSON, &device.json(), MdmOutcome::Ok);
            }
            if device.no_secrets {
                return detail(404, "Not found.", MdmOutcome::NotFound);
            }
            if !*lock(&inner.secrets_permission) {
                return detail(
                    403,
                    "You do not have permission to perform this action.",
                    MdmOutcome::Forbidden {
                        missing: "device secrets".to_string(),
                    },
                );
            }
            let body = json!({
                "user_based_albc": device.user_based_albc.clone().unwrap_or_default(),
                "device_based_albc": device.device_based_albc,
            });
            Answer::json(200, JSON, &body, MdmOutcome::Ok)
        }
    }
}

/// A field `ordering` can name.
type SortKey = fn(&KandjiDevice) -> &str;

/// Sorts `devices` as Kandji's `ordering` parameter asks: comma-separated fields, each
/// descending with a leading `-`; fields it does not know are skipped. A stable sort, so
/// equal keys keep the held order.
fn order(devices: &mut [&KandjiDevice], ordering: &str) {
    let keys: Vec<(SortKey, bool)> = ordering
        .split(',')
        .filter_map(|field| {
            let field = field.trim();
            let (name, descending) = match field.strip_prefix('-') {
                Some(name) => (name, true),
                None => (field, false),
            };
            let key: SortKey = match name {
                "serial_number" => |d| &d.serial,
                "device_id" => |d| &d.device_id,
                "device_name" => |d| &d.name,
                "model" => |d| &d.model,
                "os_version" => |d| &d.os_version,
                "platform" => |_| "iPhone",
                _ => return None,
            };
            Some((key, descending))
        })
        .collect();
    devices.sort_by(|a, b| {
        keys.iter()
            .map(|(key, descending)| {
                let o = key(a).cmp(key(b));
                if *descending {
                    o.reverse()
                } else {
                    o
                }
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
}

/// Serves the API.
#[derive(Clone)]
pub(crate) struct KandjiHandler(pub Kandji);

impl crate::http::Handler for KandjiHandler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let inner = &self.0.inner;
        inner
            .core
            .serve(req, |r| route(inner, r), error_answer)
            .await
    }
}
