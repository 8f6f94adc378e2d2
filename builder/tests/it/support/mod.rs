//! Test support: a synthetic copy of Elastic's download site, with `.sha512` files and `.asc`
//! signatures by a PGP key made here, for the testkit's in-process upstream to serve.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_artifacts::pgp::SigningKey;
pub use ferry_testkit::{Upstream, assert_ok, stderr, stdout};
use ferry_testkit::{command, noise, sidecars};

/// A synthetic Elastic download site: for each mirror path, the archive, its `.sha512` and its
/// `.asc` by `key`. Keys of the map are request paths (`/downloads/...`).
pub fn site(key: &SigningKey, mirror_paths: &[&str], size: usize) -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    for path in mirror_paths {
        let archive = noise(path, size);
        let sidecars = sidecars(key, path.rsplit('/').next().unwrap(), &archive);
        files.insert(format!("/downloads/{path}.sha512"), sidecars.sha512.into_bytes());
        files.insert(format!("/downloads/{path}.asc"), sidecars.asc.into_bytes());
        files.insert(format!("/downloads/{path}"), archive);
    }
    files
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn ferry(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = command(env!("CARGO_BIN_EXE_ferry"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().unwrap()
}
