//! OpenSSL as a [`TlsEngine`], for phones whose iOS speaks only TLS 1.0–1.2 or 1.0 (rustls
//! has neither 1.0 nor 1.1). OpenSSL runs over an in-memory stream: the channel hands it one
//! record at a time and sends whatever it wrote, exactly as with rustls.
//!
//! Real old phones (docs/protocol.md §4.6): libimobiledevice caps TLS at 1.0 for iOS < 10 and
//! needs `@SECLEVEL=0` (TLS 1.0 signs with MD5+SHA-1; pair records may be SHA-1-signed).

use std::io::{Read, Write};

use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslStream, SslVerifyMode,
    SslVersion,
};
use openssl::x509::X509;
use rustls::pki_types::CertificateDer;
use station_protocol::channel::ChannelError;
use station_protocol::tls_engine::{NegotiatedTls, TlsEngine, TlsVersion};

/// Which TLS versions an OpenSSL context speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyVersions {
    /// TLS 1.0 only (iOS 9 and earlier).
    Tls10Only,
    /// TLS 1.0 up to 1.2 (iOS 10 and 11).
    Tls10To12,
}

impl LegacyVersions {
    fn bounds(self) -> (SslVersion, SslVersion) {
        match self {
            LegacyVersions::Tls10Only => (SslVersion::TLS1, SslVersion::TLS1),
            LegacyVersions::Tls10To12 => (SslVersion::TLS1, SslVersion::TLS1_2),
        }
    }
}

/// ECDHE-RSA first (what 1.2 peers agree on), then the CBC and static-RSA suites TLS 1.0
/// clients such as libimobiledevice's GnuTLS path use. Level 0 admits TLS 1.0 and SHA-1.
const CIPHERS: &str = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA:@SECLEVEL=0";

fn tls_error(what: &str, e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Tls(format!("OpenSSL {what}: {e}"))
}

fn builder(versions: LegacyVersions, method: SslMethod) -> Result<SslContextBuilder, ErrorStack> {
    let mut b = SslContextBuilder::new(method)?;
    // Explicit bounds override the system-wide MinProtocol (Debian: TLS 1.2).
    let (min, max) = versions.bounds();
    b.set_min_proto_version(Some(min))?;
    b.set_max_proto_version(Some(max))?;
    b.set_cipher_list(CIPHERS)?;
    b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_TICKET);
    Ok(b)
}

/// A phone's server context: presents `cert_der` with `key_pem` and accepts a client only
/// if its certificate is byte-equal to one of `accepted_client_certs`.
pub fn server_context(
    versions: LegacyVersions,
    cert_der: &[u8],
    key_pem: &[u8],
    accepted_client_certs: Vec<Vec<u8>>,
) -> Result<SslContext, ErrorStack> {
    let mut b = builder(versions, SslMethod::tls_server())?;
    let cert = X509::from_der(cert_der)?;
    let key = PKey::private_key_from_pem(key_pem)?;
    b.set_certificate(&cert)?;
    b.set_private_key(&key)?;
    b.check_private_key()?;
    // Chains are never checked (nobody's root is in a trust store): the leaf must be one
    // of the pairing's certificates, like the rustls phone.
    b.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        move |_preverified, store| {
            if store.error_depth() != 0 {
                return true;
            }
            store
                .current_cert()
                .and_then(|c| c.to_der().ok())
                .is_some_and(|der| accepted_client_certs.contains(&der))
        },
    );
    Ok(b.build())
}

/// A client context presenting `cert_pem`/`key_pem`, as an old host (libimobiledevice for
/// iOS < 10) connects; it does not check the phone's certificate.
pub fn client_context(
    versions: LegacyVersions,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<SslContext, ErrorStack> {
    let mut b = builder(versions, SslMethod::tls_client())?;
    let cert = X509::from_pem(cert_pem)?;
    let key = PKey::private_key_from_pem(key_pem)?;
    b.set_certificate(&cert)?;
    b.set_private_key(&key)?;
    b.set_verify(SslVerifyMode::NONE);
    Ok(b.build())
}

/// Bytes in from the channel, bytes out to it; "would block" when OpenSSL wants more.
#[derive(Debug, Default)]
struct MemoryStream {
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
}

impl Read for MemoryStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.incoming.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.incoming.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        self.incoming.drain(..n);
        Ok(n)
    }
}

