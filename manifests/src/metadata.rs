//! Entry metadata: the open map of strings format 1 allows, and the facts `ferry build` records
//! in it and the appliance reads back (`docs/bundle-format.md` §3.1), each key spelled once here.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

/// The keys of §3.1. Private: every crate records and reads them through [`Metadata`]'s typed
/// methods, so a misspelled key is a compile error and not, say, a policy that silently has no
/// id on the appliance.
mod key {
    pub(super) const PRODUCT: &str = "product";
    pub(super) const VERSION: &str = "version";
    pub(super) const PLATFORM: &str = "platform";
    pub(super) const PACKAGE: &str = "package";
    pub(super) const FIPS: &str = "fips";
    pub(super) const SHA512: &str = "sha512";
    pub(super) const PGP_SIGNER: &str = "pgp_signer";
    pub(super) const ARTIFACT: &str = "artifact";
    pub(super) const FORMAT: &str = "format";
    pub(super) const FINGERPRINTS: &str = "fingerprints";
    pub(super) const PURPOSE: &str = "purpose";
    pub(super) const POLICY_ID: &str = "policy_id";
    pub(super) const REVISION: &str = "revision";
    pub(super) const NAME: &str = "name";
    pub(super) const SUBJECT: &str = "subject";
    pub(super) const ISSUER: &str = "issuer";
    pub(super) const NOT_AFTER: &str = "not_after";
    pub(super) const SHA256_FINGERPRINT: &str = "sha256_fingerprint";
    pub(super) const CERTIFICATES: &str = "certificates";
    pub(super) const DATE: &str = "date";
    pub(super) const ENDPOINT_VERSION: &str = "endpoint_version";
    pub(super) const MANIFEST_VERSION: &str = "manifest_version";
}

/// The value of `purpose` on the PGP key that fetched artifacts were checked with.
const ARTIFACT_SIGNING: &str = "artifact-signing";

/// One entry's metadata: string keys to string values, serialised as the JSON object of the map
/// it wraps (keys in byte order), so the signed bytes are what they were before these types.
/// Readers must not refuse a bundle for keys they do not know (§3.1): a spec may add its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

/// What `ferry build` records of an Elastic artifact archive (`agent-artifact`,
/// `fleet-server-artifact`), as Elastic spells each part.
#[derive(Debug, Clone)]
pub struct ArtifactFacts {
    pub product: String,
    pub version: String,
    pub platform: String,
    /// `archive`, `deb`, `rpm` or `msi`.
    pub package: String,
    pub fips: bool,
    /// The SHA-512 its `.sha512` sidecar gave, hex.
    pub sha512: String,
    /// Fingerprint of the PGP key whose `.asc` signature verified.
    pub pgp_signer: String,
}

/// The two sidecars Elastic publishes beside an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarFormat {
    /// `.sha512`
    Sha512,
    /// `.asc`
    PgpSignature,
}

impl SidecarFormat {
    fn as_str(self) -> &'static str {
        match self {
            SidecarFormat::Sha512 => "sha512",
            SidecarFormat::PgpSignature => "pgp-signature",
        }
    }
}

/// What `ferry build` records of an agent policy.
#[derive(Debug, Clone)]
pub struct PolicyFacts {
    pub id: String,
    pub revision: u64,
    /// Recorded only when the policy has one.
    pub name: Option<String>,
}

/// What `ferry build` records of a certificate file: its first certificate, and how many the
/// file holds.
#[derive(Debug, Clone)]
pub struct CertificateFacts {
    pub subject: String,
    pub issuer: String,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER encoding, as `openssl x509 -fingerprint` shows it.
    pub sha256_fingerprint: String,
    pub certificates: usize,
}

/// What `ferry build` records of a PGP public key file.
#[derive(Debug, Clone)]
pub struct PgpKeyFacts {
    pub fingerprints: Vec<String>,
    /// Whether it is the key the bundle's artifacts were checked with (the appliance serves
    /// that one to agents).
    pub signs_artifacts: bool,
}

