//! The bundle reader: verify the detached signature over the raw file, then stream the archive
//! once, trusting nothing that the signed manifest does not vouch for.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use sha2::Digest as _;
use time::OffsetDateTime;

use crate::limits::Limits;
use crate::manifest::{Expired, FileEntry, Manifest, ManifestError, Sha256Digest};
use crate::name::{EntryName, MANIFEST_ENTRY, MANIFEST_SIGNATURE_ENTRY, NameError};
use crate::progress::Progress;
use crate::sign::{BundleComment, KeyId, ManifestComment, PublicKey, SignatureFile, TrustedKeys};
use crate::tar::{self, BLOCK, RawHeader};

const IO_BUFFER: usize = 1 << 20;

/// Every way a bundle can be refused. Each check has its own variant, so callers (and tests) can
/// tell which one failed; messages name the file, entry or field and the expected and actual
/// values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("bundle {path} does not exist")]
    NoBundle { path: PathBuf },
    #[error(
        "detached signature {path} does not exist: a bundle is accepted only with its .minisig \
         (carry it along, or name it with --signature)"
    )]
    NoSignature { path: PathBuf },
    #[error("signature file {path} is {size} bytes, the limit is {max}")]
    SignatureTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{what} is not a usable minisign signature: {reason}")]
    SignatureMalformed { what: String, reason: String },
    #[error("signed by key {key_id}, which is not trusted (trusted: {trusted})")]
    UntrustedKey { key_id: KeyId, trusted: String },
    #[error(
        "detached signature check failed for {path}: {reason} (the file was altered, truncated, or signed by another key)"
    )]
    BadBundleSignature { path: PathBuf, reason: String },
    #[error("manifest signature check failed: {reason}")]
    BadManifestSignature { reason: String },
    #[error("the manifest is signed by key {manifest}, the bundle file by key {bundle}")]
    SignerMismatch { bundle: KeyId, manifest: KeyId },
    #[error("{signature} signature's trusted comment is wrong: {reason}")]
    TrustedComment { signature: &'static str, reason: String },
    #[error("{path} is neither zstd nor gzip compressed (starts with {magic})")]
    UnknownCompression { path: PathBuf, magic: String },
    #[error("compressed stream is corrupt near uncompressed offset {offset}: {reason}")]
    Decompress { offset: u64, reason: String },
    #[error("archive ends early, at uncompressed offset {offset}")]
    Truncated { offset: u64 },
    #[error("malformed tar header at offset {offset}: {reason}")]
    MalformedTar { offset: u64, reason: String },
    #[error("expected {expected} as entry {index}, found {found}")]
    MissingManifest { index: usize, expected: &'static str, found: String },
    #[error("manifest.json is {size} bytes, the limit is {max}")]
    ManifestTooLarge { size: u64, max: u64 },
    #[error("manifest.json is invalid: {0}")]
    Manifest(#[from] ManifestError),
    #[error("entry {name:?} has an unsafe name: {reason}")]
    UnsafeName { name: String, reason: NameError },
    #[error("entry {path:?} is a {kind}; links are never accepted")]
    Link { path: String, kind: String },
    #[error("entry {path:?} is a {kind}; devices and fifos are never accepted")]
    SpecialFile { path: String, kind: String },
    #[error("entry {path:?} is a {kind}; format 1 holds only regular files")]
    NotRegularFile { path: String, kind: String },
    #[error("entry {path} is not listed in the manifest")]
    UndeclaredEntry { path: EntryName },
    #[error("entry {path} appears more than once")]
    DuplicateEntry { path: EntryName },
    #[error("entry {path} is out of order: the manifest expects {expected} here")]
    OutOfOrder { path: EntryName, expected: EntryName },
    #[error("entry {path} is marked in_base: the delta's base holds it, the archive must not")]
    InBase { path: EntryName },
    #[error("entry {path} is listed in the manifest but missing from the archive")]
    MissingEntry { path: EntryName },
    #[error("entry {path} is {actual} bytes, the manifest declares {declared}")]
    SizeMismatch { path: EntryName, declared: u64, actual: u64 },
    #[error("entry {path} has mode {actual:04o}, the manifest declares {declared:04o}")]
    ModeMismatch { path: EntryName, declared: u32, actual: u32 },
    #[error("entry {path} has sha256 {actual}, the manifest declares {expected}")]
    DigestMismatch { path: EntryName, expected: Sha256Digest, actual: Sha256Digest },
    #[error("data follows the end of the archive at uncompressed offset {offset}")]
    TrailingData { offset: u64 },
    #[error(transparent)]
    Expired(#[from] Expired),
    #[error("cannot store entry {path}: {source}")]
    Sink { path: EntryName, source: io::Error },
}

impl VerifyError {
    /// A short, stable name of the check that failed, for machine output.
    pub fn check(&self) -> &'static str {
        use VerifyError::*;
        match self {
            Io { .. } => "io",
            NoBundle { .. } => "bundle-missing",
            NoSignature { .. } => "signature-missing",
            SignatureTooLarge { .. } | SignatureMalformed { .. } => "signature-format",
            UntrustedKey { .. } => "untrusted-key",
            BadBundleSignature { .. } => "bundle-signature",
            BadManifestSignature { .. } => "manifest-signature",
            SignerMismatch { .. } => "signer-mismatch",
            TrustedComment { .. } => "trusted-comment",
            UnknownCompression { .. } | Decompress { .. } => "compression",
            Truncated { .. } => "truncated",
            MalformedTar { .. } => "tar-header",
            MissingManifest { .. } => "manifest-missing",
            ManifestTooLarge { .. } => "manifest-size",
            Manifest(_) => "manifest",
            UnsafeName { .. } => "unsafe-name",
            Link { .. } => "link",
            SpecialFile { .. } => "special-file",
            NotRegularFile { .. } => "not-regular",
            UndeclaredEntry { .. } => "undeclared-entry",
            InBase { .. } => "in-base-entry",
            DuplicateEntry { .. } => "duplicate-entry",
            OutOfOrder { .. } => "out-of-order",
            MissingEntry { .. } => "missing-entry",
            SizeMismatch { .. } => "size",
            ModeMismatch { .. } => "mode",
            DigestMismatch { .. } => "sha256",
            TrailingData { .. } => "trailing-data",
            Expired(_) => "expired",
            Sink { .. } => "store",
        }
    }

    /// Whether this is a verdict about the bundle (exit 1) rather than a local problem (exit 2).
    /// A bundle or signature that is not there is a verdict: nothing can vouch for it.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, VerifyError::Io { .. } | VerifyError::Sink { .. })
    }
}

/// Receives each payload file's bytes during extraction.
pub trait EntrySink {
    /// Consumes `data`, which yields at most `entry.size` bytes. The reader checks size and
    /// digest after this returns, so a sink must keep what it wrote provisional until the whole
    /// bundle has been verified.
    fn entry(&mut self, entry: &FileEntry, data: &mut dyn Read) -> io::Result<()>;
}

/// Throws payload bytes away after they are checked (for `verify`).
pub struct Discard;

impl EntrySink for Discard {
    fn entry(&mut self, _entry: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(drop)
    }
}

/// Writes payload files below a private staging directory that this sink creates. Files are
/// created new (never through an existing name or link), written, then given the mode the
/// manifest declares. Directories are created one component at a time and must be real
/// directories. Nothing is synced until [`StagingDir::sync`], so the kernel writes earlier
/// files back while later ones are still arriving.
pub struct StagingDir {
    root: PathBuf,
    written: Vec<PathBuf>,
}

impl StagingDir {
    /// Creates `root`, which must not exist yet, readable by its owner only.
    pub fn create(root: &Path) -> io::Result<Self> {
        fs::DirBuilder::new().mode(0o700).create(root)?;
        Ok(Self { root: root.to_owned(), written: Vec::new() })
    }

    /// Makes every file and folder written so far durable.
    pub fn sync(&self) -> io::Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for path in &self.written {
            File::open(path)?.sync_all()?;
            dirs.extend(
                path.ancestors()
                    .skip(1)
                    .take_while(|d| d.starts_with(&self.root))
                    .map(Path::to_owned),
            );
        }
        dirs.insert(self.root.clone());
        for dir in dirs {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `name` is (or will be) stored.
    pub fn path_of(&self, name: &EntryName) -> PathBuf {
        name.components().fold(self.root.clone(), |p, c| p.join(c))
    }
}

impl EntrySink for StagingDir {
    fn entry(&mut self, entry: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        let mut dir = self.root.clone();
        let components: Vec<&str> = entry.path.components().collect();
        for component in &components[..components.len() - 1] {
            dir.push(component);
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !fs::symlink_metadata(&dir)?.file_type().is_dir() {
                        return Err(io::Error::other(format!(
                            "{} is not a directory",
                            dir.display()
                        )));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let path = dir.join(components[components.len() - 1]);
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        let mut out = io::BufWriter::with_capacity(IO_BUFFER, file);
        io::copy(data, &mut out)?;
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode.bits()))?;
        self.written.push(path);
        Ok(())
    }
}

/// A bundle whose detached signature has been verified against a trusted key (step 1).
///
/// It holds the open file it verified, and the later steps read that handle again from its
/// start, never the path, and no further than the length the signature covered: a bundle
/// renamed over the path after step 1 is never read (the handle keeps the verified file), and
/// bytes appended to the file are not either. A handle cannot stop a writer from changing the
/// same file in place, though. Such bytes are decompressed (within the same limits) and then
/// meet the checks every bundle meets: the manifest must be the one the verified trusted
/// comment names (`manifest-sha256`) with its own valid signature, each entry must hash to
/// what that manifest declares before the next is read, and the archive must end where it
/// says. So the reader hands on exactly the verified manifest's files, or refuses.
#[derive(Debug)]
pub struct SignedBundle {
    path: PathBuf,
    file: Box<dyn BundleRead>,
    verified_len: u64,
    key: PublicKey,
    comment: BundleComment,
    limits: Limits,
}

/// What a bundle's bytes are read from: its file, or anything that reads and seeks like one (the
/// appliance reads a bundle that came in parts straight from them, `crate::parts::PartsReader`).
pub trait BundleRead: Read + Seek + Send {}

impl<T: Read + Seek + Send> BundleRead for T {}

impl std::fmt::Debug for dyn BundleRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BundleRead")
    }
}

