//! Fleet secrets in policies, as `ferry plan` and `ferry build` meet them: each policy's secret
//! ids are listed for the operator to set on the appliance, a secret's value in clear makes the
//! build refuse the policy and write nothing, and discouraged credentials are warned about.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{assert_ok, fixture, stderr, stdout};

/// A Kibana full agent policy whose Kafka output and SQL input use stored secrets, in both of
/// Fleet's spellings.
const WITH_SECRETS: &str = r#"id: plant-a
revision: 4
outputs:
  default:
    type: kafka
    hosts: ["kafka.plant-a:9092"]
    username: agent
    secrets:
      password: {id: kafka-password-7Qx}
      ssl: {key: {id: kafka-key-2Lm}}
inputs:
  - id: sql-metrics
    type: sql/metrics
    use_output: default
    streams:
      - id: sql.query
        hosts: ["postgres://monitor:$co.elastic.secret{db-password-9Za}@db:5432"]
secret_references:
  - id: kafka-password-7Qx
  - id: kafka-key-2Lm
  - id: db-password-9Za
"#;

/// A hand-edited export: the Elasticsearch password typed into the output.
const PASSWORD_IN_CLEAR: &str = r#"id: plant-a
revision: 5
outputs:
  default:
    type: elasticsearch
    hosts: ["https://es.plant-a:9200"]
    username: ingest
    password: hunter2-in-clear
inputs: []
"#;

/// An API key in clear, and an Elasticsearch output with neither credentials nor
/// `output_permissions` (a standalone download).
const API_KEY_IN_CLEAR: &str = r#"id: plant-a
revision: 6
outputs:
  keyed:
    type: elasticsearch
    hosts: ["https://es.plant-a:9200"]
    api_key: "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
  bare:
    type: elasticsearch
    hosts: ["https://es.plant-a:9200"]
inputs: []
"#;

/// A folder holding `policy` as `plant-a.yml` and a spec that bundles it.
fn site(policy: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plant-a.yml"), policy).unwrap();
    let spec = dir.path().join("bundle.toml");
    std::fs::write(
        &spec,
        "[bundle]\nname = \"plant-a\"\nsequence = 1\nvalid_days = 30\n\
         [[file]]\nsource = \"plant-a.yml\"\nkind = \"policy\"\n",
    )
    .unwrap();
    (dir, spec)
}

/// Runs `ferry` with `args`; warnings are log lines, so the caller's RUST_LOG and colour are
/// pinned.
fn ferry(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = ferry_testkit::command(env!("CARGO_BIN_EXE_ferry"));
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    cmd.args(args).output().unwrap()
}

fn build(dir: &Path, spec: &Path, json: bool) -> Output {
    let (key, out) = (fixture("test.key"), dir.join("out"));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"build", &spec, &"--secret-key", &key, &"--out", &out];
    if json {
        args.push(&"--json");
    }
    ferry(&args)
}

#[test]
fn plan_lists_the_secret_ids_of_each_policy() {
    let (_dir, spec) = site(WITH_SECRETS);
    let o = ferry(&[&"plan", &spec, &"--json"]);
    assert_ok(&o);
    let plan: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    assert_eq!(
        plan["policies"],
        serde_json::json!([{
            "path": "policies/plant-a.yml",
            "id": "plant-a",
            "secret_ids": ["db-password-9Za", "kafka-key-2Lm", "kafka-password-7Qx"],
        }])
    );

    let o = ferry(&[&"plan", &spec]);
    assert_ok(&o);
    let text = stdout(&o);
    let row = text
        .lines()
        .find(|l| l.starts_with("plant-a "))
        .unwrap_or_else(|| panic!("no policy row:\n{text}"));
    assert!(row.contains("policies/plant-a.yml"), "{row}");
    assert!(row.contains("db-password-9Za, kafka-key-2Lm, kafka-password-7Qx"), "{row}");
    assert!(text.contains("`ferry-appliance secrets set ID`"), "{text}");
}

#[test]
fn build_lists_the_secret_ids_and_carries_no_value() {
    let (dir, spec) = site(WITH_SECRETS);
    let o = build(dir.path(), &spec, true);
    assert_ok(&o);
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    assert_eq!(report["policies"][0]["id"], "plant-a");
    assert_eq!(
        report["policies"][0]["secret_ids"],
        serde_json::json!(["db-password-9Za", "kafka-key-2Lm", "kafka-password-7Qx"])
    );
    // References only, and nothing to warn about.
    assert!(!stderr(&o).contains("WARN"), "{}", stderr(&o));

    let (dir, spec) = site(WITH_SECRETS);
    let o = build(dir.path(), &spec, false);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(text.contains("SECRET IDS"), "{text}");
    assert!(text.contains("db-password-9Za, kafka-key-2Lm, kafka-password-7Qx"), "{text}");
}

#[test]
fn build_refuses_a_password_in_clear_and_writes_nothing() {
    let (dir, spec) = site(PASSWORD_IN_CLEAR);
    let o = build(dir.path(), &spec, false);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let file = dir.path().join("plant-a.yml").display().to_string();
    for says in [
        file.as_str(),
        "`outputs.default.password` of output `default` is a secret's value in clear",
        "Kibana's secret storage",
        "`ferry-appliance secrets set ID`",
        "nothing was written",
    ] {
        assert!(err.contains(says), "{says:?} not in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "the refusal must not repeat the secret:\n{err}");
    assert!(!dir.path().join("out").exists(), "nothing may be written");

    // plan says so too, and fails as the build would.
    let o = ferry(&[&"plan", &spec]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("`outputs.default.password`"), "{}", stderr(&o));
}

#[test]
fn build_warns_about_an_api_key_in_clear_and_an_output_without_permissions() {
    let (dir, spec) = site(API_KEY_IN_CLEAR);
    let o = build(dir.path(), &spec, true);
    assert_ok(&o);
    assert!(dir.path().join("out/plant-a-1.ferry").is_file());
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    let key = warnings.iter().find(|l| l.contains("field=outputs.keyed.api_key")).unwrap();
    assert!(key.contains("output=keyed"), "{key}");
    assert!(key.contains("is an API key in clear"), "{key}");
    assert!(key.contains("`ferry-appliance secrets set ID`"), "{key}");
    assert!(!key.contains("VnVhQ2ZH"), "the warning must not repeat the key: {key}");
    let bare = warnings.iter().find(|l| l.contains("output=bare")).unwrap();
    assert!(
        bare.contains(
            "the appliance cannot create a per-agent key for output `bare`: the policy has no \
             output_permissions for it"
        ),
        "{bare}"
    );
}
