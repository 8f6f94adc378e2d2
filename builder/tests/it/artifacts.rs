//! `ferry build` and `ferry plan` against an in-process upstream: artifacts are fetched,
//! checked against Elastic-style `.sha512` and `.asc` files, cached, resumed after a dropped
//! connection, and refused when anything does not verify.

use std::path::{Path, PathBuf};

use crate::support::{Upstream, assert_ok, ferry, fixture, site, stderr, stdout};
use ferry_artifacts::pgp::SigningKey;

const ARTIFACTS: [&str; 5] = [
    "beats/elastic-agent/elastic-agent-9.1.0-linux-x86_64.tar.gz",
    "beats/elastic-agent/elastic-agent-9.1.0-windows-x86_64.zip",
    "beats/elastic-agent/elastic-agent-9.2.2-linux-x86_64.tar.gz",
    "beats/elastic-agent/elastic-agent-9.2.2-windows-x86_64.zip",
    "fleet-server/fleet-server-9.2.2-linux-x86_64.tar.gz",
];
const SIZE: usize = 300_000;

const POLICY: &str = "id: linux\nrevision: 4\nname: Linux servers\noutputs:\n  default:\n    type: elasticsearch\n    hosts: [https://es.internal:9200]\ninputs: []\n";

struct Site {
    dir: tempfile::TempDir,
    upstream: Upstream,
    key: SigningKey,
}

impl Site {
    fn new() -> Self {
        let key = SigningKey::generate("Elastic test <test@example.invalid>").unwrap();
        let upstream = Upstream::start(site(&key, &ARTIFACTS, SIZE));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("GPG-KEY-test"), key.public_armored()).unwrap();
        std::fs::write(dir.path().join("policy.yml"), POLICY).unwrap();
        let site = Self { dir, upstream, key };
        site.write_spec("");
        site
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_spec(&self, extra: &str) {
        let spec = format!(
            "[bundle]\nname = \"site\"\nsequence = 1\n\
             [upstream]\nurl = \"{}\"\npgp_key = \"GPG-KEY-test\"\n\
             [[agent]]\nversions = [\"9.1.0\", \"9.2.2\"]\nplatforms = [\"linux-x86_64\", \"windows-x86_64\"]\n\
             [[fleet_server]]\nversions = [\"9.2.2\"]\nplatforms = [\"linux-x86_64\"]\n\
             [[file]]\nsource = \"policy.yml\"\nkind = \"policy\"\n{extra}",
            self.upstream.url
        );
        std::fs::write(self.path("spec.toml"), spec).unwrap();
    }

    fn build(&self) -> std::process::Output {
        ferry(&[
            &"build",
            &self.path("spec.toml"),
            &"--secret-key",
            &fixture("test.key"),
            &"--out",
            &self.path("out"),
            &"--cache",
            &self.path("cache"),
            &"--created",
            &"2026-11-01T00:00:00Z",
            &"--attempts",
            &"3",
            &"--json",
        ])
    }

    fn bundle(&self) -> PathBuf {
        self.path("out/site-1.ferry")
    }
}

