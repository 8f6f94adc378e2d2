//! The tail that `split_bundle` and the builder's parts writer share, once the data parts are
//! written under temporary names: parity, each data part's digest (on a second thread beside
//! it), the index, its signature, the transfer note, syncs,
//! renames. Nothing appears under a final name unless every file is complete and synced; a
//! failure removes every file of the set, renamed or not.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use sha2::Digest as _;

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

/// How much of a part the hashing thread reads at a time.
const HASH_CHUNK: usize = 1 << 20;

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
    let CutParts { parts: data_parts, bundle_size, bundle_sha256, mut leftovers } = cut;
    let layout = Layout::new(bundle_size, options.part_size, options.parity)?;
    assert_eq!(data_parts.len(), layout.data_parts, "the cutter cuts as the layout does");
    let mut index = PartsIndex {
        name: bundle.name,
        sequence: bundle.sequence,
        bundle_sha256,
        bundle_signature: bundle.signature,
        layout,
        parts: Vec::with_capacity(layout.total_parts()),
    };
    let bundle_file = index.bundle_file();
    let output = |path: &Path| {
        let path = path.to_owned();
        move |source| SplitError::Output { path, source }
    };

    let mut parity_outputs = (0..layout.parity_parts)
        .map(|j| {
            let temp = temp_path(out_dir, &layout.part_name(&bundle_file, layout.data_parts + j));
            PartFile::create(temp.clone(), &mut leftovers, true).map_err(output(&temp))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let started = std::time::Instant::now();
    progress.start("computing parity", layout.bundle_size);
    // The codec sees only io::Error; these keep which file failed, and how.
    let (mut read_failed, mut write_failed) = (None, None);
    // The data parts are hashed on a thread of their own beside the parity, both reading the
    // just-written parts from the page cache: the encoder keeps one core busy, the hashing the
    // other (on the writer thread, it competed with the compressor).
    let (encoded, digests) = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| hash_parts(&data_parts));
        let encoded = super::encode_parity(
            &layout,
            &mut |i, offset, buf| {
                let part = &data_parts[i];
                part.file.read_exact_at(buf, offset).map_err(|source| {
                    let message = source.to_string();
                    read_failed = Some(SplitError::Input { path: part.temp.clone(), source });
                    io::Error::other(message)
                })
            },
            &mut |j, bytes| {
                let part = &mut parity_outputs[j];
                part.write(bytes).map_err(|source| {
                    let message = source.to_string();
                    write_failed =
                        Some(SplitError::Output { path: part.path().to_owned(), source });
                    io::Error::other(message)
                })
            },
            progress,
        );
        (encoded, hashing.join().expect("the hashing thread does not panic"))
    });
    progress.finish();
    if let Err(e) = encoded {
        let codec = SplitError::Output { path: out_dir.to_owned(), source: e };
        return Err(read_failed.or(write_failed).unwrap_or(codec));
    }
    let parity_parts = parity_outputs
        .into_iter()
        .map(|p| {
            let path = p.path().to_owned();
            p.finish().map_err(output(&path))
        })
        .collect::<Result<Vec<_>, _>>()?;

    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "parity computed and data parts hashed"
    );
    let started = std::time::Instant::now();
    let digests = digests?;
    let finished: Vec<Finished> = data_parts.into_iter().chain(parity_parts).collect();
    for (i, part) in finished.iter().enumerate() {
        debug_assert_eq!(part.len, layout.part_len(i));
        index.parts.push(Part {
            index: i,
            file_name: layout.part_name(&bundle_file, i),
            size: part.len,
            sha256: part.sha256.or(digests.get(i).copied()).expect("every part hashed"),
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

/// The SHA-256 of each part, read back by position (the cutter leaves data parts unhashed).
fn hash_parts(parts: &[Finished]) -> Result<Vec<Sha256Digest>, SplitError> {
    let mut buf = vec![0u8; HASH_CHUNK];
    parts
        .iter()
        .map(|part| {
            let mut hasher = sha2::Sha256::new();
            let mut offset = 0;
            while offset < part.len {
                let n = HASH_CHUNK.min(usize::try_from(part.len - offset).unwrap_or(HASH_CHUNK));
                part.file
                    .read_exact_at(&mut buf[..n], offset)
                    .map_err(|source| SplitError::Input { path: part.temp.clone(), source })?;
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Ok(Sha256Digest(hasher.finalize().into()))
        })
        .collect()
}
