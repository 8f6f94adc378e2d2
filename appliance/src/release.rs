//! The appliance's data directory: verified import, the release store, rollback, fsck and
//! garbage collection.
//!
//! ```text
//! DATA/blobs/sha256/ab/cdef…          content store, read-only files
//! DATA/releases/NAME-SEQUENCE/        manifest.json + manifest.json.minisig of each release
//! DATA/state.db                       the store: releases, active pointer, floors, agents… (SQLite, WAL)
//! DATA/staging/                       private, emptied at every start
//! ```
//!
//! Import order (a crash at any point leaves the previous release active and intact):
//! verify the detached signature → verify the manifest and its expiry (reading the file the
//! signature was checked over) → floor → for a delta, every entry its base holds found in the
//! blob store and re-hashed → stream every carried entry into staging while hashing → move
//! the verified files into the blob store → write the release's manifest folder → one SQLite
//! transaction records the release, moves the active pointer and raises the floor → remove
//! releases beyond the retained count and unreferenced blobs. Leftovers of an interrupted
//! import (staging, a release folder not in the database, blobs no release needs) are removed
//! at the next start or import.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use ferry_artifacts::{BlobStore, StoreError};
use ferry_manifests::{
    BundleRead, EntrySink, Expired, Expiry, FileEntry, Kind, Limits, Manifest, Progress,
    SignedBundle, StagingDir, TrustedKeys, VerifyError,
};
use time::OffsetDateTime;

use crate::store::{ReleaseRecord, Store};

/// Refusals of a bundle that verified but must not become active.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ImportRefusal {
    #[error(
        "bundle {name} sequence {sequence} (signed by {key_id}) is a replay: sequence {floor} was already imported (use --allow-downgrade to re-import)"
    )]
    Replay { name: String, sequence: u64, floor: u64, key_id: String },
    #[error(
        "bundle {name} sequence {sequence} (signed by {key_id}) is older than the floor {floor}: a rollback (use --allow-downgrade to accept it)"
    )]
    Downgrade { name: String, sequence: u64, floor: u64, key_id: String },
    #[error(
        "bundle {name} sequence {sequence} (signed by {key_id}) differs from the retained release with that name and sequence; a sequence is never reused"
    )]
    Conflict { name: String, sequence: u64, key_id: String },
    #[error(
        "bundle {name} sequence {sequence} (signed by {key_id}): {source} (use --allow-expired to accept it)"
    )]
    Expired { name: String, sequence: u64, key_id: String, source: Expired },
    #[error(
        "bundle {name} sequence {sequence} is a delta against {base}, which this appliance never \
         imported ({newest}): {missing}; import that base first, or a full bundle, or build the \
         delta against this appliance's `ferry-appliance holdings --json`"
    )]
    DeltaBaseUnknown { name: String, sequence: u64, base: String, newest: String, missing: Missing },
    #[error(
        "bundle {name} sequence {sequence} is a delta against {base}, whose content is no longer \
         all here (garbage collection keeps the active release and {retain} more): {missing}; \
         import a full bundle, or build the delta against this appliance's `ferry-appliance \
         holdings --json`"
    )]
    DeltaBaseMissing { name: String, sequence: u64, base: String, retain: usize, missing: Missing },
    #[error(
        "bundle {name} sequence {sequence} is a delta whose entry {path} this appliance's blob \
         store should give, but {problem} (run `ferry-appliance fsck`)"
    )]
    DeltaBaseDamaged { name: String, sequence: u64, path: String, problem: String },
    #[error(
        "bundle {name} sequence {sequence} carries an integration package the package registry \
         cannot serve: {problem}"
    )]
    Package { name: String, sequence: u64, problem: String },
}

/// What a delta needs from its base that the blob store lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Missing {
    pub blobs: usize,
    pub bytes: u64,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = self.bytes as f64 / f64::from(1 << 20);
        write!(f, "{} blob(s) missing, {} bytes ({mib:.1} MiB)", self.blobs, self.bytes)
    }
}

impl ImportRefusal {
    /// A stable name for the check that refused, for machine output.
    pub(crate) fn check(&self) -> &'static str {
        match self {
            ImportRefusal::Replay { .. } => "replay",
            ImportRefusal::Downgrade { .. } => "downgrade",
            ImportRefusal::Conflict { .. } => "sequence-reused",
            ImportRefusal::Expired { .. } => "expired",
            ImportRefusal::DeltaBaseUnknown { .. } => "delta-base-unknown",
            ImportRefusal::DeltaBaseMissing { .. } => "delta-base-missing",
            ImportRefusal::DeltaBaseDamaged { .. } => "delta-base-damaged",
            ImportRefusal::Package { .. } => "package",
        }
    }
}

/// What an import may override.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ImportOptions {
    pub allow_downgrade: bool,
    pub allow_expired: bool,
    pub expiry_tolerance: time::Duration,
    pub retain: usize,
    /// The store records this release already: another instance of the cluster imported it
    /// and this one catches up (`crate::cluster`). The checks against the store (floors, a
    /// retained release of that sequence) are the importer's and are skipped; every check of
    /// the bundle itself is made.
    pub catch_up: bool,
    /// In a cluster: how long the importing instance waits for the others to stage it.
    pub cluster_wait: std::time::Duration,
}

