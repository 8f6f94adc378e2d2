//! Names that cannot hold bad values: bundle names and the paths of entries inside a bundle.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest entry path, in bytes. Chosen so every valid name fits the ustar `prefix` + `name`
/// header fields without extension headers.
pub const MAX_ENTRY_NAME_LEN: usize = 255;
/// Longest single path component, in bytes (the ustar `name` field).
pub const MAX_COMPONENT_LEN: usize = 100;
/// Longest bundle name, in bytes.
pub const MAX_BUNDLE_NAME_LEN: usize = 64;

/// Names the bundle itself uses for its own entries; payload files may not take them.
pub const MANIFEST_ENTRY: &str = "manifest.json";
/// The entry holding the minisign signature over [`MANIFEST_ENTRY`].
pub const MANIFEST_SIGNATURE_ENTRY: &str = "manifest.json.minisig";

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("path component {component:?} is {len} bytes long, the limit is {max}")]
    ComponentTooLong { component: String, len: usize, max: usize },
    #[error("absolute paths are not allowed")]
    Absolute,
    #[error("empty path component (leading, trailing or doubled '/')")]
    EmptyComponent,
    #[error("path component {0:?} is not allowed")]
    DotComponent(String),
    #[error("backslashes are not allowed")]
    Backslash,
    #[error("NUL and control characters are not allowed")]
    Control,
    #[error("character {0:?} is not allowed (allowed: ASCII letters, digits and . _ - + @ = , ~)")]
    Character(char),
    #[error("the name {0:?} is reserved for the bundle's own metadata")]
    Reserved(String),
    #[error(
        "{0:?} does not fit a ustar header (no split into a 155-byte prefix and 100-byte name)"
    )]
    NotUstar(String),
}

/// The relative path of one payload file inside a bundle (and, later, inside the mirror).
///
/// Invariants: non-empty, at most [`MAX_ENTRY_NAME_LEN`] bytes, relative, `/`-separated, no
/// empty, `.` or `..` components, only the ASCII characters of [`NameError::Character`], not a
/// reserved name, and encodable in a ustar header.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EntryName(String);

