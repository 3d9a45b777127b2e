//! The road to the stand-in for clients whose activation URLs cannot be changed: an HTTP
//! proxy on loopback that opens only `CONNECT albert.apple.com:443`, answers the TLS
//! handshake as `albert.apple.com` with a certificate of the bench's own, and passes the
//! decrypted bytes to [`super::Albert`]'s plain HTTP listener.
//!
//! Why: libideviceactivation's `ideviceactivation` posts the lock form's answer to the
//! hard-coded `https://albert.apple.com/deviceservices/deviceActivation` whatever `-s URL`
//! says, and its `-s` sends the drmHandshake to that same URL (docs/protocol.md §5.6, "the
//! tool's loop"). Pointing its libcurl at this proxy (`https_proxy=<albert_proxy>`, read by
//! libcurl itself) runs the tool unchanged against the bench. The certificate is not signed
//! by anyone a client trusts: libideviceactivation does not check it (docs/protocol.md §5.4);
//! a checking client must trust [`AlbertProxy::certificate_pem`].
//!
//! Nothing leaves the machine: every other target is refused, and the only connection the
//! proxy opens is to the stand-in on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::http::{accept_until_stopped, CONNECTION_LIFETIME, HEADER_TIMEOUT};

/// The one host the proxy opens a tunnel to (docs/protocol.md §5.4).
pub const ALBERT_HOST: &str = "albert.apple.com";
/// A CONNECT request's head is a line or two: anything longer is refused.
const MAX_HEAD: usize = 8 * 1024;
/// Connecting to the stand-in on loopback.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("certificate for {ALBERT_HOST}: {0}")]
    Certificate(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The proxy's address and the TLS it answers with; [`serve`] runs it.
#[derive(Clone)]
pub struct AlbertProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    certificate_pem: String,
}

impl std::fmt::Debug for AlbertProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlbertProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl AlbertProxy {
    /// A proxy at `addr` (already bound) in front of the stand-in listening at `upstream`,
    /// with a fresh self-signed certificate for [`ALBERT_HOST`].
    pub(crate) fn new(addr: SocketAddr, upstream: SocketAddr) -> Result<AlbertProxy, ProxyError> {
        let certified = rcgen::generate_simple_self_signed(vec![ALBERT_HOST.to_string()])
            .map_err(|e| ProxyError::Certificate(e.to_string()))?;
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ProxyError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| ProxyError::Tls(e.to_string()))?;
        // Albert answers over HTTP/1.1 (docs/protocol.md §5.6); libcurl would offer h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(AlbertProxy {
            addr,
            upstream,
            tls: Arc::new(config),
            certificate_pem: certified.cert.pem(),
        })
    }

    /// `http://127.0.0.1:PORT`: the value for a client's `https_proxy`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate the proxy shows as `albert.apple.com` (PEM), for clients that check.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }
}

/// Accepts tunnels until `stop`.
pub(crate) async fn serve(proxy: AlbertProxy, listener: TcpListener, stop: watch::Receiver<bool>) {
    accept_until_stopped(listener, stop, "albert proxy", move |stream, peer| {
        let proxy = proxy.clone();
        async move {
            match tokio::time::timeout(CONNECTION_LIFETIME, tunnel(&proxy, stream)).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => tracing::info!(%peer, %reason, "tunnel refused or broken"),
                Err(_) => tracing::debug!(%peer, "tunnel closed after its lifetime"),
            }
        }
    })
    .await;
}

/// What a proxy request asks for.
#[derive(Debug, PartialEq, Eq)]
enum ProxyRequest {
    /// `CONNECT albert.apple.com:443`.
    Albert,
    /// A CONNECT to anywhere else.
    OtherTarget(String),
    /// Not a CONNECT (e.g. a plain `GET http://…`).
    NotConnect(String),
    Malformed,
}

