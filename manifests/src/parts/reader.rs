//! `PartsReader`: the bundle read straight from its parts, where they are, with the data parts
//! that did not arrive rebuilt from parity stripe by stripe as reads reach them.
//!
//! This is what lets the appliance import from parts without first copying 1.4 GB of them
//! into a bundle file (on the benchmark that copy cost more than the import itself). The
//! reader trusts nothing: its caller has checked each part against the signed index, and the
//! bundle it yields goes through the same detached signature check and per-entry digests as a
//! bundle file, which a part changed after its check (or a wrong rebuild) cannot pass.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{Layout, StripeDecoder};

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
    fn read_exact_at(&self, part: usize, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
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

/// The rebuilt pieces of one stripe, one per missing data part.
struct Rebuilt {
    stripe: u64,
    pieces: Vec<Vec<u8>>,
}

/// Reads the bundle `layout` describes from `parts` (one entry per part, data then parity;
/// `None` for a part not at hand). Seeks anywhere; memory is one stripe per missing data part
/// plus the decoder's shards (at most 16 MiB with the stripe budget of [`Layout`]).
pub struct PartsReader {
    layout: Layout,
    parts: Vec<Option<PartSource>>,
    decoder: Option<StripeDecoder>,
    rebuilt: Option<Rebuilt>,
    pos: u64,
}

impl PartsReader {
    /// Fails when fewer parts than data parts are at hand, or the parity at hand cannot stand
    /// in for the missing data parts.
    pub fn new(layout: Layout, parts: Vec<Option<PartSource>>) -> io::Result<Self> {
        assert_eq!(parts.len(), layout.total_parts(), "one entry per part");
        let present: Vec<bool> = parts.iter().map(Option::is_some).collect();
        let decoder = if present[..layout.data_parts].iter().all(|&p| p) {
            None
        } else {
            Some(StripeDecoder::new(&layout, &present)?)
        };
        Ok(Self { layout, parts, decoder, rebuilt: None, pos: 0 })
    }

    /// The bundle's length.
    pub fn len(&self) -> u64 {
        self.layout.bundle_size
    }

    /// Never true: a layout is of a bundle of at least one byte.
    pub fn is_empty(&self) -> bool {
        self.layout.bundle_size == 0
    }

    /// The data parts rebuilt from parity as they are read (0-based).
    pub fn rebuilt_parts(&self) -> &[usize] {
        self.decoder.as_ref().map_or(&[], StripeDecoder::missing)
    }

    /// Copies missing data part `i`'s bytes from offset `within` into `buf`, decoding their
    /// stripe first unless it is the one decoded last.
    fn read_rebuilt(&mut self, i: usize, within: u64, buf: &mut [u8]) -> io::Result<usize> {
        let stripe = within / self.layout.stripe;
        let decoder = self.decoder.as_mut().expect("a missing part means a decoder");
        let slot = decoder.missing().iter().position(|&m| m == i).expect("a missing data part");
        if self.rebuilt.as_ref().is_none_or(|r| r.stripe != stripe) {
            let mut pieces = self.rebuilt.take().map(|r| r.pieces).unwrap_or_default();
            pieces.resize_with(decoder.missing().len(), Vec::new);
            let parts = &self.parts;
            let mut n = 0;
            decoder.decode(
                stripe,
                &mut |p, offset, buf| {
                    parts[p]
                        .as_ref()
                        .expect("only parts at hand are read")
                        .read_exact_at(p, buf, offset)
                },
                &mut |_, piece| {
                    pieces[n].clear();
                    pieces[n].extend_from_slice(piece);
                    n += 1;
                },
            )?;
            self.rebuilt = Some(Rebuilt { stripe, pieces });
        }
        let piece = &self.rebuilt.as_ref().expect("decoded above").pieces[slot];
        let start = (within - stripe * self.layout.stripe) as usize;
        let n = buf.len().min(piece.len() - start);
        buf[..n].copy_from_slice(&piece[start..start + n]);
        Ok(n)
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
        let n = match &self.parts[i] {
            Some(part) => match part.data.read_at(&mut buf[..want], part.offset + within)? {
                0 => return Err(ended_early(i)),
                n => n,
            },
            None => self.read_rebuilt(i, within, &mut buf[..want])?,
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

    fn memory(bytes: &[u8]) -> Option<PartSource> {
        Some(PartSource { data: Arc::new(bytes.to_vec()), offset: 0 })
    }

    #[test]
    fn a_part_that_shrank_after_its_check_is_an_error_never_zeros() {
        let bundle: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let layout = Layout::new(bundle.len() as u64, 4096, 0).unwrap();
        let parts =
            vec![memory(&bundle[..4096]), memory(&bundle[4096..6000]), memory(&bundle[8192..])];
        let mut reader = PartsReader::new(layout, parts).unwrap();
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
        let mut reader =
            PartsReader::new(layout, vec![memory(&bundle[..4096]), memory(&long)]).unwrap();
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        assert_eq!(read, bundle);
        assert_eq!(reader.seek(SeekFrom::End(-10)).unwrap(), 4990);
        assert!(reader.seek(SeekFrom::Current(-5000)).is_err());
        assert_eq!(reader.len(), 5000);
    }
}
