//! Shared helpers for Ferry's end-to-end journeys: finding the built binaries and running them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The folder holding the workspace's binaries for the profile these tests were built with.
/// Integration tests live in `target/<profile>/deps/`, the binaries one level up.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps folder");
    deps.parent().expect("profile folder").to_owned()
}

/// A command for one of the workspace's binaries (`ferry`, `ferry-appliance`, `ferry-sim`). Fails loudly if
/// it has not been built: run the tests with `cargo test --workspace`, which builds them.
pub fn binary(name: &str) -> Command {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is not built; run `cargo test --workspace`", path.display());
    let mut cmd = Command::new(path);
    cmd.env_remove("FERRY_KEY_PASSWORD").env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// Runs `cmd`, panicking with its output unless it succeeds.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
