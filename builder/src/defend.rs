//! Elastic Defend's global artifacts: for each Endpoint version, the signed manifest zip of
//! `artifacts.security.elastic.co` and every file it lists, fetched, verified and carried at
//! Elastic's paths so the appliance's mirror serves them to Endpoint as the CDN does.
//!
//! What is checked follows how Kibana reads its own manifests from the same CDN
//! (security_solution `server/lib/telemetry/artifact.ts`, `downloads/kibana/manifest/…`): the
//! zip must hold `manifest.json` and `manifest.sig`, the signature is RSASSA-PKCS1-v1_5 with
//! SHA-256 over the exact bytes of `manifest.json`, and each artifact is fetched from the base
//! URL + its `relative_url`. That Endpoint's manifests (`downloads/endpoint/manifest/…`) are
//! signed the same way, with the same key, is an inference from it, not read in Elastic's
//! code: the first build against the live CDN confirms it (a wrong guess refuses every build). The file served there is the
//! encoded form, so its SHA-256 must be `encoded_sha256` (and its length `encoded_size`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ferry_manifests::{EntryName, Kind, Metadata, Mode, PayloadSource, Sha256Digest};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::fetch::{Cache, FetchError, FetchErrors, Fetcher, PlannedFile, in_parallel};
use crate::spec::{Spec, Upstream};

/// A manifest zip is a few kilobytes (one JSON file and a 512-byte signature); 16 MiB bounds a
/// hostile one, compressed and decompressed alike.
const MAX_MANIFEST: u64 = 16 << 20;
/// An RSA-8192 signature is 1 KiB.
const MAX_SIGNATURE: u64 = 4 << 10;
/// The largest global artifacts (compressed rule sets) are tens of megabytes; 1 GiB bounds a
/// server that never stops sending.
const MAX_ARTIFACT: u64 = 1 << 30;

/// `[defend]`: where global artifacts come from and the key their manifests are signed with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefendSection {
    /// An `https://` URL of the CDN (`https://artifacts.security.elastic.co`) or a mirror of
    /// it: the base `relative_url`s are appended to. `http://` only for loopback addresses.
    pub url: Option<String>,
    /// A local folder laid out like the CDN (it holds `downloads/endpoint/…`), relative to the
    /// spec.
    pub dir: Option<PathBuf>,
    /// The RSA public key manifests must be signed with, PEM `PUBLIC KEY` (SPKI), relative to
    /// the spec.
    pub public_key: PathBuf,
    /// CA certificates (PEM) to trust for the CDN instead of the built-in public roots.
    pub ca_file: Option<PathBuf>,
}

/// `[[endpoint_artifacts]]`: Endpoint versions whose global artifacts to carry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointArtifactsSection {
    /// `MAJOR.MINOR.PATCH`, as Endpoint asks for `artifacts-<version>.zip`.
    pub versions: Vec<String>,
}

/// What the spec asks of Defend, resolved against the spec's folder.
pub struct DefendPlan {
    pub upstream: Upstream,
    /// Sorted, without repeats.
    pub versions: Vec<String>,
    pub public_key: PathBuf,
    ca_file: Option<PathBuf>,
}

/// Why Defend's artifacts cannot go into the bundle.
pub enum DefendFailure {
    /// The public key: a local file, reported with the spec's other local files.
    Key(anyhow::Error),
    /// Manifests and artifacts that could not be fetched or did not verify, all of them.
    Fetch(FetchErrors),
}

/// Where the manifest for `version` lives, below the CDN's root.
pub fn manifest_path(version: &str) -> String {
    format!("downloads/endpoint/manifest/artifacts-{version}.zip")
}

