//! The TLS a virtual phone speaks, chosen by its iOS version (docs/protocol.md §4.6):
//!
//! - iOS 12 and later: TLS 1.2 only, `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384` over secp256r1,
//!   as real phones negotiate with a rustls client (rustls, `station_protocol::tls`);
//! - iOS 10 and 11: TLS 1.0 to 1.2 (OpenSSL);
//! - iOS 9 and earlier: TLS 1.0 only (OpenSSL), which the station's rustls client cannot
//!   speak.
//!
//! Sessions and service connections of a phone use the same TLS.

use std::sync::Arc;

use station_protocol::channel::ChannelError;
use station_protocol::tls_engine::{RustlsEngine, TlsEngine};

/// The TLS generation of an iOS version, from the one home of that fact.
pub use station_protocol::ios::TlsGeneration;

/// Why a phone cannot build its server TLS for a pairing.
#[derive(Debug, thiserror::Error)]
pub enum PhoneTlsError {
    #[error(transparent)]
    Rustls(#[from] station_protocol::tls::TlsError),
    #[cfg(feature = "legacy-tls")]
    #[error("OpenSSL: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[cfg(not(feature = "legacy-tls"))]
    #[error(
        "a phone before iOS 12 speaks TLS 1.0/1.1: build station-sim with the `legacy-tls` feature"
    )]
    LegacyTlsNotBuilt,
}

/// A phone's server side of TLS for one pairing (built once, then cached per pairing).
#[derive(Clone)]
pub enum ServerTls {
    Rustls(Arc<rustls::ServerConfig>),
    #[cfg(feature = "legacy-tls")]
    OpenSsl(openssl::ssl::SslContext),
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerTls::Rustls(_) => f.write_str("ServerTls::Rustls"),
            #[cfg(feature = "legacy-tls")]
            ServerTls::OpenSsl(_) => f.write_str("ServerTls::OpenSsl"),
        }
    }
}

impl ServerTls {
    /// The server TLS of a phone of `generation`: its DeviceCertificate (DER) with its
    /// key, accepting the host or root certificate of the pairing.
    pub fn build(
        generation: TlsGeneration,
        device_certificate_der: &[u8],
        private_key_pem: &[u8],
        accepted_client_certs: Vec<Vec<u8>>,
    ) -> Result<ServerTls, PhoneTlsError> {
        match generation {
            TlsGeneration::Tls12 => {
                let cert_pem = pem::encode(&pem::Pem::new(
                    "CERTIFICATE",
                    device_certificate_der.to_vec(),
                ));
                let accepted = accepted_client_certs.into_iter().map(Into::into).collect();
                let config = station_protocol::tls::server_config(
                    cert_pem.as_bytes(),
                    private_key_pem,
                    accepted,
                )?;
                Ok(ServerTls::Rustls(config))
            }
            #[cfg(feature = "legacy-tls")]
            TlsGeneration::Tls10To12 | TlsGeneration::Tls10Only => {
                use crate::legacy_tls::{server_context, LegacyVersions};
                let versions = if generation == TlsGeneration::Tls10Only {
                    LegacyVersions::Tls10Only
                } else {
                    LegacyVersions::Tls10To12
                };
                let context = server_context(
                    versions,
                    device_certificate_der,
                    private_key_pem,
                    accepted_client_certs,
                )?;
                Ok(ServerTls::OpenSsl(context))
            }
            #[cfg(not(feature = "legacy-tls"))]
            TlsGeneration::Tls10To12 | TlsGeneration::Tls10Only => {
                Err(PhoneTlsError::LegacyTlsNotBuilt)
            }
        }
    }

    /// A fresh server engine for one connection.
    pub fn engine(&self) -> Result<Box<dyn TlsEngine>, ChannelError> {
        match self {
            ServerTls::Rustls(config) => Ok(Box::new(RustlsEngine::server(Arc::clone(config))?)),
            #[cfg(feature = "legacy-tls")]
            ServerTls::OpenSsl(context) => {
                Ok(Box::new(crate::legacy_tls::OpenSslEngine::server(context)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_follow_the_ios_version() {
        assert_eq!(TlsGeneration::for_ios("9.3.5"), TlsGeneration::Tls10Only);
        assert_eq!(TlsGeneration::for_ios("7.1.2"), TlsGeneration::Tls10Only);
        assert_eq!(TlsGeneration::for_ios("10.3.3"), TlsGeneration::Tls10To12);
        assert_eq!(TlsGeneration::for_ios("11.4.1"), TlsGeneration::Tls10To12);
        assert_eq!(TlsGeneration::for_ios("12.4.1"), TlsGeneration::Tls12);
        assert_eq!(TlsGeneration::for_ios("18.6.2"), TlsGeneration::Tls12);
        assert_eq!(TlsGeneration::for_ios("26.0"), TlsGeneration::Tls12);
    }
}
