//! The package registry (`/registry/…`) against Elastic's own expectations: the packages of
//! package-registry's `testdata/` (read from a git directory at test time, never copied here:
//! they are under the Elastic License) zipped in the registry's layout, carried in a signed
//! bundle, imported, and each URL of its `TestEndpoints` (and the artifact, signature,
//! static-file and package index tests, `TestAllPackageIndex`'s every package version
//! included) asked of the real server over loopback HTTPS, the answer compared with the golden
//! file: JSON as JSON values (array order included), text byte for byte.
//!
//! `FERRY_EPR_REPO` names the git directory (default: the mirror on the development machine);
//! without it the test says so on one line and passes, unless `FERRY_REQUIRE_EPR_GOLDEN=1`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_manifests::{Compression, Kind, Metadata, SidecarFormat};
use ferry_testkit::payload;

use crate::support::{Fixture, Server, assert_ok};

const DEFAULT_REPO: &str = "/work/.mirror/elastic+package-registry/repo";
const REQUIRE: &str = "FERRY_REQUIRE_EPR_GOLDEN";

/// Golden URLs served and compared (`main_test.go`), by the golden file they must produce.
const COVERED: &[(&str, &str)] = &[
    ("/", "index.json"),
    ("/index.json", "index.json"),
    ("/search", "search.json"),
    ("/search?all=true", "search-all.json"),
    ("/categories", "categories.json"),
    ("/categories?experimental=true", "categories-experimental.json"),
    ("/categories?experimental=foo", "categories-experimental-error.txt"),
    ("/categories?experimental=true&kibana.version=6.5.2", "categories-kibana652.json"),
    ("/categories?prerelease=true", "categories-prerelease.json"),
    ("/categories?prerelease=foo", "categories-prerelease-error.txt"),
    ("/categories?prerelease=true&kibana.version=6.5.2", "categories-prerelease-kibana652.json"),
    ("/categories?include_policy_templates=true", "categories-include-policy-templates.json"),
    ("/categories?include_policy_templates=foo", "categories-include-policy-templates-error.txt"),
    (
        "/categories?capabilities=observability,security&prerelease=true",
        "categories-prerelease-capabilities-observability-security.json",
    ),
    (
        "/categories?capabilities=none&prerelease=true",
        "categories-prerelease-capabilities-none.json",
    ),
    (
        "/categories?spec.min=1.1&spec.max=2.10&prerelease=true",
        "categories-spec-min-1.1.0-max-2.10.0.json",
    ),
    ("/categories?spec.max=2.10&prerelease=true", "categories-spec-max-2.10.0.json"),
    ("/categories?spec.max=2.10.1&prerelease=true", "categories-spec-max-error.txt"),
    (
        "/categories?discovery=fields:process.pid&prerelease=true",
        "categories-discovery-fields-process-pid.txt",
    ),
    (
        "/categories?discovery=datasets:good_content.errors&prerelease=true",
        "categories-discovery-datasets.txt",
    ),
    (
        "/categories?discovery=datasets:good_content.errors&prerelease=true&discovery=fields:process.pid",
        "categories-discovery-multiple.txt",
    ),
    (
        "/categories?discovery=datasets:good_content.errors&prerelease=true&discovery=fields:process.path",
        "categories-discovery-multiple-no-match.txt",
    ),
    ("/search?kibana.version=6.5.2", "search-kibana652.json"),
    ("/search?kibana.version=7.2.1", "search-kibana721.json"),
    ("/search?kibana.version=8.0.0", "search-kibana800.json"),
    ("/search?category=web", "search-category-web.json"),
    ("/search?category=observability", "search-category-observability-subcategories.json"),
    ("/search?category=web&all=true", "search-category-web-all.json"),
    ("/search?category=custom", "search-category-custom.json"),
    ("/search?package=example", "search-package-example.json"),
    ("/search?package=example&all=true", "search-package-example-all.json"),
    ("/search?experimental=true", "search-package-experimental.json"),
    ("/search?experimental=foo", "search-package-experimental-error.txt"),
    ("/search?category=datastore&experimental=true", "search-category-datastore.json"),
    ("/search?prerelease=true", "search-package-prerelease.json"),
    ("/search?prerelease=foo", "search-package-prerelease-error.txt"),
    ("/search?category=datastore&prerelease=true", "search-category-datastore-prerelease.json"),
    ("/search?type=content&prerelease=true", "search-content-packages.json"),
    ("/search?type=input&prerelease=true", "search-input-packages.json"),
    (
        "/search?type=input&package=integration_input&prerelease=true",
        "search-input-integration-package.json",
    ),
    (
        "/search?type=integration&package=integration_input&prerelease=true",
        "search-integration-integration-package.json",
    ),
    (
        "/search?capabilities=observability,security&prerelease=true",
        "search-prerelease-capabilities-observability-security.json",
    ),
    ("/search?capabilities=none&prerelease=true", "search-prerelease-capabilities-none.json"),
    ("/search?spec.min=1.1&spec.max=2.10&prerelease=true", "search-spec-min-1.1.0-max-2.10.0.json"),
    ("/search?spec.max=2.10&prerelease=true", "search-spec-max-2.10.0.json"),
    ("/search?spec.max=2.10.1&prerelease=true", "search-spec-max-error.txt"),
    (
        "/search?prerelease=true&discovery=fields:process.pid",
        "search-discovery-fields-process-pid.txt",
    ),
    (
        "/search?prerelease=true&discovery=fields:non.existing.field",
        "search-discovery-fields-empty.txt",
    ),
    (
        "/search?prerelease=true&discovery=datasets:good_content.errors",
        "search-discovery-datasets.txt",
    ),
    (
        "/search?prerelease=true&discovery=datasets:good_content.errors&discovery=fields:process.pid",
        "search-discovery-multiple.txt",
    ),
    (
        "/search?prerelease=true&discovery=datasets:good_content.errors&discovery=fields:process.path",
        "search-discovery-multiple-no-match.txt",
    ),
    ("/search?package=agent_version&agent.version=9.1.0", "search-agent-910.json"),
    ("/search?package=agent_version&agent.version=9.5.0", "search-agent-950.json"),
    ("/categories?agent.version=9.1.0", "categories-agent-910.json"),
    ("/categories?agent.version=9.5.0", "categories-agent-950.json"),
    ("/search?internal=true", "search-package-internal.json"),
    ("/search?package=yamlpipeline&unknown=true", "search-allowed-unknown-query-parameter.json"),
    ("/search?package=multiversion&all=true", "search-deprecated-package-versions.json"),
    // TestArtifacts, TestSignatures, TestZippedArtifacts, TestStatics.
    ("/epr/example/example-999.0.2.zip", "artifact-package-version-not-found.txt"),
    ("/epr/example/missing-0.1.2.zip", "artifact-package-not-found.txt"),
    ("/epr/example/example-a.b.c.zip", "artifact-package-invalid-version.txt"),
    ("/epr/example/example-1.0.1.zip.sig", "example-1.0.1.zip.sig"),
    ("/epr/example/example-0.0.1.zip.sig", "missing-signature.txt"),
    ("/epr/example/example-1.0.1.zip", "example-1.0.1.zip-preview.txt"),
    ("/epr/example/nodirentries-1.0.0.zip", "nodirentries-1.0.0.zip-preview.txt"),
    ("/package/example/1.0.0/docs/README.md", "example-1.0.0-README.md"),
    ("/package/example/1.0.0/img/kibana-envoyproxy.jpg", "example-1.0.0-screenshot.jpg"),
    ("/package/example/1.0.1/docs/README.md", "example-1.0.1-README.md"),
    ("/package/example/1.0.1/img/kibana-envoyproxy.jpg", "example-1.0.1-screenshot.jpg"),
    // TestPackageIndex; TestAllPackageIndex's URLs are found in the testdata.
    ("/package/example/1.0.0/", "package.json"),
    ("/package/example/1.0.1/", "package-zip.json"),
    ("/package/nodirentries/1.0.0/", "package-zip-nodirentries.json"),
    ("/package/missing/1.0.0/", "index-package-not-found.txt"),
    ("/package/example/999.0.0/", "index-package-revision-not-found.txt"),
    ("/package/example/a.b.c/", "index-package-invalid-version.txt"),
    ("/package/sql_input/1.0.1/", "sql-input-package-not-found.json"),
    ("/package/sql_input/0.3.0/", "sql-input-package.json"),
    ("/package/datasources/1.0.0/", "datasources-1.0.0-package.json"),
    ("/package/deprecated_input_package/1.0.0/", "package-deprecated-input-package-1.0.0.json"),
    ("/package/deprecated_input_policy/1.0.0/", "package-deprecated-input-policy-1.0.0.json"),
    (
        "/package/deprecated_integration_input/1.0.0/",
        "package-deprecated-integration-input-1.0.0.json",
    ),
    (
        "/package/deprecated_integration_stream/1.0.0/",
        "package-deprecated-integration-stream-1.0.0.json",
    ),
];

