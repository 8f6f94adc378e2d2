//! `ferry build --part-size` and `ferry split`: parts that put back together give the bundle,
//! an index the stock `sha256sum -c` and `minisign -V` accept, parity parts, the transfer note,
//! the same set with and without `--keep-bundle`, and the refusals (a bundle that does not
//! verify, another key, impossible sizes), after which no part is left behind.

use std::path::{Path, PathBuf};

use ferry_manifests::Sha256Digest;
use ferry_manifests::parts::PartsIndex;
use ferry_manifests::test_tools::tool;

use crate::support::{assert_ok, ferry, fixture, stderr, stdout};

fn demo_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/bundle.toml")
}

fn build(out: &Path, extra: &[&str]) -> std::process::Output {
    let key = fixture("test.key");
    let spec = demo_spec();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"build", &spec, &"--secret-key", &key];
    args.push(&"--out");
    args.push(&out);
    args.push(&"--created");
    args.push(&"2026-11-01T00:00:00Z");
    for e in extra {
        args.push(e);
    }
    ferry(&args)
}

fn digest(path: &Path) -> Sha256Digest {
    Sha256Digest::of(&std::fs::read(path).unwrap())
}

fn index(dir: &Path) -> PartsIndex {
    PartsIndex::parse(&std::fs::read(dir.join("demo-1.ferry.parts")).unwrap()).unwrap()
}

/// Files in `dir` whose name starts with `prefix`, sorted.
fn names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[test]
fn build_with_part_size_writes_parts_an_index_and_a_transfer_note() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path(), &["--part-size", "1KiB", "--parity", "2"]);
    assert_ok(&built);
    let index = index(dir.path());
    let layout = index.layout;
    assert_eq!(layout.part_size, 1024);
    assert_eq!(layout.parity_parts, 2);
    // Parts only: the whole bundle is not written.
    assert_eq!(names(dir.path(), "demo-1.ferry"), {
        let mut expected: Vec<String> = index.parts.iter().map(|p| p.file_name.clone()).collect();
        expected.extend(
            ["parts", "parts.minisig", "transfer.txt"].map(|s| format!("demo-1.ferry.{s}")),
        );
        expected.sort();
        expected
    });
    // The data parts, put back together in order, are the bundle: its size, digest and
    // detached signature are the index's, which stock minisign accepts.
    let data: Vec<u8> = index
        .data_parts()
        .iter()
        .flat_map(|p| std::fs::read(dir.path().join(&p.file_name)).unwrap())
        .collect();
    assert_eq!(layout.bundle_size, data.len() as u64);
    assert_eq!(index.bundle_sha256, Sha256Digest::of(&data));
    let joined = dir.path().join("joined");
    std::fs::create_dir(&joined).unwrap();
    std::fs::write(joined.join("demo-1.ferry"), &data).unwrap();
    std::fs::write(joined.join("demo-1.ferry.minisig"), &index.bundle_signature).unwrap();
    let o = tool("minisign")
        .args(["-V", "-m", "demo-1.ferry", "-p"])
        .arg(fixture("test.pub"))
        .current_dir(&joined)
        .output()
        .unwrap();
    assert_ok(&o);
    std::fs::remove_dir_all(&joined).unwrap();
    // What the operator reads: what to carry and how to check it.
    let note = std::fs::read_to_string(dir.path().join("demo-1.ferry.transfer.txt")).unwrap();
    for needed in [
        "demo-1.ferry.part001",
        "demo-1.ferry.parts.minisig",
        "sha256sum -c --ignore-missing demo-1.ferry.parts",
        "minisign -Vm demo-1.ferry.parts -p ferry.pub",
        "any 2 of the",
    ] {
        assert!(note.contains(needed), "{needed:?} missing from\n{note}");
    }
    assert!(stdout(&built).contains(&note), "build prints the note: {}", stdout(&built));
    assert!(stdout(&built).contains("as parts only"), "{}", stdout(&built));
    // No temporary file is left.
    assert!(names(dir.path(), ".").is_empty(), "{:?}", names(dir.path(), "."));
}

