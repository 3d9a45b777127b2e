//! The environment `{ env = … }` secrets are read from: the process's own, optionally with
//! a systemd-style `EnvironmentFile` on top, so `station config check --env-file` sees what
//! the service will see (hardware/station.service reads /etc/station/secrets.env).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::secret::{read_private_file, SecretError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvFileError {
    /// The contents are never quoted: the file holds secrets.
    #[error("{path}:{line}: expected KEY=VALUE (a name of letters, digits and _, then =)")]
    Syntax { path: PathBuf, line: usize },
    #[error(transparent)]
    Unreadable(#[from] SecretError),
}

/// Where `{ env = NAME }` is looked up. `Debug` shows the names, never the values.
#[derive(Default)]
pub struct Environment {
    /// From an env file; these win over the process's environment, as they would for the
    /// service.
    file: BTreeMap<String, Zeroizing<String>>,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("file", &self.file.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Environment {
    /// The process's environment only.
    pub fn process() -> Self {
        Environment::default()
    }

    /// The process's environment with the variables of `path` on top. The file must be
    /// private (it holds secrets), like a `{ file = … }` secret.
    pub fn with_env_file(path: &Path) -> Result<Self, EnvFileError> {
        let text = read_private_file(path)?;
        Self::parse_env_file(&text, path)
    }

    /// systemd's `EnvironmentFile` syntax: `KEY=VALUE` lines, `#` and `;` comments, blank
    /// lines; spaces around the value trimmed and one pair of matching quotes removed.
    fn parse_env_file(text: &str, path: &Path) -> Result<Self, EnvFileError> {
        let mut file = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let syntax = || EnvFileError::Syntax {
                path: path.to_path_buf(),
                line: index + 1,
            };
            let (key, value) = line.split_once('=').ok_or_else(syntax)?;
            let key = key.trim();
            let valid_name = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                return Err(syntax());
            }
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| {
                    value
                        .strip_prefix(*q)
                        .and_then(|v| v.strip_suffix(*q))
                        .filter(|_| value.len() >= 2)
                })
                .unwrap_or(value);
            file.insert(key.to_string(), Zeroizing::new(unquoted.to_string()));
        }
        Ok(Environment { file })
    }

    /// The value of `name`: from the env file, else from the process.
    pub fn get(&self, name: &str) -> Option<Zeroizing<String>> {
        match self.file.get(name) {
            Some(value) => Some(value.clone()),
            None => std::env::var(name).ok().map(Zeroizing::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn env_files_read_like_systemd_and_win_over_the_process() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secrets.env");
        std::fs::write(
            &path,
            "# Intune\n\nSTATION_TEST_ENVFILE_A = \"quoted value\"\n; other\nSTATION_TEST_ENVFILE_B=plain\nPATH=/only/here\n",
        )
        .expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let env = Environment::with_env_file(&path).expect("parse");
        assert_eq!(
            env.get("STATION_TEST_ENVFILE_A")
                .as_deref()
                .map(String::as_str),
            Some("quoted value")
        );
        assert_eq!(
            env.get("STATION_TEST_ENVFILE_B")
                .as_deref()
                .map(String::as_str),
            Some("plain")
        );
        assert_eq!(
            env.get("PATH").as_deref().map(String::as_str),
            Some("/only/here")
        );
        assert!(env.get("STATION_TEST_ENVFILE_SURELY_UNSET").is_none());
        assert!(!format!("{env:?}").contains("plain"));
    }

    #[test]
    fn bad_lines_are_named_without_their_contents_and_open_files_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secrets.env");
        std::fs::write(&path, "A=1\nhunter2-no-equals\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = Environment::with_env_file(&path).expect_err("syntax");
        assert_eq!(
            err,
            EnvFileError::Syntax {
                path: path.clone(),
                line: 2
            }
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            Environment::with_env_file(&path),
            Err(EnvFileError::Unreadable(SecretError::Permissions { .. }))
        ));
    }
}
