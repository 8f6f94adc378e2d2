//! A content-addressed store of files on disk: `ROOT/sha256/ab/cdef…`, each file read-only and
//! named by the SHA-256 of its bytes. The builder's download cache and the appliance's blob
//! store are both one of these.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use ferry_manifests::Sha256Digest;
use sha2::Digest as _;

/// Why the store refused a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{what} has sha256 {actual}, expected {expected}")]
    Digest { what: String, expected: Sha256Digest, actual: Sha256Digest },
}

/// A content-addressed store rooted at one folder.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

impl BlobStore {
    /// Opens (creating if needed) a store at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for dir in [root.join("sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        Ok(Self { root: root.to_owned() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("sha256").join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, digest: &Sha256Digest) -> bool {
        self.path(digest).is_file()
    }

    /// A fresh path for staging a file before [`BlobStore::insert_file`]; on the store's
    /// filesystem, so the final move is a rename.
    pub fn temp_path(&self, hint: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let safe: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
            .collect();
        self.root.join("tmp").join(format!("{}-{n}-{safe}", std::process::id()))
    }

    /// Hashes the file at `path` and moves it into the store (or drops it when an identical blob
    /// is already there). With `expected`, a different digest is refused and the file left alone.
    pub fn insert_file(
        &self,
        path: &Path,
        expected: Option<&Sha256Digest>,
    ) -> Result<(Sha256Digest, u64), StoreError> {
        let (digest, size) = hash_file(path)?;
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(StoreError::Digest {
                what: path.display().to_string(),
                expected: *expected,
                actual: digest,
            });
        }
        File::open(path).and_then(|f| f.sync_all()).map_err(io_at(path))?;
        self.place(path, &digest)?;
        Ok((digest, size))
    }

    /// Moves a file whose SHA-256 the caller has already verified (and synced) into the store,
    /// without hashing it again.
    pub fn insert_verified(&self, path: &Path, digest: &Sha256Digest) -> Result<(), StoreError> {
        self.place(path, digest)
    }

    /// Renames `path` to the blob named `digest`. An existing blob of that name is kept only if
    /// it still has that content: a damaged one is replaced, never trusted for its name.
    fn place(&self, path: &Path, digest: &Sha256Digest) -> Result<(), StoreError> {
        let target = self.path(digest);
        if target.is_file() {
            match hash_file(&target) {
                Ok((existing, _)) if existing == *digest => {
                    return fs::remove_file(path).map_err(io_at(path));
                }
                _ => tracing::warn!(blob = %target.display(), "replacing a damaged blob"),
            }
        }
        let parent = target.parent().expect("blob paths have a parent");
        fs::create_dir_all(parent).map_err(io_at(parent))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o444)).map_err(io_at(path))?;
        fs::rename(path, &target).map_err(io_at(&target))?;
        // The rename is only durable once the folder holding the new name is synced.
        File::open(parent).and_then(|d| d.sync_all()).map_err(io_at(parent))
    }

    /// Every blob in the store.
    pub fn list(&self) -> Result<Vec<Sha256Digest>, StoreError> {
        let top = self.root.join("sha256");
        let mut out = Vec::new();
        for dir in fs::read_dir(&top).map_err(io_at(&top))? {
            let dir = dir.map_err(io_at(&top))?;
            let prefix = dir.file_name().to_string_lossy().into_owned();
            for file in fs::read_dir(dir.path()).map_err(io_at(&dir.path()))? {
                let file = file.map_err(io_at(&dir.path()))?;
                let name = format!("{prefix}{}", file.file_name().to_string_lossy());
                if let Some(d) = Sha256Digest::from_hex(&name) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Deletes a blob (for garbage collection). Readers with the file open keep reading it.
    pub fn remove(&self, digest: &Sha256Digest) -> Result<(), StoreError> {
        let path = self.path(digest);
        fs::remove_file(&path).map_err(io_at(&path))
    }

    /// Stores `bytes` (small files: sidecars, keys).
    pub fn insert_bytes(
        &self,
        bytes: &[u8],
        hint: &str,
    ) -> Result<(Sha256Digest, u64), StoreError> {
        let tmp = self.temp_path(hint);
        let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
        f.write_all(bytes).map_err(io_at(&tmp))?;
        drop(f);
        self.insert_file(&tmp, None)
    }

    /// Opens a blob, checking nothing (use [`BlobStore::verify`] for that).
    pub fn open_blob(&self, digest: &Sha256Digest) -> Result<File, StoreError> {
        let path = self.path(digest);
        File::open(&path).map_err(io_at(&path))
    }

    /// Re-hashes a blob and checks it still has its name.
    pub fn verify(&self, digest: &Sha256Digest) -> Result<u64, StoreError> {
        let path = self.path(digest);
        let (actual, size) = hash_file(&path)?;
        if actual != *digest {
            return Err(StoreError::Digest {
                what: path.display().to_string(),
                expected: *digest,
                actual,
            });
        }
        Ok(size)
    }
}

/// SHA-256 and length of a file.
pub fn hash_file(path: &Path) -> Result<(Sha256Digest, u64), StoreError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((Sha256Digest(hasher.finalize().into()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_dedupe_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let (d, n) = store.insert_bytes(b"hello", "a").unwrap();
        assert_eq!((d, n), (Sha256Digest::of(b"hello"), 5));
        assert!(store.contains(&d));
        assert_eq!(store.path(&d).file_name().unwrap().len(), 62);
        let mode = fs::metadata(store.path(&d)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
        assert_eq!(store.insert_bytes(b"hello", "b").unwrap().0, d);
        assert_eq!(store.verify(&d).unwrap(), 5);

        let tmp = store.temp_path("x");
        fs::write(&tmp, b"other").unwrap();
        let err = store.insert_file(&tmp, Some(&d)).unwrap_err();
        assert!(matches!(err, StoreError::Digest { .. }), "{err}");
        assert!(tmp.exists(), "a refused file is left where it was");

        // A damaged blob is replaced by a good copy, not trusted for its name.
        let blob = store.path(&d);
        fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&blob, b"HELLO").unwrap();
        store.insert_bytes(b"hello", "c").unwrap();
        assert_eq!(fs::read(&blob).unwrap(), b"hello");
    }
}
