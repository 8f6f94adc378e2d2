//! Test helpers: a throwaway signing key, sample inputs, and the byte-level bundle forger (which
//! signs whatever it is given, the way a leaked key or a buggy builder would).

use std::path::{Path, PathBuf};

use ferry_manifests::{
    BundleSpec, Compression, FileEntry, Kind, Manifest, Metadata, PayloadSource, SigningKey,
    TrustedKeys, WrittenBundle,
};
use ferry_testkit::{noise, payload};

pub fn key() -> SigningKey {
    ferry_testkit::key_pair("test key").0
}

pub fn trusted(key: &SigningKey) -> TrustedKeys {
    TrustedKeys::from(key.public_key())
}

/// Expiry as `ferry verify` enforces it, now (the test bundles expire in 2099).
pub fn enforce_expiry() -> ferry_manifests::Expiry {
    ferry_manifests::Expiry::Enforce {
        now: time::OffsetDateTime::now_utc(),
        grace: time::Duration::ZERO,
    }
}

pub fn spec(sequence: u64, compression: Compression) -> BundleSpec {
    ferry_testkit::spec(
        sequence,
        time::macros::datetime!(2026-11-01 00:00 UTC),
        time::macros::datetime!(2099-01-01 00:00 UTC),
        compression,
    )
}

/// Writes a few sample inputs (one compressible, one not, one empty) and describes them.
pub fn sample_inputs(dir: &Path) -> Vec<PayloadSource> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let files: [(&str, &str, Vec<u8>, Kind); 3] = [
        (
            "policy.yml",
            "policies/default.yml",
            b"id: default\nrevision: 1\n".repeat(500),
            Kind::Policy,
        ),
        (
            "agent.tar.gz",
            "downloads/beats/elastic-agent/agent.tar.gz",
            noise("agent.tar.gz", 300_000),
            Kind::AgentArtifact,
        ),
        ("empty", "files/empty", Vec::new(), Kind::Other),
    ];
    files
        .into_iter()
        .map(|(local, path, bytes, kind)| {
            let source = src.join(local);
            std::fs::write(&source, bytes).unwrap();
            payload(path, source, kind, Metadata::default())
        })
        .collect()
}

pub fn build(dir: &Path, key: &SigningKey, spec: &BundleSpec) -> WrittenBundle {
    ferry_testkit::write_bundle(&dir.join("out"), spec, sample_inputs(dir), key)
}

pub fn manifest(files: Vec<FileEntry>) -> Manifest {
    ferry_manifests::forge::manifest(1, files)
}

/// Writes `compressed` as `dir/forged.ferry` with a valid detached signature by `key` whose
/// trusted comment names `manifest`. Returns (bundle, signature) paths.
pub fn sign_file(
    dir: &Path,
    key: &SigningKey,
    manifest: &Manifest,
    compressed: &[u8],
) -> (PathBuf, PathBuf) {
    let bundle = dir.join("forged.ferry");
    let signature = ferry_manifests::forge::sign_file(&bundle, key, manifest, compressed).unwrap();
    (bundle, signature)
}
