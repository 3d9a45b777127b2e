//! The fleet database's schema: versioned migrations the stations apply themselves, under
//! a PostgreSQL advisory lock so that stations starting at once migrate it exactly once.
//! The table `station_schema_migrations` records each version applied.

use tokio_postgres::Client;

use super::{query, timed, FleetError, QUERY_TIMEOUT};

/// Taken (per transaction) while migrating: `pg_advisory_xact_lock` of this key.
/// Any fixed number works; it is "station" in ASCII.
const MIGRATION_LOCK: i64 = 0x73_7461_7469_6f6e;

/// `MIGRATIONS[n]` takes the schema from version n to n + 1. Never edit a released entry;
/// append a new one. Reports read `record` (the attempt as `station report --format json`
/// writes it, its code masked); the other columns are for filters and indexes.
const MIGRATIONS: &[(&str, &str)] = &[(
    "attempts and station heartbeats",
    r#"
    CREATE TABLE station_attempts (
        station_id        text    NOT NULL,
        attempt_id        bigint  NOT NULL,
        run_id            text    NOT NULL,
        udid              text    NOT NULL,
        serial            text,
        -- The local ledger's stamps (2026-11-27T14:03:12.345Z): text order is time order.
        started_at        text    NOT NULL,
        finished_at       text,
        outcome           text    NOT NULL,
        activation_locked boolean NOT NULL,
        find_my           boolean,
        supervised        boolean,
        organization      text,
        record            jsonb   NOT NULL,
        shipped_at        timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (station_id, attempt_id)
    );
    CREATE INDEX station_attempts_by_start ON station_attempts (started_at);
    CREATE INDEX station_attempts_by_phone ON station_attempts (udid, started_at);
    CREATE INDEX station_attempts_by_run ON station_attempts (run_id);
    CREATE TABLE station_heartbeats (
        station_id      text        PRIMARY KEY,
        last_seen       timestamptz NOT NULL,
        outbox_backlog  bigint      NOT NULL,
        last_shipped_at timestamptz,
        -- The station's last failure to ship, with when it happened; NULL if none yet.
        last_error      text,
        version         text        NOT NULL
    );
    "#,
)];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS station_schema_migrations (
    version     integer     PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

/// The database's schema version; `None` when no station has created the schema yet.
pub async fn version(client: &Client) -> Result<Option<i32>, FleetError> {
    timed("reading the schema version", QUERY_TIMEOUT, async {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass('station_schema_migrations') IS NOT NULL",
                &[],
            )
            .await
            .map_err(query("schema version"))?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let found: Option<i32> = client
            .query_one("SELECT max(version) FROM station_schema_migrations", &[])
            .await
            .map_err(query("schema version"))?
            .get(0);
        Ok(Some(found.unwrap_or(0)))
    })
    .await
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: i32,
    pub to: i32,
}

/// Brings the schema to [`SCHEMA_VERSION`]. A schema already current is only read, so a
/// station whose role may not create tables (docs/fleet.md) starts fine once the schema
/// exists. Otherwise the migrations run in one transaction holding the advisory lock:
/// a second station waits for it, then finds the work done.
pub async fn migrate(client: &mut Client) -> Result<Migrated, FleetError> {
    if let Some(found) = version(client).await? {
        check_not_newer(found)?;
        if found == SCHEMA_VERSION {
            return Ok(Migrated {
                from: found,
                to: found,
            });
        }
    }
    timed("migrating the schema", QUERY_TIMEOUT, async {
        let tx = client
            .transaction()
            .await
            .map_err(query("migrate: begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(query("migrate: lock"))?;
        tx.batch_execute(CREATE_MIGRATIONS_TABLE)
            .await
            .map_err(query("migrate: migrations table"))?;
        let found: i32 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM station_schema_migrations",
                &[],
            )
            .await
            .map_err(query("migrate: version"))?
            .get(0);
        check_not_newer(found)?;
        let from = usize::try_from(found).unwrap_or(0);
        for (index, (description, sql)) in MIGRATIONS.iter().enumerate().skip(from) {
            let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
            tracing::info!(version, "migrating the fleet database: {description}");
            tx.batch_execute(sql).await.map_err(query("migrate"))?;
            tx.execute(
                "INSERT INTO station_schema_migrations (version, description) VALUES ($1, $2)",
                &[&version, description],
            )
            .await
            .map_err(query("migrate: record the version"))?;
        }
        tx.commit().await.map_err(query("migrate: commit"))?;
        Ok(Migrated {
            from: found,
            to: SCHEMA_VERSION,
        })
    })
    .await
}

fn check_not_newer(found: i32) -> Result<(), FleetError> {
    if found > SCHEMA_VERSION {
        return Err(FleetError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Fails unless the schema is there and this build understands it (the reading commands,
/// which never create it).
pub async fn require_current(client: &Client) -> Result<i32, FleetError> {
    match version(client).await? {
        None | Some(0) => Err(FleetError::NoSchema),
        Some(found) => {
            check_not_newer(found)?;
            Ok(found)
        }
    }
}
