//! `split_bundle`: cuts a signed bundle into parts, adds parity, writes the signed index and
//! the transfer note. The input is only ever read.
//!
//! Two passes. The first reads the bundle once, in order: the main thread writes and hashes
//! each part while a second thread hashes the whole bundle and checks its detached signature
//! on the same buffers, so the index never vouches for a bundle its signer did not sign. The
//! second computes parity stripe by stripe with positioned reads of the bundle (from the page
//! cache, right after the first pass), writing and hashing each parity part as it grows.

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use sha2::Digest as _;

use super::index::{Part, PartsIndex};
use super::{Layout, LayoutError, parts_signature_path};
use crate::manifest::Sha256Digest;
use crate::progress::Progress;
use crate::sign::{BundleComment, SignatureFile, SigningKey};

const CHUNK: usize = 1 << 20;
/// Buffers in flight between the reading and the hashing thread.
const BUFFERS: usize = 4;

/// How to cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitOptions {
    /// Bytes per data part (the last one is shorter).
    pub part_size: u64,
    /// Reed–Solomon parity parts to add: that many parts may then be lost.
    pub parity: usize,
}

/// What [`split_bundle`] wrote.
#[derive(Debug, Clone)]
pub struct SplitOutput {
    pub index: PartsIndex,
    pub index_path: PathBuf,
    pub signature_path: PathBuf,
    pub transfer_path: PathBuf,
    pub part_paths: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    #[error("cannot read {path}: {source}")]
    Input { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Output { path: PathBuf, source: io::Error },
    #[error("{path} is not a usable detached signature: {reason}")]
    Signature { path: PathBuf, reason: String },
    #[error(
        "the bundle is signed by key {bundle_key}, the index would be signed by key {signing_key}: \
         split with the key that signed the bundle"
    )]
    OtherKey { bundle_key: String, signing_key: String },
    #[error(
        "{path} does not verify with its detached signature and the signing key: {reason} (the \
         bundle was altered or truncated; rebuild it)"
    )]
    BadBundle { path: PathBuf, reason: String },
    #[error("{path} changed while it was being split")]
    Changed { path: PathBuf },
    #[error("cannot cut the bundle: {0}")]
    Layout(#[from] LayoutError),
}

impl SplitError {
    /// Whether the bundle or its signature was refused (exit 1) rather than the request being
    /// impossible or the disk failing (exit 2).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SplitError::Signature { .. }
                | SplitError::OtherKey { .. }
                | SplitError::BadBundle { .. }
        )
    }
}

