//! What `station run` checks in its configuration before the first phone, and `station
//! config check` reports: one function, so the check fails exactly when the run would refuse.

use std::path::Path;

use serde::Serialize;
use station_config::{Environment, StationConfig};
use station_protocol::usbmux::Address;

use crate::activation::ActivationServer;
use crate::codes::registry::{self, SourceCheck};
use crate::error::StationError;
use crate::http::RetryPolicy;

/// What `station run` checks in its configuration before the first phone: every code
/// source is built (files read, secrets and keys loaded), the activation server and the
/// usbmuxd address are set up. `station config check` runs this same function, so it
/// fails exactly when the run would refuse to start.
#[derive(Debug, Serialize)]
pub struct Preflight {
    pub sources: Vec<SourceCheck>,
    /// Why `station run` would refuse the file (never a secret's value).
    pub problems: Vec<String>,
    /// Valid but unwise (LocationID slot keys, a hook program not executable yet).
    pub warnings: Vec<String>,
}

pub fn check(config: &StationConfig, data_dir: &Path, env: &Environment) -> Preflight {
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
    if let Err(e) = ActivationServer::from_config(config) {
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
    // The fleet database may be down (the shipper waits for it); its URL must be there.
    if let Err(e) = crate::fleet::Settings::from_config(config, env) {
        problems.push(e.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit;

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
        let checked = check(&config(&text), &file.join("data"), &Environment::process());
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

        let fine = check(
            &config("[slots]\n\"1-1.4.2\" = \"A1\"\n"),
            &dir.path().join("new").join("data"),
            &Environment::process(),
        );
        assert!(fine.problems.is_empty() && fine.warnings.is_empty());
        assert!(fine.refusal().is_ok());
    }
}
