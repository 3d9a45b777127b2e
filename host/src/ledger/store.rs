//! Writing the ledger: runs, attempts, steps, outcomes, and the recovery of attempts a
//! previous process left unfinished. Every function runs inside the caller's transaction.

use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::query::{parse_outcome, OUTCOMES};
use super::secret::StoredRelease;
use super::{sqlite, stamp, wire_name, AttemptId, LedgerError};
use crate::activation::{ActivationReport, Outcome};
use crate::redact::scrub_codes;

/// Longest step name accepted: names are identifiers such as `activation_request`.
const MAX_STEP_NAME: usize = 64;

/// A new attempt on one phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptStart {
    pub run_id: String,
    pub udid: String,
    /// The bench label from the slot map, if it names the port.
    pub slot: Option<String>,
    /// usbmuxd LocationID: the hub port.
    pub location_id: u32,
    pub started_at: SystemTime,
}

/// An attempt a previous station process left in progress, now closed as `interrupted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovered {
    pub attempt_id: AttemptId,
    pub run_id: String,
    pub udid: String,
    pub serial: Option<String>,
    pub slot: Option<String>,
    pub location_id: u32,
    /// The step it was at, if it had reached one.
    pub step: Option<String>,
    /// When it was last heard of (its last step's start, else its own start).
    pub last_seen: String,
    pub message: String,
}

/// Phones counted by the outcome of their newest attempt in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeCount {
    pub outcome: Outcome,
    pub phones: u64,
}

/// A run, counted from the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub attempts: u64,
    pub phones: u64,
    /// Phones whose newest attempt has not finished.
    pub in_progress: u64,
    /// Non-zero counts, in [`OUTCOMES`] order.
    pub outcomes: Vec<OutcomeCount>,
}

pub fn start_run(
    conn: &Connection,
    run_id: &str,
    station_id: &str,
    at: SystemTime,
) -> Result<(), LedgerError> {
    conn.execute(
        "INSERT INTO runs (run_id, station_id, started_at) VALUES (?1, ?2, ?3)",
        params![run_id, station_id, stamp::format_system(at)?],
    )
    .map_err(sqlite("start run"))?;
    Ok(())
}

pub fn finish_run(
    conn: &Connection,
    run_id: &str,
    at: SystemTime,
) -> Result<RunSummary, LedgerError> {
    close_run(conn, run_id, "finished", &stamp::format_system(at)?, None)
}

/// Marks a run that could not start (or broke off) `failed`, with its reason.
pub fn fail_run(
    conn: &Connection,
    run_id: &str,
    at: SystemTime,
    error: &str,
) -> Result<RunSummary, LedgerError> {
    close_run(
        conn,
        run_id,
        "failed",
        &stamp::format_system(at)?,
        Some(error),
    )
}

fn close_run(
    conn: &Connection,
    run_id: &str,
    status: &str,
    at: &str,
    error: Option<&str>,
) -> Result<RunSummary, LedgerError> {
    let summary = run_summary(conn, run_id)?;
    let json = serde_json::to_string(&summary).map_err(|e| LedgerError::Encode {
        what: "run summary",
        reason: e.to_string(),
    })?;
    let changed = conn
        .execute(
            "UPDATE runs SET finished_at = ?2, status = ?3, summary = ?4, error = ?5 WHERE run_id = ?1",
            params![run_id, at, status, json, error],
        )
        .map_err(sqlite("finish run"))?;
    if changed == 0 {
        return Err(LedgerError::UnknownRun {
            run_id: run_id.to_string(),
        });
    }
    Ok(summary)
}

pub fn run_summary(conn: &Connection, run_id: &str) -> Result<RunSummary, LedgerError> {
    let attempts: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM attempts WHERE run_id = ?1",
            [run_id],
            |row| row.get(0),
        )
        .map_err(sqlite("run summary"))?;
    let mut statement = conn
        .prepare_cached(
            "SELECT outcome, COUNT(*) FROM attempts AS a WHERE run_id = ?1 AND id = \
             (SELECT MAX(id) FROM attempts AS b WHERE b.run_id = a.run_id AND b.udid = a.udid) \
             GROUP BY outcome",
        )
        .map_err(sqlite("run summary"))?;
    let rows = statement
        .query_map([run_id], |row| {
            Ok((row.get::<_, Option<String>>(0)?, row.get::<_, i64>(1)?))
        })
        .map_err(sqlite("run summary"))?;
    let mut summary = RunSummary {
        run_id: run_id.to_string(),
        attempts: count(attempts),
        phones: 0,
        in_progress: 0,
        outcomes: Vec::new(),
    };
    let mut counted: Vec<(Outcome, u64)> = Vec::new();
    for row in rows {
        let (name, n) = row.map_err(sqlite("run summary"))?;
        let n = count(n);
        summary.phones += n;
        match name {
            None => summary.in_progress += n,
            Some(name) => {
                let outcome = parse_outcome(&name).ok_or(LedgerError::Corrupt {
                    column: "outcome",
                    value: name,
                })?;
                counted.push((outcome, n));
            }
        }
    }
    summary.outcomes = OUTCOMES
        .iter()
        .filter_map(|&o| {
            let phones = counted.iter().find(|(c, _)| *c == o)?.1;
            Some(OutcomeCount { outcome: o, phones })
        })
        .collect();
    Ok(summary)
}

