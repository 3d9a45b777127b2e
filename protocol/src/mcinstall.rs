//! `com.apple.mobile.MCInstall`: the managed-configuration service, as far as the station
//! reads it — the phone's cloud configuration (supervision, organisation, MDM enrolment).
//!
//! The service is started with lockdown's `StartService` like any other (TLS when the answer
//! says `EnableServiceSSL`) and speaks the usual length-prefixed plists. Every request is a
//! dictionary with `RequestType`; every answer carries `Status`, `Acknowledged` on success
//! (docs/protocol.md §3.7). Both the station and the bench's phones build on this module.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::channel::{ChannelError, PlistChannel};
use crate::frame::{dict, PlistFormat};

/// The lockdown name of the service.
pub const SERVICE: &str = "com.apple.mobile.MCInstall";

/// The `Status` of every successful answer.
pub const STATUS_ACKNOWLEDGED: &str = "Acknowledged";

/// The `Status` this module's phones answer a request they cannot parse with (the name of
/// the phone's own constant, `kMCTPStatusCommandFormatError`; its exact text is a guess).
pub const STATUS_COMMAND_FORMAT_ERROR: &str = "CommandFormatError";

/// How long one request may take: the phone answers from memory, so a silent phone is gone.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest organisation name kept, in characters: it ends up in a terminal row and a CSV.
pub const MAX_ORGANIZATION_CHARS: usize = 128;

/// The requests the station and the bench know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Introduces the host; answers `Status` only.
    HelloHostIdentifier,
    /// Flushes the phone's queue of managed-configuration commands; answers `Status` only.
    Flush,
    /// Answers `Status` and, when the phone has one, `CloudConfiguration`.
    GetCloudConfiguration,
}

impl Request {
    pub fn name(self) -> &'static str {
        match self {
            Request::HelloHostIdentifier => "HelloHostIdentifier",
            Request::Flush => "Flush",
            Request::GetCloudConfiguration => "GetCloudConfiguration",
        }
    }

    /// `None` for a request type this module does not know.
    pub fn parse(name: &str) -> Option<Request> {
        match name {
            "HelloHostIdentifier" => Some(Request::HelloHostIdentifier),
            "Flush" => Some(Request::Flush),
            "GetCloudConfiguration" => Some(Request::GetCloudConfiguration),
            _ => None,
        }
    }

    pub fn to_plist(self) -> plist::Value {
        dict([("RequestType", plist::Value::from(self.name()))])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum McInstallError {
    /// The phone answered a `Status` other than `Acknowledged` (or none); `error` is the
    /// first entry's description from its `ErrorChain`, when there is one.
    #[error("MCInstall refused {request}: status {status:?}{}", error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Refused {
        request: &'static str,
        status: Option<String>,
        error: Option<String>,
    },
    #[error("malformed MCInstall answer to {request}: {reason}")]
    Malformed {
        request: &'static str,
        reason: &'static str,
    },
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// What the phone's cloud configuration says. Every field is `None` when the phone has no
/// configuration at all (an erased phone, or one never enrolled): "says nothing", not false.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudConfiguration {
    /// `IsSupervised`.
    pub supervised: Option<bool>,
    /// `OrganizationName`, cleaned of control characters and capped; `None` when absent or
    /// blank.
    pub organization: Option<String>,
    /// Whether a `ConfigurationURL` (the MDM enrolment address) is present.
    pub mdm_enrolled: Option<bool>,
    /// `IsMDMUnremovable`.
    pub mdm_unremovable: Option<bool>,
}

impl CloudConfiguration {
    /// Whether the phone had a configuration at all.
    pub fn is_present(&self) -> bool {
        self.supervised.is_some()
    }

