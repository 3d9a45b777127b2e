//! Pairing certificates: what a host generates (docs/protocol.md §4.2) and what a phone checks
//! when it receives `Pair` (used by the simulator).
//!
//! Everything here is synchronous and CPU-bound (an RSA-2048 key takes ~150 ms); async
//! callers run it under `tokio::task::spawn_blocking`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plist::{Dictionary, Value};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SerialNumber, SignatureAlgorithm, PKCS_RSA_SHA256,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::{PublicKey, RSAPublicKey};
use x509_parser::x509::SubjectPublicKeyInfo;

use super::record::{
    pem_bytes, string, Redacted, DEVICE_CERTIFICATE, HOST_CERTIFICATE, HOST_ID, ROOT_CERTIFICATE,
    SYSTEM_BUID,
};
use super::{PairRecord, PairingError};

/// Name used in errors about the phone's own key (lockdown `GetValue DevicePublicKey`).
const DEVICE_PUBLIC_KEY: &str = "DevicePublicKey";
const ROOT_PRIVATE_KEY: &str = "RootPrivateKey";

/// libimobiledevice: `X509_gmtime_adj(notAfter, 60 * 60 * 24 * 365 * 10)`.
const VALIDITY: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 10);

/// `basicConstraints` OID (2.5.29.19).
const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
/// DER `BasicConstraints ::= SEQUENCE { cA BOOLEAN TRUE }`.
const BASIC_CONSTRAINTS_CA: &[u8] = &[0x30, 0x03, 0x01, 0x01, 0xff];
/// DER `BasicConstraints ::= SEQUENCE {}` (cA defaults to FALSE).
const BASIC_CONSTRAINTS_NOT_CA: &[u8] = &[0x30, 0x00];

/// PEM output with `\n` line ends, as libimobiledevice/OpenSSL and the phone write it
/// (the `pem` crate defaults to `\r\n`).
const PEM_LF: pem::EncodeConfig = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);

/// The host's half of the pairing credentials: a root CA and a host leaf certificate,
/// with their PKCS#8 private keys, all PEM.
///
/// One identity can serve every phone a station pairs: only the device certificate is
/// per phone. Reusing it saves two RSA key generations per phone.
#[derive(Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// Self-signed root certificate, empty subject, `CA:TRUE`.
    pub root_cert_pem: String,
    /// PKCS#8 "PRIVATE KEY" of the root. Secret.
    pub root_key_pem: String,
    /// Host certificate signed by the root, empty subject, `CA:FALSE`.
    pub host_cert_pem: String,
    /// PKCS#8 "PRIVATE KEY" of the host certificate. Secret.
    pub host_key_pem: String,
}

impl HostIdentity {
    /// Generates a root and a host certificate exactly as libimobiledevice's
    /// `pair_record_generate_keys_and_certs` does: RSA-2048 keys, X.509 v3, empty subject
    /// and issuer, serial 0, valid from now for 10 years, SHA-256 signatures.
    pub fn generate() -> Result<Self, PairingError> {
        let root_key = generate_rsa_key("generating the root key")?;
        let host_key = generate_rsa_key("generating the host key")?;
        let (not_before, not_after) = validity();

        // No subjectKeyIdentifier on root and host, as libimobiledevice: `IsCa::NoCa`
        // plus an explicit critical basicConstraints extension (rcgen would add an SKI).
        let mut root_params = base_params(not_before, not_after);
        root_params
            .custom_extensions
            .push(critical_extension(BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_CA));
        let root_cert =
            root_params
                .self_signed(&root_key)
                .map_err(|source| PairingError::Generation {
                    step: "signing the root certificate",
                    source,
                })?;

        let mut host_params = base_params(not_before, not_after);
        host_params.custom_extensions.push(critical_extension(
            BASIC_CONSTRAINTS,
            BASIC_CONSTRAINTS_NOT_CA,
        ));
        host_params.key_usages = leaf_key_usages();
        let issuer = Issuer::from_params(&root_params, &root_key);
        let host_cert = host_params
            .signed_by(&host_key, &issuer)
            .map_err(|source| PairingError::Generation {
                step: "signing the host certificate",
                source,
            })?;

        Ok(Self {
            root_cert_pem: root_cert.pem(),
            root_key_pem: root_key.serialize_pem(),
            host_cert_pem: host_cert.pem(),
            host_key_pem: host_key.serialize_pem(),
        })
    }

