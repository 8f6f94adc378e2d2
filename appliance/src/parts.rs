//! Importing a bundle that crossed the gap as parts (`ferry-appliance import NAME-SEQ.ferry.parts`).
//!
//! ```text
//! DATA/parts/NAME-SEQ-<first 16 hex of the bundle's sha256>/   0700, kept across runs
//!     NAME-SEQ.ferry                the bundle being put together: each data part is copied
//!                                   straight to its place (sparse until it arrives)
//!     NAME-SEQ.ferry.partNNN        parity parts
//!     NAME-SEQ.ferry.minisig        from the index, only while a cluster imports the bundle
//! ```
//!
//! Order: the index's signature with the trusted keys (before the index is parsed or any part
//! looked at) → the index's rules → then the quick way, when this run finds enough parts and
//! none are kept from earlier runs (`prepare_fast`): each part taken by its name and the size
//! the index gives, lost data parts rebuilt from parity on a thread beside the import, and the
//! import reads the bundle straight from the parts through a `PartsReader`. The import verifies
//! the bundle's detached signature (from the index) over those bytes before anything else,
//! exactly as for a bundle that came whole: the parts' digests are never a substitute for it.
//! When that signature fails (a damaged part of the right size, a wrong rebuild), or always in
//! a cluster, the careful way (`prepare`): the parts kept by earlier runs, hashed again → every
//! part not yet kept, looked for beside the index and in each `--parts-dir`, its size then its
//! SHA-256 checked where it lies (a bad copy is reported, and the next place looked at) → then
//! one of two things:
//!
//! - **Enough parts** (at least as many as there are data parts): data parts that did not
//!   arrive are rebuilt from parity into an unlinked scratch file and checked against the
//!   index, and the import reads the bundle from the parts in place as above. A cluster, whose
//!   instances read the bundle from the shared folder, gets the bundle written out first.
//! - **Too few**: the parts found are copied into the parts folder (hashed again on the way),
//!   and the run stops with exit 3, saying which parts are missing and how many more are
//!   needed. The next run starts from what is kept.
//!
//! Nothing is copied on the way in: on the 2 GiB benchmark, copying 1.4 GB of parts into a
//! bundle file first cost more than the import itself.
//!
//! What is kept is only ever what matches the index: every run hashes each data part's range
//! and each parity file again, so a range that never received its part (zeros), or a copy cut
//! short by a crash, is simply missing. That is also why nothing here is synced: a part lost
//! with the page cache in a power cut is found missing at the next run and asked for. Parts
//! folders are not `staging/`, which every start empties: parts may arrive over several runs.

use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, FileExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use anyhow::Context as _;
use ferry_manifests::parts::{
    IndexError, Layout, MAX_INDEX_SIZE, Part, PartData, PartSource, PartsIndex, PartsReader,
    StripeDecoder,
};
use ferry_manifests::{
    KeyId, NoProgress, PartsComment, Progress, Sha256Digest, SignatureFile, TrustedKeys,
};
use serde::Serialize;
use sha2::Digest as _;

const CHUNK: usize = 1 << 20;
/// The largest index signature read (the reader's limit for `.minisig` files).
const MAX_SIGNATURE: u64 = 16 << 10;
/// The exit code of an import that is waiting for more parts: nothing was imported, the
/// verified parts are kept, and running again with the missing ones continues.
pub(crate) const EXIT_INCOMPLETE: u8 = 3;

/// Refusals of a parts index (exit 1). Each is its own check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PartsRefusal {
    #[error("parts index {path} does not exist")]
    NoIndex { path: PathBuf },
    #[error(
        "the parts index's signature {path} does not exist: an index is accepted only with its \
         .minisig (carry it along, or name it with --signature)"
    )]
    NoSignature { path: PathBuf },
    #[error("{path} is {size} bytes, the limit is {max}")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path} is not a usable minisign signature: {reason}")]
    SignatureMalformed { path: PathBuf, reason: String },
    #[error("the parts index is signed by key {key_id}, which is not trusted (trusted: {trusted})")]
    UntrustedKey { key_id: KeyId, trusted: String },
    #[error(
        "the parts index's signature check failed for {path}: {reason} (the index was altered \
         after it was signed, or signed by another key)"
    )]
    BadSignature { path: PathBuf, reason: String },
    #[error("the parts index's trusted comment is wrong: {reason}")]
    TrustedComment { reason: String },
    #[error("parts index {path} refused: {source}")]
    Index { path: PathBuf, source: IndexError },
    #[error("{part} rebuilt from parity has sha256 {actual}, the index says {expected}")]
    Rebuilt { part: String, expected: Sha256Digest, actual: Sha256Digest },
}

