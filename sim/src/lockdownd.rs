//! A virtual phone's lockdownd (device port 62078), answering as a real phone does.
//!
//! Framing is `PlistChannel` (4-byte big-endian length + plist; XML or binary accepted,
//! XML sent). Every reply echoes `Request`; failures are `{Request, Error}` with the exact
//! lockdown error strings. `StartSession` turns the same connection into TLS, in which the
//! phone presents the DeviceCertificate of the pair record with its own key;
//! `StopSession` turns it back into plaintext.
//!
//! Behaviour where real phones are not fully documented (see docs/world.md, "Lockdown
//! behaviour"): without a session, `GetValue` of a key that exists but needs a session
//! answers `GetProhibited`, of a key that does not exist `MissingValue`, of any domain
//! `GetProhibited`; session-only requests answer `SessionInactive`.

use std::sync::Arc;
use std::time::Duration;

use crate::stream::PhoneStream;
use plist::{Dictionary, Value};
use rand::RngCore;
use station_protocol::channel::{ChannelError, PlistChannel};
use station_protocol::lockdown::{LockdownErrorKind, LOCKDOWN_TYPE};
use station_protocol::pairing::{verify_pair_request, PairingError};
use tokio::sync::watch;
use tracing::Instrument;

use crate::activation::device::check_record_value;
use crate::activation::Authority;
use crate::phone::tls::ServerTls;
use crate::phone::values::{
    self, PUBLIC_KEYS, PUBLIC_SINGLE_KEYS, WRITABLE_DOMAINS, WRITABLE_GLOBAL_KEYS,
};
use crate::phone::{Pairing, Phone, TrustDecision};
use crate::services::{PendingService, ServiceRegistry};
use crate::world::ActivationState;

/// Size of the EscrowBag a phone returns from `Pair` (real ones are keybag blobs).
const ESCROW_BAG_LEN: usize = 160;

/// What every lockdown connection of a bench shares.
#[derive(Debug, Clone)]
pub(crate) struct LockdownContext {
    /// A connection without a request for this long is closed (real phones: ~10 s).
    pub idle_timeout: Duration,
    pub services: ServiceRegistry,
    /// Checks activation records handed to the legacy `Activate`.
    pub authority: Arc<Authority>,
}

struct Session {
    id: String,
    tls: ServerTls,
}

enum Flow {
    Continue,
    Close,
}

struct Connection {
    phone: Arc<Phone>,
    channel: PlistChannel<PhoneStream>,
    session: Option<Session>,
    ctx: Arc<LockdownContext>,
}

/// Resolves when the phone is unplugged (or the bench drops the attachment).
pub(crate) async fn unplugged(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|gone| *gone).await;
}

/// Serves one lockdown connection until the client leaves, goes idle, says Goodbye, or the
/// phone is unplugged.
pub(crate) async fn serve(
    phone: Arc<Phone>,
    stream: PhoneStream,
    ctx: Arc<LockdownContext>,
    unplug: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("lockdownd", udid = %phone.udid());
    async move {
        let mut channel = PlistChannel::new(stream);
        // Bounds every read (the idle timer), write and TLS handshake.
        channel.set_timeout(Some(ctx.idle_timeout));
        let mut conn = Connection {
            phone,
            channel,
            session: None,
            ctx,
        };
        let gone = unplugged(unplug);
        tokio::pin!(gone);
        loop {
            let step = async {
                let request = conn.channel.recv().await?;
                conn.handle(request).await
            };
            tokio::select! {
                result = step => match result {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Close) => break,
                    Err(ChannelError::Closed) => {
                        tracing::debug!("client closed the connection");
                        break;
                    }
                    Err(ChannelError::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        // Clients often close right after StopSession, before our
                        // close_notify is out.
                        tracing::debug!("client closed the connection");
                        break;
                    }
                    Err(ChannelError::Timeout(after)) => {
                        tracing::debug!(?after, "idle connection closed");
                        conn.phone.note_idle_close();
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "connection failed");
                        break;
                    }
                },
                _ = &mut gone => {
                    tracing::debug!("unplugged: connection dropped");
                    break;
                }
            }
        }
    }
    .instrument(span)
    .await
}

fn reply(request: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("Request".into(), Value::String(request.to_string()));
    d
}

fn error_reply(request: &str, kind: LockdownErrorKind) -> Dictionary {
    let mut d = reply(request);
    d.insert("Error".into(), Value::String(kind.as_str().to_string()));
    d
}

