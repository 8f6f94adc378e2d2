//! Media-sized parts of a bundle: the layout (how a bundle is cut, how parity is striped), the
//! signed parts index, Reed–Solomon parity, and the two ways to write them all: `split_bundle`
//! from a bundle file, and [`crate::write_parts`] straight from the bundle writer's output. Both
//! cut through `cut.rs` and end with the same tail (`finish.rs`), so their files are the same.
//!
//! Parts are plain byte ranges of the `.ferry` file, so `cat NAME-SEQ.ferry.part0*` gives the
//! bundle back and `sha256sum -c` checks each part with nothing but coreutils. Parity parts
//! follow the data parts' numbering. The index (`NAME-SEQ.ferry.parts`) says what every part
//! must be and carries the bundle's own detached signature; it is signed like the bundle.
//! Nothing here replaces the bundle's signature: a reader rebuilds the bundle from verified
//! parts and then verifies it as if it had arrived whole. `docs/bundle-format.md` ("Parts and
//! parity") is the specification.

pub(crate) mod cut;
pub(crate) mod files;
pub(crate) mod finish;
mod index;
mod parity;
mod reader;
mod size;
mod split;

pub use index::{IndexError, Part, PartsIndex, parts_signature_path};
pub use parity::{ReadAt, StripeDecoder, encode_parity};
pub use reader::{PartData, PartSource, PartsReader};
pub use size::parse_size;
pub use split::{SplitError, SplitOptions, SplitOutput, split_bundle};

/// The only parts index format this crate reads and writes.
pub const PARTS_FORMAT: u32 = 1;
/// The largest index a reader accepts, in bytes (a full index of [`MAX_PARTS`] parts is about
/// 700 KiB).
pub const MAX_INDEX_SIZE: u64 = 1 << 20;
/// The most parts (data and parity together) one bundle is cut into.
pub const MAX_PARTS: usize = 4096;
/// The smallest part size: below it, the per-part overhead (a file, an index line, a shard)
/// is all there is.
pub const MIN_PART_SIZE: u64 = 1024;
/// The largest bundle cut into parts (16 TiB): far above what the reader accepts, and low enough
/// that no size computed from it overflows.
pub const MAX_BUNDLE_SIZE: u64 = 1 << 44;
/// The largest stripe: how many bytes of each part one Reed–Solomon codeword row covers.
pub const MAX_STRIPE: u64 = 1 << 20;
/// What one stripe's shards may take together (data and parity), so the encoder's and
/// decoder's memory stays bounded whatever the number of parts.
const STRIPE_BUDGET: u64 = 16 << 20;
/// The crate's shard size must be a multiple of 64 bytes for its SIMD paths.
const SHARD_ALIGN: u64 = 64;

/// How a bundle of `bundle_size` bytes is cut: `data_parts` parts of `part_size` bytes (the last
/// shorter), then `parity_parts` Reed–Solomon recovery parts, computed stripe by stripe.
///
/// Stripe `k` covers bytes `k * stripe` to `min((k + 1) * stripe, span)` of every data part,
/// where `span` is the first data part's length; each data part's piece is zero-padded to the
/// stripe's shard length (that length rounded up to 64) for encoding only. A parity part is the
/// concatenation of its recovery shard of every stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub bundle_size: u64,
    pub part_size: u64,
    pub data_parts: usize,
    pub parity_parts: usize,
    pub stripe: u64,
}

/// Why a bundle cannot be cut as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("the bundle is empty")]
    EmptyBundle,
    #[error("the bundle is {size} bytes; parts are made of bundles up to {max} bytes")]
    BundleTooLarge { size: u64, max: u64 },
    #[error("part size {part_size} is below the minimum of {min} bytes")]
    PartTooSmall { part_size: u64, min: u64 },
    #[error(
        "{parts} parts ({data} data, {parity} parity) is more than the {max} a bundle may be cut \
         into: choose a larger part size"
    )]
    TooManyParts { parts: u128, data: u128, parity: usize, max: usize },
    #[error(
        "Reed-Solomon cannot make {parity} parity parts for {data} data parts (the codec supports \
         at most 32768 of either and 65536 together)"
    )]
    UnsupportedParity { data: usize, parity: usize },
}

impl Layout {
    /// The layout of a bundle of `bundle_size` bytes in parts of `part_size`, with
    /// `parity_parts` parity parts. The stripe follows from the rest (see `Layout::stripe_for`).
    pub fn new(bundle_size: u64, part_size: u64, parity_parts: usize) -> Result<Self, LayoutError> {
        if bundle_size == 0 {
            return Err(LayoutError::EmptyBundle);
        }
        if bundle_size > MAX_BUNDLE_SIZE {
            return Err(LayoutError::BundleTooLarge { size: bundle_size, max: MAX_BUNDLE_SIZE });
        }
        if part_size < MIN_PART_SIZE {
            return Err(LayoutError::PartTooSmall { part_size, min: MIN_PART_SIZE });
        }
        let data = u128::from(bundle_size.div_ceil(part_size));
        let total = data + parity_parts as u128;
        if total > MAX_PARTS as u128 {
            return Err(LayoutError::TooManyParts {
                parts: total,
                data,
                parity: parity_parts,
                max: MAX_PARTS,
            });
        }
        let data_parts = data as usize;
        if parity_parts > 0
            && !reed_solomon_simd::ReedSolomonEncoder::supports(data_parts, parity_parts)
        {
            return Err(LayoutError::UnsupportedParity { data: data_parts, parity: parity_parts });
        }
        let span = part_size.min(bundle_size);
        let stripe = Self::stripe_for(data_parts + parity_parts, span);
        Ok(Self { bundle_size, part_size, data_parts, parity_parts, stripe })
    }

