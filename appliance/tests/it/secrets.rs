//! On-site secrets as an operator keeps them: `secrets set` from stdin and from a file,
//! `secrets list` (table and JSON), `secrets remove`; the values sealed under
//! `data/secrets.key` in `state.db`, and nowhere in clear: not in any file of the data
//! directory (the database, its WAL), not in what `serve` prints, not in any answer. A restore
//! without the key, and a key file open to other users, are refused by name.

use std::io::Write as _;
use std::path::Path;
use std::process::{Output, Stdio};

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::support::{Fixture, Server, assert_ok, stderr, stdout};

/// What the tests set: distinctive, so finding any of their bytes means a leak.
const PASSWORD: &str = "pw-7f3e9c1d-never-in-clear";
const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKd3x7q0-not-in-clear\n\
                   -----END PRIVATE KEY-----\n";

/// `ferry-appliance ARGS` with `input` on its stdin.
fn run_with_stdin(f: &Fixture, args: &[&dyn AsRef<std::ffi::OsStr>], input: &[u8]) -> Output {
    let mut child = f
        .appliance(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses before reading (a bad id) may be gone already: a broken pipe.
    if let Err(e) = child.stdin.take().unwrap().write_all(input) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

/// Every file under `dir`, as bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(files(&entry.path()));
        } else if kind.is_file() {
            out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
        }
    }
    out
}

/// Panics if any of `needles` occurs in any file under `dir`.
fn nowhere_in_clear(dir: &Path, needles: &[&str]) {
    let all = files(dir);
    assert!(all.iter().any(|(p, _)| p.ends_with("state.db")), "the scan sees the database");
    for (path, bytes) in &all {
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds {needle:?} in clear",
                path.display()
            );
        }
    }
}

/// The values `state.db` holds, opened as `crate::secrets` seals them: a random 24-byte nonce,
/// then XChaCha20-Poly1305 with the id (after a fixed context) as associated data.
fn stored_values(f: &Fixture) -> Vec<(String, String)> {
    let key = std::fs::read(f.path("data/secrets.key")).unwrap();
    let cipher = XChaCha20Poly1305::new_from_slice(&key).unwrap();
    let db = rusqlite::Connection::open(f.path("data/state.db")).unwrap();
    let mut stmt = db.prepare("SELECT id, sealed FROM secrets ORDER BY id").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)));
    rows.unwrap()
        .map(|row| {
            let (id, sealed) = row.unwrap();
            let (nonce, ciphertext) = sealed.split_at(24);
            let aad = [&b"ferry-appliance secret v1\0"[..], id.as_bytes()].concat();
            let nonce = XNonce::try_from(nonce).unwrap();
            let plain = cipher.decrypt(&nonce, Payload { msg: ciphertext, aad: &aad }).unwrap();
            (id, String::from_utf8(plain).unwrap())
        })
        .collect()
}

