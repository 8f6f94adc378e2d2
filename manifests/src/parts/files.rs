//! Part files while they are written: under a temporary name, hashed as they grow, removed by a
//! guard unless the whole set is finished. Shared by the cutter (data parts) and the finishing
//! tail (parity parts, index, signature, transfer note).

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use sha2::Digest as _;

use crate::manifest::Sha256Digest;

/// The write buffer of a part: the bundle writer hands over 1 MiB chunks, which pass straight
/// through a buffer this size; parity arrives in stripes of up to 1 MiB, usually less.
const BUFFER: usize = 1 << 20;

/// A part hashed as it is written (parity) starts the writeback of each this many bytes handed
/// to the kernel, so its final sync does not wait for all of it: the data parts get the same
/// from the [`Syncer`], a part behind the writer.
const WRITEBACK_STEP: u64 = 32 << 20;

/// Removes the files it holds unless disarmed: a failed build or split leaves no part behind.
#[derive(Default)]
pub(crate) struct Leftovers(Vec<PathBuf>);

impl Leftovers {
    pub(crate) fn push(&mut self, path: PathBuf) {
        self.0.push(path);
    }

    /// `from` was renamed to `to`: remove `to` instead, should a later step fail.
    pub(crate) fn renamed(&mut self, from: &Path, to: PathBuf) {
        match self.0.iter_mut().find(|p| *p == from) {
            Some(path) => *path = to,
            None => self.0.push(to),
        }
    }

    /// Everything is under its final name: keep it all.
    pub(crate) fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// The last component of `path`, for naming its temporary twin.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Where a file named `name` is written before it is renamed into place in `dir`: hidden, and
/// unique to this process.
pub(crate) fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.{}.partial", std::process::id()))
}

/// A part being written under a temporary name, hashed as it grows if asked. Opened for reading
/// too: the parity pass reads the data parts back by position, from the page cache.
pub(crate) struct PartFile {
    temp: PathBuf,
    file: io::BufWriter<File>,
    hasher: Option<sha2::Sha256>,
    len: u64,
    /// Where the writeback started last ends (parts hashed as written only).
    written_back: u64,
}

