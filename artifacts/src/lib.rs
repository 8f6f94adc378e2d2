//! Elastic artifact knowledge shared by the builder and the appliance.
//!
//! This crate will own artifact ids, Elastic's download layout, `.sha512` sidecars and PGP
//! verification. For now it only names where artifacts live inside a bundle, so both sides agree
//! on it from the start.

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
