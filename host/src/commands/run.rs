//! `station run`: line mode. Also the engine of `station demo`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use station_config::{ColorMode, Encoding, StationConfig};
use tokio::sync::watch;

use crate::activation::{ActivationServer, RequestEncoding};
use crate::codes::CodeLookup;
use crate::error::{exit, StationError};
use crate::http::RetryPolicy;
use crate::ledger::Ledger;
use crate::line::events::{EventKind, EventSink, PhoneRef, Summary};
use crate::line::render::{self, Mode};
use crate::line::{publish, Line, LineOptions, RunLog, Shutdown};
use crate::phone::Bench;
use crate::slots::{PortPaths, Slots};

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
}

pub fn activation_server(config: &StationConfig) -> Result<ActivationServer, StationError> {
    let encoding = match config.activation.encoding {
        Encoding::Urlencoded => RequestEncoding::UrlEncoded,
        Encoding::Multipart => RequestEncoding::Multipart,
    };
    let server = ActivationServer::new(
        &config.activation.url,
        Duration::from_secs(config.activation.timeout_secs),
        RetryPolicy::from_config(&config.retry),
    )?
    .with_encoding(encoding)
    .with_command_timeout(Duration::from_secs(config.activation.command_timeout_secs))
    .with_session_max_age(Duration::from_secs(config.activation.session_max_age_secs));
    Ok(match &config.activation.user_agent {
        Some(user_agent) => server.with_user_agent(user_agent),
        None => server,
    })
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

/// Ctrl-C (or SIGTERM) once: drain; twice: abort.
fn watch_signals() -> watch::Receiver<Shutdown> {
    let (tx, rx) = watch::channel(Shutdown::Running);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut level = Shutdown::Running;
        loop {
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
    bench: Bench,
    config: &StationConfig,
    data_dir: &Path,
    codes: Arc<dyn CodeLookup>,
    args: RunArgs,
    mode: Mode,
) -> Result<Summary, StationError> {
    apply_colour(config.ui.color);
    let station_id = config.station.id.clone();
    // What can fail at start fails before a ledger is opened (or created for nothing).
    let server = Arc::new(activation_server(config)?);
    if args.once {
        // `--once` handles the phones attached now, so it needs usbmuxd now.
        if let Err(e) = bench.usbmuxd.list_devices().await {
            record_start_failure(data_dir, &station_id, &e).await;
            return Err(e);
        }
    }
    let (ledger, recovered) = {
        let data_dir = data_dir.to_path_buf();
        let id = station_id.clone();
        tokio::task::spawn_blocking(move || Ledger::open(&data_dir, &id))
            .await
            .map_err(|e| {
                StationError::new(
                    "internal",
                    exit::FAILURE,
                    format!("ledger task failed: {e}"),
                )
            })??
    };
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
        slots: Arc::new(Slots::new(config.slots.clone(), PortPaths::from_env())),
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
    ledger.close().await;
    result
}

/// How a failed run reads in the ledger: the error's stable code and its message.
fn failure_reason(e: &StationError) -> String {
    format!("{}: {}", e.code, e.message)
}

/// Records a run that failed before it started, in a ledger that exists already; none is
/// created just for that.
async fn record_start_failure(data_dir: &Path, station_id: &str, error: &StationError) {
    if !crate::ledger::ledger_path(data_dir).exists() {
        return;
    }
    let opened = {
        let (data_dir, id) = (data_dir.to_path_buf(), station_id.to_string());
        tokio::task::spawn_blocking(move || Ledger::open(&data_dir, &id)).await
    };
    let Ok(Ok((ledger, _))) = opened else {
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

/// The exit code of a run. `--once`: 0 when every phone is done, 1 when any needs
/// attention or the run was stopped early. A service run ends only when it is asked to:
/// 0 when it drained cleanly (phones needing attention are in the summary and the
/// ledger, not a failure of the station), 1 when a second signal cut phones short.
pub fn exit_code(summary: &Summary, once: bool) -> u8 {
    let clean = if once {
        summary.failed() == 0 && !summary.stopped_early
    } else {
        !summary.aborted
    };
    if clean {
        0
    } else {
        exit::FAILURE
    }
}

pub fn mode(json: bool) -> Mode {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Mode::Ndjson
    } else {
        Mode::Terminal
    }
}

/// The configured sources as one chain, or a lookup that explains none is configured.
pub fn code_lookup(config: &StationConfig) -> Result<Arc<dyn CodeLookup>, StationError> {
    Ok(match crate::codes::Chain::configured(config)? {
        Some(chain) => Arc::new(chain),
        None => Arc::new(super::activate::NoSources),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Outcome;
    use crate::line::events::Attention;

    fn summary(attention: usize, stopped_early: bool, aborted: bool) -> Summary {
        let phone = PhoneRef {
            udid: "U".into(),
            slot: "A1".into(),
        };
        Summary {
            attention: (0..attention)
                .map(|_| Attention {
                    phone: phone.clone(),
                    serial: None,
                    outcome: Outcome::LockedNoCode,
                    message: "no code".into(),
                })
                .collect(),
            stopped_early,
            aborted,
            ..Summary::default()
        }
    }

    #[test]
    fn a_service_stopped_on_request_exits_0_unless_it_cut_phones_short() {
        assert_eq!(exit_code(&summary(0, true, false), false), 0);
        assert_eq!(
            exit_code(&summary(2, true, false), false),
            0,
            "phones needing attention are in the summary, not a station failure"
        );
        assert_eq!(exit_code(&summary(0, true, true), false), exit::FAILURE);
    }

    #[test]
    fn once_keeps_its_needs_attention_exit_code() {
        assert_eq!(exit_code(&summary(0, false, false), true), 0);
        assert_eq!(exit_code(&summary(1, false, false), true), exit::FAILURE);
        assert_eq!(exit_code(&summary(0, true, false), true), exit::FAILURE);
    }
}
