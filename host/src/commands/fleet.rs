//! `station fleet status` and `station fleet migrate` (docs/fleet.md).

use serde::Serialize;

use crate::cli::FleetCommand;
use crate::error::StationError;
use crate::fleet::read::StationStatus;
use crate::fleet::{connect, schema, Settings};
use crate::output::Output;
use crate::station::Station;

/// What `station fleet status` found.
#[derive(Debug, Serialize)]
pub struct FleetStatus {
    /// The database, its password shown as `***`.
    pub database: String,
    pub schema_version: i32,
    pub stations: Vec<StationStatus>,
}

/// What `station fleet migrate` did.
#[derive(Debug, Serialize)]
pub struct FleetMigrated {
    pub database: String,
    /// The schema version found (0: none).
    pub from: i32,
    pub to: i32,
}

/// `[fleet]` resolved, or why not.
pub fn settings(station: &Station) -> Result<Settings, StationError> {
    Settings::from_config(station.config()?, &station_config::Environment::process())?
        .ok_or(StationError::FleetNotConfigured)
}

pub async fn run(action: &FleetCommand, station: &Station) -> Result<Output, StationError> {
    let settings = settings(station)?;
    let mut client = connect(&settings.target).await?;
    match action {
        FleetCommand::Status => {
            let schema_version = schema::require_current(&client).await?;
            let stations = crate::fleet::read::stations(&client).await?;
            Ok(Output::FleetStatus(FleetStatus {
                database: settings.target.shown().to_string(),
                schema_version,
                stations,
            }))
        }
        FleetCommand::Migrate => {
            let migrated = schema::migrate(&mut client).await?;
            Ok(Output::FleetMigrated(FleetMigrated {
                database: settings.target.shown().to_string(),
                from: migrated.from,
                to: migrated.to,
            }))
        }
    }
}
