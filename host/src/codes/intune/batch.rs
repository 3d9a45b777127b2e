//! Graph JSON batching of the per-record GETs (docs/code-sources.md, "Graph JSON
//! batching"): the GETs of every phone waiting within a short window go out together as
//! `POST /v1.0/$batch`, at most 20 to a batch (and never more than the request budget allows
//! at once: Graph counts each inner request against its limits, docs/mdm.md §1.7). A GET
//! that finds nobody to share with goes out alone, as a plain GET. The answers come back one
//! by one, each with its own status: the caller handles an inner 429 or 404 as it handles
//! the same answer to a plain GET.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use station_config::SecretString;
use tokio::sync::oneshot;

use super::IntuneError;
use crate::http::{HttpClient, HttpResponse};

/// Graph's limit of requests in one batch (docs/mdm.md §1.7).
pub const MAX_BATCH: usize = 20;
/// How long the first GET waits for others to join it: short against Graph's own latency,
/// long enough for phones identified together to share one round trip.
pub const COLLECTION_WINDOW: Duration = Duration::from_millis(15);

/// One GET's answer as it came back: whether it went out alone (`HttpClient` then already
/// retried a 429 or 5xx) or inside a batch (the caller retries an inner 429 or 5xx).
pub(super) struct Answered {
    pub response: HttpResponse,
    pub batched: bool,
}

struct Waiting {
    /// Relative to the version root: `/deviceManagement/managedDevices/{id}?$select=…`.
    path: String,
    token: SecretString,
    reply: oneshot::Sender<Result<Answered, IntuneError>>,
}

/// The GETs waiting for the next batch.
pub(super) struct Batcher {
    queue: Arc<Mutex<Queue>>,
    window: Duration,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher {
            queue: Arc::default(),
            window: COLLECTION_WINDOW,
        }
    }
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A collector is waiting out its window and will take the queue.
    collecting: bool,
}

#[derive(Serialize)]
struct BatchRequest<'a> {
    requests: Vec<InnerRequest<'a>>,
}

#[derive(Serialize)]
struct InnerRequest<'a> {
    id: String,
    method: &'static str,
    url: &'a str,
}

#[derive(Deserialize)]
struct BatchAnswer {
    responses: Vec<InnerResponse>,
}

#[derive(Deserialize)]
struct InnerResponse {
    id: String,
    status: u16,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    body: Option<serde_json::Value>,
}

impl Batcher {
    /// A batcher whose first GET waits `window` for others.
    #[cfg(test)]
    pub fn with_window(window: Duration) -> Self {
        Batcher {
            window,
            ..Batcher::default()
        }
    }

    /// GETs `path` (relative to `{graph_root}/v1.0`) with `token`, in a batch when others are
    /// waiting too. The batch is sent by a task of its own, so a phone whose look-up is
    /// dropped (its lock turned out to be gone) never strands the GETs it collected.
    pub async fn get(
        &self,
        http: &HttpClient,
        graph_root: &str,
        path: String,
        token: SecretString,
    ) -> Result<Answered, IntuneError> {
        let (reply, answer) = oneshot::channel();
        let collect = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.waiting.push(Waiting { path, token, reply });
            !std::mem::replace(&mut queue.collecting, true)
        };
        if collect {
            let queue = self.queue.clone();
            let http = http.clone();
            let root = graph_root.trim_end_matches('/').to_string();
            let window = self.window;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                let waiting = {
                    let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                    queue.collecting = false;
                    std::mem::take(&mut queue.waiting)
                };
                let size = MAX_BATCH.min(http.largest_burst()).max(1);
                let mut chunks = Vec::new();
                let mut waiting = waiting.into_iter().peekable();
                while waiting.peek().is_some() {
                    chunks.push(waiting.by_ref().take(size).collect::<Vec<_>>());
                }
                futures_util::future::join_all(
                    chunks.into_iter().map(|chunk| send(&http, &root, chunk)),
                )
                .await;
            });
        }
        answer.await.map_err(|_| IntuneError::BadAnswer {
            what: "Graph's $batch",
            reason: "the batch ended without an answer for this request".into(),
        })?
    }
}

fn headers(token: &SecretString, json_body: bool) -> Vec<(String, String)> {
    let mut headers = vec![
        (
            "authorization".to_string(),
            format!("Bearer {}", token.expose()),
        ),
        ("accept".to_string(), "application/json".to_string()),
    ];
    if json_body {
        headers.push(("content-type".to_string(), "application/json".to_string()));
    }
    headers
}

