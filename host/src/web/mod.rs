//! The live view of the line in a browser (docs/dashboard.md): `station run --http ADDR`.
//!
//! Read-only, GET only, on a plain HTTP/1.1 server (hyper):
//! - `/` with `/app.css` and `/app.js`: the page, embedded in the binary (no build step, no
//!   outside assets);
//! - `/events`: server-sent events. First a `board` message (the whole view, so a browser
//!   that arrives late sees the line as it is), then every event of the line exactly as its
//!   NDJSON line (docs/events.md, same `v`), and a fresh `board` whenever the view changed
//!   (at most every 250 ms, at once for the summary);
//! - `/metrics`: the Prometheus text format (`line::metrics`);
//! - `/healthz`: `ok` while the station serves.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections (more are closed at once), of which
//! [`MAX_STREAMS`] `/events` streams; one request per connection; request headers must come
//! within 5 s; a plain request's connection lives at most 30 s and a stream's 15 min (the
//! browser reconnects by itself and starts from a fresh `board`). A stream that falls
//! [`STREAM_QUEUE`] messages behind is dropped: the line never waits for a browser.
//! Bound to a loopback address, the server answers only requests whose `Host` names this
//! machine, so a web page elsewhere cannot read it through DNS rebinding.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::line::board::Board;
use crate::line::events::{Event, EventKind};
use crate::line::metrics::Metrics;

/// Connections served at once; one more is closed as soon as it is accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// `/events` streams at once (wall screens, phones, a Prometheus is not one of them).
pub const MAX_STREAMS: usize = 32;
/// Messages queued per stream; a stream this far behind is dropped.
pub const STREAM_QUEUE: usize = 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_MAX: Duration = Duration::from_secs(30);
const STREAM_MAX: Duration = Duration::from_secs(15 * 60);
/// How often a changed board is sent, and the keep-alive comment's period.
const BOARD_EVERY: Duration = Duration::from_millis(250);
const KEEPALIVE: Duration = Duration::from_secs(15);
/// What the browser waits before it reconnects a broken stream.
const RETRY_MS: u32 = 2000;

const INDEX_HTML: &str = include_str!("index.html");
const APP_CSS: &str = include_str!("app.css");
const APP_JS: &str = include_str!("app.js");

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, thiserror::Error)]
#[error("cannot serve the live view on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// What every request is answered from.
struct State {
    board: Board,
    metrics: Metrics,
    streams: Vec<mpsc::Sender<Bytes>>,
    /// The board changed since it was last sent.
    dirty: bool,
    closed: bool,
}

struct Hub {
    state: Mutex<State>,
    /// Bound to loopback (this address): the `Host` header must name this machine.
    loopback: Option<SocketAddr>,
    connections: Arc<Semaphore>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under a panic elsewhere: carry on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn board_message(state: &State) -> Option<Bytes> {
    let json = serde_json::to_string(&state.board.snapshot(now_ms())).ok()?;
    Some(Bytes::from(format!("event: board\ndata: {json}\n\n")))
}

/// Hands a message to every stream without waiting; drops those that fell behind.
fn broadcast(state: &mut State, message: &Bytes) {
    state
        .streams
        .retain(|tx| match tx.try_send(message.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    "a browser fell {STREAM_QUEUE} messages behind the live view and was dropped"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
}

/// The running server.
pub struct WebView {
    addr: SocketAddr,
    hub: Arc<Hub>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WebView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebView").field("addr", &self.addr).finish()
    }
}

impl WebView {
    /// Binds `addr` (already checked against the loopback rule) and starts serving
    /// `board` as the line's events come.
    pub async fn bind(addr: SocketAddr, board: Board) -> Result<WebView, BindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| BindError { addr, source })?;
        let hub = Arc::new(Hub {
            state: Mutex::new(State {
                board,
                metrics: Metrics::default(),
                streams: Vec::new(),
                dirty: false,
                closed: false,
            }),
            loopback: addr.ip().is_loopback().then_some(addr),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        });
        let tasks = vec![
            tokio::spawn(accept(listener, hub.clone())),
            tokio::spawn(tick(hub.clone())),
        ];
        Ok(WebView { addr, hub, tasks })
    }

    /// The address bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:8080/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Applies one event to the view and sends it to every stream, without waiting.
    pub fn publish(&self, event: &Event) {
        let Ok(json) = serde_json::to_string(event) else {
            return;
        };
        let mut state = self.hub.lock();
        state.board.apply(event);
        state.metrics.apply(event);
        state.dirty = true;
        let seq = state.metrics.events();
        broadcast(
            &mut state,
            &Bytes::from(format!("id: {seq}\ndata: {json}\n\n")),
        );
        if matches!(event.kind, EventKind::Summary(_)) {
            // The last word is on every screen at once, not a tick later.
            if let Some(board) = board_message(&state) {
                broadcast(&mut state, &board);
                state.dirty = false;
            }
        }
    }

