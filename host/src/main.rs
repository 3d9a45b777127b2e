//! `station`: the provisioning station's command-line program. Parses the command line,
//! builds the station's context, runs the command and writes what it returned.

// No unsafe code: memory safety of what we parse rests on the compiler (docs/testing.md, fuzzing).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use station::cli::{Cli, Command};
use station::error::exit;
use station::{commands, logging, output, Station};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet);
    let runtime = match runtime_for(&cli.command).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let station = Station::new(cli.options());
    let done = runtime
        .block_on(commands::dispatch(&cli.command, &station, cli.json))
        .and_then(|out| output::write(&out, cli.json));
    match done {
        Ok(code) => ExitCode::from(code),
        Err(e) => ExitCode::from(output::failure(&e, cli.json)),
    }
}

/// `station run` (and the demo's line) handles many phones at once: a worker thread per core
/// spreads their TLS and plist work. Every other command is one short exchange, for which
/// starting those threads would be most of the work (start-up figures: docs/benchmark.md).
fn runtime_for(command: &Command) -> tokio::runtime::Builder {
    match command {
        Command::Run(_) => tokio::runtime::Builder::new_multi_thread(),
        #[cfg(feature = "demo")]
        Command::Demo(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
}
