//! `ferry-appliance`'s command tree as clap checks it.

use clap::CommandFactory as _;

/// clap's own checks of the command tree (duplicate names, conflicts naming missing arguments,
/// bad defaults...), which a debug build otherwise makes only for the subcommand it parses.
#[test]
fn the_command_tree_passes_clap_checks() {
    ferry_appliance::cli::Cli::command().debug_assert();
}
