//! The tail that `split_bundle` and the builder's parts writer share, once the data parts are
//! written (and hashed) under temporary names: parity, the index, its signature, the transfer
//! note, syncs, renames. Nothing appears under a final name unless every file is complete and synced; a
//! failure removes every file of the set, renamed or not.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use super::SplitOptions;
use super::cut::CutParts;
use super::files::{Finished, PartFile, file_name, temp_path};
use super::index::{Part, PartsIndex};
use super::split::{SplitError, SplitOutput};
use super::{Layout, parts_signature_path};
use crate::manifest::Sha256Digest;
use crate::name::BundleName;
use crate::progress::Progress;
use crate::sign::SigningKey;
use crate::write::write_synced;

/// What the index says of the bundle beside its parts.
pub(crate) struct BundleFacts {
    pub(crate) name: BundleName,
    pub(crate) sequence: u64,
    /// The bundle's detached signature text (`.ferry.minisig`), which the index carries.
    pub(crate) signature: String,
}

/// Adds parity to the data parts `cut` (computed stripe by stripe from positioned reads of the
/// part files, which were just written and are in the page cache), then writes the signed index
/// and the transfer note, syncs everything and renames it into place in `out_dir`.
pub(crate) fn finish_parts(
    cut: CutParts,
    bundle: BundleFacts,
    options: SplitOptions,
    key: &SigningKey,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<SplitOutput, SplitError> {
    let CutParts { parts: mut data_parts, bundle_size, digests, mut leftovers } = cut;
    let layout = Layout::new(bundle_size, options.part_size, options.parity)?;
    assert_eq!(data_parts.len(), layout.data_parts, "the cutter cuts as the layout does");
    let mut index = PartsIndex {
        name: bundle.name,
        sequence: bundle.sequence,
        // Known once the data parts' digests are: filled in below.
        bundle_sha256: Sha256Digest([0; 32]),
        bundle_signature: bundle.signature,
        layout,
        parts: Vec::with_capacity(layout.total_parts()),
    };
    let bundle_file = index.bundle_file();
    let output = |path: &Path| {
        let path = path.to_owned();
        move |source| SplitError::Output { path, source }
    };

    let parity_outputs = (0..layout.parity_parts)
        .map(|j| {
            let temp = temp_path(out_dir, &layout.part_name(&bundle_file, layout.data_parts + j));
            PartFile::create(temp.clone(), &mut leftovers, true).map_err(output(&temp))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let started = std::time::Instant::now();
    progress.start("computing parity", layout.bundle_size);
    let parity_parts = write_parity(&layout, &data_parts, parity_outputs, out_dir, progress)?;
    progress.finish();
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "parity computed");
    let started = std::time::Instant::now();
    let digests = digests.wait().map_err(output(out_dir))?;
    assert_eq!(digests.parts.len(), data_parts.len(), "every part closed is hashed once");
    for (part, digest) in data_parts.iter_mut().zip(digests.parts) {
        part.sha256 = Some(digest);
    }
    index.bundle_sha256 = digests.whole;
    let finished: Vec<Finished> = data_parts.into_iter().chain(parity_parts).collect();
    for (i, part) in finished.iter().enumerate() {
        debug_assert_eq!(part.len, layout.part_len(i));
        index.parts.push(Part {
            index: i,
            file_name: layout.part_name(&bundle_file, i),
            size: part.len,
            sha256: part.sha256.expect("the cutter hashes data parts, the parity writer its own"),
            parity: i >= layout.data_parts,
        });
        part.file.sync_all().map_err(output(&part.temp))?;
    }
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "parts synced");
    let text = index.to_text();
    let index_path = out_dir.join(index.file_name());
    let signature_path = parts_signature_path(&index_path);
    let transfer_path = out_dir.join(format!("{bundle_file}.transfer.txt"));
    let signature = key.sign(text.as_bytes(), &index.comment().to_string());
    // The small files are written synced under temporary names too, then everything is renamed:
    // the parts first, the index last, so a folder with an index holds the whole set.
    let mut renames: Vec<(std::path::PathBuf, std::path::PathBuf)> = finished
        .iter()
        .zip(&index.parts)
        .map(|(part, p)| (part.temp.clone(), out_dir.join(&p.file_name)))
        .collect();
    for (path, contents) in
        [(&transfer_path, index.transfer_text()), (&signature_path, signature), (&index_path, text)]
    {
        let temp = temp_path(out_dir, &file_name(path));
        leftovers.push(temp.clone());
        write_synced(&temp, contents.as_bytes()).map_err(output(&temp))?;
        renames.push((temp, path.clone()));
    }
    drop(finished);
    for (temp, path) in renames {
        fs::rename(&temp, &path).map_err(output(&path))?;
        leftovers.renamed(&temp, path);
    }
    if let Ok(dir) = File::open(out_dir) {
        // Makes the renames durable; not every filesystem supports syncing a directory.
        let _ = dir.sync_all();
    }
    leftovers.disarm();
    let part_paths = index.parts.iter().map(|p| out_dir.join(&p.file_name)).collect();
    Ok(SplitOutput { index, index_path, signature_path, transfer_path, part_paths })
}

/// Stripes of parity on their way from the encoder to the writer; buffers come back for reuse,
/// so the pass touches a few stripes' worth of fresh memory, not 512 MiB of it.
type Stripe = Vec<Vec<u8>>;

/// Computes the parity parts from the data parts (read back by position from the page cache)
/// and writes them: the encoder on this thread, the writing and hashing of the parity parts on
/// a second, so the pass uses both cores (the data parts were hashed while they were written).
fn write_parity(
    layout: &Layout,
    data_parts: &[Finished],
    outputs: Vec<PartFile>,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<Vec<Finished>, SplitError> {
    // The codec sees only io::Error; this keeps which file failed, and how.
    let mut read_failed = None;
    let (encoded, written) = std::thread::scope(|scope| {
        // Two stripes queued at most: the encoder runs at most one stripe ahead of the writes.
        let (to_writer, stripes) = std::sync::mpsc::sync_channel::<Stripe>(2);
        let (to_encoder, spare) = std::sync::mpsc::channel::<Stripe>();
        let writer = scope.spawn(move || {
            let mut outputs = outputs;
            for stripe in stripes {
                for (part, bytes) in outputs.iter_mut().zip(&stripe) {
                    part.write(bytes).map_err(|source| SplitError::Output {
                        path: part.path().to_owned(),
                        source,
                    })?;
                }
                let _ = to_encoder.send(stripe);
            }
            outputs
                .into_iter()
                .map(|p| {
                    let path = p.path().to_owned();
                    p.finish().map_err(|source| SplitError::Output { path, source })
                })
                .collect::<Result<Vec<_>, _>>()
        });
        let mut filling: Stripe = Vec::new();
        let encoded = super::encode_parity(
            layout,
            &mut |i, offset, buf| {
                let part = &data_parts[i];
                part.file.read_exact_at(buf, offset).map_err(|source| {
                    let message = source.to_string();
                    read_failed = Some(SplitError::Input { path: part.temp.clone(), source });
                    io::Error::other(message)
                })
            },
            &mut |j, bytes| {
                if j == 0 {
                    filling = spare.try_recv().unwrap_or_default();
                    filling.resize_with(layout.parity_parts, Vec::new);
                }
                filling[j].clear();
                filling[j].extend_from_slice(bytes);
                if j + 1 == layout.parity_parts {
                    // Fails only once the writer has stopped on an error, which it returns.
                    to_writer
                        .send(std::mem::take(&mut filling))
                        .map_err(|_| io::Error::other("the parity writer stopped"))?;
                }
                Ok(())
            },
            progress,
        );
        drop(to_writer);
        (encoded, writer.join().expect("the parity writer does not panic"))
    });
    match (encoded, written) {
        (Ok(()), written) => written,
        (Err(_), Err(write_failed)) => Err(write_failed),
        (Err(e), Ok(_)) => {
            Err(read_failed.unwrap_or(SplitError::Output { path: out_dir.to_owned(), source: e }))
        }
    }
}