impl Metadata {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The metadata of an artifact archive.
    pub fn artifact(facts: ArtifactFacts) -> Self {
        let ArtifactFacts { product, version, platform, package, fips, sha512, pgp_signer } = facts;
        let mut m = Self::default();
        m.set(key::PRODUCT, product);
        m.set(key::VERSION, version);
        m.set(key::PLATFORM, platform);
        m.set(key::PACKAGE, package);
        m.set(key::FIPS, fips.to_string());
        m.set(key::SHA512, sha512);
        m.set(key::PGP_SIGNER, pgp_signer);
        m
    }

    /// The metadata of an integration package zip (`packages/<name>-<version>.zip`, kind
    /// `package`): the package's name and version, as its `manifest.yml` says them.
    pub fn integration_package(name: &str, version: &str) -> Self {
        let mut m = Self::default();
        m.set(key::NAME, name.to_owned());
        m.set(key::VERSION, version.to_owned());
        m
    }

    /// Records the fingerprint of the PGP key whose signature verified a fetched file, as an
    /// artifact's `pgp_signer` (an integration package's provenance).
    pub fn set_pgp_signer(&mut self, fingerprint: &str) {
        self.set(key::PGP_SIGNER, fingerprint.to_owned());
    }

    /// The metadata of an Elastic Defend global artifact manifest zip
    /// (`downloads/endpoint/manifest/artifacts-<version>.zip`, kind `endpoint-artifact`): the
    /// Endpoint version it is for, the manifest's own `manifest_version` when it has one, and
    /// when `manifest.json` was written (RFC 3339, from the zip, so a rebuild records the same).
    pub fn endpoint_manifest(
        endpoint_version: &str,
        manifest_version: Option<&str>,
        manifest_date: Option<OffsetDateTime>,
    ) -> Self {
        let mut m = Self::default();
        m.set(key::ENDPOINT_VERSION, endpoint_version.to_owned());
        if let Some(v) = manifest_version {
            m.set(key::MANIFEST_VERSION, v.to_owned());
        }
        if let Some(date) = manifest_date {
            m.set_content_date(date);
        }
        m
    }

    /// The Endpoint version of a Defend manifest zip (kind `endpoint-artifact`).
    pub fn endpoint_version(&self) -> Option<&str> {
        self.get(key::ENDPOINT_VERSION)
    }

    /// The `manifest_version` a Defend manifest zip's `manifest.json` gives.
    pub fn manifest_version(&self) -> Option<&str> {
        self.get(key::MANIFEST_VERSION)
    }

    /// An integration package's name (kind `package`).
    pub fn package_name(&self) -> Option<&str> {
        self.get(key::NAME)
    }

    /// Records when Elastic made a file's content, RFC 3339, as the file itself says it (an
    /// integration package: its `manifest.yml`'s time in the zip; a Defend manifest zip: its
    /// `manifest.json`'s), never when it was fetched,
    /// so that builds stay reproducible; what `status` gives the content's age by.
    pub fn set_content_date(&mut self, date: OffsetDateTime) {
        self.set(key::DATE, crate::rfc3339(date));
    }

    /// When Elastic made the content, if recorded.
    pub fn content_date(&self) -> Option<OffsetDateTime> {
        let text = self.get(key::DATE)?;
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
    }

    /// The metadata of a sidecar of the archive at `artifact` (its entry path).
    pub fn sidecar(artifact: &str, format: SidecarFormat) -> Self {
        let mut m = Self::default();
        m.set(key::ARTIFACT, artifact.to_owned());
        m.set(key::FORMAT, format.as_str().to_owned());
        m
    }

    /// Records a policy's facts over whatever the spec said under the same keys.
    pub fn set_policy(&mut self, facts: PolicyFacts) {
        self.set(key::POLICY_ID, facts.id);
        self.set(key::REVISION, facts.revision.to_string());
        if let Some(name) = facts.name {
            self.set(key::NAME, name);
        }
    }

    /// Records a certificate file's facts over whatever the spec said under the same keys.
    pub fn set_certificate(&mut self, facts: CertificateFacts) {
        self.set(key::SUBJECT, facts.subject);
        self.set(key::ISSUER, facts.issuer);
        self.set(key::NOT_AFTER, crate::rfc3339(facts.not_after));
        self.set(key::SHA256_FINGERPRINT, facts.sha256_fingerprint);
        self.set(key::CERTIFICATES, facts.certificates.to_string());
    }

