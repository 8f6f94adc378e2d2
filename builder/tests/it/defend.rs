//! Elastic Defend's global artifacts against an in-process CDN: manifest zips signed with a key
//! the stock `openssl` made (RSASSA-PKCS1-v1_5, SHA-256, as Elastic's CDN signs), the files they
//! list fetched and checked, and every way a manifest or a file can be wrong refused by name
//! with no bundle written.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use crate::support::{Upstream, assert_ok, ferry, fixture, stderr, stdout};
use ferry_manifests::test_tools::tool;

/// Two RSA-2048 keys made once per test run by the stock openssl: Elastic's (stand-in) and
/// another signer's.
struct Keys {
    _dir: tempfile::TempDir,
    elastic: PathBuf,
    elastic_pub: String,
    other: PathBuf,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let key = dir.path().join(name);
            let o = tool("openssl")
                .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
                .arg(&key)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            key
        };
        let (elastic, other) = (make("elastic.key"), make("other.key"));
        let o = tool("openssl").args(["pkey", "-pubout", "-in"]).arg(&elastic).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let elastic_pub = String::from_utf8(o.stdout).unwrap();
        assert!(elastic_pub.starts_with("-----BEGIN PUBLIC KEY-----"), "{elastic_pub}");
        Keys { _dir: dir, elastic, elastic_pub, other }
    })
}

