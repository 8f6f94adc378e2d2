//! Writing and reading real bundles: round trips, reproducibility, and the reader's refusals
//! of honest bundles that were damaged afterwards.

use std::path::Path;

use crate::support;
use crate::support::{build, enforce_expiry, key, spec, trusted};
use ferry_manifests::{
    Compression, Discard, Expiry, Limits, NoProgress, SignedBundle, StagingDir, VerifyError,
};

fn verify(
    bundle: &Path,
    sig: &Path,
    keys: &ferry_manifests::TrustedKeys,
) -> Result<(), VerifyError> {
    let signed = SignedBundle::verify(bundle, sig, keys, Limits::default(), &NoProgress)?;
    signed.read_manifest(enforce_expiry())?.extract(&mut Discard, &NoProgress).map(drop)
}

#[test]
fn round_trip_into_staging() {
    for compression in [Compression::default_zstd(), Compression::Gzip { level: 6 }] {
        let dir = tempfile::tempdir().unwrap();
        let key = key();
        let written = build(dir.path(), &key, &spec(1, compression));
        assert_eq!(written.bundle_path.file_name().unwrap(), "site-1.ferry");
        let signed = SignedBundle::verify(
            &written.bundle_path,
            &written.signature_path,
            &trusted(&key),
            Limits::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(signed.key_id(), key.key_id());
        assert_eq!(signed.comment().manifest_sha256, written.manifest_sha256);
        let stage = signed.read_manifest(enforce_expiry()).unwrap();
        assert_eq!(stage.manifest(), &written.manifest);
        let mut staging = StagingDir::create(&dir.path().join("staging")).unwrap();
        let verified = stage.extract(&mut staging, &NoProgress).unwrap();
        assert_eq!(verified.manifest_bytes, written.manifest.to_bytes());
        let paths: Vec<&str> = verified.manifest.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["downloads/beats/elastic-agent/agent.tar.gz", "files/empty", "policies/default.yml"]
        );
        for file in &verified.manifest.files {
            let staged = std::fs::read(staging.path_of(&file.path)).unwrap();
            let source = std::fs::read(dir.path().join("src").join(match file.path.file_name() {
                "default.yml" => "policy.yml",
                other => other,
            }))
            .unwrap();
            assert_eq!(staged, source, "{}", file.path);
        }
    }
}

#[test]
fn reproducible_for_any_worker_count() {
    let key = key();
    let mut outputs = Vec::new();
    for workers in [1, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let w = build(dir.path(), &key, &spec(1, Compression::Zstd { level: 3, workers }));
        outputs.push((
            std::fs::read(&w.bundle_path).unwrap(),
            std::fs::read(&w.signature_path).unwrap(),
        ));
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]), "zstd output depends on the worker count");
    let dir = tempfile::tempdir().unwrap();
    let a = build(dir.path(), &key, &spec(1, Compression::Gzip { level: 6 }));
    let first = std::fs::read(&a.bundle_path).unwrap();
    let b = build(dir.path(), &key, &spec(1, Compression::Gzip { level: 6 }));
    assert_eq!(first, std::fs::read(&b.bundle_path).unwrap());
}

#[test]
fn damage_after_signing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let w = build(dir.path(), &key, &spec(1, Compression::default_zstd()));
    let keys = trusted(&key);
    let original = std::fs::read(&w.bundle_path).unwrap();

    for at in [0, 5, original.len() / 2, original.len() - 1] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&w.bundle_path, &bytes).unwrap();
        let err = verify(&w.bundle_path, &w.signature_path, &keys).unwrap_err();
        assert!(matches!(err, VerifyError::BadBundleSignature { .. }), "byte {at}: {err}");
    }
    std::fs::write(&w.bundle_path, &original[..original.len() - 100]).unwrap();
    let err = verify(&w.bundle_path, &w.signature_path, &keys).unwrap_err();
    assert!(matches!(err, VerifyError::BadBundleSignature { .. }), "{err}");

    std::fs::write(&w.bundle_path, &original).unwrap();
    verify(&w.bundle_path, &w.signature_path, &keys).unwrap();
    let other = support::key();
    let err = verify(&w.bundle_path, &w.signature_path, &trusted(&other)).unwrap_err();
    assert!(matches!(err, VerifyError::UntrustedKey { .. }), "{err}");
    assert!(err.to_string().contains(&key.key_id().to_string()), "{err}");
}

/// Reading a manifest applies expiry: there is no way to read one without saying how.
#[test]
fn reading_refuses_an_expired_bundle_unless_told_to_allow_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let w = build(dir.path(), &key, &spec(1, Compression::default_zstd()));
    let read = |expiry| {
        SignedBundle::verify(
            &w.bundle_path,
            &w.signature_path,
            &trusted(&key),
            Limits::default(),
            &NoProgress,
        )
        .unwrap()
        .read_manifest(expiry)
    };
    let expires = w.manifest.expires;
    let day = time::Duration::days(1);
    let later = expires + 2 * day;

    let err = read(Expiry::Enforce { now: later, grace: day }).err().expect("expired, accepted");
    assert_eq!(err.check(), "expired");
    assert!(matches!(&err, VerifyError::Expired(e) if e.expires == expires && e.now == later));
    assert!(err.to_string().starts_with("bundle expired at 2099-01-01T00:00:00Z (now "), "{err}");
    // Within the grace, and before `expires`, it reads, and nothing is reported.
    let stage = read(Expiry::Enforce { now: later, grace: 3 * day }).unwrap();
    assert_eq!(stage.expired(), None);
    assert_eq!(
        read(Expiry::Enforce { now: expires, grace: time::Duration::ZERO }).unwrap().expired(),
        None
    );
    // The override reads it, says what it let through, and the payload still verifies.
    let stage = read(Expiry::AllowExpired { now: later, grace: day }).unwrap();
    assert_eq!(stage.expired().map(|e| (e.expires, e.now)), Some((expires, later)));
    stage.extract(&mut Discard, &NoProgress).unwrap();
}

#[test]
fn gzip_bundles_list_with_gnu_tar() {
    let dir = tempfile::tempdir().unwrap();
    let w = build(dir.path(), &key(), &spec(1, Compression::Gzip { level: 6 }));
    let out =
        ferry_manifests::test_tools::tool("tar").arg("-tzf").arg(&w.bundle_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        [
            "manifest.json",
            "manifest.json.minisig",
            "downloads/beats/elastic-agent/agent.tar.gz",
            "files/empty",
            "policies/default.yml"
        ]
    );
}