impl PartsRefusal {
    /// A stable name for the check that refused, for machine output.
    pub(crate) fn check(&self) -> &'static str {
        match self {
            PartsRefusal::NoIndex { .. } => "parts-index-missing",
            PartsRefusal::NoSignature { .. } => "parts-signature-missing",
            PartsRefusal::TooLarge { .. } => "index-size",
            PartsRefusal::SignatureMalformed { .. } => "parts-signature-format",
            PartsRefusal::UntrustedKey { .. } => "parts-untrusted-key",
            PartsRefusal::BadSignature { .. } => "parts-signature",
            PartsRefusal::TrustedComment { .. } => "parts-trusted-comment",
            PartsRefusal::Index { source, .. } => source.check(),
            PartsRefusal::Rebuilt { .. } => "part-rebuild",
        }
    }
}

/// Whether `path` names a parts index rather than a bundle: by its extension, or, for a file
/// renamed on the way, by its first line.
pub(crate) fn is_parts_index(path: &Path) -> bool {
    match path.extension() {
        Some(e) if e == "parts" => return true,
        // A bundle is imported as it always was, without even a look at its first bytes.
        Some(e) if e == "ferry" => return false,
        _ => {}
    }
    let mut head = [0u8; 14];
    open_nonblocking(path).and_then(|mut f| f.read_exact(&mut head)).is_ok()
        && &head == b"# ferry-parts "
}

/// Opens `path` for reading without waiting for a writer: a FIFO (or a device) planted under a
/// part's or an index's name would otherwise block the import in `open(2)` for ever.
/// `O_NONBLOCK` changes nothing for a regular file; what is not one is refused where it is
/// looked at (`part-not-file`), or read as empty and refused by its size or content.
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits();
    File::options().read(true).custom_flags(nonblock as i32).open(path)
}

/// A part found somewhere that could not be used, and why.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BadPart {
    pub part: String,
    pub path: PathBuf,
    pub check: &'static str,
    pub problem: String,
}

/// What a run found: what is kept, what is missing, what was refused.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartsReport {
    pub name: String,
    pub sequence: u64,
    pub folder: PathBuf,
    pub parts: usize,
    pub data_parts: usize,
    pub parity_parts: usize,
    /// Parts verified and kept (before any rebuilding).
    pub have: Vec<String>,
    /// Parts neither kept nor found intact anywhere.
    pub missing: Vec<String>,
    /// Copies found and refused (each also counts as missing unless a good copy was found).
    pub damaged: Vec<BadPart>,
    /// Data parts rebuilt from parity.
    pub rebuilt: Vec<String>,
    /// Part files of other bundles seen in the searched folders, not used.
    pub other_bundles: Vec<PathBuf>,
}

impl PartsReport {
    /// What a run found: `held[p]` says whether part `p` is at hand; `rebuilt` (0-based data
    /// parts) are the ones rebuilt from parity.
    fn new(
        index: &PartsIndex,
        folder: PathBuf,
        held: &[bool],
        rebuilt: &[usize],
        damaged: Vec<BadPart>,
        other_bundles: Vec<PathBuf>,
    ) -> Self {
        let names = |parts: &mut dyn Iterator<Item = &Part>| -> Vec<String> {
            parts.map(|p| p.file_name.clone()).collect()
        };
        let layout = index.layout;
        Self {
            name: index.name.to_string(),
            sequence: index.sequence,
            folder,
            parts: layout.total_parts(),
            data_parts: layout.data_parts,
            parity_parts: layout.parity_parts,
            have: names(&mut index.parts.iter().filter(|p| held[p.index])),
            missing: names(&mut index.parts.iter().filter(|p| !held[p.index])),
            damaged,
            rebuilt: names(&mut rebuilt.iter().map(|&i| &index.parts[i])),
            other_bundles,
        }
    }

    /// How many more parts are needed before the bundle can be rebuilt.
    pub(crate) fn still_needed(&self) -> usize {
        self.data_parts.saturating_sub(self.have.len())
    }

    /// The one-line summary, e.g. `have 6 of 10 parts, need 8: missing part003, part007
    /// (damaged: part009 part-sha256); 2 more needed`.
    pub(crate) fn summary(&self) -> String {
        let short = |p: &str| p.rsplit('.').next().unwrap_or(p).to_owned();
        let mut line =
            format!("have {} of {} parts, need {}", self.have.len(), self.parts, self.data_parts);
        if !self.missing.is_empty() {
            let missing: Vec<String> = self.missing.iter().map(|p| short(p)).collect();
            line.push_str(&format!(": missing {}", missing.join(", ")));
        }
        if !self.damaged.is_empty() {
            let damaged: Vec<String> =
                self.damaged.iter().map(|d| format!("{} {}", short(&d.part), d.check)).collect();
            line.push_str(&format!(" (damaged: {})", damaged.join(", ")));
        }
        match self.still_needed() {
            0 => {}
            n => line.push_str(&format!("; {n} more needed")),
        }
        line
    }
}

