//! `ferry-sim fake-mirror`: a synthetic Elastic download site for demos and benchmarks. Agent
//! archives of chosen versions and platforms (random bytes, not real agents) with their
//! `.sha512` and a PGP `.asc` made by a throwaway key, laid out as `artifacts.elastic.co`
//! lays out `downloads/`, plus that key's public half for `ferry build` to trust.

use std::path::Path;

use ferry_artifacts::{ArtifactId, PackageKind, Platform, Product, Sha512Digest, Version};

/// Writes `out/downloads/…` and `out/GPG-KEY-ferry-demo`; returns the archive paths written.
pub fn write(
    out: &Path,
    versions: &[String],
    platforms: &[String],
    size: usize,
) -> anyhow::Result<Vec<String>> {
    let key =
        ferry_artifacts::pgp::SigningKey::generate("Ferry demo artifacts <demo@ferry.invalid>")?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("GPG-KEY-ferry-demo"), key.public_armored())?;
    let mut written = Vec::new();
    for version in versions {
        for platform in platforms {
            let id = ArtifactId::new(
                Product::ElasticAgent,
                version.parse::<Version>()?,
                platform.parse::<Platform>()?,
                PackageKind::Archive,
                false,
            )?;
            let path = out.join("downloads").join(id.mirror_path());
            std::fs::create_dir_all(path.parent().expect("a mirror path has folders"))?;
            let bytes = fake_archive(&id.file_name(), size);
            std::fs::write(&path, &bytes)?;
            let digest = Sha512Digest::of_reader(&bytes[..])?;
            std::fs::write(
                path.with_file_name(format!("{}.sha512", id.file_name())),
                ferry_artifacts::write_sidecar(&digest, &id.file_name()),
            )?;
            std::fs::write(
                path.with_file_name(format!("{}.asc", id.file_name())),
                key.sign(&bytes[..])?,
            )?;
            written.push(id.mirror_path());
        }
    }
    Ok(written)
}

/// Deterministic bytes standing in for an archive (so rebuilt mirrors hash the same).
fn fake_archive(name: &str, size: usize) -> Vec<u8> {
    let mut x: u64 = name
        .bytes()
        .fold(0x9e37_79b9_7f4a_7c15, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
