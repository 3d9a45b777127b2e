//! Talking to one phone: lockdown connections, pairing (with the trust prompt), and TLS
//! sessions from the stored pair record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use station_protocol::channel::PlistChannel;
use station_protocol::lockdown::{
    LockdownClient, LockdownError, LockdownErrorKind, ServiceInfo, LOCKDOWN_PORT,
};
use station_protocol::pairing::{PairRecord, PairRecordStore, UsbmuxdPairStore};
use station_protocol::tls::client_config;
use station_protocol::usbmux::{DeviceInfo, UsbmuxStream};

use crate::error::{DeviceFault, StationError};
use crate::transport::Transport;

/// Sent as `Label` with every lockdown request; phones log it.
pub const LOCKDOWN_LABEL: &str = "station";
/// How often a pending trust prompt is polled (pymobiledevice3 and idevicepair use ~1 s).
const TRUST_POLL_INTERVAL: Duration = Duration::from_secs(1);

pub type Lockdown = LockdownClient<UsbmuxStream>;

/// Where pair records live.
pub enum PairStore {
    /// usbmuxd's own store, shared with libimobiledevice's tools.
    Usbmuxd(UsbmuxdPairStore),
    /// A directory in the `/var/lib/lockdown` layout.
    Dir(station_protocol::pairing::DirPairStore),
}

impl PairStore {
    fn store(&self) -> &dyn PairRecordStore {
        match self {
            PairStore::Usbmuxd(s) => s,
            PairStore::Dir(s) => s,
        }
    }
}

/// A TLS client configuration and the host certificate it presents.
type CachedTls = (Vec<u8>, Arc<rustls::ClientConfig>);

/// Access to the phones behind one usbmuxd.
pub struct Bench {
    pub transport: Transport,
    pub store: Arc<PairStore>,
    identity: crate::identity::IdentityStore,
    /// The TLS client configuration of the last host certificate used: every record of
    /// this station shares one, and parsing its key per connection is most of a
    /// handshake's cost.
    tls: std::sync::Mutex<Option<CachedTls>>,
}

/// A paired, TLS-protected lockdown session.
pub struct Session {
    pub lockdown: Lockdown,
    /// The record the session was opened with; services use its certificates too.
    pub record: PairRecord,
}

impl Bench {
    /// `identity_file`: where the station's pairing identity is kept (in memory if `None`).
    pub fn new(
        transport: Transport,
        store: PairStore,
        identity_file: Option<std::path::PathBuf>,
    ) -> Self {
        Bench {
            transport,
            store: Arc::new(store),
            identity: crate::identity::IdentityStore::new(identity_file),
            tls: std::sync::Mutex::new(None),
        }
    }

    /// A plaintext lockdown connection, checked with `QueryType`.
    pub async fn lockdown(&self, device: &DeviceInfo) -> Result<Lockdown, StationError> {
        let stream = self.transport.connect(device, LOCKDOWN_PORT).await?;
        let mut lockdown = LockdownClient::new(stream, LOCKDOWN_LABEL);
        lockdown.set_timeout(self.transport.timeout());
        lockdown
            .query_type()
            .await
            .map_err(|e| StationError::from_lockdown(&device.udid, e))?;
        Ok(lockdown)
    }

    pub async fn pair_record(&self, udid: &str) -> Result<Option<PairRecord>, StationError> {
        Ok(self.store.store().read(udid).await?)
    }

    /// Pairs with the phone. A phone at Setup Assistant accepts at once; an activated one
    /// shows "Trust This Computer?" and answers `PairingDialogResponsePending` until the
    /// operator taps; this polls for up to `wait`.
    pub async fn pair(
        &self,
        device: &DeviceInfo,
        wait: Duration,
    ) -> Result<PairRecord, StationError> {
        let udid = device.udid.as_str();
        let mut lockdown = self.lockdown(device).await?;
        let public_key = lockdown
            .get_value(None, Some("DevicePublicKey"))
            .await
            .map_err(|e| StationError::from_lockdown(udid, e))?;
        let public_key =
            public_key
                .as_data()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| StationError::Device {
                    udid: udid.to_string(),
                    fault: DeviceFault::NotData("DevicePublicKey"),
                })?;
        // libimobiledevice reads WiFiAddress before Pair: iOS 7 refuses it afterwards.
        let wifi = lockdown
            .get_value(None, Some("WiFiAddress"))
            .await
            .ok()
            .and_then(|v| v.as_string().map(str::to_string));
        let system_buid = self.store.store().system_buid().await?;
        let signer = self.identity.get().await?;
        let mut record = tokio::task::spawn_blocking(move || {
            signer.pair_record(&public_key, &system_buid, wifi.as_deref())
        })
        .await
        .map_err(|e| StationError::Internal {
            task: "certificate generation",
            reason: e.to_string(),
        })??;

