//! `ferry-appliance`, the isolated side of Ferry: it will verify and import bundles, keep the
//! release store, and serve the Fleet-compatible agent API and the artifact mirror.
//!
//! Import, serving and the admin commands arrive with their own issues; today the crate holds
//! the binary's skeleton so the workspace and its dependency rules exist from the start. Bundle
//! verification itself already lives in `ferry-manifests`, which this crate will call.

/// The appliance's version string, as shown by `--version` and the status API.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