/// What [`prepare`] leaves.
pub(crate) enum Prepared {
    /// Too few parts: nothing to import yet; the ones found are kept.
    Incomplete(PartsReport),
    /// Enough parts: the bundle, read from where they are (see the module's documentation).
    Ready { report: PartsReport, reader: Box<PartsReader> },
}

/// Reads a file of at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> io::Result<Result<Vec<u8>, u64>> {
    let file = open_nonblocking(path)?;
    let size = file.metadata()?.len();
    if size > max {
        return Ok(Err(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Ok(Err(bytes.len() as u64));
    }
    Ok(Ok(bytes))
}

/// Verifies the index's signature with `keys`, then parses it. Nothing else is read first.
pub(crate) fn verified_index(
    index_path: &Path,
    signature_path: &Path,
    keys: &TrustedKeys,
) -> anyhow::Result<PartsIndex> {
    let io = |path: &Path| format!("cannot read {}", path.display());
    let bytes = match read_bounded(index_path, MAX_INDEX_SIZE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PartsRefusal::NoIndex { path: index_path.to_owned() }.into());
        }
        Err(e) => return Err(e).with_context(|| io(index_path)),
        Ok(Err(size)) => {
            let path = index_path.to_owned();
            return Err(PartsRefusal::TooLarge { path, size, max: MAX_INDEX_SIZE }.into());
        }
        Ok(Ok(bytes)) => bytes,
    };
    let sig_bytes = match read_bounded(signature_path, MAX_SIGNATURE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PartsRefusal::NoSignature { path: signature_path.to_owned() }.into());
        }
        Err(e) => return Err(e).with_context(|| io(signature_path)),
        Ok(Err(size)) => {
            let path = signature_path.to_owned();
            return Err(PartsRefusal::TooLarge { path, size, max: MAX_SIGNATURE }.into());
        }
        Ok(Ok(bytes)) => bytes,
    };
    let malformed = |reason: String| PartsRefusal::SignatureMalformed {
        path: signature_path.to_owned(),
        reason,
    };
    let text = String::from_utf8(sig_bytes).map_err(|e| malformed(e.to_string()))?;
    let signature = SignatureFile::parse(&text).map_err(malformed)?;
    let key = keys.get(signature.key_id()).ok_or_else(|| PartsRefusal::UntrustedKey {
        key_id: signature.key_id(),
        trusted: keys.ids().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
    })?;
    signature
        .verify(key, &bytes)
        .map_err(|reason| PartsRefusal::BadSignature { path: index_path.to_owned(), reason })?;
    let comment: PartsComment = signature
        .trusted_comment()
        .parse()
        .map_err(|reason| PartsRefusal::TrustedComment { reason })?;
    let index = PartsIndex::parse(&bytes)
        .map_err(|source| PartsRefusal::Index { path: index_path.to_owned(), source })?;
    if comment != index.comment() {
        return Err(PartsRefusal::TrustedComment {
            reason: format!("it says {comment}, the index is of {}", index.comment()),
        }
        .into());
    }
    Ok(index)
}

/// The bundle's persistent parts folder below the data directory.
pub(crate) fn folder(data_dir: &Path, index: &PartsIndex) -> PathBuf {
    data_dir.join("parts").join(format!(
        "{}-{}-{}",
        index.name,
        index.sequence,
        &index.bundle_sha256.to_hex()[..16]
    ))
}