    /// The identity held in an existing record, to issue further device certificates from
    /// the same root (e.g. the station's first record becomes its identity).
    pub fn from_pair_record(record: &PairRecord) -> Result<Self, PairingError> {
        let text = |key: &'static str, bytes: &[u8]| {
            String::from_utf8(bytes.to_vec()).map_err(|_| PairingError::BadPem {
                key,
                reason: "not ASCII text".into(),
            })
        };
        Ok(Self {
            root_cert_pem: text(ROOT_CERTIFICATE, &record.root_certificate)?,
            root_key_pem: text(ROOT_PRIVATE_KEY, &record.root_private_key)?,
            host_cert_pem: text(HOST_CERTIFICATE, &record.host_certificate)?,
            host_key_pem: text("HostPrivateKey", &record.host_private_key)?,
        })
    }
}

impl fmt::Debug for HostIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostIdentity")
            .field("root_cert_pem", &self.root_cert_pem)
            .field("root_key_pem", &Redacted)
            .field("host_cert_pem", &self.host_cert_pem)
            .field("host_key_pem", &Redacted)
            .finish()
    }
}

/// A [`HostIdentity`] ready to issue device certificates: the root key is parsed (and its
/// RSA blinding set up) once, here, instead of for every phone. A station keeps one per
/// identity and pairs every phone with it; the records it makes are the same as
/// [`generate_pair_record`]'s.
pub struct PairingSigner {
    identity: HostIdentity,
    /// The root as issuer: its (empty) subject, which becomes the device certificate's
    /// issuer field, and its parsed private key.
    issuer: Issuer<'static, KeyPair>,
}

impl PairingSigner {
    /// Parses the identity's root key. CPU-bound (well under a millisecond, but an RSA key
    /// check): call it from `spawn_blocking` in async code.
    pub fn new(identity: HostIdentity) -> Result<Self, PairingError> {
        let root_key = KeyPair::from_pem_and_sign_algo(&identity.root_key_pem, &PKCS_RSA_SHA256)
            .map_err(|error| PairingError::BadKey {
                key: ROOT_PRIVATE_KEY,
                reason: error.to_string(),
            })?;
        // Only the issuer's name, key-identifier method and key usages are read from these
        // parameters, never the validity: one set serves every device certificate.
        let (not_before, not_after) = validity();
        let issuer = Issuer::new(base_params(not_before, not_after), root_key);
        Ok(Self { identity, issuer })
    }

    /// The identity whose root signs.
    pub fn identity(&self) -> &HostIdentity {
        &self.identity
    }

    /// Makes a complete pair record for a phone whose lockdown `DevicePublicKey` is given;
    /// see [`generate_pair_record`]. CPU-bound (one RSA-2048 signature): call it from
    /// `spawn_blocking`.
    pub fn pair_record(
        &self,
        device_public_key_pem: &[u8],
        system_buid: &str,
        wifi_mac: Option<&str>,
    ) -> Result<PairRecord, PairingError> {
        let device_key = RsaPublicKeyDer(rsa_public_key_from_pem(device_public_key_pem)?);
        let (not_before, not_after) = validity();
        let mut device_params = base_params(not_before, not_after);
        // ExplicitNoCa: critical basicConstraints CA:FALSE plus subjectKeyIdentifier, which
        // is what libimobiledevice puts in the device certificate.
        device_params.is_ca = IsCa::ExplicitNoCa;
        device_params.key_usages = leaf_key_usages();
        let device_cert = device_params
            .signed_by(&device_key, &self.issuer)
            .map_err(|source| PairingError::Generation {
                step: "signing the device certificate",
                source,
            })?;

        let identity = &self.identity;
        Ok(PairRecord {
            device_certificate: device_cert.pem().into_bytes(),
            host_certificate: identity.host_cert_pem.clone().into_bytes(),
            host_private_key: identity.host_key_pem.clone().into_bytes(),
            root_certificate: identity.root_cert_pem.clone().into_bytes(),
            root_private_key: identity.root_key_pem.clone().into_bytes(),
            host_id: uuid::Uuid::new_v4().to_string().to_uppercase(),
            system_buid: system_buid.to_owned(),
            wifi_mac_address: wifi_mac.map(str::to_owned),
            escrow_bag: None,
            udid: None,
            extra: Dictionary::new(),
        })
    }
}

impl fmt::Debug for PairingSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // HostIdentity's Debug redacts both private keys; the issuer's leaves out its key.
        f.debug_struct("PairingSigner")
            .field("identity", &self.identity)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Makes a complete pair record for a phone whose lockdown `DevicePublicKey` is given.
