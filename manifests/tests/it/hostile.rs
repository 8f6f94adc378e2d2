//! Hostile bundles, forged byte by byte and signed with a trusted key (a leaked key or a buggy
//! builder must still not hurt the reader): each is refused with its own error, and nothing is
//! written outside the reader's staging directory.

use std::path::{Path, PathBuf};

use crate::support::{enforce_expiry, key, manifest, sign_file, trusted};
use ferry_manifests::forge::{Piece, declared, head, tar_bytes, zstd};
use ferry_manifests::tar::{self, RawHeader};
use ferry_manifests::{Limits, Manifest, NoProgress, SignedBundle, StagingDir, VerifyError};

/// Everything a forged case needs.
struct Case {
    manifest: Manifest,
    pieces: Vec<Piece>,
    end: bool,
    /// Decompressed bytes after the end marker.
    after_end: Vec<u8>,
    /// Compressed bytes after the zstd stream.
    after_stream: Vec<u8>,
    limits: Limits,
}

impl Case {
    /// A manifest declaring `files`, followed by `pieces` and a proper end.
    fn new(files: Vec<ferry_manifests::FileEntry>, pieces: Vec<Piece>) -> Self {
        Self {
            manifest: manifest(files),
            pieces,
            end: true,
            after_end: Vec::new(),
            after_stream: Vec::new(),
            limits: Limits::default(),
        }
    }

    /// Forges, signs and reads the bundle into a staging directory inside a fresh folder.
    /// Returns the error and the folder, for the caller to check nothing escaped.
    fn run(self) -> (VerifyError, tempfile::TempDir) {
        self.run_with(head)
    }

    fn run_with(
        self,
        head: impl FnOnce(&ferry_manifests::SigningKey, &Manifest) -> Vec<Piece>,
    ) -> (VerifyError, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = key();
        let mut pieces = head(&key, &self.manifest);
        pieces.extend(self.pieces);
        let mut stream = tar_bytes(&pieces, self.end);
        stream.extend_from_slice(&self.after_end);
        let mut compressed = zstd(&stream);
        compressed.extend_from_slice(&self.after_stream);
        let (bundle, signature) = sign_file(dir.path(), &key, &self.manifest, &compressed);
        let staging_root = dir.path().join("staging");
        let result =
            SignedBundle::verify(&bundle, &signature, &trusted(&key), self.limits, &NoProgress)
                .and_then(|signed| signed.read_manifest(enforce_expiry()))
                .and_then(|stage| {
                    let mut staging = StagingDir::create(&staging_root).unwrap();
                    stage.extract(&mut staging, &NoProgress)
                });
        let error = result.expect_err("a hostile bundle was accepted");
        assert_nothing_outside(dir.path(), &staging_root);
        (error, dir)
    }
}

/// Every path below `dir` is the forged bundle, its signature, or inside `staging`.
fn assert_nothing_outside(dir: &Path, staging: &Path) {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(path).unwrap() {
            let entry = entry.unwrap();
            out.push(entry.path());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), out);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, &mut found);
    for path in found {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            path.starts_with(staging) || name.starts_with("forged.ferry"),
            "{} was written outside staging",
            path.display()
        );
    }
}

const BODY: &[u8] = b"payload\n";

#[test]
fn traversal_is_refused() {
    let (err, dir) = Case::new(vec![declared("x", BODY)], vec![Piece::file("../x", BODY)]).run();
    assert!(matches!(&err, VerifyError::UnsafeName { name, .. } if name == "../x"), "{err}");
    assert!(!dir.path().join("x").exists());
}

#[test]
fn absolute_path_is_refused() {
    let target = format!("/tmp/ferry-hostile-{}", std::process::id());
    let (err, _dir) = Case::new(vec![declared("x", BODY)], vec![Piece::file(&target, BODY)]).run();
    assert!(matches!(&err, VerifyError::UnsafeName { name, .. } if *name == target), "{err}");
    assert!(!Path::new(&target).exists());
}

