//! Running the workspace's binaries and checking what they printed, and polling with a bound.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Variables that change what a Ferry binary does, unset so that a developer's shell cannot
/// change a test's outcome: a key password, a fixed build time, an injected crash, proxies.
const ENVIRONMENT: [&str; 9] = [
    "FERRY_KEY_PASSWORD",
    "SOURCE_DATE_EPOCH",
    "FERRY_CRASH_AT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// A command for `program` (one of the workspace's binaries) without the variables that change
/// what it does.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for var in ENVIRONMENT {
        cmd.env_remove(var);
    }
    cmd
}

/// A [`command`] for the workspace binary `name` built with the same profile as the running
/// test, for a crate's tests that run another package's binary (a package's own are in
/// `CARGO_BIN_EXE_<name>`). Integration tests live in `target/<profile>/deps/`, the binaries
/// one level up. Fails loudly if it has not been built: `cargo test --workspace` builds the
/// binaries of every package that has integration tests (`ferry`, `ferry-appliance`,
/// `ferry-sim`), for their own tests' `CARGO_BIN_EXE_<name>`.
pub fn binary(name: &str) -> Command {
    let exe = std::env::current_exe().expect("test executable path");
    let profile: PathBuf = exe.ancestors().nth(2).expect("profile folder").to_owned();
    let path = profile.join(name);
    assert!(path.exists(), "{} is not built; run `cargo test --workspace`", path.display());
    command(path)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Runs `cmd`, panicking with what it printed unless it succeeds.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// The JSON a command that must have succeeded printed on stdout.
#[track_caller]
pub fn json_stdout(o: &Output) -> serde_json::Value {
    assert_ok(o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// Polls `f` every 100 ms until it gives a value; panics naming `what` after `within`.
#[track_caller]
pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "never within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
