//! Elastic Defend's global artifacts (kind `endpoint-artifact`) through the download mirror:
//! a manifest zip and an artifact at Elastic's paths, with the ETag Endpoint needs to notice an
//! update (Elastic's air-gapped guide requires one of a mirror), and nothing else answered;
//! `status` names the manifest and its date.

use ferry_manifests::{Compression, Kind, Metadata};
use ferry_testkit::payload;

use crate::support::{Fixture, Server, assert_ok, raw_status};

const MANIFEST: &str = "downloads/endpoint/manifest/artifacts-9.2.2.zip";
const ARTIFACT: &str = "downloads/endpoint/artifacts/endpoint-trustlist-linux-v1/0123abcd";

#[test]
fn the_mirror_serves_endpoint_artifacts_with_etags() {
    let f = Fixture::new();
    let src = f.path("defend");
    std::fs::create_dir_all(&src).unwrap();
    let manifest_bytes = b"PK\x03\x04 a manifest zip, opaque to the appliance".to_vec();
    let artifact_bytes = b"an encoded artifact ".repeat(1000);
    std::fs::write(src.join("manifest.zip"), &manifest_bytes).unwrap();
    std::fs::write(src.join("artifact"), &artifact_bytes).unwrap();
    let files = vec![
        payload(
            MANIFEST,
            src.join("manifest.zip"),
            Kind::EndpointArtifact,
            Metadata::endpoint_manifest(
                "9.2.2",
                Some("1.0.922"),
                Some(time::macros::datetime!(2026-12-01 08:30 UTC)),
            ),
        ),
        payload(ARTIFACT, src.join("artifact"), Kind::EndpointArtifact, Metadata::default()),
    ];
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let spec = ferry_testkit::spec(
        1,
        now - time::Duration::days(1),
        now + time::Duration::days(30),
        Compression::Zstd { level: 3, workers: 1 },
    );
    let bundle = ferry_testkit::write_bundle(&f.path("bundles"), &spec, files, &f.key).bundle_path;
    assert_ok(&f.run(&[&"import", &bundle]));
    // `status` says which Defend manifests the site has, and how old they are.
    let report: serde_json::Value =
        serde_json::from_slice(&f.run(&[&"status", &"--json"]).stdout).unwrap();
    assert_eq!(
        report["active"]["content"]["defend"],
        serde_json::json!([{"endpoint_version": "9.2.2", "manifest_version": "1.0.922",
                            "date": "2026-12-01T08:30:00Z"}]),
        "{report}"
    );
    let server = Server::start(&f);
    server.wait_for(&format!("/{MANIFEST}"), &manifest_bytes);

    for (path, bytes) in [(MANIFEST, &manifest_bytes), (ARTIFACT, &artifact_bytes)] {
        let url = format!("/{path}");
        let (status, headers, body) = server.get(&url, &[]);
        assert_eq!(status, 200, "{path}");
        assert_eq!(&body, bytes, "{path}");
        let etag = headers["etag"].to_str().unwrap().to_owned();
        let sha256 = ferry_manifests::Sha256Digest::of(bytes).to_hex();
        assert_eq!(etag, format!("\"{sha256}\""), "the ETag is the content's SHA-256");
        let (status, _, body) = server.get(&url, &[("If-None-Match", &etag)]);
        assert_eq!((status, body.len()), (304, 0), "{path} unchanged");
        let (status, _, _) = server.get(&url, &[("If-None-Match", "\"an older one\"")]);
        assert_eq!(status, 200, "{path} changed");
    }

    let http = &server.http;
    for (target, why) in [
        ("/downloads/endpoint/manifest/artifacts-9.1.0.zip", "a version not carried"),
        ("/downloads/endpoint/artifacts/endpoint-trustlist-linux-v1/ffff", "an unknown artifact"),
        ("/downloads/endpoint/manifest/../manifest/artifacts-9.2.2.zip", "`..`"),
        ("/downloads/endpoint/%2e%2e/endpoint/manifest/artifacts-9.2.2.zip", "encoded `..`"),
        ("/downloads/endpoint/./manifest/artifacts-9.2.2.zip", "`.`"),
        ("/endpoint/manifest/artifacts-9.2.2.zip", "outside /downloads/"),
    ] {
        assert_eq!(raw_status(http, target), 404, "{why}: {target}");
    }
    assert_eq!(raw_status(http, &format!("/{MANIFEST}")), 200, "the same request, plainly");
}
