//! `station demo`: the real line (`station run --once`) on an in-process virtual bench with
//! a realistic mix of phones, then the report. Everything lives in a temporary directory
//! that is removed at the end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use station_config::StationConfig;
use station_protocol::pairing::UsbmuxdPairStore;
use station_protocol::usbmux::Address;
use station_sim::world::demo;
use station_sim::{Bench as SimBench, BenchConfig, World};

use super::report::{report, ReportArgs, ReportFormat};
use super::run::{self, RunArgs};
use crate::error::StationError;
use crate::line::render::Mode;
use crate::phone::{Bench, PairStore};
use crate::usbmuxd::Usbmuxd;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Phones on the virtual bench.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=128))]
    pub devices: u16,
    /// Delay of the stand-in activation server and MDM APIs, per answer.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub latency_ms: u64,
    /// Seed of the bench's phones (identities, codes).
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
}

pub async fn demo(args: &DemoArgs, json: bool) -> Result<u8, StationError> {
    let failed = |what: &'static str, reason: String| StationError::Demo { what, reason };
    let dir = tempfile::Builder::new()
        .prefix("station-demo-")
        .tempdir()
        .map_err(|e| failed("cannot make a temporary directory", e.to_string()))?;
    let devices = usize::from(args.devices);
    let world = World::from_toml(
        &demo::world_toml(devices, args.seed, args.latency_ms),
        "demo world",
    )
    .map_err(|e| failed("demo world", e.to_string()))?;
    let socket = dir.path().join("usbmuxd.sock");
    let sim = SimBench::start(BenchConfig::new(&socket, world, dir.path().join("bench")))
        .await
        .map_err(|e| failed("cannot start the virtual bench", e.to_string()))?;
    let sim = Arc::new(sim);
    let result = run_demo(&sim, devices, args, json, dir.path()).await;
    if let Ok(sim) = Arc::try_unwrap(sim) {
        sim.shutdown().await;
    }
    drop(dir);
    result
}

/// Runs the line; the demo's red rows are part of the show, so only a failed run is an error.
async fn run_demo(
    sim: &Arc<SimBench>,
    devices: usize,
    args: &DemoArgs,
    json: bool,
    dir: &Path,
) -> Result<u8, StationError> {
    let mut config =
        StationConfig::load(sim.station_config()).map_err(crate::commands::config::invalid)?;
    config.station.id = "demo".into();
    config.station.data_dir = dir.join("station-data");
    let address = Address::Unix(dir.join("usbmuxd.sock"));
    let timeout = Duration::from_secs(config.station.timeout_secs);
    let bench = Bench::new(
        Usbmuxd::new(address.clone(), timeout),
        PairStore::Usbmuxd(UsbmuxdPairStore::new(address, timeout)),
        Some(config.station.data_dir.join(crate::identity::IDENTITY_FILE)),
    );
    let codes = run::code_lookup(&config)?;
    let mode = run::mode(json);
    if mode == Mode::Terminal {
        println!(
            "Virtual bench: {} phones (clean, MDM-locked with codes in the stand-in Intune, a stale code, a user-locked one, activated ones, one waiting for Trust, one pulled out and plugged back), server latency {} ms.\n",
            devices,
            args.latency_ms
        );
    }

    let replug = demo::unplugged_index(devices)
        .and_then(|i| sim.ready_info().devices.get(i).map(|d| d.udid.clone()))
        .map(|udid| tokio::spawn(unplug_and_replug(Arc::clone(sim), udid)));
    let data_dir = config.station.data_dir.clone();
    let summary = run::run(
        bench,
        &config,
        &data_dir,
        codes,
        RunArgs {
            once: true,
            redo: false,
            concurrency: None,
            trust_wait: Duration::from_secs(30),
            replug_grace: Duration::from_secs(20),
        },
        mode,
    )
    .await;
    if let Some(task) = replug {
        task.abort();
        let _ = task.await;
    }
    let summary = summary?;

    if mode == Mode::Terminal {
        let report_args = ReportArgs {
            since: None,
            until: None,
            outcomes: Vec::new(),
            locked: false,
            latest: true,
            run: Some(summary.run_id.clone()),
            format: Some(ReportFormat::Table),
        };
        println!(
            "\nReport (`station report --latest`):\n{}",
            report(&report_args, &data_dir, false)?
        );
    }
    Ok(0)
}

/// Pulls the phone out once its activation exchange has started, plugs it back 1.5 s later.
async fn unplug_and_replug(sim: Arc<SimBench>, udid: String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sim.albert().requests_for(&udid).is_empty() {
        if tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if sim.unplug(&udid).is_ok() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = sim.plug(&udid);
    }
}
