//! Each phone's lock and management state: Find My, passcode, supervision and its
//! organisation, MDM enrolment, and the Activation Lock as Apple's answer showed it.
//! What each fact means and when it says nothing: docs/report.md ("Lock and management").

use serde::{Deserialize, Serialize};
use station_protocol::mcinstall::{self, CloudConfiguration, McInstallClient};
use station_protocol::mobileactivation;

use crate::activation::{ActivationReport, Outcome};
use crate::phone::{Bench, Session};
use station_protocol::usbmux::DeviceInfo;

/// The lockdown domain and key third-party tools read to see Find My (docs/protocol.md §3.6).
pub const FMIP_DOMAIN: &str = "com.apple.fmip";
pub const FMIP_KEY: &str = "IsAssociated";
/// Global-domain key: whether a passcode is set (docs/protocol.md §3.4).
pub const PASSCODE_KEY: &str = "PasswordProtected";

/// What the phone itself says about its lock and management. `None` everywhere the phone
/// said nothing trustworthy: an unanswered read, or a value that is misleading in that
/// state (Find My on an unactivated phone), or no cloud configuration yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagementState {
    /// `com.apple.fmip IsAssociated` on an activated phone; `None` on an unactivated one,
    /// where it answers false even when the phone is Activation-Locked (docs/protocol.md §3.6).
    pub find_my: Option<bool>,
    /// `PasswordProtected`.
    pub passcode_set: Option<bool>,
    /// Cloud configuration `IsSupervised`.
    pub supervised: Option<bool>,
    /// Cloud configuration `OrganizationName`.
    pub organization: Option<String>,
    /// Whether the cloud configuration has a `ConfigurationURL` (an MDM to enrol with).
    pub mdm_enrolled: Option<bool>,
    /// Cloud configuration `IsMDMUnremovable`.
    pub mdm_unremovable: Option<bool>,
}

/// The cloud configuration's facts, as the `MCInstall` client reads them; `None` where
/// the phone has no configuration (an empty answer carries only `Status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudFacts {
    pub supervised: Option<bool>,
    pub organization: Option<String>,
    pub configuration_url_present: Option<bool>,
    pub mdm_unremovable: Option<bool>,
}

impl ManagementState {
    /// Builds the state from the raw lockdown answers. `is_associated` is only believed
    /// on an activated phone.
    pub fn from_lockdown(
        activation_state: Option<&str>,
        is_associated: Option<&plist::Value>,
        password_protected: Option<&plist::Value>,
    ) -> Self {
        let activated = activation_state.is_some_and(mobileactivation::is_activated);
        ManagementState {
            find_my: if activated {
                is_associated.and_then(plist::Value::as_boolean)
            } else {
                None
            },
            passcode_set: password_protected.and_then(plist::Value::as_boolean),
            ..ManagementState::default()
        }
    }

    /// Takes in the cloud configuration's facts.
    pub fn absorb_cloud(&mut self, cloud: CloudFacts) {
        self.supervised = cloud.supervised;
        self.organization = cloud.organization.filter(|o| !o.trim().is_empty());
        self.mdm_enrolled = cloud.configuration_url_present;
        self.mdm_unremovable = cloud.mdm_unremovable;
    }

    /// Short badges for the live row: `FMI`, `PASSCODE`, `SUPERVISED:<org>`.
    pub fn badges(&self) -> Vec<String> {
        let mut badges = Vec::new();
        if self.find_my == Some(true) {
            badges.push("FMI".to_string());
        }
        if self.passcode_set == Some(true) {
            badges.push("PASSCODE".to_string());
        }
        if self.supervised == Some(true) {
            badges.push(match &self.organization {
                Some(org) => format!("SUPERVISED:{org}"),
                None => "SUPERVISED".to_string(),
            });
        }
        badges
    }
}

/// Reads what the phone tells about Find My, its passcode (lockdown `GetValue`) and its
/// cloud configuration (`MCInstall`) through the session. What the phone does not answer is
/// `None`, never an error: these facts inform, they do not stop the line.
pub async fn read_management_state(
    bench: &Bench,
    device: &DeviceInfo,
    session: &mut Session,
    activation_state: Option<&str>,
) -> ManagementState {
    let mut state = read_lockdown_facts(session, activation_state).await;
    if let Some(cloud) = read_cloud_configuration(bench, device, session).await {
        state.absorb_cloud(cloud);
    }
    state
}

