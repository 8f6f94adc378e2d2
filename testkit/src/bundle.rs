//! What a test needs to write signed bundles without the builder: throwaway keys, bytes that
//! stand in for archives, Elastic's sidecar files, payload entries and `write_bundle`.

use std::path::{Path, PathBuf};

use ferry_artifacts::{Sha512Digest, write_sidecar};
use ferry_manifests::{
    BundleName, BundleSpec, Compression, EntryName, Kind, Metadata, Mode, NoProgress,
    PayloadSource, SigningKey, WrittenBundle,
};
use time::OffsetDateTime;

/// A new minisign key pair without a password: the secret key (`name` is what its errors call
/// it) and the text of its public key file.
pub fn key_pair(name: &str) -> (SigningKey, String) {
    let generated = ferry_manifests::generate_key(None).unwrap();
    let key = SigningKey::from_text(&generated.secret_key_file, name, None).unwrap();
    (key, generated.public_key_file)
}

/// `len` pseudo-random bytes, the same for the same `seed` and different for another: an
/// archive stand-in that compresses as little as a real one.
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    // FNV-1a of the seed, then xorshift64.
    let mut x: u64 = seed
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What Elastic publishes beside an artifact: its SHA-512 (which the bundle's metadata records
/// too), the text of its `.sha512` file and of its `.asc` signature.
pub struct Sidecars {
    pub digest: Sha512Digest,
    pub sha512: String,
    pub asc: String,
}

/// The [`Sidecars`] of the artifact `name` holding `bytes`, the signature by `pgp`.
pub fn sidecars(pgp: &ferry_artifacts::pgp::SigningKey, name: &str, bytes: &[u8]) -> Sidecars {
    let digest = Sha512Digest::of_reader(bytes).unwrap();
    let sha512 = write_sidecar(&digest, name);
    Sidecars { digest, sha512, asc: pgp.sign(bytes).unwrap() }
}

/// The bundle `site` number `sequence`, valid from `created` to `expires`, as the tests build it.
pub fn spec(
    sequence: u64,
    created: OffsetDateTime,
    expires: OffsetDateTime,
    compression: Compression,
) -> BundleSpec {
    BundleSpec {
        name: BundleName::new("site").unwrap(),
        sequence,
        created,
        expires,
        builder: "ferry-tests".into(),
        compression,
        base: None,
    }
}

/// An entry `path` of the payload, read from `source`, with its metadata.
pub fn payload(path: &str, source: PathBuf, kind: Kind, metadata: Metadata) -> PayloadSource {
    PayloadSource {
        path: EntryName::new(path).unwrap(),
        source,
        kind,
        mode: Mode::Regular,
        metadata,
    }
}

/// Writes the bundle of `spec` with `files`, signed by `key`, into the folder `out` (made if
/// missing).
pub fn write_bundle(
    out: &Path,
    spec: &BundleSpec,
    files: Vec<PayloadSource>,
    key: &SigningKey,
) -> WrittenBundle {
    std::fs::create_dir_all(out).unwrap();
    ferry_manifests::write_bundle(spec, files, key, out, &NoProgress).unwrap()
}

/// An integration package zip in the package registry's layout: every file below
/// `<name>-<version>/`, as the registry serves packages and Kibana installs them.
pub fn package_zip(name: &str, version: &str, files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (path, body) in files {
        out.start_file(format!("{name}-{version}/{path}"), options).unwrap();
        out.write_all(body.as_bytes()).unwrap();
    }
    out.finish().unwrap().into_inner()
}

/// A package's `manifest.yml` with what the appliance's registry requires, and `extra` lines.
pub fn package_manifest(name: &str, version: &str, extra: &str) -> String {
    format!(
        "format_version: 3.0.0\nname: {name}\ntitle: {name} title\nversion: {version}\n\
         description: about {name}\ntype: integration\n{extra}"
    )
}
