//! Helpers the integration tests of several crates share (a dev-dependency only, never in a
//! shipped binary): running the workspace's binaries and checking what they printed, processes
//! whose output is collected as it comes, bounded waits, deterministic bytes, throwaway keys,
//! signed bundles written in a test, a double of Elasticsearch's security API ([`elastic`]), a
//! real HAProxy in front of several appliances ([`haproxy`]), and throwaway PostgreSQL servers
//! ([`postgres`]). What only one crate's tests need stays in that crate's `tests/it/support`.

mod bundle;
pub mod elastic;
pub mod haproxy;
mod lines;
pub mod postgres;
mod process;
mod upstream;

pub use bundle::{
    Sidecars, key_pair, noise, package_manifest, package_zip, payload, sidecars, spec, write_bundle,
};
pub use lines::Lines;
pub use process::{assert_ok, binary, command, eventually, json_stdout, run_ok, stderr, stdout};
pub use upstream::{Hit, Upstream};
