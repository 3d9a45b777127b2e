//! One virtual iPhone: its identity, its lockdown key, the hosts it trusts, the state of
//! its trust dialog, and the values lockdown reports.
//!
//! Everything that changes sits behind a `std::sync::Mutex` that is never held across an
//! await; the pairings a phone remembers and an activation state changed on the bench are
//! written to the state directory so a bench restart keeps them, as a phone keeps them
//! across reboots.

pub mod tls;
pub(crate) mod values;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use station_protocol::pairing::{DeviceKeyPair, PairRequestCerts};
use tokio::sync::OnceCell;

use crate::error::SimError;
use crate::hub::PlugState;
use crate::state::StateDir;
use crate::world::{ActivationState, DeviceProfile, Lock, Trust};
use station_protocol::atomic_file;

/// A pairing the phone accepted: what `StartSession` and the TLS handshake check against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    pub host_id: String,
    pub system_buid: String,
    pub host_certificate_der: Vec<u8>,
    pub root_certificate_der: Vec<u8>,
    pub device_certificate_der: Vec<u8>,
    pub escrow_bag: Vec<u8>,
}

impl Pairing {
    pub fn from_request(certs: PairRequestCerts, escrow_bag: Vec<u8>) -> Self {
        Pairing {
            host_id: certs.host_id,
            system_buid: certs.system_buid,
            host_certificate_der: certs.host_certificate_der,
            root_certificate_der: certs.root_certificate_der,
            device_certificate_der: certs.device_certificate_der,
            escrow_bag,
        }
    }
}

/// What the phone answers to `Pair` right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustDecision {
    Trusted,
    Pending,
    Denied,
    PasswordProtected,
}

/// The "Trust this computer?" dialog while it is on screen.
#[derive(Debug, Clone)]
struct TrustDialog {
    system_buid: String,
    shown_at: Instant,
}

/// mobileactivationd's tunnel session: what the current handshake and activation request
/// were, so only answers to them are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActivationSession {
    /// The `HandshakeRequestMessage` of the latest `CreateTunnel1SessionInfoRequest`.
    pub handshake_request: Vec<u8>,
    /// The `ActivationRandomness` of the latest activation info built in this session.
    pub randomness: Option<String>,
    pub started: Instant,
}

#[derive(Debug)]
struct PhoneState {
    activation_state: ActivationState,
    /// `ActivationStateAcknowledged`: set by the host after it handed over a record.
    acknowledged: bool,
    /// The activation state was changed on the bench (activation, deactivation,
    /// acknowledgement): persisted, and it wins over the world file after a restart.
    activation_changed: bool,
    activation_session: Option<ActivationSession>,
    passcode_locked: bool,
    trust: Trust,
    trust_delay: Duration,
    dialog: Option<TrustDialog>,
    pairings: BTreeMap<String, Pairing>,
    /// Values written with SetValue, by (domain, key); `None` marks a removed value.
    overrides: BTreeMap<(String, String), Option<plist::Value>>,
    /// Service ports opened by StartService, waiting for their usbmuxd Connect.
    open_ports: HashMap<u16, crate::services::PendingService>,
    next_port: u16,
    /// When the organisation's MDM had Apple drop the `mdm` lock (Intune's
    /// bypassActivationLock); Apple's server answers a record from then on. Not persisted.
    lock_released_at: Option<Instant>,
}

/// First dynamic port handed out by StartService (real phones use the 49152+ range too).
const FIRST_SERVICE_PORT: u16 = 49152;

/// A session TLS configuration and the device certificate it was built for.
type CachedTls = (Vec<u8>, tls::ServerTls);

