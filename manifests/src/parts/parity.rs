//! Reed–Solomon parity over the data parts, one stripe at a time (`reed-solomon-simd`, GF(2^16),
//! Leopard-RS layout): the encoder and decoder only ever hold one stripe's shards, at most
//! 16 MiB together (see [`super::Layout`]), whatever the bundle and part sizes.
//!
//! The encoder and the stripe decoder take their reads as closures reading at an offset, so the
//! builder reads the bundle it cuts and [`super::PartsReader`] the parts it was given, each with
//! positioned reads and no second copy.

use std::io;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::Layout;
use crate::progress::Progress;

/// Reads part `p`'s bytes at an offset into the whole buffer.
pub type ReadAt<'a> = dyn FnMut(usize, u64, &mut [u8]) -> io::Result<()> + 'a;

fn codec(e: reed_solomon_simd::Error) -> io::Error {
    io::Error::other(format!("reed-solomon: {e}"))
}

/// Fills `buf` with data part `i`'s piece of stripe `k`, zero-padded to the stripe's shard.
fn read_piece(
    layout: &Layout,
    i: usize,
    k: u64,
    buf: &mut [u8],
    read: &mut ReadAt<'_>,
) -> io::Result<()> {
    let len = layout.piece_len(i, k) as usize;
    read(i, k * layout.stripe, &mut buf[..len])?;
    buf[len..].fill(0);
    Ok(())
}

/// Computes the parity parts. `read(i, offset, buf)` must fill `buf` with data part `i`'s bytes
/// at `offset`; `write(j, bytes)` receives parity part `j`'s (0-based among parity parts) next
/// bytes, stripe after stripe, in order.
pub fn encode_parity(
    layout: &Layout,
    read: &mut ReadAt<'_>,
    write: &mut dyn FnMut(usize, &[u8]) -> io::Result<()>,
    progress: &dyn Progress,
) -> io::Result<()> {
    if layout.parity_parts == 0 {
        return Ok(());
    }
    let (data, parity) = (layout.data_parts, layout.parity_parts);
    let mut encoder =
        ReedSolomonEncoder::new(data, parity, layout.shard_len(0) as usize).map_err(codec)?;
    let mut buf = vec![0u8; layout.stripe as usize];
    for k in 0..layout.stripes() {
        let shard = layout.shard_len(k) as usize;
        encoder.reset(data, parity, shard).map_err(codec)?;
        for i in 0..data {
            read_piece(layout, i, k, &mut buf[..shard], read)?;
            encoder.add_original_shard(&buf[..shard]).map_err(codec)?;
        }
        let result = encoder.encode().map_err(codec)?;
        for (j, recovery) in result.recovery_iter().enumerate() {
            write(j, recovery)?;
        }
        progress.advance(layout.stripe_len(k) * data as u64);
    }
    Ok(())
}

/// Rebuilds the missing data parts' pieces one stripe at a time from the parts at hand. Stripes
/// are independent, so several decoders may share the stripes of one rebuild between threads.
/// Only as many parity parts are read as data parts are missing.
pub struct StripeDecoder {
    layout: Layout,
    present: Vec<bool>,
    missing: Vec<usize>,
    recovery: Vec<usize>,
    decoder: ReedSolomonDecoder,
    buf: Vec<u8>,
}

impl StripeDecoder {
    /// `present[p]` says whether part `p` (0-based over data and parity) can be read; at least
    /// `data_parts` must be.
    pub fn new(layout: &Layout, present: &[bool]) -> io::Result<Self> {
        let (data, parity) = (layout.data_parts, layout.parity_parts);
        assert_eq!(present.len(), layout.total_parts(), "one flag per part");
        let missing: Vec<usize> = (0..data).filter(|&i| !present[i]).collect();
        let recovery: Vec<usize> =
            (0..parity).filter(|&j| present[data + j]).take(missing.len()).collect();
        if recovery.len() < missing.len() {
            return Err(io::Error::other(format!(
                "{} data parts are missing and only {} parity parts are at hand",
                missing.len(),
                recovery.len()
            )));
        }
        // The codec refuses zero parity shards; with nothing missing it is never asked anyway.
        let decoder = ReedSolomonDecoder::new(data, parity.max(1), layout.shard_len(0) as usize)
            .map_err(codec)?;
        Ok(Self {
            layout: *layout,
            present: present.to_vec(),
            missing,
            recovery,
            decoder,
            buf: vec![0u8; layout.stripe as usize],
        })
    }

    /// The data parts this decoder rebuilds (0-based), in order.
    pub fn missing(&self) -> &[usize] {
        &self.missing
    }