/// `openssl dgst -sha256 -sign KEY` over `message`: the signature Elastic's CDN publishes as
/// `manifest.sig`.
fn sign(key: &Path, message: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (json, sig) = (dir.path().join("manifest.json"), dir.path().join("manifest.sig"));
    std::fs::write(&json, message).unwrap();
    let o = tool("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg("-out")
        .arg(&sig)
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(sig).unwrap()
}

/// A manifest zip holding `entries`, each written at 2026-12-01 08:30:00 (deterministic, so
/// the recorded `date` is known).
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let when = zip::DateTime::from_date_and_time(2026, 12, 1, 8, 30, 0).unwrap();
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(when);
    for (name, bytes) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

fn sha256_hex(bytes: &[u8]) -> String {
    ferry_manifests::Sha256Digest::of(bytes).to_hex()
}

/// One artifact of a manifest: its name, where it is served, and its bytes.
struct Art {
    name: &'static str,
    url: String,
    bytes: Vec<u8>,
}

fn art(name: &'static str, body: &str) -> Art {
    let bytes = format!("{name}: {body}").repeat(500).into_bytes();
    let url = format!("/downloads/endpoint/artifacts/{name}/{}", sha256_hex(&bytes));
    Art { name, url, bytes }
}

/// The JSON of a manifest listing `arts`, as Elastic spells its fields.
fn manifest_json(version: &str, arts: &[&Art]) -> serde_json::Value {
    let artifacts: serde_json::Map<String, serde_json::Value> = arts
        .iter()
        .map(|a| {
            (
                a.name.to_owned(),
                serde_json::json!({
                    "relative_url": a.url,
                    "encoded_sha256": sha256_hex(&a.bytes),
                    "encoded_size": a.bytes.len(),
                    "decoded_sha256": sha256_hex(b"decoded"),
                    "decoded_size": 7,
                    "compression_algorithm": "zlib",
                    "encryption_algorithm": "none",
                }),
            )
        })
        .collect();
    serde_json::json!({
        "manifest_version": format!("1.0.{}", version.replace('.', "")),
        "schema_version": "v1",
        "artifacts": artifacts,
    })
}

/// A signed manifest zip of `json` (signed by `key`).
fn signed_zip(json: &serde_json::Value, key: &Path) -> Vec<u8> {
    let bytes = serde_json::to_vec_pretty(json).unwrap();
    let sig = sign(key, &bytes);
    zip_of(&[("manifest.json", &bytes), ("manifest.sig", &sig)])
}

const V_NEW: &str = "9.2.2";
const V_OLD: &str = "8.19.4";

fn manifest_url(version: &str) -> String {
    format!("/downloads/endpoint/manifest/artifacts-{version}.zip")
}

/// A CDN with two Endpoint versions' manifests: `shared` listed by both, `new` by 9.2.2 only,
/// `old` by 8.19.4 only.
struct Cdn {
    dir: tempfile::TempDir,
    upstream: Upstream,
    shared: Art,
    new: Art,
    old: Art,
}

impl Cdn {
    fn new() -> Self {
        let (shared, new, old) = (
            art("endpoint-trustlist-linux-v1", "trusted"),
            art("endpoint-exceptionlist-windows-v1", "exceptions"),
            art("diagnostic-configuration-v1", "diagnostics"),
        );
        let mut files = HashMap::new();
        for a in [&shared, &new, &old] {
            files.insert(a.url.clone(), a.bytes.clone());
        }
        let key = &keys().elastic;
        files.insert(manifest_url(V_NEW), signed_zip(&manifest_json(V_NEW, &[&shared, &new]), key));
        files.insert(manifest_url(V_OLD), signed_zip(&manifest_json(V_OLD, &[&shared, &old]), key));
        let upstream = Upstream::start(files);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("endpoint.pem"), &keys().elastic_pub).unwrap();
        let cdn = Self { dir, upstream, shared, new, old };
        cdn.write_spec(true);
        cdn
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CDN's root: the support upstream's URL names its `downloads/`.
    fn root(&self) -> String {
        self.upstream.url.strip_suffix("downloads/").unwrap().to_owned()
    }

    fn write_spec(&self, with_defend: bool) {
        let defend = if with_defend {
            format!("[defend]\nurl = \"{}\"\npublic_key = \"endpoint.pem\"\n", self.root())
        } else {
            String::new()
        };
        let spec = format!(
            "[bundle]\nname = \"site\"\nsequence = 1\n{defend}\
             [[endpoint_artifacts]]\nversions = [\"{V_NEW}\", \"{V_OLD}\"]\n"
        );
        std::fs::write(self.path("spec.toml"), spec).unwrap();
    }

    /// Serves `bytes` at `url` (an absolute request path), or 404 with `None`.
    fn set(&self, url: &str, bytes: Option<Vec<u8>>) {
        self.upstream.set(url.strip_prefix("/downloads/").unwrap(), bytes);
    }

    fn build_into(&self, out: &str) -> Output {
        ferry(&[
            &"build",
            &self.path("spec.toml"),
            &"--secret-key",
            &fixture("test.key"),
            &"--out",
            &self.path(out),
            &"--cache",
            &self.path("cache"),
            &"--created",
            &"2026-11-01T00:00:00Z",
            &"--attempts",
            &"2",
            &"--json",
        ])
    }

    fn build(&self) -> Output {
        self.build_into("out")
    }

    fn bundle(&self) -> PathBuf {
        self.path("out/site-1.ferry")
    }

    /// Asserts that a build was refused (exit 1) naming every `check`, and wrote nothing.
    fn refused(&self, checks: &[&str]) -> String {
        let o = self.build();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "a refusal: {err}");
        for check in checks {
            assert!(err.contains(check), "names {check:?}: {err}");
        }
        assert!(!self.bundle().exists(), "no bundle written");
        assert!(
            std::fs::read_dir(self.path("out")).map_or(true, |mut d| d.next().is_none()),
            "nothing in the output folder"
        );
        err
    }
}

fn manifest_of(bundle: &Path) -> serde_json::Value {
    let o = ferry(&[&"inspect", &bundle, &"--json"]);
    assert_ok(&o);
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["manifest"].clone()
}

