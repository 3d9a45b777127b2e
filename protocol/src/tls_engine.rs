//! The TLS implementation a [`PlistChannel`](crate::channel::PlistChannel) drives.
//!
//! The channel owns the stream and feeds the engine exactly one TLS record at a time (so no
//! plaintext that follows a `close_notify` is swallowed); the engine only turns records into
//! plaintext and back. The station uses rustls ([`RustlsEngine`]); the simulator plugs in
//! OpenSSL for phones whose iOS speaks only TLS 1.0/1.1, which rustls does not implement.

use std::io::{Cursor, Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, PeerIncompatible};

use crate::channel::ChannelError;
use crate::tls::SERVER_NAME;

/// A TLS protocol version as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    Tls1_0,
    Tls1_1,
    Tls1_2,
    Tls1_3,
    /// SSL 3.0 or anything unknown, by its wire value.
    Other(u16),
}

impl TlsVersion {
    pub fn from_wire(value: u16) -> Self {
        match value {
            0x0301 => TlsVersion::Tls1_0,
            0x0302 => TlsVersion::Tls1_1,
            0x0303 => TlsVersion::Tls1_2,
            0x0304 => TlsVersion::Tls1_3,
            other => TlsVersion::Other(other),
        }
    }

    pub fn wire(self) -> u16 {
        match self {
            TlsVersion::Tls1_0 => 0x0301,
            TlsVersion::Tls1_1 => 0x0302,
            TlsVersion::Tls1_2 => 0x0303,
            TlsVersion::Tls1_3 => 0x0304,
            TlsVersion::Other(v) => v,
        }
    }
}

impl std::fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsVersion::Tls1_0 => f.write_str("TLS 1.0"),
            TlsVersion::Tls1_1 => f.write_str("TLS 1.1"),
            TlsVersion::Tls1_2 => f.write_str("TLS 1.2"),
            TlsVersion::Tls1_3 => f.write_str("TLS 1.3"),
            TlsVersion::Other(0x0300) => f.write_str("SSL 3.0"),
            TlsVersion::Other(v) => write!(f, "TLS version {v:#06x}"),
        }
    }
}

/// What a finished handshake agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedTls {
    pub version: TlsVersion,
    /// IANA cipher suite number, e.g. `0xC030`.
    pub cipher_suite: u16,
    /// IANA cipher suite name, e.g. `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`.
    pub cipher_suite_name: String,
    /// IANA named group of the ECDHE key exchange (`23` = secp256r1), when the engine
    /// reports it.
    pub key_exchange_group: Option<u16>,
}

/// Cipher suite `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`, what real phones choose.
pub const ECDHE_RSA_AES_256_GCM_SHA384: u16 = 0xC030;
/// Named group secp256r1 (P-256).
pub const SECP256R1: u16 = 23;

/// A TLS connection driven sans-IO, one record at a time.
pub trait TlsEngine: Send + Sync {
    /// Processes one complete TLS record (5-byte header included).
    fn read_record(&mut self, record: &[u8]) -> Result<(), ChannelError>;

    /// Appends every byte the engine has to send (handshake, records, alerts) to `out`.
    fn take_outgoing(&mut self, out: &mut Vec<u8>) -> Result<(), ChannelError>;

    fn is_handshaking(&self) -> bool;

    /// Decrypted application data. `Ok(0)`: the peer sent close_notify; `WouldBlock`: the
    /// engine needs another record.
    fn read_plaintext(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;

    /// Encrypts `data` (sent by the next [`take_outgoing`](Self::take_outgoing)).
    fn write_plaintext(&mut self, data: &[u8]) -> Result<(), ChannelError>;

    fn send_close_notify(&mut self);

    /// The peer's certificate chain, leaf first, once known.
    fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>>;

    /// The agreed parameters once the handshake has finished.
    fn negotiated(&self) -> Option<NegotiatedTls>;
}

/// The rustls engine: the station's client, and the simulator's server for modern phones.
pub struct RustlsEngine {
    conn: rustls::Connection,
}

impl RustlsEngine {
    /// A client (host side) engine; the server name is the fixed [`SERVER_NAME`].
    pub fn client(config: Arc<rustls::ClientConfig>) -> Result<Self, ChannelError> {
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| ChannelError::Tls(e.to_string()))?
            .to_owned();
        let mut conn: rustls::Connection = rustls::ClientConnection::new(config, name)
            .map_err(classify_rustls)?
            .into();
        unlimited_plaintext(&mut conn);
        Ok(RustlsEngine { conn })
    }

