//! The streaming bundle writer: hash inputs, sign the manifest, then write the tar stream through
//! the compressor and the detached signature's hash in a single pass.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::Digest as _;
use time::OffsetDateTime;

use crate::limits::Limits;
use crate::manifest::{
    BaseRef, DELTA_FORMAT, FORMAT, FileEntry, Kind, Manifest, ManifestError, Mode, Sha256Digest,
};
use crate::metadata::Metadata;
use crate::name::{BundleName, EntryName, MANIFEST_ENTRY, MANIFEST_SIGNATURE_ENTRY};
use crate::parts::cut::PartCutter;
use crate::parts::finish::{BundleFacts, finish_parts};
use crate::parts::{Layout, SplitError, SplitOptions, SplitOutput};
use crate::progress::Progress;
use crate::sign::{BundleComment, ManifestComment, PrehashWriter, Prehasher, SigningKey};
use crate::tar::{self, RawHeader};

const IO_BUFFER: usize = 1 << 20;

/// zstd's multi-threaded job size. Pinned because the compressed bytes depend on it, and small
/// because zstd keeps a few jobs' buffers per worker: the default (4x the window, 8 MiB at level
/// 3) costs about 115 MiB of memory against 36 MiB at 2 MiB, for the same ratio.
const ZSTD_JOB_SIZE: u32 = 2 << 20;

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd, always in multi-threaded mode: its output is the same for any worker count >= 1,
    /// which the single-threaded mode's is not.
    Zstd { level: i32, workers: u32 },
    /// gzip through flate2's zlib-rs backend, for sites whose tools only know gzip.
    Gzip { level: u32 },
}

impl Compression {
    /// zstd level 3 on every available core.
    pub fn default_zstd() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Compression::Zstd { level: 3, workers }
    }
}

/// One file to put in a bundle.
#[derive(Debug, Clone)]
pub struct PayloadSource {
    /// Where it goes inside the bundle.
    pub path: EntryName,
    /// Where it is read from.
    pub source: PathBuf,
    pub kind: Kind,
    pub mode: Mode,
    pub metadata: Metadata,
}

/// Everything about a bundle that is not its payload.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub name: BundleName,
    pub sequence: u64,
    pub created: OffsetDateTime,
    pub expires: OffsetDateTime,
    /// Recorded in the manifest as the writing program, e.g. `ferry 0.1.0`.
    pub builder: String,
    pub compression: Compression,
    /// Write a delta against this base instead of a full bundle.
    pub base: Option<DeltaBase>,
}

/// What a delta is made against: the base bundle it names, and every digest whose content the
/// receiving side will hold (the base's entries, or all the blobs an appliance reported in its
/// holdings). An entry with one of these digests is listed but not carried.
#[derive(Debug, Clone)]
pub struct DeltaBase {
    pub bundle: BaseRef,
    pub holds: std::collections::HashSet<Sha256Digest>,
}

