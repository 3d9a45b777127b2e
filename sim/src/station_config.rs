//! A ready-made station configuration (docs/config.md) pointing every source at
//! this bench: written into the state directory at start, named by the ready file's
//! `station_config`. The secrets go to files of their own (mode 0600, in a 0700 directory),
//! written before the configuration that names them; the configuration holds none.

use std::fs::{DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use station_protocol::atomic_file;

use crate::error::SimError;
use crate::mdm::{Graph, Kandji};

/// A bypass-code source the written configuration can list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ConfigSource {
    /// The stand-in Intune (Entra token endpoint + Graph).
    Intune,
    /// The stand-in Kandji API.
    Kandji,
}

/// Both stand-ins, Intune first: what the configuration lists unless told otherwise.
pub const DEFAULT_SOURCES: [ConfigSource; 2] = [ConfigSource::Intune, ConfigSource::Kandji];

/// Where the bench writes the configuration and its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPaths {
    pub config: PathBuf,
    pub intune_secret: PathBuf,
    pub kandji_token: PathBuf,
    pub data_dir: PathBuf,
}

impl ConfigPaths {
    pub fn in_state_dir(state_dir: &Path) -> Self {
        let secrets = state_dir.join("secrets");
        ConfigPaths {
            config: state_dir.join("station-config.toml"),
            intune_secret: secrets.join("intune.secret"),
            kandji_token: secrets.join("kandji.token"),
            data_dir: state_dir.join("station-data"),
        }
    }
}

/// What the configuration points at.
pub(crate) struct Endpoints<'a> {
    pub socket: &'a Path,
    pub activation_url: &'a str,
    pub graph: &'a Graph,
    pub kandji: &'a Kandji,
}

/// A TOML basic string (quotes and escapes as TOML wants them).
fn q(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn path_str(path: &Path) -> String {
    q(&path.to_string_lossy())
}

/// The configuration's text.
pub(crate) fn render(paths: &ConfigPaths, at: &Endpoints<'_>, sources: &[ConfigSource]) -> String {
    let mut out = String::from(
        "# Written by station-sim: every source points at this bench's stand-ins.\n\
         # Secrets live in the files named below (mode 0600), never here.\n\n",
    );
    out.push_str(&format!(
        "[station]\nid = \"sim-bench\"\ndata_dir = {}\n\n",
        path_str(&paths.data_dir)
    ));
    out.push_str(&format!(
        "[usbmuxd]\naddress = {}\n\n",
        q(&format!("UNIX:{}", at.socket.display()))
    ));
    out.push_str(&format!("[activation]\nurl = {}\n", q(at.activation_url)));
    let mut seen = Vec::new();
    for source in sources {
        if seen.contains(source) {
            continue;
        }
        seen.push(*source);
        match source {
            ConfigSource::Intune => out.push_str(&format!(
                "\n[[codes.sources]]\n\
                 type = \"intune\"\n\
                 tenant = {}\n\
                 client_id = {}\n\
                 client_secret = {{ file = {} }}\n\
                 token_url = {}\n\
                 graph_url = {}\n\
                 bypass_action = false\n",
                q(at.graph.tenant()),
                q(at.graph.client_id()),
                path_str(&paths.intune_secret),
                q(&at.graph.token_url()),
                q(at.graph.url()),
            )),
            ConfigSource::Kandji => out.push_str(&format!(
                "\n[[codes.sources]]\n\
                 type = \"kandji\"\n\
                 api_url = {}\n\
                 token = {{ file = {} }}\n",
                q(at.kandji.url()),
                path_str(&paths.kandji_token),
            )),
        }
    }
    out
}

/// Writes both secret files (whichever sources are listed, so a test can write its own
/// configuration with them), then the configuration. Blocking: call off the runtime.
pub(crate) fn write(
    paths: &ConfigPaths,
    at: &Endpoints<'_>,
    sources: &[ConfigSource],
) -> Result<(), SimError> {
    if let Some(dir) = paths.intune_secret.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| SimError::io("create directory", dir, e))?;
        std::fs::set_permissions(dir, Permissions::from_mode(0o700))
            .map_err(|e| SimError::io("restrict", dir, e))?;
    }
    // No trailing newline: the file holds exactly the secret.
    atomic_file::write(
        &paths.intune_secret,
        at.graph.client_secret().as_bytes(),
        atomic_file::PRIVATE,
    )
    .map_err(|e| SimError::io("write", &paths.intune_secret, e))?;
    atomic_file::write(
        &paths.kandji_token,
        at.kandji.token().as_bytes(),
        atomic_file::PRIVATE,
    )
    .map_err(|e| SimError::io("write", &paths.kandji_token, e))?;
    let text = render(paths, at, sources);
    atomic_file::write(&paths.config, text.as_bytes(), atomic_file::SHARED)
        .map_err(|e| SimError::io("write the station configuration", &paths.config, e))
}
