//! The station's configuration file (TOML). Strict: an unknown key is an error that names
//! the nearest valid key, and a wrong type or value names the file, line and column, so a
//! typo never silently falls back to a default. Secrets are references, never inline.

mod schema;
mod secret;
mod suggest;

use std::path::{Path, PathBuf};

pub use schema::*;
pub use secret::{read_private_file, Secret, SecretError, SecretString};

/// A commented configuration that passes the check (`station config example`).
pub const EXAMPLE: &str = include_str!("../example.toml");

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "STATION_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `location` is `path:line:column` when known.
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
}

impl StationConfig {
    /// Parses `text`; `path` names the file in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: StationConfig = toml::from_str(text).map_err(|e| {
            let location = match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    format!("{}:{line}:{column}", path.display())
                }
                None => path.display().to_string(),
            };
            ConfigError::Invalid {
                location,
                message: suggest::explain(e.message()),
            }
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                location: locate_key(text, path, &key),
                message,
            })?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The file to use: `explicit` (`--config`), else `STATION_CONFIG`, else the first that
    /// exists of `$XDG_CONFIG_HOME/station/station.toml` (or `~/.config/…`) and
    /// `/etc/station/station.toml`. `None`: run on defaults.
    pub fn discover(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = explicit {
            return Some(path.to_path_buf());
        }
        if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let user = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .map(|dir| dir.join("station").join("station.toml"));
        user.into_iter()
            .chain([PathBuf::from("/etc/station/station.toml")])
            .find(|p| p.is_file())
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// `path:line:column` of a dotted key such as `station.concurrency` or
/// `codes.sources[1].tenant`, found by a plain scan of the document (good enough for
/// pointing an operator at the line).
fn locate_key(text: &str, path: &Path, key: &str) -> String {
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let (table, index) = match table.split_once('[') {
        Some((t, rest)) => (t, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (table, None),
    };
    let mut current = String::new();
    let mut seen = 0usize;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed
            .strip_prefix("[[")
            .and_then(|h| h.split("]]").next())
        {
            current = header.trim().to_string();
            if current == table {
                seen += 1;
            }
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.split(']').next()) {
            current = header.trim().to_string();
            continue;
        }
        let in_table = current == table && index.is_none_or(|i| seen == i + 1);
        let key_here = trimmed
            .split('=')
            .next()
            .map(|k| k.trim().trim_matches('"'))
            == Some(leaf);
        if in_table && key_here {
            let column = line.len() - line.trim_start().len() + 1;
            return format!("{}:{}:{column}", path.display(), number + 1);
        }
    }
    format!("{} ({key})", path.display())
}

#[cfg(test)]
mod tests;
