//! Several instances sharing one real PostgreSQL (a throwaway cluster the test harness starts):
//! a bundle imported on one becomes active on all only once each has verified and staged it,
//! one instance's refusal keeps it inactive everywhere, an instance that was away catches up
//! before it serves, any instance answers any agent, and an action queued on one wakes the
//! agents parked on another.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::agent::{Agent, enroll_request, send_wire};
use crate::support::{Fixture, Server, VERSIONS, archive_path, assert_ok, stderr, stdout};
use serde_json::Value;

/// One instance: its configuration file and data directory in the fixture's folder, its store
/// the shared database, its shared folder the fixture's `shared/`.
pub(crate) struct Node<'f> {
    f: &'f Fixture,
    name: &'static str,
    data: String,
}

impl<'f> Node<'f> {
    /// Writes instance `name`'s configuration: `trusted` are the key files it trusts.
    pub(crate) fn new(
        f: &'f Fixture,
        name: &'static str,
        url: &str,
        trusted: &[&str],
        extra: &str,
    ) -> Self {
        Self::with_data(f, name, &format!("data-{name}"), url, trusted, extra)
    }

    /// [`Node::new`] with data directory `data`.
    fn with_data(
        f: &'f Fixture,
        name: &'static str,
        data: &str,
        url: &str,
        trusted: &[&str],
        extra: &str,
    ) -> Self {
        let keys: Vec<String> = trusted.iter().map(|k| format!("{k:?}")).collect();
        let config = format!(
            "data_dir = \"{data}\"\ntrusted_keys = [{}]\n\
             public_url = \"https://localhost:8220\"\nretain_releases = 3\n\
             [store]\nbackend = \"postgres\"\nurl = \"{url}\"\n\
             [cluster]\ninstance = \"{name}\"\nshared_dir = \"shared\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\nmirror_listen = \"127.0.0.1:0\"\n{extra}\n",
            keys.join(", ")
        );
        std::fs::write(f.path(&format!("{name}.toml")), config).unwrap();
        Self { f, name, data: data.to_owned() }
    }

    fn command(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
        let mut cmd = ferry_testkit::command(env!("CARGO_BIN_EXE_ferry-appliance"));
        cmd.arg("--config").arg(self.f.path(&format!("{}.toml", self.name)));
        for a in args {
            cmd.arg(a);
        }
        cmd
    }

    fn run(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
        self.command(args).output().unwrap()
    }