    /// Reads an acknowledged `GetCloudConfiguration` answer. A missing or empty
    /// `CloudConfiguration` is no configuration; inside a present one, a missing flag is
    /// false (the phone writes the configuration it was given, flags included).
    pub fn from_reply(reply: &plist::Dictionary) -> Result<CloudConfiguration, McInstallError> {
        let config = match reply.get("CloudConfiguration") {
            None => return Ok(CloudConfiguration::default()),
            Some(plist::Value::Dictionary(d)) => d,
            Some(_) => {
                return Err(McInstallError::Malformed {
                    request: Request::GetCloudConfiguration.name(),
                    reason: "CloudConfiguration is not a dictionary",
                })
            }
        };
        if config.is_empty() {
            return Ok(CloudConfiguration::default());
        }
        let url_present = config
            .get("ConfigurationURL")
            .and_then(plist::Value::as_string)
            .is_some_and(|url| !url.trim().is_empty());
        Ok(CloudConfiguration {
            supervised: Some(flag(config, "IsSupervised")),
            organization: config
                .get("OrganizationName")
                .and_then(plist::Value::as_string)
                .and_then(clean_text),
            mdm_enrolled: Some(url_present),
            mdm_unremovable: Some(flag(config, "IsMDMUnremovable")),
        })
    }
}

/// A boolean flag of the configuration; some hosts write them as integers (go-ios sends
/// `AllowPairing: 1`), so 0/1 count too.
fn flag(config: &plist::Dictionary, key: &str) -> bool {
    match config.get(key) {
        Some(plist::Value::Boolean(b)) => *b,
        Some(plist::Value::Integer(i)) => i.as_unsigned().is_some_and(|n| n != 0),
        _ => false,
    }
}

/// Control characters become spaces (the text goes to terminals), the ends are trimmed and
/// the length is capped; blank is `None`.
fn clean_text(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        return None;
    }
    Some(trimmed.chars().take(MAX_ORGANIZATION_CHARS).collect())
}