fn entries(bundle: &Path) -> Vec<String> {
    let o = ferry(&[&"inspect", &bundle, &"--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn full_build_holds_exactly_the_mirror_paths_and_rebuilds_from_cache() {
    let site = Site::new();
    let o = site.build();
    assert_ok(&o);
    let mut expected: Vec<String> = ARTIFACTS
        .iter()
        .flat_map(|p| {
            [
                format!("downloads/{p}"),
                format!("downloads/{p}.asc"),
                format!("downloads/{p}.sha512"),
            ]
        })
        .chain(["pgp/GPG-KEY-test".to_owned(), "policies/policy.yml".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(entries(&site.bundle()), expected);
    assert_ok(&ferry(&[&"verify", &site.bundle(), &"-p", &fixture("test.pub")]));
    // The bundle carries the upstream's bytes unchanged.
    let staged = ferry_manifests::test_tools::tool("tar")
        .arg("--zstd")
        .arg("-xOf")
        .arg(site.bundle())
        .arg(format!("downloads/{}", ARTIFACTS[0]))
        .output()
        .unwrap();
    assert_eq!(staged.stdout, site.upstream.get(ARTIFACTS[0]));

    let o = ferry(&[&"inspect", &site.bundle()]);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(text.contains("elastic-agent  9.2.2    windows-x86_64  archive  300000"), "{text}");
    assert!(text.contains("fleet-server   9.2.2    linux-x86_64    archive  300000"), "{text}");
    assert!(text.contains("linux  4         Linux servers  policies/policy.yml"), "{text}");

    // A second build is served from the cache: the upstream sees no request at all.
    let before = site.upstream.hits().len();
    assert_eq!(before, 15, "{:?}", site.upstream.hits());
    std::fs::remove_dir_all(site.path("out")).unwrap();
    assert_ok(&site.build());
    assert_eq!(site.upstream.hits().len(), before, "the rebuild went upstream");
    assert_eq!(entries(&site.bundle()), expected);
}

#[test]
fn plan_lists_sources_and_cache_state_without_downloading() {
    let site = Site::new();
    let plan = || {
        let o =
            ferry(&[&"plan", &site.path("spec.toml"), &"--cache", &site.path("cache"), &"--json"]);
        assert_ok(&o);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let before = plan();
    let files = before["files"].as_array().unwrap();
    assert_eq!(files.len(), 17);
    let archive =
        files.iter().find(|f| f["bundle_path"] == format!("downloads/{}", ARTIFACTS[2])).unwrap();
    assert_eq!(archive["source"], format!("{}{}", site.upstream.url, ARTIFACTS[2]));
    assert_eq!(archive["cached"], false);
    assert!(site.upstream.hits().is_empty(), "plan must not download");
    assert_ok(&site.build());
    let after = plan();
    assert!(
        after["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["source"].as_str().unwrap().starts_with("http"))
            .all(|f| f["cached"] == true)
    );
    let o = ferry(&[&"plan", &site.path("spec.toml"), &"--cache", &site.path("cache")]);
    assert_ok(&o);
    assert!(stdout(&o).contains("17 files, 5 artifacts, 0 to download"), "{}", stdout(&o));
}

#[test]
fn a_dropped_connection_resumes_with_a_byte_range() {
    let site = Site::new();
    site.upstream.cut_once(ARTIFACTS[2], 100_000);
    assert_ok(&site.build());
    let hits: Vec<_> =
        site.upstream.hits().into_iter().filter(|h| h.path.ends_with(ARTIFACTS[2])).collect();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].range, None);
    assert_eq!(hits[1].range.as_deref(), Some("bytes=100000-"));
    assert_ok(&ferry(&[&"verify", &site.bundle(), &"-p", &fixture("test.pub")]));
}

/// Builds, expecting a refusal whose message contains every one of `says`; no bundle appears
/// and nothing unverified enters the cache.
#[track_caller]
fn assert_build_refused(site: &Site, code: i32, says: &[&str]) {
    let o = site.build();
    assert_eq!(o.status.code(), Some(code), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    for s in says {
        assert!(err.contains(s), "expected {s:?} in: {err}");
    }
    assert!(!site.bundle().exists());
}

#[test]
fn a_wrong_sha512_is_refused_naming_artifact_and_digests() {
    let site = Site::new();
    let path = ARTIFACTS[3];
    let name = path.rsplit('/').next().unwrap();
    let wrong = ferry_artifacts::Sha512Digest::of_reader(&b"something else"[..]).unwrap();
    site.upstream.set(
        &format!("{path}.sha512"),
        Some(ferry_artifacts::write_sidecar(&wrong, name).into_bytes()),
    );
    let actual = ferry_artifacts::Sha512Digest::of_reader(&site.upstream.get(path)[..]).unwrap();
    assert_build_refused(&site, 1, &[name, &wrong.to_hex(), &actual.to_hex()]);
}

#[test]
fn a_bad_asc_is_refused() {
    let site = Site::new();
    let path = ARTIFACTS[0];
    let other_bytes = site.key.sign(&b"not the archive"[..]).unwrap();
    site.upstream.set(&format!("{path}.asc"), Some(other_bytes.into_bytes()));
    assert_build_refused(&site, 1, &["does not verify", "elastic-agent-9.1.0-linux-x86_64.tar.gz"]);
}

#[test]
fn an_asc_by_another_key_is_refused() {
    let site = Site::new();
    let path = ARTIFACTS[4];
    let stranger = SigningKey::generate("Stranger <s@example.invalid>").unwrap();
    let sig = stranger.sign(&site.upstream.get(path)[..]).unwrap();
    site.upstream.set(&format!("{path}.asc"), Some(sig.into_bytes()));
    assert_build_refused(
        &site,
        1,
        &["not in the trusted keyring", "fleet-server-9.2.2-linux-x86_64.tar.gz.asc"],
    );
}

#[test]
fn missing_files_are_all_listed() {
    let site = Site::new();
    site.upstream.set(&format!("{}.asc", ARTIFACTS[2]), None);
    // A whole platform missing upstream: every sidecar of both versions is named, not just the
    // first (the archives themselves are not fetched once a sidecar is known to be missing).
    for path in [ARTIFACTS[1], ARTIFACTS[3]] {
        for suffix in ["", ".sha512", ".asc"] {
            site.upstream.set(&format!("{path}{suffix}"), None);
        }
    }
    // Files the spec names but the site does not publish: refused inputs, exit 1.
    assert_build_refused(
        &site,
        1,
        &[
            "5 artifact file(s) could not be fetched",
            "elastic-agent-9.2.2-linux-x86_64.tar.gz.asc: not found",
            "elastic-agent-9.1.0-windows-x86_64.zip.sha512: not found",
            "elastic-agent-9.1.0-windows-x86_64.zip.asc: not found",
            "elastic-agent-9.2.2-windows-x86_64.zip.sha512: not found",
            "elastic-agent-9.2.2-windows-x86_64.zip.asc: not found",
        ],
    );
}

#[test]
fn one_build_names_missing_local_files_and_artifacts_together() {
    let site = Site::new();
    std::fs::remove_file(site.path("policy.yml")).unwrap();
    site.upstream.set(&format!("{}.sha512", ARTIFACTS[0]), None);
    assert_build_refused(
        &site,
        1,
        &[
            "1 local file(s) cannot go into the bundle",
            "policy.yml: No such file",
            "1 artifact file(s) could not be fetched",
            "elastic-agent-9.1.0-linux-x86_64.tar.gz.sha512: not found",
        ],
    );
    // Without the upstream PGP key nothing can be verified, so nothing is fetched; the key is
    // named with the other local files, and where to get Elastic's is pointed at.
    std::fs::remove_file(site.path("GPG-KEY-test")).unwrap();
    let hits = site.upstream.hits().len();
    assert_build_refused(
        &site,
        1,
        &["2 local file(s)", "policy.yml", "the upstream PGP key", "GPG-KEY-test: No such file"],
    );
    assert_eq!(site.upstream.hits().len(), hits, "nothing fetched without the key");
    let o = ferry(&[&"plan", &site.path("spec.toml"), &"--cache", &site.path("cache")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let missing = stdout(&o).lines().filter(|l| l.contains("MISSING")).count();
    assert_eq!(missing, 2, "{}", stdout(&o));
}

#[test]
fn bad_policies_and_certificates_are_refused_naming_the_file() {
    let site = Site::new();
    std::fs::write(site.path("policy.yml"), "id: linux\nrevision: 4\ninputs: []\n").unwrap();
    assert_build_refused(&site, 1, &["policy.yml", "`outputs` is missing"]);
    std::fs::write(site.path("policy.yml"), POLICY).unwrap();

    std::fs::write(
        site.path("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    site.write_spec("[[file]]\nsource = \"broken.pem\"\nkind = \"certificate\"\n");
    assert_build_refused(&site, 1, &["broken.pem", "does not parse"]);

    let demo_ca =
        std::fs::read_to_string(fixture("../../../examples/demo/certificates/demo-ca.pem"))
            .unwrap();
    let with_key =
        format!("{demo_ca}-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n");
    std::fs::write(site.path("tls.pem"), with_key).unwrap();
    site.write_spec("[[file]]\nsource = \"tls.pem\"\nkind = \"certificate\"\n");
    assert_build_refused(&site, 1, &["tls.pem", "private key"]);
}

#[test]
fn a_local_mirror_folder_works_like_the_download_site() {
    let site = Site::new();
    let mirror = site.path("mirror");
    for path in ARTIFACTS {
        for suffix in ["", ".sha512", ".asc"] {
            let file = mirror.join(format!("{path}{suffix}"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, site.upstream.get(&format!("{path}{suffix}"))).unwrap();
        }
    }
    let spec = std::fs::read_to_string(site.path("spec.toml")).unwrap();
    let spec = spec.replace(&format!("url = \"{}\"", site.upstream.url), "dir = \"mirror\"");
    std::fs::write(site.path("spec.toml"), spec).unwrap();
    assert_ok(&site.build());
    assert!(site.upstream.hits().is_empty());
    assert_eq!(entries(&site.bundle()).len(), 17);
    // A file missing from the folder is named like a 404.
    std::fs::remove_file(mirror.join(format!("{}.asc", ARTIFACTS[0]))).unwrap();
    std::fs::remove_dir_all(site.path("cache")).unwrap();
    std::fs::remove_dir_all(site.path("out")).unwrap();
    assert_build_refused(&site, 1, &["elastic-agent-9.1.0-linux-x86_64.tar.gz.asc: not found"]);
}
