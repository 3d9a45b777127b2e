//! lockdownd client (docs/protocol.md §3, §4.3, §4.6): framed plist requests on device
//! port 62078, pairing, sessions upgraded to TLS, and service start.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::channel::{ChannelError, PlistChannel};

pub const LOCKDOWN_PORT: u16 = 62078;
/// `QueryType` answer of a phone in normal OS mode.
pub const LOCKDOWN_TYPE: &str = "com.apple.mobile.lockdown";
/// Lockdown's own idle limit is ~10 s; a request that gets no answer in this time is lost.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

macro_rules! error_kinds {
    ($($variant:ident),* $(,)?) => {
        /// The `Error` strings lockdownd answers with; unknown ones are kept verbatim.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum LockdownErrorKind {
            $($variant,)*
            Other(String),
        }

        impl LockdownErrorKind {
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => stringify!($variant),)*
                    Self::Other(s) => s,
                }
            }

            pub fn parse(s: &str) -> Self {
                match s {
                    $(stringify!($variant) => Self::$variant,)*
                    other => Self::Other(other.to_string()),
                }
            }
        }
    };
}

error_kinds!(
    InvalidResponse,
    MissingKey,
    MissingValue,
    GetProhibited,
    SetProhibited,
    RemoveProhibited,
    ImmutableValue,
    PasswordProtected,
    UserDeniedPairing,
    PairingDialogResponsePending,
    MissingHostID,
    InvalidHostID,
    SessionActive,
    SessionInactive,
    MissingSessionID,
    InvalidSessionID,
    MissingService,
    InvalidService,
    ServiceLimit,
    MissingPairRecord,
    SavePairRecordFailed,
    InvalidPairRecord,
    InvalidActivationRecord,
    MissingActivationRecord,
    ServiceProhibited,
    EscrowLocked,
    PairingProhibitedOverThisConnection,
    FMiPProtected,
    MCProtected,
    MCChallengeRequired,
    InvalidConnection,
);

impl fmt::Display for LockdownErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    #[error("lockdown refused {request}: {kind}")]
    Refused {
        request: String,
        kind: LockdownErrorKind,
    },
    #[error("unexpected lockdown reply to {request}: {detail}")]
    UnexpectedReply { request: String, detail: String },
    #[error("port does not speak lockdown: QueryType answered {0:?}")]
    NotLockdown(String),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The phone accepted `StartSession` but the TLS handshake that follows failed: the
    /// phone no longer trusts this pair record's certificates (erased, or re-paired under
    /// the same HostID), or it speaks a TLS the station does not.
    #[error("the session's TLS handshake failed: {0}")]
    SessionTls(ChannelError),
}

