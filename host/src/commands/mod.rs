//! The commands. Each takes the [`Station`] context and its own arguments and returns an
//! [`Output`] for the output layer; none uses another: what they share lives in the
//! context, `preflight`, `line`, `codes` or `output`.

pub mod activate;
pub mod codes;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod devices;
pub mod fleet;
pub mod info;
pub mod pair;
pub mod report;
pub mod run;
pub mod watch;

use std::time::Duration;

use crate::cli::{CodesCommand, Command};
use crate::error::StationError;
use crate::output::{live_mode, Output};
use crate::station::Station;

/// Runs one command. `json` only picks how the live commands stream (`run`, `watch`,
/// `demo`); the output layer renders everything else.
pub async fn dispatch(
    command: &Command,
    station: &Station,
    json: bool,
) -> Result<Output, StationError> {
    match command {
        // The demo brings its own bench and configuration.
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::demo(args, json).await,
        // Works on a broken configuration file: that is what it is for.
        Command::Config { action } => config::run(action, station).await,
        // Found the way `run` publishes it: the same configuration and data directory.
        Command::Watch => watch::watch(station.data_dir()?, live_mode(json))
            .await
            .map(Output::Streamed),
        Command::Run(options) => run::run(station, options, json).await,
        Command::Devices => devices::list(station).await,
        Command::Info {
            udid,
            summary: true,
            wait,
            ..
        } => info::summary(station, udid, Duration::from_secs(*wait)).await,
        Command::Info {
            udid,
            domain,
            key,
            summary: false,
            wait,
        } => {
            info::values(
                station,
                udid,
                domain.as_deref(),
                key.as_deref(),
                Duration::from_secs(*wait),
            )
            .await
        }
        Command::Pair { udid, wait } => pair::pair(station, udid, Duration::from_secs(*wait)).await,
        Command::Unpair { udid } => pair::unpair(station, udid).await,
        Command::Activate {
            udid,
            codes,
            activation_url,
            multipart,
        } => {
            activate::activate(
                station,
                activate::ActivateArgs {
                    udid,
                    codes: codes.as_deref(),
                    activation_url: activation_url.as_deref(),
                    multipart: *multipart,
                },
            )
            .await
        }
        Command::Codes {
            command:
                CodesCommand::Lookup {
                    serial,
                    udid,
                    reveal,
                },
        } => codes::lookup(
            station,
            codes::LookupArgs {
                serial,
                udid: udid.as_deref(),
                reveal: *reveal,
            },
        )
        .await
        .map(Output::Codes),
        Command::Report(args) if args.fleet => report::fleet_report(args, station)
            .await
            .map(Output::Report),
        Command::Report(args) => report::report(args, station).map(Output::Report),
        Command::Fleet { action } => fleet::run(action, station).await,
    }
}
