//! The hostile-rollback corpus: retained releases that must not become active again. Release 1
//! is signed by key A, release 2 (active) by key B; each case then spoils release 1 in its own
//! way (its key no longer trusted, its stored manifest or signature altered or swapped, a blob
//! altered or gone) and asks for `rollback 1` and a plain `rollback`. Each is refused with exit 1
//! and the check it failed, as an import is, and the active release and the data directory are
//! unchanged. Once release 1 is whole and trusted again, the same rollback goes through.

use std::path::Path;

use crate::support::{Fixture, VERSIONS, archive_bytes, assert_ok, snapshot, stderr, stdout};
use ferry_manifests::Sha256Digest;

/// One way to spoil release 1, and the verdict a rollback to it must get.
struct Case {
    what: &'static str,
    check: &'static str,
    /// A piece of the error message that shows the refusal names what failed.
    says: &'static str,
    /// What `releases --json` says of release 1 afterwards (it reads manifests, not blobs).
    state: &'static str,
    spoil: fn(&Fixture),
    mend: fn(&Fixture),
}

fn release_dir(f: &Fixture, sequence: u64) -> std::path::PathBuf {
    f.path(&format!("data/releases/site-{sequence}"))
}

/// The blob of release 1's agent archive, which release 2 does not share.
fn archive_blob(f: &Fixture) -> std::path::PathBuf {
    let hex = Sha256Digest::of(&archive_bytes(VERSIONS[0])).to_hex();
    f.path(&format!("data/blobs/sha256/{}/{}", &hex[..2], &hex[2..]))
}

/// Saves a file (or its absence) so `mend` can put it back.
fn keep(path: &Path) {
    let saved = path.with_extension("saved");
    let _ = std::fs::remove_file(&saved);
    std::fs::copy(path, saved).unwrap();
}

fn put_back(path: &Path) {
    let saved = path.with_extension("saved");
    if path.exists() {
        make_writable(path);
    }
    std::fs::rename(saved, path).unwrap();
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "signed by a key no longer trusted (the key rotation's last step)",
            check: "untrusted-key",
            says: "not trusted",
            state: "untrusted",
            spoil: |f| f.trust(&["b.pub"]),
            mend: |f| f.trust(&["trusted.pub", "b.pub"]),
        },
        Case {
            what: "stored manifest altered",
            check: "manifest-signature",
            says: "manifest signature",
            state: "damaged",
            spoil: |f| {
                let path = release_dir(f, 1).join("manifest.json");
                keep(&path);
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, text.replacen("linux-x86_64", "linux-arm64", 1)).unwrap();
            },
            mend: |f| put_back(&release_dir(f, 1).join("manifest.json")),
        },
        Case {
            what: "stored manifest and signature swapped for release 2's (both validly signed)",
            check: "trusted-comment",
            says: "release site 1",
            state: "damaged",
            spoil: |f| {
                for file in ["manifest.json", "manifest.json.minisig"] {
                    keep(&release_dir(f, 1).join(file));
                    std::fs::copy(release_dir(f, 2).join(file), release_dir(f, 1).join(file))
                        .unwrap();
                }
            },
            mend: |f| {
                for file in ["manifest.json", "manifest.json.minisig"] {
                    put_back(&release_dir(f, 1).join(file));
                }
            },
        },
        Case {
            what: "a blob altered",
            check: "sha256",
            says: "elastic-agent-9.1.0-linux-x86_64.tar.gz",
            state: "retained",
            spoil: |f| {
                let blob = archive_blob(f);
                keep(&blob);
                make_writable(&blob);
                let mut bytes = std::fs::read(&blob).unwrap();
                bytes[1000] ^= 1;
                std::fs::write(&blob, bytes).unwrap();
            },
            mend: |f| put_back(&archive_blob(f)),
        },
        Case {
            what: "a blob gone",
            check: "blob-missing",
            says: "elastic-agent-9.1.0-linux-x86_64.tar.gz",
            state: "retained",
            spoil: |f| {
                let blob = archive_blob(f);
                keep(&blob);
                std::fs::remove_file(&blob).unwrap();
            },
            mend: |f| put_back(&archive_blob(f)),
        },
    ]
}

