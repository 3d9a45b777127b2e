//! A bench whose phones are USB gadgets: the bench (phones, stand-in servers, its own
//! usbmuxd socket) plus one gadget per phone, bound and unbound as the bench plugs and
//! unplugs the phone.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use station_protocol::usbmux::Event;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use super::configfs::{busy_udcs, udcs, Gadget, MuxPort, PhoneShape};
use super::ffs::{BulkWriter, PipeEvent, MAX_TRANSFER};
use super::{GadgetError, IOS_PRODUCT_IDS};
use crate::bench::Shared;
use crate::{Bench, ReadyInfo, UsbDevice};
use station_protocol::usb_mux::driver::{BulkIn, BulkOut};
use tokio::sync::mpsc;

/// Where the kernel's interfaces are.
#[derive(Debug, Clone)]
pub struct GadgetOptions {
    /// configfs mount point (`/sys/kernel/config`).
    pub configfs: PathBuf,
    /// The UDCs (`/sys/class/udc`).
    pub sysfs_udc: PathBuf,
    /// Under which the FunctionFS instances are mounted, one directory each.
    pub ffs_root: PathBuf,
}

impl Default for GadgetOptions {
    fn default() -> Self {
        GadgetOptions {
            configfs: PathBuf::from("/sys/kernel/config"),
            sysfs_udc: PathBuf::from("/sys/class/udc"),
            ffs_root: PathBuf::from("/run/station-sim/ffs"),
        }
    }
}

struct Plugged {
    gadget: Gadget,
    udc: String,
}

/// A running gadget bench. [`GadgetBench::shutdown`] unbinds and removes the gadgets.
pub struct GadgetBench {
    bench: Bench,
    /// By UDID.
    gadgets: Arc<Mutex<HashMap<String, Plugged>>>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for GadgetBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GadgetBench")
            .field("bench", &self.bench)
            .finish_non_exhaustive()
    }
}

impl GadgetBench {
    /// Makes a gadget of every phone of `bench`, each on a free UDC, and binds those the
    /// bench has plugged in. Fails when there are fewer free UDCs than phones.
    pub async fn start(bench: Bench, options: GadgetOptions) -> Result<GadgetBench, GadgetError> {
        let phones = bench.ready_info().devices;
        let busy = busy_udcs(&options.configfs);
        let free: Vec<String> = udcs(&options.sysfs_udc)?
            .into_iter()
            .filter(|u| !busy.contains(u))
            .collect();
        if free.len() < phones.len() {
            return Err(GadgetError::Setup(format!(
                "{} phones but {} free UDCs in {} (busy: {busy:?}); load dummy_hcd with num={} \
                 (modprobe dummy_hcd num={})",
                phones.len(),
                free.len(),
                options.sysfs_udc.display(),
                phones.len(),
                phones.len()
            )));
        }
        let mut gadgets = HashMap::new();
        let mut ports = Vec::new();
        for (index, (phone, udc)) in phones.iter().zip(free).enumerate() {
            if !IOS_PRODUCT_IDS.contains(&phone.product_id) {
                return Err(GadgetError::Setup(format!(
                    "{}: product id {:#06x} is not an iOS device's (0x1290–0x12af)",
                    phone.udid, phone.product_id
                )));
            }
            let shape = PhoneShape {
                name: format!("station-sim-{index}"),
                product_id: phone.product_id as u16,
                udid: phone.udid.clone(),
                product: "iPhone".to_string(),
            };
            let options = options.clone();
            let speed_file = options.sysfs_udc.join(&udc).join("current_speed");
            let created = tokio::task::spawn_blocking(move || {
                Gadget::create(&options.configfs, &options.ffs_root, shape, speed_file)
            })
            .await
            .map_err(|e| GadgetError::Setup(format!("gadget setup panicked: {e}")))
            .and_then(|result| result);
            let (gadget, mux_ports) = match created {
                Ok(created) => created,
                Err(e) => {
                    // Leave nothing behind: the gadgets made so far go too.
                    let made: Vec<Plugged> = gadgets.into_values().collect();
                    let _ = tokio::task::spawn_blocking(move || {
                        for mut plugged in made {
                            plugged.gadget.remove();
                        }
                    })
                    .await;
                    return Err(e);
                }
            };
            tracing::info!(udid = %phone.udid, udc = %udc, gadget = %gadget.shape.name, "gadget ready");
            ports.extend(mux_ports.into_iter().map(|p| (phone.udid.clone(), p)));
            gadgets.insert(phone.udid.clone(), Plugged { gadget, udc });
        }
        let gadgets = Arc::new(Mutex::new(gadgets));
        let mut tasks = JoinSet::new();
        for (udid, port) in ports {
            tasks.spawn(serve_mux_port(udid, port, bench.shared().clone()));
        }
        let (attached, events) = bench.usb_events();
        let mut device_udids = HashMap::new();
        for info in attached {
            device_udids.insert(info.device_id, info.udid.clone());
            set_plugged(&gadgets, &info.udid, true);
        }
        tasks.spawn(follow_plugs(gadgets.clone(), events, device_udids));
        Ok(GadgetBench {
            bench,
            gadgets,
            tasks,
        })
    }

