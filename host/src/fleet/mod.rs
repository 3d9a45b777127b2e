//! The fleet ledger: every finished attempt of this station, shipped to a PostgreSQL
//! database that a floor of stations share, for one report across them
//! (`station report --fleet`) and one view of their health (`station fleet status`).
//!
//! The local ledger stays the source of truth. Attempts reach the database through its
//! outbox (`ledger::outbox`): queued in the transaction that finishes them, shipped in
//! order by [`shipper`], a background task that no phone waits on, and removed only once
//! the database committed them. The database keys attempts by station and attempt id and
//! ignores one it already has, so a crash between the two commits ships an attempt again
//! without counting it twice. Set-up, roles and recovery: docs/fleet.md.

pub mod connect;
pub mod read;
pub mod schema;
pub mod shipper;

use std::time::Duration;

use station_config::{SecretError, StationConfig, DEFAULT_STATION_ID};

pub use connect::{connect, Target};

/// How long a connection (TCP, TLS and log-in) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one statement or transaction may take before the connection is given up.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("[fleet] database_url ({reference}): {source}")]
    Secret {
        reference: String,
        source: SecretError,
    },
    /// Never carries the URL: it holds the password.
    #[error("[fleet] database_url is not a usable PostgreSQL URL: {reason}")]
    Url { reason: String },
    #[error("TLS to the fleet database: {reason}")]
    Tls { reason: String },
    #[error("cannot connect to the fleet database {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("the fleet database did not answer within {}s while {what}", timeout.as_secs())]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("fleet database, {context}: {reason}")]
    Query {
        context: &'static str,
        reason: String,
    },
    #[error("the fleet database has schema version {found}; this station knows up to {supported}: upgrade this station")]
    NewerSchema { found: i32, supported: i32 },
    #[error("the fleet database has no station schema yet: start a station with rights to create it, or run `station fleet migrate`")]
    NoSchema,
    /// The database holds other attempts under this station's name and ids: another
    /// ledger (a rebuilt station) ships under the same `station_id`.
    #[error("the fleet database already holds different attempts as station {station_id} (attempt {attempt_id}): another ledger shipped under this name; give this station a new [fleet] station_id (docs/fleet.md, \"A station whose disk died\")")]
    StationIdTaken { station_id: String, attempt_id: i64 },
    #[error("fleet database row {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("the local ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
}

impl FleetError {
    /// Whether the operator must change the configuration (rather than wait for the
    /// database or fix it).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            FleetError::Secret { .. } | FleetError::Url { .. } | FleetError::Tls { .. }
        )
    }
}

/// Wraps a PostgreSQL error with what the station was doing. The driver's messages carry
/// the server's words, never the URL.
fn query(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> FleetError {
    move |e| FleetError::Query {
        context,
        reason: describe(&e),
    }
}

/// The driver's error with its cause (`error connecting to server: Connection refused`).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Bounds a database await.
async fn timed<T>(
    what: &'static str,
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, FleetError>>,
) -> Result<T, FleetError> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FleetError::Timeout { what, timeout })?
}

/// The fleet part of the configuration, resolved: where the database is and the name this
/// station has there.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    pub station_id: String,
}

impl Settings {
    /// `None` without a `[fleet]` section. Loads the URL from its secret reference.
    pub fn from_config(
        config: &StationConfig,
        env: &station_config::Environment,
    ) -> Result<Option<Settings>, FleetError> {
        let Some(fleet) = &config.fleet else {
            return Ok(None);
        };
        let url = fleet
            .database_url
            .load_from(env)
            .map_err(|source| FleetError::Secret {
                reference: fleet.database_url.describe(),
                source,
            })?;
        Ok(Some(Settings {
            target: Target::parse(url.expose())?,
            station_id: station_id(fleet.station_id.as_deref(), &config.station.id),
        }))
    }
}

/// `[fleet] station_id`, else `[station] id`, else (that still the default, which every
/// station shares) the host name: two stations must never write under one name.
pub fn station_id(fleet: Option<&str>, station: &str) -> String {
    if let Some(id) = fleet {
        return id.trim().to_string();
    }
    if station != DEFAULT_STATION_ID {
        return station.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| station.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_station_id_falls_back_to_the_host_name_only_for_the_default() {
        assert_eq!(station_id(Some("bench-7"), "bench-1"), "bench-7");
        assert_eq!(station_id(None, "bench-1"), "bench-1");
        let host = station_id(None, DEFAULT_STATION_ID);
        assert!(!host.is_empty());
        if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(host, name.trim());
        }
    }

    #[test]
    fn the_url_is_loaded_from_its_reference() {
        let text = "[fleet]\ndatabase_url = { env = \"FLEET_URL_TEST\" }\nstation_id = \"b2\"\n";
        let config = StationConfig::parse(text, std::path::Path::new("t.toml")).expect("config");
        let env = station_config::Environment::process();
        let missing = Settings::from_config(&config, &env).expect_err("unset");
        assert!(missing.to_string().contains("FLEET_URL_TEST"), "{missing}");
        assert!(missing.is_configuration());
        let dir = tempfile::tempdir().expect("tempdir");
        let env_file = dir.path().join("env");
        std::fs::write(
            &env_file,
            "FLEET_URL_TEST=postgresql://station:pw@127.0.0.1:5432/fleet\n",
        )
        .expect("write");
        std::fs::set_permissions(
            &env_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let env = station_config::Environment::with_env_file(&env_file).expect("env file");
        let settings = Settings::from_config(&config, &env)
            .expect("settings")
            .expect("[fleet]");
        assert_eq!(settings.station_id, "b2");
        assert_eq!(
            settings.target.shown(),
            "postgresql://station:***@127.0.0.1:5432/fleet"
        );
    }
}
