//! Lockdown services (`StartService`): a registry of what a virtual phone runs, the port
//! each started service waits on, and the connection that reaches it.
//!
//! As on a real phone, `StartService` opens a fresh port for one connection; the host then
//! makes a new usbmuxd `Connect` to that port and, if `EnableServiceSSL`, does a TLS
//! handshake with its pair-record credentials. Every bench runs
//! `com.apple.mobileactivationd` (`activation::device`) and `com.apple.mobile.MCInstall`
//! (`mcinstall`); tests register more.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stream::PhoneStream;
use station_protocol::channel::PlistChannel;
use station_protocol::lockdown::LockdownErrorKind;
use tracing::Instrument;

use crate::phone::tls::ServerTls;
use crate::phone::Phone;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How long a started service waits for its connection (lockdownd closes unused ports).
const PORT_LIFETIME: Duration = Duration::from_secs(30);

/// One connection to a started service.
pub struct ServiceConnection {
    pub phone: Arc<Phone>,
    pub service: String,
    /// The stream, already in TLS when the service asked for it.
    pub channel: PlistChannel<PhoneStream>,
}

/// A service a virtual phone can start.
pub trait LockdownService: Send + Sync + 'static {
    /// The lockdown name, e.g. `com.apple.mobileactivationd`.
    fn name(&self) -> &str;

    /// Whether the connection is TLS (`EnableServiceSSL`).
    fn enable_ssl(&self) -> bool {
        true
    }

    /// Whether `StartService` needs a session (almost every service does).
    fn requires_session(&self) -> bool {
        true
    }

    /// Refuses to start in the phone's current state; the error is the lockdown `Error`.
    fn check_start(&self, _phone: &Phone) -> Result<(), LockdownErrorKind> {
        Ok(())
    }

    /// Serves one connection until it ends.
    fn serve(&self, conn: ServiceConnection) -> BoxFuture<()>;
}

/// The services every phone of a bench runs, by name.
#[derive(Clone, Default)]
pub struct ServiceRegistry {
    by_name: BTreeMap<String, Arc<dyn LockdownService>>,
}

impl std::fmt::Debug for ServiceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl ServiceRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, service: impl LockdownService) {
        self.by_name
            .insert(service.name().to_string(), Arc::new(service));
    }

    /// Adds every service of `other`, replacing same-named ones.
    pub fn extend(&mut self, other: &ServiceRegistry) {
        for (name, service) in &other.by_name {
            self.by_name.insert(name.clone(), service.clone());
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn LockdownService>> {
        self.by_name.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// A started service waiting for its connection.
pub(crate) struct PendingService {
    pub service: Arc<dyn LockdownService>,
    /// TLS configuration of the session that started it (same credentials).
    pub tls: Option<ServerTls>,
    opened_at: Instant,
}

impl std::fmt::Debug for PendingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingService")
            .field("service", &self.service.name())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl PendingService {
    pub fn new(service: Arc<dyn LockdownService>, tls: Option<ServerTls>) -> Self {
        PendingService {
            service,
            tls,
            opened_at: Instant::now(),
        }
    }

    pub fn expired(&self) -> bool {
        self.opened_at.elapsed() > PORT_LIFETIME
    }
}

/// Runs a started service on the connection usbmuxd handed over.
pub(crate) async fn run(
    phone: Arc<Phone>,
    pending: PendingService,
    stream: PhoneStream,
    handshake_timeout: Duration,
) {
    let name = pending.service.name().to_string();
    let span = tracing::info_span!("service", udid = %phone.udid(), service = %name);
    async move {
        let mut channel = PlistChannel::new(stream);
        if let Some(config) = pending.tls {
            channel.set_timeout(Some(handshake_timeout));
            let started = match config.engine() {
                Ok(engine) => channel.start_tls(engine).await,
                Err(e) => Err(e),
            };
            if let Err(e) = started {
                tracing::debug!(error = %e, "service TLS handshake failed");
                return;
            }
            channel.set_timeout(None);
        }
        tracing::debug!("service connection");
        pending
            .service
            .serve(ServiceConnection {
                phone,
                service: name,
                channel,
            })
            .await;
    }
    .instrument(span)
    .await
}
