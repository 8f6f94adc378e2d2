//! The whole journey with the real binaries: a new key, the demo bundle built from files shipped
//! in the repository, checked by `ferry verify`, by the stock `minisign` and by GNU `tar`, then
//! carried (copied) elsewhere, checked again with only the public key, and imported by the
//! appliance; a damaged copy is refused on both sides. Then the round trip with a delta.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{binary, repo_root, run_ok};

/// An appliance whose data and configuration are in `dir`, trusting only `dir/trusted.pub`:
/// what each call of the returned closure runs, with `--config` given.
fn appliance_in(dir: &Path) -> impl Fn() -> Command {
    let config: PathBuf = dir.join("appliance.toml");
    std::fs::write(
        &config,
        "data_dir = \"data\"\ntrusted_keys = [\"trusted.pub\"]\npublic_url = \"https://localhost:8220\"\n",
    )
    .unwrap();
    move || {
        let mut cmd = binary("ferry-appliance");
        cmd.arg("--config").arg(&config);
        cmd
    }
}

#[test]
fn key_build_verify_carry_verify() {
    let work = tempfile::tempdir().unwrap();
    let connected = work.path().join("connected");
    let isolated = work.path().join("isolated");
    std::fs::create_dir_all(&connected).unwrap();
    std::fs::create_dir_all(&isolated).unwrap();
    let (key, public) = (connected.join("ferry.key"), connected.join("ferry.pub"));

    let password = connected.join("password");
    std::fs::write(&password, "a long passphrase\n").unwrap();
    run_ok(
        binary("ferry")
            .arg("keygen")
            .arg("--secret-key")
            .arg(&key)
            .arg("--public-key")
            .arg(&public)
            .arg("--password-file")
            .arg(&password),
    );
    let out = run_ok(
        binary("ferry")
            .arg("build")
            .arg(repo_root().join("examples/demo/bundle.toml"))
            .arg("--secret-key")
            .arg(&key)
            .arg("--password-file")
            .arg(&password)
            .arg("--out")
            .arg(connected.join("dist"))
            .arg("--json"),
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(built["name"], "demo");
    assert_eq!(built["entries"], 3);

    // The carrier: only the two bundle files and the public key cross the gap.
    for name in ["demo-1.ferry", "demo-1.ferry.minisig"] {
        std::fs::copy(connected.join("dist").join(name), isolated.join(name)).unwrap();
    }
    std::fs::copy(&public, isolated.join("trusted.pub")).unwrap();
    let bundle = isolated.join("demo-1.ferry");

    let out = run_ok(
        binary("ferry").arg("verify").arg(&bundle).arg("-p").arg(isolated.join("trusted.pub")),
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK "));
    let out = run_ok(
        ferry_manifests::test_tools::tool("minisign")
            .arg("-Vm")
            .arg(&bundle)
            .arg("-p")
            .arg(isolated.join("trusted.pub")),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("manifest-sha256={}", built["manifest_sha256"].as_str().unwrap())),
        "{said}"
    );
    let out =
        run_ok(ferry_manifests::test_tools::tool("tar").arg("--zstd").arg("-tf").arg(&bundle));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);

    // The appliance imports it, trusting only the public key that crossed the gap.
    let appliance = appliance_in(&isolated);
    run_ok(appliance().arg("import").arg(&bundle));
    let out = run_ok(appliance().arg("releases").arg("--json"));
    let releases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(releases[0]["name"], "demo");
    assert_eq!(releases[0]["active"], true);
    assert_eq!(releases[0]["manifest_sha256"], built["manifest_sha256"]);
    run_ok(appliance().arg("fsck"));

    // The carrier damages it: refused with exit 1, the previous copy untouched.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let damaged = isolated.join("damaged.ferry");
    std::fs::write(&damaged, &bytes).unwrap();
    std::fs::copy(isolated.join("demo-1.ferry.minisig"), isolated.join("damaged.ferry.minisig"))
        .unwrap();
    let out = binary("ferry")
        .arg("verify")
        .arg(&damaged)
        .arg("-p")
        .arg(isolated.join("trusted.pub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    run_ok(binary("ferry").arg("verify").arg(&bundle).arg("-p").arg(isolated.join("trusted.pub")));
    let out = appliance().arg("import").arg(&damaged).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = run_ok(appliance().arg("releases").arg("--json"));
    let releases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        releases.as_array().unwrap().len(),
        1,
        "the refused import left the release store alone"
    );
}

/// The monthly round trip with a delta: the appliance's holdings carried out, a delta built
/// against them with one file changed, carried in (the stock `minisign` checks it as any
/// bundle) and imported; the appliance then serves the release a full bundle would give.
#[test]
fn holdings_out_delta_in() {
    let work = tempfile::tempdir().unwrap();
    let (connected, isolated) = (work.path().join("connected"), work.path().join("isolated"));
    std::fs::create_dir_all(&isolated).unwrap();
    std::fs::create_dir_all(&connected).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-rT")
        .arg(repo_root().join("examples/demo"))
        .arg(connected.join("spec"))
        .status()
        .unwrap();
    assert!(status.success());
    let (key, public) = (connected.join("ferry.key"), isolated.join("trusted.pub"));
    run_ok(
        binary("ferry")
            .args(["keygen", "--without-password", "--secret-key"])
            .arg(&key)
            .arg("--public-key")
            .arg(&public),
    );
    let spec = connected.join("spec/bundle.toml");
    let build = |extra: &[&std::ffi::OsStr]| {
        let out = run_ok(
            binary("ferry")
                .arg("build")
                .arg(&spec)
                .arg("--secret-key")
                .arg(&key)
                .arg("--out")
                .arg(connected.join("dist"))
                .arg("--json")
                .args(extra),
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let full = build(&[]);

    let appliance = appliance_in(&isolated);
    run_ok(appliance().arg("import").arg(full["bundle"].as_str().unwrap()));
    let holdings = run_ok(appliance().args(["holdings", "--json"])).stdout;
    std::fs::write(connected.join("holdings.json"), holdings).unwrap();

    // Next month: sequence 2, the README changed.
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace("sequence = 1", "sequence = 2")).unwrap();
    std::fs::write(connected.join("spec/README.txt"), "read me again\n").unwrap();
    let delta = build(&["--base".as_ref(), connected.join("holdings.json").as_os_str()]);
    assert_eq!((delta["carried_entries"].as_u64(), delta["entries"].as_u64()), (Some(1), Some(3)));

    for name in ["demo-2.ferry", "demo-2.ferry.minisig"] {
        std::fs::copy(connected.join("dist").join(name), isolated.join(name)).unwrap();
    }
    let bundle = isolated.join("demo-2.ferry");
    run_ok(
        ferry_manifests::test_tools::tool("minisign")
            .arg("-Vm")
            .arg(&bundle)
            .arg("-p")
            .arg(&public),
    );
    run_ok(appliance().arg("import").arg(&bundle));
    let out = run_ok(appliance().arg("releases").arg("--json"));
    let releases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let active = releases.as_array().unwrap().iter().find(|r| r["active"] == true).unwrap();
    assert_eq!(active["sequence"], 2);
    assert_eq!(active["entries"], 3);
    assert_eq!(active["manifest_sha256"], delta["manifest_sha256"]);
    run_ok(appliance().arg("fsck"));
}
