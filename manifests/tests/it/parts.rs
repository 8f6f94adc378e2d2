//! `write_parts` against `write_bundle` then `split_bundle`: the same parts, index, signature and
//! transfer note, byte for byte, for either compression, and no whole bundle written.

use std::path::Path;

use ferry_manifests::parts::{SplitOptions, split_bundle};
use ferry_manifests::{Compression, NoProgress};

use crate::support::{key, sample_inputs, spec};

/// Every file in `dir` and its bytes, sorted by name.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn parts_written_straight_equal_a_split_bundle() {
    let key = key();
    for compression in [Compression::Zstd { level: 3, workers: 2 }, Compression::Gzip { level: 6 }]
    {
        let dir = tempfile::tempdir().unwrap();
        let (straight, whole, split) =
            (dir.path().join("straight"), dir.path().join("whole"), dir.path().join("split"));
        for d in [&straight, &whole, &split] {
            std::fs::create_dir(d).unwrap();
        }
        let spec = spec(1, compression);
        // Parts of 64 KiB: several of them, the last one short.
        let options = SplitOptions { part_size: 64 << 10, parity: 2 };
        let written = ferry_manifests::write_parts(
            &spec,
            sample_inputs(dir.path()),
            &key,
            &straight,
            options,
            &NoProgress,
        )
        .unwrap();
        let bundle = ferry_manifests::write_bundle(
            &spec,
            sample_inputs(dir.path()),
            &key,
            &whole,
            &NoProgress,
        )
        .unwrap();
        let cut = split_bundle(
            &bundle.bundle_path,
            &bundle.signature_path,
            &key,
            &split,
            options,
            &NoProgress,
        )
        .unwrap();
        assert_eq!(written.bundle_size, bundle.bundle_size);
        assert_eq!(written.manifest_sha256, bundle.manifest_sha256);
        assert_eq!(written.parts.index, cut.index);
        assert!(written.parts.index.layout.data_parts > 2, "{:?}", written.parts.index.layout);
        assert_eq!(contents(&straight), contents(&split), "{compression:?}");
        assert!(!straight.join(bundle.bundle_path.file_name().unwrap()).exists());
    }
}
