//! Delta bundles through `ferry-appliance holdings` and `import`: a delta built against the
//! appliance's own holdings activates exactly the release the full bundle would, and a delta
//! whose base content is not all here (never imported, garbage-collected, damaged) is refused by
//! its own check, with nothing activated and staging left empty.

use std::path::Path;

use crate::support::{Fixture, Server, archive_bytes, archive_path, assert_ok, snapshot, stderr};
use ferry_manifests::{BundleName, DeltaBase, Holdings, Limits, Manifest, read_unverified};

fn site() -> BundleName {
    BundleName::new("site").unwrap()
}

fn holdings(f: &Fixture) -> Holdings {
    let out = f.run(&[&"holdings", &"--json"]);
    assert_ok(&out);
    Holdings::parse(&out.stdout).unwrap()
}

fn manifest(bundle: &Path) -> Manifest {
    read_unverified(bundle, &Limits::default()).unwrap().manifest
}

/// Imports `bundle` expecting a refusal by `check`; nothing may change.
#[track_caller]
fn refused(f: &Fixture, bundle: &Path, check: &str, says: &str) {
    let before = snapshot(&f.path("data"));
    let active = f.releases();
    let out = f.run(&[&"import", &bundle, &"--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["check"], check, "{verdict}");
    assert!(stderr(&out).contains(says), "{}", stderr(&out));
    assert_eq!(f.releases(), active);
    assert_eq!(snapshot(&f.path("data")), before);
    assert_eq!(std::fs::read_dir(f.path("data/staging")).unwrap().count(), 0);
}

#[test]
fn a_delta_against_the_holdings_activates_the_release_the_full_bundle_would() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, "9.1.2", Fixture::later())]));
    let held = holdings(&f);
    assert_eq!(held.releases.len(), 1);
    assert!(held.releases[0].active);
    assert_eq!(held.blobs.len(), 6, "archive, two sidecars, PGP key, two policies");

    // Only policy p changes between 1 and 2: the delta carries it alone.
    let delta = f.delta(2, "9.1.2", held.delta_base(&site()).unwrap());
    let full = f.bundle(2, "9.1.2", Fixture::later());
    let (delta_manifest, full_manifest) = (manifest(&delta), manifest(&full));
    let carried: Vec<&str> = delta_manifest.carried().map(|f| f.path.as_str()).collect();
    assert_eq!(carried, ["policies/p.yml"]);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&delta) * 20 < size(&full), "{} against {}", size(&delta), size(&full));
    // The same release: every entry as the full bundle lists it, but for where it comes from.
    let unmarked = |m: &Manifest| {
        let mut files = m.files.clone();
        files.iter_mut().for_each(|f| f.in_base = false);
        files
    };
    assert_eq!(unmarked(&delta_manifest), unmarked(&full_manifest));

    let out = f.run_json(&[&"import", &delta, &"--json"]);
    assert_eq!(out["sequence"], 2);
    assert_eq!(f.releases(), (Some(2), vec![1, 2]));
    assert_ok(&f.run(&[&"fsck"]));
    // The mirror serves what the delta left out, from the blob store.
    let server = Server::start(&f);
    let url = format!("/downloads/{}", archive_path("9.1.2"));
    server.wait_for(&url, &archive_bytes("9.1.2"));
    // Rollback to 1 and forward again work as for full bundles.
    assert_ok(&f.run(&[&"rollback"]));
    assert_eq!(f.releases().0, Some(1));
    assert_ok(&f.run(&[&"rollback", &"2"]));
    assert_eq!(f.releases().0, Some(2));
}

#[test]
fn a_delta_against_a_base_never_imported_is_refused() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, "9.1.2", Fixture::later())]));
    // A base of another version, imported elsewhere: its archive is not here.
    let other = f.bundle(2, "9.2.0", Fixture::later());
    let m = manifest(&other);
    let base = DeltaBase {
        bundle: ferry_manifests::BaseRef {
            name: site(),
            sequence: 2,
            manifest_sha256: read_unverified(&other, &Limits::default()).unwrap().manifest_sha256,
        },
        holds: m.files.iter().map(|f| f.sha256).collect(),
    };
    let delta = f.delta(3, "9.2.0", base);
    refused(&f, &delta, "delta-base-unknown", "is a delta against site 2 (manifest sha256 ");
    let out = f.run(&[&"import", &delta]);
    let said = stderr(&out);
    assert!(said.contains("never imported (the newest site it imported is 1)"), "{said}");
    assert!(said.contains("3 blob(s) missing, "), "archive and its two sidecars: {said}");
}

#[test]
fn a_delta_whose_base_was_garbage_collected_is_refused() {
    let f = Fixture::new();
    let config = std::fs::read_to_string(f.path("appliance.toml")).unwrap();
    let config = config.replace("retain_releases = 3", "retain_releases = 1");
    std::fs::write(f.path("appliance.toml"), config).unwrap();
    assert_ok(&f.run(&[&"import", &f.bundle(1, "9.1.2", Fixture::later())]));
    let held = holdings(&f);
    // Release 2 carries another version; with one release retained, 1 and its archive go.
    assert_ok(&f.run(&[&"import", &f.bundle(2, "9.2.0", Fixture::later())]));
    assert_eq!(f.releases(), (Some(2), vec![2]));
    let delta = f.delta(3, "9.1.2", held.delta_base(&site()).unwrap());
    refused(&f, &delta, "delta-base-missing", "whose content is no longer all here");
}

#[test]
fn a_delta_whose_base_blob_was_altered_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, "9.1.2", Fixture::later())]));
    let held = holdings(&f);
    let archive = manifest(&f.path("bundles/site-1.ferry"))
        .files
        .into_iter()
        .find(|e| e.path.as_str().ends_with(".tar.gz"))
        .unwrap();
    let hex = archive.sha256.to_hex();
    let blob = f.path(&format!("data/blobs/sha256/{}/{}", &hex[..2], &hex[2..]));
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let delta = f.delta(2, "9.1.2", held.delta_base(&site()).unwrap());
    refused(&f, &delta, "delta-base-damaged", "run `ferry-appliance fsck`");
}
