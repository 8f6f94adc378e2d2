//! Command-line definitions of `ferry-appliance`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-appliance",
    version,
    about = "Verify, activate and serve Ferry bundles inside an isolated network",
    long_about = "Verify, activate and serve Ferry bundles inside an isolated network.\n\n\
        Import a bundle that crossed the gap, then serve its Elastic Agent artifacts (in Elastic's \
        downloads/ layout) and the Fleet status and PGP-key endpoints over TLS.\n\n\
        Exit codes: 0 success, 1 a bundle or the data was refused, 2 usage or internal error.",
    after_help = "Typical use:\n  ferry-appliance default-config > /etc/ferry/appliance.toml\n  ferry-appliance import site-3.ferry\n  ferry-appliance serve"
)]
pub struct Cli {
    /// The configuration file (see `default-config`).
    #[arg(
        long,
        short,
        global = true,
        env = "FERRY_APPLIANCE_CONFIG",
        default_value = "/etc/ferry/appliance.toml"
    )]
    pub config: PathBuf,
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a commented example configuration.
    DefaultConfig,
    /// Verify a bundle and make it the active release (atomically; safe while serving).
    Import(ImportArgs),
    /// List retained releases; the active one is marked.
    Releases(JsonArg),
    /// Re-activate a retained earlier release (the rollback floor stays where it is).
    Rollback(RollbackArgs),
    /// Re-hash every blob of every retained release against its signed manifest.
    Fsck(JsonArg),
    /// Remove releases beyond `retain_releases` and blobs no retained release needs.
    Gc,
    /// Serve the active release over TLS (and follow imports and rollbacks as they happen).
    Serve,
    /// Enrollment tokens: what `elastic-agent install --enrollment-token` takes.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token that enrolls agents into POLICY; prints the token once.
    Create {
        /// The policy id agents enrolled with this token get.
        #[arg(long)]
        policy: String,
        /// A note for `tokens list`.
        #[arg(long)]
        name: Option<String>,
        /// Machine output (JSON) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (ids and policies; secrets are not kept).
    List(JsonArg),
    /// Revoke a token: agents can no longer enroll with it (enrolled agents are unaffected).
    Revoke {
        /// The token id, as `tokens list` shows it.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Machine output (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle file (NAME-SEQUENCE.ferry).
    pub bundle: PathBuf,
    /// Its detached signature (default: BUNDLE.minisig).
    #[arg(long, value_name = "PATH")]
    pub signature: Option<PathBuf>,
    /// Accept a sequence at or below the stored floor (a rollback or replay). Logged.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Accept a bundle past its expiry (and the configured tolerance). Logged.
    #[arg(long)]
    pub allow_expired: bool,
    /// Machine output (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The sequence to re-activate (default: the newest retained one below the active one).
    pub sequence: Option<u64>,
}
