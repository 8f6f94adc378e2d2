//! The signed manifest (format 1, and format 2 for deltas): what a bundle holds, byte for byte.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::limits::Limits;
use crate::metadata::Metadata;
use crate::name::{BundleName, CollisionError, EntryName, check_collisions};

/// The manifest format of a full bundle.
pub const FORMAT: u32 = 1;

/// The manifest format of a delta bundle: format 1 plus the `base` it was made against and the
/// entries it does not carry because that base holds them (`in_base`). A reader of format 1
/// alone refuses it by its number, rather than by an unknown field.
pub const DELTA_FORMAT: u32 = 2;

/// A SHA-256 digest, shown and serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses 64 lowercase hex digits; uppercase is refused so that one digest has one spelling.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("sha256 {s:?} is not 64 lowercase hex digits"))
        })
    }
}

/// What a payload file is for. The appliance decides how to use a file from its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    AgentArtifact,
    FleetServerArtifact,
    ArtifactSidecar,
    Policy,
    Certificate,
    PgpKey,
    Package,
    /// Elastic Defend's global artifacts: a manifest zip of `artifacts.security.elastic.co` and
    /// the files it lists, served by the mirror at Elastic's paths.
    EndpointArtifact,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::AgentArtifact,
        Kind::FleetServerArtifact,
        Kind::ArtifactSidecar,
        Kind::Policy,
        Kind::Certificate,
        Kind::PgpKey,
        Kind::Package,
        Kind::EndpointArtifact,
        Kind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AgentArtifact => "agent-artifact",
            Kind::FleetServerArtifact => "fleet-server-artifact",
            Kind::ArtifactSidecar => "artifact-sidecar",
            Kind::Policy => "policy",
            Kind::Certificate => "certificate",
            Kind::PgpKey => "pgp-key",
            Kind::Package => "package",
            Kind::EndpointArtifact => "endpoint-artifact",
            Kind::Other => "other",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// File permission of a payload file. Only two are possible, so nothing setuid, world-writable
/// or otherwise surprising can ever be carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// `0644`
    #[default]
    Regular,
    /// `0755`
    Executable,
}

impl Mode {
    pub fn bits(self) -> u32 {
        match self {
            Mode::Regular => 0o644,
            Mode::Executable => 0o755,
        }
    }

    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            0o644 => Some(Mode::Regular),
            0o755 => Some(Mode::Executable),
            _ => None,
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.bits()))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "0644" => Ok(Mode::Regular),
            "0755" => Ok(Mode::Executable),
            _ => Err(serde::de::Error::custom(format!("mode {s:?} is not \"0644\" or \"0755\""))),
        }
    }
}

/// One payload file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: EntryName,
    pub size: u64,
    pub sha256: Sha256Digest,
    pub mode: Mode,
    pub kind: Kind,
    /// Delta bundles only: the base holds content of this digest, so the archive does not carry
    /// it and the reader takes it from what it already has, checking the digest as for any
    /// entry. Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_base: bool,
    /// Kind-specific facts (product, version, platform, policy id, certificate subject …).
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

/// The manifest of one bundle. See `docs/bundle-format.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: BundleName,
    pub sequence: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    /// The program that wrote the bundle, such as `ferry 0.1.0`.
    pub builder: String,
    /// Delta bundles only (format 2): the earlier bundle whose content this one leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
    /// Payload files in bundle order (sorted by path, byte-wise).
    pub files: Vec<FileEntry>,
}

/// The earlier bundle of the same name a delta was made against: enough to name it to a person
/// and to tell it from another bundle of that name and sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRef {
    pub name: BundleName,
    pub sequence: u64,
    /// SHA-256 of the base's `manifest.json`.
    pub manifest_sha256: Sha256Digest,
}

impl fmt::Display for BaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (manifest sha256 {})", self.name, self.sequence, self.manifest_sha256)
    }
}

/// A manifest read after its `expires` (and any grace): what refuses it, or what an override
/// let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub expires: OffsetDateTime,
    pub now: OffsetDateTime,
}

impl fmt::Display for Expired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (expires, now) = (crate::rfc3339(self.expires), crate::rfc3339(self.now));
        write!(f, "bundle expired at {expires} (now {now})")
    }
}

