//! A run of the line, as `station run` and `station demo` start it: the ledger opened and
//! the run recorded in it, the events rendered and published for `station watch`, the
//! line worked until it is done or stopped, the run closed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use station_config::ColorMode;
use tokio::sync::watch;

use super::events::{EventKind, EventSink, PhoneRef, Summary};
use super::render::{self, Mode};
use super::{publish, Line, LineOptions, RunLog, Shutdown};
use crate::codes::CodeLookup;
use crate::error::StationError;
use crate::http::RetryPolicy;
use crate::phone::Bench;
use crate::station::Station;

#[derive(Debug, Clone)]
pub struct RunArgs {
    pub once: bool,
    pub redo: bool,
    /// Overrides `[station] concurrency`.
    pub concurrency: Option<u32>,
    /// How long to wait for the operator to tap Trust on an activated phone.
    pub trust_wait: Duration,
    /// `--once`: how long an unplugged phone (or usbmuxd) may stay away before its phones
    /// count as interrupted.
    pub replug_grace: Duration,
    /// The live view, bound by the caller, fed the run's events (docs/dashboard.md).
    pub web: Option<Arc<crate::web::WebView>>,
}

/// A run id that sorts by time: `run-20261127T061502Z-3f9a`.
fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("run-{stamp}-{:04x}", (nanos ^ std::process::id()) & 0xffff)
}

/// The SIGTERM stream of this process, if it can be had (a supervisor's stop).
pub(crate) fn terminate_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
}

