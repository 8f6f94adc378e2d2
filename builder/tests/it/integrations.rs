//! `[[integration]]` entries against an in-process package registry: `/search` answers shaped
//! as the registry's, package zips signed with a PGP key made here. `plan` lists what a spec
//! selects with sizes, `build` carries each package with its `.sig`, and every way a package
//! or an answer can be wrong stops the build, naming it.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::support::{Upstream, assert_ok, ferry, fixture, stderr};
use ferry_artifacts::pgp::SigningKey;
use ferry_testkit::{package_manifest, package_zip};
use serde_json::{Value, json};

/// The registry's packages: name, version.
const PACKAGES: [(&str, &str); 4] =
    [("nginx", "1.0.0"), ("nginx", "1.2.0"), ("nginx", "2.0.0-beta1"), ("system", "1.5.0")];

/// A search hit as the registry writes one (`/search` keeps only a package's summary).
fn hit(name: &str, version: &str) -> Value {
    json!({
        "name": name,
        "title": format!("{name} title"),
        "version": version,
        "release": "ga",
        "description": format!("about {name}"),
        "type": "integration",
        "download": format!("/epr/{name}/{name}-{version}.zip"),
        "path": format!("/package/{name}/{version}"),
        "signature_path": format!("/epr/{name}/{name}-{version}.zip.sig"),
        "categories": ["web"],
        "conditions": { "kibana": { "version": "^9.0.0" } },
    })
}

struct Registry {
    dir: tempfile::TempDir,
    server: Upstream,
}

impl Registry {
    fn new() -> Self {
        let key = SigningKey::generate("Elastic test <test@example.invalid>").unwrap();
        let mut files = HashMap::new();
        for (name, version) in PACKAGES {
            let zip = package_zip(
                name,
                version,
                &[
                    ("manifest.yml", &package_manifest(name, version, "")),
                    ("docs/README.md", "# readme\n"),
                ],
            );
            let path = format!("/epr/{name}/{name}-{version}.zip");
            files.insert(format!("{path}.sig"), key.sign(&zip[..]).unwrap().into_bytes());
            files.insert(path, zip);
        }
        // What the registry answers for the queries the specs below make: every version of
        // nginx, with an old unsigned one (no `signature_path`) no entry wants and a technical
        // preview (`release: experimental`), and the newest integration of each name for
        // Kibana 9.2.0.
        let search = |hits: Vec<Value>| serde_json::to_vec(&hits).unwrap();
        let mut unsigned = hit("nginx", "0.9.0");
        unsigned.as_object_mut().unwrap().remove("signature_path");
        let mut preview = hit("nginx", "1.3.0");
        preview["release"] = json!("experimental");
        files.insert(
            "/search?package=nginx&all=true&prerelease=true".into(),
            search(vec![unsigned, hit("nginx", "1.0.0"), hit("nginx", "1.2.0"), preview]),
        );
        files.insert(
            "/search?type=integration&kibana.version=9.2.0".into(),
            search(vec![hit("nginx", "1.2.0"), hit("system", "1.5.0")]),
        );
        files.insert("/search?package=absent".into(), search(vec![]));
        let server = Upstream::start(files);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("GPG-KEY-test"), key.public_armored()).unwrap();
        Self { dir, server }
    }

    fn url(&self) -> String {
        self.server.root()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spec(&self, integrations: &str) {
        let spec = format!(
            "[bundle]\nname = \"site\"\nsequence = 1\n\
             [registry]\nurl = \"{}\"\npgp_key = \"GPG-KEY-test\"\n{integrations}",
            self.url()
        );
        std::fs::write(self.path("spec.toml"), spec).unwrap();
    }

    fn run(&self, command: &str) -> std::process::Output {
        let spec = self.path("spec.toml");
        let cache = self.path("cache");
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&command, &spec, &"--cache", &cache, &"--json"];
        let (key, out) = (fixture("test.key"), self.path("out"));
        if command == "build" {
            args.extend([
                &"--secret-key" as &dyn AsRef<std::ffi::OsStr>,
                &key,
                &"--out",
                &out,
                &"--created",
                &"2026-11-01T00:00:00Z",
                &"--attempts",
                &"1",
            ]);
        }
        ferry(&args)
    }

    /// Asserts a refused build: exit 1, `says` on stderr, no bundle written.
    fn refused(&self, says: &str) {
        let o = self.run("build");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "expected {says:?} in:\n{err}");
        assert!(!self.path("out/site-1.ferry").exists(), "a refused build wrote a bundle");
    }

    fn zip_hits(&self) -> usize {
        self.server.hits().iter().filter(|h| h.method == "GET" && h.path.ends_with(".zip")).count()
    }
}