/// Golden answers for a package version that another of the same name and version hides here:
/// the registry's tests read a different set of package folders each, while our one bundle
/// carries the first met (the zips, then `second_package_path`, then `package`).
const SHADOWED: &[(&str, &str)] = &[
    // TestAllPackageIndex's folder package; the signed zip of the same version is served.
    ("/package/example/1.0.1/", "package/example/1.0.1/index.json"),
    // TestPackageIndex's, without `second_package_path`, whose 1.1.0 is served.
    ("/package/multiversion/1.1.0/", "package-multiversion-1.1.0.json"),
];

/// Golden URLs not served yet, so the gap stays in view.
const NOT_COVERED: &[(&str, &str)] = &[
    ("/favicon.ico", "favicon.ico: no favicon is served"),
    (
        "/search?package=yamlpipeline&unknown=true",
        "unknown parameters are always allowed (the registry's default)",
    ),
    (
        "/package/example/1.0.1/, /package/multiversion/1.1.0/",
        "one golden file each of two, for two packages of the same name and version (SHADOWED)",
    ),
    (
        "/epr/example/example-0.0.2.zip",
        "a directory package zipped by the registry on the fly: ours are zipped by the test, so the preview differs",
    ),
];

fn repo() -> Option<PathBuf> {
    let repo = PathBuf::from(std::env::var("FERRY_EPR_REPO").unwrap_or(DEFAULT_REPO.into()));
    if repo.join("HEAD").exists() || repo.join(".git").exists() {
        return Some(repo);
    }
    assert!(
        std::env::var(REQUIRE).as_deref() != Ok("1"),
        "{REQUIRE}=1 but no package-registry git directory at {} (set FERRY_EPR_REPO)",
        repo.display()
    );
    eprintln!(
        "skipping: no package-registry git directory at {} (set FERRY_EPR_REPO)",
        repo.display()
    );
    None
}

