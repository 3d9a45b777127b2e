//! `station config check` / `station config example`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use station_config::{ConfigError, Environment, StationConfig, EXAMPLE};
use station_protocol::usbmux::Address;

use crate::cli::ConfigAction;
use crate::codes::registry::{self, SourceCheck};
use crate::error::{exit, StationError};
use crate::http::RetryPolicy;

pub fn invalid(e: ConfigError) -> StationError {
    StationError::ConfigInvalid(e)
}

/// What `station run` checks in its configuration before the first phone: every code
/// source is built (files read, secrets and keys loaded), the activation server and the
/// usbmuxd address are set up. `station config check` runs this same function, so it
/// fails exactly when the run would refuse to start.
#[derive(Debug, Serialize)]
pub struct Preflight {
    sources: Vec<SourceCheck>,
    /// Why `station run` would refuse the file (never a secret's value).
    pub problems: Vec<String>,
    /// Valid but unwise (LocationID slot keys, a hook program not executable yet).
    pub warnings: Vec<String>,
}

pub fn preflight(config: &StationConfig, data_dir: &Path, env: &Environment) -> Preflight {
    let retry = RetryPolicy::from_config(&config.retry);
    let secret_env = config.secret_env_names().into_keys().collect();
    let sources: Vec<SourceCheck> = config
        .codes
        .sources
        .iter()
        .map(|source| registry::check(source, retry, env, &secret_env))
        .collect();
    let mut problems = Vec::new();
    for source in &sources {
        if let Some(problem) = &source.problem {
            problems.push(format!(
                "code source `{}` ({}): {problem}",
                source.name, source.r#type
            ));
        }
    }
    if let Err(e) = super::run::activation_server(config) {
        problems.push(format!("[activation]: {e}"));
    }
    // As `station run` picks it: the file's address, else USBMUXD_SOCKET_ADDRESS.
    match &config.usbmuxd.address {
        Some(address) => {
            if let Err(e) = Address::parse(address) {
                problems.push(format!("[usbmuxd] address: {e}"));
            }
        }
        None => {
            if let Err(e) = Address::from_env() {
                problems.push(format!("{}: {e}", station_protocol::usbmux::ADDRESS_ENV));
            }
        }
    }
    if let Some(problem) = data_dir_problem(data_dir) {
        problems.push(problem);
    }
    let mut warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    warnings.extend(sources.iter().filter_map(|s| s.warning.clone()));
    Preflight {
        sources,
        problems,
        warnings,
    }
}

/// Whether the ledger's directory exists or can be created, and can be written, as the
/// ledger needs at start (checked without creating anything).
fn data_dir_problem(dir: &Path) -> Option<String> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent()?;
    }
    if !existing.is_dir() {
        return Some(format!(
            "data directory {}: {} is not a directory",
            dir.display(),
            existing.display()
        ));
    }
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    rustix::fs::access(existing, access).err().map(|e| {
        format!(
            "data directory {}: {} is not writable by this user ({e})",
            dir.display(),
            existing.display()
        )
    })
}

impl Preflight {
    /// Logs the warnings (the run's screen shows logs above the rows).
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
    }

    /// The run's refusal, if any: every problem at once.
    pub fn refusal(&self) -> Result<(), StationError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(StationError::ConfigRefused {
            problems: self.problems.clone(),
        })
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    file: Option<String>,
    station_id: String,
    data_dir: String,
    concurrency: u32,
    usbmuxd: String,
    pair_records: String,
    activation_url: String,
    slots: usize,
    /// Whether `station run` would start with this file.
    usable: bool,
    #[serde(flatten)]
    preflight: Preflight,
}