/// The cloud configuration from `com.apple.mobile.MCInstall` (`GetCloudConfiguration`,
/// docs/protocol.md §3.7); `None` when it could not be read. A phone without a configuration
/// answers with every fact `None`.
async fn read_cloud_configuration(
    bench: &Bench,
    device: &DeviceInfo,
    session: &mut Session,
) -> Option<CloudFacts> {
    let channel = match bench.service(device, session, mcinstall::SERVICE).await {
        Ok(channel) => channel,
        Err(e) => {
            tracing::debug!("{} not started: {e}", mcinstall::SERVICE);
            return None;
        }
    };
    let mut client = McInstallClient::new(channel);
    let answer = client.cloud_configuration().await;
    client.close().await;
    match answer {
        Ok(config) => Some(CloudFacts::from(config)),
        Err(e) => {
            tracing::debug!("GetCloudConfiguration not answered: {e}");
            None
        }
    }
}

impl From<CloudConfiguration> for CloudFacts {
    fn from(c: CloudConfiguration) -> Self {
        CloudFacts {
            supervised: c.supervised,
            organization: c.organization,
            configuration_url_present: c.mdm_enrolled,
            mdm_unremovable: c.mdm_unremovable,
        }
    }
}

async fn read_lockdown_facts(
    session: &mut Session,
    activation_state: Option<&str>,
) -> ManagementState {
    let is_associated = match session.get_value(Some(FMIP_DOMAIN), Some(FMIP_KEY)).await {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::debug!("{FMIP_DOMAIN} {FMIP_KEY} not answered: {e}");
            None
        }
    };
    let password_protected = match session.get_value(None, Some(PASSCODE_KEY)).await {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::debug!("{PASSCODE_KEY} not answered: {e}");
            None
        }
    };
    ManagementState::from_lockdown(
        activation_state,
        is_associated.as_ref(),
        password_protected.as_ref(),
    )
}

/// Who a locked phone is locked to, as far as the code sources tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockedTo {
    /// A code source knew the serial: an organisation's lock.
    Organisation,
    /// No code source knew it: a personal Apple Account.
    Personal,
    /// The attempt stopped before the sources answered.
    Unknown,
}

/// The Activation Lock as Apple's answer showed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ActivationLock {
    /// Apple sent a record without the lock form.
    None,
    /// Locked, and released by a code (masked) or a source's server-side action.
    Released {
        source: String,
        /// The masked code; `None` for a server-side release.
        code: Option<String>,
    },
    Locked {
        locked_to: LockedTo,
    },
}

impl ActivationLock {
    /// From an attempt's result; `None` when Apple was not asked (already activated,
    /// stopped earlier) and so said nothing.
    pub fn of(
        outcome: Outcome,
        activation_locked: bool,
        released: Option<(String, Option<String>)>,
    ) -> Option<Self> {
        if !activation_locked {
            return (outcome == Outcome::Activated).then_some(ActivationLock::None);
        }
        if outcome == Outcome::Activated {
            if let Some((source, code)) = released {
                return Some(ActivationLock::Released { source, code });
            }
        }
        let locked_to = match outcome {
            Outcome::LockedNoCode | Outcome::CodeRejected => LockedTo::Organisation,
            Outcome::UserLocked => LockedTo::Personal,
            _ => LockedTo::Unknown,
        };
        Some(ActivationLock::Locked { locked_to })
    }

    pub fn from_report(report: &ActivationReport) -> Option<Self> {
        let released = match (&report.released_by, &report.remote_release) {
            (Some(r), _) => Some((r.source.clone(), Some(r.code.clone()))),
            (None, Some(r)) => Some((r.source.clone(), None)),
            (None, None) => None,
        };
        Self::of(report.outcome, report.activation_locked, released)
    }

    /// One short cell: `none`, `released (source)`, `locked (organisation)`.
    pub fn describe(&self) -> String {
        match self {
            ActivationLock::None => "none".to_string(),
            ActivationLock::Released { source, .. } => format!("released ({source})"),
            ActivationLock::Locked { locked_to } => format!(
                "locked ({})",
                match locked_to {
                    LockedTo::Organisation => "organisation",
                    LockedTo::Personal => "personal",
                    LockedTo::Unknown => "unknown",
                }
            ),
        }
    }
}

