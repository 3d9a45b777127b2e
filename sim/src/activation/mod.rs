//! Activation on the bench: the phones' `com.apple.mobileactivationd` ([`device`]) and a
//! stand-in of Apple's activation server "Albert" ([`albert`]), tied together the way the real
//! ones are, so that only a complete, untampered exchange activates a phone.
//!
//! Apple's side rests on FairPlay keys and certificates nobody outside Apple has. The bench
//! replaces them with one [`Authority`]: a random HMAC key per bench that the virtual phones
//! and the stand-in server share. Every token of the exchange is bound with it:
//!
//! | token | made by | bound to |
//! |---|---|---|
//! | `HandshakeRequestMessage` (21 bytes) | phone | UDID, a fresh nonce |
//! | `serverKP` (24 bytes) | server | UDID |
//! | `HandshakeResponseMessage` (32 bytes) | server | UDID, that request message, `serverKP` |
//! | `FairPlaySignature` of the activation info | phone, after checking the handshake reply | `serverKP`, the `ActivationInfoXML` bytes |
//! | `FairPlaySignature` of sessionless activation info (iOS 9.3–9.x, `CreateActivationInfoRequest`) | phone | UDID, the `ActivationInfoXML` bytes |
//! | `challenge` hidden field of the lock form | server | UDID, `ActivationRandomness` |
//! | `AccountTokenSignature` of the record | server | the `AccountToken` (UDID, `ActivationRandomness`, …) |
//! | `X-Apple-Activation-Signature` response header | server | the raw record body |
//!
//! A phone accepts a record only with the signature header over the exact body it was given,
//! a valid `AccountTokenSignature`, its own UDID in the token and the `ActivationRandomness`
//! of the activation request it made last (so records for another phone, for an abandoned
//! exchange or from an earlier request are refused).

pub mod albert;
pub(crate) mod device;

use std::collections::BTreeMap;

use aws_lc_rs::hmac;
use base64::Engine as _;
use rand::RngCore;

/// Response header carrying the server's signature over the raw record body. The phone
/// requires it in `ActivationResponseHeaders` under exactly this spelling (a dictionary
/// lookup), as real phones require the response headers since iOS 11.2.
pub const SIGNATURE_HEADER: &str = "X-Apple-Activation-Signature";

/// Length of `HandshakeRequestMessage` (real phones send about 21 bytes).
pub const HANDSHAKE_REQUEST_LEN: usize = 21;
const HANDSHAKE_VERSION: u8 = 1;
const NONCE_LEN: usize = 4;
const SERVER_KP_NONCE_LEN: usize = 8;
/// Truncated tags inside short tokens; full 32-byte tags elsewhere.
const SHORT_TAG_LEN: usize = 16;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The bench's stand-in for Apple's signing keys (see the module docs).
pub(crate) struct Authority {
    key: hmac::Key,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(<key>)")
    }
}

/// Whether two byte strings are equal, in constant time with respect to their contents.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