fn extract(bundle: &Path, entry: &str) -> Vec<u8> {
    let o = tool("tar").arg("--zstd").arg("-xOf").arg(bundle).arg(entry).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn a_good_build_carries_both_manifests_and_each_artifact_once() {
    let cdn = Cdn::new();
    let o = cdn.build();
    assert_ok(&o);
    let manifest = manifest_of(&cdn.bundle());
    let files = manifest["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    let mut expected: Vec<String> = [&cdn.shared, &cdn.new, &cdn.old]
        .iter()
        .map(|a| a.url[1..].to_owned())
        .chain([V_NEW, V_OLD].map(|v| manifest_url(v)[1..].to_owned()))
        .collect();
    expected.sort();
    assert_eq!(paths, expected, "the shared artifact appears once");
    assert!(files.iter().all(|f| f["kind"] == "endpoint-artifact"), "{files:?}");
    let zip = files.iter().find(|f| f["path"] == manifest_url(V_NEW)[1..]).unwrap();
    assert_eq!(
        zip["metadata"],
        serde_json::json!({
            "endpoint_version": V_NEW,
            "manifest_version": "1.0.922",
            "date": "2026-12-01T08:30:00Z",
        })
    );
    // The bytes are the CDN's, so the mirror's ETag (the SHA-256) is the published file's.
    for a in [&cdn.shared, &cdn.new] {
        let entry = files.iter().find(|f| f["path"] == a.url[1..]).unwrap();
        assert_eq!(entry["sha256"], sha256_hex(&a.bytes));
        assert_eq!(extract(&cdn.bundle(), &a.url[1..]), a.bytes);
    }
    let published = cdn.upstream.get(&manifest_url(V_OLD)["/downloads/".len()..]);
    assert_eq!(extract(&cdn.bundle(), &manifest_url(V_OLD)[1..]), published);
    assert_ok(&ferry(&[&"verify", &cdn.bundle(), &"-p", &fixture("test.pub")]));

    let o = ferry(&[&"inspect", &cdn.bundle()]);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(text.contains("endpoint artifact manifests"), "{text}");
    assert!(text.contains("2026-12-01T08:30:00Z"), "{text}");
    assert!(text.contains("3 endpoint artifact file(s) listed by them"), "{text}");

    // A rebuild fetches the manifests again (Elastic updates them) but no artifact: they are
    // cached by their SHA-256.
    let before = cdn.upstream.hits().len();
    assert_ok(&cdn.build_into("again"));
    let again: Vec<String> = cdn.upstream.hits()[before..].iter().map(|h| h.path.clone()).collect();
    let mut manifests = vec![manifest_url(V_OLD), manifest_url(V_NEW)];
    manifests.sort();
    let mut fetched = again.clone();
    fetched.sort();
    assert_eq!(fetched, manifests, "only the manifests: {again:?}");
    assert_eq!(
        std::fs::read(cdn.path("again/site-1.ferry")).unwrap(),
        std::fs::read(cdn.bundle()).unwrap(),
        "the same inputs make the same bundle"
    );
}

#[test]
fn a_mounted_copy_of_the_cdn_builds_the_same_bundle() {
    let cdn = Cdn::new();
    assert_ok(&cdn.build());
    // The same files, laid out as the CDN serves them, in a folder next to the spec.
    let copy = cdn.path("cdn-copy");
    for a in [&cdn.shared, &cdn.new, &cdn.old] {
        let file = copy.join(&a.url[1..]);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, &a.bytes).unwrap();
    }
    for v in [V_NEW, V_OLD] {
        let file = copy.join(&manifest_url(v)[1..]);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, cdn.upstream.get(&manifest_url(v)["/downloads/".len()..])).unwrap();
    }
    let spec = std::fs::read_to_string(cdn.path("spec.toml")).unwrap();
    let spec = spec.replace(&format!("url = \"{}\"", cdn.root()), "dir = \"cdn-copy\"");
    assert!(spec.contains("dir = \"cdn-copy\""), "{spec}");
    std::fs::write(cdn.path("spec.toml"), spec).unwrap();
    std::fs::remove_dir_all(cdn.path("cache")).unwrap();
    let before = cdn.upstream.hits().len();
    assert_ok(&cdn.build_into("from-dir"));
    assert_eq!(cdn.upstream.hits().len(), before, "nothing fetched over HTTP");
    assert_eq!(
        std::fs::read(cdn.path("from-dir/site-1.ferry")).unwrap(),
        std::fs::read(cdn.bundle()).unwrap()
    );
    // A copy with a forged file is refused as the CDN would be (with an empty cache: a
    // verified cached copy is what the manifest asks for, and would be taken instead).
    std::fs::write(copy.join(&cdn.new.url[1..]), b"forged").unwrap();
    std::fs::remove_dir_all(cdn.path("cache")).unwrap();
    let o = cdn.build_into("forged");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("{}: size 6 bytes but the manifest says", cdn.new.url)));
}

#[test]
fn plan_lists_the_manifests_and_says_their_artifacts_come_later() {
    let cdn = Cdn::new();
    let o = ferry(&[&"plan", &cdn.path("spec.toml"), &"--cache", &cdn.path("cache")]);
    assert_ok(&o);
    let text = stdout(&o);
    for v in [V_NEW, V_OLD] {
        assert!(text.contains(&format!("{}{}", cdn.root(), &manifest_url(v)[1..])), "{text}");
    }
    assert!(!text.contains(&cdn.shared.url), "artifacts are not known yet: {text}");
    assert!(text.contains("known only once a build fetches the manifests"), "{text}");
    assert!(cdn.upstream.hits().is_empty(), "plan fetches nothing");
}