#[test]
fn symlink_is_refused() {
    let piece = Piece::typed("x", tar::TYPE_SYMLINK, "/etc/passwd");
    let (err, _) = Case::new(vec![declared("x", BODY)], vec![piece]).run();
    assert!(matches!(&err, VerifyError::Link { kind, .. } if kind == "symbolic link"), "{err}");
}

#[test]
fn hardlink_is_refused() {
    let piece = Piece::typed("x", tar::TYPE_HARDLINK, "manifest.json");
    let (err, _) = Case::new(vec![declared("x", BODY)], vec![piece]).run();
    assert!(matches!(&err, VerifyError::Link { kind, .. } if kind == "hard link"), "{err}");
}

#[test]
fn devices_and_fifos_are_refused() {
    for flag in [tar::TYPE_CHAR_DEVICE, tar::TYPE_BLOCK_DEVICE, tar::TYPE_FIFO] {
        let (err, _) =
            Case::new(vec![declared("x", BODY)], vec![Piece::typed("x", flag, "")]).run();
        assert!(matches!(err, VerifyError::SpecialFile { .. }), "{err}");
    }
}

#[test]
fn directories_and_extension_headers_are_refused() {
    for flag in [tar::TYPE_DIRECTORY, b'x', b'L'] {
        let (err, _) =
            Case::new(vec![declared("x", BODY)], vec![Piece::typed("x", flag, "")]).run();
        assert!(matches!(err, VerifyError::NotRegularFile { .. }), "{err}");
    }
}

#[test]
fn duplicate_entry_is_refused() {
    let (err, _) = Case::new(
        vec![declared("a", BODY), declared("b", BODY)],
        vec![Piece::file("a", BODY), Piece::file("a", BODY)],
    )
    .run();
    assert!(matches!(&err, VerifyError::DuplicateEntry { path } if path.as_str() == "a"), "{err}");
    // A repeat after the last declared entry is caught by the end-of-archive check.
    let (err, _) =
        Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY), Piece::file("a", BODY)])
            .run();
    assert!(matches!(err, VerifyError::DuplicateEntry { .. }), "{err}");
}

#[test]
fn entry_absent_from_manifest_is_refused() {
    let (err, _) =
        Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY), Piece::file("z", BODY)])
            .run();
    assert!(matches!(&err, VerifyError::UndeclaredEntry { path } if path.as_str() == "z"), "{err}");
    let (err, _) = Case::new(vec![declared("a", BODY)], vec![Piece::file("b", BODY)]).run();
    assert!(matches!(err, VerifyError::UndeclaredEntry { .. }), "{err}");
}

#[test]
fn a_delta_carrying_an_entry_its_base_holds_is_refused() {
    // Both where the archive expects another carried entry and after the last one.
    for (declared_files, pieces) in [
        (vec!["a", "b"], vec![Piece::file("a", BODY), Piece::file("b", BODY)]),
        (vec!["b", "c"], vec![Piece::file("b", BODY), Piece::file("c", BODY)]),
    ] {
        let files = declared_files.iter().map(|p| declared(p, BODY)).collect();
        let mut case = Case::new(files, pieces);
        case.manifest.format = ferry_manifests::DELTA_FORMAT;
        case.manifest.sequence = 2;
        case.manifest.base = Some(ferry_manifests::BaseRef {
            name: case.manifest.name.clone(),
            sequence: 1,
            manifest_sha256: ferry_manifests::Sha256Digest::of(b"base"),
        });
        case.manifest.files[0].in_base = true;
        let (err, _) = case.run();
        assert!(
            matches!(&err, VerifyError::InBase { path } if path.as_str() == declared_files[0]),
            "{err}"
        );
        assert_eq!(err.check(), "in-base-entry");
    }
}

