//! Artifact ids: one Elastic release file, named exactly as Elastic's download site names it.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// What an id failed to parse for. Messages list the valid values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("unknown product {0:?} (valid: elastic-agent, fleet-server)")]
    Product(String),
    #[error(
        "version {found:?} is not MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD] ({reason}); \
         Elastic's look like 9.2.2, 9.3.0-SNAPSHOT, 9.0.0-beta1 or 8.14.1+build202406201002"
    )]
    Version { found: String, reason: String },
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

/// A release version, parsed as semver: `MAJOR.MINOR.PATCH`, then optionally a pre-release
/// and build metadata, as Elastic spells them: `9.2.2`, `9.3.0-SNAPSHOT`, `9.0.0-beta1`,
/// `8.14.1+build202406201002` (an independent agent release).
///
/// Equality, hashing and `Ord` are over the exact spelling, build metadata included, because
/// file names, storage keys and bundle metadata must match byte for byte. How Elastic orders
/// versions is [`Version::precedence_cmp`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(semver::Version);

/// The pre-release identifier, or its last `-` part, that marks Elastic's snapshot builds:
/// `9.3.0-SNAPSHOT`, `9.0.0-beta1-SNAPSHOT`.
const SNAPSHOT: &str = "SNAPSHOT";

impl Version {
    /// `MAJOR.MINOR.PATCH`, or its `-SNAPSHOT` build.
    pub fn new(major: u64, minor: u64, patch: u64, snapshot: bool) -> Self {
        let mut version = semver::Version::new(major, minor, patch);
        if snapshot {
            version.pre = semver::Prerelease::new(SNAPSHOT).expect("SNAPSHOT is an identifier");
        }
        Self(version)
    }

    pub fn major(&self) -> u64 {
        self.0.major
    }

    pub fn minor(&self) -> u64 {
        self.0.minor
    }

    pub fn patch(&self) -> u64 {
        self.0.patch
    }

    /// The pre-release without its snapshot mark, if it has one: empty for `9.3.0-SNAPSHOT`,
    /// `beta1` for `9.0.0-beta1-SNAPSHOT`.
    fn pre_before_snapshot(&self) -> Option<semver::Prerelease> {
        let pre = self.0.pre.as_str();
        if pre == SNAPSHOT {
            return Some(semver::Prerelease::EMPTY);
        }
        let before = pre.strip_suffix(SNAPSHOT)?.strip_suffix('-').filter(|b| !b.is_empty())?;
        // In `a.-SNAPSHOT` the mark is an identifier of its own (`-SNAPSHOT`), not a suffix.
        semver::Prerelease::new(before).ok()
    }

    /// Whether this is a bare `MAJOR.MINOR.PATCH`, with no pre-release and no build metadata:
    /// what Endpoint names its global artifact manifests by (`artifacts-9.2.2.zip`), and what
    /// an agent asks the PGP key route for (its upgrade target's core version).
    pub fn is_core(&self) -> bool {
        self.0.pre.is_empty() && self.0.build.is_empty()
    }

    /// Whether this is a snapshot build (`-SNAPSHOT`, alone or after another pre-release).
    pub fn snapshot(&self) -> bool {
        self.pre_before_snapshot().is_some()
    }

    /// The same version without its snapshot mark (build metadata kept). An agent's
    /// User-Agent never names `-SNAPSHOT` (it reports a snapshot as a separate flag), so this
    /// is what a snapshot agent says it runs.
    pub fn without_snapshot(&self) -> Version {
        let mut version = self.0.clone();
        if let Some(pre) = self.pre_before_snapshot() {
            version.pre = pre;
        }
        Self(version)
    }