pub struct Phone {
    profile: DeviceProfile,
    keys: OnceCell<Arc<DeviceKeyPair>>,
    key_path: Option<PathBuf>,
    pairings_path: PathBuf,
    state: Mutex<PhoneState>,
    /// Serialises snapshot+write of the pairings file so writes land in order.
    persist: tokio::sync::Mutex<()>,
    /// Session TLS configurations by HostID (with the device certificate they were built
    /// for): parsing the phone's key for every session costs more than the handshake.
    tls_configs: Mutex<HashMap<String, CachedTls>>,
    /// Counters of what lockdownd saw (tests read them; nothing on the wire depends on them).
    sessions_started: AtomicU64,
    idle_closed: AtomicU64,
    /// How the host uses it (`leave_when_idle_ms`, crate::plugs).
    connections: tokio::sync::watch::Sender<ConnectionUse>,
    /// Whether it is plugged in: the hub's answer, read (the hub owns it), set once the
    /// hub takes the phone.
    plug_state: std::sync::OnceLock<tokio::sync::watch::Receiver<PlugState>>,
}

/// Whether a phone is plugged in and how the host uses it: what `leave_when_idle_ms`
/// decides on (crate::plugs). The sim cannot see the station's screen; its connections to
/// the phone are what it can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostUse {
    /// Plugged in now, as the hub says (crate::hub keeps that list; this only reads it).
    pub attached: bool,
    /// The host's connections, which the phone counts itself.
    pub connections: ConnectionUse,
}

/// The host's connections to a phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionUse {
    /// Host connections open now (lockdown and started services).
    pub open: u32,
    /// The host has opened a connection to the phone at least once since the bench started.
    pub talked_to: bool,
    /// Counts every change of `open` and `talked_to`, so "idle since" restarts at each one
    /// (a plug-in restarts it too: crate::plugs watches the hub for those).
    pub changes: u64,
}

/// One open host connection to a phone (lockdown or a service), counted in its
/// [`HostUse`] while it lives.
pub(crate) struct HostConnection {
    phone: Arc<Phone>,
}

impl Drop for HostConnection {
    fn drop(&mut self) {
        self.phone.connections.send_modify(|u| {
            u.open = u.open.saturating_sub(1);
            u.changes += 1;
        });
    }
}

/// How many lockdown sessions a phone started (each a TLS handshake) and how many lockdown
/// connections it closed for being idle, since the bench started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockdownStats {
    pub sessions_started: u64,
    pub idle_closed: u64,
}

impl std::fmt::Debug for Phone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phone")
            .field("udid", &self.profile.udid)
            .finish_non_exhaustive()
    }
}

impl Phone {
    /// A phone from its profile, with the pairings it remembers from an earlier run.
    pub(crate) fn new(
        profile: DeviceProfile,
        state_dir: &StateDir,
        cache_keys: bool,
    ) -> Result<Phone, SimError> {
        let pairings_path = state_dir
            .phones_dir()
            .join(format!("{}.plist", profile.udid));
        let stored = load_phone_file(&pairings_path)?;
        let key_path =
            cache_keys.then(|| state_dir.keys_dir().join(format!("{}.pem", profile.udid)));
        let (activation_state, acknowledged) = stored.activation.unwrap_or((
            profile.activation_state,
            profile.activation_state != ActivationState::Unactivated,
        ));
        let state = PhoneState {
            activation_state,
            acknowledged,
            activation_changed: stored.activation.is_some(),
            activation_session: None,
            passcode_locked: profile.passcode_locked,
            trust: profile.trust,
            trust_delay: Duration::from_millis(profile.trust_delay_ms),
            dialog: None,
            pairings: stored.pairings,
            overrides: BTreeMap::new(),
            open_ports: HashMap::new(),
            next_port: FIRST_SERVICE_PORT,
            lock_released_at: None,
        };
        Ok(Phone {
            profile,
            keys: OnceCell::new(),
            key_path,
            pairings_path,
            state: Mutex::new(state),
            persist: tokio::sync::Mutex::new(()),
            tls_configs: Mutex::new(HashMap::new()),
            sessions_started: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            connections: tokio::sync::watch::channel(ConnectionUse::default()).0,
            plug_state: std::sync::OnceLock::new(),
        })
    }

    /// A host connection to the phone opens; it counts as open until the guard drops.
    pub(crate) fn host_connection(self: &Arc<Self>) -> HostConnection {
        self.connections.send_modify(|u| {
            u.open += 1;
            u.talked_to = true;
            u.changes += 1;
        });
        HostConnection {
            phone: self.clone(),
        }
    }