fn private_dir(path: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Where a part is kept: data parts in place inside the bundle being put together (so the
/// bundle is never copied together at the end), parity parts as files of their own.
enum Slot<'a> {
    Range { file: &'a File, offset: u64 },
    File(PathBuf),
}

/// A check that failed, and what it found.
type Problem = (&'static str, String);

/// Hashes the first `len` bytes of part `i` where `source` says it is.
fn hash_part(
    source: &PartSource,
    i: usize,
    len: u64,
    progress: &dyn Progress,
) -> io::Result<Sha256Digest> {
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min((len - done) as usize);
        source.read_exact_at(i, &mut buf[..n], done)?;
        sha.update(&buf[..n]);
        done += n as u64;
        progress.advance(n as u64);
    }
    Ok(Sha256Digest(sha.finalize().into()))
}

/// Opens the part file at `path` and checks its size and SHA-256 against the index where it
/// lies: the open handle when it matches (whatever is renamed over the path later, the import
/// reads this file), else the check that failed.
fn check_file(
    path: &Path,
    part: &Part,
    progress: &dyn Progress,
) -> io::Result<Result<Arc<File>, Problem>> {
    let file = open_nonblocking(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err(("part-not-file", "not a regular file".into())));
    }
    if meta.len() != part.size {
        return Ok(Err(size_problem(meta.len(), part.size)));
    }
    let file = Arc::new(file);
    let actual = hash_part(&PartSource::file(file.clone(), 0), part.index, part.size, progress)?;
    Ok(if actual == part.sha256 { Ok(file) } else { Err(sha_problem(actual, part.sha256)) })
}

/// A kept part against the index: where it can be read when it matches, else why not.
fn check_kept(
    folder: &Path,
    assembly: &Arc<File>,
    part: &Part,
    offset: u64,
) -> io::Result<Result<PartSource, Problem>> {
    if part.parity {
        let found = check_file(&folder.join(&part.file_name), part, &NoProgress)?;
        return Ok(found.map(|file| PartSource::file(file, 0)));
    }
    let source = PartSource::file(assembly.clone(), offset);
    let actual = hash_part(&source, part.index, part.size, &NoProgress)?;
    Ok(if actual == part.sha256 { Ok(source) } else { Err(sha_problem(actual, part.sha256)) })
}

fn size_problem(actual: u64, declared: u64) -> Problem {
    let how = if actual < declared { "truncated: " } else { "" };
    ("part-size", format!("{how}{actual} bytes, the index says {declared}"))
}

fn sha_problem(actual: Sha256Digest, expected: Sha256Digest) -> Problem {
    (
        "part-sha256",
        format!("sha256 {actual}, the index says {expected} (damaged, or another bundle's part)"),
    )
}

/// Copies a part checked where it lay (`input`, its handle) into its slot, hashing it again on
/// the way: `None` when it is now kept, else why not. A refused copy never counts: a file slot
/// is written under a temporary name and renamed only once it matched; a range slot holds
/// whatever was copied, which the next run's check finds wrong and overwrites.
fn copy_in(
    input: &File,
    slot: &Slot<'_>,
    part: &Part,
    progress: &dyn Progress,
) -> io::Result<Option<Problem>> {
    let (out, base, temp) = match slot {
        Slot::Range { offset, .. } => (None, *offset, None),
        Slot::File(dest) => {
            let temp = dest.with_file_name(format!(".{}.partial", part.file_name));
            (Some(File::create(&temp)?), 0, Some((temp, dest)))
        }
    };
    let target = match (&out, slot) {
        (Some(file), _) => file,
        (None, Slot::Range { file, .. }) => *file,
        (None, Slot::File(_)) => unreachable!("a file slot has its output"),
    };
    let result = (|| {
        let mut sha = sha2::Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut copied = 0u64;
        // Never more than the index declares, whatever the file does meanwhile.
        while copied < part.size {
            let want = CHUNK.min((part.size - copied) as usize);
            let n = FileExt::read_at(input, &mut buf[..want], copied)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            target.write_all_at(&buf[..n], base + copied)?;
            copied += n as u64;
            progress.advance(n as u64);
        }
        if copied != part.size || FileExt::read_at(input, &mut [0u8; 1], copied)? != 0 {
            return Ok(Some(("part-size", format!("changed while it was read ({copied} bytes)"))));
        }
        let actual = Sha256Digest(sha.finalize().into());
        if actual != part.sha256 {
            return Ok(Some(sha_problem(actual, part.sha256)));
        }
        if let Some((temp, dest)) = &temp {
            fs::rename(temp, dest)?;
        }
        Ok(None)
    })();
    if let Some((temp, _)) = &temp
        && !matches!(result, Ok(None))
    {
        let _ = fs::remove_file(temp);
    }
    result
}

/// Runs `work` on every item, on a few threads (parts are independent; hashing is the cost).
fn parallel<T: Sync>(items: &[T], work: impl Fn(&T) + Sync) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(items.len()) {
            scope.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    work(item);
                }
            });
        }
    });
}

/// Opens (creating the folders and the sparse file if asked) the bundle being put together in
/// `folder`, after removing whatever else is there (a temporary copy a crash left, the
/// signature of a refused run): only it and parity parts stay. Also says whether the bundle
/// file is new (then none of its ranges is worth checking). `None` when the folder does not
/// exist and `create` is false.
fn open_assembly(
    data_dir: &Path,
    folder: &Path,
    index: &PartsIndex,
    create: bool,
) -> anyhow::Result<Option<(Arc<File>, bool)>> {
    if create {
        private_dir(&data_dir.join("parts"))?;
        private_dir(folder)?;
    } else if !folder.is_dir() {
        return Ok(None);
    }
    let bundle_path = folder.join(index.bundle_file());
    let parity_names: Vec<&str> =
        index.parts[index.layout.data_parts..].iter().map(|p| p.file_name.as_str()).collect();
    for entry in fs::read_dir(folder)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != index.bundle_file() && !parity_names.contains(&name.as_str()) {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    let fresh = !bundle_path.exists();
    let assembly = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&bundle_path)
        .with_context(|| format!("cannot open {}", bundle_path.display()))?;
    // Sparse until parts arrive; a range that never received its part reads as zeros.
    assembly
        .set_len(index.layout.bundle_size)
        .with_context(|| format!("cannot size {}", bundle_path.display()))?;
    Ok(Some((Arc::new(assembly), fresh)))
}