#[test]
fn entry_missing_from_archive_is_refused() {
    let (err, _) =
        Case::new(vec![declared("a", BODY), declared("b", BODY)], vec![Piece::file("a", BODY)])
            .run();
    assert!(matches!(&err, VerifyError::MissingEntry { path } if path.as_str() == "b"), "{err}");
}

#[test]
fn entry_longer_or_shorter_than_declared_is_refused() {
    for body in [b"payload\n+".as_slice(), b"payload".as_slice()] {
        let (err, _) = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", body)]).run();
        assert!(
            matches!(err, VerifyError::SizeMismatch { declared: 8, actual, .. } if actual == body.len() as u64),
            "{err}"
        );
    }
}

#[test]
fn entry_with_other_content_is_refused() {
    let (err, _) = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", b"PAYLOAD\n")]).run();
    assert!(matches!(err, VerifyError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&ferry_manifests::Sha256Digest::of(BODY).to_hex()), "{err}");
}

#[test]
fn entry_with_other_mode_is_refused() {
    let piece = Piece::Entry(RawHeader::file("a", 0o4755, BODY.len() as u64, 0), BODY.to_vec());
    let (err, _) = Case::new(vec![declared("a", BODY)], vec![piece]).run();
    assert!(matches!(err, VerifyError::ModeMismatch { actual: 0o4755, .. }), "{err}");
}

#[test]
fn entries_out_of_order_are_refused() {
    let (err, _) = Case::new(
        vec![declared("a", BODY), declared("b", BODY)],
        vec![Piece::file("b", BODY), Piece::file("a", BODY)],
    )
    .run();
    assert!(
        matches!(&err, VerifyError::OutOfOrder { path, expected } if path.as_str() == "b" && expected.as_str() == "a"),
        "{err}"
    );
}

#[test]
fn data_after_the_end_is_refused() {
    let mut case = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY)]);
    case.after_end = vec![0; 512];
    let (err, _) = case.run();
    assert!(matches!(err, VerifyError::TrailingData { .. }), "{err}");
    // A second compressed frame after the archive is data after the end too.
    let mut case = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY)]);
    case.after_stream = zstd(b"smuggled");
    let (err, _) = case.run();
    assert!(matches!(err, VerifyError::TrailingData { .. }), "{err}");
    // So is anything else after the one compressed frame: garbage, an empty frame, a skippable
    // frame (which a zstd decoder would otherwise pass over silently).
    let empty_frame = zstd(b"");
    let skippable = [&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0][..], b"hide"].concat();
    for after in [b"garbage!".to_vec(), empty_frame, skippable] {
        let mut case = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY)]);
        case.after_stream = after;
        let (err, _) = case.run();
        assert!(matches!(err, VerifyError::TrailingData { .. }), "{err}");
    }
}

#[test]
fn missing_end_marker_is_refused() {
    let mut case = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY)]);
    case.end = false;
    let (err, _) = case.run();
    assert!(matches!(err, VerifyError::Truncated { .. }), "{err}");
}

#[test]
fn manifest_over_the_size_cap_is_refused() {
    let mut case = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY)]);
    case.limits.max_manifest_size = 64;
    let (err, _) = case.run();
    assert!(matches!(err, VerifyError::ManifestTooLarge { max: 64, .. }), "{err}");
    // With the default cap: a manifest entry whose header claims more than 8 MiB.
    let case = Case::new(vec![], vec![]);
    let (err, _) = case.run_with(|_, _| {
        let huge = vec![b' '; (8 << 20) + 1];
        vec![Piece::file("manifest.json", &huge)]
    });
    assert!(matches!(err, VerifyError::ManifestTooLarge { .. }), "{err}");
}

#[test]
fn manifest_must_come_first() {
    let case = Case::new(vec![declared("a", BODY)], vec![]);
    let (err, _) = case.run_with(|key, manifest| {
        let mut pieces = vec![Piece::file("a", BODY)];
        pieces.extend(head(key, manifest));
        pieces
    });
    assert!(matches!(err, VerifyError::MissingManifest { index: 0, .. }), "{err}");
}

