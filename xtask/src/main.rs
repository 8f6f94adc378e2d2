//! `cargo xtask`: release chores. `dist-assets OUT` writes man pages (one per command and
//! subcommand) and bash, zsh and fish completions for `ferry` and `ferry-appliance`, generated
//! from the same clap definitions the binaries parse with, and the default configuration.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [task, out] if task == "dist-assets" => dist_assets(Path::new(out)),
        _ => anyhow::bail!("usage: cargo xtask dist-assets OUT_DIR"),
    }
}

fn dist_assets(out: &Path) -> anyhow::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for (name, mut command) in [
        ("ferry", ferry_builder::cli::Cli::command()),
        ("ferry-appliance", ferry_appliance::cli::Cli::command()),
    ] {
        command = command.name(name);
        clap_mangen::generate_to(command.clone(), &man)?;
        for shell in
            [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish]
        {
            clap_complete::generate_to(shell, &mut command, name, &completions)?;
        }
    }
    std::fs::write(out.join("appliance.toml"), ferry_appliance::DEFAULT_CONFIG)?;
    println!("wrote man pages, completions and appliance.toml to {}", out.display());
    Ok(())
}