    /// The hub took the phone: whether it is plugged in is read from `plug_state` from now
    /// on. A phone belongs to one hub; a second call changes nothing.
    pub(crate) fn plugged_into_hub(&self, plug_state: tokio::sync::watch::Receiver<PlugState>) {
        let _ = self.plug_state.set(plug_state);
    }

    /// Whether the phone is plugged in (a phone in no hub is not) and how the host uses it
    /// now.
    pub fn host_use(&self) -> HostUse {
        let attached = self
            .plug_state
            .get()
            .is_some_and(|plug| plug.borrow().plugged_in);
        HostUse {
            attached,
            connections: *self.connections.borrow(),
        }
    }

    /// Every later change of the host's connections to the phone (whether it is plugged
    /// in: crate::hub::Hub::watch_plug_state).
    pub(crate) fn watch_connections(&self) -> tokio::sync::watch::Receiver<ConnectionUse> {
        self.connections.subscribe()
    }

    /// A `StartSession` whose TLS handshake completed.
    pub(crate) fn note_session_started(&self) {
        self.sessions_started.fetch_add(1, Ordering::Relaxed);
    }

    /// A lockdown connection closed because no request came within the idle limit.
    pub(crate) fn note_idle_close(&self) {
        self.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lockdown_stats(&self) -> LockdownStats {
        LockdownStats {
            sessions_started: self.sessions_started.load(Ordering::Relaxed),
            idle_closed: self.idle_closed.load(Ordering::Relaxed),
        }
    }

    /// The TLS this phone speaks: pinned by its world entry, else its iOS version's.
    pub fn tls_generation(&self) -> tls::TlsGeneration {
        self.profile
            .tls
            .unwrap_or_else(|| tls::TlsGeneration::for_ios(&self.profile.product_version))
    }

    pub fn profile(&self) -> &DeviceProfile {
        &self.profile
    }

    pub fn udid(&self) -> &str {
        &self.profile.udid
    }

    fn lock(&self) -> MutexGuard<'_, PhoneState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters for a simulator; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn activation_state(&self) -> ActivationState {
        self.lock().activation_state
    }

    /// Activation Lock as Apple's server sees the phone now: the world's lock, except an
    /// `mdm` lock its MDM has released.
    pub fn activation_lock(&self) -> Lock {
        match self.profile.lock {
            Lock::Mdm if self.activation_lock_released() => Lock::None,
            lock => lock,
        }
    }

    /// Whether an MDM released the phone's `mdm` lock (and the release has taken effect).
    pub fn activation_lock_released(&self) -> bool {
        self.lock()
            .lock_released_at
            .is_some_and(|at| Instant::now() >= at)
    }

    /// The MDM asks Apple to drop the lock; it takes effect `after` this long (an earlier
    /// request that takes effect sooner wins). Only an `mdm` lock can be released.
    pub(crate) fn release_activation_lock(&self, after: Duration) -> bool {
        if self.profile.lock != Lock::Mdm {
            return false;
        }
        let at = Instant::now() + after;
        let mut s = self.lock();
        s.lock_released_at = Some(s.lock_released_at.map_or(at, |earlier| earlier.min(at)));
        true
    }

    /// `ActivationStateAcknowledged` as lockdown reports it.
    pub fn activation_acknowledged(&self) -> bool {
        self.lock().acknowledged
    }

    /// Sets the state as if the phone had been set up that way (acknowledged when
    /// activated) and persists it; for tests and tools. The end of a session's
    /// activation exchange goes through [`Phone::record_activation`].
    pub async fn set_activation_state(&self, state: ActivationState) {
        self.record_activation(state, state != ActivationState::Unactivated)
            .await;
    }

    /// A new activation state (a record accepted: `Activated`, not yet acknowledged; a
    /// deactivation: `Unactivated`), persisted so a bench restart keeps it. Ends the tunnel
    /// session either way.
    pub(crate) async fn record_activation(&self, state: ActivationState, acknowledged: bool) {
        {
            let mut s = self.lock();
            s.activation_state = state;
            s.acknowledged = acknowledged;
            s.activation_changed = true;
            s.activation_session = None;
        }
        tracing::info!(udid = %self.profile.udid, state = %state, "activation state changed");
        self.persist().await;
    }