impl std::error::Error for Expired {}

/// Why manifest bytes are not an acceptable format-1 manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest is not valid JSON for its format: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "manifest format is {0}, this reader understands formats {FORMAT} (full) and {DELTA_FORMAT} (delta)"
    )]
    Format(u32),
    #[error("manifest format {DELTA_FORMAT} is a delta, but it names no base")]
    DeltaWithoutBase,
    #[error(
        "manifest format {FORMAT} is a full bundle, but it {what}: only format {DELTA_FORMAT} (a delta) may"
    )]
    DeltaFieldInFull { what: &'static str },
    #[error(
        "a delta's base must be an earlier bundle of the same name: this is {name} {sequence}, its base {base}"
    )]
    BaseNotEarlier { name: BundleName, sequence: u64, base: Box<BaseRef> },
    #[error("manifest sequence must be at least 1")]
    ZeroSequence,
    #[error("manifest expires ({expires}) before it was created ({created})")]
    ExpiresBeforeCreated { created: String, expires: String },
    #[error("manifest lists {count} files, the limit is {max}")]
    TooManyFiles { count: usize, max: usize },
    #[error("manifest entry {path} declares {size} bytes, the limit per file is {max}")]
    FileTooLarge { path: EntryName, size: u64, max: u64 },
    #[error("manifest declares {total} bytes in all, the limit is {max}")]
    TotalTooLarge { total: u64, max: u64 },
    #[error("manifest files are not sorted by path: {later} comes after {earlier}")]
    NotSorted { earlier: EntryName, later: EntryName },
    #[error("manifest paths collide: {0}")]
    Collision(#[from] CollisionError),
}

impl Manifest {
    /// The exact bytes that are signed and stored in the bundle: pretty JSON with a final newline.
    /// Readers never re-serialise; they verify the bytes they were given.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Parses manifest bytes and checks every rule of format 1 against `limits`.
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Self, ManifestError> {
        // Check the format number alone first, so that a future format is reported as such rather
        // than as a schema error.
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        if probe.format != FORMAT && probe.format != DELTA_FORMAT {
            return Err(ManifestError::Format(probe.format));
        }
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.validate(limits)?;
        Ok(manifest)
    }

