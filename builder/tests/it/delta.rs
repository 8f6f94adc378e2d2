//! `ferry build --base`: deltas against an earlier bundle or an appliance's holdings file, what
//! `verify` and `inspect` say of them, and the bases refused.

use std::path::{Path, PathBuf};

use crate::support::{assert_ok, ferry, fixture, stderr};
use ferry_manifests::{HeldBlob, HeldRelease, Holdings, Sha256Digest};

const CREATED: &str = "2026-11-01T00:00:00Z";

/// The demo spec and its files, copied into `dir` with `sequence` and README text `readme`.
fn spec(dir: &Path, sequence: u64, readme: &str) -> PathBuf {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    let status = std::process::Command::new("cp")
        .arg("-rT")
        .arg(&demo)
        .arg(dir.join("demo"))
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(demo.join("bundle.toml")).unwrap();
    let spec = dir.join("demo/bundle.toml");
    std::fs::write(&spec, text.replace("sequence = 1", &format!("sequence = {sequence}"))).unwrap();
    std::fs::write(dir.join("demo/README.txt"), readme).unwrap();
    spec
}

fn build(spec: &Path, out: &Path, base: Option<&Path>) -> std::process::Output {
    let key = fixture("test.key");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"build",
        &spec,
        &"--secret-key",
        &key,
        &"--out",
        &out,
        &"--created",
        &CREATED,
        &"--json",
    ];
    if let Some(base) = &base {
        args.extend([&"--base" as &dyn AsRef<std::ffi::OsStr>, base]);
    }
    ferry(&args)
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert_ok(o);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_delta_against_a_bundle_or_holdings_carries_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let full = json(&build(&spec(dir.path(), 1, "first\n"), &out, None));
    assert_eq!(full["base"], serde_json::Value::Null);
    let full_bundle = PathBuf::from(full["bundle"].as_str().unwrap());

    let delta = json(&build(&spec(dir.path(), 2, "second\n"), &out, Some(&full_bundle)));
    assert_eq!(delta["base"]["sequence"], 1);
    assert_eq!(delta["base"]["manifest_sha256"], full["manifest_sha256"]);
    assert_eq!((delta["entries"].as_u64(), delta["carried_entries"].as_u64()), (Some(3), Some(1)));
    assert_eq!(delta["carried_bytes"], "second\n".len());

    // verify checks what the delta carries and says what it leaves to the appliance.
    let o = ferry(&[
        &"verify",
        &delta["bundle"].as_str().unwrap(),
        &"--public-key",
        &fixture("test.pub"),
    ]);
    assert_ok(&o);
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(said.contains("1 entries verified (7 bytes)"), "{said}");
    assert!(said.contains("delta against demo 1: carries 1 of 3 entries"), "{said}");
    let o = ferry(&[&"inspect", &delta["bundle"].as_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("delta      delta against demo 1"));

    // Holdings: what an appliance holds, whichever release it came from.
    let digest = |text: &str| Sha256Digest::of(text.as_bytes());
    let mut holdings = Holdings {
        ferry_holdings: ferry_manifests::HOLDINGS_FORMAT,
        generated: CREATED.into(),
        releases: vec![HeldRelease {
            name: ferry_manifests::BundleName::new("demo").unwrap(),
            sequence: 2,
            manifest_sha256: Sha256Digest::from_hex(delta["manifest_sha256"].as_str().unwrap())
                .unwrap(),
            active: true,
        }],
        blobs: vec![HeldBlob { sha256: digest("second\n"), size: 7 }],
    };
    let held = dir.path().join("holdings.json");
    std::fs::write(&held, holdings.to_bytes()).unwrap();
    let from_holdings = json(&build(&spec(dir.path(), 3, "second\n"), &out, Some(&held)));
    assert_eq!(from_holdings["base"]["sequence"], 2);
    assert_eq!(from_holdings["carried_entries"], 2, "the policy and certificate are not held");

    // Refused bases: not earlier, another name, signed by another key.
    let o = build(&spec(dir.path(), 1, "x\n"), &out, Some(&full_bundle));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("the base must be an earlier bundle of the same name"),
        "{}",
        stderr(&o)
    );
    holdings.releases[0].name = ferry_manifests::BundleName::new("other").unwrap();
    std::fs::write(&held, holdings.to_bytes()).unwrap();
    let o = build(&spec(dir.path(), 4, "x\n"), &out, Some(&held));
    assert!(stderr(&o).contains("no release named demo"), "{}", stderr(&o));
    std::fs::write(&held, b"{\"ferry_holdings\": 9}").unwrap();
    let o = build(&spec(dir.path(), 4, "x\n"), &out, Some(&held));
    assert!(stderr(&o).contains("holdings format 9"), "{}", stderr(&o));
}

#[test]
fn a_base_bundle_signed_by_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    assert_ok(&ferry(&[
        &"keygen",
        &"--without-password",
        &"--secret-key",
        &keys.join("k"),
        &"--public-key",
        &keys.join("k.pub"),
    ]));
    let out = dir.path().join("out");
    let o = ferry(&[
        &"build",
        &spec(dir.path(), 1, "a\n"),
        &"--secret-key",
        &keys.join("k"),
        &"--out",
        &out,
    ]);
    assert_ok(&o);
    let o = build(&spec(dir.path(), 2, "b\n"), &out, Some(&out.join("demo-1.ferry")));
    assert_eq!(o.status.code(), Some(1), "an input refused");
    assert!(stderr(&o).contains("does not verify with this signing key"), "{}", stderr(&o));
}