fn get_str<'a>(d: &'a Dictionary, key: &str) -> Option<&'a str> {
    d.get(key).and_then(Value::as_string)
}

/// `Domain`/`Key` as sent: absent and empty both mean "global" / "whole domain".
fn non_empty<'a>(d: &'a Dictionary, key: &str) -> Option<&'a str> {
    get_str(d, key).filter(|s| !s.is_empty())
}

impl Connection {
    async fn send(&mut self, d: Dictionary) -> Result<(), ChannelError> {
        self.channel.send(&Value::Dictionary(d)).await
    }

    async fn handle(&mut self, request: Value) -> Result<Flow, ChannelError> {
        let Some(d) = request.into_dictionary() else {
            tracing::debug!("request is not a dictionary");
            let mut err = Dictionary::new();
            err.insert("Error".into(), "InvalidRequest".into());
            self.send(err).await?;
            return Ok(Flow::Continue);
        };
        let name = get_str(&d, "Request").unwrap_or_default().to_string();
        tracing::debug!(request = %name, label = get_str(&d, "Label").unwrap_or(""), "request");
        if let Some(hostile) = self.phone.profile().hostile.clone() {
            if hostile.applies_to(&name) {
                crate::hostile::misbehave(&mut self.channel, hostile.how, &name).await;
                return Ok(Flow::Close);
            }
        }
        let answer = match name.as_str() {
            "QueryType" => {
                let mut r = reply(&name);
                r.insert("Type".into(), LOCKDOWN_TYPE.into());
                r
            }
            "GetValue" => self.get_value(&name, &d).await,
            "SetValue" => self.set_value(&name, &d).await,
            "RemoveValue" => self.remove_value(&name, &d),
            "Pair" => self.pair(&name, &d).await,
            "ValidatePair" => self.validate_pair(&name, &d).await,
            "Unpair" => self.unpair(&name, &d).await,
            "StartSession" => return self.start_session(&name, &d).await,
            "StopSession" => return self.stop_session(&name, &d).await,
            "StartService" => self.start_service(&name, &d),
            "Goodbye" => {
                self.send(reply(&name)).await?;
                return Ok(Flow::Close);
            }
            // State changes need a session.
            "EnterRecovery" | "Activate" | "Deactivate" if self.session.is_none() => {
                error_reply(&name, LockdownErrorKind::SessionInactive)
            }
            "Activate" => self.activate(&name, &d).await,
            "Deactivate" => {
                self.phone
                    .record_activation(ActivationState::Unactivated, false)
                    .await;
                reply(&name)
            }
            _ => error_reply(&name, LockdownErrorKind::Other("InvalidRequest".into())),
        };
        if let Some(e) = get_str(&answer, "Error") {
            tracing::debug!(request = %name, error = e, "refused");
        }
        self.send(answer).await?;
        Ok(Flow::Continue)
    }

    async fn get_value(&mut self, name: &str, d: &Dictionary) -> Dictionary {
        let domain = non_empty(d, "Domain");
        let key = non_empty(d, "Key");
        let result = self.value_for(domain, key).await;
        let mut r = reply(name);
        if let Some(domain) = domain {
            r.insert("Domain".into(), domain.into());
        }
        if let Some(key) = key {
            r.insert("Key".into(), key.into());
        }
        match result {
            Ok(v) => {
                r.insert("Value".into(), v);
            }
            Err(kind) => {
                r.insert("Error".into(), kind.as_str().into());
            }
        }
        r
    }

