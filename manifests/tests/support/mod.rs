//! Test helpers: a throwaway signing key, sample inputs, and a byte-level bundle forger that
//! signs whatever it is given, the way a leaked key or a buggy builder would.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ferry_manifests::tar::{self, RawHeader};
use ferry_manifests::{
    BundleComment, BundleName, BundleSpec, Compression, EntryName, FileEntry, Kind, Manifest,
    ManifestComment, Mode, NoProgress, PayloadSource, Sha256Digest, SigningKey, TrustedKeys,
    WrittenBundle,
};

pub fn key() -> SigningKey {
    let generated = ferry_manifests::generate_key(None).unwrap();
    SigningKey::from_text(&generated.secret_key_file, "test key", None).unwrap()
}

pub fn trusted(key: &SigningKey) -> TrustedKeys {
    TrustedKeys::from(key.public_key())
}

pub fn spec(sequence: u64, compression: Compression) -> BundleSpec {
    BundleSpec {
        name: BundleName::new("site").unwrap(),
        sequence,
        created: time::macros::datetime!(2026-11-01 00:00 UTC),
        expires: time::macros::datetime!(2099-01-01 00:00 UTC),
        builder: "ferry-tests".into(),
        compression,
    }
}

/// Writes a few sample inputs (one compressible, one not, one empty) and describes them.
pub fn sample_inputs(dir: &Path) -> Vec<PayloadSource> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut noise = Vec::with_capacity(300_000);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 300_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let files: [(&str, &str, Vec<u8>, Kind); 3] = [
        (
            "policy.yml",
            "policies/default.yml",
            b"id: default\nrevision: 1\n".repeat(500),
            Kind::Policy,
        ),
        ("agent.tar.gz", "downloads/beats/elastic-agent/agent.tar.gz", noise, Kind::AgentArtifact),
        ("empty", "files/empty", Vec::new(), Kind::Other),
    ];
    files
        .into_iter()
        .map(|(local, path, bytes, kind)| {
            let source = src.join(local);
            std::fs::write(&source, bytes).unwrap();
            PayloadSource {
                path: EntryName::new(path).unwrap(),
                source,
                kind,
                mode: Mode::Regular,
                metadata: BTreeMap::new(),
            }
        })
        .collect()
}

pub fn build(dir: &Path, key: &SigningKey, spec: &BundleSpec) -> WrittenBundle {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    ferry_manifests::write_bundle(spec, sample_inputs(dir), key, &out, &NoProgress).unwrap()
}

/// One piece of a forged tar stream.
pub enum Piece {
    /// A header and its body, padded to a block.
    Entry(RawHeader, Vec<u8>),
    /// Bytes written as they are.
    Raw(Vec<u8>),
}

impl Piece {
    pub fn file(path: &str, body: &[u8]) -> Self {
        Piece::Entry(RawHeader::file(path, 0o644, body.len() as u64, 0), body.to_vec())
    }

    pub fn typed(path: &str, typeflag: u8, linkname: &str) -> Self {
        let mut header = RawHeader::file(path, 0o644, 0, 0);
        header.typeflag = typeflag;
        header.linkname = linkname.to_owned();
        Piece::Entry(header, Vec::new())
    }
}

/// A manifest entry for `body` at `path`.
pub fn declared(path: &str, body: &[u8]) -> FileEntry {
    FileEntry {
        path: EntryName::new(path).unwrap(),
        size: body.len() as u64,
        sha256: Sha256Digest::of(body),
        mode: Mode::Regular,
        kind: Kind::Other,
        metadata: BTreeMap::new(),
    }
}

pub fn manifest(files: Vec<FileEntry>) -> Manifest {
    let spec = spec(1, Compression::default_zstd());
    Manifest {
        format: 1,
        name: spec.name,
        sequence: spec.sequence,
        created: spec.created,
        expires: spec.expires,
        builder: spec.builder,
        files,
    }
}

/// Bytes for the two metadata entries of `manifest`, signed by `key`.
pub fn head(key: &SigningKey, manifest: &Manifest) -> Vec<Piece> {
    let bytes = manifest.to_bytes();
    let comment = ManifestComment { name: manifest.name.clone(), sequence: manifest.sequence };
    let signature = key.sign(&bytes, &comment.to_string());
    vec![
        Piece::file("manifest.json", &bytes),
        Piece::file("manifest.json.minisig", signature.as_bytes()),
    ]
}

/// Serialises pieces into an uncompressed tar stream, ending with the two-block marker when
/// `end` is set.
pub fn tar_bytes(pieces: &[Piece], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Entry(header, body) => {
                out.extend_from_slice(&header.encode().unwrap());
                out.extend_from_slice(body);
                out.resize(out.len() + tar::padding(body.len() as u64), 0);
            }
            Piece::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    if end {
        out.resize(out.len() + 2 * tar::BLOCK, 0);
    }
    out
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Writes `compressed` as a bundle with a valid detached signature by `key` whose trusted
/// comment names `manifest`. Returns (bundle, signature) paths.
pub fn sign_file(
    dir: &Path,
    key: &SigningKey,
    manifest: &Manifest,
    compressed: &[u8],
) -> (PathBuf, PathBuf) {
    let comment = BundleComment {
        name: manifest.name.clone(),
        sequence: manifest.sequence,
        manifest_sha256: Sha256Digest::of(&manifest.to_bytes()),
    };
    let bundle = dir.join("forged.ferry");
    let signature = dir.join("forged.ferry.minisig");
    std::fs::write(&bundle, compressed).unwrap();
    std::fs::write(&signature, key.sign(compressed, &comment.to_string())).unwrap();
    (bundle, signature)
}
