//! The operator's whole journey with the real binaries and simulated agents: a synthetic Elastic
//! download site, a bundle built from it and checked with the stock `minisign`, imported and
//! served; agents enroll and take policy revision 1, upgrade from the mirror (checksum and PGP
//! checked by the agents), receive revision 2 and a new agent version from a second bundle while
//! parked, follow a rollback, and one is unenrolled. Then the failure journeys: a bundle damaged
//! in transit, an expired one, an old one replayed, each refused while the site keeps serving.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::{binary, run_ok};
use serde_json::Value;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry-sim"))
}

/// A site: a fake Elastic mirror, a signing key, and bundle specs.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let site = Self { dir: tempfile::tempdir().unwrap() };
        run_ok(sim().current_dir(site.path()).args([
            "fake-mirror",
            "--out",
            "mirror",
            "--versions",
            "9.1.2,9.2.2,9.3.0",
            "--size",
            "100000",
        ]));
        run_ok(binary("ferry").current_dir(site.path()).args([
            "keygen",
            "--without-password",
            "-q",
        ]));
        site
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Builds `bench-SEQ.ferry` with these agent versions and a policy whose output host is
    /// `ls-SEQ` (so each sequence's policy differs). `expires` overrides the validity.
    fn bundle(&self, sequence: u64, versions: &[&str], expires: Option<&str>) -> PathBuf {
        let spec = self.path().join(format!("spec-{sequence}.toml"));
        let policy = self.path().join(format!("policy-{sequence}.yml"));
        std::fs::write(
            &policy,
            format!(
                "id: default-policy\nrevision: {sequence}\noutputs:\n  default: {{type: logstash, hosts: [\"ls-{sequence}:5044\"]}}\ninputs: []\n"
            ),
        )
        .unwrap();
        let validity = match expires {
            Some(e) => format!("expires = \"{e}\""),
            None => "valid_days = 30".into(),
        };
        let versions: Vec<String> = versions.iter().map(|v| format!("\"{v}\"")).collect();
        std::fs::write(
            &spec,
            format!(
                "[bundle]\nname = \"site\"\nsequence = {sequence}\n{validity}\n\n[upstream]\ndir = \"mirror/downloads\"\n\
                 pgp_key = \"mirror/GPG-KEY-ferry-demo\"\n\n[[agent]]\nversions = [{}]\nplatforms = [\"linux-x86_64\"]\n\
                 packages = [\"archive\"]\n\n[[file]]\nsource = \"{}\"\nkind = \"policy\"\n",
                versions.join(", "),
                policy.display()
            ),
        )
        .unwrap();
        let mut build = binary("ferry");
        build.current_dir(self.path()).arg("build").arg(&spec).args(["--out", "dist", "-q"]);
        if expires.is_some() {
            build.args(["--created", "2020-01-01T00:00:00Z"]);
        }
        run_ok(&mut build);
        self.path().join(format!("dist/site-{sequence}.ferry"))
    }

    fn appliance(&self) -> Command {
        let mut cmd = binary("ferry-appliance");
        cmd.current_dir(self.path()).arg("--config").arg(self.path().join("appliance.toml"));
        cmd
    }

    /// Runs an appliance command that must succeed and returns its stdout.
    fn admin(&self, args: &[&str]) -> String {
        String::from_utf8(run_ok(self.appliance().args(args)).stdout).unwrap()
    }
}