/// Where a bundle's detached signature is unless told otherwise: `BUNDLE.minisig`.
pub fn default_signature_path(bundle: &Path) -> PathBuf {
    let mut name = bundle.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// Reads a signature file, bounded by `limits`.
fn read_signature(path: &Path, limits: &Limits) -> Result<(String, SignatureFile), VerifyError> {
    let io_err = |source| VerifyError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => VerifyError::NoSignature { path: path.to_owned() },
        _ => io_err(e),
    })?;
    let size = file.metadata().map_err(io_err)?.len();
    if size > limits.max_signature_size {
        return Err(VerifyError::SignatureTooLarge {
            path: path.to_owned(),
            size,
            max: limits.max_signature_size,
        });
    }
    let mut text = String::new();
    file.take(limits.max_signature_size).read_to_string(&mut text).map_err(io_err)?;
    let parsed = SignatureFile::parse(&text).map_err(|reason| VerifyError::SignatureMalformed {
        what: path.display().to_string(),
        reason,
    })?;
    Ok((text, parsed))
}

/// Opens a bundle file; a missing one is [`VerifyError::NoBundle`].
fn open_bundle(path: &Path) -> Result<File, VerifyError> {
    File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => VerifyError::NoBundle { path: path.to_owned() },
        _ => VerifyError::Io { path: path.to_owned(), source },
    })
}