/// A finished bundle on disk.
#[derive(Debug, Clone)]
pub struct WrittenBundle {
    pub manifest: Manifest,
    pub manifest_sha256: Sha256Digest,
    pub bundle_path: PathBuf,
    pub signature_path: PathBuf,
    pub bundle_size: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("cannot read {path}: {source}")]
    Input { path: PathBuf, source: io::Error },
    #[error("{path} is a {found}, only regular files can go into a bundle")]
    NotRegular { path: PathBuf, found: &'static str },
    #[error("{path} changed while the bundle was being written: {detail}")]
    InputChanged { path: PathBuf, detail: String },
    #[error("{path} is {size} bytes; a bundle entry can hold at most {max}")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("the bundle's manifest would be invalid: {0}")]
    Manifest(#[from] ManifestError),
    #[error("cannot write {path}: {source}")]
    Output { path: PathBuf, source: io::Error },
    #[error("cannot write the parts: {0}")]
    Parts(#[from] SplitError),
}

/// What `stat` said about an input, to notice it changing between or during the two passes.
/// The inode change time is part of it because, unlike the modification time, no unprivileged
/// program can set it back: an in-place rewrite that restores the mtime still shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

fn fingerprint(meta: &fs::Metadata) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    Fingerprint {
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
        ino: meta.ino(),
        dev: meta.dev(),
    }
}

/// Describes a file type for errors.
pub fn file_type_name(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Checks that `path` is a regular file, not following links: what [`write_bundle`] requires of
/// every input (and checks again while writing). A builder calls it first to name every unusable
/// input at once.
pub fn check_input(path: &Path) -> Result<(), WriteError> {
    stat_regular(path).map(drop)
}

/// Checks that `path` is a regular file (not following links) and returns its fingerprint.
fn stat_regular(path: &Path) -> Result<Fingerprint, WriteError> {
    let meta = fs::symlink_metadata(path)
        .map_err(|source| WriteError::Input { path: path.to_owned(), source })?;
    if !meta.file_type().is_file() {
        return Err(WriteError::NotRegular {
            path: path.to_owned(),
            found: file_type_name(meta.file_type()),
        });
    }
    Ok(fingerprint(&meta))
}

/// Checks that the open `file` is still the file `expected` describes.
fn check_unchanged(path: &Path, file: &File, expected: Fingerprint) -> Result<(), WriteError> {
    let meta =
        file.metadata().map_err(|source| WriteError::Input { path: path.to_owned(), source })?;
    let now = fingerprint(&meta);
    if now != expected {
        return Err(WriteError::InputChanged {
            path: path.to_owned(),
            detail: format!("size, times or inode differ ({expected:?} then {now:?})"),
        });
    }
    Ok(())
}

/// Opens `path` and checks it is still the file `expected` describes.
fn open_unchanged(path: &Path, expected: Fingerprint) -> Result<File, WriteError> {
    let file =
        File::open(path).map_err(|source| WriteError::Input { path: path.to_owned(), source })?;
    check_unchanged(path, &file, expected)?;
    Ok(file)
}

/// Copies exactly `len` bytes of `file` to `out`, refusing a file that grew or shrank.
fn copy_exact(
    path: &Path,
    mut file: File,
    print: Fingerprint,
    len: u64,
    out: &mut dyn FnMut(&[u8]) -> Result<(), WriteError>,
    buf: &mut [u8],
    progress: &dyn Progress,
) -> Result<(), WriteError> {
    let input = |source| WriteError::Input { path: path.to_owned(), source };
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).map_err(input)?;
        if n == 0 {
            return Err(WriteError::InputChanged {
                path: path.to_owned(),
                detail: format!("ended {left} bytes early"),
            });
        }
        out(&buf[..n])?;
        left -= n as u64;
        progress.advance(n as u64);
    }
    if file.read(&mut buf[..1]).map_err(input)? != 0 {
        return Err(WriteError::InputChanged {
            path: path.to_owned(),
            detail: format!("longer than the {len} bytes it had"),
        });
    }
    // Written to while we read it?
    check_unchanged(path, &file, print)
}