/// `yes` / `no` / `—` for a table cell.
pub fn yes_no(value: Option<bool>) -> String {
    match value {
        Some(true) => "yes".to_string(),
        Some(false) => "no".to_string(),
        None => "—".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plist::Value;

    #[test]
    fn find_my_says_nothing_on_an_unactivated_phone() {
        let yes = Value::Boolean(true);
        let no = Value::Boolean(false);
        let state = ManagementState::from_lockdown(Some("Unactivated"), Some(&no), Some(&no));
        assert_eq!(
            state.find_my, None,
            "false at Setup Assistant is not 'no lock'"
        );
        assert_eq!(state.passcode_set, Some(false));
        let state = ManagementState::from_lockdown(Some("Activated"), Some(&yes), Some(&yes));
        assert_eq!(state.find_my, Some(true));
        assert_eq!(state.passcode_set, Some(true));
        let state = ManagementState::from_lockdown(Some("Activated"), Some(&no), None);
        assert_eq!(state.find_my, Some(false));
        assert_eq!(state.passcode_set, None);
        let state = ManagementState::from_lockdown(None, Some(&yes), None);
        assert_eq!(state.find_my, None, "unknown state: not believed");
        let text = Value::String("yes".into());
        let state = ManagementState::from_lockdown(Some("Activated"), Some(&text), Some(&text));
        assert_eq!(
            state,
            ManagementState::default(),
            "not a boolean: nothing said"
        );
    }

    #[test]
    fn cloud_facts_and_badges() {
        let mut state = ManagementState::from_lockdown(
            Some("Activated"),
            Some(&Value::Boolean(true)),
            Some(&Value::Boolean(true)),
        );
        assert_eq!(state.badges(), ["FMI", "PASSCODE"]);
        state.absorb_cloud(CloudFacts {
            supervised: Some(true),
            organization: Some("Acme Corp".into()),
            configuration_url_present: Some(true),
            mdm_unremovable: Some(false),
        });
        assert_eq!(state.badges(), ["FMI", "PASSCODE", "SUPERVISED:Acme Corp"]);
        assert_eq!(state.mdm_enrolled, Some(true));
        state.absorb_cloud(CloudFacts {
            supervised: Some(true),
            organization: Some(" ".into()),
            ..CloudFacts::default()
        });
        assert_eq!(state.organization, None);
        assert_eq!(state.badges(), ["FMI", "PASSCODE", "SUPERVISED"]);
        assert!(ManagementState::default().badges().is_empty());
    }

    #[test]
    fn the_protocol_clients_configuration_maps_field_for_field() {
        let none = CloudFacts::from(CloudConfiguration::default());
        assert_eq!(none, CloudFacts::default(), "no configuration says nothing");
        let facts = CloudFacts::from(CloudConfiguration {
            supervised: Some(true),
            organization: Some("Acme".into()),
            mdm_enrolled: Some(true),
            mdm_unremovable: Some(false),
        });
        let mut state = ManagementState::default();
        state.absorb_cloud(facts);
        assert_eq!(state.supervised, Some(true));
        assert_eq!(state.organization.as_deref(), Some("Acme"));
        assert_eq!(state.mdm_enrolled, Some(true));
        assert_eq!(state.mdm_unremovable, Some(false));
    }

    #[test]
    fn json_names_are_the_documented_ones() {
        let json = serde_json::to_value(ManagementState::default()).expect("json");
        for key in [
            "find_my",
            "passcode_set",
            "supervised",
            "organization",
            "mdm_enrolled",
            "mdm_unremovable",
        ] {
            assert!(json[key].is_null(), "{key}: {json}");
        }
        let lock = ActivationLock::Released {
            source: "kandji".into(),
            code: Some("ABCDE-…-WXYZ".into()),
        };
        assert_eq!(
            serde_json::to_value(&lock).expect("json"),
            serde_json::json!({"state": "released", "source": "kandji", "code": "ABCDE-…-WXYZ"})
        );
        assert_eq!(
            serde_json::to_value(ActivationLock::Locked {
                locked_to: LockedTo::Personal
            })
            .expect("json"),
            serde_json::json!({"state": "locked", "locked_to": "personal"})
        );
    }

    #[test]
    fn activation_lock_from_the_outcome() {
        use ActivationLock as L;
        assert_eq!(L::of(Outcome::Activated, false, None), Some(L::None));
        assert_eq!(L::of(Outcome::AlreadyActivated, false, None), None);
        assert_eq!(L::of(Outcome::DeviceError, false, None), None);
        assert_eq!(
            L::of(
                Outcome::Activated,
                true,
                Some(("csv".into(), Some("ABCDE-…-WXYZ".into())))
            ),
            Some(L::Released {
                source: "csv".into(),
                code: Some("ABCDE-…-WXYZ".into())
            })
        );
        let locked = |to| Some(L::Locked { locked_to: to });
        assert_eq!(
            L::of(Outcome::LockedNoCode, true, None),
            locked(LockedTo::Organisation)
        );
        assert_eq!(
            L::of(Outcome::CodeRejected, true, None),
            locked(LockedTo::Organisation)
        );
        assert_eq!(
            L::of(Outcome::UserLocked, true, None),
            locked(LockedTo::Personal)
        );
        assert_eq!(
            L::of(Outcome::ServerError, true, None),
            locked(LockedTo::Unknown)
        );
        assert_eq!(L::None.describe(), "none");
        assert_eq!(
            locked(LockedTo::Personal).map(|l| l.describe()).as_deref(),
            Some("locked (personal)")
        );
    }
}