/// Where parts are looked for: beside the index, then each `--parts-dir`, in that order.
fn search_dirs(index_path: &Path, parts_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec![match index_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }];
    dirs.extend(parts_dirs.iter().cloned());
    dirs
}

/// Part files of other bundles in `dirs`: the operator may have brought the wrong medium.
fn other_bundles(index: &PartsIndex, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let ours = format!("{}.part", index.bundle_file());
    let mut other_bundles = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((_, number)) = name.rsplit_once(".ferry.part")
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
                && !name.starts_with(&ours)
            {
                other_bundles.push(entry.path());
            }
        }
    }
    other_bundles.sort();
    other_bundles
}

/// A file for rebuilt parts below `data_dir/parts` (on the data directory's filesystem, where
/// the import's own space is), unlinked at once so that nothing of it outlives the process.
fn scratch_file(data_dir: &Path) -> anyhow::Result<File> {
    let root = data_dir.join("parts");
    private_dir(&root)?;
    let path = root.join(format!(".rebuilt-{}", std::process::id()));
    let scratch = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(scratch)
}

/// Gathers and verifies parts: a reader over them when there are enough, else the report of
/// what is missing, with the parts found kept for the next run.
pub(crate) fn prepare(
    data_dir: &Path,
    index_path: &Path,
    index: &PartsIndex,
    parts_dirs: &[PathBuf],
    progress: &dyn Progress,
) -> anyhow::Result<Prepared> {
    let folder = folder(data_dir, index);
    let layout = index.layout;
    let slots: Mutex<Vec<Option<PartSource>>> = Mutex::new(vec![None; index.parts.len()]);
    let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(Vec::new());
    let fail = |e: anyhow::Error| errors.lock().expect("no panics hold it").push(e);
    let have = |i: usize| slots.lock().expect("no panics hold it")[i].is_some();

    // Parts kept by earlier runs: hashed again (a disk can fail too; a run may have stopped
    // half way through a copy).
    let assembly = open_assembly(data_dir, &folder, index, false)?;
    if let Some((assembly, fresh)) = &assembly {
        parallel(&index.parts, |part| {
            if *fresh && !part.parity {
                return;
            }
            match check_kept(&folder, assembly, part, layout.data_offset(part.index)) {
                Ok(Ok(source)) => {
                    slots.lock().expect("no panics hold it")[part.index] = Some(source);
                }
                Ok(Err((check, problem))) => {
                    if part.parity {
                        tracing::warn!(part = %part.file_name, check, problem, "a kept part is damaged; removed");
                        if let Err(e) = fs::remove_file(folder.join(&part.file_name)) {
                            fail(e.into());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    fail(anyhow::Error::new(e).context(format!("cannot read {}", part.file_name)));
                }
            }
        });
    }

    // Everything else, from beside the index and each --parts-dir, in that order, checked
    // where it lies.
    let dirs = search_dirs(index_path, parts_dirs);
    let wanted: Vec<&Part> = index.parts.iter().filter(|p| !have(p.index)).collect();
    let found: Mutex<Vec<(&Part, Arc<File>)>> = Mutex::new(Vec::new());
    let damaged: Mutex<Vec<BadPart>> = Mutex::new(Vec::new());
    let total: u64 = wanted.iter().map(|p| p.size).sum();
    let started = std::time::Instant::now();
    progress.start("verifying parts", total);
    parallel(&wanted, |part| {
        for dir in &dirs {
            let source = dir.join(&part.file_name);
            let verdict = match check_file(&source, part, progress) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => Err(("part-unreadable", e.to_string())),
                Ok(verdict) => verdict,
            };
            match verdict {
                Ok(file) => {
                    slots.lock().expect("no panics hold it")[part.index] =
                        Some(PartSource::file(file.clone(), 0));
                    found.lock().expect("no panics hold it").push((part, file));
                    return;
                }
                Err((check, problem)) => {
                    tracing::warn!(part = %part.file_name, path = %source.display(), check, problem, "part refused");
                    damaged.lock().expect("no panics hold it").push(BadPart {
                        part: part.file_name.clone(),
                        path: source,
                        check,
                        problem,
                    });
                }
            }
        }
    });
    progress.finish();
    tracing::info!(bytes = total, seconds = started.elapsed().as_secs_f64(), "parts checked");
    if let Some(error) = errors.into_inner().expect("no panics hold it").pop() {
        return Err(error);
    }
    let slots = slots.into_inner().expect("no panics hold it");
    let mut damaged = damaged.into_inner().expect("no panics hold it");
    damaged.sort_by(|a, b| (&a.part, &a.path).cmp(&(&b.part, &b.path)));

    let other_bundles = other_bundles(index, &dirs);

    let held: Vec<bool> = slots.iter().map(Option::is_some).collect();
    let missing: Vec<usize> = (0..layout.data_parts).filter(|&i| !held[i]).collect();
    let ready = held.iter().filter(|&&h| h).count() >= layout.data_parts;
    let rebuilt: &[usize] = if ready { &missing } else { &[] };
    let report = PartsReport::new(index, folder.clone(), &held, rebuilt, damaged, other_bundles);
    if ready {
        let mut rebuilt = Vec::new();
        if !missing.is_empty() {
            let started = std::time::Instant::now();
            rebuilt = rebuild(data_dir, index, &slots, &missing, progress)?;
            tracing::info!(
                parts = missing.len(),
                seconds = started.elapsed().as_secs_f64(),
                "data parts rebuilt from parity"
            );
        }
        let reader = reader_over(layout, slots, &missing, rebuilt);
        return Ok(Prepared::Ready { report, reader });
    }

    // Too few: keep what was found for the next run.
    let found = found.into_inner().expect("no panics hold it");
    if !found.is_empty() {
        let (assembly, _) =
            open_assembly(data_dir, &folder, index, true)?.expect("created when asked");
        let bytes: u64 = found.iter().map(|(p, _)| p.size).sum();
        progress.start("keeping the parts found", bytes);
        for (part, file) in &found {
            let slot = if part.parity {
                Slot::File(folder.join(&part.file_name))
            } else {
                Slot::Range { file: &assembly, offset: layout.data_offset(part.index) }
            };
            let refused = copy_in(file, &slot, part, progress)
                .with_context(|| format!("cannot keep {}", part.file_name))?;
            if let Some((check, problem)) = refused {
                // It matched a moment ago: it changed since. Asked for again next run.
                tracing::warn!(part = %part.file_name, check, problem, "part changed while it was kept");
            }
        }
        progress.finish();
    }
    Ok(Prepared::Incomplete(report))
}

/// Rebuilds the `missing` data parts, the careful way: the same rebuild as behind the import's
/// reads ([`rebuild_behind`]), each rebuilt part then read back whole (as the decoders finish
/// its stripes) and checked against the index before the import reads a byte of it, so that a
/// wrong rebuild is named as such (`part-rebuild`) rather than found as a bundle whose
/// signature fails.
fn rebuild(
    data_dir: &Path,
    index: &PartsIndex,
    sources: &[Option<PartSource>],
    missing: &[usize],
    progress: &dyn Progress,
) -> anyhow::Result<Vec<PartSource>> {
    let rebuilt = rebuild_behind(data_dir, index.layout, sources, missing)?;
    let total = missing.iter().map(|&i| index.parts[i].size).sum();
    progress.start("rebuilding parts from parity", total);
    for (&i, source) in missing.iter().zip(&rebuilt) {
        let part = &index.parts[i];
        let actual = hash_part(source, i, part.size, progress)
            .context("cannot rebuild parts from parity")?;
        if actual != part.sha256 {
            return Err(PartsRefusal::Rebuilt {
                part: part.file_name.clone(),
                expected: part.sha256,
                actual,
            }
            .into());
        }
    }
    progress.finish();
    Ok(rebuilt)
}

/// Data parts being rebuilt from parity behind the import's reads, into a scratch file: a read
/// of a rebuilt range waits for its stripes. Threads share the stripes (thread `t` of `n` takes
/// `t`, `t + n`, ...): while the import reads present parts, its signature pass (BLAKE2b) keeps
/// one core and the decoders the other; once it reaches a lost part it waits, and both cores
/// decode (on the benchmark one decoder made that pass 0.6 s longer than a plain import's).
/// Nothing rebuilt here is checked against the index: the bundle's signature over every byte
/// decides, and when it fails the import starts over with every part checked.
struct Rebuilding {
    scratch: File,
    stripe: u64,
    part_size: u64,
    state: Mutex<RebuildState>,
    ready: Condvar,
}

struct RebuildState {
    /// The next stripe of each thread (`u64::MAX` once it has done all of its own): every stripe
    /// below the smallest of them is rebuilt.
    next: Vec<u64>,
    failed: Option<String>,
}

impl PartData for Rebuilding {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // The m-th rebuilt part is at m part sizes; the read must not go past its stripe.
        let within = offset % self.part_size;
        let last = (within + buf.len() as u64 - 1) / self.stripe;
        let mut state = self.state.lock().expect("no panics hold it");
        while state.next.iter().min().is_some_and(|&done| done <= last) && state.failed.is_none() {
            state = self.ready.wait(state).expect("no panics hold it");
        }
        if let Some(failed) = &state.failed {
            return Err(io::Error::other(format!("cannot rebuild parts from parity: {failed}")));
        }
        drop(state);
        FileExt::read_at(&self.scratch, buf, offset)
    }
}

