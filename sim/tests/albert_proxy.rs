//! The proxy in front of the stand-in activation server (`activation/albert/proxy.rs`): a
//! client that only knows `https://albert.apple.com` reaches the stand-in through it, over
//! TLS under that name; nothing else is tunnelled.

mod common;

use std::time::Duration;

use common::*;
use station_sim::default_world;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the proxy answers to a request head sent on a fresh connection (its status line).
async fn status_line(proxy: std::net::SocketAddr, head: &str) -> String {
    let mut stream = within(tokio::net::TcpStream::connect(proxy))
        .await
        .expect("proxy");
    within(stream.write_all(head.as_bytes()))
        .await
        .expect("send");
    let mut answer = Vec::new();
    within(stream.read_to_end(&mut answer))
        .await
        .expect("answer, then the proxy closes");
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn albert_apple_com_through_the_proxy_is_the_stand_in() {
    let tb = start(default_world(2, 41)).await;
    let proxy = tb.bench.albert_proxy().clone();
    assert_eq!(
        tb.bench.ready_info().albert_proxy.as_deref(),
        Some(proxy.url().as_str())
    );
    // Only the proxy's own certificate is trusted, so the TLS handshake also checks that it
    // is issued to albert.apple.com.
    let certificate =
        reqwest::Certificate::from_pem(proxy.certificate_pem().as_bytes()).expect("PEM");
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::https(proxy.url()).expect("proxy URL"))
        .tls_certs_only([certificate])
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let answer = within(
        client
            .post("https://albert.apple.com/deviceservices/drmHandshake")
            .header("Content-Type", "text/plain")
            .body("not a plist")
            .send(),
    )
    .await
    .expect("an answer through the proxy");
    // The stand-in's answer to a wrong content type, with Albert's headers, over HTTP/1.1.
    assert_eq!(answer.status().as_u16(), 415);
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        answer.headers().get("server").and_then(|v| v.to_str().ok()),
        Some("Apple")
    );
    let log = tb.bench.albert().requests();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].path, "/deviceservices/drmHandshake");
    assert_eq!(log[0].status, 415);
}

#[tokio::test]
async fn the_proxy_tunnels_to_albert_only() {
    let tb = start(default_world(1, 42)).await;
    let proxy = tb.bench.albert_proxy().addr();
    for (head, status) in [
        (
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "HTTP/1.1 403 Forbidden",
        ),
        (
            "CONNECT albert.apple.com:80 HTTP/1.1\r\n\r\n",
            "HTTP/1.1 403 Forbidden",
        ),
        (
            "GET http://albert.apple.com/deviceservices/deviceActivation HTTP/1.1\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed",
        ),
        ("hello\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ] {
        assert_eq!(status_line(proxy, head).await, status, "{head:?}");
    }
    let head = "CONNECT albert.apple.com:443 HTTP/1.1\r\nHost: albert.apple.com:443\r\n\r\n";
    let mut stream = within(tokio::net::TcpStream::connect(proxy))
        .await
        .expect("proxy");
    within(stream.write_all(head.as_bytes()))
        .await
        .expect("send");
    let mut answer = [0u8; 39];
    within(stream.read_exact(&mut answer))
        .await
        .expect("tunnel answer");
    assert_eq!(&answer, b"HTTP/1.1 200 Connection established\r\n\r\n");
    assert!(tb.bench.albert().requests().is_empty());
}