///
/// `device_public_key_pem` is the PKCS#1 "RSA PUBLIC KEY" PEM the phone reports; an SPKI
/// "PUBLIC KEY" PEM is accepted too. With `identity = None` a fresh [`HostIdentity`] is
/// generated (two RSA keys); passing one skips that. The device certificate has an empty
/// subject, `CA:FALSE`, a subjectKeyIdentifier and critical keyUsage
/// digitalSignature+keyEncipherment, and is signed by the root. `HostID` is a fresh
/// uppercase UUID; `EscrowBag` is left empty until the phone returns one from `Pair`.
///
/// Parses the root key on every call: a host pairing many phones keeps a
/// [`PairingSigner`] instead.
///
/// CPU-bound: call it from `spawn_blocking`.
pub fn generate_pair_record(
    device_public_key_pem: &[u8],
    system_buid: &str,
    wifi_mac: Option<&str>,
    identity: Option<&HostIdentity>,
) -> Result<PairRecord, PairingError> {
    // The phone's key is checked before any key is generated or parsed, as before.
    rsa_public_key_from_pem(device_public_key_pem)?;
    let identity = match identity {
        Some(identity) => identity.clone(),
        None => HostIdentity::generate()?,
    };
    PairingSigner::new(identity)?.pair_record(device_public_key_pem, system_buid, wifi_mac)
}

/// A phone's lockdown key pair, for the simulator's virtual iPhones.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKeyPair {
    /// PKCS#8 "PRIVATE KEY" PEM. Secret.
    pub private_key_pem: String,
    /// PKCS#1 "RSA PUBLIC KEY" PEM, the form a real phone reports as `DevicePublicKey`.
    pub public_key_pem: String,
}

impl DeviceKeyPair {
    /// Generates an RSA-2048 key pair (CPU-bound, ~150 ms).
    pub fn generate() -> Result<Self, PairingError> {
        let key = generate_rsa_key("generating the device key")?;
        // For RSA keys rcgen's `der_bytes` is aws-lc-rs's PKCS#1 `RSAPublicKey` DER.
        let public = pem::Pem::new("RSA PUBLIC KEY", key.der_bytes().to_vec());
        Ok(Self {
            private_key_pem: key.serialize_pem(),
            public_key_pem: pem::encode_config(&public, PEM_LF),
        })
    }
}

impl fmt::Debug for DeviceKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeyPair")
            .field("private_key_pem", &Redacted)
            .field("public_key_pem", &self.public_key_pem)
            .finish()
    }
}

/// What a phone keeps from an accepted `Pair` request.
#[derive(Clone, PartialEq, Eq)]
pub struct PairRequestCerts {
    /// The host's `HostID`; `StartSession` must present it.
    pub host_id: String,
    /// The host's `SystemBUID`.
    pub system_buid: String,
    /// DER of `HostCertificate`: accepted as TLS client certificate.
    pub host_certificate_der: Vec<u8>,
    /// DER of `RootCertificate`: also accepted as TLS client certificate
    /// (libimobiledevice's OpenSSL build presents the root).
    pub root_certificate_der: Vec<u8>,
    /// DER of `DeviceCertificate`.
    pub device_certificate_der: Vec<u8>,
}

impl fmt::Debug for PairRequestCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairRequestCerts")
            .field("host_id", &self.host_id)
            .field("system_buid", &self.system_buid)
            .field("host_certificate_der", &self.host_certificate_der.len())
            .field("root_certificate_der", &self.root_certificate_der.len())
            .field("device_certificate_der", &self.device_certificate_der.len())
            .finish()
    }
}