/// `execute` through the connection's statement cache: the per-phone statements run about
/// a dozen times per phone, and parsing their SQL each time was most of the ledger's CPU
/// after the commits (issue 13, docs/benchmark.md "The line at scale").
fn execute_cached(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// SQLite's COUNT(*) is never negative.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub fn begin(
    conn: &Connection,
    station_id: &str,
    start: &AttemptStart,
) -> Result<AttemptId, LedgerError> {
    execute_cached(
        conn,
        "INSERT INTO attempts (run_id, station_id, udid, slot, location_id, started_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            start.run_id,
            station_id,
            start.udid,
            start.slot,
            start.location_id,
            stamp::format_system(start.started_at)?
        ],
    )
    .map_err(sqlite("begin attempt"))?;
    Ok(AttemptId(conn.last_insert_rowid()))
}

/// Fails unless `id` names an attempt still in progress: a finished outcome is final.
fn ensure_in_progress(conn: &Connection, id: AttemptId) -> Result<(), LedgerError> {
    let outcome: Option<Option<String>> = conn
        .prepare_cached("SELECT outcome FROM attempts WHERE id = ?1")
        .and_then(|mut statement| statement.query_row([id.get()], |row| row.get(0)))
        .optional()
        .map_err(sqlite("find attempt"))?;
    match outcome {
        None => Err(LedgerError::UnknownAttempt { id }),
        Some(Some(_)) => Err(LedgerError::AlreadyFinished { id }),
        Some(None) => Ok(()),
    }
}

pub fn update_identity(
    conn: &Connection,
    id: AttemptId,
    serial: &str,
    product_type: Option<&str>,
    product_version: Option<&str>,
) -> Result<(), LedgerError> {
    ensure_in_progress(conn, id)?;
    execute_cached(
        conn,
        "UPDATE attempts SET serial = ?2, product_type = COALESCE(?3, product_type), \
         product_version = COALESCE(?4, product_version) WHERE id = ?1",
        params![id.get(), serial, product_type, product_version],
    )
    .map_err(sqlite("update identity"))?;
    Ok(())
}

/// Closes the attempt's open step (if any) at `at`.
fn end_open_step(conn: &Connection, id: AttemptId, at: &str) -> Result<(), LedgerError> {
    execute_cached(
        conn,
        "UPDATE steps SET ended_at = ?2 WHERE attempt_id = ?1 AND ended_at IS NULL",
        params![id.get(), at],
    )
    .map_err(sqlite("end step"))?;
    Ok(())
}

pub fn record_step(
    conn: &Connection,
    id: AttemptId,
    step: &str,
    at: SystemTime,
) -> Result<(), LedgerError> {
    if step.is_empty()
        || step.len() > MAX_STEP_NAME
        || !step
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(LedgerError::InvalidStep {
            step: step.chars().take(MAX_STEP_NAME).collect(),
        });
    }
    ensure_in_progress(conn, id)?;
    let at = stamp::format_system(at)?;
    end_open_step(conn, id, &at)?;
    execute_cached(
        conn,
        "INSERT INTO steps (attempt_id, seq, step, started_at) VALUES (?1, \
         (SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE attempt_id = ?1), ?2, ?3)",
        params![id.get(), step, at],
    )
    .map_err(sqlite("record step"))?;
    execute_cached(
        conn,
        "UPDATE attempts SET current_step = ?2 WHERE id = ?1",
        params![id.get(), step],
    )
    .map_err(sqlite("record step"))?;
    Ok(())
}

