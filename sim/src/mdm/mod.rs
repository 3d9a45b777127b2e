//! Stand-in MDM services: what the station asks for bypass codes (mdm.md §1, §3).
//!
//! - [`Graph`] (`bench.graph()`): a Microsoft Entra token endpoint ([`entra`]) and
//!   Microsoft Graph's `deviceManagement/managedDevices` ([`graph`]) holding the bench
//!   phones' Intune records; its `bypassActivationLock` action releases a phone's lock on
//!   the stand-in Albert;
//! - [`Kandji`] (`bench.kandji()`): Kandji's device list and `secrets/bypasscode`.
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

pub use intune::{CertificateError, Graph};
pub use kandji::Kandji;
pub use service::{MdmOutcome, MdmRequest, MdmService};

use crate::error::SimError;
use crate::phone::Phone;
use crate::world::World;

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
    let keys = match &world.intune.certificate_file {
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
    let (kandji_listener, kandji_base) = listen("Kandji").await?;
    let graph = Graph::new(
        &world.intune,
        world.seed,
        token_base,
        graph_base,
        phones,
        keys,
    );
    let kandji = Kandji::new(&world.kandji, world.seed, kandji_base, phones);
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
    tasks.spawn(
        crate::http::serve(
            kandji::KandjiHandler(kandji.clone()),
            kandji_listener,
            stop.clone(),
        )
        .instrument(tracing::info_span!("kandji", url = %kandji.url())),
    );
    Ok(MdmServices { graph, kandji })
}
