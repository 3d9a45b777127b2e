//! What the MDM stand-ins share: injected throttling and failures, the request log (never a
//! secret in it), the request as a handler sees it, and answers.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::world::{FaultWindow, HttpFaultSpec, WindowAnswer};

/// Requests kept in each log (oldest dropped first).
const LOG_LIMIT: usize = 10_000;
/// Largest request body read: a token request with a client assertion is ~2 KiB.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Query parameters whose values the log never keeps (a client may misplace a secret).
const SECRET_PARAMS: &[&str] = &[
    "access_token",
    "client_secret",
    "client_assertion",
    "token",
    "code",
    "password",
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which stand-in answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MdmService {
    /// The Microsoft Entra token endpoint.
    Token,
    /// Microsoft Graph (Intune managed devices).
    Graph,
    /// The Kandji API.
    Kandji,
}

/// How a stand-in answered a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdmOutcome {
    /// 2xx.
    Ok,
    /// 401: no, a wrong, an unknown or an expired credential.
    Unauthorized {
        reason: String,
    },
    /// 403: the app lacks the permission.
    Forbidden {
        missing: String,
    },
    /// 429 with `Retry-After`; `early` when the client came back before an earlier
    /// `Retry-After` ran out.
    Throttled {
        early: bool,
    },
    /// An injected 5xx.
    InjectedFailure,
    /// A 200 whose body is no JSON (a `garbage` window).
    Garbage,
    NotFound,
    /// 4xx other than the above.
    BadRequest {
        reason: String,
    },
    MethodNotAllowed,
}

/// One request as a stand-in saw it. Never a secret: no header values, no bodies, and the
/// values of secret-looking query parameters are replaced by `<redacted>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdmRequest {
    pub service: MdmService,
    pub method: String,
    pub path: String,
    /// Decoded query parameters, in request order.
    pub query: Vec<(String, String)>,
    /// Form field names of a token request (values never kept).
    pub fields: Vec<String>,
    /// An `Authorization` header was sent.
    pub authorization: bool,
    pub status: u16,
    pub outcome: MdmOutcome,
    /// `Retry-After` seconds of a 429.
    pub retry_after: Option<u64>,
    /// When the request arrived (headers read).
    pub at: Instant,
    /// One of the requests inside a Graph `$batch` (the `POST $batch` itself is logged too).
    pub in_batch: bool,
}

impl MdmRequest {
    /// The first value of a query parameter.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Run-time fault controls of one service, seeded from the world.
#[derive(Debug)]
pub(crate) struct Faults {
    pub latency: Duration,
    pub throttle_next: u32,
    pub throttle_rate: f64,
    pub retry_after_secs: u64,
    pub fail_next: u32,
    pub fail_rate: f64,
    pub failure_status: u16,
    /// A throttled client must not come back before this.
    throttled_until: Option<Instant>,
    rng: StdRng,
    /// The world's stretches of wrong answers, timed from `started`.
    windows: Vec<FaultWindow>,
    started: Instant,
}

/// What the fault controls decide for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Throttle {
        retry_after: u64,
        early: bool,
    },
    Fail {
        status: u16,
    },
    /// HTTP 200 whose body is no JSON (a `garbage` window).
    Garbage,
}

impl Faults {
    pub fn new(spec: &HttpFaultSpec, seed: u64) -> Self {
        Faults {
            latency: Duration::from_millis(spec.latency_ms),
            throttle_next: spec.throttle_next,
            throttle_rate: spec.throttle_rate,
            retry_after_secs: spec.retry_after_secs(),
            fail_next: spec.fail_next,
            fail_rate: spec.fail_rate,
            failure_status: spec.failure_status(),
            throttled_until: None,
            rng: StdRng::seed_from_u64(seed),
            windows: spec.windows.clone(),
            started: Instant::now(),
        }
    }

    /// The window in force at `now`, if any.
    fn window(&self, now: Instant) -> Option<FaultWindow> {
        FaultWindow::active(&self.windows, now.saturating_duration_since(self.started))
    }