impl Authority {
    /// A fresh key: records from another bench (or an earlier run) are never accepted.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Authority {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        }
    }

    /// HMAC over a label and length-prefixed parts, so no two inputs collide.
    fn tag(&self, label: &str, parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        for part in parts {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            ctx.update(&len.to_be_bytes());
            ctx.update(part);
        }
        ctx.sign()
    }

    fn short_tag(&self, label: &str, parts: &[&[u8]]) -> Vec<u8> {
        self.tag(label, parts).as_ref()[..SHORT_TAG_LEN].to_vec()
    }

    /// `[version][nonce 4][tag 16]`: what `CreateTunnel1SessionInfoRequest` hands out.
    pub fn handshake_request(&self, udid: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut msg = vec![HANDSHAKE_VERSION];
        msg.extend_from_slice(&nonce);
        msg.extend(self.short_tag("handshake-request", &[udid.as_bytes(), &nonce]));
        msg
    }

    /// The server's check that a handshake request was made by the phone with `udid`.
    pub fn check_handshake_request(&self, udid: &str, msg: &[u8]) -> bool {
        if msg.len() != HANDSHAKE_REQUEST_LEN || msg[0] != HANDSHAKE_VERSION {
            return false;
        }
        let (nonce, tag) = msg[1..].split_at(NONCE_LEN);
        same(
            tag,
            &self.short_tag("handshake-request", &[udid.as_bytes(), nonce]),
        )
    }

    /// `[nonce 8][tag 16]`: the server's key material for one session of one phone.
    pub fn server_kp(&self, udid: &str) -> Vec<u8> {
        let mut nonce = [0u8; SERVER_KP_NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut kp = nonce.to_vec();
        kp.extend(self.short_tag("server-kp", &[udid.as_bytes(), &nonce]));
        kp
    }

    pub fn check_server_kp(&self, udid: &str, kp: &[u8]) -> bool {
        if kp.len() != SERVER_KP_NONCE_LEN + SHORT_TAG_LEN {
            return false;
        }
        let (nonce, tag) = kp.split_at(SERVER_KP_NONCE_LEN);
        same(tag, &self.short_tag("server-kp", &[udid.as_bytes(), nonce]))
    }

    pub fn handshake_response(&self, udid: &str, request: &[u8], server_kp: &[u8]) -> Vec<u8> {
        self.tag("handshake-response", &[udid.as_bytes(), request, server_kp])
            .as_ref()
            .to_vec()
    }

    pub fn check_handshake_response(
        &self,
        udid: &str,
        request: &[u8],
        server_kp: &[u8],
        response: &[u8],
    ) -> bool {
        same(response, &self.handshake_response(udid, request, server_kp))
    }

    /// The phone's `FairPlaySignature` over its activation info.
    pub fn activation_info_signature(&self, server_kp: &[u8], info_xml: &[u8]) -> Vec<u8> {
        self.tag("activation-info", &[server_kp, info_xml])
            .as_ref()
            .to_vec()
    }

    pub fn check_activation_info_signature(
        &self,
        server_kp: &[u8],
        info_xml: &[u8],
        signature: &[u8],
    ) -> bool {
        same(
            signature,
            &self.activation_info_signature(server_kp, info_xml),
        )
    }

    /// The `FairPlaySignature` of activation info made without a session (docs/protocol.md
    /// §5.3 B): no `serverKP` exists, so it is bound to the phone instead.
    pub fn sessionless_info_signature(&self, udid: &str, info_xml: &[u8]) -> Vec<u8> {
        self.tag("activation-info-sessionless", &[udid.as_bytes(), info_xml])
            .as_ref()
            .to_vec()
    }

    pub fn check_sessionless_info_signature(
        &self,
        udid: &str,
        info_xml: &[u8],
        signature: &[u8],
    ) -> bool {
        same(signature, &self.sessionless_info_signature(udid, info_xml))
    }

    /// The lock form's opaque hidden field: base64 of `[nonce 8][tag 16]`.
    pub fn lock_challenge(&self, udid: &str, randomness: &str) -> String {
        let mut nonce = [0u8; SERVER_KP_NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut raw = nonce.to_vec();
        raw.extend(self.short_tag(
            "lock-challenge",
            &[udid.as_bytes(), randomness.as_bytes(), &nonce],
        ));
        B64.encode(raw)
    }

    pub fn check_lock_challenge(&self, udid: &str, randomness: &str, challenge: &str) -> bool {
        let Ok(raw) = B64.decode(challenge.trim()) else {
            return false;
        };
        if raw.len() != SERVER_KP_NONCE_LEN + SHORT_TAG_LEN {
            return false;
        }
        let (nonce, tag) = raw.split_at(SERVER_KP_NONCE_LEN);
        same(
            tag,
            &self.short_tag(
                "lock-challenge",
                &[udid.as_bytes(), randomness.as_bytes(), nonce],
            ),
        )
    }

    pub fn account_token_signature(&self, token: &[u8]) -> Vec<u8> {
        self.tag("account-token", &[token]).as_ref().to_vec()
    }

    /// The [`SIGNATURE_HEADER`] value for a record body.
    pub fn response_signature(&self, body: &[u8]) -> String {
        B64.encode(self.tag("activation-response", &[body]))
    }

    pub fn check_response_signature(&self, body: &[u8], header: &str) -> bool {
        B64.decode(header.trim())
            .is_ok_and(|sig| same(&sig, self.tag("activation-response", &[body]).as_ref()))
    }
}

/// What the server learnt from a verified activation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestInfo {
    pub udid: String,
    pub serial: String,
    pub product_type: String,
    pub randomness: String,
    /// `ActivationRequestInfo.ActivationState` as the phone reported it.
    pub state: String,
    pub imei: Option<String>,
}

/// `AccountToken`: Apple sends an old-style (NeXTSTEP) plist text; the bench writes one
/// `"key" = "value";` line per entry the same way.
pub(crate) fn account_token_text(entries: &[(&str, &str)]) -> String {
    let mut out = String::from("{\n");
    for (k, v) in entries {
        out.push_str(&format!("\t\"{k}\" = \"{v}\";\n"));
    }
    out.push('}');
    out
}