/// Records the outcome. Identity fields the report knows replace what was recorded.
pub fn finish(
    conn: &Connection,
    id: AttemptId,
    report: &ActivationReport,
    at: SystemTime,
) -> Result<(), LedgerError> {
    ensure_in_progress(conn, id)?;
    let at = stamp::format_system(at)?;
    // A code that is not masked is dropped, not the outcome: the phone's result matters
    // more than which code released it, and the code must not be written.
    let (source, kind, code) = match &report.released_by {
        None => (None, None, None),
        Some(release) => match StoredRelease::try_from(release) {
            Ok(stored) => (
                Some(stored.source),
                Some(stored.kind),
                Some(stored.code.as_str().to_string()),
            ),
            Err(e) => {
                tracing::error!(udid = %report.udid, "{e}; recording the outcome without it");
                (
                    Some(scrub_codes(&release.source).into_owned()),
                    Some(wire_name(&release.kind)),
                    None,
                )
            }
        },
    };
    end_open_step(conn, id, &at)?;
    execute_cached(
        conn,
        "UPDATE attempts SET \
           serial = COALESCE(?2, serial), \
           product_type = COALESCE(?3, product_type), \
           product_version = COALESCE(?4, product_version), \
           finished_at = ?5, outcome = ?6, message = ?7, stopped_at = ?8, \
           activation_state = ?9, activation_locked = ?10, codes_tried = ?11, \
           released_source = ?12, released_kind = ?13, released_code = ?14, elapsed_ms = ?15, \
           remote_source = ?16, remote_action = ?17, \
           find_my = ?18, passcode_set = ?19, supervised = ?20, organization = ?21, \
           mdm_enrolled = ?22, mdm_unremovable = ?23 \
         WHERE id = ?1",
        params![
            id.get(),
            report.serial,
            report.product_type,
            report.product_version,
            at,
            wire_name(&report.outcome),
            scrub_codes(&report.message),
            report.step.map(|s| wire_name(&s)),
            report.activation_state,
            report.activation_locked,
            i64::try_from(report.codes_tried).unwrap_or(i64::MAX),
            source,
            kind,
            code,
            i64::try_from(report.elapsed_ms).unwrap_or(i64::MAX),
            report
                .remote_release
                .as_ref()
                .map(|r| scrub_codes(&r.source).into_owned()),
            report.remote_release.as_ref().map(|r| r.action.clone()),
            report.management.find_my,
            report.management.passcode_set,
            report.management.supervised,
            report
                .management
                .organization
                .as_deref()
                .map(|o| scrub_codes(o).into_owned()),
            report.management.mdm_enrolled,
            report.management.mdm_unremovable,
        ],
    )
    .map_err(sqlite("finish attempt"))?;
    enqueue(conn, id)
}

/// Queues a finished attempt for the fleet database, in the transaction that finished it:
/// committed together, so a crash can neither lose nor repeat it (docs/fleet.md).
fn enqueue(conn: &Connection, id: AttemptId) -> Result<(), LedgerError> {
    execute_cached(
        conn,
        "INSERT INTO outbox (attempt_id) VALUES (?1)",
        [id.get()],
    )
    .map_err(sqlite("queue for the fleet"))?;
    Ok(())
}

/// Closes every attempt and run a previous process left open: it is not running any more
/// (the caller holds the writer lock), so whatever was in progress was interrupted.
pub fn recover(conn: &Connection, now: SystemTime) -> Result<Vec<Recovered>, LedgerError> {
    let now = stamp::format_system(now)?;
    let mut statement = conn
        .prepare(
            "SELECT id, run_id, udid, serial, slot, location_id, current_step, \
             COALESCE((SELECT MAX(started_at) FROM steps WHERE attempt_id = a.id), started_at) \
             FROM attempts AS a WHERE outcome IS NULL ORDER BY id",
        )
        .map_err(sqlite("recover"))?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<String>>(6)?,
                row.get::<_, String>(7)?,
            ))
        })
        .map_err(sqlite("recover"))?;
    let mut recovered = Vec::new();
    for row in rows {
        let (id, run_id, udid, serial, slot, location, step, last_seen) =
            row.map_err(sqlite("recover"))?;
        let at = match &step {
            Some(step) => format!("during step `{step}`"),
            None => "before its first step".to_string(),
        };
        recovered.push(Recovered {
            attempt_id: AttemptId(id),
            run_id,
            udid,
            serial,
            slot,
            location_id: u32::try_from(location).map_err(|_| LedgerError::Corrupt {
                column: "location_id",
                value: location.to_string(),
            })?,
            message: format!(
                "the station stopped {at} (crash, kill or power loss; last seen {last_seen}): plug the phone in again to finish it"
            ),
            step,
            last_seen,
        });
    }
    for r in &recovered {
        tracing::warn!(udid = %r.udid, slot = ?r.slot, step = ?r.step, "{}", r.message);
        conn.execute(
            &format!(
                "UPDATE attempts SET outcome = ?2, message = ?3, stopped_at = current_step, \
                 finished_at = ?4, recovered_at = ?5, elapsed_ms = {} WHERE id = ?1",
                stamp::sql_millis_between("started_at", "?4")
            ),
            params![
                r.attempt_id.get(),
                wire_name(&Outcome::Interrupted),
                r.message,
                r.last_seen,
                now
            ],
        )
        .map_err(sqlite("recover"))?;
        enqueue(conn, r.attempt_id)?;
    }
    // A run left open ended when its last attempt did, as far as anyone can tell.
    let open_runs: Vec<(String, String)> = conn
        .prepare(
            "SELECT run_id, COALESCE((SELECT MAX(finished_at) FROM attempts AS a \
             WHERE a.run_id = runs.run_id), started_at) FROM runs WHERE status = 'running'",
        )
        .and_then(|mut s| {
            s.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .map_err(sqlite("recover"))?;
    for (run_id, last_seen) in open_runs {
        close_run(conn, &run_id, "interrupted", &last_seen, None)?;
    }
    Ok(recovered)
}
