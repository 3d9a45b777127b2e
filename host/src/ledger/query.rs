//! Reading the ledger back: attempt records with their step timings, filtered for reports
//! and for the line (`handled_in_run`, `latest_for`).

use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use super::{sqlite, stamp, wire_name, AttemptId, LedgerError};
use crate::activation::Outcome;
use crate::lockstate::{ActivationLock, ManagementState};
use station_protocol::models::marketing_name;

/// Every outcome, in the order reports list them.
pub const OUTCOMES: [Outcome; 10] = [
    Outcome::Activated,
    Outcome::AlreadyActivated,
    Outcome::LockedNoCode,
    Outcome::CodeRejected,
    Outcome::UserLocked,
    Outcome::ServerError,
    Outcome::Unsupported,
    Outcome::DeviceError,
    Outcome::Interrupted,
    Outcome::FindMyOn,
];

// A new `Outcome` variant stops compiling here: add it to `OUTCOMES` too.
const _: fn(Outcome) = |outcome| match outcome {
    Outcome::Activated
    | Outcome::AlreadyActivated
    | Outcome::LockedNoCode
    | Outcome::CodeRejected
    | Outcome::UserLocked
    | Outcome::ServerError
    | Outcome::Unsupported
    | Outcome::DeviceError
    | Outcome::Interrupted
    | Outcome::FindMyOn => {}
};

/// An attempt's state: still running (or left so by a process that has not been
/// succeeded yet), or ended with an outcome. Written as the outcome's name or
/// `in_progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Finished(Outcome),
}

const IN_PROGRESS: &str = "in_progress";

impl Status {
    pub fn name(self) -> String {
        match self {
            Status::InProgress => IN_PROGRESS.to_string(),
            Status::Finished(outcome) => wire_name(&outcome),
        }
    }

    /// Every name [`Status::parse`] accepts.
    pub fn names() -> Vec<String> {
        OUTCOMES
            .iter()
            .map(|&o| Status::Finished(o).name())
            .chain([IN_PROGRESS.to_string()])
            .collect()
    }

    pub fn parse(text: &str) -> Option<Status> {
        let text = text.trim();
        if text == IN_PROGRESS {
            return Some(Status::InProgress);
        }
        parse_outcome(text).map(Status::Finished)
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// The fleet database keeps attempts as `station report --format json` writes them; this
/// reads them back.
impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Status::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown outcome {name:?}")))
    }
}

pub fn parse_outcome(text: &str) -> Option<Outcome> {
    OUTCOMES.into_iter().find(|&o| wire_name(&o) == text)
}

/// Which attempts to read. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Started at or after.
    pub since: Option<OffsetDateTime>,
    /// Started strictly before.
    pub before: Option<OffsetDateTime>,
    /// Any of these.
    pub statuses: Vec<Status>,
    /// Only attempts where Apple answered with the Activation Lock form.
    pub locked_only: bool,
    pub run_id: Option<String>,
    pub udid: Option<String>,
    /// Only phones whose Find My was read as on (`Some(true)`) or off (`Some(false)`).
    pub find_my: Option<bool>,
    /// Only phones that said they are supervised.
    pub supervised_only: bool,
    /// Only phones supervised by this organisation (case-insensitive).
    pub organization: Option<String>,
    /// Of the matching attempts, keep each phone's newest only.
    pub latest_per_phone: bool,
}

/// Where a [`Filter`] is read: the ledger (SQLite) or the fleet database (PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a filter's placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterValue {
    Text(String),
    Bool(bool),
}

/// A filter as SQL in one dialect: conditions joined by `AND`, their placeholders numbered
/// in the order of `params`.
#[derive(Debug)]
pub struct FilterSql {
    dialect: Dialect,
    clauses: Vec<String>,
    pub params: Vec<FilterValue>,
}

impl FilterSql {
    fn new(dialect: Dialect) -> Self {
        FilterSql {
            dialect,
            clauses: Vec::new(),
            params: Vec::new(),
        }
    }

    /// `clause` with its one `?` as the placeholder of `value`, now bound.
    fn bind(&mut self, clause: &str, value: FilterValue) -> String {
        self.params.push(value);
        let n = self.params.len();
        let mark = match self.dialect {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        };
        clause.replace('?', &mark)
    }

