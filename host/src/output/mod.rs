//! The one output layer: what a command returned, as text for people or JSON for machines
//! (`--json`), written to stdout; and a failure, on stderr (and stdout with `--json`).
//! Commands return data and never print, except the live ones (`run`, `watch`, `demo`),
//! which stream their screen or NDJSON events as they go and return [`Output::Streamed`].

mod codes;
mod config;
mod devices;
mod fleet;
pub mod report;
mod text;

use std::io::Write;

pub use text::{aligned_table, wire_name};

use crate::activation::ActivationReport;
use crate::commands::codes::CodesLookup;
use crate::commands::config::ConfigCheck;
use crate::commands::devices::DeviceRow;
use crate::commands::fleet::{FleetMigrated, FleetStatus};
use crate::commands::pair::PairOutcome;
use crate::commands::report::Report;
use crate::error::{exit, StationError};
use crate::line::render::Mode;

/// What a command returned.
#[derive(Debug)]
pub enum Output {
    /// Shown while the command ran (the live commands): only the exit code is left.
    Streamed(u8),
    /// Text written as it is (`station config example`).
    Text(&'static str),
    Devices(Vec<DeviceRow>),
    /// One phone's identity and lock and management state (`station info --summary`).
    Summary(Box<DeviceRow>),
    /// Lockdown values (`station info`).
    Values(plist::Value),
    Paired {
        udid: String,
        outcome: PairOutcome,
    },
    Unpaired {
        udid: String,
        /// Whether there was a pairing to forget.
        existed: bool,
    },
    Activation {
        /// As the operator typed it.
        udid: String,
        report: Box<ActivationReport>,
    },
    Codes(CodesLookup),
    Report(Report),
    ConfigCheck(Box<ConfigCheck>),
    FleetStatus(FleetStatus),
    FleetMigrated(FleetMigrated),
}

/// How the live commands show their events: the live screen on a terminal, NDJSON when
/// asked (`--json`) or when stdout is not a terminal.
pub fn live_mode(json: bool) -> Mode {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Mode::Ndjson
    } else {
        Mode::Terminal
    }
}

/// The bytes for stdout.
pub fn render(output: &Output, json: bool) -> Result<String, StationError> {
    Ok(match output {
        Output::Streamed(_) => String::new(),
        Output::Text(text) => (*text).to_string(),
        Output::Devices(rows) if json => pretty(rows),
        Output::Devices(rows) => devices::table(rows),
        Output::Summary(row) if json => pretty(row),
        Output::Summary(row) => devices::summary(row),
        Output::Values(value) if json => pretty(&text::to_json(value)),
        Output::Values(value) => text::to_text(value),
        Output::Paired { udid, outcome } if json => {
            format!(
                "{}\n",
                serde_json::json!({ "udid": udid, "outcome": outcome })
            )
        }
        Output::Paired { udid, outcome } => match outcome {
            PairOutcome::Paired => format!("SUCCESS: paired with {udid}\n"),
            PairOutcome::AlreadyPaired => format!("SUCCESS: already paired with {udid}\n"),
        },
        Output::Unpaired { udid, existed } if json => format!(
            "{}\n",
            serde_json::json!({ "udid": udid, "outcome": if *existed { "unpaired" } else { "not_paired" } })
        ),
        Output::Unpaired { udid, existed } => {
            if *existed {
                format!("SUCCESS: unpaired {udid}\n")
            } else {
                format!("{udid} was not paired with this station\n")
            }
        }
        Output::Activation { report, .. } if json => {
            format!("{}\n", serde_json::to_string(report).unwrap_or_default())
        }
        Output::Activation { udid, report } => {
            let outcome = wire_name(&report.outcome);
            format!("{udid}: {outcome}: {}\n", report.message)
        }
        Output::Codes(lookup) if json => pretty(lookup),
        Output::Codes(lookup) => codes::text(lookup),
        Output::Report(found) => report::render(&found.records, report::format(found, json))?,
        Output::ConfigCheck(check) if json => pretty(check.as_ref()),
        Output::ConfigCheck(check) => config::text(check),
        Output::FleetStatus(status) if json => pretty(status),
        Output::FleetStatus(status) => fleet::status(status),
        Output::FleetMigrated(migrated) if json => pretty(migrated),
        Output::FleetMigrated(migrated) => fleet::migrated(migrated),
    })
}

/// Writes what the command returned and gives the exit code.
pub fn write(output: &Output, json: bool) -> Result<u8, StationError> {
    if let Output::Report(Report {
        missing_ledger: Some(path),
        ..
    }) = output
    {
        eprintln!("no ledger at {}: nothing processed yet", path.display());
    }
    let text = render(output, json)?;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`station devices | head`) is not a failure.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(StationError::Output(e))
        }
        _ => {}
    }
    exit_code(output, json)
}

/// 0 unless what was shown says otherwise.
fn exit_code(output: &Output, json: bool) -> Result<u8, StationError> {
    match output {
        Output::Streamed(code) => Ok(*code),
        Output::Activation { report, .. } => {
            Ok(crate::commands::activate::exit_code(report.outcome))
        }
        // The JSON is the whole answer; the exit code says the rest.
        Output::ConfigCheck(check) if json => Ok(if check.usable { 0 } else { exit::USAGE }),
        // The summary is shown; the refusal follows as an error.
        Output::ConfigCheck(check) => check.preflight.refusal().map(|()| 0),
        _ => Ok(0),
    }
}

/// Shows a failure (stderr; with `--json` also as an object on stdout) and gives its exit
/// code.
pub fn failure(e: &StationError, json: bool) -> u8 {
    if json {
        let value = serde_json::json!({
            "error": { "code": e.code(), "message": e.to_string(), "help": e.help() }
        });
        println!("{value}");
    }
    eprintln!("error[{}]: {e}", e.code());
    if let Some(help) = e.help() {
        eprintln!("  help: {help}");
    }
    e.exit_code()
}

/// Pretty JSON and a line break; a value that cannot be encoded shows as an empty line.
fn pretty<T: serde::Serialize + ?Sized>(value: &T) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}
