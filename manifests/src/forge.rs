//! Forging bundles a correct builder never writes (feature `forge`, for tests and fuzzing): byte
//! by byte, signed with whatever key it is given, the way a leaked key or a buggy builder would.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::tar::{self, RawHeader};
use crate::{
    BundleComment, BundleName, EntryName, FileEntry, Kind, Manifest, ManifestComment, Mode,
    Sha256Digest, SigningKey,
};

/// One piece of a forged tar stream.
pub enum Piece {
    /// A header and its body, padded to a block.
    Entry(RawHeader, Vec<u8>),
    /// Bytes written as they are.
    Raw(Vec<u8>),
}

impl Piece {
    /// A regular 0644 file.
    pub fn file(path: &str, body: &[u8]) -> Self {
        Piece::Entry(RawHeader::file(path, 0o644, body.len() as u64, 0), body.to_vec())
    }

    /// An empty entry of any type, pointing at `linkname`.
    pub fn typed(path: &str, typeflag: u8, linkname: &str) -> Self {
        let mut header = RawHeader::file(path, 0o644, 0, 0);
        header.typeflag = typeflag;
        header.linkname = linkname.to_owned();
        Piece::Entry(header, Vec::new())
    }
}

/// A manifest entry for `body` at `path` (which must be a valid entry name).
pub fn declared(path: &str, body: &[u8]) -> FileEntry {
    FileEntry {
        path: EntryName::new(path).expect("forge: declared paths are valid names"),
        size: body.len() as u64,
        sha256: Sha256Digest::of(body),
        mode: Mode::Regular,
        kind: Kind::Other,
        in_base: false,
        metadata: crate::Metadata::default(),
    }
}

/// A manifest of bundle `site` at `sequence`, created 2026-11-01 and valid until 2099.
pub fn manifest(sequence: u64, files: Vec<FileEntry>) -> Manifest {
    Manifest {
        format: crate::FORMAT,
        name: BundleName::new("site").expect("a valid name"),
        sequence,
        created: time::macros::datetime!(2026-11-01 00:00 UTC),
        expires: time::macros::datetime!(2099-01-01 00:00 UTC),
        builder: "ferry-forge".into(),
        base: None,
        files,
    }
}

/// The two metadata entries of `manifest`, signed by `key`.
pub fn head(key: &SigningKey, manifest: &Manifest) -> Vec<Piece> {
    let comment = ManifestComment { name: manifest.name.clone(), sequence: manifest.sequence };
    head_raw(key, &manifest.to_bytes(), &comment)
}

/// The two metadata entries for any `manifest.json` bytes, signed by `key` under `comment`.
pub fn head_raw(key: &SigningKey, manifest: &[u8], comment: &ManifestComment) -> Vec<Piece> {
    let signature = key.sign(manifest, &comment.to_string());
    vec![
        Piece::file(crate::MANIFEST_ENTRY, manifest),
        Piece::file(crate::MANIFEST_SIGNATURE_ENTRY, signature.as_bytes()),
    ]
}

/// Serialises pieces into an uncompressed tar stream, ending with the two-block marker when
/// `end` is set.
pub fn tar_bytes(pieces: &[Piece], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Entry(header, body) => {
                out.extend_from_slice(&header.encode().expect("forge: header fields fit"));
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

/// One zstd frame at level 1 (fast: fuzzing calls this per input).
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, 1).expect("zstd compresses any input")
}

/// One gzip member.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

/// Writes `compressed` to `bundle` with a valid detached signature by `key` whose trusted comment
/// names `manifest`. Returns the signature's path (`bundle` + `.minisig`).
pub fn sign_file(
    bundle: &Path,
    key: &SigningKey,
    manifest: &Manifest,
    compressed: &[u8],
) -> std::io::Result<PathBuf> {
    let comment = BundleComment {
        name: manifest.name.clone(),
        sequence: manifest.sequence,
        manifest_sha256: Sha256Digest::of(&manifest.to_bytes()),
    };
    sign_file_with(bundle, key, &comment, compressed)
}

/// [`sign_file`] under any trusted comment.
pub fn sign_file_with(
    bundle: &Path,
    key: &SigningKey,
    comment: &BundleComment,
    compressed: &[u8],
) -> std::io::Result<PathBuf> {
    let signature = crate::default_signature_path(bundle);
    std::fs::write(bundle, compressed)?;
    std::fs::write(&signature, key.sign(compressed, &comment.to_string()))?;
    Ok(signature)
}
