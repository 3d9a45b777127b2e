//! A hostile phone (issue 13): at one named lockdown request or mobileactivationd command
//! (`[device.hostile] at = "…"`, docs/world.md) the phone stops playing by the rules and
//! sends an oversized or truncated frame, bytes that are no plist, a reply of the wrong
//! type, nothing at all, a reply one byte at a time, or takes the session and never does
//! its side of the TLS handshake. The station must end each in a named error within its
//! time-out.

use std::time::Duration;

use plist::{Dictionary, Value};
use serde::{Deserialize, Serialize};
use station_protocol::channel::PlistChannel;
use station_protocol::frame::{encode_frame, PlistFormat, MAX_FRAME_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// How long a silent phone holds the connection at most (the client gives up long before).
const SILENCE: Duration = Duration::from_secs(600);
/// Pause between the bytes of a dripped reply.
const DRIP_INTERVAL: Duration = Duration::from_millis(200);

/// `[device.hostile]`: where and how the phone misbehaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostileSpec {
    /// The lockdown request (`QueryType`, `GetValue`, `StartSession`, …) or
    /// mobileactivationd command (`CreateTunnel1SessionInfoRequest`, …) answered wrongly;
    /// every one of that name is.
    pub at: String,
    pub how: HostileHow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostileHow {
    /// A length prefix far over the 4 MiB cap, then silence.
    OversizedFrame,
    /// A length prefix of 1000 bytes, 20 of them, then the connection closed.
    TruncatedFrame,
    /// A well-framed body that is no plist.
    NotAPlist,
    /// A plist array where a dictionary belongs.
    WrongType,
    /// A dictionary whose fields have the wrong types (`Value` an integer, `SessionID` a
    /// boolean, `EnableSessionSSL` a string, `Type` data).
    WrongFieldTypes,
    /// Reads on, never answers.
    Silent,
    /// A valid reply, one byte every 200 ms.
    SlowDrip,
    /// Answers `StartSession` (TLS on) and never sends a byte of the handshake.
    SilentAfterTls,
}

impl HostileSpec {
    pub fn applies_to(&self, request: &str) -> bool {
        self.at == request
    }
}

/// Misbehaves instead of answering `request`; the connection is to be dropped afterwards.
pub(crate) async fn misbehave<S>(channel: &mut PlistChannel<S>, how: HostileHow, request: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    tracing::info!(request, ?how, "hostile phone misbehaves");
    let mut reply = Dictionary::new();
    reply.insert("Request".into(), Value::String(request.to_string()));
    let sent = match how {
        HostileHow::OversizedFrame => {
            let len = MAX_FRAME_LEN.saturating_mul(64);
            match channel.send_raw(&len.to_be_bytes()).await {
                Ok(()) => {
                    hold_silent(channel).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        HostileHow::TruncatedFrame => {
            let mut bytes = 1000_u32.to_be_bytes().to_vec();
            bytes.extend_from_slice(b"<?xml version=\"1.0\"?>");
            channel.send_raw(&bytes).await
        }
        HostileHow::NotAPlist => {
            let body = b"\x00\xffthis is not a property list\x01\x02";
            let mut bytes = u32::try_from(body.len())
                .unwrap_or(0)
                .to_be_bytes()
                .to_vec();
            bytes.extend_from_slice(body);
            channel.send_raw(&bytes).await
        }
        HostileHow::WrongType => {
            let value = Value::Array(vec![Value::String(request.to_string())]);
            channel.send(&value).await
        }
        HostileHow::WrongFieldTypes => {
            reply.insert("Value".into(), Value::Integer(42.into()));
            reply.insert("SessionID".into(), Value::Boolean(true));
            reply.insert("EnableSessionSSL".into(), Value::String("yes".into()));
            reply.insert("Type".into(), Value::Data(vec![1, 2, 3]));
            reply.insert("ActivationState".into(), Value::Integer(7.into()));
            channel.send(&Value::Dictionary(reply)).await
        }
        HostileHow::Silent => {
            hold_silent(channel).await;
            Ok(())
        }
        HostileHow::SlowDrip => {
            reply.insert("Value".into(), Value::String("dripped".into()));
            match encode_frame(&Value::Dictionary(reply), PlistFormat::Xml) {
                Ok(frame) => {
                    let mut sent = Ok(());
                    for byte in frame {
                        sent = channel.send_raw(&[byte]).await;
                        if sent.is_err() {
                            break;
                        }
                        tokio::time::sleep(DRIP_INTERVAL).await;
                    }
                    sent
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode the dripped reply");
                    Ok(())
                }
            }
        }
        HostileHow::SilentAfterTls => {
            reply.insert(
                "SessionID".into(),
                Value::String("HOSTILE-SESSION".to_string()),
            );
            reply.insert("EnableSessionSSL".into(), Value::Boolean(true));
            match channel.send(&Value::Dictionary(reply)).await {
                Ok(()) => {
                    hold_silent(channel).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "the client left the hostile phone");
    }
}

/// Reads (and drops) whatever the client sends, answering nothing, until it closes the
/// connection or [`SILENCE`] passes.
async fn hold_silent<S>(channel: &mut PlistChannel<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let stream = channel.get_mut();
    let mut sink = [0_u8; 4096];
    let _ = tokio::time::timeout(SILENCE, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_reads_from_toml() {
        let spec: HostileSpec =
            toml::from_str("at = \"GetValue\"\nhow = \"slow_drip\"").expect("spec");
        assert!(spec.applies_to("GetValue"));
        assert!(!spec.applies_to("QueryType"));
        assert_eq!(spec.how, HostileHow::SlowDrip);
        assert!(toml::from_str::<HostileSpec>("at = \"GetValue\"\nhow = \"rude\"").is_err());
    }
}