    /// Adds the condition `clause`, its one `?` bound to `value`.
    pub fn push(&mut self, clause: &str, value: FilterValue) {
        let clause = self.bind(clause, value);
        self.clauses.push(clause);
    }

    /// A boolean column is true (SQLite keeps them as 0 and 1).
    fn push_flag(&mut self, column: &str) {
        self.clauses.push(match self.dialect {
            Dialect::Sqlite => format!("{column} = 1"),
            Dialect::Postgres => column.to_string(),
        });
    }

    /// `WHERE …`, or nothing when no condition was added.
    pub fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

impl Filter {
    /// The conditions of this filter (`latest_per_phone` is applied to the rows after).
    pub fn to_sql(&self, dialect: Dialect) -> Result<FilterSql, LedgerError> {
        use FilterValue::{Bool, Text};
        let mut sql = FilterSql::new(dialect);
        if let Some(since) = self.since {
            sql.push("started_at >= ?", Text(stamp::format(since)?));
        }
        if let Some(before) = self.before {
            sql.push("started_at < ?", Text(stamp::format(before)?));
        }
        if let Some(run_id) = &self.run_id {
            sql.push("run_id = ?", Text(run_id.clone()));
        }
        if let Some(udid) = &self.udid {
            sql.push("udid = ?", Text(udid.clone()));
        }
        if self.locked_only {
            sql.push_flag("activation_locked");
        }
        if let Some(find_my) = self.find_my {
            sql.push("find_my = ?", Bool(find_my));
        }
        if self.supervised_only {
            sql.push_flag("supervised");
        }
        if let Some(organization) = &self.organization {
            let clause = match dialect {
                Dialect::Sqlite => "organization = ? COLLATE NOCASE",
                Dialect::Postgres => "lower(organization) = lower(?)",
            };
            sql.push(clause, Text(organization.clone()));
        }
        if !self.statuses.is_empty() {
            let any: Vec<String> = self
                .statuses
                .iter()
                .map(|status| match (status, dialect) {
                    (Status::InProgress, Dialect::Sqlite) => "outcome IS NULL".to_string(),
                    // Only finished attempts are shipped to the fleet.
                    (Status::InProgress, Dialect::Postgres) => "false".to_string(),
                    (Status::Finished(o), _) => sql.bind("outcome = ?", Text(wire_name(o))),
                })
                .collect();
            sql.clauses.push(format!("({})", any.join(" OR ")));
        }
        Ok(sql)
    }
}

/// The code source that released the lock; the code masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub source: String,
    /// `device`, `server` or `unknown`.
    pub kind: Option<String>,
    /// Masked (`3UM43-…-FKA4`); absent if the workflow handed over an unmasked code.
    pub code: Option<String>,
}

/// An MDM asked to release the lock itself (no code), e.g. Intune `bypassActivationLock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteReleaseRecord {
    pub source: String,
    pub action: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    pub step: String,
    pub started_at: String,
    /// Until the next step or the end; absent for a step cut short by a crash.
    pub duration_ms: Option<u64>,
}

/// One attempt on one phone. Field names are a stable contract (docs/report.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt_id: AttemptId,
    pub run_id: String,
    pub station_id: String,
    pub udid: String,
    pub serial: Option<String>,
    pub product_type: Option<String>,
    /// Marketing name of `product_type` when known, else `product_type`.
    pub model: Option<String>,
    pub product_version: Option<String>,
    pub slot: Option<String>,
    /// usbmuxd LocationID, `0x00010002`.
    pub location_id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub outcome: Status,
    /// One line: what happened and the next step.
    pub reason: Option<String>,
    /// The step it stopped at (anything but success); the current step while in progress.
    pub stopped_at: Option<String>,
    pub activation_state: Option<String>,
    /// Apple answered with the Activation Lock form.
    pub activation_locked: bool,
    pub codes_tried: u32,
    pub released_by: Option<ReleaseRecord>,
    /// No code released it; the MDM was asked to (with `activated`, that did).
    pub remote_release: Option<RemoteReleaseRecord>,
    /// Set when the attempt was found unfinished after a crash and closed as interrupted.
    pub recovered_at: Option<String>,
    /// Find My, passcode and management, as the phone told them (`null`: said nothing).
    #[serde(flatten)]
    pub management: ManagementState,
    /// The lock as Apple's answer showed it; `null` when Apple was not asked.
    pub activation_lock: Option<ActivationLock>,
    pub steps: Vec<StepTiming>,
}

