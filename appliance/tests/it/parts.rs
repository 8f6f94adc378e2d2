//! `ferry-appliance import NAME-SEQ.ferry.parts`: bundles that crossed the gap as parts, with
//! and without parity, whole or lacking parts, over several runs, and every way a part or an
//! index can be wrong. Each refusal names its check; nothing becomes active and nothing is
//! left outside the bundle's parts folder.

use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_manifests::parts::{PartsIndex, SplitOptions, split_bundle};
use ferry_manifests::{NoProgress, SigningKey};

use crate::support::{Fixture, VERSIONS, assert_ok, snapshot, stderr, stdout};

/// A bundle cut into parts: the folder holding parts, index and its signature.
struct Cut {
    dir: PathBuf,
    index: PartsIndex,
}

impl Cut {
    fn part(&self, i: usize) -> PathBuf {
        self.dir.join(&self.index.parts[i].file_name)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join(self.index.file_name())
    }
}

/// A small bundle of `sequence` (its archive `archive_len` bytes of noise).
fn bundle(f: &Fixture, sequence: u64, archive_len: usize) -> PathBuf {
    f.bundle_full(sequence, VERSIONS[1], Fixture::later(), &f.key, archive_len)
}

/// Cuts `bundle` (signed by the fixture's key) into `part_size` parts with `parity` parity
/// parts, in a folder of its own named `name`.
fn cut(f: &Fixture, bundle: &Path, part_size: u64, parity: usize, name: &str) -> Cut {
    let dir = f.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let signature = ferry_manifests::default_signature_path(bundle);
    let out = split_bundle(
        bundle,
        &signature,
        &f.key,
        &dir,
        SplitOptions { part_size, parity },
        &NoProgress,
    )
    .unwrap();
    Cut { dir, index: out.index }
}

/// A folder (a medium) holding the index, its signature and the parts `keep` picks.
fn medium(f: &Fixture, cut: &Cut, name: &str, keep: impl Fn(usize) -> bool) -> PathBuf {
    let dir = f.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let index = cut.index.file_name();
    for file in [index.clone(), format!("{index}.minisig")] {
        std::fs::copy(cut.dir.join(&file), dir.join(&file)).unwrap();
    }
    for (i, part) in cut.index.parts.iter().enumerate() {
        if keep(i) {
            std::fs::copy(cut.part(i), dir.join(&part.file_name)).unwrap();
        }
    }
    dir.join(index)
}

