//! `ferry-appliance`, the isolated side of Ferry: verified import into a release store,
//! rollback, fsck, and the HTTPS server (Fleet status, the PGP key and Elastic's download
//! layout). `main` only parses arguments and calls [`commands::run`].

pub mod admin;
pub mod admin_cli;
pub mod agent_api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod http1;
pub mod hub;
pub mod limits;
pub mod release;
pub mod server;
pub mod state;
pub mod tls;

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

/// Maps an error to the CLI's exit code: 1 when a bundle or the data was refused as invalid,
/// 2 for anything else.
pub fn exit_code(error: &anyhow::Error) -> std::process::ExitCode {
    let refusal = error.chain().any(|cause| {
        cause
            .downcast_ref::<ferry_manifests::VerifyError>()
            .is_some_and(ferry_manifests::VerifyError::is_refusal)
            || cause.downcast_ref::<release::ImportRefusal>().is_some()
    });
    std::process::ExitCode::from(if refusal { 1 } else { 2 })
}