/// Sends one chunk: a plain GET when it holds one request, else a `$batch`; every waiter
/// gets its own answer.
async fn send(http: &HttpClient, root: &str, chunk: Vec<Waiting>) {
    if chunk.len() == 1 {
        for one in chunk {
            let url = format!("{root}/v1.0{}", one.path);
            let result = http
                .get(&url, &headers(&one.token, false))
                .await
                .map(|response| Answered {
                    response,
                    batched: false,
                })
                .map_err(IntuneError::from);
            let _ = one.reply.send(result);
        }
        return;
    }
    let body = BatchRequest {
        requests: chunk
            .iter()
            .enumerate()
            .map(|(index, w)| InnerRequest {
                id: (index + 1).to_string(),
                method: "GET",
                url: &w.path,
            })
            .collect(),
    };
    let body = match serde_json::to_vec(&body) {
        Ok(body) => body,
        Err(e) => {
            for waiting in chunk {
                let _ = waiting.reply.send(Err(IntuneError::BadAnswer {
                    what: "Graph's $batch",
                    reason: format!("the batch could not be written: {e}"),
                }));
            }
            return;
        }
    };
    // Every request of a chunk carries the token its phone read; they are the same token
    // unless it was renewed meanwhile, and a stale one gets a 401 each caller handles.
    let url = format!("{root}/v1.0/$batch");
    let sent = http
        .send_counted(
            reqwest::Method::POST,
            &url,
            &headers(&chunk[0].token, true),
            &body,
            chunk.len(),
        )
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            let reason = e.to_string();
            for waiting in chunk {
                let _ = waiting.reply.send(Err(IntuneError::BadAnswer {
                    what: "Graph's $batch",
                    reason: reason.clone(),
                }));
            }
            return;
        }
    };
    if response.status != 200 {
        // The batch itself refused (401, 403, 429 after the retries, 5xx): each request
        // gets that answer, as if it had been sent alone.
        for waiting in chunk {
            let _ = waiting.reply.send(Ok(Answered {
                response: response.clone(),
                batched: false,
            }));
        }
        return;
    }
    let mut answers = match decode(&response.body) {
        Ok(answers) => answers,
        Err(reason) => {
            for waiting in chunk {
                let _ = waiting.reply.send(Err(IntuneError::BadAnswer {
                    what: "Graph's $batch",
                    reason: reason.clone(),
                }));
            }
            return;
        }
    };
    for (index, waiting) in chunk.into_iter().enumerate() {
        let result = answers
            .remove(&(index + 1).to_string())
            .map(|response| Answered {
                response,
                batched: true,
            })
            .ok_or_else(|| IntuneError::BadAnswer {
                what: "Graph's $batch",
                reason: format!("no answer to request {}", index + 1),
            });
        let _ = waiting.reply.send(result);
    }
}

/// The inner answers by request id. A JSON body is kept as JSON text; any other body comes
/// base64-encoded (Graph's rule for non-JSON content) and is decoded.
pub(super) fn decode(body: &[u8]) -> Result<HashMap<String, HttpResponse>, String> {
    let answer: BatchAnswer = crate::codes::answer::parse_json(body)?;
    let mut out = HashMap::new();
    for inner in answer.responses {
        let headers: Vec<(String, String)> = inner
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let body = match inner.body {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(text)) => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .unwrap_or_else(|_| text.into_bytes()),
            Some(value) => serde_json::to_vec(&value).map_err(|e| e.to_string())?,
        };
        out.insert(
            inner.id,
            HttpResponse {
                status: inner.status,
                headers,
                body,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like the example answer of Microsoft's JSON batching page: ids as strings,
    /// answers in any order, a 429 with its `Retry-After` among them.
    #[test]
    fn inner_answers_are_read_one_by_one() {
        let body = br#"{"responses":[
            {"id":"2","status":404,"headers":{"Content-Type":"application/json"},"body":{"error":{"code":"ResourceNotFound","message":"no record"}}},
            {"id":"1","status":200,"headers":{"Content-Type":"application/json"},"body":{"id":"a","serialNumber":"S"}},
            {"id":"3","status":429,"headers":{"Retry-After":"7"},"body":{"error":{"code":"TooManyRequests","message":"slow down"}}}
        ]}"#;
        let answers = decode(body).expect("a batch answer");
        assert_eq!(answers["1"].status, 200);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&answers["1"].body).expect("json")
                ["serialNumber"],
            "S"
        );
        assert_eq!(answers["2"].status, 404);
        assert_eq!(answers["3"].retry_after(), Some(Duration::from_secs(7)));
        assert!(decode(b"[]").is_err());
    }
}
