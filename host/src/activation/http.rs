//! HTTP to Apple's activation server (or the bench's stand-in): bounded in time and size,
//! TLS verified for https, redirects followed, 5xx and transport failures retried with
//! exponential backoff.

use std::time::Duration;

/// Largest response body accepted; activation records are a few KiB, lock pages less.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

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
    fn backoff(&self, attempt: u32) -> Duration {
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

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("activation server unreachable at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("activation server sent more than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("invalid activation server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    retry: RetryPolicy,
}

impl HttpClient {
    pub fn new(user_agent: &str, timeout: Duration, retry: RetryPolicy) -> Result<Self, HttpError> {
        let client = reqwest::Client::builder()
            .user_agent(user_agent)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| HttpError::Transport {
                url: String::new(),
                reason: e.to_string(),
            })?;
        Ok(HttpClient { client, retry })
    }

    pub fn attempts(&self) -> u32 {
        self.retry.attempts
    }

    /// POSTs `body`; retries transport failures and 5xx answers. After the last attempt a
    /// 5xx response is returned as is (the caller classifies it), a transport failure as
    /// an error.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| HttpError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let mut attempt = 1;
        loop {
            let result = self.post_once(parsed.clone(), headers, body).await;
            let retryable = match &result {
                Ok(response) => response.status >= 500,
                Err(HttpError::Transport { .. }) => true,
                Err(_) => false,
            };
            if !retryable || attempt >= self.retry.attempts {
                return result;
            }
            let wait = self.retry.backoff(attempt);
            match &result {
                Ok(response) => tracing::warn!(
                    url,
                    status = response.status,
                    attempt,
                    ?wait,
                    "activation server error; retrying"
                ),
                Err(e) => {
                    tracing::warn!(url, error = %e, attempt, ?wait, "activation server unreachable; retrying")
                }
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn post_once(
        &self,
        url: reqwest::Url,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        let transport = |e: reqwest::Error| HttpError::Transport {
            url: url.to_string(),
            reason: error_chain(&e),
        };
        let mut request = self.client.post(url.clone()).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(name, value);
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
                return Err(HttpError::TooLarge);
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