fn trusted_key(keys: &TrustedKeys, id: KeyId) -> Result<PublicKey, VerifyError> {
    keys.get(id).cloned().ok_or_else(|| VerifyError::UntrustedKey {
        key_id: id,
        trusted: keys.ids().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
    })
}

impl SignedBundle {
    /// Step 1: checks the detached minisign signature over the raw bytes of `bundle`. Nothing
    /// of the bundle is parsed or decompressed before this succeeds.
    pub fn verify(
        bundle: &Path,
        signature: &Path,
        keys: &TrustedKeys,
        limits: Limits,
        progress: &dyn Progress,
    ) -> Result<Self, VerifyError> {
        // The bundle first: when it is missing, that is what the operator must hear about, not
        // the signature beside it.
        let file = open_bundle(bundle)?;
        let (_, sig) = read_signature(signature, &limits)?;
        Self::verify_parsed(Box::new(file), bundle, &sig, keys, limits, progress)
    }

    /// Step 1 for a bundle that is not one file: `source` yields its bytes from the start,
    /// `path` names it in messages, `signature` is its detached signature's text.
    pub fn verify_read(
        source: Box<dyn BundleRead>,
        path: &Path,
        signature: &str,
        keys: &TrustedKeys,
        limits: Limits,
        progress: &dyn Progress,
    ) -> Result<Self, VerifyError> {
        if signature.len() as u64 > limits.max_signature_size {
            return Err(VerifyError::SignatureTooLarge {
                path: default_signature_path(path),
                size: signature.len() as u64,
                max: limits.max_signature_size,
            });
        }
        let sig =
            SignatureFile::parse(signature).map_err(|reason| VerifyError::SignatureMalformed {
                what: format!("{}'s signature", path.display()),
                reason,
            })?;
        Self::verify_parsed(source, path, &sig, keys, limits, progress)
    }

