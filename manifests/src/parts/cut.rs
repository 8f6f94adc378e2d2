//! `PartCutter`: a writer that cuts the bundle's byte stream into data parts as it arrives,
//! keeping the SHA-256 of the whole bundle (the index's `bundle_sha256`). Each part's own
//! SHA-256 is left to the tail, which hashes the parts on a thread beside the parity: on the
//! bundle writer's thread, which already runs BLAKE2b and this SHA-256, it made that thread the
//! bottleneck. Measured on the 2 GiB benchmark (2 cores, 256 MiB parts, parity 2, interleaved):
//! writing the data parts took 5.4-5.5 s with it here against 4.5-4.6 s without, and the whole
//! build 8.4-8.5 s against 7.3-7.4 s, the hashing hiding behind the parity (2.0 s against
//! 1.8 s, parts included). A build without parity pays a pass over its parts (0.9 s).
//!
//! `ferry build --part-size` hands it the compressor's output directly, so the bundle's bytes
//! are written once, as parts; `split_bundle` hands it the bytes it reads from a bundle file.

use std::io;
use std::path::{Path, PathBuf};

use super::files::{Finished, Leftovers, PartFile, Syncer, temp_path};
use super::{LayoutError, MAX_PARTS};

/// Data parts written under temporary names, their digests and the whole stream's on the way.
pub(crate) struct CutParts {
    pub(crate) parts: Vec<Finished>,
    pub(crate) bundle_size: u64,
    /// Hashing (and syncing) the parts: [`Syncer::wait`] gives each part's digest and the whole
    /// stream's.
    pub(crate) digests: Syncer,
    /// Removes the parts unless the set is finished.
    pub(crate) leftovers: Leftovers,
}

/// Cuts what is written into parts of `part_size` bytes in `out_dir`; a part file is created
/// only when a byte for it arrives, so a stream ending exactly at a boundary leaves no empty
/// part.
pub(crate) struct PartCutter {
    out_dir: PathBuf,
    bundle_file: String,
    part_size: u64,
    /// Data parts the layout allows, so tiny parts of a large bundle fail at the first part too
    /// many instead of after writing thousands of files.
    max_parts: usize,
    current: Option<PartFile>,
    parts: Vec<Finished>,
    len: u64,
    syncer: Option<Syncer>,
    leftovers: Leftovers,
}

impl PartCutter {
    /// Parts of the bundle file `bundle_file` (`NAME-SEQ.ferry`), leaving room for `parity`
    /// parity parts within [`MAX_PARTS`].
    pub(crate) fn new(out_dir: &Path, bundle_file: &str, part_size: u64, parity: usize) -> Self {
        assert!(part_size > 0, "Layout refuses parts below MIN_PART_SIZE before any cutting");
        Self {
            out_dir: out_dir.to_owned(),
            bundle_file: bundle_file.to_owned(),
            part_size,
            max_parts: MAX_PARTS.saturating_sub(parity),
            current: None,
            parts: Vec::new(),
            len: 0,
            syncer: Some(Syncer::spawn()),
            leftovers: Leftovers::default(),
        }
    }

    /// Where part `i` (0-based) is written until the set is finished.
    pub(crate) fn temp(out_dir: &Path, bundle_file: &str, i: usize) -> PathBuf {
        temp_path(out_dir, &format!("{bundle_file}.part{}", i + 1))
    }

    fn open_next(&mut self) -> io::Result<PartFile> {
        let i = self.parts.len();
        if i >= self.max_parts {
            let parity = MAX_PARTS - self.max_parts;
            return Err(io::Error::other(LayoutError::TooManyParts {
                parts: (i + 1 + parity) as u128,
                data: (i + 1) as u128,
                parity,
                max: MAX_PARTS,
            }));
        }
        let temp = Self::temp(&self.out_dir, &self.bundle_file, i);
        PartFile::create(temp.clone(), &mut self.leftovers, false).map_err(|e| named(&temp, &e))
    }

