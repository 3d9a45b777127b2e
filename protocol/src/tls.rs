//! TLS configuration for lockdown sessions and service connections.
//!
//! The host is the TLS client and presents a certificate from the pair record; the phone is
//! the server and presents its DeviceCertificate. Phones use certificates issued by the
//! host's own pairing root, so the host does not verify the server chain (no OSS client
//! does); handshake signatures are still checked.
//!
//! The phone side ([`server_config`]) speaks TLS as a real phone on iOS 12 or later does
//! (docs/protocol.md §4.6, a rustls client's log against a real phone): TLS 1.2 only, the single
//! suite `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`, ECDHE over secp256r1, and a
//! CertificateRequest listing [`PHONE_CLIENT_SIGNATURE_SCHEMES`].

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found in the PEM data")]
    NoCertificate,
    #[error("invalid PEM {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

/// SNI name sent to the phone; the phone ignores it, but rustls needs one.
pub const SERVER_NAME: &str = "Device";

/// The host's crypto: all that rustls has, with secp256r1 moved to the front of the key
/// exchange groups. A ClientHello carries a TLS 1.3 key share for the first group only, and
/// phones answer with TLS 1.2 over secp256r1 (docs/protocol.md §4.6): with rustls' default
/// order every handshake made an X25519MLKEM768 share (an ML-KEM key and an X25519 key) and
/// threw it away. The groups offered are unchanged.
fn client_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .kx_groups
        .sort_by_key(|group| group.name() != rustls::NamedGroup::secp256r1);
    Arc::new(provider)
}

/// The signature schemes a modern phone's CertificateRequest lists, in its order: the RSA
/// ones as observed (SHA-256 first, then SHA-1), then ECDSA (the observed log elides them;
/// these three are our choice).
pub const PHONE_CLIENT_SIGNATURE_SCHEMES: [SignatureScheme; 7] = [
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA1,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
];

/// The crypto a modern phone negotiates with: one suite, one group.
fn phone_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group};
    Arc::new(CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384],
        kx_groups: vec![kx_group::SECP256R1],
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// Parses the first certificate of a PEM blob.
pub fn certificate_from_pem(pem: &[u8]) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or(TlsError::NoCertificate)?
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            reason: e.to_string(),
        })
}

fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "private key",
        reason: e.to_string(),
    })
}

/// Client (host) configuration presenting `cert_pem`/`key_pem` (host or root cert of the
/// pair record). TLS 1.2 and 1.3, all rustls has: phones on iOS 10 and later negotiate 1.2;
/// iOS 9 and earlier speak only TLS 1.0 and the handshake ends at once in
/// [`ChannelError::PeerTlsTooOld`](crate::channel::ChannelError::PeerTlsTooOld).
pub fn client_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = client_provider();
    let cert = certificate_from_pem(cert_pem)?;
    let key = private_key_from_pem(key_pem)?;
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyPhoneCertificate { provider }))
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Server (phone) configuration, as a phone on iOS 12 or later negotiates: presents
/// `cert_pem` (an RSA DeviceCertificate) with `key_pem` and requires the client to present a
/// certificate byte-equal to one of `accepted_client_certs` (a phone trusts the host and
/// root certificates of the pair records it accepted).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    accepted_client_certs: Vec<CertificateDer<'static>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = phone_provider();
    let cert = certificate_from_pem(cert_pem)?;
    let key = private_key_from_pem(key_pem)?;
    let verifier = PairedHostCertificate {
        provider: provider.clone(),
        accepted: accepted_client_certs,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![cert], key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // Session tickets are useless here (every session is a fresh handshake) and only add
    // records a minimal client has to skip.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AnyPhoneCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyPhoneCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct PairedHostCertificate {
    provider: Arc<CryptoProvider>,
    accepted: Vec<CertificateDer<'static>>,
}

impl ClientCertVerifier for PairedHostCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self
            .accepted
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Listed by real phones, but not among rustls' own verification algorithms.
        if dss.scheme == SignatureScheme::RSA_PKCS1_SHA1 {
            return verify_rsa_pkcs1_sha1(message, cert, dss.signature());
        }
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // The order a phone's CertificateRequest lists them in.
        PHONE_CLIENT_SIGNATURE_SCHEMES.to_vec()
    }
}

/// Checks a TLS 1.2 CertificateVerify signed with RSA PKCS#1 v1.5 over SHA-1.
fn verify_rsa_pkcs1_sha1(
    message: &[u8],
    cert: &CertificateDer<'_>,
    signature: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY};
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    // For RSA the subjectPublicKey bit string is the PKCS#1 RSAPublicKey aws-lc expects.
    let key = &parsed.tbs_certificate.subject_pki.subject_public_key.data;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, key.as_ref())
        .verify(message, signature)
        .map(|()| HandshakeSignatureValid::assertion())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The named groups of the ClientHello's key_share extension (RFC 8446 §4.2.8).
    fn key_share_groups(record: &[u8]) -> Vec<u16> {
        let u16_at = |i: usize| u16::from_be_bytes([record[i], record[i + 1]]);
        assert_eq!(record[0], 22, "a handshake record");
        assert_eq!(record[5], 1, "a ClientHello");
        // record header 5, handshake header 4, client_version 2, random 32
        let mut at = 5 + 4 + 2 + 32;
        at += 1 + usize::from(record[at]); // session id
        at += 2 + usize::from(u16_at(at)); // cipher suites
        at += 1 + usize::from(record[at]); // compression methods
        let end = at + 2 + usize::from(u16_at(at));
        at += 2;
        while at < end {
            let (kind, len) = (u16_at(at), usize::from(u16_at(at + 2)));
            if kind == 51 {
                let mut share = at + 6;
                let mut groups = Vec::new();
                while share < at + 4 + len {
                    groups.push(u16_at(share));
                    share += 4 + usize::from(u16_at(share + 2));
                }
                return groups;
            }
            at += 4 + len;
        }
        panic!("no key_share extension");
    }

    #[test]
    fn the_client_hello_carries_only_the_key_share_phones_use() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let config = client_config(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .expect("client config");
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        let mut client = rustls::ClientConnection::new(config.clone(), name).expect("client");
        let mut hello = Vec::new();
        client.write_tls(&mut hello).expect("ClientHello");

        assert_eq!(key_share_groups(&hello), vec![23], "one secp256r1 share");
        // Nothing else is taken away: a TLS 1.3 server on X25519 still gets its group.
        let offered: Vec<_> = config
            .crypto_provider()
            .kx_groups
            .iter()
            .map(|group| group.name())
            .collect();
        assert_eq!(offered[0], rustls::NamedGroup::secp256r1);
        assert!(offered.contains(&rustls::NamedGroup::X25519));
        assert!(offered.contains(&rustls::NamedGroup::X25519MLKEM768));
    }
}