    /// Stops serving: streams end (after what is queued), no connection is accepted.
    pub fn close(&self) {
        let mut state = self.hub.lock();
        state.closed = true;
        state.streams.clear();
        drop(state);
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for WebView {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds the live view for a command: `addr` checked against the loopback rule
/// (docs/dashboard.md), a tile per slot label of `slots`, the address announced on stderr
/// (`station: live view at http://…/`, the line scripts and tests look for).
pub async fn start(
    key: &str,
    addr: &str,
    allow_remote: bool,
    slots: &std::collections::BTreeMap<station_config::SlotKey, String>,
) -> Result<WebView, crate::error::StationError> {
    let refused = |reason: String| crate::error::StationError::HttpView { reason };
    let (addr, warning) =
        station_config::check_http_listen(key, addr, allow_remote).map_err(refused)?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let board = Board::new(slots.values().map(String::as_str));
    let view = WebView::bind(addr, board)
        .await
        .map_err(|e| refused(e.to_string()))?;
    eprintln!("station: live view at {}", view.url());
    Ok(view)
}

/// Passes the line's events on, publishing each to the view on the way.
pub fn tee(
    mut rx: mpsc::UnboundedReceiver<Event>,
    view: Arc<WebView>,
) -> (mpsc::UnboundedReceiver<Event>, JoinHandle<()>) {
    let (tx, out) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            view.publish(&event);
            // A receiver gone means the process is ending; the view still gets the end.
            let _ = tx.send(event);
        }
    });
    (out, handle)
}

/// Sends a changed board every `BOARD_EVERY`, and a keep-alive comment now and then (so a
/// proxy or a browser does not take a quiet line for a dead connection).
async fn tick(hub: Arc<Hub>) {
    let mut interval = tokio::time::interval(BOARD_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_keepalive = Instant::now();
    loop {
        interval.tick().await;
        let mut state = hub.lock();
        if state.closed {
            return;
        }
        if state.dirty && !state.streams.is_empty() {
            if let Some(board) = board_message(&state) {
                broadcast(&mut state, &board);
            }
            state.dirty = false;
        }
        if last_keepalive.elapsed() >= KEEPALIVE {
            last_keepalive = Instant::now();
            broadcast(&mut state, &Bytes::from_static(b": keep-alive\n\n"));
        }
    }
}

async fn accept(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: try again later, never spin.
                tracing::warn!("live view: connection not accepted: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(permit) = hub.connections.clone().try_acquire_owned() else {
            tracing::debug!("live view: {MAX_CONNECTIONS} connections open; one more closed");
            drop(stream);
            continue;
        };
        tokio::spawn(serve_connection(stream, hub.clone(), permit));
    }
}