    /// Records a PGP key's facts over whatever the spec said under the same keys.
    pub fn set_pgp_key(&mut self, facts: &PgpKeyFacts) {
        self.set(key::FINGERPRINTS, facts.fingerprints.join(","));
        if facts.signs_artifacts {
            self.set(key::PURPOSE, ARTIFACT_SIGNING.to_owned());
        }
    }

    /// An artifact's product (`elastic-agent`, `fleet-server`).
    pub fn product(&self) -> Option<&str> {
        self.get(key::PRODUCT)
    }

    /// An artifact's version, spelled as in its file name.
    pub fn version(&self) -> Option<&str> {
        self.get(key::VERSION)
    }

    /// An artifact's platform (`linux-x86_64`, `windows-x86_64` …).
    pub fn platform(&self) -> Option<&str> {
        self.get(key::PLATFORM)
    }

    /// An artifact's package kind (`archive`, `deb`, `rpm`, `msi`).
    pub fn package(&self) -> Option<&str> {
        self.get(key::PACKAGE)
    }

    /// Whether an artifact is a FIPS build; only `true` says so.
    pub fn fips(&self) -> bool {
        self.get(key::FIPS) == Some("true")
    }

    /// A policy's id, which agents are enrolled into.
    pub fn policy_id(&self) -> Option<&str> {
        self.get(key::POLICY_ID)
    }

    /// A policy's revision in Kibana, as recorded.
    pub fn policy_revision(&self) -> Option<&str> {
        self.get(key::REVISION)
    }

    /// A policy's name, when it has one.
    pub fn policy_name(&self) -> Option<&str> {
        self.get(key::NAME)
    }

    /// The subject of a certificate file's first certificate.
    pub fn certificate_subject(&self) -> Option<&str> {
        self.get(key::SUBJECT)
    }

    /// When a certificate file's first certificate expires, RFC 3339 as recorded.
    pub fn certificate_not_after(&self) -> Option<&str> {
        self.get(key::NOT_AFTER)
    }

    /// Whether a PGP key is the one the bundle's artifacts were checked with.
    pub fn signs_artifacts(&self) -> bool {
        self.get(key::PURPOSE) == Some(ARTIFACT_SIGNING)
    }
}

/// A spec's own metadata, taken as it is (§3.1 lets a bundle carry any keys).
impl From<BTreeMap<String, String>> for Metadata {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }
}

