//! The Ferry bundle format, version 1: manifest types, minisign signing and verification, the
//! streaming bundle writer and the hostile-input-proof bundle reader.
//!
//! A bundle is `NAME-SEQUENCE.ferry` (a ustar stream, zstd- or gzip-compressed) with a detached
//! minisign signature beside it. Inside, `manifest.json` and its signature come first, then one
//! entry per payload file in manifest order. `docs/bundle-format.md` is the specification; this
//! crate is its reference implementation.
//!
//! Reading happens in the order the format's security rests on:
//! [`SignedBundle::verify`] checks the detached signature over the raw file (step 1),
//! [`SignedBundle::read_manifest`] reads and verifies the signed manifest and applies an
//! [`Expiry`] (step 2a), and
//! [`ManifestStage::extract`] streams each entry through a size cap and a hash into an
//! [`EntrySink`] (step 2b). Steps 2a and 2b read the file step 1 opened and verified, never its
//! path again.

#[cfg(feature = "forge")]
pub mod forge;
mod holdings;
mod limits;
mod manifest;
mod metadata;
mod name;
/// Media-sized parts of a bundle, the signed parts index and Reed–Solomon parity.
pub mod parts;
mod progress;
mod read;
mod readahead;
mod sign;
pub mod tar;
#[cfg(feature = "forge")]
pub mod test_tools;
mod write;

pub use holdings::{
    HOLDINGS_FORMAT, HeldBlob, HeldRelease, Holdings, HoldingsError, MAX_HOLDINGS_SIZE,
};
pub use limits::Limits;
pub use manifest::{
    BaseRef, DELTA_FORMAT, Expired, FORMAT, FileEntry, Kind, Manifest, ManifestError, Mode,
    Sha256Digest,
};
pub use metadata::{
    ArtifactFacts, CertificateFacts, Metadata, PgpKeyFacts, PolicyFacts, SidecarFormat,
};
pub use name::{
    BundleName, CollisionError, EntryName, MANIFEST_ENTRY, MANIFEST_SIGNATURE_ENTRY,
    MAX_BUNDLE_NAME_LEN, MAX_COMPONENT_LEN, MAX_ENTRY_NAME_LEN, NameError, check_collisions,
};
#[cfg(feature = "terminal")]
pub mod terminal;
pub use progress::{NoProgress, Progress};
pub use read::{
    BundleRead, Discard, EntrySink, Expiry, ManifestStage, SignedBundle, StagingDir,
    UnverifiedManifest, VerifiedBundle, VerifyError, default_signature_path, read_unverified,
    signature_key_id, verify_stored_manifest,
};
pub use sign::{
    BundleComment, GeneratedKey, KeyError, KeyId, ManifestComment, PartsComment, PrehashWriter,
    Prehasher, PublicKey, SignatureFile, SigningKey, StreamVerifier, TrustedKeys, generate_key,
};
#[cfg(feature = "terminal")]
pub use terminal::TerminalBar;
pub use write::{
    BundleSpec, Compression, DeltaBase, PayloadSource, WriteError, WrittenBundle, WrittenParts,
    check_input, file_type_name, write_bundle, write_parts,
};

/// Formats a time as RFC 3339 (UTC, whole seconds when they are whole).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("any OffsetDateTime formats as RFC 3339")
}