/// Reads an [`account_token_text`] back. Values never contain quotes (UDIDs, serials, UUIDs).
pub(crate) fn parse_account_token(text: &str) -> Option<BTreeMap<String, String>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = BTreeMap::new();
    for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(';')?;
        let (k, v) = line.split_once('=')?;
        let unquote = |s: &str| {
            s.trim()
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .map(str::to_string)
        };
        out.insert(unquote(k)?, unquote(v)?);
    }
    Some(out)
}

pub(crate) const ACCOUNT_TOKEN: &str = "AccountToken";
pub(crate) const ACCOUNT_TOKEN_SIGNATURE: &str = "AccountTokenSignature";

/// A stable stand-in certificate (PEM text) so records look like real ones.
fn fake_pem(label: &str, seed: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut block = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seed);
    for _ in 0..12 {
        body.extend_from_slice(block.as_ref());
        block = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, block.as_ref());
    }
    let b64 = B64.encode(body);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

/// The `ActivationRecord` dictionary Albert issues for one activation request.
pub(crate) fn build_record(authority: &Authority, info: &RequestInfo) -> plist::Dictionary {
    let mut entries = vec![
        ("ActivationRandomness", info.randomness.as_str()),
        (
            "ActivityURL",
            "https://albert.apple.com/deviceservices/activity",
        ),
        ("ProductType", info.product_type.as_str()),
        ("SerialNumber", info.serial.as_str()),
        ("UniqueDeviceID", info.udid.as_str()),
    ];
    if let Some(imei) = &info.imei {
        entries.push(("InternationalMobileEquipmentIdentity", imei));
    }
    let token = account_token_text(&entries).into_bytes();
    let udid = info.udid.as_bytes();
    let mut record = plist::Dictionary::new();
    record.insert("unbrick".into(), plist::Value::Boolean(true));
    record.insert(
        "AccountTokenCertificate".into(),
        plist::Value::Data(fake_pem("CERTIFICATE", b"albert-account-token")),
    );
    record.insert(
        "DeviceCertificate".into(),
        plist::Value::Data(fake_pem("CERTIFICATE", udid)),
    );
    record.insert(
        "FairPlayKeyData".into(),
        plist::Value::Data(fake_pem("CONTAINER", &[udid, b"fairplay"].concat())),
    );
    record.insert(
        ACCOUNT_TOKEN_SIGNATURE.into(),
        plist::Value::Data(authority.account_token_signature(&token)),
    );
    record.insert(ACCOUNT_TOKEN.into(), plist::Value::Data(token));
    record.insert(
        "UniqueDeviceCertificate".into(),
        plist::Value::Data(fake_pem("CERTIFICATE", &[udid, b"ucrt"].concat())),
    );
    record.insert(
        "LDActivationVersion".into(),
        plist::Value::Integer(2.into()),
    );
    record
}

/// Why a phone refuses an activation record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("The activation response headers are missing.")]
    MissingHeaders,
    #[error("The activation response headers have no Content-Type.")]
    MissingContentType,
    #[error("The activation response is not signed by the activation server.")]
    BadResponseSignature,
    #[error("The activation response is not an activation record.")]
    NotARecord,
    #[error("The activation record has no valid account token.")]
    BadAccountToken,
    #[error("The activation record was issued for another device.")]
    OtherDevice,
    #[error("The activation record does not answer this device's activation request.")]
    NotCurrentRequest,
}

/// The phone's check of a record dictionary: signed token, this UDID, this request.
pub(crate) fn verify_record(
    authority: &Authority,
    record: &plist::Dictionary,
    udid: &str,
    current_randomness: Option<&str>,
) -> Result<(), RecordError> {
    let token = record
        .get(ACCOUNT_TOKEN)
        .and_then(plist::Value::as_data)
        .ok_or(RecordError::BadAccountToken)?;
    let signature = record
        .get(ACCOUNT_TOKEN_SIGNATURE)
        .and_then(plist::Value::as_data)
        .ok_or(RecordError::BadAccountToken)?;
    if !same(signature, &authority.account_token_signature(token)) {
        return Err(RecordError::BadAccountToken);
    }
    let entries = std::str::from_utf8(token)
        .ok()
        .and_then(parse_account_token)
        .ok_or(RecordError::BadAccountToken)?;
    if entries.get("UniqueDeviceID").map(String::as_str) != Some(udid) {
        return Err(RecordError::OtherDevice);
    }
    match (current_randomness, entries.get("ActivationRandomness")) {
        (Some(current), Some(r)) if r == current => Ok(()),
        _ => Err(RecordError::NotCurrentRequest),
    }
}