/// A process whose stdout lines are collected as they come.
struct Lines {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// Waits (bounded) for a line satisfying `pred`; returns it.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(120);
        while Instant::now() < end {
            if let Some(l) = self.lines.lock().unwrap().iter().rev().find(|l| pred(l)) {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("never saw {what}; last: {:?}", self.lines.lock().unwrap().last());
    }

    /// Waits until the simulator's latest report satisfies `pred`.
    fn report(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(120);
        while Instant::now() < end {
            let last = self.lines.lock().unwrap().last().cloned();
            if let Some(v) = last.and_then(|l| serde_json::from_str::<Value>(&l).ok())
                && pred(&v)
            {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agents never reached: {what}; last: {:?}", self.lines.lock().unwrap().last());
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` (bounded) until it gives a value.
fn eventually<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never: {what}");
}

fn count(v: &Value, histogram: &str, key: &str) -> u64 {
    v[histogram][key].as_u64().unwrap_or(0)
}

#[test]
fn a_site_from_bundle_to_upgraded_agents_and_back() {
    let site = Site::new();
    let first = site.bundle(1, &["9.1.2", "9.2.2"], None);
    // The stock minisign checks the detached signature as the carrier would.
    run_ok(
        Command::new("minisign")
            .current_dir(site.path())
            .arg("-Vm")
            .arg(&first)
            .args(["-p", "ferry.pub"]),
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        site.path().join("appliance.toml"),
        format!(
            "data_dir = \"data\"\ntrusted_keys = [\"ferry.pub\"]\npublic_url = \"https://127.0.0.1:{port}\"\n\
             [server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n\
             checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0\n"
        ),
    )
    .unwrap();
    site.admin(&["import", first.to_str().unwrap()]);
    let mut serve = site.appliance();
    serve.arg("serve");
    let server = Lines::spawn(serve);
    server.wait("the admin API", |l| l.starts_with("admin API on"));
    let token = site.admin(&["tokens", "create", "--policy", "default-policy"]).trim().to_owned();
    let ca = site.path().join("data/tls/ca.pem");

    // Five agents enroll and take revision 1.
    let mut run = sim();
    run.args(["run", "--url", &format!("https://127.0.0.1:{port}"), "--ca"]).arg(&ca).args([
        "--token",
        &token,
        "--agents",
        "5",
        "--report-ms",
        "200",
        "--backoff",
        "1",
    ]);
    let agents = Lines::spawn(run);
    agents.report("5 agents on revision 1", |v| {
        count(v, "revisions", "1") == 5 && v["in_checkin"] == 5
    });

    // An upgrade from the mirror: the agents check the .sha512 and the PGP signature.
    site.admin(&["upgrade", "--version", "9.2.2", "--policy", "default-policy"]);
    agents
        .report("5 agents on 9.2.2", |v| count(v, "versions", "9.2.2") == 5 && v["upgraded"] == 5);
    // The appliance learns it from their next check-in (new User-Agent, no more details).
    let listed = eventually("the appliance sees 9.2.2 everywhere", || {
        let listed: Value =
            serde_json::from_str(&site.admin(&["agents", "list", "--json"])).unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["version"] == "9.2.2" && a["upgrade_state"] != "UPG_REQUESTED")
            .then_some(listed)
    });

    // A second bundle brings revision 2 and 9.3.0; parked agents get the policy at once.
    let second = site.bundle(2, &["9.2.2", "9.3.0"], None);
    site.admin(&["import", second.to_str().unwrap()]);
    agents.report("5 agents on revision 2", |v| count(v, "revisions", "2") == 5);
    site.admin(&["upgrade", "--version", "9.3.0", "--policy", "default-policy"]);
    agents.report("5 agents on 9.3.0", |v| count(v, "versions", "9.3.0") == 5);

    // A rollback re-activates bundle 1: its policy comes back as revision 3 (never backwards).
    site.admin(&["rollback"]);
    agents.report("5 agents on revision 3", |v| count(v, "revisions", "3") == 5);

    // Failure journeys: each refused with exit 1, the site still serving release 1.
    let damaged = site.path().join("damaged.ferry");
    let mut bytes = std::fs::read(&second).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&damaged, bytes).unwrap();
    std::fs::copy(
        second.with_extension("ferry.minisig"),
        site.path().join("damaged.ferry.minisig"),
    )
    .unwrap();
    let expired = site.bundle(3, &["9.3.0"], Some("2020-02-01T00:00:00Z"));
    for (bundle, why) in [(&damaged, "signature"), (&expired, "expired"), (&first, "sequence")] {
        let o = site.appliance().arg("import").arg(bundle).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
        assert!(err.contains(why), "{why}: {err}");
    }
    let releases: Value = serde_json::from_str(&site.admin(&["releases", "--json"])).unwrap();
    let active: Vec<u64> = releases
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["active"] == true)
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(active, [1], "the rolled-back release stays active");
    agents.report("agents still parked", |v| v["in_checkin"] == 5);

    // Unenroll one agent: it acknowledges, stops, and its key is dead.
    let one = listed[0]["id"].as_str().unwrap().to_owned();
    site.admin(&["unenroll", &one]);
    agents.report("one agent unenrolled", |v| v["unenrolled"] == 1 && v["stopped"] == 1);
    let shown: Value =
        serde_json::from_str(&site.admin(&["agents", "show", &one, "--json"])).unwrap();
    assert_eq!(shown["status"], "unenrolled");
    drop(agents);
    drop(server);
}