#[test]
fn secrets_are_set_listed_removed_and_never_kept_in_clear() {
    let f = Fixture::new();
    // Debug logging: the most a server ever says.
    let server = Server::start_with(&f, &[&"-vv", &"serve"]);
    let key = f.path("data/secrets.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the key is made at start, for serve's user alone");

    // From stdin, as `echo` gives it: its newline is not part of the value.
    let o = run_with_stdin(
        &f,
        &[&"secrets", &"set", &"es-password"],
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("secret es-password set"), "{}", stdout(&o));
    // From a file, as an editor saves it: one newline removed, the PEM's own kept.
    std::fs::write(f.path("client.key"), format!("{PEM}\n")).unwrap();
    let o = f.run(&[
        &"secrets",
        &"set",
        &"kafka-client-key",
        &"--file",
        &f.path("client.key"),
        &"--json",
    ]);
    assert_ok(&o);
    let answer: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(answer["id"], "kafka-client-key", "{answer}");
    assert_eq!(answer["used_by"], serde_json::json!([]), "{answer}");
    assert!(answer.get("value").is_none(), "{answer}");
    // Set again: replaced, still one of it.
    assert_ok(&run_with_stdin(&f, &[&"secrets", &"set", &"es-password"], PASSWORD.as_bytes()));

    let list = f.run_json(&[&"secrets", &"list", &"--json"]);
    let ids: Vec<&str> =
        list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["es-password", "kafka-client-key"], "{list}");
    assert!(list.as_array().unwrap().iter().all(|s| s["set_at"].as_str().unwrap().ends_with('Z')));
    let table = f.run(&[&"secrets", &"list"]);
    assert_ok(&table);
    let text = stdout(&table);
    assert!(text.contains("ID") && text.contains("SET AT"), "{text}");
    assert!(text.contains("es-password") && text.contains("kafka-client-key"), "{text}");

    assert_eq!(
        stored_values(&f),
        [
            ("es-password".to_owned(), PASSWORD.to_owned()),
            ("kafka-client-key".to_owned(), PEM.to_owned())
        ],
        "sealed under data/secrets.key, exactly as given less one newline"
    );

    // Refusals, each naming what is wrong without the value.
    let o = run_with_stdin(&f, &[&"secrets", &"set", &"bad}id"], b"v");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad}id") && stderr(&o).contains("`}`"), "{}", stderr(&o));
    let o = run_with_stdin(&f, &[&"secrets", &"set", &"empty"], b"\n");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));
    let o = f.run(&[&"secrets", &"remove", &"never-set"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no secret never-set"), "{}", stderr(&o));

    // Removed: gone from the list, and a second removal is refused.
    assert_ok(&f.run(&[&"secrets", &"remove", &"kafka-client-key"]));
    let list = f.run_json(&[&"secrets", &"list", &"--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(f.run(&[&"secrets", &"remove", &"kafka-client-key"]).status.code(), Some(1));

    // While serving (the WAL holds the latest pages) and after a stop (checkpointed).
    let needles = [PASSWORD, "MC4CAQAwBQYDK2VwBCIEIKd3x7q0-not-in-clear"];
    nowhere_in_clear(&f.path("data"), &needles);
    server.terminate();
    nowhere_in_clear(&f.path("data"), &needles);
    let (out, err) = server.printed();
    assert!(err.contains("on-site secret set"), "debug logs were captured: {err}");
    for needle in needles {
        assert!(!out.contains(needle) && !err.contains(needle), "serve printed {needle:?}");
    }

    // A restart opens what was sealed; a restore that lost the key is refused, not re-keyed.
    let server = Server::start(&f);
    assert_eq!(f.run_json(&[&"secrets", &"list", &"--json"]).as_array().unwrap().len(), 1);
    server.terminate();
    std::fs::rename(&key, f.path("secrets.key.saved")).unwrap();
    let o = f.run(&[&"serve"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("1 sealed secret(s)") && stderr(&o).contains("secrets.key"),
        "{}",
        stderr(&o)
    );
    assert!(!key.exists(), "no new key over the stored values");
}

#[test]
fn a_named_key_file_is_used_and_refused_when_others_can_read_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = Fixture::new();
    let key = f.path("site-secrets.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    f.append_config("[secrets]\nkey_file = \"site-secrets.key\"");
    let o = f.run(&[&"serve"]);
    assert!(!o.status.success());
    let message = stderr(&o);
    assert!(message.contains("site-secrets.key") && message.contains("chmod 600"), "{message}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start(&f);
    assert_ok(&run_with_stdin(&f, &[&"secrets", &"set", &"id-1"], PASSWORD.as_bytes()));
    server.terminate();
    assert!(!f.path("data/secrets.key").exists(), "the named key is the key");
    nowhere_in_clear(&f.path("data"), &[PASSWORD]);
}

/// A policy using Fleet secrets in each of Kibana's forms: a Logstash client key by path
/// (`secrets.ssl.key.id`), a Kafka password inline, a stream's header inline among text.
const SECRET_POLICY: &str = r#"id: ls
revision: 1
outputs:
  default:
    type: logstash
    hosts: ["ls.site:5044"]
    secrets: {ssl: {key: {id: ls-key}}}
  kafka:
    type: kafka
    hosts: ["kafka.site:9092"]
    username: ingest
    password: "$co.elastic.secret{kafka-pw}"
inputs:
  - id: http-1
    type: httpjson
    use_output: default
    streams:
      - id: s1
        request.headers: "Bearer $co.elastic.secret{http-token}; v=1"
secret_references: [{id: ls-key}, {id: kafka-pw}, {id: http-token}]
"#;

#[test]
fn a_policy_waits_for_its_secrets_and_is_delivered_resolved_as_fleet_server_does() {
    let f = Fixture::new();
    f.append_config("checkin_long_poll_seconds = 1\ncheckin_jitter_seconds = 0");
    let bundle = f.bundle_with_policies(1, &[("ls", SECRET_POLICY)]);
    let import = f.run(&[&"import", &bundle]);
    assert_ok(&import);
    assert!(
        stderr(&import)
            .contains("policy ls needs secret(s) not set here: http-token, kafka-pw, ls-key"),
        "{}",
        stderr(&import)
    );
    let server = Server::start_with(&f, &[&"-vv", &"serve"]);
    let (_, token) = f.token("ls");
    let agent = crate::support::agent::Agent::enroll(&server, &token);
    let reply = agent.checkin_online();
    assert_eq!(reply.body["actions"].as_array().map_or(0, Vec::len), 0, "{}", reply.body);
    let status = f.run(&[&"status", &"--json"]);
    assert!(!status.status.success(), "a held policy makes status exit 1");
    let held: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let why = held["policies_held"]["ls"].as_str().unwrap();
    assert!(why.contains("http-token, kafka-pw, ls-key") && why.contains("secrets set"), "{why}");

    let token_value = "tok-5b1e-never-in-clear";
    for (id, value) in [("ls-key", PEM), ("kafka-pw", PASSWORD), ("http-token", token_value)] {
        assert_ok(&run_with_stdin(&f, &[&"secrets", &"set", &id], value.as_bytes()));
    }
    let policy = loop {
        let reply = agent.checkin_online();
        if let Some(action) = reply.body["actions"].as_array().and_then(|a| a.first()) {
            break action["data"]["policy"].clone();
        }
    };
    // One trailing newline is taken off what stdin gives (`echo` adds one).
    assert_eq!(policy["outputs"]["default"]["ssl"]["key"], PEM.trim_end_matches('\n'));
    assert!(policy["outputs"]["default"].get("secrets").is_none(), "{policy}");
    assert_eq!(policy["outputs"]["kafka"]["password"], PASSWORD);
    assert_eq!(
        policy["inputs"][0]["streams"][0]["request.headers"],
        format!("Bearer {token_value}; v=1")
    );
    assert!(policy.get("secret_references").is_none(), "{policy}");
    assert_eq!(
        policy["secret_paths"],
        serde_json::json!([
            "inputs.0.streams.0.request.headers",
            "outputs.default.ssl.key",
            "outputs.kafka.password"
        ])
    );
    let list = f.run_json(&[&"secrets", &"list", &"--json"]);
    assert!(list.as_array().unwrap().iter().all(|s| s["used_by"] == serde_json::json!(["ls"])));

    // A value set again is a new revision, delivered to agents running the old one.
    let revision = policy["revision"].as_u64().unwrap();
    assert_eq!(agent.ack(&[&format!("policy:ls:{revision}")]).status, 200);
    assert_ok(&run_with_stdin(&f, &[&"secrets", &"set", &"kafka-pw"], b"rotated-pw"));
    let rotated = loop {
        let reply = agent.checkin_online();
        if let Some(action) = reply.body["actions"].as_array().and_then(|a| a.first()) {
            break action["data"]["policy"].clone();
        }
    };
    assert_eq!(rotated["outputs"]["kafka"]["password"], "rotated-pw");
    assert!(rotated["revision"].as_u64().unwrap() > revision);

    // The values travel only in the policies agents are sent: not in the bundle, any answer
    // of the admin side, the server's output, or any file of the data directory.
    let needles =
        [PASSWORD, token_value, "MC4CAQAwBQYDK2VwBCIEIKd3x7q0-not-in-clear", "rotated-pw"];
    let bundle_bytes = std::fs::read(&bundle).unwrap();
    for needle in needles {
        assert!(!bundle_bytes.windows(needle.len()).any(|w| w == needle.as_bytes()));
    }
    for args in
        [&["status", "--json"][..], &["agents", "list", "--json"], &["secrets", "list", "--json"]]
    {
        let args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>).collect();
        let out = f.run(&args);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(needles.iter().all(|n| !text.contains(n)), "{text}");
    }
    let (out, err) = server.printed();
    assert!(needles.iter().all(|n| !out.contains(n) && !err.contains(n)), "{err}");
    nowhere_in_clear(&f.path("data"), &needles);
    drop(server);
}