/// What an import reads: a bundle file beside its detached signature, or a bundle read from
/// elsewhere (its parts, `crate::parts`) with its signature's text. Either way the detached
/// signature is checked over every byte before anything else.
pub(crate) enum BundleInput<'a> {
    File { bundle: &'a Path, signature: &'a Path },
    Read { source: Box<dyn BundleRead>, name: &'a Path, signature: &'a str },
}

impl BundleInput<'_> {
    fn verify(
        self,
        keys: &TrustedKeys,
        progress: &dyn Progress,
    ) -> Result<SignedBundle, VerifyError> {
        match self {
            BundleInput::File { bundle, signature } => {
                SignedBundle::verify(bundle, signature, keys, Limits::default(), progress)
            }
            BundleInput::Read { source, name, signature } => SignedBundle::verify_read(
                source,
                name,
                signature,
                keys,
                Limits::default(),
                progress,
            ),
        }
    }
}

/// What [`DataDir::stage`] left ready to become active.
#[derive(Debug, Clone)]
pub(crate) enum Staged {
    /// The bundle is a release retained already, re-imported under `--allow-downgrade`:
    /// nothing was unpacked, and activating it is a rollback.
    Retained(ReleaseRecord),
    /// Verified, its blobs stored and its folder written; the store does not know it yet.
    New(ReleaseRecord),
}

/// A release as the server uses it: its manifest and the mirror's files.
#[derive(Debug, Clone)]
pub(crate) struct Release {
    pub name: String,
    pub sequence: u64,
    pub manifest: Manifest,
    /// Entry path (e.g. `downloads/beats/…`) → entry.
    pub files: BTreeMap<String, FileEntry>,
    /// The package registry's index of the release's packages (`crate::registry`), built
    /// once, when the server first needs it: the release watcher asks as soon as the release
    /// is active. Commands that load a release for other reasons never build it.
    pub registry: std::sync::OnceLock<Result<Arc<crate::registry::Index>, String>>,
}

impl Release {
    /// The release's agent policies, by policy id.
    pub(crate) fn policies(&self) -> impl Iterator<Item = (&str, &FileEntry)> {
        self.manifest
            .files
            .iter()
            .filter(|f| f.kind == Kind::Policy)
            .filter_map(|f| f.metadata.policy_id().map(|id| (id, f)))
    }

    /// The secret ids each policy of the release needs (`ferry_artifacts::secrets`), by
    /// policy id; the policy files are read from `blobs`.
    pub(crate) fn policy_secret_ids(
        &self,
        blobs: &ferry_artifacts::BlobStore,
    ) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
        let mut ids = BTreeMap::new();
        for (id, entry) in self.policies() {
            let bytes = std::fs::read(blobs.path(&entry.sha256))?;
            let policy = ferry_artifacts::Policy::parse(&bytes, entry.path.as_str())?;
            ids.insert(id.to_owned(), ferry_artifacts::secrets::referenced_ids(&policy.document));
        }
        Ok(ids)
    }

    /// The armored PGP key artifacts were checked with, if the bundle carries one.
    pub(crate) fn pgp_key(&self) -> Option<&FileEntry> {
        self.manifest
            .files
            .iter()
            .filter(|f| f.kind == Kind::PgpKey)
            .max_by_key(|f| f.metadata.signs_artifacts())
    }
}

/// One file of a retained release that fails a check now: what `fsck` lists and `rollback`
/// refuses for. `check` is the import's name for the same failure (`untrusted-key`,
/// `manifest-signature`, `trusted-comment`, `sha256`, `size`…), or `blob-missing` and
/// `blob-unreadable` for a blob the store no longer has or cannot read.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Damage {
    pub release: String,
    pub path: String,
    pub check: &'static str,
    pub problem: String,
}

/// A retained release whose stored manifest does not verify now: its key was removed from
/// `trusted_keys`, or its manifest or signature was altered, swapped or lost.
#[derive(Debug, thiserror::Error)]
#[error("release {name} {sequence}: {error}")]
pub(crate) struct StoredManifestError {
    pub name: String,
    pub sequence: u64,
    pub error: VerifyError,
}

impl StoredManifestError {
    /// The import's name for the check that failed.
    pub(crate) fn check(&self) -> &'static str {
        self.error.check()
    }

    /// Whether the only fault is that the signing key is no longer trusted.
    pub(crate) fn is_untrusted(&self) -> bool {
        matches!(self.error, VerifyError::UntrustedKey { .. })
    }
}

/// A rollback refused because the release it would activate fails a check now, as an import of
/// its bundle would be refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "release {name} {sequence} may not become active again: {}: {}{}",
    .damage[0].path,
    .damage[0].problem,
    more(.damage.len())
)]
pub(crate) struct RollbackRefusal {
    pub name: String,
    pub sequence: u64,
    /// Never empty.
    pub damage: Vec<Damage>,
}

fn more(damaged: usize) -> String {
    match damaged {
        1 => String::new(),
        n => format!(" (and {} more damaged files: see `ferry-appliance fsck`)", n - 1),
    }
}

impl RollbackRefusal {
    /// The first failed check's name, for machine output.
    pub(crate) fn check(&self) -> &'static str {
        self.damage[0].check
    }
}

