//! `station config check` / `station config example`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use station_config::{ConfigError, SourceConfig, StationConfig, EXAMPLE};

use crate::cli::ConfigAction;
use crate::codes::csv_file::CsvCodes;
use crate::error::{exit, StationError};

pub fn invalid(e: ConfigError) -> StationError {
    StationError::new("config-invalid", exit::USAGE, e.to_string())
        .help("fix the line named above; `station config example` prints a valid file")
}

/// One line of the check's findings about a source.
#[derive(Debug, Serialize)]
struct SourceCheck {
    name: String,
    r#type: &'static str,
    detail: String,
    /// `None` when usable; else why not (never a secret's value).
    problem: Option<String>,
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
    sources: Vec<SourceCheck>,
}

pub fn run(action: &ConfigAction, explicit: Option<&Path>, json: bool) -> Result<u8, StationError> {
    match action {
        ConfigAction::Example => {
            let _ = std::io::stdout().write_all(EXAMPLE.as_bytes());
            Ok(0)
        }
        ConfigAction::Check => {
            let file = StationConfig::discover(explicit);
            let config = match &file {
                Some(path) => StationConfig::load(path).map_err(invalid)?,
                None => StationConfig::default(),
            };
            let summary = summarise(&config, file.as_deref());
            let problems = summary
                .sources
                .iter()
                .filter(|s| s.problem.is_some())
                .count();
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
            // A valid file whose secrets or files are not there yet still passes: the check
            // says what is missing, and the station reports it again per phone.
            if problems > 0 {
                tracing::warn!(problems, "some code sources are not usable yet");
            }
            Ok(0)
        }
    }
}

fn summarise(config: &StationConfig, file: Option<&Path>) -> Summary {
    Summary {
        file: file.map(|p| p.display().to_string()),
        station_id: config.station.id.clone(),
        data_dir: config.station.data_dir.display().to_string(),
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
        sources: config.codes.sources.iter().map(check_source).collect(),
    }
}

fn check_source(source: &SourceConfig) -> SourceCheck {
    let (detail, problem) = match source {
        SourceConfig::Csv(csv) => {
            let problem = CsvCodes::load(&csv.path).err().map(|e| e.to_string());
            (format!("file {}", csv.path.display()), problem)
        }
        SourceConfig::Intune(intune) => {
            let (credential, problem) = match (&intune.client_secret, &intune.certificate) {
                (Some(secret), _) => (
                    format!("client secret from {}", secret.describe()),
                    secret.load().err().map(|e| e.to_string()),
                ),
                (None, Some(cert)) => (
                    format!("certificate {}", cert.cert_file.display()),
                    station_config::read_private_file(&cert.key_file)
                        .err()
                        .map(|e| e.to_string()),
                ),
                (None, None) => ("no credential".into(), Some("no credential".into())),
            };
            let action = if intune.bypass_action {
                format!(
                    ", bypassActivationLock after {} s when no code",
                    intune.bypass_action_wait_secs
                )
            } else {
                String::new()
            };
            (
                format!(
                    "tenant {}, app {}, {credential}, Graph {}{action}",
                    intune.tenant,
                    intune.client_id,
                    intune.graph_root()
                ),
                problem,
            )
        }
        SourceConfig::Kandji(kandji) => (
            format!("{}, token from {}", kandji.api_url, kandji.token.describe()),
            kandji.token.load().err().map(|e| e.to_string()),
        ),
        SourceConfig::Command(command) => {
            let problem = match std::fs::metadata(&command.program) {
                Ok(meta)
                    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111
                        != 0 =>
                {
                    None
                }
                Ok(_) => Some(format!("{} is not executable", command.program.display())),
                Err(e) => Some(format!("{}: {e}", command.program.display())),
            };
            (
                format!(
                    "runs {} (at most {} s)",
                    command.program.display(),
                    command.timeout_secs
                ),
                problem,
            )
        }
    };
    SourceCheck {
        name: source.name().to_string(),
        r#type: source.kind(),
        detail,
        problem,
    }
}

fn render(s: &Summary) -> String {
    let mut out = String::new();
    out.push_str(&match &s.file {
        Some(file) => format!("{file}: valid\n"),
        None => "no configuration file found: defaults apply\n".to_string(),
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
    if s.sources.is_empty() {
        out.push_str("no bypass-code source: Activation-Locked phones end locked_no_code\n");
    }
    for (i, source) in s.sources.iter().enumerate() {
        out.push_str(&format!(
            "code source {}: {} ({}): {}\n",
            i + 1,
            source.name,
            source.r#type,
            source.detail
        ));
        if let Some(problem) = &source.problem {
            out.push_str(&format!("  warning: {problem}\n"));
        }
    }
    out
}