#[test]
fn keep_bundle_gives_the_same_parts_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (parts_only, kept) = (dir.path().join("parts-only"), dir.path().join("kept"));
    let args = ["--part-size", "1KiB", "--parity", "2", "--json"];
    let o = build(&parts_only, &args);
    assert_ok(&o);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(json["bundle"].is_null() && json["signature"].is_null(), "{json}");
    assert_eq!(json["parts"]["parity_parts"], 2);
    let o = build(&kept, &[&args[..], &["--keep-bundle"]].concat());
    assert_ok(&o);
    let json_kept: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bundle = kept.join("demo-1.ferry");
    assert_eq!(json_kept["bundle"], bundle.to_str().unwrap());
    assert_eq!(json_kept["bundle_bytes"], json["bundle_bytes"]);
    assert_eq!(json_kept["parts"]["bundle_sha256"], json["parts"]["bundle_sha256"]);
    // The kept bundle is the one the parts make up, and the index carries its signature.
    let index = index(&parts_only);
    assert_eq!(index.bundle_sha256, digest(&bundle));
    assert_eq!(
        index.bundle_signature,
        std::fs::read_to_string(kept.join("demo-1.ferry.minisig")).unwrap()
    );
    // Every file of the set, byte for byte: parts, index, its signature, transfer note.
    let set = names(&parts_only, "demo-1.ferry.");
    assert_eq!(set.len(), index.parts.len() + 3);
    assert_eq!(
        names(&kept, "demo-1.ferry"),
        [&["demo-1.ferry".to_owned(), "demo-1.ferry.minisig".to_owned()][..], &set[..]].concat()
    );
    for name in &set {
        assert_eq!(
            std::fs::read(parts_only.join(name)).unwrap(),
            std::fs::read(kept.join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn a_failed_build_leaves_no_part_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Room for one data part beside 4095 parity parts: the bundle needs more, which is known
    // only once its second part is being written.
    let o = build(&out, &["--part-size", "1KiB", "--parity", "4095"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("choose a larger part size"), "{}", stderr(&o));
    assert_eq!(names(&out, ""), Vec::<String>::new());
    // Refused before anything is written: a part size below the minimum.
    let o = build(&out, &["--part-size", "10"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("below the minimum"), "{}", stderr(&o));
    assert_eq!(names(&out, ""), Vec::<String>::new());
}

#[test]
fn stock_sha256sum_and_minisign_check_the_parts() {
    let dir = tempfile::tempdir().unwrap();
    assert_ok(&build(dir.path(), &["--part-size", "1024", "--parity", "1"]));
    let sha256sum = |dir: &Path| {
        tool("sha256sum")
            .args(["-c", "--strict", "--ignore-missing", "demo-1.ferry.parts"])
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let o = sha256sum(dir.path());
    assert_ok(&o);
    assert!(stdout(&o).contains("demo-1.ferry.part001: OK"), "{}", stdout(&o));
    let o = tool("minisign")
        .args(["-V", "-m", "demo-1.ferry.parts", "-p"])
        .arg(fixture("test.pub"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_ok(&o);
    let sha = index(dir.path()).bundle_sha256;
    assert!(
        stdout(&o)
            .contains(&format!("ferry-parts format=1 name=demo sequence=1 bundle-sha256={sha}")),
        "{}",
        stdout(&o)
    );
    // One medium on its own: only the parts it holds are checked.
    let medium = dir.path().join("medium");
    std::fs::create_dir(&medium).unwrap();
    for name in ["demo-1.ferry.parts", "demo-1.ferry.part002"] {
        std::fs::copy(dir.path().join(name), medium.join(name)).unwrap();
    }
    assert_ok(&sha256sum(&medium));
    // A flipped bit is caught at the desk.
    let part = medium.join("demo-1.ferry.part002");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&part, bytes).unwrap();
    let o = sha256sum(&medium);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("demo-1.ferry.part002: FAILED"), "{}", stdout(&o));
}

#[test]
fn split_leaves_its_input_alone_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    assert_ok(&build(dir.path(), &[]));
    let bundle = dir.path().join("demo-1.ferry");
    let before = (digest(&bundle), digest(&dir.path().join("demo-1.ferry.minisig")));
    let out = dir.path().join("media");
    let o = ferry(&[
        &"split",
        &bundle,
        &"--part-size",
        &"1KiB",
        &"--parity",
        &"3",
        &"--out-dir",
        &out,
        &"--secret-key",
        &fixture("test.key"),
        &"--json",
    ]);
    assert_ok(&o);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["parity_parts"], 3);
    assert_eq!(json["part_size"], 1024);
    assert_eq!(json["parts"].as_array().unwrap().len(), index(&out).parts.len());
    assert_eq!(json["parts"][0]["parity"], false);
    assert_eq!(before, (digest(&bundle), digest(&dir.path().join("demo-1.ferry.minisig"))));
    assert_eq!(names(dir.path(), "demo-1.ferry.part"), Vec::<String>::new());
    // Splitting the same bundle the same way gives the same parts and index.
    let again = dir.path().join("again");
    assert_ok(&ferry(&[
        &"split",
        &bundle,
        &"--part-size",
        &"1024",
        &"--parity",
        &"3",
        &"--out-dir",
        &again,
        &"--secret-key",
        &fixture("test.key"),
    ]));
    for name in names(&out, "demo-1.ferry.part") {
        assert_eq!(digest(&out.join(&name)), digest(&again.join(&name)), "{name}");
    }
}

#[test]
fn split_refuses_what_it_cannot_vouch_for() {
    let dir = tempfile::tempdir().unwrap();
    assert_ok(&build(dir.path(), &[]));
    let bundle = dir.path().join("demo-1.ferry");
    let split = |extra: &[&str], key: &Path| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"split", &bundle, &"--secret-key", &key];
        for e in extra {
            args.push(e);
        }
        ferry(&args)
    };
    let key = fixture("test.key");
    // Usage: exit 2.
    for (extra, says) in [
        (&["--part-size", "1KiB", "--parity", "70000"][..], "parity"),
        (&["--part-size", "10"][..], "below the minimum"),
        (&["--part-size", "4 GiBs"][..], "unknown unit"),
        (&["--part-size", "1KiB", "--parity", "-1"][..], "-1"),
    ] {
        let o = split(extra, &key);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{extra:?}: {}", stderr(&o));
    }
    for extra in [&["--parity", "1"][..], &["--keep-bundle"][..]] {
        let o = build(&dir.path().join("p"), extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--part-size"), "{extra:?}: {}", stderr(&o));
    }

    // Another key than the bundle's: exit 1.
    assert_ok(&ferry(&[
        &"keygen",
        &"--without-password",
        &"--secret-key",
        &dir.path().join("k"),
        &"--public-key",
        &dir.path().join("k.pub"),
    ]));
    let o = split(&["--part-size", "1KiB"], &dir.path().join("k"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("split with the key that signed the bundle"), "{}", stderr(&o));

    // A bundle altered after signing: exit 1, and no part is left behind.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&bundle, bytes).unwrap();
    let o = split(&["--part-size", "1KiB", "--parity", "1"], &key);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    let left: Vec<String> =
        names(dir.path(), "").into_iter().filter(|n| n.contains("part")).collect();
    assert!(left.is_empty(), "{left:?}");
}
