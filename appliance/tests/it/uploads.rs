//! Diagnostics through the chunked upload API (fleet-protocol.md §3.6): the admin asks, the
//! agent uploads chunk by chunk with SHA-256s and a transit hash, the admin downloads the file.
//! Every hostile upload gets Fleet's status and error.

use crate::support;
use crate::support::agent::{Agent, Reply};
use crate::support::{Fixture, Server, VERSIONS, assert_ok, schema};
use serde_json::{Value, json};
use sha2::Digest as _;

const CHUNK: usize = 4 << 20;

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn begin(agent: &Agent<'_>, action_id: &str, agent_id: &str, size: usize) -> Reply {
    begin_named(
        agent,
        action_id,
        agent_id,
        size,
        "elastic-agent-diagnostics-2026-11-29T12-29-00Z-00.zip",
    )
}

/// An upload's start naming the file `name`, which the agent chooses freely.
fn begin_named(
    agent: &Agent<'_>,
    action_id: &str,
    agent_id: &str,
    size: usize,
    name: &str,
) -> Reply {
    let body = json!({"action_id": action_id, "agent_id": agent_id, "src": "agent",
        "file": {"name": name, "ext": "zip",
                 "mime_type": "application/zip", "size": size, "hash": {"sha256": "", "md5": ""}},
        "contents": null});
    agent.send("POST", "/api/fleet/uploads", &[], body.to_string().as_bytes())
}

fn chunk(agent: &Agent<'_>, upload: &str, n: usize, bytes: &[u8], digest: &str) -> Reply {
    agent.send(
        "PUT",
        &format!("/api/fleet/uploads/{upload}/{n}"),
        &[("X-Chunk-SHA2", digest)],
        bytes,
    )
}

fn complete(agent: &Agent<'_>, upload: &str, transit: &str) -> Reply {
    let body = json!({"transithash": {"sha256": transit}}).to_string();
    agent.send("POST", &format!("/api/fleet/uploads/{upload}"), &[], body.as_bytes())
}

fn transit(chunks: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for c in chunks {
        h.update(sha2::Sha256::digest(c));
    }
    hex::encode(h.finalize())
}

