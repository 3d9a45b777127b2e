//! The phone's `com.apple.mobile.MCInstall`: the managed-configuration service, as far as
//! hosts read a phone's cloud configuration (docs/protocol.md §3.7).
//!
//! As on a real phone the connection is TLS (lockdown answers `EnableServiceSSL`), carries
//! any number of requests, and every answer has `Status`. `HelloHostIdentifier` and `Flush`
//! answer `Acknowledged` alone; `GetCloudConfiguration` adds `CloudConfiguration` only when
//! the phone has one. Requests the bench does not model are refused with a status.

use std::time::Duration;

use plist::{Dictionary, Value};
use station_protocol::mcinstall::{
    Request, SERVICE, STATUS_ACKNOWLEDGED, STATUS_COMMAND_FORMAT_ERROR,
};

use crate::phone::Phone;
use crate::services::{BoxFuture, LockdownService, ServiceConnection};
use crate::world::{ActivationState, CloudConfig};

/// `com.apple.mobile.MCInstall` on every phone of a bench.
pub(crate) struct McInstall {
    /// A connection idle for this long is dropped.
    timeout: Duration,
}

impl McInstall {
    pub fn new(timeout: Duration) -> Self {
        McInstall { timeout }
    }
}

impl LockdownService for McInstall {
    fn name(&self) -> &str {
        SERVICE
    }

    fn serve(&self, mut conn: ServiceConnection) -> BoxFuture<()> {
        let timeout = self.timeout;
        Box::pin(async move {
            conn.channel.set_timeout(Some(timeout));
            loop {
                let request = match conn.channel.recv().await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(error = %e, "MCInstall connection ends");
                        return;
                    }
                };
                let reply = answer(&conn.phone, &request);
                if let Err(e) = conn.channel.send(&Value::Dictionary(reply)).await {
                    tracing::debug!(error = %e, "reply not delivered");
                    return;
                }
            }
        })
    }
}

fn status(text: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("Status".into(), Value::String(text.into()));
    d
}

/// The answer to one request.
pub(crate) fn answer(phone: &Phone, request: &Value) -> Dictionary {
    let request_type = request
        .as_dictionary()
        .and_then(|d| d.get("RequestType"))
        .and_then(Value::as_string);
    let Some(request_type) = request_type else {
        return status(STATUS_COMMAND_FORMAT_ERROR);
    };
    match Request::parse(request_type) {
        Some(Request::HelloHostIdentifier | Request::Flush) => status(STATUS_ACKNOWLEDGED),
        Some(Request::GetCloudConfiguration) => {
            let mut reply = status(STATUS_ACKNOWLEDGED);
            if let Some(config) = current_configuration(phone) {
                reply.insert(
                    "CloudConfiguration".into(),
                    Value::Dictionary(configuration_plist(config)),
                );
            }
            reply
        }
        None => {
            tracing::debug!(request = request_type, "MCInstall request not modelled");
            status(STATUS_COMMAND_FORMAT_ERROR)
        }
    }
}

/// The configuration the phone holds now: an erased (deactivated) phone has none.
fn current_configuration(phone: &Phone) -> Option<&CloudConfig> {
    if phone.activation_state() == ActivationState::Unactivated {
        return None;
    }
    phone.profile().cloud_configuration.as_ref()
}