fn import(f: &Fixture, index: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"import", &index];
    args.extend_from_slice(extra);
    f.run(&args)
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// The folders below `DATA/parts`.
fn parts_folders(f: &Fixture) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(f.path("data/parts")) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// How many parts the appliance holds for the bundle of `index`: what another run reports
/// (which must still find too few).
fn have(f: &Fixture, index: &Path) -> usize {
    let o = import(f, index, &[&"--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    json(&o)["have"].as_array().unwrap().len()
}

/// Files in the one parts folder of the data directory.
fn kept(f: &Fixture) -> Vec<String> {
    let folders = parts_folders(f);
    assert_eq!(folders.len(), 1, "{folders:?}");
    let mut names: Vec<String> = std::fs::read_dir(f.path("data/parts").join(&folders[0]))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn round_trips_with_parity_0_1_2_and_every_loss_up_to_the_parity() {
    let f = Fixture::new();
    let mut sequence = 0;
    let mut imports = 0;
    for parity in 0..=2 {
        // Parts are cut per bundle; every bundle is the same size, so the same part count.
        let parts = {
            let probe = bundle(&f, 1000 + parity as u64, 9000);
            cut(&f, &probe, 4096, parity, &format!("probe-{parity}")).index.parts.len()
        };
        assert!(parts >= 3 + parity, "{parts} parts");
        for lost in 0u32..(1 << parts) {
            if lost.count_ones() as usize > parity {
                continue;
            }
            sequence += 1;
            let b = bundle(&f, sequence, 9000);
            let c = cut(&f, &b, 4096, parity, &format!("cut-{sequence}"));
            assert_eq!(c.index.parts.len(), parts);
            let index = medium(&f, &c, &format!("medium-{sequence}"), |i| lost & (1 << i) == 0);
            let o = import(&f, &index, &[]);
            assert_ok(&o);
            assert!(
                stdout(&o).contains(&format!("active: site sequence {sequence}")),
                "{}",
                stdout(&o)
            );
            let rebuilt_data = (0..c.index.layout.data_parts).any(|i| lost & (1 << i) != 0);
            assert_eq!(stdout(&o).contains("rebuilt from parity"), rebuilt_data, "{}", stdout(&o));
            assert_eq!(f.releases().0, Some(sequence));
            // Imported: its parts folder is gone.
            assert_eq!(parts_folders(&f), Vec::<String>::new());
            imports += 1;
        }
    }
    // parity 0: 1; parity 1: 1 + n; parity 2: 1 + n + n(n-1)/2.
    assert!(imports >= 1 + 4 + 11, "{imports} imports");
    assert_ok(&f.run(&[&"fsck"]));
}

#[test]
fn one_loss_too_many_says_which_parts_are_missing_and_keeps_the_rest() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &bundle(&f, 1, 9000)]));
    let c = cut(&f, &bundle(&f, 2, 9000), 4096, 1, "cut");
    let total = c.index.parts.len();
    let data = c.index.layout.data_parts;
    let index = medium(&f, &c, "medium", |i| i != 1 && i != 3);
    let before = snapshot(&f.path("data"));

    let o = import(&f, &index, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let line = format!(
        "have {} of {total} parts, need {data}: missing part002, part004; 1 more needed",
        total - 2
    );
    assert!(stderr(&o).contains(&line), "{line:?} not in {}", stderr(&o));
    assert!(stderr(&o).contains("nothing imported"), "{}", stderr(&o));
    assert_eq!(f.releases().0, Some(1), "nothing was imported");
    let o = import(&f, &index, &[&"--json"]);
    assert_eq!(o.status.code(), Some(3));
    let v = json(&o);
    assert_eq!(v["imported"], false);
    assert_eq!(v["check"], "parts-incomplete");
    assert_eq!(v["still_needed"], 1);
    assert_eq!(v["missing"], serde_json::json!(["site-2.ferry.part002", "site-2.ferry.part004"]));
    // The verified parts are kept (data parts in the bundle being put together, parity parts
    // as files), and nothing else changed.
    assert_eq!(v["have"].as_array().unwrap().len(), total - 2);
    assert_eq!(kept(&f), ["site-2.ferry"]);
    let after: Vec<_> =
        snapshot(&f.path("data")).into_iter().filter(|(p, _)| !p.starts_with("parts")).collect();
    assert_eq!(after, before.into_iter().collect::<Vec<_>>());
}

