//! The phone's side of activation: `com.apple.mobileactivationd` as a lockdown service, and
//! the record check lockdown's legacy `Activate` shares with it.
//!
//! As on a real phone, each service connection carries one command (binary or XML plist)
//! and gets one reply (`{Value: …}`, `{}` for commands without a value, or `{Error: <NSError
//! description>}`); then the phone closes the connection.

use std::sync::Arc;
use std::time::Duration;

use plist::{Dictionary, Value};
use station_protocol::activation::parse_activation_info_text;
use station_protocol::ios::IosVersion;
use station_protocol::mobileactivation::{Command, SERVICE};

use super::{ns_error, verify_record, Authority, RecordError, SIGNATURE_HEADER};
use crate::phone::{values, Phone};
use crate::services::{BoxFuture, LockdownService, ServiceConnection};
use crate::world::ActivationState;

const FAILED_ACTIVATION_INFO: &str = "Failed to retrieve activation info.";
const INVALID_RECORD: &str = "Invalid activation record.";
/// The header the phone reads the record's format from.
const CONTENT_TYPE_HEADER: &str = "Content-Type";

/// `com.apple.mobileactivationd` on every phone of a bench.
pub(crate) struct MobileActivationd {
    authority: Arc<Authority>,
    /// A connection that sends no command for this long is dropped.
    timeout: Duration,
}

impl MobileActivationd {
    pub fn new(authority: Arc<Authority>, timeout: Duration) -> Self {
        MobileActivationd { authority, timeout }
    }
}

impl LockdownService for MobileActivationd {
    fn name(&self) -> &str {
        SERVICE
    }

    fn serve(&self, mut conn: ServiceConnection) -> BoxFuture<()> {
        let authority = self.authority.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            conn.channel.set_timeout(Some(timeout));
            let request = match conn.channel.recv().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "no command");
                    return;
                }
            };
            if let Some(hostile) = conn.phone.profile().hostile.clone() {
                let name = Command::from_plist(&request)
                    .map(|c| c.name())
                    .unwrap_or_default();
                if hostile.applies_to(name) {
                    crate::hostile::misbehave(&mut conn.channel, hostile.how, name).await;
                    return;
                }
            }
            let reply = handle(&conn.phone, &authority, &request).await;
            if let Err(e) = conn.channel.send(&Value::Dictionary(reply)).await {
                tracing::debug!(error = %e, "reply not delivered");
                return;
            }
            // The daemon wants a new connection per command: close this one.
            let _ = conn.channel.shutdown().await;
        })
    }
}

fn value_reply(value: Value) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("Value".into(), value);
    d
}

fn error_reply(text: String) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("Error".into(), Value::String(text));
    d
}

async fn handle(phone: &Arc<Phone>, authority: &Authority, request: &Value) -> Dictionary {
    let command = match Command::from_plist(request) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "refused request");
            return error_reply(ns_error("Invalid request.", Some(&e.to_string())));
        }
    };
    tracing::info!(command = command.name(), "command");
    let reply = match command {
        Command::GetActivationState => Ok(value_reply(phone.activation_state().as_str().into())),
        Command::CreateTunnel1SessionInfo => Ok(value_reply(session_info(phone, authority))),
        Command::CreateTunnel1ActivationInfo { handshake_response } => {
            // FairPlay takes its time on a real phone; the connection stays open meanwhile.
            computing(phone.profile().activation_info_delay_ms).await;
            activation_info(phone, authority, &handshake_response)
                .map(|d| value_reply(Value::Dictionary(d)))
        }
        Command::HandleActivationInfoWithSession { body, headers } => {
            computing(phone.profile().handle_record_delay_ms).await;
            match check_record_body(phone, authority, &body, &headers) {
                Ok(()) => {
                    activate_after(phone, phone.profile().activated_after_ms).await;
                    Ok(Dictionary::new())
                }
                Err(e) => Err(ns_error(INVALID_RECORD, Some(&e.to_string()))),
            }
        }
        Command::HandleActivationInfo { record } => {
            match check_record_value(phone, authority, &record) {
                Ok(()) => {
                    phone
                        .record_activation(ActivationState::Activated, false)
                        .await;
                    Ok(Dictionary::new())
                }
                Err(e) => Err(ns_error(INVALID_RECORD, Some(&e.to_string()))),
            }
        }
        Command::CreateActivationInfo => {
            computing(phone.profile().activation_info_delay_ms).await;
            sessionless_activation_info(phone, authority).map(|d| value_reply(Value::Dictionary(d)))
        }
        Command::Deactivate => {
            phone
                .record_activation(ActivationState::Unactivated, false)
                .await;
            Ok(Dictionary::new())
        }
    };
    reply.unwrap_or_else(|text| {
        tracing::info!(error = %text, "command refused");
        error_reply(text)
    })
}