impl DefendPlan {
    /// The spec's Defend tables, or `None` when it asks for no Endpoint artifacts.
    pub fn of(spec: &Spec, base: &Path) -> anyhow::Result<Option<Self>> {
        if spec.endpoint_artifacts.is_empty() {
            if spec.defend.is_some() {
                tracing::warn!("[defend] is set but no [[endpoint_artifacts]] names a version");
            }
            return Ok(None);
        }
        let Some(section) = &spec.defend else {
            bail!("the spec has [[endpoint_artifacts]] but no [defend] table saying where from");
        };
        let upstream =
            Spec::source("[defend]", section.url.as_deref(), section.dir.as_deref(), base)?;
        let mut versions = Vec::new();
        for (n, table) in spec.endpoint_artifacts.iter().enumerate() {
            if table.versions.is_empty() {
                bail!("[[endpoint_artifacts]] number {}: needs at least one version", n + 1);
            }
            for v in &table.versions {
                if !v.parse::<ferry_artifacts::Version>().is_ok_and(|v| v.is_core()) {
                    bail!(
                        "[[endpoint_artifacts]] number {}: {v:?} is not an Endpoint version \
                         MAJOR.MINOR.PATCH",
                        n + 1
                    );
                }
                versions.push(v.clone());
            }
        }
        versions.sort();
        versions.dedup();
        Ok(Some(Self {
            upstream,
            versions,
            public_key: base.join(&section.public_key),
            ca_file: section.ca_file.as_ref().map(|p| base.join(p)),
        }))
    }

    /// The manifest zips a build fetches. Their artifacts are known only once a manifest is
    /// fetched; manifests themselves are fetched on every build, since Elastic updates them.
    pub fn plan(&self) -> Vec<PlannedFile> {
        self.versions
            .iter()
            .map(|v| {
                let path = manifest_path(v);
                PlannedFile {
                    source: self.upstream.source_of(&path),
                    bundle_path: path,
                    cached: false,
                    local: false,
                    missing: false,
                }
            })
            .collect()
    }