    async fn public_key(&self) -> Option<String> {
        match self.phone.keys().await {
            Ok(keys) => Some(keys.public_key_pem.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "no device key");
                None
            }
        }
    }

    async fn value_for(
        &self,
        domain: Option<&str>,
        key: Option<&str>,
    ) -> Result<Value, LockdownErrorKind> {
        let in_session = self.session.is_some();
        match (domain, key) {
            (None, None) if in_session => {
                let pk = self.public_key().await;
                Ok(Value::Dictionary(values::global_domain(
                    &self.phone,
                    pk.as_deref(),
                )))
            }
            (None, None) => Ok(Value::Dictionary(values::public_global_domain(&self.phone))),
            (None, Some(key)) => {
                let allowed =
                    in_session || PUBLIC_KEYS.contains(&key) || PUBLIC_SINGLE_KEYS.contains(&key);
                let pk = if key == "DevicePublicKey" && allowed {
                    self.public_key().await
                } else {
                    None
                };
                let all = values::global_domain(&self.phone, pk.as_deref());
                match all.get(key) {
                    Some(v) if allowed => Ok(v.clone()),
                    Some(_) => Err(LockdownErrorKind::GetProhibited),
                    None => Err(LockdownErrorKind::MissingValue),
                }
            }
            (Some(_), _) if !in_session => Err(LockdownErrorKind::GetProhibited),
            (Some(domain), None) => values::domain(&self.phone, domain)
                .map(Value::Dictionary)
                .ok_or(LockdownErrorKind::MissingValue),
            (Some(domain), Some(key)) => values::domain(&self.phone, domain)
                .and_then(|d| d.get(key).cloned())
                .ok_or(LockdownErrorKind::MissingValue),
        }
    }

    fn writable(domain: Option<&str>, key: &str) -> bool {
        match domain {
            None => WRITABLE_GLOBAL_KEYS.contains(&key),
            Some(d) => WRITABLE_DOMAINS.contains(&d),
        }
    }

    /// The legacy path (docs/protocol.md §5.3 C): `Activate {ActivationRecord}` with a record
    /// the activation server issued for this phone's current request.
    async fn activate(&mut self, name: &str, d: &Dictionary) -> Dictionary {
        let Some(record) = d.get("ActivationRecord") else {
            return error_reply(name, LockdownErrorKind::MissingActivationRecord);
        };
        match check_record_value(&self.phone, &self.ctx.authority, record) {
            Ok(()) => {
                self.phone
                    .record_activation(ActivationState::Activated, false)
                    .await;
                reply(name)
            }
            Err(e) => {
                tracing::info!(reason = %e, "activation record refused");
                error_reply(name, LockdownErrorKind::InvalidActivationRecord)
            }
        }
    }

    async fn set_value(&mut self, name: &str, d: &Dictionary) -> Dictionary {
        let domain = non_empty(d, "Domain");
        let key = non_empty(d, "Key");
        // usbmuxd's preflight sets this before any pairing exists.
        let preflight = domain.is_none() && key == Some("UntrustedHostBUID");
        if self.session.is_none() && !preflight {
            return error_reply(name, LockdownErrorKind::SessionInactive);
        }
        let Some(key) = key else {
            return error_reply(name, LockdownErrorKind::MissingKey);
        };
        let Some(value) = d.get("Value") else {
            return error_reply(name, LockdownErrorKind::MissingValue);
        };
        if !Self::writable(domain, key) {
            return error_reply(name, LockdownErrorKind::SetProhibited);
        }
        match (domain, key, value) {
            // Part of the activation state: kept by the phone and persisted with it.
            (None, "ActivationStateAcknowledged", Value::Boolean(b)) => {
                self.phone.set_acknowledged(*b).await;
            }
            _ => self
                .phone
                .set_override(domain.unwrap_or(""), key, Some(value.clone())),
        }
        let mut r = reply(name);
        if let Some(domain) = domain {
            r.insert("Domain".into(), domain.into());
        }
        r.insert("Key".into(), key.into());
        r
    }

    fn remove_value(&mut self, name: &str, d: &Dictionary) -> Dictionary {
        if self.session.is_none() {
            return error_reply(name, LockdownErrorKind::SessionInactive);
        }
        let domain = non_empty(d, "Domain");
        let Some(key) = non_empty(d, "Key") else {
            return error_reply(name, LockdownErrorKind::MissingKey);
        };
        if !Self::writable(domain, key) {
            return error_reply(name, LockdownErrorKind::RemoveProhibited);
        }
        self.phone.set_override(domain.unwrap_or(""), key, None);
        let mut r = reply(name);
        if let Some(domain) = domain {
            r.insert("Domain".into(), domain.into());
        }
        r.insert("Key".into(), key.into());
        r
    }

    /// Checks the PairRecord of a Pair/ValidatePair request against this phone's key.
    async fn verified_record(
        &self,
        d: &Dictionary,
    ) -> Result<station_protocol::pairing::PairRequestCerts, LockdownErrorKind> {
        let record = d
            .get("PairRecord")
            .and_then(Value::as_dictionary)
            .ok_or(LockdownErrorKind::MissingPairRecord)?;
        if get_str(record, "HostID").is_none() {
            return Err(LockdownErrorKind::MissingHostID);
        }
        let keys = self.phone.keys().await.map_err(|e| {
            tracing::warn!(error = %e, "no device key");
            LockdownErrorKind::InvalidPairRecord
        })?;
        verify_pair_request(record, keys.public_key_pem.as_bytes()).map_err(|e| {
            tracing::info!(error = %e, "pair record rejected");
            match e {
                PairingError::MissingKey { key: "HostID" } => LockdownErrorKind::MissingHostID,
                _ => LockdownErrorKind::InvalidPairRecord,
            }
        })
    }

    async fn pair(&mut self, name: &str, d: &Dictionary) -> Dictionary {
        let certs = match self.verified_record(d).await {
            Ok(c) => c,
            Err(kind) => return error_reply(name, kind),
        };
        match self.phone.trust_decision(&certs.system_buid) {
            TrustDecision::Trusted => {}
            TrustDecision::Pending => {
                return error_reply(name, LockdownErrorKind::PairingDialogResponsePending)
            }
            TrustDecision::Denied => {
                return error_reply(name, LockdownErrorKind::UserDeniedPairing)
            }
            TrustDecision::PasswordProtected => {
                return error_reply(name, LockdownErrorKind::PasswordProtected)
            }
        }
        let mut escrow_bag = vec![0u8; ESCROW_BAG_LEN];
        rand::rng().fill_bytes(&mut escrow_bag);
        let host_id = certs.host_id.clone();
        self.phone
            .add_pairing(Pairing::from_request(certs, escrow_bag.clone()))
            .await;
        tracing::info!(host_id = %host_id, "paired");
        let mut r = reply(name);
        if self.phone.profile().pair_escrow_bag {
            r.insert("EscrowBag".into(), Value::Data(escrow_bag));
        }
        r
    }

    /// Pre-iOS-7 hosts call this to become trusted; the phone checks it knows the HostID
    /// with exactly these certificates.
    async fn validate_pair(&mut self, name: &str, d: &Dictionary) -> Dictionary {
        let certs = match self.verified_record(d).await {
            Ok(c) => c,
            Err(LockdownErrorKind::MissingPairRecord) => {
                return error_reply(name, LockdownErrorKind::MissingPairRecord)
            }
            Err(_) => return error_reply(name, LockdownErrorKind::InvalidHostID),
        };
        match self.phone.pairing(&certs.host_id) {
            Some(p)
                if p.host_certificate_der == certs.host_certificate_der
                    && p.root_certificate_der == certs.root_certificate_der
                    && p.device_certificate_der == certs.device_certificate_der =>
            {
                reply(name)
            }
            _ => error_reply(name, LockdownErrorKind::InvalidHostID),
        }
    }

    async fn unpair(&mut self, name: &str, d: &Dictionary) -> Dictionary {
        // pymobiledevice3 may send only {HostID}; libimobiledevice the whole record.
        let Some(host_id) = d
            .get("PairRecord")
            .and_then(Value::as_dictionary)
            .and_then(|r| get_str(r, "HostID"))
        else {
            return error_reply(name, LockdownErrorKind::MissingHostID);
        };
        if self.phone.remove_pairing(host_id).await {
            tracing::info!(%host_id, "unpaired");
            reply(name)
        } else {
            error_reply(name, LockdownErrorKind::InvalidHostID)
        }
    }

    async fn start_session(&mut self, name: &str, d: &Dictionary) -> Result<Flow, ChannelError> {
        if self.session.is_some() {
            self.send(error_reply(name, LockdownErrorKind::SessionActive))
                .await?;
            return Ok(Flow::Continue);
        }
        let Some(host_id) = get_str(d, "HostID").map(str::to_string) else {
            self.send(error_reply(name, LockdownErrorKind::MissingHostID))
                .await?;
            return Ok(Flow::Continue);
        };
        let Some(pairing) = self.phone.pairing(&host_id) else {
            tracing::info!(host_id = %host_id, "StartSession from an unknown host");
            self.send(error_reply(name, LockdownErrorKind::InvalidHostID))
                .await?;
            return Ok(Flow::Continue);
        };
        let tls = match self.session_tls(&pairing).await {
            Some(tls) => tls,
            None => {
                self.send(error_reply(name, LockdownErrorKind::InvalidHostID))
                    .await?;
                return Ok(Flow::Continue);
            }
        };
        let session_id = uuid::Uuid::new_v4().to_string().to_uppercase();
        let mut r = reply(name);
        r.insert("SessionID".into(), session_id.clone().into());
        r.insert("EnableSessionSSL".into(), Value::Boolean(true));
        self.send(r).await?;
        let started = match tls.engine() {
            Ok(engine) => self.channel.start_tls(engine).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            // A wrong client certificate or a client that gave up: the phone drops it.
            tracing::info!(error = %e, "session TLS handshake failed");
            return Ok(Flow::Close);
        }
        let negotiated = self.channel.negotiated_tls();
        tracing::debug!(
            session = %session_id,
            host_id = %host_id,
            tls = ?negotiated.as_ref().map(|t| t.version),
            suite = negotiated.as_ref().map_or("", |t| t.cipher_suite_name.as_str()),
            "session started"
        );
        self.phone.note_session_started();
        self.session = Some(Session {
            id: session_id,
            tls,
        });
        Ok(Flow::Continue)
    }

    /// TLS as the phone: its DeviceCertificate from the pairing, its own key, the TLS of its
    /// iOS version; the host may present the host or the root certificate of that pairing.
    async fn session_tls(&self, pairing: &Pairing) -> Option<ServerTls> {
        if let Some(config) = self
            .phone
            .cached_tls(&pairing.host_id, &pairing.device_certificate_der)
        {
            return Some(config);
        }
        let keys = match self.phone.keys().await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "no device key");
                return None;
            }
        };
        let accepted = vec![
            pairing.host_certificate_der.clone(),
            pairing.root_certificate_der.clone(),
        ];
        match ServerTls::build(
            self.phone.tls_generation(),
            &pairing.device_certificate_der,
            keys.private_key_pem.as_bytes(),
            accepted,
        ) {
            Ok(config) => {
                self.phone.cache_tls(
                    &pairing.host_id,
                    &pairing.device_certificate_der,
                    config.clone(),
                );
                Some(config)
            }
            Err(e) => {
                // E.g. a pairing remembered from a run whose key was not cached.
                tracing::warn!(error = %e, "cannot build session TLS from this pairing");
                None
            }
        }
    }

    async fn stop_session(&mut self, name: &str, d: &Dictionary) -> Result<Flow, ChannelError> {
        let Some(session) = &self.session else {
            self.send(error_reply(name, LockdownErrorKind::SessionInactive))
                .await?;
            return Ok(Flow::Continue);
        };
        match get_str(d, "SessionID") {
            None => {
                self.send(error_reply(name, LockdownErrorKind::MissingSessionID))
                    .await?;
                return Ok(Flow::Continue);
            }
            Some(id) if id != session.id => {
                self.send(error_reply(name, LockdownErrorKind::InvalidSessionID))
                    .await?;
                return Ok(Flow::Continue);
            }
            Some(_) => {}
        }
        let mut r = reply(name);
        // pymobiledevice3 checks for this on StopSession.
        r.insert("Result".into(), "Success".into());
        self.send(r).await?;
        self.channel.stop_tls().await?;
        self.session = None;
        tracing::debug!("session stopped");
        Ok(Flow::Continue)
    }

    fn start_service(&mut self, name: &str, d: &Dictionary) -> Dictionary {
        let Some(service_name) = non_empty(d, "Service") else {
            return error_reply(name, LockdownErrorKind::MissingService);
        };
        let Some(service) = self.ctx.services.get(service_name) else {
            return error_reply(name, LockdownErrorKind::InvalidService);
        };
        if service.requires_session() && self.session.is_none() {
            return error_reply(name, LockdownErrorKind::SessionInactive);
        }
        if let Err(kind) = service.check_start(&self.phone) {
            return error_reply(name, kind);
        }
        let tls = if service.enable_ssl() {
            match &self.session {
                Some(s) => Some(s.tls.clone()),
                // An SSL service started without a session has no credentials to use.
                None => return error_reply(name, LockdownErrorKind::SessionInactive),
            }
        } else {
            None
        };
        let ssl = tls.is_some();
        let port = self
            .phone
            .open_service_port(PendingService::new(service, tls));
        tracing::debug!(service = service_name, port, "service started");
        let mut r = reply(name);
        r.insert("Service".into(), service_name.into());
        r.insert("Port".into(), Value::Integer(u64::from(port).into()));
        r.insert("EnableServiceSSL".into(), Value::Boolean(ssl));
        r
    }
}