    /// The host's `SetValue ActivationStateAcknowledged`.
    pub(crate) async fn set_acknowledged(&self, acknowledged: bool) {
        {
            let mut s = self.lock();
            s.acknowledged = acknowledged;
            s.activation_changed = true;
        }
        self.persist().await;
    }

    /// Starts a new tunnel session with this handshake request (replacing any earlier one,
    /// as a new `CreateTunnel1SessionInfoRequest` does on a phone).
    pub(crate) fn begin_activation_session(&self, handshake_request: Vec<u8>) {
        self.lock().activation_session = Some(ActivationSession {
            handshake_request,
            randomness: None,
            started: Instant::now(),
        });
    }

    /// The current handshake session, unless it outlived `activation_session_lifetime_ms`.
    pub(crate) fn activation_session(&self) -> Option<ActivationSession> {
        let lifetime = self
            .profile()
            .activation_session_lifetime_ms
            .map(Duration::from_millis);
        self.lock()
            .activation_session
            .clone()
            .filter(|s| lifetime.is_none_or(|l| s.started.elapsed() <= l))
    }

    /// Remembers the randomness of the activation info just built, if the session is still
    /// the one with `handshake_request` (another host may have started a new one meanwhile).
    pub(crate) fn set_activation_randomness(
        &self,
        handshake_request: &[u8],
        randomness: String,
    ) -> bool {
        let mut s = self.lock();
        match s.activation_session.as_mut() {
            Some(session) if session.handshake_request == handshake_request => {
                session.randomness = Some(randomness);
                true
            }
            _ => false,
        }
    }

    /// The cable was pulled: started service ports close, and the activation exchange in
    /// progress is abandoned (its handshake and request are forgotten), so a record obtained
    /// for it can never be handed over later.
    pub(crate) fn unplugged(&self) {
        let mut s = self.lock();
        s.open_ports.clear();
        s.activation_session = None;
    }

    pub fn passcode_locked(&self) -> bool {
        self.lock().passcode_locked
    }

    pub fn set_passcode_locked(&self, locked: bool) {
        self.lock().passcode_locked = locked;
    }

    pub fn set_trust(&self, trust: Trust, delay: Duration) {
        let mut s = self.lock();
        s.trust = trust;
        s.trust_delay = delay;
        s.dialog = None;
    }

    /// The phone's RSA key pair: loaded from the key cache, or generated on first use
    /// (~150 ms, on the blocking pool) so a bench of 64 phones starts at once.
    /// The session TLS configuration built earlier for this pairing, if any.
    pub fn cached_tls(
        &self,
        host_id: &str,
        device_certificate_der: &[u8],
    ) -> Option<tls::ServerTls> {
        let cache = self.tls_configs.lock().ok()?;
        cache
            .get(host_id)
            .filter(|(cert, _)| cert.as_slice() == device_certificate_der)
            .map(|(_, config)| config.clone())
    }

    pub fn cache_tls(&self, host_id: &str, device_certificate_der: &[u8], config: tls::ServerTls) {
        if let Ok(mut cache) = self.tls_configs.lock() {
            cache.insert(
                host_id.to_string(),
                (device_certificate_der.to_vec(), config),
            );
        }
    }

    pub async fn keys(&self) -> Result<Arc<DeviceKeyPair>, SimError> {
        self.keys
            .get_or_try_init(|| async {
                let udid = self.profile.udid.clone();
                let path = self.key_path.clone();
                tokio::task::spawn_blocking(move || load_or_generate_key(&udid, path.as_deref()))
                    .await
                    .map_err(|e| SimError::DeviceKey {
                        udid: self.profile.udid.clone(),
                        reason: e.to_string(),
                    })?
                    .map(Arc::new)
            })
            .await
            .cloned()
    }