    fn verify_parsed(
        mut file: Box<dyn BundleRead>,
        bundle: &Path,
        sig: &SignatureFile,
        keys: &TrustedKeys,
        limits: Limits,
        progress: &dyn Progress,
    ) -> Result<Self, VerifyError> {
        let io_err = |source| VerifyError::Io { path: bundle.to_owned(), source };
        let key = trusted_key(keys, sig.key_id())?;
        let total = file.seek(SeekFrom::End(0)).and_then(|n| file.rewind().map(|()| n));
        let total = total.map_err(io_err)?;
        let bad =
            |reason: String| VerifyError::BadBundleSignature { path: bundle.to_owned(), reason };
        let mut verifier = sig.verifier(&key).map_err(bad)?;
        progress.start("checking signature", total);
        let mut buf = vec![0u8; IO_BUFFER];
        let mut verified_len = 0;
        loop {
            let n = file.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            verifier.update(&buf[..n]);
            verified_len += n as u64;
            progress.advance(n as u64);
        }
        progress.finish();
        verifier.finalize().map_err(bad)?;
        let comment = sig
            .trusted_comment()
            .parse::<BundleComment>()
            .map_err(|reason| VerifyError::TrustedComment { signature: "detached", reason })?;
        Ok(Self { path: bundle.to_owned(), file, verified_len, key, comment, limits })
    }

    pub fn key_id(&self) -> KeyId {
        self.key.key_id()
    }

    /// What the verified trusted comment says.
    pub fn comment(&self) -> &BundleComment {
        &self.comment
    }

    /// Step 2, first half: decompresses just far enough to read `manifest.json` and its
    /// signature, verifies them with the same key, checks they match the detached signature's
    /// trusted comment, and then applies `expiry`. The caller checks what else it must (the
    /// appliance: its floors) on the result before extracting. Reads the file verified in
    /// step 1, from its start.
    pub fn read_manifest(self, expiry: Expiry) -> Result<ManifestStage, VerifyError> {
        let mut file = self.file;
        file.rewind().map_err(|source| VerifyError::Io { path: self.path.clone(), source })?;
        let verified = file.take(self.verified_len);
        let head = read_head(TarStream::open(verified, &self.path, &self.limits)?, &self.limits)?;
        let sig = SignatureFile::parse(&head.signature_text).map_err(|reason| {
            VerifyError::SignatureMalformed { what: MANIFEST_SIGNATURE_ENTRY.into(), reason }
        })?;
        if sig.key_id() != self.key.key_id() {
            return Err(VerifyError::SignerMismatch {
                bundle: self.key.key_id(),
                manifest: sig.key_id(),
            });
        }
        let manifest = check_signed_manifest(&head.manifest_bytes, &sig, &self.key, &self.limits)?;
        let outer = &self.comment;
        expect("detached", "name", &outer.name.to_string(), &manifest.name.to_string())?;
        expect(
            "detached",
            "sequence",
            &outer.sequence.to_string(),
            &manifest.sequence.to_string(),
        )?;
        expect(
            "detached",
            "manifest-sha256",
            &outer.manifest_sha256.to_hex(),
            &Sha256Digest::of(&head.manifest_bytes).to_hex(),
        )?;
        // Only now: the bundle's name and sequence are the signed ones, for whoever reports it.
        let expired = match expiry {
            Expiry::Enforce { now, grace } => match manifest.expired(now, grace) {
                Some(expired) => return Err(expired.into()),
                None => None,
            },
            Expiry::AllowExpired { now, grace } => manifest.expired(now, grace),
        };
        Ok(ManifestStage {
            manifest,
            expired,
            manifest_bytes: head.manifest_bytes,
            manifest_signature: head.signature_text,
            key_id: self.key.key_id(),
            stream: head.stream,
        })
    }
}

