//! `station activate`: one phone, end to end.

use std::path::Path;
use std::time::Duration;

use crate::activation::{ActivationReport, Activator, Outcome, Quiet};
use crate::codes::csv_file::CsvCodes;
use crate::codes::{CodeLookup, Lookup, LookupError};
use crate::error::{exit, StationError};
use crate::phone::Bench;
use station_config::StationConfig;

/// How long `station activate` waits for the operator to tap Trust on an activated phone.
const TRUST_WAIT: Duration = Duration::from_secs(30);

/// No source configured: every lock ends `locked_no_code` with that reason.
pub struct NoSources;

impl CodeLookup for NoSources {
    fn lookup<'a>(
        &'a self,
        _serial: &'a str,
        _udid: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Lookup, LookupError>> {
        Box::pin(async { Err(LookupError::NotConfigured) })
    }
}

pub struct ActivateArgs<'a> {
    pub udid: &'a str,
    pub codes: Option<&'a Path>,
    pub activation_url: Option<&'a str>,
    pub multipart: bool,
    /// Its `[[codes.sources]]` are used when no `--codes` file is given.
    pub config: &'a StationConfig,
}

pub async fn activate(
    bench: &Bench,
    args: ActivateArgs<'_>,
) -> Result<ActivationReport, StationError> {
    let codes: Box<dyn CodeLookup> = match args.codes {
        Some(path) => {
            let codes = CsvCodes::load(path).map_err(|e| {
                StationError::new("codes-invalid", exit::USAGE, e.to_string())
                    .help("fix the rows named above; the header must be serial_number,udid,bypass_code,code_kind,source,retrieved_at")
            })?;
            tracing::info!(rows = codes.rows(), file = %path.display(), "bypass codes loaded");
            Box::new(codes)
        }
        None => match crate::codes::Chain::configured(args.config)? {
            Some(chain) => {
                tracing::info!(sources = ?chain.sources(), "bypass codes from the configured sources");
                Box::new(chain)
            }
            None => Box::new(NoSources),
        },
    };
    // The configuration's server, retries and encoding, unless the command line says otherwise.
    let mut config = args.config.clone();
    if let Some(url) = args.activation_url {
        config.activation.url = url.to_string();
    }
    if args.multipart {
        config.activation.encoding = station_config::Encoding::Multipart;
    }
    let server = super::run::activation_server(&config)?;
    let device = bench.usbmuxd.find(args.udid).await?;
    let activator = Activator {
        bench,
        server: &server,
        codes: codes.as_ref(),
        observer: &Quiet,
        trust_wait: TRUST_WAIT,
    };
    Ok(activator.activate(&device).await)
}

/// Exit code for an outcome: 0 only when the phone needs nothing more.
pub fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Activated | Outcome::AlreadyActivated => 0,
        Outcome::LockedNoCode | Outcome::CodeRejected | Outcome::UserLocked => exit::LOCKED,
        Outcome::ServerError => exit::SERVER_ERROR,
        Outcome::DeviceError => exit::DEVICE_ERROR,
        Outcome::Unsupported => exit::UNSUPPORTED,
        Outcome::Interrupted => exit::INTERRUPTED,
    }
}
