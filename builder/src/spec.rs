//! The bundle spec file: a TOML description of what goes into one bundle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ferry_manifests::{BundleName, EntryName, Kind, Mode, PayloadSource};
use serde::Deserialize;
use time::OffsetDateTime;

/// How long a bundle stays valid when the spec says nothing.
pub const DEFAULT_VALID_DAYS: u32 = 90;

/// The spec file as written. Elastic artifacts (upstream, versions, platforms) will join as
/// further tables; every table refuses unknown fields, so a typo is an error, not a no-op.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub bundle: BundleSection,
    #[serde(default, rename = "file")]
    pub files: Vec<FileSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSection {
    pub name: BundleName,
    pub sequence: u64,
    /// Absolute expiry, RFC 3339. Exclusive with `valid_days`.
    pub expires: Option<String>,
    /// Expiry relative to the bundle's creation time.
    pub valid_days: Option<u32>,
}

/// Kinds a spec may give a local file; artifact kinds are set by the builder itself.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    Policy,
    Certificate,
    PgpKey,
    Other,
}

impl FileKind {
    pub fn kind(self) -> Kind {
        match self {
            FileKind::Policy => Kind::Policy,
            FileKind::Certificate => Kind::Certificate,
            FileKind::PgpKey => Kind::PgpKey,
            FileKind::Other => Kind::Other,
        }
    }

    /// The folder a file of this kind goes to when the spec names no path.
    pub fn default_dir(self) -> &'static str {
        match self {
            FileKind::Policy => "policies",
            FileKind::Certificate => "certificates",
            FileKind::PgpKey => "pgp",
            FileKind::Other => "files",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSection {
    /// The local file, relative to the spec file's folder.
    pub source: PathBuf,
    pub kind: FileKind,
    /// Path inside the bundle; defaults to `<kind folder>/<file name>`.
    pub path: Option<String>,
    #[serde(default)]
    pub executable: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Spec {
    /// Reads and parses a spec file; errors name the file and the offending line.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read spec {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid spec {}", path.display()))
    }

    /// The expiry for a bundle created at `created`.
    pub fn expires(&self, created: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
        match (&self.bundle.expires, self.bundle.valid_days) {
            (Some(_), Some(_)) => bail!("[bundle] sets both `expires` and `valid_days`; keep one"),
            (Some(text), None) => parse_time(text).context("[bundle] expires"),
            (None, days) => {
                Ok(created + time::Duration::days(i64::from(days.unwrap_or(DEFAULT_VALID_DAYS))))
            }
        }
    }

    /// The payload files, with sources resolved against `base` (the spec's folder).
    pub fn payload(&self, base: &Path) -> anyhow::Result<Vec<PayloadSource>> {
        self.files
            .iter()
            .map(|f| {
                let source = base.join(&f.source);
                let path = match &f.path {
                    Some(p) => p.clone(),
                    None => {
                        let name =
                            f.source.file_name().and_then(|n| n.to_str()).with_context(|| {
                                format!("{} has no usable file name", f.source.display())
                            })?;
                        format!("{}/{name}", f.kind.default_dir())
                    }
                };
                let path = EntryName::new(&path).with_context(|| {
                    format!("unsafe bundle path {path:?} for {}", source.display())
                })?;
                Ok(PayloadSource {
                    path,
                    source,
                    kind: f.kind.kind(),
                    mode: if f.executable { Mode::Executable } else { Mode::Regular },
                    metadata: f.metadata.clone(),
                })
            })
            .collect()
    }
}

/// Parses an RFC 3339 time.
pub fn parse_time(text: &str) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{text:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Spec> {
        Ok(toml::from_str(text)?)
    }

    #[test]
    fn defaults_and_paths() {
        let spec = parse(
            r#"
            [bundle]
            name = "site"
            sequence = 2
            [[file]]
            source = "p/default.yml"
            kind = "policy"
            [[file]]
            source = "ca.pem"
            kind = "certificate"
            path = "tls/ca.pem"
            "#,
        )
        .unwrap();
        let created = time::macros::datetime!(2026-01-01 00:00 UTC);
        assert_eq!(spec.expires(created).unwrap(), time::macros::datetime!(2026-04-01 00:00 UTC));
        let payload = spec.payload(Path::new("/base")).unwrap();
        assert_eq!(payload[0].path.as_str(), "policies/default.yml");
        assert_eq!(payload[0].source, Path::new("/base/p/default.yml"));
        assert_eq!(payload[1].path.as_str(), "tls/ca.pem");
    }

    #[test]
    fn refusals() {
        let head = "[bundle]\nname = \"site\"\nsequence = 1\n";
        assert!(parse(&format!("{head}colour = 1\n")).is_err());
        let err =
            parse(&format!("{head}[[file]]\nsource = \"x\"\nkind = \"agent\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("policy"), "lists valid kinds: {err:#}");
        let spec =
            parse(&format!("{head}[[file]]\nsource = \"x\"\nkind = \"other\"\npath = \"../x\"\n"))
                .unwrap();
        assert!(spec.payload(Path::new(".")).is_err());
        let both =
            parse(&format!("{head}expires = \"2027-01-01T00:00:00Z\"\nvalid_days = 3\n")).unwrap();
        assert!(both.expires(OffsetDateTime::UNIX_EPOCH).is_err());
        assert!(parse("[bundle]\nname = \"Bad Name\"\nsequence = 1\n").is_err());
    }
}
