//! The `ferry-appliance` binary: parse arguments, set up logging, run.

use std::process::ExitCode;

use clap::Parser as _;
use ferry_appliance::cli::Cli;

/// jemalloc rather than glibc's malloc. A storm of enrolling agents interleaves each parked
/// connection's small long-lived blocks with large short-lived ones (request bodies, policy
/// answers); glibc then kept the freed pages resident, since live blocks pinned them, and every
/// reconnect wave added more. jemalloc keeps blocks of one size together and its background
/// thread (`.cargo/config.toml`) returns idle pages. Plain HTTP, 10,000 agents, after three
/// reconnect waves: 12.2-13.7 KiB per parked agent with glibc, 8.8-9.8 with jemalloc; a policy
/// fan-out to 18,700 TLS agents took a sixth less CPU (docs/benchmarks.md, "jemalloc in the
/// appliance").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