/// What the active pointer names, and whether it can be served: the one answer `serve`,
/// `releases`, `status` and the admin API give, in one wording ([`Active::trouble`]).
#[derive(Debug, Clone)]
pub(crate) enum Active {
    /// No release was ever activated.
    None,
    /// The active release, its stored manifest verified with the keys trusted now.
    Ready(Arc<Release>),
    /// The active pointer names a release whose stored manifest does not verify now.
    Unusable { name: String, sequence: u64, check: &'static str, problem: String },
}

impl Active {
    /// Loads what `pointer` (the `active` row) names from the data directory at `root`,
    /// re-verifying its stored manifest with `keys`.
    pub(crate) fn load(root: &Path, pointer: Option<(String, u64)>, keys: &TrustedKeys) -> Self {
        let Some((name, sequence)) = pointer else { return Active::None };
        match load_release_at(root, &name, sequence, keys) {
            Ok(release) => Active::Ready(Arc::new(release)),
            Err(e) => {
                Active::Unusable { name, sequence, check: e.check(), problem: e.error.to_string() }
            }
        }
    }

    /// The active pointer's release, whether or not it can be served.
    pub(crate) fn pointer(&self) -> Option<(&str, u64)> {
        match self {
            Active::None => None,
            Active::Ready(r) => Some((&r.name, r.sequence)),
            Active::Unusable { name, sequence, .. } => Some((name, *sequence)),
        }
    }