    /// The delay before an answer at `now`: the latency, plus a `slow` window's.
    pub fn latency_at(&self, now: Instant) -> Duration {
        match self.window(now) {
            Some(w) if w.answer == WindowAnswer::Slow => {
                self.latency + Duration::from_millis(w.latency_ms)
            }
            _ => self.latency,
        }
    }

    /// Throttling first (an early return is throttled again for what is left of the wait),
    /// then injected failures; `*_next` counters count down before rates are drawn.
    pub fn decide(&mut self, now: Instant) -> Verdict {
        match self.window(now).map(|w| w.answer) {
            Some(WindowAnswer::Fail) => {
                return Verdict::Fail {
                    status: self.failure_status,
                }
            }
            Some(WindowAnswer::Garbage) => return Verdict::Garbage,
            Some(WindowAnswer::Slow) | None => {}
        }
        if let Some(until) = self.throttled_until {
            if now < until {
                let left = until - now;
                // Whole seconds, rounded up: never tell a client it may come back early.
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                return Verdict::Throttle {
                    retry_after: secs,
                    early: true,
                };
            }
            self.throttled_until = None;
        }
        let throttle = if self.throttle_next > 0 {
            self.throttle_next -= 1;
            true
        } else {
            self.throttle_rate > 0.0 && self.rng.random_bool(self.throttle_rate.clamp(0.0, 1.0))
        };
        if throttle {
            let secs = self.retry_after_secs;
            if secs > 0 {
                self.throttled_until = Some(now + Duration::from_secs(secs));
            }
            return Verdict::Throttle {
                retry_after: secs,
                early: false,
            };
        }
        let fail = if self.fail_next > 0 {
            self.fail_next -= 1;
            true
        } else {
            self.fail_rate > 0.0 && self.rng.random_bool(self.fail_rate.clamp(0.0, 1.0))
        };
        if fail {
            Verdict::Fail {
                status: self.failure_status,
            }
        } else {
            Verdict::Pass
        }
    }

    /// Ends every injected fault (and a throttling window in progress).
    pub fn clear(&mut self) {
        self.throttle_next = 0;
        self.throttle_rate = 0.0;
        self.fail_next = 0;
        self.fail_rate = 0.0;
        self.throttled_until = None;
    }
}

/// Clamps a run-time rate to 0–1 (NaN: 0).
pub(crate) fn rate(rate: f64) -> f64 {
    if rate.is_finite() {
        rate.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A request budget a stand-in holds its clients to: at most `per_second` requests in any
/// second and `per_hour` in any hour, the inner requests of a Graph `$batch` each counted
/// (Graph throttles them one by one, docs/mdm.md §1.7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Budget {
    pub per_second: Option<f64>,
    pub per_hour: Option<u32>,
}

impl Budget {
    /// Whole requests allowed in one second (2.5 allows 2, below one allows one).
    fn second_limit(&self) -> Option<usize> {
        self.per_second
            .map(|r| if r >= 1.0 { r.floor() as usize } else { 1 })
    }
}

/// What one stand-in saw of its clients' request rate: counted as the requests arrive,
/// over sliding windows of a second and an hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    pub service: String,
    pub budget: Budget,
    /// Requests counted (a `$batch` as its inner requests).
    pub requests: usize,
    /// The most counted in any one second / any one hour.
    pub peak_per_second: usize,
    pub peak_per_hour: usize,
    /// Requests per second from the first to the last request.
    pub mean_per_second: f64,
    /// How often a window held more than the budget, and the first few times, said.
    pub violations: usize,
    pub first_violations: Vec<String>,
}

/// Violations described in a report, at most.
const VIOLATIONS_KEPT: usize = 10;

#[derive(Debug, Default)]
struct Load {
    budget: Budget,
    /// Arrivals of the last hour (of the last second without an hourly budget), with how
    /// many requests each counts for.
    arrivals: VecDeque<(Instant, usize)>,
    requests: usize,
    peak_second: usize,
    peak_hour: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    violations: usize,
    first_violations: Vec<String>,
}

