//! A running bench: the usbmuxd socket, the phones behind it, their plug/unplug schedule.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::activation::albert::{Albert, AlbertProxy};
use crate::activation::device::MobileActivationd;
use crate::activation::Authority;
use crate::error::SimError;
use crate::hub::Hub;
use crate::lockdownd::LockdownContext;
use crate::mdm::{Graph, Kandji, MdmServices};
use crate::phone::Phone;
use crate::ready::{ReadyDevice, ReadyInfo, ReadyIntune, ReadyKandji, ReadyMdm};
use crate::services::ServiceRegistry;
use crate::state::StateDir;
use crate::station_config::{self, ConfigPaths, ConfigSource};
use crate::usbmuxd::Listeners;
use crate::world::{default_world, ActivationState, Trust, World};

/// A real phone drops an idle lockdown connection after about 10 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a bench.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Unix socket to serve usbmuxd on (clients: `USBMUXD_SOCKET_ADDRESS=UNIX:<path>`).
    pub socket: PathBuf,
    pub world: World,
    /// SystemBUID, host pair records, phone keys and phone pairings live here.
    pub state_dir: PathBuf,
    /// Lockdown closes a connection without a request for this long.
    pub idle_timeout: Duration,
    /// Services every phone can start, on top of `com.apple.mobileactivationd` (which a
    /// service registered here under that name replaces).
    pub services: ServiceRegistry,
    /// Loopback port of the stand-in activation server (0: any free port).
    pub activation_port: u16,
    /// Keep each phone's RSA key in `<state_dir>/keys` so restarts need no key generation
    /// (and pairings remembered across restarts stay valid).
    pub cache_keys: bool,
    /// The bypass-code sources the ready-made station configuration lists, in order
    /// (default: Intune, then Kandji).
    pub station_config_sources: Vec<ConfigSource>,
}

impl BenchConfig {
    pub fn new(socket: impl Into<PathBuf>, world: World, state_dir: impl Into<PathBuf>) -> Self {
        BenchConfig {
            socket: socket.into(),
            world,
            state_dir: state_dir.into(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            services: ServiceRegistry::new(),
            activation_port: 0,
            cache_keys: true,
            station_config_sources: station_config::DEFAULT_SOURCES.to_vec(),
        }
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        let base = std::env::temp_dir().join("station-sim");
        BenchConfig::new(
            base.join("usbmuxd.sock"),
            default_world(3, 0),
            base.join("state"),
        )
    }
}

/// What the connection tasks share.
pub(crate) struct Shared {
    pub hub: Arc<Hub>,
    pub state: StateDir,
    pub system_buid: String,
    pub lockdown: Arc<LockdownContext>,
    pub listeners: Listeners,
}

/// A running bench. Dropping it stops everything too; [`Bench::shutdown`] also waits.
pub struct Bench {
    shared: Arc<Shared>,
    albert: Albert,
    albert_proxy: AlbertProxy,
    mdm: MdmServices,
    station_config: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The usbmuxd socket's accept loop (it owns every client connection); `None` while
    /// usbmuxd is stopped.
    usbmuxd: Option<tokio::task::JoinHandle<()>>,
    socket_removed: bool,
}

impl std::fmt::Debug for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bench")
            .field("socket", &self.socket)
            .field("phones", &self.shared.hub.phones().len())
            .finish()
    }
}

