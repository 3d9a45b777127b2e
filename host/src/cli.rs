//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::station::Options;

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

    /// How to reach the phones: usbmuxd (the daemon) or usb (directly, no daemon)
    /// [config: station.transport, default usbmuxd].
    #[arg(long, global = true, value_parser = parse_transport, help_heading = "Global options")]
    pub transport: Option<station_config::TransportKind>,

    /// Keep pair records in this directory (/var/lib/lockdown layout) instead of usbmuxd.
    #[arg(long, global = true, help_heading = "Global options")]
    pub pair_records: Option<PathBuf>,

    /// Seconds to wait for usbmuxd and for each phone's answers [config: station.timeout_secs, default 10].
    #[arg(long, global = true, help_heading = "Global options")]
    pub timeout: Option<u64>,

    /// Data directory: the ledger lives here [config: station.data_dir].
    #[arg(
        long,
        global = true,
        env = "STATION_DATA_DIR",
        help_heading = "Global options"
    )]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

fn parse_transport(text: &str) -> Result<station_config::TransportKind, String> {
    text.parse()
}

impl Cli {
    /// The global options that say something over the configuration.
    pub fn options(&self) -> Options {
        Options {
            config: self.config.clone(),
            usbmuxd: self.usbmuxd.clone(),
            transport: self.transport,
            pair_records: self.pair_records.clone(),
            timeout: self.timeout,
            data_dir: self.data_dir.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the attached phones: UDID, serial, model, iOS, activation state, location.
    Devices,
    /// Read lockdown values through a paired session, like ideviceinfo.
    Info {
        /// The phone's UDID, as `station devices` lists it (the dash of a modern UDID may be
        /// left out).
        #[arg(short, long)]
        udid: String,
        /// Value domain, e.g. com.apple.mobile.battery.
        #[arg(short, long)]
        domain: Option<String>,
        /// One key, e.g. ActivationState.
        #[arg(short, long)]
        key: Option<String>,
        /// Instead of raw values: who the phone is and its lock and management state (the
        /// fields of `station devices`).
        #[arg(long, conflicts_with_all = ["domain", "key"])]
        summary: bool,
        /// Seconds to wait for the operator to tap Trust if pairing is needed.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Pair with a phone (an activated phone asks the operator to tap Trust).
    Pair {
        /// The phone's UDID, as `station devices` lists it (the dash of a modern UDID may be
        /// left out).
        #[arg(short, long)]
        udid: String,
        /// Seconds to wait for the operator to tap Trust.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Activate a phone; release an Activation Lock with the organisation's bypass code.
    Activate {
        /// The phone's UDID, as `station devices` lists it (the dash of a modern UDID may be
        /// left out).
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
    /// Bypass codes from the configured sources ([[codes.sources]]).
    Codes {
        #[command(subcommand)]
        command: CodesCommand,
    },
    /// Line mode: every phone plugged in is identified, paired and activated; one live row
    /// per phone (NDJSON events when not a terminal or with --json, see docs/events.md).
    Run(RunOptions),
    /// Attach to the `station run` on this machine (read-only; several at once): its live
    /// screen, or with --json its event stream (docs/events.md). Exits 0 with the run's
    /// summary, 1 when no run is live or the run goes away.
    Watch,
    /// The whole line on a built-in virtual bench: realistic phones, stand-in Apple and
    /// Intune servers, live rows, then the report. Leaves nothing behind.
    #[cfg(feature = "demo")]
    Demo(crate::commands::demo::DemoArgs),
    /// Check or print the station's configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Forget the pairing on the phone and delete the stored record.
    Unpair {
        /// The phone's UDID, as `station devices` lists it (the dash of a modern UDID may be
        /// left out).
        #[arg(short, long)]
        udid: String,
    },
    /// What the station processed, from its ledger: a table, CSV or JSON. With --fleet,
    /// what every station of the floor shipped to the fleet database.
    Report(crate::commands::report::ReportArgs),
    /// The fleet database that the stations of a floor share ([fleet], docs/fleet.md).
    Fleet {
        #[command(subcommand)]
        action: FleetCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Each station as its heartbeats tell it: last seen, attempts waiting in its outbox,
    /// attempts shipped, its last error.
    Status,
    /// Create or update the fleet database's schema (what `station run` also does), e.g.
    /// as the database's owner before the stations run with a role that may not.
    Migrate,
}

/// What `station run` takes.
#[derive(Debug, clap::Args)]
pub struct RunOptions {
    /// Handle the phones attached now, then exit with a summary (exit 1 if any phone
    /// needs attention, 3 if usbmuxd is not running). Without it the line runs until
    /// stopped, waiting out usbmuxd exiting and coming back.
    #[arg(long)]
    pub once: bool,
    /// Work on a phone again when it is replugged after it was handled in this run.
    #[arg(long)]
    pub redo: bool,
    /// Phones worked on at once [config: station.concurrency, default 10].
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Seconds to wait for the operator to tap Trust on an activated phone.
    #[arg(long, default_value_t = 60)]
    pub trust_wait: u64,
    /// With --once: seconds an unplugged phone, or a vanished usbmuxd, may stay away
    /// before the phones it took along count as interrupted.
    #[arg(long, default_value_t = 30)]
    pub replug_grace: u64,
    /// Serve the live view of the line (page, /events, /metrics, /healthz) at this address,
    /// e.g. 127.0.0.1:8080 (port 0: any free port; the address is printed on stderr). Only
    /// this machine's addresses unless [ui] allow_remote = true [config: ui.http].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration file and say what the station would do with it. Exits
    /// non-zero exactly when `station run` would refuse to start with it.
    Check {
        /// Read KEY=VALUE lines (systemd's EnvironmentFile syntax) to resolve
        /// `{ env = … }` secrets as the service would; values are never printed.
        #[arg(long, value_name = "FILE")]
        env_file: Option<std::path::PathBuf>,
    },
    /// Print a commented example configuration (it passes `config check`).
    Example,
}

#[derive(Debug, Subcommand)]
pub enum CodesCommand {
    /// Look up a phone's bypass codes by serial number; masked unless --reveal.
    #[command(long_about = crate::commands::codes::LOOKUP_HELP)]
    Lookup {
        /// The phone's serial number (as `station devices` shows it).
        #[arg(long)]
        serial: String,
        /// The phone's UDID: the record of this very phone comes first.
        #[arg(long)]
        udid: Option<String>,
        /// Print the codes whole, to type one on the phone (never logged).
        #[arg(long)]
        reveal: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_udid_option_says_what_it_takes() {
        let mut cli = Cli::command();
        for name in ["activate", "info", "pair", "unpair"] {
            let help = cli
                .find_subcommand_mut(name)
                .expect("subcommand")
                .render_help()
                .to_string();
            // The option's line and the description clap puts beside or below it.
            let after = help.rsplit("--udid <UDID>").next().unwrap_or_default();
            let described = after.lines().take(2).collect::<Vec<_>>().join(" ");
            assert!(
                described.contains("UDID, as `station devices` lists it"),
                "{name}: {help}"
            );
        }
    }
}