    /// Why there is nothing to serve, naming the fix; `None` when the active release is ready.
    pub(crate) fn trouble(&self) -> Option<String> {
        match self {
            Active::Ready(_) => None,
            Active::None => {
                Some(format!("no release is active: import a bundle with `{IMPORT_FIX}`"))
            }
            Active::Unusable { name, sequence, check, problem } => Some(format!(
                "the active release {name} {sequence} cannot be served: {problem}; import a newer \
                 bundle with `{IMPORT_FIX}`, or roll back to a release that verifies (see \
                 `ferry-appliance releases`){}",
                // A running server keeps the keys it started with.
                if *check == "untrusted-key" {
                    "; `serve` reads `trusted_keys` when it starts"
                } else {
                    ""
                }
            )),
        }
    }
}

/// The command that gives an appliance something to serve.
pub(crate) const IMPORT_FIX: &str = "ferry-appliance import FILE";

pub(crate) struct DataDir {
    root: PathBuf,
    pub blobs: BlobStore,
    state: Box<dyn Store>,
    /// A second connection to a cluster's database, for what instances tell each other
    /// (`crate::cluster`); `None` for a single appliance.
    pub cluster: Option<Box<dyn crate::store::ClusterStore>>,
    /// Held while this value lives: one command at a time changes the data directory.
    _lock: fs::File,
}

/// Whether the data directory at `root` has release `name` `sequence`'s folder: a cluster's
/// instance may lack one the store records, until it catches up. Read without taking the
/// directory's lock, which an import may hold.
pub(crate) fn holds(root: &Path, name: &str, sequence: u64) -> bool {
    root.join("releases").join(release_dir_name(name, sequence)).join("manifest.json").is_file()
}

fn release_dir_name(name: &str, sequence: u64) -> String {
    format!("{name}-{sequence}")
}

impl DataDir {
    /// Opens (creating) the data directory and removes what an interrupted import left.
    pub(crate) fn open(root: &Path, store: &crate::store::Location) -> anyhow::Result<Self> {
        for dir in ["releases", "staging"] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("cannot create {}", root.join(dir).display()))?;
        }
        let lock_path = root.join("lock");
        let lock = fs::File::create(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "another ferry-appliance command is working on {}; try again when it is done",
                root.display()
            )
        })?;
        let blobs = BlobStore::open(&root.join("blobs"))?;
        let state = crate::store::open(store)?;
        let cluster = crate::store::open_cluster(store)?;
        let mut data = Self { root: root.to_owned(), blobs, state, cluster, _lock: lock };
        data.clean_leftovers()?;
        Ok(data)
    }

    fn release_dir(&self, name: &str, sequence: u64) -> PathBuf {
        self.root.join("releases").join(release_dir_name(name, sequence))
    }

    /// Empties staging, and removes release folders the database does not know (written by an
    /// import that died before its commit, or staged for a cluster import that ended refused).
    /// Only safe while no import runs on this data directory.
    fn clean_leftovers(&mut self) -> anyhow::Result<()> {
        let staging = self.root.join("staging");
        for entry in fs::read_dir(&staging)? {
            let path = entry?.path();
            tracing::info!(path = %path.display(), "removing a leftover of an interrupted import");
            remove_any(&path)?;
        }
        for tmp in fs::read_dir(self.blobs.root().join("tmp"))? {
            remove_any(&tmp?.path())?;
        }
        let mut known: HashSet<String> =
            self.state.releases()?.iter().map(|r| release_dir_name(&r.name, r.sequence)).collect();
        if let Some(cluster) = &mut self.cluster {
            known.extend(
                cluster.pending_imports()?.iter().map(|i| release_dir_name(&i.name, i.sequence)),
            );
        }
        for entry in fs::read_dir(self.root.join("releases"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                tracing::info!(release = %name, "removing a release folder no import completed");
                remove_any(&entry.path())?;
            }
        }
        Ok(())
    }

    pub(crate) fn releases(&self) -> anyhow::Result<Vec<ReleaseRecord>> {
        Ok(self.state.releases()?)
    }

    #[cfg(test)]
    pub(crate) fn active(&self) -> anyhow::Result<Option<(String, u64)>> {
        Ok(self.state.active()?)
    }

    /// Loads a retained release's manifest, re-verifying its signature with `keys`.
    pub(crate) fn load_release(
        &self,
        name: &str,
        sequence: u64,
        keys: &TrustedKeys,
    ) -> Result<Release, StoredManifestError> {
        load_release_at(&self.root, name, sequence, keys)
    }

    /// The active release, and whether it can be served with `keys`.
    pub(crate) fn active_release(&self, keys: &TrustedKeys) -> anyhow::Result<Active> {
        Ok(Active::load(&self.root, self.state.active()?, keys))
    }

    /// Verifies and activates a bundle. See the module documentation for the order.
    pub(crate) fn import(
        &mut self,
        input: BundleInput<'_>,
        keys: &TrustedKeys,
        options: ImportOptions,
        progress: &dyn Progress,
    ) -> anyhow::Result<ReleaseRecord> {
        match self.stage(input, keys, options, progress)? {
            Staged::Retained(record) => {
                self.reactivate(&record)?;
                Ok(record)
            }
            Staged::New(record) => {
                self.activate_staged(&record, options.retain, keys)?;
                Ok(record)
            }
        }
    }

    /// Makes a retained release active again (what [`Staged::Retained`] asks for); in a
    /// cluster only when every live instance holds it.
    pub(crate) fn reactivate(&mut self, record: &ReleaseRecord) -> anyhow::Result<()> {
        if let Some(cluster) = &mut self.cluster {
            crate::cluster::held_everywhere(&mut **cluster, &record.name, record.sequence)?;
        }
        Ok(self.state.activate(&record.name, record.sequence)?)
    }

    /// Makes a release [`DataDir::stage`] left ready the active one (recording it and raising
    /// its floor in one transaction), then removes releases beyond `retain`.
    pub(crate) fn activate_staged(
        &mut self,
        record: &ReleaseRecord,
        retain: usize,
        keys: &TrustedKeys,
    ) -> anyhow::Result<()> {
        self.state.activate_new(record)?;
        tracing::info!(bundle = %record.name, sequence = record.sequence, key_id = %record.key_id, "release imported and active");
        if let Err(e) = self.gc(retain, keys) {
            tracing::warn!(error = %e, "garbage collection after import failed; run `ferry-appliance gc`");
        }
        Ok(())
    }

    /// Every check of an import, then the release's blobs and folder written: all but making
    /// it active, which the store does not know yet. A cluster's instances each stage a bundle
    /// before any of them activates it (`crate::cluster`).
    pub(crate) fn stage(
        &mut self,
        input: BundleInput<'_>,
        keys: &TrustedKeys,
        options: ImportOptions,
        progress: &dyn Progress,
    ) -> anyhow::Result<Staged> {
        self.clean_leftovers()?;
        let started = std::time::Instant::now();
        let signed = input.verify(keys, progress)?;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "detached signature verified");
        let key_id = signed.key_id().to_string();
        crate::crash_point("after-signature");
        // The detached signature's trusted comment names the bundle; reading checks that the
        // manifest says the same before it looks at expiry.
        let (name, sequence) = (signed.comment().name.to_string(), signed.comment().sequence);
        let expired = |source| ImportRefusal::Expired {
            name: name.clone(),
            sequence,
            key_id: key_id.clone(),
            source,
        };
        // Reading applies expiry, so an expired bundle is refused before the floors are looked at.
        let (now, grace) = (OffsetDateTime::now_utc(), options.expiry_tolerance);
        let expiry = if options.allow_expired {
            Expiry::AllowExpired { now, grace }
        } else {
            Expiry::Enforce { now, grace }
        };
        let stage = match signed.read_manifest(expiry) {
            Err(VerifyError::Expired(source)) => {
                let refusal = expired(source);
                tracing::warn!(bundle = %name, sequence, key_id = %key_id, "refused: {refusal}");
                return Err(refusal.into());
            }
            stage => stage?,
        };
        if let Some(source) = stage.expired() {
            let refusal = expired(source.clone());
            tracing::warn!(bundle = %name, sequence, key_id = %key_id, "--allow-expired overrides: {refusal}");
        }
        let manifest = stage.manifest().clone();

        if i64::try_from(sequence).is_err() {
            anyhow::bail!(
                "bundle {name} sequence {sequence} is larger than this appliance stores (2^63 - 1)"
            );
        }
        if options.catch_up {
            // The caller compares the staged manifest's digest with the stored record's.
        } else if let Some(same) =
            self.state.releases()?.into_iter().find(|r| r.name == name && r.sequence == sequence)
        {
            // One name and sequence is one signed bundle, whatever the override.
            let stored = load_release_at(&self.root, &name, sequence, keys)?;
            if stored.manifest != manifest {
                let refusal = ImportRefusal::Conflict {
                    name: name.clone(),
                    sequence,
                    key_id: key_id.clone(),
                };
                tracing::warn!(bundle = %name, sequence, key_id = %key_id, "refused: {refusal}");
                return Err(refusal.into());
            }
            // The same bundle, still retained: with the override, re-activating it is a rollback
            // and needs no unpacking; without, the floor check below refuses it.
            if options.allow_downgrade {
                tracing::warn!(bundle = %name, sequence, key_id = %key_id, "--allow-downgrade: re-activating the retained release");
                return Ok(Staged::Retained(same));
            }
        }
        if !options.catch_up
            && let Some(floor) = self.state.floor(&name)?
            && sequence <= floor
        {
            {
                let refusal = if sequence == floor {
                    ImportRefusal::Replay {
                        name: name.clone(),
                        sequence,
                        floor,
                        key_id: key_id.clone(),
                    }
                } else {
                    ImportRefusal::Downgrade {
                        name: name.clone(),
                        sequence,
                        floor,
                        key_id: key_id.clone(),
                    }
                };
                if !options.allow_downgrade {
                    tracing::warn!(bundle = %name, sequence, floor, key_id = %key_id, "refused: {refusal}");
                    return Err(refusal.into());
                }
                tracing::warn!(bundle = %name, sequence, floor, key_id = %key_id, "--allow-downgrade overrides: {refusal}");
            }
        }

        if let Some(base) = &manifest.base {
            let started = std::time::Instant::now();
            self.check_delta_base(&manifest, base, options.retain)?;
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "the base's content re-hashed"
            );
        }

        let staging_root = self.root.join("staging").join(format!("import-{}", std::process::id()));
        let mut staging = CrashingSink { inner: StagingDir::create(&staging_root)?, entries: 0 };
        let started = std::time::Instant::now();
        let verified = stage.extract(&mut staging, progress)?;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "entries verified and staged");
        let staging = staging.inner;
        let started = std::time::Instant::now();
        staging.sync()?;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "staged files synced");
        crate::crash_point("after-extract");

        // Blobs first: harmless if we die now (unreferenced blobs are collected later). A delta's
        // other entries are in the store already (checked above).
        for file in verified.manifest.carried() {
            self.blobs.insert_verified(&staging.path_of(&file.path), &file.sha256)?;
        }
        crate::crash_point("after-blobs");
        // Every package must be one the registry can serve (a zip with a valid manifest.yml,
        // no zip-slip names), or the release is refused before it can become active; its blobs
        // are left for garbage collection, as after a crash here.
        if manifest.files.iter().any(|f| f.kind == Kind::Package)
            && let Err(e) = crate::registry::Index::build(&manifest, &|d| self.blobs.path(d))
        {
            let refusal =
                ImportRefusal::Package { name: name.clone(), sequence, problem: format!("{e:#}") };
            tracing::warn!(bundle = %name, sequence, key_id = %key_id, "refused: {refusal}");
            remove_any(&staging_root)?;
            return Err(refusal.into());
        }
        let pending = self.root.join("staging").join(format!("release-{}", std::process::id()));
        fs::create_dir(&pending)?;
        write_synced(&pending.join("manifest.json"), &verified.manifest_bytes)?;
        write_synced(
            &pending.join("manifest.json.minisig"),
            verified.manifest_signature.as_bytes(),
        )?;
        sync_dir(&pending);
        let dir = self.release_dir(&name, sequence);
        // Never retained (checked above), so only a leftover can be here: clean_leftovers removed
        // folders the database does not know.
        fs::rename(&pending, &dir)?;
        sync_dir(&self.root.join("releases"));
        crate::crash_point("after-release-dir");

        let record = ReleaseRecord {
            name: name.clone(),
            sequence,
            created: ferry_manifests::rfc3339(manifest.created),
            expires: ferry_manifests::rfc3339(manifest.expires),
            key_id: key_id.clone(),
            entries: manifest.files.len() as u64,
            payload_bytes: manifest.total_size(),
            manifest_sha256: ferry_manifests::Sha256Digest::of(&verified.manifest_bytes).to_hex(),
            imported_at: ferry_manifests::rfc3339(OffsetDateTime::now_utc()),
        };
        remove_any(&staging_root)?;
        Ok(Staged::New(record))
    }

    /// A delta's entries that its base holds must be in the blob store with their declared
    /// size and digest (re-hashed now, as if the bundle carried them); otherwise the import is
    /// refused before anything is staged, saying how much is missing and why it may be.
    fn check_delta_base(
        &self,
        manifest: &Manifest,
        base: &ferry_manifests::BaseRef,
        retain: usize,
    ) -> anyhow::Result<()> {
        let (name, sequence) = (manifest.name.to_string(), manifest.sequence);
        let mut needed: BTreeMap<ferry_manifests::Sha256Digest, &FileEntry> = BTreeMap::new();
        for file in manifest.files.iter().filter(|f| f.in_base) {
            needed.entry(file.sha256).or_insert(file);
        }
        let lacking: Vec<&&FileEntry> =
            needed.values().filter(|f| !self.blobs.contains(&f.sha256)).collect();
        if !lacking.is_empty() {
            let missing =
                Missing { blobs: lacking.len(), bytes: lacking.iter().map(|f| f.size).sum() };
            // The floor is the highest sequence ever imported under this name: a base above it
            // was never here; one at or below it was (or was skipped over) and is gone.
            let floor = self.state.floor(&name)?;
            let refusal = if floor.is_none_or(|floor| base.sequence > floor) {
                let newest = match floor {
                    Some(floor) => format!("the newest {name} it imported is {floor}"),
                    None => format!("it never imported a bundle named {name}"),
                };
                ImportRefusal::DeltaBaseUnknown {
                    name: name.clone(),
                    sequence,
                    base: base.to_string(),
                    newest,
                    missing,
                }
            } else {
                ImportRefusal::DeltaBaseMissing {
                    name: name.clone(),
                    sequence,
                    base: base.to_string(),
                    retain,
                    missing,
                }
            };
            tracing::warn!(bundle = %name, sequence, check = refusal.check(), "refused: {refusal}");
            return Err(refusal.into());
        }
        for file in needed.values() {
            let problem = match self.blobs.verify(&file.sha256) {
                Ok(size) if size == file.size => continue,
                Ok(size) => {
                    format!("its blob is {size} bytes, the manifest declares {}", file.size)
                }
                Err(e) => e.to_string(),
            };
            let refusal = ImportRefusal::DeltaBaseDamaged {
                name: name.clone(),
                sequence,
                path: file.path.to_string(),
                problem,
            };
            tracing::warn!(bundle = %name, sequence, check = refusal.check(), "refused: {refusal}");
            return Err(refusal.into());
        }
        Ok(())
    }

    /// Removes a staged release's folder that will not become active (a cluster import that
    /// another instance refused). Its blobs go at the next garbage collection.
    pub(crate) fn discard_staged(&self, name: &str, sequence: u64) -> anyhow::Result<()> {
        if !self.state.releases()?.iter().any(|r| r.name == name && r.sequence == sequence) {
            remove_any(&self.release_dir(name, sequence))?;
        }
        Ok(())
    }

    /// Re-activates a retained release: `sequence`, or the newest retained one below the
    /// active release of the same name, once it verifies as [`DataDir::check_release`] checks
    /// it with the keys trusted now (a key removed from `trusted_keys` since its import, an
    /// altered file: [`RollbackRefusal`], and the active release stays). The floor is not
    /// lowered.
    pub(crate) fn rollback(
        &mut self,
        sequence: Option<u64>,
        keys: &TrustedKeys,
    ) -> anyhow::Result<(String, u64)> {
        let (name, current) = self.state.active()?.context("no release is active")?;
        let retained: Vec<u64> = self
            .state
            .releases()?
            .into_iter()
            .filter(|r| r.name == name)
            .map(|r| r.sequence)
            .collect();
        let target = match sequence {
            Some(s) => {
                anyhow::ensure!(
                    retained.contains(&s),
                    "release {name} {s} is not retained (retained: {retained:?})"
                );
                s
            }
            None => retained.iter().copied().filter(|s| *s < current).max().with_context(|| {
                format!("no retained release of {name} is older than {current}")
            })?,
        };
        let (_, damage) = self.check_release(&name, target, keys);
        if !damage.is_empty() {
            let refusal = RollbackRefusal { name: name.clone(), sequence: target, damage };
            tracing::warn!(bundle = %name, from = current, to = target, check = refusal.check(), "refused: {refusal}");
            return Err(refusal.into());
        }
        if let Some(cluster) = &mut self.cluster {
            crate::cluster::held_everywhere(&mut **cluster, &name, target)?;
        }
        self.state.activate(&name, target)?;
        // `rollback N` may also move forward again, to a newer retained release.
        let moved =
            if target < current { "rolled back" } else { "activated a newer retained release" };
        tracing::warn!(bundle = %name, from = current, to = target, "{moved}");
        Ok((name, target))
    }

    /// Re-verifies a retained release with the keys trusted now, as its import did: the stored
    /// manifest and its signature, then every blob's SHA-256 and size against its entry.
    /// Returns the number of blobs checked and what is damaged (nothing: it may be activated).
    pub(crate) fn check_release(
        &self,
        name: &str,
        sequence: u64,
        keys: &TrustedKeys,
    ) -> (usize, Vec<Damage>) {
        let damaged = |path: String, check, problem| Damage {
            release: format!("{name} {sequence}"),
            path,
            check,
            problem,
        };
        let release = match self.load_release(name, sequence, keys) {
            Ok(release) => release,
            Err(e) => {
                return (0, vec![damaged("manifest.json".into(), e.check(), e.error.to_string())]);
            }
        };
        let damage = release
            .manifest
            .files
            .iter()
            .filter_map(|file| {
                let (check, problem) = match self.blobs.verify(&file.sha256) {
                    Ok(size) if size == file.size => return None,
                    Ok(size) => {
                        ("size", format!("size is {size}, the manifest declares {}", file.size))
                    }
                    Err(e @ StoreError::Digest { .. }) => ("sha256", e.to_string()),
                    Err(StoreError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        ("blob-missing", format!("its blob {} is gone", file.sha256.to_hex()))
                    }
                    Err(e) => ("blob-unreadable", e.to_string()),
                };
                Some(damaged(file.path.to_string(), check, problem))
            })
            .collect();
        (release.manifest.files.len(), damage)
    }

    /// What this appliance holds, for a delta built against it on the connected side
    /// (`ferry build --base`): every retained release and every blob in the store.
    pub(crate) fn holdings(&self) -> anyhow::Result<ferry_manifests::Holdings> {
        use ferry_manifests::{BundleName, HeldBlob, HeldRelease, Sha256Digest};
        let active = self.state.active()?;
        let releases = self
            .state
            .releases()?
            .into_iter()
            .map(|r| {
                Ok(HeldRelease {
                    name: BundleName::new(&r.name)?,
                    sequence: r.sequence,
                    manifest_sha256: Sha256Digest::from_hex(&r.manifest_sha256).with_context(
                        || format!("release {} {} has no digest", r.name, r.sequence),
                    )?,
                    active: active.as_ref() == Some(&(r.name.clone(), r.sequence)),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let blobs = self
            .blobs
            .list()?
            .into_iter()
            .map(|sha256| {
                let path = self.blobs.path(&sha256);
                let size = fs::metadata(&path)
                    .with_context(|| format!("cannot stat {}", path.display()))?
                    .len();
                Ok(HeldBlob { sha256, size })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(ferry_manifests::Holdings {
            ferry_holdings: ferry_manifests::HOLDINGS_FORMAT,
            generated: ferry_manifests::rfc3339(OffsetDateTime::now_utc()),
            releases,
            blobs,
        })
    }

    /// Re-hashes every blob of every retained release against its signed manifest.
    pub(crate) fn fsck(&self, keys: &TrustedKeys) -> anyhow::Result<(usize, Vec<Damage>)> {
        let mut damage = Vec::new();
        let mut checked = 0;
        for r in self.state.releases()? {
            let (files, found) = self.check_release(&r.name, r.sequence, keys);
            checked += files;
            damage.extend(found);
        }
        Ok((checked, damage))
    }

    /// Keeps the active release and the `retain` most recently imported ones whose signing key
    /// is still trusted; removes the other releases and every blob no kept release needs. A
    /// release whose key is no longer trusted is removed whatever its age: it can never be
    /// activated again (rollback and import refuse it). Returns (releases removed, blobs
    /// removed).
    pub(crate) fn gc(
        &mut self,
        retain: usize,
        keys: &TrustedKeys,
    ) -> anyhow::Result<(usize, usize)> {
        let active = self.state.active()?;
        let mut releases = self.state.releases()?;
        releases.reverse(); // newest first
        let mut kept = Vec::new();
        let mut removed = 0;
        for r in &releases {
            let is_active = active.as_ref() == Some(&(r.name.clone(), r.sequence));
            let untrusted =
                || self.load_release(&r.name, r.sequence, keys).is_err_and(|e| e.is_untrusted());
            if is_active || (kept.len() < retain.max(1) && !untrusted()) {
                kept.push(r.clone());
            } else {
                self.state.forget(&r.name, r.sequence)?;
                remove_any(&self.release_dir(&r.name, r.sequence))?;
                removed += 1;
            }
        }
        crate::crash_point("during-gc");
        let mut needed = HashSet::new();
        for r in &kept {
            // A release whose manifest cannot be read keeps every blob: never delete on doubt.
            let release = self.load_release(&r.name, r.sequence, keys)?;
            needed.extend(release.manifest.files.iter().map(|f| f.sha256));
        }
        let mut blobs_removed = 0;
        for digest in self.blobs.list()? {
            if !needed.contains(&digest) {
                self.blobs.remove(&digest)?;
                blobs_removed += 1;
            }
        }
        Ok((removed, blobs_removed))
    }
}

/// Loads a retained release from the data directory at `root`, re-verifying its stored
/// manifest with `keys` by the import's own checks ([`ferry_manifests::verify_stored_manifest`])
/// and that it is the manifest of this release. Does not touch anything else in the directory.
pub(crate) fn load_release_at(
    root: &Path,
    name: &str,
    sequence: u64,
    keys: &TrustedKeys,
) -> Result<Release, StoredManifestError> {
    let refused = |error| StoredManifestError { name: name.to_owned(), sequence, error };
    let dir = root.join("releases").join(release_dir_name(name, sequence));
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read(&path).map_err(|source| refused(VerifyError::Io { path, source }))
    };
    let bytes = read("manifest.json")?;
    let signature = String::from_utf8_lossy(&read("manifest.json.minisig")?).into_owned();
    let (manifest, _) =
        ferry_manifests::verify_stored_manifest(&bytes, &signature, keys, &Limits::default())
            .map_err(refused)?;
    // A validly signed manifest of another release (copied over this one's) is not this one.
    if manifest.name.as_str() != name || manifest.sequence != sequence {
        return Err(refused(VerifyError::TrustedComment {
            signature: "manifest",
            reason: format!(
                "it names {} {}, but it is kept as release {name} {sequence}",
                manifest.name, manifest.sequence
            ),
        }));
    }
    let files = manifest.files.iter().map(|f| (f.path.to_string(), f.clone())).collect();
    Ok(Release {
        name: name.into(),
        sequence,
        manifest,
        files,
        registry: std::sync::OnceLock::new(),
    })
}

/// The staging sink, with a crash point after the first entry for the crash tests.
struct CrashingSink {
    inner: StagingDir,
    entries: usize,
}

impl EntrySink for CrashingSink {
    fn entry(&mut self, entry: &FileEntry, data: &mut dyn Read) -> std::io::Result<()> {
        self.inner.entry(entry, data)?;
        self.entries += 1;
        if self.entries == 1 {
            crate::crash_point("during-extract");
        }
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn remove_any(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if meta.is_dir() {
        // Staged files are read-only (0444) only inside the blob store; staging dirs are ours.
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .with_context(|| format!("cannot remove {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ferry_manifests::forge::{self, Piece};
    use ferry_manifests::{Sha256Digest, SigningKey};

    use super::*;

    /// The verified bundle's one body: 4 KiB that zstd cannot shrink, so that a replacement with a
    /// body that compresses (as many zeros, or a few bytes) is never longer than the verified file.
    fn verified_body() -> Vec<u8> {
        ferry_testkit::noise("the verified body", 4096)
    }

    /// Other content of the verified body's length.
    fn replaced_body() -> Vec<u8> {
        vec![0; 4096]
    }

    /// Runs its action once, when the detached signature check (step 1) reports that it is
    /// done: between verifying a bundle and reading it again, where a replacement would have to
    /// happen to be imported.
    struct AfterSignature(Mutex<Option<Box<dyn FnOnce() + Send>>>);

    impl AfterSignature {
        fn new(action: impl FnOnce() + Send + 'static) -> Self {
            Self(Mutex::new(Some(Box::new(action))))
        }
    }

    impl Progress for AfterSignature {
        fn finish(&self) {
            if let Some(action) = self.0.lock().unwrap().take() {
                action();
            }
        }
    }

    struct Site {
        dir: tempfile::TempDir,
        key: SigningKey,
    }

    impl Site {
        fn new() -> Self {
            let generated = ferry_manifests::generate_key(None).unwrap();
            let key = SigningKey::from_text(&generated.secret_key_file, "test", None).unwrap();
            Self { dir: tempfile::tempdir().unwrap(), key }
        }

        /// The compressed bytes of a validly signed bundle whose one entry, `a`, holds `body`,
        /// after `head` (the metadata entries of `manifest`).
        fn compressed(&self, manifest: &Manifest, body: &[u8]) -> Vec<u8> {
            let mut pieces = forge::head(&self.key, manifest);
            pieces.push(Piece::file("a", body));
            forge::zstd(&forge::tar_bytes(&pieces, true))
        }

        /// Writes bundle `sequence` of one entry holding `body`, with its signature.
        fn bundle(&self, sequence: u64, body: &[u8]) -> (PathBuf, Manifest) {
            let manifest = forge::manifest(sequence, vec![forge::declared("a", body)]);
            let path = self.dir.path().join(format!("site-{sequence}.ferry"));
            forge::sign_file(&path, &self.key, &manifest, &self.compressed(&manifest, body))
                .unwrap();
            (path, manifest)
        }

        /// Imports `bundle`, running `replace` between its verification and its reading.
        fn import(
            &self,
            bundle: &Path,
            replace: impl FnOnce() + Send + 'static,
        ) -> (DataDir, anyhow::Result<ReleaseRecord>) {
            let mut data = DataDir::open(
                &self.dir.path().join("data"),
                &crate::store::Location::Sqlite(self.dir.path().join("data")),
            )
            .unwrap();
            let keys = TrustedKeys::from(self.key.public_key());
            let options = ImportOptions { retain: 3, ..ImportOptions::default() };
            let signature = ferry_manifests::default_signature_path(bundle);
            let input = BundleInput::File { bundle, signature: &signature };
            let imported = data.import(input, &keys, options, &AfterSignature::new(replace));
            (data, imported)
        }
    }

    fn refused_as(result: anyhow::Result<ReleaseRecord>) -> Option<&'static str> {
        crate::refusal_check(&result.expect_err("the import went through"))
    }

    #[test]
    fn a_bundle_renamed_over_the_verified_one_is_not_imported() {
        let site = Site::new();
        let (path, manifest) = site.bundle(1, &verified_body());
        let (other, _) = site.bundle(2, &replaced_body());
        let target = path.clone();
        let (data, imported) = site.import(&path, move || {
            std::fs::rename(&other, &target).unwrap();
            let signature = ferry_manifests::default_signature_path(&target);
            std::fs::rename(ferry_manifests::default_signature_path(&other), signature).unwrap();
        });
        let record = imported.unwrap();
        assert_eq!((record.name.as_str(), record.sequence), ("site", 1));
        assert_eq!(record.manifest_sha256, Sha256Digest::of(&manifest.to_bytes()).to_hex());
        assert_eq!(data.active().unwrap(), Some(("site".to_owned(), 1)));
        let blob = data.blobs.path(&Sha256Digest::of(&verified_body()));
        assert_eq!(std::fs::read(blob).unwrap(), verified_body());
        assert!(!data.blobs.contains(&Sha256Digest::of(&replaced_body())));
    }

    #[test]
    fn a_bundle_written_in_place_is_refused_and_nothing_changes() {
        let site = Site::new();
        let (path, manifest) = site.bundle(1, &verified_body());
        // Another bundle of the same key, no longer than the verified one (a longer one is cut
        // at the verified length and refused as truncated).
        let other = forge::manifest(2, vec![forge::declared("a", b"short\n")]);
        let other = site.compressed(&other, b"short\n");
        assert!(other.len() < std::fs::metadata(&path).unwrap().len() as usize);
        let target = path.clone();
        let (data, imported) = site.import(&path, move || std::fs::write(target, other).unwrap());
        assert_eq!(refused_as(imported), Some("trusted-comment"));
        assert_eq!(data.active().unwrap(), None);

        // The verified manifest and signature, byte for byte, and another body for `a`.
        drop(data);
        let (path, _) = site.bundle(1, &verified_body());
        let altered = site.compressed(&manifest, &replaced_body());
        assert!(altered.len() < std::fs::metadata(&path).unwrap().len() as usize);
        let target = path.clone();
        let (data, imported) = site.import(&path, move || std::fs::write(target, altered).unwrap());
        assert_eq!(refused_as(imported), Some("sha256"));
        assert_eq!(data.active().unwrap(), None);
        assert!(data.releases().unwrap().is_empty());
        assert!(!data.blobs.contains(&Sha256Digest::of(&replaced_body())));
    }
}
