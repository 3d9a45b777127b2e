//! The ledger file: where it lives, how it is opened (durability settings), its schema and
//! the `user_version` migrations, and the lock that makes one station process its writer.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::{sqlite, LedgerError};

pub const LEDGER_FILE: &str = "ledger.sqlite3";
const LOCK_FILE: &str = "ledger.lock";
/// How long a statement waits for another connection's write (a `station report` running
/// migrations, a second reader) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema versions: `MIGRATIONS[n]` takes a ledger from `user_version` n to n + 1.
/// Never edit a released entry; append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: runs, attempts and per-step timings. The CHECK on `released_code` is a last line
    // of defence: only the masked shape `XXXXX-…-XXXX` fits, never a whole code.
    r#"
    CREATE TABLE runs (
        run_id      TEXT PRIMARY KEY,
        station_id  TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        status      TEXT NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'finished', 'interrupted')),
        summary     TEXT
    );
    CREATE TABLE attempts (
        id                INTEGER PRIMARY KEY,
        run_id            TEXT NOT NULL,
        station_id        TEXT NOT NULL,
        udid              TEXT NOT NULL,
        serial            TEXT,
        product_type      TEXT,
        product_version   TEXT,
        slot              TEXT,
        location_id       INTEGER NOT NULL,
        started_at        TEXT NOT NULL,
        finished_at       TEXT,
        current_step      TEXT,
        -- NULL while in progress. No CHECK list: a new outcome must never fail a commit.
        outcome           TEXT,
        message           TEXT,
        stopped_at        TEXT,
        activation_state  TEXT,
        activation_locked INTEGER NOT NULL DEFAULT 0 CHECK (activation_locked IN (0, 1)),
        codes_tried       INTEGER NOT NULL DEFAULT 0,
        released_source   TEXT,
        released_kind     TEXT,
        released_code     TEXT CHECK (released_code IS NULL OR released_code GLOB
                              '[0-9A-Z][0-9A-Z][0-9A-Z][0-9A-Z][0-9A-Z]-…-[0-9A-Z][0-9A-Z][0-9A-Z][0-9A-Z]'),
        remote_source     TEXT,
        remote_action     TEXT,
        elapsed_ms        INTEGER,
        recovered_at      TEXT
    );
    CREATE INDEX attempts_by_start ON attempts (started_at);
    CREATE INDEX attempts_by_phone ON attempts (udid, started_at);
    CREATE INDEX attempts_by_run ON attempts (run_id, udid);
    CREATE INDEX attempts_in_progress ON attempts (id) WHERE outcome IS NULL;
    CREATE TABLE steps (
        attempt_id INTEGER NOT NULL REFERENCES attempts (id),
        seq        INTEGER NOT NULL,
        step       TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at   TEXT,
        PRIMARY KEY (attempt_id, seq)
    ) WITHOUT ROWID;
    "#,
    // 2: a run that could not start is `failed`, with its one-line reason in `error`.
    // SQLite cannot change a CHECK in place, so `runs` is rebuilt (nothing references it).
    r#"
    CREATE TABLE runs_v2 (
        run_id      TEXT PRIMARY KEY,
        station_id  TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        status      TEXT NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'finished', 'interrupted', 'failed')),
        summary     TEXT,
        error       TEXT
    );
    INSERT INTO runs_v2 (run_id, station_id, started_at, finished_at, status, summary)
        SELECT run_id, station_id, started_at, finished_at, status, summary FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_v2 RENAME TO runs;
    "#,
    // 3: each phone's lock and management state as it told it (docs/report.md). NULL is
    // "said nothing", never false: older rows keep NULL.
    r#"
    ALTER TABLE attempts ADD COLUMN find_my INTEGER CHECK (find_my IN (0, 1));
    ALTER TABLE attempts ADD COLUMN passcode_set INTEGER CHECK (passcode_set IN (0, 1));
    ALTER TABLE attempts ADD COLUMN supervised INTEGER CHECK (supervised IN (0, 1));
    ALTER TABLE attempts ADD COLUMN organization TEXT;
    ALTER TABLE attempts ADD COLUMN mdm_enrolled INTEGER CHECK (mdm_enrolled IN (0, 1));
    ALTER TABLE attempts ADD COLUMN mdm_unremovable INTEGER CHECK (mdm_unremovable IN (0, 1));
    CREATE INDEX attempts_by_organization ON attempts (organization) WHERE organization IS NOT NULL;
    "#,
    // 4: the fleet outbox (docs/fleet.md): each attempt is queued here in the transaction
    // that gives it its outcome, and leaves only once the fleet database has it. Attempts
    // finished before this version are queued too, oldest first, so a station that joins
    // a fleet ships its history.
    r#"
    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        attempt_id INTEGER NOT NULL UNIQUE REFERENCES attempts (id)
    );
    INSERT INTO outbox (attempt_id)
        SELECT id FROM attempts WHERE outcome IS NOT NULL ORDER BY finished_at, id;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn ledger_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LEDGER_FILE)
}

