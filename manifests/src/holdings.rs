//! Holdings: what an appliance already has (its releases and the digest of every blob), written
//! by `ferry-appliance holdings --json`, carried back across the gap, and read by `ferry build
//! --base` to leave out of a delta whatever the appliance holds.
//!
//! The file is not signed, and need not be: it only decides what a delta leaves out. A holdings
//! file that lies makes a delta the appliance refuses (it checks every left-out digest against
//! its own blob store), never one it accepts wrongly.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::{BaseRef, Sha256Digest};
use crate::name::BundleName;
use crate::write::DeltaBase;

/// The only holdings format this crate reads and writes.
pub const HOLDINGS_FORMAT: u32 = 1;

/// Largest holdings file read: a million blobs at about 100 bytes of JSON each.
pub const MAX_HOLDINGS_SIZE: u64 = 128 << 20;

/// What an appliance holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holdings {
    /// [`HOLDINGS_FORMAT`]; also what tells a holdings file from other JSON.
    pub ferry_holdings: u32,
    /// When the appliance wrote it (RFC 3339).
    pub generated: String,
    /// Every retained release.
    pub releases: Vec<HeldRelease>,
    /// Every blob in the appliance's store.
    pub blobs: Vec<HeldBlob>,
}

/// A retained release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldRelease {
    pub name: BundleName,
    pub sequence: u64,
    pub manifest_sha256: Sha256Digest,
    pub active: bool,
}

/// A blob, by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldBlob {
    pub sha256: Sha256Digest,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HoldingsError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is {size} bytes, more than a holdings file can be ({max})")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{path} is not a holdings file (`ferry-appliance holdings --json`): {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("{path} is holdings format {found}; this ferry reads format {HOLDINGS_FORMAT}")]
    Format { path: String, found: u32 },
    #[error(
        "the holdings list no release named {name} to make a delta against (they list: {listed})"
    )]
    NoRelease { name: BundleName, listed: String },
}

impl Holdings {
    /// Reads and checks a holdings file.
    pub fn read(path: &Path) -> Result<Self, HoldingsError> {
        use std::io::Read as _;
        let shown = path.display().to_string();
        let io = |source| HoldingsError::Io { path: shown.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size > MAX_HOLDINGS_SIZE {
            return Err(HoldingsError::TooLarge { path: shown, size, max: MAX_HOLDINGS_SIZE });
        }
        let mut bytes = Vec::new();
        file.take(MAX_HOLDINGS_SIZE).read_to_end(&mut bytes).map_err(io)?;
        Self::parse(&bytes).map_err(|e| match e {
            HoldingsError::Json { source, .. } => HoldingsError::Json { path: shown, source },
            HoldingsError::Format { found, .. } => HoldingsError::Format { path: shown, found },
            other => other,
        })
    }

    /// Parses holdings JSON.
    pub fn parse(bytes: &[u8]) -> Result<Self, HoldingsError> {
        let json = |source| HoldingsError::Json { path: "holdings".into(), source };
        #[derive(Deserialize)]
        struct Probe {
            ferry_holdings: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(json)?;
        if probe.ferry_holdings != HOLDINGS_FORMAT {
            return Err(HoldingsError::Format {
                path: "holdings".into(),
                found: probe.ferry_holdings,
            });
        }
        serde_json::from_slice(bytes).map_err(json)
    }

    /// The base a delta of bundle `name` is made against: the active release if it has that
    /// name, else the newest retained one of that name; leaving out every blob the appliance
    /// holds, whichever release it belongs to.
    pub fn delta_base(&self, name: &BundleName) -> Result<DeltaBase, HoldingsError> {
        let named = self.releases.iter().filter(|r| &r.name == name);
        let base = named
            .clone()
            .find(|r| r.active)
            .or_else(|| named.max_by_key(|r| r.sequence))
            .ok_or_else(|| HoldingsError::NoRelease {
                name: name.clone(),
                listed: self
                    .releases
                    .iter()
                    .map(|r| format!("{} {}", r.name, r.sequence))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(DeltaBase {
            bundle: BaseRef {
                name: base.name.clone(),
                sequence: base.sequence,
                manifest_sha256: base.manifest_sha256,
            },
            holds: self.blobs.iter().map(|b| b.sha256).collect::<HashSet<_>>(),
        })
    }

    /// The exact bytes `ferry-appliance holdings --json` prints: pretty JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("holdings serialise");
        bytes.push(b'\n');
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(name: &str, sequence: u64, active: bool) -> HeldRelease {
        HeldRelease {
            name: BundleName::new(name).unwrap(),
            sequence,
            manifest_sha256: Sha256Digest::of(format!("{name}{sequence}").as_bytes()),
            active,
        }
    }

    fn holdings(releases: Vec<HeldRelease>) -> Holdings {
        Holdings {
            ferry_holdings: HOLDINGS_FORMAT,
            generated: "2026-12-05T00:00:00Z".into(),
            releases,
            blobs: vec![HeldBlob { sha256: Sha256Digest::of(b"x"), size: 1 }],
        }
    }

    #[test]
    fn the_base_is_the_active_release_else_the_newest_of_the_name() {
        let site = BundleName::new("site").unwrap();
        let h = holdings(vec![release("site", 7, false), release("site", 5, true)]);
        let base = h.delta_base(&site).unwrap();
        assert_eq!(base.bundle.sequence, 5, "a rolled-back site still holds 7, but runs 5");
        assert!(base.holds.contains(&Sha256Digest::of(b"x")));
        let h = holdings(vec![release("site", 7, false), release("other", 9, true)]);
        assert_eq!(h.delta_base(&site).unwrap().bundle.sequence, 7);
        let err = holdings(vec![release("other", 9, true)]).delta_base(&site).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the holdings list no release named site to make a delta against (they list: other 9)"
        );
    }

    #[test]
    fn parsing_is_strict_and_round_trips() {
        let h = holdings(vec![release("site", 1, true)]);
        assert_eq!(Holdings::parse(&h.to_bytes()).unwrap(), h);
        let mut v = serde_json::to_value(&h).unwrap();
        v["extra"] = 1.into();
        assert!(matches!(
            Holdings::parse(&serde_json::to_vec(&v).unwrap()),
            Err(HoldingsError::Json { .. })
        ));
        v = serde_json::to_value(&h).unwrap();
        v["ferry_holdings"] = 2.into();
        assert!(matches!(
            Holdings::parse(&serde_json::to_vec(&v).unwrap()),
            Err(HoldingsError::Format { found: 2, .. })
        ));
        assert!(matches!(Holdings::parse(b"{\"format\": 1}"), Err(HoldingsError::Json { .. })));
    }
}