    /// Elastic's order (Fleet Server compares with hashicorp go-version): build metadata is
    /// ignored and a pre-release sorts before its release, so `9.3.0-SNAPSHOT` < `9.3.0` and
    /// `8.14.1+build202406201002` is equal to `8.14.1`.
    pub fn precedence_cmp(&self, other: &Version) -> Ordering {
        self.0.cmp_precedence(&other.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // semver prints exactly what it parsed: one spelling per version.
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Version {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        // semver is strict: no `v`, no spaces, no leading zeros in numbers, no empty parts.
        let v = semver::Version::parse(s)
            .map_err(|e| IdError::Version { found: s.into(), reason: e.to_string() })?;
        // Elastic's pre-releases are alphaN, betaN, rcN and SNAPSHOT (9.0.0-beta1-SNAPSHOT):
        // anything else is no version of theirs, and accepting it would let a file name split
        // in two ways (`elastic-agent-9.2.2-linux-arm64.deb` as the deb of "9.2.2-linux").
        let elastic = |part: &str| {
            part == "SNAPSHOT"
                || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                || ["alpha", "beta", "rc"].iter().any(|p| {
                    part.strip_prefix(p).is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
        };
        if !v.pre.is_empty() && !v.pre.as_str().split(['.', '-']).all(elastic) {
            return Err(IdError::Version {
                found: s.into(),
                reason: format!(
                    "pre-release {:?} is not Elastic's (alphaN, betaN, rcN, SNAPSHOT)",
                    v.pre.as_str()
                ),
            });
        }
        Ok(Self(v))
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
        // A version may itself hold '-' (`9.3.0-SNAPSHOT`, `9.0.0-beta1`), and so does the
        // platform (`linux-x86_64`): the split is the '-' where both sides parse. No name has
        // two: the only suffixes holding a '-' are `OS-ARCH.{tar.gz,zip,msi}`, and `ARCH.EXT`
        // is then no suffix.
        rest.match_indices('-')
            .find_map(|(i, _)| {
                let version = rest[..i].parse().ok()?;
                let (platform, package) = parse_suffix(&rest[i + 1..])?;
                let id = Self::new(product, version, platform, package, fips).ok()?;
                // Round-trip check: `.zip` for Linux or `.tar.gz` for Windows is not a real name.
                (id.file_name() == name).then_some(id)
            })
            .ok_or_else(err)
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

/// The platform and package kind a file name's part after the version names:
/// `linux-x86_64.tar.gz`, `windows-x86_64.zip`, `amd64.deb`, `aarch64.rpm`, ...
fn parse_suffix(suffix: &str) -> Option<(Platform, PackageKind)> {
    let by_arch = |arch: &str, arch_of: fn(Platform) -> Option<&'static str>| {
        Platform::ALL.into_iter().find(|&p| arch_of(p) == Some(arch))
    };
    if let Some(p) = suffix.strip_suffix(".tar.gz").or_else(|| suffix.strip_suffix(".zip")) {
        Some((p.parse().ok()?, PackageKind::Archive))
    } else if let Some(p) = suffix.strip_suffix(".msi") {
        Some((p.parse().ok()?, PackageKind::Msi))
    } else if let Some(a) = suffix.strip_suffix(".deb") {
        Some((by_arch(a, Platform::deb_arch)?, PackageKind::Deb))
    } else if let Some(a) = suffix.strip_suffix(".rpm") {
        Some((by_arch(a, Platform::rpm_arch)?, PackageKind::Rpm))
    } else {
        None
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
    }

    #[test]
    fn names_with_pre_releases_and_build_metadata() {
        let cases = [
            // Independent agent releases keep `+build…` in their names.
            (
                "elastic-agent-8.14.1+build202406201002-linux-x86_64.tar.gz",
                "8.14.1+build202406201002",
                Platform::LinuxX86_64,
                PackageKind::Archive,
                false,
            ),
            (
                "elastic-agent-9.2.0+build202510300150-windows-x86_64.zip",
                "9.2.0+build202510300150",
                Platform::WindowsX86_64,
                PackageKind::Archive,
                false,
            ),
            (
                "elastic-agent-fips-9.2.0+build202510300150-linux-arm64.tar.gz",
                "9.2.0+build202510300150",
                Platform::LinuxArm64,
                PackageKind::Archive,
                true,
            ),
            (
                "elastic-agent-9.3.0-SNAPSHOT-windows-x86_64.zip",
                "9.3.0-SNAPSHOT",
                Platform::WindowsX86_64,
                PackageKind::Archive,
                false,
            ),
            (
                "elastic-agent-fips-9.3.0-SNAPSHOT-linux-x86_64.tar.gz",
                "9.3.0-SNAPSHOT",
                Platform::LinuxX86_64,
                PackageKind::Archive,
                true,
            ),
            (
                "elastic-agent-9.0.0-beta1-linux-arm64.tar.gz",
                "9.0.0-beta1",
                Platform::LinuxArm64,
                PackageKind::Archive,
                false,
            ),
            (
                "elastic-agent-9.0.0-beta1-SNAPSHOT-darwin-aarch64.tar.gz",
                "9.0.0-beta1-SNAPSHOT",
                Platform::DarwinAarch64,
                PackageKind::Archive,
                false,
            ),
            (
                "elastic-agent-9.3.0-SNAPSHOT-amd64.deb",
                "9.3.0-SNAPSHOT",
                Platform::LinuxX86_64,
                PackageKind::Deb,
                false,
            ),
            (
                "elastic-agent-8.14.1+build202406201002-aarch64.rpm",
                "8.14.1+build202406201002",
                Platform::LinuxArm64,
                PackageKind::Rpm,
                false,
            ),
            (
                "elastic-agent-9.0.0-rc1+build1-windows-x86_64.msi",
                "9.0.0-rc1+build1",
                Platform::WindowsX86_64,
                PackageKind::Msi,
                false,
            ),
        ];
        for (name, version, platform, package, fips) in cases {
            let id = ArtifactId::from_file_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (id.version().to_string(), id.platform(), id.package(), id.fips()),
                (version.to_owned(), platform, package, fips),
                "{name}"
            );
            assert_eq!(id.file_name(), name);
            let built = ArtifactId::new(Product::ElasticAgent, v(version), platform, package, fips);
            assert_eq!(built.unwrap(), id, "{name}");
        }
        for bad in [
            "elastic-agent-9.3.0-linux-x86_64-SNAPSHOT.tar.gz",
            "elastic-agent-9.3.0--linux-x86_64.tar.gz",
            "elastic-agent-9.3.0+-linux-x86_64.tar.gz",
            "elastic-agent-9.3.0-SNAPSHOT-amd64.rpm",
            "elastic-agent-9.3.0-01-linux-x86_64.tar.gz",
            "elastic-agent-9.3.0+build1-linux-x86_64.zip",
            "fleet-server-fips-9.3.0+build1-linux-x86_64.tar.gz",
        ] {
            assert!(ArtifactId::from_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_parse_strictly_and_print_as_parsed() {
        for good in [
            "9.2.2",
            "10.0.0",
            "9.3.0-SNAPSHOT",
            "9.0.0-beta1",
            "9.0.0-beta1-SNAPSHOT",
            "8.14.1+build202406201002",
            "9.0.0-rc.1+build.0042",
        ] {
            assert_eq!(v(good).to_string(), good);
        }
        for bad in [
            "",
            "9",
            "9.2",
            "9.2.2.1",
            "v9.2.2",
            " 9.2.2",
            "9.2.2 ",
            "09.2.2",
            "9.02.2",
            "9.2.02",
            "9.2.2-",
            "9.2.2+",
            "9.2.2-01",
            // Pre-releases Elastic never makes.
            "9.3.0-NOTSNAPSHOT",
            "9.3.0-snapshot",
            "9.3.0-a.-SNAPSHOT",
            "9.3.0--SNAPSHOT",
            "9.2.2-beta_1",
            "9.2.x",
            "-9.2.2",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        let e = "9.2".parse::<Version>().unwrap_err().to_string();
        assert!(e.contains("MAJOR.MINOR.PATCH") && e.contains("8.14.1+build"), "{e}");
        // Exact spelling is identity: the same release with other build metadata is another file.
        assert_ne!(v("8.14.1+build1"), v("8.14.1"));
        assert_ne!(v("8.14.1+build1"), v("8.14.1+build01"));
    }

    #[test]
    fn snapshots() {
        assert_eq!(Version::new(9, 3, 0, true), v("9.3.0-SNAPSHOT"));
        assert_eq!(Version::new(9, 3, 0, false), v("9.3.0"));
        for (version, snapshot, without) in [
            ("9.3.0-SNAPSHOT", true, "9.3.0"),
            ("9.0.0-beta1-SNAPSHOT", true, "9.0.0-beta1"),
            ("9.3.0-SNAPSHOT+build1", true, "9.3.0+build1"),
            ("9.3.0", false, "9.3.0"),
            ("9.0.0-beta1", false, "9.0.0-beta1"),
            ("9.0.0-rc.1-SNAPSHOT", true, "9.0.0-rc.1"),
        ] {
            assert_eq!(v(version).snapshot(), snapshot, "{version}");
            assert_eq!(v(version).without_snapshot().to_string(), without, "{version}");
        }
    }

    #[test]
    fn core_versions_have_no_pre_release_or_build() {
        assert!(v("9.2.2").is_core());
        for other in ["9.3.0-SNAPSHOT", "9.0.0-beta1", "8.14.1+build202406201002"] {
            assert!(!v(other).is_core(), "{other}");
        }
    }

    #[test]
    fn precedence_is_elastics() {
        use Ordering::{Equal, Greater, Less};
        for (a, b, order) in [
            ("9.3.0-SNAPSHOT", "9.3.0", Less),
            ("9.3.0", "9.3.1", Less),
            ("9.3.0-SNAPSHOT", "9.3.1", Less),
            ("9.0.0-beta1", "9.0.0", Less),
            ("9.0.0-beta1", "9.0.0-rc1", Less),
            ("8.14.1+build202406201002", "8.14.1", Equal),
            ("8.14.1+build1", "8.14.1+build2", Equal),
            ("8.14.1+build202406201002", "8.14.2", Less),
            ("8.14.1+build202406201002", "8.14.0", Greater),
            ("10.0.0", "9.99.0", Greater),
            ("9.10.0", "9.9.0", Greater),
        ] {
            assert_eq!(v(a).precedence_cmp(&v(b)), order, "{a} vs {b}");
            assert_eq!(v(b).precedence_cmp(&v(a)), order.reverse(), "{b} vs {a}");
        }
        // `Ord` agrees wherever precedence decides, and orders numerically, not as text.
        assert!(v("10.0.0") > v("9.99.0") && v("9.3.0-SNAPSHOT") < v("9.3.0"));
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
            // No pre-release of Elastic's, so no second reading of the name.
            "elastic-agent-9.2.2-linux-arm64.deb",
            "elastic-agent-9.2.2-preview-linux-x86_64.tar.gz",
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
