//! `split_bundle`: cuts a signed bundle into parts, adds parity, writes the signed index and
//! the transfer note. The input is only ever read.
//!
//! Two passes. The first reads the bundle once, in order, into a `PartCutter` (which writes
//! the parts and hashes the whole bundle) while a second thread checks the detached
//! signature on the same buffers, so the index never vouches for a bundle its signer did not
//! sign. The second is the tail the builder shares (`finish.rs`): parity stripe by stripe from
//! the part files just written, with each data part hashed beside it, the index, renames.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use super::cut::PartCutter;
use super::files::file_name;
use super::finish::{BundleFacts, finish_parts};
use super::index::PartsIndex;
use super::{Layout, LayoutError};
use crate::progress::Progress;
use crate::sign::{BundleComment, SignatureFile, SigningKey};

const CHUNK: usize = 1 << 20;
/// Buffers in flight between the reading and the checking thread.
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
    let mut cutter =
        PartCutter::new(out_dir, &file_name(bundle), options.part_size, options.parity);

    // The data parts and their digests, with the signature check beside them on the same buffers.
    progress.start("splitting", layout.bundle_size);
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        empty_tx.send(vec![0u8; CHUNK]).expect("the receiver is here");
    }
    let output = |source| SplitError::Output { path: out_dir.to_owned(), source };
    let (cut, verified) = std::thread::scope(|scope| {
        let checker = scope.spawn(move || {
            for (buf, n) in full_rx {
                verifier.update(&buf[..n]);
                // The reader may have stopped on an error; then nobody needs the buffer back.
                let _ = empty_tx.send(buf);
            }
            verifier.finalize()
        });
        let written = (|| {
            let mut left = layout.bundle_size;
            while left > 0 {
                let mut buf = empty_rx.recv().expect("the checking thread returns buffers");
                let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
                let n = file.read(&mut buf[..want]).map_err(input)?;
                if n == 0 {
                    return Err(SplitError::Changed { path: bundle.to_owned() });
                }
                cutter.write_all(&buf[..n]).map_err(output)?;
                left -= n as u64;
                progress.advance(n as u64);
                full_tx.send((buf, n)).expect("the checking thread runs until the end");
            }
            if file.read(&mut [0u8; 1]).map_err(input)? != 0 {
                return Err(SplitError::Changed { path: bundle.to_owned() });
            }
            cutter.finish().map_err(output)
        })();
        drop(full_tx);
        let verified = checker.join().expect("the checking thread does not panic");
        written.map(|cut| (cut, verified))
    })?;
    progress.finish();
    verified.map_err(|reason| SplitError::BadBundle { path: bundle.to_owned(), reason })?;
    let after = file.metadata().map_err(input)?;
    if after.len() != before.len() || after.modified().ok() != before.modified().ok() {
        return Err(SplitError::Changed { path: bundle.to_owned() });
    }
    let comment: BundleComment = parsed
        .trusted_comment()
        .parse()
        .map_err(|reason| bad_signature(format!("trusted comment: {reason}")))?;
    let facts =
        BundleFacts { name: comment.name, sequence: comment.sequence, signature: signature_text };
    finish_parts(cut, facts, options, key, out_dir, progress)
}
