//! Artifact ids: one Elastic release file, named exactly as Elastic's download site names it.

use std::fmt;
use std::str::FromStr;

/// What an id failed to parse for. Messages list the valid values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("unknown product {0:?} (valid: elastic-agent, fleet-server)")]
    Product(String),
    #[error("version {0:?} is not MAJOR.MINOR.PATCH (optionally -SNAPSHOT)")]
    Version(String),
    #[error("unknown platform {found:?} (valid: {valid})")]
    Platform { found: String, valid: String },
    #[error("unknown package kind {found:?} (valid: {valid})")]
    Package { found: String, valid: String },
    #[error("{product} has no {package} package for {platform}")]
    Unavailable { product: Product, package: PackageKind, platform: Platform },
    #[error("{product} has no FIPS build")]
    NoFips { product: Product },
    #[error("{0:?} is not the name of an Elastic agent or Fleet Server release file")]
    FileName(String),
}

/// An Elastic product Ferry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Product {
    ElasticAgent,
    FleetServer,
}

impl Product {
    pub const ALL: [Product; 2] = [Product::ElasticAgent, Product::FleetServer];

    pub fn as_str(self) -> &'static str {
        match self {
            Product::ElasticAgent => "elastic-agent",
            Product::FleetServer => "fleet-server",
        }
    }

    /// The folder below `downloads/` that Elastic publishes the product in.
    pub fn folder(self) -> &'static str {
        match self {
            Product::ElasticAgent => "beats/elastic-agent",
            Product::FleetServer => "fleet-server",
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Product {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Product::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| IdError::Product(s.into()))
    }
}

/// A release version: `MAJOR.MINOR.PATCH`, optionally `-SNAPSHOT`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub snapshot: bool,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if self.snapshot {
            f.write_str("-SNAPSHOT")?;
        }
        Ok(())
    }
}

impl FromStr for Version {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = || IdError::Version(s.into());
        let (core, snapshot) = match s.strip_suffix("-SNAPSHOT") {
            Some(core) => (core, true),
            None => (s, false),
        };
        let mut parts = core.split('.');
        let mut number = || -> Result<u32, IdError> {
            let p = parts.next().ok_or_else(err)?;
            // No signs, no leading zeros: one spelling per version.
            if p.is_empty()
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                return Err(err());
            }
            p.parse().map_err(|_| err())
        };
        let (major, minor, patch) = (number()?, number()?, number()?);
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Version { major, minor, patch, snapshot })
    }
}

/// An operating system and processor, as Elastic's file names spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Platform {
    LinuxX86_64,
    LinuxArm64,
    LinuxX86,
    DarwinX86_64,
    DarwinAarch64,
    WindowsX86_64,
    WindowsArm64,
    WindowsX86,
}

impl Platform {
    pub const ALL: [Platform; 8] = [
        Platform::LinuxX86_64,
        Platform::LinuxArm64,
        Platform::LinuxX86,
        Platform::DarwinX86_64,
        Platform::DarwinAarch64,
        Platform::WindowsX86_64,
        Platform::WindowsArm64,
        Platform::WindowsX86,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::LinuxX86_64 => "linux-x86_64",
            Platform::LinuxArm64 => "linux-arm64",
            Platform::LinuxX86 => "linux-x86",
            Platform::DarwinX86_64 => "darwin-x86_64",
            Platform::DarwinAarch64 => "darwin-aarch64",
            Platform::WindowsX86_64 => "windows-x86_64",
            Platform::WindowsArm64 => "windows-arm64",
            Platform::WindowsX86 => "windows-x86",
        }
    }

    pub fn is_windows(self) -> bool {
        matches!(self, Platform::WindowsX86_64 | Platform::WindowsArm64 | Platform::WindowsX86)
    }

    /// The name's architecture part in Debian's spelling (`amd64`, `arm64`), for `.deb` files.
    fn deb_arch(self) -> Option<&'static str> {
        match self {
            Platform::LinuxX86_64 => Some("amd64"),
            Platform::LinuxArm64 => Some("arm64"),
            _ => None,
        }
    }

    /// The name's architecture part in RPM's spelling (`x86_64`, `aarch64`), for `.rpm` files.
    fn rpm_arch(self) -> Option<&'static str> {
        match self {
            Platform::LinuxX86_64 => Some("x86_64"),
            Platform::LinuxArm64 => Some("aarch64"),
            _ => None,
        }
    }

    fn valid() -> String {
        Platform::ALL.map(Platform::as_str).join(", ")
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| IdError::Platform { found: s.into(), valid: Platform::valid() })
    }
}

/// How a release file is packaged. Upgrades always use the archive; the others install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PackageKind {
    /// `.tar.gz` (Linux, macOS) or `.zip` (Windows): what agents download to upgrade.
    Archive,
    Deb,
    Rpm,
    Msi,
}

impl PackageKind {
    pub const ALL: [PackageKind; 4] =
        [PackageKind::Archive, PackageKind::Deb, PackageKind::Rpm, PackageKind::Msi];

