//! The station's configuration file (TOML). Strict: an unknown key is an error that names
//! the nearest valid key, and a wrong type or value names the file, line and column, so a
//! typo never silently falls back to a default. Secrets are references, never inline.

// No unsafe code: memory safety of what we parse rests on the compiler (docs/testing.md, fuzzing).
#![forbid(unsafe_code)]

mod env_file;
mod exposure;
mod schema;
mod secret;
mod suggest;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use env_file::{EnvFileError, Environment};
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
    /// `location` is `path:line:column` when known, else `path (key)`.
    #[error("{location}: {message}")]
    Invalid {
        location: String,
        message: String,
        /// Whether `location` names a line (the operator's next step differs).
        has_line: bool,
    },
}

impl ConfigError {
    /// What to do next, worded for what the message names.
    pub fn help(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => {
                "check the path given with --config or STATION_CONFIG; `station config example` prints a valid file"
            }
            ConfigError::Invalid { has_line: true, .. } => {
                "fix the line named above; `station config example` prints a valid file"
            }
            ConfigError::Invalid { has_line: false, .. } => {
                "fix the key named above; `station config example` prints a valid file"
            }
        }
    }
}

/// A key that is valid but not advisable, with where it is (`path:line:column`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl StationConfig {
    /// Parses `text`; `path` names the file in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: StationConfig = toml::from_str(text).map_err(|e| {
            let (location, has_line) = match e.span() {
                Some(span) => {
                    let offset = refine_offset(text, span.start, e.message());
                    let (line, column) = line_column(text, offset);
                    (format!("{}:{line}:{column}", path.display()), true)
                }
                None => (path.display().to_string(), false),
            };
            ConfigError::Invalid {
                location,
                message: suggest::explain(e.message()),
                has_line,
            }
        })?;
        let warnings = config.validate().map_err(|(key, message)| {
            let (location, has_line) = KeyLines::new(text, path).locate(&key);
            ConfigError::Invalid {
                location,
                message,
                has_line,
            }
        })?;
        let lines = KeyLines::new(text, path);
        config.warnings = slot_warnings(text, &lines);
        config
            .warnings
            .extend(warnings.into_iter().map(|(key, message)| ConfigWarning {
                location: lines.locate(&key).0,
                message,
            }));
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

/// A warning for each slot keyed by usbmuxd `LocationID`: valid, but on Linux its low 16
/// bits are the USB address, which changes whenever the phone re-enumerates.
fn slot_warnings(text: &str, lines: &KeyLines) -> Vec<ConfigWarning> {
    let Ok(document) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let Some(slots) = document.get("slots").and_then(toml::Value::as_table) else {
        return Vec::new();
    };
    slots
        .iter()
        .filter(|(key, _)| matches!(SlotKey::parse(key), Some(SlotKey::Location(_))))
        .map(|(key, label)| ConfigWarning {
            location: lines.locate(&format!("slots.{key}")).0,
            message: format!(
                "slot `{key}` ({}) is keyed by usbmuxd LocationID, which is not stable: the USB address in it changes when a phone is replugged, so the label can be lost or shown for another phone; key it by the port path `station devices` shows (e.g. \"1-1.4.2\")",
                label.as_str().unwrap_or_default()
            ),
        })
        .collect()
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A better place for an error than toml's: inside a `[[codes.sources]]` entry (an
/// internally tagged enum) serde loses the spans and toml points at the table header. For an
/// unknown key and for an inline secret the key's own line can be found in that table.
fn refine_offset(text: &str, start: usize, message: &str) -> usize {
    let Some(rest) = text.get(start..) else {
        return start;
    };
    if !rest.starts_with('[') {
        return start;
    }
    let wanted = |key: &str, value: &str| -> bool {
        if let Some(unknown) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
        {
            return key == unknown;
        }
        message == secret::INLINE_REFUSED
            && SECRET_KEYS.contains(&key)
            && (value.starts_with('"') || value.starts_with('\''))
    };
    let mut offset = start;
    for (index, line) in rest.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if index > 0 && trimmed.starts_with('[') {
            break; // the next table
        }
        if let Some((key, value)) = trimmed.split_once('=') {
            let key = key.trim().trim_matches('"');
            let value = value.trim_start();
            if index > 0 && wanted(key, value) {
                let indent = line.len() - trimmed.len();
                return if message.starts_with("unknown field") {
                    offset + indent
                } else {
                    offset + line.len() - value.len()
                };
            }
        }
        offset += line.len();
    }
    start
}

/// Where each key is written in the document, from one plain scan of it (good enough for
/// pointing an operator at the line). Built once per parse: scanning the text again for every
/// key to locate (one warning per LocationID slot) was quadratic in the file's size, found
/// profiling the `station_toml` fuzz target (in its build 4,000 such slots took 13 s to parse,
/// 16,000 took 3½ min).
struct KeyLines<'a> {
    path: &'a Path,
    /// `(table, leaf)` → the first `(line, column)` of that key in any instance of the table.
    first: HashMap<(String, String), (usize, usize)>,
    /// `(table, n, leaf)` → the first `(line, column)` of that key in the n-th (from 1)
    /// `[[table]]` instance; 0 before the first.
    in_instance: HashMap<(String, usize, String), (usize, usize)>,
}

impl<'a> KeyLines<'a> {
    fn new(text: &str, path: &'a Path) -> Self {
        let mut first = HashMap::new();
        let mut in_instance = HashMap::new();
        let mut instances: HashMap<String, usize> = HashMap::new();
        let mut current = String::new();
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if let Some(header) = trimmed
                .strip_prefix("[[")
                .and_then(|h| h.split("]]").next())
            {
                current = header.trim().to_string();
                *instances.entry(current.clone()).or_default() += 1;
                continue;
            }
            if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.split(']').next()) {
                current = header.trim().to_string();
                continue;
            }
            let leaf = trimmed
                .split('=')
                .next()
                .map_or("", |k| k.trim().trim_matches('"'));
            let place = (number + 1, line.len() - line.trim_start().len() + 1);
            let instance = instances.get(&current).copied().unwrap_or(0);
            first
                .entry((current.clone(), leaf.to_string()))
                .or_insert(place);
            in_instance
                .entry((current.clone(), instance, leaf.to_string()))
                .or_insert(place);
        }
        KeyLines {
            path,
            first,
            in_instance,
        }
    }

    /// `path:line:column` of a dotted key such as `station.concurrency` or
    /// `codes.sources[1].tenant`; `path (key)` when it is not written in the file. The flag
    /// says whether a line was found.
    fn locate(&self, key: &str) -> (String, bool) {
        let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
        let place = match table.split_once('[') {
            Some((table, rest)) => match rest.trim_end_matches(']').parse::<usize>() {
                Ok(index) => index.checked_add(1).and_then(|n| {
                    self.in_instance
                        .get(&(table.to_string(), n, leaf.to_string()))
                }),
                // An index that is not a number: any instance of the table, as for none.
                Err(_) => self.first.get(&(table.to_string(), leaf.to_string())),
            },
            None => self.first.get(&(table.to_string(), leaf.to_string())),
        };
        match place {
            Some((line, column)) => (format!("{}:{line}:{column}", self.path.display()), true),
            None => (format!("{} ({key})", self.path.display()), false),
        }
    }
}

#[cfg(test)]
mod tests;