/// A JSON object of strings that refuses a repeated key, where serde would keep the last one
/// (and another reader might keep the first).
impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Unique;
        impl<'de> serde::de::Visitor<'de> for Unique {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object whose values are strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "metadata key {key:?} appears twice"
                        )));
                    }
                    out.insert(key, value);
                }
                Ok(Metadata(out))
            }
        }
        d.deserialize_map(Unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The keys are the format (§3.1): bundles already built carry exactly these spellings.
    #[test]
    fn records_the_documented_keys() {
        let artifact = Metadata::artifact(ArtifactFacts {
            product: "elastic-agent".into(),
            version: "9.2.2".into(),
            platform: "linux-x86_64".into(),
            package: "archive".into(),
            fips: false,
            sha512: "ab".into(),
            pgp_signer: "D88734F8".into(),
        });
        assert_eq!(
            serde_json::to_value(&artifact).unwrap(),
            json!({"product": "elastic-agent", "version": "9.2.2", "platform": "linux-x86_64",
                   "package": "archive", "fips": "false", "sha512": "ab", "pgp_signer": "D88734F8"})
        );
        assert_eq!(
            serde_json::to_value(Metadata::sidecar("beats/a.zip", SidecarFormat::PgpSignature))
                .unwrap(),
            json!({"artifact": "beats/a.zip", "format": "pgp-signature"})
        );
        let mut policy = Metadata::default();
        policy.set_policy(PolicyFacts { id: "p".into(), revision: 7, name: Some("P".into()) });
        assert_eq!(
            serde_json::to_value(&policy).unwrap(),
            json!({"policy_id": "p", "revision": "7", "name": "P"})
        );
        let mut cert = Metadata::default();
        cert.set_certificate(CertificateFacts {
            subject: "CN=a".into(),
            issuer: "CN=ca".into(),
            not_after: time::macros::datetime!(2027-01-02 03:04:05 UTC),
            sha256_fingerprint: "AB:CD".into(),
            certificates: 2,
        });
        assert_eq!(
            serde_json::to_value(&cert).unwrap(),
            json!({"subject": "CN=a", "issuer": "CN=ca", "not_after": "2027-01-02T03:04:05Z",
                   "sha256_fingerprint": "AB:CD", "certificates": "2"})
        );
        let mut key = Metadata::default();
        key.set_pgp_key(&PgpKeyFacts {
            fingerprints: vec!["A".into(), "B".into()],
            signs_artifacts: true,
        });
        assert_eq!(
            serde_json::to_value(&key).unwrap(),
            json!({"fingerprints": "A,B", "purpose": "artifact-signing"})
        );
        let mut local_key = Metadata::default();
        local_key
            .set_pgp_key(&PgpKeyFacts { fingerprints: vec!["A".into()], signs_artifacts: false });
        assert_eq!(serde_json::to_value(&local_key).unwrap(), json!({"fingerprints": "A"}));
        let manifest = Metadata::endpoint_manifest(
            "9.2.2",
            Some("1.0.2431"),
            Some(time::macros::datetime!(2026-12-01 08:30:00 UTC)),
        );
        assert_eq!(
            serde_json::to_value(&manifest).unwrap(),
            json!({"endpoint_version": "9.2.2", "manifest_version": "1.0.2431",
                   "date": "2026-12-01T08:30:00Z"})
        );
        assert_eq!(
            serde_json::to_value(Metadata::endpoint_manifest("8.19.4", None, None)).unwrap(),
            json!({"endpoint_version": "8.19.4"})
        );
    }

    #[test]
    fn reads_back_what_it_records() {
        let artifact = Metadata::artifact(ArtifactFacts {
            product: "fleet-server".into(),
            version: "9.3.0-SNAPSHOT".into(),
            platform: "windows-x86_64".into(),
            package: "msi".into(),
            fips: true,
            sha512: String::new(),
            pgp_signer: String::new(),
        });
        assert_eq!(artifact.product(), Some("fleet-server"));
        assert_eq!(artifact.version(), Some("9.3.0-SNAPSHOT"));
        assert_eq!(artifact.platform(), Some("windows-x86_64"));
        assert_eq!(artifact.package(), Some("msi"));
        assert!(artifact.fips());
        assert_eq!(artifact.policy_id(), None, "no key of another kind");
        let mut policy = Metadata::default();
        policy.set_policy(PolicyFacts { id: "p".into(), revision: 3, name: None });
        assert_eq!(
            (policy.policy_id(), policy.policy_revision(), policy.policy_name()),
            (Some("p"), Some("3"), None)
        );
        let mut key = Metadata::default();
        key.set_pgp_key(&PgpKeyFacts { fingerprints: Vec::new(), signs_artifacts: true });
        assert!(key.signs_artifacts());
    }

    #[test]
    fn a_spec_keeps_its_own_keys_and_facts_win_over_them() {
        let mut m = Metadata::from(BTreeMap::from([
            ("team".to_owned(), "ops".to_owned()),
            ("name".to_owned(), "from the spec".to_owned()),
            ("policy_id".to_owned(), "spoofed".to_owned()),
        ]));
        m.set_policy(PolicyFacts { id: "real".into(), revision: 1, name: None });
        assert_eq!(m.policy_id(), Some("real"));
        assert_eq!(m.policy_name(), Some("from the spec"), "a policy without a name keeps it");
        assert_eq!(serde_json::to_value(&m).unwrap()["team"], "ops");
    }

    #[test]
    fn hostile_values_are_only_what_they_say() {
        // Keys a builder never writes, and values that are almost right, mean nothing.
        let m: Metadata = serde_json::from_value(json!({
            "fips": "TRUE", "purpose": "artifact-signing ", "Policy_id": "x"
        }))
        .unwrap();
        assert!(!m.fips());
        assert!(!m.signs_artifacts());
        assert_eq!(m.policy_id(), None);
        let twice = r#"{"version": "1", "version": "2"}"#;
        let err = serde_json::from_str::<Metadata>(twice).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        assert!(serde_json::from_value::<Metadata>(json!({"version": 9})).is_err());
    }
}