pub fn run(
    action: &ConfigAction,
    explicit: Option<&Path>,
    data_dir: Option<&Path>,
    json: bool,
) -> Result<u8, StationError> {
    match action {
        ConfigAction::Example => {
            let _ = std::io::stdout().write_all(EXAMPLE.as_bytes());
            Ok(0)
        }
        ConfigAction::Check { env_file } => {
            let env = match env_file {
                Some(path) => Environment::with_env_file(path).map_err(StationError::EnvFile)?,
                None => Environment::process(),
            };
            let file = StationConfig::discover(explicit);
            let config = match &file {
                Some(path) => StationConfig::load(path).map_err(invalid)?,
                None => StationConfig::default(),
            };
            // As `station run` picks it: --data-dir / STATION_DATA_DIR, else the file's.
            let data_dir = data_dir.unwrap_or(&config.station.data_dir).to_path_buf();
            let checked = preflight(&config, &data_dir, &env);
            let summary = summarise(&config, file.as_deref(), &data_dir, checked);
            let mut out = std::io::stdout().lock();
            let written = if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&summary).unwrap_or_default()
                )
            } else {
                write!(out, "{}", render(&summary))
            };
            drop(written);
            if json {
                // The JSON above is the whole answer; the exit code says the rest.
                return Ok(if summary.usable { 0 } else { exit::USAGE });
            }
            summary.preflight.refusal().map(|()| 0)
        }
    }
}

fn summarise(
    config: &StationConfig,
    file: Option<&Path>,
    data_dir: &Path,
    preflight: Preflight,
) -> Summary {
    Summary {
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

fn render(s: &Summary) -> String {
    let mut out = String::new();
    let name = s
        .file
        .as_deref()
        .unwrap_or("defaults (no configuration file found)");
    out.push_str(&if s.usable {
        format!("{name}: valid\n")
    } else {
        format!("{name}: `station run` would refuse it\n")
    });
    out.push_str(&format!(
        "station {} keeps its ledger in {}, works on up to {} phones at once\n",
        s.station_id, s.data_dir, s.concurrency
    ));
    out.push_str(&format!(
        "usbmuxd at {}; pair records {}\n",
        s.usbmuxd, s.pair_records
    ));
    out.push_str(&format!("activation server {}\n", s.activation_url));
    out.push_str(&format!("{} slot label(s)\n", s.slots));
    let p = &s.preflight;
    if p.sources.is_empty() {
        out.push_str("no bypass-code source: Activation-Locked phones end locked_no_code\n");
    }
    for (i, source) in p.sources.iter().enumerate() {
        out.push_str(&format!(
            "code source {}: {} ({}): {}\n",
            i + 1,
            source.name,
            source.r#type,
            source.detail
        ));
        if let Some(problem) = &source.problem {
            out.push_str(&format!("  problem: {problem}\n"));
        }
    }
    for warning in &p.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> StationConfig {
        StationConfig::parse(text, Path::new("station.toml")).expect("valid file")
    }

    #[test]
    fn problems_refuse_and_warnings_do_not() {
        let dir = tempfile::tempdir().expect("dir");
        let text = format!(
            "[usbmuxd]\naddress = \"UNIX:\"\n\n[slots]\n\"0x00010002\" = \"A1\"\n\n[[codes.sources]]\ntype = \"csv\"\npath = \"{}\"\n\n[[codes.sources]]\ntype = \"command\"\nprogram = \"{}\"\n",
            dir.path().join("missing.csv").display(),
            dir.path().join("missing-hook").display(),
        );
        // A data directory under a regular file cannot be created (root included).
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").expect("file");
        let checked = preflight(&config(&text), &file.join("data"), &Environment::process());
        assert_eq!(checked.problems.len(), 3, "{:?}", checked.problems);
        assert!(checked.problems[0].starts_with("code source `csv` (csv): "));
        assert!(checked.problems[1].starts_with("[usbmuxd] address: "));
        assert!(checked.problems[2].ends_with("a-file is not a directory"));
        assert_eq!(checked.warnings.len(), 2, "{:?}", checked.warnings);
        assert!(checked.warnings[0].contains("LocationID"));
        assert!(checked.warnings[1].contains("missing-hook"));
        let refusal = checked.refusal().expect_err("refused");
        assert_eq!(
            (refusal.code(), refusal.exit_code()),
            ("config-refused", exit::USAGE)
        );

        let fine = preflight(
            &config("[slots]\n\"1-1.4.2\" = \"A1\"\n"),
            &dir.path().join("new").join("data"),
            &Environment::process(),
        );
        assert!(fine.problems.is_empty() && fine.warnings.is_empty());
        assert!(fine.refusal().is_ok());
    }
}
