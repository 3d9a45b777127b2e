//! `station run`: line mode, after the same checks as `station config check`.

use std::sync::Arc;
use std::time::Duration;

use crate::cli::RunOptions;
use crate::error::{exit, StationError};
use crate::line::events::Summary;
use crate::line::runner::{self, RunArgs};
use crate::output::{live_mode, Output};
use crate::station::Station;

pub async fn run(
    station: &Station,
    options: &RunOptions,
    json: bool,
) -> Result<Output, StationError> {
    let bench = station.bench()?;
    // A full or read-only data directory fails the ledger's first commit: refuse it by
    // name before a phone is touched (the line pauses on the same check mid-run).
    crate::storage::check(station.data_dir()?).map_err(StationError::Storage)?;
    // The same checks as `station config check`: refuse before the first phone.
    let preflight = station.preflight(&station_config::Environment::process())?;
    preflight.log_warnings();
    preflight.refusal()?;
    let codes = station.code_lookup()?;
    let config = station.config()?;
    let web = match options.http.as_deref() {
        Some(addr) => Some(("--http", addr)),
        None => config.ui.http.as_deref().map(|addr| ("ui.http", addr)),
    };
    let web = match web {
        Some((key, addr)) => Some(Arc::new(
            crate::web::start(key, addr, config.ui.allow_remote, &config.slots).await?,
        )),
        None => None,
    };
    let args = RunArgs {
        once: options.once,
        redo: options.redo,
        concurrency: options.concurrency,
        trust_wait: Duration::from_secs(options.trust_wait),
        replug_grace: Duration::from_secs(options.replug_grace),
        web: web.clone(),
    };
    let summary = runner::run(station, bench, codes, args, live_mode(json)).await;
    // The view goes with the run: its streams end after the summary they were sent.
    if let Some(web) = web {
        web.close();
    }
    let summary = summary?;
    Ok(Output::Streamed(exit_code(&summary, options.once)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Outcome;
    use crate::line::events::{Attention, PhoneRef};

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
