//! What goes into a bundle besides the writer's own entries: local files checked by kind, and
//! fetched artifacts with their sidecars, each with the metadata the manifest records.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use ferry_artifacts::{Keyring, Policy, Product, parse_certificates};
use ferry_manifests::{EntryName, Kind, Mode, PayloadSource};
use time::OffsetDateTime;

use crate::fetch::{Cache, Fetched, Fetcher};
use crate::spec::Spec;

/// The local files of the spec, each checked according to its kind: policies must be agent
/// policies, certificates PEM certificates (never keys), PGP keys parseable keys. Policies
/// carrying settings of the exporting site and certificates expiring before the bundle are
/// warned about on stderr.
pub fn local_files(
    spec: &Spec,
    base: &Path,
    expires: OffsetDateTime,
) -> anyhow::Result<Vec<PayloadSource>> {
    let mut payload = spec.payload(base)?;
    for file in &mut payload {
        let what = file.source.display().to_string();
        let read = || std::fs::read(&file.source).with_context(|| format!("cannot read {what}"));
        match file.kind {
            Kind::Policy => {
                let policy = Policy::parse(&read()?, &what)?;
                // Settings of the exporting site are the appliance's to drop, not a reason to
                // refuse the export; but the operator should hear what the agents won't get.
                // These are what the appliance's delivery removes, found by the same code.
                for setting in policy.carried_site_settings() {
                    tracing::warn!(file = %what, field = %setting.field, "{setting}");
                }
                file.metadata.insert("policy_id".into(), policy.id.clone());
                file.metadata.insert("revision".into(), policy.revision.to_string());
                if let Some(name) = policy.name {
                    file.metadata.insert("name".into(), name);
                }
            }
            Kind::Certificate => {
                let certs = parse_certificates(&read()?, &what)?;
                let first = &certs[0];
                file.metadata.insert("subject".into(), first.subject.clone());
                file.metadata.insert("issuer".into(), first.issuer.clone());
                file.metadata.insert("not_after".into(), ferry_manifests::rfc3339(first.not_after));
                file.metadata.insert("sha256_fingerprint".into(), first.fingerprint.clone());
                file.metadata.insert("certificates".into(), certs.len().to_string());
                for cert in certs.iter().filter(|c| c.not_after < expires) {
                    tracing::warn!(
                        file = %what,
                        subject = %cert.subject,
                        not_after = %ferry_manifests::rfc3339(cert.not_after),
                        bundle_expires = %ferry_manifests::rfc3339(expires),
                        "certificate expires before the bundle does"
                    );
                }
            }
            Kind::PgpKey => {
                let text =
                    String::from_utf8(read()?).with_context(|| format!("{what} is not text"))?;
                let ring = Keyring::from_armored(&text, &what)?;
                file.metadata.insert("fingerprints".into(), ring.fingerprints().join(","));
            }
            _ => {}
        }
    }
    Ok(payload)
}

/// The fetcher the spec describes, or `None` when it asks for no artifacts.
pub fn fetcher(
    spec: &Spec,
    base: &Path,
    cache_dir: &Path,
) -> anyhow::Result<Option<(Fetcher, PayloadSource)>> {
    let Some(upstream) = spec.upstream(base)? else { return Ok(None) };
    let section = spec.upstream.as_ref().expect("upstream() returned Some");
    let key_path = base.join(&section.pgp_key);
    let text = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read the upstream PGP key {}", key_path.display()))?;
    let keyring = Keyring::from_armored(&text, &key_path.display().to_string())?;
    let name =
        key_path.file_name().and_then(|n| n.to_str()).context("the PGP key file has no name")?;
    let key_entry = PayloadSource {
        path: EntryName::new(&format!("pgp/{name}"))
            .with_context(|| format!("unusable PGP key file name {name:?}"))?,
        source: key_path.clone(),
        kind: Kind::PgpKey,
        mode: Mode::Regular,
        metadata: BTreeMap::from([
            ("fingerprints".into(), keyring.fingerprints().join(",")),
            ("purpose".into(), "artifact-signing".into()),
        ]),
    };
    let cache = Cache::open(cache_dir)
        .with_context(|| format!("cannot open cache {}", cache_dir.display()))?;
    let ca = section.ca_file.as_ref().map(|p| base.join(p));
    Ok(Some((Fetcher::new(upstream, keyring, cache, ca.as_deref())?, key_entry)))
}

/// Bundle entries for fetched artifacts: each archive under `downloads/` with its two sidecars.
pub fn artifact_payload(fetched: &[Fetched]) -> anyhow::Result<Vec<PayloadSource>> {
    let mut payload = Vec::new();
    for f in fetched {
        let path = f.id.mirror_path();
        let entry = |p: &str| {
            ferry_artifacts::mirror_entry(p)
                .with_context(|| format!("unusable artifact path {p:?}"))
        };
        let kind = match f.id.product() {
            Product::ElasticAgent => Kind::AgentArtifact,
            Product::FleetServer => Kind::FleetServerArtifact,
        };
        payload.push(PayloadSource {
            path: entry(&path)?,
            source: f.archive.clone(),
            kind,
            mode: Mode::Regular,
            metadata: BTreeMap::from([
                ("product".into(), f.id.product().to_string()),
                ("version".into(), f.id.version().to_string()),
                ("platform".into(), f.id.platform().to_string()),
                ("package".into(), f.id.package().to_string()),
                ("fips".into(), f.id.fips().to_string()),
                ("sha512".into(), f.sha512.to_hex()),
                ("pgp_signer".into(), f.signer.clone()),
            ]),
        });
        for (suffix, source, format) in
            [("sha512", &f.sha512_file, "sha512"), ("asc", &f.asc_file, "pgp-signature")]
        {
            payload.push(PayloadSource {
                path: entry(&format!("{path}.{suffix}"))?,
                source: source.clone(),
                kind: Kind::ArtifactSidecar,
                mode: Mode::Regular,
                metadata: BTreeMap::from([
                    ("artifact".into(), path.clone()),
                    ("format".into(), format.into()),
                ]),
            });
        }
    }
    Ok(payload)
}
