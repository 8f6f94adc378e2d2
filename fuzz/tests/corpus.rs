//! Replays every committed fuzz input (the seeds in `corpus/<target>/` and the inputs that once
//! found a bug in `regressions/<target>/`) through the same harness the fuzzer runs, so
//! `cargo test` keeps them as regression tests.

use std::path::{Path, PathBuf};

type Harness = fn(&[u8]);

const TARGETS: [(&str, Harness); 8] = [
    ("manifest", ferry_fuzz::manifest),
    ("bundle", ferry_fuzz::bundle),
    ("entry_name", ferry_fuzz::entry_name),
    ("sha512", ferry_fuzz::sha512),
    ("artifact_id", ferry_fuzz::artifact_id),
    ("checkin", ferry_fuzz::checkin),
    ("ack", ferry_fuzz::ack),
    ("parts_index", ferry_fuzz::parts_index),
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

#[test]
fn parts_index() {
    replay("parts_index", ferry_fuzz::parts_index);
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

/// Every check-in and acks body of the `ferry-wire` corpus (what stock agents of each era
/// send, uncompressed) through the harnesses: each must be accepted, not just survive.
#[test]
fn stock_agent_bodies() {
    use ferry_wire::{Kind, Vars};
    let vars = Vars::new()
        .set("version", "9.2.0")
        .set("hostname", "Web-01")
        .set("agent_id", "0b7a4e0c-1f5d-4c3b-9e0a-2b1f0c9d8e7f")
        .set("access_key", "a2V5OnNlY3JldA==")
        .set("ack_token", "5a0e8d3c-1111-4222-8333-444455556666")
        .set("action_id", "policy:p:3")
        .set("action_type", "POLICY_CHANGE");
    let mut replayed = 0;
    for sample in ferry_wire::corpus() {
        if ![Kind::Checkin, Kind::Ack].contains(&sample.kind) {
            continue;
        }
        let json = sample.render(&vars).json;
        match sample.kind {
            Kind::Checkin => {
                ferry_fuzz::checkin(json.as_bytes());
                let headers = axum::http::HeaderMap::new();
                let parsed = ferry_appliance::fuzzing::checkin(&headers, json.into());
                assert!(parsed.is_ok(), "{}: {parsed:?}", sample.name);
            }
            Kind::Ack => {
                ferry_fuzz::ack(json.as_bytes());
                let events = ferry_appliance::fuzzing::acks(json.as_bytes());
                let events = events.unwrap_or_else(|e| panic!("{}: {e:?}", sample.name));
                assert_eq!(events[0].1, Some(("p".to_owned(), 3)), "{}", sample.name);
            }
            _ => unreachable!("filtered above"),
        }
        replayed += 1;
    }
    assert!(replayed >= 10, "only {replayed} bodies");
}
