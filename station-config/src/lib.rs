//! The station's configuration file (TOML). Strict: unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    #[serde(default)]
    pub station: Station,
    #[serde(default)]
    pub usbmuxd: Usbmuxd,
    #[serde(default)]
    pub pairing: Pairing,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Station {
    /// Names this station in the ledger and reports.
    #[serde(default = "default_station_id")]
    pub id: String,
    /// Seconds to wait for usbmuxd and for each answer of a phone.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

impl Default for Station {
    fn default() -> Self {
        Station {
            id: default_station_id(),
            timeout_secs: default_timeout_secs(),
        }
    }
}

fn default_station_id() -> String {
    "station-1".to_string()
}

fn default_timeout_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Usbmuxd {
    /// `UNIX:/path`, `/path` or `host:port`; `USBMUXD_SOCKET_ADDRESS` and the default
    /// `/var/run/usbmuxd` apply when absent.
    pub address: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pairing {
    /// Keep pair records in this directory (`/var/lib/lockdown` layout) instead of asking
    /// usbmuxd to store them.
    pub records_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl StationConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: StationConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if self.station.id.trim().is_empty() {
            return Err(invalid("station.id must not be empty".into()));
        }
        if !(1..=600).contains(&self.station.timeout_secs) {
            return Err(invalid(format!(
                "station.timeout_secs = {} is out of range 1..=600",
                self.station.timeout_secs
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StationConfig, ConfigError> {
        StationConfig::parse(text, Path::new("station.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").expect("defaults");
        assert_eq!(config.station.id, "station-1");
        assert_eq!(config.station.timeout_secs, 10);
        assert_eq!(config.usbmuxd.address, None);
    }

    #[test]
    fn full_file_parses() {
        let config = parse(
            "[station]\nid = \"bench-7\"\ntimeout_secs = 20\n[usbmuxd]\naddress = \"UNIX:/run/x.sock\"\n[pairing]\nrecords_dir = \"/var/lib/station/lockdown\"\n",
        )
        .expect("parse");
        assert_eq!(config.station.id, "bench-7");
        assert_eq!(config.usbmuxd.address.as_deref(), Some("UNIX:/run/x.sock"));
        assert_eq!(
            config.pairing.records_dir,
            Some(PathBuf::from("/var/lib/station/lockdown"))
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name_and_line() {
        let err = parse("[station]\nid = \"a\"\ntimeout_sec = 3\n").expect_err("typo");
        let text = err.to_string();
        assert!(text.contains("timeout_sec"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse("[station]\ntimeout_secs = 0\n").is_err());
        assert!(parse("[station]\nid = \"  \"\n").is_err());
        assert!(parse("[station]\ntimeout_secs = \"ten\"\n").is_err());
    }
}