#[test]
fn a_damaged_signature_is_refused() {
    let cdn = Cdn::new();
    let json = serde_json::to_vec_pretty(&manifest_json(V_NEW, &[&cdn.shared, &cdn.new])).unwrap();
    let mut sig = sign(&keys().elastic, &json);
    sig[100] ^= 1;
    cdn.set(
        &manifest_url(V_NEW),
        Some(zip_of(&[("manifest.json", &json), ("manifest.sig", &sig)])),
    );
    cdn.refused(&["artifacts-9.2.2.zip: manifest.sig does not verify with endpoint.pem"]);
}

#[test]
fn a_manifest_signed_by_another_key_is_refused() {
    let cdn = Cdn::new();
    let json = manifest_json(V_OLD, &[&cdn.shared, &cdn.old]);
    cdn.set(&manifest_url(V_OLD), Some(signed_zip(&json, &keys().other)));
    let err =
        cdn.refused(&["artifacts-8.19.4.zip: manifest.sig does not verify with endpoint.pem"]);
    assert!(!err.contains("artifacts-9.2.2.zip"), "the good manifest passes: {err}");
}

#[test]
fn a_signed_manifest_edited_afterwards_is_refused() {
    // The signature covers the exact bytes: one more space in manifest.json breaks it.
    let cdn = Cdn::new();
    let json = serde_json::to_vec_pretty(&manifest_json(V_NEW, &[&cdn.shared])).unwrap();
    let sig = sign(&keys().elastic, &json);
    let mut edited = json.clone();
    edited.insert(1, b' ');
    cdn.set(
        &manifest_url(V_NEW),
        Some(zip_of(&[("manifest.json", &edited), ("manifest.sig", &sig)])),
    );
    cdn.refused(&["artifacts-9.2.2.zip: manifest.sig does not verify"]);
}

#[test]
fn a_zip_without_manifest_sig_is_refused() {
    let cdn = Cdn::new();
    let json = serde_json::to_vec_pretty(&manifest_json(V_NEW, &[&cdn.new])).unwrap();
    cdn.set(&manifest_url(V_NEW), Some(zip_of(&[("manifest.json", &json)])));
    cdn.refused(&["artifacts-9.2.2.zip: holds no manifest.sig"]);
}

#[test]
fn files_that_differ_from_the_manifest_are_refused_all_at_once() {
    let cdn = Cdn::new();
    // Same length, other bytes: the hash check.
    let mut forged = cdn.new.bytes.clone();
    forged[0] ^= 1;
    cdn.set(&cdn.new.url, Some(forged.clone()));
    // One byte more: the size check.
    let mut longer = cdn.old.bytes.clone();
    longer.push(b'!');
    cdn.set(&cdn.old.url, Some(longer));
    // And one the CDN does not have.
    cdn.set(&cdn.shared.url, None);
    let err = cdn.refused(&[
        &format!(
            "{}: sha256 {} but the manifest says {}",
            cdn.new.url,
            sha256_hex(&forged),
            sha256_hex(&cdn.new.bytes)
        ),
        &format!(
            "{}: size {} bytes but the manifest says {}",
            cdn.old.url,
            cdn.old.bytes.len() + 1,
            cdn.old.bytes.len()
        ),
        &format!("{}{}: not found (HTTP 404)", cdn.root(), &cdn.shared.url[1..]),
    ]);
    assert!(err.contains("3 artifact file(s)"), "{err}");
    // Nothing unverified entered the cache: a repaired CDN then builds.
    let blobs = cdn.path("cache/blobs/sha256");
    let forged_blob = sha256_hex(&forged);
    assert!(!blobs.join(&forged_blob[..2]).join(&forged_blob[2..]).exists());
    cdn.set(&cdn.new.url, Some(cdn.new.bytes.clone()));
    cdn.set(&cdn.old.url, Some(cdn.old.bytes.clone()));
    cdn.set(&cdn.shared.url, Some(cdn.shared.bytes.clone()));
    assert_ok(&cdn.build());
}

