//! The external programs the workspace's tests run (feature `forge`, for tests only): the stock
//! `minisign` and GNU `tar` and `zstd` for interop, `gpg` and `sha512sum` to check the mirror as
//! an agent would, and a few coreutils. One place that knows them, so a missing tool fails a test
//! with its name and the package to install instead of a bare `NotFound` panic.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// Every program the tests run, with the Debian package that provides it. README's test
/// command installs the same packages.
pub const TOOLS: &[(&str, &str)] = &[
    ("minisign", "minisign"),
    ("tar", "tar"),
    ("zstd", "zstd"),
    ("gpg", "gnupg"),
    ("sha512sum", "coreutils"),
    // What the transfer desk checks parts with (`NAME-SEQ.ferry.parts` is its input).
    ("sha256sum", "coreutils"),
    ("cp", "coreutils"),
    ("mkfifo", "coreutils"),
    ("kill", "procps"),
    // The watchdog that stops a test's PostgreSQL server once the test process is gone.
    ("sh", "dash"),
    // A client of the appliance's package registry over HTTPS, as Kibana is.
    ("curl", "curl"),
    // Signs the Elastic Defend test manifests, as a stock RSA signer (builder tests/it/defend.rs).
    ("openssl", "openssl"),
];

/// A command running the tool `name`, which must be one of [`TOOLS`]. Panics, naming the tool
/// and the package to install, when it is not on `PATH`.
#[track_caller]
pub fn tool(name: &str) -> Command {
    match locate(name, std::env::var_os("PATH").as_deref()) {
        Ok(path) => Command::new(path),
        Err(message) => panic!("{message}"),
    }
}

/// Where `name` is on `path` (a `PATH` value), or why it cannot be run.
fn locate(name: &str, path: Option<&OsStr>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let Some((_, package)) = TOOLS.iter().find(|(tool, _)| *tool == name) else {
        return Err(format!("{name} is not in ferry_manifests::test_tools::TOOLS: add it there"));
    };
    let executable = |file: &PathBuf| {
        std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    path.into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(executable)
        .ok_or_else(|| {
            format!(
                "this test runs `{name}`, which is not installed: apt-get install {package} \
                 (README lists every tool the tests need)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_named_with_its_package() {
        let dir = tempfile::tempdir().unwrap();
        let path = Some(dir.path().as_os_str());
        let message = locate("gpg", path).unwrap_err();
        assert!(
            message.contains("`gpg`") && message.contains("apt-get install gnupg"),
            "{message}"
        );
        // A file that is there but not executable is not the tool either.
        std::fs::write(dir.path().join("gpg"), "").unwrap();
        assert!(locate("gpg", path).is_err());
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path().join("gpg"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_eq!(locate("gpg", path).unwrap(), dir.path().join("gpg"));
        assert!(locate("wget", path).unwrap_err().contains("not in"));
    }
}
