//! The `ferry-appliance` binary. No subcommands yet: import and serve come next.

use clap::Parser as _;

/// Verifies, activates and serves Ferry bundles inside an isolated network.
///
/// Not yet usable: `import`, `serve`, `releases`, `rollback` and `fsck` are being built. Use
/// `ferry verify` on the connected side to check a bundle today.
#[derive(clap::Parser)]
#[command(name = "ferry-appliance", version = ferry_appliance::version())]
struct Cli {}

fn main() {
    let Cli {} = Cli::parse();
    eprintln!("ferry-appliance {}: no commands yet; see --help", ferry_appliance::version());
    std::process::exit(2);
}