    pub fn as_str(self) -> &'static str {
        match self {
            PackageKind::Archive => "archive",
            PackageKind::Deb => "deb",
            PackageKind::Rpm => "rpm",
            PackageKind::Msi => "msi",
        }
    }
}

impl fmt::Display for PackageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PackageKind {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        PackageKind::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| IdError::Package {
            found: s.into(),
            valid: PackageKind::ALL.map(PackageKind::as_str).join(", "),
        })
    }
}

/// One release file. Constructed only through [`ArtifactId::new`] or parsing, both of which
/// refuse combinations Elastic does not publish.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactId {
    product: Product,
    version: Version,
    platform: Platform,
    package: PackageKind,
    fips: bool,
}

impl ArtifactId {
    pub fn new(
        product: Product,
        version: Version,
        platform: Platform,
        package: PackageKind,
        fips: bool,
    ) -> Result<Self, IdError> {
        if fips && product != Product::ElasticAgent {
            return Err(IdError::NoFips { product });
        }
        let available = match package {
            PackageKind::Archive => true,
            PackageKind::Deb => product == Product::ElasticAgent && platform.deb_arch().is_some(),
            PackageKind::Rpm => product == Product::ElasticAgent && platform.rpm_arch().is_some(),
            PackageKind::Msi => {
                product == Product::ElasticAgent && platform == Platform::WindowsX86_64
            }
        };
        if !available {
            return Err(IdError::Unavailable { product, package, platform });
        }
        Ok(Self { product, version, platform, package, fips })
    }

    pub fn product(&self) -> Product {
        self.product
    }

    pub fn version(&self) -> &Version {
        &self.version
    }

    pub fn platform(&self) -> Platform {
        self.platform
    }

    pub fn package(&self) -> PackageKind {
        self.package
    }

    pub fn fips(&self) -> bool {
        self.fips
    }

    /// `elastic-agent` or `elastic-agent-fips` (and so on): the name's stem.
    fn stem(&self) -> String {
        if self.fips { format!("{}-fips", self.product) } else { self.product.to_string() }
    }

    /// The file name on Elastic's download site, e.g.
    /// `elastic-agent-9.2.2-linux-x86_64.tar.gz` or `elastic-agent-9.2.2-amd64.deb`.
    pub fn file_name(&self) -> String {
        let (stem, v) = (self.stem(), &self.version);
        match self.package {
            PackageKind::Archive if self.platform.is_windows() => {
                format!("{stem}-{v}-{}.zip", self.platform)
            }
            PackageKind::Archive => format!("{stem}-{v}-{}.tar.gz", self.platform),
            PackageKind::Deb => {
                format!("{stem}-{v}-{}.deb", self.platform.deb_arch().expect("checked"))
            }
            PackageKind::Rpm => {
                format!("{stem}-{v}-{}.rpm", self.platform.rpm_arch().expect("checked"))
            }
            PackageKind::Msi => format!("{stem}-{v}-{}.msi", self.platform),
        }
    }

    /// The path below `downloads/`, e.g. `beats/elastic-agent/elastic-agent-9.2.2-linux-x86_64.tar.gz`.
    pub fn mirror_path(&self) -> String {
        format!("{}/{}", self.product.folder(), self.file_name())
    }

    /// Parses a release file name back into its id.
    pub fn from_file_name(name: &str) -> Result<Self, IdError> {
        let err = || IdError::FileName(name.into());
        let (product, rest) = Product::ALL
            .into_iter()
            .find_map(|p| {
                name.strip_prefix(p.as_str()).and_then(|r| r.strip_prefix('-')).map(|r| (p, r))
            })
            .ok_or_else(err)?;
        let (fips, rest) = match rest.strip_prefix("fips-") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        // The version ends at the first '-' that is not the start of "-SNAPSHOT".
        let version_end = rest
            .match_indices('-')
            .map(|(i, _)| i)
            .find(|&i| !rest[i..].starts_with("-SNAPSHOT"))
            .ok_or_else(err)?;
        let version: Version = rest[..version_end].parse().map_err(|_| err())?;
        let suffix = &rest[version_end + 1..];
        let (platform, package) = if let Some(p) = suffix.strip_suffix(".tar.gz") {
            (p.parse().map_err(|_| err())?, PackageKind::Archive)
        } else if let Some(p) = suffix.strip_suffix(".zip") {
            (p.parse().map_err(|_| err())?, PackageKind::Archive)
        } else if let Some(p) = suffix.strip_suffix(".msi") {
            (p.parse().map_err(|_| err())?, PackageKind::Msi)
        } else if let Some(a) = suffix.strip_suffix(".deb") {
            let platform =
                Platform::ALL.into_iter().find(|p| p.deb_arch() == Some(a)).ok_or_else(err)?;
            (platform, PackageKind::Deb)
        } else if let Some(a) = suffix.strip_suffix(".rpm") {
            let platform =
                Platform::ALL.into_iter().find(|p| p.rpm_arch() == Some(a)).ok_or_else(err)?;
            (platform, PackageKind::Rpm)
        } else {
            return Err(err());
        };
        let id = Self::new(product, version, platform, package, fips).map_err(|_| err())?;
        // Round-trip check: `.zip` for Linux or `.tar.gz` for Windows is not a real name.
        if id.file_name() != name {
            return Err(err());
        }
        Ok(id)
    }