/// Reads the request line of a proxy request's head.
fn parse_head(head: &[u8]) -> ProxyRequest {
    let Some(line) = std::str::from_utf8(head)
        .ok()
        .and_then(|text| text.split("\r\n").next())
    else {
        return ProxyRequest::Malformed;
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return ProxyRequest::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return ProxyRequest::Malformed;
    }
    if method != "CONNECT" {
        return ProxyRequest::NotConnect(method.to_string());
    }
    match target.rsplit_once(':') {
        Some((host, "443")) if host.eq_ignore_ascii_case(ALBERT_HOST) => ProxyRequest::Albert,
        _ => ProxyRequest::OtherTarget(target.to_string()),
    }
}

/// The head up to its blank line, within [`MAX_HEAD`] and [`HEADER_TIMEOUT`]. A client sends
/// nothing after a CONNECT head before the proxy's answer, so nothing is read past it.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Err(format!("request head over {MAX_HEAD} bytes"));
            }
            match stream.read(&mut byte).await {
                Ok(0) => return Err("closed before the end of the request head".to_string()),
                Ok(_) => head.push(byte[0]),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(HEADER_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(head),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(format!("no request head within {HEADER_TIMEOUT:?}")),
    }
}

async fn refuse(stream: &mut TcpStream, status: &str, extra: &str) {
    let answer =
        format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One client: its CONNECT, the TLS handshake as Albert, then bytes both ways.
async fn tunnel(proxy: &AlbertProxy, mut client: TcpStream) -> Result<(), String> {
    let head = read_head(&mut client).await?;
    match parse_head(&head) {
        ProxyRequest::Albert => {}
        ProxyRequest::OtherTarget(target) => {
            refuse(&mut client, "403 Forbidden", "").await;
            return Err(format!(
                "CONNECT to {target}: only {ALBERT_HOST}:443 is served"
            ));
        }
        ProxyRequest::NotConnect(method) => {
            refuse(&mut client, "405 Method Not Allowed", "Allow: CONNECT\r\n").await;
            return Err(format!("{method}: only CONNECT is served"));
        }
        ProxyRequest::Malformed => {
            refuse(&mut client, "400 Bad Request", "").await;
            return Err("malformed request line".to_string());
        }
    }
    let mut upstream =
        match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(proxy.upstream)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                refuse(&mut client, "502 Bad Gateway", "").await;
                return Err(format!("stand-in at {}: {e}", proxy.upstream));
            }
            Err(_) => {
                refuse(&mut client, "504 Gateway Timeout", "").await;
                return Err(format!("stand-in at {} did not answer", proxy.upstream));
            }
        };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(target = ALBERT_HOST, "tunnel open");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&proxy.tls));
    let mut tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(client)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(format!("TLS handshake: {e}")),
        Err(_) => return Err(format!("no TLS handshake within {HEADER_TIMEOUT:?}")),
    };
    tokio::io::copy_bidirectional(&mut tls, &mut upstream)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connect_to_albert_on_443_opens_a_tunnel() {
        let parse = |line: &str| parse_head(format!("{line}\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(
            parse("CONNECT albert.apple.com:443 HTTP/1.1"),
            ProxyRequest::Albert
        );
        assert_eq!(
            parse("CONNECT Albert.Apple.com:443 HTTP/1.0"),
            ProxyRequest::Albert
        );
        assert_eq!(
            parse("CONNECT albert.apple.com:80 HTTP/1.1"),
            ProxyRequest::OtherTarget("albert.apple.com:80".into())
        );
        assert_eq!(
            parse("CONNECT example.com:443 HTTP/1.1"),
            ProxyRequest::OtherTarget("example.com:443".into())
        );
        assert_eq!(
            parse("GET http://albert.apple.com/ HTTP/1.1"),
            ProxyRequest::NotConnect("GET".into())
        );
        assert_eq!(
            parse("CONNECT albert.apple.com:443"),
            ProxyRequest::Malformed
        );
        assert_eq!(parse_head(b"\xff\xfe\r\n\r\n"), ProxyRequest::Malformed);
    }
}