const ATTEMPT_COLUMNS: &str = "id, run_id, station_id, udid, serial, product_type, \
    product_version, slot, location_id, started_at, finished_at, elapsed_ms, outcome, \
    message, stopped_at, current_step, activation_state, activation_locked, codes_tried, \
    released_source, released_kind, released_code, remote_source, remote_action, \
    recovered_at, find_my, passcode_set, supervised, organization, mdm_enrolled, \
    mdm_unremovable";

/// Attempts matching `filter`, oldest first (by start, then id).
pub fn attempts(conn: &Connection, filter: &Filter) -> Result<Vec<AttemptRecord>, LedgerError> {
    let sql = filter.to_sql(Dialect::Sqlite)?;
    let params = sql
        .params
        .iter()
        .map(|value| match value {
            FilterValue::Text(text) => Value::Text(text.clone()),
            FilterValue::Bool(flag) => Value::Integer(i64::from(*flag)),
        })
        .collect();
    let mut records = select(conn, &sql.where_sql(), params)?;
    if filter.latest_per_phone {
        keep_latest_per_phone(&mut records);
    }
    Ok(records)
}

/// Of records listed oldest first, keeps each phone's newest (its last). Keyed by station
/// and attempt: the fleet's attempts come from several ledgers, whose ids overlap.
pub fn keep_latest_per_phone(records: &mut Vec<AttemptRecord>) {
    let newest: std::collections::HashMap<&str, (&str, i64)> = records
        .iter()
        .map(|r| (r.udid.as_str(), (r.station_id.as_str(), r.attempt_id.get())))
        .collect();
    let keep: std::collections::HashSet<(String, i64)> = newest
        .into_values()
        .map(|(station, id)| (station.to_string(), id))
        .collect();
    records.retain(|r| keep.contains(&(r.station_id.clone(), r.attempt_id.get())));
}

/// The attempts with these ids, in the order of `ids` (the outbox's).
pub fn attempts_by_id(conn: &Connection, ids: &[i64]) -> Result<Vec<AttemptRecord>, LedgerError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=ids.len()).map(|n| format!("?{n}")).collect();
    let params = ids.iter().map(|&id| Value::Integer(id)).collect();
    let mut records = select(conn, &format!("WHERE id IN ({})", marks.join(", ")), params)?;
    let position: std::collections::HashMap<i64, usize> =
        ids.iter().enumerate().map(|(n, &id)| (id, n)).collect();
    records.sort_by_key(|r| position.get(&r.attempt_id.get()).copied());
    Ok(records)
}

/// Attempts and their steps, `filter_sql` (a `WHERE` clause or nothing) bound to `params`.
fn select(
    conn: &Connection,
    filter_sql: &str,
    params: Vec<Value>,
) -> Result<Vec<AttemptRecord>, LedgerError> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS}, {} AS wall_ms FROM attempts {filter_sql} ORDER BY started_at, id",
        stamp::sql_millis_between("started_at", "finished_at")
    );
    let mut statement = conn.prepare(&sql).map_err(sqlite("read attempts"))?;
    let mut rows = statement
        .query(rusqlite::params_from_iter(params))
        .map_err(sqlite("read attempts"))?;
    let mut records = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite("read attempts"))? {
        let mut record = attempt_from_row(row).map_err(sqlite("read attempts"))??;
        record.steps = steps(conn, record.attempt_id)?;
        records.push(record);
    }
    Ok(records)
}

fn corrupt(column: &'static str, value: impl ToString) -> LedgerError {
    LedgerError::Corrupt {
        column,
        value: value.to_string(),
    }
}

