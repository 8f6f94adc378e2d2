//! `PartsReader`: the bundle read straight from its data parts, wherever each lies (the medium
//! it arrived on, a range of the appliance's half-assembled bundle, a part rebuilt from parity).
//!
//! This is what lets the appliance import from parts without first copying 1.4 GB of them into
//! a bundle file (on the benchmark that copy cost more than the import itself). The reader
//! trusts nothing: its caller has checked each part against the signed index, and the bundle it
//! yields goes through the same detached signature check and per-entry digests as a bundle
//! file, which a part changed after its check cannot pass.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::Layout;

/// Bytes a part can be read from at an offset: a file, or (in tests) memory.
pub trait PartData: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl PartData for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl PartData for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Where one part's bytes are: `data` from `offset` on (several parts may share one file, as
/// in the appliance's half-assembled bundle).
#[derive(Clone)]
pub struct PartSource {
    pub data: Arc<dyn PartData>,
    pub offset: u64,
}

impl PartSource {
    pub fn file(file: Arc<File>, offset: u64) -> Self {
        Self { data: file, offset }
    }

    /// Fills `buf` from the part's `offset`; a part that ends early (it changed after it was
    /// checked) is an error, never zeros.
    pub fn read_exact_at(
        &self,
        part: usize,
        mut buf: &mut [u8],
        mut offset: u64,
    ) -> io::Result<()> {
        while !buf.is_empty() {
            match self.data.read_at(buf, self.offset + offset) {
                Ok(0) => return Err(ended_early(part)),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn ended_early(part: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("part {} ended early: it changed after it was checked", part + 1),
    )
}

/// Reads the bundle `layout` describes from its data parts, in order. Seeks anywhere.
pub struct PartsReader {
    layout: Layout,
    parts: Vec<PartSource>,
    pos: u64,
}

impl PartsReader {
    /// `parts` holds one source per data part.
    pub fn new(layout: Layout, parts: Vec<PartSource>) -> Self {
        assert_eq!(parts.len(), layout.data_parts, "one source per data part");
        Self { layout, parts, pos: 0 }
    }

    /// The bundle's length.
    pub fn len(&self) -> u64 {
        self.layout.bundle_size
    }

    /// Never true: a layout is of a bundle of at least one byte.
    pub fn is_empty(&self) -> bool {
        self.layout.bundle_size == 0
    }
}

impl Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let layout = self.layout;
        if self.pos >= layout.bundle_size || buf.is_empty() {
            return Ok(0);
        }
        let i = (self.pos / layout.part_size) as usize;
        let within = self.pos - layout.data_offset(i);
        let left = layout.part_len(i) - within;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let part = &self.parts[i];
        let n = match part.data.read_at(&mut buf[..want], part.offset + within)? {
            0 => return Err(ended_early(i)),
            n => n,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PartsReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.layout.bundle_size.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the bundle")
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(bytes: &[u8]) -> PartSource {
        PartSource { data: Arc::new(bytes.to_vec()), offset: 0 }
    }

    #[test]
    fn a_part_that_shrank_after_its_check_is_an_error_never_zeros() {
        let bundle: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let layout = Layout::new(bundle.len() as u64, 4096, 0).unwrap();
        let parts =
            vec![memory(&bundle[..4096]), memory(&bundle[4096..6000]), memory(&bundle[8192..])];
        let mut reader = PartsReader::new(layout, parts);
        let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("part 2 ended early"), "{err}");
    }

    #[test]
    fn reads_stop_at_the_bundle_end_and_seeks_are_checked() {
        let bundle = vec![7u8; 5000];
        let layout = Layout::new(5000, 4096, 0).unwrap();
        // A part longer than the index says: only the declared bytes are read.
        let long = [bundle[4096..].to_vec(), vec![9; 100]].concat();
        let mut reader = PartsReader::new(layout, vec![memory(&bundle[..4096]), memory(&long)]);
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        assert_eq!(read, bundle);
        assert_eq!(reader.seek(SeekFrom::End(-10)).unwrap(), 4990);
        assert!(reader.seek(SeekFrom::Current(-5000)).is_err());
        assert_eq!(reader.len(), 5000);
    }
}