/// How reading a manifest treats its `expires`. It is an argument of
/// [`SignedBundle::read_manifest`], so that no reader can forget expiry and an override is
/// spelled out where it is made.
#[derive(Debug, Clone, Copy)]
pub enum Expiry {
    /// Refuse ([`VerifyError::Expired`]) a manifest whose `expires` lies more than `grace`
    /// before `now`.
    Enforce { now: OffsetDateTime, grace: time::Duration },
    /// Read it even so: an operator's explicit override (`--allow-expired`). Whether it had
    /// expired by the same rule is kept ([`ManifestStage::expired`]), to be reported.
    AllowExpired { now: OffsetDateTime, grace: time::Duration },
}

/// Checks a trusted comment's claim against what the manifest says.
fn expect(
    signature: &'static str,
    field: &str,
    claimed: &str,
    actual: &str,
) -> Result<(), VerifyError> {
    if claimed == actual {
        Ok(())
    } else {
        Err(VerifyError::TrustedComment {
            signature,
            reason: format!("{field} is {claimed}, the manifest says {actual}"),
        })
    }
}

/// The manifest's own checks, inside a bundle (step 2a) or kept apart from it: its signature by
/// `key`, the format's rules, and the signature's trusted comment naming the manifest's bundle
/// and sequence.
fn check_signed_manifest(
    bytes: &[u8],
    sig: &SignatureFile,
    key: &PublicKey,
    limits: &Limits,
) -> Result<Manifest, VerifyError> {
    sig.verify(key, bytes).map_err(|reason| VerifyError::BadManifestSignature { reason })?;
    let manifest = Manifest::parse(bytes, limits)?;
    let inner = sig
        .trusted_comment()
        .parse::<ManifestComment>()
        .map_err(|reason| VerifyError::TrustedComment { signature: "manifest", reason })?;
    expect("manifest", "name", &inner.name.to_string(), &manifest.name.to_string())?;
    expect("manifest", "sequence", &inner.sequence.to_string(), &manifest.sequence.to_string())?;
    Ok(manifest)
}

/// Verifies a signed manifest kept apart from its bundle (the appliance keeps one per release)
/// with the keys trusted now, by the checks step 2a makes inside a bundle: a trusted signer, the
/// signature, the format's rules and the trusted comment. Returns the manifest and its signer.
/// Expiry is not among them: it decides whether a bundle may come in, and a release already in
/// keeps being served after its `expires` (a site must keep working; `docs/security.md`).
pub fn verify_stored_manifest(
    manifest_bytes: &[u8],
    signature_text: &str,
    keys: &TrustedKeys,
    limits: &Limits,
) -> Result<(Manifest, KeyId), VerifyError> {
    let sig = SignatureFile::parse(signature_text).map_err(|reason| {
        VerifyError::SignatureMalformed { what: MANIFEST_SIGNATURE_ENTRY.into(), reason }
    })?;
    let key = trusted_key(keys, sig.key_id())?;
    let manifest = check_signed_manifest(manifest_bytes, &sig, &key, limits)?;
    Ok((manifest, key.key_id()))
}

/// A verified manifest whose payload has not been read yet.
pub struct ManifestStage {
    manifest: Manifest,
    expired: Option<Expired>,
    manifest_bytes: Vec<u8>,
    manifest_signature: String,
    key_id: KeyId,
    stream: TarStream,
}

/// A bundle that passed every check; its payload went to the sink.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub manifest: Manifest,
    /// The exact signed manifest bytes, worth keeping as the record of what was accepted.
    pub manifest_bytes: Vec<u8>,
    /// The manifest's minisign signature file.
    pub manifest_signature: String,
    pub key_id: KeyId,
}

impl ManifestStage {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// How the manifest had expired, when [`Expiry::AllowExpired`] let it through; `None`
    /// when it had not (under [`Expiry::Enforce`] it would have been refused).
    pub fn expired(&self) -> Option<&Expired> {
        self.expired.as_ref()
    }

