//! A stream of length-prefixed plists that can switch to TLS and back on the same
//! connection, as lockdown sessions do (`StartSession` → TLS, `StopSession` → plaintext).
//!
//! TLS is driven sans-IO through a [`TlsEngine`] (rustls for the station) and the stream is
//! read exactly one TLS record at a time. That way no byte that follows the peer's
//! `close_notify` is swallowed into a TLS buffer: after `StopSession` the next plaintext
//! frame is still on the stream.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{self, FrameError, PlistFormat, MAX_FRAME_LEN};
use crate::tls_engine::{NegotiatedTls, RustlsEngine, TlsEngine};

/// TLS record header: type (1), version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Largest record body allowed by TLS 1.2 (2^14 + 2048); 1.3 records are smaller.
const MAX_RECORD_BODY: usize = 16384 + 2048;
const CONTENT_ALERT: u8 = 0x15;
const CONTENT_APPLICATION_DATA: u8 = 0x17;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("connection closed by peer")]
    Closed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS error: {0}")]
    Tls(String),
    /// The peer speaks only TLS older than 1.2 (phones on iOS 9 and earlier); the
    /// station's TLS (1.2 and 1.3) cannot talk to it. Never a stale pairing.
    #[error(
        "the peer offers only TLS 1.0/1.1, older than the TLS 1.2 the station needs ({reason})"
    )]
    PeerTlsTooOld { reason: String },
    #[error(transparent)]
    Frame(FrameError),
    #[error("i/o error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ChannelError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ChannelError::Closed
        } else {
            ChannelError::Io(e)
        }
    }
}

impl From<FrameError> for ChannelError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(io) => io.into(),
            other => ChannelError::Frame(other),
        }
    }
}

/// Length-prefixed plist messages over `S`, plaintext or TLS.
pub struct PlistChannel<S> {
    stream: S,
    tls: Option<Box<dyn TlsEngine>>,
    /// Decrypted bytes received but not yet consumed by a frame.
    plaintext: Vec<u8>,
    /// Set once TLS was stopped: the peer's own close_notify may still be on the wire.
    tls_was_stopped: bool,
    timeout: Option<Duration>,
}