impl Load {
    fn count(&mut self, service: MdmService, at: Instant, weight: usize) {
        self.requests += weight;
        self.first.get_or_insert(at);
        self.last = Some(self.last.map_or(at, |l| l.max(at)));
        self.arrivals.push_back((at, weight));
        let hour = Duration::from_secs(3600);
        while self
            .arrivals
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) >= hour)
        {
            self.arrivals.pop_front();
        }
        let within = |length: Duration| -> usize {
            self.arrivals
                .iter()
                .rev()
                .take_while(|(t, _)| at.saturating_duration_since(*t) < length)
                .map(|(_, w)| *w)
                .sum()
        };
        let second = within(Duration::from_secs(1));
        let in_hour: usize = self.arrivals.iter().map(|(_, w)| *w).sum();
        self.peak_second = self.peak_second.max(second);
        self.peak_hour = self.peak_hour.max(in_hour);
        let mut over = Vec::new();
        if let Some(limit) = self.budget.second_limit().filter(|l| second > *l) {
            over.push(format!(
                "{second} requests within one second, budget {limit}"
            ));
        }
        if let Some(limit) = self.budget.per_hour.filter(|l| in_hour > *l as usize) {
            over.push(format!(
                "{in_hour} requests within one hour, budget {limit}"
            ));
        }
        for what in over {
            self.violations += 1;
            tracing::error!(?service, "request budget exceeded: {what}");
            if self.first_violations.len() < VIOLATIONS_KEPT {
                let since = self
                    .first
                    .map_or(Duration::ZERO, |f| at.saturating_duration_since(f));
                self.first_violations.push(format!(
                    "{:.3} s after the first request: {what}",
                    since.as_secs_f64()
                ));
            }
        }
    }

    fn report(&self, service: MdmService) -> LoadReport {
        let span = match (self.first, self.last) {
            (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64(),
            _ => 0.0,
        };
        LoadReport {
            service: format!("{service:?}"),
            budget: self.budget,
            requests: self.requests,
            peak_per_second: self.peak_second,
            peak_per_hour: self.peak_hour,
            mean_per_second: if span > 0.0 {
                self.requests as f64 / span
            } else {
                self.requests as f64
            },
            violations: self.violations,
            first_violations: self.first_violations.clone(),
        }
    }
}

/// Faults and log of one service.
#[derive(Debug)]
pub(crate) struct ServiceCore {
    pub service: MdmService,
    pub faults: Mutex<Faults>,
    log: Mutex<VecDeque<MdmRequest>>,
    load: Mutex<Load>,
}

impl ServiceCore {
    pub fn new(service: MdmService, spec: &HttpFaultSpec, seed: u64) -> Self {
        ServiceCore {
            service,
            faults: Mutex::new(Faults::new(spec, seed)),
            log: Mutex::new(VecDeque::new()),
            load: Mutex::new(Load {
                budget: Budget {
                    per_second: spec.max_requests_per_second,
                    per_hour: spec.max_requests_per_hour,
                },
                ..Load::default()
            }),
        }
    }

    /// Holds the clients to `budget` from now on (counts so far are kept).
    pub fn set_budget(&self, budget: Budget) {
        lock(&self.load).budget = budget;
    }

    /// The request rate seen so far.
    pub fn load(&self) -> LoadReport {
        lock(&self.load).report(self.service)
    }

    /// Counts `weight` more requests that arrived at `at`.
    pub fn count(&self, at: Instant, weight: usize) {
        lock(&self.load).count(self.service, at, weight);
    }

    /// Logs one request of a `$batch` (without secrets, as [`ServiceCore::serve`] logs).
    pub fn log_inner(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        answer: &Answer,
        at: Instant,
    ) {
        self.push(MdmRequest {
            service: self.service,
            method: method.to_string(),
            path: path.to_string(),
            query: redacted(query),
            fields: Vec::new(),
            authorization: true,
            status: answer.status,
            outcome: answer.outcome.clone(),
            retry_after: answer.retry_after,
            at,
            in_batch: true,
        });
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    pub fn requests(&self) -> Vec<MdmRequest> {
        lock(&self.log).iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.log).clear();
    }