#[test]
fn parts_may_arrive_over_several_runs() {
    let f = Fixture::new();
    let c = cut(&f, &bundle(&f, 5, 30_000), 4096, 2, "cut");
    let total = c.index.parts.len();
    // The first medium holds the index and the first half; the second the rest, no index.
    let first = medium(&f, &c, "a", |i| i < total / 2);
    let o = import(&f, &first, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(have(&f, &first), total / 2);
    // Other commands in between (each empties staging) keep the parts.
    assert_ok(&f.run(&[&"gc"]));
    assert_ok(&f.run(&[&"import", &bundle(&f, 1, 9000)]));
    assert_eq!(have(&f, &first), total / 2);
    let second = f.path("b");
    std::fs::create_dir(&second).unwrap();
    for i in total / 2..total {
        std::fs::copy(c.part(i), second.join(&c.index.parts[i].file_name)).unwrap();
    }
    // The first medium is gone; only its copy of the index travels on.
    std::fs::remove_dir_all(f.path("cut")).unwrap();
    for i in 0..total / 2 {
        std::fs::remove_file(first.with_file_name(&c.index.parts[i].file_name)).unwrap();
    }
    let o = import(&f, &first, &[&"--parts-dir", &second, &"--json"]);
    assert_ok(&o);
    assert_eq!(json(&o)["sequence"], 5);
    assert_eq!(f.releases().0, Some(5));
    assert_eq!(parts_folders(&f), Vec::<String>::new());
}

#[test]
fn a_flipped_bit_is_refused_and_rebuilt_from_parity() {
    let f = Fixture::new();
    let c = cut(&f, &bundle(&f, 3, 9000), 4096, 1, "cut");
    let index = medium(&f, &c, "medium", |_| true);
    let part = index.with_file_name(&c.index.parts[1].file_name);
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[100] ^= 0x08;
    std::fs::write(&part, bytes).unwrap();
    let o = import(&f, &index, &[]);
    assert_ok(&o);
    // Taken by size at first, the damaged part makes the bundle's signature fail; every part
    // is then checked against the index, and the damaged one rebuilt from parity.
    let said = stderr(&o);
    assert!(said.contains("the parts found do not make up the signed bundle"), "{said}");
    let out = stdout(&o);
    assert!(out.contains("part-sha256 check"), "{out}");
    assert!(out.contains("rebuilt from parity: site-3.ferry.part002"), "{out}");
    assert_eq!(f.releases().0, Some(3));
}

#[test]
fn a_fifo_named_like_a_part_is_passed_over_not_waited_on() {
    let f = Fixture::new();
    let c = cut(&f, &bundle(&f, 3, 9000), 4096, 1, "cut");
    let index = medium(&f, &c, "medium", |i| i != 1);
    // Nothing ever writes to it: opened for reading in the usual way, it blocks for ever.
    let fifo = index.with_file_name(&c.index.parts[1].file_name);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let o = import(&f, &index, &[]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("rebuilt from parity: site-3.ferry.part002"), "{out}");
    assert_eq!(f.releases().0, Some(3));
}

/// The data directory apart from the parts folders, which a refusal may keep.
fn outside_parts(f: &Fixture) -> Vec<(PathBuf, String)> {
    snapshot(&f.path("data")).into_iter().filter(|(p, _)| !p.starts_with("parts")).collect()
}

#[test]
fn bad_parts_and_bad_indexes_are_refused_each_by_its_check() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &bundle(&f, 1, 9000)]));
    let c = cut(&f, &bundle(&f, 7, 9000), 4096, 0, "cut");
    let other = cut(&f, &bundle(&f, 8, 9000), 4096, 0, "other");
    let before = outside_parts(&f);
    let fresh = |name: &str| {
        let _ = std::fs::remove_dir_all(f.path("data/parts"));
        medium(&f, &c, name, |_| true)
    };

    // A part from another bundle, under its own name, in place of ours.
    let index = fresh("m-other");
    std::fs::remove_file(index.with_file_name(&c.index.parts[1].file_name)).unwrap();
    std::fs::copy(other.part(1), index.with_file_name(&other.index.parts[1].file_name)).unwrap();
    let o = import(&f, &index, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("site-8.ferry.part002: a part of another bundle (part-other-bundle)"),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("missing part002"), "{}", stderr(&o));

    // Another bundle's part renamed as ours, a flipped bit, a truncated part: each refused
    // with its check, none kept.
    type Spoil<'a> = Box<dyn Fn(&Path) + 'a>;
    let damage: [(&str, &str, Spoil<'_>); 3] = [
        (
            "renamed",
            "part-sha256",
            Box::new(|p: &Path| std::fs::copy(other.part(0), p).map(drop).unwrap()),
        ),
        (
            "bit",
            "part-sha256",
            Box::new(|p: &Path| {
                let mut b = std::fs::read(p).unwrap();
                b[7] ^= 1;
                std::fs::write(p, b).unwrap();
            }),
        ),
        (
            "truncated",
            "part-size",
            Box::new(|p: &Path| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() - 1]).unwrap();
            }),
        ),
    ];
    for (what, check, spoil) in damage {
        let index = fresh(&format!("m-{what}"));
        spoil(&index.with_file_name(&c.index.parts[0].file_name));
        let o = import(&f, &index, &[&"--json"]);
        assert_eq!(o.status.code(), Some(3), "{what}: {}", stderr(&o));
        let v = json(&o);
        assert_eq!(v["damaged"][0]["check"], check, "{what}: {v}");
        assert_eq!(v["damaged"][0]["part"], "site-7.ferry.part001", "{what}: {v}");
        let have = v["have"].as_array().unwrap();
        assert!(!have.contains(&serde_json::json!("site-7.ferry.part001")), "{what}: {v}");
        assert_eq!(have.len(), c.index.parts.len() - 1, "{what}: {v}");
        // Another run does not count the refused copy as kept either.
        assert_eq!(self::have(&f, &index), c.index.parts.len() - 1, "{what}");
    }

    // Indexes: forged after signing, signed by a key not trusted, inconsistent but signed.
    let text = std::fs::read_to_string(c.index_path()).unwrap();
    let stranger: SigningKey = f.other_key("stranger.pub");
    let resign =
        |key: &SigningKey, text: &str| key.sign(text.as_bytes(), &c.index.comment().to_string());
    let first_digest = c.index.parts[0].sha256.to_hex();
    let forged = text.replace(&first_digest, &c.index.parts[1].sha256.to_hex());
    let without_part = {
        let last = c.index.parts.last().unwrap();
        let line = format!("# part: {} size={} data\n", last.file_name, last.size);
        text.replace(&line, "")
    };
    let cases: [(&str, &str, String, String); 3] = [
        (
            "forged",
            "parts-signature",
            forged,
            std::fs::read_to_string(c.dir.join(format!("{}.minisig", c.index.file_name())))
                .unwrap(),
        ),
        ("untrusted", "parts-untrusted-key", text.clone(), resign(&stranger, &text)),
        ("inconsistent", "index-count", without_part.clone(), resign(&f.key, &without_part)),
    ];
    for (what, check, index_text, signature) in cases {
        let _ = std::fs::remove_dir_all(f.path("data/parts"));
        let index = medium(&f, &c, &format!("i-{what}"), |_| true);
        std::fs::write(&index, index_text).unwrap();
        std::fs::write(ferry_manifests::default_signature_path(&index), signature).unwrap();
        let o = import(&f, &index, &[&"--json"]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        assert_eq!(json(&o)["check"], check, "{what}: {}", stdout(&o));
        // Refused before anything else was read: no parts folder.
        assert_eq!(parts_folders(&f), Vec::<String>::new(), "{what}");
    }

    // Through it all, nothing outside the parts folders changed and the release is the same.
    assert_eq!(outside_parts(&f), before);
    assert_eq!(f.releases().0, Some(1));
    assert_eq!(std::fs::read_dir(f.path("data/staging")).unwrap().count(), 0);
}