/// Takes the record: the state reads `Activated` now, or only `delay_ms` after the reply
/// (`activated_after_ms`).
async fn activate_after(phone: &Arc<Phone>, delay_ms: u64) {
    if delay_ms == 0 {
        phone
            .record_activation(ActivationState::Activated, false)
            .await;
        return;
    }
    let phone = Arc::clone(phone);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        phone
            .record_activation(ActivationState::Activated, false)
            .await;
    });
}

/// The world's delay for a command, before its reply.
async fn computing(delay_ms: u64) {
    if delay_ms > 0 {
        tracing::debug!(delay_ms, "computing the reply");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
}

/// `CreateTunnel1SessionInfoRequest`: a fresh handshake request, which replaces any earlier
/// session.
fn session_info(phone: &Phone, authority: &Authority) -> Value {
    let p = phone.profile();
    let msg = authority.handshake_request(&p.udid);
    phone.begin_activation_session(msg.clone());
    let mut d = Dictionary::new();
    d.insert("HandshakeRequestMessage".into(), Value::Data(msg));
    d.insert("UniqueDeviceID".into(), p.udid.clone().into());
    d.insert("CollectionBlob".into(), Value::Data(collection_blob(phone)));
    Value::Dictionary(d)
}

/// A stand-in for the device-data blob real phones attach (an XML plist of a few KiB).
fn collection_blob(phone: &Phone) -> Vec<u8> {
    let p = phone.profile();
    let mut d = Dictionary::new();
    d.insert("BuildVersion".into(), p.build_version.clone().into());
    d.insert("ProductType".into(), p.product_type.clone().into());
    d.insert("SerialNumber".into(), p.serial.clone().into());
    d.insert("UniqueDeviceID".into(), p.udid.clone().into());
    d.insert(
        "CollectionData".into(),
        Value::Data(values::blob(phone, "collection", 2048)),
    );
    xml(&Value::Dictionary(d))
}

fn xml(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing an in-memory plist to a Vec cannot fail.
    let _ = value.to_writer_xml(&mut out);
    out
}

/// A drmHandshake body as the host passes it: raw XML (pymobiledevice3) or re-serialised
/// (libimobiledevice: XML; others may send binary).
fn parse_plist_body(bytes: &[u8]) -> Option<Value> {
    if bytes.starts_with(b"bplist00") {
        return Value::from_reader(std::io::Cursor::new(bytes)).ok();
    }
    // Depth-checked XML parsing from the protocol crate.
    parse_activation_info_text(std::str::from_utf8(bytes).ok()?).ok()
}

/// `CreateTunnel1ActivationInfoRequest`: checks the handshake reply answers this phone's
/// current handshake, then builds and signs the activation info.
fn activation_info(
    phone: &Phone,
    authority: &Authority,
    handshake_body: &[u8],
) -> Result<Dictionary, String> {
    let fail = |why: &str| ns_error(FAILED_ACTIVATION_INFO, Some(why));
    let p = phone.profile();
    let session = phone
        .activation_session()
        .ok_or_else(|| fail("Failed to establish session."))?;
    let reply = parse_plist_body(handshake_body).ok_or_else(|| fail("Invalid input."))?;
    let reply = reply
        .as_dictionary()
        .ok_or_else(|| fail("Invalid input."))?;
    let data = |key: &str| reply.get(key).and_then(Value::as_data);
    let (Some(response), Some(server_kp)) = (data("HandshakeResponseMessage"), data("serverKP"))
    else {
        return Err(fail("Invalid session response."));
    };
    if !authority.check_handshake_response(&p.udid, &session.handshake_request, server_kp, response)
    {
        return Err(fail("Invalid session response."));
    }

    let randomness = uuid::Uuid::new_v4().to_string().to_uppercase();
    let info_xml = xml(&activation_info_xml(phone, &randomness));
    if !phone.set_activation_randomness(&session.handshake_request, randomness) {
        // Another CreateTunnel1SessionInfoRequest replaced the session meanwhile.
        return Err(fail("Invalid session response."));
    }
    let mut d = Dictionary::new();
    d.insert(
        "FairPlaySignature".into(),
        Value::Data(authority.activation_info_signature(server_kp, &info_xml)),
    );
    d.insert("ActivationInfoXML".into(), Value::Data(info_xml));
    d.insert(
        "FairPlayCertChain".into(),
        Value::Data(values::blob(phone, "fairplay-cert-chain", 1024)),
    );
    d.insert(
        "RKCertification".into(),
        Value::Data(values::blob(phone, "rk-certification", 512)),
    );
    d.insert(
        "RKSignature".into(),
        Value::Data(values::blob(phone, "rk-signature", 72)),
    );
    d.insert("serverKP".into(), Value::Data(server_kp.to_vec()));
    d.insert(
        "signActRequest".into(),
        Value::Data(values::blob(phone, "sign-act-request", 64)),
    );
    Ok(d)
}

/// `CreateActivationInfoRequest`, the activation info without a drmHandshake: what phones
/// from iOS 9.3 (when mobileactivationd appeared) to 9.x answer, and what
/// libideviceactivation asks them first (docs/protocol.md §5.3 B). From iOS 10 on the tool
/// always runs the session (its commit 1db59f8), and the bench's phones refuse it there.
fn sessionless_activation_info(phone: &Phone, authority: &Authority) -> Result<Dictionary, String> {
    let p = phone.profile();
    let before_10 = IosVersion::parse(&p.product_version).is_some_and(|v| v.major < 10);
    if !before_10 {
        return Err(ns_error(
            "Failed to create activation info.",
            Some("Session mode is required (CreateTunnel1SessionInfoRequest)."),
        ));
    }
    let randomness = uuid::Uuid::new_v4().to_string().to_uppercase();
    let info_xml = xml(&activation_info_xml(phone, &randomness));
    // A session without a handshake: it only remembers the request the record must answer
    // (a later CreateTunnel1SessionInfoRequest replaces it, as any new request does).
    phone.begin_activation_session(Vec::new());
    if !phone.set_activation_randomness(&[], randomness) {
        return Err(ns_error(FAILED_ACTIVATION_INFO, None));
    }
    // The keys of a 9.3.5 phone's request (the dump in libideviceactivation#58).
    let mut d = Dictionary::new();
    d.insert("ActivationInfoComplete".into(), Value::Boolean(true));
    d.insert(
        "FairPlaySignature".into(),
        Value::Data(authority.sessionless_info_signature(&p.udid, &info_xml)),
    );
    d.insert("ActivationInfoXML".into(), Value::Data(info_xml));
    d.insert(
        "FairPlayCertChain".into(),
        Value::Data(values::blob(phone, "fairplay-cert-chain", 1024)),
    );
    Ok(d)
}

/// The XML plist inside `ActivationInfoXML` (docs/protocol.md §5.2 sections).
fn activation_info_xml(phone: &Phone, randomness: &str) -> Value {
    let p = phone.profile();
    let dict = |pairs: Vec<(&str, Value)>| -> Value {
        Value::Dictionary(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    };
    let s = |v: &str| Value::String(v.to_string());

    let request_info = dict(vec![
        ("ActivationRandomness", s(randomness)),
        ("ActivationState", s(phone.activation_state().as_str())),
        // False even on a locked erased phone (docs/protocol.md §3.6): only Albert knows.
        ("FMiPAccountExists", Value::Boolean(false)),
    ]);
    let mut baseband = vec![
        ("ActivationRequiresActivationTicket", Value::Boolean(true)),
        ("BasebandActivationTicketVersion", s("V2")),
        ("BasebandChipID", Value::Integer(0x1F_80E1.into())),
        (
            "BasebandSerialNumber",
            Value::Data(values::blob(phone, "bbsn", 12)),
        ),
        ("SIMStatus", s("kCTSIMSupportSIMStatusNotInserted")),
        ("SupportsPostponement", Value::Boolean(true)),
    ];
    if let Some(imei) = &p.imei {
        baseband.push(("InternationalMobileEquipmentIdentity", s(imei)));
    }
    if let Some(imei2) = &p.imei2 {
        baseband.push(("InternationalMobileEquipmentIdentity2", s(imei2)));
    }
    if let Some(meid) = &p.meid {
        baseband.push(("MobileEquipmentIdentifier", s(meid)));
    }
    dict(vec![
        ("ActivationRequestInfo", request_info),
        ("BasebandRequestInfo", dict(baseband)),
        (
            "DeviceCertRequest",
            Value::Data(values::blob(phone, "device-cert-request", 600)),
        ),
        (
            "DeviceID",
            dict(vec![
                ("SerialNumber", s(&p.serial)),
                ("UniqueDeviceID", s(&p.udid)),
            ]),
        ),
        (
            "DeviceInfo",
            dict(vec![
                ("BuildVersion", s(&p.build_version)),
                ("DeviceClass", s(&p.device_class)),
                ("DeviceVariant", s("A")),
                ("ModelNumber", s(&p.model_number)),
                ("OSType", s("iPhone OS")),
                ("ProductType", s(&p.product_type)),
                ("ProductVersion", s(&p.product_version)),
                ("RegionCode", s("LL")),
                ("RegionInfo", s(&p.region_info)),
                ("RegulatoryModelNumber", s(&p.regulatory_model_number)),
                ("UniqueChipID", Value::Integer(p.unique_chip_id.into())),
            ]),
        ),
        ("RegulatoryImages", dict(vec![("DeviceVariant", s("A"))])),
        (
            "SoftwareUpdateRequestInfo",
            dict(vec![("Enabled", Value::Boolean(true))]),
        ),
        (
            "UIKCertification",
            dict(vec![
                ("BluetoothAddress", s(&p.bluetooth_address)),
                ("WifiAddress", s(&p.wifi_address)),
                (
                    "UIKCertification",
                    Value::Data(values::blob(phone, "uik", 256)),
                ),
            ]),
        ),
    ])
}

/// `HandleActivationInfoWithSessionRequest`: the raw deviceActivation body, signed by the
/// server in the response headers, holding a record for this phone's current request.
fn check_record_body(
    phone: &Phone,
    authority: &Authority,
    body: &[u8],
    headers: &[(String, String)],
) -> Result<(), RecordError> {
    if headers.is_empty() {
        return Err(RecordError::MissingHeaders);
    }
    // A dictionary lookup, as on the phone: exact spelling only (docs/protocol.md §5.9).
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if header(CONTENT_TYPE_HEADER).is_none() {
        return Err(RecordError::MissingContentType);
    }
    let signature = header(SIGNATURE_HEADER).ok_or(RecordError::BadResponseSignature)?;
    if !authority.check_response_signature(body, signature) {
        return Err(RecordError::BadResponseSignature);
    }
    let top = parse_plist_body(body).ok_or(RecordError::NotARecord)?;
    let record = top
        .as_dictionary()
        .and_then(|d| d.get("ActivationRecord"))
        .and_then(Value::as_dictionary)
        .ok_or(RecordError::NotARecord)?;
    check_record(phone, authority, record)
}

/// A record handed over as a dictionary (or a plist in data): lockdown's legacy `Activate`
/// and `HandleActivationInfoRequest`. No response headers exist on these paths.
pub(crate) fn check_record_value(
    phone: &Phone,
    authority: &Authority,
    record: &Value,
) -> Result<(), RecordError> {
    let parsed;
    let value = match record {
        Value::Data(bytes) => {
            parsed = parse_plist_body(bytes).ok_or(RecordError::NotARecord)?;
            &parsed
        }
        other => other,
    };
    let d = value.as_dictionary().ok_or(RecordError::NotARecord)?;
    // Accept the body's top level too: `{ActivationRecord: {…}}`.
    let record = d
        .get("ActivationRecord")
        .and_then(Value::as_dictionary)
        .unwrap_or(d);
    check_record(phone, authority, record)
}

fn check_record(
    phone: &Phone,
    authority: &Authority,
    record: &Dictionary,
) -> Result<(), RecordError> {
    let randomness = phone.activation_session().and_then(|s| s.randomness);
    verify_record(authority, record, phone.udid(), randomness.as_deref())
}