/// One connection, one request, within its time limit.
async fn serve_connection(stream: TcpStream, hub: Arc<Hub>, _permit: OwnedSemaphorePermit) {
    let streaming = Arc::new(AtomicBool::new(false));
    let service = {
        let streaming = streaming.clone();
        hyper::service::service_fn(move |request| {
            let (hub, streaming) = (hub.clone(), streaming.clone());
            async move { Ok::<_, Infallible>(answer(&hub, &request, &streaming)) }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let started = Instant::now();
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("live view: connection ended: {e}");
                }
                return;
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                let limit = if streaming.load(Ordering::Relaxed) { STREAM_MAX } else { REQUEST_MAX };
                if started.elapsed() > limit {
                    return;
                }
            }
        }
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("Referrer-Policy", HeaderValue::from_static("no-referrer"));
    headers.insert("X-Frame-Options", HeaderValue::from_static("DENY"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", body)
}

/// Whether the request's `Host` names this machine (when bound to loopback).
fn host_allowed(hub: &Hub, request: &Request<hyper::body::Incoming>) -> bool {
    let Some(bound) = hub.loopback else {
        return true;
    };
    let Some(host) = request.headers().get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    let port = bound.port();
    if host == bound.to_string() {
        return true;
    }
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|name| host == format!("{name}:{port}") || (port == 80 && host == *name))
}

fn answer(
    hub: &Hub,
    request: &Request<hyper::body::Incoming>,
    streaming: &AtomicBool,
) -> Response<Body> {
    if !host_allowed(hub, request) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "this live view answers only requests for this machine\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only\n");
        response
            .headers_mut()
            .insert("Allow", HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/" | "/index.html" => {
            let mut response = full(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML);
            // Only our own script and style; nothing from elsewhere, nothing inline.
            response.headers_mut().insert(
                "Content-Security-Policy",
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                ),
            );
            response
        }
        "/app.css" => full(StatusCode::OK, "text/css; charset=utf-8", APP_CSS),
        "/app.js" => full(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            let state = hub.lock();
            full(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.render(&state.board),
            )
        }
        "/events" => events(hub, streaming),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Opens a stream: the board as it is, then the live messages (registered under the same
/// lock, so nothing falls between the two).
fn events(hub: &Hub, streaming: &AtomicBool) -> Response<Body> {
    let mut state = hub.lock();
    if state.closed {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the run is over\n");
    }
    state.streams.retain(|tx| !tx.is_closed());
    if state.streams.len() >= MAX_STREAMS {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live views open on this station\n",
        );
    }
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    let mut first = VecDeque::new();
    first.push_back(Bytes::from(format!("retry: {RETRY_MS}\n\n")));
    if let Some(board) = board_message(&state) {
        first.push_back(board);
    }
    state.streams.push(tx);
    drop(state);
    streaming.store(true, Ordering::Relaxed);
    let stream = futures_util::stream::unfold((first, rx), |(mut first, mut rx)| async move {
        let next = match first.pop_front() {
            Some(message) => Some(message),
            None => rx.recv().await,
        };
        next.map(|message| (Ok::<_, Infallible>(Frame::data(message)), (first, rx)))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Outcome;
    use crate::line::events::{EventSink, PhoneRef};
    use crate::lockstate::ManagementState;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn finished(udid: &str, outcome: Outcome) -> EventKind {
        EventKind::Finished {
            phone: PhoneRef {
                udid: udid.into(),
                slot: "A1".into(),
            },
            outcome,
            message: "m".into(),
            serial: None,
            model: None,
            activation_locked: false,
            codes_tried: 0,
            released_by: None,
            step: None,
            elapsed_ms: 1,
            management: ManagementState::default(),
        }
    }

    async fn connect(view: &WebView, head: &str) -> TcpStream {
        let mut stream = TcpStream::connect(view.local_addr())
            .await
            .expect("connect");
        stream.write_all(head.as_bytes()).await.expect("send");
        stream
    }

    /// Reads until `needle` arrived (or the stream ended): everything read.
    async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains(needle) {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("no stall")
                .expect("read");
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    }

    #[tokio::test]
    async fn a_late_browser_gets_the_board_then_the_live_events() {
        let view = Arc::new(
            WebView::bind("127.0.0.1:0".parse().expect("addr"), Board::new(["A1"]))
                .await
                .expect("bind"),
        );
        let (sink, rx) = EventSink::channel();
        let (mut out, tee) = tee(rx, view.clone());
        sink.send(finished("U1", Outcome::Activated));
        out.recv().await.expect("passed on");

        let head = format!(
            "GET /events HTTP/1.0\r\nHost: {}\r\n\r\n",
            view.local_addr()
        );
        let mut stream = connect(&view, &head).await;
        let first = read_until(&mut stream, "}\n\n").await;
        assert!(
            first.starts_with("HTTP/1.") && first[9..].starts_with("200"),
            "{first}"
        );
        assert!(first.contains("text/event-stream"), "{first}");
        assert!(first.contains("event: board\ndata: {"), "{first}");
        assert!(first.contains("\"outcome\":\"activated\""), "{first}");

        sink.send(finished("U2", Outcome::UserLocked));
        let live = read_until(&mut stream, "\"udid\":\"U2\"").await;
        assert!(live.contains("id: 2\ndata: {\"v\":2,"), "{live}");
        drop(sink);
        tee.await.expect("tee");

        // What the server refuses: another Host, a write, an unknown path.
        let port = view.local_addr().port();
        for (head, status) in [
            (
                "GET / HTTP/1.0\r\nHost: rebound.example\r\n\r\n".to_string(),
                "421",
            ),
            (
                format!("POST / HTTP/1.0\r\nHost: localhost:{port}\r\n\r\n"),
                "405",
            ),
            (
                format!("GET /x HTTP/1.0\r\nHost: localhost:{port}\r\n\r\n"),
                "404",
            ),
            (
                format!("GET /healthz HTTP/1.0\r\nHost: [::1]:{port}\r\n\r\n"),
                "200",
            ),
        ] {
            let mut stream = connect(&view, &head).await;
            let answer = read_until(&mut stream, "\r\n\r\n").await;
            assert_eq!(answer.split(' ').nth(1), Some(status), "{head:?}: {answer}");
        }
        view.close();
        let ended = read_until(&mut stream, "never sent").await;
        assert!(
            !ended.contains("never sent"),
            "the stream ends with the view"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once() {
        let view = WebView::bind("127.0.0.1:0".parse().expect("addr"), Board::new([]))
            .await
            .expect("bind");
        // Idle connections that never send a request hold their places.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(
                TcpStream::connect(view.local_addr())
                    .await
                    .expect("connect"),
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut extra = TcpStream::connect(view.local_addr())
            .await
            .expect("connect");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut buf))
            .await
            .expect("closed at once, not left waiting")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // An idle connection is closed once its headers are overdue, freeing its place.
        let n = tokio::time::timeout(
            HEADER_TIMEOUT + Duration::from_secs(5),
            idle[0].read(&mut buf),
        )
        .await
        .expect("the idle connection was closed")
        .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
