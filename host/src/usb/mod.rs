//! The station's `usb` transport: phones straight over USB, no usbmuxd (docs/usb.md).
//!
//! Layers, bottom up: [`select`] picks the configuration and interface with the mux
//! (docs/protocol.md §2.3) from parsed descriptors; [`nusb_device`] finds Apple phones,
//! claims that interface and keeps bulk-IN transfers in flight; the mux itself
//! (`station_protocol::usb_mux`) runs on those endpoints; [`UsbPhones`] is the set of phones
//! whose mux is up, each with a usbmuxd-style `DeviceInfo`, so everything above (lockdown,
//! pairing, activation, the line) sees the same phones and streams as through usbmuxd.

pub mod nusb_device;
pub mod select;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use station_protocol::usb_mux::driver::{DriverError, MuxHandle};
use station_protocol::usbmux::{DeviceInfo, Event, UsbmuxStream};
use tokio::sync::{broadcast, OnceCell};

/// Why the USB transport cannot reach a phone (or any phone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsbError {
    #[error("no USB bus is visible on this machine ({reason})")]
    NoBus { reason: String },
    #[error(
        "the phone at USB {location} is held by another process (most likely {holder}): {reason}"
    )]
    Busy {
        location: String,
        holder: String,
        reason: String,
    },
    #[error("no permission to open the phone at USB {location}: {reason}")]
    Access { location: String, reason: String },
    #[error(
        "the phone at USB {location} has no mux interface (255/254/2 with two bulk endpoints)"
    )]
    NoMuxInterface { location: String },
    #[error("USB error on the phone at {location}: {reason}")]
    Device { location: String, reason: String },
    #[error("mux on the phone at {location}: {error}")]
    Mux {
        location: String,
        error: DriverError,
    },
}

/// How many attach/detach events a slow listener may fall behind before it misses some.
const EVENT_BACKLOG: usize = 256;

struct Attached {
    info: DeviceInfo,
    /// Where on the bus (`1-1.4.2`), when the phone came from a bus.
    port_path: Option<String>,
    mux: MuxHandle,
}

struct Registry {
    next_device_id: u32,
    phones: BTreeMap<u32, Attached>,
    /// Phones seen but not usable, by location (reported by `devices`).
    problems: BTreeMap<String, UsbError>,
}

/// The phones whose mux is up, numbered like usbmuxd numbers them (DeviceID from 1).
#[derive(Clone)]
pub struct UsbPhones {
    registry: Arc<Mutex<Registry>>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for UsbPhones {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsbPhones")
            .field("phones", &self.list().len())
            .finish()
    }
}

impl Default for UsbPhones {
    fn default() -> Self {
        UsbPhones {
            registry: Arc::new(Mutex::new(Registry {
                next_device_id: 1,
                phones: BTreeMap::new(),
                problems: BTreeMap::new(),
            })),
            events: broadcast::channel(EVENT_BACKLOG).0,
        }
    }
}