/// A directory package zipped as the registry's own zips are: everything below
/// `<name>-<version>/`, directories included, in path order.
fn zip_dir(dir: &Path, name: &str, version: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    let mut stack = vec![dir.to_path_buf()];
    let mut paths = BTreeSet::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            paths.insert(p);
        }
    }
    for p in paths {
        let rel = p.strip_prefix(dir).unwrap().to_str().unwrap();
        let inner = format!("{name}-{version}/{rel}");
        if p.is_dir() {
            out.add_directory(inner, options).unwrap();
        } else {
            out.start_file(inner, options).unwrap();
            out.write_all(&std::fs::read(&p).unwrap()).unwrap();
        }
    }
    out.finish().unwrap().into_inner()
}

fn name_version(manifest: &[u8]) -> (String, String) {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_slice(manifest).unwrap();
    let text = |k: &str| match &v[k] {
        serde_yaml_ng::Value::String(s) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    (text("name"), text("version"))
}

#[test]
fn answers_as_elastics_package_registry() {
    let Some(repo) = repo() else { return };
    let fixture = Fixture::new();
    let testdata = fixture.path("epr");
    std::fs::create_dir_all(&testdata).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("git --git-dir=\"$0\" archive HEAD testdata | tar -x -C \"$1\"")
        .arg(&repo)
        .arg(&testdata)
        .status()
        .unwrap();
    assert!(status.success());
    let testdata = testdata.join("testdata");

    // The registry's order: its zips, then the second path, then the first; a package met
    // again is the first one's.
    let src = fixture.path("packages");
    std::fs::create_dir_all(&src).unwrap();
    let mut seen = BTreeSet::new();
    let mut files = Vec::new();
    let mut add = |name: String, version: String, zip: Vec<u8>, sig: Option<Vec<u8>>| {
        if !seen.insert((name.clone(), version.clone())) {
            return;
        }
        let entry = format!("packages/{name}-{version}.zip");
        let zip_file = src.join(format!("{name}-{version}.zip"));
        std::fs::write(&zip_file, zip).unwrap();
        files.push(payload(
            &entry,
            zip_file,
            Kind::Package,
            Metadata::integration_package(&name, &version),
        ));
        if let Some(sig) = sig {
            let sig_file = src.join(format!("{name}-{version}.zip.sig"));
            std::fs::write(&sig_file, sig).unwrap();
            files.push(payload(
                &format!("{entry}.sig"),
                sig_file,
                Kind::ArtifactSidecar,
                Metadata::sidecar(&entry, SidecarFormat::PgpSignature),
            ));
        }
    };
    let mut zips: Vec<PathBuf> = std::fs::read_dir(testdata.join("local-storage"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "zip"))
        .collect();
    zips.sort();
    for z in zips {
        let bytes = std::fs::read(&z).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
        let manifest_name = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().into_owned())
            .find(|n| n.ends_with("/manifest.yml") && n.matches('/').count() == 1)
            .unwrap();
        let mut manifest = Vec::new();
        std::io::Read::read_to_end(&mut archive.by_name(&manifest_name).unwrap(), &mut manifest)
            .unwrap();
        let (name, version) = name_version(&manifest);
        let sig = std::fs::read(z.with_extension("zip.sig")).ok();
        add(name, version, bytes, sig);
    }
    for base in ["second_package_path", "package"] {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for pkg in std::fs::read_dir(testdata.join(base)).unwrap() {
            let pkg = pkg.unwrap().path();
            if !pkg.is_dir() {
                continue;
            }
            for version in std::fs::read_dir(pkg).unwrap() {
                let v = version.unwrap().path();
                if v.join("manifest.yml").is_file() {
                    dirs.push(v);
                }
            }
        }
        dirs.sort();
        for d in dirs {
            let (name, version) = name_version(&std::fs::read(d.join("manifest.yml")).unwrap());
            let zip = zip_dir(&d, &name, &version);
            add(name, version, zip, None);
        }
    }
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let spec = ferry_testkit::spec(
        1,
        now - time::Duration::days(1),
        now + time::Duration::days(30),
        Compression::Zstd { level: 3, workers: 1 },
    );
    let bundle = ferry_testkit::write_bundle(&fixture.path("bundles"), &spec, files, &fixture.key)
        .bundle_path;
    assert_ok(&fixture.run(&[&"import", &bundle]));
    let server = Server::start(&fixture);

    let golden = testdata.join("generated");
    let mut urls: Vec<(String, String)> =
        COVERED.iter().map(|(u, f)| ((*u).to_owned(), (*f).to_owned())).collect();
    // TestAllPackageIndex: every folder package's index JSON, by the manifests it finds.
    for base in ["second_package_path", "package"] {
        let mut manifests = Vec::new();
        for pkg in std::fs::read_dir(testdata.join(base)).unwrap() {
            let pkg = pkg.unwrap().path();
            if !pkg.is_dir() {
                continue;
            }
            for version in std::fs::read_dir(pkg).unwrap() {
                let m = version.unwrap().path().join("manifest.yml");
                if m.is_file() {
                    manifests.push(m);
                }
            }
        }
        manifests.sort();
        for m in manifests {
            let (name, version) = name_version(&std::fs::read(m).unwrap());
            let url = format!("/package/{name}/{version}/");
            let file = format!("package/{name}/{version}/index.json");
            if SHADOWED.iter().any(|(u, f)| *u == url && *f == file)
                || urls.iter().any(|(u, f)| *u == url && *f == file)
            {
                continue;
            }
            urls.push((url, file));
        }
    }
    let mut failures = Vec::new();
    for (url, file) in &urls {
        let (url, file) = (url.as_str(), file.as_str());
        let (status, headers, body) = server.get(&format!("/registry{url}"), &[]);
        let want = std::fs::read(golden.join(file)).unwrap();
        let problem = compare(url, file, &want, &body);
        if let Some(p) = problem {
            failures.push(format!("{url} ({file}, status {status}): {p}"));
            continue;
        }
        if (200..300).contains(&status) {
            let cache: Vec<_> =
                headers.get_all("cache-control").iter().map(|v| v.to_str().unwrap()).collect();
            if cache.len() != 2 || !cache[0].starts_with("max-age=") || cache[1] != "public" {
                failures.push(format!("{url}: Cache-Control {cache:?}"));
            }
            if headers.get("access-control-allow-origin").is_none_or(|v| v != "*") {
                failures.push(format!("{url}: no Access-Control-Allow-Origin: *"));
            }
        } else if !(400..500).contains(&status) {
            failures.push(format!("{url}: status {status}"));
        }
    }
    eprintln!(
        "{} golden URLs compared; not covered yet: {}",
        urls.len(),
        NOT_COVERED.iter().map(|(u, why)| format!("{u} ({why})")).collect::<Vec<_>>().join("; ")
    );
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        urls.len(),
        failures.join("\n")
    );
}