/// Checks the `PairRecord` dictionary of a lockdown `Pair` request the way a phone does:
/// the required keys are present, the three certificates are X.509 in PEM, the
/// DeviceCertificate certifies this phone's own key (`device_public_key_pem`), and both
/// HostCertificate and DeviceCertificate are signed by RootCertificate.
///
/// Errors say which check failed: [`PairingError::MissingKey`], [`PairingError::WrongType`],
/// [`PairingError::BadPem`], [`PairingError::BadCertificate`], [`PairingError::BadKey`]
/// (our own key), [`PairingError::WrongDeviceKey`], [`PairingError::BadSignature`].
pub fn verify_pair_request(
    record_dict: &Dictionary,
    device_public_key_pem: &[u8],
) -> Result<PairRequestCerts, PairingError> {
    let field = |key: &'static str| -> Result<Value, PairingError> {
        record_dict
            .get(key)
            .cloned()
            .ok_or(PairingError::MissingKey { key })
    };
    let host_id = string(HOST_ID, field(HOST_ID)?)?;
    let system_buid = string(SYSTEM_BUID, field(SYSTEM_BUID)?)?;
    let device_pem = pem_bytes(DEVICE_CERTIFICATE, field(DEVICE_CERTIFICATE)?)?;
    let host_pem = pem_bytes(HOST_CERTIFICATE, field(HOST_CERTIFICATE)?)?;
    let root_pem = pem_bytes(ROOT_CERTIFICATE, field(ROOT_CERTIFICATE)?)?;

    let device_der = certificate_der(DEVICE_CERTIFICATE, &device_pem)?;
    let host_der = certificate_der(HOST_CERTIFICATE, &host_pem)?;
    let root_der = certificate_der(ROOT_CERTIFICATE, &root_pem)?;
    let device_cert = parse_certificate(DEVICE_CERTIFICATE, &device_der)?;
    let host_cert = parse_certificate(HOST_CERTIFICATE, &host_der)?;
    let root_cert = parse_certificate(ROOT_CERTIFICATE, &root_der)?;

    let own_key_der = rsa_public_key_from_pem(device_public_key_pem)?;
    let own_key = parse_rsa_public_key(DEVICE_PUBLIC_KEY, &own_key_der)?;
    match device_cert.public_key().parsed() {
        Ok(PublicKey::RSA(certified)) if same_rsa_key(&certified, &own_key) => {}
        _ => return Err(PairingError::WrongDeviceKey),
    }

    for (key, cert) in [
        (HOST_CERTIFICATE, &host_cert),
        (DEVICE_CERTIFICATE, &device_cert),
    ] {
        cert.verify_signature(Some(root_cert.public_key()))
            .map_err(|error| PairingError::BadSignature {
                key,
                reason: error.to_string(),
            })?;
    }

    Ok(PairRequestCerts {
        host_id,
        system_buid,
        host_certificate_der: host_der,
        root_certificate_der: root_der,
        device_certificate_der: device_der,
    })
}

/// An RSA public key given as PKCS#1 `RSAPublicKey` DER, which is how phones hand it out.
/// rcgen wraps it in a SubjectPublicKeyInfo (rsaEncryption, NULL parameters).
struct RsaPublicKeyDer(Vec<u8>);

impl PublicKeyData for RsaPublicKeyDer {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

/// PKCS#1 `RSAPublicKey` DER from a "RSA PUBLIC KEY" (PKCS#1) or "PUBLIC KEY" (SPKI) PEM.
fn rsa_public_key_from_pem(pem_bytes: &[u8]) -> Result<Vec<u8>, PairingError> {
    let block = pem::parse(pem_bytes).map_err(|error| PairingError::BadPem {
        key: DEVICE_PUBLIC_KEY,
        reason: error.to_string(),
    })?;
    let pkcs1 = match block.tag() {
        "RSA PUBLIC KEY" => block.into_contents(),
        "PUBLIC KEY" => {
            let (rest, spki) =
                SubjectPublicKeyInfo::from_der(block.contents()).map_err(|error| {
                    PairingError::BadKey {
                        key: DEVICE_PUBLIC_KEY,
                        reason: format!("not a SubjectPublicKeyInfo: {error}"),
                    }
                })?;
            if !rest.is_empty() {
                return Err(PairingError::BadKey {
                    key: DEVICE_PUBLIC_KEY,
                    reason: "trailing bytes after SubjectPublicKeyInfo".into(),
                });
            }
            if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
                return Err(PairingError::BadKey {
                    key: DEVICE_PUBLIC_KEY,
                    reason: format!("not an RSA key (algorithm {})", spki.algorithm.algorithm),
                });
            }
            spki.subject_public_key.data.to_vec()
        }
        other => {
            return Err(PairingError::BadPem {
                key: DEVICE_PUBLIC_KEY,
                reason: format!(
                    "PEM label {other:?}, expected \"RSA PUBLIC KEY\" or \"PUBLIC KEY\""
                ),
            })
        }
    };
    // Refuse garbage now rather than certify it.
    parse_rsa_public_key(DEVICE_PUBLIC_KEY, &pkcs1)?;
    Ok(pkcs1)
}

fn parse_rsa_public_key<'a>(
    key: &'static str,
    der: &'a [u8],
) -> Result<RSAPublicKey<'a>, PairingError> {
    match RSAPublicKey::from_der(der) {
        Ok((rest, parsed)) if rest.is_empty() && !parsed.modulus.is_empty() => Ok(parsed),
        Ok(_) => Err(PairingError::BadKey {
            key,
            reason: "malformed RSAPublicKey (trailing bytes or empty modulus)".into(),
        }),
        Err(error) => Err(PairingError::BadKey {
            key,
            reason: format!("not a PKCS#1 RSAPublicKey: {error}"),
        }),
    }
}