    /// Step 2, second half: streams every payload entry the archive carries through a reader
    /// capped at its declared size into `sink` while hashing it, then requires the archive to
    /// end exactly there. A delta's `in_base` entries never reach the sink: the caller takes
    /// them from what it holds and checks their digests itself.
    pub fn extract(
        mut self,
        sink: &mut dyn EntrySink,
        progress: &dyn Progress,
    ) -> Result<VerifiedBundle, VerifyError> {
        let all = &self.manifest.files;
        let files: Vec<&FileEntry> = self.manifest.carried().collect();
        // Names the archive must not hold although the manifest lists them.
        let in_base = |name: &EntryName| all.iter().any(|f| f.in_base && &f.path == name);
        progress.start("verifying entries", self.manifest.carried_size());
        for (index, expected) in files.iter().enumerate() {
            let Some((offset, header)) = self.stream.next_header()? else {
                return Err(VerifyError::MissingEntry { path: expected.path.clone() });
            };
            let name = entry_name(offset, &header)?;
            if name != expected.path {
                let earlier = &files[..index];
                return Err(if earlier.iter().any(|f| f.path == name) {
                    VerifyError::DuplicateEntry { path: name }
                } else if files[index..].iter().any(|f| f.path == name) {
                    VerifyError::OutOfOrder { path: name, expected: expected.path.clone() }
                } else if in_base(&name) {
                    VerifyError::InBase { path: name }
                } else {
                    VerifyError::UndeclaredEntry { path: name }
                });
            }
            if header.size != expected.size {
                return Err(VerifyError::SizeMismatch {
                    path: name,
                    declared: expected.size,
                    actual: header.size,
                });
            }
            if header.mode & 0o7777 != expected.mode.bits() {
                return Err(VerifyError::ModeMismatch {
                    path: name,
                    declared: expected.mode.bits(),
                    actual: header.mode & 0o7777,
                });
            }
            let mut body = EntryBody {
                stream: &mut self.stream,
                left: expected.size,
                hasher: sha2::Sha256::new(),
                failure: None,
                progress,
            };
            let stored = sink.entry(expected, &mut body);
            if let Some(failure) = body.failure.take() {
                return Err(failure);
            }
            stored.map_err(|source| VerifyError::Sink { path: name.clone(), source })?;
            // The sink may stop early; the digest must still cover every declared byte.
            io::copy(&mut body, &mut io::sink()).ok();
            if let Some(failure) = body.failure.take() {
                return Err(failure);
            }
            let actual = Sha256Digest(body.hasher.finalize().into());
            if actual != expected.sha256 {
                return Err(VerifyError::DigestMismatch {
                    path: name,
                    expected: expected.sha256,
                    actual,
                });
            }
            self.stream.skip_padding(expected.size)?;
        }
        // Anything but the end marker here is an entry the manifest does not list.
        if let Some((offset, header)) = self.stream.next_header()? {
            let name = entry_name(offset, &header)?;
            return Err(if files.iter().any(|f| f.path == name) {
                VerifyError::DuplicateEntry { path: name }
            } else if in_base(&name) {
                VerifyError::InBase { path: name }
            } else {
                VerifyError::UndeclaredEntry { path: name }
            });
        }
        self.stream.expect_end()?;
        progress.finish();
        Ok(VerifiedBundle {
            manifest: self.manifest,
            manifest_bytes: self.manifest_bytes,
            manifest_signature: self.manifest_signature,
            key_id: self.key_id,
        })
    }
}

/// What `inspect` can tell without a trusted key. Nothing here is verified.
#[derive(Debug, Clone)]
pub struct UnverifiedManifest {
    pub manifest: Manifest,
    pub manifest_sha256: Sha256Digest,
    /// Key id of the inner manifest signature, if it parses.
    pub manifest_key_id: Option<KeyId>,
    /// The manifest's exact bytes and its signature file, for a caller that can check them with
    /// [`verify_stored_manifest`] (`ferry build --base` does, with its own key).
    pub manifest_bytes: Vec<u8>,
    pub manifest_signature: String,
}

/// Reads the manifest of `bundle` without checking any signature, within `limits`. For display
/// only: never act on what this returns.
pub fn read_unverified(bundle: &Path, limits: &Limits) -> Result<UnverifiedManifest, VerifyError> {
    let whole = (Box::new(open_bundle(bundle)?) as Box<dyn BundleRead>).take(u64::MAX);
    let head = read_head(TarStream::open(whole, bundle, limits)?, limits)?;
    let manifest = Manifest::parse(&head.manifest_bytes, limits)?;
    Ok(UnverifiedManifest {
        manifest_sha256: Sha256Digest::of(&head.manifest_bytes),
        manifest_key_id: SignatureFile::parse(&head.signature_text).ok().map(|s| s.key_id()),
        manifest,
        manifest_bytes: head.manifest_bytes,
        manifest_signature: head.signature_text,
    })
}

/// Reads the key id a detached signature file names, without verifying anything.
pub fn signature_key_id(signature: &Path, limits: &Limits) -> Result<KeyId, VerifyError> {
    read_signature(signature, limits).map(|(_, s)| s.key_id())
}

