//! Command-line definitions of `ferry-appliance`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-appliance",
    version,
    about = "Verify, activate and serve Ferry bundles to Elastic Agents inside an isolated network",
    long_about = "Verify, activate and serve Ferry bundles to Elastic Agents inside an isolated \
        network.\n\n\
        `import` verifies a bundle that crossed the gap and makes it the active release \
        atomically; `rollback`, `releases`, `fsck` and `gc` manage the retained ones. `serve` \
        speaks Fleet Server's agent API over TLS to stock Elastic Agents (enrollment, long-poll \
        check-ins, the active release's policies, actions, diagnostics uploads) and serves the \
        release's artifacts in Elastic's downloads/ layout, with the PGP key upgrades check. \
        While it runs, `tokens`, `agents`, `upgrade`, `unenroll`, `reassign`, `settings`, \
        `diagnostics` and `actions` manage the fleet through its admin API (the Unix socket \
        data_dir/admin.sock, for serve's user and root), `secrets` sets the values of the Fleet \
        secrets policies name, `status` says whether it serves its active release, and `drain` \
        takes it out of a load balancer's rotation.\n\n\
        Exit codes: 0 success; 1 an input was refused (a bundle or its signature, data that \
        fails its check, a request the appliance refuses such as an unknown policy or agent); 2 \
        usage, configuration or internal error; 3 an import from parts lacks parts (nothing \
        imported, the verified parts kept: run it again with the missing ones).",
    after_help = "Typical use:\n  ferry-appliance default-config > /etc/ferry/appliance.toml\n  \
        ferry-appliance import site-3.ferry\n  ferry-appliance serve\n  \
        ferry-appliance tokens create --policy POLICY_ID"
)]
pub struct Cli {
    /// The configuration file (`default-config` prints an example to start from).
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
    /// List retained releases, the active one marked, each with its state as its stored
    /// manifest verifies with the keys trusted now (active, retained, untrusted, damaged).
    Releases(JsonArg),
    /// Re-activate a retained earlier release once it verifies with the keys trusted now (the
    /// rollback floor stays where it is).
    Rollback(RollbackArgs),
    /// Re-hash every blob of every retained release against its signed manifest.
    Fsck(JsonArg),
    /// Remove releases beyond `retain_releases` and blobs no retained release needs.
    Gc,
    /// What this appliance holds (retained releases, the digest and size of every blob), for
    /// a delta bundle: `holdings --json > holdings.json`, carried to the connected side, is
    /// what `ferry build --base holdings.json` leaves out.
    Holdings(JsonArg),
    /// Serve the active release over TLS (and follow imports and rollbacks as they happen).
    Serve(ServeArgs),
    /// What the appliance serves: the active release, whether it verifies and is served, what
    /// /api/status answers, the agents, the site's Elasticsearch and policies not delivered.
    /// Exits 1 when a check of `health` fails (warnings do not change the exit status).
    Status(JsonArg),
    /// Whether the appliance is fine, in one line, and if not, why. Exits 0 when healthy, 1 when
    /// a check fails, 2 when only warnings remain.
    #[command(long_about = "Whether the appliance is fine, in one line, and if not, why.\n\n\
        Checks: the server runs and /api/status answers HEALTHY (not while draining); its agent \
        listener accepts connections; the state store answers; a release is active, verifies, \
        and does not expire within 14 days (warns) or has not expired (fails); the server \
        certificate does not expire within 30 days (warns) or has not expired (fails); the \
        site's Elasticsearch, when configured, is reachable and accepts the credential; every \
        policy is delivered; data_dir's file system has at least 1 GiB free (fails) and 10 % \
        (warns).\n\n\
        Exit status: 0 healthy, 1 a check fails, 2 only warnings. --json prints the status \
        report with every check and the verdict line.")]
    Health(JsonArg),
    /// The instances of this appliance's cluster (several sharing one PostgreSQL store): each
    /// one's state, version, active release and parked check-ins, and imports underway.
    Cluster(JsonArg),
    /// The state store itself: move a single appliance's state into a cluster's PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The audit log (data_dir/audit.log): what was done to this appliance, by whom, when and
    /// with what outcome; each line chained to the one before by its SHA-256.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Enrollment tokens: what `elastic-agent install --enrollment-token` takes.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Enrolled agents: status, version, policy revision, last check-in, upgrade state.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Upgrade agents to a version the active release carries (from this appliance's mirror).
    Upgrade(UpgradeArgs),
    /// Unenroll agents: they stop their inputs, acknowledge, and their keys stop working.
    Unenroll(UnenrollArgs),
    /// Move agents to another policy of the active release.
    Reassign(ReassignArgs),
    /// Change agents' log level.
    Settings(SettingsArgs),
    /// Ask agents for a diagnostics bundle, and fetch the bundles they uploaded.
    #[command(subcommand)]
    Diagnostics(DiagnosticsCommand),
    /// Follow or cancel an action.
    #[command(subcommand)]
    Actions(ActionsCommand),
    /// On-site secrets: the values of the Fleet secrets policies name (passwords, client
    /// keys), set here because they never travel in a bundle.
    #[command(
        subcommand,
        long_about = "On-site secrets: the values of the Fleet secrets that policies name \
            (secret_references, $co.elastic.secret{ID}), such as output passwords and client \
            keys. They never travel in a bundle: the operator sets each one here, by its Fleet \
            secret id, and agents receive it inside their policy, over the agent API's TLS.\n\n\
            Values are kept in data_dir/state.db only sealed (XChaCha20-Poly1305) with the key \
            in data_dir/secrets.key (made on first use, mode 0600), or the file [secrets] \
            key_file names. They never leave the appliance otherwise: no command, answer or log \
            shows them. Back the key file up with state.db: without it the values are lost \
            and must be set again.\n\n\
            These commands talk to the running `ferry-appliance serve`; a change reaches agents \
            at their next check-in."
    )]
    Secrets(SecretsCommand),
    /// Take this instance out of a load balancer's rotation (`--undo` puts it back): /api/status
    /// answers 503, parked check-ins are answered now, and agents' next requests go elsewhere.
    #[command(long_about = "Take this instance out of a load balancer's rotation, for \
        maintenance or an upgrade, without agents noticing; `--undo` puts it back.\n\n\
        While draining, /api/status answers 503 (STOPPING), so the load balancer's health check \
        marks the instance down; every parked check-in is answered now with nothing to do, and \
        new ones at once; every response closes its connection, and idle keep-alive connections \
        are closed. Agents' next requests therefore open new connections, which the load \
        balancer sends to the other instances. Answers once the parked check-ins are answered \
        (at most 10 s). Wait until the load balancer shows the instance down before stopping \
        it.\n\n\
        Draining lasts until `drain --undo` or until `serve` restarts. `status` shows it.")]
    Drain(DrainArgs),
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// End draining: /api/status answers as before and check-ins are held again.
    #[arg(long)]
    pub undo: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show the recorded events, oldest first.
    Show {
        /// Only events at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// One JSON record per line on stdout, exactly as stored (for a SIEM).
        #[arg(long)]
        json: bool,
    },
    /// Check the chain: every line a record, sequence numbers in order, each line's `prev` the
    /// SHA-256 of the line before, the last one the recorded head. Exits 1 at the first break,
    /// naming its file and line (a line removed, edited, moved, or the end cut off).
    Verify(JsonArg),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a single appliance's SQLite state (agents, tokens, actions, releases, floors,
    /// secrets…) into the empty PostgreSQL database of `[store]`, in one transaction.
    #[command(long_about = "Copy a single appliance's SQLite state into the empty PostgreSQL \
        database this configuration's [store] names, in one transaction: agents keep their \
        keys, actions their acknowledgements, releases their floors and the active pointer.\n\n\
        Stop the single appliance's serve first. Run this on that host, with the cluster's \
        configuration naming the same data_dir: its releases are recorded as held by this \
        instance, and its diagnostics uploads are copied into shared_dir/uploads. The other \
        instances catch up from shared_dir/bundles, so put the active release's bundle and \
        signature there (the command says which are missing). A database that already \
        holds state is refused untouched. See docs/high-availability.md.")]
    Copy {
        /// The SQLite database to copy (default: data_dir/state.db).
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set a secret's value, replacing the one set before; read from stdin or --file.
    #[command(long_about = "Set a secret's value, replacing the one set before.\n\n\
        The value is read from stdin, or from --file, never from an argument (which `ps` and \
        shell history would keep). When stdin is a terminal it is asked for without echo. \
        One trailing newline is removed (as `echo` and editors add one); an empty value is \
        refused. Values are UTF-8, up to 64 KiB (a PEM key fits).\n\n\
        Examples:\n  ferry-appliance secrets set es-output-password\n  \
        ferry-appliance secrets set kafka-client-key --file client.key\n  \
        ferry-appliance secrets set es-output-password < password.txt")]
    Set {
        /// The Fleet secret id, as the policy names it (`secret_references`, or
        /// `$co.elastic.secret{ID}`): 1 to 256 bytes, no `}`.
        id: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The secrets set, by id, with when each was set (never their values).
    List(JsonArg),
    /// Forget a secret's value.
    Remove {
        /// The secret id, as `secrets list` shows it.
        id: String,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token that enrolls agents into POLICY; prints the token once.
    Create {
        /// The policy id agents enrolled with this token get (a policy of the active release).
        #[arg(long)]
        policy: String,
        /// A note for `tokens list`.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List tokens (ids and policies; secrets are not kept).
    List(JsonArg),
    /// Revoke a token: agents can no longer enroll with it (enrolled agents are unaffected).
    Revoke {
        /// The token id, as `tokens list` shows it.
        id: String,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// One line per agent, in enrollment order. Status is offline after `agent_offline_seconds`
    /// without a check-in. What agents sent is shown escaped and cut to 128 characters.
    List {
        /// Only agents of this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only the first N agents (default: all, fetched 1000 at a time).
        #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        limit: Option<usize>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Everything known about one agent, components and upgrade details included.
    Show {
        /// The agent id, as `agents list` shows it.
        id: String,
        #[command(flatten)]
        json: JsonArg,
    },
}

/// Which agents an action is for: ids, or every active agent of a policy.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Targets {
    /// Agent ids (see `agents list`).
    pub agents: Vec<String>,
    /// Every active agent of this policy.
    #[arg(long = "policy", value_name = "POLICY")]
    pub policy: Option<String>,
}

/// When an action stops being delivered.
#[derive(Debug, Args)]
pub struct Expiry {
    /// Agents that have not received the action within this many days never will.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub expires_in_days: u64,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The target version (X.Y.Z); the active release must carry its archives.
    #[arg(long)]
    pub version: String,
    #[command(flatten)]
    pub targets: Targets,
    /// Agents start the upgrade at this time (RFC 3339) rather than at once.
    #[arg(long, value_name = "TIME")]
    pub start_time: Option<String>,
    #[command(flatten)]
    pub expiry: Expiry,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct UnenrollArgs {
    /// Agent ids.
    #[arg(required = true)]
    pub agents: Vec<String>,
    /// Revoke the agents' keys now instead of waiting for them to acknowledge (for hosts that
    /// are gone or not trusted any more).
    #[arg(long)]
    pub revoke: bool,
    #[command(flatten)]
    pub expiry: Expiry,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ReassignArgs {
    /// Agent ids.
    #[arg(required = true)]
    pub agents: Vec<String>,
    /// The policy to move them to.
    #[arg(long = "to", value_name = "POLICY")]
    pub policy: String,
    #[command(flatten)]
    pub expiry: Expiry,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// trace, debug, info, warning or error; "" returns to the policy's level.
    #[arg(long)]
    pub log_level: String,
    #[command(flatten)]
    pub targets: Targets,
    #[command(flatten)]
    pub expiry: Expiry,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Subcommand)]
pub enum DiagnosticsCommand {
    /// Ask agents to collect and upload a diagnostics bundle.
    Request {
        #[command(flatten)]
        targets: Targets,
        /// Extra metrics to collect: CPU, CONN.
        #[arg(long = "metric", value_name = "METRIC")]
        metrics: Vec<String>,
        #[command(flatten)]
        expiry: Expiry,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Uploaded bundles (and uploads in progress or refused).
    List(JsonArg),
    /// Save an uploaded bundle, never over an existing file unless --force. The agent's own
    /// file name is only shown, never used as a path.
    Get {
        /// The upload id, from `diagnostics list`.
        upload_id: String,
        /// Where to write it (default: diagnostics-AGENT-UPLOAD.zip in the current folder).
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Replace the -o file if it exists (without it, an existing file is an error).
        #[arg(long, requires = "output")]
        force: bool,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// Which agents acknowledged an action, and with what error.
    Show {
        /// The action id, as `upgrade`, `unenroll`, `reassign`, `settings` and `diagnostics
        /// request` print it.
        action_id: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Cancel an action (agents that have not received it never will; scheduled upgrades stop).
    Cancel {
        /// The id of the action to cancel, as the command that queued it printed it.
        action_id: String,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Replace a `serve` already running on this data directory without agents noticing: bind
    /// the same addresses alongside it (new connections wait), ask it to stop (it answers its
    /// parked check-ins and writes what it holds), then carry on where it left off. Use it to
    /// restart or upgrade the appliance; a plain stop and start makes agents whose check-in
    /// fails in between wait 30 to 60 s before trying again.
    #[arg(long)]
    pub takeover: bool,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Machine output (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle file (NAME-SEQUENCE.ferry), or the signed index of a bundle that came as
    /// parts (NAME-SEQUENCE.ferry.parts): then the parts are looked for beside it and in each
    /// --parts-dir, verified, kept in the data directory until enough have arrived (exit 3
    /// until then: run again with the missing ones), and the bundle rebuilt and imported.
    pub bundle: PathBuf,
    /// Its detached signature (default: BUNDLE.minisig; for a parts index, INDEX.minisig).
    #[arg(long, value_name = "PATH")]
    pub signature: Option<PathBuf>,
    /// Another folder holding parts (a mounted medium); repeat for several.
    #[arg(long = "parts-dir", value_name = "DIR")]
    pub parts_dirs: Vec<PathBuf>,
    /// Accept a sequence at or below the stored floor (a rollback or replay). Logged.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Accept a bundle past its expiry (and the configured tolerance). Logged.
    #[arg(long)]
    pub allow_expired: bool,
    /// In a cluster: how long to wait for every other live instance to verify and stage the
    /// bundle before giving up (it then becomes active nowhere).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub cluster_wait: u64,
    /// Machine output (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The sequence to re-activate (default: the newest retained one below the active one).
    pub sequence: Option<u64>,
    /// Machine output (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
}