    /// What `Pair` from a host with `system_buid` gets now. Opens the trust dialog if
    /// needed; the virtual user answers it `trust_delay` later.
    pub fn trust_decision(&self, system_buid: &str) -> TrustDecision {
        let now = Instant::now();
        let mut s = self.lock();
        // At Setup Assistant there is nobody to ask: the phone pairs silently. An erased
        // phone activated on the bench is still there (activation does not finish setup).
        if s.activation_state == ActivationState::Unactivated
            || self.profile.activation_state == ActivationState::Unactivated
        {
            return TrustDecision::Trusted;
        }
        if s.passcode_locked {
            return TrustDecision::PasswordProtected;
        }
        if s.pairings.values().any(|p| p.system_buid == system_buid) {
            // This computer was trusted before (the dialog is per computer, not per HostID).
            return TrustDecision::Trusted;
        }
        let delay = s.trust_delay;
        let shown_at = match &s.dialog {
            Some(d) if d.system_buid == system_buid => d.shown_at,
            _ => {
                s.dialog = Some(TrustDialog {
                    system_buid: system_buid.to_string(),
                    shown_at: now,
                });
                now
            }
        };
        if now.duration_since(shown_at) < delay {
            return TrustDecision::Pending;
        }
        match s.trust {
            Trust::Accept => {
                s.dialog = None;
                TrustDecision::Trusted
            }
            Trust::Deny => {
                // The user dismissed it; the next Pair shows a new dialog.
                s.dialog = None;
                TrustDecision::Denied
            }
            Trust::Pending => TrustDecision::Pending,
        }
    }

    pub fn pairing(&self, host_id: &str) -> Option<Pairing> {
        self.lock().pairings.get(host_id).cloned()
    }

    pub fn pairings(&self) -> Vec<Pairing> {
        self.lock().pairings.values().cloned().collect()
    }

    /// Remembers a pairing (replacing an earlier one with the same HostID) and persists.
    pub async fn add_pairing(&self, pairing: Pairing) {
        self.lock()
            .pairings
            .insert(pairing.host_id.clone(), pairing);
        self.persist().await;
    }

    /// Forgets a HostID; `false` if it was not known.
    pub async fn remove_pairing(&self, host_id: &str) -> bool {
        let removed = self.lock().pairings.remove(host_id).is_some();
        if removed {
            self.persist().await;
        }
        removed
    }

    /// Writes what the phone remembers (pairings, a changed activation state).
    async fn persist(&self) {
        let _guard = self.persist.lock().await;
        let (snapshot, activation) = {
            let s = self.lock();
            let pairings: Vec<Pairing> = s.pairings.values().cloned().collect();
            let activation = s
                .activation_changed
                .then_some((s.activation_state, s.acknowledged));
            (pairings, activation)
        };
        let bytes = phone_file_to_xml(&snapshot, activation);
        if let Err(e) =
            atomic_file::write_async(self.pairings_path.clone(), bytes, atomic_file::SHARED).await
        {
            tracing::warn!(udid = %self.profile.udid, error = %e, "cannot persist phone state");
        }
    }

    /// A value written with SetValue/RemoveValue: `Some(None)` if removed.
    pub fn override_value(&self, domain: &str, key: &str) -> Option<Option<plist::Value>> {
        self.lock()
            .overrides
            .get(&(domain.to_string(), key.to_string()))
            .cloned()
    }