#[test]
fn a_wrong_size_in_the_manifest_is_refused() {
    // The file is the one whose hash the manifest gives, but the manifest's size is not its.
    let cdn = Cdn::new();
    let mut json = manifest_json(V_NEW, &[&cdn.shared, &cdn.new]);
    json["artifacts"][cdn.new.name]["encoded_size"] = serde_json::json!(7);
    cdn.set(&manifest_url(V_NEW), Some(signed_zip(&json, &keys().elastic)));
    cdn.refused(&[&format!(
        "{}: size {} bytes but the manifest says 7",
        cdn.new.url,
        cdn.new.bytes.len()
    )]);
}

#[test]
fn relative_urls_outside_downloads_or_with_dot_dot_are_refused() {
    for (url, check) in [
        ("/downloads/endpoint/../../etc/passwd", "is not a safe path"),
        ("/downloads/endpoint/./x", "is not a safe path"),
        ("/api/fleet/artifacts/x", "is not a path below /downloads/"),
        ("downloads/endpoint/x", "is not a path below /downloads/"),
        ("https://evil.example/downloads/x", "is not a path below /downloads/"),
        ("/downloads/endpoint/%2e%2e/x", "has percent-encoding"),
    ] {
        let cdn = Cdn::new();
        let mut json = manifest_json(V_NEW, &[&cdn.shared, &cdn.new]);
        json["artifacts"][cdn.new.name]["relative_url"] = serde_json::json!(url);
        cdn.set(&manifest_url(V_NEW), Some(signed_zip(&json, &keys().elastic)));
        cdn.refused(&[&format!(
            "artifacts-9.2.2.zip: artifact {}: relative_url {url:?} {check}",
            cdn.new.name
        )]);
        assert!(
            !cdn.upstream
                .hits()
                .iter()
                .any(|h| h.path.contains("passwd") || h.path.contains("/api/")),
            "a refused path is never requested"
        );
    }
}

#[test]
fn a_file_listed_at_a_manifests_path_is_refused() {
    let cdn = Cdn::new();
    let mut json = manifest_json(V_NEW, &[&cdn.shared, &cdn.new]);
    json["artifacts"][cdn.new.name]["relative_url"] = serde_json::json!(manifest_url(V_OLD));
    cdn.set(&manifest_url(V_NEW), Some(signed_zip(&json, &keys().elastic)));
    cdn.refused(&[&format!(
        "{}: artifacts-9.2.2.zip lists a file at a manifest's own path",
        manifest_url(V_OLD)
    )]);
}

#[test]
fn endpoint_artifacts_without_defend_is_a_spec_error() {
    let cdn = Cdn::new();
    cdn.write_spec(false);
    let o = cdn.build();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "a spec error: {err}");
    assert!(err.contains("[[endpoint_artifacts]]") && err.contains("[defend]"), "{err}");
    assert!(!cdn.bundle().exists());
    assert!(cdn.upstream.hits().is_empty());
}

#[test]
fn a_key_that_is_not_an_rsa_public_key_is_refused_by_name() {
    let cdn = Cdn::new();
    // The private key is PEM, but not what the spec must name.
    std::fs::copy(&keys().elastic, cdn.path("endpoint.pem")).unwrap();
    cdn.refused(&["endpoint.pem", "not a \"PUBLIC KEY\""]);
}

#[test]
fn a_damaged_cached_artifact_is_fetched_again() {
    use std::os::unix::fs::PermissionsExt as _;
    let cdn = Cdn::new();
    assert_ok(&cdn.build());
    let hex = sha256_hex(&cdn.new.bytes);
    let blob = cdn.path("cache/blobs/sha256").join(&hex[..2]).join(&hex[2..]);
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, b"bit rot").unwrap();
    let before = cdn.upstream.hits().len();
    assert_ok(&cdn.build_into("again"));
    let fetched: Vec<String> =
        cdn.upstream.hits()[before..].iter().map(|h| h.path.clone()).collect();
    assert!(fetched.contains(&cdn.new.url), "the damaged one again: {fetched:?}");
    assert!(!fetched.contains(&cdn.shared.url), "not the sound ones: {fetched:?}");
    assert_eq!(extract(&cdn.path("again/site-1.ferry"), &cdn.new.url[1..]), cdn.new.bytes);
}
