//! The bundle spec file: a TOML description of what goes into one bundle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ferry_artifacts::{ArtifactId, IdError, PackageKind, Platform, Product, Version};
use ferry_manifests::{BundleName, EntryName, Kind, Mode, PayloadSource};
use serde::Deserialize;
use time::OffsetDateTime;

/// How long a bundle stays valid when the spec says nothing.
pub const DEFAULT_VALID_DAYS: u32 = 90;

/// The spec file as written. Every table refuses unknown fields, so a typo is an error, not a
/// silent no-op.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub bundle: BundleSection,
    /// Where Elastic artifacts come from and the PGP key they must be signed with.
    pub upstream: Option<UpstreamSection>,
    /// Elastic Agent releases to carry.
    #[serde(default, rename = "agent")]
    pub agents: Vec<ArtifactSection>,
    /// Fleet Server releases to carry.
    #[serde(default, rename = "fleet_server")]
    pub fleet_servers: Vec<ArtifactSection>,
    #[serde(default, rename = "file")]
    pub files: Vec<FileSection>,
    /// The package registry integrations come from, and the key their `.sig` must verify with.
    pub registry: Option<RegistrySection>,
    /// Integration packages to carry, each a query of the registry's `/search`.
    #[serde(default, rename = "integration")]
    pub integrations: Vec<IntegrationSection>,
    /// Where Elastic Defend's global artifacts come from (`crate::defend`).
    pub defend: Option<crate::defend::DefendSection>,
    /// Endpoint versions whose global artifacts to carry.
    #[serde(default)]
    pub endpoint_artifacts: Vec<crate::defend::EndpointArtifactsSection>,
}

/// Elastic's package registry (or a mirror of its API).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// The registry's base URL. Default: `https://epr.elastic.co`.
    pub url: Option<String>,
    /// The armored PGP key packages must be signed with, relative to the spec. Default:
    /// `[upstream]`'s `pgp_key` (Elastic signs packages with the key it signs artifacts with).
    pub pgp_key: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the registry instead of the built-in public roots.
    pub ca_file: Option<PathBuf>,
}

/// One `[[integration]]`: the packages it selects are what the registry's `/search` answers
/// for the same parameters (the names of the registry's own `distribution` tool), narrowed by
/// `version`, the newest of each package unless `all`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSection {
    /// The package's name (`package=`).
    pub name: Option<String>,
    /// An exact version (`1.60.0`) or a constraint as the registry writes them
    /// (`^1.60.0`, `>=1.50.0, <2.0.0`); needs `name`.
    pub version: Option<String>,
    /// `kibana.version = "9.2.0"`: only packages that Kibana can install.
    pub kibana: Option<KibanaQuery>,
    /// `spec.min` and `spec.max`: the package-spec versions Kibana reads.
    pub spec: Option<SpecQuery>,
    /// `integration`, `input` or `content`.
    #[serde(rename = "type")]
    pub package_type: Option<String>,
    /// One query per category; a package in any of them is selected.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Technical previews and betas too.
    #[serde(default)]
    pub prerelease: bool,
    /// Every matching version, not only the newest of each package.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KibanaQuery {
    pub version: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecQuery {
    pub min: Option<String>,
    pub max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// An `https://` URL of Elastic's `downloads/` tree (or a mirror of it). `http://` is
    /// accepted for loopback addresses only.
    pub url: Option<String>,
    /// A local folder laid out like `downloads/` (a mounted mirror), relative to the spec.
    pub dir: Option<PathBuf>,
    /// The armored PGP public key artifacts must be signed with (Elastic's
    /// `GPG-KEY-elasticsearch`), relative to the spec. It travels in the bundle.
    pub pgp_key: PathBuf,
    /// CA certificates (PEM) to trust for the upstream and proxies instead of the built-in
    /// public roots.
    pub ca_file: Option<PathBuf>,
}

/// Releases of one product: every version × platform × package combination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSection {
    pub versions: Vec<String>,
    pub platforms: Vec<String>,
    /// `archive` (what upgrades use), `deb`, `rpm`, `msi`. Default: `["archive"]`.
    #[serde(default)]
    pub packages: Vec<String>,
    /// FIPS builds (Elastic Agent only).
    #[serde(default)]
    pub fips: bool,
}

/// Where artifacts are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Base URL ending in `/`.
    Http(String),
    Dir(PathBuf),
}

impl Upstream {
    /// Where a file below `downloads/` is fetched from.
    pub fn source_of(&self, mirror_path: &str) -> String {
        match self {
            Upstream::Http(base) => format!("{base}{mirror_path}"),
            Upstream::Dir(dir) => dir.join(mirror_path).display().to_string(),
        }
    }
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

