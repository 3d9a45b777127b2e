//! A stand-in of Apple's activation server ("Albert") on loopback HTTP:
//! `POST <base>/drmHandshake` and `POST <base>/deviceActivation`, where `<base>` is
//! [`Albert::url`] (`http://127.0.0.1:PORT/deviceservices`).
//!
//! It behaves as docs/protocol.md §5.4–5.6 describes Apple's server (see [`exchange`] for the
//! answers) and adds what tests need: latency and injected 5xx failures, set in the world
//! file and changeable at run time, and a log of what it received (secrets masked).
//!
//! It runs on the bench's shared loopback HTTP server ([`crate::http`]).

mod exchange;
pub mod proxy;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::Instrument;

pub use exchange::{CHALLENGE_FIELD, LOGIN_FIELD, PASSWORD_FIELD};
pub use proxy::{AlbertProxy, ALBERT_HOST};
pub use station_protocol::activation::Endpoint;

use crate::activation::Authority;
use crate::phone::Phone;
use crate::world::{ActivationServerSpec, FaultSpec, FaultWindow, WindowAnswer, WrongCredentials};

/// Largest request body read; activation-info is ~10–30 KiB.
pub const MAX_BODY: usize = 1024 * 1024;
/// Requests kept in the log (oldest dropped first).
const LOG_LIMIT: usize = 10_000;

/// What the server answered a request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlbertOutcome {
    /// `drmHandshake`: a handshake reply.
    HandshakeReply,
    /// An activation record (`text/xml`).
    Record,
    /// The Activation Lock form.
    LockForm,
    /// A page of hidden fields only, to be posted back (`continue_page`).
    ContinuePage,
    /// The wrong-credentials alert (alone, or over the lock form).
    AuthAlert,
    /// A buddyml error page (HTTP 200), e.g. "Verification Failed", "Device Unknown".
    ErrorPage {
        title: String,
    },
    /// A failure injected by the world file or [`Albert::set_failures`] & co.
    InjectedFailure,
    /// Bytes that are no answer (a `[[activation_server.window]]` of `garbage`).
    Garbage,
    /// 4xx: unreadable request, wrong content type, body too large or too slow.
    BadRequest {
        reason: String,
    },
    NotFound,
    MethodNotAllowed,
}

/// One request as the server saw it. Secrets are never kept: `password` is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlbertRequest {
    pub endpoint: Option<Endpoint>,
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    /// The phone the request was for, once the server could tell.
    pub udid: Option<String>,
    /// `deviceActivation` form field names: the activation-info field first
    /// (`activation-info` or `activation-info-base64`), then the others in request order.
    pub fields: Vec<String>,
    /// The Apple Account row's value (the station sends it blank with a bypass code).
    pub login: Option<String>,
    /// The password row's value, masked: `3UM43-…-FKA4` for a bypass code,
    /// `<N characters>` otherwise, empty if blank.
    pub password: Option<String>,
    pub status: u16,
    pub outcome: AlbertOutcome,
    /// When the request arrived (so a test can order it against other services' requests).
    pub at: Instant,
}

struct Controls {
    latency: Duration,
    failure_status: u16,
    drm_handshake: FaultSpec,
    device_activation: FaultSpec,
    rng: StdRng,
    scenario: exchange::Scenario,
    /// The world's stretches of wrong answers, timed from `started`.
    windows: Vec<FaultWindow>,
    started: Instant,
}

impl Controls {
    fn faults(&mut self, endpoint: Endpoint) -> &mut FaultSpec {
        match endpoint {
            Endpoint::DrmHandshake => &mut self.drm_handshake,
            Endpoint::DeviceActivation => &mut self.device_activation,
        }
    }

