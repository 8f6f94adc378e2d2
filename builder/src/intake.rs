//! What goes into a bundle besides the writer's own entries: local files checked by kind, and
//! fetched artifacts with their sidecars, each with the metadata the manifest records.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ferry_artifacts::secrets::{self, InlineCredential, Verdict};
use ferry_artifacts::{Keyring, Policy, Product, parse_certificates};
use ferry_manifests::terminal::error_line;
use ferry_manifests::{
    ArtifactFacts, CertificateFacts, EntryName, Kind, Metadata, Mode, PayloadSource, PgpKeyFacts,
    PolicyFacts, SidecarFormat,
};
use time::OffsetDateTime;

use crate::fetch::{Cache, FetchErrors, Fetched, Fetcher};
use crate::spec::{Spec, Upstream};

/// Every file a build cannot take, local or fetched, so the operator sees all of them at once.
#[derive(Debug, Default)]
pub struct FileErrors {
    /// Local files (the spec's and the upstream PGP key): missing, not regular files, or
    /// failing their kind's check. One line each, naming the file.
    pub local: Vec<String>,
    /// Integration entries that select nothing, or that the registry answered wrongly.
    pub selection: Vec<String>,
    /// Artifacts and packages that could not be fetched and verified.
    pub fetch: Option<FetchErrors>,
}

impl FileErrors {
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.selection.is_empty() && self.fetch.is_none()
    }

    /// Adds fetch failures to those already met.
    pub fn add_fetch(&mut self, errors: Vec<crate::fetch::FetchError>) {
        if !errors.is_empty() {
            self.fetch.get_or_insert_with(|| FetchErrors(Vec::new())).0.extend(errors);
        }
    }

    /// Whether an input was refused (a local file missing or failing its check, an artifact
    /// missing upstream or not verifying) rather than out of reach (network, disk).
    pub fn is_refusal(&self) -> bool {
        !self.local.is_empty()
            || !self.selection.is_empty()
            || self.fetch.as_ref().is_some_and(FetchErrors::is_refusal)
    }
}

impl std::fmt::Display for FileErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.local.is_empty() {
            write!(
                f,
                "{} local file(s) cannot go into the bundle (nothing was written):",
                self.local.len()
            )?;
            for line in &self.local {
                write!(f, "\n  - {line}")?;
            }
        }
        if !self.selection.is_empty() {
            if !self.local.is_empty() {
                writeln!(f)?;
            }
            write!(f, "{} integration entr(ies) cannot be resolved:", self.selection.len())?;
            for line in &self.selection {
                write!(f, "\n  - {line}")?;
            }
        }
        if let Some(fetch) = &self.fetch {
            if !self.local.is_empty() || !self.selection.is_empty() {
                writeln!(f)?;
            }
            write!(f, "{fetch}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FileErrors {}

/// What a policy needs at the site and what is wrong with it, as `plan` shows and `build`
/// acts on.
pub struct PolicyCheck {
    pub policy: Policy,
    /// The Fleet secret ids whose values the appliance needs (`ferry-appliance secrets set`).
    pub secret_ids: Vec<String>,
    /// Output credentials in clear that a build refuses.
    pub refused: Vec<InlineCredential>,
    /// Output credentials in clear that a build warns about.
    pub warned: Vec<InlineCredential>,
    /// `elasticsearch` outputs the appliance cannot make a per-agent key for.
    pub without_permissions: Vec<String>,
}

impl PolicyCheck {
    /// Reads a policy file and checks its secrets and credentials; `what` names the file.
    pub fn read(path: &Path, what: &str) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {what}"))?;
        let policy = Policy::parse(&bytes, what)?;
        let doc = &policy.document;
        let (refused, warned) = secrets::inline_credentials(doc)
            .into_iter()
            .partition(|c| c.verdict() == Verdict::Refuse);
        Ok(Self {
            secret_ids: secrets::referenced_ids(doc).into_iter().collect(),
            refused,
            warned,
            without_permissions: secrets::outputs_without_permissions(doc),
            policy,
        })
    }

    /// One line per refused credential, naming the file, the output and the field.
    pub fn refusals(&self, what: &str) -> Vec<String> {
        self.refused.iter().map(|c| format!("{what}: {c}")).collect()
    }
}

/// A policy of the bundle and the secret ids it needs, as `plan` and `build` list them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicySecrets {
    /// The policy's path in the bundle.
    pub path: String,
    /// The policy's id; `None` when `plan` could not read it.
    pub id: Option<String>,
    pub secret_ids: Vec<String>,
}