/// The next Ctrl-C or SIGTERM (`term` from [`terminate_signal`]).
pub(crate) async fn stop_requested(term: &mut Option<tokio::signal::unix::Signal>) {
    let terminate = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Ctrl-C (or SIGTERM) once: drain; twice: abort.
fn watch_signals() -> watch::Receiver<Shutdown> {
    let (tx, rx) = watch::channel(Shutdown::Running);
    tokio::spawn(async move {
        let mut term = terminate_signal();
        let mut level = Shutdown::Running;
        loop {
            stop_requested(&mut term).await;
            level = if level == Shutdown::Running {
                Shutdown::Drain
            } else {
                Shutdown::Abort
            };
            if tx.send(level).is_err() || level == Shutdown::Abort {
                break;
            }
        }
    });
    rx
}

/// Runs the line with everything built from the configuration; renders to the terminal or
/// as NDJSON; returns the summary once the ledger has the run closed.
pub async fn run(
    station: &Station,
    bench: Bench,
    codes: Arc<dyn CodeLookup>,
    args: RunArgs,
    mode: Mode,
) -> Result<Summary, StationError> {
    let config = station.config()?;
    let data_dir = station.data_dir()?;
    apply_colour(config.ui.color);
    let station_id = config.station.id.clone();
    // What can fail at start fails before a ledger is opened (or created for nothing).
    let server = Arc::new(station.activation_server()?);
    let slots = Arc::new(station.slots()?);
    if args.once {
        // `--once` handles the phones attached now, so it needs usbmuxd now.
        if let Err(e) = bench.transport.list_devices().await {
            record_start_failure(station, &e).await;
            return Err(e);
        }
    }
    // Checked by the preflight; resolved before the ledger opens, like the rest.
    let fleet =
        crate::fleet::Settings::from_config(config, &station_config::Environment::process())?;
    let (ledger, recovered) = station.open_ledger().await?;
    // In its own task, reading the outbox: no phone waits on the fleet database.
    let shipper = fleet.map(|settings| crate::fleet::shipper::spawn(settings, ledger.clone()));
    let run_id = new_run_id();
    ledger.start_run(&run_id, SystemTime::now()).await?;
    tracing::info!(ledger = %ledger.path().display(), run_id, "run started");

    let (events, rx) = EventSink::channel();
    // Bound while this run holds the ledger lock, closed before it lets go of it.
    let (rx, published) = match publish::Publisher::bind(data_dir) {
        Ok(publisher) => {
            let (rx, handle) = publish::tee(rx, publisher);
            (rx, Some(handle))
        }
        Err(e) => {
            // Watching is a convenience: the line runs without it.
            tracing::warn!("{e}; `station watch` cannot attach to this run");
            (rx, None)
        }
    };
    let (rx, viewed) = match &args.web {
        Some(web) => {
            let (rx, handle) = crate::web::tee(rx, Arc::clone(web));
            (rx, Some(handle))
        }
        None => (rx, None),
    };
    let renderer = tokio::spawn(render::render(rx, mode));
    for r in recovered {
        events.send(EventKind::Recovered {
            phone: PhoneRef {
                slot: r
                    .slot
                    .clone()
                    .unwrap_or_else(|| format!("0x{:08x}", r.location_id)),
                udid: r.udid.clone(),
            },
            step: r.step.clone(),
        });
    }

    let line = Line {
        bench: Arc::new(bench),
        server,
        codes,
        log: Arc::new(RunLog {
            ledger: ledger.clone(),
            run_id: run_id.clone(),
        }),
        slots,
        events,
        options: LineOptions {
            run_id: run_id.clone(),
            station_id,
            once: args.once,
            redo: args.redo,
            concurrency: args
                .concurrency
                .unwrap_or(config.station.concurrency)
                .max(1) as usize,
            retry: RetryPolicy::from_config(&config.retry),
            trust_wait: args.trust_wait,
            replug_grace: args.replug_grace,
        },
    };
    let result = line.run(watch_signals()).await;
    // The line's sink is gone with it: the renderer drains what is left and stops.
    let _ = renderer.await;
    if let Some(viewed) = viewed {
        let _ = viewed.await;
    }
    if let Some(published) = published {
        let _ = published.await;
    }
    let closed = match &result {
        Ok(_) => ledger.finish_run(&run_id, SystemTime::now()).await,
        Err(e) => {
            ledger
                .fail_run(&run_id, SystemTime::now(), &failure_reason(e))
                .await
        }
    };
    if let Err(e) = closed {
        tracing::error!("could not close the run in the ledger: {e}");
    }
    if let Some(shipper) = shipper {
        shipper.stop(SHIPPER_DRAIN).await;
    }
    ledger.close().await;
    result
}

/// How long a stopping run gives the fleet shipper to send what is left; the rest waits
/// in the outbox for the next start.
const SHIPPER_DRAIN: Duration = Duration::from_secs(10);

/// How a failed run reads in the ledger: the error's stable code and its message.
fn failure_reason(e: &StationError) -> String {
    format!("{}: {e}", e.code())
}

/// Records a run that failed before it started, in a ledger that exists already; none is
/// created just for that.
async fn record_start_failure(station: &Station, error: &StationError) {
    let Ok(data_dir) = station.data_dir() else {
        return;
    };
    if !crate::ledger::ledger_path(data_dir).exists() {
        return;
    }
    let Ok((ledger, _)) = station.open_ledger().await else {
        tracing::warn!("the failed start is not recorded: the ledger could not be opened");
        return;
    };
    let run_id = new_run_id();
    let now = SystemTime::now();
    let recorded = match ledger.start_run(&run_id, now).await {
        Ok(()) => ledger
            .fail_run(&run_id, now, &failure_reason(error))
            .await
            .map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = recorded {
        tracing::warn!("the failed start is not recorded: {e}");
    }
    ledger.close().await;
}

/// `[ui] color` for the live screen; `NO_COLOR` always wins.
fn apply_colour(mode: ColorMode) {
    let enabled = std::env::var_os("NO_COLOR").is_none()
        && match mode {
            ColorMode::Always => true,
            ColorMode::Never => false,
            ColorMode::Auto => console::colors_enabled(),
        };
    console::set_colors_enabled(enabled);
}