/// Wakes the readers with an error if a rebuilding thread ends before its last stripe (a
/// panic), so that no read waits for ever.
struct Unblock(Weak<Rebuilding>, usize);

impl Drop for Unblock {
    fn drop(&mut self) {
        let Some(shared) = self.0.upgrade() else { return };
        let mut state = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.next[self.1] != u64::MAX && state.failed.is_none() {
            state.failed = Some("a rebuilding thread stopped".into());
        }
        shared.ready.notify_all();
    }
}

/// Starts rebuilding the `missing` data parts from `sources` (one per part; `None` for those
/// missing) on threads of their own; returns where each rebuilt part can be read. The threads
/// hold it weakly, so they stop early once the import no longer holds the reader.
fn rebuild_behind(
    data_dir: &Path,
    layout: Layout,
    sources: &[Option<PartSource>],
    missing: &[usize],
) -> anyhow::Result<Vec<PartSource>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let rebuilding = Arc::new(Rebuilding {
        scratch: scratch_file(data_dir)?,
        stripe: layout.stripe,
        part_size: layout.part_size,
        state: Mutex::new(RebuildState { next: (0..threads as u64).collect(), failed: None }),
        ready: Condvar::new(),
    });
    let present: Vec<bool> = sources.iter().map(Option::is_some).collect();
    let sources: Arc<Vec<Option<PartSource>>> = Arc::new(sources.to_vec());
    let missing: Arc<Vec<usize>> = Arc::new(missing.to_vec());
    for t in 0..threads {
        let mut decoder = StripeDecoder::new(&layout, &present).context("cannot rebuild parts")?;
        let (sources, missing) = (sources.clone(), missing.clone());
        let weak = Arc::downgrade(&rebuilding);
        std::thread::spawn(move || {
            let _unblock = Unblock(weak.clone(), t);
            let at = |i: usize| {
                missing.iter().position(|&m| m == i).expect("a missing part") as u64
                    * layout.part_size
            };
            for k in (t as u64..layout.stripes()).step_by(threads) {
                // Gone: the import is over, refused or not.
                let Some(shared) = weak.upgrade() else { return };
                let decoded = decoder.decode(
                    k,
                    &mut |p, offset, buf| {
                        sources[p]
                            .as_ref()
                            .expect("only parts at hand are read")
                            .read_exact_at(p, buf, offset)
                    },
                    &mut |i, piece| shared.scratch.write_all_at(piece, at(i) + k * layout.stripe),
                );
                let mut state = shared.state.lock().expect("no panics hold it");
                match decoded {
                    Ok(()) if k + threads as u64 >= layout.stripes() => state.next[t] = u64::MAX,
                    Ok(()) => state.next[t] = k + threads as u64,
                    Err(e) => state.failed = Some(e.to_string()),
                }
                shared.ready.notify_all();
                if state.failed.is_some() {
                    return;
                }
            }
            // A thread with no stripe at all (fewer stripes than threads) is done too.
            if let Some(shared) = weak.upgrade() {
                shared.state.lock().expect("no panics hold it").next[t] = u64::MAX;
                shared.ready.notify_all();
            }
        });
    }
    let data: Arc<dyn PartData> = rebuilding;
    Ok((0..missing.len())
        .map(|m| PartSource { data: data.clone(), offset: m as u64 * layout.part_size })
        .collect())
}