const SPEC: &str = "[[integration]]\nname = \"nginx\"\nversion = \"~1.0.0\"\n\
                    [[integration]]\ntype = \"integration\"\nkibana.version = \"9.2.0\"\n";

#[test]
fn plan_lists_what_the_spec_selects_and_build_carries_it_signed() {
    let registry = Registry::new();
    registry.spec(SPEC);
    let o = registry.run("plan");
    assert_ok(&o);
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let packages: Vec<(String, String, bool)> = plan["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["size"].as_u64().unwrap() > 100, "{p}");
            (
                p["name"].as_str().unwrap().into(),
                p["version"].as_str().unwrap().into(),
                p["cached"].as_bool().unwrap(),
            )
        })
        .collect();
    // `~1.0.0` takes 1.0.0 of the two nginx versions; the Kibana query adds the newest
    // integrations; together, each once.
    let expected = [("nginx", "1.0.0"), ("nginx", "1.2.0"), ("system", "1.5.0")];
    assert_eq!(packages, expected.map(|(n, v)| (n.to_owned(), v.to_owned(), false)).to_vec());
    assert_eq!(registry.zip_hits(), 0, "plan downloaded a package");

    let o = registry.run("build");
    assert_ok(&o);
    let o = ferry(&[&"inspect", &registry.path("out/site-1.ferry"), &"--json"]);
    assert_ok(&o);
    let manifest: Value = serde_json::from_slice(&o.stdout).unwrap();
    let files = manifest["manifest"]["files"].as_array().unwrap();
    let by_path: HashMap<&str, &Value> =
        files.iter().map(|f| (f["path"].as_str().unwrap(), f)).collect();
    for (name, version) in expected {
        let zip = by_path[format!("packages/{name}-{version}.zip").as_str()];
        assert_eq!(zip["kind"], "package");
        assert_eq!(zip["metadata"]["name"], name);
        assert_eq!(zip["metadata"]["version"], version);
        // When the package was made, from the zip (the test zips carry the format's earliest
        // time), never the fetch time: builds stay reproducible.
        assert_eq!(zip["metadata"]["date"], "1980-01-01T00:00:00Z");
        // Provenance, as for agent archives: the key whose signature verified it.
        assert_eq!(zip["metadata"]["pgp_signer"].as_str().unwrap().len(), 40, "{zip}");
        let sig = by_path[format!("packages/{name}-{version}.zip.sig").as_str()];
        assert_eq!(sig["kind"], "artifact-sidecar");
        assert_eq!(sig["metadata"]["format"], "pgp-signature");
    }
    // The key packages were checked with travels too, and nothing else was selected.
    assert!(by_path.contains_key("pgp/GPG-KEY-test"));
    assert_eq!(files.len(), expected.len() * 2 + 1);

    // Rebuilt from the cache: no package moves again, and plan says they are cached.
    let fetched = registry.zip_hits();
    assert_eq!(fetched, 3);
    std::fs::remove_dir_all(registry.path("out")).unwrap();
    assert_ok(&registry.run("build"));
    assert_eq!(registry.zip_hits(), fetched, "the rebuild downloaded a package again");
    let plan: Value = serde_json::from_slice(&registry.run("plan").stdout).unwrap();
    assert!(plan["packages"].as_array().unwrap().iter().all(|p| p["cached"] == true), "{plan}");
}

#[test]
fn a_package_that_does_not_verify_or_read_stops_the_build_naming_it() {
    let registry = Registry::new();
    registry.spec(SPEC);
    let sig = "/epr/nginx/nginx-1.2.0.zip.sig";
    let zip = "/epr/nginx/nginx-1.2.0.zip";
    let good_sig = registry.server.get_raw(sig);
    let good_zip = registry.server.get_raw(zip);

    // Signed by another key.
    let other = SigningKey::generate("Someone else <x@example.invalid>").unwrap();
    registry.server.set_raw(sig, Some(other.sign(&good_zip[..]).unwrap().into_bytes()));
    registry.refused("nginx-1.2.0.zip.sig");
    // A zip changed after it was signed.
    registry.server.set_raw(sig, Some(good_sig.clone()));
    let mut changed = good_zip.clone();
    changed.extend_from_slice(b"tail");
    registry.server.set_raw(zip, Some(changed));
    registry.refused("does not verify nginx-1.2.0.zip");
    // No signature at all.
    registry.server.set_raw(zip, Some(good_zip));
    registry.server.set_raw(sig, None);
    registry.refused(&format!("{}{}: not found", registry.url(), &sig[1..]));

    // A signed package whose manifest is not YAML, or names another package.
    let key = SigningKey::generate("Elastic test <test@example.invalid>").unwrap();
    std::fs::write(registry.path("GPG-KEY-test"), key.public_armored()).unwrap();
    for (manifest, says) in [
        ("name: [nginx\n", "nginx-1.2.0/manifest.yml is not valid YAML"),
        (&package_manifest("apache", "1.2.0", "") as &str, "says name Some(\"apache\")"),
    ] {
        let bad = package_zip("nginx", "1.2.0", &[("manifest.yml", manifest)]);
        registry.server.set_raw(sig, Some(key.sign(&bad[..]).unwrap().into_bytes()));
        registry.server.set_raw(zip, Some(bad));
        registry.refused(says);
    }
}