    fn push(&self, entry: MdmRequest) {
        let mut log = lock(&self.log);
        if log.len() >= LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// Reads the request, applies the fault controls, lets `route` answer, adds the latency,
    /// logs it (without secrets) and builds the response. `route` sees a bounded body.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        route: impl FnOnce(&Req) -> Answer,
        error_body: impl Fn(u16, &str) -> Answer,
    ) -> Response<Full<Bytes>> {
        let at = Instant::now();
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let authorization = header(AUTHORIZATION);
        let content_type = header(CONTENT_TYPE);
        let declares_length = req.headers().contains_key(CONTENT_LENGTH)
            || req.headers().contains_key(TRANSFER_ENCODING);
        // Counted as it arrives; a `$batch` adds its other inner requests once read.
        self.count(at, 1);
        let verdict = self.faults().decide(at);
        let answer = match verdict {
            Verdict::Throttle { retry_after, early } => {
                let mut a = error_body(429, "Too many requests: retry after the advised delay.");
                a.outcome = MdmOutcome::Throttled { early };
                a.headers
                    .push(("Retry-After".to_string(), retry_after.to_string()));
                a.retry_after = Some(retry_after);
                a
            }
            Verdict::Fail { status } => {
                let mut a = error_body(status, "The service is temporarily unavailable.");
                a.outcome = MdmOutcome::InjectedFailure;
                a
            }
            Verdict::Garbage => Answer {
                status: 200,
                content_type: Some("application/json"),
                body: b"\x00{\"value\": [\xff garbage, not JSON".to_vec(),
                headers: Vec::new(),
                outcome: MdmOutcome::Garbage,
                fields: Vec::new(),
                retry_after: None,
            },
            Verdict::Pass => match crate::http::read_body(req.into_body(), MAX_BODY).await {
                Err(e) => {
                    let mut a = error_body(e.status(), &e.to_string());
                    a.outcome = MdmOutcome::BadRequest {
                        reason: e.to_string(),
                    };
                    a
                }
                Ok(body) => route(&Req {
                    at,
                    method: &method,
                    path: &path,
                    query: &query,
                    authorization: authorization.as_deref(),
                    content_type: content_type.as_deref(),
                    declares_length,
                    body: &body,
                }),
            },
        };
        let latency = self.faults().latency_at(at);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        // Paths and statuses only: queries may be long, and headers and bodies hold secrets.
        tracing::info!(
            service = ?self.service,
            %method,
            %path,
            status = answer.status,
            outcome = ?answer.outcome,
            "answered"
        );
        self.push(MdmRequest {
            service: self.service,
            method,
            path,
            query: redacted(&query),
            fields: answer.fields.clone(),
            authorization: authorization.is_some(),
            status: answer.status,
            outcome: answer.outcome.clone(),
            retry_after: answer.retry_after,
            at,
            in_batch: false,
        });
        let mut headers = answer.headers;
        headers.push((
            "request-id".to_string(),
            uuid::Uuid::new_v4().hyphenated().to_string(),
        ));
        crate::http::response(answer.status, answer.content_type, headers, answer.body)
    }
}

