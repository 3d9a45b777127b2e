//! `com.apple.mobileactivationd` (docs/protocol.md §5.1–5.3): the phone-side half of
//! activation. Requests go as binary plists, one command per service connection (the daemon
//! wants a fresh connection for each request; every open-source client reconnects).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::channel::{ChannelError, PlistChannel};
use crate::frame::PlistFormat;

pub const SERVICE: &str = "com.apple.mobileactivationd";

/// A mobileactivationd command with its arguments.
#[derive(Clone, PartialEq)]
pub enum Command {
    GetActivationState,
    /// Starts the session-mode handshake; answers `HandshakeRequestMessage` & co.
    CreateTunnel1SessionInfo,
    /// `handshake_response`: the drmHandshake HTTP response body, passed as data.
    CreateTunnel1ActivationInfo {
        handshake_response: Vec<u8>,
    },
    /// `body`: the raw deviceActivation response; `headers`: its HTTP response headers
    /// (mandatory since iOS 11.2), sent under their canonical spelling
    /// ([`canonical_header_name`]).
    HandleActivationInfoWithSession {
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    },
    /// Pre-iOS 10 (non-session) forms.
    CreateActivationInfo,
    HandleActivationInfo {
        record: plist::Value,
    },
    Deactivate,
}

impl std::fmt::Debug for Command {
    // Bodies are large and device-specific; the name is what a log needs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::GetActivationState => "GetActivationStateRequest",
            Command::CreateTunnel1SessionInfo => "CreateTunnel1SessionInfoRequest",
            Command::CreateTunnel1ActivationInfo { .. } => "CreateTunnel1ActivationInfoRequest",
            Command::HandleActivationInfoWithSession { .. } => {
                "HandleActivationInfoWithSessionRequest"
            }
            Command::CreateActivationInfo => "CreateActivationInfoRequest",
            Command::HandleActivationInfo { .. } => "HandleActivationInfoRequest",
            Command::Deactivate => "DeactivateRequest",
        }
    }

    pub fn to_plist(&self) -> plist::Value {
        let mut d = plist::Dictionary::new();
        d.insert("Command".into(), self.name().into());
        match self {
            Command::CreateTunnel1ActivationInfo { handshake_response } => {
                d.insert(
                    "Value".into(),
                    plist::Value::Data(handshake_response.clone()),
                );
            }
            Command::HandleActivationInfoWithSession { body, headers } => {
                d.insert("Value".into(), plist::Value::Data(body.clone()));
                // The phone looks names up as dictionary keys (case-sensitively); HTTP
                // clients may hand them over lower-cased (docs/protocol.md §5.9).
                let headers: plist::Dictionary = headers
                    .iter()
                    .map(|(k, v)| (canonical_header_name(k), plist::Value::from(v.clone())))
                    .collect();
                d.insert(
                    "ActivationResponseHeaders".into(),
                    plist::Value::Dictionary(headers),
                );
            }
            Command::HandleActivationInfo { record } => {
                d.insert("Value".into(), record.clone());
            }
            _ => {}
        }
        plist::Value::Dictionary(d)
    }

    /// Parses a request (the phone's side, used by the simulator).
    pub fn from_plist(value: &plist::Value) -> Result<Self, MobileActivationError> {
        let d = value.as_dictionary().ok_or_else(|| {
            MobileActivationError::Malformed("request is not a dictionary".into())
        })?;
        let name = d
            .get("Command")
            .and_then(|v| v.as_string())
            .ok_or_else(|| MobileActivationError::Malformed("request without Command".into()))?;
        let data = |what: &str| -> Result<Vec<u8>, MobileActivationError> {
            d.get("Value")
                .and_then(|v| v.as_data())
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    MobileActivationError::Malformed(format!("{what} without data Value"))
                })
        };
        Ok(match name {
            "GetActivationStateRequest" => Command::GetActivationState,
            "CreateTunnel1SessionInfoRequest" => Command::CreateTunnel1SessionInfo,
            "CreateTunnel1ActivationInfoRequest" => Command::CreateTunnel1ActivationInfo {
                handshake_response: data(name)?,
            },
            "HandleActivationInfoWithSessionRequest" => Command::HandleActivationInfoWithSession {
                body: data(name)?,
                headers: d
                    .get("ActivationResponseHeaders")
                    .and_then(|v| v.as_dictionary())
                    .map(|h| {
                        h.iter()
                            .filter_map(|(k, v)| v.as_string().map(|v| (k.clone(), v.to_string())))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            "CreateActivationInfoRequest" => Command::CreateActivationInfo,
            "HandleActivationInfoRequest" => Command::HandleActivationInfo {
                record: d.get("Value").cloned().ok_or_else(|| {
                    MobileActivationError::Malformed(format!("{name} without Value"))
                })?,
            },
            "DeactivateRequest" => Command::Deactivate,
            other => return Err(MobileActivationError::UnknownCommand(other.to_string())),
        })
    }
}

/// A header name as HTTP/1.1 servers spell it and every peer passes it on (`Content-Type`,
/// `X-Client-Request-Id`: Go's canonical form): the first letter and each letter after a
/// `-` upper-case, the rest lower-case.
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum MobileActivationError {
    /// The daemon's own `Error` text (an NSError description).
    #[error("mobileactivationd refused {command}: {message}")]
    Refused {
        command: &'static str,
        message: String,
    },
    #[error("malformed mobileactivationd message: {0}")]
    Malformed(String),
    #[error("unknown mobileactivationd command {0:?}")]
    UnknownCommand(String),
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Sends one command on a fresh service connection and returns the reply's `Value`
/// (`None` when the command answers without one).
pub async fn send_command<S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut PlistChannel<S>,
    command: &Command,
) -> Result<Option<plist::Value>, MobileActivationError> {
    channel
        .send_as(&command.to_plist(), PlistFormat::Binary)
        .await?;
    let reply = channel.recv().await?;
    reply_value(command, reply)
}

/// Checks the daemon's reply to `command`: a dictionary, `Error` a refusal, else its `Value`
/// (`None` when it has none).
pub fn reply_value(
    command: &Command,
    reply: plist::Value,
) -> Result<Option<plist::Value>, MobileActivationError> {
    let mut reply = match reply {
        plist::Value::Dictionary(d) => d,
        _ => {
            return Err(MobileActivationError::Malformed(
                "reply is not a dictionary".into(),
            ))
        }
    };
    if let Some(message) = reply.get("Error").and_then(|v| v.as_string()) {
        return Err(MobileActivationError::Refused {
            command: command.name(),
            message: message.to_string(),
        });
    }
    Ok(reply.remove("Value"))
}

/// The `ActivationState` string of a `GetActivationStateRequest` reply.
pub fn activation_state(value: Option<plist::Value>) -> Result<String, MobileActivationError> {
    value
        .as_ref()
        .and_then(|v| v.as_string())
        .map(str::to_string)
        .ok_or_else(|| MobileActivationError::Malformed("activation state is not a string".into()))
}

/// A dictionary reply (session info, activation info).
pub fn dictionary(
    command: &Command,
    value: Option<plist::Value>,
) -> Result<plist::Dictionary, MobileActivationError> {
    match value {
        Some(plist::Value::Dictionary(d)) => Ok(d),
        _ => Err(MobileActivationError::Malformed(format!(
            "{} did not answer a dictionary",
            command.name()
        ))),
    }
}

/// Activated in the sense every open-source tool uses: anything but `Unactivated`.
pub fn is_activated(state: &str) -> bool {
    state != "Unactivated"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{dict, read_frame, write_frame};

    #[test]
    fn commands_round_trip_through_plist() {
        let commands = [
            Command::GetActivationState,
            Command::CreateTunnel1SessionInfo,
            Command::CreateTunnel1ActivationInfo {
                handshake_response: b"<plist/>".to_vec(),
            },
            Command::HandleActivationInfoWithSession {
                body: b"record".to_vec(),
                headers: vec![("Content-Type".into(), "text/xml".into())],
            },
            Command::CreateActivationInfo,
            Command::HandleActivationInfo {
                record: dict([("A", plist::Value::from("b"))]),
            },
            Command::Deactivate,
        ];
        for command in commands {
            assert_eq!(
                Command::from_plist(&command.to_plist()).expect("parse"),
                command
            );
        }
    }

    #[test]
    fn session_request_carries_response_headers_as_a_dictionary() {
        let value = Command::HandleActivationInfoWithSession {
            body: vec![1, 2],
            headers: vec![
                ("x-apple-header".into(), "v".into()),
                ("content-type".into(), "text/xml".into()),
            ],
        }
        .to_plist();
        let d = value.as_dictionary().expect("dict");
        assert_eq!(
            d.get("Value").and_then(|v| v.as_data()),
            Some(&[1u8, 2][..])
        );
        let headers = d
            .get("ActivationResponseHeaders")
            .and_then(|v| v.as_dictionary())
            .expect("headers");
        assert_eq!(
            headers.get("X-Apple-Header").and_then(|v| v.as_string()),
            Some("v")
        );
        assert_eq!(
            headers.get("Content-Type").and_then(|v| v.as_string()),
            Some("text/xml")
        );
        assert!(headers.get("content-type").is_none());
    }

    #[test]
    fn header_names_take_the_canonical_spelling() {
        for (name, canonical) in [
            ("content-type", "Content-Type"),
            ("CONTENT-TYPE", "Content-Type"),
            ("x-client-request-id", "X-Client-Request-Id"),
            ("X-XSS-Protection", "X-Xss-Protection"),
            ("etag", "Etag"),
            ("x--y", "X--Y"),
            ("", ""),
        ] {
            assert_eq!(canonical_header_name(name), canonical, "{name}");
        }
    }

    #[tokio::test]
    async fn commands_go_as_binary_plists_and_errors_are_named() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let phone = tokio::spawn(async move {
            let mut raw_len = [0u8; 4];
            tokio::io::AsyncReadExt::read_exact(&mut b, &mut raw_len)
                .await
                .expect("len");
            let mut body = vec![0u8; u32::from_be_bytes(raw_len) as usize];
            tokio::io::AsyncReadExt::read_exact(&mut b, &mut body)
                .await
                .expect("body");
            assert!(body.starts_with(b"bplist00"));
            write_frame(
                &mut b,
                &dict([("Value", plist::Value::from("Unactivated"))]),
                PlistFormat::Xml,
            )
            .await
            .expect("reply");
            let _ = read_frame(&mut b).await.expect("second");
            write_frame(
                &mut b,
                &dict([("Error", plist::Value::from("Failed to establish session."))]),
                PlistFormat::Xml,
            )
            .await
            .expect("error");
        });
        let mut channel = PlistChannel::new(a);
        let state = send_command(&mut channel, &Command::GetActivationState)
            .await
            .expect("state");
        assert_eq!(activation_state(state).expect("string"), "Unactivated");
        let err = send_command(&mut channel, &Command::CreateTunnel1SessionInfo)
            .await
            .expect_err("refused");
        assert!(
            matches!(err, MobileActivationError::Refused { command: "CreateTunnel1SessionInfoRequest", ref message } if message == "Failed to establish session.")
        );
        phone.await.expect("phone");
    }

    #[test]
    fn only_unactivated_needs_activation() {
        assert!(!is_activated("Unactivated"));
        for s in [
            "Activated",
            "FactoryActivated",
            "SoftActivation",
            "MismatchedICCID",
        ] {
            assert!(is_activated(s));
        }
    }
}