    /// Whether this request fails: `fail_next` counts down first, then `fail_always`, then
    /// a draw against `fail_rate`.
    fn should_fail(&mut self, endpoint: Endpoint) -> bool {
        let faults = *self.faults(endpoint);
        if faults.fail_next > 0 {
            self.faults(endpoint).fail_next -= 1;
            return true;
        }
        faults.fail_always || (faults.fail_rate > 0.0 && self.rng.random_bool(faults.fail_rate))
    }
}

struct Inner {
    exchange: exchange::Exchange,
    url: String,
    addr: SocketAddr,
    controls: Mutex<Controls>,
    log: Mutex<VecDeque<AlbertRequest>>,
}

/// The running stand-in server: its address, runtime controls and request log. Cheap to
/// clone; every clone controls the same server.
#[derive(Clone)]
pub struct Albert {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Albert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Albert")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Albert {
    /// A server for `phones` on an already bound listener; [`serve`] runs it.
    pub(crate) fn new(
        addr: SocketAddr,
        authority: Arc<Authority>,
        phones: &[Arc<Phone>],
        spec: &ActivationServerSpec,
        seed: u64,
    ) -> Albert {
        let url = format!("http://{addr}/deviceservices");
        let phones: HashMap<String, Arc<Phone>> = phones
            .iter()
            .map(|p| (p.udid().to_string(), p.clone()))
            .collect();
        Albert {
            inner: Arc::new(Inner {
                exchange: exchange::Exchange { authority, phones },
                url,
                addr,
                controls: Mutex::new(Controls {
                    latency: Duration::from_millis(spec.latency_ms),
                    failure_status: spec.failure_status(),
                    drm_handshake: spec.drm_handshake,
                    device_activation: spec.device_activation,
                    rng: StdRng::seed_from_u64(seed ^ 0xA1BE_7000_0000_0000),
                    scenario: exchange::Scenario {
                        record_ack: spec.record_ack,
                        continue_page: spec.continue_page,
                        wrong_credentials: spec.wrong_credentials,
                    },
                    windows: spec.windows.clone(),
                    started: Instant::now(),
                }),
                log: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// `http://127.0.0.1:PORT/deviceservices`; the endpoints are `<url>/drmHandshake` and
    /// `<url>/deviceActivation`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The full URL of one endpoint.
    pub fn endpoint_url(&self, endpoint: Endpoint) -> String {
        endpoint.url_on(&format!("http://{}", self.inner.addr))
    }

    /// Delay added before every answer from now on.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.inner.controls).latency = latency;
    }

    /// The next `n` requests to `endpoint` fail with the failure status (503 unless set).
    pub fn set_failures(&self, endpoint: Endpoint, n: u32) {
        lock(&self.inner.controls).faults(endpoint).fail_next = n;
    }

    /// Every request to `endpoint` fails while `on`.
    pub fn set_fail_always(&self, endpoint: Endpoint, on: bool) {
        lock(&self.inner.controls).faults(endpoint).fail_always = on;
    }

    /// Each request to `endpoint` fails with probability `rate` (clamped to 0–1), drawn
    /// from a generator seeded by the world's seed.
    pub fn set_fail_rate(&self, endpoint: Endpoint, rate: f64) {
        let rate = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        lock(&self.inner.controls).faults(endpoint).fail_rate = rate;
    }

    /// The status injected failures answer with (a 5xx; others are ignored).
    pub fn set_failure_status(&self, status: u16) {
        if (500..=599).contains(&status) {
            lock(&self.inner.controls).failure_status = status;
        }
    }

    /// Records carry `ack-received = true` from now on (or no longer).
    pub fn set_record_ack(&self, on: bool) {
        lock(&self.inner.controls).scenario.record_ack = on;
    }

    /// First `deviceActivation` requests get a page of hidden fields only (or no longer).
    pub fn set_continue_page(&self, on: bool) {
        lock(&self.inner.controls).scenario.continue_page = on;
    }

    /// What wrong credentials get from now on.
    pub fn set_wrong_credentials(&self, answer: WrongCredentials) {
        lock(&self.inner.controls).scenario.wrong_credentials = answer;
    }

    /// Ends every injected failure on both endpoints.
    pub fn clear_failures(&self) {
        let mut c = lock(&self.inner.controls);
        c.drm_handshake = FaultSpec::default();
        c.device_activation = FaultSpec::default();
    }

    /// Every request received so far (the last 10 000), oldest first.
    pub fn requests(&self) -> Vec<AlbertRequest> {
        lock(&self.inner.log).iter().cloned().collect()
    }

    /// The requests received for one phone.
    pub fn requests_for(&self, udid: &str) -> Vec<AlbertRequest> {
        lock(&self.inner.log)
            .iter()
            .filter(|r| r.udid.as_deref() == Some(udid))
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.inner.log).clear();
    }

    fn push_log(&self, entry: AlbertRequest) {
        let mut log = lock(&self.inner.log);
        if log.len() >= LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(entry);
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(CONTENT_TYPE);
        let user_agent = header(USER_AGENT);
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let endpoint = Endpoint::from_path(&path);
        let at = Instant::now();
        let mut seen = exchange::Seen::default();
        let window = {
            let c = lock(&self.inner.controls);
            FaultWindow::active(&c.windows, c.started.elapsed())
        };

        let answer = match endpoint {
            None => plain(404, "Not Found", AlbertOutcome::NotFound),
            Some(_) if method != Method::POST => {
                let mut a = plain(405, "Method Not Allowed", AlbertOutcome::MethodNotAllowed);
                a.headers.push(("Allow", "POST".to_string()));
                a
            }
            Some(endpoint) => match read_body(req.into_body()).await {
                Err(answer) => answer,
                Ok(body) => {
                    let (fail, status, scenario) = {
                        let mut c = lock(&self.inner.controls);
                        let failing = window.is_some_and(|w| w.answer == WindowAnswer::Fail);
                        (
                            failing || c.should_fail(endpoint),
                            c.failure_status,
                            c.scenario,
                        )
                    };
                    if window.is_some_and(|w| w.answer == WindowAnswer::Garbage) {
                        garbage()
                    } else if fail {
                        plain(
                            status,
                            "Service Unavailable",
                            AlbertOutcome::InjectedFailure,
                        )
                    } else {
                        let x = &self.inner.exchange;
                        let ct = content_type.as_deref();
                        match endpoint {
                            Endpoint::DrmHandshake => x.drm_handshake(ct, &body, &mut seen),
                            Endpoint::DeviceActivation => {
                                x.device_activation(ct, &body, scenario, &mut seen)
                            }
                        }
                    }
                }
            },
        };
        let mut latency = lock(&self.inner.controls).latency;
        if let Some(w) = window.filter(|w| w.answer == WindowAnswer::Slow) {
            latency += Duration::from_millis(w.latency_ms);
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        tracing::info!(status = answer.status, outcome = ?answer.outcome, "answered");
        self.push_log(AlbertRequest {
            endpoint,
            method: method.to_string(),
            path,
            content_type,
            user_agent,
            udid: seen.udid,
            fields: seen.fields,
            login: seen.login,
            password: seen.password,
            status: answer.status,
            outcome: answer.outcome,
            at,
        });
        let headers = server_headers()
            .into_iter()
            .chain(answer.headers)
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        crate::http::response(
            answer.status,
            Some(answer.content_type),
            headers,
            answer.body,
        )
    }
}

impl crate::http::Handler for Albert {
    // Albert answers over HTTP/1.1 with canonical names (docs/protocol.md §5.6, §5.9).
    const TITLE_CASE_HEADERS: bool = true;

    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send {
        let span = tracing::info_span!(
            "albert",
            endpoint = %req.uri().path(),
            udid = tracing::field::Empty,
        );
        self.answer(req).instrument(span)
    }
}

/// The headers every Albert answer carries, as in the 2023 capture (docs/protocol.md §5.6);
/// hyper adds `Date` and `Content-Length`.
fn server_headers() -> Vec<(&'static str, String)> {
    vec![
        (
            "Cache-Control",
            "private, no-cache, no-store, must-revalidate, max-age=0".to_string(),
        ),
        ("Connection", "keep-alive".to_string()),
        ("Server", "Apple".to_string()),
        (
            "Strict-Transport-Security",
            "max-age=31536000; includeSubDomains".to_string(),
        ),
        ("X-Client-Request-Id", uuid::Uuid::new_v4().to_string()),
        ("X-Content-Type-Options", "nosniff".to_string()),
        ("X-Frame-Options", "SAMEORIGIN".to_string()),
        ("X-Xss-Protection", "1; mode=block".to_string()),
    ]
}

/// A `[[activation_server.window]]` of `answer = "garbage"`: HTTP 200 under an XML content
/// type whose body is neither a plist nor a page.
fn garbage() -> exchange::Answer {
    exchange::Answer {
        status: 200,
        content_type: "text/xml",
        body: b"\x00\x9f<plist\xff garbage \x01\x02 not an answer".to_vec(),
        headers: Vec::new(),
        outcome: AlbertOutcome::Garbage,
    }
}

fn plain(status: u16, text: &str, outcome: AlbertOutcome) -> exchange::Answer {
    exchange::Answer {
        status,
        content_type: "text/plain; charset=utf-8",
        body: format!("{text}\n").into_bytes(),
        headers: Vec::new(),
        outcome,
    }
}

/// The whole body, within [`MAX_BODY`] and the server's body timeout.
async fn read_body(body: Incoming) -> Result<Bytes, exchange::Answer> {
    crate::http::read_body(body, MAX_BODY).await.map_err(|e| {
        let text = match e.status() {
            413 => "Payload Too Large",
            408 => "Request Timeout",
            _ => "Bad Request",
        };
        plain(
            e.status(),
            text,
            AlbertOutcome::BadRequest {
                reason: e.to_string(),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controls(drm: FaultSpec, activation: FaultSpec) -> Controls {
        Controls {
            latency: Duration::ZERO,
            failure_status: 503,
            drm_handshake: drm,
            device_activation: activation,
            rng: StdRng::seed_from_u64(1),
            scenario: exchange::Scenario::default(),
            windows: Vec::new(),
            started: Instant::now(),
        }
    }

    #[test]
    fn fail_next_counts_down_per_endpoint() {
        let mut c = controls(
            FaultSpec {
                fail_next: 2,
                ..FaultSpec::default()
            },
            FaultSpec::default(),
        );
        assert!(c.should_fail(Endpoint::DrmHandshake));
        assert!(!c.should_fail(Endpoint::DeviceActivation));
        assert!(c.should_fail(Endpoint::DrmHandshake));
        assert!(!c.should_fail(Endpoint::DrmHandshake));
    }

    #[test]
    fn fail_rate_is_seeded() {
        let half = FaultSpec {
            fail_rate: 0.5,
            ..FaultSpec::default()
        };
        let draws = |seed| {
            let mut c = controls(half, half);
            c.rng = StdRng::seed_from_u64(seed);
            (0..64)
                .map(|_| c.should_fail(Endpoint::DeviceActivation))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        let failed = draws(7).iter().filter(|f| **f).count();
        assert!((10..54).contains(&failed), "{failed}");
        let always = FaultSpec {
            fail_always: true,
            ..FaultSpec::default()
        };
        let mut c = controls(always, FaultSpec::default());
        assert!((0..10).all(|_| c.should_fail(Endpoint::DrmHandshake)));
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            exchange::mask_password("3um43puyvyqyd1uvcchehjfka4"),
            "3UM43-\u{2026}-FKA4"
        );
        assert_eq!(exchange::mask_password(""), "");
        assert_eq!(exchange::mask_password("hunter2"), "<7 characters>");
    }
}