/// A row of [`ATTEMPT_COLUMNS`] + `wall_ms`. The outer error is SQLite's, the inner one a
/// value this build does not understand.
fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<Result<AttemptRecord, LedgerError>> {
    let location: i64 = row.get("location_id")?;
    let codes_tried: i64 = row.get("codes_tried")?;
    let elapsed: Option<i64> = row.get("elapsed_ms")?;
    let wall: Option<i64> = row.get("wall_ms")?;
    let outcome: Option<String> = row.get("outcome")?;
    let product_type: Option<String> = row.get("product_type")?;
    let current_step: Option<String> = row.get("current_step")?;
    let stopped_at: Option<String> = row.get("stopped_at")?;
    let released_source: Option<String> = row.get("released_source")?;
    let released_kind: Option<String> = row.get("released_kind")?;
    let released_code: Option<String> = row.get("released_code")?;
    let id: i64 = row.get("id")?;
    let run_id: String = row.get("run_id")?;
    let station_id: String = row.get("station_id")?;
    let udid: String = row.get("udid")?;
    let serial: Option<String> = row.get("serial")?;
    let product_version: Option<String> = row.get("product_version")?;
    let slot: Option<String> = row.get("slot")?;
    let started_at: String = row.get("started_at")?;
    let finished_at: Option<String> = row.get("finished_at")?;
    let message: Option<String> = row.get("message")?;
    let activation_state: Option<String> = row.get("activation_state")?;
    let activation_locked: bool = row.get("activation_locked")?;
    let recovered_at: Option<String> = row.get("recovered_at")?;
    let remote_source: Option<String> = row.get("remote_source")?;
    let remote_action: Option<String> = row.get("remote_action")?;
    let management = ManagementState {
        find_my: row.get("find_my")?,
        passcode_set: row.get("passcode_set")?,
        supervised: row.get("supervised")?,
        organization: row.get("organization")?,
        mdm_enrolled: row.get("mdm_enrolled")?,
        mdm_unremovable: row.get("mdm_unremovable")?,
    };

    let built = (|| {
        let location = u32::try_from(location).map_err(|_| corrupt("location_id", location))?;
        let status = match outcome {
            None => Status::InProgress,
            Some(name) => {
                Status::Finished(parse_outcome(&name).ok_or_else(|| corrupt("outcome", &name))?)
            }
        };
        let stopped_at = match status {
            Status::InProgress => current_step,
            Status::Finished(_) => stopped_at,
        };
        let to_u64 = |column, v: i64| u64::try_from(v).map_err(|_| corrupt(column, v));
        let activation_lock = match status {
            Status::InProgress => None,
            Status::Finished(outcome) => ActivationLock::of(
                outcome,
                activation_locked,
                released_source
                    .clone()
                    .map(|source| (source, released_code.clone()))
                    .or_else(|| remote_source.clone().map(|source| (source, None))),
            ),
        };
        Ok(AttemptRecord {
            attempt_id: AttemptId(id),
            run_id,
            station_id,
            udid,
            serial,
            model: product_type
                .as_deref()
                .map(|t| marketing_name(t).unwrap_or(t).to_string()),
            product_type,
            product_version,
            slot,
            location_id: format!("0x{location:08x}"),
            started_at,
            finished_at,
            duration_ms: elapsed
                .or(wall)
                .map(|v| to_u64("elapsed_ms", v))
                .transpose()?,
            outcome: status,
            reason: message,
            stopped_at,
            activation_state,
            activation_locked,
            codes_tried: u32::try_from(codes_tried)
                .map_err(|_| corrupt("codes_tried", codes_tried))?,
            released_by: released_source.map(|source| ReleaseRecord {
                source,
                kind: released_kind,
                code: released_code,
            }),
            remote_release: remote_source.map(|source| RemoteReleaseRecord {
                source,
                action: remote_action,
            }),
            recovered_at,
            management,
            activation_lock,
            steps: Vec::new(),
        })
    })();
    Ok(built)
}

