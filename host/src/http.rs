//! HTTP to Apple's activation server (or the bench's stand-in) and to the MDM APIs the
//! bypass-code sources call: bounded in time and size, TLS verified for https, redirects
//! followed, 5xx / 429 / transport failures retried with exponential backoff, `Retry-After`
//! honoured, and optionally a request-rate bound shared by every request of one client.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Largest response body accepted; activation records are a few KiB, lock pages less, an MDM
/// page of 1000 devices a few hundred KiB.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Longest `Retry-After` waited for; a longer one ends the request with the 429.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per request (1 = no retry).
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The configuration's `[retry]` table (at least one attempt).
    pub fn from_config(retry: &station_config::Retry) -> Self {
        RetryPolicy {
            attempts: retry.attempts.max(1),
            initial_backoff: Duration::from_millis(retry.initial_backoff_ms),
            max_backoff: Duration::from_millis(retry.max_backoff_ms),
        }
    }

    /// The wait before attempt `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Every response header, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name; names are case-insensitive (RFC 9110 §5.1).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Retry-After` as a delay from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
    pub fn retry_after(&self) -> Option<Duration> {
        parse_retry_after(self.header("retry-after")?, SystemTime::now())
    }
}

fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // A date in the past means "now"; round up so we never ask a second too early.
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(if wait.subsec_nanos() > 0 {
        Duration::from_secs(wait.as_secs() + 1)
    } else {
        wait
    })
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{service} unreachable at {url}: {reason}")]
    Transport {
        service: &'static str,
        url: String,
        reason: String,
    },
    #[error("{service} sent more than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge { service: &'static str },
    #[error("invalid {service} URL {url:?}: {reason}")]
    BadUrl {
        service: &'static str,
        url: String,
        reason: String,
    },
    /// The value is never shown: it may be a credential.
    #[error("invalid value of header {name} for {service}")]
    BadHeader { service: &'static str, name: String },
}

/// A request budget: at most `per_second` requests in any second and, where the service
/// counts per hour, at most `per_hour` in any hour (docs/code-sources.md, "Request budgets").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub per_second: f64,
    pub per_hour: Option<u32>,
}

impl Budget {
    pub fn per_second(per_second: f64) -> Self {
        Budget {
            per_second,
            per_hour: None,
        }
    }
}

/// Added to the limiter's windows: requests leave here spaced by the window, and arrive at
/// the service spaced by less when their way there varies (a new connection, a busy
/// machine: the bench measured arrivals bunched by more than 50 ms under load).
const SECOND_MARGIN: Duration = Duration::from_millis(250);
const HOUR_MARGIN: Duration = Duration::from_secs(10);

/// At most `limit` requests in any `length` of time.
#[derive(Debug, Clone, Copy)]
struct Window {
    limit: usize,
    length: Duration,
}

/// Sliding windows over the times requests were sent: at most `per_second` in any second
/// (bursts of up to `per_second`, at least one; below one a second, one every `1 /
/// per_second` s) and at most `per_hour` in any hour. Unlike a token bucket, no window of
/// the service's own counting can see more than the budget. A `Retry-After` pauses every
/// request of the client, whatever the budget allows.
#[derive(Debug)]
pub struct RateLimiter {
    windows: Vec<Window>,
    state: Mutex<Sent>,
}