impl EntryName {
    /// Parses `name`, refusing anything that could escape a directory or confuse a filesystem.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_ENTRY_NAME_LEN {
            return Err(NameError::TooLong { len: name.len(), max: MAX_ENTRY_NAME_LEN });
        }
        // Character checks first, so that "\..\x" is reported as a backslash, not a dot.
        for c in name.chars() {
            if c == '\\' {
                return Err(NameError::Backslash);
            }
            if c.is_control() {
                return Err(NameError::Control);
            }
            if !(c.is_ascii_alphanumeric() || "._-+@=,~/".contains(c)) {
                return Err(NameError::Character(c));
            }
        }
        if name.starts_with('/') {
            return Err(NameError::Absolute);
        }
        for component in name.split('/') {
            if component.is_empty() {
                return Err(NameError::EmptyComponent);
            }
            if component.chars().all(|c| c == '.') {
                return Err(NameError::DotComponent(component.to_owned()));
            }
            if component.len() > MAX_COMPONENT_LEN {
                return Err(NameError::ComponentTooLong {
                    component: component.to_owned(),
                    len: component.len(),
                    max: MAX_COMPONENT_LEN,
                });
            }
        }
        if name == MANIFEST_ENTRY || name == MANIFEST_SIGNATURE_ENTRY {
            return Err(NameError::Reserved(name.to_owned()));
        }
        if ustar_split(name).is_none() {
            return Err(NameError::NotUstar(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

/// Splits a name into ustar `(prefix, name)` fields, preferring no prefix.
pub(crate) fn ustar_split(name: &str) -> Option<(&str, &str)> {
    if name.len() <= 100 {
        return Some(("", name));
    }
    // The latest '/' that leaves a short enough tail gives the shortest prefix; any '/' whose
    // prefix fits 155 bytes and whose tail fits 100 bytes will do.
    name.match_indices('/')
        .map(|(i, _)| (&name[..i], &name[i + 1..]))
        .find(|(prefix, rest)| prefix.len() <= 155 && rest.len() <= 100)
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for EntryName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for EntryName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(|e| serde::de::Error::custom(format!("entry path {s:?}: {e}")))
    }
}

/// The name of a bundle series: `[a-z0-9][a-z0-9._-]*`, at most [`MAX_BUNDLE_NAME_LEN`] bytes.
/// Sequence numbers (and the appliance's rollback floor) are kept per bundle name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct BundleName(String);

impl BundleName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        let Some(first) = name.chars().next() else {
            return Err(NameError::Empty);
        };
        if name.len() > MAX_BUNDLE_NAME_LEN {
            return Err(NameError::TooLong { len: name.len(), max: MAX_BUNDLE_NAME_LEN });
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(NameError::Character(first));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
        {
            return Err(NameError::Character(c));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BundleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for BundleName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for BundleName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(|e| serde::de::Error::custom(format!("bundle name {s:?}: {e}")))
    }
}

/// Why a set of names cannot live together in one bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollisionError {
    #[error("{0} appears twice")]
    Duplicate(EntryName),
    #[error("{first} and {second} differ only in letter case")]
    CaseFold { first: EntryName, second: EntryName },
    #[error("{file} is a file, but {inside} needs it to be a directory")]
    FileIsDirectory { file: EntryName, inside: EntryName },
}

/// Checks that `names` could all be written to one case-insensitive filesystem: no duplicates,
/// no two names equal when lowercased, and no name that is also a directory of another.
pub fn check_collisions<'a>(
    names: impl IntoIterator<Item = &'a EntryName>,
) -> Result<(), CollisionError> {
    let mut seen: HashMap<String, &EntryName> = HashMap::new();
    let names: Vec<&EntryName> = names.into_iter().collect();
    for name in &names {
        let folded = name.as_str().to_ascii_lowercase();
        if let Some(previous) = seen.insert(folded, name) {
            return Err(if previous == *name {
                CollisionError::Duplicate((*name).clone())
            } else {
                CollisionError::CaseFold { first: previous.clone(), second: (*name).clone() }
            });
        }
    }
    for name in &names {
        let folded = name.as_str().to_ascii_lowercase();
        let mut end = 0;
        for component in folded.split('/') {
            end += component.len();
            if end < folded.len()
                && let Some(file) = seen.get(&folded[..end])
            {
                return Err(CollisionError::FileIsDirectory {
                    file: (*file).clone(),
                    inside: (*name).clone(),
                });
            }
            end += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str) -> NameError {
        EntryName::new(name).expect_err(name)
    }

    #[test]
    fn accepts_elastic_layout_names() {
        for ok in [
            "beats/elastic-agent/elastic-agent-8.15.0-linux-x86_64.tar.gz",
            "beats/elastic-agent/elastic-agent-8.15.0-linux-x86_64.tar.gz.sha512",
            "policies/default.yml",
            "a",
            "manifest.json.bak",
        ] {
            assert_eq!(EntryName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_unsafe_names() {
        assert_eq!(refused(""), NameError::Empty);
        assert_eq!(refused("/etc/x"), NameError::Absolute);
        assert_eq!(refused("../x"), NameError::DotComponent("..".into()));
        assert_eq!(refused("a/../x"), NameError::DotComponent("..".into()));
        assert_eq!(refused("./x"), NameError::DotComponent(".".into()));
        assert_eq!(refused("a//b"), NameError::EmptyComponent);
        assert_eq!(refused("a/"), NameError::EmptyComponent);
        assert_eq!(refused("a\\b"), NameError::Backslash);
        assert_eq!(refused("..\\x"), NameError::Backslash);
        assert_eq!(refused("a\0b"), NameError::Control);
        assert_eq!(refused("a\nb"), NameError::Control);
        assert_eq!(refused("a b"), NameError::Character(' '));
        assert_eq!(refused("é"), NameError::Character('é'));
        assert_eq!(refused("a:b"), NameError::Character(':'));
        assert_eq!(refused("manifest.json"), NameError::Reserved("manifest.json".into()));
        assert!(matches!(refused(&"a".repeat(256)), NameError::TooLong { len: 256, .. }));
        assert!(matches!(refused(&"a".repeat(101)), NameError::ComponentTooLong { .. }));
        let unsplittable = format!("{}/{}/{}", "a".repeat(90), "b".repeat(90), "c".repeat(70));
        assert!(matches!(refused(&unsplittable), NameError::NotUstar(_)));
    }

    #[test]
    fn long_names_split_for_ustar() {
        let name = format!("{}/{}/{}", "d".repeat(70), "e".repeat(79), "f".repeat(100));
        let entry = EntryName::new(&name).unwrap();
        let (prefix, rest) = ustar_split(entry.as_str()).unwrap();
        assert_eq!((prefix.len(), rest.len()), (150, 100));
    }

    #[test]
    fn collisions() {
        let n = |s: &str| EntryName::new(s).unwrap();
        assert!(check_collisions(&[n("a/b"), n("a/c"), n("b")]).is_ok());
        assert_eq!(check_collisions(&[n("a"), n("a")]), Err(CollisionError::Duplicate(n("a"))));
        assert!(matches!(
            check_collisions(&[n("Policy.yml"), n("policy.YML")]),
            Err(CollisionError::CaseFold { .. })
        ));
        assert!(matches!(
            check_collisions(&[n("a/b"), n("A")]),
            Err(CollisionError::FileIsDirectory { .. })
        ));
    }

    #[test]
    fn bundle_names() {
        assert!(BundleName::new("site-a.prod_1").is_ok());
        assert!(BundleName::new("").is_err());
        assert!(BundleName::new("Site").is_err());
        assert!(BundleName::new("-a").is_err());
        assert!(BundleName::new("a b").is_err());
        assert!(BundleName::new("a=b").is_err());
        assert!(BundleName::new(&"a".repeat(65)).is_err());
    }
}