/// Query parameters as the log keeps them: secret-looking values replaced.
fn redacted(query: &[(String, String)]) -> Vec<(String, String)> {
    query
        .iter()
        .map(|(k, v)| {
            let secret = SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
            let v = if secret {
                "<redacted>".to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// A request as a route sees it: the body read in full (bounded).
pub(crate) struct Req<'a> {
    /// When the request arrived.
    pub at: Instant,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub authorization: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// The request declared its body's length (`Content-Length` or `Transfer-Encoding`).
    pub declares_length: bool,
    pub body: &'a [u8],
}

impl Req<'_> {
    /// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
    pub fn bearer(&self) -> Option<&str> {
        let (scheme, token) = self.authorization?.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One answer, before HTTP.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub outcome: MdmOutcome,
    /// Token requests: the form's field names, for the log.
    pub fields: Vec<String>,
    pub retry_after: Option<u64>,
}

impl Answer {
    pub fn json(
        status: u16,
        content_type: &'static str,
        value: &Value,
        outcome: MdmOutcome,
    ) -> Self {
        Answer {
            status,
            content_type: Some(content_type),
            body: serde_json::to_vec(value).unwrap_or_default(),
            headers: Vec::new(),
            outcome,
            fields: Vec::new(),
            retry_after: None,
        }
    }

    pub fn empty(status: u16, outcome: MdmOutcome) -> Self {
        Answer {
            status,
            content_type: None,
            body: Vec::new(),
            headers: Vec::new(),
            outcome,
            fields: Vec::new(),
            retry_after: None,
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// The outcome an error status stands for when a route does not say more.
pub(crate) fn outcome_for(status: u16, reason: &str) -> MdmOutcome {
    match status {
        401 => MdmOutcome::Unauthorized {
            reason: reason.to_string(),
        },
        404 => MdmOutcome::NotFound,
        405 => MdmOutcome::MethodNotAllowed,
        500..=599 => MdmOutcome::InjectedFailure,
        _ => MdmOutcome::BadRequest {
            reason: reason.to_string(),
        },
    }
}

/// Seconds since the Unix epoch now.
/// Time since the epoch, to the nanosecond.
pub(crate) fn unix_now_precise() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (proleptic Gregorian, UTC).
pub(crate) fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {

    /// `[[kandji.api.window]]` & co.: inside a window every request gets its answer, before
    /// throttling and failures; outside, the usual rules.
    #[test]
    fn windows_answer_every_request_their_way() {
        let spec = HttpFaultSpec {
            windows: vec![
                FaultWindow {
                    from_ms: 1000,
                    until_ms: 2000,
                    answer: WindowAnswer::Fail,
                    latency_ms: 0,
                },
                FaultWindow {
                    from_ms: 3000,
                    until_ms: 4000,
                    answer: WindowAnswer::Garbage,
                    latency_ms: 0,
                },
                FaultWindow {
                    from_ms: 5000,
                    until_ms: 6000,
                    answer: WindowAnswer::Slow,
                    latency_ms: 7000,
                },
            ],
            latency_ms: 10,
            ..HttpFaultSpec::default()
        };
        let mut f = Faults::new(&spec, 1);
        let t0 = f.started;
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(f.decide(at(500)), Verdict::Pass);
        assert_eq!(f.decide(at(1000)), Verdict::Fail { status: 503 });
        assert_eq!(f.decide(at(1999)), Verdict::Fail { status: 503 });
        assert_eq!(f.decide(at(2000)), Verdict::Pass);
        assert_eq!(f.decide(at(3500)), Verdict::Garbage);
        assert_eq!(f.decide(at(5500)), Verdict::Pass);
        assert_eq!(f.latency_at(at(5500)), Duration::from_millis(7010));
        assert_eq!(f.latency_at(at(6000)), Duration::from_millis(10));
    }

    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn throttling_window_and_counters() {
        let spec = HttpFaultSpec {
            throttle_next: 1,
            retry_after_secs: Some(2),
            fail_next: 1,
            ..HttpFaultSpec::default()
        };
        let mut f = Faults::new(&spec, 1);
        let t0 = Instant::now();
        assert_eq!(
            f.decide(t0),
            Verdict::Throttle {
                retry_after: 2,
                early: false
            }
        );
        assert_eq!(
            f.decide(t0 + Duration::from_millis(500)),
            Verdict::Throttle {
                retry_after: 2,
                early: true
            }
        );
        assert_eq!(
            f.decide(t0 + Duration::from_millis(1500)),
            Verdict::Throttle {
                retry_after: 1,
                early: true
            }
        );
        assert_eq!(
            f.decide(t0 + Duration::from_secs(2)),
            Verdict::Fail { status: 503 }
        );
        assert_eq!(f.decide(t0 + Duration::from_secs(3)), Verdict::Pass);
    }
}