/// Writes `NAME-SEQUENCE.ferry` and `NAME-SEQUENCE.ferry.minisig` into `out_dir`.
///
/// Inputs are read twice: once (on all workers) to hash them, since the manifest with their
/// digests must precede them in the stream, and once to write them. An input that changes in
/// between is refused. Nothing appears under the final names until both files are complete and
/// synced.
pub fn write_bundle(
    spec: &BundleSpec,
    files: Vec<PayloadSource>,
    key: &SigningKey,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<WrittenBundle, WriteError> {
    let prepared = Prepared::new(spec, files, key, progress)?;
    write_prepared(prepared, spec.compression, key, out_dir, progress)
}

/// [`write_bundle`] once the inputs are hashed and the manifest signed. A failure removes the
/// partial files (and a bundle already renamed into place without its signature).
fn write_prepared(
    prepared: Prepared,
    compression: Compression,
    key: &SigningKey,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<WrittenBundle, WriteError> {
    let started = std::time::Instant::now();
    let file_name = prepared.manifest.bundle_file_name();
    let bundle_path = out_dir.join(&file_name);
    let signature_path = out_dir.join(format!("{file_name}.minisig"));
    let partial = out_dir.join(format!(".{file_name}.partial"));
    let output = |source| WriteError::Output { path: partial.clone(), source };

    let mut leftovers = crate::parts::files::Leftovers::default();
    let out = File::create(&partial).map_err(output)?;
    leftovers.push(partial.clone());
    let (out, detached, bundle_size) =
        prepared.stream(compression, out, &partial, key, progress)?;
    let synced = std::time::Instant::now();
    out.sync_all().map_err(output)?;
    tracing::info!(seconds = synced.elapsed().as_secs_f64(), "bundle synced");
    drop(out);
    let partial_sig = out_dir.join(format!(".{file_name}.minisig.partial"));
    leftovers.push(partial_sig.clone());
    write_synced(&partial_sig, detached.as_bytes())
        .map_err(|source| WriteError::Output { path: partial_sig.clone(), source })?;
    fs::rename(&partial, &bundle_path)
        .map_err(|source| WriteError::Output { path: bundle_path.clone(), source })?;
    leftovers.renamed(&partial, bundle_path.clone());
    fs::rename(&partial_sig, &signature_path)
        .map_err(|source| WriteError::Output { path: signature_path.clone(), source })?;
    leftovers.disarm();
    if let Ok(dir) = File::open(out_dir) {
        // Makes the renames durable; not every filesystem supports syncing a directory.
        let _ = dir.sync_all();
    }
    let Prepared { manifest, manifest_sha256, .. } = prepared;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        bundle = %bundle_path.display(),
        entries = manifest.files.len(),
        bytes = bundle_size,
        key_id = %key.key_id(),
        "bundle written"
    );
    Ok(WrittenBundle { manifest, manifest_sha256, bundle_path, signature_path, bundle_size })
}

/// A bundle written as parts only, by [`write_parts`].
#[derive(Debug, Clone)]
pub struct WrittenParts {
    pub manifest: Manifest,
    pub manifest_sha256: Sha256Digest,
    /// The size of the bundle the data parts make up.
    pub bundle_size: u64,
    pub parts: SplitOutput,
}

/// Writes the bundle as parts of `options.part_size` bytes straight from the compressor's
/// output, with `options.parity` parity parts, the signed index `NAME-SEQUENCE.ferry.parts`
/// (which carries the bundle's detached signature), its `.minisig` and the transfer note; the
/// whole `NAME-SEQUENCE.ferry` is never written. The files are byte for byte those
/// [`write_bundle`] then [`split_bundle`](crate::parts::split_bundle) give, at one write of the
/// bundle's bytes instead of two (and one read fewer). Nothing appears under a final name unless
/// the whole set is complete and synced; a failure leaves no part behind.
pub fn write_parts(
    spec: &BundleSpec,
    files: Vec<PayloadSource>,
    key: &SigningKey,
    out_dir: &Path,
    options: SplitOptions,
    progress: &dyn Progress,
) -> Result<WrittenParts, WriteError> {
    // An impossible part size or parity fails before the inputs are read, not after; the
    // bundle's size, and with it the rest of the layout, is known only at the end.
    Layout::new(1, options.part_size, options.parity).map_err(SplitError::from)?;
    let prepared = Prepared::new(spec, files, key, progress)?;
    let started = std::time::Instant::now();
    let bundle_file = prepared.manifest.bundle_file_name();
    let cutter = PartCutter::new(out_dir, &bundle_file, options.part_size, options.parity);
    let (cutter, signature, bundle_size) =
        prepared.stream(spec.compression, cutter, out_dir, key, progress)?;
    let synced = std::time::Instant::now();
    let cut =
        cutter.finish().map_err(|source| WriteError::Output { path: out_dir.into(), source })?;
    tracing::info!(seconds = synced.elapsed().as_secs_f64(), "data parts synced");
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        data_parts = cut.parts.len(),
        bytes = bundle_size,
        "data parts written"
    );
    let started = std::time::Instant::now();
    let Prepared { manifest, manifest_sha256, .. } = prepared;
    let facts = BundleFacts { name: manifest.name.clone(), sequence: manifest.sequence, signature };
    let parts = finish_parts(cut, facts, options, key, out_dir, progress)?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        index = %parts.index_path.display(),
        parts = parts.part_paths.len(),
        key_id = %key.key_id(),
        "parity and index written"
    );
    Ok(WrittenParts { manifest, manifest_sha256, bundle_size, parts })
}

