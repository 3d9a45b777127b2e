//! `station`: the provisioning station's command-line program.

mod activation;
mod cli;
mod codes;
mod commands;
mod error;
mod http;
mod identity;
mod ledger;
mod line;
mod phone;
mod redact;
mod render;
mod slots;
#[cfg(test)]
mod test_server;
mod usbmuxd;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use station_config::StationConfig;
use station_protocol::pairing::{DirPairStore, UsbmuxdPairStore};
use station_protocol::usbmux::Address;

use crate::cli::{Cli, Command};
use crate::error::{exit, StationError};
use crate::phone::{Bench, PairStore};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(&e, json);
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(cli: &Cli) {
    let default = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| line::render::LogWriter)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .init();
}

fn report(e: &StationError, json: bool) {
    if json {
        let value = serde_json::json!({
            "error": { "code": e.code(), "message": e.to_string(), "help": e.help() }
        });
        println!("{value}");
    }
    eprintln!("error[{}]: {e}", e.code());
    if let Some(help) = e.help() {
        eprintln!("  help: {help}");
    }
}

fn bench(cli: &Cli, config: &StationConfig) -> Result<Bench, StationError> {
    let address = match cli.usbmuxd.as_deref().or(config.usbmuxd.address.as_deref()) {
        Some(text) => Address::parse(text)?,
        None => Address::from_env()?,
    };
    let timeout = Duration::from_secs(cli.timeout.unwrap_or(config.station.timeout_secs).max(1));
    let store = match cli
        .pair_records
        .clone()
        .or_else(|| config.pairing.records_dir.clone())
    {
        Some(dir) => PairStore::Dir(DirPairStore::new(dir)),
        None => PairStore::Usbmuxd(UsbmuxdPairStore::new(address.clone(), timeout)),
    };
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| config.station.data_dir.clone());
    let identity = data_dir.join(identity::IDENTITY_FILE);
    Ok(Bench::new(
        usbmuxd::Usbmuxd::new(address, timeout),
        store,
        Some(identity),
    ))
}

fn load_config(cli: &Cli) -> Result<StationConfig, StationError> {
    match StationConfig::discover(cli.config.as_deref()) {
        Some(path) => StationConfig::load(&path).map_err(commands::config::invalid),
        None => Ok(StationConfig::default()),
    }
}

async fn run(cli: Cli) -> Result<u8, StationError> {
    // The demo brings its own bench and configuration.
    if let Command::Demo(args) = &cli.command {
        return commands::demo::demo(args, cli.json).await;
    }
    // Config commands work on a broken file: that is what they are for.
    if let Command::Config { action } = &cli.command {
        return commands::config::run(
            action,
            cli.config.as_deref(),
            cli.data_dir.as_deref(),
            cli.json,
        );
    }
    let config = load_config(&cli)?;
    if let Command::Watch = &cli.command {
        // Found the way `run` publishes it: the same configuration and data directory.
        let data_dir = cli.data_dir.as_deref().unwrap_or(&config.station.data_dir);
        return commands::watch::watch(data_dir, commands::run::mode(cli.json)).await;
    }
    let bench = bench(&cli, &config)?;
    let mut out = std::io::stdout().lock();
    let mut code = 0;
    let written = match &cli.command {
        Command::Devices => {
            let slots = slots::Slots::new(config.slots.clone(), slots::PortPaths::from_env());
            let rows = commands::devices::list(&bench, &slots).await?;
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                )
            } else {
                write!(out, "{}", commands::devices::render_table(&rows))
            }
        }
        Command::Info {
            udid,
            domain,
            key,
            wait,
        } => {
            let value = commands::info::values(
                &bench,
                udid,
                domain.as_deref(),
                key.as_deref(),
                Duration::from_secs(*wait),
            )
            .await?;
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&render::to_json(&value)).unwrap_or_default()
                )
            } else {
                write!(out, "{}", render::to_text(&value))
            }
        }
        Command::Pair { udid, wait } => {
            let outcome = commands::pair::pair(&bench, udid, Duration::from_secs(*wait)).await?;
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "udid": udid, "outcome": outcome })
                )
            } else {
                match outcome {
                    commands::pair::PairOutcome::Paired => {
                        writeln!(out, "SUCCESS: paired with {udid}")
                    }
                    commands::pair::PairOutcome::AlreadyPaired => {
                        writeln!(out, "SUCCESS: already paired with {udid}")
                    }
                }
            }
        }
        Command::Activate {
            udid,
            codes,
            activation_url,
            multipart,
        } => {
            let report = commands::activate::activate(
                &bench,
                commands::activate::ActivateArgs {
                    udid,
                    codes: codes.as_deref(),
                    activation_url: activation_url.as_deref(),
                    multipart: *multipart,
                    config: &config,
                },
            )
            .await?;
            code = commands::activate::exit_code(report.outcome);
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&report).unwrap_or_default()
                )
            } else {
                let outcome = render::wire_name(&report.outcome);
                writeln!(out, "{udid}: {outcome}: {}", report.message)
            }
        }
        Command::Config { .. } | Command::Demo(_) | Command::Watch => Ok(()),
        Command::Run {
            once,
            redo,
            concurrency,
            trust_wait,
            replug_grace,
        } => {
            let data_dir = cli
                .data_dir
                .clone()
                .unwrap_or_else(|| config.station.data_dir.clone());
            // The same checks as `station config check`: refuse before the first phone.
            let preflight = commands::config::preflight(
                &config,
                &data_dir,
                &station_config::Environment::process(),
            );
            preflight.log_warnings();
            preflight.refusal()?;
            let codes = commands::run::code_lookup(&config)?;
            let args = commands::run::RunArgs {
                once: *once,
                redo: *redo,
                concurrency: *concurrency,
                trust_wait: Duration::from_secs(*trust_wait),
                replug_grace: Duration::from_secs(*replug_grace),
            };
            drop(out);
            let summary = commands::run::run(
                bench,
                &config,
                &data_dir,
                codes,
                args,
                commands::run::mode(cli.json),
            )
            .await?;
            return Ok(commands::run::exit_code(&summary, *once));
        }
        Command::Codes {
            command:
                cli::CodesCommand::Lookup {
                    serial,
                    udid,
                    reveal,
                },
        } => {
            let text = commands::codes::lookup(
                &config,
                commands::codes::LookupArgs {
                    serial,
                    udid: udid.as_deref(),
                    reveal: *reveal,
                    json: cli.json,
                },
            )
            .await?;
            write!(out, "{text}")
        }
        Command::Report(args) => {
            let data_dir = cli.data_dir.as_deref().unwrap_or(&config.station.data_dir);
            write!(
                out,
                "{}",
                commands::report::report(args, data_dir, cli.json)?
            )
        }
        Command::Unpair { udid } => {
            let existed = commands::pair::unpair(&bench, udid).await?;
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "udid": udid, "outcome": if existed { "unpaired" } else { "not_paired" } })
                )
            } else if existed {
                writeln!(out, "SUCCESS: unpaired {udid}")
            } else {
                writeln!(out, "{udid} was not paired with this station")
            }
        }
    };
    // A closed pipe (`station devices | head`) is not a failure.
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(StationError::Output(e)),
        _ => Ok(code),
    }
}
