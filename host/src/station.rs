//! The station's context: the configuration with what the command line says over it, and
//! the parts every command shares, each built here and nowhere else: the bench (usbmuxd,
//! pair store, identity), the code chain, the activation server (which owns its HTTP
//! client; each MDM source owns its own), the slots and the ledger.
//!
//! The configuration is read on first use, not when the context is made: `station config`
//! works on a broken file (reporting it is what it is for), and `station demo` makes a
//! context of its own around the virtual bench's configuration.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use station_config::TransportKind;
use station_config::{ConfigError, Environment, StationConfig};
use station_protocol::pairing::{DirPairStore, UsbmuxdPairStore};
use station_protocol::usbmux::Address;

use crate::activation::ActivationServer;
use crate::codes::{Chain, CodeLookup, NoSources};
use crate::error::{StationError, UrlProblem};
use crate::ledger::{Ledger, LedgerReader, Recovered};
use crate::phone::{Bench, PairStore};
use crate::preflight::Preflight;
use crate::slots::{PortPaths, Slots};
use crate::transport::Transport;
use crate::usb::UsbTransport;
use crate::usbmuxd::Usbmuxd;

/// Pair records of the `usb` transport without `[pairing] records_dir`, under the data
/// directory (the `/var/lib/lockdown` layout; usbmuxd's own directory belongs to usbmuxd).
pub const USB_PAIR_RECORDS_DIR: &str = "lockdown";

/// What the command line says over the configuration (the global options).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--config`: the file to read instead of the usual places.
    pub config: Option<PathBuf>,
    /// `--usbmuxd`: over `[usbmuxd] address`.
    pub usbmuxd: Option<String>,
    /// `--transport`: over `[station] transport`.
    pub transport: Option<station_config::TransportKind>,
    /// `--pair-records`: over `[pairing] records_dir`.
    pub pair_records: Option<PathBuf>,
    /// `--timeout` in seconds: over `[station] timeout_secs`.
    pub timeout: Option<u64>,
    /// `--data-dir`: over `[station] data_dir`.
    pub data_dir: Option<PathBuf>,
}

/// The context of one command, built once by `main` (or by `station demo` around its
/// virtual bench); commands ask it for the parts they use.
pub struct Station {
    options: Options,
    /// The configuration file in use, if any (`None`: the defaults).
    file: Option<PathBuf>,
    config: OnceLock<StationConfig>,
}

/// A configuration file that cannot be used as written.
pub fn invalid_config(e: ConfigError) -> StationError {
    StationError::ConfigInvalid(e)
}

impl Station {
    /// The context of one command: the configuration file is found now, read on first use.
    pub fn new(options: Options) -> Self {
        let file = StationConfig::discover(options.config.as_deref());
        Station {
            options,
            file,
            config: OnceLock::new(),
        }
    }

    /// A context around a configuration already in hand (the demo's virtual bench).
    pub fn with_config(options: Options, config: StationConfig) -> Self {
        Station {
            options,
            file: None,
            config: OnceLock::from(config),
        }
    }

    /// The configuration file in use; `None` means the built-in defaults.
    pub fn config_file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The configuration, read (and validated) the first time it is asked for.
    pub fn config(&self) -> Result<&StationConfig, StationError> {
        if let Some(config) = self.config.get() {
            return Ok(config);
        }
        let loaded = match &self.file {
            Some(path) => StationConfig::load(path).map_err(invalid_config)?,
            None => StationConfig::default(),
        };
        Ok(self.config.get_or_init(|| loaded))
    }

    /// Where the ledger lives: `--data-dir` / `STATION_DATA_DIR`, else the file's.
    pub fn data_dir(&self) -> Result<&Path, StationError> {
        match &self.options.data_dir {
            Some(dir) => Ok(dir),
            None => Ok(&self.config()?.station.data_dir),
        }
    }