#[test]
fn a_rebuilt_bundle_meets_every_import_check_and_old_parts_are_collected() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &bundle(&f, 4, 9000)]));
    // A replay, cut into parts: read from them (one rebuilt), then refused by the ordinary
    // import's floor. Nothing is kept: the set was whole, nothing of it waits for more parts.
    let c = cut(&f, &bundle(&f, 3, 9000), 4096, 1, "cut");
    let index = medium(&f, &c, "medium", |i| i != 0);
    let o = import(&f, &index, &[&"--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(json(&o)["check"], "downgrade", "{}", stdout(&o));
    assert_eq!(parts_folders(&f), Vec::<String>::new());
    // One part of it arrives again: kept while it waits for the rest (the data in place, no
    // signature), until `gc` removes it, the bundle being below the floor.
    let index = medium(&f, &c, "medium-one", |i| i == 1);
    assert_eq!(import(&f, &index, &[]).status.code(), Some(3));
    assert_eq!(kept(&f), ["site-3.ferry".to_owned()]);
    let o = f.run(&[&"gc"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("1 parts folder(s)"), "{}", stdout(&o));
    assert_eq!(parts_folders(&f), Vec::<String>::new());

    // Parts of a bundle still waiting go when a newer one is imported whole.
    let c = cut(&f, &bundle(&f, 5, 9000), 4096, 0, "cut5");
    let index = medium(&f, &c, "medium5", |i| i != 0);
    assert_eq!(import(&f, &index, &[]).status.code(), Some(3));
    assert_eq!(parts_folders(&f).len(), 1);
    assert_ok(&f.run(&[&"import", &bundle(&f, 6, 9000)]));
    assert_eq!(parts_folders(&f), Vec::<String>::new());

    // A bundle whose bytes differ from what its own signature covers is refused by that
    // signature, whatever the parts' digests say (an index signed by a leaked key).
    let c = cut(&f, &bundle(&f, 9, 9000), 4096, 0, "cut9");
    let mut text = std::fs::read_to_string(c.index_path()).unwrap();
    let part = c.part(0);
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&part, &bytes).unwrap();
    let digest = ferry_manifests::Sha256Digest::of(&bytes).to_hex();
    text = text.replace(&c.index.parts[0].sha256.to_hex(), &digest);
    std::fs::write(c.index_path(), &text).unwrap();
    std::fs::write(
        ferry_manifests::default_signature_path(&c.index_path()),
        f.key.sign(text.as_bytes(), &c.index.comment().to_string()),
    )
    .unwrap();
    let o = import(&f, &c.index_path(), &[&"--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(json(&o)["check"], "bundle-signature", "{}", stdout(&o));
    assert_eq!(f.releases().0, Some(6));

    // The same leaked key vouching for an altered parity part: what it rebuilds is not the
    // part the index names, and is refused as such before the import reads a byte of it.
    let c = cut(&f, &bundle(&f, 10, 9000), 4096, 1, "cut10");
    let parity = c.part(c.index.parts.len() - 1);
    let mut bytes = std::fs::read(&parity).unwrap();
    bytes[7] ^= 1;
    std::fs::write(&parity, &bytes).unwrap();
    let digest = ferry_manifests::Sha256Digest::of(&bytes).to_hex();
    let text = std::fs::read_to_string(c.index_path())
        .unwrap()
        .replace(&c.index.parts.last().unwrap().sha256.to_hex(), &digest);
    std::fs::write(c.index_path(), &text).unwrap();
    std::fs::write(
        ferry_manifests::default_signature_path(&c.index_path()),
        f.key.sign(text.as_bytes(), &c.index.comment().to_string()),
    )
    .unwrap();
    std::fs::remove_file(c.part(0)).unwrap();
    let o = import(&f, &c.index_path(), &[&"--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(json(&o)["check"], "part-rebuild", "{}", stdout(&o));
    assert_eq!(f.releases().0, Some(6));
    let scratch = std::fs::read_dir(f.path("data/parts")).unwrap().count();
    assert_eq!(scratch, 0, "the rebuilt parts' scratch file does not outlive the import");
}

#[test]
fn an_index_is_known_by_its_content_and_a_bundle_import_is_unchanged() {
    let f = Fixture::new();
    let c = cut(&f, &bundle(&f, 2, 9000), 4096, 1, "cut");
    let index = medium(&f, &c, "medium", |_| true);
    // Renamed on the way (some transfer tools add their own extension).
    let renamed = index.with_file_name("index.txt");
    std::fs::rename(&index, &renamed).unwrap();
    std::fs::rename(
        ferry_manifests::default_signature_path(&index),
        ferry_manifests::default_signature_path(&renamed),
    )
    .unwrap();
    assert_ok(&import(&f, &renamed, &[]));
    assert_eq!(f.releases().0, Some(2));
    // A bundle file still imports as a bundle (and a missing one is still `bundle-missing`).
    assert_ok(&f.run(&[&"import", &bundle(&f, 3, 9000)]));
    let o = f.run(&[&"import", &f.path("nowhere/site-9.ferry"), &"--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json(&o)["check"], "bundle-missing", "{}", stdout(&o));
}