    /// Fetches and verifies every manifest and every artifact they list (artifacts already in
    /// the cache are checked again, not fetched), and returns their bundle entries; or every
    /// failure. Nothing that did not verify enters the cache.
    pub fn fetch(
        &self,
        cache: Cache,
        parallel: usize,
        attempts: u32,
        quiet: bool,
    ) -> Result<Vec<PayloadSource>, DefendFailure> {
        let key = PublicKey::read(&self.public_key).map_err(DefendFailure::Key)?;
        let mut fetcher =
            Fetcher::without_keyring(self.upstream.clone(), cache, self.ca_file.as_deref())
                .map_err(DefendFailure::Key)?;
        fetcher.parallel = parallel.max(1);
        fetcher.attempts = attempts.max(1);
        let bars = crate::fetch::bars(quiet);
        let mut errors = Vec::new();

        let manifests = in_parallel(&self.versions, fetcher.parallel, |v| {
            self.fetch_manifest(&fetcher, &key, v, &bars)
        });
        let mut entries = Vec::new();
        // relative_url → (digest, size, the manifest that first listed it).
        let mut wanted: BTreeMap<String, (Sha256Digest, Option<u64>, String)> = BTreeMap::new();
        for manifest in manifests {
            let manifest = match manifest {
                Ok(m) => m,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            for a in &manifest.artifacts {
                match wanted.get(&a.relative_url) {
                    Some((digest, size, first)) if *digest != a.sha256 || *size != a.size => {
                        errors.push(refused(
                            &a.relative_url,
                            format!(
                                "{first} and {} list it with different sha256 or size",
                                manifest.file_name
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        wanted.insert(
                            a.relative_url.clone(),
                            (a.sha256, a.size, manifest.file_name.clone()),
                        );
                    }
                }
            }
            entries.push(manifest.entry);
        }

        // A listed file at a manifest's own path would make two entries of one path: refused
        // here, by name, rather than by the bundle writer after every download.
        for manifest in &entries {
            if let Some((_, _, by)) = wanted.remove(&format!("/{}", manifest.path)) {
                errors.push(refused(
                    &format!("/{}", manifest.path),
                    format!("{by} lists a file at a manifest's own path"),
                ));
            }
        }
        let wanted: Vec<_> = wanted.into_iter().collect();
        let fetched = in_parallel(&wanted, fetcher.parallel, |(url, (digest, size, _))| {
            fetch_artifact(&fetcher, url, digest, *size, &bars)
        });
        for (result, (url, _)) in fetched.into_iter().zip(&wanted) {
            match result {
                Ok(digest) => entries.push(PayloadSource {
                    path: artifact_entry(url).expect("checked when the manifest was read"),
                    source: fetcher.cache().store().path(&digest),
                    kind: Kind::EndpointArtifact,
                    mode: Mode::Regular,
                    metadata: Metadata::default(),
                }),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            tracing::info!(
                versions = self.versions.len(),
                entries = entries.len(),
                "Endpoint artifacts verified"
            );
            Ok(entries)
        } else {
            Err(DefendFailure::Fetch(FetchErrors(errors)))
        }
    }

    /// Fetches one manifest zip, checks it, and moves it into the cache.
    fn fetch_manifest(
        &self,
        fetcher: &Fetcher,
        key: &PublicKey,
        version: &str,
        bars: &crate::fetch::Bars,
    ) -> Result<Manifest, FetchError> {
        let path = manifest_path(version);
        let file_name = format!("artifacts-{version}.zip");
        let tmp = fetcher.get(&path, Some(MAX_MANIFEST), bars)?;
        let checked = read_manifest(&tmp, key).map_err(|check| refused(&file_name, check));
        let Checked { artifacts, manifest_version, date } = match checked {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let (digest, _) = fetcher.cache().store().insert_file(&tmp, None)?;
        let entry = PayloadSource {
            path: ferry_artifacts::mirror_entry(path.trim_start_matches("downloads/"))
                .map_err(|e| refused(&file_name, format!("unusable bundle path: {e}")))?,
            source: fetcher.cache().store().path(&digest),
            kind: Kind::EndpointArtifact,
            mode: Mode::Regular,
            metadata: Metadata::endpoint_manifest(version, manifest_version.as_deref(), date),
        };
        Ok(Manifest { file_name, artifacts, entry })
    }
}

/// A verified manifest: what it lists and its own bundle entry.
struct Manifest {
    file_name: String,
    artifacts: Vec<Listed>,
    entry: PayloadSource,
}

/// What [`read_manifest`] found in a manifest zip whose signature verified.
struct Checked {
    artifacts: Vec<Listed>,
    /// The manifest's own `manifest_version`.
    manifest_version: Option<String>,
    /// When `manifest.json` was written, from the zip.
    date: Option<OffsetDateTime>,
}

/// One artifact a manifest lists.
struct Listed {
    relative_url: String,
    sha256: Sha256Digest,
    size: Option<u64>,
}

/// `manifest.json` as far as a mirror needs it; Elastic's other fields (`schema_version`,
/// each artifact's `decoded_*`, `compression_algorithm`, …) are Endpoint's business.
#[derive(Deserialize)]
struct ManifestJson {
    manifest_version: Option<serde_json::Value>,
    artifacts: BTreeMap<String, ArtifactJson>,
}

#[derive(Deserialize)]
struct ArtifactJson {
    relative_url: String,
    encoded_sha256: String,
    encoded_size: Option<u64>,
}

fn refused(file: &str, check: impl Into<String>) -> FetchError {
    FetchError::Refused { file: file.to_owned(), reason: check.into() }
}

/// Checks a manifest zip at `path`: `manifest.json` signed by `key` in `manifest.sig`, and
/// every artifact it lists at a safe path below `/downloads/` with a SHA-256. Returns the
/// artifacts, the manifest's `manifest_version` and when `manifest.json` was written; or the
/// check that failed.
fn read_manifest(path: &Path, key: &PublicKey) -> Result<Checked, String> {
    let file = File::open(path).map_err(|e| format!("cannot read the download: {e}"))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("not a zip archive: {e}"))?;
    // Only `manifest.json` is signed, not the zip: with two entries of one name, the zip crate
    // would check the last while Kibana's AdmZip and `zcat` read the first.
    if zip.has_duplicate_names() {
        return Err("holds two entries of the same name".into());
    }
    let (json, date) = {
        let entry = zip.by_name("manifest.json").map_err(|_| "holds no manifest.json")?;
        let date = entry.last_modified().and_then(crate::intake::zip_time);
        (read_bounded(entry, MAX_MANIFEST, "manifest.json")?, date)
    };
    let signature = {
        let entry = zip.by_name("manifest.sig").map_err(|_| "holds no manifest.sig")?;
        read_bounded(entry, MAX_SIGNATURE, "manifest.sig")?
    };
    if !key.verifies(&json, &signature) {
        return Err(format!("manifest.sig does not verify with {}", key.name));
    }
    // Only signed bytes are parsed.
    let manifest: ManifestJson = serde_json::from_slice(&json)
        .map_err(|e| format!("manifest.json is not an artifact manifest: {e}"))?;
    let manifest_version = manifest.manifest_version.map(|v| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    });
    let mut artifacts = Vec::new();
    for (name, a) in manifest.artifacts {
        artifact_entry(&a.relative_url)
            .map_err(|why| format!("artifact {name}: relative_url {:?} {why}", a.relative_url))?;
        let sha256 = Sha256Digest::from_hex(&a.encoded_sha256).ok_or_else(|| {
            format!(
                "artifact {name}: encoded_sha256 {:?} is not 64 lowercase hex digits",
                a.encoded_sha256
            )
        })?;
        artifacts.push(Listed { relative_url: a.relative_url, sha256, size: a.encoded_size });
    }
    Ok(Checked { artifacts, manifest_version, date })
}

fn read_bounded(entry: impl std::io::Read, max: u64, name: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    entry
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {name} from the zip: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("{name} is larger than {max} bytes"));
    }
    Ok(bytes)
}

/// The bundle entry a `relative_url` is served from: it must be an absolute path below
/// `/downloads/` whose rest is a safe entry name; no percent-encoding, query or fragment, which
/// the mirror would never map to the same file.
fn artifact_entry(relative_url: &str) -> Result<EntryName, String> {
    let Some(rest) = relative_url.strip_prefix("/downloads/") else {
        return Err("is not a path below /downloads/".into());
    };
    if rest.contains(['%', '?', '#']) {
        return Err("has percent-encoding, a query or a fragment".into());
    }
    ferry_artifacts::mirror_entry(rest).map_err(|e| format!("is not a safe path: {e}"))
}

/// Fetches one artifact unless a verified copy is cached; checks its size and SHA-256 against
/// the manifest before it enters the cache. Returns its digest.
fn fetch_artifact(
    fetcher: &Fetcher,
    relative_url: &str,
    digest: &Sha256Digest,
    size: Option<u64>,
    bars: &crate::fetch::Bars,
) -> Result<Sha256Digest, FetchError> {
    let store = fetcher.cache().store();
    // A cached blob is hashed again: its name is only a claim once it sits on disk.
    if let Ok(n) = store.verify(digest)
        && size.is_none_or(|s| s == n)
    {
        return Ok(*digest);
    }
    let tmp = fetcher.get(relative_url.trim_start_matches('/'), Some(MAX_ARTIFACT), bars)?;
    let check = || -> Result<(), FetchError> {
        let (actual, n) = ferry_artifacts::hash_file(&tmp)?;
        if let Some(expected) = size
            && n != expected
        {
            return Err(refused(
                relative_url,
                format!("size {n} bytes but the manifest says {expected}"),
            ));
        }
        if actual != *digest {
            return Err(refused(
                relative_url,
                format!("sha256 {actual} but the manifest says {digest}"),
            ));
        }
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|source| FetchError::Io { path: tmp.clone(), source })?;
        store.insert_verified(&tmp, digest)?;
        Ok(())
    };
    check().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    Ok(*digest)
}

/// The RSA public key manifests are signed with.
struct PublicKey {
    /// The key file's name, for refusals.
    name: String,
    /// PKCS#1 `RSAPublicKey` DER, what ring takes.
    pkcs1: Vec<u8>,
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (SPKI) holding an RSA key.
    fn read(path: &Path) -> anyhow::Result<Self> {
        let what = path.display().to_string();
        let context = || {
            format!(
                "the Defend public key {what} (docs/operator-guide.md says how to get Elastic's)"
            )
        };
        let pem =
            fs::read(path).with_context(|| format!("cannot read {what}")).with_context(context)?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{what} is not PEM: {e}"))
            .with_context(context)?;
        if pem.label != "PUBLIC KEY" {
            return Err(anyhow::anyhow!(
                "{what} is a PEM {:?}, not a \"PUBLIC KEY\" (openssl pkey -pubout writes one)",
                pem.label
            ))
            .with_context(context);
        }
        use x509_parser::prelude::FromDer as _;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem.contents)
            .map_err(|e| anyhow::anyhow!("{what} is not a public key: {e}"))
            .with_context(context)?;
        if !matches!(spki.parsed(), Ok(x509_parser::public_key::PublicKey::RSA(_))) {
            return Err(anyhow::anyhow!("{what} is not an RSA public key")).with_context(context);
        }
        let name = path.file_name().map_or(what.clone(), |n| n.to_string_lossy().into_owned());
        Ok(Self { name, pkcs1: spki.subject_public_key.data.into_owned() })
    }