/// Compares two RSA keys by value, ignoring the sign-padding zero bytes DER may add.
fn same_rsa_key(a: &RSAPublicKey<'_>, b: &RSAPublicKey<'_>) -> bool {
    fn trim(bytes: &[u8]) -> &[u8] {
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        &bytes[first..]
    }
    trim(a.modulus) == trim(b.modulus) && trim(a.exponent) == trim(b.exponent)
}

/// DER of a PEM certificate. OpenSSL's `PEM_read_bio_X509` (what the phone's side of
/// libimobiledevice-compatible stacks uses) accepts these three labels.
fn certificate_der(key: &'static str, pem_bytes: &[u8]) -> Result<Vec<u8>, PairingError> {
    let block = pem::parse(pem_bytes).map_err(|error| PairingError::BadPem {
        key,
        reason: error.to_string(),
    })?;
    match block.tag() {
        "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE" => Ok(block.into_contents()),
        other => Err(PairingError::BadPem {
            key,
            reason: format!("PEM label {other:?}, expected \"CERTIFICATE\""),
        }),
    }
}

fn parse_certificate<'a>(
    key: &'static str,
    der: &'a [u8],
) -> Result<X509Certificate<'a>, PairingError> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => Ok(cert),
        Err(error) => Err(PairingError::BadCertificate {
            key,
            reason: error.to_string(),
        }),
    }
}

fn generate_rsa_key(step: &'static str) -> Result<KeyPair, PairingError> {
    KeyPair::generate_for(&PKCS_RSA_SHA256)
        .map_err(|source| PairingError::Generation { step, source })
}

/// Whole-second validity window: now .. now + 10 years (libimobiledevice).
fn validity() -> (SystemTime, SystemTime) {
    // A clock before 1970 would give certificates dated 1970: harmless, the phone does
    // not check pairing certificate dates.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let not_before = UNIX_EPOCH + Duration::from_secs(now.as_secs());
    (not_before, not_before + VALIDITY)
}

/// Parameters shared by the three certificates: X.509 v3 (rcgen always writes v3), empty
/// subject, serial 0, the given validity.
fn base_params(not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    // rcgen's default subject is "CN=rcgen self signed cert"; Apple's tools use none.
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(SerialNumber::from_slice(&[0]));
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params
}

fn leaf_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ]
}

