//! Stand-in MDM services: what the station asks for bypass codes (docs/mdm.md §1, §3).
//!
//! - [`Graph`] (`bench.graph()`): a Microsoft Entra token endpoint ([`entra`]) and
//!   Microsoft Graph's `deviceManagement/managedDevices` ([`graph`]) holding the bench
//!   phones' Intune records; its `bypassActivationLock` action releases a phone's lock on
//!   the stand-in Albert;
//! - [`Kandji`] (`bench.kandji()`): Kandji's device list and `secrets/bypasscode`.
//!
//! Each also starts alone ([`GraphServer`], [`KandjiServer`]), holding the records a test
//! gives ([`ManagedDevice`], [`KandjiDevice`]), for tests of an MDM client; a bench starts
//! them with the same code.
//!
//! Each service has its own loopback port, as the real ones are separate hosts: a host that
//! builds one URL from another's base gets a 404 here too. They share the bench's HTTP server
//! code ([`crate::http`]) and its bounds (64 KiB bodies, header/body timeouts, connection
//! lifetime). Throttling (`429` + `Retry-After`, enforced), injected 5xx and latency are set
//! per service in the world file and at run time; every request is logged without secrets.

pub mod entra;
pub mod graph;
mod intune;
mod kandji;
mod service;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use intune::{CertificateError, Graph, ManagedDevice};
pub use kandji::{Kandji, KandjiDevice};
pub use service::{Budget, LoadReport, MdmOutcome, MdmRequest, MdmService};

use crate::error::SimError;
use crate::phone::Phone;
use crate::world::{IntuneSpec, KandjiSpec, World};

/// The running MDM stand-ins.
#[derive(Debug, Clone)]
pub(crate) struct MdmServices {
    pub graph: Graph,
    pub kandji: Kandji,
}

async fn listen(service: &'static str) -> Result<(tokio::net::TcpListener, String), SimError> {
    let (listener, addr) = crate::http::bind(0)
        .await
        .map_err(|source| SimError::MdmServer { service, source })?;
    Ok((listener, format!("http://{addr}")))
}

/// Binds the three services on loopback and spawns them into `tasks` until `stop`.
pub(crate) async fn start(
    world: &World,
    phones: &[Arc<Phone>],
    tasks: &mut JoinSet<()>,
    stop: &watch::Receiver<bool>,
) -> Result<MdmServices, SimError> {
    let records = intune::IntuneRecord::of_phones(phones);
    let graph = start_intune(&world.intune, world.seed, records, tasks, stop).await?;
    let kandji = start_kandji(&world.kandji, world.seed, phones, Vec::new(), tasks, stop).await?;
    Ok(MdmServices { graph, kandji })
}

/// The one start of the Kandji stand-in, in a bench or alone: binds the API on loopback and
/// spawns it into `tasks` until `stop`.
async fn start_kandji(
    spec: &KandjiSpec,
    seed: u64,
    phones: &[Arc<Phone>],
    given: Vec<KandjiDevice>,
    tasks: &mut JoinSet<()>,
    stop: &watch::Receiver<bool>,
) -> Result<Kandji, SimError> {
    let (listener, base) = listen("Kandji").await?;
    let kandji = Kandji::new(spec, seed, base, phones, given);
    tasks.spawn(
        crate::http::serve(
            kandji::KandjiHandler(kandji.clone()),
            listener,
            stop.clone(),
        )
        .instrument(tracing::info_span!("kandji", url = %kandji.url())),
    );
    Ok(kandji)
}

/// The one start of the Intune stand-in, in a bench or alone: loads the assertion keys,
/// binds the token endpoint and Graph on loopback and spawns both into `tasks` until `stop`.
async fn start_intune(
    spec: &IntuneSpec,
    seed: u64,
    records: Vec<intune::IntuneRecord>,
    tasks: &mut JoinSet<()>,
    stop: &watch::Receiver<bool>,
) -> Result<Graph, SimError> {
    let keys = match &spec.certificate_file {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| SimError::io("read the Intune certificate", path, e))?;
            intune::parse_assertion_keys(&text).map_err(|e| SimError::Certificate {
                path: PathBuf::from(path),
                reason: e.to_string(),
            })?
        }
    };
    let (token_listener, token_base) = listen("token endpoint").await?;
    let (graph_listener, graph_base) = listen("Graph").await?;
    let graph = Graph::new(spec, seed, token_base, graph_base, records, keys);
    tasks.spawn(
        crate::http::serve(
            intune::EntraHandler(graph.inner.clone()),
            token_listener,
            stop.clone(),
        )
        .instrument(tracing::info_span!("entra", url = %graph.token_url_base())),
    );
    tasks.spawn(
        crate::http::serve(
            intune::GraphHandler(graph.inner.clone()),
            graph_listener,
            stop.clone(),
        )
        .instrument(tracing::info_span!("graph", url = %graph.url())),
    );
    Ok(graph)
}

/// An MDM stand-in on its own (no bench, no usbmuxd, no phones) on `127.0.0.1`, holding the
/// records a test gives: [`GraphServer`] (the Entra token endpoint and Graph, each on a port
/// of its own) or [`KandjiServer`]. For tests of an MDM client. The service's handle (also
/// through `Deref`) has the run-time controls and the request log; the service stops when
/// this is dropped or shut down.
pub struct Standalone<S> {
    service: S,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// The Intune stand-in alone: see [`Standalone`].
pub type GraphServer = Standalone<Graph>;
/// The Kandji stand-in alone: see [`Standalone`].
pub type KandjiServer = Standalone<Kandji>;

impl Standalone<Graph> {
    /// Starts the Intune stand-in as `spec` sets it up (identities and secret left out are
    /// generated from `seed`), holding `devices` in this order. Needs a Tokio runtime.
    pub async fn start(
        spec: &IntuneSpec,
        seed: u64,
        devices: Vec<ManagedDevice>,
    ) -> Result<GraphServer, SimError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let records = devices
            .into_iter()
            .map(intune::IntuneRecord::standalone)
            .collect();
        let service = start_intune(spec, seed, records, &mut tasks, &stopped).await?;
        Ok(Standalone {
            service,
            stop,
            tasks,
        })
    }
}

impl Standalone<Kandji> {
    /// Starts the Kandji stand-in as `spec` sets it up (a token left out is generated from
    /// `seed`), holding `devices` in this order. Needs a Tokio runtime.
    pub async fn start(
        spec: &KandjiSpec,
        seed: u64,
        devices: Vec<KandjiDevice>,
    ) -> Result<KandjiServer, SimError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let service = start_kandji(spec, seed, &[], devices, &mut tasks, &stopped).await?;
        Ok(Standalone {
            service,
            stop,
            tasks,
        })
    }
}

impl<S> Standalone<S> {
    pub fn service(&self) -> &S {
        &self.service
    }

    /// Stops accepting, and waits for the service to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl<S> std::ops::Deref for Standalone<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.service
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Standalone<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Standalone").field(&self.service).finish()
    }
}

impl<S> Drop for Standalone<S> {
    fn drop(&mut self) {
        // The JoinSet aborts what is left when it is dropped right after.
        let _ = self.stop.send(true);
    }
}
