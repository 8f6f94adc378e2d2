//! `ferry build` with a Kibana policy export that carries settings of the exporting site: the
//! build succeeds, and stderr names each setting the appliance drops or the bundle exposes,
//! however it is spelt, but not the addresses every export carries.

use std::path::Path;
use std::process::{Command, Output};

use crate::support;
use crate::support::{assert_ok, fixture, stderr, stdout};

/// A Kibana "download policy" of a site behind a proxy with its own CA, shipping to a remote
/// cluster with a service token; hand-edited to turn TLS verification off with a dotted key.
const CARRYING: &str = r#"id: site-a
revision: 12
name: Site A servers
outputs:
  default:
    type: elasticsearch
    hosts: ["https://es.site-a:9200"]
  remote:
    type: remote_elasticsearch
    hosts: ["https://es.remote:9200"]
    service_token: AAEAAWVsYXN0aWMvZmxlZXQtc2VydmVyL3Rva2VuLTE6c2VjcmV0
fleet:
  hosts: ["https://fleet.site-a:8220"]
  ssl:
    certificate_authorities: ["/etc/site-a/ca.pem"]
agent:
  download:
    sourceURI: https://artifacts.elastic.co/downloads/
    proxy_url: http://proxy.site-a:3128
agent.download.ssl.verification_mode: none
output_permissions:
  default:
    _elastic_agent_checks: {cluster: [monitor]}
  remote:
    _elastic_agent_checks: {cluster: [monitor]}
inputs: []
"#;

/// The same site's policy with nothing of the site beyond its Fleet hosts and download source.
const CLEAN: &str = r#"id: site-a
revision: 12
outputs:
  default:
    type: elasticsearch
    hosts: ["https://es.site-a:9200"]
fleet:
  hosts: ["https://fleet.site-a:8220"]
agent:
  download:
    sourceURI: https://artifacts.elastic.co/downloads/
    timeout: 2h
output_permissions:
  default:
    _elastic_agent_checks: {cluster: [monitor]}
inputs: []
"#;

/// Runs `ferry build --json` on a spec holding `policy` as `site-a.yml`.
fn build(dir: &Path, policy: &str) -> Output {
    std::fs::write(dir.join("site-a.yml"), policy).unwrap();
    let spec = dir.join("bundle.toml");
    std::fs::write(
        &spec,
        "[bundle]\nname = \"site\"\nsequence = 1\nvalid_days = 30\n\
         [[file]]\nsource = \"site-a.yml\"\nkind = \"policy\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // The warnings are log lines: the caller's RUST_LOG could hide them and colour would split
    // `field=` from its value, so the test pins both.
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    cmd.env_remove("FERRY_KEY_PASSWORD").env_remove("SOURCE_DATE_EPOCH");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]
    {
        cmd.env_remove(var);
    }
    cmd.arg("build")
        .arg(&spec)
        .arg("--secret-key")
        .arg(fixture("test.key"))
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--json");
    cmd.output().unwrap()
}

#[test]
fn site_settings_in_a_policy_are_warned_about_and_the_build_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let o = build(dir.path(), CARRYING);
    assert_ok(&o);
    // Warnings go to stderr; stdout stays the one JSON document `--json` promises.
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    assert_eq!(report["entries"], 1);
    assert!(dir.path().join("out/site-1.ferry").is_file());
    let verified = support::ferry(&[
        &"verify",
        &dir.path().join("out/site-1.ferry"),
        &"--public-key",
        &fixture("test.pub"),
    ]);
    assert_ok(&verified);

    let err = stderr(&o);
    let file = dir.path().join("site-a.yml").display().to_string();
    let expected = [
        (
            "fleet.ssl",
            "the appliance replaces `fleet` with its own; `fleet.ssl` is dropped on delivery",
        ),
        (
            "agent.download.proxy_url",
            "`agent.download.proxy_url` is dropped on delivery; the appliance sets the download \
             source and TLS itself",
        ),
        (
            "agent.download.ssl.verification_mode",
            "`agent.download.ssl.verification_mode` is dropped on delivery; the appliance sets \
             the download source and TLS itself",
        ),
        (
            "outputs.remote.service_token",
            "`outputs.remote.service_token` is a service token and travels in the bundle in \
             clear; the appliance delivers output `remote` as `elasticsearch` without it",
        ),
    ];
    for (field, says) in expected {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("field={field}")))
            .unwrap_or_else(|| panic!("no warning for {field}:\n{err}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(says), "{line}");
        assert!(line.contains(&format!("file={file}")), "{line}");
    }
    // Nothing else is warned about: not `fleet.hosts` or `agent.download.sourceURI`, which
    // the appliance replaces with its own, not the elasticsearch output.
    assert_eq!(err.lines().filter(|l| l.contains("WARN")).count(), expected.len(), "{err}");
}

#[test]
fn a_policy_without_site_settings_builds_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let o = build(dir.path(), CLEAN);
    assert_ok(&o);
    assert!(!stderr(&o).contains("WARN"), "{}", stderr(&o));
}
