//! Integration packages across the gap: `ferry build` selects them from a package registry
//! (an in-process one, answering as Elastic's does, its packages signed with a PGP key made
//! here), the appliance imports the bundle, and a client making Kibana's calls (fleet's
//! `services/epm/registry/index.ts`: the latest package for this Kibana, its info, its
//! archive and signature) over HTTPS with the stock `curl` gets the package, which the stock
//! `gpg` verifies with the key the build checked it with. `status` says how old they are.

use std::collections::HashMap;

use ferry_artifacts::pgp::SigningKey;
use ferry_testkit::{Upstream, package_manifest, package_zip};
use serde_json::{Value, json};

use crate::support::{Site, binary, run_ok};

fn curl(site: &Site, port: u16, path: &str, out: Option<&str>) -> Vec<u8> {
    let mut cmd = ferry_manifests::test_tools::tool("curl");
    cmd.current_dir(site.path())
        .args(["-sS", "--fail", "--cacert", "data/tls/ca.pem"])
        .arg(format!("https://127.0.0.1:{port}/registry{path}"));
    if let Some(file) = out {
        cmd.args(["-o", file]);
    }
    run_ok(&mut cmd).stdout
}

#[test]
fn kibana_finds_installs_and_verifies_a_package_the_bundle_carried() {
    let site = Site::new();
    let key = SigningKey::generate("Elastic test <test@example.invalid>").unwrap();
    let mut files = HashMap::new();
    let mut hits = Vec::new();
    // Two versions, for two Kibana majors: the appliance must offer Kibana 9.2 only its own.
    for (version, kibana) in [("1.0.0", "^8.0.0"), ("1.2.0", "^9.0.0")] {
        let manifest = package_manifest(
            "nginx",
            version,
            &format!("conditions:\n  kibana:\n    version: \"{kibana}\"\n"),
        );
        let zip = package_zip(
            "nginx",
            version,
            &[("manifest.yml", &manifest), ("docs/README.md", "# nginx\n")],
        );
        let path = format!("/epr/nginx/nginx-{version}.zip");
        files.insert(format!("{path}.sig"), key.sign(&zip[..]).unwrap().into_bytes());
        files.insert(path.clone(), zip);
        hits.push(json!({
            "name": "nginx", "version": version, "type": "integration",
            "download": path, "signature_path": format!("{path}.sig"),
        }));
    }
    files.insert(
        "/search?package=nginx&all=true&prerelease=true".into(),
        serde_json::to_vec(&hits).unwrap(),
    );
    let registry = Upstream::start(files);
    std::fs::write(site.path().join("GPG-KEY-elastic"), key.public_armored()).unwrap();
    std::fs::write(
        site.path().join("packages.toml"),
        format!(
            "[bundle]\nname = \"site\"\nsequence = 1\n\
             [registry]\nurl = \"{}\"\npgp_key = \"GPG-KEY-elastic\"\n\
             [[integration]]\nname = \"nginx\"\nversion = \">=1.0.0\"\nall = true\n",
            registry.root()
        ),
    )
    .unwrap();
    run_ok(binary("ferry").current_dir(site.path()).args([
        "build",
        "packages.toml",
        "--out",
        "dist",
        "-q",
    ]));

    let port = site.configure("", "");
    site.admin(&["import", "dist/site-1.ferry"]);
    // The operator sees how old the content is: the packages' own date (the test zips' is
    // the zip format's earliest, 1980-01-01).
    // (`status` exits non-zero here: no server runs yet.)
    let status = |args: &[&str]| site.appliance().args(args).output().unwrap().stdout;
    let report: Value = serde_json::from_slice(&status(&["status", "--json"])).unwrap();
    let content = &report["active"]["content"];
    assert_eq!(content["packages"], 2, "{report}");
    assert_eq!(content["newest_package"], "1980-01-01T00:00:00Z", "{report}");
    let text = String::from_utf8(status(&["status"])).unwrap();
    assert!(text.contains("2 integration package(s), the newest made 1980-01-01 ("), "{text}");
    let _server = site.serve();

    // Kibana's calls, with the parameters it sets (kibana.version without its -SNAPSHOT).
    let found: Value = serde_json::from_slice(&curl(
        &site,
        port,
        "/search?package=nginx&prerelease=false&kibana.version=9.2.0",
        None,
    ))
    .unwrap();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["version"], "1.2.0", "the newest this Kibana can install: {found}");
    let info: Value =
        serde_json::from_slice(&curl(&site, port, "/package/nginx/1.2.0/", None)).unwrap();
    assert_eq!(info["conditions"]["kibana"]["version"], "^9.0.0", "{info}");
    let (download, signature) =
        (info["download"].as_str().unwrap(), info["signature_path"].as_str().unwrap());
    assert_eq!(download, "/epr/nginx/nginx-1.2.0.zip");
    curl(&site, port, download, Some("nginx-1.2.0.zip"));
    curl(&site, port, signature, Some("nginx-1.2.0.zip.sig"));
    assert_eq!(
        std::fs::read(site.path().join("nginx-1.2.0.zip")).unwrap(),
        registry.get_raw("/epr/nginx/nginx-1.2.0.zip"),
        "the archive is the registry's, byte for byte"
    );
    let categories: Value = serde_json::from_slice(&curl(
        &site,
        port,
        "/categories?prerelease=true&include_policy_templates=true&kibana.version=9.2.0",
        None,
    ))
    .unwrap();
    assert!(categories.is_array(), "{categories}");

    // Kibana checks the signature with Elastic's key; here the stock gpg does.
    let gnupg = site.path().join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    let gpg = |args: &[&str]| {
        let mut cmd = ferry_manifests::test_tools::tool("gpg");
        cmd.current_dir(site.path()).arg("--homedir").arg(&gnupg).arg("--batch").args(args);
        run_ok(&mut cmd)
    };
    gpg(&["--import", "GPG-KEY-elastic"]);
    gpg(&["--verify", "nginx-1.2.0.zip.sig", "nginx-1.2.0.zip"]);
}
