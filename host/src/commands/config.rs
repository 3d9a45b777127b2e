//! `station config check` / `station config example`.

use std::path::Path;

use serde::Serialize;
use station_config::{Environment, StationConfig, EXAMPLE};

use crate::cli::ConfigAction;
use crate::error::StationError;
use crate::output::Output;
use crate::preflight::Preflight;
use crate::station::Station;

/// What `station config check` found: the file, what the station would do with it, and
/// the preflight's problems and warnings.
#[derive(Debug, Serialize)]
pub struct ConfigCheck {
    pub file: Option<String>,
    pub station_id: String,
    pub data_dir: String,
    pub concurrency: u32,
    pub usbmuxd: String,
    pub pair_records: String,
    pub activation_url: String,
    pub slots: usize,
    /// Whether `station run` would start with this file.
    pub usable: bool,
    /// The fleet database, connected to (with `[fleet]`).
    pub fleet: Option<FleetCheck>,
    #[serde(flatten)]
    pub preflight: Preflight,
}

/// What `station config check` found at the fleet database. A database that cannot be
/// reached does not stop `station run` (attempts wait in the outbox), so it is reported,
/// not refused.
#[derive(Debug, Serialize)]
pub struct FleetCheck {
    /// The URL, its password shown as `***`.
    pub database: String,
    pub station_id: String,
    pub tls: bool,
    pub server_version: Option<String>,
    /// `null`: no schema yet (the first station creates it).
    pub schema_version: Option<i32>,
    /// The version this station writes.
    pub schema_supported: i32,
    /// Why it could not connect or read, if so.
    pub error: Option<String>,
}

/// Connects to the fleet database and reads its version and schema version.
async fn check_fleet(settings: &crate::fleet::Settings) -> FleetCheck {
    let mut check = FleetCheck {
        database: settings.target.shown().to_string(),
        station_id: settings.station_id.clone(),
        tls: settings.target.tls() == crate::fleet::connect::TlsMode::Verified,
        server_version: None,
        schema_version: None,
        schema_supported: crate::fleet::schema::SCHEMA_VERSION,
        error: None,
    };
    let found = async {
        let client = crate::fleet::connect(&settings.target).await?;
        let version = tokio::time::timeout(
            crate::fleet::QUERY_TIMEOUT,
            client.query_one("SHOW server_version", &[]),
        )
        .await
        .map_err(|_| crate::fleet::FleetError::Timeout {
            what: "reading the server version",
            timeout: crate::fleet::QUERY_TIMEOUT,
        })?
        .map_err(|e| crate::fleet::FleetError::Query {
            context: "server version",
            reason: crate::fleet::describe(&e),
        })?;
        check.server_version = Some(version.get(0));
        check.schema_version = crate::fleet::schema::version(&client).await?;
        Ok::<(), crate::fleet::FleetError>(())
    }
    .await;
    if let Err(e) = found {
        check.error = Some(e.to_string());
    }
    check
}

pub async fn run(action: &ConfigAction, station: &Station) -> Result<Output, StationError> {
    match action {
        ConfigAction::Example => Ok(Output::Text(EXAMPLE)),
        ConfigAction::Check { env_file } => {
            let env = match env_file {
                Some(path) => Environment::with_env_file(path).map_err(StationError::EnvFile)?,
                None => Environment::process(),
            };
            let config = station.config()?;
            // As `station run` picks it: --data-dir / STATION_DATA_DIR, else the file's.
            let data_dir = station.data_dir()?;
            let checked = station.preflight(&env)?;
            let mut summary = summarise(config, station.config_file(), data_dir, checked);
            // A URL that cannot be loaded is already among the preflight's problems.
            if let Ok(Some(settings)) = crate::fleet::Settings::from_config(config, &env) {
                summary.fleet = Some(check_fleet(&settings).await);
            }
            Ok(Output::ConfigCheck(Box::new(summary)))
        }
    }
}

fn summarise(
    config: &StationConfig,
    file: Option<&Path>,
    data_dir: &Path,
    preflight: Preflight,
) -> ConfigCheck {
    ConfigCheck {
        file: file.map(|p| p.display().to_string()),
        station_id: config.station.id.clone(),
        data_dir: data_dir.display().to_string(),
        concurrency: config.station.concurrency,
        usbmuxd: config
            .usbmuxd
            .address
            .clone()
            .or_else(|| std::env::var(station_protocol::usbmux::ADDRESS_ENV).ok())
            .unwrap_or_else(|| format!("UNIX:{}", station_protocol::usbmux::DEFAULT_SOCKET_PATH)),
        pair_records: config.pairing.records_dir.as_ref().map_or_else(
            || "kept by usbmuxd".to_string(),
            |d| d.display().to_string(),
        ),
        activation_url: config.activation.url.clone(),
        slots: config.slots.len(),
        usable: preflight.problems.is_empty(),
        fleet: None,
        preflight,
    }
}
