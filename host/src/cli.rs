//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "station",
    version,
    about = "iPhone provisioning station: identify, pair and activate phones on a refurbishment line"
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(
        long,
        global = true,
        env = "STATION_CONFIG",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,

    /// Machine-readable JSON output.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,

    /// usbmuxd address: UNIX:/path, /path or host:port (default /var/run/usbmuxd).
    #[arg(
        long,
        global = true,
        env = "USBMUXD_SOCKET_ADDRESS",
        help_heading = "Global options"
    )]
    pub usbmuxd: Option<String>,

    /// Keep pair records in this directory (/var/lib/lockdown layout) instead of usbmuxd.
    #[arg(long, global = true, help_heading = "Global options")]
    pub pair_records: Option<PathBuf>,

    /// Seconds to wait for usbmuxd and for each phone's answers [config: station.timeout_secs, default 10].
    #[arg(long, global = true, help_heading = "Global options")]
    pub timeout: Option<u64>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the attached phones: UDID, serial, model, iOS, activation state, location.
    Devices,
    /// Read lockdown values through a paired session, like ideviceinfo.
    Info {
        #[arg(short, long)]
        udid: String,
        /// Value domain, e.g. com.apple.mobile.battery.
        #[arg(short, long)]
        domain: Option<String>,
        /// One key, e.g. ActivationState.
        #[arg(short, long)]
        key: Option<String>,
        /// Seconds to wait for the operator to tap Trust if pairing is needed.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Pair with a phone (an activated phone asks the operator to tap Trust).
    Pair {
        #[arg(short, long)]
        udid: String,
        /// Seconds to wait for the operator to tap Trust.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Activate a phone; release an Activation Lock with the organisation's bypass code.
    Activate {
        #[arg(short, long)]
        udid: String,
        /// Bypass codes CSV: serial_number,udid,bypass_code,code_kind,source,retrieved_at.
        #[arg(long)]
        codes: Option<PathBuf>,
        /// Activation server (default Apple's: https://albert.apple.com).
        #[arg(long, env = "STATION_ACTIVATION_URL")]
        activation_url: Option<String>,
        /// Post activation-info as multipart/form-data instead of form-urlencoded.
        #[arg(long)]
        multipart: bool,
    },
    /// Check or print the station's configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Forget the pairing on the phone and delete the stored record.
    Unpair {
        #[arg(short, long)]
        udid: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration file and say what the station would do with it.
    Check,
    /// Print a commented example configuration (it passes `config check`).
    Example,
}