/// The data directory, created private (0700): the ledger names customers' phones.
pub fn create_private_dir(dir: &Path) -> Result<(), LedgerError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| LedgerError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Makes this process the ledger's only writer for as long as the returned file is open.
/// The kernel drops the lock when the process dies, however it dies, so a crashed
/// station never blocks its successor.
pub fn lock_writer(data_dir: &Path) -> Result<File, LedgerError> {
    let path = data_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| LedgerError::Io {
            path: path.clone(),
            source,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(LedgerError::InUse {
            dir: data_dir.to_path_buf(),
        }),
        Err(e) => Err(LedgerError::Io {
            path,
            source: e.into(),
        }),
    }
}

/// Whether `open` may create the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Yes,
    No,
}

/// Opens (or creates) the ledger, applies the durability settings and migrates it.
pub fn open(path: &Path, create: Create) -> Result<Connection, LedgerError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create == Create::Yes {
        // SQLite gives its -wal and -shm files the main file's mode: create it private.
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| LedgerError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut conn =
        Connection::open_with_flags(path, flags).map_err(|source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    configure(&conn)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// WAL with `synchronous=FULL`: a commit returns only once it is in the WAL on disk, so a
/// committed outcome survives a crash or a power cut; readers (`station report`) never
/// block the line.
fn configure(conn: &Connection) -> Result<(), LedgerError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite("busy_timeout"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sqlite("journal_mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::NoWal { mode });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite("synchronous"))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sqlite("foreign_keys"))?;
    // SQLite's page cache (2 MiB by default) fills as the ledger grows, so a long service
    // run's memory grew with it for its first thousand phones (issue 13, docs/testing.md
    // "Soak"). The line appends at the tail and `station report` reads through the
    // operating system's file cache anyway: 512 KiB is plenty and is full early.
    conn.pragma_update(None, "cache_size", LEDGER_CACHE_KIB)
        .map_err(sqlite("cache_size"))?;
    Ok(())
}

/// The page cache of a ledger connection, as SQLite's `cache_size` takes it: negative means
/// KiB.
pub const LEDGER_CACHE_KIB: i64 = -512;

fn user_version(conn: &Connection) -> Result<i64, LedgerError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite("user_version"))
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), LedgerError> {
    let newer = |found| LedgerError::NewerSchema {
        path: path.to_path_buf(),
        found,
        supported: SCHEMA_VERSION,
    };
    if user_version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    // Immediate: two processes opening a fresh ledger at once migrate it once.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite("migrate"))?;
    let found = user_version(&tx)?;
    if found > SCHEMA_VERSION {
        return Err(newer(found));
    }
    let from = usize::try_from(found).map_err(|_| newer(found))?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tracing::info!(
            ledger = %path.display(),
            version = version + 1,
            "migrating the ledger"
        );
        tx.execute_batch(sql).map_err(sqlite("migrate"))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sqlite("migrate"))?;
    tx.commit().map_err(sqlite("migrate"))
}