/// An `{Error: …}` text as mobileactivationd writes it: an NSError description, optionally
/// wrapping the underlying error.
pub(crate) fn ns_error(description: &str, underlying: Option<&str>) -> String {
    const DOMAIN: &str = "com.apple.MobileActivation.ErrorDomain";
    match underlying {
        None => format!(
            "Error Domain={DOMAIN} Code=-1 \"{description}\" UserInfo={{NSLocalizedDescription={description}}}"
        ),
        Some(inner) => format!(
            "Error Domain={DOMAIN} Code=-1 \"{description}\" UserInfo={{NSLocalizedDescription={description}, NSUnderlyingError={{Error Domain={DOMAIN} Code=-2 \"{inner}\" UserInfo={{NSLocalizedDescription={inner}}}}}}}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDID: &str = "00008030-001A2C3E0E90802E";

    fn info() -> RequestInfo {
        RequestInfo {
            udid: UDID.into(),
            serial: "F2LZK0ABN72J".into(),
            product_type: "iPhone12,1".into(),
            randomness: "8A1B-RANDOM".into(),
            state: "Unactivated".into(),
            imei: Some("353911104325676".into()),
        }
    }

    #[test]
    fn handshake_tokens_are_bound_to_the_phone() {
        let a = Authority::generate();
        let req = a.handshake_request(UDID);
        assert_eq!(req.len(), HANDSHAKE_REQUEST_LEN);
        assert!(a.check_handshake_request(UDID, &req));
        assert!(!a.check_handshake_request("00008030-000000000000000A", &req));
        let mut bad = req.clone();
        bad[3] ^= 1;
        assert!(!a.check_handshake_request(UDID, &bad));
        assert!(!Authority::generate().check_handshake_request(UDID, &req));

        let kp = a.server_kp(UDID);
        assert!(a.check_server_kp(UDID, &kp));
        assert!(!a.check_server_kp("other", &kp));
        let resp = a.handshake_response(UDID, &req, &kp);
        assert!(a.check_handshake_response(UDID, &req, &kp, &resp));
        assert!(!a.check_handshake_response(UDID, &a.handshake_request(UDID), &kp, &resp));
    }

    #[test]
    fn challenge_and_response_signatures() {
        let a = Authority::generate();
        let c = a.lock_challenge(UDID, "R1");
        assert!(a.check_lock_challenge(UDID, "R1", &c));
        assert!(!a.check_lock_challenge(UDID, "R2", &c));
        assert!(!a.check_lock_challenge(UDID, "R1", "garbage!"));
        let sig = a.response_signature(b"body");
        assert!(a.check_response_signature(b"body", &sig));
        assert!(!a.check_response_signature(b"body ", &sig));
    }

    #[test]
    fn records_verify_only_for_their_phone_and_request() {
        let a = Authority::generate();
        let record = build_record(&a, &info());
        assert_eq!(
            verify_record(&a, &record, UDID, Some("8A1B-RANDOM")),
            Ok(())
        );
        assert_eq!(
            verify_record(
                &a,
                &record,
                "00008030-000000000000000A",
                Some("8A1B-RANDOM")
            ),
            Err(RecordError::OtherDevice)
        );
        assert_eq!(
            verify_record(&a, &record, UDID, Some("OTHER")),
            Err(RecordError::NotCurrentRequest)
        );
        assert_eq!(
            verify_record(&a, &record, UDID, None),
            Err(RecordError::NotCurrentRequest)
        );
        assert_eq!(
            verify_record(&Authority::generate(), &record, UDID, Some("8A1B-RANDOM")),
            Err(RecordError::BadAccountToken)
        );
        let mut forged = record.clone();
        forged.insert(
            ACCOUNT_TOKEN.into(),
            plist::Value::Data(
                account_token_text(&[
                    ("UniqueDeviceID", UDID),
                    ("ActivationRandomness", "8A1B-RANDOM"),
                ])
                .into_bytes(),
            ),
        );
        assert_eq!(
            verify_record(&a, &forged, UDID, Some("8A1B-RANDOM")),
            Err(RecordError::BadAccountToken)
        );
    }

    #[test]
    fn account_token_round_trips() {
        let text = account_token_text(&[("A", "1"), ("UniqueDeviceID", UDID)]);
        let parsed = parse_account_token(&text).expect("parse");
        assert_eq!(parsed.get("UniqueDeviceID").map(String::as_str), Some(UDID));
        assert!(parse_account_token("not a token").is_none());
    }

    #[test]
    fn ns_errors_look_like_nserror_descriptions() {
        let e = ns_error(
            "Failed to retrieve activation info.",
            Some("Invalid session response."),
        );
        assert!(e.starts_with("Error Domain=com.apple.MobileActivation.ErrorDomain Code=-1 \"Failed to retrieve activation info.\""));
        assert!(e.contains("NSUnderlyingError={Error Domain="));
        assert!(e.ends_with("}}}"), "{e}");
    }
}