impl Bench {
    /// Resolves the world, binds the socket and starts serving. Phones plugged in at start
    /// (no `plug_at_ms` in their first period) are plugged in before this returns.
    pub async fn start(cfg: BenchConfig) -> Result<Bench, SimError> {
        let profiles = cfg.world.resolve()?;
        let state = StateDir::new(&cfg.state_dir);
        let setup = {
            let state = state.clone();
            let cache_keys = cfg.cache_keys;
            tokio::task::spawn_blocking(move || -> Result<(String, Vec<Arc<Phone>>), SimError> {
                state.create()?;
                let buid = state.system_buid()?;
                let phones = profiles
                    .into_iter()
                    .map(|p| Phone::new(p, &state, cache_keys).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((buid, phones))
            })
        };
        let (system_buid, phones) = setup.await.map_err(|e| SimError::State {
            path: cfg.state_dir.clone(),
            reason: e.to_string(),
        })??;

        // The phones and the stand-in server share one signing authority (see activation).
        let authority = Arc::new(Authority::generate());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let (http, addr) = crate::http::bind(cfg.activation_port)
            .await
            .map_err(|source| SimError::ActivationServer {
                port: cfg.activation_port,
                source,
            })?;
        let albert = Albert::new(
            addr,
            authority.clone(),
            &phones,
            &cfg.world.activation_server,
            cfg.world.seed,
        );
        let (proxy_listener, proxy_addr) = crate::http::bind(0)
            .await
            .map_err(|e| SimError::AlbertProxy(e.to_string()))?;
        let albert_proxy =
            AlbertProxy::new(proxy_addr, addr).map_err(|e| SimError::AlbertProxy(e.to_string()))?;
        let mdm = crate::mdm::start(&cfg.world, &phones, &mut tasks, &stop_rx).await?;
        let mut services = ServiceRegistry::new();
        services.register(MobileActivationd::new(authority.clone(), cfg.idle_timeout));
        services.register(crate::mcinstall::McInstall::new(cfg.idle_timeout));
        services.extend(&cfg.services);

        let listener = bind(&cfg.socket)?;
        let shared = Arc::new(Shared {
            hub: Arc::new(Hub::new(phones)),
            state,
            system_buid,
            lockdown: Arc::new(LockdownContext {
                idle_timeout: cfg.idle_timeout,
                services,
                authority,
            }),
            listeners: Listeners::default(),
        });

        tasks.spawn(
            crate::http::serve(albert.clone(), http, stop_rx.clone())
                .instrument(tracing::info_span!("albert", url = %albert.url())),
        );
        tasks.spawn(
            crate::activation::albert::proxy::serve(
                albert_proxy.clone(),
                proxy_listener,
                stop_rx.clone(),
            )
            .instrument(tracing::info_span!("albert_proxy", url = %albert_proxy.url())),
        );
        // The world's times count from here (crate::plugs: the schedule and leaving when idle).
        crate::plugs::start(&shared.hub, tokio::time::Instant::now(), &mut tasks)?;
        let usbmuxd = spawn_usbmuxd(listener, &shared, stop_rx, &cfg.socket);
        let station_config = write_station_config(&cfg, &albert, &mdm).await?;
        tracing::info!(
            socket = %cfg.socket.display(),
            phones = shared.hub.phones().len(),
            activation_url = %albert.url(),
            albert_proxy = %albert_proxy.url(),
            graph_url = %mdm.graph.url(),
            kandji_url = %mdm.kandji.url(),
            station_config = %station_config.display(),
            "bench listening"
        );
        Ok(Bench {
            shared,
            albert,
            albert_proxy,
            mdm,
            station_config,
            socket: cfg.socket,
            state_dir: cfg.state_dir,
            stop,
            tasks,
            usbmuxd: Some(usbmuxd),
            socket_removed: false,
        })
    }

    /// Makes usbmuxd go away as the real daemon does when it exits (Debian's runs with
    /// `--systemd` and exits when the bench empties): every open connection, listeners and
    /// device streams alike, is closed and the socket refuses connections. Like usbmuxd
    /// 1.1.1 the socket file stays behind (a new daemon replaces it). The phones stay
    /// plugged in. A no-op when it is already stopped.
    pub async fn stop_usbmuxd(&mut self) {
        let Some(handle) = self.usbmuxd.take() else {
            return;
        };
        // Aborting the accept loop drops the listener and its client tasks with it.
        handle.abort();
        let _ = handle.await;
        self.shared.hub.daemon_restarted();
        tracing::info!(socket = %self.socket.display(), "usbmuxd stopped");
    }

    /// Brings usbmuxd back on the same socket with the phones still plugged in, numbered
    /// afresh from DeviceID 1 like a new daemon process. A no-op when it is running.
    pub fn start_usbmuxd(&mut self) -> Result<(), SimError> {
        if self.usbmuxd.is_some() {
            return Ok(());
        }
        let listener = bind(&self.socket)?;
        self.usbmuxd = Some(spawn_usbmuxd(
            listener,
            &self.shared,
            self.stop.subscribe(),
            &self.socket,
        ));
        tracing::info!(socket = %self.socket.display(), "usbmuxd started again");
        Ok(())
    }

    /// Whether usbmuxd is serving (see [`Bench::stop_usbmuxd`]).
    pub fn usbmuxd_running(&self) -> bool {
        self.usbmuxd.is_some()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn system_buid(&self) -> &str {
        &self.shared.system_buid
    }

    /// The stand-in activation server: its URL, runtime controls (latency, injected
    /// failures) and the log of what it received.
    pub fn albert(&self) -> &Albert {
        &self.albert
    }

    /// The proxy that answers as `https://albert.apple.com` and hands every request to
    /// [`Bench::albert`]: for clients whose activation URLs are fixed (`https_proxy`).
    pub fn albert_proxy(&self) -> &AlbertProxy {
        &self.albert_proxy
    }

    /// The stand-in Intune: Microsoft Entra token endpoint and Graph `managedDevices`, with
    /// run-time controls (throttling, failures, permissions, filters) and its request log.
    pub fn graph(&self) -> &Graph {
        &self.mdm.graph
    }

    /// The stand-in Kandji API: run-time controls and its request log.
    pub fn kandji(&self) -> &Kandji {
        &self.mdm.kandji
    }

    /// The ready-made station configuration pointing at this bench (in the state dir).
    pub fn station_config(&self) -> &Path {
        &self.station_config
    }

    /// `http://127.0.0.1:PORT/deviceservices`: the base of the activation endpoints.
    pub fn activation_url(&self) -> &str {
        self.albert.url()
    }

    /// The bench as the `--ready` file describes it (current plug state included).
    pub fn ready_info(&self) -> ReadyInfo {
        let devices = self
            .shared
            .hub
            .phones()
            .iter()
            .map(|phone| {
                let p = phone.profile();
                let device_id = self.shared.hub.device_id(&p.udid);
                ReadyDevice {
                    udid: p.udid.clone(),
                    serial: p.serial.clone(),
                    product_type: p.product_type.clone(),
                    product_version: p.product_version.clone(),
                    build_version: p.build_version.clone(),
                    hardware_model: p.hardware_model.clone(),
                    marketing_name: p.marketing_name.clone(),
                    device_class: p.device_class.clone(),
                    device_name: p.device_name.clone(),
                    activation_state: phone.activation_state().as_str().to_string(),
                    trust: p.trust.as_str().to_string(),
                    trust_delay_ms: p.trust_delay_ms,
                    passcode_locked: phone.passcode_locked(),
                    imei: p.imei.clone(),
                    imei2: p.imei2.clone(),
                    wifi_address: p.wifi_address.clone(),
                    unique_chip_id: p.unique_chip_id,
                    location_id: self
                        .shared
                        .hub
                        .location_id(&p.udid)
                        .unwrap_or(p.location_id),
                    product_id: p.product_id,
                    plug_at_ms: p.single_plug_period().and_then(|only| only.plug_at_ms),
                    unplug_at_ms: p.single_plug_period().and_then(|only| only.unplug_at_ms),
                    plug_periods: if p.plug_periods.len() > 1 {
                        p.plug_periods.clone()
                    } else {
                        Vec::new()
                    },
                    leave_when_idle_ms: p.leave_when_idle_ms,
                    attached: device_id.is_some(),
                    device_id,
                    lock: p.lock.as_str().to_string(),
                    codes: p.codes.clone(),
                    stale_codes: p.stale_codes.clone(),
                    enrollments: p.enrollments.clone(),
                    lock_released: phone.activation_lock_released(),
                    udc: None,
                }
            })
            .collect();
        let graph = &self.mdm.graph;
        ReadyInfo {
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            system_buid: self.shared.system_buid.clone(),
            pid: std::process::id(),
            activation_url: self.albert.url().to_string(),
            albert_proxy: Some(self.albert_proxy.url()),
            mdm: Some(ReadyMdm {
                intune: ReadyIntune {
                    token_url_base: graph.token_url_base().to_string(),
                    token_url: graph.token_url(),
                    graph_url: graph.url().to_string(),
                    tenant: graph.tenant().to_string(),
                    client_id: graph.client_id().to_string(),
                    scope: graph.scope().to_string(),
                },
                kandji: ReadyKandji {
                    api_url: self.mdm.kandji.url().to_string(),
                },
            }),
            station_config: Some(self.station_config.clone()),
            devices,
        }
    }

    /// The phones plugged in now and every later Attached/Detached/Paired, atomically (the
    /// gadget bench mirrors them onto its USB gadgets).
    pub fn usb_events(
        &self,
    ) -> (
        Vec<station_protocol::usbmux::DeviceInfo>,
        tokio::sync::broadcast::Receiver<station_protocol::usbmux::Event>,
    ) {
        self.shared.hub.subscribe()
    }

    /// Plugs a phone in (listeners see `Attached`); returns its new DeviceID.
    pub fn plug(&self, udid: &str) -> Result<u32, SimError> {
        self.shared.hub.plug(udid)
    }

    /// Pulls a phone out (listeners see `Detached`, its connections close).
    pub fn unplug(&self, udid: &str) -> Result<(), SimError> {
        self.shared.hub.unplug(udid).map(|_| ())
    }

    fn phone(&self, udid: &str) -> Result<&Arc<Phone>, SimError> {
        self.shared
            .hub
            .phones()
            .iter()
            .find(|p| station_protocol::udid::same_udid(p.udid(), udid))
            .ok_or_else(|| SimError::UnknownDevice {
                udid: udid.to_string(),
            })
    }

    /// Locks or unlocks a phone's passcode (an operator unlocking it).
    pub fn set_passcode_locked(&self, udid: &str, locked: bool) -> Result<(), SimError> {
        self.phone(udid)?.set_passcode_locked(locked);
        Ok(())
    }

    /// The activation state lockdown reports for a phone right now.
    pub fn activation_state(&self, udid: &str) -> Result<ActivationState, SimError> {
        Ok(self.phone(udid)?.activation_state())
    }

    /// How many lockdown sessions the phone started and idle connections it closed.
    pub fn lockdown_stats(&self, udid: &str) -> Result<crate::phone::LockdownStats, SimError> {
        Ok(self.phone(udid)?.lockdown_stats())
    }

    /// Whether the phone is plugged in and how the host uses it (`leave_when_idle_ms`).
    pub fn host_use(&self, udid: &str) -> Result<crate::phone::HostUse, SimError> {
        Ok(self.phone(udid)?.host_use())
    }

    /// Sets a phone's activation state as if it had been set up that way (persisted).
    pub async fn set_activation_state(
        &self,
        udid: &str,
        state: ActivationState,
    ) -> Result<(), SimError> {
        self.phone(udid)?.set_activation_state(state).await;
        Ok(())
    }

    /// Changes how the virtual user answers the trust dialog from now on.
    pub fn set_trust(&self, udid: &str, trust: Trust, delay: Duration) -> Result<(), SimError> {
        self.phone(udid)?.set_trust(trust, delay);
        Ok(())
    }

    /// Stops serving, closes every connection and removes the socket.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.shared.hub.unplug_all();
        if let Some(usbmuxd) = self.usbmuxd.take() {
            let _ = usbmuxd.await;
        }
        self.tasks.shutdown().await;
        self.remove_socket();
        tracing::info!(socket = %self.socket.display(), "bench stopped");
    }

    fn remove_socket(&mut self) {
        if !self.socket_removed {
            self.socket_removed = true;
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.shared.hub.unplug_all();
        if let Some(usbmuxd) = self.usbmuxd.take() {
            usbmuxd.abort();
        }
        self.tasks.abort_all();
        self.remove_socket();
    }
}

/// Writes the station configuration and its secret files into the state directory, with
/// absolute paths so it works from any directory.
async fn write_station_config(
    cfg: &BenchConfig,
    albert: &Albert,
    mdm: &MdmServices,
) -> Result<PathBuf, SimError> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let paths = ConfigPaths::in_state_dir(&absolute(&cfg.state_dir));
    let socket = absolute(&cfg.socket);
    let activation_url = albert.url().to_string();
    let (graph, kandji) = (mdm.graph.clone(), mdm.kandji.clone());
    let sources = cfg.station_config_sources.clone();
    let config = paths.config.clone();
    tokio::task::spawn_blocking(move || {
        let at = station_config::Endpoints {
            socket: &socket,
            activation_url: &activation_url,
            graph: &graph,
            kandji: &kandji,
        };
        station_config::write(&paths, &at, &sources)
    })
    .await
    .map_err(|e| SimError::State {
        path: config.clone(),
        reason: e.to_string(),
    })??;
    Ok(config)
}

/// Binds the socket, replacing a stale socket file but never a live server.
fn bind(path: &Path) -> Result<UnixListener, SimError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| SimError::io("create directory", parent, e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SimError::SocketInUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(|e| SimError::io("remove stale socket", path, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| SimError::io("listen on", path, e))?;
    // usbmuxd makes its socket world-accessible; tools run as other users too.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
    Ok(listener)
}

fn spawn_usbmuxd(
    listener: UnixListener,
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
    socket: &Path,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        accept_loop(listener, shared.clone(), stop)
            .instrument(tracing::info_span!("usbmuxd", socket = %socket.display())),
    )
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    clients.spawn(crate::usbmuxd::serve_client(shared.clone(), stream));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    }
    clients.shutdown().await;
}