    pub fn bench(&self) -> &Bench {
        &self.bench
    }

    pub fn bench_mut(&mut self) -> &mut Bench {
        &mut self.bench
    }

    /// The bench's ready file, with each phone's UDC.
    pub fn ready_info(&self) -> ReadyInfo {
        let mut info = self.bench.ready_info();
        let gadgets = lock(&self.gadgets);
        for device in &mut info.devices {
            device.udc = gadgets.get(&device.udid).map(|p| p.udc.clone());
        }
        info
    }

    /// Unbinds every gadget (the host sees them go), removes them, stops the bench.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        let gadgets = self.gadgets.clone();
        let removal = tokio::task::spawn_blocking(move || {
            for (_, mut plugged) in lock(&gadgets).drain() {
                plugged.gadget.remove();
            }
        });
        if tokio::time::timeout(std::time::Duration::from_secs(10), removal)
            .await
            .is_err()
        {
            tracing::warn!("removing the gadgets took over 10 s; leaving the rest");
        }
        self.bench.shutdown().await;
    }
}

fn lock(
    gadgets: &Mutex<HashMap<String, Plugged>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Plugged>> {
    gadgets.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds (`plugged`) or unbinds the phone's gadget; failures are logged, the rest goes on.
fn set_plugged(gadgets: &Mutex<HashMap<String, Plugged>>, udid: &str, plugged: bool) {
    let gadgets = lock(gadgets);
    let Some(p) = gadgets.get(udid) else { return };
    let result = if plugged {
        p.gadget.bind(&p.udc)
    } else {
        p.gadget.unbind()
    };
    match result {
        Ok(()) => {
            tracing::info!(%udid, udc = %p.udc, plugged, "gadget {}", if plugged { "bound" } else { "unbound" })
        }
        Err(e) => tracing::error!(%udid, udc = %p.udc, error = %e, "gadget (un)bind failed"),
    }
}

/// Mirrors the bench's Attached/Detached onto the gadgets.
async fn follow_plugs(
    gadgets: Arc<Mutex<HashMap<String, Plugged>>>,
    mut events: broadcast::Receiver<Event>,
    mut device_udids: HashMap<u32, String>,
) {
    loop {
        match events.recv().await {
            Ok(Event::Attached(info)) => {
                device_udids.insert(info.device_id, info.udid.clone());
                let gadgets = gadgets.clone();
                let udid = info.udid.clone();
                let _ =
                    tokio::task::spawn_blocking(move || set_plugged(&gadgets, &udid, true)).await;
            }
            Ok(Event::Detached { device_id }) => {
                if let Some(udid) = device_udids.remove(&device_id) {
                    let gadgets = gadgets.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || set_plugged(&gadgets, &udid, false))
                            .await;
                }
            }
            Ok(Event::Paired { .. }) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "gadget plug follower fell behind");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The host's bulk OUT transfers of one session, for the mux driver.
struct SessionInput {
    events: Arc<tokio::sync::Mutex<mpsc::Receiver<PipeEvent>>>,
    /// A transfer that arrived before the session started (it started the session).
    first: Option<Vec<u8>>,
    /// Transfers taken so far in this session.
    taken: u64,
    /// A VERSION request in the middle of a session: handed to the next one.
    restart: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

/// The host's VERSION request (docs/protocol.md §2.6): a v1 header, protocol 0, length 20.
/// A host process that opens the mux interface anew (a new usbmuxd, the next `station`
/// command) starts with it while the configuration, and so our session, stays up: the
/// phone starts afresh, as a real one does when usbmuxd restarts.
fn is_version_request(transfer: &[u8]) -> bool {
    transfer.len() == 20 && transfer[..8] == [0, 0, 0, 0, 0, 0, 0, 20]
}

impl BulkIn for SessionInput {
    async fn read_transfer(&mut self) -> std::io::Result<Vec<u8>> {
        if let Some(first) = self.first.take() {
            self.taken += 1;
            return Ok(first);
        }
        let mut events = self.events.lock().await;
        loop {
            match events.recv().await {
                Some(PipeEvent::Transfer(bytes)) if self.taken > 0 && is_version_request(&bytes) => {
                    *self.restart.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the host started the mux afresh (VERSION)",
                    ));
                }
                Some(PipeEvent::Transfer(bytes)) => {
                    self.taken += 1;
                    return Ok(bytes);
                }
                // Enable can reach us after the first transfer: the same session.
                Some(PipeEvent::Connected) => continue,
                Some(PipeEvent::Disconnected) | None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "the host deconfigured the mux interface (unplug, reset or another configuration)",
                    ))
                }
            }
        }
    }

    fn transfer_size(&self) -> usize {
        MAX_TRANSFER
    }
}