/// A bundle's inputs checked and hashed and its manifest signed: everything but the stream.
struct Prepared {
    files: Vec<PayloadSource>,
    prints: Vec<Fingerprint>,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    manifest_sha256: Sha256Digest,
    manifest_signature: String,
}

impl Prepared {
    /// Checks the inputs and the manifest they make, hashes the inputs, signs the manifest.
    fn new(
        spec: &BundleSpec,
        mut files: Vec<PayloadSource>,
        key: &SigningKey,
        progress: &dyn Progress,
    ) -> Result<Self, WriteError> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let limits = Limits::default();
        let prints = files
            .iter()
            .map(|f| {
                let print = stat_regular(&f.source)?;
                if print.len > limits.max_entry_size {
                    return Err(WriteError::TooLarge {
                        path: f.source.clone(),
                        size: print.len,
                        max: limits.max_entry_size,
                    });
                }
                Ok(print)
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Check names and limits before reading gigabytes.
        let mut manifest = Manifest {
            format: if spec.base.is_some() { DELTA_FORMAT } else { FORMAT },
            name: spec.name.clone(),
            sequence: spec.sequence,
            created: spec.created,
            expires: spec.expires,
            builder: spec.builder.clone(),
            base: spec.base.as_ref().map(|b| b.bundle.clone()),
            files: files
                .iter()
                .zip(&prints)
                .map(|(f, p)| FileEntry {
                    path: f.path.clone(),
                    size: p.len,
                    sha256: Sha256Digest([0; 32]),
                    mode: f.mode,
                    kind: f.kind,
                    in_base: false,
                    metadata: f.metadata.clone(),
                })
                .collect(),
        };
        manifest.validate(&limits)?;

        let workers = match spec.compression {
            Compression::Zstd { workers, .. } => workers.max(1) as usize,
            Compression::Gzip { .. } => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let started = std::time::Instant::now();
        let digests = hash_inputs(&files, &prints, workers, progress)?;
        tracing::info!(
            files = files.len(),
            seconds = started.elapsed().as_secs_f64(),
            "inputs hashed"
        );
        for (entry, digest) in manifest.files.iter_mut().zip(digests) {
            entry.sha256 = digest;
            entry.in_base = spec.base.as_ref().is_some_and(|b| b.holds.contains(&digest));
        }
        let manifest_bytes = manifest.to_bytes();
        let manifest_sha256 = Sha256Digest::of(&manifest_bytes);
        let manifest_signature = key.sign(
            &manifest_bytes,
            &ManifestComment { name: manifest.name.clone(), sequence: manifest.sequence }
                .to_string(),
        );
        Ok(Self { files, prints, manifest, manifest_bytes, manifest_sha256, manifest_signature })
    }

    /// Writes the compressed tar stream into `sink` (on a thread of its own, which also hashes
    /// it for the detached signature) and signs it: the sink back, the detached signature's
    /// text, and the stream's length. `path` names the sink in errors.
    fn stream<W: Write + Send + 'static>(
        &self,
        compression: Compression,
        sink: W,
        path: &Path,
        key: &SigningKey,
        progress: &dyn Progress,
    ) -> Result<(W, String, u64), WriteError> {
        let output = |source| WriteError::Output { path: path.to_owned(), source };
        let manifest = &self.manifest;
        let hashed = OutputThread::spawn(sink);
        let mtime = u64::try_from(manifest.created.unix_timestamp()).unwrap_or(0);
        let tar_len = tar::archive_len(
            [self.manifest_bytes.len() as u64, self.manifest_signature.len() as u64]
                .into_iter()
                .chain(manifest.carried().map(|f| f.size)),
        );
        progress.start("writing", manifest.carried_size());
        let mut stream = TarWriter::new(compression, hashed, tar_len).map_err(output)?;
        stream.entry(MANIFEST_ENTRY, mtime, &self.manifest_bytes).map_err(output)?;
        stream
            .entry(MANIFEST_SIGNATURE_ENTRY, mtime, self.manifest_signature.as_bytes())
            .map_err(output)?;
        let mut buf = vec![0u8; IO_BUFFER];
        for ((source, entry), print) in self.files.iter().zip(&manifest.files).zip(&self.prints) {
            if entry.in_base {
                continue;
            }
            let file = open_unchanged(&source.source, *print)?;
            stream
                .header(&RawHeader::file(entry.path.as_str(), entry.mode.bits(), entry.size, mtime))
                .map_err(output)?;
            copy_exact(
                &source.source,
                file,
                *print,
                entry.size,
                &mut |b| stream.body(b).map_err(output),
                &mut buf,
                progress,
            )?;
            stream.pad(entry.size).map_err(output)?;
        }
        let hashed = stream.finish().map_err(output)?;
        progress.finish();
        let (sink, hasher, len) = hashed.finish().map_err(output)?;
        let comment = BundleComment {
            name: manifest.name.clone(),
            sequence: manifest.sequence,
            manifest_sha256: self.manifest_sha256,
        };
        Ok((sink, key.sign_prehashed(hasher, &comment.to_string()), len))
    }
}

/// Writes `bytes` to a new file at `path` and syncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Hashes every input on `workers` threads, in any order, returning digests in input order.
fn hash_inputs(
    files: &[PayloadSource],
    prints: &[Fingerprint],
    workers: usize,
    progress: &dyn Progress,
) -> Result<Vec<Sha256Digest>, WriteError> {
    progress.start("hashing", prints.iter().map(|p| p.len).sum());
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Sha256Digest>>> =
        files.iter().map(|_| Mutex::new(None)).collect();
    let workers = workers.clamp(1, files.len().max(1));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<(), WriteError> {
                    let mut buf = vec![0u8; IO_BUFFER];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let (Some(source), Some(print)) = (files.get(i), prints.get(i)) else {
                            return Ok(());
                        };
                        let file = open_unchanged(&source.source, *print)?;
                        let mut hasher = sha2::Sha256::new();
                        copy_exact(
                            &source.source,
                            file,
                            *print,
                            print.len,
                            &mut |b| {
                                hasher.update(b);
                                Ok(())
                            },
                            &mut buf,
                            progress,
                        )?;
                        *results[i].lock().expect("no panics while locked") =
                            Some(Sha256Digest(hasher.finalize().into()));
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("hashing thread panicked"))
    })?;
    progress.finish();
    Ok(results
        .into_iter()
        .map(|r| r.into_inner().expect("no panics while locked").expect("every input hashed"))
        .collect())
}