    pub fn overrides_in(&self, domain: &str) -> Vec<(String, Option<plist::Value>)> {
        self.lock()
            .overrides
            .iter()
            .filter(|((d, _), _)| d == domain)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn set_override(&self, domain: &str, key: &str, value: Option<plist::Value>) {
        self.lock()
            .overrides
            .insert((domain.to_string(), key.to_string()), value);
    }

    /// Opens a port for a started service; the next usbmuxd Connect to it reaches the
    /// service.
    pub(crate) fn open_service_port(&self, pending: crate::services::PendingService) -> u16 {
        let mut s = self.lock();
        s.open_ports.retain(|_, p| !p.expired());
        let mut port = s.next_port;
        while s.open_ports.contains_key(&port) {
            port = port.checked_add(1).unwrap_or(FIRST_SERVICE_PORT);
        }
        s.next_port = port.checked_add(1).unwrap_or(FIRST_SERVICE_PORT);
        s.open_ports.insert(port, pending);
        port
    }

    /// Whether a started service waits on `port`.
    pub(crate) fn has_service_port(&self, port: u16) -> bool {
        let mut s = self.lock();
        s.open_ports.retain(|_, p| !p.expired());
        s.open_ports.contains_key(&port)
    }

    /// Takes the service waiting on `port`, if any (each start serves one connection).
    pub(crate) fn take_service_port(&self, port: u16) -> Option<crate::services::PendingService> {
        let mut s = self.lock();
        s.open_ports.retain(|_, p| !p.expired());
        s.open_ports.remove(&port)
    }
}

fn load_or_generate_key(
    udid: &str,
    path: Option<&std::path::Path>,
) -> Result<DeviceKeyPair, SimError> {
    let key_error = |reason: String| SimError::DeviceKey {
        udid: udid.to_string(),
        reason,
    };
    if let Some(path) = path {
        match std::fs::read(path) {
            Ok(bytes) => match parse_key_file(&bytes) {
                Some(keys) => return Ok(keys),
                None => {
                    tracing::warn!(path = %path.display(), "unusable cached key, generating a new one")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SimError::io("read", path, e)),
        }
    }
    let keys = DeviceKeyPair::generate().map_err(|e| key_error(e.to_string()))?;
    if let Some(path) = path {
        let text = format!("{}{}", keys.private_key_pem, keys.public_key_pem);
        if let Err(e) = station_protocol::atomic_file::write(
            path,
            text.as_bytes(),
            station_protocol::atomic_file::SHARED,
        ) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache device key");
        }
    }
    Ok(keys)
}

/// A cached key file: the PKCS#8 private key PEM followed by the PKCS#1 public key PEM,
/// kept byte for byte.
fn parse_key_file(bytes: &[u8]) -> Option<DeviceKeyPair> {
    let text = std::str::from_utf8(bytes).ok()?;
    let split = text.find("-----BEGIN RSA PUBLIC KEY-----")?;
    let (private, public) = text.split_at(split);
    let ok = |s: &str, tag: &str| pem::parse(s).map(|p| p.tag() == tag).unwrap_or(false);
    if !ok(private, "PRIVATE KEY") || !ok(public, "RSA PUBLIC KEY") {
        return None;
    }
    Some(DeviceKeyPair {
        private_key_pem: private.to_string(),
        public_key_pem: public.to_string(),
    })
}

const HOST_CERTIFICATE: &str = "HostCertificate";
const ROOT_CERTIFICATE: &str = "RootCertificate";
const DEVICE_CERTIFICATE: &str = "DeviceCertificate";
const SYSTEM_BUID: &str = "SystemBUID";
const ESCROW_BAG: &str = "EscrowBag";
const ACTIVATION: &str = "Activation";
const ACTIVATION_STATE: &str = "ActivationState";
const ACKNOWLEDGED: &str = "ActivationStateAcknowledged";

/// `<state_dir>/phones/<UDID>.plist`: `{Pairings: {HostID: {…}}, Activation?: {…}}`.
fn phone_file_to_xml(pairings: &[Pairing], activation: Option<(ActivationState, bool)>) -> Vec<u8> {
    let mut all = plist::Dictionary::new();
    for p in pairings {
        let mut d = plist::Dictionary::new();
        d.insert(SYSTEM_BUID.into(), p.system_buid.clone().into());
        d.insert(
            HOST_CERTIFICATE.into(),
            plist::Value::Data(p.host_certificate_der.clone()),
        );
        d.insert(
            ROOT_CERTIFICATE.into(),
            plist::Value::Data(p.root_certificate_der.clone()),
        );
        d.insert(
            DEVICE_CERTIFICATE.into(),
            plist::Value::Data(p.device_certificate_der.clone()),
        );
        d.insert(ESCROW_BAG.into(), plist::Value::Data(p.escrow_bag.clone()));
        all.insert(p.host_id.clone(), plist::Value::Dictionary(d));
    }
    let mut root = plist::Dictionary::new();
    root.insert("Pairings".into(), plist::Value::Dictionary(all));
    if let Some((state, acknowledged)) = activation {
        let mut d = plist::Dictionary::new();
        d.insert(ACTIVATION_STATE.into(), state.as_str().into());
        d.insert(ACKNOWLEDGED.into(), plist::Value::Boolean(acknowledged));
        root.insert(ACTIVATION.into(), plist::Value::Dictionary(d));
    }
    let mut out = Vec::new();
    // Writing an in-memory dictionary of strings and data to a Vec cannot fail.
    let _ = plist::Value::Dictionary(root).to_writer_xml(&mut out);
    out
}

/// What a phone file holds.
#[derive(Debug, Default)]
struct StoredPhone {
    pairings: BTreeMap<String, Pairing>,
    activation: Option<(ActivationState, bool)>,
}

fn load_phone_file(path: &std::path::Path) -> Result<StoredPhone, SimError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoredPhone::default()),
        Err(e) => return Err(SimError::io("read", path, e)),
    };
    let bad = |reason: &str| SimError::State {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let value =
        plist::Value::from_reader(std::io::Cursor::new(bytes)).map_err(|e| bad(&e.to_string()))?;
    let activation = match value
        .as_dictionary()
        .and_then(|d| d.get(ACTIVATION))
        .and_then(|v| v.as_dictionary())
    {
        None => None,
        Some(d) => {
            let state = match d.get(ACTIVATION_STATE).and_then(|v| v.as_string()) {
                Some("Activated") => ActivationState::Activated,
                Some("Unactivated") => ActivationState::Unactivated,
                _ => return Err(bad("Activation has no known ActivationState")),
            };
            let acknowledged = d
                .get(ACKNOWLEDGED)
                .and_then(|v| v.as_boolean())
                .unwrap_or(state == ActivationState::Activated);
            Some((state, acknowledged))
        }
    };
    let all = value
        .as_dictionary()
        .and_then(|d| d.get("Pairings"))
        .and_then(|v| v.as_dictionary())
        .ok_or_else(|| bad("no Pairings dictionary"))?;
    let mut out = BTreeMap::new();
    for (host_id, entry) in all {
        let d = entry
            .as_dictionary()
            .ok_or_else(|| bad("pairing is not a dictionary"))?;
        let data = |key: &str| {
            d.get(key)
                .and_then(|v| v.as_data())
                .map(<[u8]>::to_vec)
                .ok_or_else(|| bad(&format!("pairing {host_id} has no {key}")))
        };
        out.insert(
            host_id.clone(),
            Pairing {
                host_id: host_id.clone(),
                system_buid: d
                    .get(SYSTEM_BUID)
                    .and_then(|v| v.as_string())
                    .unwrap_or_default()
                    .to_string(),
                host_certificate_der: data(HOST_CERTIFICATE)?,
                root_certificate_der: data(ROOT_CERTIFICATE)?,
                device_certificate_der: data(DEVICE_CERTIFICATE)?,
                escrow_bag: data(ESCROW_BAG).unwrap_or_default(),
            },
        );
    }
    Ok(StoredPhone {
        pairings: out,
        activation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::default_world;

    fn phone_with(
        state: ActivationState,
        trust: Trust,
        delay_ms: u64,
        locked: bool,
    ) -> (Phone, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(dir.path());
        sd.create().expect("create");
        let mut profile = default_world(1, 1).resolve().expect("world").remove(0);
        profile.activation_state = state;
        profile.trust = trust;
        profile.trust_delay_ms = delay_ms;
        profile.passcode_locked = locked;
        (Phone::new(profile, &sd, false).expect("phone"), dir)
    }

    #[test]
    fn unactivated_pairs_silently() {
        let (p, _d) = phone_with(ActivationState::Unactivated, Trust::Pending, 0, false);
        assert_eq!(p.trust_decision("BUID"), TrustDecision::Trusted);
    }

    #[test]
    fn passcode_comes_first() {
        let (p, _d) = phone_with(ActivationState::Activated, Trust::Accept, 0, true);
        assert_eq!(p.trust_decision("BUID"), TrustDecision::PasswordProtected);
        p.set_passcode_locked(false);
        assert_eq!(p.trust_decision("BUID"), TrustDecision::Trusted);
    }

    #[test]
    fn accept_after_delay() {
        let (p, _d) = phone_with(ActivationState::Activated, Trust::Accept, 150, false);
        assert_eq!(p.trust_decision("BUID"), TrustDecision::Pending);
        assert_eq!(p.trust_decision("BUID"), TrustDecision::Pending);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(p.trust_decision("BUID"), TrustDecision::Trusted);
    }

    #[test]
    fn deny_after_delay_then_new_dialog() {
        let (p, _d) = phone_with(ActivationState::Activated, Trust::Deny, 100, false);
        assert_eq!(p.trust_decision("BUID"), TrustDecision::Pending);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(p.trust_decision("BUID"), TrustDecision::Denied);
        assert_eq!(p.trust_decision("BUID"), TrustDecision::Pending);
    }

    #[test]
    fn pending_forever() {
        let (p, _d) = phone_with(ActivationState::Activated, Trust::Pending, 0, false);
        for _ in 0..3 {
            assert_eq!(p.trust_decision("BUID"), TrustDecision::Pending);
        }
    }

    #[tokio::test]
    async fn pairings_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(dir.path());
        sd.create().expect("create");
        let profile = default_world(1, 1).resolve().expect("world").remove(0);
        let p = Phone::new(profile.clone(), &sd, false).expect("phone");
        let pairing = Pairing {
            host_id: "HOST".into(),
            system_buid: "BUID".into(),
            host_certificate_der: vec![1, 2],
            root_certificate_der: vec![3],
            device_certificate_der: vec![4],
            escrow_bag: vec![5; 32],
        };
        p.add_pairing(pairing.clone()).await;
        let again = Phone::new(profile.clone(), &sd, false).expect("phone");
        assert_eq!(again.pairing("HOST"), Some(pairing));
        assert!(again.remove_pairing("HOST").await);
        assert!(!again.remove_pairing("HOST").await);
        let third = Phone::new(profile, &sd, false).expect("phone");
        assert!(third.pairings().is_empty());
    }

    #[tokio::test]
    async fn activation_state_persists_and_wins_over_the_world() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(dir.path());
        sd.create().expect("create");
        let mut profile = default_world(1, 1).resolve().expect("world").remove(0);
        profile.activation_state = ActivationState::Unactivated;
        let p = Phone::new(profile.clone(), &sd, false).expect("phone");
        assert!(!p.activation_acknowledged());
        p.begin_activation_session(vec![1; 21]);
        assert!(p.set_activation_randomness(&[1; 21], "R".into()));
        assert!(
            !p.set_activation_randomness(&[2; 21], "R".into()),
            "other session"
        );
        p.record_activation(ActivationState::Activated, false).await;
        assert!(
            p.activation_session().is_none(),
            "a record ends the session"
        );

        let again = Phone::new(profile.clone(), &sd, false).expect("phone");
        assert_eq!(again.activation_state(), ActivationState::Activated);
        assert!(!again.activation_acknowledged());
        again.set_acknowledged(true).await;
        let third = Phone::new(profile.clone(), &sd, false).expect("phone");
        assert!(third.activation_acknowledged());
        // Still at Setup Assistant: pairs without a dialog.
        assert_eq!(third.trust_decision("BUID"), TrustDecision::Trusted);

        third.begin_activation_session(vec![3; 21]);
        third.unplugged();
        assert!(
            third.activation_session().is_none(),
            "an unplug abandons the exchange"
        );
    }

    #[test]
    fn key_file_round_trip() {
        let keys = DeviceKeyPair::generate().expect("generate");
        let text = format!("{}{}", keys.private_key_pem, keys.public_key_pem);
        let parsed = parse_key_file(text.as_bytes()).expect("parse");
        assert_eq!(parsed, keys);
        assert!(parse_key_file(b"garbage").is_none());
    }
}
