//! The bench's loopback HTTP servers: one accept loop, hyper's bare HTTP/1 server, the same
//! bounds for every stand-in (Albert, and the MDM stand-ins of [`crate::mdm`]).
//!
//! hyper is already in the tree through the station's HTTP client; a handful of fixed routes
//! per server need no framework.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A client must send its headers within this time…
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// …and its body within this time.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer, idle keep-alive included.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// What a server does with one request. Handlers never fail: every problem is an answer.
pub(crate) trait Handler: Clone + Send + Sync + 'static {
    /// Header names go out as `Content-Type` rather than hyper's `content-type`: what an
    /// HTTP/1.1 server like Albert sends, and what clients then pass on as received.
    const TITLE_CASE_HEADERS: bool = false;

    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body not received within {BODY_TIMEOUT:?}")]
    Timeout,
    #[error("body not read: {0}")]
    Broken(String),
}

impl BodyError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            BodyError::Timeout => 408,
            BodyError::Broken(_) => 400,
        }
    }
}

/// The whole body, within `limit` bytes and [`BODY_TIMEOUT`].
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(BodyError::TooLarge { limit })
        }
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
        Err(_) => Err(BodyError::Timeout),
    }
}

/// A response from its parts; header pairs that are not valid HTTP are skipped.
pub(crate) fn response(
    status: u16,
    content_type: Option<&str>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    if let Some(ct) = content_type.and_then(|ct| HeaderValue::from_str(ct).ok()) {
        map.insert(CONTENT_TYPE, ct);
    }
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            map.insert(name, value);
        }
    }
    response
}

/// Binds a listener on loopback (`port` 0: any free port).
pub(crate) async fn bind(port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Accepts connections until `stop`, each served by hyper's HTTP/1 server with a header
/// timeout and a lifetime cap.
pub(crate) async fn serve<H: Handler>(
    handler: H,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) {
    accept_until_stopped(listener, stop, "HTTP", move |stream, peer| {
        let handler = handler.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .title_case_headers(H::TITLE_CASE_HEADERS)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection failed"),
                Err(_) => tracing::debug!(%peer, "HTTP connection closed after its lifetime"),
                Ok(Ok(())) => {}
            }
        }
    })
    .await;
}

/// The accept loop of the bench's TCP listeners: each connection in its own task, made by
/// `handle` (which bounds its lifetime), until `stop`; then the ones still open are dropped.
pub(crate) async fn accept_until_stopped<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(handle(stream, peer));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}