#[test]
fn selections_that_are_empty_or_answers_that_point_elsewhere_are_refused() {
    let registry = Registry::new();
    registry.spec("[[integration]]\nname = \"absent\"\n");
    registry
        .refused("[[integration]] number 1 (absent) selects no package: the registry offered 0");
    registry.spec("[[integration]]\nname = \"nginx\"\nversion = \"^3.0.0\"\n");
    registry.refused("selects no package: the registry offered 4, none of them version ^3.0.0");
    let o = registry.run("plan");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("selects no package"), "{}", stderr(&o));

    // A range leaves out a technical preview, as the registry does, unless the entry asks for
    // prereleases; a pinned version is taken whatever its release.
    let planned = |spec: &str| {
        registry.spec(spec);
        let o = registry.run("plan");
        let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
        let versions: Vec<String> = plan["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["version"].as_str().unwrap().to_owned())
            .collect();
        versions
    };
    assert_eq!(planned("[[integration]]\nname = \"nginx\"\nversion = \"^1.0.0\"\n"), ["1.2.0"]);
    assert_eq!(
        planned("[[integration]]\nname = \"nginx\"\nversion = \"^1.0.0\"\nprerelease = true\n"),
        ["1.3.0"]
    );
    assert_eq!(planned("[[integration]]\nname = \"nginx\"\nversion = \"1.3.0\"\n"), ["1.3.0"]);

    // An answer sending the download elsewhere is not followed.
    let mut evil = hit("nginx", "1.2.0");
    evil["download"] = json!("/elsewhere/nginx.zip");
    registry.server.set_raw(
        "/search?package=nginx&all=true&prerelease=true",
        Some(serde_json::to_vec(&[evil]).unwrap()),
    );
    registry.spec("[[integration]]\nname = \"nginx\"\nversion = \"1.2.0\"\n");
    registry.refused("download Some(\"/elsewhere/nginx.zip\") is not /epr/nginx/nginx-1.2.0.zip");
    assert_eq!(registry.zip_hits(), 0);

    // Entries checked before anything is asked.
    registry.spec("[[integration]]\nprerelease = true\n");
    let o = registry.run("build");
    assert!(stderr(&o).contains("would select the whole registry"), "{}", stderr(&o));
    registry.spec("[[integration]]\nname = \"nginx\"\ncolour = \"red\"\n");
    let o = registry.run("build");
    assert!(stderr(&o).contains("unknown field `colour`"), "{}", stderr(&o));
}

#[test]
fn integrations_need_a_key() {
    let registry = Registry::new();
    let spec = format!(
        "[bundle]\nname = \"site\"\nsequence = 1\n[registry]\nurl = \"{}\"\n\
         [[integration]]\nname = \"nginx\"\n",
        registry.url()
    );
    std::fs::write(registry.path("spec.toml"), spec).unwrap();
    let o = registry.run("build");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs the PGP key packages are signed with"), "{}", stderr(&o));

    // A key file that is not there is a missing input, for plan as for build (exit 1).
    registry.spec("[[integration]]\nname = \"nginx\"\n");
    std::fs::remove_file(registry.path("GPG-KEY-test")).unwrap();
    for command in ["plan", "build"] {
        let o = registry.run(command);
        assert_eq!(o.status.code(), Some(1), "{command}: {}", stderr(&o));
        assert!(stderr(&o).contains("GPG-KEY-test"), "{command}: {}", stderr(&o));
    }
}

#[test]
fn a_cache_that_cannot_be_opened_is_named_by_plan_and_build() {
    let registry = Registry::new();
    registry.spec(SPEC);
    // A file where the cache folder should be.
    std::fs::write(registry.path("cache"), b"not a folder").unwrap();
    let says = format!("cannot open cache {}", registry.path("cache").display());
    for command in ["plan", "build"] {
        let o = registry.run(command);
        assert!(!o.status.success(), "{command}: {}", stderr(&o));
        assert!(stderr(&o).contains(&says), "{command}: {}", stderr(&o));
    }
    assert!(!registry.path("out/site-1.ferry").exists(), "a refused build wrote a bundle");
    assert_eq!(registry.zip_hits(), 0, "nothing downloaded");
}