impl PartFile {
    /// Creates `temp`, which `leftovers` removes unless the set is finished; `hash` says whether
    /// to hash it as it is written.
    pub(crate) fn create(temp: PathBuf, leftovers: &mut Leftovers, hash: bool) -> io::Result<Self> {
        let file =
            File::options().read(true).write(true).create(true).truncate(true).open(&temp)?;
        leftovers.push(temp.clone());
        Ok(Self {
            temp,
            file: io::BufWriter::with_capacity(BUFFER, file),
            hasher: hash.then(sha2::Sha256::new),
            len: 0,
            written_back: 0,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.temp
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(hasher) = &mut self.hasher {
            hasher.update(bytes);
        }
        self.len += bytes.len() as u64;
        self.file.write_all(bytes)?;
        let in_kernel = self.len - self.file.buffer().len() as u64;
        if self.hasher.is_some() && in_kernel - self.written_back >= WRITEBACK_STEP {
            // POSIX_FADV_DONTNEED starts writeback of the dirty pages in the range without
            // waiting for it, and drops the pages that are clean (Linux). The range reaches one
            // step back, whose writeback has had a step's time to end: its pages are dropped
            // now and the next writes take them again, so a parity part keeps about two steps
            // in the page cache rather than all of it, and its writes do not take memory the
            // machine has not touched lately (which costs this VM ~5 s per GB). Advice only: a
            // failure changes nothing.
            let from = self.written_back.saturating_sub(WRITEBACK_STEP);
            let len = std::num::NonZeroU64::new(in_kernel - from);
            let advice = rustix::fs::Advice::DontNeed;
            let _ = rustix::fs::fadvise(self.file.get_ref(), from, len, advice);
            self.written_back = in_kernel;
        }
        Ok(())
    }

    /// Flushes; syncing waits until the whole set is written, so the kernel writes one part back
    /// while the next is produced.
    pub(crate) fn finish(self) -> io::Result<Finished> {
        let file = self.file.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok(Finished {
            file,
            temp: self.temp,
            len: self.len,
            sha256: self.hasher.map(|h| Sha256Digest(h.finalize().into())),
        })
    }
}

/// A part written and hashed, not yet synced nor under its final name.
pub(crate) struct Finished {
    pub(crate) file: File,
    pub(crate) temp: PathBuf,
    pub(crate) len: u64,
    /// `None` until the [`Syncer`] has hashed it (data parts: see [`Digests`]).
    pub(crate) sha256: Option<Sha256Digest>,
}

/// How much of a part the [`Syncer`] reads at a time.
const HASH_CHUNK: usize = 1 << 20;

/// The SHA-256 of the first `len` bytes of `file`, read by position (from the page cache, for a
/// part just written), also fed to `whole`.
fn hash_file(file: &File, len: u64, whole: &mut sha2::Sha256) -> io::Result<Sha256Digest> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut hasher = sha2::Sha256::new();
    let mut offset = 0;
    while offset < len {
        let n = HASH_CHUNK.min(usize::try_from(len - offset).unwrap_or(HASH_CHUNK));
        file.read_exact_at(&mut buf[..n], offset)?;
        hasher.update(&buf[..n]);
        whole.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// The digests the [`Syncer`] computes: each data part's, and the whole bundle's.
pub(crate) struct Digests {
    pub(crate) parts: Vec<Sha256Digest>,
    pub(crate) whole: Sha256Digest,
}

/// Hashes and syncs finished data parts on a thread of its own while the next ones are
/// written: each part's digest and the whole bundle's, read back from the page cache, on the
/// core the compressor leaves (hashing on the writer's thread made it the bottleneck: 8.4 s
/// against 7.3 for the whole build, and the whole bundle's digest there cost it 0.7 s of 1.4
/// GB), and each part's writeback overlaps the compression instead of being waited for at the
/// end, as a plain build waits for its whole bundle's. The last part is still being hashed
/// while the parity is computed; the tail waits for the digests only to write the index.
pub(crate) struct Syncer {
    files: Option<Sender<(File, PathBuf, u64)>>,
    handle: Option<JoinHandle<io::Result<Digests>>>,
}

impl Syncer {
    pub(crate) fn spawn() -> Self {
        let (files, queue) = channel::<(File, PathBuf, u64)>();
        let handle = std::thread::spawn(move || {
            let named = |path: &Path, e: io::Error| {
                io::Error::new(e.kind(), format!("{}: {e}", path.display()))
            };
            let mut parts = Vec::new();
            let mut whole = sha2::Sha256::new();
            for (file, path, len) in queue {
                parts.push(hash_file(&file, len, &mut whole).map_err(|e| named(&path, e))?);
                // The first error is kept and reported: Linux reports a failed writeback once,
                // so a later sync of the same file could succeed with data lost.
                file.sync_all().map_err(|e| named(&path, e))?;
            }
            Ok(Digests { parts, whole: Sha256Digest(whole.finalize().into()) })
        });
        Self { files: Some(files), handle: Some(handle) }
    }

    /// Queues `file` (the part at `path`, `len` bytes) for hashing and syncing.
    pub(crate) fn sync(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        let clone = file.try_clone()?;
        if let Some(files) = &self.files {
            // A send fails only once the thread has stopped on an error, which `wait` reports.
            let _ = files.send((clone, path.to_owned(), len));
        }
        Ok(())
    }

    /// Waits until every queued part is hashed and synced; their digests, in queued order, and
    /// the digest of them all.
    pub(crate) fn wait(mut self) -> io::Result<Digests> {
        self.files = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(io::Error::other("the part syncing thread panicked")),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.files = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