        let started = Instant::now();
        let escrow_bag = loop {
            match lockdown.pair(record.pair_request_value()).await {
                Ok(bag) => break bag,
                Err(e)
                    if e.kind() == Some(&LockdownErrorKind::PairingDialogResponsePending)
                        && started.elapsed() < wait =>
                {
                    tracing::info!(
                        udid,
                        "trust prompt pending; waiting for the operator to tap Trust"
                    );
                    tokio::time::sleep(TRUST_POLL_INTERVAL).await;
                }
                Err(LockdownError::Channel(_)) if started.elapsed() < wait => {
                    // Phones drop a connection that waits on the dialog for long; reconnect.
                    tokio::time::sleep(TRUST_POLL_INTERVAL).await;
                    lockdown = self.lockdown(device).await?;
                }
                Err(e) => return Err(StationError::from_lockdown(udid, e)),
            }
        };
        if escrow_bag.is_none() {
            // As libimobiledevice does: the pairing stands; only a backup would need the bag.
            tracing::info!(udid, "paired without an EscrowBag (the phone is locked?)");
        }
        record.escrow_bag = escrow_bag;
        record.udid = Some(device.udid.clone());
        match self.store.as_ref() {
            PairStore::Usbmuxd(store) => {
                store
                    .save_for_device(udid, &record, Some(device.device_id))
                    .await?
            }
            PairStore::Dir(store) => store.save(udid, &record).await?,
        }
        tracing::info!(udid, "paired");
        Ok(record)
    }

    /// Forgets the pairing on the phone (best effort: it may already have forgotten) and
    /// deletes the stored record. Returns whether a record existed.
    pub async fn unpair(&self, device: &DeviceInfo) -> Result<bool, StationError> {
        let udid = device.udid.as_str();
        let Some(record) = self.pair_record(udid).await? else {
            return Ok(false);
        };
        let mut lockdown = self.lockdown(device).await?;
        match lockdown.unpair(record.pair_request_value()).await {
            Ok(()) => {}
            Err(e) if e.kind() == Some(&LockdownErrorKind::InvalidHostID) => {
                tracing::info!(udid, "phone had already forgotten this station");
            }
            Err(e) => return Err(StationError::from_lockdown(udid, e)),
        }
        Ok(self.store.store().delete(udid).await?)
    }

    /// The TLS client configuration for a record's host certificate, built once.
    fn tls_config(&self, record: &PairRecord) -> Result<Arc<rustls::ClientConfig>, StationError> {
        if let Ok(cache) = self.tls.lock() {
            if let Some((cert, config)) = cache.as_ref() {
                if *cert == record.host_certificate {
                    return Ok(Arc::clone(config));
                }
            }
        }
        let config = client_config(&record.host_certificate, &record.host_private_key)?;
        if let Ok(mut cache) = self.tls.lock() {
            *cache = Some((record.host_certificate.clone(), Arc::clone(&config)));
        }
        Ok(config)
    }

    /// Deletes the stored record (the phone no longer knows it).
    pub async fn forget(&self, udid: &str) -> Result<bool, StationError> {
        Ok(self.store.store().delete(udid).await?)
    }

    /// A TLS session from the stored record; `None` when there is no record.
    pub async fn session(&self, device: &DeviceInfo) -> Result<Option<Session>, StationError> {
        let Some(record) = self.pair_record(&device.udid).await? else {
            return Ok(None);
        };
        self.session_with(device, record).await.map(Some)
    }

    pub async fn session_with(
        &self,
        device: &DeviceInfo,
        record: PairRecord,
    ) -> Result<Session, StationError> {
        let mut lockdown = self.lockdown(device).await?;
        let tls = self.tls_config(&record)?;
        lockdown
            .start_session(&record.host_id, &record.system_buid, tls)
            .await
            .map_err(|e| StationError::from_lockdown(&device.udid, e))?;
        Ok(Session { lockdown, record })
    }

    /// A session, pairing first if needed. Pairing is only attempted when `may_pair` says
    /// so for this phone (it may show a trust prompt).
    pub async fn session_or_pair(
        &self,
        device: &DeviceInfo,
        wait: Duration,
    ) -> Result<Session, StationError> {
        if let Some(session) = self.session(device).await? {
            return Ok(session);
        }
        let record = self.pair(device, wait).await?;
        self.session_with(device, record).await
    }
}

impl Bench {
    /// Starts `service` through the session and opens its connection (TLS when the phone
    /// asks for it, with the session's certificates).
    pub async fn service(
        &self,
        device: &DeviceInfo,
        session: &mut Session,
        service: &str,
    ) -> Result<PlistChannel<UsbmuxStream>, StationError> {
        let info = session
            .lockdown
            .start_service(service, None)
            .await
            .map_err(|e| StationError::from_lockdown(&device.udid, e))?;
        self.connect_service(device, &session.record, &info).await
    }

    /// Opens the connection of a service the phone started (`StartService` answered
    /// `info`): TLS when the phone asks for it, with the session's certificates.
    pub async fn connect_service(
        &self,
        device: &DeviceInfo,
        record: &PairRecord,
        info: &ServiceInfo,
    ) -> Result<PlistChannel<UsbmuxStream>, StationError> {
        let stream = self.transport.connect(device, info.port).await?;
        let mut channel = PlistChannel::new(stream);
        channel.set_timeout(Some(self.transport.timeout()));
        if info.ssl {
            let tls = self.tls_config(record)?;
            channel.start_tls_client(tls).await.map_err(|e| {
                StationError::from_lockdown(&device.udid, LockdownError::Channel(e))
            })?;
        }
        Ok(channel)
    }
}

impl Session {
    pub async fn get_value(
        &mut self,
        domain: Option<&str>,
        key: Option<&str>,
    ) -> Result<plist::Value, LockdownError> {
        self.lockdown.get_value(domain, key).await
    }

    /// Ends the session politely; errors are irrelevant at this point.
    pub async fn close(mut self) {
        let _ = self.lockdown.stop_session().await;
        let _ = self.lockdown.goodbye().await;
    }
}
