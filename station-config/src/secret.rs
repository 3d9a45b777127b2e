//! Secrets in the configuration: never inline, always a reference to an environment
//! variable or a file only the station's user can read.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::env_file::Environment;

/// Where a secret comes from. `Debug` shows the reference, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Env(String),
    File(PathBuf),
}

/// A loaded secret. `Debug` and `Display` print `<redacted>`; the memory is zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(Zeroizing::new(value.into()))
    }

    /// The value itself: only for putting it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("cannot read secret file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("secret file {path} is readable by others (mode {mode:04o}): run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("secret file {path} is empty")]
    FileEmpty { path: PathBuf },
}

impl Secret {
    /// Where the secret lives, for messages (`env STATION_INTUNE_SECRET`, `file /etc/…`).
    pub fn describe(&self) -> String {
        match self {
            Secret::Env(name) => format!("env {name}"),
            Secret::File(path) => format!("file {}", path.display()),
        }
    }

    /// Loads the secret, `{ env = … }` from the station's own environment.
    pub fn load(&self) -> Result<SecretString, SecretError> {
        self.load_from(&Environment::process())
    }

    /// Loads the secret, `{ env = … }` from `env` (the process's, or with an env file on
    /// top, as `station config check --env-file` does).
    pub fn load_from(&self, env: &Environment) -> Result<SecretString, SecretError> {
        match self {
            Secret::Env(name) => match env.get(name) {
                Some(v) if v.trim().is_empty() => Err(SecretError::EnvEmpty(name.clone())),
                Some(v) => Ok(SecretString::new(v.trim().to_string())),
                None => Err(SecretError::EnvMissing(name.clone())),
            },
            Secret::File(path) => {
                let text = read_private_file(path)?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(SecretError::FileEmpty { path: path.clone() });
                }
                Ok(SecretString::new(value.to_string()))
            }
        }
    }
}

/// Reads a file that must not be readable or writable by group or others (a private key or
/// a token). The contents are zeroed when dropped.
pub fn read_private_file(path: &std::path::Path) -> Result<Zeroizing<String>, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let read_error = |e: std::io::Error| SecretError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    Ok(Zeroizing::new(text))
}

pub(crate) const INLINE_REFUSED: &str =
    "secrets are never written inline: use { env = \"VARIABLE\" } or { file = \"/path/to/secret\" } (mode 0600)";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ env = \"NAME\" } or { file = \"PATH\" }")
            }

            fn visit_str<E: de::Error>(self, _value: &str) -> Result<Secret, E> {
                // The value is not repeated in the message: it is a secret.
                Err(E::custom(INLINE_REFUSED))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
                let mut found: Option<Secret> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let next = match key.as_str() {
                        "env" => {
                            let name: String = map.next_value()?;
                            if name.trim().is_empty() || name.contains('=') {
                                return Err(de::Error::custom(
                                    "env must name an environment variable",
                                ));
                            }
                            Secret::Env(name)
                        }
                        "file" => {
                            let path: PathBuf = map.next_value()?;
                            if !path.is_absolute() {
                                return Err(de::Error::custom("file must be an absolute path"));
                            }
                            Secret::File(path)
                        }
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown field `{other}`, expected `env` or `file`"
                            )))
                        }
                    };
                    if found.replace(next).is_some() {
                        return Err(de::Error::custom("give either `env` or `file`, not both"));
                    }
                }
                found.ok_or_else(|| de::Error::custom("expected `env` or `file`"))
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[derive(Debug, Deserialize)]
    struct Holder {
        secret: Secret,
    }

    fn parse(text: &str) -> Result<Holder, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn references_parse_and_inline_values_are_refused_without_echo() {
        assert_eq!(
            parse("secret = { env = \"X\" }").expect("env").secret,
            Secret::Env("X".into())
        );
        assert_eq!(
            parse("secret = { file = \"/etc/s\" }")
                .expect("file")
                .secret,
            Secret::File("/etc/s".into())
        );
        // Only the message: toml's Display quotes the source line, which StationConfig never prints.
        let err = parse("secret = \"hunter2-very-secret\"")
            .expect_err("inline")
            .message()
            .to_string();
        assert!(err.contains("never written inline"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(parse("secret = { file = \"relative\" }").is_err());
        assert!(parse("secret = { env = \"A\", file = \"/b\" }").is_err());
        assert!(parse("secret = { path = \"/b\" }").is_err());
    }

    #[test]
    fn files_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s");
        std::fs::write(&path, "value\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Secret::File(path.clone()).load().expect_err("perms");
        assert!(
            matches!(err, SecretError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let secret = Secret::File(path).load().expect("load");
        assert_eq!(secret.expose(), "value");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
    }

    #[test]
    fn missing_env_is_named() {
        let err = Secret::Env("STATION_TEST_SURELY_UNSET_9".into())
            .load()
            .expect_err("missing");
        assert_eq!(
            err,
            SecretError::EnvMissing("STATION_TEST_SURELY_UNSET_9".into())
        );
    }
}
