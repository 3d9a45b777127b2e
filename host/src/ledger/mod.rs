//! The ledger: an embedded SQLite database in the data directory recording every attempt on
//! every phone — identity, slot, station, run, per-step timings, outcome and reason, whether
//! Activation Lock was seen and which code source released it (the code masked, never
//! whole).
//!
//! Durability: WAL with `synchronous=FULL`; [`Ledger::finish`] resolves only once the
//! outcome is on disk, so the line shows an outcome after it is safe. Opening the ledger
//! closes the attempts a crashed (killed, powered-off) process left in progress as
//! `interrupted`, saying at which step it stopped. One process writes at a time (a lock
//! file); any number read ([`LedgerReader`], `station report`).
//!
//! Schema and report fields: docs/report.md.

mod outbox;
mod query;
mod schema;
mod secret;
mod stamp;
mod store;
mod writer;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use rusqlite::Connection;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::activation::ActivationReport;
#[cfg(test)]
use crate::activation::Outcome;

pub use outbox::Pending;
pub use query::{keep_latest_per_phone, AttemptRecord, Filter, Status};
pub use query::{Dialect, FilterSql, FilterValue};
#[cfg(test)]
pub use query::{ReleaseRecord, RemoteReleaseRecord};
pub use schema::ledger_path;
#[cfg(test)]
pub use schema::LEDGER_FILE;
pub use stamp::after_millisecond;
pub use stamp::format as format_stamp;
#[cfg(test)]
pub use store::OutcomeCount;
pub use store::{AttemptStart, Recovered, RunSummary};

/// One attempt's row in the ledger.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct AttemptId(i64);

impl AttemptId {
    pub fn get(self) -> i64 {
        self.0
    }
}

/// An attempt id for stand-in attempt logs in tests.
#[cfg(test)]
pub fn test_attempt_id(n: usize) -> AttemptId {
    AttemptId(i64::try_from(n).unwrap_or(i64::MAX))
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the ledger {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("ledger: {context}: {source}")]
    Sqlite {
        context: &'static str,
        source: rusqlite::Error,
    },
    #[error("the ledger's filesystem does not support WAL (journal mode stays {mode})")]
    NoWal { mode: String },
    #[error("another station process is writing the ledger in {dir}")]
    InUse { dir: PathBuf },
    #[error("the ledger {path} has schema version {found}; this station reads up to {supported}")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("no attempt {id} in the ledger")]
    UnknownAttempt { id: AttemptId },
    #[error("attempt {id} already has its outcome")]
    AlreadyFinished { id: AttemptId },
    #[error("no run {run_id:?} in the ledger")]
    UnknownRun { run_id: String },
    #[error("invalid step name {step:?}: letters, digits, `_` and `-` only")]
    InvalidStep { step: String },
    /// Never carries the text: it may be a whole bypass code.
    #[error("refusing to store the bypass code from {code_source:?}: it is not in masked form")]
    UnmaskedCode { code_source: String },
    #[error("ledger column {column} holds {value:?}, which this station does not understand")]
    Corrupt { column: &'static str, value: String },
    #[error("cannot format a timestamp: {reason}")]
    Timestamp { reason: String },
    #[error("cannot encode the {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("ledger commit failed: {reason}")]
    Commit { reason: String },
    #[error("the ledger is closed")]
    Closed,
}

/// Wraps a SQLite error with what the ledger was doing.
fn sqlite(context: &'static str) -> impl FnOnce(rusqlite::Error) -> LedgerError {
    move |source| LedgerError::Sqlite { context, source }
}

use crate::output::wire_name;

/// The line's handle on the ledger: cheap to clone, safe to share between tasks. Every
/// method queues its work when called and returns a future that resolves once the work is
/// committed; work queued by one task commits in the order it was queued. Dropping the
/// future does not cancel the work (errors are then logged), so progress updates can be
/// fire-and-forget: `drop(ledger.record_step(..))`.
#[derive(Clone)]
pub struct Ledger {
    queue: mpsc::Sender<writer::Message>,
    station_id: Arc<str>,
    path: Arc<Path>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("station_id", &self.station_id)
            .finish()
    }
}

impl Ledger {
    /// Opens (creating if needed) `data_dir/ledger.sqlite3` as this process's ledger,
    /// closes what an earlier process left in progress and returns it. Blocking (file
    /// system, fsync): call it before the line starts or in `spawn_blocking`.
    pub fn open(
        data_dir: &Path,
        station_id: &str,
    ) -> Result<(Ledger, Vec<Recovered>), LedgerError> {
        schema::create_private_dir(data_dir)?;
        let lock = schema::lock_writer(data_dir)?;
        let path = ledger_path(data_dir);
        let mut conn = schema::open(&path, schema::Create::Yes)?;
        let recovered = {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sqlite("recover"))?;
            let recovered = store::recover(&tx, SystemTime::now())?;
            tx.commit().map_err(sqlite("recover"))?;
            recovered
        };
        schema::sync_dir(data_dir);
        let (queue, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer::run(conn, lock, jobs))
            .map_err(|source| LedgerError::Io {
                path: path.clone(),
                source,
            })?;
        tracing::info!(ledger = %path.display(), recovered = recovered.len(), "ledger open");
        let ledger = Ledger {
            queue,
            station_id: station_id.into(),
            path: path.into(),
        };
        Ok((ledger, recovered))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn call<T, F>(&self, work: F) -> impl Future<Output = Result<T, LedgerError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    {
        writer::call(&self.queue, work)
    }

    pub fn start_run(
        &self,
        run_id: &str,
        started_at: SystemTime,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send + 'static {
        let (run_id, station) = (run_id.to_string(), Arc::clone(&self.station_id));
        self.call(move |c| store::start_run(c, &run_id, &station, started_at))
    }

