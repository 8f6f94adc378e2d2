//! `ferry-sim`: simulated Elastic Agents for load tests and benchmarks (see `--help`).

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = ferry_sim::Cli::parse();
    match ferry_sim::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-sim: {}", ferry_manifests::terminal::error_line(e.as_ref()));
            std::process::ExitCode::from(2)
        }
    }
}
