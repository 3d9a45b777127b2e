//! Pair records whose certificates are signed with SHA-1, as go-ios signs all three and as
//! libimobiledevice and pymobiledevice3 did for iOS < 4 (docs/protocol.md §4.2): phones accept
//! them, so the station and the virtual phone must too.
//!
//! The station's own generator (rcgen on aws-lc-rs) signs with SHA-256 only and has no
//! SHA-1 signer, and OpenSSL must stay out of the station: so the tests re-sign a generated
//! record here. sha1WithRSAEncryption and sha256WithRSAEncryption identifiers have the same
//! length and an RSA-2048 signature stays 256 bytes, so re-signing changes no DER length.

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use station_protocol::pairing::PairRecord;
use x509_parser::prelude::{FromDer, X509Certificate};

/// OID 1.2.840.113549.1.1.11 (sha256WithRSAEncryption), DER-encoded.
const SHA256_WITH_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
];
/// OID 1.2.840.113549.1.1.5 (sha1WithRSAEncryption), DER-encoded.
const SHA1_WITH_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05,
];

/// `record` with its root, host and device certificates re-signed by the root key with
/// SHA-1 (keys, HostID and everything else unchanged).
pub fn sha1_signed(record: &PairRecord) -> Result<PairRecord, String> {
    let root_key = PKey::private_key_from_pem(&record.root_private_key)
        .map_err(|e| format!("RootPrivateKey: {e}"))?;
    let mut out = record.clone();
    out.root_certificate = resign_pem(&record.root_certificate, &root_key)?;
    out.host_certificate = resign_pem(&record.host_certificate, &root_key)?;
    out.device_certificate = resign_pem(&record.device_certificate, &root_key)?;
    Ok(out)
}

fn resign_pem(cert_pem: &[u8], key: &PKey<Private>) -> Result<Vec<u8>, String> {
    let block = pem::parse(cert_pem).map_err(|e| format!("certificate PEM: {e}"))?;
    let der = resign_der(block.contents(), key)?;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", der)).into_bytes())
}

fn resign_der(der: &[u8], key: &PKey<Private>) -> Result<Vec<u8>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    let tbs = cert.tbs_certificate.as_ref();
    let tbs_start = tbs.as_ptr() as usize - der.as_ptr() as usize;
    let old_signature_len = cert.signature_value.data.len();

    let mut out = der.to_vec();
    // The algorithm appears twice: inside the signed part and after it.
    let mut replaced = 0;
    let mut i = 0;
    while i + SHA256_WITH_RSA.len() <= out.len() {
        if &out[i..i + SHA256_WITH_RSA.len()] == SHA256_WITH_RSA {
            out[i..i + SHA1_WITH_RSA.len()].copy_from_slice(SHA1_WITH_RSA);
            replaced += 1;
            i += SHA256_WITH_RSA.len();
        } else {
            i += 1;
        }
    }
    if replaced != 2 {
        return Err(format!(
            "expected a sha256WithRSAEncryption certificate, found the OID {replaced} times"
        ));
    }
    let mut signer =
        Signer::new(MessageDigest::sha1(), key).map_err(|e| format!("SHA-1 signer: {e}"))?;
    signer
        .update(&out[tbs_start..tbs_start + tbs.len()])
        .map_err(|e| format!("signing: {e}"))?;
    let signature = signer.sign_to_vec().map_err(|e| format!("signing: {e}"))?;
    if signature.len() != old_signature_len {
        return Err("signature length changed".into());
    }
    // The signature is the last field of the certificate.
    let end = out.len();
    out[end - signature.len()..].copy_from_slice(&signature);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use station_protocol::pairing::{generate_pair_record, DeviceKeyPair};
    use x509_parser::oid_registry::OID_PKCS1_SHA1WITHRSA;

    #[test]
    fn re_signed_certificates_are_sha1_and_verify_under_the_root() {
        let device = DeviceKeyPair::generate().expect("device key");
        let record = generate_pair_record(device.public_key_pem.as_bytes(), "BUID", None, None)
            .expect("record");
        let sha1 = sha1_signed(&record).expect("re-signed");
        assert_eq!(sha1.host_id, record.host_id);
        let root_der = pem::parse(&sha1.root_certificate).expect("pem");
        let (_, root) = X509Certificate::from_der(root_der.contents()).expect("root");
        for pem_bytes in [
            &sha1.root_certificate,
            &sha1.host_certificate,
            &sha1.device_certificate,
        ] {
            let block = pem::parse(pem_bytes).expect("pem");
            let (_, cert) = X509Certificate::from_der(block.contents()).expect("cert");
            assert_eq!(cert.signature_algorithm.algorithm, OID_PKCS1_SHA1WITHRSA);
            cert.verify_signature(Some(root.public_key()))
                .expect("signed by the root with SHA-1");
        }
        // And the phone's own check of a Pair request accepts it.
        station_protocol::pairing::verify_pair_request(
            sha1.pair_request_value()
                .as_dictionary()
                .expect("dictionary"),
            device.public_key_pem.as_bytes(),
        )
        .expect("a phone accepts a SHA-1 pair record");
    }
}
