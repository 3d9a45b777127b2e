//! `station`: the provisioning station's command-line program. Parses the command line,
//! builds the station's context, runs the command and writes what it returned.

use std::process::ExitCode;

use clap::Parser;
use station::cli::Cli;
use station::error::exit;
use station::{commands, logging, output, Station};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet);
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
    let station = Station::new(cli.options());
    let done = runtime
        .block_on(commands::dispatch(&cli.command, &station, cli.json))
        .and_then(|out| output::write(&out, cli.json));
    match done {
        Ok(code) => ExitCode::from(code),
        Err(e) => ExitCode::from(output::failure(&e, cli.json)),
    }
}