/// The quick way in, for a set of parts that arrived whole enough in one run: each part found by
/// its name with the size the index gives, nothing hashed yet, lost data parts rebuilt from
/// parity behind the import as it reads. The bundle's detached signature over those bytes
/// decides, as always; when it fails, `prepare` checks every part against the index to find the
/// damaged ones, and the import runs again without them. On the 2 GiB benchmark, hashing every
/// part first and rebuilding before the import cost 1.3 s of a 7.1 s import.
///
/// `None` when too few parts are found by size, or parts are kept from earlier runs (those are
/// checked by `prepare`).
pub(crate) fn prepare_fast(
    data_dir: &Path,
    index_path: &Path,
    index: &PartsIndex,
    parts_dirs: &[PathBuf],
) -> anyhow::Result<Option<(PartsReport, Box<PartsReader>)>> {
    let layout = index.layout;
    if folder(data_dir, index).exists() {
        return Ok(None);
    }
    let dirs = search_dirs(index_path, parts_dirs);
    let found = |part: &Part| {
        dirs.iter().find_map(|dir| {
            let file = open_nonblocking(&dir.join(&part.file_name)).ok()?;
            let meta = file.metadata().ok()?;
            (meta.is_file() && meta.len() == part.size).then(|| PartSource::file(Arc::new(file), 0))
        })
    };
    let sources: Vec<Option<PartSource>> = index.parts.iter().map(found).collect();
    let missing: Vec<usize> = (0..layout.data_parts).filter(|&i| sources[i].is_none()).collect();
    let parity = sources[layout.data_parts..].iter().filter(|s| s.is_some()).count();
    if missing.len() > parity {
        return Ok(None);
    }
    let arrived: Vec<bool> = sources.iter().map(Option::is_some).collect();
    let rebuilt = if missing.is_empty() {
        Vec::new()
    } else {
        rebuild_behind(data_dir, layout, &sources, &missing)?
    };
    let folder = folder(data_dir, index);
    let others = other_bundles(index, &dirs);
    let report = PartsReport::new(index, folder, &arrived, &missing, Vec::new(), others);
    Ok(Some((report, reader_over(layout, sources, &missing, rebuilt))))
}