    fn close_current(&mut self) -> io::Result<()> {
        if let Some(part) = self.current.take() {
            let path = part.path().to_owned();
            let part = part.finish().map_err(|e| named(&path, &e))?;
            if let Some(syncer) = &self.syncer {
                syncer.sync(&part.file, &path, part.len).map_err(|e| named(&path, &e))?;
            }
            self.parts.push(part);
        }
        Ok(())
    }

    /// Closes the last part: the data parts, the whole stream's length, and its digests on the
    /// way.
    pub(crate) fn finish(mut self) -> io::Result<CutParts> {
        self.close_current()?;
        Ok(CutParts {
            parts: std::mem::take(&mut self.parts),
            bundle_size: self.len,
            digests: self.syncer.take().expect("taken only here"),
            leftovers: std::mem::take(&mut self.leftovers),
        })
    }
}

/// An I/O error that names the part file, since the writer thread reports only the folder.
fn named(path: &Path, e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl io::Write for PartCutter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.len += bytes.len() as u64;
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.current.is_none() {
                self.current = Some(self.open_next()?);
            }
            let part = self.current.as_mut().expect("opened above");
            let room = self.part_size - part.len();
            let take = rest.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            part.write(&rest[..take]).map_err(|e| named(part.path(), &e))?;
            rest = &rest[take..];
            if part.len() == self.part_size {
                self.close_current()?;
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use crate::manifest::Sha256Digest;

    use super::*;

    /// Writes `chunks` (lengths) of a counting pattern through a cutter of `part_size`, and
    /// checks the parts against the stream: lengths, bytes, digests.
    fn cut(part_size: u64, chunks: &[usize]) -> Vec<u64> {
        let dir = tempfile::tempdir().unwrap();
        let total: usize = chunks.iter().sum();
        let stream: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut cutter = PartCutter::new(dir.path(), "site-1.ferry", part_size, 2);
        let mut at = 0;
        for &n in chunks {
            assert_eq!(cutter.write(&stream[at..at + n]).unwrap(), n);
            at += n;
        }
        let CutParts { parts, bundle_size, digests, leftovers } = cutter.finish().unwrap();
        assert_eq!(bundle_size, total as u64);
        let digests = digests.wait().unwrap();
        assert_eq!(digests.whole, Sha256Digest::of(&stream));
        assert_eq!(digests.parts.len(), parts.len());
        let mut offset = 0;
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.temp, PartCutter::temp(dir.path(), "site-1.ferry", i));
            let bytes = std::fs::read(&part.temp).unwrap();
            assert_eq!(bytes.len() as u64, part.len);
            assert_eq!(bytes, stream[offset..offset + bytes.len()], "part {i}");
            assert_eq!(digests.parts[i], Sha256Digest::of(&bytes), "part {i}");
            offset += bytes.len();
        }
        assert_eq!(offset, total);
        let lens = parts.iter().map(|p| p.len).collect();
        drop((parts, leftovers));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the guard removes parts");
        lens
    }

    #[test]
    fn writes_are_cut_at_part_boundaries() {
        // A write straddling two boundaries, then one ending inside a part: the last part short.
        assert_eq!(cut(1024, &[100, 2500, 10]), [1024, 1024, 562]);
        // Writes ending exactly at a boundary: no empty part follows the last one.
        assert_eq!(cut(1024, &[1024, 1024]), [1024, 1024]);
        assert_eq!(cut(1024, &[512, 512, 2048]), [1024, 1024, 1024]);
        // One write larger than many parts, and a stream shorter than one part.
        assert_eq!(cut(1024, &[5000]), [1024, 1024, 1024, 1024, 904]);
        assert_eq!(cut(1024, &[1, 0, 1]), [2]);
        assert_eq!(cut(1024, &[]), Vec::<u64>::new());
    }

    #[test]
    fn too_many_parts_stop_at_the_first_part_too_many() {
        let dir = tempfile::tempdir().unwrap();
        let mut cutter = PartCutter::new(dir.path(), "site-1.ferry", 1, MAX_PARTS - 3);
        let err = cutter.write(&[7; 4]).unwrap_err();
        assert!(err.to_string().contains("choose a larger part size"), "{err}");
        drop(cutter);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