    /// Whether `signature` is RSASSA-PKCS1-v1_5 with SHA-256 over `message` (Node's
    /// `createVerify('RSA-SHA256')`, as Kibana checks); keys of 2048 to 8192 bits.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &self.pkcs1,
        )
        .verify(message, signature)
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(tables: &str) -> anyhow::Result<Option<DefendPlan>> {
        let spec: Spec =
            toml::from_str(&format!("[bundle]\nname = \"s\"\nsequence = 1\n{tables}"))?;
        DefendPlan::of(&spec, Path::new("/spec"))
    }

    #[test]
    fn spec_tables_resolve_and_refuse() {
        let versions = "[[endpoint_artifacts]]\nversions = [\"9.2.2\", \"8.19.4\", \"9.2.2\"]\n";
        let p = plan(&format!(
            "[defend]\ndir = \"cdn\"\npublic_key = \"k.pem\"\nca_file = \"ca.pem\"\n{versions}"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(p.upstream, Upstream::Dir("/spec/cdn".into()));
        assert_eq!(p.versions, ["8.19.4", "9.2.2"], "sorted, once each");
        assert_eq!(p.public_key, Path::new("/spec/k.pem"));
        assert_eq!(
            p.plan()[0].source,
            "/spec/cdn/downloads/endpoint/manifest/artifacts-8.19.4.zip"
        );
        let p = plan(&format!(
            "[defend]\nurl = \"https://artifacts.security.elastic.co\"\npublic_key = \"k\"\n{versions}"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(p.upstream, Upstream::Http("https://artifacts.security.elastic.co/".into()));
        assert!(plan("[defend]\nurl = \"https://x\"\npublic_key = \"k\"\n").unwrap().is_none());

        let err = |tables: &str| format!("{:#}", plan(tables).err().expect("refused"));
        assert!(err(versions).contains("[defend]"));
        let defend = "[defend]\nurl = \"https://x\"\npublic_key = \"k\"\n";
        assert!(
            err(&format!("{defend}[[endpoint_artifacts]]\nversions = [\"9.2\"]\n"))
                .contains("MAJOR.MINOR.PATCH")
        );
        assert!(
            err(&format!("{defend}[[endpoint_artifacts]]\nversions = [\"9.2.2-SNAPSHOT\"]\n"))
                .contains("MAJOR.MINOR.PATCH")
        );
        assert!(
            err(&format!("{defend}[[endpoint_artifacts]]\nversions = []\n"))
                .contains("one version")
        );
        assert!(
            err(&format!("[defend]\nurl = \"http://cdn.example\"\npublic_key = \"k\"\n{versions}"))
                .contains("https://")
        );
        assert!(
            err(&format!(
                "[defend]\nurl = \"https://x\"\ndir = \"d\"\npublic_key = \"k\"\n{versions}"
            ))
            .contains("keep one")
        );
        assert!(plan(&format!("{defend}colour = 1\n{versions}")).is_err(), "unknown field");
        assert!(
            plan("[[endpoint_artifacts]]\nversions = [\"9.2.2\"]\nplatform = \"x\"\n").is_err()
        );
    }

    #[test]
    fn relative_urls_map_to_entries_below_downloads_only() {
        assert_eq!(
            artifact_entry("/downloads/endpoint/artifacts/a-v1/ab12").unwrap().as_str(),
            "downloads/endpoint/artifacts/a-v1/ab12"
        );
        for bad in [
            "",
            "/",
            "/downloads/",
            "/downloads/../x",
            "/downloads/a/../../x",
            "/downloads//x",
            "/downloads/a\\b",
            "/downloads/a?b",
            "/downloads/a#b",
            "/downloads/a%2fb",
            "/other/x",
            "//downloads/x",
            "https://h/downloads/x",
        ] {
            assert!(artifact_entry(bad).is_err(), "{bad:?}");
        }
    }
}