/// Makes a newly created ledger's directory entry durable too.
pub fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        if e.kind() != ErrorKind::Unsupported {
            tracing::warn!(dir = %dir.display(), "cannot sync the data directory: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_settings_and_schema_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(&ledger_path(dir.path()), Create::Yes).expect("open");
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        let synchronous: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("synchronous");
        assert_eq!(mode, "wal");
        assert_eq!(synchronous, 2, "synchronous must be FULL (2)");
        assert_eq!(user_version(&conn).expect("version"), SCHEMA_VERSION);
        // The page cache is bounded below SQLite's default (issue 13).
        let cache: i64 = conn
            .pragma_query_value(None, "cache_size", |r| r.get(0))
            .expect("cache_size");
        assert_eq!(cache, LEDGER_CACHE_KIB);
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("a/b");
        create_private_dir(&data).expect("dir");
        let _conn = open(&ledger_path(&data), Create::Yes).expect("open");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&ledger_path(&data)), 0o600);
    }

    #[test]
    fn reopening_keeps_the_schema_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = ledger_path(dir.path());
        drop(open(&path, Create::Yes).expect("create"));
        let conn = open(&path, Create::No).expect("reopen");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        drop(conn);
        assert!(matches!(
            open(&path, Create::No),
            Err(LedgerError::NewerSchema { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }

    #[test]
    fn version_1_ledgers_gain_the_failed_run_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = ledger_path(dir.path());
        {
            let conn = Connection::open(&path).expect("create v1");
            conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            conn.execute(
                "INSERT INTO runs (run_id, station_id, started_at, status) VALUES ('old', 's', 't', 'finished')",
                [],
            )
            .expect("v1 run");
            assert!(
                conn.execute(
                    "INSERT INTO runs (run_id, station_id, started_at, status) VALUES ('x', 's', 't', 'failed')",
                    [],
                )
                .is_err(),
                "version 1 has no `failed`"
            );
            conn.pragma_update(None, "user_version", 1).expect("v1");
        }
        let conn = open(&path, Create::No).expect("migrate");
        assert_eq!(user_version(&conn).expect("version"), SCHEMA_VERSION);
        let old: String = conn
            .query_row("SELECT status FROM runs WHERE run_id = 'old'", [], |r| {
                r.get(0)
            })
            .expect("old run kept");
        assert_eq!(old, "finished");
        conn.execute(
            "INSERT INTO runs (run_id, station_id, started_at, status, error) VALUES ('new', 's', 't', 'failed', 'why')",
            [],
        )
        .expect("`failed` is allowed now");
        assert!(conn
            .execute(
                "INSERT INTO runs (run_id, station_id, started_at, status) VALUES ('bad', 's', 't', 'exploded')",
                [],
            )
            .is_err());
    }

    #[test]
    fn version_2_ledgers_gain_the_management_columns_and_keep_their_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = ledger_path(dir.path());
        {
            let conn = Connection::open(&path).expect("create v2");
            conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            conn.execute_batch(MIGRATIONS[1]).expect("v2 schema");
            conn.execute_batch(
                "INSERT INTO runs (run_id, station_id, started_at, status) VALUES ('old', 's', 't', 'finished');
                 INSERT INTO attempts (run_id, station_id, udid, serial, location_id, started_at, outcome, activation_state)
                     VALUES ('old', 's', 'U1', 'S1', 1, 't', 'activated', 'Activated'),
                            ('old', 's', 'U2', 'S2', 2, 't', 'user_locked', 'Unactivated');",
            )
            .expect("v2 rows");
            conn.pragma_update(None, "user_version", 2).expect("v2");
        }
        let conn = open(&path, Create::No).expect("migrate");
        assert_eq!(user_version(&conn).expect("version"), SCHEMA_VERSION);
        let rows: Vec<(String, String, Option<bool>, Option<String>)> = conn
            .prepare("SELECT udid, outcome, find_my, organization FROM attempts ORDER BY udid")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            [
                ("U1".into(), "activated".into(), None, None),
                ("U2".into(), "user_locked".into(), None, None)
            ],
            "rows kept; what was never read stays NULL, not false"
        );
        conn.execute(
            "UPDATE attempts SET find_my = 1, supervised = 1, organization = 'Acme' WHERE udid = 'U1'",
            [],
        )
        .expect("the new columns take values");
        assert!(conn
            .execute("UPDATE attempts SET find_my = 2 WHERE udid = 'U1'", [])
            .is_err());
    }

    #[test]
    fn a_missing_ledger_is_not_created_without_asking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = ledger_path(dir.path());
        assert!(open(&path, Create::No).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn one_writer_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock_writer(dir.path()).expect("first lock");
        assert!(matches!(
            lock_writer(dir.path()),
            Err(LedgerError::InUse { .. })
        ));
        drop(first);
        assert!(lock_writer(dir.path()).is_ok());
    }
}