    /// A server (phone side) engine.
    pub fn server(config: Arc<rustls::ServerConfig>) -> Result<Self, ChannelError> {
        let mut conn: rustls::Connection = rustls::ServerConnection::new(config)
            .map_err(classify_rustls)?
            .into();
        unlimited_plaintext(&mut conn);
        Ok(RustlsEngine { conn })
    }
}

/// rustls holds at most 64 KiB of plaintext not yet turned into records, and its writer
/// then takes nothing more, which `write_plaintext`'s `write_all` reports as a failed
/// write: a message above 64 KiB (a large `GetValue` answer) could never be sent. One
/// message is whole before it is flushed, and its size is capped by the framing
/// (`frame::MAX_FRAME_LEN`), so the buffer is bounded without rustls' own limit.
fn unlimited_plaintext(conn: &mut rustls::Connection) {
    conn.set_buffer_limit(None);
}

impl TlsEngine for RustlsEngine {
    fn read_record(&mut self, record: &[u8]) -> Result<(), ChannelError> {
        let mut cursor = Cursor::new(record);
        while (cursor.position() as usize) < record.len() {
            self.conn.read_tls(&mut cursor)?;
            self.conn.process_new_packets().map_err(classify_rustls)?;
        }
        Ok(())
    }

    fn take_outgoing(&mut self, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        while self.conn.wants_write() {
            self.conn.write_tls(out)?;
        }
        Ok(())
    }

    fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    fn read_plaintext(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.conn.reader().read(buf)
    }

    fn write_plaintext(&mut self, data: &[u8]) -> Result<(), ChannelError> {
        self.conn.writer().write_all(data)?;
        Ok(())
    }

    fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.conn
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
    }

    fn negotiated(&self) -> Option<NegotiatedTls> {
        if self.conn.is_handshaking() {
            return None;
        }
        let version = self.conn.protocol_version()?;
        let suite = self.conn.negotiated_cipher_suite()?.suite();
        Some(NegotiatedTls {
            version: TlsVersion::from_wire(u16::from(version)),
            cipher_suite: u16::from(suite),
            // rustls names its suites by their IANA names.
            cipher_suite_name: format!("{suite:?}"),
            key_exchange_group: self
                .conn
                .negotiated_key_exchange_group()
                .map(|g| u16::from(g.name())),
        })
    }
}

/// Tells a peer that only speaks TLS older than 1.2 (iOS 9 and earlier) apart from every
/// other TLS failure, so the station can say so instead of blaming the pair record.
fn classify_rustls(err: rustls::Error) -> ChannelError {
    match &err {
        // The peer answered our ClientHello with a protocol_version alert: nothing we offer
        // (1.2, 1.3) is something it speaks. OpenSSL servers capped at 1.0/1.1 do this.
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
        // The ServerHello chose 1.0 or 1.1.
        | rustls::Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13)
        // Server side: the ClientHello offered neither 1.2 nor 1.3.
        | rustls::Error::PeerIncompatible(PeerIncompatible::Tls12NotOfferedOrEnabled)
        | rustls::Error::PeerIncompatible(PeerIncompatible::Tls12NotOffered) => {
            ChannelError::PeerTlsTooOld {
                reason: err.to_string(),
            }
        }
        _ => ChannelError::Tls(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_read_well() {
        for v in [0x0301, 0x0302, 0x0303, 0x0304, 0x0300] {
            assert_eq!(TlsVersion::from_wire(v).wire(), v);
        }
        assert_eq!(TlsVersion::from_wire(0x0303).to_string(), "TLS 1.2");
        assert_eq!(TlsVersion::from_wire(0x0300).to_string(), "SSL 3.0");
    }

    #[test]
    fn only_version_refusals_count_as_an_old_peer() {
        let old = [
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
            PeerIncompatible::ServerDoesNotSupportTls12Or13.into(),
            PeerIncompatible::Tls12NotOfferedOrEnabled.into(),
        ];
        for e in old {
            assert!(
                matches!(classify_rustls(e), ChannelError::PeerTlsTooOld { .. }),
                "old"
            );
        }
        let other = [
            rustls::Error::AlertReceived(AlertDescription::BadCertificate),
            rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
            PeerIncompatible::NoCipherSuitesInCommon.into(),
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
        ];
        for e in other {
            assert!(matches!(classify_rustls(e), ChannelError::Tls(_)));
        }
    }
}
