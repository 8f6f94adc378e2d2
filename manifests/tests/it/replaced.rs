//! A bundle replaced on disk after its detached signature verified (step 1) and before it is
//! read (step 2): the reader goes on with the file it verified, or refuses; it never hands on
//! the replacement's files.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::support::{enforce_expiry, key, trusted};
use ferry_manifests::forge::{self, Piece, declared, head, tar_bytes, zstd};
use ferry_manifests::{
    Limits, Manifest, NoProgress, SignedBundle, SigningKey, StagingDir, VerifiedBundle, VerifyError,
};

/// The verified bundle's one body: 4 KiB that zstd cannot shrink, so that a replacement with a
/// body that compresses (as many zeros, or a few bytes) is never longer than the verified file.
fn verified_body() -> Vec<u8> {
    ferry_testkit::noise("the verified body", 4096)
}

/// Other content of the verified body's length.
fn replaced_body() -> Vec<u8> {
    vec![0; 4096]
}

/// A validly signed bundle of `sequence` with one entry, `a`, holding `body`: its manifest and
/// its compressed bytes.
fn bundle(key: &SigningKey, sequence: u64, body: &[u8]) -> (Manifest, Vec<u8>) {
    let manifest = forge::manifest(sequence, vec![declared("a", body)]);
    let mut pieces = head(key, &manifest);
    pieces.push(Piece::file("a", body));
    (manifest, zstd(&tar_bytes(&pieces, true)))
}

/// Writes `compressed` with its detached signature to `dir/NAME` and `dir/NAME.minisig`.
fn write(dir: &Path, name: &str, key: &SigningKey, m: &Manifest, compressed: &[u8]) -> PathBuf {
    let path = dir.join(name);
    forge::sign_file(&path, key, m, compressed).unwrap();
    path
}

/// Step 1 on `path` with its own signature.
fn verify(path: &Path, key: &SigningKey) -> SignedBundle {
    let signature = ferry_manifests::default_signature_path(path);
    SignedBundle::verify(path, &signature, &trusted(key), Limits::default(), &NoProgress).unwrap()
}

/// Step 2 into a staging folder in `dir`: the verified bundle and what was staged as `a`.
fn read(signed: SignedBundle, dir: &Path) -> Result<(VerifiedBundle, Vec<u8>), VerifyError> {
    let mut staging = StagingDir::create(&dir.join("staging")).unwrap();
    let verified = signed.read_manifest(enforce_expiry())?.extract(&mut staging, &NoProgress)?;
    let staged = fs::read(staging.root().join("a")).unwrap();
    Ok((verified, staged))
}

fn inode(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

#[test]
fn a_bundle_renamed_over_the_verified_one_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let (manifest, compressed) = bundle(&key, 1, &verified_body());
    let path = write(dir.path(), "site.ferry", &key, &manifest, &compressed);
    let (other_manifest, other) = bundle(&key, 2, &replaced_body());
    let replacement = write(dir.path(), "other.ferry", &key, &other_manifest, &other);
    let signed = verify(&path, &key);
    // Both valid and signed by the trusted key: only holding the verified file tells them apart.
    fs::rename(&replacement, &path).unwrap();
    let signature = ferry_manifests::default_signature_path(&path);
    fs::rename(ferry_manifests::default_signature_path(&replacement), &signature).unwrap();
    let (verified, staged) = read(signed, dir.path()).unwrap();
    assert_eq!(verified.manifest, manifest);
    assert_eq!(verified.manifest_bytes, manifest.to_bytes());
    assert_eq!(staged, verified_body());
}

#[test]
fn another_bundle_written_in_place_is_refused_by_the_verified_comment() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let (manifest, compressed) = bundle(&key, 1, &verified_body());
    let path = write(dir.path(), "site.ferry", &key, &manifest, &compressed);
    let (_, other) = bundle(&key, 2, b"short\n");
    // Reading stops at the verified length, so a longer replacement would be refused as cut
    // short (`truncated`) before its manifest is looked at.
    assert!(other.len() < compressed.len());
    let signed = verify(&path, &key);
    let before = inode(&path);
    // Truncates and rewrites the same file: the handle now reads the other bundle's bytes,
    // whose manifest is validly signed too, but is not the one step 1's comment names.
    fs::write(&path, &other).unwrap();
    assert_eq!(inode(&path), before, "the same file, written in place");
    let err = read(signed, dir.path()).expect_err("a bundle written in place was read");
    assert!(matches!(err, VerifyError::TrustedComment { signature: "detached", .. }), "{err}");
    assert_eq!(err.check(), "trusted-comment");
    assert!(!dir.path().join("staging/a").exists(), "nothing was staged");
}

#[test]
fn an_entry_changed_in_place_is_refused_by_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let (manifest, compressed) = bundle(&key, 1, &verified_body());
    let path = write(dir.path(), "site.ferry", &key, &manifest, &compressed);
    // The verified manifest and its signature, byte for byte, then other content of the same
    // length: everything a reader checks before the entry's digest passes.
    let mut pieces = head(&key, &manifest);
    pieces.push(Piece::file("a", &replaced_body()));
    let altered = zstd(&tar_bytes(&pieces, true));
    assert!(altered.len() < compressed.len(), "within the verified length");
    let signed = verify(&path, &key);
    let before = inode(&path);
    fs::write(&path, &altered).unwrap();
    assert_eq!(inode(&path), before);
    let err = read(signed, dir.path()).expect_err("an entry changed in place was accepted");
    assert!(matches!(&err, VerifyError::DigestMismatch { path, .. } if path.as_str() == "a"));
    assert_eq!(err.check(), "sha256");
}

#[test]
fn bytes_appended_in_place_are_not_read_and_a_cut_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let (manifest, compressed) = bundle(&key, 1, &verified_body());
    let path = write(dir.path(), "site.ferry", &key, &manifest, &compressed);
    let signed = verify(&path, &key);
    // Reading stops at the length the signature covered, so a second zstd frame after it
    // (which the reader refuses inside a bundle) is never seen.
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&zstd(&replaced_body()))
        .unwrap();
    let (verified, staged) = read(signed, dir.path()).unwrap();
    assert_eq!(verified.manifest, manifest);
    assert_eq!(staged, verified_body());

    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "site.ferry", &key, &manifest, &compressed);
    let signed = verify(&path, &key);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(compressed.len() as u64 / 2)
        .unwrap();
    let err = read(signed, dir.path()).expect_err("a bundle cut in place was accepted");
    assert!(matches!(err, VerifyError::Truncated { .. } | VerifyError::Decompress { .. }), "{err}");
}
