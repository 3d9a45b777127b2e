//! `station report` as an aligned table, CSV or JSON (fields: docs/report.md).

use std::io::IsTerminal;

use super::aligned_table;
use crate::commands::report::Report;
use crate::error::StationError;
use crate::ledger::{AttemptRecord, Status};
use crate::lockstate::{yes_no, ActivationLock};

/// How `station report` shows its rows (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
}

/// `--format`, else JSON with `--json`, a table on a terminal, CSV otherwise.
pub fn format(report: &Report, json: bool) -> ReportFormat {
    match (report.format, json) {
        (Some(format), _) => format,
        (None, true) => ReportFormat::Json,
        (None, false) if std::io::stdout().is_terminal() => ReportFormat::Table,
        (None, false) => ReportFormat::Csv,
    }
}

pub fn render(records: &[AttemptRecord], format: ReportFormat) -> Result<String, StationError> {
    match format {
        ReportFormat::Table => Ok(table(records)),
        ReportFormat::Csv => csv(records),
        ReportFormat::Json => serde_json::to_string_pretty(records)
            .map(|mut text| {
                text.push('\n');
                text
            })
            .map_err(|e| StationError::ReportJson(e.to_string())),
    }
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("—").to_string()
}

/// `2026-11-27T14:03:12.345Z` → `2026-11-27 14:03:12`.
fn short_time(stamp: &str) -> String {
    stamp
        .get(..19)
        .map_or_else(|| stamp.to_string(), |s| s.replacen('T', " ", 1))
}

fn short_duration(ms: u64) -> String {
    let secs = ms / 1000;
    if secs < 60 {
        format!("{}.{}s", secs, (ms % 1000) / 100)
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// How it ended, in a few words: the code source for a released lock, else the reason.
fn how_it_ended(r: &AttemptRecord) -> String {
    let success = matches!(r.outcome, Status::Finished(o) if o.is_success());
    match (&r.released_by, &r.remote_release) {
        (Some(release), _) if success => format!(
            "released by {} with {}",
            release.source,
            release.code.as_deref().unwrap_or("a code")
        ),
        (None, Some(remote)) if success => format!(
            "released by {} ({})",
            remote.source,
            remote.action.as_deref().unwrap_or("remote release")
        ),
        _ if r.outcome == Status::InProgress => match &r.stopped_at {
            Some(step) => format!("in progress at step {step}"),
            None => "in progress".to_string(),
        },
        _ => or_dash(r.reason.as_deref()),
    }
}

fn table(records: &[AttemptRecord]) -> String {
    if records.is_empty() {
        return "No attempts match.\n".to_string();
    }
    // The table shows when each attempt finished: list them in that order (concurrent
    // phones finish out of the order they started), those still running last.
    let mut records: Vec<&AttemptRecord> = records.iter().collect();
    records.sort_by(|a, b| {
        (a.finished_at.is_none(), &a.finished_at, &a.started_at).cmp(&(
            b.finished_at.is_none(),
            &b.finished_at,
            &b.started_at,
        ))
    });
    const HEADER: [&str; 11] = [
        "FINISHED (UTC)",
        "SLOT",
        "SERIAL",
        "MODEL",
        "iOS",
        "FIND MY",
        "PASSCODE",
        "SUPERVISED",
        "OUTCOME",
        "TIME",
        "REASON / RELEASED BY",
    ];
    let rows: Vec<[String; 11]> = records
        .iter()
        .map(|r| {
            [
                r.finished_at
                    .as_deref()
                    .map_or_else(|| "—".into(), short_time),
                r.slot.clone().unwrap_or_else(|| r.location_id.clone()),
                or_dash(r.serial.as_deref()),
                or_dash(r.model.as_deref()),
                or_dash(r.product_version.as_deref()),
                yes_no(r.management.find_my),
                yes_no(r.management.passcode_set),
                super::devices::supervised_cell(&r.management),
                r.outcome.name(),
                r.duration_ms.map_or_else(|| "—".into(), short_duration),
                how_it_ended(r),
            ]
        })
        .collect();
    aligned_table(HEADER, &rows)
}

/// CSV columns, in order; [`csv_row`] fills them (same length, checked by the type).
pub const CSV_COLUMNS: [&str; 33] = [
    "attempt_id",
    "run_id",
    "station_id",
    "started_at",
    "finished_at",
    "duration_ms",
    "slot",
    "location_id",
    "udid",
    "serial",
    "product_type",
    "model",
    "product_version",
    "outcome",
    "reason",
    "stopped_at",
    "activation_state",
    "activation_locked",
    "codes_tried",
    "released_by_source",
    "released_by_kind",
    "released_code",
    "remote_release_source",
    "remote_release_action",
    "recovered_at",
    "steps",
    "find_my",
    "passcode_set",
    "supervised",
    "organization",
    "mdm_enrolled",
    "mdm_unremovable",
    "activation_lock",
];

fn csv_row(r: &AttemptRecord) -> [String; 33] {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let (release, remote) = (r.released_by.as_ref(), r.remote_release.as_ref());
    // `pair=120;identify=45`: milliseconds per step, `?` for one cut short.
    let steps = r
        .steps
        .iter()
        .map(|s| match s.duration_ms {
            Some(ms) => format!("{}={ms}", s.step),
            None => format!("{}=?", s.step),
        })
        .collect::<Vec<_>>()
        .join(";");
    [
        r.attempt_id.get().to_string(),
        r.run_id.clone(),
        r.station_id.clone(),
        r.started_at.clone(),
        text(&r.finished_at),
        r.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
        text(&r.slot),
        r.location_id.clone(),
        r.udid.clone(),
        text(&r.serial),
        text(&r.product_type),
        text(&r.model),
        text(&r.product_version),
        r.outcome.name(),
        text(&r.reason),
        text(&r.stopped_at),
        text(&r.activation_state),
        r.activation_locked.to_string(),
        r.codes_tried.to_string(),
        release.map(|x| x.source.clone()).unwrap_or_default(),
        release.and_then(|x| x.kind.clone()).unwrap_or_default(),
        release.and_then(|x| x.code.clone()).unwrap_or_default(),
        remote.map(|x| x.source.clone()).unwrap_or_default(),
        remote.and_then(|x| x.action.clone()).unwrap_or_default(),
        text(&r.recovered_at),
        steps,
        flag(r.management.find_my),
        flag(r.management.passcode_set),
        flag(r.management.supervised),
        text(&r.management.organization),
        flag(r.management.mdm_enrolled),
        flag(r.management.mdm_unremovable),
        r.activation_lock
            .as_ref()
            .map(ActivationLock::describe)
            .unwrap_or_default(),
    ]
}

/// `true`, `false`, or empty where the phone said nothing.
fn flag(value: Option<bool>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn csv(records: &[AttemptRecord]) -> Result<String, StationError> {
    let failed = |e: &dyn std::fmt::Display| StationError::ReportCsv(e.to_string());
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_COLUMNS).map_err(|e| failed(&e))?;
    for record in records {
        writer
            .write_record(csv_row(record))
            .map_err(|e| failed(&e))?;
    }
    let bytes = writer.into_inner().map_err(|e| failed(&e))?;
    String::from_utf8(bytes).map_err(|e| failed(&e))
}
