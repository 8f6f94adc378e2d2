//! `ferry`, the connected side of Ferry: key generation, bundle building, verification and
//! inspection. `main` only parses arguments and calls [`run`].

pub mod cli;
mod commands;
pub mod defend;
pub mod fetch;
mod intake;
pub mod keys;
pub mod registry;
pub mod spec;

use std::process::ExitCode;

pub use commands::run;

/// The version string recorded in every manifest this builder writes.
pub fn builder_id() -> String {
    format!("ferry {}", env!("CARGO_PKG_VERSION"))
}

/// Maps an error to the exit code the CLI contract promises: 1 when an input was refused (a
/// bundle or its signature, a file or artifact a build needs: missing or failing its check), 2
/// for everything else (usage, the spec itself, network, disk, internal errors).
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    let refusal = error.chain().any(|cause| {
        cause
            .downcast_ref::<ferry_manifests::VerifyError>()
            .is_some_and(ferry_manifests::VerifyError::is_refusal)
            || cause
                .downcast_ref::<ferry_manifests::parts::SplitError>()
                .is_some_and(ferry_manifests::parts::SplitError::is_refusal)
            || cause
                .downcast_ref::<intake::FileErrors>()
                .is_some_and(intake::FileErrors::is_refusal)
    });
    if refusal { ExitCode::from(1) } else { ExitCode::from(2) }
}