struct Head {
    manifest_bytes: Vec<u8>,
    signature_text: String,
    stream: TarStream,
}

/// Reads the two metadata entries from the start of `stream`, within `limits`.
fn read_head(mut stream: TarStream, limits: &Limits) -> Result<Head, VerifyError> {
    let mut metadata_entry = |index, expected: &'static str, max: u64| {
        let Some((offset, header)) = stream.next_header()? else {
            return Err(VerifyError::MissingManifest {
                index,
                expected,
                found: "the end of the archive".into(),
            });
        };
        if header.path != expected || !is_regular(header.typeflag) {
            return Err(VerifyError::MissingManifest {
                index,
                expected,
                found: format!(
                    "{} {:?} at offset {offset}",
                    tar::type_name(header.typeflag),
                    header.path
                ),
            });
        }
        if header.mode & 0o7777 != 0o644 || !header.linkname.is_empty() {
            return Err(VerifyError::MalformedTar {
                offset,
                reason: format!(
                    "{expected} must have mode 0644 and no link name (has {:04o}, {:?})",
                    header.mode & 0o7777,
                    header.linkname
                ),
            });
        }
        if header.size > max {
            return Err(if expected == MANIFEST_ENTRY {
                VerifyError::ManifestTooLarge { size: header.size, max }
            } else {
                VerifyError::SignatureTooLarge { path: expected.into(), size: header.size, max }
            });
        }
        let mut bytes = vec![0u8; header.size as usize];
        stream.read_exact(&mut bytes)?;
        stream.skip_padding(header.size)?;
        Ok(bytes)
    };
    let manifest_bytes = metadata_entry(0, MANIFEST_ENTRY, limits.max_manifest_size)?;
    let signature = metadata_entry(1, MANIFEST_SIGNATURE_ENTRY, limits.max_signature_size)?;
    let signature_text =
        String::from_utf8(signature).map_err(|_| VerifyError::SignatureMalformed {
            what: MANIFEST_SIGNATURE_ENTRY.into(),
            reason: "not UTF-8".into(),
        })?;
    Ok(Head { manifest_bytes, signature_text, stream })
}

fn is_regular(flag: u8) -> bool {
    flag == tar::TYPE_REGULAR || flag == 0
}

/// Classifies a payload header: only regular files with safe names pass.
fn entry_name(offset: u64, header: &RawHeader) -> Result<EntryName, VerifyError> {
    let kind = tar::type_name(header.typeflag);
    let path = header.path.clone();
    match header.typeflag {
        f if is_regular(f) => {}
        tar::TYPE_HARDLINK | tar::TYPE_SYMLINK => return Err(VerifyError::Link { path, kind }),
        tar::TYPE_CHAR_DEVICE | tar::TYPE_BLOCK_DEVICE | tar::TYPE_FIFO => {
            return Err(VerifyError::SpecialFile { path, kind });
        }
        _ => return Err(VerifyError::NotRegularFile { path, kind }),
    }
    if !header.linkname.is_empty() {
        return Err(VerifyError::MalformedTar {
            offset,
            reason: format!("regular file {path:?} carries a link name"),
        });
    }
    EntryName::new(&header.path).map_err(|reason| VerifyError::UnsafeName { name: path, reason })
}

/// The compressed bytes a [`TarStream`] decodes: a bundle file, up to a length.
type Compressed = io::Take<Box<dyn BundleRead>>;

/// The two decompressors format 1 allows, each reading exactly one zstd frame or gzip member.
enum Decoder {
    Zstd(zstd::stream::read::Decoder<'static, BufReader<Compressed>>),
    Gzip(Box<flate2::bufread::GzDecoder<BufReader<Compressed>>>),
}

/// Marks the error for compressed bytes after the one frame or member: further frames (even
/// empty or skippable ones), members, or garbage.
#[derive(Debug)]
struct BytesAfterStream;

impl std::fmt::Display for BytesAfterStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes follow the compressed stream")
    }
}

impl std::error::Error for BytesAfterStream {}

/// Decompresses one frame or member and then requires the file to end.
struct OneStream {
    decoder: Decoder,
    ended: bool,
}