#[test]
fn manifest_signed_by_another_key_is_refused() {
    let case = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY)]);
    let (err, _) = case.run_with(|_, manifest| head(&key(), manifest));
    assert!(matches!(err, VerifyError::SignerMismatch { .. }), "{err}");
}

#[test]
fn manifest_signature_over_other_bytes_is_refused() {
    let case = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY)]);
    let (err, _) = case.run_with(|key, manifest| {
        let mut pieces = head(key, manifest);
        // Same manifest, re-serialised compactly: equal meaning, other bytes.
        pieces[0] = Piece::file("manifest.json", &serde_json::to_vec(manifest).unwrap());
        pieces
    });
    assert!(matches!(err, VerifyError::BadManifestSignature { .. }), "{err}");
}

#[test]
fn manifest_from_another_bundle_is_refused() {
    // Mix and match: a validly signed manifest of sequence 2 inside a file whose detached
    // signature vouches for sequence 1.
    let case = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY)]);
    let (err, _) = case.run_with(|key, manifest| {
        let mut other = manifest.clone();
        other.sequence = 2;
        head(key, &other)
    });
    assert!(matches!(err, VerifyError::TrustedComment { signature: "detached", .. }), "{err}");
}

#[test]
fn corrupt_header_is_refused() {
    let mut block = RawHeader::file("a", 0o644, BODY.len() as u64, 0).encode().unwrap();
    block[0] = b'b'; // checksum no longer matches
    let mut raw = block.to_vec();
    raw.extend_from_slice(BODY);
    raw.resize(1024, 0);
    let (err, _) = Case::new(vec![declared("a", BODY)], vec![Piece::Raw(raw)]).run();
    assert!(matches!(err, VerifyError::MalformedTar { .. }), "{err}");
}

#[test]
fn every_case_has_its_own_check_name() {
    // The CLI's machine output reports `check`; distinct failures must not share one.
    let checks = [
        VerifyError::Truncated { offset: 0 }.check(),
        VerifyError::TrailingData { offset: 0 }.check(),
        VerifyError::ManifestTooLarge { size: 0, max: 0 }.check(),
        VerifyError::BadManifestSignature { reason: String::new() }.check(),
        VerifyError::BadBundleSignature { path: PathBuf::new(), reason: String::new() }.check(),
    ];
    let unique: std::collections::HashSet<_> = checks.iter().collect();
    assert_eq!(unique.len(), checks.len());
}

#[test]
fn zstd_window_over_the_cap_is_refused() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let m = manifest(vec![declared("a", BODY)]);
    let mut pieces = head(&key, &m);
    pieces.push(Piece::file("a", BODY));
    let stream = tar_bytes(&pieces, true);
    // A frame that asks the decoder for a 128 MiB window.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(27)).unwrap();
    enc.write_all(&stream).unwrap();
    let compressed = enc.finish().unwrap();
    let (bundle, signature) = sign_file(dir.path(), &key, &m, &compressed);
    let signed =
        SignedBundle::verify(&bundle, &signature, &trusted(&key), Limits::default(), &NoProgress)
            .unwrap();
    let err = signed.read_manifest(enforce_expiry()).err().expect("window over the cap accepted");
    assert!(matches!(err, VerifyError::Decompress { .. }), "{err}");
    assert!(
        err.to_string().contains("memory"),
        "refused for the window, not something else: {err}"
    );
}

#[test]
fn metadata_entries_must_be_plain_0644_files() {
    let case = Case::new(vec![declared("a", BODY)], vec![Piece::file("a", BODY)]);
    let (err, _) = case.run_with(|key, manifest| {
        let mut pieces = head(key, manifest);
        if let Piece::Entry(header, _) = &mut pieces[0] {
            header.mode = 0o7777;
            header.linkname = "/etc/passwd".into();
        }
        pieces
    });
    assert!(matches!(err, VerifyError::MalformedTar { .. }), "{err}");
}