/// A client on a started MCInstall service connection (already in TLS when lockdown asked
/// for it).
pub struct McInstallClient<S> {
    channel: PlistChannel<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> McInstallClient<S> {
    /// Wraps the service connection; without a timeout of its own it gets
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(mut channel: PlistChannel<S>) -> Self {
        if channel.timeout().is_none() {
            channel.set_timeout(Some(DEFAULT_REQUEST_TIMEOUT));
        }
        McInstallClient { channel }
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.channel.set_timeout(Some(timeout));
    }

    /// Sends one request and returns its acknowledged answer.
    pub async fn request(&mut self, request: Request) -> Result<plist::Dictionary, McInstallError> {
        self.channel
            .send_as(&request.to_plist(), PlistFormat::Xml)
            .await?;
        let reply = match self.channel.recv().await? {
            plist::Value::Dictionary(d) => d,
            _ => {
                return Err(McInstallError::Malformed {
                    request: request.name(),
                    reason: "answer is not a dictionary",
                })
            }
        };
        let status = reply.get("Status").and_then(plist::Value::as_string);
        if status != Some(STATUS_ACKNOWLEDGED) {
            return Err(McInstallError::Refused {
                request: request.name(),
                status: status.map(str::to_string),
                error: first_error(&reply),
            });
        }
        Ok(reply)
    }

    pub async fn hello_host_identifier(&mut self) -> Result<(), McInstallError> {
        self.request(Request::HelloHostIdentifier).await.map(drop)
    }

    pub async fn flush(&mut self) -> Result<(), McInstallError> {
        self.request(Request::Flush).await.map(drop)
    }

    /// `GetCloudConfiguration`, read into its typed form.
    pub async fn cloud_configuration(&mut self) -> Result<CloudConfiguration, McInstallError> {
        let reply = self.request(Request::GetCloudConfiguration).await?;
        CloudConfiguration::from_reply(&reply)
    }

    /// Closes the connection politely (the phone closes its end too).
    pub async fn close(mut self) {
        let _ = self.channel.shutdown().await;
    }

    pub fn into_channel(self) -> PlistChannel<S> {
        self.channel
    }
}

/// The description of the first `ErrorChain` entry, capped like any text from the phone.
fn first_error(reply: &plist::Dictionary) -> Option<String> {
    let first = reply
        .get("ErrorChain")
        .and_then(plist::Value::as_array)?
        .first()?
        .as_dictionary()?;
    let text = first
        .get("LocalizedDescription")
        .or_else(|| first.get("ErrorDescription"))
        .and_then(plist::Value::as_string);
    let code = first
        .get("ErrorCode")
        .and_then(plist::Value::as_signed_integer);
    match (text.and_then(clean_text), code) {
        (Some(t), Some(c)) => Some(format!("{c}: {t}")),
        (Some(t), None) => Some(t),
        (None, Some(c)) => Some(format!("error {c}")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_frame, read_frame, write_frame};

    /// A scripted phone: answers each request with the next reply, returns what it saw.
    fn phone(
        replies: Vec<plist::Value>,
    ) -> (
        McInstallClient<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<Vec<plist::Value>>,
    ) {
        let (client_side, mut phone_side) = tokio::io::duplex(1 << 16);
        let handle = tokio::spawn(async move {
            let mut seen = Vec::new();
            for reply in replies {
                let Ok(request) = read_frame(&mut phone_side).await else {
                    break;
                };
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
        let mut client = McInstallClient::new(PlistChannel::new(client_side));
        client.set_timeout(Duration::from_secs(5));
        (client, handle)
    }

    fn acknowledged() -> plist::Value {
        dict([("Status", plist::Value::from(STATUS_ACKNOWLEDGED))])
    }

    fn with_configuration(config: plist::Value) -> plist::Value {
        dict([
            ("Status", plist::Value::from(STATUS_ACKNOWLEDGED)),
            ("CloudConfiguration", config),
        ])
    }

    #[test]
    fn the_request_is_one_key_in_an_xml_frame() {
        let frame =
            encode_frame(&Request::GetCloudConfiguration.to_plist(), PlistFormat::Xml).expect("");
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        let body = std::str::from_utf8(&frame[4..]).expect("utf-8");
        assert!(body.starts_with("<?xml"), "{body}");
        assert!(
            body.contains("<key>RequestType</key>\n\t<string>GetCloudConfiguration</string>"),
            "{body}"
        );
        assert_eq!(
            Request::GetCloudConfiguration
                .to_plist()
                .as_dictionary()
                .map(plist::Dictionary::len),
            Some(1)
        );
        for r in [
            Request::HelloHostIdentifier,
            Request::Flush,
            Request::GetCloudConfiguration,
        ] {
            assert_eq!(Request::parse(r.name()), Some(r));
        }
        assert_eq!(Request::parse("EraseDevice"), None);
    }

    #[tokio::test]
    async fn a_supervised_enrolled_phone_reads_in_full() {
        let (mut client, phone) = phone(vec![with_configuration(dict([
            ("IsSupervised", plist::Value::Boolean(true)),
            (
                "OrganizationName",
                plist::Value::from("Example School District"),
            ),
            (
                "ConfigurationURL",
                plist::Value::from("https://mdm.example.org/enroll"),
            ),
            ("IsMDMUnremovable", plist::Value::Boolean(true)),
            ("AllowPairing", plist::Value::Boolean(true)),
        ]))]);
        let config = client.cloud_configuration().await.expect("read");
        assert_eq!(
            config,
            CloudConfiguration {
                supervised: Some(true),
                organization: Some("Example School District".into()),
                mdm_enrolled: Some(true),
                mdm_unremovable: Some(true),
            }
        );
        assert!(config.is_present());
        let seen = phone.await.expect("phone");
        assert_eq!(seen, vec![Request::GetCloudConfiguration.to_plist()]);
    }

    #[tokio::test]
    async fn no_configuration_says_nothing_rather_than_false() {
        // An erased phone answers the status alone; an empty dictionary means the same.
        let (mut client, _phone) = phone(vec![
            acknowledged(),
            with_configuration(plist::Value::Dictionary(plist::Dictionary::new())),
        ]);
        for _ in 0..2 {
            let config = client.cloud_configuration().await.expect("read");
            assert_eq!(config, CloudConfiguration::default());
            assert!(!config.is_present());
            assert_eq!(config.supervised, None);
            assert_eq!(config.mdm_enrolled, None);
        }
    }

    #[tokio::test]
    async fn a_present_configuration_without_flags_is_not_supervised() {
        let (mut client, _phone) = phone(vec![with_configuration(dict([
            ("AllowPairing", plist::Value::Integer(1.into())),
            ("IsSupervised", plist::Value::Integer(0.into())),
            (
                "OrganizationName",
                plist::Value::from("  \u{7}Acme\nCorp  "),
            ),
        ]))]);
        let config = client.cloud_configuration().await.expect("read");
        assert_eq!(
            config,
            CloudConfiguration {
                supervised: Some(false),
                organization: Some("Acme Corp".into()),
                mdm_enrolled: Some(false),
                mdm_unremovable: Some(false),
            }
        );
    }

    #[tokio::test]
    async fn long_organisation_names_are_capped() {
        let long = "O".repeat(MAX_ORGANIZATION_CHARS * 3);
        let (mut client, _phone) = phone(vec![with_configuration(dict([
            ("IsSupervised", plist::Value::Boolean(true)),
            ("OrganizationName", plist::Value::from(long.as_str())),
        ]))]);
        let config = client.cloud_configuration().await.expect("read");
        assert_eq!(
            config.organization.map(|o| o.chars().count()),
            Some(MAX_ORGANIZATION_CHARS)
        );
    }

    #[tokio::test]
    async fn hello_and_flush_want_the_acknowledgement() {
        let (mut client, phone) = phone(vec![acknowledged(), acknowledged()]);
        client.flush().await.expect("flush");
        client.hello_host_identifier().await.expect("hello");
        let seen = phone.await.expect("phone");
        assert_eq!(
            seen,
            vec![
                Request::Flush.to_plist(),
                Request::HelloHostIdentifier.to_plist()
            ]
        );
    }

    #[tokio::test]
    async fn another_status_is_a_refusal_with_the_error_chain() {
        let (mut client, _phone) = phone(vec![dict([
            ("Status", plist::Value::from("Error")),
            (
                "ErrorChain",
                plist::Value::Array(vec![dict([
                    ("ErrorCode", plist::Value::Integer(14002.into())),
                    (
                        "LocalizedDescription",
                        plist::Value::from("A cloud configuration is already present."),
                    ),
                ])]),
            ),
        ])]);
        let err = client.cloud_configuration().await.expect_err("refused");
        match err {
            McInstallError::Refused {
                request,
                status,
                error,
            } => {
                assert_eq!(request, "GetCloudConfiguration");
                assert_eq!(status.as_deref(), Some("Error"));
                assert_eq!(
                    error.as_deref(),
                    Some("14002: A cloud configuration is already present.")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_status_or_a_non_dictionary_is_refused() {
        let (mut client, _phone) = phone(vec![
            dict([("Other", plist::Value::from("x"))]),
            plist::Value::from("nonsense"),
            with_configuration(plist::Value::from("not a dict")),
        ]);
        assert!(matches!(
            client.flush().await,
            Err(McInstallError::Refused { status: None, .. })
        ));
        assert!(matches!(
            client.flush().await,
            Err(McInstallError::Malformed { .. })
        ));
        assert!(matches!(
            client.cloud_configuration().await,
            Err(McInstallError::Malformed { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_phone_times_out() {
        let (client_side, _phone_side) = tokio::io::duplex(1024);
        let mut client = McInstallClient::new(PlistChannel::new(client_side));
        let err = client.cloud_configuration().await.expect_err("timeout");
        assert!(
            matches!(err, McInstallError::Channel(ChannelError::Timeout(d)) if d == DEFAULT_REQUEST_TIMEOUT),
            "{err:?}"
        );
    }
}
