//! Elastic artifact knowledge shared by the builder and the appliance: artifact ids and
//! Elastic's download layout, `.sha512` sidecars, PGP `.asc` verification, agent policies,
//! certificates, and the content-addressed blob store.

pub mod cert;
pub mod epr_version;
pub mod id;
pub mod pgp;
pub mod policy;
pub mod secrets;
pub mod sidecar;
pub mod store;

pub use cert::{CertError, CertSummary, parse_certificates};
pub use id::{ArtifactId, IdError, PackageKind, Platform, Product, Version};
pub use pgp::{Keyring, PgpError};
pub use policy::{Policy, PolicyError};
pub use sidecar::{Sha512Digest, SidecarError, check_sidecar, parse_sidecar, write_sidecar};
pub use store::{BlobStore, StoreError, hash_file};

use ferry_manifests::EntryName;

/// The folder of a bundle that mirrors Elastic's `downloads/` tree.
pub const MIRROR_ROOT: &str = "downloads";

/// Where a file of Elastic's download site, given by its path below `downloads/`, lives in a
/// bundle. Fails when the path is not a safe entry name.
pub fn mirror_entry(relative: &str) -> Result<EntryName, ferry_manifests::NameError> {
    EntryName::new(&format!("{MIRROR_ROOT}/{relative}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mirror_paths_are_under_downloads() {
        let e = super::mirror_entry("beats/elastic-agent/elastic-agent-9.1.0-linux-x86_64.tar.gz")
            .unwrap();
        assert_eq!(
            e.as_str(),
            "downloads/beats/elastic-agent/elastic-agent-9.1.0-linux-x86_64.tar.gz"
        );
        assert!(super::mirror_entry("../etc/passwd").is_err());
    }
}