    /// Marks the run finished and returns its counts (each phone by its newest attempt).
    pub fn finish_run(
        &self,
        run_id: &str,
        finished_at: SystemTime,
    ) -> impl Future<Output = Result<RunSummary, LedgerError>> + Send + 'static {
        let run_id = run_id.to_string();
        self.call(move |c| store::finish_run(c, &run_id, finished_at))
    }

    /// Marks the run `failed` (it could not start, or broke off) with a one-line reason.
    pub fn fail_run(
        &self,
        run_id: &str,
        finished_at: SystemTime,
        error: &str,
    ) -> impl Future<Output = Result<RunSummary, LedgerError>> + Send + 'static {
        let (run_id, error) = (run_id.to_string(), error.to_string());
        self.call(move |c| store::fail_run(c, &run_id, finished_at, &error))
    }

    /// Records a new attempt, in progress until [`Ledger::finish`].
    pub fn begin(
        &self,
        start: &AttemptStart,
    ) -> impl Future<Output = Result<AttemptId, LedgerError>> + Send + 'static {
        let (start, station) = (start.clone(), Arc::clone(&self.station_id));
        self.call(move |c| store::begin(c, &station, &start))
    }

    pub fn update_identity(
        &self,
        id: AttemptId,
        serial: &str,
        product_type: Option<&str>,
        product_version: Option<&str>,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send + 'static {
        let serial = serial.to_string();
        let product_type = product_type.map(str::to_string);
        let product_version = product_version.map(str::to_string);
        self.call(move |c| {
            store::update_identity(
                c,
                id,
                &serial,
                product_type.as_deref(),
                product_version.as_deref(),
            )
        })
    }

    /// The attempt entered `step` (e.g. [`wire_name`] of an activation `Step`) at `at`;
    /// ends the previous step there.
    pub fn record_step(
        &self,
        id: AttemptId,
        step: &str,
        at: SystemTime,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send + 'static {
        let step = step.to_string();
        self.call(move |c| store::record_step(c, id, &step, at))
    }

    /// Records the outcome, in one transaction; resolves once it is on disk. A release
    /// whose code is not masked is stored without the code (and logged).
    pub fn finish(
        &self,
        id: AttemptId,
        report: &ActivationReport,
        finished_at: SystemTime,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send + 'static {
        let report = report.clone();
        self.call(move |c| store::finish(c, id, &report, finished_at))
    }

    /// The oldest `limit` attempts waiting for the fleet database, in the order they
    /// finished (docs/fleet.md).
    pub fn outbox_pending(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Pending, LedgerError>> + Send + 'static {
        self.call(move |c| outbox::pending(c, limit))
    }

    /// The fleet database has committed every queued attempt up to `seq`: they leave the
    /// outbox. Returns how many are still waiting.
    pub fn outbox_shipped(
        &self,
        seq: i64,
    ) -> impl Future<Output = Result<u64, LedgerError>> + Send + 'static {
        self.call(move |c| outbox::shipped(c, seq))
    }

    /// How `udid`'s newest finished attempt in `run_id` ended, if it had one.
    /// Read back what was written (the tests' view; `report` uses [`LedgerReader`]).
    #[cfg(test)]
    pub fn handled_in_run(
        &self,
        run_id: &str,
        udid: &str,
    ) -> impl Future<Output = Result<Option<Outcome>, LedgerError>> + Send + 'static {
        let (run_id, udid) = (run_id.to_string(), udid.to_string());
        self.call(move |c| query::handled_in_run(c, &run_id, &udid))
    }

    /// `udid`'s newest attempt in any run, finished or not.
    /// Read back what was written (the tests' view; `report` uses [`LedgerReader`]).
    #[cfg(test)]
    pub fn latest_for(
        &self,
        udid: &str,
    ) -> impl Future<Output = Result<Option<AttemptRecord>, LedgerError>> + Send + 'static {
        let udid = udid.to_string();
        self.call(move |c| query::latest_for(c, &udid))
    }

    /// Read back what was written (the tests' view; `report` uses [`LedgerReader`]).
    #[cfg(test)]
    pub fn attempts(
        &self,
        filter: Filter,
    ) -> impl Future<Output = Result<Vec<AttemptRecord>, LedgerError>> + Send + 'static {
        self.call(move |c| query::attempts(c, &filter))
    }

    /// Waits for queued work, then closes the database and releases the writer lock (a
    /// new `open` in this process succeeds after this). Other clones then get `Closed`.
    pub async fn close(self) {
        let (ack, closed) = oneshot::channel();
        if self.queue.send(writer::Message::Close(ack)).is_ok() {
            let _ = closed.await;
        }
    }
}

/// Read access for reports: no lock, no recovery, so it never disturbs a running line.
/// Attempts a running (or crashed, not yet restarted) station has not finished read as
/// `in_progress`.
pub struct LedgerReader {
    conn: Connection,
}

impl LedgerReader {
    /// `None` when there is no ledger in `data_dir` (nothing processed yet).
    pub fn open(data_dir: &Path) -> Result<Option<LedgerReader>, LedgerError> {
        let path = ledger_path(data_dir);
        if !path.exists() {
            return Ok(None);
        }
        let conn = schema::open(&path, schema::Create::No)?;
        Ok(Some(LedgerReader { conn }))
    }

    pub fn attempts(&self, filter: &Filter) -> Result<Vec<AttemptRecord>, LedgerError> {
        query::attempts(&self.conn, filter)
    }

    /// How many finished attempts wait for the fleet database.
    pub fn outbox_backlog(&self) -> Result<u64, LedgerError> {
        outbox::backlog(&self.conn)
    }
}

#[cfg(test)]
pub(crate) mod tests;