    pub(crate) fn json(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Value {
        ferry_testkit::json_stdout(&self.run(args))
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.f.path(&self.data)
    }

    /// Starts `serve`, sharing `tls_from`'s quick-start certificate (the instances of a cluster
    /// serve one public name with one certificate).
    pub(crate) fn serve(&self, tls_from: Option<&Node<'_>>) -> Server {
        if let Some(other) = tls_from {
            copy_dir(&other.data().join("tls"), &self.data().join("tls"));
        }
        Server::start_command(self.command(&[&"serve"]))
    }

    /// `releases --json`: the active sequence, and each release's holders.
    fn releases(&self) -> (Option<u64>, Vec<(u64, Vec<String>)>) {
        let list = self.json(&[&"releases", &"--json"]);
        let list = list.as_array().unwrap();
        let active =
            list.iter().find(|r| r["active"] == true).map(|r| r["sequence"].as_u64().unwrap());
        let held = list
            .iter()
            .map(|r| {
                let holders = r["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|h| h["state"] == "staged")
                    .map(|h| h["instance"].as_str().unwrap().to_owned())
                    .collect();
                (r["sequence"].as_u64().unwrap(), holders)
            })
            .collect();
        (active, held)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Waits (bounded) until `path` on `server` serves `want`.
fn served(server: &Server, path: &str, want: &[u8]) {
    server.wait_for(path, want);
}

#[test]
fn an_import_activates_on_every_instance_or_nowhere_and_a_late_instance_catches_up() {
    let Some(db) = ferry_testkit::postgres::fresh_database() else { return };
    let f = Fixture::new();
    let other = f.other_key("other.pub");
    let a = Node::new(&f, "a", &db.url(), &["trusted.pub", "other.pub"], "");
    // b does not trust other.pub: it must refuse what a accepts.
    let b = Node::new(&f, "b", &db.url(), &["trusted.pub"], "");
    let server_a = a.serve(None);
    let server_b = b.serve(Some(&a));
    // Both said they are alive before the import looks for who must stage it.
    ferry_testkit::eventually("both instances live", Duration::from_secs(10), || {
        let v = a.json(&[&"cluster", &"--json"]);
        let live = v["instances"].as_array()?.iter().filter(|i| i["live"] == true).count();
        (live == 2).then_some(())
    });

    let one = f.bundle(1, VERSIONS[0], Fixture::later());
    assert_ok(&a.run(&[&"import", &one]));
    let (active, held) = b.releases();
    assert_eq!(active, Some(1));
    assert_eq!(held, vec![(1, vec!["a".to_owned(), "b".to_owned()])]);
    let archive = crate::support::archive_bytes(VERSIONS[0]);
    let path = format!("/downloads/{}", archive_path(VERSIONS[0]));
    served(&server_a, &path, &archive);
    served(&server_b, &path, &archive);

    // Signed by a key b does not trust: b refuses it, so it becomes active nowhere.
    let two = f.bundle_with_key(2, VERSIONS[1], Fixture::later(), &other);
    let refused = a.run(&[&"import", &two]);
    assert!(!refused.status.success());
    let said = stderr(&refused);
    assert!(said.contains("active nowhere") && said.contains("instance b refused it"), "{said}");
    assert_eq!(a.releases().0, Some(1));
    assert_eq!(b.releases().0, Some(1));
    assert!(!a.data().join("releases/site-2").exists(), "a removed what it staged");
    served(&server_a, &path, &archive);

    // b stops (and says so): an import no longer waits for it, and b catches up at its start.
    server_b.terminate();
    let three = f.bundle(3, VERSIONS[2], Fixture::later());
    let started = Instant::now();
    assert_ok(&a.run(&[&"import", &three]));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the import waited for a stopped instance"
    );
    assert!(!b.data().join("releases/site-3").exists());
    let server_b = b.serve(Some(&a));
    assert!(b.data().join("releases/site-3/manifest.json").is_file(), "caught up before serving");
    let newest = crate::support::archive_bytes(VERSIONS[2]);
    served(&server_b, &format!("/downloads/{}", archive_path(VERSIONS[2])), &newest);
    let (active, held) = b.releases();
    assert_eq!(active, Some(3));
    assert!(held.contains(&(3, vec!["a".to_owned(), "b".to_owned()])), "{held:?}");

    let listed = stdout(&a.run(&[&"cluster"]));
    for name in ["a", "b"] {
        assert!(listed.lines().any(|l| l.contains(name) && l.contains("site 3")), "{listed}");
    }
}

#[test]
fn any_instance_answers_any_agent_and_an_action_on_one_wakes_agents_parked_on_another() {
    let Some(db) = ferry_testkit::postgres::fresh_database() else { return };
    let f = Fixture::new();
    let hold = "checkin_long_poll_seconds = 60\ncheckin_jitter_seconds = 0";
    let a = Node::new(&f, "a", &db.url(), &["trusted.pub"], hold);
    let b = Node::new(&f, "b", &db.url(), &["trusted.pub"], hold);
    let server_a = a.serve(None);
    let server_b = b.serve(Some(&a));
    assert_ok(&a.run(&[&"import", &f.bundle(1, VERSIONS[1], Fixture::later())]));
    let archive = crate::support::archive_bytes(VERSIONS[1]);
    served(&server_a, &format!("/downloads/{}", archive_path(VERSIONS[1])), &archive);
    let token = a.json(&[&"tokens", &"create", &"--policy", &"p", &"--json"]);
    let token = token["token"].as_str().unwrap();

    // Enrolled through a, its policy taken through b, acknowledged through a.
    let on_a = Agent::enroll(&server_a, token);
    let on_b = on_a.on(&server_b);
    let reply = on_b.checkin_online();
    assert_eq!(reply.status, 200, "{reply:?}");
    let policy = reply.body["actions"][0]["id"].as_str().expect("the policy").to_owned();
    assert_eq!(on_a.on(&server_a).ack(&[&policy]).status, 200);
    // a writes acknowledgements in batches (every 5 s); b reads them from the store.
    ferry_testkit::eventually("the ack written and seen by b", Duration::from_secs(15), || {
        let shown = b.json(&[&"agents", &"show", &on_a.id.as_str(), &"--json"]);
        (shown["policy_revision"] == 1).then_some(())
    });

    // Parked on b, woken by an action queued through a (without it the hold is 60 s).
    let (reply, waited) = std::thread::scope(|scope| {
        let parked = scope.spawn(|| {
            let started = Instant::now();
            (on_b.checkin_online(), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(500));
        if parked.is_finished() {
            panic!("the check-in should be parked on b: {:?}", parked.join().unwrap().0);
        }
        let queued = Instant::now();
        let out = a.json(&[&"settings", &"--log-level", &"debug", &on_a.id.as_str(), &"--json"]);
        assert!(out["action_id"].is_string());
        let (reply, _) = parked.join().unwrap();
        (reply, queued.elapsed())
    });
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["actions"][0]["type"], "SETTINGS", "{reply:?}");
    assert!(waited < Duration::from_secs(30), "woken by the action, not by the hold's end");
    eprintln!("an action queued on a reached the agent parked on b after {waited:?}");

    // The admin of either instance sees the agent, and which instance holds its check-ins.
    let shown = b.json(&[&"agents", &"show", &on_a.id.as_str(), &"--json"]);
    assert_eq!(shown["id"], on_a.id.as_str());
    drop(server_a);
}

#[test]
fn with_the_database_down_parked_agents_stay_and_new_requests_get_503_never_401() {
    let Some(pg) = ferry_testkit::postgres::Cluster::start() else { return };
    let db = pg.database();
    let f = Fixture::new();
    let hold = "checkin_long_poll_seconds = 60\ncheckin_jitter_seconds = 0";
    let a = Node::new(&f, "a", &db.url(), &["trusted.pub"], hold);
    let server = a.serve(None);
    assert_ok(&a.run(&[&"import", &f.bundle(1, VERSIONS[1], Fixture::later())]));
    let archive = crate::support::archive_bytes(VERSIONS[1]);
    served(&server, &format!("/downloads/{}", archive_path(VERSIONS[1])), &archive);
    let token = a.json(&[&"tokens", &"create", &"--policy", &"p", &"--json"]);
    let token = token["token"].as_str().unwrap().to_owned();
    let agent = Agent::enroll(&server, &token);
    let policy = agent.checkin_online().body["actions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(agent.ack(&[&policy]).status, 200);

    std::thread::scope(|scope| {
        let parked = scope.spawn(|| agent.checkin_online());
        std::thread::sleep(Duration::from_millis(500));
        pg.stop();
        // A new enrollment, and another agent's request that must authenticate, cannot be
        // decided: 503 with Retry-After, which agents retry, never 401, which makes them give up.
        let enroll = send_wire(&server, &enroll_request(&token, "9.2.2", "Web-02"));
        enroll.assert_error(503, "ServiceUnavailable");
        assert!(enroll.headers.get("retry-after").is_some(), "{enroll:?}");
        let other = agent.on(&server);
        let checkin = other.checkin_online();
        assert_eq!(checkin.status, 503, "{checkin:?}");
        assert!(
            !parked.is_finished(),
            "the parked check-in stays parked while the database is down"
        );

        pg.restart();
        // The appliance reconnects by itself: the same requests work again.
        ferry_testkit::eventually("enrollment after the restart", Duration::from_secs(20), || {
            let r = send_wire(&server, &enroll_request(&token, "9.2.2", "Web-02"));
            (r.status == 200).then_some(())
        });
        assert!(!parked.is_finished());
        // Stopping answers it now rather than at the end of its hold.
        server.terminate();
        assert_eq!(parked.join().unwrap().status, 200);
    });
}

#[test]
fn a_single_appliance_moves_into_a_cluster_with_its_agents_actions_releases_and_secrets() {
    let Some(db) = ferry_testkit::postgres::fresh_database() else { return };
    let f = Fixture::new();
    f.append_config("checkin_long_poll_seconds = 2\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    assert_ok(&f.run(&[&"import", &f.bundle(2, VERSIONS[1], Fixture::later())]));
    let (agent_id, key, token, action) = {
        let single = Server::start(&f);
        let (_, token) = f.token("p");
        let agent = Agent::enroll(&single, &token);
        let policy = agent.checkin_online().body["actions"][0]["id"].as_str().unwrap().to_owned();
        assert_eq!(agent.ack(&[&policy]).status, 200);
        let queued =
            f.run_json(&[&"settings", &"--log-level", &"debug", &agent.id.as_str(), &"--json"]);
        let action = queued["action_id"].as_str().unwrap().to_owned();
        assert_eq!(agent.checkin_online().body["actions"][0]["id"], action.as_str());
        assert_eq!(agent.ack(&[&action]).status, 200);
        std::fs::write(f.path("pw"), "hunter2").unwrap();
        assert_ok(&f.run(&[&"secrets", &"set", &"es-pw", &"--file", &f.path("pw")]));
        single.terminate();
        (agent.id.clone(), agent.key.clone(), agent.ack_token(), action)
    };

    // The same host and data directory, now instance a of a cluster.
    let hold = "checkin_long_poll_seconds = 2\ncheckin_jitter_seconds = 0";
    let a = Node::with_data(&f, "a", "data", &db.url(), &["trusted.pub"], hold);
    let copied = a.json(&[&"store", &"copy", &"--json"]);
    assert_eq!(copied["tables"]["agents"], 1, "{copied}");
    assert_eq!(copied["tables"]["releases"], 2, "{copied}");
    assert_eq!(copied["tables"]["secrets"], 1, "{copied}");
    assert!(copied["tables"]["actions"].as_u64().unwrap() >= 1, "{copied}");
    assert_eq!(copied["bundles_missing"].as_array().unwrap().len(), 2, "{copied}");
    // Copying again is refused: the database holds state now.
    let again = a.run(&[&"store", &"copy"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds state"), "{}", stderr(&again));

    let server = a.serve(None);
    let (active, held) = a.releases();
    assert_eq!(active, Some(2));
    assert!(held.contains(&(2, vec!["a".to_owned()])), "{held:?}");
    let secrets = a.json(&[&"secrets", &"list", &"--json"]);
    assert!(secrets.to_string().contains("es-pw"), "{secrets}");
    // The agent's key works on the cluster, and the action it acknowledged does not come back.
    let moved = Agent::known(&server, &agent_id, &key, &token);
    let reply = moved.checkin_online();
    assert_eq!(reply.status, 200, "{reply:?}");
    // Nothing to deliver: Fleet leaves `actions` out of the answer.
    let ids: Vec<&str> = reply.body["actions"]
        .as_array()
        .map(|list| list.iter().filter_map(|a| a["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(!ids.contains(&action.as_str()), "{ids:?}");
    let shown = a.json(&[&"agents", &"show", &agent_id.as_str(), &"--json"]);
    assert_eq!(shown["policy_revision"], 1, "{shown}");
}

#[test]
fn a_bundle_that_came_in_parts_reaches_the_shared_folder_whole() {
    use ferry_manifests::parts::{SplitOptions, split_bundle};
    let Some(db) = ferry_testkit::postgres::fresh_database() else { return };
    let f = Fixture::new();
    let a = Node::new(&f, "a", &db.url(), &["trusted.pub"], "");
    let _server = a.serve(None);
    let bundle = f.bundle_full(1, VERSIONS[1], Fixture::later(), &f.key, 20_000);
    let medium = f.path("medium");
    std::fs::create_dir_all(&medium).unwrap();
    let signature = ferry_manifests::default_signature_path(&bundle);
    let options = SplitOptions { part_size: 4096, parity: 1 };
    let cut =
        split_bundle(&bundle, &signature, &f.key, &medium, options, &ferry_manifests::NoProgress)
            .unwrap();
    // The first part is lost on the way: the instance rebuilds it from parity as it reads.
    std::fs::remove_file(&cut.part_paths[0]).unwrap();
    let o = a.run(&[&"import", &cut.index_path]);
    assert_ok(&o);
    assert!(stdout(&o).contains("rebuilt from parity"), "{}", stdout(&o));
    assert_eq!(a.releases().0, Some(1));
    // The other instances stage it from the shared folder: it is there whole, and verifies.
    let shared = f.path("shared/bundles/site-1.ferry");
    assert_eq!(std::fs::read(&shared).unwrap(), std::fs::read(&bundle).unwrap());
    assert_eq!(
        std::fs::read(ferry_manifests::default_signature_path(&shared)).unwrap(),
        std::fs::read(&signature).unwrap()
    );
    let kept = std::fs::read_dir(a.data().join("parts")).map_or(0, |d| d.count());
    assert_eq!(kept, 0, "the parts folder goes once the bundle is imported");
}
