//! Replays every committed fuzz input (the seeds in `corpus/<target>/` and the inputs that once
//! found a bug in `regressions/<target>/`) through the same harness the fuzzer runs, so
//! `cargo test` keeps them as regression tests.

use std::path::{Path, PathBuf};

type Harness = fn(&[u8]);

const TARGETS: [(&str, Harness); 7] = [
    ("manifest", ferry_fuzz::manifest),
    ("bundle", ferry_fuzz::bundle),
    ("entry_name", ferry_fuzz::entry_name),
    ("sha512", ferry_fuzz::sha512),
    ("artifact_id", ferry_fuzz::artifact_id),
    ("checkin", ferry_fuzz::checkin),
    ("ack", ferry_fuzz::ack),
];

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn replay(target: &str, harness: Harness) {
    let corpus = inputs(&fuzz_dir().join("corpus").join(target));
    // A target without seeds would start from nothing; that is a packaging mistake.
    assert!(!corpus.is_empty(), "corpus/{target} is empty");
    let regressions = inputs(&fuzz_dir().join("regressions").join(target));
    for input in corpus.iter().chain(&regressions) {
        let data = std::fs::read(input).unwrap();
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", input.display());
    }
}

#[test]
fn manifest() {
    replay("manifest", ferry_fuzz::manifest);
}

#[test]
fn bundle() {
    replay("bundle", ferry_fuzz::bundle);
}

#[test]
fn entry_name() {
    replay("entry_name", ferry_fuzz::entry_name);
}

#[test]
fn sha512() {
    replay("sha512", ferry_fuzz::sha512);
}

#[test]
fn artifact_id() {
    replay("artifact_id", ferry_fuzz::artifact_id);
}

#[test]
fn checkin() {
    replay("checkin", ferry_fuzz::checkin);
}

#[test]
fn ack() {
    replay("ack", ferry_fuzz::ack);
}

/// The hand-made seeds are in the corpus byte for byte (they change when the format or the test
/// key does). `FERRY_FUZZ_WRITE_SEEDS=1 cargo test -p ferry-fuzz` rewrites them.
#[test]
fn seeds_are_in_the_corpus() {
    let write = std::env::var_os("FERRY_FUZZ_WRITE_SEEDS").is_some();
    for (target, name, bytes) in ferry_fuzz::seeds() {
        assert!(TARGETS.iter().any(|(t, _)| *t == target), "seed for unknown target {target}");
        let path = fuzz_dir().join("corpus").join(target).join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (FERRY_FUZZ_WRITE_SEEDS=1 writes it)", path.display())
        });
        assert!(committed == bytes, "{} differs from ferry_fuzz::seeds()", path.display());
    }
}