    /// The stripe for `parts` parts whose longest data part is `span` bytes: 1 MiB, less when
    /// that many shards of it would exceed 16 MiB, never more than `span` rounded up to 64,
    /// always a multiple of 64.
    fn stripe_for(parts: usize, span: u64) -> u64 {
        let budget = (STRIPE_BUDGET / parts.max(1) as u64) / SHARD_ALIGN * SHARD_ALIGN;
        MAX_STRIPE
            .min(budget)
            .min(span.min(MAX_STRIPE).next_multiple_of(SHARD_ALIGN))
            .max(SHARD_ALIGN)
    }

    pub fn total_parts(&self) -> usize {
        self.data_parts + self.parity_parts
    }

    /// The first data part's length: what every stripe walks over.
    pub fn span(&self) -> u64 {
        self.part_size.min(self.bundle_size)
    }

    /// How many stripes cover a data part.
    pub fn stripes(&self) -> u64 {
        self.span().div_ceil(self.stripe)
    }

    /// How many bytes of a full data part stripe `k` covers.
    pub fn stripe_len(&self, k: u64) -> u64 {
        (self.span() - k * self.stripe).min(self.stripe)
    }

    /// The shard length of stripe `k`: its length rounded up to 64.
    pub fn shard_len(&self, k: u64) -> u64 {
        self.stripe_len(k).next_multiple_of(SHARD_ALIGN)
    }

    /// Where data part `i` (0-based) starts in the bundle.
    pub fn data_offset(&self, i: usize) -> u64 {
        i as u64 * self.part_size
    }

    /// The length of part `i` (0-based; data parts first, then parity).
    pub fn part_len(&self, i: usize) -> u64 {
        if i + 1 < self.data_parts {
            self.part_size
        } else if i + 1 == self.data_parts {
            self.bundle_size - self.data_offset(i)
        } else {
            // Every stripe but the last is full; the last one's shard is padded to 64.
            (self.stripes() - 1) * self.stripe + self.shard_len(self.stripes() - 1)
        }
    }

    /// How many bytes of data part `i` stripe `k` covers (0 when the part ends before it).
    pub fn piece_len(&self, i: usize, k: u64) -> u64 {
        let start = k * self.stripe;
        self.part_len(i).saturating_sub(start).min(self.stripe_len(k))
    }

    /// The digits in part file names: 3, or more past 999 parts.
    pub fn name_width(&self) -> usize {
        self.total_parts().to_string().len().max(3)
    }

    /// The file name of part `i` (0-based) of the bundle file `bundle_file`.
    pub fn part_name(&self, bundle_file: &str, i: usize) -> String {
        format!("{bundle_file}.part{:0width$}", i + 1, width = self.name_width())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_add_up() {
        let l = Layout::new(10_000, 4096, 2).unwrap();
        assert_eq!((l.data_parts, l.parity_parts, l.stripe), (3, 2, 4096));
        assert_eq!((l.part_len(0), l.part_len(2), l.part_len(3)), (4096, 1808, 4096));
        assert_eq!(l.stripes(), 1);
        assert_eq!(l.part_name("site-1.ferry", 0), "site-1.ferry.part001");
        // One short part: the stripe shrinks to it, rounded to 64.
        let l = Layout::new(1000, 4096, 1).unwrap();
        assert_eq!((l.data_parts, l.stripe, l.part_len(0), l.part_len(1)), (1, 1024, 1000, 1024));
        // Big parts: 1 MiB stripes, the last one padded.
        let l = Layout::new(5 << 30, (2 << 30) + 100, 2).unwrap();
        assert_eq!((l.data_parts, l.stripe, l.stripes()), (3, 1 << 20, 2049));
        assert_eq!(l.part_len(3), (2048 << 20) + 128);
        // Many parts: the stripe shrinks so one stripe's shards stay within the budget.
        let l = Layout::new(3000 * 4096, 4096, 10).unwrap();
        assert_eq!(l.stripe, 4096);
        let l = Layout::new(3000 << 20, 1 << 20, 10).unwrap();
        assert!(l.stripe * l.total_parts() as u64 <= STRIPE_BUDGET);
        assert_eq!(l.stripe % 64, 0);
        assert_eq!(l.name_width(), 4);
        assert_eq!(Layout::new(0, 4096, 0), Err(LayoutError::EmptyBundle));
        assert!(matches!(Layout::new(10, 10, 0), Err(LayoutError::PartTooSmall { .. })));
        assert!(matches!(Layout::new(5000 * 4096, 4096, 0), Err(LayoutError::TooManyParts { .. })));
    }
}