fn steps(conn: &Connection, attempt: AttemptId) -> Result<Vec<StepTiming>, LedgerError> {
    let sql = format!(
        "SELECT step, started_at, {} FROM steps WHERE attempt_id = ?1 ORDER BY seq",
        stamp::sql_millis_between("started_at", "ended_at")
    );
    let mut statement = conn.prepare_cached(&sql).map_err(sqlite("read steps"))?;
    let rows = statement
        .query_map([attempt.get()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<i64>>(2)?,
            ))
        })
        .map_err(sqlite("read steps"))?;
    rows.map(|row| {
        let (step, started_at, millis) = row.map_err(sqlite("read steps"))?;
        Ok(StepTiming {
            step,
            started_at,
            // A clock stepped backwards gives a negative span: no duration rather than a lie.
            duration_ms: millis.and_then(|m| u64::try_from(m).ok()),
        })
    })
    .collect()
}

/// How the newest finished attempt on `udid` in `run_id` ended.
#[cfg(test)]
use rusqlite::OptionalExtension;

#[cfg(test)]
pub fn handled_in_run(
    conn: &Connection,
    run_id: &str,
    udid: &str,
) -> Result<Option<Outcome>, LedgerError> {
    let name: Option<String> = conn
        .query_row(
            "SELECT outcome FROM attempts WHERE run_id = ?1 AND udid = ?2 \
             AND outcome IS NOT NULL ORDER BY id DESC LIMIT 1",
            [run_id, udid],
            |row| row.get(0),
        )
        .optional()
        .map_err(sqlite("handled_in_run"))?;
    name.map(|n| parse_outcome(&n).ok_or_else(|| corrupt("outcome", n)))
        .transpose()
}

/// The newest attempt on `udid`, finished or not.
#[cfg(test)]
pub fn latest_for(conn: &Connection, udid: &str) -> Result<Option<AttemptRecord>, LedgerError> {
    let filter = Filter {
        udid: Some(udid.to_string()),
        latest_per_phone: true,
        ..Filter::default()
    };
    Ok(attempts(conn, &filter)?.pop())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_are_the_serde_names_and_round_trip() {
        for outcome in OUTCOMES {
            let name = Status::Finished(outcome).name();
            assert_eq!(
                serde_json::to_value(outcome).ok(),
                Some(name.clone().into())
            );
            assert_eq!(Status::parse(&name), Some(Status::Finished(outcome)));
        }
        assert_eq!(Status::parse("in_progress"), Some(Status::InProgress));
        assert_eq!(Status::parse("activate"), None);
        assert_eq!(Status::names().len(), OUTCOMES.len() + 1);
    }

    /// One filter, two dialects: the same conditions in the same order, each database's
    /// placeholders, booleans and case-insensitive comparison.
    #[test]
    fn a_filter_is_written_for_each_database() {
        let filter = Filter {
            run_id: Some("r1".into()),
            locked_only: true,
            find_my: Some(false),
            supervised_only: true,
            organization: Some("Acme".into()),
            statuses: vec![Status::InProgress, Status::Finished(Outcome::Activated)],
            ..Filter::default()
        };
        let sqlite = filter.to_sql(Dialect::Sqlite).expect("sqlite");
        assert_eq!(
            sqlite.where_sql(),
            "WHERE run_id = ?1 AND activation_locked = 1 AND find_my = ?2 AND supervised = 1 \
             AND organization = ?3 COLLATE NOCASE AND (outcome IS NULL OR outcome = ?4)"
        );
        let mut postgres = filter.to_sql(Dialect::Postgres).expect("postgres");
        postgres.push("station_id = ?", FilterValue::Text("s1".into()));
        assert_eq!(
            postgres.where_sql(),
            "WHERE run_id = $1 AND activation_locked AND find_my = $2 AND supervised \
             AND lower(organization) = lower($3) AND (false OR outcome = $4) \
             AND station_id = $5"
        );
        let values = [
            FilterValue::Text("r1".into()),
            FilterValue::Bool(false),
            FilterValue::Text("Acme".into()),
            FilterValue::Text("activated".into()),
        ];
        assert_eq!(sqlite.params, values);
        assert_eq!(postgres.params[..4], values);
        assert_eq!(
            Filter::default()
                .to_sql(Dialect::Postgres)
                .expect("empty")
                .where_sql(),
            ""
        );
    }
}