    /// Every artifact the spec asks for, sorted and without repeats.
    pub fn artifacts(&self) -> anyhow::Result<Vec<ArtifactId>> {
        let mut ids = Vec::new();
        for (product, sections, table) in [
            (Product::ElasticAgent, &self.agents, "[[agent]]"),
            (Product::FleetServer, &self.fleet_servers, "[[fleet_server]]"),
        ] {
            for (n, section) in sections.iter().enumerate() {
                let at = || format!("{table} number {}", n + 1);
                if section.versions.is_empty() || section.platforms.is_empty() {
                    bail!("{}: needs at least one version and one platform", at());
                }
                let packages = if section.packages.is_empty() {
                    vec![PackageKind::Archive]
                } else {
                    section
                        .packages
                        .iter()
                        .map(|p| p.parse::<PackageKind>())
                        .collect::<Result<_, _>>()
                        .with_context(at)?
                };
                for version in &section.versions {
                    let version: Version = version.parse().with_context(at)?;
                    for platform in &section.platforms {
                        let platform: Platform = platform.parse().with_context(at)?;
                        for package in &packages {
                            // A package kind that does not exist for a platform (deb on
                            // Windows) is skipped: specs list packages for a set of platforms.
                            match ArtifactId::new(
                                product,
                                version.clone(),
                                platform,
                                *package,
                                section.fips,
                            ) {
                                Ok(id) => ids.push(id),
                                Err(IdError::Unavailable { .. }) => {}
                                Err(e) => return Err(e).with_context(at),
                            }
                        }
                    }
                }
            }
        }
        ids.sort();
        ids.dedup();
        if !ids.is_empty() && self.upstream.is_none() {
            bail!("the spec asks for Elastic artifacts but has no [upstream] table");
        }
        Ok(ids)
    }

    /// The upstream, resolved against `base` (the spec's folder).
    pub fn upstream(&self, base: &Path) -> anyhow::Result<Option<Upstream>> {
        let Some(up) = &self.upstream else { return Ok(None) };
        Self::source("[upstream]", up.url.as_deref(), up.dir.as_deref(), base).map(Some)
    }

    /// A table's `url` or `dir` (`table` names it in errors), exactly one of them, resolved
    /// against `base` (the spec's folder).
    pub fn source(
        table: &str,
        url: Option<&str>,
        dir: Option<&Path>,
        base: &Path,
    ) -> anyhow::Result<Upstream> {
        match (url, dir) {
            (Some(_), Some(_)) => bail!("{table} sets both `url` and `dir`; keep one"),
            (None, None) => bail!("{table} needs `url` or `dir`"),
            (None, Some(dir)) => Ok(Upstream::Dir(base.join(dir))),
            (Some(url), None) => Ok(Upstream::Http(Self::http_base(url, table)?)),
        }
    }

    /// An upstream's base URL (`table` names its table in errors): `https://`, or `http://`
    /// to a loopback address, ending in `/`.
    pub fn http_base(url: &str, table: &str) -> anyhow::Result<String> {
        let loopback = ["http://127.", "http://localhost:", "http://localhost/", "http://[::1]"];
        if !(url.starts_with("https://") || loopback.iter().any(|p| url.starts_with(p))) {
            bail!("{table} url {url:?} must start with https:// (http:// only for loopback)");
        }
        let mut url = url.to_owned();
        if !url.ends_with('/') {
            url.push('/');
        }
        Ok(url)
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
                    metadata: f.metadata.clone().into(),
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
    fn artifacts_expand_and_refuse() {
        let spec = parse(
            r#"
            [bundle]
            name = "site"
            sequence = 1
            [upstream]
            url = "https://artifacts.elastic.co/downloads"
            pgp_key = "GPG-KEY-elasticsearch"
            [[agent]]
            versions = ["9.2.2", "8.19.4"]
            platforms = ["linux-x86_64", "windows-x86_64"]
            packages = ["archive", "deb"]
            [[fleet_server]]
            versions = ["9.2.2"]
            platforms = ["linux-x86_64"]
            "#,
        )
        .unwrap();
        let ids = spec.artifacts().unwrap();
        let paths: Vec<String> = ids.iter().map(ArtifactId::mirror_path).collect();
        assert_eq!(paths.len(), 7, "{paths:?}"); // 2 versions × (2 archives + 1 deb), + 1 fleet server
        assert!(paths.contains(&"beats/elastic-agent/elastic-agent-8.19.4-amd64.deb".to_owned()));
        assert!(paths.contains(&"fleet-server/fleet-server-9.2.2-linux-x86_64.tar.gz".to_owned()));
        assert_eq!(
            spec.upstream(Path::new(".")).unwrap(),
            Some(Upstream::Http("https://artifacts.elastic.co/downloads/".into()))
        );

        let bad = |extra: &str| {
            let text = format!("[bundle]\nname = \"s\"\nsequence = 1\n{extra}");
            let spec = parse(&text).unwrap();
            format!(
                "{:#}",
                spec.artifacts().and_then(|_| spec.upstream(Path::new(".")).map(drop)).unwrap_err()
            )
        };
        let up = "[upstream]\nurl = \"https://x\"\npgp_key = \"k\"\n";
        assert!(
            bad(&format!("{up}[[agent]]\nversions = [\"9\"]\nplatforms = [\"linux-x86_64\"]\n"))
                .contains("MAJOR.MINOR.PATCH")
        );
        assert!(
            bad(&format!("{up}[[agent]]\nversions = [\"9.1.0\"]\nplatforms = [\"amiga\"]\n"))
                .contains("linux-x86_64")
        );
        assert!(
            bad("[[agent]]\nversions = [\"9.1.0\"]\nplatforms = [\"linux-x86_64\"]\n")
                .contains("[upstream]")
        );
        assert!(
            bad("[upstream]\nurl = \"http://example.com\"\npgp_key = \"k\"\n").contains("https://")
        );
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