    /// The phones' side: usbmuxd, the pair records and this station's identity.
    pub fn bench(&self) -> Result<Bench, StationError> {
        let config = self.config()?;
        let options = &self.options;
        let address = match options
            .usbmuxd
            .as_deref()
            .or(config.usbmuxd.address.as_deref())
        {
            Some(text) => Address::parse(text)?,
            None => Address::from_env()?,
        };
        let timeout = Duration::from_secs(
            options
                .timeout
                .unwrap_or(config.station.timeout_secs)
                .max(1),
        );
        let kind = options.transport.unwrap_or(config.station.transport);
        let records_dir = options
            .pair_records
            .clone()
            .or_else(|| config.pairing.records_dir.clone());
        let store = match (records_dir, kind) {
            (Some(dir), _) => PairStore::Dir(DirPairStore::new(dir)),
            (None, TransportKind::Usbmuxd) => {
                PairStore::Usbmuxd(UsbmuxdPairStore::new(address.clone(), timeout))
            }
            // No usbmuxd to keep them: the station's own /var/lib/lockdown-layout directory.
            (None, TransportKind::Usb) => PairStore::Dir(DirPairStore::new(
                self.data_dir()?.join(USB_PAIR_RECORDS_DIR),
            )),
        };
        let transport = match kind {
            TransportKind::Usbmuxd => Transport::Usbmuxd(Usbmuxd::new(address, timeout)),
            TransportKind::Usb => Transport::Usb(UsbTransport::system(timeout)),
        };
        let identity = self.data_dir()?.join(crate::identity::IDENTITY_FILE);
        Ok(Bench::new(transport, store, Some(identity)))
    }

    /// The `[slots]` labels over this machine's USB ports; the port paths come from
    /// `transport` when it knows them (the `usb` transport), else from sysfs.
    pub fn slots(&self, transport: &Transport) -> Result<Slots, StationError> {
        let ports = match transport.known_ports() {
            Some(known) => PortPaths::from_env().knowing(known),
            None => PortPaths::from_env(),
        };
        Ok(Slots::new(self.config()?.slots.clone(), ports))
    }

    /// The configured `[[codes.sources]]` as one chain; `None` when there are none.
    pub fn code_chain(&self) -> Result<Option<Chain>, StationError> {
        Ok(Chain::configured(self.config()?)?)
    }

    /// The configured sources as one lookup, or one that explains none is configured.
    pub fn code_lookup(&self) -> Result<Arc<dyn CodeLookup>, StationError> {
        Ok(match self.code_chain()? {
            Some(chain) => Arc::new(chain),
            None => Arc::new(NoSources),
        })
    }

    /// The activation server of the configuration.
    pub fn activation_server(&self) -> Result<ActivationServer, StationError> {
        ActivationServer::from_config(self.config()?)
    }

    /// The activation server with a command's own URL or encoding over the configuration's
    /// (its retries and timeouts stay).
    pub fn activation_server_with(
        &self,
        url: Option<&str>,
        multipart: bool,
    ) -> Result<ActivationServer, StationError> {
        let mut config = self.config()?.clone();
        if let Some(url) = url {
            // The file's URL was checked with the configuration; this one was not.
            let allowed = station_config::check_activation_url_override(
                url,
                config.activation.allow_insecure_http,
            )
            .map_err(|reason| StationError::ActivationUrl {
                url: url.to_string(),
                problem: UrlProblem::PlainHttp(reason),
            })?;
            if let Some(warning) = allowed {
                tracing::warn!("{warning}");
            }
            config.activation.url = url.to_string();
        }
        if multipart {
            config.activation.encoding = station_config::Encoding::Multipart;
        }
        ActivationServer::from_config(&config)
    }

    /// What `station run` checks before the first phone (see [`crate::preflight`]).
    pub fn preflight(&self, env: &Environment) -> Result<Preflight, StationError> {
        Ok(crate::preflight::check(
            self.config()?,
            self.data_dir()?,
            env,
        ))
    }

    /// Opens (creating if needed) the ledger for writing, as this station's one writer,
    /// with the attempts an earlier process left in progress.
    pub async fn open_ledger(&self) -> Result<(Ledger, Vec<Recovered>), StationError> {
        let data_dir = self.data_dir()?.to_path_buf();
        let id = self.config()?.station.id.clone();
        Ok(
            tokio::task::spawn_blocking(move || Ledger::open(&data_dir, &id))
                .await
                .map_err(|e| StationError::Internal {
                    task: "ledger",
                    reason: e.to_string(),
                })??,
        )
    }

    /// The ledger for reading; `None` when there is none yet.
    pub fn ledger_reader(&self) -> Result<Option<LedgerReader>, StationError> {
        Ok(LedgerReader::open(self.data_dir()?)?)
    }
}