    /// Parses a path below `downloads/`, requiring the product's folder.
    pub fn from_mirror_path(path: &str) -> Result<Self, IdError> {
        let (folder, name) = path.rsplit_once('/').ok_or_else(|| IdError::FileName(path.into()))?;
        let id = Self::from_file_name(name)?;
        if folder != id.product.folder() {
            return Err(IdError::FileName(path.into()));
        }
        Ok(id)
    }
}

impl fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn names_match_elastic() {
        let agent =
            |p, k, fips| ArtifactId::new(Product::ElasticAgent, v("9.2.2"), p, k, fips).unwrap();
        let cases = [
            (
                agent(Platform::LinuxX86_64, PackageKind::Archive, false),
                "beats/elastic-agent/elastic-agent-9.2.2-linux-x86_64.tar.gz",
            ),
            (
                agent(Platform::LinuxArm64, PackageKind::Archive, true),
                "beats/elastic-agent/elastic-agent-fips-9.2.2-linux-arm64.tar.gz",
            ),
            (
                agent(Platform::DarwinAarch64, PackageKind::Archive, false),
                "beats/elastic-agent/elastic-agent-9.2.2-darwin-aarch64.tar.gz",
            ),
            (
                agent(Platform::WindowsX86_64, PackageKind::Archive, false),
                "beats/elastic-agent/elastic-agent-9.2.2-windows-x86_64.zip",
            ),
            (
                agent(Platform::WindowsX86_64, PackageKind::Msi, false),
                "beats/elastic-agent/elastic-agent-9.2.2-windows-x86_64.msi",
            ),
            (
                agent(Platform::LinuxX86_64, PackageKind::Deb, false),
                "beats/elastic-agent/elastic-agent-9.2.2-amd64.deb",
            ),
            (
                agent(Platform::LinuxArm64, PackageKind::Deb, false),
                "beats/elastic-agent/elastic-agent-9.2.2-arm64.deb",
            ),
            (
                agent(Platform::LinuxX86_64, PackageKind::Rpm, false),
                "beats/elastic-agent/elastic-agent-9.2.2-x86_64.rpm",
            ),
            (
                agent(Platform::LinuxArm64, PackageKind::Rpm, false),
                "beats/elastic-agent/elastic-agent-9.2.2-aarch64.rpm",
            ),
            (
                ArtifactId::new(
                    Product::FleetServer,
                    v("8.19.4"),
                    Platform::LinuxX86_64,
                    PackageKind::Archive,
                    false,
                )
                .unwrap(),
                "fleet-server/fleet-server-8.19.4-linux-x86_64.tar.gz",
            ),
        ];
        for (id, path) in cases {
            assert_eq!(id.mirror_path(), path);
            assert_eq!(ArtifactId::from_mirror_path(path).unwrap(), id, "{path}");
        }
        let snap =
            ArtifactId::from_file_name("elastic-agent-9.3.0-SNAPSHOT-linux-x86_64.tar.gz").unwrap();
        assert!(snap.version().snapshot);
    }

    #[test]
    fn refuses_what_elastic_does_not_publish() {
        assert!(matches!(
            ArtifactId::new(
                Product::ElasticAgent,
                v("9.2.2"),
                Platform::DarwinX86_64,
                PackageKind::Deb,
                false
            ),
            Err(IdError::Unavailable { .. })
        ));
        assert!(matches!(
            ArtifactId::new(
                Product::FleetServer,
                v("9.2.2"),
                Platform::LinuxX86_64,
                PackageKind::Archive,
                true
            ),
            Err(IdError::NoFips { .. })
        ));
        for bad in [
            "elastic-agent-9.2.2-linux-x86_64.zip",
            "elastic-agent-9.2-linux-x86_64.tar.gz",
            "elastic-agent-09.2.2-linux-x86_64.tar.gz",
            "elastic-agent-9.2.2-linux-mips.tar.gz",
            "filebeat-9.2.2-linux-x86_64.tar.gz",
            "elastic-agent-9.2.2-amd64.rpm",
        ] {
            assert!(ArtifactId::from_file_name(bad).is_err(), "{bad}");
        }
        assert!(
            ArtifactId::from_mirror_path("fleet-server/elastic-agent-9.2.2-linux-x86_64.tar.gz")
                .is_err()
        );
    }

    #[test]
    fn errors_list_valid_values() {
        let e = "linux-mips".parse::<Platform>().unwrap_err().to_string();
        assert!(e.contains("linux-x86_64") && e.contains("windows-arm64"), "{e}");
        let e = "dmg".parse::<PackageKind>().unwrap_err().to_string();
        assert!(e.contains("archive, deb, rpm, msi"), "{e}");
    }
}