/// Removes the files it holds unless disarmed: a failed split leaves no part behind.
struct Leftovers(Vec<PathBuf>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// A file being written under a temporary name, hashed as it grows.
struct Output {
    temp: PathBuf,
    file: io::BufWriter<File>,
    hasher: sha2::Sha256,
    len: u64,
}

impl Output {
    fn create(temp: PathBuf, leftovers: &mut Leftovers) -> Result<Self, SplitError> {
        let file = File::create(&temp)
            .map_err(|source| SplitError::Output { path: temp.clone(), source })?;
        leftovers.0.push(temp.clone());
        Ok(Self {
            temp,
            file: io::BufWriter::with_capacity(CHUNK, file),
            hasher: sha2::Sha256::new(),
            len: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SplitError> {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .map_err(|source| SplitError::Output { path: self.temp.clone(), source })
    }

    /// Flushes (the caller syncs later, so the kernel writes one part back while the next is
    /// produced); returns the file, its temporary path, the length and the digest.
    fn finish(self) -> Result<Finished, SplitError> {
        let output = |source| SplitError::Output { path: self.temp.clone(), source };
        let file = self.file.into_inner().map_err(|e| output(e.into_error()))?;
        Ok(Finished {
            file,
            temp: self.temp,
            len: self.len,
            sha256: Sha256Digest(self.hasher.finalize().into()),
        })
    }
}

/// A part written and hashed, not yet synced nor under its final name.
struct Finished {
    file: File,
    temp: PathBuf,
    len: u64,
    sha256: Sha256Digest,
}

/// Writes `contents` to `path` through a synced temporary file.
fn write_file(path: &Path, contents: &[u8]) -> Result<(), SplitError> {
    let output = |source| SplitError::Output { path: path.to_owned(), source };
    let temp = temp_path(path.parent().unwrap_or(Path::new(".")), &file_name(path));
    let mut file = File::create(&temp).map_err(output)?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(output)?;
    fs::rename(&temp, path).map_err(output)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.{}.partial", std::process::id()))
}

/// Cuts the bundle at `bundle` (with its detached signature `signature`, which must be by
/// `key`) into parts in `out_dir`, with `options.parity` parity parts, and writes
/// `NAME-SEQ.ferry.parts`, its `.minisig` (signed with `key`) and `NAME-SEQ.ferry.transfer.txt`.
/// The bundle is verified with `key`'s public half on the way; nothing appears under a final
/// name unless every part is complete and synced.
pub fn split_bundle(
    bundle: &Path,
    signature: &Path,
    key: &SigningKey,
    out_dir: &Path,
    options: SplitOptions,
    progress: &dyn Progress,
) -> Result<SplitOutput, SplitError> {
    let input = |source| SplitError::Input { path: bundle.to_owned(), source };
    let bad_signature =
        |reason: String| SplitError::Signature { path: signature.to_owned(), reason };
    let signature_text = {
        let file = File::open(signature)
            .map_err(|source| SplitError::Input { path: signature.to_owned(), source })?;
        let mut text = String::new();
        file.take(16 << 10)
            .read_to_string(&mut text)
            .map_err(|source| SplitError::Input { path: signature.to_owned(), source })?;
        text
    };
    // The index carries the signature line by line; only minisign's exact layout round-trips.
    if signature_text.lines().count() != 4
        || !signature_text.ends_with('\n')
        || signature_text.contains('\r')
    {
        return Err(bad_signature("not four lines, each ending in \\n".into()));
    }
    let parsed = SignatureFile::parse(&signature_text).map_err(bad_signature)?;
    if parsed.key_id() != key.key_id() {
        return Err(SplitError::OtherKey {
            bundle_key: parsed.key_id().to_string(),
            signing_key: key.key_id().to_string(),
        });
    }
    let public = key.public_key();
    let mut verifier = parsed.verifier(&public).map_err(bad_signature)?;

    let mut file = File::open(bundle).map_err(input)?;
    let before = file.metadata().map_err(input)?;
    let layout = Layout::new(before.len(), options.part_size, options.parity)?;
    let mut leftovers = Leftovers(Vec::new());
    let temp = |i: usize| temp_path(out_dir, &format!("part{}", i + 1));

    // Pass 1: the data parts, and the whole bundle's digest and signature check beside them.
    progress.start("splitting", layout.bundle_size);
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        empty_tx.send(vec![0u8; CHUNK]).expect("the receiver is here");
    }
    let (data_parts, bundle_sha256, verified) = std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut sha = sha2::Sha256::new();
            for (buf, n) in full_rx {
                sha.update(&buf[..n]);
                verifier.update(&buf[..n]);
                // The reader may have stopped on an error; then nobody needs the buffer back.
                let _ = empty_tx.send(buf);
            }
            (Sha256Digest(sha.finalize().into()), verifier.finalize())
        });
        let written = (|| {
            let mut parts = Vec::with_capacity(layout.data_parts);
            for i in 0..layout.data_parts {
                let mut out = Output::create(temp(i), &mut leftovers)?;
                let mut left = layout.part_len(i);
                while left > 0 {
                    let mut buf = empty_rx.recv().expect("the hashing thread returns buffers");
                    let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
                    let n = file.read(&mut buf[..want]).map_err(input)?;
                    if n == 0 {
                        return Err(SplitError::Changed { path: bundle.to_owned() });
                    }
                    out.write(&buf[..n])?;
                    left -= n as u64;
                    progress.advance(n as u64);
                    full_tx.send((buf, n)).expect("the hashing thread runs until the end");
                }
                parts.push(out.finish()?);
            }
            if file.read(&mut [0u8; 1]).map_err(input)? != 0 {
                return Err(SplitError::Changed { path: bundle.to_owned() });
            }
            Ok(parts)
        })();
        drop(full_tx);
        let (digest, verified) = hasher.join().expect("the hashing thread does not panic");
        written.map(|parts| (parts, digest, verified))
    })?;
    progress.finish();
    verified.map_err(|reason| SplitError::BadBundle { path: bundle.to_owned(), reason })?;
    let comment: BundleComment = parsed
        .trusted_comment()
        .parse()
        .map_err(|reason| bad_signature(format!("trusted comment: {reason}")))?;

    // Pass 2: parity, from the bundle by positioned reads.
    let mut parity_outputs = (0..layout.parity_parts)
        .map(|j| Output::create(temp(layout.data_parts + j), &mut leftovers))
        .collect::<Result<Vec<_>, _>>()?;
    progress.start("computing parity", layout.bundle_size);
    let mut failed: Option<SplitError> = None;
    let encoded = super::encode_parity(
        &layout,
        &mut |i, offset, buf| file.read_exact_at(buf, layout.data_offset(i) + offset),
        &mut |j, bytes| {
            parity_outputs[j].write(bytes).map_err(|e| {
                let message = e.to_string();
                failed = Some(e);
                io::Error::other(message)
            })
        },
        progress,
    );
    progress.finish();
    if let Err(e) = encoded {
        return Err(failed.unwrap_or(SplitError::Input { path: bundle.to_owned(), source: e }));
    }
    let parity_parts =
        parity_outputs.into_iter().map(Output::finish).collect::<Result<Vec<_>, _>>()?;
    let after = file.metadata().map_err(input)?;
    if after.len() != before.len() || after.modified().ok() != before.modified().ok() {
        return Err(SplitError::Changed { path: bundle.to_owned() });
    }

    let mut index = PartsIndex {
        name: comment.name.clone(),
        sequence: comment.sequence,
        bundle_sha256,
        bundle_signature: signature_text,
        layout,
        parts: Vec::with_capacity(layout.total_parts()),
    };
    let bundle_file = index.bundle_file();
    let mut part_paths = Vec::with_capacity(layout.total_parts());
    let finished: Vec<Finished> = data_parts.into_iter().chain(parity_parts).collect();
    for part in &finished {
        part.file
            .sync_all()
            .map_err(|source| SplitError::Output { path: part.temp.clone(), source })?;
    }
    for (i, Finished { temp, len: size, sha256, .. }) in finished.into_iter().enumerate() {
        debug_assert_eq!(size, layout.part_len(i));
        let file_name = layout.part_name(&bundle_file, i);
        let path = out_dir.join(&file_name);
        fs::rename(&temp, &path)
            .map_err(|source| SplitError::Output { path: path.clone(), source })?;
        part_paths.push(path);
        index.parts.push(Part {
            index: i,
            file_name,
            size,
            sha256,
            parity: i >= layout.data_parts,
        });
    }
    leftovers.0.clear();
    let text = index.to_text();
    let index_path = out_dir.join(index.file_name());
    let signature_path = parts_signature_path(&index_path);
    let transfer_path = out_dir.join(format!("{bundle_file}.transfer.txt"));
    write_file(&index_path, text.as_bytes())?;
    write_file(
        &signature_path,
        key.sign(text.as_bytes(), &index.comment().to_string()).as_bytes(),
    )?;
    write_file(&transfer_path, index.transfer_text().as_bytes())?;
    if let Ok(dir) = File::open(out_dir) {
        let _ = dir.sync_all();
    }
    Ok(SplitOutput { index, index_path, signature_path, transfer_path, part_paths })
}
