//! Hard limits the reader enforces before it trusts or allocates anything.

/// Every bound the bundle reader applies. The defaults suit any realistic Elastic site; the
/// appliance may tighten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `manifest.json`, in bytes.
    pub max_manifest_size: u64,
    /// Largest minisign signature file (detached or inside), in bytes.
    pub max_signature_size: u64,
    /// Most payload files in one bundle.
    pub max_entries: usize,
    /// Largest single payload file. The ustar size field itself stops at 8 GiB - 1.
    pub max_entry_size: u64,
    /// Largest sum of payload sizes.
    pub max_total_size: u64,
    /// Largest zstd window the decoder will allocate, as a power of two.
    pub zstd_window_log_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_manifest_size: 8 << 20,
            max_signature_size: 16 << 10,
            max_entries: 50_000,
            max_entry_size: (8 << 30) - 1,
            max_total_size: 1 << 40,
            // Level 19, the highest the builder offers, uses a 2^23 window.
            zstd_window_log_max: 23,
        }
    }
}