impl Read for OneStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.decoder {
            Decoder::Zstd(d) => d.read(buf)?,
            Decoder::Gzip(d) => d.read(buf)?,
        };
        if n == 0 && !buf.is_empty() && !self.ended {
            self.ended = true;
            let rest = match &mut self.decoder {
                Decoder::Zstd(d) => d.get_mut().fill_buf()?.len(),
                Decoder::Gzip(d) => d.get_mut().fill_buf()?.len(),
            };
            if rest > 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, BytesAfterStream));
            }
        }
        Ok(n)
    }
}

/// The decompressed tar stream, read block by block.
struct TarStream {
    inner: Box<dyn Read>,
    offset: u64,
}

impl TarStream {
    /// Starts decoding `compressed`, the bundle at `path` (for messages).
    fn open(compressed: Compressed, path: &Path, limits: &Limits) -> Result<Self, VerifyError> {
        let io_err = |source| VerifyError::Io { path: path.to_owned(), source };
        let mut file = BufReader::with_capacity(IO_BUFFER, compressed);
        let head = file.fill_buf().map_err(io_err)?;
        let decoder = if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(file).map_err(io_err)?.single_frame();
            decoder.window_log_max(limits.zstd_window_log_max).map_err(io_err)?;
            Decoder::Zstd(decoder)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Decoder::Gzip(Box::new(flate2::bufread::GzDecoder::new(file)))
        } else {
            return Err(VerifyError::UnknownCompression {
                path: path.to_owned(),
                magic: hex::encode(&head[..head.len().min(4)]),
            });
        };
        let inner = Box::new(OneStream { decoder, ended: false });
        Ok(Self { inner: Box::new(crate::readahead::ReadAhead::spawn(inner)), offset: 0 })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), VerifyError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => return Err(VerifyError::Truncated { offset: self.offset }),
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.decode_error(&e)),
            }
        }
        Ok(())
    }

    fn decode_error(&self, e: &io::Error) -> VerifyError {
        if e.get_ref().is_some_and(|inner| inner.is::<BytesAfterStream>()) {
            VerifyError::TrailingData { offset: self.offset }
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            VerifyError::Truncated { offset: self.offset }
        } else {
            VerifyError::Decompress { offset: self.offset, reason: e.to_string() }
        }
    }

    /// The next header, or `None` at the first block of the end marker.
    fn next_header(&mut self) -> Result<Option<(u64, RawHeader)>, VerifyError> {
        let offset = self.offset;
        let mut block = [0u8; BLOCK];
        self.read_exact(&mut block)?;
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        RawHeader::decode(&block)
            .map(|h| Some((offset, h)))
            .map_err(|reason| VerifyError::MalformedTar { offset, reason })
    }

    fn skip_padding(&mut self, size: u64) -> Result<(), VerifyError> {
        let mut pad = [0u8; BLOCK];
        let len = tar::padding(size);
        let offset = self.offset;
        self.read_exact(&mut pad[..len])?;
        if pad[..len].iter().any(|&b| b != 0) {
            return Err(VerifyError::MalformedTar { offset, reason: "non-zero padding".into() });
        }
        Ok(())
    }

    /// After the first end-marker block: the second must follow, then nothing at all.
    fn expect_end(&mut self) -> Result<(), VerifyError> {
        let offset = self.offset;
        let mut block = [0u8; BLOCK];
        self.read_exact(&mut block)?;
        if block.iter().any(|&b| b != 0) {
            return Err(VerifyError::MalformedTar {
                offset,
                reason: "end-of-archive marker is one block instead of two".into(),
            });
        }
        let mut byte = [0u8; 1];
        loop {
            match self.inner.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(VerifyError::TrailingData { offset: self.offset }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.decode_error(&e)),
            }
        }
    }
}

/// One entry's body: capped at its declared size, hashed as it is read.
struct EntryBody<'a> {
    stream: &'a mut TarStream,
    left: u64,
    hasher: sha2::Sha256,
    /// A stream failure, kept so that it is reported as itself and not as the sink's error.
    failure: Option<VerifyError>,
    progress: &'a dyn Progress,
}

impl Read for EntryBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = loop {
            match self.stream.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    self.failure = Some(VerifyError::Truncated { offset: self.stream.offset });
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive truncated"));
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let failure = self.stream.decode_error(&e);
                    self.failure = Some(failure);
                    return Err(e);
                }
            }
        };
        self.stream.offset += n as u64;
        self.left -= n as u64;
        self.hasher.update(&buf[..n]);
        self.progress.advance(n as u64);
        Ok(n)
    }
}