/// `None` when `got` is what the golden file `want` says.
fn compare(url: &str, file: &str, want: &[u8], got: &[u8]) -> Option<String> {
    if file.ends_with("-preview.txt") {
        // The registry's test lists the zip it got: "size name" per entry.
        let mut archive = match zip::ZipArchive::new(std::io::Cursor::new(got)) {
            Ok(a) => a,
            Err(e) => return Some(format!("not a zip: {e}")),
        };
        let mut listing = String::new();
        for i in 0..archive.len() {
            let f = archive.by_index(i).unwrap();
            listing.push_str(&format!("{} {}\n", f.size(), f.name().unwrap()));
        }
        return (listing.trim() != String::from_utf8_lossy(want).trim())
            .then(|| "listing differs".into());
    }
    let parsed = (
        serde_json::from_slice::<serde_json::Value>(want),
        serde_json::from_slice::<serde_json::Value>(got),
    );
    if let (Ok(mut w), Ok(mut g)) = parsed {
        if url == "/" || url == "/index.json" {
            // The version is the appliance's, not the registry's.
            w["service.version"] = serde_json::Value::Null;
            g["service.version"] = serde_json::Value::Null;
        }
        return (w != g).then(|| {
            format!(
                "JSON differs: got {}",
                String::from_utf8_lossy(got).chars().take(3000).collect::<String>()
            )
        });
    }
    let trim = |b: &[u8]| b.trim_ascii().to_vec();
    (trim(want) != trim(got)).then(|| {
        format!("body differs: got {:?}", String::from_utf8_lossy(&got[..got.len().min(300)]))
    })
}