enum Compressor<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
}

/// Writes tar blocks into the compressor.
struct TarWriter<W: Write> {
    out: Compressor<W>,
}

impl<W: Write> TarWriter<W> {
    /// `tar_len` is the exact uncompressed length; zstd records it in the frame header.
    fn new(compression: Compression, out: W, tar_len: u64) -> io::Result<Self> {
        let out = match compression {
            Compression::Zstd { level, workers } => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                enc.multithread(workers.max(1))?;
                enc.include_checksum(true)?;
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
                enc.set_pledged_src_size(Some(tar_len))?;
                Compressor::Zstd(enc)
            }
            Compression::Gzip { level } => Compressor::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(out, flate2::Compression::new(level)),
            ),
        };
        Ok(Self { out })
    }

    fn body(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Compressor::Zstd(e) => e.write_all(bytes),
            Compressor::Gzip(e) => e.write_all(bytes),
        }
    }

    fn header(&mut self, header: &RawHeader) -> io::Result<()> {
        let block = header.encode().map_err(io::Error::other)?;
        self.body(&block)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        self.body(&[0u8; tar::BLOCK][..tar::padding(size)])
    }

    /// A whole metadata entry (mode 0644).
    fn entry(&mut self, path: &str, mtime: u64, bytes: &[u8]) -> io::Result<()> {
        self.header(&RawHeader::file(path, Mode::Regular.bits(), bytes.len() as u64, mtime))?;
        self.body(bytes)?;
        self.pad(bytes.len() as u64)
    }

    /// Writes the end marker and finishes the compressed stream.
    fn finish(mut self) -> io::Result<W> {
        self.body(&[0u8; 2 * tar::BLOCK])?;
        match self.out {
            Compressor::Zstd(e) => e.finish(),
            Compressor::Gzip(e) => e.finish(),
        }
    }
}