#[derive(Debug)]
struct Sent {
    /// When each request of the longest window was sent, oldest first.
    at: std::collections::VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl RateLimiter {
    /// `per_second` must be positive; anything else is taken as one request a second.
    pub fn new(per_second: f64) -> Self {
        Self::new_budget(Budget::per_second(per_second))
    }

    pub fn new_budget(budget: Budget) -> Self {
        let per_second = if budget.per_second.is_finite() && budget.per_second > 0.0 {
            budget.per_second
        } else {
            1.0
        };
        let mut windows = vec![if per_second >= 1.0 {
            Window {
                // Whole requests: 2.5 a second allows 2 in any second.
                limit: per_second.floor() as usize,
                length: Duration::from_secs(1) + SECOND_MARGIN,
            }
        } else {
            Window {
                limit: 1,
                length: Duration::from_secs_f64(1.0 / per_second) + SECOND_MARGIN,
            }
        }];
        if let Some(per_hour) = budget.per_hour.filter(|h| *h > 0) {
            windows.push(Window {
                limit: per_hour as usize,
                length: Duration::from_secs(3600) + HOUR_MARGIN,
            });
        }
        RateLimiter {
            windows,
            state: Mutex::new(Sent {
                at: std::collections::VecDeque::new(),
                paused_until: None,
            }),
        }
    }

    /// The most requests [`RateLimiter::acquire_many`] takes at once.
    pub fn largest_burst(&self) -> usize {
        self.windows
            .iter()
            .map(|w| w.limit)
            .min()
            .unwrap_or(1)
            .max(1)
    }

    /// Waits until a request may be sent, and counts it.
    pub async fn acquire(&self) {
        self.acquire_many(1).await;
    }

    /// Waits until `count` requests may be sent at once (at most
    /// [`RateLimiter::largest_burst`]), and counts them.
    pub async fn acquire_many(&self, count: usize) {
        let count = count.clamp(1, self.largest_burst());
        loop {
            let wait = {
                let mut sent = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let longest = self
                    .windows
                    .iter()
                    .map(|w| w.length)
                    .max()
                    .unwrap_or_default();
                while sent
                    .at
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) >= longest)
                {
                    sent.at.pop_front();
                }
                match sent.paused_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        let wait = self
                            .windows
                            .iter()
                            .filter_map(|w| w.wait(&sent.at, now, count))
                            .max();
                        match wait {
                            Some(wait) => wait,
                            None => {
                                sent.at.extend(std::iter::repeat_n(now, count));
                                return;
                            }
                        }
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// No request of this client before `until` (a server's `Retry-After`).
    pub fn pause_until(&self, until: Instant) {
        let mut sent = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if sent.paused_until.is_none_or(|p| p < until) {
            sent.paused_until = Some(until);
        }
    }
}

impl Window {
    /// How long until `count` more fit in this window; `None` when they fit now.
    fn wait(
        &self,
        sent: &std::collections::VecDeque<Instant>,
        now: Instant,
        count: usize,
    ) -> Option<Duration> {
        let start = sent.partition_point(|t| now.saturating_duration_since(*t) >= self.length);
        let inside = sent.len() - start;
        let over = (inside + count).checked_sub(self.limit)?;
        if over == 0 {
            return None;
        }
        // The oldest `over` requests in the window must leave it first.
        let leaves = sent[start + over - 1] + self.length;
        Some(
            leaves
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        )
    }
}

#[derive(Debug, Clone)]
pub struct HttpClient {
    /// Built on the first request, shared by every clone (one connection pool). Building it
    /// loads the system's root certificates (rustls-platform-verifier reads them all from
    /// disk), a cost a command that ends before reaching the server must not pay.
    client: Arc<OnceLock<reqwest::Client>>,
    user_agent: String,
    timeout: Duration,
    retry: RetryPolicy,
    /// Names the server in errors and logs.
    service: &'static str,
    limiter: Option<Arc<RateLimiter>>,
}

impl HttpClient {
    pub fn new(user_agent: &str, timeout: Duration, retry: RetryPolicy) -> Result<Self, HttpError> {
        Self::for_service("activation server", user_agent, timeout, retry)
    }

    pub fn for_service(
        service: &'static str,
        user_agent: &str,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, HttpError> {
        // A user agent reqwest would refuse fails here, as it did when the client was built
        // at once; everything else that can fail is the TLS set-up of the first request.
        reqwest::header::HeaderValue::from_str(user_agent).map_err(|_| HttpError::BadHeader {
            service,
            name: "user-agent".into(),
        })?;
        Ok(HttpClient {
            client: Arc::new(OnceLock::new()),
            user_agent: user_agent.to_string(),
            timeout,
            retry,
            service,
            limiter: None,
        })
    }

    /// The reqwest client, built on first use.
    fn client(&self) -> Result<&reqwest::Client, HttpError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .user_agent(self.user_agent.as_str())
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| HttpError::Transport {
                service: self.service,
                url: String::new(),
                reason: error_chain(&e),
            })?;
        // Two first requests at once may both build one; the first stored wins.
        Ok(self.client.get_or_init(|| client))
    }

    /// True once a request has built the underlying client (and loaded the root
    /// certificates).
    pub fn is_built(&self) -> bool {
        self.client.get().is_some()
    }

    /// Bounds the request rate of this client (and its clones) to `per_second`.
    pub fn with_rate_limit(self, per_second: f64) -> Self {
        self.with_budget(Budget::per_second(per_second))
    }

    /// Bounds the requests of this client (and its clones) to `budget`.
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.limiter = Some(Arc::new(RateLimiter::new_budget(budget)));
        self
    }

