//! Every subcommand and argument of the three binaries (`ferry`, `ferry-appliance`, `ferry-sim`)
//! says what it is for in `--help`, and their command trees pass clap's own consistency checks.
//! Here rather than beside each definition because this crate is the one that sees all three,
//! so the rule is written once.

use clap::CommandFactory as _;

/// The widest a line of an example in `after_help` may be: clap wraps help text to the
/// terminal, so a longer example line would be broken mid-flag on an 80-column terminal.
const EXAMPLE_WIDTH: usize = 80;

/// What `command` (named by its path from the binary) and everything below it lack.
fn undocumented(command: &clap::Command, path: &str, gaps: &mut Vec<String>) {
    if command.get_about().is_none() && command.get_long_about().is_none() {
        gaps.push(format!("{path}: no about"));
    }
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            gaps.push(format!("{path} {}: no help", arg.get_id()));
        }
    }
    for text in [command.get_after_help(), command.get_after_long_help()].into_iter().flatten() {
        for line in text.to_string().lines().filter(|l| l.chars().count() > EXAMPLE_WIDTH) {
            gaps.push(format!("{path}: after_help line wider than {EXAMPLE_WIDTH}: {line}"));
        }
    }
    for sub in command.get_subcommands() {
        undocumented(sub, &format!("{path} {}", sub.get_name()), gaps);
    }
}

#[test]
fn every_subcommand_and_argument_has_help() {
    let binaries = [
        ("ferry", ferry_builder::cli::Cli::command()),
        ("ferry-appliance", ferry_appliance::cli::Cli::command()),
        ("ferry-sim", ferry_sim::Cli::command()),
    ];
    let mut gaps = Vec::new();
    for (name, mut command) in binaries {
        // Clap's own checks (conflicting names, bad defaults, ...); building also adds the
        // generated --help, --version and `help`, which must pass the walk too.
        command.build();
        command.clone().debug_assert();
        undocumented(&command, name, &mut gaps);
    }
    assert!(gaps.is_empty(), "undocumented:\n{}", gaps.join("\n"));
}

#[test]
fn the_walk_finds_what_is_missing() {
    // The check itself can fail: a command tree with an undocumented argument, subcommand and a
    // long example line.
    let command = clap::Command::new("t")
        .about("a tool")
        .after_help(format!("Example:\n  {}", "x".repeat(EXAMPLE_WIDTH)))
        .arg(clap::Arg::new("bare").long("bare"))
        .subcommand(clap::Command::new("sub"));
    let mut gaps = Vec::new();
    undocumented(&command, "t", &mut gaps);
    assert_eq!(gaps.len(), 3, "{gaps:?}");
    assert!(gaps.iter().any(|g| g == "t bare: no help"), "{gaps:?}");
    assert!(gaps.iter().any(|g| g == "t sub: no about"), "{gaps:?}");
}
