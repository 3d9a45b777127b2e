//! A hostile HTTP peer on 127.0.0.1 (port 0) for the activation server and the MDMs: it
//! accepts and goes silent, drips, sends too much, sends garbage or breaks off. Every
//! connection gets the same treatment, whatever it asks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the peer does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Accepts and never reads or writes: a TLS client waits for the ServerHello, an HTTP
    /// client for its answer.
    SilentAfterAccept,
    /// Reads the request, then never answers.
    SilentAfterRequest,
    /// Sends the status line and headers (a body announced), then nothing.
    SilentAfterHeaders,
    /// Sends a 200 whose 1 MB body comes one byte every 50 ms.
    SlowDrip,
    /// Sends a 200 announcing 256 MiB and streams it as fast as it is read.
    OversizedBody,
    /// Sends a chunked 200 that never ends.
    EndlessChunked,
    /// Announces 10 000 bytes, sends 100, closes.
    TruncatedBody,
    /// A 200 JSON answer that is not JSON.
    GarbageJson,
    /// A 200 with random bytes as a plist/XML/HTML answer.
    GarbageBytes,
    /// Not HTTP at all: bytes instead of a status line, then close.
    NotHttp,
    /// 503 on every request.
    ServerError,
    /// 429 with `Retry-After: 1` on every request.
    Throttled,
}

impl Hostile {
    pub const ALL: [Hostile; 12] = [
        Hostile::SilentAfterAccept,
        Hostile::SilentAfterRequest,
        Hostile::SilentAfterHeaders,
        Hostile::SlowDrip,
        Hostile::OversizedBody,
        Hostile::EndlessChunked,
        Hostile::TruncatedBody,
        Hostile::GarbageJson,
        Hostile::GarbageBytes,
        Hostile::NotHttp,
        Hostile::ServerError,
        Hostile::Throttled,
    ];

    /// Whether the client can only end this by its own time-out.
    pub fn needs_timeout(self) -> bool {
        matches!(
            self,
            Hostile::SilentAfterAccept
                | Hostile::SilentAfterRequest
                | Hostile::SilentAfterHeaders
                | Hostile::SlowDrip
        )
    }
}

pub struct HostileServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileServer {
    pub async fn start(mode: Hostile) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, mode));
            }
        });
        HostileServer {
            url,
            connections,
            task,
        }
    }

    /// The same peer as an `https://` URL: TLS clients meet a silent (or garbled) peer.
    pub fn https_url(&self) -> String {
        self.url.replacen("http://", "https://", 1)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of the request head (or 64 KiB, or 5 s): enough to answer after it.
async fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while head.len() < 64 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
}

async fn silent(stream: TcpStream) {
    // Held open (and the peer's bytes left unread) until the client gives up.
    let _stream = stream;
    tokio::time::sleep(Duration::from_secs(600)).await;
}

async fn serve(mut stream: TcpStream, mode: Hostile) {
    if mode == Hostile::SilentAfterAccept {
        return silent(stream).await;
    }
    // Not HTTP (nor TLS): junk at once, before the peer's request or ClientHello is read.
    if mode != Hostile::NotHttp {
        read_head(&mut stream).await;
    }
    match mode {
        Hostile::SilentAfterRequest => return silent(stream).await,
        Hostile::SilentAfterHeaders => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
                .await;
            return silent(stream).await;
        }
        _ => {}
    }
    let result: std::io::Result<()> = async {
        match mode {
            Hostile::SilentAfterAccept
            | Hostile::SilentAfterRequest
            | Hostile::SilentAfterHeaders => {}
            Hostile::SlowDrip => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
                    .await?;
                for _ in 0..1_000_000 {
                    stream.write_all(b" ").await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Hostile::OversizedBody => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 268435456\r\n\r\n")
                    .await?;
                let block = vec![b'['; 64 * 1024];
                for _ in 0..4096 {
                    stream.write_all(&block).await?;
                }
            }
            Hostile::EndlessChunked => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await?;
                let mut chunk = format!("{:x}\r\n", 32 * 1024).into_bytes();
                chunk.extend(std::iter::repeat_n(b'<', 32 * 1024));
                chunk.extend_from_slice(b"\r\n");
                loop {
                    stream.write_all(&chunk).await?;
                }
            }
            Hostile::TruncatedBody => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n")
                    .await?;
                stream.write_all(&[b'{'; 100]).await?;
            }
            Hostile::GarbageJson => {
                let body = b"{\"value\": [{\"serialNumber\": \x01\x02 nope";
                answer(&mut stream, "200 OK", "application/json", body).await?;
            }
            Hostile::GarbageBytes => {
                let body: Vec<u8> = (0..4096_u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect();
                answer(&mut stream, "200 OK", "application/xml", &body).await?;
            }
            Hostile::NotHttp => {
                stream.write_all(b"\x16\x03\x01\x00\x05garbage that is not HTTP\r\n\r\n").await?;
            }
            Hostile::ServerError => {
                answer(&mut stream, "503 Service Unavailable", "text/plain", b"down").await?;
            }
            Hostile::Throttled => {
                stream
                    .write_all(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await?;
            }
        }
        stream.shutdown().await
    }
    .await;
    // The client hanging up mid-way is what a hostile peer expects.
    drop(result);
}

async fn answer(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await
}
