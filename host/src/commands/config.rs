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
    #[serde(flatten)]
    pub preflight: Preflight,
}

pub fn run(action: &ConfigAction, station: &Station) -> Result<Output, StationError> {
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
            Ok(Output::ConfigCheck(Box::new(summarise(
                config,
                station.config_file(),
                data_dir,
                checked,
            ))))
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
        preflight,
    }
}