/// The reader over the data parts: those at hand in `sources` (one per part), and the `missing`
/// ones from where `rebuilt` says they were rebuilt.
fn reader_over(
    layout: Layout,
    mut sources: Vec<Option<PartSource>>,
    missing: &[usize],
    rebuilt: Vec<PartSource>,
) -> Box<PartsReader> {
    for (&i, source) in missing.iter().zip(rebuilt) {
        sources[i] = Some(source);
    }
    let data = sources
        .into_iter()
        .take(layout.data_parts)
        .map(|s| s.expect("every data part at hand or rebuilt"))
        .collect();
    Box::new(PartsReader::new(layout, data))
}

/// For a cluster, whose instances read the bundle from the shared folder: writes the bundle
/// `reader` yields, and its detached signature from the index, into the parts folder. Returns
/// both paths.
pub(crate) fn write_out(
    data_dir: &Path,
    index: &PartsIndex,
    mut reader: PartsReader,
    progress: &dyn Progress,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let folder = folder(data_dir, index);
    private_dir(&folder)?;
    let bundle = folder.join(index.bundle_file());
    let temp = folder.join(format!(".{}.whole", index.bundle_file()));
    progress.start("writing the bundle out", reader.len());
    let written = (|| -> io::Result<()> {
        let mut out = io::BufWriter::with_capacity(CHUNK, File::create(&temp)?);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            io::Write::write_all(&mut out, &buf[..n])?;
            progress.advance(n as u64);
        }
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        // The reader may still read kept ranges of the old file: it holds its handle.
        fs::rename(&temp, &bundle)
    })();
    progress.finish();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write {}", bundle.display()));
    }
    let signature = ferry_manifests::default_signature_path(&bundle);
    fs::write(&signature, &index.bundle_signature)
        .with_context(|| format!("cannot write {}", signature.display()))?;
    Ok((bundle, signature))
}

/// After a refused import: the bundle's signature goes; the bundle as put together (whose data
/// parts matched the index) and the parity parts stay, and are checked again part by part at
/// the next run.
pub(crate) fn after_refusal(folder: &Path, index: &PartsIndex) {
    let bundle = folder.join(index.bundle_file());
    let _ = fs::remove_file(ferry_manifests::default_signature_path(&bundle));
}

/// Removes the parts folders of bundles at or below their name's floor: they can never be
/// imported again without `--allow-downgrade`, and a newer one replaced them. `floor` gives a
/// name's floor. Returns how many were removed.
pub(crate) fn gc(
    data_dir: &Path,
    floor: &dyn Fn(&str) -> anyhow::Result<Option<u64>>,
) -> anyhow::Result<usize> {
    let root = data_dir.join("parts");
    let entries = match fs::read_dir(&root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        entries => entries.with_context(|| format!("cannot read {}", root.display()))?,
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // NAME-SEQ-HEX16; the name may itself hold dashes.
        let mut pieces = name.rsplitn(3, '-');
        let (Some(_hex), Some(sequence), Some(bundle)) =
            (pieces.next(), pieces.next(), pieces.next())
        else {
            continue;
        };
        let Ok(sequence) = sequence.parse::<u64>() else { continue };
        if floor(bundle)?.is_some_and(|floor| sequence <= floor) {
            tracing::info!(folder = %name, "removing the parts of a bundle at or below its floor");
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}