/// The spec's local files as a build takes them.
pub struct LocalFiles {
    /// The files that passed their checks.
    pub passed: Vec<PayloadSource>,
    /// One line for each problem of a file that did not, naming it.
    pub failed: Vec<String>,
    /// Each policy that passed, with the secret ids it needs.
    pub policies: Vec<PolicySecrets>,
}

/// The local files of the spec, each checked according to its kind: policies must be agent
/// policies without secret values in clear, certificates PEM certificates (never keys), PGP
/// keys parseable keys, and every one a regular file. Policies carrying settings of the
/// exporting site or discouraged credentials, and certificates expiring before the bundle,
/// are warned about on stderr.
pub fn local_files(
    spec: &Spec,
    base: &Path,
    expires: OffsetDateTime,
) -> anyhow::Result<LocalFiles> {
    let mut files = LocalFiles { passed: Vec::new(), failed: Vec::new(), policies: Vec::new() };
    for mut file in spec.payload(base)? {
        match check_local(&mut file, expires) {
            Ok(Checked::Refused(lines)) => files.failed.extend(lines),
            Ok(checked) => {
                if let Checked::Policy(secret_ids) = checked {
                    let id = file.metadata.policy_id().map(str::to_owned);
                    files.policies.push(PolicySecrets {
                        path: file.path.to_string(),
                        id,
                        secret_ids,
                    });
                }
                files.passed.push(file);
            }
            Err(error) => files.failed.push(error_line(error.as_ref())),
        }
    }
    Ok(files)
}

/// What [`check_local`] made of a file that it could read and parse.
enum Checked {
    /// A policy that passed, with the secret ids it needs.
    Policy(Vec<String>),
    /// A policy refused, one line per reason.
    Refused(Vec<String>),
    Other,
}

/// Checks one local file by its kind and records what the manifest says of it.
fn check_local(file: &mut PayloadSource, expires: OffsetDateTime) -> anyhow::Result<Checked> {
    // What the writer requires of every input, checked now so that all failures show at once.
    ferry_manifests::check_input(&file.source)?;
    let what = file.source.display().to_string();
    let read = || std::fs::read(&file.source).with_context(|| format!("cannot read {what}"));
    match file.kind {
        Kind::Policy => {
            let check = PolicyCheck::read(&file.source, &what)?;
            if !check.refused.is_empty() {
                return Ok(Checked::Refused(check.refusals(&what)));
            }
            // Settings of the exporting site are the appliance's to drop, not a reason to
            // refuse the export; but the operator should hear what the agents won't get.
            // These are what the appliance's delivery removes, found by the same code.
            for setting in check.policy.carried_site_settings() {
                tracing::warn!(file = %what, field = %setting.field, "{setting}");
            }
            for credential in &check.warned {
                tracing::warn!(
                    file = %what,
                    output = %credential.output,
                    field = %credential.field,
                    "{credential}"
                );
            }
            for output in &check.without_permissions {
                tracing::warn!(
                    file = %what,
                    output = %output,
                    "the appliance cannot create a per-agent key for output `{output}`: the \
                     policy has no output_permissions for it (Kibana's full agent policy for \
                     Fleet includes them; a standalone download does not)"
                );
            }
            let policy = check.policy;
            file.metadata.set_policy(PolicyFacts {
                id: policy.id,
                revision: policy.revision,
                name: policy.name,
            });
            return Ok(Checked::Policy(check.secret_ids));
        }
        Kind::Certificate => {
            let certs = parse_certificates(&read()?, &what)?;
            let first = &certs[0];
            file.metadata.set_certificate(CertificateFacts {
                subject: first.subject.clone(),
                issuer: first.issuer.clone(),
                not_after: first.not_after,
                sha256_fingerprint: first.fingerprint.clone(),
                certificates: certs.len(),
            });
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
            let ring = read_pgp_key(&file.source)?;
            file.metadata.set_pgp_key(&PgpKeyFacts {
                fingerprints: ring.fingerprints(),
                signs_artifacts: false,
            });
        }
        _ => {}
    }
    Ok(Checked::Other)
}

