//! A progress hook, so long work can be shown on a terminal without this crate knowing how.

/// Receives progress of long operations, in bytes. Called from several threads at once.
pub trait Progress: Sync {
    /// A phase begins, expected to process `total` bytes.
    fn start(&self, _phase: &str, _total: u64) {}
    /// `bytes` more were processed.
    fn advance(&self, _bytes: u64) {}
    /// The current phase is over.
    fn finish(&self) {}
}

/// Shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
