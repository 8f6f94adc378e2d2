//! Command-line definitions of `ferry`, kept apart so man pages and completions can be
//! generated from them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Build signed, reproducible Ferry bundles for air-gapped Elastic sites",
    long_about = "Build signed, reproducible Ferry bundles for air-gapped Elastic sites.\n\n\
        A bundle is NAME-SEQUENCE.ferry plus NAME-SEQUENCE.ferry.minisig. Carry both across the \
        gap; ferry-appliance verifies and imports them.\n\n\
        Exit codes: 0 success; 1 an input was refused (a bundle or its signature missing or \
        failing a check, a file or artifact a build needs missing or failing its check); 2 \
        usage, the spec itself, network or internal error.",
    after_help = "Typical use:\n  ferry keygen\n  ferry build bundle.toml --out dist/\n  ferry verify dist/site-1.ferry --public-key ferry.pub"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a minisign key pair for signing bundles.
    Keygen(KeygenArgs),
    /// List every file a build would fetch, with its source and bundle path, and what is
    /// already cached. Downloads no file; `[[integration]]` entries are resolved with the
    /// package registry's search, as a build resolves them, and list each package's size.
    Plan(PlanArgs),
    /// Build and sign a bundle from a spec file: fetch and verify Elastic artifacts, check
    /// policies and certificates, write NAME-SEQUENCE.ferry and its signature (or, with
    /// --part-size, its parts and their signed index).
    Build(BuildArgs),
    /// Verify a bundle: detached signature, manifest signature and every entry.
    Verify(VerifyArgs),
    /// Show a bundle's manifest (without verifying it; use `verify` for that).
    Inspect(InspectArgs),
    /// Cut a signed bundle into media-sized parts, with optional Reed-Solomon parity parts, a
    /// signed index (NAME-SEQ.ferry.parts, which `sha256sum -c` reads) and a transfer note. The
    /// bundle itself is only read.
    Split(SplitArgs),
}

/// A part size: `4GiB`, `700MiB`, `4G` (powers of 1024), `4.7GB` (powers of 1000), or bytes.
fn part_size(text: &str) -> Result<u64, String> {
    ferry_manifests::parts::parse_size(text)
}

#[derive(Debug, Args)]
pub struct PartsArgs {
    /// Write the bundle as parts of this size for removable media: 4GiB, 700MiB, 4G (powers of
    /// 1024), 4.7GB (powers of 1000) or bytes. Writes NAME-SEQ.ferry.part001…, the signed index
    /// NAME-SEQ.ferry.parts(.minisig), which carries the bundle's detached signature, and
    /// NAME-SEQ.ferry.transfer.txt. The parts are written straight from the compressor: the
    /// whole NAME-SEQ.ferry is not written (see --keep-bundle), and with --json "bundle" and
    /// "signature" are null.
    #[arg(long, value_name = "SIZE", value_parser = part_size)]
    pub part_size: Option<u64>,
    /// Reed-Solomon parity parts to add: any N parts may then be lost or damaged in transit.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "part_size")]
    pub parity: usize,
    /// With --part-size: also keep the whole NAME-SEQ.ferry and its .minisig beside the parts,
    /// to archive, verify, cut again (`ferry split`) or name as a later delta's --base. The
    /// parts and index are byte for byte the same; the build writes the bundle's bytes twice.
    #[arg(long, requires = "part_size")]
    pub keep_bundle: bool,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The bundle file (NAME-SEQUENCE.ferry), signed by --secret-key's key.
    pub bundle: PathBuf,
    /// Its detached signature (default: BUNDLE.minisig).
    #[arg(long, value_name = "PATH")]
    pub signature: Option<PathBuf>,
    /// Bytes per part: 4GiB, 700MiB, 4G (powers of 1024), 4.7GB (powers of 1000) or bytes.
    #[arg(long, value_name = "SIZE", value_parser = part_size)]
    pub part_size: u64,
    /// Reed-Solomon parity parts to add: any N parts may then be lost or damaged in transit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub parity: usize,
    /// Folder to write the parts, the index and the transfer note into (default: the bundle's).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// The secret key that signed the bundle; it signs the index too.
    #[arg(long, default_value = "ferry.key", value_name = "PATH")]
    pub secret_key: PathBuf,
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// Read the secret key's password from the first line of this file. Otherwise the
    /// FERRY_KEY_PASSWORD environment variable is used, or you are asked on the terminal.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (keep it on the connected side, offline if you can).
    #[arg(long, default_value = "ferry.key", value_name = "PATH")]
    pub secret_key: PathBuf,
    /// Where to write the public key (this is what appliances trust).
    #[arg(long, default_value = "ferry.pub", value_name = "PATH")]
    pub public_key: PathBuf,
    /// Store the secret key unencrypted, for automation. Protect the file by other means.
    #[arg(long)]
    pub without_password: bool,
    /// Replace existing key files.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    Zstd,
    Gzip,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The download cache: verified artifacts by content hash, so a rebuild downloads nothing
    /// twice. Default: $XDG_CACHE_HOME/ferry or ~/.cache/ferry.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The bundle spec (TOML).
    pub spec: PathBuf,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Print the plan as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The bundle spec (TOML). Relative file paths in it are resolved against its folder.
    pub spec: PathBuf,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Downloads at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: usize,
    /// Attempts per file (with exponential backoff and byte-range resume) before giving up.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub attempts: u32,
    /// The secret key to sign with.
    #[arg(long, default_value = "ferry.key", value_name = "PATH")]
    pub secret_key: PathBuf,
    /// Build a delta: leave out every entry whose content BASE already holds. BASE is an
    /// earlier bundle of the same name (its manifest must be signed by --secret-key's key), or
    /// the holdings file an appliance prints (`ferry-appliance holdings --json`), whose active
    /// release becomes the base and all of whose blobs are left out. The delta's manifest still
    /// lists every entry; the appliance takes the left-out ones from its blob store, checking
    /// each digest, and refuses a delta whose base content it lacks.
    #[arg(long, value_name = "BASE")]
    pub base: Option<PathBuf>,
    /// Folder to write NAME-SEQUENCE.ferry and its .minisig, or the parts, into (created if
    /// missing).
    #[arg(long, short, default_value = ".", value_name = "DIR")]
    pub out: PathBuf,
    /// The bundle's creation time (RFC 3339). Defaults to SOURCE_DATE_EPOCH, then now. Fix it
    /// to rebuild a bundle byte for byte.
    #[arg(long, value_name = "TIME")]
    pub created: Option<String>,
    /// Compression of the bundle.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: CompressionArg,
    /// Compression level (zstd 1-19, default 3; gzip 1-9, default 6).
    #[arg(long, value_name = "N")]
    pub level: Option<u32>,
    /// zstd worker threads (default: all cores). The output does not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    #[command(flatten)]
    pub parts: PartsArgs,
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle file.
    pub bundle: PathBuf,
    /// A trusted public key; repeat to trust several (during a key rotation).
    #[arg(long, short = 'p', required = true, value_name = "PATH")]
    pub public_key: Vec<PathBuf>,
    /// The detached signature (default: BUNDLE.minisig).
    #[arg(long, value_name = "PATH")]
    pub signature: Option<PathBuf>,
    /// Accept a bundle whose expiry has passed (the check is reported, not enforced).
    #[arg(long)]
    pub allow_expired: bool,
    /// Print the verdict as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle file.
    pub bundle: PathBuf,
    /// The detached signature whose key id to show (default: BUNDLE.minisig, if present).
    #[arg(long, value_name = "PATH")]
    pub signature: Option<PathBuf>,
    /// Print the full manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
