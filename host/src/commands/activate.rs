//! `station activate`: one phone, end to end.

use std::path::Path;
use std::time::Duration;

use crate::activation::http::RetryPolicy;
use crate::activation::{
    ActivationReport, ActivationServer, Activator, Outcome, Quiet, RequestEncoding, APPLE_BASE_URL,
};
use crate::codes::csv_file::CsvCodes;
use crate::codes::{CodeLookup, Lookup};
use crate::error::{exit, StationError};
use crate::phone::Bench;
use station_config::StationConfig;

/// HTTP timeout per request; Albert can be slow, go-ios' 5 s is known to be tight.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `station activate` waits for the operator to tap Trust on an activated phone.
const TRUST_WAIT: Duration = Duration::from_secs(30);

/// No source configured: every lock ends `locked_no_code` with that reason.
pub struct NoSources;

impl CodeLookup for NoSources {
    fn lookup<'a>(
        &'a self,
        _serial: &'a str,
        _udid: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Lookup, String>> {
        Box::pin(async {
            Err("no bypass-code source is configured (pass --codes FILE.csv, or add [[codes.sources]] to the configuration)".to_string())
        })
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
        None => match super::codes::chain_from_config(args.config)? {
            Some(chain) => {
                tracing::info!(sources = ?chain.sources(), "bypass codes from the configured sources");
                Box::new(chain)
            }
            None => Box::new(NoSources),
        },
    };
    let encoding = if args.multipart {
        RequestEncoding::Multipart
    } else {
        RequestEncoding::UrlEncoded
    };
    let server = ActivationServer::new(
        args.activation_url.unwrap_or(APPLE_BASE_URL),
        HTTP_TIMEOUT,
        RetryPolicy::default(),
    )?
    .with_encoding(encoding);
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
    if outcome.is_success() {
        return 0;
    }
    match outcome {
        Outcome::Activated | Outcome::AlreadyActivated => 0,
        Outcome::LockedNoCode | Outcome::CodeRejected | Outcome::UserLocked => exit::LOCKED,
        Outcome::ServerError => exit::SERVER_ERROR,
        Outcome::DeviceError => exit::DEVICE_ERROR,
        Outcome::Interrupted => exit::INTERRUPTED,
    }
}