    /// The most requests one [`HttpClient::send_counted`] may stand for; `usize::MAX`
    /// without a budget.
    pub fn largest_burst(&self) -> usize {
        self.limiter
            .as_ref()
            .map_or(usize::MAX, |l| l.largest_burst())
    }

    /// No request of this client (and its clones) before `until`: a `Retry-After` the
    /// caller read itself (an inner answer of a Graph `$batch`).
    pub fn pause_until(&self, until: Instant) {
        if let Some(limiter) = &self.limiter {
            limiter.pause_until(until);
        }
    }

    pub fn attempts(&self) -> u32 {
        self.retry.attempts
    }

    /// POSTs `body`; see [`HttpClient::send`].
    pub async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        self.send(reqwest::Method::POST, url, headers, body).await
    }

    /// GETs `url`; see [`HttpClient::send`].
    pub async fn get(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<HttpResponse, HttpError> {
        self.send(reqwest::Method::GET, url, headers, &[]).await
    }

    /// Sends one request; retries transport failures, 5xx and 429 answers (waiting at least
    /// the server's `Retry-After`). After the last attempt a 5xx / 429 response is returned as
    /// is (the caller classifies it), a transport failure as an error. An `Authorization`
    /// header is marked sensitive so that no layer below logs it.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        self.send_counted(method, url, headers, body, 1).await
    }

    /// [`HttpClient::send`] of one request that the service counts as `counted` against its
    /// limits (a Graph `$batch` counts each inner request): the budget is charged that many.
    pub async fn send_counted(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        counted: usize,
    ) -> Result<HttpResponse, HttpError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| HttpError::BadUrl {
            service: self.service,
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let service = self.service;
        let mut attempt = 1;
        loop {
            if let Some(limiter) = &self.limiter {
                limiter.acquire_many(counted).await;
            }
            let result = self
                .send_once(method.clone(), parsed.clone(), headers, body)
                .await;
            let wait = match &result {
                Ok(response) if response.status == 429 || response.status >= 500 => {
                    let backoff = self.retry.backoff(attempt);
                    match response.retry_after() {
                        Some(after) if after > MAX_RETRY_AFTER => None,
                        Some(after) => Some(after.max(backoff)),
                        None => Some(backoff),
                    }
                }
                Ok(_) => None,
                Err(HttpError::Transport { .. }) => Some(self.retry.backoff(attempt)),
                Err(_) => None,
            };
            let Some(wait) = wait.filter(|_| attempt < self.retry.attempts) else {
                return result;
            };
            match &result {
                Ok(response) => {
                    tracing::warn!(
                        service,
                        url,
                        status = response.status,
                        attempt,
                        ?wait,
                        "{service} answered HTTP {}; retrying",
                        response.status
                    )
                }
                Err(e) => {
                    tracing::warn!(service, url, error = %e, attempt, ?wait, "{service} unreachable; retrying")
                }
            }
            if let Some(limiter) = &self.limiter {
                limiter.pause_until(Instant::now() + wait);
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn send_once(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        let service = self.service;
        let transport = |e: reqwest::Error| HttpError::Transport {
            service,
            url: url.to_string(),
            reason: error_chain(&e),
        };
        // Graph answers 411 to a bodyless POST that declares no length over HTTP/1.1, and
        // hyper adds `content-length: 0` by itself only over HTTP/2 (docs/mdm.md §1.3).
        let declares_empty_body = body.is_empty()
            && matches!(
                method,
                reqwest::Method::POST | reqwest::Method::PUT | reqwest::Method::PATCH
            );
        let mut request = self.client()?.request(method, url.clone());
        if !body.is_empty() {
            request = request.body(body.to_vec());
        } else if declares_empty_body {
            request = request.header(reqwest::header::CONTENT_LENGTH, "0");
        }
        for (name, value) in headers {
            let Ok(mut value) = reqwest::header::HeaderValue::from_str(value) else {
                return Err(HttpError::BadHeader {
                    service,
                    name: name.clone(),
                });
            };
            if name.eq_ignore_ascii_case("authorization") {
                value.set_sensitive(true);
            }
            request = request.header(name.as_str(), value);
        }
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::TooLarge { service });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// reqwest's Display hides the cause ("error sending request"); the chain says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_server::{Reply, TestServer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback HTTP server answering each connection with the next canned status.
    async fn server(statuses: Vec<u16>) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = tokio::spawn(async move {
            let mut served = 0;
            for status in statuses {
                let Ok((mut socket, _)) = listener.accept().await else {
                    break;
                };
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let body = format!("status {status}");
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nX-Test: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                served += 1;
            }
            served
        });
        (
            format!("http://{addr}/deviceservices/deviceActivation"),
            handle,
        )
    }

    #[tokio::test]
    async fn redirects_are_followed_keeping_the_post() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut request_lines = Vec::new();
            for reply in [
                "HTTP/1.1 307 Moved\r\nLocation: /deviceservices/moved\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            ] {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.expect("read");
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                request_lines.push(text.lines().next().unwrap_or_default().to_string());
                socket.write_all(reply.as_bytes()).await.expect("write");
            }
            request_lines
        });
        let client =
            HttpClient::new("test", Duration::from_secs(5), quick_retry(1)).expect("client");
        let response = client
            .post(
                &format!("http://{addr}/deviceservices/deviceActivation"),
                &[],
                b"x",
            )
            .await
            .expect("post");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok");
        let lines = server.await.expect("server");
        assert_eq!(lines[1], "POST /deviceservices/moved HTTP/1.1");
    }

    fn quick_retry(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_success() {
        let (url, server) = server(vec![503, 500, 200]).await;
        let client =
            HttpClient::new("test", Duration::from_secs(5), quick_retry(4)).expect("client");
        let response = client.post(&url, &[], b"x").await.expect("post");
        assert_eq!(response.status, 200);
        assert!(response
            .headers
            .iter()
            .any(|(k, v)| k == "x-test" && v == "yes"));
        assert_eq!(response.body, b"status 200");
        assert_eq!(server.await.expect("server"), 3);
    }

    #[tokio::test]
    async fn persistent_server_errors_return_the_last_answer() {
        let (url, server) = server(vec![502, 502]).await;
        let client =
            HttpClient::new("test", Duration::from_secs(5), quick_retry(2)).expect("client");
        let response = client.post(&url, &[], b"x").await.expect("post");
        assert_eq!(response.status, 502);
        assert_eq!(server.await.expect("server"), 2);
    }

    #[tokio::test]
    async fn unreachable_server_is_a_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let client =
            HttpClient::new("test", Duration::from_secs(2), quick_retry(2)).expect("client");
        let err = client
            .post(&format!("http://127.0.0.1:{port}/x"), &[], b"")
            .await
            .expect_err("refused");
        assert!(matches!(err, HttpError::Transport { .. }), "{err}");
    }

    /// Answers with the canned replies in turn, then 200.
    async fn replaying(replies: Vec<Reply>) -> TestServer {
        let replies = std::sync::Mutex::new(replies);
        TestServer::start(move |_| {
            let mut replies = replies.lock().expect("replies");
            if replies.is_empty() {
                Reply::empty(200)
            } else {
                replies.remove(0)
            }
        })
        .await
    }

    #[tokio::test]
    async fn throttling_waits_for_retry_after_and_pauses_the_whole_client() {
        let server = replaying(vec![Reply::empty(429).with_header("Retry-After", "1")]).await;
        let client =
            HttpClient::for_service("test", "test", Duration::from_secs(5), quick_retry(3))
                .expect("client")
                .with_rate_limit(100.0);
        let other = client.clone();
        let url = format!("{}/a", server.url);
        let (first, second) = tokio::join!(client.get(&url, &[]), async {
            // Sent while the first waits out its Retry-After: it must wait too.
            tokio::time::sleep(Duration::from_millis(200)).await;
            other.get(&url, &[]).await
        });
        assert_eq!(first.expect("first").status, 200);
        assert_eq!(second.expect("second").status, 200);
        let requests = server.requests();
        assert_eq!(requests.len(), 3);
        for later in &requests[1..] {
            let gap = later.at.duration_since(requests[0].at);
            assert!(gap >= Duration::from_millis(990), "a request after {gap:?}");
        }
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_limit_is_not_waited_for() {
        let server = replaying(vec![Reply::empty(429).with_header("Retry-After", "3600")]).await;
        let client =
            HttpClient::for_service("test", "test", Duration::from_secs(5), quick_retry(3))
                .expect("client");
        let response = client.get(&server.url, &[]).await.expect("get");
        assert_eq!(response.status, 429);
        assert_eq!(response.retry_after(), Some(Duration::from_secs(3600)));
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn the_client_is_built_by_the_first_request_and_shared_by_clones() {
        let (url, server) = server(vec![200]).await;
        let client =
            HttpClient::new("test", Duration::from_secs(5), quick_retry(1)).expect("client");
        let clone = client.clone();
        assert!(!client.is_built(), "built before any request");
        let response = clone.post(&url, &[], b"x").await.expect("post");
        assert_eq!(response.status, 200);
        assert!(
            client.is_built(),
            "a clone's request did not build the shared client"
        );
        assert_eq!(server.await.expect("server"), 1);
    }

    #[test]
    fn a_user_agent_no_header_can_carry_is_refused_at_once() {
        let err = HttpClient::new("bad\nagent", Duration::from_secs(5), quick_retry(1))
            .expect_err("a newline in the user agent");
        assert!(matches!(err, HttpError::BadHeader { .. }), "{err}");
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[tokio::test]
    async fn the_rate_limiter_spaces_requests() {
        let limiter = RateLimiter::new(20.0);
        let started = Instant::now();
        for _ in 0..30 {
            limiter.acquire().await;
        }
        // 20 at once, then 20 a second.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(480), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    /// An hourly budget holds across seconds, and a request that counts for several (a
    /// Graph `$batch`) takes that many from every window.
    #[tokio::test]
    async fn hourly_budgets_and_counted_requests() {
        let limiter = RateLimiter::new_budget(Budget {
            per_second: 10.0,
            per_hour: Some(25),
        });
        assert_eq!(limiter.largest_burst(), 10);
        let started = Instant::now();
        limiter.acquire_many(8).await;
        limiter.acquire_many(3).await; // 11 in a second: waits for the next
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        limiter.acquire_many(10).await;
        limiter.acquire_many(4).await; // 25 within the hour: the budget is spent
        let spent = tokio::time::timeout(Duration::from_millis(1500), limiter.acquire()).await;
        assert!(spent.is_err(), "a 26th request within the hour");
        // The hour's window, computed: the oldest 8 leave an hour after they were sent.
        let hour = limiter.windows[1];
        let sent = limiter.state.lock().expect("state").at.clone();
        let wait = hour.wait(&sent, Instant::now(), 1).expect("must wait");
        assert!(wait > Duration::from_secs(3590), "{wait:?}");
        // More than the smallest window holds is taken as the most it holds.
        let small = RateLimiter::new(2.0);
        small.acquire_many(5).await;
        let before = Instant::now();
        small.acquire().await;
        assert!(before.elapsed() >= Duration::from_secs(1));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(350));
        assert_eq!(policy.backoff(40), Duration::from_millis(350));
    }
}