/// Hashes (for the detached signature) and writes the compressed stream on a thread of its own,
/// so that the thread feeding the compressor never waits for BLAKE2b or the disk.
///
/// The sink is what the caller chose: a `File` for the whole bundle ([`write_bundle`]), a
/// `PartCutter` for parts ([`write_parts`]).
struct OutputThread<W> {
    buf: Vec<u8>,
    full: Option<SyncSender<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
    handle: Option<JoinHandle<io::Result<(W, Prehasher, u64)>>>,
}

impl<W: Write + Send + 'static> OutputThread<W> {
    fn spawn(sink: W) -> Self {
        let (full, chunks) = sync_channel::<Vec<u8>>(4);
        let (give_back, spare) = sync_channel(8);
        let handle = std::thread::spawn(move || {
            let mut out = PrehashWriter::new(sink);
            for chunk in chunks {
                out.write_all(&chunk)?;
                // Returning the buffer saves an allocation and its page faults; if the pool is
                // full, dropping it is fine.
                let _ = give_back.try_send(chunk);
            }
            Ok(out.into_parts())
        });
        Self { buf: Vec::with_capacity(IO_BUFFER), full: Some(full), spare, handle: Some(handle) }
    }

    /// The writer thread's own error, once it has stopped taking chunks.
    fn failure(&mut self) -> io::Error {
        self.full = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the bundle writer thread stopped"),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(IO_BUFFER));
        next.clear();
        let chunk = std::mem::replace(&mut self.buf, next);
        let sent = self.full.as_ref().map(|full| full.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.failure()),
        }
    }

    /// Sends what is left and waits for the writer: the sink, the hash of everything written,
    /// and its length.
    fn finish(mut self) -> io::Result<(W, Prehasher, u64)> {
        self.send()?;
        self.full = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(io::Error::other("the bundle writer thread panicked")),
        }
    }
}

impl<W> Drop for OutputThread<W> {
    /// On an error, waits for the writer to stop and drop its sink, so whatever the sink cleans
    /// up (the cutter removes its parts) is gone before the error reaches the caller, who may
    /// exit at once.
    fn drop(&mut self) {
        self.full = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl<W: Write + Send + 'static> Write for OutputThread<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= IO_BUFFER {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_place_rewrite_is_noticed_even_with_the_mtime_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input");
        fs::write(&path, b"original").unwrap();
        let print = stat_regular(&path).unwrap();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&path, b"tampered").unwrap();
        File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        assert!(matches!(open_unchanged(&path, print), Err(WriteError::InputChanged { .. })));
    }

    #[test]
    fn a_bundle_that_fails_midway_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (input, out) = (dir.path().join("input"), dir.path().join("out"));
        fs::create_dir(&out).unwrap();
        fs::write(&input, vec![7u8; 100_000]).unwrap();
        let spec = BundleSpec {
            name: "site".parse().unwrap(),
            sequence: 1,
            created: time::macros::datetime!(2026-11-01 00:00 UTC),
            expires: time::macros::datetime!(2099-01-01 00:00 UTC),
            builder: "test".into(),
            compression: Compression::Zstd { level: 1, workers: 1 },
            base: None,
        };
        let source = PayloadSource {
            path: EntryName::new("files/input").unwrap(),
            source: input.clone(),
            kind: Kind::Other,
            mode: Mode::Regular,
            metadata: Metadata::default(),
        };
        let generated = crate::sign::generate_key(None).unwrap();
        let key = SigningKey::from_text(&generated.secret_key_file, "test", None).unwrap();
        let prepared = Prepared::new(&spec, vec![source], &key, &crate::NoProgress).unwrap();
        // Changed after it was hashed: found once the bundle's head is written.
        fs::write(&input, vec![8u8; 100_001]).unwrap();
        let err =
            write_prepared(prepared, spec.compression, &key, &out, &crate::NoProgress).unwrap_err();
        assert!(matches!(err, WriteError::InputChanged { .. }), "{err}");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "nothing left in the output folder");
    }
}
