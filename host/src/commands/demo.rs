//! `station demo`: the real line (`station run --once`) on an in-process virtual bench with
//! a realistic mix of phones, then the report. Everything lives in a temporary directory
//! that is removed at the end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use station_config::StationConfig;
use station_sim::world::demo;
use station_sim::{Bench as SimBench, BenchConfig, World};

use crate::error::StationError;
use crate::ledger::Filter;
use crate::line::render::Mode;
use crate::line::runner::{self, RunArgs};
use crate::output::report::{render, ReportFormat};
use crate::output::{live_mode, Output};
use crate::station::{self, Options, Station};

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
    /// Show the live view of the line (docs/dashboard.md) at this address of this machine,
    /// e.g. 127.0.0.1:8080 (port 0: any free port; the address is printed on stderr). The
    /// page stays up after the demo until Ctrl-C, so it can be looked at.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
}

/// Runs the demo; its screen (or NDJSON) is shown as it goes.
pub async fn demo(args: &DemoArgs, json: bool) -> Result<Output, StationError> {
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
    result.map(Output::Streamed)
}

/// Runs the line; the demo's red rows are part of the show, so only a failed run is an error.
async fn run_demo(
    sim: &Arc<SimBench>,
    devices: usize,
    args: &DemoArgs,
    json: bool,
    dir: &Path,
) -> Result<u8, StationError> {
    // The bench's own configuration (its usbmuxd, its stand-in servers), none of the
    // command line's: the demo touches nothing of the real station.
    let mut config = StationConfig::load(sim.station_config()).map_err(station::invalid_config)?;
    config.station.id = "demo".into();
    config.station.data_dir = dir.join("station-data");
    // A bench's labels, as a real one has them in `[slots]`: rows A, B, … of four.
    for (index, device) in sim.ready_info().devices.iter().enumerate() {
        let row = char::from(b'A' + u8::try_from(index / 4 % 26).unwrap_or(0));
        config.slots.insert(
            station_config::SlotKey::Location(device.location_id),
            format!("{row}{}", index % 4 + 1),
        );
    }
    let station = Station::with_config(Options::default(), config);
    let bench = station.bench()?;
    let codes = station.code_lookup()?;
    let mode = live_mode(json);
    // The demo's view is for this machine only: it has no `[ui] allow_remote` to give.
    let web = match args.http.as_deref() {
        Some(addr) => Some(Arc::new(
            crate::web::start("--http", addr, false, &station.config()?.slots).await?,
        )),
        None => None,
    };
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
    let summary = runner::run(
        &station,
        bench,
        codes,
        RunArgs {
            once: true,
            redo: false,
            concurrency: None,
            trust_wait: Duration::from_secs(30),
            replug_grace: Duration::from_secs(20),
            web: web.clone(),
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
        let filter = Filter {
            run_id: Some(summary.run_id.clone()),
            latest_per_phone: true,
            ..Filter::default()
        };
        let records = match station.ledger_reader()? {
            Some(reader) => reader.attempts(&filter)?,
            None => Vec::new(),
        };
        println!(
            "\nReport (`station report --latest`):\n{}",
            render(&records, ReportFormat::Table)?
        );
    }
    if let Some(web) = web {
        // A newcomer opens the page when the demo is already over: it stays up until they
        // are done with it, unless they stopped the demo themselves.
        if !summary.stopped_early {
            eprintln!(
                "station: the demo is over; its live view stays up at {} until Ctrl-C",
                web.url()
            );
            crate::line::runner::stop_requested(&mut crate::line::runner::terminate_signal()).await;
        }
        web.close();
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