/// The dictionary a phone stores once Setup Assistant applied a configuration: the flags it
/// was given plus the ones the phone sets itself (docs/protocol.md §3.7).
fn configuration_plist(config: &CloudConfig) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("AllowPairing".into(), Value::Boolean(true));
    d.insert("CloudConfigurationUIComplete".into(), Value::Boolean(true));
    if let Some(url) = &config.configuration_url {
        d.insert("ConfigurationURL".into(), Value::String(url.clone()));
    }
    d.insert("ConfigurationWasApplied".into(), Value::Boolean(true));
    d.insert(
        "IsMDMUnremovable".into(),
        Value::Boolean(config.mdm_unremovable),
    );
    d.insert(
        "IsMandatory".into(),
        Value::Boolean(config.configuration_url.is_some()),
    );
    d.insert("IsSupervised".into(), Value::Boolean(config.supervised));
    if let Some(org) = &config.organization {
        d.insert("OrganizationName".into(), Value::String(org.clone()));
    }
    d.insert("SkipSetup".into(), Value::Array(Vec::new()));
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;
    use crate::world::{World, DEFAULT_ORGANIZATION};
    use station_protocol::mcinstall::CloudConfiguration;

    fn phones(world: &str) -> (Vec<Phone>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::new(dir.path());
        state.create().expect("state dir");
        let phones = World::from_toml(world, "test")
            .expect("world")
            .resolve()
            .expect("resolve")
            .into_iter()
            .map(|p| Phone::new(p, &state, false).expect("phone"))
            .collect();
        (phones, dir)
    }

    fn read(phone: &Phone) -> CloudConfiguration {
        let reply = answer(phone, &Request::GetCloudConfiguration.to_plist());
        CloudConfiguration::from_reply(&reply).expect("typed")
    }

    #[test]
    fn each_request_is_acknowledged_and_only_a_configuration_adds_a_key() {
        let (p, _dir) = phones(
            "[[device]]\nactivation_state = \"Activated\"\n[[device]]\nactivation_state = \"Unactivated\"\n",
        );
        for phone in &p {
            for r in [
                Request::HelloHostIdentifier,
                Request::Flush,
                Request::GetCloudConfiguration,
            ] {
                let reply = answer(phone, &r.to_plist());
                assert_eq!(reply, status(STATUS_ACKNOWLEDGED), "{r:?}");
            }
            assert_eq!(read(phone), CloudConfiguration::default());
        }
    }

    #[test]
    fn a_supervised_phone_answers_its_configuration() {
        let (p, _dir) = phones(
            "[[device]]\nactivation_state = \"Activated\"\nsupervised = true\norganization = \"Acme\"\nconfiguration_url = \"https://mdm.acme.test/e\"\nmdm_unremovable = true\n",
        );
        let reply = answer(&p[0], &Request::GetCloudConfiguration.to_plist());
        assert_eq!(
            reply.get("Status").and_then(Value::as_string),
            Some(STATUS_ACKNOWLEDGED)
        );
        let config = reply
            .get("CloudConfiguration")
            .and_then(Value::as_dictionary)
            .expect("configuration");
        assert_eq!(config.get("IsSupervised"), Some(&Value::Boolean(true)));
        assert_eq!(
            config.get("OrganizationName").and_then(Value::as_string),
            Some("Acme")
        );
        assert_eq!(
            read(&p[0]),
            CloudConfiguration {
                supervised: Some(true),
                organization: Some("Acme".into()),
                mdm_enrolled: Some(true),
                mdm_unremovable: Some(true),
            }
        );
    }

    #[test]
    fn malformed_and_unknown_requests_are_refused() {
        let (p, _dir) = phones("[[device]]\n");
        assert_eq!(
            answer(&p[0], &Value::from("x")),
            status(STATUS_COMMAND_FORMAT_ERROR)
        );
        let erase = station_protocol::frame::dict([("RequestType", Value::from("EraseDevice"))]);
        assert_eq!(answer(&p[0], &erase), status(STATUS_COMMAND_FORMAT_ERROR));
    }

    #[test]
    fn the_default_world_has_a_supervised_phone() {
        let world = crate::world::default_world(5, 3).to_toml();
        let (p, _dir) = phones(&world);
        let config = read(&p[1]);
        assert_eq!(config.supervised, Some(true));
        assert_eq!(config.organization.as_deref(), Some(DEFAULT_ORGANIZATION));
        assert_eq!(read(&p[4]), CloudConfiguration::default());
    }
}