    /// Decodes stripe `k`: `read(p, offset, buf)` fills `buf` from part `p`; `restored(i,
    /// piece)` receives each missing data part's piece of the stripe (empty when the part ends
    /// before it).
    pub fn decode(
        &mut self,
        k: u64,
        read: &mut ReadAt<'_>,
        restored: &mut dyn FnMut(usize, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let layout = &self.layout;
        let (data, parity) = (layout.data_parts, layout.parity_parts);
        let shard = layout.shard_len(k) as usize;
        self.decoder.reset(data, parity, shard).map_err(codec)?;
        for i in (0..data).filter(|&i| self.present[i]) {
            read_piece(layout, i, k, &mut self.buf[..shard], read)?;
            self.decoder.add_original_shard(i, &self.buf[..shard]).map_err(codec)?;
        }
        for &j in &self.recovery {
            // Parity shards are whole: every stripe's shard is in the part, padded to 64.
            read(data + j, k * layout.stripe, &mut self.buf[..shard])?;
            self.decoder.add_recovery_shard(j, &self.buf[..shard]).map_err(codec)?;
        }
        let result = self.decoder.decode().map_err(codec)?;
        for &i in &self.missing {
            let piece = result
                .restored_original(i)
                .ok_or_else(|| io::Error::other(format!("data part {} was not restored", i + 1)))?;
            restored(i, &piece[..layout.piece_len(i, k) as usize])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    /// Cuts `bundle` as `layout` says, in memory: data parts then parity parts.
    fn cut(layout: &Layout, bundle: &[u8]) -> Vec<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = (0..layout.data_parts)
            .map(|i| {
                let start = layout.data_offset(i) as usize;
                bundle[start..start + layout.part_len(i) as usize].to_vec()
            })
            .collect();
        let data = parts.clone();
        let mut parity = vec![Vec::new(); layout.parity_parts];
        encode_parity(
            layout,
            &mut |i, offset, buf| {
                let o = offset as usize;
                buf.copy_from_slice(&data[i][o..o + buf.len()]);
                Ok(())
            },
            &mut |j, bytes| {
                parity[j].extend_from_slice(bytes);
                Ok(())
            },
            &NoProgress,
        )
        .unwrap();
        for (j, p) in parity.iter().enumerate() {
            assert_eq!(p.len() as u64, layout.part_len(layout.data_parts + j));
        }
        parts.extend(parity);
        parts
    }

    /// Loses every combination of up to `parity` parts and rebuilds the data from the rest.
    fn every_loss(bundle_size: usize, part_size: u64, parity: usize) {
        let bundle: Vec<u8> = (0..bundle_size).map(|i| (i * 31 % 251) as u8).collect();
        let layout = Layout::new(bundle_size as u64, part_size, parity).unwrap();
        let parts = cut(&layout, &bundle);
        let n = layout.total_parts();
        let mut checked = 0;
        for lost in 0u32..(1 << n) {
            if lost.count_ones() as usize > parity {
                continue;
            }
            let present: Vec<bool> = (0..n).map(|p| lost & (1 << p) == 0).collect();
            let mut rebuilt: Vec<Vec<u8>> = (0..layout.data_parts)
                .map(|i| {
                    if present[i] {
                        parts[i].clone()
                    } else {
                        vec![0xee; layout.part_len(i) as usize]
                    }
                })
                .collect();
            let mut decoder = StripeDecoder::new(&layout, &present).unwrap();
            let stripes = if decoder.missing().is_empty() { 0 } else { layout.stripes() };
            // Any order of stripes: the appliance shares them between threads.
            for k in (0..stripes).rev() {
                decoder
                    .decode(
                        k,
                        &mut |p, offset, buf| {
                            assert!(present[p], "read a lost part");
                            let o = offset as usize;
                            buf.copy_from_slice(&parts[p][o..o + buf.len()]);
                            Ok(())
                        },
                        &mut |i, piece| {
                            let o = (k * layout.stripe) as usize;
                            rebuilt[i][o..o + piece.len()].copy_from_slice(piece);
                            Ok(())
                        },
                    )
                    .unwrap();
            }
            assert_eq!(rebuilt.concat(), bundle, "lost {lost:b}");
            checked += 1;
        }
        assert!(checked > parity);
    }

    #[test]
    fn any_parity_parts_lost_are_rebuilt() {
        every_loss(20_000, 4096, 1);
        every_loss(20_000, 4096, 2);
        every_loss(4096 * 4, 4096, 3);
        // One data part, shorter than the part size, and several stripes.
        every_loss(3000, 1024, 2);
        // Odd sizes: the last stripe and the last part are short, shards padded to 64.
        every_loss(5 * 1500 + 7, 1500, 2);
    }

    #[test]
    fn stripes_are_used_when_parts_exceed_one() {
        // 40 parts of 1 MiB: the stripe budget gives 16 MiB / 42 rounded down to 64.
        let layout = Layout::new(40 << 20, 1 << 20, 2).unwrap();
        assert!(layout.stripes() > 1 && layout.stripe < 1 << 20);
    }

    #[test]
    fn too_few_parts_is_an_error_not_garbage() {
        let layout = Layout::new(10_000, 4096, 1).unwrap();
        let present = [false, false, true, true];
        let err = StripeDecoder::new(&layout, &present).err().unwrap();
        assert!(err.to_string().contains("2 data parts are missing"), "{err}");
    }
}