impl Write for MemoryStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One OpenSSL connection, server or client.
pub struct OpenSslEngine {
    stream: SslStream<MemoryStream>,
    handshaking: bool,
    /// The handshake failed (and said so once); the alert may still be waiting to go out.
    failed: bool,
}

impl std::fmt::Debug for OpenSslEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSslEngine")
            .field("handshaking", &self.handshaking)
            .finish_non_exhaustive()
    }
}

impl OpenSslEngine {
    pub fn server(context: &SslContext) -> Result<Self, ChannelError> {
        Self::new(context, false)
    }

    pub fn client(context: &SslContext) -> Result<Self, ChannelError> {
        Self::new(context, true)
    }

    fn new(context: &SslContext, client: bool) -> Result<Self, ChannelError> {
        let mut ssl = Ssl::new(context).map_err(|e| tls_error("session", e))?;
        if client {
            ssl.set_connect_state();
        } else {
            ssl.set_accept_state();
        }
        let stream =
            SslStream::new(ssl, MemoryStream::default()).map_err(|e| tls_error("stream", e))?;
        Ok(OpenSslEngine {
            stream,
            handshaking: true,
            failed: false,
        })
    }

    /// Moves the handshake on as far as the bytes received so far allow.
    fn advance(&mut self) -> Result<(), ChannelError> {
        if !self.handshaking || self.failed {
            return Ok(());
        }
        match self.stream.do_handshake() {
            Ok(()) => {
                self.handshaking = false;
                Ok(())
            }
            Err(e) if e.code() == ErrorCode::WANT_READ => Ok(()),
            Err(e) => {
                self.failed = true;
                Err(tls_error("handshake", e))
            }
        }
    }
}

impl TlsEngine for OpenSslEngine {
    fn read_record(&mut self, record: &[u8]) -> Result<(), ChannelError> {
        self.stream.get_mut().incoming.extend_from_slice(record);
        self.advance()
    }

    fn take_outgoing(&mut self, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        // A client writes its ClientHello before anything was received.
        self.advance()?;
        out.append(&mut self.stream.get_mut().outgoing);
        Ok(())
    }

    fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    fn read_plaintext(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.stream.ssl_read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(0),
            Err(e) if e.code() == ErrorCode::WANT_READ => {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    fn write_plaintext(&mut self, mut data: &[u8]) -> Result<(), ChannelError> {
        while !data.is_empty() {
            let n = self
                .stream
                .ssl_write(data)
                .map_err(|e| tls_error("write", e))?;
            data = &data[n..];
        }
        Ok(())
    }

    fn send_close_notify(&mut self) {
        // Only queues the alert; the peer's own close_notify is not awaited.
        if let Err(e) = self.stream.shutdown() {
            tracing::debug!(error = %e, "close_notify not queued");
        }
    }

    fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        let cert = self.stream.ssl().peer_certificate()?;
        let der = cert.to_der().ok()?;
        Some(vec![CertificateDer::from(der)])
    }

    fn negotiated(&self) -> Option<NegotiatedTls> {
        if self.handshaking {
            return None;
        }
        let ssl = self.stream.ssl();
        let version = match ssl.version2()? {
            v if v == SslVersion::TLS1 => TlsVersion::Tls1_0,
            v if v == SslVersion::TLS1_1 => TlsVersion::Tls1_1,
            v if v == SslVersion::TLS1_2 => TlsVersion::Tls1_2,
            v if v == SslVersion::TLS1_3 => TlsVersion::Tls1_3,
            v if v == SslVersion::SSL3 => TlsVersion::Other(0x0300),
            _ => TlsVersion::Other(0),
        };
        let cipher = ssl.current_cipher()?;
        let id = cipher.protocol_id();
        Some(NegotiatedTls {
            version,
            cipher_suite: u16::from_be_bytes(id),
            cipher_suite_name: cipher.standard_name().unwrap_or(cipher.name()).to_string(),
            key_exchange_group: None,
        })
    }
}