impl UsbPhones {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A phone whose mux is up, at `port_path` on the bus (`1-1.4.2`; `None` for phones not
    /// on a bus). It stays listed until its mux goes down (unplug, USB error), which
    /// detaches it.
    pub fn attach(
        &self,
        udid: &str,
        product_id: u32,
        location_id: u32,
        speed: u64,
        port_path: Option<&str>,
        mux: MuxHandle,
    ) -> DeviceInfo {
        let info = {
            let mut registry = self.lock();
            let device_id = registry.next_device_id;
            registry.next_device_id = registry.next_device_id.wrapping_add(1).max(1);
            let info = DeviceInfo {
                device_id,
                udid: udid.to_string(),
                product_id,
                location_id,
                connection_speed: speed,
                connection_type: "USB".into(),
            };
            registry.phones.insert(
                device_id,
                Attached {
                    info: info.clone(),
                    port_path: port_path.map(str::to_string),
                    mux: mux.clone(),
                },
            );
            info
        };
        let _ = self.events.send(Event::Attached(info.clone()));
        let phones = self.clone();
        let device_id = info.device_id;
        tokio::spawn(async move {
            let why = mux.closed().await;
            tracing::info!(device_id, error = %why, "USB phone gone");
            phones.detach(device_id);
        });
        info
    }

    pub fn detach(&self, device_id: u32) {
        let removed = self.lock().phones.remove(&device_id);
        if let Some(phone) = removed {
            phone.mux.shutdown();
            let _ = self.events.send(Event::Detached { device_id });
        }
    }

    /// Records why a phone seen on the bus cannot be used; cleared when it attaches.
    pub fn problem(&self, location: &str, error: UsbError) {
        self.lock().problems.insert(location.to_string(), error);
    }

    pub fn clear_problem(&self, location: &str) {
        self.lock().problems.remove(location);
    }

    pub fn problems(&self) -> Vec<UsbError> {
        self.lock().problems.values().cloned().collect()
    }

    pub fn list(&self) -> Vec<DeviceInfo> {
        self.lock()
            .phones
            .values()
            .map(|p| p.info.clone())
            .collect()
    }

    /// Whether this phone's mux link is down: detached already, or its link failed and the
    /// detach is on its way (a transfer error and the unplug reach us in either order).
    pub fn link_down(&self, device: &DeviceInfo) -> bool {
        match self.lock().phones.get(&device.device_id) {
            Some(phone) => phone.info.udid == device.udid && phone.mux.failure().is_some(),
            None => true,
        }
    }

    /// The phones now and the events after them.
    pub fn subscribe(&self) -> (Vec<DeviceInfo>, broadcast::Receiver<Event>) {
        let rx = self.events.subscribe();
        (self.list(), rx)
    }

    /// A stream to `port` on the phone, over its mux.
    pub async fn connect(
        &self,
        device: &DeviceInfo,
        port: u16,
        timeout: Duration,
    ) -> Result<UsbmuxStream, DriverError> {
        let mux = self
            .lock()
            .phones
            .get(&device.device_id)
            .map(|p| p.mux.clone())
            .ok_or(DriverError::Shutdown)?;
        Ok(UsbmuxStream::Usb(mux.connect(port, timeout).await?))
    }
}

impl crate::slots::KnownPorts for UsbPhones {
    /// The port path the phone was opened at, if it is attached now as this `DeviceInfo`.
    fn port_path(&self, device: &DeviceInfo) -> Option<String> {
        let registry = self.lock();
        let phone = registry.phones.get(&device.device_id)?;
        (phone.info.udid == device.udid && phone.info.location_id == device.location_id)
            .then(|| phone.port_path.clone())
            .flatten()
    }
}

/// The transport: the phone registry plus, started on first use, the bus watcher that
/// fills it.
#[derive(Clone)]
pub struct UsbTransport {
    phones: UsbPhones,
    timeout: Duration,
    started: Arc<OnceCell<Result<(), UsbError>>>,
    /// `None`: phones are attached by the caller (tests attach in-memory phones).
    watch_bus: bool,
}

impl std::fmt::Debug for UsbTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsbTransport")
            .field("phones", &self.phones)
            .field("watch_bus", &self.watch_bus)
            .finish()
    }
}

impl UsbTransport {
    /// Phones from this machine's USB bus (nusb), found on first use.
    pub fn system(timeout: Duration) -> Self {
        UsbTransport {
            phones: UsbPhones::default(),
            timeout,
            started: Arc::new(OnceCell::new()),
            watch_bus: true,
        }
    }

    /// Phones the caller attaches to `phones` (in-memory pipes in tests, a gadget rig).
    pub fn with_phones(phones: UsbPhones, timeout: Duration) -> Self {
        UsbTransport {
            phones,
            timeout,
            started: Arc::new(OnceCell::new()),
            watch_bus: false,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn phones(&self) -> &UsbPhones {
        &self.phones
    }

    /// Scans the bus once (bringing every phone's mux up) and keeps watching it.
    pub async fn start(&self) -> Result<(), UsbError> {
        if !self.watch_bus {
            return Ok(());
        }
        self.started
            .get_or_init(|| nusb_device::start(self.phones.clone(), self.timeout))
            .await
            .clone()
    }

    /// The phones now. A phone seen but unusable (held by usbmuxd, no permission) makes
    /// this an error when no phone at all is usable, so `station devices` says why.
    pub async fn list_devices(&self) -> Result<Vec<DeviceInfo>, UsbError> {
        self.start().await?;
        let phones = self.phones.list();
        if phones.is_empty() {
            if let Some(problem) = self.phones.problems().into_iter().next() {
                return Err(problem);
            }
        }
        Ok(phones)
    }

    pub async fn connect(&self, device: &DeviceInfo, port: u16) -> Result<UsbmuxStream, UsbError> {
        self.start().await?;
        self.phones
            .connect(device, port, self.timeout)
            .await
            .map_err(|error| UsbError::Mux {
                location: format!("{:#010x}", device.location_id),
                error,
            })
    }

    pub async fn subscribe(
        &self,
    ) -> Result<(Vec<DeviceInfo>, broadcast::Receiver<Event>), UsbError> {
        self.start().await?;
        Ok(self.phones.subscribe())
    }
}