impl LockdownError {
    /// The lockdown error string, when the phone answered with one.
    pub fn kind(&self) -> Option<&LockdownErrorKind> {
        match self {
            LockdownError::Refused { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// What `StartSession` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: String,
    pub ssl: bool,
}

/// What `StartService` answered: connect to `port` through usbmuxd, with TLS if `ssl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub service: String,
    pub port: u16,
    pub ssl: bool,
}

/// A lockdownd connection.
#[derive(Debug)]
pub struct LockdownClient<S> {
    channel: PlistChannel<S>,
    label: String,
    session: Option<SessionInfo>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> LockdownClient<S> {
    /// `label` is sent with every request (phones log it).
    pub fn new(stream: S, label: &str) -> Self {
        let mut channel = PlistChannel::new(stream);
        channel.set_timeout(Some(DEFAULT_REQUEST_TIMEOUT));
        LockdownClient {
            channel,
            label: label.to_string(),
            session: None,
        }
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.channel.set_timeout(Some(timeout));
    }

    /// Version and cipher suite of the session's TLS, while a TLS session is up.
    pub fn negotiated_tls(&self) -> Option<crate::tls_engine::NegotiatedTls> {
        self.channel.negotiated_tls()
    }

    pub fn session(&self) -> Option<&SessionInfo> {
        self.session.as_ref()
    }

    /// Sends `{Label, Request, ..fields}` and returns the reply dictionary, or the phone's
    /// `Error` as [`LockdownError::Refused`].
    pub async fn request(
        &mut self,
        request: &str,
        fields: Vec<(&str, plist::Value)>,
    ) -> Result<plist::Dictionary, LockdownError> {
        let mut message = plist::Dictionary::new();
        message.insert("Label".into(), self.label.clone().into());
        message.insert("Request".into(), request.into());
        for (key, value) in fields {
            message.insert(key.into(), value);
        }
        self.channel
            .send(&plist::Value::Dictionary(message))
            .await?;
        let reply = self.channel.recv().await?;
        check_reply(request, reply)
    }

    /// `QueryType`; fails unless the port is lockdownd in normal OS mode.
    pub async fn query_type(&mut self) -> Result<String, LockdownError> {
        let reply = self.request("QueryType", vec![]).await?;
        let kind = reply
            .get("Type")
            .and_then(|v| v.as_string())
            .unwrap_or_default()
            .to_string();
        if kind != LOCKDOWN_TYPE {
            return Err(LockdownError::NotLockdown(kind));
        }
        Ok(kind)
    }

    /// `GetValue`; with no key, the whole domain as a dictionary.
    pub async fn get_value(
        &mut self,
        domain: Option<&str>,
        key: Option<&str>,
    ) -> Result<plist::Value, LockdownError> {
        let mut fields = Vec::new();
        if let Some(domain) = domain {
            fields.push(("Domain", plist::Value::from(domain)));
        }
        if let Some(key) = key {
            fields.push(("Key", plist::Value::from(key)));
        }
        let mut reply = self.request("GetValue", fields).await?;
        reply.remove("Value").ok_or_else(|| LockdownError::Refused {
            request: "GetValue".into(),
            kind: LockdownErrorKind::MissingValue,
        })
    }

    pub async fn set_value(
        &mut self,
        domain: Option<&str>,
        key: &str,
        value: plist::Value,
    ) -> Result<(), LockdownError> {
        let mut fields = vec![("Key", plist::Value::from(key)), ("Value", value)];
        if let Some(domain) = domain {
            fields.push(("Domain", plist::Value::from(domain)));
        }
        self.request("SetValue", fields).await.map(drop)
    }

    pub async fn remove_value(
        &mut self,
        domain: Option<&str>,
        key: &str,
    ) -> Result<(), LockdownError> {
        let mut fields = vec![("Key", plist::Value::from(key))];
        if let Some(domain) = domain {
            fields.push(("Domain", plist::Value::from(domain)));
        }
        self.request("RemoveValue", fields).await.map(drop)
    }

    /// `Pair` with the record as sent to the phone (no private keys), ProtocolVersion 2.
    /// Returns the phone's `EscrowBag`, which a phone may leave out of a success (a locked
    /// phone cannot unwrap its keybag); libimobiledevice and go-ios accept that pairing.
    pub async fn pair(
        &mut self,
        pair_record: plist::Value,
    ) -> Result<Option<Vec<u8>>, LockdownError> {
        let options = crate::frame::dict([("ExtendedPairingErrors", plist::Value::Boolean(true))]);
        let reply = self
            .request(
                "Pair",
                vec![
                    ("PairRecord", pair_record),
                    ("ProtocolVersion", "2".into()),
                    ("PairingOptions", options),
                ],
            )
            .await?;
        Ok(reply
            .get("EscrowBag")
            .and_then(|v| v.as_data())
            .map(<[u8]>::to_vec))
    }

    pub async fn validate_pair(&mut self, pair_record: plist::Value) -> Result<(), LockdownError> {
        self.request(
            "ValidatePair",
            vec![("PairRecord", pair_record), ("ProtocolVersion", "2".into())],
        )
        .await
        .map(drop)
    }

    pub async fn unpair(&mut self, pair_record: plist::Value) -> Result<(), LockdownError> {
        self.request(
            "Unpair",
            vec![("PairRecord", pair_record), ("ProtocolVersion", "2".into())],
        )
        .await
        .map(drop)
    }

    /// `StartSession`, then the TLS handshake on this connection when the phone asks for it.
    pub async fn start_session(
        &mut self,
        host_id: &str,
        system_buid: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<SessionInfo, LockdownError> {
        let reply = self
            .request(
                "StartSession",
                vec![
                    ("HostID", host_id.into()),
                    ("SystemBUID", system_buid.into()),
                ],
            )
            .await?;
        let session_id = reply
            .get("SessionID")
            .and_then(|v| v.as_string())
            .ok_or_else(|| LockdownError::UnexpectedReply {
                request: "StartSession".into(),
                detail: "no SessionID".into(),
            })?
            .to_string();
        let ssl = reply
            .get("EnableSessionSSL")
            .and_then(|v| v.as_boolean())
            .unwrap_or(false);
        if ssl {
            self.channel
                .start_tls_client(tls)
                .await
                .map_err(LockdownError::SessionTls)?;
        }
        let info = SessionInfo { session_id, ssl };
        self.session = Some(info.clone());
        Ok(info)
    }

    /// `StopSession`, then back to plaintext.
    pub async fn stop_session(&mut self) -> Result<(), LockdownError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        self.request(
            "StopSession",
            vec![("SessionID", session.session_id.into())],
        )
        .await?;
        if session.ssl {
            self.channel.stop_tls().await?;
        }
        Ok(())
    }

    pub async fn start_service(
        &mut self,
        service: &str,
        escrow_bag: Option<Vec<u8>>,
    ) -> Result<ServiceInfo, LockdownError> {
        let mut fields = vec![("Service", plist::Value::from(service))];
        if let Some(bag) = escrow_bag {
            fields.push(("EscrowBag", plist::Value::Data(bag)));
        }
        let reply = self.request("StartService", fields).await?;
        let port = reply
            .get("Port")
            .and_then(|v| v.as_unsigned_integer())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| LockdownError::UnexpectedReply {
                request: "StartService".into(),
                detail: "no valid Port".into(),
            })?;
        Ok(ServiceInfo {
            service: service.to_string(),
            port,
            ssl: reply
                .get("EnableServiceSSL")
                .and_then(|v| v.as_boolean())
                .unwrap_or(false),
        })
    }

    /// Legacy activation (phones without mobileactivationd): hands the record to lockdown.
    /// Needs a session. iOS ≥ 9.3 may answer an error even when it worked, so callers
    /// re-read `ActivationState` afterwards.
    pub async fn activate(&mut self, record: plist::Value) -> Result<(), LockdownError> {
        self.request("Activate", vec![("ActivationRecord", record)])
            .await
            .map(drop)
    }

    /// The legacy `ActivationInfo` dict the pre-mobileactivationd flow posts to Albert.
    pub async fn activation_info(&mut self) -> Result<plist::Value, LockdownError> {
        self.get_value(None, Some("ActivationInfo")).await
    }

    pub async fn deactivate(&mut self) -> Result<(), LockdownError> {
        self.request("Deactivate", vec![]).await.map(drop)
    }

    /// Polite close: `Goodbye`, then shut the stream.
    pub async fn goodbye(mut self) -> Result<(), LockdownError> {
        self.request("Goodbye", vec![]).await?;
        self.channel.shutdown().await?;
        Ok(())
    }

    pub fn into_channel(self) -> PlistChannel<S> {
        self.channel
    }
}

/// Checks one lockdown reply: a dictionary without `Error` and without `Result: Failure`.
/// Public only so the fuzz targets reach it.
#[doc(hidden)]
pub fn check_reply(request: &str, reply: plist::Value) -> Result<plist::Dictionary, LockdownError> {
    let plist::Value::Dictionary(reply) = reply else {
        return Err(LockdownError::UnexpectedReply {
            request: request.into(),
            detail: "reply is not a dictionary".into(),
        });
    };
    if let Some(error) = reply.get("Error").and_then(|v| v.as_string()) {
        return Err(LockdownError::Refused {
            request: request.into(),
            kind: LockdownErrorKind::parse(error),
        });
    }
    // Before iOS 5 failures came as Result: Failure without an Error string.
    if reply.get("Result").and_then(|v| v.as_string()) == Some("Failure") {
        return Err(LockdownError::Refused {
            request: request.into(),
            kind: LockdownErrorKind::InvalidResponse,
        });
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{dict, read_frame, write_frame, PlistFormat};

    /// A scripted phone: reads each request, checks it with `check`, answers with the reply.
    fn phone(
        script: Vec<(&'static str, plist::Value)>,
    ) -> (
        LockdownClient<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<Vec<plist::Dictionary>>,
    ) {
        let (client_side, mut phone_side) = tokio::io::duplex(1 << 16);
        let handle = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (expected, reply) in script {
                let Ok(plist::Value::Dictionary(request)) = read_frame(&mut phone_side).await
                else {
                    break;
                };
                assert_eq!(
                    request.get("Request").and_then(|v| v.as_string()),
                    Some(expected)
                );
                seen.push(request);
                if write_frame(&mut phone_side, &reply, PlistFormat::Xml)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            seen
        });
        let mut client = LockdownClient::new(client_side, "station-test");
        client.set_timeout(Duration::from_secs(5));
        (client, handle)
    }

    #[test]
    fn error_strings_map_both_ways() {
        for s in [
            "InvalidHostID",
            "PairingDialogResponsePending",
            "UserDeniedPairing",
            "PasswordProtected",
            "SessionInactive",
            "InvalidService",
            "MissingValue",
        ] {
            let kind = LockdownErrorKind::parse(s);
            assert!(!matches!(kind, LockdownErrorKind::Other(_)), "{s}");
            assert_eq!(kind.as_str(), s);
        }
        assert_eq!(
            LockdownErrorKind::parse("BrandNewError"),
            LockdownErrorKind::Other("BrandNewError".into())
        );
        assert_eq!(
            LockdownErrorKind::parse("BrandNewError").as_str(),
            "BrandNewError"
        );
    }

    #[tokio::test]
    async fn get_value_sends_domain_and_key_with_label() {
        let (mut client, phone) = phone(vec![(
            "GetValue",
            dict([
                ("Request", "GetValue".into()),
                ("Value", "Unactivated".into()),
            ]),
        )]);
        let value = client
            .get_value(Some("com.apple.mobile.battery"), Some("ActivationState"))
            .await
            .expect("value");
        assert_eq!(value.as_string(), Some("Unactivated"));
        let seen = phone.await.expect("phone");
        assert_eq!(
            seen[0].get("Label").and_then(|v| v.as_string()),
            Some("station-test")
        );
        assert_eq!(
            seen[0].get("Domain").and_then(|v| v.as_string()),
            Some("com.apple.mobile.battery")
        );
        assert_eq!(
            seen[0].get("Key").and_then(|v| v.as_string()),
            Some("ActivationState")
        );
    }

    #[tokio::test]
    async fn error_replies_become_named_refusals() {
        let (mut client, _phone) = phone(vec![
            (
                "Pair",
                dict([
                    ("Request", "Pair".into()),
                    ("Error", "PairingDialogResponsePending".into()),
                ]),
            ),
            (
                "GetValue",
                dict([
                    ("Request", "GetValue".into()),
                    ("Error", "SomethingNew".into()),
                ]),
            ),
        ]);
        let err = client
            .pair(dict([("HostID", "X".into())]))
            .await
            .expect_err("pending");
        assert_eq!(
            err.kind(),
            Some(&LockdownErrorKind::PairingDialogResponsePending)
        );
        let err = client.get_value(None, Some("X")).await.expect_err("other");
        assert_eq!(
            err.kind(),
            Some(&LockdownErrorKind::Other("SomethingNew".into()))
        );
    }

    #[tokio::test]
    async fn pair_sends_protocol_version_2_and_returns_escrow_bag() {
        let (mut client, phone) = phone(vec![(
            "Pair",
            dict([
                ("Request", "Pair".into()),
                ("EscrowBag", plist::Value::Data(vec![9; 8])),
            ]),
        )]);
        let bag = client
            .pair(dict([("HostID", "H".into())]))
            .await
            .expect("pair");
        assert_eq!(bag, Some(vec![9; 8]));
        let seen = phone.await.expect("phone");
        assert_eq!(
            seen[0].get("ProtocolVersion").and_then(|v| v.as_string()),
            Some("2")
        );
        let options = seen[0]
            .get("PairingOptions")
            .and_then(|v| v.as_dictionary())
            .expect("options");
        assert_eq!(
            options
                .get("ExtendedPairingErrors")
                .and_then(|v| v.as_boolean()),
            Some(true)
        );
    }

    #[tokio::test]
    async fn pair_success_without_escrow_bag_is_still_a_pairing() {
        // libimobiledevice and go-ios keep such a pairing (a locked phone cannot hand out
        // its keybag); refusing it would leave a paired phone the station cannot use.
        let (mut client, _phone) = phone(vec![("Pair", dict([("Request", "Pair".into())]))]);
        let bag = client
            .pair(dict([("HostID", "H".into())]))
            .await
            .expect("a success without EscrowBag is a success");
        assert_eq!(bag, None);
    }

    #[tokio::test]
    async fn query_type_rejects_restore_mode() {
        let (mut client, _phone) = phone(vec![(
            "QueryType",
            dict([
                ("Request", "QueryType".into()),
                ("Type", "com.apple.mobile.restored".into()),
            ]),
        )]);
        assert!(
            matches!(client.query_type().await, Err(LockdownError::NotLockdown(t)) if t == "com.apple.mobile.restored")
        );
    }

    #[tokio::test]
    async fn start_service_returns_port_and_ssl_flag() {
        let (mut client, _phone) = phone(vec![(
            "StartService",
            dict([
                ("Request", "StartService".into()),
                ("Service", "com.apple.mobileactivationd".into()),
                ("Port", 49152u64.into()),
                ("EnableServiceSSL", true.into()),
            ]),
        )]);
        let info = client
            .start_service("com.apple.mobileactivationd", None)
            .await
            .expect("svc");
        assert_eq!(
            info,
            ServiceInfo {
                service: "com.apple.mobileactivationd".into(),
                port: 49152,
                ssl: true
            }
        );
    }

    #[tokio::test]
    async fn legacy_activation_hands_the_record_to_lockdown() {
        let record = dict([("AccountToken", plist::Value::Data(vec![1, 2, 3]))]);
        let (mut client, phone) = phone(vec![
            (
                "GetValue",
                dict([
                    ("Request", "GetValue".into()),
                    (
                        "Value",
                        dict([("ActivationInfoXML", plist::Value::Data(vec![7]))]),
                    ),
                ]),
            ),
            ("Activate", dict([("Request", "Activate".into())])),
            (
                "Deactivate",
                dict([
                    ("Request", "Deactivate".into()),
                    ("Error", "SessionInactive".into()),
                ]),
            ),
        ]);
        let info = client.activation_info().await.expect("info");
        assert!(info
            .as_dictionary()
            .is_some_and(|d| d.contains_key("ActivationInfoXML")));
        client.activate(record.clone()).await.expect("activate");
        let err = client.deactivate().await.expect_err("no session");
        assert_eq!(err.kind(), Some(&LockdownErrorKind::SessionInactive));
        let seen = phone.await.expect("phone");
        assert_eq!(
            seen[0].get("Key").and_then(|v| v.as_string()),
            Some("ActivationInfo")
        );
        assert_eq!(seen[1].get("ActivationRecord"), Some(&record));
    }

    #[tokio::test]
    async fn silent_phone_times_out() {
        let (client_side, _phone_side) = tokio::io::duplex(1024);
        let mut client = LockdownClient::new(client_side, "t");
        client.set_timeout(Duration::from_millis(50));
        let err = client.query_type().await.expect_err("timeout");
        assert!(matches!(
            err,
            LockdownError::Channel(ChannelError::Timeout(_))
        ));
    }
}