/// `releases --json`: release `sequence`'s entry.
fn release_entry(f: &Fixture, sequence: u64) -> serde_json::Value {
    let list = f.run_json(&[&"releases", &"--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["sequence"] == sequence)
        .cloned()
        .unwrap_or_else(|| panic!("no release {sequence} in {list}"))
}

#[test]
fn a_rollback_to_a_release_that_no_longer_verifies_is_refused_and_changes_nothing() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let f = Fixture::new();
        let b = f.other_key("b.pub");
        f.trust(&["trusted.pub", "b.pub"]);
        assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
        let second = f.bundle_with_key(2, VERSIONS[1], Fixture::later(), &b);
        assert_ok(&f.run(&[&"import", &second]));
        assert_eq!(f.releases(), (Some(2), vec![1, 2]));

        (case.spoil)(&f);
        let data = f.path("data");
        let before = (f.releases(), snapshot(&data));
        for args in [&["rollback", "1", "--json"][..], &["rollback", "--json"]] {
            let args: Vec<&dyn AsRef<std::ffi::OsStr>> =
                args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>).collect();
            let o = f.run(&args);
            let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let check = verdict["check"].as_str().unwrap_or("(none)");
            if o.status.code() != Some(1)
                || check != case.check
                || verdict["activated"] != false
                || !stderr(&o).contains(case.says)
            {
                failures.push(format!(
                    "{} ({}): exit {:?}, check {check} (want {}), stdout {}, stderr {}",
                    case.what,
                    args.len(),
                    o.status.code(),
                    case.check,
                    stdout(&o).trim(),
                    stderr(&o).trim()
                ));
            }
            assert_eq!(f.releases(), before.0, "{}: the active release changed", case.what);
            assert_eq!(snapshot(&data), before.1, "{}: the data directory changed", case.what);
        }
        let entry = release_entry(&f, 1);
        if entry["state"] != case.state {
            failures.push(format!("{}: releases says {entry} (want {})", case.what, case.state));
        }

        // Whole and trusted again, the same release rolls back.
        (case.mend)(&f);
        assert_eq!(release_entry(&f, 1)["state"], "retained", "{}", case.what);
        let o = f.run(&[&"rollback", &"1", &"--json"]);
        assert_ok(&o);
        assert_eq!(f.releases().0, Some(1), "{}", case.what);
    }
    assert!(
        failures.is_empty(),
        "{} failures over {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The key rotation's end as the operator guide has it: once the old key is removed, its
/// releases are shown as untrusted, cannot come back, and garbage collection removes them (they
/// no longer count among the retained releases).
#[test]
fn releases_show_an_untrusted_release_and_gc_removes_it() {
    let f = Fixture::new();
    let b = f.other_key("b.pub");
    f.trust(&["trusted.pub", "b.pub"]);
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    assert_ok(&f.run(&[&"import", &f.bundle_with_key(2, VERSIONS[1], Fixture::later(), &b)]));
    f.trust(&["b.pub"]);

    let entry = release_entry(&f, 1);
    assert_eq!(entry["state"], "untrusted", "{entry}");
    assert_eq!(entry["check"], "untrusted-key", "{entry}");
    assert!(entry["problem"].as_str().unwrap().contains("not trusted"), "{entry}");
    assert_eq!(release_entry(&f, 2)["state"], "active");
    let text = stdout(&f.run(&[&"releases"]));
    let line = text.lines().find(|l| l.contains(" 1 ")).unwrap();
    assert!(line.contains("untrusted"), "{text}");
    let line = text.lines().find(|l| l.contains(" 2 ")).unwrap();
    assert!(line.starts_with('*') && line.contains("active"), "{text}");

    let o = f.run(&[&"gc"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("removed 1 release(s)"), "{}", stdout(&o));
    assert_eq!(f.releases(), (Some(2), vec![2]));
    assert!(!archive_blob(&f).exists(), "the untrusted release's blobs are collected");
    assert_ok(&f.run(&[&"fsck"]));
}