fn critical_extension(oid: &[u64], content: &[u8]) -> CustomExtension {
    let mut extension = CustomExtension::from_oid_content(oid, content.to_vec());
    extension.set_criticality(true);
    extension
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use x509_parser::extensions::{KeyUsage, ParsedExtension};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    // RSA generation is ~150 ms per key: every test shares these three keys.
    static IDENTITY: OnceLock<HostIdentity> = OnceLock::new();
    static DEVICE: OnceLock<DeviceKeyPair> = OnceLock::new();

    #[allow(clippy::expect_used)]
    fn identity() -> &'static HostIdentity {
        IDENTITY.get_or_init(|| HostIdentity::generate().expect("generate host identity"))
    }

    #[allow(clippy::expect_used)]
    fn device() -> &'static DeviceKeyPair {
        DEVICE.get_or_init(|| DeviceKeyPair::generate().expect("generate device key"))
    }

    fn record() -> Result<PairRecord, PairingError> {
        generate_pair_record(
            device().public_key_pem.as_bytes(),
            "8C1F0D2E-3A4B-4C5D-8E6F-708192A3B4C5",
            Some("a4:c3:61:00:11:22"),
            Some(identity()),
        )
    }

    fn request_dict(record: &PairRecord) -> Dictionary {
        match record.pair_request_value() {
            Value::Dictionary(dict) => dict,
            _ => Dictionary::new(),
        }
    }

    fn der(pem_text: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let block = pem::parse(pem_text)?;
        assert_eq!(block.tag(), "CERTIFICATE");
        Ok(block.into_contents())
    }

    struct Expect {
        ca: bool,
        key_usage: bool,
        ski: bool,
    }

    /// What a device certificate carries: no CA, key usages, a subject key identifier.
    const DEVICE_CERT: Expect = Expect {
        ca: false,
        key_usage: true,
        ski: true,
    };

    fn check_cert(cert: &X509Certificate<'_>, expect: Expect) {
        assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
        assert_eq!(cert.subject().iter().count(), 0, "subject must be empty");
        assert_eq!(cert.issuer().iter().count(), 0, "issuer must be empty");
        assert_eq!(cert.raw_serial(), &[0], "serial 0");
        assert_eq!(
            cert.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA
        );
        let validity = cert.validity();
        let years =
            (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86400 / 365;
        assert_eq!(years, 10);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        assert!((validity.not_before.timestamp() - now).abs() < 120);

        let mut basic = None;
        let mut usage: Option<(bool, KeyUsage)> = None;
        let mut ski = false;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => basic = Some((ext.critical, bc.ca)),
                ParsedExtension::KeyUsage(ku) => usage = Some((ext.critical, *ku)),
                ParsedExtension::SubjectKeyIdentifier(_) => ski = true,
                other => panic!("unexpected extension {other:?}"),
            }
        }
        assert_eq!(basic, Some((true, expect.ca)), "critical basicConstraints");
        match usage {
            Some((critical, ku)) => {
                assert!(expect.key_usage, "unexpected keyUsage");
                assert!(critical, "keyUsage must be critical");
                assert!(ku.digital_signature() && ku.key_encipherment());
                assert_eq!(ku.flags, 0b101, "digitalSignature + keyEncipherment only");
            }
            None => assert!(!expect.key_usage, "keyUsage missing"),
        }
        assert_eq!(ski, expect.ski, "subjectKeyIdentifier");
    }

    #[test]
    fn generated_certificates_match_libimobiledevice() -> TestResult {
        let record = record()?;
        let root_der = der(&record.root_certificate)?;
        let host_der = der(&record.host_certificate)?;
        let device_der = der(&record.device_certificate)?;
        let (_, root) = X509Certificate::from_der(&root_der)?;
        let (_, host) = X509Certificate::from_der(&host_der)?;
        let (_, dev) = X509Certificate::from_der(&device_der)?;

        check_cert(
            &root,
            Expect {
                ca: true,
                key_usage: false,
                ski: false,
            },
        );
        check_cert(
            &host,
            Expect {
                ca: false,
                key_usage: true,
                ski: false,
            },
        );
        check_cert(&dev, DEVICE_CERT);

        root.verify_signature(None)?;
        host.verify_signature(Some(root.public_key()))?;
        dev.verify_signature(Some(root.public_key()))?;

        // The device certificate certifies exactly the phone's key.
        let phone_key = pem::parse(&device().public_key_pem)?;
        assert_eq!(phone_key.tag(), "RSA PUBLIC KEY");
        assert_eq!(
            dev.public_key().subject_public_key.data.as_ref(),
            phone_key.contents()
        );
        assert_eq!(
            dev.public_key().algorithm.algorithm,
            OID_PKCS1_RSAENCRYPTION
        );

        assert_eq!(record.host_id.len(), 36);
        assert_eq!(record.host_id, record.host_id.to_uppercase());
        assert!(uuid::Uuid::parse_str(&record.host_id).is_ok());
        assert_eq!(
            record.wifi_mac_address.as_deref(),
            Some("a4:c3:61:00:11:22")
        );
        assert!(record.escrow_bag.is_none());
        Ok(())
    }

    #[test]
    fn keys_are_pkcs8_and_usable() -> TestResult {
        let id = identity();
        for key in [
            &id.root_key_pem,
            &id.host_key_pem,
            &device().private_key_pem,
        ] {
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let pair = KeyPair::from_pem_and_sign_algo(key, &PKCS_RSA_SHA256)?;
            // 2048-bit modulus: PKCS#1 DER of ~270 bytes.
            assert!((265..=275).contains(&pair.der_bytes().len()));
        }
        assert!(device()
            .public_key_pem
            .starts_with("-----BEGIN RSA PUBLIC KEY-----\n"));
        Ok(())
    }

    #[test]
    fn spki_device_key_is_accepted() -> TestResult {
        let pair = KeyPair::from_pem_and_sign_algo(&device().private_key_pem, &PKCS_RSA_SHA256)?;
        let spki_pem = pair.public_key_pem();
        assert!(spki_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            rsa_public_key_from_pem(spki_pem.as_bytes())?,
            rsa_public_key_from_pem(device().public_key_pem.as_bytes())?
        );
        let record = generate_pair_record(spki_pem.as_bytes(), "BUID", None, Some(identity()))?;
        verify_pair_request(&request_dict(&record), device().public_key_pem.as_bytes())?;
        Ok(())
    }

    #[test]
    fn bad_device_keys_are_refused() {
        for (input, want_pem_error) in [
            (&b"garbage"[..], true),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                true,
            ),
            (
                b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n",
                false,
            ),
        ] {
            match generate_pair_record(input, "BUID", None, Some(identity())) {
                Err(PairingError::BadPem {
                    key: DEVICE_PUBLIC_KEY,
                    ..
                }) if want_pem_error => {}
                Err(PairingError::BadKey {
                    key: DEVICE_PUBLIC_KEY,
                    ..
                }) if !want_pem_error => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn verify_accepts_generated_record() -> TestResult {
        let record = record()?;
        let certs =
            verify_pair_request(&request_dict(&record), device().public_key_pem.as_bytes())?;
        assert_eq!(certs.host_id, record.host_id);
        assert_eq!(certs.system_buid, record.system_buid);
        assert_eq!(certs.host_certificate_der, der(&record.host_certificate)?);
        assert_eq!(certs.root_certificate_der, der(&record.root_certificate)?);
        assert_eq!(
            certs.device_certificate_der,
            der(&record.device_certificate)?
        );
        // The whole record (with private keys, as pymobiledevice3 sends it) is fine too.
        let Value::Dictionary(full) = record.to_value() else {
            panic!("to_value must give a dictionary");
        };
        verify_pair_request(&full, device().public_key_pem.as_bytes())?;
        Ok(())
    }

    #[test]
    fn verify_rejects_certificate_for_another_key() -> TestResult {
        // Issue the device certificate for the host's key instead of the phone's.
        let host_key = KeyPair::from_pem_and_sign_algo(&identity().host_key_pem, &PKCS_RSA_SHA256)?;
        let other_pem = pem::encode_config(
            &pem::Pem::new("RSA PUBLIC KEY", host_key.der_bytes().to_vec()),
            PEM_LF,
        );
        let record = generate_pair_record(other_pem.as_bytes(), "BUID", None, Some(identity()))?;
        match verify_pair_request(&request_dict(&record), device().public_key_pem.as_bytes()) {
            Err(PairingError::WrongDeviceKey) => Ok(()),
            other => panic!("expected WrongDeviceKey, got {other:?}"),
        }
    }

    #[test]
    fn verify_rejects_host_cert_from_another_root() -> TestResult {
        // A second "root": the phone's own RSA key (any RSA key but the real root will do,
        // and this one is already generated).
        let other_root_key =
            KeyPair::from_pem_and_sign_algo(&device().private_key_pem, &PKCS_RSA_SHA256)?;
        let host_key = KeyPair::from_pem_and_sign_algo(&identity().host_key_pem, &PKCS_RSA_SHA256)?;
        let (nb, na) = validity();
        let other_root_params = base_params(nb, na);
        let issuer = Issuer::from_params(&other_root_params, &other_root_key);
        let mut params = base_params(nb, na);
        params.key_usages = leaf_key_usages();
        let forged = params.signed_by(&host_key, &issuer)?;

        let mut dict = request_dict(&record()?);
        dict.insert(
            HOST_CERTIFICATE.into(),
            Value::Data(forged.pem().into_bytes()),
        );
        match verify_pair_request(&dict, device().public_key_pem.as_bytes()) {
            Err(PairingError::BadSignature {
                key: HOST_CERTIFICATE,
                ..
            }) => Ok(()),
            other => panic!("expected BadSignature(HostCertificate), got {other:?}"),
        }
    }

    #[test]
    fn verify_reports_missing_and_malformed_fields() -> TestResult {
        let full = request_dict(&record()?);
        let phone = device().public_key_pem.as_bytes();
        for key in [
            HOST_ID,
            SYSTEM_BUID,
            DEVICE_CERTIFICATE,
            HOST_CERTIFICATE,
            ROOT_CERTIFICATE,
        ] {
            let mut dict = full.clone();
            dict.remove(key);
            match verify_pair_request(&dict, phone) {
                Err(PairingError::MissingKey { key: missing }) => assert_eq!(missing, key),
                other => panic!("expected MissingKey({key}), got {other:?}"),
            }
        }

        let mut dict = full.clone();
        dict.insert(ROOT_CERTIFICATE.into(), Value::Data(b"not pem".to_vec()));
        assert!(matches!(
            verify_pair_request(&dict, phone),
            Err(PairingError::BadPem {
                key: ROOT_CERTIFICATE,
                ..
            })
        ));

        let mut dict = full.clone();
        let junk = pem::encode_config(
            &pem::Pem::new("CERTIFICATE", vec![0x30, 0x03, 1, 1, 0]),
            PEM_LF,
        );
        dict.insert(DEVICE_CERTIFICATE.into(), Value::Data(junk.into_bytes()));
        assert!(matches!(
            verify_pair_request(&dict, phone),
            Err(PairingError::BadCertificate {
                key: DEVICE_CERTIFICATE,
                ..
            })
        ));

        let mut dict = full;
        dict.insert(HOST_ID.into(), Value::Boolean(true));
        assert!(matches!(
            verify_pair_request(&dict, phone),
            Err(PairingError::WrongType { key: HOST_ID, .. })
        ));
        Ok(())
    }

    #[test]
    fn identity_round_trips_through_a_record() -> TestResult {
        let record = record()?;
        assert_eq!(&HostIdentity::from_pair_record(&record)?, identity());
        Ok(())
    }

    #[test]
    fn debug_hides_private_keys() -> TestResult {
        let signer = PairingSigner::new(identity().clone())?;
        let text = format!("{:?} {:?} {signer:?}", identity(), device());
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains("<redacted>"));
        // The parsed root key: neither its PKCS#8 nor its PKCS#1 DER in any form.
        let root_key = KeyPair::from_pem_and_sign_algo(&identity().root_key_pem, &PKCS_RSA_SHA256)?;
        let signer_text = format!("{signer:?}");
        assert!(signer_text.contains("[elided]"), "{signer_text}");
        for secret in [root_key.serialize_der(), root_key.serialized_der().to_vec()] {
            assert!(!signer_text.contains(&format!("{secret:?}")));
            assert!(!signer_text.contains(&format!("{:?}", &secret[..16])));
        }
        Ok(())
    }

    #[test]
    fn one_signer_issues_records_that_verify_against_the_same_root() -> TestResult {
        let signer = PairingSigner::new(identity().clone())?;
        assert_eq!(signer.identity(), identity());
        // Two phones, one kept root key: a second device key is the host key's public
        // half (any RSA key that is not the first phone's will do, and it exists already).
        let host_key = KeyPair::from_pem_and_sign_algo(&identity().host_key_pem, &PKCS_RSA_SHA256)?;
        let second_phone = pem::encode_config(
            &pem::Pem::new("RSA PUBLIC KEY", host_key.der_bytes().to_vec()),
            PEM_LF,
        );
        let first = signer.pair_record(device().public_key_pem.as_bytes(), "BUID", None)?;
        let second =
            signer.pair_record(second_phone.as_bytes(), "BUID", Some("a4:c3:61:00:11:22"))?;

        // The same root and host halves in both, each phone's own device certificate.
        assert_eq!(first.root_certificate, second.root_certificate);
        assert_eq!(first.root_certificate, identity().root_cert_pem.as_bytes());
        assert_eq!(first.host_certificate, second.host_certificate);
        assert_ne!(first.device_certificate, second.device_certificate);
        assert_ne!(first.host_id, second.host_id);
        assert_eq!(
            second.wifi_mac_address.as_deref(),
            Some("a4:c3:61:00:11:22")
        );

        // Each verifies as its own phone checks it, and both device certificates carry a
        // signature by the one root.
        let certs_one =
            verify_pair_request(&request_dict(&first), device().public_key_pem.as_bytes())?;
        let certs_two = verify_pair_request(&request_dict(&second), second_phone.as_bytes())?;
        assert_eq!(
            certs_one.root_certificate_der,
            certs_two.root_certificate_der
        );
        let root_der = der(identity().root_cert_pem.as_bytes())?;
        let (_, root) = X509Certificate::from_der(&root_der)?;
        for record in [&first, &second] {
            let device_der = der(&record.device_certificate)?;
            let (_, dev) = X509Certificate::from_der(&device_der)?;
            dev.verify_signature(Some(root.public_key()))?;
            check_cert(&dev, DEVICE_CERT);
        }
        // A record for one phone is refused by the other.
        assert!(matches!(
            verify_pair_request(&request_dict(&first), second_phone.as_bytes()),
            Err(PairingError::WrongDeviceKey)
        ));
        Ok(())
    }

    #[test]
    fn signer_refuses_an_unusable_root_key() {
        let mut broken = identity().clone();
        broken.root_key_pem =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        match PairingSigner::new(broken) {
            Err(PairingError::BadKey {
                key: ROOT_PRIVATE_KEY,
                ..
            }) => {}
            other => panic!("expected BadKey(RootPrivateKey), got {other:?}"),
        }
    }

    #[test]
    fn fresh_identity_when_none_given() -> TestResult {
        // The only test that pays for two extra RSA keys: the `identity = None` path.
        let record = generate_pair_record(device().public_key_pem.as_bytes(), "BUID", None, None)?;
        assert_ne!(record.root_certificate, identity().root_cert_pem.as_bytes());
        verify_pair_request(&request_dict(&record), device().public_key_pem.as_bytes())?;
        Ok(())
    }
}