struct SessionOutput(BulkWriter);

impl BulkOut for SessionOutput {
    async fn write_transfer(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        self.0.write_transfer(data).await
    }

    fn max_packet_size(&self) -> usize {
        self.0.max_packet_size()
    }
}

/// One mux interface: a mux session (the device end of docs/protocol.md §2.5–2.8, the
/// bench's [`crate::UsbDevice`]) starts when the host enables the interface or sends to it,
/// and ends when the interface goes away or the bench unplugs the phone; the connections
/// reach the same lockdownd and services as the bench's socket.
async fn serve_mux_port(udid: String, port: MuxPort, shared: Arc<Shared>) {
    let configuration = port.configuration;
    let writer = port.writer;
    let events = Arc::new(tokio::sync::Mutex::new(port.events));
    let restart = Arc::new(std::sync::Mutex::new(None));
    loop {
        // Idle: wait for the host to take the interface into use.
        let pending = restart.lock().unwrap_or_else(|p| p.into_inner()).take();
        let first = if pending.is_some() {
            pending
        } else {
            let mut rx = events.lock().await;
            match rx.recv().await {
                Some(PipeEvent::Connected) => None,
                Some(PipeEvent::Transfer(bytes)) => Some(bytes),
                Some(PipeEvent::Disconnected) => continue,
                None => return,
            }
        };
        let device = match UsbDevice::plugged(shared.clone(), &udid) {
            Ok(device) => device,
            Err(e) => {
                // The host saw the gadget just before the bench unplugged the phone.
                tracing::debug!(%udid, error = %e, "mux interface enabled for a phone not plugged in");
                continue;
            }
        };
        tracing::info!(%udid, configuration, "mux session starts");
        let input = SessionInput {
            events: events.clone(),
            first,
            taken: 0,
            restart: restart.clone(),
        };
        let end = device.serve(input, SessionOutput(writer.clone())).await;
        tracing::info!(%udid, configuration, ?end, "mux session ends");
    }
}

#[cfg(test)]
mod tests {
    use super::is_version_request;

    #[test]
    fn version_requests_are_recognised_by_their_v1_header() {
        let version = [
            0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(is_version_request(&version));
        let setup = [
            0, 0, 0, 2, 0, 0, 0, 0x11, 0xfe, 0xed, 0xfa, 0xce, 0, 0, 0xff, 0xff, 7,
        ];
        assert!(!is_version_request(&setup));
        assert!(!is_version_request(&version[..19]));
    }
}
