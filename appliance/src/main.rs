//! The `ferry-appliance` binary: parse arguments, set up logging, run.

use std::process::ExitCode;

use clap::Parser as _;
use ferry_appliance::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_manifests::terminal::init_logging(cli.verbose);
    match ferry_appliance::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", ferry_manifests::terminal::error_line(error.as_ref()));
            ferry_appliance::exit_code(&error)
        }
    }
}