    /// Checks the rules that types alone cannot express.
    pub fn validate(&self, limits: &Limits) -> Result<(), ManifestError> {
        match (self.format, &self.base) {
            (FORMAT, Some(_)) => {
                return Err(ManifestError::DeltaFieldInFull { what: "names a base" });
            }
            (FORMAT, None) if self.files.iter().any(|f| f.in_base) => {
                return Err(ManifestError::DeltaFieldInFull { what: "marks entries in_base" });
            }
            (FORMAT, None) => {}
            (DELTA_FORMAT, None) => return Err(ManifestError::DeltaWithoutBase),
            (DELTA_FORMAT, Some(base)) => {
                if base.name != self.name || base.sequence >= self.sequence {
                    return Err(ManifestError::BaseNotEarlier {
                        name: self.name.clone(),
                        sequence: self.sequence,
                        base: Box::new(base.clone()),
                    });
                }
            }
            (other, _) => return Err(ManifestError::Format(other)),
        }
        if self.sequence == 0 {
            return Err(ManifestError::ZeroSequence);
        }
        if self.expires < self.created {
            return Err(ManifestError::ExpiresBeforeCreated {
                created: crate::rfc3339(self.created),
                expires: crate::rfc3339(self.expires),
            });
        }
        if self.files.len() > limits.max_entries {
            return Err(ManifestError::TooManyFiles {
                count: self.files.len(),
                max: limits.max_entries,
            });
        }
        let mut total: u64 = 0;
        for file in &self.files {
            if file.size > limits.max_entry_size {
                return Err(ManifestError::FileTooLarge {
                    path: file.path.clone(),
                    size: file.size,
                    max: limits.max_entry_size,
                });
            }
            total = total.saturating_add(file.size);
        }
        if total > limits.max_total_size {
            return Err(ManifestError::TotalTooLarge { total, max: limits.max_total_size });
        }
        check_collisions(self.files.iter().map(|f| &f.path))?;
        for pair in self.files.windows(2) {
            if pair[0].path >= pair[1].path {
                return Err(ManifestError::NotSorted {
                    earlier: pair[0].path.clone(),
                    later: pair[1].path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether `expires` lies more than `grace` before `now`. Reading a bundle applies this (see
    /// `Expiry`); it is here so that a manifest kept apart from its bundle can be asked too.
    pub fn expired(&self, now: OffsetDateTime, grace: time::Duration) -> Option<Expired> {
        // A deadline past the last representable time (year 9999, or a grace as large as the
        // appliance's configuration allows) has not passed; plain `+` would panic there.
        let expired = match self.expires.checked_add(grace) {
            Some(deadline) => deadline < now,
            None => grace.is_negative(),
        };
        expired.then_some(Expired { expires: self.expires, now })
    }

    /// Sum of all payload sizes: what the release holds, whether or not the bundle carries it.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The entries the archive carries, in archive order: all of them but a delta's `in_base`.
    pub fn carried(&self) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(|f| !f.in_base)
    }

    /// Sum of the sizes of the entries the archive carries.
    pub fn carried_size(&self) -> u64 {
        self.carried().map(|f| f.size).sum()
    }

    /// The file name a bundle of this manifest is written under: `NAME-SEQUENCE.ferry`.
    pub fn bundle_file_name(&self) -> String {
        format!("{}-{}.ferry", self.name, self.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            name: BundleName::new("site-a").unwrap(),
            sequence: 3,
            created: time::macros::datetime!(2026-11-01 00:00 UTC),
            expires: time::macros::datetime!(2027-02-01 00:00 UTC),
            builder: "ferry 0.1.0".into(),
            base: None,
            files: vec![
                FileEntry {
                    path: EntryName::new("a/one").unwrap(),
                    size: 1,
                    sha256: Sha256Digest::of(b"1"),
                    mode: Mode::Regular,
                    kind: Kind::Policy,
                    in_base: false,
                    metadata: Metadata::from(std::collections::BTreeMap::from([(
                        "policy_id".into(),
                        "p".into(),
                    )])),
                },
                FileEntry {
                    path: EntryName::new("b").unwrap(),
                    size: 0,
                    sha256: Sha256Digest::of(b""),
                    mode: Mode::Executable,
                    kind: Kind::Other,
                    in_base: false,
                    metadata: Metadata::default(),
                },
            ],
        }
    }

    #[test]
    fn kinds_are_spelled_as_serialised() {
        // The manifest's `kind` and what `inspect` and the appliance print must be one word.
        for kind in Kind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            let back: Kind = serde_json::from_value(kind.as_str().into()).unwrap();
            assert_eq!(back, kind);
        }
        assert_eq!(Kind::EndpointArtifact.as_str(), "endpoint-artifact");
    }

    #[test]
    fn round_trips_through_bytes() {
        let m = sample();
        let bytes = m.to_bytes();
        assert_eq!(Manifest::parse(&bytes, &Limits::default()).unwrap(), m);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"created\": \"2026-11-01T00:00:00Z\""), "{text}");
        assert!(text.contains("\"mode\": \"0755\""), "{text}");
    }

    #[test]
    fn a_delta_round_trips_and_says_what_it_carries() {
        let mut m = sample();
        m.format = DELTA_FORMAT;
        m.base = Some(BaseRef {
            name: m.name.clone(),
            sequence: 2,
            manifest_sha256: Sha256Digest::of(b"base"),
        });
        m.files[0].in_base = true;
        let bytes = m.to_bytes();
        assert_eq!(Manifest::parse(&bytes, &Limits::default()).unwrap(), m);
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.matches("\"in_base\": true").count(), 1, "{text}");
        assert!(!text.contains("in_base\": false"), "{text}");
        assert_eq!(m.carried().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!((m.total_size(), m.carried_size()), (1, 0));
        // A full manifest's bytes do not change: no base, no in_base written.
        let full = String::from_utf8(sample().to_bytes()).unwrap();
        assert!(!full.contains("base"), "{full}");
    }

    #[test]
    fn expiry_near_the_end_of_time_does_not_overflow() {
        let mut manifest = sample();
        let now = time::macros::datetime!(2026-11-15 00:00 UTC);
        let day = time::Duration::days(1);
        let largest = time::Duration::days(i64::from(u32::MAX));
        manifest.expires = time::macros::datetime!(9999-12-31 23:59:59 UTC);
        assert_eq!(manifest.expired(now, day), None);
        assert_eq!(manifest.expired(now, largest), None);
        manifest.expires = time::macros::datetime!(2026-11-01 00:00 UTC);
        assert_eq!(manifest.expired(now, largest), None);
        assert_eq!(
            manifest.expired(now, time::Duration::ZERO),
            Some(Expired { expires: manifest.expires, now })
        );
        assert_eq!(manifest.expired(now, time::Duration::days(14)), None);
        assert!(manifest.expired(now, -largest).is_some());
        let said = manifest.expired(now, time::Duration::ZERO).unwrap().to_string();
        assert_eq!(said, "bundle expired at 2026-11-01T00:00:00Z (now 2026-11-15T00:00:00Z)");
    }

    fn reparse(edit: impl FnOnce(&mut serde_json::Value)) -> ManifestError {
        let mut v = serde_json::to_value(sample()).unwrap();
        edit(&mut v);
        Manifest::parse(&serde_json::to_vec(&v).unwrap(), &Limits::default()).unwrap_err()
    }

    #[test]
    fn refuses_bad_manifests() {
        assert!(matches!(reparse(|v| v["format"] = 3.into()), ManifestError::Format(3)));
        assert!(matches!(reparse(|v| v["sequence"] = 0.into()), ManifestError::ZeroSequence));
        assert!(matches!(reparse(|v| v["extra"] = 1.into()), ManifestError::Json(_)));
        let twice = String::from_utf8(sample().to_bytes())
            .unwrap()
            .replace("\"policy_id\": \"p\"", "\"policy_id\": \"p\", \"policy_id\": \"q\"");
        let err = Manifest::parse(twice.as_bytes(), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        assert!(matches!(
            reparse(|v| v["files"][0]["path"] = "../x".into()),
            ManifestError::Json(_)
        ));
        assert!(matches!(
            reparse(|v| v["files"][0]["sha256"] = "AB".repeat(32).into()),
            ManifestError::Json(_)
        ));
        assert!(matches!(
            reparse(|v| v["files"][0]["mode"] = "4755".into()),
            ManifestError::Json(_)
        ));
        assert!(matches!(
            reparse(|v| v["files"][1]["path"] = "A/one".into()),
            ManifestError::Collision(_) | ManifestError::NotSorted { .. }
        ));
        assert!(matches!(
            reparse(|v| v["files"][0]["path"] = "c".into()),
            ManifestError::NotSorted { .. }
        ));
        assert!(matches!(
            reparse(|v| v["expires"] = "2020-01-01T00:00:00Z".into()),
            ManifestError::ExpiresBeforeCreated { .. }
        ));
        // A full bundle cannot carry a delta's fields, nor a delta go without them.
        let base = serde_json::json!({
            "name": "site-a", "sequence": 2, "manifest_sha256": "ab".repeat(32)
        });
        assert!(matches!(
            reparse(|v| v["base"] = base.clone()),
            ManifestError::DeltaFieldInFull { what: "names a base" }
        ));
        assert!(matches!(
            reparse(|v| v["files"][0]["in_base"] = true.into()),
            ManifestError::DeltaFieldInFull { what: "marks entries in_base" }
        ));
        assert!(matches!(reparse(|v| v["format"] = 2.into()), ManifestError::DeltaWithoutBase));
        let delta = |edit: fn(&mut serde_json::Value)| {
            let base = base.clone();
            reparse(move |v| {
                v["format"] = 2.into();
                v["base"] = base;
                edit(v);
            })
        };
        for later in [3, 4] {
            let err = match later {
                3 => delta(|v| v["base"]["sequence"] = 3.into()),
                _ => delta(|v| v["base"]["name"] = "site-b".into()),
            };
            assert!(matches!(err, ManifestError::BaseNotEarlier { .. }), "{err}");
        }
        assert!(matches!(delta(|v| v["base"]["extra"] = 1.into()), ManifestError::Json(_)));
        let limits = Limits { max_entries: 1, ..Limits::default() };
        assert!(matches!(
            Manifest::parse(&sample().to_bytes(), &limits),
            Err(ManifestError::TooManyFiles { count: 2, max: 1 })
        ));
    }
}
