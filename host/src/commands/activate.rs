//! `station activate`: one phone, end to end.

use std::path::Path;
use std::time::Duration;

use crate::activation::{Activator, Outcome, Quiet};
use crate::codes::csv_file::CsvCodes;
use crate::codes::{CodeLookup, NoSources};
use crate::error::{exit, StationError};
use crate::output::Output;
use crate::station::Station;

/// How long `station activate` waits for the operator to tap Trust on an activated phone.
const TRUST_WAIT: Duration = Duration::from_secs(30);

pub struct ActivateArgs<'a> {
    pub udid: &'a str,
    pub codes: Option<&'a Path>,
    pub activation_url: Option<&'a str>,
    pub multipart: bool,
}

/// Activates the phone; the configured `[[codes.sources]]` are used when no `--codes` file
/// is given.
pub async fn activate(station: &Station, args: ActivateArgs<'_>) -> Result<Output, StationError> {
    let bench = station.bench()?;
    let codes: Box<dyn CodeLookup> = match args.codes {
        Some(path) => {
            let codes =
                CsvCodes::load(path).map_err(|e| StationError::CodesInvalid(e.to_string()))?;
            tracing::info!(rows = codes.rows(), file = %path.display(), "bypass codes loaded");
            Box::new(codes)
        }
        None => match station.code_chain()? {
            Some(chain) => {
                tracing::info!(sources = ?chain.sources(), "bypass codes from the configured sources");
                Box::new(chain)
            }
            None => Box::new(NoSources),
        },
    };
    // The configuration's server, retries and encoding, unless the command line says otherwise.
    let server = station.activation_server_with(args.activation_url, args.multipart)?;
    let device = bench.transport.find(args.udid).await?;
    let activator = Activator {
        bench: &bench,
        server: &server,
        codes: codes.as_ref(),
        observer: &Quiet,
        trust_wait: TRUST_WAIT,
    };
    Ok(Output::Activation {
        udid: args.udid.to_string(),
        report: Box::new(activator.activate(&device).await),
    })
}

/// Exit code for an outcome: 0 only when the phone needs nothing more.
pub fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Activated | Outcome::AlreadyActivated => 0,
        Outcome::LockedNoCode | Outcome::CodeRejected | Outcome::UserLocked => exit::LOCKED,
        Outcome::ServerError => exit::SERVER_ERROR,
        Outcome::DeviceError => exit::DEVICE_ERROR,
        Outcome::Unsupported => exit::UNSUPPORTED,
        Outcome::FindMyOn => exit::FIND_MY_ON,
        Outcome::Interrupted => exit::INTERRUPTED,
    }
}