impl<S> std::fmt::Debug for PlistChannel<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlistChannel")
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> PlistChannel<S> {
    pub fn new(stream: S) -> Self {
        PlistChannel {
            stream,
            tls: None,
            plaintext: Vec::new(),
            tls_was_stopped: false,
            timeout: None,
        }
    }

    /// Bounds every send, receive and handshake; `None` waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.tls.as_ref().and_then(|c| c.peer_certificates())
    }

    /// Version and cipher suite of the TLS in use (`None` in plaintext).
    pub fn negotiated_tls(&self) -> Option<NegotiatedTls> {
        self.tls.as_ref().and_then(|c| c.negotiated())
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    /// The transport under the channel (and under TLS, when it is on), for a test peer
    /// that must read or stay silent outside the framing.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Sends `bytes` as they are, no length prefix added (through TLS when it is on): for
    /// test peers that must send broken frames.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        let timeout = self.timeout;
        with_timeout(timeout, self.write_bytes(bytes)).await
    }

    /// Sends an XML plist.
    pub async fn send(&mut self, value: &plist::Value) -> Result<(), ChannelError> {
        self.send_as(value, PlistFormat::Xml).await
    }

    pub async fn send_as(
        &mut self,
        value: &plist::Value,
        format: PlistFormat,
    ) -> Result<(), ChannelError> {
        let bytes = frame::encode_frame(value, format)?;
        let timeout = self.timeout;
        with_timeout(timeout, self.write_bytes(&bytes)).await
    }

    /// Receives one plist. A clean end of stream before a frame starts is `Closed`.
    pub async fn recv(&mut self) -> Result<plist::Value, ChannelError> {
        let timeout = self.timeout;
        with_timeout(timeout, self.recv_inner()).await
    }

    async fn recv_inner(&mut self) -> Result<plist::Value, ChannelError> {
        let mut len = [0u8; 4];
        self.read_exact(&mut len).await?;
        while self.tls.is_none() && self.tls_was_stopped && is_tls_record_start(&len) {
            self.discard_leftover_record(&len).await?;
            self.read_exact(&mut len).await?;
        }
        let len = u32::from_be_bytes(len);
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: MAX_FRAME_LEN,
            }
            .into());
        }
        // The buffer grows with the bytes that arrive, as in `frame::read_body`: an announced
        // body that never comes costs one chunk, not `len`.
        let mut body = Vec::new();
        while let Some(next) = frame::grow_body(&mut body, len as usize) {
            self.read_exact(next).await?;
        }
        Ok(frame::decode_plist(&body)?)
    }

    /// Starts TLS as the client (host side) on this stream.
    pub async fn start_tls_client(
        &mut self,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<(), ChannelError> {
        let engine = RustlsEngine::client(config)?;
        self.start_tls(Box::new(engine)).await
    }

    /// Starts TLS as the server (phone side) on this stream.
    pub async fn start_tls_server(
        &mut self,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<(), ChannelError> {
        let engine = RustlsEngine::server(config)?;
        self.start_tls(Box::new(engine)).await
    }

    /// Starts TLS with any engine, in the role it was made for.
    pub async fn start_tls(&mut self, engine: Box<dyn TlsEngine>) -> Result<(), ChannelError> {
        self.tls = Some(engine);
        self.plaintext.clear();
        let timeout = self.timeout;
        let result = with_timeout(timeout, self.drive_handshake()).await;
        if result.is_err() {
            self.tls = None;
        }
        result
    }

    async fn drive_handshake(&mut self) -> Result<(), ChannelError> {
        loop {
            self.flush_tls().await?;
            let handshaking = self.tls.as_ref().is_some_and(|c| c.is_handshaking());
            if !handshaking {
                return Ok(());
            }
            self.read_record().await?;
        }
    }

    /// Sends close_notify and returns to plaintext. The peer's close_notify, if it sends
    /// one, is skipped when the next plaintext frame is read.
    pub async fn stop_tls(&mut self) -> Result<(), ChannelError> {
        if let Some(conn) = self.tls.as_mut() {
            conn.send_close_notify();
            let timeout = self.timeout;
            let flushed = with_timeout(timeout, self.flush_tls()).await;
            self.tls = None;
            self.plaintext.clear();
            self.tls_was_stopped = true;
            flushed?;
        }
        Ok(())
    }

    /// Shuts the write side down (after a `Goodbye`).
    pub async fn shutdown(&mut self) -> Result<(), ChannelError> {
        if let Some(conn) = self.tls.as_mut() {
            conn.send_close_notify();
            self.flush_tls().await?;
        }
        self.stream.shutdown().await?;
        Ok(())
    }

    async fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        match self.tls.as_mut() {
            None => {
                self.stream.write_all(bytes).await?;
                self.stream.flush().await?;
                Ok(())
            }
            Some(conn) => {
                conn.write_plaintext(bytes)?;
                self.flush_tls().await
            }
        }
    }

    async fn flush_tls(&mut self) -> Result<(), ChannelError> {
        let Some(conn) = self.tls.as_mut() else {
            return Ok(());
        };
        let mut out = Vec::new();
        conn.take_outgoing(&mut out)?;
        if !out.is_empty() {
            self.stream.write_all(&out).await?;
            self.stream.flush().await?;
        }
        Ok(())
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ChannelError> {
        if self.tls.is_none() {
            self.stream.read_exact(buf).await?;
            return Ok(());
        }
        while self.plaintext.len() < buf.len() {
            self.fill_plaintext().await?;
        }
        buf.copy_from_slice(&self.plaintext[..buf.len()]);
        self.plaintext.drain(..buf.len());
        Ok(())
    }

    /// After StopSession the peer may still send its close_notify (an alert record, or an
    /// application-data record under TLS 1.3). `prefix` holds the first four bytes of that
    /// record; the rest of its header and its body are read and dropped.
    async fn discard_leftover_record(&mut self, prefix: &[u8; 4]) -> Result<(), ChannelError> {
        let mut last = [0u8; 1];
        self.stream.read_exact(&mut last).await?;
        let len = usize::from(u16::from_be_bytes([prefix[3], last[0]]));
        if len > MAX_RECORD_BODY {
            return Err(ChannelError::Tls(format!(
                "TLS record of {len} bytes exceeds {MAX_RECORD_BODY}"
            )));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await?;
        tracing::trace!(len, "skipped a TLS record left over after StopSession");
        Ok(())
    }

    async fn fill_plaintext(&mut self) -> Result<(), ChannelError> {
        loop {
            let Some(conn) = self.tls.as_mut() else {
                return Err(ChannelError::Tls("TLS not active".into()));
            };
            let mut chunk = [0u8; 4096];
            match conn.read_plaintext(&mut chunk) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => {
                    self.plaintext.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.read_record().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads exactly one TLS record from the stream and hands it to rustls.
    async fn read_record(&mut self) -> Result<(), ChannelError> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        self.stream.read_exact(&mut header).await?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_RECORD_BODY {
            return Err(ChannelError::Tls(format!(
                "TLS record of {len} bytes exceeds {MAX_RECORD_BODY}"
            )));
        }
        let mut record = Vec::with_capacity(RECORD_HEADER_LEN + len);
        record.extend_from_slice(&header);
        record.resize(RECORD_HEADER_LEN + len, 0);
        self.stream
            .read_exact(&mut record[RECORD_HEADER_LEN..])
            .await?;
        let Some(conn) = self.tls.as_mut() else {
            return Err(ChannelError::Tls("TLS not active".into()));
        };
        if let Err(e) = conn.read_record(&record) {
            // Let the peer learn why (an alert), then fail.
            let _ = self.flush_tls().await;
            return Err(e);
        }
        // Post-handshake messages (key updates, alerts) may need an answer.
        self.flush_tls().await
    }
}

/// A plist frame can never start like a TLS alert or application-data record: its length
/// would be hundreds of MiB, far above [`MAX_FRAME_LEN`], so the test is unambiguous.
fn is_tls_record_start(prefix: &[u8; 4]) -> bool {
    matches!(prefix[0], CONTENT_ALERT | CONTENT_APPLICATION_DATA) && prefix[1] == 0x03
}

async fn with_timeout<T, F>(timeout: Option<Duration>, fut: F) -> Result<T, ChannelError>
where
    F: std::future::Future<Output = Result<T, ChannelError>>,
{
    match timeout {
        None => fut.await,
        Some(d) => tokio::time::timeout(d, fut)
            .await
            .map_err(|_| ChannelError::Timeout(d))?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::dict;
    use crate::tls::{certificate_from_pem, client_config, server_config};
    use crate::tls_engine::{TlsVersion, ECDHE_RSA_AES_256_GCM_SHA384, SECP256R1};

    struct Identity {
        cert_pem: String,
        key_pem: String,
    }

    /// RSA, as pairing keys are: the phone's only suite is ECDHE_RSA.
    fn identity() -> Identity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn configs(accept_client: bool) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let host = identity();
        let phone = identity();
        let accepted = if accept_client {
            vec![certificate_from_pem(host.cert_pem.as_bytes()).expect("der")]
        } else {
            vec![certificate_from_pem(identity().cert_pem.as_bytes()).expect("der")]
        };
        (
            client_config(host.cert_pem.as_bytes(), host.key_pem.as_bytes()).expect("client"),
            server_config(
                phone.cert_pem.as_bytes(),
                phone.key_pem.as_bytes(),
                accepted,
            )
            .expect("server"),
        )
    }

    fn message(text: &str) -> plist::Value {
        dict([("Request", plist::Value::from(text))])
    }

    #[tokio::test]
    async fn an_announced_body_that_never_comes_is_not_allocated_up_front() {
        let mut bytes = MAX_FRAME_LEN.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"<?xml");
        let mut channel = PlistChannel::new(crate::frame::tests::LargestAsk {
            data: std::io::Cursor::new(bytes),
            largest: 0,
        });
        let err = channel.recv().await.expect_err("short");
        assert!(matches!(err, ChannelError::Closed), "{err:?}");
        let largest = channel.get_ref().largest;
        assert!(largest <= frame::BODY_CHUNK, "asked for {largest} bytes");
    }

    #[tokio::test]
    async fn tls_starts_and_stops_on_the_same_stream() {
        let (client_cfg, server_cfg) = configs(true);
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut host = PlistChannel::new(a);
        let mut phone = PlistChannel::new(b);
        host.set_timeout(Some(Duration::from_secs(5)));
        phone.set_timeout(Some(Duration::from_secs(5)));

        let phone_task = tokio::spawn(async move {
            assert_eq!(phone.recv().await.expect("plain"), message("StartSession"));
            phone.send(&message("StartSession")).await.expect("reply");
            phone
                .start_tls_server(server_cfg)
                .await
                .expect("server handshake");
            assert!(phone.peer_certificates().is_some_and(|c| c.len() == 1));
            assert_eq!(phone.recv().await.expect("tls"), message("GetValue"));
            phone.send(&message("GetValue")).await.expect("tls reply");
            assert_eq!(phone.recv().await.expect("tls"), message("StopSession"));
            phone
                .send(&message("StopSession"))
                .await
                .expect("tls reply");
            phone.stop_tls().await.expect("stop");
            // The host's close_notify is still on the wire: it must be skipped.
            assert_eq!(phone.recv().await.expect("plain again"), message("Goodbye"));
            phone.send(&message("Goodbye")).await.expect("bye");
        });

        host.send(&message("StartSession")).await.expect("send");
        assert_eq!(host.recv().await.expect("reply"), message("StartSession"));
        host.start_tls_client(client_cfg)
            .await
            .expect("client handshake");
        assert!(host.is_tls());
        host.send(&message("GetValue")).await.expect("tls send");
        assert_eq!(host.recv().await.expect("tls recv"), message("GetValue"));
        host.send(&message("StopSession")).await.expect("tls send");
        assert_eq!(host.recv().await.expect("tls recv"), message("StopSession"));
        host.stop_tls().await.expect("stop");
        host.send(&message("Goodbye")).await.expect("plain send");
        assert_eq!(host.recv().await.expect("plain recv"), message("Goodbye"));
        phone_task.await.expect("phone");
    }

    /// A message above rustls' 64 KiB plaintext buffer (a large `GetValue` answer) goes
    /// through a session whole, both ways.
    #[tokio::test]
    async fn messages_larger_than_the_tls_buffer_cross_a_session() {
        let (client_cfg, server_cfg) = configs(true);
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut host = PlistChannel::new(a);
        let mut phone = PlistChannel::new(b);
        host.set_timeout(Some(Duration::from_secs(10)));
        phone.set_timeout(Some(Duration::from_secs(10)));
        let blob: Vec<u8> = (0..1_000_000u32).map(|i| ((i * 7) >> 2) as u8).collect();
        let big = dict([("Value", plist::Value::Data(blob))]);
        let expected = big.clone();
        let phone_task = tokio::spawn(async move {
            phone.start_tls_server(server_cfg).await.expect("server");
            let got = phone.recv().await.expect("large from the host");
            phone.send(&got).await.expect("large back");
            got
        });
        host.start_tls_client(client_cfg).await.expect("client");
        host.send(&big).await.expect("large send");
        assert_eq!(host.recv().await.expect("large recv"), expected);
        assert_eq!(phone_task.await.expect("phone"), expected);
    }

    #[tokio::test]
    async fn phone_refuses_a_host_certificate_it_never_paired() {
        let (client_cfg, server_cfg) = configs(false);
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut host = PlistChannel::new(a);
        let mut phone = PlistChannel::new(b);
        host.set_timeout(Some(Duration::from_secs(5)));
        phone.set_timeout(Some(Duration::from_secs(5)));
        let phone_task = tokio::spawn(async move { phone.start_tls_server(server_cfg).await });
        let host_result = async {
            host.start_tls_client(client_cfg).await?;
            // TLS 1.3 clients learn of the rejection on their first read.
            host.recv().await.map(drop)
        }
        .await;
        assert!(host_result.is_err());
        assert!(matches!(
            phone_task.await.expect("join"),
            Err(ChannelError::Tls(_))
        ));
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_a_tls_error_not_a_hang() {
        let (client_cfg, _) = configs(true);
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut host = PlistChannel::new(a);
        host.set_timeout(Some(Duration::from_secs(5)));
        let writer = tokio::spawn(async move {
            let mut sink = vec![0u8; 512];
            let _ = b.read(&mut sink).await;
            b.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await
                .expect("write");
            b
        });
        let err = host
            .start_tls_client(client_cfg)
            .await
            .expect_err("garbage");
        assert!(
            matches!(err, ChannelError::Tls(_) | ChannelError::Closed),
            "{err:?}"
        );
        drop(writer);
    }

    #[tokio::test]
    async fn host_and_phone_agree_on_what_a_real_phone_negotiates() {
        let (client_cfg, server_cfg) = configs(true);
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut host = PlistChannel::new(a);
        let mut phone = PlistChannel::new(b);
        host.set_timeout(Some(Duration::from_secs(5)));
        phone.set_timeout(Some(Duration::from_secs(5)));
        assert_eq!(
            host.negotiated_tls(),
            None,
            "plaintext has no TLS parameters"
        );
        let phone_task = tokio::spawn(async move {
            phone.start_tls_server(server_cfg).await.expect("server");
            phone.negotiated_tls()
        });
        host.start_tls_client(client_cfg).await.expect("client");
        let expected = NegotiatedTls {
            version: TlsVersion::Tls1_2,
            cipher_suite: ECDHE_RSA_AES_256_GCM_SHA384,
            cipher_suite_name: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".into(),
            key_exchange_group: Some(SECP256R1),
        };
        assert_eq!(host.negotiated_tls(), Some(expected.clone()));
        assert_eq!(phone_task.await.expect("join"), Some(expected));
    }

    /// What an iOS 9 phone's TLS stack would answer a ClientHello with: a ServerHello
    /// choosing TLS 1.0 (record and hello version 0x0301, suite ECDHE-RSA-AES256-SHA).
    fn server_hello_tls_1_0() -> Vec<u8> {
        let mut hello = vec![0x03, 0x01];
        hello.extend_from_slice(&[0x42; 32]); // random
        hello.push(0); // no session id
        hello.extend_from_slice(&[0xc0, 0x14, 0x00]); // suite, null compression
        let mut handshake = vec![0x02, 0x00, 0x00, hello.len() as u8];
        handshake.extend_from_slice(&hello);
        let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
        record.extend_from_slice(&handshake);
        record
    }

    #[tokio::test]
    async fn a_tls_1_0_server_hello_is_an_old_peer_not_a_tls_failure() {
        let (client_cfg, _) = configs(true);
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut host = PlistChannel::new(a);
        host.set_timeout(Some(Duration::from_secs(5)));
        let peer = tokio::spawn(async move {
            let mut hello = vec![0u8; 4096];
            let _ = b.read(&mut hello).await;
            b.write_all(&server_hello_tls_1_0()).await.expect("write");
            // Hold the stream open: the host must fail on the hello, not on an EOF.
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(b);
        });
        let started = std::time::Instant::now();
        let err = host
            .start_tls_client(client_cfg)
            .await
            .expect_err("TLS 1.0 must be refused");
        assert!(matches!(err, ChannelError::PeerTlsTooOld { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
        assert!(err.to_string().contains("TLS 1.0"), "{err}");
        peer.abort();
    }

    #[tokio::test]
    async fn clean_eof_is_closed() {
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let mut host = PlistChannel::new(a);
        assert!(matches!(host.recv().await, Err(ChannelError::Closed)));
    }
}