#[test]
fn a_diagnostics_bundle_travels_from_agent_to_admin_and_bad_uploads_are_refused() {
    let f = Fixture::new();
    // Uploads are rare; this test makes more than the default burst allows.
    f.append_config("checkin_long_poll_seconds = 2\ncheckin_jitter_seconds = 0\n[limits.upload_begin]\nburst = 20");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&server, &token);
    let other = Agent::enroll(&server, &token);

    let request = f.run_json(&[&"diagnostics", &"request", &agent.id, &"--json"]);
    let action = request["action_id"].as_str().unwrap().to_owned();
    let reply = agent.checkin_online();
    assert_eq!(reply.body["actions"][0]["type"], "REQUEST_DIAGNOSTICS", "{reply:?}");

    let file: Vec<u8> = (0..CHUNK + 100_000).map(|i| (i * 7 % 251) as u8).collect();
    let (first, second) = file.split_at(CHUNK);

    // Refused before anything is stored.
    begin(&agent, "not-a-request", &agent.id, file.len()).assert_error(400, "BadRequest");
    begin(&agent, &action, &other.id, file.len()).assert_error(403, "ErrAgentIdentity");
    begin(&other, &action, &other.id, file.len()).assert_error(400, "BadRequest");
    begin(&agent, &action, &agent.id, 0).assert_error(400, "BadRequest");

    // A first attempt with a lying transit hash is closed as failed.
    let reply = begin(&agent, &action, &agent.id, file.len());
    assert_eq!(reply.status, 200, "{reply:?}");
    schema::check(&reply.body, schema::UPLOAD_BEGIN_RESPONSE);
    assert_eq!(reply.body["chunk_size"], CHUNK);
    let failed = reply.body["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(chunk(&agent, &failed, 0, first, &sha(first)).status, 200);
    complete(&agent, &failed, &transit(&[first])).assert_error(400, "ErrMissingChunks");
    chunk(&agent, &failed, 1, second, &sha(first)).assert_error(400, "ErrHashMismatch");
    chunk(&agent, &failed, 2, second, &sha(second)).assert_error(400, "BadRequest");
    chunk(&agent, &failed, 1, second, "").assert_error(400, "BadRequest");
    chunk(&other, &failed, 1, second, &sha(second)).assert_error(403, "ErrAgentIdentity");
    let too_big = vec![0u8; CHUNK + 1];
    chunk(&agent, &failed, 1, &too_big, &sha(&too_big)).assert_error(413, "ErrPayloadSizeTooLarge");
    assert_eq!(chunk(&agent, &failed, 1, second, &sha(second)).status, 200);
    complete(&agent, &failed, &"0".repeat(64)).assert_error(400, "ErrFailValidation");
    chunk(&agent, &failed, 1, second, &sha(second)).assert_error(400, "ErrStatusNoUploads");
    let unknown = "00000000-0000-4000-8000-000000000000";
    chunk(&agent, unknown, 0, first, &sha(first)).assert_error(404, "ErrUploadNotFound");

    // The real one, chunks out of order as Fleet allows.
    let reply = begin(&agent, &action, &agent.id, file.len());
    let upload = reply.body["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(chunk(&agent, &upload, 1, second, &sha(second)).status, 200);
    let reply = chunk(&agent, &upload, 0, first, &sha(first));
    assert_eq!((reply.status, reply.raw.len()), (200, 0));
    let reply = complete(&agent, &upload, &transit(&[first, second]).to_uppercase());
    assert_eq!((reply.status, &reply.body), (200, &json!({"status": "ok"})), "{reply:?}");
    // One bundle per request: another attempt after it is refused.
    begin(&agent, &action, &agent.id, file.len()).assert_error(400, "BadRequest");
    let mut event = agent.ack_event(&action);
    event["data"] = json!({"upload_id": upload});
    assert_eq!(agent.ack_events(&[event]).status, 200);

    // The admin sees both attempts and gets the file, checked against its SHA-256.
    let list = f.run_json(&[&"diagnostics", &"list", &"--json"]);
    let status = |id: &str| -> Value {
        list.as_array().unwrap().iter().find(|u| u["id"] == id).unwrap()["status"].clone()
    };
    assert_eq!((status(&failed), status(&upload)), (json!("UPLOAD_ERROR"), json!("READY")));
    let out = f.path("diag.zip");
    let got = f.run_json(&[&"diagnostics", &"get", &upload, &"-o", &out, &"--json"]);
    assert_eq!(std::fs::read(&out).unwrap(), file);
    assert_eq!((&got["path"], &got["bytes"]), (&json!(out), &json!(file.len())), "{got}");
    let sha = ferry_manifests::Sha256Digest::of(&file).to_hex();
    assert_eq!((&got["sha256"], &got["upload_id"]), (&json!(sha), &json!(upload)), "{got}");
    let o = f.run(&[&"diagnostics", &"get", &failed, &"-o", &f.path("x.zip")]);
    assert_eq!(o.status.code(), Some(1), "refused by the appliance: {}", support::stderr(&o));
    assert!(!f.path("data/uploads").join(&failed).exists(), "refused chunks are removed");
}

/// Finding 1 of issue 22: the agent chooses the upload's file name. `diagnostics get` without
/// `-o` once wrote it (its last component) in the current folder, replacing what was there: an
/// upload named `../../.bashrc` replaced the operator's `.bashrc`. Now the file is named by the
/// appliance, created beside its target with O_EXCL and linked into place, never over a file.
#[test]
fn diagnostics_get_never_lets_the_agent_name_or_replace_a_file() {
    let f = Fixture::new();
    f.append_config("checkin_long_poll_seconds = 2\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&server, &token);
    let request = f.run_json(&[&"diagnostics", &"request", &agent.id, &"--json"]);
    let action = request["action_id"].as_str().unwrap().to_owned();
    agent.checkin_online();
    let file = b"PK\x03\x04 the agent's bytes".to_vec();
    // The old CLI kept the last component: `.bashrc`, in the current folder.
    let name = "\x1b]0;owned\x07../../x/.bashrc";
    let reply = begin_named(&agent, &action, &agent.id, file.len(), name);
    assert_eq!(reply.status, 200, "{reply:?}");
    let upload = reply.body["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(chunk(&agent, &upload, 0, &file, &sha(&file)).status, 200);
    assert_eq!(complete(&agent, &upload, &transit(&[&file])).status, 200);

    // The operator's home, two levels up from where the command runs, holds files the name
    // points at.
    let home = f.path("home");
    let cwd = home.join("a/b");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(home.join("x")).unwrap();
    for dir in [&home, &home.join("x"), &home.join("a"), &cwd] {
        std::fs::write(dir.join(".bashrc"), "the operator's").unwrap();
    }
    let before = support::snapshot(&home);
    let get = |extra: &[&str]| {
        let mut cmd = f.appliance(&[&"diagnostics", &"get", &upload]);
        cmd.args(extra).current_dir(&cwd);
        cmd.output().unwrap()
    };
    let o = get(&[]);
    assert_ok(&o);
    // Nothing else changed, nothing was left behind; the agent's name is shown, escaped.
    let saved = cwd.join(format!("diagnostics-{}-{upload}.zip", agent.id));
    let mut after = support::snapshot(&home);
    after.remove(saved.strip_prefix(&home).unwrap());
    assert_eq!(after, before);
    assert_eq!(std::fs::read(&saved).unwrap(), file);
    let out = support::stdout(&o);
    assert!(out.contains("\\x1b]0;owned\\x07../../x/.bashrc") && !out.contains('\x1b'), "{out}");

    // A second get refuses to replace the first, as -o refuses an existing file.
    std::fs::write(&saved, "kept").unwrap();
    for extra in [&[][..], &["-o", ".bashrc"]] {
        let o = get(extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert!(support::stderr(&o).contains("exists"), "{}", support::stderr(&o));
    }
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), "kept");
    assert_eq!(std::fs::read_to_string(cwd.join(".bashrc")).unwrap(), "the operator's");
    // Unless the operator says so.
    assert_ok(&get(&["-o", ".bashrc", "--force"]));
    assert_eq!(std::fs::read(cwd.join(".bashrc")).unwrap(), file);
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 2, "no temporary file is left");
}
