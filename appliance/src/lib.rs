//! `ferry-appliance`, the isolated side of Ferry: verified import into a release store,
//! rollback, fsck, the HTTPS server (Fleet Server's agent API for stock Elastic Agents, the
//! download mirror in Elastic's layout, the PGP key) and the admin API (a Unix socket) with its
//! CLI.
//! `main` only parses arguments and calls [`run`].

// Private modules: what another crate may use is re-exported below, or public for a reason
// given with it; `unreachable_pub` keeps everything else `pub(crate)`, so an item no one uses
// is dead code the compiler reports.
#![warn(unreachable_pub)]

mod admin;
mod app;
mod audit;
/// The CLI's definitions, public for the man pages and completions `xtask` generates.
pub mod cli;
mod clock;
mod cluster;
mod commands;
mod config;
/// Fleet's credentials, public so the tests can mint and decode keys as Fleet does.
pub mod credentials;
mod elastic;
mod error;
mod fleet;
mod health;
mod metrics;
mod mirror;
mod net;
mod parts;
mod registry;
mod release;
mod routes;
mod secrets;
mod store;

pub use commands::run;
pub use config::DEFAULT_CONFIG;
pub use error::ApiError;
#[doc(hidden)]
pub use fleet::fuzzing;

/// The appliance's version string.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// A testing hook: when `FERRY_CRASH_AT` names this point, the process aborts on the spot (no
/// cleanup, no destructors), as a power cut or `kill -9` would stop it. The crash tests use it
/// to stop an import at chosen points; it does nothing otherwise.
pub fn crash_point(name: &str) {
    if std::env::var_os("FERRY_CRASH_AT").is_some_and(|v| v == name) {
        eprintln!("FERRY_CRASH_AT={name}: aborting");
        std::process::abort();
    }
}

/// The name of the check that refused a bundle or the data, when `error` is such a refusal
/// (the same names `ferry verify --json` reports, plus the import's own: replay, downgrade,
/// sequence-reused, expired; and a retained release's: blob-missing, blob-unreadable).
pub fn refusal_check(error: &anyhow::Error) -> Option<&'static str> {
    error.chain().find_map(|cause| {
        if let Some(refusal) = cause.downcast_ref::<release::ImportRefusal>() {
            return Some(refusal.check());
        }
        if let Some(refusal) = cause.downcast_ref::<release::RollbackRefusal>() {
            return Some(refusal.check());
        }
        if let Some(refusal) = cause.downcast_ref::<parts::PartsRefusal>() {
            return Some(refusal.check());
        }
        if let Some(stored) = cause.downcast_ref::<release::StoredManifestError>() {
            return Some(stored.check());
        }
        cause
            .downcast_ref::<ferry_manifests::VerifyError>()
            .filter(|e| e.is_refusal())
            .map(ferry_manifests::VerifyError::check)
    })
}

/// Maps an error to the CLI's exit code: 1 when an input was refused (a bundle, the data, or a
/// request to the admin API), 2 for anything else (usage, configuration, internal errors).
pub fn exit_code(error: &anyhow::Error) -> std::process::ExitCode {
    let refused = refusal_check(error).is_some()
        || error.chain().any(|cause| cause.is::<admin::client::AdminRefusal>());
    std::process::ExitCode::from(if refused { 1 } else { 2 })
}
