//! Delta bundles: the writer lists every entry and carries only what the base lacks; the reader
//! hands the sink exactly the carried entries and checks them as in a full bundle.

use std::collections::HashSet;

use crate::support::{enforce_expiry, key, sample_inputs, spec, trusted};
use ferry_manifests::{
    BaseRef, Compression, DeltaBase, Limits, NoProgress, SignedBundle, StagingDir, WrittenBundle,
};

fn base_of(written: &WrittenBundle) -> DeltaBase {
    DeltaBase {
        bundle: BaseRef {
            name: written.manifest.name.clone(),
            sequence: written.manifest.sequence,
            manifest_sha256: written.manifest_sha256,
        },
        holds: written.manifest.files.iter().map(|f| f.sha256).collect::<HashSet<_>>(),
    }
}

#[test]
fn a_delta_lists_every_entry_and_carries_only_what_its_base_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let inputs = sample_inputs(dir.path());
    let full = ferry_testkit::write_bundle(
        &dir.path().join("full"),
        &spec(1, Compression::default_zstd()),
        inputs.clone(),
        &key,
    );
    // Only the policy changes.
    std::fs::write(dir.path().join("src/policy.yml"), b"id: default\nrevision: 2\n").unwrap();
    let mut delta_spec = spec(2, Compression::default_zstd());
    delta_spec.base = Some(base_of(&full));
    let delta = ferry_testkit::write_bundle(&dir.path().join("delta"), &delta_spec, inputs, &key);

    let manifest = &delta.manifest;
    assert_eq!(manifest.format, ferry_manifests::DELTA_FORMAT);
    assert_eq!(manifest.base, delta_spec.base.as_ref().map(|b| b.bundle.clone()));
    let carried: Vec<&str> = manifest.carried().map(|f| f.path.as_str()).collect();
    assert_eq!(carried, ["policies/default.yml"]);
    assert_eq!(manifest.files.len(), full.manifest.files.len(), "every entry is still listed");
    assert!(
        delta.bundle_size < full.bundle_size / 10,
        "{} vs {}",
        delta.bundle_size,
        full.bundle_size
    );

    let signed = SignedBundle::verify(
        &delta.bundle_path,
        &delta.signature_path,
        &trusted(&key),
        Limits::default(),
        &NoProgress,
    )
    .unwrap();
    let stage = signed.read_manifest(enforce_expiry()).unwrap();
    let staging_root = dir.path().join("staging");
    let mut staging = StagingDir::create(&staging_root).unwrap();
    let verified = stage.extract(&mut staging, &NoProgress).unwrap();
    assert_eq!(&verified.manifest, manifest);
    let mut staged: Vec<String> = walkdir(&staging_root);
    staged.sort();
    assert_eq!(staged, ["policies/default.yml"]);
}

#[test]
fn a_delta_whose_base_holds_nothing_it_needs_carries_everything() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let mut delta_spec = spec(5, Compression::default_zstd());
    let mut base = base_of(&ferry_testkit::write_bundle(
        &dir.path().join("full"),
        &spec(4, Compression::default_zstd()),
        Vec::new(),
        &key,
    ));
    base.holds.clear();
    delta_spec.base = Some(base);
    let delta = ferry_testkit::write_bundle(
        &dir.path().join("delta"),
        &delta_spec,
        sample_inputs(dir.path()),
        &key,
    );
    assert!(delta.manifest.files.iter().all(|f| !f.in_base));
    assert_eq!(delta.manifest.carried_size(), delta.manifest.total_size());
}

/// Relative paths of the files below `root`.
fn walkdir(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}