/// An armored PGP public key file as a keyring.
pub(crate) fn read_pgp_key(path: &Path) -> anyhow::Result<Keyring> {
    let what = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {what}"))?;
    let text = String::from_utf8(bytes).with_context(|| format!("{what} is not text"))?;
    Ok(Keyring::from_armored(&text, &what)?)
}

/// What the spec's `[upstream]` names, before any file of it is read: where artifacts come
/// from, the download cache, and the bundle entry of the PGP key they must be signed with.
pub struct UpstreamPlan {
    pub upstream: Upstream,
    pub cache: Cache,
    /// The upstream PGP key's entry (`pgp/NAME`); its metadata is recorded once it is read.
    pub key_entry: PayloadSource,
    ca_file: Option<PathBuf>,
}

impl UpstreamPlan {
    /// The spec's upstream, or `None` when it asks for no artifacts.
    pub fn of(spec: &Spec, base: &Path, cache_dir: &Path) -> anyhow::Result<Option<Self>> {
        let Some(upstream) = spec.upstream(base)? else { return Ok(None) };
        let section = spec.upstream.as_ref().expect("upstream() returned Some");
        let key_path = base.join(&section.pgp_key);
        let name = key_path
            .file_name()
            .and_then(|n| n.to_str())
            .context("the PGP key file has no name")?;
        let key_entry = PayloadSource {
            path: EntryName::new(&format!("pgp/{name}"))
                .with_context(|| format!("unusable PGP key file name {name:?}"))?,
            source: key_path.clone(),
            kind: Kind::PgpKey,
            mode: Mode::Regular,
            metadata: Metadata::default(),
        };
        let cache = Cache::open(cache_dir)?;
        let ca_file = section.ca_file.as_ref().map(|p| base.join(p));
        Ok(Some(Self { upstream, cache, key_entry, ca_file }))
    }

    /// Reads the upstream PGP key, checked like a local file (an `Err` names it); its
    /// fingerprints, and that artifacts are checked with it, go into the key's entry.
    pub fn keyring(&mut self) -> anyhow::Result<Keyring> {
        let path = &self.key_entry.source;
        let ring = ferry_manifests::check_input(path)
            .map_err(anyhow::Error::from)
            .and_then(|()| read_pgp_key(path))
            .context("the upstream PGP key (docs/operator-guide.md says how to get Elastic's)")?;
        self.key_entry
            .metadata
            .set_pgp_key(&PgpKeyFacts { fingerprints: ring.fingerprints(), signs_artifacts: true });
        Ok(ring)
    }

    /// The fetcher that downloads and verifies with `keyring`, and the key's bundle entry.
    pub fn fetcher(self, keyring: Keyring) -> anyhow::Result<(Fetcher, PayloadSource)> {
        let fetcher = Fetcher::new(self.upstream, keyring, self.cache, self.ca_file.as_deref())?;
        Ok((fetcher, self.key_entry))
    }
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
            metadata: Metadata::artifact(ArtifactFacts {
                product: f.id.product().to_string(),
                version: f.id.version().to_string(),
                platform: f.id.platform().to_string(),
                package: f.id.package().to_string(),
                fips: f.id.fips(),
                sha512: f.sha512.to_hex(),
                pgp_signer: f.signer.clone(),
            }),
        });
        for (suffix, source, format) in [
            ("sha512", &f.sha512_file, SidecarFormat::Sha512),
            ("asc", &f.asc_file, SidecarFormat::PgpSignature),
        ] {
            payload.push(PayloadSource {
                path: entry(&format!("{path}.{suffix}"))?,
                source: source.clone(),
                kind: Kind::ArtifactSidecar,
                mode: Mode::Regular,
                metadata: Metadata::sidecar(&path, format),
            });
        }
    }
    Ok(payload)
}

/// A zip entry's modification time (MS-DOS fields, without a zone) read as UTC: the same zip
/// gives the same time on every build.
pub(crate) fn zip_time(t: zip::DateTime) -> Option<OffsetDateTime> {
    let month = time::Month::try_from(t.month()).ok()?;
    let date = time::Date::from_calendar_date(i32::from(t.year()), month, t.day()).ok()?;
    Some(date.with_hms(t.hour(), t.minute(), t.second()).ok()?.assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_times_are_read_as_utc() {
        let t = zip::DateTime::from_date_and_time(2026, 12, 1, 8, 30, 2).unwrap();
        assert_eq!(zip_time(t), Some(time::macros::datetime!(2026-12-01 08:30:02 UTC)));
    }
}
